-- Many monitors: a policy's state belongs to (policy, job), so one policy listening to many
-- jobs keeps each job's history apart. Rows from before carry job '' until warden assigns
-- them, at start, to the jobs their policy listens to.
ALTER TABLE policy_state ADD COLUMN job TEXT NOT NULL DEFAULT '';
ALTER TABLE policy_state DROP CONSTRAINT policy_state_pkey;
ALTER TABLE policy_state ADD PRIMARY KEY (plugin, job, key);

-- A run reads every policy's state for its job in one query.
CREATE INDEX policy_state_job ON policy_state (job);

-- How long a due run waited for a slot before it started (queueing, not the target's time).
ALTER TABLE job_runs ADD COLUMN lateness_ms BIGINT;

-- A notice overtaken by a newer status change is `superseded`, not `delivered`.
ALTER TABLE outbox DROP CONSTRAINT outbox_state_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_state_check
    CHECK (state IN ('pending', 'delivered', 'failed', 'silenced', 'superseded'));
