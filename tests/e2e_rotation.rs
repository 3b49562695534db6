//! End to end: CA rotation with the real binaries. Agents keep an nginx server and a curl client
//! in mutual TLS while the dev intermediate, then the root, are replaced, and not one request
//! fails; a compromised intermediate is revoked and every holder re-issued within seconds.
//! openssl, curl and nginx are the independent judges.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::nginx::{Nginx, Site};
use support::{Agent, Run, Server, TestCa, openssl, run_bounded, s};

const WEB_DEV: &str = "web.dev.svc.example.internal";
const API_DEV: &str = "api.dev.svc.example.internal";

// ---------------------------------------------------------------------------------------------
// PEM and openssl helpers

/// The certificates of a PEM text, each as its own PEM block.
fn pem_certs(text: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(b) = rest.find(BEGIN) {
        let Some(e) = rest[b..].find(END) else { break };
        let end = b + e + END.len();
        out.push(format!("{}\n", &rest[b..end]));
        rest = &rest[end..];
    }
    out
}

/// A scratch file holding `text` (deleted on drop).
fn scratch(text: &str) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(text.as_bytes()).expect("write temp file");
    f.flush().expect("flush");
    f
}

/// SHA-256 fingerprint of one PEM certificate, lowercase hex without colons, by openssl.
fn fingerprint(pem: &str) -> String {
    let f = scratch(pem);
    let run = openssl([
        "x509",
        "-noout",
        "-fingerprint",
        "-sha256",
        "-in",
        s(f.path()),
    ]);
    run.expect_code(0);
    run.stdout
        .trim()
        .rsplit('=')
        .next()
        .unwrap_or("")
        .replace(':', "")
        .to_lowercase()
}

/// Serial of one PEM certificate, lowercase hex, by openssl.
fn serial_of(pem: &str) -> String {
    let f = scratch(pem);
    let run = openssl(["x509", "-noout", "-serial", "-in", s(f.path())]);
    run.expect_code(0);
    run.stdout
        .trim()
        .trim_start_matches("serial=")
        .to_lowercase()
}

/// `openssl verify -CAfile ANCHORS [-untrusted UNTRUSTED] LEAF EXTRA...` on PEM texts.
fn verify(anchors: &str, untrusted: Option<&str>, leaf: &str, extra: &[&str]) -> Run {
    let a = scratch(anchors);
    let u = untrusted.map(scratch);
    let l = scratch(leaf);
    let mut args: Vec<&str> = vec!["verify"];
    args.extend_from_slice(extra);
    args.extend(["-CAfile", s(a.path())]);
    if let Some(u) = &u {
        args.extend(["-untrusted", s(u.path())]);
    }
    args.push(s(l.path()));
    openssl(&args)
}

/// Whether `leaf` carries a valid signature of `issuer` (openssl, the issuer as sole anchor).
fn signed_by(leaf: &str, issuer: &str) -> bool {
    verify(issuer, None, leaf, &["-partial_chain"]).ok()
}

/// Polls `f` every 100 ms until it yields a value; panics after `limit` with its last reason
/// and `diag()`.
fn wait_until<T>(
    limit: Duration,
    what: &str,
    diag: impl Fn() -> String,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(why) if start.elapsed() > limit => {
                panic!(
                    "timed out after {limit:?} waiting for {what}: {why}\n{}",
                    diag()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// The CA

/// A CA server with rotation settings of seconds: leaves backdated by 1 s, a 3 s default
/// rotation delay, CRLs reissued every second; HTTPS for the API and plain HTTP for CRLs.
struct Pki {
    ca: TestCa,
    server: Server,
    http: String,
    fingerprint: String,
}

impl Pki {
    fn new() -> Pki {
        let (ca, fingerprint) = TestCa::init_with_fingerprint();
        let cfg = ca.path("server.toml");
        std::fs::write(
            &cfg,
            "backdate = \"1s\"\nrotation_delay = \"3s\"\ncrl_refresh = \"*/1 * * * * *\"\n",
        )
        .expect("write server.toml");
        let server = ca.serve(&["--config", s(&cfg), "--http-listen", "127.0.0.1:0"]);
        let http = server.http_url.clone().expect("http listener");
        Pki {
            ca,
            server,
            http,
            fingerprint,
        }
    }

    /// `ca-server ca list --json`.
    fn list(&self) -> Vec<Value> {
        let run = self.ca.server(&["ca", "list", "--json"]);
        run.expect_code(0);
        serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("ca list --json is not JSON ({e}):\n{}", run.stdout))
    }

    /// The `ca list` entry with `id`.
    fn authority(&self, id: &str) -> Value {
        let list = self.list();
        list.iter()
            .find(|a| a["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no authority {id:?} in ca list: {list:#?}"))
    }

    fn state(&self, id: &str) -> String {
        self.authority(id)["state"]
            .as_str()
            .unwrap_or("?")
            .to_string()
    }

    /// `ca-server ca rotate ARGS`, which must succeed.
    fn rotate(&self, args: &[&str]) -> Run {
        let mut all = vec!["ca", "rotate"];
        all.extend_from_slice(args);
        let run = self.ca.server(&all);
        run.expect_code(0);
        run
    }

    fn token(&self, service: &str) -> String {
        let run = self
            .ca
            .server(&["token", "create", "--env", "dev", "--service", service]);
        run.expect_code(0);
        run.stdout.trim().to_string()
    }

    /// Downloads `/crl/NAME.crl` (DER) over plain HTTP and returns it as PEM, or the HTTP status.
    fn crl(&self, name: &str) -> Result<String, u16> {
        let der = tempfile::NamedTempFile::new().expect("temp");
        let url = format!("{}/crl/{name}.crl", self.http);
        let status = support::curl_download(&[&url], der.path());
        if status != 200 {
            return Err(status);
        }
        let run = openssl(["crl", "-inform", "DER", "-in", s(der.path())]);
        run.expect_code(0);
        Ok(run.stdout.clone())
    }

    /// GET /v1/bundle?env=dev[&serial=S] over HTTPS: the `ca-renew-now` header (if any) and the
    /// body.
    fn bundle_api(&self, anchors: &str, serial: Option<&str>) -> (Option<String>, String) {
        let ca = scratch(anchors);
        let headers = tempfile::NamedTempFile::new().expect("temp");
        let url = match serial {
            Some(sn) => format!("{}/v1/bundle?env=dev&serial={sn}", self.server.url),
            None => format!("{}/v1/bundle?env=dev", self.server.url),
        };
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "--fail",
            "--max-time",
            "10",
            "--cacert",
            s(ca.path()),
        ])
        .arg("-D")
        .arg(headers.path())
        .arg(&url);
        let run = run_bounded(c, Duration::from_secs(20));
        assert!(run.ok(), "GET {url}: {run:?}");
        let head = std::fs::read_to_string(headers.path()).unwrap_or_default();
        let hint = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("ca-renew-now")
                .then(|| v.trim().to_string())
        });
        (hint, run.stdout)
    }

    /// The PEM of authority `id`, found by fingerprint among the certificates of `pem`.
    fn find_in(&self, id: &str, pem: &str) -> Option<String> {
        let fp = self.authority(id)["fingerprint"]
            .as_str()
            .unwrap_or("")
            .replace(':', "")
            .to_lowercase();
        pem_certs(pem).into_iter().find(|c| fingerprint(c) == fp)
    }

    /// The ids (from `ca list`) of the certificates in a bundle; unknown ones as `?FINGERPRINT`.
    fn ids_in(&self, pem: &str) -> Vec<String> {
        let list = self.list();
        pem_certs(pem)
            .iter()
            .map(|c| {
                let fp = fingerprint(c);
                list.iter()
                    .find(|a| {
                        a["fingerprint"]
                            .as_str()
                            .is_some_and(|f| f.replace(':', "").to_lowercase() == fp)
                    })
                    .and_then(|a| a["id"].as_str())
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("?{fp}"))
            })
            .collect()
    }

    /// Starts an agent for one certificate `tls` of dev/`service` named `dns`.
    fn host(&self, name: &str, service: &str, dns: &str, ttl: &str, reload: &str) -> Host {
        let dir = self.ca.path(name);
        std::fs::create_dir_all(&dir).expect("dir");
        let cfg = dir.join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"server = "{server}"
root_fingerprint = "{fp}"
state_dir = "{dir}/state"
token_file = "{dir}/token"
backoff_initial = "1s"
backoff_max = "2s"
bundle_refresh = "1s"
jitter = 0.02

[[cert]]
name = "tls"
env = "dev"
service = "{service}"
dns = ["{dns}"]
ttl = "{ttl}"
dir = "{dir}/out"
crl = true
reload_command = ["sh", "-c", "echo $SERIAL >> {dir}/reloads; {reload}"]
"#,
                server = self.server.url,
                fp = self.fingerprint,
                dir = s(&dir),
            ),
        )
        .expect("write agent.toml");
        std::fs::write(dir.join("token"), self.token(service)).expect("token");
        let agent = Agent::start(&cfg);
        Host {
            name: name.to_string(),
            cfg,
            out: dir.join("out"),
            reloads: dir.join("reloads"),
            agent,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hosts run by agents

/// One published version: read from one resolved `current` directory, so key and chain match.
#[derive(Debug, Clone)]
struct Leaf {
    version: PathBuf,
    cert: String,
    chain: Vec<String>,
    key: String,
}

impl Leaf {
    fn issuer_pem(&self) -> &str {
        self.chain.get(1).map(String::as_str).unwrap_or("")
    }

    fn chain_pem(&self) -> String {
        self.chain.concat()
    }
}

/// A host whose certificate `tls` an agent keeps fresh.
struct Host {
    name: String,
    cfg: PathBuf,
    out: PathBuf,
    reloads: PathBuf,
    agent: Agent,
}

impl Host {
    /// The published certificate, key and chain as one consistent set.
    fn leaf(&self) -> Option<Leaf> {
        read_leaf(&self.out)
    }

    fn bundle(&self) -> String {
        std::fs::read_to_string(self.out.join("bundle.pem")).unwrap_or_default()
    }

    fn status(&self) -> Value {
        support::status(&self.cfg).1["certs"]["tls"].clone()
    }

    fn diag(&self) -> String {
        format!(
            "--- {} status: {}\n--- {} log (tail):\n{}",
            self.name,
            self.status(),
            self.name,
            tail(&self.agent.log(), 30)
        )
    }

    /// Waits for the first certificate.
    fn wait_enrolled(&self) -> Leaf {
        wait_until(
            Duration::from_secs(30),
            &format!("{} to enroll", self.name),
            || self.diag(),
            || {
                let leaf = self.leaf().ok_or("no certificate yet")?;
                if self.bundle().is_empty() {
                    return Err("no bundle.pem yet".into());
                }
                Ok(leaf)
            },
        )
    }

    /// Waits until the published leaf is one issued by the CA certificate `issuer` (the second
    /// certificate of chain.pem is `issuer`, and openssl checks the leaf's signature with it).
    fn wait_issued_by(&self, issuer: &str, limit: Duration) -> Leaf {
        let fp = fingerprint(issuer);
        let leaf = wait_until(
            limit,
            &format!("{} to hold a leaf of the new intermediate", self.name),
            || self.diag(),
            || {
                let leaf = self.leaf().ok_or("no certificate")?;
                if fingerprint(leaf.issuer_pem()) == fp {
                    Ok(leaf)
                } else {
                    Err(format!(
                        "the issuer in {}/chain.pem is {} ({})",
                        leaf.version.display(),
                        self.status()["issued_by"],
                        fingerprint(leaf.issuer_pem())
                    ))
                }
            },
        );
        assert!(
            signed_by(&leaf.cert, issuer),
            "{}: chain.pem names the new intermediate but the leaf is not signed by it",
            self.name
        );
        leaf
    }
}

fn read_leaf(out: &Path) -> Option<Leaf> {
    let version = std::fs::canonicalize(out.join("current")).ok()?;
    let cert = std::fs::read_to_string(version.join("cert.pem")).ok()?;
    let chain = std::fs::read_to_string(version.join("chain.pem")).ok()?;
    let key = std::fs::read_to_string(version.join("key.pem")).ok()?;
    let chain = pem_certs(&chain);
    if chain.len() < 2 || pem_certs(&cert).len() != 1 || key.is_empty() {
        return None;
    }
    Some(Leaf {
        version,
        cert,
        chain,
        key,
    })
}

// ---------------------------------------------------------------------------------------------
// nginx and the client loop

/// The leaf `nginx` serves now (openssl s_client).
fn served_leaf(nginx: &Nginx) -> Option<String> {
    let mut c = Command::new("openssl");
    c.args([
        "s_client",
        "-unix",
        s(&nginx.socket),
        "-servername",
        WEB_DEV,
    ]);
    let run = run_bounded(c, Duration::from_secs(15));
    pem_certs(&run.stdout).into_iter().next()
}

/// One HTTPS request to nginx over its unix socket: `anchors` verify the server, `chain` and
/// `key` are the client's credentials (all files).
fn mtls_get(socket: &Path, anchors: &Path, chain: &Path, key: &Path) -> Run {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "5",
        "--unix-socket",
        s(socket),
        "--cacert",
        s(anchors),
        "--cert",
        s(chain),
        "--key",
        s(key),
        "-w",
        "\n%{http_code}",
        &format!("https://{WEB_DEV}/"),
    ]);
    run_bounded(cmd, Duration::from_secs(15))
}

fn mtls_ok(run: &Run) -> bool {
    run.ok() && run.stdout.trim_end().ends_with("\n200")
}

/// One request of the client loop.
#[derive(Debug, Clone)]
struct Attempt {
    at: Instant,
    ok: bool,
    /// The client's version directory whose key and chain were presented.
    client_version: PathBuf,
    detail: String,
}

/// A thread that keeps making mutual-TLS requests to nginx with curl, each time with the client
/// agent's current key, chain and bundle, and records every outcome.
struct Traffic {
    stop: Arc<AtomicBool>,
    done: Arc<std::sync::Mutex<Vec<Attempt>>>,
    handle: Option<JoinHandle<()>>,
}

impl Traffic {
    fn start(socket: &Path, client_out: &Path) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (socket, out) = (socket.to_path_buf(), client_out.to_path_buf());
        let (stop2, done2) = (stop.clone(), done.clone());
        let handle = std::thread::spawn(move || {
            let tmp = tempfile::tempdir().expect("tempdir");
            let (k, c, b) = (
                tmp.path().join("key.pem"),
                tmp.path().join("chain.pem"),
                tmp.path().join("bundle.pem"),
            );
            while !stop2.load(Ordering::SeqCst) {
                let Some(leaf) = read_leaf(&out) else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let bundle = std::fs::read_to_string(out.join("bundle.pem")).unwrap_or_default();
                std::fs::write(&k, &leaf.key).expect("key");
                std::fs::write(&c, leaf.chain_pem()).expect("chain");
                std::fs::write(&b, &bundle).expect("bundle");
                let run = mtls_get(&socket, &b, &c, &k);
                let ok = mtls_ok(&run);
                done2.lock().expect("lock").push(Attempt {
                    at: Instant::now(),
                    ok,
                    client_version: leaf.version.clone(),
                    detail: format!(
                        "curl exit {:?}, stdout {:?}, stderr {:?}",
                        run.code,
                        run.stdout.trim(),
                        run.stderr.trim()
                    ),
                });
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Traffic {
            stop,
            done,
            handle: Some(handle),
        }
    }

    fn snapshot(&self) -> Vec<Attempt> {
        self.done.lock().expect("lock").clone()
    }

    /// Stops the loop and returns every attempt.
    fn finish(mut self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().expect("client loop panicked");
        }
        self.snapshot()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The CA, a web host served by nginx, a client host, and the client loop between them. Fields
/// drop in order: the loop, the agents (so no hook signals a stopped nginx), nginx, the CA.
struct Mtls {
    traffic: Option<Traffic>,
    web: Host,
    client: Host,
    nginx: Nginx,
    pki: Pki,
}

impl Mtls {
    /// Leaves of 10 minutes: within a test only the CA's renew-now hint makes agents renew.
    fn start() -> Mtls {
        let pki = Pki::new();
        let nginx_prefix = Nginx::prefix(pki.ca.tmp.path());
        let web = pki.host(
            "web",
            "web",
            WEB_DEV,
            "10m",
            &Nginx::reload_hook(&nginx_prefix),
        );
        let client = pki.host("client", "api", API_DEV, "10m", "true");
        web.wait_enrolled();
        client.wait_enrolled();
        // nginx as the mTLS server: its certificate and client trust store are the web agent's
        // files; the agent's reload hook sends SIGHUP to its master.
        let nginx = Nginx::start(
            pki.ca.tmp.path(),
            &Site {
                name: WEB_DEV,
                server_dir: &web.out,
                client_ca: &web.out.join("bundle.pem"),
                verify_depth: 3,
                crl: None,
            },
        );
        let traffic = Traffic::start(&nginx.socket, &client.out);
        let rig = Mtls {
            traffic: Some(traffic),
            web,
            client,
            nginx,
            pki,
        };
        // The loop works before anything changes.
        wait_until(
            Duration::from_secs(15),
            "first successful mTLS requests",
            || rig.diag(),
            || {
                let a = rig.attempts();
                match a.iter().find(|a| !a.ok) {
                    Some(bad) => Err(format!("a request failed already: {}", bad.detail)),
                    None if a.len() >= 5 => Ok(()),
                    None => Err(format!("{} requests so far", a.len())),
                }
            },
        );
        rig
    }

    fn attempts(&self) -> Vec<Attempt> {
        self.traffic
            .as_ref()
            .map(Traffic::snapshot)
            .unwrap_or_default()
    }

    fn diag(&self) -> String {
        let failed: Vec<String> = self
            .attempts()
            .iter()
            .filter(|a| !a.ok)
            .take(5)
            .map(|a| a.detail.clone())
            .collect();
        format!(
            "{}\n{}\n--- nginx error.log (tail):\n{}\n--- ca-server stderr (tail):\n{}\n--- failed requests: {failed:#?}",
            self.web.diag(),
            self.client.diag(),
            tail(
                &self
                    .nginx
                    .log()
                    .lines()
                    .filter(|l| !l.contains("closed keepalive connection"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                20
            ),
            tail(&self.pki.server.stderr(), 30),
        )
    }

    /// Waits until nginx serves the web agent's current leaf (its reload hook took effect).
    fn wait_nginx_serves_current(&self) {
        wait_until(
            Duration::from_secs(10),
            "nginx to serve the web agent's current leaf",
            || self.diag(),
            || {
                let want = self.web.leaf().ok_or("no web leaf")?.cert;
                let got = served_leaf(&self.nginx).ok_or("s_client saw no certificate")?;
                if serial_of(&got) == serial_of(&want) {
                    Ok(())
                } else {
                    Err(format!(
                        "nginx serves {} but the agent published {}",
                        serial_of(&got),
                        serial_of(&want)
                    ))
                }
            },
        );
    }

    /// Waits until at least `n` requests succeeded presenting the client's current version.
    fn wait_requests_with_current_client(&self, n: usize) {
        let version = self.client.leaf().expect("client leaf").version;
        wait_until(
            Duration::from_secs(15),
            "requests with the client's new certificate",
            || self.diag(),
            || {
                let k = self
                    .attempts()
                    .iter()
                    .filter(|a| a.ok && a.client_version == version)
                    .count();
                if k >= n {
                    Ok(())
                } else {
                    Err(format!("{k} so far"))
                }
            },
        );
    }

    /// Stops the loop; asserts that no request failed, that it ran `min` requests or more, and
    /// that it never stalled.
    fn finish_traffic(&mut self, min: usize) -> Vec<Attempt> {
        let attempts = self.traffic.take().expect("traffic").finish();
        let failed: Vec<&Attempt> = attempts.iter().filter(|a| !a.ok).collect();
        eprintln!("{} mTLS requests, {} failed", attempts.len(), failed.len());
        assert!(
            failed.is_empty(),
            "{} of {} mTLS requests failed; first ones: {:#?}\n{}",
            failed.len(),
            attempts.len(),
            failed.iter().take(5).map(|a| &a.detail).collect::<Vec<_>>(),
            self.diag()
        );
        assert!(
            attempts.len() >= min,
            "only {} requests ran (want {min})",
            attempts.len()
        );
        let gap = attempts
            .windows(2)
            .map(|w| w[1].at - w[0].at)
            .max()
            .unwrap_or_default();
        assert!(
            gap < Duration::from_secs(3),
            "the client loop stalled for {gap:?}"
        );
        attempts
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn intermediate_rotation_keeps_mutual_tls_up() {
    let mut rig = Mtls::start();
    let pki = &rig.pki;
    let bundle0 = rig.web.bundle();
    let root = pki.find_in("root", &bundle0).expect("root in bundle.pem");
    let old_dev = pki.find_in("dev", &bundle0).expect("dev in bundle.pem");
    assert_eq!(pki.state("dev"), "active");
    for h in [&rig.web, &rig.client] {
        let leaf = h.leaf().expect("leaf");
        assert_eq!(fingerprint(leaf.issuer_pem()), fingerprint(&old_dev));
    }
    let old_client = rig.client.leaf().expect("leaf");
    let old_client_serial = rig.client.status()["serial"]
        .as_str()
        .expect("serial")
        .to_string();
    assert_eq!(old_client_serial, serial_of(&old_client.cert));

    // The server counts whole seconds: the switch comes at least 2 s after `before`.
    let before = Instant::now();
    let out = pki.rotate(&["--env", "dev", "--delay", "3s"]);
    let rotated = Instant::now();
    assert!(out.stdout.contains("dev.2"), "{}", out.stdout);
    let dev2 = pki.authority("dev.2");
    assert_eq!(dev2["state"], "next", "{dev2}");
    assert_eq!(dev2["generation"], 2, "{dev2}");
    assert_eq!(
        pki.state("dev"),
        "active",
        "the old one issues until the delay ends"
    );

    // The next intermediate reaches the agents' bundles (it is published before it issues).
    let new_dev = wait_until(
        Duration::from_secs(8),
        "the next intermediate in the agents' bundles",
        || rig.diag(),
        || {
            let b = rig.client.bundle();
            let web = rig.web.bundle();
            match (pki.find_in("dev.2", &b), pki.find_in("dev.2", &web)) {
                (Some(pem), Some(_)) => Ok(pem),
                _ => Err(format!("client bundle holds {:?}", pki.ids_in(&b))),
            }
        },
    );
    assert!(
        verify(&root, None, &new_dev, &[]).ok(),
        "dev.2 chains to the root"
    );

    // Once it issues, both agents are told to renew and move to it.
    let web_leaf = rig.web.wait_issued_by(&new_dev, Duration::from_secs(20));
    let client_leaf = rig.client.wait_issued_by(&new_dev, Duration::from_secs(20));
    let moved = before.elapsed();
    eprintln!("both agents on dev.2 {moved:?} after the rotation");
    assert!(
        moved >= Duration::from_millis(1900),
        "agents moved to the new intermediate {moved:?} after the rotation, before its delay \
         of 3s ended"
    );
    wait_until(
        Duration::from_secs(10),
        "ca list to show dev retiring and dev.2 active",
        || rig.diag(),
        || {
            let (a, b) = (pki.state("dev"), pki.state("dev.2"));
            if a == "retiring" && b == "active" {
                Ok(())
            } else {
                Err(format!("dev {a}, dev.2 {b}"))
            }
        },
    );
    let listed = pki.authority("dev.2");
    assert!(
        listed["live_leaves"].as_i64().unwrap_or(0) >= 2,
        "both new leaves are counted: {listed}"
    );

    // The CA tells the holder of an old leaf to renew, and not the holder of a new one.
    let (hint, body) = pki.bundle_api(&root, Some(&old_client_serial));
    assert_eq!(hint.as_deref(), Some("issuer-retiring"), "{body}");
    let new_serial = serial_of(&client_leaf.cert);
    let (hint, body) = pki.bundle_api(&root, Some(&new_serial));
    assert_eq!(hint, None, "{body}");
    let ids = pki.ids_in(&body);
    assert_eq!(
        (
            ids.first().map(String::as_str),
            ids.iter()
                .skip(1)
                .map(String::as_str)
                .collect::<BTreeSet<_>>()
        ),
        (Some("root"), BTreeSet::from(["dev", "dev.2"])),
        "bundle: the root, then the active and the retiring intermediate: {ids:?}"
    );

    // OCSP answers for the leaves of both generations, each signed by its own issuer.
    for (what, leaf) in [("old", &old_client), ("new", &client_leaf)] {
        let (issuer, cert, anchor) = (
            scratch(leaf.issuer_pem()),
            scratch(&leaf.cert),
            scratch(&root),
        );
        let url = format!("{}/ocsp", pki.http);
        let run = openssl([
            "ocsp",
            "-issuer",
            s(issuer.path()),
            "-cert",
            s(cert.path()),
            "-url",
            &url,
            "-verify_other",
            s(issuer.path()),
            "-CAfile",
            s(anchor.path()),
        ]);
        let out = format!("{}{}", run.stdout, run.stderr);
        assert!(
            out.contains(": good") && out.contains("Response verify OK"),
            "OCSP for the {what} leaf: {out}"
        );
    }

    rig.wait_nginx_serves_current();
    rig.wait_requests_with_current_client(10);
    let attempts = rig.finish_traffic(30);
    assert!(
        attempts
            .iter()
            .any(|a| a.ok && a.client_version == old_client.version && a.at > rotated),
        "requests ran with the old client certificate after the rotation too"
    );

    // openssl agrees with the published files.
    for (h, leaf) in [(&rig.web, &web_leaf), (&rig.client, &client_leaf)] {
        support::openssl_verify_dir(&h.out).expect_code(0);
        assert!(
            verify(&h.bundle(), Some(&leaf.chain_pem()), &leaf.cert, &[]).ok(),
            "{}",
            h.name
        );
    }
    let reloads = std::fs::read_to_string(&rig.web.reloads).unwrap_or_default();
    assert!(
        reloads.lines().count() >= 2,
        "the web agent ran its reload hook for the enrollment and the renewal: {reloads:?}"
    );
}

#[test]
fn root_rotation_keeps_mutual_tls_up() {
    let mut rig = Mtls::start();
    let pki = &rig.pki;
    let bundle0 = rig.web.bundle();
    let old_root = pki.find_in("root", &bundle0).expect("root in bundle.pem");
    let old_client = rig.client.leaf().expect("leaf");

    // The server counts whole seconds: the overlap ends between `before` + 12 s and
    // `rotated` + 13 s.
    let before = Instant::now();
    let out = pki.rotate(&["--root", "--delay", "3s", "--overlap", "10s"]);
    let rotated = Instant::now();
    let overlap_ends = rotated + Duration::from_secs(13);
    let overlap_ends_earliest = before + Duration::from_secs(12);
    assert!(out.stdout.contains("root.2"), "{}", out.stdout);
    let root2 = pki.authority("root.2");
    assert_eq!(
        root2["subject"],
        pki.authority("root")["subject"],
        "same name"
    );
    assert_eq!(pki.state("dev.2"), "next");

    // Both roots and the new intermediate reach the agents' bundles.
    let (new_root, new_dev) = wait_until(
        Duration::from_secs(8),
        "the new root and intermediate in the agents' bundles",
        || rig.diag(),
        || {
            let b = rig.client.bundle();
            match (
                pki.find_in("root.2", &b),
                pki.find_in("dev.2", &b),
                pki.find_in("root.2", &rig.web.bundle()),
            ) {
                (Some(r), Some(d), Some(_)) => Ok((r, d)),
                _ => Err(format!("client bundle holds {:?}", pki.ids_in(&b))),
            }
        },
    );
    assert!(
        pki.find_in("root", &rig.client.bundle()).is_some(),
        "the old root stays"
    );
    assert_ne!(fingerprint(&new_root), fingerprint(&old_root));
    assert!(
        verify(&new_root, None, &new_dev, &[]).ok(),
        "dev.2 is issued by the new root"
    );
    assert!(
        !verify(&old_root, None, &new_dev, &[]).ok(),
        "dev.2 is not issued by the old root"
    );

    // The agents move to leaves of dev.2, whose chains carry the cross-certificate.
    let web_leaf = rig.web.wait_issued_by(&new_dev, Duration::from_secs(20));
    let client_leaf = rig.client.wait_issued_by(&new_dev, Duration::from_secs(20));
    eprintln!(
        "both agents on dev.2 {:?} after the rotation; chain.pem of {} certificates; client \
         bundle {:?}",
        rotated.elapsed(),
        client_leaf.chain.len(),
        pki.ids_in(&rig.client.bundle())
    );
    assert!(
        Instant::now() + Duration::from_secs(1) < overlap_ends_earliest,
        "the agents took until the end of the overlap to move ({:?} after the rotation)",
        rotated.elapsed()
    );
    for (h, leaf) in [(&rig.web, &web_leaf), (&rig.client, &client_leaf)] {
        // A relying party that trusts only the old root still accepts the new leaf, through
        // the cross-certificate in chain.pem ...
        let old = verify(&old_root, Some(&leaf.chain_pem()), &leaf.cert, &[]);
        assert!(
            old.ok(),
            "{}: old-root-only trust store refuses the new chain ({} certificates): {old:?}",
            h.name,
            leaf.chain.len()
        );
        // ... which is what links them: without it the same check fails.
        let bare = format!("{}{}", leaf.chain[0], leaf.chain[1]);
        assert!(
            !verify(&old_root, Some(&bare), &leaf.cert, &[]).ok(),
            "{}: leaf + intermediate alone should not chain to the old root",
            h.name
        );
        let new = verify(&new_root, Some(&leaf.chain_pem()), &leaf.cert, &[]);
        assert!(new.ok(), "{}: {new:?}", h.name);
    }
    let during = pki.ids_in(&rig.client.bundle());
    assert!(
        during.iter().any(|i| i == "root") && Instant::now() < overlap_ends_earliest,
        "the old root is still in the bundle during the overlap: {during:?}"
    );
    rig.wait_nginx_serves_current();
    // curl trusting only the old root accepts nginx's new chain (it sends the cross-certificate)
    // while the overlap lasts.
    let leaf = rig.client.leaf().expect("client leaf");
    let (anchors, chain, key) = (
        scratch(&old_root),
        scratch(&leaf.chain_pem()),
        scratch(&leaf.key),
    );
    let run = mtls_get(&rig.nginx.socket, anchors.path(), chain.path(), key.path());
    assert!(
        mtls_ok(&run) && Instant::now() < overlap_ends_earliest,
        "a client trusting only the old root, during the overlap: {run:?}\n{}",
        rig.diag()
    );

    // After the overlap the old root leaves the bundles; mTLS keeps working with the new root
    // alone.
    wait_until(
        Duration::from_secs(15) + overlap_ends.saturating_duration_since(Instant::now()),
        "the old root to leave the agents' bundles",
        || rig.diag(),
        || {
            let (c, w) = (rig.client.bundle(), rig.web.bundle());
            if pki.find_in("root", &c).is_none() && pki.find_in("root", &w).is_none() {
                Ok(())
            } else {
                Err(format!("client bundle holds {:?}", pki.ids_in(&c)))
            }
        },
    );
    let left = Instant::now();
    eprintln!(
        "old root gone from the bundles {:?} after the rotation; client bundle {:?}",
        rotated.elapsed(),
        pki.ids_in(&rig.client.bundle())
    );
    assert!(
        left + Duration::from_millis(100) >= overlap_ends_earliest,
        "the old root left the bundles {:?} before the overlap ended",
        overlap_ends_earliest - left
    );
    // The old root leaves with every intermediate it signed (nobody trusting the bundle could
    // verify their chains any more): only the new root and its generation remain.
    let mut expected: Vec<String> = during
        .iter()
        .filter(|i| *i != "root" && *i != "dev")
        .cloned()
        .collect();
    expected.sort();
    for h in [&rig.web, &rig.client] {
        let bundle = h.bundle();
        let ids = pki.ids_in(&bundle);
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            expected,
            "{}: the bundle lost exactly the old root and its intermediate ({} certificates \
             during the overlap: {during:?})",
            h.name,
            during.len()
        );
        let roots: BTreeSet<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|i| i.starts_with("root"))
            .collect();
        assert_eq!(
            roots,
            BTreeSet::from(["root.2"]),
            "{}: bundle {ids:?}",
            h.name
        );
        assert!(
            ids.iter().all(|i| !i.starts_with('?')),
            "{}: the bundle holds only roots and intermediates ({ids:?})",
            h.name
        );
        assert_eq!(
            pem_certs(&bundle)
                .iter()
                .filter(|c| verify(c, None, c, &[]).ok())
                .count(),
            1,
            "{}: one self-signed root left in the bundle",
            h.name
        );
        let leaf = h.leaf().expect("leaf");
        let run = verify(&new_root, Some(&leaf.chain_pem()), &leaf.cert, &[]);
        assert!(run.ok(), "{}: new root alone: {run:?}", h.name);
        support::openssl_verify_dir(&h.out).expect_code(0);
    }
    // A few more requests with the old root gone from the client's trust store.
    let seen = rig.attempts().len();
    wait_until(
        Duration::from_secs(10),
        "requests after the overlap",
        || rig.diag(),
        || {
            let n = rig.attempts().len();
            if n >= seen + 10 {
                Ok(())
            } else {
                Err(format!("{} more so far", n - seen))
            }
        },
    );
    let attempts = rig.finish_traffic(60);
    assert!(
        attempts
            .iter()
            .any(|a| a.client_version == old_client.version && a.at > rotated),
        "the old client certificate was still in use after the rotation"
    );
    let states: Vec<String> = rig
        .pki
        .list()
        .iter()
        .filter(|a| a["env"] == "dev" || a["kind"] == "root")
        .map(|a| {
            format!(
                "{} {} live {} unexpired {}",
                a["id"], a["state"], a["live_leaves"], a["unexpired_leaves"]
            )
        })
        .collect();
    eprintln!("after the overlap: {states:?}");
    assert_eq!(rig.pki.state("root.2"), "active");
    assert_eq!(rig.pki.state("dev.2"), "active");

    // The agents pinned the old root at enrollment; during the overlap they learned the new one
    // (certified by the pinned root in their chains), so with the old root and the link gone
    // they still trust the CA server (now serving a certificate of the new TLS intermediate) and
    // renew.
    for h in [&rig.web, &rig.client] {
        let saved = std::fs::read_to_string(h.cfg.parent().expect("dir").join("state/root.pem"))
            .expect("saved roots");
        assert!(
            rig.pki.find_in("root.2", &saved).is_some()
                && rig.pki.find_in("root", &saved).is_some(),
            "{}: the agent's saved roots are {:?}",
            h.name,
            rig.pki.ids_in(&saved)
        );
        let before = h.leaf().expect("leaf");
        let mut c = std::process::Command::new(support::agent_bin());
        c.args(["renew", "--now", "--config", s(&h.cfg), "tls"]);
        support::run_bounded(c, Duration::from_secs(10)).expect_code(0);
        let after = wait_until(
            Duration::from_secs(20),
            &format!("{} to renew after the overlap", h.name),
            || h.diag(),
            || {
                let leaf = h.leaf().ok_or("no certificate")?;
                if serial_of(&leaf.cert) != serial_of(&before.cert) {
                    Ok(leaf)
                } else {
                    Err("same serial".to_string())
                }
            },
        );
        assert_eq!(
            after.chain.len(),
            2,
            "{}: no link certificate after the overlap",
            h.name
        );
        let run = verify(&new_root, Some(&after.chain_pem()), &after.cert, &[]);
        assert!(run.ok(), "{}: {run:?}", h.name);
    }
}

#[test]
fn compromised_intermediate_is_replaced_within_one_bundle_refresh() {
    let pki = Pki::new();
    let hosts = [
        pki.host("a", "api", API_DEV, "1h", "true"),
        pki.host("b", "web", WEB_DEV, "1h", "true"),
        pki.host("c", "api", API_DEV, "1h", "true"),
    ];
    let diag = || {
        format!(
            "{}\n--- ca-server stderr (tail):\n{}",
            hosts.iter().map(Host::diag).collect::<Vec<_>>().join("\n"),
            tail(&pki.server.stderr(), 30)
        )
    };
    let old: Vec<Leaf> = hosts.iter().map(Host::wait_enrolled).collect();
    let bundle0 = hosts[0].bundle();
    let root = pki.find_in("root", &bundle0).expect("root");
    let old_dev = pki.find_in("dev", &bundle0).expect("dev");
    let old_dev_serial = serial_of(&old_dev);
    let anchors = format!("{root}{old_dev}");
    let crls = |dev_crl: &str| format!("{}{dev_crl}", pki.crl("root").expect("root CRL"));
    let dev_crl0 = pki.crl("dev").expect("dev CRL");
    for (h, leaf) in hosts.iter().zip(&old) {
        let crl = scratch(&crls(&dev_crl0));
        let run = verify(
            &anchors,
            None,
            &leaf.cert,
            &["-crl_check_all", "-CRLfile", s(crl.path())],
        );
        assert!(run.ok(), "{} before the rotation: {run:?}", h.name);
    }

    let old_serial = hosts[0].status()["serial"]
        .as_str()
        .expect("serial")
        .to_string();
    assert_eq!(old_serial, serial_of(&old[0].cert));

    let out = pki.rotate(&["--env", "dev", "--compromised"]);
    let rotated = Instant::now();
    assert!(out.stdout.contains("dev.2"), "{}", out.stdout);
    let dev = pki.authority("dev");
    assert_eq!(dev["state"], "revoked", "{dev}");
    assert!(dev["revoked_at"].as_i64().is_some(), "{dev}");
    assert_eq!(pki.state("dev.2"), "active", "the new one issues at once");

    // The CA tells holders of old leaves to renew now (once the server has re-read its
    // authorities, every 2 s).
    wait_until(
        Duration::from_secs(5),
        "the bundle answer to an old serial to say issuer-revoked",
        diag,
        || match pki.bundle_api(&root, Some(&old_serial)).0 {
            Some(h) if h == "issuer-revoked" => Ok(()),
            other => Err(format!("ca-renew-now: {other:?}")),
        },
    );

    // Every agent holds a leaf of the new intermediate within a few bundle refreshes.
    let new_dev = wait_until(
        Duration::from_secs(5),
        "dev.2 in the published bundle",
        diag,
        || {
            let (_, body) = pki.bundle_api(&root, None);
            pki.find_in("dev.2", &body).ok_or("not yet".to_string())
        },
    );
    let new: Vec<Leaf> = hosts
        .iter()
        .map(|h| {
            h.wait_issued_by(
                &new_dev,
                Duration::from_secs(10).saturating_sub(rotated.elapsed()),
            )
        })
        .collect();
    let took = rotated.elapsed();
    eprintln!("every agent on dev.2 {took:?} after the rotation");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    for (h, (o, n)) in hosts.iter().zip(old.iter().zip(&new)) {
        assert_ne!(serial_of(&o.cert), serial_of(&n.cert), "{}", h.name);
        assert_ne!(o.key, n.key, "{}: a fresh key", h.name);
        support::openssl_verify_dir(&h.out).expect_code(0);
    }

    // The revoked intermediate leaves the bundles.
    wait_until(
        Duration::from_secs(5),
        "the revoked intermediate to leave the agents' bundles",
        diag,
        || match hosts
            .iter()
            .find(|h| pki.find_in("dev", &h.bundle()).is_some())
        {
            Some(h) => Err(format!("{} bundle: {:?}", h.name, pki.ids_in(&h.bundle()))),
            None => Ok(()),
        },
    );

    // The root CRL lists the old intermediate: openssl now refuses the old leaves, naming the
    // issuer (depth 1) as revoked.
    let dev_crl = pki.crl("dev").unwrap_or_else(|status| {
        eprintln!("/crl/dev.crl now answers {status}; using the one from before the rotation");
        dev_crl0.clone()
    });
    let refused = wait_until(
        Duration::from_secs(10),
        "the root CRL to list the old intermediate",
        diag,
        || {
            let root_crl = pki.crl("root").map_err(|s| format!("HTTP {s}"))?;
            let text = openssl_crl_text(&root_crl);
            if !text.to_lowercase().contains(&old_dev_serial) {
                return Err(format!("root CRL does not list {old_dev_serial}:\n{text}"));
            }
            Ok(root_crl)
        },
    );
    let all = scratch(&format!("{refused}{dev_crl}"));
    for (h, leaf) in hosts.iter().zip(&old) {
        let run = verify(
            &anchors,
            None,
            &leaf.cert,
            &["-crl_check_all", "-CRLfile", s(all.path())],
        );
        let text = format!("{}{}", run.stdout, run.stderr);
        assert!(!run.ok(), "{}: the old leaf still verifies: {text}", h.name);
        assert!(
            text.contains("certificate revoked") && text.contains("at 1 depth"),
            "{}: expected the issuer (depth 1) to be revoked: {text}",
            h.name
        );
    }
    // The new leaves pass the same check under the new intermediate and its CRL.
    let dev2_crl = pki.crl("dev.2").expect("dev.2 CRL");
    let all2 = scratch(&format!("{refused}{dev2_crl}"));
    for (h, leaf) in hosts.iter().zip(&new) {
        let run = verify(
            &format!("{root}{new_dev}"),
            None,
            &leaf.cert,
            &["-crl_check_all", "-CRLfile", s(all2.path())],
        );
        assert!(run.ok(), "{} new leaf: {run:?}", h.name);
    }
    assert_eq!(pki.state("dev"), "revoked");
}

/// A CLI refusal: a non-zero exit and a message naming the problem.
trait Refused {
    fn refused(&self, needle: &str);
}

impl Refused for Run {
    fn refused(&self, needle: &str) {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "expected a refusal, got exit {:?}: {}",
            self.code,
            self.stdout
        );
        self.expect_stderr(needle);
    }
}

/// Past a 1 s activation delay (the CA counts whole seconds).
const ACTIVATION: Duration = Duration::from_millis(2100);

/// The rotation commands on a sealed CA whose root is kept offline, refusals included: nothing
/// is written by a refused rotation, the root's key is needed (and only the active root's),
/// and a root rotation hands the new root's key out instead of storing it.
#[test]
fn rotation_from_the_cli_with_a_sealed_ca_and_an_offline_root() {
    let keys = tempfile::tempdir().expect("tmp");
    let old_key = keys.path().join("root.key");
    let new_key = keys.path().join("root2.key");
    let ca = TestCa::init_sealed_with(
        "rotation test passphrase, long enough",
        &["--root-key-out", s(&old_key)],
    );
    let list = |ca: &TestCa| -> Vec<Value> {
        let run = ca.server(&["ca", "list", "--json"]);
        run.expect_code(0);
        serde_json::from_str(&run.stdout).expect("ca list --json")
    };
    let state = |ca: &TestCa, id: &str| -> String {
        list(ca)
            .iter()
            .find(|a| a["id"] == id)
            .map(|a| a["state"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| "absent".into())
    };
    let count = |ca: &TestCa| list(ca).len();
    let before = count(&ca);

    // Refusals: nothing written.
    ca.server(&["ca", "rotate", "--env", "dev", "--delay", "1s"])
        .refused("--root-key");
    ca.server(&["ca", "rotate", "--env", "nosuch", "--root-key", s(&old_key)])
        .refused("not in the policy");
    ca.server(&["ca", "rotate", "--root", "--compromised"])
        .refused("cannot be used with");
    ca.server(&["ca", "rotate"]).refused("--env");
    ca.server(&["ca", "rotate", "--root", "--root-key", s(&old_key)])
        .refused("--root-key-out");
    assert_eq!(count(&ca), before, "a refused rotation writes nothing");

    // An intermediate, signed with the offline root's key, issuing at once.
    ca.server(&[
        "ca",
        "rotate",
        "--env",
        "dev",
        "--delay",
        "1s",
        "--root-key",
        s(&old_key),
    ])
    .expect_code(0);
    std::thread::sleep(ACTIVATION);
    assert_eq!(state(&ca, "dev.2"), "active");
    assert_eq!(state(&ca, "dev"), "retiring");
    let out = ca.path("leaf");
    ca.issue("dev", "api", &["api.dev.svc.example.internal"], &out, &[])
        .expect_code(0);
    support::openssl_verify_dir(&out).expect_code(0);
    let chain = std::fs::read_to_string(out.join("chain.pem")).expect("chain");
    let issuer = &pem_certs(&chain)[1];
    let subject = openssl([
        "x509",
        "-noout",
        "-subject",
        "-in",
        s(scratch(issuer).path()),
    ]);
    assert!(subject.stdout.contains("G2"), "{}", subject.stdout);

    // The root: the new key goes to --root-key-out (0600), not into the database.
    ca.server(&[
        "ca",
        "rotate",
        "--root",
        "--delay",
        "1s",
        "--overlap",
        "1h",
        "--root-key",
        s(&old_key),
        "--root-key-out",
        s(&new_key),
    ])
    .expect_code(0);
    assert_eq!(support::mode(&new_key), 0o600);
    std::thread::sleep(ACTIVATION);
    assert_eq!(state(&ca, "root.2"), "active");
    assert_eq!(
        state(&ca, "root"),
        "retiring",
        "in its overlap: superseded, still published"
    );
    assert_eq!(state(&ca, "dev.3"), "active", "dev under the new root");
    // Only the active root's key signs now.
    ca.server(&[
        "ca",
        "rotate",
        "--env",
        "prod",
        "--delay",
        "1s",
        "--root-key",
        s(&old_key),
    ])
    .refused("holds the key of root, not of the active root root.2");
    assert_eq!(state(&ca, "prod.3"), "absent");
    ca.server(&[
        "ca",
        "rotate",
        "--env",
        "prod",
        "--delay",
        "1s",
        "--root-key",
        s(&new_key),
    ])
    .expect_code(0);
    std::thread::sleep(ACTIVATION);
    assert_eq!(state(&ca, "prod.3"), "active");

    // A compromise under the new root: its CRL, made with the offline key, lists the old one.
    let dev3 = list(&ca)
        .into_iter()
        .find(|a| a["id"] == "dev.3")
        .expect("dev.3");
    ca.server(&[
        "ca",
        "rotate",
        "--env",
        "dev",
        "--compromised",
        "--root-key",
        s(&new_key),
    ])
    .expect_code(0);
    assert_eq!(state(&ca, "dev.3"), "revoked");
    assert_eq!(state(&ca, "dev.4"), "active");
    let crl = ca.path("root.crl.pem");
    ca.server(&["crl", "--root", "--root-key", s(&new_key), "--out", s(&crl)])
        .expect_code(0);
    let root2 = list(&ca)
        .into_iter()
        .find(|a| a["id"] == "root.2")
        .expect("root.2");
    let bundle = ca.path("bundle.pem");
    ca.server(&["bundle", "--env", "dev", "--out", s(&bundle)])
        .expect_code(0);
    let bundle_text = std::fs::read_to_string(&bundle).expect("bundle");
    let root2_pem = pem_certs(&bundle_text)
        .into_iter()
        .find(|c| fingerprint(c) == root2["fingerprint"].as_str().unwrap_or("").to_lowercase())
        .expect("root.2 in the bundle");
    let text = openssl([
        "crl",
        "-in",
        s(&crl),
        "-CAfile",
        s(scratch(&root2_pem).path()),
        "-noout",
        "-text",
    ]);
    let all = format!("{}{}", text.stdout, text.stderr);
    assert!(all.contains("verify OK"), "{all}");
    let serial = dev3["serial"].as_str().expect("serial").to_uppercase();
    assert!(
        all.to_uppercase().replace(':', "").contains(&serial),
        "the root CRL lists dev.3 ({serial}): {all}"
    );

    // `crl --env dev` is the CRL of dev's active generation, dev.4.
    let dev_crl = ca.path("dev.crl.pem");
    ca.server(&["crl", "--env", "dev", "--out", s(&dev_crl)])
        .expect_code(0)
        .expect_stdout_contains("of dev.4");
    let issuer = openssl(["crl", "-noout", "-issuer", "-in", s(&dev_crl)]);
    assert!(
        issuer.stdout.contains("dev Intermediate CA G4"),
        "{}",
        issuer.stdout
    );
}

fn openssl_crl_text(pem: &str) -> String {
    let f = scratch(pem);
    openssl(["crl", "-noout", "-text", "-in", s(f.path())])
        .stdout
        .clone()
}
