//! Creating a CA: the root, one constrained intermediate per environment, and the intermediate
//! that issues the CA server's own HTTPS certificate. Everything is built in memory and written
//! to the store in one transaction by the caller.

use std::net::IpAddr;

use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use super::{ROOT_ID, ServiceError, TLS_ID, random_serial};
use crate::authority::{
    self, CaKey, IntermediateSpec, Issued, RootSpec, Signer, TlsIntermediateSpec,
};
use crate::clock::whole_seconds;
use crate::pki::{Fingerprint, Serial};
use crate::policy::Policy;
use crate::sealed::{self, Passphrase, Sealer};
use crate::store::{AuditEntry, AuditResult, AuthorityKind, AuthorityRecord, CaSettings, NewCa};

/// Names the CA server answers to unless `init --server-name` says otherwise.
pub const DEFAULT_SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Splits server names into DNS names and IP addresses, checking each.
pub fn split_server_names(names: &[String]) -> Result<(Vec<String>, Vec<IpAddr>), ServiceError> {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    if names.is_empty() {
        return Err(ServiceError::Invalid(
            "at least one server name is required".into(),
        ));
    }
    for n in names {
        if let Ok(ip) = n.parse::<IpAddr>() {
            ips.push(ip);
            continue;
        }
        let lower = n.to_ascii_lowercase();
        let valid = !lower.is_empty()
            && lower.len() <= 253
            && lower.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !valid {
            return Err(ServiceError::Invalid(format!(
                "server name {n:?} is neither an IP address nor a DNS name"
            )));
        }
        dns.push(lower);
    }
    Ok((dns, ips))
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
pub struct BuiltCa {
    /// What to write to the store.
    pub new_ca: NewCa,
    /// The root key to export when the root goes offline (sealed or plain text), zeroized on
    /// drop.
    pub root_key_export: Option<Zeroizing<String>>,
    /// SHA-256 fingerprint of the root certificate.
    pub root_fingerprint: Fingerprint,
    /// The root certificate PEM.
    pub root_pem: String,
}

impl std::fmt::Debug for BuiltCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltCa")
            .field("new_ca", &self.new_ca)
            .field(
                "root_key_export",
                &self.root_key_export.as_ref().map(|_| "<redacted>"),
            )
            .field("root_fingerprint", &self.root_fingerprint)
            .finish_non_exhaustive()
    }
}

pub(super) fn subject_of(der: &[u8]) -> String {
    X509Certificate::from_der(der)
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_default()
}

pub(super) fn authority_record(
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
        generation: 1,
        activates_at: None,
        retired_at: None,
        revoked_at: None,
        revocation_reason: None,
    }
}

/// Creates a root and one intermediate per policy environment, keys sealed with `passphrase`
/// (or stored in the clear when `None`, for development only).
#[allow(clippy::too_many_arguments)]
pub fn build_ca(
    policy: &Policy,
    policy_path: &str,
    passphrase: Option<&Passphrase>,
    lifetimes: CaLifetimes,
    server_names: &[String],
    root_offline: bool,
    now: OffsetDateTime,
    actor: &str,
) -> Result<BuiltCa, ServiceError> {
    let (server_dns, server_ips) = split_server_names(server_names)?;
    let now = whole_seconds(now);
    let sealer = match passphrase {
        Some(p) => {
            p.check_strength()?;
            Some(Sealer::new(p)?)
        }
        None => None,
    };
    let store_key = |slot: &str, secret: &[u8]| -> Result<Zeroizing<String>, ServiceError> {
        Ok(match &sealer {
            Some(s) => Zeroizing::new(s.seal(slot, secret)?),
            None => sealed::plain(secret),
        })
    };
    let audit_secret = Zeroizing::new(super::random_bytes::<32>()?);
    let audit_key = store_key(super::audit::AUDIT_SLOT, audit_secret.as_slice())?;
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
    let root_stored = store_key(ROOT_ID, &root_key.pkcs8())?;
    let root_fingerprint = root_cert.fingerprint;
    let root_pem = root_cert.pem.clone();
    let ts = now.unix_timestamp();
    let (root_in_store, root_key_export) = if root_offline {
        (None, Some(root_stored))
    } else {
        (Some(root_stored.to_string()), None)
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
                generation: 1,
            },
            &key,
            &root,
        )?;
        let stored = store_key(env, &key.pkcs8())?;
        authorities.push(authority_record(
            env,
            AuthorityKind::Intermediate,
            Some(ROOT_ID),
            &cert,
            &serial,
            Some(stored.to_string()),
            ts,
        ));
    }
    let tls_key = CaKey::generate()?;
    let tls_serial = random_serial()?;
    let tls_cert = authority::create_tls_intermediate(
        &TlsIntermediateSpec {
            trust_domain: td,
            dns: &server_dns,
            ips: &server_ips,
            serial: &tls_serial,
            not_before,
            not_after: now + lifetimes.intermediate,
            generation: 1,
        },
        &tls_key,
        &root,
    )?;
    let stored = store_key(TLS_ID, &tls_key.pkcs8())?;
    authorities.push(authority_record(
        TLS_ID,
        AuthorityKind::Tls,
        Some(ROOT_ID),
        &tls_cert,
        &tls_serial,
        Some(stored.to_string()),
        ts,
    ));
    Ok(BuiltCa {
        new_ca: NewCa {
            settings: CaSettings {
                trust_domain: td.to_string(),
                policy_path: policy_path.to_string(),
                keys_sealed: passphrase.is_some(),
                root_offline,
                server_names: server_names.to_vec(),
                created_at: ts,
                policy_sha256: Some(policy.sha256.clone()),
                audit_key: Some(audit_key.to_string()),
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
