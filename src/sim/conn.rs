//! Accept loops and per-connection serving. This is the level where the
//! connection-breaking faults are carried out, because only here is the TCP
//! socket still within reach while hyper owns the connection.
//!
//! Every connection keeps a second descriptor of its socket (`try_clone`). When
//! a request handler decides to break the connection it sends an [`Abort`]
//! through the connection's [`ConnControl`] and never answers; the connection
//! task then drops hyper's connection and closes the socket itself, after
//! setting `SO_LINGER` to zero for an abortive close (TCP RST) when asked to.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;

use super::control::{Abort, ConnControl};
use super::fleet::{Fleet, Listener};
use super::mode::Fault;
use super::service::{self, SIM_PREFIX};

/// Accepts connections on `listener` for ever, serving each on its own task.
pub(crate) async fn accept_loop(socket: TcpListener, listener: Arc<Listener>, fleet: Arc<Fleet>) {
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                log::debug!("sim {}: accept failed: {e}", listener.name());
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        listener.count_connection();
        let (listener, fleet) = (Arc::clone(&listener), Arc::clone(&fleet));
        if listener.mode().fault == Fault::Refuse {
            tokio::spawn(refuse(stream, peer, listener, fleet));
        } else {
            tokio::spawn(serve(stream, peer, listener, fleet));
        }
    }
}

/// The `refuse` fault. A live listener cannot refuse connections, so it closes
/// them unread instead, which the client sees as a reset (or end of file)
/// right after connecting. Only a connection whose first request is for a
/// `/__sim/` control endpoint is served, so the fault can be switched off
/// again: the start of the request is peeked at, not read, for at most
/// [`REFUSE_PEEK_WAIT`].
async fn refuse(stream: TcpStream, peer: SocketAddr, listener: Arc<Listener>, fleet: Arc<Fleet>) {
    if asks_for_control(&stream).await {
        serve(stream, peer, listener, fleet).await;
    } else {
        log::debug!("sim {}: refusing connection from {peer}", listener.name());
    }
}

/// How long `refuse` waits for the start of a request.
const REFUSE_PEEK_WAIT: Duration = Duration::from_millis(200);

/// Whether the first request on `stream` is for a `/__sim/` endpoint, judged
/// from its first bytes without consuming them.
async fn asks_for_control(stream: &TcpStream) -> bool {
    let peek = async {
        let mut start = [0u8; 32];
        loop {
            let n = stream.peek(&mut start).await?;
            if n == 0 {
                return Ok::<bool, io::Error>(false);
            }
            if let Some(control) = is_control_request(&start[..n]) {
                return Ok(control);
            }
            // Only part of the request line is in: give the rest a moment.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    matches!(
        tokio::time::timeout(REFUSE_PEEK_WAIT, peek).await,
        Ok(Ok(true))
    )
}

/// Whether a request starting with `start` targets a `/__sim/` endpoint, or
/// `None` if too little of it is known yet.
fn is_control_request(start: &[u8]) -> Option<bool> {
    const LONGEST_METHOD: usize = 16;
    let Some(space) = start.iter().position(|b| *b == b' ') else {
        return (start.len() > LONGEST_METHOD).then_some(false);
    };
    let target = &start[space + 1..];
    let prefix = SIM_PREFIX.as_bytes();
    if target.len() >= prefix.len() {
        Some(target.starts_with(prefix))
    } else if prefix.starts_with(target) {
        None
    } else {
        Some(false)
    }
}

/// Serves one connection until it ends or a handler aborts it.
async fn serve(stream: TcpStream, peer: SocketAddr, listener: Arc<Listener>, fleet: Arc<Fleet>) {
    let name = listener.name().to_owned();
    let _ = stream.set_nodelay(true);
    let (stream, spare) = match duplicate(stream) {
        Ok(pair) => pair,
        Err(e) => {
            log::debug!("sim {name}: cannot set up connection from {peer}: {e}");
            return;
        }
    };

    let (sender, aborted) = oneshot::channel();
    let control = Arc::new(ConnControl::new(sender));
    let handler = service_fn(move |request| {
        service::handle(
            request,
            Arc::clone(&listener),
            Arc::clone(&fleet),
            Arc::clone(&control),
        )
    });
    let mut connection = Box::pin(
        http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), handler)
            .with_upgrades(),
    );

    let how = tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                log::debug!("sim {name}: connection from {peer}: {e}");
            }
            None
        }
        Ok(how) = aborted => Some(how),
    };

    if how == Some(Abort::Reset) {
        // SO_LINGER belongs to the socket, so setting it through the spare
        // descriptor makes the final close send a RST instead of a FIN.
        if let Err(e) = spare.set_zero_linger() {
            log::debug!("sim {name}: cannot set SO_LINGER for {peer}: {e}");
        }
    }
    if how.is_some() {
        log::debug!("sim {name}: aborting connection from {peer} ({how:?})");
    }
    // Dropping hyper's side first leaves `spare` as the last descriptor, whose
    // close ends the connection.
    drop(connection);
    drop(spare);
}

/// Splits a stream into the stream hyper will own and a spare descriptor of
/// the same socket, kept to set socket options and close it after hyper's side
/// is gone. The spare is never read or written, so it is not registered with
/// the runtime.
fn duplicate(stream: TcpStream) -> io::Result<(TcpStream, TcpSocket)> {
    let std_stream = stream.into_std()?;
    let spare = std_stream.try_clone()?;
    Ok((
        TcpStream::from_std(std_stream)?,
        TcpSocket::from_std_stream(spare),
    ))
}

#[cfg(test)]
mod tests {
    use super::is_control_request;

    #[test]
    fn recognises_control_requests_from_their_start() {
        assert_eq!(
            is_control_request(b"PUT /__sim/mode HTTP/1.1\r\n"),
            Some(true)
        );
        assert_eq!(is_control_request(b"GET /__sim/"), Some(true));
        assert_eq!(is_control_request(b"GET /health HTTP/1.1\r\n"), Some(false));
        assert_eq!(is_control_request(b"GET /__si"), None);
        assert_eq!(is_control_request(b"GET"), None);
        assert_eq!(is_control_request(b"GET /__x"), Some(false));
        assert_eq!(
            is_control_request(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03abcdefgh"),
            Some(false)
        );
    }
}
