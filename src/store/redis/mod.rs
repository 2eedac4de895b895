//! The Redis store: records shared by every ordergate instance pointing at one
//! Redis. Each transition is one Lua script (atomic on the server, timed by the
//! server's clock), so two instances never both see "first".
//!
//! Redis must never fail an order. Every operation waits at most `timeout`;
//! a failure or a timeout marks Redis down (logged once, `ordergate_store_up`
//! 0) and from then on operations go straight to this instance's memory
//! store, without waiting, while a background task pings every connection
//! every [`PROBE_EVERY`]; when all answer, Redis is up again (logged once) and
//! new records go there. What is weaker meanwhile is in the README ("Running
//! several instances").

mod idempotency;
mod rate;
mod room;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, FromRedisValue, IntoConnectionInfo, Script};
use parking_lot::Mutex;

pub use idempotency::RedisIdempotency;
pub use rate::RedisRateLimiter;
pub use room::RedisLine;

use super::RedisConfig;
use crate::telemetry::{StoreFeature, StoreMetrics};

/// While Redis is down, how often a background probe checks it.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// How long one connection attempt (TCP and TLS) may go on. An operation
/// waits for it at most `timeout`, then falls back; the attempt goes on as
/// later operations and probes poll it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// This process, in record owner fields: only the instance that began a
/// record settles it.
static INSTANCE: LazyLock<String> = LazyLock::new(|| format!("{:016x}", fastrand::u64(..)));

/// One Redis, its connections and its health.
pub struct Redis {
    settings: RedisConfig,
    client: Client,
    connections: OnceLock<Vec<ConnectionManager>>,
    next: AtomicUsize,
    up: AtomicBool,
    health: Mutex<Health>,
    metrics: StoreMetrics,
}

#[derive(Debug, Default)]
struct Health {
    down_since: Option<String>,
    last_error: Option<String>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("settings", &self.settings)
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What `/status` says of the store.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreStatus {
    /// `memory` or `redis`.
    pub kind: &'static str,
    /// The Redis URL (never with a password).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Prefix of every key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// Whether the store answers (memory always does).
    pub up: bool,
    /// Longest wait for one operation, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Since when Redis has not answered (RFC 3339), while it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down_since: Option<String>,
    /// The last failure seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Operations served by memory because Redis did not answer, since start.
    pub fallbacks: u64,
}

impl StoreStatus {
    /// The memory store.
    pub fn memory() -> StoreStatus {
        StoreStatus {
            kind: "memory",
            url: None,
            key_prefix: None,
            up: true,
            timeout_ms: None,
            down_since: None,
            last_error: None,
            fallbacks: 0,
        }
    }
}

impl Redis {
    /// A Redis of validated settings; connections open on first use. `None`
    /// (logged) when the client refuses the settings.
    pub fn new(settings: RedisConfig, metrics: StoreMetrics) -> Option<Redis> {
        let info = match settings.url.as_str().into_connection_info() {
            Ok(info) => info,
            Err(error) => {
                log::error!(
                    "store: cannot use {} ({error}); records stay in memory",
                    settings.url
                );
                return None;
            }
        };
        let info = match &settings.password {
            Some(password) => {
                let redis = info.redis_settings().clone().set_password(password);
                info.set_redis_settings(redis)
            }
            None => info,
        };
        let client = match Client::open(info) {
            Ok(client) => client,
            Err(error) => {
                log::error!(
                    "store: cannot use {} ({error}); records stay in memory",
                    settings.url
                );
                return None;
            }
        };
        metrics.up.set(1);
        Some(Redis {
            settings,
            client,
            connections: OnceLock::new(),
            next: AtomicUsize::new(0),
            up: AtomicBool::new(true),
            health: Mutex::new(Health::default()),
            metrics,
        })
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &RedisConfig {
        &self.settings
    }

    /// Whether Redis answered the last operation.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// What `/status` shows.
    pub fn status(&self) -> StoreStatus {
        let health = self.health.lock();
        StoreStatus {
            kind: "redis",
            url: Some(self.settings.url.clone()),
            key_prefix: Some(self.settings.key_prefix.clone()),
            up: self.is_up(),
            timeout_ms: Some(self.settings.timeout.as_millis() as u64),
            down_since: health.down_since.clone(),
            last_error: health.last_error.clone(),
            fallbacks: self.metrics.fallbacks(),
        }
    }

    /// A key under the configured prefix.
    fn key(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut key = Vec::with_capacity(
            self.settings.key_prefix.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>(),
        );
        key.extend_from_slice(self.settings.key_prefix.as_bytes());
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                key.push(b':');
            }
            key.extend_from_slice(part);
        }
        key
    }

    fn connection(&self) -> Option<ConnectionManager> {
        let connections = self.connections.get_or_init(|| {
            // The client's own response timeout is a backstop: `invoke`'s
            // fires first and names the store's timeout in the log.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(self.settings.timeout * 2))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            (0..self.settings.pool_size)
                .filter_map(|_| {
                    ConnectionManager::new_lazy_with_config(self.client.clone(), config.clone())
                        .map_err(|e| log::error!("store: cannot make a Redis connection: {e}"))
                        .ok()
                })
                .collect()
        });
        if connections.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % connections.len();
        connections.get(i).cloned()
    }

    /// Runs a script within `timeout`. `None`: Redis is down or did not answer
    /// in time (counted as a fallback of `feature`, when given); the caller
    /// uses its memory store.
    async fn invoke<T: FromRedisValue>(
        self: &Arc<Self>,
        feature: Option<StoreFeature>,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Option<T> {
        let fallback = |redis: &Redis| {
            if let Some(feature) = feature {
                redis.metrics.fallback(feature);
            }
            None
        };
        if !self.is_up() {
            return fallback(self);
        }
        let Some(mut connection) = self.connection() else {
            return fallback(self);
        };
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let result = tokio::time::timeout(
            self.settings.timeout,
            invocation.invoke_async::<T>(&mut connection),
        )
        .await;
        match result {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.went_down(error.to_string());
                fallback(self)
            }
            Err(_) => {
                self.went_down(format!(
                    "no answer within {}ms",
                    self.settings.timeout.as_millis()
                ));
                fallback(self)
            }
        }
    }

    fn went_down(self: &Arc<Self>, why: String) {
        self.metrics.errors.inc();
        if self.up.swap(false, Ordering::Relaxed) {
            log::warn!(
                "store: Redis at {} failed ({why}); idempotency records, rate limits and waiting-room lines fall back to this instance's memory until it answers again",
                self.settings.url
            );
            self.metrics.up.set(0);
            let mut health = self.health.lock();
            health.down_since = Some(crate::telemetry::now_rfc3339());
            health.last_error = Some(why);
            tokio::spawn(Arc::clone(self).probe_until_up());
        }
    }

    /// While down: a probe every [`PROBE_EVERY`], in the background (no
    /// shopper's request waits for it, and recovery is seen without traffic),
    /// until Redis answers or no snapshot uses this store any more.
    async fn probe_until_up(self: Arc<Self>) {
        while !self.is_up() && Arc::strong_count(&self) > 1 {
            tokio::time::sleep(PROBE_EVERY).await;
            Arc::clone(&self).probe().await;
        }
    }

    /// Pings every connection (each reconnects on its own after a restart);
    /// up again when all answer in time.
    async fn probe(self: Arc<Self>) {
        let Some(connections) = self.connections.get() else {
            self.came_back();
            return;
        };
        for connection in connections {
            let mut connection = connection.clone();
            let command = ::redis::cmd("PING");
            let ping = command.query_async::<String>(&mut connection);
            match tokio::time::timeout(self.settings.timeout, ping).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => return self.still_down(error.to_string()),
                Err(_) => {
                    return self.still_down(format!(
                        "no answer within {}ms",
                        self.settings.timeout.as_millis()
                    ))
                }
            }
        }
        self.came_back();
    }

    fn still_down(&self, why: String) {
        self.health.lock().last_error = Some(why);
    }

    fn came_back(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            log::warn!(
                "store: Redis at {} answers again; new idempotency records, rate limits and waiting-room tickets go to Redis",
                self.settings.url
            );
            self.metrics.up.set(1);
            self.health.lock().down_since = None;
        }
    }
}

/// Lua setting `local now` to the time in microseconds: `arg` when the
/// caller gave it (the specification cases drive time), else Redis's own
/// clock (`TIME`), so instances whose clocks differ agree.
fn lua_now_us(arg: &str) -> String {
    format!(
        "local now
if {arg} and {arg} ~= '' then
  now = tonumber({arg})
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::LiveState;
    use crate::ratelimit::RateLimiter;
    use crate::store::StoreConfig;
    use crate::telemetry::Metrics;

    fn redis(url: &str) -> StoreConfig {
        StoreConfig::Redis(RedisConfig {
            url: url.to_owned(),
            password: Some("secret".to_owned()),
            key_prefix: "ordergate:".to_owned(),
            timeout: Duration::from_millis(20),
            pool_size: 2,
        })
    }

    #[test]
    fn a_reload_keeps_the_same_redis_and_switches_on_new_settings() {
        let stores = LiveState::default();
        let metrics = Metrics::new();
        stores.configure(&StoreConfig::Memory, &metrics);
        assert!(stores.shared().is_none());
        assert_eq!(stores.status().kind, "memory");
        stores.configure(&redis("redis://127.0.0.1:1/0"), &metrics);
        let first = stores.shared().expect("redis");
        stores.configure(&redis("redis://127.0.0.1:1/0"), &metrics);
        let same = stores.shared().expect("redis");
        assert!(
            Arc::ptr_eq(&first, &same),
            "same settings, same connections"
        );
        stores.configure(&redis("redis://127.0.0.1:1/1"), &metrics);
        let other = stores.shared().expect("redis");
        assert!(!Arc::ptr_eq(&first, &other), "new settings, a new store");
        let status = stores.status();
        assert_eq!(status.kind, "redis");
        assert_eq!(status.url.as_deref(), Some("redis://127.0.0.1:1/1"));
        assert!(
            !format!("{:?} {}", other.settings(), serde_json::json!(status)).contains("secret")
        );
        stores.configure(&StoreConfig::Memory, &metrics);
        assert!(stores.shared().is_none());
    }

    #[tokio::test]
    async fn an_unreachable_redis_falls_back_at_once_and_says_so() {
        let metrics = Metrics::new();
        let Some(redis) = Redis::new(
            match redis("redis://127.0.0.1:1/0") {
                StoreConfig::Redis(settings) => settings,
                StoreConfig::Memory => unreachable!(),
            },
            metrics.store.clone(),
        ) else {
            panic!("valid settings");
        };
        let redis = Arc::new(redis);
        let limiter = RedisRateLimiter::new(Arc::clone(&redis), "r", Arc::default());
        let started = std::time::Instant::now();
        assert!(
            limiter
                .admit(b"alice", crate::ratelimit::Quota::per_second(5))
                .await,
            "counted in memory"
        );
        assert!(!redis.is_up());
        assert_eq!(metrics.store.up.get(), 0);
        // Down: the next ones do not even try, and memory keeps the limit.
        let admitted = {
            let mut admitted = 0;
            for _ in 0..100 {
                admitted += u32::from(
                    limiter
                        .admit(b"alice", crate::ratelimit::Quota::per_second(5))
                        .await,
                );
            }
            admitted
        };
        assert_eq!(admitted, 4);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(metrics.store.fallbacks(), 101);
        assert!(redis.status().last_error.is_some());
    }
}
