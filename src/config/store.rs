//! `[store]`, validated: where records shared by several instances live.

use std::fmt::Debug;
use std::time::Duration;

/// `[store]`: where records shared by several instances live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// This process's memory only (default).
    #[default]
    Memory,
    /// One Redis for every instance.
    Redis(RedisConfig),
}

/// `[store]` with `kind = "redis"`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URL, without a password.
    pub url: String,
    /// The password, read from `password_env`.
    pub password: Option<String>,
    /// Prefix of every key ordergate writes. Default: `"ordergate:"`.
    pub key_prefix: String,
    /// Longest wait for one operation before falling back to memory. Default: 20 ms.
    pub timeout: Duration,
    /// Connections (each multiplexed). Default: 4.
    pub pool_size: usize,
}

impl Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("RedisConfig")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}
