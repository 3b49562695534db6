//! `acme eab create`, `acme accounts list`, `acme accounts deactivate`.

use clap::{Args, Subcommand};

use crate::acme::AcmeServer;
use crate::duration::HumanDuration;
use crate::error::ErrorKind;

use super::{Cli, CliError, CliResult, actor, open_ca, rfc3339};

#[derive(Debug, Subcommand)]
pub(super) enum AcmeCommand {
    /// External Account Binding keys for ACME clients.
    #[command(subcommand)]
    Eab(EabCommand),
    /// ACME accounts.
    #[command(subcommand)]
    Accounts(AccountsCommand),
}

#[derive(Debug, Subcommand)]
pub(super) enum EabCommand {
    /// Mint a single-use key binding one ACME account to an environment and service (shown once).
    Create(EabCreateArgs),
}

#[derive(Debug, Subcommand)]
pub(super) enum AccountsCommand {
    /// List ACME accounts.
    List(AccountsListArgs),
    /// Deactivate an ACME account: it can no longer order, revoke or change its key.
    Deactivate(DeactivateArgs),
}

#[derive(Debug, Args)]
pub(super) struct EabCreateArgs {
    /// Environment (its directory must be enabled in the policy).
    #[arg(long)]
    env: String,
    /// Service the account will act as.
    #[arg(long)]
    service: String,
    /// How long the key may be used to register.
    #[arg(long, default_value = "7d", value_name = "DURATION")]
    ttl: HumanDuration,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(super) struct AccountsListArgs {
    /// Only this environment.
    #[arg(long)]
    env: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(super) struct DeactivateArgs {
    /// Account id (the last segment of its URL).
    id: String,
}

pub(super) async fn acme(cli: &Cli, cmd: &AcmeCommand) -> CliResult<()> {
    let ca = open_ca(cli).await?;
    match cmd {
        AcmeCommand::Eab(EabCommand::Create(a)) => {
            let (kid, key) =
                AcmeServer::create_eab(&ca, &a.env, &a.service, a.ttl.0, &actor()).await?;
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"kid": kid, "hmac_key": key.as_str(), "env": a.env, "service": a.service})
                );
            } else {
                println!("kid:      {kid}\nhmac key: {}", key.as_str());
                eprintln!(
                    "shown once; single use within {}; the account will act as {}/{}",
                    a.ttl, a.env, a.service
                );
            }
            Ok(())
        }
        AcmeCommand::Accounts(AccountsCommand::List(a)) => {
            let list = ca.store().acme_accounts(a.env.as_deref()).await?;
            if a.json {
                let v: Vec<_> = list
                    .iter()
                    .map(|x| {
                        serde_json::json!({
                            "id": x.id, "env": x.env, "service": x.service, "status": x.status,
                            "contact": x.contact, "eab_kid": x.eab_kid, "thumbprint": x.thumbprint,
                            "created_at": x.created_at,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v)
                        .map_err(|e| CliError::new(ErrorKind::Internal, e.to_string()))?
                );
                return Ok(());
            }
            println!(
                "{:<18} {:<10} {:<12} {:<12} {:<21} CONTACT",
                "ID", "ENV", "SERVICE", "STATUS", "CREATED"
            );
            for x in list {
                println!(
                    "{:<18} {:<10} {:<12} {:<12} {:<21} {}",
                    x.id,
                    x.env,
                    x.service,
                    x.status,
                    rfc3339(x.created_at),
                    x.contact.join(",")
                );
            }
            Ok(())
        }
        AcmeCommand::Accounts(AccountsCommand::Deactivate(a)) => {
            let account = AcmeServer::deactivate(&ca, &a.id, &actor()).await?;
            println!(
                "account {} ({}/{}) deactivated",
                account.id, account.env, account.service
            );
            Ok(())
        }
    }
}
