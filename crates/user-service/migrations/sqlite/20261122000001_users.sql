-- Accounts. Email and username are stored lower-cased by the service, so
-- plain unique constraints make them unique case-insensitively. Ids are
-- hyphenated lower-case UUID text (v7, so text order is creation order);
-- times are RFC 3339 text as sqlx writes them.
CREATE TABLE users (
    id            TEXT PRIMARY KEY NOT NULL,
    email         TEXT NOT NULL CONSTRAINT users_email_key UNIQUE,
    username      TEXT NOT NULL CONSTRAINT users_username_key UNIQUE,
    password_hash TEXT NOT NULL,
    first_name    TEXT NOT NULL,
    last_name     TEXT NOT NULL,
    bio           TEXT NOT NULL DEFAULT '',
    status        TEXT NOT NULL CHECK (status IN ('active', 'inactive', 'suspended', 'deleted')),
    roles         TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    deleted_at    TEXT
);

CREATE INDEX users_status_id_idx ON users (status, id);

-- Refresh tokens, stored as SHA-256 hashes. One family per login; rotation
-- marks a token used and inserts the next one in the same family.
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    family_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users (id),
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at    TEXT,
    revoked_at TEXT
);

CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id);
