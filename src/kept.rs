//! Kept answers: a backend's final answer held to be sent again, as an
//! idempotency replay or as a stale copy of a read. Both record the answer
//! the same way ([`stored_headers`], [`BodyRecorder`]) and send it the same
//! way (`respond::send_kept`); [`KeptKind`] says which one it is.

use bytes::Bytes;
use http::{HeaderMap, HeaderName};

/// Why a kept answer is sent instead of a backend's fresh one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumIter, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum KeptKind {
    /// The same keyed request came again: the first request's answer.
    Replay,
    /// The backends failed (or the pool is full): a recent copy of the read.
    Stale,
}

impl KeptKind {
    /// The bounded label of logs and metrics.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A backend's final answer, kept to be replayed byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    /// Status code.
    pub status: u16,
    /// Headers in order, hop-by-hop ones, `Content-Length` and `X-Request-Id` left out.
    pub headers: Vec<(String, Bytes)>,
    /// The whole body.
    pub body: Bytes,
    /// The request id of the request that got it.
    pub request_id: String,
}

impl StoredAnswer {
    /// Bytes the answer takes in memory, for weighing records.
    pub fn weight(&self) -> usize {
        self.headers
            .iter()
            .map(|(name, value)| name.len() + value.len() + 48)
            .sum::<usize>()
            + self.body.len()
            + self.request_id.len()
            + 96
    }
}

/// Headers that describe one connection, not the answer: never stored.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "x-request-id",
    "date",
];

/// The headers of a backend's answer worth replaying, in order.
pub fn stored_headers(headers: &HeaderMap) -> Vec<(String, Bytes)> {
    headers
        .iter()
        .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                Bytes::copy_from_slice(value.as_bytes()),
            )
        })
        .collect()
}

/// The headers of a backend's answer worth replaying to a repeat of the
/// request: as [`stored_headers`], without `Set-Cookie` and `private` ones.
pub fn replayable_headers(headers: &HeaderMap, private: &[HeaderName]) -> Vec<(String, Bytes)> {
    let mut kept = stored_headers(headers);
    kept.retain(|(name, _)| {
        name != http::header::SET_COOKIE.as_str() && !private.iter().any(|p| p.as_str() == name)
    });
    kept
}

/// Collects a backend's answer body for the record, up to the route's limit.
#[derive(Debug, Default)]
pub struct BodyRecorder {
    chunks: Vec<Bytes>,
    len: usize,
    too_large: bool,
}

impl BodyRecorder {
    /// Adds a chunk; past `max` bytes the body is no longer kept.
    pub fn push(&mut self, chunk: &Bytes, max: usize) {
        if self.too_large {
            return;
        }
        self.len += chunk.len();
        if self.len > max {
            self.too_large = true;
            self.chunks.clear();
        } else {
            self.chunks.push(chunk.clone());
        }
    }

    /// The whole body, or `None` when it grew past the limit.
    pub fn finish(self) -> Option<Bytes> {
        if self.too_large {
            return None;
        }
        Some(match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.into_iter().next().unwrap_or_default(),
            _ => {
                let mut body = Vec::with_capacity(self.len);
                for chunk in &self.chunks {
                    body.extend_from_slice(chunk);
                }
                Bytes::from(body)
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A header map of `pairs`, for tests.
    pub(crate) fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn hop_by_hop_headers_are_not_stored_and_bodies_are_bounded() {
        let stored = stored_headers(&headers(&[
            ("content-type", "application/json"),
            ("connection", "keep-alive"),
            ("content-length", "2"),
            ("x-request-id", "r"),
            ("location", "/api/orders/7"),
        ]));
        let names: Vec<&str> = stored.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", "location"]);
        let mut body = BodyRecorder::default();
        body.push(&Bytes::from_static(b"ab"), 4);
        body.push(&Bytes::from_static(b"cd"), 4);
        assert_eq!(body.finish(), Some(Bytes::from_static(b"abcd")));
        let mut large = BodyRecorder::default();
        large.push(&Bytes::from_static(b"abc"), 4);
        large.push(&Bytes::from_static(b"de"), 4);
        assert_eq!(large.finish(), None);
    }
}
