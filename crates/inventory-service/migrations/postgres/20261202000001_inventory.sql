-- The catalogue and its stock. available = on_hand - reserved is never
-- negative: every change that could break it is a conditional update.
CREATE TABLE products (
    sku              TEXT PRIMARY KEY NOT NULL,
    name             TEXT NOT NULL,
    unit_price_cents BIGINT NOT NULL CHECK (unit_price_cents > 0),
    currency_code    TEXT NOT NULL,
    active           BOOLEAN NOT NULL,
    on_hand          BIGINT NOT NULL DEFAULT 0 CHECK (on_hand >= 0),
    reserved         BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0 AND reserved <= on_hand),
    updated_at       TIMESTAMPTZ NOT NULL
);

-- Applied AdjustStock calls, by request id (their idempotency key).
CREATE TABLE stock_adjustments (
    request_id TEXT PRIMARY KEY NOT NULL,
    sku        TEXT NOT NULL REFERENCES products (sku),
    delta      BIGINT NOT NULL,
    reason     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

-- Stock held for orders, one reservation per order (the idempotency key).
CREATE TABLE reservations (
    order_id      UUID PRIMARY KEY NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'released', 'expired')),
    currency_code TEXT NOT NULL,
    items_hash    TEXT NOT NULL,
    expires_at    TIMESTAMPTZ NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);

CREATE INDEX reservations_pending_idx ON reservations (expires_at) WHERE status = 'pending';

CREATE TABLE reservation_lines (
    order_id         UUID NOT NULL REFERENCES reservations (order_id) ON DELETE CASCADE,
    sku              TEXT NOT NULL REFERENCES products (sku),
    quantity         BIGINT NOT NULL CHECK (quantity > 0),
    unit_price_cents BIGINT NOT NULL CHECK (unit_price_cents > 0),
    PRIMARY KEY (order_id, sku)
);
