//! `[tracing]`: W3C trace context and spans sent to an OTLP/HTTP collector
//! (`trace` does it; these are the settings). Without the table, tracing is
//! off and the client's `traceparent`/`tracestate` pass through untouched.

use std::time::Duration;

/// `[tracing]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// Where spans go: an OTLP/HTTP (protobuf) collector. Required.
    pub otlp: OtlpEndpoint,
    /// Share of requests whose trace is kept by chance, 0 to 1 (every
    /// request that ends in a page or is retried is kept anyway). Default: 0.01.
    pub ratio: f64,
    /// Also keep every trace whose client's `traceparent` says `sampled`.
    /// Default: false (a client could otherwise make every request costly).
    pub client_sampled: bool,
    /// `service.name` of the spans. Default: `ordergate`.
    pub service_name: String,
    /// Longest wait for the collector to take one batch. Default: 2s.
    pub timeout: Duration,
    /// Longest time a span waits before its batch is sent. Default: 1s.
    pub interval: Duration,
}

/// Defaults of `[tracing]`.
pub(crate) const DEFAULT_RATIO: f64 = 0.01;
/// See [`TracingConfig::timeout`].
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// See [`TracingConfig::interval`].
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// An OTLP/HTTP endpoint: `http://host:port`, with the path `/v1/traces`
/// unless the URL names another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpEndpoint {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path spans are posted to.
    pub path: String,
}

impl OtlpEndpoint {
    /// Reads `http://host:port[/path]`. Only plain HTTP: a collector (or an
    /// agent) next to ordergate is the usual way to reach a TLS one.
    pub fn parse(text: &str) -> Result<OtlpEndpoint, String> {
        let example = "e.g. \"http://127.0.0.1:4318\"";
        let rest = match text.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => {
                return Err(format!(
                    "{text:?}: https is not supported; send to a collector or agent beside ordergate over http (it forwards with TLS), {example}"
                ))
            }
            _ => return Err(format!("{text:?} is not an http:// URL; {example}")),
        };
        if rest.contains(['?', '#', '@']) || rest.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(format!(
                "{text:?}: no user, query or fragment, only http://host:port/path; {example}"
            ));
        }
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, ""),
        };
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => match v6.split_once("]:") {
                Some((host, port)) => (host, Some(port)),
                None => (v6.trim_end_matches(']'), None),
            },
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let host_ok = host.parse::<std::net::IpAddr>().is_ok() || super::is_host_name(host);
        if !host_ok {
            return Err(format!(
                "{text:?}: {host:?} is not a host name or an IP address; {example}"
            ));
        }
        let Some(port) = port else {
            return Err(format!(
                "{text:?} names no port; OTLP/HTTP listens on 4318, e.g. \"http://{authority}:4318\""
            ));
        };
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{text:?}: {port:?} is not a port (1-65535); {example}"))?;
        let path = if path.is_empty() || path == "/" {
            "/v1/traces".to_string()
        } else {
            path.to_string()
        };
        Ok(OtlpEndpoint {
            host: host.to_string(),
            port,
            path,
        })
    }

    /// `host:port` for connecting and for the `Host` header.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for OtlpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let plain = OtlpEndpoint::parse("http://127.0.0.1:4318").expect("ok");
        assert_eq!(plain.to_string(), "http://127.0.0.1:4318/v1/traces");
        let named = OtlpEndpoint::parse("http://otel-collector.monitoring:4318/").expect("ok");
        assert_eq!(named.host, "otel-collector.monitoring");
        assert_eq!(named.path, "/v1/traces");
        let path = OtlpEndpoint::parse("http://tempo:4318/otlp/v1/traces").expect("ok");
        assert_eq!(path.path, "/otlp/v1/traces");
        let v6 = OtlpEndpoint::parse("http://[::1]:4318").expect("ok");
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.authority(), "[::1]:4318");
        for bad in [
            "",
            "127.0.0.1:4318",
            "https://collector:4318",
            "grpc://collector:4317",
            "http://collector",
            "http://collector:0",
            "http://collector:99999",
            "http://coll ector:4318",
            "http://user@collector:4318",
            "http://collector:4318/v1/traces?x=1",
            "http://:4318",
            "http://[::1]",
        ] {
            assert!(OtlpEndpoint::parse(bad).is_err(), "{bad:?}");
        }
        let https = OtlpEndpoint::parse("https://collector:4318").expect_err("no TLS");
        assert!(https.contains("https is not supported"), "{https}");
    }
}
