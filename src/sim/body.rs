//! Response body of the simulated backends: a buffer sent at once or, for the
//! `slow_body` fault, dribbled out in small chunks. Either way its exact length
//! is known up front, so hyper sends a correct `Content-Length`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;

use super::fleet::InFlight;

/// Number of chunks a `slow_body` answer is cut into.
pub(crate) const SLOW_CHUNKS: usize = 8;
/// Pause before each chunk of a `slow_body` answer.
pub(crate) const SLOW_INTERVAL: Duration = Duration::from_millis(500);

/// What a request keeps hold of until its answer is fully produced: its place
/// in the in-flight count and its capacity permit. Both are released on drop.
#[derive(Debug, Default)]
pub(crate) struct Hold {
    _in_flight: Option<InFlight>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Hold {
    /// Holds a request's in-flight count and, with a capacity limit, its permit.
    pub(crate) fn new(in_flight: InFlight, permit: Option<OwnedSemaphorePermit>) -> Self {
        Hold {
            _in_flight: Some(in_flight),
            _permit: permit,
        }
    }
}

/// A response body with a known length.
#[derive(Debug)]
pub(crate) struct SimBody {
    chunks: VecDeque<Bytes>,
    remaining: u64,
    /// Pause before each chunk (slow bodies only).
    pace: Option<Duration>,
    /// The pause under way, made when hyper first asks for the next chunk.
    pause: Option<Pin<Box<Sleep>>>,
    /// Released as soon as the last chunk is handed to hyper.
    hold: Hold,
    /// Sent chunked, as an event stream is (hyper is not told the length).
    streamed: bool,
    /// The next chunk goes without a pause (an event stream's first).
    immediate: bool,
}

impl SimBody {
    /// A body sent in one piece.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        let chunks = if bytes.is_empty() {
            VecDeque::new()
        } else {
            VecDeque::from([bytes])
        };
        Self::from_chunks(chunks, None)
    }

    /// A body cut into [`SLOW_CHUNKS`] pieces, each sent after [`SLOW_INTERVAL`].
    pub(crate) fn slow(bytes: Bytes) -> Self {
        let size = bytes.len().div_ceil(SLOW_CHUNKS).max(1);
        let mut chunks = VecDeque::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let take = size.min(rest.len());
            chunks.push_back(rest.split_to(take));
        }
        Self::from_chunks(chunks, Some(SLOW_INTERVAL))
    }

    /// An event stream: `events` sent chunked, the first at once, then one
    /// every `gap`.
    pub(crate) fn events(events: VecDeque<Bytes>, gap: Duration) -> Self {
        SimBody {
            streamed: true,
            immediate: true,
            ..Self::from_chunks(events, Some(gap))
        }
    }

    fn from_chunks(chunks: VecDeque<Bytes>, pace: Option<Duration>) -> Self {
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        SimBody {
            chunks,
            remaining,
            pace,
            pause: None,
            hold: Hold::default(),
            streamed: false,
            immediate: false,
        }
    }

    /// Keeps `hold` until the body has been produced (or dropped).
    pub(crate) fn holding(mut self, hold: Hold) -> Self {
        if self.chunks.is_empty() {
            drop(hold);
        } else {
            self.hold = hold;
        }
        self
    }

    /// The whole body, for tests.
    #[cfg(test)]
    pub(crate) fn concat(&self) -> Vec<u8> {
        self.chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.chunks.is_empty() {
            return Poll::Ready(None);
        }
        if let Some(interval) = this.pace.filter(|_| !std::mem::take(&mut this.immediate)) {
            let pause = this
                .pause
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(interval)));
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.pause = None;
        }
        let Some(chunk) = this.chunks.pop_front() else {
            return Poll::Ready(None);
        };
        this.remaining -= chunk.len() as u64;
        if this.chunks.is_empty() {
            this.hold = Hold::default();
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        if self.streamed {
            // Unknown to hyper: the answer is sent chunked.
            return SizeHint::default();
        }
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_body_keeps_every_byte() {
        let text = Bytes::from_static(b"{\"status\":\"ok\"}");
        let body = SimBody::slow(text.clone());
        assert_eq!(body.chunks.len(), SLOW_CHUNKS);
        assert_eq!(body.concat(), text.to_vec());
        assert_eq!(body.size_hint().exact(), Some(text.len() as u64));

        let short = SimBody::slow(Bytes::from_static(b"ab"));
        assert_eq!(short.chunks.len(), 2);
        assert!(SimBody::full(Bytes::new()).is_end_stream());
    }
}
