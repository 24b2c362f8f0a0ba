-- Many monitors: a policy's state belongs to (policy, job), so one policy listening to many
-- jobs keeps each job's history apart. Rows from before carry job '' until warden assigns
-- them, at start, to the jobs their policy listens to.
CREATE TABLE policy_state_by_job (
    plugin     TEXT NOT NULL,
    job        TEXT NOT NULL DEFAULT '',
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (plugin, job, key)
);
INSERT INTO policy_state_by_job (plugin, job, key, value, updated_at)
    SELECT plugin, '', key, value, updated_at FROM policy_state;
DROP TABLE policy_state;
ALTER TABLE policy_state_by_job RENAME TO policy_state;

-- A run reads every policy's state for its job in one query.
CREATE INDEX policy_state_job ON policy_state (job);

-- How long a due run waited for a slot before it started (queueing, not the target's time).
ALTER TABLE job_runs ADD COLUMN lateness_ms INTEGER;

-- A notice overtaken by a newer status change is `superseded`, not `delivered`. SQLite
-- cannot change a CHECK constraint in place: the table is rebuilt with every column.
CREATE TABLE outbox_v6 (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    dedup_key       TEXT    NOT NULL UNIQUE,
    kind            TEXT    NOT NULL, -- email | subscribers | notice | ticket
    payload         TEXT    NOT NULL, -- JSON
    job             TEXT,
    policy          TEXT,
    run_id          INTEGER REFERENCES job_runs (id),
    state           TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'failed', 'silenced', 'superseded')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT    NOT NULL,
    created_at      TEXT    NOT NULL,
    delivered_at    TEXT,
    last_error      TEXT,
    claimed_by      TEXT,
    recipient       TEXT
);
INSERT INTO outbox_v6 (id, dedup_key, kind, payload, job, policy, run_id, state, attempts, next_attempt_at,
                       created_at, delivered_at, last_error, claimed_by, recipient)
    SELECT id, dedup_key, kind, payload, job, policy, run_id, state, attempts, next_attempt_at,
           created_at, delivered_at, last_error, claimed_by, recipient FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v6 RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
