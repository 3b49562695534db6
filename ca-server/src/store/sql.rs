//! The SQL both backends share. The statements use `$N` parameters, BIGINT-compatible integers
//! and JSON text lists, which SQLite and PostgreSQL read alike, so [`sql_store!`] writes the
//! [`super::Store`] implementation once for each backend's concrete sqlx types. A backend module
//! invoking it provides `MIGRATOR` (its embedded migrations), `MIGRATIONS_TABLE_SQL` (a query
//! returning one row when sqlx's migration table exists), `REVOKE_NOTIFY` (an optional statement
//! run inside every revocation's transaction with the serial as `$1`), `LONG_TRANSACTION` (an
//! optional statement that lets the CRL transaction, which signs, outlive the idle timeout) and a
//! `pool` field on the store; the tokens given to the macro are the backend's own trait methods,
//! which include `commit_issuances` (SQLite runs a batch on its writer thread, PostgreSQL one
//! statement per item; both use the statements and the refusal rule defined here) and
//! `reserve_serials` (a block on SQLite's writer thread, or in one PostgreSQL statement).
//!
//! Rules the shared statements keep on both backends: no statement inside a batch is allowed to
//! fail (PostgreSQL aborts the whole transaction on a failed statement), so conflicts are
//! detected with `ON CONFLICT DO NOTHING` and conditions instead of caught errors; rows locked
//! by a batch are locked in one global order (token ids sorted), so two servers committing
//! batches at once cannot deadlock.

/// Whether `e` is a uniqueness violation.
pub(super) fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// The end of the audit chain as a transaction holds it.
pub(super) struct Chain {
    pub(super) last_id: i64,
    pub(super) last_hash: String,
}

/// JSON text of a list of strings.
pub(super) fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

/// A JSON text list read back.
pub(super) fn parse_list(col: &str, s: &str) -> Result<Vec<String>, super::StoreError> {
    serde_json::from_str(s)
        .map_err(|_| super::StoreError::Corrupt(format!("{col} is not a JSON list")))
}

// The statements below also run on SQLite's writer thread through rusqlite, which binds by
// position: SQLite numbers a `$N` parameter by the order of its first appearance, so in each of
// them `$1`, `$2`, ... first appear in that order (a test checks it).

/// Reserves serial `$1` at `$2`; inserts nothing if it was ever used (a certificate's, an
/// authority's, or an earlier reservation).
pub(super) const RESERVE_SERIAL: &str =
    "INSERT INTO serials (serial, reserved_at) VALUES ($1, $2) ON CONFLICT DO NOTHING";

/// The refusal of a block of serials of which `serial` was taken: nothing of it is reserved.
pub(super) fn serial_taken(serial: &str) -> super::StoreError {
    super::StoreError::Conflict(format!("serial {serial} already used"))
}

/// Spends one use of token `$1` if it is usable at `$2`: one conditional UPDATE, whose row lock
/// makes check and increment one step for every server on the database.
pub(super) const SPEND_USE: &str = "UPDATE tokens SET uses = uses + 1 \
     WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2 AND uses < max_uses";

/// Gives back the use of token `$1` spent for an item that was then refused.
pub(super) const GIVE_BACK_USE: &str = "UPDATE tokens SET uses = uses - 1 WHERE id = $1";

/// Inserts a certificate row if its serial is reserved, its issuer exists unrevoked and neither
/// its serial nor its fingerprint is stored yet; otherwise inserts nothing (no statement fails,
/// so an enclosing transaction stays usable) and [`refusal`] names the rule.
pub(super) const INSERT_CERTIFICATE: &str = "INSERT INTO certificates (serial, issuer_id, env, \
     service, spiffe_id, dns_names, ip_addresses, key_type, key_fingerprint, fingerprint, \
     not_before, not_after, cert_pem, issued_via, issued_by, created_at, revoked_at, \
     revocation_reason) \
     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18 \
     WHERE EXISTS (SELECT 1 FROM serials WHERE serial = $1) \
     AND EXISTS (SELECT 1 FROM authorities WHERE id = $2 AND revoked_at IS NULL) \
     ON CONFLICT DO NOTHING";

/// Whether a certificate with serial `$1` or fingerprint `$2` is stored (for [`refusal`]).
pub(super) const FIND_STORED: &str =
    "SELECT serial FROM certificates WHERE serial = $1 OR fingerprint = $2";

/// When authority `$1` was revoked (for [`refusal`]).
pub(super) const ISSUER_REVOKED_AT: &str = "SELECT revoked_at FROM authorities WHERE id = $1";

/// Appends an audit entry linked to the chain's end, returning its id.
pub(super) const INSERT_AUDIT: &str = "INSERT INTO audit_log (at, actor, action, env, service, \
     serial, result, reason, prev_hash, entry_hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id";

/// Moves the chain's end (the head row) to `$1`, `$2`.
pub(super) const SAVE_CHAIN: &str =
    "UPDATE audit_head SET last_id = $1, last_hash = $2 WHERE id = 1";

/// Why [`INSERT_CERTIFICATE`] inserted nothing for `c`: its serial or fingerprint is `stored`
/// already, or its issuer is revoked (`issuer_revoked_at` is the issuer's `revoked_at`, `None`
/// when there is no such issuer), or else its serial was never reserved or its issuer is unknown.
pub(super) fn refusal(
    c: &super::CertificateRecord,
    stored: bool,
    issuer_revoked_at: Option<Option<i64>>,
) -> super::StoreError {
    use super::StoreError;
    if stored {
        StoreError::Conflict(format!("certificate {} already stored", c.serial))
    } else if let Some(Some(_)) = issuer_revoked_at {
        StoreError::IssuerRevoked(c.issuer_id.clone())
    } else {
        StoreError::NotFound(format!(
            "serial {} was not reserved, or issuer {:?} is unknown",
            c.serial, c.issuer_id
        ))
    }
}

/// The order in which a batch's items are written: by token id (items without a token first),
/// stable otherwise, so every server locks token rows in the same order.
pub(super) fn commit_order(batch: &[super::Issuance]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| batch[i].token.as_ref().map(|t| t.id.as_str());
        key(a).cmp(&key(b))
    });
    order
}

/// Item outcomes produced in [`commit_order`], each with its index, back in batch order.
pub(super) fn in_batch_order<T>(mut done: Vec<(usize, T)>) -> Vec<T> {
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, outcome)| outcome).collect()
}

/// Checks the applied schema against the migrations this build embeds: `SchemaTooNew` when the
/// database is ahead, `SchemaOutdated` when it is behind.
pub(super) fn check_schema_version(
    applied: i64,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), super::StoreError> {
    let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    match applied.cmp(&known) {
        std::cmp::Ordering::Greater => Err(super::StoreError::SchemaTooNew {
            found: applied,
            known,
        }),
        std::cmp::Ordering::Less => Err(super::StoreError::SchemaOutdated {
            found: applied,
            needed: known,
        }),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

/// Writes `impl Store for $store` over database `$db`; see the module docs.
macro_rules! sql_store {
    ($store:ty, $db:ty, { $($own:tt)* }) => {
        type DbRow = <$db as sqlx::Database>::Row;
        type DbConn = <$db as sqlx::Database>::Connection;

        /// The newest migration applied to the database at `pool` (0 for an empty database).
        async fn applied_version(pool: &sqlx::Pool<$db>) -> Result<i64, StoreError> {
            let exists = sqlx::query(MIGRATIONS_TABLE_SQL).fetch_optional(pool).await?;
            if exists.is_none() {
                return Ok(0);
            }
            let v: Option<i64> =
                sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                    .fetch_one(pool)
                    .await?;
            Ok(v.unwrap_or(0))
        }

        fn authority_from_row(r: &DbRow) -> Result<AuthorityRecord, StoreError> {
            use sqlx::Row;
            let kind: String = r.try_get("kind")?;
            Ok(AuthorityRecord {
                id: r.try_get("id")?,
                kind: match kind.as_str() {
                    "root" => AuthorityKind::Root,
                    "intermediate" => AuthorityKind::Intermediate,
                    "tls" => AuthorityKind::Tls,
                    other => {
                        return Err(StoreError::Corrupt(format!("authority kind {other:?}")));
                    }
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
                generation: r.try_get("generation")?,
                activates_at: r.try_get("activates_at")?,
                retired_at: r.try_get("retired_at")?,
                revoked_at: r.try_get("revoked_at")?,
                revocation_reason: r.try_get("revocation_reason")?,
            })
        }

        /// Inserts an authority (its serial reserved first, so no certificate can ever share it).
        async fn insert_authority(conn: &mut DbConn, a: &AuthorityRecord) -> Result<(), StoreError> {
            sqlx::query("INSERT INTO serials (serial, reserved_at) VALUES ($1, $2)")
                .bind(&a.serial)
                .bind(a.created_at)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "INSERT INTO authorities (id, kind, env, parent_id, serial, subject, cert_pem, \
                 sealed_key, fingerprint, not_before, not_after, created_at, generation, \
                 activates_at, retired_at, revoked_at, revocation_reason) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
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
            .bind(a.generation)
            .bind(a.activates_at)
            .bind(a.retired_at)
            .bind(a.revoked_at)
            .bind(&a.revocation_reason)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }

        fn acme_account_from_row(r: &DbRow) -> Result<AcmeAccount, StoreError> {
            use sqlx::Row;
            Ok(AcmeAccount {
                id: r.try_get("id")?,
                env: r.try_get("env")?,
                service: r.try_get("service")?,
                jwk: r.try_get("jwk")?,
                thumbprint: r.try_get("thumbprint")?,
                status: r.try_get("status")?,
                contact: sql::parse_list("contact", &r.try_get::<String, _>("contact")?)?,
                eab_kid: r.try_get("eab_kid")?,
                created_at: r.try_get("created_at")?,
            })
        }

        fn acme_order_from_row(r: &DbRow) -> Result<AcmeOrderRow, StoreError> {
            use sqlx::Row;
            Ok(AcmeOrderRow {
                id: r.try_get("id")?,
                account_id: r.try_get("account_id")?,
                env: r.try_get("env")?,
                status: r.try_get("status")?,
                expires_at: r.try_get("expires_at")?,
                document: r.try_get("document")?,
                version: r.try_get("version")?,
                cert_serial: r.try_get("cert_serial")?,
                created_at: r.try_get("created_at")?,
            })
        }

        fn certificate_from_row(r: &DbRow) -> Result<CertificateRecord, StoreError> {
            use sqlx::Row;
            let via: String = r.try_get("issued_via")?;
            let dns: String = r.try_get("dns_names")?;
            let ips: String = r.try_get("ip_addresses")?;
            Ok(CertificateRecord {
                serial: r.try_get("serial")?,
                issuer_id: r.try_get("issuer_id")?,
                env: r.try_get("env")?,
                service: r.try_get("service")?,
                spiffe_id: r.try_get("spiffe_id")?,
                dns_names: sql::parse_list("dns_names", &dns)?,
                ip_addresses: sql::parse_list("ip_addresses", &ips)?,
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

        fn token_from_row(r: &DbRow) -> Result<TokenRecord, StoreError> {
            use sqlx::Row;
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

        fn audit_from_row(r: &DbRow) -> Result<AuditEntry, StoreError> {
            use sqlx::Row;
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

        /// The end of the audit chain, locked until the transaction ends (a no-op UPDATE takes
        /// the row lock on both backends), so appends chain in commit order on every server.
        async fn lock_chain(conn: &mut DbConn) -> Result<sql::Chain, StoreError> {
            use sqlx::Row;
            let row = sqlx::query(
                "UPDATE audit_head SET last_id = last_id WHERE id = 1 RETURNING last_id, last_hash",
            )
            .fetch_one(&mut *conn)
            .await?;
            Ok(sql::Chain {
                last_id: row.try_get("last_id")?,
                last_hash: row.try_get("last_hash")?,
            })
        }

        async fn save_chain(conn: &mut DbConn, chain: &sql::Chain) -> Result<(), StoreError> {
            sqlx::query(sql::SAVE_CHAIN)
                .bind(chain.last_id)
                .bind(&chain.last_hash)
                .execute(&mut *conn)
                .await?;
            Ok(())
        }

        /// Appends `e` to the chain held by `chain` (see [`lock_chain`]).
        async fn insert_audit(
            conn: &mut DbConn,
            chain: &mut sql::Chain,
            e: &AuditEntry,
        ) -> Result<(), StoreError> {
            use sqlx::Row;
            let hash = super::audit_hash(&chain.last_hash, e);
            let id: i64 = bind_audit(sqlx::query(sql::INSERT_AUDIT), e, &chain.last_hash, &hash)
                .fetch_one(&mut *conn)
                .await?
                .try_get("id")?;
            chain.last_id = id;
            chain.last_hash = hash;
            Ok(())
        }

        /// Appends one entry in its own transaction.
        async fn append_one(conn: &mut DbConn, e: &AuditEntry) -> Result<(), StoreError> {
            let mut chain = lock_chain(conn).await?;
            insert_audit(conn, &mut chain, e).await?;
            save_chain(conn, &chain).await
        }

        /// `q` with the certificate's columns bound as `$1`..`$18`, in
        /// [`sql::INSERT_CERTIFICATE`]'s order.
        fn bind_certificate<'q>(
            q: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments>,
            c: &'q CertificateRecord,
        ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments> {
            q.bind(&c.serial)
                .bind(&c.issuer_id)
                .bind(&c.env)
                .bind(&c.service)
                .bind(&c.spiffe_id)
                .bind(sql::json_list(&c.dns_names))
                .bind(sql::json_list(&c.ip_addresses))
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
        }

        /// `q` with audit entry `e` bound as ten parameters in [`sql::INSERT_AUDIT`]'s order,
        /// linked after `prev_hash` and carrying `hash`.
        fn bind_audit<'q>(
            q: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments>,
            e: &'q AuditEntry,
            prev_hash: &'q str,
            hash: &'q str,
        ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments> {
            q.bind(e.at)
                .bind(&e.actor)
                .bind(&e.action)
                .bind(&e.env)
                .bind(&e.service)
                .bind(&e.serial)
                .bind(e.result.as_str())
                .bind(&e.reason)
                .bind(prev_hash)
                .bind(hash)
        }

        /// Why certificate `c` was not inserted ([`sql::refusal`]), read in the same transaction.
        async fn certificate_refusal(
            conn: &mut DbConn,
            c: &CertificateRecord,
        ) -> Result<StoreError, StoreError> {
            let stored: Option<String> = sqlx::query_scalar(sql::FIND_STORED)
                .bind(&c.serial)
                .bind(&c.fingerprint)
                .fetch_optional(&mut *conn)
                .await?;
            let issuer_revoked_at: Option<Option<i64>> =
                sqlx::query_scalar(sql::ISSUER_REVOKED_AT)
                    .bind(&c.issuer_id)
                    .fetch_optional(&mut *conn)
                    .await?;
            Ok(sql::refusal(c, stored.is_some(), issuer_revoked_at))
        }

        /// Inserts a certificate row ([`sql::INSERT_CERTIFICATE`]); when it is refused, writes
        /// nothing and names the rule ([`sql::refusal`]).
        async fn insert_certificate_row(
            conn: &mut DbConn,
            c: &CertificateRecord,
        ) -> Result<(), StoreError> {
            let done = bind_certificate(sqlx::query(sql::INSERT_CERTIFICATE), c)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 1 {
                return Ok(());
            }
            Err(certificate_refusal(conn, c).await?)
        }

        /// Spends one use of token `id` if it is usable at `at` ([`sql::SPEND_USE`]).
        async fn spend_use<'e, E>(exec: E, id: &str, at: i64) -> Result<bool, StoreError>
        where
            E: sqlx::Executor<'e, Database = $db>,
        {
            let done = sqlx::query(sql::SPEND_USE)
            .bind(id)
            .bind(at)
            .execute(exec)
            .await?;
            Ok(done.rows_affected() == 1)
        }

        #[async_trait]
        impl Store for $store {
            $($own)*

            async fn initialize(&self, ca: &NewCa) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                let s = &ca.settings;
                let res = sqlx::query(
                    "INSERT INTO ca_settings (id, trust_domain, policy_path, keys_sealed, root_offline, \
                     server_names, created_at, policy_sha256, audit_key) \
                     VALUES (1, $1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&s.trust_domain)
                .bind(&s.policy_path)
                .bind(i64::from(s.keys_sealed))
                .bind(i64::from(s.root_offline))
                .bind(sql::json_list(&s.server_names))
                .bind(s.created_at)
                .bind(&s.policy_sha256)
                .bind(&s.audit_key)
                .execute(&mut *tx)
                .await;
                match res {
                    Err(e) if sql::unique_violation(&e) => {
                        return Err(StoreError::Conflict(
                            "this database already holds a CA".into(),
                        ));
                    }
                    r => {
                        r?;
                    }
                }
                for a in &ca.authorities {
                    insert_authority(&mut tx, a).await?;
                }
                append_one(&mut tx, &ca.audit).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn settings(&self) -> Result<Option<CaSettings>, StoreError> {
                use sqlx::Row;
                let row = sqlx::query(
                    "SELECT trust_domain, policy_path, keys_sealed, root_offline, server_names, \
                     created_at, policy_sha256, audit_key FROM ca_settings WHERE id = 1",
                )
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| -> Result<CaSettings, StoreError> {
                    Ok(CaSettings {
                        trust_domain: r.try_get("trust_domain")?,
                        policy_path: r.try_get("policy_path")?,
                        keys_sealed: r.try_get::<i64, _>("keys_sealed")? != 0,
                        root_offline: r.try_get::<i64, _>("root_offline")? != 0,
                        server_names: sql::parse_list(
                            "server_names",
                            &r.try_get::<String, _>("server_names")?,
                        )?,
                        created_at: r.try_get("created_at")?,
                        policy_sha256: r.try_get("policy_sha256")?,
                        audit_key: r.try_get("audit_key")?,
                    })
                })
                .transpose()
            }

            async fn authorities(&self) -> Result<Vec<AuthorityRecord>, StoreError> {
                let rows = sqlx::query(
                    "SELECT * FROM authorities ORDER BY kind <> 'root', kind = 'tls', id",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(authority_from_row).collect()
            }

            async fn authority(&self, id: &str) -> Result<Option<AuthorityRecord>, StoreError> {
                let row = sqlx::query("SELECT * FROM authorities WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(authority_from_row).transpose()
            }

            async fn add_authority(&self, new: &NewAuthority) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                match insert_authority(&mut tx, &new.record).await {
                    Err(StoreError::Database(e)) if sql::unique_violation(&e) => {
                        return Err(StoreError::Conflict(format!(
                            "generation {} of {} exists already (another rotation got there first)",
                            new.record.generation,
                            new.record.lineage()
                        )));
                    }
                    r => r?,
                }
                for c in &new.cross {
                    sqlx::query("INSERT INTO serials (serial, reserved_at) VALUES ($1, $2)")
                        .bind(&c.serial)
                        .bind(c.created_at)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "INSERT INTO cross_certificates (subject_id, issuer_id, serial, cert_pem, \
                         not_before, not_after, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .bind(&c.subject_id)
                    .bind(&c.issuer_id)
                    .bind(&c.serial)
                    .bind(&c.cert_pem)
                    .bind(c.not_before)
                    .bind(c.not_after)
                    .bind(c.created_at)
                    .execute(&mut *tx)
                    .await?;
                }
                for (id, at) in &new.retire {
                    sqlx::query("UPDATE authorities SET retired_at = $1 WHERE id = $2")
                        .bind(at)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                if let Some((id, at, reason)) = &new.revoke {
                    let done = sqlx::query(
                        "UPDATE authorities SET revoked_at = $1, revocation_reason = $2 \
                         WHERE id = $3 AND revoked_at IS NULL",
                    )
                    .bind(at)
                    .bind(reason)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() != 1 {
                        return Err(StoreError::Conflict(format!(
                            "authority {id} is unknown or revoked already"
                        )));
                    }
                }
                append_one(&mut tx, &new.audit).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn retire_authority(&self, id: &str, at: i64) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "UPDATE authorities SET retired_at = $1 WHERE id = $2 AND retired_at IS NULL",
                )
                .bind(at)
                .bind(id)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn issuer_leaves(
                &self,
                now: i64,
            ) -> Result<std::collections::BTreeMap<String, IssuerLeaves>, StoreError> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT issuer_id, COUNT(*) AS unexpired, \
                     SUM(CASE WHEN revoked_at IS NULL THEN 1 ELSE 0 END) AS live \
                     FROM certificates WHERE not_after > $1 GROUP BY issuer_id",
                )
                .bind(now)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok((
                            r.try_get("issuer_id")?,
                            IssuerLeaves {
                                unexpired: r.try_get("unexpired")?,
                                live: r.try_get("live")?,
                            },
                        ))
                    })
                    .collect()
            }

            async fn acme_put_nonce(&self, nonce: &str, expires_at: i64) -> Result<(), StoreError> {
                sqlx::query("INSERT INTO acme_nonces (nonce, expires_at) VALUES ($1, $2)")
                    .bind(nonce)
                    .bind(expires_at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn acme_take_nonce(&self, nonce: &str, now: i64) -> Result<bool, StoreError> {
                let rows: Vec<i64> = sqlx::query_scalar(
                    "DELETE FROM acme_nonces WHERE nonce = $1 RETURNING expires_at",
                )
                .bind(nonce)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.first().is_some_and(|exp| *exp > now))
            }

            async fn acme_prune(&self, now: i64) -> Result<u64, StoreError> {
                let nonces = sqlx::query("DELETE FROM acme_nonces WHERE expires_at <= $1")
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                let orders = sqlx::query(
                    "DELETE FROM acme_orders WHERE (status <> 'valid' AND expires_at <= $1) \
                     OR (status = 'valid' AND cert_serial IN \
                         (SELECT serial FROM certificates WHERE not_after <= $1))",
                )
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(nonces.rows_affected() + orders.rows_affected())
            }

            async fn acme_create_account(
                &self,
                a: &AcmeAccount,
                audit: &AuditEntry,
            ) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                if let Some(kid) = &a.eab_kid {
                    let spent = sqlx::query(
                        "UPDATE acme_eab_keys SET used_at = $1, account_id = $2 \
                         WHERE kid = $3 AND env = $4 AND used_at IS NULL AND expires_at > $1",
                    )
                    .bind(a.created_at)
                    .bind(&a.id)
                    .bind(kid)
                    .bind(&a.env)
                    .execute(&mut *tx)
                    .await?;
                    if spent.rows_affected() != 1 {
                        return Err(StoreError::TokenUsedUp(kid.clone()));
                    }
                }
                let res = sqlx::query(
                    "INSERT INTO acme_accounts (id, env, service, jwk, thumbprint, status, contact, \
                     eab_kid, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&a.id)
                .bind(&a.env)
                .bind(&a.service)
                .bind(&a.jwk)
                .bind(&a.thumbprint)
                .bind(&a.status)
                .bind(sql::json_list(&a.contact))
                .bind(&a.eab_kid)
                .bind(a.created_at)
                .execute(&mut *tx)
                .await;
                match res {
                    Err(e) if sql::unique_violation(&e) => {
                        return Err(StoreError::Conflict(
                            "an account with this key exists already".into(),
                        ));
                    }
                    r => {
                        r?;
                    }
                }
                append_one(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn acme_account(&self, id: &str) -> Result<Option<AcmeAccount>, StoreError> {
                let row = sqlx::query("SELECT * FROM acme_accounts WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(acme_account_from_row).transpose()
            }

            async fn acme_account_by_key(
                &self,
                env: &str,
                thumbprint: &str,
            ) -> Result<Option<AcmeAccount>, StoreError> {
                let row =
                    sqlx::query("SELECT * FROM acme_accounts WHERE env = $1 AND thumbprint = $2")
                        .bind(env)
                        .bind(thumbprint)
                        .fetch_optional(&self.pool)
                        .await?;
                row.as_ref().map(acme_account_from_row).transpose()
            }

            async fn acme_update_account(
                &self,
                a: &AcmeAccount,
                audit: &AuditEntry,
            ) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                let res = sqlx::query(
                    "UPDATE acme_accounts SET status = $1, contact = $2, jwk = $3, thumbprint = $4 \
                     WHERE id = $5",
                )
                .bind(&a.status)
                .bind(sql::json_list(&a.contact))
                .bind(&a.jwk)
                .bind(&a.thumbprint)
                .bind(&a.id)
                .execute(&mut *tx)
                .await;
                match res {
                    Err(e) if sql::unique_violation(&e) => {
                        return Err(StoreError::Conflict(
                            "another account uses this key".into(),
                        ));
                    }
                    Ok(done) if done.rows_affected() != 1 => {
                        return Err(StoreError::NotFound(format!("no account {}", a.id)));
                    }
                    r => {
                        r?;
                    }
                }
                append_one(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn acme_accounts(&self, env: Option<&str>) -> Result<Vec<AcmeAccount>, StoreError> {
                let rows = sqlx::query(
                    "SELECT * FROM acme_accounts WHERE ($1 IS NULL OR env = $1) ORDER BY created_at, id",
                )
                .bind(env)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(acme_account_from_row).collect()
            }

            async fn acme_create_eab(
                &self,
                k: &AcmeEabKey,
                audit: &AuditEntry,
            ) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO acme_eab_keys (kid, env, service, created_at, expires_at, created_by, \
                     used_at, account_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&k.kid)
                .bind(&k.env)
                .bind(&k.service)
                .bind(k.created_at)
                .bind(k.expires_at)
                .bind(&k.created_by)
                .bind(k.used_at)
                .bind(&k.account_id)
                .execute(&mut *tx)
                .await?;
                append_one(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn acme_eab(&self, kid: &str) -> Result<Option<AcmeEabKey>, StoreError> {
                use sqlx::Row;
                let row = sqlx::query("SELECT * FROM acme_eab_keys WHERE kid = $1")
                    .bind(kid)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|r| -> Result<AcmeEabKey, StoreError> {
                    Ok(AcmeEabKey {
                        kid: r.try_get("kid")?,
                        env: r.try_get("env")?,
                        service: r.try_get("service")?,
                        created_at: r.try_get("created_at")?,
                        expires_at: r.try_get("expires_at")?,
                        created_by: r.try_get("created_by")?,
                        used_at: r.try_get("used_at")?,
                        account_id: r.try_get("account_id")?,
                    })
                })
                .transpose()
            }

            async fn acme_create_order(&self, o: &AcmeOrderRow) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO acme_orders (id, account_id, env, status, expires_at, document, \
                     version, cert_serial, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&o.id)
                .bind(&o.account_id)
                .bind(&o.env)
                .bind(&o.status)
                .bind(o.expires_at)
                .bind(&o.document)
                .bind(o.version)
                .bind(&o.cert_serial)
                .bind(o.created_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn acme_order(&self, id: &str) -> Result<Option<AcmeOrderRow>, StoreError> {
                let row = sqlx::query("SELECT * FROM acme_orders WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(acme_order_from_row).transpose()
            }

            async fn acme_save_order(
                &self,
                o: &AcmeOrderRow,
                expected: i64,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "UPDATE acme_orders SET status = $1, expires_at = $2, document = $3, \
                     version = $4, cert_serial = $5 WHERE id = $6 AND version = $7",
                )
                .bind(&o.status)
                .bind(o.expires_at)
                .bind(&o.document)
                .bind(o.version)
                .bind(&o.cert_serial)
                .bind(&o.id)
                .bind(expected)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn acme_orders_of(&self, account_id: &str) -> Result<Vec<String>, StoreError> {
                Ok(sqlx::query_scalar(
                    "SELECT id FROM acme_orders WHERE account_id = $1 ORDER BY created_at, id",
                )
                .bind(account_id)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn acme_order_by_cert(
                &self,
                serial: &str,
            ) -> Result<Option<AcmeOrderRow>, StoreError> {
                let row = sqlx::query("SELECT * FROM acme_orders WHERE cert_serial = $1")
                    .bind(serial)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(acme_order_from_row).transpose()
            }

            async fn cross_certificates(&self) -> Result<Vec<CrossCertificate>, StoreError> {
                use sqlx::Row;
                let rows = sqlx::query("SELECT * FROM cross_certificates ORDER BY created_at, serial")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok(CrossCertificate {
                            subject_id: r.try_get("subject_id")?,
                            issuer_id: r.try_get("issuer_id")?,
                            serial: r.try_get("serial")?,
                            cert_pem: r.try_get("cert_pem")?,
                            not_before: r.try_get("not_before")?,
                            not_after: r.try_get("not_after")?,
                            created_at: r.try_get("created_at")?,
                        })
                    })
                    .collect()
            }

            async fn insert_certificate(
                &self,
                c: &CertificateRecord,
                audit: &AuditEntry,
            ) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                insert_certificate_row(&mut tx, c).await?;
                append_one(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn certificate(
                &self,
                serial: &Serial,
            ) -> Result<Option<CertificateRecord>, StoreError> {
                let row = sqlx::query("SELECT * FROM certificates WHERE serial = $1")
                    .bind(serial.to_hex())
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(certificate_from_row).transpose()
            }

            async fn certificate_status(
                &self,
                serial: &Serial,
            ) -> Result<Option<CertificateStatus>, StoreError> {
                let row: Option<(String, Option<i64>, Option<String>)> = sqlx::query_as(
                    "SELECT issuer_id, revoked_at, revocation_reason FROM certificates \
                     WHERE serial = $1",
                )
                .bind(serial.to_hex())
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|(issuer_id, revoked_at, revocation_reason)| CertificateStatus {
                    issuer_id,
                    revoked_at,
                    revocation_reason,
                }))
            }

            async fn list_certificates(
                &self,
                f: &CertificateFilter,
            ) -> Result<Vec<CertificateRecord>, StoreError> {
                let rows = sqlx::query(
                    "SELECT * FROM certificates WHERE \
                     ($1 IS NULL OR env = $1) AND ($2 IS NULL OR service = $2) AND \
                     ($3 IS NULL OR ($3 = 'revoked' AND revoked_at IS NOT NULL) \
                         OR ($3 = 'valid' AND revoked_at IS NULL AND not_after > $4) \
                         OR ($3 = 'expired' AND revoked_at IS NULL AND not_after <= $4)) AND \
                     ($5 IS NULL OR not_after <= $5) \
                     ORDER BY created_at DESC, serial LIMIT $6",
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
                let mut tx = self.pool.begin().await?;
                append_one(&mut tx, entry).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn audit_entries(
                &self,
                since: Option<i64>,
                limit: u32,
            ) -> Result<Vec<AuditEntry>, StoreError> {
                let rows = sqlx::query(
                    "SELECT * FROM audit_log WHERE ($1 IS NULL OR at >= $1) ORDER BY id LIMIT $2",
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

            async fn count_live_certificates(
                &self,
                now: i64,
            ) -> Result<Vec<(String, i64)>, StoreError> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT env, COUNT(*) AS n FROM certificates \
                     WHERE revoked_at IS NULL AND not_after > $1 GROUP BY env ORDER BY env",
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
                    "INSERT INTO tokens (id, token_hash, env, service, max_uses, uses, created_at, \
                     expires_at, created_by, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
                    Err(e) if sql::unique_violation(&e) => {
                        Err(StoreError::Conflict(format!("token {} already exists", t.id)))
                    }
                    r => r.map(|_| ()).map_err(Into::into),
                }
            }

            async fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
                let row = sqlx::query("SELECT * FROM tokens WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(token_from_row).transpose()
            }

            async fn spend_token(&self, id: &str, now: i64) -> Result<bool, StoreError> {
                spend_use(&self.pool, id, now).await
            }

            async fn list_tokens(
                &self,
                usable_at: Option<i64>,
            ) -> Result<Vec<TokenRecord>, StoreError> {
                let rows = sqlx::query(
                    "SELECT * FROM tokens WHERE ($1 IS NULL OR (revoked_at IS NULL AND expires_at > $1 \
                     AND uses < max_uses)) ORDER BY created_at DESC, id",
                )
                .bind(usable_at)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(token_from_row).collect()
            }

            async fn revoke_token(&self, id: &str, at: i64) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                )
                .bind(at)
                .bind(id)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn prune_tokens(&self, before: i64) -> Result<u64, StoreError> {
                let done = sqlx::query("DELETE FROM tokens WHERE expires_at < $1")
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
                    "UPDATE certificates SET revoked_at = $1, revocation_reason = $2 \
                     WHERE serial = $3 AND revoked_at IS NULL",
                )
                .bind(at)
                .bind(reason)
                .bind(serial.to_hex())
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() != 1 {
                    let exists: Option<String> =
                        sqlx::query_scalar("SELECT serial FROM certificates WHERE serial = $1")
                            .bind(serial.to_hex())
                            .fetch_optional(&mut *tx)
                            .await?;
                    return Err(match exists {
                        Some(_) => {
                            StoreError::Conflict(format!("certificate {serial} is already revoked"))
                        }
                        None => StoreError::NotFound(format!("no certificate with serial {serial}")),
                    });
                }
                append_one(&mut tx, audit).await?;
                if let Some(notify) = REVOKE_NOTIFY {
                    sqlx::query(notify).bind(serial.to_hex()).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn revoked_entries(
                &self,
                issuer_id: &str,
                not_after_after: i64,
            ) -> Result<Vec<RevokedEntry>, StoreError> {
                revoked_entries_in(&self.pool, issuer_id, not_after_after).await
            }

            async fn generate_crl(
                &self,
                draft: &CrlDraft,
                sign: CrlSigner<'_>,
            ) -> Result<CrlRecord, StoreError> {
                let mut tx = self.pool.begin().await?;
                if let Some(setup) = LONG_TRANSACTION {
                    sqlx::query(setup).execute(&mut *tx).await?;
                }
                let number: i64 = sqlx::query_scalar(
                    "INSERT INTO crl_numbers (issuer_id, last_number) VALUES ($1, 1) \
                     ON CONFLICT (issuer_id) DO UPDATE SET last_number = crl_numbers.last_number + 1 \
                     RETURNING last_number",
                )
                .bind(&draft.issuer_id)
                .fetch_one(&mut *tx)
                .await?;
                let entries = match draft.entries_after {
                    Some(after) => revoked_entries_in(&mut *tx, &draft.issuer_id, after).await?,
                    None => revoked_authorities_in(&mut *tx, &draft.issuer_id).await?,
                };
                let der = sign(number, &entries).map_err(StoreError::Signing)?;
                sqlx::query(
                    "INSERT INTO crls (issuer_id, crl_number, this_update, next_update, der) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (issuer_id) DO UPDATE SET crl_number = excluded.crl_number, \
                     this_update = excluded.this_update, next_update = excluded.next_update, \
                     der = excluded.der WHERE excluded.crl_number > crls.crl_number",
                )
                .bind(&draft.issuer_id)
                .bind(number)
                .bind(draft.this_update)
                .bind(draft.next_update)
                .bind(&der)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(CrlRecord {
                    issuer_id: draft.issuer_id.clone(),
                    number,
                    this_update: draft.this_update,
                    next_update: draft.next_update,
                    der,
                })
            }

            async fn crl(&self, issuer_id: &str) -> Result<Option<CrlRecord>, StoreError> {
                use sqlx::Row;
                let row = sqlx::query("SELECT * FROM crls WHERE issuer_id = $1")
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

            async fn raise_crl_numbers(
                &self,
                floor: i64,
            ) -> Result<Vec<(String, i64)>, StoreError> {
                use sqlx::Row;
                let mut tx = self.pool.begin().await?;
                // `WHERE true` lets SQLite parse the upsert of an INSERT ... SELECT.
                sqlx::query(
                    "INSERT INTO crl_numbers (issuer_id, last_number) \
                     SELECT id, $1 FROM authorities WHERE true \
                     ON CONFLICT (issuer_id) DO UPDATE SET last_number = excluded.last_number \
                     WHERE crl_numbers.last_number < excluded.last_number",
                )
                .bind(floor)
                .execute(&mut *tx)
                .await?;
                let rows = sqlx::query(
                    "SELECT issuer_id, last_number FROM crl_numbers ORDER BY issuer_id",
                )
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("issuer_id")?, r.try_get("last_number")?)))
                    .collect()
            }

            async fn claim_job(&self, c: &JobClaim) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO job_leases (job, owner, period, lease_until, finished) \
                     VALUES ($1, '', -1, 0, 1) ON CONFLICT DO NOTHING",
                )
                .bind(&c.job)
                .execute(&mut *tx)
                .await?;
                let granted = sqlx::query(
                    "UPDATE job_leases SET owner = $1, period = $2, lease_until = $3, finished = 0 \
                     WHERE job = $4 AND period < $2 AND (finished = 1 OR lease_until < $5)",
                )
                .bind(&c.owner)
                .bind(c.period)
                .bind(c.lease_until)
                .bind(&c.job)
                .bind(c.now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if granted {
                    sqlx::query(
                        "INSERT INTO job_runs (job, period, owner, started_at, lease_until) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(&c.job)
                    .bind(c.period)
                    .bind(&c.owner)
                    .bind(c.now)
                    .bind(c.lease_until)
                    .execute(&mut *tx)
                    .await?;
                    // A month of history is enough to audit who ran what.
                    sqlx::query("DELETE FROM job_runs WHERE job = $1 AND period < $2")
                        .bind(&c.job)
                        .bind(c.period - 30 * 86_400)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(granted)
            }

            async fn finish_job(&self, c: &JobClaim, at: i64) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                let held = sqlx::query(
                    "UPDATE job_leases SET finished = 1 \
                     WHERE job = $1 AND period = $2 AND owner = $3 AND finished = 0",
                )
                .bind(&c.job)
                .bind(c.period)
                .bind(&c.owner)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if held {
                    sqlx::query(
                        "UPDATE job_runs SET finished_at = $1 WHERE job = $2 AND period = $3 AND owner = $4",
                    )
                    .bind(at)
                    .bind(&c.job)
                    .bind(c.period)
                    .bind(&c.owner)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn audit_chain(
                &self,
                after_id: i64,
                limit: u32,
            ) -> Result<Vec<ChainedAudit>, StoreError> {
                use sqlx::Row;
                let rows = sqlx::query("SELECT * FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2")
                    .bind(after_id)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok(ChainedAudit {
                            entry: audit_from_row(r)?,
                            prev_hash: r.try_get("prev_hash")?,
                            entry_hash: r.try_get("entry_hash")?,
                        })
                    })
                    .collect()
            }

            async fn audit_head(&self) -> Result<(i64, String), StoreError> {
                use sqlx::Row;
                let r = sqlx::query("SELECT last_id, last_hash FROM audit_head WHERE id = 1")
                    .fetch_one(&self.pool)
                    .await?;
                Ok((r.try_get("last_id")?, r.try_get("last_hash")?))
            }

            async fn audit_checkpoint(
                &self,
                at: i64,
                sign: CheckpointSigner<'_>,
            ) -> Result<AuditCheckpoint, StoreError> {
                let mut tx = self.pool.begin().await?;
                let chain = lock_chain(&mut tx).await?;
                let mac = sign(chain.last_id, &chain.last_hash, at);
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO audit_checkpoints (at, last_id, last_hash, mac) \
                     VALUES ($1, $2, $3, $4) RETURNING id",
                )
                .bind(at)
                .bind(chain.last_id)
                .bind(&chain.last_hash)
                .bind(&mac)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(AuditCheckpoint {
                    id,
                    at,
                    last_id: chain.last_id,
                    last_hash: chain.last_hash,
                    mac,
                })
            }

            async fn audit_checkpoints(&self) -> Result<Vec<AuditCheckpoint>, StoreError> {
                use sqlx::Row;
                let rows = sqlx::query("SELECT * FROM audit_checkpoints ORDER BY id")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok(AuditCheckpoint {
                            id: r.try_get("id")?,
                            at: r.try_get("at")?,
                            last_id: r.try_get("last_id")?,
                            last_hash: r.try_get("last_hash")?,
                            mac: r.try_get("mac")?,
                        })
                    })
                    .collect()
            }

            async fn set_audit_key(&self, sealed: &str) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "UPDATE ca_settings SET audit_key = $1 WHERE id = 1 AND audit_key IS NULL",
                )
                .bind(sealed)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn publish_policy(
                &self,
                sha256: &str,
                audit: &AuditEntry,
            ) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                let done = sqlx::query("UPDATE ca_settings SET policy_sha256 = $1 WHERE id = 1")
                    .bind(sha256)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::NotFound("no CA in this database".into()));
                }
                append_one(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            }
        }

        /// The revoked authorities a root signed (its CRL lists them until it retires).
        async fn revoked_authorities_in<'e, E>(
            exec: E,
            parent_id: &str,
        ) -> Result<Vec<RevokedEntry>, StoreError>
        where
            E: sqlx::Executor<'e, Database = $db>,
        {
            let rows = sqlx::query(
                "SELECT serial, revoked_at, revocation_reason FROM authorities \
                 WHERE parent_id = $1 AND revoked_at IS NOT NULL ORDER BY revoked_at, serial",
            )
            .bind(parent_id)
            .fetch_all(exec)
            .await?;
            revoked_from_rows(&rows)
        }

        /// Rows of (serial, revoked_at, revocation_reason) as CRL entries.
        fn revoked_from_rows(rows: &[DbRow]) -> Result<Vec<RevokedEntry>, StoreError> {
            use sqlx::Row;
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

        async fn revoked_entries_in<'e, E>(
            exec: E,
            issuer_id: &str,
            not_after_after: i64,
        ) -> Result<Vec<RevokedEntry>, StoreError>
        where
            E: sqlx::Executor<'e, Database = $db>,
        {
            let rows = sqlx::query(
                "SELECT serial, revoked_at, revocation_reason FROM certificates \
                 WHERE issuer_id = $1 AND revoked_at IS NOT NULL AND not_after > $2 \
                 ORDER BY revoked_at, serial",
            )
            .bind(issuer_id)
            .bind(not_after_after)
            .fetch_all(exec)
            .await?;
            revoked_from_rows(&rows)
        }
    };
}

#[cfg(test)]
mod tests {
    /// rusqlite binds by position and SQLite numbers `$N` by first appearance, sqlx by `N`:
    /// both agree only while every shared statement first names `$1`, `$2`, ... in order.
    #[test]
    fn shared_statements_number_their_parameters_in_order_of_appearance() {
        for sql in [
            super::RESERVE_SERIAL,
            super::SPEND_USE,
            super::GIVE_BACK_USE,
            super::INSERT_CERTIFICATE,
            super::FIND_STORED,
            super::ISSUER_REVOKED_AT,
            super::INSERT_AUDIT,
            super::SAVE_CHAIN,
        ] {
            let mut seen: Vec<usize> = Vec::new();
            for part in sql.split('$').skip(1) {
                let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
                let n: usize = digits
                    .parse()
                    .unwrap_or_else(|_| panic!("`$` without a number in {sql}"));
                if !seen.contains(&n) {
                    seen.push(n);
                }
            }
            let expected: Vec<usize> = (1..=seen.len()).collect();
            assert_eq!(seen, expected, "{sql}");
        }
    }
}
