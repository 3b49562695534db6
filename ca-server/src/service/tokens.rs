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
        } else if ttl > MAX_SINGLE_USE_TTL {
            return Err(ServiceError::Forbidden(format!(
                "TTL {} exceeds the {} limit for enrollment tokens",
                HumanDuration(ttl),
                HumanDuration(MAX_SINGLE_USE_TTL)
            )));
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
    /// can still be used. Spends nothing.
    pub(crate) async fn check_token(&self, text: &str) -> Result<TokenRecord, ServiceError> {
        let (id, secret) = parse_token(text)?;
        let invalid = || ServiceError::Token("invalid enrollment token".into());
        let record = self.store().token(id).await?.ok_or_else(invalid)?;
        if !ct_eq(record.token_hash.as_bytes(), hash_secret(secret).as_bytes()) {
            return Err(invalid());
        }
        let now = self.now_unix();
        if record.revoked_at.is_some() {
            return Err(ServiceError::Token(format!(
                "enrollment token {id} was revoked"
            )));
        }
        if record.expires_at <= now {
            return Err(ServiceError::Token(format!(
                "enrollment token {id} has expired"
            )));
        }
        if record.uses >= record.max_uses {
            return Err(ServiceError::Token(format!(
                "enrollment token {id} was already used"
            )));
        }
        Ok(record)
    }

    /// Tokens, newest first (only usable ones unless `all`).
    pub async fn list_tokens(&self, all: bool) -> Result<Vec<TokenRecord>, ServiceError> {
        let usable_at = (!all).then(|| self.now_unix());
        Ok(self.store().list_tokens(usable_at).await?)
    }

    /// Revokes a token by id.
    pub async fn revoke_token(&self, id: &str, actor: &str) -> Result<(), ServiceError> {
        let now = self.now_unix();
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
