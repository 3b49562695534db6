//! End to end: `ca-server serve` on 127.0.0.1 with a random port, driven with curl (a standard
//! client) and checked with openssl. Enrollment, renewal, tokens and every hostile case.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Http, Server, TestCa, curl, openssl, s};

const API_DEV: &str = "api.dev.svc.example.internal";

struct Env {
    ca: TestCa,
    server: Server,
    root: PathBuf,
}

impl Env {
    fn new() -> Env {
        Env::with(TestCa::init_insecure(), &[])
    }

    fn with(ca: TestCa, serve_args: &[&str]) -> Env {
        let server = ca.serve(serve_args);
        let root = ca.path("root.pem");
        let run = ca.server(&["bundle", "--env", "dev", "--out", s(&root)]);
        run.expect_code(0);
        // Trust only the root: the bundle's second certificate is the dev intermediate.
        let pem = std::fs::read_to_string(&root).expect("bundle");
        let end = pem.find("-----END CERTIFICATE-----").expect("root")
            + "-----END CERTIFICATE-----\n".len();
        std::fs::write(&root, &pem[..end]).expect("write root");
        Env { ca, server, root }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url)
    }

    fn token(&self, env: &str, service: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "token",
            "create",
            "--env",
            env,
            "--service",
            service,
            "--json",
        ];
        args.extend_from_slice(extra);
        let run = self.ca.server(&args);
        run.expect_code(0);
        let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("token json");
        assert!(v["id"].is_string() && v["expires_at"].is_string(), "{v}");
        v["token"].as_str().expect("token").to_string()
    }

    /// A fresh P-256 key and CSR made by openssl; returns (key path, csr pem).
    fn csr(&self, name: &str) -> (PathBuf, String) {
        let key = self.ca.path(&format!("{name}.key"));
        let csr = self.ca.path(&format!("{name}.csr"));
        let pem = support::openssl_p256_csr(&key, &csr, "ignored");
        (key, pem)
    }

    /// A fresh P-256 key and an openssl CSR with `extra` arguments (`-addext ...`, `-config F`);
    /// returns the CSR PEM.
    fn csr_with(&self, name: &str, extra: &[&str]) -> String {
        let key = self.ca.path(&format!("{name}.key"));
        let csr = self.ca.path(&format!("{name}.csr"));
        let mut args = vec![
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-keyout",
            s(&key),
            "-out",
            s(&csr),
        ];
        if !extra.contains(&"-config") {
            args.extend(["-subj", "/CN=ignored"]);
        }
        args.extend_from_slice(extra);
        openssl(&args).expect_code(0);
        std::fs::read_to_string(&csr).expect("csr")
    }

    /// Audit entries (`audit --json` lines) of `action` with result `denied`.
    fn denied(&self, action: &str) -> Vec<serde_json::Value> {
        let run = self.ca.server(&["audit", "--json"]);
        run.expect_code(0);
        run.stdout
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("audit json line"))
            .filter(|e| e["action"] == action && e["result"] == "denied")
            .collect()
    }

    fn post(&self, path: &str, body: &str, client: Option<(&Path, &Path)>) -> Http {
        let file = self.ca.path(&format!("body-{}.json", rand_suffix()));
        std::fs::write(&file, body).expect("write body");
        let data = format!("@{}", s(&file));
        let url = self.url(path);
        let mut args = vec![
            "--cacert",
            s(&self.root),
            "-H",
            "content-type: application/json",
            "--data-binary",
            &data,
        ];
        if let Some((cert, key)) = client {
            args.extend(["--cert", s(cert), "--key", s(key)]);
        }
        args.push(&url);
        curl(&args)
    }

    fn get(&self, path: &str, client: Option<(&Path, &Path)>) -> Http {
        let url = self.url(path);
        let mut args = vec!["--cacert", s(&self.root)];
        if let Some((cert, key)) = client {
            args.extend(["--cert", s(cert), "--key", s(key)]);
        }
        args.push(&url);
        curl(&args)
    }

    /// Enrolls dev/api with a new token; returns (cert path, key path, response).
    fn enroll(&self, name: &str) -> (PathBuf, PathBuf, serde_json::Value) {
        let token = self.token("dev", "api", &[]);
        let (key, csr) = self.csr(name);
        let body = serde_json::json!({ "token": token, "csr": csr, "dns": [API_DEV] }).to_string();
        let resp = self.post("/v1/enroll", &body, None);
        assert_eq!(resp.status, 201, "{}", resp.body);
        let v = resp.json();
        let cert = self.ca.path(&format!("{name}.crt"));
        std::fs::write(&cert, v["certificate"].as_str().expect("certificate")).expect("write cert");
        (cert, key, v)
    }

    fn dev_certs(&self) -> usize {
        let run = self.ca.server(&["certs", "list", "--env", "dev", "--json"]);
        run.expect_code(0);
        serde_json::from_str::<Vec<serde_json::Value>>(&run.stdout)
            .expect("json")
            .len()
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[test]
fn enroll_then_renew_with_curl_and_openssl() {
    let env = Env::new();
    let (cert, key, first) = env.enroll("first");
    assert_eq!(first["spiffe_id"], "spiffe://example.internal/dev/api");
    for field in [
        "serial",
        "certificate",
        "chain",
        "bundle",
        "not_before",
        "not_after",
        "renew_after",
    ] {
        assert!(
            first[field].as_str().is_some_and(|v| !v.is_empty()),
            "missing {field}: {first}"
        );
    }
    let bundle = env.ca.path("bundle-from-api.pem");
    std::fs::write(&bundle, first["bundle"].as_str().expect("bundle")).expect("write");
    let chain = env.ca.path("chain-from-api.pem");
    std::fs::write(&chain, first["chain"].as_str().expect("chain")).expect("write");
    openssl([
        "verify",
        "-CAfile",
        s(&bundle),
        "-untrusted",
        s(&chain),
        s(&cert),
    ])
    .expect_code(0);

    // Renew presenting only the leaf, with a new key.
    let (key2, csr2) = env.csr("second");
    let resp = env.post(
        "/v1/renew",
        &serde_json::json!({ "csr": csr2 }).to_string(),
        Some((&cert, &key)),
    );
    assert_eq!(resp.status, 201, "{}", resp.body);
    let second = resp.json();
    assert_eq!(second["spiffe_id"], first["spiffe_id"]);
    assert_ne!(second["serial"], first["serial"]);
    let cert2 = env.ca.path("second.crt");
    std::fs::write(&cert2, second["certificate"].as_str().expect("cert")).expect("write");
    let text = openssl(["x509", "-noout", "-text", "-in", s(&cert2)])
        .stdout
        .clone();
    assert!(
        text.contains("DNS:api.dev.svc.example.internal"),
        "renewal keeps the names: {text}"
    );
    let pub2 = openssl(["x509", "-noout", "-pubkey", "-in", s(&cert2)])
        .stdout
        .clone();
    let keypub2 = openssl(["pkey", "-pubout", "-in", s(&key2)]).stdout.clone();
    assert_eq!(
        pub2, keypub2,
        "the renewed certificate certifies the new key"
    );

    // The renewed certificate can renew in turn, presenting the full chain this time.
    let chain2 = env.ca.path("second.chain");
    std::fs::write(&chain2, second["chain"].as_str().expect("chain")).expect("write");
    let (_, csr3) = env.csr("third");
    let resp = env.post(
        "/v1/renew",
        &serde_json::json!({ "csr": csr3 }).to_string(),
        Some((&chain2, &key2)),
    );
    assert_eq!(resp.status, 201, "{}", resp.body);
    assert_eq!(env.dev_certs(), 3);

    let audit = env.ca.server(&["audit"]).stdout.clone();
    assert!(
        audit.contains(" enroll ok ") && audit.matches(" renew ok ").count() == 2,
        "{audit}"
    );
}

#[test]
fn renewal_hostile_cases_are_refused_and_store_nothing() {
    let env = Env::new();
    let (cert, key, _) = env.enroll("holder");
    let (_, fresh_csr) = env.csr("fresh");
    let body = serde_json::json!({ "csr": fresh_csr }).to_string();
    let before = env.dev_certs();

    // No client certificate.
    env.post("/v1/renew", &body, None)
        .expect_problem(401, "client-certificate-required");
    // Another service or environment.
    let other = serde_json::json!({ "csr": fresh_csr, "service": "web" }).to_string();
    env.post("/v1/renew", &other, Some((&cert, &key)))
        .expect_problem(403, "forbidden");
    let other = serde_json::json!({ "csr": fresh_csr, "env": "prod" }).to_string();
    env.post("/v1/renew", &other, Some((&cert, &key)))
        .expect_problem(403, "forbidden");
    // Names outside policy.
    let other = serde_json::json!({ "csr": fresh_csr, "dns": ["web.dev.svc.example.internal"] })
        .to_string();
    env.post("/v1/renew", &other, Some((&cert, &key)))
        .expect_problem(403, "policy-denied");
    // The presented key again.
    let same_key_csr = env.ca.path("same.csr");
    openssl([
        "req",
        "-new",
        "-key",
        s(&key),
        "-out",
        s(&same_key_csr),
        "-subj",
        "/CN=x",
    ])
    .expect_code(0);
    let same = serde_json::json!({ "csr": std::fs::read_to_string(&same_key_csr).expect("csr") })
        .to_string();
    let v = env
        .post("/v1/renew", &same, Some((&cert, &key)))
        .expect_problem(400, "bad-request");
    assert!(
        v["detail"].as_str().unwrap_or("").contains("new key"),
        "{v}"
    );
    // Broken CSRs.
    let bad = serde_json::json!({ "csr": "not a csr" }).to_string();
    env.post("/v1/renew", &bad, Some((&cert, &key)))
        .expect_problem(400, "bad-csr");
    let mut der_b64: Vec<char> = fresh_csr.chars().collect();
    let mid = der_b64.len() / 2;
    der_b64[mid] = if der_b64[mid] == 'A' { 'B' } else { 'A' };
    let tampered =
        serde_json::json!({ "csr": der_b64.into_iter().collect::<String>() }).to_string();
    env.post("/v1/renew", &tampered, Some((&cert, &key)))
        .expect_problem(400, "bad-csr");
    // Malformed and unexpected JSON, oversized bodies.
    env.post("/v1/renew", "{\"csr\": ", Some((&cert, &key)))
        .expect_problem(400, "malformed-json");
    env.post(
        "/v1/renew",
        "{\"csr\": \"x\", \"admin\": true}",
        Some((&cert, &key)),
    )
    .expect_problem(400, "malformed-json");
    let huge = serde_json::json!({ "csr": "A".repeat(100 * 1024) }).to_string();
    env.post("/v1/renew", &huge, Some((&cert, &key)))
        .expect_problem(413, "payload-too-large");

    assert_eq!(
        env.dev_certs(),
        before,
        "no refused renewal may store a certificate"
    );
    let audit = env.ca.server(&["audit", "--json"]).stdout.clone();
    assert_eq!(
        audit.matches("\"denied\"").count(),
        10,
        "every refusal is audited: {audit}"
    );
}

#[test]
fn csrs_asking_for_what_is_not_granted_exactly_are_refused_on_enroll_and_renew() {
    let env = Env::new();
    let token = env.token("dev", "api", &[]);
    let enroll = |csr: &str, dns: &[&str]| {
        let mut body = serde_json::json!({ "token": token, "csr": csr });
        if !dns.is_empty() {
            body["dns"] = serde_json::json!(dns);
        }
        env.post("/v1/enroll", &body.to_string(), None)
    };
    let challenge_cnf = env.ca.path("challenge.cnf");
    std::fs::write(
        &challenge_cnf,
        "[req]\ndistinguished_name = dn\nattributes = attrs\nprompt = no\n\
         [dn]\nCN = ignored\n[attrs]\nchallengePassword = s3cret-value\n",
    )
    .expect("write config");

    let cases: Vec<(&str, Vec<&str>, &[&str], &str)> = vec![
        (
            "other-env-id",
            vec![
                "-addext",
                "subjectAltName=URI:spiffe://example.internal/prod/api",
            ],
            &[API_DEV],
            "URI SAN \"spiffe://example.internal/prod/api\"",
        ),
        (
            "email",
            vec!["-addext", "subjectAltName=email:ops@example.internal"],
            &[API_DEV],
            "email SAN \"ops@example.internal\"",
        ),
        (
            "code-signing",
            vec!["-addext", "extendedKeyUsage=codeSigning"],
            &[API_DEV],
            "extendedKeyUsage codeSigning",
        ),
        (
            "critical-unknown",
            vec!["-addext", "1.2.3.4=critical,ASN1:NULL"],
            &[API_DEV],
            "critical extension 1.2.3.4",
        ),
        (
            "names-differ",
            vec!["-addext", "subjectAltName=DNS:web.dev.svc.example.internal"],
            &[API_DEV],
            "CSR requests dns:web.dev.svc.example.internal but the request names dns:api.dev.svc.example.internal",
        ),
        (
            "challenge",
            vec!["-config", s(&challenge_cnf)],
            &[API_DEV],
            "challengePassword",
        ),
    ];
    for (name, extra, dns, needle) in &cases {
        let csr = env.csr_with(name, extra);
        let v = enroll(&csr, dns).expect_problem(400, "bad-csr");
        let detail = v["detail"].as_str().unwrap_or("");
        assert!(detail.contains(needle), "{name}: {v}");
        assert!(!detail.contains("s3cret"), "{name}: {v}");
    }
    // A name policy refuses, asked for in the CSR only.
    let csr = env.csr_with(
        "prod-name",
        &[
            "-addext",
            "subjectAltName=DNS:api.prod.svc.example.internal",
        ],
    );
    let v = enroll(&csr, &[]).expect_problem(403, "policy-denied");
    assert!(
        v["detail"]
            .as_str()
            .unwrap_or("")
            .contains("api.prod.svc.example.internal"),
        "{v}"
    );

    assert_eq!(
        env.dev_certs(),
        0,
        "no refused enrollment stores a certificate"
    );
    let denied = env.denied("enroll");
    assert_eq!(
        denied.len(),
        cases.len() + 1,
        "every refusal is audited: {denied:?}"
    );
    assert!(
        denied
            .iter()
            .all(|e| !e["reason"].as_str().unwrap_or("").contains("s3cret")),
        "{denied:?}"
    );

    // The token was not spent: a CSR asking for exactly what is granted (its own SPIFFE ID, the
    // names also in the body, CA:FALSE and the leaf's usages) enrolls with it.
    let exact = env.csr_with(
        "exact",
        &[
            "-addext",
            "subjectAltName=DNS:api.dev.svc.example.internal,URI:spiffe://example.internal/dev/api",
            "-addext",
            "basicConstraints=CA:FALSE",
            "-addext",
            "keyUsage=critical,digitalSignature",
            "-addext",
            "extendedKeyUsage=serverAuth,clientAuth",
        ],
    );
    let resp = enroll(&exact, &[API_DEV]);
    assert_eq!(resp.status, 201, "{}", resp.body);
    let cert = env.ca.path("exact.crt");
    std::fs::write(&cert, resp.json()["certificate"].as_str().expect("cert")).expect("write");
    let text = openssl(["x509", "-noout", "-text", "-in", s(&cert)])
        .stdout
        .clone();
    assert_eq!(
        text.matches("URI:spiffe://example.internal/dev/api")
            .count(),
        1,
        "{text}"
    );
    assert!(text.contains("DNS:api.dev.svc.example.internal"), "{text}");
    assert_eq!(env.dev_certs(), 1);

    // Renewal: the same rule.
    let key = env.ca.path("exact.key");
    let renew_cases: [(&str, Vec<&str>, &[&str], &str); 3] = [
        (
            "renew-other-env-id",
            vec![
                "-addext",
                "subjectAltName=URI:spiffe://example.internal/prod/api",
            ],
            &[],
            "spiffe://example.internal/prod/api",
        ),
        (
            "renew-names-differ",
            vec!["-addext", "subjectAltName=DNS:web.dev.svc.example.internal"],
            &[API_DEV],
            "dns:web.dev.svc.example.internal",
        ),
        (
            "renew-key-cert-sign",
            vec!["-addext", "keyUsage=critical,digitalSignature,keyCertSign"],
            &[],
            "keyUsage Digital Signature, Key Cert Sign",
        ),
    ];
    for (name, extra, dns, needle) in &renew_cases {
        let csr = env.csr_with(name, extra);
        let mut body = serde_json::json!({ "csr": csr });
        if !dns.is_empty() {
            body["dns"] = serde_json::json!(dns);
        }
        let v = env
            .post("/v1/renew", &body.to_string(), Some((&cert, &key)))
            .expect_problem(400, "bad-csr");
        assert!(
            v["detail"].as_str().unwrap_or("").contains(needle),
            "{name}: {v}"
        );
    }
    assert_eq!(
        env.dev_certs(),
        1,
        "no refused renewal stores a certificate"
    );
    assert_eq!(env.denied("renew").len(), renew_cases.len());
}

#[test]
fn foreign_expired_and_revoked_client_certificates_are_refused() {
    let env = Env::new();
    let (_, fresh_csr) = env.csr("fresh");
    let body = serde_json::json!({ "csr": fresh_csr }).to_string();

    // A certificate from another CA: the handshake fails, no HTTP answer at all.
    let foreign = TestCa::init_insecure();
    let out = foreign.path("out");
    foreign
        .issue("dev", "api", &[API_DEV], &out, &[])
        .expect_code(0);
    let resp = env.post(
        "/v1/renew",
        &body,
        Some((&out.join("chain.pem"), &out.join("key.pem"))),
    );
    assert_eq!(
        resp.status, 0,
        "foreign client certificate got an HTTP answer: {}",
        resp.body
    );
    assert_ne!(resp.curl_code, Some(0));

    // An expired certificate of this CA: refused at the handshake as well.
    let short = env.ca.path("short");
    env.ca
        .issue("dev", "api", &[], &short, &["--ttl", "1s"])
        .expect_code(0);
    std::thread::sleep(Duration::from_millis(2100));
    let resp = env.post(
        "/v1/renew",
        &body,
        Some((&short.join("cert.pem"), &short.join("key.pem"))),
    );
    assert_eq!(
        resp.status, 0,
        "expired client certificate got an HTTP answer: {}",
        resp.body
    );

    // A revoked one (marked in the store directly): 403 on the next request.
    let (cert, key, enrolled) = env.enroll("victim");
    let serial = enrolled["serial"].as_str().expect("serial").to_string();
    mark_revoked(&env.ca.data.join("ca.db"), &serial);
    let v = env
        .post("/v1/renew", &body, Some((&cert, &key)))
        .expect_problem(403, "forbidden");
    assert!(
        v["detail"].as_str().unwrap_or("").contains("revoked"),
        "{v}"
    );
}

fn mark_revoked(db: &Path, serial: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(db).busy_timeout(Duration::from_secs(10));
        let pool = sqlx::SqlitePool::connect_with(opts).await.expect("connect");
        let done = sqlx::query(
            "UPDATE certificates SET revoked_at = strftime('%s','now'), revocation_reason = 'key-compromise' WHERE serial = ?",
        )
        .bind(serial)
        .execute(&pool)
        .await
        .expect("update");
        assert_eq!(done.rows_affected(), 1);
        pool.close().await;
    });
}

#[test]
fn tokens_are_single_use_scoped_and_expire() {
    let env = Env::new();
    let (_, csr) = env.csr("t");
    let enroll = |token: &str, extra: serde_json::Value| {
        let mut body = serde_json::json!({ "token": token, "csr": csr, "dns": [API_DEV] });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        env.post("/v1/enroll", &body.to_string(), None)
    };

    let token = env.token("dev", "api", &[]);
    // Wrong environment in the request, or names of another environment: refused, token kept.
    enroll(&token, serde_json::json!({ "env": "prod" })).expect_problem(403, "forbidden");
    let prod_names = serde_json::json!({ "dns": ["api.prod.svc.example.internal"] });
    enroll(&token, prod_names).expect_problem(403, "policy-denied");
    assert_eq!(
        enroll(&token, serde_json::json!({})).status,
        201,
        "refusals do not spend the token"
    );
    let v = enroll(&token, serde_json::json!({})).expect_problem(401, "invalid-token");
    assert!(
        v["detail"].as_str().unwrap_or("").contains("already used"),
        "{v}"
    );

    // Forged secret, garbage, expired, revoked.
    let (id, _) = token.split_once('.').expect("id");
    enroll(&format!("{id}.{}", "0".repeat(64)), serde_json::json!({}))
        .expect_problem(401, "invalid-token");
    enroll("garbage", serde_json::json!({})).expect_problem(401, "invalid-token");
    let short = env.token("dev", "api", &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1100));
    let v = enroll(&short, serde_json::json!({})).expect_problem(401, "invalid-token");
    assert!(
        v["detail"].as_str().unwrap_or("").contains("expired"),
        "{v}"
    );
    let revoked = env.token("dev", "api", &[]);
    let rid = revoked.split_once('.').expect("id").0.to_string();
    env.ca.server(&["token", "revoke", &rid]).expect_code(0);
    env.ca
        .server(&["token", "revoke", &rid])
        .expect_code(2)
        .expect_stderr("already revoked");
    let v = enroll(&revoked, serde_json::json!({})).expect_problem(401, "invalid-token");
    assert!(
        v["detail"].as_str().unwrap_or("").contains("revoked"),
        "{v}"
    );

    // Listing shows ids and states, never secrets.
    let list = env.ca.server(&["token", "list", "--all", "--json"]);
    list.expect_code(0);
    assert!(
        !list
            .stdout
            .contains(token.split_once('.').expect("secret").1)
    );
    assert!(
        list.stdout.contains("\"revoked\"") && list.stdout.contains("\"used\""),
        "{}",
        list.stdout
    );
    assert_eq!(env.dev_certs(), 1);
}

#[test]
fn ci_tokens_are_multi_use_with_a_cap_and_only_for_ci_environments() {
    let env = Env::new();
    env.ca
        .server(&[
            "token",
            "create",
            "--env",
            "dev",
            "--service",
            "api",
            "--uses",
            "5",
        ])
        .expect_code(3)
        .expect_stderr("not marked `ci = true`");
    env.ca
        .server(&[
            "token",
            "create",
            "--env",
            "ci",
            "--service",
            "api",
            "--uses",
            "5000",
        ])
        .expect_code(3)
        .expect_stderr("roles.ci_tokens.max_uses");
    let token = env.token("ci", "api", &["--uses", "3", "--ttl", "1h"]);
    let mut serials = Vec::new();
    for i in 0..4 {
        let (_, csr) = env.csr(&format!("ci{i}"));
        let body = serde_json::json!({ "token": token, "csr": csr, "dns": ["api.ci.svc.example.internal"] }).to_string();
        let resp = env.post("/v1/enroll", &body, None);
        if i < 3 {
            assert_eq!(resp.status, 201, "{}", resp.body);
            serials.push(resp.json()["serial"].clone());
        } else {
            resp.expect_problem(401, "invalid-token");
        }
    }
    serials.dedup();
    assert_eq!(serials.len(), 3);
}

#[test]
fn one_single_use_token_enrolls_exactly_once_under_concurrency() {
    let env = Env::new();
    let token = env.token("dev", "api", &[]);
    let (_, csr) = env.csr("race");
    let body = env.ca.path("race.json");
    std::fs::write(
        &body,
        serde_json::json!({ "token": token, "csr": csr, "dns": [API_DEV] }).to_string(),
    )
    .expect("write");
    let data = format!("@{}", s(&body));
    let url = env.url("/v1/enroll");
    let children: Vec<_> = (0..20)
        .map(|_| {
            Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "30",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--cacert",
                    s(&env.root),
                ])
                .args([
                    "-H",
                    "content-type: application/json",
                    "--data-binary",
                    &data,
                    &url,
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("curl")
        })
        .collect();
    let codes: Vec<String> = children
        .into_iter()
        .map(|c| {
            String::from_utf8_lossy(&c.wait_with_output().expect("curl output").stdout).into_owned()
        })
        .collect();
    let created = codes.iter().filter(|c| c.as_str() == "201").count();
    let refused = codes.iter().filter(|c| c.as_str() == "401").count();
    assert_eq!((created, refused), (1, 19), "{codes:?}");
    assert_eq!(env.dev_certs(), 1);
}

#[test]
fn public_endpoints_and_problem_documents() {
    let env = Env::new();
    let health = env.get("/healthz", None);
    assert_eq!(
        (health.status, health.json()["status"].as_str()),
        (200, Some("ok"))
    );
    let ready = env.get("/readyz", None);
    assert_eq!(ready.status, 200, "{}", ready.body);
    let roots = env.get("/v1/roots", None);
    assert_eq!(roots.status, 200);
    assert_eq!(
        roots.body.trim(),
        std::fs::read_to_string(&env.root).expect("root").trim()
    );
    let bundle = env.get("/v1/bundle?env=prod", None);
    assert_eq!(bundle.body.matches("BEGIN CERTIFICATE").count(), 2);
    env.get("/v1/bundle?env=qa", None)
        .expect_problem(404, "not-found");
    let info = env.get("/v1/info", None).json();
    assert_eq!(info["trust_domain"], "example.internal");
    assert_eq!(
        info["environments"]["dev"]["dns_suffixes"],
        serde_json::json!(["dev.svc.example.internal"])
    );
    assert!(info["environments"]["prod"].is_object(), "{info}");
    env.get("/v1/bundle", None)
        .expect_problem(400, "bad-request");
    env.get("/v1/nothing", None)
        .expect_problem(404, "not-found");
    env.post("/v1/enroll", "{}", None)
        .expect_problem(400, "malformed-json");

    let (_, _, _) = env.enroll("m");
    let metrics = env.get("/metrics", None);
    assert_eq!(metrics.status, 200);
    for needle in [
        "ca_certificates_issued_total{env=\"dev\",via=\"enroll\"} 1",
        "ca_requests_denied_total{op=\"enroll\",reason=\"malformed-json\"} 1",
        "ca_live_certificates{env=\"dev\"} 1",
        "ca_live_certificates{env=\"prod\"} 0",
        "ca_http_request_duration_seconds_bucket",
    ] {
        assert!(
            metrics.body.contains(needle),
            "metrics lack {needle}:\n{}",
            metrics.body
        );
    }

    // The server certificate chains to the root for every default name.
    for host in ["localhost", "127.0.0.1"] {
        let url = format!("https://{host}:{}/healthz", env.server.port);
        let r = curl(&["--cacert", s(&env.root), &url]);
        assert_eq!(r.status, 200, "{host}: {}", r.curl_err);
    }
}

#[test]
fn admin_routes_require_an_admin_identity() {
    let env = Env::new();
    env.get("/v1/admin/certs", None)
        .expect_problem(401, "client-certificate-required");
    let (cert, key, _) = env.enroll("notadmin");
    env.get("/v1/admin/certs", Some((&cert, &key)))
        .expect_problem(403, "forbidden");
    env.get("/v1/admin/anything", Some((&cert, &key)))
        .expect_problem(403, "forbidden");
    let ops = env.ca.path("ops");
    env.ca.issue("prod", "ops", &[], &ops, &[]).expect_code(0);
    let admin = (ops.join("chain.pem"), ops.join("key.pem"));
    let list = env.get("/v1/admin/certs?env=dev", Some((&admin.0, &admin.1)));
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(list.json().as_array().map(Vec::len), Some(1));
    env.get("/v1/admin/anything", Some((&admin.0, &admin.1)))
        .expect_problem(404, "not-found");
}

#[test]
fn server_certificate_rotates_without_restart_and_sigterm_exits_cleanly() {
    let ca = TestCa::init_insecure();
    let mut env = Env::with(ca, &["--server-cert-ttl", "6s"]);
    let serial = |env: &Env| {
        let mut c = Command::new("openssl");
        c.args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", env.server.port),
            "-CAfile",
            s(&env.root),
        ]);
        c.stdin(Stdio::null());
        let run = support::run_bounded(c, Duration::from_secs(20));
        let start = run
            .stdout
            .find("-----BEGIN CERTIFICATE-----")
            .expect("server certificate");
        let end = run.stdout.find("-----END CERTIFICATE-----").expect("end") + 25;
        let path = env.ca.path(&format!("served-{}.pem", rand_suffix()));
        std::fs::write(&path, &run.stdout[start..end]).expect("write");
        assert!(
            run.stdout.contains("Verify return code: 0 (ok)"),
            "{}",
            run.stdout
        );
        openssl(["x509", "-noout", "-serial", "-in", s(&path)])
            .stdout
            .clone()
    };
    let first = serial(&env);
    std::thread::sleep(Duration::from_millis(5000));
    let second = serial(&env);
    assert_ne!(first, second, "the server certificate was not rotated");
    assert_eq!(env.get("/healthz", None).status, 200);
    assert_eq!(
        env.server.terminate(),
        Some(0),
        "SIGTERM must exit 0: {}",
        env.server.stderr()
    );
}

#[test]
fn serve_refuses_bad_configuration_and_wrong_passphrases() {
    let ca = TestCa::init_sealed("a good long passphrase");
    let cfg = ca.path("ca-server.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\nlisten_port = 1\n").expect("write");
    ca.server(&["serve", "--config", s(&cfg)])
        .expect_code(2)
        .expect_stderr("listen_port");
    ca.server(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--server-name",
        "ca.example.com",
    ])
    .expect_code(2)
    .expect_stderr("not among the server names fixed at init");
    let wrong = ca.path("wrong");
    std::fs::write(&wrong, "not the passphrase at all").expect("write");
    let bad = TestCa {
        tmp: tempfile::tempdir().expect("tmp"),
        data: ca.data.clone(),
        passphrase_file: Some(wrong),
        database_url: None,
    };
    bad.server(&["serve", "--listen", "127.0.0.1:0"])
        .expect_code(4)
        .expect_stderr("wrong passphrase");

    // The documented example config is valid.
    let example = support::repo_root().join("ca-server/ca-server.example.toml");
    let text = std::fs::read_to_string(&example)
        .expect("example config")
        .replace("127.0.0.1:8443", "127.0.0.1:0");
    std::fs::write(&cfg, text).expect("write");
    let mut server = ca.serve(&["--config", s(&cfg)]);
    assert_eq!(server.terminate(), Some(0));
}

#[test]
fn sighup_reloads_the_policy_and_keeps_the_old_one_when_the_new_one_is_broken() {
    let ca = TestCa::new();
    let policy = ca.path("policy.toml");
    let original = std::fs::read_to_string(support::example_policy()).expect("policy");
    std::fs::write(&policy, &original).expect("write");
    ca.server(&["init", "--policy", s(&policy), "--insecure-no-passphrase"])
        .expect_code(0);
    let env = Env::with(ca, &[]);
    let enroll_extra = |token: &str| {
        let (_, csr) = env.csr(&format!("reload-{}", rand_suffix()));
        let body = serde_json::json!({ "token": token, "csr": csr, "dns": ["api-v2.dev.svc.example.internal"] });
        env.post("/v1/enroll", &body.to_string(), None)
    };
    let first = env.token("dev", "api", &[]);
    enroll_extra(&first).expect_problem(403, "policy-denied");

    let widened = original.replacen(
        "dns = [\"{service}.{env}.svc.example.internal\"]",
        "dns = [\"{service}.{env}.svc.example.internal\", \"{service}-v2.{env}.svc.example.internal\"]",
        1,
    );
    assert_ne!(widened, original);
    std::fs::write(&policy, &widened).expect("write");
    env.server.signal("HUP");
    let start = std::time::Instant::now();
    loop {
        let r = enroll_extra(&first);
        if r.status == 201 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "policy not reloaded: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A broken edit is refused and the policy in force stays.
    let second = env.token("dev", "api", &[]);
    std::fs::write(
        &policy,
        "trust_domain = \"example.internal\"\nthis is not toml",
    )
    .expect("write");
    env.server.signal("HUP");
    let start = std::time::Instant::now();
    while !env.server.stderr().contains("policy reload refused") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no refusal logged: {}",
            env.server.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        enroll_extra(&second).status,
        201,
        "the last good policy stays in force"
    );
    let audit = env.ca.server(&["audit"]).stdout.clone();
    assert_eq!(audit.matches("policy-reload ok").count(), 1, "{audit}");
}
