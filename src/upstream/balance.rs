//! Balancing algorithms. Each picks an index into a pool's backend list among the
//! backends a caller accepts (healthy, not yet tried, ...). Tables are built once per
//! snapshot; the counters they compare (in flight, latency) live in [`Backend`] and
//! so survive reloads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::Backend;
use crate::config::Balance;

/// Ring points per unit of weight in a consistent-hash ring.
const RING_POINTS_PER_WEIGHT: u64 = 160;
/// Upper bound on ring points for one backend, whatever its weight.
const RING_POINTS_MAX: u64 = 16_000;

/// The per-snapshot tables of one pool's algorithm.
#[derive(Debug)]
pub(super) enum Balancer {
    /// Smooth weighted round robin, precomputed as a schedule of indices.
    RoundRobin {
        schedule: Vec<usize>,
        next: AtomicUsize,
    },
    /// Weighted random over cumulative weights.
    Random { cumulative: Vec<u64> },
    /// Power of two choices on requests in flight per unit of weight.
    LeastRequest,
    /// Power of two choices on peak-EWMA cost per unit of weight.
    PeakEwma,
    /// A ring of (point, index), sorted by point.
    ConsistentHash { ring: Vec<(u64, usize)> },
}

impl Balancer {
    pub(super) fn new(balance: &Balance, backends: &[Arc<Backend>], weights: &[u32]) -> Balancer {
        match balance {
            Balance::RoundRobin => Balancer::RoundRobin {
                schedule: smooth_schedule(weights),
                next: AtomicUsize::new(0),
            },
            Balance::Random => Balancer::Random {
                cumulative: weights
                    .iter()
                    .scan(0u64, |sum, w| {
                        *sum += u64::from(*w);
                        Some(*sum)
                    })
                    .collect(),
            },
            Balance::LeastRequest => Balancer::LeastRequest,
            Balance::PeakEwma => Balancer::PeakEwma,
            Balance::ConsistentHash(_) => Balancer::ConsistentHash {
                ring: ring(backends, weights),
            },
        }
    }

    /// Picks the index of a backend `ok` accepts. `hash` is the request key's hash for consistent
    /// hashing; without one, that algorithm falls back to round robin order.
    pub(super) fn pick(
        &self,
        backends: &[Arc<Backend>],
        weights: &[u32],
        hash: Option<u64>,
        ok: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = backends.len();
        match self {
            // Each skipped slot takes the next turn of the shared counter, so the
            // share of a backend that cannot take traffic spreads evenly over
            // the others instead of falling to its neighbour in the schedule.
            Balancer::RoundRobin { schedule, next } => (0..schedule.len())
                .map(|_| schedule[next.fetch_add(1, Ordering::Relaxed) % schedule.len()])
                .find(|&i| ok(i)),
            Balancer::Random { cumulative } => {
                let total = cumulative.last().copied().unwrap_or(0);
                if total > 0 {
                    let point = fastrand::u64(0..total);
                    let i = cumulative.partition_point(|&c| c <= point);
                    if i < n && ok(i) {
                        return Some(i);
                    }
                }
                scan_from(fastrand::usize(0..n.max(1)), n, ok)
            }
            Balancer::LeastRequest => two_choices(n, ok, |i| {
                backends[i].least_request_cost() / f64::from(weights[i])
            }),
            Balancer::PeakEwma => {
                two_choices(n, ok, |i| backends[i].ewma_cost() / f64::from(weights[i]))
            }
            Balancer::ConsistentHash { ring } => match hash {
                Some(hash) => {
                    let start = ring.partition_point(|&(point, _)| point < hash);
                    (0..ring.len())
                        .map(|step| ring[(start + step) % ring.len()].1)
                        .find(|&i| ok(i))
                }
                None => scan_from(fastrand::usize(0..n.max(1)), n, ok),
            },
        }
    }
}

/// The first accepted index at or after `start`, wrapping around.
fn scan_from(start: usize, n: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
    (0..n).map(|step| (start + step) % n).find(|&i| ok(i))
}

/// Power of two choices: two distinct accepted backends at random, the cheaper wins.
fn two_choices(n: usize, ok: impl Fn(usize) -> bool, cost: impl Fn(usize) -> f64) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let first = scan_from(fastrand::usize(0..n), n, &ok)?;
    if n == 1 {
        return Some(first);
    }
    // A random offset of 1..n from the first never lands on it again.
    let second = scan_from((first + fastrand::usize(1..n)) % n, n, |i| {
        i != first && ok(i)
    });
    match second {
        Some(second) if cost(second) < cost(first) => Some(second),
        _ => Some(first),
    }
}

/// Smooth weighted round robin (as nginx): over one cycle each backend appears
/// `weight` times, spread out rather than in runs.
fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|w| i64::from(w / divisor)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, c)| (*c, -(i as i64)))
        else {
            break;
        };
        current[best] -= total;
        schedule.push(best);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn ring(backends: &[Arc<Backend>], weights: &[u32]) -> Vec<(u64, usize)> {
    let mut ring = Vec::new();
    for (i, (backend, weight)) in backends.iter().zip(weights).enumerate() {
        let points = (u64::from(*weight) * RING_POINTS_PER_WEIGHT).min(RING_POINTS_MAX);
        let addr = backend.addr.to_string();
        for point in 0..points {
            ring.push((key_hash(format!("{addr}#{point}").as_bytes()), i));
        }
    }
    ring.sort_unstable();
    ring
}

/// A stable 64-bit hash of a request key (FNV-1a, then a finalizer so that similar
/// keys spread over the ring). Stable across processes and versions, so a restart
/// keeps every cart on its backend.
pub fn key_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Registry;
    use std::net::SocketAddr;

    fn backends(n: u16) -> (Registry, Vec<Arc<Backend>>) {
        let registry = Registry::default();
        let list = (0..n)
            .map(|i| registry.backend("p", SocketAddr::from(([127, 0, 0, 1], 9000 + i))))
            .collect();
        (registry, list)
    }

    fn counts(
        balancer: &Balancer,
        list: &[Arc<Backend>],
        weights: &[u32],
        rounds: usize,
    ) -> Vec<usize> {
        let mut counts = vec![0; list.len()];
        for _ in 0..rounds {
            let i = balancer
                .pick(list, weights, None, &|_| true)
                .expect("a pick");
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_follows_weights_exactly_and_spreads_them() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[2, 4]), vec![1, 0, 1]);
        let (_r, list) = backends(3);
        let weights = [1, 2, 3];
        let balancer = Balancer::new(&Balance::RoundRobin, &list, &weights);
        assert_eq!(counts(&balancer, &list, &weights, 600), vec![100, 200, 300]);
    }

    #[test]
    fn round_robin_spreads_a_missing_backends_share_evenly() {
        let (_r, list) = backends(3);
        let weights = [1, 1, 1];
        let balancer = Balancer::new(&Balance::RoundRobin, &list, &weights);
        let mut counts = [0; 3];
        for _ in 0..300 {
            let pick = balancer.pick(&list, &weights, None, &|i| list[i].addr.port() != 9000);
            counts[pick.expect("a pick")] += 1;
        }
        assert_eq!(counts, [0, 150, 150]);
    }

    #[test]
    fn random_follows_weights_roughly() {
        let (_r, list) = backends(2);
        let weights = [1, 3];
        let balancer = Balancer::new(&Balance::Random, &list, &weights);
        let counts = counts(&balancer, &list, &weights, 4000);
        assert!((800..1200).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn every_algorithm_respects_accept_and_returns_none_when_nothing_is_accepted() {
        let (_r, list) = backends(3);
        let weights = [1, 1, 1];
        let key = crate::config::HashKey::ClientIp;
        for balance in [
            Balance::RoundRobin,
            Balance::Random,
            Balance::LeastRequest,
            Balance::PeakEwma,
            Balance::ConsistentHash(key),
        ] {
            let balancer = Balancer::new(&balance, &list, &weights);
            for round in 0..50 {
                let hash = Some(key_hash(&[round]));
                let pick = balancer.pick(&list, &weights, hash, &|i| list[i].addr.port() == 9001);
                assert_eq!(pick, Some(1), "{balance:?}");
            }
            assert_eq!(
                balancer.pick(&list, &weights, None, &|_| false),
                None,
                "{balance:?}"
            );
        }
    }

    #[test]
    fn least_request_avoids_the_busy_backend() {
        let (_r, list) = backends(2);
        let weights = [1, 1];
        let _busy: Vec<_> = (0..5).map(|_| list[0].start_request()).collect();
        let balancer = Balancer::new(&Balance::LeastRequest, &list, &weights);
        // With two backends the two choices are always both, so the idle one wins.
        assert_eq!(counts(&balancer, &list, &weights, 100), vec![0, 100]);
    }

    #[test]
    fn peak_ewma_avoids_the_slow_backend() {
        let (_r, list) = backends(2);
        let weights = [1, 1];
        list[0].observe(std::time::Duration::from_millis(300), false);
        list[1].observe(std::time::Duration::from_millis(5), false);
        let balancer = Balancer::new(&Balance::PeakEwma, &list, &weights);
        assert_eq!(counts(&balancer, &list, &weights, 100), vec![0, 100]);
    }

    #[test]
    fn consistent_hash_moves_about_one_nth_of_keys_when_a_backend_leaves() {
        let key = Balance::ConsistentHash(crate::config::HashKey::ClientIp);
        let (_r, list) = backends(4);
        let before = Balancer::new(&key, &list, &[1, 1, 1, 1]);
        let after = Balancer::new(&key, &list[..3], &[1, 1, 1]);
        let keys = 10_000;
        let mut moved = 0;
        let mut per_backend = [0; 4];
        for k in 0..keys {
            let hash = Some(key_hash(format!("cart-{k}").as_bytes()));
            let old = before.pick(&list, &[1; 4], hash, &|_| true).expect("pick");
            let new = after
                .pick(&list[..3], &[1; 3], hash, &|_| true)
                .expect("pick");
            per_backend[old] += 1;
            if old != new {
                moved += 1;
                assert_eq!(old, 3, "only keys of the removed backend move");
            }
        }
        assert_eq!(moved, per_backend[3]);
        assert!((1500..3500).contains(&moved), "moved {moved} of {keys}");
        for count in per_backend {
            assert!((1500..3500).contains(&count), "{per_backend:?}");
        }
    }
}
