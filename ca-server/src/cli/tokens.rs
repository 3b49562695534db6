//! `token create`, `token list` and `token revoke`.

use clap::{Args, Subcommand};
use serde_json::json;

use crate::duration::HumanDuration;
use crate::service::TokenInput;

use super::{Cli, CliResult, actor, open_ca, rfc3339};

#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Mint a token; its secret is printed once and only a hash is kept.
    Create(TokenCreateArgs),
    /// List tokens (usable ones unless --all).
    List(TokenListArgs),
    /// Revoke a token by id.
    Revoke(TokenRevokeArgs),
}

#[derive(Debug, Args)]
pub(super) struct TokenCreateArgs {
    /// Environment the token enrolls into.
    #[arg(long)]
    env: String,
    /// Service the token enrolls as.
    #[arg(long)]
    service: String,
    /// Lifetime of the token.
    #[arg(long, default_value = "15m", value_name = "DURATION")]
    ttl: HumanDuration,
    /// Number of enrollments (more than one only for CI environments).
    #[arg(long, default_value_t = 1)]
    uses: u32,
    /// Print JSON: token, id, env, service, uses, expires_at.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(super) struct TokenListArgs {
    /// Include used, expired and revoked tokens.
    #[arg(long)]
    all: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(super) struct TokenRevokeArgs {
    /// Token id (the part before the dot).
    id: String,
}

pub(super) async fn token_create(cli: &Cli, a: &TokenCreateArgs) -> CliResult<()> {
    let ca = open_ca(cli).await?;
    let created = ca
        .create_token(TokenInput {
            env: a.env.clone(),
            service: a.service.clone(),
            ttl: Some(a.ttl.0),
            uses: a.uses,
            actor: actor(),
        })
        .await?;
    let r = &created.record;
    if a.json {
        println!(
            "{}",
            json!({
                "token": created.token.expose(),
                "id": r.id,
                "env": r.env,
                "service": r.service,
                "uses": r.max_uses,
                "expires_at": rfc3339(r.expires_at),
            })
        );
    } else {
        println!("{}", created.token.expose());
        eprintln!(
            "token {} enrolls {}/{} ({} use(s)) until {}; it is shown only once",
            r.id,
            r.env,
            r.service,
            r.max_uses,
            rfc3339(r.expires_at)
        );
    }
    Ok(())
}

pub(super) async fn token_list(cli: &Cli, a: &TokenListArgs) -> CliResult<()> {
    let ca = open_ca(cli).await?;
    let now = ca.now_unix();
    let tokens = ca.list_tokens(a.all).await?;
    let state = |t: &crate::store::TokenRecord| {
        if t.revoked_at.is_some() {
            "revoked"
        } else if t.expires_at <= now {
            "expired"
        } else if t.uses >= t.max_uses {
            "used"
        } else {
            "usable"
        }
    };
    if a.json {
        let items: Vec<_> = tokens
            .iter()
            .map(|t| {
                json!({
                    "id": t.id, "env": t.env, "service": t.service, "uses": t.uses,
                    "max_uses": t.max_uses, "state": state(t), "created_by": t.created_by,
                    "created_at": rfc3339(t.created_at), "expires_at": rfc3339(t.expires_at),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(items));
        return Ok(());
    }
    println!(
        "{:<16}  {:<10} {:<16} {:<8} {:<9} EXPIRES",
        "ID", "ENV", "SERVICE", "STATE", "USES"
    );
    for t in &tokens {
        println!(
            "{:<16}  {:<10} {:<16} {:<8} {:<9} {}",
            t.id,
            t.env,
            t.service,
            state(t),
            format!("{}/{}", t.uses, t.max_uses),
            rfc3339(t.expires_at)
        );
    }
    Ok(())
}

pub(super) async fn token_revoke(cli: &Cli, a: &TokenRevokeArgs) -> CliResult<()> {
    let ca = open_ca(cli).await?;
    ca.revoke_token(&a.id, &actor()).await?;
    println!("token {} revoked", a.id);
    Ok(())
}
