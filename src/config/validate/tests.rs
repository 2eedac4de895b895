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
