//! The ACME server's rows: accounts, External Account Binding keys, nonces and orders.

/// An ACME account, bound to an (environment, service) identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeAccount {
    /// Random id, the last segment of the account URL.
    pub id: String,
    /// Environment (the directory it registered with).
    pub env: String,
    /// Service whose policy its orders are decided under.
    pub service: String,
    /// The account key, RFC 7638 canonical JWK JSON.
    pub jwk: String,
    /// RFC 7638 thumbprint of the key (unique per environment).
    pub thumbprint: String,
    /// `valid`, `deactivated` or `revoked`.
    pub status: String,
    /// Contact URLs.
    pub contact: Vec<String>,
    /// The External Account Binding key it registered with.
    pub eab_kid: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
}

/// An External Account Binding key (its MAC key is derived, never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeEabKey {
    /// Key id.
    pub kid: String,
    /// Environment the account will belong to.
    pub env: String,
    /// Service the account will act as.
    pub service: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; unused keys stop working then.
    pub expires_at: i64,
    /// Who minted it.
    pub created_by: String,
    /// When an account was bound with it (single use).
    pub used_at: Option<i64>,
    /// The account bound with it.
    pub account_id: Option<String>,
}

/// An ACME order with its authorizations and challenges (a JSON document owned by the ACME
/// module), written with an optimistic version check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeOrderRow {
    /// Random id.
    pub id: String,
    /// Owning account.
    pub account_id: String,
    /// Environment.
    pub env: String,
    /// Order status (`pending`, `ready`, `processing`, `valid`, `invalid`).
    pub status: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// Authorizations, challenges, identifiers, error: JSON.
    pub document: String,
    /// Bumped by every write.
    pub version: i64,
    /// The certificate issued for it.
    pub cert_serial: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
}
