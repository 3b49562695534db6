//! Revocation benchmarks (run with `scripts/bench.sh`): time to build and sign a CRL with
//! 100,000 revoked entries, and OCSP answers per second (cached and freshly signed).

use std::sync::Arc;
use std::time::Instant;

use ca_server::clock::SystemClock;
use ca_server::policy::Policy;
use ca_server::service::{CaOptions, DEFAULT_SERVER_NAMES, build_ca};
use ca_server::store::{SqliteStore, Store};
use time::OffsetDateTime;

const REVOKED: usize = 100_000;
const OCSP_ROUNDS: u32 = 5_000;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().expect("tmp");
    let policy_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/example.toml");
    let policy = Policy::load(std::path::Path::new(policy_path)).expect("policy");
    let names: Vec<String> = DEFAULT_SERVER_NAMES.iter().map(|s| s.to_string()).collect();
    let built = build_ca(
        &policy,
        policy_path,
        None,
        Default::default(),
        &names,
        false,
        OffsetDateTime::now_utc(),
        "bench",
    )
    .expect("ca");
    let db = dir.path().join("ca.db");
    let store = Arc::new(SqliteStore::open(&db, true).await.expect("store"));
    store.initialize(&built.new_ca).await.expect("init");

    // Fill the dev issuer with revoked certificates in one transaction (the issuance path would
    // spend its time on fsyncs, which is not what this measures).
    let fill = Instant::now();
    {
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&db);
        let pool = sqlx::SqlitePool::connect_with(opts).await.expect("pool");
        let mut tx = pool.begin().await.expect("tx");
        let now = OffsetDateTime::now_utc().unix_timestamp();
        for i in 0..REVOKED {
            let serial = format!(
                "{:032x}",
                0x4000_0000_0000_0000_0000_0000_0000_0000u128 + i as u128
            );
            sqlx::query("INSERT INTO serials (serial, reserved_at) VALUES (?, ?)")
                .bind(&serial)
                .bind(now)
                .execute(&mut *tx)
                .await
                .expect("serial");
            sqlx::query(
                "INSERT INTO certificates (serial, issuer_id, env, service, spiffe_id, dns_names, ip_addresses, \
                 key_type, key_fingerprint, fingerprint, not_before, not_after, cert_pem, issued_via, issued_by, \
                 created_at, revoked_at, revocation_reason) VALUES (?, 'dev', 'dev', 'api', \
                 'spiffe://example.internal/dev/api', '[]', '[]', 'p256', ?, ?, ?, ?, '', 'cli', 'bench', ?, ?, \
                 'key-compromise')",
            )
            .bind(&serial)
            .bind(format!("k{serial}"))
            .bind(format!("f{serial}"))
            .bind(now - 60)
            .bind(now + 86_400)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await
            .expect("certificate");
        }
        tx.commit().await.expect("commit");
        pool.close().await;
    }
    println!(
        "setup: {REVOKED} revoked rows inserted in {:.1?}",
        fill.elapsed()
    );

    let ca = ca_server::service::Ca::open(
        store.clone(),
        Arc::new(SystemClock),
        policy,
        None,
        CaOptions::default(),
    )
    .await
    .expect("open");
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let crl = ca.build_crl("dev").await.expect("crl");
        times.push(t.elapsed());
        size = crl.der.len();
    }
    times.sort();
    println!(
        "CRL with {REVOKED} entries: {:.0?} median of 3 (query + sign + store), {} KiB DER",
        times[1],
        size / 1024
    );

    // OCSP: a request for one of the revoked serials, made by openssl, with and without a nonce.
    let issuer = ca.signer("dev").await.expect("signer");
    let issuer_pem = ca_server::authority::pem_encode("CERTIFICATE", issuer.cert_der());
    std::fs::write(dir.path().join("dev.pem"), issuer_pem).expect("write");
    let mut requests = Vec::new();
    for nonce in [false, true] {
        let out = dir.path().join(format!("req-{nonce}.der"));
        let mut cmd = std::process::Command::new("openssl");
        cmd.args(["ocsp", "-issuer"])
            .arg(dir.path().join("dev.pem"));
        cmd.args(["-serial", "0x40000000000000000000000000000007", "-reqout"])
            .arg(&out);
        if !nonce {
            cmd.arg("-no_nonce");
        }
        assert!(cmd.status().expect("openssl").success());
        requests.push((nonce, std::fs::read(&out).expect("request")));
    }
    for (nonce, req) in &requests {
        let _ = ca.ocsp(req).await;
        let t = Instant::now();
        for _ in 0..OCSP_ROUNDS {
            std::hint::black_box(ca.ocsp(req).await);
        }
        let el = t.elapsed();
        println!(
            "OCSP {}: {:.0} answers/s ({:.1?} each, one task, in process)",
            if *nonce {
                "with nonce (looked up and signed every time)"
            } else {
                "without nonce (cached)"
            },
            f64::from(OCSP_ROUNDS) / el.as_secs_f64(),
            el / OCSP_ROUNDS
        );
    }
}
