-- Several servers on one database: the policy every one of them must serve (a hash of the file,
-- published at init, by `ca-server policy publish` or a SIGHUP reload), and scheduled jobs run
-- once per period whichever server's timer fires first.
ALTER TABLE ca_settings ADD COLUMN policy_sha256 TEXT;

-- Scheduled jobs, once per period across servers. job_leases holds one row per job: a claim is a
-- conditional UPDATE of it (so claims of every server queue on one row lock), granted only for a
-- period after the last one claimed and only when the last run finished or its lease ran out, so
-- two runs of a job never overlap unless one outlives its lease. job_runs keeps the history.
CREATE TABLE job_leases (
    job          TEXT    PRIMARY KEY,
    owner        TEXT    NOT NULL,
    period       INTEGER NOT NULL,
    lease_until  INTEGER NOT NULL,
    finished     INTEGER NOT NULL CHECK (finished IN (0, 1))
);

CREATE TABLE job_runs (
    job          TEXT    NOT NULL,
    period       INTEGER NOT NULL,
    owner        TEXT    NOT NULL,
    started_at   INTEGER NOT NULL,
    lease_until  INTEGER NOT NULL,
    finished_at  INTEGER,
    PRIMARY KEY (job, period)
);
