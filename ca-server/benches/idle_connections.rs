//! Server memory with many idle TLS connections, for `scripts/bench.sh footprint`: opens
//! `--connections N` TLS connections to a running `ca-server serve`, sends one `GET /healthz`
//! on each (a connection that never sends a byte is closed after 10 s by design), keeps them all
//! open and quiet, and prints one JSON line with the server's RSS before and with them open.
//! Loopback only; bounded in time; closes everything when it ends.
//!
//! ```text
//! idle_connections --url https://127.0.0.1:PORT --ca-bundle FILE --pid PID --connections N
//!                  [--hold SECONDS]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("idle_connections: {msg}");
    std::process::exit(2)
}

/// VmRSS of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| fail(format!("/proc/{pid}/status: {e}")))
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| fail("no VmRSS"))
}

/// Open descriptors of `pid` (its sockets among them).
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

struct Args {
    addr: std::net::SocketAddr,
    roots: rustls::RootCertStore,
    pid: u32,
    connections: usize,
    /// Seconds to keep the connections open after measuring, then count the server's sockets
    /// again (does it close idle keep-alive connections?).
    hold: u64,
}

fn parse_args() -> Args {
    let mut kv = std::collections::HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--bench" {
            continue;
        }
        let Some(k) = a.strip_prefix("--") else {
            fail(format!("unexpected argument {a:?}"))
        };
        let v = it
            .next()
            .unwrap_or_else(|| fail(format!("--{k} needs a value")));
        kv.insert(k.to_string(), v);
    }
    let need = |k: &str| {
        kv.get(k)
            .cloned()
            .unwrap_or_else(|| fail(format!("--{k} is required")))
    };
    let url = need("url");
    let addr: std::net::SocketAddr = url
        .strip_prefix("https://")
        .and_then(|a| a.parse().ok())
        .filter(|a: &std::net::SocketAddr| a.ip().is_loopback())
        .unwrap_or_else(|| fail(format!("--url {url}: https://127.x.x.x:PORT")));
    let pem =
        std::fs::read(need("ca-bundle")).unwrap_or_else(|e| fail(format!("--ca-bundle: {e}")));
    let mut roots = rustls::RootCertStore::empty();
    let certs =
        ca_wire::client::certs_from_pem(&pem).unwrap_or_else(|e| fail(format!("--ca-bundle: {e}")));
    for cert in certs {
        roots
            .add(cert)
            .unwrap_or_else(|e| fail(format!("--ca-bundle: {e}")));
    }
    Args {
        addr,
        roots,
        pid: need("pid")
            .parse()
            .unwrap_or_else(|_| fail("--pid: a number")),
        connections: need("connections")
            .parse::<usize>()
            .unwrap_or_else(|_| fail("--connections: a number"))
            .clamp(1, 50_000),
        hold: kv
            .get("hold")
            .map_or(Ok(0), |h| h.parse::<u64>())
            .unwrap_or_else(|_| fail("--hold: seconds"))
            .min(600),
    }
}

/// One connection: TLS, one request, its answer read; then the stream, kept open.
async fn open(
    addr: std::net::SocketAddr,
    connector: tokio_rustls::TlsConnector,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    // The answer is small: headers and a short body, complete once the body length is in.
    loop {
        let n = tls.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before answering".into());
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= len {
                if !head.starts_with("HTTP/1.1 200") {
                    return Err(head.lines().next().unwrap_or("").to_string());
                }
                return Ok(tls);
            }
        }
    }
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(e));
    runtime.block_on(async move {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| fail(e))
            .with_root_certificates(args.roots.clone())
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let before_rss = rss_kib(args.pid);
        let before_fds = fds(args.pid);
        let started = Instant::now();
        // 64 handshakes in flight at a time; every connection is opened within 60 s or the run
        // reports how many it got.
        let mut open_streams = Vec::with_capacity(args.connections);
        let mut failures = 0usize;
        let mut first_error = None;
        let mut pending = tokio::task::JoinSet::new();
        let mut next = 0usize;
        while (next < args.connections || !pending.is_empty())
            && started.elapsed() < Duration::from_secs(60)
        {
            while next < args.connections && pending.len() < 64 {
                pending.spawn(open(args.addr, connector.clone()));
                next += 1;
            }
            match pending.join_next().await {
                Some(Ok(Ok(s))) => open_streams.push(s),
                Some(Ok(Err(e))) => {
                    failures += 1;
                    first_error.get_or_insert(e);
                }
                Some(Err(e)) => {
                    failures += 1;
                    first_error.get_or_insert(e.to_string());
                }
                None => break,
            }
        }
        let opened_in = started.elapsed();
        // Let the server settle, then read its memory with every connection open and idle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let with_rss = rss_kib(args.pid);
        let with_fds = fds(args.pid);
        let open = open_streams.len();
        tokio::time::sleep(Duration::from_secs(args.hold)).await;
        let after_hold_fds = fds(args.pid);
        println!(
            "{}",
            serde_json::json!({
                "connections_open": open,
                "failures": failures,
                "first_error": first_error,
                "opened_in_s": (opened_in.as_secs_f64() * 10.0).round() / 10.0,
                "server_fds_before": before_fds,
                "server_fds_with": with_fds,
                "held_s": args.hold,
                "server_fds_after_hold": after_hold_fds,
                "server_rss_before_mib": before_rss as f64 / 1024.0,
                "server_rss_with_mib": with_rss as f64 / 1024.0,
                "kib_per_connection": if open > 0 {
                    (with_rss.saturating_sub(before_rss)) as f64 / open as f64
                } else {
                    0.0
                },
            })
        );
        drop(open_streams);
    });
}
