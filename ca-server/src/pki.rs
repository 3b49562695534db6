//! PKI value types shared by every layer: serial numbers, fingerprints, key types and workload
//! identities. Parsing here is strict and total: bad text gives an error, never a panic.

use std::fmt;
use std::str::FromStr;

use ring::digest;
use x509_parser::der_parser::oid;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// Smallest RSA modulus accepted for a leaf key.
pub const MIN_RSA_BITS: usize = 2048;

/// A certificate serial number: a positive integer, kept as its minimal big-endian bytes.
///
/// Text form is lowercase hex without separators; parsing accepts any case and optional colons.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

/// Why a serial number or fingerprint string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    /// Not hex digits (after removing colons), or an odd number of them.
    #[error("{what} must be hex digits, optionally separated by colons")]
    NotHex {
        /// What was being parsed.
        what: &'static str,
    },
    /// Wrong length.
    #[error("{what} must be {expected}")]
    Length {
        /// What was being parsed.
        what: &'static str,
        /// The accepted length, in words.
        expected: &'static str,
    },
}

fn parse_hex(what: &'static str, s: &str) -> Result<Vec<u8>, HexError> {
    let cleaned: String = s.trim().chars().filter(|c| *c != ':').collect();
    if cleaned.is_empty() || !cleaned.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(HexError::NotHex { what });
    }
    // An odd count is a dropped leading zero nibble in a serial; pad rather than refuse.
    let padded = if cleaned.len() % 2 == 1 {
        format!("0{cleaned}")
    } else {
        cleaned
    };
    hex::decode(padded).map_err(|_| HexError::NotHex { what })
}

impl Serial {
    /// A serial from big-endian integer bytes as found in a certificate (leading zeros dropped).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        Serial(bytes[first..].to_vec())
    }

    /// The serial of a DER certificate, if it parses.
    pub fn of_certificate(der: &[u8]) -> Option<Serial> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        X509Certificate::from_der(der)
            .ok()
            .map(|(_, c)| Serial::from_bytes(c.raw_serial()))
    }

    /// The audit actor of a request authenticated (or not) by this client certificate:
    /// `cert:<serial>`.
    pub fn actor_of_certificate(der: &[u8]) -> String {
        match Serial::of_certificate(der) {
            Some(s) => format!("cert:{s}"),
            None => "cert:unparsable".into(),
        }
    }

    /// The minimal big-endian magnitude bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lowercase hex, no separators (the canonical text form used in the store and output).
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl FromStr for Serial {
    type Err = HexError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = parse_hex("a serial number", s)?;
        let serial = Serial::from_bytes(&bytes);
        if serial.0.is_empty() || serial.0.len() > 20 {
            return Err(HexError::Length {
                what: "a serial number",
                expected: "a non-zero integer of at most 20 bytes",
            });
        }
        Ok(serial)
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({})", self.to_hex())
    }
}

/// A SHA-256 fingerprint of DER bytes (a certificate, or a SubjectPublicKeyInfo).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The SHA-256 of `der`.
    pub fn of(der: &[u8]) -> Self {
        let d = digest::digest(&digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Fingerprint(out)
    }

    /// Lowercase hex, no separators.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Compares in constant time (fingerprints gate trust decisions).
    pub fn ct_eq(&self, other: &Fingerprint) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

/// Constant-time byte comparison for secrets and trust decisions (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

impl FromStr for Fingerprint {
    type Err = HexError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let s = s
            .strip_prefix("sha256:")
            .or_else(|| s.strip_prefix("SHA256:"))
            .unwrap_or(s);
        let bytes = parse_hex("a SHA-256 fingerprint", s)?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| HexError::Length {
            what: "a SHA-256 fingerprint",
            expected: "64 hex digits (32 bytes)",
        })?;
        Ok(Fingerprint(arr))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

/// The key algorithms accepted for leaf certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// ECDSA on NIST P-256.
    P256,
    /// ECDSA on NIST P-384.
    P384,
    /// Ed25519.
    Ed25519,
    /// RSA with a modulus of at least [`MIN_RSA_BITS`].
    Rsa,
}

impl KeyType {
    /// The policy-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::P256 => "p256",
            KeyType::P384 => "p384",
            KeyType::Ed25519 => "ed25519",
            KeyType::Rsa => "rsa",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "p256" | "p-256" | "ecdsa-p256" => Ok(KeyType::P256),
            "p384" | "p-384" | "ecdsa-p384" => Ok(KeyType::P384),
            "ed25519" => Ok(KeyType::Ed25519),
            "rsa" => Ok(KeyType::Rsa),
            other => Err(format!(
                "unknown key type {other:?} (expected p256, p384, ed25519 or rsa)"
            )),
        }
    }
}

/// Why a public key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// RSA modulus below [`MIN_RSA_BITS`].
    #[error("RSA key of {bits} bits is too weak (minimum {MIN_RSA_BITS})")]
    WeakRsa {
        /// Modulus size.
        bits: usize,
    },
    /// An algorithm or curve this CA does not issue for.
    #[error("unsupported key type: {0} (supported: P-256, P-384, Ed25519, RSA >= 2048 bits)")]
    Unsupported(String),
}

/// Classifies a SubjectPublicKeyInfo, refusing weak or unsupported keys.
pub fn key_type_of(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyType, KeyError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == oid!(1.2.840.10045.2.1) {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == oid!(1.2.840.10045.3.1.7) => Ok(KeyType::P256),
            Some(c) if c == oid!(1.3.132.0.34) => Ok(KeyType::P384),
            Some(c) if c == oid!(1.3.132.0.35) => {
                Err(KeyError::Unsupported("EC curve P-521".into()))
            }
            Some(c) => Err(KeyError::Unsupported(format!("EC curve {c}"))),
            None => Err(KeyError::Unsupported("EC key without a named curve".into())),
        };
    }
    if *alg == oid!(1.3.101.112) {
        return Ok(KeyType::Ed25519);
    }
    if *alg == oid!(1.2.840.113549.1.1.1) {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => modulus_bits(rsa.modulus),
            _ => return Err(KeyError::Unsupported("malformed RSA public key".into())),
        };
        if bits < MIN_RSA_BITS {
            return Err(KeyError::WeakRsa { bits });
        }
        // ring verifies RSA signatures up to 8192 bits; larger keys could never be checked.
        if bits > 8192 {
            return Err(KeyError::Unsupported(format!(
                "RSA key of {bits} bits (maximum 8192)"
            )));
        }
        return Ok(KeyType::Rsa);
    }
    let name = match alg.to_id_string().as_str() {
        "1.3.101.113" => "Ed448".to_string(),
        "1.2.840.10040.4.1" => "DSA".to_string(),
        other => format!("algorithm {other}"),
    };
    Err(KeyError::Unsupported(name))
}

fn modulus_bits(modulus: &[u8]) -> usize {
    let first = modulus
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(modulus.len());
    let m = &modulus[first..];
    match m.first() {
        None => 0,
        Some(top) => (m.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
    }
}

/// Why a certificate was revoked (RFC 5280 §5.3.1). certificateHold is deliberately absent:
/// revocation here is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationReason {
    /// No reason given.
    Unspecified,
    /// The private key is, or may be, known to someone else.
    KeyCompromise,
    /// The issuing CA's key is compromised.
    CaCompromise,
    /// The subject's name or affiliation changed.
    AffiliationChanged,
    /// Replaced by a newer certificate.
    Superseded,
    /// No longer needed.
    CessationOfOperation,
}

impl RevocationReason {
    /// Every reason, in code order.
    pub const ALL: [RevocationReason; 6] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
    ];

    /// The CLI and store spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "key-compromise",
            RevocationReason::CaCompromise => "ca-compromise",
            RevocationReason::AffiliationChanged => "affiliation-changed",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessation-of-operation",
        }
    }

    /// The reason with CRLReason code `code`, if this CA uses it.
    pub fn from_code(code: u64) -> Option<RevocationReason> {
        RevocationReason::ALL
            .into_iter()
            .find(|r| u64::from(r.code()) == code)
    }

    /// The CRLReason code.
    pub fn code(self) -> u8 {
        match self {
            RevocationReason::Unspecified => 0,
            RevocationReason::KeyCompromise => 1,
            RevocationReason::CaCompromise => 2,
            RevocationReason::AffiliationChanged => 3,
            RevocationReason::Superseded => 4,
            RevocationReason::CessationOfOperation => 5,
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RevocationReason {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('_', "-");
        RevocationReason::ALL
            .into_iter()
            .find(|r| r.as_str() == wanted || r.as_str().replace('-', "") == wanted)
            .ok_or_else(|| {
                format!(
                    "unknown revocation reason {s:?} (one of: {})",
                    RevocationReason::ALL.map(|r| r.as_str()).join(", ")
                )
            })
    }
}

/// A workload identity: one service in one environment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Environment name, e.g. `prod`.
    pub env: String,
    /// Service name, e.g. `api`.
    pub service: String,
}

impl Identity {
    /// The SPIFFE ID of this identity in `trust_domain`.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!("spiffe://{trust_domain}/{}/{}", self.env, self.service)
    }

    /// Reads an identity back from a SPIFFE ID of `trust_domain` (exactly two path segments).
    pub fn from_spiffe_id(trust_domain: &str, id: &str) -> Option<Identity> {
        let rest = id.strip_prefix("spiffe://")?.strip_prefix(trust_domain)?;
        let rest = rest.strip_prefix('/')?;
        let (env, service) = rest.split_once('/')?;
        if env.is_empty() || service.is_empty() || service.contains('/') {
            return None;
        }
        Some(Identity {
            env: env.to_string(),
            service: service.to_string(),
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.env, self.service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_text_forms() {
        let a: Serial = "0A:bc:DE".parse().expect("parses");
        let b: Serial = "abcde".parse().expect("parses");
        assert_eq!(a.to_hex(), "0abcde");
        assert_eq!(b.to_hex(), "0abcde");
        assert_eq!(a, b);
        assert_eq!(Serial::from_bytes(&[0, 0, 1, 2]).to_hex(), "0102");
        for bad in ["", "xyz", "00", ":", &"ab".repeat(21)] {
            assert!(bad.parse::<Serial>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fingerprint_text_forms() {
        let hexed = "AB".repeat(32);
        let colons = vec!["ab"; 32].join(":");
        let a: Fingerprint = hexed.parse().expect("parses");
        let b: Fingerprint = colons.parse().expect("parses");
        let c: Fingerprint = format!("sha256:{hexed}").parse().expect("parses");
        assert!(a.ct_eq(&b) && a == c);
        assert!("ab".repeat(31).parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }

    #[test]
    fn rsa_modulus_bits_ignores_sign_byte() {
        let mut m = vec![0u8];
        m.extend(std::iter::repeat_n(0xff, 256));
        assert_eq!(modulus_bits(&m), 2048);
        assert_eq!(modulus_bits(&[0x01, 0x00]), 9);
        assert_eq!(modulus_bits(&[]), 0);
    }

    #[test]
    fn revocation_reasons_parse_leniently_and_refuse_hold() {
        assert_eq!(
            "key-compromise".parse(),
            Ok(RevocationReason::KeyCompromise)
        );
        assert_eq!("keyCompromise".parse(), Ok(RevocationReason::KeyCompromise));
        assert_eq!(
            "CESSATION_OF_OPERATION".parse(),
            Ok(RevocationReason::CessationOfOperation)
        );
        assert!("certificate-hold".parse::<RevocationReason>().is_err());
        let codes: Vec<u8> = RevocationReason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn spiffe_ids_round_trip_and_reject_foreign() {
        let id = Identity {
            env: "prod".into(),
            service: "api".into(),
        };
        let s = id.spiffe_id("example.internal");
        assert_eq!(s, "spiffe://example.internal/prod/api");
        assert_eq!(Identity::from_spiffe_id("example.internal", &s), Some(id));
        assert_eq!(Identity::from_spiffe_id("other.internal", &s), None);
        assert_eq!(
            Identity::from_spiffe_id("example.internal", "spiffe://example.internal/prod/api/x"),
            None
        );
        assert_eq!(
            Identity::from_spiffe_id(
                "example.internal",
                "spiffe://example.internal.evil/prod/api"
            ),
            None
        );
    }
}
