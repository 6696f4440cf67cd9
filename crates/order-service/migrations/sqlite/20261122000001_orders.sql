-- Orders. (user_id, request_id) is the idempotency key: a retried
-- CreateOrder finds the first order instead of inserting a second one.
-- Ids are hyphenated lower-case UUID text (v7: text order is time order).
CREATE TABLE orders (
    id            TEXT PRIMARY KEY NOT NULL,
    user_id       TEXT NOT NULL,
    request_id    TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    currency_code TEXT NOT NULL,
    total_cents   INTEGER NOT NULL CHECK (total_cents > 0),
    status        TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'shipped', 'delivered', 'cancelled')),
    cancel_reason TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    CONSTRAINT orders_user_request_key UNIQUE (user_id, request_id)
);

CREATE INDEX orders_user_id_idx ON orders (user_id, id DESC);

CREATE TABLE order_items (
    order_id         TEXT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line_no          INTEGER NOT NULL,
    product_id       TEXT NOT NULL,
    quantity         INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_cents INTEGER NOT NULL CHECK (unit_price_cents > 0),
    PRIMARY KEY (order_id, line_no)
);
