//! The serde mirror of the TOML file. Values stay as written (strings), so that
//! validation can name the key and the bad value in its messages.

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[server]`.
    #[serde(default)]
    pub server: FileServer,
    /// `[[pools]]`.
    #[serde(default)]
    pub pools: Vec<FilePool>,
    /// `[[routes]]`.
    #[serde(default)]
    pub routes: Vec<FileRoute>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    /// Listen addresses.
    pub listen: Option<Vec<String>>,
    /// Worker threads.
    pub threads: Option<i64>,
    /// Grace period on shutdown.
    pub grace_period: Option<String>,
}

/// `[[pools]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePool {
    /// Pool name.
    pub name: String,
    /// Balancing algorithm.
    pub balance: Option<String>,
    /// Consistent-hash key.
    pub hash_key: Option<String>,
    /// Connect timeout.
    pub connect_timeout: Option<String>,
    /// Request timeout.
    pub request_timeout: Option<String>,
    /// Backends.
    #[serde(default)]
    pub backends: Vec<FileBackend>,
}

/// One entry of `backends`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackend {
    /// `IP:PORT`.
    pub addr: String,
    /// Relative weight.
    pub weight: Option<i64>,
}

/// `[[routes]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    /// Route name.
    pub name: String,
    /// Host to match.
    pub host: Option<String>,
    /// Path prefix to match.
    pub path_prefix: Option<String>,
    /// Methods to match.
    pub methods: Option<Vec<String>>,
    /// Pool to send to.
    pub pool: String,
}
