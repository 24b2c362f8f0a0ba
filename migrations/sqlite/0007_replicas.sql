-- Replicas sharing this store: each one's heartbeat (on SQLite only ever one: see
-- README, "Replicas"). Kept on both backends so the two schemas stay alike.
CREATE TABLE replicas (
    id           TEXT PRIMARY KEY,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    listen       TEXT NOT NULL DEFAULT ''
);

-- Values every process on this store shares, created once (the unsubscribe signing secret).
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE INDEX job_runs_skipped ON job_runs (scheduled_at) WHERE outcome = 'skipped';
