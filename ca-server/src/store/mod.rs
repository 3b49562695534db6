//! Persistence: the only place that speaks SQL, behind the [`Store`] trait.
//!
//! Invariants every backend keeps: a serial is reserved before it is signed and never reused; a
//! certificate row and its audit entry commit together, before the certificate leaves the CA; the
//! audit log is append-only. [`conformance`] checks them for any backend.

mod acme;
#[cfg(any(test, feature = "store-conformance"))]
pub mod conformance;
#[macro_use]
mod sql;
mod postgres;
mod sqlite;
mod sqlite_writer;

pub use acme::{AcmeAccount, AcmeEabKey, AcmeOrderRow};
pub use postgres::{PgSettings, PgStore, redact_url};

/// Whether `url` names a PostgreSQL database (else a SQLite data directory is meant).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}
pub use sqlite::{DatabaseSummary, SqliteStore};

use async_trait::async_trait;
use serde::Serialize;

use crate::error::{Classify, ErrorKind};
use crate::pki::Serial;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A uniqueness rule was hit (CA already initialised, serial already used, ...).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The referenced row does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A stored value could not be decoded (a corrupted row).
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// The storage under the database is full or failing. The transaction was rolled back; the
    /// same operation succeeds again once the operator frees space (no restart needed).
    #[error("{}: {detail}", fault.describe())]
    Storage {
        /// What failed.
        fault: StorageFault,
        /// The database's own message, for the log.
        detail: String,
    },
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The token of an issuance has no use left (used up, expired, revoked or unknown).
    #[error("token {0} has no use left")]
    TokenUsedUp(String),
    /// The certificate's issuer is revoked: nothing it signs is stored (or handed out) any more.
    #[error("issuer {0} is revoked")]
    IssuerRevoked(String),
    /// A batch commit failed as a whole; nothing of it was written.
    #[error("commit failed: {0}")]
    Commit(String),
    /// Signing inside a store transaction failed; the transaction was rolled back.
    #[error("signing failed: {0}")]
    Signing(String),
    /// The database schema is older than this build needs.
    #[error(
        "the database schema is at version {found}, this build needs {needed}: run `ca-server migrate`"
    )]
    SchemaOutdated {
        /// Newest migration applied.
        found: i64,
        /// Newest migration this build knows.
        needed: i64,
    },
    /// A file offered as a CA database (a backup to restore) is not one this build can use.
    #[error("not a usable CA database: {0}")]
    NotCaDatabase(String),
    /// The database schema is newer than this build knows.
    #[error(
        "the database schema is at version {found}, newer than this build knows ({known}); \
         upgrade ca-server before serving from this database"
    )]
    SchemaTooNew {
        /// Newest migration applied.
        found: i64,
        /// Newest migration this build knows.
        known: i64,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match StorageFault::of(&e) {
            Some(fault) => StoreError::Storage {
                fault,
                detail: e.to_string(),
            },
            None => StoreError::Database(e),
        }
    }
}

impl StoreError {
    /// The storage fault behind this error, if it is one.
    pub fn storage_fault(&self) -> Option<StorageFault> {
        match self {
            StoreError::Storage { fault, .. } => Some(*fault),
            _ => None,
        }
    }
}

/// A failure of the storage under the database, as opposed to a failure of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageFault {
    /// No space left: a full disk, a quota, or a file-size limit (ENOSPC, EDQUOT, EFBIG;
    /// SQLITE_FULL; PostgreSQL's `disk_full`).
    Full,
    /// The storage failed to read or write (SQLITE_IOERR, PostgreSQL's `io_error`). SQLite
    /// reports a write refused by a file-size limit this way too.
    Io,
}

impl StorageFault {
    /// What failed, in words safe to show a client: no path, no SQL.
    pub fn describe(self) -> &'static str {
        match self {
            StorageFault::Full => "database write failed: disk full",
            StorageFault::Io => "database I/O error",
        }
    }

    /// The storage fault behind a database error, if it is one.
    pub fn of(e: &sqlx::Error) -> Option<StorageFault> {
        match e {
            sqlx::Error::Database(db) => {
                let code = db.code()?;
                if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    // An extended result code; the primary one is its low byte.
                    match code.parse::<i64>().ok()? & 0xff {
                        13 => Some(StorageFault::Full),
                        10 => Some(StorageFault::Io),
                        _ => None,
                    }
                } else {
                    match code.as_ref() {
                        "53100" => Some(StorageFault::Full),
                        "58030" => Some(StorageFault::Io),
                        _ => None,
                    }
                }
            }
            sqlx::Error::Io(io) => match io.kind() {
                std::io::ErrorKind::StorageFull
                | std::io::ErrorKind::QuotaExceeded
                | std::io::ErrorKind::FileTooLarge => Some(StorageFault::Full),
                _ => None,
            },
            _ => None,
        }
    }
}

impl Classify for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Storage { .. } => ErrorKind::Unavailable,
            StoreError::Conflict(_) => ErrorKind::Conflict,
            StoreError::NotFound(_) => ErrorKind::NotFound,
            StoreError::TokenUsedUp(_) => ErrorKind::Unauthorized,
            StoreError::IssuerRevoked(_) => ErrorKind::Conflict,
            StoreError::NotCaDatabase(_) => ErrorKind::BadRequest,
            StoreError::SchemaOutdated { .. } | StoreError::SchemaTooNew { .. } => {
                ErrorKind::Conflict
            }
            _ => ErrorKind::Internal,
        }
    }
}

/// CA-wide settings fixed at `init`. `Debug` leaves out the audit key.
#[derive(Clone, PartialEq, Eq)]
pub struct CaSettings {
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// Absolute path of the policy file recorded at init.
    pub policy_path: String,
    /// Whether CA keys are sealed with a passphrase.
    pub keys_sealed: bool,
    /// Whether the root key was moved out of the store.
    pub root_offline: bool,
    /// Host names and addresses the CA server's HTTPS certificate may carry (fixed at init by
    /// the name constraints of its intermediate).
    pub server_names: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// SHA-256 (hex) of the policy file every server must serve, as last published (at init,
    /// by `ca-server policy publish`, or by a SIGHUP reload); `None` before the first publication.
    pub policy_sha256: Option<String>,
    /// The audit key (HMAC key of checkpoints), sealed like the CA keys; `None` until created.
    pub audit_key: Option<String>,
}

/// How stored key text shows in `Debug`: whether there is one, never its content (a key stored
/// in the clear for development is the key itself).
fn stored_key_kind(stored: &Option<String>) -> Option<&'static str> {
    stored.as_ref().map(|_| "<redacted>")
}

impl std::fmt::Debug for CaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaSettings")
            .field("trust_domain", &self.trust_domain)
            .field("policy_path", &self.policy_path)
            .field("keys_sealed", &self.keys_sealed)
            .field("root_offline", &self.root_offline)
            .field("server_names", &self.server_names)
            .field("created_at", &self.created_at)
            .field("policy_sha256", &self.policy_sha256)
            .field("audit_key", &stored_key_kind(&self.audit_key))
            .finish()
    }
}

/// Whether an authority is the root or an environment intermediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthorityKind {
    /// The self-signed trust anchor.
    Root,
    /// An environment's issuing CA.
    Intermediate,
    /// The issuer of the CA server's own HTTPS certificate.
    Tls,
}

impl AuthorityKind {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthorityKind::Root => "root",
            AuthorityKind::Intermediate => "intermediate",
            AuthorityKind::Tls => "tls",
        }
    }
}

/// A CA certificate and its (sealed) key. `Debug` leaves out the key.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthorityRecord {
    /// `root`, or the environment name.
    pub id: String,
    /// Root or intermediate.
    pub kind: AuthorityKind,
    /// The environment, for intermediates.
    pub env: Option<String>,
    /// The issuing authority's id (none for the root).
    pub parent_id: Option<String>,
    /// Serial, hex.
    pub serial: String,
    /// Subject, as text.
    pub subject: String,
    /// Certificate PEM.
    pub cert_pem: String,
    /// Sealed (or, in development mode, plain) key text; `None` when kept offline.
    pub sealed_key: Option<String>,
    /// SHA-256 of the certificate DER, hex.
    pub fingerprint: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// 1 for what init made, then 2, 3, ... per rotation of the same root, environment or TLS
    /// issuer.
    pub generation: i64,
    /// When it takes over issuance (Unix seconds); `None`: from its creation.
    pub activates_at: Option<i64>,
    /// When it left the bundles (Unix seconds; may lie ahead for a root in its overlap).
    pub retired_at: Option<i64>,
    /// When it was revoked (listed on its parent's CRL).
    pub revoked_at: Option<i64>,
    /// RFC 5280 reason name of the revocation.
    pub revocation_reason: Option<String>,
}

impl AuthorityRecord {
    /// When it issues from: `activates_at`, else its creation.
    pub fn active_from(&self) -> i64 {
        self.activates_at.unwrap_or(self.created_at)
    }

    /// Whether it has left the bundles by `now`.
    pub fn retired_by(&self, now: i64) -> bool {
        self.retired_at.is_some_and(|t| t <= now)
    }

    /// What it is rotated as: the root, an environment, or the TLS issuer (`root`, the
    /// environment name, `_tls`), shared by every generation.
    pub fn lineage(&self) -> &str {
        match self.kind {
            AuthorityKind::Root => "root",
            AuthorityKind::Tls => "_tls",
            AuthorityKind::Intermediate => self.env.as_deref().unwrap_or(&self.id),
        }
    }
}

/// A root's certificate for another root's key, published during a root rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossCertificate {
    /// The root whose key it certifies.
    pub subject_id: String,
    /// The root that signed it.
    pub issuer_id: String,
    /// Serial, hex.
    pub serial: String,
    /// PEM.
    pub cert_pem: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Unix seconds.
    pub created_at: i64,
}

/// A new generation of an authority, written in one transaction by [`Store::add_authority`].
#[derive(Debug, Clone)]
pub struct NewAuthority {
    /// The authority.
    pub record: AuthorityRecord,
    /// Cross-certificates made with it (root rotation).
    pub cross: Vec<CrossCertificate>,
    /// Authorities whose `retired_at` is set to the given time (a root's overlap end).
    pub retire: Vec<(String, i64)>,
    /// An authority revoked at once: (id, at, reason).
    pub revoke: Option<(String, i64, String)>,
    /// The audit entry.
    pub audit: AuditEntry,
}

/// Leaves of one issuer that have not expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IssuerLeaves {
    /// Unexpired leaves, revoked or not.
    pub unexpired: i64,
    /// Unexpired, unrevoked leaves.
    pub live: i64,
}

impl std::fmt::Debug for AuthorityRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityRecord")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("env", &self.env)
            .field("parent_id", &self.parent_id)
            .field("serial", &self.serial)
            .field("subject", &self.subject)
            .field("cert_pem", &self.cert_pem)
            .field("sealed_key", &stored_key_kind(&self.sealed_key))
            .field("fingerprint", &self.fingerprint)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("created_at", &self.created_at)
            .field("generation", &self.generation)
            .field("activates_at", &self.activates_at)
            .field("retired_at", &self.retired_at)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

/// How a certificate came to be issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IssuedVia {
    /// `ca-server issue` on the CA host.
    Cli,
    /// First enrollment with a token.
    Enroll,
    /// Renewal over mTLS.
    Renew,
    /// The CA server's own HTTPS certificate.
    Server,
    /// An order finalized through the ACME server.
    Acme,
}

impl IssuedVia {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            IssuedVia::Cli => "cli",
            IssuedVia::Acme => "acme",
            IssuedVia::Enroll => "enroll",
            IssuedVia::Renew => "renew",
            IssuedVia::Server => "server",
        }
    }

    fn parse(s: &str) -> Option<IssuedVia> {
        match s {
            "cli" => Some(IssuedVia::Cli),
            "acme" => Some(IssuedVia::Acme),
            "enroll" => Some(IssuedVia::Enroll),
            "renew" => Some(IssuedVia::Renew),
            "server" => Some(IssuedVia::Server),
            _ => None,
        }
    }
}

/// The columns of a certificate's row that its revocation status is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateStatus {
    /// The authority that issued it.
    pub issuer_id: String,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
    /// Why (an RFC 5280 reason name), if it was revoked.
    pub revocation_reason: Option<String>,
}

/// An issued leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateRecord {
    /// Serial, canonical hex.
    pub serial: String,
    /// Issuing authority id (= environment).
    pub issuer_id: String,
    /// Environment.
    pub env: String,
    /// Service.
    pub service: String,
    /// SPIFFE ID.
    pub spiffe_id: String,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP SANs, as text.
    pub ip_addresses: Vec<String>,
    /// Key type (`p256`, ...).
    pub key_type: String,
    /// SHA-256 of the SubjectPublicKeyInfo, hex.
    pub key_fingerprint: String,
    /// SHA-256 of the certificate DER, hex.
    pub fingerprint: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Certificate PEM.
    pub cert_pem: String,
    /// How it was issued.
    pub issued_via: IssuedVia,
    /// Who asked (operator, token id, or presented serial).
    pub issued_by: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, when revoked.
    pub revoked_at: Option<i64>,
    /// RFC 5280 reason name, when revoked.
    pub revocation_reason: Option<String>,
}

/// One issuance to commit: the certificate row, its audit entry and, for an enrollment, the token
/// use it spends. All three are written together or not at all.
#[derive(Debug, Clone)]
pub struct Issuance {
    /// The certificate (its serial reserved).
    pub cert: CertificateRecord,
    /// Its audit entry.
    pub audit: AuditEntry,
    /// The token whose use it spends, with the time the use is checked against.
    pub token: Option<TokenUse>,
}

/// A token use spent by an issuance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUse {
    /// Token id.
    pub id: String,
    /// Unix seconds: the token must be unexpired then.
    pub at: i64,
}

/// A certificate's status at a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertStatus {
    /// Within validity and not revoked.
    Valid,
    /// Past notAfter (and not revoked).
    Expired,
    /// Revoked.
    Revoked,
}

impl CertStatus {
    /// Text form.
    pub fn as_str(self) -> &'static str {
        match self {
            CertStatus::Valid => "valid",
            CertStatus::Expired => "expired",
            CertStatus::Revoked => "revoked",
        }
    }
}

impl std::str::FromStr for CertStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "valid" => Ok(CertStatus::Valid),
            "expired" => Ok(CertStatus::Expired),
            "revoked" => Ok(CertStatus::Revoked),
            other => Err(format!(
                "unknown status {other:?} (valid, expired or revoked)"
            )),
        }
    }
}

impl CertificateRecord {
    /// Status at `now` (Unix seconds).
    pub fn status(&self, now: i64) -> CertStatus {
        if self.revoked_at.is_some() {
            CertStatus::Revoked
        } else if self.not_after <= now {
            CertStatus::Expired
        } else {
            CertStatus::Valid
        }
    }
}

/// Which certificates to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateFilter {
    /// Only this environment.
    pub env: Option<String>,
    /// Only this service.
    pub service: Option<String>,
    /// Only this status (at `now`).
    pub status: Option<CertStatus>,
    /// Only certificates with notAfter at or before this (Unix seconds).
    pub not_after_before: Option<i64>,
    /// Evaluate status at this time (Unix seconds).
    pub now: i64,
    /// At most this many, newest first.
    pub limit: Option<u32>,
}

/// Outcome recorded in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditResult {
    /// Done.
    Ok,
    /// Refused (policy, authentication, bad input).
    Denied,
    /// Failed inside the CA.
    Error,
}

impl AuditResult {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditResult::Ok => "ok",
            AuditResult::Denied => "denied",
            AuditResult::Error => "error",
        }
    }

    fn parse(s: &str) -> Option<AuditResult> {
        match s {
            "ok" => Some(AuditResult::Ok),
            "denied" => Some(AuditResult::Denied),
            "error" => Some(AuditResult::Error),
            _ => None,
        }
    }
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Row id (assigned by the store; 0 before insertion).
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// Who: `cli:<user>`, `token:<id>`, `cert:<serial>`.
    pub actor: String,
    /// What: `init`, `issue`, `enroll`, `renew`, `revoke`, ...
    pub action: String,
    /// Environment concerned, if any.
    pub env: Option<String>,
    /// Service concerned, if any.
    pub service: Option<String>,
    /// Certificate concerned, if any.
    pub serial: Option<String>,
    /// Outcome.
    pub result: AuditResult,
    /// Why (denials and errors), or a short detail.
    pub reason: Option<String>,
}

/// An audit entry with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainedAudit {
    /// The entry.
    pub entry: AuditEntry,
    /// Hash of the previous entry (`genesis` for the first chained entry); `None` for entries
    /// written before the chain began.
    pub prev_hash: Option<String>,
    /// This entry's hash ([`audit_hash`] of `prev_hash` and its contents).
    pub entry_hash: Option<String>,
}

/// A signed snapshot of the end of the audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheckpoint {
    /// Row id.
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// Id of the last entry it covers (0: none yet).
    pub last_id: i64,
    /// That entry's hash (`genesis` before the first).
    pub last_hash: String,
    /// HMAC-SHA256 (hex) under the audit key of [`checkpoint_message`].
    pub mac: String,
}

/// Computes a checkpoint's MAC, given the covered id, hash and time; inside the store's transaction.
pub type CheckpointSigner<'a> = &'a (dyn Fn(i64, &str, i64) -> String + Send + Sync);

/// The hash an entry carries: SHA-256 (hex) over the previous entry's hash and this entry's
/// contents, in a fixed JSON encoding. The row id is not part of it (it is assigned on insert);
/// order is kept by the link to the previous hash.
pub fn audit_hash(prev_hash: &str, e: &AuditEntry) -> String {
    let canonical = serde_json::json!([
        "ca-audit-v1",
        prev_hash,
        e.at,
        e.actor,
        e.action,
        e.env,
        e.service,
        e.serial,
        e.result.as_str(),
        e.reason,
    ]);
    crate::pki::Fingerprint::of(canonical.to_string().as_bytes()).to_hex()
}

/// What a checkpoint's MAC covers.
pub fn checkpoint_message(last_id: i64, last_hash: &str, at: i64) -> String {
    format!("ca-audit-checkpoint-v1\n{last_id}\n{last_hash}\n{at}")
}

/// An enrollment token. The secret itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    /// Public id (also the first part of the token text).
    pub id: String,
    /// SHA-256 of the secret part, hex.
    #[serde(skip)]
    pub token_hash: String,
    /// Environment the token enrolls into.
    pub env: String,
    /// Service the token enrolls as.
    pub service: String,
    /// How many enrollments it allows (1 unless a CI token).
    pub max_uses: u32,
    /// How many it has been used for.
    pub uses: u32,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Who minted it.
    pub created_by: String,
    /// Unix seconds, when revoked.
    pub revoked_at: Option<i64>,
}

impl TokenRecord {
    /// Whether the token can still enroll at `now`.
    pub fn usable(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at > now && self.uses < self.max_uses
    }
}

/// A revoked certificate as a CRL lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// Serial, hex.
    pub serial: String,
    /// Unix seconds.
    pub revoked_at: i64,
    /// RFC 5280 reason name.
    pub reason: String,
}

/// A signed CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlRecord {
    /// Issuing authority id.
    pub issuer_id: String,
    /// CRL number.
    pub number: i64,
    /// Unix seconds.
    pub this_update: i64,
    /// Unix seconds.
    pub next_update: i64,
    /// DER.
    pub der: Vec<u8>,
}

/// A CRL to generate: the store hands out its number and the revoked entries inside one
/// transaction, so CRL numbers follow the order of generation and a later number never lists less.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlDraft {
    /// Issuing authority id.
    pub issuer_id: String,
    /// Unix seconds.
    pub this_update: i64,
    /// Unix seconds.
    pub next_update: i64,
    /// List the issuer's revoked certificates whose notAfter is after this (Unix seconds);
    /// `None`: a root's CRL, which lists its revoked intermediates.
    pub entries_after: Option<i64>,
}

/// Signs a CRL given its number and entries; returns its DER.
pub type CrlSigner<'a> =
    &'a (dyn Fn(i64, &[RevokedEntry]) -> Result<Vec<u8>, String> + Send + Sync);

/// A claim on one period of a scheduled job, so that several servers on one database run it
/// once per period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobClaim {
    /// Job name.
    pub job: String,
    /// Start of the period (Unix seconds of the schedule's tick).
    pub period: i64,
    /// Who runs it (`host:pid`).
    pub owner: String,
    /// Unix seconds.
    pub now: i64,
    /// Until when the claim holds if its owner never reports back (Unix seconds); after that
    /// another server may run the next period.
    pub lease_until: i64,
}

/// Called when another server may have revoked something.
pub type ChangeHook = std::sync::Arc<dyn Fn() + Send + Sync>;

/// Everything `init` writes, in one transaction.
#[derive(Debug, Clone)]
pub struct NewCa {
    /// Settings row.
    pub settings: CaSettings,
    /// Root first, then intermediates.
    pub authorities: Vec<AuthorityRecord>,
    /// The init audit entry.
    pub audit: AuditEntry,
}

/// The persistence interface. Implementations must keep the invariants in the module docs.
#[async_trait]
pub trait Store: Send + Sync {
    /// Writes settings, authorities and their serials atomically; `Conflict` if a CA exists.
    async fn initialize(&self, ca: &NewCa) -> Result<(), StoreError>;
    /// The CA settings, if initialised.
    async fn settings(&self) -> Result<Option<CaSettings>, StoreError>;
    /// All authorities, root first.
    async fn authorities(&self) -> Result<Vec<AuthorityRecord>, StoreError>;
    /// One authority by id.
    async fn authority(&self, id: &str) -> Result<Option<AuthorityRecord>, StoreError>;
    /// Adds a generation of an authority with its serial, cross-certificates, retirements and
    /// audit entry in one transaction; `Conflict` when that generation exists already.
    async fn add_authority(&self, new: &NewAuthority) -> Result<(), StoreError>;
    /// Marks an authority retired at `at` unless it is already; `true` if this call did.
    async fn retire_authority(&self, id: &str, at: i64) -> Result<bool, StoreError>;
    /// Unexpired leaves per issuer at `now` (issuers without any are absent).
    async fn issuer_leaves(
        &self,
        now: i64,
    ) -> Result<std::collections::BTreeMap<String, IssuerLeaves>, StoreError>;
    /// Every cross-certificate.
    async fn cross_certificates(&self) -> Result<Vec<CrossCertificate>, StoreError>;
    /// Stores a fresh ACME nonce.
    async fn acme_put_nonce(&self, nonce: &str, expires_at: i64) -> Result<(), StoreError>;
    /// Uses up an ACME nonce: `true` if it existed and had not expired (it is gone either way).
    async fn acme_take_nonce(&self, nonce: &str, now: i64) -> Result<bool, StoreError>;
    /// Deletes what ACME no longer needs at `now`: expired nonces, orders that expired
    /// unfinished, and finished orders whose certificate has expired (revocation by the
    /// ordering account needs the order only while the certificate lives). Returns how many
    /// rows went.
    async fn acme_prune(&self, now: i64) -> Result<u64, StoreError>;
    /// Creates an account with its audit entry, spending its EAB key (unused, unexpired at
    /// `account.created_at`, same environment) in the same transaction: `TokenUsedUp` when the
    /// key cannot be spent, `Conflict` when the environment has an account with this key.
    async fn acme_create_account(
        &self,
        account: &AcmeAccount,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// One account by id.
    async fn acme_account(&self, id: &str) -> Result<Option<AcmeAccount>, StoreError>;
    /// The account of `env` with key thumbprint `thumbprint`.
    async fn acme_account_by_key(
        &self,
        env: &str,
        thumbprint: &str,
    ) -> Result<Option<AcmeAccount>, StoreError>;
    /// Rewrites an account's status, contact and key, with its audit entry; `Conflict` when the
    /// new key belongs to another account of the environment.
    async fn acme_update_account(
        &self,
        account: &AcmeAccount,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// Accounts, of one environment or all, oldest first.
    async fn acme_accounts(&self, env: Option<&str>) -> Result<Vec<AcmeAccount>, StoreError>;
    /// Stores an EAB key with its audit entry.
    async fn acme_create_eab(&self, key: &AcmeEabKey, audit: &AuditEntry)
    -> Result<(), StoreError>;
    /// One EAB key.
    async fn acme_eab(&self, kid: &str) -> Result<Option<AcmeEabKey>, StoreError>;
    /// Stores a new order (version as given).
    async fn acme_create_order(&self, order: &AcmeOrderRow) -> Result<(), StoreError>;
    /// One order.
    async fn acme_order(&self, id: &str) -> Result<Option<AcmeOrderRow>, StoreError>;
    /// Replaces an order if its stored version is still `expected` (then stores
    /// `order.version`); `false` when another write got there first.
    async fn acme_save_order(
        &self,
        order: &AcmeOrderRow,
        expected: i64,
    ) -> Result<bool, StoreError>;
    /// The ids of an account's orders, oldest first.
    async fn acme_orders_of(&self, account_id: &str) -> Result<Vec<String>, StoreError>;
    /// The order that produced certificate `serial`.
    async fn acme_order_by_cert(&self, serial: &str) -> Result<Option<AcmeOrderRow>, StoreError>;
    /// Reserves several serials in one transaction, durable on return; `Conflict` (and nothing
    /// reserved) if any of them was ever used.
    async fn reserve_serials(&self, serials: &[Serial], at: i64) -> Result<(), StoreError>;
    /// Commits a batch of issuances in one transaction (one flush for all). Each item stands or
    /// falls alone: a token without a use left (`TokenUsedUp`), a serial already stored
    /// (`Conflict`) or not reserved (`NotFound`), or an issuer revoked meanwhile
    /// (`IssuerRevoked`) fails that item and writes nothing of it, while the others commit. The
    /// outer error means the transaction failed and nothing was written.
    async fn commit_issuances(
        &self,
        batch: &[Issuance],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError>;
    /// Commits a certificate (whose serial is reserved, whose issuer is not revoked) together
    /// with its audit entry.
    async fn insert_certificate(
        &self,
        cert: &CertificateRecord,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// One certificate by serial.
    async fn certificate(&self, serial: &Serial) -> Result<Option<CertificateRecord>, StoreError>;
    /// What OCSP answers from: a certificate's issuer and revocation, without the rest of its row.
    async fn certificate_status(
        &self,
        serial: &Serial,
    ) -> Result<Option<CertificateStatus>, StoreError>;
    /// Certificates matching `filter`, newest first.
    async fn list_certificates(
        &self,
        filter: &CertificateFilter,
    ) -> Result<Vec<CertificateRecord>, StoreError>;
    /// Appends to the audit log.
    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// Audit entries at or after `since` (Unix seconds), oldest first.
    async fn audit_entries(
        &self,
        since: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError>;
    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Number of unrevoked, unexpired certificates per environment.
    async fn count_live_certificates(&self, now: i64) -> Result<Vec<(String, i64)>, StoreError>;
    /// Stores a new token; `Conflict` if the id or hash exists.
    async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError>;
    /// One token by id.
    async fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Atomically spends one use of a usable token; `false` if it is used up, expired, revoked
    /// or unknown. Concurrent callers can never spend more uses than the token has.
    async fn spend_token(&self, id: &str, now: i64) -> Result<bool, StoreError>;
    /// Tokens, newest first; only those usable at `usable_at` when given.
    async fn list_tokens(&self, usable_at: Option<i64>) -> Result<Vec<TokenRecord>, StoreError>;
    /// Revokes a token; `false` if unknown or already revoked.
    async fn revoke_token(&self, id: &str, at: i64) -> Result<bool, StoreError>;
    /// Deletes tokens that expired before `before`; returns how many.
    async fn prune_tokens(&self, before: i64) -> Result<u64, StoreError>;
    /// Marks a certificate revoked and appends `audit`, atomically. `NotFound` for an unknown
    /// serial, `Conflict` if it is already revoked.
    async fn revoke_certificate(
        &self,
        serial: &Serial,
        at: i64,
        reason: &str,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// Revoked certificates of `issuer_id` whose notAfter is after `not_after_after`.
    async fn revoked_entries(
        &self,
        issuer_id: &str,
        not_after_after: i64,
    ) -> Result<Vec<RevokedEntry>, StoreError>;
    /// Generates the next CRL of `draft.issuer_id` in one transaction: takes the next number of
    /// the issuer's counter row (1, 2, ...; held locked until commit, so concurrent generations
    /// on any server queue behind each other), reads the revoked entries, calls `sign`, and
    /// stores the result as the issuer's current CRL. A number is never handed out twice.
    async fn generate_crl(
        &self,
        draft: &CrlDraft,
        sign: CrlSigner<'_>,
    ) -> Result<CrlRecord, StoreError>;
    /// The latest stored CRL of `issuer_id`.
    async fn crl(&self, issuer_id: &str) -> Result<Option<CrlRecord>, StoreError>;
    /// Raises the CRL counter of every authority to at least `floor` (an authority without a
    /// counter gets one at `floor`) in one transaction, and returns every counter afterwards,
    /// ordered by issuer. A counter above `floor` is left alone: counters never go down. Run
    /// after a restore, so that numbers published after the backup are never handed out again.
    async fn raise_crl_numbers(&self, floor: i64) -> Result<Vec<(String, i64)>, StoreError>;
    /// Claims a period of a scheduled job; `true` if this caller is to run it: the period is
    /// later than any claimed before, and the last run finished or its lease ran out (so runs
    /// never overlap unless one outlives its lease). Every grant is kept in the job's history.
    async fn claim_job(&self, claim: &JobClaim) -> Result<bool, StoreError>;
    /// Marks a claimed period finished (only while its owner still holds it).
    async fn finish_job(&self, claim: &JobClaim, at: i64) -> Result<(), StoreError>;
    /// Records `sha256` as the policy every server must serve, with its audit entry.
    async fn publish_policy(&self, sha256: &str, audit: &AuditEntry) -> Result<(), StoreError>;
    /// Calls `hook` whenever another server may have revoked a certificate (and when the feed
    /// was interrupted, since changes may have been missed). `false` when the backend has no
    /// such feed (then callers rely on short cache lifetimes alone).
    async fn watch_revocations(&self, hook: ChangeHook) -> Result<bool, StoreError> {
        let _ = hook;
        Ok(false)
    }
    /// Entries with their chain hashes, id after `after_id`, oldest first, at most `limit`.
    async fn audit_chain(&self, after_id: i64, limit: u32)
    -> Result<Vec<ChainedAudit>, StoreError>;
    /// The end of the audit chain: (last id, last hash).
    async fn audit_head(&self) -> Result<(i64, String), StoreError>;
    /// Records a checkpoint of the chain's end as of now (`sign` gives its MAC), in the
    /// transaction that holds the chain.
    async fn audit_checkpoint(
        &self,
        at: i64,
        sign: CheckpointSigner<'_>,
    ) -> Result<AuditCheckpoint, StoreError>;
    /// Every checkpoint, oldest first.
    async fn audit_checkpoints(&self) -> Result<Vec<AuditCheckpoint>, StoreError>;
    /// Stores the sealed audit key unless one exists; returns whether this one was stored.
    async fn set_audit_key(&self, sealed: &str) -> Result<bool, StoreError>;
    /// Whether several servers may share this database (then they must agree on the policy).
    fn shared_by_servers(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_database_is_a_storage_fault_and_other_errors_are_not() {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .expect("pool");
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)")
            .execute(&pool)
            .await
            .expect("create");
        // SQLite answers SQLITE_FULL when the database may not grow, as on a full disk.
        sqlx::query("PRAGMA max_page_count = 3")
            .execute(&pool)
            .await
            .expect("limit");
        let full: StoreError = sqlx::query("INSERT INTO t (b) VALUES (zeroblob(100000))")
            .execute(&pool)
            .await
            .expect_err("the database is full")
            .into();
        assert_eq!(full.storage_fault(), Some(StorageFault::Full), "{full:?}");
        assert_eq!(full.kind(), ErrorKind::Unavailable);
        assert!(
            full.to_string()
                .starts_with("database write failed: disk full: ")
        );

        let duplicate: StoreError = sqlx::query("INSERT INTO t (id) VALUES (1), (1)")
            .execute(&pool)
            .await
            .expect_err("duplicate key")
            .into();
        assert!(
            matches!(duplicate, StoreError::Database(_)),
            "{duplicate:?}"
        );
        assert_eq!(duplicate.kind(), ErrorKind::Internal);

        for kind in [
            std::io::ErrorKind::StorageFull,
            std::io::ErrorKind::FileTooLarge,
            std::io::ErrorKind::QuotaExceeded,
        ] {
            let e: StoreError = sqlx::Error::Io(std::io::Error::from(kind)).into();
            assert_eq!(e.storage_fault(), Some(StorageFault::Full), "{kind:?}");
        }
        let refused: StoreError =
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)).into();
        assert_eq!(refused.storage_fault(), None);
    }
}
