-- The catalogue and its stock. available = on_hand - reserved is never
-- negative: every change that could break it is a conditional update.
CREATE TABLE products (
    sku              TEXT PRIMARY KEY NOT NULL,
    name             TEXT NOT NULL,
    unit_price_cents INTEGER NOT NULL CHECK (unit_price_cents > 0),
    currency_code    TEXT NOT NULL,
    active           BOOLEAN NOT NULL,
    on_hand          INTEGER NOT NULL DEFAULT 0 CHECK (on_hand >= 0),
    reserved         INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0 AND reserved <= on_hand),
    updated_at       TEXT NOT NULL
);

-- Applied AdjustStock calls, by request id (their idempotency key).
CREATE TABLE stock_adjustments (
    request_id TEXT PRIMARY KEY NOT NULL,
    sku        TEXT NOT NULL REFERENCES products (sku),
    delta      INTEGER NOT NULL,
    reason     TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- Stock held for orders, one reservation per order (the idempotency key).
CREATE TABLE reservations (
    order_id      TEXT PRIMARY KEY NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'released', 'expired')),
    currency_code TEXT NOT NULL,
    items_hash    TEXT NOT NULL,
    expires_at    TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);

CREATE INDEX reservations_pending_idx ON reservations (expires_at) WHERE status = 'pending';

CREATE TABLE reservation_lines (
    order_id         TEXT NOT NULL REFERENCES reservations (order_id) ON DELETE CASCADE,
    sku              TEXT NOT NULL REFERENCES products (sku),
    quantity         INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_cents INTEGER NOT NULL CHECK (unit_price_cents > 0),
    PRIMARY KEY (order_id, sku)
);
