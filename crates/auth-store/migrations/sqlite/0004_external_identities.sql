-- Logins at OAuth/OpenID providers, keyed by (issuer, subject): never by
-- email, which a provider may let its users change.
CREATE TABLE external_identities (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider   TEXT NOT NULL,
    issuer     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    email      TEXT,
    created_at INTEGER NOT NULL,
    UNIQUE (issuer, subject)
);
CREATE INDEX external_identities_user ON external_identities (user_id);
