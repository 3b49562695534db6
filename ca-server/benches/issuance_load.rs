//! Load generator for `scripts/bench.sh issuance` and `postgres`: drives a running CA (ours or
//! cfssl) at a fixed concurrency for a bounded time and prints one JSON line: certificates per
//! second, latency percentiles, and, given the servers' pids and disk, their CPU time and disk
//! flushes per certificate. Loopback only; stops by itself.
//!
//! ```text
//! issuance_load --mode enroll|renew|renew-new-conn|cfssl --url URL --concurrency N --seconds S
//!               --csr FILE [--ca-bundle FILE] [--token T] [--cert CHAIN --key KEY] [--dns NAME]
//!               [--pid PID] [--disk vda]
//! ```
//!
//! `--url` may be given several times or as a comma-separated list (replicas of one CA): the
//! clients are spread round-robin over them, each client sticking to one URL. `--pid` may be given
//! several times or comma-separated too: the CPU time is summed over those processes and their
//! direct children (so a PostgreSQL postmaster's pid counts its backends).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ca_wire::client::{ApiClient, ClientIdentity};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Enroll,
    Renew,
    RenewNewConn,
    Cfssl,
}

struct Args {
    mode: Mode,
    urls: Vec<String>,
    concurrency: usize,
    seconds: u64,
    csr: String,
    ca_bundle: Vec<u8>,
    token: String,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    dns: String,
    pids: Vec<u32>,
    disk: Option<String>,
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("issuance_load: {msg}");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut kv: HashMap<String, String> = HashMap::new();
    // Repeatable, each value possibly a comma-separated list.
    let mut lists: HashMap<String, Vec<String>> = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        // cargo bench passes --bench; nothing else is a flag without a value.
        if a == "--bench" {
            continue;
        }
        let Some(key) = a.strip_prefix("--") else {
            fail(format!("unexpected argument {a:?}"))
        };
        let value = it
            .next()
            .unwrap_or_else(|| fail(format!("--{key} needs a value")));
        if key == "url" || key == "pid" {
            let items = value.split(',').map(str::trim).filter(|v| !v.is_empty());
            lists
                .entry(key.to_string())
                .or_default()
                .extend(items.map(String::from));
        } else {
            kv.insert(key.to_string(), value);
        }
    }
    let get = |k: &str| kv.get(k).cloned();
    let need = |k: &str| get(k).unwrap_or_else(|| fail(format!("--{k} is required")));
    let read = |k: &str| std::fs::read(need(k)).unwrap_or_else(|e| fail(format!("--{k}: {e}")));
    let mode = match need("mode").as_str() {
        "enroll" => Mode::Enroll,
        "renew" => Mode::Renew,
        "renew-new-conn" => Mode::RenewNewConn,
        "cfssl" => Mode::Cfssl,
        m => fail(format!("unknown mode {m:?}")),
    };
    let urls = lists.remove("url").unwrap_or_default();
    if urls.is_empty() {
        fail("--url is required");
    }
    for url in &urls {
        if !(url.starts_with("https://127.") || url.starts_with("http://127.")) {
            fail(format!("--url {url}: must be a loopback address"));
        }
    }
    let pids = lists
        .remove("pid")
        .unwrap_or_default()
        .iter()
        .map(|p| {
            p.parse()
                .unwrap_or_else(|_| fail(format!("--pid {p}: a number")))
        })
        .collect();
    Args {
        mode,
        urls,
        concurrency: need("concurrency")
            .parse()
            .unwrap_or_else(|_| fail("--concurrency: a number")),
        seconds: need("seconds")
            .parse::<u64>()
            .unwrap_or_else(|_| fail("--seconds: a number"))
            .clamp(1, 120),
        csr: String::from_utf8(read("csr")).unwrap_or_else(|_| fail("--csr: not text")),
        ca_bundle: if mode == Mode::Cfssl {
            Vec::new()
        } else {
            read("ca-bundle")
        },
        token: get("token").unwrap_or_default(),
        identity: match (get("cert"), get("key")) {
            (Some(_), Some(_)) => Some((read("cert"), read("key"))),
            _ => None,
        },
        dns: get("dns").unwrap_or_default(),
        pids,
        disk: get("disk"),
    }
}

/// Fields of `/proc/<pid>/stat` after the command name (the state is field 0).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(String::from).collect())
}

/// Sum of the fields at `idx`, in clock ticks.
fn ticks(f: &[String], idx: &[usize]) -> Option<f64> {
    idx.iter()
        .map(|&i| f.get(i)?.parse::<f64>().ok())
        .sum::<Option<f64>>()
}

/// CPU seconds of `pids` and their children: utime + stime of each, cutime + cstime (children
/// already waited for) and utime + stime of their live direct children. None unless every pid
/// is there.
fn cpu_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    let mut total = 0.0;
    for &pid in pids {
        total += ticks(&stat_fields(pid)?, &[11, 12, 13, 14])?;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A child that goes away meanwhile is found in its parent's cutime on the next reading.
        if let Some(f) = stat_fields(child)
            && f.get(1)
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|ppid| pids.contains(&ppid))
        {
            total += ticks(&f, &[11, 12]).unwrap_or(0.0);
        }
    }
    Some(total / 100.0)
}

/// Completed flush requests of block device `disk`.
fn flushes(disk: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/sys/block/{disk}/stat")).ok()?;
    stat.split_whitespace().nth(15)?.parse().ok()
}

type Plain = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// One request of `mode`; true when a certificate came back.
async fn one(
    args: &Args,
    url: &str,
    body: &[u8],
    shared: Option<&ApiClient>,
    plain: &Plain,
) -> bool {
    match args.mode {
        Mode::Cfssl => {
            let req = hyper::Request::post(format!("{url}/api/v1/cfssl/sign"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::copy_from_slice(body)));
            let Ok(req) = req else { return false };
            match plain.request(req).await {
                Ok(resp) => {
                    let ok = resp.status() == 200;
                    let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                    ok && body.is_ok_and(|b| b.windows(11).any(|w| w == b"BEGIN CERTI"))
                }
                Err(_) => false,
            }
        }
        Mode::RenewNewConn => {
            // What agents do: a new client (so a new TLS connection) per renewal.
            let Some((cert, key)) = &args.identity else {
                return false;
            };
            let Ok(id) = ClientIdentity::from_pem(cert, key) else {
                return false;
            };
            let Ok(client) = ApiClient::new(url, &args.ca_bundle, Some(id)) else {
                return false;
            };
            matches!(client.post_body("/v1/renew", body.to_vec()).await, Ok(r) if r.status == 201)
        }
        Mode::Enroll | Mode::Renew => {
            let path = if args.mode == Mode::Enroll {
                "/v1/enroll"
            } else {
                "/v1/renew"
            };
            match shared {
                Some(c) => {
                    matches!(c.post_body(path, body.to_vec()).await, Ok(r) if r.status == 201)
                }
                None => false,
            }
        }
    }
}

/// The client all tasks on `url` share (enroll, renew over keep-alive); None for the modes that
/// make their own.
fn shared_client(args: &Args, url: &str) -> Option<Arc<ApiClient>> {
    let client = match args.mode {
        Mode::Enroll => ApiClient::new(url, &args.ca_bundle, None),
        Mode::Renew => {
            let (cert, key) = args
                .identity
                .clone()
                .unwrap_or_else(|| fail("--cert and --key are required"));
            let id = ClientIdentity::from_pem(&cert, &key).unwrap_or_else(|e| fail(e));
            ApiClient::new(url, &args.ca_bundle, Some(id))
        }
        Mode::RenewNewConn | Mode::Cfssl => return None,
    };
    Some(Arc::new(client.unwrap_or_else(|e| fail(e))))
}

fn main() {
    let args = Arc::new(parse_args());
    let body = match args.mode {
        Mode::Enroll => {
            serde_json::json!({ "token": args.token, "csr": args.csr, "dns": [args.dns] })
        }
        Mode::Renew | Mode::RenewNewConn => serde_json::json!({ "csr": args.csr }),
        Mode::Cfssl => serde_json::json!({ "certificate_request": args.csr }),
    };
    let body: Arc<Vec<u8>> = Arc::new(serde_json::to_vec(&body).unwrap_or_default());
    // One thread: the generator shares the machine with the server and should cost little.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(e));
    rt.block_on(async {
        // One shared client per URL (enroll, renew over keep-alive).
        let shared: Vec<_> = args.urls.iter().map(|u| shared_client(&args, u)).collect();
        let plain: Plain =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        // Warm up the connections (of every URL) before measuring.
        for (url, shared) in args.urls.iter().zip(&shared) {
            for _ in 0..args.concurrency.min(4) {
                one(&args, url, &body, shared.as_deref(), &plain).await;
            }
        }
        let cpu0 = cpu_seconds(&args.pids);
        let flush0 = args.disk.as_deref().and_then(flushes);
        let start = Instant::now();
        let deadline = start + Duration::from_secs(args.seconds);
        let mut tasks = Vec::new();
        for i in 0..args.concurrency {
            // Round-robin: client i sticks to URL i mod n.
            let u = i % args.urls.len();
            let (args, body, plain) = (args.clone(), body.clone(), plain.clone());
            let shared = shared[u].clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if one(&args, &args.urls[u], &body, shared.as_deref(), &plain).await {
                        lat.push(t.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
                (lat, errors)
            }));
        }
        let mut lat = Vec::new();
        let mut errors = 0;
        for t in tasks {
            if let Ok((l, e)) = t.await {
                lat.extend(l);
                errors += e;
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = match (cpu0, cpu_seconds(&args.pids)) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let flush = match (flush0, args.disk.as_deref().and_then(flushes)) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        lat.sort_unstable();
        let pct = |p: f64| -> f64 {
            if lat.is_empty() {
                return 0.0;
            }
            let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
            lat[i] as f64 / 1000.0
        };
        let n = lat.len() as f64;
        let out = serde_json::json!({
            "mode": format!("{:?}", args.mode),
            "concurrency": args.concurrency,
            "servers": args.urls.len(),
            "seconds": (elapsed * 100.0).round() / 100.0,
            "certificates": lat.len(),
            "errors": errors,
            "per_second": ((n / elapsed) * 10.0).round() / 10.0,
            "p50_ms": (pct(0.50) * 100.0).round() / 100.0,
            "p99_ms": (pct(0.99) * 100.0).round() / 100.0,
            "server_cpu_ms_per_cert": cpu.filter(|_| n > 0.0).map(|c| (c * 1000.0 / n * 1000.0).round() / 1000.0),
            "flushes_per_cert": flush.filter(|_| n > 0.0).map(|f| ((f as f64 / n) * 1000.0).round() / 1000.0),
        });
        println!("{out}");
    });
}
