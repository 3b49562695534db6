//! End to end: `ca-server backup` of a SQLite CA in the middle of an enrollment load, then
//! `ca-server restore` into a new directory and over the old one. Every certificate acknowledged
//! before the backup started is in the restored CA with identical bytes; the database passes
//! SQLite's integrity check; CRL numbers served after the restore are above every number seen
//! before it; refusals (a live CA without --force, a running server, a live database file as
//! the backup) change nothing. PostgreSQL: `backup` points to pg_dump, and after a
//! pg_dump/pg_restore round trip `restore --database-url` continues the CRL numbers.

#[path = "support/postgres.rs"]
mod postgres;
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::TempPostgres;
use support::{TestCa, curl_download, curl_enroll, list_dir, mode, openssl, run_bounded, s};

const API_CI: &str = "api.ci.svc.example.internal";

/// The certificate PEM of a 201 enrollment answer.
fn certificate_of(json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).expect("201 carries JSON");
    v["certificate"].as_str().expect("certificate").to_string()
}

/// The serial (hex, as openssl prints it) of a certificate PEM.
fn serial_of(ca: &TestCa, pem: &str) -> String {
    let f = ca.path("one.pem");
    std::fs::write(&f, pem).expect("pem");
    let run = openssl(["x509", "-noout", "-serial", "-in", s(&f)]);
    run.expect_code(0);
    run.stdout.trim().trim_start_matches("serial=").to_string()
}

/// The CRL number of a DER CRL file, read by openssl.
fn crl_number(file: &Path) -> u128 {
    let run = openssl([
        "crl",
        "-inform",
        "DER",
        "-noout",
        "-crlnumber",
        "-in",
        s(file),
    ]);
    run.expect_code(0);
    let hex = run
        .stdout
        .trim()
        .trim_start_matches("crlNumber=")
        .trim_start_matches("0x");
    u128::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("CRL number {hex:?}: {e}"))
}

/// The CRL number of the `ci` CRL served over plain HTTP at `http_url`.
fn served_crl_number(ca: &TestCa, http_url: &str) -> u128 {
    let file = ca.path("served.crl");
    let status = curl_download(&[&format!("{http_url}/crl/ci.crl")], &file);
    assert_eq!(status, 200, "GET /crl/ci.crl");
    crl_number(&file)
}

/// `sqlite3 FILE 'PRAGMA integrity_check'`.
fn integrity(file: &Path) -> String {
    let mut c = Command::new("sqlite3");
    c.arg(file)
        .arg("PRAGMA integrity_check;")
        .stdin(Stdio::null());
    let run = run_bounded(c, Duration::from_secs(30));
    format!("{}{}", run.stdout.trim(), run.stderr.trim())
}

/// `sqlite3 FILE SQL` (one value).
fn sqlite_value(file: &Path, sql: &str) -> String {
    support::sqlite3(&[], file, sql).trim().to_string()
}

/// Every file of `dir` with its contents.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    list_dir(dir)
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(dir.join(&name)).unwrap_or_default();
            (name, bytes)
        })
        .collect()
}

fn json(run: &support::Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", run.stdout, run.stderr))
}

/// `certs show SERIAL --json` of `ca`: the stored PEM and status, `None` when unknown (exit 5).
fn stored(ca: &TestCa, serial: &str) -> Option<(String, String)> {
    let run = ca.server(&["certs", "show", serial, "--json"]);
    if run.code == Some(5) {
        return None;
    }
    run.expect_code(0);
    let v = json(&run);
    Some((
        v["pem"].as_str().expect("pem").to_string(),
        v["status"].as_str().expect("status").to_string(),
    ))
}

/// SHA-256 of a certificate's DER, lowercase hex without colons (as the store keeps it).
fn fingerprint_of(ca: &TestCa, pem: &str) -> String {
    let f = ca.path("one.pem");
    std::fs::write(&f, pem).expect("pem");
    let run = openssl(["x509", "-noout", "-fingerprint", "-sha256", "-in", s(&f)]);
    run.expect_code(0);
    let (_, hex) = run.stdout.trim().split_once('=').expect("fingerprint line");
    hex.replace(':', "").to_lowercase()
}

/// Inode number of `path`: a replaced file has a new one.
fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("meta").ino()
}

#[test]
fn backup_under_load_and_restore_keep_every_acknowledged_certificate() {
    let ca = TestCa::init_insecure();
    let token = ca.ci_token(1000);
    let minted = ca.server(&[
        "token",
        "create",
        "--env",
        "ci",
        "--service",
        "api",
        "--ttl",
        "1h",
    ]);
    minted.expect_code(0);
    let one_use = minted.stdout.trim().to_string();
    let root = ca.path("root.pem");
    let bundle = ca.server(&["bundle", "--env", "ci"]);
    bundle.expect_code(0);
    std::fs::write(&root, &bundle.stdout).expect("root");
    let csr_pem = support::openssl_p256_csr(&ca.path("key.pem"), &ca.path("req.csr"), "api");
    let body_with = |name: &str, token: &str| {
        let path = ca.path(name);
        std::fs::write(
            &path,
            serde_json::json!({ "token": token, "csr": csr_pem, "dns": [API_CI] }).to_string(),
        )
        .expect("body");
        format!("@{}", s(&path))
    };
    let body = body_with("body.json", &token);
    let one_use_body = body_with("one-use.json", &one_use);

    let mut server = ca.serve(&["--http-listen", "127.0.0.1:0"]);
    let http = server.http_url.clone().expect("http listener");
    let mut crl_numbers_seen = vec![served_crl_number(&ca, &http)];

    // Enrollment load: every acknowledged certificate is appended as soon as it arrives.
    let received: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (received, stop) = (received.clone(), stop.clone());
            let (url, root, body) = (server.url.clone(), s(&root).to_string(), body.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match curl_enroll(&url, &root, &body) {
                        Some((201, json)) => {
                            received.lock().expect("lock").push(certificate_of(&json));
                        }
                        other => panic!("enrollment under load failed: {other:?}"),
                    }
                }
            })
        })
        .collect();
    let wait_for = |n: usize| {
        let start = Instant::now();
        while received.lock().expect("lock").len() < n {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the load stalled below {n} certificates"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(30);

    // Acknowledged before the backup started: everything received up to this point.
    let before_backup = received.lock().expect("lock").clone();
    let backup_file = ca.path("backups/ca-backup.db");
    std::fs::create_dir(ca.path("backups")).expect("mkdir");
    let backup = ca.server(&["backup", "--out", s(&backup_file), "--json"]);
    backup.expect_code(0);
    let taken = json(&backup);
    wait_for(before_backup.len() + 20);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    let all_received = received.lock().expect("lock").clone();

    assert_eq!(mode(&backup_file), 0o600, "the backup holds sealed CA keys");
    assert_eq!(
        taken["bytes"].as_u64(),
        std::fs::metadata(&backup_file).ok().map(|m| m.len())
    );
    assert!(
        taken["certificates"].as_u64().expect("certificates") >= before_backup.len() as u64,
        "{taken}"
    );
    let backup_audit_id = taken["newest_audit_id"].as_i64().expect("audit id");
    assert_eq!(integrity(&backup_file), "ok");
    assert_eq!(
        list_dir(&ca.path("backups")),
        ["ca-backup.db"],
        "no staging files left behind"
    );

    // A second backup to the same name is refused and leaves the first alone.
    let first_bytes = std::fs::read(&backup_file).expect("read");
    ca.server(&["backup", "--out", s(&backup_file)])
        .expect_code(6)
        .expect_stderr("already exists");
    assert_eq!(std::fs::read(&backup_file).expect("read"), first_bytes);

    // After the backup: a one-use token is spent, a certificate from before is revoked, and more
    // CRLs are published.
    let late = curl_enroll(&server.url, s(&root), &one_use_body).expect("answer");
    assert_eq!(late.0, 201, "{}", late.1);
    let late_serial = serial_of(&ca, &certificate_of(&late.1));
    let late_fingerprint = fingerprint_of(&ca, &certificate_of(&late.1));
    let spent = curl_enroll(&server.url, s(&root), &one_use_body).expect("answer");
    assert_eq!(
        spent.0, 401,
        "a spent one-use token is refused: {}",
        spent.1
    );
    let revoked_serial = serial_of(&ca, &before_backup[0]);
    ca.server(&["revoke", &revoked_serial, "--yes"])
        .expect_code(0);
    for i in 0..4 {
        let out = ca.path(&format!("late-{i}.crl"));
        ca.server(&["crl", "--env", "ci", "--out", s(&out)])
            .expect_code(0);
        crl_numbers_seen.push(crl_number(&out));
    }
    crl_numbers_seen.push(served_crl_number(&ca, &http));

    // Refusals while the server runs change nothing.
    let live_files = list_dir(&ca.data);
    let live_inode = inode(&ca.data.join("ca.db"));
    ca.server(&["restore", s(&backup_file)])
        .expect_code(6)
        .expect_stderr("--force");
    ca.server(&["restore", s(&backup_file), "--force"])
        .expect_code(6)
        .expect_stderr("is running");
    assert_eq!(list_dir(&ca.data), live_files);
    assert_eq!(inode(&ca.data.join("ca.db")), live_inode);
    let elsewhere = TestCa::new();
    elsewhere
        .server(&["restore", s(&ca.data.join("ca.db"))])
        .expect_code(2)
        .expect_stderr("ca.db-wal");
    elsewhere
        .server(&["restore", s(&root)])
        .expect_code(2)
        .expect_stderr("not a SQLite database");
    assert!(
        !elsewhere.data.exists(),
        "a refused restore creates nothing"
    );
    served_crl_number(&ca, &http);
    assert_eq!(server.terminate(), Some(0));

    // Without --force, a stopped CA is not replaced either.
    let files_before = snapshot(&ca.data);
    ca.server(&["restore", s(&backup_file)])
        .expect_code(6)
        .expect_stderr("already holds a CA");
    assert_eq!(
        snapshot(&ca.data),
        files_before,
        "a refused restore changes nothing"
    );
    let max_seen = *crl_numbers_seen.iter().max().expect("numbers");

    // Restore into a new directory.
    let restored = TestCa::new();
    let run = restored.server(&["restore", s(&backup_file), "--json"]);
    run.expect_code(0);
    let report = json(&run);
    assert_eq!(
        report["backup_newest_audit_id"].as_i64(),
        Some(backup_audit_id)
    );
    assert!(report["restore_audit_id"].as_i64() > Some(backup_audit_id));
    assert!(report["previous"].is_null());
    let restored_db = restored.data.join("ca.db");
    assert_eq!(list_dir(&restored.data), ["ca.db"]);
    assert_eq!(mode(&restored.data), 0o700);
    assert_eq!(mode(&restored_db), 0o600);
    assert_eq!(integrity(&restored_db), "ok");
    assert_eq!(
        std::fs::read(&backup_file).expect("read"),
        first_bytes,
        "restoring does not touch the backup"
    );
    let audit = restored.server(&["audit", "--json", "--limit", "100000"]);
    audit.expect_code(0);
    let last: serde_json::Value =
        serde_json::from_str(audit.stdout.lines().last().expect("entries")).expect("json");
    assert_eq!(last["action"], "restore", "{last}");

    let server2 = restored.serve(&["--http-listen", "127.0.0.1:0"]);
    let http2 = server2.http_url.clone().expect("http listener");
    for pem in &before_backup {
        let serial = serial_of(&ca, pem);
        let (stored_pem, _) = stored(&restored, &serial)
            .unwrap_or_else(|| panic!("{serial} was acknowledged before the backup but is lost"));
        assert_eq!(
            &stored_pem, pem,
            "{serial} is not stored as it was acknowledged"
        );
    }
    let after_backup: Vec<&String> = all_received.iter().skip(before_backup.len()).collect();
    assert!(!after_backup.is_empty());
    assert_eq!(
        stored(&restored, &late_serial),
        None,
        "a certificate issued after the backup is not in the restored record"
    );
    assert_eq!(
        stored(&restored, &revoked_serial).map(|(_, status)| status),
        Some("valid".to_string()),
        "a revocation after the backup is not in the restored record"
    );
    let crl_after = served_crl_number(&restored, &http2);
    assert!(
        crl_after > max_seen,
        "CRL number {crl_after} after the restore is not above {max_seen} published before"
    );
    let again = curl_enroll(&server2.url, s(&root), &one_use_body).expect("answer");
    assert_eq!(
        again.0, 201,
        "a token use spent after the backup is usable again in the restored copy: {}",
        again.1
    );
    // A holder of a certificate issued after the backup cannot renew here; the refusal names it.
    let late_pem = ca.path("late.pem");
    std::fs::write(&late_pem, certificate_of(&late.1)).expect("write");
    let renew = support::curl(&[
        "--cacert",
        s(&root),
        "--cert",
        s(&late_pem),
        "--key",
        s(&ca.path("key.pem")),
        "-H",
        "content-type: application/json",
        "--data-binary",
        &serde_json::json!({ "csr": csr_pem }).to_string(),
        &format!("{}/v1/renew", server2.url),
    ]);
    assert_eq!(renew.status, 401, "{}", renew.body);
    let audit = restored.server(&["audit", "--limit", "100000"]);
    audit.expect_code(0);
    assert!(
        audit
            .stdout
            .to_lowercase()
            .contains(&format!("cert:{} renew denied", late_serial.to_lowercase())),
        "{}",
        audit.stdout
    );
    restored.server(&["audit", "verify"]).expect_code(0);
    drop(server2);

    // Restore over the old directory with --force: the previous database is kept whole.
    let run = ca.server(&["restore", s(&backup_file), "--force", "--json"]);
    run.expect_code(0);
    let report = json(&run);
    let kept = std::path::PathBuf::from(report["previous"].as_str().expect("previous kept"));
    let kept_name = kept
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_string();
    assert!(
        kept_name.starts_with("ca.db.before-restore-"),
        "{kept_name}"
    );
    assert_eq!(list_dir(&ca.data), ["ca.db".to_string(), kept_name]);
    assert_eq!(mode(&ca.data.join("ca.db")), 0o600);
    assert_eq!(mode(&kept), 0o600);
    assert_eq!(integrity(&ca.data.join("ca.db")), "ok");
    assert_eq!(integrity(&kept), "ok");
    assert_eq!(
        sqlite_value(
            &kept,
            &format!("SELECT COUNT(*) FROM certificates WHERE fingerprint = '{late_fingerprint}'")
        ),
        "1",
        "the replaced database still holds what came after the backup"
    );
    assert_eq!(stored(&ca, &late_serial), None);
    for pem in before_backup.iter().take(5) {
        assert!(stored(&ca, &serial_of(&ca, pem)).is_some());
    }
    let server3 = ca.serve(&["--http-listen", "127.0.0.1:0"]);
    let crl_forced = served_crl_number(&ca, server3.http_url.as_deref().expect("http"));
    assert!(crl_forced > max_seen, "{crl_forced} <= {max_seen}");
}

#[test]
fn postgres_backup_is_pg_dump_and_restore_continues_crl_numbers() {
    let pg = TempPostgres::start();
    let url = pg.create_database("ca");
    let ca = support::init_insecure_on_postgres(&url);

    let out = ca.path("never.db");
    ca.server(&["backup", "--out", s(&out)])
        .expect_code(2)
        .expect_stderr("pg_dump");
    assert!(!out.exists());

    let mut published = 0;
    for i in 0..3 {
        let crl = ca.path(&format!("before-{i}.crl"));
        ca.server(&["crl", "--env", "ci", "--out", s(&crl)])
            .expect_code(0);
        published = crl_number(&crl);
    }

    // The README's round trip: pg_dump of the whole database, pg_restore into an empty one.
    let dump = pg.dir().join("ca.dump");
    let mut c = pg.program("pg_dump");
    c.args(["--format=custom", "--file"]).arg(&dump).arg(&url);
    let run = run_bounded(c, Duration::from_secs(60));
    assert!(run.ok(), "pg_dump: {}", run.stderr);
    let copy_url = pg.create_database("restored");
    let mut c = pg.program("pg_restore");
    c.args(["--exit-on-error", "--dbname", &copy_url])
        .arg(&dump);
    let run = run_bounded(c, Duration::from_secs(60));
    assert!(run.ok(), "pg_restore: {}", run.stderr);

    let copy = TestCa::on_postgres(&copy_url);
    copy.server(&["restore", s(&dump)])
        .expect_code(2)
        .expect_stderr("pg_restore");
    let run = copy.server(&["restore", "--json"]);
    run.expect_code(0);
    let floor = json(&run)["crl_number_floor"].as_u64().expect("floor");
    assert!(u128::from(floor) > published);

    let crl = ca.path("after.crl");
    copy.server(&["crl", "--env", "ci", "--out", s(&crl)])
        .expect_code(0);
    let after = crl_number(&crl);
    assert!(after > u128::from(floor) && after > published, "{after}");
    let audit = copy.server(&["audit", "--json", "--limit", "100000"]);
    audit.expect_code(0);
    assert!(
        audit
            .stdout
            .lines()
            .any(|l| l.contains("\"action\":\"restore\"")),
        "{}",
        audit.stdout
    );
}
