//! The daemon: bootstrap trust from the pinned root, then one task per certificate that enrolls
//! once and renews forever (a fresh key every time), plus a trust-bundle/CRL refresher and an
//! optional metrics listener. Tasks never give up: failures back off with jitter and are reported.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ca_wire::client::{ApiClient, ClientError, ClientIdentity};
use ca_wire::{CaInfo, CertificateResponse, EnrollRequest, EnrollmentToken, RenewRequest};
use rustls_pki_types::CertificateDer;
use tokio::sync::Notify;
use zeroize::Zeroizing;

use crate::acme::{Acme, AcmeFailure};
use crate::config::{AgentConfig, CertConfig, Route};
use crate::schedule::{backoff, random_unit, refresh_in};
use crate::status::{Board, CertStatus, Health, now};
use crate::validate::{CertInfo, Expect, validate, validate_public};
use crate::writer::{Layout, Material, Ownership, replace_file};

/// A certificate put in place, with the renew-now hint of the answer that brought it.
type Issued = (CertInfo, Option<String>);

/// How long after an issuance answer that asked for a renewal now the agent renews again:
/// long enough for every server of the CA to see the issuer change.
const HINT_PAUSE: Duration = Duration::from_secs(3);

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
    /// DER CSR.
    pub csr_der: Vec<u8>,
}

impl std::fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("key_pem", &"<redacted>")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

/// Generates a fresh key of `key_type` and a CSR for it with common name `service`.
pub fn new_key(key_type: &str, service: &str) -> Result<KeyAndCsr, AgentError> {
    key_and_csr(key_type, service, &[])
}

/// Generates a fresh key of `key_type` and a CSR naming `dns` (the first as common name too, as
/// ACME CAs expect).
pub fn new_key_for_names(key_type: &str, dns: &[String]) -> Result<KeyAndCsr, AgentError> {
    let cn = dns.first().map(String::as_str).unwrap_or_default();
    key_and_csr(key_type, cn, dns)
}

fn key_and_csr(key_type: &str, cn: &str, dns: &[String]) -> Result<KeyAndCsr, AgentError> {
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
    let key = Zeroizing::new(rcgen::KeyPair::generate_for(alg).map_err(fail)?);
    let mut params = rcgen::CertificateParams::new(dns.to_vec()).map_err(fail)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    if !cn.is_empty() && cn.len() <= 64 {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
    }
    let csr = params.serialize_request(&*key).map_err(fail)?;
    Ok(KeyAndCsr {
        key_pem: Zeroizing::new(key.serialize_pem()),
        csr_pem: csr.pem().map_err(fail)?,
        csr_der: csr.der().to_vec(),
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
    // The saved roots: the pinned one, and those it vouched for in a root rotation.
    if let Some(dir) = state_dir
        && let Ok(pem) = std::fs::read_to_string(dir.join("root.pem"))
        && let Ok(certs) = ca_wire::client::certs_from_pem(pem.as_bytes())
        && certs.iter().any(|c| ca_wire::client::sha256_hex(c) == pin)
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
    /// The CA asked us to stay away until this time (Unix seconds).
    Later(String, i64),
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

impl From<AcmeFailure> for Failure {
    fn from(f: AcmeFailure) -> Self {
        match f.retry_at {
            Some(at) => Failure::Later(f.message, at),
            None => Failure::Other(f.message),
        }
    }
}

/// The private CA, once its pinned root is in hand.
struct PrivateCa {
    server: String,
    roots: Vec<CertificateDer<'static>>,
    roots_pem: String,
    anon: ApiClient,
}

/// A certificate in place and valid, with what renewing it needs.
struct Current {
    info: CertInfo,
    key: Zeroizing<String>,
    chain: String,
    leaf: CertificateDer<'static>,
}

/// The running agent.
pub struct Agent {
    cfg: AgentConfig,
    token_file: Option<PathBuf>,
    private: Option<std::sync::RwLock<Arc<PrivateCa>>>,
    acme: Acme,
    routes: HashMap<String, Route>,
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

/// What the private CA says about its names: fetched, and cached in `state_dir/ca-info.json`
/// for when it cannot be reached.
pub async fn ca_info(anon: &ApiClient, state_dir: &Path) -> Result<CaInfo, ClientError> {
    let cache = state_dir.join("ca-info.json");
    let fetched = async {
        let url = format!("{}/v1/info", anon.base());
        anon.get("/v1/info").await?.json::<CaInfo>(&url)
    }
    .await;
    match fetched {
        Ok(info) => {
            if let Ok(bytes) = serde_json::to_vec_pretty(&info)
                && let Err(e) = replace_file(&cache, &bytes, 0o644)
            {
                tracing::warn!(error = %e, "cannot cache the CA's names");
            }
            Ok(info)
        }
        Err(e) => match std::fs::read(&cache)
            .ok()
            .and_then(|b| serde_json::from_slice::<CaInfo>(&b).ok())
        {
            Some(info) => {
                tracing::warn!(error = %e, "cannot reach the CA; using its cached DNS suffixes");
                Ok(info)
            }
            None => Err(e),
        },
    }
}

/// Decides every certificate's issuer; a certificate that cannot be routed is a usage error
/// naming it.
pub fn routes(
    cfg: &AgentConfig,
    info: Option<&CaInfo>,
) -> Result<HashMap<String, Route>, AgentError> {
    cfg.certs
        .iter()
        .map(|c| {
            cfg.route(c, info)
                .map(|r| (c.name.clone(), r))
                .map_err(|e| AgentError::new(Exit::Usage, e))
        })
        .collect()
}

/// The first certificate of a PEM chain, as PEM.
fn leaf_pem(chain_pem: &str) -> Result<(String, CertificateDer<'static>), String> {
    let certs = ca_wire::client::certs_from_pem(chain_pem.as_bytes()).map_err(|e| e.to_string())?;
    let leaf = certs
        .into_iter()
        .next()
        .ok_or_else(|| "the CA sent an empty chain".to_string())?;
    Ok((ca_wire::client::pem_certificate(&leaf), leaf))
}

impl Agent {
    /// Bootstraps trust with the private CA (retrying network failures; a pin mismatch is
    /// fatal), decides every certificate's issuer and prepares state.
    pub async fn start(cfg: AgentConfig, token_file: Option<PathBuf>) -> Result<Agent, AgentError> {
        std::fs::create_dir_all(&cfg.state_dir).map_err(|e| {
            AgentError::new(
                Exit::Usage,
                format!("cannot create state_dir {}: {e}", cfg.state_dir.display()),
            )
        })?;
        let (private, info) = match (&cfg.server, &cfg.root_fingerprint) {
            (Some(server), Some(fp)) => {
                let mut attempt = 0;
                loop {
                    let boot = async {
                        let roots_pem = pinned_root(server, fp, Some(&cfg.state_dir)).await?;
                        let roots = ca_wire::client::certs_from_pem(roots_pem.as_bytes())?;
                        let anon = ApiClient::new(server, roots_pem.as_bytes(), None)?;
                        let info = ca_info(&anon, &cfg.state_dir).await?;
                        Ok::<_, ClientError>((
                            PrivateCa {
                                server: server.clone(),
                                roots,
                                roots_pem,
                                anon,
                            },
                            info,
                        ))
                    };
                    match boot.await {
                        Ok((p, info)) => {
                            break (Some(std::sync::RwLock::new(Arc::new(p))), Some(info));
                        }
                        Err(e @ (ClientError::PinMismatch { .. } | ClientError::Config(_))) => {
                            return Err(e.into());
                        }
                        Err(e) => {
                            let wait = backoff(
                                attempt,
                                cfg.backoff_initial,
                                cfg.backoff_max,
                                random_unit(),
                            );
                            tracing::warn!(error = %e, retry_in = ?wait, "cannot reach the CA yet");
                            attempt += 1;
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
            }
            _ => (None, None),
        };
        let routes = routes(&cfg, info.as_ref())?;
        let board = Arc::new(Board::new(
            cfg.state_dir.join("status.json"),
            cfg.certs
                .iter()
                .map(|c| {
                    let mut s = CertStatus::new(&c.name, &c.env, &c.service);
                    s.issuer = Self::issuer_label(&cfg, c, routes[&c.name]);
                    s
                })
                .collect(),
        ));
        let acme = Acme::new(&cfg.state_dir);
        Ok(Agent {
            cfg,
            token_file,
            private,
            acme,
            routes,
            board,
        })
    }

    fn issuer_label(cfg: &AgentConfig, c: &CertConfig, route: Route) -> String {
        match route {
            Route::Private => "private".into(),
            Route::Acme => match cfg.acme_account_of(c) {
                Ok((name, _)) => format!("acme:{name}"),
                Err(_) => "acme".into(),
            },
        }
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
    fn token(&self) -> Option<EnrollmentToken> {
        let from_file = |p: &Path| {
            let text = Zeroizing::new(std::fs::read_to_string(p).ok()?);
            let token = text.trim();
            (!token.is_empty()).then(|| EnrollmentToken::new(token.to_string()))
        };
        self.token_file
            .as_deref()
            .and_then(from_file)
            .or_else(|| {
                std::env::var("CA_AGENT_TOKEN")
                    .ok()
                    .map(EnrollmentToken::new)
                    .filter(|t| !t.expose().trim().is_empty())
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

    fn private(&self) -> Result<Arc<PrivateCa>, Failure> {
        self.private
            .as_ref()
            .map(|p| p.read().unwrap_or_else(|e| e.into_inner()).clone())
            .ok_or_else(|| Failure::Other("no private CA is configured".into()))
    }

    fn acme_account<'a>(
        &'a self,
        cert: &CertConfig,
    ) -> Result<(&'a str, &'a crate::config::AcmeAccountConfig), Failure> {
        self.cfg.acme_account_of(cert).map_err(Failure::Other)
    }

    /// Validates credentials for `cert` as its issuer requires: the private CA's identity and
    /// pinned root, or the ACME names and trust bundle.
    async fn check(
        &self,
        cert: &CertConfig,
        key: &str,
        chain: &str,
        fresh_roots: bool,
    ) -> Result<(CertInfo, Vec<CertificateDer<'static>>), Failure> {
        match self.routes[&cert.name] {
            Route::Private => {
                let p = self.private()?;
                validate(key, chain, &p.roots, &Self::expect(cert), now())
                    .map(|i| (i, p.roots.clone()))
                    .map_err(|e| Failure::Other(e.to_string()))
            }
            Route::Acme => {
                let (name, acct) = self.acme_account(cert)?;
                let roots = self.acme.roots(name, acct, fresh_roots).await?;
                validate_public(key, chain, &roots, &cert.dns, now())
                    .map(|i| (i, roots))
                    .map_err(|e| Failure::Other(e.to_string()))
            }
        }
    }

    /// The current certificate if it is present, consistent, chains to its roots and is unexpired.
    async fn current(&self, cert: &CertConfig, layout: &Layout) -> Option<Current> {
        let (key, _, chain) = layout.read_current()?;
        match self.check(cert, &key, &chain, false).await {
            Ok((info, _)) => {
                let (_, leaf) = leaf_pem(&chain).ok()?;
                Some(Current {
                    info,
                    key,
                    chain,
                    leaf,
                })
            }
            Err(Failure::Other(e)) => {
                tracing::warn!(cert = %cert.name, error = %e, "the certificate on disk is not usable");
                None
            }
            Err(_) => None,
        }
    }

    /// Validates new credentials, then publishes them with `bundle_pem` beside them.
    async fn publish(
        &self,
        cert: &CertConfig,
        layout: &Layout,
        key_pem: &str,
        chain_pem: &str,
        bundle_pem: Option<&str>,
    ) -> Result<CertInfo, Failure> {
        let (info, roots) =
            self.check(cert, key_pem, chain_pem, true)
                .await
                .map_err(|f| match f {
                    Failure::Other(e) => {
                        Failure::Other(format!("refusing the new certificate: {e}"))
                    }
                    other => other,
                })?;
        let (cert_pem, _) = leaf_pem(chain_pem).map_err(Failure::Other)?;
        let own = Self::ownership(cert).map_err(|e| Failure::Other(e.message))?;
        layout
            .publish(
                &Material {
                    key_pem,
                    cert_pem: &cert_pem,
                    chain_pem,
                    serial: &info.serial,
                },
                &own,
            )
            .map_err(|e| Failure::Other(format!("cannot write {}: {e}", layout.dir().display())))?;
        let bundle = match bundle_pem {
            Some(b) => b.to_string(),
            None => roots
                .iter()
                .map(|r| ca_wire::client::pem_certificate(r))
                .collect(),
        };
        if let Err(e) = replace_file(&layout.path("bundle.pem"), bundle.as_bytes(), 0o644) {
            tracing::warn!(cert = %cert.name, error = %e, "cannot write bundle.pem");
        }
        Ok(info)
    }

    async fn publish_private(
        &self,
        cert: &CertConfig,
        layout: &Layout,
        key: &KeyAndCsr,
        resp: &CertificateResponse,
    ) -> Result<CertInfo, Failure> {
        self.publish(cert, layout, &key.key_pem, &resp.chain, Some(&resp.bundle))
            .await
    }

    async fn enroll(
        &self,
        cert: &CertConfig,
        layout: &Layout,
        token: &EnrollmentToken,
    ) -> Result<Issued, Failure> {
        let p = self.private()?;
        let key = new_key(&cert.key_type, &cert.service).map_err(|e| Failure::Other(e.message))?;
        let req = EnrollRequest {
            token: token.clone(),
            csr: key.csr_pem.clone(),
            dns: cert.dns.clone(),
            ips: cert.ips.clone(),
            ttl: cert.ttl.clone(),
            env: Some(cert.env.clone()),
            service: Some(cert.service.clone()),
        };
        let url = format!("{}/v1/enroll", p.anon.base());
        let reply = p
            .anon
            .post_json("/v1/enroll", &req)
            .await
            .map_err(classify)?;
        self.issued(cert, layout, &key, reply, &url).await
    }

    /// Publishes an issuance answer; returns it with its renew-now hint (the issuer was revoked
    /// or retiring by the time it signed), if any.
    async fn issued(
        &self,
        cert: &CertConfig,
        layout: &Layout,
        key: &KeyAndCsr,
        reply: ca_wire::client::Reply,
        url: &str,
    ) -> Result<Issued, Failure> {
        let hint = reply.renew_now.clone();
        let resp: CertificateResponse = reply.json(url).map_err(classify)?;
        let info = self.publish_private(cert, layout, key, &resp).await?;
        Ok((info, hint))
    }

    async fn renew_private(
        &self,
        cert: &CertConfig,
        layout: &Layout,
        key_pem: &str,
        chain_pem: &str,
    ) -> Result<Issued, Failure> {
        let p = self.private()?;
        // A client per renewal: its connections carry the current certificate and are dropped
        // with it once the new one is in place.
        let identity =
            ClientIdentity::from_pem(chain_pem.as_bytes(), key_pem.as_bytes()).map_err(classify)?;
        let client =
            ApiClient::new(&p.server, p.roots_pem.as_bytes(), Some(identity)).map_err(classify)?;
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
        let reply = client
            .post_json("/v1/renew", &req)
            .await
            .map_err(classify)?;
        self.issued(cert, layout, &key, reply, &url).await
    }

    /// Orders from the ACME CA (a renewal when `replaces` is the current leaf).
    async fn order_acme(
        &self,
        cert: &CertConfig,
        layout: &Layout,
        replaces: Option<&CertificateDer<'_>>,
    ) -> Result<CertInfo, Failure> {
        let (name, acct) = self.acme_account(cert)?;
        let issued = self.acme.order(name, acct, cert, replaces).await?;
        self.publish(cert, layout, &issued.key_pem, &issued.chain_pem, None)
            .await
    }

    /// When to renew `current`: the ACME CA's renewal window where it offers one, otherwise the
    /// lifetime fraction with jitter. Returns the Unix time and, for ARI, when to ask again.
    async fn plan(&self, cert: &CertConfig, current: &Current) -> (i64, Option<i64>) {
        if self.routes[&cert.name] == Route::Acme
            && let Ok((name, acct)) = self.acme_account(cert)
            && let Some(plan) = self
                .acme
                .renewal_plan(name, acct, &current.leaf, random_unit())
                .await
        {
            return (plan.at, plan.recheck_at);
        }
        let wait = refresh_in(
            current.info.not_before,
            current.info.not_after,
            now(),
            self.cfg.fraction_of(cert),
            self.cfg.jitter,
            random_unit(),
        );
        (now() + wait.as_secs() as i64, None)
    }

    /// Keeps one certificate fresh, forever.
    pub async fn run_cert(self: Arc<Self>, cert: CertConfig, wake: Arc<Notify>) {
        let layout = Layout::new(&cert.dir);
        layout.recover();
        let route = self.routes[&cert.name];
        let mut attempt: u32 = 0;
        let mut revoked = false;
        // A renewal asked for (SIGHUP, `renew --now`) while backing off from a failed attempt:
        // it ends the wait and must not then wait again for a renewal time not yet reached.
        let mut asked = false;
        // Whether the last renewal was one the CA asked for in its issuance answer.
        let mut hint_followed = false;
        loop {
            let asked_now = std::mem::take(&mut asked);
            let current = if revoked {
                None
            } else {
                self.current(&cert, &layout).await
            };
            let result = match current {
                Some(cur) => {
                    let (at, recheck) = self.plan(&cert, &cur).await;
                    self.board.update(&cert.name, |s| {
                        s.health = Health::Ok;
                        s.serial = Some(cur.info.serial.clone());
                        s.spiffe_id = cur.info.spiffe_id.clone();
                        s.issued_by = Some(cur.info.issuer.clone());
                        s.not_after = Some(cur.info.not_after);
                        s.next_attempt = Some(at);
                    });
                    let due_in = Duration::from_secs(u64::try_from(at - now()).unwrap_or(0));
                    let sleep_for = recheck
                        .map(|r| Duration::from_secs(u64::try_from(r - now()).unwrap_or(0)))
                        .map_or(due_in, |r| r.min(due_in));
                    let woken = asked_now
                        || tokio::select! {
                            () = tokio::time::sleep(sleep_for) => false,
                            () = wake.notified() => {
                                tracing::info!(cert = %cert.name, "renewal requested");
                                true
                            }
                        };
                    if !woken && sleep_for < due_in {
                        // Time to ask the CA again whether the renewal window moved.
                        continue;
                    }
                    match route {
                        Route::Private => {
                            self.renew_private(&cert, &layout, &cur.key, &cur.chain)
                                .await
                        }
                        Route::Acme => self
                            .order_acme(&cert, &layout, Some(&cur.leaf))
                            .await
                            .map(|info| (info, None)),
                    }
                }
                None => match route {
                    Route::Acme => self
                        .order_acme(&cert, &layout, None)
                        .await
                        .map(|info| (info, None)),
                    Route::Private => match self.token() {
                        Some(token) => self.enroll(&cert, &layout, &token).await,
                        None => Err(Failure::NoToken),
                    },
                },
            };
            match result {
                Ok((info, again)) => {
                    attempt = 0;
                    revoked = false;
                    tracing::info!(cert = %cert.name, serial = %info.serial, not_after = info.not_after, "new certificate in place");
                    self.board.update(&cert.name, |s| {
                        s.health = Health::Ok;
                        s.serial = Some(info.serial.clone());
                        s.spiffe_id = info.spiffe_id.clone();
                        s.issued_by = Some(info.issuer.clone());
                        s.not_after = Some(info.not_after);
                        s.last_success = Some(now());
                        s.last_error = None;
                        s.renewals += 1;
                    });
                    let warning = crate::hooks::after_publish(&cert, &layout, &info.serial).await;
                    self.board
                        .update(&cert.name, |s| s.reload_warning = warning);
                    // Once in a row: the CA's servers refresh their view of the issuers within
                    // seconds, so a second answer with the hint means something else is wrong
                    // and the normal schedule (and the bundle refresh's hint) takes over.
                    if let Some(why) = again
                        && !hint_followed
                    {
                        tracing::warn!(cert = %cert.name, reason = %why, "the CA asks for a renewal now; renewing again shortly");
                        hint_followed = true;
                        tokio::select! {
                            () = tokio::time::sleep(HINT_PAUSE) => {},
                            () = wake.notified() => {}
                        }
                        asked = true;
                    } else {
                        hint_followed = false;
                    }
                }
                Err(f) => {
                    let mut wait = backoff(
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
                        Failure::Later(m, at) => {
                            // The CA named a time (rate limit): no sooner than that.
                            wait = wait.max(Duration::from_secs(u64::try_from(at - now()).unwrap_or(0)));
                            let still_valid = !revoked && self.current(&cert, &layout).await.is_some();
                            (if still_valid { Health::Ok } else { Health::Unhealthy }, m)
                        }
                        Failure::Other(m) => {
                            let still_valid = !revoked && self.current(&cert, &layout).await.is_some();
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
                        () = wake.notified() => {
                            tracing::info!(cert = %cert.name, "renewal requested");
                            asked = true;
                        }
                    }
                }
            }
        }
    }

    /// Adds to the trusted roots those of `bundle_pem` that a trusted root certified (the link
    /// certificate of a root rotation, carried in the chains during the overlap), saves them
    /// beside the pinned root, and talks to the CA with them from now on: when the old root
    /// leaves the bundles, this agent already trusts the new one.
    /// `links`: the CA certificates above the leaves of the current private certificates
    /// ([`Agent::current_links`]).
    fn learn_roots(&self, bundle_pem: &str, links: &[CertificateDer<'static>]) {
        let (Ok(p), Ok(bundle)) = (
            self.private(),
            ca_wire::client::certs_from_pem(bundle_pem.as_bytes()),
        ) else {
            return;
        };
        let learned = crate::validate::linked_roots(&p.roots, &bundle, links, now());
        if learned.is_empty() {
            return;
        }
        let mut roots_pem = p.roots_pem.clone();
        for r in &learned {
            roots_pem.push_str(&ca_wire::client::pem_certificate(r));
        }
        let built = ca_wire::client::certs_from_pem(roots_pem.as_bytes()).and_then(|roots| {
            ApiClient::new(&p.server, roots_pem.as_bytes(), None).map(|anon| (roots, anon))
        });
        let (roots, anon) = match built {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "cannot use the roots learned from the bundle");
                return;
            }
        };
        if let Err(e) = replace_file(
            &self.cfg.state_dir.join("root.pem"),
            roots_pem.as_bytes(),
            0o644,
        ) {
            tracing::warn!(error = %e, "cannot save the learned roots");
        }
        let fingerprints: Vec<String> = learned
            .iter()
            .map(|r| ca_wire::client::sha256_hex(r))
            .collect();
        tracing::warn!(
            ?fingerprints,
            "trusting a new root certified by the pinned one (root rotation)"
        );
        if let Some(slot) = &self.private {
            *slot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(PrivateCa {
                server: p.server.clone(),
                roots,
                roots_pem,
                anon,
            });
        }
    }

    /// The CA certificates above the leaf in the current chains of the private certificates
    /// (a root rotation's link certificate among them); only the chains are read.
    fn current_links(&self) -> Vec<CertificateDer<'static>> {
        let mut links = Vec::new();
        for cert in &self.cfg.certs {
            if self.routes[&cert.name] != Route::Private {
                continue;
            }
            if let Some(v) = Layout::new(&cert.dir).current()
                && let Ok(chain) = std::fs::read(v.join("chain.pem"))
                && let Ok(c) = ca_wire::client::certs_from_pem(&chain)
            {
                links.extend(c.into_iter().skip(1));
            }
        }
        links
    }

    /// Refreshes trust bundles (and CRLs where asked) of every private certificate, and wakes a
    /// task whose certificate appears on its environment's CRL so it finds out at once.
    pub async fn refresh_trust(&self, wakers: &HashMap<String, Arc<Notify>>) {
        let Ok(p) = self.private() else { return };
        let links = self.current_links();
        for cert in &self.cfg.certs {
            if self.routes[&cert.name] != Route::Private {
                continue;
            }
            let layout = Layout::new(&cert.dir);
            if layout.current().is_none() {
                continue;
            }
            let serial = self
                .board
                .snapshot()
                .certs
                .get(&cert.name)
                .and_then(|s| s.serial.clone());
            // With the serial held, the answer says whether its issuer was superseded or
            // revoked: then this certificate is renewed at once.
            let path = match &serial {
                Some(s) => format!("/v1/bundle?env={}&serial={s}", cert.env),
                None => format!("/v1/bundle?env={}", cert.env),
            };
            match p.anon.get(&path).await {
                Ok(reply) => {
                    if let Some(why) = &reply.renew_now
                        && (200..300).contains(&reply.status)
                        && let Some(w) = wakers.get(&cert.name)
                    {
                        tracing::warn!(cert = %cert.name, reason = %why, "the CA asks for a renewal now");
                        w.notify_one();
                    }
                    match reply.text(&path) {
                        Ok(pem) => {
                            self.learn_roots(&pem, &links);
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
                }
                Err(e) => {
                    tracing::warn!(cert = %cert.name, error = %e, "trust bundle refresh failed")
                }
            }
            // The environment's CRLs: one per intermediate still answered for (two during a
            // rotation), in PEM.
            let crl_path = format!("/crl/{}.pem", cert.env);
            let pem_text = match p.anon.get(&crl_path).await {
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
            let crls = ca_wire::client::crls_from_pem(&pem_text);
            if crls.is_empty() {
                tracing::warn!(cert = %cert.name, "CRL refresh: the answer holds no CRL");
                continue;
            }
            if cert.crl
                && let Err(e) = replace_file(&layout.path("crl.pem"), &pem_text, 0o644)
            {
                tracing::warn!(cert = %cert.name, error = %e, "cannot write crl.pem");
            }
            let listed = serial.as_ref().is_some_and(|serial| {
                crls.iter().any(|der| {
                    x509_parser::parse_x509_crl(der).is_ok_and(|(_, crl)| {
                        crl.iter_revoked_certificates()
                            .any(|r| crate::validate::serial_hex(r.raw_serial()) == *serial)
                    })
                })
            });
            if listed && let Some(w) = wakers.get(&cert.name) {
                tracing::warn!(cert = %cert.name, serial = ?serial, "certificate is on the CRL");
                w.notify_one();
            }
        }
    }

    /// Revokes the certificate in place for `name` at its issuer: the ACME CA, or the private CA
    /// through the holder's own mTLS self-revocation. Returns the serial.
    pub async fn revoke(&self, name: &str, reason: &str) -> Result<String, AgentError> {
        let cert = self
            .cfg
            .certs
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| {
                AgentError::new(
                    Exit::Usage,
                    format!("no certificate named {name:?} in the configuration"),
                )
            })?;
        let layout = Layout::new(&cert.dir);
        let (key, _, chain) = layout.read_current().ok_or_else(|| {
            AgentError::new(
                Exit::Usage,
                format!("{name}: no certificate in {}", cert.dir.display()),
            )
        })?;
        let (_, leaf) = leaf_pem(&chain).map_err(|e| AgentError::new(Exit::Usage, e))?;
        let serial = x509_parser::parse_x509_certificate(&leaf)
            .map(|(_, c)| crate::validate::serial_hex(c.raw_serial()))
            .map_err(|e| {
                AgentError::new(Exit::Usage, format!("{name}: unreadable certificate: {e}"))
            })?;
        match self.routes[&cert.name] {
            Route::Acme => {
                let reason = acme_reason(reason)?;
                let (acct_name, acct) = self
                    .cfg
                    .acme_account_of(cert)
                    .map_err(|e| AgentError::new(Exit::Usage, e))?;
                self.acme
                    .revoke(acct_name, acct, &leaf, reason)
                    .await
                    .map_err(|f| AgentError::new(Exit::Denied, f.message))?;
            }
            Route::Private => {
                let p = self
                    .private()
                    .map_err(|_| AgentError::new(Exit::Usage, "no private CA is configured"))?;
                let identity = ClientIdentity::from_pem(chain.as_bytes(), key.as_bytes())?;
                let client = ApiClient::new(&p.server, p.roots_pem.as_bytes(), Some(identity))?;
                let req = ca_wire::RevokeRequest {
                    reason: Some(reason.to_string()),
                    ..Default::default()
                };
                let url = format!("{}/v1/revoke", client.base());
                client
                    .post_json("/v1/revoke", &req)
                    .await?
                    .json::<serde_json::Value>(&url)?;
            }
        }
        Ok(serial)
    }
}

/// An RFC 5280 reason name as the ACME CA takes it.
fn acme_reason(reason: &str) -> Result<instant_acme::RevocationReason, AgentError> {
    use instant_acme::RevocationReason as R;
    Ok(match reason {
        "unspecified" => R::Unspecified,
        "key-compromise" => R::KeyCompromise,
        "affiliation-changed" => R::AffiliationChanged,
        "superseded" => R::Superseded,
        "cessation-of-operation" => R::CessationOfOperation,
        other => {
            return Err(AgentError::new(
                Exit::Usage,
                format!(
                    "unknown reason {other:?}: unspecified, key-compromise, affiliation-changed, superseded or cessation-of-operation"
                ),
            ));
        }
    })
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(cfg: AgentConfig, token_file: Option<PathBuf>) -> Result<(), AgentError> {
    use tokio::signal::unix::{SignalKind, signal};
    let sig = |k| {
        signal(k).map_err(|e| {
            AgentError::new(
                Exit::Transient,
                format!("cannot install signal handler: {e}"),
            )
        })
    };
    // Installed first, so a stop request while the CA is still unreachable ends cleanly.
    let mut hup = sig(SignalKind::hangup())?;
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    // A write past a file-size limit (`ulimit -f`, systemd's `LimitFSIZE=`) raises SIGXFSZ, whose
    // default action kills the daemon. Handled (tokio keeps the handler for the life of the
    // process), the write fails with EFBIG: the version being written is dropped, the current one
    // stays, and the error is reported and retried like a full disk. Hooks start with the
    // default action again, as exec resets handled signals.
    drop(sig(SignalKind::from_raw(
        rustix::process::Signal::XFSZ.as_raw(),
    ))?);
    let agent = tokio::select! {
        agent = Agent::start(cfg, token_file) => Arc::new(agent?),
        _ = term.recv() => return Ok(()),
        _ = int.recv() => return Ok(()),
    };
    agent.board.persist();
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

    #[test]
    fn csrs_for_the_private_ca_request_nothing_beyond_their_key() {
        // The CA refuses a CSR asking for anything it would not grant exactly; names, lifetime
        // and identity travel in the request body, so the CSR carries only the key (and a
        // common name, which the CA ignores).
        use x509_parser::prelude::FromDer;
        for key_type in ["p256", "p384", "ed25519"] {
            let k = new_key(key_type, "api").expect("key");
            let (_, csr) =
                x509_parser::certification_request::X509CertificationRequest::from_der(&k.csr_der)
                    .expect("csr parses");
            assert!(
                csr.certification_request_info.attributes().is_empty(),
                "{key_type}: no attributes, hence no extension request"
            );
            assert!(csr.requested_extensions().is_none(), "{key_type}");
        }
    }

    #[test]
    fn a_refused_csr_is_reported_with_the_servers_reason() {
        let problem = ca_wire::Problem {
            kind: "urn:ca-server:problem:bad-csr".into(),
            title: "Bad Request".into(),
            status: 400,
            detail: "CSR requests email SAN \"ops@example.internal\"; remove it".into(),
        };
        let e = AgentError::from(ClientError::Api(problem));
        assert_eq!(e.exit, Exit::Usage);
        assert!(
            e.message.contains("bad-csr")
                && e.message.contains("email SAN \"ops@example.internal\""),
            "{}",
            e.message
        );
    }
}
