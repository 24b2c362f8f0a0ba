-- Delivery: which process holds a row while sending it, and the local spool's replay marks.

-- Set while a dispatcher holds the row (its lease is `next_attempt_at`).
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
-- The user a subscriber notice goes to, so an opt-out can stop notices already queued.
ALTER TABLE outbox ADD COLUMN recipient TEXT;

-- One row per spooled run moved into the store, so replaying the spool never applies twice.
CREATE TABLE spool_applied (
    id         TEXT        PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL
);
