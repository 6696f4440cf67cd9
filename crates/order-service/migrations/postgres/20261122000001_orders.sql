-- Orders. (user_id, request_id) is the idempotency key: a retried
-- CreateOrder finds the first order instead of inserting a second one.
CREATE TABLE orders (
    id            UUID PRIMARY KEY,
    user_id       UUID NOT NULL,
    request_id    TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    currency_code TEXT NOT NULL,
    total_cents   BIGINT NOT NULL CHECK (total_cents > 0),
    status        TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'shipped', 'delivered', 'cancelled')),
    cancel_reason TEXT,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    CONSTRAINT orders_user_request_key UNIQUE (user_id, request_id)
);

-- A user's orders, newest first (ids are UUID v7, so id order is time order).
CREATE INDEX orders_user_id_idx ON orders (user_id, id DESC);

CREATE TABLE order_items (
    order_id         UUID NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line_no          INTEGER NOT NULL,
    product_id       TEXT NOT NULL,
    quantity         INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_cents BIGINT NOT NULL CHECK (unit_price_cents > 0),
    PRIMARY KEY (order_id, line_no)
);
