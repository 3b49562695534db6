//! The ACME resources under `/acme/<env>/`: the directory, nonces, accounts, orders,
//! authorizations, challenges, certificates, revocation, key change and renewal information.
//!
//! Every POST is a flattened JWS checked in one place ([`authenticate`]): a single-use nonce
//! from the store, the `url` header equal to the externally visible URL, the key (`jwk` only
//! where RFC 8555 allows it, else `kid` = the account URL) and the signature. Every answer to a
//! POST carries a fresh `Replay-Nonce`, errors included, and every answer a `Link` to the
//! directory.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::jws::{Jwk, Jws, KeyRef};
use super::{AcmeError, AcmeServer, Order, authz_id, parse_authz_id};
use crate::api::rfc3339;
use crate::policy::AcmeMode;
use crate::store::AcmeAccount;

type St = State<Arc<AcmeServer>>;
type AcmeResult = Result<Response, AcmeError>;

/// The routes, to be nested under `/acme`.
pub fn router(server: Arc<AcmeServer>) -> Router {
    Router::new()
        .route("/{env}/directory", get(directory))
        .route("/{env}/new-nonce", get(new_nonce_get).head(new_nonce_head))
        .route("/{env}/new-account", post(new_account))
        .route("/{env}/account/{id}", post(account))
        .route("/{env}/account/{id}/orders", post(account_orders))
        .route("/{env}/new-order", post(new_order))
        .route("/{env}/order/{id}", post(order))
        .route("/{env}/order/{id}/finalize", post(finalize))
        .route("/{env}/authz/{id}", post(authz))
        .route("/{env}/chall/{authz}/{kind}", post(challenge))
        .route("/{env}/cert/{serial}", post(certificate))
        .route("/{env}/revoke-cert", post(revoke_cert))
        .route("/{env}/key-change", post(key_change))
        .route("/{env}/renewal-info/{id}", get(renewal_info))
        .fallback(|| async { AcmeError::not_found("no such ACME resource").into_response() })
        .layer(middleware::from_fn_with_state(server.clone(), decorate))
        .with_state(server)
}

impl IntoResponse for AcmeError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let body = json!({
            "type": self.type_urn(),
            "detail": self.detail,
            "status": self.status,
        });
        let mut resp = (status, body.to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(loc) = self
            .location
            .as_deref()
            .and_then(|l| HeaderValue::from_str(l).ok())
        {
            resp.headers_mut().insert(header::LOCATION, loc);
        }
        resp
    }
}

/// Adds `Link: <directory>;rel="index"` to every answer and a fresh `Replay-Nonce` to every
/// answer to a POST (and to newNonce).
async fn decorate(State(server): St, req: Request, next: Next) -> Response {
    let env = req
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    let wants_nonce = req.method() == Method::POST || req.uri().path().ends_with("/new-nonce");
    let mut resp = next.run(req).await;
    if server.mode(&env).is_err() {
        return resp;
    }
    let link = format!("<{}>;rel=\"index\"", server.url(&env, "directory"));
    if let Ok(v) = HeaderValue::from_str(&link) {
        resp.headers_mut().append(header::LINK, v);
    }
    if wants_nonce {
        match server.new_nonce().await {
            Ok(n) => {
                if let Ok(v) = HeaderValue::from_str(&n) {
                    resp.headers_mut().insert("replay-nonce", v);
                }
            }
            Err(e) => return e.into_response(),
        }
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn with_location(mut resp: Response, url: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

async fn directory(State(server): St, Path(env): Path<String>) -> AcmeResult {
    let mode = server.mode(&env)?;
    let mut meta = json!({
        "externalAccountRequired": matches!(mode, AcmeMode::ExternalAccountRequired),
    });
    if let Some(w) = &server.website {
        meta["website"] = json!(w);
    }
    if let Some(t) = &server.terms_of_service {
        meta["termsOfService"] = json!(t);
    }
    let u = |p: &str| server.url(&env, p);
    Ok(json_response(
        StatusCode::OK,
        json!({
            "newNonce": u("new-nonce"),
            "newAccount": u("new-account"),
            "newOrder": u("new-order"),
            "revokeCert": u("revoke-cert"),
            "keyChange": u("key-change"),
            "renewalInfo": u("renewal-info"),
            "meta": meta,
        }),
    ))
}

async fn new_nonce_head(State(server): St, Path(env): Path<String>) -> AcmeResult {
    server.mode(&env)?;
    Ok(StatusCode::OK.into_response())
}

async fn new_nonce_get(State(server): St, Path(env): Path<String>) -> AcmeResult {
    server.mode(&env)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Who signed a request.
enum Signer {
    /// An account, by `kid`.
    Account(AcmeAccount),
    /// A bare key (newAccount, revokeCert by the certificate's key).
    Key(Jwk),
}

/// Checks a POST: content type, JWS, nonce, url, key and signature. `jwk_allowed` for the
/// resources where a bare key may sign.
async fn authenticate(
    server: &AcmeServer,
    env: &str,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    jwk_allowed: bool,
) -> Result<(Jws, Signer), AcmeError> {
    server.mode(env)?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.split(';').next().map(str::trim) != Some("application/jose+json") {
        return Err(AcmeError::new(
            "malformed",
            415,
            "requests must be application/jose+json",
        ));
    }
    let jws = Jws::parse(body)?;
    server.take_nonce(jws.protected.nonce.as_deref()).await?;
    let expected = server.url(env, path);
    if jws.protected.url != expected {
        return Err(AcmeError::unauthorized(format!(
            "the JWS url {:?} is not this resource's URL {expected:?}",
            super::truncate(&jws.protected.url)
        )));
    }
    let signer = match &jws.protected.key {
        KeyRef::Kid(kid) => {
            let account = server.account_of_kid(env, kid).await?;
            let key: Value = serde_json::from_str(&account.jwk)
                .map_err(|_| AcmeError::internal("stored account key"))?;
            jws.verify(&Jwk::from_json(&key)?)?;
            Signer::Account(account)
        }
        KeyRef::Jwk(key) if jwk_allowed => {
            jws.verify(key)?;
            Signer::Key(key.clone())
        }
        KeyRef::Jwk(_) => {
            return Err(AcmeError::malformed(
                "this request must be signed by an account (kid), not a bare key (jwk)",
            ));
        }
    };
    Ok((jws, signer))
}

fn account_only(signer: Signer) -> Result<AcmeAccount, AcmeError> {
    match signer {
        Signer::Account(a) => Ok(a),
        Signer::Key(_) => Err(AcmeError::malformed("sign with the account (kid)")),
    }
}

fn account_json(server: &AcmeServer, a: &AcmeAccount) -> Value {
    json!({
        "status": a.status,
        "contact": a.contact,
        "orders": server.url(&a.env, &format!("account/{}/orders", a.id)),
    })
}

async fn new_account(
    State(server): St,
    Path(env): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> AcmeResult {
    let (jws, signer) = authenticate(&server, &env, "new-account", &headers, &body, true).await?;
    let Signer::Key(key) = signer else {
        return Err(AcmeError::malformed(
            "newAccount must be signed with the account key itself (jwk)",
        ));
    };
    let payload = jws.payload_json()?;
    let (account, created) = server.new_account(&env, &key, &payload).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(with_location(
        json_response(status, account_json(&server, &account)),
        &server.url(&env, &format!("account/{}", account.id)),
    ))
}

async fn account(
    State(server): St,
    Path((env, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> AcmeResult {
    let path = format!("account/{id}");
    let (jws, signer) = authenticate(&server, &env, &path, &headers, &body, false).await?;
    let account = account_only(signer)?;
    if account.id != id {
        return Err(AcmeError::unauthorized("that is another account"));
    }
    let account = if jws.post_as_get {
        account
    } else {
        server.update_account(account, &jws.payload_json()?).await?
    };
    Ok(with_location(
        json_response(StatusCode::OK, account_json(&server, &account)),
        &server.url(&env, &path),
    ))
}

async fn account_orders(
    State(server): St,
    Path((env, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> AcmeResult {
    let path = format!("account/{id}/orders");
    let (_, signer) = authenticate(&server, &env, &path, &headers, &body, false).await?;
    let account = account_only(signer)?;
    if account.id != id {
        return Err(AcmeError::unauthorized("that is another account"));
    }
    let ids = server.ca.store().acme_orders_of(&account.id).await?;
    let urls: Vec<String> = ids
        .iter()
        .map(|o| server.url(&env, &format!("order/{o}")))
        .collect();
    Ok(json_response(StatusCode::OK, json!({ "orders": urls })))
}

fn order_json(server: &AcmeServer, o: &Order) -> Value {
    let env = &o.row.env;
    let mut v = json!({
        "status": o.row.status,
        "expires": rfc3339(o.row.expires_at),
        "identifiers": o.doc.identifiers.iter().map(|i| json!({"type": "dns", "value": i})).collect::<Vec<_>>(),
        "authorizations": (0..o.doc.authzs.len()).map(|i| server.url(env, &format!("authz/{}", authz_id(&o.row.id, i)))).collect::<Vec<_>>(),
        "finalize": server.url(env, &format!("order/{}/finalize", o.row.id)),
    });
    if let Some(serial) = &o.row.cert_serial {
        v["certificate"] = json!(server.url(env, &format!("cert/{serial}")));
    }
    if let Some((kind, detail)) = &o.doc.error {
        v["error"] =
            json!({"type": format!("urn:ietf:params:acme:error:{kind}"), "detail": detail});
    }
    if let Some(r) = &o.doc.replaces {
        v["replaces"] = json!(r);
    }
    v
}

fn order_response(server: &AcmeServer, o: &Order, status: StatusCode) -> Response {
    let mut resp = with_location(
        json_response(status, order_json(server, o)),
        &server.url(&o.row.env, &format!("order/{}", o.row.id)),
    );
    if o.row.status == "processing" {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

async fn new_order(
    State(server): St,
    Path(env): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> AcmeResult {
    let (jws, signer) = authenticate(&server, &env, "new-order", &headers, &body, false).await?;
    let account = account_only(signer)?;
    let order = server.new_order(&account, &jws.payload_json()?).await?;
    Ok(order_response(&server, &order, StatusCode::CREATED))
}

async fn order(
    State(server): St,
    Path((env, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> AcmeResult {
    let path = format!("order/{id}");
    let (jws, signer) = authenticate(&server, &env, &path, &headers, &body, false).await?;
    if !jws.post_as_get {
        return Err(AcmeError::malformed("an order is read with POST-as-GET"));
    }
    let order = server.order(&account_only(signer)?, &id).await?;
    Ok(order_response(&server, &order, StatusCode::OK))
}

async fn finalize(
    State(server): St,
    Path((env, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> AcmeResult {
    let path = format!("order/{id}/finalize");
    let (jws, signer) = authenticate(&server, &env, &path, &headers, &body, false).await?;
    let account = account_only(signer)?;
    let order = server.finalize(&account, &id, &jws.payload_json()?).await?;
    Ok(order_response(&server, &order, StatusCode::OK))
}

fn challenge_json(server: &AcmeServer, env: &str, authz: &str, c: &super::ChallengeDoc) -> Value {
    let mut v = json!({
        "type": c.kind,
        "url": server.url(env, &format!("chall/{authz}/{}", c.kind)),
        "status": c.status,
        "token": c.token,
    });
    if let Some(t) = c.validated_at {
        v["validated"] = json!(rfc3339(t));
    }
    if let Some((kind, detail)) = &c.error {
        v["error"] =
            json!({"type": format!("urn:ietf:params:acme:error:{kind}"), "detail": detail});
    }
    v
}

async fn authz(
    State(server): St,
    Path((env, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> AcmeResult {
    let path = format!("authz/{id}");
    let (jws, signer) = authenticate(&server, &env, &path, &headers, &body, false).await?;
    let account = account_only(signer)?;
    let (order_id, index) =
        parse_authz_id(&id).ok_or_else(|| AcmeError::not_found("no such authorization"))?;
    let mut order = server.order(&account, order_id).await?;
    if !jws.post_as_get {
        // Deactivation by the client.
        let p = jws.payload_json()?;
        if p.get("status").and_then(|s| s.as_str()) != Some("deactivated") {
            return Err(AcmeError::malformed(
                "an authorization is read with POST-as-GET or deactivated",
            ));
        }
        order = server.deactivate_authz(&account, order_id, index).await?;
    }
    let a = order
        .doc
        .authzs
        .get(index)
        .ok_or_else(|| AcmeError::not_found("no such authorization"))?;
    let expired = order.row.expires_at <= server.ca.now_unix() && a.status == "pending";
    let mut v = json!({
        "identifier": {"type": "dns", "value": a.identifier},
        "status": if expired { "expired" } else { a.status.as_str() },
        "expires": rfc3339(order.row.expires_at),
        "challenges": a.challenges.iter().map(|c| challenge_json(&server, &env, &id, c)).collect::<Vec<_>>(),
    });
    if a.wildcard {
        v["wildcard"] = json!(true);
    }
    Ok(json_response(StatusCode::OK, v))
}

async fn challenge(
    State(server): St,
    Path((env, authz, kind)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> AcmeResult {
    let path = format!("chall/{authz}/{kind}");
    let (jws, signer) = authenticate(&server, &env, &path, &headers, &body, false).await?;
    let account = account_only(signer)?;
    let (order, index, ci) = if jws.post_as_get {
        let (order_id, index) =
            parse_authz_id(&authz).ok_or_else(|| AcmeError::not_found("no such authorization"))?;
        let order = server.order(&account, order_id).await?;
        let ci = order
            .doc
            .authzs
            .get(index)
            .and_then(|a| a.challenges.iter().position(|c| c.kind == kind))
            .ok_or_else(|| AcmeError::not_found("no such challenge"))?;
        (order, index, ci)
    } else {
        // The payload of a response is an empty object (RFC 8555 7.5.1).
        jws.payload_json()?;
        server.start_challenge(&account, &authz, &kind).await?
    };
    let c = &order.doc.authzs[index].challenges[ci];
    let mut resp = json_response(StatusCode::OK, challenge_json(&server, &env, &authz, c));
    let up = format!(
        "<{}>;rel=\"up\"",
        server.url(&env, &format!("authz/{authz}"))
    );
    if let Ok(v) = HeaderValue::from_str(&up) {
        resp.headers_mut().append(header::LINK, v);
    }
    if c.status == "processing" {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Ok(resp)
}

async fn certificate(
    State(server): St,
    Path((env, serial)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> AcmeResult {
    let path = format!("cert/{serial}");
    let (jws, signer) = authenticate(&server, &env, &path, &headers, &body, false).await?;
    if !jws.post_as_get {
        return Err(AcmeError::malformed(
            "a certificate is read with POST-as-GET",
        ));
    }
    let pem = server.certificate(&account_only(signer)?, &serial).await?;
    let mut resp = (StatusCode::OK, pem).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pem-certificate-chain"),
    );
    Ok(resp)
}

async fn revoke_cert(
    State(server): St,
    Path(env): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> AcmeResult {
    let (jws, signer) = authenticate(&server, &env, "revoke-cert", &headers, &body, true).await?;
    let payload = jws.payload_json()?;
    match signer {
        Signer::Account(a) => server.revoke(&env, Some(&a), None, &payload).await?,
        Signer::Key(k) => server.revoke(&env, None, Some(&k), &payload).await?,
    }
    Ok(StatusCode::OK.into_response())
}

async fn key_change(
    State(server): St,
    Path(env): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> AcmeResult {
    let (jws, signer) = authenticate(&server, &env, "key-change", &headers, &body, false).await?;
    let account = account_only(signer)?;
    let inner = jws.payload_json()?;
    let account = server.key_change(&env, account, &inner).await?;
    Ok(with_location(
        json_response(StatusCode::OK, account_json(&server, &account)),
        &server.url(&env, &format!("account/{}", account.id)),
    ))
}

async fn renewal_info(State(server): St, Path((env, id)): Path<(String, String)>) -> AcmeResult {
    server.mode(&env)?;
    let (start, end) = server.renewal_info(&id).await?;
    let mut resp = json_response(
        StatusCode::OK,
        json!({"suggestedWindow": {"start": rfc3339(start), "end": rfc3339(end)}}),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("21600"));
    Ok(resp)
}
