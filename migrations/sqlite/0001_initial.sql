-- Initial schema. Times are integer Unix seconds and lists are JSON text so the same statements
-- run on SQLite and PostgreSQL; statuses are derived (revoked_at set, or not_after passed).

CREATE TABLE ca_settings (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    trust_domain  TEXT    NOT NULL,
    policy_path   TEXT    NOT NULL,
    keys_sealed   INTEGER NOT NULL CHECK (keys_sealed IN (0, 1)),
    root_offline  INTEGER NOT NULL CHECK (root_offline IN (0, 1)),
    server_names  TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
);

-- The root ('root'), one intermediate per environment (id = environment name), and the
-- intermediate for the CA server's own HTTPS certificate ('_tls').
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
    not_before   INTEGER NOT NULL,
    not_after    INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
);

-- Every serial ever handed out, reserved before signing so no two certificates can share one.
CREATE TABLE serials (
    serial       TEXT    PRIMARY KEY,
    reserved_at  INTEGER NOT NULL
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
    not_before         INTEGER NOT NULL,
    not_after          INTEGER NOT NULL,
    cert_pem           TEXT    NOT NULL,
    issued_via         TEXT    NOT NULL,
    issued_by          TEXT    NOT NULL,
    created_at         INTEGER NOT NULL,
    revoked_at         INTEGER,
    revocation_reason  TEXT,
    CHECK ((revoked_at IS NULL) = (revocation_reason IS NULL))
);
CREATE INDEX certificates_identity ON certificates (env, service);
CREATE INDEX certificates_not_after ON certificates (not_after);

-- Enrollment tokens: only a hash of the secret is kept.
CREATE TABLE tokens (
    id          TEXT    PRIMARY KEY,
    token_hash  TEXT    NOT NULL UNIQUE,
    env         TEXT    NOT NULL,
    service     TEXT    NOT NULL,
    max_uses    INTEGER NOT NULL CHECK (max_uses >= 1),
    uses        INTEGER NOT NULL DEFAULT 0 CHECK (uses >= 0 AND uses <= max_uses),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    created_by  TEXT    NOT NULL,
    revoked_at  INTEGER
);

CREATE TABLE audit_log (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    actor    TEXT    NOT NULL,
    action   TEXT    NOT NULL,
    env      TEXT,
    service  TEXT,
    serial   TEXT,
    result   TEXT    NOT NULL CHECK (result IN ('ok', 'denied', 'error')),
    reason   TEXT
);
CREATE INDEX audit_log_at ON audit_log (at);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

-- The latest CRL of each issuer, and the last CRL number handed out (monotonic, never reused,
-- even if a signed CRL is then lost).
CREATE TABLE crl_numbers (
    issuer_id    TEXT    PRIMARY KEY REFERENCES authorities (id),
    last_number  INTEGER NOT NULL
);

CREATE TABLE crls (
    issuer_id    TEXT    PRIMARY KEY REFERENCES authorities (id),
    crl_number   INTEGER NOT NULL,
    this_update  INTEGER NOT NULL,
    next_update  INTEGER NOT NULL,
    der          BLOB    NOT NULL
);
