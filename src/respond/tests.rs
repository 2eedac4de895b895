//! Every page kind × HTML/JSON × language, the headers, and error classification.

use super::*;

const BROWSER: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

/// Every outcome that has a page, with its status and default Retry-After.
const PAGED: [(Outcome, u16, Option<u32>); 26] = [
    (Outcome::NoRoute, 404, None),
    (Outcome::NoHealthyBackend, 503, Some(5)),
    (Outcome::ConnectFailed, 502, Some(2)),
    (Outcome::UpstreamTimeout, 504, Some(2)),
    (Outcome::UpstreamReset, 502, Some(2)),
    (Outcome::UpstreamError, 502, Some(2)),
    (Outcome::UpstreamStatus(500), 500, None),
    (Outcome::UpstreamStatus(503), 503, Some(2)),
    (Outcome::UpstreamStatus(504), 504, Some(2)),
    (Outcome::RateLimited, 429, Some(1)),
    (Outcome::QueueFull, 503, Some(5)),
    (Outcome::QueueTimeout, 503, Some(5)),
    (Outcome::Shed, 503, Some(5)),
    (Outcome::HeaderTooLarge, 431, None),
    (Outcome::BodyTooLarge, 413, None),
    (Outcome::IdempotencyKeyMissing, 400, None),
    (Outcome::IdempotencyKeyInvalid, 400, None),
    (Outcome::IdempotencyInProgress, 409, Some(1)),
    (Outcome::IdempotencyKeyReused, 422, None),
    (Outcome::OrderOutcomeUnknown, 409, None),
    (Outcome::AlreadyProcessed, 409, None),
    (Outcome::Maintenance, 503, Some(5)),
    (Outcome::WaitingRoom, 503, Some(10)),
    (Outcome::LineFull, 503, Some(60)),
    (Outcome::BadRequest, 400, None),
    (Outcome::Internal, 500, None),
];

/// Kinds whose request may have reached a backend: an order may exist.
const MAY_HAVE_ORDERED: [&str; 6] = [
    "order_outcome_unknown",
    "already_processed",
    "upstream_timeout",
    "upstream_reset",
    "upstream_error",
    "upstream_status",
];

/// Kinds that fail before any backend got the request.
const NOTHING_ORDERED: [&str; 13] = [
    "maintenance",
    "waiting_room",
    "idempotency_key_missing",
    "idempotency_key_invalid",
    "idempotency_key_reused",
    "header_too_large",
    "body_too_large",
    "no_healthy_backend",
    "connect_failed",
    "queue_full",
    "queue_timeout",
    "shed",
    "rate_limited",
];

const WAITING: [&str; 5] = [
    "queue_full",
    "queue_timeout",
    "shed",
    "waiting_room",
    "line_full",
];

fn request(accept: Option<&'static str>, language: Option<&'static str>) -> HeaderMap {
    let mut map = HeaderMap::new();
    if let Some(accept) = accept {
        map.insert(http::header::ACCEPT, http::HeaderValue::from_static(accept));
    }
    if let Some(language) = language {
        map.insert(
            http::header::ACCEPT_LANGUAGE,
            http::HeaderValue::from_static(language),
        );
    }
    map
}

fn header<'h>(header: &'h ResponseHeader, name: &str) -> Option<&'h str> {
    header.headers.get(name).map(|v| v.to_str().expect("ascii"))
}

fn has_chinese(text: &str) -> bool {
    text.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))
}

/// Checks what every page carries and returns the body as text.
fn check_common(
    outcome: Outcome,
    status: u16,
    retry_after: Option<u32>,
    head: &ResponseHeader,
    body: &Bytes,
    content_type: &str,
    language: &str,
) -> String {
    let what = format!("{outcome:?} {content_type} {language}");
    assert_eq!(head.status.as_u16(), status, "{what}");
    assert_eq!(header(head, "content-type"), Some(content_type), "{what}");
    assert_eq!(
        header(head, "content-length"),
        Some(body.len().to_string().as_str()),
        "{what}"
    );
    assert_eq!(header(head, "cache-control"), Some("no-store"), "{what}");
    assert_eq!(header(head, "x-request-id"), Some("req-42"), "{what}");
    assert_eq!(
        header(head, "x-ordergate-page"),
        Some(outcome.reason()),
        "{what}"
    );
    assert_eq!(header(head, "content-language"), Some(language), "{what}");
    assert_eq!(
        header(head, "vary"),
        Some("Accept, Accept-Language"),
        "{what}"
    );
    assert_eq!(
        header(head, "retry-after"),
        retry_after.map(|s| s.to_string()).as_deref(),
        "{what}"
    );
    String::from_utf8(body.to_vec()).expect("utf-8")
}

#[test]
fn every_page_kind_is_tested() {
    let mut kinds: Vec<&str> = PAGED.iter().map(|(o, _, _)| o.reason()).collect();
    kinds.dedup();
    assert_eq!(kinds, *PAGE_KINDS);
    assert_eq!(Outcome::ClientGone.page_kind(), None);
}

#[test]
fn json_pages_in_every_language() {
    let pages = Pages::builtin();
    let context = PageContext::new("req-42");
    for (outcome, status, retry_after) in PAGED {
        for (accept, language, tag) in [
            (None, None, "en"),
            (Some("application/json"), Some("en-US,en;q=0.9"), "en"),
            (Some("*/*"), Some("zh-CN,zh;q=0.9,en;q=0.8"), "zh-CN"),
            (None, Some("zh-TW"), "zh-CN"),
        ] {
            let (head, body) =
                render(&pages, outcome, &request(accept, language), &context).expect("page");
            let text = check_common(
                outcome,
                status,
                retry_after,
                &head,
                &body,
                "application/json; charset=utf-8",
                tag,
            );
            let what = format!("{outcome:?} {tag}: {text}");
            let page: serde_json::Value = serde_json::from_str(&text).expect("json");
            let mut top: Vec<&String> = page.as_object().expect("object").keys().collect();
            top.sort();
            assert_eq!(top, ["error", "request_id", "retry_after"], "{what}");
            let error = page["error"].as_object().expect("error object");
            let mut keys: Vec<&String> = error.keys().collect();
            keys.sort();
            assert_eq!(
                keys,
                ["advice", "code", "message", "status", "title"],
                "{what}"
            );
            assert_eq!(page["error"]["code"], outcome.reason(), "{what}");
            assert_eq!(page["error"]["status"], status, "{what}");
            assert_eq!(page["request_id"], "req-42", "{what}");
            assert_eq!(
                page["retry_after"],
                serde_json::json!(retry_after),
                "{what}"
            );
            for field in ["title", "message", "advice"] {
                let value = page["error"][field].as_str().expect("string");
                assert!(!value.is_empty(), "{what}");
                assert_eq!(has_chinese(value), tag == "zh-CN", "{field} of {what}");
            }
            assert!(!text.contains('\n'), "compact: {what}");
            // The documented key order.
            assert!(
                text.starts_with(&format!(
                    "{{\"error\":{{\"code\":\"{}\",\"status\":{status},\"title\":",
                    outcome.reason()
                )),
                "{what}"
            );
        }
    }
}

#[test]
fn html_pages_in_every_language() {
    let pages = Pages::builtin();
    let context = PageContext::new("req-42");
    for (outcome, status, retry_after) in PAGED {
        for (language, tag) in [(None, "en"), (Some("zh-Hans-CN, en;q=0.5"), "zh-CN")] {
            let (head, body) =
                render(&pages, outcome, &request(Some(BROWSER), language), &context).expect("page");
            let text = check_common(
                outcome,
                status,
                retry_after,
                &head,
                &body,
                "text/html; charset=utf-8",
                tag,
            );
            let what = format!("{outcome:?} {tag}:\n{text}");
            assert!(text.starts_with("<!doctype html>"), "{what}");
            assert!(text.trim_end().ends_with("</html>"), "{what}");
            assert!(text.contains(&format!("<html lang=\"{tag}\">")), "{what}");
            assert!(text.contains("<code>req-42</code>"), "{what}");
            assert!(!text.contains("{{"), "no placeholder left: {what}");
            assert_eq!(has_chinese(&text), tag == "zh-CN", "{what}");
            let waiting = WAITING.contains(&outcome.reason());
            let refresh =
                retry_after.map(|s| format!("<meta http-equiv=\"refresh\" content=\"{s}\">"));
            match &refresh {
                Some(meta) if waiting => assert!(text.contains(meta.as_str()), "{what}"),
                _ => assert!(!text.contains("http-equiv=\"refresh\""), "{what}"),
            }
            if let (true, Some(seconds)) = (waiting, retry_after) {
                let wait = if tag == "en" {
                    format!("Estimated wait: about {seconds} s")
                } else {
                    format!("预计等待约 {seconds} 秒")
                };
                assert!(text.contains(&wait), "{what}");
            } else if !waiting {
                assert!(
                    text.contains(&format!("<p class=\"status\">{status}</p>")),
                    "{what}"
                );
                // The retry section only when there is a Retry-After.
                assert_eq!(
                    text.contains("class=\"retry\""),
                    retry_after.is_some(),
                    "{what}"
                );
                if let Some(seconds) = retry_after {
                    let hint = if tag == "en" {
                        format!("You can try again in {seconds} s.")
                    } else {
                        format!("请在 {seconds} 秒后重试。")
                    };
                    assert!(text.contains(&hint), "{what}");
                }
            }
        }
    }
}

#[test]
fn pages_tell_whether_an_order_may_exist() {
    let pages = Pages::builtin();
    let context = PageContext::new("req-42");
    for (outcome, _, _) in PAGED {
        for (language, check, nothing) in [
            ("en", "check your orders", "Nothing was ordered"),
            ("zh-CN", "“我的订单”中确认订单是否已生成", "没有生成订单"),
        ] {
            let headers = {
                let mut map = request(None, None);
                map.insert(
                    http::header::ACCEPT_LANGUAGE,
                    http::HeaderValue::from_str(language).expect("value"),
                );
                map
            };
            let (_, body) = render(&pages, outcome, &headers, &context).expect("page");
            let page: serde_json::Value = serde_json::from_slice(&body).expect("json");
            let text = format!("{} {}", page["error"]["message"], page["error"]["advice"]);
            let reason = outcome.reason();
            if MAY_HAVE_ORDERED.contains(&reason) {
                assert!(text.contains(check), "{reason} {language}: {text}");
                assert!(!text.contains(nothing), "{reason} {language}: {text}");
            }
            if NOTHING_ORDERED.contains(&reason) {
                assert!(text.contains(nothing), "{reason} {language}: {text}");
            }
        }
    }
}

#[test]
fn retry_after_and_wait_can_be_overridden() {
    let pages = Pages::builtin();
    let html = request(Some(BROWSER), None);
    let context = PageContext {
        request_id: "req-42",
        retry_after: Some(30),
        wait_seconds: Some(45),
        link: None,
        notice: None,
        trace_id: None,
    };
    let (head, body) = render(&pages, Outcome::Shed, &html, &context).expect("page");
    assert_eq!(header(&head, "retry-after"), Some("30"));
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    assert!(
        text.contains("<meta http-equiv=\"refresh\" content=\"30\">"),
        "{text}"
    );
    assert!(text.contains("about 45 s"), "{text}");
    assert!(text.contains("by itself in 30 s"), "{text}");

    // The wait defaults to the Retry-After.
    let context = PageContext {
        retry_after: Some(12),
        ..PageContext::new("req-42")
    };
    let (_, body) = render(&pages, Outcome::QueueFull, &html, &context).expect("page");
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    assert!(
        text.contains("content=\"12\"") && text.contains("about 12 s"),
        "{text}"
    );

    // JSON too, and on an outcome without a default (a backend's Retry-After).
    let (head, body) = render(
        &pages,
        Outcome::UpstreamStatus(500),
        &HeaderMap::new(),
        &PageContext {
            retry_after: Some(7),
            ..PageContext::new("req-42")
        },
    )
    .expect("page");
    assert_eq!(header(&head, "retry-after"), Some("7"));
    let page: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(page["retry_after"], 7);

    // 0 would make the waiting page reload in a loop.
    let (head, _) = render(
        &pages,
        Outcome::Shed,
        &html,
        &PageContext {
            retry_after: Some(0),
            ..PageContext::new("req-42")
        },
    )
    .expect("page");
    assert_eq!(header(&head, "retry-after"), Some("1"));
}

#[test]
fn upstream_status_keeps_the_backends_5xx() {
    for (code, shown, retry) in [
        (500, 500, None),
        (501, 501, None),
        (502, 502, Some(2)),
        (503, 503, Some(2)),
        (504, 504, Some(2)),
        (507, 507, None),
        (200, 502, None),
        (404, 502, None),
    ] {
        let outcome = Outcome::UpstreamStatus(code);
        assert_eq!(outcome.status(), shown, "{code}");
        assert_eq!(outcome.retry_after(), retry, "{code}");
        assert_eq!(outcome.reason(), "upstream_status");
    }
}

#[test]
fn json_page_carries_status_reason_id_and_retry_after() {
    let (header, body) = render(
        &Pages::builtin(),
        Outcome::NoHealthyBackend,
        &HeaderMap::new(),
        &PageContext::new("abc"),
    )
    .expect("page");
    assert_eq!(header.status.as_u16(), 503);
    assert_eq!(header.headers["retry-after"], "5");
    assert_eq!(header.headers["x-request-id"], "abc");
    assert_eq!(
        header.headers["content-length"],
        body.len().to_string().as_str()
    );
    let page: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(page["error"]["code"], "no_healthy_backend");
    assert_eq!(page["request_id"], "abc");
}

#[test]
fn html_page_when_the_browser_asks_for_it() {
    let (header, body) = render(
        &Pages::builtin(),
        Outcome::NoRoute,
        &request(Some("text/html,*/*"), None),
        &PageContext::new("<id>"),
    )
    .expect("page");
    assert_eq!(header.status.as_u16(), 404);
    assert!(header.headers.get("retry-after").is_none());
    assert_eq!(header.headers["x-request-id"], "<id>");
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    assert!(
        text.contains("&lt;id&gt;") && !text.contains("<id>"),
        "{text}"
    );
}

#[test]
fn request_ids_are_escaped_everywhere() {
    let id = "a\"b'c&<script>";
    let (_, body) = render(
        &Pages::builtin(),
        Outcome::Shed,
        &request(Some(BROWSER), Some("zh")),
        &PageContext::new(id),
    )
    .expect("page");
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    assert!(!text.contains("<script>"), "{text}");
    assert!(text.contains("a&quot;b&#39;c&amp;&lt;script&gt;"), "{text}");
    let (_, body) = render(
        &Pages::builtin(),
        Outcome::Shed,
        &HeaderMap::new(),
        &PageContext::new(id),
    )
    .expect("page");
    let page: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(page["request_id"], id);
}

#[test]
fn an_id_that_is_no_header_value_still_gets_its_page() {
    let (header, body) = render(
        &Pages::builtin(),
        Outcome::Internal,
        &HeaderMap::new(),
        &PageContext::new("a\u{1}b"),
    )
    .expect("page");
    assert_eq!(header.status.as_u16(), 500);
    assert!(header.headers.get("x-request-id").is_none());
    let page: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(page["request_id"], "a\u{1}b");
}

#[test]
fn client_gone_has_no_page() {
    assert!(render(
        &Pages::builtin(),
        Outcome::ClientGone,
        &HeaderMap::new(),
        &PageContext::new("x"),
    )
    .is_err());
}

#[test]
fn pages_from_a_loaded_directory_render_the_same() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/pages");
    let loaded = Pages::load(&dir).unwrap_or_else(|p| panic!("{}", p.join("\n")));
    let builtin = Pages::builtin();
    let context = PageContext::new("req-42");
    for (outcome, _, _) in PAGED {
        for accept in [None, Some(BROWSER)] {
            let headers = request(accept, Some("zh"));
            let a = render(&loaded, outcome, &headers, &context).expect("page");
            let b = render(&builtin, outcome, &headers, &context).expect("page");
            assert_eq!(a.1, b.1);
        }
    }
}

#[test]
fn classifies_errors_by_source_and_kind() {
    let upstream = |t| Error::new(t).into_up();
    let downstream = |t| Error::new(t).into_down();
    assert_eq!(
        Outcome::from_error(&Error::new(ErrorType::ConnectRefused)),
        Outcome::ConnectFailed
    );
    assert_eq!(
        Outcome::from_error(&upstream(ErrorType::ReadTimedout)),
        Outcome::UpstreamTimeout
    );
    assert_eq!(
        Outcome::from_error(&upstream(ErrorType::ConnectionClosed)),
        Outcome::UpstreamReset
    );
    assert_eq!(
        Outcome::from_error(&upstream(ErrorType::InvalidHTTPHeader)),
        Outcome::UpstreamError
    );
    assert_eq!(
        Outcome::from_error(&downstream(ErrorType::ConnectionClosed)),
        Outcome::ClientGone
    );
    assert_eq!(
        Outcome::from_error(&downstream(ErrorType::InvalidHTTPHeader)),
        Outcome::BadRequest
    );
    assert_eq!(
        Outcome::from_error(&Error::new(ErrorType::InternalError)),
        Outcome::Internal
    );
}

#[test]
fn the_documented_json_example_is_what_ordergate_sends() {
    let readme = include_str!("../../conf/pages/README.md");
    let example = readme
        .split("```json\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a json example in conf/pages/README.md");
    let (_, body) = render(
        &Pages::builtin(),
        Outcome::QueueFull,
        &HeaderMap::new(),
        &PageContext::new("1f0c9a"),
    )
    .expect("page");
    assert_eq!(example, std::str::from_utf8(&body).expect("utf-8"));
}

#[test]
fn a_page_keeps_the_connection_only_when_the_next_request_can_follow() {
    // A whole request read, no shutdown: the connection carries the next request.
    for (outcome, _, _) in PAGED {
        let keeps = keeps_connection(outcome, true, false);
        assert_eq!(keeps, !outcome.closes_connection(), "{outcome:?}");
    }
    assert!(keeps_connection(Outcome::UpstreamReset, true, false));
    assert!(keeps_connection(Outcome::UpstreamTimeout, true, false));
    // The framing or size of the request is not to be trusted.
    for outcome in [
        Outcome::HeaderTooLarge,
        Outcome::BodyTooLarge,
        Outcome::BadRequest,
    ] {
        assert!(!keeps_connection(outcome, true, false), "{outcome:?}");
    }
    // An unread body, or a process shutting down: close and say so.
    assert!(!keeps_connection(Outcome::NoRoute, false, false));
    assert!(!keeps_connection(Outcome::UpstreamReset, true, true));
}

#[test]
fn a_body_cut_for_size_is_its_own_outcome() {
    let error = Error::explain(BODY_TOO_LARGE, "over").into_down();
    assert_eq!(Outcome::from_error(&error), Outcome::BodyTooLarge);
}

#[test]
fn a_page_links_to_the_shoppers_orders_when_the_route_says_where() {
    let pages = Pages::builtin();
    let context = PageContext {
        link: Some("/my/orders?x=1&y=\"2\""),
        ..PageContext::new("req-42")
    };
    let html = request(Some(BROWSER), None);
    let (_, body) = render(&pages, Outcome::OrderOutcomeUnknown, &html, &context).expect("page");
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    assert!(
        text.contains("<a href=\"/my/orders?x=1&amp;y=&quot;2&quot;\">See my orders</a>"),
        "{text}"
    );
    let (_, body) = render(
        &pages,
        Outcome::OrderOutcomeUnknown,
        &request(None, None),
        &context,
    )
    .expect("page");
    let page: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(page["orders_url"], "/my/orders?x=1&y=\"2\"");
    let (_, body) = render(
        &pages,
        Outcome::OrderOutcomeUnknown,
        &html,
        &PageContext::new("req-42"),
    )
    .expect("page");
    assert!(!String::from_utf8(body.to_vec())
        .expect("utf-8")
        .contains("<a href"));
}

#[test]
fn the_operators_notice_is_shown_escaped_in_html_and_json() {
    let pages = Pages::builtin();
    let context = PageContext {
        notice: Some("Back at 02:00 <UTC>"),
        ..PageContext::new("req-42")
    };
    let (_, body) = render(
        &pages,
        Outcome::Maintenance,
        &request(Some(BROWSER), None),
        &context,
    )
    .expect("page");
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    assert!(text.contains("Back at 02:00 &lt;UTC&gt;"), "{text}");
    let (_, body) =
        render(&pages, Outcome::Maintenance, &request(None, None), &context).expect("page");
    let page: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(page["notice"], "Back at 02:00 <UTC>");
}

#[test]
fn the_waiting_room_page_shows_the_place_and_the_estimate() {
    let pages = Pages::builtin();
    let view = crate::room::View {
        position: Some(12),
        ahead: Some(11),
        estimated_wait: Some(30),
        refresh: 10,
        opens_in: None,
    };
    let room = RoomPage {
        request_id: "req-42",
        trace_id: None,
        room: "sale",
        view,
        set_cookie: Some("ordergate_room_sale=t.x; Path=/"),
    };
    let (head, body) = render_room(&pages, &request(Some(BROWSER), None), &room).expect("page");
    let html = check_common(
        Outcome::WaitingRoom,
        503,
        Some(10),
        &head,
        &body,
        "text/html; charset=utf-8",
        "en",
    );
    assert!(
        html.contains("You are number 12 in line (11 ahead of you)."),
        "{html}"
    );
    assert!(html.contains("about 30 s"), "{html}");
    assert!(
        html.contains(r#"<meta http-equiv="refresh" content="10">"#),
        "{html}"
    );
    assert!(!html.contains("<script"), "works without JavaScript");
    assert_eq!(
        header(&head, "set-cookie"),
        Some("ordergate_room_sale=t.x; Path=/")
    );

    let (head, body) = render_room(
        &pages,
        &request(Some("application/json"), Some("zh-CN")),
        &room,
    )
    .expect("page");
    check_common(
        Outcome::WaitingRoom,
        503,
        Some(10),
        &head,
        &body,
        "application/json; charset=utf-8",
        "zh-CN",
    );
    let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(json["state"], "waiting");
    assert_eq!(json["room"], "sale");
    assert_eq!(json["position"], 12);
    assert_eq!(json["ahead"], 11);
    assert_eq!(json["estimated_wait_s"], 30);
    assert_eq!(json["refresh_s"], 10);
    assert_eq!(json["request_id"], "req-42");
    assert!(json.get("opens_in_s").is_none());

    // A long wait is said in minutes.
    let long = RoomPage {
        view: crate::room::View {
            estimated_wait: Some(1500),
            ..view
        },
        ..room
    };
    let (_, body) = render_room(&pages, &request(Some(BROWSER), None), &long).expect("page");
    let html = String::from_utf8(body.to_vec()).expect("utf-8");
    assert!(html.contains("Estimated wait: about 25 min"), "{html}");
    assert!(!html.contains("1500 s"), "{html}");
    let (_, body) =
        render_room(&pages, &request(Some(BROWSER), Some("zh-CN")), &long).expect("page");
    let html = String::from_utf8(body.to_vec()).expect("utf-8");
    assert!(html.contains("预计等待约 25 分钟"), "{html}");

    // Before the opening: no place yet, the time to the opening.
    let before = RoomPage {
        view: crate::room::View {
            position: None,
            ahead: None,
            estimated_wait: Some(125),
            refresh: 10,
            opens_in: Some(120),
        },
        set_cookie: None,
        ..room
    };
    let (head, body) =
        render_room(&pages, &request(Some(BROWSER), Some("zh-CN")), &before).expect("page");
    let html = String::from_utf8(body.to_vec()).expect("utf-8");
    assert!(html.contains("活动将在 120 秒后开始"), "{html}");
    assert!(!html.contains("排第"), "{html}");
    assert_eq!(header(&head, "set-cookie"), None);
}

#[test]
fn the_json_page_carries_the_trace_id_and_only_when_traced() {
    let pages = Pages::builtin();
    let json = request(None, None);
    let traced = PageContext {
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        ..PageContext::new("req-42")
    };
    let (_, body) = render(&pages, Outcome::UpstreamReset, &json, &traced).expect("page");
    let page: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(page["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(page["request_id"], "req-42");
    let (_, body) = render(
        &pages,
        Outcome::UpstreamReset,
        &json,
        &PageContext::new("req-42"),
    )
    .expect("page");
    let page: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert!(page.get("trace_id").is_none(), "{page}");
}
