-- CA rotation: an environment's intermediate, the server's TLS intermediate and the root each
-- have generations. Generation 1 is what init made (its id is the environment, "_tls" or
-- "root"); later generations are "<id>.<n>". An authority issues from activates_at on (NULL:
-- from its creation) until a later generation activates; retired_at is when it left the bundles
-- (an intermediate once its last leaf expired, a root at the end of its overlap); a revoked one
-- is listed on its parent's CRL.
ALTER TABLE authorities ADD COLUMN generation BIGINT NOT NULL DEFAULT 1;
ALTER TABLE authorities ADD COLUMN activates_at BIGINT;
ALTER TABLE authorities ADD COLUMN retired_at BIGINT;
ALTER TABLE authorities ADD COLUMN revoked_at BIGINT;
ALTER TABLE authorities ADD COLUMN revocation_reason TEXT;

-- Two rotations of one authority at once (an operator and the scheduler, two replicas) cannot
-- both create the next generation.
CREATE UNIQUE INDEX authorities_generation ON authorities (kind, COALESCE(env, ''), generation);

-- During a root rotation each root certifies the other's key, so trust stores holding either
-- root validate chains of both.
CREATE TABLE cross_certificates (
    subject_id   TEXT    NOT NULL REFERENCES authorities (id),
    issuer_id    TEXT    NOT NULL REFERENCES authorities (id),
    serial       TEXT    NOT NULL UNIQUE,
    cert_pem     TEXT    NOT NULL,
    not_before   BIGINT NOT NULL,
    not_after    BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (subject_id, issuer_id)
);
