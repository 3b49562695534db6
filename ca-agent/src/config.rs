//! The agent's configuration file (`agent.toml`): the private CA and its pinned root, the ACME
//! accounts, and the certificates to keep fresh. Unknown keys are refused and every value is
//! checked at start-up, with errors naming the key.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ca_wire::EnrollmentToken;
use serde::Deserialize;

/// A validated configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Base URL of the private CA server, `https://...` (absent: every certificate is ACME's).
    #[serde(default)]
    pub server: Option<String>,
    /// SHA-256 of the CA's root certificate (hex, any case, colons optional); goes with `server`.
    #[serde(default)]
    pub root_fingerprint: Option<String>,
    /// Where the agent keeps its state: the pinned root, status and pid file.
    pub state_dir: PathBuf,
    /// Enrollment token (prefer `--token-file` or `CA_AGENT_TOKEN`); `Debug` shows its id only.
    #[serde(default)]
    pub token: Option<EnrollmentToken>,
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
    /// ACME accounts by name (`[acme.NAME]`).
    #[serde(default)]
    pub acme: BTreeMap<String, AcmeAccountConfig>,
    /// The certificates to manage.
    #[serde(rename = "cert", default)]
    pub certs: Vec<CertConfig>,
}

/// Where a certificate is obtained, once decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The private CA.
    Private,
    /// An ACME CA.
    Acme,
}

/// Who issues a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IssuerChoice {
    /// The private CA (`server`).
    Private,
    /// An ACME CA (`acme_account`).
    Acme,
    /// Names under the private CA's DNS suffixes go to it, every other name to ACME.
    #[default]
    Auto,
}

/// How an ACME CA checks that we control a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum ChallengeKind {
    /// A file served over HTTP on port 80 (standalone responder or webroot).
    #[serde(rename = "http-01")]
    Http01,
    /// A TXT record at `_acme-challenge.<name>`, set by `dns_hook`.
    #[serde(rename = "dns-01")]
    Dns01,
}

impl std::fmt::Display for ChallengeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::Dns01 => "dns-01",
        })
    }
}

/// Let's Encrypt's production directory.
pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory.
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// One ACME account (`[acme.NAME]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeAccountConfig {
    /// Directory URL, or the preset `letsencrypt` or `letsencrypt-staging`.
    pub directory: String,
    /// Extra trusted root (PEM file) for the directory's HTTPS: a private or test ACME server.
    #[serde(default)]
    pub directory_root: Option<PathBuf>,
    /// Contact e-mail addresses (`mailto:` is added when missing).
    #[serde(default)]
    pub contact: Vec<String>,
    /// Agree to the CA's terms of service (required by CAs that publish terms).
    #[serde(default)]
    pub agree_tos: bool,
    /// External Account Binding key id, given by the CA.
    #[serde(default)]
    pub eab_kid: Option<String>,
    /// File holding the External Account Binding HMAC key (base64url, as CAs hand it out).
    #[serde(default)]
    pub eab_hmac_key_file: Option<PathBuf>,
    /// Roots (PEM file) that issued chains must verify to (default: the system's roots).
    #[serde(default)]
    pub trust_bundle: Option<PathBuf>,
    /// Or fetch those roots from this HTTPS URL on every order (a CA that serves its roots, such
    /// as a test CA whose root changes).
    #[serde(default)]
    pub trust_bundle_url: Option<String>,
    /// Bound on one whole attempt: order, challenges, finalize and download.
    #[serde(default = "default_acme_timeout", with = "human")]
    pub timeout: Duration,
}

impl AcmeAccountConfig {
    /// The directory URL, presets resolved.
    pub fn directory_url(&self) -> &str {
        match self.directory.as_str() {
            "letsencrypt" => LETSENCRYPT,
            "letsencrypt-staging" => LETSENCRYPT_STAGING,
            other => other,
        }
    }
}

/// One managed certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    /// Name, unique within the file (used by `renew --now NAME` and in status and metrics).
    pub name: String,
    /// Who issues it: `private`, `acme` or `auto` (by the names; the default).
    #[serde(default)]
    pub issuer: IssuerChoice,
    /// Environment (private certificates).
    #[serde(default)]
    pub env: String,
    /// Service (private certificates).
    #[serde(default)]
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
    /// Also keep the environment's CRL next to the certificate (crl.pem; private only).
    #[serde(default)]
    pub crl: bool,
    /// ACME account (a name under `[acme]`; default: the only one).
    #[serde(default)]
    pub acme_account: Option<String>,
    /// ACME challenge: `http-01` or `dns-01` (default: dns-01 when a name is a wildcard or
    /// `dns_hook` is set, else http-01).
    #[serde(default)]
    pub challenge: Option<ChallengeKind>,
    /// http-01 standalone responder address, started only while an order is pending.
    #[serde(default = "default_http_listen")]
    pub http_listen: String,
    /// http-01 through an existing web server: files go to `WEBROOT/.well-known/acme-challenge/`.
    #[serde(default)]
    pub webroot: Option<PathBuf>,
    /// dns-01 hook (argv, no shell), run with `present` or `cleanup` appended and
    /// ACME_DOMAIN, ACME_RECORD_NAME and ACME_RECORD_VALUE in its environment.
    #[serde(default)]
    pub dns_hook: Vec<String>,
    /// Time limit of one dns_hook run.
    #[serde(default = "default_dns_hook_timeout", with = "human")]
    pub dns_hook_timeout: Duration,
    /// Wait this long after `present` before asking the CA to validate (DNS propagation).
    #[serde(default, with = "human_opt")]
    pub dns_propagation: Option<Duration>,
    /// ACME certificate profile, where the CA offers profiles (e.g. `shortlived`).
    #[serde(default)]
    pub profile: Option<String>,
}

impl CertConfig {
    /// The challenge used for this certificate's ACME orders.
    pub fn challenge_kind(&self) -> ChallengeKind {
        self.challenge.unwrap_or(
            if !self.dns_hook.is_empty() || self.dns.iter().any(|d| d.starts_with("*.")) {
                ChallengeKind::Dns01
            } else {
                ChallengeKind::Http01
            },
        )
    }
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
fn default_acme_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_http_listen() -> String {
    "[::]:80".into()
}
fn default_dns_hook_timeout() -> Duration {
    Duration::from_secs(120)
}

/// Optional human durations.
pub mod human_opt {
    use std::time::Duration;

    /// Serde adapter.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        super::human::parse(&s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
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
        match (&self.server, &self.root_fingerprint) {
            (Some(server), Some(fp)) => {
                if !server.starts_with("https://") {
                    return Err("server: must start with https://".into());
                }
                ca_wire::client::normalize_fingerprint(fp)
                    .map_err(|e| format!("root_fingerprint: {e}"))?;
            }
            (Some(_), None) => {
                return Err(
                    "root_fingerprint: required with server (printed by `ca-server init`)".into(),
                );
            }
            (None, Some(_)) => return Err("server: required with root_fingerprint".into()),
            (None, None) => {}
        }
        for (name, a) in &self.acme {
            let key = format!("acme.{name}");
            let url = a.directory_url();
            if !url.starts_with("https://") {
                return Err(format!(
                    "{key}.directory: an https:// URL, `letsencrypt` or `letsencrypt-staging`"
                ));
            }
            if a.eab_kid.is_some() != a.eab_hmac_key_file.is_some() {
                return Err(format!("{key}: eab_kid and eab_hmac_key_file go together"));
            }
            if a.trust_bundle.is_some() && a.trust_bundle_url.is_some() {
                return Err(format!(
                    "{key}: choose trust_bundle or trust_bundle_url, not both"
                ));
            }
            if let Some(u) = &a.trust_bundle_url
                && !u.starts_with("https://")
            {
                return Err(format!("{key}.trust_bundle_url: must start with https://"));
            }
            for c in &a.contact {
                if c.is_empty() || c.contains(char::is_whitespace) || c.contains(',') {
                    return Err(format!("{key}.contact: {c:?} is not an address"));
                }
            }
        }
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
            self.validate_issuer(c, &key)?;
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

    /// Checks what can be checked of the issuer choice without asking the private CA.
    fn validate_issuer(&self, c: &CertConfig, key: &str) -> Result<(), String> {
        match (c.issuer, self.server.is_some()) {
            (IssuerChoice::Private, false) => Err(format!(
                "{key}.issuer: private needs `server` and `root_fingerprint`"
            )),
            (IssuerChoice::Private, true) => Self::validate_private(c, key),
            (IssuerChoice::Acme, _) | (IssuerChoice::Auto, false) => self.validate_acme(c, key),
            // Decided by the names once the private CA's DNS suffixes are known.
            (IssuerChoice::Auto, true) => Ok(()),
        }
    }

    fn validate_private(c: &CertConfig, key: &str) -> Result<(), String> {
        if c.env.is_empty() || c.service.is_empty() {
            return Err(format!(
                "{key}: env and service are required for the private CA"
            ));
        }
        Ok(())
    }

    /// Decides who issues `c`, given what the private CA says about its names (`info`, needed
    /// only for `auto` with a private CA configured). A certificate whose names only the
    /// private CA can certify mixed with public names is refused, naming both.
    pub fn route(&self, c: &CertConfig, info: Option<&ca_wire::CaInfo>) -> Result<Route, String> {
        let key = format!("cert {:?}", c.name);
        let private_names = |info: &ca_wire::CaInfo| -> (Vec<String>, Vec<String>) {
            let (p, q): (Vec<&String>, Vec<&String>) =
                c.dns.iter().partition(|d| info.is_private_name(d));
            let mut p: Vec<String> = p.into_iter().cloned().collect();
            p.extend(c.ips.iter().map(|ip| ip.to_string()));
            (p, q.into_iter().cloned().collect())
        };
        match (c.issuer, self.server.is_some()) {
            (IssuerChoice::Acme, _) | (IssuerChoice::Auto, false) => {
                self.validate_acme(c, &key)?;
                Ok(Route::Acme)
            }
            (IssuerChoice::Private, _) => {
                if let Some(info) = info {
                    let (_, public) = private_names(info);
                    if !public.is_empty() {
                        return Err(format!(
                            "{key}: issuer = \"private\" but {} outside the private CA's DNS suffixes",
                            public.join(", ")
                        ));
                    }
                }
                Self::validate_private(c, &key)?;
                Ok(Route::Private)
            }
            (IssuerChoice::Auto, true) => {
                let info = info.ok_or_else(|| {
                    format!("{key}: undecided until the private CA's DNS suffixes are known")
                })?;
                let (private, public) = private_names(info);
                match (private.is_empty(), public.is_empty()) {
                    (false, false) => Err(format!(
                        "{key} mixes names only the private CA can certify ({}) with public names ({}); split it into two [[cert]]",
                        private.join(", "),
                        public.join(", ")
                    )),
                    (_, true) => {
                        Self::validate_private(c, &key)?;
                        Ok(Route::Private)
                    }
                    (true, false) => {
                        self.validate_acme(c, &key)?;
                        Ok(Route::Acme)
                    }
                }
            }
        }
    }

    /// Checks an ACME certificate's names, account and challenge.
    pub fn validate_acme(&self, c: &CertConfig, key: &str) -> Result<(), String> {
        if c.dns.is_empty() {
            return Err(format!("{key}.dns: an ACME certificate needs DNS names"));
        }
        if !c.ips.is_empty() {
            return Err(format!(
                "{key}.ips: IP addresses are not ordered from ACME; use the private CA"
            ));
        }
        if c.key_type == "ed25519" {
            return Err(format!(
                "{key}.key_type: ACME CAs take p256 or p384 keys, not ed25519"
            ));
        }
        if c.crl {
            return Err(format!("{key}.crl: only for private certificates"));
        }
        if c.ttl.is_some() {
            return Err(format!(
                "{key}.ttl: the ACME CA decides the lifetime (see `profile`)"
            ));
        }
        self.acme_account_of(c)
            .map_err(|e| format!("{key}.acme_account: {e}"))?;
        let challenge = c.challenge_kind();
        if challenge == ChallengeKind::Http01 {
            let wild: Vec<&str> = c
                .dns
                .iter()
                .filter(|d| d.starts_with("*."))
                .map(String::as_str)
                .collect();
            if !wild.is_empty() {
                return Err(format!(
                    "{key}.challenge: wildcard names ({}) can only be validated with dns-01",
                    wild.join(", ")
                ));
            }
            if !c.dns_hook.is_empty() {
                return Err(format!(
                    "{key}.dns_hook: only used with challenge = \"dns-01\""
                ));
            }
            if c.webroot.is_none() {
                c.http_listen.parse::<std::net::SocketAddr>().map_err(|_| {
                    format!(
                        "{key}.http_listen: {:?} is not an address (e.g. \"[::]:80\")",
                        c.http_listen
                    )
                })?;
            }
        } else {
            if c.dns_hook.is_empty() {
                return Err(format!(
                    "{key}.dns_hook: dns-01 needs a hook command that sets the TXT record"
                ));
            }
            if c.webroot.is_some() {
                return Err(format!("{key}.webroot: only used with http-01"));
            }
        }
        for d in &c.dns {
            let bare = d.strip_prefix("*.").unwrap_or(d);
            if bare.is_empty()
                || bare.contains('*')
                || !bare.contains('.')
                || !bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return Err(format!("{key}.dns: {d:?} is not a public DNS name"));
            }
        }
        Ok(())
    }

    /// The ACME account `c` uses: its `acme_account`, or the only account configured.
    pub fn acme_account_of(&self, c: &CertConfig) -> Result<(&str, &AcmeAccountConfig), String> {
        match &c.acme_account {
            Some(name) => self
                .acme
                .get_key_value(name)
                .map(|(k, v)| (k.as_str(), v))
                .ok_or_else(|| format!("no [acme.{name}] account is configured")),
            None if self.acme.len() == 1 => self
                .acme
                .iter()
                .next()
                .map(|(k, v)| (k.as_str(), v))
                .ok_or_else(|| "no [acme] account is configured".to_string()),
            None if self.acme.is_empty() => Err("no [acme] account is configured".into()),
            None => Err(format!(
                "several ACME accounts are configured ({}); name one",
                self.acme.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
        }
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
        assert_eq!(c.route(&c.certs[1], None), Ok(Route::Acme));
        let info = ca_wire::CaInfo {
            trust_domain: "example.internal".into(),
            environments: BTreeMap::from([(
                "prod".to_string(),
                ca_wire::EnvironmentInfo {
                    dns_suffixes: vec!["prod.svc.example.internal".into()],
                },
            )]),
        };
        assert_eq!(c.route(&c.certs[0], Some(&info)), Ok(Route::Private));
        assert_eq!(c.route(&c.certs[2], Some(&info)), Ok(Route::Acme));
        assert_eq!(c.certs[2].challenge_kind(), ChallengeKind::Dns01);
    }

    fn acme_only(cert: &str) -> String {
        format!(
            "state_dir = \"/tmp/s\"\n[acme.le]\ndirectory = \"letsencrypt-staging\"\nagree_tos = true\n[[cert]]\nname = \"www\"\ndir = \"/tmp/www\"\n{cert}\n"
        )
    }

    #[test]
    fn acme_certificates_are_checked_when_loaded() {
        let c = check(&acme_only("dns = [\"www.example.com\"]")).expect("valid");
        assert_eq!(c.route(&c.certs[0], None), Ok(Route::Acme));
        assert_eq!(c.certs[0].challenge_kind(), ChallengeKind::Http01);
        assert_eq!(c.acme["le"].directory_url(), LETSENCRYPT_STAGING);
        let c = check(&acme_only(
            "dns = [\"*.example.com\"]\ndns_hook = [\"/usr/local/bin/dns\"]",
        ))
        .expect("wildcard through dns-01");
        assert_eq!(c.certs[0].challenge_kind(), ChallengeKind::Dns01);
        for (cert, needle) in [
            (
                "dns = [\"*.example.com\"]\nchallenge = \"http-01\"",
                "only be validated with dns-01",
            ),
            ("dns = [\"*.example.com\"]", "dns-01 needs a hook"),
            ("dns = []", "needs DNS names"),
            (
                "dns = [\"a.example.com\"]\nips = [\"192.0.2.1\"]",
                "IP addresses",
            ),
            (
                "dns = [\"a.example.com\"]\nkey_type = \"ed25519\"",
                "ed25519",
            ),
            (
                "dns = [\"a.example.com\"]\nhttp_listen = \"eighty\"",
                "http_listen",
            ),
            (
                "dns = [\"a.example.com\"]\nacme_account = \"zerossl\"",
                "no [acme.zerossl]",
            ),
            (
                "dns = [\"a.example.com\"]\nissuer = \"private\"",
                "private needs `server`",
            ),
            ("dns = [\"a b.example.com\"]", "not a public DNS name"),
            ("dns = [\"a.example.com\"]\nttl = \"1h\"", "ttl"),
        ] {
            let e = check(&acme_only(cert)).expect_err(cert);
            assert!(e.contains(needle), "{cert}: {e}");
        }
        let e = check(
            &acme_only("dns = [\"a.example.com\"]").replace("agree_tos = true", "eab_kid = \"k\""),
        )
        .expect_err("eab");
        assert!(
            e.contains("eab_kid and eab_hmac_key_file go together"),
            "{e}"
        );
        let e = check(
            &acme_only("dns = [\"a.example.com\"]")
                .replace("letsencrypt-staging", "http://acme.test/dir"),
        )
        .expect_err("http");
        assert!(e.contains("acme.le.directory"), "{e}");
    }

    #[test]
    fn auto_routes_by_the_private_suffixes_and_refuses_a_mix() {
        let text = format!("{}\n[acme.le]\ndirectory = \"letsencrypt\"\n", base("")).replace(
            "service = \"api\"\n",
            "service = \"api\"\ndns = [\"api.dev.svc.example.internal\", \"www.example.com\"]\n",
        );
        let cfg = check(&text).expect("undecided until the suffixes are known");
        let info = ca_wire::CaInfo {
            trust_domain: "example.internal".into(),
            environments: BTreeMap::from([(
                "dev".to_string(),
                ca_wire::EnvironmentInfo {
                    dns_suffixes: vec!["dev.svc.example.internal".into()],
                },
            )]),
        };
        let e = cfg.route(&cfg.certs[0], Some(&info)).expect_err("mixed");
        assert!(
            e.contains("(api.dev.svc.example.internal)") && e.contains("(www.example.com)"),
            "{e}"
        );
        assert!(
            cfg.route(&cfg.certs[0], None).is_err(),
            "undecided without the suffixes"
        );
        let mut private = cfg.clone();
        private.certs[0].dns.retain(|d| d.ends_with(".internal"));
        assert_eq!(
            private.route(&private.certs[0], Some(&info)),
            Ok(Route::Private)
        );
        let mut public = cfg.clone();
        public.certs[0].dns.retain(|d| d.ends_with(".com"));
        assert_eq!(public.route(&public.certs[0], Some(&info)), Ok(Route::Acme));
        public.certs[0].issuer = IssuerChoice::Private;
        let e = public
            .route(&public.certs[0], Some(&info))
            .expect_err("public name, private CA");
        assert!(e.contains("www.example.com outside"), "{e}");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human::parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(human::parse("0s").is_err());
        assert!(human::parse("5").is_err());
        assert!(human::parse("1y").is_err());
    }
}
