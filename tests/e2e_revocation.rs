//! End to end: revocation through the CLI (local and remote), passive revocation at the API,
//! CRLs checked by `openssl verify` and by nginx, OCSP checked by `openssl ocsp`.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::nginx::{Nginx, Site};
use support::{Server, TestCa, curl, openssl, s};

const API_DEV: &str = "api.dev.svc.example.internal";

/// A CA serving HTTPS and plain HTTP, with the files relying parties need.
struct Pki {
    ca: TestCa,
    server: Server,
    http: String,
    /// Root certificate only.
    root: PathBuf,
    /// Root + dev intermediate.
    dev_bundle: PathBuf,
    /// Dev intermediate only.
    dev: PathBuf,
}

impl Pki {
    fn new(ca: TestCa) -> Pki {
        let server = ca.serve(&["--http-listen", "127.0.0.1:0"]);
        let http = server.http_url.clone().expect("http listener");
        let dev_bundle = ca.path("dev-bundle.pem");
        ca.server(&["bundle", "--env", "dev", "--out", s(&dev_bundle)])
            .expect_code(0);
        let pem = std::fs::read_to_string(&dev_bundle).expect("bundle");
        let split = pem.find("-----END CERTIFICATE-----").expect("root")
            + "-----END CERTIFICATE-----\n".len();
        let root = ca.path("root.pem");
        std::fs::write(&root, &pem[..split]).expect("write");
        let dev = ca.path("dev.pem");
        std::fs::write(&dev, &pem[split..]).expect("write");
        Pki {
            ca,
            server,
            http,
            root,
            dev_bundle,
            dev,
        }
    }

    /// `ca-server issue` with CRL/OCSP pointers to the plain-HTTP listener; returns the out dir.
    fn issue(&self, name: &str, service: &str, dns: &str) -> PathBuf {
        let out = self.ca.path(name);
        self.ca
            .issue("dev", service, &[dns], &out, &["--public-url", &self.http])
            .expect_code(0);
        out
    }

    fn serial_of(&self, cert: &Path) -> String {
        let out = openssl(["x509", "-noout", "-serial", "-in", s(cert)]);
        out.stdout
            .trim()
            .trim_start_matches("serial=")
            .to_lowercase()
    }

    /// Downloads a CRL over plain HTTP (DER) and returns its PEM path.
    fn fetch_crl(&self, name: &str) -> PathBuf {
        let der = self.ca.path(&format!("{name}-{}.crl", unique()));
        let url = format!("{}/crl/{name}.crl", self.http);
        assert_eq!(support::curl_download(&[&url], &der), 200, "{url}");
        let pem = self.ca.path(&format!("{name}-{}.crl.pem", unique()));
        openssl(["crl", "-inform", "DER", "-in", s(&der), "-out", s(&pem)]).expect_code(0);
        pem
    }

    /// dev CRL + root CRL in one file, as `-crl_check_all` and nginx's `ssl_crl` need.
    fn crls(&self) -> PathBuf {
        let all = self.ca.path(&format!("crls-{}.pem", unique()));
        let text = format!(
            "{}{}",
            std::fs::read_to_string(self.fetch_crl("dev")).expect("dev crl"),
            std::fs::read_to_string(self.fetch_crl("root")).expect("root crl")
        );
        std::fs::write(&all, text).expect("write");
        all
    }

    fn verify_with_crls(&self, cert: &Path) -> support::Run {
        let crls = self.crls();
        openssl([
            "verify",
            "-crl_check_all",
            "-CAfile",
            s(&self.dev_bundle),
            "-CRLfile",
            s(&crls),
            s(cert),
        ])
    }

    fn ocsp(&self, cert: &Path, extra: &[&str]) -> String {
        let url = format!("{}/ocsp", self.http);
        let mut args = vec![
            "ocsp",
            "-issuer",
            s(&self.dev),
            "-cert",
            s(cert),
            "-url",
            &url,
            "-verify_other",
            s(&self.dev),
            "-CAfile",
            s(&self.root),
        ];
        args.extend_from_slice(extra);
        let run = openssl(&args);
        format!("{}{}", run.stdout, run.stderr)
    }
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

fn renew_status(pki: &Pki, cert: &Path, key: &Path) -> support::Http {
    let key2 = pki.ca.path(&format!("renew-{}.key", unique()));
    let csr = pki.ca.path(&format!("renew-{}.csr", unique()));
    support::openssl_p256_csr(&key2, &csr, "x");
    let body = pki.ca.path(&format!("renew-{}.json", unique()));
    std::fs::write(
        &body,
        serde_json::json!({ "csr": std::fs::read_to_string(&csr).expect("csr") }).to_string(),
    )
    .expect("write");
    let data = format!("@{}", s(&body));
    let url = format!("{}/v1/renew", pki.server.url);
    curl(&[
        "--cacert",
        s(&pki.root),
        "--cert",
        s(cert),
        "--key",
        s(key),
        "-H",
        "content-type: application/json",
        "--data-binary",
        &data,
        &url,
    ])
}

#[test]
fn crl_and_ocsp_follow_a_revocation() {
    let pki = Pki::new(TestCa::init_insecure());
    let out = pki.issue("leaf", "api", API_DEV);
    let cert = out.join("cert.pem");
    let serial = pki.serial_of(&cert);
    let text = openssl(["x509", "-noout", "-text", "-in", s(&cert)])
        .stdout
        .clone();
    assert!(
        text.contains(&format!("URI:{}/crl/dev.crl", pki.http)),
        "{text}"
    );
    assert!(
        text.contains(&format!("OCSP - URI:{}/ocsp", pki.http)),
        "{text}"
    );

    // Before: openssl accepts with CRLs, OCSP says good (with a nonce, checked by openssl).
    let ok = pki.verify_with_crls(&cert);
    ok.expect_code(0);
    let first_number = openssl([
        "crl",
        "-noout",
        "-crlnumber",
        "-in",
        s(&pki.fetch_crl("dev")),
    ])
    .stdout
    .clone();
    let good = pki.ocsp(&cert, &[]);
    assert!(
        good.contains("Response verify OK") && good.contains(": good"),
        "{good}"
    );
    assert!(
        !good.contains("WARNING") && !good.contains("Nonce Verify error"),
        "{good}"
    );
    assert_eq!(renew_status(&pki, &cert, &out.join("key.pem")).status, 201);

    // Revoke; the command returns, and at once the API refuses the certificate.
    let colon_serial: String = serial.to_uppercase();
    let run = pki.ca.server(&[
        "revoke",
        &colon_serial,
        "--reason",
        "key-compromise",
        "--json",
    ]);
    run.expect_code(0);
    let started = Instant::now();
    let refused = renew_status(&pki, &cert, &out.join("key.pem"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refusal took {:?}",
        started.elapsed()
    );
    let v = refused.expect_problem(403, "forbidden");
    assert!(
        v["detail"].as_str().unwrap_or("").contains("revoked"),
        "{v}"
    );
    let shown = pki.ca.server(&["certs", "show", &serial, "--json"]);
    let shown: serde_json::Value = serde_json::from_str(&shown.stdout).expect("json");
    assert_eq!(
        (
            shown["status"].as_str(),
            shown["revocation_reason"].as_str()
        ),
        (Some("revoked"), Some("key-compromise"))
    );

    // CRL: reissued with a higher number, lists the serial with its reason; openssl refuses.
    let crl = pki.fetch_crl("dev");
    let crl_text = openssl(["crl", "-noout", "-text", "-in", s(&crl)])
        .stdout
        .clone();
    assert!(crl_text.to_lowercase().contains(&serial), "{crl_text}");
    assert!(crl_text.contains("Key Compromise"), "{crl_text}");
    let second_number = openssl(["crl", "-noout", "-crlnumber", "-in", s(&crl)])
        .stdout
        .clone();
    assert_ne!(first_number, second_number);
    let bad = pki.verify_with_crls(&cert);
    assert_ne!(bad.code, Some(0));
    assert!(
        format!("{}{}", bad.stdout, bad.stderr).contains("certificate revoked"),
        "{bad:?}"
    );

    // OCSP: revoked, with time and reason; also through GET with a base64 request.
    let revoked = pki.ocsp(&cert, &[]);
    assert!(
        revoked.contains(": revoked") && revoked.contains("Reason: keyCompromise"),
        "{revoked}"
    );
    let req = pki.ca.path("req.der");
    openssl([
        "ocsp",
        "-issuer",
        s(&pki.dev),
        "-cert",
        s(&cert),
        "-no_nonce",
        "-reqout",
        s(&req),
    ])
    .expect_code(0);
    let b64 = openssl(["base64", "-A", "-in", s(&req)])
        .stdout
        .trim()
        .replace('/', "%2F")
        .replace('+', "%2B")
        .replace('=', "%3D");
    let resp = pki.ca.path("resp.der");
    assert_eq!(
        support::curl_download(&[&format!("{}/ocsp/{b64}", pki.http)], &resp),
        200
    );
    let via_get = openssl([
        "ocsp",
        "-respin",
        s(&resp),
        "-issuer",
        s(&pki.dev),
        "-cert",
        s(&cert),
        "-no_nonce",
        "-verify_other",
        s(&pki.dev),
        "-CAfile",
        s(&pki.root),
    ]);
    assert!(via_get.stdout.contains(": revoked"), "{via_get:?}");

    // A serial this CA never issued is unknown; errors are clear.
    let unknown = {
        let url = format!("{}/ocsp", pki.http);
        let run = openssl([
            "ocsp",
            "-issuer",
            s(&pki.dev),
            "-serial",
            "0x1234",
            "-url",
            &url,
            "-verify_other",
            s(&pki.dev),
            "-CAfile",
            s(&pki.root),
        ]);
        format!("{}{}", run.stdout, run.stderr)
    };
    assert!(unknown.contains("0x1234: unknown"), "{unknown}");
    pki.ca
        .server(&["revoke", &serial, "--yes"])
        .expect_code(6)
        .expect_stderr("already revoked");
    pki.ca
        .server(&["revoke", "abcdef"])
        .expect_code(5)
        .expect_stderr("no certificate with serial abcdef");
    pki.ca
        .server(&["revoke", &serial, "--reason", "certificate-hold"])
        .expect_code(2)
        .expect_stderr("unknown revocation reason");
    let audit = pki.ca.server(&["audit"]).stdout.clone();
    assert!(
        audit.contains(&format!("revoke ok dev/api serial={serial}")),
        "{audit}"
    );
}

#[test]
fn revoke_by_identity_with_dry_run_and_confirmation() {
    let pki = Pki::new(TestCa::init_insecure());
    let a1 = pki.serial_of(&pki.issue("a1", "api", API_DEV).join("cert.pem"));
    let a2 = pki.serial_of(&pki.issue("a2", "api", API_DEV).join("cert.pem"));
    let w = pki.serial_of(
        &pki.issue("w", "web", "web.dev.svc.example.internal")
            .join("cert.pem"),
    );

    let dry = pki.ca.server(&[
        "revoke",
        "--env",
        "dev",
        "--service",
        "api",
        "--dry-run",
        "--json",
    ]);
    dry.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&dry.stdout).expect("json");
    let mut listed: Vec<String> = v["certificates"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["serial"].as_str().unwrap_or("").to_string())
        .collect();
    listed.sort();
    let mut want = vec![a1.clone(), a2.clone()];
    want.sort();
    assert_eq!(listed, want);
    assert_eq!(v["dry_run"], true);
    let valid = pki
        .ca
        .server(&[
            "certs", "list", "--env", "dev", "--status", "valid", "--json",
        ])
        .stdout
        .clone();
    assert_eq!(
        valid.matches("\"serial\"").count(),
        3,
        "a dry run changes nothing"
    );

    // Without --yes and without a terminal: refused, nothing revoked.
    pki.ca
        .server(&["revoke", "--env", "dev", "--service", "api"])
        .expect_code(2)
        .expect_stderr("--yes");
    let valid = pki
        .ca
        .server(&[
            "certs", "list", "--env", "dev", "--status", "valid", "--json",
        ])
        .stdout
        .clone();
    assert_eq!(valid.matches("\"serial\"").count(), 3);

    pki.ca
        .server(&[
            "revoke",
            "--env",
            "dev",
            "--service",
            "api",
            "--yes",
            "--reason",
            "cessation-of-operation",
        ])
        .expect_code(0);
    let revoked = pki
        .ca
        .server(&["certs", "list", "--status", "revoked", "--json"])
        .stdout
        .clone();
    assert!(
        revoked.contains(&a1) && revoked.contains(&a2) && !revoked.contains(&w),
        "{revoked}"
    );
    pki.ca
        .server(&["revoke", "--env", "dev", "--service", "api", "--yes"])
        .expect_code(5)
        .expect_stderr("no live certificates");
    let crl_text = openssl(["crl", "-noout", "-text", "-in", s(&pki.fetch_crl("dev"))])
        .stdout
        .clone();
    assert_eq!(
        crl_text.matches("Cessation Of Operation").count(),
        2,
        "{crl_text}"
    );
}

#[test]
fn remote_revoke_needs_an_admin_and_holders_revoke_only_themselves() {
    let pki = Pki::new(TestCa::init_insecure());
    let victim = pki.issue("victim", "api", API_DEV);
    let victim_serial = pki.serial_of(&victim.join("cert.pem"));
    let outsider = pki.issue("outsider", "api", API_DEV);
    let ops = pki.ca.path("ops");
    pki.ca.issue("prod", "ops", &[], &ops, &[]).expect_code(0);

    let remote = |dir: &Path, serial: &str| {
        pki.ca.server(&[
            "revoke",
            serial,
            "--reason",
            "superseded",
            "--server",
            &pki.server.url,
            "--cert",
            s(&dir.join("chain.pem")),
            "--key",
            s(&dir.join("key.pem")),
            "--ca-bundle",
            s(&pki.root),
            "--json",
        ])
    };
    remote(&outsider, &victim_serial)
        .expect_code(3)
        .expect_stderr("not an admin identity");
    let done = remote(&ops, &victim_serial);
    done.expect_code(0);
    assert!(
        done.stdout.contains(&victim_serial) && done.stdout.contains("superseded"),
        "{}",
        done.stdout
    );
    remote(&ops, &victim_serial)
        .expect_code(6)
        .expect_stderr("already revoked");

    // A holder revokes its own certificate over mTLS, only with an allowed reason.
    let own = pki.issue("own", "api", API_DEV);
    let own_serial = pki.serial_of(&own.join("cert.pem"));
    let url = format!("{}/v1/revoke", pki.server.url);
    let post = |body: serde_json::Value| {
        let f = pki.ca.path(&format!("self-{}.json", unique()));
        std::fs::write(&f, body.to_string()).expect("write");
        let data = format!("@{}", s(&f));
        curl(&[
            "--cacert",
            s(&pki.root),
            "--cert",
            s(&own.join("cert.pem")),
            "--key",
            s(&own.join("key.pem")),
            "-H",
            "content-type: application/json",
            "--data-binary",
            &data,
            &url,
        ])
    };
    post(serde_json::json!({ "reason": "unspecified" })).expect_problem(403, "forbidden");
    post(serde_json::json!({ "reason": "superseded", "serial": victim_serial }))
        .expect_problem(403, "forbidden");
    let ok = post(serde_json::json!({ "reason": "key-compromise" }));
    assert_eq!(ok.status, 200, "{}", ok.body);
    let shown = pki
        .ca
        .server(&["certs", "show", &own_serial, "--json"])
        .stdout
        .clone();
    assert!(shown.contains("\"revoked\""), "{shown}");
    // The revoked certificate can no longer call anything that needs an identity.
    post(serde_json::json!({ "reason": "key-compromise" })).expect_problem(403, "forbidden");
}

#[test]
fn offline_root_crl_is_made_with_the_root_key_file() {
    let mut ca = TestCa::new();
    let pf = ca.path("pass");
    std::fs::write(&pf, "an offline root passphrase\n").expect("write");
    let root_key = ca.path("root.key");
    ca.server(&[
        "init",
        "--policy",
        s(&support::example_policy()),
        "--passphrase-file",
        s(&pf),
        "--root-key-out",
        s(&root_key),
    ])
    .expect_code(0);
    ca.passphrase_file = Some(pf);
    let pki = Pki::new(ca);
    let r = curl(&[&format!("{}/crl/root.crl", pki.http)]);
    let v = r.expect_problem(404, "not-found");
    assert!(
        v["detail"]
            .as_str()
            .unwrap_or("")
            .contains("root key is offline"),
        "{v}"
    );
    let out = pki.ca.path("root.crl");
    pki.ca
        .server(&["crl", "--root", "--out", s(&out)])
        .expect_code(5)
        .expect_stderr("root key is offline");
    pki.ca
        .server(&[
            "crl",
            "--root",
            "--root-key",
            s(&root_key),
            "--out",
            s(&out),
        ])
        .expect_code(0);
    openssl([
        "crl",
        "-inform",
        "DER",
        "-in",
        s(&out),
        "-CAfile",
        s(&pki.root),
        "-noout",
    ])
    .expect_code(0);
    let served = pki.fetch_crl("root");
    let leaf = pki.issue("leaf", "api", API_DEV);
    pki.verify_with_crls(&leaf.join("cert.pem")).expect_code(0);
    assert!(served.exists());
}

/// A request to `nginx` with a client certificate.
fn nginx_get(nginx: &Nginx, root: &Path, cert: &Path, key: &Path) -> support::Http {
    curl(&[
        "--unix-socket",
        s(&nginx.socket),
        "--cacert",
        s(root),
        "--cert",
        s(cert),
        "--key",
        s(key),
        "https://web.dev.svc.example.internal/",
    ])
}

#[test]
fn nginx_refuses_a_revoked_client_after_a_crl_refresh() {
    let pki = Pki::new(TestCa::init_insecure());
    let web = pki.issue("web", "web", "web.dev.svc.example.internal");
    let client = pki.issue("client", "api", API_DEV);
    let spare = pki.issue("spare", "api", API_DEV);
    let crls = pki.ca.path("nginx-crls.pem");
    std::fs::copy(pki.crls(), &crls).expect("crls");
    // nginx from Debian as an independent mTLS server: it trusts our bundle and checks our CRLs.
    let nginx = Nginx::start(
        pki.ca.tmp.path(),
        &Site {
            name: "web.dev.svc.example.internal",
            server_dir: &web,
            client_ca: &pki.dev_bundle,
            verify_depth: 2,
            crl: Some(&crls),
        },
    );

    let ok = nginx_get(
        &nginx,
        &pki.root,
        &client.join("cert.pem"),
        &client.join("key.pem"),
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(ok.body.contains("CN=api"), "{}", ok.body);

    let serial = pki.serial_of(&client.join("cert.pem"));
    pki.ca
        .server(&["revoke", &serial, "--reason", "key-compromise"])
        .expect_code(0);
    std::fs::copy(pki.crls(), &crls).expect("crls");
    nginx.reload();
    // A reload swaps workers; new handshakes see the new CRL within moments.
    let start = Instant::now();
    loop {
        let r = nginx_get(
            &nginx,
            &pki.root,
            &client.join("cert.pem"),
            &client.join("key.pem"),
        );
        if r.status == 400 {
            assert!(r.body.contains("SSL certificate error"), "{}", r.body);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nginx still accepts the revoked certificate: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let still = nginx_get(
        &nginx,
        &pki.root,
        &spare.join("cert.pem"),
        &spare.join("key.pem"),
    );
    assert_eq!(
        still.status, 200,
        "an unrevoked certificate still works: {still:?}"
    );
}
