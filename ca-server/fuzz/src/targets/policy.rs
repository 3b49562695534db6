//! `Policy::from_toml` on fuzzed policy text, then `Policy::decide` on a fuzzed request (against
//! the fuzzed policy when it loads, else the example policy).
//!
//! Input: policy text, then optionally a NUL byte and the request bytes, decoded by
//! [`Bytes`]: environment and service (mostly names the policy knows), DNS names (mostly built
//! from the policy's own patterns and suffixes, with case changes and damage), IP addresses,
//! TTL and key type.

use std::net::IpAddr;

use ca_server::pki::{Identity, KeyType};
use ca_server::policy::{
    Decision, IssueRequest, MAX_DNS_NAME_LEN, Policy, PolicyViolation, ViolationKind,
};
use time::Duration;

use super::{Bytes, Target, class, rendered_toml_class};

const EXAMPLE: &str = include_str!("../../../../policies/example.toml");

/// The repository's example policy.
pub(crate) fn example_policy() -> Policy {
    Policy::from_toml(EXAMPLE, "example.toml").expect("the example policy loads")
}

const KEY_TYPES: [KeyType; 4] = [KeyType::P256, KeyType::P384, KeyType::Ed25519, KeyType::Rsa];

pub struct PolicyTarget {
    example: Policy,
}

impl PolicyTarget {
    pub fn new() -> PolicyTarget {
        PolicyTarget {
            example: example_policy(),
        }
    }
}

/// A request decoded from fuzz bytes, owning what `IssueRequest` borrows.
struct Request {
    identity: Identity,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    ttl: Option<Duration>,
    key_type: KeyType,
}

impl Request {
    fn as_issue(&self) -> IssueRequest<'_> {
        IssueRequest {
            identity: &self.identity,
            dns: &self.dns,
            ips: &self.ips,
            ttl: self.ttl,
            key_type: self.key_type,
        }
    }
}

fn pick_name(b: &mut Bytes<'_>, known: &[&String]) -> String {
    let sel = b.u8();
    if sel < 224 && !known.is_empty() {
        known[usize::from(sel) % known.len()].clone()
    } else {
        b.string(40)
    }
}

fn expand(pattern: &str, service: &str, env: &str) -> String {
    pattern
        .replace("{service}", service)
        .replace("{env}", env)
        .to_ascii_lowercase()
}

fn decode_request(p: &Policy, data: &[u8]) -> Request {
    let mut b = Bytes::new(data);
    let envs: Vec<&String> = p.environments.keys().collect();
    let services: Vec<&String> = p.services.keys().collect();
    let env = pick_name(&mut b, &envs);
    let service = pick_name(&mut b, &services);
    let suffixes: Vec<String> = p
        .environments
        .get(&env)
        .map(|e| e.dns_suffixes.clone())
        .unwrap_or_default();
    let patterns: Vec<String> = p
        .services
        .get(&service)
        .map(|s| s.dns.iter().map(|d| expand(d, &service, &env)).collect())
        .unwrap_or_default();
    let mut dns = Vec::new();
    for _ in 0..b.u8() % 6 {
        let kind = b.u8() % 8;
        let mut name = match kind {
            0..=2 if !patterns.is_empty() => {
                let pat = &patterns[usize::from(b.u8()) % patterns.len()];
                let label = if b.u8().is_multiple_of(4) {
                    "*".to_string()
                } else {
                    b.string(12)
                };
                pat.replace('*', &label)
            }
            3 | 4 if !suffixes.is_empty() => {
                let sfx = &suffixes[usize::from(b.u8()) % suffixes.len()];
                let label = b.string(70);
                if label.is_empty() {
                    sfx.clone()
                } else {
                    format!("{label}.{sfx}")
                }
            }
            5 => {
                let n = usize::from(b.u8()) + usize::from(b.u8());
                String::from_utf8_lossy(b.take(n)).into_owned()
            }
            6 => {
                let base = patterns
                    .first()
                    .or(suffixes.first())
                    .cloned()
                    .unwrap_or_default();
                let label = "a".repeat(usize::from(b.u8()) % 70);
                let repeat = usize::from(b.u8()) % 8;
                format!("{}{base}", format!("{label}.").repeat(repeat))
            }
            _ => b.string(30),
        };
        // Case changes: policy compares names case-insensitively.
        let flips = b.u8();
        if flips & 1 == 1 {
            name = name.to_ascii_uppercase();
        }
        if flips & 2 == 2 {
            name.push('.');
        }
        dns.push(name);
    }
    let mut ips = Vec::new();
    for _ in 0..b.u8() % 4 {
        let ip: IpAddr = match b.u8() % 4 {
            0 => {
                let o: [u8; 4] = b.take(4).try_into().unwrap_or([10, 0, 0, 1]);
                IpAddr::from(o)
            }
            1 => {
                let o: [u8; 16] = b.take(16).try_into().unwrap_or([0; 16]);
                IpAddr::from(o)
            }
            2 => [
                "0.0.0.0",
                "::",
                "224.0.0.1",
                "ff02::1",
                "::ffff:10.0.0.1",
                "127.0.0.1",
            ][usize::from(b.u8()) % 6]
                .parse()
                .unwrap_or(IpAddr::from([127, 0, 0, 1])),
            _ => IpAddr::from([10, 0, 0, b.u8()]),
        };
        ips.push(ip);
    }
    let ttl = match b.u8() % 4 {
        0 => None,
        1 => Some(Duration::seconds(b.u64() as i64)),
        2 => Some(Duration::seconds(i64::from(b.u8()) * 60 - 60)),
        _ => p
            .environments
            .get(&env)
            .map(|e| e.max_ttl + Duration::seconds(i64::from(b.u8() % 3) - 1)),
    };
    let key_type = KEY_TYPES[usize::from(b.u8()) % 4];
    Request {
        identity: Identity { env, service },
        dns,
        ips,
        ttl,
        key_type,
    }
}

/// What must hold of every policy that loads.
fn check_policy(p: &Policy, text: &str) {
    assert!(!p.trust_domain.is_empty());
    assert_eq!(p.trust_domain, p.trust_domain.to_ascii_lowercase());
    assert!(!p.environments.is_empty());
    for e in p.environments.values() {
        assert!(!e.dns_suffixes.is_empty());
        assert!(e.default_ttl <= e.max_ttl && e.default_ttl > Duration::ZERO);
    }
    for s in p.services.values() {
        assert!(!s.environments.is_empty() && !s.key_types.is_empty());
        assert!(
            s.environments
                .iter()
                .all(|e| p.environments.contains_key(e))
        );
    }
    for a in &p.admins {
        let id = Identity::from_spiffe_id(&p.trust_domain, a).expect("admin is a SPIFFE ID");
        assert!(p.services[&id.service].environments.contains(&id.env));
    }
    assert!(p.sha256.len() == 64 && p.sha256.bytes().all(|b| b.is_ascii_hexdigit()));
    let again = Policy::from_toml(text, "fuzz.toml").expect("loads twice");
    assert_eq!(&again, p, "loading is not deterministic");

    // Every name a service's own patterns describe is allowed: the load-time checks (suffixes,
    // syntax) and the decision agree, so no valid policy promises a name it then refuses.
    for (sname, s) in p.services.iter().take(8) {
        for env in s.environments.iter().take(8) {
            for pattern in s.dns.iter().take(4) {
                let name = expand(pattern, sname, env).replace('*', "x");
                let identity = Identity {
                    env: env.clone(),
                    service: sname.clone(),
                };
                let req = IssueRequest {
                    identity: &identity,
                    dns: std::slice::from_ref(&name),
                    ips: &[],
                    ttl: None,
                    key_type: s.key_types[0],
                };
                if let Err(e) = p.decide(&req) {
                    panic!(
                        "{sname} in {env}: {name:?} from its own pattern {pattern:?} is refused: {e}"
                    );
                }
            }
        }
    }
}

/// What must hold of every decision.
fn check_decision(p: &Policy, req: &Request, d: &Decision) {
    let id = &req.identity;
    let env = &p.environments[&id.env];
    let svc = &p.services[&id.service];
    assert!(svc.environments.contains(&id.env));
    assert!(svc.key_types.contains(&req.key_type));
    assert_eq!(
        d.spiffe_id,
        format!("spiffe://{}/{}/{}", p.trust_domain, id.env, id.service)
    );
    assert_eq!(
        Identity::from_spiffe_id(&p.trust_domain, &d.spiffe_id).as_ref(),
        Some(id)
    );
    for (i, name) in d.dns.iter().enumerate() {
        assert!(!d.dns[..i].contains(name), "duplicate name {name:?}");
        assert_eq!(name, &name.to_ascii_lowercase());
        assert!(
            !name.is_empty() && name.len() <= MAX_DNS_NAME_LEN,
            "{name:?}"
        );
        assert!(
            req.dns.iter().any(|r| r.eq_ignore_ascii_case(name)),
            "{name:?} was not requested"
        );
        assert!(
            env.dns_suffixes
                .iter()
                .any(|s| name == s || name.ends_with(&format!(".{s}"))),
            "{name:?} is outside the environment's suffixes"
        );
        assert!(
            svc.wildcards || !name.contains('*'),
            "wildcard {name:?} allowed"
        );
        for label in name.split('.') {
            assert!(!label.is_empty() && label.len() <= 63, "{name:?}");
            assert!(
                label == "*"
                    || label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-'),
                "{name:?}"
            );
        }
    }
    let mut uniq: Vec<String> = Vec::new();
    for name in req.dns.iter().map(|s| s.to_ascii_lowercase()) {
        if !uniq.contains(&name) {
            uniq.push(name);
        }
    }
    assert_eq!(
        d.dns, uniq,
        "names are the requested ones, lowercased and deduplicated"
    );
    assert!(d.ips.is_empty() || svc.ip_sans);
    for (i, ip) in d.ips.iter().enumerate() {
        assert!(!d.ips[..i].contains(ip) && req.ips.contains(ip));
        assert!(!ip.is_unspecified() && !ip.is_multicast());
    }
    let max = svc.max_ttl.map_or(env.max_ttl, |m| m.min(env.max_ttl));
    assert!(
        d.ttl > Duration::ZERO && d.ttl <= max,
        "ttl {} beyond {}",
        d.ttl,
        max
    );
    match req.ttl {
        Some(t) => assert_eq!(d.ttl, t),
        None => assert_eq!(d.ttl, env.default_ttl.min(max)),
    }
}

fn rule_class(rule: &str) -> String {
    let mut parts: Vec<&str> = rule.split('.').collect();
    if parts.len() >= 2 && matches!(parts[0], "services" | "environments") {
        parts[1] = "*";
    }
    class(&parts.join("."))
}

fn decision_class(r: &Result<Decision, PolicyViolation>) -> String {
    match r {
        Ok(d) => format!(
            "allow:{}:{}:{}",
            d.dns.len().min(2),
            d.ips.len().min(2),
            d.dns.iter().any(|n| n.starts_with("*."))
        ),
        Err(v) => format!(
            "{}:{}",
            if v.violation == ViolationKind::Malformed {
                "malformed"
            } else {
                "denied"
            },
            rule_class(&v.rule)
        ),
    }
}

impl Target for PolicyTarget {
    fn name(&self) -> &'static str {
        "policy"
    }

    fn max_len(&self) -> usize {
        16 * 1024
    }

    fn run(&mut self, input: &[u8]) -> String {
        let split = input.iter().position(|b| *b == 0).unwrap_or(input.len());
        let text = String::from_utf8_lossy(&input[..split]);
        let request_bytes = input.get(split + 1..).unwrap_or(&[]);
        let (policy, load) = match Policy::from_toml(&text, "fuzz.toml") {
            Ok(p) => {
                check_policy(&p, &text);
                (Some(p), "loaded".to_string())
            }
            Err(e) => {
                assert_eq!(e.file, "fuzz.toml");
                let why = if e.key.is_empty() {
                    format!("syntax:{}", rendered_toml_class(&e.message, &text))
                } else {
                    // The first words say what is wrong; later ones quote the fuzzed text.
                    let words: Vec<&str> = e.message.split(' ').take(6).collect();
                    format!("{}:{}", rule_class(&e.key), class(&words.join(" ")))
                };
                assert!(!e.to_string().is_empty());
                (None, why)
            }
        };
        let p = policy.as_ref().unwrap_or(&self.example);
        let req = decode_request(p, request_bytes);
        let r = p.decide(&req.as_issue());
        assert_eq!(p.decide(&req.as_issue()), r, "decide is not deterministic");
        match &r {
            Ok(d) => {
                check_decision(p, &req, d);
                assert!(!d.to_string().is_empty());
            }
            Err(v) => assert!(!v.rule.is_empty() && !v.reason.is_empty()),
        }
        format!("{load}|{}", decision_class(&r))
    }

    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let minimal = "trust_domain = \"example.internal\"\n[environments.dev]\ndns_suffixes = [\"dev.svc.example.internal\"]\ndefault_ttl = \"1h\"\nmax_ttl = \"24h\"\n";
        let texts = [
            EXAMPLE.to_string(),
            minimal.to_string(),
            format!(
                "{minimal}[services.edge]\nenvironments = [\"dev\"]\nwildcards = true\nip_sans = true\ndns = [\"*.{{service}}.{{env}}.svc.example.internal\", \"{{service}}.{{env}}.svc.example.internal\"]\nmax_ttl = \"2h\"\n"
            ),
            format!(
                "{minimal}[services.api]\nenvironments = [\"dev\"]\nkey_types = [\"ed25519\"]\ndns = [\"{{service}}.dev.svc.example.internal\"]\n[roles]\nadmins = [\"spiffe://example.internal/dev/api\"]\n[roles.ci_tokens]\nmax_uses = 5\nmax_ttl = \"1h\"\n"
            ),
            "trust_domain = \"Example.internal\"\n".to_string(),
            String::new(),
        ];
        let requests: [&[u8]; 6] = [
            &[0, 0, 1, 0, 0, 0, 0],
            &[1, 1, 2, 0, 0, 0, 3, 0, 9, 0, 0, 0, 0],
            &[
                0, 0, 3, 5, 20, b'a', b'b', 0, 4, 0, 3, b'x', b'y', b'z', 2, 0, 1, 1, 0, 1, 0, 0,
                0, 0, 0, 0, 14, 16, 2,
            ],
            &[0, 2, 1, 6, 40, 3, 0, 1, 1, 2, 3, 0, 5, 3],
            &[230, 3, b'q', b'a', b'z', 230, 2, b'x', b'y', 0, 0, 0],
            &[0, 0, 1, 5, 200, 100, 0],
        ];
        let mut out = Vec::new();
        for t in &texts {
            for r in requests {
                let mut input = t.clone().into_bytes();
                input.push(0);
                input.extend_from_slice(r);
                out.push(input);
            }
        }
        out
    }

    fn dictionary(&self) -> &'static [&'static [u8]] {
        DICTIONARY
    }
}

const DICTIONARY: &[&[u8]] = &[
    b"trust_domain = ",
    b"[environments.",
    b"[services.",
    b"dns_suffixes = [",
    b"default_ttl = ",
    b"max_ttl = ",
    b"ci = true\n",
    b"environments = [",
    b"dns = [",
    b"key_types = [",
    b"ip_sans = true\n",
    b"wildcards = true\n",
    b"[roles]\n",
    b"admins = [",
    b"[roles.ci_tokens]\n",
    b"max_uses = ",
    b"{service}",
    b"{env}",
    b"{svc}",
    b"*.",
    b".*",
    b"\"p256\"",
    b"\"rsa\"",
    b"\"ed25519\"",
    b"\"1h\"",
    b"\"1000y\"",
    b"\"1001y\"",
    b"\"0s\"",
    b"\"\"",
    b"spiffe://",
    b"example.internal",
    b"xn--",
    b"\xc3\xa4",
    b"\"],\n",
    b", ",
    b"\x00",
];
