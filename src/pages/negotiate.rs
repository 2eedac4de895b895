//! Content negotiation for ordergate's pages: HTML or JSON from `Accept`, the
//! language from `Accept-Language`. Both parse q-values; anything unreadable is
//! skipped, never an error.

use http::header::{ACCEPT, ACCEPT_LANGUAGE};
use http::HeaderMap;

/// The comma-separated items of every value of `name`, each split into its
/// value (lower-cased) and its q-value (1 when absent; 0 when malformed).
fn weighted_items(headers: &HeaderMap, name: http::header::HeaderName) -> Vec<(String, f32)> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|item| {
            let mut parts = item.split(';');
            let value = parts.next()?.trim().to_ascii_lowercase();
            if value.is_empty() {
                return None;
            }
            let mut q = 1.0;
            for param in parts {
                if let Some((key, raw)) = param.split_once('=') {
                    if key.trim().eq_ignore_ascii_case("q") {
                        q = raw
                            .trim()
                            .parse::<f32>()
                            .ok()
                            .filter(|q| q.is_finite())
                            .map_or(0.0, |q| q.clamp(0.0, 1.0));
                    }
                }
            }
            Some((value, q))
        })
        .collect()
}

/// The q-value `ranges` give to `media` (`type/subtype`) and how specific the
/// deciding range is: the most specific matching range decides
/// (`type/subtype` 3, then `type/*` 2, then `*/*` 1); none matching gives (0, 0).
fn quality(ranges: &[(String, f32)], media: &str) -> (f32, u8) {
    let kind = media.split('/').next().unwrap_or(media);
    let mut best: Option<(u8, f32)> = None;
    for (range, q) in ranges {
        let specificity = if range == media {
            3
        } else if range.strip_suffix("/*") == Some(kind) {
            2
        } else if range == "*/*" {
            1
        } else {
            continue;
        };
        best = match best {
            Some((s, bq)) if s > specificity || (s == specificity && bq >= *q) => Some((s, bq)),
            _ => Some((specificity, *q)),
        };
    }
    best.map_or((0.0, 0), |(s, q)| (q, s))
}

/// Whether the client prefers `text/html` over `application/json`: the higher
/// q-value wins; at equal q-values the type named more explicitly wins
/// (`text/html, */*` is a browser); a full tie (`*/*`, no `Accept`, both named
/// alike) gives JSON. Apps get JSON, browsers get HTML.
pub(crate) fn prefers_html(headers: &HeaderMap) -> bool {
    let ranges = weighted_items(headers, ACCEPT);
    let (html_q, html_specific) = quality(&ranges, "text/html");
    let (json_q, json_specific) = quality(&ranges, "application/json");
    html_q > json_q || (html_q == json_q && html_q > 0.0 && html_specific > json_specific)
}

/// The script a Chinese tag implies: Traditional for Hant/TW/HK/MO, Simplified
/// for Hans/CN/SG/MY, none otherwise.
fn chinese_script(subtags: &[String]) -> Option<&'static str> {
    if subtags.first().map(String::as_str) != Some("zh") {
        return None;
    }
    subtags[1..].iter().find_map(|s| match s.as_str() {
        "hant" | "tw" | "hk" | "mo" => Some("hant"),
        "hans" | "cn" | "sg" | "my" => Some("hans"),
        _ => None,
    })
}

fn subtags(tag: &str) -> Vec<String> {
    tag.split(['-', '_'])
        .map(|s| s.trim().to_ascii_lowercase())
        .collect()
}

/// The best of `available` for one requested tag: most leading subtags in
/// common (at least the language), then the same Chinese script, then the more
/// general tag, then the first listed. `en-US` finds `en`, any `zh*` finds
/// `zh-CN` when it is the only Chinese.
fn best_match(requested: &str, available: &[Vec<String>]) -> Option<usize> {
    let wanted = subtags(requested);
    let script = chinese_script(&wanted);
    available
        .iter()
        .enumerate()
        .filter_map(|(i, tag)| {
            let common = wanted.iter().zip(tag).take_while(|(a, b)| a == b).count();
            (common > 0).then(|| {
                let same_script = script.is_some() && script == chinese_script(tag);
                (
                    common,
                    same_script,
                    std::cmp::Reverse(tag.len()),
                    std::cmp::Reverse(i),
                )
            })
        })
        .max()
        .map(|(_, _, _, std::cmp::Reverse(i))| i)
}

/// The index in `available` of the language the client wants most, following
/// `Accept-Language` in q-value order (q=0 excludes); `None` when nothing
/// matches or `*` comes first: the caller's default.
pub(crate) fn pick_language<'a>(
    headers: &HeaderMap,
    available: impl IntoIterator<Item = &'a str>,
) -> Option<usize> {
    let mut requested = weighted_items(headers, ACCEPT_LANGUAGE);
    if requested.is_empty() {
        return None;
    }
    // Stable: equal q-values keep the client's order.
    requested.sort_by(|a, b| b.1.total_cmp(&a.1));
    let available: Vec<Vec<String>> = available.into_iter().map(subtags).collect();
    for (tag, q) in requested {
        if q <= 0.0 {
            break;
        }
        if tag == "*" {
            return None;
        }
        if let Some(i) = best_match(&tag, &available) {
            return Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: http::header::HeaderName, value: &'static str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(name, http::HeaderValue::from_static(value));
        map
    }

    fn html(accept: &'static str) -> bool {
        prefers_html(&with(ACCEPT, accept))
    }

    #[test]
    fn browsers_get_html_and_apps_get_json() {
        // Firefox, Chrome, Safari.
        assert!(html(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        ));
        assert!(html("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"));
        assert!(
            html("text/html, */*"),
            "the explicit type beats */* at equal q"
        );
        assert!(
            html("text/html, application/xhtml+xml, image/jxr, */*"),
            "IE 11"
        );
        assert!(html("text/*, */*"));
        assert!(!html("text/html;q=0.8, */*"));
        assert!(html("text/*"));
        assert!(!html("application/json"));
        assert!(!html("*/*"), "curl");
        assert!(!prefers_html(&HeaderMap::new()), "no Accept");
        assert!(!html(""));
        assert!(!html("image/png"));
    }

    #[test]
    fn accept_follows_q_values() {
        assert!(!html("text/html;q=0.5, application/json"));
        assert!(html("application/json;q=0.5, text/html"));
        assert!(!html("application/json, text/html"), "a tie gives JSON");
        assert!(!html("text/html;q=0, */*"), "q=0 means not acceptable");
        assert!(html("TEXT/HTML ; Q=0.9 , application/json ; q=0.1"));
        assert!(
            html("text/html;level=1;q=0.9, application/*;q=0.2"),
            "other parameters are ignored"
        );
        assert!(!html("text/html;q=bogus, application/json;q=0.1"));
        assert!(
            !html("*/*;q=0.9, application/json"),
            "the most specific range decides"
        );
    }

    #[test]
    fn several_accept_headers_count_together() {
        let mut map = with(ACCEPT, "application/json;q=0.2");
        map.append(ACCEPT, http::HeaderValue::from_static("text/html"));
        assert!(prefers_html(&map));
    }

    fn lang(value: &'static str) -> Option<&'static str> {
        let available = ["en", "zh-CN"];
        pick_language(&with(ACCEPT_LANGUAGE, value), available).map(|i| available[i])
    }

    #[test]
    fn languages_match_by_prefix() {
        assert_eq!(lang("en"), Some("en"));
        assert_eq!(lang("en-US"), Some("en"));
        assert_eq!(lang("EN-gb"), Some("en"));
        assert_eq!(lang("zh"), Some("zh-CN"));
        assert_eq!(lang("zh-CN"), Some("zh-CN"));
        assert_eq!(lang("zh-cn"), Some("zh-CN"));
        assert_eq!(lang("zh_CN"), Some("zh-CN"));
        assert_eq!(lang("zh-Hans-CN"), Some("zh-CN"));
        assert_eq!(lang("zh-TW"), Some("zh-CN"), "the only Chinese shipped");
        assert_eq!(lang("zh-Hant-HK"), Some("zh-CN"));
    }

    #[test]
    fn languages_follow_q_values_and_fall_back() {
        assert_eq!(lang("zh-CN,zh;q=0.9,en;q=0.8"), Some("zh-CN"));
        assert_eq!(lang("en;q=0.5, zh;q=0.8"), Some("zh-CN"));
        assert_eq!(lang("fr-FR, fr;q=0.9, zh;q=0.5"), Some("zh-CN"));
        assert_eq!(lang("fr-FR, de;q=0.9, en;q=0.1"), Some("en"));
        assert_eq!(lang("zh;q=0, en"), Some("en"));
        assert_eq!(lang("zh;q=0"), None);
        assert_eq!(lang("fr"), None);
        assert_eq!(lang("*"), None);
        assert_eq!(lang("fr, *;q=0.5, zh;q=0.1"), None, "* before zh");
        assert_eq!(lang(""), None);
        assert_eq!(pick_language(&HeaderMap::new(), ["en"]), None);
        assert_eq!(lang("z, zhx"), None, "whole subtags only");
    }

    #[test]
    fn chinese_scripts_pick_the_closer_file() {
        let available = ["en", "zh-CN", "zh-TW"];
        let pick = |v: &'static str| {
            pick_language(&with(ACCEPT_LANGUAGE, v), available).map(|i| available[i])
        };
        assert_eq!(pick("zh-Hant-HK"), Some("zh-TW"));
        assert_eq!(pick("zh-HK"), Some("zh-TW"));
        assert_eq!(pick("zh-Hans"), Some("zh-CN"));
        assert_eq!(pick("zh-SG"), Some("zh-CN"));
        assert_eq!(pick("zh"), Some("zh-CN"), "the first listed");
        let general = ["en-GB", "en", "en-US"];
        let pick =
            |v: &'static str| pick_language(&with(ACCEPT_LANGUAGE, v), general).map(|i| general[i]);
        assert_eq!(pick("en-AU"), Some("en"), "the more general tag");
        assert_eq!(pick("en-us"), Some("en-US"));
    }
}
