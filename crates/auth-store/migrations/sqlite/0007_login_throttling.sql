-- Consecutive failed logins per address (keyed by a hash of it, known or
-- not), counted before the password is checked; and a token bucket per
-- client address and endpoint. Shared by every process on the database.
CREATE TABLE login_attempts (
    key           TEXT PRIMARY KEY,
    failures      INTEGER NOT NULL,
    blocked_until INTEGER NOT NULL,
    last_at       INTEGER NOT NULL
);

CREATE TABLE rate_buckets (
    key        TEXT PRIMARY KEY,
    tokens     REAL NOT NULL,
    updated_at INTEGER NOT NULL
);
