//! After a new certificate is published: tell the service (a command, or SIGHUP to a pid), and
//! optionally check that the service now serves the new serial. Hook failures never roll back a
//! valid certificate; they are retried and reported.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::CertConfig;
use crate::writer::Layout;

/// Runs `argv` (no shell) with `env` added, stdin closed, killed after `timeout`; a non-zero
/// exit becomes an error carrying the tail of its stderr.
pub async fn run_argv(
    argv: &[String],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| format!("{program:?} timed out after {timeout:?}"))?
        .map_err(|e| format!("cannot run {program:?}: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = stderr
            .chars()
            .rev()
            .take(300)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(format!(
            "{program:?} exited with {}: {}",
            out.status,
            tail.trim()
        ));
    }
    Ok(())
}

/// Runs the configured reload hook once.
pub async fn reload(cert: &CertConfig, layout: &Layout, serial: &str) -> Result<(), String> {
    if !cert.reload_command.is_empty() {
        let path = |name: &str| layout.path(name).to_string_lossy().into_owned();
        let (c, k, ch, b) = (
            path("cert.pem"),
            path("key.pem"),
            path("chain.pem"),
            path("bundle.pem"),
        );
        return run_argv(
            &cert.reload_command,
            &[
                ("CERT_PATH", &c),
                ("KEY_PATH", &k),
                ("CHAIN_PATH", &ch),
                ("BUNDLE_PATH", &b),
                ("SERIAL", serial),
            ],
            cert.reload_timeout,
        )
        .await
        .map_err(|e| format!("reload command: {e}"));
    }
    if let Some(pid_file) = &cert.reload_pid_file {
        return signal_pid_file(pid_file, rustix::process::Signal::HUP);
    }
    Ok(())
}

/// Sends `signal` to the process whose id is in `pid_file`.
pub fn signal_pid_file(pid_file: &Path, signal: rustix::process::Signal) -> Result<(), String> {
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| format!("cannot read {}: {e}", pid_file.display()))?;
    let raw: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{} does not hold a process id", pid_file.display()))?;
    let pid = rustix::process::Pid::from_raw(raw)
        .ok_or_else(|| format!("{} holds an invalid pid", pid_file.display()))?;
    rustix::process::kill_process(pid, signal).map_err(|e| format!("cannot signal pid {raw}: {e}"))
}

/// The serial (hex) of the certificate served at `addr` for `server_name`.
pub async fn served_serial(addr: &str, server_name: &str) -> Result<String, String> {
    let config = ca_wire::client::inspect_only_config().map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|_| format!("invalid server name {server_name:?}"))?;
    let fut = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {addr} failed: {e}"))?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .ok_or_else(|| format!("{addr} presented no certificate"))?;
        let (_, cert) = X509Certificate::from_der(&leaf)
            .map_err(|e| format!("unparsable certificate from {addr}: {e}"))?;
        Ok(crate::validate::serial_hex(cert.raw_serial()))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| format!("{addr} did not complete a TLS handshake in 10s"))?
}

/// Runs the hook (retrying) and the post-reload check; returns a warning to report, if any.
pub async fn after_publish(cert: &CertConfig, layout: &Layout, serial: &str) -> Option<String> {
    let mut warning = None;
    if !cert.reload_command.is_empty() || cert.reload_pid_file.is_some() {
        let mut ok = false;
        for attempt in 0..4u32 {
            match reload(cert, layout, serial).await {
                Ok(()) => {
                    ok = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(cert = %cert.name, attempt, error = %e, "reload hook failed");
                    warning = Some(e);
                    tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
                }
            }
        }
        if !ok {
            return warning;
        }
        warning = None;
    }
    if let Some(addr) = &cert.check_tls {
        let server_name = cert
            .check_server_name
            .clone()
            .or_else(|| cert.dns.first().cloned())
            .unwrap_or_else(|| "localhost".into());
        let mut last = String::new();
        for _ in 0..10 {
            match served_serial(addr, &server_name).await {
                Ok(s) if s == serial => return None,
                Ok(s) => {
                    last = format!("{addr} still serves certificate {s}, not the new {serial}")
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tracing::warn!(cert = %cert.name, "post-reload check: {last}");
        warning = Some(format!("post-reload check: {last}"));
    }
    warning
}
