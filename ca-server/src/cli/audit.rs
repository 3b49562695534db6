//! `audit`: print the audit log, verify its chain, sign a checkpoint.

use clap::{Args, Subcommand};
use serde_json::json;

use crate::clock::{Clock, SystemClock};
use crate::duration::HumanDuration;
use crate::store::AuditEntry;

use super::{Cli, CliResult, open_ca, open_store, rfc3339};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(super) struct AuditArgs {
    #[command(subcommand)]
    command: Option<AuditCommand>,
    /// Only entries at most this old (e.g. 24h).
    #[arg(long, value_name = "DURATION")]
    since: Option<HumanDuration>,
    /// At most this many entries.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// Print JSON lines.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain and check every signed checkpoint; names the first entry that
    /// does not fit (edited, removed, inserted or reordered) and exits non-zero.
    Verify(VerifyArgs),
    /// Sign the current end of the chain (servers do it on start, on their schedule and on
    /// shutdown).
    Checkpoint,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn audit_line(e: &AuditEntry) -> String {
    format!(
        "{} {} {} {} {}/{} {}{}",
        rfc3339(e.at),
        e.actor,
        e.action,
        match e.result {
            crate::store::AuditResult::Ok => "ok",
            crate::store::AuditResult::Denied => "denied",
            crate::store::AuditResult::Error => "error",
        },
        e.env.as_deref().unwrap_or("-"),
        e.service.as_deref().unwrap_or("-"),
        e.serial
            .as_deref()
            .map(|s| format!("serial={s} "))
            .unwrap_or_default(),
        e.reason.as_deref().unwrap_or(""),
    )
}

pub(super) async fn audit(cli: &Cli, a: &AuditArgs) -> CliResult<()> {
    match &a.command {
        Some(AuditCommand::Verify(v)) => return verify(cli, v).await,
        Some(AuditCommand::Checkpoint) => return checkpoint(cli).await,
        None => {}
    }
    let store = open_store(cli).await?;
    let since = a
        .since
        .map(|d| SystemClock.now().unix_timestamp() - d.0.whole_seconds());
    for e in store.audit_entries(since, a.limit).await? {
        if a.json {
            let mut v = serde_json::to_value(&e).unwrap_or_default();
            v["time"] = json!(rfc3339(e.at));
            println!("{v}");
        } else {
            println!("{}", audit_line(&e));
        }
    }
    Ok(())
}

async fn verify(cli: &Cli, a: &VerifyArgs) -> CliResult<()> {
    let ca = open_ca(cli).await?;
    let r = ca.verify_audit().await?;
    let last = r.last_checkpoint.as_ref();
    if a.json {
        println!(
            "{}",
            json!({
                "ok": true,
                "chained": r.chained,
                "legacy": r.legacy,
                "checkpoints": r.checkpoints,
                "last_checkpoint": last.map(|c| json!({
                    "id": c.id, "entry": c.last_id, "at": rfc3339(c.at),
                })),
                "uncovered": r.uncovered,
            })
        );
        return Ok(());
    }
    println!(
        "audit log verifies: {} chained entries{}, {} checkpoint(s)",
        r.chained,
        if r.legacy > 0 {
            format!(
                " (after {} entries written before the chain began)",
                r.legacy
            )
        } else {
            String::new()
        },
        r.checkpoints
    );
    match last {
        Some(c) => println!(
            "newest checkpoint: entry {} at {}; {} entries after it are protected by the chain alone until the next",
            c.last_id,
            rfc3339(c.at),
            r.uncovered
        ),
        None => println!("no checkpoint yet: run `ca-server audit checkpoint` or start a server"),
    }
    Ok(())
}

async fn checkpoint(cli: &Cli) -> CliResult<()> {
    let ca = open_ca(cli).await?;
    let c = ca.audit_checkpoint().await?;
    println!(
        "checkpoint {}: entry {} ({}) signed at {}",
        c.id,
        c.last_id,
        c.last_hash,
        rfc3339(c.at)
    );
    Ok(())
}
