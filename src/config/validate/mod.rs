//! `FileConfig -> Config`: runs every check and returns all problems at once, each
//! with its key path, the bad value and what would fix it. One file per part of
//! the config file (`server`, `pool`, `route`); the checks of single values
//! they share are in `values`.

mod dns;
mod idempotency;
mod maintenance;
mod pool;
mod rewrite;
mod room;
mod route;
mod server;
mod stale;
mod store;
#[cfg(test)]
mod tests;
mod tls;
mod tracing;
mod trust;
mod values;

use std::fmt;
use std::path::Path;

use super::{Config, ConfigError, FileConfig, PoolConfig};
use pool::{check_unique_pool_names, pool};
use route::routes;
use server::{access_log, admin, check_listeners_apart, server};

/// Collects problems while the checks run.
#[derive(Default)]
pub(super) struct Problems(Vec<ConfigError>);

impl Problems {
    /// Reports a problem at `path`; paths are written out only here, so
    /// callers pass them as `format_args!` or a lazy [`fmt::Display`].
    pub(super) fn add(&mut self, path: impl fmt::Display, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.to_string(),
            message: message.into(),
        });
    }
}

/// Validates a parsed file into a [`Config`], or returns every problem found.
pub(super) fn validate(file: FileConfig, base: &Path) -> Result<Config, Vec<ConfigError>> {
    let mut problems = Problems::default();
    let server = server(&file.server, base, &mut problems);
    let admin = file.admin.as_ref().map(|a| admin(a, &mut problems));
    check_listeners_apart(&server, admin.as_ref(), &mut problems);
    let access_log = access_log(file.log.as_ref(), base, &mut problems);
    let mut pools: Vec<PoolConfig> = file
        .pools
        .iter()
        .enumerate()
        .map(|(i, pool)| self::pool(i, pool, base, &mut problems))
        .collect();
    check_unique_pool_names(&file.pools, &mut problems);
    pool::backups(&file.pools, &mut pools, &mut problems);
    let routes = routes(
        &file.routes,
        &file.pools,
        base,
        server.https_redirect,
        &mut problems,
    );
    let rooms = room::rooms(&file.rooms, &file.routes, &mut problems);
    let pages_dirs = file
        .server
        .pages
        .iter()
        .chain(file.routes.iter().filter_map(|r| r.pages.as_ref()))
        .map(|dir| base.join(dir))
        .collect();
    let maintenance = file
        .maintenance
        .as_ref()
        .map(|m| maintenance::maintenance(&"maintenance", m, &mut problems));
    let store = store::store(file.store.as_ref(), &mut problems);
    let dns = dns::dns(file.dns.as_ref(), &mut problems);
    let tracing = tracing::tracing(file.tracing.as_ref(), &mut problems);
    if problems.0.is_empty() {
        Ok(Config {
            server,
            pools,
            routes,
            rooms,
            admin,
            access_log,
            pages_dirs,
            maintenance,
            store,
            dns,
            tracing,
        })
    } else {
        Err(problems.0)
    }
}
