//! Revocation: by serial or by identity, effective at once for this CA's own mTLS checks (the
//! store is consulted on every request), published through CRLs (one per environment
//! intermediate, one root-signed for the intermediates) and OCSP answers.

use std::sync::atomic::Ordering;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use time::{Duration, OffsetDateTime};

use super::{Ca, ServiceError};
use crate::authority::Signer;
use crate::ocsp;
use crate::pki::{Identity, RevocationReason, Serial};
use crate::store::{
    AuditEntry, AuditResult, AuthorityKind, CertStatus, CertificateFilter, CertificateRecord,
    CrlDraft, CrlRecord, RevokedEntry,
};

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// One certificate.
    Serial(Serial),
    /// Every live certificate of an identity.
    Identity(Identity),
}

/// A revocation request.
#[derive(Debug, Clone)]
pub struct RevokeInput {
    /// What.
    pub target: RevokeTarget,
    /// Why.
    pub reason: RevocationReason,
    /// Who, for the audit log.
    pub actor: String,
    /// Only report what would be revoked.
    pub dry_run: bool,
}

/// A signed OCSP answer kept for requests without a nonce.
#[derive(Debug, Clone)]
pub(crate) struct CachedOcsp {
    der: Vec<u8>,
    epoch: u64,
    until: i64,
}

/// Most OCSP answers kept; the cache is emptied when full.
const OCSP_CACHE_MAX: usize = 10_000;
/// How long a cached OCSP answer is served, at most: the backstop bounding staleness when a
/// revocation on another server was not announced (a local one, or a notice from the database,
/// empties the cache at once).
const OCSP_CACHE_SECS: i64 = 1;

pub(super) fn to_datetime(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn rcgen_reason(name: &str) -> Option<rcgen::RevocationReason> {
    let r: RevocationReason = name.parse().ok()?;
    Some(match r {
        RevocationReason::Unspecified => rcgen::RevocationReason::Unspecified,
        RevocationReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise => rcgen::RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
        RevocationReason::Superseded => rcgen::RevocationReason::Superseded,
        RevocationReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
    })
}

impl Ca {
    /// Revokes (or, dry, lists) the target's certificates, then reissues the affected CRLs and
    /// drops cached OCSP answers. Every revocation is in the audit log.
    pub async fn revoke(&self, input: RevokeInput) -> Result<Vec<CertificateRecord>, ServiceError> {
        let now = self.now_unix();
        let targets = match &input.target {
            RevokeTarget::Serial(serial) => {
                let rec = self.certificate(serial).await?;
                if let Some(at) = rec.revoked_at {
                    return Err(ServiceError::Store(crate::store::StoreError::Conflict(
                        format!(
                            "certificate {serial} was already revoked at {} ({})",
                            to_datetime(at),
                            rec.revocation_reason.as_deref().unwrap_or("unspecified")
                        ),
                    )));
                }
                vec![rec]
            }
            RevokeTarget::Identity(id) => {
                let live = self
                    .list(CertificateFilter {
                        env: Some(id.env.clone()),
                        service: Some(id.service.clone()),
                        status: Some(CertStatus::Valid),
                        now,
                        ..CertificateFilter::default()
                    })
                    .await?;
                if live.is_empty() {
                    return Err(ServiceError::NotFound(format!(
                        "no live certificates of {id}"
                    )));
                }
                live
            }
        };
        if input.dry_run {
            return Ok(targets);
        }
        let mut done = Vec::with_capacity(targets.len());
        let mut issuers = Vec::new();
        for rec in targets {
            let serial: Serial = rec.serial.parse().map_err(|_| {
                ServiceError::Invalid(format!("stored serial {:?} is not hex", rec.serial))
            })?;
            let audit = AuditEntry {
                id: 0,
                at: now,
                actor: input.actor.clone(),
                action: "revoke".into(),
                env: Some(rec.env.clone()),
                service: Some(rec.service.clone()),
                serial: Some(rec.serial.clone()),
                result: AuditResult::Ok,
                reason: Some(input.reason.as_str().into()),
            };
            self.store()
                .revoke_certificate(&serial, now, input.reason.as_str(), &audit)
                .await?;
            if !issuers.contains(&rec.issuer_id) {
                issuers.push(rec.issuer_id.clone());
            }
            done.push(CertificateRecord {
                revoked_at: Some(now),
                revocation_reason: Some(input.reason.as_str().into()),
                ..rec
            });
        }
        self.revocation_epoch.fetch_add(1, Ordering::SeqCst);
        // Only environment intermediates publish CRLs (the server's own certificates are
        // refused through the store like any other).
        let auth = self.authorities();
        issuers.retain(|i| {
            auth.get(i)
                .is_some_and(|a| a.kind == crate::store::AuthorityKind::Intermediate)
        });
        for issuer in issuers {
            // The revocation itself is committed; a CRL that cannot be signed now is retried by
            // the scheduler, and OCSP already answers from the store.
            if let Err(e) = self.build_crl(&issuer).await {
                tracing::error!(error = %e, %issuer, "CRL not reissued after a revocation");
            }
        }
        Ok(done)
    }

    /// Revocation by the holder itself over mTLS: only its own certificate, and only for
    /// key compromise or supersession.
    pub async fn revoke_own(
        &self,
        leaf_der: &[u8],
        reason: RevocationReason,
    ) -> Result<CertificateRecord, ServiceError> {
        if !matches!(
            reason,
            RevocationReason::KeyCompromise | RevocationReason::Superseded
        ) {
            return Err(ServiceError::Forbidden(
                "a certificate holder may revoke its own certificate only for key-compromise or superseded".into(),
            ));
        }
        let rec = self.authenticate(leaf_der).await?;
        let serial: Serial = rec
            .serial
            .parse()
            .map_err(|_| ServiceError::Invalid("stored serial is not hex".into()))?;
        let mut out = self
            .revoke(RevokeInput {
                target: RevokeTarget::Serial(serial),
                reason,
                actor: format!("cert:{}", rec.serial),
                dry_run: false,
            })
            .await?;
        out.pop()
            .ok_or_else(|| ServiceError::NotFound("nothing revoked".into()))
    }

    /// Subscribes to revocations made by other servers on the same database, so cached answers
    /// are dropped at once; `false` when the store has no such feed (caches then expire within
    /// a second).
    pub async fn watch_revocations(self: &std::sync::Arc<Self>) -> Result<bool, ServiceError> {
        let ca = std::sync::Arc::downgrade(self);
        let hook: crate::store::ChangeHook = std::sync::Arc::new(move || {
            if let Some(ca) = ca.upgrade() {
                ca.revocation_epoch.fetch_add(1, Ordering::SeqCst);
            }
        });
        Ok(self.store().watch_revocations(hook).await?)
    }

    /// The OCSP issuer hashes of intermediate `id`, computed once.
    fn issuer_hashes(
        &self,
        authority: &crate::store::AuthorityRecord,
    ) -> Option<std::sync::Arc<ocsp::IssuerHashes>> {
        let mut cache = self.ocsp_issuers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = cache.get(&authority.id) {
            return Some(h.clone());
        }
        let der = super::pem_to_der(&authority.cert_pem).ok()?;
        let h = std::sync::Arc::new(ocsp::IssuerHashes::of(&der)?);
        cache.insert(authority.id.clone(), h.clone());
        Some(h)
    }

    /// A counter bumped on every revocation (caches compare against it).
    pub fn revocation_epoch(&self) -> u64 {
        self.revocation_epoch.load(Ordering::SeqCst)
    }

    /// Signs and stores a fresh CRL for `issuer_id`: an unretired intermediate, or a root whose
    /// key is online.
    pub async fn build_crl(&self, issuer_id: &str) -> Result<CrlRecord, ServiceError> {
        let auth = self.authorities();
        let now = self.now_unix();
        match auth.get(issuer_id) {
            Some(a) if a.kind == AuthorityKind::Root && a.sealed_key.is_none() => {
                return Err(ServiceError::NotFound(format!(
                    "no current CRL of {issuer_id}: the root key is offline; make one with `ca-server crl --root --root-key FILE`"
                )));
            }
            Some(a) if a.kind != AuthorityKind::Tls && !auth.gone(a, now) => {}
            Some(a) if auth.gone(a, now) => {
                return Err(ServiceError::NotFound(format!(
                    "{issuer_id} is retired: it publishes no CRL any more"
                )));
            }
            _ => {
                return Err(ServiceError::NotFound(format!("no CRL for {issuer_id:?}")));
            }
        }
        let signer = self.signer(issuer_id).await?;
        self.build_crl_with(issuer_id, &signer).await
    }

    /// Signs and stores a CRL for `issuer_id` with an explicitly given signer (the offline root).
    pub async fn build_crl_with(
        &self,
        issuer_id: &str,
        signer: &Signer,
    ) -> Result<CrlRecord, ServiceError> {
        let now = self.now_unix();
        let is_root = self
            .authorities()
            .get(issuer_id)
            .is_some_and(|a| a.kind == AuthorityKind::Root);
        let (validity, entries_after) = if is_root {
            // A root's CRL lists the intermediates it signed that were revoked (a compromise).
            (self.options.root_crl_validity, None)
        } else {
            (
                self.options.crl_validity,
                Some(now - self.options.crl_lookback.whole_seconds()),
            )
        };
        let draft = CrlDraft {
            issuer_id: issuer_id.to_string(),
            this_update: now,
            next_update: now + validity.whole_seconds(),
            entries_after,
        };
        let issuer = signer.rcgen_issuer();
        // Signed inside the store's transaction, which holds the issuer's CRL counter: CRL numbers
        // follow the order of generation on every server, and each lists every revocation
        // committed before it.
        let sign = |number: i64, entries: &[RevokedEntry]| -> Result<Vec<u8>, String> {
            let mut revoked = Vec::with_capacity(entries.len());
            for e in entries {
                let serial: Serial = e
                    .serial
                    .parse()
                    .map_err(|_| format!("stored serial {:?} is not hex", e.serial))?;
                revoked.push(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial.as_bytes()),
                    revocation_time: to_datetime(e.revoked_at),
                    reason_code: rcgen_reason(&e.reason),
                    invalidity_date: None,
                });
            }
            let params = CertificateRevocationListParams {
                this_update: to_datetime(draft.this_update),
                next_update: to_datetime(draft.next_update),
                crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
                issuing_distribution_point: None,
                revoked_certs: revoked,
                key_identifier_method: KeyIdMethod::Sha256,
            };
            params
                .signed_by(issuer)
                .map(|crl| crl.der().to_vec())
                .map_err(|e| e.to_string())
        };
        Ok(self.store().generate_crl(&draft, &sign).await?)
    }

    /// The current CRL of `issuer_id`: the stored one while it is fresh, else a new one.
    pub async fn current_crl(&self, issuer_id: &str) -> Result<CrlRecord, ServiceError> {
        if let Some(c) = self.store().crl(issuer_id).await? {
            // Reissue when past half its validity, so relying parties never hold a stale one.
            let half = c.this_update + (c.next_update - c.this_update) / 2;
            if self.now_unix() < half {
                return Ok(c);
            }
            if self
                .authorities()
                .get(issuer_id)
                .is_some_and(|a| a.kind == AuthorityKind::Root && a.sealed_key.is_none())
            {
                return Ok(c);
            }
        }
        self.build_crl(issuer_id).await
    }

    /// Whether `id` is an authority that publishes a CRL now (an unretired intermediate or root).
    pub fn publishes_crl(&self, id: &str) -> bool {
        let auth = self.authorities();
        auth.get(id)
            .is_some_and(|a| a.kind != AuthorityKind::Tls && !auth.gone(a, self.now_unix()))
    }

    /// The current CRLs of every unretired intermediate of `env`, oldest generation first.
    pub async fn environment_crls(&self, env: &str) -> Result<Vec<CrlRecord>, ServiceError> {
        let auth = self.authorities();
        let now = self.now_unix();
        let mut ids: Vec<(i64, String)> = auth
            .unretired_intermediates(now)
            .iter()
            .filter(|a| a.env.as_deref() == Some(env))
            .map(|a| (a.generation, a.id.clone()))
            .collect();
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for (_, id) in ids {
            out.push(self.current_crl(&id).await?);
        }
        Ok(out)
    }

    /// Reissues the CRL of every unretired intermediate and of every published root whose key
    /// is online. Failures are logged and returned by issuer.
    pub async fn refresh_crls(&self) -> Vec<(String, Result<i64, ServiceError>)> {
        let mut out = Vec::new();
        if let Err(e) = self.refresh_authorities().await {
            tracing::warn!(error = %e, "authorities not re-read before the CRL refresh");
        }
        let auth = self.authorities();
        let now = self.now_unix();
        let mut ids: Vec<String> = auth
            .unretired_intermediates(now)
            .iter()
            .map(|a| a.id.clone())
            .collect();
        ids.extend(
            auth.published_roots(now)
                .iter()
                .filter(|r| r.sealed_key.is_some())
                .map(|r| r.id.clone()),
        );
        for id in ids {
            let r = self.build_crl(&id).await.map(|c| c.number);
            if let Err(e) = &r {
                tracing::error!(error = %e, issuer = %id, "CRL refresh failed");
            }
            out.push((id, r));
        }
        out
    }

    /// Deletes enrollment tokens that expired more than a week ago.
    pub async fn prune_tokens(&self) -> Result<u64, ServiceError> {
        Ok(self
            .store()
            .prune_tokens(self.now_unix() - Duration::days(7).whole_seconds())
            .await?)
    }

    /// Answers a DER OCSP request with a DER OCSP response (errors are OCSP error responses, as
    /// RFC 6960 wants, never HTTP errors).
    pub async fn ocsp(&self, request_der: &[u8]) -> Vec<u8> {
        let req = match ocsp::parse_request(request_der) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "malformed OCSP request");
                return ocsp::error_response(ocsp::ResponseStatus::MalformedRequest);
            }
        };
        let now = self.now_unix();
        let epoch = self.revocation_epoch();
        if req.nonce.is_none()
            && let Some(hit) = self
                .ocsp_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(request_der)
            && hit.epoch == epoch
            && hit.until > now
        {
            return hit.der.clone();
        }
        match self.ocsp_answer(&req, now).await {
            Ok(der) => {
                if req.nonce.is_none() {
                    let mut cache = self.ocsp_cache.lock().unwrap_or_else(|e| e.into_inner());
                    if cache.len() >= OCSP_CACHE_MAX {
                        cache.clear();
                    }
                    cache.insert(
                        request_der.to_vec(),
                        CachedOcsp {
                            der: der.clone(),
                            epoch,
                            until: now + OCSP_CACHE_SECS,
                        },
                    );
                }
                der
            }
            Err(status) => ocsp::error_response(status),
        }
    }

    async fn ocsp_answer(
        &self,
        req: &ocsp::OcspRequest,
        now: i64,
    ) -> Result<Vec<u8>, ocsp::ResponseStatus> {
        let internal = |e: ServiceError| {
            tracing::error!(error = %e, "OCSP answer failed");
            ocsp::ResponseStatus::InternalError
        };
        // All CertIDs of one request must name the same issuer: one signer signs the answer.
        let mut issuer: Option<(
            String,
            std::sync::Arc<Signer>,
            std::sync::Arc<ocsp::IssuerHashes>,
        )> = None;
        let auth = self.authorities();
        // The issuer is found by its certificate's hashes; only its key is opened.
        for a in auth.unretired_intermediates(now) {
            if let Some(hashes) = self.issuer_hashes(a)
                && req.cert_ids.first().is_some_and(|id| id.matches(&hashes))
            {
                let signer = self.signer(&a.id).await.map_err(internal)?;
                issuer = Some((a.id.clone(), signer, hashes));
                break;
            }
        }
        let Some((env, signer, hashes)) = issuer else {
            return Err(ocsp::ResponseStatus::Unauthorized);
        };
        if !req.cert_ids.iter().all(|id| id.matches(&hashes)) {
            return Err(ocsp::ResponseStatus::MalformedRequest);
        }
        let this_update = to_datetime(now);
        let next_update = to_datetime(now + self.options.ocsp_validity.whole_seconds());
        let mut responses = Vec::with_capacity(req.cert_ids.len());
        for id in &req.cert_ids {
            let status = match self.store().certificate_status(&id.serial).await {
                Ok(Some(rec)) if rec.issuer_id == env => {
                    match (rec.revoked_at, rec.revocation_reason.as_deref()) {
                        (Some(at), reason) => ocsp::CertStatus::Revoked {
                            at: to_datetime(at),
                            reason: reason
                                .and_then(|r| r.parse::<RevocationReason>().ok())
                                .map(RevocationReason::code),
                        },
                        (None, _) => ocsp::CertStatus::Good,
                    }
                }
                Ok(_) => ocsp::CertStatus::Unknown,
                Err(e) => return Err(internal(e.into())),
            };
            responses.push(ocsp::SingleResponse {
                cert_id: id.clone(),
                status,
                this_update,
                next_update,
            });
        }
        ocsp::build_response(&responses, req.nonce.as_deref(), this_update, &signer).map_err(|e| {
            tracing::error!(error = %e, "OCSP signing failed");
            ocsp::ResponseStatus::InternalError
        })
    }
}
