//! Checks new credentials before they are published (validate, then publish): the key matches
//! the certificate, the chain verifies to the pinned trust anchors, the identity and names are
//! the ones asked for, and the certificate is not yet expired.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What a certificate must say.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// Environment of the SPIFFE ID.
    pub env: &'a str,
    /// Service of the SPIFFE ID.
    pub service: &'a str,
    /// DNS names asked for (empty: whatever policy gave).
    pub dns: &'a [String],
    /// IP SANs asked for.
    pub ips: &'a [IpAddr],
}

/// Facts about a validated certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial, lowercase hex without leading zeros.
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// The SPIFFE ID (private certificates only).
    pub spiffe_id: Option<String>,
    /// The issuer's common name (or whole DN when it has none).
    pub issuer: String,
}

/// Why credentials were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidateError {
    /// Unparsable PEM or DER.
    #[error("unreadable credentials: {0}")]
    Parse(String),
    /// The key is not the certificate's.
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    /// The chain does not verify to the trust anchors.
    #[error("the certificate does not chain to the pinned root: {0}")]
    Chain(String),
    /// Wrong identity or names.
    #[error("the certificate is not the one asked for: {0}")]
    Identity(String),
    /// Already expired.
    #[error("the certificate has expired")]
    Expired,
}

/// The roots of `bundle` a pinned root vouches for: self-signed CA certificates not pinned yet
/// whose key and name a certificate among `links` certifies, that link being a CA certificate
/// signed by one of `pinned` and valid at `now`. This is how a root rotation reaches an agent:
/// during the overlap its chain carries the new root's key certified by the old root.
pub fn linked_roots(
    pinned: &[CertificateDer<'static>],
    bundle: &[CertificateDer<'static>],
    links: &[CertificateDer<'static>],
    now: i64,
) -> Vec<CertificateDer<'static>> {
    fn parse<'a>(d: &'a CertificateDer<'static>) -> Option<X509Certificate<'a>> {
        X509Certificate::from_der(d).ok().map(|(_, c)| c)
    }
    let pinned_parsed: Vec<X509Certificate<'_>> = pinned.iter().filter_map(parse).collect();
    let vouched = |root: &X509Certificate<'_>| {
        links.iter().filter_map(parse).any(|link| {
            let is_ca = matches!(link.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
            is_ca
                && link.public_key().raw == root.public_key().raw
                && link.subject().as_raw() == root.subject().as_raw()
                && link.validity().not_before.timestamp() <= now
                && now < link.validity().not_after.timestamp()
                && pinned_parsed.iter().any(|p| {
                    link.issuer().as_raw() == p.subject().as_raw()
                        && link.verify_signature(Some(p.public_key())).is_ok()
                })
        })
    };
    bundle
        .iter()
        .filter(|d| !pinned.contains(d))
        .filter(|d| {
            parse(d).is_some_and(|c| {
                c.subject().as_raw() == c.issuer().as_raw()
                    && c.verify_signature(None).is_ok()
                    && matches!(c.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
                    && c.validity().not_before.timestamp() <= now
                    && now < c.validity().not_after.timestamp()
                    && vouched(&c)
            })
        })
        .cloned()
        .collect()
}

/// A DER serial as lowercase hex without leading zeros (the CA's spelling).
pub fn serial_hex(raw: &[u8]) -> String {
    let first = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    raw[first..].iter().map(|b| format!("{b:02x}")).collect()
}

/// A parsed chain with its leaf's names, after the checks every certificate gets: the key is
/// the leaf's and the leaf has not expired.
struct Checked {
    chain: Vec<CertificateDer<'static>>,
    serial: String,
    not_before: i64,
    not_after: i64,
    issuer: String,
    uris: Vec<String>,
    dns: Vec<String>,
    ips: Vec<Vec<u8>>,
}

fn check_common(key_pem: &str, chain_pem: &str, now: i64) -> Result<Checked, ValidateError> {
    let chain = ca_wire::client::certs_from_pem(chain_pem.as_bytes())
        .map_err(|e| ValidateError::Parse(e.to_string()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| ValidateError::Parse("empty chain".into()))?;
    let (_, cert) =
        X509Certificate::from_der(leaf).map_err(|e| ValidateError::Parse(e.to_string()))?;

    let key = rcgen::KeyPair::from_pem(key_pem)
        .map(zeroize::Zeroizing::new)
        .map_err(|_| ValidateError::Parse("private key is not PKCS#8 PEM".into()))?;
    use rcgen::PublicKeyData;
    if key.subject_public_key_info() != cert.public_key().raw {
        return Err(ValidateError::KeyMismatch);
    }

    let not_after = cert.validity().not_after.timestamp();
    if not_after <= now {
        return Err(ValidateError::Expired);
    }

    let mut uris = Vec::new();
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::URI(u) => uris.push(u.to_string()),
                GeneralName::DNSName(d) => dns.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => ips.push(b.to_vec()),
                _ => {}
            }
        }
    }
    let issuer = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| cert.issuer().to_string());
    Ok(Checked {
        serial: serial_hex(cert.raw_serial()),
        not_before: cert.validity().not_before.timestamp(),
        not_after,
        issuer,
        uris,
        dns,
        ips,
        chain,
    })
}

fn check_dns(got: &[String], asked: &[String]) -> Result<(), ValidateError> {
    let mut want: Vec<String> = asked.iter().map(|d| d.to_ascii_lowercase()).collect();
    want.sort();
    want.dedup();
    let mut got = got.to_vec();
    got.sort();
    got.dedup();
    if got != want {
        return Err(ValidateError::Identity(format!(
            "DNS names {got:?}, asked for {want:?}"
        )));
    }
    Ok(())
}

fn unix_time(now: i64) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(now).unwrap_or(0),
    ))
}

/// Validates `key_pem` + `chain_pem` (leaf first) against `roots` and `expect` at `now`.
pub fn validate(
    key_pem: &str,
    chain_pem: &str,
    roots: &[CertificateDer<'static>],
    expect: &Expect<'_>,
    now: i64,
) -> Result<CertInfo, ValidateError> {
    let c = check_common(key_pem, chain_pem, now)?;
    let suffix = format!("/{}/{}", expect.env, expect.service);
    let spiffe_id = match c.uris.as_slice() {
        [one] if one.starts_with("spiffe://") && one.ends_with(&suffix) => one.clone(),
        uris => {
            return Err(ValidateError::Identity(format!(
                "SPIFFE ID {uris:?} is not .../{}/{}",
                expect.env, expect.service
            )));
        }
    };
    if !expect.dns.is_empty() {
        check_dns(&c.dns, expect.dns)?;
    }
    for ip in expect.ips {
        let bytes = match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        if !c.ips.contains(&bytes) {
            return Err(ValidateError::Identity(format!("IP SAN {ip} missing")));
        }
    }

    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store
            .add(r.clone())
            .map_err(|e| ValidateError::Chain(e.to_string()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(store),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| ValidateError::Chain(e.to_string()))?;
    verifier
        .verify_client_cert(&c.chain[0], &c.chain[1..], unix_time(now))
        .map_err(|e| ValidateError::Chain(e.to_string()))?;

    Ok(CertInfo {
        serial: c.serial,
        not_before: c.not_before,
        not_after: c.not_after,
        spiffe_id: Some(spiffe_id),
        issuer: c.issuer,
    })
}

/// Validates a certificate from a public (ACME) CA: the key is the leaf's, the DNS names are
/// exactly `dns`, the chain verifies for TLS server use to one of `roots`, and it has not
/// expired. The intermediates come from `chain_pem` (leaf first).
pub fn validate_public(
    key_pem: &str,
    chain_pem: &str,
    roots: &[CertificateDer<'static>],
    dns: &[String],
    now: i64,
) -> Result<CertInfo, ValidateError> {
    let c = check_common(key_pem, chain_pem, now)?;
    check_dns(&c.dns, dns)?;
    let anchors: Vec<rustls_pki_types::TrustAnchor<'_>> = roots
        .iter()
        .filter_map(|r| webpki::anchor_from_trusted_cert(r).ok())
        .collect();
    if anchors.is_empty() {
        return Err(ValidateError::Chain("no usable trust anchor".into()));
    }
    let leaf = webpki::EndEntityCert::try_from(&c.chain[0])
        .map_err(|e| ValidateError::Parse(format!("{e:?}")))?;
    leaf.verify_for_usage(
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all,
        &anchors,
        &c.chain[1..],
        unix_time(now),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| ValidateError::Chain(format!("{e:?}")))?;
    Ok(CertInfo {
        serial: c.serial,
        not_before: c.not_before,
        not_after: c.not_after,
        spiffe_id: None,
        issuer: c.issuer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root (same name for every generation) and its key.
    fn root_gen(
        cn: &str,
    ) -> (
        rcgen::CertificateParams,
        rcgen::KeyPair,
        CertificateDer<'static>,
    ) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let der = p.self_signed(&key).expect("root").der().clone();
        (p, key, der)
    }

    #[test]
    fn a_new_root_is_trusted_only_when_a_trusted_root_certified_it() {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let (p1, k1, r1) = root_gen("Example Root CA");
        let (p2, k2, r2) = root_gen("Example Root CA");
        let (p3, k3, _) = root_gen("Example Root CA");
        // The link: root 2's name and key, signed by root 1.
        let link = p2
            .signed_by(&k2, &rcgen::Issuer::new(p1.clone(), k1))
            .expect("link")
            .der()
            .clone();
        let bundle = vec![r1.clone(), r2.clone()];
        assert_eq!(
            linked_roots(
                std::slice::from_ref(&r1),
                &bundle,
                std::slice::from_ref(&link),
                now
            ),
            vec![r2.clone()]
        );
        assert!(
            linked_roots(std::slice::from_ref(&r1), &bundle, &[], now).is_empty(),
            "no link, no trust"
        );
        assert!(
            linked_roots(&bundle, &bundle, std::slice::from_ref(&link), now).is_empty(),
            "nothing new"
        );
        // A link signed by a root that is not trusted proves nothing.
        let forged = p2
            .signed_by(&k2, &rcgen::Issuer::new(p3, k3))
            .expect("forged")
            .der()
            .clone();
        assert!(linked_roots(std::slice::from_ref(&r1), &bundle, &[forged], now).is_empty());
        // A link for another key does not vouch for root 2.
        let (_, k4, _) = root_gen("Example Root CA");
        let other = p2
            .signed_by(
                &k4,
                &rcgen::Issuer::new(p1, rcgen::KeyPair::generate().expect("key")),
            )
            .expect("other")
            .der()
            .clone();
        assert!(linked_roots(&[r1], &bundle, &[other], now).is_empty());
    }

    #[test]
    fn serials_print_without_leading_zeros() {
        assert_eq!(serial_hex(&[0, 0x0a, 0xbc]), "0abc");
        assert_eq!(serial_hex(&[0x7f]), "7f");
    }

    struct Pki {
        root_der: Vec<u8>,
        int_pem: String,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    fn pki() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
        let root_key = KeyPair::generate().expect("key");
        let mut rp = CertificateParams::new(Vec::<String>::new()).expect("params");
        rp.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        rp.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root = rp.self_signed(&root_key).expect("root");
        let root_issuer = rcgen::Issuer::new(rp, root_key);
        let int_key = KeyPair::generate().expect("key");
        let mut ip = CertificateParams::new(Vec::<String>::new()).expect("params");
        ip.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ip.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let int = ip.signed_by(&int_key, &root_issuer).expect("intermediate");
        Pki {
            root_der: root.der().to_vec(),
            int_pem: int.pem(),
            issuer: rcgen::Issuer::new(ip, int_key),
        }
    }

    fn leaf(pki: &Pki, uri: &str, dns: &[&str]) -> (String, String) {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, SanType};
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>())
            .expect("params");
        p.subject_alt_names
            .push(SanType::URI(uri.try_into().expect("uri")));
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
        p.not_after = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        let cert = p.signed_by(&key, &pki.issuer).expect("leaf");
        (
            key.serialize_pem(),
            format!("{}{}", cert.pem(), pki.int_pem),
        )
    }

    #[test]
    fn accepts_the_asked_for_certificate_and_refuses_every_other() {
        let pki = pki();
        let roots = vec![CertificateDer::from(pki.root_der.clone())];
        let dns = vec!["api.dev.svc.example.internal".to_string()];
        let expect = Expect {
            env: "dev",
            service: "api",
            dns: &dns,
            ips: &[],
        };
        let now = crate::status::now();
        let (key, chain) = leaf(
            &pki,
            "spiffe://example.internal/dev/api",
            &["api.dev.svc.example.internal"],
        );
        let info = validate(&key, &chain, &roots, &expect, now).expect("valid");
        assert_eq!(
            info.spiffe_id.as_deref(),
            Some("spiffe://example.internal/dev/api")
        );

        let (other_key, _) = leaf(&pki, "spiffe://example.internal/dev/api", &[]);
        assert_eq!(
            validate(&other_key, &chain, &roots, &expect, now),
            Err(ValidateError::KeyMismatch)
        );
        let (k, c) = leaf(
            &pki,
            "spiffe://example.internal/prod/api",
            &["api.dev.svc.example.internal"],
        );
        assert!(matches!(
            validate(&k, &c, &roots, &expect, now),
            Err(ValidateError::Identity(_))
        ));
        let (k, c) = leaf(
            &pki,
            "spiffe://example.internal/dev/api",
            &["web.dev.svc.example.internal"],
        );
        assert!(matches!(
            validate(&k, &c, &roots, &expect, now),
            Err(ValidateError::Identity(_))
        ));
        assert_eq!(
            validate(&key, &chain, &roots, &expect, now + 7200),
            Err(ValidateError::Expired)
        );
        let foreign = pki_foreign_root();
        assert!(matches!(
            validate(&key, &chain, &[foreign], &expect, now),
            Err(ValidateError::Chain(_))
        ));
    }

    #[test]
    fn public_chains_need_the_exact_names_and_a_trusted_root() {
        let pki = pki();
        let roots = vec![CertificateDer::from(pki.root_der.clone())];
        let now = crate::status::now();
        let (key, chain) = leaf(&pki, "spiffe://x/y/z", &["www.example.com", "example.com"]);
        let names = vec!["example.com".to_string(), "WWW.example.com".to_string()];
        let info = validate_public(&key, &chain, &roots, &names, now).expect("valid");
        assert_eq!(info.spiffe_id, None);
        assert!(!info.serial.is_empty());
        assert!(matches!(
            validate_public(&key, &chain, &roots, &names[..1], now),
            Err(ValidateError::Identity(_))
        ));
        assert!(matches!(
            validate_public(&key, &chain, &[pki_foreign_root()], &names, now),
            Err(ValidateError::Chain(_))
        ));
        let (other_key, _) = leaf(&pki, "spiffe://x/y/z", &[]);
        assert_eq!(
            validate_public(&other_key, &chain, &roots, &names, now),
            Err(ValidateError::KeyMismatch)
        );
        assert_eq!(
            validate_public(&key, &chain, &roots, &names, now + 7200),
            Err(ValidateError::Expired)
        );
    }

    fn pki_foreign_root() -> CertificateDer<'static> {
        CertificateDer::from(pki().root_der)
    }

    #[test]
    fn garbage_is_a_parse_error() {
        let e = validate(
            "nope",
            "nope",
            &[],
            &Expect {
                env: "dev",
                service: "api",
                dns: &[],
                ips: &[],
            },
            0,
        );
        assert!(matches!(e, Err(ValidateError::Parse(_))));
    }
}
