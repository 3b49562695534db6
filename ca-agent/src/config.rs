//! The agent's configuration file (`agent.toml`): the CA, the pinned root, and the certificates
//! to keep fresh. Unknown keys are refused and every value is checked at start-up, with errors
//! naming the key.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A validated configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Base URL of the CA server, `https://...`.
    pub server: String,
    /// SHA-256 of the CA's root certificate (hex, any case, colons optional).
    pub root_fingerprint: String,
    /// Where the agent keeps its state: the pinned root, status and pid file.
    pub state_dir: PathBuf,
    /// Enrollment token (prefer `--token-file` or `CA_AGENT_TOKEN`).
    #[serde(default)]
    pub token: Option<String>,
    /// File holding an enrollment token, re-read whenever the agent needs to enroll.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Default renewal point as a fraction of the lifetime.
    #[serde(default = "default_fraction")]
    pub renew_fraction: f64,
    /// Renewal moves earlier by up to this fraction of the lifetime, at random.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// First retry delay after a failure.
    #[serde(default = "default_backoff_initial", with = "human")]
    pub backoff_initial: Duration,
    /// Longest retry delay.
    #[serde(default = "default_backoff_max", with = "human")]
    pub backoff_max: Duration,
    /// How often the trust bundle (and CRLs, where asked) are refreshed.
    #[serde(default = "default_refresh", with = "human")]
    pub bundle_refresh: Duration,
    /// Serve Prometheus metrics on this address (loopback recommended).
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The certificates to manage.
    #[serde(rename = "cert", default)]
    pub certs: Vec<CertConfig>,
}

/// One managed certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    /// Name, unique within the file (used by `renew --now NAME` and in status and metrics).
    pub name: String,
    /// Environment.
    pub env: String,
    /// Service.
    pub service: String,
    /// DNS names to ask for.
    #[serde(default)]
    pub dns: Vec<String>,
    /// IP addresses to ask for.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// Key type of every new key: p256, p384 or ed25519.
    #[serde(default = "default_key_type")]
    pub key_type: String,
    /// Lifetime to ask for (default: the policy's).
    #[serde(default)]
    pub ttl: Option<String>,
    /// Output directory (versions/, current, and stable links key.pem, cert.pem, ...).
    pub dir: PathBuf,
    /// Owner (name or uid) of the written files; default: the agent's user.
    #[serde(default)]
    pub owner: Option<String>,
    /// Group (name or gid) of the written files.
    #[serde(default)]
    pub group: Option<String>,
    /// Mode of the key file (certificates are 0644). Default 0600.
    #[serde(default = "default_key_mode")]
    pub key_mode: u32,
    /// Renewal fraction for this certificate (default: the global one).
    #[serde(default)]
    pub renew_fraction: Option<f64>,
    /// Command run after each new certificate (argv, no shell), with CERT_PATH, KEY_PATH,
    /// CHAIN_PATH, BUNDLE_PATH and SERIAL in its environment.
    #[serde(default)]
    pub reload_command: Vec<String>,
    /// Send SIGHUP to the pid in this file after each new certificate.
    #[serde(default)]
    pub reload_pid_file: Option<PathBuf>,
    /// Time limit of the reload command.
    #[serde(default = "default_hook_timeout", with = "human")]
    pub reload_timeout: Duration,
    /// After reloading, connect here (host:port) and check that the served certificate is the new one.
    #[serde(default)]
    pub check_tls: Option<String>,
    /// Server name sent when checking (default: the first DNS name).
    #[serde(default)]
    pub check_server_name: Option<String>,
    /// Also keep the environment's CRL next to the certificate (crl.pem).
    #[serde(default)]
    pub crl: bool,
}

fn default_fraction() -> f64 {
    2.0 / 3.0
}
fn default_jitter() -> f64 {
    0.05
}
fn default_backoff_initial() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(300)
}
fn default_refresh() -> Duration {
    Duration::from_secs(3600)
}
fn default_key_type() -> String {
    "p256".into()
}
fn default_key_mode() -> u32 {
    0o600
}
fn default_hook_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Durations written as `30s`, `15m`, `1h30m`, `7d`.
pub mod human {
    use std::time::Duration;

    /// Parses a human duration.
    pub fn parse(s: &str) -> Result<Duration, String> {
        let mut total: u64 = 0;
        let mut digits = String::new();
        for c in s.trim().chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => {
                    return Err(format!(
                        "invalid duration {s:?}: unknown unit {c:?} (use s, m, h, d)"
                    ));
                }
            };
            let n: u64 = digits
                .parse()
                .map_err(|_| format!("invalid duration {s:?}"))?;
            digits.clear();
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| format!("invalid duration {s:?}: too large"))?;
        }
        if !digits.is_empty() || total == 0 {
            return Err(format!(
                "invalid duration {s:?} (examples: 30s, 15m, 1h30m, 7d)"
            ));
        }
        Ok(Duration::from_secs(total))
    }

    /// Serde adapter.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    file: String,
    message: String,
}

impl AgentConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let err = |message: String| ConfigError {
            file: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let cfg: AgentConfig =
            toml::from_str(&text).map_err(|e| err(e.to_string().trim().replace('\n', " ")))?;
        cfg.validate().map_err(err)?;
        Ok(cfg)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if !self.server.starts_with("https://") {
            return Err("server: must start with https://".into());
        }
        ca_wire::client::normalize_fingerprint(&self.root_fingerprint)
            .map_err(|e| format!("root_fingerprint: {e}"))?;
        if !(0.1..=0.9).contains(&self.renew_fraction) {
            return Err("renew_fraction: must be between 0.1 and 0.9".into());
        }
        if !(0.0..=0.3).contains(&self.jitter) {
            return Err("jitter: must be between 0 and 0.3".into());
        }
        if self.backoff_initial > self.backoff_max {
            return Err("backoff_initial: must not exceed backoff_max".into());
        }
        if self.certs.is_empty() {
            return Err("cert: configure at least one [[cert]]".into());
        }
        let mut names = std::collections::HashSet::new();
        let mut dirs = std::collections::HashSet::new();
        for (i, c) in self.certs.iter().enumerate() {
            let key = format!("cert[{i}] ({})", c.name);
            if c.name.is_empty()
                || !c
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!("{key}.name: letters, digits, - and _ only"));
            }
            if !names.insert(c.name.clone()) {
                return Err(format!("{key}.name: duplicate name"));
            }
            if !dirs.insert(c.dir.clone()) {
                return Err(format!(
                    "{key}.dir: two certificates share {}",
                    c.dir.display()
                ));
            }
            if !matches!(c.key_type.as_str(), "p256" | "p384" | "ed25519") {
                return Err(format!("{key}.key_type: p256, p384 or ed25519"));
            }
            if let Some(f) = c.renew_fraction
                && !(0.1..=0.9).contains(&f)
            {
                return Err(format!("{key}.renew_fraction: must be between 0.1 and 0.9"));
            }
            if c.key_mode & !0o777 != 0 || c.key_mode & 0o007 != 0 {
                return Err(format!(
                    "{key}.key_mode: {:o} gives other users access to the key",
                    c.key_mode
                ));
            }
            if let Some(t) = &c.ttl {
                human::parse(t).map_err(|e| format!("{key}.ttl: {e}"))?;
            }
            if !c.reload_command.is_empty() && c.reload_pid_file.is_some() {
                return Err(format!(
                    "{key}: choose reload_command or reload_pid_file, not both"
                ));
            }
        }
        Ok(())
    }

    /// The renewal fraction of `cert`.
    pub fn fraction_of(&self, cert: &CertConfig) -> f64 {
        cert.renew_fraction.unwrap_or(self.renew_fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(extra: &str) -> String {
        format!(
            "server = \"https://127.0.0.1:8443\"\nroot_fingerprint = \"{}\"\nstate_dir = \"/tmp/s\"\n{extra}\n[[cert]]\nname = \"api\"\nenv = \"dev\"\nservice = \"api\"\ndir = \"/tmp/api\"\n",
            "ab".repeat(32)
        )
    }

    fn check(text: &str) -> Result<AgentConfig, String> {
        let cfg: AgentConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[test]
    fn defaults_apply() {
        let c = check(&base("")).expect("valid");
        assert!((c.renew_fraction - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(c.certs[0].key_mode, 0o600);
        assert_eq!(c.backoff_max, Duration::from_secs(300));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (extra, key) in [
            ("renew_fraction = 0.99", "renew_fraction"),
            ("jitter = 0.9", "jitter"),
            (
                "backoff_initial = \"10m\"\nbackoff_max = \"1m\"",
                "backoff_initial",
            ),
            ("bundle_refresh = \"soon\"", "soon"),
            ("surprise = 1", "surprise"),
        ] {
            let e = check(&base(extra)).expect_err(extra);
            assert!(e.contains(key), "{extra}: {e}");
        }
        let e = check(&base("").replace("https://", "http://")).expect_err("http");
        assert!(e.contains("server"));
        let e = check(&base("").replace(&"ab".repeat(32), "abc")).expect_err("fp");
        assert!(e.contains("root_fingerprint"));
        let e = check(&format!("{}key_mode = 420\n", base(""))).expect_err("mode");
        assert!(e.contains("key_mode"), "{e}");
        let e = check(&format!(
            "{}\n[[cert]]\nname = \"api\"\nenv = \"dev\"\nservice = \"api\"\ndir = \"/tmp/b\"\n",
            base("")
        ))
        .expect_err("dup");
        assert!(e.contains("duplicate"), "{e}");
    }

    #[test]
    fn the_documented_example_is_valid() {
        let c = check(include_str!("../agent.example.toml")).expect("agent.example.toml is valid");
        assert_eq!(c.certs[0].reload_command, ["systemctl", "reload", "nginx"]);
        assert!(c.certs[0].crl);
    }

    #[test]
    fn human_durations() {
        assert_eq!(human::parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(human::parse("0s").is_err());
        assert!(human::parse("5").is_err());
        assert!(human::parse("1y").is_err());
    }
}
