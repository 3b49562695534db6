//! Certificate signing requests: decoding, signature check and key screening.
//!
//! Only the public key of a CSR is ever used for issuance. What else it asks for is read solely to
//! refuse dangerous requests loudly (CA:TRUE) and, where a caller names no DNS names, to learn
//! which names it wanted; policy then decides those names like any other request.

use std::net::IpAddr;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::error::{Classify, ErrorKind};
use crate::pki::{KeyError, KeyType, key_type_of};

/// Largest CSR accepted, PEM or DER.
pub const MAX_CSR_BYTES: usize = 32 * 1024;

/// Why a CSR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// Larger than [`MAX_CSR_BYTES`].
    #[error("CSR is larger than {MAX_CSR_BYTES} bytes")]
    TooLarge,
    /// Not a PEM `CERTIFICATE REQUEST` block (nor DER).
    #[error("CSR is not PEM: expected a -----BEGIN CERTIFICATE REQUEST----- block")]
    NotPem,
    /// A PEM block of another type.
    #[error("CSR PEM block is {0:?}, expected \"CERTIFICATE REQUEST\"")]
    WrongPemLabel(String),
    /// DER that does not parse as a PKCS#10 request (truncated, corrupted, trailing data).
    #[error("CSR is malformed: {0}")]
    Malformed(String),
    /// The key is weak or of an unsupported type.
    #[error("CSR key refused: {0}")]
    Key(#[from] KeyError),
    /// The self-signature does not verify: the requester does not hold the key.
    #[error("CSR signature does not verify against its own public key")]
    BadSignature,
    /// The CSR asks for a CA certificate.
    #[error(
        "CSR requests CA:TRUE; this CA issues end-entity certificates only and refuses rather than downgrades"
    )]
    RequestsCa,
}

impl Classify for CsrError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::BadRequest
    }
}

/// A CSR whose signature verified and whose key is acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedCsr {
    /// DER SubjectPublicKeyInfo: the only part of the CSR that reaches a certificate.
    pub spki_der: Vec<u8>,
    /// The key's type.
    pub key_type: KeyType,
    /// DNS names the CSR's extension request asked for (policy decides them).
    pub requested_dns: Vec<String>,
    /// IP addresses the CSR's extension request asked for (policy decides them).
    pub requested_ips: Vec<IpAddr>,
}

/// Decodes (PEM or DER), verifies and screens a CSR.
pub fn validate_csr(input: &[u8]) -> Result<ValidatedCsr, CsrError> {
    if input.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge);
    }
    let der = decode(input)?;
    let (rest, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| CsrError::Malformed(short(&e.to_string())))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    let info = &csr.certification_request_info;
    // The key is screened before the signature: a 1024-bit RSA CSR deserves "too weak", not the
    // verifier's generic refusal of small moduli.
    let key_type = key_type_of(&info.subject_pki)?;
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;

    let mut requested_dns = Vec::new();
    let mut requested_ips = Vec::new();
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            match ext {
                ParsedExtension::BasicConstraints(bc) if bc.ca => return Err(CsrError::RequestsCa),
                ParsedExtension::ParseError { error } => {
                    return Err(CsrError::Malformed(format!(
                        "an requested extension does not parse: {}",
                        short(&error.to_string())
                    )));
                }
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::DNSName(n) => requested_dns.push((*n).to_string()),
                            GeneralName::IPAddress(b) => {
                                if let Some(ip) = ip_from_bytes(b) {
                                    requested_ips.push(ip);
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(ValidatedCsr {
        spki_der: info.subject_pki.raw.to_vec(),
        key_type,
        requested_dns,
        requested_ips,
    })
}

fn decode(input: &[u8]) -> Result<Vec<u8>, CsrError> {
    if input.first() == Some(&0x30) {
        return Ok(input.to_vec());
    }
    let text = std::str::from_utf8(input).map_err(|_| CsrError::NotPem)?;
    if !text.contains("-----BEGIN ") {
        return Err(CsrError::NotPem);
    }
    let (_, pem) = x509_parser::pem::parse_x509_pem(text.trim_start().as_bytes())
        .map_err(|_| CsrError::Malformed("PEM armour or base64 is damaged".into()))?;
    if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
        return Err(CsrError::WrongPemLabel(short(&pem.label)));
    }
    Ok(pem.contents)
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

fn short(s: &str) -> String {
    s.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, PublicKeyData};

    fn csr_pem(params: &CertificateParams, key: &KeyPair) -> String {
        params
            .serialize_request(key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    #[test]
    fn accepts_each_supported_key_and_reads_requested_names() {
        for (alg, kt) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, KeyType::P256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, KeyType::P384),
            (&rcgen::PKCS_ED25519, KeyType::Ed25519),
        ] {
            let key = KeyPair::generate_for(alg).expect("key");
            let params =
                CertificateParams::new(vec!["a.example".to_string(), "10.1.2.3".to_string()])
                    .expect("params");
            let v = validate_csr(csr_pem(&params, &key).as_bytes()).expect("valid");
            assert_eq!(v.key_type, kt);
            assert_eq!(v.requested_dns, ["a.example"]);
            assert_eq!(v.requested_ips, ["10.1.2.3".parse::<IpAddr>().expect("ip")]);
            assert_eq!(v.spki_der, key.subject_public_key_info());
        }
    }

    #[test]
    fn refuses_ca_requests() {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        assert_eq!(
            validate_csr(csr_pem(&params, &key).as_bytes()),
            Err(CsrError::RequestsCa)
        );
    }

    #[test]
    fn refuses_bad_signature() {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec!["a.example".to_string()]).expect("params");
        let der = params.serialize_request(&key).expect("csr").der().to_vec();
        let mut tampered = der.clone();
        let last = tampered.len() - 3;
        tampered[last] ^= 0x01;
        assert_eq!(validate_csr(&tampered), Err(CsrError::BadSignature));
    }

    #[test]
    fn refuses_garbage_truncation_and_wrong_pem() {
        assert_eq!(validate_csr(b"hello"), Err(CsrError::NotPem));
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let der = params.serialize_request(&key).expect("csr").der().to_vec();
        assert!(matches!(
            validate_csr(&der[..der.len() / 2]),
            Err(CsrError::Malformed(_))
        ));
        let pem = csr_pem(&params, &key);
        let cut = &pem[..pem.len() / 2];
        assert!(matches!(
            validate_csr(cut.as_bytes()),
            Err(CsrError::Malformed(_))
        ));
        let wrong = pem.replace("CERTIFICATE REQUEST", "CERTIFICATE");
        assert!(matches!(
            validate_csr(wrong.as_bytes()),
            Err(CsrError::WrongPemLabel(_))
        ));
        let big = vec![b'A'; MAX_CSR_BYTES + 1];
        assert_eq!(validate_csr(&big), Err(CsrError::TooLarge));
    }
}
