//! SQLite backend: one file, WAL, `synchronous=FULL`, foreign keys on. The SQL is shared with
//! PostgreSQL ([`super::sql`]).

use std::path::Path;
use std::time::Duration;

use super::sqlite_writer::BatchWriter;
use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};

use super::{
    AcmeAccount, AcmeEabKey, AcmeOrderRow, AuditCheckpoint, AuditEntry, AuditResult, AuthorityKind,
    AuthorityRecord, CaSettings, CertStatus, CertificateFilter, CertificateRecord,
    CertificateStatus, ChainedAudit, CheckpointSigner, CrlDraft, CrlRecord, CrlSigner,
    CrossCertificate, Issuance, IssuedVia, IssuerLeaves, JobClaim, NewAuthority, NewCa,
    RevokedEntry, Store, StoreError, TokenRecord, sql,
};
use crate::pki::Serial;

pub(super) static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");
const MIGRATIONS_TABLE_SQL: &str =
    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'";
/// One process owns a SQLite file: nothing to tell other servers.
const REVOKE_NOTIFY: Option<&str> = None;
/// No session timeouts to lift.
const LONG_TRANSACTION: Option<&str> = None;

/// A [`Store`] on a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    writer: BatchWriter,
}

impl SqliteStore {
    /// Opens (creating it when `create`) the database at `path` and brings its schema up to
    /// date (one process owns the file, so migrating on open is safe); refuses a schema newer
    /// than this build knows.
    pub async fn open(path: &Path, create: bool) -> Result<SqliteStore, StoreError> {
        Ok(SqliteStore::open_migrated(path, create).await?.0)
    }

    /// [`SqliteStore::open`], also returning the schema versions before and after.
    pub async fn open_migrated(
        path: &Path,
        create: bool,
    ) -> Result<(SqliteStore, i64, i64), StoreError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // A connection to a local file does not go stale, so it is not pinged before every use
        // (one round trip to its thread per statement is the cost that dominates issuance).
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(opts)
            .await?;
        let applied = applied_version(&pool).await?;
        if let Err(e @ StoreError::SchemaTooNew { .. }) =
            sql::check_schema_version(applied, &MIGRATOR)
        {
            pool.close().await;
            return Err(e);
        }
        MIGRATOR.run(&pool).await?;
        let after = applied_version(&pool).await?;
        let writer = match BatchWriter::open(path) {
            Ok(w) => w,
            Err(e) => {
                pool.close().await;
                return Err(e);
            }
        };
        Ok((SqliteStore { pool, writer }, applied, after))
    }

    /// Closes every connection (checkpointing the WAL).
    pub async fn close(&self) {
        self.writer.stop().await;
        self.pool.close().await;
    }

    /// Writes a consistent snapshot of the database to `out` (`VACUUM INTO`: one read
    /// transaction, so writers carry on meanwhile; sealed keys stay sealed). `out` must not exist
    /// or be an empty file, and must not start with `file:` (SQLite would read it as a URI); the
    /// snapshot is not flushed to disk, which is the caller's job.
    pub async fn backup_into(&self, out: &str) -> Result<(), StoreError> {
        sqlx::query("VACUUM INTO $1")
            .bind(out)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Checks a CA database file that no server uses (a backup, or a copy about to replace the
    /// live database) and summarises it: SQLite's integrity and foreign-key checks pass, every
    /// migration it records is one of this build's with the same checksum (an older schema is
    /// fine: opening migrates it), and it holds an initialised CA. Leaves the file in rollback
    /// journal mode, so it is one self-contained file. `NotCaDatabase` names what is wrong.
    pub async fn verify_file(path: &Path) -> Result<DatabaseSummary, StoreError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Delete)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true);
        let mut conn = opts.connect().await.map_err(unusable_file)?;
        let result = verify_connection(&mut conn).await;
        let _ = conn.close().await;
        result
    }

    /// Takes the database at `path` out of service: checks that no other connection has it
    /// open (a running server, another command) and switches it from WAL to rollback journal
    /// mode, which folds the write-ahead log into the file and removes `-wal` and `-shm`, so the
    /// file alone holds everything and can be moved aside. `Conflict` while it is in use.
    pub async fn take_offline(path: &Path) -> Result<(), StoreError> {
        let in_use = || {
            StoreError::Conflict(format!(
                "{} is in use by another process (a running `ca-server serve`?); stop it first",
                path.display()
            ))
        };
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .busy_timeout(Duration::from_secs(2));
        let mut conn = opts.connect().await.map_err(|e| match busy(&e) {
            true => in_use(),
            false => e.into(),
        })?;
        // Leaving WAL mode needs every other connection gone, and SQLite does not wait for them.
        let result = sqlx::query_scalar::<_, String>("PRAGMA journal_mode = DELETE")
            .fetch_one(&mut conn)
            .await;
        let _ = conn.close().await;
        match result {
            Ok(mode) if mode.eq_ignore_ascii_case("delete") => Ok(()),
            Ok(_) => Err(in_use()),
            Err(e) if busy(&e) => Err(in_use()),
            Err(e) => Err(e.into()),
        }
    }
}

/// What a CA database file holds, as `backup` and `restore` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseSummary {
    /// Newest migration applied.
    pub schema_version: i64,
    /// The CA's trust domain.
    pub trust_domain: String,
    /// Issued certificates stored (every state).
    pub certificates: i64,
    /// Id and time (Unix seconds) of the newest audit entry; `None` when the log is empty.
    pub newest_audit: Option<(i64, i64)>,
}

/// SQLite's primary result code of `e`, when it is a database error.
fn primary_code(e: &sqlx::Error) -> Option<i64> {
    match e {
        sqlx::Error::Database(db) => db.code()?.parse::<i64>().ok().map(|c| c & 0xff),
        _ => None,
    }
}

/// SQLITE_BUSY or SQLITE_LOCKED: another connection holds the lock.
fn busy(e: &sqlx::Error) -> bool {
    matches!(primary_code(e), Some(5 | 6))
}

/// A file SQLite cannot read as a database (SQLITE_CORRUPT, SQLITE_NOTADB) is unusable, not an
/// internal failure.
fn unusable_file(e: sqlx::Error) -> StoreError {
    match (&e, primary_code(&e)) {
        (sqlx::Error::Database(db), Some(11 | 26)) => {
            StoreError::NotCaDatabase(format!("not a SQLite database ({})", db.message()))
        }
        _ => e.into(),
    }
}

async fn verify_connection(conn: &mut SqliteConnection) -> Result<DatabaseSummary, StoreError> {
    let unusable = |m: String| StoreError::NotCaDatabase(m);
    let problems: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut *conn)
        .await
        .map_err(unusable_file)?;
    if problems.len() != 1 || problems[0] != "ok" {
        return Err(unusable(format!(
            "SQLite integrity check failed: {}",
            problems.first().map(String::as_str).unwrap_or("no answer")
        )));
    }
    let dangling = sqlx::query("PRAGMA foreign_key_check")
        .fetch_optional(&mut *conn)
        .await?;
    if dangling.is_some() {
        return Err(unusable("a row refers to a missing row".into()));
    }
    if sqlx::query(MIGRATIONS_TABLE_SQL)
        .fetch_optional(&mut *conn)
        .await?
        .is_none()
    {
        return Err(unusable(
            "it has no migrations table, so it is not a ca-server database".into(),
        ));
    }
    let applied: Vec<(i64, Vec<u8>, bool)> =
        sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await?;
    for (version, checksum, success) in &applied {
        let known = MIGRATOR
            .iter()
            .find(|m| m.version == *version && m.migration_type.is_up_migration());
        match known {
            _ if !success => {
                return Err(unusable(format!("migration {version} did not complete")));
            }
            None => {
                return Err(unusable(format!(
                    "its schema has migration {version}, unknown to this build (a newer \
                     ca-server made it): restore it with that version"
                )));
            }
            Some(m) if *m.checksum != checksum[..] => {
                return Err(unusable(format!(
                    "its migration {version} differs from this build's"
                )));
            }
            Some(_) => {}
        }
    }
    let schema_version = applied.iter().map(|(v, _, _)| *v).max().unwrap_or(0);
    let trust_domain: Option<String> =
        sqlx::query_scalar("SELECT trust_domain FROM ca_settings WHERE id = 1")
            .fetch_optional(&mut *conn)
            .await?;
    let trust_domain = trust_domain
        .ok_or_else(|| unusable("it holds no CA settings row (no initialised CA)".into()))?;
    let certificates: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM certificates")
        .fetch_one(&mut *conn)
        .await?;
    let newest_audit: Option<(i64, i64)> =
        sqlx::query_as("SELECT id, at FROM audit_log ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?;
    Ok(DatabaseSummary {
        schema_version,
        trust_domain,
        certificates,
        newest_audit,
    })
}

sql_store!(SqliteStore, sqlx::Sqlite, {
    async fn commit_issuances(
        &self,
        batch: &[Issuance],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        self.writer.commit(batch).await
    }

    async fn reserve_serials(&self, serials: &[Serial], at: i64) -> Result<(), StoreError> {
        self.writer
            .reserve(serials.iter().map(Serial::to_hex).collect(), at)
            .await
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = SqliteStore::open(&dir.path().join("ca.db"), true)
            .await
            .expect("open");
        crate::store::conformance::run(&store).await;
        let raw = sqlx::query("DELETE FROM audit_log")
            .execute(&store.pool)
            .await;
        assert!(raw.is_err(), "audit log rows could be deleted");
        let raw = sqlx::query("UPDATE audit_log SET result = 'ok'")
            .execute(&store.pool)
            .await;
        assert!(raw.is_err(), "audit log rows could be updated");
        store.close().await;
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).expect("meta").permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn a_backup_is_a_checked_snapshot_taken_while_the_store_is_open() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let live = dir.path().join("ca.db");
        let store = SqliteStore::open(&live, true).await.expect("open");
        crate::store::conformance::run(&store).await;
        let out = dir.path().join("backup.db");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&out)
            .expect("empty file");
        store
            .backup_into(out.to_str().expect("utf8"))
            .await
            .expect("backup");
        let certificates: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM certificates")
            .fetch_one(&store.pool)
            .await
            .expect("count");
        let newest: (i64, i64) =
            sqlx::query_as("SELECT id, at FROM audit_log ORDER BY id DESC LIMIT 1")
                .fetch_one(&store.pool)
                .await
                .expect("newest");
        let summary = SqliteStore::verify_file(&out).await.expect("verified");
        assert_eq!(summary.trust_domain, "example.internal");
        assert_eq!(summary.certificates, certificates);
        assert!(certificates > 0);
        assert_eq!(summary.newest_audit, Some(newest));
        let known = MIGRATOR
            .iter()
            .map(|m| m.version)
            .max()
            .expect("migrations");
        assert_eq!(summary.schema_version, known);
        assert_eq!(
            mode(&out),
            0o600,
            "SQLite keeps the mode of the file it fills"
        );
        assert!(
            !dir.path().join("backup.db-wal").exists(),
            "the backup is one self-contained file"
        );

        let before = std::fs::read(&out).expect("read");
        assert!(
            store
                .backup_into(out.to_str().expect("utf8"))
                .await
                .is_err(),
            "a database is never overwritten"
        );
        assert_eq!(std::fs::read(&out).expect("read"), before);

        assert!(matches!(
            SqliteStore::take_offline(&live).await,
            Err(StoreError::Conflict(m)) if m.contains("in use")
        ));
        store.close().await;
        SqliteStore::take_offline(&live).await.expect("offline");
        assert!(!dir.path().join("ca.db-wal").exists());
        assert_eq!(
            SqliteStore::verify_file(&live)
                .await
                .expect("whole")
                .newest_audit,
            Some(newest),
            "the write-ahead log went into the file"
        );
    }

    #[tokio::test]
    async fn files_that_are_not_usable_ca_databases_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let refused = |r: Result<DatabaseSummary, StoreError>, needle: &str| match r {
            Err(StoreError::NotCaDatabase(m)) => {
                assert!(m.contains(needle), "{m:?} lacks {needle:?}")
            }
            other => panic!("expected NotCaDatabase({needle}), got {other:?}"),
        };

        let text = dir.path().join("text");
        std::fs::write(
            &text,
            "not a database at all, but long enough to have a header".repeat(20),
        )
        .expect("write");
        refused(
            SqliteStore::verify_file(&text).await,
            "not a SQLite database",
        );

        let empty = dir.path().join("empty.db");
        let store = SqliteStore::open(&empty, true).await.expect("open");
        sqlx::query("DROP TABLE _sqlx_migrations")
            .execute(&store.pool)
            .await
            .expect("drop");
        store.close().await;
        refused(
            SqliteStore::verify_file(&empty).await,
            "no migrations table",
        );

        let no_ca = dir.path().join("no-ca.db");
        SqliteStore::open(&no_ca, true)
            .await
            .expect("open")
            .close()
            .await;
        refused(SqliteStore::verify_file(&no_ca).await, "no CA settings");

        let newer = dir.path().join("newer.db");
        let store = SqliteStore::open(&newer, true).await.expect("open");
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (9999, 'from the future', 1, x'00', 0)",
        )
        .execute(&store.pool)
        .await
        .expect("insert");
        store.close().await;
        refused(
            SqliteStore::verify_file(&newer).await,
            "migration 9999, unknown",
        );

        let edited = dir.path().join("edited.db");
        let store = SqliteStore::open(&edited, true).await.expect("open");
        sqlx::query("UPDATE _sqlx_migrations SET checksum = x'00' WHERE version = 1")
            .execute(&store.pool)
            .await
            .expect("update");
        store.close().await;
        refused(
            SqliteStore::verify_file(&edited).await,
            "migration 1 differs",
        );

        let damaged = dir.path().join("damaged.db");
        let store = SqliteStore::open(&damaged, true).await.expect("open");
        crate::store::conformance::run(&store).await;
        store.close().await;
        SqliteStore::take_offline(&damaged).await.expect("one file");
        let mut bytes = std::fs::read(&damaged).expect("read");
        let page = 4096;
        assert!(bytes.len() > 4 * page);
        for b in &mut bytes[2 * page..4 * page] {
            *b = 0x5a;
        }
        std::fs::write(&damaged, &bytes).expect("write");
        assert!(matches!(
            SqliteStore::verify_file(&damaged).await,
            Err(StoreError::NotCaDatabase(_))
        ));
    }

    #[tokio::test]
    async fn opening_a_missing_database_without_create_fails() {
        let dir = tempfile::tempdir().expect("tmp");
        assert!(
            SqliteStore::open(&dir.path().join("none.db"), false)
                .await
                .is_err()
        );
        assert!(!dir.path().join("none.db").exists());
    }

    #[tokio::test]
    async fn pragmas_are_durable() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = SqliteStore::open(&dir.path().join("ca.db"), true)
            .await
            .expect("open");
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&store.pool)
            .await
            .expect("q");
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&store.pool)
            .await
            .expect("q");
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&store.pool)
            .await
            .expect("q");
        assert_eq!((mode.as_str(), sync, fk), ("wal", 2, 1));
    }
}
