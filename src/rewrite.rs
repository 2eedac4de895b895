//! What a route changes on the way, the edge's usual chores: a plain-HTTP
//! request sent to HTTPS (`server.https_redirect` or the route's), the
//! route's prefix stripped from the path the backend gets (`strip_prefix`),
//! request and answer headers set or removed (`request_headers`,
//! `response_headers`), and `Strict-Transport-Security` on answers over
//! HTTPS (`[server.hsts]`).
//!
//! Header rules apply to backends' answers, not to ordergate's own pages
//! (which carry their own fixed headers). A route without rules costs a
//! branch per phase.

use http::{HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::{HeaderRules, RouteConfig};

/// What a request gets from the route's HTTPS rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Https {
    /// Served as it came: already HTTPS, or the route does not redirect.
    Serve,
    /// Sent to HTTPS: 301 for GET and HEAD, 308 for the rest (so a browser
    /// repeats a POST with its body).
    Redirect {
        /// 301 or 308.
        status: u16,
        /// `https://host[:port]/path?query`.
        location: String,
    },
    /// Its host cannot be put in a `Location` (the `bad_request` page: the
    /// header would be the client's to forge).
    BadHost,
}

/// Where a request on `route` goes, given whether it came over HTTPS and
/// the port HTTPS redirects name.
pub fn https_redirect(
    route: &RouteConfig,
    https: bool,
    request: &RequestHeader,
    https_port: u16,
) -> Https {
    if https || !route.https_redirect {
        return Https::Serve;
    }
    let Some(host) = crate::forward::request_host(request).and_then(bare_host) else {
        return Https::BadHost;
    };
    let target = request.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = if https_port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{https_port}{target}")
    };
    let status = if request.method == Method::GET || request.method == Method::HEAD {
        301
    } else {
        308
    };
    Https::Redirect { status, location }
}

/// The host of a `Host` value without its port, when it is a plain name or
/// address (anything else could smuggle text into a `Location`).
fn bare_host(host: &str) -> Option<&str> {
    let name = if host.starts_with('[') {
        // An IPv6 literal keeps its brackets.
        &host[..=host.find(']')?]
    } else {
        host.split(':').next()?
    };
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'[' | b']' | b':'));
    valid.then_some(name)
}

/// The request the backend gets: the route's prefix stripped from the path
/// (`strip_prefix`; at least `/` is left, the query kept) and its header
/// rules applied.
pub fn upstream_request(route: &RouteConfig, upstream: &mut RequestHeader) -> pingora::Result<()> {
    if route.strip_prefix {
        if let Some(uri) = stripped(&upstream.uri, &route.path_prefix) {
            upstream.set_uri(uri);
        }
    }
    let rules = &route.request_headers;
    for name in &rules.remove {
        upstream.remove_header(name);
    }
    for (name, value) in &rules.set {
        upstream.insert_header(name.clone(), value.clone())?;
    }
    Ok(())
}

/// `uri` without `prefix` (matched on whole segments by routing); `None`
/// when nothing changes.
fn stripped(uri: &http::Uri, prefix: &str) -> Option<http::Uri> {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return None;
    }
    let rest = uri.path().strip_prefix(prefix)?;
    let path = if rest.is_empty() { "/" } else { rest };
    let target = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    http::Uri::try_from(target).ok()
}

/// A backend's answer as the shopper gets it: the route's header rules,
/// and `Strict-Transport-Security` over HTTPS when set.
pub fn response(
    rules: &HeaderRules,
    hsts: Option<&HeaderValue>,
    https: bool,
    response: &mut ResponseHeader,
) -> pingora::Result<()> {
    for name in &rules.remove {
        response.remove_header(name);
    }
    for (name, value) in &rules.set {
        response.insert_header(name.clone(), value.clone())?;
    }
    if let Some(hsts) = hsts.filter(|_| https) {
        response.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(extra: &str) -> RouteConfig {
        let text = format!(
            "[[pools]]\nname = \"p\"\nbackends = [{{ addr = \"127.0.0.1:1\" }}]\n[[routes]]\nname = \"r\"\npool = \"p\"\npath_prefix = \"/shop/\"\n{extra}\n"
        );
        let routes = crate::config::Config::from_toml(&text)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .routes;
        std::sync::Arc::unwrap_or_clone(routes[0].clone())
    }

    fn request(method: &str, target: &str, host: &str) -> RequestHeader {
        let mut request = RequestHeader::build(method, target.as_bytes(), None).expect("request");
        request.insert_header("host", host).expect("host");
        request
    }

    #[test]
    fn plain_http_goes_to_https_with_301_or_308() {
        let on = route("https_redirect = true");
        let get = request("GET", "/shop/cart?x=1", "shop.example:8080");
        assert_eq!(
            https_redirect(&on, false, &get, 443),
            Https::Redirect {
                status: 301,
                location: "https://shop.example/shop/cart?x=1".to_string()
            }
        );
        let post = request("POST", "/shop/orders", "[2001:db8::1]:80");
        assert_eq!(
            https_redirect(&on, false, &post, 8443),
            Https::Redirect {
                status: 308,
                location: "https://[2001:db8::1]:8443/shop/orders".to_string()
            }
        );
        assert_eq!(
            https_redirect(&on, true, &get, 443),
            Https::Serve,
            "already HTTPS"
        );
        assert_eq!(
            https_redirect(&route(""), false, &get, 443),
            Https::Serve,
            "off"
        );
        let smuggled = request("GET", "/", "evil.example/x?");
        assert_eq!(https_redirect(&on, false, &smuggled, 443), Https::BadHost);
        assert_eq!(bare_host("a b"), None);
        assert_eq!(bare_host("shop.example"), Some("shop.example"));
    }

    #[test]
    fn strip_prefix_leaves_the_rest_and_the_query() {
        let uri = |s: &str| http::Uri::try_from(s).expect("uri");
        assert_eq!(
            stripped(&uri("/shop/api/x?q=1"), "/shop/"),
            Some(uri("/api/x?q=1"))
        );
        assert_eq!(stripped(&uri("/shop"), "/shop"), Some(uri("/")));
        assert_eq!(stripped(&uri("/other"), "/shop"), None);
        assert_eq!(stripped(&uri("/x"), "/"), None);
        let mut upstream = request("GET", "/shop/api?q=2", "shop.example");
        upstream.insert_header("x-debug", "1").expect("header");
        let rules = route(
            "strip_prefix = true\n[routes.request_headers]\nset = { \"x-shop\" = \"cn\" }\nremove = [\"x-debug\"]",
        );
        upstream_request(&rules, &mut upstream).expect("rules");
        assert_eq!(upstream.uri, uri("/api?q=2"));
        assert_eq!(
            upstream.headers.get("x-shop").map(|v| v.as_bytes()),
            Some(&b"cn"[..])
        );
        assert!(upstream.headers.get("x-debug").is_none());
    }

    #[test]
    fn answer_rules_and_hsts_over_https_only() {
        let rules = route(
            "[routes.response_headers]\nset = { \"cache-control\" = \"no-store\" }\nremove = [\"server\"]",
        )
        .response_headers;
        let hsts = HeaderValue::from_static("max-age=31536000");
        for https in [false, true] {
            let mut answer = ResponseHeader::build(200, None).expect("answer");
            answer
                .insert_header("server", "order-server/1.2")
                .expect("header");
            response(&rules, Some(&hsts), https, &mut answer).expect("rules");
            assert!(answer.headers.get("server").is_none());
            assert_eq!(
                answer.headers.get("cache-control").map(|v| v.as_bytes()),
                Some(&b"no-store"[..])
            );
            assert_eq!(
                answer.headers.contains_key("strict-transport-security"),
                https
            );
        }
    }
}
