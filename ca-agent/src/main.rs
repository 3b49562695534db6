//! `ca-agent` binary.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use ca_agent::agent::{self, AgentError, Exit};
use ca_agent::config::AgentConfig;
use ca_agent::status::{Health, StatusFile};
use clap::{Args, Parser, Subcommand};

/// Host agent of the private CA: enrolls once, then keeps certificates fresh.
#[derive(Debug, Parser)]
#[command(name = "ca-agent", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: enroll where needed, then renew forever.
    Run(RunArgs),
    /// Show each certificate's identity, serial, expiry, next renewal and last error.
    Status(StatusArgs),
    /// Ask the running daemon to renew now (all certificates, or the named ones).
    Renew(RenewArgs),
    /// One-shot issuance for CI: enroll with a token and write key.pem, cert.pem, chain.pem, bundle.pem.
    Issue(IssueCmd),
    /// Validate the configuration and print who issues each certificate (private CA or ACME).
    CheckConfig(CheckArgs),
    /// Revoke a managed certificate at its issuer (decommissioning a host).
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// Configuration file.
    #[arg(long, env = "CA_AGENT_CONFIG", value_name = "FILE")]
    config: PathBuf,
}

#[derive(Debug, Args)]
struct RevokeArgs {
    /// Configuration file.
    #[arg(long, env = "CA_AGENT_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// RFC 5280 reason: superseded, key-compromise (both CAs), unspecified,
    /// affiliation-changed, cessation-of-operation (ACME only).
    #[arg(long, default_value = "superseded")]
    reason: String,
    /// The certificate's name.
    name: String,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Configuration file.
    #[arg(long, env = "CA_AGENT_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// File holding an enrollment token (re-read whenever the agent must enroll).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Configuration file (to find the state directory).
    #[arg(long, env = "CA_AGENT_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RenewArgs {
    /// Configuration file (to find the daemon).
    #[arg(long, env = "CA_AGENT_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Renew now rather than at the scheduled time (required: the only mode).
    #[arg(long)]
    now: bool,
    /// Certificate names (default: all).
    names: Vec<String>,
}

#[derive(Debug, Args)]
struct IssueCmd {
    /// CA base URL (https://...).
    #[arg(long)]
    server: String,
    /// SHA-256 fingerprint of the CA root (hex, any case, colons optional).
    #[arg(long)]
    root_fingerprint: String,
    /// Enrollment token (or CA_AGENT_TOKEN).
    #[arg(long, env = "CA_AGENT_TOKEN", hide_env_values = true)]
    token: ca_wire::EnrollmentToken,
    /// Environment.
    #[arg(long)]
    env: String,
    /// Service.
    #[arg(long)]
    service: String,
    /// DNS names.
    #[arg(long, num_args = 1..)]
    dns: Vec<String>,
    /// IP SANs.
    #[arg(long, num_args = 1..)]
    ip: Vec<IpAddr>,
    /// Lifetime, e.g. 30m.
    #[arg(long)]
    ttl: Option<String>,
    /// p256, p384 or ed25519.
    #[arg(long, default_value = "p256")]
    key_type: String,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn load(config: &std::path::Path) -> Result<AgentConfig, AgentError> {
    AgentConfig::load(config).map_err(|e| AgentError::new(Exit::Usage, e.to_string()))
}

fn fmt_time(unix: Option<i64>) -> String {
    use time::format_description::well_known::Rfc3339;
    unix.and_then(|u| time::OffsetDateTime::from_unix_timestamp(u).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "-".into())
}

/// `status` exit codes: 0 every certificate valid, 1 some certificate without a valid
/// certificate (pending, revoked, unhealthy), 2 usage, 4 no status (daemon never ran).
fn status(a: &StatusArgs) -> Result<ExitCode, AgentError> {
    let cfg = load(&a.config)?;
    let path = cfg.state_dir.join("status.json");
    let text = std::fs::read(&path).map_err(|e| {
        AgentError::new(
            Exit::Trust,
            format!(
                "no status at {} ({e}); is the agent running?",
                path.display()
            ),
        )
    })?;
    let st: StatusFile = serde_json::from_slice(&text)
        .map_err(|e| AgentError::new(Exit::Transient, format!("unreadable status file: {e}")))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
    } else {
        println!(
            "{:<12} {:<14} {:<40} {:<10} {:<40} {:<21} {:<21} ERROR",
            "NAME", "ISSUER", "ISSUED BY", "HEALTH", "SERIAL", "NOT AFTER", "NEXT"
        );
        for c in st.certs.values() {
            println!(
                "{:<12} {:<14} {:<40} {:<10} {:<40} {:<21} {:<21} {}",
                c.name,
                if c.issuer.is_empty() { "-" } else { &c.issuer },
                c.issued_by.as_deref().unwrap_or("-"),
                format!("{:?}", c.health).to_lowercase(),
                c.serial.as_deref().unwrap_or("-"),
                fmt_time(c.not_after),
                fmt_time(c.next_attempt),
                c.last_error
                    .as_deref()
                    .or(c.reload_warning.as_deref())
                    .unwrap_or("")
            );
        }
    }
    let healthy = st.certs.values().all(|c| c.health == Health::Ok);
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prints each certificate's issuer decision; exit 2 when one cannot be routed.
async fn check_config(a: &CheckArgs) -> Result<ExitCode, AgentError> {
    use ca_agent::config::Route;
    let cfg = load(&a.config)?;
    let mut info = None;
    if let (Some(server), Some(fp)) = (&cfg.server, &cfg.root_fingerprint) {
        let ask = async {
            let root = agent::pinned_root(server, fp, Some(&cfg.state_dir)).await?;
            let anon = ca_wire::client::ApiClient::new(server, root.as_bytes(), None)?;
            agent::ca_info(&anon, &cfg.state_dir).await
        };
        match tokio::time::timeout(std::time::Duration::from_secs(20), ask).await {
            Ok(Ok(i)) => info = Some(i),
            Ok(Err(e)) => eprintln!("warning: cannot learn the private CA's DNS suffixes: {e}"),
            Err(_) => eprintln!("warning: the private CA did not answer within 20s"),
        }
    }
    let mut refused = false;
    for c in &cfg.certs {
        match cfg.route(c, info.as_ref()) {
            Ok(Route::Private) => println!(
                "{}: private CA ({}/{}) for {}",
                c.name,
                c.env,
                c.service,
                names(c)
            ),
            Ok(Route::Acme) => {
                let (name, acct) = cfg
                    .acme_account_of(c)
                    .map_err(|e| AgentError::new(Exit::Usage, e))?;
                let how = match (c.challenge_kind(), &c.webroot) {
                    (ca_agent::config::ChallengeKind::Dns01, _) => {
                        "dns-01 through dns_hook".to_string()
                    }
                    (_, Some(root)) => format!("http-01 through webroot {}", root.display()),
                    _ => format!("http-01 on {}", c.http_listen),
                };
                println!(
                    "{}: ACME account {name} ({}), {how}, for {}",
                    c.name,
                    acct.directory_url(),
                    names(c)
                );
            }
            Err(e) => {
                refused = true;
                println!("{}: REFUSED: {e}", c.name);
            }
        }
    }
    Ok(if refused {
        ExitCode::from(Exit::Usage as u8)
    } else {
        ExitCode::SUCCESS
    })
}

fn names(c: &ca_agent::config::CertConfig) -> String {
    let mut n: Vec<String> = c.dns.clone();
    n.extend(c.ips.iter().map(|ip| ip.to_string()));
    if n.is_empty() {
        "its SPIFFE ID only".into()
    } else {
        n.join(", ")
    }
}

async fn revoke(a: &RevokeArgs) -> Result<ExitCode, AgentError> {
    let cfg = load(&a.config)?;
    let agent = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        agent::Agent::start(cfg, None),
    )
    .await
    .map_err(|_| AgentError::new(Exit::Transient, "the private CA did not answer within 30s"))??;
    let serial = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        agent.revoke(&a.name, &a.reason),
    )
    .await
    .map_err(|_| AgentError::new(Exit::Transient, "revocation did not complete within 120s"))??;
    println!("revoked {} (serial {serial}, reason {})", a.name, a.reason);
    Ok(ExitCode::SUCCESS)
}

fn renew(a: &RenewArgs) -> Result<ExitCode, AgentError> {
    if !a.now {
        return Err(AgentError::new(Exit::Usage, "renew needs --now"));
    }
    let cfg = load(&a.config)?;
    for n in &a.names {
        if !cfg.certs.iter().any(|c| &c.name == n) {
            return Err(AgentError::new(
                Exit::Usage,
                format!("no certificate named {n:?} in the configuration"),
            ));
        }
    }
    let request = cfg.state_dir.join("renew-now");
    ca_agent::writer::replace_file(&request, a.names.join("\n").as_bytes(), 0o600).map_err(
        |e| {
            AgentError::new(
                Exit::Usage,
                format!("cannot write {}: {e}", request.display()),
            )
        },
    )?;
    ca_agent::hooks::signal_pid_file(
        &cfg.state_dir.join("agent.pid"),
        rustix::process::Signal::HUP,
    )
    .map_err(|e| AgentError::new(Exit::Transient, format!("is the agent running? {e}")))?;
    println!("renewal requested");
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("CA_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A failed log write (stderr is a file on a full disk) is dropped: tracing-subscriber
        // would report it with eprintln!, which panics when stderr is that same file.
        .log_internal_errors(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::from(Exit::Transient as u8);
        }
    };
    let result = match cli.command {
        Command::Run(a) => runtime.block_on(async {
            let cfg = load(&a.config)?;
            agent::run(cfg, a.token_file).await.map(|()| ExitCode::SUCCESS)
        }),
        Command::Status(a) => status(&a),
        Command::CheckConfig(a) => runtime.block_on(check_config(&a)),
        Command::Revoke(a) => runtime.block_on(revoke(&a)),
        Command::Renew(a) => renew(&a),
        Command::Issue(a) => runtime.block_on(async {
            let args = ca_agent::issue::IssueArgs {
                server: a.server,
                root_fingerprint: a.root_fingerprint,
                token: a.token,
                env: a.env,
                service: a.service,
                dns: a.dns,
                ips: a.ip,
                ttl: a.ttl,
                key_type: a.key_type,
                out: a.out.clone(),
            };
            let info = ca_agent::issue::issue(&args).await?;
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({ "serial": info.serial, "spiffe_id": info.spiffe_id, "not_after": fmt_time(Some(info.not_after)), "out": a.out })
                );
            } else {
                println!("serial:    {}\nidentity:  {}\nnot after: {}\nwritten:   {}", info.serial, info.spiffe_id.as_deref().unwrap_or("-"), fmt_time(Some(info.not_after)), a.out.display());
            }
            Ok(ExitCode::SUCCESS)
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.exit as u8)
        }
    }
}
