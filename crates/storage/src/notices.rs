//! Change notices: a transaction says "this changed" ([`crate::Tx::notify`])
//! and whoever listens on the channel hears it once the transaction
//! commits. On PostgreSQL that is `LISTEN`/`NOTIFY`, so every replica
//! sharing the database hears it; on SQLite (one process per file) an
//! in-process channel. A notice only says where to look: listeners re-read
//! the database, which is the truth, so a lost or lagging notice costs a
//! re-read, never a change.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::postgres::PgListener;
use tokio::sync::broadcast;

use crate::{Db, StoreError, db::Pool};

/// What a listener hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The payload a transaction sent (an id, usually).
    Changed(Arc<str>),
    /// Notices may have been missed (the listening connection was
    /// re-established): re-read everything.
    Resync,
}

/// The in-process channels of a SQLite database, by name.
#[derive(Debug, Default)]
pub(crate) struct LocalChannels(Mutex<HashMap<&'static str, broadcast::Sender<Notice>>>);

impl LocalChannels {
    fn sender(&self, channel: &'static str, capacity: usize) -> broadcast::Sender<Notice> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(channel)
            .or_insert_with(|| broadcast::channel(capacity).0)
            .clone()
    }

    /// Sends `payload` to the listeners of `channel`, if there are any.
    pub(crate) fn send(&self, channel: &'static str, payload: &str) {
        let senders = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = senders.get(channel) {
            // Nobody listening is fine.
            let _ = sender.send(Notice::Changed(payload.into()));
        }
    }
}

/// The notices of one channel; [`Notices::subscribe`] for a receiver.
/// Relaying (on PostgreSQL) stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Notices {
    sender: broadcast::Sender<Notice>,
    _relay: Option<Arc<Relay>>,
}

impl Notices {
    /// The notices `sender` is given by `task`, which stops when the last
    /// clone is dropped.
    pub(crate) fn relayed(
        sender: broadcast::Sender<Notice>,
        task: tokio::task::JoinHandle<()>,
    ) -> Notices {
        Notices {
            sender,
            _relay: Some(Arc::new(Relay(task))),
        }
    }

    /// A receiver of the notices sent from now on; one that falls more
    /// than the channel's capacity behind gets `Lagged` (then re-reads).
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.sender.subscribe()
    }
}

/// The task relaying `NOTIFY` into a channel; aborted when dropped.
#[derive(Debug)]
struct Relay(tokio::task::JoinHandle<()>);

impl Drop for Relay {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Db {
    /// Listens on `channel`, keeping up to `capacity` notices for a slow
    /// receiver.
    pub async fn listen(
        &self,
        channel: &'static str,
        capacity: usize,
    ) -> Result<Notices, StoreError> {
        match &self.pool {
            Pool::Sqlite(_) => Ok(Notices {
                sender: self.local.sender(channel, capacity),
                _relay: None,
            }),
            Pool::Postgres(pg) => {
                let mut listener = PgListener::connect_with(&pg.pool).await?;
                listener.listen(channel).await?;
                let sender = broadcast::channel(capacity).0;
                let relay = tokio::spawn(relay(listener, sender.clone(), channel));
                Ok(Notices {
                    sender,
                    _relay: Some(Arc::new(Relay(relay))),
                })
            }
        }
    }
}

/// Relays `NOTIFY channel, payload` into `notices`. When the connection
/// drops, notices may have been missed: it sends [`Notice::Resync`] after
/// reconnecting so that listeners re-read.
async fn relay(mut listener: PgListener, notices: broadcast::Sender<Notice>, channel: &str) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                let _ = notices.send(Notice::Changed(notification.payload().into()));
            }
            Ok(None) => {
                tracing::warn!(
                    channel,
                    "change notices: connection lost; reconnecting and resyncing"
                );
                let _ = notices.send(Notice::Resync);
            }
            Err(e) => {
                tracing::warn!(channel, error = %e, "change notices: listen failed; retrying");
                let _ = notices.send(Notice::Resync);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
