//! The ACME server (RFC 8555): one directory per environment whose policy enables it
//! (`acme = "eab"` or `"open"`), so certbot, lego and any ACME client get private certificates
//! under the same policy, the same durable record, audit log, CRLs and OCSP as the agents.
//!
//! - [`jws`]: the flattened JWS requests, account keys and External Account Binding.
//! - [`validate`]: http-01, dns-01 and tls-alpn-01 validation behind an allow/deny list of
//!   networks (the validator connects where clients tell it to: an SSRF surface).
//! - [`routes`]: the HTTP resources.
//! - this module: the use cases (accounts, orders, challenges, finalize, revocation, renewal
//!   information) over the CA's store.
//!
//! Accounts are bound to an (environment, service) identity: by their EAB key, or by the
//! environment's `acme_service` when the policy lets accounts register without one. Orders
//! keep their authorizations and challenges in one document in the store, written with an
//! optimistic version check; nonces live in the store, so every server sharing it accepts them.

pub mod jws;
pub mod routes;
pub mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::Duration;

use crate::pki::{Identity, RevocationReason, Serial};
use crate::policy::{AcmeMode, IssueRequest};
use crate::service::{Ca, IssueInput, RevokeInput, RevokeTarget, ServiceError};
use crate::store::{
    AcmeAccount, AcmeEabKey, AcmeOrderRow, AuditEntry, AuditResult, IssuedVia, StoreError,
};
use jws::{Jwk, JwsError};
use validate::{ChallengeError, ValidatorConfig};

/// How long a nonce stays usable.
const NONCE_TTL: i64 = 3600;
/// How long an order (and its authorizations) may wait for validation and finalization.
const ORDER_TTL: i64 = 24 * 3600;
/// Validation attempts per challenge before it is invalid.
const VALIDATION_ATTEMPTS: u32 = 3;
/// Pause between validation attempts.
const VALIDATION_RETRY: std::time::Duration = std::time::Duration::from_secs(2);
/// Most identifiers in one order.
const MAX_IDENTIFIERS: usize = 100;
/// The environment variable that must be set for `[acme.testing]` overrides to take effect.
pub const TEST_OVERRIDES_ENV: &str = "CA_ACME_ALLOW_TEST_OVERRIDES";

/// An ACME error: an RFC 8555 problem type, a status and a detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct AcmeError {
    /// The error type's last segment (`malformed`, `badNonce`, ...).
    pub kind: &'static str,
    /// HTTP status.
    pub status: u16,
    /// What went wrong.
    pub detail: String,
    /// Where an existing resource lives (a key already in use: 409 with its account).
    pub location: Option<String>,
}

impl AcmeError {
    /// A problem of `kind` with `status`.
    pub fn new(kind: &'static str, status: u16, detail: impl Into<String>) -> AcmeError {
        AcmeError {
            kind,
            status,
            detail: detail.into(),
            location: None,
        }
    }

    /// 400 malformed.
    pub fn malformed(detail: impl Into<String>) -> AcmeError {
        AcmeError::new("malformed", 400, detail)
    }

    /// 403 unauthorized.
    pub fn unauthorized(detail: impl Into<String>) -> AcmeError {
        AcmeError::new("unauthorized", 403, detail)
    }

    /// 404 (ACME has no type for it: malformed).
    pub fn not_found(detail: impl Into<String>) -> AcmeError {
        AcmeError::new("malformed", 404, detail)
    }

    /// 500 serverInternal.
    pub fn internal(detail: impl Into<String>) -> AcmeError {
        AcmeError::new("serverInternal", 500, detail)
    }

    /// The full type URN.
    pub fn type_urn(&self) -> String {
        format!("urn:ietf:params:acme:error:{}", self.kind)
    }
}

impl From<JwsError> for AcmeError {
    fn from(e: JwsError) -> Self {
        let kind = e
            .acme_type()
            .strip_prefix("urn:ietf:params:acme:error:")
            .unwrap_or("malformed");
        let status = match &e {
            JwsError::BadSignature | JwsError::Unauthorized(_) => 403,
            _ => 400,
        };
        AcmeError {
            kind,
            status,
            detail: e.to_string(),
            location: None,
        }
    }
}

impl From<StoreError> for AcmeError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "ACME: store failure");
        AcmeError::internal("the CA's database is unavailable; try again")
    }
}

impl From<ServiceError> for AcmeError {
    fn from(e: ServiceError) -> Self {
        use crate::error::{Classify, ErrorKind};
        match (&e, e.kind()) {
            (ServiceError::Csr(_), _) => AcmeError::new("badCSR", 400, e.to_string()),
            (ServiceError::Policy(_), _) => {
                AcmeError::new("rejectedIdentifier", 400, e.to_string())
            }
            (_, ErrorKind::Internal | ErrorKind::Unavailable) => {
                tracing::error!(error = %e, "ACME: internal failure");
                AcmeError::internal("the CA could not complete the request; try again")
            }
            (_, ErrorKind::NotFound) => AcmeError::not_found(e.to_string()),
            (_, ErrorKind::Conflict) => AcmeError::new("alreadyRevoked", 400, e.to_string()),
            _ => AcmeError::unauthorized(e.to_string()),
        }
    }
}

/// `[acme]` in the server config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    /// The externally visible base URL of the HTTPS listener (`https://ca.example:8443`),
    /// which clients sign into every request; default `https://<first server name>:<port>`.
    pub base_url: Option<String>,
    /// A page for `meta.website`.
    pub website: Option<String>,
    /// Terms of service for `meta.termsOfService`.
    pub terms_of_service: Option<String>,
    /// Networks validation may connect to although they are loopback, private, link-local ...
    pub allow: Vec<String>,
    /// Networks validation never connects to (wins over everything).
    pub deny: Vec<String>,
    /// The DNS server dns-01 asks (`host:port`); default the first of /etc/resolv.conf.
    pub dns_server: Option<std::net::SocketAddr>,
    /// Overrides for tests only; ignored (with an error at start-up) unless the environment
    /// variable `CA_ACME_ALLOW_TEST_OVERRIDES=1` is set, so a copied config cannot switch them
    /// on in production.
    pub testing: Option<AcmeTesting>,
}

/// `[acme.testing]`: where validation connects in a test.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeTesting {
    /// Port for http-01 instead of 80.
    pub http_port: Option<u16>,
    /// Port for tls-alpn-01 instead of 443.
    pub tls_port: Option<u16>,
    /// Names resolved to these addresses instead of through DNS.
    pub hosts: BTreeMap<String, std::net::IpAddr>,
}

impl AcmeConfig {
    /// The validator settings, refusing bad networks and test overrides without their switch.
    pub fn validator(&self) -> Result<ValidatorConfig, String> {
        let mut v = ValidatorConfig::default();
        for (list, out) in [(&self.allow, &mut v.allow), (&self.deny, &mut v.deny)] {
            for n in list {
                out.push(n.parse().map_err(|e| format!("acme: network {n:?}: {e}"))?);
            }
        }
        if let Some(d) = self.dns_server {
            v.dns_server = Some(d);
        }
        if let Some(t) = &self.testing {
            if std::env::var(TEST_OVERRIDES_ENV).as_deref() != Ok("1") {
                return Err(format!(
                    "[acme.testing] is for tests only and needs {TEST_OVERRIDES_ENV}=1 in the \
                     environment; remove it from a production config"
                ));
            }
            if let Some(p) = t.http_port {
                v.http_port = p;
            }
            if let Some(p) = t.tls_port {
                v.tls_port = p;
            }
            v.hosts = t.hosts.clone();
        }
        Ok(v)
    }
}

/// A challenge in an order document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChallengeDoc {
    /// `http-01`, `dns-01` or `tls-alpn-01`.
    pub kind: String,
    /// Random token.
    pub token: String,
    /// `pending`, `processing`, `valid`, `invalid`.
    pub status: String,
    /// Unix seconds.
    pub validated_at: Option<i64>,
    /// Why it failed: (type, detail).
    pub error: Option<(String, String)>,
    /// When validation started (Unix seconds), while processing.
    pub started_at: Option<i64>,
}

/// An authorization in an order document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuthzDoc {
    /// The DNS name (without `*.` for a wildcard).
    pub identifier: String,
    /// Whether the order asked for `*.identifier`.
    pub wildcard: bool,
    /// `pending`, `valid`, `invalid`, `deactivated`.
    pub status: String,
    /// Its challenges.
    pub challenges: Vec<ChallengeDoc>,
}

/// An order's document (identifiers, authorizations, error).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OrderDoc {
    /// DNS identifiers as asked (wildcards with `*.`).
    pub identifiers: Vec<String>,
    /// One authorization per identifier.
    pub authzs: Vec<AuthzDoc>,
    /// Why the order is invalid: (type, detail).
    pub error: Option<(String, String)>,
    /// The certificate it replaces (ARI `replaces`).
    pub replaces: Option<String>,
}

/// An order with its document.
#[derive(Debug, Clone)]
pub struct Order {
    /// The stored row.
    pub row: AcmeOrderRow,
    /// Its document.
    pub doc: OrderDoc,
}

impl Order {
    fn from_row(row: AcmeOrderRow) -> Result<Order, AcmeError> {
        let doc = serde_json::from_str(&row.document)
            .map_err(|_| AcmeError::internal("a stored order does not parse"))?;
        Ok(Order { row, doc })
    }

    /// The status derived from the authorizations (RFC 8555 7.1.6).
    fn derive_status(&mut self, now: i64) {
        if matches!(self.row.status.as_str(), "valid" | "invalid" | "processing") {
            return;
        }
        if self.row.expires_at <= now {
            self.row.status = "invalid".into();
            self.doc.error = Some(("malformed".into(), "the order expired".into()));
        } else if self
            .doc
            .authzs
            .iter()
            .any(|a| a.status == "invalid" || a.status == "deactivated")
        {
            self.row.status = "invalid".into();
        } else if self.doc.authzs.iter().all(|a| a.status == "valid") {
            self.row.status = "ready".into();
        } else {
            self.row.status = "pending".into();
        }
    }
}

/// A key authorization's pieces, as the routes need them for a challenge object.
pub fn authz_id(order_id: &str, index: usize) -> String {
    format!("{order_id}-{index}")
}

/// Splits an authorization id into (order id, index).
pub fn parse_authz_id(id: &str) -> Option<(&str, usize)> {
    let (order, index) = id.rsplit_once('-')?;
    Some((order, index.parse().ok()?))
}

/// The ACME server over a CA.
pub struct AcmeServer {
    /// The CA.
    pub ca: Arc<Ca>,
    /// Externally visible base URL (no trailing slash).
    pub base_url: String,
    /// Validation settings.
    pub validator: ValidatorConfig,
    /// `meta.website`.
    pub website: Option<String>,
    /// `meta.termsOfService`.
    pub terms_of_service: Option<String>,
}

impl std::fmt::Debug for AcmeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeServer")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// The MAC key of EAB key id `kid`: derived from the CA's sealed secret, never stored, so every
/// server sharing the database derives the same key.
async fn eab_mac_key(ca: &Ca, kid: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, ServiceError> {
    ca.derive_secret(&format!("acme-eab:{kid}")).await
}

/// A random URL-safe id of `N` bytes.
pub fn random_id<const N: usize>() -> Result<String, ServiceError> {
    crate::service::random_bytes::<N>().map(|b| jws::b64(&b))
}

impl AcmeServer {
    /// The URL of `path` under environment `env`'s directory.
    pub fn url(&self, env: &str, path: &str) -> String {
        format!("{}/acme/{env}/{path}", self.base_url)
    }

    /// The mode of `env`'s directory; `NotFound` when it has none.
    pub fn mode(&self, env: &str) -> Result<AcmeMode, AcmeError> {
        match self
            .ca
            .policy()
            .environments
            .get(env)
            .map(|e| e.acme.clone())
        {
            Some(AcmeMode::Off) | None => Err(AcmeError::not_found(format!(
                "no ACME directory for {env:?}"
            ))),
            Some(m) => Ok(m),
        }
    }

    /// A fresh nonce, stored.
    pub async fn new_nonce(&self) -> Result<String, AcmeError> {
        let nonce = random_id::<16>()?;
        self.ca
            .store()
            .acme_put_nonce(&nonce, self.ca.now_unix() + NONCE_TTL)
            .await?;
        Ok(nonce)
    }

    /// Uses up `nonce`; `badNonce` when it is unknown, used or expired.
    pub async fn take_nonce(&self, nonce: Option<&str>) -> Result<(), AcmeError> {
        let bad = || AcmeError::new("badNonce", 400, "the nonce is unknown, used or expired");
        let nonce = nonce.ok_or_else(bad)?;
        if nonce.is_empty() || nonce.len() > 64 {
            return Err(bad());
        }
        if self
            .ca
            .store()
            .acme_take_nonce(nonce, self.ca.now_unix())
            .await?
        {
            Ok(())
        } else {
            Err(bad())
        }
    }

    /// Mints an EAB key for (env, service): returns (kid, base64url MAC key), shown once.
    pub async fn create_eab(
        ca: &Ca,
        env: &str,
        service: &str,
        ttl: Duration,
        actor: &str,
    ) -> Result<(String, zeroize::Zeroizing<String>), ServiceError> {
        let policy = ca.policy();
        match policy.environments.get(env).map(|e| &e.acme) {
            None => {
                return Err(ServiceError::NotFound(format!(
                    "environment {env:?} is not in the policy"
                )));
            }
            Some(AcmeMode::Off) => {
                return Err(ServiceError::Invalid(format!(
                    "environment {env:?} has no ACME directory (set acme = \"eab\" or \"open\" in the policy)"
                )));
            }
            Some(_) => {}
        }
        if !policy
            .services
            .get(service)
            .is_some_and(|s| s.environments.contains(env))
        {
            return Err(ServiceError::NotFound(format!(
                "no service {service:?} in environment {env:?}"
            )));
        }
        // A binding key is an enrollment credential: the single-use token limit applies.
        crate::service::check_single_use_ttl(ttl, "external account binding keys")?;
        let kid = random_id::<12>()?;
        let now = ca.now_unix();
        let key = AcmeEabKey {
            kid: kid.clone(),
            env: env.to_string(),
            service: service.to_string(),
            created_at: now,
            expires_at: now + ttl.whole_seconds(),
            created_by: actor.to_string(),
            used_at: None,
            account_id: None,
        };
        let audit = AuditEntry {
            id: 0,
            at: now,
            actor: actor.to_string(),
            action: "acme-eab-create".into(),
            env: Some(env.to_string()),
            service: Some(service.to_string()),
            serial: None,
            result: AuditResult::Ok,
            reason: Some(format!("kid {kid}")),
        };
        // The MAC key first: a CA that cannot derive it (wrong passphrase) stores nothing.
        let mac = eab_mac_key(ca, &kid).await?;
        ca.store().acme_create_eab(&key, &audit).await?;
        Ok((kid, zeroize::Zeroizing::new(jws::b64(&mac))))
    }

    /// newAccount: finds the account of `key`, or creates one bound to an identity (by its EAB
    /// key, or the environment's open service). Returns (account, created).
    pub async fn new_account(
        &self,
        env: &str,
        key: &Jwk,
        payload: &serde_json::Value,
    ) -> Result<(AcmeAccount, bool), AcmeError> {
        let mode = self.mode(env)?;
        let thumbprint = key.thumbprint();
        if let Some(existing) = self
            .ca
            .store()
            .acme_account_by_key(env, &thumbprint)
            .await?
        {
            if existing.status != "valid" {
                return Err(AcmeError::unauthorized(format!(
                    "the account of this key is {}",
                    existing.status
                )));
            }
            return Ok((existing, false));
        }
        if payload
            .get("onlyReturnExisting")
            .and_then(serde_json::Value::as_bool)
            == Some(true)
        {
            return Err(AcmeError::new(
                "accountDoesNotExist",
                400,
                "no account with this key",
            ));
        }
        if payload
            .get("termsOfServiceAgreed")
            .is_some_and(|v| !v.is_boolean())
        {
            return Err(AcmeError::malformed("termsOfServiceAgreed: a boolean"));
        }
        let contact = parse_contact(payload)?;
        let now = self.ca.now_unix();
        let (service, eab_kid) = match (payload.get("externalAccountBinding"), &mode) {
            (Some(eab), _) => {
                let eab = jws::Eab::parse(eab)?;
                let stored = self.ca.store().acme_eab(&eab.kid).await?;
                let Some(stored) = stored.filter(|k| k.env == env) else {
                    return Err(AcmeError::unauthorized(
                        "unknown external account binding key",
                    ));
                };
                if stored.used_at.is_some() || stored.expires_at <= now {
                    return Err(AcmeError::unauthorized(
                        "the external account binding key is used up or expired",
                    ));
                }
                let mac = eab_mac_key(&self.ca, &eab.kid).await?;
                eab.verify(&self.url(env, "new-account"), key, &mac)?;
                (stored.service, Some(eab.kid))
            }
            (None, AcmeMode::Open { service }) => (service.clone(), None),
            (None, _) => {
                return Err(AcmeError::new(
                    "externalAccountRequired",
                    400,
                    format!("the {env} directory requires an external account binding"),
                ));
            }
        };
        let account = AcmeAccount {
            id: random_id::<12>()?,
            env: env.to_string(),
            service: service.clone(),
            jwk: key.canonical_json(),
            thumbprint,
            status: "valid".into(),
            contact,
            eab_kid: eab_kid.clone(),
            created_at: now,
        };
        let audit = AuditEntry {
            id: 0,
            at: now,
            actor: format!("acme:{}", account.id),
            action: "acme-account".into(),
            env: Some(env.to_string()),
            service: Some(service),
            serial: None,
            result: AuditResult::Ok,
            reason: Some(match &eab_kid {
                Some(k) => format!("registered with EAB key {k}"),
                None => "registered".into(),
            }),
        };
        match self.ca.store().acme_create_account(&account, &audit).await {
            Ok(()) => Ok((account, true)),
            Err(StoreError::TokenUsedUp(_)) => Err(AcmeError::unauthorized(
                "the external account binding key is used up or expired",
            )),
            Err(StoreError::Conflict(_)) => {
                // Registered concurrently with the same key: that account is this one.
                let existing = self
                    .ca
                    .store()
                    .acme_account_by_key(env, &account.thumbprint)
                    .await?
                    .ok_or_else(|| AcmeError::internal("account vanished"))?;
                Ok((existing, false))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The account a `kid` URL names, checked to be valid and of `env`.
    pub async fn account_of_kid(&self, env: &str, kid: &str) -> Result<AcmeAccount, AcmeError> {
        let prefix = self.url(env, "account/");
        let id = kid
            .strip_prefix(&prefix)
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .ok_or_else(|| {
                AcmeError::new(
                    "accountDoesNotExist",
                    400,
                    "kid is not an account URL of this directory",
                )
            })?;
        let account = self
            .ca
            .store()
            .acme_account(id)
            .await?
            .filter(|a| a.env == env)
            .ok_or_else(|| AcmeError::new("accountDoesNotExist", 400, "no such account"))?;
        if account.status != "valid" {
            return Err(AcmeError::unauthorized(format!(
                "the account is {}",
                account.status
            )));
        }
        Ok(account)
    }

    /// Updates contact or deactivates an account.
    pub async fn update_account(
        &self,
        mut account: AcmeAccount,
        payload: &serde_json::Value,
    ) -> Result<AcmeAccount, AcmeError> {
        let mut what = Vec::new();
        if payload.get("contact").is_some() {
            account.contact = parse_contact(payload)?;
            what.push("contact");
        }
        match payload.get("status").map(|s| s.as_str()) {
            None => {}
            Some(Some("deactivated")) => {
                account.status = "deactivated".into();
                what.push("deactivated");
            }
            Some(_) => {
                return Err(AcmeError::malformed(
                    "status: only \"deactivated\" may be asked for",
                ));
            }
        }
        if what.is_empty() {
            return Ok(account);
        }
        let audit = self.audit_for(&account, "acme-account-update", what.join(","));
        self.ca
            .store()
            .acme_update_account(&account, &audit)
            .await?;
        Ok(account)
    }

    /// Deactivates an account by id (operator).
    pub async fn deactivate(ca: &Ca, id: &str, actor: &str) -> Result<AcmeAccount, ServiceError> {
        let mut account = ca
            .store()
            .acme_account(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no ACME account {id}")))?;
        account.status = "deactivated".into();
        let audit = AuditEntry {
            id: 0,
            at: ca.now_unix(),
            actor: actor.to_string(),
            action: "acme-account-update".into(),
            env: Some(account.env.clone()),
            service: Some(account.service.clone()),
            serial: None,
            result: AuditResult::Ok,
            reason: Some(format!("{id} deactivated by an operator")),
        };
        ca.store().acme_update_account(&account, &audit).await?;
        Ok(account)
    }

    fn audit_for(&self, account: &AcmeAccount, action: &str, reason: String) -> AuditEntry {
        AuditEntry {
            id: 0,
            at: self.ca.now_unix(),
            actor: format!("acme:{}", account.id),
            action: action.into(),
            env: Some(account.env.clone()),
            service: Some(account.service.clone()),
            serial: None,
            result: AuditResult::Ok,
            reason: Some(reason),
        }
    }

    /// keyChange: the inner JWS, signed by the new key, names the account and its old key.
    pub async fn key_change(
        &self,
        env: &str,
        account: AcmeAccount,
        inner: &serde_json::Value,
    ) -> Result<AcmeAccount, AcmeError> {
        let body = serde_json::to_vec(inner).map_err(|_| AcmeError::malformed("inner JWS"))?;
        let jws = jws::Jws::parse(&body)?;
        let new_key = match &jws.protected.key {
            jws::KeyRef::Jwk(k) => k.clone(),
            jws::KeyRef::Kid(_) => {
                return Err(AcmeError::malformed(
                    "the inner JWS must carry the new key as jwk",
                ));
            }
        };
        if jws.protected.nonce.is_some() {
            return Err(AcmeError::malformed("the inner JWS must not carry a nonce"));
        }
        if jws.protected.url != self.url(env, "key-change") {
            return Err(AcmeError::unauthorized(
                "the inner JWS url is not keyChange's",
            ));
        }
        jws.verify(&new_key)?;
        let payload = jws.payload_json()?;
        let account_url = self.url(env, &format!("account/{}", account.id));
        if payload.get("account").and_then(|v| v.as_str()) != Some(account_url.as_str()) {
            return Err(AcmeError::unauthorized(
                "the inner payload names another account",
            ));
        }
        let old = payload
            .get("oldKey")
            .ok_or_else(|| AcmeError::malformed("oldKey missing"))?;
        let old = Jwk::from_json(old)?;
        if old.canonical_json() != account.jwk {
            return Err(AcmeError::unauthorized("oldKey is not the account's key"));
        }
        let mut updated = account.clone();
        updated.jwk = new_key.canonical_json();
        updated.thumbprint = new_key.thumbprint();
        let audit = self.audit_for(&account, "acme-key-change", "account key replaced".into());
        match self.ca.store().acme_update_account(&updated, &audit).await {
            Ok(()) => Ok(updated),
            Err(StoreError::Conflict(_)) => {
                let other = self
                    .ca
                    .store()
                    .acme_account_by_key(env, &updated.thumbprint)
                    .await?;
                let mut e = AcmeError::new("conflict", 409, "another account uses the new key");
                e.location = other.map(|o| self.url(env, &format!("account/{}", o.id)));
                Err(e)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// newOrder: checks the identifiers against policy for the account's identity now, so a
    /// name it could never get is refused before any validation.
    pub async fn new_order(
        &self,
        account: &AcmeAccount,
        payload: &serde_json::Value,
    ) -> Result<Order, AcmeError> {
        let ids = payload
            .get("identifiers")
            .and_then(|v| v.as_array())
            .filter(|a| !a.is_empty())
            .ok_or_else(|| AcmeError::malformed("identifiers: a non-empty list"))?;
        if ids.len() > MAX_IDENTIFIERS {
            return Err(AcmeError::new(
                "rejectedIdentifier",
                400,
                format!("at most {MAX_IDENTIFIERS} identifiers per order"),
            ));
        }
        if payload.get("notBefore").is_some() || payload.get("notAfter").is_some() {
            return Err(AcmeError::malformed(
                "notBefore/notAfter are not supported: the policy sets the lifetime",
            ));
        }
        let mut names = Vec::new();
        for id in ids {
            let kind = id.get("type").and_then(|v| v.as_str());
            let value = id.get("value").and_then(|v| v.as_str());
            match (kind, value) {
                (Some("dns"), Some(v)) if !v.is_empty() && v.len() <= 253 => {
                    let v = v.to_ascii_lowercase();
                    if !names.contains(&v) {
                        names.push(v);
                    }
                }
                (Some("dns"), _) => return Err(AcmeError::malformed("a dns identifier value")),
                (Some(other), _) => {
                    return Err(AcmeError::new(
                        "unsupportedIdentifier",
                        400,
                        format!(
                            "identifier type {:?} is not supported (only dns)",
                            truncate(other)
                        ),
                    ));
                }
                (None, _) => return Err(AcmeError::malformed("identifier without a type")),
            }
        }
        let identity = Identity {
            env: account.env.clone(),
            service: account.service.clone(),
        };
        let policy = self.ca.policy();
        let key_type = policy
            .services
            .get(&identity.service)
            .and_then(|s| s.key_types.first().copied())
            .unwrap_or(crate::pki::KeyType::P256);
        policy
            .decide(&IssueRequest {
                identity: &identity,
                dns: &names,
                ips: &[],
                ttl: None,
                key_type,
            })
            .map_err(|e| AcmeError::new("rejectedIdentifier", 400, e.to_string()))?;
        let now = self.ca.now_unix();
        let mut authzs = Vec::new();
        for name in &names {
            let (identifier, wildcard) = match name.strip_prefix("*.") {
                Some(base) => (base.to_string(), true),
                None => (name.clone(), false),
            };
            // Wildcards only through dns-01 (RFC 8555 7.1.3).
            let kinds: &[&str] = if wildcard {
                &["dns-01"]
            } else {
                &["http-01", "dns-01", "tls-alpn-01"]
            };
            let mut challenges = Vec::new();
            for k in kinds {
                challenges.push(ChallengeDoc {
                    kind: (*k).to_string(),
                    token: random_id::<32>()?,
                    status: "pending".into(),
                    validated_at: None,
                    error: None,
                    started_at: None,
                });
            }
            authzs.push(AuthzDoc {
                identifier,
                wildcard,
                status: "pending".into(),
                challenges,
            });
        }
        let replaces = payload
            .get("replaces")
            .and_then(|v| v.as_str())
            .map(|s| truncate(s).to_string());
        let doc = OrderDoc {
            identifiers: names,
            authzs,
            error: None,
            replaces,
        };
        let row = AcmeOrderRow {
            id: random_id::<12>()?,
            account_id: account.id.clone(),
            env: account.env.clone(),
            status: "pending".into(),
            expires_at: now + ORDER_TTL,
            document: serde_json::to_string(&doc)
                .map_err(|_| AcmeError::internal("order document"))?,
            version: 1,
            cert_serial: None,
            created_at: now,
        };
        self.ca.store().acme_create_order(&row).await?;
        Ok(Order { row, doc })
    }

    /// An order of `account`, its status brought up to date.
    pub async fn order(&self, account: &AcmeAccount, id: &str) -> Result<Order, AcmeError> {
        let row = self
            .ca
            .store()
            .acme_order(id)
            .await?
            .filter(|o| o.account_id == account.id)
            .ok_or_else(|| AcmeError::not_found("no such order"))?;
        let mut order = Order::from_row(row)?;
        order.derive_status(self.ca.now_unix());
        Ok(order)
    }

    /// Writes `order` if nobody else did meanwhile.
    async fn save(&self, order: &mut Order) -> Result<bool, AcmeError> {
        let expected = order.row.version;
        order.row.version += 1;
        order.row.document =
            serde_json::to_string(&order.doc).map_err(|_| AcmeError::internal("order document"))?;
        let saved = self
            .ca
            .store()
            .acme_save_order(&order.row, expected)
            .await?;
        if !saved {
            order.row.version = expected;
        }
        Ok(saved)
    }

    /// Deactivates an authorization at its account's request (the order becomes invalid).
    pub async fn deactivate_authz(
        &self,
        account: &AcmeAccount,
        order_id: &str,
        index: usize,
    ) -> Result<Order, AcmeError> {
        for _ in 0..5 {
            let mut order = self.order(account, order_id).await?;
            let a = order
                .doc
                .authzs
                .get_mut(index)
                .ok_or_else(|| AcmeError::not_found("no such authorization"))?;
            if a.status != "pending" && a.status != "valid" {
                return Err(AcmeError::unauthorized(format!(
                    "the authorization is {}",
                    a.status
                )));
            }
            a.status = "deactivated".into();
            order.derive_status(self.ca.now_unix());
            if self.save(&mut order).await? {
                return Ok(order);
            }
        }
        Err(AcmeError::internal(
            "the order changed too often; try again",
        ))
    }

    /// POST to a challenge: starts its validation (once) in the background.
    pub async fn start_challenge(
        self: &Arc<Self>,
        account: &AcmeAccount,
        authz: &str,
        kind: &str,
    ) -> Result<(Order, usize, usize), AcmeError> {
        let (order_id, index) =
            parse_authz_id(authz).ok_or_else(|| AcmeError::not_found("no such authorization"))?;
        for _ in 0..5 {
            let mut order = self.order(account, order_id).await?;
            let a = order
                .doc
                .authzs
                .get(index)
                .ok_or_else(|| AcmeError::not_found("no such authorization"))?;
            let ci = a
                .challenges
                .iter()
                .position(|c| c.kind == kind)
                .ok_or_else(|| AcmeError::not_found("no such challenge"))?;
            let now = self.ca.now_unix();
            let c = &a.challenges[ci];
            // A validation whose server died is started again after a minute.
            let stale = c.status == "processing" && c.started_at.is_some_and(|t| t + 60 < now);
            if a.status != "pending"
                || (c.status != "pending" && !stale)
                || order.row.expires_at <= now
            {
                return Ok((order, index, ci));
            }
            order.doc.authzs[index].challenges[ci].status = "processing".into();
            order.doc.authzs[index].challenges[ci].started_at = Some(now);
            if self.save(&mut order).await? {
                let me = self.clone();
                let account = account.clone();
                let (oid, kind) = (order_id.to_string(), kind.to_string());
                tokio::spawn(async move {
                    me.validate(&account, &oid, index, &kind).await;
                });
                return Ok((order, index, ci));
            }
        }
        Err(AcmeError::internal(
            "the order changed too often; try again",
        ))
    }

    /// Runs a challenge's validation with bounded retries, then records the result.
    async fn validate(&self, account: &AcmeAccount, order_id: &str, index: usize, kind: &str) {
        let Ok(order) = self.order(account, order_id).await else {
            return;
        };
        let Some(a) = order.doc.authzs.get(index) else {
            return;
        };
        let Some(c) = a.challenges.iter().find(|c| c.kind == kind) else {
            return;
        };
        let Ok(key) = serde_json::from_str::<serde_json::Value>(&account.jwk)
            .map_err(|_| ())
            .and_then(|v| Jwk::from_json(&v).map_err(|_| ()))
        else {
            return;
        };
        let key_auth = jws::key_authorization(&c.token, &key);
        let domain = a.identifier.clone();
        let mut result: Result<(), ChallengeError> = Ok(());
        for attempt in 1..=VALIDATION_ATTEMPTS {
            result = match kind {
                "http-01" => validate::http01(&self.validator, &domain, &c.token, &key_auth).await,
                "dns-01" => validate::dns01(&self.validator, &domain, &key_auth).await,
                "tls-alpn-01" => validate::tls_alpn01(&self.validator, &domain, &key_auth).await,
                _ => return,
            };
            if result.is_ok() || attempt == VALIDATION_ATTEMPTS {
                break;
            }
            tokio::time::sleep(VALIDATION_RETRY).await;
        }
        tracing::info!(order = order_id, %domain, kind, ok = result.is_ok(), "ACME validation");
        for _ in 0..10 {
            let Ok(mut order) = self.order(account, order_id).await else {
                return;
            };
            let now = self.ca.now_unix();
            let Some(a) = order.doc.authzs.get_mut(index) else {
                return;
            };
            let Some(c) = a.challenges.iter_mut().find(|c| c.kind == kind) else {
                return;
            };
            match &result {
                Ok(()) => {
                    c.status = "valid".into();
                    c.validated_at = Some(now);
                    a.status = "valid".into();
                }
                Err(e) => {
                    c.status = "invalid".into();
                    c.error = Some((
                        e.kind
                            .acme_type()
                            .trim_start_matches("urn:ietf:params:acme:error:")
                            .to_string(),
                        e.detail.clone(),
                    ));
                    a.status = "invalid".into();
                }
            }
            order.derive_status(now);
            match self.save(&mut order).await {
                Ok(true) => return,
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "ACME: validation result not saved; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// finalize: the CSR must name exactly the order's identifiers; the certificate is issued
    /// under the account's identity like any other (policy, durable record, audit).
    pub async fn finalize(
        &self,
        account: &AcmeAccount,
        order_id: &str,
        payload: &serde_json::Value,
    ) -> Result<Order, AcmeError> {
        let mut order = self.order(account, order_id).await?;
        if order.row.status != "ready" {
            return Err(AcmeError::new(
                "orderNotReady",
                403,
                format!("the order is {}, not ready", order.row.status),
            ));
        }
        let csr_b64 = payload
            .get("csr")
            .and_then(|v| v.as_str())
            .ok_or_else(|| AcmeError::malformed("csr missing"))?;
        let csr =
            jws::unb64(csr_b64).map_err(|_| AcmeError::new("badCSR", 400, "csr: not base64url"))?;
        let screened = crate::csr::validate_csr(&csr)
            .map_err(|e| AcmeError::new("badCSR", 400, e.to_string()))?;
        let mut want: Vec<String> = order.doc.identifiers.clone();
        want.sort();
        let mut got: Vec<String> = screened
            .requested_dns
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect();
        got.sort();
        got.dedup();
        if want != got || !screened.requested_ips.is_empty() {
            return Err(AcmeError::new(
                "badCSR",
                400,
                format!(
                    "the CSR must name exactly the order's identifiers {want:?} (it names {got:?})"
                ),
            ));
        }
        order.row.status = "processing".into();
        if !self.save(&mut order).await? {
            return Err(AcmeError::new(
                "orderNotReady",
                403,
                "the order is being finalized already",
            ));
        }
        let input = IssueInput {
            identity: Identity {
                env: account.env.clone(),
                service: account.service.clone(),
            },
            dns: order.doc.identifiers.clone(),
            ips: Vec::new(),
            ttl: None,
            csr,
            via: IssuedVia::Acme,
            actor: format!("acme:{}", account.id),
        };
        let issued = self.ca.issue_screened(input, Ok(screened)).await;
        for _ in 0..10 {
            match &issued {
                Ok(out) => {
                    order.row.status = "valid".into();
                    order.row.cert_serial = Some(out.record.serial.clone());
                }
                Err(e) => {
                    let err = AcmeError::from(clone_err(e));
                    order.row.status = "invalid".into();
                    order.doc.error = Some((err.kind.to_string(), err.detail));
                }
            }
            if self.save(&mut order).await? {
                break;
            }
            order = self.order(account, order_id).await?;
        }
        match issued {
            Ok(_) => Ok(order),
            Err(e) => Err(e.into()),
        }
    }

    /// The PEM chain of certificate `serial` (leaf first) for its owner.
    pub async fn certificate(
        &self,
        account: &AcmeAccount,
        serial: &str,
    ) -> Result<String, AcmeError> {
        let order = self
            .ca
            .store()
            .acme_order_by_cert(serial)
            .await?
            .filter(|o| o.account_id == account.id)
            .ok_or_else(|| AcmeError::not_found("no such certificate"))?;
        let serial: Serial = order
            .cert_serial
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|_| AcmeError::internal("stored serial"))?;
        let rec = self.ca.certificate(&serial).await?;
        Ok(format!(
            "{}{}",
            rec.cert_pem,
            self.ca.chain_tail_of(&rec.issuer_id).unwrap_or_default()
        ))
    }

    /// revokeCert, by the owning account or by the certificate's key (`key_of_request` is the
    /// JWS key when it came as jwk).
    pub async fn revoke(
        &self,
        env: &str,
        account: Option<&AcmeAccount>,
        request_key: Option<&Jwk>,
        payload: &serde_json::Value,
    ) -> Result<(), AcmeError> {
        let der = payload
            .get("certificate")
            .and_then(|v| v.as_str())
            .ok_or_else(|| AcmeError::malformed("certificate missing"))?;
        let der = jws::unb64(der)?;
        let serial = Serial::of_certificate(&der)
            .ok_or_else(|| AcmeError::malformed("certificate does not parse"))?;
        let rec = self
            .ca
            .store()
            .certificate(&serial)
            .await?
            .filter(|r| r.env == env)
            .ok_or_else(|| AcmeError::not_found("this CA did not issue that certificate"))?;
        if !crate::pki::ct_eq(
            rec.fingerprint.as_bytes(),
            crate::pki::Fingerprint::of(&der).to_hex().as_bytes(),
        ) {
            return Err(AcmeError::not_found(
                "this CA did not issue that certificate",
            ));
        }
        let allowed = match (account, request_key) {
            (Some(a), _) => self
                .ca
                .store()
                .acme_order_by_cert(&rec.serial)
                .await?
                .is_some_and(|o| o.account_id == a.id),
            (None, Some(key)) => spki_of_jwk_matches(key, &der),
            (None, None) => false,
        };
        if !allowed {
            return Err(AcmeError::unauthorized(
                "only the account that ordered the certificate, or its key, may revoke it",
            ));
        }
        let reason = match payload.get("reason").map(|v| v.as_u64()) {
            None => RevocationReason::Unspecified,
            Some(Some(code)) => RevocationReason::from_code(code).ok_or_else(|| {
                AcmeError::new(
                    "badRevocationReason",
                    400,
                    format!("reason {code} is not allowed"),
                )
            })?,
            Some(None) => return Err(AcmeError::malformed("reason: an integer")),
        };
        if rec.revoked_at.is_some() {
            return Err(AcmeError::new("alreadyRevoked", 400, "already revoked"));
        }
        let actor = match account {
            Some(a) => format!("acme:{}", a.id),
            None => format!("acme-key:{}", rec.serial),
        };
        self.ca
            .revoke(RevokeInput {
                target: RevokeTarget::Serial(serial),
                reason,
                actor,
                dry_run: false,
            })
            .await?;
        Ok(())
    }

    /// ARI (RFC 9773): the suggested renewal window of the certificate `cert_id` names
    /// (base64url AKI keyIdentifier "." base64url serial). Revoked certificates, and those of a
    /// retiring or revoked issuer, get a window in the past: renew now.
    pub async fn renewal_info(&self, cert_id: &str) -> Result<(i64, i64), AcmeError> {
        let (_aki, serial_b64) = cert_id
            .split_once('.')
            .ok_or_else(|| AcmeError::malformed("renewalInfo: <keyIdentifier>.<serial>"))?;
        let serial_bytes = jws::unb64(serial_b64)?;
        if serial_bytes.is_empty() || serial_bytes.len() > 20 {
            return Err(AcmeError::malformed(
                "renewalInfo: a serial of 1 to 20 bytes",
            ));
        }
        let serial = Serial::from_bytes(&serial_bytes);
        let rec = self
            .ca
            .store()
            .certificate(&serial)
            .await?
            .ok_or_else(|| AcmeError::not_found("no such certificate"))?;
        let now = self.ca.now_unix();
        let hint = self.ca.issuer_hint(&rec.issuer_id).await?;
        if rec.revoked_at.is_some() || hint.is_some() {
            return Ok((now - 3600, now - 1800));
        }
        let life = rec.not_after - rec.not_before;
        Ok((rec.not_before + life * 2 / 3, rec.not_before + life * 5 / 6))
    }
}

/// Copies a service error well enough to map it twice (to the order and to the answer).
fn clone_err(e: &ServiceError) -> ServiceError {
    match e {
        ServiceError::Csr(c) => ServiceError::Invalid(c.to_string()),
        ServiceError::Policy(p) => ServiceError::Policy(p.clone()),
        other => ServiceError::Invalid(other.to_string()),
    }
}

/// Whether the certificate `der` is for the public key `key`.
fn spki_of_jwk_matches(key: &Jwk, der: &[u8]) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return false;
    };
    let pk = cert.public_key();
    match (key, pk.parsed()) {
        (Jwk::Ec { x, y, .. }, Ok(x509_parser::public_key::PublicKey::EC(point))) => {
            let mut want = vec![4u8];
            want.extend_from_slice(x);
            want.extend_from_slice(y);
            point.data() == want.as_slice()
        }
        (Jwk::Rsa { n, e }, Ok(x509_parser::public_key::PublicKey::RSA(rsa))) => {
            strip(rsa.modulus) == strip(n) && strip(rsa.exponent) == strip(e)
        }
        (Jwk::Ed25519 { x }, _) => pk.subject_public_key.data.as_ref() == x.as_slice(),
        _ => false,
    }
}

fn strip(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[first..]
}

/// Contact URLs from a payload: `mailto:` only, at most 10.
fn parse_contact(payload: &serde_json::Value) -> Result<Vec<String>, AcmeError> {
    let Some(v) = payload.get("contact") else {
        return Ok(Vec::new());
    };
    let list = v
        .as_array()
        .ok_or_else(|| AcmeError::malformed("contact: a list of URLs"))?;
    if list.len() > 10 {
        return Err(AcmeError::new("invalidContact", 400, "at most 10 contacts"));
    }
    let mut out = Vec::new();
    for c in list {
        let s = c
            .as_str()
            .ok_or_else(|| AcmeError::new("invalidContact", 400, "contact: strings"))?;
        if !s.starts_with("mailto:") || s.len() > 254 || s.contains(',') {
            return Err(AcmeError::new(
                "unsupportedContact",
                400,
                format!("{:?}: only one mailto: address per contact", truncate(s)),
            ));
        }
        out.push(s.to_string());
    }
    Ok(out)
}

/// At most 64 characters of attacker-provided text, for messages.
pub fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
