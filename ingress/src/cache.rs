//! Per-process caches of catalog rows (API keys, triggers) that are only trusted while this
//! process follows the RabbitMQ `control` exchange. Any control message empties every cache, a
//! lost subscription switches them off until it is back, and a lookup that raced an invalidation
//! does not fill them. So a change announced by one replica reaches all of them within the
//! broker's delivery time; entries also expire after a TTL.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most entries kept; past it the cache starts over.
const CAPACITY: usize = 10_000;

/// One cache: values by key, with their fetch time.
pub struct ControlledCache<K, V> {
    entries: Mutex<HashMap<K, (Arc<V>, Instant)>>,
    epoch: AtomicU64,
    live: AtomicBool,
    ttl: Duration,
}

impl<K: Hash + Eq, V> ControlledCache<K, V> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            live: AtomicBool::new(false),
            ttl,
        }
    }

    /// The cached value, if the cache is live and the entry fresh.
    pub fn get(&self, key: &K) -> Option<Arc<V>> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let entries = self.entries.lock().ok()?;
        let (value, at) = entries.get(key)?;
        (at.elapsed() < self.ttl).then(|| value.clone())
    }

    /// Read before loading from the database; pass it back to [`ControlledCache::fill`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Caches a value loaded since `epoch`, unless an invalidation came in between.
    pub fn fill(&self, key: K, value: Arc<V>, epoch: u64) {
        if self.live.load(Ordering::Acquire)
            && let Ok(mut entries) = self.entries.lock()
            && self.epoch.load(Ordering::Acquire) == epoch
        {
            if entries.len() >= CAPACITY {
                entries.clear();
            }
            entries.insert(key, (value, Instant::now()));
        }
    }

    /// Forgets everything.
    pub fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }

    /// Whether the cache is in use (the control subscription is up).
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Turns the cache on (subscribed) or off (subscription lost), emptying it either way.
    pub fn set_live(&self, live: bool) {
        self.invalidate();
        self.live.store(live, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_served_only_while_live_and_until_invalidated() {
        let cache: ControlledCache<u8, &str> = ControlledCache::new(Duration::from_secs(60));
        let epoch = cache.epoch();
        cache.fill(1, Arc::new("a"), epoch);
        assert!(cache.get(&1).is_none(), "not live: nothing is cached");
        cache.set_live(true);
        let epoch = cache.epoch();
        cache.fill(1, Arc::new("a"), epoch);
        assert_eq!(cache.get(&1).as_deref(), Some(&"a"));
        let raced = cache.epoch();
        cache.invalidate();
        assert!(cache.get(&1).is_none());
        cache.fill(2, Arc::new("b"), raced);
        assert!(
            cache.get(&2).is_none(),
            "a load that raced an invalidation is dropped"
        );
        cache.set_live(false);
        assert!(cache.get(&1).is_none());
    }
}
