//! Validation of whole files: every problem reported, with key paths.

use std::time::Duration;

use http::header::HeaderName;
use http::Method;

use super::pool::{DEFAULT_IDLE_TIMEOUT, DEFAULT_REQUEST_TIMEOUT};
use crate::config::{Balance, Config, HashKey};

fn errors(text: &str) -> Vec<String> {
    match Config::from_toml(text) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

const GOOD: &str = r#"
    [server]
    listen = ["127.0.0.1:8080"]
    threads = 2
    [[pools]]
    name = "orders"
    balance = "consistent_hash"
    hash_key = "header:x-cart-id"
    connect_timeout = "500ms"
    request_timeout = "5s"
    backends = [ { addr = "127.0.0.1:9001", weight = 1 }, { addr = "127.0.0.1:9002", weight = 2 } ]
    [[pools]]
    name = "catalog"
    backends = [ { addr = "127.0.0.1:9003" } ]
    [[routes]]
    name = "checkout"
    host = "Shop.Example"
    path_prefix = "/api/orders"
    methods = ["POST"]
    pool = "orders"
    [[routes]]
    name = "browse"
    pool = "catalog"
"#;

#[test]
fn accepts_the_documented_shape_and_resolves_references() {
    let config = Config::from_toml(GOOD).expect("valid");
    assert_eq!(config.server.threads, 2);
    assert_eq!(
        config.pools[0].balance,
        Balance::ConsistentHash(HashKey::Header(HeaderName::from_static("x-cart-id")))
    );
    assert_eq!(config.pools[0].connect_timeout, Duration::from_millis(500));
    assert_eq!(config.pools[1].request_timeout, DEFAULT_REQUEST_TIMEOUT);
    assert_eq!(config.pools[1].idle_timeout, DEFAULT_IDLE_TIMEOUT);
    assert_eq!(config.server.upstream_keepalive, 1024);
    assert_eq!(config.pools[0].backends[1].weight, 2);
    assert_eq!(config.routes[0].host.as_deref(), Some("shop.example"));
    assert_eq!(config.routes[0].methods, Some(vec![Method::POST]));
    assert_eq!(config.routes[1].pool, 1);
    assert_eq!(config.routes[1].path_prefix, "/");
}

#[test]
fn reports_every_error_with_its_key_path() {
    let text = r#"
        [server]
        listen = ["localhost"]
        upstream_keepalive = 0
        [[pools]]
        name = "orders"
        balance = "fastest"
        request_timeout = "5"
        idle_timeout = "0s"
        backends = [ { addr = "127.0.0.1:9001", weight = 0 } ]
        [[routes]]
        name = "checkout"
        methods = ["post"]
        pool = "payment"
    "#;
    let errors = errors(text);
    let expected = [
        "server.listen[0]: \"localhost\" is not an IP:PORT address",
        "server.upstream_keepalive: 0 is out of range",
        "pools[0] \"orders\".idle_timeout: ",
        "pools[0] \"orders\".balance: \"fastest\" is not an algorithm",
        "pools[0] \"orders\".request_timeout: \"5\" has no unit",
        "pools[0] \"orders\".backends[0].weight: 0 is out of range",
        "routes[0] \"checkout\".methods[0]: \"post\" must be upper case",
        "routes[0] \"checkout\": pool \"payment\" is not defined (defined: orders)",
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for want in expected {
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {errors:#?}"
        );
    }
}

#[test]
fn rejects_unknown_keys_with_their_name() {
    let errors = errors("[server]\nlisten = [\"127.0.0.1:1\"]\nthread = 2\n");
    assert_eq!(
        errors,
        [
            "server.thread: unknown key; did you mean `threads`?",
            "routes: no routes are defined; add a [[routes]] table with a name and a pool",
        ]
    );
}

#[test]
fn consistent_hash_needs_a_valid_key_and_other_algorithms_reject_one() {
    let base = |balance: &str, key: &str| {
        format!(
            "[[pools]]\nname = \"p\"\nbalance = \"{balance}\"\n{key}\nbackends = [{{ addr = \"127.0.0.1:1\" }}]\n[[routes]]\nname = \"r\"\npool = \"p\"\n"
        )
    };
    assert!(errors(&base("consistent_hash", ""))
        .iter()
        .any(|e| e.contains("hash_key: is required")));
    assert!(errors(&base("consistent_hash", "hash_key = \"body\""))
        .iter()
        .any(|e| e.contains("is not a hash key")));
    assert!(errors(&base("round_robin", "hash_key = \"client_ip\""))
        .iter()
        .any(|e| e.contains("only used with")));
    assert!(errors(&base("consistent_hash", "hash_key = \"cookie:cart\"")).is_empty());
}

#[test]
fn rejects_duplicates_and_shadowed_routes() {
    let text = r#"
        [[pools]]
        name = "p"
        backends = [ { addr = "127.0.0.1:1" }, { addr = "127.0.0.1:1" } ]
        [[pools]]
        name = "p"
        backends = [ { addr = "127.0.0.1:2" } ]
        [[routes]]
        name = "a"
        path_prefix = "/x"
        pool = "p"
        [[routes]]
        name = "b"
        path_prefix = "/x"
        pool = "p"
    "#;
    let errors = errors(text);
    assert!(
        errors.iter().any(|e| e.contains("listed twice")),
        "{errors:?}"
    );
    assert!(errors
        .iter()
        .any(|e| e.contains("pool name is already used")));
    assert!(errors.iter().any(|e| e.contains("never be used")));
}

#[test]
fn routes_that_differ_only_by_a_trailing_slash_or_method_order_are_the_same() {
    let base = "[[pools]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1:1\" }]\n";
    let route = |name: &str, prefix: &str, methods: &str| {
        format!("[[routes]]\nname = \"{name}\"\npool = \"p\"\npath_prefix = \"{prefix}\"\nmethods = {methods}\n")
    };
    let same = format!(
        "{base}{}{}",
        route("a", "/api", "[\"GET\", \"POST\"]"),
        route("b", "/api/", "[\"POST\", \"GET\"]")
    );
    assert!(errors(&same)
        .iter()
        .any(|e| e.contains("routes[0] \"a\"") && e.contains("never be used")));
    let repeated = format!(
        "{base}{}{}",
        route("a", "/api", "[\"GET\", \"GET\", \"POST\"]"),
        route("b", "/api", "[\"POST\", \"GET\"]")
    );
    assert!(errors(&repeated)
        .iter()
        .any(|e| e.contains("never be used")));
    let different = format!(
        "{base}{}{}",
        route("a", "/api", "[\"GET\"]"),
        route("b", "/api/", "[\"POST\"]")
    );
    assert!(crate::config::Config::from_toml(&different).is_ok());
}

#[test]
fn backups_must_exist_and_not_form_a_cycle() {
    let pools = |a: &str, b: &str, c: &str| {
        format!(
            "[[pools]]\nname = \"a\"\n{a}\nbackends = [{{ addr = \"127.0.0.1:9001\" }}]\n\
             [[pools]]\nname = \"b\"\n{b}\nbackends = [{{ addr = \"127.0.0.1:9002\" }}]\n\
             [[pools]]\nname = \"c\"\n{c}\nbackends = [{{ addr = \"127.0.0.1:9003\" }}]\n\
             [[routes]]\nname = \"r\"\npool = \"a\"\n"
        )
    };
    let chain = Config::from_toml(&pools("backup = \"b\"", "backup = \"c\"", "")).expect("a chain");
    assert_eq!(chain.pools[0].backup, Some(1));
    assert_eq!(chain.pools[1].backup, Some(2));
    assert_eq!(chain.pools[0].failback_after, Duration::from_secs(10));
    assert_eq!(
        errors(&pools("backup = \"b\"", "backup = \"c\"", "backup = \"a\"")).len(),
        3,
        "each pool of the cycle"
    );
    assert!(
        errors(&pools("backup = \"b\"", "backup = \"c\"", "backup = \"b\""))
            .iter()
            .any(|e| e.contains("b -> c -> b"))
    );
    assert!(errors(&pools("backup = \"a\"", "", ""))[0].contains("its own backup"));
    assert!(errors(&pools("backup = \"dr\"", "", ""))[0].contains("\"dr\" is not defined"));
}

#[test]
fn pool_tls_loads_its_files_relative_to_the_config_and_refuses_unchecked_by_omission() {
    let dir = std::env::temp_dir().join(format!("ordergate-pool-tls-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("certs")).expect("dir");
    let pair = rcgen::generate_simple_self_signed(vec!["orders.internal".to_string()])
        .expect("certificate");
    std::fs::write(dir.join("certs/ca.pem"), pair.cert.pem()).expect("write");
    std::fs::write(dir.join("certs/client.pem"), pair.cert.pem()).expect("write");
    std::fs::write(
        dir.join("certs/client.key"),
        pair.signing_key.serialize_pem(),
    )
    .expect("write");
    let config = |tls: &str| {
        format!(
            "[[pools]]\nname = \"orders\"\nbackends = [ {{ addr = \"127.0.0.1:9443\" }} ]\n{tls}\n[[routes]]\nname = \"r\"\npool = \"orders\"\n"
        )
    };
    let errors = |tls: &str| match Config::from_toml_in(&config(tls), &dir) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    };

    let good = Config::from_toml_in(
        &config("[pools.tls]\nsni = \"orders.internal\"\nca_file = \"certs/ca.pem\"\nclient_cert = \"certs/client.pem\"\nclient_key = \"certs/client.key\""),
        &dir,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let tls = good.pools[0].tls.as_ref().expect("tls");
    assert!(tls.verify, "verify defaults to true");
    assert_eq!(tls.sni.as_deref(), Some("orders.internal"));
    assert_eq!(
        tls.ca.as_ref().map(|ca| ca.path.clone()),
        Some(dir.join("certs/ca.pem"))
    );
    assert!(tls.client.is_some());
    assert!(good.warnings().is_empty());
    assert!(good.summary().contains("TLS to orders.internal (CA "));

    let unchecked = Config::from_toml_in(&config("tls = { verify = false }"), &dir)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(unchecked.warnings()[0].contains("NOT checked"));
    assert!(unchecked.summary().contains("warning: pool orders"));

    let without_sni = errors("tls = {}");
    assert_eq!(without_sni.len(), 1, "{without_sni:?}");
    assert!(
        without_sni[0].starts_with("pools[0] \"orders\".tls.sni: is required while verify = true")
            && without_sni[0].contains("set tls.sni to the name on the backends' certificate"),
        "{without_sni:?}"
    );
    let missing = errors("tls = { sni = \"orders.internal\", ca_file = \"certs/none.pem\" }");
    assert!(
        missing[0].starts_with("pools[0] \"orders\".tls.ca_file: cannot read")
            && missing[0].contains("certs/none.pem"),
        "{missing:?}"
    );
    let half = errors("tls = { sni = \"orders.internal\", client_cert = \"certs/client.pem\" }");
    assert!(
        half[0].starts_with("pools[0] \"orders\".tls.client_key: is required with client_cert"),
        "{half:?}"
    );
    let swapped = errors(
        "tls = { sni = \"orders.internal\", client_cert = \"certs/client.key\", client_key = \"certs/client.pem\" }",
    );
    assert!(swapped[0].contains("swapped"), "{swapped:?}");
    let useless = errors("tls = { verify = false, ca_file = \"certs/ca.pem\" }");
    assert!(
        useless[0].starts_with("pools[0] \"orders\".tls.ca_file: is not used with verify = false"),
        "{useless:?}"
    );
    let bad_name = errors("tls = { sni = \"orders internal\" }");
    assert!(bad_name[0].contains("is not a host name"), "{bad_name:?}");
    let typo = errors("tls = { sni = \"orders.internal\", verfy = true }");
    assert!(typo[0].contains("did you mean `verify`?"), "{typo:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn backends_by_name_and_dns_settings() {
    let config = |backends: &str, extra: &str| {
        format!(
            "{extra}\n[[pools]]\nname = \"orders\"\nbackends = [ {backends} ]\n[[routes]]\nname = \"r\"\npool = \"orders\"\n"
        )
    };
    let errors = |backends: &str, extra: &str| match Config::from_toml(&config(backends, extra)) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    let good = Config::from_toml(&config(
        "{ addr = \"127.0.0.1:9001\" }, { addr = \"orders.internal:8080\", weight = 2 }, { srv = \"_http._tcp.orders.internal\" }",
        "[dns]\nservers = [\"127.0.0.1:5353\"]\nmin_ttl = \"2s\"\nmax_ttl = \"30s\"\ntimeout = \"500ms\"",
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    let pool = &good.pools[0];
    assert_eq!(pool.backends.len(), 1);
    assert_eq!(pool.named.len(), 2);
    assert_eq!(pool.named[0].target.to_string(), "orders.internal:8080");
    assert_eq!(pool.named[0].weight, Some(2));
    assert_eq!(pool.named[1].weight, None, "SRV weight unless set");
    assert_eq!(good.dns.servers[0].to_string(), "127.0.0.1:5353");
    assert_eq!(good.dns.min_ttl, std::time::Duration::from_secs(2));
    assert!(good
        .summary()
        .contains("srv _http._tcp.orders.internal (by DNS)"));

    let no_port = errors("{ addr = \"orders.internal\" }", "");
    assert!(no_port[0].contains("has no port"), "{no_port:?}");
    let bad_name = errors("{ addr = \"orders internal:80\" }", "");
    assert!(
        bad_name[0].contains("neither IP:PORT nor name:PORT"),
        "{bad_name:?}"
    );
    let bad_ip = errors("{ addr = \"10.0.0.300:80\" }", "");
    assert!(
        bad_ip[0].contains("neither IP:PORT nor name:PORT"),
        "{bad_ip:?}"
    );
    let bad_port = errors("{ addr = \"orders.internal:0\" }", "");
    assert!(bad_port[0].contains("is not a port"), "{bad_port:?}");
    let both = errors("{ addr = \"a.b:1\", srv = \"_http._tcp.a.b\" }", "");
    assert!(both[0].contains("not both"), "{both:?}");
    let twice = errors("{ addr = \"a.b:1\" }, { addr = \"a.b:1\" }", "");
    assert!(twice[0].contains("listed twice"), "{twice:?}");
    let ttls = errors(
        "{ addr = \"a.b:1\" }",
        "[dns]\nmin_ttl = \"10s\"\nmax_ttl = \"5s\"\nservers = [\"localhost\"]",
    );
    assert_eq!(ttls.len(), 2, "{ttls:?}");

    // TLS: every backend by name gives the SNI; an IP backend still needs one.
    let by_name = Config::from_toml(
        &config("{ addr = \"orders.internal:8443\" }", "")
            .replace("[[routes]]", "tls = { verify = false }\n[[routes]]"),
    );
    assert!(by_name.is_ok());
    let text = "[[pools]]\nname = \"orders\"\nbackends = [ { addr = \"orders.internal:8443\" } ]\ntls = {}\n[[routes]]\nname = \"r\"\npool = \"orders\"\n";
    assert!(Config::from_toml(text).is_ok(), "sni defaults to the names");
    let mixed = text.replace(
        "{ addr = \"orders.internal:8443\" }",
        "{ addr = \"orders.internal:8443\" }, { addr = \"127.0.0.1:8443\" }",
    );
    assert!(
        Config::from_toml(&mixed).is_err(),
        "an IP backend has no name"
    );
}

#[test]
fn tracing_is_off_by_default_and_checked_when_on() {
    assert_eq!(Config::from_toml(GOOD).expect("valid").tracing, None);
    let on = Config::from_toml(&format!(
        "{GOOD}\n[tracing]\notlp = \"http://127.0.0.1:4318\"\nratio = 1\n"
    ))
    .expect("valid");
    let tracing = on.tracing.expect("on");
    assert_eq!(tracing.otlp.to_string(), "http://127.0.0.1:4318/v1/traces");
    assert_eq!(tracing.ratio, 1.0);
    assert!(!tracing.client_sampled);
    assert_eq!(tracing.service_name, "ordergate");
    assert_eq!(tracing.interval, Duration::from_secs(1));
    let found = errors(&format!(
        "{GOOD}\n[tracing]\nratio = -0.5\ntimeout = \"0s\"\nservice_name = \"\"\nsampled = true\n"
    ));
    for wanted in [
        "tracing.otlp: is required",
        "tracing.ratio: -0.5 is not a share",
        "tracing.timeout: \"0s\" must be longer than zero",
        "tracing.service_name",
        "tracing.sampled: unknown key",
    ] {
        assert!(
            found.iter().any(|e| e.contains(wanted)),
            "{wanted}: {found:#?}"
        );
    }
    let nan = errors(&format!(
        "{GOOD}\n[tracing]\notlp = \"http://127.0.0.1:4318\"\nratio = nan\n"
    ));
    assert!(nan.iter().any(|e| e.contains("tracing.ratio")), "{nan:#?}");
}
