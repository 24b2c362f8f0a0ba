-- Silences: while one is active, matching outbox rows are recorded as silenced, never sent.
CREATE TABLE silences (
    id         BIGSERIAL PRIMARY KEY,
    job        TEXT,        -- NULL matches any
    policy     TEXT,
    kind       TEXT,        -- email | subscribers | notice | ticket
    starts_at  TIMESTAMPTZ NOT NULL,
    ends_at    TIMESTAMPTZ NOT NULL,
    comment    TEXT        NOT NULL,
    created_by TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX silences_ends_at ON silences (ends_at);
