-- Authentication events join the administrative actions in the audit log:
-- each row also names the client's address and user agent, and a reason
-- code (why a login failed, which limit refused it). Unlike the ids 0005
-- kept, addresses and user agents are personal data, and stay after the
-- account is deleted (see ARCHITECTURE.md, "Known gaps").
ALTER TABLE audit_log ADD COLUMN ip TEXT;
ALTER TABLE audit_log ADD COLUMN user_agent TEXT;
ALTER TABLE audit_log ADD COLUMN reason TEXT;
