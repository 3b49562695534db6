-- CRLs list the revoked certificates of one issuer. Without this index every CRL (at start-up, on
-- every revocation and on the schedule) scanned the whole certificates table; with it the work
-- is proportional to the revoked certificates. Partial: unrevoked rows do not enter it.
CREATE INDEX certificates_revoked ON certificates (issuer_id, revoked_at) WHERE revoked_at IS NOT NULL;
