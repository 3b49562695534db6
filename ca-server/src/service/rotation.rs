//! CA rotation: generations of an environment's intermediate (and of the root), each with a
//! state derived from the authorities table and the clock.
//!
//! An intermediate rotation creates the next generation under the active root, publishes it in
//! the environment's bundle at once (state `next`), and lets it take over issuance at
//! `activates_at`, after every peer has had time to fetch the new bundle. The superseded one is
//! `retiring` (still in bundles, CRLs and OCSP, its holders told to renew now) until its last
//! leaf has expired; the scheduled maintenance then marks it `retired` and it leaves the bundles.
//! After a compromise the old one is revoked on the root CRL and the new one issues at once.
//!
//! A root rotation creates a new root, cross-certifies the two roots both ways, and creates the
//! next generation of every intermediate under the new root; the old root stays in the bundles
//! (and the cross-certificate in every chain of the new root) until its overlap ends.

use std::sync::Arc;

use serde::Serialize;
use time::Duration;
use zeroize::Zeroizing;

use super::init::authority_record;
use super::{Ca, ROOT_ID, ServiceError, random_serial};
use crate::authority::{self, CaKey, IntermediateSpec, RootSpec, Signer, TlsIntermediateSpec};
use crate::pki::RevocationReason;
use crate::sealed::{self, Sealer};
use crate::store::{
    AuditEntry, AuditResult, AuthorityKind, AuthorityRecord, CrossCertificate, IssuerLeaves,
    NewAuthority, StoreError,
};

/// Where an authority is in its life, at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IssuerState {
    /// Published in bundles; takes over issuance at its activation time.
    Next,
    /// Issues (for a root: the parent of the active intermediates).
    Active,
    /// Superseded: still published and answered for until its leaves have expired.
    Retiring,
    /// Gone from bundles, CRLs and OCSP.
    Retired,
    /// Revoked: on its parent's CRL, out of the bundles; its holders re-issue at once.
    Revoked,
}

impl IssuerState {
    /// Its name in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            IssuerState::Next => "next",
            IssuerState::Active => "active",
            IssuerState::Retiring => "retiring",
            IssuerState::Retired => "retired",
            IssuerState::Revoked => "revoked",
        }
    }
}

/// One authority as `ca-server ca list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct IssuerInfo {
    /// Authority id (`prod`, `prod.2`, `root`, `root.2`, `_tls`).
    pub id: String,
    /// root, intermediate or tls.
    pub kind: AuthorityKind,
    /// The environment of an intermediate.
    pub env: Option<String>,
    /// Generation (1 from init).
    pub generation: i64,
    /// State now.
    pub state: IssuerState,
    /// Subject DN.
    pub subject: String,
    /// Serial, hex.
    pub serial: String,
    /// SHA-256 of the certificate, hex.
    pub fingerprint: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// When it took or takes over issuance (Unix seconds).
    pub active_from: i64,
    /// When it left (or leaves) the bundles.
    pub retired_at: Option<i64>,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
    /// Unexpired, unrevoked leaves it issued.
    pub live_leaves: i64,
    /// Unexpired leaves, revoked ones included.
    pub unexpired_leaves: i64,
}

/// What to rotate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateTarget {
    /// An environment's intermediate.
    Env(String),
    /// The root (and, under the new root, every intermediate).
    Root,
}

/// A rotation request.
pub struct RotateInput {
    /// What.
    pub target: RotateTarget,
    /// How long the new generation is published before it issues (ignored when compromised).
    pub delay: Duration,
    /// The old key is compromised: revoke the old authority and switch at once.
    pub compromised: bool,
    /// Root rotation: how long the old root stays in the bundles after the switch.
    pub overlap: Duration,
    /// The active root's key when it is kept offline.
    pub root_key: Option<CaKey>,
    /// Who asked, for the audit log.
    pub actor: String,
}

impl std::fmt::Debug for RotateInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotateInput")
            .field("target", &self.target)
            .field("delay", &self.delay)
            .field("compromised", &self.compromised)
            .field("overlap", &self.overlap)
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

/// What a rotation created.
pub struct RotateOutput {
    /// The new authorities (the root first, for a root rotation).
    pub created: Vec<AuthorityRecord>,
    /// The new root's key (sealed like the CA's keys) when the root is kept offline: it is not
    /// stored, and must be exported.
    pub root_key_export: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for RotateOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotateOutput")
            .field("created", &self.created)
            .field(
                "root_key_export",
                &self.root_key_export.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Why a holder should renew now, for the `renew_now` hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewHint {
    /// Its issuer was superseded by a newer generation.
    IssuerRetiring,
    /// Its issuer was revoked (a compromise).
    IssuerRevoked,
}

impl RenewHint {
    /// What the holder of a certificate issued by an authority in `state` should hear.
    fn of(state: IssuerState) -> Option<RenewHint> {
        match state {
            IssuerState::Revoked => Some(RenewHint::IssuerRevoked),
            IssuerState::Retiring | IssuerState::Retired => Some(RenewHint::IssuerRetiring),
            IssuerState::Next | IssuerState::Active => None,
        }
    }

    /// The hint's wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            RenewHint::IssuerRetiring => "issuer-retiring",
            RenewHint::IssuerRevoked => "issuer-revoked",
        }
    }
}

/// The authorities table as last read, with the states it implies.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Authorities {
    pub(crate) all: Vec<AuthorityRecord>,
    pub(crate) cross: Vec<CrossCertificate>,
}

impl Authorities {
    pub(crate) fn get(&self, id: &str) -> Option<&AuthorityRecord> {
        self.all.iter().find(|a| a.id == id)
    }

    fn lineage<'a>(
        &'a self,
        kind: AuthorityKind,
        lineage: &str,
    ) -> impl Iterator<Item = &'a AuthorityRecord> + 'a {
        let lineage = lineage.to_string();
        self.all
            .iter()
            .filter(move |a| a.kind == kind && a.lineage() == lineage)
    }

    /// The generation that issues now: the newest unrevoked, unretired one already activated.
    pub(crate) fn active(
        &self,
        kind: AuthorityKind,
        lineage: &str,
        now: i64,
    ) -> Option<&AuthorityRecord> {
        self.lineage(kind, lineage)
            .filter(|a| a.revoked_at.is_none() && !self.gone(a, now) && a.active_from() <= now)
            .max_by_key(|a| a.generation)
    }

    /// The newest generation, whatever its state.
    fn newest(&self, kind: AuthorityKind, lineage: &str) -> Option<&AuthorityRecord> {
        self.lineage(kind, lineage).max_by_key(|a| a.generation)
    }

    /// Retired itself, or signed by a root that has left the bundles (nobody relying on a
    /// bundle could verify its chains any more).
    pub(crate) fn gone(&self, a: &AuthorityRecord, now: i64) -> bool {
        a.retired_by(now)
            || a.parent_id
                .as_deref()
                .and_then(|p| self.get(p))
                .is_some_and(|p| p.retired_by(now))
    }

    pub(crate) fn state(&self, a: &AuthorityRecord, now: i64) -> IssuerState {
        if a.revoked_at.is_some() {
            IssuerState::Revoked
        } else if self.gone(a, now) {
            IssuerState::Retired
        } else if self
            .active(a.kind, a.lineage(), now)
            .is_some_and(|x| x.id == a.id)
        {
            IssuerState::Active
        } else if a.active_from() > now {
            IssuerState::Next
        } else {
            IssuerState::Retiring
        }
    }

    /// Roots in the bundles: not retired, not revoked, oldest first.
    pub(crate) fn published_roots(&self, now: i64) -> Vec<&AuthorityRecord> {
        let mut v: Vec<_> = self
            .all
            .iter()
            .filter(|a| {
                a.kind == AuthorityKind::Root && a.revoked_at.is_none() && !a.retired_by(now)
            })
            .collect();
        v.sort_by_key(|a| a.generation);
        v
    }

    /// An environment's intermediates in its bundle: not retired, not revoked, oldest first.
    pub(crate) fn published_intermediates(&self, env: &str, now: i64) -> Vec<&AuthorityRecord> {
        let mut v: Vec<_> = self
            .lineage(AuthorityKind::Intermediate, env)
            .filter(|a| a.revoked_at.is_none() && !self.gone(a, now))
            .collect();
        v.sort_by_key(|a| a.generation);
        v
    }

    /// Intermediates still answered for (CRLs, OCSP): every one not retired, revoked included.
    pub(crate) fn unretired_intermediates(&self, now: i64) -> Vec<&AuthorityRecord> {
        self.all
            .iter()
            .filter(|a| a.kind == AuthorityKind::Intermediate && !self.gone(a, now))
            .collect()
    }

    /// What the mTLS listener accepts client chains up to: unretired roots and environment
    /// intermediates (revoked ones too: their holders must still be able to renew).
    pub(crate) fn client_anchors(&self, now: i64) -> Vec<&AuthorityRecord> {
        self.all
            .iter()
            .filter(|a| a.kind != AuthorityKind::Tls && !self.gone(a, now))
            .filter(|a| a.kind != AuthorityKind::Root || a.revoked_at.is_none())
            .collect()
    }

    /// PEM of the cross-certificates that lead from `issuer`'s root to the other published
    /// roots, so a peer trusting only an older (or newer) root still validates its chains.
    pub(crate) fn cross_pem(&self, issuer: &AuthorityRecord, now: i64) -> String {
        let Some(parent) = issuer.parent_id.as_deref() else {
            return String::new();
        };
        let published: Vec<&str> = self
            .published_roots(now)
            .iter()
            .map(|r| r.id.as_str())
            .collect();
        self.cross
            .iter()
            .filter(|c| c.subject_id == parent && published.contains(&c.issuer_id.as_str()))
            .map(|c| c.cert_pem.as_str())
            .collect()
    }
}

/// The id of generation `generation` of `lineage`.
fn generation_id(lineage: &str, generation: i64) -> String {
    if generation == 1 {
        lineage.to_string()
    } else {
        format!("{lineage}.{generation}")
    }
}

impl Ca {
    /// The authorities as last read (see [`Ca::refresh_authorities`]).
    pub(crate) fn authorities(&self) -> Arc<Authorities> {
        self.authorities
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the authorities (a rotation by the CLI or another server); `true` if they
    /// changed.
    pub async fn refresh_authorities(&self) -> Result<bool, ServiceError> {
        let fresh = Authorities {
            all: self.store.authorities().await?,
            cross: self.store.cross_certificates().await?,
        };
        let mut cur = self.authorities.write().unwrap_or_else(|e| e.into_inner());
        if **cur == fresh {
            return Ok(false);
        }
        *cur = Arc::new(fresh);
        Ok(true)
    }

    /// The certificates the mTLS listener accepts client chains up to.
    pub fn client_anchors(&self) -> Vec<AuthorityRecord> {
        self.authorities()
            .client_anchors(self.now_unix())
            .into_iter()
            .cloned()
            .collect()
    }

    /// The ids of [`Ca::client_anchors`] (to notice a change).
    pub fn client_anchor_ids(&self) -> Vec<String> {
        self.authorities()
            .client_anchors(self.now_unix())
            .into_iter()
            .map(|a| a.id.clone())
            .collect()
    }

    /// The ids of every root generation.
    pub fn root_ids(&self) -> Vec<String> {
        self.authorities()
            .all
            .iter()
            .filter(|a| a.kind == AuthorityKind::Root)
            .map(|a| a.id.clone())
            .collect()
    }

    /// Whether the active root's key is kept offline.
    pub fn active_root_offline(&self) -> bool {
        self.authorities()
            .active(AuthorityKind::Root, ROOT_ID, self.now_unix())
            .is_some_and(|r| r.sealed_key.is_none())
    }

    /// The id of the generation of the root or TLS issuer that is active now.
    pub fn active_authority_id(&self, kind: AuthorityKind) -> Option<String> {
        let lineage = match kind {
            AuthorityKind::Root => ROOT_ID,
            AuthorityKind::Tls => super::TLS_ID,
            AuthorityKind::Intermediate => return None,
        };
        self.authorities()
            .active(kind, lineage, self.now_unix())
            .map(|a| a.id.clone())
    }

    /// The authority that issues for `env` now, with its signer.
    pub(crate) async fn issuer(
        &self,
        env: &str,
    ) -> Result<(AuthorityRecord, Arc<Signer>), ServiceError> {
        self.active_signer(AuthorityKind::Intermediate, env).await
    }

    /// The active generation of a lineage with its signer.
    pub(crate) async fn active_signer(
        &self,
        kind: AuthorityKind,
        lineage: &str,
    ) -> Result<(AuthorityRecord, Arc<Signer>), ServiceError> {
        let rec = self
            .authorities()
            .active(kind, lineage, self.now_unix())
            .cloned()
            .ok_or_else(|| match kind {
                AuthorityKind::Root => ServiceError::NotInitialized,
                _ => ServiceError::NoIssuer(lineage.to_string()),
            })?;
        let signer = self.signer(&rec.id).await?;
        Ok((rec, signer))
    }

    /// The issuer's certificate and the cross-certificates a chain of its leaves carries.
    pub(crate) fn chain_tail(&self, issuer: &AuthorityRecord) -> String {
        let auth = self.authorities();
        format!(
            "{}{}",
            issuer.cert_pem,
            auth.cross_pem(issuer, self.now_unix())
        )
    }

    /// [`Ca::chain_tail`] of authority `issuer_id`, if it is known.
    pub fn chain_tail_of(&self, issuer_id: &str) -> Option<String> {
        let auth = self.authorities();
        auth.get(issuer_id).map(|a| self.chain_tail(a))
    }

    /// Whether the holder of certificate `serial` should renew at once, and why.
    pub async fn renew_hint(
        &self,
        serial: &crate::pki::Serial,
    ) -> Result<Option<RenewHint>, ServiceError> {
        let Some(rec) = self.store.certificate(serial).await? else {
            return Ok(None);
        };
        self.issuer_hint(&rec.issuer_id).await
    }

    /// Whether certificates of `issuer_id` should be renewed at once, and why, from the issuer's
    /// row (not the snapshot, which is re-read every few seconds): for bundle refreshes and ACME
    /// `renewalInfo`, where the certificate may be old and its issuer revoked since.
    pub async fn issuer_hint(&self, issuer_id: &str) -> Result<Option<RenewHint>, ServiceError> {
        // The issuer's row itself, not the snapshot (re-read every few seconds): a compromise
        // is reported from the moment it is committed.
        let Some(issuer) = self.store.authority(issuer_id).await? else {
            return Ok(None);
        };
        Ok(RenewHint::of(
            self.authorities().state(&issuer, self.now_unix()),
        ))
    }

    /// [`Ca::issuer_hint`] for an issuance answer, from this server's view of the authorities:
    /// the commit has just refused a revoked issuer, so what is left to tell is a retirement.
    pub fn issued_hint(&self, issuer_id: &str) -> Option<RenewHint> {
        let auth = self.authorities();
        RenewHint::of(auth.state(auth.get(issuer_id)?, self.now_unix()))
    }

    /// Every authority with its state and leaf counts, root first.
    pub async fn issuers(&self) -> Result<Vec<IssuerInfo>, ServiceError> {
        self.refresh_authorities().await?;
        let now = self.now_unix();
        let leaves = self.store.issuer_leaves(now).await?;
        let auth = self.authorities();
        Ok(auth
            .all
            .iter()
            .map(|a| {
                let l = leaves
                    .get(&a.id)
                    .copied()
                    .unwrap_or(IssuerLeaves::default());
                IssuerInfo {
                    id: a.id.clone(),
                    kind: a.kind,
                    env: a.env.clone(),
                    generation: a.generation,
                    state: auth.state(a, now),
                    subject: a.subject.clone(),
                    serial: a.serial.clone(),
                    fingerprint: a.fingerprint.clone(),
                    not_before: a.not_before,
                    not_after: a.not_after,
                    active_from: a.active_from(),
                    retired_at: a.retired_at,
                    revoked_at: a.revoked_at,
                    live_leaves: l.live,
                    unexpired_leaves: l.unexpired,
                }
            })
            .collect())
    }

    /// Seals a new CA key as the CA's keys are sealed (or leaves it plain in development mode).
    fn seal_key(&self, slot: &str, key: &CaKey) -> Result<String, ServiceError> {
        Ok(match (&self.passphrase, self.settings.keys_sealed) {
            (Some(p), true) => Sealer::new(p)?.seal(slot, &key.pkcs8())?,
            (None, true) => {
                return Err(ServiceError::Invalid(
                    "the CA keys are sealed: the passphrase is needed to seal the new key".into(),
                ));
            }
            (_, false) => sealed::plain(&key.pkcs8()).to_string(),
        })
    }

    /// The active root's signer: its stored key, or the offline key given.
    async fn root_signer(
        &self,
        root: &AuthorityRecord,
        offline: Option<&CaKey>,
    ) -> Result<Arc<Signer>, ServiceError> {
        match (offline, &root.sealed_key) {
            (Some(key), _) => {
                let der = super::pem_to_der(&root.cert_pem)?;
                let key = CaKey::from_pkcs8(&key.pkcs8())?;
                Ok(Arc::new(Signer::new(der, key).map_err(|_| {
                    ServiceError::Invalid(format!(
                        "the root key given is not the key of the active root {}",
                        root.id
                    ))
                })?))
            }
            (None, Some(_)) => self.signer(&root.id).await,
            (None, None) => Err(ServiceError::Invalid(format!(
                "the key of the active root {} is kept offline: pass it with --root-key FILE",
                root.id
            ))),
        }
    }

    /// Rotates an environment's intermediate or the root.
    pub async fn rotate(&self, input: RotateInput) -> Result<RotateOutput, ServiceError> {
        self.refresh_authorities().await?;
        let out = match &input.target {
            RotateTarget::Env(env) => RotateOutput {
                created: vec![self.rotate_env(env, &input).await?],
                root_key_export: None,
            },
            RotateTarget::Root => self.rotate_root(&input).await?,
        };
        self.refresh_authorities().await?;
        if input.compromised {
            // The revocation is committed; the root CRL that lists it is signed now if the root
            // key is at hand (else `ca-server crl --root --root-key FILE`).
            let auth = self.authorities();
            if let Some(root) = auth.active(AuthorityKind::Root, ROOT_ID, self.now_unix()) {
                match self.root_signer(root, input.root_key.as_ref()).await {
                    Ok(signer) => {
                        self.build_crl_with(&root.id, &signer).await?;
                    }
                    Err(e) => tracing::warn!(error = %e, "root CRL not reissued"),
                }
            }
            self.revocation_epoch
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(out)
    }

    async fn rotate_env(
        &self,
        env: &str,
        input: &RotateInput,
    ) -> Result<AuthorityRecord, ServiceError> {
        let policy = self.policy();
        let e = policy.environments.get(env).ok_or_else(|| {
            ServiceError::NotFound(format!("environment {env:?} is not in the policy"))
        })?;
        let now = self.now_unix();
        let auth = self.authorities();
        let current = auth
            .active(AuthorityKind::Intermediate, env, now)
            .cloned()
            .ok_or_else(|| ServiceError::NoIssuer(env.to_string()))?;
        let newest = auth
            .newest(AuthorityKind::Intermediate, env)
            .cloned()
            .unwrap_or_else(|| current.clone());
        if !input.compromised && newest.id != current.id && newest.active_from() > now {
            return Err(ServiceError::Store(StoreError::Conflict(format!(
                "{env} already has a next intermediate ({}) taking over at {}; rotate again after \
                 that, or with --compromised",
                newest.id,
                super::revocation::to_datetime(newest.active_from())
            ))));
        }
        let root_rec = auth
            .active(AuthorityKind::Root, ROOT_ID, now)
            .cloned()
            .ok_or(ServiceError::NotInitialized)?;
        let root = self.root_signer(&root_rec, input.root_key.as_ref()).await?;
        let generation = newest.generation + 1;
        let id = generation_id(env, generation);
        let lifetime = current.not_after - current.not_before;
        let key = CaKey::generate()?;
        let serial = random_serial()?;
        let at = self.now();
        let cert = authority::create_intermediate(
            &IntermediateSpec {
                trust_domain: &self.settings.trust_domain,
                env,
                dns_suffixes: &e.dns_suffixes,
                serial: &serial,
                not_before: at - Duration::minutes(1),
                not_after: at + Duration::seconds(lifetime),
                generation,
            },
            &key,
            &root,
        )?;
        let mut record = authority_record(
            &id,
            AuthorityKind::Intermediate,
            Some(&root_rec.id),
            &cert,
            &serial,
            Some(self.seal_key(&id, &key)?),
            now,
        );
        record.env = Some(env.to_string());
        record.generation = generation;
        let activates_at = if input.compromised {
            now
        } else {
            now + input.delay.whole_seconds()
        };
        record.activates_at = Some(activates_at);
        let reason = if input.compromised {
            format!(
                "{} replaced at once after a compromise; {} revoked (ca-compromise)",
                current.id, current.id
            )
        } else {
            format!(
                "next intermediate of {env}, issues from {}",
                super::revocation::to_datetime(activates_at)
            )
        };
        self.store
            .add_authority(&NewAuthority {
                record: record.clone(),
                cross: Vec::new(),
                retire: Vec::new(),
                revoke: input.compromised.then(|| {
                    (
                        current.id.clone(),
                        now,
                        RevocationReason::CaCompromise.as_str().to_string(),
                    )
                }),
                audit: rotation_audit(&input.actor, now, Some(env), &record, reason),
            })
            .await?;
        tracing::info!(env, id = %record.id, activates_at, compromised = input.compromised, "intermediate rotated");
        Ok(record)
    }

    async fn rotate_root(&self, input: &RotateInput) -> Result<RotateOutput, ServiceError> {
        if input.compromised {
            return Err(ServiceError::Invalid(
                "a compromised root cannot be rotated in place: every trust store must drop it; \
                 create a new CA with `ca-server init` and enroll the agents again"
                    .into(),
            ));
        }
        let now = self.now_unix();
        let auth = self.authorities();
        let old = auth
            .active(AuthorityKind::Root, ROOT_ID, now)
            .cloned()
            .ok_or(ServiceError::NotInitialized)?;
        let newest = auth
            .newest(AuthorityKind::Root, ROOT_ID)
            .cloned()
            .unwrap_or_else(|| old.clone());
        if newest.id != old.id {
            return Err(ServiceError::Store(StoreError::Conflict(format!(
                "a root rotation is under way already ({} takes over at {})",
                newest.id,
                super::revocation::to_datetime(newest.active_from())
            ))));
        }
        let longest = self
            .policy()
            .environments
            .values()
            .map(|e| e.max_ttl)
            .max()
            .unwrap_or(Duration::ZERO);
        if input.overlap < longest {
            tracing::warn!(
                overlap = %input.overlap,
                max_ttl = %longest,
                "the overlap is shorter than the longest leaf lifetime: leaves of the old root's \
                 intermediates that outlive the overlap stop verifying when it ends"
            );
        }
        let old_signer = self.root_signer(&old, input.root_key.as_ref()).await?;
        let at = self.now();
        let td = self.settings.trust_domain.clone();
        let generation = old.generation + 1;
        let root_id = generation_id(ROOT_ID, generation);
        let lifetime = Duration::seconds(old.not_after - old.not_before);
        let activates_at = now + input.delay.whole_seconds();
        let not_before = at - Duration::minutes(1);

        let root_key = CaKey::generate()?;
        let root_serial = random_serial()?;
        let root_cert = authority::create_root(
            &RootSpec {
                trust_domain: &td,
                serial: &root_serial,
                not_before,
                not_after: at + lifetime,
            },
            &root_key,
        )?;
        // A root kept offline stays offline: its successor's key goes to the caller to export.
        let sealed_root_key = Zeroizing::new(self.seal_key(&root_id, &root_key)?);
        let (root_sealed, root_key_export) = if old.sealed_key.is_some() {
            (Some(sealed_root_key.to_string()), None)
        } else {
            (None, Some(sealed_root_key))
        };
        let mut root_rec = authority_record(
            &root_id,
            AuthorityKind::Root,
            None,
            &root_cert,
            &root_serial,
            root_sealed,
            now,
        );
        root_rec.generation = generation;
        root_rec.activates_at = Some(activates_at);
        let new_root = Signer::new(root_cert.der.clone(), CaKey::from_pkcs8(&root_key.pkcs8())?)?;

        // Each root certifies the other's key (self-issued links: the roots share their name).
        let mut cross = Vec::new();
        for (subject_id, spki, issuer, issuer_id) in [
            (
                root_id.as_str(),
                root_key.spki_der(),
                &*old_signer,
                old.id.as_str(),
            ),
            (
                old.id.as_str(),
                old_signer.key().spki_der(),
                &new_root,
                root_id.as_str(),
            ),
        ] {
            let serial = random_serial()?;
            let c = authority::cross_certify_root(
                &RootSpec {
                    trust_domain: &td,
                    serial: &serial,
                    not_before,
                    not_after: at + lifetime,
                },
                &spki,
                issuer,
            )?;
            cross.push(CrossCertificate {
                subject_id: subject_id.to_string(),
                issuer_id: issuer_id.to_string(),
                serial: serial.to_hex(),
                cert_pem: c.pem,
                not_before: c.not_before.unix_timestamp(),
                not_after: c.not_after.unix_timestamp(),
                created_at: now,
            });
        }

        self.store
            .add_authority(&NewAuthority {
                record: root_rec.clone(),
                cross,
                retire: vec![(old.id.clone(), activates_at + input.overlap.whole_seconds())],
                revoke: None,
                audit: rotation_audit(
                    &input.actor,
                    now,
                    None,
                    &root_rec,
                    format!(
                        "new root issues from {}; {} stays in the bundles until {}",
                        super::revocation::to_datetime(activates_at),
                        old.id,
                        super::revocation::to_datetime(
                            activates_at + input.overlap.whole_seconds()
                        )
                    ),
                ),
            })
            .await?;
        let mut out = vec![root_rec.clone()];

        // The next generation of every intermediate under the new root, taking over with it.
        let (server_dns, server_ips) = super::split_server_names(&self.settings.server_names)?;
        for int in auth
            .all
            .iter()
            .filter(|a| a.kind != AuthorityKind::Root)
            .filter(|a| {
                auth.active(a.kind, a.lineage(), now)
                    .is_some_and(|x| x.id == a.id)
            })
        {
            let lineage = int.lineage().to_string();
            let generation = auth.newest(int.kind, &lineage).map_or(1, |n| n.generation) + 1;
            let id = generation_id(&lineage, generation);
            let key = CaKey::generate()?;
            let serial = random_serial()?;
            let lifetime = Duration::seconds(int.not_after - int.not_before);
            let cert = match int.kind {
                AuthorityKind::Tls => authority::create_tls_intermediate(
                    &TlsIntermediateSpec {
                        trust_domain: &td,
                        dns: &server_dns,
                        ips: &server_ips,
                        serial: &serial,
                        not_before,
                        not_after: at + lifetime,
                        generation,
                    },
                    &key,
                    &new_root,
                )?,
                _ => {
                    let policy = self.policy();
                    let Some(e) = policy.environments.get(&lineage) else {
                        continue;
                    };
                    authority::create_intermediate(
                        &IntermediateSpec {
                            trust_domain: &td,
                            env: &lineage,
                            dns_suffixes: &e.dns_suffixes,
                            serial: &serial,
                            not_before,
                            not_after: at + lifetime,
                            generation,
                        },
                        &key,
                        &new_root,
                    )?
                }
            };
            let mut rec = authority_record(
                &id,
                int.kind,
                Some(&root_id),
                &cert,
                &serial,
                Some(self.seal_key(&id, &key)?),
                now,
            );
            rec.env = int.env.clone();
            rec.generation = generation;
            rec.activates_at = Some(activates_at);
            let reason = format!("under {root_id}, issues from {activates_at}");
            self.store
                .add_authority(&NewAuthority {
                    record: rec.clone(),
                    cross: Vec::new(),
                    retire: Vec::new(),
                    revoke: None,
                    audit: rotation_audit(&input.actor, now, int.env.as_deref(), &rec, reason),
                })
                .await?;
            out.push(rec);
        }
        tracing::info!(root = %root_id, activates_at, "root rotated");
        Ok(RotateOutput {
            created: out,
            root_key_export,
        })
    }

    /// Scheduled upkeep: retires superseded intermediates whose last leaf has expired, and
    /// rotates every environment whose newest intermediate expires within `auto_rotate_before`
    /// (when set). Returns the ids retired and created.
    pub async fn rotation_upkeep(
        &self,
        auto_rotate_before: Option<Duration>,
        delay: Duration,
    ) -> Result<(Vec<String>, Vec<String>), ServiceError> {
        self.refresh_authorities().await?;
        let now = self.now_unix();
        let leaves = self.store.issuer_leaves(now).await?;
        let auth = self.authorities();
        let mut retired = Vec::new();
        for a in &auth.all {
            if a.kind == AuthorityKind::Root || a.retired_at.is_some() {
                continue;
            }
            let state = auth.state(a, now);
            let done = matches!(state, IssuerState::Retiring | IssuerState::Revoked)
                && leaves.get(&a.id).is_none_or(|l| l.unexpired == 0);
            if done && self.store.retire_authority(&a.id, now).await? {
                tracing::info!(id = %a.id, "authority retired: its last leaf has expired");
                self.audit(AuditEntry {
                    id: 0,
                    at: now,
                    actor: self.replica.clone(),
                    action: "ca-retire".into(),
                    env: a.env.clone(),
                    service: None,
                    serial: Some(a.serial.clone()),
                    result: AuditResult::Ok,
                    reason: Some(format!("{} retired: no unexpired leaf left", a.id)),
                })
                .await;
                retired.push(a.id.clone());
            }
        }
        let mut created = Vec::new();
        if let Some(before) = auto_rotate_before {
            let envs: Vec<String> = self.policy().environments.keys().cloned().collect();
            for env in envs {
                let Some(newest) = auth.newest(AuthorityKind::Intermediate, &env) else {
                    continue;
                };
                if newest.revoked_at.is_some() || newest.not_after - now > before.whole_seconds() {
                    continue;
                }
                if newest.not_after - newest.not_before <= before.whole_seconds() {
                    tracing::error!(
                        env,
                        "auto_rotate_before is not shorter than the intermediate's lifetime: \
                         not rotating (the new one would be due at once)"
                    );
                    continue;
                }
                match self
                    .rotate(RotateInput {
                        target: RotateTarget::Env(env.clone()),
                        delay,
                        compromised: false,
                        overlap: Duration::ZERO,
                        root_key: None,
                        actor: self.replica.clone(),
                    })
                    .await
                {
                    Ok(o) => created.extend(o.created.into_iter().map(|r| r.id)),
                    Err(ServiceError::Store(StoreError::Conflict(m))) => {
                        tracing::info!(env, "scheduled rotation already done: {m}");
                    }
                    Err(e) => tracing::error!(env, error = %e, "scheduled rotation failed"),
                }
            }
        }
        self.refresh_authorities().await?;
        Ok((retired, created))
    }
}

fn rotation_audit(
    actor: &str,
    now: i64,
    env: Option<&str>,
    rec: &AuthorityRecord,
    reason: String,
) -> AuditEntry {
    AuditEntry {
        id: 0,
        at: now,
        actor: actor.to_string(),
        action: "ca-rotate".into(),
        env: env.map(str::to_string),
        service: None,
        serial: Some(rec.serial.clone()),
        result: AuditResult::Ok,
        reason: Some(format!("{}: {reason}", rec.id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::TLS_ID;
    use crate::service::testing::{certificates_in, replicas};

    fn rec(id: &str, kind: AuthorityKind, env: Option<&str>, generation: i64) -> AuthorityRecord {
        AuthorityRecord {
            id: id.into(),
            kind,
            env: env.map(str::to_string),
            parent_id: (kind != AuthorityKind::Root).then(|| "root".to_string()),
            serial: format!("{id}-serial"),
            subject: format!("CN={id}"),
            cert_pem: format!("pem {id}\n"),
            sealed_key: None,
            fingerprint: format!("{id}-fp"),
            not_before: 0,
            not_after: 1_000_000,
            created_at: 100 * generation,
            generation,
            activates_at: None,
            retired_at: None,
            revoked_at: None,
            revocation_reason: None,
        }
    }

    #[test]
    fn states_follow_activation_retirement_and_revocation() {
        let g1 = rec("prod", AuthorityKind::Intermediate, Some("prod"), 1);
        let mut g2 = rec("prod.2", AuthorityKind::Intermediate, Some("prod"), 2);
        g2.activates_at = Some(500);
        let other = rec("dev", AuthorityKind::Intermediate, Some("dev"), 1);
        let mut auth = Authorities {
            all: vec![g1.clone(), g2.clone(), other.clone()],
            cross: Vec::new(),
        };
        assert_eq!(auth.state(&g1, 400), IssuerState::Active);
        assert_eq!(auth.state(&g2, 400), IssuerState::Next);
        assert_eq!(
            auth.published_intermediates("prod", 400)
                .iter()
                .map(|a| a.id.as_str())
                .collect::<Vec<_>>(),
            ["prod", "prod.2"]
        );
        assert_eq!(auth.state(&g1, 500), IssuerState::Retiring);
        assert_eq!(auth.state(&g2, 500), IssuerState::Active);
        assert_eq!(
            auth.state(&other, 500),
            IssuerState::Active,
            "dev untouched"
        );
        auth.all[0].retired_at = Some(900);
        assert_eq!(auth.state(&auth.all[0].clone(), 899), IssuerState::Retiring);
        assert_eq!(auth.state(&auth.all[0].clone(), 900), IssuerState::Retired);
        assert_eq!(
            auth.published_intermediates("prod", 900)
                .iter()
                .map(|a| a.id.as_str())
                .collect::<Vec<_>>(),
            ["prod.2"]
        );
        // A revoked active generation stops issuing at once; nothing else is active.
        auth.all[1].revoked_at = Some(950);
        assert_eq!(auth.state(&auth.all[1].clone(), 960), IssuerState::Revoked);
        assert!(
            auth.active(AuthorityKind::Intermediate, "prod", 960)
                .is_none()
        );
        assert!(auth.published_intermediates("prod", 960).is_empty());
        assert_eq!(
            auth.unretired_intermediates(960).len(),
            2,
            "a revoked one is still answered for (CRL, OCSP) until retired"
        );
    }

    #[test]
    fn chains_carry_the_cross_certificate_while_both_roots_are_published() {
        let r1 = rec("root", AuthorityKind::Root, None, 1);
        let mut r2 = rec("root.2", AuthorityKind::Root, None, 2);
        r2.activates_at = Some(500);
        let mut int2 = rec("prod.2", AuthorityKind::Intermediate, Some("prod"), 2);
        int2.parent_id = Some("root.2".into());
        let mut auth = Authorities {
            all: vec![r1, r2, int2.clone()],
            cross: vec![CrossCertificate {
                subject_id: "root.2".into(),
                issuer_id: "root".into(),
                serial: "x".into(),
                cert_pem: "cross\n".into(),
                not_before: 0,
                not_after: 1_000_000,
                created_at: 200,
            }],
        };
        assert_eq!(auth.cross_pem(&int2, 600), "cross\n");
        assert_eq!(
            auth.active(AuthorityKind::Root, ROOT_ID, 499)
                .map(|a| a.id.as_str()),
            Some("root")
        );
        assert_eq!(
            auth.active(AuthorityKind::Root, ROOT_ID, 500)
                .map(|a| a.id.as_str()),
            Some("root.2")
        );
        auth.all[0].retired_at = Some(700);
        assert_eq!(auth.cross_pem(&int2, 700), "", "old root gone: no cross");
        assert_eq!(auth.published_roots(700).len(), 1);
    }

    fn leaf(ca: &Ca) -> crate::service::IssueInput {
        let csr = crate::service::testing::p256_csr_pem().into_bytes();
        let _ = ca;
        crate::service::IssueInput {
            identity: crate::pki::Identity {
                env: "dev".into(),
                service: "api".into(),
            },
            dns: vec!["api.dev.svc.example.internal".into()],
            ips: vec![],
            ttl: Some(Duration::hours(8)),
            csr,
            via: crate::store::IssuedVia::Cli,
            actor: "cli:test".into(),
        }
    }

    fn rotate_env(env: &str, compromised: bool) -> RotateInput {
        RotateInput {
            target: RotateTarget::Env(env.into()),
            delay: Duration::hours(2),
            compromised,
            overlap: Duration::ZERO,
            root_key: None,
            actor: "cli:test".into(),
        }
    }

    fn ids_of(ca: &Ca, env: &str) -> Vec<String> {
        let mut v: Vec<String> = ca
            .authorities()
            .all
            .iter()
            .filter(|a| a.kind == AuthorityKind::Intermediate && a.lineage() == env)
            .map(|a| a.id.clone())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn a_scheduled_rotation_happens_once_across_replicas_then_the_old_issuer_retires() {
        let dir = tempfile::tempdir().expect("tmp");
        let (a, ac, b, bc) = replicas(dir.path()).await;
        let before = Some(Duration::days(10));
        let delay = Duration::hours(2);
        let old = a.issue(leaf(&a)).await.expect("leaf");
        assert_eq!(old.record.issuer_id, "dev");
        let old_serial: crate::pki::Serial = old.record.serial.parse().expect("serial");

        // Not due yet: nothing happens.
        let (retired, created) = a.rotation_upkeep(before, delay).await.expect("upkeep");
        assert!(retired.is_empty() && created.is_empty(), "{created:?}");

        // 21 days on, every environment is within 10 days of its intermediate's end. Both
        // replicas' timers fire for the same period; the claim lets one run it, and a late run
        // by the other (or an operator's) finds the next generation in place.
        for c in [&ac, &bc] {
            c.advance(Duration::days(21));
        }
        let period = a.now_unix();
        let claims = [
            a.claim_job("crl-refresh", period, 60).await.expect("claim"),
            b.claim_job("crl-refresh", period, 60).await.expect("claim"),
        ];
        assert_eq!(claims.iter().filter(|c| c.is_some()).count(), 1);
        let runner = if claims[0].is_some() { &a } else { &b };
        let (_, created) = runner.rotation_upkeep(before, delay).await.expect("upkeep");
        assert!(created.contains(&"dev.2".to_string()), "{created:?}");
        let (_, again) = a.rotation_upkeep(before, delay).await.expect("upkeep");
        let (_, again_b) = b.rotation_upkeep(before, delay).await.expect("upkeep");
        assert!(
            again.is_empty() && again_b.is_empty(),
            "{again:?} {again_b:?}"
        );
        b.refresh_authorities().await.expect("refresh");
        assert_eq!(
            ids_of(&b, "dev"),
            ["dev", "dev.2"],
            "exactly one new generation"
        );

        // Published at once, issuing only after the delay.
        let bundle = b.bundle("dev").await.expect("bundle");
        assert_eq!(
            bundle.matches("BEGIN CERTIFICATE").count(),
            3,
            "root + two dev"
        );
        assert_eq!(
            a.issue(leaf(&a)).await.expect("leaf").record.issuer_id,
            "dev"
        );
        assert_eq!(a.renew_hint(&old_serial).await.expect("hint"), None);
        for c in [&ac, &bc] {
            c.advance(delay);
        }
        let new = b.issue(leaf(&b)).await.expect("leaf");
        assert_eq!(new.record.issuer_id, "dev.2");
        assert!(
            new.chain_pem.contains(
                b.authorities()
                    .get("dev.2")
                    .expect("dev.2")
                    .cert_pem
                    .as_str()
            )
        );
        assert_eq!(
            a.renew_hint(&old_serial).await.expect("hint"),
            Some(RenewHint::IssuerRetiring)
        );
        let states = a.issuers().await.expect("list");
        let state = |id: &str| states.iter().find(|i| i.id == id).map(|i| i.state);
        assert_eq!(state("dev"), Some(IssuerState::Retiring));
        assert_eq!(state("dev.2"), Some(IssuerState::Active));

        // Once its last leaf has expired, the old one retires and leaves the bundle.
        let (retired, _) = a.rotation_upkeep(before, delay).await.expect("upkeep");
        assert!(
            !retired.contains(&"dev".to_string()),
            "leaves still live: {retired:?}"
        );
        for c in [&ac, &bc] {
            c.advance(Duration::hours(9));
        }
        let (retired, _) = a.rotation_upkeep(before, delay).await.expect("upkeep");
        assert!(retired.contains(&"dev".to_string()), "{retired:?}");
        b.refresh_authorities().await.expect("refresh");
        let bundle = b.bundle("dev").await.expect("bundle");
        assert_eq!(
            bundle.matches("BEGIN CERTIFICATE").count(),
            2,
            "root + dev.2"
        );
        assert!(!b.publishes_crl("dev"));
        assert!(b.publishes_crl("dev.2"));
    }

    #[tokio::test]
    async fn a_server_with_a_stale_view_of_the_issuers_never_hands_out_a_revoked_issuers_certificate()
     {
        use tower::ServiceExt;
        let dir = tempfile::tempdir().expect("tmp");
        let (a, _ac, b, _bc) = replicas(dir.path()).await;
        let b = Arc::new(b);
        let app = crate::api::router(crate::api::AppState {
            ca: b.clone(),
            metrics: None,
            max_body: 64 * 1024,
        });
        let enroll = |token: ca_wire::EnrollmentToken| {
            let csr = crate::service::testing::p256_csr_pem();
            let body = serde_json::to_vec(&ca_wire::EnrollRequest {
                token,
                csr,
                dns: vec![],
                ips: vec![],
                ttl: None,
                env: None,
                service: None,
            })
            .expect("json");
            axum::http::Request::post("/v1/enroll")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body))
                .expect("request")
        };
        let token = || async {
            a.create_token(crate::service::TokenInput {
                env: "dev".into(),
                service: "api".into(),
                ttl: None,
                uses: 1,
                actor: "cli:test".into(),
            })
            .await
            .expect("token")
            .token
        };
        // Enrolls through b's router: the issuer of the stored certificate, and the renew-now
        // hint of the answer.
        let enrolled = || async {
            let r = app
                .clone()
                .oneshot(enroll(token().await))
                .await
                .expect("answer");
            assert_eq!(r.status(), 201);
            let hint = r
                .headers()
                .get(ca_wire::client::RENEW_NOW_HEADER)
                .map(|v| v.to_str().unwrap_or("?").to_string());
            let body = axum::body::to_bytes(r.into_body(), 1 << 20)
                .await
                .expect("body");
            let answer: ca_wire::CertificateResponse = serde_json::from_slice(&body).expect("json");
            let serial: crate::pki::Serial = answer.serial.parse().expect("serial");
            let stored = b.certificate(&serial).await.expect("stored");
            assert!(
                answer
                    .chain
                    .contains(&b.chain_tail_of(&stored.issuer_id).expect("tail"))
            );
            (stored.issuer_id, hint)
        };

        assert_eq!(
            enrolled().await,
            ("dev".to_string(), None),
            "an active issuer"
        );
        let signed_by_dev = certificates_in(&a, "dev").await.len();
        a.rotate(rotate_env("dev", true)).await.expect("rotate");
        // b has not re-read the issuers and signs with the revoked one first; the commit
        // refuses that certificate, b refreshes its view and signs with dev.2.
        assert_eq!(
            b.authorities()
                .active(AuthorityKind::Intermediate, "dev", b.now_unix())
                .map(|r| r.id.clone()),
            Some("dev".to_string()),
            "b's view is stale"
        );
        assert_eq!(enrolled().await, ("dev.2".to_string(), None));
        let after = certificates_in(&a, "dev").await;
        assert_eq!(after.len(), signed_by_dev + 1, "one certificate stored");
        assert_eq!(
            after.iter().filter(|c| c.issuer_id == "dev").count(),
            signed_by_dev,
            "none of them by the revoked issuer"
        );
    }

    #[tokio::test]
    async fn a_compromised_intermediate_is_revoked_on_the_root_crl_and_replaced_at_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let (a, _ac, b, _bc) = replicas(dir.path()).await;
        let old = a.issue(leaf(&a)).await.expect("leaf");
        let old_serial: crate::pki::Serial = old.record.serial.parse().expect("serial");
        let out = a.rotate(rotate_env("dev", true)).await.expect("rotate");
        assert_eq!(out.created[0].id, "dev.2");
        // Before its snapshot is refreshed, the other server signs with the revoked
        // intermediate; the commit refuses that, and it signs again with the new one.
        assert_eq!(
            b.issuer_hint("dev").await.expect("hint"),
            Some(RenewHint::IssuerRevoked),
            "the issuer's row says revoked while b's view does not"
        );
        assert_eq!(b.issued_hint("dev"), None);
        assert_eq!(
            b.issue(leaf(&b)).await.expect("leaf").record.issuer_id,
            "dev.2",
            "at once, on the other server too"
        );
        assert_eq!(b.issuer_hint("dev.2").await.expect("hint"), None);
        assert_eq!(b.issued_hint("dev"), Some(RenewHint::IssuerRevoked));
        assert_eq!(
            b.renew_hint(&old_serial).await.expect("hint"),
            Some(RenewHint::IssuerRevoked)
        );
        let bundle = b.bundle("dev").await.expect("bundle");
        let dev1 = b.authorities().get("dev").expect("dev").cert_pem.clone();
        assert!(
            !bundle.contains(&dev1),
            "a revoked issuer leaves the bundle"
        );
        let crl = b.current_crl(ROOT_ID).await.expect("root crl");
        let (_, parsed) = x509_parser::parse_x509_crl(&crl.der).expect("crl");
        let dev_serial = b.authorities().get("dev").expect("dev").serial.clone();
        assert!(
            parsed
                .iter_revoked_certificates()
                .any(|r| crate::pki::Serial::from_bytes(r.raw_serial()).to_hex() == dev_serial),
            "the root CRL lists the old intermediate"
        );
        // Its leaves are still answered for until they expire.
        assert!(b.publishes_crl("dev"));
        // A second compromise rotation while dev.2 is fine: allowed; a plain one while a next
        // generation waits: refused.
        let next = a.rotate(rotate_env("dev", false)).await.expect("rotate");
        assert_eq!(next.created[0].id, "dev.3");
        let err = a
            .rotate(rotate_env("dev", false))
            .await
            .expect_err("a next generation waits already");
        assert!(err.to_string().contains("dev.3"), "{err}");
        let unknown = a
            .rotate(rotate_env("nope", false))
            .await
            .expect_err("unknown env");
        assert!(
            unknown.to_string().contains("not in the policy"),
            "{unknown}"
        );
    }

    #[test]
    fn generation_ids() {
        assert_eq!(generation_id("prod", 1), "prod");
        assert_eq!(generation_id("prod", 3), "prod.3");
        assert_eq!(generation_id(TLS_ID, 2), "_tls.2");
    }
}
