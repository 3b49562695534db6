//! The network use cases: enrollment with a token, renewal with the presented client
//! certificate, authentication of client certificates, and the CA server's own HTTPS certificate.

use std::net::IpAddr;

use ca_wire::EnrollmentToken;
use rcgen::{KeyPair, PublicKeyData};
use time::Duration;
use zeroize::Zeroizing;

use super::{Ca, IssueInput, IssueOutput, ServiceError, TLS_ID, split_server_names};
use crate::authority::{self, LeafSpec};
use crate::csr::validate_csr;
use crate::pki::{Fingerprint, Identity, KeyType, Serial, ct_eq};
use crate::store::{AuditEntry, AuditResult, CertificateRecord, IssuedVia};

/// Enrollment: a token and a CSR.
#[derive(Debug, Clone)]
pub struct EnrollInput {
    /// `<id>.<secret>` as minted by `token create` (its `Debug` shows the id only).
    pub token: EnrollmentToken,
    /// CSR, PEM or DER.
    pub csr: Vec<u8>,
    /// Requested DNS names (default: the CSR's).
    pub dns: Vec<String>,
    /// Requested IP SANs (default: the CSR's).
    pub ips: Vec<IpAddr>,
    /// Requested lifetime.
    pub ttl: Option<Duration>,
    /// If given, must equal the token's environment.
    pub env: Option<String>,
    /// If given, must equal the token's service.
    pub service: Option<String>,
}

/// Renewal: the presented client certificate and a CSR with a new key.
#[derive(Debug, Clone)]
pub struct RenewInput {
    /// DER of the client certificate the TLS layer verified.
    pub presented: Vec<u8>,
    /// CSR, PEM or DER, for a key other than the presented certificate's.
    pub csr: Vec<u8>,
    /// Requested DNS names (default: the CSR's, else the presented certificate's).
    pub dns: Vec<String>,
    /// Requested IP SANs (default as for names).
    pub ips: Vec<IpAddr>,
    /// Requested lifetime.
    pub ttl: Option<Duration>,
    /// If given, must equal the presented identity's environment.
    pub env: Option<String>,
    /// If given, must equal the presented identity's service.
    pub service: Option<String>,
}

/// The CA server's HTTPS certificate with its key.
pub struct ServerCert {
    /// The TLS intermediate that signed it.
    pub issuer_id: String,
    /// Leaf, the TLS intermediate, and during a root rotation the link to the other root (DER).
    pub chain_der: Vec<Vec<u8>>,
    /// PKCS#8 key, zeroized on drop.
    pub key_pkcs8: Zeroizing<Vec<u8>>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Serial, hex.
    pub serial: String,
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert")
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn same_identity_requested(
    identity: &Identity,
    env: &Option<String>,
    service: &Option<String>,
) -> bool {
    env.as_ref().is_none_or(|e| *e == identity.env)
        && service.as_ref().is_none_or(|s| *s == identity.service)
}

fn describe(env: &Option<String>, service: &Option<String>, identity: &Identity) -> String {
    format!(
        "{}/{}",
        env.as_deref().unwrap_or(&identity.env),
        service.as_deref().unwrap_or(&identity.service)
    )
}

impl Ca {
    /// Enrolls with a token. The token is spent only once CSR and policy have accepted the
    /// request, and given back if signing then fails inside the CA.
    pub async fn enroll(&self, input: EnrollInput) -> Result<IssueOutput, ServiceError> {
        let token = match self.check_token(input.token.expose()).await {
            Ok(t) => t,
            Err(e) => {
                let actor = match super::parse_token(input.token.expose()) {
                    Ok((id, _)) => format!("token:{id}"),
                    Err(_) => "token:malformed".into(),
                };
                self.audit_refusal("enroll", &actor, None, &e).await;
                return Err(e);
            }
        };
        let identity = Identity {
            env: token.env.clone(),
            service: token.service.clone(),
        };
        let actor = format!("token:{}", token.id);
        let result = async {
            if !same_identity_requested(&identity, &input.env, &input.service) {
                return Err(ServiceError::Forbidden(format!(
                    "token {} enrolls {identity}, not {}",
                    token.id,
                    describe(&input.env, &input.service, &identity)
                )));
            }
            let issue = IssueInput {
                identity: identity.clone(),
                dns: input.dns.clone(),
                ips: input.ips.clone(),
                ttl: input.ttl,
                csr: input.csr.clone(),
                via: IssuedVia::Enroll,
                actor: actor.clone(),
            };
            let prepared = self.prepare(&issue)?;
            // The token use is spent in the same commit as the certificate: a request that
            // fails anywhere spends nothing.
            self.complete(&issue, prepared, Some(&token.id)).await
        }
        .await;
        if let Err(e) = &result {
            self.audit_refusal("enroll", &actor, Some(&identity), e)
                .await;
        }
        result
    }

    /// Checks a verified client certificate against the store: issued here, unchanged, not
    /// revoked, not expired. Runs on every request, so a revocation takes effect at once.
    pub async fn authenticate(&self, leaf_der: &[u8]) -> Result<CertificateRecord, ServiceError> {
        let unknown =
            || ServiceError::Unauthenticated("client certificate was not issued by this CA".into());
        let serial = Serial::of_certificate(leaf_der).ok_or_else(unknown)?;
        let record = self
            .store()
            .certificate(&serial)
            .await?
            .ok_or_else(unknown)?;
        if !ct_eq(
            record.fingerprint.as_bytes(),
            Fingerprint::of(leaf_der).to_hex().as_bytes(),
        ) || record.issued_via == IssuedVia::Server
        {
            return Err(unknown());
        }
        if record.revoked_at.is_some() {
            return Err(ServiceError::Forbidden(format!(
                "client certificate {serial} is revoked"
            )));
        }
        if record.not_after <= self.now_unix() {
            return Err(ServiceError::Unauthenticated(format!(
                "client certificate {serial} has expired"
            )));
        }
        Ok(record)
    }

    /// Authenticates a client certificate and requires its SPIFFE ID among the policy's admins.
    pub async fn authorize_admin(
        &self,
        leaf_der: &[u8],
    ) -> Result<CertificateRecord, ServiceError> {
        let record = self.authenticate(leaf_der).await?;
        if !self.policy().admins.contains(&record.spiffe_id) {
            return Err(ServiceError::Forbidden(format!(
                "{} is not an admin identity (roles.admins)",
                record.spiffe_id
            )));
        }
        Ok(record)
    }

    /// Renews: the new certificate keeps the presented identity, needs a new key, and its names
    /// must still be allowed by today's policy.
    pub async fn renew(&self, input: RenewInput) -> Result<IssueOutput, ServiceError> {
        let record = match self.authenticate(&input.presented).await {
            Ok(r) => r,
            Err(e) => {
                let actor = Serial::actor_of_certificate(&input.presented);
                self.audit_refusal("renew", &actor, None, &e).await;
                return Err(e);
            }
        };
        let identity = Identity {
            env: record.env.clone(),
            service: record.service.clone(),
        };
        let actor = format!("cert:{}", record.serial);
        let result = async {
            if !same_identity_requested(&identity, &input.env, &input.service) {
                return Err(ServiceError::Forbidden(format!(
                    "a certificate of {identity} cannot renew into {}",
                    describe(&input.env, &input.service, &identity)
                )));
            }
            let csr = validate_csr(&input.csr)?;
            if ct_eq(
                Fingerprint::of(&csr.spki_der).to_hex().as_bytes(),
                record.key_fingerprint.as_bytes(),
            ) {
                return Err(ServiceError::Invalid(
                    "the CSR reuses the key of the presented certificate; renewal requires a new key".into(),
                ));
            }
            let (dns, ips) = if !input.dns.is_empty() || !input.ips.is_empty() {
                (input.dns.clone(), input.ips.clone())
            } else if !csr.requested_dns.is_empty() || !csr.requested_ips.is_empty() {
                (csr.requested_dns.clone(), csr.requested_ips.clone())
            } else {
                let ips = record.ip_addresses.iter().filter_map(|s| s.parse().ok()).collect();
                (record.dns_names.clone(), ips)
            };
            let issue = IssueInput {
                identity: identity.clone(),
                dns,
                ips,
                ttl: input.ttl,
                csr: input.csr.clone(),
                via: IssuedVia::Renew,
                actor: actor.clone(),
            };
            let prepared = self.prepare_validated(&issue, csr)?;
            self.complete(&issue, prepared, None).await
        }
        .await;
        if let Err(e) = &result {
            self.audit_refusal("renew", &actor, Some(&identity), e)
                .await;
        }
        result
    }

    /// Issues the CA server's HTTPS certificate for `names` (which must be among the server names
    /// fixed at init) with a fresh P-256 key, recorded like every other certificate.
    pub async fn issue_server_cert(
        &self,
        names: &[String],
        ttl: Duration,
    ) -> Result<ServerCert, ServiceError> {
        let (dns, ips) = split_server_names(names)?;
        let (allowed_dns, allowed_ips) = split_server_names(&self.settings().server_names)?;
        for d in &dns {
            if !allowed_dns.contains(d) {
                return Err(ServiceError::Invalid(format!(
                    "hostname {d:?} is not among the server names fixed at init ({})",
                    self.settings().server_names.join(", ")
                )));
            }
        }
        for ip in &ips {
            if !allowed_ips.contains(ip) {
                return Err(ServiceError::Invalid(format!(
                    "address {ip} is not among the server names fixed at init ({})",
                    self.settings().server_names.join(", ")
                )));
            }
        }
        let (issuer, signer) = self
            .active_signer(crate::store::AuthorityKind::Tls, TLS_ID)
            .await?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map(Zeroizing::new)
            .map_err(|e| ServiceError::Authority(e.into()))?;
        let spki = key.subject_public_key_info();
        let now = self.now();
        let serial = self.reserve_serial(now).await?;
        let issued = authority::sign_leaf(
            &LeafSpec {
                trust_domain: &self.settings().trust_domain,
                identity: None,
                dns: &dns,
                ips: &ips,
                spki_der: &spki,
                key_type: KeyType::P256,
                serial: &serial,
                not_before: now - Duration::minutes(1),
                not_after: now + ttl,
                urls: None,
                common_name: None,
            },
            &signer,
        )?;
        let record = CertificateRecord {
            serial: serial.to_hex(),
            issuer_id: issuer.id.clone(),
            env: TLS_ID.into(),
            service: "ca-server".into(),
            spiffe_id: String::new(),
            dns_names: dns.clone(),
            ip_addresses: ips.iter().map(ToString::to_string).collect(),
            key_type: KeyType::P256.as_str().into(),
            key_fingerprint: Fingerprint::of(&spki).to_hex(),
            fingerprint: issued.fingerprint.to_hex(),
            not_before: issued.not_before.unix_timestamp(),
            not_after: issued.not_after.unix_timestamp(),
            cert_pem: issued.pem.clone(),
            issued_via: IssuedVia::Server,
            issued_by: "ca-server".into(),
            created_at: now.unix_timestamp(),
            revoked_at: None,
            revocation_reason: None,
        };
        let audit = AuditEntry {
            id: 0,
            at: now.unix_timestamp(),
            actor: "ca-server".into(),
            action: "server-cert".into(),
            env: None,
            service: None,
            serial: Some(record.serial.clone()),
            result: AuditResult::Ok,
            reason: Some(names.join(",")),
        };
        self.store().insert_certificate(&record, &audit).await?;
        let mut chain_der = vec![issued.der, signer.cert_der().to_vec()];
        for block in pem::parse_many(self.chain_tail(&issuer))
            .map_err(|_| {
                ServiceError::Store(crate::store::StoreError::Corrupt(
                    "stored cross-certificate is not PEM".into(),
                ))
            })?
            .into_iter()
            .skip(1)
        {
            chain_der.push(block.into_contents());
        }
        Ok(ServerCert {
            issuer_id: issuer.id,
            chain_der,
            key_pkcs8: Zeroizing::new(key.serialize_der()),
            not_before: record.not_before,
            not_after: record.not_after,
            serial: record.serial,
        })
    }
}
