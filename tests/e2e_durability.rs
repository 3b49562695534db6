//! End to end: SIGKILL of `ca-server serve` under concurrent enrollment load. Every certificate a
//! client received must be stored with identical bytes, the database must pass SQLite's
//! integrity check, and the restarted server must go on issuing (serials reserved ahead and lost
//! with the process are simply never used).

mod support;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{TestCa, curl_enroll, openssl, run_bounded, s};

const API_CI: &str = "api.ci.svc.example.internal";

#[test]
fn sigkill_under_load_loses_no_acknowledged_certificate() {
    let ca = TestCa::init_insecure();
    let token = ca.ci_token(1000);
    let root = ca.path("root.pem");
    let bundle = ca.server(&["bundle", "--env", "ci"]);
    bundle.expect_code(0);
    std::fs::write(&root, &bundle.stdout).expect("root");
    let key = ca.path("key.pem");
    let csr = ca.path("req.csr");
    let csr_pem = support::openssl_p256_csr(&key, &csr, "api");
    let body = ca.path("body.json");
    std::fs::write(
        &body,
        serde_json::json!({
            "token": token,
            "csr": csr_pem,
            "dns": [API_CI],
        })
        .to_string(),
    )
    .expect("body");
    let body_arg = format!("@{}", s(&body));

    let server = ca.serve(&[]);
    let url = server.url.clone();
    let received: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (received, stop) = (received.clone(), stop.clone());
            let (url, root, body) = (url.clone(), s(&root).to_string(), body_arg.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match curl_enroll(&url, &root, &body) {
                        Some((201, json)) => {
                            let v: serde_json::Value =
                                serde_json::from_str(&json).expect("201 carries JSON");
                            let pem = v["certificate"].as_str().expect("certificate").to_string();
                            received.lock().expect("lock").push(pem);
                        }
                        // The server is gone: this client is done.
                        _ => break,
                    }
                }
            })
        })
        .collect();

    // Let the load run, then kill the server in the middle of it.
    let start = Instant::now();
    while received.lock().expect("lock").len() < 40 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the load never got going"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.signal("KILL");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    drop(server);
    let received = received.lock().expect("lock").clone();
    assert!(received.len() >= 40);

    // Every acknowledged certificate is stored, byte for byte.
    for pem in &received {
        let serial = {
            let f = ca.path("one.pem");
            std::fs::write(&f, pem).expect("pem");
            let run = openssl(["x509", "-noout", "-serial", "-in", s(&f)]);
            run.expect_code(0);
            run.stdout.trim().trim_start_matches("serial=").to_string()
        };
        let shown = ca.server(&["certs", "show", &serial, "--json"]);
        shown.expect_code(0);
        let v: serde_json::Value = serde_json::from_str(&shown.stdout).expect("json");
        assert_eq!(
            v["pem"].as_str().map(str::trim),
            Some(pem.trim()),
            "certificate {serial} was acknowledged but is not stored as sent"
        );
    }

    // The database is whole.
    let mut check = Command::new("sqlite3");
    check
        .arg(ca.data.join("ca.db"))
        .arg("PRAGMA integrity_check;")
        .stdin(Stdio::null());
    let run = run_bounded(check, Duration::from_secs(30));
    assert_eq!(
        run.stdout.trim(),
        "ok",
        "integrity_check: {}{}",
        run.stdout,
        run.stderr
    );

    // A restarted server issues again.
    let server = ca.serve(&[]);
    let again = curl_enroll(&server.url, s(&root), &body_arg).expect("answer");
    assert_eq!(again.0, 201, "{}", again.1);
}
