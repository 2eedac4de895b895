//! Backends by name: a pool's `addr = "name:port"` and `srv = "_http._tcp.name"`
//! are looked up at start and again when their answer's TTL runs out (held
//! between `[dns] min_ttl` and `max_ttl`); every address an answer gives is a
//! backend of the pool, with its own live entry in the [`Registry`](super::Registry).
//!
//! A lookup that fails or comes back empty keeps the last good addresses: DNS
//! trouble never empties a pool that had backends (said once per episode in
//! the log, counted in `ordergate_dns_failures_total`). When an answer changes
//! the addresses, the host rebuilds the served snapshot from the same config
//! (not a new generation, like an admin weight override): requests in flight
//! keep their snapshot, and a removed address's entry lives until its last
//! request ends.
//!
//! Names are asked for as written, fully qualified (no search domains).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::time::Instant;

use crate::config::{BackendConfig, Config, DnsConfig, DnsTarget, NamedBackend, PoolConfig};
use crate::telemetry::DnsMetrics;

/// Most addresses one name serves (the lowest addresses, in order): a name
/// that suddenly answers with thousands must not make thousands of backends
/// and metric series.
pub const MAX_ADDRESSES_PER_NAME: usize = 64;

/// How often the service looks for lookups that are due; also how late a name
/// a reload adds is first looked up.
const TICK: Duration = Duration::from_millis(100);

/// One address a name resolved to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Address {
    /// Where the backend listens.
    pub addr: SocketAddr,
    /// The SRV record's weight (`None` for an A/AAAA name).
    pub srv_weight: Option<u16>,
    /// The host name the address belongs to (the SRV target for SRV): the
    /// TLS name of the backend.
    pub host: Arc<str>,
}

/// What is known of one name: the last good answer and the last attempt.
#[derive(Debug, Clone, Default)]
pub struct Resolution {
    /// The addresses served (the last good answer), sorted.
    pub addresses: Vec<Address>,
    /// When the last good answer came.
    pub resolved_at: Option<SystemTime>,
    /// When the name was last asked for.
    pub attempted_at: Option<SystemTime>,
    /// How long the current answer is kept: its TTL held between `min_ttl`
    /// and `max_ttl` (or `min_ttl` after a failure).
    pub ttl: Duration,
    /// Why the last lookup failed; `None` when it succeeded.
    pub error: Option<String>,
    /// Addresses the answer had beyond [`MAX_ADDRESSES_PER_NAME`].
    pub dropped: usize,
}

#[derive(Debug, Default)]
struct Entry {
    resolution: Resolution,
    /// When to ask again; `None`: never asked.
    due: Option<Instant>,
}

/// A backend as a snapshot serves it: the config, and the name it was
/// resolved from (`None` for an `IP:PORT` backend).
#[derive(Debug, Clone)]
pub struct Served {
    /// Address, weight and in-flight cap.
    pub config: BackendConfig,
    /// The host name (TLS name) it was resolved from.
    pub name: Option<Arc<str>>,
}

/// The answers of every named backend, by (pool, name): live state that
/// outlives snapshots, as the registry's entries do.
#[derive(Debug, Default)]
pub struct Resolutions {
    names: Mutex<HashMap<(String, DnsTarget), Entry>>,
}

impl Resolutions {
    /// What is known of a pool's name (for `/status`).
    pub fn get(&self, pool: &str, target: &DnsTarget) -> Option<Resolution> {
        self.names
            .lock()
            .get(&(pool.to_string(), target.clone()))
            .map(|e| e.resolution.clone())
    }

    /// The backends a pool serves now: its `IP:PORT` backends, then each
    /// address of each name, in config order; an address already served once
    /// in the pool is not served twice.
    pub fn served(&self, pool: &PoolConfig) -> Vec<Served> {
        let mut served: Vec<Served> = pool
            .backends
            .iter()
            .map(|b| Served {
                config: b.clone(),
                name: None,
            })
            .collect();
        if pool.named.is_empty() {
            return served;
        }
        let names = self.names.lock();
        for named in &pool.named {
            let Some(entry) = names.get(&(pool.name.clone(), named.target.clone())) else {
                continue;
            };
            for address in &entry.resolution.addresses {
                if served.iter().any(|s| s.config.addr == address.addr) {
                    continue;
                }
                served.push(Served {
                    config: BackendConfig {
                        addr: address.addr,
                        weight: weight(named, address),
                        max_in_flight: named.max_in_flight,
                    },
                    name: Some(Arc::clone(&address.host)),
                });
            }
        }
        served
    }

    /// Forgets the names `config` no longer has; returns them.
    fn forget_removed(&self, config: &Config) -> Vec<(String, DnsTarget)> {
        let mut names = self.names.lock();
        let removed: Vec<(String, DnsTarget)> = names
            .keys()
            .filter(|(pool, target)| {
                !config
                    .pools
                    .iter()
                    .any(|p| p.name == *pool && p.named.iter().any(|n| n.target == *target))
            })
            .cloned()
            .collect();
        for key in &removed {
            names.remove(key);
        }
        removed
    }

    /// The names of `config` whose lookup is due at `now`.
    fn due(&self, config: &Config, now: Instant) -> Vec<(String, DnsTarget)> {
        let names = self.names.lock();
        config
            .pools
            .iter()
            .flat_map(|pool| {
                pool.named
                    .iter()
                    .map(|n| (pool.name.clone(), n.target.clone()))
            })
            .filter(|key| {
                names
                    .get(key)
                    .and_then(|e| e.due)
                    .is_none_or(|due| due <= now)
            })
            .collect()
    }

    /// When the next lookup is due.
    fn next_due(&self) -> Option<Instant> {
        self.names.lock().values().filter_map(|e| e.due).min()
    }

    /// Records a lookup's result; returns whether the addresses served changed.
    fn record(
        &self,
        pool: &str,
        target: &DnsTarget,
        result: Result<Answer, String>,
        dns: &DnsConfig,
        metrics: &DnsMetrics,
    ) -> bool {
        let now = Instant::now();
        let label = target.to_string();
        let labels = [pool, label.as_str()];
        let mut names = self.names.lock();
        let entry = names.entry((pool.to_string(), target.clone())).or_default();
        let r = &mut entry.resolution;
        r.attempted_at = Some(SystemTime::now());
        let result = result.and_then(|answer| {
            if answer.addresses.is_empty() {
                Err("the answer has no address".to_string())
            } else {
                Ok(answer)
            }
        });
        match result {
            Ok(mut answer) => {
                if let Some(why) = r.error.take() {
                    log::info!(
                        "pool {pool}: {label} resolves again ({} addresses); it had failed: {why}",
                        answer.addresses.len()
                    );
                }
                answer.addresses.sort();
                answer.addresses.dedup_by(|a, b| a.addr == b.addr);
                r.dropped = answer
                    .addresses
                    .len()
                    .saturating_sub(MAX_ADDRESSES_PER_NAME);
                if r.dropped > 0 {
                    log::warn!(
                        "pool {pool}: {label} answered {} addresses; serving the first {MAX_ADDRESSES_PER_NAME}",
                        answer.addresses.len()
                    );
                    answer.addresses.truncate(MAX_ADDRESSES_PER_NAME);
                }
                r.ttl = answer.ttl.clamp(dns.min_ttl, dns.max_ttl);
                r.resolved_at = r.attempted_at;
                entry.due = Some(now + r.ttl);
                let changed = r.addresses != answer.addresses;
                if changed {
                    let list: Vec<String> = answer
                        .addresses
                        .iter()
                        .map(|a| a.addr.to_string())
                        .collect();
                    log::info!(
                        "pool {pool}: {label} now resolves to {} (TTL in use {:?})",
                        list.join(", "),
                        r.ttl
                    );
                    r.addresses = answer.addresses;
                    metrics.changes.with_label_values(&labels).inc();
                }
                metrics
                    .addresses
                    .with_label_values(&labels)
                    .set(r.addresses.len() as i64);
                changed
            }
            Err(why) => {
                metrics.failures.with_label_values(&labels).inc();
                metrics
                    .addresses
                    .with_label_values(&labels)
                    .set(r.addresses.len() as i64);
                if r.error.is_none() {
                    if r.addresses.is_empty() {
                        log::warn!(
                            "pool {pool}: {label} does not resolve: {why}; the pool has no backend from it until it does"
                        );
                    } else {
                        log::warn!(
                            "pool {pool}: {label} does not resolve: {why}; keeping its last {} addresses",
                            r.addresses.len()
                        );
                    }
                }
                r.error = Some(why);
                r.ttl = dns.min_ttl;
                entry.due = Some(now + dns.min_ttl);
                false
            }
        }
    }
}

/// The weight of one address of a named backend: the config's, else the SRV
/// record's (0, "rarely", counts as 1), else 1.
fn weight(named: &NamedBackend, address: &Address) -> u32 {
    named
        .weight
        .or(address.srv_weight.map(|w| u32::from(w).clamp(1, 1000)))
        .unwrap_or(1)
}

/// A good answer: the addresses and the shortest TTL of the records it took.
#[derive(Debug)]
struct Answer {
    addresses: Vec<Address>,
    ttl: Duration,
}

/// A resolver asking `dns.servers` (or the system's), with no search domains.
pub fn resolver(dns: &DnsConfig) -> Result<TokioResolver, String> {
    let provider = TokioConnectionProvider::default();
    let mut builder = if dns.servers.is_empty() {
        TokioResolver::builder(provider)
            .map_err(|e| format!("cannot read the system's resolver settings: {e}"))?
    } else {
        let mut config = ResolverConfig::new();
        for server in &dns.servers {
            config.add_name_server(NameServerConfig::new(*server, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(*server, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(config, provider)
    };
    let options: &mut ResolverOpts = builder.options_mut();
    options.timeout = dns.timeout;
    options.attempts = 1;
    options.ndots = 0;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.use_hosts_file = ResolveHosts::Never;
    // Never keep an answer longer than ordergate would, nor a "no such name".
    options.positive_max_ttl = Some(dns.max_ttl);
    options.negative_max_ttl = Some(dns.min_ttl);
    Ok(builder.build())
}

/// Asks for one name; the addresses and the shortest TTL, or why not.
async fn lookup(resolver: &TokioResolver, target: &DnsTarget) -> Result<Answer, String> {
    match target {
        DnsTarget::Host { name, port } => {
            let (ips, ttl) = lookup_ips(resolver, name).await?;
            let host: Arc<str> = Arc::from(name.as_str());
            Ok(Answer {
                addresses: ips
                    .into_iter()
                    .map(|ip| Address {
                        addr: SocketAddr::new(ip, *port),
                        srv_weight: None,
                        host: Arc::clone(&host),
                    })
                    .collect(),
                ttl,
            })
        }
        DnsTarget::Srv { name } => {
            let srv = resolver
                .srv_lookup(fqdn(name))
                .await
                .map_err(|e| e.to_string())?;
            let mut ttl = until(srv.as_lookup().valid_until());
            // Only the most preferred targets (lowest priority value) serve;
            // the others are for when those are gone from DNS.
            let best = srv.iter().map(|r| r.priority()).min();
            let mut addresses = Vec::new();
            let mut failures = Vec::new();
            for record in srv.iter().filter(|r| Some(r.priority()) == best) {
                let target = record.target().to_utf8();
                let target = target.trim_end_matches('.');
                match lookup_ips(resolver, target).await {
                    Ok((ips, target_ttl)) => {
                        ttl = ttl.min(target_ttl);
                        let host: Arc<str> = Arc::from(target);
                        addresses.extend(ips.into_iter().map(|ip| Address {
                            addr: SocketAddr::new(ip, record.port()),
                            srv_weight: Some(record.weight()),
                            host: Arc::clone(&host),
                        }));
                    }
                    Err(why) => failures.push(format!("{target}: {why}")),
                }
            }
            if addresses.is_empty() && !failures.is_empty() {
                return Err(format!("no SRV target resolves ({})", failures.join("; ")));
            }
            Ok(Answer { addresses, ttl })
        }
    }
}

async fn lookup_ips(
    resolver: &TokioResolver,
    name: &str,
) -> Result<(Vec<IpAddr>, Duration), String> {
    let answer = resolver
        .lookup_ip(fqdn(name))
        .await
        .map_err(|e| e.to_string())?;
    Ok((answer.iter().collect(), until(answer.valid_until())))
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

fn until(deadline: std::time::Instant) -> Duration {
    deadline.saturating_duration_since(std::time::Instant::now())
}

/// What the resolver service needs from its caller, so that it needs
/// nothing above `upstream`.
pub trait DnsHost: Send + Sync {
    /// The config served now (its pools' names and `[dns]`).
    fn dns_config(&self) -> Arc<Config>;
    /// Where answers are kept.
    fn resolutions(&self) -> &Resolutions;
    /// The DNS metrics.
    fn dns_metrics(&self) -> Arc<DnsMetrics>;
    /// Some name's addresses changed: serve them.
    fn addresses_changed(&self);
}

/// Looks up every name of the served config that is due, all at once;
/// `resolver` is rebuilt when `[dns]` changes. Tells the host once when
/// some name's addresses changed.
async fn resolve_due(host: &dyn DnsHost, resolver: &mut Option<(DnsConfig, TokioResolver)>) {
    let config = host.dns_config();
    let removed = host.resolutions().forget_removed(&config);
    if !removed.is_empty() {
        // A name a reload removed leaves no series behind.
        let metrics = host.dns_metrics();
        for (pool, target) in removed {
            let label = target.to_string();
            let labels = [pool.as_str(), label.as_str()];
            let _ = metrics.addresses.remove_label_values(&labels);
            let _ = metrics.failures.remove_label_values(&labels);
            let _ = metrics.changes.remove_label_values(&labels);
        }
    }
    let due = host.resolutions().due(&config, Instant::now());
    if due.is_empty() {
        return;
    }
    if resolver.as_ref().is_none_or(|(dns, _)| *dns != config.dns) {
        match self::resolver(&config.dns) {
            Ok(built) => *resolver = Some((config.dns.clone(), built)),
            Err(why) => {
                *resolver = None;
                let metrics = host.dns_metrics();
                for (pool, target) in &due {
                    host.resolutions().record(
                        pool,
                        target,
                        Err(why.clone()),
                        &config.dns,
                        &metrics,
                    );
                }
                return;
            }
        }
    }
    let Some((_, client)) = resolver.as_ref() else {
        return;
    };
    // Each lookup bounded, so one silent server cannot hold the others.
    let limit = config.dns.timeout * 2;
    let mut lookups = tokio::task::JoinSet::new();
    for (pool, target) in due {
        let client = client.clone();
        lookups.spawn(async move {
            let result = match tokio::time::timeout(limit, lookup(&client, &target)).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {limit:?}")),
            };
            (pool, target, result)
        });
    }
    let metrics = host.dns_metrics();
    let mut changed = false;
    while let Some(done) = lookups.join_next().await {
        if let Ok((pool, target, result)) = done {
            changed |= host
                .resolutions()
                .record(&pool, &target, result, &config.dns, &metrics);
        }
    }
    if changed {
        host.addresses_changed();
    }
}

/// The first lookup of every name, before serving: bounded by `[dns] timeout`;
/// a name that does not resolve leaves its pool without backends from it.
pub async fn resolve_at_start(host: &dyn DnsHost) {
    let mut resolver = None;
    resolve_due(host, &mut resolver).await;
}

/// For `ordergate check`: one warning per name of `config` that does not
/// resolve now (with the servers of `[dns]`).
pub fn unresolvable(config: &Config) -> Vec<String> {
    let names: Vec<(String, DnsTarget)> = config
        .pools
        .iter()
        .flat_map(|p| p.named.iter().map(|n| (p.name.clone(), n.target.clone())))
        .collect();
    if names.is_empty() {
        return Vec::new();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return vec![format!("cannot look up backend names: {e}")],
    };
    runtime.block_on(async {
        let resolver = match resolver(&config.dns) {
            Ok(resolver) => resolver,
            Err(why) => return vec![format!("cannot look up backend names: {why}")],
        };
        let limit = config.dns.timeout * 2;
        let mut warnings = Vec::new();
        for (pool, target) in names {
            let result = match tokio::time::timeout(limit, lookup(&resolver, &target)).await {
                Ok(Ok(answer)) if !answer.addresses.is_empty() => continue,
                Ok(Ok(_)) => "the answer has no address".to_string(),
                Ok(Err(why)) => why,
                Err(_) => format!("no answer within {limit:?}"),
            };
            warnings.push(format!(
                "pool {pool}: backend {target} does not resolve now ({result}); ordergate starts without backends from it and looks it up again every dns.min_ttl ({:?})",
                config.dns.min_ttl
            ));
        }
        warnings
    })
}

/// The background service that keeps every name's addresses fresh.
pub struct DnsResolver {
    host: Arc<dyn DnsHost>,
}

impl std::fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsResolver").finish_non_exhaustive()
    }
}

impl DnsResolver {
    /// A service resolving the names of the config `host` serves.
    pub fn new(host: Arc<dyn DnsHost>) -> DnsResolver {
        DnsResolver { host }
    }
}

#[async_trait]
impl BackgroundService for DnsResolver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut resolver = None;
        loop {
            resolve_due(&*self.host, &mut resolver).await;
            let now = Instant::now();
            let pause = self
                .host
                .resolutions()
                .next_due()
                .map_or(TICK, |due| due.saturating_duration_since(now).min(TICK));
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_toml(
            "[[pools]]\nname = \"p\"\nbackends = [ { addr = \"127.0.0.1:9000\" }, { addr = \"orders.test:8080\", max_in_flight = 7 }, { srv = \"_http._tcp.orders.test\", weight = 3 } ]\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn answer(addrs: &[&str], srv_weight: Option<u16>) -> Result<Answer, String> {
        Ok(Answer {
            addresses: addrs
                .iter()
                .map(|a| Address {
                    addr: a.parse().unwrap_or_else(|e| panic!("{a}: {e}")),
                    srv_weight,
                    host: Arc::from("orders.test"),
                })
                .collect(),
            ttl: Duration::from_secs(300),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn answers_expand_the_pool_and_a_failure_keeps_the_last_good_one() {
        let config = config();
        let pool = &config.pools[0];
        let host = pool.named[0].target.clone();
        let srv = pool.named[1].target.clone();
        let resolutions = Resolutions::default();
        let metrics = DnsMetrics::new(&prometheus::Registry::new());
        let now = Instant::now();
        assert_eq!(resolutions.due(&config, now).len(), 2, "never asked: due");
        assert_eq!(resolutions.served(pool).len(), 1, "only the IP backend");

        let changed = resolutions.record(
            "p",
            &host,
            answer(&["10.0.0.2:8080", "10.0.0.1:8080", "127.0.0.1:9000"], None),
            &config.dns,
            &metrics,
        );
        assert!(changed);
        assert!(resolutions.record(
            "p",
            &srv,
            answer(&["10.0.0.9:81"], Some(0)),
            &config.dns,
            &metrics
        ));
        let served = resolutions.served(pool);
        let addrs: Vec<String> = served.iter().map(|s| s.config.addr.to_string()).collect();
        assert_eq!(
            addrs,
            [
                "127.0.0.1:9000",
                "10.0.0.1:8080",
                "10.0.0.2:8080",
                "10.0.0.9:81"
            ],
            "sorted, and an address already served is not served twice"
        );
        assert_eq!(served[1].config.max_in_flight, 7);
        assert_eq!(
            served[3].config.weight, 3,
            "the config's weight wins over SRV's"
        );
        assert_eq!(served[1].name.as_deref(), Some("orders.test"));
        let r = resolutions.get("p", &host).expect("known");
        assert_eq!(r.ttl, config.dns.max_ttl, "a long TTL is held to max_ttl");
        assert!(resolutions.due(&config, now).is_empty());

        assert!(!resolutions.record("p", &host, Err("timed out".into()), &config.dns, &metrics));
        assert!(!resolutions.record("p", &host, answer(&[], None), &config.dns, &metrics));
        let r = resolutions.get("p", &host).expect("known");
        assert_eq!(r.addresses.len(), 3, "the last good answer stays");
        assert_eq!(r.error.as_deref(), Some("the answer has no address"));
        assert_eq!(r.ttl, config.dns.min_ttl, "asked again soon");
        assert_eq!(
            metrics
                .failures
                .with_label_values(&["p", "orders.test:8080"])
                .get(),
            2
        );
        tokio::time::advance(config.dns.min_ttl).await;
        assert_eq!(
            resolutions.due(&config, Instant::now()),
            vec![("p".to_string(), host.clone())]
        );

        assert!(resolutions.record(
            "p",
            &host,
            answer(&["10.0.0.3:8080"], None),
            &config.dns,
            &metrics
        ));
        assert!(resolutions.get("p", &host).expect("known").error.is_none());

        let mut smaller = config.clone();
        smaller.pools[0].named.remove(1);
        assert_eq!(
            resolutions.forget_removed(&smaller),
            vec![("p".to_string(), srv.clone())]
        );
        assert!(resolutions.get("p", &srv).is_none());
        assert_eq!(resolutions.served(&smaller.pools[0]).len(), 2);
    }

    #[test]
    fn srv_weight_is_used_unless_the_config_sets_one() {
        let named = |weight| NamedBackend {
            target: DnsTarget::Srv { name: "s".into() },
            weight,
            max_in_flight: 1,
        };
        let address = |w| Address {
            addr: SocketAddr::from(([10, 0, 0, 1], 80)),
            srv_weight: w,
            host: Arc::from("t"),
        };
        assert_eq!(weight(&named(None), &address(Some(20))), 20);
        assert_eq!(weight(&named(None), &address(Some(0))), 1);
        assert_eq!(weight(&named(None), &address(Some(60000))), 1000);
        assert_eq!(weight(&named(Some(5)), &address(Some(20))), 5);
        assert_eq!(weight(&named(None), &address(None)), 1);
    }
}
