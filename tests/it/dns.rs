//! Backends by name, against a real DNS server: dnsmasq on a loopback port,
//! its records changed during the test (hosts file rewritten, SIGHUP). Each
//! "server" is a simulated backend on its own loopback address (127.0.0.x),
//! all on one port, so one name can point at any of them.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::programs::ensure;
use crate::support::{
    admin, admin_section, free_port, metric_value, wait_until, Fleet, Proxy, TempFile,
};

/// dnsmasq answering from a hosts file the test rewrites; killed on drop.
struct Dnsmasq {
    child: Child,
    port: u16,
    hosts: TempFile,
}

impl Dnsmasq {
    /// Starts dnsmasq serving `hosts` (hosts-file lines) and `srv` records
    /// (`--srv-host` values), or `None` (the test is skipped) when it cannot be had.
    fn start(hosts: &str, srv: &[String]) -> Dnsmasq {
        let program = ensure(&["dnsmasq"], "dnsmasq").expect("dnsmasq (./dev.sh test installs it)");
        let hosts = TempFile::new("hosts", hosts);
        let port = free_port();
        let pid_file = hosts.path.with_file_name("dnsmasq.pid");
        let mut command = Command::new(program);
        command
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--local-ttl=1",
                "--log-facility=-",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", hosts.path.display()))
            .arg(format!("--pid-file={}", pid_file.display()));
        for record in srv {
            command.arg(format!("--srv-host={record}"));
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dnsmasq");
        let dns = Dnsmasq { child, port, hosts };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
            "dnsmasq did not listen on {addr}"
        );
        dns
    }

    /// The `[dns]` table pointing ordergate at this server.
    fn section(&self) -> String {
        format!(
            "[dns]\nservers = [\"127.0.0.1:{}\"]\nmin_ttl = \"1s\"\nmax_ttl = \"2s\"\ntimeout = \"500ms\"\n\n",
            self.port
        )
    }

    /// Replaces the hosts file and has dnsmasq read it again (SIGHUP).
    fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts.path, hosts).expect("rewrite hosts");
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(status.success());
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.kill();
    }
}

fn at(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, last], port))
}

fn config(dns: &Dnsmasq, admin_port: u16, backends: &str) -> String {
    format!(
        "{}{}[[pools]]\nname = \"orders\"\nbackends = {backends}\n\n[[routes]]\nname = \"all\"\npool = \"orders\"\n",
        dns.section(),
        admin_section(admin_port)
    )
}

fn dns_status(admin_port: u16) -> serde_json::Value {
    admin(admin_port, "GET", "/status").json()["pools"][0]["dns"][0].clone()
}

#[test]
fn a_name_follows_dns_changes_and_keeps_its_last_answer_when_dns_fails() {
    let port = free_port();
    let (old, new) = (at(2, port), at(3, port));
    let _fleet = Fleet::start_on(&[old, new], &[]);
    let mut dns = Dnsmasq::start(&format!("{} orders.test\n", old.ip()), &[]);
    let admin_port = free_port();
    let proxy = Proxy::start(&config(
        &dns,
        admin_port,
        &format!("[ {{ addr = \"orders.test:{port}\" }} ]"),
    ));

    // Resolved at start: the first request already has its backend.
    assert_eq!(proxy.get("/api/products/1").backend(), old);
    let status = dns_status(admin_port);
    assert_eq!(status["name"], format!("orders.test:{port}"));
    assert_eq!(status["addresses"], serde_json::json!([old.to_string()]));
    assert_eq!(status["failing"], false);
    assert_eq!(status["ttl_s"], 1.0, "dnsmasq's TTL of 1s, held to min_ttl");
    assert!(status["last_resolved"].is_string(), "{status}");

    // The record moves: the time from the change to the first answer of the new backend.
    dns.set_hosts(&format!("{} orders.test\n", new.ip()));
    let changed = Instant::now();
    let mut first_on_new = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            let response = proxy.get("/api/products/1");
            assert_eq!(
                response.status, 200,
                "no request fails while the name moves"
            );
            if response.backend() == new {
                first_on_new = Some(changed.elapsed());
                return true;
            }
            false
        }),
        "ordergate never sent traffic to {new}"
    );
    let elapsed = first_on_new.unwrap_or_default();
    eprintln!("dns: from the DNS change (SIGHUP) to the first request on the new backend: {elapsed:?} (min_ttl 1s, record TTL 1s)");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    for _ in 0..20 {
        assert_eq!(
            proxy.get("/api/products/1").backend(),
            new,
            "the removed address gets nothing"
        );
    }
    let status = dns_status(admin_port);
    assert_eq!(status["addresses"], serde_json::json!([new.to_string()]));
    let reload = &admin(admin_port, "GET", "/status").json()["reload"];
    assert_eq!(
        reload["generation"], 1,
        "a DNS change is not a config generation"
    );
    assert!(reload["dns_changes"].as_u64() >= Some(1), "{reload}");

    // DNS goes away: the last good answer keeps serving, the failure is counted and said once.
    dns.kill();
    let series =
        format!("ordergate_dns_failures_total{{name=\"orders.test:{port}\",pool=\"orders\"}}");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let text = admin(admin_port, "GET", "/metrics").text();
            text.contains(&series) && metric_value(&text, &series) >= 2.0
        }),
        "failures are not counted"
    );
    for _ in 0..20 {
        let response = proxy.get("/api/products/1");
        assert_eq!(response.status, 200);
        assert_eq!(response.backend(), new);
    }
    let status = dns_status(admin_port);
    assert_eq!(status["failing"], true, "{status}");
    assert_eq!(status["addresses"], serde_json::json!([new.to_string()]));
    let metrics = admin(admin_port, "GET", "/metrics").text();
    assert_eq!(
        metric_value(
            &metrics,
            &format!("ordergate_dns_addresses{{name=\"orders.test:{port}\",pool=\"orders\"}}")
        ),
        1.0
    );
    let warnings = proxy
        .logs()
        .iter()
        .filter(|(_, line)| {
            line.contains("does not resolve") && line.contains("keeping its last 1 addresses")
        })
        .count();
    assert_eq!(warnings, 1, "said once per episode: {:?}", proxy.logs());
}

#[test]
fn srv_gives_port_and_weight_and_a_late_name_joins_when_it_resolves() {
    let (light, heavy) = (at(4, free_port()), at(5, free_port()));
    let late = at(6, free_port());
    let _fleet = Fleet::start_on(&[light, heavy, late], &[]);
    let srv = vec![
        format!("_http._tcp.orders.test,light.test,{},0,10", light.port()),
        format!("_http._tcp.orders.test,heavy.test,{},0,30", heavy.port()),
    ];
    let dns = Dnsmasq::start(
        &format!("{} light.test\n{} heavy.test\n", light.ip(), heavy.ip()),
        &srv,
    );
    let admin_port = free_port();
    let proxy = Proxy::start(&config(
        &dns,
        admin_port,
        &format!(
            "[ {{ srv = \"_http._tcp.orders.test\" }}, {{ addr = \"late.test:{}\", weight = 4 }} ]",
            late.port()
        ),
    ));
    let status = admin(admin_port, "GET", "/status").json();
    let backends = &status["pools"][0]["backends"];
    let weight_of = |addr: SocketAddr| {
        backends
            .as_array()
            .and_then(|list| list.iter().find(|b| b["addr"] == addr.to_string()))
            .map(|b| (b["weight"].clone(), b["dns_name"].clone()))
    };
    assert_eq!(
        weight_of(light),
        Some((10.into(), "light.test".into())),
        "{backends}"
    );
    assert_eq!(
        weight_of(heavy),
        Some((30.into(), "heavy.test".into())),
        "{backends}"
    );
    assert_eq!(
        status["pools"][0]["dns"][1]["failing"], true,
        "late.test is not in DNS yet"
    );

    let mut on_heavy = 0;
    for _ in 0..200 {
        let backend = proxy.get("/api/products/1").backend();
        assert!(backend == light || backend == heavy, "{backend}");
        on_heavy += usize::from(backend == heavy);
    }
    assert_eq!(on_heavy, 150, "SRV weights 10:30, round robin");

    // A name that did not resolve at start joins the pool once it does.
    dns.set_hosts(&format!(
        "{} light.test\n{} heavy.test\n{} late.test\n",
        light.ip(),
        heavy.ip(),
        late.ip()
    ));
    assert!(
        wait_until(Duration::from_secs(10), || proxy
            .get("/api/products/1")
            .backend()
            == late),
        "late.test never took traffic"
    );
}

#[test]
fn a_pool_whose_only_name_does_not_resolve_starts_and_says_so() {
    let dns = Dnsmasq::start("", &[]);
    let admin_port = free_port();
    let text = config(&dns, admin_port, "[ { addr = \"nowhere.test:8080\" } ]");
    let file = TempFile::new(
        "ordergate.toml",
        &format!(
            "[server]\nlisten = [\"127.0.0.1:{}\"]\n\n{text}",
            free_port()
        ),
    );
    let checked = crate::support::check(&file.path);
    let stdout = checked.stdout;
    assert!(checked.ok, "a warning, not an error: {stdout}");
    assert!(
        stdout.contains("WARNING: pool orders: backend nowhere.test:8080 does not resolve now"),
        "{stdout}"
    );

    let proxy = Proxy::start(&text);
    let response = proxy.get("/api/products/1");
    assert_eq!(response.status, 503, "no backend from the name yet");
    assert!(
        proxy.logged_within(Duration::from_secs(5), |line| line
            .contains("nowhere.test:8080 does not resolve")
            && line.contains("no backend from it")),
        "{:?}",
        proxy.logs()
    );
}

#[test]
fn a_request_in_flight_on_a_removed_address_finishes_there() {
    let port = free_port();
    let (old, new) = (at(7, port), at(8, port));
    let fleet = Fleet::start_on(&[old, new], &[]);
    let dns = Dnsmasq::start(&format!("{} orders.test\n", old.ip()), &[]);
    let admin_port = free_port();
    let proxy = Proxy::start(&config(
        &dns,
        admin_port,
        &format!("[ {{ addr = \"orders.test:{port}\" }} ]"),
    ));
    fleet.set_mode(old, r#"{"latency_ms":2500}"#);
    let addr = proxy.addr;
    let slow = std::thread::spawn(move || crate::support::get(addr, "/api/products/1"));
    assert!(
        wait_until(Duration::from_secs(5), || fleet.in_flight() == 1),
        "the slow request never reached {old}"
    );
    dns.set_hosts(&format!("{} orders.test\n", new.ip()));
    assert!(
        wait_until(Duration::from_secs(5), || proxy
            .get("/api/products/1")
            .backend()
            == new),
        "ordergate never sent traffic to {new}"
    );
    let answer = slow
        .join()
        .expect("the slow request's thread")
        .expect("an answer, not a reset");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.backend(), old, "it finished where it started");
}
