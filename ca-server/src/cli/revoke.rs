//! `revoke` (local or through a remote server) and `crl`.

use std::fs;
use std::path::PathBuf;

use clap::Args;
use serde_json::json;
use zeroize::Zeroizing;

use crate::error::ErrorKind;
use crate::files;
use crate::pki::{Identity, RevocationReason, Serial};
use crate::service::{self, RevokeInput, RevokeTarget};
use crate::store::CertificateRecord;

use super::{Cli, CliError, CliResult, actor, io_err, open_ca, rfc3339};

#[derive(Debug, Args)]
pub(super) struct RevokeArgs {
    /// Serial number, hex (any case, colons optional). Or use --env and --service.
    #[arg(conflicts_with_all = ["env", "service"], required_unless_present_all = ["env", "service"])]
    serial: Option<String>,
    /// With --service: revoke every live certificate of this identity.
    #[arg(long, requires = "service")]
    env: Option<String>,
    /// With --env.
    #[arg(long, requires = "env")]
    service: Option<String>,
    /// unspecified, key-compromise, ca-compromise, affiliation-changed, superseded,
    /// cessation-of-operation.
    #[arg(long, default_value = "unspecified")]
    reason: RevocationReason,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    /// Only list what would be revoked.
    #[arg(long)]
    dry_run: bool,
    /// Revoke through a remote CA server (admin mTLS) instead of the local data directory.
    #[arg(long, value_name = "URL", requires_all = ["cert", "key", "ca_bundle"])]
    server: Option<String>,
    /// Admin client certificate (PEM, leaf first) for --server.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Key of the admin client certificate.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Trust anchors for the server's certificate (the CA's root).
    #[arg(long, value_name = "FILE")]
    ca_bundle: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn confirm(question: &str) -> CliResult<bool> {
    use std::io::{BufRead, IsTerminal};
    if !std::io::stdin().is_terminal() {
        return Err(CliError::new(
            ErrorKind::BadRequest,
            "refusing to revoke without confirmation: no terminal to ask on; pass --yes",
        ));
    }
    eprint!("{question} [y/N] ");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::new(ErrorKind::Internal, format!("reading the answer: {e}")))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

fn print_revoked(certs: &[ca_wire::RevokedCertificate], reason: &str, dry_run: bool, json: bool) {
    if json {
        println!(
            "{}",
            json!({ "certificates": certs, "reason": reason, "dry_run": dry_run })
        );
        return;
    }
    let verb = if dry_run { "would revoke" } else { "revoked" };
    for c in certs {
        println!(
            "{verb} {} ({}/{}, not after {}) reason {reason}",
            c.serial, c.env, c.service, c.not_after
        );
    }
}

pub(super) async fn revoke(cli: &Cli, a: &RevokeArgs) -> CliResult<()> {
    let serial = a
        .serial
        .as_deref()
        .map(|s| s.parse::<Serial>())
        .transpose()
        .map_err(|e| CliError::new(ErrorKind::BadRequest, e.to_string()))?;
    if let Some(url) = &a.server {
        return revoke_remote(a, url, serial).await;
    }
    let ca = open_ca(cli).await?;
    let target = match (serial, &a.env, &a.service) {
        (Some(s), _, _) => RevokeTarget::Serial(s),
        (None, Some(env), Some(service)) => RevokeTarget::Identity(Identity {
            env: env.clone(),
            service: service.clone(),
        }),
        _ => {
            return Err(CliError::new(
                ErrorKind::BadRequest,
                "give a SERIAL, or --env and --service",
            ));
        }
    };
    let input = |dry_run| RevokeInput {
        target: target.clone(),
        reason: a.reason,
        actor: actor(),
        dry_run,
    };
    let to_wire = |certs: Vec<CertificateRecord>| -> Vec<ca_wire::RevokedCertificate> {
        certs
            .into_iter()
            .map(|c| ca_wire::RevokedCertificate {
                not_after: rfc3339(c.not_after),
                serial: c.serial,
                env: c.env,
                service: c.service,
            })
            .collect()
    };
    if a.dry_run {
        let certs = ca.revoke(input(true)).await?;
        print_revoked(&to_wire(certs), a.reason.as_str(), true, a.json);
        return Ok(());
    }
    // A revocation reissues its CRL with the CA's keys: a wrong or missing passphrase fails
    // here, before anything is revoked, instead of after it with a CRL left stale.
    ca.load_signers().await?;
    if matches!(target, RevokeTarget::Identity(_)) && !a.yes {
        let certs = ca.revoke(input(true)).await?;
        print_revoked(&to_wire(certs.clone()), a.reason.as_str(), true, false);
        if !confirm(&format!("Revoke these {} certificate(s)?", certs.len()))? {
            return Err(CliError::new(
                ErrorKind::BadRequest,
                "not confirmed; nothing revoked",
            ));
        }
    }
    let certs = ca.revoke(input(false)).await?;
    print_revoked(&to_wire(certs), a.reason.as_str(), false, a.json);
    Ok(())
}

async fn revoke_remote(a: &RevokeArgs, url: &str, serial: Option<Serial>) -> CliResult<()> {
    // Zeroizing: one of these is the admin's private key.
    let read = |p: &Option<PathBuf>, what: &str| -> CliResult<Zeroizing<Vec<u8>>> {
        let p = p.as_ref().ok_or_else(|| {
            CliError::new(
                ErrorKind::BadRequest,
                format!("--{what} is required with --server"),
            )
        })?;
        fs::read(p)
            .map(Zeroizing::new)
            .map_err(|e| io_err(&format!("cannot read --{what}"), p, e))
    };
    let wire_err = |e: ca_wire::client::ClientError| {
        let kind = match &e {
            ca_wire::client::ClientError::Api(p) => match p.status {
                400 | 413 | 415 => ErrorKind::BadRequest,
                401 => ErrorKind::Unauthorized,
                403 => ErrorKind::Denied,
                404 => ErrorKind::NotFound,
                409 => ErrorKind::Conflict,
                _ => ErrorKind::Internal,
            },
            ca_wire::client::ClientError::Config(_) => ErrorKind::BadRequest,
            _ => ErrorKind::Internal,
        };
        CliError::new(kind, e.to_string())
    };
    let identity =
        ca_wire::client::ClientIdentity::from_pem(&read(&a.cert, "cert")?, &read(&a.key, "key")?)
            .map_err(wire_err)?;
    let client =
        ca_wire::client::ApiClient::new(url, &read(&a.ca_bundle, "ca-bundle")?, Some(identity))
            .map_err(wire_err)?;
    let mut req = ca_wire::RevokeRequest {
        serial: serial.map(|s| s.to_hex()),
        env: a.env.clone(),
        service: a.service.clone(),
        reason: Some(a.reason.as_str().into()),
        dry_run: true,
    };
    let path = "/v1/admin/revoke";
    let full = format!("{}{path}", client.base());
    if !a.dry_run && req.serial.is_none() && !a.yes {
        let preview: ca_wire::RevokeResponse = client
            .post_json(path, &req)
            .await
            .map_err(wire_err)?
            .json(&full)
            .map_err(wire_err)?;
        print_revoked(&preview.certificates, &preview.reason, true, false);
        if !confirm(&format!(
            "Revoke these {} certificate(s)?",
            preview.certificates.len()
        ))? {
            return Err(CliError::new(
                ErrorKind::BadRequest,
                "not confirmed; nothing revoked",
            ));
        }
    }
    req.dry_run = a.dry_run;
    let resp: ca_wire::RevokeResponse = client
        .post_json(path, &req)
        .await
        .map_err(wire_err)?
        .json(&full)
        .map_err(wire_err)?;
    print_revoked(&resp.certificates, &resp.reason, resp.dry_run, a.json);
    Ok(())
}

#[derive(Debug, Args)]
pub(super) struct CrlArgs {
    /// Environment whose active intermediate's CRL to issue (or --root).
    #[arg(long, required_unless_present = "root", conflicts_with = "root")]
    env: Option<String>,
    /// Issue the root's CRL (for the intermediates).
    #[arg(long)]
    root: bool,
    /// The offline root key file written by `init --root-key-out` (for --root when the root key is
    /// not in the database).
    #[arg(long, value_name = "FILE", requires = "root")]
    root_key: Option<PathBuf>,
    /// Write the CRL here (DER, or PEM when the name ends in .pem).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub(super) async fn crl(cli: &Cli, a: &CrlArgs) -> CliResult<()> {
    let ca = open_ca(cli).await?;
    let record = match (&a.env, a.root, &a.root_key) {
        // The environment's active intermediate (after a rotation, "dev" names generation 1).
        (Some(env), _, _) => {
            if !ca.policy().environments.contains_key(env) {
                return Err(CliError::new(
                    ErrorKind::NotFound,
                    format!("no CRL for {env:?}: not an environment of the policy"),
                ));
            }
            let (issuer, signer) = ca.issuer(env).await?;
            ca.build_crl_with(&issuer.id, &signer).await?
        }
        (None, true, None) => ca.build_crl(&super::ca::active_root_id(&ca)).await?,
        (None, true, Some(path)) => {
            let root_id = super::ca::active_root_id(&ca);
            let key = super::ca::read_root_key(cli, &ca, path)?;
            let root = ca
                .store()
                .authority(&root_id)
                .await?
                .ok_or_else(|| CliError::new(ErrorKind::NotFound, "no root in this CA"))?;
            let signer = crate::authority::Signer::new(service::pem_to_der(&root.cert_pem)?, key)?;
            ca.build_crl_with(&root_id, &signer).await?
        }
        _ => {
            return Err(CliError::new(
                ErrorKind::BadRequest,
                "give --env ENV or --root",
            ));
        }
    };
    let pem_out = a.out.extension().is_some_and(|e| e == "pem");
    let data = if pem_out {
        crate::authority::pem_encode("X509 CRL", &record.der).into_bytes()
    } else {
        record.der.clone()
    };
    files::write_atomic(&a.out, &data, files::PUBLIC)
        .map_err(|e| io_err("cannot write", &a.out, e))?;
    println!(
        "CRL number {} of {} written to {} (next update {})",
        record.number,
        record.issuer_id,
        a.out.display(),
        rfc3339(record.next_update)
    );
    Ok(())
}
