//! Property tests: whatever an operator writes in the TOML file and whatever
//! headers a client sends, ordergate answers with an error or a decision, never
//! a panic. Covers `check` and reload (config parsing, validation, building a
//! snapshot and applying it), route matching, language and format negotiation,
//! request-id handling and consistent-hash key extraction.

use std::net::IpAddr;
use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use ordergate::config::Config;
use ordergate::forward;
use ordergate::respond::{self, Outcome, PageContext, Pages};
use ordergate::state::State;
use proptest::prelude::*;

/// The shipped reference config, every key present.
const REFERENCE: &str = include_str!("../../conf/ordergate.toml");

/// A config that always validates: the base for mutations that stay near valid.
const SMALL: &str = r#"
[server]
listen = ["127.0.0.1:18080"]
[[pools]]
name = "orders"
balance = "consistent_hash"
hash_key = "cookie:session"
backends = [{ addr = "127.0.0.1:19001", weight = 2 }, { addr = "127.0.0.1:19002" }]
[pools.queue]
max_waiting = 10
[[routes]]
name = "checkout"
host = "shop.test"
path_prefix = "/api/orders"
methods = ["POST"]
pool = "orders"
priority = "critical"
[routes.rate_limit]
requests_per_second = 5
key = "header:x-user"
[[routes]]
name = "catalog"
pool = "orders"
"#;

/// Text an operator might plausibly get wrong: TOML punctuation, keys, values.
fn toml_fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("[".to_string()),
        Just("]]".to_string()),
        Just("[[pools]]\n".to_string()),
        Just("[pools]\n".to_string()),
        Just("name = \"x\"\n".to_string()),
        Just(" = ".to_string()),
        Just("\"".to_string()),
        Just("\n".to_string()),
        Just("-1".to_string()),
        Just("99999999999999999999".to_string()),
        Just("\"0s\"".to_string()),
        Just("\"1MiB\"".to_string()),
        Just("true".to_string()),
        Just("{ addr = \"::1\" }".to_string()),
        "[a-z_]{1,12} = [0-9]{1,6}\n",
        "[a-z_]{1,12} = \"[ -~]{0,12}\"\n",
        any::<String>(),
    ]
}

/// A mutation of a config text: cut a range, insert a fragment, or both.
fn mutated(base: &'static str) -> impl Strategy<Value = String> {
    let len = base.len();
    (0..=len, 0..=len, 0..64usize, toml_fragment()).prop_map(move |(a, b, cut, fragment)| {
        let at = floor_char_boundary(base, a.min(b));
        let end = floor_char_boundary(base, (at + cut).min(len));
        let insert_at = floor_char_boundary(base, a.max(b));
        let mut text = String::with_capacity(len + fragment.len());
        text.push_str(&base[..at]);
        if insert_at > end {
            text.push_str(&base[end..insert_at]);
            text.push_str(&fragment);
            text.push_str(&base[insert_at..]);
        } else {
            text.push_str(&fragment);
            text.push_str(&base[end..]);
        }
        text
    })
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while at > 0 && !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// `check` and a reload of `text`: parse, validate, and when valid, build a
/// snapshot and apply it to a running state as a reload would.
fn check_and_reload(text: &str) {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    match Config::from_toml_in(text, &base) {
        Ok(config) => {
            let state = State::new(config.clone(), None);
            state.apply(config);
            let _ = state.snapshot();
        }
        Err(problems) => {
            assert!(!problems.is_empty(), "an error names at least one problem");
            for problem in problems {
                assert!(!problem.to_string().is_empty());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_a_config_or_a_list_of_problems(text in any::<String>()) {
        check_and_reload(&text);
    }

    #[test]
    fn a_mutated_reference_config_never_panics(text in mutated(REFERENCE)) {
        check_and_reload(&text);
    }

    #[test]
    fn a_mutated_small_config_never_panics(text in mutated(SMALL)) {
        check_and_reload(&text);
    }
}

/// Header names a client may send, including the ones ordergate reads.
fn header_name() -> impl Strategy<Value = HeaderName> {
    prop_oneof![
        Just(http::header::ACCEPT),
        Just(http::header::ACCEPT_LANGUAGE),
        Just(http::header::COOKIE),
        Just(http::header::HOST),
        Just(HeaderName::from_static("x-request-id")),
        Just(HeaderName::from_static("x-user")),
        Just(HeaderName::from_static("x-forwarded-for")),
        "[a-z][a-z0-9-]{0,20}".prop_map(|n| HeaderName::try_from(n).expect("valid name")),
    ]
}

/// Header values: any bytes a header value may hold (visible ASCII, tab, and
/// bytes above 0x7f),
/// including non-UTF-8 and the shapes the parsers look for.
fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        proptest::collection::vec(
            any::<u8>().prop_filter("a header value byte", |b| *b == b'\t'
                || (*b >= 0x20 && *b != 0x7f)),
            0..80
        )
        .prop_map(|bytes| HeaderValue::from_bytes(&bytes).expect("valid value")),
        "[a-zA-Z*/;=.,0-9 -]{0,60}".prop_map(|s| HeaderValue::from_str(&s).expect("valid value")),
        "(session=[^;]{0,10}; ?){0,4}"
            .prop_map(|s| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""))),
        "(zh|en|fr|\\*)(-[A-Z]{2})?(;q=[0-9.]{1,5})?(, ?(zh|en)(;q=0\\.[0-9])?){0,3}"
            .prop_map(|s| HeaderValue::from_str(&s).expect("valid value")),
    ]
}

fn header_map() -> impl Strategy<Value = HeaderMap> {
    proptest::collection::vec((header_name(), header_value()), 0..12).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name, value);
        }
        map
    })
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PATCH),
        Just(Method::OPTIONS),
        "[A-Z]{1,10}".prop_map(|m| Method::from_bytes(m.as_bytes()).expect("token")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_request_is_routed_negotiated_and_keyed_without_panic(
        headers in header_map(),
        host in proptest::option::of("[ -~]{0,40}"),
        path in "/[ -~]{0,60}",
        method in method(),
        client in proptest::option::of(any::<[u8; 4]>()),
    ) {
        let config = Config::from_toml(SMALL).expect("the small config is valid");
        let state = State::new(config, None);
        let snapshot = state.snapshot();
        let route = snapshot.routes.classify(host.as_deref(), &path, &method);
        if let Some(index) = route {
            prop_assert!(snapshot.routes.get(index).is_some());
        }
        let client_ip = client.map(IpAddr::from);
        for pool in &snapshot.pools {
            let _ = pool.request_hash(&headers, client_ip);
        }
        let id = forward::request_id(headers.get("x-request-id").map(|v| v.as_bytes()));
        prop_assert!(!id.is_empty() && HeaderValue::from_str(&id).is_ok(), "{id:?}");
        let mut upstream = pingora::http::RequestHeader::build("GET", b"/", None).expect("request");
        for (name, value) in &headers {
            upstream.append_header(name.clone(), value.clone()).expect("any header is kept");
        }
        let shopper = ordergate::client::Client { ip: client_ip, ..Default::default() };
        prop_assert!(forward::add_headers(&mut upstream, &shopper, &id).is_ok());
        let forwarded_for = upstream.headers.get_all("x-forwarded-for").iter().count();
        prop_assert_eq!(forwarded_for, usize::from(client_ip.is_some()));
        let pages = Pages::builtin();
        for outcome in [Outcome::NoRoute, Outcome::Shed, Outcome::UpstreamReset] {
            let (head, body) = respond::render(&pages, outcome, &headers, &PageContext::new(&id))
                .expect("every outcome with a page renders");
            prop_assert_eq!(head.status.as_u16(), outcome.status());
            prop_assert!(!body.is_empty());
        }
    }
}
