-- A demo of the monitored application's tables, so every shipped job has real rows to act
-- on. Created only in the embedded SQLite target (or when `targets.demo_schema = true`).
-- Timestamps are SQLite's `datetime()` text in UTC.

CREATE TABLE session (
    id          TEXT PRIMARY KEY,
    data        BLOB NOT NULL,
    expiry_date TEXT NOT NULL
);

CREATE TABLE tier (
    name      TEXT    PRIMARY KEY,
    cap_bytes INTEGER NOT NULL
);

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    email         TEXT    NOT NULL UNIQUE,
    status_alerts INTEGER NOT NULL DEFAULT 0, -- opted in to status notifications
    tier          TEXT    NOT NULL DEFAULT 'free' REFERENCES tier (name)
);

CREATE TABLE creator_storage (
    creator_id INTEGER PRIMARY KEY REFERENCES users (id),
    tier       TEXT    NOT NULL REFERENCES tier (name),
    bytes_used INTEGER NOT NULL
);

CREATE TABLE sync_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    INTEGER NOT NULL REFERENCES users (id),
    seq        INTEGER NOT NULL,
    created_at TEXT    NOT NULL,
    payload    TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX sync_log_created_at ON sync_log (created_at);

CREATE TABLE device_cursor (
    device_id       TEXT    PRIMARY KEY,
    user_id         INTEGER NOT NULL REFERENCES users (id),
    last_pulled_seq INTEGER NOT NULL
);

CREATE TABLE oauth_code (
    code       TEXT    PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id),
    expires_at TEXT    NOT NULL,
    used_at    TEXT
);

INSERT INTO tier (name, cap_bytes) VALUES ('free', 1073741824), ('pro', 107374182400);
INSERT INTO users (id, email, status_alerts, tier) VALUES
    (1, 'ada@example.org', 1, 'pro'),
    (2, 'grace@example.org', 0, 'free'),
    (3, 'linus@example.org', 1, 'free');
INSERT INTO creator_storage (creator_id, tier, bytes_used) VALUES
    (1, 'pro', 53687091200), (2, 'free', 1020054732), (3, 'free', 104857600);
INSERT INTO session (id, data, expiry_date) VALUES ('demo-session', x'00', datetime('now', '+14 days'));
-- Entry ages sit half a day off whole days, so no row is on a retention boundary.
-- User 1 has two devices; both pulled up to seq 40. User 2 has one device at seq 5.
INSERT INTO device_cursor (device_id, user_id, last_pulled_seq) VALUES
    ('ada-phone', 1, 40), ('ada-laptop', 1, 45), ('grace-phone', 2, 5);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60)
INSERT INTO sync_log (user_id, seq, created_at)
SELECT 1, i, datetime('now', printf('-%d days', 100 - i), '-12 hours') FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10)
INSERT INTO sync_log (user_id, seq, created_at)
SELECT 2, i, datetime('now', printf('-%d days', 20 - i)) FROM n;
INSERT INTO oauth_code (code, user_id, expires_at, used_at) VALUES
    ('expired', 1, datetime('now', '-1 hour'), NULL),
    ('used', 2, datetime('now', '+1 hour'), datetime('now', '-5 minutes')),
    ('live', 3, datetime('now', '+1 hour'), NULL);
