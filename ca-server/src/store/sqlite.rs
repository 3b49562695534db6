//! SQLite backend: one file, WAL, `synchronous=FULL`, foreign keys on.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use super::{
    AuditEntry, AuditResult, AuthorityKind, AuthorityRecord, CaSettings, CertStatus,
    CertificateFilter, CertificateRecord, CrlRecord, Issuance, IssuedVia, NewCa, RevokedEntry,
    Store, StoreError, TokenRecord,
};
use crate::pki::Serial;

/// A [`Store`] on a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl SqliteStore {
    /// Opens (creating it when `create`) and migrates the database at `path`.
    pub async fn open(path: &Path, create: bool) -> Result<SqliteStore, StoreError> {
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
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore { pool })
    }

    /// Closes every connection (checkpointing the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn parse_list(col: &str, s: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(s).map_err(|_| StoreError::Corrupt(format!("{col} is not a JSON list")))
}

fn authority_from_row(r: &SqliteRow) -> Result<AuthorityRecord, StoreError> {
    let kind: String = r.try_get("kind")?;
    Ok(AuthorityRecord {
        id: r.try_get("id")?,
        kind: match kind.as_str() {
            "root" => AuthorityKind::Root,
            "intermediate" => AuthorityKind::Intermediate,
            "tls" => AuthorityKind::Tls,
            other => return Err(StoreError::Corrupt(format!("authority kind {other:?}"))),
        },
        env: r.try_get("env")?,
        parent_id: r.try_get("parent_id")?,
        serial: r.try_get("serial")?,
        subject: r.try_get("subject")?,
        cert_pem: r.try_get("cert_pem")?,
        sealed_key: r.try_get("sealed_key")?,
        fingerprint: r.try_get("fingerprint")?,
        not_before: r.try_get("not_before")?,
        not_after: r.try_get("not_after")?,
        created_at: r.try_get("created_at")?,
    })
}

fn certificate_from_row(r: &SqliteRow) -> Result<CertificateRecord, StoreError> {
    let via: String = r.try_get("issued_via")?;
    let dns: String = r.try_get("dns_names")?;
    let ips: String = r.try_get("ip_addresses")?;
    Ok(CertificateRecord {
        serial: r.try_get("serial")?,
        issuer_id: r.try_get("issuer_id")?,
        env: r.try_get("env")?,
        service: r.try_get("service")?,
        spiffe_id: r.try_get("spiffe_id")?,
        dns_names: parse_list("dns_names", &dns)?,
        ip_addresses: parse_list("ip_addresses", &ips)?,
        key_type: r.try_get("key_type")?,
        key_fingerprint: r.try_get("key_fingerprint")?,
        fingerprint: r.try_get("fingerprint")?,
        not_before: r.try_get("not_before")?,
        not_after: r.try_get("not_after")?,
        cert_pem: r.try_get("cert_pem")?,
        issued_via: IssuedVia::parse(&via)
            .ok_or_else(|| StoreError::Corrupt(format!("issued_via {via:?}")))?,
        issued_by: r.try_get("issued_by")?,
        created_at: r.try_get("created_at")?,
        revoked_at: r.try_get("revoked_at")?,
        revocation_reason: r.try_get("revocation_reason")?,
    })
}

fn token_from_row(r: &SqliteRow) -> Result<TokenRecord, StoreError> {
    let count = |col: &str| -> Result<u32, StoreError> {
        let v: i64 = r.try_get(col)?;
        u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("token {col} {v}")))
    };
    Ok(TokenRecord {
        id: r.try_get("id")?,
        token_hash: r.try_get("token_hash")?,
        env: r.try_get("env")?,
        service: r.try_get("service")?,
        max_uses: count("max_uses")?,
        uses: count("uses")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        created_by: r.try_get("created_by")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

fn audit_from_row(r: &SqliteRow) -> Result<AuditEntry, StoreError> {
    let result: String = r.try_get("result")?;
    Ok(AuditEntry {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        env: r.try_get("env")?,
        service: r.try_get("service")?,
        serial: r.try_get("serial")?,
        result: AuditResult::parse(&result)
            .ok_or_else(|| StoreError::Corrupt(format!("audit result {result:?}")))?,
        reason: r.try_get("reason")?,
    })
}

async fn insert_audit<'e, E>(exec: E, e: &AuditEntry) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, env, service, serial, result, reason) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(e.at)
    .bind(&e.actor)
    .bind(&e.action)
    .bind(&e.env)
    .bind(&e.service)
    .bind(&e.serial)
    .bind(e.result.as_str())
    .bind(&e.reason)
    .execute(exec)
    .await?;
    Ok(())
}

/// Inserts a certificate row, naming the rule a refusal broke.
async fn insert_certificate_row(
    conn: &mut sqlx::SqliteConnection,
    c: &CertificateRecord,
) -> Result<(), StoreError> {
    let res = sqlx::query(
        "INSERT INTO certificates (serial, issuer_id, env, service, spiffe_id, dns_names, ip_addresses, \
         key_type, key_fingerprint, fingerprint, not_before, not_after, cert_pem, issued_via, issued_by, \
         created_at, revoked_at, revocation_reason) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&c.serial)
    .bind(&c.issuer_id)
    .bind(&c.env)
    .bind(&c.service)
    .bind(&c.spiffe_id)
    .bind(json_list(&c.dns_names))
    .bind(json_list(&c.ip_addresses))
    .bind(&c.key_type)
    .bind(&c.key_fingerprint)
    .bind(&c.fingerprint)
    .bind(c.not_before)
    .bind(c.not_after)
    .bind(&c.cert_pem)
    .bind(c.issued_via.as_str())
    .bind(&c.issued_by)
    .bind(c.created_at)
    .bind(c.revoked_at)
    .bind(&c.revocation_reason)
    .execute(&mut *conn)
    .await;
    match res {
        Err(e) if unique_violation(&e) => Err(StoreError::Conflict(format!(
            "certificate {} already stored",
            c.serial
        ))),
        Err(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => {
            Err(StoreError::NotFound(format!(
                "serial {} was not reserved, or issuer {:?} is unknown",
                c.serial, c.issuer_id
            )))
        }
        r => r.map(|_| ()).map_err(Into::into),
    }
}

/// Spends one use of token `id` if it is usable at `at`. One conditional UPDATE: SQLite
/// serialises writers, so the check and the increment cannot interleave with another's.
async fn spend_use<'e, E>(exec: E, id: &str, at: i64) -> Result<bool, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let done = sqlx::query(
        "UPDATE tokens SET uses = uses + 1 \
         WHERE id = ? AND revoked_at IS NULL AND expires_at > ? AND uses < max_uses",
    )
    .bind(id)
    .bind(at)
    .execute(exec)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// One issuance of a batch: the token use (one conditional UPDATE), the row, the audit entry.
/// A refused item (inner error) leaves nothing behind: SQLite undoes a failed statement by
/// itself, and a token use spent for a row that was then refused is given back in the same
/// transaction. An outer error (the database failing) fails the whole batch.
async fn commit_one(
    conn: &mut sqlx::SqliteConnection,
    item: &Issuance,
) -> Result<Result<(), StoreError>, StoreError> {
    if let Some(t) = &item.token
        && !spend_use(&mut *conn, &t.id, t.at).await?
    {
        return Ok(Err(StoreError::TokenUsedUp(t.id.clone())));
    }
    match insert_certificate_row(conn, &item.cert).await {
        Ok(()) => {}
        Err(refused @ (StoreError::Conflict(_) | StoreError::NotFound(_))) => {
            if let Some(t) = &item.token {
                sqlx::query("UPDATE tokens SET uses = uses - 1 WHERE id = ?")
                    .bind(&t.id)
                    .execute(&mut *conn)
                    .await?;
            }
            return Ok(Err(refused));
        }
        Err(e) => return Err(e),
    }
    insert_audit(&mut *conn, &item.audit).await?;
    Ok(Ok(()))
}

#[async_trait]
impl Store for SqliteStore {
    async fn initialize(&self, ca: &NewCa) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let s = &ca.settings;
        let res = sqlx::query(
            "INSERT INTO ca_settings (id, trust_domain, policy_path, keys_sealed, root_offline, server_names, \
             created_at) VALUES (1, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&s.trust_domain)
        .bind(&s.policy_path)
        .bind(i64::from(s.keys_sealed))
        .bind(i64::from(s.root_offline))
        .bind(json_list(&s.server_names))
        .bind(s.created_at)
        .execute(&mut *tx)
        .await;
        match res {
            Err(e) if unique_violation(&e) => {
                return Err(StoreError::Conflict(
                    "this database already holds a CA".into(),
                ));
            }
            r => {
                r?;
            }
        }
        for a in &ca.authorities {
            sqlx::query("INSERT INTO serials (serial, reserved_at) VALUES (?, ?)")
                .bind(&a.serial)
                .bind(a.created_at)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO authorities (id, kind, env, parent_id, serial, subject, cert_pem, sealed_key, \
                 fingerprint, not_before, not_after, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&a.id)
            .bind(a.kind.as_str())
            .bind(&a.env)
            .bind(&a.parent_id)
            .bind(&a.serial)
            .bind(&a.subject)
            .bind(&a.cert_pem)
            .bind(&a.sealed_key)
            .bind(&a.fingerprint)
            .bind(a.not_before)
            .bind(a.not_after)
            .bind(a.created_at)
            .execute(&mut *tx)
            .await?;
        }
        insert_audit(&mut *tx, &ca.audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn settings(&self) -> Result<Option<CaSettings>, StoreError> {
        let row = sqlx::query(
            "SELECT trust_domain, policy_path, keys_sealed, root_offline, server_names, created_at \
             FROM ca_settings WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| -> Result<CaSettings, StoreError> {
            Ok(CaSettings {
                trust_domain: r.try_get("trust_domain")?,
                policy_path: r.try_get("policy_path")?,
                keys_sealed: r.try_get::<i64, _>("keys_sealed")? != 0,
                root_offline: r.try_get::<i64, _>("root_offline")? != 0,
                server_names: parse_list("server_names", &r.try_get::<String, _>("server_names")?)?,
                created_at: r.try_get("created_at")?,
            })
        })
        .transpose()
    }

    async fn authorities(&self) -> Result<Vec<AuthorityRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM authorities ORDER BY kind <> 'root', kind = 'tls', id")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(authority_from_row).collect()
    }

    async fn authority(&self, id: &str) -> Result<Option<AuthorityRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM authorities WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(authority_from_row).transpose()
    }

    async fn insert_certificate(
        &self,
        c: &CertificateRecord,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_certificate_row(&mut tx, c).await?;
        insert_audit(&mut *tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn reserve_serials(&self, serials: &[Serial], at: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for serial in serials {
            let res = sqlx::query("INSERT INTO serials (serial, reserved_at) VALUES (?, ?)")
                .bind(serial.to_hex())
                .bind(at)
                .execute(&mut *tx)
                .await;
            match res {
                Err(e) if unique_violation(&e) => {
                    return Err(StoreError::Conflict(format!(
                        "serial {serial} already used"
                    )));
                }
                r => {
                    r?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn commit_issuances(
        &self,
        batch: &[Issuance],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut results = Vec::with_capacity(batch.len());
        for item in batch {
            results.push(commit_one(&mut tx, item).await?);
        }
        tx.commit().await?;
        Ok(results)
    }

    async fn certificate(&self, serial: &Serial) -> Result<Option<CertificateRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM certificates WHERE serial = ?")
            .bind(serial.to_hex())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(certificate_from_row).transpose()
    }

    async fn list_certificates(
        &self,
        f: &CertificateFilter,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM certificates WHERE \
             (?1 IS NULL OR env = ?1) AND (?2 IS NULL OR service = ?2) AND \
             (?3 IS NULL OR (?3 = 'revoked' AND revoked_at IS NOT NULL) \
                 OR (?3 = 'valid' AND revoked_at IS NULL AND not_after > ?4) \
                 OR (?3 = 'expired' AND revoked_at IS NULL AND not_after <= ?4)) AND \
             (?5 IS NULL OR not_after <= ?5) \
             ORDER BY created_at DESC, serial LIMIT ?6",
        )
        .bind(&f.env)
        .bind(&f.service)
        .bind(f.status.map(CertStatus::as_str))
        .bind(f.now)
        .bind(f.not_after_before)
        .bind(i64::from(f.limit.unwrap_or(u32::MAX)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(certificate_from_row).collect()
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        insert_audit(&self.pool, entry).await
    }

    async fn audit_entries(
        &self,
        since: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM audit_log WHERE (?1 IS NULL OR at >= ?1) ORDER BY id LIMIT ?2",
        )
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn count_live_certificates(&self, now: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT env, COUNT(*) AS n FROM certificates WHERE revoked_at IS NULL AND not_after > ? \
             GROUP BY env ORDER BY env",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("env")?, r.try_get("n")?)))
            .collect()
    }

    async fn insert_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        let res = sqlx::query(
            "INSERT INTO tokens (id, token_hash, env, service, max_uses, uses, created_at, expires_at, \
             created_by, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&t.id)
        .bind(&t.token_hash)
        .bind(&t.env)
        .bind(&t.service)
        .bind(i64::from(t.max_uses))
        .bind(i64::from(t.uses))
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(&t.created_by)
        .bind(t.revoked_at)
        .execute(&self.pool)
        .await;
        match res {
            Err(e) if unique_violation(&e) => Err(StoreError::Conflict(format!(
                "token {} already exists",
                t.id
            ))),
            r => r.map(|_| ()).map_err(Into::into),
        }
    }

    async fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM tokens WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn spend_token(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        spend_use(&self.pool, id, now).await
    }

    async fn list_tokens(&self, usable_at: Option<i64>) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM tokens WHERE (?1 IS NULL OR (revoked_at IS NULL AND expires_at > ?1 AND uses < max_uses)) \
             ORDER BY created_at DESC, id",
        )
        .bind(usable_at)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_token(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(at)
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn prune_tokens(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM tokens WHERE expires_at < ?")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn revoke_certificate(
        &self,
        serial: &Serial,
        at: i64,
        reason: &str,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE certificates SET revoked_at = ?, revocation_reason = ? WHERE serial = ? AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(reason)
        .bind(serial.to_hex())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            let exists: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM certificates WHERE serial = ?")
                    .bind(serial.to_hex())
                    .fetch_optional(&mut *tx)
                    .await?;
            return Err(match exists {
                Some(_) => StoreError::Conflict(format!("certificate {serial} is already revoked")),
                None => StoreError::NotFound(format!("no certificate with serial {serial}")),
            });
        }
        insert_audit(&mut *tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn revoked_entries(
        &self,
        issuer_id: &str,
        not_after_after: i64,
    ) -> Result<Vec<RevokedEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT serial, revoked_at, revocation_reason FROM certificates \
             WHERE issuer_id = ? AND revoked_at IS NOT NULL AND not_after > ? ORDER BY revoked_at, serial",
        )
        .bind(issuer_id)
        .bind(not_after_after)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RevokedEntry {
                    serial: r.try_get("serial")?,
                    revoked_at: r.try_get("revoked_at")?,
                    reason: r.try_get("revocation_reason")?,
                })
            })
            .collect()
    }

    async fn next_crl_number(&self, issuer_id: &str) -> Result<i64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "INSERT INTO crl_numbers (issuer_id, last_number) VALUES (?, 1) \
             ON CONFLICT (issuer_id) DO UPDATE SET last_number = last_number + 1 RETURNING last_number",
        )
        .bind(issuer_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    async fn save_crl(&self, c: &CrlRecord) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO crls (issuer_id, crl_number, this_update, next_update, der) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (issuer_id) DO UPDATE SET crl_number = excluded.crl_number, \
             this_update = excluded.this_update, next_update = excluded.next_update, der = excluded.der \
             WHERE excluded.crl_number > crls.crl_number",
        )
        .bind(&c.issuer_id)
        .bind(c.number)
        .bind(c.this_update)
        .bind(c.next_update)
        .bind(&c.der)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn crl(&self, issuer_id: &str) -> Result<Option<CrlRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM crls WHERE issuer_id = ?")
            .bind(issuer_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| -> Result<CrlRecord, StoreError> {
            Ok(CrlRecord {
                issuer_id: r.try_get("issuer_id")?,
                number: r.try_get("crl_number")?,
                this_update: r.try_get("this_update")?,
                next_update: r.try_get("next_update")?,
                der: r.try_get("der")?,
            })
        })
        .transpose()
    }
}

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
