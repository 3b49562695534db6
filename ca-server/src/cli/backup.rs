//! `backup` and `restore`: an online snapshot of a SQLite CA, and putting a snapshot back into
//! service.
//!
//! A snapshot is taken by SQLite in one read transaction while the server goes on writing; it
//! holds every table (sealed keys stay sealed). A restore continues CRL numbers upwards: every
//! issuer's counter is raised to at least the current Unix time in milliseconds (see
//! [`crl_number_floor`]), so a CRL published after the backup was taken never has its number
//! handed out again. Everything else after the backup (certificates issued, revocations, token
//! uses) is not in the restored record; the README section "Backup and restore" says what that
//! means for operators.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;
use time::OffsetDateTime;

use crate::clock::{Clock, SystemClock};
use crate::error::{Classify, ErrorKind};
use crate::files;
use crate::store::{AuditEntry, AuditResult, DatabaseSummary, SqliteStore, Store};

use super::{
    Cli, CliError, CliResult, DB_FILE, Location, actor, io_err, location, open_sqlite,
    open_store_at, rfc3339,
};

#[derive(Debug, Args)]
pub(super) struct BackupArgs {
    /// Write the snapshot to this new file (mode 0600; an existing file is never overwritten).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(super) struct RestoreArgs {
    /// The backup to restore (made by `ca-server backup`) into --data-dir. Not given with
    /// --database-url: restore PostgreSQL with pg_restore, then run this to continue its CRL
    /// numbers and record the restore.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
    /// Replace the CA already in --data-dir; the current database is kept beside it as
    /// `ca.db.before-restore-<unix time>`.
    #[arg(long)]
    force: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// The lowest CRL number a restored CA may hand out next: the current Unix time in
/// milliseconds. Counters otherwise count 1, 2, ... per issuer, so the floor is far above every
/// number published before, including after the backup was taken; and it is above the floor of
/// any earlier restore plus what was published since, as long as the clock does not go back and
/// an issuer averages under a thousand CRLs a second. RFC 5280 allows CRL numbers of 20 octets;
/// this needs 6.
pub(super) fn crl_number_floor(now: OffsetDateTime) -> i64 {
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// `path` with `suffix` appended to its file name (`ca.db` and `-wal` give `ca.db-wal`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Removes a file SQLite works on, with its journal files; for temporary files only.
fn remove_db_files(path: &Path) {
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let _ = fs::remove_file(with_suffix(path, suffix));
    }
}

fn sync_file(path: &Path) -> CliResult<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err("cannot flush", path, e))
}

/// Links `from` to the new name `to`, refusing to replace anything there.
fn link_new(from: &Path, to: &Path) -> CliResult<()> {
    fs::hard_link(from, to).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CliError::new(
                ErrorKind::Conflict,
                format!("{} already exists; refusing to overwrite it", to.display()),
            )
        } else {
            io_err("cannot create", to, e)
        }
    })
}

fn audit_text(s: &DatabaseSummary) -> String {
    match s.newest_audit {
        Some((id, at)) => format!("newest audit entry {id} ({})", rfc3339(at)),
        None => "no audit entries".into(),
    }
}

pub(super) async fn backup(cli: &Cli, a: &BackupArgs) -> CliResult<()> {
    let dir = match location(cli)? {
        Location::Dir(dir) => dir,
        place @ Location::Postgres(_) => {
            return Err(CliError::new(
                ErrorKind::BadRequest,
                format!(
                    "{} is a PostgreSQL CA, which `ca-server backup` does not copy: back up the \
                     whole database with pg_dump (every table, _sqlx_migrations included), e.g. \
                     `pg_dump --format=custom --file=ca.dump URL`; see README, \"Backup and restore\"",
                    place.describe()
                ),
            ));
        }
    };
    let out = &a.out;
    if fs::symlink_metadata(out).is_ok() {
        return Err(CliError::new(
            ErrorKind::Conflict,
            format!("{} already exists; refusing to overwrite it", out.display()),
        ));
    }
    let name = out.file_name().ok_or_else(|| {
        CliError::new(
            ErrorKind::BadRequest,
            format!("--out {} does not name a file", out.display()),
        )
    })?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Absolute, so that SQLite never reads the name as a `file:` URI.
    let parent = fs::canonicalize(parent).map_err(|e| io_err("cannot use directory", parent, e))?;
    let store = open_sqlite(dir).await?;

    // SQLite creates nothing: the snapshot goes into an empty 0600 file made beforehand, inside
    // a fresh 0700 directory beside the target, and is linked to its name only once complete,
    // checked and flushed.
    let staging = parent.join(format!(
        ".{}.backup-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(|e| io_err("cannot create", &staging, e))?;
    }
    let staged = staging.join(name);
    let result = async {
        files::create_new(&staged, files::PRIVATE)
            .map_err(|e| io_err("cannot create", &staged, e))?;
        let text = staged.to_str().ok_or_else(|| {
            CliError::new(
                ErrorKind::BadRequest,
                format!(
                    "{} is not UTF-8; SQLite needs a UTF-8 name",
                    staged.display()
                ),
            )
        })?;
        store.backup_into(text).await?;
        store.close().await;
        let summary = SqliteStore::verify_file(&staged).await.map_err(|e| {
            CliError::new(
                ErrorKind::Internal,
                format!(
                    "the snapshot of {} failed its checks, so the live database may be damaged \
                     (check it with `sqlite3 {} 'PRAGMA integrity_check'`): {e}",
                    dir.join(DB_FILE).display(),
                    dir.join(DB_FILE).display()
                ),
            )
        })?;
        sync_file(&staged)?;
        link_new(&staged, out)?;
        files::sync_dir(&parent).map_err(|e| io_err("cannot flush", &parent, e))?;
        Ok::<_, CliError>(summary)
    }
    .await;
    store.close().await;
    remove_db_files(&staged);
    let _ = fs::remove_dir(&staging);
    let summary = result?;

    let bytes = fs::metadata(out)
        .map_err(|e| io_err("cannot read", out, e))?
        .len();
    if a.json {
        println!(
            "{}",
            json!({
                "file": out,
                "bytes": bytes,
                "trust_domain": summary.trust_domain,
                "schema_version": summary.schema_version,
                "certificates": summary.certificates,
                "newest_audit_id": summary.newest_audit.map(|(id, _)| id),
                "newest_audit_at": summary.newest_audit.map(|(_, at)| at),
            })
        );
    } else {
        println!(
            "Backup of {} written to {}: {bytes} bytes, {} certificates, {}, schema version {}",
            summary.trust_domain,
            out.display(),
            summary.certificates,
            audit_text(&summary),
            summary.schema_version
        );
    }
    Ok(())
}

/// The audit entry of a restore.
fn restore_entry(now: OffsetDateTime, reason: String) -> AuditEntry {
    AuditEntry {
        id: 0,
        at: now.unix_timestamp(),
        actor: actor(),
        action: "restore".into(),
        env: None,
        service: None,
        serial: None,
        result: AuditResult::Ok,
        reason: Some(reason),
    }
}

/// Raises the CRL counters and records the restore.
async fn continue_after_restore(
    store: &dyn Store,
    now: OffsetDateTime,
    reason: &str,
) -> CliResult<(i64, Vec<(String, i64)>)> {
    let floor = crl_number_floor(now);
    let counters = store.raise_crl_numbers(floor).await?;
    store
        .append_audit(&restore_entry(
            now,
            format!("{reason}; CRL numbers continue above {floor}"),
        ))
        .await?;
    Ok((floor, counters))
}

fn counters_json(counters: &[(String, i64)]) -> serde_json::Value {
    counters
        .iter()
        .map(|(issuer, n)| (issuer.clone(), json!(n)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

pub(super) async fn restore(cli: &Cli, a: &RestoreArgs) -> CliResult<()> {
    match location(cli)? {
        Location::Dir(dir) => restore_sqlite(dir, a).await,
        place @ Location::Postgres(_) => restore_postgres(place, a).await,
    }
}

/// PostgreSQL: the database was restored with pg_restore; continue its CRL numbers and record
/// the restore.
async fn restore_postgres(place: Location<'_>, a: &RestoreArgs) -> CliResult<()> {
    if let Some(file) = &a.file {
        return Err(CliError::new(
            ErrorKind::BadRequest,
            format!(
                "{} is a PostgreSQL CA and `ca-server restore` reads only SQLite backups: restore \
                 {} with pg_restore into an empty database, then run `ca-server restore \
                 --database-url URL` without a file to continue its CRL numbers",
                place.describe(),
                file.display()
            ),
        ));
    }
    let store = open_store_at(place, &crate::store::PgSettings::default()).await?;
    let result = async {
        if store.settings().await?.is_none() {
            return Err(CliError::new(
                ErrorKind::NotFound,
                format!("no CA in {}; restore the dump first", place.describe()),
            ));
        }
        continue_after_restore(&*store, SystemClock.now(), "restored with pg_restore").await
    }
    .await;
    let (floor, counters) = result?;
    if a.json {
        println!(
            "{}",
            json!({
                "database": place.describe(),
                "crl_number_floor": floor,
                "crl_numbers": counters_json(&counters),
            })
        );
    } else {
        println!(
            "{}: CRL numbers continue above {floor}; restore recorded in the audit log",
            place.describe()
        );
    }
    Ok(())
}

async fn restore_sqlite(dir: &Path, a: &RestoreArgs) -> CliResult<()> {
    let file = a.file.as_deref().ok_or_else(|| {
        CliError::new(
            ErrorKind::BadRequest,
            "give the backup FILE to restore into --data-dir",
        )
    })?;
    let meta = fs::metadata(file).map_err(|e| io_err("cannot read backup", file, e))?;
    if !meta.is_file() {
        return Err(CliError::new(
            ErrorKind::BadRequest,
            format!("{} is not a file", file.display()),
        ));
    }
    for suffix in ["-wal", "-journal"] {
        let beside = with_suffix(file, suffix);
        if beside.exists() {
            return Err(CliError::new(
                ErrorKind::BadRequest,
                format!(
                    "{} has {} beside it: it is a database in use (or left by a crash), not a \
                     backup; make one with `ca-server backup`",
                    file.display(),
                    beside.display()
                ),
            ));
        }
    }
    let live = dir.join(DB_FILE);
    let replacing = fs::symlink_metadata(&live).is_ok();
    if replacing && !a.force {
        return Err(CliError::new(
            ErrorKind::Conflict,
            format!(
                "{} already holds a CA ({}); give --force to replace it (the current database \
                 is then kept as {DB_FILE}.before-restore-<unix time>)",
                dir.display(),
                live.display()
            ),
        ));
    }
    let created_dir = fs::symlink_metadata(dir).is_err();
    files::ensure_private_dir(dir).map_err(|e| io_err("cannot create data directory", dir, e))?;
    // Held until the new database is in place: no server runs on `dir` (each holds a shared
    // lock on it) and none starts meanwhile.
    let lock = files::try_lock_dir_exclusive(dir)
        .map_err(|e| io_err("cannot lock", dir, e))?
        .ok_or_else(|| {
            CliError::new(
                ErrorKind::Conflict,
                format!(
                    "a `ca-server serve` is running on {}; stop it before restoring",
                    dir.display()
                ),
            )
        })?;
    let staged = dir.join(format!(".{DB_FILE}.restore-{}", std::process::id()));
    remove_db_files(&staged);
    let result = async {
        let mut src = File::open(file).map_err(|e| io_err("cannot read backup", file, e))?;
        let mut dst = files::create_new(&staged, files::PRIVATE)
            .map_err(|e| io_err("cannot create", &staged, e))?;
        std::io::copy(&mut src, &mut dst)
            .and_then(|_| dst.sync_all())
            .map_err(|e| io_err("cannot copy backup to", &staged, e))?;
        drop(dst);
        let from = SqliteStore::verify_file(&staged)
            .await
            .map_err(|e| CliError::new(e.kind(), format!("{}: {e}", file.display())))?;

        let now = SystemClock.now();
        let store = SqliteStore::open(&staged, false).await?;
        let reason = format!(
            "from {}, which ends at its {}",
            file.display(),
            audit_text(&from)
        );
        let continued = continue_after_restore(&store, now, &reason).await;
        store.close().await;
        let (floor, counters) = continued?;
        let to = SqliteStore::verify_file(&staged).await?;
        sync_file(&staged)?;

        let kept = if replacing {
            match SqliteStore::take_offline(&live).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Conflict => return Err(e.into()),
                Err(e) => eprintln!(
                    "warning: cannot open the current database {} ({e}); moving it aside as it is",
                    live.display()
                ),
            }
            let kept = with_suffix(&live, &format!(".before-restore-{}", now.unix_timestamp()));
            link_new(&live, &kept)?;
            // Whatever journal the old database still has goes with it: left beside the new one
            // under the live name, SQLite would apply it to the wrong database.
            for suffix in ["-wal", "-shm", "-journal"] {
                let old = with_suffix(&live, suffix);
                if old.exists() {
                    fs::rename(&old, with_suffix(&kept, suffix))
                        .map_err(|e| io_err("cannot move aside", &old, e))?;
                }
            }
            fs::rename(&staged, &live).map_err(|e| io_err("cannot replace", &live, e))?;
            Some(kept)
        } else {
            link_new(&staged, &live)?;
            None
        };
        files::sync_dir(dir).map_err(|e| io_err("cannot flush", dir, e))?;
        Ok::<_, CliError>((from, to, floor, counters, kept))
    }
    .await;
    remove_db_files(&staged);
    drop(lock);
    if result.is_err() && created_dir {
        let _ = fs::remove_dir(dir);
    }
    let (from, to, floor, counters, kept) = result?;

    if a.json {
        println!(
            "{}",
            json!({
                "database": live,
                "from": file,
                "trust_domain": to.trust_domain,
                "schema_version": to.schema_version,
                "certificates": to.certificates,
                "backup_newest_audit_id": from.newest_audit.map(|(id, _)| id),
                "backup_newest_audit_at": from.newest_audit.map(|(_, at)| at),
                "restore_audit_id": to.newest_audit.map(|(id, _)| id),
                "crl_number_floor": floor,
                "crl_numbers": counters_json(&counters),
                "previous": kept,
            })
        );
    } else {
        println!(
            "Restored {} into {}: {} certificates, schema version {}",
            file.display(),
            live.display(),
            to.certificates,
            to.schema_version
        );
        println!(
            "The backup ends at its {}: certificates issued, revocations and token uses after it \
             are not in this record (README, \"Backup and restore\")",
            audit_text(&from)
        );
        println!("CRL numbers continue above {floor}");
        if let Some(kept) = &kept {
            println!("Previous database kept as {}", kept.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crl_floor_is_unix_milliseconds() {
        let at =
            OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).expect("time");
        assert_eq!(crl_number_floor(at), 1_700_000_000_123);
        let later = at + time::Duration::seconds(1);
        assert_eq!(crl_number_floor(later) - crl_number_floor(at), 1_000);
    }

    #[test]
    fn suffixes_extend_the_file_name() {
        assert_eq!(
            with_suffix(Path::new("/d/ca.db"), "-wal"),
            PathBuf::from("/d/ca.db-wal")
        );
    }
}
