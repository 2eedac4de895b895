//! How long does the per-request hot path of ordergate's own logic take:
//! classifying a request to a route, and picking a backend with each balancing
//! algorithm? Run with `cargo bench --bench select`; prints nanoseconds per call.

use std::hint::black_box;
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Method};
use ordergate::config::Config;
use ordergate::state::State;

const CONFIG: &str = r#"
[[pools]]
name = "rr"
balance = "round_robin"
backends = [ { addr = "127.0.0.1:9001", weight = 1 }, { addr = "127.0.0.1:9002", weight = 2 }, { addr = "127.0.0.1:9003", weight = 3 } ]
[[pools]]
name = "random"
balance = "random"
backends = [ { addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002" }, { addr = "127.0.0.1:9003" } ]
[[pools]]
name = "least"
balance = "least_request"
backends = [ { addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002" }, { addr = "127.0.0.1:9003" } ]
[[pools]]
name = "ewma"
balance = "peak_ewma"
backends = [ { addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002" }, { addr = "127.0.0.1:9003" } ]
[[pools]]
name = "hash"
balance = "consistent_hash"
hash_key = "header:x-cart-id"
backends = [ { addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002" }, { addr = "127.0.0.1:9003" } ]
[[routes]]
name = "checkout"
host = "shop.example"
path_prefix = "/api/orders"
methods = ["POST"]
pool = "rr"
[[routes]]
name = "orders"
path_prefix = "/api/orders"
pool = "least"
[[routes]]
name = "products"
path_prefix = "/api/products"
pool = "ewma"
[[routes]]
name = "catch-all"
pool = "random"
"#;

fn measure(name: &str, iterations: u32, mut f: impl FnMut()) {
    for _ in 0..iterations / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    let nanos = start.elapsed().as_nanos() as f64 / f64::from(iterations);
    println!("{name:<32} {nanos:>8.1} ns/op");
}

fn main() {
    let config = match Config::from_toml(CONFIG) {
        Ok(config) => config,
        Err(errors) => panic!("bench config is invalid: {errors:?}"),
    };
    let state = State::new(config, None);
    let snapshot = state.snapshot();
    let iterations = 1_000_000;

    measure("route: classify (3rd route)", iterations, || {
        black_box(snapshot.routes.classify(
            Some("www.example:8080"),
            black_box("/api/products/17"),
            &Method::GET,
        ));
    });

    let mut headers = HeaderMap::new();
    headers.insert("x-cart-id", HeaderValue::from_static("cart-12345"));
    for pool in &snapshot.pools {
        measure(
            &format!("pick + in-flight: {}", pool.name),
            iterations,
            || {
                black_box(pool.pick(&headers, None, &[], std::time::Duration::from_secs(1)));
            },
        );
    }
}
