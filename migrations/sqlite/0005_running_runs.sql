-- Finds the runs still `running` without reading the whole history: the reaper looks for
-- those a stopped process left behind.
CREATE INDEX job_runs_running ON job_runs (started_at) WHERE outcome = 'running';
