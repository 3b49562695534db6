//! Hostile input: every refusal the API and the CLI promise, as named cases. Each case checks its
//! status (or exit code) and problem type, that nothing was stored, revoked or spent (the
//! certificate rows and the tokens' uses, read back through `ca-server certs list` and
//! `ca-server token list`), and the server keeps serving: `/healthz` and a good enrollment work
//! afterwards, and its debug log holds no token, passphrase or private key.
//!
//! One server per test function; the cases of a function run one after the other against it,
//! and all failures are reported together, each under its case's name.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{AlertDescription, ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use support::{Http, Run, Server, TestCa, curl, openssl, run_bounded, s, server_bin};

const PASSPHRASE: &str = "hostile-suite passphrase 7f3c, long enough";
const API_DEV: &str = "api.dev.svc.example.internal";
const WEB_DEV: &str = "web.dev.svc.example.internal";
const API_PROD: &str = "api.prod.svc.example.internal";
/// The tail every private key PEM header ends with (`... PRIVATE KEY` and five dashes).
const PRIVATE_KEY_PEM: &str = "PRIVATE KEY-----";

// ---------------------------------------------------------------------------------------------
// What the CA holds: certificate rows (and whether revoked) and tokens' uses.

/// Everything a refused request must leave alone.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ledger {
    /// serial -> revoked_at
    certs: BTreeMap<String, Option<String>>,
    /// token id -> (uses, revoked)
    tokens: BTreeMap<String, (u64, bool)>,
    /// CA certificates, ACME binding keys and accounts (with their status), as rows.
    rows: std::collections::BTreeSet<String>,
}

impl Ledger {
    fn of(ca: &TestCa) -> Ledger {
        let certs = json_of(&ca.server(&["certs", "list", "--json"]));
        let tokens = json_of(&ca.server(&["token", "list", "--all", "--json"]));
        let db = ca.data.join("ca.db");
        let rows = support::sqlite3(
            &[],
            &db,
            "SELECT 'authority ' || id FROM authorities \
             UNION ALL SELECT 'eab key ' || kid FROM acme_eab_keys \
             UNION ALL SELECT 'acme account ' || id || ' ' || status FROM acme_accounts",
        );
        Ledger {
            rows: rows.lines().map(str::to_string).collect(),
            certs: certs
                .as_array()
                .expect("certs array")
                .iter()
                .map(|c| {
                    (
                        c["serial"].as_str().expect("serial").to_string(),
                        c["revoked_at"].as_str().map(str::to_string),
                    )
                })
                .collect(),
            tokens: tokens
                .as_array()
                .expect("tokens array")
                .iter()
                .map(|t| {
                    (
                        t["id"].as_str().expect("id").to_string(),
                        (t["uses"].as_u64().expect("uses"), t["state"] == "revoked"),
                    )
                })
                .collect(),
        }
    }

    /// What changed from `self` to `after`, for a failure message.
    fn diff(&self, after: &Ledger) -> String {
        let mut out = Vec::new();
        for (serial, revoked) in &after.certs {
            match self.certs.get(serial) {
                None => out.push(format!("new certificate {serial}")),
                Some(before) if before != revoked => out.push(format!("{serial} revoked")),
                _ => {}
            }
        }
        for row in after.rows.symmetric_difference(&self.rows) {
            let change = if after.rows.contains(row) {
                "new"
            } else {
                "gone"
            };
            out.push(format!("{change}: {row}"));
        }
        for (id, state) in &after.tokens {
            if self.tokens.get(id) != Some(state) {
                out.push(format!(
                    "token {id}: {:?} -> {state:?} (uses, revoked)",
                    self.tokens.get(id)
                ));
            }
        }
        out.join("; ")
    }
}

fn json_of(run: &Run) -> serde_json::Value {
    run.expect_code(0);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", run.stdout))
}

/// Collects failures of named cases, so one run reports all of them.
#[derive(Default)]
struct Report {
    cases: usize,
    failures: Vec<String>,
}

impl Report {
    fn check(&mut self, name: &str, result: Result<(), String>) {
        self.cases += 1;
        if let Err(e) = result {
            self.failures.push(format!("[{name}] {e}"));
        }
    }

    #[track_caller]
    fn finish(self, what: &str, at_least: usize) {
        assert!(
            self.failures.is_empty(),
            "{} of {} {what} cases failed:\n{}",
            self.failures.len(),
            self.cases,
            self.failures.join("\n")
        );
        assert!(
            self.cases >= at_least,
            "only {} {what} cases ran",
            self.cases
        );
        eprintln!("{what}: {} cases passed", self.cases);
    }
}

// ---------------------------------------------------------------------------------------------
// The server under attack, and requests to it through curl.

/// A certificate issued with `ca-server issue`: its files and serial.
struct Holder {
    cert: PathBuf,
    chain: PathBuf,
    key: PathBuf,
    serial: String,
    not_after: OffsetDateTime,
}

struct Target {
    ca: TestCa,
    server: Server,
    root: PathBuf,
    /// Every token minted, whose text must never reach the log.
    tokens: std::cell::RefCell<Vec<String>>,
    /// Other secrets sent to the server.
    others: std::cell::RefCell<Vec<String>>,
}

impl Target {
    fn start(ca: TestCa) -> Target {
        let server = ca.serve_with_env(
            &["--http-listen", "127.0.0.1:0"],
            &[("CA_LOG", "debug"), ("NO_COLOR", "1")],
        );
        let root = ca.path("root.pem");
        ca.server(&["bundle", "--env", "dev", "--out", s(&root)])
            .expect_code(0);
        // Trust only the root (the bundle's first certificate).
        let pem = std::fs::read_to_string(&root).expect("bundle");
        let end = pem.find("-----END CERTIFICATE-----").expect("root")
            + "-----END CERTIFICATE-----\n".len();
        std::fs::write(&root, &pem[..end]).expect("write root");
        Target {
            ca,
            server,
            root,
            tokens: Default::default(),
            others: Default::default(),
        }
    }

    /// Mints a token; `extra` as for `token create`.
    fn token(&self, env: &str, service: &str, extra: &[&str]) -> String {
        let mut args = vec!["token", "create", "--env", env, "--service", service];
        args.extend_from_slice(extra);
        let run = self.ca.server(&args);
        run.expect_code(0);
        let token = run.stdout.trim().to_string();
        self.tokens.borrow_mut().push(token.clone());
        token
    }

    fn issue(&self, name: &str, env: &str, service: &str, extra: &[&str]) -> Holder {
        let out = self.ca.path(name);
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        let run = self.ca.issue(env, service, &[], &out, &args);
        let v = json_of(&run);
        Holder {
            cert: out.join("cert.pem"),
            chain: out.join("chain.pem"),
            key: out.join("key.pem"),
            serial: v["serial"].as_str().expect("serial").to_string(),
            not_after: OffsetDateTime::parse(v["not_after"].as_str().expect("not_after"), &Rfc3339)
                .expect("rfc3339"),
        }
    }

    fn send(&self, req: &Req) -> Http {
        let (base, tls) = if req.plain {
            (self.server.http_url.clone().expect("http listener"), false)
        } else {
            (self.server.url.clone(), true)
        };
        let mut args: Vec<String> = Vec::new();
        if tls {
            args.extend(["--cacert".into(), s(&self.root).into()]);
        }
        if let Some(m) = req.method {
            args.extend(["-X".into(), m.into()]);
        }
        if let Some(body) = &req.body {
            let file = self.ca.path(&format!("body-{}", unique()));
            std::fs::write(&file, body).expect("write body");
            args.extend(["--data-binary".into(), format!("@{}", s(&file))]);
            args.extend(["-H".into(), format!("content-type:{}", req.content_type)]);
        }
        if let Some((cert, key)) = &req.client {
            args.extend([
                "--cert".into(),
                s(cert).into(),
                "--key".into(),
                s(key).into(),
            ]);
        }
        args.extend(req.args.iter().cloned());
        args.push(format!("{base}{}", req.path));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&refs)
    }

    /// Runs every case; each must get its answer and leave the ledger as it was.
    fn run(&self, cases: Vec<Case>, report: &mut Report) {
        let secrets = self.secrets();
        let mut names = std::collections::BTreeSet::new();
        for case in cases {
            assert!(names.insert(case.name), "duplicate case {}", case.name);
            let before = Ledger::of(&self.ca);
            let resp = self.send(&case.req);
            let after = Ledger::of(&self.ca);
            let mut errors: Vec<String> = case.expect.check(&resp).err().into_iter().collect();
            if let Some(secret) = secrets.iter().find(|t| resp.body.contains(t.as_str())) {
                errors.push(format!("the answer echoes a secret ({secret:.8}...)"));
            }
            if resp.body.contains(PRIVATE_KEY_PEM) {
                errors.push("the answer holds a private key".into());
            }
            if after != before {
                errors.push(format!("stored or spent: {}", before.diff(&after)));
            }
            report.check(
                case.name,
                if errors.is_empty() {
                    Ok(())
                } else {
                    Err(errors.join("; "))
                },
            );
        }
    }

    /// Token texts, their secret halves and the passphrase.
    fn secrets(&self) -> Vec<String> {
        let mut v = vec![PASSPHRASE.to_string()];
        v.extend(self.others.borrow().iter().cloned());
        for t in self.tokens.borrow().iter() {
            v.push(t.clone());
            if let Some((_, secret)) = t.split_once('.') {
                v.push(secret.to_string());
            }
        }
        v
    }

    fn healthy(&self) {
        let r = curl(&[
            "--cacert",
            s(&self.root),
            &format!("{}/healthz", self.server.url),
        ]);
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "{\"status\":\"ok\"}"),
            "{}",
            r.curl_err
        );
    }

    /// A good enrollment with `token`: 201, and exactly one new certificate row.
    fn enrolls(&self, token: &str, csr: &str) {
        let before = Ledger::of(&self.ca);
        let body = json!({ "token": token, "csr": csr, "dns": [API_DEV] });
        let r = self.send(&Req::json("/v1/enroll", body));
        assert_eq!(r.status, 201, "{} {}", r.body, r.curl_err);
        let after = Ledger::of(&self.ca);
        assert_eq!(after.certs.len(), before.certs.len() + 1);
    }

    /// Nothing secret in the server's log.
    fn log_is_clean(&self) {
        let log = self.server.stderr();
        assert!(
            log.contains("DEBUG"),
            "the log is not at debug level, the scan would prove little"
        );
        for secret in self.secrets() {
            assert!(
                !log.contains(&secret),
                "the server log holds a secret ({secret:.8}...)"
            );
        }
        assert!(
            !log.contains(PRIVATE_KEY_PEM),
            "the server log holds a private key"
        );
        for bad in ["panicked", "stack backtrace"] {
            assert!(!log.contains(bad), "the server log shows {bad:?}");
        }
    }
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One request, sent with curl.
#[derive(Clone)]
struct Req {
    method: Option<&'static str>,
    path: String,
    body: Option<Vec<u8>>,
    /// Sent with a body; empty sends the header without a value (curl then sends none).
    content_type: String,
    client: Option<(PathBuf, PathBuf)>,
    args: Vec<String>,
    /// Over the plain-HTTP listener (CRLs and OCSP only).
    plain: bool,
}

impl Req {
    fn get(path: &str) -> Req {
        Req {
            method: None,
            path: path.to_string(),
            body: None,
            content_type: String::new(),
            client: None,
            args: Vec::new(),
            plain: false,
        }
    }

    fn post(path: &str, body: impl Into<Vec<u8>>) -> Req {
        Req {
            body: Some(body.into()),
            content_type: "application/json".into(),
            ..Req::get(path)
        }
    }

    fn json(path: &str, body: serde_json::Value) -> Req {
        Req::post(path, body.to_string())
    }

    fn ct(mut self, content_type: &str) -> Req {
        self.content_type = content_type.to_string();
        self
    }

    fn method(mut self, m: &'static str) -> Req {
        self.method = Some(m);
        self
    }

    fn with_cert(mut self, h: &Holder) -> Req {
        self.client = Some((h.cert.clone(), h.key.clone()));
        self
    }

    fn arg(mut self, a: &str) -> Req {
        self.args.push(a.to_string());
        self
    }

    fn plain(mut self) -> Req {
        self.plain = true;
        self
    }
}

/// What a refused request must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// `application/problem+json` with this status and problem type.
    Problem(u16, &'static str),
    /// 200 with an OCSP response carrying only this OCSPResponseStatus (RFC 6960 4.2.1: errors
    /// travel inside a response, not as HTTP statuses).
    Ocsp(u8),
}

impl Expect {
    fn check(self, r: &Http) -> Result<(), String> {
        let seen = || {
            format!(
                "got {} {:?}: {} {}",
                r.status,
                r.content_type,
                r.body.chars().take(300).collect::<String>(),
                r.curl_err.trim()
            )
        };
        match self {
            Expect::Problem(status, slug) => {
                if r.status != status || !r.content_type.starts_with("application/problem+json") {
                    return Err(format!("want {status} {slug}, {}", seen()));
                }
                let v: serde_json::Value =
                    serde_json::from_str(&r.body).map_err(|e| format!("{e}: {}", seen()))?;
                let want = format!("urn:ca-server:problem:{slug}");
                if v["type"] != want.as_str()
                    || v["status"] != status
                    || v["detail"].as_str().is_none_or(str::is_empty)
                {
                    return Err(format!("want {status} {slug}, {}", seen()));
                }
                Ok(())
            }
            Expect::Ocsp(code) => {
                let want = [0x30, 0x03, 0x0a, 0x01, code];
                if r.status == 200
                    && r.content_type == "application/ocsp-response"
                    && r.body.as_bytes() == want
                {
                    Ok(())
                } else {
                    Err(format!(
                        "want an OCSP response of status {code}, {} (bytes {:02x?})",
                        seen(),
                        r.body.as_bytes()
                    ))
                }
            }
        }
    }
}

struct Case {
    name: &'static str,
    req: Req,
    expect: Expect,
}

fn case(name: &'static str, req: Req, expect: Expect) -> Case {
    Case { name, req, expect }
}

use Expect::{Ocsp, Problem};

// ---------------------------------------------------------------------------------------------
// CSRs and DER surgery.

/// An openssl CSR for a fresh key: `newkey` as for `openssl req -newkey`, `extra` appended.
fn openssl_csr(ca: &TestCa, name: &str, newkey: &[&str], extra: &[&str]) -> String {
    let key = ca.path(&format!("{name}.key"));
    let csr = ca.path(&format!("{name}.csr"));
    let mut args = vec!["req", "-new", "-nodes"];
    args.extend_from_slice(newkey);
    args.extend(["-keyout", s(&key), "-out", s(&csr)]);
    if !extra.contains(&"-config") {
        args.extend(["-subj", "/CN=ignored"]);
    }
    args.extend_from_slice(extra);
    openssl(&args).expect_code(0);
    std::fs::read_to_string(&csr).expect("csr")
}

const P256: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

/// A CSR for an existing key file.
fn csr_for_key(ca: &TestCa, name: &str, key: &Path) -> String {
    let csr = ca.path(&format!("{name}.csr"));
    openssl([
        "req",
        "-new",
        "-key",
        s(key),
        "-out",
        s(&csr),
        "-subj",
        "/CN=ignored",
    ])
    .expect_code(0);
    std::fs::read_to_string(&csr).expect("csr")
}

fn der_of(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).expect("pem").into_contents()
}

fn pem_of(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der.to_vec()))
}

// ---------------------------------------------------------------------------------------------
// The API.

#[test]
fn every_api_refusal_has_its_status_and_type_stores_nothing_and_leaks_nothing() {
    let t = Target::start(TestCa::init_sealed(PASSPHRASE));
    let ca = &t.ca;

    // Credentials for the cases. The main token (dev/api, one use) must survive every refusal:
    // the last step enrolls with it.
    let token = t.token("dev", "api", &["--ttl", "1h"]);
    let (token_id, _) = token.split_once('.').expect("token id");
    let expired = t.token("dev", "api", &["--ttl", "1s"]);
    let expired_at = OffsetDateTime::now_utc() + Duration::from_secs(1);
    let revoked = t.token("dev", "api", &[]);
    ca.server(&["token", "revoke", revoked.split_once('.').expect("id").0])
        .expect_code(0);
    let prod_token = t.token("prod", "api", &[]);
    let ci_token = t.token("ci", "api", &["--uses", "3", "--ttl", "1h"]);
    let used = t.token("dev", "api", &[]);
    let good_csr = openssl_csr(ca, "good", P256, &[]);
    t.enrolls(&used, &good_csr);

    let holder = t.issue("holder", "dev", "api", &[]);
    let web = t.issue("web", "dev", "web", &[]);
    let admin = t.issue("ops", "prod", "ops", &[]);
    let victim = t.issue("victim", "dev", "api", &[]);
    ca.server(&[
        "revoke",
        &victim.serial,
        "--reason",
        "key-compromise",
        "--yes",
    ])
    .expect_code(0);
    let gone = t.issue("gone", "dev", "api", &[]);
    let first = t.send(
        &Req::json(
            "/v1/admin/revoke",
            json!({ "serial": gone.serial, "reason": "superseded" }),
        )
        .with_cert(&admin),
    );
    assert_eq!(first.status, 200, "{}", first.body);

    // CSRs that ask for too much, or are broken.
    let der = der_of(&good_csr);
    let mut tampered = der.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let mut trailing = der.clone();
    trailing.extend_from_slice(&[0, 0, 0, 0]);
    let secp256k1_key = ca.path("k1.key");
    openssl([
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:secp256k1",
        "-out",
        s(&secp256k1_key),
    ])
    .expect_code(0);
    let challenge_cnf = ca.path("challenge.cnf");
    std::fs::write(
        &challenge_cnf,
        "[req]\ndistinguished_name = dn\nattributes = attrs\nprompt = no\n\
         [dn]\nCN = ignored\n[attrs]\nchallengePassword = do-not-echo-me\n",
    )
    .expect("write config");
    t.others.borrow_mut().push("do-not-echo-me".into());
    let csr_with = |name: &str, extra: &[&str]| openssl_csr(ca, name, P256, extra);
    let private_key_pem = std::fs::read_to_string(ca.path("good.key")).expect("key");
    // Its base64 must not come back either (the refusal may name the PEM label).
    t.others.borrow_mut().extend(
        private_key_pem
            .lines()
            .filter(|l| l.len() == 64)
            .map(str::to_string),
    );

    // Foreign CA: an OCSP request about its certificate, and its leaf for TLS.
    let foreign = TestCa::init_insecure();
    let foreign_out = foreign.path("leaf");
    foreign
        .issue("dev", "api", &[API_DEV], &foreign_out, &[])
        .expect_code(0);
    let foreign_chain =
        pem::parse_many(std::fs::read(foreign_out.join("chain.pem")).expect("chain")).expect("pem");
    let foreign_int = foreign.path("int.pem");
    std::fs::write(
        &foreign_int,
        pem_of("CERTIFICATE", foreign_chain[1].contents()),
    )
    .expect("write");
    let foreign_req = foreign.path("req.der");
    openssl([
        "ocsp",
        "-no_nonce",
        "-issuer",
        s(&foreign_int),
        "-cert",
        s(&foreign_out.join("cert.pem")),
        "-reqout",
        s(&foreign_req),
    ])
    .expect_code(0);
    let foreign_req = std::fs::read(&foreign_req).expect("ocsp request");

    // Bodies.
    let enroll = |extra: serde_json::Value| {
        let mut body = json!({ "token": token, "csr": good_csr, "dns": [API_DEV] });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        Req::json("/v1/enroll", body)
    };
    let enroll_csr = |csr: &str| enroll(json!({ "csr": csr }));
    let enroll_token = |tok: &str| enroll(json!({ "token": tok }));
    let fresh_csr = csr_with("fresh", &[]);
    let renew = |extra: serde_json::Value| {
        let mut body = json!({ "csr": fresh_csr });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        Req::json("/v1/renew", body).with_cert(&holder)
    };
    let admin_revoke =
        |body: serde_json::Value| Req::json("/v1/admin/revoke", body).with_cert(&admin);
    let oversized = json!({ "token": token, "csr": "A".repeat(70 * 1024) }).to_string();
    let nested = format!("{{\"token\": {}{}}}", "[".repeat(4000), "]".repeat(4000));
    let many_names: Vec<String> = (0..1000)
        .map(|i| format!("n{i}.prod.svc.example.internal"))
        .collect();

    // The expired token must be past its time before its case runs.
    wait_until(expired_at + Duration::from_secs(1));

    #[rustfmt::skip]
    let cases = vec![
        // The body: JSON, content type, size.
        case("enroll/json-truncated", Req::post("/v1/enroll", "{\"token\": "), Problem(400, "malformed-json")),
        case("enroll/json-empty-body", Req::post("/v1/enroll", ""), Problem(400, "malformed-json")),
        case("enroll/json-array", Req::post("/v1/enroll", "[]"), Problem(400, "malformed-json")),
        case("enroll/json-null", Req::post("/v1/enroll", "null"), Problem(400, "malformed-json")),
        case("enroll/json-not-utf8", Req::post("/v1/enroll", b"{\"token\": \"\xff\xfe\"}".to_vec()), Problem(400, "malformed-json")),
        case("enroll/json-nested-4000-deep", Req::post("/v1/enroll", nested), Problem(400, "malformed-json")),
        case("enroll/json-duplicate-field", Req::post("/v1/enroll", format!("{{\"token\":\"{token}\",\"token\":\"{token}\",\"csr\":\"x\"}}")), Problem(400, "malformed-json")),
        case("enroll/unknown-field", enroll(json!({ "admin": true })), Problem(400, "malformed-json")),
        case("enroll/missing-token", Req::json("/v1/enroll", json!({ "csr": good_csr })), Problem(400, "malformed-json")),
        case("enroll/missing-csr", Req::json("/v1/enroll", json!({ "token": token })), Problem(400, "malformed-json")),
        case("enroll/dns-not-a-list", enroll(json!({ "dns": API_DEV })), Problem(400, "malformed-json")),
        case("enroll/ip-malformed", enroll(json!({ "ips": ["999.0.0.1"] })), Problem(400, "malformed-json")),
        case("enroll/content-type-text", enroll(json!({})).ct("text/plain"), Problem(415, "unsupported-media-type")),
        case("enroll/content-type-form", enroll(json!({})).ct("application/x-www-form-urlencoded"), Problem(415, "unsupported-media-type")),
        case("enroll/content-type-missing", enroll(json!({})).ct(""), Problem(415, "unsupported-media-type")),
        case("enroll/content-type-jsonx", enroll(json!({})).ct("application/jsonx"), Problem(415, "unsupported-media-type")),
        case("enroll/body-over-64KiB", Req::post("/v1/enroll", oversized.clone()), Problem(413, "payload-too-large")),
        case("enroll/body-over-64KiB-chunked", Req::post("/v1/enroll", oversized.clone()).arg("-H").arg("transfer-encoding: chunked").arg("--http1.1"), Problem(413, "payload-too-large")),
        // Tokens.
        case("token/garbage", enroll_token("garbage"), Problem(401, "invalid-token")),
        case("token/empty", enroll_token(""), Problem(401, "invalid-token")),
        case("token/60KiB", enroll_token(&"a".repeat(60 * 1024)), Problem(401, "invalid-token")),
        case("token/no-secret", enroll_token(&format!("{token_id}.")), Problem(401, "invalid-token")),
        case("token/secret-one-short", enroll_token(&token[..token.len() - 1]), Problem(401, "invalid-token")),
        case("token/unknown-id", enroll_token(&format!("{}.{}", "0123456789abcdef", "ab".repeat(32))), Problem(401, "invalid-token")),
        case("token/wrong-secret", enroll_token(&format!("{token_id}.{}", "ab".repeat(32))), Problem(401, "invalid-token")),
        case("token/secret-upper-case", enroll_token(&format!("{token_id}.{}", token.split_once('.').expect("secret").1.to_uppercase())), Problem(401, "invalid-token")),
        case("token/expired", enroll_token(&expired), Problem(401, "invalid-token")),
        case("token/revoked", enroll_token(&revoked), Problem(401, "invalid-token")),
        case("token/used-up", enroll_token(&used), Problem(401, "invalid-token")),
        case("token/asks-other-env", enroll(json!({ "env": "prod" })), Problem(403, "forbidden")),
        case("token/asks-other-service", enroll(json!({ "service": "web" })), Problem(403, "forbidden")),
        case("token/asks-unknown-env", enroll(json!({ "env": "qa" })), Problem(403, "forbidden")),
        case("token/prod-token-dev-names", enroll_token(&prod_token), Problem(403, "policy-denied")),
        case("token/ci-token-dev-names", enroll_token(&ci_token), Problem(403, "policy-denied")),
        // CSRs.
        case("csr/empty", enroll_csr(""), Problem(400, "bad-csr")),
        case("csr/not-pem", enroll_csr("hello, CA"), Problem(400, "bad-csr")),
        case("csr/base64-without-armour", enroll_csr(&base64_of(&der)), Problem(400, "bad-csr")),
        case("csr/wrong-pem-label", enroll_csr(&pem_of("CERTIFICATE", &der)), Problem(400, "bad-csr")),
        case("csr/a-private-key", enroll_csr(&private_key_pem), Problem(400, "bad-csr")),
        case("csr/truncated-der", enroll_csr(&pem_of("CERTIFICATE REQUEST", &der[..der.len() / 2])), Problem(400, "bad-csr")),
        case("csr/trailing-bytes", enroll_csr(&pem_of("CERTIFICATE REQUEST", &trailing)), Problem(400, "bad-csr")),
        case("csr/bad-signature", enroll_csr(&pem_of("CERTIFICATE REQUEST", &tampered)), Problem(400, "bad-csr")),
        case("csr/rsa-1024", enroll_csr(&openssl_csr(ca, "rsa1024", &["-newkey", "rsa:1024"], &[])), Problem(400, "bad-csr")),
        case("csr/secp256k1", enroll_csr(&csr_for_key(ca, "k1", &secp256k1_key)), Problem(400, "bad-csr")),
        case("csr/p521", enroll_csr(&openssl_csr(ca, "p521", &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"], &[])), Problem(400, "bad-csr")),
        case("csr/ed448", enroll_csr(&openssl_csr(ca, "ed448", &["-newkey", "ed448"], &[])), Problem(400, "bad-csr")),
        case("csr/ca-true", enroll_csr(&csr_with("ca-true", &["-addext", "basicConstraints=critical,CA:TRUE"])), Problem(400, "bad-csr")),
        case("csr/path-length", enroll_csr(&csr_with("pathlen", &["-addext", "basicConstraints=CA:FALSE,pathlen:0"])), Problem(400, "bad-csr")),
        case("csr/uri-other-env-id", enroll_csr(&csr_with("uri-prod", &["-addext", "subjectAltName=URI:spiffe://example.internal/prod/api"])), Problem(400, "bad-csr")),
        case("csr/uri-https", enroll_csr(&csr_with("uri-https", &["-addext", "subjectAltName=URI:https://evil.example"])), Problem(400, "bad-csr")),
        case("csr/email-san", enroll_csr(&csr_with("email", &["-addext", "subjectAltName=email:ops@example.internal"])), Problem(400, "bad-csr")),
        case("csr/othername-san", enroll_csr(&csr_with("othername", &["-addext", "subjectAltName=otherName:1.3.6.1.4.1.311.20.2.3;UTF8:admin@example.internal"])), Problem(400, "bad-csr")),
        case("csr/dirname-san", enroll_csr(&csr_with("dirname", &["-addext", "subjectAltName=dirName:dir_sect", "-config", &dirname_config(ca)])), Problem(400, "bad-csr")),
        case("csr/unknown-critical-extension", enroll_csr(&csr_with("crit", &["-addext", "1.2.3.4=critical,ASN1:NULL"])), Problem(400, "bad-csr")),
        case("csr/other-extension", enroll_csr(&csr_with("ski", &["-addext", "subjectKeyIdentifier=hash"])), Problem(400, "bad-csr")),
        case("csr/code-signing-eku", enroll_csr(&csr_with("codesign", &["-addext", "extendedKeyUsage=codeSigning"])), Problem(400, "bad-csr")),
        case("csr/key-cert-sign", enroll_csr(&csr_with("certsign", &["-addext", "keyUsage=critical,digitalSignature,keyCertSign"])), Problem(400, "bad-csr")),
        case("csr/challenge-password", enroll_csr(&csr_with("challenge", &["-config", s(&challenge_cnf)])), Problem(400, "bad-csr")),
        case("csr/names-differ-from-body", enroll_csr(&csr_with("differ", &["-addext", &format!("subjectAltName=DNS:{WEB_DEV}")])), Problem(400, "bad-csr")),
        // Names and lifetimes against policy.
        case("policy/dns-in-csr-outside-env", enroll(json!({ "csr": csr_with("prod-name", &["-addext", &format!("subjectAltName=DNS:{API_PROD}")]), "dns": [] })), Problem(403, "policy-denied")),
        case("policy/dns-other-env", enroll(json!({ "dns": [API_PROD] })), Problem(403, "policy-denied")),
        case("policy/dns-other-service", enroll(json!({ "dns": [WEB_DEV] })), Problem(403, "policy-denied")),
        case("policy/dns-outside-trust-domain", enroll(json!({ "dns": ["api.dev.svc.example.com"] })), Problem(403, "policy-denied")),
        case("policy/dns-1000-names", enroll(json!({ "dns": many_names })), Problem(403, "policy-denied")),
        case("policy/wildcard", enroll(json!({ "dns": ["*.dev.svc.example.internal"] })), Problem(403, "policy-denied")),
        case("policy/ip-san", enroll(json!({ "ips": ["10.0.0.1"] })), Problem(403, "policy-denied")),
        case("policy/ip-san-v6", enroll(json!({ "ips": ["::1"] })), Problem(403, "policy-denied")),
        case("policy/ttl-above-max", enroll(json!({ "ttl": "13h" })), Problem(403, "policy-denied")),
        case("policy/ttl-1000-years", enroll(json!({ "ttl": "1000y" })), Problem(403, "policy-denied")),
        case("policy/ttl-malformed", enroll(json!({ "ttl": "1x" })), Problem(400, "bad-request")),
        case("policy/ttl-zero", enroll(json!({ "ttl": "0s" })), Problem(400, "bad-request")),
        case("policy/ttl-negative", enroll(json!({ "ttl": "-1h" })), Problem(400, "bad-request")),
        case("policy/ttl-overflow", enroll(json!({ "ttl": "99999999999999999999y" })), Problem(400, "bad-request")),
        // Renewal.
        case("renew/no-client-cert", Req::json("/v1/renew", json!({ "csr": fresh_csr })), Problem(401, "client-certificate-required")),
        case("renew/same-key", renew(json!({ "csr": csr_for_key(ca, "same", &holder.key) })), Problem(400, "bad-request")),
        case("renew/revoked-cert", Req::json("/v1/renew", json!({ "csr": fresh_csr })).with_cert(&victim), Problem(403, "forbidden")),
        case("renew/into-other-service", renew(json!({ "service": "web" })), Problem(403, "forbidden")),
        case("renew/into-other-env", renew(json!({ "env": "prod" })), Problem(403, "forbidden")),
        case("renew/admin-into-dev", Req::json("/v1/renew", json!({ "csr": fresh_csr, "env": "dev" })).with_cert(&admin), Problem(403, "forbidden")),
        case("renew/dns-outside-policy", renew(json!({ "dns": [API_PROD] })), Problem(403, "policy-denied")),
        case("renew/ttl-above-max", renew(json!({ "ttl": "13h" })), Problem(403, "policy-denied")),
        case("renew/ttl-malformed", renew(json!({ "ttl": "soon" })), Problem(400, "bad-request")),
        case("renew/not-a-csr", renew(json!({ "csr": "not a csr" })), Problem(400, "bad-csr")),
        case("renew/csr-ca-true", renew(json!({ "csr": csr_with("renew-ca", &["-addext", "basicConstraints=critical,CA:TRUE"]) })), Problem(400, "bad-csr")),
        case("renew/token-field", renew(json!({ "token": token })), Problem(400, "malformed-json")),
        case("renew/json-truncated", Req::post("/v1/renew", "{\"csr\": ").with_cert(&holder), Problem(400, "malformed-json")),
        case("renew/body-over-64KiB", Req::post("/v1/renew", oversized.clone()).with_cert(&holder), Problem(413, "payload-too-large")),
        // A holder revoking.
        case("self-revoke/no-client-cert", Req::json("/v1/revoke", json!({ "reason": "superseded" })), Problem(401, "client-certificate-required")),
        case("self-revoke/another-serial", Req::json("/v1/revoke", json!({ "serial": web.serial })).with_cert(&holder), Problem(403, "forbidden")),
        case("self-revoke/by-identity", Req::json("/v1/revoke", json!({ "env": "dev", "service": "web" })).with_cert(&holder), Problem(400, "bad-request")),
        case("self-revoke/dry-run", Req::json("/v1/revoke", json!({ "dry_run": true })).with_cert(&holder), Problem(400, "bad-request")),
        case("self-revoke/bad-reason", Req::json("/v1/revoke", json!({ "reason": "bored" })).with_cert(&holder), Problem(400, "bad-request")),
        case("self-revoke/bad-serial", Req::json("/v1/revoke", json!({ "serial": "xyz" })).with_cert(&holder), Problem(400, "bad-request")),
        case("self-revoke/already-revoked", Req::json("/v1/revoke", json!({ "reason": "superseded" })).with_cert(&victim), Problem(403, "forbidden")),
        // Admin routes.
        case("admin/revoke-without-cert", Req::json("/v1/admin/revoke", json!({ "serial": web.serial })), Problem(401, "client-certificate-required")),
        case("admin/revoke-not-admin", Req::json("/v1/admin/revoke", json!({ "serial": web.serial })).with_cert(&holder), Problem(403, "forbidden")),
        case("admin/revoke-revoked-admin", Req::json("/v1/admin/revoke", json!({ "serial": web.serial })).with_cert(&victim), Problem(403, "forbidden")),
        case("admin/certs-not-admin", Req::get("/v1/admin/certs").with_cert(&holder), Problem(403, "forbidden")),
        case("admin/other-route-not-admin", Req::get("/v1/admin/anything").with_cert(&holder), Problem(403, "forbidden")),
        case("admin/other-route-admin", Req::get("/v1/admin/anything").with_cert(&admin), Problem(404, "not-found")),
        case("admin/revoke-unknown-serial", admin_revoke(json!({ "serial": "0123456789abcdef0123456789abcdef" })), Problem(404, "not-found")),
        case("admin/revoke-twice", admin_revoke(json!({ "serial": gone.serial, "reason": "superseded" })), Problem(409, "conflict")),
        case("admin/revoke-bad-hex", admin_revoke(json!({ "serial": "zz:zz" })), Problem(400, "bad-request")),
        case("admin/revoke-zero-serial", admin_revoke(json!({ "serial": "00" })), Problem(400, "bad-request")),
        case("admin/revoke-serial-too-long", admin_revoke(json!({ "serial": "ab".repeat(21) })), Problem(400, "bad-request")),
        case("admin/revoke-bad-reason", admin_revoke(json!({ "serial": web.serial, "reason": "because" })), Problem(400, "bad-request")),
        case("admin/revoke-serial-and-identity", admin_revoke(json!({ "serial": web.serial, "env": "dev", "service": "web" })), Problem(400, "bad-request")),
        case("admin/revoke-env-only", admin_revoke(json!({ "env": "dev" })), Problem(400, "bad-request")),
        case("admin/revoke-unknown-identity", admin_revoke(json!({ "env": "qa", "service": "api" })), Problem(404, "not-found")),
        case("admin/revoke-malformed-json", Req::post("/v1/admin/revoke", "{serial}").with_cert(&admin), Problem(400, "malformed-json")),
        case("admin/certs-bad-status", Req::get("/v1/admin/certs?status=weird").with_cert(&admin), Problem(400, "bad-request")),
        case("admin/certs-unknown-parameter", Req::get("/v1/admin/certs?owner=me").with_cert(&admin), Problem(400, "bad-request")),
        case("admin/certs-limit-not-a-number", Req::get("/v1/admin/certs?limit=all").with_cert(&admin), Problem(400, "bad-request")),
        // OCSP: errors are OCSP responses (malformedRequest 1, unauthorized 6).
        case("ocsp/garbage", Req::post("/ocsp", "garbage").ct("application/ocsp-request"), Ocsp(1)),
        case("ocsp/empty", Req::post("/ocsp", "").ct("application/ocsp-request"), Ocsp(1)),
        case("ocsp/wrong-content-type", Req::post("/ocsp", "garbage").ct("text/plain"), Ocsp(1)),
        case("ocsp/truncated-request", Req::post("/ocsp", foreign_req[..foreign_req.len() / 2].to_vec()).ct("application/ocsp-request"), Ocsp(1)),
        case("ocsp/unknown-issuer", Req::post("/ocsp", foreign_req.clone()).ct("application/ocsp-request"), Ocsp(6)),
        case("ocsp/get-not-base64", Req::get("/ocsp/!!not-base64!!"), Ocsp(1)),
        case("ocsp/get-not-utf8", Req::get("/ocsp/%ff%fe"), Ocsp(1)),
        case("ocsp/get-base64-garbage", Req::get(&format!("/ocsp/{}", base64_of(b"garbage"))), Ocsp(1)),
        case("ocsp/over-64KiB", Req::post("/ocsp", vec![0x30; 70 * 1024]).ct("application/ocsp-request"), Problem(413, "payload-too-large")),
        case("ocsp/plain-http-garbage", Req::post("/ocsp", "garbage").ct("application/ocsp-request").plain(), Ocsp(1)),
        case("ocsp/plain-http-unknown-issuer", Req::post("/ocsp", foreign_req.clone()).ct("application/ocsp-request").plain(), Ocsp(6)),
        case("ocsp/plain-http-over-64KiB", Req::post("/ocsp", vec![0x30; 70 * 1024]).ct("application/ocsp-request").plain(), Problem(413, "payload-too-large")),
        // CRLs and paths.
        case("crl/unknown-env", Req::get("/crl/qa.crl"), Problem(404, "not-found")),
        case("crl/tls-issuer", Req::get("/crl/_tls.crl"), Problem(404, "not-found")),
        case("crl/no-suffix", Req::get("/crl/dev"), Problem(404, "not-found")),
        case("crl/other-suffix", Req::get("/crl/dev.txt"), Problem(404, "not-found")),
        case("crl/traversal-encoded", Req::get("/crl/..%2f..%2fetc%2fpasswd"), Problem(404, "not-found")),
        case("crl/traversal-encoded-suffix", Req::get("/crl/..%2f..%2fetc%2fpasswd.crl"), Problem(404, "not-found")),
        case("crl/traversal-double-encoded", Req::get("/crl/%252e%252e%252fetc%252fpasswd.pem"), Problem(404, "not-found")),
        case("crl/traversal-raw", Req::get("/crl/../../etc/passwd").arg("--path-as-is"), Problem(404, "not-found")),
        case("crl/traversal-backslash", Req::get("/crl/..%5c..%5cca.db.crl"), Problem(404, "not-found")),
        case("crl/nul-byte", Req::get("/crl/dev%00.crl"), Problem(404, "not-found")),
        case("crl/not-utf8", Req::get("/crl/%ff%fe.crl"), Problem(404, "not-found")),
        case("crl/plain-http-unknown-env", Req::get("/crl/qa.pem").plain(), Problem(404, "not-found")),
        // Routes and methods.
        case("http/unknown-route", Req::get("/v1/nothing"), Problem(404, "not-found")),
        case("http/unknown-route-plain-http", Req::get("/v1/roots").plain(), Problem(404, "not-found")),
        case("http/enroll-over-plain-http", enroll(json!({})).plain(), Problem(404, "not-found")),
        case("http/get-enroll", Req::get("/v1/enroll"), Problem(405, "method-not-allowed")),
        case("http/delete-healthz", Req::get("/healthz").method("DELETE"), Problem(405, "method-not-allowed")),
        case("http/put-crl", Req::get("/crl/dev.crl").method("PUT"), Problem(405, "method-not-allowed")),
        case("http/post-roots", Req::get("/v1/roots").method("POST"), Problem(405, "method-not-allowed")),
        case("http/get-ocsp-root", Req::get("/ocsp"), Problem(405, "method-not-allowed")),
        case("http/plain-http-delete-crl", Req::get("/crl/dev.crl").method("DELETE").plain(), Problem(405, "method-not-allowed")),
        case("http/bundle-unknown-env", Req::get("/v1/bundle?env=qa"), Problem(404, "not-found")),
        case("http/bundle-no-env", Req::get("/v1/bundle"), Problem(400, "bad-request")),
        case("http/bundle-unknown-parameter", Req::get("/v1/bundle?env=dev&x=1"), Problem(400, "bad-request")),
    ];
    let mut report = Report::default();
    t.run(cases, &mut report);

    // Unknown id and wrong secret look the same from outside.
    let unknown = t.send(&enroll_token(&format!(
        "{}.{}",
        "0123456789abcdef",
        "ab".repeat(32)
    )));
    let wrong = t.send(&enroll_token(&format!("{token_id}.{}", "ab".repeat(32))));
    report.check(
        "token/unknown-id-and-wrong-secret-are-alike",
        if unknown.body == wrong.body {
            Ok(())
        } else {
            Err(format!("{} vs {}", unknown.body, wrong.body))
        },
    );
    report.finish("API", 100);

    // Still serving, and the main token was never spent: it enrolls now.
    t.healthy();
    let before = Ledger::of(ca);
    assert_eq!(before.tokens.get(token_id), Some(&(0, false)));
    t.enrolls(&token, &good_csr);
    assert_eq!(Ledger::of(ca).tokens.get(token_id), Some(&(1, false)));
    t.log_is_clean();
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An openssl config with a `dir_sect` section, for a directoryName SAN.
fn dirname_config(ca: &TestCa) -> String {
    let path = ca.path("dirname.cnf");
    std::fs::write(
        &path,
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = ignored\n\
         [dir_sect]\nCN = someone else\n",
    )
    .expect("write config");
    s(&path).to_string()
}

/// Sleeps until `at` (bounded: the callers wait a few seconds at most).
fn wait_until(at: OffsetDateTime) {
    let limit = Instant::now() + Duration::from_secs(30);
    while OffsetDateTime::now_utc() < at {
        assert!(Instant::now() < limit, "waited 30s for {at}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Transport abuse, with an in-process TLS client (rustls) where curl cannot do it.

/// Presents a fixed chain and key. rustls does not check that they belong together, so a
/// client can present a certificate whose key it does not hold: the server judges the chain
/// before it looks at any signature.
#[derive(Debug)]
struct Present(Arc<CertifiedKey>);

impl ResolvesClientCert for Present {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn pem_certs(text: &[u8]) -> Vec<CertificateDer<'static>> {
    pem::parse_many(text)
        .expect("pem")
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect()
}

fn private_key(path: &Path) -> PrivateKeyDer<'static> {
    let p = pem::parse(std::fs::read(path).expect("key")).expect("key pem");
    match p.tag() {
        "PRIVATE KEY" => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(p.into_contents())),
        "EC PRIVATE KEY" => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(p.into_contents())),
        other => panic!("{}: unexpected PEM {other}", path.display()),
    }
}

fn presenting(chain: Vec<CertificateDer<'static>>, key: &Path) -> Arc<CertifiedKey> {
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&private_key(key)).expect("signing key");
    Arc::new(CertifiedKey::new(chain, signer))
}

fn tls_config(root: &Path, client: Option<Arc<CertifiedKey>>, alpn: &[u8]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in pem_certs(&std::fs::read(root).expect("root")) {
        roots.add(c).expect("anchor");
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
    let mut cfg = match client {
        Some(k) => builder.with_client_cert_resolver(Arc::new(Present(k))),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(cfg)
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

fn tcp(port: u16, read_timeout: Duration) -> std::io::Result<TcpStream> {
    let sock = TcpStream::connect(("127.0.0.1", port))?;
    sock.set_read_timeout(Some(read_timeout))?;
    sock.set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(sock)
}

/// Connects and completes the client's side of the handshake.
fn tls_connect(port: u16, cfg: &Arc<ClientConfig>, read_timeout: Duration) -> std::io::Result<Tls> {
    let name =
        rustls_pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    let conn = ClientConnection::new(cfg.clone(), name).map_err(std::io::Error::other)?;
    let mut tls = StreamOwned::new(conn, tcp(port, read_timeout)?);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// How a connection ended, as seen by the client.
#[derive(Debug)]
enum End {
    /// Closed by the server, after these bytes.
    Closed(Vec<u8>),
    /// The server sent this TLS alert.
    Alert(AlertDescription),
    /// Still open when the read timed out, after these bytes.
    Open(Vec<u8>),
    Failed(String),
}

fn end_of(e: &std::io::Error, data: Vec<u8>) -> End {
    use std::io::ErrorKind as K;
    if let Some(rustls::Error::AlertReceived(a)) =
        e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
    {
        return End::Alert(*a);
    }
    match e.kind() {
        K::WouldBlock | K::TimedOut => End::Open(data),
        K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
            End::Closed(data)
        }
        _ => End::Failed(e.to_string()),
    }
}

/// Reads until the connection ends or the read times out.
fn ending(r: &mut impl Read) -> End {
    let mut data = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return End::Closed(data),
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) => return end_of(&e, data),
        }
    }
}

/// Connects with `cfg`, which presents a client certificate, and returns the server's verdict.
fn handshake_verdict(port: u16, cfg: &Arc<ClientConfig>) -> End {
    match tls_connect(port, cfg, Duration::from_secs(10)) {
        Err(e) => end_of(&e, Vec::new()),
        // TLS 1.3: the client's side is done before the server has judged its certificate; the
        // verdict is the first thing to read. Nothing is written, so nothing unread makes the
        // server's close a reset that could swallow the alert.
        Ok(mut tls) => ending(&mut tls),
    }
}

fn expect_alert(end: End, want: AlertDescription) -> Result<(), String> {
    match end {
        End::Alert(a) if a == want => Ok(()),
        End::Failed(e) => Err(format!(
            "want the alert {want:?}, the connection failed: {e}"
        )),
        other => Err(format!("want the alert {want:?}, got {other:?}")),
    }
}

/// Sends a request head cut off half way, then waits (bounded) for the server to close.
fn slow_headers(mut stream: impl Read + Write) -> Result<(), String> {
    stream
        .write_all(b"GET /hea")
        .and_then(|()| stream.flush())
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    match ending(&mut stream) {
        End::Closed(data) if data.is_empty() || data.starts_with(b"HTTP/1.1 408") => Ok(()),
        other => Err(format!(
            "half a request line: {other:?} after {:?}",
            start.elapsed()
        )),
    }
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("frame size")
        .to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const H2_HEADERS: u8 = 0x1;
const H2_RST_STREAM: u8 = 0x3;
const H2_SETTINGS: u8 = 0x4;
const H2_GOAWAY: u8 = 0x7;
const H2_CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// HPACK for GET https://localhost/healthz (indexed :method and :scheme, literal :path and
/// :authority with indexed names).
fn h2_get_healthz() -> Vec<u8> {
    let mut b = vec![0x82, 0x87, 0x04, 8];
    b.extend_from_slice(b"/healthz");
    b.extend_from_slice(&[0x01, 9]);
    b.extend_from_slice(b"localhost");
    b
}

/// Writes `frames` after the preface (the server may close half way), then reads frames until
/// a GOAWAY (`Some` of its error code) or the end of the connection (`None`: a server closing
/// under a client still sending may reset the connection, and the GOAWAY with it).
fn h2_attack(port: u16, root: &Path, frames: &[u8]) -> Result<Option<u32>, String> {
    let cfg = tls_config(root, None, b"h2");
    let mut tls = tls_connect(port, &cfg, Duration::from_secs(30)).map_err(|e| e.to_string())?;
    if tls.conn.alpn_protocol() != Some(b"h2") {
        return Err("the server did not choose h2".into());
    }
    let mut out = H2_PREFACE.to_vec();
    out.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
    out.extend_from_slice(frames);
    // A server that hangs up mid-flood makes this fail; the reading below tells why.
    let _ = tls.write_all(&out).and_then(|()| tls.flush());
    let mut data = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let mut at = 0;
        while data.len() >= at + 9 {
            let len = usize::from(data[at]) << 16
                | usize::from(data[at + 1]) << 8
                | usize::from(data[at + 2]);
            if data.len() < at + 9 + len {
                break;
            }
            if data[at + 3] == H2_GOAWAY && len >= 8 {
                let p = &data[at + 9..at + 17];
                return Ok(Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]])));
            }
            at += 9 + len;
        }
        match tls.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) => {
                return match end_of(&e, Vec::new()) {
                    End::Closed(_) => Ok(None),
                    other => Err(format!("not cut off: {other:?}")),
                };
            }
        }
    }
}

impl Target {
    /// Runs one case that does its own checking, and checks the ledger around it.
    fn case(&self, report: &mut Report, name: &str, f: impl FnOnce() -> Result<(), String>) {
        let before = Ledger::of(&self.ca);
        let mut result = f();
        let after = Ledger::of(&self.ca);
        if result.is_ok() && after != before {
            result = Err(format!("stored or spent: {}", before.diff(&after)));
        }
        report.check(name, result);
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url)
    }
}

fn status_in(r: &Http, allowed: &[u16]) -> Result<(), String> {
    if allowed.contains(&r.status) {
        Ok(())
    } else {
        Err(format!(
            "want one of {allowed:?}, got {}: {} {}",
            r.status,
            r.body.chars().take(200).collect::<String>(),
            r.curl_err.trim()
        ))
    }
}

#[test]
fn transport_abuse_is_cut_off_and_the_server_keeps_serving() {
    let t = Target::start(TestCa::init_insecure());
    let ca = &t.ca;
    let port = t.server.port;
    let http_port: u16 = t
        .server
        .http_url
        .as_deref()
        .and_then(|u| u.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("http port");
    let anonymous = tls_config(&t.root, None, b"http/1.1");
    let mut report = Report::default();

    // Slow clients first, in the background: everything below runs while they stall.
    let slow_https = {
        let cfg = anonymous.clone();
        std::thread::spawn(move || {
            let tls =
                tls_connect(port, &cfg, Duration::from_secs(30)).map_err(|e| e.to_string())?;
            slow_headers(tls)
        })
    };
    let slow_http = std::thread::spawn(move || {
        slow_headers(tcp(http_port, Duration::from_secs(30)).map_err(|e| e.to_string())?)
    });
    let silent = std::thread::spawn(move || {
        // TCP open, no ClientHello: the server gives up on the handshake.
        match ending(&mut tcp(port, Duration::from_secs(30)).map_err(|e| e.to_string())?) {
            End::Closed(data) if data.is_empty() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let idle_tls = {
        let cfg = anonymous.clone();
        std::thread::spawn(move || {
            // TLS completed, then nothing: closed once the first-request deadline passes.
            let mut tls =
                tls_connect(port, &cfg, Duration::from_secs(30)).map_err(|e| e.to_string())?;
            match ending(&mut tls) {
                End::Closed(data) if data.is_empty() => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
    };
    let mut stalled = tls_connect(port, &anonymous, Duration::from_millis(200)).expect("connect");
    stalled
        .write_all(
            b"POST /v1/enroll HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
              content-length: 1000\r\n\r\n{\"token\": \"",
        )
        .and_then(|()| stalled.flush())
        .expect("write a stalled body");

    // Client certificates the TLS layer must refuse, and one it must let through to be refused
    // by the request.
    let expired = t.issue("expired", "dev", "api", &["--ttl", "1s"]);
    let revoked = t.issue("revoked", "dev", "api", &[]);
    ca.server(&["revoke", &revoked.serial, "--yes"])
        .expect_code(0);
    let foreign = TestCa::init_insecure();
    let foreign_out = foreign.path("leaf");
    foreign
        .issue("dev", "api", &[API_DEV], &foreign_out, &[])
        .expect_code(0);
    let stranger = TestCa::new();
    let stranger_policy = stranger.path("policy.toml");
    std::fs::write(
        &stranger_policy,
        std::fs::read_to_string(support::example_policy())
            .expect("policy")
            .replace("example.internal", "elsewhere.internal"),
    )
    .expect("write policy");
    stranger
        .server(&[
            "init",
            "--policy",
            s(&stranger_policy),
            "--insecure-no-passphrase",
        ])
        .expect_code(0);
    let stranger_out = stranger.path("leaf");
    stranger
        .issue("dev", "api", &[], &stranger_out, &[])
        .expect_code(0);
    let server_chain: Vec<CertificateDer<'static>> = {
        let tls = tls_connect(port, &anonymous, Duration::from_secs(10)).expect("connect");
        tls.conn
            .peer_certificates()
            .expect("server chain")
            .iter()
            .map(|c| c.clone().into_owned())
            .collect()
    };
    assert!(server_chain.len() >= 2, "the server sends its intermediate");
    let stranger_key = ca.path("stranger.key");
    openssl([
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        s(&stranger_key),
    ])
    .expect_code(0);
    let big_header = ca.path("big-header.txt");
    std::fs::write(&big_header, format!("x-big: {}\n", "a".repeat(100 * 1024))).expect("write");
    let many_headers = ca.path("many-headers.txt");
    std::fs::write(
        &many_headers,
        (0..150).map(|i| format!("x-h{i}: v\n")).collect::<String>(),
    )
    .expect("write");
    let baseline = Ledger::of(ca);
    wait_until(expired.not_after + Duration::from_secs(2));

    t.case(&mut report, "tls/expired-client-cert", || {
        let cfg = tls_config(
            &t.root,
            Some(presenting(
                pem_certs(&std::fs::read(&expired.chain).expect("chain")),
                &expired.key,
            )),
            b"http/1.1",
        );
        expect_alert(
            handshake_verdict(port, &cfg),
            AlertDescription::CertificateExpired,
        )
    });
    t.case(&mut report, "tls/foreign-ca-client-cert", || {
        let chain = pem_certs(&std::fs::read(stranger_out.join("chain.pem")).expect("chain"));
        let cfg = tls_config(
            &t.root,
            Some(presenting(chain, &stranger_out.join("key.pem"))),
            b"http/1.1",
        );
        expect_alert(handshake_verdict(port, &cfg), AlertDescription::UnknownCA)
    });
    t.case(
        &mut report,
        "tls/foreign-ca-with-our-names-client-cert",
        || {
            // Another CA made from the same policy: its issuer names are ours, so the chain is
            // built to our anchors and fails on their signatures.
            let chain = pem_certs(&std::fs::read(foreign_out.join("chain.pem")).expect("chain"));
            let cfg = tls_config(
                &t.root,
                Some(presenting(chain, &foreign_out.join("key.pem"))),
                b"http/1.1",
            );
            expect_alert(
                handshake_verdict(port, &cfg),
                AlertDescription::DecryptError,
            )
        },
    );
    t.case(&mut report, "tls/server-cert-as-client-wrong-eku", || {
        // The server's own chain leads to the root, but its leaf is for serverAuth only.
        let cfg = tls_config(
            &t.root,
            Some(presenting(server_chain.clone(), &stranger_key)),
            b"http/1.1",
        );
        expect_alert(
            handshake_verdict(port, &cfg),
            AlertDescription::UnsupportedCertificate,
        )
    });
    t.case(&mut report, "tls/server-leaf-alone-as-client", || {
        // Without its intermediate it would lead nowhere (the TLS issuer is no client anchor),
        // but its purpose is judged first.
        let cfg = tls_config(
            &t.root,
            Some(presenting(server_chain[..1].to_vec(), &stranger_key)),
            b"http/1.1",
        );
        expect_alert(
            handshake_verdict(port, &cfg),
            AlertDescription::UnsupportedCertificate,
        )
    });
    t.case(&mut report, "tls/key-does-not-match-cert", || {
        let chain = pem_certs(&std::fs::read(&revoked.chain).expect("chain"));
        let cfg = tls_config(&t.root, Some(presenting(chain, &stranger_key)), b"http/1.1");
        expect_alert(
            handshake_verdict(port, &cfg),
            AlertDescription::DecryptError,
        )
    });
    t.case(
        &mut report,
        "tls/revoked-client-cert-refused-per-request",
        || {
            let r = t.send(&Req::json("/v1/renew", json!({ "csr": "x" })).with_cert(&revoked));
            Problem(403, "forbidden").check(&r)
        },
    );
    t.case(&mut report, "tls/garbage-instead-of-client-hello", || {
        let mut sock = tcp(port, Duration::from_secs(20)).map_err(|e| e.to_string())?;
        let junk: Vec<u8> = (0..2048u32)
            .map(|i| (i.wrapping_mul(37) % 251) as u8)
            .collect();
        let _ = sock.write_all(&junk);
        match ending(&mut sock) {
            End::Closed(data) if !data.starts_with(b"HTTP/") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    t.case(&mut report, "tls/plain-http-on-the-https-port", || {
        let mut sock = tcp(port, Duration::from_secs(20)).map_err(|e| e.to_string())?;
        let _ = sock.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n");
        match ending(&mut sock) {
            End::Closed(data) if !data.starts_with(b"HTTP/") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    t.case(&mut report, "http1/header-of-100KiB", || {
        // 431, or the connection closed under a client still sending.
        let r = curl(&[
            "--http1.1",
            "--cacert",
            s(&t.root),
            "-H",
            &format!("@{}", s(&big_header)),
            &t.url("/healthz"),
        ]);
        status_in(&r, &[431, 0])
    });
    t.case(&mut report, "http1/150-headers", || {
        let r = curl(&[
            "--http1.1",
            "--cacert",
            s(&t.root),
            "-H",
            &format!("@{}", s(&many_headers)),
            &t.url("/healthz"),
        ]);
        status_in(&r, &[431])
    });
    t.case(&mut report, "http2/header-of-100KiB", || {
        // Over the 16 KiB header list limit: the stream is refused.
        let r = curl(&[
            "--http2",
            "--cacert",
            s(&t.root),
            "-H",
            &format!("@{}", s(&big_header)),
            &t.url("/healthz"),
        ]);
        status_in(&r, &[431, 0])
    });
    t.case(&mut report, "http2/300-streams-on-one-connection", || {
        let mut c = Command::new("curl");
        c.args(["-sS", "--http2", "--parallel", "--parallel-max", "100"])
            .args(["--max-time", "30", "--cacert", s(&t.root)])
            .args(["-w", "%{http_code} %{http_version} %{num_connects}\n"]);
        for i in 0..300 {
            c.args(["-o", "/dev/null", &t.url(&format!("/healthz?n={i}"))]);
        }
        let run = run_bounded(c, Duration::from_secs(60));
        let lines: Vec<&str> = run.stdout.lines().collect();
        let ok = lines.iter().filter(|l| l.starts_with("200 2 ")).count();
        let connects: usize = lines
            .iter()
            .filter_map(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
            .sum();
        if ok == 300 && connects <= 2 {
            Ok(())
        } else {
            Err(format!(
                "{ok}/300 answered 200 over h2, {connects} connections: {}",
                run.stderr
            ))
        }
    });
    t.case(&mut report, "http2/rapid-reset-flood", || {
        // CVE-2023-44487: open and cancel streams as fast as possible.
        let mut frames = Vec::new();
        for i in 0..2000u32 {
            let id = 2 * i + 1;
            frames.extend(h2_frame(
                H2_HEADERS,
                END_STREAM | END_HEADERS,
                id,
                &h2_get_healthz(),
            ));
            frames.extend(h2_frame(H2_RST_STREAM, 0, id, &8u32.to_be_bytes()));
        }
        match h2_attack(port, &t.root, &frames)? {
            // ENHANCE_YOUR_CALM.
            Some(11) | None => Ok(()),
            Some(code) => Err(format!("GOAWAY with error code {code}")),
        }
    });
    t.case(&mut report, "http2/continuation-flood", || {
        // CVE-2024-27316: a header block that never ends.
        let mut frames = h2_frame(H2_HEADERS, END_STREAM, 1, &h2_get_healthz());
        let mut chunk = Vec::new();
        for i in 0..10 {
            let name = format!("x-flood-{i}");
            chunk.push(0x00);
            chunk.push(u8::try_from(name.len()).expect("short"));
            chunk.extend_from_slice(name.as_bytes());
            chunk.push(100);
            chunk.extend_from_slice(&[b'a'; 100]);
        }
        for _ in 0..2000 {
            frames.extend(h2_frame(H2_CONTINUATION, 0, 1, &chunk));
        }
        h2_attack(port, &t.root, &frames).map(|_| ())
    });
    t.case(&mut report, "tcp/300-idle-tls-connections", || {
        let mut idle = Vec::new();
        for _ in 0..300 {
            idle.push(
                tls_connect(port, &anonymous, Duration::from_secs(10))
                    .map_err(|e| e.to_string())?,
            );
        }
        let r = curl(&["--cacert", s(&t.root), &t.url("/healthz")]);
        status_in(&r, &[200])?;
        let roots = curl(&["--cacert", s(&t.root), &t.url("/v1/roots")]);
        status_in(&roots, &[200])
    });
    t.case(
        &mut report,
        "http1/stalled-body-answers-nothing",
        || match ending(&mut stalled) {
            End::Open(data) | End::Closed(data) if !data.starts_with(b"HTTP/1.1 2") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    for (name, handle) in [
        ("http1/slow-headers-https", slow_https),
        ("http1/slow-headers-plain-http", slow_http),
        ("tls/silent-client", silent),
        ("tls/idle-after-handshake-is-closed", idle_tls),
    ] {
        t.case(&mut report, name, || {
            handle.join().unwrap_or_else(|_| Err("panicked".into()))
        });
    }
    drop(stalled);
    report.finish("transport", 18);

    assert_eq!(
        Ledger::of(ca),
        baseline,
        "transport abuse changed the store"
    );
    t.healthy();
    let token = t.token("dev", "api", &[]);
    t.enrolls(&token, &openssl_csr(ca, "after", P256, &[]));
    t.log_is_clean();
}

// ---------------------------------------------------------------------------------------------
// The CLI.

/// Which passphrase a CLI case runs with.
#[derive(Clone, Copy)]
enum Pass {
    Right,
    Wrong,
    Missing,
}

struct CliCase {
    name: &'static str,
    args: Vec<String>,
    pass: Pass,
    code: i32,
    stderr: &'static str,
    /// A path the command must not create.
    absent: Option<PathBuf>,
}

fn cli(name: &'static str, args: &[impl AsRef<str>], code: i32, stderr: &'static str) -> CliCase {
    CliCase {
        name,
        args: args.iter().map(|a| a.as_ref().to_string()).collect(),
        pass: Pass::Right,
        code,
        stderr,
        absent: None,
    }
}

impl CliCase {
    fn pass(mut self, p: Pass) -> CliCase {
        self.pass = p;
        self
    }

    fn absent(mut self, p: &Path) -> CliCase {
        self.absent = Some(p.to_path_buf());
        self
    }
}

const WRONG_PASSPHRASE: &str = "not the passphrase, though long enough 91d";

fn run_cli(ca: &TestCa, c: &CliCase) -> Run {
    match c.pass {
        Pass::Right => {
            let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
            ca.server(&args)
        }
        Pass::Wrong | Pass::Missing => {
            let mut cmd = Command::new(server_bin());
            cmd.args(&c.args).arg("--data-dir").arg(&ca.data);
            if matches!(c.pass, Pass::Wrong) {
                let pf = ca.path("wrong-passphrase");
                std::fs::write(&pf, format!("{WRONG_PASSPHRASE}\n")).expect("write");
                cmd.arg("--passphrase-file").arg(pf);
            }
            support::clear_ca_env(&mut cmd);
            run_bounded(cmd, Duration::from_secs(60))
        }
    }
}

#[test]
fn every_cli_refusal_exits_with_its_code_and_changes_nothing() {
    let ca = TestCa::init_sealed(PASSPHRASE);
    let issue_json = |name: &str, env: &str, service: &str| {
        json_of(&ca.issue(env, service, &[], &ca.path(name), &["--json"]))["serial"]
            .as_str()
            .expect("serial")
            .to_string()
    };
    let live = issue_json("live", "dev", "web");
    let gone = issue_json("gone", "dev", "api");
    ca.server(&["revoke", &gone, "--yes"]).expect_code(0);
    let garbage_csr = ca.path("garbage.csr");
    std::fs::write(&garbage_csr, "not a CSR\n").expect("write");
    let rsa_csr = ca.path("rsa1024.csr");
    std::fs::write(
        &rsa_csr,
        openssl_csr(&ca, "rsa1024", &["-newkey", "rsa:1024"], &[]),
    )
    .expect("write");
    let ca_csr = ca.path("ca-true.csr");
    std::fs::write(
        &ca_csr,
        openssl_csr(
            &ca,
            "ca-true",
            P256,
            &["-addext", "basicConstraints=critical,CA:TRUE"],
        ),
    )
    .expect("write");
    let web_csr = ca.path("web-name.csr");
    std::fs::write(
        &web_csr,
        openssl_csr(
            &ca,
            "web-name",
            P256,
            &["-addext", &format!("subjectAltName=DNS:{WEB_DEV}")],
        ),
    )
    .expect("write");
    let a_file = ca.path("a-file");
    std::fs::write(&a_file, "x").expect("write");
    let out = ca.path("out");
    let o = s(&out);
    let under_file = a_file.join("out");
    let read_only = Path::new("/proc/ca-hostile-out");

    let issue = |extra: &[&str]| -> Vec<String> {
        ["issue", "--env", "dev", "--service", "api", "--out", o]
            .iter()
            .chain(extra)
            .map(|a| a.to_string())
            .collect()
    };
    #[rustfmt::skip]
    let cases = vec![
        cli("issue/dns-outside-env", &issue(&["--dns", API_PROD]), 3, "environments.dev.dns_suffixes").absent(&out),
        cli("issue/dns-of-other-service", &issue(&["--dns", WEB_DEV]), 3, "denied by policy").absent(&out),
        cli("issue/wildcard", &issue(&["--dns", "*.dev.svc.example.internal"]), 3, "services.api.wildcards").absent(&out),
        cli("issue/ip-san", &issue(&["--ip", "10.0.0.1"]), 3, "services.api.ip_sans").absent(&out),
        cli("issue/ttl-above-max", &issue(&["--ttl", "13h"]), 3, "services.api.max_ttl").absent(&out),
        cli("issue/ttl-malformed", &issue(&["--ttl", "soon"]), 2, "invalid duration").absent(&out),
        cli("issue/ttl-zero", &issue(&["--ttl", "0s"]), 2, "greater than zero").absent(&out),
        cli("issue/missing-env", &["issue", "--service", "api", "--out", o], 2, "--env").absent(&out),
        cli("issue/unknown-env", &["issue", "--env", "qa", "--service", "api", "--out", o], 3, "unknown environment").absent(&out),
        cli("issue/unknown-service", &["issue", "--env", "dev", "--service", "nosuch", "--out", o], 3, "unknown service").absent(&out),
        cli("issue/service-not-in-env", &["issue", "--env", "dev", "--service", "ops", "--out", o], 3, "denied by policy").absent(&out),
        cli("issue/key-type-not-allowed", &["issue", "--env", "prod", "--service", "ops", "--key-type", "p384", "--out", o], 3, "key_types").absent(&out),
        cli("issue/key-type-unknown", &issue(&["--key-type", "dsa"]), 2, "unknown key type").absent(&out),
        cli("issue/csr-missing", &issue(&["--csr", "/nonexistent/x.csr"]), 2, "cannot read CSR").absent(&out),
        cli("issue/csr-is-a-directory", &issue(&["--csr", s(ca.tmp.path())]), 2, "cannot read CSR").absent(&out),
        cli("issue/csr-garbage", &issue(&["--csr", s(&garbage_csr)]), 2, "not PEM").absent(&out),
        cli("issue/csr-rsa-1024", &issue(&["--csr", s(&rsa_csr)]), 2, "too weak").absent(&out),
        cli("issue/csr-ca-true", &issue(&["--csr", s(&ca_csr)]), 2, "CSR").absent(&out),
        cli("issue/csr-names-differ", &issue(&["--csr", s(&web_csr), "--dns", API_DEV]), 2, "CSR requests").absent(&out),
        cli("issue/out-under-a-file", &["issue", "--env", "dev", "--service", "api", "--out", s(&under_file)], 2, "cannot write to output directory").absent(&under_file),
        cli("issue/out-is-a-file", &["issue", "--env", "dev", "--service", "api", "--out", s(&a_file)], 2, "not a directory"),
        cli("issue/out-read-only", &["issue", "--env", "dev", "--service", "api", "--out", s(read_only)], 2, "cannot write to output directory").absent(read_only),
        cli("issue/wrong-passphrase", &issue(&[]), 4, "wrong passphrase").pass(Pass::Wrong).absent(&out),
        cli("issue/no-passphrase", &issue(&[]), 4, "encrypted").pass(Pass::Missing).absent(&out),
        cli("token-create/uses-above-max", &["token", "create", "--env", "ci", "--service", "api", "--uses", "5000"], 3, "roles.ci_tokens.max_uses"),
        cli("token-create/multi-use-outside-ci", &["token", "create", "--env", "dev", "--service", "api", "--uses", "2"], 3, "ci = true"),
        cli("token-create/ttl-above-ci-max", &["token", "create", "--env", "ci", "--service", "api", "--uses", "2", "--ttl", "48h"], 3, "roles.ci_tokens.max_ttl"),
        cli("token-create/zero-uses", &["token", "create", "--env", "dev", "--service", "api", "--uses", "0"], 2, "at least one use"),
        cli("token-create/negative-uses", &["token", "create", "--env", "dev", "--service", "api", "--uses", "-1"], 2, "'-1'"),
        cli("token-create/ttl-malformed", &["token", "create", "--env", "dev", "--service", "api", "--ttl", "1x"], 2, "invalid duration"),
        cli("token-create/unknown-service", &["token", "create", "--env", "dev", "--service", "nosuch"], 5, "unknown service"),
        cli("token-create/unknown-env", &["token", "create", "--env", "qa", "--service", "api"], 5, "qa"),
        cli("token-revoke/unknown-id", &["token", "revoke", "0123456789abcdef"], 5, "no token"),
        cli("revoke/unknown-serial", &["revoke", "0123456789abcdef0123456789abcdef", "--yes"], 5, "no certificate with serial"),
        cli("revoke/bad-hex", &["revoke", "zz:zz", "--yes"], 2, "hex digits"),
        cli("revoke/bad-reason", &["revoke", &live, "--reason", "bored", "--yes"], 2, "unknown revocation reason"),
        cli("revoke/twice", &["revoke", &gone, "--yes"], 6, "already revoked"),
        cli("revoke/wrong-passphrase", &["revoke", &live, "--yes"], 4, "wrong passphrase").pass(Pass::Wrong),
        cli("revoke/no-passphrase", &["revoke", &live, "--yes"], 4, "encrypted").pass(Pass::Missing),
        cli("revoke/identity-unconfirmed", &["revoke", "--env", "dev", "--service", "web"], 2, "--yes"),
        cli("revoke/unknown-identity", &["revoke", "--env", "dev", "--service", "nosuch", "--yes"], 5, "no live certificates"),
        cli("revoke/serial-and-identity", &["revoke", &live, "--env", "dev", "--service", "web", "--yes"], 2, "cannot be used with"),
        cli("crl/unknown-env", &["crl", "--env", "qa", "--out", o], 5, "qa").absent(&out),
        cli("acme-eab/environment-without-acme", &["acme", "eab", "create", "--env", "prod", "--service", "api"], 2, "no ACME directory"),
        cli("acme-eab/unknown-env", &["acme", "eab", "create", "--env", "qa", "--service", "web"], 5, "not in the policy"),
        cli("acme-eab/unknown-service", &["acme", "eab", "create", "--env", "staging", "--service", "nosuch"], 5, "no service"),
        cli("acme-eab/service-not-in-env", &["acme", "eab", "create", "--env", "staging", "--service", "ops"], 5, "no service"),
        cli("acme-eab/ttl-above-limit", &["acme", "eab", "create", "--env", "staging", "--service", "web", "--ttl", "8d"], 3, "limit for external account binding keys"),
        cli("acme-eab/ttl-malformed", &["acme", "eab", "create", "--env", "staging", "--service", "web", "--ttl", "1x"], 2, "invalid duration"),
        cli("acme-eab/wrong-passphrase", &["acme", "eab", "create", "--env", "staging", "--service", "web"], 4, "wrong passphrase").pass(Pass::Wrong),
        cli("acme-accounts/deactivate-unknown", &["acme", "accounts", "deactivate", "nosuch"], 5, "no ACME account"),
        cli("ca-rotate/unknown-env", &["ca", "rotate", "--env", "qa"], 5, "not in the policy"),
        cli("ca-rotate/nothing-named", &["ca", "rotate"], 2, "--env"),
        cli("ca-rotate/env-and-root", &["ca", "rotate", "--env", "dev", "--root"], 2, "cannot be used with"),
        cli("ca-rotate/root-compromised", &["ca", "rotate", "--root", "--compromised"], 2, "cannot be used with"),
        cli("ca-rotate/overlap-of-an-intermediate", &["ca", "rotate", "--env", "dev", "--overlap", "1d"], 2, "cannot be used with"),
        cli("ca-rotate/delay-malformed", &["ca", "rotate", "--env", "dev", "--delay", "soon"], 2, "invalid duration"),
        cli("ca-rotate/root-key-missing", &["ca", "rotate", "--root", "--root-key", "/nonexistent/root.key"], 2, "cannot read root key"),
        cli("ca-rotate/root-key-out-of-a-sealed-root", &["ca", "rotate", "--root", "--root-key-out", o], 2, "kept offline").absent(&out),
        cli("ca-rotate/wrong-passphrase", &["ca", "rotate", "--env", "dev"], 4, "wrong passphrase").pass(Pass::Wrong),
    ];

    let mut report = Report::default();
    for c in &cases {
        let before = Ledger::of(&ca);
        let run = run_cli(&ca, c);
        let after = Ledger::of(&ca);
        let mut result = Ok(());
        if run.code != Some(c.code) || !run.stderr.contains(c.stderr) {
            result = Err(format!(
                "want exit {} with {:?} on stderr, got {:?}: {}",
                c.code,
                c.stderr,
                run.code,
                run.stderr.trim()
            ));
        } else if [
            "panicked",
            "stack backtrace",
            "Error {",
            WRONG_PASSPHRASE,
            PASSPHRASE,
        ]
        .iter()
        .any(|bad| run.stderr.contains(bad) || run.stdout.contains(bad))
        {
            result = Err(format!("output shows too much: {}", run.stderr.trim()));
        } else if after != before {
            result = Err(format!("stored or spent: {}", before.diff(&after)));
        } else if let Some(p) = c.absent.as_deref().filter(|p| p.exists()) {
            result = Err(format!("{} was created", p.display()));
        }
        report.check(c.name, result);
    }
    report.finish("CLI", 55);

    // The refused revocations left the certificate live: the right passphrase revokes it.
    ca.server(&["revoke", &live, "--yes"]).expect_code(0);
}
