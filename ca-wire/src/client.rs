//! An HTTPS client for the CA's API: trusts only the roots it is given, optionally presents a
//! client certificate, and can bootstrap trust from a pinned root fingerprint.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::Problem;

/// Default limit on one request, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body read.
const MAX_RESPONSE: usize = 8 * 1024 * 1024;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Bad PEM, a missing key, an unusable URL.
    #[error("{0}")]
    Config(String),
    /// TCP, TLS or HTTP failed (including a refused handshake).
    #[error("cannot reach {url}: {reason}")]
    Transport {
        /// What was called.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// No answer in time.
    #[error("{url} did not answer within {secs}s")]
    Timeout {
        /// What was called.
        url: String,
        /// The limit.
        secs: u64,
    },
    /// The server answered with a problem document.
    #[error("server refused: {0}")]
    Api(Problem),
    /// The server answered something unexpected.
    #[error("unexpected answer from {url}: {reason}")]
    Unexpected {
        /// What was called.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The root the server offers does not match the pinned fingerprint.
    #[error(
        "the CA's root certificate has SHA-256 {found}, not the pinned {pinned}; refusing to trust it"
    )]
    PinMismatch {
        /// Fingerprint pinned by the operator.
        pinned: String,
        /// Fingerprint of what the server served.
        found: String,
    },
}

/// A client certificate chain and its key (zeroized on drop).
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: Zeroizing<PrivateKeyDer<'static>>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("certificates", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ClientIdentity {
    /// From PEM: certificates (leaf first) and a PKCS#8, SEC1 or PKCS#1 key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<ClientIdentity, ClientError> {
        let chain = certs_from_pem(cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|_| ClientError::Config("client key is not a PEM private key".into()))?;
        Ok(ClientIdentity {
            chain,
            key: Zeroizing::new(key),
        })
    }
}

/// Parses every `CERTIFICATE` block of `pem`; at least one is required.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|_| ClientError::Config("certificate PEM is damaged".into()))?;
    if certs.is_empty() {
        return Err(ClientError::Config("no CERTIFICATE block in PEM".into()));
    }
    Ok(certs)
}

/// The DER of every `X509 CRL` block of `pem` (damaged blocks are skipped).
pub fn crls_from_pem(pem: &[u8]) -> Vec<Vec<u8>> {
    use rustls_pki_types::CertificateRevocationListDer;
    CertificateRevocationListDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .map(|c| c.as_ref().to_vec())
        .collect()
}

/// SHA-256 of DER, lowercase hex.
pub fn sha256_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Normalises a fingerprint: hex, any case, colons optional, optional `sha256:` prefix.
pub fn normalize_fingerprint(text: &str) -> Result<String, ClientError> {
    let t = text.trim();
    let t = t
        .strip_prefix("sha256:")
        .or_else(|| t.strip_prefix("SHA256:"))
        .unwrap_or(t);
    let hexed: String = t
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hexed.len() != 64 || !hexed.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ClientError::Config(
            "a root fingerprint is 64 hex digits (SHA-256), colons optional".into(),
        ));
    }
    Ok(hexed)
}

/// The header of a bundle answer telling the holder of the certificate named in the request to
/// renew at once.
pub const RENEW_NOW_HEADER: &str = "ca-renew-now";

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Content-Type header.
    pub content_type: String,
    /// The `ca-renew-now` header of a bundle answer: why the caller's certificate should be
    /// renewed at once (its issuer was superseded or revoked).
    pub renew_now: Option<String>,
    /// Body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as `T` for 2xx answers; the problem document (or a description) otherwise.
    pub fn json<T: DeserializeOwned>(&self, url: &str) -> Result<T, ClientError> {
        if !(200..300).contains(&self.status) {
            return Err(self.error(url));
        }
        serde_json::from_slice(&self.body).map_err(|e| ClientError::Unexpected {
            url: url.to_string(),
            reason: format!("body is not the expected JSON: {e}"),
        })
    }

    /// The body as text for 2xx answers.
    pub fn text(&self, url: &str) -> Result<String, ClientError> {
        if !(200..300).contains(&self.status) {
            return Err(self.error(url));
        }
        String::from_utf8(self.body.clone()).map_err(|_| ClientError::Unexpected {
            url: url.to_string(),
            reason: "body is not UTF-8".into(),
        })
    }

    fn error(&self, url: &str) -> ClientError {
        match serde_json::from_slice::<Problem>(&self.body) {
            Ok(p) => ClientError::Api(p),
            Err(_) => ClientError::Unexpected {
                url: url.to_string(),
                reason: format!("HTTP {}", self.status),
            },
        }
    }
}

/// A client bound to one CA base URL.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn base_url(url: &str) -> Result<String, ClientError> {
    let base = url.trim_end_matches('/');
    if !base.starts_with("https://") {
        return Err(ClientError::Config(format!(
            "{url:?}: the CA URL must start with https://"
        )));
    }
    Ok(base.to_string())
}

impl ApiClient {
    /// A client trusting only `roots_pem`, presenting `identity` when given.
    pub fn new(
        url: &str,
        roots_pem: &[u8],
        identity: Option<ClientIdentity>,
    ) -> Result<ApiClient, ClientError> {
        let mut roots = RootCertStore::empty();
        for c in certs_from_pem(roots_pem)? {
            roots
                .add(c)
                .map_err(|e| ClientError::Config(format!("unusable trust anchor: {e}")))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Config(e.to_string()))?
            .with_root_certificates(roots);
        let config = match identity {
            // rustls zeroizes the copy it is handed once it has parsed it.
            Some(id) => builder
                .with_client_auth_cert(id.chain, id.key.clone_key())
                .map_err(|e| {
                    ClientError::Config(format!("client certificate and key do not fit: {e}"))
                })?,
            None => builder.with_no_client_auth(),
        };
        Ok(Self::from_config(base_url(url)?, config))
    }

    fn from_config(base: String, config: rustls::ClientConfig) -> ApiClient {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .build();
        // One pooled connection carries one client certificate: a client is rebuilt (and the old
        // one dropped with its connections) whenever the identity changes.
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        ApiClient {
            base,
            http,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets the per-request time limit.
    pub fn with_timeout(mut self, timeout: Duration) -> ApiClient {
        self.timeout = timeout;
        self
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method).uri(&url);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Config(format!("{url}: {e}")))?;
        let fut = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| ClientError::Transport {
                    url: url.clone(),
                    reason: error_chain(&e),
                })?;
            let status = resp.status().as_u16();
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let renew_now = resp
                .headers()
                .get(RENEW_NOW_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let limited = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE);
            let body = limited
                .collect()
                .await
                .map_err(|e| ClientError::Transport {
                    url: url.clone(),
                    reason: format!("reading the answer: {e}"),
                })?
                .to_bytes()
                .to_vec();
            Ok(Reply {
                status,
                content_type,
                renew_now,
                body,
            })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.clone(),
                secs: self.timeout.as_secs(),
            })?
    }

    /// `GET base + path`.
    pub async fn get(&self, path: &str) -> Result<Reply, ClientError> {
        self.call(Method::GET, path, None).await
    }

    /// `POST base + path` with a JSON body already encoded.
    pub async fn post_body(&self, path: &str, json: Vec<u8>) -> Result<Reply, ClientError> {
        self.call(Method::POST, path, Some(json)).await
    }

    /// `POST base + path` with a JSON body.
    pub async fn post_json<T: Serialize>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<Reply, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Config(e.to_string()))?;
        self.post_body(path, bytes).await
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// Accepts any server certificate. Used for exactly one request, `GET /v1/roots`, whose answer is
/// then authenticated by comparing it with the pinned fingerprint before anything is trusted.
#[derive(Debug)]
struct AcceptAnyForPinning(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyForPinning {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client configuration that accepts any server certificate. Only for looking at what a
/// server presents (the agent's post-reload serial check) and for the pinned-root fetch; never
/// for sending anything secret.
pub fn inspect_only_config() -> Result<rustls::ClientConfig, ClientError> {
    let p = provider();
    Ok(rustls::ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyForPinning(p)))
        .with_no_client_auth())
}

/// Fetches the CA's root and returns its PEM only if its SHA-256 equals `fingerprint`. Sends
/// nothing but `GET /v1/roots`; the caller then builds an [`ApiClient`] trusting that root, so
/// every later request (and every key or CSR) goes over a connection verified against the pin.
pub async fn fetch_pinned_root(url: &str, fingerprint: &str) -> Result<String, ClientError> {
    let pinned = normalize_fingerprint(fingerprint)?;
    let client = ApiClient::from_config(base_url(url)?, inspect_only_config()?);
    let reply = client.get("/v1/roots").await?;
    let pem = reply.text(&format!("{}/v1/roots", client.base))?;
    let certs = certs_from_pem(pem.as_bytes())?;
    for c in &certs {
        let found = sha256_hex(c);
        if found == pinned {
            let one = rustls_pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes())
                .filter_map(|r: Result<CertificateDer<'static>, _>| r.ok())
                .find(|d| sha256_hex(d) == pinned);
            return match one {
                Some(der) => Ok(pem_certificate(&der)),
                None => Err(ClientError::PinMismatch { pinned, found }),
            };
        }
    }
    Err(ClientError::PinMismatch {
        pinned,
        found: certs.first().map(|c| sha256_hex(c)).unwrap_or_default(),
    })
}

/// PEM text of one DER certificate.
pub fn pem_certificate(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

/// PEM text of DER with the given label (`CERTIFICATE`, `X509 CRL`, ...).
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_normalise() {
        let hexed = "AB".repeat(32);
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(normalize_fingerprint(&hexed).ok(), Some("ab".repeat(32)));
        assert_eq!(normalize_fingerprint(&colons).ok(), Some("ab".repeat(32)));
        assert_eq!(
            normalize_fingerprint(&format!("sha256:{hexed}")).ok(),
            Some("ab".repeat(32))
        );
        assert!(normalize_fingerprint("abc").is_err());
        assert!(normalize_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn pem_round_trips() {
        let der: Vec<u8> = (0u8..=255).cycle().take(1000).collect();
        let pem = pem_certificate(&der);
        let back = certs_from_pem(pem.as_bytes()).expect("parses");
        assert_eq!(back[0].as_ref(), der.as_slice());
    }

    #[test]
    fn urls_must_be_https_and_pem_must_hold_certificates() {
        assert!(base_url("http://ca:8443").is_err());
        assert_eq!(
            base_url("https://ca:8443/").ok().as_deref(),
            Some("https://ca:8443")
        );
        assert!(certs_from_pem(b"nothing here").is_err());
        assert!(ClientIdentity::from_pem(b"x", b"y").is_err());
    }

    #[test]
    fn problems_expose_their_slug() {
        let p = Problem {
            kind: "urn:ca-server:problem:invalid-token".into(),
            title: "Unauthorized".into(),
            status: 401,
            detail: "used".into(),
        };
        assert_eq!(p.slug(), "invalid-token");
        let reply = Reply {
            status: 401,
            content_type: "application/problem+json".into(),
            renew_now: None,
            body: serde_json::to_vec(&p).expect("json"),
        };
        match reply.json::<serde_json::Value>("u") {
            Err(ClientError::Api(got)) => assert_eq!(got, p),
            other => panic!("{other:?}"),
        }
    }
}
