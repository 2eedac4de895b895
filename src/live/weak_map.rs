//! The one get-or-create of live state: entries keyed by name, held weakly, so
//! an entry lives exactly as long as some snapshot (or request) holds it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

/// Live entries by key, held weakly.
#[derive(Debug)]
pub struct WeakMap<K, V> {
    entries: Mutex<HashMap<K, Weak<V>>>,
}

impl<K, V> Default for WeakMap<K, V> {
    fn default() -> Self {
        WeakMap {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash, V> WeakMap<K, V> {
    /// The entry for `key`: `make` gets the live one, if any, and returns the
    /// entry to use from now on (the same one, an adjusted copy, or a new
    /// one). Entries nobody holds any more are dropped on the way.
    pub fn get_or_create(&self, key: K, make: impl FnOnce(Option<Arc<V>>) -> Arc<V>) -> Arc<V> {
        let mut entries = self.entries.lock();
        entries.retain(|_, weak| weak.strong_count() > 0);
        let entry = make(entries.get(&key).and_then(Weak::upgrade));
        entries.insert(key, Arc::downgrade(&entry));
        entry
    }

    /// The live entry for `key`, if some holder keeps it.
    pub fn get<Q>(&self, key: &Q) -> Option<Arc<V>>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.entries.lock().get(key).and_then(Weak::upgrade)
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
}
