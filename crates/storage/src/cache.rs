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
//!   [`ReadThrough::follow_and_relay`] also hands each notice on once the
//!   cache has acted on it, for listeners that re-read through the cache
//!   when they hear one (a stock watch): they never read the entry the
//!   notice was about.
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

use tokio::sync::broadcast::{self, error::RecvError};

use crate::{Notice, Notices};

/// How big a [`ReadThrough`] may grow and how long it serves an entry: the
/// settings a service offers as `*_CACHE_CAPACITY` and `*_CACHE_MAX_AGE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheBounds {
    /// Most entries held (0: no cache).
    pub capacity: usize,
    /// Longest an entry is served after the read that filled it.
    pub max_age: Duration,
}

impl CacheBounds {
    /// No caching: every read goes to the database.
    pub const OFF: CacheBounds = CacheBounds {
        capacity: 0,
        max_age: Duration::ZERO,
    };

    /// Whether anything is cached.
    pub fn is_on(&self) -> bool {
        self.capacity > 0 && !self.max_age.is_zero()
    }
}

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
    /// `max_age` (see [`CacheBounds`]).
    pub fn new(capacity: usize, max_age: Duration) -> Arc<Self> {
        let bounds = CacheBounds { capacity, max_age };
        Arc::new(ReadThrough {
            entries: bounds
                .is_on()
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
                if cache.heard(notice, parse).is_none() {
                    return;
                }
            }
        });
    }

    /// As [`ReadThrough::follow`], and returns the same notices, each handed
    /// on once the cache has acted on it (up to `capacity` kept for a slow
    /// receiver; missed ones become a [`Notice::Resync`]). With the cache
    /// off, `notices` themselves.
    pub fn follow_and_relay(
        self: &Arc<Self>,
        notices: Notices,
        parse: fn(&str) -> Option<K>,
        capacity: usize,
    ) -> Notices {
        if self.entries.is_none() {
            return notices;
        }
        let sender = broadcast::channel(capacity).0;
        let relayed = sender.clone();
        let cache = Arc::clone(self);
        let mut receiver = notices.subscribe();
        let task = tokio::spawn(async move {
            let _notices = notices;
            loop {
                let notice = receiver.recv().await;
                // Not while `_notices` is held: the channel stays open.
                let Some(notice) = cache.heard(notice, parse) else {
                    return;
                };
                // Nobody listening is fine.
                let _ = sender.send(notice);
            }
        });
        Notices::relayed(relayed, task)
    }

    /// Acts on what a follower heard: the notice to hand on, or `None`
    /// when the channel closed (no more will come).
    fn heard(
        &self,
        notice: Result<Notice, RecvError>,
        parse: fn(&str) -> Option<K>,
    ) -> Option<Notice> {
        match notice {
            Ok(Notice::Changed(payload)) => {
                match parse(&payload) {
                    Some(key) => self.invalidate(&key),
                    None => self.clear(),
                }
                Some(Notice::Changed(payload))
            }
            Ok(Notice::Resync) | Err(RecvError::Lagged(_)) => {
                self.clear();
                Some(Notice::Resync)
            }
            Err(RecvError::Closed) => {
                // Nothing will invalidate what is cached now.
                self.clear();
                None
            }
        }
    }
}
