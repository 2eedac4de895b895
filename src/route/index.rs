//! The route index: finds the most specific route for a request in time that
//! does not grow with the number of routes.
//!
//! Routes are grouped by host (an exact host by hash, then the routes that
//! accept any host), then by path prefix (a hash map per prefix, keyed by the
//! prefix without its trailing `/`). A request's path is cut at each `/` that
//! ends a prefix length some route uses, longest first; the first cut that
//! names a prefix, with a route whose methods admit the request, wins. The
//! work per request depends on the path and on how many prefix lengths are in
//! use, never on how many routes share them.
//!
//! The rules are those of [`super::RouteTable`] (host, then prefix length, then
//! methods, then file order); [`Matcher::linear`] keeps the plain scan they
//! were first written as, which the property test holds the index to.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use http::Method;

/// What one route matches: its host (lower case), its path prefix and its
/// methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    /// The host the route names, lower case; `None` for any host.
    pub host: Option<String>,
    /// The path prefix as written (a trailing `/` does not count).
    pub path_prefix: String,
    /// The methods the route accepts; `None` for any.
    pub methods: Option<Vec<Method>>,
}

impl Matcher {
    /// Whether a request matches this route. `host` has its port stripped and
    /// may be in any case.
    pub fn matches(&self, host: Option<&str>, path: &str, method: &Method) -> bool {
        self.host
            .as_deref()
            .is_none_or(|want| host.is_some_and(|h| h.eq_ignore_ascii_case(want)))
            && prefix_matches(&self.path_prefix, path)
            && self.admits(method)
    }

    fn admits(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }

    /// The reference matcher: the first of `matchers` (sorted most specific
    /// first) that matches. Linear in the number of routes; for tests and
    /// benches.
    pub fn linear(
        matchers: &[Matcher],
        host: Option<&str>,
        path: &str,
        method: &Method,
    ) -> Option<usize> {
        matchers.iter().position(|m| m.matches(host, path, method))
    }
}

// A seeded fast hash rather than SipHash: the tables are filled from the
// config only, so a request (host and path are the client's) can look up but
// never crowd a bucket.

/// The prefix as the index keys it: without its trailing slashes.
fn key(prefix: &str) -> &str {
    prefix.trim_end_matches('/')
}

/// Whether `path` is `prefix` or lies under it, at a `/` (a trailing `/` of
/// the prefix does not count). Routes and waiting rooms match by this rule.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(key(prefix)) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The routes of one host (or of any host), by prefix.
#[derive(Debug, Default)]
struct HostRoutes {
    /// Prefix (without trailing `/`) → the routes with it, most specific
    /// first (those listing methods, then file order).
    by_prefix: HashMap<Box<str>, Vec<usize>, RandomState>,
    /// The prefix lengths in use, longest first.
    lengths: Vec<usize>,
}

impl HostRoutes {
    fn add(&mut self, prefix: &str, index: usize) {
        let prefix = key(prefix);
        self.by_prefix.entry(prefix.into()).or_default().push(index);
        if let Err(at) = self.lengths.binary_search_by(|l| prefix.len().cmp(l)) {
            self.lengths.insert(at, prefix.len());
        }
    }

    fn find(&self, matchers: &[Matcher], path: &str, method: &Method) -> Option<usize> {
        let bytes = path.as_bytes();
        for &len in &self.lengths {
            // A prefix matches at a segment boundary only.
            let cut = match bytes.get(len) {
                None if len == bytes.len() => &path[..len],
                Some(b'/') => &path[..len],
                _ => continue,
            };
            if let Some(routes) = self.by_prefix.get(cut) {
                if let Some(&index) = routes.iter().find(|&&i| matchers[i].admits(method)) {
                    return Some(index);
                }
            }
        }
        None
    }
}

/// The index over a table's matchers.
#[derive(Debug, Default)]
pub struct RouteIndex {
    by_host: HashMap<Box<str>, HostRoutes, RandomState>,
    any_host: HostRoutes,
}

impl RouteIndex {
    /// Indexes matchers sorted most specific first (as the table keeps them).
    pub fn new(matchers: &[Matcher]) -> RouteIndex {
        let mut index = RouteIndex::default();
        for (i, m) in matchers.iter().enumerate() {
            let routes = match &m.host {
                Some(host) => index
                    .by_host
                    .entry(host.to_ascii_lowercase().into())
                    .or_default(),
                None => &mut index.any_host,
            };
            routes.add(&m.path_prefix, i);
        }
        index
    }

    /// The best route for a request, as an index into the matchers. `host`
    /// has its port stripped and may be in any case.
    pub fn find(
        &self,
        matchers: &[Matcher],
        host: Option<&str>,
        path: &str,
        method: &Method,
    ) -> Option<usize> {
        if let Some(host) = host.filter(|_| !self.by_host.is_empty()) {
            let named = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                self.by_host.get(host.to_ascii_lowercase().as_str())
            } else {
                self.by_host.get(host)
            };
            if let Some(found) = named.and_then(|r| r.find(matchers, path, method)) {
                return Some(found);
            }
        }
        self.any_host.find(matchers, path, method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matcher(host: Option<&str>, prefix: &str, methods: Option<&[Method]>) -> Matcher {
        Matcher {
            host: host.map(str::to_owned),
            path_prefix: prefix.to_owned(),
            methods: methods.map(<[Method]>::to_vec),
        }
    }

    /// Sorts as the route table does (stable: file order among equals).
    fn sorted(mut matchers: Vec<Matcher>) -> Vec<Matcher> {
        matchers.sort_by_key(|m| {
            (
                m.host.is_none(),
                std::cmp::Reverse(key(&m.path_prefix).len()),
                m.methods.is_none(),
            )
        });
        matchers
    }

    #[test]
    fn a_named_host_beats_a_longer_prefix_for_any_host() {
        let matchers = sorted(vec![
            matcher(None, "/api/orders/", None),
            matcher(Some("shop.example"), "/", Some(&[Method::POST])),
        ]);
        let index = RouteIndex::new(&matchers);
        let find = |host, path, method| index.find(&matchers, host, path, &method);
        assert_eq!(
            find(Some("Shop.Example"), "/api/orders/1", Method::POST),
            Some(0)
        );
        assert_eq!(
            find(Some("shop.example"), "/api/orders/1", Method::GET),
            Some(1)
        );
        assert_eq!(
            find(Some("shop.example"), "/api/orders-old", Method::GET),
            None
        );
        assert_eq!(find(None, "/api/orders", Method::GET), Some(1));
    }

    #[test]
    fn falls_back_to_shorter_prefixes_when_methods_do_not_admit() {
        let matchers = sorted(vec![
            matcher(None, "/", None),
            matcher(None, "/api", Some(&[Method::POST])),
            matcher(None, "/api/", Some(&[Method::PUT])),
        ]);
        let index = RouteIndex::new(&matchers);
        let name = |path, method| index.find(&matchers, None, path, &method);
        assert_eq!(name("/api/x", Method::POST), Some(0));
        assert_eq!(name("/api", Method::PUT), Some(1));
        assert_eq!(name("/api/x", Method::GET), Some(2));
        assert_eq!(name("*", Method::OPTIONS), None, "no segment boundary");
    }

    const HOSTS: [&str; 3] = ["shop.example", "a.example", "b.example"];
    const SEGMENTS: [&str; 5] = ["api", "orders", "a", "", "orders-old"];
    const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::PUT, Method::DELETE];

    fn path(segments: Vec<usize>, trailing: bool) -> String {
        let mut path: String = segments
            .iter()
            .map(|&s| format!("/{}", SEGMENTS[s]))
            .collect();
        if trailing || path.is_empty() {
            path.push('/');
        }
        path
    }

    fn any_matcher() -> impl Strategy<Value = Matcher> {
        (
            prop::option::of(0..HOSTS.len()),
            prop::collection::vec(0..SEGMENTS.len(), 0..4),
            any::<bool>(),
            prop::option::of(prop::collection::vec(0..METHODS.len(), 1..3)),
        )
            .prop_map(|(host, segments, trailing, methods)| Matcher {
                host: host.map(|h| HOSTS[h].to_owned()),
                path_prefix: path(segments, trailing),
                methods: methods.map(|m| m.into_iter().map(|i| METHODS[i].clone()).collect()),
            })
    }

    fn any_request() -> impl Strategy<Value = (Option<String>, String, Method)> {
        (
            prop::option::of((0..HOSTS.len() + 1, any::<bool>())),
            prop::collection::vec(0..SEGMENTS.len(), 0..5),
            any::<bool>(),
            0..METHODS.len(),
        )
            .prop_map(|(host, segments, trailing, method)| {
                let host = host.map(|(h, upper)| {
                    let name = HOSTS.get(h).copied().unwrap_or("other.example");
                    if upper {
                        name.to_ascii_uppercase()
                    } else {
                        name.to_owned()
                    }
                });
                (host, path(segments, trailing), METHODS[method].clone())
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn the_index_picks_what_the_linear_scan_picks(
            matchers in prop::collection::vec(any_matcher(), 0..24),
            requests in prop::collection::vec(any_request(), 1..16),
        ) {
            let matchers = sorted(matchers);
            let index = RouteIndex::new(&matchers);
            for (host, path, method) in &requests {
                prop_assert_eq!(
                    index.find(&matchers, host.as_deref(), path, method),
                    Matcher::linear(&matchers, host.as_deref(), path, method),
                    "{:?} {} {}", host, path, method
                );
            }
        }
    }
}
