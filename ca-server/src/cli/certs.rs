//! `issue`, `certs list`, `certs show` and `bundle`.

use std::fs;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use rcgen::{CertificateParams, KeyPair};
use serde_json::json;
use zeroize::Zeroizing;

use crate::duration::HumanDuration;
use crate::error::ErrorKind;
use crate::files;
use crate::pki::{Identity, KeyType, Serial};
use crate::service::IssueInput;
use crate::store::{CertStatus, CertificateFilter, CertificateRecord, IssuedVia};

use super::{Cli, CliError, CliResult, actor, io_err, open_ca, rfc3339};

#[derive(Debug, Args)]
pub(super) struct IssueArgs {
    /// Environment.
    #[arg(long)]
    env: String,
    /// Service.
    #[arg(long)]
    service: String,
    /// DNS names (policy decides).
    #[arg(long, num_args = 1..)]
    dns: Vec<String>,
    /// IP SANs (only for services that allow them).
    #[arg(long, num_args = 1..)]
    ip: Vec<IpAddr>,
    /// Lifetime (default: the environment's default TTL).
    #[arg(long)]
    ttl: Option<HumanDuration>,
    /// Certify the key of this CSR instead of generating one (no key.pem is written).
    #[arg(long, value_name = "FILE")]
    csr: Option<PathBuf>,
    /// Type of the generated key.
    #[arg(long, default_value = "p256", conflicts_with = "csr")]
    key_type: KeyType,
    /// Output directory for key.pem, cert.pem, chain.pem and bundle.pem.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// A key generated for `issue` and the CSR for it.
struct GeneratedKey {
    /// PKCS#8 PEM, zeroized on drop.
    key_pem: Zeroizing<String>,
    /// PEM CSR.
    csr_pem: Vec<u8>,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn generate_csr(key_type: KeyType) -> CliResult<GeneratedKey> {
    let alg = match key_type {
        KeyType::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        KeyType::Rsa => {
            return Err(CliError::new(
                ErrorKind::BadRequest,
                "this build cannot generate RSA keys; create one elsewhere and pass its CSR with --csr",
            ));
        }
    };
    let internal =
        |e: rcgen::Error| CliError::new(ErrorKind::Internal, format!("key generation failed: {e}"));
    let key = Zeroizing::new(KeyPair::generate_for(alg).map_err(internal)?);
    let csr = CertificateParams::default()
        .serialize_request(&*key)
        .and_then(|c| c.pem())
        .map_err(internal)?;
    Ok(GeneratedKey {
        key_pem: Zeroizing::new(key.serialize_pem()),
        csr_pem: csr.into_bytes(),
    })
}

pub(super) async fn issue(cli: &Cli, a: &IssueArgs) -> CliResult<()> {
    let ca = open_ca(cli).await?;
    let (key_pem, csr) = match &a.csr {
        Some(path) => {
            let meta = fs::metadata(path).map_err(|e| io_err("cannot read CSR", path, e))?;
            if meta.len() > crate::csr::MAX_CSR_BYTES as u64 {
                return Err(CliError::new(
                    ErrorKind::BadRequest,
                    "CSR file is too large",
                ));
            }
            (
                None,
                fs::read(path).map_err(|e| io_err("cannot read CSR", path, e))?,
            )
        }
        None => {
            let generated = generate_csr(a.key_type)?;
            (Some(generated.key_pem), generated.csr_pem)
        }
    };
    // Fail on an unusable output directory before anything is issued.
    files::check_output_dir(&a.out)
        .map_err(|e| io_err("cannot write to output directory", &a.out, e))?;
    let out = ca
        .issue(IssueInput {
            identity: Identity {
                env: a.env.clone(),
                service: a.service.clone(),
            },
            dns: a.dns.clone(),
            ips: a.ip.clone(),
            ttl: a.ttl.map(|t| t.0),
            csr,
            via: IssuedVia::Cli,
            actor: actor(),
        })
        .await?;
    let serial = out.record.serial.clone();
    files::ensure_private_dir(&a.out).map_err(|e| {
        CliError::new(
            ErrorKind::Internal,
            format!(
                "certificate {serial} was issued and recorded, but creating {} failed: {e}",
                a.out.display()
            ),
        )
    })?;
    let write = |name: &str, data: &[u8], mode: u32| {
        let p = a.out.join(name);
        files::write_atomic(&p, data, mode).map_err(|e| {
            CliError::new(
                ErrorKind::Internal,
                format!(
                    "certificate {serial} was issued and recorded, but writing {} failed: {e}",
                    p.display()
                ),
            )
        })
    };
    if let Some(k) = &key_pem {
        write("key.pem", k.as_bytes(), files::PRIVATE)?;
    }
    write("cert.pem", out.cert_pem.as_bytes(), files::PUBLIC)?;
    write("chain.pem", out.chain_pem.as_bytes(), files::PUBLIC)?;
    write("bundle.pem", out.bundle_pem.as_bytes(), files::PUBLIC)?;
    let r = &out.record;
    if a.json {
        println!(
            "{}",
            json!({
                "serial": r.serial,
                "spiffe_id": r.spiffe_id,
                "dns_names": r.dns_names,
                "ip_addresses": r.ip_addresses,
                "not_before": rfc3339(r.not_before),
                "not_after": rfc3339(r.not_after),
                "out": a.out,
                "key_written": key_pem.is_some(),
            })
        );
    } else {
        println!("serial:    {}", r.serial);
        println!("identity:  {}", r.spiffe_id);
        if !r.dns_names.is_empty() {
            println!("dns:       {}", r.dns_names.join(", "));
        }
        if !r.ip_addresses.is_empty() {
            println!("ip:        {}", r.ip_addresses.join(", "));
        }
        println!("not after: {}", rfc3339(r.not_after));
        println!("written:   {}", a.out.display());
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub(super) enum CertsCommand {
    /// List certificates, newest first.
    List(ListArgs),
    /// Show one certificate.
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub(super) struct ListArgs {
    /// Only this environment.
    #[arg(long)]
    env: Option<String>,
    /// Only this service.
    #[arg(long)]
    service: Option<String>,
    /// Only this status: valid, expired or revoked.
    #[arg(long)]
    status: Option<CertStatus>,
    /// Only valid certificates expiring within this duration.
    #[arg(long, value_name = "DURATION")]
    expiring_within: Option<HumanDuration>,
    /// At most this many.
    #[arg(long)]
    limit: Option<u32>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(super) struct ShowArgs {
    /// Serial number, hex (any case, colons optional).
    serial: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn cert_json(c: &CertificateRecord, now: i64) -> serde_json::Value {
    json!({
        "serial": c.serial,
        "env": c.env,
        "service": c.service,
        "spiffe_id": c.spiffe_id,
        "dns_names": c.dns_names,
        "ip_addresses": c.ip_addresses,
        "status": c.status(now).as_str(),
        "not_before": rfc3339(c.not_before),
        "not_after": rfc3339(c.not_after),
        "key_type": c.key_type,
        "fingerprint": c.fingerprint,
        "issuer": c.issuer_id,
        "issued_via": c.issued_via,
        "issued_by": c.issued_by,
        "issued_at": rfc3339(c.created_at),
        "revoked_at": c.revoked_at.map(rfc3339),
        "revocation_reason": c.revocation_reason,
    })
}

pub(super) async fn certs_list(cli: &Cli, a: &ListArgs) -> CliResult<()> {
    let ca = open_ca(cli).await?;
    let now = ca.now_unix();
    let mut status = a.status;
    let not_after_before = a.expiring_within.map(|d| {
        status.get_or_insert(CertStatus::Valid);
        now + d.0.whole_seconds()
    });
    let certs = ca
        .list(CertificateFilter {
            env: a.env.clone(),
            service: a.service.clone(),
            status,
            not_after_before,
            now,
            limit: a.limit,
        })
        .await?;
    if a.json {
        let items: Vec<_> = certs.iter().map(|c| cert_json(c, now)).collect();
        println!("{}", serde_json::Value::Array(items));
        return Ok(());
    }
    println!(
        "{:<32}  {:<10} {:<16} {:<8} {:<20}  NAMES",
        "SERIAL", "ENV", "SERVICE", "STATUS", "NOT AFTER"
    );
    for c in &certs {
        println!(
            "{:<32}  {:<10} {:<16} {:<8} {:<20}  {}",
            c.serial,
            c.env,
            c.service,
            c.status(now).as_str(),
            rfc3339(c.not_after),
            c.dns_names.join(",")
        );
    }
    Ok(())
}

pub(super) async fn certs_show(cli: &Cli, a: &ShowArgs) -> CliResult<()> {
    let serial: Serial = a
        .serial
        .parse()
        .map_err(|e: crate::pki::HexError| CliError::new(ErrorKind::BadRequest, e.to_string()))?;
    let ca = open_ca(cli).await?;
    let c = ca.certificate(&serial).await?;
    let now = ca.now_unix();
    if a.json {
        let mut v = cert_json(&c, now);
        v["pem"] = json!(c.cert_pem);
        println!("{v}");
        return Ok(());
    }
    let v = cert_json(&c, now);
    if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            let text = match val {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".into(),
                other => other.to_string(),
            };
            println!("{k:<18} {text}");
        }
    }
    print!("{}", c.cert_pem);
    Ok(())
}

#[derive(Debug, Args)]
pub(super) struct BundleArgs {
    /// Environment.
    #[arg(long)]
    env: String,
    /// Write to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub(super) async fn bundle(cli: &Cli, a: &BundleArgs) -> CliResult<()> {
    let ca = open_ca(cli).await?;
    let pem = ca.bundle(&a.env).await?;
    match &a.out {
        Some(p) => files::write_atomic(p, pem.as_bytes(), files::PUBLIC)
            .map_err(|e| io_err("cannot write", p, e))?,
        None => print!("{pem}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_not_printed() {
        let generated = generate_csr(KeyType::P256).expect("key");
        let der = pem::parse(generated.key_pem.as_bytes()).expect("PEM");
        let scalar = ca_wire::leak::p256_scalar(der.contents());
        ca_wire::leak::assert_redacted("GeneratedKey", &generated, &scalar);
        ca_wire::leak::assert_redacted("GeneratedKey", &generated, generated.key_pem.as_bytes());
    }
}
