-- Tamper evidence for the audit log. Each entry carries the hash of the entry before it and its own
-- hash over that and its contents (a chain: an edited, deleted, inserted or reordered row breaks
-- it). audit_head is the end of the chain, locked by every transaction that appends, so entries
-- chain in commit order on every server. audit_checkpoints hold the head as it was at a moment,
-- with an HMAC-SHA256 under the audit key (sealed with the CA passphrase like the CA keys): someone
-- with write access to the database alone can rewrite the chain but not a checkpoint.
-- Entries written before this migration carry no hashes; the chain starts after them.
ALTER TABLE audit_log ADD COLUMN prev_hash TEXT;
ALTER TABLE audit_log ADD COLUMN entry_hash TEXT;

CREATE TABLE audit_head (
    id         BIGINT  PRIMARY KEY CHECK (id = 1),
    last_id    BIGINT  NOT NULL,
    last_hash  TEXT    NOT NULL
);
INSERT INTO audit_head (id, last_id, last_hash) SELECT 1, COALESCE(MAX(id), 0), 'genesis' FROM audit_log;

CREATE TABLE audit_checkpoints (
    id         BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         BIGINT  NOT NULL,
    last_id    BIGINT  NOT NULL,
    last_hash  TEXT    NOT NULL,
    mac        TEXT    NOT NULL
);

-- The audit key, sealed (or plain in development mode); created at init or by the first server.
ALTER TABLE ca_settings ADD COLUMN audit_key TEXT;
