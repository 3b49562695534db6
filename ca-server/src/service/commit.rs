//! The issuance write path: serials reserved in blocks ahead of signing, and concurrent
//! issuances committed together (group commit), so the disk sees one flush per batch instead of
//! three per certificate.
//!
//! Invariants: a serial is durably reserved before anything is signed with it and is never handed
//! out twice (a block lost in a crash is simply never used); a certificate's row, its audit entry
//! and its token use commit together, and its caller hears back only once that commit is durable;
//! an item that fails (token used up, serial conflict) fails alone and writes nothing.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

use super::{ServiceError, time_ordered_serial};
use crate::pki::Serial;
use crate::store::{Issuance, Store, StoreError};

/// Serials reserved per block: one flush buys this many issuances' serials.
pub const SERIAL_BLOCK: usize = 64;

/// Issuances one transaction takes at most.
pub const MAX_BATCH: usize = 256;

/// Serials reserved ahead, handed out one at a time.
pub struct SerialPool {
    free: Mutex<Vec<Serial>>,
    block: usize,
}

impl SerialPool {
    /// A pool reserving `block` serials at a time.
    pub fn new(block: usize) -> SerialPool {
        SerialPool {
            free: Mutex::new(Vec::new()),
            block: block.max(1),
        }
    }

    /// A serial that is durably reserved and was never handed out before.
    pub async fn next(&self, store: &dyn Store, at: i64) -> Result<Serial, ServiceError> {
        let mut free = self.free.lock().await;
        if let Some(s) = free.pop() {
            return Ok(s);
        }
        let mut attempts = 0;
        loop {
            let block = (0..self.block)
                .map(|_| time_ordered_serial(at))
                .collect::<Result<Vec<_>, _>>()?;
            match store.reserve_serials(&block, at).await {
                Ok(()) => {
                    *free = block;
                    break;
                }
                // 2^-126 per draw; a few retries turn a miracle into a non-event.
                Err(StoreError::Conflict(_)) if attempts < 3 => attempts += 1,
                Err(e) => return Err(e.into()),
            }
        }
        free.pop()
            .ok_or_else(|| StoreError::Commit("no serial reserved".into()).into())
    }
}

/// An issuance waiting for its batch, and where to hand it back with the outcome.
type Pending = (
    Issuance,
    oneshot::Sender<(Issuance, Result<(), StoreError>)>,
);

/// Commits issuances in batches: whatever arrived while the previous commit was flushing goes
/// into the next one, so a lone request pays no delay and concurrent ones share a flush.
#[derive(Clone)]
pub struct GroupCommitter {
    queue: mpsc::Sender<Pending>,
}

impl GroupCommitter {
    /// Starts the committer task over `store`.
    pub fn spawn(store: Arc<dyn Store>) -> GroupCommitter {
        let (queue, mut rx) = mpsc::channel::<Pending>(MAX_BATCH * 4);
        tokio::spawn(async move {
            let mut pending: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut pending, MAX_BATCH).await > 0 {
                let (items, replies): (Vec<Issuance>, Vec<_>) = pending.drain(..).unzip();
                metrics::histogram!("ca_store_commit_batch_size").record(items.len() as f64);
                match store.commit_issuances(&items).await {
                    Ok(results) => {
                        for ((item, reply), result) in items.into_iter().zip(replies).zip(results) {
                            let _ = reply.send((item, result));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, batch = items.len(), "issuance batch commit failed");
                        let message = e.to_string();
                        // Every item hears why; a full disk stays a storage fault, so each
                        // caller can tell it apart from a failure of its own request.
                        let why = || match &e {
                            StoreError::Storage { fault, detail } => StoreError::Storage {
                                fault: *fault,
                                detail: detail.clone(),
                            },
                            _ => StoreError::Commit(message.clone()),
                        };
                        for (item, reply) in items.into_iter().zip(replies) {
                            let _ = reply.send((item, Err(why())));
                        }
                    }
                }
            }
        });
        GroupCommitter { queue }
    }

    /// Commits `item` with whatever else is waiting; hands it back once it is durable, or with
    /// the reason it was not written.
    pub async fn commit(&self, item: Issuance) -> Result<Issuance, StoreError> {
        let stopped = || StoreError::Commit("the committer has stopped".into());
        let (tx, rx) = oneshot::channel();
        self.queue.send((item, tx)).await.map_err(|_| stopped())?;
        let (item, result) = rx.await.map_err(|_| stopped())?;
        result.map(|()| item)
    }
}
