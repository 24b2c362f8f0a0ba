-- The demo application schema on PostgreSQL. warden creates it only when asked
-- (`targets.demo_schema = true`); it never touches an existing application's tables.

CREATE SCHEMA IF NOT EXISTS tower_sessions;
CREATE TABLE IF NOT EXISTS tower_sessions.session (
    id          TEXT        PRIMARY KEY,
    data        BYTEA       NOT NULL,
    expiry_date TIMESTAMPTZ NOT NULL
);

CREATE TABLE tier (
    name      TEXT   PRIMARY KEY,
    cap_bytes BIGINT NOT NULL
);

CREATE TABLE users (
    id            BIGINT  PRIMARY KEY,
    email         TEXT    NOT NULL UNIQUE,
    status_alerts BOOLEAN NOT NULL DEFAULT false,
    tier          TEXT    NOT NULL DEFAULT 'free' REFERENCES tier (name)
);

CREATE TABLE creator_storage (
    creator_id BIGINT PRIMARY KEY REFERENCES users (id),
    tier       TEXT   NOT NULL REFERENCES tier (name),
    bytes_used BIGINT NOT NULL
);

CREATE TABLE sync_log (
    id         BIGSERIAL   PRIMARY KEY,
    user_id    BIGINT      NOT NULL REFERENCES users (id),
    seq        BIGINT      NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    payload    TEXT        NOT NULL DEFAULT ''
);
CREATE INDEX sync_log_created_at ON sync_log (created_at);

CREATE TABLE device_cursor (
    device_id       TEXT   PRIMARY KEY,
    user_id         BIGINT NOT NULL REFERENCES users (id),
    last_pulled_seq BIGINT NOT NULL
);

CREATE TABLE oauth_code (
    code       TEXT        PRIMARY KEY,
    user_id    BIGINT      NOT NULL REFERENCES users (id),
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ
);

INSERT INTO tier (name, cap_bytes) VALUES ('free', 1073741824), ('pro', 107374182400);
INSERT INTO users (id, email, status_alerts, tier) VALUES
    (1, 'ada@example.org', true, 'pro'),
    (2, 'grace@example.org', false, 'free'),
    (3, 'linus@example.org', true, 'free');
INSERT INTO creator_storage (creator_id, tier, bytes_used) VALUES
    (1, 'pro', 53687091200), (2, 'free', 1020054732), (3, 'free', 104857600);
INSERT INTO tower_sessions.session (id, data, expiry_date) VALUES ('demo-session', '\x00', now() + interval '14 days');
INSERT INTO device_cursor (device_id, user_id, last_pulled_seq) VALUES
    ('ada-phone', 1, 40), ('ada-laptop', 1, 45), ('grace-phone', 2, 5);
INSERT INTO sync_log (user_id, seq, created_at)
SELECT 1, i, now() - make_interval(days => 100 - i, hours => 12) FROM generate_series(1, 60) AS i;
INSERT INTO sync_log (user_id, seq, created_at)
SELECT 2, i, now() - make_interval(days => 20 - i) FROM generate_series(1, 10) AS i;
INSERT INTO oauth_code (code, user_id, expires_at, used_at) VALUES
    ('expired', 1, now() - interval '1 hour', NULL),
    ('used', 2, now() + interval '1 hour', now() - interval '5 minutes'),
    ('live', 3, now() + interval '1 hour', NULL);
