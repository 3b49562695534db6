//! Enrollment tokens: random secrets shown once, stored only as a SHA-256, scoped to one
//! (environment, service), short-lived, single-use unless minted as a CI token.

use ca_wire::EnrollmentToken;
use time::Duration;

use super::{Ca, ServiceError, random_bytes};
use crate::duration::HumanDuration;
use crate::pki::{Fingerprint, ct_eq};
use crate::store::{AuditEntry, AuditResult, TokenRecord};

/// Default lifetime of a token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::minutes(15);
/// Longest lifetime of a single-use token.
pub const MAX_SINGLE_USE_TTL: Duration = Duration::days(7);

/// A request to mint a token.
#[derive(Debug, Clone)]
pub struct TokenInput {
    /// Environment it enrolls into.
    pub env: String,
    /// Service it enrolls as.
    pub service: String,
    /// Lifetime (default 15 minutes).
    pub ttl: Option<Duration>,
    /// Enrollments it allows; more than one only for CI environments.
    pub uses: u32,
    /// Who mints it.
    pub actor: String,
}

/// A freshly minted token: the only time its secret exists outside the holder's hands.
#[derive(Debug, Clone)]
pub struct CreatedToken {
    /// `<id>.<secret>`, to give to the enrolling host (zeroized on drop; `Debug` shows the id).
    pub token: EnrollmentToken,
    /// What was stored.
    pub record: TokenRecord,
}

fn hash_secret(secret: &str) -> String {
    Fingerprint::of(secret.as_bytes()).to_hex()
}

/// Splits token text into (id, secret), refusing anything not shaped like one of ours.
pub fn parse_token(text: &str) -> Result<(&str, &str), ServiceError> {
    let malformed = || ServiceError::Token("malformed enrollment token".into());
    let (id, secret) = text.trim().split_once('.').ok_or_else(malformed)?;
    let hexlike = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hexlike(id, 16) || !hexlike(secret, 64) {
        return Err(malformed());
    }
    Ok((id, secret))
}

/// Refuses a TTL above [`MAX_SINGLE_USE_TTL`] for a single-use enrollment credential (`what`:
/// enrollment tokens, ACME external account binding keys).
pub fn check_single_use_ttl(ttl: Duration, what: &str) -> Result<(), ServiceError> {
    if ttl > MAX_SINGLE_USE_TTL {
        return Err(ServiceError::Forbidden(format!(
            "TTL {} exceeds the {} limit for {what}",
            HumanDuration(ttl),
            HumanDuration(MAX_SINGLE_USE_TTL)
        )));
    }
    Ok(())
}

/// Why `record` cannot enroll at `now`, if it cannot.
fn unusable(record: &TokenRecord, now: i64) -> Option<ServiceError> {
    let id = &record.id;
    if record.revoked_at.is_some() {
        Some(ServiceError::Token(format!(
            "enrollment token {id} was revoked"
        )))
    } else if record.expires_at <= now {
        Some(ServiceError::Token(format!(
            "enrollment token {id} has expired"
        )))
    } else if record.uses >= record.max_uses {
        Some(ServiceError::Token(format!(
            "enrollment token {id} was already used"
        )))
    } else {
        None
    }
}

/// Multi-use (CI) tokens as last read, so that a pipeline's enrollments do not each read the
/// same row again. Only what never changes is trusted from here (the secret's hash, the
/// scope, the expiry); a revocation or the last use is enforced by the conditional UPDATE
/// that spends the use in the certificate's own commit, on every server sharing the database,
/// and [`Ca::token_refusal`] then reads the row for the precise reason. Single-use tokens are
/// not kept: they are read once anyway.
#[derive(Default)]
pub(crate) struct TokenCache {
    tokens: std::sync::Mutex<std::collections::HashMap<String, TokenRecord>>,
}

/// Tokens the cache holds at most; a full cache starts over.
const TOKEN_CACHE_MAX: usize = 1024;

impl TokenCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, TokenRecord>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, id: &str) -> Option<TokenRecord> {
        self.lock().get(id).cloned()
    }

    fn keep(&self, record: &TokenRecord) {
        if record.max_uses <= 1 {
            return;
        }
        let mut tokens = self.lock();
        if tokens.len() >= TOKEN_CACHE_MAX {
            tokens.clear();
        }
        tokens.insert(record.id.clone(), record.clone());
    }

    fn forget(&self, id: &str) {
        self.lock().remove(id);
    }
}

impl Ca {
    /// Mints a token, checking that policy knows the identity and allows multi-use for CI only.
    pub async fn create_token(&self, input: TokenInput) -> Result<CreatedToken, ServiceError> {
        let policy = self.policy();
        let env = policy.environments.get(&input.env).ok_or_else(|| {
            ServiceError::NotFound(format!("unknown environment {:?}", input.env))
        })?;
        let svc = policy.services.get(&input.service).ok_or_else(|| {
            ServiceError::NotFound(format!("unknown service {:?}", input.service))
        })?;
        if !svc.environments.contains(&input.env) {
            return Err(ServiceError::Forbidden(format!(
                "service {:?} is not enabled in environment {:?}",
                input.service, input.env
            )));
        }
        if input.uses == 0 {
            return Err(ServiceError::Invalid(
                "a token needs at least one use".into(),
            ));
        }
        let ttl = input.ttl.unwrap_or(DEFAULT_TOKEN_TTL);
        if ttl <= Duration::ZERO {
            return Err(ServiceError::Invalid("token TTL must be positive".into()));
        }
        if input.uses > 1 {
            if !env.ci {
                return Err(ServiceError::Forbidden(format!(
                    "multi-use tokens are CI tokens, and environment {:?} is not marked `ci = true` in the policy",
                    input.env
                )));
            }
            let limits = policy.ci_tokens;
            if input.uses > limits.max_uses {
                return Err(ServiceError::Forbidden(format!(
                    "{} uses exceed roles.ci_tokens.max_uses ({})",
                    input.uses, limits.max_uses
                )));
            }
            if ttl > limits.max_ttl {
                return Err(ServiceError::Forbidden(format!(
                    "TTL {} exceeds roles.ci_tokens.max_ttl ({})",
                    HumanDuration(ttl),
                    HumanDuration(limits.max_ttl)
                )));
            }
        } else {
            check_single_use_ttl(ttl, "enrollment tokens")?;
        }
        let id = hex::encode(random_bytes::<8>()?);
        let secret = zeroize::Zeroizing::new(hex::encode(random_bytes::<32>()?));
        let now = self.now_unix();
        let record = TokenRecord {
            id: id.clone(),
            token_hash: hash_secret(&secret),
            env: input.env.clone(),
            service: input.service.clone(),
            max_uses: input.uses,
            uses: 0,
            created_at: now,
            expires_at: now + ttl.whole_seconds(),
            created_by: input.actor.clone(),
            revoked_at: None,
        };
        self.store().insert_token(&record).await?;
        self.audit(AuditEntry {
            id: 0,
            at: now,
            actor: input.actor,
            action: "token-create".into(),
            env: Some(record.env.clone()),
            service: Some(record.service.clone()),
            serial: None,
            result: AuditResult::Ok,
            reason: Some(format!("token {id}, {} use(s)", record.max_uses)),
        })
        .await;
        Ok(CreatedToken {
            token: EnrollmentToken::new(format!("{id}.{}", secret.as_str())),
            record,
        })
    }

    /// Finds the token named by `text` and checks its secret in constant time, then whether it
    /// can still be used. Spends nothing. A CI token read before comes from [`TokenCache`]:
    /// the commit that spends its use checks revocation, expiry and remaining uses again.
    pub(crate) async fn check_token(&self, text: &str) -> Result<TokenRecord, ServiceError> {
        let (id, secret) = parse_token(text)?;
        let invalid = || ServiceError::Token("invalid enrollment token".into());
        let (record, cached) = match self.tokens.get(id) {
            Some(r) => (r, true),
            None => (self.store().token(id).await?.ok_or_else(invalid)?, false),
        };
        if !ct_eq(record.token_hash.as_bytes(), hash_secret(secret).as_bytes()) {
            return Err(invalid());
        }
        if let Some(e) = unusable(&record, self.now_unix()) {
            self.tokens.forget(id);
            return Err(e);
        }
        if !cached {
            self.tokens.keep(&record);
        }
        Ok(record)
    }

    /// Why the commit refused to spend a use of token `id`, read afresh (it may have been
    /// revoked, used up or have expired since it was checked, here or on another server).
    pub(crate) async fn token_refusal(&self, id: &str) -> ServiceError {
        self.tokens.forget(id);
        let used = || ServiceError::Token(format!("enrollment token {id} was already used"));
        match self.store().token(id).await {
            Ok(Some(record)) => unusable(&record, self.now_unix()).unwrap_or_else(used),
            Ok(None) => ServiceError::Token("invalid enrollment token".into()),
            Err(e) => e.into(),
        }
    }

    /// Tokens, newest first (only usable ones unless `all`).
    pub async fn list_tokens(&self, all: bool) -> Result<Vec<TokenRecord>, ServiceError> {
        let usable_at = (!all).then(|| self.now_unix());
        Ok(self.store().list_tokens(usable_at).await?)
    }

    /// Revokes a token by id.
    pub async fn revoke_token(&self, id: &str, actor: &str) -> Result<(), ServiceError> {
        let now = self.now_unix();
        self.tokens.forget(id);
        if !self.store().revoke_token(id, now).await? {
            return Err(match self.store().token(id).await? {
                None => ServiceError::NotFound(format!("no token with id {id:?}")),
                Some(_) => ServiceError::Invalid(format!("token {id} is already revoked")),
            });
        }
        self.audit(AuditEntry {
            id: 0,
            at: now,
            actor: actor.to_string(),
            action: "token-revoke".into(),
            env: None,
            service: None,
            serial: None,
            result: AuditResult::Ok,
            reason: Some(format!("token {id}")),
        })
        .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::EnrollInput;
    use crate::service::testing::{certificates_in, p256_csr_pem, replicas};

    #[tokio::test]
    async fn a_ci_token_kept_by_one_server_is_refused_once_revoked_or_used_up_on_another() {
        let dir = tempfile::tempdir().expect("tmp");
        let (a, _ac, b, _bc) = replicas(dir.path()).await;
        let mint = |uses| {
            a.create_token(TokenInput {
                env: "ci".into(),
                service: "api".into(),
                ttl: None,
                uses,
                actor: "cli:test".into(),
            })
        };
        async fn enroll(ca: &Ca, token: &EnrollmentToken) -> Result<(), ServiceError> {
            ca.enroll(EnrollInput {
                token: token.clone(),
                csr: p256_csr_pem().into_bytes(),
                dns: vec![],
                ips: vec![],
                ttl: None,
                env: None,
                service: None,
            })
            .await
            .map(drop)
        }
        let stored = || async { certificates_in(&a, "ci").await.len() };

        // Revoked on b after a has kept it.
        let revoked = mint(5).await.expect("token");
        enroll(&a, &revoked.token).await.expect("first use, on a");
        assert!(
            a.tokens.get(&revoked.record.id).is_some(),
            "a keeps the CI token"
        );
        b.revoke_token(&revoked.record.id, "cli:test")
            .await
            .expect("revoke on b");
        let before = stored().await;
        let err = enroll(&a, &revoked.token)
            .await
            .expect_err("a revoked token enrolls nowhere");
        assert!(err.to_string().contains("was revoked"), "{err}");
        assert_eq!(stored().await, before, "nothing stored");
        assert!(a.tokens.get(&revoked.record.id).is_none(), "and forgets it");

        // Used up on b after a has kept it.
        let two = mint(2).await.expect("token");
        enroll(&a, &two.token).await.expect("first use, on a");
        enroll(&b, &two.token).await.expect("second use, on b");
        let before = stored().await;
        let err = enroll(&a, &two.token).await.expect_err("no third use");
        assert!(err.to_string().contains("was already used"), "{err}");
        assert_eq!(stored().await, before, "nothing stored");
        for (t, spent) in [(&two, 2), (&revoked, 1)] {
            let uses = a.store().token(&t.record.id).await.expect("get");
            assert_eq!(uses.map(|t| t.uses), Some(spent));
        }

        // A wrong secret is refused for a kept token as for a stored one.
        let (id, _) = parse_token(two.token.expose()).expect("shape");
        let forged = EnrollmentToken::new(format!("{id}.{}", "0".repeat(64)));
        let err = enroll(&a, &forged).await.expect_err("forged");
        assert!(
            err.to_string().contains("invalid enrollment token"),
            "{err}"
        );
    }

    #[test]
    fn token_text_is_strictly_shaped() {
        let id = "0123456789abcdef";
        let secret = "ab".repeat(32);
        let good = format!("{id}.{secret}");
        assert_eq!(parse_token(&good).ok(), Some((id, secret.as_str())));
        for bad in [
            "",
            ".",
            "abc",
            &format!("{id}{secret}"),
            &format!("{id}.{}", &secret[1..]),
            &format!("x{}.{secret}", &id[1..]),
        ] {
            assert!(parse_token(bad).is_err(), "{bad:?}");
        }
    }
}
