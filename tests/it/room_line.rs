//! The waiting room's line in Redis keeps the rules the memory line keeps:
//! every case of `ordergate::store::room::spec` runs against a `RedisLine`
//! on a real `redis-server` of this test (see `redis.rs`), each case on a
//! fresh room's keys, timed by the spec's clock (`on_callers_clock`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ordergate::store::redis::{Redis, RedisLine};
use ordergate::store::room::{spec, MemoryLine};
use ordergate::store::RedisConfig;
use ordergate::telemetry::Metrics;

use crate::redis::RedisServer;

#[test]
fn the_redis_line_keeps_the_rules_of_the_spec() {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let metrics = Metrics::new();
        let settings = RedisConfig {
            url: server.url(),
            password: None,
            key_prefix: "spec:".to_owned(),
            // Generous: a fallback to memory would hide what Redis answers.
            timeout: Duration::from_secs(2),
            pool_size: 1,
        };
        let redis = Arc::new(Redis::new(settings, metrics.store.clone()).expect("valid settings"));
        let cases = AtomicUsize::new(0);
        spec::run_all(|| {
            let room = format!("case{}", cases.fetch_add(1, Ordering::Relaxed));
            Arc::new(
                RedisLine::new(Arc::clone(&redis), &room, Arc::new(MemoryLine::new()))
                    .on_callers_clock(),
            )
        })
        .await;
        assert_eq!(
            metrics.store.fallbacks(),
            0,
            "every operation was answered by Redis, none by the fallback line"
        );
        assert!(redis.is_up());
    });
}
