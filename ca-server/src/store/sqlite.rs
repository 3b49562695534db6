//! SQLite backend: one file, WAL, `synchronous=FULL`, foreign keys on. The SQL is shared with
//! PostgreSQL ([`super::sql`]).

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{
    AuditEntry, AuditResult, AuthorityKind, AuthorityRecord, CaSettings, CertStatus,
    CertificateFilter, CertificateRecord, CrlDraft, CrlRecord, CrlSigner, Issuance, IssuedVia,
    JobClaim, NewCa, RevokedEntry, Store, StoreError, TokenRecord, sql,
};
use crate::pki::Serial;

pub(super) static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");
const MIGRATIONS_TABLE_SQL: &str =
    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'";
/// One process owns a SQLite file: nothing to tell other servers.
const REVOKE_NOTIFY: Option<&str> = None;

/// A [`Store`] on a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
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
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
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
        Ok((SqliteStore { pool }, applied, after))
    }

    /// Closes every connection (checkpointing the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

sql_store!(SqliteStore, sqlx::Sqlite, {});

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
