//! `ca rotate` and `ca list`: the generations of the root and of every intermediate.

use std::fs;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use zeroize::Zeroizing;

use crate::authority::CaKey;
use crate::duration::HumanDuration;
use crate::error::ErrorKind;
use crate::files;
use crate::service::{self, Ca, RotateInput, RotateTarget};
use crate::store::AuthorityKind;

use super::{Cli, CliError, CliResult, actor, io_err, open_ca, read_passphrase, rfc3339};

#[derive(Debug, Subcommand)]
pub(super) enum CaCommand {
    /// Create the next intermediate of an environment (or a new root), published at once and
    /// issuing after a delay; with --compromised, revoke the old one and switch at once.
    Rotate(RotateArgs),
    /// List every CA certificate with its state, validity and live leaves.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub(super) struct RotateArgs {
    /// The environment whose intermediate is replaced.
    #[arg(long, conflicts_with = "root", required_unless_present = "root")]
    env: Option<String>,
    /// Replace the root (cross-certified with the old one) and every intermediate under it.
    #[arg(long)]
    root: bool,
    /// How long the new CA certificate is in the bundles before it issues (default: the
    /// config's rotation_delay, else 2h), so every peer fetches it first.
    #[arg(long, value_name = "DURATION")]
    delay: Option<HumanDuration>,
    /// The old key is compromised: revoke the old intermediate on the root CRL, issue from the
    /// new one at once, and tell every holder of an old leaf to renew now.
    #[arg(long, conflicts_with = "root")]
    compromised: bool,
    /// Root rotation: how long the old root stays in the bundles after the new one takes over
    /// (longer than the longest leaf lifetime).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "7d",
        conflicts_with = "env"
    )]
    overlap: HumanDuration,
    /// The active root's key file (as written by `init --root-key-out`) when the root is
    /// kept offline.
    #[arg(long, value_name = "FILE")]
    root_key: Option<PathBuf>,
    /// Where to write the new root's key when the root is kept offline (root rotation).
    #[arg(long, value_name = "FILE", conflicts_with = "env")]
    root_key_out: Option<PathBuf>,
    /// Server config file to read rotation_delay from.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(super) struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Reads the active root's key from a file written by `init --root-key-out` (or a root
/// rotation's `--root-key-out`), unsealing it with the CA passphrase. A file holding another
/// root's key is named as such.
pub(super) fn read_root_key(cli: &Cli, ca: &Ca, path: &Path) -> CliResult<CaKey> {
    let text = Zeroizing::new(
        fs::read_to_string(path).map_err(|e| io_err("cannot read root key", path, e))?,
    );
    let stored = text
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .ok_or_else(|| {
            CliError::new(
                ErrorKind::BadRequest,
                format!("{} holds no key", path.display()),
            )
        })?;
    let pass = read_passphrase(cli)?;
    let active = active_root_id(ca);
    match crate::sealed::open(&active, stored, pass.as_ref()) {
        Ok(pkcs8) => Ok(CaKey::from_pkcs8(&pkcs8)?),
        Err(e) => {
            // Sealed keys are bound to their root's id: find out whether it is another root's.
            for other in ca.root_ids().iter().filter(|id| **id != active) {
                if crate::sealed::open(other, stored, pass.as_ref()).is_ok() {
                    return Err(CliError::new(
                        ErrorKind::BadRequest,
                        format!(
                            "{} holds the key of {other}, not of the active root {active}: give \
                             the root key written by the last root rotation",
                            path.display()
                        ),
                    ));
                }
            }
            Err(e.into())
        }
    }
}

/// The id of the root that is active now.
pub(super) fn active_root_id(ca: &Ca) -> String {
    ca.active_authority_id(AuthorityKind::Root)
        .unwrap_or_else(|| service::ROOT_ID.to_string())
}

pub(super) async fn ca_rotate(cli: &Cli, a: &RotateArgs) -> CliResult<()> {
    let ca = open_ca(cli).await?;
    if a.root && ca.active_root_offline() {
        match &a.root_key_out {
            None => {
                return Err(CliError::new(
                    ErrorKind::BadRequest,
                    "the root is kept offline: give --root-key-out FILE for the new root's key",
                ));
            }
            Some(out) if out.exists() => {
                return Err(CliError::new(
                    ErrorKind::BadRequest,
                    format!(
                        "--root-key-out {} already exists; refusing to overwrite it",
                        out.display()
                    ),
                ));
            }
            Some(_) => {}
        }
    } else if a.root_key_out.is_some() {
        return Err(CliError::new(
            ErrorKind::BadRequest,
            "--root-key-out is for a CA whose root is kept offline; this root's key stays \
             sealed in the database",
        ));
    }
    let root_key = match &a.root_key {
        Some(path) => Some(read_root_key(cli, &ca, path)?),
        None => None,
    };
    let delay = match (&a.delay, &a.config) {
        (Some(d), _) => d.0,
        (None, Some(cfg)) => {
            crate::server::ServeConfig::load(cfg)
                .map_err(CliError::from)?
                .rotation_delay
                .0
        }
        (None, None) => crate::server::ServeConfig::default().rotation_delay.0,
    };
    let target = match &a.env {
        Some(env) => RotateTarget::Env(env.clone()),
        None => RotateTarget::Root,
    };
    let out = ca
        .rotate(RotateInput {
            target,
            delay,
            compromised: a.compromised,
            overlap: a.overlap.0,
            root_key,
            actor: actor(),
        })
        .await?;
    if let (Some(key), Some(path)) = (&out.root_key_export, &a.root_key_out) {
        let text = Zeroizing::new(format!(
            "# ca-server root key ({}), sealed with the CA passphrase\n{}\n",
            out.created.first().map_or("root", |r| r.id.as_str()),
            key.as_str()
        ));
        files::write_atomic(path, text.as_bytes(), files::PRIVATE)
            .map_err(|e| io_err("cannot write", path, e))?;
        println!(
            "new root key written to {} (keep it offline)",
            path.display()
        );
    }
    for r in &out.created {
        println!(
            "{} {} created: {}, issues from {}, valid until {}",
            r.kind.as_str(),
            r.id,
            r.subject,
            rfc3339(r.active_from()),
            rfc3339(r.not_after)
        );
    }
    if a.compromised {
        println!(
            "the old intermediate is revoked (ca-compromise); holders of its leaves are told to renew now"
        );
    }
    Ok(())
}

pub(super) async fn ca_list(cli: &Cli, a: &ListArgs) -> CliResult<()> {
    let ca = open_ca(cli).await?;
    let list = ca.issuers().await?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&list)
                .map_err(|e| CliError::new(ErrorKind::Internal, e.to_string()))?
        );
        return Ok(());
    }
    println!(
        "{:<14} {:<12} {:<8} {:<9} {:<20} {:<20} {:<20} {:>6}",
        "ID", "KIND", "ENV", "STATE", "ISSUES FROM", "NOT AFTER", "RETIRED", "LEAVES"
    );
    for i in list {
        println!(
            "{:<14} {:<12} {:<8} {:<9} {:<20} {:<20} {:<20} {:>6}",
            i.id,
            i.kind.as_str(),
            i.env.as_deref().unwrap_or("-"),
            i.state.as_str(),
            rfc3339(i.active_from),
            rfc3339(i.not_after),
            i.retired_at.map_or("-".to_string(), rfc3339),
            i.live_leaves
        );
    }
    Ok(())
}
