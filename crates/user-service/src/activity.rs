//! The in-process feed of account activity (created, updated, deleted,
//! logged in) behind the UserActivity stream. Handlers publish after the
//! change is stored; each UserActivity stream subscribes and forwards the
//! events of the users it follows.
//!
//! The feed is a bounded broadcast channel: a subscriber that falls more
//! than `capacity` events behind is told so (and its stream ends with
//! RESOURCE_EXHAUSTED) instead of making the service buffer without bound.

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use crate::domain::User;

/// What happened to an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityKind {
    /// Signed up or bulk-created.
    Created,
    /// Changed.
    Updated,
    /// Soft-deleted.
    Deleted,
    /// Logged in.
    LoggedIn,
}

/// One event of the feed.
#[derive(Debug, Clone)]
pub struct ActivityEvent {
    /// What happened.
    pub kind: ActivityKind,
    /// The account after it happened.
    pub user: User,
    /// When.
    pub at: DateTime<Utc>,
}

/// The feed.
#[derive(Debug, Clone)]
pub struct ActivityFeed {
    tx: broadcast::Sender<ActivityEvent>,
}

impl ActivityFeed {
    /// A feed that keeps up to `capacity` events for slow subscribers.
    pub fn new(capacity: usize) -> ActivityFeed {
        ActivityFeed {
            tx: broadcast::channel(capacity.max(1)).0,
        }
    }

    /// Announces `kind` for `user`; nobody listening is fine.
    pub fn publish(&self, kind: ActivityKind, user: &User) {
        let _ = self.tx.send(ActivityEvent {
            kind,
            user: user.clone(),
            at: Utc::now(),
        });
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ActivityEvent> {
        self.tx.subscribe()
    }
}
