//! How long do ordergate's own per-request steps take, without any network:
//! classifying a request to a route (4 routes, and 64 routes), picking a
//! backend with each balancing algorithm (in-flight counting included),
//! rendering a degradation page (JSON and HTML), making a request id, and
//! adding the forwarding headers to the request pingora sends upstream?
//! Criterion micro benchmarks; the load harness (`benches/load.rs`) measures the
//! whole proxy.
//!
//! Run with `cargo bench --bench hot_path` (add a filter, e.g.
//! `cargo bench --bench hot_path -- pick`). Each benchmark measures for 2 s.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use ordergate::config::Config;
use ordergate::respond::{self, Outcome, PageContext, Pages};
use ordergate::state::State;

/// One pool per algorithm, four routes.
const CONFIG: &str = r#"
[[pools]]
name = "round_robin"
balance = "round_robin"
backends = [ { addr = "127.0.0.1:9001", weight = 1 }, { addr = "127.0.0.1:9002", weight = 2 }, { addr = "127.0.0.1:9003", weight = 3 } ]
[[pools]]
name = "random"
balance = "random"
backends = [ { addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002" }, { addr = "127.0.0.1:9003" } ]
[[pools]]
name = "least_request"
balance = "least_request"
backends = [ { addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002" }, { addr = "127.0.0.1:9003" } ]
[[pools]]
name = "peak_ewma"
balance = "peak_ewma"
backends = [ { addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002" }, { addr = "127.0.0.1:9003" } ]
[[pools]]
name = "consistent_hash"
balance = "consistent_hash"
hash_key = "header:x-cart-id"
backends = [ { addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002" }, { addr = "127.0.0.1:9003" } ]
[[routes]]
name = "checkout"
host = "shop.example"
path_prefix = "/api/orders"
methods = ["POST"]
pool = "round_robin"
[[routes]]
name = "orders"
path_prefix = "/api/orders"
pool = "least_request"
[[routes]]
name = "products"
path_prefix = "/api/products"
pool = "peak_ewma"
[[routes]]
name = "catch-all"
pool = "random"
"#;

fn make_state(text: &str) -> State {
    match Config::from_toml(text) {
        Ok(config) => State::new(config, None),
        Err(errors) => panic!("bench config is invalid: {errors:?}"),
    }
}

/// 64 routes: 16 shops (hosts) with 4 path prefixes each, and a catch-all.
fn many_routes() -> String {
    let mut text =
        String::from("[[pools]]\nname = \"p\"\nbackends = [ { addr = \"127.0.0.1:9001\" } ]\n");
    for shop in 0..16 {
        for (i, prefix) in ["/api/orders", "/api/products", "/api/cart", "/static"]
            .iter()
            .enumerate()
        {
            text.push_str(&format!(
                "[[routes]]\nname = \"r{shop}-{i}\"\nhost = \"shop{shop}.example\"\npath_prefix = \"{prefix}\"\npool = \"p\"\n"
            ));
        }
    }
    text.push_str("[[routes]]\nname = \"catch-all\"\npool = \"p\"\n");
    text
}

fn route_classification(c: &mut Criterion) {
    let state = make_state(CONFIG);
    let snapshot = state.snapshot();
    let routes = &snapshot.routes;
    let mut group = c.benchmark_group("classify");
    group.bench_function("checkout POST (host route)", |b| {
        b.iter(|| {
            routes.classify(
                black_box(Some("shop.example")),
                black_box("/api/orders"),
                &Method::POST,
            )
        })
    });
    group.bench_function("product GET (prefix route)", |b| {
        b.iter(|| {
            routes.classify(
                black_box(Some("www.example:8080")),
                black_box("/api/products/17"),
                &Method::GET,
            )
        })
    });
    group.bench_function("catch-all", |b| {
        b.iter(|| routes.classify(black_box(None), black_box("/about/us"), &Method::GET))
    });
    let big = make_state(&many_routes());
    let big_snapshot = big.snapshot();
    group.bench_function("64 routes, last shop", |b| {
        b.iter(|| {
            big_snapshot.routes.classify(
                black_box(Some("shop15.example")),
                black_box("/static/app.js"),
                &Method::GET,
            )
        })
    });
    group.finish();
}

fn backend_selection(c: &mut Criterion) {
    let state = make_state(CONFIG);
    let snapshot = state.snapshot();
    let mut headers = HeaderMap::new();
    headers.insert("x-cart-id", HeaderValue::from_static("cart-12345"));
    let mut group = c.benchmark_group("pick");
    for pool in &snapshot.pools {
        group.bench_function(pool.name.as_str(), |b| {
            // The Pick (and its in-flight count) is dropped at once, as when
            // the request ends.
            b.iter(|| pool.pick(black_box(&headers), None, &[], Duration::from_secs(1)))
        });
    }
    group.finish();
}

fn page_rendering(c: &mut Criterion) {
    let pages = Pages::builtin();
    let mut json = HeaderMap::new();
    json.insert("accept", HeaderValue::from_static("application/json"));
    let mut html = HeaderMap::new();
    html.insert(
        "accept",
        HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"),
    );
    html.insert(
        "accept-language",
        HeaderValue::from_static("zh-CN,zh;q=0.9,en;q=0.8"),
    );
    let context = PageContext::new("0af7651916cd43dd8448eb211c80319c");
    let mut group = c.benchmark_group("render");
    group.bench_function("shed, JSON", |b| {
        b.iter(|| respond::render(&pages, Outcome::Shed, black_box(&json), &context))
    });
    group.bench_function("shed, HTML zh", |b| {
        b.iter(|| respond::render(&pages, Outcome::Shed, black_box(&html), &context))
    });
    group.bench_function("upstream_timeout, JSON", |b| {
        b.iter(|| respond::render(&pages, Outcome::UpstreamTimeout, black_box(&json), &context))
    });
    group.finish();
}

fn request_ids(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_id");
    group.bench_function("new", |b| {
        b.iter(|| ordergate::forward::request_id(black_box(None)))
    });
    group.bench_function("client's, kept", |b| {
        b.iter(|| {
            ordergate::forward::request_id(black_box(Some(b"7f1c2a9e-3b4d-4e5f-8a6b-1c2d3e4f5a6b")))
        })
    });
    group.bench_function("client's, replaced", |b| {
        b.iter(|| ordergate::forward::request_id(black_box(Some(b"not a sane id <script>"))))
    });
    group.finish();
}

/// A request head as pingora hands it to `upstream_request_filter`: built
/// with the case-preserving name map, sized for the headers it was parsed with.
fn parsed_request(headers: &[(&str, &str)]) -> pingora::http::RequestHeader {
    let mut request =
        pingora::http::RequestHeader::build("GET", b"/api/products/42", Some(headers.len()))
            .expect("request");
    for (name, value) in headers {
        request
            .append_header(name.to_string(), *value)
            .expect("header");
    }
    request
}

fn forwarding_headers(c: &mut Criterion) {
    let client = ordergate::client::Client {
        ip: Some(std::net::IpAddr::from([203, 0, 113, 7])),
        ..Default::default()
    };
    let load_generator = parsed_request(&[("Host", "shop.example")]);
    let browser = parsed_request(&[
        ("Host", "shop.example"),
        ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0"),
        ("Accept", "text/html,application/json;q=0.9,*/*;q=0.8"),
        ("Accept-Language", "zh-CN,zh;q=0.9,en;q=0.8"),
        ("Accept-Encoding", "gzip, deflate, br"),
        ("Cookie", "session=4f2a9c; cart=7781"),
        ("Referer", "https://shop.example/cart"),
        ("Connection", "keep-alive"),
    ]);
    let mut group = c.benchmark_group("forwarding_headers");
    for (name, request) in [
        ("1 header (wrk)", &load_generator),
        ("8 headers (browser)", &browser),
    ] {
        group.bench_function(format!("clone only, {name}"), |b| {
            b.iter(|| black_box(request.clone()))
        });
        group.bench_function(format!("clone + add, {name}"), |b| {
            b.iter(|| {
                let mut upstream = request.clone();
                ordergate::forward::add_headers(
                    &mut upstream,
                    &client,
                    "4f2a9c0d1e2f3a4b5c6d7e8f9a0b1c2d",
                )
                .expect("headers");
                black_box(upstream)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = hot_path;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(50);
    targets = route_classification, backend_selection, page_rendering, request_ids, forwarding_headers
}
criterion_main!(hot_path);
