-- Heartbeat (push) monitors: the newest ping of each heartbeat job, from any replica.
CREATE TABLE heartbeats (
    job          TEXT PRIMARY KEY,
    last_ping_at TEXT NOT NULL,
    last_kind    TEXT NOT NULL CHECK (last_kind IN ('success', 'fail', 'start')),
    last_body    TEXT NOT NULL DEFAULT '',
    -- The newest success or failure (a `start` alone is not a ping that counts).
    last_done_at TEXT,
    done_kind    TEXT,
    started_at   TEXT,
    pings        INTEGER NOT NULL DEFAULT 0
);
