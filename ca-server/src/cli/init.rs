//! `init`: create the CA and its database.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;
use zeroize::Zeroizing;

use crate::clock::{Clock, SystemClock};
use crate::duration::HumanDuration;
use crate::error::ErrorKind;
use crate::files;
use crate::policy::Policy;
use crate::service::{self, CaLifetimes};
use crate::store::{PgSettings, PgStore, SqliteStore, Store};

use super::{
    Cli, CliError, CliResult, DB_FILE, Location, actor, io_err, location, read_passphrase,
};

#[derive(Debug, Args)]
pub(super) struct InitArgs {
    /// Store CA keys unencrypted. Development only; every later command warns.
    #[arg(long)]
    insecure_no_passphrase: bool,
    /// Write the root key to this new file instead of the database (offline root).
    #[arg(long, value_name = "FILE")]
    root_key_out: Option<PathBuf>,
    /// Root validity.
    #[arg(long, default_value = "10y", value_name = "DURATION")]
    root_ttl: HumanDuration,
    /// Intermediate validity (capped by the root's).
    #[arg(long, default_value = "1y", value_name = "DURATION")]
    intermediate_ttl: HumanDuration,
    /// Host names and addresses the CA server may be reached by (repeatable). They become name
    /// constraints of the intermediate that issues the server's own certificate.
    #[arg(long = "server-name", value_name = "NAME", default_values_t = service::DEFAULT_SERVER_NAMES.map(String::from))]
    server_names: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub(super) async fn init(cli: &Cli, a: &InitArgs) -> CliResult<()> {
    let place = location(cli)?;
    let policy_path = cli
        .policy
        .as_deref()
        .ok_or_else(|| CliError::new(ErrorKind::BadRequest, "--policy is required for init"))?;
    let policy_abs =
        fs::canonicalize(policy_path).map_err(|e| io_err("cannot read policy", policy_path, e))?;
    let policy = Policy::load(&policy_abs)?;
    let passphrase = read_passphrase(cli)?;
    match (&passphrase, a.insecure_no_passphrase) {
        (Some(_), true) => {
            return Err(CliError::new(
                ErrorKind::BadRequest,
                "--insecure-no-passphrase contradicts the passphrase given (--passphrase-file or CA_PASSPHRASE)",
            ));
        }
        (None, false) => {
            return Err(CliError::new(
                ErrorKind::BadRequest,
                "CA keys must be encrypted: give --passphrase-file FILE or set CA_PASSPHRASE \
                 (or --insecure-no-passphrase for development)",
            ));
        }
        _ => {}
    }
    if let Location::Dir(dir) = place {
        let db = dir.join(DB_FILE);
        if db.exists() {
            return Err(CliError::new(
                ErrorKind::Conflict,
                format!(
                    "{} already holds a CA ({}); refusing to touch it",
                    dir.display(),
                    db.display()
                ),
            ));
        }
    }
    if let Some(out) = &a.root_key_out
        && out.exists()
    {
        return Err(CliError::new(
            ErrorKind::Conflict,
            format!(
                "--root-key-out {} already exists; refusing to overwrite it",
                out.display()
            ),
        ));
    }
    if a.insecure_no_passphrase {
        eprintln!(
            "warning: CA keys will be stored unencrypted (--insecure-no-passphrase); development only"
        );
    }

    let built = service::build_ca(
        &policy,
        &policy_abs.to_string_lossy(),
        passphrase.as_ref(),
        CaLifetimes {
            root: a.root_ttl.0,
            intermediate: a.intermediate_ttl.0,
        },
        &a.server_names,
        a.root_key_out.is_some(),
        SystemClock.now(),
        &actor(),
    )?;

    let root_key_text = built.root_key_export.as_ref().map(|key| {
        let header = format!("# ca-server offline root key for {}\n", policy.trust_domain);
        // Sized up front, so no growth leaves a copy of the key behind in a freed buffer.
        let mut text = Zeroizing::new(String::with_capacity(header.len() + key.len() + 1));
        text.push_str(&header);
        text.push_str(key);
        text.push('\n');
        text
    });
    let root_key = root_key_text.as_ref().map(|t| t.as_str());
    match place {
        Location::Dir(dir) => {
            init_sqlite(dir, &built.new_ca, a, root_key).await?;
        }
        Location::Postgres(url) => {
            init_postgres(url, &built.new_ca, a, root_key).await?;
        }
    }

    let envs: Vec<&str> = policy.environments.keys().map(String::as_str).collect();
    if a.json {
        println!(
            "{}",
            json!({
                "data_dir": match place { Location::Dir(d) => Some(d), Location::Postgres(_) => None },
                "database": place.describe(),
                "trust_domain": policy.trust_domain,
                "root_fingerprint": built.root_fingerprint.to_hex(),
                "environments": envs,
                "keys_sealed": passphrase.is_some(),
                "root_key_out": a.root_key_out,
                "root_pem": built.root_pem,
            })
        );
    } else {
        println!(
            "Created CA for trust domain {} in {}",
            policy.trust_domain,
            place.describe()
        );
        println!("Intermediates: {}", envs.join(", "));
        if let Some(out) = &a.root_key_out {
            println!("Root key written to {} (keep it offline)", out.display());
        }
        println!("Root SHA-256 fingerprint: {}", built.root_fingerprint);
    }
    Ok(())
}

/// Writes the offline root key to a new 0600 file, flushed.
fn write_root_key(out: &Path, text: &str) -> CliResult<()> {
    let mut f =
        files::create_new(out, files::PRIVATE).map_err(|e| io_err("cannot create", out, e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err("cannot write", out, e))
}

/// Creates the SQLite database of `dir`, all or nothing.
async fn init_sqlite(
    dir: &Path,
    new_ca: &crate::store::NewCa,
    a: &InitArgs,
    root_key: Option<&str>,
) -> CliResult<()> {
    let db = dir.join(DB_FILE);
    files::ensure_private_dir(dir).map_err(|e| io_err("cannot create data directory", dir, e))?;
    // Build the database under a temporary name and link it into place only when complete, so a
    // failure leaves no half-made CA and a concurrent init cannot both succeed.
    let tmp = dir.join(format!(".{DB_FILE}.init-{}", std::process::id()));
    let cleanup = |p: &Path| {
        for suffix in ["", "-wal", "-shm"] {
            let _ = fs::remove_file(format!("{}{suffix}", p.display()));
        }
    };
    cleanup(&tmp);
    let result = async {
        files::create_new(&tmp, files::PRIVATE).map_err(|e| io_err("cannot create", &tmp, e))?;
        let store = SqliteStore::open(&tmp, false).await?;
        store.initialize(new_ca).await?;
        store.close().await;
        if let (Some(out), Some(key)) = (&a.root_key_out, root_key) {
            write_root_key(out, key)?;
        }
        if let Err(e) = fs::hard_link(&tmp, &db) {
            if let Some(out) = &a.root_key_out {
                let _ = fs::remove_file(out);
            }
            return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                CliError::new(
                    ErrorKind::Conflict,
                    format!("{} already holds a CA", dir.display()),
                )
            } else {
                io_err("cannot create", &db, e)
            });
        }
        files::sync_dir(dir).map_err(|e| io_err("cannot sync", dir, e))?;
        Ok::<(), CliError>(())
    }
    .await;
    cleanup(&tmp);
    result?;

    Ok(())
}

/// Creates the CA in a PostgreSQL database: migrates it (an empty database is fine), then
/// writes everything in one transaction. The offline root key is written first, so a committed
/// CA never lacks it; it is removed again if the CA cannot be written.
async fn init_postgres(
    url: &str,
    new_ca: &crate::store::NewCa,
    a: &InitArgs,
    root_key: Option<&str>,
) -> CliResult<()> {
    let store = PgStore::connect(url, &PgSettings::for_migrations()).await?;
    let result = async {
        store.migrate().await?;
        if store.settings().await?.is_some() {
            return Err(CliError::new(
                ErrorKind::Conflict,
                format!(
                    "{} already holds a CA; refusing to touch it",
                    crate::store::redact_url(url)
                ),
            ));
        }
        if let (Some(out), Some(key)) = (&a.root_key_out, root_key) {
            write_root_key(out, key)?;
        }
        store.initialize(new_ca).await.map_err(|e| {
            if let Some(out) = &a.root_key_out {
                let _ = fs::remove_file(out);
            }
            CliError::from(e)
        })
    }
    .await;
    store.close().await;
    result
}
