//! `policy check` and `policy explain`.

use std::net::IpAddr;
use std::path::Path;

use clap::{Args, Subcommand};

use crate::duration::HumanDuration;
use crate::error::ErrorKind;
use crate::pki::{Identity, KeyType};
use crate::policy::{IssueRequest, Policy};

use super::{Cli, CliError, CliResult, actor, open_ca, open_store};

#[derive(Debug, Subcommand)]
pub(super) enum PolicyCommand {
    /// Validate a policy file; errors name the file, the key and the problem.
    Check,
    /// Show whether a request would be allowed, with final names and TTL, or the refusing rule.
    Explain(ExplainArgs),
    /// Make the policy file (--policy, else the one recorded at init) the one every server must
    /// serve; servers sharing the database switch to it once their own file matches.
    Publish,
}

#[derive(Debug, Args)]
pub(super) struct ExplainArgs {
    /// Environment.
    #[arg(long)]
    env: String,
    /// Service.
    #[arg(long)]
    service: String,
    /// Requested DNS names.
    #[arg(long, num_args = 1..)]
    dns: Vec<String>,
    /// Requested IP SANs.
    #[arg(long, num_args = 1..)]
    ip: Vec<IpAddr>,
    /// Requested lifetime.
    #[arg(long)]
    ttl: Option<HumanDuration>,
    /// Key type of the request.
    #[arg(long, default_value = "p256")]
    key_type: KeyType,
}

async fn load_policy_for_cli(cli: &Cli) -> CliResult<Policy> {
    if let Some(p) = &cli.policy {
        return Ok(Policy::load(p)?);
    }
    if cli.data_dir.is_some() || cli.database_url.is_some() {
        let store = open_store(cli).await?;
        if let Some(s) = store.settings().await? {
            return Ok(Policy::load(Path::new(&s.policy_path))?);
        }
    }
    Err(CliError::new(
        ErrorKind::BadRequest,
        "give --policy FILE (or --data-dir of a CA to use its recorded policy)",
    ))
}

pub(super) async fn policy_publish(cli: &Cli) -> CliResult<()> {
    let ca = open_ca(cli).await?;
    let sha256 = ca.publish_policy(&actor()).await?;
    println!("published policy sha256 {sha256}");
    Ok(())
}

pub(super) async fn policy_check(cli: &Cli) -> CliResult<()> {
    let p = load_policy_for_cli(cli).await?;
    println!(
        "policy OK: trust domain {}; environments: {}; services: {}",
        p.trust_domain,
        p.environments
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        p.services.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

pub(super) async fn policy_explain(cli: &Cli, a: &ExplainArgs) -> CliResult<()> {
    let p = load_policy_for_cli(cli).await?;
    let identity = Identity {
        env: a.env.clone(),
        service: a.service.clone(),
    };
    let d = p.decide(&IssueRequest {
        identity: &identity,
        dns: &a.dns,
        ips: &a.ip,
        ttl: a.ttl.map(|t| t.0),
        key_type: a.key_type,
    })?;
    println!("{d}");
    Ok(())
}
