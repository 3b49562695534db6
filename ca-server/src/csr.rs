//! Certificate signing requests: decoding, signature check, key screening, and the rule that a
//! CSR asks for nothing the CA would not grant exactly.
//!
//! Only the public key of a CSR reaches a certificate, and the CSR's subject is ignored (the CA
//! writes its own). Everything else a CSR asks for is either granted exactly or the CSR is
//! refused; nothing is silently dropped:
//! - attributes: at most one extensionRequest, with one value; any other attribute
//!   (challengePassword, unstructuredName, ...) is refused;
//! - extensions, each at most once: subjectAltName; basicConstraints CA:FALSE without a path
//!   length; keyUsage and extendedKeyUsage only when equal to what every leaf carries
//!   ([`granted_key_usage`], serverAuth + clientAuth). Any other extension, critical or not, is
//!   refused. The critical flag of the accepted ones is the CA's to set, as in every leaf;
//! - SANs: DNS names and IP addresses, which policy decides (when the caller names some too, both
//!   must be the same set: [`ValidatedCsr::names_to_request`]); URIs only when equal to the SPIFFE
//!   ID the CA assigns ([`ValidatedCsr::check_uris`]); every other SAN type is refused.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::der_parser::der::der_read_element_header;
use x509_parser::der_parser::oid::Oid;
use x509_parser::extensions::{ExtendedKeyUsage, GeneralName, KeyUsage, ParsedExtension};
use x509_parser::objects::{oid_registry, oid2sn};
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
    /// A SAN of a type this CA never issues (email, otherName, directoryName, registeredID, ...).
    #[error(
        "CSR requests {0}; this CA grants only DNS names, IP addresses and the SPIFFE ID it assigns, and refuses rather than drops: remove it from the CSR"
    )]
    UnsupportedSan(String),
    /// A URI SAN other than the SPIFFE ID the CA assigns to this request.
    #[error(
        "CSR requests URI SAN {requested:?}, but the CA assigns the SPIFFE ID itself ({assigned} for this request): a CSR may carry no URI SAN or exactly that one"
    )]
    UriSan {
        /// The URI the CSR asked for.
        requested: String,
        /// The SPIFFE ID the certificate would carry.
        assigned: String,
    },
    /// An extension this CA never puts in a leaf.
    #[error(
        "CSR requests {0}, which this CA does not grant; only subjectAltName, basicConstraints CA:FALSE, keyUsage and extendedKeyUsage as issued may be requested: remove it from the CSR"
    )]
    UnsupportedExtension(String),
    /// A known extension whose value differs from what the leaf will carry.
    #[error(
        "CSR requests {extension} {requested}, but the certificate carries exactly {granted}: request exactly that or omit {extension}"
    )]
    ExtensionDiffers {
        /// The extension's name.
        extension: &'static str,
        /// What the CSR asked for.
        requested: String,
        /// What the certificate carries.
        granted: String,
    },
    /// The same extension twice.
    #[error("CSR requests extension {0} more than once")]
    RepeatedExtension(String),
    /// An attribute other than extensionRequest.
    #[error(
        "CSR carries attribute {0}, which this CA does not use; extensionRequest is the only attribute accepted: remove it from the CSR"
    )]
    UnsupportedAttribute(String),
    /// A challengePassword attribute (its value is never shown).
    #[error(
        "CSR carries a challengePassword attribute; this CA never uses one (enrollment takes a token, renewal a client certificate): remove it from the CSR"
    )]
    ChallengePassword,
    /// The same attribute twice, or one attribute with several values.
    #[error("CSR carries the {0} attribute more than once or with more than one value")]
    RepeatedAttribute(String),
    /// The CSR and the caller both name SANs, and not the same ones.
    #[error(
        "CSR requests {csr} but the request names {request}; give the names in one place, or the same names in both"
    )]
    NamesDiffer {
        /// The CSR's names.
        csr: String,
        /// The caller's names.
        request: String,
    },
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
    /// URI SANs the CSR asked for (each must be the SPIFFE ID the CA assigns).
    pub requested_uris: Vec<String>,
}

impl ValidatedCsr {
    /// The names to put to policy: the caller's (`dns`, `ips`) when it names any, else the
    /// CSR's. When both name some, they must be the same set (DNS names compared
    /// case-insensitively): a CSR's request is never silently replaced.
    pub fn names_to_request(
        &self,
        dns: &[String],
        ips: &[IpAddr],
    ) -> Result<(Vec<String>, Vec<IpAddr>), CsrError> {
        if dns.is_empty() && ips.is_empty() {
            return Ok((self.requested_dns.clone(), self.requested_ips.clone()));
        }
        let csr_names = name_set(&self.requested_dns, &self.requested_ips);
        let caller_names = name_set(dns, ips);
        if !csr_names.is_empty() && csr_names != caller_names {
            return Err(CsrError::NamesDiffer {
                csr: describe_names(&csr_names),
                request: describe_names(&caller_names),
            });
        }
        Ok((dns.to_vec(), ips.to_vec()))
    }

    /// Refuses a URI SAN other than `assigned`, the SPIFFE ID the certificate will carry: the
    /// identity comes from the caller's credential, never from the CSR, so a CSR may only repeat
    /// it.
    pub fn check_uris(&self, assigned: &str) -> Result<(), CsrError> {
        match self.requested_uris.iter().find(|u| u.as_str() != assigned) {
            Some(u) => Err(CsrError::UriSan {
                requested: short(u),
                assigned: assigned.to_string(),
            }),
            None => Ok(()),
        }
    }
}

/// keyUsage bits every leaf for a key of `key_type` carries (as `authority::sign_leaf` writes
/// them): digitalSignature, plus keyEncipherment for RSA.
pub fn granted_key_usage(key_type: KeyType) -> KeyUsage {
    const DIGITAL_SIGNATURE: u16 = 1;
    const KEY_ENCIPHERMENT: u16 = 1 << 2;
    KeyUsage {
        flags: match key_type {
            KeyType::Rsa => DIGITAL_SIGNATURE | KEY_ENCIPHERMENT,
            _ => DIGITAL_SIGNATURE,
        },
    }
}

/// A caller's or a CSR's names as one comparable set: `dns:<lowercase>` and `ip:<address>`.
fn name_set(dns: &[String], ips: &[IpAddr]) -> BTreeSet<String> {
    dns.iter()
        .map(|d| format!("dns:{}", d.to_ascii_lowercase()))
        .chain(ips.iter().map(|ip| format!("ip:{ip}")))
        .collect()
}

fn describe_names(names: &BTreeSet<String>) -> String {
    if names.is_empty() {
        return "no names".into();
    }
    let joined = names.iter().cloned().collect::<Vec<_>>().join(", ");
    if joined.chars().count() > 240 {
        format!("{}...", joined.chars().take(240).collect::<String>())
    } else {
        joined
    }
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

    let mut requested = Requested::default();
    let mut seen_attributes = HashSet::new();
    for attr in info.attributes() {
        let name = oid_name(&attr.oid);
        if !seen_attributes.insert(attr.oid.to_id_string()) {
            return Err(CsrError::RepeatedAttribute(name));
        }
        match attr.parsed_attribute() {
            ParsedCriAttribute::ExtensionRequest(req) => {
                // x509-parser reads the first value of the attribute's SET and skips the rest; a
                // second value would be an extension request nobody screened.
                if !single_valued(attr.value) {
                    return Err(CsrError::RepeatedAttribute(name));
                }
                let mut seen_extensions = HashSet::new();
                for ext in &req.extensions {
                    if !seen_extensions.insert(ext.oid.to_id_string()) {
                        return Err(CsrError::RepeatedExtension(oid_name(&ext.oid)));
                    }
                    screen_extension(
                        ext.parsed_extension(),
                        &ext.oid,
                        ext.critical,
                        key_type,
                        &mut requested,
                    )?;
                }
            }
            ParsedCriAttribute::ChallengePassword(_) => return Err(CsrError::ChallengePassword),
            ParsedCriAttribute::UnsupportedAttribute => {
                return Err(CsrError::UnsupportedAttribute(name));
            }
        }
    }
    Ok(ValidatedCsr {
        spki_der: info.subject_pki.raw.to_vec(),
        key_type,
        requested_dns: requested.dns,
        requested_ips: requested.ips,
        requested_uris: requested.uris,
    })
}

/// The SANs a CSR asked for.
#[derive(Default)]
struct Requested {
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    uris: Vec<String>,
}

/// Accepts an extension the leaf grants exactly (collecting the SANs), or says why not.
fn screen_extension(
    ext: &ParsedExtension<'_>,
    oid: &Oid<'_>,
    critical: bool,
    key_type: KeyType,
    requested: &mut Requested,
) -> Result<(), CsrError> {
    match ext {
        ParsedExtension::BasicConstraints(bc) if bc.ca => Err(CsrError::RequestsCa),
        ParsedExtension::BasicConstraints(bc) => match bc.path_len_constraint {
            None => Ok(()),
            Some(n) => Err(CsrError::ExtensionDiffers {
                extension: "basicConstraints",
                requested: format!("CA:FALSE, pathlen:{n}"),
                granted: "CA:FALSE".into(),
            }),
        },
        ParsedExtension::KeyUsage(ku) => {
            let granted = granted_key_usage(key_type);
            if ku.flags == granted.flags {
                Ok(())
            } else {
                Err(CsrError::ExtensionDiffers {
                    extension: "keyUsage",
                    requested: describe_key_usage(ku),
                    granted: granted.to_string(),
                })
            }
        }
        ParsedExtension::ExtendedKeyUsage(eku) => {
            let exact = eku.server_auth
                && eku.client_auth
                && !eku.any
                && !eku.code_signing
                && !eku.email_protection
                && !eku.time_stamping
                && !eku.ocsp_signing
                && eku.other.is_empty();
            if exact {
                Ok(())
            } else {
                Err(CsrError::ExtensionDiffers {
                    extension: "extendedKeyUsage",
                    requested: describe_eku(eku),
                    granted: "serverAuth, clientAuth".into(),
                })
            }
        }
        ParsedExtension::SubjectAlternativeName(san) => {
            for name in &san.general_names {
                screen_san(name, requested)?;
            }
            Ok(())
        }
        ParsedExtension::ParseError { error } => Err(CsrError::Malformed(format!(
            "requested extension {} does not parse: {}",
            oid_name(oid),
            short(&error.to_string())
        ))),
        _ => Err(CsrError::UnsupportedExtension(format!(
            "{}extension {}",
            if critical { "critical " } else { "" },
            oid_name(oid)
        ))),
    }
}

fn screen_san(name: &GeneralName<'_>, requested: &mut Requested) -> Result<(), CsrError> {
    let refused = |what: String| Err(CsrError::UnsupportedSan(what));
    match name {
        GeneralName::DNSName(n) => requested.dns.push((*n).to_string()),
        GeneralName::IPAddress(b) => match ip_from_bytes(b) {
            Some(ip) => requested.ips.push(ip),
            None => {
                return Err(CsrError::Malformed(format!(
                    "an IP address SAN of {} bytes (expected 4 or 16)",
                    b.len()
                )));
            }
        },
        GeneralName::URI(u) => requested.uris.push((*u).to_string()),
        GeneralName::RFC822Name(m) => return refused(format!("email SAN {:?}", short(m))),
        GeneralName::OtherName(oid, _) => {
            return refused(format!("otherName SAN of type {}", oid_name(oid)));
        }
        GeneralName::DirectoryName(dn) => {
            return refused(format!("directoryName SAN {:?}", short(&dn.to_string())));
        }
        GeneralName::RegisteredID(oid) => {
            return refused(format!("registeredID SAN {}", oid_name(oid)));
        }
        GeneralName::X400Address(_) => return refused("x400Address SAN".into()),
        GeneralName::EDIPartyName(_) => return refused("ediPartyName SAN".into()),
        GeneralName::Invalid(..) => {
            return Err(CsrError::Malformed(
                "a subjectAltName entry does not parse".into(),
            ));
        }
    }
    Ok(())
}

/// Whether a DER SET (an attribute's values) holds exactly the one value x509-parser read:
/// `value` spans the SET's header and that first value.
fn single_valued(value: &[u8]) -> bool {
    match der_read_element_header(value) {
        Ok((content, header)) => header.length().definite() == Ok(content.len()),
        Err(_) => false,
    }
}

/// `shortName (dotted)` when the OID is known, else the dotted form.
fn oid_name(oid: &Oid<'_>) -> String {
    match oid2sn(oid, oid_registry()) {
        Ok(sn) => format!("{sn} ({})", oid.to_id_string()),
        Err(_) => oid.to_id_string(),
    }
}

fn describe_key_usage(ku: &KeyUsage) -> String {
    if ku.flags == 0 {
        "(no bits)".into()
    } else {
        ku.to_string()
    }
}

fn describe_eku(eku: &ExtendedKeyUsage<'_>) -> String {
    let mut names: Vec<String> = [
        (eku.any, "anyExtendedKeyUsage"),
        (eku.server_auth, "serverAuth"),
        (eku.client_auth, "clientAuth"),
        (eku.code_signing, "codeSigning"),
        (eku.email_protection, "emailProtection"),
        (eku.time_stamping, "timeStamping"),
        (eku.ocsp_signing, "OCSPSigning"),
    ]
    .iter()
    .filter(|(set, _)| *set)
    .map(|(_, n)| (*n).to_string())
    .collect();
    names.extend(eku.other.iter().map(|o| o.to_id_string()));
    if names.is_empty() {
        "(no purposes)".into()
    } else {
        names.join(", ")
    }
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
    use rcgen::{
        Attribute, BasicConstraints, CertificateParams, CustomExtension, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    };

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

    /// A P-256 CSR for `params` with extra PKCS#10 `attrs`, screened.
    fn screen(params: &CertificateParams, attrs: Vec<Attribute>) -> Result<ValidatedCsr, CsrError> {
        let key = KeyPair::generate().expect("key");
        let csr = params
            .serialize_request_with_attributes(&key, attrs)
            .expect("csr");
        validate_csr(csr.der())
    }

    fn with_extension(oid: &[u64], der: &[u8], critical: bool) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut ext = CustomExtension::from_oid_content(oid, der.to_vec());
        ext.set_criticality(critical);
        params.custom_extensions.push(ext);
        params
    }

    const SAN: &[u64] = &[2, 5, 29, 17];
    const EXTENSION_REQUEST: &[u64] = &[1, 2, 840, 113549, 1, 9, 14];

    #[test]
    fn a_csr_requesting_nothing_beyond_its_key_is_accepted_whatever_its_subject() {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "anything at all");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "another org");
        let v = screen(&params, vec![]).expect("valid");
        assert!(v.requested_dns.is_empty() && v.requested_ips.is_empty());
        assert!(v.requested_uris.is_empty());
    }

    #[test]
    fn san_types_other_than_dns_ip_and_uri_are_refused_by_name() {
        let mut email = CertificateParams::new(Vec::<String>::new()).expect("params");
        email.subject_alt_names = vec![SanType::Rfc822Name(
            "ops@example.internal".try_into().expect("ia5"),
        )];
        let mut other = CertificateParams::new(Vec::<String>::new()).expect("params");
        other.subject_alt_names = vec![SanType::OtherName((
            vec![1, 3, 6, 1, 4, 1, 311, 20, 2, 3],
            rcgen::OtherNameValue::Utf8String("upn@example.internal".into()),
        ))];
        // [4] directoryName { CN=x }, [8] registeredID 1.2.3.4: written by hand, rcgen has neither.
        let dir_name = with_extension(
            SAN,
            &[
                0x30, 0x10, 0xa4, 0x0e, 0x30, 0x0c, 0x31, 0x0a, 0x30, 0x08, 0x06, 0x03, 0x55, 0x04,
                0x03, 0x0c, 0x01, 0x78,
            ],
            false,
        );
        let registered = with_extension(SAN, &[0x30, 0x05, 0x88, 0x03, 0x2a, 0x03, 0x04], false);
        for (params, needle) in [
            (&email, "email SAN \"ops@example.internal\""),
            (&other, "otherName SAN of type 1.3.6.1.4.1.311.20.2.3"),
            (&dir_name, "directoryName SAN \"CN=x\""),
            (&registered, "registeredID SAN 1.2.3.4"),
        ] {
            let e = screen(params, vec![]).expect_err(needle);
            assert!(matches!(e, CsrError::UnsupportedSan(_)), "{e:?}");
            assert!(e.to_string().contains(needle), "{e}");
            assert_eq!(e.kind(), ErrorKind::BadRequest);
        }
        let short_ip = with_extension(SAN, &[0x30, 0x05, 0x87, 0x03, 0x0a, 0x00, 0x00], false);
        assert!(matches!(
            screen(&short_ip, vec![]),
            Err(CsrError::Malformed(m)) if m.contains("3 bytes")
        ));
    }

    #[test]
    fn uri_sans_are_only_accepted_when_they_are_the_assigned_spiffe_id() {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://example.internal/dev/api".try_into().expect("ia5"),
        )];
        let v = screen(&params, vec![]).expect("parsed");
        assert_eq!(v.requested_uris, ["spiffe://example.internal/dev/api"]);
        assert_eq!(v.check_uris("spiffe://example.internal/dev/api"), Ok(()));
        let e = v
            .check_uris("spiffe://example.internal/prod/api")
            .expect_err("another identity");
        assert!(
            e.to_string()
                .contains("\"spiffe://example.internal/dev/api\""),
            "{e}"
        );
        // Not normalised: anything but the exact bytes the certificate will carry is refused.
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://EXAMPLE.internal/dev/api".try_into().expect("ia5"),
        )];
        let v = screen(&params, vec![]).expect("parsed");
        assert!(v.check_uris("spiffe://example.internal/dev/api").is_err());
        let none = screen(&CertificateParams::default(), vec![]).expect("parsed");
        assert_eq!(none.check_uris("spiffe://example.internal/dev/api"), Ok(()));
    }

    #[test]
    fn csr_names_and_caller_names_must_agree_when_both_are_given() {
        let params = CertificateParams::new(vec![
            "A.dev.svc.example.internal".to_string(),
            "10.0.0.1".to_string(),
        ])
        .expect("params");
        let v = screen(&params, vec![]).expect("valid");
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        // Only the CSR names them: the CSR's names.
        assert_eq!(
            v.names_to_request(&[], &[]),
            Ok((vec!["A.dev.svc.example.internal".to_string()], vec![ip]))
        );
        // Both, the same set (case, order and repeats aside): the caller's.
        let same = [
            "a.dev.svc.example.internal".to_string(),
            "a.dev.svc.example.internal".to_string(),
        ];
        assert_eq!(
            v.names_to_request(&same, &[ip]),
            Ok((same.to_vec(), vec![ip]))
        );
        // Both, and they differ: a name more, a name less, the IP left out.
        for (dns, ips) in [
            (
                vec![
                    "a.dev.svc.example.internal".to_string(),
                    "b.dev.svc.example.internal".to_string(),
                ],
                vec![ip],
            ),
            (vec![], vec![ip]),
            (vec!["a.dev.svc.example.internal".to_string()], vec![]),
        ] {
            let e = v.names_to_request(&dns, &ips).expect_err("differ");
            assert!(matches!(e, CsrError::NamesDiffer { .. }), "{e:?}");
            assert!(
                e.to_string()
                    .contains("CSR requests dns:a.dev.svc.example.internal, ip:10.0.0.1"),
                "{e}"
            );
        }
        // The CSR names nothing: the caller's names.
        let bare = screen(&CertificateParams::default(), vec![]).expect("valid");
        let b = ["b.dev.svc.example.internal".to_string()];
        assert_eq!(bare.names_to_request(&b, &[]), Ok((b.to_vec(), vec![])));
    }

    #[test]
    fn usages_and_constraints_are_accepted_only_as_issued() {
        let mut exact = CertificateParams::new(Vec::<String>::new()).expect("params");
        exact.is_ca = IsCa::ExplicitNoCa;
        exact.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        exact.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        screen(&exact, vec![]).expect("exactly what a P-256 leaf carries");

        let mut ku = exact.clone();
        ku.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        let e = screen(&ku, vec![]).expect_err("keyEncipherment on an EC key");
        assert!(
            matches!(&e, CsrError::ExtensionDiffers { extension: "keyUsage", granted, .. } if granted == "Digital Signature"),
            "{e:?}"
        );
        assert!(e.to_string().contains("Key Encipherment"), "{e}");

        let mut code = exact.clone();
        code.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        let e = screen(&code, vec![]).expect_err("codeSigning");
        assert!(
            e.to_string().contains("extendedKeyUsage codeSigning"),
            "{e}"
        );
        let mut client_only = exact.clone();
        client_only.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let e = screen(&client_only, vec![]).expect_err("less than issued");
        assert!(
            matches!(
                &e,
                CsrError::ExtensionDiffers {
                    extension: "extendedKeyUsage",
                    ..
                }
            ),
            "{e:?}"
        );
        let mut more = exact.clone();
        more.extended_key_usages
            .push(ExtendedKeyUsagePurpose::EmailProtection);
        assert!(screen(&more, vec![]).is_err());

        // basicConstraints CA:FALSE with a path length: SEQUENCE { BOOLEAN FALSE, INTEGER 0 }.
        let pathlen = with_extension(
            &[2, 5, 29, 19],
            &[0x30, 0x06, 0x01, 0x01, 0x00, 0x02, 0x01, 0x00],
            true,
        );
        let e = screen(&pathlen, vec![]).expect_err("pathlen");
        assert!(e.to_string().contains("CA:FALSE, pathlen:0"), "{e}");

        assert_eq!(
            granted_key_usage(KeyType::Rsa).to_string(),
            "Digital Signature, Key Encipherment"
        );
    }

    #[test]
    fn other_extensions_are_refused_critical_or_not() {
        // An unknown OID, then subjectKeyIdentifier (known to the parser, never taken from a CSR).
        let unknown = with_extension(&[1, 3, 6, 1, 4, 1, 99999, 1], &[0x05, 0x00], true);
        let e = screen(&unknown, vec![]).expect_err("critical unknown");
        assert_eq!(
            e,
            CsrError::UnsupportedExtension("critical extension 1.3.6.1.4.1.99999.1".into())
        );
        let unknown = with_extension(&[1, 3, 6, 1, 4, 1, 99999, 1], &[0x05, 0x00], false);
        assert_eq!(
            screen(&unknown, vec![]),
            Err(CsrError::UnsupportedExtension(
                "extension 1.3.6.1.4.1.99999.1".into()
            ))
        );
        let skid = with_extension(&[2, 5, 29, 14], &[0x04, 0x02, 0x01, 0x02], false);
        let e = screen(&skid, vec![]).expect_err("skid");
        assert!(e.to_string().contains("2.5.29.14"), "{e}");
    }

    #[test]
    fn repeated_extensions_and_attributes_are_refused() {
        // subjectAltName from rcgen, and a second one by hand.
        let mut twice = with_extension(
            SAN,
            &[
                0x30, 0x0b, 0x82, 0x09, b'b', b'.', b'e', b'x', b'a', b'm', b'p', b'l', b'e',
            ],
            false,
        );
        twice.subject_alt_names = vec![SanType::DnsName("a.example".try_into().expect("ia5"))];
        assert!(matches!(
            screen(&twice, vec![]),
            Err(CsrError::RepeatedExtension(n)) if n.contains("2.5.29.17")
        ));

        // An extension request from rcgen and a second, empty one.
        let mut named = CertificateParams::new(vec!["a.example".to_string()]).expect("params");
        named.is_ca = IsCa::ExplicitNoCa;
        let second = Attribute {
            oid: EXTENSION_REQUEST,
            values: vec![0x31, 0x02, 0x30, 0x00],
        };
        assert!(matches!(
            screen(&named, vec![second]),
            Err(CsrError::RepeatedAttribute(n)) if n.contains("1.2.840.113549.1.9.14")
        ));

        // One extension request holding two values: an empty one, then basicConstraints CA:TRUE.
        // The parser reads only the first, so the second must not slip through unscreened.
        let two_values = Attribute {
            oid: EXTENSION_REQUEST,
            values: vec![
                0x31, 0x15, 0x30, 0x00, 0x30, 0x11, 0x30, 0x0f, 0x06, 0x03, 0x55, 0x1d, 0x13, 0x01,
                0x01, 0xff, 0x04, 0x05, 0x30, 0x03, 0x01, 0x01, 0xff,
            ],
        };
        assert!(matches!(
            screen(&CertificateParams::default(), vec![two_values]),
            Err(CsrError::RepeatedAttribute(_))
        ));
    }

    #[test]
    fn attributes_other_than_the_extension_request_are_refused() {
        // challengePassword "s3cret-value" (UTF8String): refused without showing the value.
        let mut values = vec![0x31, 0x0e, 0x0c, 0x0c];
        values.extend_from_slice(b"s3cret-value");
        let challenge = Attribute {
            oid: &[1, 2, 840, 113549, 1, 9, 7],
            values,
        };
        let e = screen(&CertificateParams::default(), vec![challenge]).expect_err("challenge");
        assert_eq!(e, CsrError::ChallengePassword);
        assert!(!e.to_string().contains("s3cret") && !format!("{e:?}").contains("s3cret"));

        // unstructuredName "x" (UTF8String).
        let unstructured = Attribute {
            oid: &[1, 2, 840, 113549, 1, 9, 2],
            values: vec![0x31, 0x03, 0x0c, 0x01, b'x'],
        };
        let e = screen(&CertificateParams::default(), vec![unstructured]).expect_err("attribute");
        assert!(
            matches!(&e, CsrError::UnsupportedAttribute(n) if n.contains("1.2.840.113549.1.9.2")),
            "{e:?}"
        );
    }
}
