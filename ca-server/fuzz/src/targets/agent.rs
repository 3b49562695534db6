//! The agent's two files: `agent.toml` (`AgentConfig`, then `validate`, the routing decision and
//! the schedule fed with the configured values) and `status.json` (`StatusFile`, which
//! `ca-agent status` reads, then the Prometheus text rendered from it).

use std::collections::BTreeMap;
use std::time::Duration;

use ca_agent::config::AgentConfig;
use ca_agent::schedule::{backoff, refresh_in};
use ca_agent::status::{CertStatus, Health, StatusFile, render_metrics};
use ca_wire::{CaInfo, EnvironmentInfo};

use super::{Target, class, message_class};

const EXAMPLE: &str = include_str!("../../../../ca-agent/agent.example.toml");

pub struct ConfigTarget {
    info: CaInfo,
}

impl ConfigTarget {
    pub fn new() -> ConfigTarget {
        ConfigTarget {
            info: CaInfo {
                trust_domain: "example.internal".into(),
                environments: BTreeMap::from([
                    (
                        "prod".to_string(),
                        EnvironmentInfo {
                            dns_suffixes: vec!["prod.svc.example.internal".into()],
                        },
                    ),
                    (
                        "dev".to_string(),
                        EnvironmentInfo {
                            dns_suffixes: vec!["dev.svc.example.internal".into()],
                        },
                    ),
                ]),
            },
        }
    }
}

/// The same configuration with another enrollment-token secret of the same length, when the
/// text configures a token: `Debug` of the two must not differ.
fn with_other_secret(text: &str) -> Option<AgentConfig> {
    let mut table: toml::Table = text.parse().ok()?;
    let token = table.get("token")?.as_str()?.to_string();
    let (id, secret) = token.split_once('.')?;
    let other: String = secret
        .chars()
        .map(|c| if c == 'a' { 'b' } else { 'a' })
        .collect();
    table.insert("token".into(), toml::Value::String(format!("{id}.{other}")));
    table.try_into().ok()
}

fn check_config(cfg: &AgentConfig, info: &CaInfo, text: &str) -> String {
    assert!((0.1..=0.9).contains(&cfg.renew_fraction));
    assert!((0.0..=0.3).contains(&cfg.jitter));
    assert!(cfg.backoff_initial <= cfg.backoff_max);
    assert!(!cfg.certs.is_empty());
    if let Some(other) = with_other_secret(text) {
        assert_eq!(
            format!("{cfg:?}"),
            format!("{other:?}"),
            "Debug of the configuration shows the enrollment token's secret"
        );
    }
    // The retry delays the agent will sleep stay within their bounds.
    for attempt in [0, 1, 2, 5, 10, 31, 40, u32::MAX] {
        for sample in [0.0, 0.5, 0.999_999] {
            let wait = backoff(attempt, cfg.backoff_initial, cfg.backoff_max, sample);
            assert!(wait >= cfg.backoff_initial / 2, "backoff below its floor");
            assert!(
                wait <= cfg.backoff_max.max(cfg.backoff_initial),
                "backoff above its cap"
            );
        }
    }
    let mut routes = Vec::new();
    for c in &cfg.certs {
        assert!(matches!(c.key_type.as_str(), "p256" | "p384" | "ed25519"));
        assert_eq!(
            c.key_mode & 0o007,
            0,
            "the key file would be readable by others"
        );
        let fraction = cfg.fraction_of(c);
        assert!((0.1..=0.9).contains(&fraction));
        for (nb, na) in [
            (0, 3600),
            (1_700_000_000, 1_700_000_060),
            (0, 10 * 365 * 86_400),
        ] {
            let r = refresh_in(nb, na, nb, fraction, cfg.jitter, 0.5);
            assert!(
                r <= Duration::from_secs((na - nb) as u64),
                "renewal after expiry"
            );
        }
        let _ = c.challenge_kind();
        let without = cfg.route(c, None);
        let with = cfg.route(c, Some(info));
        routes.push(format!(
            "{}/{}",
            without.map_or("refused".into(), |r| format!("{r:?}")),
            with.map_or("refused".into(), |r| format!("{r:?}"))
        ));
    }
    routes.truncate(2);
    routes.join(",")
}

fn config_error_class(e: &str) -> String {
    // "cert[3] (name).dns: ..." and "acme.name: ..." name what the fuzz input named; what is
    // wrong follows the key.
    let what = match e.split_once("): ").or_else(|| e.split_once(": ")) {
        Some((key, rest)) => {
            let key: String = key
                .chars()
                .take_while(|c| c.is_ascii_alphabetic() || *c == '_')
                .collect();
            format!("{key}:{rest}")
        }
        None => e.to_string(),
    };
    class(&what)
}

impl Target for ConfigTarget {
    fn name(&self) -> &'static str {
        "agent_config"
    }

    fn max_len(&self) -> usize {
        16 * 1024
    }

    fn run(&mut self, input: &[u8]) -> String {
        let text = String::from_utf8_lossy(input);
        match toml::from_str::<AgentConfig>(&text) {
            Err(e) => format!("toml:{}", message_class(e.message())),
            Ok(cfg) => match cfg.validate() {
                Err(e) => format!("invalid:{}", config_error_class(&e)),
                Ok(()) => format!("ok:{}", check_config(&cfg, &self.info, &text)),
            },
        }
    }

    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let fp = "ab".repeat(32);
        let base = format!(
            "server = \"https://127.0.0.1:8443\"\nroot_fingerprint = \"{fp}\"\nstate_dir = \"/tmp/s\"\n"
        );
        let private = "[[cert]]\nname = \"api\"\nenv = \"dev\"\nservice = \"api\"\ndir = \"/tmp/api\"\ndns = [\"api.dev.svc.example.internal\"]\n";
        let acme = "[acme.le]\ndirectory = \"letsencrypt-staging\"\ncontact = [\"ops@example.com\"]\nagree_tos = true\n[[cert]]\nname = \"www\"\nissuer = \"acme\"\ndns = [\"www.example.com\"]\ndir = \"/tmp/www\"\n";
        vec![
            EXAMPLE.as_bytes().to_vec(),
            format!("{base}{private}").into_bytes(),
            format!("{base}token = \"0123456789abcdef.{}\"\nrenew_fraction = 0.5\njitter = 0.1\nbackoff_initial = \"2s\"\nbackoff_max = \"10m\"\n{private}key_mode = 0o640\nttl = \"1h\"\n", "cd".repeat(32)).into_bytes(),
            format!("state_dir = \"/tmp/s\"\n{acme}").into_bytes(),
            format!("{base}{acme}[[cert]]\nname = \"auto\"\ndns = [\"x.prod.svc.example.internal\", \"www.example.org\"]\ndir = \"/tmp/auto\"\n").into_bytes(),
            format!("{base}[[cert]]\nname = \"w\"\nissuer = \"acme\"\ndns = [\"*.example.com\"]\ndir = \"/tmp/w\"\ndns_hook = [\"/bin/true\"]\ndns_propagation = \"30s\"\n").into_bytes(),
            b"state_dir = 1".to_vec(),
        ]
    }

    fn dictionary(&self) -> &'static [&'static [u8]] {
        &[
            b"server = ",
            b"root_fingerprint = ",
            b"state_dir = ",
            b"token = ",
            b"renew_fraction = ",
            b"jitter = ",
            b"backoff_initial = ",
            b"backoff_max = ",
            b"bundle_refresh = ",
            b"[[cert]]\n",
            b"[acme.",
            b"issuer = \"auto\"\n",
            b"issuer = \"private\"\n",
            b"issuer = \"acme\"\n",
            b"challenge = \"dns-01\"\n",
            b"dns = [",
            b"ips = [",
            b"key_mode = ",
            b"\"99999999999999999999d\"",
            b"\"0s\"",
            b"1e308",
            b"nan",
            b"-inf",
            b"0o777",
            b"\"https://",
            b"\"*.",
        ]
    }
}

pub struct StatusTarget;

impl StatusTarget {
    pub fn new() -> StatusTarget {
        StatusTarget
    }
}

/// A Prometheus sample: metric name, labels (values unescaped), value.
type Sample = (String, Vec<(String, String)>, f64);

/// Parses one Prometheus sample line `name{k="v",...} value`.
fn parse_sample(line: &str) -> Option<Sample> {
    let (name, rest) = line.split_once('{')?;
    let mut labels = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    _ => return None,
                },
                '\n' => return None,
                c => value.push(c),
            }
        }
        labels.push((key, value));
        match chars.next()? {
            ',' => continue,
            '}' => break,
            _ => return None,
        }
    }
    let rest: String = chars.collect();
    let value = rest.strip_prefix(' ')?.parse().ok()?;
    Some((name.to_string(), labels, value))
}

impl Target for StatusTarget {
    fn name(&self) -> &'static str {
        "agent_status"
    }

    fn max_len(&self) -> usize {
        64 * 1024
    }

    fn run(&mut self, input: &[u8]) -> String {
        let st: StatusFile = match serde_json::from_slice(input) {
            Ok(s) => s,
            Err(e) => {
                return format!("json:{:?}:{}", e.classify(), message_class(&e.to_string()));
            }
        };
        // What the agent writes, it reads back the same.
        let written = serde_json::to_vec_pretty(&st).expect("a status serialises");
        let back: StatusFile = serde_json::from_slice(&written).expect("a written status parses");
        assert_eq!(back, st, "the status file does not round-trip");

        // Every line of the metrics is a comment or a well-formed sample whose labels are the
        // certificate's own values, whatever characters they hold.
        let text = render_metrics(&st);
        let mut samples = 0;
        for line in text.lines() {
            if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
                continue;
            }
            let (name, labels, _) =
                parse_sample(line).unwrap_or_else(|| panic!("malformed metrics line {line:?}"));
            assert!(name.starts_with("ca_agent_"), "{line:?}");
            let keys: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, ["name", "env", "service", "issuer"], "{line:?}");
            let c = st
                .certs
                .values()
                .find(|c| {
                    c.name == labels[0].1
                        && c.env == labels[1].1
                        && c.service == labels[2].1
                        && c.issuer == labels[3].1
                })
                .unwrap_or_else(|| panic!("metrics line {line:?} names no certificate"));
            let _ = c;
            samples += 1;
        }
        let expected: usize = st
            .certs
            .values()
            .map(|c| 3 + usize::from(c.not_after.is_some()) + usize::from(c.last_success.is_some()))
            .sum();
        assert_eq!(samples, expected, "metrics lines missing or extra");
        let healths: std::collections::BTreeSet<String> = st
            .certs
            .values()
            .map(|c| format!("{:?}", c.health))
            .collect();
        format!("ok:{}:{:?}", st.certs.len().min(3), healths)
    }

    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let mut ok = CertStatus::new("api", "dev", "api");
        ok.issuer = "private".into();
        ok.issued_by = Some("CN=example.internal dev CA".into());
        ok.spiffe_id = Some("spiffe://example.internal/dev/api".into());
        ok.serial = Some("75dc694242da4bf5c1d870bbb7e23e6b".into());
        ok.not_after = Some(1_800_000_000);
        ok.next_attempt = Some(1_799_990_000);
        ok.last_success = Some(1_799_980_000);
        ok.renewals = 12;
        ok.health = Health::Ok;
        let mut bad = CertStatus::new("www", "", "");
        bad.issuer = "acme:letsencrypt".into();
        bad.last_error = Some("order failed: \"rate limited\"\nretry later".into());
        bad.failures = 3;
        bad.health = Health::Unhealthy;
        let mut revoked = CertStatus::new("old", "prod", "ops");
        revoked.health = Health::Revoked;
        revoked.reload_warning = Some("reload hook exited 1".into());
        let one = |c: Vec<CertStatus>| StatusFile {
            pid: 4242,
            updated_at: 1_799_980_000,
            certs: c.into_iter().map(|c| (c.name.clone(), c)).collect(),
        };
        let mut out: Vec<Vec<u8>> = [
            one(vec![]),
            one(vec![ok.clone()]),
            one(vec![ok, bad, revoked]),
        ]
        .iter()
        .map(|s| serde_json::to_vec_pretty(s).expect("json"))
        .collect();
        out.push(b"{\"pid\": 1, \"updated_at\": 0, \"certs\": {}}".to_vec());
        out.push(b"{}".to_vec());
        out
    }

    fn dictionary(&self) -> &'static [&'static [u8]] {
        &[
            b"\"health\": \"ok\"",
            b"\"pending\"",
            b"\"revoked\"",
            b"\"unhealthy\"",
            b"\"not_after\": ",
            b"\"last_success\": ",
            b"\"renewals\": ",
            b"\"issuer\": ",
            b"\"env\": ",
            b"\"name\": ",
            b"null",
            b"18446744073709551615",
            b"-9223372036854775808",
            b"1e400",
            b"\"\\\"\"",
            b"\"\\n\"",
            b"\"\\\\\"",
            b"\"}\"",
            b"\"\\u0000\"",
            b"\\\"",
            b"\\n",
        ]
    }
}
