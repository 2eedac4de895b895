//! Streams through the real binary: a WebSocket and a server-sent event
//! stream stay open through quiet minutes (bounded by the route's
//! `stream_idle_timeout`, not the pool's `request_timeout`), give their pool
//! slot back once open, are closed and counted when idle too long, and are
//! cut at the end of the shutdown grace period.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ordergate::sim::websocket;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{admin, free_port, metric_value, Fleet, Proxy};

/// One pool of one backend holding one request at a time, with a short
/// `request_timeout`: an ordinary answer may idle 2 s, a stream `idle`.
fn shop(fleet: &Fleet, admin_port: u16, idle: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n\
         [[pools]]\nname = \"orders\"\nrequest_timeout = \"2s\"\n\
         backends = [ {{ addr = \"{}\", max_in_flight = 1 }} ]\n\n\
         [[routes]]\nname = \"shop\"\npool = \"orders\"\nstream_idle_timeout = \"{idle}\"\n",
        fleet.addrs[0]
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Reads a response head (through the blank line); the rest stays unread.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.expect("read head");
        assert_eq!(
            n,
            1,
            "closed in the head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A WebSocket opened through the proxy to the sim's echo.
async fn open_websocket(proxy: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    let request = "GET /__sim/ws HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade\r\n\
                   Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("send");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    stream
}

/// Sends a text message and reads the echo; `Err` when the tunnel is gone.
async fn echo(stream: &mut TcpStream, text: &str) -> std::io::Result<String> {
    let frame = websocket::encode(websocket::TEXT, text.as_bytes(), Some([7, 1, 8, 2]));
    stream.write_all(&frame).await?;
    let reply = tokio::time::timeout(Duration::from_secs(5), websocket::read(stream))
        .await
        .map_err(|_| std::io::Error::other("no echo within 5s"))??;
    Ok(String::from_utf8_lossy(&reply.payload).into_owned())
}

/// The times at which each event of an event stream arrived, until it ends.
async fn read_events(stream: &mut (impl AsyncRead + Unpin)) -> Vec<(Instant, String)> {
    let mut events = Vec::new();
    let mut seen = String::new();
    let mut buffer = [0u8; 1024];
    loop {
        let n = stream.read(&mut buffer).await.unwrap_or(0);
        if n == 0 {
            return events;
        }
        seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
        while let Some(start) = seen.find("data: ") {
            let rest = &seen[start + 6..];
            let Some(end) = rest.find('\n') else { break };
            events.push((Instant::now(), rest[..end].to_string()));
            seen = rest[end..].to_string();
        }
        if seen.contains("\r\n0\r\n\r\n") {
            return events;
        }
    }
}

/// The figure: a WebSocket idle for 90 s and an event stream with
/// 30 s between events pass through a pool whose `request_timeout` is 2 s.
/// Both open streams give back the pool's one slot: an ordinary request is
/// answered meanwhile.
#[test]
fn a_websocket_idle_for_90s_and_an_event_stream_with_30s_gaps_pass_through() {
    let fleet = Fleet::start(1);
    let admin_port = free_port();
    let proxy = Proxy::start(&shop(&fleet, admin_port, "5m"));
    let addr = proxy.addr;
    runtime().block_on(async move {
        let mut socket = open_websocket(addr).await;
        assert_eq!(echo(&mut socket, "hello").await.expect("echo"), "hello");

        let mut events = TcpStream::connect(addr).await.expect("connect");
        events
            .write_all(
                b"GET /__sim/events?count=3&gap_ms=30000 HTTP/1.1\r\nHost: shop.test\r\n\
                  Accept: text/event-stream\r\n\r\n",
            )
            .await
            .expect("send");
        let head = read_head(&mut events).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let started = Instant::now();
        let events = tokio::spawn(async move { read_events(&mut events).await });

        // Two streams open, and the pool (one slot) still answers.
        let metrics =
            tokio::task::spawn_blocking(move || admin(admin_port, "GET", "/metrics").text())
                .await
                .expect("metrics");
        for kind in ["websocket", "event_stream"] {
            let series = format!("ordergate_streams_open{{kind=\"{kind}\",route=\"shop\"}}");
            assert_eq!(metric_value(&metrics, &series), 1.0, "{kind}");
        }
        let product = tokio::task::spawn_blocking(move || {
            crate::support::get(addr, "/api/products/1").map(|r| r.status)
        })
        .await
        .expect("join");
        assert_eq!(product.expect("an ordinary request"), 200);

        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(
            echo(&mut socket, "still here")
                .await
                .expect("the tunnel is open after 90s idle"),
            "still here"
        );
        let events = events.await.expect("events");
        let data: Vec<&str> = events.iter().map(|(_, d)| d.as_str()).collect();
        assert_eq!(data, ["1", "2", "3"], "every event arrived");
        let last = events
            .last()
            .map_or(Duration::ZERO, |(at, _)| *at - started);
        assert!(
            last >= Duration::from_secs(59),
            "the gaps were kept: {last:?}"
        );
    });
}

/// A stream quiet for longer than `stream_idle_timeout` is closed, counted,
/// and not logged as an error; the slot it gave back stays free.
#[test]
fn a_stream_idle_past_its_timeout_is_closed_and_counted() {
    let fleet = Fleet::start(1);
    let admin_port = free_port();
    let proxy = Proxy::start(&shop(&fleet, admin_port, "1s"));
    let addr = proxy.addr;
    let idle_for = runtime().block_on(async move {
        let mut socket = open_websocket(addr).await;
        assert_eq!(echo(&mut socket, "hi").await.expect("echo"), "hi");
        let quiet = Instant::now();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "closed after the idle timeout: {read:?}"
        );
        quiet.elapsed()
    });
    assert!(idle_for >= Duration::from_millis(900), "{idle_for:?}");
    let metrics = admin(admin_port, "GET", "/metrics").text();
    assert_eq!(
        metric_value(
            &metrics,
            "ordergate_streams_idle_closed_total{route=\"shop\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "ordergate_streams_open{kind=\"websocket\",route=\"shop\"}"
        ),
        0.0
    );
    assert!(
        !proxy
            .logs()
            .iter()
            .any(|(_, line)| line.contains("ERROR") && line.contains("ReadTimedout")),
        "an idle stream's end is no error"
    );
    assert_eq!(proxy.get("/api/products/1").status, 200);
}

/// At shutdown an open stream is held to the end of the grace period, then
/// cut, and the log says so.
#[test]
fn a_stream_open_at_shutdown_is_cut_at_the_end_of_the_grace_period() {
    let fleet = Fleet::start(1);
    let admin_port = free_port();
    let mut proxy = Proxy::try_start_with(
        "grace_period = \"2s\"\nshutdown_delay = \"0s\"",
        &shop(&fleet, admin_port, "5m"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let addr = proxy.addr;
    let rt = runtime();
    let mut socket = rt.block_on(open_websocket(addr));
    let started = Instant::now();
    proxy.signal("TERM");
    // Still open within the grace period.
    assert_eq!(
        rt.block_on(echo(&mut socket, "during grace"))
            .expect("echo"),
        "during grace"
    );
    let status = proxy.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(
        proxy.logged_within(Duration::from_secs(2), |line| {
            line.contains("1 cut at the end of the grace period (1 of them open streams)")
        }),
        "{:?}",
        proxy.logs()
    );
    let mut byte = [0u8; 1];
    let read = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), socket.read(&mut byte)).await
    });
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
}
