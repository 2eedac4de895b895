//! Reload triggers: `SIGHUP`, and a change of the config file, of a pages
//! directory or of a TLS certificate, key or CA file (polled, debounced). The admin API's `POST /reload` is the third.
//! Each calls [`State::reload`], which keeps the old config when the new one is
//! invalid.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use crate::state::State;

/// How often watched files are checked for changes.
const POLL: Duration = Duration::from_millis(250);

/// Watches for reload triggers.
#[derive(Debug)]
pub struct ReloadWatcher {
    state: Arc<State>,
}

impl ReloadWatcher {
    /// A watcher of `state`'s config file.
    pub fn new(state: Arc<State>) -> ReloadWatcher {
        ReloadWatcher { state }
    }

    /// The files whose change means a reload: the config file, every page
    /// file, every certificate and key of the TLS listeners (a renewed
    /// certificate is served without a restart) and the CA files and client
    /// certificates of pools' TLS.
    fn watched(&self) -> Vec<PathBuf> {
        let config = self.state.config();
        let mut paths: Vec<PathBuf> = self.state.source().cloned().into_iter().collect();
        paths.extend(config.pages_dirs.iter().cloned());
        for tls in &config.server.tls {
            paths.extend(tls.files().map(Path::to_path_buf));
        }
        // A renewed client certificate or CA file of a pool, too.
        for tls in config.pools.iter().filter_map(|p| p.tls.as_ref()) {
            paths.extend(tls.ca.iter().map(|ca| ca.path.clone()));
            if let Some(client) = &tls.client {
                paths.push(client.cert_path.clone());
                paths.push(client.key_path.clone());
            }
        }
        paths
    }
}

/// What is compared to notice a change: name, size and modification time of the
/// file, or of every file in the directory.
fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    fn add(path: &Path, out: &mut Vec<(PathBuf, u64, Option<SystemTime>)>) {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {
                if let Ok(entries) = std::fs::read_dir(path) {
                    let mut files: Vec<PathBuf> =
                        entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                    files.sort();
                    for file in files {
                        add(&file, out);
                    }
                }
            }
            Ok(meta) => out.push((path.to_path_buf(), meta.len(), meta.modified().ok())),
            Err(_) => out.push((path.to_path_buf(), 0, None)),
        }
    }
    let mut out = Vec::new();
    for path in paths {
        add(path, &mut out);
    }
    out
}

#[async_trait]
impl BackgroundService for ReloadWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => Some(hangup),
            Err(e) => {
                log::error!("cannot watch SIGHUP, reload by file change or the admin API: {e}");
                None
            }
        };
        let watching = self.state.source().is_some();
        let mut last = fingerprint(&self.watched());
        // A change is applied once it has stayed the same for one poll, so an
        // editor's several writes make one reload.
        let mut pending: Option<Vec<(PathBuf, u64, Option<SystemTime>)>> = None;
        let mut ticks = tokio::time::interval(POLL);
        log::info!(
            "reload triggers ready: SIGHUP{}",
            if watching { ", file changes" } else { "" }
        );
        loop {
            tokio::select! {
                _ = async { if let Some(h) = hangup.as_mut() { h.recv().await } else { std::future::pending().await } } => {
                    let _ = self.state.reload("sighup");
                    last = fingerprint(&self.watched());
                    pending = None;
                }
                _ = ticks.tick(), if watching => {
                    let now = fingerprint(&self.watched());
                    if now == last {
                        pending = None;
                    } else if pending.as_ref() == Some(&now) {
                        let _ = self.state.reload("file_change");
                        last = fingerprint(&self.watched());
                        pending = None;
                    } else {
                        pending = Some(now);
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
