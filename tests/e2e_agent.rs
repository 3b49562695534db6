//! End to end: `ca-agent` against a real `ca-server` on loopback, with certificates of seconds so
//! a run sees several rotations, a separate reader process checking the files all along, and
//! openssl as the independent judge.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Agent, Server, TestCa, agent_bin, api_status, openssl, s, status, wait_for_api};

const API_DEV: &str = "api.dev.svc.example.internal";

/// A reader that keeps opening the published files and logs any inconsistency: a key that does
/// not match its certificate, an unreadable or partial file, an expired certificate.
const READER: &str = r#"#!/bin/bash
dir="$1"; until="$2"; log="$3"; tmp="$(mktemp -d)"
n=0
while [ "$(date +%s)" -lt "$until" ]; do
  v="$(readlink -f "$dir/current" 2>/dev/null)"
  if [ -z "$v" ] || [ ! -d "$v" ]; then sleep 0.05; continue; fi
  cp "$v/key.pem" "$tmp/k" 2>/dev/null && cp "$v/cert.pem" "$tmp/c" 2>/dev/null || continue
  a="$(openssl x509 -in "$tmp/c" -noout -pubkey 2>/dev/null)"
  b="$(openssl pkey -in "$tmp/k" -pubout 2>/dev/null)"
  if [ -z "$a" ] || [ "$a" != "$b" ]; then echo "MISMATCH $v" >> "$log"; fi
  openssl x509 -in "$tmp/c" -noout -checkend 0 >/dev/null 2>&1 || echo "EXPIRED $v" >> "$log"
  cat "$dir/combined.pem" > "$tmp/all" 2>/dev/null || { echo "UNREADABLE combined.pem" >> "$log"; continue; }
  c="$(openssl x509 -in "$tmp/all" -noout -pubkey 2>/dev/null)"
  d="$(openssl pkey -in "$tmp/all" -pubout 2>/dev/null)"
  if [ -z "$c" ] || [ "$c" != "$d" ]; then echo "COMBINED-MISMATCH" >> "$log"; fi
  n=$((n+1))
done
echo "READS $n" >> "$log"
rm -rf "$tmp"
"#;

struct Reader {
    child: Child,
    log: PathBuf,
}

impl Reader {
    fn start(dir: &Path, tmp: &Path, seconds: u64) -> Reader {
        let script = tmp.join("reader.sh");
        std::fs::write(&script, READER).expect("write reader");
        let log = tmp.join("reader.log");
        std::fs::write(&log, "").expect("log");
        let until = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            + seconds;
        let child = Command::new("bash")
            .arg(&script)
            .arg(dir)
            .arg(until.to_string())
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("reader");
        Reader { child, log }
    }

    /// Waits for the reader to finish; asserts it read often and never saw an inconsistency.
    fn finish(mut self) -> usize {
        let start = Instant::now();
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "reader did not stop"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(&self.log).expect("log");
        let problems: Vec<&str> = log.lines().filter(|l| !l.starts_with("READS")).collect();
        assert!(
            problems.is_empty(),
            "the reader saw inconsistent files:\n{log}"
        );
        let reads = log
            .lines()
            .find_map(|l| l.strip_prefix("READS "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        assert!(reads > 20, "the reader barely read ({reads} times)");
        reads
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA server whose leaves are backdated by only a second, so lifetimes of seconds mean what
/// they say.
struct Env {
    ca: TestCa,
    server: Server,
    fingerprint: String,
}

impl Env {
    fn new() -> Env {
        let (ca, fingerprint) = TestCa::init_with_fingerprint();
        let server = Self::start_server(&ca, "127.0.0.1:0");
        Env {
            ca,
            server,
            fingerprint,
        }
    }

    fn start_server(ca: &TestCa, listen: &str) -> Server {
        let cfg = ca.path("server.toml");
        std::fs::write(&cfg, format!("backdate = \"1s\"\nlisten = \"{listen}\"\n")).expect("write");
        ca.serve(&["--config", s(&cfg), "--listen", listen])
    }

    fn token(&self, extra: &[&str]) -> String {
        let mut args = vec!["token", "create", "--env", "dev", "--service", "api"];
        args.extend_from_slice(extra);
        let run = self.ca.server(&args);
        run.expect_code(0);
        run.stdout.trim().to_string()
    }

    /// Writes agent.toml for one certificate named `api` and returns its path.
    fn agent_config(&self, name: &str, ttl: &str, extra_cert: &str) -> PathBuf {
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
bundle_refresh = "2s"
jitter = 0.02

[[cert]]
name = "api"
env = "dev"
service = "api"
dns = ["{dns}"]
ttl = "{ttl}"
dir = "{dir}/out"
reload_command = ["sh", "-c", "echo $SERIAL $(openssl pkey -in \"$KEY_PATH\" -pubout | sha256sum | cut -c1-16) >> {dir}/reloads"]
{extra_cert}
"#,
                server = self.server.url,
                fp = self.fingerprint,
                dir = s(&dir),
                dns = API_DEV,
            ),
        )
        .expect("write agent.toml");
        cfg
    }
}

fn reloads(cfg: &Path) -> Vec<(String, String)> {
    support::reload_log(&cfg.parent().expect("dir").join("reloads"))
}

fn write_token(cfg: &Path, token: &str) {
    std::fs::write(cfg.parent().expect("dir").join("token"), token).expect("token");
}

#[test]
fn agent_rotates_with_fresh_keys_and_readers_never_see_a_torn_pair() {
    let env = Env::new();
    let cfg = env.agent_config("rotate", "20s", "");
    write_token(&cfg, &env.token(&[]));
    let out = cfg.parent().expect("dir").join("out");
    let reader = Reader::start(&out, env.ca.tmp.path(), 58);
    let agent = Agent::start(&cfg);
    let first = wait_for_api(&cfg, Duration::from_secs(20), "enrollment", |s| {
        s["health"] == "ok"
    });
    std::thread::sleep(Duration::from_secs(46));
    reader.finish();
    // Compare hook runs with the count while the agent is idle between renewals (the hook runs
    // right after each renewal, before the next wait is scheduled).
    let last = wait_for_api(&cfg, Duration::from_secs(20), "an idle moment", |s| {
        s["next_attempt"].as_i64().unwrap_or(0) - support_now() >= 3
    });

    let hooks = reloads(&cfg);
    assert!(
        hooks.len() >= 4,
        "expected an enrollment and at least 3 renewals, hook ran {} times: {hooks:?}\n{}",
        hooks.len(),
        agent.log()
    );
    let renewals = last["renewals"].as_u64().unwrap_or(0) as usize;
    assert_eq!(
        hooks.len(),
        renewals,
        "the reload hook runs once per new certificate"
    );
    let mut serials: Vec<&String> = hooks.iter().map(|h| &h.0).collect();
    let mut keys: Vec<&String> = hooks.iter().map(|h| &h.1).collect();
    serials.dedup();
    keys.sort();
    keys.dedup();
    assert_eq!(
        (serials.len(), keys.len()),
        (hooks.len(), hooks.len()),
        "every rotation has a new serial and a new key"
    );
    assert_ne!(first["serial"], last["serial"]);
    assert_eq!(last["failures"], 0, "{last}");

    // The published files verify with openssl against the bundle the agent keeps.
    let v = support::openssl_verify_dir(&out);
    v.expect_code(0);
    assert_eq!(support::mode(&out.join("current/key.pem")), 0o600);
    assert!(
        std::fs::read_dir(out.join("versions"))
            .expect("versions")
            .count()
            <= 2,
        "old versions are pruned"
    );
}

#[test]
fn agent_rides_out_a_server_outage_and_a_sigkill() {
    let mut env = Env::new();
    let cfg = env.agent_config("outage", "30s", "");
    write_token(&cfg, &env.token(&[]));
    let out = cfg.parent().expect("dir").join("out");
    let reader = Reader::start(&out, env.ca.tmp.path(), 55);
    let mut agent = Agent::start(&cfg);
    let first = wait_for_api(&cfg, Duration::from_secs(20), "enrollment", |s| {
        s["health"] == "ok"
    });

    // Take the server away for well under a third of the lifetime, across the renewal point.
    let port = env.server.port;
    let renew_at = first["next_attempt"].as_i64().unwrap_or(0);
    let now = support_now();
    std::thread::sleep(Duration::from_secs(
        u64::try_from(renew_at - now - 3).unwrap_or(0),
    ));
    assert_eq!(env.server.terminate(), Some(0));
    std::thread::sleep(Duration::from_secs(7));
    let during = api_status(&cfg);
    assert!(
        during["failures"].as_u64().unwrap_or(0) >= 1,
        "the agent should have failed to reach the server: {during}"
    );
    assert_eq!(
        during["health"], "ok",
        "the current certificate is still valid: {during}"
    );
    env.server = Env::start_server(&env.ca, &format!("127.0.0.1:{port}"));
    let renewed = wait_for_api(&cfg, Duration::from_secs(15), "recovery", |s| {
        s["serial"] != first["serial"] && s["health"] == "ok"
    });
    assert!(renewed["last_error"].is_null(), "{renewed}");

    // SIGKILL at the moment the next renewal starts (key generation, request, write), restart:
    // the files stay consistent and renewal goes on.
    let renewal_due = renewed["next_attempt"].as_i64().unwrap_or(0);
    let wait = u64::try_from(renewal_due - support_now()).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(wait) + Duration::from_millis(30));
    agent.kill9();
    let mut agent = Agent::start(&cfg);
    let after = wait_for_api(
        &cfg,
        Duration::from_secs(30),
        "renewal after restart",
        |s| s["serial"] != renewed["serial"] && s["health"] == "ok",
    );
    assert_ne!(after["serial"], renewed["serial"]);
    assert!(
        std::fs::read_dir(&out).expect("ls").all(|e| e
            .map(|e| !e.file_name().to_string_lossy().contains(".tmp-"))
            .unwrap_or(true)),
        "no temporary files are left behind"
    );
    assert_eq!(agent.terminate(), Some(0));
    reader.finish();
}

fn support_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[test]
fn a_revoked_certificate_is_reported_and_replaced_only_with_a_new_token() {
    let env = Env::new();
    let cfg = env.agent_config("revoked", "1h", "crl = true");
    write_token(&cfg, &env.token(&[]));
    let agent = Agent::start(&cfg);
    let first = wait_for_api(&cfg, Duration::from_secs(20), "enrollment", |s| {
        s["health"] == "ok"
    });
    let serial = first["serial"].as_str().expect("serial").to_string();
    env.ca
        .server(&["revoke", &serial, "--reason", "key-compromise"])
        .expect_code(0);

    // The CRL refresh notices, the renewal attempt is refused, and the used token cannot help.
    let revoked = wait_for_api(
        &cfg,
        Duration::from_secs(20),
        "revocation to be noticed",
        |s| s["health"] == "revoked",
    );
    assert!(
        revoked["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("revoked"),
        "{revoked}"
    );
    let (code, _) = status(&cfg);
    assert_eq!(
        code,
        Some(1),
        "status exits 1 while a certificate is not valid"
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        api_status(&cfg)["health"],
        "revoked",
        "no re-enrollment without a new token"
    );
    let crl = cfg.parent().expect("dir").join("out/crl.pem");
    let crl_text = openssl(["crl", "-in", s(&crl), "-noout", "-text"])
        .stdout
        .clone();
    assert!(
        crl_text.to_lowercase().contains(&serial),
        "crl.pem on the host lists the revoked serial"
    );

    write_token(&cfg, &env.token(&[]));
    let back = wait_for_api(&cfg, Duration::from_secs(20), "re-enrollment", |s| {
        s["health"] == "ok"
    });
    assert_ne!(back["serial"].as_str(), Some(serial.as_str()));
    drop(agent);
}

#[test]
fn renew_now_signals_the_daemon_and_metrics_are_served() {
    let env = Env::new();
    let cfg = env.agent_config("now", "1h", "check_tls = \"127.0.0.1:1\"");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).expect("cfg").replacen(
            "[[cert]]",
            "metrics_listen = \"127.0.0.1:0\"\n\n[[cert]]",
            1,
        ),
    )
    .expect("write");
    write_token(&cfg, &env.token(&[]));
    let mut agent = Agent::start(&cfg);
    let first = wait_for_api(&cfg, Duration::from_secs(20), "enrollment", |s| {
        s["health"] == "ok"
    });
    // The post-reload check against a port where nothing serves the new certificate is reported.
    let warned = wait_for_api(&cfg, Duration::from_secs(20), "post-reload warning", |s| {
        s["reload_warning"].is_string()
    });
    assert!(
        warned["reload_warning"]
            .as_str()
            .unwrap_or("")
            .contains("post-reload check"),
        "{warned}"
    );

    let mut c = Command::new(agent_bin());
    c.args(["renew", "--now", "--config", s(&cfg), "api"]);
    support::run_bounded(c, Duration::from_secs(10)).expect_code(0);
    let second = wait_for_api(&cfg, Duration::from_secs(15), "renewal on request", |s| {
        s["serial"] != first["serial"]
    });
    assert_eq!(second["renewals"], 2);
    let mut c = Command::new(agent_bin());
    c.args(["renew", "--now", "--config", s(&cfg), "nosuch"]);
    support::run_bounded(c, Duration::from_secs(10))
        .expect_code(2)
        .expect_stderr("no certificate named");

    let out = std::fs::read_to_string(&agent.stdout).expect("stdout");
    let url = out
        .lines()
        .find_map(|l| l.strip_prefix("metrics on "))
        .expect("metrics line")
        .trim()
        .to_string();
    let m = support::curl(&[&url]);
    assert_eq!(m.status, 200);
    assert!(
        m.body.contains(
            "ca_agent_renewals_total{name=\"api\",env=\"dev\",service=\"api\",issuer=\"private\"} 2"
        ),
        "{}",
        m.body
    );
    assert!(
        m.body
            .contains("ca_agent_certificate_expiry_timestamp_seconds"),
        "{}",
        m.body
    );
    assert_eq!(agent.terminate(), Some(0));
}

#[test]
fn a_wrong_root_fingerprint_is_refused_before_anything_is_sent() {
    let env = Env::new();
    let token = env.token(&[]);
    let cfg = env.agent_config("pin", "1h", "");
    write_token(&cfg, &token);
    let text = std::fs::read_to_string(&cfg)
        .expect("cfg")
        .replace(&env.fingerprint, &"ab".repeat(32));
    std::fs::write(&cfg, text).expect("write");
    let mut agent = Agent::start(&cfg);
    assert_eq!(
        agent.wait_exit(Duration::from_secs(20)),
        Some(4),
        "{}",
        agent.log()
    );
    assert!(agent.log().contains("not the pinned"), "{}", agent.log());
    assert!(
        !cfg.parent().expect("dir").join("out").exists(),
        "nothing written"
    );
    let tokens = env.ca.server(&["token", "list", "--json"]).stdout.clone();
    assert!(
        tokens.contains("\"usable\""),
        "the token was never sent: {tokens}"
    );
    let audit = env.ca.server(&["audit"]).stdout.clone();
    assert!(
        !audit.contains(" enroll "),
        "no enrollment attempt reached the CA: {audit}"
    );

    let out = env.ca.path("ci-out");
    let mut c = Command::new(agent_bin());
    c.args([
        "issue",
        "--server",
        &env.server.url,
        "--root-fingerprint",
        &"cd".repeat(32),
        "--token",
        &token,
    ]);
    c.args(["--env", "dev", "--service", "api", "--out", s(&out)]);
    support::run_bounded(c, Duration::from_secs(20))
        .expect_code(4)
        .expect_stderr("not the pinned");
    assert!(!out.exists());
}

#[test]
fn ci_issue_one_shot_writes_verified_files_or_nothing() {
    let env = Env::new();
    let run = env.ca.server(&[
        "token",
        "create",
        "--env",
        "ci",
        "--service",
        "api",
        "--uses",
        "2",
        "--json",
    ]);
    run.expect_code(0);
    let token = serde_json::from_str::<serde_json::Value>(&run.stdout).expect("json")["token"]
        .as_str()
        .expect("token")
        .to_string();
    let colon_fp: String = env
        .fingerprint
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":");
    let issue = |out: &Path, dns: &str| {
        let mut c = Command::new(agent_bin());
        c.args([
            "issue",
            "--server",
            &env.server.url,
            "--root-fingerprint",
            &colon_fp,
            "--token",
            &token,
        ]);
        c.args([
            "--env",
            "ci",
            "--service",
            "api",
            "--dns",
            dns,
            "--ttl",
            "10m",
            "--out",
            s(out),
            "--json",
        ]);
        support::run_bounded(c, Duration::from_secs(30))
    };
    let out = env.ca.path("ci-denied");
    issue(&out, "api.prod.svc.example.internal")
        .expect_code(3)
        .expect_stderr("policy");
    assert!(
        !out.exists(),
        "nothing written on a refusal, and the refusal spends no use"
    );
    for i in 0..2 {
        let out = env.ca.path(&format!("ci{i}"));
        let run = issue(&out, "api.ci.svc.example.internal");
        run.expect_code(0);
        assert_eq!(
            support::list_dir(&out),
            ["bundle.pem", "cert.pem", "chain.pem", "key.pem"]
        );
        assert_eq!(support::mode(&out.join("key.pem")), 0o600);
        support::openssl_verify_dir(&out).expect_code(0);
        let text = openssl(["x509", "-noout", "-text", "-in", s(&out.join("cert.pem"))])
            .stdout
            .clone();
        assert!(
            text.contains("URI:spiffe://example.internal/ci/api"),
            "{text}"
        );
    }
    issue(&out, "api.ci.svc.example.internal")
        .expect_code(4)
        .expect_stderr("already used");
    assert!(!out.exists());
}

/// Starts `openssl s_server` on 127.0.0.1:0 with a throwaway certificate and returns its port.
fn probe_port(tmp: &Path) -> u16 {
    let key = tmp.join("probe.key");
    let cert = tmp.join("probe.pem");
    openssl([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        s(&key),
        "-out",
        s(&cert),
        "-subj",
        "/CN=probe",
        "-days",
        "1",
    ])
    .expect_code(0);
    let mut child = Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            "127.0.0.1:0",
            "-cert",
            s(&cert),
            "-key",
            s(&key),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(addr) = line.strip_prefix("ACCEPT ") {
                let _ = tx.send(
                    addr.rsplit(':')
                        .next()
                        .and_then(|p| p.trim().parse::<u16>().ok()),
                );
                return;
            }
        }
    });
    let port = rx.recv_timeout(Duration::from_secs(10)).ok().flatten();
    let _ = child.kill();
    let _ = child.wait();
    port.expect("s_server port")
}

#[test]
fn the_post_reload_check_confirms_the_service_serves_the_new_serial() {
    let env = Env::new();
    let port = probe_port(env.ca.tmp.path());
    let pattern = format!("openssl s_server -accept 127.0.0.1:{port} ");
    // The "service": openssl s_server, restarted by the reload hook with the new certificate.
    // The address only ever appears through $a, so pkill cannot match this shell's own command line.
    let hook = format!(
        "a=127.0.0.1:{port}; pkill -f \"openssl s_server -accept $a \"; sleep 0.2; setsid openssl s_server -accept $a \
         -cert \"$CERT_PATH\" -key \"$KEY_PATH\" -quiet </dev/null >/dev/null 2>&1 &"
    );
    let extra = format!("check_tls = \"127.0.0.1:{port}\"\nreload_timeout = \"10s\"\n",);
    let cfg = env.agent_config("check", "1h", &extra);
    let text = std::fs::read_to_string(&cfg).expect("cfg");
    let start = text.find("reload_command = ").expect("hook line");
    let end = start + text[start..].find('\n').expect("eol");
    let hook_toml = format!("reload_command = [\"sh\", \"-c\", {}]", toml_string(&hook));
    std::fs::write(
        &cfg,
        format!("{}{}{}", &text[..start], hook_toml, &text[end..]),
    )
    .expect("write");
    write_token(&cfg, &env.token(&[]));
    let agent = Agent::start(&cfg);
    // Stops the s_server the hook started (bounded): TERM, then KILL, until the port is closed.
    let cleanup = || {
        for sig in ["-TERM", "-TERM", "-KILL", "-KILL"] {
            let _ = Command::new("pkill").args([sig, "-f", &pattern]).status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(2) {
                if ca_agent_served(port).is_none() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    let first = wait_for_api(
        &cfg,
        Duration::from_secs(30),
        "a checked certificate",
        |s| {
            s["health"] == "ok"
                && s["renewals"] == 1
                && s["reload_warning"].is_null()
                && s["next_attempt"].as_i64().unwrap_or(0) > 0
        },
    );
    let mut c = Command::new(agent_bin());
    c.args(["renew", "--now", "--config", s(&cfg)]);
    support::run_bounded(c, Duration::from_secs(10)).expect_code(0);
    let second = wait_for_api(
        &cfg,
        Duration::from_secs(30),
        "the second checked certificate",
        |s| s["renewals"] == 2 && s["serial"] != first["serial"],
    );
    // The check runs after the renewal is recorded; give it its few seconds, then it must be clean.
    std::thread::sleep(Duration::from_secs(3));
    let after = api_status(&cfg);
    let log = agent.log();
    // The agent goes first, so no hook can start another s_server after the cleanup.
    drop(agent);
    cleanup();
    assert_eq!(after["serial"], second["serial"]);
    assert!(
        after["reload_warning"].is_null(),
        "the served serial was not confirmed: {after}\n{log}"
    );
    let served = ca_agent_served(port);
    assert_eq!(served.as_deref(), None, "s_server stopped with the test");
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Whether anything still listens on the port (it must not, once the test cleaned up).
fn ca_agent_served(port: u16) -> Option<String> {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .ok()
    .map(|_| "still listening".to_string())
}
