//! End to end on PostgreSQL: three `ca-server serve` replicas on loopback share one throwaway
//! PostgreSQL while clients spread enrollments, renewals and revocations over them, and four
//! faults strike in turn: SIGKILL of a replica mid-load, SIGKILL of the replica that last ran the
//! scheduled job, PostgreSQL crashing and restarting (`pg_ctl stop -m immediate`), SIGSTOP of a
//! replica for 10 s. Checked throughout and after each: no serial twice; every certificate a
//! client received is stored with identical bytes; every acknowledged revocation is refused at
//! mTLS by every running replica within 1 s and is in the next CRL of every replica; CRL numbers
//! only increase and never name two different CRLs; runs of the scheduled job never overlap;
//! while replicas (not the database) fail, the others serve every request.

#[path = "support/postgres.rs"]
mod postgres;
mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::TempPostgres;
use support::{Server, TestCa, example_policy, openssl, openssl_p256_csr, run_bounded, s};

const API_CI: &str = "api.ci.svc.example.internal";
const REPLICAS: usize = 3;

/// One replica as clients see it.
#[derive(Clone, Debug)]
struct Endpoint {
    https: String,
    http: String,
    /// Not stopped or killed by the test (the revocation checks skip the others).
    running: bool,
}

/// What the clients saw, shared with the test thread.
#[derive(Default)]
struct Seen {
    /// Every certificate PEM a client received.
    received: Vec<String>,
    /// Serials (hex) whose revocation a replica acknowledged.
    revoked: Vec<String>,
    /// CRL number -> SHA-256 of the DER first seen with it.
    crls: HashMap<i64, String>,
    /// Highest CRL number seen so far.
    last_crl: i64,
    /// Broken promises (each a message).
    violations: Vec<String>,
    /// Requests no replica answered, with the phase they happened in.
    unserved: Vec<(String, String)>,
}

struct Shared {
    endpoints: Mutex<Vec<Endpoint>>,
    seen: Mutex<Seen>,
    phase: Mutex<String>,
    stop: AtomicBool,
}

impl Shared {
    fn endpoints(&self) -> Vec<Endpoint> {
        self.endpoints.lock().expect("lock").clone()
    }
    fn violation(&self, msg: String) {
        self.seen.lock().expect("lock").violations.push(msg);
    }
    fn unserved(&self, what: &str) {
        let phase = self.phase.lock().expect("lock").clone();
        self.seen
            .lock()
            .expect("lock")
            .unserved
            .push((phase, what.to_string()));
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data))
}

/// POSTs `body` (a file) to `url`, optionally with a client certificate; `None` when no HTTP
/// answer came (refused, reset, timed out).
fn post(
    url: &str,
    root: &Path,
    body: &Path,
    client: Option<(&Path, &Path)>,
) -> Option<(u16, String)> {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "3", "--cacert", s(root)]);
    if let Some((cert, key)) = client {
        c.args(["--cert", s(cert), "--key", s(key)]);
    }
    c.args([
        "-H",
        "content-type: application/json",
        "--data-binary",
        &format!("@{}", s(body)),
        "-w",
        "\n%{http_code}",
        url,
    ]);
    let run = run_bounded(c, Duration::from_secs(10));
    let (json, code) = run.stdout.rsplit_once('\n')?;
    match code.trim().parse::<u16>() {
        Ok(0) | Err(_) => None,
        Ok(code) => Some((code, json.to_string())),
    }
}

/// Tries the replicas in turn from `start` until one answers below 500; the answer, or `None`
/// when none did.
fn spread(
    shared: &Shared,
    start: usize,
    path: &str,
    root: &Path,
    body: &Path,
    client: Option<(&Path, &Path)>,
) -> Option<(u16, String)> {
    let eps = shared.endpoints();
    for i in 0..eps.len() {
        let ep = &eps[(start + i) % eps.len()];
        if let Some((code, text)) = post(&format!("{}{path}", ep.https), root, body, client)
            && code < 500
        {
            return Some((code, text));
        }
    }
    None
}

fn certificate_of(json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v["certificate"].as_str().map(str::to_string)
}

/// Serial (lowercase hex, as the store keeps it) of a PEM certificate.
fn serial_of(pem_text: &str) -> String {
    let der = pem::parse(pem_text).expect("PEM").into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("certificate");
    hex::encode(cert.raw_serial())
}

/// The CRL of `ci` from `http` (DER), if the replica answered.
fn fetch_crl(http: &str, out: &Path) -> Option<Vec<u8>> {
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--max-time",
        "3",
        "-f",
        "-o",
        s(out),
        &format!("{http}/crl/ci.crl"),
    ]);
    run_bounded(c, Duration::from_secs(10))
        .ok()
        .then(|| std::fs::read(out).ok())
        .flatten()
}

fn crl_number_and_serials(der_file: &Path) -> (i64, HashSet<String>) {
    let run = openssl([
        "crl",
        "-inform",
        "DER",
        "-in",
        s(der_file),
        "-noout",
        "-text",
    ]);
    run.expect_code(0);
    let mut number = -1;
    let mut serials = HashSet::new();
    let mut lines = run.stdout.lines();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if t.starts_with("X509v3 CRL Number") {
            let v = lines.next().unwrap_or("").trim();
            number = v
                .parse::<i64>()
                .or_else(|_| i64::from_str_radix(v.trim_start_matches("0x"), 16))
                .unwrap_or(-1);
        }
        if let Some(serial) = t.strip_prefix("Serial Number: ") {
            serials.insert(serial.trim_start_matches('0').to_lowercase());
        }
    }
    (number, serials)
}

struct Cluster {
    pg: TempPostgres,
    url: String,
    ca: TestCa,
    config: PathBuf,
    replicas: Vec<Option<Server>>,
    shared: Arc<Shared>,
}

impl Cluster {
    fn start_replica(&self) -> Server {
        self.ca
            .serve(&["--config", s(&self.config), "--http-listen", "127.0.0.1:0"])
    }

    fn publish(&self) {
        let eps = self
            .replicas
            .iter()
            .flatten()
            .map(|r| Endpoint {
                https: r.url.clone(),
                http: r.http_url.clone().expect("http listener"),
                running: true,
            })
            .collect();
        *self.shared.endpoints.lock().expect("lock") = eps;
    }

    fn set_running(&self, index: usize, running: bool) {
        let url = self.replicas[index].as_ref().expect("replica").url.clone();
        for ep in self.shared.endpoints.lock().expect("lock").iter_mut() {
            if ep.https == url {
                ep.running = running;
            }
        }
    }

    fn phase(&self, name: &str) {
        *self.shared.phase.lock().expect("lock") = name.to_string();
    }

    fn psql_lines(&self, sql: &str) -> Vec<String> {
        self.pg
            .psql(&self.url, sql)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Waits until the clients got `more` further certificates.
    fn let_load_run(&self, more: usize, limit: Duration) {
        let start_count = self.shared.seen.lock().expect("lock").received.len();
        let start = Instant::now();
        while self.shared.seen.lock().expect("lock").received.len() < start_count + more {
            assert!(
                start.elapsed() < limit,
                "load stalled in phase {}",
                self.shared.phase.lock().expect("lock")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn three_replicas_on_postgres_lose_nothing_through_faults() {
    let pg = TempPostgres::start();
    let url = pg.create_database("ca");
    let ca = support::init_insecure_on_postgres(&url);
    let config = ca.path("serve.toml");
    // The CRL job every second, so its runs and their leases are exercised many times; a lease
    // longer than the SIGSTOP, so a stopped holder keeps the job rather than run beside another.
    std::fs::write(
        &config,
        "crl_refresh = \"* * * * * *\"\njob_lease = \"15s\"\n\n[database]\nmax_connections = 4\nacquire_timeout = \"2s\"\n",
    )
    .expect("config");

    let root = ca.path("bundle.pem");
    let bundle = ca.server(&["bundle", "--env", "ci"]);
    bundle.expect_code(0);
    std::fs::write(&root, &bundle.stdout).expect("bundle");
    let token = ca.ci_token(1000);
    let admin = ca.path("admin");
    ca.issue("prod", "ops", &[], &admin, &[]).expect_code(0);
    let (admin_cert, admin_key) = (admin.join("cert.pem"), admin.join("key.pem"));

    // Every enrolling client has a token of its own: one CI token allows 1,000 uses.
    let revoker_token = ca.ci_token(1000);
    let second_token = ca.ci_token(1000);
    let csr_body_with = |name: &str, token: &str| -> (PathBuf, PathBuf) {
        let key = ca.path(&format!("{name}.key"));
        let csr = openssl_p256_csr(&key, &ca.path(&format!("{name}.csr")), "api");
        let body = ca.path(&format!("{name}.enroll.json"));
        std::fs::write(
            &body,
            serde_json::json!({ "token": token, "csr": csr, "dns": [API_CI] }).to_string(),
        )
        .expect("body");
        let renew = ca.path(&format!("{name}.renew.json"));
        std::fs::write(&renew, serde_json::json!({ "csr": csr }).to_string()).expect("body");
        (key, body)
    };
    let csr_body = |name: &str| csr_body_with(name, &token);
    let (key_a, enroll_a) = csr_body("a");
    let (key_r, enroll_r) = csr_body_with("r", &revoker_token);
    let (_, enroll_second) = csr_body_with("second", &second_token);
    let (key_b, _) = csr_body("b");
    let (renew_a, renew_b) = (ca.path("a.renew.json"), ca.path("b.renew.json"));
    let renew_r = ca.path("r.renew.json");

    let shared = Arc::new(Shared {
        endpoints: Mutex::new(Vec::new()),
        seen: Mutex::new(Seen::default()),
        phase: Mutex::new("start".into()),
        stop: AtomicBool::new(false),
    });
    let mut cluster = Cluster {
        pg,
        url,
        ca,
        config,
        replicas: Vec::new(),
        shared: shared.clone(),
    };
    for _ in 0..REPLICAS {
        let r = cluster.start_replica();
        cluster.replicas.push(Some(r));
    }
    cluster.publish();

    let deadline = Instant::now() + Duration::from_secs(240);
    let mut clients = Vec::new();
    // Enrollments with the CI token.
    for (n, body) in [enroll_a.clone(), enroll_second].into_iter().enumerate() {
        let (shared, root) = (shared.clone(), root.clone());
        clients.push(std::thread::spawn(move || {
            let mut i = n;
            while !shared.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                i += 1;
                match spread(&shared, i, "/v1/enroll", &root, &body, None) {
                    Some((201, json)) => match certificate_of(&json) {
                        Some(pem) => shared.seen.lock().expect("lock").received.push(pem),
                        None => shared.violation(format!("201 without a certificate: {json}")),
                    },
                    Some((code, json)) => {
                        shared.violation(format!("enroll answered {code}: {json}"))
                    }
                    None => {
                        shared.unserved("enroll");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        }));
    }
    // A chain of renewals over mTLS, alternating between two keys.
    {
        let (shared, root, dir) = (shared.clone(), root.clone(), cluster.ca.path("renewer"));
        let (keys, renews) = (
            [key_a.clone(), key_b.clone()],
            [renew_b.clone(), renew_a.clone()],
        );
        let first = post(
            &format!("{}/v1/enroll", shared.endpoints()[0].https),
            &root,
            &enroll_a,
            None,
        )
        .and_then(|(_, json)| certificate_of(&json))
        .expect("first enrollment");
        std::fs::create_dir_all(&dir).expect("dir");
        clients.push(std::thread::spawn(move || {
            let cert = dir.join("cert.pem");
            std::fs::write(&cert, &first).expect("cert");
            shared.seen.lock().expect("lock").received.push(first);
            let (mut turn, mut i) = (0usize, 0usize);
            while !shared.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                i += 1;
                let client = Some((cert.as_path(), keys[turn].as_path()));
                match spread(&shared, i, "/v1/renew", &root, &renews[turn], client) {
                    Some((201, json)) => match certificate_of(&json) {
                        Some(pem) => {
                            std::fs::write(&cert, &pem).expect("cert");
                            shared.seen.lock().expect("lock").received.push(pem);
                            turn = 1 - turn;
                        }
                        None => shared.violation(format!("201 without a certificate: {json}")),
                    },
                    Some((code, json)) => {
                        shared.violation(format!("renew answered {code}: {json}"))
                    }
                    None => {
                        shared.unserved("renew");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        }));
    }
    // Revocations through the admin API, each checked at every running replica within 1 s.
    {
        let (shared, root, dir) = (shared.clone(), root.clone(), cluster.ca.path("revoker"));
        let (admin_cert, admin_key, key) = (admin_cert.clone(), admin_key.clone(), key_r.clone());
        let (enroll, renew) = (enroll_r.clone(), renew_r.clone());
        std::fs::create_dir_all(&dir).expect("dir");
        clients.push(std::thread::spawn(move || {
            let (cert, body) = (dir.join("cert.pem"), dir.join("revoke.json"));
            let mut i = 0usize;
            while !shared.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                i += 1;
                let Some((201, json)) = spread(&shared, i, "/v1/enroll", &root, &enroll, None)
                else {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                };
                let Some(pem) = certificate_of(&json) else {
                    continue;
                };
                shared.seen.lock().expect("lock").received.push(pem.clone());
                std::fs::write(&cert, &pem).expect("cert");
                let serial = serial_of(&pem);
                std::fs::write(
                    &body,
                    serde_json::json!({ "serial": serial, "reason": "key-compromise" }).to_string(),
                )
                .expect("body");
                let admin = Some((admin_cert.as_path(), admin_key.as_path()));
                match spread(&shared, i + 1, "/v1/admin/revoke", &root, &body, admin) {
                    Some((200, _)) => {}
                    // Only this client revokes its fresh certificates: an earlier attempt that
                    // committed but whose answer never came (the client then tried another
                    // replica).
                    Some((409, json)) if json.contains("already revoked") => {}
                    Some((code, json)) => {
                        shared.violation(format!("revoke answered {code}: {json}"));
                        continue;
                    }
                    None => {
                        shared.unserved("revoke");
                        continue;
                    }
                }
                let acked = Instant::now();
                shared
                    .seen
                    .lock()
                    .expect("lock")
                    .revoked
                    .push(serial.clone());
                // From the acknowledgement on, no running replica may accept the certificate;
                // each must refuse it (403) within 1 s.
                for ep in shared.endpoints().into_iter().filter(|e| e.running) {
                    loop {
                        let answer = post(
                            &format!("{}/v1/renew", ep.https),
                            &root,
                            &renew,
                            Some((cert.as_path(), key.as_path())),
                        );
                        match answer {
                            Some((403, _)) => break,
                            Some((201, _)) => {
                                shared.violation(format!(
                                    "{} renewed revoked certificate {serial}",
                                    ep.https
                                ));
                                break;
                            }
                            _ if acked.elapsed() > Duration::from_secs(1) => {
                                // A replica that fails (stopped, or its database down) does
                                // not accept either; one answering otherwise breaks the rule.
                                if let Some((code, _)) = answer
                                    && code < 500
                                {
                                    shared.violation(format!(
                                        "{} did not refuse revoked {serial} within 1s: {code}",
                                        ep.https
                                    ));
                                }
                                break;
                            }
                            _ => std::thread::sleep(Duration::from_millis(50)),
                        }
                    }
                }
            }
        }));
    }
    // A CRL reader: numbers only go up, and one number is one CRL.
    {
        let (shared, file) = (shared.clone(), cluster.ca.path("poll.crl"));
        clients.push(std::thread::spawn(move || {
            let mut i = 0usize;
            while !shared.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                i += 1;
                let eps = shared.endpoints();
                let ep = &eps[i % eps.len()];
                if let Some(der) = fetch_crl(&ep.http, &file) {
                    let (number, _) = crl_number_and_serials(&file);
                    let digest = sha256_hex(&der);
                    let mut seen = shared.seen.lock().expect("lock");
                    if number < seen.last_crl {
                        let last = seen.last_crl;
                        seen.violations
                            .push(format!("CRL number went down: {number} after {last}"));
                    }
                    seen.last_crl = seen.last_crl.max(number);
                    if let Some(other) = seen.crls.insert(number, digest.clone())
                        && other != digest
                    {
                        seen.violations
                            .push(format!("CRL number {number} names two different CRLs"));
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
    }

    // Faults, one after the other, each under load.
    cluster.phase("warm-up");
    cluster.let_load_run(30, Duration::from_secs(60));

    cluster.phase("sigkill");
    cluster.set_running(0, false);
    cluster.replicas[0]
        .as_ref()
        .expect("replica")
        .signal("KILL");
    cluster.let_load_run(30, Duration::from_secs(60));
    cluster.replicas[0] = Some(cluster.start_replica());
    cluster.publish();

    cluster.phase("sigkill-job-holder");
    // Kill the holder in the middle of a run: a transaction holding the CRL counter rows for a
    // few seconds makes the next run wait inside its lease, unfinished, until the kill.
    let live_pids = |c: &Cluster| -> Vec<u32> {
        c.replicas
            .iter()
            .filter_map(|r| r.as_ref().and_then(Server::pid))
            .collect()
    };
    // First the lease of the replica killed before must have run out or been taken over.
    let settle = Instant::now();
    while cluster
        .psql_lines("SELECT owner FROM job_leases WHERE job = 'crl-refresh' AND finished = 0")
        .iter()
        .filter_map(|o| o.rsplit(':').next().and_then(|p| p.parse::<u32>().ok()))
        .any(|pid| !live_pids(&cluster).contains(&pid))
    {
        assert!(
            settle.elapsed() < Duration::from_secs(30),
            "the killed replica's lease never ran out"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (holder, holder_pid, held_period, killed_at) = std::thread::scope(|scope| {
        let (pg, url) = (&cluster.pg, cluster.url.as_str());
        let blocker = scope.spawn(move || {
            pg.psql(
                url,
                "BEGIN; SELECT 1 FROM crl_numbers FOR UPDATE; SELECT pg_sleep(3); COMMIT;",
            )
        });
        let lease = || {
            cluster.psql_lines(
                "SELECT owner || ' ' || period FROM job_leases \
                 WHERE job = 'crl-refresh' AND finished = 0",
            )
        };
        let poll_until = Instant::now() + Duration::from_secs(3);
        let held = loop {
            // Still unfinished a moment later: this run waits on the held rows.
            if let Some(l) = lease().into_iter().next() {
                std::thread::sleep(Duration::from_millis(300));
                if lease().first() == Some(&l) {
                    break l;
                }
            }
            assert!(
                Instant::now() < poll_until,
                "no run of the scheduled job waited on the held CRL counters"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let (owner, period) = held.split_once(' ').expect("owner and period");
        let holder_pid: u32 = owner
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("owner pid");
        let holder = (0..REPLICAS)
            .find(|&i| cluster.replicas[i].as_ref().and_then(Server::pid) == Some(holder_pid))
            .expect("the holder is one of the replicas");
        let killed_at: i64 = cluster.psql_lines("SELECT EXTRACT(EPOCH FROM now())::bigint")[0]
            .parse()
            .expect("now");
        cluster.set_running(holder, false);
        cluster.replicas[holder]
            .as_ref()
            .expect("replica")
            .signal("KILL");
        blocker.join().expect("blocking transaction");
        (
            holder,
            holder_pid,
            period.parse::<i64>().expect("period"),
            killed_at,
        )
    });
    let unfinished = cluster.psql_lines(&format!(
        "SELECT finished_at IS NULL FROM job_runs WHERE job = 'crl-refresh' \
         AND period = {held_period}"
    ));
    assert_eq!(
        unfinished,
        ["t"],
        "the killed holder's run (period {held_period}) is recorded unfinished"
    );
    cluster.let_load_run(30, Duration::from_secs(60));
    // Another replica takes the job over (at the latest once the killed one's lease ran out;
    // the end of the test checks that no run started before that).
    let start = Instant::now();
    loop {
        let later = cluster.psql_lines(&format!(
            "SELECT owner FROM job_runs WHERE job = 'crl-refresh' AND started_at > {killed_at} \
             AND finished_at IS NOT NULL"
        ));
        if !later.is_empty() {
            assert!(
                later
                    .iter()
                    .all(|o| !o.ends_with(&format!(":{holder_pid}"))),
                "the killed holder still ran the job: {later:?}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "no replica took the scheduled job over"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.replicas[holder] = Some(cluster.start_replica());
    cluster.publish();

    cluster.phase("postgres-restart");
    cluster.let_load_run(10, Duration::from_secs(60));
    cluster.pg.stop_immediate();
    std::thread::sleep(Duration::from_secs(2));
    cluster.pg.start_again();
    cluster.phase("after-postgres-restart");
    let recovered = Instant::now();
    cluster.let_load_run(30, Duration::from_secs(60));
    let unserved_after: Vec<_> = shared
        .seen
        .lock()
        .expect("lock")
        .unserved
        .iter()
        .filter(|(p, _)| p == "after-postgres-restart")
        .cloned()
        .collect();
    assert!(
        unserved_after.len() <= 10,
        "replicas did not recover from the database restart ({:?} after {:?}): {unserved_after:?}",
        unserved_after.len(),
        recovered.elapsed()
    );

    cluster.phase("sigstop");
    let stopped = 1;
    cluster.set_running(stopped, false);
    cluster.replicas[stopped]
        .as_ref()
        .expect("replica")
        .signal("STOP");
    let paused = Instant::now();
    while paused.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.replicas[stopped]
        .as_ref()
        .expect("replica")
        .signal("CONT");
    cluster.set_running(stopped, true);
    cluster.phase("after-sigstop");
    cluster.let_load_run(30, Duration::from_secs(60));

    shared.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }

    // Promises kept by the clients' account.
    let seen = shared.seen.lock().expect("lock");
    assert!(seen.violations.is_empty(), "{:#?}", seen.violations);
    let unserved: Vec<_> = seen
        .unserved
        .iter()
        .filter(|(p, _)| !p.contains("postgres"))
        .collect();
    assert!(
        unserved.is_empty(),
        "requests no surviving replica served: {unserved:?}"
    );
    assert!(
        seen.received.len() >= 150,
        "{} certificates",
        seen.received.len()
    );
    assert!(!seen.revoked.is_empty(), "no revocation happened");
    assert!(seen.crls.len() >= 5, "CRLs seen: {:?}", seen.crls.keys());

    // No serial twice; every received certificate stored byte for byte.
    let stored: HashMap<String, String> = cluster
        .psql_lines(
            "SELECT serial || ' ' || encode(sha256(convert_to(cert_pem, 'UTF8')), 'hex') FROM certificates",
        )
        .into_iter()
        .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect();
    let mut serials = HashSet::new();
    for pem in &seen.received {
        let serial = serial_of(pem);
        assert!(
            serials.insert(serial.clone()),
            "serial {serial} handed out twice"
        );
        assert_eq!(
            stored.get(&serial),
            Some(&sha256_hex(pem.as_bytes())),
            "certificate {serial} was received but is not stored as sent"
        );
    }

    // Every acknowledged revocation is stored and in the CRL of every replica.
    let revoked: HashSet<String> = cluster
        .psql_lines("SELECT serial FROM certificates WHERE revoked_at IS NOT NULL")
        .into_iter()
        .collect();
    let wanted: HashSet<String> = seen
        .revoked
        .iter()
        .map(|s| s.trim_start_matches('0').to_string())
        .collect();
    for serial in &seen.revoked {
        assert!(
            revoked.contains(serial),
            "acknowledged revocation of {serial} not stored"
        );
    }
    let file = cluster.ca.path("final.crl");
    for ep in shared.endpoints() {
        let start = Instant::now();
        loop {
            let der = fetch_crl(&ep.http, &file).expect("CRL from every replica");
            let (_, listed) = crl_number_and_serials(&file);
            let missing: Vec<_> = wanted.difference(&listed).collect();
            if missing.is_empty() {
                assert!(!der.is_empty());
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{} serves a CRL without {missing:?}",
                ep.http
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // Scheduled runs never overlapped: each started after the previous one finished (or, its
    // owner killed, after its lease ran out).
    let runs: Vec<(i64, i64, Option<i64>, i64, String)> = cluster
        .psql_lines(
            "SELECT period || ' ' || started_at || ' ' || COALESCE(finished_at, -1) || ' ' || \
             lease_until || ' ' || owner FROM job_runs WHERE job = 'crl-refresh' ORDER BY period",
        )
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let n = |i: usize| f[i].parse::<i64>().expect("number");
            (
                n(0),
                n(1),
                Some(n(2)).filter(|v| *v >= 0),
                n(3),
                f[4].to_string(),
            )
        })
        .collect();
    assert!(runs.len() >= 5, "{} runs of the scheduled job", runs.len());
    for w in runs.windows(2) {
        let (prev, next) = (&w[0], &w[1]);
        let free_at = prev.2.unwrap_or(prev.3);
        assert!(
            next.1 >= free_at,
            "run of period {} ({}) started at {} before the previous run ({}) was done at {free_at}",
            next.0,
            next.4,
            next.1,
            prev.4
        );
    }
    let owners: HashSet<&str> = runs.iter().map(|r| r.4.as_str()).collect();
    assert!(
        owners.len() >= 2,
        "one replica ran every period: {owners:?}"
    );
    eprintln!(
        "{} certificates received, {} revocations, {} CRLs seen (last number {}), {} job runs by {} \
         replicas, {} requests unserved while the database restarted",
        seen.received.len(),
        seen.revoked.len(),
        seen.crls.len(),
        seen.last_crl,
        runs.len(),
        owners.len(),
        seen.unserved.len()
    );
}

/// Waits (bounded) until `server`'s stderr contains `needle`.
fn wait_for_log(server: &Server, needle: &str, limit: Duration) {
    let start = Instant::now();
    while !server.stderr().contains(needle) {
        assert!(
            start.elapsed() < limit,
            "no {needle:?} in the server log within {limit:?}:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn postgres_schema_versions_and_the_shared_policy_are_enforced() {
    let pg = TempPostgres::start();
    let url = pg.create_database("ca");
    let ca = TestCa::on_postgres(&url);
    let policy = ca.path("policy.toml");
    std::fs::copy(example_policy(), &policy).expect("policy");

    // An empty database: a server refuses it and says what to run; `migrate` prepares it.
    ca.server(&["serve", "--listen", "127.0.0.1:0", "--policy", s(&policy)])
        .expect_code(6)
        .expect_stderr("run `ca-server migrate`");
    let migrated = ca.server(&["migrate", "--json"]);
    migrated.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&migrated.stdout).expect("json");
    assert_eq!(v["from"], 0);
    let version = v["to"].as_i64().expect("version");
    assert!(version >= 3, "{v}");
    assert!(
        !migrated.stdout.contains("password") && v["database"].as_str().is_some(),
        "{v}"
    );
    ca.server(&["migrate"])
        .expect_code(0)
        .expect_stdout_contains("up to date");
    ca.server(&["init", "--policy", s(&policy), "--insecure-no-passphrase"])
        .expect_code(0);
    ca.server(&["init", "--policy", s(&policy), "--insecure-no-passphrase"])
        .expect_code(6)
        .expect_stderr("already holds a CA");

    // One policy for every server: a replica given another file refuses to start.
    let running = ca.serve(&["--policy", s(&policy)]);
    let other = ca.path("other.toml");
    let text = std::fs::read_to_string(&policy).expect("policy");
    std::fs::write(&other, format!("{text}\n# tightened later\n")).expect("other");
    ca.server(&["serve", "--listen", "127.0.0.1:0", "--policy", s(&other)])
        .expect_code(6)
        .expect_stderr("differs from the policy published in the database");

    // Publishing the new file: the running replica, whose file is still the old one, says so
    // loudly and keeps its policy; once its file is the published one it switches by itself.
    ca.server(&["policy", "publish", "--policy", s(&other)])
        .expect_code(0)
        .expect_stdout_contains("published policy sha256");
    wait_for_log(
        &running,
        "does not serve the published policy",
        Duration::from_secs(15),
    );
    std::fs::copy(&other, &policy).expect("update the file");
    wait_for_log(
        &running,
        "switched to the newly published policy",
        Duration::from_secs(15),
    );
    let second = ca.serve(&["--policy", s(&other)]);
    assert!(second.url.starts_with("https://127.0.0.1:"));
    let audit = ca.server(&["audit", "--json"]);
    audit.expect_code(0);
    assert!(
        audit.stdout.contains("\"policy-publish\""),
        "{}",
        audit.stdout
    );
    assert!(
        audit.stdout.contains("followed the published policy"),
        "{}",
        audit.stdout
    );

    // A schema from a newer build: servers and `migrate` refuse it.
    pg.psql(
        &url,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99999999, 'from a newer build', TRUE, '\\x00', 0)",
    );
    ca.server(&["serve", "--listen", "127.0.0.1:0", "--policy", s(&other)])
        .expect_code(6)
        .expect_stderr("upgrade ca-server");
    ca.server(&["migrate"])
        .expect_code(6)
        .expect_stderr("newer than this build knows");
    // A URL that is not PostgreSQL is refused before anything is touched.
    let mut c = Command::new(support::server_bin());
    c.args(["certs", "list", "--database-url", "mysql://x@127.0.0.1/ca"]);
    run_bounded(c, Duration::from_secs(20))
        .expect_code(2)
        .expect_stderr("must be a postgres:// URL");
}
