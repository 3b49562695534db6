//! End to end: faults of the host. A disk that fills up under the server's database and under
//! the agent's output directory, made two ways: a small tmpfs filled to ENOSPC (where this process
//! may mount one) and a lowered file-size limit on the running process (RLIMIT_FSIZE through
//! `prlimit`: EFBIG), which works everywhere. And SIGKILL of the agent at random points of its
//! renewals while a reader checks the published key and certificate the way a service reads them.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{
    Agent, Http, Server, TestCa, agent_bin, curl, openssl, run_bounded, s, wait_for_api,
};

const API_CI: &str = "api.ci.svc.example.internal";
const API_DEV: &str = "api.dev.svc.example.internal";

/// How a test makes the disk full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiskFault {
    /// A small tmpfs, filled with a file of zeros: writes fail with ENOSPC.
    Tmpfs,
    /// The process's file-size limit lowered under the sizes it writes: writes fail with EFBIG.
    FileSizeLimit,
}

/// A small tmpfs mounted on a directory for one test, unmounted on drop.
struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    /// Mounts a tmpfs of `size` (mount's syntax: `8m`) on `dir`, or says why it cannot.
    fn mount(dir: &Path, size: &str) -> Result<SmallFs, String> {
        std::fs::create_dir_all(dir).expect("mount point");
        let mut c = Command::new("mount");
        c.args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "tmpfs",
        ])
        .arg(dir);
        let run = run_bounded(c, Duration::from_secs(10));
        if run.ok() {
            Ok(SmallFs {
                dir: dir.to_path_buf(),
            })
        } else {
            Err(format!(
                "mount -t tmpfs exited {:?}: {}",
                run.code,
                run.stderr.trim()
            ))
        }
    }

    /// Writes zeros into a new file until the file system is full; returns the file.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0u8; 64 * 1024];
        let err = loop {
            if let Err(e) = f.write_all(&chunk) {
                break e;
            }
        };
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::StorageFull,
            "filling the tmpfs: {err}"
        );
        path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let mut c = Command::new("umount");
        c.arg(&self.dir);
        if !run_bounded(c, Duration::from_secs(10)).ok() {
            let mut c = Command::new("umount");
            c.arg("-l").arg(&self.dir);
            let _ = run_bounded(c, Duration::from_secs(10));
        }
    }
}

/// Mounts a tmpfs for `test`, or prints that this fault cannot be made here and returns `None`.
fn tmpfs_or_explain(test: &str, dir: &Path, size: &str) -> Option<SmallFs> {
    match SmallFs::mount(dir, size) {
        Ok(m) => Some(m),
        Err(why) => {
            // Straight to stderr, past the test harness's capture: a skipped part must show.
            let _ = writeln!(
                std::io::stderr(),
                "NOT RUN: {test}: cannot mount a tmpfs here ({why}); the file-size-limit \
                 variant of this test makes the disk full instead"
            );
            None
        }
    }
}

/// The file-size limit (RLIMIT_FSIZE, soft) of a running process lowered with prlimit; the
/// previous limit comes back with [`FsizeLimit::lift`] or on drop.
struct FsizeLimit {
    pid: u32,
    previous: Option<String>,
}

fn prlimit(pid: u32, args: &[&str]) -> support::Run {
    let mut c = Command::new("prlimit");
    c.args(["--pid", &pid.to_string()]).args(args);
    run_bounded(c, Duration::from_secs(10))
}

impl FsizeLimit {
    fn set(pid: u32, bytes: usize) -> FsizeLimit {
        let previous = prlimit(
            pid,
            &["--fsize", "--raw", "--noheadings", "--output", "SOFT"],
        );
        previous.expect_code(0);
        prlimit(pid, &[&format!("--fsize={bytes}:")]).expect_code(0);
        FsizeLimit {
            pid,
            previous: Some(previous.stdout.trim().to_string()),
        }
    }

    fn lift(&mut self) {
        if let Some(previous) = self.previous.take() {
            prlimit(self.pid, &[&format!("--fsize={previous}:")]).expect_code(0);
        }
    }
}

impl Drop for FsizeLimit {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            let _ = prlimit(self.pid, &[&format!("--fsize={previous}:")]);
        }
    }
}

/// One line of `sqlite3 DB SQL`.
fn sqlite(db: &Path, sql: &str) -> String {
    support::sqlite3(&[], db, sql).trim().to_string()
}

/// Certificates stored and enrollment-token uses spent.
fn issued_and_spent(db: &Path) -> (i64, i64) {
    let n = |sql| sqlite(db, sql).parse::<i64>().expect("a number");
    (
        n("SELECT COUNT(*) FROM certificates"),
        n("SELECT COALESCE(SUM(uses), 0) FROM tokens"),
    )
}

fn enroll(server: &Server, root: &Path, body: &Path) -> Http {
    curl(&[
        "--cacert",
        s(root),
        "-H",
        "content-type: application/json",
        "--data-binary",
        &format!("@{}", s(body)),
        &format!("{}/v1/enroll", server.url),
    ])
}

fn server_fills_its_disk(fault: DiskFault) {
    let mut ca = TestCa::new();
    let disk = match fault {
        DiskFault::Tmpfs => {
            let Some(disk) = tmpfs_or_explain("server disk full", &ca.path("disk"), "8m") else {
                return;
            };
            ca.data = disk.dir.join("ca");
            Some(disk)
        }
        DiskFault::FileSizeLimit => None,
    };
    ca.server(&[
        "init",
        "--policy",
        s(&support::example_policy()),
        "--insecure-no-passphrase",
    ])
    .expect_code(0);
    let token = ca.ci_token(10);
    let bundle = ca.server(&["bundle", "--env", "ci"]);
    bundle.expect_code(0);
    let root = ca.path("root.pem");
    std::fs::write(&root, &bundle.stdout).expect("root");
    let csr = support::openssl_p256_csr(&ca.path("key.pem"), &ca.path("req.csr"), "api");
    let body = ca.path("body.json");
    let json = serde_json::json!({ "token": token, "csr": csr, "dns": [API_CI] });
    std::fs::write(&body, json.to_string()).expect("body");
    let db = ca.data.join("ca.db");

    let mut server = ca.serve(&[]);
    assert_eq!(enroll(&server, &root, &body).status, 201);
    let before = issued_and_spent(&db);

    let mut limit = None;
    let filler = match fault {
        DiskFault::Tmpfs => disk.as_ref().map(SmallFs::fill),
        DiskFault::FileSizeLimit => {
            // One byte: every write SQLite makes (WAL frames, the WAL header) goes past it.
            limit = Some(FsizeLimit::set(server.pid().expect("running"), 1));
            None
        }
    };

    let refused = enroll(&server, &root, &body);
    let problem = refused.expect_problem(503, "storage-unavailable");
    let detail = problem["detail"].as_str().unwrap_or_default();
    let expected: &[&str] = match fault {
        DiskFault::Tmpfs => &["database write failed: disk full; retry later"],
        // SQLite reports EFBIG as an I/O error, a write cut short by the limit as a full disk.
        DiskFault::FileSizeLimit => &[
            "database write failed: disk full; retry later",
            "database I/O error; retry later",
        ],
    };
    assert!(expected.contains(&detail), "{fault:?}: detail {detail:?}");
    for secret in [token.as_str(), s(ca.tmp.path()), "ca.db", "code"] {
        assert!(
            !refused.body.contains(secret),
            "the problem names the fault, not {secret:?}: {}",
            refused.body
        );
    }

    // The server is still up and serves what needs no write; the database is whole and holds
    // nothing of the refused enrollment: no certificate row, the token use not spent.
    let roots = curl(&["--cacert", s(&root), &format!("{}/v1/roots", server.url)]);
    assert_eq!(roots.status, 200, "{}", roots.body);
    assert_eq!(sqlite(&db, "PRAGMA integrity_check"), "ok");
    assert_eq!(
        issued_and_spent(&db),
        before,
        "{fault:?}: nothing half-written"
    );

    // Space comes back: the same server enrolls again.
    if let Some(f) = filler {
        std::fs::remove_file(f).expect("remove the filler");
    }
    if let Some(l) = limit.as_mut() {
        l.lift();
    }
    let again = enroll(&server, &root, &body);
    assert_eq!(again.status, 201, "{fault:?}: {}", again.body);
    assert_eq!(
        issued_and_spent(&db),
        (before.0 + 1, before.1 + 1),
        "{fault:?}: one certificate and one token use more"
    );
    if fault == DiskFault::Tmpfs {
        // The operator's log says what and where; the client only heard the fault.
        let log = server.stderr();
        assert!(
            log.contains("storage is unavailable") && log.contains("database or disk is full"),
            "{log}"
        );
    }
    assert_eq!(server.terminate(), Some(0));
    ca.server(&["audit", "verify"]).expect_code(0);
    assert_eq!(sqlite(&db, "PRAGMA integrity_check"), "ok");
}

#[test]
fn server_on_a_full_tmpfs_answers_503_writes_nothing_and_recovers_without_restart() {
    server_fills_its_disk(DiskFault::Tmpfs);
}

#[test]
fn server_over_its_file_size_limit_answers_503_writes_nothing_and_recovers_without_restart() {
    server_fills_its_disk(DiskFault::FileSizeLimit);
}

/// A CA server whose leaves are backdated by only a second, and agents' configuration for it.
struct AgentEnv {
    ca: TestCa,
    _server: Server,
    url: String,
    fingerprint: String,
}

impl AgentEnv {
    fn new() -> AgentEnv {
        let (ca, fingerprint) = TestCa::init_with_fingerprint();
        let cfg = ca.path("server.toml");
        std::fs::write(&cfg, "backdate = \"1s\"\n").expect("server.toml");
        let server = ca.serve(&["--config", s(&cfg)]);
        AgentEnv {
            url: server.url.clone(),
            ca,
            _server: server,
            fingerprint,
        }
    }

    /// Writes `dir/agent.toml` (state and token in `dir`) for one certificate `api` published in
    /// `out`, and a fresh single-use token; returns the configuration's path. Renewals happen
    /// only when asked for (10-minute certificates) and a failed attempt is retried only when
    /// asked for, so what is on disk changes only when the test says so.
    fn agent(&self, dir: &Path, out: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).expect("agent dir");
        let token = self
            .ca
            .server(&["token", "create", "--env", "dev", "--service", "api"]);
        token.expect_code(0);
        std::fs::write(dir.join("token"), token.stdout.trim()).expect("token");
        let cfg = dir.join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"server = "{server}"
root_fingerprint = "{fp}"
state_dir = "{dir}/state"
token_file = "{dir}/token"
backoff_initial = "10m"
backoff_max = "10m"
bundle_refresh = "1h"

[[cert]]
name = "api"
env = "dev"
service = "api"
dns = ["{API_DEV}"]
ttl = "10m"
dir = "{out}"
"#,
                server = self.url,
                fp = self.fingerprint,
                dir = s(dir),
                out = s(out),
            ),
        )
        .expect("agent.toml");
        cfg
    }
}

/// `ca-agent renew --now`.
fn renew_now(cfg: &Path) {
    let mut c = Command::new(agent_bin());
    c.args(["renew", "--now", "--config", s(cfg)]);
    run_bounded(c, Duration::from_secs(10)).expect_code(0);
}

/// openssl's verdict on the published files: the key matches the certificate (also in
/// `combined.pem`) and the chain verifies to the bundle.
fn openssl_pair_ok(out: &Path) {
    let public = |args: &[&str], file: &Path| {
        let mut a = args.to_vec();
        a.extend(["-in", s(file)]);
        let run = openssl(a);
        run.expect_code(0);
        run.stdout
    };
    let from_cert = public(&["x509", "-noout", "-pubkey"], &out.join("cert.pem"));
    assert_eq!(
        public(&["pkey", "-pubout"], &out.join("key.pem")),
        from_cert,
        "key.pem and cert.pem belong together"
    );
    let combined = out.join("combined.pem");
    assert_eq!(public(&["pkey", "-pubout"], &combined), from_cert);
    assert_eq!(public(&["x509", "-noout", "-pubkey"], &combined), from_cert);
    support::openssl_verify_dir(out).expect_code(0);
}

/// The published files, read through the stable paths.
fn published(out: &Path) -> Vec<(String, Vec<u8>)> {
    [
        "current",
        "key.pem",
        "cert.pem",
        "chain.pem",
        "combined.pem",
    ]
    .iter()
    .map(|f| {
        let p = out.join(f);
        let bytes = if *f == "current" {
            std::fs::read_link(&p)
                .expect("current")
                .into_os_string()
                .into_encoded_bytes()
        } else {
            std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        (f.to_string(), bytes)
    })
    .collect()
}

fn agent_fills_its_disk(fault: DiskFault) {
    let env = AgentEnv::new();
    let dir = env.ca.path("agent");
    let disk = match fault {
        DiskFault::Tmpfs => {
            let Some(disk) = tmpfs_or_explain("agent disk full", &dir.join("disk"), "1m") else {
                return;
            };
            Some(disk)
        }
        DiskFault::FileSizeLimit => None,
    };
    let out = match &disk {
        Some(d) => d.dir.join("out"),
        None => dir.join("out"),
    };
    let cfg = env.agent(&dir, &out);
    let mut agent = Agent::start(&cfg);
    let first = wait_for_api(&cfg, Duration::from_secs(60), "enrollment", |s| {
        s["health"] == "ok"
    });
    let before = published(&out);
    let versions = support::list_dir(&out.join("versions"));

    let mut limit = None;
    let filler = match fault {
        DiskFault::Tmpfs => disk.as_ref().map(SmallFs::fill),
        DiskFault::FileSizeLimit => {
            // Well under the size of chain.pem (a new one may be a few bytes shorter), above
            // that of the status file with an error in it, so the new version cannot be written
            // but the agent can still report why.
            let size = |p: PathBuf| std::fs::metadata(p).expect("published").len();
            let chain = size(out.join("chain.pem"));
            let status = size(dir.join("state/status.json"));
            println!("chain.pem {chain} bytes, status.json {status} bytes");
            assert!(
                status + 300 < chain - 100,
                "the status file ({status} bytes) is too close to chain.pem ({chain} bytes) for \
                 a file-size limit to stop one and not the other"
            );
            let bytes = usize::try_from(chain - 100).expect("size");
            limit = Some(FsizeLimit::set(agent.pid().expect("running"), bytes));
            None
        }
    };
    renew_now(&cfg);
    let failed = wait_for_api(&cfg, Duration::from_secs(60), "failed renewal", |s| {
        s["failures"].as_u64().unwrap_or(0) >= 1
    });
    let error = failed["last_error"].as_str().unwrap_or_default();
    let cause = match fault {
        DiskFault::Tmpfs => "No space left on device",
        DiskFault::FileSizeLimit => "File too large",
    };
    assert!(
        error.contains("cannot write") && error.contains(cause),
        "{fault:?}: {failed}\n{}",
        agent.log()
    );
    assert_eq!(
        (&failed["health"], &failed["serial"]),
        (&serde_json::json!("ok"), &first["serial"]),
        "{fault:?}: the certificate in place is still valid: {failed}"
    );
    // Exactly what was there: the same files through the same `current`, no version half
    // written beside them.
    assert!(
        published(&out) == before,
        "{fault:?}: the published files changed"
    );
    assert_eq!(support::list_dir(&out.join("versions")), versions);
    openssl_pair_ok(&out);

    if let Some(f) = filler {
        std::fs::remove_file(f).expect("remove the filler");
    }
    if let Some(l) = limit.as_mut() {
        l.lift();
    }
    renew_now(&cfg);
    let renewed = wait_for_api(
        &cfg,
        Duration::from_secs(60),
        "renewal once space is back",
        |s| s["health"] == "ok" && s["serial"] != first["serial"],
    );
    assert!(renewed["last_error"].is_null(), "{renewed}");
    openssl_pair_ok(&out);
    assert_eq!(agent.terminate(), Some(0));
}

#[test]
fn agent_on_a_full_tmpfs_keeps_its_certificate_reports_and_renews_once_space_is_back() {
    agent_fills_its_disk(DiskFault::Tmpfs);
}

#[test]
fn agent_over_its_file_size_limit_keeps_its_certificate_reports_and_renews_once_lifted() {
    agent_fills_its_disk(DiskFault::FileSizeLimit);
}

/// xorshift64*: kill points from a seed, so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// The serial of a PEM key and the first certificate of a PEM text when they belong together,
/// or why they do not.
fn matching_pair(key_pem: &[u8], cert_pem: &[u8]) -> Result<String, String> {
    use x509_parser::pem::Pem;
    let block = |text: &[u8], label: &str| {
        Pem::iter_from_buffer(text)
            .map_while(Result::ok)
            .find(|p| p.label == label)
            .ok_or_else(|| format!("no {label} block"))
    };
    let key = block(key_pem, "PRIVATE KEY")?;
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &key.contents,
        &ring::rand::SystemRandom::new(),
    )
    .map_err(|e| format!("unusable key: {e}"))?;
    let cert = block(cert_pem, "CERTIFICATE")?;
    let (_, x509) = x509_parser::parse_x509_certificate(&cert.contents)
        .map_err(|e| format!("unusable certificate: {e}"))?;
    let serial = x509.raw_serial_as_string();
    if x509.public_key().subject_public_key.data.as_ref()
        != ring::signature::KeyPair::public_key(&pair).as_ref()
    {
        return Err(format!("the key does not match certificate {serial}"));
    }
    Ok(serial)
}

/// Reads the published pair as a service would: `current` resolved once, then its key and
/// certificate; and `combined.pem` through its stable path. `Ok(None)`: nothing published yet,
/// or a version pruned between resolving and reading (`current` moved on meanwhile).
fn read_published(out: &Path) -> Result<Option<String>, String> {
    let Ok(target) = std::fs::read_link(out.join("current")) else {
        return Ok(None);
    };
    let moved_on = || std::fs::read_link(out.join("current")).ok().as_ref() != Some(&target);
    let version = out.join(&target);
    let (key, cert) = match (
        std::fs::read(version.join("key.pem")),
        std::fs::read(version.join("cert.pem")),
    ) {
        (Ok(k), Ok(c)) => (k, c),
        _ if moved_on() => return Ok(None),
        (k, c) => {
            return Err(format!(
                "{}: published but unreadable: key {:?}, cert {:?}",
                target.display(),
                k.err(),
                c.err()
            ));
        }
    };
    let serial = matching_pair(&key, &cert).map_err(|e| format!("{}: {e}", target.display()))?;
    match std::fs::read(out.join("combined.pem")) {
        Ok(all) => {
            matching_pair(&all, &all).map_err(|e| format!("combined.pem: {e}"))?;
        }
        Err(_) if moved_on() => return Ok(None),
        Err(e) => return Err(format!("combined.pem unreadable while current is set: {e}")),
    }
    Ok(Some(serial))
}

#[test]
fn the_readers_check_tells_a_torn_or_partial_pair_from_a_whole_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pair = |name: &str| {
        let (key, cert) = (
            tmp.path().join(format!("{name}.key")),
            tmp.path().join(format!("{name}.crt")),
        );
        openssl([
            "req",
            "-x509",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-days",
            "1",
            "-subj",
            "/CN=reader",
            "-keyout",
            s(&key),
            "-out",
            s(&cert),
        ])
        .expect_code(0);
        (
            std::fs::read(key).expect("key"),
            std::fs::read(cert).expect("cert"),
        )
    };
    let (key_a, cert_a) = pair("a");
    let (_, cert_b) = pair("b");
    assert!(matching_pair(&key_a, &cert_a).is_ok());
    assert!(matching_pair(&key_a, &cert_b).is_err(), "a torn pair");
    assert!(
        matching_pair(&key_a, &cert_a[..cert_a.len() / 2]).is_err(),
        "a partial file"
    );
    assert!(matching_pair(b"", &cert_a).is_err(), "an empty file");

    let out = tmp.path().join("out");
    assert_eq!(read_published(&out), Ok(None), "nothing published yet");
    let version = out.join("versions/1");
    std::fs::create_dir_all(&version).expect("version");
    std::os::unix::fs::symlink("versions/1", out.join("current")).expect("current");
    for f in ["key.pem", "cert.pem", "chain.pem", "combined.pem"] {
        std::os::unix::fs::symlink(Path::new("current").join(f), out.join(f)).expect("link");
    }
    std::fs::write(version.join("key.pem"), &key_a).expect("key");
    assert!(
        read_published(&out).is_err(),
        "a version without its certificate"
    );
    std::fs::write(version.join("cert.pem"), &cert_a).expect("cert");
    assert!(
        read_published(&out).is_err(),
        "a version without combined.pem"
    );
    std::fs::write(
        version.join("combined.pem"),
        [key_a.as_slice(), &cert_b].concat(),
    )
    .expect("combined");
    assert!(read_published(&out).is_err(), "a torn combined.pem");
    std::fs::write(
        version.join("combined.pem"),
        [key_a.as_slice(), &cert_a].concat(),
    )
    .expect("combined");
    assert!(matches!(read_published(&out), Ok(Some(_))));
}

/// Reads the published pair continuously on its own thread until stopped.
struct Reader {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, std::collections::BTreeSet<String>, Vec<String>)>,
}

impl Reader {
    fn start(out: &Path) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let (out, flag) = (out.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            let (mut reads, mut serials, mut problems) =
                (0, std::collections::BTreeSet::new(), Vec::new());
            while !flag.load(Ordering::Relaxed) {
                match read_published(&out) {
                    Ok(Some(serial)) => {
                        reads += 1;
                        serials.insert(serial);
                    }
                    Ok(None) => {}
                    Err(e) if problems.len() < 20 => problems.push(e),
                    Err(_) => {}
                }
                // Leaves the two cores to the agent and the server most of the time.
                std::thread::sleep(Duration::from_millis(2));
            }
            (reads, serials, problems)
        });
        Reader { stop, thread }
    }

    /// Reads done, serials seen and inconsistencies found.
    fn finish(self) -> (u64, std::collections::BTreeSet<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("reader thread")
    }
}

/// Waits (bounded) until the agent has written its pid file: its signal handlers are in place.
fn wait_ready(agent: &Agent, state: &Path) {
    let pid = agent.pid().expect("running").to_string();
    let start = Instant::now();
    while !std::fs::read_to_string(state.join("agent.pid")).is_ok_and(|p| p.trim() == pid) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the agent did not start within 30s:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGHUP: renew now.
fn hangup(agent: &Agent) {
    let mut c = Command::new("kill");
    c.args(["-HUP", &agent.pid().expect("running").to_string()]);
    run_bounded(c, Duration::from_secs(10)).expect_code(0);
}

/// The serial in the status file (read directly: cheaper than `ca-agent status` in a loop).
fn status_serial(state: &Path) -> Option<String> {
    let text = std::fs::read_to_string(state.join("status.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["certs"]["api"]["serial"].as_str().map(str::to_string)
}

/// The serial the running agent reports once it has checked the certificate in place (a new
/// process starts with none).
fn wait_serial(agent: &Agent, state: &Path) -> String {
    let start = Instant::now();
    loop {
        if let Some(serial) = status_serial(state) {
            return serial;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no serial in the status within 30s:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends SIGHUP (renew now) and waits (bounded) for the status to show a serial other than
/// `old`; returns it.
fn renew_and_wait(agent: &Agent, state: &Path, old: &str, seed: u64) -> String {
    hangup(agent);
    let start = Instant::now();
    loop {
        if let Some(serial) = status_serial(state).filter(|s| s != old) {
            return serial;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "seed {seed}: no renewal within 30s:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn agent_killed_at_random_points_of_renewals_never_publishes_a_torn_pair() {
    const KILLS: usize = 50;
    let seed = std::env::var("E2E_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        .max(1);
    println!("seed {seed} (E2E_FAULTS_SEED={seed} draws the same kill points again)");
    let mut rng = Rng(seed);

    let env = AgentEnv::new();
    let dir = env.ca.path("agent");
    let out = dir.join("out");
    let state = dir.join("state");
    let cfg = env.agent(&dir, &out);
    let mut agent = Agent::start(&cfg);
    wait_for_api(&cfg, Duration::from_secs(60), "enrollment", |s| {
        s["health"] == "ok"
    });
    let reader = Reader::start(&out);

    // How long a start and a renewal take here, so kill points spread over both.
    let mut serial = status_serial(&state).expect("serial");
    agent.kill9();
    let started = Instant::now();
    agent = Agent::start(&cfg);
    wait_ready(&agent, &state);
    let start_time = started.elapsed();
    let renewing = Instant::now();
    for _ in 0..3 {
        serial = renew_and_wait(&agent, &state, &serial, seed);
    }
    let renewal_time = renewing.elapsed() / 3;
    println!("a start takes about {start_time:?}, a renewal about {renewal_time:?}");
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);

    let (mut during_start, mut before_flip, mut after_flip) = (0, 0, 0);
    for kill in 0..KILLS {
        let published_before = std::fs::read_link(out.join("current")).ok();
        if rng.below(5) == 0 {
            // Somewhere in start-up: trust, recovery of the output directory, the first check.
            std::thread::sleep(Duration::from_micros(rng.below(micros(start_time))));
            agent.kill9();
            during_start += 1;
        } else {
            // Somewhere in a renewal: key generation, the request, writing, the flip, pruning.
            wait_ready(&agent, &state);
            hangup(&agent);
            std::thread::sleep(Duration::from_micros(
                rng.below(micros(renewal_time) * 3 / 2),
            ));
            agent.kill9();
            if std::fs::read_link(out.join("current")).ok() == published_before {
                before_flip += 1;
            } else {
                after_flip += 1;
            }
        }
        match read_published(&out) {
            Ok(Some(_)) => {}
            other => panic!("seed {seed}, kill {kill}: {other:?}"),
        }
        agent = Agent::start(&cfg);
    }
    println!(
        "{KILLS} kills: {during_start} during start-up, {before_flip} in a renewal before its \
         flip, {after_flip} after it"
    );

    // The agent that follows renews as if nothing happened, and cleaned up after the others.
    wait_ready(&agent, &state);
    let old = wait_serial(&agent, &state);
    renew_and_wait(&agent, &state, &old, seed);
    let final_status = wait_for_api(&cfg, Duration::from_secs(60), "a settled status", |s| {
        s["health"] == "ok"
    });
    assert!(
        final_status["last_error"].is_null(),
        "seed {seed}: {final_status}"
    );
    let (reads, serials, problems) = reader.finish();
    println!(
        "the reader read {reads} times and saw {} serials",
        serials.len()
    );
    assert!(
        problems.is_empty(),
        "seed {seed}: the reader saw torn or partial pairs:\n{}",
        problems.join("\n")
    );
    assert!(reads > 100, "seed {seed}: the reader barely read ({reads})");
    openssl_pair_ok(&out);
    let versions = support::list_dir(&out.join("versions"));
    assert!(
        versions.len() <= 2,
        "seed {seed}: versions left behind: {versions:?}"
    );
    let leftovers: Vec<String> = support::list_dir(&out)
        .into_iter()
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "seed {seed}: {leftovers:?}");
    for f in ["key.pem", "cert.pem", "chain.pem", "combined.pem"] {
        assert_eq!(
            std::fs::read_link(out.join(f)).expect("stable path"),
            Path::new("current").join(f)
        );
    }
    assert_eq!(agent.terminate(), Some(0));
}
