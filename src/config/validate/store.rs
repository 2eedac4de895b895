//! `[store]`: where records shared by several instances live (memory: this
//! process only; redis: every instance pointing at one Redis).

use std::time::Duration;

use super::values::duration_or;
use super::Problems;
use crate::config::file::FileStore;
use crate::config::{RedisConfig, StoreConfig};

const DEFAULT_PREFIX: &str = "ordergate:";
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(20);
const DEFAULT_POOL_SIZE: usize = 4;
/// Longer than this, a slow Redis would hold every shopper's request.
const MAX_TIMEOUT: Duration = Duration::from_secs(2);

/// Validates `[store]`; no table is the memory store.
pub(super) fn store(file: Option<&FileStore>, problems: &mut Problems) -> StoreConfig {
    let Some(file) = file else {
        return StoreConfig::Memory;
    };
    match file.kind.as_deref() {
        None | Some("memory") => {
            for (key, set) in [
                ("url", file.url.is_some()),
                ("password_env", file.password_env.is_some()),
                ("key_prefix", file.key_prefix.is_some()),
                ("timeout", file.timeout.is_some()),
                ("pool_size", file.pool_size.is_some()),
            ] {
                if set {
                    problems.add(
                        format!("store.{key}"),
                        "is only for kind = \"redis\"; set kind = \"redis\" or remove it",
                    );
                }
            }
            StoreConfig::Memory
        }
        Some("redis") => redis(file, problems).map_or(StoreConfig::Memory, StoreConfig::Redis),
        Some(other) => {
            problems.add(
                "store.kind",
                format!("{other:?} is not a store; use \"memory\" (default) or \"redis\""),
            );
            StoreConfig::Memory
        }
    }
}

fn redis(file: &FileStore, problems: &mut Problems) -> Option<RedisConfig> {
    let url = match file.url.as_deref() {
        None => {
            problems.add(
                "store.url",
                "is required with kind = \"redis\"; write e.g. \"redis://10.0.0.5:6379/0\" (or rediss:// for TLS)",
            );
            None
        }
        Some(url) => check_url(url, problems).then(|| url.to_owned()),
    };
    let password = file.password_env.as_deref().and_then(|var| match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            problems.add(
                "store.password_env",
                format!("the environment variable {var:?} is not set (or empty); export the Redis password in it"),
            );
            None
        }
    });
    let key_prefix = file
        .key_prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
    if key_prefix.len() > 64 || key_prefix.chars().any(|c| c.is_control() || c == ' ') {
        problems.add(
            "store.key_prefix",
            format!("{key_prefix:?} must be at most 64 characters without spaces, e.g. \"ordergate:\" or \"shop-eu:\""),
        );
    }
    let timeout = duration_or(
        &"store.timeout",
        file.timeout.as_deref(),
        DEFAULT_TIMEOUT,
        false,
        problems,
    );
    if timeout > MAX_TIMEOUT {
        problems.add(
            "store.timeout",
            format!("{timeout:?} is too long: every request may wait this long when Redis hangs; use at most \"2s\" (default \"20ms\")"),
        );
    }
    let pool_size = match file.pool_size {
        None => DEFAULT_POOL_SIZE,
        Some(n @ 1..=64) => n as usize,
        Some(n) => {
            problems.add(
                "store.pool_size",
                format!(
                    "{n} is out of range; use 1 to 64 connections (default {DEFAULT_POOL_SIZE})"
                ),
            );
            DEFAULT_POOL_SIZE
        }
    };
    Some(RedisConfig {
        url: url?,
        password,
        key_prefix,
        timeout,
        pool_size,
    })
}

/// A `redis://` or `rediss://` URL the client can use, with no password in it
/// (the password comes from `password_env`, so the file holds no secret).
fn check_url(url: &str, problems: &mut Problems) -> bool {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        problems.add(
            "store.url",
            format!("{url:?} is not a Redis URL; write \"redis://HOST:PORT/DB\" or \"rediss://HOST:PORT/DB\" (TLS)"),
        );
        return false;
    }
    match redis::IntoConnectionInfo::into_connection_info(url) {
        Ok(info) if info.redis_settings().password().is_some() => {
            problems.add(
                "store.url",
                "holds a password; remove it from the URL and name an environment variable holding it in password_env",
            );
            false
        }
        Ok(_) => true,
        Err(error) => {
            problems.add(
                "store.url",
                format!("{url:?} is not a valid Redis URL ({error}); write e.g. \"redis://10.0.0.5:6379/0\""),
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, StoreConfig};

    const BASE: &str = "[[pools]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\nname = \"r\"\npool = \"p\"\n";

    fn problems(store: &str) -> String {
        Config::from_toml(&format!("{BASE}{store}"))
            .expect_err("invalid")
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn memory_is_the_default_and_redis_takes_its_settings() {
        let config = Config::from_toml(BASE).expect("valid");
        assert_eq!(config.store, StoreConfig::Memory);
        let config = Config::from_toml(&format!(
            "{BASE}[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379/2\"\ntimeout = \"50ms\"\npool_size = 2\n"
        ))
        .expect("valid");
        let StoreConfig::Redis(redis) = config.store else {
            panic!("redis");
        };
        assert_eq!(redis.key_prefix, "ordergate:");
        assert_eq!(redis.timeout, std::time::Duration::from_millis(50));
        assert_eq!(redis.pool_size, 2);
        assert!(Config::from_toml(&format!(
            "{BASE}[store]\nkind = \"redis\"\nurl = \"rediss://cache.internal:6380\"\n"
        ))
        .is_ok());
    }

    #[test]
    fn bad_settings_are_all_reported() {
        let found = problems(
            "[store]\nkind = \"redis\"\nurl = \"http://x\"\npassword_env = \"ORDERGATE_TEST_UNSET_PASSWORD\"\ntimeout = \"5s\"\npool_size = 0\nkey_prefix = \"a b\"\n",
        );
        for expected in [
            "store.url: \"http://x\" is not a Redis URL",
            "store.password_env: the environment variable \"ORDERGATE_TEST_UNSET_PASSWORD\" is not set",
            "store.timeout: 5s is too long",
            "store.pool_size: 0 is out of range",
            "store.key_prefix: \"a b\" must be at most 64 characters",
        ] {
            assert!(found.contains(expected), "{expected}\nin:\n{found}");
        }
        assert!(
            problems("[store]\nkind = \"redis\"\nurl = \"redis://:secret@h:6379\"\n")
                .contains("store.url: holds a password")
        );
        assert!(problems("[store]\nkind = \"redis\"\n").contains("store.url: is required"));
        assert!(problems("[store]\nkind = \"etcd\"\n").contains("\"etcd\" is not a store"));
        assert!(problems("[store]\nurl = \"redis://h\"\n")
            .contains("store.url: is only for kind = \"redis\""));
        assert!(
            problems("[store]\nkind = \"redis\"\nurl = \"redis://h:notaport\"\n")
                .contains("not a valid Redis URL")
        );
    }
}
