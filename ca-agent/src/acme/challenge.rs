//! Proving control of a name to an ACME CA: http-01 through a standalone responder that listens
//! only while an order is pending, or through files in a web server's webroot; dns-01 through a
//! hook command that sets and removes the TXT record. Every provision is undone afterwards,
//! whatever happened to the order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::hooks::run_argv;

/// The path prefix of http-01 challenge files.
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// A running standalone http-01 responder; stops when dropped.
pub struct Http01Responder {
    stop: Option<oneshot::Sender<()>>,
    addr: SocketAddr,
}

impl Http01Responder {
    /// Binds `addr` and answers `GET /.well-known/acme-challenge/<token>` with the key
    /// authorization of `token` (from `answers`); everything else is 404.
    pub async fn start(
        addr: SocketAddr,
        answers: HashMap<String, String>,
    ) -> Result<Http01Responder, String> {
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            // A host without IPv6 cannot bind the dual-stack default `[::]`: take IPv4 alone.
            Err(e) if addr.is_ipv6() && addr.ip().is_unspecified() => {
                TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, addr.port()))
                    .await
                    .map_err(|_| format!("http-01 responder cannot listen on {addr}: {e}"))?
            }
            Err(e) => return Err(format!("http-01 responder cannot listen on {addr}: {e}")),
        };
        let addr = listener.local_addr().unwrap_or(addr);
        let answers = Arc::new(answers);
        let (stop, mut stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                };
                let answers = answers.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let body = req
                                .uri()
                                .path()
                                .strip_prefix(HTTP01_PREFIX)
                                .and_then(|token| answers.get(token).cloned());
                            async move {
                                match body {
                                    Some(b) => Response::builder()
                                        .header("content-type", "application/octet-stream")
                                        .body(Full::new(Bytes::from(b))),
                                    None => Response::builder()
                                        .status(404)
                                        .body(Full::new(Bytes::from_static(b"not found\n"))),
                                }
                            }
                        });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                    let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
                });
            }
        });
        tracing::debug!(%addr, "http-01 responder listening");
        Ok(Http01Responder {
            stop: Some(stop),
            addr,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Http01Responder {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Challenge files written into a webroot; removed when dropped.
pub struct WebrootFiles {
    files: Vec<PathBuf>,
}

impl WebrootFiles {
    /// Writes one file per token under `webroot/.well-known/acme-challenge/` (world-readable:
    /// the web server serves them).
    pub fn write(
        webroot: &Path,
        answers: &HashMap<String, String>,
    ) -> Result<WebrootFiles, String> {
        let dir = webroot.join(HTTP01_PREFIX.trim_matches('/'));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut written = WebrootFiles { files: Vec::new() };
        for (token, answer) in answers {
            // Tokens are base64url by RFC 8555; anything else could escape the directory.
            if token.is_empty()
                || !token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!("the CA sent an unusable http-01 token {token:?}"));
            }
            let path = dir.join(token);
            crate::writer::replace_file(&path, answer.as_bytes(), 0o644)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            written.files.push(path);
        }
        Ok(written)
    }
}

impl Drop for WebrootFiles {
    fn drop(&mut self) {
        for f in &self.files {
            if let Err(e) = std::fs::remove_file(f) {
                tracing::warn!(file = %f.display(), error = %e, "cannot remove challenge file");
            }
        }
    }
}

/// One TXT record for dns-01.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    /// The name being validated, without `*.`.
    pub domain: String,
    /// `_acme-challenge.<domain>.`
    pub name: String,
    /// The TXT value.
    pub value: String,
}

impl DnsRecord {
    /// The record for `identifier` (a wildcard's record is its base name's).
    pub fn new(identifier: &str, value: String) -> DnsRecord {
        let domain = identifier
            .strip_prefix("*.")
            .unwrap_or(identifier)
            .trim_end_matches('.')
            .to_string();
        DnsRecord {
            name: format!("_acme-challenge.{domain}."),
            domain,
            value,
        }
    }
}

/// Records set through the dns-01 hook; [`DnsRecords::cleanup`] removes them.
pub struct DnsRecords {
    hook: Vec<String>,
    timeout: Duration,
    records: Vec<DnsRecord>,
}

impl DnsRecords {
    /// Runs `hook present` for each record. On a failure the records already set are removed
    /// before the error returns.
    pub async fn present(
        hook: &[String],
        timeout: Duration,
        records: Vec<DnsRecord>,
    ) -> Result<DnsRecords, String> {
        let mut set = DnsRecords {
            hook: hook.to_vec(),
            timeout,
            records: Vec::new(),
        };
        for r in records {
            if let Err(e) = run_dns_hook(hook, "present", &r, timeout).await {
                set.cleanup().await;
                return Err(e);
            }
            set.records.push(r);
        }
        Ok(set)
    }

    /// Runs `hook cleanup` for every record set; failures are logged only.
    pub async fn cleanup(&mut self) {
        for r in std::mem::take(&mut self.records) {
            if let Err(e) = run_dns_hook(&self.hook, "cleanup", &r, self.timeout).await {
                tracing::warn!(record = %r.name, error = %e, "dns-01 cleanup failed");
            }
        }
    }
}

async fn run_dns_hook(
    hook: &[String],
    action: &str,
    r: &DnsRecord,
    timeout: Duration,
) -> Result<(), String> {
    let mut argv = hook.to_vec();
    argv.push(action.to_string());
    run_argv(
        &argv,
        &[
            ("ACME_ACTION", action),
            ("ACME_DOMAIN", &r.domain),
            ("ACME_RECORD_NAME", &r.name),
            ("ACME_RECORD_VALUE", &r.value),
        ],
        timeout,
    )
    .await
    .map_err(|e| format!("dns hook ({action} {}): {e}", r.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_records_sit_at_the_base_name() {
        let r = DnsRecord::new("*.example.com", "v".into());
        assert_eq!(r.domain, "example.com");
        assert_eq!(r.name, "_acme-challenge.example.com.");
        assert_eq!(
            DnsRecord::new("www.example.com.", "v".into()).name,
            "_acme-challenge.www.example.com."
        );
    }

    #[tokio::test]
    async fn the_responder_answers_only_known_tokens_and_stops_when_dropped() {
        let responder = Http01Responder::start(
            "127.0.0.1:0".parse().expect("addr"),
            HashMap::from([("tok".to_string(), "tok.thumb".to_string())]),
        )
        .await
        .expect("start");
        let addr = responder.addr();
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await?;
            let mut out = String::new();
            s.read_to_string(&mut out).await?;
            Ok::<String, std::io::Error>(out)
        };
        let ok = get("/.well-known/acme-challenge/tok").await.expect("get");
        assert!(
            ok.starts_with("HTTP/1.1 200") && ok.ends_with("tok.thumb"),
            "{ok}"
        );
        let missing = get("/.well-known/acme-challenge/other").await.expect("get");
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        drop(responder);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[test]
    fn webroot_files_are_removed_and_hostile_tokens_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let files = WebrootFiles::write(
            tmp.path(),
            &HashMap::from([("abc_-1".to_string(), "abc_-1.t".to_string())]),
        )
        .expect("write");
        let path = tmp.path().join(".well-known/acme-challenge/abc_-1");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "abc_-1.t");
        drop(files);
        assert!(!path.exists());
        assert!(
            WebrootFiles::write(
                tmp.path(),
                &HashMap::from([("../../etc/x".to_string(), "x".to_string())])
            )
            .is_err()
        );
    }
}
