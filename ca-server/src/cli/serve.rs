//! `serve`: the HTTPS API, with policy reload on SIGHUP.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::duration::HumanDuration;
use crate::error::ErrorKind;
use crate::files;
use crate::policy::Policy;
use crate::server::ServeConfig;
use crate::service::Ca;

use super::{Cli, CliError, CliResult, Location, location, open_ca_with};

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
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

pub(super) async fn serve(cli: &Cli, a: &ServeArgs) -> CliResult<()> {
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
    // --database-url, CA_DATABASE_URL and --data-dir win over a URL in the config file.
    let place = match (&cfg.database_url, &cli.database_url, &cli.data_dir) {
        (Some(url), None, None) => Location::Postgres(url),
        _ => location(cli)?,
    };
    cfg.policy_file = cli.policy.clone();
    // Held while serving: `ca-server restore` refuses to replace the database under a running
    // server, and a server started during a restore waits for it to finish.
    let _data_dir_lock = match place {
        Location::Dir(dir) => match files::lock_dir_shared(dir) {
            Ok(lock) => Some(lock),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot lock the data directory; `ca-server restore` cannot tell that this server runs");
                None
            }
        },
        Location::Postgres(_) => None,
    };
    let ca = Arc::new(open_ca_with(cli, place, cfg.ca_options(), &cfg.database).await?);
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
