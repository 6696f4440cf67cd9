CREATE TABLE things (
    id         UUID PRIMARY KEY,
    name       TEXT NOT NULL,
    nickname   TEXT,
    quantity   INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT things_name_key UNIQUE (name)
);
