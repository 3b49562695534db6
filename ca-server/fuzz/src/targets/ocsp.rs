//! `ca_server::ocsp::parse_request`, and for every request that parses, `build_response` with a
//! throwaway CA made at start-up.
//!
//! Properties: a request that parses round-trips its CertIDs and nonce (re-encoded, it parses to
//! the same fields); the response echoes every CertID byte for byte as the request carried it,
//! and the nonce; the response signature verifies; every refusal is a malformedRequest.

use ca_server::authority::{CaKey, RootSpec, Signer, create_root};
use ca_server::ocsp::{
    CertId, CertStatus, HashAlg, IssuerHashes, MAX_REQUEST_LEN, OcspError, OcspRequest,
    ResponseStatus, SingleResponse, build_response, error_response, parse_request,
};
use ca_server::pki::Serial;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;
use yasna::Tag;
use yasna::models::ObjectIdentifier;

use super::{Target, class};
use crate::der::{self, Tlv};

const OID_SHA1: &[u64] = &[1, 3, 14, 3, 2, 26];
const OID_SHA256: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 1];
const OID_NONCE: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 1, 2];

pub struct OcspTarget {
    signer: Signer,
    issuer: IssuerHashes,
    public_key: Vec<u8>,
    now: OffsetDateTime,
}

impl OcspTarget {
    pub fn new() -> OcspTarget {
        let key = CaKey::generate().expect("key");
        let spki = key.spki_der();
        let (_, parsed) = SubjectPublicKeyInfo::from_der(&spki).expect("spki");
        let public_key = parsed.subject_public_key.data.to_vec();
        let now = OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp())
            .expect("now");
        let root = create_root(
            &RootSpec {
                trust_domain: "example.internal",
                serial: &Serial::from_bytes(&[0x42; 16]),
                not_before: now - Duration::hours(1),
                not_after: now + Duration::days(1),
            },
            &key,
        )
        .expect("throwaway root");
        let issuer = IssuerHashes::of(&root.der).expect("issuer hashes");
        OcspTarget {
            signer: Signer::new(root.der, key).expect("signer"),
            issuer,
            public_key,
            now,
        }
    }

    fn check_response(&self, input: &[u8], req: &OcspRequest) {
        let singles: Vec<SingleResponse> = req
            .cert_ids
            .iter()
            .enumerate()
            .map(|(i, id)| SingleResponse {
                cert_id: id.clone(),
                status: match i % 3 {
                    0 => CertStatus::Good,
                    1 => CertStatus::Unknown,
                    _ => CertStatus::Revoked {
                        at: self.now,
                        reason: Some(1),
                    },
                },
                this_update: self.now,
                next_update: self.now + Duration::hours(1),
            })
            .collect();
        let resp = build_response(&singles, req.nonce.as_deref(), self.now, &self.signer)
            .expect("a parsed request always gets a response");

        // OCSPResponse -> responseBytes [0] -> SEQUENCE { OID, OCTET STRING BasicOCSPResponse }.
        let top = first(&resp, 0);
        let kids = der::children(&resp, &top);
        let bytes = der::children(&resp, &kids[1])[0];
        let inner = der::children(&resp, &bytes);
        let basic = &resp[inner[1].content_start()..inner[1].end()];
        let b = der::children(basic, &first(basic, 0));
        let (tbs, sig) = (b[0], b[2]);
        let tbs_bytes = &basic[tbs.start..tbs.end()];
        let sig_bytes = &basic[sig.content_start() + 1..sig.end()];
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            &self.public_key,
        )
        .verify(tbs_bytes, sig_bytes)
        .expect("the response signature verifies");

        let t = der::children(basic, &tbs);
        let responses = der::children(basic, &t[2]);
        assert_eq!(responses.len(), req.cert_ids.len());
        for (r, id) in responses.iter().zip(&req.cert_ids) {
            let echoed_tlv = der::children(basic, r)[0];
            let echoed = &basic[echoed_tlv.start..echoed_tlv.end()];
            assert!(
                input.windows(echoed.len()).any(|w| w == echoed),
                "the echoed CertID is not the request's own bytes"
            );
            let again = parse_request(&request_der(&[Raw::Der(echoed.to_vec())], None))
                .expect("an echoed CertID parses");
            same_fields(&again.cert_ids[0], id);
        }
        let nonce_ext = t.iter().find(|x| x.tag == 0xa1).map(|ext| {
            let seq = der::children(basic, ext)[0];
            let e = der::children(basic, &seq)[0];
            let v = der::children(basic, &e)[1];
            basic[v.content_start()..v.end()].to_vec()
        });
        assert_eq!(nonce_ext, req.nonce, "the nonce is echoed verbatim");
    }
}

fn first(buf: &[u8], at: usize) -> Tlv {
    let (tag, header_len, len) = der::header(buf, at).expect("own encoding parses");
    Tlv {
        start: at,
        header_len,
        len,
        tag,
    }
}

fn same_fields(a: &CertId, b: &CertId) {
    assert_eq!(a.hash, b.hash);
    assert_eq!(a.issuer_name_hash, b.issuer_name_hash);
    assert_eq!(a.issuer_key_hash, b.issuer_key_hash);
    assert_eq!(a.serial, b.serial);
}

/// A CertID to encode: from fields, or as given.
enum Raw {
    Fields {
        oid: &'static [u64],
        null_params: bool,
        name: Vec<u8>,
        key: Vec<u8>,
        serial: Vec<u8>,
    },
    Der(Vec<u8>),
}

fn fields(id: &CertId) -> Raw {
    Raw::Fields {
        oid: match id.hash {
            HashAlg::Sha1 => OID_SHA1,
            HashAlg::Sha256 => OID_SHA256,
        },
        null_params: true,
        name: id.issuer_name_hash.clone(),
        key: id.issuer_key_hash.clone(),
        serial: id.serial.as_bytes().to_vec(),
    }
}

/// An OCSPRequest with these CertIDs and nonce (a bare tbsRequest, no version or signature).
fn request_der(ids: &[Raw], nonce: Option<&[u8]>) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_sequence(|w| {
                w.next().write_sequence_of(|w| {
                    for id in ids {
                        w.next().write_sequence(|w| match id {
                            Raw::Der(d) => w.next().write_der(d),
                            Raw::Fields {
                                oid,
                                null_params,
                                name,
                                key,
                                serial,
                            } => w.next().write_sequence(|w| {
                                w.next().write_sequence(|w| {
                                    w.next().write_oid(&ObjectIdentifier::from_slice(oid));
                                    if *null_params {
                                        w.next().write_null();
                                    }
                                });
                                w.next().write_bytes(name);
                                w.next().write_bytes(key);
                                w.next().write_bigint_bytes(serial, true);
                            }),
                        });
                    }
                });
                if let Some(n) = nonce {
                    w.next().write_tagged(Tag::context(2), |w| {
                        w.write_sequence_of(|w| {
                            w.next().write_sequence(|w| {
                                w.next().write_oid(&ObjectIdentifier::from_slice(OID_NONCE));
                                w.next().write_bytes(n);
                            });
                        });
                    });
                }
            });
        });
    })
}

fn error_class(e: &OcspError) -> String {
    match e {
        OcspError::Der(d) => format!("der:{:?}", d.kind()),
        other => class(&format!("{other:?}")),
    }
}

impl Target for OcspTarget {
    fn name(&self) -> &'static str {
        "ocsp"
    }

    fn max_len(&self) -> usize {
        MAX_REQUEST_LEN + 64
    }

    fn run(&mut self, input: &[u8]) -> String {
        match parse_request(input) {
            Err(e) => {
                assert_eq!(
                    e.response_status(),
                    ResponseStatus::MalformedRequest,
                    "a request was refused as other than malformed: {e}"
                );
                assert_eq!(
                    error_response(e.response_status()),
                    [0x30, 0x03, 0x0a, 0x01, 0x01]
                );
                error_class(&e)
            }
            Ok(req) => {
                assert!((1..=ca_server::ocsp::MAX_CERT_IDS).contains(&req.cert_ids.len()));
                for id in &req.cert_ids {
                    let len = match id.hash {
                        HashAlg::Sha1 => 20,
                        HashAlg::Sha256 => 32,
                    };
                    assert_eq!(
                        (id.issuer_name_hash.len(), id.issuer_key_hash.len()),
                        (len, len)
                    );
                    assert_ne!(id.serial.as_bytes().first(), Some(&0));
                    let _ = id.matches(&self.issuer);
                }
                if let Some(n) = &req.nonce {
                    assert!(!n.is_empty() && n.len() <= 131);
                }
                // Re-encoded, the request parses to the same CertIDs and nonce.
                let raw: Vec<Raw> = req.cert_ids.iter().map(fields).collect();
                let again = parse_request(&request_der(&raw, req.nonce.as_deref()))
                    .expect("a re-encoded request parses");
                assert_eq!(again.cert_ids.len(), req.cert_ids.len());
                for (a, b) in again.cert_ids.iter().zip(&req.cert_ids) {
                    same_fields(a, b);
                }
                assert_eq!(again.nonce, req.nonce);
                self.check_response(input, &req);
                let algs: Vec<&str> = req
                    .cert_ids
                    .iter()
                    .map(|i| if i.hash == HashAlg::Sha1 { "1" } else { "256" })
                    .collect();
                format!(
                    "ok:{}:{}:{}",
                    req.cert_ids.len().min(3),
                    req.nonce.as_ref().map_or(0, |n| n.len().min(3)),
                    algs.iter().take(2).cloned().collect::<Vec<_>>().join(",")
                )
            }
        }
    }

    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let sha1 = CertId::for_serial(
            HashAlg::Sha1,
            self.signer.cert_der(),
            Serial::from_bytes(&[7; 16]),
        )
        .expect("certid");
        let sha256 = CertId::for_serial(
            HashAlg::Sha256,
            self.signer.cert_der(),
            Serial::from_bytes(&[0x80, 1]),
        )
        .expect("certid");
        let mut out = vec![
            request_der(&[fields(&sha1)], None),
            request_der(&[fields(&sha1)], Some(&der::tlv(0x04, &[9; 16]))),
            request_der(&[fields(&sha256)], Some(&der::tlv(0x04, &[1; 32]))),
            request_der(
                &[fields(&sha1), fields(&sha256), fields(&sha1)],
                Some(&[0x04, 0x01, 0x00]),
            ),
            request_der(
                &[Raw::Fields {
                    oid: OID_SHA1,
                    null_params: false,
                    name: vec![1; 20],
                    key: vec![2; 20],
                    serial: vec![0],
                }],
                None,
            ),
        ];
        // With the optional fields: version, requestorName, request and per-request extensions,
        // another request extension, a signature.
        let full = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_sequence(|w| {
                    w.next().write_tagged(Tag::context(0), |w| w.write_i64(0));
                    w.next().write_tagged(Tag::context(1), |w| {
                        w.write_tagged_implicit(Tag::context(2), |w| w.write_bytes(b"ocsp.client"))
                    });
                    w.next().write_sequence_of(|w| {
                        w.next().write_sequence(|w| {
                            w.next().write_der(&request_der_certid(&sha1));
                            w.next().write_tagged(Tag::context(0), |w| {
                                w.write_sequence_of(|_| {});
                            });
                        });
                    });
                    w.next().write_tagged(Tag::context(2), |w| {
                        w.write_sequence_of(|w| {
                            w.next().write_sequence(|w| {
                                w.next().write_oid(&ObjectIdentifier::from_slice(&[
                                    1, 3, 6, 1, 5, 5, 7, 48, 1, 4,
                                ]));
                                w.next().write_bool(false);
                                w.next().write_bytes(&[0x30, 0x00]);
                            });
                            w.next().write_sequence(|w| {
                                w.next().write_oid(&ObjectIdentifier::from_slice(OID_NONCE));
                                w.next().write_bytes(&[0x04, 0x02, 0xaa, 0xbb]);
                            });
                        });
                    });
                });
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
            });
        });
        out.push(full);
        out.extend(self.openssl_requests());
        out
    }

    fn dictionary(&self) -> &'static [&'static [u8]] {
        DICTIONARY
    }
}

fn request_der_certid(id: &CertId) -> Vec<u8> {
    let req = request_der(&[fields(id)], None);
    // SEQUENCE { SEQUENCE { SEQUENCE OF { SEQUENCE { CertID } } } }: dig out the CertID.
    let top = first(&req, 0);
    let tbs = der::children(&req, &top)[0];
    let list = der::children(&req, &tbs)[0];
    let one = der::children(&req, &list)[0];
    let cert_id = der::children(&req, &one)[0];
    req[cert_id.start..cert_id.end()].to_vec()
}

impl OcspTarget {
    /// Requests as openssl writes them (SHA-1 and SHA-256, with and without a nonce), when it
    /// is installed.
    fn openssl_requests(&self) -> Vec<Vec<u8>> {
        let Ok(dir) = tempfile::tempdir() else {
            return Vec::new();
        };
        let issuer = dir.path().join("issuer.pem");
        if std::fs::write(
            &issuer,
            ca_server::authority::pem_encode("CERTIFICATE", self.signer.cert_der()),
        )
        .is_err()
        {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (i, opts) in [
            &["-no_nonce"][..],
            &[],
            &["-sha256"],
            &["-sha256", "-serial", "0x1234"],
        ]
        .iter()
        .enumerate()
        {
            let path = dir.path().join(format!("{i}.der"));
            let ok = std::process::Command::new("openssl")
                .args(["ocsp", "-issuer"])
                .arg(&issuer)
                .args(*opts)
                .args(["-serial", "0x0102030405060708090a0b0c0d0e0f10", "-reqout"])
                .arg(&path)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok && let Ok(d) = std::fs::read(&path) {
                out.push(d);
            }
        }
        out
    }
}

const DICTIONARY: &[&[u8]] = &[
    &[0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a],
    &[
        0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
    ],
    &[
        0x06, 0x09, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x02,
    ],
    &[
        0x06, 0x09, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01,
    ],
    &[0xa0, 0x03, 0x02, 0x01, 0x00],
    &[0xa0, 0x03, 0x02, 0x01, 0x01],
    &[0x05, 0x00],
    &[0x04, 0x14],
    &[0x04, 0x20],
    &[0x02, 0x01, 0x00],
    &[0x02, 0x02, 0x00, 0x80],
    &[0x02, 0x01, 0xff],
    &[0x01, 0x01, 0xff],
    &[0xa2, 0x00],
];
