//! `ca-server serve`: HTTPS with rustls (ring), optional client certificates, an own accept loop
//! (axum's `serve` cannot expose peer certificates), graceful shutdown, and the server's own
//! certificate issued by this CA and rotated in place before it expires.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration as StdDuration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::RootCertStore;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Deserialize;
use time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::api::{self, AppState, PeerCertificates};
use crate::duration::HumanDuration;
use crate::service::{Ca, DEFAULT_SERVER_NAMES, ServerCert, ServiceError, pem_to_der};
use crate::store::AuthorityKind;

/// Settings of `serve`, from the config file; flags and `CA_*` variables override them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Names in the server's own certificate (a subset of those fixed at init).
    pub server_names: Vec<String>,
    /// Lifetime of the server's own certificate; renewed at two thirds.
    pub server_cert_ttl: HumanDuration,
    /// Base URL put into leaves as CRL and OCSP locations.
    pub public_url: Option<String>,
    /// Largest accepted request body, bytes.
    pub max_body_bytes: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: HumanDuration,
    /// Also serve `/crl/*` and `/ocsp` (only those) over plain HTTP on this address.
    pub http_listen: Option<SocketAddr>,
    /// Cron schedule (6 fields, seconds first, UTC) for reissuing CRLs and pruning tokens.
    pub crl_refresh: String,
    /// nextUpdate - thisUpdate of environment CRLs.
    pub crl_validity: HumanDuration,
    /// nextUpdate - thisUpdate of the root CRL.
    pub root_crl_validity: HumanDuration,
    /// Revoked certificates stay on CRLs until this long after they expire.
    pub crl_lookback: HumanDuration,
    /// nextUpdate - thisUpdate of OCSP answers.
    pub ocsp_validity: HumanDuration,
    /// notBefore of issued leaves lies this far in the past, to tolerate clock skew between
    /// hosts (it counts towards the lifetime agents see).
    pub backdate: HumanDuration,
    /// PostgreSQL URL (`postgres://...`); `--database-url` and `CA_DATABASE_URL` win. Unset:
    /// the SQLite database of the data directory.
    pub database_url: Option<String>,
    /// PostgreSQL pool settings (`[database]`).
    pub database: crate::store::PgSettings,
    /// How long a server's claim on a scheduled job's period holds before another server may
    /// take the period over (longer than a run takes).
    pub job_lease: HumanDuration,
    /// Rotate an environment's intermediate when its newest generation expires within this
    /// (e.g. "60d"); done by the scheduled job, once across servers. Unset: only by hand.
    pub auto_rotate_before: Option<HumanDuration>,
    /// How long a new intermediate is published in the bundles before it issues, so that every
    /// peer has fetched it first (longer than the agents' `bundle_refresh`).
    pub rotation_delay: HumanDuration,
    /// The ACME server (`[acme]`): its public base URL, and where validation may connect.
    pub acme: crate::acme::AcmeConfig,
    /// The policy file this server serves (from the command line; not a config key).
    #[serde(skip)]
    pub policy_file: Option<std::path::PathBuf>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            server_names: DEFAULT_SERVER_NAMES.iter().map(|s| s.to_string()).collect(),
            server_cert_ttl: HumanDuration(Duration::hours(24)),
            public_url: None,
            max_body_bytes: api::DEFAULT_MAX_BODY,
            shutdown_grace: HumanDuration(Duration::seconds(30)),
            http_listen: None,
            crl_refresh: "0 */15 * * * *".into(),
            crl_validity: HumanDuration(Duration::hours(24)),
            root_crl_validity: HumanDuration(Duration::days(30)),
            crl_lookback: HumanDuration(Duration::days(7)),
            ocsp_validity: HumanDuration(Duration::hours(1)),
            backdate: HumanDuration(Duration::minutes(1)),
            database_url: None,
            database: crate::store::PgSettings::default(),
            job_lease: HumanDuration(Duration::seconds(60)),
            auto_rotate_before: None,
            rotation_delay: HumanDuration(Duration::hours(2)),
            acme: crate::acme::AcmeConfig::default(),
            policy_file: None,
        }
    }
}

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    file: String,
    message: String,
}

impl crate::error::Classify for ConfigError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::BadRequest
    }
}

impl ServeConfig {
    /// Reads a config file (unknown keys are refused).
    pub fn load(path: &Path) -> Result<ServeConfig, ConfigError> {
        let err = |message: String| ConfigError {
            file: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let cfg: ServeConfig =
            toml::from_str(&text).map_err(|e| err(e.to_string().trim().replace('\n', " ")))?;
        cfg.validate().map_err(err)?;
        Ok(cfg)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.server_names.is_empty() {
            return Err("server_names: list at least one name".into());
        }
        if self.max_body_bytes < 1024 {
            return Err("max_body_bytes: must be at least 1024".into());
        }
        if self.server_cert_ttl.0 < Duration::seconds(5) {
            return Err("server_cert_ttl: must be at least 5s".into());
        }
        if self.crl_refresh.split_whitespace().count() != 6 {
            return Err(format!(
                "crl_refresh: {:?} must have 6 fields, seconds first (e.g. \"0 */15 * * * *\")",
                self.crl_refresh
            ));
        }
        if self.crl_validity.0 < Duration::minutes(1)
            || self.root_crl_validity.0 < Duration::minutes(1)
        {
            return Err("crl_validity and root_crl_validity: must be at least 1m".into());
        }
        if self.backdate.0 > Duration::hours(1) {
            return Err("backdate: at most 1h".into());
        }
        if self.ocsp_validity.0 < Duration::minutes(1) {
            return Err("ocsp_validity: must be at least 1m".into());
        }
        if self.job_lease.0 < Duration::seconds(5) {
            return Err("job_lease: must be at least 5s".into());
        }
        if self.rotation_delay.0.is_negative() {
            return Err("rotation_delay: must not be negative".into());
        }
        if self
            .auto_rotate_before
            .as_ref()
            .is_some_and(|d| d.0 <= Duration::ZERO)
        {
            return Err("auto_rotate_before: must be positive (e.g. \"60d\")".into());
        }
        if let Some(url) = &self.database_url
            && !crate::store::is_postgres_url(url)
        {
            return Err(
                "database_url: only postgres:// or postgresql:// URLs (SQLite is the data directory)"
                    .into(),
            );
        }
        self.acme.validator()?;
        if let Some(u) = &self.acme.base_url
            && (!u.starts_with("https://") || u.ends_with('/'))
        {
            return Err("acme.base_url: an https:// URL without a trailing slash".into());
        }
        self.database.validate()
    }

    /// The CA options this configuration implies.
    pub fn ca_options(&self) -> crate::service::CaOptions {
        crate::service::CaOptions {
            public_url: self.public_url.clone(),
            crl_validity: self.crl_validity.0,
            root_crl_validity: self.root_crl_validity.0,
            crl_lookback: self.crl_lookback.0,
            ocsp_validity: self.ocsp_validity.0,
            backdate: self.backdate.0,
        }
    }
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A use case failed (e.g. issuing the server certificate).
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// TLS configuration failed.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The periodic-job scheduler failed.
    #[error("scheduler: {0}")]
    Scheduler(String),
    /// A setting is unusable.
    #[error("config: {0}")]
    Config(String),
    /// The listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

impl crate::error::Classify for ServeError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            ServeError::Service(e) => crate::error::Classify::kind(e),
            _ => crate::error::ErrorKind::Internal,
        }
    }
}

/// Largest HTTP/1 request head (request line and headers), bytes; the same as hyper's default
/// HTTP/2 header list limit.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// The server certificate in use, swapped atomically on rotation.
#[derive(Debug)]
struct RotatingCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for RotatingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn certified_key(cert: &ServerCert) -> Result<Arc<CertifiedKey>, ServeError> {
    // Borrowed, not copied: the only copy of the PKCS#8 stays in its zeroizing buffer.
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pkcs8.as_slice()));
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    let chain = cert
        .chain_der
        .iter()
        .map(|d| CertificateDer::from(d.clone()))
        .collect();
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// How long a new connection may stay silent before its first request byte, and how long a
/// request head may take to arrive. hyper's header timeout only starts once the protocol (HTTP/1
/// or HTTP/2) is known, which takes the first bytes: without [`FirstByteDeadline`] a client could
/// open connections, complete TLS and hold them forever.
const FIRST_BYTE_TIMEOUT: StdDuration = StdDuration::from_secs(10);

/// A connection that fails with `TimedOut` if its first byte has not arrived within
/// [`FIRST_BYTE_TIMEOUT`]; after that, a plain pass-through (idle keep-alive connections are
/// closed by hyper's own timeouts).
struct FirstByteDeadline<S> {
    inner: S,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> FirstByteDeadline<S> {
    fn new(inner: S) -> Self {
        FirstByteDeadline::within(inner, FIRST_BYTE_TIMEOUT)
    }

    fn within(inner: S, limit: StdDuration) -> Self {
        FirstByteDeadline {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(limit))),
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstByteDeadline<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let before = buf.filled().len();
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.deadline = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if let Some(d) = this.deadline.as_mut()
                    && d.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no request on a new connection in time",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstByteDeadline<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// HTTP settings of both listeners (HTTPS, and plain HTTP for CRLs and OCSP).
fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client that trickles its request headers must not hold a connection forever. Request
    // heads are capped like HTTP/2's header lists (16 KiB): a larger one is answered 431.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(FIRST_BYTE_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(StdDuration::from_secs(30));
    builder
}

/// Seconds until a certificate valid over [not_before, not_after] should be replaced.
fn renew_in(not_before: i64, not_after: i64, now: i64) -> u64 {
    let at = not_before + (not_after - not_before) * 2 / 3;
    u64::try_from(at - now).unwrap_or(0).max(1)
}

async fn tls_config(
    ca: &Ca,
    resolver: Arc<RotatingCert>,
) -> Result<rustls::ServerConfig, ServeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Client certificates are checked against the root and the environment intermediates as
    // anchors, so a client that sends only its leaf still verifies. The TLS intermediate is not an
    // anchor: its leaves are server certificates and never clients.
    let mut roots = RootCertStore::empty();
    for a in ca.client_anchors() {
        let der = pem_to_der(&a.cert_pem)?;
        roots
            .add(CertificateDer::from(der))
            .map_err(|e| ServeError::Tls(format!("authority {}: {e}", a.id)))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves until `shutdown` resolves, then stops accepting and lets in-flight requests finish
/// (up to the configured grace). Prints `listening on https://ADDR` once ready.
pub async fn serve(
    ca: Arc<Ca>,
    cfg: ServeConfig,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    survive_file_size_limit();
    ca.load_signers().await?;
    let policy_file = cfg
        .policy_file
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from(&ca.settings().policy_path));
    ca.check_policy_at_start(&policy_file.display().to_string())
        .await?;
    if ca.watch_revocations().await? {
        tracing::info!("following revocations made by other servers on this database");
    }
    let policy_task = ca
        .store()
        .shared_by_servers()
        .then(|| spawn_policy_follower(ca.clone(), policy_file));
    let ttl = cfg.server_cert_ttl.0;
    let first = ca.issue_server_cert(&cfg.server_names, ttl).await?;
    let resolver = Arc::new(RotatingCert(RwLock::new(certified_key(&first)?)));
    let acceptor = Arc::new(RwLock::new(TlsAcceptor::from(Arc::new(
        tls_config(&ca, resolver.clone()).await?,
    ))));
    let rotation = spawn_authority_follower(
        ca.clone(),
        cfg.server_names.clone(),
        ttl,
        first,
        resolver.clone(),
        acceptor.clone(),
    );

    if let Err(e) = ca.audit_checkpoint().await {
        tracing::warn!(error = %e, "no audit checkpoint at start-up");
    }
    for (issuer, r) in ca.refresh_crls().await {
        if let Err(e) = r {
            tracing::warn!(%issuer, error = %e, "no fresh CRL at start-up");
        }
    }
    let mut scheduler = start_scheduler(
        ca.clone(),
        &cfg.crl_refresh,
        cfg.job_lease.0,
        cfg.auto_rotate_before.as_ref().map(|d| d.0),
        cfg.rotation_delay.0,
    )
    .await?;

    let http_task = match cfg.http_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen { addr, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| ServeError::Listen { addr, source })?;
            let app = api::distribution_router(AppState {
                ca: ca.clone(),
                metrics: None,
                max_body: cfg.max_body_bytes,
            });
            {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "listening on http://{bound} (CRL and OCSP only)");
                let _ = out.flush();
            }
            let builder = http_builder();
            Some(tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        tokio::time::sleep(StdDuration::from_millis(50)).await;
                        continue;
                    };
                    let app = app.clone();
                    let builder = builder.clone();
                    tokio::spawn(async move {
                        let svc =
                            hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                                app.clone().oneshot(req.map(axum::body::Body::new))
                            });
                        let _ = builder
                            .serve_connection(TokioIo::new(FirstByteDeadline::new(tcp)), svc)
                            .await;
                    });
                }
            }))
        }
        None => None,
    };

    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: cfg.listen,
        source,
    })?;
    let acme = Arc::new(crate::acme::AcmeServer {
        ca: ca.clone(),
        base_url: cfg.acme.base_url.clone().unwrap_or_else(|| {
            let host = cfg.server_names.first().map_or_else(
                || "localhost".to_string(),
                |n| match n.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V6(_)) => format!("[{n}]"),
                    _ => n.clone(),
                },
            );
            format!("https://{host}:{}", addr.port())
        }),
        validator: cfg.acme.validator().map_err(ServeError::Config)?,
        website: cfg.acme.website.clone(),
        terms_of_service: cfg.acme.terms_of_service.clone(),
    });
    let app = api::router(AppState {
        ca: ca.clone(),
        metrics,
        max_body: cfg.max_body_bytes,
    })
    .nest_service("/acme", crate::acme::routes::router(acme));
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on https://{addr}");
        let _ = out.flush();
    }
    tracing::info!(%addr, "serving");

    let graceful = GracefulShutdown::new();
    let builder = http_builder();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer_addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(StdDuration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.read().unwrap_or_else(|e| e.into_inner()).clone();
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(StdDuration::from_secs(10), acceptor.accept(tcp))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer_addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %peer_addr, "TLS handshake timed out");
                    return;
                }
            };
            let chain = tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| Arc::new(c.iter().map(|d| d.to_vec()).collect::<Vec<_>>()));
            let peer = PeerCertificates(chain);
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(peer.clone());
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(FirstByteDeadline::new(tls)), svc)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(peer = %peer_addr, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    rotation.abort();
    if let Some(t) = policy_task {
        t.abort();
    }
    if let Some(t) = http_task {
        t.abort();
    }
    if let Err(e) = scheduler.shutdown().await {
        tracing::warn!(error = %e, "scheduler did not stop cleanly");
    }
    tracing::info!("shutting down: waiting for in-flight requests");
    let drained = async {
        graceful.shutdown().await;
        if let Err(e) = ca.audit_checkpoint().await {
            tracing::warn!(error = %e, "no audit checkpoint at shutdown");
        }
    };
    let grace =
        StdDuration::from_secs(u64::try_from(cfg.shutdown_grace.0.whole_seconds()).unwrap_or(30));
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!("grace period over; closing remaining connections");
    }
    Ok(())
}

/// How often a server re-reads the authorities (a rotation made by the CLI or another server).
const AUTHORITY_REFRESH: StdDuration = StdDuration::from_secs(2);

/// Keeps the server's TLS side in step with the authorities: renews its own certificate at two
/// thirds of its life or as soon as another TLS intermediate takes over (a root rotation), and
/// rebuilds the client-certificate trust anchors when an intermediate or root is added, retired
/// or revoked.
fn spawn_authority_follower(
    ca: Arc<Ca>,
    names: Vec<String>,
    ttl: Duration,
    first: ServerCert,
    resolver: Arc<RotatingCert>,
    acceptor: Arc<RwLock<TlsAcceptor>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut anchors = ca.client_anchor_ids();
        let mut cert_issuer = first.issuer_id.clone();
        let mut renew_at = ca.now_unix()
            + i64::try_from(renew_in(first.not_before, first.not_after, ca.now_unix()))
                .unwrap_or(i64::MAX / 2);
        drop(first);
        loop {
            tokio::time::sleep(AUTHORITY_REFRESH).await;
            if let Err(e) = ca.refresh_authorities().await {
                tracing::warn!(error = %e, "cannot re-read the authorities");
            }
            let now_anchors = ca.client_anchor_ids();
            if now_anchors != anchors {
                match tls_config(&ca, resolver.clone()).await {
                    Ok(cfg) => {
                        *acceptor.write().unwrap_or_else(|e| e.into_inner()) =
                            TlsAcceptor::from(Arc::new(cfg));
                        tracing::info!(anchors = ?now_anchors, "client certificate trust anchors updated");
                        anchors = now_anchors;
                    }
                    Err(e) => tracing::error!(error = %e, "cannot rebuild the TLS configuration"),
                }
            }
            let issuer_moved = ca
                .active_authority_id(AuthorityKind::Tls)
                .is_some_and(|id| id != cert_issuer);
            if ca.now_unix() < renew_at && !issuer_moved {
                continue;
            }
            match ca.issue_server_cert(&names, ttl).await.and_then(|c| {
                certified_key(&c)
                    .map(|k| (c, k))
                    .map_err(|e| ServiceError::Invalid(e.to_string()))
            }) {
                Ok((cert, key)) => {
                    *resolver.0.write().unwrap_or_else(|e| e.into_inner()) = key;
                    tracing::info!(serial = %cert.serial, issuer = %cert.issuer_id, "server certificate rotated");
                    renew_at = ca.now_unix()
                        + i64::try_from(renew_in(cert.not_before, cert.not_after, ca.now_unix()))
                            .unwrap_or(i64::MAX / 2);
                    cert_issuer = cert.issuer_id;
                }
                Err(e) => {
                    tracing::error!(error = %e, "server certificate rotation failed; retrying in 30s");
                    renew_at = ca.now_unix() + 30;
                }
            }
        }
    })
}

/// Servers sharing a database check every few seconds that they serve the published policy,
/// switch to it when their file matches it, and complain loudly (log and the
/// `ca_policy_mismatch` gauge) when it does not.
fn spawn_policy_follower(
    ca: Arc<Ca>,
    policy_file: std::path::PathBuf,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reported: Option<String> = None;
        loop {
            tokio::time::sleep(StdDuration::from_secs(5)).await;
            match ca.follow_published_policy(&policy_file).await {
                Ok(followed) => {
                    metrics::gauge!("ca_policy_mismatch").set(0.0);
                    reported = None;
                    if let crate::service::PolicyFollow::Reloaded(sha) = followed {
                        tracing::warn!(%sha, path = %policy_file.display(), "switched to the newly published policy");
                    }
                }
                Err(e) => {
                    metrics::gauge!("ca_policy_mismatch").set(1.0);
                    let text = e.to_string();
                    if reported.as_deref() != Some(text.as_str()) {
                        tracing::error!(error = %text, "this server does not serve the published policy; the previous policy stays in force");
                        reported = Some(text);
                    }
                }
            }
        }
    })
}

/// The period of a job fired at `now`: the latest tick of `cron` at or before it (a late or
/// repeated firing lands in the same period, so it is claimed once across servers).
fn job_period(cron: &croner::Cron, now: i64) -> Option<i64> {
    let at = chrono::DateTime::from_timestamp(now, 0)?;
    cron.find_previous_occurrence(&at, true)
        .ok()
        .map(|t| t.timestamp())
}

async fn start_scheduler(
    ca: Arc<Ca>,
    cron: &str,
    lease: Duration,
    auto_rotate_before: Option<Duration>,
    rotation_delay: Duration,
) -> Result<tokio_cron_scheduler::JobScheduler, ServeError> {
    use tokio_cron_scheduler::{Job, JobScheduler};
    let sched_err =
        |e: tokio_cron_scheduler::JobSchedulerError| ServeError::Scheduler(e.to_string());
    let schedule = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(cron)
        .map_err(|e| ServeError::Scheduler(format!("crl_refresh {cron:?}: {e}")))?;
    let schedule = Arc::new(schedule);
    let scheduler = JobScheduler::new().await.map_err(sched_err)?;
    let job = Job::new_async(cron, move |_id, _lock| {
        let ca = ca.clone();
        let schedule = schedule.clone();
        Box::pin(async move {
            let Some(period) = job_period(&schedule, ca.now_unix()) else {
                tracing::error!("no period for the scheduled job; skipped");
                return;
            };
            let claim = match ca
                .claim_job("crl-refresh", period, lease.whole_seconds())
                .await
            {
                Ok(Some(c)) => c,
                Ok(None) => {
                    tracing::debug!(period, "scheduled CRL refresh run by another server");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim the scheduled CRL refresh");
                    return;
                }
            };
            match ca.rotation_upkeep(auto_rotate_before, rotation_delay).await {
                Ok((retired, created)) => {
                    if !retired.is_empty() || !created.is_empty() {
                        tracing::info!(?retired, ?created, "scheduled CA rotation upkeep");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "scheduled CA rotation upkeep failed"),
            }
            let results = ca.refresh_crls().await;
            let ok = results.iter().filter(|(_, r)| r.is_ok()).count();
            tracing::info!(
                reissued = ok,
                failed = results.len() - ok,
                period,
                "scheduled CRL refresh"
            );
            match ca.store().acme_prune(ca.now_unix()).await {
                Ok(n) if n > 0 => {
                    tracing::info!(pruned = n, "expired ACME nonces and orders deleted")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "ACME pruning failed"),
            }
            match ca.prune_tokens().await {
                Ok(n) if n > 0 => tracing::info!(pruned = n, "expired enrollment tokens deleted"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "token pruning failed"),
            }
            if let Err(e) = ca.audit_checkpoint().await {
                tracing::warn!(error = %e, "scheduled audit checkpoint failed");
            }
            // Until marked done, the next period waits for this claim's lease: retry through a
            // short database outage.
            for attempt in 1..=10 {
                match ca.finish_job(&claim).await {
                    Ok(()) => break,
                    Err(e) if attempt == 10 => {
                        tracing::warn!(error = %e, "could not mark the scheduled CRL refresh done");
                    }
                    Err(_) => tokio::time::sleep(StdDuration::from_millis(500)).await,
                }
            }
        })
    })
    .map_err(|e| ServeError::Scheduler(format!("crl_refresh {cron:?}: {e}")))?;
    scheduler.add(job).await.map_err(sched_err)?;
    scheduler.start().await.map_err(sched_err)?;
    Ok(scheduler)
}

/// A write past a file-size limit (`RLIMIT_FSIZE`: a shell's `ulimit -f`, systemd's
/// `LimitFSIZE=`, a container runtime) raises SIGXFSZ, whose default action kills the server and
/// every request in flight. Handled, the write fails with EFBIG instead, SQLite rolls the
/// transaction back, and the client gets the same storage problem as for a full disk (PostgreSQL
/// ignores the signal for the same reason).
fn survive_file_size_limit() {
    use tokio::signal::unix::{SignalKind, signal};
    // Tokio keeps the handler for the life of the process once installed, so the stream is not
    // kept. Nothing is logged per signal: the log may be the very file that is over the limit.
    if let Err(e) = signal(SignalKind::from_raw(rustix::process::Signal::XFSZ.as_raw())) {
        tracing::warn!(error = %e, "cannot handle SIGXFSZ: a file-size limit would kill the server");
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_connection_times_out_and_a_talking_one_does_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let limit = StdDuration::from_millis(50);
        let (mut client, server) = tokio::io::duplex(64);
        let mut silent = FirstByteDeadline::within(server, limit);
        let mut buf = [0u8; 8];
        let err = silent.read(&mut buf).await.expect_err("times out");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);

        let (mut client2, server2) = tokio::io::duplex(64);
        let mut talking = FirstByteDeadline::within(server2, limit);
        client2.write_all(b"GET").await.expect("write");
        assert_eq!(talking.read(&mut buf).await.expect("read"), 3);
        // Past the deadline, an idle but started connection is left to hyper's timeouts.
        tokio::time::sleep(limit * 3).await;
        client2.write_all(b" /").await.expect("write");
        assert_eq!(talking.read(&mut buf).await.expect("read"), 2);
        client.shutdown().await.expect("shutdown");
    }

    #[test]
    fn a_late_firing_lands_in_the_period_of_its_tick() {
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .build()
            .parse("0 */15 * * * *")
            .expect("cron");
        let tick = 1_700_000_100; // 22:15:00 UTC
        assert_eq!(job_period(&cron, tick), Some(tick));
        assert_eq!(job_period(&cron, tick + 7), Some(tick), "a late firing");
        assert_eq!(job_period(&cron, tick + 15 * 60), Some(tick + 15 * 60));
    }

    #[test]
    fn renewal_is_due_two_thirds_in() {
        assert_eq!(renew_in(0, 300, 0), 200);
        assert_eq!(renew_in(0, 300, 150), 50);
        assert_eq!(renew_in(0, 300, 250), 1, "overdue renews at once");
    }

    #[test]
    fn database_settings_are_checked() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "database_url = \"mysql://ca@127.0.0.1/ca\"\n").expect("write");
        let e = ServeConfig::load(&p).expect_err("not postgres");
        assert!(e.to_string().contains("database_url"), "{e}");
        std::fs::write(&p, "[database]\nmax_connections = 0\n").expect("write");
        let e = ServeConfig::load(&p).expect_err("no connections");
        assert!(e.to_string().contains("max_connections"), "{e}");
        std::fs::write(&p, "[database]\nstatement_timeout = \"5ms\"\n").expect("write");
        let e = ServeConfig::load(&p).expect_err("too short");
        assert!(e.to_string().contains("statement_timeout"), "{e}");
        std::fs::write(&p, "[database]\npool_size = 3\n").expect("write");
        let e = ServeConfig::load(&p).expect_err("unknown key");
        assert!(e.to_string().contains("pool_size"), "{e}");
        std::fs::write(
            &p,
            "database_url = \"postgres://ca@127.0.0.1:5432/ca\"\njob_lease = \"2m\"\n[database]\nmax_connections = 2\n",
        )
        .expect("write");
        let c = ServeConfig::load(&p).expect("valid");
        assert_eq!(c.database.max_connections, 2);
        assert_eq!(c.job_lease.0, Duration::minutes(2));
        assert_eq!(
            c.database.acquire_timeout,
            crate::store::PgSettings::default().acquire_timeout
        );
    }

    #[test]
    fn config_refuses_unknown_keys_and_bad_values() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "listen = \"127.0.0.1:0\"\nlisten_port = 1\n").expect("write");
        let e = ServeConfig::load(&p).expect_err("unknown key");
        assert!(e.to_string().contains("listen_port"), "{e}");
        std::fs::write(&p, "max_body_bytes = 10\n").expect("write");
        assert!(
            ServeConfig::load(&p)
                .expect_err("too small")
                .to_string()
                .contains("max_body_bytes")
        );
        std::fs::write(&p, "server_cert_ttl = \"2h\"\nlisten = \"127.0.0.1:0\"\n").expect("write");
        let c = ServeConfig::load(&p).expect("valid");
        assert_eq!(c.server_cert_ttl.0, Duration::hours(2));
        assert_eq!(c.server_names, ServeConfig::default().server_names);
    }
}
