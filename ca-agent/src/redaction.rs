//! Tests that no type holding secret material shows it through `Debug`.

use std::fmt::Debug;

use ca_wire::EnrollmentToken;
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;

use crate::acme::Issued;
use crate::agent::new_key;
use crate::config::AgentConfig;
use crate::issue::IssueArgs;
use crate::writer::Material;

/// The first text form of `secret` found in `rendered` (whitespace ignored, so `{:#?}` layouts
/// count): 12-byte windows of the bytes as text, as hex in either case and as a `[1, 2, ...]`
/// byte list, and aligned 12-byte windows in standard or URL-safe base64, so that a partial
/// print is caught too.
fn leaked_form(rendered: &str, secret: &[u8]) -> Option<String> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let flat: String = rendered.chars().filter(|c| !c.is_whitespace()).collect();
    let mut forms: Vec<String> = Vec::new();
    for w in secret.windows(secret.len().clamp(1, 12)) {
        if let Ok(text) = std::str::from_utf8(w) {
            forms.push(text.chars().filter(|c| !c.is_whitespace()).collect());
        }
        let hex: String = w.iter().map(|b| format!("{b:02x}")).collect();
        forms.push(hex.to_uppercase());
        forms.push(hex);
        forms.push(w.iter().map(u8::to_string).collect::<Vec<_>>().join(","));
    }
    for start in (0..secret.len()).step_by(3) {
        let w = &secret[start..secret.len().min(start + 12)];
        forms.push(STANDARD_NO_PAD.encode(w));
        forms.push(URL_SAFE_NO_PAD.encode(w));
    }
    forms
        .into_iter()
        .find(|f| f.len() >= 12.min(secret.len()) && flat.contains(f.as_str()))
}

/// Fails when `{:?}` or `{:#?}` of `value` shows any form of `secret`.
fn assert_redacted<T: Debug + ?Sized>(what: &str, value: &T, secret: &[u8]) {
    for rendered in [format!("{value:?}"), format!("{value:#?}")] {
        if let Some(form) = leaked_form(&rendered, secret) {
            panic!("Debug of {what} shows its secret ({form}): {rendered}");
        }
    }
}

#[test]
fn the_leak_check_sees_every_form() {
    use base64::Engine;
    let secret = b"0123456789-SECRET-BYTES";
    for shown in [
        format!("{:?}", String::from_utf8_lossy(secret)),
        format!("{:#?}", secret.to_vec()),
        format!("{:?}", &secret[3..15]),
        base64::engine::general_purpose::STANDARD.encode(secret),
        base64::engine::general_purpose::URL_SAFE.encode(&secret[6..]),
    ] {
        assert!(leaked_form(&shown, secret).is_some(), "{shown}");
    }
    assert!(leaked_form("KeyAndCsr { key_pem: \"<redacted>\" }", secret).is_none());
}

/// Every type of this crate that holds secret material; add new ones here:
/// - `config::AgentConfig`: the enrollment token of `token =`;
/// - `issue::IssueArgs`: the enrollment token of `ca-agent issue` (the binary's `IssueCmd` holds
///   the same `EnrollmentToken`);
/// - `agent::KeyAndCsr`, `acme::Issued`: a freshly generated private key;
/// - `writer::Material`: the private key being published.
///
/// Without `Debug` at all, so printing them does not compile: `agent::Agent` (its configuration
/// and clients), `agent::Current` (the current key), the ACME account file's `StoredAccount`
/// (the account key).
#[test]
fn secret_holding_types_never_print_their_secrets() {
    let id = "0123456789abcdef";
    let secret = "feedfacecafebeef".repeat(4);
    let token = format!("{id}.{secret}");

    let cfg: AgentConfig = toml::from_str(&format!(
        "state_dir = \"/tmp/s\"\ntoken = \"{token}\"\n[acme.le]\ndirectory = \"letsencrypt\"\n"
    ))
    .expect("config");
    assert_redacted("AgentConfig", &cfg, secret.as_bytes());
    assert!(format!("{cfg:?}").contains(id), "the token id is shown");

    let args = IssueArgs {
        server: "https://127.0.0.1:8443".into(),
        root_fingerprint: "ab".repeat(32),
        token: EnrollmentToken::new(token.clone()),
        env: "dev".into(),
        service: "api".into(),
        dns: vec!["api.dev.svc.example.internal".into()],
        ips: Vec::new(),
        ttl: None,
        key_type: "p256".into(),
        out: "/tmp/out".into(),
    };
    assert_redacted("IssueArgs", &args, secret.as_bytes());

    let key = new_key("p256", "api").expect("key");
    let der = PrivatePkcs8KeyDer::from_pem_slice(key.key_pem.as_bytes()).expect("PKCS#8 PEM");
    let pkcs8 = der.secret_pkcs8_der();
    // The private scalar; the rest of the PKCS#8 is structure and the public key (in the CSR).
    let at = pkcs8
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .expect("an ECPrivateKey")
        + 5;
    let scalar = &pkcs8[at..at + 32];
    for secret in [scalar, key.key_pem.as_bytes()] {
        assert_redacted("KeyAndCsr", &key, secret);
        let issued = Issued {
            key_pem: key.key_pem.clone(),
            chain_pem: "-----BEGIN CERTIFICATE-----".into(),
        };
        assert_redacted("acme::Issued", &issued, secret);
        let material = Material {
            key_pem: &key.key_pem,
            cert_pem: "cert",
            chain_pem: "chain",
            serial: "01",
        };
        assert_redacted("Material", &material, secret);
    }
}
