//! The one get-or-create of live state: entries keyed by name, held weakly, so
//! an entry lives exactly as long as some snapshot (or request) holds it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

/// Live entries by key, held weakly.
#[derive(Debug)]
pub struct WeakMap<K, V> {
    entries: Mutex<Entries<K, V>>,
}

#[derive(Debug)]
struct Entries<K, V> {
    by_key: HashMap<K, Weak<V>>,
    /// How many entries the last sweep kept: the next sweep waits until the
    /// map has doubled, so sweeping costs O(1) a lookup, amortized (a sweep
    /// a lookup made a reload of n backends O(n²)).
    kept: usize,
}

/// Below this many entries, dead ones are not worth a sweep.
const SWEEP_FROM: usize = 64;

impl<K, V> Default for WeakMap<K, V> {
    fn default() -> Self {
        WeakMap {
            entries: Mutex::new(Entries {
                by_key: HashMap::new(),
                kept: 0,
            }),
        }
    }
}

impl<K: Eq + Hash, V> WeakMap<K, V> {
    /// The entry for `key`: `make` gets the live one, if any, and returns the
    /// entry to use from now on (the same one, an adjusted copy, or a new
    /// one). Entries nobody holds any more are dropped on the way, each time
    /// the map has doubled since the last sweep.
    pub fn get_or_create(&self, key: K, make: impl FnOnce(Option<Arc<V>>) -> Arc<V>) -> Arc<V> {
        let mut entries = self.entries.lock();
        if entries.by_key.len() >= (2 * entries.kept).max(SWEEP_FROM) {
            entries.by_key.retain(|_, weak| weak.strong_count() > 0);
            entries.kept = entries.by_key.len();
        }
        let entry = make(entries.by_key.get(&key).and_then(Weak::upgrade));
        entries.by_key.insert(key, Arc::downgrade(&entry));
        entry
    }

    /// The live entry for `key`, if some holder keeps it.
    pub fn get<Q>(&self, key: &Q) -> Option<Arc<V>>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.entries.lock().by_key.get(key).and_then(Weak::upgrade)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_while_held_and_make_decides_reuse() {
        let map: WeakMap<&str, u32> = WeakMap::default();
        let first = map.get_or_create("a", |live| live.unwrap_or_else(|| Arc::new(1)));
        let again = map.get_or_create("a", |live| live.unwrap_or_else(|| Arc::new(2)));
        assert!(Arc::ptr_eq(&first, &again));
        let replaced = map.get_or_create("a", |live| Arc::new(live.map_or(0, |v| *v) + 10));
        assert_eq!(*replaced, 11);
        drop((first, again, replaced));
        assert!(map.get("a").is_none(), "nobody holds it");
        let fresh = map.get_or_create("a", |live| live.unwrap_or_else(|| Arc::new(3)));
        assert_eq!(*fresh, 3);
    }

    #[test]
    fn dead_entries_are_swept_once_the_map_doubles() {
        let map: WeakMap<u32, u32> = WeakMap::default();
        let held: Vec<Arc<u32>> = (0..100)
            .map(|i| map.get_or_create(i, |_| Arc::new(i)))
            .collect();
        drop(held);
        for i in 100..1000 {
            drop(map.get_or_create(i, |_| Arc::new(i)));
        }
        let entries = map.entries.lock();
        assert!(
            entries.by_key.len() <= (2 * entries.kept).max(SWEEP_FROM),
            "{} entries after sweeps that kept {}",
            entries.by_key.len(),
            entries.kept
        );
        assert!(entries.by_key.len() < 1000, "dead entries were swept");
    }
}
