//! Tests that no type holding secret material shows it through `Debug`.

use ca_wire::EnrollmentToken;
use ca_wire::leak::assert_redacted;
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;

use crate::acme::Issued;
use crate::agent::new_key;
use crate::config::AgentConfig;
use crate::issue::IssueArgs;
use crate::writer::Material;

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
