//! Balancing algorithms. Each picks an index into a pool's backend list among the
//! backends a caller accepts (healthy, not yet tried, ...). Tables are built once per
//! snapshot in O(backends × log); a pick is O(1) or O(log backends) while most
//! backends are accepted. The counters they compare (in flight, latency) live in
//! [`Backend`] and so survive reloads; weights are read as served now, so an
//! admin weight change needs no new snapshot.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use super::Backend;
use crate::config::Balance;

/// Ring points per unit of weight in a consistent-hash ring.
const RING_POINTS_PER_WEIGHT: u64 = 160;
/// Upper bound on ring points for one backend, whatever its weight.
const RING_POINTS_MAX: u64 = 16_000;
/// Upper bound on a ring's points (4 MiB): a pool whose weights add up to
/// more than `RING_POINTS / RING_POINTS_PER_WEIGHT` gets fewer points per
/// unit of weight (at least one a backend), so that 2 000 backends of
/// weight 1 000 build in milliseconds, not seconds. Pools under it keep
/// exactly the points they always had, so no cart moves on an upgrade.
const RING_POINTS: u64 = 1 << 18;
/// Virtual time one turn of a backend of weight 1 takes in the round-robin
/// schedule; a backend of weight w takes `TURN / w`. Divisible by every
/// weight up to 16 and large enough that rounding the others is invisible.
const TURN: u128 = 720_720 << 32;

/// The per-snapshot tables of one pool's algorithm.
#[derive(Debug)]
pub(super) enum Balancer {
    /// Smooth weighted round robin as earliest deadline first: each backend
    /// has the virtual time of its next turn, `TURN / weight` after its last.
    RoundRobin(Mutex<BinaryHeap<Reverse<(u128, usize)>>>),
    /// Weighted random over cumulative weights.
    Random(ArcSwap<Vec<u64>>),
    /// Power of two choices on requests in flight per unit of weight.
    LeastRequest,
    /// Power of two choices on peak-EWMA cost per unit of weight.
    PeakEwma,
    /// A ring of (point, index), sorted by point.
    ConsistentHash(ArcSwap<Vec<(u64, usize)>>),
}

impl Balancer {
    pub(super) fn new(balance: &Balance, backends: &[Arc<Backend>], weights: &[u32]) -> Balancer {
        match balance {
            Balance::RoundRobin => Balancer::RoundRobin(Mutex::new(
                // Each backend's first turn half a turn in: heavy backends
                // do not all go first.
                weights
                    .iter()
                    .enumerate()
                    .map(|(i, w)| Reverse((turn(*w) / 2, i)))
                    .collect(),
            )),
            Balance::Random => Balancer::Random(ArcSwap::from_pointee(cumulative(weights))),
            Balance::LeastRequest => Balancer::LeastRequest,
            Balance::PeakEwma => Balancer::PeakEwma,
            Balance::ConsistentHash(_) => {
                Balancer::ConsistentHash(ArcSwap::from_pointee(ring(backends, weights)))
            }
        }
    }

    /// Takes the pool's weights as they are now. Round robin and the
    /// two-choices algorithms read weights on each pick and need nothing;
    /// random redoes its sums and consistent hashing its ring, for this pool
    /// only.
    pub(super) fn reweigh(&self, backends: &[Arc<Backend>], weights: &[u32]) {
        match self {
            Balancer::Random(sums) => sums.store(Arc::new(cumulative(weights))),
            Balancer::ConsistentHash(points) => points.store(Arc::new(ring(backends, weights))),
            Balancer::RoundRobin(_) | Balancer::LeastRequest | Balancer::PeakEwma => {}
        }
    }

    /// Picks the index of a backend `ok` accepts. `hash` is the request key's hash for consistent
    /// hashing; without one, that algorithm falls back to a random start.
    pub(super) fn pick(
        &self,
        backends: &[Arc<Backend>],
        weights: &[AtomicU32],
        hash: Option<u64>,
        ok: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = backends.len();
        let weight = |i: usize| weights[i].load(Ordering::Relaxed).max(1);
        match self {
            // A backend that cannot take traffic loses its turn, so its share
            // spreads over the others in proportion to theirs instead of
            // falling to its neighbour.
            Balancer::RoundRobin(schedule) => {
                let mut schedule = schedule.lock();
                for _ in 0..n {
                    let mut next = schedule.peek_mut()?;
                    let (at, i) = next.0;
                    next.0 = (at + turn(weight(i)), i);
                    drop(next);
                    if ok(i) {
                        return Some(i);
                    }
                }
                drop(schedule);
                // n turns went to backends that cannot take traffic (heavy
                // ones can have several in a row): look at each once.
                scan_from(fastrand::usize(0..n.max(1)), n, ok)
            }
            Balancer::Random(sums) => {
                let cumulative = sums.load();
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
                backends[i].least_request_cost() / f64::from(weight(i))
            }),
            Balancer::PeakEwma => {
                two_choices(n, ok, |i| backends[i].ewma_cost() / f64::from(weight(i)))
            }
            Balancer::ConsistentHash(points) => match hash {
                Some(hash) => {
                    let ring = points.load();
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

/// The virtual time one turn of a backend of this weight takes.
fn turn(weight: u32) -> u128 {
    TURN / u128::from(weight.max(1))
}

fn cumulative(weights: &[u32]) -> Vec<u64> {
    weights
        .iter()
        .scan(0u64, |sum, w| {
            *sum += u64::from(*w);
            Some(*sum)
        })
        .collect()
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

/// Each backend's points on the ring: the hash of its address and the
/// point's number, without building a string per point.
fn ring(backends: &[Arc<Backend>], weights: &[u32]) -> Vec<(u64, usize)> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    let per_weight = if total * RING_POINTS_PER_WEIGHT <= RING_POINTS {
        RING_POINTS_PER_WEIGHT as f64
    } else {
        RING_POINTS as f64 / total as f64
    };
    let mut ring = Vec::with_capacity(RING_POINTS.min(total * RING_POINTS_PER_WEIGHT) as usize);
    for (i, (backend, weight)) in backends.iter().zip(weights).enumerate() {
        let points = ((f64::from(*weight) * per_weight) as u64).clamp(1, RING_POINTS_MAX);
        let mut key = backend.addr.to_string().into_bytes();
        key.push(b'#');
        let stem = key.len();
        for point in 0..points {
            key.truncate(stem);
            // Writing to a Vec cannot fail.
            let _ = write!(key, "{point}");
            ring.push((key_hash(&key), i));
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

    fn served(weights: &[u32]) -> Vec<AtomicU32> {
        weights.iter().map(|w| AtomicU32::new(*w)).collect()
    }

    fn counts(
        balancer: &Balancer,
        list: &[Arc<Backend>],
        weights: &[u32],
        rounds: usize,
    ) -> Vec<usize> {
        let weights = served(weights);
        let mut counts = vec![0; list.len()];
        for _ in 0..rounds {
            let i = balancer
                .pick(list, &weights, None, &|_| true)
                .expect("a pick");
            counts[i] += 1;
        }
        counts
    }

    fn sequence(weights: &[u32], picks: usize) -> Vec<usize> {
        let (_r, list) = backends(weights.len() as u16);
        let balancer = Balancer::new(&Balance::RoundRobin, &list, weights);
        let weights = served(weights);
        (0..picks)
            .map(|_| {
                balancer
                    .pick(&list, &weights, None, &|_| true)
                    .expect("a pick")
            })
            .collect()
    }

    #[test]
    fn round_robin_follows_weights_exactly_and_spreads_them() {
        assert_eq!(sequence(&[5, 1, 1], 7), vec![0, 0, 0, 1, 2, 0, 0]);
        assert_eq!(sequence(&[2, 4], 6), vec![1, 0, 1, 1, 0, 1]);
        let (_r, list) = backends(3);
        let weights = [1, 2, 3];
        let balancer = Balancer::new(&Balance::RoundRobin, &list, &weights);
        assert_eq!(counts(&balancer, &list, &weights, 600), vec![100, 200, 300]);
        // Weights that do not divide the turn evenly still come out exact
        // over a cycle.
        let odd = [7, 13, 1000];
        let (_r, list) = backends(3);
        let balancer = Balancer::new(&Balance::RoundRobin, &list, &odd);
        assert_eq!(counts(&balancer, &list, &odd, 1020 * 5), vec![35, 65, 5000]);
    }

    #[test]
    fn weights_apply_from_the_next_pick_without_a_new_table() {
        let (_r, list) = backends(2);
        for balance in [Balance::RoundRobin, Balance::Random, Balance::LeastRequest] {
            let balancer = Balancer::new(&balance, &list, &[1, 1]);
            let weights = served(&[1, 1]);
            weights[1].store(9, Ordering::Relaxed);
            balancer.reweigh(&list, &[1, 9]);
            // Let the old turns pass, then count.
            for _ in 0..20 {
                balancer.pick(&list, &weights, None, &|_| true);
            }
            let mut on_heavy = 0;
            // Least request compares in-flight counts: keep each in flight.
            let mut held = Vec::new();
            for _ in 0..1000 {
                let busy = balancer
                    .pick(&list, &weights, None, &|_| true)
                    .expect("a pick");
                held.push(list[busy].start_request());
                on_heavy += usize::from(busy == 1);
            }
            assert!(on_heavy > 800, "{balance:?}: {on_heavy}");
        }
    }

    #[test]
    fn round_robin_spreads_a_missing_backends_share_evenly() {
        let (_r, list) = backends(3);
        let weights = [1, 1, 1];
        let balancer = Balancer::new(&Balance::RoundRobin, &list, &weights);
        let mut counts = [0; 3];
        for _ in 0..300 {
            let pick = balancer.pick(&list, &served(&weights), None, &|i| {
                list[i].addr.port() != 9000
            });
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
                let pick = balancer.pick(&list, &served(&weights), hash, &|i| {
                    list[i].addr.port() == 9001
                });
                assert_eq!(pick, Some(1), "{balance:?}");
            }
            assert_eq!(
                balancer.pick(&list, &served(&weights), None, &|_| false),
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
    fn a_large_pools_ring_stays_bounded_and_keeps_every_backend() {
        let (_r, list) = backends(2000);
        let heavy: Vec<u32> = (0..2000).map(|i| 1 + i % 1000).collect();
        let points = ring(&list, &heavy);
        assert!(
            points.len() as u64 <= RING_POINTS + 2000,
            "{}",
            points.len()
        );
        let mut per_backend = vec![0u32; list.len()];
        for (_, i) in &points {
            per_backend[*i] += 1;
        }
        assert!(per_backend.iter().all(|&p| p >= 1));
        assert!(
            per_backend[999] > 100 * per_backend[0],
            "weight 1000 against 1"
        );
        // A small pool keeps 160 points per unit of weight.
        assert_eq!(ring(&list[..3], &[1, 2, 3]).len(), 960);
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
            let old = before
                .pick(&list, &served(&[1; 4]), hash, &|_| true)
                .expect("pick");
            let new = after
                .pick(&list[..3], &served(&[1; 3]), hash, &|_| true)
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
