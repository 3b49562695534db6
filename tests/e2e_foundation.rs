//! End to end: `ca-server init`, `issue`, `certs`, `bundle`, `policy`, `audit` through the real
//! binary, checked with openssl. Every bad input: a clear error, the right exit code, nothing written.

mod support;

use std::path::{Path, PathBuf};

use support::{TestCa, example_policy, list_dir, openssl, s};

const API_DEV: &str = "api.dev.svc.example.internal";

/// Exit codes documented in the README.
const BAD_REQUEST: i32 = 2;
const DENIED: i32 = 3;
const UNAUTHORIZED: i32 = 4;
const NOT_FOUND: i32 = 5;
const CONFLICT: i32 = 6;

fn certs_json(ca: &TestCa) -> Vec<serde_json::Value> {
    let run = ca.server(&["certs", "list", "--json"]);
    run.expect_code(0);
    serde_json::from_str(&run.stdout).expect("certs list --json is JSON")
}

/// A CSR made by openssl with `newkey` (`ec:P-256`, `rsa:2048`, `ed25519`, ...) and extra args.
fn openssl_csr(ca: &TestCa, name: &str, newkey: &str, extra: &[&str]) -> PathBuf {
    let key = ca.path(&format!("{name}.key"));
    let csr = ca.path(&format!("{name}.csr"));
    let mut args: Vec<String> = vec!["req".into(), "-new".into(), "-nodes".into()];
    match newkey.split_once(':') {
        Some(("ec", curve)) => {
            args.extend([
                "-newkey".into(),
                "ec".into(),
                "-pkeyopt".into(),
                format!("ec_paramgen_curve:{curve}"),
            ]);
        }
        _ => args.extend(["-newkey".into(), newkey.into()]),
    }
    args.extend([
        "-keyout".into(),
        s(&key).into(),
        "-out".into(),
        s(&csr).into(),
        "-subj".into(),
        "/CN=ignored".into(),
    ]);
    args.extend(extra.iter().map(|a| a.to_string()));
    openssl(&args).expect_code(0);
    csr
}

fn issue_with_csr(ca: &TestCa, csr: &Path, out: &Path, dns: &[&str]) -> support::Run {
    let mut args = vec![
        "issue",
        "--env",
        "dev",
        "--service",
        "api",
        "--csr",
        s(csr),
        "--out",
        s(out),
    ];
    if !dns.is_empty() {
        args.push("--dns");
        args.extend_from_slice(dns);
    }
    ca.server(&args)
}

fn x509_text(cert: &Path) -> String {
    openssl(["x509", "-noout", "-text", "-in", s(cert)])
        .expect_code(0)
        .stdout
        .clone()
}

#[test]
fn init_issue_verify_and_list() {
    let ca = TestCa::init_insecure();
    let out = ca.path("out");
    let run = ca.issue("dev", "api", &[API_DEV], &out, &["--json"]);
    run.expect_code(0);
    assert!(
        run.stderr.contains("unencrypted"),
        "insecure CA must warn on every command: {}",
        run.stderr
    );
    let issued: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    let serial = issued["serial"].as_str().expect("serial").to_string();
    assert_eq!(serial.len(), 32, "128-bit serial as 32 hex digits");

    assert_eq!(
        list_dir(&out),
        ["bundle.pem", "cert.pem", "chain.pem", "key.pem"]
    );
    let mode = support::mode(&out.join("key.pem"));
    assert_eq!(mode, 0o600, "key.pem must be 0600");

    let verify = support::openssl_verify_dir(&out);
    verify.expect_code(0);
    assert!(verify.stdout.contains(": OK"), "{}", verify.stdout);

    let text = x509_text(&out.join("cert.pem"));
    for needle in [
        "URI:spiffe://example.internal/dev/api",
        "DNS:api.dev.svc.example.internal",
        "TLS Web Server Authentication",
        "TLS Web Client Authentication",
        "CA:FALSE",
        "X509v3 Authority Key Identifier",
        "X509v3 Subject Key Identifier",
    ] {
        assert!(text.contains(needle), "certificate lacks {needle}:\n{text}");
    }
    assert!(
        !text.contains("Key Encipherment"),
        "EC leaves get digitalSignature only"
    );
    let serial_line = openssl(["x509", "-noout", "-serial", "-in", s(&out.join("cert.pem"))])
        .stdout
        .clone();
    assert_eq!(
        serial_line.trim().to_lowercase(),
        format!("serial={serial}")
    );

    // The key on disk is the certified one.
    let cert_pub = openssl(["x509", "-noout", "-pubkey", "-in", s(&out.join("cert.pem"))])
        .stdout
        .clone();
    let key_pub = openssl(["pkey", "-pubout", "-in", s(&out.join("key.pem"))])
        .stdout
        .clone();
    assert_eq!(cert_pub, key_pub);

    let listed = certs_json(&ca);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["serial"], serial.as_str());
    assert_eq!(listed[0]["status"], "valid");
    assert_eq!(listed[0]["spiffe_id"], "spiffe://example.internal/dev/api");

    // show accepts any case and colons; bundle prints root then the dev intermediate.
    let colon: String = serial
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(":");
    let shown = ca.server(&["certs", "show", &colon, "--json"]);
    shown.expect_code(0);
    let shown: serde_json::Value = serde_json::from_str(&shown.stdout).expect("json");
    assert_eq!(shown["serial"], serial.as_str());
    let bundle = ca.server(&["bundle", "--env", "dev"]);
    bundle.expect_code(0);
    assert_eq!(
        bundle.stdout,
        std::fs::read_to_string(out.join("bundle.pem")).expect("bundle")
    );
    assert_eq!(bundle.stdout.matches("BEGIN CERTIFICATE").count(), 2);

    // Filters.
    let none = ca.server(&["certs", "list", "--env", "prod", "--json"]);
    assert_eq!(none.stdout.trim(), "[]");
    let soon = ca.server(&["certs", "list", "--expiring-within", "1h", "--json"]);
    assert_eq!(
        soon.stdout.trim(),
        "[]",
        "an 8h certificate is not expiring within 1h"
    );
    let later = ca.server(&["certs", "list", "--expiring-within", "9h", "--json"]);
    assert!(later.stdout.contains(&serial));

    // The audit log has init and the issuance.
    let audit = ca.server(&["audit"]);
    audit.expect_code(0);
    assert!(
        audit.stdout.contains(" init ok ") && audit.stdout.contains(&format!("serial={serial}")),
        "{}",
        audit.stdout
    );
}

#[test]
fn intermediates_carry_name_constraints_and_pathlen_zero() {
    let ca = TestCa::init_insecure();
    let bundle = ca.path("bundle.pem");
    ca.server(&["bundle", "--env", "prod", "--out", s(&bundle)])
        .expect_code(0);
    let pem = std::fs::read_to_string(&bundle).expect("bundle");
    let intermediate = &pem[pem.rfind("-----BEGIN CERTIFICATE-----").expect("two certs")..];
    let path = ca.path("prod.pem");
    std::fs::write(&path, intermediate).expect("write");
    let text = x509_text(&path);
    for needle in [
        "X509v3 Name Constraints: critical",
        "DNS:prod.svc.example.internal",
        "CA:TRUE, pathlen:0",
        "Certificate Sign, CRL Sign",
    ] {
        assert!(
            text.contains(needle),
            "prod intermediate lacks {needle}:\n{text}"
        );
    }
}

#[test]
fn prod_name_through_dev_is_refused_naming_the_rule_and_nothing_is_written() {
    let ca = TestCa::init_insecure();
    let out = ca.path("out");
    let run = ca.issue("dev", "api", &["api.prod.svc.example.internal"], &out, &[]);
    run.expect_code(DENIED)
        .expect_stderr("environments.dev.dns_suffixes");
    assert!(
        !out.exists(),
        "nothing may be written for a refused request"
    );
    assert!(certs_json(&ca).is_empty());
    let audit = ca.server(&["audit", "--json"]);
    assert!(
        audit.stdout.contains("\"denied\""),
        "refusals are audited: {}",
        audit.stdout
    );
}

#[test]
fn policy_refusals_each_name_their_rule() {
    let ca = TestCa::init_insecure();
    let long = format!(
        "{}.dev.svc.example.internal",
        vec!["abcdefghi"; 25].join(".")
    );
    assert!(long.len() > 253);
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec![
                "--env",
                "dev",
                "--service",
                "api",
                "--dns",
                "web.dev.svc.example.internal",
            ],
            DENIED,
            "services.api.dns",
        ),
        (
            vec![
                "--env",
                "dev",
                "--service",
                "api",
                "--dns",
                "*.dev.svc.example.internal",
            ],
            DENIED,
            "services.api.wildcards",
        ),
        (
            vec!["--env", "dev", "--service", "api", "--ip", "10.1.2.3"],
            DENIED,
            "services.api.ip_sans",
        ),
        (
            vec!["--env", "dev", "--service", "api", "--dns", &long],
            BAD_REQUEST,
            "exceeds the DNS limit of 253",
        ),
        (
            vec![
                "--env",
                "dev",
                "--service",
                "api",
                "--dns",
                "äpi.dev.svc.example.internal",
            ],
            BAD_REQUEST,
            "A-label",
        ),
        (
            vec!["--env", "qa", "--service", "api"],
            DENIED,
            "unknown environment \"qa\"",
        ),
        (
            vec!["--env", "dev", "--service", "db"],
            DENIED,
            "unknown service \"db\"",
        ),
        (
            vec!["--env", "dev", "--service", "api", "--ttl", "13h"],
            DENIED,
            "services.api.max_ttl",
        ),
        (
            vec!["--env", "prod", "--service", "web", "--ttl", "13h"],
            DENIED,
            "environments.prod.max_ttl",
        ),
        (
            vec!["--env", "dev", "--service", "api", "--ttl", "soon"],
            BAD_REQUEST,
            "invalid duration",
        ),
    ];
    for (args, code, needle) in cases {
        let out = ca.path("out");
        let mut full = vec!["issue"];
        full.extend(args.iter().copied());
        full.extend(["--out", s(&out)]);
        let run = ca.server(&full);
        run.expect_code(code).expect_stderr(needle);
        assert!(!out.exists(), "{args:?} wrote output");
    }
    assert!(
        certs_json(&ca).is_empty(),
        "no refused request may store a certificate"
    );
}

#[test]
fn bad_csrs_are_refused_with_clear_errors() {
    let ca = TestCa::init_insecure();
    let good = openssl_csr(&ca, "good", "ec:P-256", &[]);
    let der = openssl([
        "req",
        "-in",
        s(&good),
        "-outform",
        "DER",
        "-out",
        s(&ca.path("good.der")),
    ]);
    der.expect_code(0);
    let mut bytes = std::fs::read(ca.path("good.der")).expect("der");
    let n = bytes.len();
    bytes[n - 5] ^= 0x5a; // inside the signature
    std::fs::write(ca.path("badsig.der"), &bytes).expect("write");
    let pem = std::fs::read_to_string(&good).expect("pem");
    std::fs::write(ca.path("truncated.csr"), &pem[..pem.len() / 2]).expect("write");
    std::fs::write(
        ca.path("garbage.csr"),
        "this is not a certificate request\n",
    )
    .expect("write");

    let cases: Vec<(PathBuf, &str)> = vec![
        (ca.path("badsig.der"), "signature does not verify"),
        (ca.path("truncated.csr"), "malformed"),
        (ca.path("garbage.csr"), "not PEM"),
        (
            openssl_csr(&ca, "rsa1024", "rsa:1024", &[]),
            "RSA key of 1024 bits is too weak",
        ),
        (
            openssl_csr(&ca, "p521", "ec:P-521", &[]),
            "unsupported key type: EC curve P-521",
        ),
        (
            openssl_csr(&ca, "k256", "ec:secp256k1", &[]),
            "unsupported key type",
        ),
        (
            openssl_csr(
                &ca,
                "ca",
                "ec:P-256",
                &["-addext", "basicConstraints=critical,CA:TRUE"],
            ),
            "requests CA:TRUE",
        ),
        (ca.path("missing.csr"), "cannot read CSR"),
    ];
    for (csr, needle) in cases {
        let out = ca.path("out");
        let run = issue_with_csr(&ca, &csr, &out, &[API_DEV]);
        run.expect_code(BAD_REQUEST).expect_stderr(needle);
        assert!(!out.exists(), "{} wrote output", csr.display());
    }
    assert!(certs_json(&ca).is_empty());
}

#[test]
fn openssl_csrs_of_each_supported_key_type_are_certified() {
    let ca = TestCa::init_insecure();
    for (name, newkey, ku) in [
        ("rsa", "rsa:2048", "Digital Signature, Key Encipherment"),
        ("ed", "ed25519", "Digital Signature"),
        ("p384", "ec:P-384", "Digital Signature"),
    ] {
        let csr = openssl_csr(
            &ca,
            name,
            newkey,
            &["-addext", "subjectAltName=DNS:api.dev.svc.example.internal"],
        );
        let out = ca.path(&format!("out-{name}"));
        // No --dns: the CSR's requested names are used, still subject to policy.
        issue_with_csr(&ca, &csr, &out, &[]).expect_code(0);
        assert_eq!(
            list_dir(&out),
            ["bundle.pem", "cert.pem", "chain.pem"],
            "no key.pem with --csr"
        );
        let text = x509_text(&out.join("cert.pem"));
        assert!(text.contains(ku), "{name}: {text}");
        assert!(text.contains("DNS:api.dev.svc.example.internal"), "{name}");
        support::openssl_verify_dir(&out).expect_code(0);
        let cert_pub = openssl(["x509", "-noout", "-pubkey", "-in", s(&out.join("cert.pem"))])
            .stdout
            .clone();
        let key_pub = openssl([
            "pkey",
            "-pubout",
            "-in",
            s(&ca.path(&format!("{name}.key"))),
        ])
        .stdout
        .clone();
        assert_eq!(cert_pub, key_pub, "{name}: only the CSR's key is certified");
    }
    // A CSR asking for a name outside policy is refused even without --dns.
    let csr = openssl_csr(
        &ca,
        "sneaky",
        "ec:P-256",
        &[
            "-addext",
            "subjectAltName=DNS:api.prod.svc.example.internal",
        ],
    );
    issue_with_csr(&ca, &csr, &ca.path("out-sneaky"), &[]).expect_code(DENIED);
    assert_eq!(certs_json(&ca).len(), 3);
}

#[test]
fn issue_refuses_csrs_asking_for_what_is_not_granted_exactly() {
    let ca = TestCa::init_insecure();
    let cases: [(&str, &[&str], &[&str], &str); 5] = [
        (
            "other-env-id",
            &[
                "-addext",
                "subjectAltName=URI:spiffe://example.internal/prod/api",
            ],
            &[],
            "URI SAN \"spiffe://example.internal/prod/api\"",
        ),
        (
            "email",
            &["-addext", "subjectAltName=email:ops@example.internal"],
            &[API_DEV],
            "email SAN \"ops@example.internal\"",
        ),
        (
            "client-only",
            &["-addext", "extendedKeyUsage=clientAuth"],
            &[API_DEV],
            "extendedKeyUsage clientAuth, but the certificate carries exactly serverAuth, clientAuth",
        ),
        (
            "unknown",
            &["-addext", "1.2.3.4=ASN1:NULL"],
            &[API_DEV],
            "extension 1.2.3.4",
        ),
        (
            "names-differ",
            &[
                "-addext",
                "subjectAltName=DNS:api.dev.svc.example.internal,DNS:web.dev.svc.example.internal",
            ],
            &[API_DEV],
            "CSR requests dns:api.dev.svc.example.internal, dns:web.dev.svc.example.internal but the request names dns:api.dev.svc.example.internal",
        ),
    ];
    for (name, extra, dns, needle) in cases {
        let csr = openssl_csr(&ca, name, "ec:P-256", extra);
        let out = ca.path(&format!("out-{name}"));
        issue_with_csr(&ca, &csr, &out, dns)
            .expect_code(BAD_REQUEST)
            .expect_stderr(needle);
        assert!(!out.exists(), "{name} wrote output");
    }
    assert!(
        certs_json(&ca).is_empty(),
        "no refused CSR stores a certificate"
    );
    let audit = ca.server(&["audit"]).stdout.clone();
    assert_eq!(
        audit.matches(" issue denied ").count(),
        cases.len(),
        "{audit}"
    );

    // An RSA CSR asking for exactly what an RSA leaf carries, names given in both places.
    let csr = openssl_csr(
        &ca,
        "rsa-exact",
        "rsa:2048",
        &[
            "-addext",
            "subjectAltName=DNS:API.dev.svc.example.internal,URI:spiffe://example.internal/dev/api",
            "-addext",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "-addext",
            "extendedKeyUsage=clientAuth,serverAuth",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ],
    );
    let out = ca.path("out-rsa-exact");
    issue_with_csr(&ca, &csr, &out, &[API_DEV]).expect_code(0);
    let text = x509_text(&out.join("cert.pem"));
    assert!(
        text.contains("Digital Signature, Key Encipherment"),
        "{text}"
    );
    assert!(
        text.contains("DNS:api.dev.svc.example.internal")
            && text
                .matches("URI:spiffe://example.internal/dev/api")
                .count()
                == 1,
        "{text}"
    );
    assert_eq!(certs_json(&ca).len(), 1);
}

#[test]
fn init_refuses_an_existing_ca_and_leaves_it_untouched() {
    let ca = TestCa::init_insecure();
    let db = ca.data.join("ca.db");
    let before = std::fs::read(&db).expect("db");
    let run = ca.server(&[
        "init",
        "--policy",
        s(&example_policy()),
        "--insecure-no-passphrase",
    ]);
    run.expect_code(CONFLICT)
        .expect_stderr("already holds a CA");
    assert_eq!(std::fs::read(&db).expect("db"), before);
    assert_eq!(list_dir(&ca.data), ["ca.db"]);
    let mode = support::mode(&db);
    assert_eq!(mode, 0o600);
}

#[test]
fn init_requires_a_passphrase_choice_and_a_strong_passphrase() {
    let ca = TestCa::new();
    ca.server(&["init", "--policy", s(&example_policy())])
        .expect_code(BAD_REQUEST)
        .expect_stderr("--insecure-no-passphrase");
    let weak = ca.path("weak");
    std::fs::write(&weak, "short\n").expect("write");
    ca.server(&[
        "init",
        "--policy",
        s(&example_policy()),
        "--passphrase-file",
        s(&weak),
    ])
    .expect_code(BAD_REQUEST)
    .expect_stderr("passphrase too short");
    ca.server(&[
        "init",
        "--policy",
        s(&example_policy()),
        "--passphrase-file",
        s(&weak),
        "--insecure-no-passphrase",
    ])
    .expect_code(BAD_REQUEST)
    .expect_stderr("contradicts");
    assert!(
        !ca.data.join("ca.db").exists(),
        "a refused init leaves no database"
    );
}

#[test]
fn sealed_ca_needs_the_right_passphrase() {
    let secret = "correct horse battery staple";
    let ca = TestCa::init_sealed(secret);
    let raw = std::fs::read(ca.data.join("ca.db")).expect("db");
    assert!(
        !String::from_utf8_lossy(&raw).contains("plain-v1"),
        "sealed CA stores no plaintext keys"
    );

    let out = ca.path("out");
    let run = ca.issue("dev", "api", &[API_DEV], &out, &[]);
    run.expect_code(0);
    assert!(!run.stderr.contains("unencrypted"));

    let wrong = ca.path("wrong");
    std::fs::write(&wrong, "incorrect horse battery staple\n").expect("write");
    let mut bad = TestCa {
        tmp: tempfile::tempdir().expect("tmp"),
        data: ca.data.clone(),
        passphrase_file: Some(wrong),
        database_url: None,
    };
    let out2 = ca.path("out2");
    let run = bad.issue("dev", "api", &[API_DEV], &out2, &[]);
    run.expect_code(UNAUTHORIZED)
        .expect_stderr("wrong passphrase");
    assert!(
        !run.stderr.contains("incorrect horse"),
        "the passphrase must never be echoed"
    );
    assert!(!out2.exists());
    bad.passphrase_file = None;
    bad.issue("dev", "api", &[], &out2, &[])
        .expect_code(UNAUTHORIZED)
        .expect_stderr("CA_PASSPHRASE");
    assert_eq!(certs_json(&ca).len(), 1);
}

#[test]
fn offline_root_key_leaves_the_data_dir() {
    let ca = TestCa::new();
    let pf = ca.path("pass");
    std::fs::write(&pf, "an offline root passphrase\n").expect("write");
    let root_key = ca.path("root.key");
    let run = ca.server(&[
        "init",
        "--policy",
        s(&example_policy()),
        "--passphrase-file",
        s(&pf),
        "--root-key-out",
        s(&root_key),
        "--json",
    ]);
    run.expect_code(0);
    let info: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    let fp = info["root_fingerprint"].as_str().expect("fingerprint");
    let text = std::fs::read_to_string(&root_key).expect("root key file");
    assert!(text.contains("sealed-v1:"), "offline root key is sealed");
    let mode = support::mode(&root_key);
    assert_eq!(mode, 0o600);
    // The fingerprint printed is the SHA-256 of the root certificate.
    let root_pem = info["root_pem"].as_str().expect("root pem");
    std::fs::write(ca.path("root.pem"), root_pem).expect("write");
    let fp_openssl = openssl([
        "x509",
        "-noout",
        "-fingerprint",
        "-sha256",
        "-in",
        s(&ca.path("root.pem")),
    ])
    .stdout
    .clone();
    assert_eq!(
        fp_openssl
            .trim()
            .split('=')
            .nth(1)
            .expect("fp")
            .replace(':', "")
            .to_lowercase(),
        fp
    );
    // Exactly one sealed key per intermediate stays in the database; the root's is gone.
    let authorities = stored_authorities(&ca.data.join("ca.db"));
    let keyed: Vec<&str> = authorities
        .iter()
        .filter(|a| {
            a.sealed_key
                .as_deref()
                .is_some_and(|k| k.starts_with("sealed-v1:"))
        })
        .map(|a| a.id.as_str())
        .collect();
    assert_eq!(
        keyed,
        ["ci", "dev", "prod", "staging", "_tls"],
        "intermediate keys sealed in the store"
    );
    assert!(
        authorities
            .iter()
            .any(|a| a.id == "root" && a.sealed_key.is_none()),
        "no root key in the store"
    );
    let again = ca.server(&[
        "init",
        "--policy",
        s(&example_policy()),
        "--passphrase-file",
        s(&pf),
        "--root-key-out",
        s(&root_key),
    ]);
    again.expect_code(CONFLICT);
}

fn stored_authorities(db: &Path) -> Vec<ca_server::store::AuthorityRecord> {
    use ca_server::store::{SqliteStore, Store};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = SqliteStore::open(db, false).await.expect("open store");
        let all = store.authorities().await.expect("authorities");
        store.close().await;
        all
    })
}

#[test]
fn policy_check_and_explain() {
    let ca = TestCa::new();
    let policy = s(&example_policy()).to_string();
    let run = ca.server(&["policy", "check", "--policy", &policy]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("ci, dev, prod, staging"),
        "{}",
        run.stdout
    );

    let broken = ca.path("broken.toml");
    let text = std::fs::read_to_string(example_policy())
        .expect("policy")
        .replace("dns = [\"{service}.{env}.svc.example.internal\"]\nkey_types = [\"p256\", \"p384\", \"ed25519\", \"rsa\"]\nmax_ttl = \"12h\"", "dns = [\"{service}.example.com\"]");
    std::fs::write(&broken, text).expect("write");
    ca.server(&["policy", "check", "--policy", s(&broken)])
        .expect_code(BAD_REQUEST)
        .expect_stderr("broken.toml: services.api.dns[0]");
    std::fs::write(
        &broken,
        "trust_domain = \"example.internal\"\nsurprise = 1\n",
    )
    .expect("write");
    ca.server(&["policy", "check", "--policy", s(&broken)])
        .expect_code(BAD_REQUEST)
        .expect_stderr("surprise");

    let allow = ca.server(&[
        "policy",
        "explain",
        "--policy",
        &policy,
        "--env",
        "prod",
        "--service",
        "api",
        "--dns",
        "API.prod.svc.example.internal",
    ]);
    allow.expect_code(0);
    assert_eq!(
        allow.stdout.trim(),
        "allow spiffe://example.internal/prod/api dns:api.prod.svc.example.internal ttl:4h"
    );
    let deny = ca.server(&[
        "policy",
        "explain",
        "--policy",
        &policy,
        "--env",
        "dev",
        "--service",
        "api",
        "--dns",
        "api.prod.svc.example.internal",
    ]);
    deny.expect_code(DENIED)
        .expect_stderr("environments.dev.dns_suffixes");
}

#[test]
fn commands_without_a_ca_fail_clearly() {
    let ca = TestCa::new();
    ca.server(&["certs", "list"])
        .expect_code(NOT_FOUND)
        .expect_stderr("run `ca-server init` first");
    ca.server(&["certs", "show", "nothex"])
        .expect_code(BAD_REQUEST)
        .expect_stderr("hex digits");
    let ca = TestCa::init_insecure();
    ca.server(&["certs", "show", "abcd"])
        .expect_code(NOT_FOUND)
        .expect_stderr("no certificate with serial abcd");
    ca.server(&["bundle", "--env", "qa"])
        .expect_code(NOT_FOUND)
        .expect_stderr("unknown environment");
    let blocker = ca.path("file");
    std::fs::write(&blocker, "x").expect("write");
    ca.issue("dev", "api", &[], &blocker, &[])
        .expect_code(BAD_REQUEST)
        .expect_stderr("not a directory");
    assert!(
        certs_json(&ca).is_empty(),
        "an unusable output directory is caught before issuing"
    );
}

#[test]
fn every_command_has_help() {
    let ca = TestCa::new();
    for cmd in [
        vec!["--help"],
        vec!["init", "--help"],
        vec!["policy", "check", "--help"],
        vec!["policy", "explain", "--help"],
        vec!["issue", "--help"],
        vec!["certs", "list", "--help"],
        vec!["certs", "show", "--help"],
        vec!["bundle", "--help"],
        vec!["audit", "--help"],
    ] {
        let run = ca.server(&cmd);
        run.expect_code(0);
        assert!(run.stdout.contains("Usage:"), "{cmd:?}: {}", run.stdout);
    }
}
