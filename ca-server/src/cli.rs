//! The operator CLI: clap commands over the [`crate::service`] use cases. Output is human text,
//! or JSON with `--json`; errors are one line on stderr and an exit code per error kind.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use rcgen::{CertificateParams, KeyPair};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

use crate::clock::{Clock, SystemClock};
use crate::duration::HumanDuration;
use crate::error::{Classify, ErrorKind};
use crate::files;
use crate::pki::{Identity, KeyType, RevocationReason, Serial};
use crate::policy::{IssueRequest, Policy};
use crate::sealed::Passphrase;
use crate::server::ServeConfig;
use crate::service::{self, Ca, CaLifetimes, CaOptions, IssueInput, TokenInput};
use crate::service::{RevokeInput, RevokeTarget};
use crate::store::{
    AuditEntry, CertStatus, CertificateFilter, CertificateRecord, IssuedVia, SqliteStore, Store,
};

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "ca.db";

/// A private CA: per-environment intermediates, deny-by-default policy, short-lived certificates.
#[derive(Debug, Parser)]
#[command(name = "ca-server", version, about, long_about = None)]
pub struct Cli {
    /// Data directory holding the CA database.
    #[arg(long, global = true, env = "CA_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
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
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Config file (TOML; see ca-server/ca-server.example.toml). Flags and CA_* variables win.
    #[arg(long, env = "CA_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free one (printed as `listening on https://ADDR`).
    #[arg(long, env = "CA_LISTEN", value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Names in the server's own certificate (repeatable; must be among those fixed at init).
    #[arg(long = "server-name", value_name = "NAME")]
    server_names: Vec<String>,
    /// Lifetime of the server's own certificate.
    #[arg(long, value_name = "DURATION")]
    server_cert_ttl: Option<HumanDuration>,
    /// Also serve /crl/* and /ocsp over plain HTTP on this address (port 0: any free port).
    #[arg(long, env = "CA_HTTP_LISTEN", value_name = "ADDR")]
    http_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
struct RevokeArgs {
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

#[derive(Debug, Args)]
struct CrlArgs {
    /// Environment whose CRL to issue (or --root).
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

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Mint a token; its secret is printed once and only a hash is kept.
    Create(TokenCreateArgs),
    /// List tokens (usable ones unless --all).
    List(TokenListArgs),
    /// Revoke a token by id.
    Revoke(TokenRevokeArgs),
}

#[derive(Debug, Args)]
struct TokenCreateArgs {
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
struct TokenListArgs {
    /// Include used, expired and revoked tokens.
    #[arg(long)]
    all: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct TokenRevokeArgs {
    /// Token id (the part before the dot).
    id: String,
}

#[derive(Debug, Args)]
struct InitArgs {
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

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy file; errors name the file, the key and the problem.
    Check,
    /// Show whether a request would be allowed, with final names and TTL, or the refusing rule.
    Explain(ExplainArgs),
}

#[derive(Debug, Args)]
struct ExplainArgs {
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

#[derive(Debug, Args)]
struct IssueArgs {
    /// Environment.
    #[arg(long)]
    env: String,
    /// Service.
    #[arg(long)]
    service: String,
    /// DNS names (policy decides).
    #[arg(long, num_args = 1..)]
    dns: Vec<String>,
    /// IP SANs (only for services that allow them).
    #[arg(long, num_args = 1..)]
    ip: Vec<IpAddr>,
    /// Lifetime (default: the environment's default TTL).
    #[arg(long)]
    ttl: Option<HumanDuration>,
    /// Certify the key of this CSR instead of generating one (no key.pem is written).
    #[arg(long, value_name = "FILE")]
    csr: Option<PathBuf>,
    /// Type of the generated key.
    #[arg(long, default_value = "p256", conflicts_with = "csr")]
    key_type: KeyType,
    /// Output directory for key.pem, cert.pem, chain.pem and bundle.pem.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// List certificates, newest first.
    List(ListArgs),
    /// Show one certificate.
    Show(ShowArgs),
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Only this environment.
    #[arg(long)]
    env: Option<String>,
    /// Only this service.
    #[arg(long)]
    service: Option<String>,
    /// Only this status: valid, expired or revoked.
    #[arg(long)]
    status: Option<CertStatus>,
    /// Only valid certificates expiring within this duration.
    #[arg(long, value_name = "DURATION")]
    expiring_within: Option<HumanDuration>,
    /// At most this many.
    #[arg(long)]
    limit: Option<u32>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ShowArgs {
    /// Serial number, hex (any case, colons optional).
    serial: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct BundleArgs {
    /// Environment.
    #[arg(long)]
    env: String,
    /// Write to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct AuditArgs {
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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
        Command::Policy(PolicyCommand::Check) => policy_check(&cli).await,
        Command::Policy(PolicyCommand::Explain(a)) => policy_explain(&cli, a).await,
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
    }
}

fn data_dir(cli: &Cli) -> CliResult<&Path> {
    cli.data_dir.as_deref().ok_or_else(|| {
        CliError::new(
            ErrorKind::BadRequest,
            "--data-dir (or CA_DATA_DIR) is required",
        )
    })
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

async fn open_store(dir: &Path) -> CliResult<Arc<SqliteStore>> {
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
    Ok(Arc::new(SqliteStore::open(&db, false).await?))
}

/// Opens the CA of the data directory with the recorded (or overriding) policy.
async fn open_ca(cli: &Cli) -> CliResult<Ca> {
    let options = CaOptions {
        public_url: cli.public_url.clone(),
        ..CaOptions::default()
    };
    open_ca_with(cli, options).await
}

/// [`open_ca`] with explicit options (`serve` derives them from its configuration).
async fn open_ca_with(cli: &Cli, options: CaOptions) -> CliResult<Ca> {
    let dir = data_dir(cli)?;
    let store = open_store(dir).await?;
    let settings = store
        .settings()
        .await?
        .ok_or_else(|| CliError::new(ErrorKind::NotFound, format!("no CA in {}", dir.display())))?;
    if !settings.keys_sealed {
        eprintln!(
            "warning: CA keys in {} are stored unencrypted (created with --insecure-no-passphrase); development only",
            dir.display()
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

async fn init(cli: &Cli, a: &InitArgs) -> CliResult<()> {
    let dir = data_dir(cli)?;
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
        store.initialize(&built.new_ca).await?;
        store.close().await;
        if let (Some(out), Some(key)) = (&a.root_key_out, &built.root_key_export) {
            let mut f = files::create_new(out, files::PRIVATE)
                .map_err(|e| io_err("cannot create", out, e))?;
            f.write_all(
                format!(
                    "# ca-server offline root key for {}\n{key}\n",
                    policy.trust_domain
                )
                .as_bytes(),
            )
            .and_then(|()| f.sync_all())
            .map_err(|e| io_err("cannot write", out, e))?;
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

    let envs: Vec<&str> = policy.environments.keys().map(String::as_str).collect();
    if a.json {
        println!(
            "{}",
            json!({
                "data_dir": dir,
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
            dir.display()
        );
        println!("Intermediates: {}", envs.join(", "));
        if let Some(out) = &a.root_key_out {
            println!("Root key written to {} (keep it offline)", out.display());
        }
        println!("Root SHA-256 fingerprint: {}", built.root_fingerprint);
    }
    Ok(())
}

async fn load_policy_for_cli(cli: &Cli) -> CliResult<Policy> {
    if let Some(p) = &cli.policy {
        return Ok(Policy::load(p)?);
    }
    if cli.data_dir.is_some() {
        let store = open_store(data_dir(cli)?).await?;
        if let Some(s) = store.settings().await? {
            return Ok(Policy::load(Path::new(&s.policy_path))?);
        }
    }
    Err(CliError::new(
        ErrorKind::BadRequest,
        "give --policy FILE (or --data-dir of a CA to use its recorded policy)",
    ))
}

async fn policy_check(cli: &Cli) -> CliResult<()> {
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

async fn policy_explain(cli: &Cli, a: &ExplainArgs) -> CliResult<()> {
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

fn generate_csr(key_type: KeyType) -> CliResult<(Zeroizing<String>, Vec<u8>)> {
    let alg = match key_type {
        KeyType::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        KeyType::Rsa => {
            return Err(CliError::new(
                ErrorKind::BadRequest,
                "this build cannot generate RSA keys; create one elsewhere and pass its CSR with --csr",
            ));
        }
    };
    let internal =
        |e: rcgen::Error| CliError::new(ErrorKind::Internal, format!("key generation failed: {e}"));
    let key = KeyPair::generate_for(alg).map_err(internal)?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(internal)?;
    Ok((Zeroizing::new(key.serialize_pem()), csr.into_bytes()))
}

async fn issue(cli: &Cli, a: &IssueArgs) -> CliResult<()> {
    let ca = open_ca(cli).await?;
    let (key_pem, csr) = match &a.csr {
        Some(path) => {
            let meta = fs::metadata(path).map_err(|e| io_err("cannot read CSR", path, e))?;
            if meta.len() > crate::csr::MAX_CSR_BYTES as u64 {
                return Err(CliError::new(
                    ErrorKind::BadRequest,
                    "CSR file is too large",
                ));
            }
            (
                None,
                fs::read(path).map_err(|e| io_err("cannot read CSR", path, e))?,
            )
        }
        None => {
            let (k, c) = generate_csr(a.key_type)?;
            (Some(k), c)
        }
    };
    // Fail on an unusable output directory before anything is issued.
    files::check_output_dir(&a.out)
        .map_err(|e| io_err("cannot write to output directory", &a.out, e))?;
    let out = ca
        .issue(IssueInput {
            identity: Identity {
                env: a.env.clone(),
                service: a.service.clone(),
            },
            dns: a.dns.clone(),
            ips: a.ip.clone(),
            ttl: a.ttl.map(|t| t.0),
            csr,
            via: IssuedVia::Cli,
            actor: actor(),
        })
        .await?;
    let serial = out.record.serial.clone();
    files::ensure_private_dir(&a.out).map_err(|e| {
        CliError::new(
            ErrorKind::Internal,
            format!(
                "certificate {serial} was issued and recorded, but creating {} failed: {e}",
                a.out.display()
            ),
        )
    })?;
    let write = |name: &str, data: &[u8], mode: u32| {
        let p = a.out.join(name);
        files::write_atomic(&p, data, mode).map_err(|e| {
            CliError::new(
                ErrorKind::Internal,
                format!(
                    "certificate {serial} was issued and recorded, but writing {} failed: {e}",
                    p.display()
                ),
            )
        })
    };
    if let Some(k) = &key_pem {
        write("key.pem", k.as_bytes(), files::PRIVATE)?;
    }
    write("cert.pem", out.cert_pem.as_bytes(), files::PUBLIC)?;
    write("chain.pem", out.chain_pem.as_bytes(), files::PUBLIC)?;
    write("bundle.pem", out.bundle_pem.as_bytes(), files::PUBLIC)?;
    let r = &out.record;
    if a.json {
        println!(
            "{}",
            json!({
                "serial": r.serial,
                "spiffe_id": r.spiffe_id,
                "dns_names": r.dns_names,
                "ip_addresses": r.ip_addresses,
                "not_before": rfc3339(r.not_before),
                "not_after": rfc3339(r.not_after),
                "out": a.out,
                "key_written": key_pem.is_some(),
            })
        );
    } else {
        println!("serial:    {}", r.serial);
        println!("identity:  {}", r.spiffe_id);
        if !r.dns_names.is_empty() {
            println!("dns:       {}", r.dns_names.join(", "));
        }
        if !r.ip_addresses.is_empty() {
            println!("ip:        {}", r.ip_addresses.join(", "));
        }
        println!("not after: {}", rfc3339(r.not_after));
        println!("written:   {}", a.out.display());
    }
    Ok(())
}

fn cert_json(c: &CertificateRecord, now: i64) -> serde_json::Value {
    json!({
        "serial": c.serial,
        "env": c.env,
        "service": c.service,
        "spiffe_id": c.spiffe_id,
        "dns_names": c.dns_names,
        "ip_addresses": c.ip_addresses,
        "status": c.status(now).as_str(),
        "not_before": rfc3339(c.not_before),
        "not_after": rfc3339(c.not_after),
        "key_type": c.key_type,
        "fingerprint": c.fingerprint,
        "issuer": c.issuer_id,
        "issued_via": c.issued_via,
        "issued_by": c.issued_by,
        "issued_at": rfc3339(c.created_at),
        "revoked_at": c.revoked_at.map(rfc3339),
        "revocation_reason": c.revocation_reason,
    })
}

async fn certs_list(cli: &Cli, a: &ListArgs) -> CliResult<()> {
    let ca = open_ca(cli).await?;
    let now = ca.now_unix();
    let mut status = a.status;
    let not_after_before = a.expiring_within.map(|d| {
        status.get_or_insert(CertStatus::Valid);
        now + d.0.whole_seconds()
    });
    let certs = ca
        .list(CertificateFilter {
            env: a.env.clone(),
            service: a.service.clone(),
            status,
            not_after_before,
            now,
            limit: a.limit,
        })
        .await?;
    if a.json {
        let items: Vec<_> = certs.iter().map(|c| cert_json(c, now)).collect();
        println!("{}", serde_json::Value::Array(items));
        return Ok(());
    }
    println!(
        "{:<32}  {:<10} {:<16} {:<8} {:<20}  NAMES",
        "SERIAL", "ENV", "SERVICE", "STATUS", "NOT AFTER"
    );
    for c in &certs {
        println!(
            "{:<32}  {:<10} {:<16} {:<8} {:<20}  {}",
            c.serial,
            c.env,
            c.service,
            c.status(now).as_str(),
            rfc3339(c.not_after),
            c.dns_names.join(",")
        );
    }
    Ok(())
}

async fn certs_show(cli: &Cli, a: &ShowArgs) -> CliResult<()> {
    let serial: Serial = a
        .serial
        .parse()
        .map_err(|e: crate::pki::HexError| CliError::new(ErrorKind::BadRequest, e.to_string()))?;
    let ca = open_ca(cli).await?;
    let c = ca.certificate(&serial).await?;
    let now = ca.now_unix();
    if a.json {
        let mut v = cert_json(&c, now);
        v["pem"] = json!(c.cert_pem);
        println!("{v}");
        return Ok(());
    }
    let v = cert_json(&c, now);
    if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            let text = match val {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".into(),
                other => other.to_string(),
            };
            println!("{k:<18} {text}");
        }
    }
    print!("{}", c.cert_pem);
    Ok(())
}

async fn bundle(cli: &Cli, a: &BundleArgs) -> CliResult<()> {
    let ca = open_ca(cli).await?;
    let pem = ca.bundle(&a.env).await?;
    match &a.out {
        Some(p) => files::write_atomic(p, pem.as_bytes(), files::PUBLIC)
            .map_err(|e| io_err("cannot write", p, e))?,
        None => print!("{pem}"),
    }
    Ok(())
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

async fn audit(cli: &Cli, a: &AuditArgs) -> CliResult<()> {
    let store = open_store(data_dir(cli)?).await?;
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

async fn serve(cli: &Cli, a: &ServeArgs) -> CliResult<()> {
    let mut cfg = match &a.config {
        Some(p) => ServeConfig::load(p)?,
        None => ServeConfig::default(),
    };
    if let Some(l) = a.listen {
        cfg.listen = l;
    }
    if !a.server_names.is_empty() {
        cfg.server_names = a.server_names.clone();
    }
    if let Some(t) = a.server_cert_ttl {
        cfg.server_cert_ttl = t;
    }
    if a.http_listen.is_some() {
        cfg.http_listen = a.http_listen;
    }
    if cli.public_url.is_some() {
        cfg.public_url = cli.public_url.clone();
    }
    cfg.validate()
        .map_err(|m| CliError::new(ErrorKind::BadRequest, m))?;
    let ca = Arc::new(open_ca_with(cli, cfg.ca_options()).await?);
    spawn_policy_reloader(ca.clone(), cli.policy.clone());
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ])
        .map_err(|e| CliError::new(ErrorKind::Internal, format!("metrics: {e}")))?
        .install_recorder()
        .map_err(|e| CliError::new(ErrorKind::Internal, format!("metrics: {e}")))?;
    crate::server::serve(ca, cfg, Some(metrics), crate::server::shutdown_signal()).await?;
    Ok(())
}

/// SIGHUP re-reads the policy (the `--policy` file, else the one recorded at init). A policy
/// that does not load, or does not fit the CA, is refused and the old one stays in force.
fn spawn_policy_reloader(ca: Arc<Ca>, policy_flag: Option<PathBuf>) {
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; policy reload disabled");
                return;
            }
        };
        while hup.recv().await.is_some() {
            let path = policy_flag
                .clone()
                .unwrap_or_else(|| PathBuf::from(&ca.settings().policy_path));
            let result = match Policy::load(&path) {
                Ok(p) => ca.reload_policy(p).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(()) => tracing::warn!(path = %path.display(), "policy reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "policy reload refused; the previous policy stays in force")
                }
            }
        }
    });
}

async fn token_create(cli: &Cli, a: &TokenCreateArgs) -> CliResult<()> {
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
                "token": created.token,
                "id": r.id,
                "env": r.env,
                "service": r.service,
                "uses": r.max_uses,
                "expires_at": rfc3339(r.expires_at),
            })
        );
    } else {
        println!("{}", created.token);
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

async fn token_list(cli: &Cli, a: &TokenListArgs) -> CliResult<()> {
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

async fn token_revoke(cli: &Cli, a: &TokenRevokeArgs) -> CliResult<()> {
    let ca = open_ca(cli).await?;
    ca.revoke_token(&a.id, &actor()).await?;
    println!("token {} revoked", a.id);
    Ok(())
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

async fn revoke(cli: &Cli, a: &RevokeArgs) -> CliResult<()> {
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
    let read = |p: &Option<PathBuf>, what: &str| -> CliResult<Vec<u8>> {
        let p = p.as_ref().ok_or_else(|| {
            CliError::new(
                ErrorKind::BadRequest,
                format!("--{what} is required with --server"),
            )
        })?;
        fs::read(p).map_err(|e| io_err(&format!("cannot read --{what}"), p, e))
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

async fn crl(cli: &Cli, a: &CrlArgs) -> CliResult<()> {
    let ca = open_ca(cli).await?;
    let record = match (&a.env, a.root, &a.root_key) {
        (Some(env), _, _) => ca.build_crl(env).await?,
        (None, true, None) => ca.build_crl(service::ROOT_ID).await?,
        (None, true, Some(path)) => {
            let text =
                fs::read_to_string(path).map_err(|e| io_err("cannot read root key", path, e))?;
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
            let pkcs8 = crate::sealed::open(service::ROOT_ID, stored, pass.as_ref())?;
            let key = crate::authority::CaKey::from_pkcs8(&pkcs8)?;
            let root = ca
                .store()
                .authority(service::ROOT_ID)
                .await?
                .ok_or_else(|| CliError::new(ErrorKind::NotFound, "no root in this CA"))?;
            let signer = crate::authority::Signer::new(service::pem_to_der(&root.cert_pem)?, key)?;
            ca.build_crl_with(service::ROOT_ID, &signer).await?
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
