//! Challenge validation: http-01 (RFC 8555 8.3), dns-01 (8.4) and tls-alpn-01 (RFC 8737).
//!
//! The validator connects wherever an ACME client points it, so it is an SSRF surface: every
//! address it would connect to passes [`ValidatorConfig::check_address`] first. Loopback,
//! private, link-local, shared, documentation, multicast and reserved networks are refused
//! unless listed in `allow`; networks in `deny` are refused always. Names are resolved once
//! and the validator connects to the checked address itself, so a name cannot be re-pointed
//! between the check and the connection. Redirects of http-01 are bounded, go only to DNS
//! names (never address literals) on the validation ports, and bodies are capped.
//!
//! dns-01 asks one recursive resolver (the configured one, or the first of /etc/resolv.conf)
//! with a small DNS client: one TXT question over UDP, TCP when the answer is truncated.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::jws::b64;

/// Redirects an http-01 validation follows at most.
const MAX_REDIRECTS: usize = 10;
/// Largest http-01 body read (a key authorization is about 90 bytes).
const MAX_BODY: usize = 4096;
/// Longest accepted `Location` header.
const MAX_LOCATION: usize = 2048;
/// The ALPN protocol of tls-alpn-01.
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// id-pe-acmeIdentifier (1.3.6.1.5.5.7.1.31).
const OID_ACME_IDENTIFIER: &str = "1.3.6.1.5.5.7.1.31";
/// DNS record types used here.
const TYPE_CNAME: u16 = 5;
const TYPE_TXT: u16 = 16;

/// Where and how validation connects.
#[derive(Debug, Clone)]
pub struct ValidatorConfig {
    /// Port of http-01 (80 outside tests).
    pub http_port: u16,
    /// Port of tls-alpn-01 and of https redirects (443 outside tests).
    pub tls_port: u16,
    /// The resolver dns-01 asks; None: the first nameserver of /etc/resolv.conf.
    pub dns_server: Option<SocketAddr>,
    /// Names answered from this map instead of DNS (tests only).
    pub hosts: BTreeMap<String, IpAddr>,
    /// Special-purpose networks validation may connect to nevertheless.
    pub allow: Vec<IpNet>,
    /// Networks validation never connects to.
    pub deny: Vec<IpNet>,
    /// Bound on one validation attempt.
    pub timeout: Duration,
}

impl Default for ValidatorConfig {
    fn default() -> Self {
        ValidatorConfig {
            http_port: 80,
            tls_port: 443,
            dns_server: None,
            hosts: BTreeMap::new(),
            allow: Vec::new(),
            deny: Vec::new(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// An IP network in CIDR notation (a bare address is a single-address network).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    const fn v4(a: [u8; 4], prefix: u8) -> IpNet {
        IpNet {
            addr: IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            prefix,
        }
    }

    const fn v6(segments: [u16; 8], prefix: u8) -> IpNet {
        let [a, b, c, d, e, f, g, h] = segments;
        IpNet {
            addr: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            prefix,
        }
    }

    /// Whether `ip` lies in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| "not an IP address or CIDR network".to_string())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("prefix length must be 0..={max}"))?,
        };
        let net = IpNet { addr, prefix };
        let host_bits_set = match addr {
            IpAddr::V4(a) => !IpNet::v4(a.octets(), prefix).contains_exactly_network(a.into()),
            IpAddr::V6(a) => !net.contains_exactly_network(a.into()),
        };
        if host_bits_set {
            return Err("host bits set after the prefix (write the network address)".into());
        }
        Ok(net)
    }
}

impl IpNet {
    /// Whether `ip` is the network address itself (no bits set after the prefix).
    fn contains_exactly_network(&self, ip: IpAddr) -> bool {
        let bytes: Vec<u8> = match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        bytes.iter().enumerate().all(|(i, b)| {
            let bit_start = i * 8;
            let keep = usize::from(self.prefix).saturating_sub(bit_start).min(8);
            let mask = if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
            b & !mask == 0
        })
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Networks nobody validates against unless `allow` says so: the special-purpose registries
/// of IANA (this host, private, shared, loopback, link-local, documentation, benchmarking,
/// multicast, reserved, unique local, NAT64, discard).
const SPECIAL: &[IpNet] = &[
    IpNet::v4([0, 0, 0, 0], 8),
    IpNet::v4([10, 0, 0, 0], 8),
    IpNet::v4([100, 64, 0, 0], 10),
    IpNet::v4([127, 0, 0, 0], 8),
    IpNet::v4([169, 254, 0, 0], 16),
    IpNet::v4([172, 16, 0, 0], 12),
    IpNet::v4([192, 0, 0, 0], 24),
    IpNet::v4([192, 0, 2, 0], 24),
    IpNet::v4([192, 88, 99, 0], 24),
    IpNet::v4([192, 168, 0, 0], 16),
    IpNet::v4([198, 18, 0, 0], 15),
    IpNet::v4([198, 51, 100, 0], 24),
    IpNet::v4([203, 0, 113, 0], 24),
    IpNet::v4([224, 0, 0, 0], 4),
    IpNet::v4([240, 0, 0, 0], 4),
    IpNet::v6([0, 0, 0, 0, 0, 0, 0, 0], 128),
    IpNet::v6([0, 0, 0, 0, 0, 0, 0, 1], 128),
    IpNet::v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96),
    IpNet::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
    IpNet::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),
    IpNet::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
    IpNet::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
    IpNet::v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16),
    IpNet::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
    IpNet::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
    IpNet::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
    IpNet::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
];

impl ValidatorConfig {
    /// Refuses an address in `deny`, or in a special-purpose network not in `allow`.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), String> {
        let ip = ip.to_canonical();
        if let Some(n) = self.deny.iter().find(|n| n.contains(ip)) {
            return Err(format!("{ip} is in the denied network {n}"));
        }
        if let Some(n) = SPECIAL.iter().find(|n| n.contains(ip))
            && !self.allow.iter().any(|a| a.contains(ip))
        {
            return Err(format!(
                "{ip} is in the special-purpose network {n}, which validation does not connect \
                 to unless [acme] allow lists it"
            ));
        }
        Ok(())
    }

    /// The checked addresses of a name: the test map first, else the system resolver.
    async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, ChallengeError> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let found: Vec<IpAddr> = match self.hosts.get(&host) {
            Some(ip) => vec![*ip],
            None => tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| {
                    fail(
                        ChallengeErrorKind::Dns,
                        format!("cannot resolve {host}: {e}"),
                    )
                })?
                .map(|a| a.ip())
                .collect(),
        };
        if found.is_empty() {
            return Err(fail(
                ChallengeErrorKind::Dns,
                format!("no A or AAAA record found for {host}"),
            ));
        }
        let mut refused = Vec::new();
        let mut ok = Vec::new();
        for ip in found {
            match self.check_address(ip) {
                Ok(()) => ok.push(ip),
                Err(e) => refused.push(e),
            }
        }
        if ok.is_empty() {
            return Err(fail(
                ChallengeErrorKind::Connection,
                format!("{host}: {}", refused.join("; ")),
            ));
        }
        Ok(ok)
    }

    /// A TCP connection to the first reachable checked address of `host`.
    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, ChallengeError> {
        let mut last = String::new();
        for ip in self.resolve(host).await? {
            let addr = SocketAddr::new(ip, port);
            match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: connection timed out"),
            }
        }
        Err(fail(
            ChallengeErrorKind::Connection,
            format!("cannot connect to {host}: {last}"),
        ))
    }
}

/// Why a validation attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct ChallengeError {
    /// The ACME error type.
    pub kind: ChallengeErrorKind,
    /// What went wrong, for the client.
    pub detail: String,
}

/// The ACME error types validation reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeErrorKind {
    /// The validator could not connect (or may not: a refused network).
    Connection,
    /// A DNS lookup failed.
    Dns,
    /// The response did not prove control (wrong content, status or record).
    Unauthorized,
    /// The TLS handshake or the tls-alpn-01 certificate was wrong.
    Tls,
    /// The response could not be understood (malformed, too large, bad redirect).
    IncorrectResponse,
}

impl ChallengeErrorKind {
    /// The `urn:ietf:params:acme:error:*` type.
    pub fn acme_type(self) -> &'static str {
        match self {
            ChallengeErrorKind::Connection => "urn:ietf:params:acme:error:connection",
            ChallengeErrorKind::Dns => "urn:ietf:params:acme:error:dns",
            ChallengeErrorKind::Unauthorized => "urn:ietf:params:acme:error:unauthorized",
            ChallengeErrorKind::Tls => "urn:ietf:params:acme:error:tls",
            ChallengeErrorKind::IncorrectResponse => "urn:ietf:params:acme:error:incorrectResponse",
        }
    }
}

fn fail(kind: ChallengeErrorKind, detail: impl Into<String>) -> ChallengeError {
    ChallengeError {
        kind,
        detail: detail.into(),
    }
}

/// Bounds a whole attempt by the configured timeout.
async fn bounded<T>(
    cfg: &ValidatorConfig,
    kind: ChallengeErrorKind,
    what: &str,
    f: impl std::future::Future<Output = Result<T, ChallengeError>>,
) -> Result<T, ChallengeError> {
    tokio::time::timeout(cfg.timeout, f)
        .await
        .unwrap_or_else(|_| {
            Err(fail(
                kind,
                format!("{what} timed out after {} s", cfg.timeout.as_secs()),
            ))
        })
}

/// Shows at most `max` characters of untrusted text, printable ASCII only.
fn shown(bytes: &[u8], max: usize) -> String {
    let mut s: String = bytes
        .iter()
        .take(max)
        .map(|b| {
            if b.is_ascii_graphic() || *b == b' ' {
                char::from(*b)
            } else {
                '?'
            }
        })
        .collect();
    if bytes.len() > max {
        s.push_str("...");
    }
    s
}

// ---------------------------------------------------------------------------
// http-01
// ---------------------------------------------------------------------------

/// A URL the http-01 validator may fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    https: bool,
    host: String,
    port: u16,
    path: String,
}

impl Target {
    fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}:{}{}", self.host, self.port, self.path)
    }

    /// Where a `Location` header leads, if the validator may follow it: http or https to a
    /// DNS name on the validation ports, or a path on the same origin.
    fn redirect(&self, cfg: &ValidatorConfig, location: &str) -> Result<Target, String> {
        if location.len() > MAX_LOCATION {
            return Err("redirect location too long".into());
        }
        if location.starts_with('/') && !location.starts_with("//") {
            return Ok(Target {
                path: location.to_string(),
                ..self.clone()
            });
        }
        let (https, rest) = if let Some(r) = location.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = location.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(format!(
                "redirect to {:?}: only http and https are followed",
                shown(location.as_bytes(), 100)
            ));
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('/') {
            path.split('#').next().unwrap_or("/").to_string()
        } else {
            format!("/{}", path.split('#').next().unwrap_or(""))
        };
        if authority.contains('@') {
            return Err("redirect with credentials in the URL".into());
        }
        let default_port = if https { cfg.tls_port } else { cfg.http_port };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') && !h.starts_with('[') => {
                let port: u16 = p
                    .parse()
                    .map_err(|_| format!("redirect to a bad port {:?}", shown(p.as_bytes(), 10)))?;
                (h, port)
            }
            _ => (authority, default_port),
        };
        if port != default_port {
            return Err(format!(
                "redirect to port {port}: only {default_port} is followed for {}",
                if https { "https" } else { "http" }
            ));
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.starts_with('[') || host.parse::<IpAddr>().is_ok() {
            return Err("redirect to an IP address: only DNS names are followed".into());
        }
        if !is_dns_name(&host) {
            return Err(format!(
                "redirect to an invalid host {:?}",
                shown(host.as_bytes(), 100)
            ));
        }
        Ok(Target {
            https,
            host,
            port,
            path,
        })
    }
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// http-01: `http://{domain}/.well-known/acme-challenge/{token}` must answer 200 with the key
/// authorization (trailing whitespace ignored), following at most [`MAX_REDIRECTS`] redirects.
pub async fn http01(
    cfg: &ValidatorConfig,
    domain: &str,
    token: &str,
    key_authorization: &str,
) -> Result<(), ChallengeError> {
    bounded(cfg, ChallengeErrorKind::Connection, "http-01 validation", async {
        let mut target = Target {
            https: false,
            host: domain.to_ascii_lowercase(),
            port: cfg.http_port,
            path: format!("/.well-known/acme-challenge/{token}"),
        };
        for _ in 0..=MAX_REDIRECTS {
            let tcp = cfg.connect(&target.host, target.port).await?;
            let answer = if target.https {
                let tls = tls_connect(&target.host, tcp, Vec::new()).await?;
                http_get(&target, tls).await?
            } else {
                http_get(&target, tcp).await?
            };
            match answer {
                HttpAnswer::Body(200, body) => {
                    let text = trim_end_ws(&body);
                    if text == key_authorization.as_bytes() {
                        return Ok(());
                    }
                    return Err(fail(
                        ChallengeErrorKind::Unauthorized,
                        format!(
                            "the key authorization at {} did not match this challenge: expected \
                             {key_authorization:?}, got {:?}",
                            target.url(),
                            shown(text, 200)
                        ),
                    ));
                }
                HttpAnswer::Body(status, _) => {
                    return Err(fail(
                        ChallengeErrorKind::Unauthorized,
                        format!("invalid response from {}: HTTP {status}", target.url()),
                    ));
                }
                HttpAnswer::Redirect(location) => {
                    target = target
                        .redirect(cfg, &location)
                        .map_err(|e| fail(ChallengeErrorKind::IncorrectResponse, e))?;
                }
            }
        }
        Err(fail(
            ChallengeErrorKind::IncorrectResponse,
            format!("more than {MAX_REDIRECTS} redirects"),
        ))
    })
    .await
}

fn trim_end_ws(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &b[..end]
}

enum HttpAnswer {
    Body(u16, Vec<u8>),
    Redirect(String),
}

/// One GET on an established connection (HTTP/1.1, `Connection: close`).
async fn http_get<S>(target: &Target, io: S) -> Result<HttpAnswer, ChallengeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn_err = |e: hyper::Error| {
        fail(
            ChallengeErrorKind::Connection,
            format!("fetching {}: {e}", target.url()),
        )
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(conn_err)?;
    let driver = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let default_port = if target.https { 443 } else { 80 };
    let host = if target.port == default_port {
        target.host.clone()
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let request = hyper::Request::get(target.path.as_str())
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "ca-server ACME validator")
        .header(hyper::header::ACCEPT, "*/*")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| {
            fail(
                ChallengeErrorKind::IncorrectResponse,
                format!("cannot request {}: {e}", target.url()),
            )
        })?;
    let response = sender.send_request(request).await.map_err(conn_err)?;
    let status = response.status().as_u16();
    if matches!(status, 301 | 302 | 303 | 307 | 308) {
        let location = response
            .headers()
            .get(hyper::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                fail(
                    ChallengeErrorKind::IncorrectResponse,
                    format!("redirect from {} without a usable Location", target.url()),
                )
            })?;
        return Ok(HttpAnswer::Redirect(location.to_string()));
    }
    let mut body = response.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(conn_err)?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > MAX_BODY {
                return Err(fail(
                    ChallengeErrorKind::IncorrectResponse,
                    format!(
                        "the response from {} is larger than {MAX_BODY} bytes",
                        target.url()
                    ),
                ));
            }
            out.extend_from_slice(data);
        }
    }
    drop(driver);
    Ok(HttpAnswer::Body(status, out))
}

/// Aborts a spawned task when dropped (the connection driver of one request).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---------------------------------------------------------------------------
// TLS (tls-alpn-01, and https redirects of http-01)
// ---------------------------------------------------------------------------

/// Accepts any certificate chain but checks the handshake signature with it: validation
/// judges the certificate itself (tls-alpn-01) or ignores it (an https redirect, as RFC 8555
/// 8.3 allows), and must still talk to the holder of its key.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_handshake_signature(message, cert, dss, true)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_handshake_signature(message, cert, dss, false)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        HANDSHAKE_SCHEMES.to_vec()
    }
}

/// The handshake signatures the validator checks.
const HANDSHAKE_SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA512,
];

/// Checks a handshake signature against the certificate's key with ring directly: webpki
/// (what rustls' own helpers use) refuses a tls-alpn-01 certificate for its critical
/// acmeIdentifier extension before looking at the key.
fn verify_handshake_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    tls12: bool,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    use ring::signature as sig;
    let alg: &dyn sig::VerificationAlgorithm = match dss.scheme {
        SignatureScheme::ECDSA_NISTP256_SHA256 => &sig::ECDSA_P256_SHA256_ASN1,
        SignatureScheme::ECDSA_NISTP384_SHA384 => &sig::ECDSA_P384_SHA384_ASN1,
        SignatureScheme::ED25519 => &sig::ED25519,
        SignatureScheme::RSA_PSS_SHA256 => &sig::RSA_PSS_2048_8192_SHA256,
        SignatureScheme::RSA_PSS_SHA384 => &sig::RSA_PSS_2048_8192_SHA384,
        SignatureScheme::RSA_PSS_SHA512 => &sig::RSA_PSS_2048_8192_SHA512,
        SignatureScheme::RSA_PKCS1_SHA256 if tls12 => &sig::RSA_PKCS1_2048_8192_SHA256,
        SignatureScheme::RSA_PKCS1_SHA384 if tls12 => &sig::RSA_PKCS1_2048_8192_SHA384,
        SignatureScheme::RSA_PKCS1_SHA512 if tls12 => &sig::RSA_PKCS1_2048_8192_SHA512,
        _ => {
            return Err(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ));
        }
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
    let key = &parsed.public_key().subject_public_key.data;
    sig::UnparsedPublicKey::new(alg, key)
        .verify(message, dss.signature())
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature))?;
    Ok(HandshakeSignatureValid::assertion())
}

async fn tls_connect(
    host: &str,
    tcp: TcpStream,
    alpn: Vec<Vec<u8>>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ChallengeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(ChallengeErrorKind::Tls, format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
    let alpn_offered = !alpn.is_empty();
    config.alpn_protocols = alpn;
    let name = ServerName::try_from(host.to_string()).map_err(|_| {
        fail(
            ChallengeErrorKind::Tls,
            format!("{host:?} is not a valid SNI name"),
        )
    })?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| {
            let offered = if alpn_offered {
                " offering acme-tls/1"
            } else {
                ""
            };
            fail(
                ChallengeErrorKind::Tls,
                format!("TLS handshake with {host}{offered} failed: {e}"),
            )
        })
}

/// tls-alpn-01: a TLS server for `domain` on the TLS port must negotiate `acme-tls/1` and
/// present a certificate whose only subjectAltName is `domain` and whose critical
/// id-pe-acmeIdentifier extension holds SHA-256 of the key authorization.
pub async fn tls_alpn01(
    cfg: &ValidatorConfig,
    domain: &str,
    key_authorization: &str,
) -> Result<(), ChallengeError> {
    bounded(
        cfg,
        ChallengeErrorKind::Connection,
        "tls-alpn-01 validation",
        async {
            let domain = domain.to_ascii_lowercase();
            let tcp = cfg.connect(&domain, cfg.tls_port).await?;
            let tls = tls_connect(&domain, tcp, vec![ACME_TLS_ALPN.to_vec()]).await?;
            let (_, session) = tls.get_ref();
            if session.alpn_protocol() != Some(ACME_TLS_ALPN) {
                return Err(fail(
                    ChallengeErrorKind::Tls,
                    format!("{domain} did not negotiate the acme-tls/1 protocol"),
                ));
            }
            let cert = session
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or_else(|| fail(ChallengeErrorKind::Tls, "no certificate presented"))?;
            let digest = ring::digest::digest(&ring::digest::SHA256, key_authorization.as_bytes());
            check_alpn_certificate(cert.as_ref(), &domain, digest.as_ref())
                .map_err(|e| fail(ChallengeErrorKind::Unauthorized, e))
        },
    )
    .await
}

/// The certificate rules of RFC 8737 section 3.
fn check_alpn_certificate(der: &[u8], domain: &str, digest: &[u8]) -> Result<(), String> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the tls-alpn-01 certificate does not parse: {e}"))?;
    let mut sans = None;
    let mut acme = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => sans = Some(&san.general_names),
            _ if ext.oid.to_id_string() == OID_ACME_IDENTIFIER => acme = Some(ext),
            _ => {}
        }
    }
    let sans = sans.ok_or("the tls-alpn-01 certificate has no subjectAltName")?;
    match sans.as_slice() {
        [GeneralName::DNSName(n)] if n.eq_ignore_ascii_case(domain) => {}
        _ => {
            return Err(format!(
                "the tls-alpn-01 certificate must name exactly {domain} in its subjectAltName"
            ));
        }
    }
    let ext = acme.ok_or("the tls-alpn-01 certificate has no acmeIdentifier extension")?;
    if !ext.critical {
        return Err("the acmeIdentifier extension is not marked critical".into());
    }
    let value = ext.value;
    let inner = match value {
        [0x04, 0x20, rest @ ..] if rest.len() == 32 => rest,
        _ => return Err("the acmeIdentifier extension is not a 32-byte OCTET STRING".into()),
    };
    if !bool::from(subtle::ConstantTimeEq::ct_eq(inner, digest)) {
        return Err(
            "the acmeIdentifier extension does not match this challenge's key authorization".into(),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// dns-01
// ---------------------------------------------------------------------------

/// dns-01: a TXT record at `_acme-challenge.{domain}` (or where its CNAMEs lead) must hold
/// base64url(SHA-256(key authorization)).
pub async fn dns01(
    cfg: &ValidatorConfig,
    domain: &str,
    key_authorization: &str,
) -> Result<(), ChallengeError> {
    bounded(cfg, ChallengeErrorKind::Dns, "dns-01 validation", async {
        let name = format!(
            "_acme-challenge.{}",
            domain.trim_end_matches('.').to_ascii_lowercase()
        );
        let expected =
            b64(ring::digest::digest(&ring::digest::SHA256, key_authorization.as_bytes()).as_ref());
        let server = match cfg.dns_server {
            Some(s) => s,
            None => system_resolver()?,
        };
        let records = query_txt(server, &name, cfg.timeout).await?;
        if records.iter().any(|r| r.as_bytes() == expected.as_bytes()) {
            return Ok(());
        }
        Err(fail(
            ChallengeErrorKind::Unauthorized,
            if records.is_empty() {
                format!("no TXT record found at {name}")
            } else {
                format!(
                    "incorrect TXT record {:?} found at {name} (expected {expected:?})",
                    shown(records[0].as_bytes(), 100)
                )
            },
        ))
    })
    .await
}

/// The first `nameserver` of /etc/resolv.conf.
fn system_resolver() -> Result<SocketAddr, ChallengeError> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
        .ok_or_else(|| {
            fail(
                ChallengeErrorKind::Dns,
                "no DNS resolver: set [acme] dns_server or a nameserver in /etc/resolv.conf",
            )
        })
}

/// The TXT strings at `name`, following CNAMEs in the answer. NXDOMAIN and NODATA give an
/// empty list; other failures are errors.
async fn query_txt(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<String>, ChallengeError> {
    let dns = |d: String| fail(ChallengeErrorKind::Dns, d);
    let mut id = [0u8; 2];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
        .map_err(|_| dns("no randomness for a DNS query id".into()))?;
    let id = u16::from_be_bytes(id);
    let query = dns_query(id, name).map_err(dns)?;
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind)
        .await
        .map_err(|e| dns(format!("DNS socket: {e}")))?;
    socket
        .connect(server)
        .await
        .map_err(|e| dns(format!("DNS server {server}: {e}")))?;
    let mut buf = vec![0u8; 4096];
    let mut answer = None;
    let per_try = timeout / 3;
    'tries: for _ in 0..3 {
        socket
            .send(&query)
            .await
            .map_err(|e| dns(format!("DNS server {server}: {e}")))?;
        let deadline = tokio::time::Instant::now() + per_try;
        loop {
            match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Err(_) => continue 'tries,
                Ok(Err(e)) => return Err(dns(format!("DNS server {server}: {e}"))),
                Ok(Ok(n)) => {
                    let msg = &buf[..n];
                    // Not ours (a late answer to an earlier try, or spoofed): keep waiting.
                    if msg.len() < 12 || u16::from_be_bytes([msg[0], msg[1]]) != id {
                        continue;
                    }
                    answer = Some(msg.to_vec());
                    break 'tries;
                }
            }
        }
    }
    let mut answer = answer.ok_or_else(|| dns(format!("DNS server {server} did not answer")))?;
    if answer[2] & 0x02 != 0 {
        answer = query_tcp(server, &query, timeout).await?;
    }
    parse_txt_answer(&answer, id, name).map_err(dns)
}

/// The same query over TCP (the UDP answer was truncated).
async fn query_tcp(
    server: SocketAddr,
    query: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, ChallengeError> {
    let dns = |d: String| fail(ChallengeErrorKind::Dns, d);
    let exchange = async {
        let mut s = TcpStream::connect(server).await?;
        let len = u16::try_from(query.len()).unwrap_or(u16::MAX);
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        s.write_all(&framed).await?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await?;
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut msg).await?;
        Ok::<_, std::io::Error>(msg)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(e)) => Err(dns(format!("DNS server {server} over TCP: {e}"))),
        Err(_) => Err(dns(format!("DNS server {server} over TCP timed out"))),
    }
}

/// A recursive TXT query for `name`.
fn dns_query(id: u16, name: &str) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    if name.len() > 253 {
        return Err(format!("{name} is too long for DNS"));
    }
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..=63).contains(l))
            .ok_or_else(|| format!("{name} has an empty or over-long label"))?;
        q.push(len);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&TYPE_TXT.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    Ok(q)
}

/// Reads a (possibly compressed) name at `pos`; returns it and the position after it.
fn read_name(msg: &[u8], mut pos: usize) -> Result<(String, usize), String> {
    let bad = || "malformed name in the DNS answer".to_string();
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *msg.get(pos).ok_or_else(bad)?;
        match len {
            0 => {
                end.get_or_insert(pos + 1);
                break;
            }
            l if l & 0xc0 == 0xc0 => {
                let low = *msg.get(pos + 1).ok_or_else(bad)?;
                end.get_or_insert(pos + 2);
                jumps += 1;
                if jumps > 32 {
                    return Err(bad());
                }
                pos = usize::from(u16::from_be_bytes([l & 0x3f, low]));
            }
            l if l & 0xc0 == 0 => {
                let l = usize::from(l);
                let label = msg.get(pos + 1..pos + 1 + l).ok_or_else(bad)?;
                labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
                pos += 1 + l;
            }
            _ => return Err(bad()),
        }
    }
    Ok((labels.join("."), end.ok_or_else(bad)?))
}

fn u16_at(msg: &[u8], pos: usize) -> Result<u16, String> {
    msg.get(pos..pos + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| "truncated DNS answer".to_string())
}

/// The TXT strings for `name` in an answer (each record's strings concatenated).
fn parse_txt_answer(msg: &[u8], id: u16, name: &str) -> Result<Vec<String>, String> {
    if msg.len() < 12 || u16_at(msg, 0)? != id || msg[2] & 0x80 == 0 {
        return Err("the DNS server sent something that is not an answer to the query".into());
    }
    match msg[3] & 0x0f {
        0 | 3 => {}
        2 => return Err(format!("SERVFAIL looking up TXT for {name}")),
        5 => return Err(format!("the DNS server refused to look up TXT for {name}")),
        r => return Err(format!("DNS error code {r} looking up TXT for {name}")),
    }
    let qd = u16_at(msg, 4)?;
    let an = u16_at(msg, 6)?;
    let mut pos = 12;
    for _ in 0..qd {
        let (_, next) = read_name(msg, pos)?;
        pos = next + 4;
    }
    let mut cnames: Vec<(String, String)> = Vec::new();
    let mut txts: Vec<(String, String)> = Vec::new();
    for _ in 0..an {
        let (owner, next) = read_name(msg, pos)?;
        let rtype = u16_at(msg, next)?;
        let rdlen = usize::from(u16_at(msg, next + 8)?);
        let rdata_at = next + 10;
        let rdata = msg
            .get(rdata_at..rdata_at + rdlen)
            .ok_or("truncated DNS answer")?;
        match rtype {
            TYPE_CNAME => cnames.push((owner, read_name(msg, rdata_at)?.0)),
            TYPE_TXT => {
                let mut value = Vec::new();
                let mut i = 0;
                while i < rdata.len() {
                    let l = usize::from(rdata[i]);
                    value.extend_from_slice(
                        rdata.get(i + 1..i + 1 + l).ok_or("malformed TXT record")?,
                    );
                    i += 1 + l;
                }
                txts.push((owner, String::from_utf8_lossy(&value).into_owned()));
            }
            _ => {}
        }
        pos = rdata_at + rdlen;
    }
    let mut names = vec![name.trim_end_matches('.').to_ascii_lowercase()];
    for _ in 0..8 {
        let more: Vec<String> = cnames
            .iter()
            .filter(|(o, t)| names.contains(o) && !names.contains(t))
            .map(|(_, t)| t.clone())
            .collect();
        if more.is_empty() {
            break;
        }
        names.extend(more);
    }
    Ok(txts
        .into_iter()
        .filter(|(o, _)| names.contains(o))
        .map(|(_, v)| v)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn loopback_cfg(port: u16) -> ValidatorConfig {
        ValidatorConfig {
            http_port: port,
            tls_port: port,
            hosts: [
                ("a.test".to_string(), IpAddr::from([127, 0, 0, 1])),
                ("b.test".to_string(), IpAddr::from([127, 0, 0, 1])),
            ]
            .into(),
            allow: vec!["127.0.0.0/8".parse().expect("net")],
            timeout: Duration::from_secs(3),
            ..ValidatorConfig::default()
        }
    }

    #[test]
    fn networks_parse_and_match() {
        let n: IpNet = "10.1.0.0/16".parse().expect("net");
        assert!(n.contains("10.1.255.3".parse().expect("ip")));
        assert!(!n.contains("10.2.0.1".parse().expect("ip")));
        assert!(
            n.contains("::ffff:10.1.2.3".parse().expect("ip")),
            "mapped v4"
        );
        let v6: IpNet = "fd00::/8".parse().expect("net");
        assert!(v6.contains("fd12::1".parse().expect("ip")));
        assert!(!v6.contains("10.1.2.3".parse().expect("ip")));
        let one: IpNet = "192.0.2.7".parse().expect("net");
        assert_eq!(one.to_string(), "192.0.2.7/32");
        for bad in ["10.1.0.1/16", "10.0.0.0/33", "nope", "::/129", "1.2.3.4/x"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn special_networks_are_refused_unless_allowed_and_deny_wins() {
        let mut cfg = ValidatorConfig::default();
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.5",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(cfg.check_address(ip).is_err(), "{ip} must be refused");
        }
        for ip in ["8.8.8.8", "2606:4700::1111", "151.101.1.69"] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(cfg.check_address(ip).is_ok(), "{ip} must be allowed");
        }
        cfg.allow.push("10.0.0.0/8".parse().expect("net"));
        assert!(cfg.check_address("10.9.9.9".parse().expect("ip")).is_ok());
        cfg.deny.push("10.9.0.0/16".parse().expect("net"));
        cfg.deny.push("8.8.8.0/24".parse().expect("net"));
        let e = cfg
            .check_address("10.9.9.9".parse().expect("ip"))
            .expect_err("deny wins");
        assert!(e.contains("10.9.0.0/16"), "{e}");
        assert!(cfg.check_address("8.8.8.8".parse().expect("ip")).is_err());
        assert!(cfg.check_address("10.8.0.1".parse().expect("ip")).is_ok());
    }

    /// Serves `answers` in order, one per connection, with raw HTTP bytes; returns the port
    /// and the requests seen.
    async fn http_server(answers: Vec<Vec<u8>>) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        http_server_on(listener, answers)
    }

    fn http_server_on(
        listener: TcpListener,
        answers: Vec<Vec<u8>>,
    ) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let mut requests = Vec::new();
            for answer in answers {
                let Ok((mut s, _)) = listener.accept().await else {
                    break;
                };
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                requests.push(String::from_utf8_lossy(&got).into_owned());
                let _ = s.write_all(&answer).await;
                let _ = s.shutdown().await;
            }
            requests
        });
        (port, task)
    }

    fn ok_body(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn http01_follows_redirects_to_the_key_authorization() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (_, server) = http_server_on(
            listener,
            vec![
                format!(
                    "HTTP/1.1 302 Found\r\nLocation: http://b.test:{port}/moved\r\n\
                     Content-Length: 0\r\n\r\n"
                )
                .into_bytes(),
                b"HTTP/1.1 301 Moved\r\nLocation: /final\r\nContent-Length: 0\r\n\r\n".to_vec(),
                ok_body("tok.thumb \n"),
            ],
        );
        http01(&loopback_cfg(port), "a.test", "tok", "tok.thumb")
            .await
            .expect("valid after two redirects");
        let seen = server.await.expect("server");
        assert!(
            seen[0].starts_with("GET /.well-known/acme-challenge/tok HTTP/1.1"),
            "{}",
            seen[0]
        );
        assert!(
            seen[0]
                .to_ascii_lowercase()
                .contains(&format!("host: a.test:{port}"))
        );
        assert!(seen[1].starts_with("GET /moved "), "{}", seen[1]);
        assert!(
            seen[1]
                .to_ascii_lowercase()
                .contains(&format!("host: b.test:{port}"))
        );
        assert!(seen[2].starts_with("GET /final "), "{}", seen[2]);
    }

    #[tokio::test]
    async fn http01_refusals() {
        // Wrong content, 404, a body over the cap, a redirect to an IP literal, to another
        // port, to another scheme, and a redirect loop.
        let cases: Vec<(Vec<Vec<u8>>, ChallengeErrorKind, &str)> = vec![
            (
                vec![ok_body("other.thumb")],
                ChallengeErrorKind::Unauthorized,
                "did not match",
            ),
            (
                vec![b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()],
                ChallengeErrorKind::Unauthorized,
                "HTTP 404",
            ),
            (
                vec![ok_body(&"x".repeat(MAX_BODY + 1))],
                ChallengeErrorKind::IncorrectResponse,
                "larger than",
            ),
            (
                vec![
                    b"HTTP/1.1 302 F\r\nLocation: http://127.0.0.1/x\r\nContent-Length: 0\r\n\r\n"
                        .to_vec(),
                ],
                ChallengeErrorKind::IncorrectResponse,
                "IP address",
            ),
            (
                vec![
                    b"HTTP/1.1 302 F\r\nLocation: http://b.test:1/x\r\nContent-Length: 0\r\n\r\n"
                        .to_vec(),
                ],
                ChallengeErrorKind::IncorrectResponse,
                "port 1",
            ),
            (
                vec![
                    b"HTTP/1.1 302 F\r\nLocation: ftp://b.test/x\r\nContent-Length: 0\r\n\r\n"
                        .to_vec(),
                ],
                ChallengeErrorKind::IncorrectResponse,
                "only http and https",
            ),
            (
                vec![
                    b"HTTP/1.1 302 F\r\nLocation: /again\r\nContent-Length: 0\r\n\r\n".to_vec();
                    MAX_REDIRECTS + 1
                ],
                ChallengeErrorKind::IncorrectResponse,
                "redirects",
            ),
        ];
        for (answers, kind, needle) in cases {
            let (port, server) = http_server(answers).await;
            let e = http01(&loopback_cfg(port), "a.test", "tok", "tok.thumb")
                .await
                .expect_err(needle);
            assert_eq!(e.kind, kind, "{needle}: {e}");
            assert!(e.detail.contains(needle), "{needle}: {e}");
            server.abort();
        }
    }

    #[tokio::test]
    async fn http01_refuses_loopback_without_allow_and_times_out_on_silence() {
        let (port, server) = http_server(vec![ok_body("tok.thumb")]).await;
        let mut cfg = loopback_cfg(port);
        cfg.allow.clear();
        let e = http01(&cfg, "a.test", "tok", "tok.thumb")
            .await
            .expect_err("loopback refused");
        assert_eq!(e.kind, ChallengeErrorKind::Connection);
        assert!(e.detail.contains("special-purpose"), "{e}");
        server.abort();

        // A server that accepts and never answers: bounded by the timeout.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let mut cfg = loopback_cfg(port);
        cfg.timeout = Duration::from_millis(500);
        let started = std::time::Instant::now();
        let e = http01(&cfg, "a.test", "tok", "tok.thumb")
            .await
            .expect_err("silent server");
        assert!(e.detail.contains("timed out"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
        hold.abort();
    }

    /// A tls-alpn-01 responder with the given certificate; returns its port.
    async fn alpn_server(
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
        alpn: &[u8],
    ) -> (u16, tokio::task::JoinHandle<()>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key_der =
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
        let signing = provider
            .key_provider
            .load_private_key(key_der)
            .expect("signing key");
        // Not with_single_cert: it refuses the critical acmeIdentifier extension.
        let certified = Arc::new(rustls::sign::CertifiedKey::new(
            vec![cert.der().clone()],
            signing,
        ));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(certified)));
        config.alpn_protocols = vec![alpn.to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(s).await {
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        (port, task)
    }

    #[derive(Debug)]
    struct Fixed(Arc<rustls::sign::CertifiedKey>);

    impl rustls::server::ResolvesServerCert for Fixed {
        fn resolve(
            &self,
            _hello: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    fn alpn_cert(
        names: &[&str],
        digest: &[u8],
        critical: bool,
    ) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let mut ext = rcgen::CustomExtension::new_acme_identifier(digest);
        ext.set_criticality(critical);
        params.custom_extensions = vec![ext];
        (params.self_signed(&key).expect("cert"), key)
    }

    #[tokio::test]
    async fn tls_alpn01_checks_protocol_names_and_the_critical_identifier() {
        let key_auth = "tok.thumb";
        let digest = ring::digest::digest(&ring::digest::SHA256, key_auth.as_bytes());
        let (cert, key) = alpn_cert(&["a.test"], digest.as_ref(), true);
        let (port, server) = alpn_server(cert, key, ACME_TLS_ALPN).await;
        tls_alpn01(&loopback_cfg(port), "a.test", key_auth)
            .await
            .expect("valid tls-alpn-01");
        let e = tls_alpn01(&loopback_cfg(port), "a.test", "tok.other")
            .await
            .expect_err("other key authorization");
        assert_eq!(e.kind, ChallengeErrorKind::Unauthorized);
        assert!(e.detail.contains("does not match"), "{e}");
        server.abort();

        let bad: Vec<(Vec<&str>, bool, &[u8], &str)> = vec![
            (
                vec!["a.test", "b.test"],
                true,
                ACME_TLS_ALPN,
                "exactly a.test",
            ),
            (vec!["b.test"], true, ACME_TLS_ALPN, "exactly a.test"),
            (vec!["a.test"], false, ACME_TLS_ALPN, "not marked critical"),
            (vec!["a.test"], true, b"http/1.1", "acme-tls/1"),
        ];
        for (names, critical, alpn, needle) in bad {
            let (cert, key) = alpn_cert(&names, digest.as_ref(), critical);
            let (port, server) = alpn_server(cert, key, alpn).await;
            let e = tls_alpn01(&loopback_cfg(port), "a.test", key_auth)
                .await
                .expect_err(needle);
            assert!(e.detail.contains(needle), "{needle}: {e}");
            server.abort();
        }
    }

    /// A one-question DNS responder answering with `records` (CNAMEs then TXTs, compressed
    /// owner names), or with `rcode` and no records.
    async fn dns_server(
        cname: Option<&'static str>,
        txts: Vec<&'static str>,
        rcode: u8,
    ) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                let q = &buf[..n];
                let qend = read_name(q, 12).expect("question").1 + 4;
                let mut r = q[..qend].to_vec();
                r[2] = 0x81;
                r[3] = 0x80 | rcode;
                let mut count = 0u16;
                let mut owner = vec![0xc0, 12];
                if let Some(target) = cname {
                    let mut rdata = Vec::new();
                    for l in target.split('.') {
                        rdata.push(u8::try_from(l.len()).expect("label"));
                        rdata.extend_from_slice(l.as_bytes());
                    }
                    rdata.push(0);
                    let at = u16::try_from(r.len() + 12).expect("pos");
                    r.extend_from_slice(&owner);
                    r.extend_from_slice(&[0, 5, 0, 1, 0, 0, 0, 60]);
                    r.extend_from_slice(&u16::try_from(rdata.len()).expect("len").to_be_bytes());
                    r.extend_from_slice(&rdata);
                    owner = vec![0xc0 | (at >> 8) as u8, (at & 0xff) as u8];
                    count += 1;
                }
                for t in &txts {
                    r.extend_from_slice(&owner);
                    r.extend_from_slice(&[0, 16, 0, 1, 0, 0, 0, 60]);
                    // Split long values into two character-strings, as real servers may.
                    let (a, b) = t.split_at(t.len() / 2);
                    r.extend_from_slice(&u16::try_from(t.len() + 2).expect("len").to_be_bytes());
                    r.push(u8::try_from(a.len()).expect("len"));
                    r.extend_from_slice(a.as_bytes());
                    r.push(u8::try_from(b.len()).expect("len"));
                    r.extend_from_slice(b.as_bytes());
                    count += 1;
                }
                r[6..8].copy_from_slice(&count.to_be_bytes());
                let _ = socket.send_to(&r, peer).await;
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn dns01_reads_txt_records_through_cnames() {
        let key_auth = "tok.thumb";
        let expected: &'static str = Box::leak(
            b64(ring::digest::digest(&ring::digest::SHA256, key_auth.as_bytes()).as_ref())
                .into_boxed_str(),
        );
        let mut cfg = ValidatorConfig {
            timeout: Duration::from_secs(3),
            ..ValidatorConfig::default()
        };

        let (addr, server) = dns_server(None, vec!["unrelated", expected], 0).await;
        cfg.dns_server = Some(addr);
        dns01(&cfg, "a.test", key_auth).await.expect("valid dns-01");
        server.abort();

        let (addr, server) = dns_server(Some("validation.elsewhere.test"), vec![expected], 0).await;
        cfg.dns_server = Some(addr);
        dns01(&cfg, "A.Test", key_auth)
            .await
            .expect("valid through a CNAME");
        server.abort();

        let (addr, server) = dns_server(None, vec!["wrong-value"], 0).await;
        cfg.dns_server = Some(addr);
        let e = dns01(&cfg, "a.test", key_auth)
            .await
            .expect_err("wrong value");
        assert_eq!(e.kind, ChallengeErrorKind::Unauthorized);
        assert!(
            e.detail.contains("incorrect TXT record \"wrong-value\""),
            "{e}"
        );
        server.abort();

        let (addr, server) = dns_server(None, vec![], 3).await;
        cfg.dns_server = Some(addr);
        let e = dns01(&cfg, "a.test", key_auth).await.expect_err("nxdomain");
        assert!(
            e.detail
                .contains("no TXT record found at _acme-challenge.a.test"),
            "{e}"
        );
        server.abort();

        let (addr, server) = dns_server(None, vec![], 2).await;
        cfg.dns_server = Some(addr);
        let e = dns01(&cfg, "a.test", key_auth).await.expect_err("servfail");
        assert_eq!(e.kind, ChallengeErrorKind::Dns);
        assert!(e.detail.contains("SERVFAIL"), "{e}");
        server.abort();

        // Nobody answers: bounded.
        let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        cfg.dns_server = Some(silent.local_addr().expect("addr"));
        cfg.timeout = Duration::from_millis(600);
        let e = dns01(&cfg, "a.test", key_auth).await.expect_err("silent");
        assert_eq!(e.kind, ChallengeErrorKind::Dns);
    }

    #[test]
    fn malformed_dns_answers_are_errors_not_panics() {
        let q = dns_query(7, "_acme-challenge.a.test").expect("query");
        let mut r = q.clone();
        r[2] |= 0x80;
        r[7] = 1; // one answer that is not there
        assert!(parse_txt_answer(&r, 7, "_acme-challenge.a.test").is_err());
        let mut looped = q.clone();
        looped[2] |= 0x80;
        looped[7] = 1;
        looped.extend_from_slice(&[0xc0, u8::try_from(q.len()).expect("pos")]);
        assert!(parse_txt_answer(&looped, 7, "_acme-challenge.a.test").is_err());
        assert!(
            parse_txt_answer(&r, 8, "_acme-challenge.a.test").is_err(),
            "other id"
        );
        assert!(parse_txt_answer(&[0; 5], 0, "x").is_err());
        assert!(dns_query(1, &format!("{}.test", "a".repeat(64))).is_err());
    }
}
