//! Use cases: create a CA, issue, enroll, renew, tokens, look-ups. Ties policy, CSR screening,
//! the signer and the store together; the CLI and the HTTP API both call these and nothing below.
//!
//! Issuance, in order: screen the CSR; ask policy ([`Ca::prepare`]); load the issuer; reserve a
//! fresh random serial in the store; sign; self-check (in the signer); commit the certificate row
//! with its audit entry; only then return the certificate ([`Ca::complete`]). Refusals are audited.

mod audit;
mod commit;
mod init;
mod mtls;
mod revocation;
mod rotation;
mod tokens;

pub use audit::AuditReport;
pub use init::{BuiltCa, CaLifetimes, DEFAULT_SERVER_NAMES, build_ca, split_server_names};
pub use mtls::{EnrollInput, RenewInput, ServerCert};
pub use revocation::{RevokeInput, RevokeTarget};
pub use rotation::{IssuerInfo, IssuerState, RenewHint, RotateInput, RotateOutput, RotateTarget};
pub use tokens::{CreatedToken, MAX_SINGLE_USE_TTL, TokenInput, check_single_use_ttl, parse_token};

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ring::rand::{SecureRandom, SystemRandom};
use time::{Duration, OffsetDateTime};

use crate::authority::{self, AuthorityError, CaKey, DistributionUrls, LeafSpec, Signer};
use crate::clock::{Clock, whole_seconds};
use crate::csr::{CsrError, ValidatedCsr, validate_csr};
use crate::error::{Classify, ErrorKind};
use crate::pki::{Fingerprint, Identity, Serial};
use crate::policy::{Decision, IssueRequest, Policy, PolicyError, PolicyViolation};
use crate::sealed::{self, Passphrase, SealError};
use crate::store::{
    AuditEntry, AuditResult, AuthorityRecord, CaSettings, CertificateFilter, CertificateRecord,
    Issuance, IssuedVia, JobClaim, Store, StoreError, TokenUse,
};

/// Id of the root in the authorities table.
pub const ROOT_ID: &str = "root";
/// Id of the intermediate that issues the CA server's HTTPS certificate (never an environment
/// name: those cannot start with `_`).
pub const TLS_ID: &str = "_tls";

/// Why a use case failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The CSR was refused.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// Policy refused the request.
    #[error(transparent)]
    Policy(#[from] PolicyViolation),
    /// The policy file is invalid.
    #[error(transparent)]
    PolicyFile(#[from] PolicyError),
    /// A CA key could not be opened or sealed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// Signing failed.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No CA has been initialised here.
    #[error("no CA is initialised in this data directory (run `ca-server init`)")]
    NotInitialized,
    /// The environment is in the policy but has no intermediate.
    #[error("environment {0:?} has no intermediate CA (was it added to the policy after init?)")]
    NoIssuer(String),
    /// The policy names another trust domain than the CA was created for.
    #[error(
        "policy trust domain {policy:?} differs from the CA's {recorded:?}; the trust domain is fixed at init"
    )]
    TrustDomainChanged {
        /// Recorded at init.
        recorded: String,
        /// In the current policy.
        policy: String,
    },
    /// The enrollment token is unknown, malformed, expired, used up or revoked.
    #[error("{0}")]
    Token(String),
    /// The caller presented no usable credential (client certificate).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
    /// A lookup found nothing.
    #[error("{0}")]
    NotFound(String),
    /// An argument is unusable.
    #[error("{0}")]
    Invalid(String),
    /// The audit log does not verify (the first entry or checkpoint that does not fit).
    #[error("the audit log does not verify: {0}")]
    AuditTampered(String),
    /// This server's policy file is not the one the servers sharing the database serve.
    #[error(
        "the policy file {path} (sha256 {file}) differs from the policy published in the database \
         (sha256 {published}), which the other servers serve: give this server the same file, or, if \
         this file is the new policy, run `ca-server policy publish` with it first"
    )]
    PolicyMismatch {
        /// The policy file.
        path: String,
        /// Its hash.
        file: String,
        /// The published hash.
        published: String,
    },
}

impl Classify for ServiceError {
    fn kind(&self) -> ErrorKind {
        match self {
            ServiceError::Csr(e) => e.kind(),
            ServiceError::Policy(e) => e.kind(),
            ServiceError::PolicyFile(e) => e.kind(),
            ServiceError::Seal(e) => e.kind(),
            ServiceError::Authority(e) => e.kind(),
            ServiceError::Store(e) => e.kind(),
            ServiceError::NotInitialized | ServiceError::NotFound(_) => ErrorKind::NotFound,
            ServiceError::NoIssuer(_) | ServiceError::TrustDomainChanged { .. } => {
                ErrorKind::Internal
            }
            ServiceError::Token(_) | ServiceError::Unauthenticated(_) => ErrorKind::Unauthorized,
            ServiceError::Forbidden(_) => ErrorKind::Denied,
            ServiceError::Invalid(_) => ErrorKind::BadRequest,
            ServiceError::PolicyMismatch { .. } => ErrorKind::Conflict,
            ServiceError::AuditTampered(_) => ErrorKind::Internal,
        }
    }
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], ServiceError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ServiceError::Seal(SealError::Random))?;
    Ok(bytes)
}

pub(crate) fn random_serial() -> Result<Serial, ServiceError> {
    let mut bytes: [u8; 16] = random_bytes()?;
    // Positive (top bit clear) and a non-zero first byte, so every serial is 16 bytes long.
    bytes[0] = (bytes[0] & 0x7f).max(1);
    Ok(Serial::from_bytes(&bytes))
}

/// A leaf's serial: a format byte (0x01: positive and non-zero, so every serial is 16 bytes long),
/// the time `at` it was reserved (Unix seconds, 5 bytes) and 80 bits from the CSPRNG, so serials
/// stay unpredictable and non-sequential (the CA/Browser Forum asks for 64 bits). Serials of one
/// second sort together: the serial indexes of a large store grow at one end, instead of every
/// certificate dirtying (and first reading) a random page of each of them.
pub(crate) fn time_ordered_serial(at: i64) -> Result<Serial, ServiceError> {
    let mut bytes: [u8; 16] = random_bytes()?;
    let seconds = u64::try_from(at).unwrap_or(0).to_be_bytes();
    bytes[0] = 0x01;
    bytes[1..6].copy_from_slice(&seconds[3..8]);
    Ok(Serial::from_bytes(&bytes))
}

/// How the CA issues and publishes, beyond policy.
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// notBefore is backdated by this much to tolerate clock skew between hosts.
    pub backdate: Duration,
    /// Public base URL for CRL and OCSP pointers in leaves (none: no pointers).
    pub public_url: Option<String>,
    /// nextUpdate - thisUpdate of environment CRLs.
    pub crl_validity: Duration,
    /// nextUpdate - thisUpdate of the root's CRL (long: the root key may be offline).
    pub root_crl_validity: Duration,
    /// Revoked certificates stay on CRLs until this long after they expire.
    pub crl_lookback: Duration,
    /// nextUpdate - thisUpdate of OCSP answers.
    pub ocsp_validity: Duration,
}

impl Default for CaOptions {
    fn default() -> Self {
        CaOptions {
            backdate: Duration::minutes(1),
            public_url: None,
            crl_validity: Duration::hours(24),
            root_crl_validity: Duration::days(30),
            crl_lookback: Duration::days(7),
            ocsp_validity: Duration::hours(1),
        }
    }
}

/// A request to issue a leaf.
#[derive(Debug, Clone)]
pub struct IssueInput {
    /// Who the certificate is for.
    pub identity: Identity,
    /// Requested DNS names; when empty (and `ips` too), the CSR's requested names are used, and
    /// when both name some they must be the same.
    pub dns: Vec<String>,
    /// Requested IP SANs.
    pub ips: Vec<IpAddr>,
    /// Requested lifetime (policy default when `None`).
    pub ttl: Option<Duration>,
    /// The CSR, PEM or DER.
    pub csr: Vec<u8>,
    /// How the request arrived.
    pub via: IssuedVia,
    /// Who asked, for the record and the audit log.
    pub actor: String,
}

/// A request that passed CSR screening and policy: ready to sign.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The screened CSR.
    pub csr: ValidatedCsr,
    /// Policy's decision.
    pub decision: Decision,
}

/// An issued leaf and what to hand out with it.
#[derive(Debug, Clone)]
pub struct IssueOutput {
    /// The stored record.
    pub record: CertificateRecord,
    /// Leaf PEM.
    pub cert_pem: String,
    /// Leaf followed by its intermediate.
    pub chain_pem: String,
    /// Trust bundle for the environment: root, then its intermediate.
    pub bundle_pem: String,
}

impl IssueOutput {
    /// When a holder should renew: two thirds into the certificate's lifetime.
    pub fn renew_after(&self) -> i64 {
        let r = &self.record;
        r.not_before + (r.not_after - r.not_before) * 2 / 3
    }
}

/// The CA's use cases over one store.
pub struct Ca {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    settings: CaSettings,
    policy: std::sync::RwLock<Arc<Policy>>,
    passphrase: Option<Passphrase>,
    options: CaOptions,
    revocation_epoch: std::sync::atomic::AtomicU64,
    ocsp_cache: Mutex<HashMap<Vec<u8>, revocation::CachedOcsp>>,
    ocsp_issuers: Mutex<HashMap<String, Arc<crate::ocsp::IssuerHashes>>>,
    signers: Mutex<HashMap<String, Arc<Signer>>>,
    authorities: std::sync::RwLock<Arc<rotation::Authorities>>,
    serials: commit::SerialPool,
    committer: commit::GroupCommitter,
    tokens: tokens::TokenCache,
    replica: String,
    audit_secret: tokio::sync::OnceCell<zeroize::Zeroizing<Vec<u8>>>,
}

/// What [`Ca::follow_published_policy`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyFollow {
    /// The published policy is the one in force.
    InSync,
    /// Switched to the published policy (its hash).
    Reloaded(String),
}

/// `host:pid`, naming this server among those sharing a database.
fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.settings.trust_domain)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Opens the CA in `store` with `policy` (which must keep the recorded trust domain).
    pub async fn open(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        policy: Policy,
        passphrase: Option<Passphrase>,
        options: CaOptions,
    ) -> Result<Ca, ServiceError> {
        let settings = store
            .settings()
            .await?
            .ok_or(ServiceError::NotInitialized)?;
        if settings.trust_domain != policy.trust_domain {
            return Err(ServiceError::TrustDomainChanged {
                recorded: settings.trust_domain,
                policy: policy.trust_domain,
            });
        }
        Ok(Ca {
            clock,
            settings,
            policy: std::sync::RwLock::new(Arc::new(policy)),
            passphrase,
            options,
            revocation_epoch: std::sync::atomic::AtomicU64::new(0),
            ocsp_cache: Mutex::new(HashMap::new()),
            ocsp_issuers: Mutex::new(HashMap::new()),
            signers: Mutex::new(HashMap::new()),
            authorities: std::sync::RwLock::new(Arc::new(rotation::Authorities {
                all: store.authorities().await?,
                cross: store.cross_certificates().await?,
            })),
            serials: commit::SerialPool::new(commit::SERIAL_BLOCK),
            committer: commit::GroupCommitter::spawn(store.clone()),
            tokens: tokens::TokenCache::default(),
            replica: replica_name(),
            audit_secret: tokio::sync::OnceCell::new(),
            store,
        })
    }

    /// The settings recorded at init.
    pub fn settings(&self) -> &CaSettings {
        &self.settings
    }

    /// The policy in force (a snapshot: a reload does not change what a caller already holds).
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the policy, refusing one that changes the trust domain or names an environment
    /// without an intermediate. Requests already in flight finish under the old policy.
    pub async fn reload_policy(&self, policy: Policy) -> Result<(), ServiceError> {
        let sha256 = self.install_policy(policy).await?;
        self.publish_policy_hash(&sha256, "ca-server", "policy-reload")
            .await
    }

    /// Puts `policy` in force if it fits the CA (same trust domain, an intermediate for every
    /// environment); returns its hash.
    async fn install_policy(&self, policy: Policy) -> Result<String, ServiceError> {
        if policy.trust_domain != self.settings.trust_domain {
            return Err(ServiceError::TrustDomainChanged {
                recorded: self.settings.trust_domain.clone(),
                policy: policy.trust_domain,
            });
        }
        self.refresh_authorities().await?;
        self.check_issuers(&policy)?;
        let sha256 = policy.sha256.clone();
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
        Ok(sha256)
    }

    /// Every environment of `policy` has an intermediate that issues now.
    fn check_issuers(&self, policy: &Policy) -> Result<(), ServiceError> {
        let auth = self.authorities();
        let now = self.now_unix();
        for env in policy.environments.keys() {
            auth.active(crate::store::AuthorityKind::Intermediate, env, now)
                .ok_or_else(|| ServiceError::NoIssuer(env.clone()))?;
        }
        Ok(())
    }

    /// Records `sha256` in the store as the policy every server must serve, audited.
    async fn publish_policy_hash(
        &self,
        sha256: &str,
        actor: &str,
        action: &str,
    ) -> Result<(), ServiceError> {
        let audit = AuditEntry {
            id: 0,
            at: self.now_unix(),
            actor: actor.to_string(),
            action: action.to_string(),
            env: None,
            service: None,
            serial: None,
            result: AuditResult::Ok,
            reason: Some(format!("policy sha256 {sha256}")),
        };
        Ok(self.store.publish_policy(sha256, &audit).await?)
    }

    /// Makes the policy in force the one every server must serve (`ca-server policy publish`).
    pub async fn publish_policy(&self, actor: &str) -> Result<String, ServiceError> {
        let policy = self.policy();
        self.check_issuers(&policy)?;
        self.publish_policy_hash(&policy.sha256, actor, "policy-publish")
            .await?;
        Ok(policy.sha256.clone())
    }

    /// At start-up: a server whose policy file differs from the published one refuses to serve
    /// when the database is shared by several servers (a lone server's file simply becomes the
    /// published policy, as an edit followed by a restart means). Nothing published yet: this
    /// policy is.
    pub async fn check_policy_at_start(&self, policy_path: &str) -> Result<(), ServiceError> {
        let ours = self.policy().sha256.clone();
        let published = self
            .store
            .settings()
            .await?
            .ok_or(ServiceError::NotInitialized)?
            .policy_sha256;
        match published {
            Some(p) if p == ours => Ok(()),
            Some(p) if self.store.shared_by_servers() => Err(ServiceError::PolicyMismatch {
                path: policy_path.to_string(),
                file: ours,
                published: p,
            }),
            _ => {
                self.publish_policy_hash(&ours, "ca-server", "policy-publish")
                    .await
            }
        }
    }

    /// Follows a policy published by another server: when the published hash is not the one in
    /// force, re-reads `path` and switches to it if it is the published policy; otherwise
    /// reports the mismatch (the old policy stays in force).
    pub async fn follow_published_policy(
        &self,
        path: &std::path::Path,
    ) -> Result<PolicyFollow, ServiceError> {
        let ours = self.policy().sha256.clone();
        let Some(published) = self
            .store
            .settings()
            .await?
            .ok_or(ServiceError::NotInitialized)?
            .policy_sha256
        else {
            return Ok(PolicyFollow::InSync);
        };
        if published == ours {
            return Ok(PolicyFollow::InSync);
        }
        let policy = Policy::load(path)?;
        if policy.sha256 != published {
            return Err(ServiceError::PolicyMismatch {
                path: path.display().to_string(),
                file: policy.sha256,
                published,
            });
        }
        self.install_policy(policy).await?;
        self.audit(AuditEntry {
            id: 0,
            at: self.now_unix(),
            actor: self.replica.clone(),
            action: "policy-reload".into(),
            env: None,
            service: None,
            serial: None,
            result: AuditResult::Ok,
            reason: Some(format!("followed the published policy sha256 {published}")),
        })
        .await;
        Ok(PolicyFollow::Reloaded(published))
    }

    /// This server's name in job claims and audit entries (`host:pid`).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Claims period `period` of `job` for this server, with a lease of `lease_secs`;
    /// `None` if another server has it (or had it and finished).
    pub async fn claim_job(
        &self,
        job: &str,
        period: i64,
        lease_secs: i64,
    ) -> Result<Option<JobClaim>, ServiceError> {
        let now = self.now_unix();
        let claim = JobClaim {
            job: job.to_string(),
            period,
            owner: self.replica.clone(),
            now,
            lease_until: now + lease_secs,
        };
        Ok(self.store.claim_job(&claim).await?.then_some(claim))
    }

    /// Marks a claimed period done.
    pub async fn finish_job(&self, claim: &JobClaim) -> Result<(), ServiceError> {
        Ok(self.store.finish_job(claim, self.now_unix()).await?)
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The options in force.
    pub fn options(&self) -> &CaOptions {
        &self.options
    }

    fn now(&self) -> OffsetDateTime {
        whole_seconds(self.clock.now())
    }

    /// The current time according to the CA's clock, in Unix seconds.
    pub fn now_unix(&self) -> i64 {
        self.now().unix_timestamp()
    }

    async fn authority(&self, id: &str) -> Result<AuthorityRecord, ServiceError> {
        self.store.authority(id).await?.ok_or_else(|| {
            if id == ROOT_ID {
                ServiceError::NotInitialized
            } else {
                ServiceError::NoIssuer(id.to_string())
            }
        })
    }

    /// The signer of authority `id`, opened once and cached.
    pub async fn signer(&self, id: &str) -> Result<Arc<Signer>, ServiceError> {
        if let Some(s) = self
            .signers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return Ok(s.clone());
        }
        let rec = self.authority(id).await?;
        let stored = rec
            .sealed_key
            .as_deref()
            .ok_or_else(|| ServiceError::NoIssuer(id.to_string()))?;
        let pkcs8 = sealed::open(id, stored, self.passphrase.as_ref())?;
        let key = CaKey::from_pkcs8(&pkcs8)?;
        let der = pem_to_der(&rec.cert_pem)?;
        let signer = Arc::new(Signer::new(der, key)?);
        self.signers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), signer.clone());
        Ok(signer)
    }

    /// Opens every signer the policy needs (all environments and the TLS issuer), so a wrong
    /// passphrase or a missing intermediate fails at start-up rather than on the first request.
    /// Uses the authorities as last read ([`Ca::open`], then the servers' follower every 2 s).
    pub async fn load_signers(&self) -> Result<(), ServiceError> {
        for env in self.policy().environments.keys() {
            self.issuer(env).await?;
        }
        self.active_signer(crate::store::AuthorityKind::Tls, TLS_ID)
            .await?;
        Ok(())
    }

    /// PEM of the roots in the bundles (one; two during a root rotation's overlap).
    pub async fn root_pem(&self) -> Result<String, ServiceError> {
        let auth = self.authorities();
        let roots: String = auth
            .published_roots(self.now_unix())
            .iter()
            .map(|r| r.cert_pem.as_str())
            .collect();
        if roots.is_empty() {
            return Err(ServiceError::NotInitialized);
        }
        Ok(roots)
    }

    /// Trust bundle for `env`: the published roots, then the environment's published
    /// intermediates (the active one, and during a rotation the next or the retiring one).
    pub async fn bundle(&self, env: &str) -> Result<String, ServiceError> {
        if !self.policy().environments.contains_key(env) {
            return Err(ServiceError::NotFound(format!(
                "unknown environment {env:?}"
            )));
        }
        let auth = self.authorities();
        let now = self.now_unix();
        let mut out = self.root_pem().await?;
        let ints = auth.published_intermediates(env, now);
        if ints.is_empty() {
            return Err(ServiceError::NoIssuer(env.to_string()));
        }
        for i in ints {
            out.push_str(&i.cert_pem);
        }
        Ok(out)
    }

    pub(crate) async fn audit(&self, entry: AuditEntry) {
        if let Err(e) = self.store.append_audit(&entry).await {
            tracing::error!(error = %e, action = %entry.action, "could not append to the audit log");
        }
    }

    /// Records a request refused before it reached a use case (no client certificate,
    /// malformed JSON, an oversized body): every enroll and renew attempt leaves a trace.
    pub async fn audit_rejected_request(&self, action: &str, actor: &str, reason: &str) {
        self.audit(AuditEntry {
            id: 0,
            at: self.now_unix(),
            actor: actor.to_string(),
            action: action.to_string(),
            env: None,
            service: None,
            serial: None,
            result: AuditResult::Denied,
            reason: Some(reason.to_string()),
        })
        .await;
    }

    pub(crate) async fn audit_refusal(
        &self,
        action: &str,
        actor: &str,
        identity: Option<&Identity>,
        err: &ServiceError,
    ) {
        self.audit(AuditEntry {
            id: 0,
            at: self.now_unix(),
            actor: actor.to_string(),
            action: action.to_string(),
            env: identity.map(|i| i.env.clone()),
            service: identity.map(|i| i.service.clone()),
            serial: None,
            result: if err.kind() == ErrorKind::Internal {
                AuditResult::Error
            } else {
                AuditResult::Denied
            },
            reason: Some(err.to_string()),
        })
        .await;
    }

    /// Issues a leaf: [`Ca::prepare`] then [`Ca::complete`]. Refusals are audited.
    pub async fn issue(&self, input: IssueInput) -> Result<IssueOutput, ServiceError> {
        let csr = validate_csr(&input.csr).map_err(ServiceError::from);
        self.issue_screened(input, csr).await
    }

    /// [`Ca::issue`] for a caller that already screened `input.csr` (its signature is verified
    /// once per request, not twice); a screening error is refused and audited like any other.
    pub(crate) async fn issue_screened(
        &self,
        input: IssueInput,
        csr: Result<ValidatedCsr, ServiceError>,
    ) -> Result<IssueOutput, ServiceError> {
        let result = match csr.and_then(|csr| self.prepare_validated(&input, csr)) {
            Ok(p) => self.complete(&input, p, None).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            self.audit_refusal(action_of(input.via), &input.actor, Some(&input.identity), e)
                .await;
        }
        result
    }

    /// Screens the CSR and asks policy. Pure: nothing is written. A CSR asking for anything the
    /// certificate would not carry exactly is refused here (see [`crate::csr`]), so a refusal
    /// spends no token and no serial.
    pub fn prepare(&self, input: &IssueInput) -> Result<Prepared, ServiceError> {
        self.prepare_validated(input, validate_csr(&input.csr)?)
    }

    /// [`Ca::prepare`] for a caller that already screened `input.csr` into `csr` (its signature
    /// is verified once per request, not twice).
    pub(crate) fn prepare_validated(
        &self,
        input: &IssueInput,
        csr: ValidatedCsr,
    ) -> Result<Prepared, ServiceError> {
        csr.check_uris(&input.identity.spiffe_id(&self.settings.trust_domain))?;
        let (dns, ips) = csr.names_to_request(&input.dns, &input.ips)?;
        let decision = self.policy().decide(&IssueRequest {
            identity: &input.identity,
            dns: &dns,
            ips: &ips,
            ttl: input.ttl,
            key_type: csr.key_type,
        })?;
        Ok(Prepared { csr, decision })
    }

    /// A durably reserved serial, never handed out before.
    async fn reserve_serial(&self, now: OffsetDateTime) -> Result<Serial, ServiceError> {
        self.serials
            .next(self.store.as_ref(), now.unix_timestamp())
            .await
    }

    /// Signs a prepared request and commits it with its audit entry (and the use of `token`,
    /// spent only if the certificate commits) before returning it. When the commit finds the
    /// issuer revoked (another server rotated it out after a compromise and this server's view
    /// of the authorities is a moment old), the view is refreshed and the request is signed
    /// once more by the environment's new issuer: nothing signed by an issuer whose revocation
    /// has committed leaves.
    pub async fn complete(
        &self,
        input: &IssueInput,
        prepared: Prepared,
        token: Option<&str>,
    ) -> Result<IssueOutput, ServiceError> {
        let env = &input.identity.env;
        let mut refreshed = false;
        let (issuer, issued, record) = loop {
            match self.sign_and_commit(input, &prepared, token).await {
                Err(ServiceError::Store(StoreError::IssuerRevoked(id))) if !refreshed => {
                    tracing::warn!(issuer = %id, env = %env, "issuer revoked meanwhile; signing with its successor");
                    self.refresh_authorities().await?;
                    refreshed = true;
                }
                other => break other?,
            }
        };
        Ok(IssueOutput {
            chain_pem: format!("{}{}", issued.pem, self.chain_tail(&issuer)),
            bundle_pem: self.bundle(env).await?,
            cert_pem: issued.pem,
            record,
        })
    }

    /// One attempt of [`Ca::complete`]: signs with the issuer this server sees as active and
    /// waits for the commit.
    async fn sign_and_commit(
        &self,
        input: &IssueInput,
        prepared: &Prepared,
        token: Option<&str>,
    ) -> Result<(AuthorityRecord, authority::Issued, CertificateRecord), ServiceError> {
        let Prepared { csr, decision } = prepared;
        let env = &input.identity.env;
        let (issuer, signer) = self.issuer(env).await?;
        let now = self.now();
        let serial = self.reserve_serial(now).await?;
        let urls = self.options.public_url.as_ref().map(|base| {
            let base = base.trim_end_matches('/');
            DistributionUrls {
                crl: format!("{base}/crl/{}.crl", issuer.id),
                ocsp: format!("{base}/ocsp"),
            }
        });
        let issued = authority::sign_leaf(
            &LeafSpec {
                trust_domain: &self.settings.trust_domain,
                identity: Some(&input.identity),
                dns: &decision.dns,
                ips: &decision.ips,
                spki_der: &csr.spki_der,
                key_type: csr.key_type,
                serial: &serial,
                not_before: now - self.options.backdate,
                not_after: now + decision.ttl,
                urls: urls.as_ref(),
                common_name: match input.via {
                    IssuedVia::Acme => decision.dns.first().map(String::as_str),
                    _ => None,
                },
            },
            &signer,
        )?;

        let record = CertificateRecord {
            serial: serial.to_hex(),
            issuer_id: issuer.id.clone(),
            env: env.clone(),
            service: input.identity.service.clone(),
            spiffe_id: decision.spiffe_id.clone(),
            dns_names: decision.dns.clone(),
            ip_addresses: decision.ips.iter().map(ToString::to_string).collect(),
            key_type: csr.key_type.as_str().to_string(),
            key_fingerprint: Fingerprint::of(&csr.spki_der).to_hex(),
            fingerprint: issued.fingerprint.to_hex(),
            not_before: issued.not_before.unix_timestamp(),
            not_after: issued.not_after.unix_timestamp(),
            cert_pem: issued.pem.clone(),
            issued_via: input.via,
            issued_by: input.actor.clone(),
            created_at: now.unix_timestamp(),
            revoked_at: None,
            revocation_reason: None,
        };
        let audit = AuditEntry {
            id: 0,
            at: now.unix_timestamp(),
            actor: input.actor.clone(),
            action: action_of(input.via).to_string(),
            env: Some(env.clone()),
            service: Some(input.identity.service.clone()),
            serial: Some(record.serial.clone()),
            result: AuditResult::Ok,
            reason: None,
        };
        // Durable before it leaves: nothing is returned unless this commit succeeded.
        let item = Issuance {
            cert: record,
            audit,
            token: token.map(|id| TokenUse {
                id: id.to_string(),
                at: now.unix_timestamp(),
            }),
        };
        match self.committer.commit(item).await {
            Ok(committed) => Ok((issuer, issued, committed.cert)),
            Err(StoreError::TokenUsedUp(id)) => Err(self.token_refusal(&id).await),
            Err(e) => Err(e.into()),
        }
    }

    /// Certificates matching `filter` (its `now` is set from the clock when zero).
    pub async fn list(
        &self,
        mut filter: CertificateFilter,
    ) -> Result<Vec<CertificateRecord>, ServiceError> {
        if filter.now == 0 {
            filter.now = self.now_unix();
        }
        Ok(self.store.list_certificates(&filter).await?)
    }

    /// One certificate by serial.
    pub async fn certificate(&self, serial: &Serial) -> Result<CertificateRecord, ServiceError> {
        self.store
            .certificate(serial)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no certificate with serial {serial}")))
    }
}

/// The audit action name of an issuance path.
fn action_of(via: IssuedVia) -> &'static str {
    match via {
        IssuedVia::Cli => "issue",
        IssuedVia::Acme => "acme-finalize",
        IssuedVia::Enroll => "enroll",
        IssuedVia::Renew => "renew",
        IssuedVia::Server => "server-cert",
    }
}

/// Decodes the first PEM block of `pem` to DER.
pub fn pem_to_der(pem_text: &str) -> Result<Vec<u8>, ServiceError> {
    pem::parse(pem_text)
        .map(|p| p.into_contents())
        .map_err(|_| {
            ServiceError::Store(StoreError::Corrupt("stored certificate is not PEM".into()))
        })
}

/// The example policy's CA in a SQLite store, for unit tests of every module.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use time::OffsetDateTime;

    use super::{CaLifetimes, build_ca};
    use crate::policy::Policy;
    use crate::sealed::Passphrase;
    use crate::store::{SqliteStore, Store};

    /// policies/example.toml.
    pub(crate) const POLICY: &str = include_str!("../../../policies/example.toml");

    /// Every certificate of environment `env` in `ca`'s store.
    pub(crate) async fn certificates_in(
        ca: &super::Ca,
        env: &str,
    ) -> Vec<crate::store::CertificateRecord> {
        ca.store()
            .list_certificates(&crate::store::CertificateFilter {
                env: Some(env.into()),
                ..Default::default()
            })
            .await
            .expect("list")
    }

    /// PEM of a CSR for a fresh P-256 key that asks for nothing beyond its key.
    pub(crate) fn p256_csr_pem() -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        rcgen::CertificateParams::default()
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    /// Two servers ("replicas") of the example CA on one store, each with its own clock.
    pub(crate) async fn replicas(
        dir: &std::path::Path,
    ) -> (
        super::Ca,
        Arc<crate::clock::ManualClock>,
        super::Ca,
        Arc<crate::clock::ManualClock>,
    ) {
        use crate::clock::ManualClock;
        use crate::service::CaOptions;
        let now = OffsetDateTime::now_utc();
        let lifetimes = CaLifetimes {
            root: time::Duration::days(3650),
            intermediate: time::Duration::days(30),
        };
        let (policy, store) =
            example_store(dir, None, lifetimes, &["localhost".to_string()], now).await;
        let mut out = Vec::new();
        for _ in 0..2 {
            let clock = Arc::new(ManualClock::new(now));
            let ca = super::Ca::open(
                store.clone() as Arc<dyn Store>,
                clock.clone(),
                policy.clone(),
                None,
                CaOptions::default(),
            )
            .await
            .expect("open");
            out.push((ca, clock));
        }
        let (b, bc) = out.pop().expect("b");
        let (a, ac) = out.pop().expect("a");
        (a, ac, b, bc)
    }

    /// Builds the example policy's CA at `now` (sealed with `pass` when given) and initialises
    /// it in `dir/ca.db`; returns the policy and the store.
    pub(crate) async fn example_store(
        dir: &std::path::Path,
        pass: Option<&Passphrase>,
        lifetimes: CaLifetimes,
        server_names: &[String],
        now: OffsetDateTime,
    ) -> (Policy, Arc<SqliteStore>) {
        let policy = Policy::from_toml(POLICY, "example.toml").expect("policy");
        let built = build_ca(
            &policy,
            "example.toml",
            pass,
            lifetimes,
            server_names,
            false,
            now,
            "test",
        )
        .expect("build");
        let store = Arc::new(
            SqliteStore::open(&dir.join("ca.db"), true)
                .await
                .expect("store"),
        );
        store.initialize(&built.new_ca).await.expect("init");
        (policy, store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use rcgen::{CertificateParams, KeyPair};

    pub(crate) fn default_names() -> Vec<String> {
        DEFAULT_SERVER_NAMES.iter().map(|s| s.to_string()).collect()
    }

    use super::testing::POLICY;

    #[test]
    fn leaf_serials_sort_by_reservation_second_and_keep_80_random_bits() {
        let at = 1_796_000_000;
        let a = time_ordered_serial(at).expect("serial");
        let b = time_ordered_serial(at).expect("serial");
        let later = time_ordered_serial(at + 1).expect("serial");
        for s in [&a, &b, &later] {
            assert_eq!(s.as_bytes().len(), 16, "{s}");
            assert_eq!(s.as_bytes()[0], 0x01, "{s}");
        }
        let mut seconds = [0u8; 8];
        seconds[3..].copy_from_slice(&a.as_bytes()[1..6]);
        assert_eq!(i64::from_be_bytes(seconds), at);
        assert_ne!(
            a.as_bytes()[6..],
            b.as_bytes()[6..],
            "the random part repeats"
        );
        assert!(a.to_hex() < later.to_hex() && b.to_hex() < later.to_hex());
    }

    async fn ca(dir: &std::path::Path, sealed_with: Option<&str>) -> Ca {
        let pass = sealed_with.map(|p| Passphrase::new(p.into()));
        let now = OffsetDateTime::now_utc();
        let (policy, store) = super::testing::example_store(
            dir,
            pass.as_ref(),
            CaLifetimes::default(),
            &default_names(),
            now,
        )
        .await;
        Ca::open(
            store,
            Arc::new(ManualClock::new(now)),
            policy,
            pass,
            CaOptions::default(),
        )
        .await
        .expect("open")
    }

    fn csr(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = KeyPair::generate_for(alg).expect("key");
        CertificateParams::default()
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
            .into_bytes()
    }

    fn input(env: &str, dns: &[&str], csr: Vec<u8>) -> IssueInput {
        IssueInput {
            identity: Identity {
                env: env.into(),
                service: "api".into(),
            },
            dns: dns.iter().map(|s| s.to_string()).collect(),
            ips: vec![],
            ttl: None,
            csr,
            via: IssuedVia::Cli,
            actor: "cli:test".into(),
        }
    }

    #[tokio::test]
    async fn issues_stores_and_audits() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = ca(dir.path(), None).await;
        let out = ca
            .issue(input(
                "dev",
                &["api.dev.svc.example.internal"],
                csr(&rcgen::PKCS_ECDSA_P256_SHA256),
            ))
            .await
            .expect("issued");
        let serial: Serial = out.record.serial.parse().expect("serial");
        assert_eq!(serial.as_bytes().len(), 16);
        assert_eq!(ca.certificate(&serial).await.expect("stored"), out.record);
        assert!(out.chain_pem.starts_with(&out.cert_pem));
        let audit = ca.store().audit_entries(None, 100).await.expect("audit");
        assert_eq!(
            audit.last().map(|e| e.serial.clone()),
            Some(Some(out.record.serial.clone()))
        );
        assert_eq!(
            out.record.not_after - out.record.created_at,
            8 * 3600,
            "dev default TTL"
        );
    }

    #[tokio::test]
    async fn refusals_store_no_certificate_but_are_audited() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = ca(dir.path(), None).await;
        let e = ca
            .issue(input(
                "dev",
                &["api.prod.svc.example.internal"],
                csr(&rcgen::PKCS_ECDSA_P256_SHA256),
            ))
            .await
            .expect_err("denied");
        assert_eq!(e.kind(), ErrorKind::Denied);
        let e = ca
            .issue(input("dev", &[], b"not a csr".to_vec()))
            .await
            .expect_err("bad csr");
        assert_eq!(e.kind(), ErrorKind::BadRequest);
        assert!(
            ca.list(CertificateFilter::default())
                .await
                .expect("list")
                .is_empty()
        );
        let audit = ca.store().audit_entries(None, 100).await.expect("audit");
        let denied: Vec<_> = audit
            .iter()
            .filter(|e| e.result == AuditResult::Denied)
            .collect();
        assert_eq!(denied.len(), 2);
        assert!(
            denied[0]
                .reason
                .as_deref()
                .unwrap_or("")
                .contains("environments.dev.dns_suffixes")
        );
    }

    /// A P-256 CSR for `params`.
    fn csr_for(params: &CertificateParams) -> Vec<u8> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
            .into_bytes()
    }

    #[tokio::test]
    async fn what_a_csr_requests_is_granted_exactly_or_refused_before_anything_is_written() {
        use rcgen::{ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};
        use x509_parser::prelude::{FromDer, X509Certificate};

        let dir = tempfile::tempdir().expect("tmp");
        let ca = ca(dir.path(), None).await;
        let api_dev = "api.dev.svc.example.internal";
        let uri = |u: &str| SanType::URI(u.try_into().expect("ia5"));

        let mut other_env = CertificateParams::new(vec![api_dev.to_string()]).expect("params");
        other_env
            .subject_alt_names
            .push(uri("spiffe://example.internal/prod/api"));
        let mut email = CertificateParams::new(Vec::<String>::new()).expect("params");
        email.subject_alt_names = vec![SanType::Rfc822Name(
            "ops@example.internal".try_into().expect("ia5"),
        )];
        let mut code_signing = CertificateParams::new(Vec::<String>::new()).expect("params");
        code_signing.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        let other_name = CertificateParams::new(vec!["web.dev.svc.example.internal".to_string()])
            .expect("params");
        let out_of_policy =
            CertificateParams::new(vec!["api.prod.svc.example.internal".to_string()])
                .expect("params");
        let cases: [(&CertificateParams, &[&str], ErrorKind, &str); 5] = [
            (
                &other_env,
                &[],
                ErrorKind::BadRequest,
                "URI SAN \"spiffe://example.internal/prod/api\"",
            ),
            (&email, &[api_dev], ErrorKind::BadRequest, "email SAN"),
            (
                &code_signing,
                &[api_dev],
                ErrorKind::BadRequest,
                "extendedKeyUsage codeSigning",
            ),
            // The caller's names used to win silently over the CSR's.
            (
                &other_name,
                &[api_dev],
                ErrorKind::BadRequest,
                "CSR requests dns:web.dev.svc.example.internal",
            ),
            (
                &out_of_policy,
                &[],
                ErrorKind::Denied,
                "environments.dev.dns_suffixes",
            ),
        ];
        for (params, dns, kind, needle) in cases {
            let e = ca
                .issue(input("dev", dns, csr_for(params)))
                .await
                .expect_err(needle);
            assert_eq!(e.kind(), kind, "{e}");
            assert!(e.to_string().contains(needle), "{e}");
            if kind == ErrorKind::BadRequest {
                assert!(matches!(e, ServiceError::Csr(_)), "{e:?}");
            }
        }
        assert!(
            ca.list(CertificateFilter::default())
                .await
                .expect("list")
                .is_empty(),
            "no refused CSR may store a certificate"
        );
        let audit = ca.store().audit_entries(None, 100).await.expect("audit");
        assert_eq!(
            audit
                .iter()
                .filter(|e| e.result == AuditResult::Denied && e.serial.is_none())
                .count(),
            5,
            "every refusal is audited: {audit:?}"
        );

        // Exactly what the leaf carries, the identity's own SPIFFE ID and the names the caller
        // gives too: granted, and the certificate carries what was asked for.
        let mut exact = CertificateParams::new(vec![api_dev.to_string()]).expect("params");
        exact
            .subject_alt_names
            .push(uri("spiffe://example.internal/dev/api"));
        exact.is_ca = IsCa::ExplicitNoCa;
        exact.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        exact.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let out = ca
            .issue(input("dev", &[api_dev], csr_for(&exact)))
            .await
            .expect("granted exactly");
        let der = pem_to_der(&out.cert_pem).expect("der");
        let (_, cert) = X509Certificate::from_der(&der).expect("parse");
        let ku = cert.key_usage().expect("ku").expect("present").value;
        assert_eq!(
            ku.flags,
            crate::csr::granted_key_usage(crate::pki::KeyType::P256).flags
        );
        let eku = cert
            .extended_key_usage()
            .expect("eku")
            .expect("present")
            .value;
        assert!(eku.server_auth && eku.client_auth && eku.other.is_empty() && !eku.any);
        assert_eq!(out.record.dns_names, [api_dev]);
        assert_eq!(out.record.spiffe_id, "spiffe://example.internal/dev/api");
    }

    #[tokio::test]
    async fn sealed_keys_need_the_right_passphrase() {
        let dir = tempfile::tempdir().expect("tmp");
        let good = ca(dir.path(), Some("a long enough passphrase")).await;
        assert!(good.signer("dev").await.is_ok());
        let policy = Policy::from_toml(POLICY, "example.toml").expect("policy");
        let store = good.store().clone();
        let bad = Ca::open(
            store.clone(),
            Arc::new(ManualClock::new(OffsetDateTime::now_utc())),
            policy.clone(),
            Some(Passphrase::new("the wrong passphrase".into())),
            CaOptions::default(),
        )
        .await
        .expect("open");
        let e = bad.signer("dev").await.expect_err("wrong passphrase");
        assert_eq!(e.kind(), ErrorKind::Unauthorized);
        let none = Ca::open(
            store,
            Arc::new(ManualClock::new(OffsetDateTime::now_utc())),
            policy,
            None,
            CaOptions::default(),
        )
        .await
        .expect("open");
        assert!(
            none.signer("dev")
                .await
                .expect_err("no passphrase")
                .to_string()
                .contains("CA_PASSPHRASE")
        );
    }

    #[tokio::test]
    async fn weak_passphrase_is_refused_at_init() {
        let policy = Policy::from_toml(POLICY, "example.toml").expect("policy");
        let e = build_ca(
            &policy,
            "p",
            Some(&Passphrase::new("short".into())),
            CaLifetimes::default(),
            &default_names(),
            false,
            OffsetDateTime::now_utc(),
            "t",
        )
        .expect_err("weak");
        assert_eq!(e.kind(), ErrorKind::BadRequest);
    }

    #[tokio::test]
    async fn a_changed_trust_domain_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = ca(dir.path(), None).await;
        let other = Policy::from_toml(
            &POLICY.replace(
                "trust_domain = \"example.internal\"",
                "trust_domain = \"other.internal\"",
            ),
            "p",
        );
        // The example's admin IDs name example.internal, so the edited policy is itself invalid;
        // a minimal one with another trust domain shows the refusal.
        assert!(other.is_err());
        let minimal = Policy::from_toml(
            "trust_domain = \"other.internal\"\n[environments.dev]\ndns_suffixes=[\"dev.other.internal\"]\ndefault_ttl=\"1h\"\nmax_ttl=\"1h\"",
            "p",
        )
        .expect("valid");
        let e = Ca::open(
            ca.store().clone(),
            Arc::new(ManualClock::new(OffsetDateTime::now_utc())),
            minimal,
            None,
            CaOptions::default(),
        )
        .await
        .expect_err("refused");
        assert!(matches!(e, ServiceError::TrustDomainChanged { .. }));
    }
}
