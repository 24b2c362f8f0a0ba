-- Jobs an operator paused through the admin API; kept across restarts.
CREATE TABLE job_pauses (
    job       TEXT PRIMARY KEY,
    paused_at TIMESTAMPTZ NOT NULL
);
