-- The deletion ledger: which deleted users each downstream service has
-- confirmed erasing. Ids and times only, no personal data.
CREATE TABLE deletions (
    user_id    TEXT PRIMARY KEY,
    deleted_at INTEGER NOT NULL
);

CREATE TABLE deletion_confirmations (
    user_id      TEXT NOT NULL,
    service      TEXT NOT NULL,
    confirmed_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, service)
);
