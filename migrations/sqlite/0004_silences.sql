-- Silences: while one is active, matching outbox rows are recorded as silenced, never sent.
CREATE TABLE silences (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job        TEXT,        -- NULL matches any
    policy     TEXT,
    kind       TEXT,        -- email | subscribers | notice | ticket
    starts_at  TEXT        NOT NULL,
    ends_at    TEXT        NOT NULL,
    comment    TEXT        NOT NULL,
    created_by TEXT        NOT NULL,
    created_at TEXT        NOT NULL
);
CREATE INDEX silences_ends_at ON silences (ends_at);
