-- The stock steps an order still owes inventory-service (confirm its
-- reservation once the order is stored, release it once the order is
-- cancelled), written in the same transaction as the order change that
-- owes them, and deleted once inventory-service has answered. A crash
-- between the two therefore never loses a step: the outbox worker retries
-- each row with backoff until it is done.
CREATE TABLE stock_outbox (
    order_id        TEXT NOT NULL,
    action          TEXT NOT NULL CHECK (action IN ('confirm', 'release')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    PRIMARY KEY (order_id, action)
);

CREATE INDEX stock_outbox_due_idx ON stock_outbox (next_attempt_at);
