//! End-to-end tests of the simulated fleet: [`spawn`] it on free ports and talk
//! plain HTTP/1.1 to it over `std::net::TcpStream`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

/// A parsed HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("JSON body")
    }
}

fn fleet(listeners: usize) -> Vec<SocketAddr> {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    spawn(SimArgs::new(vec![any; listeners])).expect("sim starts")
}

fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// Sends one request on a new connection and reads the answer to the end.
fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> io::Result<Answer> {
    let mut stream = connect(addr, Duration::from_secs(10))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse(&raw)
}

fn parse(raw: &[u8]) -> io::Result<Answer> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        io::Error::new(io::ErrorKind::UnexpectedEof, format!("no head: {text:?}"))
    })?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, head.to_owned()))?;
    let headers = lines
        .filter_map(|line| line.split_once(": "))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: body.to_owned(),
    })
}

fn get(addr: SocketAddr, path: &str) -> Answer {
    send(addr, "GET", path, &[], "").expect("answer")
}

fn put_mode(addr: SocketAddr, mode: &str) -> Answer {
    send(addr, "PUT", "/__sim/mode", &[], mode).expect("answer")
}

/// Waits (up to 5 s) until the fleet reports `n` requests in flight.
fn wait_for_in_flight(addr: SocketAddr, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(addr, "/__sim/stats").json()["in_flight"] != n {
        assert!(Instant::now() < deadline, "in_flight never became {n}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serves_orders_across_listeners() {
    let addrs = fleet(2);
    let (a, b) = (addrs[0], addrs[1]);
    assert_ne!(a, b);

    for addr in [a, b] {
        let health = get(addr, "/health");
        assert_eq!(health.status, 200);
        assert_eq!(health.json(), json!({"status": "ok"}));
        assert_eq!(
            health.header("x-sim-backend"),
            Some(addr.to_string().as_str())
        );
        assert_eq!(health.header("content-type"), Some("application/json"));
        assert_eq!(
            health.header("content-length"),
            Some(health.body.len().to_string().as_str())
        );
    }

    let product = get(a, "/api/products/1");
    assert_eq!(product.status, 200);
    assert_eq!(
        product.json(),
        json!({"id": "1", "name": "Product 1", "price_cents": 1999, "stock": 42})
    );

    let plain = send(a, "POST", "/api/orders", &[], r#"{"sku":"A1","qty":2}"#).expect("answer");
    assert_eq!(plain.status, 201);
    assert_eq!(plain.header("location"), Some("/api/orders/ord-000001"));
    assert_eq!(
        plain.json(),
        json!({"order_id": "ord-000001", "status": "created", "backend": a.to_string(),
               "item": {"sku": "A1", "qty": 2}})
    );

    let key = [("Idempotency-Key", "k-1")];
    let first = send(a, "POST", "/api/orders", &key, r#"{"sku":"B2"}"#).expect("answer");
    assert_eq!(first.status, 201);
    assert_eq!(first.header("idempotent-replay"), None);
    let replay = send(b, "POST", "/api/orders", &key, r#"{"sku":"other"}"#).expect("answer");
    assert_eq!(replay.status, 200);
    assert_eq!(replay.header("idempotent-replay"), Some("true"));
    assert_eq!(replay.header("x-sim-backend"), Some(b.to_string().as_str()));
    assert_eq!(replay.body, first.body);
    assert_eq!(replay.header("location"), Some("/api/orders/ord-000002"));

    let stored = get(b, "/api/orders/ord-000002");
    assert_eq!(stored.status, 200);
    assert_eq!(stored.body, first.body);
    assert_eq!(get(b, "/api/orders/ord-000099").status, 404);

    let bad = send(a, "POST", "/api/orders", &[], "{not json").expect("answer");
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].is_string());
    assert_eq!(
        send(a, "POST", "/api/orders", &[], "[1]")
            .expect("answer")
            .status,
        400
    );
    let wrong_method = send(a, "DELETE", "/api/orders", &[], "").expect("answer");
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("POST"));
    assert_eq!(
        send(a, "POST", "/health", &[], "").expect("answer").status,
        405
    );
    let missing = get(a, "/nope");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json(), json!({"error": "not found"}));

    let echo = send(
        b,
        "POST",
        "/__sim/echo?x=1",
        &[("X-Trace", "one"), ("x-trace", "two")],
        "hi",
    )
    .expect("answer");
    let echo = echo.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/__sim/echo");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["headers"]["x-trace"], "one, two");
    assert_eq!(echo["headers"]["host"], b.to_string());
    assert_eq!(echo["body"], "hi");

    let stats = get(a, "/__sim/stats").json();
    assert_eq!(stats["orders_created"], 2);
    assert_eq!(stats["idempotent_replays"], 1);
    assert_eq!(stats["in_flight"], 0);
    // a: health, product, 2 orders, bad JSON, array, DELETE, POST /health, /nope.
    assert_eq!(stats["listeners"][a.to_string()]["requests"], 9);
    // b: health, replay, 2 order reads.
    assert_eq!(stats["listeners"][b.to_string()]["requests"], 4);
}

#[test]
fn modes_apply_per_listener_and_reset_restores_them() {
    let addrs = fleet(2);
    let (a, b) = (addrs[0], addrs[1]);

    let mode = put_mode(a, r#"{"status":503,"latency_ms":20}"#);
    assert_eq!(mode.status, 200);
    assert_eq!(
        mode.json(),
        json!({"latency_ms": 20, "jitter_ms": 0, "status": 503, "capacity": null, "fault": "none", "ignore_idempotency": false})
    );
    let forced = get(a, "/health");
    assert_eq!(forced.status, 503);
    assert_eq!(
        forced.json(),
        json!({"error": "forced status", "status": 503})
    );
    assert_eq!(forced.header("x-sim-backend"), Some(a.to_string().as_str()));
    assert_eq!(get(b, "/health").status, 200);
    // Control endpoints ignore the mode.
    assert_eq!(get(a, "/__sim/stats").status, 200);
    assert_eq!(get(a, "/__sim/mode").json()["status"], 503);

    let rejected = put_mode(a, r#"{"fault":"explode"}"#);
    assert_eq!(rejected.status, 400);
    assert!(rejected.json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("unknown fault")));
    assert_eq!(put_mode(a, r#"{"colour":"red"}"#).status, 400);
    assert_eq!(put_mode(a, "nonsense").status, 400);

    let all = put_mode(b, r#"{"all":true,"capacity":3,"status":null}"#);
    assert_eq!(all.status, 200);
    let all = all.json();
    assert_eq!(all["listeners"][a.to_string()]["capacity"], 3);
    assert_eq!(all["listeners"][a.to_string()]["status"], Value::Null);
    assert_eq!(all["listeners"][a.to_string()]["latency_ms"], 20);
    assert_eq!(all["listeners"][b.to_string()]["capacity"], 3);
    assert_eq!(get(a, "/health").status, 200);

    assert_eq!(
        send(a, "POST", "/api/orders", &[], "{}")
            .expect("answer")
            .status,
        201
    );
    let reset = send(b, "POST", "/__sim/reset", &[], "").expect("answer");
    assert_eq!(reset.status, 200);
    assert_eq!(get(a, "/__sim/mode").json(), Mode::default().to_json());
    assert_eq!(get(b, "/__sim/mode").json(), Mode::default().to_json());
    let stats = get(a, "/__sim/stats").json();
    assert_eq!(stats["orders_created"], 0);
    assert_eq!(stats["listeners"][a.to_string()]["requests"], 0);
    let again = send(a, "POST", "/api/orders", &[], "{}").expect("answer");
    assert_eq!(again.json()["order_id"], "ord-000001");
}

#[test]
fn reset_faults_send_a_tcp_reset() {
    let addrs = fleet(1);
    let a = addrs[0];

    assert_eq!(put_mode(a, r#"{"fault":"reset"}"#).status, 200);
    let err = send(a, "GET", "/health", &[], "").expect_err("connection reset");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    let stats = get(a, "/__sim/stats").json();
    assert_eq!(stats["orders_created"], 0);
    assert_eq!(stats["in_flight"], 0);

    // The order is made, but the answer is lost.
    assert_eq!(put_mode(a, r#"{"fault":"reset_after_body"}"#).status, 200);
    let err = send(a, "POST", "/api/orders", &[], r#"{"sku":"lost"}"#).expect_err("reset");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    assert_eq!(put_mode(a, r#"{"fault":"none"}"#).status, 200);
    let order = get(a, "/api/orders/ord-000001");
    assert_eq!(order.status, 200);
    assert_eq!(order.json()["item"], json!({"sku": "lost"}));
    assert_eq!(get(a, "/__sim/stats").json()["orders_created"], 1);
}

#[test]
fn refuse_closes_all_but_control_connections() {
    let addrs = fleet(1);
    let a = addrs[0];

    // A keep-alive connection opened before the fault is closed unanswered.
    let mut open = connect(a, Duration::from_secs(5)).expect("connects");
    assert_eq!(put_mode(a, r#"{"fault":"refuse"}"#).status, 200);
    open.write_all(b"GET /health HTTP/1.1\r\nHost: sim\r\n\r\n")
        .expect("request sent");
    let mut raw = Vec::new();
    match open.read_to_end(&mut raw) {
        Ok(_) => assert!(raw.is_empty(), "answered: {raw:?}"),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
    }
    // New connections are closed without a word.
    match send(a, "GET", "/health", &[], "") {
        Ok(answer) => panic!("refused backend answered {answer:?}"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
            ),
            "{e}"
        ),
    }

    // Control requests still get through, so the fault can be switched off.
    assert_eq!(get(a, "/__sim/mode").json()["fault"], "refuse");
    assert_eq!(put_mode(a, r#"{"fault":"none"}"#).status, 200);
    assert_eq!(get(a, "/health").status, 200);
    assert_eq!(get(a, "/__sim/stats").json()["in_flight"], 0);
}

#[test]
fn hang_holds_the_request() {
    let addrs = fleet(1);
    let a = addrs[0];
    assert_eq!(put_mode(a, r#"{"fault":"hang"}"#).status, 200);
    let mut stream = connect(a, Duration::from_millis(400)).expect("connects");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: sim\r\n\r\n")
        .expect("request sent");
    let mut buf = [0u8; 64];
    let err = stream.read(&mut buf).expect_err("no answer");
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
        "{err}"
    );
    wait_for_in_flight(a, 1);
    drop(stream);
    // The hung request ends when its client goes away.
    wait_for_in_flight(a, 0);
}

#[test]
fn slow_body_dribbles_after_the_head() {
    let addrs = fleet(1);
    let a = addrs[0];
    assert_eq!(put_mode(a, r#"{"fault":"slow_body"}"#).status, 200);
    let mut stream = connect(a, Duration::from_secs(10)).expect("connects");
    let started = Instant::now();
    stream
        .write_all(b"GET /api/products/7 HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n")
        .expect("request sent");
    let mut first = [0u8; 1024];
    let n = stream.read(&mut first).expect("head arrives");
    let head_after = started.elapsed();
    let mut raw = first[..n].to_vec();
    stream.read_to_end(&mut raw).expect("body arrives");
    let total = started.elapsed();
    assert!(total >= Duration::from_secs(3), "{total:?}");
    assert!(
        total - head_after >= Duration::from_secs(2),
        "{head_after:?}, {total:?}"
    );
    let answer = parse(&raw).expect("parses");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["id"], "7");
    assert_eq!(
        answer.header("content-length"),
        Some(answer.body.len().to_string().as_str())
    );
}

#[test]
fn capacity_makes_requests_wait() {
    let addrs = fleet(1);
    let a = addrs[0];
    assert_eq!(
        put_mode(a, r#"{"capacity":1,"latency_ms":1000}"#).status,
        200
    );
    let started = Instant::now();
    let clients: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || send(a, "GET", "/health", &[], "")))
        .collect();
    // Both are in flight, one of them waiting for the other's slot.
    wait_for_in_flight(a, 2);
    for client in clients {
        let answer = client.join().expect("client thread").expect("answer");
        assert_eq!(answer.status, 200);
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(2000), "{elapsed:?}");
}

#[test]
fn spawn_names_the_address_it_cannot_bind() {
    let addrs = fleet(1);
    let err = spawn(SimArgs::new(vec![addrs[0]])).expect_err("address in use");
    assert!(err.contains(&addrs[0].to_string()), "{err}");
}

#[derive(clap::Parser, Debug)]
struct Cli {
    #[command(flatten)]
    sim: SimArgs,
}

fn cli(args: &[&str]) -> Result<SimArgs, clap::Error> {
    use clap::Parser;
    Cli::try_parse_from(std::iter::once("sim").chain(args.iter().copied())).map(|cli| cli.sim)
}

#[test]
fn command_line_sets_the_starting_mode() {
    let args = cli(&[
        "--listen",
        "127.0.0.1:9001",
        "--listen",
        "127.0.0.1:0",
        "--latency-ms",
        "200",
        "--jitter-ms",
        "20",
        "--status",
        "503",
        "--capacity",
        "4",
        "--fault",
        "reset_after_body",
    ])
    .expect("valid arguments");
    assert_eq!(args.listen.len(), 2);
    assert_eq!(
        args.mode(),
        Mode {
            latency_ms: 200,
            jitter_ms: 20,
            status: Some(503),
            capacity: Some(4),
            fault: Fault::ResetAfterBody,
            ignore_idempotency: false,
        }
    );
    let plain = cli(&["--listen", "127.0.0.1:0"]).expect("valid arguments");
    assert_eq!(plain.mode(), Mode::default());

    assert!(cli(&[]).is_err(), "--listen is required");
    for bad in [
        ["--status", "99"],
        ["--capacity", "0"],
        ["--fault", "explode"],
        ["--latency-ms", "-1"],
    ] {
        let mut args = vec!["--listen", "127.0.0.1:0"];
        args.extend(bad);
        assert!(cli(&args).is_err(), "{bad:?} accepted");
    }
}
