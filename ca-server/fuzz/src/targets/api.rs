//! The enroll and renew bodies as the API takes them: `axum::Json` of `ca_wire::EnrollRequest`
//! and `RenewRequest` (axum's own decoder), the TTL parsing of the handlers, the token shape
//! check of the service, and `Ca::prepare` (CSR screening, the names to request, policy) on a
//! throwaway CA built at start-up. Only the store look-ups (token, presented certificate) are
//! left out.
//!
//! Property: a client body is refused with a 4xx problem, never a 5xx, whatever it holds.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Json;
use axum::http::StatusCode;
use ca_server::api::ApiError;
use ca_server::clock::SystemClock;
use ca_server::duration::HumanDuration;
use ca_server::pki::Identity;
use ca_server::policy::Policy;
use ca_server::service::{
    Ca, CaLifetimes, CaOptions, IssueInput, ServiceError, build_ca, parse_token,
};
use ca_server::store::{IssuedVia, SqliteStore, Store};
use ca_wire::{EnrollRequest, RenewRequest};
use rcgen::{CertificateParams, KeyPair};

use super::{Target, class, message_class};

pub struct ApiBodyTarget {
    ca: Ca,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

const EXAMPLE: &str = include_str!("../../../../policies/example.toml");

impl ApiBodyTarget {
    pub fn new() -> ApiBodyTarget {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = runtime.block_on(async {
            let policy = Policy::from_toml(EXAMPLE, "example.toml").expect("policy");
            let names = vec!["localhost".to_string()];
            let built = build_ca(
                &policy,
                "example.toml",
                None,
                CaLifetimes::default(),
                &names,
                false,
                time::OffsetDateTime::now_utc(),
                "fuzz",
            )
            .expect("build a throwaway CA");
            let store = SqliteStore::open(&dir.path().join("ca.db"), true)
                .await
                .expect("store");
            store.initialize(&built.new_ca).await.expect("initialize");
            Ca::open(
                Arc::new(store),
                Arc::new(SystemClock),
                policy,
                None,
                CaOptions::default(),
            )
            .await
            .expect("open the CA")
        });
        ApiBodyTarget {
            ca,
            _runtime: runtime,
            _dir: dir,
        }
    }

    /// The body's fields after axum decoded them, through what the handler and the service do
    /// before touching the store. Returns the outcome class.
    #[allow(clippy::too_many_arguments)]
    fn screen(
        &self,
        via: IssuedVia,
        token: Option<&str>,
        csr: &str,
        dns: &[String],
        ips: &[IpAddr],
        ttl: Option<&str>,
        env: Option<&str>,
        service: Option<&str>,
    ) -> String {
        let ttl = match ttl.map(|t| t.parse::<HumanDuration>()) {
            None => None,
            Some(Ok(d)) => {
                assert!(d.0.is_positive(), "a TTL that parses is positive");
                Some(d.0)
            }
            Some(Err(e)) => return format!("ttl:{}", class(&e.to_string())),
        };
        if let Some(t) = token {
            match parse_token(t) {
                Ok((id, secret)) => {
                    assert!(id.len() == 16 && secret.len() == 64);
                    assert!(format!("{id}.{secret}") == t.trim());
                }
                Err(e) => {
                    let api = ApiError::from(e);
                    assert_eq!(api.status(), StatusCode::UNAUTHORIZED);
                    return "token:malformed".into();
                }
            }
        }
        // The identity comes from the token or the presented certificate; a body naming one
        // must name that one, so the fuzzed names stand for it.
        let identity = Identity {
            env: env.unwrap_or("dev").to_string(),
            service: service.unwrap_or("api").to_string(),
        };
        let input = IssueInput {
            identity,
            dns: dns.to_vec(),
            ips: ips.to_vec(),
            ttl,
            csr: csr.as_bytes().to_vec(),
            via,
            actor: "fuzz".into(),
        };
        match self.ca.prepare(&input) {
            Ok(p) => {
                let d = &p.decision;
                if let Some(t) = ttl {
                    assert_eq!(d.ttl, t);
                }
                for n in &d.dns {
                    let asked = dns.iter().chain(p.csr.requested_dns.iter());
                    assert!(
                        asked.clone().any(|a| a.eq_ignore_ascii_case(n)),
                        "{n:?} was asked for by neither the body nor the CSR"
                    );
                }
                for ip in &d.ips {
                    assert!(ips.contains(ip) || p.csr.requested_ips.contains(ip));
                }
                format!("prepared:{}:{}", d.dns.len().min(2), d.ips.len().min(2))
            }
            Err(e) => {
                let what = service_error_class(&e);
                let api = ApiError::from(e);
                assert!(
                    api.status().is_client_error(),
                    "a client body was answered {}: {}",
                    api.status(),
                    api.detail()
                );
                format!("{}:{what}", api.slug())
            }
        }
    }
}

fn service_error_class(e: &ServiceError) -> String {
    match e {
        ServiceError::Policy(v) => {
            let mut parts: Vec<&str> = v.rule.split('.').collect();
            if parts.len() >= 3 {
                parts[1] = "*";
            }
            parts.join(".")
        }
        ServiceError::Csr(c) => class(&format!("{c:?}")).chars().take(24).collect(),
        other => class(&other.to_string()).chars().take(24).collect(),
    }
}

fn rejection_class(r: axum::extract::rejection::JsonRejection) -> String {
    let api = ApiError::from(r);
    assert!(
        api.status().is_client_error(),
        "JSON rejection answered {}",
        api.status()
    );
    format!("{}:{}", api.slug(), serde_message_class(api.detail()))
}

/// What serde said, without axum's preamble, the path to the field (which names fuzzed keys),
/// the position and the values: `Failed to ...: dns[0]: invalid type: string "x", expected a
/// string at line 1 column 9` is `invalid type: string "", expected a string`.
fn serde_message_class(detail: &str) -> String {
    const STARTS: &[&str] = &[
        "unknown field",
        "unknown variant",
        "invalid type",
        "invalid value",
        "invalid length",
        "invalid escape",
        "invalid unicode",
        "invalid number",
        "missing field",
        "duplicate field",
        "expected",
        "EOF",
        "trailing",
        "key must be",
        "control character",
        "lone leading surrogate",
        "number out of range",
        "recursion limit",
        "data did not match",
    ];
    let start = STARTS
        .iter()
        .filter_map(|s| detail.find(s))
        .min()
        .unwrap_or_else(|| detail.rfind(": ").map_or(0, |i| i + 2));
    message_class(&detail[start..])
}

impl Target for ApiBodyTarget {
    fn name(&self) -> &'static str {
        "api_body"
    }

    fn max_len(&self) -> usize {
        // The router's default body limit.
        ca_server::api::DEFAULT_MAX_BODY
    }

    fn run(&mut self, input: &[u8]) -> String {
        let enroll = match Json::<EnrollRequest>::from_bytes(input) {
            Ok(Json(req)) => {
                // The token's text, whatever type carries it, is what it serialises to.
                let token = serde_json::to_value(&req)
                    .ok()
                    .and_then(|v| v.get("token").and_then(|t| t.as_str()).map(str::to_string))
                    .unwrap_or_default();
                self.screen(
                    IssuedVia::Enroll,
                    Some(&token),
                    &req.csr,
                    &req.dns,
                    &req.ips,
                    req.ttl.as_deref(),
                    req.env.as_deref(),
                    req.service.as_deref(),
                )
            }
            Err(r) => rejection_class(r),
        };
        let renew = match Json::<RenewRequest>::from_bytes(input) {
            Ok(Json(req)) => self.screen(
                IssuedVia::Renew,
                None,
                &req.csr,
                &req.dns,
                &req.ips,
                req.ttl.as_deref(),
                req.env.as_deref(),
                req.service.as_deref(),
            ),
            Err(r) => rejection_class(r),
        };
        format!("enroll:{enroll}|renew:{renew}")
    }

    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let token = format!("{}.{}", "0123456789abcdef", "ab".repeat(32));
        let mut out = Vec::new();
        for (names, alg) in [
            (
                vec!["api.dev.svc.example.internal"],
                &rcgen::PKCS_ECDSA_P256_SHA256,
            ),
            (vec![], &rcgen::PKCS_ED25519),
            (
                vec!["web.dev.svc.example.internal", "10.0.0.1"],
                &rcgen::PKCS_ECDSA_P384_SHA384,
            ),
        ] {
            let key = KeyPair::generate_for(alg).expect("key");
            let params =
                CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .expect("params");
            let csr = params
                .serialize_request(&key)
                .expect("csr")
                .pem()
                .expect("pem");
            let bodies = [
                serde_json::json!({"token": token, "csr": csr}),
                serde_json::json!({"token": token, "csr": csr, "dns": ["api.dev.svc.example.internal"], "ttl": "1h"}),
                serde_json::json!({"token": token, "csr": csr, "dns": ["API.dev.svc.example.internal", "*.dev.svc.example.internal"], "ips": ["10.0.0.1", "::1"], "ttl": "30m", "env": "dev", "service": "api"}),
                serde_json::json!({"token": format!(" {token}\n"), "csr": csr, "env": "prod", "service": "ops", "ttl": "9h"}),
                serde_json::json!({"csr": csr}),
                serde_json::json!({"csr": csr, "dns": ["web.dev.svc.example.internal"], "ttl": "1000y", "env": "dev", "service": "web"}),
                serde_json::json!({"csr": csr, "ips": ["10.0.0.1"], "service": "api", "env": "staging"}),
            ];
            for b in bodies {
                out.push(serde_json::to_vec(&b).expect("json"));
            }
        }
        out.push(br#"{"csr": "", "token": "x.y", "extra": 1}"#.to_vec());
        out.push(br#"{"csr": 5}"#.to_vec());
        out.push(b"[]".to_vec());
        out
    }

    fn dictionary(&self) -> &'static [&'static [u8]] {
        DICTIONARY
    }
}

const DICTIONARY: &[&[u8]] = &[
    b"\"token\":",
    b"\"csr\":",
    b"\"dns\":",
    b"\"ips\":",
    b"\"ttl\":",
    b"\"env\":",
    b"\"service\":",
    b"null",
    b"true",
    b"[]",
    b"{}",
    b",",
    b"\"1h\"",
    b"\"0s\"",
    b"\"1001y\"",
    b"\"api.dev.svc.example.internal\"",
    b"\"*.dev.svc.example.internal\"",
    b"\"10.0.0.1\"",
    b"\"::1\"",
    b"\"0.0.0.0\"",
    b"\"prod\"",
    b"\"ops\"",
    b"\\u0000",
    b"\\ud800",
    b"\"0123456789abcdef.",
    b"1e999",
    b"-0",
];
