//! Issuance policy: pure decisions, deny by default.
//!
//! A [`Policy`] is loaded from TOML and fully validated up front (every error names the file and
//! the key), so [`Policy::decide`] never meets an inconsistent policy. `decide` reads no clock and
//! does no I/O: given an identity and what it asks for, it returns the final names and TTL, or the
//! rule that refused and why.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;
use time::Duration;

use crate::duration::HumanDuration;
use crate::error::{Classify, ErrorKind};
use crate::pki::{Identity, KeyType};

/// Longest DNS name accepted (RFC 1035, without the trailing dot).
pub const MAX_DNS_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// A validated issuance policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The SPIFFE trust domain, e.g. `example.internal`.
    pub trust_domain: String,
    /// Environments by name; each gets its own intermediate.
    pub environments: BTreeMap<String, Environment>,
    /// Services by name.
    pub services: BTreeMap<String, Service>,
    /// SPIFFE IDs allowed to call operator endpoints.
    pub admins: Vec<String>,
    /// Limits on multi-use CI tokens.
    pub ci_tokens: CiTokenLimits,
    /// SHA-256 (hex) of the policy text: servers sharing a database must serve the same one.
    pub sha256: String,
}

/// One environment (dev, staging, prod, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Environment {
    /// DNS suffixes this environment's intermediate may issue under (its name constraints).
    pub dns_suffixes: Vec<String>,
    /// TTL when the request names none.
    pub default_ttl: Duration,
    /// Longest TTL any certificate in this environment may have.
    pub max_ttl: Duration,
    /// Whether multi-use CI tokens may be minted for this environment.
    pub ci: bool,
    /// Whether this environment has an ACME directory, and who may register with it.
    pub acme: AcmeMode,
}

/// Who may register with an environment's ACME directory (`acme` in the policy).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AcmeMode {
    /// No ACME directory (the default: deny by default).
    #[default]
    Off,
    /// Only accounts bound with an External Account Binding key, which names their service.
    ExternalAccountRequired,
    /// Any account, acting as `service`; EAB keys still bind their own service.
    Open {
        /// The service an account without EAB acts as (`acme_service`).
        service: String,
    },
}

/// One service and what it may be issued.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Environments the service exists in.
    pub environments: BTreeSet<String>,
    /// Allowed DNS name patterns, with `{service}` and `{env}` placeholders and `*` for exactly
    /// one label.
    pub dns: Vec<String>,
    /// Accepted key types.
    pub key_types: Vec<KeyType>,
    /// Cap on TTL below the environment's, if any.
    pub max_ttl: Option<Duration>,
    /// Whether IP address SANs may be requested.
    pub ip_sans: bool,
    /// Whether wildcard names (`*.x`) may be requested.
    pub wildcards: bool,
}

/// Limits on multi-use CI tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CiTokenLimits {
    /// Most uses one CI token may carry.
    pub max_uses: u32,
    /// Longest lifetime of a CI token.
    pub max_ttl: Duration,
}

/// A policy file that could not be loaded: names the file, the key and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}{sep}{message}", sep = if key.is_empty() { "" } else { ": " })]
pub struct PolicyError {
    /// Where the policy came from.
    pub file: String,
    /// The offending key, dotted (`services.api.dns[0]`); empty for syntax errors.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl Classify for PolicyError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::BadRequest
    }
}

/// Whether a refusal is about malformed input or about policy saying no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationKind {
    /// The request itself is malformed (bad name syntax, non-ASCII, too long).
    Malformed,
    /// The request is well-formed but not allowed.
    Denied,
}

/// A refused request: the rule that refused it and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("denied by policy rule `{rule}`: {reason}")]
pub struct PolicyViolation {
    /// The policy key (or built-in rule) that refused, e.g. `services.api.dns`.
    pub rule: String,
    /// Why, naming the offending value.
    pub reason: String,
    /// Malformed input or a policy refusal.
    pub violation: ViolationKind,
}

impl Classify for PolicyViolation {
    fn kind(&self) -> ErrorKind {
        match self.violation {
            ViolationKind::Malformed => ErrorKind::BadRequest,
            ViolationKind::Denied => ErrorKind::Denied,
        }
    }
}

fn denied(rule: impl Into<String>, reason: impl Into<String>) -> PolicyViolation {
    PolicyViolation {
        rule: rule.into(),
        reason: reason.into(),
        violation: ViolationKind::Denied,
    }
}

fn malformed(rule: &str, reason: impl Into<String>) -> PolicyViolation {
    PolicyViolation {
        rule: rule.into(),
        reason: reason.into(),
        violation: ViolationKind::Malformed,
    }
}

/// What an identity asks to be issued.
#[derive(Debug, Clone)]
pub struct IssueRequest<'a> {
    /// Who asks.
    pub identity: &'a Identity,
    /// Requested DNS names, as given (normalised by `decide`).
    pub dns: &'a [String],
    /// Requested IP SANs.
    pub ips: &'a [IpAddr],
    /// Requested lifetime; the environment's default when `None`.
    pub ttl: Option<Duration>,
    /// The type of the key to be certified.
    pub key_type: KeyType,
}

/// An allowed request, with everything the signer needs about names and lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// `spiffe://<trust-domain>/<env>/<service>`.
    pub spiffe_id: String,
    /// Normalised (lowercase, deduplicated, in request order) DNS names.
    pub dns: Vec<String>,
    /// IP SANs, deduplicated.
    pub ips: Vec<IpAddr>,
    /// The lifetime to issue.
    pub ttl: Duration,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "allow {}", self.spiffe_id)?;
        for n in &self.dns {
            write!(f, " dns:{n}")?;
        }
        for ip in &self.ips {
            write!(f, " ip:{ip}")?;
        }
        write!(f, " ttl:{}", HumanDuration(self.ttl))
    }
}

// ---- the file format -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    trust_domain: String,
    #[serde(default)]
    environments: BTreeMap<String, EnvironmentFile>,
    #[serde(default)]
    services: BTreeMap<String, ServiceFile>,
    #[serde(default)]
    roles: RolesFile,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentFile {
    dns_suffixes: Vec<String>,
    default_ttl: HumanDuration,
    max_ttl: HumanDuration,
    #[serde(default)]
    ci: bool,
    /// "off" (default), "eab" or "open".
    #[serde(default)]
    acme: Option<String>,
    /// The service accounts without EAB act as ("open" only).
    #[serde(default)]
    acme_service: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    environments: Vec<String>,
    #[serde(default)]
    dns: Vec<String>,
    key_types: Option<Vec<KeyType>>,
    max_ttl: Option<HumanDuration>,
    #[serde(default)]
    ip_sans: bool,
    #[serde(default)]
    wildcards: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RolesFile {
    #[serde(default)]
    admins: Vec<String>,
    ci_tokens: Option<CiTokensFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CiTokensFile {
    max_uses: u32,
    max_ttl: HumanDuration,
}

// ---- loading and validation ------------------------------------------------------------------

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            file: file.clone(),
            key: String::new(),
            message: format!("cannot read policy: {e}"),
        })?;
        Policy::from_toml(&text, &file)
    }

    /// Parses and validates policy text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        let raw: PolicyFile = toml::from_str(text).map_err(|e| PolicyError {
            file: origin.to_string(),
            key: String::new(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let err = |key: String, message: String| PolicyError {
            file: origin.to_string(),
            key,
            message,
        };

        let trust_domain = raw.trust_domain.clone();
        if let Err(why) = check_dns_name(&trust_domain, false) {
            return Err(err("trust_domain".into(), why));
        }
        if trust_domain != trust_domain.to_ascii_lowercase() {
            return Err(err("trust_domain".into(), "must be lowercase".into()));
        }
        if raw.environments.is_empty() {
            return Err(err(
                "environments".into(),
                "at least one environment is required".into(),
            ));
        }

        let mut environments = BTreeMap::new();
        for (name, e) in &raw.environments {
            let key = format!("environments.{name}");
            if !is_name_token(name, 32) {
                return Err(err(key, NAME_TOKEN_RULE.into()));
            }
            if e.dns_suffixes.is_empty() {
                return Err(err(
                    format!("{key}.dns_suffixes"),
                    "at least one DNS suffix is required (it becomes the intermediate's name constraint)".into(),
                ));
            }
            let mut suffixes = Vec::new();
            for (i, s) in e.dns_suffixes.iter().enumerate() {
                let k = format!("{key}.dns_suffixes[{i}]");
                check_dns_name(s, false).map_err(|why| err(k.clone(), why))?;
                if s != &s.to_ascii_lowercase() {
                    return Err(err(k, "must be lowercase".into()));
                }
                suffixes.push(s.clone());
            }
            if e.default_ttl > e.max_ttl {
                return Err(err(
                    format!("{key}.default_ttl"),
                    format!("{} exceeds max_ttl {}", e.default_ttl, e.max_ttl),
                ));
            }
            environments.insert(
                name.clone(),
                Environment {
                    dns_suffixes: suffixes,
                    default_ttl: e.default_ttl.0,
                    max_ttl: e.max_ttl.0,
                    ci: e.ci,
                    acme: AcmeMode::Off,
                },
            );
        }

        let mut services = BTreeMap::new();
        for (name, s) in &raw.services {
            let key = format!("services.{name}");
            if !is_name_token(name, 63) {
                return Err(err(key, NAME_TOKEN_RULE.into()));
            }
            if s.environments.is_empty() {
                return Err(err(
                    format!("{key}.environments"),
                    "list at least one environment".into(),
                ));
            }
            let mut envs = BTreeSet::new();
            for (i, env) in s.environments.iter().enumerate() {
                if !environments.contains_key(env) {
                    return Err(err(
                        format!("{key}.environments[{i}]"),
                        format!("unknown environment {env:?}"),
                    ));
                }
                envs.insert(env.clone());
            }
            for (i, pattern) in s.dns.iter().enumerate() {
                let k = format!("{key}.dns[{i}]");
                for env in &envs {
                    let expanded = expand(pattern, name, env).map_err(|why| err(k.clone(), why))?;
                    check_dns_name(&expanded, true)
                        .map_err(|why| err(k.clone(), format!("{pattern:?} for {env}: {why}")))?;
                    let suffixes = &environments[env].dns_suffixes;
                    if !suffixes
                        .iter()
                        .any(|sfx| pattern_within_suffix(&expanded, sfx))
                    {
                        return Err(err(
                            k.clone(),
                            format!(
                                "{pattern:?} expands to {expanded:?} in {env}, outside its DNS suffixes {suffixes:?}; \
                                 the {env} intermediate's name constraints would make such certificates invalid"
                            ),
                        ));
                    }
                }
            }
            let key_types = match &s.key_types {
                None => vec![KeyType::P256, KeyType::P384, KeyType::Ed25519, KeyType::Rsa],
                Some(v) if v.is_empty() => {
                    return Err(err(
                        format!("{key}.key_types"),
                        "list at least one key type, or omit the key to allow all".into(),
                    ));
                }
                Some(v) => v.clone(),
            };
            services.insert(
                name.clone(),
                Service {
                    environments: envs,
                    dns: s.dns.clone(),
                    key_types,
                    max_ttl: s.max_ttl.map(|d| d.0),
                    ip_sans: s.ip_sans,
                    wildcards: s.wildcards,
                },
            );
        }

        for (name, e) in &raw.environments {
            let key = format!("environments.{name}");
            let mode = match (e.acme.as_deref(), &e.acme_service) {
                (None | Some("off"), None) => AcmeMode::Off,
                (Some("eab"), None) => AcmeMode::ExternalAccountRequired,
                (Some("open"), Some(service)) => {
                    if !services
                        .get(service)
                        .is_some_and(|s: &Service| s.environments.contains(name))
                    {
                        return Err(err(
                            format!("{key}.acme_service"),
                            format!("no service {service:?} in environment {name:?}"),
                        ));
                    }
                    AcmeMode::Open {
                        service: service.clone(),
                    }
                }
                (Some("open"), None) => {
                    return Err(err(
                        format!("{key}.acme_service"),
                        "required with acme = \"open\": the service accounts without EAB act as"
                            .into(),
                    ));
                }
                (Some("off" | "eab"), Some(_)) | (None, Some(_)) => {
                    return Err(err(
                        format!("{key}.acme_service"),
                        "only with acme = \"open\" (EAB keys name their own service)".into(),
                    ));
                }
                (Some(other), _) => {
                    return Err(err(
                        format!("{key}.acme"),
                        format!("{other:?} is not one of \"off\", \"eab\", \"open\""),
                    ));
                }
            };
            if let Some(env) = environments.get_mut(name) {
                env.acme = mode;
            }
        }

        let mut admins = Vec::new();
        for (i, a) in raw.roles.admins.iter().enumerate() {
            let k = format!("roles.admins[{i}]");
            match Identity::from_spiffe_id(&trust_domain, a) {
                Some(id)
                    if services
                        .get(&id.service)
                        .is_some_and(|s: &Service| s.environments.contains(&id.env)) =>
                {
                    admins.push(a.clone())
                }
                Some(id) => {
                    return Err(err(
                        k,
                        format!(
                            "no service {:?} in environment {:?} to issue this identity",
                            id.service, id.env
                        ),
                    ));
                }
                None => {
                    return Err(err(
                        k,
                        format!("{a:?} is not a SPIFFE ID spiffe://{trust_domain}/<env>/<service>"),
                    ));
                }
            }
        }
        let ci_tokens = match raw.roles.ci_tokens {
            None => CiTokenLimits {
                max_uses: 100,
                max_ttl: Duration::hours(24),
            },
            Some(c) => {
                if c.max_uses == 0 {
                    return Err(err(
                        "roles.ci_tokens.max_uses".into(),
                        "must be at least 1".into(),
                    ));
                }
                CiTokenLimits {
                    max_uses: c.max_uses,
                    max_ttl: c.max_ttl.0,
                }
            }
        };

        Ok(Policy {
            trust_domain,
            environments,
            services,
            admins,
            ci_tokens,
            sha256: crate::pki::Fingerprint::of(text.as_bytes()).to_hex(),
        })
    }

    /// Decides a request: the final names and TTL, or the rule that refuses it.
    pub fn decide(&self, req: &IssueRequest<'_>) -> Result<Decision, PolicyViolation> {
        let id = req.identity;
        let env = self.environments.get(&id.env).ok_or_else(|| {
            denied(
                "environments",
                format!(
                    "unknown environment {:?} (known: {})",
                    id.env,
                    self.environments
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        let svc = self.services.get(&id.service).ok_or_else(|| {
            denied(
                "services",
                format!(
                    "unknown service {:?}; every service must be listed",
                    id.service
                ),
            )
        })?;
        let svc_key = format!("services.{}", id.service);
        if !svc.environments.contains(&id.env) {
            return Err(denied(
                format!("{svc_key}.environments"),
                format!(
                    "service {:?} is not enabled in environment {:?}",
                    id.service, id.env
                ),
            ));
        }
        if !svc.key_types.contains(&req.key_type) {
            return Err(denied(
                format!("{svc_key}.key_types"),
                format!(
                    "key type {} is not allowed (allowed: {})",
                    req.key_type,
                    svc.key_types
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }

        let mut dns: Vec<String> = Vec::new();
        for requested in req.dns {
            let name = normalise_requested_name(requested)?;
            if name.starts_with("*.") && !svc.wildcards {
                return Err(denied(
                    format!("{svc_key}.wildcards"),
                    format!(
                        "wildcard name {name:?} is not allowed for service {:?}",
                        id.service
                    ),
                ));
            }
            if !env
                .dns_suffixes
                .iter()
                .any(|s| name_within_suffix(&name, s))
            {
                return Err(denied(
                    format!("environments.{}.dns_suffixes", id.env),
                    format!(
                        "{name:?} is outside environment {}'s DNS suffixes ({})",
                        id.env,
                        env.dns_suffixes.join(", ")
                    ),
                ));
            }
            let allowed = svc.dns.iter().any(|p| {
                expand(p, &id.service, &id.env)
                    .map(|pat| pattern_matches(&pat, &name))
                    .unwrap_or(false)
            });
            if !allowed {
                let expanded: Vec<String> = svc
                    .dns
                    .iter()
                    .filter_map(|p| expand(p, &id.service, &id.env).ok())
                    .collect();
                return Err(denied(
                    format!("{svc_key}.dns"),
                    format!(
                        "{name:?} does not match any name allowed for {}/{} ({})",
                        id.env,
                        id.service,
                        if expanded.is_empty() {
                            "none".to_string()
                        } else {
                            expanded.join(", ")
                        }
                    ),
                ));
            }
            if !dns.contains(&name) {
                dns.push(name);
            }
        }

        let mut ips: Vec<IpAddr> = Vec::new();
        for ip in req.ips {
            if !svc.ip_sans {
                return Err(denied(
                    format!("{svc_key}.ip_sans"),
                    format!(
                        "IP SAN {ip} requested but service {:?} may not have IP SANs",
                        id.service
                    ),
                ));
            }
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(malformed(
                    "ip-syntax",
                    format!("{ip} is not a usable host address"),
                ));
            }
            if !ips.contains(ip) {
                ips.push(*ip);
            }
        }

        let (max, max_rule) = match svc.max_ttl {
            Some(s) if s < env.max_ttl => (s, format!("{svc_key}.max_ttl")),
            _ => (env.max_ttl, format!("environments.{}.max_ttl", id.env)),
        };
        let ttl = match req.ttl {
            Some(t) if t > max => {
                return Err(denied(
                    max_rule,
                    format!(
                        "requested TTL {} exceeds the maximum {}",
                        HumanDuration(t),
                        HumanDuration(max)
                    ),
                ));
            }
            Some(t) if t <= Duration::ZERO => {
                return Err(malformed("ttl", "TTL must be positive"));
            }
            Some(t) => t,
            None => env.default_ttl.min(max),
        };

        Ok(Decision {
            spiffe_id: id.spiffe_id(&self.trust_domain),
            dns,
            ips,
            ttl,
        })
    }

    /// Environments whose CI tokens may be minted.
    pub fn is_ci_environment(&self, env: &str) -> bool {
        self.environments.get(env).is_some_and(|e| e.ci)
    }
}

const NAME_TOKEN_RULE: &str = "names must be lowercase letters, digits and inner hyphens (they appear in DNS names and SPIFFE IDs)";

/// Environment and service names become DNS labels and SPIFFE path segments.
fn is_name_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn expand(pattern: &str, service: &str, env: &str) -> Result<String, String> {
    let out = pattern.replace("{service}", service).replace("{env}", env);
    if out.contains('{') || out.contains('}') {
        return Err(format!(
            "{pattern:?} has an unknown placeholder (only {{service}} and {{env}} exist)"
        ));
    }
    Ok(out.to_ascii_lowercase())
}

/// Syntax check of a DNS name; `allow_star` admits `*` labels (patterns and wildcard requests).
fn check_dns_name(name: &str, allow_star: bool) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if !name.is_ascii() {
        return Err(format!(
            "{:?} contains non-ASCII characters; use the A-label (punycode, xn--) form",
            truncate(name)
        ));
    }
    if name.len() > MAX_DNS_NAME_LEN {
        return Err(format!(
            "name of {} characters exceeds the DNS limit of {MAX_DNS_NAME_LEN}",
            name.len()
        ));
    }
    if name.ends_with('.') {
        return Err(format!(
            "{name:?} has a trailing dot; write the name without it"
        ));
    }
    for label in name.split('.') {
        if label == "*" && allow_star {
            continue;
        }
        if label.is_empty() {
            return Err(format!("{name:?} has an empty label"));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "{name:?} has a label longer than {MAX_LABEL_LEN} characters"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "{name:?} has a label with characters other than letters, digits and hyphens"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "{name:?} has a label starting or ending with a hyphen"
            ));
        }
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Checks the syntax of a requested name and lowercases it.
fn normalise_requested_name(requested: &str) -> Result<String, PolicyViolation> {
    check_dns_name(requested, true).map_err(|why| malformed("dns-syntax", why))?;
    let name = requested.to_ascii_lowercase();
    if name.split('.').skip(1).any(|l| l == "*") {
        return Err(malformed(
            "dns-syntax",
            format!("{name:?}: a wildcard may only be the leftmost label"),
        ));
    }
    if name == "*" {
        return Err(malformed("dns-syntax", "a bare \"*\" is not a name"));
    }
    Ok(name)
}

/// Whether `name` equals `suffix` or lies below it, on a label boundary.
fn name_within_suffix(name: &str, suffix: &str) -> bool {
    name == suffix
        || (name.len() > suffix.len()
            && name.ends_with(suffix)
            && name.as_bytes()[name.len() - suffix.len() - 1] == b'.')
}

/// A pattern lies within a suffix when its fixed tail does: `*` labels may not reach into it.
fn pattern_within_suffix(pattern: &str, suffix: &str) -> bool {
    if !name_within_suffix(pattern, suffix) {
        return false;
    }
    !suffix.split('.').any(|l| l == "*")
}

/// Label-wise match; a `*` pattern label matches exactly one label (including a requested `*`).
fn pattern_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let n: Vec<&str> = name.split('.').collect();
    p.len() == n.len() && p.iter().zip(&n).all(|(p, n)| *p == "*" || p == n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../policies/example.toml");

    fn example() -> Policy {
        Policy::from_toml(EXAMPLE, "example.toml").expect("example policy is valid")
    }

    fn id(env: &str, service: &str) -> Identity {
        Identity {
            env: env.into(),
            service: service.into(),
        }
    }

    fn ask(
        p: &Policy,
        env: &str,
        service: &str,
        dns: &[&str],
    ) -> Result<Decision, PolicyViolation> {
        let dns: Vec<String> = dns.iter().map(|s| s.to_string()).collect();
        let identity = id(env, service);
        p.decide(&IssueRequest {
            identity: &identity,
            dns: &dns,
            ips: &[],
            ttl: None,
            key_type: KeyType::P256,
        })
    }

    fn minimal(extra: &str) -> String {
        format!(
            r#"
trust_domain = "example.internal"
[environments.dev]
dns_suffixes = ["dev.svc.example.internal"]
default_ttl = "1h"
max_ttl = "24h"
[environments.prod]
dns_suffixes = ["prod.svc.example.internal"]
default_ttl = "1h"
max_ttl = "12h"
{extra}
"#
        )
    }

    fn load_err(text: &str) -> PolicyError {
        match Policy::from_toml(text, "p.toml") {
            Err(e) => e,
            Ok(_) => panic!("policy was accepted:\n{text}"),
        }
    }

    #[test]
    fn example_policy_has_the_documented_shape() {
        let p = example();
        assert_eq!(p.trust_domain, "example.internal");
        let envs: Vec<&str> = p.environments.keys().map(String::as_str).collect();
        assert_eq!(envs, ["ci", "dev", "prod", "staging"]);
        assert!(p.services.contains_key("api") && p.services.contains_key("web"));
        assert!(p.is_ci_environment("ci") && !p.is_ci_environment("prod"));
    }

    #[test]
    fn allows_the_service_name_and_applies_default_ttl() {
        let d = ask(&example(), "dev", "api", &["API.dev.svc.example.internal"]).expect("allowed");
        assert_eq!(d.spiffe_id, "spiffe://example.internal/dev/api");
        assert_eq!(d.dns, ["api.dev.svc.example.internal"]);
        assert_eq!(d.ttl, example().environments["dev"].default_ttl);
    }

    #[test]
    fn deduplicates_names_and_allows_none() {
        let d = ask(
            &example(),
            "dev",
            "api",
            &[
                "api.dev.svc.example.internal",
                "API.DEV.svc.example.internal",
            ],
        )
        .expect("allowed");
        assert_eq!(d.dns.len(), 1);
        assert!(
            ask(&example(), "dev", "api", &[])
                .expect("allowed")
                .dns
                .is_empty()
        );
    }

    #[test]
    fn prod_name_through_dev_is_refused_by_the_suffix_rule() {
        let e =
            ask(&example(), "dev", "api", &["api.prod.svc.example.internal"]).expect_err("denied");
        assert_eq!(e.rule, "environments.dev.dns_suffixes");
        assert_eq!(e.kind(), ErrorKind::Denied);
    }

    #[test]
    fn another_services_name_is_refused_by_the_pattern_rule() {
        let e =
            ask(&example(), "dev", "api", &["web.dev.svc.example.internal"]).expect_err("denied");
        assert_eq!(e.rule, "services.api.dns");
        assert!(
            e.reason.contains("api.dev.svc.example.internal"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn unknown_env_and_service_are_denied() {
        assert_eq!(
            ask(&example(), "qa", "api", &[]).expect_err("denied").rule,
            "environments"
        );
        assert_eq!(
            ask(&example(), "dev", "db", &[]).expect_err("denied").rule,
            "services"
        );
    }

    #[test]
    fn service_not_enabled_in_env_is_denied() {
        let p = Policy::from_toml(
            &minimal("[services.api]\nenvironments = [\"dev\"]\ndns = [\"{service}.{env}.svc.example.internal\"]"),
            "p",
        )
        .expect("valid");
        assert_eq!(
            ask(&p, "prod", "api", &[]).expect_err("denied").rule,
            "services.api.environments"
        );
    }

    #[test]
    fn wildcards_are_denied_unless_enabled() {
        let e = ask(&example(), "dev", "api", &["*.dev.svc.example.internal"]).expect_err("denied");
        assert_eq!(e.rule, "services.api.wildcards");
        let p = Policy::from_toml(
            &minimal(
                "[services.edge]\nenvironments = [\"dev\"]\nwildcards = true\ndns = [\"*.{service}.{env}.svc.example.internal\"]",
            ),
            "p",
        )
        .expect("valid");
        assert!(ask(&p, "dev", "edge", &["*.edge.dev.svc.example.internal"]).is_ok());
        assert!(ask(&p, "dev", "edge", &["a.edge.dev.svc.example.internal"]).is_ok());
        assert!(ask(&p, "dev", "edge", &["edge.dev.svc.example.internal"]).is_err());
        let inner =
            ask(&p, "dev", "edge", &["a.*.dev.svc.example.internal"]).expect_err("malformed");
        assert_eq!(inner.violation, ViolationKind::Malformed);
    }

    #[test]
    fn ip_sans_are_denied_unless_enabled() {
        let p = example();
        let identity = id("dev", "api");
        let ips = ["10.0.0.1".parse().expect("ip")];
        let e = p
            .decide(&IssueRequest {
                identity: &identity,
                dns: &[],
                ips: &ips,
                ttl: None,
                key_type: KeyType::P256,
            })
            .expect_err("denied");
        assert_eq!(e.rule, "services.api.ip_sans");
        let q = Policy::from_toml(
            &minimal("[services.lb]\nenvironments = [\"dev\"]\nip_sans = true"),
            "p",
        )
        .expect("valid");
        let lb = id("dev", "lb");
        let ok = q
            .decide(&IssueRequest {
                identity: &lb,
                dns: &[],
                ips: &ips,
                ttl: None,
                key_type: KeyType::P256,
            })
            .expect("allowed");
        assert_eq!(ok.ips, ips);
        let unspecified = ["0.0.0.0".parse().expect("ip")];
        let e = q
            .decide(&IssueRequest {
                identity: &lb,
                dns: &[],
                ips: &unspecified,
                ttl: None,
                key_type: KeyType::P256,
            })
            .expect_err("malformed");
        assert_eq!(e.violation, ViolationKind::Malformed);
    }

    #[test]
    fn malformed_names_are_bad_requests() {
        let long = format!("{}.dev.svc.example.internal", ["a"; 120].join("."));
        assert!(long.len() > MAX_DNS_NAME_LEN);
        for bad in [
            long.as_str(),
            "äpi.dev.svc.example.internal",
            "api..dev.svc.example.internal",
            "api.dev.svc.example.internal.",
            "-api.dev.svc.example.internal",
            "a_b.dev.svc.example.internal",
            "*",
            "",
            &format!("{}.dev.svc.example.internal", "a".repeat(64)),
        ] {
            let e = ask(&example(), "dev", "api", &[bad]).expect_err("refused");
            assert_eq!(e.kind(), ErrorKind::BadRequest, "{bad:?}: {e}");
        }
        let e =
            ask(&example(), "dev", "api", &["äpi.dev.svc.example.internal"]).expect_err("refused");
        assert!(e.reason.contains("A-label"), "{}", e.reason);
    }

    #[test]
    fn ttl_is_capped_by_env_and_service() {
        let p = Policy::from_toml(
            &minimal("[services.api]\nenvironments = [\"dev\", \"prod\"]\nmax_ttl = \"6h\"\n"),
            "p",
        )
        .expect("valid");
        let identity = id("dev", "api");
        let req = |ttl| IssueRequest {
            identity: &identity,
            dns: &[],
            ips: &[],
            ttl: Some(ttl),
            key_type: KeyType::P256,
        };
        assert!(p.decide(&req(Duration::hours(6))).is_ok());
        let e = p.decide(&req(Duration::hours(7))).expect_err("too long");
        assert_eq!(e.rule, "services.api.max_ttl");
        let prod = id("prod", "api");
        let q = Policy::from_toml(&minimal("[services.api]\nenvironments = [\"prod\"]\n"), "p")
            .expect("valid");
        let e = q
            .decide(&IssueRequest {
                identity: &prod,
                dns: &[],
                ips: &[],
                ttl: Some(Duration::hours(13)),
                key_type: KeyType::P256,
            })
            .expect_err("too long");
        assert_eq!(e.rule, "environments.prod.max_ttl");
    }

    #[test]
    fn key_types_are_enforced() {
        let p = Policy::from_toml(
            &minimal("[services.api]\nenvironments = [\"dev\"]\nkey_types = [\"ed25519\"]\n"),
            "p",
        )
        .expect("valid");
        let e = ask(&p, "dev", "api", &[]).expect_err("p256 refused");
        assert_eq!(e.rule, "services.api.key_types");
    }

    #[test]
    fn load_errors_name_the_key() {
        let cases = [
            (minimal("[services.api]\nenvironments = [\"qa\"]"), "services.api.environments[0]"),
            (
                minimal("[services.api]\nenvironments = [\"dev\"]\ndns = [\"{service}.prod.svc.example.internal\"]"),
                "services.api.dns[0]",
            ),
            (
                minimal("[services.api]\nenvironments = [\"dev\"]\ndns = [\"{svc}.dev.svc.example.internal\"]"),
                "services.api.dns[0]",
            ),
            (
                minimal("[services.api]\nenvironments = [\"dev\"]\ndns = [\"x.*.svc.example.internal\"]"),
                "services.api.dns[0]",
            ),
            (minimal("[services.API]\nenvironments = [\"dev\"]"), "services.API"),
            (minimal("[roles]\nadmins = [\"spiffe://other/dev/ops\"]"), "roles.admins[0]"),
            (minimal("[roles]\nadmins = [\"spiffe://example.internal/dev/ops\"]"), "roles.admins[0]"),
            (minimal("[roles.ci_tokens]\nmax_uses = 0\nmax_ttl = \"1h\""), "roles.ci_tokens.max_uses"),
            (
                "trust_domain = \"Example.internal\"\n[environments.dev]\ndns_suffixes=[\"a.b\"]\ndefault_ttl=\"1h\"\nmax_ttl=\"1h\"".into(),
                "trust_domain",
            ),
            (
                "trust_domain = \"example.internal\"\n[environments.dev]\ndns_suffixes=[]\ndefault_ttl=\"1h\"\nmax_ttl=\"1h\"".into(),
                "environments.dev.dns_suffixes",
            ),
            (
                "trust_domain = \"example.internal\"\n[environments.dev]\ndns_suffixes=[\"a.b\"]\ndefault_ttl=\"2h\"\nmax_ttl=\"1h\"".into(),
                "environments.dev.default_ttl",
            ),
            ("trust_domain = \"example.internal\"".into(), "environments"),
        ];
        for (text, key) in cases {
            let e = load_err(&text);
            assert_eq!(e.key, key, "{e}");
            assert!(e.to_string().starts_with("p.toml: "), "{e}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_a_location() {
        let e = load_err(&minimal(
            "[services.api]\nenvironments = [\"dev\"]\nmax_tll = \"1h\"",
        ));
        assert!(e.message.contains("max_tll"), "{e}");
        let e = load_err(&minimal(
            "[services.api]\nenvironments = [\"dev\"]\nmax_ttl = \"forever\"",
        ));
        assert!(e.message.contains("forever"), "{e}");
        let e = load_err("trust_domain = ");
        assert!(e.key.is_empty() && !e.message.is_empty());
    }

    #[test]
    fn suffix_matching_respects_label_boundaries() {
        assert!(name_within_suffix("a.dev.x", "dev.x"));
        assert!(name_within_suffix("dev.x", "dev.x"));
        assert!(!name_within_suffix("evildev.x", "dev.x"));
        assert!(pattern_matches("*.api.x", "foo.api.x"));
        assert!(!pattern_matches("*.api.x", "a.b.api.x"));
    }
}
