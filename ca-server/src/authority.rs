//! Pure signing: given validated instructions and an issuer, produce a certificate.
//!
//! No I/O, no clock, no policy. Callers pass the serial, the validity window and the final names;
//! the signer builds fresh parameters (nothing from a CSR but its public key), signs, and then
//! re-parses and verifies its own output before handing it back.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CrlDistributionPoint, CustomExtension, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    SubjectPublicKeyInfo as RcgenSpki,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

use crate::error::{Classify, ErrorKind};
use crate::pki::{Fingerprint, Identity, KeyType, Serial};

/// Why signing failed. Every variant is internal: the inputs were validated upstream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// rcgen refused the parameters or failed to sign.
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
    /// The issuer certificate is unusable (unparsable, or its validity ends before `not_before`).
    #[error("issuer unusable: {0}")]
    Issuer(String),
    /// The freshly signed certificate failed its own verification.
    #[error("issued certificate failed self-check: {0}")]
    SelfCheck(String),
}

impl Classify for AuthorityError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Internal
    }
}

/// A CA private key (PKCS#8), with a `Debug` that never prints key bytes. The PKCS#8 copy the
/// key pair keeps is zeroized when the last holder drops it (a [`Signer`]'s rcgen issuer shares
/// the one copy rather than holding a second).
pub struct CaKey(Arc<Zeroizing<KeyPair>>);

/// The key as rcgen's issuer holds it: the same key pair, shared.
struct SharedKey(Arc<Zeroizing<KeyPair>>);

impl rcgen::PublicKeyData for SharedKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        rcgen::PublicKeyData::algorithm(&**self.0)
    }
}

impl rcgen::SigningKey for SharedKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        rcgen::SigningKey::sign(&**self.0, msg)
    }
}

impl CaKey {
    /// A new ECDSA P-256 key.
    pub fn generate() -> Result<CaKey, AuthorityError> {
        Ok(CaKey(Arc::new(Zeroizing::new(KeyPair::generate_for(
            &rcgen::PKCS_ECDSA_P256_SHA256,
        )?))))
    }

    /// Loads a PKCS#8 DER key.
    pub fn from_pkcs8(der: &[u8]) -> Result<CaKey, AuthorityError> {
        let key = KeyPair::try_from(der)
            .map_err(|_| AuthorityError::Issuer("key does not parse as PKCS#8".into()))?;
        Ok(CaKey(Arc::new(Zeroizing::new(key))))
    }

    /// The PKCS#8 DER bytes, zeroized when dropped.
    pub fn pkcs8(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.serialize_der())
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> Vec<u8> {
        use rcgen::PublicKeyData;
        self.0.subject_public_key_info()
    }

    pub(crate) fn key_pair(&self) -> &KeyPair {
        &self.0
    }

    /// Signs `msg` (ECDSA P-256 with SHA-256, DER-encoded signature: CA keys are always P-256).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, AuthorityError> {
        use rcgen::SigningKey;
        Ok(self.0.sign(msg)?)
    }

    /// DER AlgorithmIdentifier of the signatures [`CaKey::sign`] makes (ecdsa-with-SHA256).
    pub fn signature_algorithm_der(&self) -> Vec<u8> {
        yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next()
                    .write_oid(&yasna::models::ObjectIdentifier::from_slice(&[
                        1, 2, 840, 10045, 4, 3, 2,
                    ]));
            })
        })
    }
}

impl fmt::Debug for CaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CaKey(<redacted>)")
    }
}

/// A CA certificate with its key: what signs. What signing and the self-check need of the
/// certificate (rcgen's issuer view, the subject and public key) is parsed once, here.
pub struct Signer {
    cert_der: Vec<u8>,
    cert_pem: String,
    key: CaKey,
    not_after: OffsetDateTime,
    subject_der: Vec<u8>,
    spki_der: Vec<u8>,
    public_key_bits: Vec<u8>,
    issuer: rcgen::Issuer<'static, SharedKey>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("cert_pem", &self.cert_pem)
            .field("key", &self.key)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Pairs a CA certificate with its key, refusing a key that does not match the certificate.
    pub fn new(cert_der: Vec<u8>, key: CaKey) -> Result<Signer, AuthorityError> {
        let (_, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|_| AuthorityError::Issuer("CA certificate does not parse".into()))?;
        if cert.public_key().raw != key.spki_der().as_slice() {
            return Err(AuthorityError::Issuer(
                "key does not match the CA certificate".into(),
            ));
        }
        let not_after = cert.validity().not_after.to_datetime();
        let subject_der = cert.subject().as_raw().to_vec();
        let spki_der = cert.public_key().raw.to_vec();
        let public_key_bits = cert.public_key().subject_public_key.data.to_vec();
        drop(cert);
        let issuer = rcgen::Issuer::from_ca_cert_der(
            &CertificateDer::from(cert_der.as_slice()),
            SharedKey(key.0.clone()),
        )?;
        Ok(Signer {
            cert_pem: pem_encode("CERTIFICATE", &cert_der),
            cert_der,
            key,
            not_after,
            subject_der,
            spki_der,
            public_key_bits,
            issuer,
        })
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The bits of the CA certificate's subjectPublicKey (what an OCSP responder's key hash
    /// covers).
    pub fn public_key_bits(&self) -> &[u8] {
        &self.public_key_bits
    }

    /// The CA key.
    pub fn key(&self) -> &CaKey {
        &self.key
    }

    /// rcgen's view of this CA as an issuer, sharing its key.
    pub(crate) fn rcgen_issuer(&self) -> &rcgen::Issuer<'static, impl rcgen::SigningKey> {
        &self.issuer
    }

    fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }
}

/// Where relying parties fetch revocation information for a leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistributionUrls {
    /// CRL distribution point URI.
    pub crl: String,
    /// OCSP responder URI (Authority Information Access).
    pub ocsp: String,
}

/// Everything needed to create a root.
#[derive(Debug, Clone)]
pub struct RootSpec<'a> {
    /// Trust domain named in the subject.
    pub trust_domain: &'a str,
    /// Serial of the root.
    pub serial: &'a Serial,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// Everything needed to create an environment intermediate.
#[derive(Debug, Clone)]
pub struct IntermediateSpec<'a> {
    /// Trust domain named in the subject.
    pub trust_domain: &'a str,
    /// Environment name.
    pub env: &'a str,
    /// Permitted DNS subtrees.
    pub dns_suffixes: &'a [String],
    /// Serial of the intermediate.
    pub serial: &'a Serial,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// Desired end of validity (capped by the root's).
    pub not_after: OffsetDateTime,
    /// Generation (1 at init); later ones carry it in their name, so no two share a name.
    pub generation: i64,
}

/// The common name of an intermediate, with its generation from the second on.
fn generation_name(base: String, generation: i64) -> String {
    if generation > 1 {
        format!("{base} G{generation}")
    } else {
        base
    }
}

/// Everything needed to sign a leaf.
#[derive(Debug, Clone)]
pub struct LeafSpec<'a> {
    /// Trust domain.
    pub trust_domain: &'a str,
    /// The workload identity: its SPIFFE ID goes into the SANs and the leaf serves both TLS
    /// directions. `None` for the CA's own HTTPS certificate (serverAuth only, no SPIFFE ID).
    pub identity: Option<&'a Identity>,
    /// Final DNS names (already allowed by policy).
    pub dns: &'a [String],
    /// Final IP SANs (already allowed by policy).
    pub ips: &'a [IpAddr],
    /// The subject's public key (DER SubjectPublicKeyInfo from a validated CSR).
    pub spki_der: &'a [u8],
    /// Its type (RSA gets keyEncipherment too).
    pub key_type: KeyType,
    /// Unique serial (already reserved in the store).
    pub serial: &'a Serial,
    /// Start of validity (callers backdate for clock skew).
    pub not_before: OffsetDateTime,
    /// Desired end of validity (capped by the issuer's).
    pub not_after: OffsetDateTime,
    /// Revocation URLs, when a public URL is configured.
    pub urls: Option<&'a DistributionUrls>,
    /// The subject CN when it is not the service name: ACME clients read the names to renew
    /// from the certificate, CN included, so ACME leaves carry their first DNS name there.
    pub common_name: Option<&'a str>,
}

/// A signed, self-checked certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// DER bytes.
    pub der: Vec<u8>,
    /// PEM text.
    pub pem: String,
    /// Effective start of validity.
    pub not_before: OffsetDateTime,
    /// Effective end of validity (after capping).
    pub not_after: OffsetDateTime,
    /// SHA-256 of the DER.
    pub fingerprint: Fingerprint,
}

fn ca_name(trust_domain: &str, cn: String, ou: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    if let Some(ou) = ou {
        dn.push(DnType::OrganizationalUnitName, ou);
    }
    dn.push(DnType::CommonName, cn);
    dn
}

fn serial_number(serial: &Serial) -> SerialNumber {
    SerialNumber::from_slice(serial.as_bytes())
}

fn issued(der: Vec<u8>) -> Result<Issued, AuthorityError> {
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|e| AuthorityError::SelfCheck(format!("does not parse: {e}")))?;
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    drop(cert);
    let pem = pem_encode("CERTIFICATE", &der);
    let fingerprint = Fingerprint::of(&der);
    Ok(Issued {
        der,
        pem,
        not_before,
        not_after,
        fingerprint,
    })
}

/// PEM-encodes DER with the given label (LF line endings).
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// A root's parameters. Every generation of the root has the same name: the certificates that
/// link one root to the next are then self-issued, so they do not count against the path
/// length of the root that signed them (RFC 5280 4.2.1.9), and chain builders tell the roots
/// apart by key identifier.
fn root_params(spec: &RootSpec<'_>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = ca_name(
        spec.trust_domain,
        format!("{} Root CA", spec.trust_domain),
        None,
    );
    p.serial_number = Some(serial_number(spec.serial));
    p.not_before = spec.not_before;
    p.not_after = spec.not_after;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// Creates a self-signed root: CA:TRUE pathlen 1, keyCertSign + cRLSign.
pub fn create_root(spec: &RootSpec<'_>, key: &CaKey) -> Result<Issued, AuthorityError> {
    let p = root_params(spec);
    let cert = p.self_signed(key.key_pair())?;
    let out = issued(cert.der().to_vec())?;
    verify_chain(&out.der, &out.der)?;
    Ok(out)
}

/// Certifies another root's key (`spki_der`) under `issuer`, the link that lets a trust store
/// holding either root validate chains of the other during a root rotation. Its validity is
/// capped by the issuer's.
pub fn cross_certify_root(
    spec: &RootSpec<'_>,
    spki_der: &[u8],
    issuer: &Signer,
) -> Result<Issued, AuthorityError> {
    let mut p = root_params(spec);
    p.not_after = spec.not_after.min(issuer.not_after());
    if p.not_after <= p.not_before {
        return Err(AuthorityError::Issuer(
            "the signing root expires before the cross-certificate would start".into(),
        ));
    }
    p.use_authority_key_identifier_extension = true;
    let public_key = RcgenSpki::from_der(spki_der)?;
    let cert = p.signed_by(&public_key, issuer.rcgen_issuer())?;
    let out = issued(cert.der().to_vec())?;
    verify_chain(&out.der, issuer.cert_der())?;
    Ok(out)
}

/// Parameters every intermediate shares: CA:TRUE pathlen 0, AKI, validity capped by the root's.
fn intermediate_params(
    root: &Signer,
    name: DistinguishedName,
    serial: &Serial,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, AuthorityError> {
    let not_after = not_after.min(root.not_after());
    if not_after <= not_before {
        return Err(AuthorityError::Issuer(
            "root expires before the intermediate would start".into(),
        ));
    }
    let mut p = CertificateParams::default();
    p.distinguished_name = name;
    p.serial_number = Some(serial_number(serial));
    p.not_before = not_before;
    p.not_after = not_after;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

fn sign_intermediate(
    p: &CertificateParams,
    key: &CaKey,
    root: &Signer,
) -> Result<Issued, AuthorityError> {
    let cert = p.signed_by(key.key_pair(), root.rcgen_issuer())?;
    let out = issued(cert.der().to_vec())?;
    verify_chain(&out.der, root.cert_der())?;
    Ok(out)
}

/// Creates an environment intermediate signed by `root`: CA:TRUE pathlen 0, keyCertSign, cRLSign
/// and digitalSignature (to sign OCSP responses itself), and critical name constraints permitting
/// only the environment's DNS suffixes.
pub fn create_intermediate(
    spec: &IntermediateSpec<'_>,
    key: &CaKey,
    root: &Signer,
) -> Result<Issued, AuthorityError> {
    let mut p = intermediate_params(
        root,
        ca_name(
            spec.trust_domain,
            generation_name(
                format!("{} {} Intermediate CA", spec.trust_domain, spec.env),
                spec.generation,
            ),
            Some(spec.env),
        ),
        spec.serial,
        spec.not_before,
        spec.not_after,
    )?;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    // Only DNS subtrees. A URI subtree could pin SPIFFE IDs to the trust domain's host (X.509
    // cannot express the /<env>/ path at all), but rustls-webpki fails closed on URI
    // constraints and would reject every leaf of this intermediate, so the SPIFFE path is
    // enforced by policy at issuance and by the store at authentication instead.
    p.name_constraints = Some(rcgen::NameConstraints {
        permitted_subtrees: spec
            .dns_suffixes
            .iter()
            .map(|s| rcgen::GeneralSubtree::DnsName(s.clone()))
            .collect(),
        excluded_subtrees: Vec::new(),
    });
    sign_intermediate(&p, key, root)
}

/// Everything needed to create the intermediate that issues the CA server's own HTTPS certificate.
#[derive(Debug, Clone)]
pub struct TlsIntermediateSpec<'a> {
    /// Trust domain named in the subject.
    pub trust_domain: &'a str,
    /// Host names the CA server may be reached by (permitted DNS subtrees).
    pub dns: &'a [String],
    /// Addresses the CA server may be reached by (permitted as single-host IP subtrees).
    pub ips: &'a [IpAddr],
    /// Serial.
    pub serial: &'a Serial,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// Desired end of validity (capped by the root's).
    pub not_after: OffsetDateTime,
    /// Generation (1 at init).
    pub generation: i64,
}

/// Creates the intermediate for the CA server's own HTTPS certificate: pathlen 0, EKU serverAuth
/// only (its leaves can never act as mTLS clients), and name constraints that permit only the
/// server's names and addresses, so its key cannot mint a workload name.
pub fn create_tls_intermediate(
    spec: &TlsIntermediateSpec<'_>,
    key: &CaKey,
    root: &Signer,
) -> Result<Issued, AuthorityError> {
    let mut p = intermediate_params(
        root,
        ca_name(
            spec.trust_domain,
            generation_name(
                format!("{} CA Server Intermediate", spec.trust_domain),
                spec.generation,
            ),
            None,
        ),
        spec.serial,
        spec.not_before,
        spec.not_after,
    )?;
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let mut permitted: Vec<rcgen::GeneralSubtree> = spec
        .dns
        .iter()
        .map(|d| rcgen::GeneralSubtree::DnsName(d.clone()))
        .collect();
    for ip in spec.ips {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        permitted.push(rcgen::GeneralSubtree::IpAddress(
            rcgen::CidrSubnet::from_addr_prefix(*ip, prefix),
        ));
    }
    p.name_constraints = Some(rcgen::NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: Vec::new(),
    });
    sign_intermediate(&p, key, root)
}

/// DER of an Authority Information Access extension naming an OCSP responder.
fn ocsp_aia(url: &str) -> CustomExtension {
    let content = yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_sequence(|w| {
                w.next()
                    .write_oid(&yasna::models::ObjectIdentifier::from_slice(&[
                        1, 3, 6, 1, 5, 5, 7, 48, 1,
                    ]));
                w.next()
                    .write_tagged_implicit(yasna::Tag::context(6), |w| w.write_ia5_string(url));
            });
        });
    });
    CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], content)
}

/// Signs an end-entity certificate.
///
/// 1. Build fresh parameters: CA:FALSE, digitalSignature (+ keyEncipherment for RSA), serverAuth +
///    clientAuth, SANs = SPIFFE ID + names, AKI/SKI, revocation URLs.
/// 2. Cap notAfter at the issuer's notAfter.
/// 3. Sign with the issuer key over the CSR's public key only.
/// 4. Re-parse the result and verify it chains to the issuer and says what was asked.
pub fn sign_leaf(spec: &LeafSpec<'_>, issuer: &Signer) -> Result<Issued, AuthorityError> {
    let not_after = spec.not_after.min(issuer.not_after());
    if not_after <= spec.not_before {
        return Err(AuthorityError::Issuer(
            "issuer expires before the certificate would start".into(),
        ));
    }
    let spiffe_id = spec.identity.map(|id| id.spiffe_id(spec.trust_domain));
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, spec.trust_domain);
    match spec.identity {
        Some(id) => {
            dn.push(DnType::OrganizationalUnitName, id.env.as_str());
            dn.push(
                DnType::CommonName,
                spec.common_name.unwrap_or(id.service.as_str()),
            );
        }
        None => dn.push(
            DnType::CommonName,
            format!("{} CA server", spec.trust_domain),
        ),
    }
    p.distinguished_name = dn;
    p.serial_number = Some(serial_number(spec.serial));
    p.not_before = spec.not_before;
    p.not_after = not_after;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if spec.key_type == KeyType::Rsa {
        p.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    p.extended_key_usages = match spec.identity {
        Some(_) => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        None => vec![ExtendedKeyUsagePurpose::ServerAuth],
    };
    let mut sans = Vec::new();
    if let Some(id) = &spiffe_id {
        sans.push(SanType::URI(id.as_str().try_into()?));
    }
    for n in spec.dns {
        sans.push(SanType::DnsName(n.as_str().try_into()?));
    }
    for ip in spec.ips {
        sans.push(SanType::IpAddress(*ip));
    }
    p.subject_alt_names = sans;
    p.use_authority_key_identifier_extension = true;
    if let Some(urls) = spec.urls {
        p.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![urls.crl.clone()],
        }];
        p.custom_extensions.push(ocsp_aia(&urls.ocsp));
    }
    let public_key = RcgenSpki::from_der(spec.spki_der)?;
    let cert = p.signed_by(&public_key, issuer.rcgen_issuer())?;
    checked_leaf(cert.der().to_vec(), spec, spiffe_id.as_deref(), issuer)
}

/// Verifies that `cert` names `issuer` as its issuer and carries a valid signature by it.
pub fn verify_chain(cert_der: &[u8], issuer_der: &[u8]) -> Result<(), AuthorityError> {
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| AuthorityError::SelfCheck(format!("does not parse: {e}")))?;
    let (_, issuer) = X509Certificate::from_der(issuer_der)
        .map_err(|e| AuthorityError::SelfCheck(format!("issuer does not parse: {e}")))?;
    issued_by(
        &cert,
        issuer.subject().as_raw(),
        issuer.public_key(),
        issuer.validity().not_after.timestamp(),
    )
}

/// That `cert` names the issuer with subject `subject_der` and key `key`, carries a valid
/// signature by it, and ends no later than the issuer (`issuer_not_after`, Unix seconds).
fn issued_by(
    cert: &X509Certificate<'_>,
    subject_der: &[u8],
    key: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
    issuer_not_after: i64,
) -> Result<(), AuthorityError> {
    if cert.issuer().as_raw() != subject_der {
        return Err(AuthorityError::SelfCheck(
            "issuer name does not match".into(),
        ));
    }
    cert.verify_signature(Some(key))
        .map_err(|e| AuthorityError::SelfCheck(format!("signature does not verify: {e}")))?;
    if cert.validity().not_after.timestamp() > issuer_not_after {
        return Err(AuthorityError::SelfCheck("outlives its issuer".into()));
    }
    Ok(())
}

/// The self-check of a freshly signed leaf, in one parse: it names `issuer` and carries its
/// valid signature, does not outlive it, and says exactly what `spec` asked for.
fn checked_leaf(
    der: Vec<u8>,
    spec: &LeafSpec<'_>,
    spiffe_id: Option<&str>,
    issuer: &Signer,
) -> Result<Issued, AuthorityError> {
    let fail = |m: &str| AuthorityError::SelfCheck(m.to_string());
    let (_, cert) = X509Certificate::from_der(&der).map_err(|_| fail("does not parse"))?;
    let (_, issuer_key) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&issuer.spki_der)
        .map_err(|_| fail("issuer key does not parse"))?;
    issued_by(
        &cert,
        &issuer.subject_der,
        &issuer_key,
        issuer.not_after.unix_timestamp(),
    )?;
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    if Serial::from_bytes(cert.raw_serial()) != *spec.serial {
        return Err(fail("serial differs from the reserved one"));
    }
    if cert.public_key().raw != spec.spki_der {
        return Err(fail("public key differs from the request's"));
    }
    match cert.basic_constraints() {
        Ok(Some(bc)) if !bc.value.ca => {}
        _ => return Err(fail("not marked CA:FALSE")),
    }
    let san = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .ok_or_else(|| fail("no subjectAltName"))?;
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for n in &san.value.general_names {
        match n {
            GeneralName::URI(u) => uris.push(u.to_string()),
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            GeneralName::IPAddress(b) => ips.push(b.to_vec()),
            _ => return Err(fail("unexpected SAN type")),
        }
    }
    let want_ips: Vec<Vec<u8>> = spec
        .ips
        .iter()
        .map(|ip| match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        })
        .collect();
    let want_uris: Vec<String> = spiffe_id.iter().map(|s| s.to_string()).collect();
    if uris != want_uris || dns != spec.dns || ips != want_ips {
        return Err(fail("SANs differ from the decision"));
    }
    drop(cert);
    Ok(Issued {
        pem: pem_encode("CERTIFICATE", &der),
        fingerprint: Fingerprint::of(&der),
        der,
        not_before,
        not_after,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use time::Duration;

    pub(crate) struct TestPki {
        pub root: Signer,
        pub dev: Signer,
        pub prod: Signer,
        pub now: OffsetDateTime,
    }

    pub(crate) fn serial(n: u8) -> Serial {
        Serial::from_bytes(&[0x40, n, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14])
    }

    pub(crate) fn test_pki() -> TestPki {
        let now = crate::clock::whole_seconds(OffsetDateTime::now_utc());
        let root_key = CaKey::generate().expect("key");
        let root_cert = create_root(
            &RootSpec {
                trust_domain: "example.internal",
                serial: &serial(1),
                not_before: now - Duration::minutes(1),
                not_after: now + Duration::days(3650),
            },
            &root_key,
        )
        .expect("root");
        let root = Signer::new(root_cert.der, root_key).expect("root signer");
        let mk = |env: &str, n: u8| {
            let key = CaKey::generate().expect("key");
            let suffixes = vec![format!("{env}.svc.example.internal")];
            let cert = create_intermediate(
                &IntermediateSpec {
                    trust_domain: "example.internal",
                    env,
                    dns_suffixes: &suffixes,
                    serial: &serial(n),
                    not_before: now - Duration::minutes(1),
                    not_after: now + Duration::days(365),
                    generation: 1,
                },
                &key,
                &root,
            )
            .expect("intermediate");
            Signer::new(cert.der, key).expect("signer")
        };
        let dev = mk("dev", 2);
        let prod = mk("prod", 3);
        TestPki {
            root,
            dev,
            prod,
            now,
        }
    }

    pub(crate) fn leaf_key(alg: &'static rcgen::SignatureAlgorithm) -> KeyPair {
        KeyPair::generate_for(alg).expect("key")
    }

    fn sign(
        pki: &TestPki,
        issuer: &Signer,
        env: &str,
        dns: &[String],
        not_after: OffsetDateTime,
    ) -> Issued {
        use rcgen::PublicKeyData;
        let key = leaf_key(&rcgen::PKCS_ECDSA_P256_SHA256);
        let identity = Identity {
            env: env.into(),
            service: "api".into(),
        };
        sign_leaf(
            &LeafSpec {
                trust_domain: "example.internal",
                identity: Some(&identity),
                dns,
                ips: &[],
                spki_der: &key.subject_public_key_info(),
                key_type: KeyType::P256,
                serial: &serial(9),
                not_before: pki.now - Duration::minutes(1),
                not_after,
                urls: Some(&DistributionUrls {
                    crl: "http://ca.example.internal/crl/dev.crl".into(),
                    ocsp: "http://ca.example.internal/ocsp".into(),
                }),
                common_name: None,
            },
            issuer,
        )
        .expect("signed")
    }

    #[test]
    fn leaf_has_the_required_profile() {
        let pki = test_pki();
        let dns = vec!["api.dev.svc.example.internal".to_string()];
        let leaf = sign(&pki, &pki.dev, "dev", &dns, pki.now + Duration::hours(1));
        let (_, cert) = X509Certificate::from_der(&leaf.der).expect("parses");
        let bc = cert.basic_constraints().expect("ok").expect("present");
        assert!(!bc.value.ca && bc.critical);
        let eku = cert
            .extended_key_usage()
            .expect("ok")
            .expect("present")
            .value;
        assert!(eku.server_auth && eku.client_auth);
        let ku = cert.key_usage().expect("ok").expect("present").value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        let aia = cert
            .iter_extensions()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.1")
            .expect("AIA present");
        assert!(matches!(
            aia.parsed_extension(),
            x509_parser::extensions::ParsedExtension::AuthorityInfoAccess(a)
                if a.accessdescs.iter().any(|d| d.access_location == GeneralName::URI("http://ca.example.internal/ocsp"))
        ));
        assert_eq!(Serial::from_bytes(cert.raw_serial()), serial(9));
        assert_eq!(leaf.not_after, pki.now + Duration::hours(1));
    }

    #[test]
    fn the_self_check_refuses_what_the_issuer_did_not_sign_or_the_request_did_not_ask() {
        use rcgen::PublicKeyData;
        let pki = test_pki();
        let key = leaf_key(&rcgen::PKCS_ECDSA_P256_SHA256);
        let spki = key.subject_public_key_info();
        let identity = Identity {
            env: "dev".into(),
            service: "api".into(),
        };
        let dns = ["api.dev.svc.example.internal".to_string()];
        let spec = LeafSpec {
            trust_domain: "example.internal",
            identity: Some(&identity),
            dns: &dns,
            ips: &[],
            spki_der: &spki,
            key_type: KeyType::P256,
            serial: &serial(9),
            not_before: pki.now - Duration::minutes(1),
            not_after: pki.now + Duration::hours(1),
            urls: None,
            common_name: None,
        };
        let spiffe = identity.spiffe_id("example.internal");
        let check = |der: Vec<u8>, spec: &LeafSpec<'_>, issuer: &Signer| {
            checked_leaf(der, spec, Some(&spiffe), issuer)
                .map(|i| i.fingerprint)
                .map_err(|e| e.to_string())
        };
        let good = sign_leaf(&spec, &pki.dev).expect("signed");
        assert_eq!(
            check(good.der.clone(), &spec, &pki.dev),
            Ok(good.fingerprint)
        );
        let by_prod = sign_leaf(&spec, &pki.prod).expect("signed");
        let err = check(by_prod.der, &spec, &pki.dev).expect_err("another issuer");
        assert!(err.contains("issuer name does not match"), "{err}");
        let mut tampered = good.der.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let err = check(tampered, &spec, &pki.dev).expect_err("bad signature");
        assert!(err.contains("signature does not verify"), "{err}");
        let other_serial = serial(10);
        let asked_other = LeafSpec {
            serial: &other_serial,
            ..spec.clone()
        };
        let err = check(good.der.clone(), &asked_other, &pki.dev).expect_err("serial");
        assert!(err.contains("serial differs"), "{err}");
        let more = [dns[0].clone(), "www.dev.svc.example.internal".to_string()];
        let asked_more = LeafSpec {
            dns: &more,
            ..spec.clone()
        };
        let err = check(good.der, &asked_more, &pki.dev).expect_err("names");
        assert!(err.contains("SANs differ"), "{err}");
    }

    #[test]
    fn not_after_is_capped_by_the_issuer() {
        let pki = test_pki();
        let leaf = sign(&pki, &pki.dev, "dev", &[], pki.now + Duration::days(4000));
        let (_, dev) = X509Certificate::from_der(pki.dev.cert_der()).expect("parses");
        assert_eq!(leaf.not_after, dev.validity().not_after.to_datetime());
    }

    #[test]
    fn signer_refuses_a_key_that_does_not_match() {
        let pki = test_pki();
        let other = CaKey::generate().expect("key");
        assert!(Signer::new(pki.dev.cert_der().to_vec(), other).is_err());
        assert!(format!("{:?}", pki.dev.key()).contains("redacted"));
    }

    #[test]
    fn chain_verification_rejects_the_wrong_issuer() {
        let pki = test_pki();
        let leaf = sign(&pki, &pki.dev, "dev", &[], pki.now + Duration::hours(1));
        assert!(verify_chain(&leaf.der, pki.dev.cert_der()).is_ok());
        assert!(verify_chain(&leaf.der, pki.prod.cert_der()).is_err());
        assert!(verify_chain(pki.dev.cert_der(), pki.root.cert_der()).is_ok());
    }

    fn openssl_verify(dir: &std::path::Path, pki: &TestPki, leaf: &Issued) -> std::process::Output {
        let write = |name: &str, der: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, pem_encode("CERTIFICATE", der)).expect("write");
            p
        };
        let root = write("root.pem", pki.root.cert_der());
        let chain = write("dev.pem", pki.dev.cert_der());
        let leaf = write("leaf.pem", &leaf.der);
        std::process::Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(root)
            .arg("-untrusted")
            .arg(chain)
            .arg(leaf)
            .output()
            .expect("openssl runs (scripts/test.sh installs it)")
    }

    #[test]
    fn openssl_accepts_a_dev_leaf() {
        let pki = test_pki();
        let tmp = tempfile::tempdir().expect("tmp");
        for dns in [vec!["api.dev.svc.example.internal".to_string()], vec![]] {
            let leaf = sign(&pki, &pki.dev, "dev", &dns, pki.now + Duration::hours(1));
            let out = openssl_verify(tmp.path(), &pki, &leaf);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("OK"),
                "{stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn openssl_rejects_a_prod_name_forged_with_the_dev_intermediate() {
        // Bypasses policy on purpose: the name constraints alone must stop this leaf.
        let pki = test_pki();
        let tmp = tempfile::tempdir().expect("tmp");
        let dns = vec!["api.prod.svc.example.internal".to_string()];
        let forged = sign(&pki, &pki.dev, "dev", &dns, pki.now + Duration::hours(1));
        let out = openssl_verify(tmp.path(), &pki, &forged);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "openssl accepted a forged leaf: {all}"
        );
        assert!(all.contains("permitted subtree violation"), "{all}");
    }

    #[test]
    fn rustls_webpki_accepts_a_dev_leaf_and_rejects_a_forged_prod_name() {
        use rustls::server::WebPkiClientVerifier;
        use rustls_pki_types::UnixTime;
        use std::sync::Arc;

        let pki = test_pki();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(pki.root.cert_der().to_vec()))
            .expect("root");
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier");
        let intermediates = [CertificateDer::from(pki.dev.cert_der().to_vec())];
        let now = UnixTime::now();
        let good = sign(
            &pki,
            &pki.dev,
            "dev",
            &["api.dev.svc.example.internal".to_string()],
            pki.now + Duration::hours(1),
        );
        verifier
            .verify_client_cert(&CertificateDer::from(good.der), &intermediates, now)
            .expect("webpki accepts a dev leaf with a SPIFFE URI");
        let forged = sign(
            &pki,
            &pki.dev,
            "dev",
            &["api.prod.svc.example.internal".to_string()],
            pki.now + Duration::hours(1),
        );
        assert!(
            verifier
                .verify_client_cert(&CertificateDer::from(forged.der), &intermediates, now)
                .is_err(),
            "webpki must reject a prod name under the dev intermediate"
        );
    }
}
