-- Initial schema, the PostgreSQL twin of migrations/sqlite/0001_initial.sql (same tables, same
-- columns, same rules). Times are BIGINT Unix seconds and lists JSON text, so the statements of
-- the store run unchanged on both backends.

CREATE TABLE ca_settings (
    id            BIGINT  PRIMARY KEY CHECK (id = 1),
    trust_domain  TEXT    NOT NULL,
    policy_path   TEXT    NOT NULL,
    keys_sealed   BIGINT  NOT NULL CHECK (keys_sealed IN (0, 1)),
    root_offline  BIGINT  NOT NULL CHECK (root_offline IN (0, 1)),
    server_names  TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL
);

CREATE TABLE authorities (
    id           TEXT    PRIMARY KEY,
    kind         TEXT    NOT NULL CHECK (kind IN ('root', 'intermediate', 'tls')),
    env          TEXT,
    parent_id    TEXT    REFERENCES authorities (id),
    serial       TEXT    NOT NULL UNIQUE,
    subject      TEXT    NOT NULL,
    cert_pem     TEXT    NOT NULL,
    sealed_key   TEXT,
    fingerprint  TEXT    NOT NULL UNIQUE,
    not_before   BIGINT  NOT NULL,
    not_after    BIGINT  NOT NULL,
    created_at   BIGINT  NOT NULL
);

-- Every serial ever handed out, reserved before signing so no two certificates can share one.
CREATE TABLE serials (
    serial       TEXT    PRIMARY KEY,
    reserved_at  BIGINT  NOT NULL
);

CREATE TABLE certificates (
    serial             TEXT    PRIMARY KEY REFERENCES serials (serial),
    issuer_id          TEXT    NOT NULL REFERENCES authorities (id),
    env                TEXT    NOT NULL,
    service            TEXT    NOT NULL,
    spiffe_id          TEXT    NOT NULL,
    dns_names          TEXT    NOT NULL,
    ip_addresses       TEXT    NOT NULL,
    key_type           TEXT    NOT NULL,
    key_fingerprint    TEXT    NOT NULL,
    fingerprint        TEXT    NOT NULL UNIQUE,
    not_before         BIGINT  NOT NULL,
    not_after          BIGINT  NOT NULL,
    cert_pem           TEXT    NOT NULL,
    issued_via         TEXT    NOT NULL,
    issued_by          TEXT    NOT NULL,
    created_at         BIGINT  NOT NULL,
    revoked_at         BIGINT,
    revocation_reason  TEXT,
    CHECK ((revoked_at IS NULL) = (revocation_reason IS NULL))
);
CREATE INDEX certificates_identity ON certificates (env, service);
CREATE INDEX certificates_not_after ON certificates (not_after);

CREATE TABLE tokens (
    id          TEXT    PRIMARY KEY,
    token_hash  TEXT    NOT NULL UNIQUE,
    env         TEXT    NOT NULL,
    service     TEXT    NOT NULL,
    max_uses    BIGINT  NOT NULL CHECK (max_uses >= 1),
    uses        BIGINT  NOT NULL DEFAULT 0 CHECK (uses >= 0 AND uses <= max_uses),
    created_at  BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL,
    created_by  TEXT    NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE audit_log (
    id       BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       BIGINT  NOT NULL,
    actor    TEXT    NOT NULL,
    action   TEXT    NOT NULL,
    env      TEXT,
    service  TEXT,
    serial   TEXT,
    result   TEXT    NOT NULL CHECK (result IN ('ok', 'denied', 'error')),
    reason   TEXT
);
CREATE INDEX audit_log_at ON audit_log (at);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END
$$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

CREATE TABLE crl_numbers (
    issuer_id    TEXT    PRIMARY KEY REFERENCES authorities (id),
    last_number  BIGINT  NOT NULL
);

CREATE TABLE crls (
    issuer_id    TEXT    PRIMARY KEY REFERENCES authorities (id),
    crl_number   BIGINT  NOT NULL,
    this_update  BIGINT  NOT NULL,
    next_update  BIGINT  NOT NULL,
    der          BYTEA   NOT NULL
);
