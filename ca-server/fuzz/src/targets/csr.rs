//! `ca_server::csr::validate_csr`: PEM or DER, key screening, signature, extension requests.
//!
//! A mutated CSR almost never keeps a valid signature, which would leave everything after the
//! signature check unexplored. So an input that is a bare `CertificationRequestInfo` (a SEQUENCE
//! starting with the version INTEGER) is signed here, with a key of the same type generated at
//! run time, before it is screened: mutations of the request body then reach the extension and
//! name handling.

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ca_server::csr::{CsrError, MAX_CSR_BYTES, validate_csr};
use ca_server::pki::{Identity, KeyType, key_type_of};
use ca_server::policy::{IssueRequest, Policy};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, IsCa, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType, SigningKey,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::{Target, class};
use crate::der;
use crate::rng::Rng;

const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE REQUEST-----";
const PEM_END: &str = "-----END CERTIFICATE REQUEST-----";

/// A key to sign fuzzed request bodies with, and the AlgorithmIdentifier of its signatures.
struct Signer {
    key: KeyPair,
    alg_id: Vec<u8>,
    curve_oid: &'static [u8],
}

pub struct CsrTarget {
    signers: Vec<Signer>,
    policy: Policy,
    key_types_known: HashSet<KeyType>,
}

const P256_OID: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_OID: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const ED25519_OID: &[u8] = &[0x2b, 0x65, 0x70];

impl CsrTarget {
    pub fn new() -> CsrTarget {
        let signers = [
            (&rcgen::PKCS_ECDSA_P256_SHA256, P256_OID),
            (&rcgen::PKCS_ECDSA_P384_SHA384, P384_OID),
            (&rcgen::PKCS_ED25519, ED25519_OID),
        ]
        .into_iter()
        .map(|(alg, curve_oid)| {
            let key = KeyPair::generate_for(alg).expect("key generation");
            // The signature AlgorithmIdentifier is the second element of a CSR rcgen makes.
            let csr = csr_der(&CertificateParams::default(), &key);
            let top = der::walk(&csr, 8);
            let outer = top.first().expect("csr parses");
            let kids = der::children(&csr, outer);
            let alg_id = csr[kids[1].start..kids[1].end()].to_vec();
            Signer {
                key,
                alg_id,
                curve_oid,
            }
        })
        .collect();
        CsrTarget {
            signers,
            policy: super::policy::example_policy(),
            key_types_known: HashSet::new(),
        }
    }

    /// Signs a bare request body with the run-time key whose algorithm its SPKI names
    /// (substituting that key's SPKI unless the input's last byte says to keep its own).
    fn sign_body(&self, body: &[u8]) -> Vec<u8> {
        let all = der::walk(body, 64);
        let spki = all
            .first()
            .map(|outer| der::children(body, outer))
            .and_then(|kids| kids.get(2).copied());
        let signer = spki
            .map(|s| &body[s.start..s.end()])
            .and_then(|s| self.signers.iter().find(|k| contains(s, k.curve_oid)))
            .unwrap_or(&self.signers[0]);
        let keep_own_key = body.last().is_some_and(|b| b % 8 == 7);
        let tbs = match (spki, all.first()) {
            (Some(s), Some(outer)) if !keep_own_key => {
                let mut c = body[outer.content_start()..s.start].to_vec();
                c.extend_from_slice(&signer.key.subject_public_key_info());
                c.extend_from_slice(&body[s.end()..outer.end()]);
                let mut t = der::tlv(outer.tag, &c);
                t.extend_from_slice(&body[outer.end()..]);
                t
            }
            _ => body.to_vec(),
        };
        let sig = signer.key.sign(&tbs).expect("signing");
        let mut bits = vec![0u8];
        bits.extend(sig);
        let mut content = tbs;
        content.extend_from_slice(&signer.alg_id);
        content.extend(der::tlv(0x03, &bits));
        der::tlv(0x30, &content)
    }

    fn check_ok(&mut self, der_input: Option<&[u8]>, v: &ca_server::csr::ValidatedCsr) {
        // The key type is one the policy language can name and allows by default.
        if self.key_types_known.insert(v.key_type) {
            let text = format!(
                "{}\n[services.api]\nenvironments = [\"dev\"]\nkey_types = [\"{}\"]\n",
                POLICY_HEAD,
                v.key_type.as_str()
            );
            let p = Policy::from_toml(&text, "key-types.toml")
                .unwrap_or_else(|e| panic!("policy cannot name key type {}: {e}", v.key_type));
            assert_eq!(p.services["api"].key_types, [v.key_type]);
            let all = Policy::from_toml(
                &format!("{POLICY_HEAD}\n[services.api]\nenvironments = [\"dev\"]\n"),
                "default.toml",
            )
            .expect("default policy");
            assert!(
                all.services["api"].key_types.contains(&v.key_type),
                "key type {} accepted by validate_csr but not allowed by default",
                v.key_type
            );
        }
        // The SPKI handed to the signer is the CSR's own, and classifies the same way again.
        let (rest, spki) = SubjectPublicKeyInfo::from_der(&v.spki_der).expect("SPKI re-parses");
        assert!(rest.is_empty(), "SPKI with trailing bytes");
        assert_eq!(key_type_of(&spki), Ok(v.key_type));
        if let Some(d) = der_input {
            assert!(
                d.windows(v.spki_der.len()).any(|w| w == v.spki_der),
                "the SPKI is not the request's own"
            );
        }
        // Requested names go to policy as they are: it must decide them without panicking.
        let identity = Identity {
            env: "dev".into(),
            service: "api".into(),
        };
        let _ = self.policy.decide(&IssueRequest {
            identity: &identity,
            dns: &v.requested_dns,
            ips: &v.requested_ips,
            ttl: None,
            key_type: v.key_type,
        });
    }
}

const POLICY_HEAD: &str = "trust_domain = \"example.internal\"\n[environments.dev]\ndns_suffixes = [\"dev.svc.example.internal\"]\ndefault_ttl = \"1h\"\nmax_ttl = \"2h\"";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether `input` is a bare CertificationRequestInfo: SEQUENCE { INTEGER, ... }.
fn is_request_body(input: &[u8]) -> bool {
    input.first() == Some(&0x30)
        && der::walk(input, 2)
            .get(1)
            .is_some_and(|t| t.tag == 0x02 && t.start > 0)
}

fn pem(der: &[u8]) -> Vec<u8> {
    ca_server::authority::pem_encode("CERTIFICATE REQUEST", der).into_bytes()
}

fn csr_der(params: &CertificateParams, key: &KeyPair) -> Vec<u8> {
    params.serialize_request(key).expect("csr").der().to_vec()
}

fn outcome(r: &Result<ca_server::csr::ValidatedCsr, CsrError>) -> String {
    match r {
        Ok(v) => format!(
            "ok:{}:{}:{}",
            v.key_type,
            v.requested_dns.len().min(3),
            v.requested_ips.len().min(3)
        ),
        Err(CsrError::Malformed(m)) => format!("malformed:{}", class(m)),
        Err(CsrError::Key(k)) => format!("key:{}", class(&k.to_string())),
        Err(e) => class(&format!("{e:?}")),
    }
}

impl Target for CsrTarget {
    fn name(&self) -> &'static str {
        "csr"
    }

    fn max_len(&self) -> usize {
        MAX_CSR_BYTES + 64
    }

    fn run(&mut self, input: &[u8]) -> String {
        let (csr, signed) = if is_request_body(input) {
            let d = self.sign_body(input);
            // Half of the signed bodies go in as PEM, half as DER.
            if input.len().is_multiple_of(2) {
                (pem(&d), Some(d))
            } else {
                (d.clone(), Some(d))
            }
        } else {
            (input.to_vec(), None)
        };
        let r = validate_csr(&csr);
        let was_signed = signed.is_some();
        let der_form = signed.or_else(|| (csr.first() == Some(&0x30)).then(|| csr.clone()));
        if let Ok(v) = &r {
            self.check_ok(der_form.as_deref(), v);
            // PEM and DER of the same request are screened alike.
            if let Some(d) = &der_form {
                let other = if csr.first() == Some(&0x30) {
                    pem(d)
                } else {
                    d.clone()
                };
                if other.len() <= MAX_CSR_BYTES {
                    assert_eq!(validate_csr(&other).as_ref(), Ok(v), "PEM and DER disagree");
                }
            }
        }
        let prefix = if was_signed { "signed:" } else { "" };
        format!("{prefix}{}", outcome(&r))
    }

    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let add_both = |der: Vec<u8>, out: &mut Vec<Vec<u8>>| {
            out.push(pem(&der));
            // The request body alone: this target signs it at run time.
            if let Some(outer) = der::walk(&der, 2).first().copied()
                && let Some(body) = der::children(&der, &outer).first()
            {
                out.push(der[body.start..body.end()].to_vec());
            }
            out.push(der);
        };
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let key = KeyPair::generate_for(alg).expect("key");
            for params in seed_params() {
                add_both(csr_der(&params, &key), &mut out);
            }
        }
        out.extend(openssl_csrs());
        out.push(b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n".to_vec());
        out.push(format!("{PEM_BEGIN}\n{PEM_END}\n").into_bytes());
        out
    }

    fn dictionary(&self) -> &'static [&'static [u8]] {
        DICTIONARY
    }

    fn mutate(&self, input: &mut Vec<u8>, rng: &mut Rng) -> bool {
        // DER inside PEM: decode, mutate the structure, encode again.
        let Ok(text) = std::str::from_utf8(input) else {
            return false;
        };
        let Some(body) = text
            .split_once(PEM_BEGIN)
            .and_then(|(_, rest)| rest.split_once(PEM_END))
            .map(|(b, _)| b.split_whitespace().collect::<String>())
        else {
            return false;
        };
        let Ok(mut d) = STANDARD.decode(body) else {
            return false;
        };
        if !crate::mutate::der_mutate(&mut d, rng) {
            return false;
        }
        *input = pem(&d);
        true
    }
}

fn seed_params() -> Vec<CertificateParams> {
    let names = |n: &[&str]| {
        CertificateParams::new(n.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params")
    };
    let mut out = vec![
        CertificateParams::default(),
        names(&["api.dev.svc.example.internal", "10.1.2.3", "::1"]),
        names(&["*.dev.svc.example.internal", "API.DEV.svc.example.internal"]),
    ];
    let mut ca = names(&["ca.dev.svc.example.internal"]);
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    out.push(ca);
    let mut not_ca = names(&["api.dev.svc.example.internal"]);
    not_ca.is_ca = IsCa::ExplicitNoCa;
    not_ca.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    out.push(not_ca);
    let mut other = CertificateParams::default();
    other.subject_alt_names = vec![
        SanType::Rfc822Name("ops@example.internal".try_into().expect("ia5")),
        SanType::URI("spiffe://example.internal/dev/api".try_into().expect("ia5")),
        SanType::DnsName("web.dev.svc.example.internal".try_into().expect("ia5")),
    ];
    out.push(other);
    let mut custom = names(&["api.dev.svc.example.internal"]);
    custom
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 99999, 1],
            vec![0x05, 0x00],
        ));
    out.push(custom);
    out
}

/// CSRs with keys rcgen cannot make (RSA, weak RSA, P-521, Ed448), when openssl is installed.
fn openssl_csrs() -> Vec<Vec<u8>> {
    let Ok(dir) = tempfile::tempdir() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, newkey) in ["rsa:2048", "rsa:1024", "ec", "ed448"].iter().enumerate() {
        let path = dir.path().join(format!("{i}.der"));
        let mut cmd = std::process::Command::new("openssl");
        cmd.args([
            "req", "-new", "-nodes", "-subj", "/CN=api", "-outform", "DER",
        ])
        .arg("-keyout")
        .arg(dir.path().join(format!("{i}.key")))
        .arg("-out")
        .arg(&path)
        .args(["-newkey", newkey]);
        if *newkey == "ec" {
            cmd.args(["-pkeyopt", "ec_paramgen_curve:P-521"]);
        }
        if cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            && let Ok(d) = std::fs::read(&path)
        {
            out.push(d);
        }
    }
    out
}

// The dictionary is for the raw mode only: PEM armour, and DER fragments of the OIDs and values
// the screening looks at.
const DICTIONARY: &[&[u8]] = &[
    b"-----BEGIN CERTIFICATE REQUEST-----\n",
    b"-----END CERTIFICATE REQUEST-----\n",
    b"-----BEGIN NEW CERTIFICATE REQUEST-----\n",
    b"-----BEGIN CERTIFICATE-----\n",
    b"\n",
    b"=",
    &[0x06, 0x03, 0x55, 0x1d, 0x11],
    &[0x06, 0x03, 0x55, 0x1d, 0x13],
    &[0x30, 0x03, 0x01, 0x01, 0xff],
    &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e,
    ],
    &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01],
    &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
    &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
    &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23],
    &[0x06, 0x03, 0x2b, 0x65, 0x70],
    &[0x06, 0x03, 0x2b, 0x65, 0x71],
    &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ],
    &[0x05, 0x00],
    &[0x01, 0x01, 0xff],
    &[0x82, 0x01, b'*'],
    &[0x87, 0x04, 10, 0, 0, 1],
    &[0x87, 0x05, 10, 0, 0, 1, 1],
];
