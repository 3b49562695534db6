//! End to end: `ca-agent`'s ACME fallback against a real ACME server (Debian's pebble, with
//! pebble-challtestsrv as its DNS), with real challenge validation, checked with openssl.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::pebble::{Pebble, PebbleOptions, free_port};
use support::{Agent, TestCa, agent_bin, openssl, run_bounded, s, status};

/// One test's files, pebble and agent configuration.
struct Case {
    tmp: tempfile::TempDir,
    pebble: Pebble,
}

impl Case {
    fn new(opts: PebbleOptions) -> Case {
        let tmp = tempfile::tempdir().expect("tmp");
        let pebble = Pebble::start(&tmp.path().join("pebble"), opts);
        Case { tmp, pebble }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// The `[acme.pebble]` table (plus `extra` lines in it).
    fn account(&self, extra: &str) -> String {
        format!(
            r#"[acme.pebble]
directory = "{dir}"
directory_root = "{root}"
trust_bundle_url = "{roots}"
contact = ["ops@example.com"]
agree_tos = true
timeout = "60s"
{extra}
"#,
            dir = self.pebble.directory(),
            root = s(&self.pebble.tls_root),
            roots = self.pebble.roots_url(),
        )
    }

    /// Writes `agent.toml` in `name/` with `top` (global keys and tables) and `certs`.
    fn config(&self, name: &str, top: &str, certs: &str) -> PathBuf {
        let dir = self.path(name);
        std::fs::create_dir_all(&dir).expect("dir");
        let cfg = dir.join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                "state_dir = \"{d}/state\"\nbackoff_initial = \"1s\"\nbackoff_max = \"2s\"\njitter = 0.02\n{top}\n{certs}\n",
                d = s(&dir)
            ),
        )
        .expect("write agent.toml");
        cfg
    }
}

/// A `[[cert]]` for `names` written to `dir`, with a reload hook that logs serial and key hash.
fn cert_block(name: &str, names: &[&str], dir: &Path, extra: &str) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    format!(
        r#"[[cert]]
name = "{name}"
dns = [{names}]
dir = "{out}"
reload_command = ["sh", "-c", "echo $SERIAL $(openssl pkey -in \"$KEY_PATH\" -pubout | sha256sum | cut -c1-16) >> {out}.reloads"]
{extra}
"#,
        names = names.join(", "),
        out = s(dir),
    )
}

fn reloads(out: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(out.with_extension("reloads"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect()
}

/// Waits (bounded) until the reload hook has run `n` times: it runs just after the status
/// counts a new certificate.
fn wait_reloads(out: &Path, n: usize) {
    let start = Instant::now();
    while reloads(out).len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the reload hook ran {} times, not {n}",
            reloads(out).len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls the status of certificate `name` until `pred` holds, or panics after `limit`.
fn wait_status(
    cfg: &Path,
    name: &str,
    limit: Duration,
    what: &str,
    agent: &Agent,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let st = status(cfg).1["certs"][name].clone();
        if pred(&st) {
            return st;
        }
        assert!(
            start.elapsed() < limit,
            "timed out waiting for {what}; status: {st}\nagent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `openssl verify` of `out/cert.pem` with `out/chain.pem` as intermediates against `root`.
fn verify_against(root: &Path, out: &Path) {
    openssl([
        "verify",
        "-CAfile",
        s(root),
        "-untrusted",
        s(&out.join("chain.pem")),
        s(&out.join("cert.pem")),
    ])
    .expect_code(0);
}

fn agent_cmd(args: &[&str]) -> support::Run {
    let mut c = Command::new(agent_bin());
    c.args(args);
    run_bounded(c, Duration::from_secs(60))
}

fn serial_of(out: &Path) -> String {
    let run = openssl(["x509", "-noout", "-serial", "-in", s(&out.join("cert.pem"))]);
    run.expect_code(0);
    run.stdout
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase()
        .trim_start_matches('0')
        .to_string()
}

#[test]
fn http01_standalone_obtains_renews_with_fresh_keys_and_revokes() {
    let http_port = free_port();
    let case = Case::new(PebbleOptions {
        http_port,
        validity_secs: 24,
        eab: None,
    });
    let out = case.path("www");
    let cfg = case.config(
        "agent",
        &case.account(""),
        &cert_block(
            "www",
            &["www.example.com", "api.example.com"],
            &out,
            &format!("challenge = \"http-01\"\nhttp_listen = \"127.0.0.1:{http_port}\""),
        ),
    );
    let check = agent_cmd(&["check-config", "--config", s(&cfg)]);
    check.expect_code(0);
    assert!(
        check.stdout.contains(&format!(
            "www: ACME account pebble ({})",
            case.pebble.directory()
        )) && check
            .stdout
            .contains(&format!("http-01 on 127.0.0.1:{http_port}")),
        "{}",
        check.stdout
    );

    let mut agent = Agent::start(&cfg);
    let first = wait_status(
        &cfg,
        "www",
        Duration::from_secs(30),
        "a first certificate",
        &agent,
        |st| st["health"] == "ok" && st["serial"].is_string(),
    );
    assert_eq!(first["issuer"], "acme:pebble");
    let root = case.path("pebble-root.pem");
    case.pebble.save_root(&root);
    verify_against(&root, &out);
    // The responder listens only while an order is pending.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", http_port)).is_err(),
        "the http-01 responder is still listening between orders"
    );
    let account_file = cfg.parent().expect("dir").join("state/acme/pebble.json");
    assert_eq!(support::mode(&account_file), 0o600);

    // 24 s certificates renew at about 16 s: wait for two renewals.
    let second = wait_status(
        &cfg,
        "www",
        Duration::from_secs(60),
        "two renewals",
        &agent,
        |st| st["renewals"].as_u64().unwrap_or(0) >= 3,
    );
    wait_reloads(&out, 3);
    agent.terminate();
    verify_against(&root, &out);
    assert_eq!(serial_of(&out), second["serial"].as_str().expect("serial"));
    let seen = reloads(&out);
    assert!(seen.len() >= 3, "{seen:?}");
    let serials: std::collections::HashSet<_> = seen.iter().map(|(s, _)| s).collect();
    let keys: std::collections::HashSet<_> = seen.iter().map(|(_, k)| k).collect();
    assert_eq!(
        serials.len(),
        seen.len(),
        "the hook ran once per new certificate: {seen:?}"
    );
    assert_eq!(
        keys.len(),
        seen.len(),
        "every order used a fresh key: {seen:?}"
    );
    assert_eq!(
        second["renewals"].as_u64(),
        Some(seen.len() as u64),
        "{second}"
    );

    // Decommissioning: revoke at the CA; a second revocation is refused by the CA.
    let revoked = agent_cmd(&[
        "revoke",
        "--config",
        s(&cfg),
        "www",
        "--reason",
        "cessation-of-operation",
    ]);
    revoked.expect_code(0);
    assert!(
        revoked
            .stdout
            .contains(&second["serial"].as_str().expect("serial").to_string())
    );
    agent_cmd(&["revoke", "--config", s(&cfg), "www"])
        .expect_code(3)
        .expect_stderr("alreadyRevoked");
    agent_cmd(&["revoke", "--config", s(&cfg), "www", "--reason", "later"])
        .expect_code(2)
        .expect_stderr("unknown reason");
}
