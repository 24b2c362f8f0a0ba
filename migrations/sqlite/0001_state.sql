-- warden's own state on SQLite. Timestamps are SQLite's `YYYY-MM-DD HH:MM:SS.SSS` text in UTC.

CREATE TABLE health_history (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job         TEXT    NOT NULL,
    checked_at  TEXT    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('operational', 'degraded', 'error')),
    duration_ms INTEGER NOT NULL,
    checks      TEXT    NOT NULL -- JSON array of check results
);
CREATE INDEX health_history_checked_at ON health_history (checked_at);

-- One row per occurrence: inserting it is the claim (unique on job + scheduled time).
CREATE TABLE job_runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    job           TEXT    NOT NULL,
    scheduled_at  TEXT    NOT NULL,
    trigger       TEXT    NOT NULL, -- schedule | catch-up | manual
    replica       TEXT    NOT NULL,
    started_at    TEXT    NOT NULL,
    finished_at   TEXT,
    outcome       TEXT    NOT NULL CHECK (outcome IN ('running', 'ok', 'failed', 'timeout', 'skipped')),
    error         TEXT,
    rows_affected INTEGER,
    detail        TEXT,
    UNIQUE (job, scheduled_at)
);
CREATE INDEX job_runs_job ON job_runs (job, id);

-- Per-plugin key/value state, written in the same transaction as the plugin's actions.
CREATE TABLE policy_state (
    plugin     TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (plugin, key)
);

-- Notifications decided by policies; the dispatcher delivers them at least once.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    dedup_key       TEXT    NOT NULL UNIQUE,
    kind            TEXT    NOT NULL, -- email | subscriber | ticket
    payload         TEXT    NOT NULL, -- JSON
    job             TEXT,
    policy          TEXT,
    run_id          INTEGER REFERENCES job_runs (id),
    state           TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'failed', 'silenced')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT    NOT NULL,
    created_at      TEXT    NOT NULL,
    delivered_at    TEXT,
    last_error      TEXT
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
