-- Roles and permissions, deny by default: users hold roles, roles hold
-- permissions (`resource:action`). Built in: `user` (every account) and
-- `admin` (`users:admin`). A disabled account cannot log in; tokens issued
-- before `tokens_not_before` (a role change) are stale.
CREATE TABLE roles (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE role_permissions (
    role       TEXT NOT NULL REFERENCES roles (name) ON DELETE CASCADE,
    permission TEXT NOT NULL,
    PRIMARY KEY (role, permission)
);

CREATE TABLE user_roles (
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       TEXT NOT NULL REFERENCES roles (name) ON DELETE CASCADE,
    granted_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, role)
);
CREATE INDEX user_roles_role ON user_roles (role);

ALTER TABLE users ADD COLUMN disabled_at TIMESTAMPTZ;
ALTER TABLE users ADD COLUMN tokens_not_before TIMESTAMPTZ;

-- Who did what to whom: ids only, no personal data, kept after deletion.
CREATE TABLE audit_log (
    id         UUID PRIMARY KEY,
    at         TIMESTAMPTZ NOT NULL,
    actor      UUID,
    action     TEXT NOT NULL,
    target     TEXT,
    request_id TEXT,
    detail     JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at, id);

INSERT INTO roles (name, description, created_at) VALUES
    ('user', 'every account', 'epoch'),
    ('admin', 'manages users and roles', 'epoch');
INSERT INTO role_permissions (role, permission) VALUES ('admin', 'users:admin');
INSERT INTO user_roles (user_id, role, granted_at) SELECT id, 'user', created_at FROM users;
