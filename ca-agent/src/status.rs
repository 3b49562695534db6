//! What the agent knows about each certificate, shared by the renewal tasks, the status file
//! (`ca-agent status` reads it) and the metrics listener.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Health of one managed certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No certificate yet; enrolling.
    Pending,
    /// A valid certificate is in place.
    Ok,
    /// The certificate was revoked; waiting for a token to re-enroll.
    Revoked,
    /// No valid certificate, and the agent cannot get one right now.
    Unhealthy,
}

/// Status of one managed certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertStatus {
    /// Configured name.
    pub name: String,
    /// Environment (private certificates).
    pub env: String,
    /// Service (private certificates).
    pub service: String,
    /// Who issues it: `private` or `acme:<account>`.
    #[serde(default)]
    pub issuer: String,
    /// Issuer name of the current certificate.
    #[serde(default)]
    pub issued_by: Option<String>,
    /// SPIFFE ID of the current certificate.
    pub spiffe_id: Option<String>,
    /// Serial of the current certificate.
    pub serial: Option<String>,
    /// Unix seconds.
    pub not_after: Option<i64>,
    /// Unix seconds of the next planned renewal or retry.
    pub next_attempt: Option<i64>,
    /// Unix seconds of the last successful enrollment or renewal.
    pub last_success: Option<i64>,
    /// The last error, cleared on success.
    pub last_error: Option<String>,
    /// Problems of the reload hook or the post-reload check (the certificate itself is fine).
    pub reload_warning: Option<String>,
    /// Successful renewals and enrollments.
    pub renewals: u64,
    /// Failed attempts.
    pub failures: u64,
    /// Health.
    pub health: Health,
}

impl CertStatus {
    /// A fresh entry.
    pub fn new(name: &str, env: &str, service: &str) -> CertStatus {
        CertStatus {
            name: name.into(),
            env: env.into(),
            service: service.into(),
            issuer: String::new(),
            issued_by: None,
            spiffe_id: None,
            serial: None,
            not_after: None,
            next_attempt: None,
            last_success: None,
            last_error: None,
            reload_warning: None,
            renewals: 0,
            failures: 0,
            health: Health::Pending,
        }
    }
}

/// The whole status file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusFile {
    /// Agent process id.
    pub pid: u32,
    /// Unix seconds of the last write.
    pub updated_at: i64,
    /// Per certificate, by name.
    pub certs: BTreeMap<String, CertStatus>,
}

/// The live board, written through to `path` on every change.
#[derive(Debug)]
pub struct Board {
    path: PathBuf,
    inner: Mutex<StatusFile>,
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Board {
    /// A board persisted at `path`.
    pub fn new(path: PathBuf, entries: Vec<CertStatus>) -> Board {
        let certs = entries.into_iter().map(|c| (c.name.clone(), c)).collect();
        Board {
            path,
            inner: Mutex::new(StatusFile {
                pid: std::process::id(),
                updated_at: now(),
                certs,
            }),
        }
    }

    /// Writes the board as it is (a new process replaces what an earlier one left).
    pub fn persist(&self) {
        self.update("", |_| {});
    }

    /// Applies `f` to the entry `name` and persists the board.
    pub fn update(&self, name: &str, f: impl FnOnce(&mut CertStatus)) {
        let snapshot = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = inner.certs.get_mut(name) {
                f(c);
            }
            inner.updated_at = now();
            inner.clone()
        };
        match serde_json::to_vec_pretty(&snapshot) {
            Ok(bytes) => {
                if let Err(e) = crate::writer::replace_file(&self.path, &bytes, 0o644) {
                    tracing::warn!(error = %e, path = %self.path.display(), "cannot write the status file");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the status"),
        }
    }

    /// A copy of the current status.
    pub fn snapshot(&self) -> StatusFile {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A label value in the Prometheus text format: backslash, double quote and line feed escaped.
/// Names, environments, services and ACME account names come from the configuration, which
/// does not restrict their characters; unescaped, one quote or newline breaks the whole page.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Prometheus text for `status`.
pub fn render_metrics(status: &StatusFile) -> String {
    let mut out = String::new();
    let mut family =
        |name: &str, kind: &str, help: &str, value: &dyn Fn(&CertStatus) -> Option<f64>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for c in status.certs.values() {
                if let Some(v) = value(c) {
                    out.push_str(&format!(
                        "{name}{{name=\"{}\",env=\"{}\",service=\"{}\",issuer=\"{}\"}} {v}\n",
                        label(&c.name),
                        label(&c.env),
                        label(&c.service),
                        label(&c.issuer)
                    ));
                }
            }
        };
    family(
        "ca_agent_certificate_expiry_timestamp_seconds",
        "gauge",
        "notAfter of the current certificate.",
        &|c| c.not_after.map(|v| v as f64),
    );
    family(
        "ca_agent_renewals_total",
        "counter",
        "Successful enrollments and renewals.",
        &|c| Some(c.renewals as f64),
    );
    family(
        "ca_agent_failures_total",
        "counter",
        "Failed enrollment or renewal attempts.",
        &|c| Some(c.failures as f64),
    );
    family(
        "ca_agent_last_success_timestamp_seconds",
        "gauge",
        "Time of the last success.",
        &|c| c.last_success.map(|v| v as f64),
    );
    family(
        "ca_agent_healthy",
        "gauge",
        "1 when a valid certificate is in place.",
        &|c| Some(if c.health == Health::Ok { 1.0 } else { 0.0 }),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn board_persists_and_renders() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("status.json");
        let board = Board::new(path.clone(), vec![CertStatus::new("api", "dev", "api")]);
        board.update("api", |c| {
            c.issuer = "private".into();
            c.health = Health::Ok;
            c.not_after = Some(1_700_000_000);
            c.renewals = 3;
        });
        let read: StatusFile =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(read.certs["api"].renewals, 3);
        let text = render_metrics(&read);
        assert!(
            text.contains("ca_agent_renewals_total{name=\"api\",env=\"dev\",service=\"api\",issuer=\"private\"} 3"),
            "{text}"
        );
        assert!(
            text.contains(
                "ca_agent_healthy{name=\"api\",env=\"dev\",service=\"api\",issuer=\"private\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("ca_agent_certificate_expiry_timestamp_seconds{name=\"api\",env=\"dev\",service=\"api\",issuer=\"private\"} 1700000000"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut c = CertStatus::new("a\npi", "d\"ev", "s\\vc");
        c.issuer = "acme:x\"} 1\nfake 2".into();
        let st = StatusFile {
            pid: 1,
            updated_at: 0,
            certs: BTreeMap::from([("api".to_string(), c)]),
        };
        let text = render_metrics(&st);
        assert!(
            text.contains(
                "ca_agent_renewals_total{name=\"a\\npi\",env=\"d\\\"ev\",service=\"s\\\\vc\",issuer=\"acme:x\\\"} 1\\nfake 2\"} 0\n"
            ),
            "{text}"
        );
        assert!(
            text.lines()
                .all(|l| l.starts_with("# ") || l.starts_with("ca_agent_")),
            "{text}"
        );
    }
}
