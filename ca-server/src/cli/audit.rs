//! `audit`: print the audit log.

use clap::Args;
use serde_json::json;

use crate::clock::{Clock, SystemClock};
use crate::duration::HumanDuration;
use crate::store::AuditEntry;

use super::{Cli, CliResult, open_store, rfc3339};

#[derive(Debug, Args)]
pub(super) struct AuditArgs {
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
