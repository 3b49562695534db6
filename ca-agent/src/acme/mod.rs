//! Certificates from a public (or any RFC 8555) ACME CA: accounts kept in `state_dir`, orders with
//! a fresh key each time, challenges through [`challenge`], renewal timing from ACME Renewal
//! Information (RFC 9773) where the CA offers it, and revocation. What comes back is validated
//! by the caller exactly like a private certificate before anything is written.

pub mod challenge;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus, Problem, RetryPolicy,
};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::config::{AcmeAccountConfig, CertConfig, ChallengeKind};
use challenge::{DnsRecord, DnsRecords, Http01Responder, WebrootFiles};

/// Why an ACME attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeFailure {
    /// One line for the log and `ca-agent status`, with the CA's problem document.
    pub message: String,
    /// The CA asked us not to come back before this time (rate limits), Unix seconds.
    pub retry_at: Option<i64>,
}

impl AcmeFailure {
    fn new(message: impl Into<String>) -> AcmeFailure {
        AcmeFailure {
            message: message.into(),
            retry_at: None,
        }
    }
}

/// The problem type URN prefix.
const URN: &str = "urn:ietf:params:acme:error:";

/// One line for a problem document: type, detail and every subproblem per identifier.
pub fn describe_problem(p: &Problem) -> String {
    let kind = p
        .r#type
        .as_deref()
        .map(|t| t.strip_prefix(URN).unwrap_or(t))
        .unwrap_or("problem");
    let mut out = format!("{kind}: {}", p.detail.as_deref().unwrap_or("(no detail)"));
    for sp in &p.subproblems {
        let who = match &sp.identifier {
            Some(Identifier::Dns(d)) => d.clone(),
            Some(other) => format!("{other:?}"),
            None => "?".into(),
        };
        let t = sp
            .r#type
            .as_deref()
            .map(|t| t.strip_prefix(URN).unwrap_or(t))
            .unwrap_or("problem");
        out.push_str(&format!(
            "; {who}: {t}: {}",
            sp.detail.as_deref().unwrap_or("(no detail)")
        ));
    }
    out
}

fn is_problem(e: &instant_acme::Error, kind: &str) -> bool {
    matches!(e, instant_acme::Error::Api(p) if p.r#type.as_deref() == Some(format!("{URN}{kind}").as_str()))
}

/// A rate-limit answer's "retry after <time>" (Let's Encrypt writes `retry after 2024-01-02
/// 03:04:05 UTC`), as Unix seconds.
pub fn retry_after_in_detail(detail: &str) -> Option<i64> {
    let lower = detail.to_ascii_lowercase();
    let at = lower.find("retry after ")? + "retry after ".len();
    let rest = detail.get(at..)?;
    let stamp: String = rest.chars().take(19).collect();
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let t = time::PrimitiveDateTime::parse(&stamp, &fmt).ok()?;
    Some(t.assume_utc().unix_timestamp())
}

fn failure(context: &str, e: instant_acme::Error) -> AcmeFailure {
    match e {
        instant_acme::Error::Api(p) => {
            let retry_at = if p.r#type.as_deref() == Some(format!("{URN}rateLimited").as_str()) {
                // Without a time in the answer, stay away for an hour.
                Some(
                    p.detail
                        .as_deref()
                        .and_then(retry_after_in_detail)
                        .unwrap_or_else(|| crate::status::now() + 3600),
                )
            } else {
                None
            };
            AcmeFailure {
                message: format!("{context}: {}", describe_problem(&p)),
                retry_at,
            }
        }
        instant_acme::Error::Timeout(Some(at)) => {
            let wait = at.saturating_duration_since(Instant::now());
            AcmeFailure {
                message: format!("{context}: the CA asks to retry in {}s", wait.as_secs()),
                retry_at: Some(crate::status::now() + wait.as_secs() as i64),
            }
        }
        other => AcmeFailure::new(format!("{context}: {}", error_chain(&other))),
    }
}

/// An error with its causes, `a: b: c` (transport errors hide the useful part in the causes).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// What is stored per account in `state_dir/acme/<name>.json` (0600: it holds the account key).
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    eab_kid: Option<String>,
    credentials: AccountCredentials,
}

/// A new certificate from an order.
pub struct Issued {
    /// PKCS#8 PEM of the fresh key.
    pub key_pem: zeroize::Zeroizing<String>,
    /// The chain, leaf first, PEM.
    pub chain_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("key_pem", &"<redacted>")
            .field("chain_pem", &self.chain_pem)
            .finish()
    }
}

/// When to renew an ACME certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewalPlan {
    /// Unix seconds of the renewal.
    pub at: i64,
    /// Ask the CA again at this time (Unix seconds), when it said to (ARI's Retry-After).
    pub recheck_at: Option<i64>,
    /// Whether the time comes from the CA's renewal window.
    pub from_ari: bool,
}

/// A point in the window [`start`, `end`) chosen by `sample` in [0, 1); `now` when the window
/// has already begun to pass (RFC 9773 §4.2: a window in the past means renew at once).
pub fn point_in_window(start: i64, end: i64, now: i64, sample: f64) -> i64 {
    if end <= now {
        return now;
    }
    let start = start.max(now);
    if end <= start {
        return start;
    }
    start + ((end - start) as f64 * sample.clamp(0.0, 1.0)) as i64
}

/// The ACME side of the agent: one client per configured account, created lazily.
pub struct Acme {
    state_dir: PathBuf,
    accounts: Mutex<HashMap<String, Account>>,
    roots: std::sync::Mutex<HashMap<String, Vec<CertificateDer<'static>>>>,
}

/// Serializes orders that use the standalone http-01 responder: two at once would fight for its port.
static RESPONDER_LOCK: Mutex<()> = Mutex::const_new(());

impl Acme {
    /// ACME state under `state_dir/acme/`.
    pub fn new(state_dir: &std::path::Path) -> Acme {
        Acme {
            state_dir: state_dir.join("acme"),
            accounts: Mutex::new(HashMap::new()),
            roots: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn account_file(&self, name: &str) -> PathBuf {
        self.state_dir.join(format!("{name}.json"))
    }

    fn builder(cfg: &AcmeAccountConfig) -> Result<instant_acme::AccountBuilder, AcmeFailure> {
        match &cfg.directory_root {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    AcmeFailure::new(format!(
                        "cannot read directory_root {}: {e}",
                        path.display()
                    ))
                })?;
                let mut roots = rustls::RootCertStore::empty();
                let certs = ca_wire::client::certs_from_pem(&pem).map_err(|e| {
                    AcmeFailure::new(format!("directory_root {}: {e}", path.display()))
                })?;
                for c in certs {
                    roots.add(c).map_err(|e| {
                        AcmeFailure::new(format!("directory_root {}: {e}", path.display()))
                    })?;
                }
                let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| AcmeFailure::new(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
                let conn = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_only()
                    .enable_http1()
                    .enable_http2()
                    .build();
                let client: hyper_util::client::legacy::Client<
                    _,
                    instant_acme::BodyWrapper<hyper::body::Bytes>,
                > = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .build(conn);
                Ok(Account::builder_with_http(Box::new(client)))
            }
            None => Account::builder()
                .map_err(|e| AcmeFailure::new(format!("cannot set up the ACME client: {e}"))),
        }
    }

    /// The account `name`: from memory, from `state_dir`, or registered now.
    async fn account(&self, name: &str, cfg: &AcmeAccountConfig) -> Result<Account, AcmeFailure> {
        if let Some(a) = self.accounts.lock().await.get(name) {
            return Ok(a.clone());
        }
        let path = self.account_file(name);
        // The file holds the account key.
        if let Ok(text) = std::fs::read(&path).map(zeroize::Zeroizing::new) {
            match serde_json::from_slice::<StoredAccount>(&text) {
                Ok(stored)
                    if stored.directory == cfg.directory_url() && stored.eab_kid == cfg.eab_kid =>
                {
                    let account = Self::builder(cfg)?
                        .from_credentials(stored.credentials)
                        .await
                        .map_err(|e| failure("cannot load the ACME account", e))?;
                    self.accounts
                        .lock()
                        .await
                        .insert(name.to_string(), account.clone());
                    return Ok(account);
                }
                Ok(_) => tracing::info!(account = name, "ACME directory changed; registering anew"),
                Err(e) => {
                    tracing::warn!(account = name, error = %e, "unreadable ACME account file; registering anew")
                }
            }
        }
        self.register(name, cfg).await
    }

    /// Registers a new account (with External Account Binding when configured) and stores it.
    async fn register(&self, name: &str, cfg: &AcmeAccountConfig) -> Result<Account, AcmeFailure> {
        let contact: Vec<String> = cfg
            .contact
            .iter()
            .map(|c| {
                if c.contains(':') {
                    c.clone()
                } else {
                    format!("mailto:{c}")
                }
            })
            .collect();
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let eab = match (&cfg.eab_kid, &cfg.eab_hmac_key_file) {
            (Some(kid), Some(file)) => {
                let text = zeroize::Zeroizing::new(std::fs::read_to_string(file).map_err(|e| {
                    AcmeFailure::new(format!(
                        "cannot read eab_hmac_key_file {}: {e}",
                        file.display()
                    ))
                })?);
                use base64::Engine;
                let key = zeroize::Zeroizing::new(
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(text.trim().trim_end_matches('='))
                        .map_err(|_| {
                            AcmeFailure::new(format!(
                                "eab_hmac_key_file {}: not base64url",
                                file.display()
                            ))
                        })?,
                );
                Some(ExternalAccountKey::new(kid.clone(), &key))
            }
            _ => None,
        };
        let (account, credentials) = Self::builder(cfg)?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: cfg.agree_tos,
                    only_return_existing: false,
                },
                cfg.directory_url().to_string(),
                eab.as_ref(),
            )
            .await
            .map_err(|e| failure("ACME account registration refused", e))?;
        let stored = StoredAccount {
            directory: cfg.directory_url().to_string(),
            eab_kid: cfg.eab_kid.clone(),
            credentials,
        };
        let bytes = zeroize::Zeroizing::new(
            serde_json::to_vec(&stored)
                .map_err(|e| AcmeFailure::new(format!("cannot encode the account: {e}")))?,
        );
        std::fs::create_dir_all(&self.state_dir).map_err(|e| {
            AcmeFailure::new(format!("cannot create {}: {e}", self.state_dir.display()))
        })?;
        crate::writer::replace_file(&self.account_file(name), &bytes, 0o600).map_err(|e| {
            AcmeFailure::new(format!(
                "cannot store the ACME account in {}: {e}",
                self.account_file(name).display()
            ))
        })?;
        tracing::info!(account = name, id = account.id(), "ACME account registered");
        self.accounts
            .lock()
            .await
            .insert(name.to_string(), account.clone());
        Ok(account)
    }

    /// Forgets the account in memory so the next use reloads or registers it.
    async fn forget(&self, name: &str) {
        self.accounts.lock().await.remove(name);
        let _ = std::fs::remove_file(self.account_file(name));
    }

    /// The roots issued chains must verify to: `trust_bundle`, the roots fetched from
    /// `trust_bundle_url` (refreshed when `refresh`), or the system's.
    pub async fn roots(
        &self,
        name: &str,
        cfg: &AcmeAccountConfig,
        refresh: bool,
    ) -> Result<Vec<CertificateDer<'static>>, AcmeFailure> {
        if !refresh
            && let Some(r) = self
                .roots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
        {
            return Ok(r.clone());
        }
        let pem = match (&cfg.trust_bundle, &cfg.trust_bundle_url) {
            (Some(file), _) => std::fs::read(file).map_err(|e| {
                AcmeFailure::new(format!("cannot read trust_bundle {}: {e}", file.display()))
            })?,
            (None, Some(url)) => fetch_roots(url, cfg).await?,
            (None, None) => system_roots()?,
        };
        let roots = ca_wire::client::certs_from_pem(&pem)
            .map_err(|e| AcmeFailure::new(format!("trust bundle: {e}")))?;
        if roots.is_empty() {
            return Err(AcmeFailure::new("the trust bundle holds no certificate"));
        }
        self.roots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), roots.clone());
        Ok(roots)
    }

    /// Orders a certificate for `cert`'s names with a fresh key, proving control with its
    /// challenge; `replaces` is the certificate it renews (sent when the CA offers ARI).
    /// Bounded by the account's `timeout`; re-registers once if the CA forgot the account.
    pub async fn order(
        &self,
        account_name: &str,
        cfg: &AcmeAccountConfig,
        cert: &CertConfig,
        replaces: Option<&CertificateDer<'_>>,
    ) -> Result<Issued, AcmeFailure> {
        let work = async {
            let account = self.account(account_name, cfg).await?;
            match self.order_once(&account, cert, replaces).await {
                Err(OrderError::Acme(e)) if is_problem(&e, "accountDoesNotExist") => {
                    tracing::warn!(
                        account = account_name,
                        "the ACME CA does not know the account; registering again"
                    );
                    self.forget(account_name).await;
                    let account = self.register(account_name, cfg).await?;
                    self.order_once(&account, cert, replaces)
                        .await
                        .map_err(OrderError::into_failure)
                }
                other => other.map_err(OrderError::into_failure),
            }
        };
        tokio::time::timeout(cfg.timeout, work).await.map_err(|_| {
            AcmeFailure::new(format!(
                "the ACME order did not complete within {:?}",
                cfg.timeout
            ))
        })?
    }

    async fn order_once(
        &self,
        account: &Account,
        cert: &CertConfig,
        replaces: Option<&CertificateDer<'_>>,
    ) -> Result<Issued, OrderError> {
        let ids: Vec<Identifier> = cert
            .dns
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        if let Some(profile) = &cert.profile {
            let offered: Vec<&str> = account.profiles().map(|p| p.name).collect();
            if !offered.contains(&profile.as_str()) {
                return Err(OrderError::Other(AcmeFailure::new(if offered.is_empty() {
                    format!("profile {profile:?}: the ACME CA offers no certificate profiles")
                } else {
                    format!(
                        "profile {profile:?}: the ACME CA offers only {}",
                        offered.join(", ")
                    )
                })));
            }
        }
        let new_order = |replaces: Option<instant_acme::CertificateIdentifier<'static>>| {
            let mut new = NewOrder::new(&ids);
            if let Some(p) = &cert.profile {
                new = new.profile(p);
            }
            if let Some(r) = replaces {
                new = new.replaces(r);
            }
            new
        };
        let replaced = replaces.and_then(|der| {
            instant_acme::CertificateIdentifier::try_from(der)
                .ok()
                .map(|id| id.into_owned())
        });
        let mut order = match replaced {
            Some(id) => match account.new_order(&new_order(Some(id))).await {
                // The CA offers no renewal information: order without `replaces`.
                Err(instant_acme::Error::Unsupported(_)) => {
                    account.new_order(&new_order(None)).await
                }
                other => other,
            },
            None => account.new_order(&new_order(None)).await,
        }
        .map_err(OrderError::Acme)?;

        let kind = cert.challenge_kind();
        let acme_type = match kind {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::Dns01 => ChallengeType::Dns01,
        };
        // First pass: what to provision for every pending authorization.
        let mut answers = HashMap::new();
        let mut records = Vec::new();
        {
            let mut authzs = order.authorizations();
            while let Some(a) = authzs.next().await {
                let mut a = a.map_err(OrderError::Acme)?;
                match a.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => {
                        return Err(OrderError::Other(AcmeFailure::new(format!(
                            "authorization for {} is {other:?}",
                            a.identifier()
                        ))));
                    }
                }
                let ident = a.identifier().to_string();
                let ch = a.challenge(acme_type.clone()).ok_or_else(|| {
                    OrderError::Other(AcmeFailure::new(format!(
                        "the ACME CA offers no {kind} challenge for {ident}"
                    )))
                })?;
                let ka = ch.key_authorization();
                match kind {
                    ChallengeKind::Http01 => {
                        answers.insert(ch.token.clone(), ka.as_str().to_string());
                    }
                    ChallengeKind::Dns01 => records.push(DnsRecord::new(&ident, ka.dns_value())),
                }
            }
        }

        // Provision, answer, and undo the provision whatever happens.
        let _responder_turn = if answers.is_empty() || cert.webroot.is_some() {
            None
        } else {
            Some(RESPONDER_LOCK.lock().await)
        };
        let _responder = match (&cert.webroot, answers.is_empty(), kind) {
            (None, false, ChallengeKind::Http01) => {
                let addr = cert.http_listen.parse().map_err(|_| {
                    OrderError::Other(AcmeFailure::new(format!(
                        "http_listen {:?} is not an address",
                        cert.http_listen
                    )))
                })?;
                Some(
                    Http01Responder::start(addr, answers.clone())
                        .await
                        .map_err(|e| OrderError::Other(AcmeFailure::new(e)))?,
                )
            }
            _ => None,
        };
        let _files = match (&cert.webroot, answers.is_empty()) {
            (Some(root), false) => Some(
                WebrootFiles::write(root, &answers)
                    .map_err(|e| OrderError::Other(AcmeFailure::new(e)))?,
            ),
            _ => None,
        };
        let mut dns = if records.is_empty() {
            None
        } else {
            let set = DnsRecords::present(&cert.dns_hook, cert.dns_hook_timeout, records)
                .await
                .map_err(|e| OrderError::Other(AcmeFailure::new(e)))?;
            if let Some(wait) = cert.dns_propagation {
                tokio::time::sleep(wait).await;
            }
            Some(set)
        };
        let result = self.complete(&mut order, cert, acme_type).await;
        if let Some(d) = dns.as_mut() {
            d.cleanup().await;
        }
        result
    }

    async fn complete(
        &self,
        order: &mut instant_acme::Order,
        cert: &CertConfig,
        acme_type: ChallengeType,
    ) -> Result<Issued, OrderError> {
        {
            let mut authzs = order.authorizations();
            while let Some(a) = authzs.next().await {
                let mut a = a.map_err(OrderError::Acme)?;
                if a.status != AuthorizationStatus::Pending {
                    continue;
                }
                let ident = a.identifier().to_string();
                let mut ch = a.challenge(acme_type.clone()).ok_or_else(|| {
                    OrderError::Other(AcmeFailure::new(format!("no challenge for {ident}")))
                })?;
                ch.set_ready().await.map_err(OrderError::Acme)?;
            }
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(Duration::from_secs(90));
        let status = match order.poll_ready(&retry).await {
            Ok(s) => s,
            Err(instant_acme::Error::Api(p)) => {
                return Err(OrderError::Other(AcmeFailure::new(format!(
                    "the order failed: {}{}",
                    describe_problem(&p),
                    authorization_problems(order).await
                ))));
            }
            Err(e) => return Err(OrderError::Acme(e)),
        };
        if status != OrderStatus::Ready {
            return Err(OrderError::Other(AcmeFailure::new(format!(
                "the order is {status:?}{}",
                authorization_problems(order).await
            ))));
        }
        let key = crate::agent::new_key_for_names(&cert.key_type, &cert.dns)
            .map_err(|e| OrderError::Other(AcmeFailure::new(e.message)))?;
        order
            .finalize_csr(&key.csr_der)
            .await
            .map_err(OrderError::Acme)?;
        let chain_pem = order
            .poll_certificate(&retry)
            .await
            .map_err(OrderError::Acme)?;
        Ok(Issued {
            key_pem: key.key_pem,
            chain_pem,
        })
    }

    /// When to renew the certificate `leaf`: in the CA's renewal window when it offers ARI,
    /// otherwise `None` (the caller uses its lifetime fraction).
    pub async fn renewal_plan(
        &self,
        account_name: &str,
        cfg: &AcmeAccountConfig,
        leaf: &CertificateDer<'_>,
        sample: f64,
    ) -> Option<RenewalPlan> {
        let account = self.account(account_name, cfg).await.ok()?;
        let id = instant_acme::CertificateIdentifier::try_from(leaf).ok()?;
        match account.renewal_info(&id).await {
            Ok((info, retry_after)) => {
                let now = crate::status::now();
                let w = info.suggested_window;
                let at = point_in_window(
                    w.start.unix_timestamp(),
                    w.end.unix_timestamp(),
                    now,
                    sample,
                );
                // Ask again as the CA says, but at least every few minutes and at most daily.
                let recheck =
                    retry_after.clamp(Duration::from_secs(60), Duration::from_secs(86_400));
                Some(RenewalPlan {
                    at,
                    recheck_at: Some(now + recheck.as_secs() as i64),
                    from_ari: true,
                })
            }
            Err(instant_acme::Error::Unsupported(_)) => None,
            Err(e) => {
                tracing::warn!(error = %e, "ACME renewal information unavailable; using the lifetime fraction");
                None
            }
        }
    }

    /// Revokes `leaf` at the CA with `reason` (RFC 5280 code).
    pub async fn revoke(
        &self,
        account_name: &str,
        cfg: &AcmeAccountConfig,
        leaf: &CertificateDer<'_>,
        reason: instant_acme::RevocationReason,
    ) -> Result<(), AcmeFailure> {
        let account = self.account(account_name, cfg).await?;
        account
            .revoke(&instant_acme::RevocationRequest {
                certificate: leaf,
                reason: Some(reason),
            })
            .await
            .map_err(|e| failure("revocation refused", e))
    }
}

/// A failed order: an ACME error (the account may need registering again) or anything else.
enum OrderError {
    Acme(instant_acme::Error),
    Other(AcmeFailure),
}

impl From<AcmeFailure> for OrderError {
    fn from(f: AcmeFailure) -> Self {
        OrderError::Other(f)
    }
}

impl OrderError {
    fn into_failure(self) -> AcmeFailure {
        match self {
            OrderError::Acme(e) => failure("ACME order failed", e),
            OrderError::Other(f) => f,
        }
    }
}

/// The challenge errors of an order's invalid authorizations, as "; <name>: <problem>".
async fn authorization_problems(order: &mut instant_acme::Order) -> String {
    let _ = order.refresh().await;
    let mut out = String::new();
    let mut authzs = order.authorizations();
    while let Some(Ok(a)) = authzs.next().await {
        if a.status == AuthorizationStatus::Invalid {
            let ident = a.identifier().to_string();
            for p in a.challenges.iter().filter_map(|c| c.error.as_ref()) {
                out.push_str(&format!("; {ident}: {}", describe_problem(p)));
            }
        }
    }
    out
}

/// The system's trust store (`SSL_CERT_FILE`, else Debian's bundle).
fn system_roots() -> Result<Vec<u8>, AcmeFailure> {
    let path = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    std::fs::read(&path).map_err(|e| {
        AcmeFailure::new(format!(
            "cannot read the system trust store {} ({e}); set trust_bundle",
            path.display()
        ))
    })
}

/// Fetches roots from `url`, trusting the directory's root (or the system's) for the HTTPS.
async fn fetch_roots(url: &str, cfg: &AcmeAccountConfig) -> Result<Vec<u8>, AcmeFailure> {
    let https_roots = match &cfg.directory_root {
        Some(p) => std::fs::read(p).map_err(|e| {
            AcmeFailure::new(format!("cannot read directory_root {}: {e}", p.display()))
        })?,
        None => system_roots()?,
    };
    let rest = url.strip_prefix("https://").unwrap_or(url);
    let (origin, path) = match rest.find('/') {
        Some(i) => (format!("https://{}", &rest[..i]), rest[i..].to_string()),
        None => (format!("https://{rest}"), "/".to_string()),
    };
    let client = ca_wire::client::ApiClient::new(&origin, &https_roots, None)
        .map_err(|e| AcmeFailure::new(format!("trust_bundle_url: {e}")))?;
    let reply = client
        .get(&path)
        .await
        .map_err(|e| AcmeFailure::new(format!("cannot fetch trust_bundle_url {url}: {e}")))?;
    if reply.status != 200 {
        return Err(AcmeFailure::new(format!(
            "trust_bundle_url {url} answered {}",
            reply.status
        )));
    }
    Ok(reply.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_read_as_one_line_with_subproblems() {
        let p: Problem = serde_json::from_value(serde_json::json!({
            "type": "urn:ietf:params:acme:error:rejectedIdentifier",
            "detail": "some names were refused",
            "status": 400,
            "subproblems": [{
                "type": "urn:ietf:params:acme:error:rejectedIdentifier",
                "detail": "blocked",
                "identifier": {"type": "dns", "value": "bad.example.com"}
            }]
        }))
        .expect("problem");
        assert_eq!(
            describe_problem(&p),
            "rejectedIdentifier: some names were refused; bad.example.com: rejectedIdentifier: blocked"
        );
    }

    #[test]
    fn rate_limit_times_are_read_from_the_detail() {
        assert_eq!(
            retry_after_in_detail(
                "too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after 2026-01-02 03:04:05 UTC: see https://letsencrypt.org/docs/rate-limits/"
            ),
            Some(1_767_323_045)
        );
        assert_eq!(retry_after_in_detail("slow down"), None);
        let f = failure(
            "x",
            instant_acme::Error::Api(
                serde_json::from_value(serde_json::json!({
                    "type": "urn:ietf:params:acme:error:rateLimited",
                    "detail": "no time given"
                }))
                .expect("problem"),
            ),
        );
        let now = crate::status::now();
        assert!(f.retry_at.is_some_and(|t| t >= now + 3500), "{f:?}");
        assert!(f.message.contains("rateLimited"), "{}", f.message);
    }

    #[test]
    fn renewal_points_fall_in_the_window_or_now_when_it_has_passed() {
        assert_eq!(point_in_window(100, 200, 0, 0.0), 100);
        assert_eq!(point_in_window(100, 200, 0, 0.5), 150);
        assert!(point_in_window(100, 200, 0, 0.999) < 200);
        assert_eq!(
            point_in_window(100, 200, 150, 0.0),
            150,
            "window already open"
        );
        assert_eq!(
            point_in_window(100, 200, 500, 0.7),
            500,
            "window in the past"
        );
        assert_eq!(point_in_window(200, 100, 0, 0.5), 200, "inverted window");
    }
}
