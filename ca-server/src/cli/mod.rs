//! The operator CLI: clap commands over the [`crate::service`] use cases. Output is human text,
//! or JSON with `--json`; errors are one line on stderr and an exit code per error kind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

use crate::clock::SystemClock;
use crate::error::{Classify, ErrorKind};
use crate::policy::Policy;
use crate::sealed::Passphrase;
use crate::service::{Ca, CaOptions};
use crate::store::{PgSettings, PgStore, SqliteStore, Store};

mod acme;
mod audit;
mod backup;
mod ca;
mod certs;
mod init;
mod migrate;
mod policy;
mod revoke;
mod serve;
mod tokens;

use acme::{AcmeCommand, acme};
use audit::{AuditArgs, audit};
use backup::{BackupArgs, RestoreArgs, backup, restore};
use ca::{CaCommand, ca_list, ca_rotate};
use certs::{BundleArgs, CertsCommand, IssueArgs, bundle, certs_list, certs_show, issue};
use init::{InitArgs, init};
use migrate::{MigrateArgs, migrate};
use policy::{PolicyCommand, policy_check, policy_explain, policy_publish};
use revoke::{CrlArgs, RevokeArgs, crl, revoke};
use serve::{ServeArgs, serve};
use tokens::{TokenCommand, token_create, token_list, token_revoke};

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "ca.db";

/// A private CA: per-environment intermediates, deny-by-default policy, short-lived certificates.
#[derive(Debug, Parser)]
#[command(name = "ca-server", version, about, long_about = None)]
pub struct Cli {
    /// Data directory holding the CA database (SQLite).
    #[arg(long, global = true, env = "CA_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// PostgreSQL database holding the CA, shared by several servers (`postgres://...`); used
    /// instead of --data-dir.
    #[arg(
        long,
        global = true,
        env = "CA_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// Policy file; defaults to the one recorded at `init`.
    #[arg(long, global = true, env = "CA_POLICY", value_name = "FILE")]
    policy: Option<PathBuf>,
    /// File holding the passphrase that seals CA keys (or set CA_PASSPHRASE to the passphrase).
    #[arg(long, global = true, env = "CA_PASSPHRASE_FILE", value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Base URL where this CA's CRLs and OCSP responder are reachable; put into issued leaves.
    #[arg(long, global = true, env = "CA_PUBLIC_URL", value_name = "URL")]
    public_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a CA: root, one intermediate per policy environment, and the database.
    Init(InitArgs),
    /// Bring the database schema up to date (PostgreSQL servers never migrate by themselves).
    Migrate(MigrateArgs),
    /// Validate or query the issuance policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Issue a certificate locally (for operators and CI on the CA host).
    Issue(IssueArgs),
    /// Inspect issued certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Print the trust bundle of an environment (root, then its intermediate).
    Bundle(BundleArgs),
    /// Print the audit log.
    Audit(AuditArgs),
    /// Serve the HTTPS API (enroll, renew, bundles, health, metrics).
    Serve(ServeArgs),
    /// Mint, list and revoke enrollment tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Revoke certificates by serial or identity, locally or through a remote server.
    Revoke(RevokeArgs),
    /// Issue a CRL now and write it to a file.
    Crl(CrlArgs),
    /// The ACME server: External Account Binding keys and accounts.
    #[command(subcommand)]
    Acme(AcmeCommand),
    /// Rotate CA certificates (intermediates, the root) and list their states.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Write a consistent snapshot of a SQLite CA while it serves (PostgreSQL: use pg_dump).
    Backup(BackupArgs),
    /// Put a backup into service; CRL numbers continue above every number published before.
    Restore(RestoreArgs),
}

/// A CLI failure: a one-line message and the kind that picks the exit code.
#[derive(Debug)]
pub struct CliError {
    kind: ErrorKind,
    message: String,
}

impl CliError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> CliError {
        CliError {
            kind,
            message: message.into(),
        }
    }
}

impl<E: Classify + std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        let kind = e.kind();
        CliError::new(kind, e.to_string())
    }
}

type CliResult<T> = Result<T, CliError>;

fn io_err(what: &str, path: &Path, e: std::io::Error) -> CliError {
    CliError::new(
        ErrorKind::BadRequest,
        format!("{what} {}: {e}", path.display()),
    )
}

/// Parses arguments, runs the command, prints errors; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("CA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // A failed log write (stderr is a file on a full disk) is dropped: tracing-subscriber would
    // report it with eprintln!, which panics when stderr is that same file, and take the
    // request being logged down with it.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .init();
    // The server spreads TLS, signing and verification over every core; one-shot commands start
    // faster on a single thread.
    let mut builder = if matches!(cli.command, Command::Serve(_)) {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::from(ErrorKind::Internal.exit_code());
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.kind.exit_code())
        }
    }
}

fn actor() -> String {
    use std::os::unix::fs::MetadataExt;
    match std::env::var("USER").or_else(|_| std::env::var("LOGNAME")) {
        Ok(user) if !user.is_empty() => format!("cli:{user}"),
        _ => match fs::metadata("/proc/self") {
            Ok(m) => format!("cli:uid={}", m.uid()),
            Err(_) => "cli:unknown".into(),
        },
    }
}

fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// Runs one parsed command.
pub async fn run(cli: Cli) -> CliResult<()> {
    match &cli.command {
        Command::Init(a) => init(&cli, a).await,
        Command::Migrate(a) => migrate(&cli, a).await,
        Command::Policy(PolicyCommand::Check) => policy_check(&cli).await,
        Command::Policy(PolicyCommand::Explain(a)) => policy_explain(&cli, a).await,
        Command::Policy(PolicyCommand::Publish) => policy_publish(&cli).await,
        Command::Issue(a) => issue(&cli, a).await,
        Command::Certs(CertsCommand::List(a)) => certs_list(&cli, a).await,
        Command::Certs(CertsCommand::Show(a)) => certs_show(&cli, a).await,
        Command::Bundle(a) => bundle(&cli, a).await,
        Command::Audit(a) => audit(&cli, a).await,
        Command::Serve(a) => serve(&cli, a).await,
        Command::Token(TokenCommand::Create(a)) => token_create(&cli, a).await,
        Command::Token(TokenCommand::List(a)) => token_list(&cli, a).await,
        Command::Token(TokenCommand::Revoke(a)) => token_revoke(&cli, a).await,
        Command::Revoke(a) => revoke(&cli, a).await,
        Command::Crl(a) => crl(&cli, a).await,
        Command::Acme(c) => acme(&cli, c).await,
        Command::Ca(CaCommand::Rotate(a)) => ca_rotate(&cli, a).await,
        Command::Ca(CaCommand::List(a)) => ca_list(&cli, a).await,
        Command::Backup(a) => backup(&cli, a).await,
        Command::Restore(a) => restore(&cli, a).await,
    }
}

/// Where the CA lives: a SQLite data directory, or a PostgreSQL database.
#[derive(Debug, Clone, Copy)]
enum Location<'a> {
    Dir(&'a Path),
    Postgres(&'a str),
}

impl Location<'_> {
    /// For messages: the directory, or the URL without its password.
    fn describe(&self) -> String {
        match self {
            Location::Dir(d) => d.display().to_string(),
            Location::Postgres(url) => crate::store::redact_url(url),
        }
    }
}

/// The CA's location: `--database-url` when given (it must be PostgreSQL), else `--data-dir`.
fn location(cli: &Cli) -> CliResult<Location<'_>> {
    match (&cli.database_url, &cli.data_dir) {
        (Some(url), _) if crate::store::is_postgres_url(url) => Ok(Location::Postgres(url)),
        (Some(_), _) => Err(CliError::new(
            ErrorKind::BadRequest,
            "--database-url (CA_DATABASE_URL) must be a postgres:// URL; for SQLite give --data-dir",
        )),
        (None, Some(dir)) => Ok(Location::Dir(dir)),
        (None, None) => Err(CliError::new(
            ErrorKind::BadRequest,
            "--data-dir (or CA_DATA_DIR) is required, or --database-url (CA_DATABASE_URL) for PostgreSQL",
        )),
    }
}

fn read_passphrase(cli: &Cli) -> CliResult<Option<Passphrase>> {
    if let Some(path) = &cli.passphrase_file {
        let text = Zeroizing::new(
            fs::read_to_string(path).map_err(|e| io_err("cannot read passphrase file", path, e))?,
        );
        let p = Passphrase::new(text.to_string());
        return Ok(Some(p));
    }
    match std::env::var("CA_PASSPHRASE") {
        Ok(v) if !v.is_empty() => Ok(Some(Passphrase::new(v))),
        _ => Ok(None),
    }
}

/// The database file of the CA in `dir`; `NotFound` when there is none.
fn sqlite_db(dir: &Path) -> CliResult<PathBuf> {
    let db = dir.join(DB_FILE);
    if !db.is_file() {
        return Err(CliError::new(
            ErrorKind::NotFound,
            format!(
                "no CA in {} (no {DB_FILE}); run `ca-server init` first",
                dir.display()
            ),
        ));
    }
    Ok(db)
}

async fn open_sqlite(dir: &Path) -> CliResult<Arc<SqliteStore>> {
    Ok(Arc::new(SqliteStore::open(&sqlite_db(dir)?, false).await?))
}

/// Opens the CA's store; PostgreSQL with default pool settings.
async fn open_store(cli: &Cli) -> CliResult<Arc<dyn Store>> {
    open_store_at(location(cli)?, &PgSettings::default()).await
}

/// Opens the store at `place`; PostgreSQL with `pg` pool settings, its schema checked (not
/// migrated).
async fn open_store_at(place: Location<'_>, pg: &PgSettings) -> CliResult<Arc<dyn Store>> {
    Ok(match place {
        Location::Dir(dir) => open_sqlite(dir).await?,
        Location::Postgres(url) => Arc::new(PgStore::open(url, pg).await.map_err(|e| {
            CliError::new(e.kind(), format!("{}: {e}", crate::store::redact_url(url)))
        })?),
    })
}

/// Opens the CA of the data directory with the recorded (or overriding) policy.
async fn open_ca(cli: &Cli) -> CliResult<Ca> {
    let options = CaOptions {
        public_url: cli.public_url.clone(),
        ..CaOptions::default()
    };
    open_ca_with(cli, location(cli)?, options, &PgSettings::default()).await
}

/// [`open_ca`] with explicit options (`serve` derives them from its configuration).
async fn open_ca_with(
    cli: &Cli,
    place: Location<'_>,
    options: CaOptions,
    pg: &PgSettings,
) -> CliResult<Ca> {
    let store = open_store_at(place, pg).await?;
    let place = place.describe();
    let settings = store.settings().await?.ok_or_else(|| {
        CliError::new(
            ErrorKind::NotFound,
            format!("no CA in {place}; run `ca-server init` first"),
        )
    })?;
    if !settings.keys_sealed {
        eprintln!(
            "warning: CA keys in {place} are stored unencrypted (created with --insecure-no-passphrase); development only"
        );
    }
    let policy_path = cli
        .policy
        .clone()
        .unwrap_or_else(|| PathBuf::from(&settings.policy_path));
    let policy = Policy::load(&policy_path)?;
    let passphrase = read_passphrase(cli)?;
    Ok(Ca::open(store, Arc::new(SystemClock), policy, passphrase, options).await?)
}
