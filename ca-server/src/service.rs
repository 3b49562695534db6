//! Use cases: create a CA, issue, look up. Ties policy, CSR screening, the signer and the store
//! together; the CLI and the HTTP API both call these and nothing below them.
//!
//! Issuance, in order: screen the CSR; ask policy; load the issuer; reserve a fresh random serial
//! in the store; sign; self-check (in the signer); commit the certificate row and its audit entry;
//! only then return the certificate. Refusals are audited too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ring::rand::{SecureRandom, SystemRandom};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::authority::{
    self, AuthorityError, CaKey, DistributionUrls, IntermediateSpec, Issued, LeafSpec, RootSpec,
    Signer,
};
use crate::clock::{Clock, whole_seconds};
use crate::csr::{CsrError, validate_csr};
use crate::error::{Classify, ErrorKind};
use crate::pki::{Fingerprint, Identity, Serial};
use crate::policy::{IssueRequest, Policy, PolicyError, PolicyViolation};
use crate::sealed::{self, Passphrase, SealError, Sealer};
use crate::store::{
    AuditEntry, AuditResult, AuthorityKind, AuthorityRecord, CaSettings, CertificateFilter,
    CertificateRecord, IssuedVia, NewCa, Store, StoreError,
};

/// Id of the root in the authorities table.
pub const ROOT_ID: &str = "root";

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
    /// A lookup found nothing.
    #[error("{0}")]
    NotFound(String),
    /// An argument is unusable.
    #[error("{0}")]
    Invalid(String),
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
            ServiceError::Invalid(_) => ErrorKind::BadRequest,
        }
    }
}

/// Lifetimes of the CA certificates created at init.
#[derive(Debug, Clone, Copy)]
pub struct CaLifetimes {
    /// Root validity (default 10 years).
    pub root: Duration,
    /// Intermediate validity (default 1 year, capped by the root).
    pub intermediate: Duration,
}

impl Default for CaLifetimes {
    fn default() -> Self {
        CaLifetimes {
            root: Duration::days(3650),
            intermediate: Duration::days(365),
        }
    }
}

/// A CA built in memory by [`build_ca`], ready to be stored.
#[derive(Debug)]
pub struct BuiltCa {
    /// What to write to the store.
    pub new_ca: NewCa,
    /// The root key to export when the root goes offline (sealed or plain text).
    pub root_key_export: Option<String>,
    /// SHA-256 fingerprint of the root certificate.
    pub root_fingerprint: Fingerprint,
    /// The root certificate PEM.
    pub root_pem: String,
}

fn random_serial() -> Result<Serial, ServiceError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ServiceError::Seal(SealError::Random))?;
    // Positive (top bit clear) and a non-zero first byte, so every serial is 16 bytes long.
    bytes[0] = (bytes[0] & 0x7f).max(1);
    Ok(Serial::from_bytes(&bytes))
}

fn subject_of(der: &[u8]) -> String {
    X509Certificate::from_der(der)
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_default()
}

fn authority_record(
    id: &str,
    kind: AuthorityKind,
    parent: Option<&str>,
    issued: &Issued,
    serial: &Serial,
    sealed_key: Option<String>,
    now: i64,
) -> AuthorityRecord {
    AuthorityRecord {
        id: id.to_string(),
        kind,
        env: (kind == AuthorityKind::Intermediate).then(|| id.to_string()),
        parent_id: parent.map(str::to_string),
        serial: serial.to_hex(),
        subject: subject_of(&issued.der),
        cert_pem: issued.pem.clone(),
        sealed_key,
        fingerprint: issued.fingerprint.to_hex(),
        not_before: issued.not_before.unix_timestamp(),
        not_after: issued.not_after.unix_timestamp(),
        created_at: now,
    }
}

/// Creates a root and one intermediate per policy environment, keys sealed with `passphrase`
/// (or stored in the clear when `None`, for development only).
pub fn build_ca(
    policy: &Policy,
    policy_path: &str,
    passphrase: Option<&Passphrase>,
    lifetimes: CaLifetimes,
    root_offline: bool,
    now: OffsetDateTime,
    actor: &str,
) -> Result<BuiltCa, ServiceError> {
    let now = whole_seconds(now);
    let sealer = match passphrase {
        Some(p) => {
            p.check_strength()?;
            Some(Sealer::new(p)?)
        }
        None => None,
    };
    let store_key = |slot: &str, key: &CaKey| -> Result<String, ServiceError> {
        let pkcs8 = key.pkcs8();
        Ok(match &sealer {
            Some(s) => s.seal(slot, &pkcs8)?,
            None => sealed::plain(&pkcs8),
        })
    };
    let td = policy.trust_domain.as_str();
    let not_before = now - Duration::minutes(1);
    let root_key = CaKey::generate()?;
    let root_serial = random_serial()?;
    let root_cert = authority::create_root(
        &RootSpec {
            trust_domain: td,
            serial: &root_serial,
            not_before,
            not_after: now + lifetimes.root,
        },
        &root_key,
    )?;
    let root_stored = store_key(ROOT_ID, &root_key)?;
    let root_fingerprint = root_cert.fingerprint;
    let root_pem = root_cert.pem.clone();
    let ts = now.unix_timestamp();
    let (root_in_store, root_key_export) = if root_offline {
        (None, Some(root_stored))
    } else {
        (Some(root_stored), None)
    };
    let mut authorities = vec![authority_record(
        ROOT_ID,
        AuthorityKind::Root,
        None,
        &root_cert,
        &root_serial,
        root_in_store,
        ts,
    )];
    let root = Signer::new(root_cert.der.clone(), root_key)?;
    for (env, e) in &policy.environments {
        let key = CaKey::generate()?;
        let serial = random_serial()?;
        let cert = authority::create_intermediate(
            &IntermediateSpec {
                trust_domain: td,
                env,
                dns_suffixes: &e.dns_suffixes,
                serial: &serial,
                not_before,
                not_after: now + lifetimes.intermediate,
            },
            &key,
            &root,
        )?;
        let stored = store_key(env, &key)?;
        authorities.push(authority_record(
            env,
            AuthorityKind::Intermediate,
            Some(ROOT_ID),
            &cert,
            &serial,
            Some(stored),
            ts,
        ));
    }
    Ok(BuiltCa {
        new_ca: NewCa {
            settings: CaSettings {
                trust_domain: td.to_string(),
                policy_path: policy_path.to_string(),
                keys_sealed: passphrase.is_some(),
                root_offline,
                created_at: ts,
            },
            authorities,
            audit: AuditEntry {
                id: 0,
                at: ts,
                actor: actor.to_string(),
                action: "init".into(),
                env: None,
                service: None,
                serial: Some(root_serial.to_hex()),
                result: AuditResult::Ok,
                reason: Some(format!("root sha256 {root_fingerprint}")),
            },
        },
        root_key_export,
        root_fingerprint,
        root_pem,
    })
}

/// How leaves are issued, beyond policy.
#[derive(Debug, Clone)]
pub struct IssueSettings {
    /// notBefore is backdated by this much to tolerate clock skew between hosts.
    pub backdate: Duration,
    /// Public base URL for CRL and OCSP pointers in leaves (none: no pointers).
    pub public_url: Option<String>,
}

impl Default for IssueSettings {
    fn default() -> Self {
        IssueSettings {
            backdate: Duration::minutes(1),
            public_url: None,
        }
    }
}

/// A request to issue a leaf.
#[derive(Debug, Clone)]
pub struct IssueInput {
    /// Who the certificate is for.
    pub identity: Identity,
    /// Requested DNS names; when empty, the CSR's requested names are used.
    pub dns: Vec<String>,
    /// Requested IP SANs; when empty (and `dns` is empty), the CSR's requested IPs are used.
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

/// The CA's use cases over one store.
pub struct Ca {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    settings: CaSettings,
    policy: Policy,
    passphrase: Option<Passphrase>,
    issue: IssueSettings,
    signers: Mutex<HashMap<String, Arc<Signer>>>,
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
        issue: IssueSettings,
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
            store,
            clock,
            settings,
            policy,
            passphrase,
            issue,
            signers: Mutex::new(HashMap::new()),
        })
    }

    /// The settings recorded at init.
    pub fn settings(&self) -> &CaSettings {
        &self.settings
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn now(&self) -> OffsetDateTime {
        whole_seconds(self.clock.now())
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

    /// The signer of environment `env`, opened once and cached.
    pub async fn signer(&self, env: &str) -> Result<Arc<Signer>, ServiceError> {
        if let Some(s) = self
            .signers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(env)
        {
            return Ok(s.clone());
        }
        let rec = self.authority(env).await?;
        let stored = rec
            .sealed_key
            .as_deref()
            .ok_or_else(|| ServiceError::NoIssuer(env.to_string()))?;
        let pkcs8 = sealed::open(env, stored, self.passphrase.as_ref())?;
        let key = CaKey::from_pkcs8(&pkcs8)?;
        let der = pem_to_der(&rec.cert_pem)?;
        let signer = Arc::new(Signer::new(der, key)?);
        self.signers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(env.to_string(), signer.clone());
        Ok(signer)
    }

    /// PEM of the root certificate.
    pub async fn root_pem(&self) -> Result<String, ServiceError> {
        Ok(self.authority(ROOT_ID).await?.cert_pem)
    }

    /// Trust bundle for `env`: the root, then the environment's intermediate.
    pub async fn bundle(&self, env: &str) -> Result<String, ServiceError> {
        if !self.policy.environments.contains_key(env) {
            return Err(ServiceError::NotFound(format!(
                "unknown environment {env:?}"
            )));
        }
        let root = self.authority(ROOT_ID).await?;
        let int = self.authority(env).await?;
        Ok(format!("{}{}", root.cert_pem, int.cert_pem))
    }

    async fn audit_refusal(&self, input: &IssueInput, err: &ServiceError) {
        let entry = AuditEntry {
            id: 0,
            at: self.now().unix_timestamp(),
            actor: input.actor.clone(),
            action: input.via.as_str().replace("cli", "issue"),
            env: Some(input.identity.env.clone()),
            service: Some(input.identity.service.clone()),
            serial: None,
            result: if err.kind() == ErrorKind::Internal {
                AuditResult::Error
            } else {
                AuditResult::Denied
            },
            reason: Some(err.to_string()),
        };
        if let Err(e) = self.store.append_audit(&entry).await {
            tracing::error!(error = %e, "could not append a refusal to the audit log");
        }
    }

    /// Issues a leaf (see the module docs for the steps). Refusals are audited.
    pub async fn issue(&self, input: IssueInput) -> Result<IssueOutput, ServiceError> {
        match self.issue_inner(&input).await {
            Ok(out) => Ok(out),
            Err(e) => {
                self.audit_refusal(&input, &e).await;
                Err(e)
            }
        }
    }

    async fn issue_inner(&self, input: &IssueInput) -> Result<IssueOutput, ServiceError> {
        let csr = validate_csr(&input.csr)?;
        let (dns, ips) = if input.dns.is_empty() && input.ips.is_empty() {
            (csr.requested_dns.clone(), csr.requested_ips.clone())
        } else {
            (input.dns.clone(), input.ips.clone())
        };
        let decision = self.policy.decide(&IssueRequest {
            identity: &input.identity,
            dns: &dns,
            ips: &ips,
            ttl: input.ttl,
            key_type: csr.key_type,
        })?;
        let env = &input.identity.env;
        let signer = self.signer(env).await?;
        let now = self.now();

        let mut serial = random_serial()?;
        let mut attempts = 0;
        loop {
            match self
                .store
                .reserve_serial(&serial, now.unix_timestamp())
                .await
            {
                Ok(()) => break,
                // 2^-126 per draw; retrying a few times turns a miracle into a non-event.
                Err(StoreError::Conflict(_)) if attempts < 3 => {
                    attempts += 1;
                    serial = random_serial()?;
                }
                Err(e) => return Err(e.into()),
            }
        }

        let urls = self.issue.public_url.as_ref().map(|base| {
            let base = base.trim_end_matches('/');
            DistributionUrls {
                crl: format!("{base}/crl/{env}.crl"),
                ocsp: format!("{base}/ocsp"),
            }
        });
        let issued = authority::sign_leaf(
            &LeafSpec {
                trust_domain: &self.settings.trust_domain,
                identity: &input.identity,
                dns: &decision.dns,
                ips: &decision.ips,
                spki_der: &csr.spki_der,
                key_type: csr.key_type,
                serial: &serial,
                not_before: now - self.issue.backdate,
                not_after: now + decision.ttl,
                urls: urls.as_ref(),
            },
            &signer,
        )?;

        let record = CertificateRecord {
            serial: serial.to_hex(),
            issuer_id: env.clone(),
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
            action: input.via.as_str().replace("cli", "issue"),
            env: Some(env.clone()),
            service: Some(input.identity.service.clone()),
            serial: Some(record.serial.clone()),
            result: AuditResult::Ok,
            reason: None,
        };
        // Durable before it leaves: nothing is returned unless this commit succeeded.
        self.store.insert_certificate(&record, &audit).await?;

        let intermediate_pem = authority::pem_encode("CERTIFICATE", signer.cert_der());
        let root_pem = self.root_pem().await?;
        Ok(IssueOutput {
            cert_pem: issued.pem.clone(),
            chain_pem: format!("{}{}", issued.pem, intermediate_pem),
            bundle_pem: format!("{root_pem}{intermediate_pem}"),
            record,
        })
    }

    /// Certificates matching `filter` (its `now` is set from the clock when zero).
    pub async fn list(
        &self,
        mut filter: CertificateFilter,
    ) -> Result<Vec<CertificateRecord>, ServiceError> {
        if filter.now == 0 {
            filter.now = self.now().unix_timestamp();
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

    /// The current time according to the CA's clock, in Unix seconds.
    pub fn now_unix(&self) -> i64 {
        self.now().unix_timestamp()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::SqliteStore;
    use rcgen::{CertificateParams, KeyPair};

    const POLICY: &str = include_str!("../../policies/example.toml");

    async fn ca(dir: &std::path::Path, sealed_with: Option<&str>) -> Ca {
        let policy = Policy::from_toml(POLICY, "example.toml").expect("policy");
        let pass = sealed_with.map(|p| Passphrase::new(p.into()));
        let now = OffsetDateTime::now_utc();
        let built = build_ca(
            &policy,
            "example.toml",
            pass.as_ref(),
            CaLifetimes::default(),
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
        Ca::open(
            store,
            Arc::new(ManualClock::new(now)),
            policy,
            pass,
            IssueSettings::default(),
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
            IssueSettings::default(),
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
            IssueSettings::default(),
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
            IssueSettings::default(),
        )
        .await
        .expect_err("refused");
        assert!(matches!(e, ServiceError::TrustDomainChanged { .. }));
    }
}
