//! The JWS/JWK layer of the ACME server (RFC 8555 section 6.2, RFC 7515,
//! RFC 7517, RFC 7638).
//!
//! Everything here is pure: it parses request bodies into [`Jws`] values,
//! turns account keys into [`Jwk`] values, verifies signatures with `ring`
//! and checks External Account Bindings ([`Eab`]). Nonce bookkeeping, account
//! lookup and URL routing are the caller's business.
//!
//! Parsing is strict on purpose: JSON objects with duplicate member names
//! are refused everywhere (RFC 7515 section 5.2 allows that and it closes off
//! parser-differential tricks), base64url must be unpadded and canonical, and
//! the only JWS form accepted is the flattened JSON serialization with exactly
//! the members `protected`, `payload` and `signature`.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The JWS algorithms accepted for ACME request signatures.
const SUPPORTED_ALGS: [&str; 4] = ["ES256", "ES384", "RS256", "EdDSA"];

/// The MAC algorithms accepted for External Account Bindings.
const SUPPORTED_EAB_ALGS: [&str; 3] = ["HS256", "HS384", "HS512"];

/// Smallest RSA modulus accepted, in bits.
const RSA_MIN_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits.
const RSA_MAX_BITS: usize = 8192;
/// Smallest RSA public exponent accepted (FIPS 186-4 requires e > 2^16).
const RSA_MIN_E: u64 = 65537;
/// Largest RSA public exponent accepted (ring verifies up to 2^33 - 1).
const RSA_MAX_E: u64 = (1 << 33) - 1;

/// How many characters of attacker-supplied text an error message may quote.
const QUOTE_MAX: usize = 64;

/// JWK members that only private keys carry (RFC 7518 section 6).
const PRIVATE_JWK_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "oth"];

/// A public key in JWK form (RFC 7517) as ACME accounts use them.
///
/// Byte strings are stored decoded. RSA `n` and `e` are stored without
/// leading zero bytes (the minimal form RFC 7518 section 6.3.1 asks for), so
/// two JWKs for the same RSA key compare equal and have the same thumbprint
/// even if one of them carried a superfluous zero prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Jwk {
    /// An elliptic-curve key (`"kty": "EC"`).
    Ec {
        /// The curve.
        crv: EcCurve,
        /// The x coordinate, big-endian, full field length.
        x: Vec<u8>,
        /// The y coordinate, big-endian, full field length.
        y: Vec<u8>,
    },
    /// An RSA key (`"kty": "RSA"`).
    Rsa {
        /// The modulus, big-endian, without leading zero bytes.
        n: Vec<u8>,
        /// The public exponent, big-endian, without leading zero bytes.
        e: Vec<u8>,
    },
    /// An Ed25519 key (`"kty": "OKP", "crv": "Ed25519"`, RFC 8037).
    Ed25519 {
        /// The 32-byte public key.
        x: Vec<u8>,
    },
}

/// The elliptic curves accepted for `"kty": "EC"` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcCurve {
    /// NIST P-256 (`"crv": "P-256"`), used with ES256.
    P256,
    /// NIST P-384 (`"crv": "P-384"`), used with ES384.
    P384,
}

impl EcCurve {
    /// The JWK `crv` name.
    fn name(self) -> &'static str {
        match self {
            EcCurve::P256 => "P-256",
            EcCurve::P384 => "P-384",
        }
    }

    /// The length of one coordinate in bytes.
    fn coordinate_len(self) -> usize {
        match self {
            EcCurve::P256 => 32,
            EcCurve::P384 => 48,
        }
    }
}

impl Jwk {
    /// Parses a JWK JSON object; refuses private keys (a "d" member), unknown
    /// kty/crv, wrong coordinate lengths (P-256: 32 bytes each, P-384: 48),
    /// RSA moduli under 2048 bits or over 8192, even or tiny exponents.
    ///
    /// Every refusal is [`JwsError::BadPublicKey`]. Members other than the
    /// key material (`use`, `key_ops`, `alg`, `kid`, ...) are ignored.
    pub fn from_json(v: &Value) -> Result<Jwk, JwsError> {
        let obj = v
            .as_object()
            .ok_or_else(|| bad_key("the JWK is not a JSON object"))?;
        if let Some(member) = PRIVATE_JWK_MEMBERS.iter().find(|m| obj.contains_key(**m)) {
            return Err(bad_key(format!(
                "the JWK is a private key (it has a \"{member}\" member); send the public key only"
            )));
        }
        let kty = jwk_str(obj, "kty")?;
        match kty {
            "EC" => {
                let crv = match jwk_str(obj, "crv")? {
                    "P-256" => EcCurve::P256,
                    "P-384" => EcCurve::P384,
                    other => {
                        return Err(bad_key(format!(
                            "unsupported EC curve {}; supported: P-256, P-384",
                            quote(other)
                        )));
                    }
                };
                let x = jwk_bytes(obj, "x")?;
                let y = jwk_bytes(obj, "y")?;
                let want = crv.coordinate_len();
                for (name, coord) in [("x", &x), ("y", &y)] {
                    if coord.len() != want {
                        return Err(bad_key(format!(
                            "{} coordinate \"{name}\" is {} bytes; it must be exactly {want}",
                            crv.name(),
                            coord.len()
                        )));
                    }
                }
                Ok(Jwk::Ec { crv, x, y })
            }
            "RSA" => {
                let n = strip_leading_zeros(jwk_bytes(obj, "n")?);
                let e = strip_leading_zeros(jwk_bytes(obj, "e")?);
                let bits = bit_len(&n);
                if bits < RSA_MIN_BITS {
                    return Err(bad_key(format!(
                        "RSA modulus is {bits} bits; at least {RSA_MIN_BITS} are required"
                    )));
                }
                if bits > RSA_MAX_BITS {
                    return Err(bad_key(format!(
                        "RSA modulus is {bits} bits; at most {RSA_MAX_BITS} are accepted"
                    )));
                }
                if n.last().is_some_and(|b| b & 1 == 0) {
                    return Err(bad_key("RSA modulus is even"));
                }
                if e.len() > 8 {
                    return Err(bad_key(format!(
                        "RSA public exponent is {} bytes long; at most 2^33-1 is accepted",
                        e.len()
                    )));
                }
                let e_val = e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
                if e_val & 1 == 0 {
                    return Err(bad_key("RSA public exponent is even"));
                }
                if e_val < RSA_MIN_E {
                    return Err(bad_key(format!(
                        "RSA public exponent {e_val} is too small; at least {RSA_MIN_E} is required"
                    )));
                }
                if e_val > RSA_MAX_E {
                    return Err(bad_key(format!(
                        "RSA public exponent {e_val} is too large; at most 2^33-1 is accepted"
                    )));
                }
                Ok(Jwk::Rsa { n, e })
            }
            "OKP" => match jwk_str(obj, "crv")? {
                "Ed25519" => {
                    let x = jwk_bytes(obj, "x")?;
                    if x.len() != 32 {
                        return Err(bad_key(format!(
                            "Ed25519 key \"x\" is {} bytes; it must be exactly 32",
                            x.len()
                        )));
                    }
                    Ok(Jwk::Ed25519 { x })
                }
                other => Err(bad_key(format!(
                    "unsupported OKP curve {}; supported: Ed25519",
                    quote(other)
                ))),
            },
            other => Err(bad_key(format!(
                "unsupported JWK key type {}; supported: EC, RSA, OKP",
                quote(other)
            ))),
        }
    }

    /// The RFC 7638 canonical JSON (members in lexicographic order, no
    /// whitespace): {"crv","kty","x","y"} / {"e","kty","n"} /
    /// {"crv":"Ed25519","kty":"OKP","x"}.
    pub fn canonical_json(&self) -> String {
        // base64url output never needs JSON escaping.
        match self {
            Jwk::Ec { crv, x, y } => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                crv.name(),
                b64(x),
                b64(y)
            ),
            Jwk::Rsa { n, e } => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, b64(e), b64(n)),
            Jwk::Ed25519 { x } => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64(x)),
        }
    }

    /// RFC 7638 thumbprint: base64url (no padding) of SHA-256 of
    /// canonical_json.
    pub fn thumbprint(&self) -> String {
        b64(ring::digest::digest(&ring::digest::SHA256, self.canonical_json().as_bytes()).as_ref())
    }

    /// Verifies `signature` over `input` with this key for JWS algorithm
    /// `alg` ("ES256" with P-256 and raw 64-byte r||s, "ES384" with P-384 and
    /// 96-byte r||s, "RS256" with RSA PKCS#1 v1.5 SHA-256, "EdDSA" with
    /// Ed25519). An alg that does not fit the key type, "none",
    /// "HS256/384/512" and anything else: Err(BadSignatureAlgorithm). A wrong
    /// signature: Err(BadSignature).
    pub fn verify(&self, alg: &str, input: &[u8], signature: &[u8]) -> Result<(), JwsError> {
        let result = match (alg, self) {
            (
                "ES256",
                Jwk::Ec {
                    crv: EcCurve::P256,
                    x,
                    y,
                },
            ) => ec_verify(
                &signature::ECDSA_P256_SHA256_FIXED,
                64,
                x,
                y,
                input,
                signature,
            ),
            (
                "ES384",
                Jwk::Ec {
                    crv: EcCurve::P384,
                    x,
                    y,
                },
            ) => ec_verify(
                &signature::ECDSA_P384_SHA384_FIXED,
                96,
                x,
                y,
                input,
                signature,
            ),
            ("RS256", Jwk::Rsa { n, e }) => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, input, signature)
                .is_ok(),
            ("EdDSA", Jwk::Ed25519 { x }) => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(input, signature)
                .is_ok(),
            _ => return Err(alg_does_not_fit(alg, self)),
        };
        if result {
            Ok(())
        } else {
            Err(JwsError::BadSignature)
        }
    }

    /// A short human description of the key type for error messages.
    fn describe(&self) -> String {
        match self {
            Jwk::Ec { crv, .. } => format!("an EC {} key", crv.name()),
            Jwk::Rsa { .. } => "an RSA key".to_owned(),
            Jwk::Ed25519 { .. } => "an Ed25519 key".to_owned(),
        }
    }
}

/// ECDSA verification with a fixed-length r||s signature.
fn ec_verify(
    alg: &'static signature::EcdsaVerificationAlgorithm,
    sig_len: usize,
    x: &[u8],
    y: &[u8],
    input: &[u8],
    sig: &[u8],
) -> bool {
    if sig.len() != sig_len {
        return false;
    }
    let mut point = Vec::with_capacity(1 + x.len() + y.len());
    point.push(0x04);
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    UnparsedPublicKey::new(alg, point)
        .verify(input, sig)
        .is_ok()
}

/// The error for an `alg` that is unsupported or does not fit `key`.
fn alg_does_not_fit(alg: &str, key: &Jwk) -> JwsError {
    if SUPPORTED_ALGS.contains(&alg) {
        JwsError::BadSignatureAlgorithm(format!(
            "JWS algorithm {} cannot be used with {}",
            quote(alg),
            key.describe()
        ))
    } else {
        unsupported_alg(alg)
    }
}

/// The error for an `alg` outside [`SUPPORTED_ALGS`].
fn unsupported_alg(alg: &str) -> JwsError {
    JwsError::BadSignatureAlgorithm(format!(
        "unsupported JWS algorithm {}; supported: {}",
        quote(alg),
        SUPPORTED_ALGS.join(", ")
    ))
}

/// How a JWS names its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// The key itself (`"jwk"`), as for newAccount and revokeCert.
    Jwk(Jwk),
    /// The account URL (`"kid"`); the caller looks the key up.
    Kid(String),
}

/// The protected header of an ACME request.
#[derive(Debug, Clone)]
pub struct Protected {
    /// The JWS algorithm; always one of ES256, ES384, RS256, EdDSA.
    pub alg: String,
    /// The anti-replay nonce, if present (already checked to be base64url).
    pub nonce: Option<String>,
    /// The URL the request claims to be for; the caller compares it with the
    /// request URL.
    pub url: String,
    /// How the request names its key.
    pub key: KeyRef,
}

/// A parsed (not yet verified) flattened JWS.
#[derive(Debug, Clone)]
pub struct Jws {
    /// The decoded protected header.
    pub protected: Protected,
    /// decoded payload; empty for POST-as-GET (payload "")
    pub payload: Vec<u8>,
    /// Whether the payload was the empty string (RFC 8555 section 6.3).
    pub post_as_get: bool,
    /// protected_b64 + "." + payload_b64, exactly as received.
    signing_input: Vec<u8>,
    /// The decoded signature.
    signature: Vec<u8>,
}

impl Jws {
    /// Parses an ACME request body: a flattened JWS JSON serialization (RFC
    /// 7515 7.2.2) with exactly the members "protected", "payload",
    /// "signature" (the general serialization with "signatures" and any
    /// unprotected "header" member are refused: Malformed). protected must
    /// be base64url JSON with "alg", "url" (string), optional "nonce"
    /// (string), and exactly one of "jwk" (object) / "kid" (string) — both or
    /// neither: Malformed. Refuse any "crit" member (Malformed) and "b64":
    /// false. base64url without padding only (padding or non-url alphabet:
    /// Malformed). Body size is capped by the caller. payload "" means
    /// POST-as-GET (post_as_get = true). "alg" values other than
    /// ES256/ES384/RS256/EdDSA give Err(BadSignatureAlgorithm) already here
    /// (including "none" and HS*).
    pub fn parse(body: &[u8]) -> Result<Jws, JwsError> {
        let value = strict_json(body, "the request body")?;
        let flat = Flattened::parse(&value, "JWS")?;
        let header = &flat.header;

        let alg = header_str(header, "alg", "JWS")?
            .ok_or_else(|| malformed("the JWS protected header has no \"alg\""))?;
        if !SUPPORTED_ALGS.contains(&alg) {
            return Err(unsupported_alg(alg));
        }
        let url = header_str(header, "url", "JWS")?
            .ok_or_else(|| malformed("the JWS protected header has no \"url\""))?;
        let nonce = header_str(header, "nonce", "JWS")?;
        if let Some(nonce) = nonce {
            // RFC 8555 section 6.5.1: a nonce that is not base64url is malformed.
            if nonce.is_empty() || URL_SAFE_NO_PAD.decode(nonce).is_err() {
                return Err(malformed(format!(
                    "the JWS \"nonce\" {} is not base64url",
                    quote(nonce)
                )));
            }
        }
        let key = match (header.get("jwk"), header.get("kid")) {
            (Some(_), Some(_)) => {
                return Err(malformed(
                    "the JWS protected header has both \"jwk\" and \"kid\"; exactly one is allowed",
                ));
            }
            (None, None) => {
                return Err(malformed(
                    "the JWS protected header has neither \"jwk\" nor \"kid\"",
                ));
            }
            (Some(jwk), None) => {
                if !jwk.is_object() {
                    return Err(malformed("the JWS \"jwk\" is not a JSON object"));
                }
                KeyRef::Jwk(Jwk::from_json(jwk)?)
            }
            (None, Some(kid)) => {
                let kid = kid
                    .as_str()
                    .ok_or_else(|| malformed("the JWS \"kid\" is not a string"))?;
                if kid.is_empty() {
                    return Err(malformed("the JWS \"kid\" is empty"));
                }
                KeyRef::Kid(kid.to_owned())
            }
        };

        let post_as_get = flat.payload_b64.is_empty();
        Ok(Jws {
            protected: Protected {
                alg: alg.to_owned(),
                nonce: nonce.map(str::to_owned),
                url: url.to_owned(),
                key,
            },
            payload: flat.payload,
            post_as_get,
            signing_input: flat.signing_input,
            signature: flat.signature,
        })
    }

    /// Verifies the signature with `key` (for a kid request the caller looks
    /// up the account key).
    pub fn verify(&self, key: &Jwk) -> Result<(), JwsError> {
        key.verify(&self.protected.alg, &self.signing_input, &self.signature)
    }

    /// The payload as JSON (Malformed if it is not; POST-as-GET gives
    /// Err(Malformed) too).
    pub fn payload_json(&self) -> Result<Value, JwsError> {
        if self.post_as_get {
            return Err(malformed(
                "the request is a POST-as-GET (empty payload) where a JSON payload is required",
            ));
        }
        strict_json(&self.payload, "the JWS payload")
    }
}

/// External Account Binding (RFC 8555 7.3.4): the inner JWS from
/// newAccount's "externalAccountBinding" member.
#[derive(Debug, Clone)]
pub struct Eab {
    /// The key identifier the CA issued with the MAC key.
    pub kid: String,
    /// The MAC algorithm: HS256, HS384 or HS512.
    pub alg: String,
    /// The inner `url`.
    url: String,
    /// The JWK in the payload.
    payload_key: Jwk,
    /// protected_b64 + "." + payload_b64, exactly as received.
    signing_input: Vec<u8>,
    /// The decoded MAC.
    signature: Vec<u8>,
}

impl Eab {
    /// Parses the inner flattened JWS (a JSON value). Its protected header
    /// must have "alg" HS256/HS384/HS512 (else BadSignatureAlgorithm), "kid"
    /// (string), "url" (string), and no "nonce" (Malformed if present). Its
    /// payload must be the outer account JWK (a JSON object).
    ///
    /// A "jwk" member in the inner header is refused too (Malformed), as are
    /// "crit" and "b64": false. A payload that is an object but not a usable
    /// public key is Malformed.
    pub fn parse(v: &Value) -> Result<Eab, JwsError> {
        const WHAT: &str = "externalAccountBinding";
        let flat = Flattened::parse(v, WHAT)?;
        let header = &flat.header;

        let alg = header_str(header, "alg", WHAT)?
            .ok_or_else(|| malformed("the externalAccountBinding header has no \"alg\""))?;
        if !SUPPORTED_EAB_ALGS.contains(&alg) {
            return Err(JwsError::BadSignatureAlgorithm(format!(
                "unsupported externalAccountBinding algorithm {}; supported: {}",
                quote(alg),
                SUPPORTED_EAB_ALGS.join(", ")
            )));
        }
        if header.contains_key("nonce") {
            return Err(malformed(
                "the externalAccountBinding header must not contain a \"nonce\"",
            ));
        }
        if header.contains_key("jwk") {
            return Err(malformed(
                "the externalAccountBinding header must not contain a \"jwk\"",
            ));
        }
        let kid = header_str(header, "kid", WHAT)?
            .ok_or_else(|| malformed("the externalAccountBinding header has no \"kid\""))?;
        if kid.is_empty() {
            return Err(malformed("the externalAccountBinding \"kid\" is empty"));
        }
        let url = header_str(header, "url", WHAT)?
            .ok_or_else(|| malformed("the externalAccountBinding header has no \"url\""))?;

        let payload = strict_json(&flat.payload, "the externalAccountBinding payload")?;
        if !payload.is_object() {
            return Err(malformed(
                "the externalAccountBinding payload is not a JWK (JSON object)",
            ));
        }
        let payload_key = Jwk::from_json(&payload).map_err(|e| {
            malformed(format!(
                "the externalAccountBinding payload is not a usable JWK: {e}"
            ))
        })?;

        Ok(Eab {
            kid: kid.to_owned(),
            alg: alg.to_owned(),
            url: url.to_owned(),
            payload_key,
            signing_input: flat.signing_input,
            signature: flat.signature,
        })
    }

    /// Checks that the inner url equals `url` (the newAccount URL) and that
    /// the payload JWK equals `account_key` (compare parsed Jwk values), and
    /// the HMAC (ring::hmac HMAC_SHA256/384/512 matching alg) with `mac_key`,
    /// comparing in constant time (ring::hmac::verify does). Errors:
    /// Unauthorized(detail) for url/key mismatch and bad MAC.
    ///
    /// An empty `mac_key` is refused (Unauthorized): anyone could compute
    /// that MAC.
    pub fn verify(&self, url: &str, account_key: &Jwk, mac_key: &[u8]) -> Result<(), JwsError> {
        if self.url != url {
            return Err(JwsError::Unauthorized(format!(
                "the externalAccountBinding url {} is not the newAccount URL",
                quote(&self.url)
            )));
        }
        if &self.payload_key != account_key {
            return Err(JwsError::Unauthorized(
                "the externalAccountBinding payload is not the account key".to_owned(),
            ));
        }
        let algorithm = match self.alg.as_str() {
            "HS256" => ring::hmac::HMAC_SHA256,
            "HS384" => ring::hmac::HMAC_SHA384,
            "HS512" => ring::hmac::HMAC_SHA512,
            other => return Err(unsupported_alg(other)),
        };
        if mac_key.is_empty() {
            return Err(JwsError::Unauthorized(
                "no usable MAC key for this externalAccountBinding kid".to_owned(),
            ));
        }
        let key = ring::hmac::Key::new(algorithm, mac_key);
        ring::hmac::verify(&key, &self.signing_input, &self.signature).map_err(|_| {
            JwsError::Unauthorized("the externalAccountBinding MAC does not verify".to_owned())
        })
    }
}

/// Why a JWS was refused; each maps to an ACME error type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    /// urn:ietf:params:acme:error:malformed
    #[error("{0}")]
    Malformed(String),
    /// urn:ietf:params:acme:error:badSignatureAlgorithm
    #[error("{0}")]
    BadSignatureAlgorithm(String),
    /// The signature does not verify with the key
    /// (urn:ietf:params:acme:error:unauthorized).
    #[error("the JWS signature does not verify")]
    BadSignature,
    /// urn:ietf:params:acme:error:badPublicKey
    #[error("{0}")]
    BadPublicKey(String),
    /// urn:ietf:params:acme:error:unauthorized
    #[error("{0}")]
    Unauthorized(String),
}

impl JwsError {
    /// The ACME error type URN.
    pub fn acme_type(&self) -> &'static str {
        match self {
            JwsError::Malformed(_) => "urn:ietf:params:acme:error:malformed",
            JwsError::BadSignatureAlgorithm(_) => {
                "urn:ietf:params:acme:error:badSignatureAlgorithm"
            }
            JwsError::BadSignature | JwsError::Unauthorized(_) => {
                "urn:ietf:params:acme:error:unauthorized"
            }
            JwsError::BadPublicKey(_) => "urn:ietf:params:acme:error:badPublicKey",
        }
    }
}

/// base64url without padding, for the rest of the ACME code.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding (Malformed on anything else).
///
/// Non-canonical encodings (non-zero trailing bits) are refused too.
pub fn unb64(text: &str) -> Result<Vec<u8>, JwsError> {
    URL_SAFE_NO_PAD.decode(text).map_err(|e| {
        malformed(format!(
            "invalid base64url (unpadded, URL alphabet required): {}",
            describe_b64_error(&e)
        ))
    })
}

/// The key authorization of a challenge token for an account key: token
/// "." thumbprint (RFC 8555 8.1).
pub fn key_authorization(token: &str, key: &Jwk) -> String {
    format!("{token}.{}", key.thumbprint())
}

// ---------------------------------------------------------------------------
// Private helpers
// ---------------------------------------------------------------------------

/// The common part of a flattened JWS JSON serialization.
struct Flattened {
    /// The decoded protected header object.
    header: Map<String, Value>,
    /// The payload member as received (base64url).
    payload_b64: String,
    /// The decoded payload.
    payload: Vec<u8>,
    /// protected_b64 + "." + payload_b64.
    signing_input: Vec<u8>,
    /// The decoded signature.
    signature: Vec<u8>,
}

impl Flattened {
    /// Splits a flattened JWS object; `what` names it in error messages.
    fn parse(v: &Value, what: &str) -> Result<Flattened, JwsError> {
        let obj = v
            .as_object()
            .ok_or_else(|| malformed(format!("the {what} is not a JSON object")))?;
        for name in obj.keys() {
            match name.as_str() {
                "protected" | "payload" | "signature" => {}
                "signatures" => {
                    return Err(malformed(format!(
                        "the {what} uses the general JWS serialization (\"signatures\"); \
                         only the flattened serialization is accepted"
                    )));
                }
                "header" => {
                    return Err(malformed(format!(
                        "the {what} has an unprotected \"header\"; \
                         all header parameters must be protected"
                    )));
                }
                other => {
                    return Err(malformed(format!(
                        "the {what} has an unexpected member {}",
                        quote(other)
                    )));
                }
            }
        }
        let member = |name: &str| -> Result<&str, JwsError> {
            match obj.get(name) {
                None => Err(malformed(format!("the {what} has no \"{name}\""))),
                Some(Value::String(s)) => Ok(s.as_str()),
                Some(_) => Err(malformed(format!("the {what} \"{name}\" is not a string"))),
            }
        };
        let protected_b64 = member("protected")?;
        let payload_b64 = member("payload")?;
        let signature_b64 = member("signature")?;

        let decode = |name: &str, text: &str| -> Result<Vec<u8>, JwsError> {
            URL_SAFE_NO_PAD.decode(text).map_err(|e| {
                malformed(format!(
                    "the {what} \"{name}\" is not base64url (unpadded, URL alphabet): {}",
                    describe_b64_error(&e)
                ))
            })
        };
        if protected_b64.is_empty() {
            return Err(malformed(format!("the {what} \"protected\" is empty")));
        }
        let protected = decode("protected", protected_b64)?;
        let payload = decode("payload", payload_b64)?;
        let signature = decode("signature", signature_b64)?;
        if signature.is_empty() {
            return Err(malformed(format!("the {what} \"signature\" is empty")));
        }

        let header = match strict_json(&protected, &format!("the {what} protected header"))? {
            Value::Object(map) => map,
            _ => {
                return Err(malformed(format!(
                    "the {what} protected header is not a JSON object"
                )));
            }
        };
        if header.contains_key("crit") {
            return Err(malformed(format!(
                "the {what} protected header has \"crit\"; no critical extensions are supported"
            )));
        }
        match header.get("b64") {
            None | Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => {
                return Err(malformed(format!(
                    "the {what} uses an unencoded payload (\"b64\": false), which is not supported"
                )));
            }
            Some(_) => {
                return Err(malformed(format!(
                    "the {what} \"b64\" header is not a boolean"
                )));
            }
        }

        let mut signing_input = Vec::with_capacity(protected_b64.len() + 1 + payload_b64.len());
        signing_input.extend_from_slice(protected_b64.as_bytes());
        signing_input.push(b'.');
        signing_input.extend_from_slice(payload_b64.as_bytes());

        Ok(Flattened {
            header,
            payload_b64: payload_b64.to_owned(),
            payload,
            signing_input,
            signature,
        })
    }
}

/// A string member of a protected header: Ok(None) if absent, Malformed if
/// present but not a string.
fn header_str<'a>(
    header: &'a Map<String, Value>,
    name: &str,
    what: &str,
) -> Result<Option<&'a str>, JwsError> {
    match header.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(malformed(format!(
            "the {what} header \"{name}\" is not a string"
        ))),
    }
}

/// A required string member of a JWK.
fn jwk_str<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, JwsError> {
    match obj.get(name) {
        None => Err(bad_key(format!("the JWK has no \"{name}\""))),
        Some(Value::String(s)) => Ok(s.as_str()),
        Some(_) => Err(bad_key(format!("the JWK \"{name}\" is not a string"))),
    }
}

/// A required base64url member of a JWK, decoded.
fn jwk_bytes(obj: &Map<String, Value>, name: &str) -> Result<Vec<u8>, JwsError> {
    let text = jwk_str(obj, name)?;
    URL_SAFE_NO_PAD.decode(text).map_err(|e| {
        bad_key(format!(
            "the JWK \"{name}\" is not base64url (unpadded, URL alphabet): {}",
            describe_b64_error(&e)
        ))
    })
}

/// Drops leading zero bytes.
fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

/// The bit length of a big-endian unsigned integer without leading zeros.
fn bit_len(bytes: &[u8]) -> usize {
    match bytes.first() {
        None => 0,
        Some(first) => (bytes.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
    }
}

/// A base64 error described without echoing the input.
fn describe_b64_error(e: &base64::DecodeError) -> String {
    match e {
        base64::DecodeError::InvalidByte(offset, _) => {
            format!("invalid character at offset {offset}")
        }
        base64::DecodeError::InvalidLength(len) => format!("impossible length {len}"),
        base64::DecodeError::InvalidLastSymbol(offset, _) => {
            format!("non-canonical last character at offset {offset}")
        }
        base64::DecodeError::InvalidPadding => "padding is not allowed".to_owned(),
    }
}

/// Parses JSON refusing duplicate object members at any depth.
fn strict_json(bytes: &[u8], what: &str) -> Result<Value, JwsError> {
    serde_json::from_slice::<StrictValue>(bytes)
        .map(|v| v.0)
        .map_err(|e| {
            malformed(format!(
                "{what} is not valid JSON: {}",
                clip(&e.to_string(), 160)
            ))
        })
}

/// A JSON value deserialized with duplicate object members refused.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

/// The visitor behind [`StrictValue`].
struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = StrictValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Number(v.into())))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Number(v.into())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<StrictValue, E> {
        Ok(StrictValue(
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<StrictValue, D::Error> {
        StrictValue::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrictValue, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(StrictValue(Value::Array(out)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrictValue, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "duplicate member {}",
                    quote(&key)
                )));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(StrictValue(Value::Object(out)))
    }
}

/// Quotes attacker-supplied text for an error message, escaped and cut to
/// [`QUOTE_MAX`] characters.
fn quote(text: &str) -> String {
    let cut: String = text.chars().take(QUOTE_MAX).collect();
    if cut.len() < text.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// Cuts a message to `max` characters.
fn clip(text: &str, max: usize) -> String {
    let cut: String = text.chars().take(max).collect();
    if cut.len() < text.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// Shorthand for [`JwsError::Malformed`].
fn malformed(detail: impl Into<String>) -> JwsError {
    JwsError::Malformed(detail.into())
}

/// Shorthand for [`JwsError::BadPublicKey`].
fn bad_key(detail: impl Into<String>) -> JwsError {
    JwsError::BadPublicKey(detail.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
        Ed25519KeyPair, KeyPair, RsaKeyPair,
    };
    use serde_json::json;
    use std::sync::OnceLock;

    const URL: &str = "https://ca.example/acme/new-order";
    const NEW_ACCOUNT: &str = "https://ca.example/acme/new-account";
    const NONCE: &str = "oFvnlFP1wIhRlYS2jTaXbA";

    /// The RSA key of RFC 7638 section 3.1.
    const RFC7638_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
    const RFC7638_THUMBPRINT: &str = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";

    /// A test signer holding a real private key.
    enum Signer {
        P256(EcdsaKeyPair),
        P384(EcdsaKeyPair),
        Rsa(&'static RsaKeyPair),
        Ed(Ed25519KeyPair),
    }

    impl Signer {
        fn p256() -> Signer {
            let rng = SystemRandom::new();
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .expect("generate P-256");
            Signer::P256(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng)
                    .expect("load P-256"),
            )
        }

        fn p384() -> Signer {
            let rng = SystemRandom::new();
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
                .expect("generate P-384");
            Signer::P384(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, doc.as_ref(), &rng)
                    .expect("load P-384"),
            )
        }

        fn ed25519() -> Signer {
            let rng = SystemRandom::new();
            let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("generate Ed25519");
            Signer::Ed(Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("load Ed25519"))
        }

        /// An RSA-2048 key made by `openssl genrsa`, generated once per run.
        fn rsa() -> Signer {
            static KEY: OnceLock<RsaKeyPair> = OnceLock::new();
            Signer::Rsa(KEY.get_or_init(|| {
                let dir = std::env::temp_dir().join(format!("jws-test-rsa-{}", std::process::id()));
                std::fs::create_dir_all(&dir).expect("temp dir");
                let pem = dir.join("key.pem");
                let der = dir.join("key.p8");
                let status = std::process::Command::new("openssl")
                    .arg("genrsa")
                    .arg("-out")
                    .arg(&pem)
                    .arg("2048")
                    .stderr(std::process::Stdio::null())
                    .status()
                    .expect("run openssl genrsa");
                assert!(status.success(), "openssl genrsa failed");
                let status = std::process::Command::new("openssl")
                    .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in"])
                    .arg(&pem)
                    .arg("-out")
                    .arg(&der)
                    .status()
                    .expect("run openssl pkcs8");
                assert!(status.success(), "openssl pkcs8 failed");
                let bytes = std::fs::read(&der).expect("read DER key");
                let _ = std::fs::remove_dir_all(&dir);
                RsaKeyPair::from_pkcs8(&bytes).expect("load RSA key")
            }))
        }

        fn alg(&self) -> &'static str {
            match self {
                Signer::P256(_) => "ES256",
                Signer::P384(_) => "ES384",
                Signer::Rsa(_) => "RS256",
                Signer::Ed(_) => "EdDSA",
            }
        }

        fn jwk_json(&self) -> Value {
            match self {
                Signer::P256(k) | Signer::P384(k) => {
                    let point = k.public_key().as_ref();
                    assert_eq!(point[0], 4);
                    let half = (point.len() - 1) / 2;
                    let crv = if half == 32 { "P-256" } else { "P-384" };
                    json!({
                        "kty": "EC",
                        "crv": crv,
                        "x": b64(&point[1..=half]),
                        "y": b64(&point[1 + half..]),
                    })
                }
                Signer::Rsa(k) => {
                    let c: RsaPublicKeyComponents<Vec<u8>> = k.public().into();
                    json!({"kty": "RSA", "n": b64(&c.n), "e": b64(&c.e)})
                }
                Signer::Ed(k) => {
                    json!({"kty": "OKP", "crv": "Ed25519", "x": b64(k.public_key().as_ref())})
                }
            }
        }

        fn jwk(&self) -> Jwk {
            Jwk::from_json(&self.jwk_json()).expect("own JWK parses")
        }

        fn sign(&self, input: &[u8]) -> Vec<u8> {
            let rng = SystemRandom::new();
            match self {
                Signer::P256(k) | Signer::P384(k) => {
                    k.sign(&rng, input).expect("ECDSA sign").as_ref().to_vec()
                }
                Signer::Rsa(k) => {
                    let mut sig = vec![0; k.public().modulus_len()];
                    k.sign(&signature::RSA_PKCS1_SHA256, &rng, input, &mut sig)
                        .expect("RSA sign");
                    sig
                }
                Signer::Ed(k) => k.sign(input).as_ref().to_vec(),
            }
        }
    }

    /// The base64url parts of a signed flattened JWS.
    struct Parts {
        protected: String,
        payload: String,
        signature: String,
    }

    impl Parts {
        fn body(&self) -> Vec<u8> {
            serde_json::to_vec(&json!({
                "protected": self.protected,
                "payload": self.payload,
                "signature": self.signature,
            }))
            .expect("serialize body")
        }
    }

    /// Signs an arbitrary protected header (as raw JSON text) and payload.
    fn sign_raw(signer: &Signer, protected: &str, payload: &[u8]) -> Parts {
        let protected = b64(protected.as_bytes());
        let payload = b64(payload);
        let input = format!("{protected}.{payload}");
        Parts {
            signature: b64(&signer.sign(input.as_bytes())),
            protected,
            payload,
        }
    }

    fn sign_parts(signer: &Signer, protected: &Value, payload: &[u8]) -> Parts {
        sign_raw(signer, &protected.to_string(), payload)
    }

    /// A jwk-style header for `signer`.
    fn jwk_header(signer: &Signer) -> Value {
        json!({"alg": signer.alg(), "nonce": NONCE, "url": URL, "jwk": signer.jwk_json()})
    }

    fn kid_header(signer: &Signer) -> Value {
        json!({"alg": signer.alg(), "nonce": NONCE, "url": URL, "kid": "https://ca.example/acme/acct/1"})
    }

    const PAYLOAD: &[u8] = br#"{"identifiers":[{"type":"dns","value":"a.example"}]}"#;

    fn signed_body(signer: &Signer) -> Vec<u8> {
        sign_parts(signer, &jwk_header(signer), PAYLOAD).body()
    }

    fn assert_malformed<T: fmt::Debug>(r: Result<T, JwsError>, what: &str) {
        match r {
            Err(JwsError::Malformed(msg)) => assert!(!msg.is_empty(), "{what}: empty message"),
            other => panic!("{what}: expected Malformed, got {other:?}"),
        }
    }

    fn assert_bad_alg<T: fmt::Debug>(r: Result<T, JwsError>, what: &str) {
        assert!(
            matches!(r, Err(JwsError::BadSignatureAlgorithm(_))),
            "{what}: expected BadSignatureAlgorithm, got {r:?}"
        );
    }

    fn assert_bad_key<T: fmt::Debug>(r: Result<T, JwsError>, what: &str) {
        assert!(
            matches!(r, Err(JwsError::BadPublicKey(_))),
            "{what}: expected BadPublicKey, got {r:?}"
        );
    }

    fn assert_unauthorized<T: fmt::Debug>(r: Result<T, JwsError>, what: &str) {
        assert!(
            matches!(r, Err(JwsError::Unauthorized(_))),
            "{what}: expected Unauthorized, got {r:?}"
        );
    }

    fn check_valid(signer: &Signer) {
        let jws = Jws::parse(&signed_body(signer)).expect("parse");
        assert_eq!(jws.protected.alg, signer.alg());
        assert_eq!(jws.protected.url, URL);
        assert_eq!(jws.protected.nonce.as_deref(), Some(NONCE));
        assert_eq!(jws.protected.key, KeyRef::Jwk(signer.jwk()));
        assert!(!jws.post_as_get);
        assert_eq!(jws.payload, PAYLOAD);
        assert_eq!(
            jws.payload_json().expect("payload JSON")["identifiers"][0]["value"],
            "a.example"
        );
        jws.verify(&signer.jwk()).expect("valid signature verifies");
    }

    #[test]
    fn valid_es256_verifies() {
        check_valid(&Signer::p256());
    }

    #[test]
    fn valid_es384_verifies() {
        check_valid(&Signer::p384());
    }

    #[test]
    fn valid_rs256_verifies() {
        check_valid(&Signer::rsa());
    }

    #[test]
    fn valid_eddsa_verifies() {
        check_valid(&Signer::ed25519());
    }

    #[test]
    fn kid_request_parses_and_verifies_with_account_key() {
        let signer = Signer::p256();
        let jws =
            Jws::parse(&sign_parts(&signer, &kid_header(&signer), PAYLOAD).body()).expect("parse");
        assert_eq!(
            jws.protected.key,
            KeyRef::Kid("https://ca.example/acme/acct/1".to_owned())
        );
        jws.verify(&signer.jwk())
            .expect("verifies with account key");
        assert_eq!(
            jws.verify(&Signer::p256().jwk()),
            Err(JwsError::BadSignature)
        );
    }

    #[test]
    fn post_as_get() {
        let signer = Signer::ed25519();
        let jws =
            Jws::parse(&sign_parts(&signer, &kid_header(&signer), b"").body()).expect("parse");
        assert!(jws.post_as_get);
        assert!(jws.payload.is_empty());
        jws.verify(&signer.jwk()).expect("verifies");
        assert_malformed(jws.payload_json(), "POST-as-GET payload_json");
    }

    #[test]
    fn empty_json_object_payload_is_not_post_as_get() {
        let signer = Signer::p256();
        let jws =
            Jws::parse(&sign_parts(&signer, &kid_header(&signer), b"{}").body()).expect("parse");
        assert!(!jws.post_as_get);
        assert_eq!(jws.payload_json().expect("json"), json!({}));
    }

    #[test]
    fn nonce_is_optional() {
        let signer = Signer::p256();
        let header = json!({"alg": "ES256", "url": URL, "jwk": signer.jwk_json()});
        let jws = Jws::parse(&sign_parts(&signer, &header, PAYLOAD).body()).expect("parse");
        assert_eq!(jws.protected.nonce, None);
        jws.verify(&signer.jwk()).expect("verifies");
    }

    #[test]
    fn payload_that_is_not_json_is_malformed() {
        let signer = Signer::p256();
        let jws = Jws::parse(&sign_parts(&signer, &kid_header(&signer), b"not json").body())
            .expect("parse");
        assert_malformed(jws.payload_json(), "non-JSON payload");
        let jws =
            Jws::parse(&sign_parts(&signer, &kid_header(&signer), br#"{"a":1,"a":2}"#).body())
                .expect("parse");
        assert_malformed(jws.payload_json(), "duplicate member in payload");
    }

    #[test]
    fn tampered_payload_is_bad_signature() {
        for signer in [
            Signer::p256(),
            Signer::p384(),
            Signer::rsa(),
            Signer::ed25519(),
        ] {
            let mut parts = sign_parts(&signer, &jwk_header(&signer), PAYLOAD);
            parts.payload = b64(br#"{"identifiers":[{"type":"dns","value":"evil.example"}]}"#);
            let jws = Jws::parse(&parts.body()).expect("parse");
            assert_eq!(
                jws.verify(&signer.jwk()),
                Err(JwsError::BadSignature),
                "{}",
                signer.alg()
            );
        }
    }

    #[test]
    fn tampered_protected_is_bad_signature() {
        for signer in [
            Signer::p256(),
            Signer::p384(),
            Signer::rsa(),
            Signer::ed25519(),
        ] {
            let mut parts = sign_parts(&signer, &jwk_header(&signer), PAYLOAD);
            let mut header = jwk_header(&signer);
            header["url"] = json!("https://ca.example/acme/revoke-cert");
            parts.protected = b64(header.to_string().as_bytes());
            let jws = Jws::parse(&parts.body()).expect("parse");
            assert_eq!(jws.protected.url, "https://ca.example/acme/revoke-cert");
            assert_eq!(
                jws.verify(&signer.jwk()),
                Err(JwsError::BadSignature),
                "{}",
                signer.alg()
            );
        }
    }

    #[test]
    fn tampered_signature_is_bad_signature() {
        for signer in [
            Signer::p256(),
            Signer::p384(),
            Signer::rsa(),
            Signer::ed25519(),
        ] {
            let mut parts = sign_parts(&signer, &jwk_header(&signer), PAYLOAD);
            let mut sig = unb64(&parts.signature).expect("sig");
            sig[5] ^= 0x01;
            parts.signature = b64(&sig);
            let jws = Jws::parse(&parts.body()).expect("parse");
            assert_eq!(jws.verify(&signer.jwk()), Err(JwsError::BadSignature));
            // A truncated signature is also just a bad signature.
            sig.pop();
            parts.signature = b64(&sig);
            let jws = Jws::parse(&parts.body()).expect("parse");
            assert_eq!(jws.verify(&signer.jwk()), Err(JwsError::BadSignature));
        }
    }

    #[test]
    fn wrong_key_is_bad_signature() {
        let pairs = [
            (Signer::p256(), Signer::p256()),
            (Signer::p384(), Signer::p384()),
            (Signer::ed25519(), Signer::ed25519()),
        ];
        for (signer, other) in pairs {
            let jws = Jws::parse(&signed_body(&signer)).expect("parse");
            assert_eq!(jws.verify(&other.jwk()), Err(JwsError::BadSignature));
        }
        // RSA: a valid 2048-bit modulus that is not the signer's.
        let jws = Jws::parse(&signed_body(&Signer::rsa())).expect("parse");
        let other = Jwk::from_json(&json!({"kty": "RSA", "n": RFC7638_N, "e": "AQAB"}))
            .expect("RFC 7638 key");
        assert_eq!(jws.verify(&other), Err(JwsError::BadSignature));
    }

    #[test]
    fn alg_none_and_hmac_are_bad_signature_algorithm() {
        let signer = Signer::p256();
        for alg in [
            "none", "HS256", "HS384", "HS512", "PS256", "ES512", "es256", "",
        ] {
            let mut header = jwk_header(&signer);
            header["alg"] = json!(alg);
            let mut parts = sign_parts(&signer, &header, PAYLOAD);
            assert_bad_alg(Jws::parse(&parts.body()), alg);
            if alg == "none" {
                // The classic "none" attack with an empty signature is refused too.
                parts.signature = String::new();
                assert!(Jws::parse(&parts.body()).is_err());
            }
        }
        for alg in ["none", "HS256", "RS512"] {
            assert_bad_alg(signer.jwk().verify(alg, b"x", b"y"), alg);
        }
    }

    #[test]
    fn alg_not_fitting_key_is_bad_signature_algorithm() {
        // RS256 header, EC key: parses (the alg is supported), refused on verify.
        let ec = Signer::p256();
        let mut header = jwk_header(&ec);
        header["alg"] = json!("RS256");
        let jws = Jws::parse(&sign_parts(&ec, &header, PAYLOAD).body()).expect("parse");
        assert_bad_alg(jws.verify(&ec.jwk()), "RS256 with EC key");

        // ES256 with a P-384 key.
        let p384 = Signer::p384();
        let mut header = jwk_header(&p384);
        header["alg"] = json!("ES256");
        let jws = Jws::parse(&sign_parts(&p384, &header, PAYLOAD).body()).expect("parse");
        assert_bad_alg(jws.verify(&p384.jwk()), "ES256 with P-384 key");

        // ES384 with P-256, EdDSA with RSA, RS256 with Ed25519.
        assert_bad_alg(ec.jwk().verify("ES384", b"x", &[0; 96]), "ES384 with P-256");
        assert_bad_alg(
            Signer::rsa().jwk().verify("EdDSA", b"x", &[0; 64]),
            "EdDSA with RSA",
        );
        assert_bad_alg(
            Signer::ed25519().jwk().verify("RS256", b"x", &[0; 256]),
            "RS256 with Ed25519",
        );
    }

    #[test]
    fn jwk_verify_direct() {
        let signer = Signer::p384();
        let sig = signer.sign(b"hello");
        signer
            .jwk()
            .verify("ES384", b"hello", &sig)
            .expect("verifies");
        assert_eq!(
            signer.jwk().verify("ES384", b"hellp", &sig),
            Err(JwsError::BadSignature)
        );
        // An ASN.1 DER signature instead of r||s is not accepted.
        assert_eq!(
            signer.jwk().verify("ES384", b"hello", &sig[..90]),
            Err(JwsError::BadSignature)
        );
    }

    #[test]
    fn both_jwk_and_kid_is_malformed() {
        let signer = Signer::p256();
        let mut header = jwk_header(&signer);
        header["kid"] = json!("https://ca.example/acme/acct/1");
        assert_malformed(
            Jws::parse(&sign_parts(&signer, &header, PAYLOAD).body()),
            "both jwk and kid",
        );
    }

    #[test]
    fn neither_jwk_nor_kid_is_malformed() {
        let signer = Signer::p256();
        let header = json!({"alg": "ES256", "nonce": NONCE, "url": URL});
        assert_malformed(
            Jws::parse(&sign_parts(&signer, &header, PAYLOAD).body()),
            "neither jwk nor kid",
        );
    }

    #[test]
    fn jwk_and_kid_of_wrong_type_are_malformed() {
        let signer = Signer::p256();
        let mut header = kid_header(&signer);
        header["kid"] = json!(7);
        assert_malformed(
            Jws::parse(&sign_parts(&signer, &header, PAYLOAD).body()),
            "numeric kid",
        );
        header["kid"] = json!("");
        assert_malformed(
            Jws::parse(&sign_parts(&signer, &header, PAYLOAD).body()),
            "empty kid",
        );
        let mut header = jwk_header(&signer);
        header["jwk"] = json!("not an object");
        assert_malformed(
            Jws::parse(&sign_parts(&signer, &header, PAYLOAD).body()),
            "string jwk",
        );
    }

    #[test]
    fn general_serialization_is_malformed() {
        let signer = Signer::p256();
        let parts = sign_parts(&signer, &jwk_header(&signer), PAYLOAD);
        let body = json!({
            "payload": parts.payload,
            "signatures": [{"protected": parts.protected, "signature": parts.signature}],
        });
        assert_malformed(
            Jws::parse(body.to_string().as_bytes()),
            "general serialization",
        );
        // Even alongside the flattened members.
        let body = json!({
            "protected": parts.protected,
            "payload": parts.payload,
            "signature": parts.signature,
            "signatures": [],
        });
        assert_malformed(Jws::parse(body.to_string().as_bytes()), "signatures + flat");
    }

    #[test]
    fn unprotected_header_and_extra_members_are_malformed() {
        let signer = Signer::p256();
        let parts = sign_parts(&signer, &jwk_header(&signer), PAYLOAD);
        for (name, value) in [("header", json!({"kid": "x"})), ("extra", json!(1))] {
            let mut body: Value = serde_json::from_slice(&parts.body()).expect("json");
            body[name] = value;
            assert_malformed(Jws::parse(body.to_string().as_bytes()), name);
        }
    }

    #[test]
    fn missing_or_non_string_members_are_malformed() {
        let signer = Signer::p256();
        let parts = sign_parts(&signer, &jwk_header(&signer), PAYLOAD);
        for name in ["protected", "payload", "signature"] {
            let mut body: Value = serde_json::from_slice(&parts.body()).expect("json");
            body.as_object_mut().expect("object").remove(name);
            assert_malformed(Jws::parse(body.to_string().as_bytes()), name);
            body[name] = json!(42);
            assert_malformed(Jws::parse(body.to_string().as_bytes()), name);
        }
    }

    #[test]
    fn body_that_is_not_a_json_object_is_malformed() {
        for body in [
            &b""[..],
            b"[]",
            b"\"x\"",
            b"{",
            b"null",
            b"{}x",
            b"\xff\xfe",
        ] {
            assert_malformed(Jws::parse(body), &String::from_utf8_lossy(body));
        }
        // Compact serialization is not accepted either.
        let signer = Signer::p256();
        let parts = sign_parts(&signer, &jwk_header(&signer), PAYLOAD);
        let compact = format!("{}.{}.{}", parts.protected, parts.payload, parts.signature);
        assert_malformed(Jws::parse(compact.as_bytes()), "compact");
    }

    #[test]
    fn duplicate_members_are_malformed() {
        let signer = Signer::p256();
        let parts = sign_parts(&signer, &jwk_header(&signer), PAYLOAD);
        let body = format!(
            r#"{{"protected":"{}","payload":"{}","payload":"","signature":"{}"}}"#,
            parts.protected, parts.payload, parts.signature
        );
        assert_malformed(Jws::parse(body.as_bytes()), "duplicate top-level member");

        let jwk = signer.jwk_json().to_string();
        let header = format!(
            r#"{{"alg":"ES256","alg":"none","nonce":"{NONCE}","url":"{URL}","jwk":{jwk}}}"#
        );
        assert_malformed(
            Jws::parse(&sign_raw(&signer, &header, PAYLOAD).body()),
            "duplicate alg",
        );
        let header = format!(
            r#"{{"alg":"ES256","nonce":"{NONCE}","url":"{URL}","jwk":{{"kty":"EC","kty":"EC","crv":"P-256","x":"{}","y":"{}"}}}}"#,
            signer.jwk_json()["x"].as_str().expect("x"),
            signer.jwk_json()["y"].as_str().expect("y"),
        );
        assert_malformed(
            Jws::parse(&sign_raw(&signer, &header, PAYLOAD).body()),
            "duplicate member inside jwk",
        );
    }

    #[test]
    fn padding_in_base64_is_malformed() {
        let signer = Signer::p256();
        // A header whose base64url needs padding: pad it.
        let mut header = jwk_header(&signer);
        for extra in ["", "a", "ab"] {
            header["x-pad"] = json!(extra);
            if !header.to_string().len().is_multiple_of(3) {
                break;
            }
        }
        let mut parts = sign_parts(&signer, &header, PAYLOAD);
        assert!(
            !parts.protected.len().is_multiple_of(4),
            "test needs a padded length"
        );
        Jws::parse(&parts.body()).expect("unpadded version parses");
        while !parts.protected.len().is_multiple_of(4) {
            parts.protected.push('=');
        }
        assert_malformed(Jws::parse(&parts.body()), "padded protected");

        // Padded signature (64-byte ES256 signatures need "==").
        let mut parts = sign_parts(&signer, &jwk_header(&signer), PAYLOAD);
        assert_eq!(parts.signature.len() % 4, 2);
        parts.signature.push_str("==");
        assert_malformed(Jws::parse(&parts.body()), "padded signature");

        // Padded payload.
        let mut parts = sign_parts(&signer, &jwk_header(&signer), b"{}");
        parts.payload.push('=');
        assert_malformed(Jws::parse(&parts.body()), "padded payload");
    }

    #[test]
    fn standard_alphabet_base64_is_malformed() {
        let signer = Signer::p256();
        // Find a signature whose url-safe encoding contains '-' or '_'.
        for _ in 0..200 {
            let mut parts = sign_parts(&signer, &jwk_header(&signer), PAYLOAD);
            if parts.signature.contains(['-', '_']) {
                parts.signature = parts.signature.replace('-', "+").replace('_', "/");
                assert_malformed(Jws::parse(&parts.body()), "standard alphabet");
                return;
            }
        }
        panic!("no signature with '-' or '_' in 200 tries");
    }

    #[test]
    fn crit_and_b64_false_are_malformed() {
        let signer = Signer::p256();
        let mut header = jwk_header(&signer);
        header["crit"] = json!(["b64"]);
        header["b64"] = json!(false);
        assert_malformed(
            Jws::parse(&sign_parts(&signer, &header, PAYLOAD).body()),
            "crit+b64",
        );
        let mut header = jwk_header(&signer);
        header["crit"] = json!(["exp"]);
        assert_malformed(
            Jws::parse(&sign_parts(&signer, &header, PAYLOAD).body()),
            "crit",
        );
        let mut header = jwk_header(&signer);
        header["b64"] = json!(false);
        assert_malformed(
            Jws::parse(&sign_parts(&signer, &header, PAYLOAD).body()),
            "b64 false",
        );
        header["b64"] = json!(true);
        Jws::parse(&sign_parts(&signer, &header, PAYLOAD).body()).expect("b64 true is harmless");
    }

    #[test]
    fn missing_alg_or_url_is_malformed() {
        let signer = Signer::p256();
        for name in ["url", "alg"] {
            let mut header = jwk_header(&signer);
            header.as_object_mut().expect("object").remove(name);
            assert_malformed(
                Jws::parse(&sign_parts(&signer, &header, PAYLOAD).body()),
                name,
            );
            header[name] = json!(1);
            assert_malformed(
                Jws::parse(&sign_parts(&signer, &header, PAYLOAD).body()),
                name,
            );
        }
    }

    #[test]
    fn bad_nonce_is_malformed() {
        let signer = Signer::p256();
        for nonce in [json!(5), json!("not+base64"), json!("abc="), json!("")] {
            let mut header = jwk_header(&signer);
            header["nonce"] = nonce.clone();
            assert_malformed(
                Jws::parse(&sign_parts(&signer, &header, PAYLOAD).body()),
                &nonce.to_string(),
            );
        }
    }

    #[test]
    fn protected_header_not_an_object_is_malformed() {
        let signer = Signer::p256();
        for header in ["[]", "\"ES256\"", "{", ""] {
            assert_malformed(
                Jws::parse(&sign_raw(&signer, header, PAYLOAD).body()),
                header,
            );
        }
    }

    #[test]
    fn private_jwk_is_bad_public_key() {
        // The "d" of an EC key; also an OKP key.
        let signer = Signer::p256();
        let mut jwk = signer.jwk_json();
        jwk["d"] = json!(b64(&[7; 32]));
        assert_bad_key(Jwk::from_json(&jwk), "EC with d");
        let mut header = jwk_header(&signer);
        header["jwk"] = jwk;
        assert_bad_key(
            Jws::parse(&sign_parts(&signer, &header, PAYLOAD).body()),
            "JWS with private jwk",
        );
        let mut jwk = Signer::ed25519().jwk_json();
        jwk["d"] = json!(b64(&[7; 32]));
        assert_bad_key(Jwk::from_json(&jwk), "OKP with d");
        let mut jwk = json!({"kty": "RSA", "n": RFC7638_N, "e": "AQAB"});
        jwk["p"] = json!("AQAB");
        assert_bad_key(Jwk::from_json(&jwk), "RSA with p");
    }

    #[test]
    fn unknown_kty_or_crv_is_bad_public_key() {
        let x = b64(&[1; 32]);
        for jwk in [
            json!({"kty": "oct", "k": "AAAA"}),
            json!({"kty": "ec", "crv": "P-256", "x": x, "y": x}),
            json!({"crv": "P-256", "x": x, "y": x}),
            json!({"kty": "EC", "crv": "P-521", "x": b64(&[1; 66]), "y": b64(&[1; 66])}),
            json!({"kty": "EC", "crv": "secp256k1", "x": x, "y": x}),
            json!({"kty": "EC", "x": x, "y": x}),
            json!({"kty": "OKP", "crv": "X25519", "x": x}),
            json!({"kty": "OKP", "crv": "Ed448", "x": b64(&[1; 57])}),
            json!({"kty": 3}),
            json!("not an object"),
        ] {
            assert_bad_key(Jwk::from_json(&jwk), &jwk.to_string());
        }
    }

    #[test]
    fn wrong_coordinate_lengths_are_bad_public_key() {
        let c31 = b64(&[1; 31]);
        let c32 = b64(&[1; 32]);
        let c33 = b64(&[1; 33]);
        let c48 = b64(&[1; 48]);
        for jwk in [
            json!({"kty": "EC", "crv": "P-256", "x": c31, "y": c32}),
            json!({"kty": "EC", "crv": "P-256", "x": c32, "y": c33}),
            json!({"kty": "EC", "crv": "P-256", "x": c48, "y": c48}),
            json!({"kty": "EC", "crv": "P-384", "x": c32, "y": c32}),
            json!({"kty": "EC", "crv": "P-384", "x": c48}),
            json!({"kty": "EC", "crv": "P-256", "x": "!!", "y": c32}),
            json!({"kty": "OKP", "crv": "Ed25519", "x": c31}),
            json!({"kty": "OKP", "crv": "Ed25519", "x": c33}),
        ] {
            assert_bad_key(Jwk::from_json(&jwk), &jwk.to_string());
        }
        // Exact lengths parse (including a leading zero in a coordinate).
        let mut x = vec![1; 32];
        x[0] = 0;
        assert!(
            Jwk::from_json(&json!({"kty": "EC", "crv": "P-256", "x": b64(&x), "y": c32})).is_ok()
        );
        assert!(Jwk::from_json(&json!({"kty": "EC", "crv": "P-384", "x": c48, "y": c48})).is_ok());
    }

    /// An odd modulus of `bits` bits.
    fn modulus(bits: usize) -> Vec<u8> {
        let mut n = vec![0xa5; bits.div_ceil(8)];
        let top = bits % 8;
        n[0] = if top == 0 { 0x80 } else { 1 << (top - 1) };
        if let Some(last) = n.last_mut() {
            *last |= 1;
        }
        assert_eq!(bit_len(&n), bits);
        n
    }

    #[test]
    fn rsa_size_and_exponent_limits() {
        let rsa =
            |n: &[u8], e: &[u8]| Jwk::from_json(&json!({"kty": "RSA", "n": b64(n), "e": b64(e)}));
        let f4 = [1, 0, 1];
        assert!(rsa(&modulus(2048), &f4).is_ok());
        assert!(rsa(&modulus(8192), &f4).is_ok());
        assert!(rsa(&modulus(3072), &f4).is_ok());
        assert_bad_key(rsa(&modulus(2047), &f4), "2047 bits");
        assert_bad_key(rsa(&modulus(1024), &f4), "1024 bits");
        assert_bad_key(rsa(&modulus(8193), &f4), "8193 bits");
        assert_bad_key(rsa(&[], &f4), "empty modulus");
        let mut even = modulus(2048);
        if let Some(last) = even.last_mut() {
            *last &= 0xfe;
        }
        assert_bad_key(rsa(&even, &f4), "even modulus");
        assert_bad_key(rsa(&modulus(2048), &[1, 0, 0]), "even exponent");
        assert_bad_key(rsa(&modulus(2048), &[3]), "e = 3");
        assert_bad_key(rsa(&modulus(2048), &[1]), "e = 1");
        assert_bad_key(rsa(&modulus(2048), &[]), "empty exponent");
        assert_bad_key(rsa(&modulus(2048), &[0]), "e = 0");
        assert_bad_key(rsa(&modulus(2048), &[2, 0, 0, 0, 1]), "e = 2^33 + 1");
        assert_bad_key(rsa(&modulus(2048), &[1; 9]), "9-byte exponent");
        assert!(rsa(&modulus(2048), &[1, 0xff, 0xff, 0xff, 0xff]).is_ok());
        // A 1024-bit modulus padded with zeros to 2048 bits is still 1024 bits.
        let mut padded = vec![0; 128];
        padded.extend_from_slice(&modulus(1024));
        assert_bad_key(rsa(&padded, &f4), "zero-padded 1024-bit modulus");
    }

    #[test]
    fn rsa_leading_zeros_are_stripped() {
        let n = unb64(RFC7638_N).expect("n");
        let mut padded_n = vec![0];
        padded_n.extend_from_slice(&n);
        let plain =
            Jwk::from_json(&json!({"kty": "RSA", "n": RFC7638_N, "e": "AQAB"})).expect("plain");
        let padded =
            Jwk::from_json(&json!({"kty": "RSA", "n": b64(&padded_n), "e": b64(&[0, 1, 0, 1])}))
                .expect("padded");
        assert_eq!(plain, padded);
        assert_eq!(padded.thumbprint(), RFC7638_THUMBPRINT);
        // Real signatures still verify with a zero-prefixed modulus.
        let signer = Signer::rsa();
        let mut jwk = signer.jwk_json();
        let mut n = vec![0];
        n.extend(unb64(jwk["n"].as_str().expect("n")).expect("n"));
        jwk["n"] = json!(b64(&n));
        let key = Jwk::from_json(&jwk).expect("parse");
        let sig = signer.sign(b"msg");
        key.verify("RS256", b"msg", &sig).expect("verifies");
    }

    #[test]
    fn rfc7638_thumbprint() {
        let jwk = Jwk::from_json(&json!({
            "kty": "RSA",
            "n": RFC7638_N,
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29",
        }))
        .expect("RFC 7638 key");
        assert_eq!(
            jwk.canonical_json(),
            format!(r#"{{"e":"AQAB","kty":"RSA","n":"{RFC7638_N}"}}"#)
        );
        assert_eq!(jwk.thumbprint(), RFC7638_THUMBPRINT);
    }

    #[test]
    fn rfc8037_ed25519_thumbprint() {
        // RFC 8037 appendix A.3.
        let jwk = Jwk::from_json(&json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
        }))
        .expect("RFC 8037 key");
        assert_eq!(
            jwk.canonical_json(),
            r#"{"crv":"Ed25519","kty":"OKP","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#
        );
        assert_eq!(
            jwk.thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn ec_canonical_json_and_thumbprint() {
        let x = b64(&[0x11; 48]);
        let y = b64(&[0x22; 48]);
        let jwk =
            Jwk::from_json(&json!({"y": y, "x": x, "use": "sig", "crv": "P-384", "kty": "EC"}))
                .expect("parse");
        let canonical = format!(r#"{{"crv":"P-384","kty":"EC","x":"{x}","y":"{y}"}}"#);
        assert_eq!(jwk.canonical_json(), canonical);
        let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
        assert_eq!(jwk.thumbprint(), b64(digest.as_ref()));
        assert_eq!(jwk.thumbprint().len(), 43);
        // Thumbprints of different keys differ.
        assert_ne!(
            Signer::p256().jwk().thumbprint(),
            Signer::p256().jwk().thumbprint()
        );
    }

    #[test]
    fn key_authorization_format() {
        let jwk = Jwk::from_json(&json!({"kty": "RSA", "n": RFC7638_N, "e": "AQAB"}))
            .expect("RFC 7638 key");
        assert_eq!(
            key_authorization("evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA", &jwk),
            format!("evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.{RFC7638_THUMBPRINT}")
        );
        let ed = Signer::ed25519().jwk();
        assert_eq!(
            key_authorization("tok", &ed),
            format!("tok.{}", ed.thumbprint())
        );
    }

    #[test]
    fn b64_round_trip_and_strictness() {
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 250) as u8).collect();
            let text = b64(&bytes);
            assert!(!text.contains(['=', '+', '/']));
            assert_eq!(unb64(&text).expect("round trip"), bytes);
        }
        assert_eq!(b64(&[0xfb, 0xff]), "-_8");
        assert_eq!(unb64("-_8").expect("url alphabet"), vec![0xfb, 0xff]);
        assert_eq!(unb64("").expect("empty"), Vec::<u8>::new());
        for bad in [
            "+/8", "-_8=", "QQ==", "QQ=", "QR", "Q", "QQ QQ", "QQ\n", "é",
        ] {
            assert_malformed(unb64(bad), bad);
        }
    }

    #[test]
    fn acme_types() {
        assert_eq!(
            malformed("x").acme_type(),
            "urn:ietf:params:acme:error:malformed"
        );
        assert_eq!(
            JwsError::BadSignatureAlgorithm("x".into()).acme_type(),
            "urn:ietf:params:acme:error:badSignatureAlgorithm"
        );
        assert_eq!(
            JwsError::BadSignature.acme_type(),
            "urn:ietf:params:acme:error:unauthorized"
        );
        assert_eq!(
            bad_key("x").acme_type(),
            "urn:ietf:params:acme:error:badPublicKey"
        );
        assert_eq!(
            JwsError::Unauthorized("x".into()).acme_type(),
            "urn:ietf:params:acme:error:unauthorized"
        );
        assert_eq!(
            JwsError::BadSignature.to_string(),
            "the JWS signature does not verify"
        );
    }

    #[test]
    fn error_messages_do_not_echo_large_input() {
        let huge = "A".repeat(10_000);
        let signer = Signer::p256();
        let mut header = jwk_header(&signer);
        header["alg"] = json!(huge);
        let err = Jws::parse(&sign_parts(&signer, &header, PAYLOAD).body()).expect_err("alg");
        assert!(matches!(err, JwsError::BadSignatureAlgorithm(_)));
        assert!(err.to_string().len() < 200, "{}", err.to_string().len());
        assert!(
            err.to_string().contains("ES256"),
            "names the supported algs"
        );

        let err = Jwk::from_json(&json!({"kty": huge})).expect_err("kty");
        assert!(err.to_string().len() < 200);
        let err = Jwk::from_json(&json!({"kty": "EC", "crv": huge})).expect_err("crv");
        assert!(err.to_string().len() < 200);

        let mut body: Value = serde_json::from_slice(&signed_body(&signer)).expect("json");
        body[huge.as_str()] = json!(1);
        let err = Jws::parse(body.to_string().as_bytes()).expect_err("member");
        assert!(err.to_string().len() < 200);

        let mut header = jwk_header(&signer);
        header["nonce"] = json!(format!("{huge}!"));
        let err = Jws::parse(&sign_parts(&signer, &header, PAYLOAD).body()).expect_err("nonce");
        assert!(err.to_string().len() < 200);

        let err =
            Jws::parse(format!("{{\"{huge}\":1,\"{huge}\":2}}").as_bytes()).expect_err("duplicate");
        assert!(err.to_string().len() < 300, "{}", err.to_string().len());

        let err = unb64(&format!("{huge}=")).expect_err("padding");
        assert!(err.to_string().len() < 200);
        let err = Jws::parse(format!("[\"{huge}\" x]").as_bytes()).expect_err("syntax");
        assert!(err.to_string().len() < 300);
        // Non-ASCII text is cut on a character boundary.
        let err = Jwk::from_json(&json!({"kty": "é".repeat(1000)})).expect_err("utf8");
        assert!(err.to_string().contains('…'));
    }

    // ---- External Account Binding ----

    const EAB_KID: &str = "kid-1";
    const MAC_KEY: &[u8] = b"an HMAC key the CA issued, 32 bytes+";

    fn eab_value(alg: &str, protected: &Value, payload: &Value, mac_key: &[u8]) -> Value {
        let protected = b64(protected.to_string().as_bytes());
        let payload = b64(payload.to_string().as_bytes());
        let algorithm = match alg {
            "HS384" => ring::hmac::HMAC_SHA384,
            "HS512" => ring::hmac::HMAC_SHA512,
            _ => ring::hmac::HMAC_SHA256,
        };
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(algorithm, mac_key),
            format!("{protected}.{payload}").as_bytes(),
        );
        json!({"protected": protected, "payload": payload, "signature": b64(tag.as_ref())})
    }

    fn eab_for(signer: &Signer, alg: &str) -> Value {
        eab_value(
            alg,
            &json!({"alg": alg, "kid": EAB_KID, "url": NEW_ACCOUNT}),
            &signer.jwk_json(),
            MAC_KEY,
        )
    }

    #[test]
    fn eab_valid_hs256_verifies() {
        let signer = Signer::p256();
        let eab = Eab::parse(&eab_for(&signer, "HS256")).expect("parse");
        assert_eq!(eab.kid, EAB_KID);
        assert_eq!(eab.alg, "HS256");
        eab.verify(NEW_ACCOUNT, &signer.jwk(), MAC_KEY)
            .expect("valid binding verifies");
    }

    #[test]
    fn eab_valid_hs384_and_hs512_verify() {
        let signer = Signer::ed25519();
        for alg in ["HS384", "HS512"] {
            let eab = Eab::parse(&eab_for(&signer, alg)).expect("parse");
            assert_eq!(eab.alg, alg);
            eab.verify(NEW_ACCOUNT, &signer.jwk(), MAC_KEY).expect(alg);
        }
    }

    #[test]
    fn eab_alg_mismatch_between_header_and_mac_fails() {
        // Header says HS512, MAC computed with HS256.
        let signer = Signer::p256();
        let v = eab_value(
            "HS256",
            &json!({"alg": "HS512", "kid": EAB_KID, "url": NEW_ACCOUNT}),
            &signer.jwk_json(),
            MAC_KEY,
        );
        let eab = Eab::parse(&v).expect("parse");
        assert_unauthorized(
            eab.verify(NEW_ACCOUNT, &signer.jwk(), MAC_KEY),
            "alg mismatch",
        );
    }

    #[test]
    fn eab_wrong_mac_key_is_unauthorized() {
        let signer = Signer::p256();
        let eab = Eab::parse(&eab_for(&signer, "HS256")).expect("parse");
        assert_unauthorized(
            eab.verify(NEW_ACCOUNT, &signer.jwk(), b"another key entirely"),
            "wrong MAC key",
        );
        assert_unauthorized(eab.verify(NEW_ACCOUNT, &signer.jwk(), b""), "empty MAC key");
    }

    #[test]
    fn eab_tampered_mac_is_unauthorized() {
        let signer = Signer::p256();
        let mut v = eab_for(&signer, "HS256");
        let mut tag = unb64(v["signature"].as_str().expect("sig")).expect("tag");
        tag[0] ^= 0x80;
        v["signature"] = json!(b64(&tag));
        let eab = Eab::parse(&v).expect("parse");
        assert_unauthorized(
            eab.verify(NEW_ACCOUNT, &signer.jwk(), MAC_KEY),
            "tampered MAC",
        );
    }

    #[test]
    fn eab_wrong_url_is_unauthorized() {
        let signer = Signer::p256();
        let eab = Eab::parse(&eab_for(&signer, "HS256")).expect("parse");
        assert_unauthorized(
            eab.verify("https://ca.example/acme/new-acct", &signer.jwk(), MAC_KEY),
            "wrong url",
        );
    }

    #[test]
    fn eab_different_account_key_is_unauthorized() {
        let signer = Signer::p256();
        let eab = Eab::parse(&eab_for(&signer, "HS256")).expect("parse");
        assert_unauthorized(
            eab.verify(NEW_ACCOUNT, &Signer::p256().jwk(), MAC_KEY),
            "different account key",
        );
        assert_unauthorized(
            eab.verify(NEW_ACCOUNT, &Signer::ed25519().jwk(), MAC_KEY),
            "different key type",
        );
    }

    #[test]
    fn eab_payload_key_compares_parsed_values() {
        // Member order and extra members in the payload JWK do not matter.
        let signer = Signer::p256();
        let jwk = signer.jwk_json();
        let payload =
            json!({"y": jwk["y"], "use": "sig", "x": jwk["x"], "kty": "EC", "crv": "P-256"});
        let v = eab_value(
            "HS256",
            &json!({"alg": "HS256", "kid": EAB_KID, "url": NEW_ACCOUNT}),
            &payload,
            MAC_KEY,
        );
        Eab::parse(&v)
            .expect("parse")
            .verify(NEW_ACCOUNT, &signer.jwk(), MAC_KEY)
            .expect("verifies");
    }

    #[test]
    fn eab_nonce_is_malformed() {
        let signer = Signer::p256();
        let v = eab_value(
            "HS256",
            &json!({"alg": "HS256", "kid": EAB_KID, "url": NEW_ACCOUNT, "nonce": NONCE}),
            &signer.jwk_json(),
            MAC_KEY,
        );
        assert_malformed(Eab::parse(&v), "EAB nonce");
    }

    #[test]
    fn eab_rs256_and_other_algs_are_bad_signature_algorithm() {
        let signer = Signer::p256();
        for alg in ["RS256", "ES256", "none", "HS1", ""] {
            let v = eab_value(
                "HS256",
                &json!({"alg": alg, "kid": EAB_KID, "url": NEW_ACCOUNT}),
                &signer.jwk_json(),
                MAC_KEY,
            );
            assert_bad_alg(Eab::parse(&v), alg);
        }
    }

    #[test]
    fn eab_structure_errors_are_malformed() {
        let signer = Signer::p256();
        let jwk = signer.jwk_json();
        let cases = [
            (
                "no kid",
                json!({"alg": "HS256", "url": NEW_ACCOUNT}),
                jwk.clone(),
            ),
            (
                "numeric kid",
                json!({"alg": "HS256", "kid": 1, "url": NEW_ACCOUNT}),
                jwk.clone(),
            ),
            (
                "no url",
                json!({"alg": "HS256", "kid": EAB_KID}),
                jwk.clone(),
            ),
            (
                "crit",
                json!({"alg": "HS256", "kid": EAB_KID, "url": NEW_ACCOUNT, "crit": ["x"]}),
                jwk.clone(),
            ),
            (
                "jwk in header",
                json!({"alg": "HS256", "kid": EAB_KID, "url": NEW_ACCOUNT, "jwk": jwk.clone()}),
                jwk.clone(),
            ),
            (
                "payload array",
                json!({"alg": "HS256", "kid": EAB_KID, "url": NEW_ACCOUNT}),
                json!([1]),
            ),
            (
                "payload string",
                json!({"alg": "HS256", "kid": EAB_KID, "url": NEW_ACCOUNT}),
                json!("jwk"),
            ),
            (
                "payload not a key",
                json!({"alg": "HS256", "kid": EAB_KID, "url": NEW_ACCOUNT}),
                json!({"kty": "oct", "k": "AAAA"}),
            ),
        ];
        for (what, protected, payload) in cases {
            assert_malformed(
                Eab::parse(&eab_value("HS256", &protected, &payload, MAC_KEY)),
                what,
            );
        }
        let good = eab_for(&signer, "HS256");
        assert_malformed(Eab::parse(&json!("string")), "not an object");
        let general = json!({"payload": good["payload"], "signatures": [{"protected": good["protected"], "signature": good["signature"]}]});
        assert_malformed(Eab::parse(&general), "general serialization");
        let mut with_header = good.clone();
        with_header["header"] = json!({"kid": EAB_KID});
        assert_malformed(Eab::parse(&with_header), "unprotected header");
        let mut padded = good;
        padded["signature"] = json!(format!(
            "{}=",
            padded["signature"].as_str().expect("signature")
        ));
        assert_malformed(Eab::parse(&padded), "padded signature");
        // Raw (non-JSON) payload.
        let protected = b64(json!({"alg": "HS256", "kid": EAB_KID, "url": NEW_ACCOUNT})
            .to_string()
            .as_bytes());
        let v = json!({"protected": protected, "payload": b64(b"raw"), "signature": b64(&[1; 32])});
        assert_malformed(Eab::parse(&v), "non-JSON payload");
    }

    #[test]
    fn new_account_with_eab_end_to_end() {
        let signer = Signer::p384();
        let payload = json!({
            "termsOfServiceAgreed": true,
            "contact": ["mailto:ops@example.org"],
            "externalAccountBinding": eab_for(&signer, "HS256"),
        });
        let header =
            json!({"alg": "ES384", "nonce": NONCE, "url": NEW_ACCOUNT, "jwk": signer.jwk_json()});
        let body = sign_parts(&signer, &header, payload.to_string().as_bytes()).body();

        let jws = Jws::parse(&body).expect("parse");
        let KeyRef::Jwk(account_key) = &jws.protected.key else {
            panic!("newAccount must carry a jwk");
        };
        jws.verify(account_key).expect("outer signature");
        let payload = jws.payload_json().expect("payload");
        let eab = Eab::parse(&payload["externalAccountBinding"]).expect("EAB");
        assert_eq!(eab.kid, EAB_KID);
        eab.verify(&jws.protected.url, account_key, MAC_KEY)
            .expect("binding");
        assert_eq!(
            key_authorization("tok", account_key),
            format!("tok.{}", signer.jwk().thumbprint())
        );
    }
}
