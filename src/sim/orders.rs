//! The order book shared by every listener of a simulated fleet (the "one
//! database" behind all backends), with idempotency keys, plus the
//! deterministic product catalogue.

use std::collections::HashMap;

use serde_json::{json, Value};

/// Whether [`OrderBook::create`] made a new order or replayed an earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A new order was stored.
    Created,
    /// The idempotency key was seen before; the first order is returned.
    Replayed,
}

/// Orders and idempotency keys of the whole process.
#[derive(Debug, Default)]
pub(crate) struct OrderBook {
    /// Number of the last order created (ids are sequential).
    last_id: u64,
    /// Stored orders by order id.
    orders: HashMap<String, Value>,
    /// Order id of the first order made with each idempotency key.
    keys: HashMap<String, String>,
    /// Idempotent replays answered since the last reset.
    replays: u64,
}

impl OrderBook {
    /// Creates an order for `item` on behalf of `backend`, unless
    /// `idempotency_key` was already used, in which case the first order made
    /// with it is returned (and counted as a replay).
    pub(crate) fn create(
        &mut self,
        item: Value,
        backend: &str,
        idempotency_key: Option<&str>,
    ) -> (Outcome, Value) {
        if let Some(key) = idempotency_key {
            if let Some(order) = self.keys.get(key).and_then(|id| self.orders.get(id)) {
                self.replays += 1;
                return (Outcome::Replayed, order.clone());
            }
        }
        self.last_id += 1;
        let id = format!("ord-{:06}", self.last_id);
        let order = json!({
            "order_id": id,
            "status": "created",
            "backend": backend,
            "item": item,
        });
        if let Some(key) = idempotency_key {
            self.keys.insert(key.to_owned(), id.clone());
        }
        self.orders.insert(id, order.clone());
        (Outcome::Created, order)
    }

    /// The stored order with this id.
    pub(crate) fn get(&self, id: &str) -> Option<&Value> {
        self.orders.get(id)
    }

    /// Orders created since the last reset.
    pub(crate) fn created(&self) -> u64 {
        self.last_id
    }

    /// Idempotent replays answered since the last reset.
    pub(crate) fn replays(&self) -> u64 {
        self.replays
    }

    /// Forgets every order and key; ids start again at `ord-000001`.
    pub(crate) fn clear(&mut self) {
        *self = OrderBook::default();
    }
}

/// Whether `id` can name a product or order (non-empty, at most 64 characters
/// from `[A-Za-z0-9_-]`).
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The product with this id; every valid id names a product, and the same id
/// always gives the same price and stock.
pub(crate) fn product(id: &str) -> Value {
    let n = id.parse::<u64>().unwrap_or_else(|_| fnv1a(id.as_bytes()));
    json!({
        "id": id,
        "name": format!("Product {id}"),
        "price_cents": 999 + 1000 * (n % 10),
        "stock": (n % 100).wrapping_mul(37).wrapping_add(5) % 100,
    })
}

/// 64-bit FNV-1a hash, to derive a number from a non-numeric id.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sequential() {
        let mut book = OrderBook::default();
        let (outcome, first) = book.create(json!({"sku": "a"}), "127.0.0.1:1", None);
        assert_eq!(outcome, Outcome::Created);
        assert_eq!(first["order_id"], "ord-000001");
        assert_eq!(first["status"], "created");
        assert_eq!(first["backend"], "127.0.0.1:1");
        assert_eq!(first["item"], json!({"sku": "a"}));
        let (_, second) = book.create(json!({}), "127.0.0.1:2", None);
        assert_eq!(second["order_id"], "ord-000002");
        assert_eq!(book.get("ord-000001"), Some(&first));
        assert_eq!(book.get("ord-000003"), None);
        assert_eq!(book.created(), 2);
    }

    #[test]
    fn same_key_gives_same_order() {
        let mut book = OrderBook::default();
        let (o1, first) = book.create(json!({"n": 1}), "a", Some("key-1"));
        let (o2, again) = book.create(json!({"n": 2}), "b", Some("key-1"));
        let (o3, other) = book.create(json!({"n": 3}), "a", Some("key-2"));
        assert_eq!(
            (o1, o2, o3),
            (Outcome::Created, Outcome::Replayed, Outcome::Created)
        );
        assert_eq!(first, again);
        assert_eq!(again["backend"], "a");
        assert_eq!(other["order_id"], "ord-000002");
        assert_eq!(book.created(), 2);
        assert_eq!(book.replays(), 1);

        book.clear();
        assert_eq!((book.created(), book.replays()), (0, 0));
        let (o4, fresh) = book.create(json!({}), "a", Some("key-1"));
        assert_eq!(o4, Outcome::Created);
        assert_eq!(fresh["order_id"], "ord-000001");
    }

    #[test]
    fn products_are_deterministic() {
        assert_eq!(
            product("1"),
            json!({"id": "1", "name": "Product 1", "price_cents": 1999, "stock": 42})
        );
        assert_eq!(product("sku-9"), product("sku-9"));
        assert!(valid_id("sku_9-A"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id("a b"));
    }
}
