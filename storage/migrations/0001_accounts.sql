-- Organizations, departments, members, devices, tokens and login records.

CREATE TABLE orgs (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE departments (
    id          uuid PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES orgs (id),
    parent_id   uuid,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT departments_org_id_key UNIQUE (org_id, id),
    CONSTRAINT departments_parent_fk FOREIGN KEY (org_id, parent_id)
        REFERENCES departments (org_id, id)
);
-- Sibling names are unique; top-level departments have no parent.
CREATE UNIQUE INDEX departments_name_unique ON departments
    (org_id, coalesce(parent_id, '00000000-0000-0000-0000-000000000000'::uuid), lower(name));

CREATE TABLE accounts (
    id                        uuid PRIMARY KEY,
    org_id                    uuid NOT NULL REFERENCES orgs (id),
    account_name              text NOT NULL,
    work_email                text NOT NULL,
    display_name              text NOT NULL,
    phone                     text,
    department_id             uuid,
    position                  text,
    role                      text NOT NULL
        CHECK (role IN ('owner', 'admin', 'department_admin', 'member')),
    admin_department_id       uuid,
    password_hash             bytea NOT NULL,
    password_change_required  boolean NOT NULL DEFAULT false,
    status                    text NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'deactivated')),
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT accounts_department_fk FOREIGN KEY (org_id, department_id)
        REFERENCES departments (org_id, id),
    CONSTRAINT accounts_admin_department_fk FOREIGN KEY (org_id, admin_department_id)
        REFERENCES departments (org_id, id),
    CONSTRAINT accounts_admin_scope_check
        CHECK ((role = 'department_admin') = (admin_department_id IS NOT NULL))
);
CREATE UNIQUE INDEX accounts_account_name_unique ON accounts (org_id, lower(account_name));
CREATE UNIQUE INDEX accounts_work_email_unique ON accounts (lower(work_email));
CREATE INDEX accounts_directory ON accounts (org_id, lower(display_name), id);

CREATE TABLE devices (
    id            uuid PRIMARY KEY,
    account_id    uuid NOT NULL REFERENCES accounts (id),
    name          text NOT NULL,
    platform      text NOT NULL,
    public_key    bytea NOT NULL CHECK (octet_length(public_key) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz,
    revoked_at    timestamptz
);
-- A device key belongs to one device, forever: a revoked key is never enrolled again.
CREATE UNIQUE INDEX devices_public_key_unique ON devices (public_key);
CREATE INDEX devices_account ON devices (account_id);

CREATE TABLE auth_tokens (
    token_hash  bytea PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('access', 'refresh')),
    device_id   uuid NOT NULL REFERENCES devices (id),
    account_id  uuid NOT NULL REFERENCES accounts (id),
    family      uuid NOT NULL,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX auth_tokens_device ON auth_tokens (device_id) WHERE revoked_at IS NULL;
CREATE INDEX auth_tokens_family ON auth_tokens (family);
CREATE INDEX auth_tokens_expiry ON auth_tokens (expires_at);

CREATE TABLE login_records (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL,
    login_name  text NOT NULL,
    account_id  uuid,
    device_id   uuid,
    ip          text NOT NULL,
    user_agent  text NOT NULL,
    outcome     text NOT NULL
);
CREATE INDEX login_records_name ON login_records (lower(login_name), at);
CREATE INDEX login_records_ip ON login_records (ip, at);
CREATE INDEX login_records_at ON login_records (at);
