//! The daemon: bootstrap trust from the pinned root, then one task per certificate that enrolls
//! once and renews forever (a fresh key every time), plus a trust-bundle/CRL refresher and an
//! optional metrics listener. Tasks never give up: failures back off with jitter and are reported.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ca_wire::client::{ApiClient, ClientError, ClientIdentity};
use ca_wire::{CertificateResponse, EnrollRequest, RenewRequest};
use rustls_pki_types::CertificateDer;
use tokio::sync::Notify;
use zeroize::Zeroizing;

use crate::config::{AgentConfig, CertConfig};
use crate::schedule::{backoff, random_unit, refresh_in};
use crate::status::{Board, CertStatus, Health, now};
use crate::validate::{CertInfo, Expect, validate};
use crate::writer::{Layout, Material, Ownership, replace_file};

/// Exit-code classes shared by every command (documented in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Network or server trouble; trying again may work.
    Transient = 1,
    /// Bad flags, configuration or input.
    Usage = 2,
    /// The CA's policy refused the request.
    Denied = 3,
    /// Trust or authentication failed: pin mismatch, bad token, rejected certificate.
    Trust = 4,
}

/// A failure of an agent command.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    /// Exit-code class.
    pub exit: Exit,
    /// One line for the operator.
    pub message: String,
}

impl AgentError {
    /// An error of class `exit`.
    pub fn new(exit: Exit, message: impl Into<String>) -> AgentError {
        AgentError {
            exit,
            message: message.into(),
        }
    }
}

impl From<ClientError> for AgentError {
    fn from(e: ClientError) -> Self {
        let exit = match &e {
            ClientError::Config(_) => Exit::Usage,
            ClientError::PinMismatch { .. } => Exit::Trust,
            ClientError::Api(p) => match p.status {
                401 => Exit::Trust,
                403 => Exit::Denied,
                400 | 404 | 409 | 413 | 415 => Exit::Usage,
                _ => Exit::Transient,
            },
            _ => Exit::Transient,
        };
        AgentError::new(exit, e.to_string())
    }
}

/// A new key and its CSR.
pub struct KeyAndCsr {
    /// PKCS#8 PEM, zeroized on drop.
    pub key_pem: Zeroizing<String>,
    /// PEM CSR.
    pub csr_pem: String,
}

/// Generates a fresh key of `key_type` and a CSR for it.
pub fn new_key(key_type: &str, service: &str) -> Result<KeyAndCsr, AgentError> {
    let alg = match key_type {
        "p256" => &rcgen::PKCS_ECDSA_P256_SHA256,
        "p384" => &rcgen::PKCS_ECDSA_P384_SHA384,
        "ed25519" => &rcgen::PKCS_ED25519,
        other => {
            return Err(AgentError::new(
                Exit::Usage,
                format!("unsupported key type {other:?}"),
            ));
        }
    };
    let fail =
        |e: rcgen::Error| AgentError::new(Exit::Transient, format!("key generation failed: {e}"));
    let key = rcgen::KeyPair::generate_for(alg).map_err(fail)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, service);
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(fail)?;
    Ok(KeyAndCsr {
        key_pem: Zeroizing::new(key.serialize_pem()),
        csr_pem: csr,
    })
}

/// Loads the pinned root: from `state_dir/root.pem` when its fingerprint still matches the pin,
/// otherwise from the server (accepted only if it matches the pin, then saved).
pub async fn pinned_root(
    server: &str,
    fingerprint: &str,
    state_dir: Option<&Path>,
) -> Result<String, ClientError> {
    let pin = ca_wire::client::normalize_fingerprint(fingerprint)?;
    if let Some(dir) = state_dir
        && let Ok(pem) = std::fs::read_to_string(dir.join("root.pem"))
        && let Ok(certs) = ca_wire::client::certs_from_pem(pem.as_bytes())
        && certs.len() == 1
        && ca_wire::client::sha256_hex(&certs[0]) == pin
    {
        return Ok(pem);
    }
    let pem = ca_wire::client::fetch_pinned_root(server, &pin).await?;
    if let Some(dir) = state_dir
        && let Err(e) = replace_file(&dir.join("root.pem"), pem.as_bytes(), 0o644)
    {
        tracing::warn!(error = %e, "cannot save the pinned root");
    }
    Ok(pem)
}

/// Why one attempt failed, and what to do about it.
#[derive(Debug)]
enum Failure {
    /// The certificate was revoked: only a new enrollment helps.
    Revoked(String),
    /// No usable certificate and no token.
    NoToken,
    /// Anything else; retry after a backoff.
    Other(String),
}

fn classify(e: ClientError) -> Failure {
    match &e {
        ClientError::Api(p) if p.status == 403 && p.detail.contains("revoked") => {
            Failure::Revoked(p.detail.clone())
        }
        _ => Failure::Other(e.to_string()),
    }
}

/// The running agent.
pub struct Agent {
    cfg: AgentConfig,
    token_file: Option<PathBuf>,
    roots: Vec<CertificateDer<'static>>,
    roots_pem: String,
    anon: ApiClient,
    board: Arc<Board>,
}

fn resolve_id(spec: &Option<String>, db: &str) -> Result<Option<u32>, AgentError> {
    let Some(spec) = spec else { return Ok(None) };
    if let Ok(n) = spec.parse::<u32>() {
        return Ok(Some(n));
    }
    let text = std::fs::read_to_string(db).unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(spec.as_str()))
                .then(|| f.nth(1).and_then(|id| id.parse().ok()))
                .flatten()
        })
        .map(Some)
        .ok_or_else(|| {
            AgentError::new(
                Exit::Usage,
                format!("unknown user or group {spec:?} (not in {db})"),
            )
        })
}

impl Agent {
    /// Bootstraps trust (retrying network failures; a pin mismatch is fatal) and prepares state.
    pub async fn start(cfg: AgentConfig, token_file: Option<PathBuf>) -> Result<Agent, AgentError> {
        std::fs::create_dir_all(&cfg.state_dir).map_err(|e| {
            AgentError::new(
                Exit::Usage,
                format!("cannot create state_dir {}: {e}", cfg.state_dir.display()),
            )
        })?;
        let mut attempt = 0;
        let roots_pem = loop {
            match pinned_root(&cfg.server, &cfg.root_fingerprint, Some(&cfg.state_dir)).await {
                Ok(pem) => break pem,
                Err(e @ (ClientError::PinMismatch { .. } | ClientError::Config(_))) => {
                    return Err(e.into());
                }
                Err(e) => {
                    let wait =
                        backoff(attempt, cfg.backoff_initial, cfg.backoff_max, random_unit());
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot fetch the CA root yet");
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                }
            }
        };
        let roots = ca_wire::client::certs_from_pem(roots_pem.as_bytes())?;
        let anon = ApiClient::new(&cfg.server, roots_pem.as_bytes(), None)?;
        let board = Arc::new(Board::new(
            cfg.state_dir.join("status.json"),
            cfg.certs
                .iter()
                .map(|c| CertStatus::new(&c.name, &c.env, &c.service))
                .collect(),
        ));
        Ok(Agent {
            cfg,
            token_file,
            roots,
            roots_pem,
            anon,
            board,
        })
    }

    /// The status board.
    pub fn board(&self) -> Arc<Board> {
        self.board.clone()
    }

    /// The configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    /// The current enrollment token, read fresh: `--token-file`, `CA_AGENT_TOKEN`, the config's
    /// `token_file`, then `token`.
    fn token(&self) -> Option<String> {
        let from_file = |p: &Path| {
            std::fs::read_to_string(p)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        };
        self.token_file
            .as_deref()
            .and_then(from_file)
            .or_else(|| {
                std::env::var("CA_AGENT_TOKEN")
                    .ok()
                    .filter(|t| !t.trim().is_empty())
            })
            .or_else(|| self.cfg.token_file.as_deref().and_then(from_file))
            .or_else(|| self.cfg.token.clone())
    }

    fn expect<'a>(cert: &'a CertConfig) -> Expect<'a> {
        Expect {
            env: &cert.env,
            service: &cert.service,
            dns: &cert.dns,
            ips: &cert.ips,
        }
    }

    fn ownership(cert: &CertConfig) -> Result<Ownership, AgentError> {
        Ok(Ownership {
            uid: resolve_id(&cert.owner, "/etc/passwd")?,
            gid: resolve_id(&cert.group, "/etc/group")?,
            key_mode: cert.key_mode,
        })
    }

    /// The current certificate if it is present, consistent, chains to the root and is unexpired.
    fn current(
        &self,
        cert: &CertConfig,
        layout: &Layout,
    ) -> Option<(CertInfo, Zeroizing<String>, String)> {
        let (key, _, chain) = layout.read_current()?;
        let key = Zeroizing::new(key);
        match validate(&key, &chain, &self.roots, &Self::expect(cert), now()) {
            Ok(info) => Some((info, key, chain)),
            Err(e) => {
                tracing::warn!(cert = %cert.name, error = %e, "the certificate on disk is not usable");
                None
            }
        }
    }

    fn publish(
        &self,
        cert: &CertConfig,
        layout: &Layout,
        key: &KeyAndCsr,
        resp: &CertificateResponse,
    ) -> Result<CertInfo, Failure> {
        let info = validate(
            &key.key_pem,
            &resp.chain,
            &self.roots,
            &Self::expect(cert),
            now(),
        )
        .map_err(|e| Failure::Other(format!("refusing the new certificate: {e}")))?;
        let own = Self::ownership(cert).map_err(|e| Failure::Other(e.message))?;
        layout
            .publish(
                &Material {
                    key_pem: &key.key_pem,
                    cert_pem: &resp.certificate,
                    chain_pem: &resp.chain,
                    serial: &info.serial,
                },
                &own,
            )
            .map_err(|e| Failure::Other(format!("cannot write {}: {e}", layout.dir().display())))?;
        if let Err(e) = replace_file(&layout.path("bundle.pem"), resp.bundle.as_bytes(), 0o644) {
            tracing::warn!(cert = %cert.name, error = %e, "cannot write bundle.pem");
        }
        Ok(info)
    }

    async fn enroll(
        &self,
        cert: &CertConfig,
        layout: &Layout,
        token: &str,
    ) -> Result<CertInfo, Failure> {
        let key = new_key(&cert.key_type, &cert.service).map_err(|e| Failure::Other(e.message))?;
        let req = EnrollRequest {
            token: token.to_string(),
            csr: key.csr_pem.clone(),
            dns: cert.dns.clone(),
            ips: cert.ips.clone(),
            ttl: cert.ttl.clone(),
            env: Some(cert.env.clone()),
            service: Some(cert.service.clone()),
        };
        let url = format!("{}/v1/enroll", self.anon.base());
        let resp: CertificateResponse = self
            .anon
            .post_json("/v1/enroll", &req)
            .await
            .map_err(classify)?
            .json(&url)
            .map_err(classify)?;
        self.publish(cert, layout, &key, &resp)
    }

    async fn renew(
        &self,
        cert: &CertConfig,
        layout: &Layout,
        key_pem: &str,
        chain_pem: &str,
    ) -> Result<CertInfo, Failure> {
        // A client per renewal: its connections carry the current certificate and are dropped
        // with it once the new one is in place.
        let identity =
            ClientIdentity::from_pem(chain_pem.as_bytes(), key_pem.as_bytes()).map_err(classify)?;
        let client = ApiClient::new(&self.cfg.server, self.roots_pem.as_bytes(), Some(identity))
            .map_err(classify)?;
        let key = new_key(&cert.key_type, &cert.service).map_err(|e| Failure::Other(e.message))?;
        let req = RenewRequest {
            csr: key.csr_pem.clone(),
            dns: cert.dns.clone(),
            ips: cert.ips.clone(),
            ttl: cert.ttl.clone(),
            env: Some(cert.env.clone()),
            service: Some(cert.service.clone()),
        };
        let url = format!("{}/v1/renew", client.base());
        let resp: CertificateResponse = client
            .post_json("/v1/renew", &req)
            .await
            .map_err(classify)?
            .json(&url)
            .map_err(classify)?;
        self.publish(cert, layout, &key, &resp)
    }

    /// Keeps one certificate fresh, forever.
    pub async fn run_cert(self: Arc<Self>, cert: CertConfig, wake: Arc<Notify>) {
        let layout = Layout::new(&cert.dir);
        layout.recover();
        let fraction = self.cfg.fraction_of(&cert);
        let mut attempt: u32 = 0;
        let mut revoked = false;
        loop {
            let current = if revoked {
                None
            } else {
                self.current(&cert, &layout)
            };
            let result = match current {
                Some((info, key, chain)) => {
                    let wait = refresh_in(
                        info.not_before,
                        info.not_after,
                        now(),
                        fraction,
                        self.cfg.jitter,
                        random_unit(),
                    );
                    self.board.update(&cert.name, |s| {
                        s.health = Health::Ok;
                        s.serial = Some(info.serial.clone());
                        s.spiffe_id = Some(info.spiffe_id.clone());
                        s.not_after = Some(info.not_after);
                        s.next_attempt = Some(now() + wait.as_secs() as i64);
                    });
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {},
                        () = wake.notified() => tracing::info!(cert = %cert.name, "renewal requested"),
                    }
                    self.renew(&cert, &layout, &key, &chain).await
                }
                None => match self.token() {
                    Some(token) => self.enroll(&cert, &layout, &token).await,
                    None => Err(Failure::NoToken),
                },
            };
            match result {
                Ok(info) => {
                    attempt = 0;
                    revoked = false;
                    tracing::info!(cert = %cert.name, serial = %info.serial, not_after = info.not_after, "new certificate in place");
                    self.board.update(&cert.name, |s| {
                        s.health = Health::Ok;
                        s.serial = Some(info.serial.clone());
                        s.spiffe_id = Some(info.spiffe_id.clone());
                        s.not_after = Some(info.not_after);
                        s.last_success = Some(now());
                        s.last_error = None;
                        s.renewals += 1;
                    });
                    let warning = crate::hooks::after_publish(&cert, &layout, &info.serial).await;
                    self.board
                        .update(&cert.name, |s| s.reload_warning = warning);
                }
                Err(f) => {
                    let wait = backoff(
                        attempt,
                        self.cfg.backoff_initial,
                        self.cfg.backoff_max,
                        random_unit(),
                    );
                    attempt = attempt.saturating_add(1);
                    let (health, message) = match f {
                        Failure::Revoked(m) => {
                            revoked = true;
                            (Health::Revoked, format!("{m}; re-enrolls when given a new token"))
                        }
                        Failure::NoToken if revoked => (
                            Health::Revoked,
                            "certificate revoked and no enrollment token available".to_string(),
                        ),
                        Failure::NoToken => (
                            Health::Unhealthy,
                            "no valid certificate and no enrollment token (config token, CA_AGENT_TOKEN or --token-file)".to_string(),
                        ),
                        Failure::Other(m) => {
                            let still_valid = !revoked && self.current(&cert, &layout).is_some();
                            (if still_valid { Health::Ok } else if revoked { Health::Revoked } else { Health::Unhealthy }, m)
                        }
                    };
                    tracing::warn!(cert = %cert.name, error = %message, retry_in = ?wait, "attempt failed");
                    self.board.update(&cert.name, |s| {
                        s.health = health;
                        s.failures += 1;
                        s.last_error = Some(message);
                        s.next_attempt = Some(now() + wait.as_secs() as i64);
                    });
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {},
                        () = wake.notified() => {},
                    }
                }
            }
        }
    }

    /// Refreshes trust bundles (and CRLs where asked) of every certificate, and wakes a task
    /// whose certificate appears on its environment's CRL so it finds out at once.
    pub async fn refresh_trust(&self, wakers: &HashMap<String, Arc<Notify>>) {
        for cert in &self.cfg.certs {
            let layout = Layout::new(&cert.dir);
            if layout.current().is_none() {
                continue;
            }
            let path = format!("/v1/bundle?env={}", cert.env);
            match self.anon.get(&path).await.and_then(|r| r.text(&path)) {
                Ok(pem) => {
                    if std::fs::read_to_string(layout.path("bundle.pem"))
                        .ok()
                        .as_deref()
                        != Some(pem.as_str())
                        && let Err(e) =
                            replace_file(&layout.path("bundle.pem"), pem.as_bytes(), 0o644)
                    {
                        tracing::warn!(cert = %cert.name, error = %e, "cannot write bundle.pem");
                    }
                }
                Err(e) => {
                    tracing::warn!(cert = %cert.name, error = %e, "trust bundle refresh failed")
                }
            }
            let crl_path = format!("/crl/{}.crl", cert.env);
            let der = match self.anon.get(&crl_path).await {
                Ok(r) if r.status == 200 => r.body,
                Ok(r) => {
                    tracing::warn!(cert = %cert.name, status = r.status, "CRL refresh failed");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(cert = %cert.name, error = %e, "CRL refresh failed");
                    continue;
                }
            };
            if cert.crl {
                let pem = ca_wire::client::pem_encode("X509 CRL", &der);
                if let Err(e) = replace_file(&layout.path("crl.pem"), pem.as_bytes(), 0o644) {
                    tracing::warn!(cert = %cert.name, error = %e, "cannot write crl.pem");
                }
            }
            let serial = self
                .board
                .snapshot()
                .certs
                .get(&cert.name)
                .and_then(|s| s.serial.clone());
            if let (Some(serial), Ok((_, crl))) = (serial, x509_parser::parse_x509_crl(&der)) {
                let listed = crl
                    .iter_revoked_certificates()
                    .any(|r| crate::validate::serial_hex(r.raw_serial()) == serial);
                if listed && let Some(w) = wakers.get(&cert.name) {
                    tracing::warn!(cert = %cert.name, %serial, "certificate is on the CRL");
                    w.notify_one();
                }
            }
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(cfg: AgentConfig, token_file: Option<PathBuf>) -> Result<(), AgentError> {
    use tokio::signal::unix::{SignalKind, signal};
    let agent = Arc::new(Agent::start(cfg, token_file).await?);
    let state_dir = agent.cfg.state_dir.clone();
    let pid_file = state_dir.join("agent.pid");
    replace_file(
        &pid_file,
        format!("{}\n", std::process::id()).as_bytes(),
        0o644,
    )
    .map_err(|e| {
        AgentError::new(
            Exit::Usage,
            format!("cannot write {}: {e}", pid_file.display()),
        )
    })?;

    let mut wakers = HashMap::new();
    for cert in agent.cfg.certs.clone() {
        let wake = Arc::new(Notify::new());
        wakers.insert(cert.name.clone(), wake.clone());
        let agent = agent.clone();
        tokio::spawn(async move {
            // The supervisor: a task that ever ends (it should not) is started again.
            loop {
                let handle = tokio::spawn(agent.clone().run_cert(cert.clone(), wake.clone()));
                if let Err(e) = handle.await {
                    tracing::error!(cert = %cert.name, error = %e, "certificate task died; restarting");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    let wakers = Arc::new(wakers);
    {
        let agent = agent.clone();
        let wakers = wakers.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(agent.cfg.bundle_refresh).await;
                agent.refresh_trust(&wakers).await;
            }
        });
    }
    if let Some(addr) = agent.cfg.metrics_listen {
        crate::metrics::spawn(addr, agent.board()).await?;
    }

    let sig = |k| {
        signal(k).map_err(|e| {
            AgentError::new(
                Exit::Transient,
                format!("cannot install signal handler: {e}"),
            )
        })
    };
    let mut hup = sig(SignalKind::hangup())?;
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let request = state_dir.join("renew-now");
                let names = std::fs::read_to_string(&request).unwrap_or_default();
                let _ = std::fs::remove_file(&request);
                let names: Vec<&str> = names.split_whitespace().collect();
                for (name, w) in wakers.iter() {
                    if names.is_empty() || names.contains(&name.as_str()) {
                        w.notify_one();
                    }
                }
                tracing::info!(?names, "SIGHUP: renewing now");
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let _ = std::fs::remove_file(&pid_file);
    tracing::info!("stopping");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_resolve_by_number_or_name_and_unknown_names_are_refused() {
        assert_eq!(resolve_id(&None, "/etc/passwd").ok(), Some(None));
        assert_eq!(
            resolve_id(&Some("1234".into()), "/etc/passwd").ok(),
            Some(Some(1234))
        );
        assert_eq!(
            resolve_id(&Some("root".into()), "/etc/passwd").ok(),
            Some(Some(0))
        );
        let e = resolve_id(&Some("no-such-user-here".into()), "/etc/passwd")
            .err()
            .map(|e| e.message);
        assert!(e.unwrap_or_default().contains("no-such-user-here"));
    }

    #[test]
    fn new_keys_are_fresh_and_their_csrs_verify() {
        let a = new_key("p256", "api").expect("key");
        let b = new_key("p256", "api").expect("key");
        assert_ne!(*a.key_pem, *b.key_pem);
        assert!(a.csr_pem.contains("BEGIN CERTIFICATE REQUEST"));
        assert!(new_key("ed25519", "api").is_ok() && new_key("p384", "api").is_ok());
        assert_eq!(
            new_key("rsa", "api").err().map(|e| e.exit),
            Some(Exit::Usage)
        );
    }
}
