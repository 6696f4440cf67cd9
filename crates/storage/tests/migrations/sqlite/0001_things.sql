CREATE TABLE things (
    id         TEXT PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL,
    nickname   TEXT,
    quantity   INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    CONSTRAINT things_name_key UNIQUE (name)
);
