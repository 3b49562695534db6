//! `ca-agent issue`: one certificate for CI, in one call. Writes `key.pem` (0600), `cert.pem`,
//! `chain.pem` and `bundle.pem` like `ca-server issue`, or writes nothing and fails.

use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use ca_wire::client::ApiClient;
use ca_wire::{CertificateResponse, EnrollRequest, EnrollmentToken};

use crate::agent::{AgentError, Exit, new_key, pinned_root};
use crate::status::now;
use crate::validate::{CertInfo, Expect, validate};
use crate::writer::replace_file;

/// What to issue.
#[derive(Debug, Clone)]
pub struct IssueArgs {
    /// CA base URL.
    pub server: String,
    /// Pinned root fingerprint.
    pub root_fingerprint: String,
    /// Enrollment token (`Debug` shows its id only).
    pub token: EnrollmentToken,
    /// Environment.
    pub env: String,
    /// Service.
    pub service: String,
    /// DNS names.
    pub dns: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// Lifetime.
    pub ttl: Option<String>,
    /// Key type.
    pub key_type: String,
    /// Output directory.
    pub out: PathBuf,
}

/// Issues and writes; on any error nothing is written.
pub async fn issue(a: &IssueArgs) -> Result<CertInfo, AgentError> {
    if a.out.exists() && !a.out.is_dir() {
        return Err(AgentError::new(
            Exit::Usage,
            format!("{} is not a directory", a.out.display()),
        ));
    }
    let root = pinned_root(&a.server, &a.root_fingerprint, None).await?;
    let roots = ca_wire::client::certs_from_pem(root.as_bytes())?;
    let client = ApiClient::new(&a.server, root.as_bytes(), None)?;
    let key = new_key(&a.key_type, &a.service)?;
    let req = EnrollRequest {
        token: EnrollmentToken::new(a.token.expose().trim().to_string()),
        csr: key.csr_pem.clone(),
        dns: a.dns.clone(),
        ips: a.ips.clone(),
        ttl: a.ttl.clone(),
        env: Some(a.env.clone()),
        service: Some(a.service.clone()),
    };
    let url = format!("{}/v1/enroll", client.base());
    let resp: CertificateResponse = client.post_json("/v1/enroll", &req).await?.json(&url)?;
    let expect = Expect {
        env: &a.env,
        service: &a.service,
        dns: &a.dns,
        ips: &a.ips,
    };
    let info = validate(&key.key_pem, &resp.chain, &roots, &expect, now()).map_err(|e| {
        AgentError::new(Exit::Trust, format!("refusing the issued certificate: {e}"))
    })?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&a.out)
        .map_err(|e| {
            AgentError::new(
                Exit::Usage,
                format!("cannot create {}: {e}", a.out.display()),
            )
        })?;
    let write = |name: &str, data: &str, mode: u32| {
        replace_file(&a.out.join(name), data.as_bytes(), mode).map_err(|e| {
            AgentError::new(
                Exit::Transient,
                format!(
                    "certificate {} was issued but writing {name} failed: {e}",
                    info.serial
                ),
            )
        })
    };
    write("key.pem", &key.key_pem, 0o600)?;
    write("cert.pem", &resp.certificate, 0o644)?;
    write("chain.pem", &resp.chain, 0o644)?;
    write("bundle.pem", &resp.bundle, 0o644)?;
    Ok(info)
}
