//! The ACME resources driven in-process with signed requests: the whole flow from directory
//! to revocation, and the protocol refusals clients depend on (each with its problem type and
//! a fresh nonce).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::jws::b64;
use super::validate::ValidatorConfig;
use super::{AcmeServer, routes};
use crate::service::Ca;
use crate::store::IssuedVia;

const BASE: &str = "https://ca.test";
const NAME: &str = "web.dev.svc.example.internal";

async fn example_ca(dir: &std::path::Path) -> Arc<Ca> {
    use crate::clock::ManualClock;
    use crate::service::{CaLifetimes, CaOptions};
    let now = time::OffsetDateTime::now_utc();
    let (policy, store) = crate::service::testing::example_store(
        dir,
        None,
        CaLifetimes::default(),
        &["localhost".to_string()],
        now,
    )
    .await;
    Arc::new(
        Ca::open(
            store,
            Arc::new(ManualClock::new(now)),
            policy,
            None,
            CaOptions::default(),
        )
        .await
        .expect("open"),
    )
}

/// The ACME routes as the server mounts them, validating http-01 against `http_port`.
fn app(ca: Arc<Ca>, http_port: u16) -> Router {
    let validator = ValidatorConfig {
        http_port,
        hosts: [(NAME.to_string(), std::net::IpAddr::from([127, 0, 0, 1]))].into(),
        allow: vec!["127.0.0.0/8".parse().expect("net")],
        timeout: std::time::Duration::from_secs(3),
        ..ValidatorConfig::default()
    };
    let server = Arc::new(AcmeServer {
        ca,
        base_url: BASE.into(),
        validator,
        website: Some("https://ca.test/about".into()),
        terms_of_service: None,
    });
    Router::new().nest_service("/acme", routes::router(server))
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> String {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A problem document of `kind` with a fresh nonce.
    fn expect_problem(&self, status: u16, kind: &str) -> String {
        let v = self.json();
        assert_eq!(self.status.as_u16(), status, "{v}");
        assert_eq!(
            self.header("content-type"),
            "application/problem+json",
            "{v}"
        );
        assert_eq!(
            v["type"],
            format!("urn:ietf:params:acme:error:{kind}"),
            "{v}"
        );
        assert!(!self.header("replay-nonce").is_empty(), "no nonce on {v}");
        v["detail"].as_str().unwrap_or_default().to_string()
    }
}

async fn send(app: &Router, method: Method, url: &str, ct: &str, body: Vec<u8>) -> Resp {
    let path = url.strip_prefix(BASE).unwrap_or(url);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", ct)
        .body(Body::from(body))
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body")
        .to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

async fn post_jose(app: &Router, target: &str, body: Vec<u8>) -> Resp {
    send(app, Method::POST, target, "application/jose+json", body).await
}

fn url(path: &str) -> String {
    format!("{BASE}/acme/dev/{path}")
}

/// An ACME client with an ES256 key.
struct Client {
    app: Router,
    key: EcdsaKeyPair,
    kid: Option<String>,
    nonce: Option<String>,
}

impl Client {
    fn new(app: &Router) -> Client {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        Client::with_pkcs8(app, pkcs8.as_ref())
    }

    fn with_pkcs8(app: &Router, pkcs8: &[u8]) -> Client {
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &SystemRandom::new(),
        )
        .expect("key");
        Client {
            app: app.clone(),
            key,
            kid: None,
            nonce: None,
        }
    }

    fn jwk(&self) -> Value {
        let point = self.key.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])})
    }

    async fn fresh_nonce(&mut self) -> String {
        if let Some(n) = self.nonce.take() {
            return n;
        }
        let r = send(&self.app, Method::HEAD, &url("new-nonce"), "", vec![]).await;
        r.header("replay-nonce")
    }

    /// A flattened JWS over `protected` and `payload` (None: POST-as-GET).
    fn sign(&self, protected: &Value, payload: Option<&Value>) -> Vec<u8> {
        let p = b64(protected.to_string().as_bytes());
        let body = payload
            .map(|v| b64(v.to_string().as_bytes()))
            .unwrap_or_default();
        let sig = self
            .key
            .sign(&SystemRandom::new(), format!("{p}.{body}").as_bytes())
            .expect("sign");
        json!({"protected": p, "payload": body, "signature": b64(sig.as_ref())})
            .to_string()
            .into_bytes()
    }

    fn header(&self, target: &str, nonce: &str) -> Value {
        let mut h = json!({"alg": "ES256", "nonce": nonce, "url": target});
        match &self.kid {
            Some(kid) => h["kid"] = json!(kid),
            None => h["jwk"] = self.jwk(),
        }
        h
    }

    async fn post(&mut self, target: &str, payload: Option<Value>) -> Resp {
        let nonce = self.fresh_nonce().await;
        let body = self.sign(&self.header(target, &nonce), payload.as_ref());
        let r = post_jose(&self.app, target, body).await;
        let n = r.header("replay-nonce");
        self.nonce = (!n.is_empty()).then_some(n);
        r
    }

    async fn register(&mut self) -> String {
        let r = self
            .post(
                &url("new-account"),
                Some(json!({"termsOfServiceAgreed": true, "contact": ["mailto:ops@example.internal"]})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json());
        let account = r.header("location");
        self.kid = Some(account.clone());
        account
    }
}

/// Answers every http-01 request with `key_auth`.
async fn responder(key_auth: String) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{key_auth}",
                key_auth.len()
            );
            let _ = s.write_all(answer.as_bytes()).await;
            let _ = s.shutdown().await;
        }
    });
    (port, task)
}

async fn poll(client: &mut Client, target: &str, until: &str) -> Value {
    for _ in 0..100 {
        let r = client.post(target, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json());
        let v = r.json();
        if v["status"] == until {
            return v;
        }
        assert!(
            v["status"] == "pending" || v["status"] == "processing" || v["status"] == "ready",
            "{v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{target} never became {until}");
}

fn csr_b64(names: &[&str], pkcs8: &[u8]) -> String {
    let key = rcgen::KeyPair::try_from(pkcs8).expect("rcgen key");
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    b64(params.serialize_request(&key).expect("csr").der())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_registers_orders_validates_finalizes_downloads_and_revokes() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = example_ca(dir.path()).await;
    // Validation needs the responder's port, known once the token is: until then the routes
    // are mounted with an unused port, then again (same CA and store) with the responder's.
    let app = app(ca.clone(), 9);

    // Directory and nonces.
    let d = send(&app, Method::GET, &url("directory"), "", vec![]).await;
    assert_eq!(d.status, StatusCode::OK);
    let dir_json = d.json();
    for (k, p) in [
        ("newNonce", "new-nonce"),
        ("newAccount", "new-account"),
        ("newOrder", "new-order"),
        ("revokeCert", "revoke-cert"),
        ("keyChange", "key-change"),
        ("renewalInfo", "renewal-info"),
    ] {
        assert_eq!(dir_json[k], url(p), "{dir_json}");
    }
    assert_eq!(dir_json["meta"]["externalAccountRequired"], false);
    assert_eq!(dir_json["meta"]["website"], "https://ca.test/about");
    assert!(
        d.header("link")
            .contains(&format!("<{}>;rel=\"index\"", url("directory")))
    );
    let head = send(&app, Method::HEAD, &url("new-nonce"), "", vec![]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(!head.header("replay-nonce").is_empty());
    assert_eq!(head.header("cache-control"), "no-store");
    let get = send(&app, Method::GET, &url("new-nonce"), "", vec![]).await;
    assert_eq!(get.status, StatusCode::NO_CONTENT);
    assert_eq!(get.header("cache-control"), "no-store");
    let staging = send(
        &app,
        Method::GET,
        &format!("{BASE}/acme/prod/directory"),
        "",
        vec![],
    )
    .await;
    assert_eq!(
        staging.status,
        StatusCode::NOT_FOUND,
        "prod has no ACME directory"
    );

    // Account: created once, found again by its key.
    let mut client = Client::new(&app);
    let account = client.register().await;
    assert!(account.starts_with(&url("account/")), "{account}");
    let again = {
        let kid = client.kid.take();
        let r = client
            .post(
                &url("new-account"),
                Some(json!({"onlyReturnExisting": true})),
            )
            .await;
        client.kid = kid;
        r
    };
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.header("location"), account);
    let acct = client.post(&account, None).await;
    assert_eq!(acct.status, StatusCode::OK);
    assert_eq!(acct.json()["status"], "valid");

    // A name outside the policy is refused at newOrder.
    let r = client
        .post(
            &url("new-order"),
            Some(json!({"identifiers": [{"type": "dns", "value": "db.dev.svc.example.internal"}]})),
        )
        .await;
    let detail = r.expect_problem(400, "rejectedIdentifier");
    assert!(detail.contains("db.dev.svc.example.internal"), "{detail}");

    // The order, its authorization and the http-01 challenge.
    let r = client
        .post(
            &url("new-order"),
            Some(json!({"identifiers": [{"type": "dns", "value": NAME}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json());
    let order_url = r.header("location");
    let order = r.json();
    assert_eq!(order["status"], "pending");
    let finalize_url = order["finalize"].as_str().expect("finalize").to_string();
    let authz_url = order["authorizations"][0]
        .as_str()
        .expect("authz")
        .to_string();
    let early = client
        .post(&finalize_url, Some(json!({"csr": "MIIB"})))
        .await;
    early.expect_problem(403, "orderNotReady");
    let authz = client.post(&authz_url, None).await.json();
    assert_eq!(authz["identifier"]["value"], NAME);
    let http = authz["challenges"]
        .as_array()
        .expect("challenges")
        .iter()
        .find(|c| c["type"] == "http-01")
        .expect("http-01 offered")
        .clone();
    let token = http["token"].as_str().expect("token");
    let thumbprint = {
        let jwk = super::jws::Jwk::from_json(&client.jwk()).expect("jwk");
        jwk.thumbprint()
    };
    let (port, server) = responder(format!("{token}.{thumbprint}")).await;
    let app = self::app(ca.clone(), port);
    client.app = app.clone();
    let chall_url = http["url"].as_str().expect("url").to_string();
    let r = client.post(&chall_url, Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
    assert!(
        r.header("link")
            .contains(&format!("<{authz_url}>;rel=\"up\"")),
        "{}",
        r.header("link")
    );
    let authz = poll(&mut client, &authz_url, "valid").await;
    assert_eq!(authz["challenges"].as_array().map(Vec::len), Some(3));
    let order = poll(&mut client, &order_url, "ready").await;
    assert!(order.get("certificate").is_none());
    server.abort();

    // Finalize: a CSR naming something else is badCSR; the right one issues.
    let rng = SystemRandom::new();
    let cert_key =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
    let r = client
        .post(
            &finalize_url,
            Some(
                json!({"csr": csr_b64(&[NAME, "api.dev.svc.example.internal"], cert_key.as_ref())}),
            ),
        )
        .await;
    r.expect_problem(400, "badCSR");
    let r = client
        .post(
            &finalize_url,
            Some(json!({"csr": csr_b64(&[NAME], cert_key.as_ref())})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
    let order = poll(&mut client, &order_url, "valid").await;
    let cert_url = order["certificate"]
        .as_str()
        .expect("certificate url")
        .to_string();
    let r = client.post(&cert_url, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("content-type"),
        "application/pem-certificate-chain"
    );
    let chain = pem::parse_many(&r.body).expect("pem chain");
    assert!(chain.len() >= 2, "leaf and its issuer");
    let leaf = chain[0].contents().to_vec();
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).expect("leaf");
    let sans = parsed
        .subject_alternative_name()
        .expect("san")
        .expect("san present");
    assert!(
        sans.value
            .general_names
            .iter()
            .any(|n| matches!(n, x509_parser::extensions::GeneralName::DNSName(d) if *d == NAME))
    );

    // ACME clients renew the names they read from the certificate, CN included.
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok());
    assert_eq!(cn, Some(NAME));

    // The durable record and the audit log know it as an ACME issuance.
    let serial = crate::pki::Serial::of_certificate(&leaf).expect("serial");
    let rec = ca
        .store()
        .certificate(&serial)
        .await
        .expect("store")
        .expect("stored");
    assert_eq!(rec.issued_via, IssuedVia::Acme);
    assert_eq!(rec.service, "web");
    assert!(rec.dns_names.iter().any(|n| n == NAME));
    let audit = ca.store().audit_entries(None, 1000).await.expect("audit");
    assert!(audit.iter().any(|e| e.action == "acme-finalize"));

    // Renewal information: a window inside the lifetime, then in the past once revoked.
    let aki = parsed
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .expect("aki");
    let ari_url = url(&format!(
        "renewal-info/{}.{}",
        b64(&aki),
        b64(serial.as_bytes())
    ));
    let ari = send(&app, Method::GET, &ari_url, "", vec![]).await;
    assert_eq!(ari.status, StatusCode::OK);
    let window = &ari.json()["suggestedWindow"];
    let start = time::OffsetDateTime::parse(
        window["start"].as_str().expect("start"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339");
    assert!(start.unix_timestamp() > ca.now_unix(), "{window}");

    // Revocation: another account may not; the certificate's own key may.
    let mut stranger = Client::new(&app);
    stranger.register().await;
    let payload = json!({"certificate": b64(&leaf), "reason": 4});
    let r = stranger
        .post(&url("revoke-cert"), Some(payload.clone()))
        .await;
    r.expect_problem(403, "unauthorized");
    assert!(
        ca.store()
            .certificate(&serial)
            .await
            .expect("store")
            .expect("rec")
            .revoked_at
            .is_none()
    );
    let mut holder = Client::with_pkcs8(&app, cert_key.as_ref());
    let r = holder
        .post(&url("revoke-cert"), Some(payload.clone()))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
    assert!(!r.header("replay-nonce").is_empty());
    let rec = ca
        .store()
        .certificate(&serial)
        .await
        .expect("store")
        .expect("rec");
    assert!(rec.revoked_at.is_some());
    assert_eq!(rec.revocation_reason.as_deref(), Some("superseded"));
    client
        .post(&url("revoke-cert"), Some(payload))
        .await
        .expect_problem(400, "alreadyRevoked");
    let ari = send(&app, Method::GET, &ari_url, "", vec![]).await.json();
    let end = time::OffsetDateTime::parse(
        ari["suggestedWindow"]["end"].as_str().expect("end"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339");
    assert!(end.unix_timestamp() < ca.now_unix(), "{ari}");

    // Deactivation: the account can no longer act.
    let r = client
        .post(&account, Some(json!({"status": "deactivated"})))
        .await;
    assert_eq!(r.json()["status"], "deactivated");
    let r = client
        .post(
            &url("new-order"),
            Some(json!({"identifiers": [{"type": "dns", "value": NAME}]})),
        )
        .await;
    r.expect_problem(403, "unauthorized");
}

#[tokio::test]
async fn protocol_refusals_name_their_problem_and_carry_a_fresh_nonce() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = example_ca(dir.path()).await;
    let app = app(ca.clone(), 9);
    let mut client = Client::new(&app);
    let account = client.register().await;
    let new_order = url("new-order");
    let order = json!({"identifiers": [{"type": "dns", "value": NAME}]});

    // Nonces: unknown, reused, missing; one that is not base64url is malformed (RFC 8555 6.5.1).
    for (nonce, kind) in [
        ("AAAAAAAAAAAAAAAAAAAAAA", "badNonce"),
        ("not*base64", "malformed"),
    ] {
        let h = client.header(&new_order, nonce);
        let body = client.sign(&h, Some(&order));
        post_jose(&app, &new_order, body)
            .await
            .expect_problem(400, kind);
    }
    let nonce = client.fresh_nonce().await;
    let body = client.sign(&client.header(&new_order, &nonce), Some(&order));
    let first = post_jose(&app, &new_order, body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.json());
    post_jose(&app, &new_order, body)
        .await
        .expect_problem(400, "badNonce");
    let mut h = client.header(&new_order, "x");
    h.as_object_mut().expect("object").remove("nonce");
    post_jose(&app, &new_order, client.sign(&h, Some(&order)))
        .await
        .expect_problem(400, "badNonce");

    // The url header must be this resource's external URL.
    let nonce = client.fresh_nonce().await;
    let h = client.header(&url("new-account"), &nonce);
    let detail = post_jose(&app, &new_order, client.sign(&h, Some(&order)))
        .await
        .expect_problem(403, "unauthorized");
    assert!(detail.contains("url"), "{detail}");

    // Content type.
    let nonce = client.fresh_nonce().await;
    let body = client.sign(&client.header(&new_order, &nonce), Some(&order));
    let r = send(&app, Method::POST, &new_order, "application/json", body).await;
    assert_eq!(r.status.as_u16(), 415);
    r.expect_problem(415, "malformed");

    // Algorithms: none and MACs are refused.
    for alg in ["none", "HS256"] {
        let nonce = client.fresh_nonce().await;
        let mut h = client.header(&new_order, &nonce);
        h["alg"] = json!(alg);
        let p = b64(h.to_string().as_bytes());
        let body = json!({"protected": p, "payload": b64(order.to_string().as_bytes()), "signature": "AAAA"});
        post_jose(&app, &new_order, body.to_string().into_bytes())
            .await
            .expect_problem(400, "badSignatureAlgorithm");
    }

    // Exactly one of jwk and kid; kid is an account URL; orders need the account.
    let nonce = client.fresh_nonce().await;
    let mut h = client.header(&new_order, &nonce);
    h["jwk"] = client.jwk();
    post_jose(&app, &new_order, client.sign(&h, Some(&order)))
        .await
        .expect_problem(400, "malformed");
    let nonce = client.fresh_nonce().await;
    let mut h = client.header(&new_order, &nonce);
    h["kid"] = json!(format!("{BASE}/acme/dev/account/nobody"));
    post_jose(&app, &new_order, client.sign(&h, Some(&order)))
        .await
        .expect_problem(400, "accountDoesNotExist");
    let nonce = client.fresh_nonce().await;
    let mut h = client.header(&new_order, &nonce);
    h.as_object_mut().expect("object").remove("kid");
    h["jwk"] = client.jwk();
    post_jose(&app, &new_order, client.sign(&h, Some(&order)))
        .await
        .expect_problem(400, "malformed");

    // A tampered signature.
    let nonce = client.fresh_nonce().await;
    let mut body: Value =
        serde_json::from_slice(&client.sign(&client.header(&new_order, &nonce), Some(&order)))
            .expect("json");
    body["payload"] = json!(b64(json!({"identifiers": []}).to_string().as_bytes()));
    post_jose(&app, &new_order, body.to_string().into_bytes())
        .await
        .expect_problem(403, "unauthorized");

    // Someone else's account URL.
    let mut other = Client::new(&app);
    other.register().await;
    other
        .post(&account, None)
        .await
        .expect_problem(403, "unauthorized");

    // Orders are read with POST-as-GET.
    let r = client.post(&new_order, Some(order.clone())).await;
    let order_url = r.header("location");
    client
        .post(&order_url, Some(json!({})))
        .await
        .expect_problem(400, "malformed");
    let r = client.post(&order_url, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("link").contains("rel=\"index\""));
    assert_eq!(r.header("location"), order_url);
    other
        .post(&order_url, None)
        .await
        .expect_problem(404, "malformed");
}

#[tokio::test]
async fn key_change_moves_the_account_to_the_new_key() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = example_ca(dir.path()).await;
    let app = app(ca, 9);
    let mut client = Client::new(&app);
    let account = client.register().await;
    let mut other = Client::new(&app);
    let other_account = other.register().await;
    let mut new = Client::new(&app);
    let key_change = url("key-change");
    let inner = |new: &Client, old_jwk: Value, account: &str| -> Value {
        let h = json!({"alg": "ES256", "jwk": new.jwk(), "url": key_change});
        let body = new.sign(&h, Some(&json!({"account": account, "oldKey": old_jwk})));
        serde_json::from_slice(&body).expect("json")
    };

    // An inner payload naming another account, or a wrong old key, changes nothing.
    let r = client
        .post(&key_change, Some(inner(&new, client.jwk(), &other_account)))
        .await;
    r.expect_problem(403, "unauthorized");
    let r = client
        .post(&key_change, Some(inner(&new, other.jwk(), &account)))
        .await;
    r.expect_problem(403, "unauthorized");
    // The new key of another account: conflict, pointing at it.
    let r = client
        .post(&key_change, Some(inner(&other, client.jwk(), &account)))
        .await;
    r.expect_problem(409, "conflict");
    assert_eq!(r.header("location"), other_account);

    let r = client
        .post(&key_change, Some(inner(&new, client.jwk(), &account)))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
    // The old key no longer signs for the account; the new one does.
    client
        .post(&account, None)
        .await
        .expect_problem(403, "unauthorized");
    new.kid = Some(account.clone());
    let r = new.post(&account, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
    // newAccount with the new key finds the same account.
    new.kid = None;
    let r = new
        .post(
            &url("new-account"),
            Some(json!({"onlyReturnExisting": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("location"), account);
}
