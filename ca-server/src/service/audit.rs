//! The audit log's tamper evidence: the audit key, signed checkpoints of the chain's end, and
//! verification that names the first entry that does not fit.

use std::collections::HashMap;

use ring::hmac;
use zeroize::Zeroizing;

use super::{Ca, ServiceError, random_bytes};
use crate::sealed::{self, Sealer};
use crate::store::{AuditCheckpoint, audit_hash, checkpoint_message};

/// The slot the audit key is sealed for.
pub(crate) const AUDIT_SLOT: &str = "audit";

/// Entries read per page while verifying.
const PAGE: u32 = 5_000;

/// What `audit verify` found in a log that verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Entries in the chain.
    pub chained: u64,
    /// Entries written before the chain began (no hashes).
    pub legacy: u64,
    /// Checkpoints whose signature and hash matched.
    pub checkpoints: usize,
    /// The newest checkpoint.
    pub last_checkpoint: Option<AuditCheckpoint>,
    /// Chained entries after the newest checkpoint (protected by the chain only, until the next).
    pub uncovered: u64,
}

fn mac_hex(key: &hmac::Key, last_id: i64, last_hash: &str, at: i64) -> String {
    hex::encode(hmac::sign(
        key,
        checkpoint_message(last_id, last_hash, at).as_bytes(),
    ))
}

fn tampered(msg: String) -> ServiceError {
    ServiceError::AuditTampered(msg)
}

impl Ca {
    /// The audit key, opened once; a CA created before the audit chain gets one now (sealed with
    /// the passphrase when its keys are sealed).
    async fn audit_key(&self) -> Result<hmac::Key, ServiceError> {
        let secret = self
            .audit_secret
            .get_or_try_init(|| async {
                let stored = Zeroizing::new(
                    match self.store.settings().await?.and_then(|s| s.audit_key) {
                        Some(k) => k,
                        None => {
                            let fresh = Zeroizing::new(random_bytes::<32>()?);
                            let sealed_text = match (&self.passphrase, self.settings.keys_sealed) {
                                (Some(p), _) => Zeroizing::new(
                                    Sealer::new(p)?.seal(AUDIT_SLOT, fresh.as_slice())?,
                                ),
                                (None, false) => sealed::plain(fresh.as_slice()),
                                (None, true) => {
                                    return Err(ServiceError::Seal(
                                        sealed::SealError::PassphraseRequired(AUDIT_SLOT.into()),
                                    ));
                                }
                            };
                            self.store.set_audit_key(&sealed_text).await?;
                            // Whoever stored first wins; everyone uses the stored one.
                            self.store
                                .settings()
                                .await?
                                .and_then(|s| s.audit_key)
                                .ok_or(ServiceError::NotInitialized)?
                        }
                    },
                );
                Ok::<_, ServiceError>(sealed::open(AUDIT_SLOT, &stored, self.passphrase.as_ref())?)
            })
            .await?;
        Ok(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// A secret for `label` derived from the CA's sealed audit secret (HMAC-SHA256 with a
    /// domain-separating label): the same on every server sharing the database, and never
    /// stored (ACME External Account Binding MAC keys).
    pub async fn derive_secret(
        &self,
        label: &str,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, ServiceError> {
        let key = self.audit_key().await?;
        Ok(zeroize::Zeroizing::new(
            hmac::sign(&key, format!("derive:{label}").as_bytes())
                .as_ref()
                .to_vec(),
        ))
    }

    /// Signs the current end of the audit chain and records it.
    pub async fn audit_checkpoint(&self) -> Result<AuditCheckpoint, ServiceError> {
        let key = self.audit_key().await?;
        let sign = |last_id: i64, last_hash: &str, at: i64| mac_hex(&key, last_id, last_hash, at);
        let cp = self.store.audit_checkpoint(self.now_unix(), &sign).await?;
        // Also in the log, so a copy of the head lives outside the database.
        tracing::info!(
            checkpoint = cp.id,
            last_id = cp.last_id,
            last_hash = %cp.last_hash,
            mac = %cp.mac,
            "audit checkpoint"
        );
        Ok(cp)
    }

    /// Recomputes the chain and checks every checkpoint; names the first entry or checkpoint
    /// that does not fit.
    pub async fn verify_audit(&self) -> Result<AuditReport, ServiceError> {
        let key = self.audit_key().await?;
        let checkpoints = self.store.audit_checkpoints().await?;
        let wanted: std::collections::HashSet<i64> =
            checkpoints.iter().map(|c| c.last_id).collect();
        let mut hash_at: HashMap<i64, String> = HashMap::new();
        let (mut chained, mut legacy) = (0u64, 0u64);
        let mut last: Option<(i64, String)> = None;
        let mut after = 0;
        loop {
            let page = self.store.audit_chain(after, PAGE).await?;
            let Some(end) = page.last() else { break };
            after = end.entry.id;
            for c in &page {
                let id = c.entry.id;
                match (&c.prev_hash, &c.entry_hash, &last) {
                    (None, None, None) => legacy += 1,
                    (None, None, Some((first, _))) => {
                        return Err(tampered(format!(
                            "entry {id} carries no hash although the chain runs from before it \
                             (entry {first} and on): its hashes were removed"
                        )));
                    }
                    (Some(prev), Some(hash), previous) => {
                        match previous {
                            None if prev != "genesis" => {
                                return Err(tampered(format!(
                                    "entry {id}, the first with a hash, does not start the chain: \
                                     entries before it were removed"
                                )));
                            }
                            Some((prev_id, prev_hash)) if prev != prev_hash => {
                                return Err(tampered(format!(
                                    "entry {id} does not follow entry {prev_id}: an entry between \
                                     them was removed, or entries were inserted or reordered"
                                )));
                            }
                            _ => {}
                        }
                        if audit_hash(prev, &c.entry) != *hash {
                            return Err(tampered(format!(
                                "entry {id} does not match its hash: its contents were changed"
                            )));
                        }
                        chained += 1;
                        if wanted.contains(&id) {
                            hash_at.insert(id, hash.clone());
                        }
                        last = Some((id, hash.clone()));
                    }
                    _ => {
                        return Err(tampered(format!(
                            "entry {id} carries only one of its two hashes"
                        )));
                    }
                }
            }
        }
        let (head_id, head_hash) = self.store.audit_head().await?;
        if let Some((last_id, last_hash)) = &last
            && (head_id != *last_id || head_hash != *last_hash)
        {
            return Err(tampered(format!(
                "the chain ends at entry {last_id}, but the recorded end is entry {head_id}: \
                 entries were removed from the end, or the end was altered"
            )));
        }
        let mut previous_id = 0;
        for cp in &checkpoints {
            let message = checkpoint_message(cp.last_id, &cp.last_hash, cp.at);
            let mac_ok = hex::decode(&cp.mac)
                .ok()
                .is_some_and(|mac| hmac::verify(&key, message.as_bytes(), &mac).is_ok());
            if !mac_ok {
                return Err(tampered(format!(
                    "checkpoint {} (entry {}) has an invalid signature: it was forged or altered",
                    cp.id, cp.last_id
                )));
            }
            if cp.last_id < previous_id {
                return Err(tampered(format!(
                    "checkpoint {} covers entry {}, before the previous checkpoint's entry \
                     {previous_id}",
                    cp.id, cp.last_id
                )));
            }
            previous_id = cp.last_id;
            if cp.last_hash != "genesis" && hash_at.get(&cp.last_id) != Some(&cp.last_hash) {
                return Err(tampered(format!(
                    "entry {} does not match checkpoint {} signed at {}: the log up to it was \
                     rewritten, or the entry removed",
                    cp.last_id, cp.id, cp.at
                )));
            }
        }
        let last_checkpoint = checkpoints.last().cloned();
        let covered = last_checkpoint.as_ref().map_or(0, |c| c.last_id);
        let uncovered = match &last {
            Some(_) => {
                let mut n = 0u64;
                let mut after = covered;
                loop {
                    let page = self.store.audit_chain(after, PAGE).await?;
                    let Some(end) = page.last() else { break };
                    after = end.entry.id;
                    n += page.len() as u64;
                }
                n
            }
            None => 0,
        };
        Ok(AuditReport {
            chained,
            legacy,
            checkpoints: checkpoints.len(),
            last_checkpoint,
            uncovered,
        })
    }
}
