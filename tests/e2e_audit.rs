//! End to end: the audit log is a hash chain with signed checkpoints. `ca-server audit verify`
//! passes on an untouched log, and fails naming the first entry that does not fit after each kind
//! of tampering done with sqlite3 directly: an edited row, a deleted row, two rows swapped, the
//! tail cut off, the whole chain recomputed after an edit (only the signed checkpoint catches
//! that), a checkpoint altered.

mod support;

use std::path::Path;

use ca_server::store::{AuditEntry, AuditResult, audit_hash};
use support::TestCa;

const API_DEV: &str = "api.dev.svc.example.internal";
const PASSPHRASE: &str = "correct horse battery staple";

fn sqlite(db: &Path, sql: &str) -> String {
    support::sqlite3(&[], db, sql)
}

/// A copy of `ca`'s database in a CA location of its own, with the same passphrase.
fn copy_of(ca: &TestCa) -> TestCa {
    let mut copy = TestCa::new();
    std::fs::create_dir_all(&copy.data).expect("dir");
    for name in ["ca.db", "ca.db-wal"] {
        let from = ca.data.join(name);
        if from.exists() {
            std::fs::copy(&from, copy.data.join(name)).expect("copy");
        }
    }
    let pf = copy.path("passphrase");
    std::fs::write(&pf, format!("{PASSPHRASE}\n")).expect("passphrase");
    copy.passphrase_file = Some(pf);
    copy
}

fn verify_fails(ca: &TestCa, needle: &str) {
    let run = ca.server(&["audit", "verify"]);
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    run.expect_stderr(needle);
}

#[test]
fn tampering_with_the_audit_log_is_found_and_located() {
    let ca = TestCa::init_sealed(PASSPHRASE);
    for i in 0..3 {
        ca.issue("dev", "api", &[API_DEV], &ca.path(&format!("out{i}")), &[])
            .expect_code(0);
    }
    ca.server(&["token", "create", "--env", "dev", "--service", "api"])
        .expect_code(0);
    let cp = ca.server(&["audit", "checkpoint"]);
    cp.expect_code(0);
    assert!(
        cp.stdout.starts_with("checkpoint 1: entry "),
        "{}",
        cp.stdout
    );
    ca.issue("dev", "api", &[API_DEV], &ca.path("out-late"), &[])
        .expect_code(0);

    let ok = ca.server(&["audit", "verify", "--json"]);
    ok.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&ok.stdout).expect("json");
    assert_eq!(v["ok"], true);
    assert!(v["chained"].as_u64().expect("chained") >= 6, "{v}");
    assert_eq!(v["checkpoints"], 1);
    assert_eq!(v["uncovered"], 1, "the issuance after the checkpoint: {v}");
    let db = ca.data.join("ca.db");
    let count: i64 = sqlite(&db, "SELECT COUNT(*) FROM audit_log")
        .trim()
        .parse()
        .expect("count");
    assert!(count >= 6);

    // The triggers keep the log append-only for the application; an attacker drops them first.
    let unguard = "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;";

    // An edited row.
    let t = copy_of(&ca);
    sqlite(
        &t.data.join("ca.db"),
        &format!("{unguard} UPDATE audit_log SET actor = 'cli:mallory' WHERE id = 3;"),
    );
    verify_fails(&t, "entry 3 does not match its hash");

    // A deleted row.
    let t = copy_of(&ca);
    sqlite(
        &t.data.join("ca.db"),
        &format!("{unguard} DELETE FROM audit_log WHERE id = 3;"),
    );
    verify_fails(&t, "entry 4 does not follow entry 2");

    // Two rows swapped.
    let t = copy_of(&ca);
    sqlite(
        &t.data.join("ca.db"),
        &format!(
            "{unguard} UPDATE audit_log SET id = -1 WHERE id = 3; \
             UPDATE audit_log SET id = 3 WHERE id = 4; UPDATE audit_log SET id = 4 WHERE id = -1;"
        ),
    );
    verify_fails(&t, "entry 3 does not follow entry 2");

    // The newest entry removed.
    let t = copy_of(&ca);
    sqlite(
        &t.data.join("ca.db"),
        &format!("{unguard} DELETE FROM audit_log WHERE id = (SELECT MAX(id) FROM audit_log);"),
    );
    verify_fails(&t, "entries were removed from the end");

    // An edit with the whole chain recomputed and the head moved: consistent, except with the
    // signed checkpoint.
    let t = copy_of(&ca);
    let tdb = t.data.join("ca.db");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&support::sqlite3(
        &["-json"],
        &tdb,
        "SELECT id, at, actor, action, env, service, serial, result, reason FROM audit_log ORDER BY id;",
    ))
    .expect("rows as JSON");
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let mut prev = "genesis".to_string();
    let mut sql = String::from(unguard);
    for r in &rows {
        let id = r["id"].as_i64().expect("id");
        let actor = if id == 3 {
            "cli:mallory".to_string()
        } else {
            text(&r["actor"]).expect("actor")
        };
        let entry = AuditEntry {
            id,
            at: r["at"].as_i64().expect("at"),
            actor: actor.clone(),
            action: text(&r["action"]).expect("action"),
            env: text(&r["env"]),
            service: text(&r["service"]),
            serial: text(&r["serial"]),
            result: match r["result"].as_str() {
                Some("ok") => AuditResult::Ok,
                Some("denied") => AuditResult::Denied,
                _ => AuditResult::Error,
            },
            reason: text(&r["reason"]),
        };
        let hash = audit_hash(&prev, &entry);
        sql.push_str(&format!(
            " UPDATE audit_log SET actor = '{actor}', prev_hash = '{prev}', entry_hash = '{hash}' WHERE id = {id};"
        ));
        prev = hash;
    }
    sql.push_str(&format!(
        " UPDATE audit_head SET last_hash = '{prev}' WHERE id = 1;"
    ));
    sqlite(&tdb, &sql);
    verify_fails(&t, "does not match checkpoint 1");

    // A checkpoint moved to the forged chain without the audit key.
    sqlite(
        &tdb,
        "UPDATE audit_checkpoints SET last_hash = (SELECT entry_hash FROM audit_log \
         WHERE id = audit_checkpoints.last_id);",
    );
    verify_fails(&t, "checkpoint 1 (entry");

    // The untouched original still verifies, and the audit key never shows in the database in
    // the clear.
    ca.server(&["audit", "verify"])
        .expect_code(0)
        .expect_stdout_contains("audit log verifies");
    let stored = sqlite(&db, "SELECT audit_key FROM ca_settings");
    assert!(stored.starts_with("sealed-v1:"), "{stored}");
}
