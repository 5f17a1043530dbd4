-- The deletion ledger: which deleted users each downstream service has
-- confirmed erasing. Ids and times only, no personal data.
CREATE TABLE deletions (
    user_id    UUID PRIMARY KEY,
    deleted_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE deletion_confirmations (
    user_id      UUID NOT NULL,
    service      TEXT NOT NULL,
    confirmed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, service)
);
