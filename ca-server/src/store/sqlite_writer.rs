//! SQLite's issuance writer: one connection on a thread of its own runs a whole batch of
//! issuances (token uses, certificate rows, audit entries and the audit head) as one
//! transaction, and so does a block of serial reservations. sqlx hands every statement to its
//! connection's thread and back, so a batch cost two thread switches per statement; here it
//! costs one hand-off for the whole batch.
//!
//! The statements and the refusal rules are the ones the sqlx path uses ([`super::sql`]), and
//! the invariants those of [`super::Store::commit_issuances`], checked by the same conformance
//! suite. `BEGIN IMMEDIATE` takes the write lock up front (other connections, the server's
//! pool and one-shot CLI commands, wait on the busy timeout as they do for each other).

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::sql::{self, Chain};
use super::{Issuance, StorageFault, StoreError};

/// What a batch commit answers: the outer error fails the whole batch, the inner ones their item.
type Outcome = Result<Vec<Result<(), StoreError>>, StoreError>;

enum Job {
    Batch(Vec<Issuance>, oneshot::Sender<Outcome>),
    Reserve(Vec<String>, i64, oneshot::Sender<Result<(), StoreError>>),
    Stop(oneshot::Sender<()>),
}

/// The handle to the writer thread; the thread ends, closing its connection, when every
/// handle is gone or [`BatchWriter::stop`] is called.
#[derive(Debug, Clone)]
pub(super) struct BatchWriter {
    jobs: mpsc::Sender<Job>,
}

fn stopped() -> StoreError {
    StoreError::Commit("the SQLite writer has stopped".into())
}

/// A SQLite error as the store reports it: a full or failing disk stays a storage fault.
fn store_error(e: rusqlite::Error) -> StoreError {
    let fault = match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => Some(StorageFault::Full),
        Some(rusqlite::ErrorCode::SystemIoFailure) => Some(StorageFault::Io),
        _ => None,
    };
    match fault {
        Some(fault) => StoreError::Storage {
            fault,
            detail: e.to_string(),
        },
        None => StoreError::Commit(e.to_string()),
    }
}

impl BatchWriter {
    /// Opens a connection to the (migrated) database at `path` and starts its thread.
    pub(super) fn open(path: &Path) -> Result<BatchWriter, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(store_error)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(store_error)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(store_error)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(store_error)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(store_error)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Commit(format!(
                "the database is in {mode} journal mode, not WAL"
            )));
        }
        let (jobs, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, rx))
            .map_err(|e| StoreError::Commit(format!("writer thread: {e}")))?;
        Ok(BatchWriter { jobs })
    }

    /// Commits `batch` on the writer thread (see [`super::Store::commit_issuances`]).
    pub(super) async fn commit(&self, batch: &[Issuance]) -> Outcome {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Batch(batch.to_vec(), reply))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Reserves `serials` (hex) at `at` in one transaction (see
    /// [`super::Store::reserve_serials`]).
    pub(super) async fn reserve(&self, serials: Vec<String>, at: i64) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Reserve(serials, at, reply))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Ends the thread once the batches sent before are done, and waits until its connection
    /// is closed.
    pub(super) async fn stop(&self) {
        let (done, closed) = oneshot::channel();
        if self.jobs.send(Job::Stop(done)).is_ok() {
            let _ = closed.await;
        }
    }
}

fn run(conn: Connection, jobs: mpsc::Receiver<Job>) {
    let mut conn = Some(conn);
    for job in jobs {
        let open = conn.as_mut().ok_or_else(stopped);
        match job {
            Job::Batch(batch, reply) => {
                let _ = reply.send(open.and_then(|c| commit(c, &batch)));
            }
            Job::Reserve(serials, at, reply) => {
                let _ = reply.send(open.and_then(|c| reserve(c, &serials, at)));
            }
            Job::Stop(done) => {
                drop(conn.take());
                let _ = done.send(());
            }
        }
    }
}

fn reserve(conn: &mut Connection, serials: &[String], at: i64) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(store_error)?;
    {
        let mut insert = tx
            .prepare_cached(sql::RESERVE_SERIAL)
            .map_err(store_error)?;
        for serial in serials {
            if insert.execute(params![serial, at]).map_err(store_error)? != 1 {
                // Dropping the transaction rolls the whole block back.
                return Err(sql::serial_taken(serial));
            }
        }
    }
    tx.commit().map_err(store_error)
}

fn commit(conn: &mut Connection, batch: &[Issuance]) -> Outcome {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(store_error)?;
    let mut chain = tx
        .prepare_cached("SELECT last_id, last_hash FROM audit_head WHERE id = 1")
        .and_then(|mut s| {
            s.query_row([], |r| {
                Ok(Chain {
                    last_id: r.get(0)?,
                    last_hash: r.get(1)?,
                })
            })
        })
        .map_err(store_error)?;
    let mut done = Vec::with_capacity(batch.len());
    for i in sql::commit_order(batch) {
        done.push((
            i,
            commit_one(&tx, &mut chain, &batch[i]).map_err(store_error)?,
        ));
    }
    tx.prepare_cached(sql::SAVE_CHAIN)
        .and_then(|mut s| s.execute(params![chain.last_id, chain.last_hash]))
        .map_err(store_error)?;
    tx.commit().map_err(store_error)?;
    Ok(sql::in_batch_order(done))
}

/// One item, as PostgreSQL's `commit_one`: spend the token's use, insert the row, append
/// the audit entry; a refused item gives its use back and leaves nothing.
fn commit_one(
    tx: &rusqlite::Transaction<'_>,
    chain: &mut Chain,
    item: &Issuance,
) -> Result<Result<(), StoreError>, rusqlite::Error> {
    if let Some(t) = &item.token
        && tx
            .prepare_cached(sql::SPEND_USE)?
            .execute(params![t.id, t.at])?
            != 1
    {
        return Ok(Err(StoreError::TokenUsedUp(t.id.clone())));
    }
    let c = &item.cert;
    let inserted = tx
        .prepare_cached(sql::INSERT_CERTIFICATE)?
        .execute(params![
            c.serial,
            c.issuer_id,
            c.env,
            c.service,
            c.spiffe_id,
            sql::json_list(&c.dns_names),
            sql::json_list(&c.ip_addresses),
            c.key_type,
            c.key_fingerprint,
            c.fingerprint,
            c.not_before,
            c.not_after,
            c.cert_pem,
            c.issued_via.as_str(),
            c.issued_by,
            c.created_at,
            c.revoked_at,
            c.revocation_reason,
        ])?;
    if inserted != 1 {
        let stored = tx
            .prepare_cached(sql::FIND_STORED)?
            .query_row(params![c.serial, c.fingerprint], |r| r.get::<_, String>(0))
            .optional()?
            .is_some();
        let issuer_revoked = tx
            .prepare_cached(sql::ISSUER_REVOKED_AT)?
            .query_row(params![c.issuer_id], |r| r.get::<_, Option<i64>>(0))
            .optional()?;
        if let Some(t) = &item.token {
            tx.prepare_cached(sql::GIVE_BACK_USE)?
                .execute(params![t.id])?;
        }
        return Ok(Err(sql::refusal(c, stored, issuer_revoked)));
    }
    let e = &item.audit;
    let hash = super::audit_hash(&chain.last_hash, e);
    let id: i64 = tx.prepare_cached(sql::INSERT_AUDIT)?.query_row(
        params![
            e.at,
            e.actor,
            e.action,
            e.env,
            e.service,
            e.serial,
            e.result.as_str(),
            e.reason,
            chain.last_hash,
            hash,
        ],
        |r| r.get(0),
    )?;
    chain.last_id = id;
    chain.last_hash = hash;
    Ok(Ok(()))
}
