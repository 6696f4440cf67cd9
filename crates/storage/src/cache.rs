//! A read-through cache of hot rows, with explicit consistency.
//!
//! - **Bounded**: at most `capacity` entries (quick_cache's CLOCK-Pro
//!   eviction keeps the hot ones); capacity 0 turns the cache off.
//! - **In-process writes**: the repository calls [`ReadThrough::invalidate`]
//!   once a write has committed and before it answers, so a read after a
//!   write in the same process never sees the old row.
//! - **Other replicas**: [`ReadThrough::follow`] drops an entry when its
//!   change notice arrives ([`crate::Db::listen`]: PostgreSQL `NOTIFY`,
//!   sent at commit) and clears everything on [`Notice::Resync`] (the
//!   listening connection dropped) or when notices were missed.
//! - **Bounded staleness**: an entry is served for at most `max_age` after
//!   the read that filled it, whatever happens to notices: that is the
//!   documented upper bound on how stale a cached row can be.
//! - **No stale fill**: a read that raced a write (an invalidation happened
//!   while it was loading) is returned but not cached.

use std::{
    hash::Hash,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::broadcast::error::RecvError;

use crate::{Notice, Notices};

/// A bounded read-through cache of `V` by `K`. Share it in an [`Arc`].
pub struct ReadThrough<K, V> {
    entries: Option<quick_cache::sync::Cache<K, (V, Instant)>>,
    max_age: Duration,
    /// Bumped by every invalidation: a load that saw it change does not
    /// fill.
    generation: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl<K, V> std::fmt::Debug for ReadThrough<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadThrough")
            .field("enabled", &self.entries.is_some())
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl<K, V> ReadThrough<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Up to `capacity` entries (0: no caching), each served for at most
    /// `max_age`.
    pub fn new(capacity: usize, max_age: Duration) -> Arc<Self> {
        Arc::new(ReadThrough {
            entries: (capacity > 0 && !max_age.is_zero())
                .then(|| quick_cache::sync::Cache::new(capacity)),
            max_age,
            generation: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// The cached value of `key` if it is fresh, else what `load` reads
    /// (cached when found and no write intervened).
    pub async fn get_or_load<E, F, Fut>(&self, key: &K, load: F) -> Result<Option<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        let Some(entries) = &self.entries else {
            return load().await;
        };
        if let Some((value, read_at)) = entries.get(key)
            && read_at.elapsed() < self.max_age
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(value));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let generation = self.generation.load(Ordering::Acquire);
        let read_at = Instant::now();
        let loaded = load().await?;
        if let Some(value) = &loaded
            && self.generation.load(Ordering::Acquire) == generation
        {
            entries.insert(key.clone(), (value.clone(), read_at));
        }
        Ok(loaded)
    }

    /// Forgets `key` (after a committed write to it).
    pub fn invalidate(&self, key: &K) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(entries) = &self.entries {
            entries.remove(key);
        }
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(entries) = &self.entries {
            entries.clear();
        }
    }

    /// Hits and misses so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Follows `notices` on a task of its own (until the cache is
    /// dropped): a notice whose payload `parse` reads as a key invalidates
    /// that key; a resync, missed notices or a payload it cannot read clear
    /// everything.
    pub fn follow(self: &Arc<Self>, notices: Notices, parse: fn(&str) -> Option<K>) {
        if self.entries.is_none() {
            return;
        }
        let cache: Weak<Self> = Arc::downgrade(self);
        let mut receiver = notices.subscribe();
        tokio::spawn(async move {
            // Keeps relaying alive as long as the cache is.
            let _notices = notices;
            loop {
                let notice = receiver.recv().await;
                let Some(cache) = cache.upgrade() else { return };
                match notice {
                    Ok(Notice::Changed(payload)) => match parse(&payload) {
                        Some(key) => cache.invalidate(&key),
                        None => cache.clear(),
                    },
                    Ok(Notice::Resync) | Err(RecvError::Lagged(_)) => cache.clear(),
                    Err(RecvError::Closed) => {
                        // No more notices: nothing may be served from now on.
                        cache.clear();
                        return;
                    }
                }
            }
        });
    }
}
