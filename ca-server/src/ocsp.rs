//! OCSP (RFC 6960) request parsing and response signing.
//!
//! A pure codec: no I/O, no clock, no store. [`parse_request`] turns request DER into CertIDs and
//! an optional nonce, refusing oversized or malformed input with an error (never a panic);
//! [`build_response`] signs a `BasicOCSPResponse` with the issuing CA's key, echoing each CertID
//! and the nonce byte for byte; [`error_response`] renders the unsigned error statuses.

use ring::digest;
use time::{OffsetDateTime, UtcOffset};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use yasna::models::ObjectIdentifier;
use yasna::{ASN1Error, BERReader, DERWriter, Tag};

use crate::authority::{AuthorityError, Signer};
use crate::error::{Classify, ErrorKind};
use crate::pki::Serial;

/// Largest request accepted, in bytes. A request for [`MAX_CERT_IDS`] SHA-256 CertIDs with a
/// nonce is well under 4 KiB; anything near this cap is not a real client.
pub const MAX_REQUEST_LEN: usize = 16 * 1024;

/// Most CertIDs accepted in one request: each one costs a store lookup and response bytes.
pub const MAX_CERT_IDS: usize = 32;

/// Longest nonce extnValue accepted: RFC 9654 allows nonces of up to 128 octets, carried as an
/// OCTET STRING (up to 3 header bytes) inside extnValue.
const MAX_NONCE_LEN: usize = 128 + 3;

const OID_SHA1: &[u64] = &[1, 3, 14, 3, 2, 26];
const OID_SHA256: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 1];
const OID_OCSP_BASIC: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 1, 1];
const OID_OCSP_NONCE: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 1, 2];

/// Why a request was refused or a response could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OcspError {
    /// The request is larger than [`MAX_REQUEST_LEN`].
    #[error("OCSP request of {0} bytes exceeds the {MAX_REQUEST_LEN}-byte limit")]
    TooLarge(usize),
    /// The request is not valid DER for an `OCSPRequest`.
    #[error("malformed OCSP request: {0}")]
    Der(#[from] ASN1Error),
    /// The request decodes but breaks a rule of RFC 6960 or of this responder.
    #[error("malformed OCSP request: {0}")]
    Malformed(&'static str),
    /// The request lists no certificate.
    #[error("OCSP request lists no certificate")]
    NoCertIds,
    /// The request lists more than [`MAX_CERT_IDS`] certificates.
    #[error("OCSP request lists more than {MAX_CERT_IDS} certificates")]
    TooManyCertIds,
    /// A CertID uses a hash other than SHA-1 or SHA-256 (the dotted OID).
    #[error("unsupported CertID hash algorithm {0}")]
    UnsupportedHash(String),
    /// The responder was asked to build something invalid (a caller bug).
    #[error("invalid OCSP response input: {0}")]
    InvalidResponse(&'static str),
    /// The CA (issuer or signer) certificate does not parse.
    #[error("CA certificate does not parse")]
    CaCertificate,
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] AuthorityError),
}

impl OcspError {
    /// The OCSP status to answer with when this error stops a request.
    pub fn response_status(&self) -> ResponseStatus {
        match self.kind() {
            ErrorKind::BadRequest => ResponseStatus::MalformedRequest,
            _ => ResponseStatus::InternalError,
        }
    }
}

impl Classify for OcspError {
    fn kind(&self) -> ErrorKind {
        match self {
            OcspError::TooLarge(_)
            | OcspError::Der(_)
            | OcspError::Malformed(_)
            | OcspError::NoCertIds
            | OcspError::TooManyCertIds
            | OcspError::UnsupportedHash(_) => ErrorKind::BadRequest,
            OcspError::InvalidResponse(_) | OcspError::CaCertificate | OcspError::Sign(_) => {
                ErrorKind::Internal
            }
        }
    }
}

/// The hash algorithm of a CertID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    /// SHA-1 (what most clients, openssl included, send by default).
    Sha1,
    /// SHA-256.
    Sha256,
}

impl HashAlg {
    fn from_oid(oid: &ObjectIdentifier) -> Option<HashAlg> {
        match oid.components().as_slice() {
            OID_SHA1 => Some(HashAlg::Sha1),
            OID_SHA256 => Some(HashAlg::Sha256),
            _ => None,
        }
    }

    fn oid(self) -> ObjectIdentifier {
        match self {
            HashAlg::Sha1 => ObjectIdentifier::from_slice(OID_SHA1),
            HashAlg::Sha256 => ObjectIdentifier::from_slice(OID_SHA256),
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        let alg = match self {
            HashAlg::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            HashAlg::Sha256 => &digest::SHA256,
        };
        digest::digest(alg, data).as_ref().to_vec()
    }

    fn output_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
        }
    }
}

/// Identifies one certificate in a request: its issuer's name and key hashes and its serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertId {
    /// Hash algorithm of the two issuer hashes.
    pub hash: HashAlg,
    /// Hash of the issuer's subject name DER.
    pub issuer_name_hash: Vec<u8>,
    /// Hash of the issuer's public key (the subjectPublicKey BIT STRING contents).
    pub issuer_key_hash: Vec<u8>,
    /// Serial number of the certificate asked about.
    pub serial: Serial,
    /// The CertID exactly as received, echoed in the response: clients match by byte equality,
    /// and a re-encoding could differ (e.g. absent vs NULL hash parameters).
    der: Vec<u8>,
}

impl CertId {
    /// The CertID that names `serial` under the CA certificate `issuer_cert_der`.
    pub fn for_serial(
        hash: HashAlg,
        issuer_cert_der: &[u8],
        serial: Serial,
    ) -> Result<CertId, OcspError> {
        let (name_hash, key_hash) =
            issuer_hashes(hash, issuer_cert_der).ok_or(OcspError::CaCertificate)?;
        let der = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_sequence(|w| {
                    w.next().write_oid(&hash.oid());
                    w.next().write_null();
                });
                w.next().write_bytes(&name_hash);
                w.next().write_bytes(&key_hash);
                write_serial(w.next(), &serial);
            })
        });
        Ok(CertId {
            hash,
            issuer_name_hash: name_hash,
            issuer_key_hash: key_hash,
            serial,
            der,
        })
    }

    /// Whether this CertID names `issuer_cert_der` as the issuer (both hashes match). False when
    /// the certificate does not parse.
    pub fn matches_issuer(&self, issuer_cert_der: &[u8]) -> bool {
        match issuer_hashes(self.hash, issuer_cert_der) {
            Some((name, key)) => name == self.issuer_name_hash && key == self.issuer_key_hash,
            None => false,
        }
    }
}

/// An issuer's name and key hashes in every algorithm a CertID may use, computed once per issuer
/// instead of parsing its certificate for every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerHashes {
    sha1: (Vec<u8>, Vec<u8>),
    sha256: (Vec<u8>, Vec<u8>),
}

impl IssuerHashes {
    /// The hashes of the CA certificate `cert_der`; `None` when it does not parse.
    pub fn of(cert_der: &[u8]) -> Option<IssuerHashes> {
        Some(IssuerHashes {
            sha1: issuer_hashes(HashAlg::Sha1, cert_der)?,
            sha256: issuer_hashes(HashAlg::Sha256, cert_der)?,
        })
    }
}

impl CertId {
    /// [`CertId::matches_issuer`] against precomputed hashes.
    pub fn matches(&self, issuer: &IssuerHashes) -> bool {
        let (name, key) = match self.hash {
            HashAlg::Sha1 => &issuer.sha1,
            HashAlg::Sha256 => &issuer.sha256,
        };
        *name == self.issuer_name_hash && *key == self.issuer_key_hash
    }
}

/// (hash of subject DER, hash of subjectPublicKey bits) of a certificate.
fn issuer_hashes(hash: HashAlg, cert_der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    Some((
        hash.digest(cert.subject().as_raw()),
        hash.digest(&cert.public_key().subject_public_key.data),
    ))
}

/// What a client asked: the certificates and an optional nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcspRequest {
    /// The certificates asked about, in request order (1 to [`MAX_CERT_IDS`]).
    pub cert_ids: Vec<CertId>,
    /// The extnValue contents of the id-pkix-ocsp-nonce request extension, to echo verbatim.
    pub nonce: Option<Vec<u8>>,
}

/// A CertID as decoded, before the checks that need more than ASN.1 errors to report.
struct RawCertId {
    hash_oid: ObjectIdentifier,
    name_hash: Vec<u8>,
    key_hash: Vec<u8>,
    serial: Vec<u8>,
    positive: bool,
    der: Vec<u8>,
}

struct RawRequest {
    version: Option<i64>,
    cert_ids: Vec<RawCertId>,
    nonces: Vec<Vec<u8>>,
}

/// Parses a DER `OCSPRequest`.
///
/// A request signature and requestorName are skipped unverified, per-certificate extensions and
/// request extensions other than the nonce are ignored.
pub fn parse_request(der: &[u8]) -> Result<OcspRequest, OcspError> {
    if der.len() > MAX_REQUEST_LEN {
        return Err(OcspError::TooLarge(der.len()));
    }
    let raw = yasna::parse_der(der, |r| {
        r.read_sequence(|r| {
            let raw = r.next().read_sequence(read_tbs_request)?;
            // optionalSignature [0] EXPLICIT: not verified, so only skipped.
            r.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_der()))?;
            Ok(raw)
        })
    })?;
    if raw.version.is_some_and(|v| v != 0) {
        return Err(OcspError::Malformed("unsupported request version"));
    }
    if raw.cert_ids.len() > MAX_CERT_IDS {
        return Err(OcspError::TooManyCertIds);
    }
    if raw.cert_ids.is_empty() {
        return Err(OcspError::NoCertIds);
    }
    let nonce = match raw.nonces.as_slice() {
        [] => None,
        [n] if n.is_empty() || n.len() > MAX_NONCE_LEN => {
            return Err(OcspError::Malformed("nonce length out of range"));
        }
        [n] => Some(n.clone()),
        _ => return Err(OcspError::Malformed("more than one nonce")),
    };
    let cert_ids = raw
        .cert_ids
        .into_iter()
        .map(cert_id)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(OcspRequest { cert_ids, nonce })
}

fn cert_id(raw: RawCertId) -> Result<CertId, OcspError> {
    let hash = HashAlg::from_oid(&raw.hash_oid)
        .ok_or_else(|| OcspError::UnsupportedHash(raw.hash_oid.to_string()))?;
    if raw.name_hash.len() != hash.output_len() || raw.key_hash.len() != hash.output_len() {
        return Err(OcspError::Malformed(
            "issuer hash length does not match its algorithm",
        ));
    }
    if !raw.positive {
        return Err(OcspError::Malformed("negative serial number"));
    }
    Ok(CertId {
        hash,
        issuer_name_hash: raw.name_hash,
        issuer_key_hash: raw.key_hash,
        serial: Serial::from_bytes(&raw.serial),
        der: raw.der,
    })
}

fn read_tbs_request(r: &mut yasna::BERReaderSeq<'_, '_>) -> yasna::ASN1Result<RawRequest> {
    let version = r.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_i64()))?;
    // requestorName [1] EXPLICIT GeneralName: informational only.
    r.read_optional(|r| r.read_tagged(Tag::context(1), |r| r.read_der()))?;
    // Every entry is read before counting: the size cap already bounds the work.
    let cert_ids = r.next().collect_sequence_of(read_single_request)?;
    let mut nonces = Vec::new();
    r.read_optional(|r| {
        r.read_tagged(Tag::context(2), |r| {
            r.read_sequence_of(|r| {
                let (oid, value) = read_extension(r)?;
                if oid.components().as_slice() == OID_OCSP_NONCE {
                    nonces.push(value);
                }
                Ok(())
            })
        })
    })?;
    Ok(RawRequest {
        version,
        cert_ids,
        nonces,
    })
}

fn read_single_request(r: BERReader<'_, '_>) -> yasna::ASN1Result<RawCertId> {
    r.read_sequence(|r| {
        let cert_id = read_cert_id(r.next())?;
        // singleRequestExtensions [0] EXPLICIT: none are supported, all are ignored.
        r.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_der()))?;
        Ok(cert_id)
    })
}

fn read_cert_id(r: BERReader<'_, '_>) -> yasna::ASN1Result<RawCertId> {
    let ((hash_oid, name_hash, key_hash, (serial, positive)), der) = r.read_with_buffer(|r| {
        r.read_sequence(|r| {
            let hash_oid = r.next().read_sequence(|r| {
                let oid = r.next().read_oid()?;
                // Parameters are NULL or absent for both supported hashes; either is accepted.
                r.read_optional(|r| r.read_der())?;
                Ok(oid)
            })?;
            let name_hash = r.next().read_bytes()?;
            let key_hash = r.next().read_bytes()?;
            let serial = r.next().read_bigint_bytes()?;
            Ok((hash_oid, name_hash, key_hash, serial))
        })
    })?;
    Ok(RawCertId {
        hash_oid,
        name_hash,
        key_hash,
        serial,
        positive,
        der: der.to_vec(),
    })
}

/// Reads an `Extension`, returning its extnID and extnValue contents (criticality is ignored).
fn read_extension(r: BERReader<'_, '_>) -> yasna::ASN1Result<(ObjectIdentifier, Vec<u8>)> {
    r.read_sequence(|r| {
        let oid = r.next().read_oid()?;
        // Optional rather than DEFAULT so an explicitly encoded FALSE (not DER, but common) passes.
        r.read_optional(|r| r.read_bool())?;
        let value = r.next().read_bytes()?;
        Ok((oid, value))
    })
}

/// The status of one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    /// Issued by this CA and not revoked.
    Good,
    /// Revoked.
    Revoked {
        /// When it was revoked.
        at: OffsetDateTime,
        /// RFC 5280 CRLReason code (0–10 except 7), if one is recorded.
        reason: Option<u8>,
    },
    /// Not known to this responder.
    Unknown,
}

/// The answer for one CertID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SingleResponse {
    /// The CertID from the request, echoed verbatim.
    pub cert_id: CertId,
    /// The status.
    pub status: CertStatus,
    /// When the status was known to be correct.
    pub this_update: OffsetDateTime,
    /// When newer information will be available (must not precede `this_update`).
    pub next_update: OffsetDateTime,
}

/// The unsuccessful `OCSPResponseStatus` values (`successful` is only sent by [`build_response`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseStatus {
    /// The request does not parse or breaks a rule.
    MalformedRequest = 1,
    /// The responder failed internally.
    InternalError = 2,
    /// The responder cannot answer now; the client should retry.
    TryLater = 3,
    /// The responder requires signed requests.
    SigRequired = 5,
    /// The responder does not answer for this client or these certificates.
    Unauthorized = 6,
}

/// An `OCSPResponse` that carries only `status` (error responses are not signed).
pub fn error_response(status: ResponseStatus) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence(|w| w.next().write_enum(status as i64));
    })
}

/// Whole-second UTC GeneralizedTime text (`YYYYMMDDHHMMSSZ`), or an error outside years 0–9999.
fn generalized_time(t: OffsetDateTime) -> Result<String, OcspError> {
    let t = t.to_offset(UtcOffset::UTC);
    if !(0..=9999).contains(&t.year()) {
        return Err(OcspError::InvalidResponse(
            "time not representable as GeneralizedTime",
        ));
    }
    Ok(format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

fn write_time(w: DERWriter<'_>, text: &str) {
    // yasna is built without its `time` feature here, so the encoding is written directly.
    w.write_tagged_implicit(yasna::tags::TAG_GENERALIZEDTIME, |w| {
        w.write_bytes(text.as_bytes())
    });
}

fn write_serial(w: DERWriter<'_>, serial: &Serial) {
    w.write_bigint_bytes(serial.as_bytes(), true);
}

/// A validated [`SingleResponse`] with its times already rendered.
struct Prepared<'a> {
    cert_id: &'a [u8],
    status: PreparedStatus,
    this_update: String,
    next_update: String,
}

enum PreparedStatus {
    Good,
    Revoked { at: String, reason: Option<u8> },
    Unknown,
}

fn prepare(r: &SingleResponse) -> Result<Prepared<'_>, OcspError> {
    if r.next_update < r.this_update {
        return Err(OcspError::InvalidResponse("nextUpdate precedes thisUpdate"));
    }
    let status = match r.status {
        CertStatus::Good => PreparedStatus::Good,
        CertStatus::Unknown => PreparedStatus::Unknown,
        CertStatus::Revoked { at, reason } => {
            if let Some(code) = reason
                && (code == 7 || code > 10)
            {
                return Err(OcspError::InvalidResponse("not a CRLReason code"));
            }
            PreparedStatus::Revoked {
                at: generalized_time(at)?,
                reason,
            }
        }
    };
    Ok(Prepared {
        cert_id: &r.cert_id.der,
        status,
        this_update: generalized_time(r.this_update)?,
        next_update: generalized_time(r.next_update)?,
    })
}

/// Builds and signs a successful `OCSPResponse` (a `BasicOCSPResponse`, v1).
///
/// The responder is the issuing CA itself, identified by key hash; its certificate is therefore
/// not included. `nonce` is the request's nonce extnValue, echoed as a response extension.
pub fn build_response(
    responses: &[SingleResponse],
    nonce: Option<&[u8]>,
    produced_at: OffsetDateTime,
    signer: &Signer,
) -> Result<Vec<u8>, OcspError> {
    if responses.is_empty() {
        return Err(OcspError::InvalidResponse("no single responses"));
    }
    let prepared = responses
        .iter()
        .map(prepare)
        .collect::<Result<Vec<_>, _>>()?;
    let produced_at = generalized_time(produced_at)?;
    let key_hash = HashAlg::Sha1.digest(signer.public_key_bits());

    let tbs = yasna::construct_der(|w| {
        w.write_sequence(|w| {
            // ResponderID byKey [2] EXPLICIT KeyHash.
            w.next()
                .write_tagged(Tag::context(2), |w| w.write_bytes(&key_hash));
            write_time(w.next(), &produced_at);
            w.next().write_sequence_of(|w| {
                for p in &prepared {
                    write_single_response(w.next(), p);
                }
            });
            if let Some(nonce) = nonce {
                w.next().write_tagged(Tag::context(1), |w| {
                    w.write_sequence_of(|w| {
                        w.next().write_sequence(|w| {
                            w.next()
                                .write_oid(&ObjectIdentifier::from_slice(OID_OCSP_NONCE));
                            w.next().write_bytes(nonce);
                        });
                    });
                });
            }
        })
    });
    let signature = signer.key().sign(&tbs)?;
    let algorithm = signer.key().signature_algorithm_der();
    let basic = yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_der(&tbs);
            w.next().write_der(&algorithm);
            w.next().write_bitvec_bytes(&signature, signature.len() * 8);
        })
    });
    Ok(yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_enum(0);
            w.next().write_tagged(Tag::context(0), |w| {
                w.write_sequence(|w| {
                    w.next()
                        .write_oid(&ObjectIdentifier::from_slice(OID_OCSP_BASIC));
                    w.next().write_bytes(&basic);
                });
            });
        })
    }))
}

fn write_single_response(w: DERWriter<'_>, p: &Prepared<'_>) {
    w.write_sequence(|w| {
        w.next().write_der(p.cert_id);
        let status = w.next();
        match &p.status {
            PreparedStatus::Good => {
                status.write_tagged_implicit(Tag::context(0), |w| w.write_null());
            }
            PreparedStatus::Revoked { at, reason } => {
                status.write_tagged_implicit(Tag::context(1), |w| {
                    w.write_sequence(|w| {
                        write_time(w.next(), at);
                        if let Some(code) = reason {
                            w.next().write_tagged(Tag::context(0), |w| {
                                w.write_enum(i64::from(*code));
                            });
                        }
                    });
                });
            }
            PreparedStatus::Unknown => {
                status.write_tagged_implicit(Tag::context(2), |w| w.write_null());
            }
        }
        write_time(w.next(), &p.this_update);
        w.next()
            .write_tagged(Tag::context(0), |w| write_time(w, &p.next_update));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::tests::{TestPki, leaf_key, serial, test_pki};
    use crate::authority::{DistributionUrls, Issued, LeafSpec, pem_encode, sign_leaf};
    use crate::pki::{Identity, KeyType};
    use std::path::Path;
    use std::process::Command;
    use time::Duration;

    fn leaf(pki: &TestPki) -> Issued {
        use rcgen::PublicKeyData;
        let key = leaf_key(&rcgen::PKCS_ECDSA_P256_SHA256);
        let identity = Identity {
            env: "dev".into(),
            service: "api".into(),
        };
        sign_leaf(
            &LeafSpec {
                trust_domain: "example.internal",
                identity: Some(&identity),
                dns: &[],
                ips: &[],
                spki_der: &key.subject_public_key_info(),
                key_type: KeyType::P256,
                serial: &serial(9),
                not_before: pki.now - Duration::minutes(1),
                not_after: pki.now + Duration::hours(1),
                urls: Some(&DistributionUrls {
                    crl: "http://ca.example.internal/crl/dev.crl".into(),
                    ocsp: "http://ca.example.internal/ocsp".into(),
                }),
                common_name: None,
            },
            &pki.dev,
        )
        .expect("signed")
    }

    /// A dev leaf and the PEM files openssl needs, in a fresh directory.
    struct Fixture {
        pki: TestPki,
        leaf: Issued,
        dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let pki = test_pki();
        let leaf = leaf(&pki);
        let dir = tempfile::tempdir().expect("tmp");
        for (name, der) in [
            ("root.pem", pki.root.cert_der()),
            ("dev.pem", pki.dev.cert_der()),
            ("leaf.pem", leaf.der.as_slice()),
        ] {
            std::fs::write(dir.path().join(name), pem_encode("CERTIFICATE", der)).expect("write");
        }
        Fixture { pki, leaf, dir }
    }

    /// Runs openssl in `dir`; returns (exit success, stdout + stderr).
    fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl runs (scripts/test.sh installs it)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Has openssl write a request for the leaf; `opts` go before `-cert` (e.g. `-sha256`).
    fn openssl_request(f: &Fixture, opts: &[&str], name: &str) -> Vec<u8> {
        let mut args = vec!["ocsp"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&["-issuer", "dev.pem", "-cert", "leaf.pem", "-reqout", name]);
        let (ok, text) = openssl(f.dir.path(), &args);
        assert!(ok, "{text}");
        std::fs::read(f.dir.path().join(name)).expect("request written")
    }

    fn single(req: &OcspRequest, status: CertStatus, now: OffsetDateTime) -> SingleResponse {
        SingleResponse {
            cert_id: req.cert_ids[0].clone(),
            status,
            this_update: now,
            next_update: now + Duration::hours(1),
        }
    }

    /// Hex as openssl prints it in `-req_text`/`-resp_text` (upper case, no separators).
    fn upper_hex(b: &[u8]) -> String {
        hex::encode_upper(b)
    }

    #[test]
    fn parses_openssl_requests() {
        let f = fixture();
        for (opts, hash) in [
            (&[][..], HashAlg::Sha1),
            (&["-no_nonce"][..], HashAlg::Sha1),
            (&["-sha256"][..], HashAlg::Sha256),
        ] {
            let der = openssl_request(&f, opts, "req.der");
            let req = parse_request(&der).expect("openssl request parses");
            assert_eq!(req.cert_ids.len(), 1);
            let id = &req.cert_ids[0];
            assert_eq!(id.hash, hash);
            assert_eq!(id.serial, serial(9));
            assert!(id.matches_issuer(f.pki.dev.cert_der()));
            assert!(!id.matches_issuer(f.pki.prod.cert_der()));
            assert!(!id.matches_issuer(f.pki.root.cert_der()));
            assert!(!id.matches_issuer(&f.leaf.der));
            assert!(!id.matches_issuer(b"not a certificate"));
            // Independent of our encoder: openssl's own CertID equals the one we compute.
            let ours = CertId::for_serial(hash, f.pki.dev.cert_der(), serial(9)).expect("certid");
            assert_eq!(&ours, id);

            let (ok, text) = openssl(f.dir.path(), &["ocsp", "-reqin", "req.der", "-req_text"]);
            assert!(ok, "{text}");
            match (&req.nonce, opts.contains(&"-no_nonce")) {
                (None, true) => assert!(!text.contains("OCSP Nonce"), "{text}"),
                (Some(nonce), false) => {
                    // openssl wraps its 16 random bytes in an OCTET STRING inside extnValue.
                    assert_eq!(nonce.len(), 18);
                    assert_eq!(&nonce[..2], &[0x04, 0x10]);
                    assert!(text.contains(&upper_hex(nonce)), "{text}");
                }
                other => panic!("nonce {other:?} with options {opts:?}"),
            }
        }
    }

    #[test]
    fn openssl_verifies_signed_responses() {
        let f = fixture();
        let now = f.pki.now;
        let revoked_at = now - Duration::minutes(5);
        let openssl_time = time::macros::format_description!(
            "[month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT"
        );
        let revoked_text = format!(
            "Revocation Time: {}",
            revoked_at.format(&openssl_time).expect("format")
        );
        let cases = [
            (CertStatus::Good, "good", None),
            (
                CertStatus::Revoked {
                    at: revoked_at,
                    reason: Some(1),
                },
                "revoked",
                Some("keyCompromise"),
            ),
            (CertStatus::Unknown, "unknown", None),
        ];
        for hash_opts in [&[][..], &["-sha256"][..]] {
            let with_nonce = openssl_request(&f, hash_opts, "req.der");
            let mut no_nonce_opts = hash_opts.to_vec();
            no_nonce_opts.push("-no_nonce");
            let no_nonce = openssl_request(&f, &no_nonce_opts, "req-nn.der");
            let req = parse_request(&with_nonce).expect("parses");
            let req_nn = parse_request(&no_nonce).expect("parses");
            assert!(req.nonce.is_some() && req_nn.nonce.is_none());

            for (status, word, reason) in cases {
                // 1. The request file as openssl wrote it: signature, chain to root and nonce.
                let resp = build_response(
                    &[single(&req, status, now)],
                    req.nonce.as_deref(),
                    now,
                    &f.pki.dev,
                )
                .expect("response");
                std::fs::write(f.dir.path().join("resp.der"), &resp).expect("write");
                let (ok, text) = openssl(
                    f.dir.path(),
                    &[
                        "ocsp",
                        "-reqin",
                        "req.der",
                        "-respin",
                        "resp.der",
                        "-verify_other",
                        "dev.pem",
                        "-CAfile",
                        "root.pem",
                        "-resp_text",
                    ],
                );
                assert!(ok && text.contains("Response verify OK"), "{text}");
                assert!(
                    !text.contains("Nonce Verify error") && !text.contains("WARNING"),
                    "{text}"
                );
                assert!(text.contains(&format!("Cert Status: {word}")), "{text}");
                if let Some(r) = reason {
                    assert!(
                        text.contains(&format!("Revocation Reason: {r} (0x1)")),
                        "{text}"
                    );
                    assert!(text.contains(&revoked_text), "{text}");
                }

                // 2. openssl's per-certificate summary line (its fresh request has no nonce).
                let resp = build_response(&[single(&req_nn, status, now)], None, now, &f.pki.dev)
                    .expect("response");
                std::fs::write(f.dir.path().join("resp.der"), &resp).expect("write");
                let mut args = vec!["ocsp"];
                args.extend_from_slice(hash_opts);
                args.extend_from_slice(&[
                    "-issuer",
                    "dev.pem",
                    "-cert",
                    "leaf.pem",
                    "-no_nonce",
                    "-respin",
                    "resp.der",
                    "-verify_other",
                    "dev.pem",
                    "-CAfile",
                    "root.pem",
                ]);
                let (ok, text) = openssl(f.dir.path(), &args);
                assert!(ok && text.contains("Response verify OK"), "{text}");
                assert!(text.contains(&format!("leaf.pem: {word}")), "{text}");
                if let Some(r) = reason {
                    assert!(text.contains(&format!("Reason: {r}")), "{text}");
                    assert!(text.contains(&revoked_text), "{text}");
                }
            }
        }
    }

    #[test]
    fn openssl_rejects_a_response_signed_by_another_ca() {
        let f = fixture();
        let der = openssl_request(&f, &[], "req.der");
        let req = parse_request(&der).expect("parses");
        let resp = build_response(
            &[single(&req, CertStatus::Good, f.pki.now)],
            req.nonce.as_deref(),
            f.pki.now,
            &f.pki.prod,
        )
        .expect("response");
        std::fs::write(f.dir.path().join("resp.der"), &resp).expect("write");
        let (ok, text) = openssl(
            f.dir.path(),
            &[
                "ocsp",
                "-reqin",
                "req.der",
                "-respin",
                "resp.der",
                "-issuer",
                "dev.pem",
                "-verify_other",
                "dev.pem",
                "-CAfile",
                "root.pem",
            ],
        );
        assert!(!ok && text.contains("Response Verify Failure"), "{text}");
    }

    #[test]
    fn error_responses_are_what_openssl_reports() {
        let dir = tempfile::tempdir().expect("tmp");
        assert_eq!(
            error_response(ResponseStatus::MalformedRequest),
            [0x30, 0x03, 0x0a, 0x01, 0x01]
        );
        for (status, shown) in [
            (ResponseStatus::MalformedRequest, "malformedrequest (1)"),
            (ResponseStatus::InternalError, "internalerror (2)"),
            (ResponseStatus::TryLater, "trylater (3)"),
            (ResponseStatus::SigRequired, "sigrequired (5)"),
            (ResponseStatus::Unauthorized, "unauthorized (6)"),
        ] {
            std::fs::write(dir.path().join("err.der"), error_response(status)).expect("write");
            // openssl exits non-zero for any unsuccessful status; only the text matters here.
            let (_, text) = openssl(dir.path(), &["ocsp", "-respin", "err.der", "-resp_text"]);
            assert!(
                text.contains(&format!("Responder Error: {shown}")),
                "{text}"
            );
        }
    }

    // Hand-built requests, to reach the shapes openssl does not produce.

    fn cert_id_der(hash_oid: &[u64], hash_len: usize, serial: &[u8], positive: bool) -> Vec<u8> {
        yasna::construct_der(|w| {
            w.write_sequence(|w| {
                // Parameters absent (not NULL), to show the CertID is echoed as received.
                w.next().write_sequence(|w| {
                    w.next().write_oid(&ObjectIdentifier::from_slice(hash_oid));
                });
                w.next().write_bytes(&vec![0xaa; hash_len]);
                w.next().write_bytes(&vec![0xbb; hash_len]);
                w.next().write_bigint_bytes(serial, positive);
            })
        })
    }

    fn sha1_id(n: u8) -> Vec<u8> {
        cert_id_der(OID_SHA1, 20, &[0x40, n], true)
    }

    #[derive(Default)]
    struct Req {
        version: Option<i64>,
        requestor: bool,
        signature: bool,
        ids: Vec<Vec<u8>>,
        /// (extnID, explicit critical flag, extnValue contents)
        extensions: Vec<(&'static [u64], Option<bool>, Vec<u8>)>,
    }

    fn request(r: &Req) -> Vec<u8> {
        yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_sequence(|w| {
                    if let Some(v) = r.version {
                        w.next().write_tagged(Tag::context(0), |w| w.write_i64(v));
                    }
                    if r.requestor {
                        // GeneralName dNSName [2] IMPLICIT IA5String.
                        w.next().write_tagged(Tag::context(1), |w| {
                            w.write_tagged_implicit(Tag::context(2), |w| {
                                w.write_ia5_string("client.example")
                            })
                        });
                    }
                    w.next().write_sequence_of(|w| {
                        for id in &r.ids {
                            w.next().write_sequence(|w| {
                                w.next().write_der(id);
                                // A per-certificate extension, to be ignored.
                                w.next().write_tagged(Tag::context(0), |w| {
                                    w.write_sequence_of(|w| {
                                        w.next().write_sequence(|w| {
                                            w.next().write_oid(&ObjectIdentifier::from_slice(&[
                                                1, 2, 3, 4,
                                            ]));
                                            w.next().write_bytes(b"x");
                                        });
                                    });
                                });
                            });
                        }
                    });
                    if !r.extensions.is_empty() {
                        w.next().write_tagged(Tag::context(2), |w| {
                            w.write_sequence_of(|w| {
                                for (oid, critical, value) in &r.extensions {
                                    w.next().write_sequence(|w| {
                                        w.next().write_oid(&ObjectIdentifier::from_slice(oid));
                                        if let Some(c) = critical {
                                            w.next().write_bool(*c);
                                        }
                                        w.next().write_bytes(value);
                                    });
                                }
                            });
                        });
                    }
                });
                if r.signature {
                    // Signature ::= SEQUENCE { algorithm, signature BIT STRING }: skipped unread.
                    w.next().write_tagged(Tag::context(0), |w| {
                        w.write_sequence(|w| {
                            w.next().write_sequence(|w| {
                                w.next().write_oid(&ObjectIdentifier::from_slice(&[
                                    1, 2, 840, 10045, 4, 3, 2,
                                ]));
                            });
                            w.next().write_bitvec_bytes(&[1, 2, 3], 24);
                        });
                    });
                }
            })
        })
    }

    #[test]
    fn accepts_optional_request_fields_and_ignores_other_extensions() {
        let der = request(&Req {
            version: Some(0),
            requestor: true,
            signature: true,
            ids: vec![sha1_id(1), sha1_id(2)],
            extensions: vec![
                (
                    &[1, 3, 6, 1, 5, 5, 7, 48, 1, 4],
                    Some(true),
                    vec![0x30, 0x00],
                ),
                (OID_OCSP_NONCE, Some(false), b"raw nonce".to_vec()),
            ],
        });
        let req = parse_request(&der).expect("parses");
        assert_eq!(req.cert_ids.len(), 2);
        assert_eq!(req.cert_ids[1].serial, Serial::from_bytes(&[0x40, 2]));
        assert_eq!(req.cert_ids[0].issuer_key_hash, vec![0xbb; 20]);
        // Not wrapped in an OCTET STRING (pre-RFC 8954 style): still echoed as given.
        assert_eq!(req.nonce.as_deref(), Some(&b"raw nonce"[..]));
    }

    #[test]
    fn echoes_cert_id_and_nonce_byte_for_byte() {
        let pki = test_pki();
        let nonce = b"\x04\x03abc".to_vec();
        let id = cert_id_der(OID_SHA256, 32, &[0x80, 0x01], true);
        let der = request(&Req {
            ids: vec![id.clone()],
            extensions: vec![(OID_OCSP_NONCE, None, nonce.clone())],
            ..Req::default()
        });
        let req = parse_request(&der).expect("parses");
        assert_eq!(req.nonce.as_ref(), Some(&nonce));
        assert_eq!(req.cert_ids[0].serial.as_bytes(), &[0x80, 0x01]);
        let resp = build_response(
            &[single(&req, CertStatus::Good, pki.now)],
            req.nonce.as_deref(),
            pki.now,
            &pki.dev,
        )
        .expect("response");
        let contains = |needle: &[u8]| resp.windows(needle.len()).any(|w| w == needle);
        assert!(contains(&id), "CertID not echoed verbatim");
        let extension = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next()
                    .write_oid(&ObjectIdentifier::from_slice(OID_OCSP_NONCE));
                w.next().write_bytes(&nonce);
            })
        });
        assert!(contains(&extension), "nonce not echoed verbatim");

        let without = build_response(
            &[single(&req, CertStatus::Good, pki.now)],
            None,
            pki.now,
            &pki.dev,
        )
        .expect("response");
        let oid =
            yasna::construct_der(|w| w.write_oid(&ObjectIdentifier::from_slice(OID_OCSP_NONCE)));
        assert!(!without.windows(oid.len()).any(|w| w == oid.as_slice()));
    }

    #[test]
    fn refuses_bad_requests() {
        let bad = |r: &Req| parse_request(&request(r)).expect_err("refused");
        assert!(matches!(bad(&Req::default()), OcspError::NoCertIds));
        let ids = |n: u8| (0..n).map(sha1_id).collect::<Vec<_>>();
        assert!(matches!(
            bad(&Req {
                ids: ids(33),
                ..Req::default()
            }),
            OcspError::TooManyCertIds
        ));
        assert!(
            parse_request(&request(&Req {
                ids: ids(32),
                ..Req::default()
            }))
            .is_ok()
        );
        let sha384 = &[2, 16, 840, 1, 101, 3, 4, 2, 2];
        assert!(matches!(
            bad(&Req {
                ids: vec![cert_id_der(sha384, 48, &[1], true)],
                ..Req::default()
            }),
            OcspError::UnsupportedHash(oid) if oid == "2.16.840.1.101.3.4.2.2"
        ));
        for (why, r) in [
            (
                "hash length",
                Req {
                    ids: vec![cert_id_der(OID_SHA1, 32, &[1], true)],
                    ..Req::default()
                },
            ),
            (
                "negative serial",
                Req {
                    ids: vec![cert_id_der(OID_SHA1, 20, &[0x80], false)],
                    ..Req::default()
                },
            ),
            (
                "version 2",
                Req {
                    version: Some(1),
                    ids: ids(1),
                    ..Req::default()
                },
            ),
            (
                "empty nonce",
                Req {
                    ids: ids(1),
                    extensions: vec![(OID_OCSP_NONCE, None, vec![])],
                    ..Req::default()
                },
            ),
            (
                "long nonce",
                Req {
                    ids: ids(1),
                    extensions: vec![(OID_OCSP_NONCE, None, vec![7; MAX_NONCE_LEN + 1])],
                    ..Req::default()
                },
            ),
            (
                "two nonces",
                Req {
                    ids: ids(1),
                    extensions: vec![
                        (OID_OCSP_NONCE, None, vec![1]),
                        (OID_OCSP_NONCE, None, vec![2]),
                    ],
                    ..Req::default()
                },
            ),
        ] {
            let e = bad(&r);
            assert!(matches!(e, OcspError::Malformed(_)), "{why}: {e:?}");
            assert_eq!(e.response_status(), ResponseStatus::MalformedRequest);
        }
    }

    #[test]
    fn garbage_and_truncated_input_are_errors_not_panics() {
        let f = fixture();
        let good = openssl_request(&f, &[], "req.der");
        assert!(parse_request(&good).is_ok());
        for len in 0..good.len() {
            assert!(
                parse_request(&good[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(parse_request(&trailing).is_err());
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut flipped = good.clone();
                flipped[i] ^= 1 << bit;
                let _ = parse_request(&flipped);
            }
        }
        for garbage in [
            &b""[..],
            b"\x30",
            b"\x30\x80\x00\x00",
            b"\x30\x84\xff\xff\xff\xff",
            b"GET /ocsp HTTP/1.1\r\n",
            &[0x30; 64],
        ] {
            assert!(parse_request(garbage).is_err(), "{garbage:?}");
        }
        let huge = vec![0x30; MAX_REQUEST_LEN + 1];
        let e = parse_request(&huge).expect_err("too large");
        assert!(matches!(e, OcspError::TooLarge(n) if n == MAX_REQUEST_LEN + 1));
    }

    #[test]
    fn refuses_invalid_response_input() {
        let pki = test_pki();
        let id = CertId::for_serial(HashAlg::Sha1, pki.dev.cert_der(), serial(9)).expect("id");
        let req = OcspRequest {
            cert_ids: vec![id],
            nonce: None,
        };
        let now = pki.now;
        let build = |r: SingleResponse| build_response(&[r], None, now, &pki.dev);
        assert!(build_response(&[], None, now, &pki.dev).is_err());
        let mut backwards = single(&req, CertStatus::Good, now);
        backwards.next_update = now - Duration::seconds(1);
        assert!(build(backwards).is_err());
        for code in [7, 11, 255] {
            let e = build(single(
                &req,
                CertStatus::Revoked {
                    at: now,
                    reason: Some(code),
                },
                now,
            ))
            .expect_err("not a CRLReason");
            assert_eq!(e.response_status(), ResponseStatus::InternalError);
        }
        assert!(
            build(single(
                &req,
                CertStatus::Revoked {
                    at: now,
                    reason: None
                },
                now
            ))
            .is_ok()
        );
    }

    #[test]
    fn times_are_whole_utc_seconds() {
        let t = time::macros::datetime!(2026-03-04 01:02:03.987 +02:00);
        assert_eq!(generalized_time(t).expect("fits"), "20260303230203Z");
        let der = yasna::construct_der(|w| write_time(w, "20260303230203Z"));
        assert_eq!(der[..2], [0x18, 15]);
        let early = time::macros::datetime!(-0001-01-01 00:00 UTC);
        assert!(generalized_time(early).is_err());
    }
}
