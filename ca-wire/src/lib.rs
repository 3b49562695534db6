//! Wire types of the CA's HTTP API and a small HTTPS client (rustls on ring) with mutual TLS and
//! root pinning, shared by `ca-server`'s remote commands and `ca-agent`. Deliberately free of the
//! server's storage stack.
#![forbid(unsafe_code)]

pub mod client;

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// `POST /v1/enroll`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// Enrollment token (`<id>.<secret>`).
    pub token: String,
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
