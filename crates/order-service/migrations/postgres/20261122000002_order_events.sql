-- Every status change gets a version and an event row, written in the same
-- transaction as the change. WatchOrder reads the events after the version
-- it has sent, so a change committed while a watcher subscribes is never
-- missed; NOTIFY (sent by the store on the same transaction) only wakes
-- watchers up, in this process and in every other replica.
ALTER TABLE orders ADD COLUMN version BIGINT NOT NULL DEFAULT 1;

CREATE TABLE order_events (
    seq        BIGSERIAL PRIMARY KEY,
    order_id   UUID NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    version    BIGINT NOT NULL,
    status     TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT order_events_order_version_key UNIQUE (order_id, version)
);
