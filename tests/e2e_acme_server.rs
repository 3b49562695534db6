//! End to end: our ACME server against the real ACME clients Debian ships, certbot 2.1 and lego
//! 4.9, over HTTPS on 127.0.0.1 with real http-01 and tls-alpn-01 validation (the names map to
//! 127.0.0.1 through `[acme.testing]`). Results are checked with openssl (chain, CRL, OCSP) and
//! the server's CLI (certificates, accounts, audit log).
//!
//! Each test has its own CA, server and ports, and every client run is bounded in time and keeps
//! all its files in the test's temp dir. The clients trust our root only (`REQUESTS_CA_BUNDLE`,
//! `LEGO_CA_CERTIFICATES`): no TLS verification is switched off anywhere.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::pebble::ChallTestSrv;
use support::{Run, Server, TestCa, example_policy, free_port, openssl, run_bounded, s};

/// The one name the example policy grants to `web` in dev (the open dev directory's service).
const WEB_DEV: &str = "web.dev.svc.example.internal";
/// The name of `web` in staging, whose directory requires External Account Binding.
const WEB_STAGING: &str = "web.staging.svc.example.internal";
/// Inside dev's DNS suffix but granted to `api`, not to `web`.
const API_DEV: &str = "api.dev.svc.example.internal";
/// Outside every environment's DNS suffixes.
const FOREIGN: &str = "www.example.com";
/// The contact the clients register with.
const EMAIL: &str = "ops@example.com";
/// Longest a single client command may take (a validation that fails takes about 6 s).
const CLIENT_LIMIT: Duration = Duration::from_secs(60);
/// Proxy variables that must not divert the clients' loopback traffic.
const PROXY_VARS: [&str; 6] = [
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
];

/// A CA serving HTTPS (API and ACME) and plain HTTP (CRL and OCSP) with validation pointed at
/// loopback ports that the clients' responders listen on.
struct AcmePki {
    /// First, so that it stops before the CA's temp dir is removed.
    server: Server,
    ca: TestCa,
    /// Base URL of the plain-HTTP CRL/OCSP listener.
    http: String,
    /// The root certificate, the only anchor the clients trust.
    root: PathBuf,
    /// Where the validator connects for http-01.
    http_port: u16,
    /// Where the validator connects for tls-alpn-01.
    tls_port: u16,
}

impl AcmePki {
    fn start() -> AcmePki {
        AcmePki::start_on(TestCa::init_insecure(), "")
    }

    /// A server for the initialised `ca`, with `acme_extra` lines in its `[acme]` table.
    fn start_on(ca: TestCa, acme_extra: &str) -> AcmePki {
        let http_port = free_port();
        let tls_port = loop {
            let p = free_port();
            if p != http_port {
                break p;
            }
        };
        let cfg = ca.path("ca-server.toml");
        // The first server name makes the ACME base URL https://127.0.0.1:<bound port>, the
        // address the clients are given, so no name resolution is involved.
        std::fs::write(
            &cfg,
            format!(
                r#"server_names = ["127.0.0.1"]

[acme]
allow = ["127.0.0.0/8"]
{acme_extra}

[acme.testing]
http_port = {http_port}
tls_port = {tls_port}
hosts = {{ "{WEB_DEV}" = "127.0.0.1", "{WEB_STAGING}" = "127.0.0.1", "{API_DEV}" = "127.0.0.1", "{FOREIGN}" = "127.0.0.1" }}
"#
            ),
        )
        .expect("write server config");
        let server = ca.serve_with_env(
            &["--config", s(&cfg), "--http-listen", "127.0.0.1:0"],
            &[("CA_ACME_ALLOW_TEST_OVERRIDES", "1")],
        );
        let http = server.http_url.clone().expect("http listener");
        let (bundle, _) = bundle_files(&ca, "dev");
        let pem = std::fs::read_to_string(bundle).expect("bundle");
        let root = ca.path("root.pem");
        std::fs::write(&root, first_pem(&pem)).expect("write root");
        AcmePki {
            ca,
            server,
            http,
            root,
            http_port,
            tls_port,
        }
    }

    fn directory(&self, env: &str) -> String {
        format!("{}/acme/{env}/directory", self.server.url)
    }

    /// `--http.port`/`--http-01-address` value of the http-01 responder.
    fn http_responder(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    fn tls_responder(&self) -> String {
        format!("127.0.0.1:{}", self.tls_port)
    }

    /// `ca-server ARGS --json`, parsed.
    fn cli_json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let run = self.ca.server(&args);
        run.expect_code(0);
        serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", run.stdout))
    }

    /// The certificates the server lists as issued through ACME.
    fn acme_certs(&self) -> Vec<Value> {
        self.cli_json(&["certs", "list"])
            .as_array()
            .expect("certs list is an array")
            .iter()
            .filter(|c| c["issued_via"] == "acme")
            .cloned()
            .collect()
    }

    /// The server's record of the certificate in `cert` (a PEM file), from `certs list`.
    fn record_of(&self, cert: &Path) -> Value {
        let serial = serial_of(cert);
        self.acme_certs()
            .into_iter()
            .find(|c| c["serial"].as_str().map(normal_serial).as_deref() == Some(&serial))
            .unwrap_or_else(|| panic!("serial {serial} is not listed as an ACME issuance"))
    }

    fn accounts(&self, env: &str) -> Vec<Value> {
        self.cli_json(&["acme", "accounts", "list", "--env", env])
            .as_array()
            .expect("accounts list is an array")
            .clone()
    }

    /// The audit log, one JSON object per entry.
    fn audit(&self) -> Vec<Value> {
        let run = self.ca.server(&["audit", "--json"]);
        run.expect_code(0);
        run.stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    /// `ca-server acme eab create`: (kid, base64url HMAC key).
    fn eab(&self, env: &str, service: &str) -> (String, String) {
        let v = self.cli_json(&["acme", "eab", "create", "--env", env, "--service", service]);
        assert_eq!(v["env"], env, "{v}");
        assert_eq!(v["service"], service, "{v}");
        let field = |k: &str| v[k].as_str().expect("eab field").to_string();
        (field("kid"), field("hmac_key"))
    }

    /// Asserts that the CRL of `env` lists `cert` and that OCSP answers `revoked` for it.
    fn assert_revoked(&self, env: &str, cert: &Path, reason: &str) {
        let (bundle, intermediate) = bundle_files(&self.ca, env);
        let der = self.ca.path(&format!("{}.crl", unique("crl")));
        let url = format!("{}/crl/{env}.crl", self.http);
        assert_eq!(support::curl_download(&[&url], &der), 200, "{url}");
        let crl = self.ca.path(&format!("{}.pem", unique("crl")));
        openssl(["crl", "-inform", "DER", "-in", s(&der), "-out", s(&crl)]).expect_code(0);
        let run = openssl([
            "verify",
            "-crl_check",
            "-CAfile",
            s(&bundle),
            "-CRLfile",
            s(&crl),
            s(cert),
        ]);
        assert!(
            !run.ok() && output(&run).contains("certificate revoked"),
            "the {env} CRL does not revoke {}: {run:?}",
            cert.display()
        );
        let status = self.ocsp(&intermediate, cert);
        assert!(
            status.contains(&format!("{}: revoked", s(cert))),
            "OCSP: {status}"
        );
        assert!(
            status.contains(&format!("Reason: {reason}")),
            "OCSP: {status}"
        );
    }

    /// `openssl ocsp` against our responder, the answer verified against our root.
    fn ocsp(&self, intermediate: &Path, cert: &Path) -> String {
        let url = format!("{}/ocsp", self.http);
        let run = openssl([
            "ocsp",
            "-issuer",
            s(intermediate),
            "-cert",
            s(cert),
            "-url",
            &url,
            "-CAfile",
            s(&self.root),
            "-verify_other",
            s(intermediate),
        ]);
        let text = format!("{}{}", run.stdout, run.stderr);
        assert!(text.contains("Response verify OK"), "OCSP: {text}");
        text
    }

    /// Fails if the server logged a panic.
    fn assert_server_healthy(&self) {
        let log = self.server.stderr();
        assert!(!log.contains("panicked"), "server log:\n{log}");
    }
}

/// `ca-server bundle --env ENV` split into (root + intermediate, intermediate).
fn bundle_files(ca: &TestCa, env: &str) -> (PathBuf, PathBuf) {
    let bundle = ca.path(&format!("{env}-bundle.pem"));
    if !bundle.exists() {
        ca.server(&["bundle", "--env", env, "--out", s(&bundle)])
            .expect_code(0);
    }
    let pem = std::fs::read_to_string(&bundle).expect("bundle");
    let intermediate = ca.path(&format!("{env}-intermediate.pem"));
    std::fs::write(&intermediate, &pem[first_pem(&pem).len()..]).expect("write intermediate");
    (bundle, intermediate)
}

/// The first PEM block of `pem`, with its line end.
fn first_pem(pem: &str) -> &str {
    const END: &str = "-----END CERTIFICATE-----\n";
    let end = pem.find(END).expect("a certificate") + END.len();
    &pem[..end]
}

/// A name no other call in this process returns.
fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// A serial as lowercase hex without leading zeros (openssl and the CLI may differ there).
fn normal_serial(hex: &str) -> String {
    let h = hex.trim().to_ascii_lowercase().replace(':', "");
    let t = h.trim_start_matches('0');
    if t.is_empty() { "0".into() } else { t.into() }
}

/// The serial of the first certificate in the PEM file `cert`.
fn serial_of(cert: &Path) -> String {
    let run = openssl(["x509", "-noout", "-serial", "-in", s(cert)]);
    run.expect_code(0);
    normal_serial(run.stdout.trim().trim_start_matches("serial="))
}

/// Asserts that `cert` chains to `root` through the intermediates in `chain`, and names `dns`
/// and the SPIFFE ID of `env`/web.
fn assert_chain(root: &Path, chain: &Path, cert: &Path, env: &str, dns: &str) {
    let run = openssl([
        "verify",
        "-CAfile",
        s(root),
        "-untrusted",
        s(chain),
        s(cert),
    ]);
    run.expect_code(0);
    assert_eq!(run.stdout.trim(), format!("{}: OK", s(cert)), "{run:?}");
    let san = support::san_text(cert);
    assert!(san.contains(&format!("DNS:{dns}")), "{san}");
    assert!(
        san.contains(&format!("URI:spiffe://example.internal/{env}/web")),
        "{san}"
    );
}

/// Asserts the server's record of an ACME issuance for `env`/web naming `dns`, by `account`.
fn assert_acme_record(rec: &Value, env: &str, dns: &str, account: &str) {
    assert_eq!(rec["issued_via"], "acme", "{rec}");
    assert_eq!(rec["env"], env, "{rec}");
    assert_eq!(rec["service"], "web", "{rec}");
    assert_eq!(rec["dns_names"], json!([dns]), "{rec}");
    assert_eq!(rec["issued_by"], format!("acme:{account}"), "{rec}");
}

/// Both output streams of a client run.
fn output(run: &Run) -> String {
    format!("{}\n{}", run.stdout, run.stderr)
}

/// Asserts that a client run failed and its output contains every needle.
#[track_caller]
fn assert_failed_with(run: &Run, text: &str, needles: &[&str]) {
    assert!(
        !run.ok(),
        "the client succeeded:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    for n in needles {
        assert!(text.contains(n), "output lacks {n:?}:\n{text}");
    }
}

/// certbot with its config, work and logs directories in the test's temp dir, against one of
/// our directories, trusting our root only.
struct Certbot {
    dir: PathBuf,
    server: String,
    root: PathBuf,
}

impl Certbot {
    fn new(pki: &AcmePki, name: &str, env: &str) -> Certbot {
        let dir = pki.ca.path(name);
        std::fs::create_dir_all(&dir).expect("certbot dir");
        Certbot {
            dir,
            server: pki.directory(env),
            root: pki.root.clone(),
        }
    }

    /// `certbot ARGS` (the subcommand first), non-interactive.
    fn run(&self, args: &[&str]) -> Run {
        let mut c = Command::new("certbot");
        c.args(args)
            .arg("--non-interactive")
            .args(["--config-dir", s(&self.dir.join("config"))])
            .args(["--work-dir", s(&self.dir.join("work"))])
            .args(["--logs-dir", s(&self.dir.join("logs"))])
            .args(["--server", &self.server])
            .env("REQUESTS_CA_BUNDLE", &self.root)
            .env_remove("CURL_CA_BUNDLE");
        for v in PROXY_VARS {
            c.env_remove(v);
        }
        run_bounded(c, CLIENT_LIMIT)
    }

    fn register(&self, extra: &[&str]) -> Run {
        let mut args = vec!["register", "--agree-tos", "-m", EMAIL, "--no-eff-email"];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// `certonly` with the standalone http-01 responder on the port the server validates.
    fn certonly(&self, pki: &AcmePki, cert_name: &str, domain: &str, extra: &[&str]) -> Run {
        let port = pki.http_port.to_string();
        let mut args = vec![
            "certonly",
            "--standalone",
            "--http-01-address",
            "127.0.0.1",
            "--http-01-port",
            &port,
            "--cert-name",
            cert_name,
            "-d",
            domain,
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    fn live(&self, cert_name: &str) -> PathBuf {
        self.dir.join("config/live").join(cert_name)
    }

    /// certbot's debug log. certbot 2.1 on Python 3.11 prints "AttributeError: can't set
    /// attribute" instead of an ACME error raised while ordering (certbot issue #9539, fixed in
    /// 2.2); the problem document it received is in this log.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/letsencrypt.log")).unwrap_or_default()
    }

    /// Console output and debug log of a run.
    fn everything(&self, run: &Run) -> String {
        format!("{}\n{}", output(run), self.log())
    }
}

/// lego with its `--path` in the test's temp dir, against one of our directories, trusting our
/// root only.
struct Lego {
    path: PathBuf,
    server: String,
    root: PathBuf,
}

impl Lego {
    fn new(pki: &AcmePki, name: &str, env: &str) -> Lego {
        Lego {
            path: pki.ca.path(name),
            server: pki.directory(env),
            root: pki.root.clone(),
        }
    }

    /// `lego GLOBAL... COMMAND...`.
    fn run(&self, global: &[&str], command: &[&str]) -> Run {
        let mut c = Command::new("lego");
        c.args(["--server", &self.server])
            .args(["--path", s(&self.path)])
            .args(["--accept-tos", "--email", EMAIL])
            .args(global)
            .args(command)
            .env("LEGO_CA_CERTIFICATES", &self.root);
        for v in PROXY_VARS {
            c.env_remove(v);
        }
        run_bounded(c, CLIENT_LIMIT)
    }

    /// `lego run` for `domain` with the http-01 responder on the port the server validates.
    fn run_http(&self, pki: &AcmePki, domain: &str, extra: &[&str]) -> Run {
        let port = pki.http_responder();
        let mut global = vec!["--domains", domain, "--http", "--http.port", &port];
        global.extend_from_slice(extra);
        self.run(&global, &["run"])
    }

    fn cert(&self, domain: &str) -> PathBuf {
        self.path.join(format!("certificates/{domain}.crt"))
    }

    fn issuer(&self, domain: &str) -> PathBuf {
        self.path.join(format!("certificates/{domain}.issuer.crt"))
    }
}

/// The id of the only account in `env`, checked to be a valid `web` account with our contact.
fn only_account(pki: &AcmePki, env: &str) -> String {
    let accounts = pki.accounts(env);
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    let a = &accounts[0];
    assert_eq!(a["service"], "web", "{a}");
    assert_eq!(a["status"], "valid", "{a}");
    assert_eq!(a["contact"], json!([format!("mailto:{EMAIL}")]), "{a}");
    a["id"].as_str().expect("account id").to_string()
}

#[test]
fn certbot_registers_obtains_renews_revokes_and_unregisters_over_http01() {
    let pki = AcmePki::start();
    let certbot = Certbot::new(&pki, "certbot", "dev");

    let run = certbot.register(&[]);
    run.expect_code(0);
    assert!(output(&run).contains("Account registered"), "{run:?}");
    let account = only_account(&pki, "dev");

    let run = certbot.certonly(&pki, "web", WEB_DEV, &[]);
    run.expect_code(0);
    assert!(
        output(&run).contains("Successfully received certificate"),
        "{run:?}"
    );
    let live = certbot.live("web");
    let (cert, chain) = (live.join("cert.pem"), live.join("chain.pem"));
    assert_chain(&pki.root, &chain, &cert, "dev", WEB_DEV);
    let first = pki.record_of(&cert);
    assert_acme_record(&first, "dev", WEB_DEV, &account);
    assert_eq!(first["status"], "valid", "{first}");
    assert_eq!(first["key_type"], "p256", "certbot's default key: {first}");

    // Renewal: a new order, validated again, for a new certificate (certonly --force-renewal:
    // `certbot renew` is covered by `renew_commands_of_certbot_and_lego` below).
    let run = certbot.certonly(&pki, "web", WEB_DEV, &["--force-renewal"]);
    run.expect_code(0);
    assert!(
        output(&run).contains("Renewing an existing certificate"),
        "{run:?}"
    );
    assert_chain(&pki.root, &chain, &cert, "dev", WEB_DEV);
    let second = pki.record_of(&cert);
    assert_acme_record(&second, "dev", WEB_DEV, &account);
    assert_ne!(first["serial"], second["serial"], "renewal kept the serial");
    assert_eq!(pki.acme_certs().len(), 2);

    // Revocation of the current certificate by its account.
    let run = certbot.run(&[
        "revoke",
        "--cert-path",
        s(&cert),
        "--reason",
        "keycompromise",
        "--no-delete-after-revoke",
    ]);
    run.expect_code(0);
    assert!(output(&run).contains("successfully revoked"), "{run:?}");
    let revoked = pki.record_of(&cert);
    assert_eq!(revoked["status"], "revoked", "{revoked}");
    assert_eq!(revoked["revocation_reason"], "key-compromise", "{revoked}");
    pki.assert_revoked("dev", &cert, "keyCompromise");
    let audit = pki.audit();
    let serial = second["serial"].as_str().expect("serial");
    assert!(
        audit.iter().any(|e| e["action"] == "revoke"
            && e["serial"] == serial
            && e["actor"] == format!("acme:{account}")
            && e["result"] == "ok"),
        "no audit entry for the revocation of {serial}: {audit:?}"
    );
    for rec in [&first, &second] {
        assert!(
            audit
                .iter()
                .any(|e| e["action"] == "acme-finalize" && e["serial"] == rec["serial"]),
            "no audit entry for the issuance of {}: {audit:?}",
            rec["serial"]
        );
    }
    // The first certificate stays good.
    let first_still = pki
        .acme_certs()
        .into_iter()
        .find(|c| c["serial"] == first["serial"])
        .expect("first certificate listed");
    assert_eq!(first_still["status"], "valid", "{first_still}");
    let first_pem = certbot.dir.join("config/archive/web/cert1.pem");
    assert_eq!(
        serial_of(&first_pem),
        first["serial"].as_str().map(normal_serial).expect("serial")
    );
    let (_, dev_ca) = bundle_files(&pki.ca, "dev");
    let status = pki.ocsp(&dev_ca, &first_pem);
    assert!(
        status.contains(&format!("{}: good", s(&first_pem))),
        "OCSP: {status}"
    );

    let run = certbot.run(&["unregister"]);
    run.expect_code(0);
    assert!(output(&run).contains("Account deactivated"), "{run:?}");
    let accounts = pki.accounts("dev");
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(accounts[0]["id"], account.as_str());
    assert_eq!(accounts[0]["status"], "deactivated", "{accounts:?}");
    assert!(
        pki.audit()
            .iter()
            .any(|e| e["action"] == "acme-account-update"
                && e["actor"] == format!("acme:{account}")
                && e["reason"] == "deactivated"),
        "no audit entry for the deactivation"
    );
    pki.assert_server_healthy();
}

#[test]
fn lego_obtains_over_http01_and_tls_alpn01_and_revokes() {
    let pki = AcmePki::start();
    let lego = Lego::new(&pki, "lego", "dev");

    let run = lego.run_http(&pki, WEB_DEV, &[]);
    run.expect_code(0);
    let text = output(&run);
    assert!(text.contains("Trying to solve HTTP-01"), "{text}");
    assert!(
        text.contains("Server responded with a certificate"),
        "{text}"
    );
    let account = only_account(&pki, "dev");
    let (cert, issuer) = (lego.cert(WEB_DEV), lego.issuer(WEB_DEV));
    assert_chain(&pki.root, &issuer, &cert, "dev", WEB_DEV);
    let first = pki.record_of(&cert);
    assert_acme_record(&first, "dev", WEB_DEV, &account);
    assert_eq!(first["key_type"], "p256", "lego's default key: {first}");

    // The same account orders the name again, this time proving control over tls-alpn-01
    // only (lego's own `renew` is covered by `renew_commands_of_certbot_and_lego` below).
    let port = pki.tls_responder();
    let run = lego.run(
        &["--domains", WEB_DEV, "--tls", "--tls.port", &port],
        &["run"],
    );
    run.expect_code(0);
    let text = output(&run);
    assert!(text.contains("use tls-alpn-01 solver"), "{text}");
    assert!(text.contains("The server validated our request"), "{text}");
    assert_chain(&pki.root, &issuer, &cert, "dev", WEB_DEV);
    let second = pki.record_of(&cert);
    assert_acme_record(&second, "dev", WEB_DEV, &account);
    assert_ne!(
        first["serial"], second["serial"],
        "a new order kept the serial"
    );

    let run = lego.run(
        &["--domains", WEB_DEV],
        &["revoke", "--keep", "--reason", "4"],
    );
    run.expect_code(0);
    assert!(output(&run).contains("Certificate was revoked"), "{run:?}");
    let revoked = pki.record_of(&cert);
    assert_eq!(revoked["status"], "revoked", "{revoked}");
    assert_eq!(revoked["revocation_reason"], "superseded", "{revoked}");
    pki.assert_revoked("dev", &cert, "superseded");
    assert!(
        pki.audit().iter().any(|e| e["action"] == "revoke"
            && e["serial"] == second["serial"]
            && e["actor"] == format!("acme:{account}")),
        "no audit entry for the revocation"
    );
    // lego 4.9 cannot deactivate its account (no such command): it stays valid.
    assert_eq!(only_account(&pki, "dev"), account);
    pki.assert_server_healthy();
}

/// A newAccount request without External Account Binding, signed here with a fresh P-256 key:
/// certbot and lego refuse to send one to a directory that says it requires EAB.
fn new_account_without_eab(pki: &AcmePki, env: &str) -> support::Http {
    use base64::Engine;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("P-256 key");
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("load P-256 key");
    let point = key.public_key().as_ref();
    let jwk =
        json!({"crv": "P-256", "kty": "EC", "x": b64(&point[1..33]), "y": b64(&point[33..65])});

    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "20", "-I", "--cacert", s(&pki.root)])
        .arg(format!("{}/acme/{env}/new-nonce", pki.server.url));
    let head = run_bounded(c, Duration::from_secs(30));
    let nonce = head
        .stdout
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("replay-nonce")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no Replay-Nonce: {head:?}"));

    let url = format!("{}/acme/{env}/new-account", pki.server.url);
    let protected = b64(
        json!({"alg": "ES256", "jwk": jwk, "nonce": nonce, "url": url})
            .to_string()
            .as_bytes(),
    );
    let payload = b64(
        json!({"termsOfServiceAgreed": true, "contact": [format!("mailto:{EMAIL}")]})
            .to_string()
            .as_bytes(),
    );
    let signature = key
        .sign(&rng, format!("{protected}.{payload}").as_bytes())
        .expect("sign");
    let body = pki.ca.path(&format!("{}.json", unique("jws")));
    std::fs::write(
        &body,
        json!({"protected": protected, "payload": payload, "signature": b64(signature.as_ref())})
            .to_string(),
    )
    .expect("write JWS");
    let data = format!("@{}", s(&body));
    support::curl(&[
        "--cacert",
        s(&pki.root),
        "-H",
        "content-type: application/jose+json",
        "--data-binary",
        &data,
        &url,
    ])
}

#[test]
fn eab_directory_requires_a_binding_key_and_each_key_binds_one_account() {
    let pki = AcmePki::start();
    let root = s(&pki.root);
    let staging = support::curl(&["--cacert", root, &pki.directory("staging")]).json();
    assert_eq!(
        staging["meta"]["externalAccountRequired"], true,
        "{staging}"
    );
    let dev = support::curl(&["--cacert", root, &pki.directory("dev")]).json();
    assert_eq!(dev["meta"]["externalAccountRequired"], false, "{dev}");

    // Without a key: both clients read our directory's meta and refuse before registering, so
    // the server's own refusal is checked with a hand-signed request.
    let certbot = Certbot::new(&pki, "certbot", "staging");
    let run = certbot.register(&[]);
    assert_failed_with(
        &run,
        &output(&run),
        &["Server requires external account binding"],
    );
    let lego = Lego::new(&pki, "lego", "staging");
    let run = lego.run_http(&pki, WEB_STAGING, &[]);
    assert_failed_with(
        &run,
        &output(&run),
        &["Server requires External Account Binding"],
    );
    let raw = new_account_without_eab(&pki, "staging");
    assert_eq!(raw.status, 400, "{raw:?}");
    assert!(
        raw.content_type.starts_with("application/problem+json"),
        "{raw:?}"
    );
    let problem = raw.json();
    assert_eq!(
        problem["type"], "urn:ietf:params:acme:error:externalAccountRequired",
        "{problem}"
    );
    assert_eq!(
        problem["detail"], "the staging directory requires an external account binding",
        "{problem}"
    );
    assert!(pki.accounts("staging").is_empty());

    // With a key: certbot registers; the key is then used up for anybody else.
    let (kid, hmac) = pki.eab("staging", "web");
    // `--flag=value`: a key id or MAC key may begin with '-' (base64url).
    let eab = [format!("--eab-kid={kid}"), format!("--eab-hmac-key={hmac}")];
    let eab = [eab[0].as_str(), eab[1].as_str()];
    let run = certbot.register(&eab);
    run.expect_code(0);
    assert!(output(&run).contains("Account registered"), "{run:?}");

    let second = Certbot::new(&pki, "certbot-2", "staging");
    let run = second.register(&eab);
    assert_failed_with(
        &run,
        &second.everything(&run),
        &[
            "the external account binding key is used up or expired",
            "urn:ietf:params:acme:error:unauthorized",
        ],
    );
    let run = lego.run_http(
        &pki,
        WEB_STAGING,
        &["--eab", &format!("--kid={kid}"), &format!("--hmac={hmac}")],
    );
    assert_failed_with(
        &run,
        &output(&run),
        &[
            "urn:ietf:params:acme:error:unauthorized",
            "the external account binding key is used up or expired",
        ],
    );
    assert!(!lego.cert(WEB_STAGING).exists());

    // lego with a key of its own registers and obtains a staging certificate.
    let (kid2, hmac2) = pki.eab("staging", "web");
    let run = lego.run_http(
        &pki,
        WEB_STAGING,
        &[
            "--eab",
            &format!("--kid={kid2}"),
            &format!("--hmac={hmac2}"),
        ],
    );
    run.expect_code(0);
    let (_, staging_ca) = bundle_files(&pki.ca, "staging");
    let cert = lego.cert(WEB_STAGING);
    assert_chain(&pki.root, &staging_ca, &cert, "staging", WEB_STAGING);
    assert_chain(
        &pki.root,
        &lego.issuer(WEB_STAGING),
        &cert,
        "staging",
        WEB_STAGING,
    );

    let accounts = pki.accounts("staging");
    assert_eq!(accounts.len(), 2, "{accounts:?}");
    let kids: BTreeSet<&str> = accounts
        .iter()
        .map(|a| a["eab_kid"].as_str().expect("bound account"))
        .collect();
    assert_eq!(kids, BTreeSet::from([kid.as_str(), kid2.as_str()]));
    for a in &accounts {
        assert_eq!(a["service"], "web", "{a}");
        assert_eq!(a["status"], "valid", "{a}");
    }
    let lego_account = accounts
        .iter()
        .find(|a| a["eab_kid"] == kid2.as_str())
        .and_then(|a| a["id"].as_str())
        .expect("lego's account");
    assert_acme_record(&pki.record_of(&cert), "staging", WEB_STAGING, lego_account);
    assert!(
        pki.audit().iter().any(|e| e["action"] == "acme-account"
            && e["reason"] == format!("registered with EAB key {kid}")),
        "no audit entry for the binding"
    );
    pki.assert_server_healthy();
}

#[test]
fn names_outside_policy_are_refused_with_our_problem_document() {
    let pki = AcmePki::start();
    let api_detail = format!(
        "denied by policy rule `services.web.dns`: \"{API_DEV}\" does not match any name allowed for dev/web ({WEB_DEV})"
    );

    let certbot = Certbot::new(&pki, "certbot", "dev");
    certbot.register(&[]).expect_code(0);
    let run = certbot.certonly(&pki, "api", API_DEV, &[]);
    assert_failed_with(
        &run,
        &certbot.everything(&run),
        &[&format!(
            "urn:ietf:params:acme:error:rejectedIdentifier :: The server will not issue \
             certificates for the identifier :: {api_detail}"
        )],
    );
    assert!(!certbot.live("api").exists());

    let lego = Lego::new(&pki, "lego", "dev");
    let rejected = |domain: &str, rule: &str| {
        let run = lego.run_http(&pki, domain, &[]);
        let text = output(&run);
        assert_failed_with(
            &run,
            &text,
            &[
                "400 :: POST",
                "/acme/dev/new-order :: urn:ietf:params:acme:error:rejectedIdentifier :: ",
                rule,
            ],
        );
        text
    };
    let text = rejected(API_DEV, &api_detail);
    assert!(
        !text.contains("Trying to solve"),
        "validated anyway: {text}"
    );
    rejected(
        FOREIGN,
        &format!("denied by policy rule `environments.dev.dns_suffixes`: \"{FOREIGN}\""),
    );
    // One name outside policy spoils the whole order.
    let run = lego.run(
        &[
            "--domains",
            WEB_DEV,
            "--domains",
            API_DEV,
            "--http",
            "--http.port",
            &pki.http_responder(),
        ],
        &["run"],
    );
    assert_failed_with(&run, &output(&run), &["rejectedIdentifier", &api_detail]);
    assert!(!lego.cert(WEB_DEV).exists());
    assert!(pki.acme_certs().is_empty(), "{:?}", pki.acme_certs());
    pki.assert_server_healthy();
}

/// certbot's and lego's own renewal commands. Both take the names to renew from the
/// certificate, its subject CN included: ACME leaves carry their first DNS name there (not the
/// service name agents' leaves carry), so the renewal orders the same names again.
#[test]
fn renew_commands_of_certbot_and_lego() {
    let pki = AcmePki::start();
    let certbot = Certbot::new(&pki, "certbot", "dev");
    certbot.register(&[]).expect_code(0);
    certbot.certonly(&pki, "web", WEB_DEV, &[]).expect_code(0);
    let cert = certbot.live("web").join("cert.pem");
    let before = serial_of(&cert);
    let run = certbot.run(&["renew", "--force-renewal", "--no-random-sleep-on-renew"]);
    run.expect_code(0);
    assert_ne!(serial_of(&cert), before);

    let lego = Lego::new(&pki, "lego", "dev");
    lego.run_http(&pki, WEB_DEV, &[]).expect_code(0);
    let before = serial_of(&lego.cert(WEB_DEV));
    let port = pki.tls_responder();
    let run = lego.run(
        &["--domains", WEB_DEV, "--tls", "--tls.port", &port],
        &["renew", "--days", "9999", "--no-random-sleep"],
    );
    run.expect_code(0);
    assert_ne!(serial_of(&lego.cert(WEB_DEV)), before);
    pki.assert_server_healthy();
}

/// dns-01 through a real DNS server (pebble-challtestsrv) that lego fills through its `exec`
/// provider, for a wildcard and its base name: the wildcard can only be validated this way.
#[test]
fn lego_obtains_a_wildcard_over_dns01_from_a_real_dns_server() {
    let ca = TestCa::new();
    std::fs::create_dir_all(ca.tmp.path()).expect("tmp");
    // The example policy, with wildcards granted to web.
    let policy = std::fs::read_to_string(example_policy()).expect("policy");
    let web = policy.find("[services.web]").expect("web service");
    let (head, tail) = policy.split_at(web);
    let tail = tail.replacen(
        "dns = [\"{service}.{env}.svc.example.internal\"]",
        "dns = [\"{service}.{env}.svc.example.internal\", \"*.{service}.{env}.svc.example.internal\"]\nwildcards = true",
        1,
    );
    let policy_path = ca.tmp.path().join("policy.toml");
    std::fs::write(&policy_path, format!("{head}{tail}")).expect("write policy");
    ca.server(&[
        "init",
        "--policy",
        s(&policy_path),
        "--insecure-no-passphrase",
    ])
    .expect_code(0);
    let dns = ChallTestSrv::start(ca.tmp.path());
    let pki = AcmePki::start_on(ca, &format!("dns_server = \"127.0.0.1:{}\"", dns.dns_port));

    // lego's exec provider: `present|cleanup FQDN VALUE`, forwarded to challtestsrv.
    let hook = pki.ca.path("dns-hook.sh");
    let calls = pki.ca.path("dns-hook.log");
    let script = r#"#!/bin/sh
echo "$1 $2" >> LOG
case "$1" in
  present) path=set-txt; body="{\"host\":\"$2\",\"value\":\"$3\"}" ;;
  cleanup) path=clear-txt; body="{\"host\":\"$2\"}" ;;
  *) exit 0 ;;
esac
exec curl -sS --noproxy '*' -X POST -d "$body" MGMT/$path
"#;
    std::fs::write(
        &hook,
        script
            .replace("LOG", s(&calls))
            .replace("MGMT", &dns.management()),
    )
    .expect("hook");
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");

    let wildcard = format!("*.{WEB_DEV}");
    let lego = Lego::new(&pki, "lego", "dev");
    let resolver = format!("127.0.0.1:{}", dns.dns_port);
    let mut c = Command::new("lego");
    c.args(["--server", &lego.server, "--path", s(&lego.path)])
        .args(["--accept-tos", "--email", EMAIL])
        .args(["--domains", &wildcard, "--domains", WEB_DEV])
        .args([
            "--dns",
            "exec",
            "--dns.resolvers",
            &resolver,
            "--dns.disable-cp",
        ])
        .arg("run")
        .env("LEGO_CA_CERTIFICATES", &lego.root)
        .env("EXEC_PATH", &hook)
        .env("EXEC_POLLING_INTERVAL", "1")
        .env("EXEC_SEQUENCE_INTERVAL", "1")
        .env("EXEC_PROPAGATION_TIMEOUT", "20");
    for v in PROXY_VARS {
        c.env_remove(v);
    }
    let run = run_bounded(c, CLIENT_LIMIT);
    run.expect_code(0);

    // Both names were validated through TXT records the hook published, and cleaned up.
    let log = std::fs::read_to_string(&calls).expect("hook log");
    let fqdn = format!("_acme-challenge.{WEB_DEV}.");
    assert_eq!(
        log.lines()
            .filter(|l| *l == format!("present {fqdn}"))
            .count(),
        2,
        "{log}"
    );
    assert!(log.contains(&format!("cleanup {fqdn}")), "{log}");
    // lego names the files after the first domain, `*` written as `_`.
    let file = format!("_.{WEB_DEV}");
    assert_chain(
        &pki.root,
        &lego.issuer(&file),
        &lego.cert(&file),
        "dev",
        WEB_DEV,
    );
    let san = support::san_text(&lego.cert(&file));
    assert!(san.contains(&format!("DNS:{wildcard}")), "{san}");
    assert!(san.contains(&format!("DNS:{WEB_DEV}")), "{san}");
    pki.assert_server_healthy();
}
