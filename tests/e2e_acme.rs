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

impl Case {
    /// `agent/agent.toml` with the pebble account and one certificate `www` for www.example.com
    /// through the standalone responder on `http_port`; returns it and the output directory.
    fn www(&self, http_port: u16) -> (PathBuf, PathBuf) {
        let out = self.path("www");
        let cfg = self.config(
            "agent",
            &self.account(""),
            &cert_block(
                "www",
                &["www.example.com"],
                &out,
                &format!("http_listen = \"127.0.0.1:{http_port}\""),
            ),
        );
        (cfg, out)
    }
}

/// Waits for certificate `name` to be in place for the first time.
fn wait_issued(cfg: &Path, name: &str, agent: &Agent) -> serde_json::Value {
    wait_status(
        cfg,
        name,
        Duration::from_secs(30),
        "a certificate",
        agent,
        |st| st["health"] == "ok" && st["serial"].is_string(),
    )
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
    support::reload_log(&out.with_extension("reloads"))
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
    // openssl prints whole bytes; the agent drops leading zero bytes only.
    let mut hex = run
        .stdout
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    while hex.len() > 2 && hex.starts_with("00") {
        hex.drain(..2);
    }
    hex
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
    let first = wait_issued(&cfg, "www", &agent);
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

/// A static file server for a webroot on a port it bound itself, answering GETs until dropped.
struct StaticServer {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl StaticServer {
    fn start(root: PathBuf) -> StaticServer {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let served = std::sync::Arc::new(AtomicUsize::new(0));
        let (stop2, served2) = (stop.clone(), served.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(180);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((mut tcp, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = tcp.set_nonblocking(false);
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                let mut line = String::new();
                let mut reader = BufReader::new(tcp.try_clone().expect("clone"));
                let _ = reader.read_line(&mut line);
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let file = root.join(path.trim_start_matches('/'));
                let reply = if !path.contains("..") && file.is_file() {
                    served2.fetch_add(1, Ordering::Relaxed);
                    let body = std::fs::read(&file).unwrap_or_default();
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend(body);
                    r
                } else {
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_vec()
                };
                let _ = tcp.write_all(&reply);
            }
        });
        StaticServer { port, stop, served }
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn http01_through_a_webroot_served_by_another_server() {
    let tmp = tempfile::tempdir().expect("tmp");
    let webroot = tmp.path().join("www");
    std::fs::create_dir_all(&webroot).expect("webroot");
    let server = StaticServer::start(webroot.clone());
    let case = Case::new(PebbleOptions {
        http_port: server.port,
        validity_secs: 3600,
        eab: None,
    });
    let out = case.path("site");
    let cfg = case.config(
        "agent",
        &case.account(""),
        &cert_block(
            "site",
            &["site.example.net"],
            &out,
            &format!("webroot = \"{}\"", s(&webroot)),
        ),
    );
    let mut agent = Agent::start(&cfg);
    wait_issued(&cfg, "site", &agent);
    agent.terminate();
    let root = case.path("pebble-root.pem");
    case.pebble.save_root(&root);
    verify_against(&root, &out);
    assert!(
        server.served.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "pebble never fetched the challenge from the web server"
    );
    assert_eq!(
        support::list_dir(&webroot.join(".well-known/acme-challenge")),
        Vec::<String>::new(),
        "challenge files are removed afterwards"
    );
}

/// A dns-01 hook that drives pebble-challtestsrv's management API with curl and logs each call.
fn dns_hook(dir: &Path, management: &str) -> PathBuf {
    let hook = dir.join("dns-hook.sh");
    std::fs::write(
        &hook,
        format!(
            r#"#!/bin/sh
set -eu
echo "$1 $ACME_DOMAIN $ACME_RECORD_NAME" >> "{log}"
case "$1" in
  present) curl -sf --max-time 5 -d "{{\"host\":\"$ACME_RECORD_NAME\",\"value\":\"$ACME_RECORD_VALUE\"}}" {m}/set-txt ;;
  cleanup) curl -sf --max-time 5 -d "{{\"host\":\"$ACME_RECORD_NAME\"}}" {m}/clear-txt ;;
  *) exit 2 ;;
esac
"#,
            log = s(&dir.join("dns-hook.log")),
            m = management
        ),
    )
    .expect("hook");
    hook
}

#[test]
fn dns01_through_a_hook_with_a_wildcard() {
    let case = Case::new(PebbleOptions {
        http_port: free_port(),
        validity_secs: 3600,
        eab: None,
    });
    let hook = dns_hook(case.tmp.path(), &case.pebble.dns_management());
    let out = case.path("wild");
    let cfg = case.config(
        "agent",
        &case.account(""),
        &cert_block(
            "wild",
            &["*.example.org", "example.org"],
            &out,
            &format!("dns_hook = [\"sh\", \"{}\"]", s(&hook)),
        ),
    );
    let check = agent_cmd(&["check-config", "--config", s(&cfg)]);
    check.expect_code(0);
    assert!(
        check.stdout.contains("dns-01 through dns_hook"),
        "{}",
        check.stdout
    );
    let mut agent = Agent::start(&cfg);
    wait_issued(&cfg, "wild", &agent);
    agent.terminate();
    let root = case.path("pebble-root.pem");
    case.pebble.save_root(&root);
    verify_against(&root, &out);
    let san = support::san_text(&out.join("cert.pem"));
    assert!(
        san.contains("DNS:*.example.org") && san.contains("DNS:example.org"),
        "{san}"
    );
    let log = std::fs::read_to_string(case.tmp.path().join("dns-hook.log")).expect("hook log");
    let present = log
        .lines()
        .filter(|l| l.starts_with("present example.org _acme-challenge.example.org."))
        .count();
    let cleanup = log
        .lines()
        .filter(|l| l.starts_with("cleanup example.org _acme-challenge.example.org."))
        .count();
    assert_eq!(
        (present, cleanup),
        (2, 2),
        "one record per authorization, each removed:\n{log}"
    );

    // A wildcard cannot be validated over http-01: refused when the configuration loads.
    let bad = case.config(
        "bad",
        &case.account(""),
        &cert_block(
            "wild",
            &["*.example.org"],
            &case.path("bad-out"),
            "challenge = \"http-01\"",
        ),
    );
    agent_cmd(&["run", "--config", s(&bad)])
        .expect_code(2)
        .expect_stderr("wildcard names (*.example.org) can only be validated with dns-01");
    assert!(!case.path("bad-out").exists());
}

#[test]
fn a_restarted_acme_server_that_forgot_the_account_gets_a_new_registration() {
    let http_port = free_port();
    let mut case = Case::new(PebbleOptions {
        http_port,
        validity_secs: 3600,
        eab: None,
    });
    let (cfg, out) = case.www(http_port);
    let mut agent = Agent::start(&cfg);
    let first = wait_issued(&cfg, "www", &agent);
    let account_file = cfg.parent().expect("dir").join("state/acme/pebble.json");
    let before = std::fs::read_to_string(&account_file).expect("account");

    case.pebble.restart();
    agent_cmd(&["renew", "--now", "--config", s(&cfg)]).expect_code(0);
    let second = wait_status(
        &cfg,
        "www",
        Duration::from_secs(40),
        "a renewal from the new pebble",
        &agent,
        |st| st["renewals"].as_u64().unwrap_or(0) >= 2,
    );
    assert_ne!(first["serial"], second["serial"]);
    assert_eq!(second["health"], "ok");
    agent.terminate();
    assert!(
        agent
            .log()
            .contains("does not know the account; registering again"),
        "{}",
        agent.log()
    );
    let after = std::fs::read_to_string(&account_file).expect("account");
    assert_ne!(before, after, "a new account was stored");
    let root = case.path("pebble-root.pem");
    case.pebble.save_root(&root);
    verify_against(&root, &out);
}

#[test]
fn external_account_binding_required_by_the_ca() {
    use base64::Engine;
    let http_port = free_port();
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        (0..48u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(11))
            .collect::<Vec<u8>>(),
    );
    let case = Case::new(PebbleOptions {
        http_port,
        validity_secs: 3600,
        eab: Some(("kid-7".into(), key.clone())),
    });
    let out = case.path("www");
    let cert = cert_block(
        "www",
        &["www.example.com"],
        &out,
        &format!("http_listen = \"127.0.0.1:{http_port}\""),
    );

    // Without the binding: the CA's problem is reported and nothing is written.
    let cfg = case.config("agent", &case.account(""), &cert);
    let mut agent = Agent::start(&cfg);
    let st = wait_status(
        &cfg,
        "www",
        Duration::from_secs(30),
        "the EAB refusal",
        &agent,
        |st| {
            st["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("externalAccountRequired"))
        },
    );
    assert_ne!(st["health"], "ok", "{st}");
    agent.terminate();
    assert!(!out.join("current").exists());

    // With it: registered and issued.
    let key_file = case.path("eab.key");
    std::fs::write(&key_file, format!("{key}\n")).expect("key");
    let cfg = case.config(
        "agent",
        &case.account(&format!(
            "eab_kid = \"kid-7\"\neab_hmac_key_file = \"{}\"",
            s(&key_file)
        )),
        &cert,
    );
    let mut agent = Agent::start(&cfg);
    wait_issued(&cfg, "www", &agent);
    agent.terminate();
    let account =
        std::fs::read_to_string(cfg.parent().expect("dir").join("state/acme/pebble.json"))
            .expect("account");
    assert!(!account.contains(&key), "the HMAC key is not stored");
    assert!(!agent.log().contains(&key), "the HMAC key is not logged");
}

#[test]
fn a_failing_challenge_leaves_the_files_in_place_and_backs_off() {
    let http_port = free_port();
    let case = Case::new(PebbleOptions {
        http_port,
        // Renewal falls due at about 26 s; the certificate stays valid until 40 s.
        validity_secs: 40,
        eab: None,
    });
    let (good, out) = case.www(http_port);
    let mut agent = Agent::start(&good);
    let first = wait_issued(&good, "www", &agent);
    agent.terminate();
    let files = |dir: &Path| -> Vec<Vec<u8>> {
        ["key.pem", "cert.pem", "chain.pem", "combined.pem"]
            .iter()
            .map(|f| std::fs::read(dir.join(f)).expect("file"))
            .collect()
    };
    let before = files(&out);

    // The responder now listens where pebble does not look.
    let wrong = case.config(
        "agent",
        &case.account(""),
        &cert_block(
            "www",
            &["www.example.com"],
            &out,
            &format!("http_listen = \"127.0.0.1:{}\"", free_port()),
        ),
    );
    let mut agent = Agent::start(&wrong);
    wait_status(
        &wrong,
        "www",
        Duration::from_secs(20),
        "the current certificate",
        &agent,
        |st| st["serial"] == first["serial"],
    );
    let st = wait_status(
        &wrong,
        "www",
        Duration::from_secs(40),
        "two failed attempts",
        &agent,
        |st| st["failures"].as_u64().unwrap_or(0) >= 2,
    );
    agent.terminate();
    let error = st["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("www.example.com") && error.contains("connection"),
        "the ACME problem is shown: {st}"
    );
    assert_eq!(
        st["health"], "ok",
        "the certificate in place is still valid: {st}"
    );
    assert_eq!(st["serial"], first["serial"]);
    assert!(st["next_attempt"].as_i64().unwrap_or(0) > 0);
    assert_eq!(files(&out), before, "the files in place are untouched");
    let text = agent_cmd(&["status", "--config", s(&wrong)]);
    assert!(
        text.stdout.contains("acme:pebble") && text.stdout.contains("www.example.com"),
        "{}",
        text.stdout
    );
}

/// A private CA whose leaves are backdated by a second, and its root fingerprint.
fn private_ca() -> (TestCa, support::Server, String) {
    let (ca, fp) = TestCa::init_with_fingerprint();
    let cfg = ca.path("server.toml");
    std::fs::write(&cfg, "backdate = \"1s\"\n").expect("write");
    let server = ca.serve(&["--config", s(&cfg)]);
    (ca, server, fp)
}

#[test]
fn auto_keeps_a_private_and_a_public_certificate_fresh_side_by_side() {
    let http_port = free_port();
    let case = Case::new(PebbleOptions {
        http_port,
        validity_secs: 20,
        eab: None,
    });
    let (ca, server, fp) = private_ca();
    let token = ca.server(&["token", "create", "--env", "dev", "--service", "api"]);
    token.expect_code(0);
    let token_file = case.path("token");
    std::fs::write(&token_file, token.stdout.trim()).expect("token");
    let top = format!(
        "server = \"{}\"\nroot_fingerprint = \"{fp}\"\ntoken_file = \"{}\"\n{}",
        server.url,
        s(&token_file),
        case.account("")
    );
    let (private_out, public_out) = (case.path("api"), case.path("www"));
    let certs = format!(
        "{}{}",
        cert_block(
            "api",
            &["api.dev.svc.example.internal"],
            &private_out,
            "env = \"dev\"\nservice = \"api\"\nttl = \"20s\""
        ),
        cert_block(
            "www",
            &["www.example.com"],
            &public_out,
            &format!("http_listen = \"127.0.0.1:{http_port}\"")
        )
    );
    let cfg = case.config("agent", &top, &certs);
    let check = agent_cmd(&["check-config", "--config", s(&cfg)]);
    check.expect_code(0);
    assert!(
        check
            .stdout
            .contains("api: private CA (dev/api) for api.dev.svc.example.internal")
            && check.stdout.contains("www: ACME account pebble"),
        "{}",
        check.stdout
    );

    let mut agent = Agent::start(&cfg);
    for name in ["api", "www"] {
        wait_status(
            &cfg,
            name,
            Duration::from_secs(60),
            "two renewals",
            &agent,
            |st| st["renewals"].as_u64().unwrap_or(0) >= 2 && st["health"] == "ok",
        );
    }
    let st = status(&cfg).1;
    agent.terminate();
    assert_eq!(st["certs"]["api"]["issuer"], "private");
    assert_eq!(st["certs"]["www"]["issuer"], "acme:pebble");
    assert!(
        st["certs"]["api"]["spiffe_id"]
            .as_str()
            .is_some_and(|i| i.ends_with("/dev/api"))
    );
    support::openssl_verify_dir(&private_out).expect_code(0);
    let root = case.path("pebble-root.pem");
    case.pebble.save_root(&root);
    verify_against(&root, &public_out);

    // Decommissioning the private certificate: the holder's own mTLS self-revocation.
    let serial = serial_of(&private_out);
    agent_cmd(&[
        "revoke",
        "--config",
        s(&cfg),
        "api",
        "--reason",
        "key-compromise",
    ])
    .expect_code(0);
    let shown = ca.server(&["certs", "show", &serial, "--json"]);
    shown.expect_code(0);
    let shown: serde_json::Value = serde_json::from_str(&shown.stdout).expect("json");
    assert_eq!(shown["status"], "revoked", "{shown}");
    agent_cmd(&["revoke", "--config", s(&cfg), "api"])
        .expect_code(3)
        .expect_stderr("revoked");

    // One certificate mixing a private and a public name is refused, naming both.
    let mixed = case.config(
        "mixed",
        &top,
        &cert_block(
            "both",
            &["api.dev.svc.example.internal", "www.example.com"],
            &case.path("mixed-out"),
            "env = \"dev\"\nservice = \"api\"",
        ),
    );
    let run = agent_cmd(&["run", "--config", s(&mixed)]);
    run.expect_code(2).expect_stderr(
        "mixes names only the private CA can certify (api.dev.svc.example.internal) with public names (www.example.com)",
    );
    let check = agent_cmd(&["check-config", "--config", s(&mixed)]);
    check.expect_code(2);
    assert!(check.stdout.contains("both: REFUSED"), "{}", check.stdout);
    assert!(!case.path("mixed-out").exists());
}
