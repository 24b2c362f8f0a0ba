-- Replicas sharing this store: each one's heartbeat. The live ones take turns at each
-- job's occurrences; one whose heartbeat stopped is taken over (its runs recorded
-- abandoned and run again, its outbox leases released).
CREATE TABLE replicas (
    id           TEXT        PRIMARY KEY,
    started_at   TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL,
    listen       TEXT        NOT NULL DEFAULT ''
);

-- Values every replica must share, created once (the unsubscribe signing secret).
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Skipped occurrences are up for grabs by an idle replica: found without a scan.
CREATE INDEX job_runs_skipped ON job_runs (scheduled_at) WHERE outcome = 'skipped';
