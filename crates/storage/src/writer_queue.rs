//! The queue in front of a group-commit writer's one connection, shared by
//! SQLite's writer (`group_commit`) and PostgreSQL's (`pg_group_commit`).
//!
//! Callers take the connection in arrival order. How many wait decides
//! when a batch commits: a writer that lets go of the connection with
//! nobody queued commits the open batch, so a batch never waits for a
//! caller that is not coming. A caller that gives up waiting (its
//! acquire timeout, or its future dropped) leaves the queue; if it was the
//! last one, it has the connection let go of once more for it.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::StoreError;

/// A writer's connection state behind its queue. Cheap to clone.
#[derive(Debug)]
pub(crate) struct Queue<S> {
    state: Arc<Mutex<S>>,
    /// Callers waiting for the connection.
    queued: Arc<AtomicUsize>,
    acquire_timeout: Duration,
}

impl<S> Clone for Queue<S> {
    fn clone(&self) -> Self {
        Queue {
            state: Arc::clone(&self.state),
            queued: Arc::clone(&self.queued),
            acquire_timeout: self.acquire_timeout,
        }
    }
}

/// A writer behind a [`Queue`].
pub(crate) trait Queued: Clone + Send + Sync + 'static {
    /// The connection and its open batch.
    type State: Send + 'static;

    fn queue(&self) -> &Queue<Self::State>;

    /// Lets go of the connection, committing the open batch if it is due
    /// (the writer's own rule, see `group_commit::Batch::due`).
    fn commit_if_due(&self, guard: OwnedMutexGuard<Self::State>)
    -> impl Future<Output = ()> + Send;
}

impl<S: Send + 'static> Queue<S> {
    pub(crate) fn new(state: S, acquire_timeout: Duration) -> Queue<S> {
        Queue {
            state: Arc::new(Mutex::new(state)),
            queued: Arc::default(),
            acquire_timeout,
        }
    }

    /// How many callers wait for the connection.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Takes the connection without counting as a caller in the queue
    /// (for a writer's own scheduled work, which adds no transaction).
    pub(crate) async fn lock(&self) -> OwnedMutexGuard<S> {
        Arc::clone(&self.state).lock_owned().await
    }

    /// Takes the connection for a caller of `writer`, in turn: at most the
    /// acquire timeout, after which the database counts as unavailable.
    pub(crate) async fn acquire<W>(writer: &W) -> Result<OwnedMutexGuard<S>, StoreError>
    where
        W: Queued<State = S>,
    {
        let queue = writer.queue();
        queue.queued.fetch_add(1, Ordering::AcqRel);
        let mut ticket = Ticket(Some(writer));
        let locked =
            tokio::time::timeout(queue.acquire_timeout, Arc::clone(&queue.state).lock_owned())
                .await;
        let guard = locked.map_err(|_| StoreError::Unavailable(sqlx::Error::PoolTimedOut))?;
        ticket.0 = None;
        queue.queued.fetch_sub(1, Ordering::AcqRel);
        Ok(guard)
    }
}

/// Counts a caller in the queue until it gets the connection; one that
/// gives up waiting lets go of the connection (committing the open batch)
/// if it was the last one queued.
struct Ticket<'a, W: Queued>(Option<&'a W>);

impl<W: Queued> Drop for Ticket<'_, W> {
    fn drop(&mut self) {
        let Some(writer) = self.0 else { return };
        let queue = writer.queue();
        if queue.queued.fetch_sub(1, Ordering::AcqRel) == 1 {
            let writer = writer.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let guard = Arc::clone(&writer.queue().state).lock_owned().await;
                    writer.commit_if_due(guard).await;
                });
            }
        }
    }
}
