//! The throwaway PostgreSQL harness itself: a cluster starts, takes a database and SQL, keeps a
//! committed row across a crash (`pg_ctl stop -m immediate`) and restart, and leaves no process
//! behind once dropped.

#[path = "support/postgres.rs"]
mod postgres;

use std::time::Instant;

use postgres::{TempPostgres, process_alive};

#[test]
fn cluster_starts_survives_a_crash_and_is_gone_after_drop() {
    let t = Instant::now();
    let mut pg = TempPostgres::start();
    eprintln!(
        "TempPostgres::start took {:?} (port {})",
        t.elapsed(),
        pg.port()
    );
    assert!(pg.url().starts_with("postgres://postgres@127.0.0.1:"));
    assert_eq!(pg.psql(&pg.url(), "select 1").trim(), "1");

    let db = pg.create_database("harness_check");
    assert_eq!(
        db,
        format!("postgres://postgres@127.0.0.1:{}/harness_check", pg.port())
    );
    assert_eq!(pg.psql(&db, "select 1").trim(), "1");
    assert_eq!(
        pg.psql("harness_check", "select current_database()").trim(),
        "harness_check"
    );
    // Loopback only.
    assert_eq!(pg.psql(&db, "show listen_addresses").trim(), "127.0.0.1");
    assert_eq!(pg.psql(&db, "show fsync").trim(), "on");

    pg.psql(
        &db,
        "create table kept (id int primary key, v text not null); \
         insert into kept values (1, 'before the crash')",
    );
    let port = pg.port();
    let pid_before = pg.postmaster_pid().expect("postmaster.pid while running");
    assert!(process_alive(pid_before));

    pg.stop_immediate();
    assert!(
        !process_alive(pid_before),
        "postmaster {pid_before} alive after stop -m immediate"
    );
    let t = Instant::now();
    pg.start_again();
    eprintln!(
        "TempPostgres::start_again (crash recovery) took {:?}",
        t.elapsed()
    );
    assert_eq!(pg.port(), port);
    assert_eq!(
        pg.psql(&db, "select v from kept where id = 1").trim(),
        "before the crash"
    );

    let pid = pg.postmaster_pid().expect("postmaster.pid after restart");
    assert!(process_alive(pid));
    let dir = pg.dir().to_path_buf();
    drop(pg);
    assert!(
        !process_alive(pid),
        "postmaster {pid} still alive after drop"
    );
    assert!(!dir.exists(), "{} left behind after drop", dir.display());
}
