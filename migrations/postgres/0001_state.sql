-- warden's own state on PostgreSQL (in its own schema, `warden` by default).

CREATE TABLE health_history (
    id          BIGSERIAL   PRIMARY KEY,
    job         TEXT        NOT NULL,
    checked_at  TIMESTAMPTZ NOT NULL,
    status      TEXT        NOT NULL CHECK (status IN ('operational', 'degraded', 'error')),
    duration_ms BIGINT      NOT NULL,
    checks      TEXT        NOT NULL -- JSON array of check results
);
CREATE INDEX health_history_checked_at ON health_history (checked_at);

-- One row per occurrence: inserting it is the claim (unique on job + scheduled time),
-- so replicas sharing this store run each occurrence once.
CREATE TABLE job_runs (
    id            BIGSERIAL   PRIMARY KEY,
    job           TEXT        NOT NULL,
    scheduled_at  TIMESTAMPTZ NOT NULL,
    trigger       TEXT        NOT NULL,
    replica       TEXT        NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL,
    finished_at   TIMESTAMPTZ,
    outcome       TEXT        NOT NULL CHECK (outcome IN ('running', 'ok', 'failed', 'timeout', 'skipped')),
    error         TEXT,
    rows_affected BIGINT,
    detail        TEXT,
    UNIQUE (job, scheduled_at)
);
CREATE INDEX job_runs_job ON job_runs (job, id);

CREATE TABLE policy_state (
    plugin     TEXT        NOT NULL,
    key        TEXT        NOT NULL,
    value      TEXT        NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (plugin, key)
);

CREATE TABLE outbox (
    id              BIGSERIAL   PRIMARY KEY,
    dedup_key       TEXT        NOT NULL UNIQUE,
    kind            TEXT        NOT NULL,
    payload         TEXT        NOT NULL,
    job             TEXT,
    policy          TEXT,
    run_id          BIGINT REFERENCES job_runs (id),
    state           TEXT        NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'failed', 'silenced')),
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    delivered_at    TIMESTAMPTZ,
    last_error      TEXT
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
