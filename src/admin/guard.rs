//! Who may use the admin API. A browser is the adversary here: a page on
//! another site the operator happens to open can send requests to the admin
//! listener (a form post or a `no-cors` fetch needs no permission), and a
//! DNS-rebinding page reaches it under the attacker's host name. So, with or
//! without a token:
//!
//! - the `Host` must be an IP address, `localhost`, or a name in
//!   `admin.hosts` (else 421): a rebinding page's requests carry its own name;
//! - a request that changes state (anything but GET, HEAD and OPTIONS) must
//!   say `Content-Type: application/json`, which a cross-site page cannot send
//!   without a CORS preflight that the admin API never grants (else 415), and
//!   when it carries `Origin` or `Sec-Fetch-Site`, they must name this
//!   listener itself (else 403);
//! - with a token, every request but the open ones carries
//!   `Authorization: Bearer <token>` (the scheme in any case) (else 401).
//!
//! A request without `Host` (HTTP/1.0 tools) is taken: browsers always send it.

use std::net::IpAddr;

use http::{HeaderMap, Method, StatusCode};

use crate::config::AdminConfig;

/// Why a request is refused, with the status it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The `Host` is not one this listener answers to.
    MisdirectedHost(String),
    /// A state change sent from another site.
    CrossSite(&'static str),
    /// A state change without `Content-Type: application/json`.
    NotJson,
    /// No valid bearer token.
    Unauthorized,
}

/// Why the admin API turned something away: the `reason` label of
/// `ordergate_admin_refused_total`, exported at zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub(super) enum Reason {
    /// A `Host` the listener does not answer to.
    Host,
    /// A state change from another site.
    CrossSite,
    /// A state change that is not JSON.
    NotJson,
    /// No valid bearer token.
    Unauthorized,
    /// A connection over `admin.max_connections`, closed at once.
    TooManyConnections,
    /// A connection that sent no request head within `admin.header_timeout`.
    HeaderTimeout,
}

/// The admin API's own metric family, registered once per process.
#[derive(Debug)]
pub(super) struct GuardMetrics {
    refused: prometheus::IntCounterVec,
}

impl GuardMetrics {
    /// The family on `metrics`' registry.
    pub(super) fn of(metrics: &crate::telemetry::Metrics) -> std::sync::Arc<GuardMetrics> {
        metrics.registered(|registry| {
            let refused = prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "ordergate_admin_refused_total",
                    "Admin API requests and connections turned away, by reason.",
                ),
                &["reason"],
            )
            .expect("static metric");
            for reason in <Reason as strum::VariantArray>::VARIANTS {
                refused.with_label_values(&[<&str>::from(reason)]);
            }
            if let Err(e) = registry.register(Box::new(refused.clone())) {
                log::error!("cannot register ordergate_admin_refused_total: {e}");
            }
            GuardMetrics { refused }
        })
    }

    /// Counts one refusal.
    pub(super) fn count(&self, reason: Reason) {
        self.refused
            .with_label_values(&[<&str>::from(reason)])
            .inc();
    }
}

impl Refusal {
    /// The metric's reason.
    pub(super) fn reason(&self) -> Reason {
        match self {
            Refusal::MisdirectedHost(_) => Reason::Host,
            Refusal::CrossSite(_) => Reason::CrossSite,
            Refusal::NotJson => Reason::NotJson,
            Refusal::Unauthorized => Reason::Unauthorized,
        }
    }

    /// The status of the answer.
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Refusal::MisdirectedHost(_) => StatusCode::MISDIRECTED_REQUEST,
            Refusal::CrossSite(_) => StatusCode::FORBIDDEN,
            Refusal::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
        }
    }

    /// The message of the answer.
    pub(super) fn message(&self) -> String {
        match self {
            Refusal::MisdirectedHost(host) => {
                format!("the admin API does not answer to the host {host:?}; add it to admin.hosts")
            }
            Refusal::CrossSite(what) => format!("refused a cross-site request ({what})"),
            Refusal::NotJson => {
                "a request that changes state needs Content-Type: application/json".into()
            }
            Refusal::Unauthorized => "a valid bearer token is required".into(),
        }
    }
}

/// Whether `request` may go on; `open` paths need no token.
pub(super) fn check(
    config: &AdminConfig,
    method: &Method,
    headers: &HeaderMap,
    open: bool,
) -> Result<(), Refusal> {
    let host = header(headers, "host");
    if let Some(host) = host {
        if !known_host(config, host) {
            return Err(Refusal::MisdirectedHost(host.to_owned()));
        }
    }
    let changes_state = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if changes_state {
        same_origin(headers, host)?;
    }
    if let (Some(token), false) = (config.token.as_deref(), open) {
        let given = header(headers, "authorization")
            .and_then(bearer)
            .unwrap_or("");
        if !crate::secret::same(given.as_bytes(), token.as_bytes()) {
            return Err(Refusal::Unauthorized);
        }
    }
    if changes_state && !is_json(headers) {
        return Err(Refusal::NotJson);
    }
    Ok(())
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The host part of a `Host` value (port and IPv6 brackets removed, lower
/// case, no trailing dot).
fn host_name(host: &str) -> String {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        },
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// An IP literal (a browser that sends one connected to that address, so no
/// rebinding), `localhost`, or a configured name.
fn known_host(config: &AdminConfig, host: &str) -> bool {
    let name = host_name(host);
    name.parse::<IpAddr>().is_ok() || name == "localhost" || config.hosts.contains(&name)
}

/// `Sec-Fetch-Site`, when sent, says the request came from this origin (or
/// from no page at all); `Origin`, when sent, is this listener's own.
fn same_origin(headers: &HeaderMap, host: Option<&str>) -> Result<(), Refusal> {
    if let Some(site) = header(headers, "sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return Err(Refusal::CrossSite("Sec-Fetch-Site"));
        }
    }
    let Some(origin) = header(headers, "origin") else {
        return Ok(());
    };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    match (authority, host) {
        (Some(authority), Some(host)) if authority.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(Refusal::CrossSite("Origin")),
    }
}

/// The token of an `Authorization: Bearer <token>` value, the scheme matched
/// in any case (RFC 9110 §11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// `Content-Type: application/json`, parameters allowed.
fn is_json(headers: &HeaderMap) -> bool {
    header(headers, "content-type")
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;

    fn config(token: Option<&str>) -> AdminConfig {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
            token: token.map(str::to_owned),
            hosts: vec!["ops.shop.example".into()],
            max_connections: 64,
            header_timeout: Duration::from_secs(10),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().expect("value"));
        }
        map
    }

    const JSON: (&str, &str) = ("content-type", "application/json; charset=utf-8");

    #[test]
    fn only_addresses_localhost_and_configured_names_are_answered() {
        let c = config(None);
        for host in [
            "127.0.0.1:9901",
            "10.1.2.3",
            "[::1]:9901",
            "localhost:9901",
            "LOCALHOST.",
            "ops.shop.example:8443",
        ] {
            let ok = check(&c, &Method::GET, &headers(&[("host", host)]), false);
            assert_eq!(ok, Ok(()), "{host}");
        }
        for host in ["attacker.example:9901", "shop.example", "127.0.0.1.nip.io"] {
            let refused = check(&c, &Method::GET, &headers(&[("host", host)]), true);
            assert_eq!(
                refused,
                Err(Refusal::MisdirectedHost(host.into())),
                "{host}"
            );
        }
        assert_eq!(check(&c, &Method::GET, &HeaderMap::new(), false), Ok(()));
    }

    #[test]
    fn a_state_change_needs_json_from_this_origin() {
        let c = config(None);
        let host = ("host", "127.0.0.1:9901");
        let post =
            |pairs: &[(&'static str, &str)]| check(&c, &Method::POST, &headers(pairs), false);
        assert_eq!(post(&[host, JSON]), Ok(()));
        assert_eq!(
            post(&[host, JSON, ("origin", "http://127.0.0.1:9901")]),
            Ok(())
        );
        assert_eq!(
            post(&[host, JSON, ("sec-fetch-site", "same-origin")]),
            Ok(())
        );
        assert_eq!(post(&[host]), Err(Refusal::NotJson));
        assert_eq!(
            post(&[host, ("content-type", "text/plain")]),
            Err(Refusal::NotJson)
        );
        let cross = Err(Refusal::CrossSite("Origin"));
        assert_eq!(
            post(&[host, JSON, ("origin", "http://attacker.example")]),
            cross
        );
        assert_eq!(post(&[host, JSON, ("origin", "null")]), cross);
        assert_eq!(
            post(&[host, JSON, ("sec-fetch-site", "cross-site")]),
            Err(Refusal::CrossSite("Sec-Fetch-Site"))
        );
        // Reads need neither.
        assert_eq!(check(&c, &Method::GET, &headers(&[host]), false), Ok(()));
        let delete = check(&c, &Method::DELETE, &headers(&[host]), false);
        assert_eq!(delete, Err(Refusal::NotJson));
    }

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        let token = "a-token-of-sixteen-or-more";
        let c = config(Some(token));
        for value in [
            format!("Bearer {token}"),
            format!("bearer  {token}"),
            format!("BEARER {token}"),
        ] {
            let given = headers(&[("authorization", &value)]);
            assert_eq!(check(&c, &Method::GET, &given, false), Ok(()), "{value}");
        }
        for value in [
            format!("Basic {token}"),
            format!("Bearer{token}"),
            "Bearer nope".into(),
        ] {
            let given = headers(&[("authorization", &value)]);
            assert_eq!(
                check(&c, &Method::GET, &given, false),
                Err(Refusal::Unauthorized)
            );
        }
        assert_eq!(
            check(&c, &Method::GET, &HeaderMap::new(), true),
            Ok(()),
            "open path"
        );
        // A cross-site state change is refused before the token is looked at.
        let forged = headers(&[("origin", "http://attacker.example"), JSON]);
        assert_eq!(
            check(&c, &Method::POST, &forged, true),
            Err(Refusal::CrossSite("Origin"))
        );
    }
}
