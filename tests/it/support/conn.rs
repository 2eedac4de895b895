//! A keep-alive HTTP/1.1 client connection for tests: several requests on one
//! TCP connection, raw bytes for hostile input, and a way to tell whether the
//! server closed the connection (what a shopper's browser meets next).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::{parse_response, HttpError, Response};

/// One client connection, kept open between requests.
pub struct Conn {
    stream: TcpStream,
    /// Bytes read but not yet consumed (the start of a next response).
    buffer: Vec<u8>,
}

impl Conn {
    /// Connects to `addr`.
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        Conn {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Sends a keep-alive request (no `Connection` header) and reads its response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, HttpError> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: shop.test\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut raw = head.into_bytes();
        raw.extend_from_slice(body);
        self.send_raw(&raw)?;
        self.read_response(method == "HEAD")
    }

    /// `GET path` on this connection.
    pub fn get(&mut self, path: &str) -> Result<Response, HttpError> {
        self.request("GET", path, &[], b"")
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), HttpError> {
        self.stream.write_all(bytes).map_err(io_error)
    }

    /// Reads one whole response (interim 1xx answers skipped); the bytes after
    /// it stay for the next call.
    pub fn read_response(&mut self, head_request: bool) -> Result<Response, HttpError> {
        loop {
            if let Some(len) = complete_response_len(&self.buffer, head_request)? {
                let response = parse_response(&self.buffer[..len]);
                self.buffer.drain(..len);
                return response;
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    // Closed: a response without a length ends here.
                    if self.buffer.is_empty() {
                        return Err(HttpError::Empty);
                    }
                    let response = parse_response(&self.buffer);
                    self.buffer.clear();
                    return response;
                }
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(io_error(e)),
            }
        }
    }

    /// Whether the server closes the connection within `within` (reads until
    /// end of stream; bytes that arrive meanwhile are kept).
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = self.stream.set_read_timeout(Some(left));
            let mut chunk = [0u8; 4096];
            let result = self.stream.read(&mut chunk);
            let _ = self.stream.set_read_timeout(Some(Duration::from_secs(20)));
            match result {
                Ok(0) => return true,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }

    /// Every complete response the server sent until it closed the connection
    /// or went quiet for `quiet`.
    pub fn drain_responses(&mut self, quiet: Duration) -> Vec<Response> {
        let closed = self.closed_within(quiet);
        let mut responses = Vec::new();
        while let Ok(Some(len)) = complete_response_len(&self.buffer, false) {
            if let Ok(response) = parse_response(&self.buffer[..len]) {
                responses.push(response);
            }
            self.buffer.drain(..len);
        }
        if closed && !self.buffer.is_empty() {
            if let Ok(response) = parse_response(&self.buffer) {
                responses.push(response);
            }
            self.buffer.clear();
        }
        responses
    }
}

fn io_error(e: std::io::Error) -> HttpError {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionAborted
        | std::io::ErrorKind::BrokenPipe => HttpError::Reset,
        _ => HttpError::Io(e),
    }
}

/// The length of the first whole response in `data` (interim answers
/// included), `None` when more bytes are needed.
fn complete_response_len(data: &[u8], head_request: bool) -> Result<Option<usize>, HttpError> {
    let mut start = 0;
    loop {
        let rest = &data[start..];
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Ok(None);
        };
        let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| HttpError::Malformed(head.lines().next().unwrap_or("").into()))?;
        let body_start = start + end + 4;
        if (100..200).contains(&status) {
            start = body_start;
            continue;
        }
        if head_request || status == 204 || status == 304 {
            return Ok(Some(body_start));
        }
        let header = |name: &str| {
            head.lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(n, _)| n.trim() == name)
                .map(|(_, v)| v.trim().to_string())
        };
        if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            return Ok(chunked_end(&data[body_start..]).map(|n| body_start + n));
        }
        return Ok(
            match header("content-length").and_then(|v| v.parse::<usize>().ok()) {
                Some(len) if data.len() >= body_start + len => Some(body_start + len),
                Some(_) => None,
                // Delimited by the close: complete only once the server closes.
                None => None,
            },
        );
    }
}

/// Where a chunked body ends, `None` when incomplete.
fn chunked_end(data: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line = data[at..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&data[at..at + line]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at += line + 2;
        if size == 0 {
            // Trailers end with an empty line.
            let end = data[at..].windows(2).position(|w| w == b"\r\n")?;
            return Some(at + end + 2);
        }
        if data.len() < at + size + 2 {
            return None;
        }
        at += size + 2;
    }
}
