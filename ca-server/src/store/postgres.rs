//! PostgreSQL backend: several `ca-server serve` replicas share one database. The SQL is shared
//! with SQLite ([`super::sql`]); what differs is the pool (a few connections per replica, short
//! timeouts), explicit migrations (`ca-server migrate`; a server only checks the version), and
//! revocations announced with `NOTIFY` inside their transaction, so every replica drops its
//! cached answers at once.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};

use super::{
    AcmeAccount, AcmeEabKey, AcmeOrderRow, AuditCheckpoint, AuditEntry, AuditResult, AuthorityKind,
    AuthorityRecord, CaSettings, CertStatus, CertificateFilter, CertificateRecord,
    CertificateStatus, ChainedAudit, ChangeHook, CheckpointSigner, CrlDraft, CrlRecord, CrlSigner,
    CrossCertificate, Issuance, IssuedVia, IssuerLeaves, JobClaim, NewAuthority, NewCa,
    RevokedEntry, Store, StoreError, TokenRecord, sql,
};
use crate::duration::HumanDuration;
use crate::pki::Serial;

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");
const MIGRATIONS_TABLE_SQL: &str = "SELECT 1 WHERE to_regclass('_sqlx_migrations') IS NOT NULL";
/// The channel revocations are announced on.
const REVOCATION_CHANNEL: &str = "ca_revocation";
const REVOKE_NOTIFY: Option<&str> = Some("SELECT pg_notify('ca_revocation', $1)");
/// CRL generation signs inside its transaction: a large CRL takes seconds.
const LONG_TRANSACTION: Option<&str> =
    Some("SET LOCAL idle_in_transaction_session_timeout = '10min'");

/// Pool settings, sized for small machines (`[database]` in the server config).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PgSettings {
    /// Connections per server, at most (one more is kept for revocation notices).
    pub max_connections: u32,
    /// How long a request waits for a free connection before failing.
    pub acquire_timeout: HumanDuration,
    /// Server-side limit on one statement (`statement_timeout`).
    pub statement_timeout: HumanDuration,
    /// Server-side limit on a transaction left idle (`idle_in_transaction_session_timeout`): how
    /// long a replica that stops mid-transaction (paused, swapped out, partitioned) can hold the
    /// row locks every other replica's writes queue on. Short, since no transaction here waits on
    /// anything but the database; CRL generation, which signs inside its transaction, raises it
    /// for itself.
    pub idle_in_transaction_timeout: HumanDuration,
    /// Connections idle this long are closed.
    pub idle_timeout: HumanDuration,
}

impl Default for PgSettings {
    fn default() -> Self {
        PgSettings {
            max_connections: 4,
            acquire_timeout: HumanDuration(time::Duration::seconds(3)),
            statement_timeout: HumanDuration(time::Duration::seconds(10)),
            idle_in_transaction_timeout: HumanDuration(time::Duration::seconds(2)),
            idle_timeout: HumanDuration(time::Duration::minutes(5)),
        }
    }
}

impl PgSettings {
    /// For `ca-server migrate`: no statement limit, since a migration may build an index over
    /// millions of certificates (each migration runs in its own transaction, so one that fails
    /// leaves its version unapplied).
    pub fn for_migrations() -> PgSettings {
        PgSettings {
            max_connections: 1,
            statement_timeout: HumanDuration(time::Duration::ZERO),
            ..PgSettings::default()
        }
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100).contains(&self.max_connections) {
            return Err("database.max_connections: between 1 and 100".into());
        }
        for (name, d) in [
            ("acquire_timeout", &self.acquire_timeout),
            ("statement_timeout", &self.statement_timeout),
            (
                "idle_in_transaction_timeout",
                &self.idle_in_transaction_timeout,
            ),
            ("idle_timeout", &self.idle_timeout),
        ] {
            if d.0 < time::Duration::milliseconds(100) {
                return Err(format!("database.{name}: at least 100ms"));
            }
        }
        Ok(())
    }
}

fn std_duration(d: &HumanDuration) -> Duration {
    Duration::from_millis(u64::try_from(d.0.whole_milliseconds()).unwrap_or(u64::MAX))
}

/// The URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match PgConnectOptions::from_str(url) {
        Ok(o) => format!(
            "postgres://{}@{}:{}/{}",
            o.get_username(),
            o.get_host(),
            o.get_port(),
            o.get_database().unwrap_or("")
        ),
        Err(_) => "postgres://(unparsable URL)".into(),
    }
}

/// A [`Store`] on a PostgreSQL database.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    options: PgConnectOptions,
}

/// Names the database only: the connect options hold its password.
impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("host", &self.options.get_host())
            .field("port", &self.options.get_port())
            .field("database", &self.options.get_database())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects without looking at the schema (for `migrate` and `init`).
    pub async fn connect(url: &str, settings: &PgSettings) -> Result<PgStore, StoreError> {
        let ms = |d: &HumanDuration| d.0.whole_milliseconds().to_string();
        let options = PgConnectOptions::from_str(url)?
            .application_name("ca-server")
            .options([
                ("statement_timeout", ms(&settings.statement_timeout)),
                (
                    "idle_in_transaction_session_timeout",
                    ms(&settings.idle_in_transaction_timeout),
                ),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .min_connections(0)
            .acquire_timeout(std_duration(&settings.acquire_timeout))
            .idle_timeout(Some(std_duration(&settings.idle_timeout)))
            .connect_with(options.clone())
            .await?;
        Ok(PgStore { pool, options })
    }

    /// Connects and checks that the schema is exactly the one this build knows (a server never
    /// migrates by itself: several replicas of different versions may share the database).
    pub async fn open(url: &str, settings: &PgSettings) -> Result<PgStore, StoreError> {
        let store = PgStore::connect(url, settings).await?;
        if let Err(e) = store.check_schema().await {
            store.close().await;
            return Err(e);
        }
        Ok(store)
    }

    /// `Ok` when the applied migrations are exactly those this build embeds.
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        sql::check_schema_version(applied_version(&self.pool).await?, &MIGRATOR)
    }

    /// Applies pending migrations (under sqlx's advisory lock, so concurrent runs queue);
    /// refuses a schema newer than this build. Returns the versions before and after.
    pub async fn migrate(&self) -> Result<(i64, i64), StoreError> {
        let before = applied_version(&self.pool).await?;
        if let Err(e @ StoreError::SchemaTooNew { .. }) =
            sql::check_schema_version(before, &MIGRATOR)
        {
            return Err(e);
        }
        MIGRATOR.run(&self.pool).await?;
        Ok((before, applied_version(&self.pool).await?))
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// One issuance as one statement: the token's use ([`sql::SPEND_USE`] with the token as `$19`
/// and the time as `$20`), the certificate row ([`sql::INSERT_CERTIFICATE`], only once the use
/// is spent) and its audit entry (`$21`..`$30`, only once the row is in), so an item costs one
/// round trip. It answers how many uses it spent and the audit entry's id, if one was written.
const COMMIT_ONE: &str = "WITH spent AS (\
     UPDATE tokens SET uses = uses + 1 \
     WHERE id = $19 AND revoked_at IS NULL AND expires_at > $20 AND uses < max_uses \
     RETURNING id), \
     cert AS (\
     INSERT INTO certificates (serial, issuer_id, env, service, spiffe_id, dns_names, \
     ip_addresses, key_type, key_fingerprint, fingerprint, not_before, not_after, cert_pem, \
     issued_via, issued_by, created_at, revoked_at, revocation_reason) \
     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18 \
     WHERE ($19::TEXT IS NULL OR EXISTS (SELECT 1 FROM spent)) \
     AND EXISTS (SELECT 1 FROM serials WHERE serial = $1) \
     AND EXISTS (SELECT 1 FROM authorities WHERE id = $2 AND revoked_at IS NULL) \
     ON CONFLICT DO NOTHING RETURNING serial), \
     audit AS (\
     INSERT INTO audit_log (at, actor, action, env, service, serial, result, reason, \
     prev_hash, entry_hash) \
     SELECT $21, $22, $23, $24, $25, $26, $27, $28, $29, $30 \
     WHERE EXISTS (SELECT 1 FROM cert) RETURNING id) \
     SELECT (SELECT COUNT(*) FROM spent) AS spent, (SELECT id FROM audit) AS audit_id";

/// One issuance of a batch ([`COMMIT_ONE`]). A refused item (inner error) leaves nothing
/// behind: a use spent for a row that was then refused is given back in the same transaction,
/// and the refusal is named as the SQLite writer names it ([`sql::refusal`]). An outer error
/// fails the whole batch.
async fn commit_one(
    conn: &mut DbConn,
    chain: &mut sql::Chain,
    item: &Issuance,
) -> Result<Result<(), StoreError>, StoreError> {
    use sqlx::Row;
    let c = &item.cert;
    let e = &item.audit;
    let hash = super::audit_hash(&chain.last_hash, e);
    let q = bind_certificate(sqlx::query(COMMIT_ONE), c)
        .bind(item.token.as_ref().map(|t| t.id.as_str()))
        .bind(item.token.as_ref().map(|t| t.at));
    let row = bind_audit(q, e, &chain.last_hash, &hash)
        .fetch_one(&mut *conn)
        .await?;
    let spent: i64 = row.try_get("spent")?;
    if let Some(id) = row.try_get::<Option<i64>, _>("audit_id")? {
        chain.last_id = id;
        chain.last_hash = hash;
        return Ok(Ok(()));
    }
    if let Some(t) = &item.token {
        if spent == 0 {
            return Ok(Err(StoreError::TokenUsedUp(t.id.clone())));
        }
        sqlx::query(sql::GIVE_BACK_USE)
            .bind(&t.id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Err(certificate_refusal(conn, c).await?))
}

/// [`Store::commit_issuances`]: one transaction over the pool, one round trip per item (the
/// SQLite backend runs the same rules on its writer thread).
async fn commit_issuances_in(
    pool: &PgPool,
    batch: &[Issuance],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut tx = pool.begin().await?;
    let mut chain = lock_chain(&mut tx).await?;
    let mut done = Vec::with_capacity(batch.len());
    for i in sql::commit_order(batch) {
        done.push((i, commit_one(&mut tx, &mut chain, &batch[i]).await?));
    }
    save_chain(&mut tx, &chain).await?;
    tx.commit().await?;
    Ok(sql::in_batch_order(done))
}

sql_store!(PgStore, sqlx::Postgres, {
    fn shared_by_servers(&self) -> bool {
        true
    }

    async fn commit_issuances(
        &self,
        batch: &[Issuance],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        commit_issuances_in(&self.pool, batch).await
    }

    async fn reserve_serials(&self, serials: &[Serial], at: i64) -> Result<(), StoreError> {
        // The whole block in one statement (one round trip, not one per serial).
        let hex: Vec<String> = serials.iter().map(Serial::to_hex).collect();
        let mut tx = self.pool.begin().await?;
        let reserved: Vec<String> = sqlx::query_scalar(
            "INSERT INTO serials (serial, reserved_at) SELECT s, $2 FROM UNNEST($1::text[]) AS s \
             ON CONFLICT DO NOTHING RETURNING serial",
        )
        .bind(&hex)
        .bind(at)
        .fetch_all(&mut *tx)
        .await?;
        let mut left = reserved;
        for serial in &hex {
            match left.iter().position(|r| r == serial) {
                Some(i) => {
                    left.swap_remove(i);
                }
                // Dropping the transaction rolls the whole block back.
                None => return Err(sql::serial_taken(serial)),
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn watch_revocations(&self, hook: ChangeHook) -> Result<bool, StoreError> {
        // Its own connection: LISTEN holds it for as long as the server runs.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(self.options.clone());
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(REVOCATION_CHANNEL).await?;
        tokio::spawn(async move {
            loop {
                match listener.try_recv().await {
                    Ok(Some(_)) => hook(),
                    // The connection dropped and will be re-established: notices may be lost.
                    Ok(None) => hook(),
                    Err(e) => {
                        tracing::warn!(error = %e, "revocation notices interrupted; retrying");
                        hook();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(true)
    }
});

#[cfg(test)]
#[path = "../../../tests/support/postgres.rs"]
#[allow(missing_docs)]
mod temp_postgres;

#[cfg(test)]
mod tests {
    use super::*;

    use super::temp_postgres;

    #[test]
    fn migrations_have_the_same_versions_on_both_backends() {
        let versions = |m: &Migrator| -> Vec<(i64, String)> {
            m.iter()
                .map(|m| (m.version, m.description.to_string()))
                .collect()
        };
        let sqlite = versions(&super::super::sqlite::MIGRATOR);
        assert!(!sqlite.is_empty());
        assert_eq!(sqlite, versions(&MIGRATOR));
    }

    #[test]
    fn redacted_urls_carry_no_password() {
        let r = redact_url("postgres://ca:s3cret@db.internal:5433/ca");
        assert_eq!(r, "postgres://ca@db.internal:5433/ca");
        assert!(!redact_url("postgres://ca:s3cret@[::1/ca").contains("s3cret"));
    }

    #[tokio::test]
    async fn debug_names_the_database_but_not_its_password() {
        let options =
            PgConnectOptions::from_str("postgres://ca:s3cret-db-pass@db.internal:5433/ca")
                .expect("url");
        let store = PgStore {
            pool: PgPoolOptions::new().connect_lazy_with(options.clone()),
            options,
        };
        let shown = format!("{store:?} {store:#?}");
        assert!(!shown.contains("s3cret-db-pass"), "{shown}");
        assert!(shown.contains("db.internal"), "{shown}");
    }

    /// Two servers on one database, their clocks frozen so a cached OCSP answer never expires
    /// by time: a revocation through one must still change the other's answer at once, through
    /// the NOTIFY sent inside the revoke transaction.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revocation_on_one_server_drops_cached_ocsp_answers_on_another() {
        use crate::service::{Ca, CaLifetimes, CaOptions, IssueInput, RevokeInput, RevokeTarget};
        use std::sync::Arc;
        let pg = temp_postgres::TempPostgres::start();
        let url = pg.create_database("ocsp");
        let settings = PgSettings::default();
        let store = PgStore::connect(&url, &settings).await.expect("connect");
        store.migrate().await.expect("migrate");
        let policy =
            crate::policy::Policy::from_toml(crate::service::testing::POLICY, "example.toml")
                .expect("policy");
        let now = time::OffsetDateTime::now_utc();
        let built = crate::service::build_ca(
            &policy,
            "example.toml",
            None,
            CaLifetimes::default(),
            &["localhost".to_string()],
            false,
            now,
            "test",
        )
        .expect("build");
        store.initialize(&built.new_ca).await.expect("init");
        let mut servers = Vec::new();
        for _ in 0..2 {
            let store = PgStore::connect(&url, &settings).await.expect("connect");
            let ca = Ca::open(
                Arc::new(store),
                Arc::new(crate::clock::ManualClock::new(now)),
                policy.clone(),
                None,
                CaOptions::default(),
            )
            .await
            .expect("open");
            let ca = Arc::new(ca);
            assert!(ca.watch_revocations().await.expect("listen"));
            servers.push(ca);
        }
        let (a, b) = (&servers[0], &servers[1]);

        let csr = crate::service::testing::p256_csr_pem().into_bytes();
        let leaf = a
            .issue(IssueInput {
                identity: crate::pki::Identity {
                    env: "dev".into(),
                    service: "api".into(),
                },
                dns: vec![],
                ips: vec![],
                ttl: None,
                csr,
                via: crate::store::IssuedVia::Cli,
                actor: "cli:test".into(),
            })
            .await
            .expect("issue");
        // A request without a nonce (cacheable), made by openssl.
        let dir = tempfile::tempdir().expect("tmp");
        let issuer = dir.path().join("issuer.pem");
        let chain = pem::parse_many(leaf.chain_pem.as_bytes()).expect("chain");
        std::fs::write(&issuer, pem::encode(&chain[1])).expect("issuer");
        let req = dir.path().join("req.der");
        let made = std::process::Command::new("openssl")
            .args(["ocsp", "-no_nonce", "-issuer"])
            .arg(&issuer)
            .arg("-serial")
            .arg(format!("0x{}", leaf.record.serial))
            .arg("-reqout")
            .arg(&req)
            .output()
            .expect("openssl (scripts/test.sh installs it)");
        assert!(made.status.success(), "{made:?}");
        let req = std::fs::read(&req).expect("request");
        let status = |der: Vec<u8>| {
            let resp = dir.path().join("resp.der");
            std::fs::write(&resp, der).expect("response");
            let out = std::process::Command::new("openssl")
                .args(["ocsp", "-noverify", "-resp_text", "-respin"])
                .arg(&resp)
                .output()
                .expect("openssl");
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            text.lines()
                .find_map(|l| l.trim().strip_prefix("Cert Status: "))
                .unwrap_or("none")
                .to_string()
        };
        assert_eq!(status(b.ocsp(&req).await), "good");
        assert_eq!(status(b.ocsp(&req).await), "good", "from the cache");

        a.revoke(RevokeInput {
            target: RevokeTarget::Serial(leaf.record.serial.parse().expect("serial")),
            reason: crate::pki::RevocationReason::KeyCompromise,
            actor: "cli:test".into(),
            dry_run: false,
        })
        .await
        .expect("revoke");
        let started = std::time::Instant::now();
        loop {
            let now_status = status(b.ocsp(&req).await);
            if now_status == "revoked" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the other server still answers {now_status}: its cache was not dropped"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "the other server answered revoked after {:?}",
            started.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_passes_the_conformance_suite() {
        let pg = temp_postgres::TempPostgres::start();
        let url = pg.create_database("conformance");
        let settings = PgSettings::default();
        match PgStore::open(&url, &settings).await {
            Err(StoreError::SchemaOutdated { found: 0, .. }) => {}
            other => panic!("an empty database must need `migrate`, got {other:?}"),
        }
        let store = PgStore::connect(&url, &PgSettings::for_migrations())
            .await
            .expect("connect");
        let limit: String = sqlx::query_scalar("SHOW statement_timeout")
            .fetch_one(&store.pool)
            .await
            .expect("show");
        assert_eq!(limit, "0", "migrations run without a statement limit");
        let (before, after) = store.migrate().await.expect("migrate");
        store.close().await;
        let store = PgStore::connect(&url, &settings).await.expect("connect");
        let limit: String = sqlx::query_scalar("SHOW statement_timeout")
            .fetch_one(&store.pool)
            .await
            .expect("show");
        assert_eq!(limit, "10s", "servers keep theirs");
        assert_eq!(before, 0);
        assert_eq!(store.migrate().await.expect("again"), (after, after));
        store.check_schema().await.expect("current");
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        assert!(
            store
                .watch_revocations(std::sync::Arc::new(move || {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }))
                .await
                .expect("listen")
        );
        crate::store::conformance::run(&store).await;
        // The conformance suite revokes certificates: each announced to listeners.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while seen.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "revocations were not announced"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for raw in [
            "DELETE FROM audit_log",
            "UPDATE audit_log SET result = 'ok'",
            "TRUNCATE audit_log",
        ] {
            assert!(
                sqlx::query(raw).execute(&store.pool).await.is_err(),
                "{raw} went through on the append-only audit log"
            );
        }
        // A schema from a newer build is refused with a clear message.
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (9999, 'from the future', TRUE, '\\x00', 0)",
        )
        .execute(&store.pool)
        .await
        .expect("fake a newer migration");
        let err = PgStore::open(&url, &settings)
            .await
            .expect_err("newer schema");
        assert!(
            matches!(err, StoreError::SchemaTooNew { found: 9999, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("upgrade ca-server"), "{err}");
        assert!(matches!(
            store.migrate().await,
            Err(StoreError::SchemaTooNew { .. })
        ));
        store.close().await;
    }
}
