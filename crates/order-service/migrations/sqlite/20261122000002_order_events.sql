-- Every status change gets a version and an event row, written in the same
-- transaction as the change. WatchOrder reads the events after the version
-- it has sent, so a change committed while a watcher subscribes is never
-- missed; an in-process channel only wakes watchers up.
ALTER TABLE orders ADD COLUMN version INTEGER NOT NULL DEFAULT 1;

CREATE TABLE order_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id   TEXT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    status     TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    CONSTRAINT order_events_order_version_key UNIQUE (order_id, version)
);
