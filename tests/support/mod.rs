//! Shared harness for end-to-end tests: runs the real binaries in temp dirs and checks results
//! with independent tools (openssl). Every child process is bounded in time.

#![allow(dead_code)]

pub mod nginx;
pub mod pebble;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A path as `&str` for command arguments (test paths are always UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// `openssl verify` of `DIR/cert.pem` with `DIR/bundle.pem` as anchors and `DIR/chain.pem` as
/// intermediates: the layout both `ca-server issue` and `ca-agent` write.
pub fn openssl_verify_dir(dir: &Path) -> Run {
    openssl([
        "verify",
        "-CAfile",
        s(&dir.join("bundle.pem")),
        "-untrusted",
        s(&dir.join("chain.pem")),
        s(&dir.join("cert.pem")),
    ])
}

/// A fresh P-256 key (`key`) and CSR (`csr`, subject `/CN=cn`) made by openssl; returns the CSR
/// PEM.
pub fn openssl_p256_csr(key: &Path, csr: &Path, cn: &str) -> String {
    openssl([
        "req",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-keyout",
        s(key),
        "-out",
        s(csr),
        "-subj",
        &format!("/CN={cn}"),
    ])
    .expect_code(0);
    std::fs::read_to_string(csr).expect("csr")
}

/// The `SERIAL KEYHASH` lines a test reload hook appended to `path` (none when it is missing).
pub fn reload_log(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect()
}

/// Permission bits of `path`.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Absolute path of the repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The example policy shipped in `policies/`.
pub fn example_policy() -> PathBuf {
    repo_root().join("policies/example.toml")
}

/// The `ca-server` binary: this package's, or the sibling of `ca-agent`'s in the same target
/// directory (`cargo test --workspace` builds both).
pub fn server_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_ca-server") {
        return PathBuf::from(p);
    }
    let agent = PathBuf::from(option_env!("CARGO_BIN_EXE_ca-agent").unwrap_or("ca-agent"));
    let p = agent.with_file_name("ca-server");
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        p.display()
    );
    p
}

/// The `ca-agent` binary (sibling of `ca-server` when testing the server package).
pub fn agent_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_ca-agent") {
        return PathBuf::from(p);
    }
    server_bin().with_file_name("ca-agent")
}

/// Result of one command run.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with both streams unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics unless stderr contains `needle`; also checks no panic or backtrace leaked.
    #[track_caller]
    pub fn expect_stderr(&self, needle: &str) -> &Run {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr
        );
        self.expect_clean_error()
    }

    /// Panics unless stdout contains `needle`.
    #[track_caller]
    pub fn expect_stdout_contains(&self, needle: &str) -> &Run {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics if the output shows a panic, a backtrace or a debug dump.
    #[track_caller]
    pub fn expect_clean_error(&self) -> &Run {
        for bad in [
            "panicked",
            "RUST_BACKTRACE",
            "stack backtrace",
            "Error {",
            "Os {",
        ] {
            assert!(
                !self.stderr.contains(bad),
                "stderr shows {bad:?}:\n{}",
                self.stderr
            );
        }
        self
    }
}

/// A loopback port that was free a moment ago, for a peer that cannot bind port 0 and report
/// the port it got. Picked at random below Linux's ephemeral range (32768 and up), where no
/// outgoing connection or port-0 listener of a concurrent test can take it in the meantime.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    const LOW: u64 = 20_000;
    const HIGH: u64 = 32_000;
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = u16::try_from(LOW + h.finish() % (HIGH - LOW)).expect("port range fits u16");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {HIGH}");
}

/// Runs `cmd` with a deadline, killing it if it overruns.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Run {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} did not finish within {limit:?}");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for {cmd:?}: {e}"),
        }
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("output: {e}"));
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs `openssl` with `args`.
pub fn openssl<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new("openssl");
    c.args(args);
    run_bounded(c, Duration::from_secs(30))
}

/// `sqlite3 [FLAGS] DB SQL` (bounded, no stdin), asserting that it succeeded; its output.
pub fn sqlite3(flags: &[&str], db: &Path, sql: &str) -> String {
    let mut c = Command::new("sqlite3");
    c.args(flags).arg(db).arg(sql).stdin(Stdio::null());
    let run = run_bounded(c, Duration::from_secs(30));
    assert!(run.ok(), "sqlite3 {sql}: {}", run.stderr);
    run.stdout
}

/// The subjectAltName extension of certificate `cert` as `openssl x509` prints it.
pub fn san_text(cert: &Path) -> String {
    let run = openssl([
        "x509".as_ref(),
        "-noout".as_ref(),
        "-ext".as_ref(),
        "subjectAltName".as_ref(),
        "-in".as_ref(),
        cert.as_os_str(),
    ]);
    run.expect_code(0);
    run.stdout
}

/// Removes the environment variables that stand for `ca-server` flags, so only the arguments a
/// test gives count.
pub fn clear_ca_env(c: &mut Command) {
    for var in [
        "CA_DATA_DIR",
        "CA_DATABASE_URL",
        "CA_POLICY",
        "CA_PASSPHRASE",
        "CA_PASSPHRASE_FILE",
        "CA_PUBLIC_URL",
        "CA_LISTEN",
        "CA_CONFIG",
    ] {
        c.env_remove(var);
    }
}

/// A CA data directory in a temp dir, driven through the `ca-server` binary.
pub struct TestCa {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub passphrase_file: Option<PathBuf>,
    /// When set, the CA lives in this PostgreSQL database instead of `data`.
    pub database_url: Option<String>,
}

impl TestCa {
    /// An uninitialised CA location.
    pub fn new() -> TestCa {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("ca");
        TestCa {
            tmp,
            data,
            passphrase_file: None,
            database_url: None,
        }
    }

    /// An uninitialised CA in the PostgreSQL database at `url`.
    pub fn on_postgres(url: &str) -> TestCa {
        TestCa {
            database_url: Some(url.to_string()),
            ..TestCa::new()
        }
    }

    /// `--database-url URL` or `--data-dir DIR`, and the passphrase file when sealed.
    fn locate(&self, c: &mut Command) {
        match &self.database_url {
            Some(url) => c.arg("--database-url").arg(url),
            None => c.arg("--data-dir").arg(&self.data),
        };
        if let Some(pf) = &self.passphrase_file {
            c.arg("--passphrase-file").arg(pf);
        }
        clear_ca_env(c);
    }

    /// Initialised with the example policy and no passphrase.
    pub fn init_insecure() -> TestCa {
        let ca = TestCa::new();
        ca.server(&[
            "init",
            "--policy",
            example_policy().to_str().expect("utf8"),
            "--insecure-no-passphrase",
        ])
        .expect_code(0);
        ca
    }

    /// Initialised with the example policy and no passphrase; also returns the root's SHA-256
    /// fingerprint that agents pin.
    pub fn init_with_fingerprint() -> (TestCa, String) {
        let ca = TestCa::new();
        let run = ca.server(&[
            "init",
            "--policy",
            s(&example_policy()),
            "--insecure-no-passphrase",
            "--json",
        ]);
        run.expect_code(0);
        let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
        let fingerprint = v["root_fingerprint"]
            .as_str()
            .expect("fingerprint")
            .to_string();
        (ca, fingerprint)
    }

    /// Initialised with the example policy and a passphrase file.
    pub fn init_sealed(passphrase: &str) -> TestCa {
        TestCa::init_sealed_with(passphrase, &[])
    }

    /// [`TestCa::init_sealed`] with more `init` arguments (e.g. `--root-key-out FILE`).
    pub fn init_sealed_with(passphrase: &str, extra: &[&str]) -> TestCa {
        let mut ca = TestCa::new();
        let pf = ca.tmp.path().join("passphrase");
        std::fs::write(&pf, format!("{passphrase}\n")).expect("write passphrase");
        ca.passphrase_file = Some(pf);
        let policy = example_policy();
        let mut args = vec!["init", "--policy", s(&policy)];
        args.extend_from_slice(extra);
        ca.server(&args).expect_code(0);
        ca
    }

    /// Mints a CI token for ci/api with `uses` enrollments, valid for an hour; returns its text.
    pub fn ci_token(&self, uses: u32) -> String {
        let run = self.server(&[
            "token",
            "create",
            "--env",
            "ci",
            "--service",
            "api",
            "--uses",
            &uses.to_string(),
            "--ttl",
            "1h",
        ]);
        run.expect_code(0);
        run.stdout.trim().to_string()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `ca-server issue --env ENV --service SERVICE [--dns N...] --out OUT EXTRA...`.
    pub fn issue(&self, env: &str, service: &str, dns: &[&str], out: &Path, extra: &[&str]) -> Run {
        let mut args = vec!["issue", "--env", env, "--service", service];
        if !dns.is_empty() {
            args.push("--dns");
            args.extend_from_slice(dns);
        }
        args.extend(["--out", s(out)]);
        args.extend_from_slice(extra);
        self.server(&args)
    }

    /// `ca-server ARGS --data-dir <data>` (plus the passphrase file when sealed).
    pub fn server(&self, args: &[&str]) -> Run {
        let mut c = Command::new(server_bin());
        c.args(args);
        self.locate(&mut c);
        run_bounded(c, Duration::from_secs(60))
    }
}

/// One enrollment with curl (`body` is curl's `--data-binary` argument, e.g. `@FILE`): the HTTP
/// status and body, `None` when no answer came.
pub fn curl_enroll(url: &str, root: &str, body: &str) -> Option<(u16, String)> {
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--max-time",
        "10",
        "--cacert",
        root,
        "-H",
        "content-type: application/json",
        "--data-binary",
        body,
        "-w",
        "\n%{http_code}",
        &format!("{url}/v1/enroll"),
    ]);
    let run = run_bounded(c, Duration::from_secs(20));
    let (json, code) = run.stdout.rsplit_once('\n')?;
    let code: u16 = code.trim().parse().ok()?;
    Some((code, json.to_string()))
}

/// Files in `dir` (empty when it does not exist).
pub fn list_dir(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            let mut v: Vec<String> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
        Err(_) => Vec::new(),
    }
}

/// A running `ca-server serve` on 127.0.0.1 with a random port; SIGTERM and reaped on drop.
pub struct Server {
    child: Option<std::process::Child>,
    pub url: String,
    pub port: u16,
    /// The plain-HTTP distribution listener, when started with `--http-listen`.
    pub http_url: Option<String>,
    stderr_path: PathBuf,
}

impl TestCa {
    /// Starts `ca-server serve --listen 127.0.0.1:0 EXTRA...` and waits for its ready line.
    pub fn serve(&self, extra: &[&str]) -> Server {
        self.serve_with_env(extra, &[])
    }

    /// [`TestCa::serve`] with extra environment variables (`CA_LOG`, ...).
    pub fn serve_with_env(&self, extra: &[&str], vars: &[(&str, &str)]) -> Server {
        use std::io::{BufRead, BufReader};
        let stderr_path = self.tmp.path().join(format!(
            "serve-{}.err",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut c = Command::new(server_bin());
        c.arg("serve");
        if !extra.contains(&"--listen") {
            c.args(["--listen", "127.0.0.1:0"]);
        }
        c.args(extra);
        self.locate(&mut c);
        c.envs(vars.iter().copied());
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(stderr);
        let mut child = c.spawn().expect("start ca-server serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Forward every line (the http line comes first when enabled) and keep draining so
            // the server never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server did not report readiness; stderr:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        };
        let mut http_url = None;
        let mut line = line;
        if let Some(rest) = line.strip_prefix("listening on http://") {
            http_url = Some(format!(
                "http://{}",
                rest.split_whitespace().next().unwrap_or("")
            ));
            line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("https ready line after the http one");
        }
        let url = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        let port: u16 = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in ready line");
        Server {
            child: Some(child),
            url,
            port,
            http_url,
            stderr_path,
        }
    }
}

impl Server {
    /// Sends SIGTERM and waits (bounded) for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server ignored SIGTERM for 20s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends a signal (`HUP`, `TERM`, ...) to the server.
    pub fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let ok = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(child.id().to_string())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "could not send SIG{sig}");
        }
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An HTTP answer seen by curl.
#[derive(Debug)]
pub struct Http {
    pub status: u16,
    pub body: String,
    pub content_type: String,
    pub curl_code: Option<i32>,
    pub curl_err: String,
}

impl Http {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Asserts a problem document with `status` and a `type` ending in `slug`.
    #[track_caller]
    pub fn expect_problem(&self, status: u16, slug: &str) -> serde_json::Value {
        assert_eq!(
            self.status, status,
            "body: {} / curl: {}",
            self.body, self.curl_err
        );
        assert!(
            self.content_type.starts_with("application/problem+json"),
            "content type {}",
            self.content_type
        );
        let v = self.json();
        assert_eq!(v["type"], format!("urn:ca-server:problem:{slug}"), "{v}");
        assert_eq!(v["status"], status);
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()));
        v
    }
}

/// Runs curl with `args` against the server; `-w` reports status and content type.
pub fn curl(args: &[&str]) -> Http {
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--max-time",
        "20",
        "-o",
        "-",
        "-w",
        "\n%{http_code} %{content_type}",
    ])
    .args(args);
    let run = run_bounded(c, Duration::from_secs(30));
    let (body, meta) = run
        .stdout
        .rsplit_once('\n')
        .unwrap_or(("", run.stdout.as_str()));
    let mut parts = meta.splitn(2, ' ');
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let content_type = parts.next().unwrap_or("").to_string();
    Http {
        status,
        body: body.to_string(),
        content_type,
        curl_code: run.code,
        curl_err: run.stderr,
    }
}

/// Downloads with curl into `path` (binary safe); returns the HTTP status (0: no answer).
pub fn curl_download(args: &[&str], path: &Path) -> u16 {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "20", "-w", "%{http_code}", "-o"])
        .arg(path)
        .args(args);
    let run = run_bounded(c, Duration::from_secs(30));
    run.stdout.trim().parse().unwrap_or(0)
}

/// A running `ca-agent run`, killed and reaped on drop.
pub struct Agent {
    child: Option<std::process::Child>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Agent {
    pub fn start(cfg: &Path) -> Agent {
        let dir = cfg.parent().expect("dir");
        let n = std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0);
        let stdout = dir.join(format!("agent-{n}.out"));
        let stderr = dir.join(format!("agent-{n}.err"));
        let child = Command::new(agent_bin())
            .args(["run", "--config", s(cfg)])
            .env_remove("CA_AGENT_TOKEN")
            .env("CA_AGENT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("out"))
            .stderr(std::fs::File::create(&stderr).expect("err"))
            .spawn()
            .expect("start ca-agent");
        Agent {
            child: Some(child),
            stdout,
            stderr,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The agent's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if start.elapsed() > Duration::from_secs(15) {
                let _ = c.kill();
                let _ = c.wait();
                panic!("agent ignored SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the agent to exit by itself (bounded) and returns its code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if start.elapsed() > limit {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `ca-agent status --json --config CFG`: exit code and the parsed status.
/// The status entry of the certificate named `api` in the agent's status.
pub fn api_status(cfg: &Path) -> serde_json::Value {
    status(cfg).1["certs"]["api"].clone()
}

/// Polls the `api` certificate's status until `pred` holds, or panics after `limit`.
pub fn wait_for_api(
    cfg: &Path,
    limit: Duration,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let st = api_status(cfg);
        if pred(&st) {
            return st;
        }
        assert!(
            start.elapsed() < limit,
            "timed out waiting for {what}; status: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Initialises a CA with the example policy and no passphrase in the PostgreSQL database `url`.
pub fn init_insecure_on_postgres(url: &str) -> TestCa {
    let ca = TestCa::on_postgres(url);
    ca.server(&[
        "init",
        "--policy",
        s(&example_policy()),
        "--insecure-no-passphrase",
    ])
    .expect_code(0);
    ca
}

pub fn status(cfg: &Path) -> (Option<i32>, serde_json::Value) {
    let mut c = Command::new(agent_bin());
    c.args(["status", "--json", "--config", s(cfg)]);
    let run = run_bounded(c, Duration::from_secs(10));
    let v = serde_json::from_str(&run.stdout).unwrap_or(serde_json::Value::Null);
    (run.code, v)
}
