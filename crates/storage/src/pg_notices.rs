//! A transaction's notices, sent to PostgreSQL in one statement just
//! before its commit.
//!
//! PostgreSQL delivers a `NOTIFY` only when its transaction commits, so
//! nothing is lost by holding the notices until then; sent one by one they
//! cost a round trip each on a connection that, in group commit, every
//! writer of the process waits for. PostgreSQL drops a repeated notice
//! (same channel, same payload) within a transaction; so does
//! [`send`] within its batch.

use std::collections::HashSet;

use sqlx::PgConnection;
use tokio_postgres::types::Type;

use crate::pg_read;

/// A notice to send at the commit: the channel and the payload.
pub(crate) type Outgoing = (&'static str, String);

const SEND: &str = "SELECT pg_notify(n.channel, n.payload) \
     FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS n(channel, payload, i) \
     ORDER BY n.i";

/// The channels and payloads of `notices`, in their order, each once.
fn distinct<'a>(notices: impl IntoIterator<Item = &'a Outgoing>) -> (Vec<&'a str>, Vec<&'a str>) {
    let mut seen = HashSet::new();
    let (mut channels, mut payloads) = (Vec::new(), Vec::new());
    for (channel, payload) in notices {
        if seen.insert((*channel, payload.as_str())) {
            channels.push(*channel);
            payloads.push(payload.as_str());
        }
    }
    (channels, payloads)
}

/// Sends `notices` (nothing when there are none), in their order, as one
/// statement on `conn`, inside the transaction they belong to.
pub(crate) async fn send<'a>(
    conn: &mut PgConnection,
    notices: impl IntoIterator<Item = &'a Outgoing>,
) -> Result<(), sqlx::Error> {
    let (channels, payloads) = distinct(notices);
    if channels.is_empty() {
        return Ok(());
    }
    sqlx::query(SEND)
        .bind(channels)
        .bind(payloads)
        .execute(conn)
        .await
        .map(drop)
}

/// [`send`] on a tokio-postgres connection.
pub(crate) async fn send_pipelined<'a>(
    conn: &pg_read::Connection,
    notices: impl IntoIterator<Item = &'a Outgoing>,
) -> Result<(), tokio_postgres::Error> {
    let (channels, payloads) = distinct(notices);
    if channels.is_empty() {
        return Ok(());
    }
    let statement = conn
        .prepared(SEND, vec![Type::TEXT_ARRAY, Type::TEXT_ARRAY])
        .await?;
    conn.client()
        .execute(&statement, &[&channels, &payloads])
        .await
        .map(drop)
}
