-- Password reset and email verification tokens (SHA-256 only), the queue of
-- mail not yet accepted by the mail server, and rate-limit windows.
CREATE TABLE email_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ
);
CREATE INDEX email_tokens_user ON email_tokens (user_id, purpose);

-- A message leaves once sent; one carrying a token goes with the token (a
-- newer one voids it), one for a user goes with the account.
CREATE TABLE mail_queue (
    id              UUID PRIMARY KEY,
    user_id         UUID REFERENCES users (id) ON DELETE CASCADE,
    token_hash      TEXT REFERENCES email_tokens (token_hash) ON DELETE CASCADE,
    recipient       TEXT NOT NULL,
    subject         TEXT NOT NULL,
    text_body       TEXT NOT NULL,
    html_body       TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    discard_after   TIMESTAMPTZ NOT NULL
);
CREATE INDEX mail_queue_due ON mail_queue (next_attempt_at);
CREATE INDEX mail_queue_token ON mail_queue (token_hash);
CREATE INDEX mail_queue_user ON mail_queue (user_id);

CREATE TABLE throttle (
    key          TEXT PRIMARY KEY,
    window_start TIMESTAMPTZ NOT NULL,
    hits         INTEGER NOT NULL
);
