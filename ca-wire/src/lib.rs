//! Wire types of the CA's HTTP API and a small HTTPS client (rustls on ring) with mutual TLS and
//! root pinning, shared by `ca-server`'s remote commands and `ca-agent`. Deliberately free of the
//! server's storage stack.
#![forbid(unsafe_code)]

pub mod client;
#[cfg(any(test, feature = "test-support"))]
pub mod leak;

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Enrollment token text, `<id>.<secret>`: zeroized on drop, and its `Debug` shows at most the id.
/// On the wire it is the plain string.
#[derive(Clone)]
pub struct EnrollmentToken(Zeroizing<String>);

impl EnrollmentToken {
    /// Wraps token text as given (the server trims and checks its shape).
    pub fn new(text: String) -> EnrollmentToken {
        EnrollmentToken(Zeroizing::new(text))
    }

    /// The whole text, secret included: for sending it, hashing it or showing it once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The token id (the part before the dot) when the text is shaped like one of ours.
    pub fn id(&self) -> Option<&str> {
        let (id, _) = self.0.trim().split_once('.')?;
        (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
    }
}

impl From<String> for EnrollmentToken {
    fn from(text: String) -> Self {
        EnrollmentToken::new(text)
    }
}

impl std::fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.id() {
            Some(id) => write!(f, "EnrollmentToken({id}.<redacted>)"),
            None => f.write_str("EnrollmentToken(<redacted>)"),
        }
    }
}

impl Serialize for EnrollmentToken {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for EnrollmentToken {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(EnrollmentToken::new)
    }
}

/// `POST /v1/enroll`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// Enrollment token (`<id>.<secret>`).
    pub token: EnrollmentToken,
    /// PEM CSR.
    pub csr: String,
    /// DNS names (default: those the CSR requests).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// IP SANs (default: those the CSR requests).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    /// Lifetime such as `1h` (default: the policy's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Must equal the token's environment, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Must equal the token's service, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// `POST /v1/renew` (over mutual TLS with the current certificate).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// PEM CSR for a new key.
    pub csr: String,
    /// DNS names (default: the CSR's, else the presented certificate's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// IP SANs (default as for names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    /// Lifetime such as `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Must equal the presented identity's environment, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Must equal the presented identity's service, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// The answer to enroll and renew.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateResponse {
    /// Serial, lowercase hex.
    pub serial: String,
    /// SPIFFE ID.
    pub spiffe_id: String,
    /// Leaf PEM.
    pub certificate: String,
    /// Leaf followed by its intermediate, PEM.
    pub chain: String,
    /// Trust bundle of the environment (root, then intermediate), PEM.
    pub bundle: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// RFC 3339: when to renew (two thirds into the lifetime).
    pub renew_after: String,
}

/// `POST /v1/admin/revoke` (admin identity) and `POST /v1/revoke` (the holder, serial omitted).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Serial, hex (any case, colons optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// With `service`: revoke every live certificate of this identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// With `env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// RFC 5280 reason: unspecified, key-compromise, ca-compromise, affiliation-changed,
    /// superseded, cessation-of-operation (default unspecified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Only list what would be revoked.
    #[serde(default)]
    pub dry_run: bool,
}

/// One certificate named in a revocation answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevokedCertificate {
    /// Serial, hex.
    pub serial: String,
    /// Environment.
    pub env: String,
    /// Service.
    pub service: String,
    /// RFC 3339.
    pub not_after: String,
}

/// The answer to a revocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeResponse {
    /// Certificates revoked (or, with `dry_run`, that would be).
    pub certificates: Vec<RevokedCertificate>,
    /// RFC 5280 reason name.
    pub reason: String,
    /// Whether nothing was changed.
    pub dry_run: bool,
}

/// `GET /v1/info`: what an agent needs to route names between this CA and a public one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CaInfo {
    /// The SPIFFE trust domain.
    pub trust_domain: String,
    /// Environments by name.
    pub environments: BTreeMap<String, EnvironmentInfo>,
}

/// One environment of [`CaInfo`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnvironmentInfo {
    /// DNS suffixes the environment's intermediate may issue under.
    pub dns_suffixes: Vec<String>,
}

impl CaInfo {
    /// Whether `name` (a DNS name, `*.` wildcards included) lies under one of the private DNS
    /// suffixes of any environment: only this CA can certify it.
    pub fn is_private_name(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let name = name.strip_prefix("*.").unwrap_or(&name);
        self.environments.values().any(|e| {
            e.dns_suffixes.iter().any(|s| {
                let s = s.trim_start_matches('.').to_ascii_lowercase();
                name == s || name.ends_with(&format!(".{s}"))
            })
        })
    }
}

/// An RFC 7807 problem document, as every error of the API is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Problem {
    /// Stable identifier, `urn:ca-server:problem:<slug>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// HTTP reason phrase.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// Human explanation, safe to show.
    pub detail: String,
}

impl Problem {
    /// The slug after the URN prefix (`invalid-token`, `forbidden`, ...).
    pub fn slug(&self) -> &str {
        self.kind.rsplit(':').next().unwrap_or(&self.kind)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.slug(), self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leak::assert_redacted;

    #[test]
    fn secret_holding_types_never_print_their_secrets() {
        let id = "0123456789abcdef";
        let secret = "feedfacecafebeef".repeat(4);
        let token = EnrollmentToken::new(format!("{id}.{secret}"));
        assert_redacted("EnrollmentToken", &token, secret.as_bytes());
        assert!(format!("{token:?}").contains(id), "the id is shown");
        let shapeless = EnrollmentToken::new(format!("not-an-id.{secret}"));
        assert_redacted("EnrollmentToken", &shapeless, b"not-an-id");
        assert_redacted("EnrollmentToken", &shapeless, secret.as_bytes());

        let req = EnrollRequest {
            token: token.clone(),
            csr: "-----BEGIN CERTIFICATE REQUEST-----".into(),
            dns: vec!["api.dev.svc.example.internal".into()],
            ips: vec![],
            ttl: None,
            env: Some("dev".into()),
            service: Some("api".into()),
        };
        assert_redacted("EnrollRequest", &req, secret.as_bytes());
        // The wire format is the plain token text.
        let json = serde_json::to_value(&req).expect("json");
        assert_eq!(json["token"], format!("{id}.{secret}"));
        let back: EnrollRequest = serde_json::from_value(json).expect("parses");
        assert_eq!(back.token.expose(), token.expose());

        let key_der = b"client private key: 0xC1E47-5EC2E7-0123456789".to_vec();
        let key_pem = client::pem_encode("PRIVATE KEY", &key_der);
        let cert_pem = client::pem_certificate(b"not really a certificate");
        let identity = client::ClientIdentity::from_pem(cert_pem.as_bytes(), key_pem.as_bytes())
            .expect("identity");
        assert_redacted("ClientIdentity", &identity, &key_der);
        assert_redacted("ClientIdentity", &identity, key_pem.as_bytes());
    }

    #[test]
    fn private_names_are_those_under_an_environment_suffix() {
        let info = CaInfo {
            trust_domain: "example.internal".into(),
            environments: BTreeMap::from([(
                "dev".to_string(),
                EnvironmentInfo {
                    dns_suffixes: vec!["dev.svc.example.internal".into()],
                },
            )]),
        };
        assert!(info.is_private_name("api.dev.svc.example.internal"));
        assert!(info.is_private_name("API.Dev.svc.example.internal."));
        assert!(info.is_private_name("*.dev.svc.example.internal"));
        assert!(info.is_private_name("dev.svc.example.internal"));
        assert!(!info.is_private_name("xdev.svc.example.internal"));
        assert!(!info.is_private_name("www.example.com"));
        assert!(!info.is_private_name("api.prod.svc.example.internal"));
    }
}
