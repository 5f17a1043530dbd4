-- Consecutive failed logins per address (keyed by a hash of it, known or
-- not), counted before the password is checked; and a token bucket per
-- client address and endpoint. Shared by every process on the database.
CREATE TABLE login_attempts (
    key           TEXT PRIMARY KEY,
    failures      INTEGER NOT NULL,
    blocked_until TIMESTAMPTZ NOT NULL,
    last_at       TIMESTAMPTZ NOT NULL
);

CREATE TABLE rate_buckets (
    key        TEXT PRIMARY KEY,
    tokens     DOUBLE PRECISION NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
