-- The ACME server (RFC 8555). Accounts are bound to an (environment, service) identity, through an
-- External Account Binding key or the environment's policy, so policy applies to them exactly as
-- to agents. Orders keep their authorizations and challenges in one JSON document, updated with
-- an optimistic version check, so concurrent validations on several servers never lose a result.

CREATE TABLE acme_accounts (
    id           TEXT    PRIMARY KEY,
    env          TEXT    NOT NULL,
    service      TEXT    NOT NULL,
    jwk          TEXT    NOT NULL,
    thumbprint   TEXT    NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN ('valid', 'deactivated', 'revoked')),
    contact      TEXT    NOT NULL,
    eab_kid      TEXT,
    created_at   BIGINT NOT NULL,
    UNIQUE (env, thumbprint)
);

-- External Account Binding keys: the MAC key itself is never stored (it is derived from the CA's
-- sealed secret and the key id); a key binds one account, once, before it expires.
CREATE TABLE acme_eab_keys (
    kid          TEXT    PRIMARY KEY,
    env          TEXT    NOT NULL,
    service      TEXT    NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    created_by   TEXT    NOT NULL,
    used_at      BIGINT,
    account_id   TEXT
);

-- Replay nonces, single use, seen by every server sharing the database.
CREATE TABLE acme_nonces (
    nonce        TEXT    PRIMARY KEY,
    expires_at   BIGINT NOT NULL
);

CREATE TABLE acme_orders (
    id           TEXT    PRIMARY KEY,
    account_id   TEXT    NOT NULL REFERENCES acme_accounts (id),
    env          TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    expires_at   BIGINT NOT NULL,
    document     TEXT    NOT NULL,
    version      BIGINT NOT NULL,
    cert_serial  TEXT,
    created_at   BIGINT NOT NULL
);
CREATE INDEX acme_orders_account ON acme_orders (account_id);
