//! The HTTP API: thin axum handlers that turn JSON and the mTLS peer certificate into calls on
//! the service layer, and results into JSON or problem documents.
//!
//! [`router`] takes the state and needs no socket, so tests drive it with `oneshot`; the TLS
//! accept loop in [`crate::server`] puts the verified client chain into request extensions as
//! [`PeerCertificates`].

pub mod problem;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use problem::{ApiError, Outcome};

use ca_wire::{
    CertificateResponse, EnrollRequest, RenewRequest, RevokeRequest, RevokeResponse,
    RevokedCertificate,
};

use crate::duration::HumanDuration;
use crate::pki::{Identity, RevocationReason, Serial};
use crate::service::{Ca, EnrollInput, IssueOutput, RenewInput, RevokeInput, RevokeTarget};
use crate::store::{CertStatus, CertificateFilter, CertificateRecord};

/// Default cap on request bodies.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// Shared state of the API.
#[derive(Clone)]
pub struct AppState {
    /// The CA's use cases.
    pub ca: Arc<Ca>,
    /// Renders Prometheus metrics, when a recorder is installed.
    pub metrics: Option<PrometheusHandle>,
    /// Request body cap, bytes.
    pub max_body: usize,
}

/// The client certificate chain the TLS layer verified (leaf first), if the client sent one.
#[derive(Debug, Clone, Default)]
pub struct PeerCertificates(pub Option<Arc<Vec<Vec<u8>>>>);

/// Extractor for the verified client leaf; never rejects (absence is the handler's decision).
#[derive(Debug, Clone)]
pub struct ClientCert(pub Option<Vec<u8>>);

impl<S: Send + Sync> FromRequestParts<S> for ClientCert {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let leaf = parts
            .extensions
            .get::<PeerCertificates>()
            .and_then(|p| p.0.as_ref())
            .and_then(|chain| chain.first().cloned());
        Ok(ClientCert(leaf))
    }
}

impl ClientCert {
    fn required(self) -> Result<Vec<u8>, ApiError> {
        self.0.ok_or_else(ApiError::client_certificate_required)
    }
}

fn parse_ttl(ttl: Option<&str>) -> Result<Option<time::Duration>, ApiError> {
    ttl.map(|t| {
        t.parse::<HumanDuration>()
            .map(|d| d.0)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad-request", e.to_string()))
    })
    .transpose()
}

fn parse_reason(reason: Option<&str>) -> Result<RevocationReason, ApiError> {
    reason
        .map(|r| {
            r.parse()
                .map_err(|e: String| ApiError::new(StatusCode::BAD_REQUEST, "bad-request", e))
        })
        .transpose()
        .map(|r| r.unwrap_or(RevocationReason::Unspecified))
}

fn revoke_response(
    certs: Vec<CertificateRecord>,
    reason: RevocationReason,
    dry_run: bool,
) -> Json<RevokeResponse> {
    Json(RevokeResponse {
        certificates: certs
            .into_iter()
            .map(|c| RevokedCertificate {
                not_after: rfc3339(c.not_after),
                serial: c.serial,
                env: c.env,
                service: c.service,
            })
            .collect(),
        reason: reason.as_str().into(),
        dry_run,
    })
}

/// `POST /v1/admin/revoke`: an admin revokes by serial or by identity.
async fn admin_revoke(
    State(st): State<AppState>,
    peer: ClientCert,
    body: Result<Json<RevokeRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<RevokeResponse>, ApiError> {
    let leaf = peer.required()?;
    let admin = st.ca.authorize_admin(&leaf).await?;
    let Json(req) = body?;
    let reason = parse_reason(req.reason.as_deref())?;
    let target = match (req.serial, req.env, req.service) {
        (Some(serial), None, None) => {
            RevokeTarget::Serial(serial.parse::<Serial>().map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, "bad-request", e.to_string())
            })?)
        }
        (None, Some(env), Some(service)) => RevokeTarget::Identity(Identity { env, service }),
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "name either a serial, or an env and a service",
            ));
        }
    };
    let certs = st
        .ca
        .revoke(RevokeInput {
            target,
            reason,
            actor: format!("admin:{}", admin.serial),
            dry_run: req.dry_run,
        })
        .await?;
    Ok(revoke_response(certs, reason, req.dry_run))
}

/// `POST /v1/revoke`: a holder revokes its own certificate (key-compromise or superseded).
async fn self_revoke(
    State(st): State<AppState>,
    peer: ClientCert,
    body: Result<Json<RevokeRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<RevokeResponse>, ApiError> {
    let leaf = peer.required()?;
    let Json(req) = body?;
    if req.env.is_some() || req.service.is_some() || req.dry_run {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "a holder revokes only the certificate it presents: give just a reason",
        ));
    }
    if let Some(s) = &req.serial {
        let named: Serial = s.parse().map_err(|e: crate::pki::HexError| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad-request", e.to_string())
        })?;
        if Serial::of_certificate(&leaf) != Some(named) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a holder may revoke only the certificate it presents",
            ));
        }
    }
    let reason = parse_reason(req.reason.as_deref())?;
    let rec = st.ca.revoke_own(&leaf, reason).await?;
    Ok(revoke_response(vec![rec], reason, false))
}

/// `GET /crl/{env}.crl` (DER), `/crl/{env}.pem`, and the same for `root`.
async fn crl(
    State(st): State<AppState>,
    file: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    // A name that is not UTF-8 names no CRL.
    let axum::extract::Path(file) = file.map_err(|_| ApiError::not_found())?;
    let (name, pem) = match (file.strip_suffix(".crl"), file.strip_suffix(".pem")) {
        (Some(n), _) => (n, false),
        (_, Some(n)) => (n, true),
        _ => return Err(ApiError::not_found()),
    };
    if pem && st.ca.policy().environments.contains_key(name) {
        // An environment's CRLs, one per unretired intermediate (during a rotation, two).
        let mut out = String::new();
        for c in st.ca.environment_crls(name).await? {
            out.push_str(&crate::authority::pem_encode("X509 CRL", &c.der));
        }
        let mut resp = out.into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-pem-file"),
        );
        return Ok(resp);
    }
    if !st.ca.publishes_crl(name) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no CRL for {name:?}"),
        ));
    }
    let c = st.ca.current_crl(name).await?;
    let mut resp = if pem {
        crate::authority::pem_encode("X509 CRL", &c.der).into_response()
    } else {
        c.der.into_response()
    };
    let ct = if pem {
        "application/x-pem-file"
    } else {
        "application/pkix-crl"
    };
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    Ok(resp)
}

fn ocsp_response(der: Vec<u8>) -> Response {
    let mut resp = der.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/ocsp-response"),
    );
    resp
}

/// `POST /ocsp` with a DER request body.
async fn ocsp_post(
    State(st): State<AppState>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    match body {
        Ok(der) => ocsp_response(st.ca.ocsp(&der).await),
        Err(r) => ApiError::from(r).into_response(),
    }
}

/// `GET /ocsp/{base64 of the DER request}` (RFC 6960 appendix A.1).
async fn ocsp_get(
    State(st): State<AppState>,
    encoded: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    use base64::Engine;
    let Ok(axum::extract::Path(encoded)) = encoded else {
        return ocsp_response(crate::ocsp::error_response(
            crate::ocsp::ResponseStatus::MalformedRequest,
        ));
    };
    let text = encoded
        .replace("%2F", "/")
        .replace("%2B", "+")
        .replace("%3D", "=");
    match base64::engine::general_purpose::STANDARD.decode(text.trim_start_matches('/')) {
        Ok(der) => ocsp_response(st.ca.ocsp(&der).await),
        Err(_) => ocsp_response(crate::ocsp::error_response(
            crate::ocsp::ResponseStatus::MalformedRequest,
        )),
    }
}

/// RFC 3339 text of Unix time `unix` (empty when out of range).
pub(crate) fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn issued_response(out: IssueOutput) -> Response {
    let env = out.record.env.clone();
    let body = CertificateResponse {
        renew_after: rfc3339(out.renew_after()),
        serial: out.record.serial,
        spiffe_id: out.record.spiffe_id,
        certificate: out.cert_pem,
        chain: out.chain_pem,
        bundle: out.bundle_pem,
        not_before: rfc3339(out.record.not_before),
        not_after: rfc3339(out.record.not_after),
    };
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    resp.extensions_mut().insert(Outcome {
        env: Some(env),
        problem: None,
    });
    resp
}

impl AppState {
    /// Audits a request refused at the HTTP layer and hands the error back.
    async fn rejected(&self, action: &str, actor: &str, err: ApiError) -> ApiError {
        self.ca
            .audit_rejected_request(action, actor, err.detail())
            .await;
        err
    }
}

async fn enroll(
    State(st): State<AppState>,
    body: Result<Json<EnrollRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = match body {
        Ok(b) => b,
        Err(r) => return Err(st.rejected("enroll", "anonymous", r.into()).await),
    };
    let ttl = match parse_ttl(req.ttl.as_deref()) {
        Ok(t) => t,
        Err(e) => return Err(st.rejected("enroll", "anonymous", e).await),
    };
    let out = st
        .ca
        .enroll(EnrollInput {
            token: req.token,
            csr: req.csr.into_bytes(),
            dns: req.dns,
            ips: req.ips,
            ttl,
            env: req.env,
            service: req.service,
        })
        .await?;
    Ok(issued_with_hint(&st, out))
}

async fn renew(
    State(st): State<AppState>,
    peer: ClientCert,
    body: Result<Json<RenewRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let presented = match peer.required() {
        Ok(p) => p,
        Err(e) => return Err(st.rejected("renew", "anonymous", e).await),
    };
    let Json(req) = match body {
        Ok(b) => b,
        Err(r) => {
            return Err(st
                .rejected("renew", &Serial::actor_of_certificate(&presented), r.into())
                .await);
        }
    };
    let ttl = match parse_ttl(req.ttl.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            return Err(st
                .rejected("renew", &Serial::actor_of_certificate(&presented), e)
                .await);
        }
    };
    let out = st
        .ca
        .renew(RenewInput {
            presented,
            csr: req.csr.into_bytes(),
            dns: req.dns,
            ips: req.ips,
            ttl,
            env: req.env,
            service: req.service,
        })
        .await?;
    Ok(issued_with_hint(&st, out))
}

/// The issuance answer, with the renew-now hint when this server sees the issuer retiring (one
/// whose revocation committed first never gets this far: its certificates do not commit).
fn issued_with_hint(st: &AppState, out: IssueOutput) -> Response {
    let hint = st.ca.issued_hint(&out.record.issuer_id);
    with_renew_hint(issued_response(out), hint)
}

/// `resp` with the `ca-renew-now` header when there is a hint.
fn with_renew_hint(mut resp: Response, hint: Option<crate::service::RenewHint>) -> Response {
    if let Some(hint) = hint {
        resp.headers_mut().insert(
            ca_wire::client::RENEW_NOW_HEADER,
            HeaderValue::from_static(hint.as_str()),
        );
    }
    resp
}

fn pem_response(pem: String) -> Response {
    let mut resp = pem.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pem-certificate-chain"),
    );
    resp
}

async fn roots(State(st): State<AppState>) -> Result<Response, ApiError> {
    Ok(pem_response(st.ca.root_pem().await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleQuery {
    env: String,
    /// The caller's current certificate: the answer says whether it should be renewed now.
    serial: Option<String>,
}

async fn bundle(
    State(st): State<AppState>,
    q: Result<Query<BundleQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    let resp = pem_response(st.ca.bundle(&q.env).await?);
    let hint = match &q.serial {
        Some(serial) => {
            let serial: crate::pki::Serial = serial.parse().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad-request",
                    "serial: expected hexadecimal".to_string(),
                )
            })?;
            st.ca.renew_hint(&serial).await?
        }
        None => None,
    };
    Ok(with_renew_hint(resp, hint))
}

/// The trust domain and each environment's DNS suffixes, so agents know which names only this
/// CA can certify (and send every other name to a public ACME CA).
async fn info(State(st): State<AppState>) -> Json<ca_wire::CaInfo> {
    let policy = st.ca.policy();
    Json(ca_wire::CaInfo {
        trust_domain: policy.trust_domain.clone(),
        environments: policy
            .environments
            .iter()
            .map(|(name, e)| {
                (
                    name.clone(),
                    ca_wire::EnvironmentInfo {
                        dns_suffixes: e.dns_suffixes.clone(),
                    },
                )
            })
            .collect(),
    })
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(st): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    st.ca.store().ping().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness: store unreachable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "the database is unreachable",
        )
    })?;
    st.ca.load_signers().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness: issuers not loaded");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "issuers are not loaded",
        )
    })?;
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

async fn render_metrics(State(st): State<AppState>) -> Result<Response, ApiError> {
    let Some(handle) = &st.metrics else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "metrics are not enabled",
        ));
    };
    let live = st
        .ca
        .store()
        .count_live_certificates(st.ca.now_unix())
        .await
        .map_err(|e| ApiError::from(crate::service::ServiceError::from(e)))?;
    // Every environment gets a value, so one whose last certificate was revoked drops to 0.
    let mut envs: Vec<String> = st.ca.policy().environments.keys().cloned().collect();
    envs.extend(live.iter().map(|(env, _)| env.clone()));
    envs.sort();
    envs.dedup();
    for env in envs {
        let n = live.iter().find(|(e, _)| *e == env).map_or(0, |(_, n)| *n);
        metrics::gauge!("ca_live_certificates", "env" => env).set(n as f64);
    }
    let mut resp = handle.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(resp)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminListQuery {
    env: Option<String>,
    service: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
}

async fn admin_certs(
    State(st): State<AppState>,
    peer: ClientCert,
    q: Result<Query<AdminListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<CertificateRecord>>, ApiError> {
    let leaf = peer.required()?;
    st.ca.authorize_admin(&leaf).await?;
    let Query(q) = q?;
    let status = q
        .status
        .map(|s| s.parse::<CertStatus>())
        .transpose()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad-request", e))?;
    let certs = st
        .ca
        .list(CertificateFilter {
            env: q.env,
            service: q.service,
            status,
            limit: Some(q.limit.unwrap_or(1000).min(10_000)),
            ..CertificateFilter::default()
        })
        .await?;
    Ok(Json(certs))
}

async fn admin_fallback(State(st): State<AppState>, peer: ClientCert) -> ApiError {
    let leaf = match peer.required() {
        Ok(l) => l,
        Err(e) => return e,
    };
    match st.ca.authorize_admin(&leaf).await {
        Ok(_) => ApiError::not_found(),
        Err(e) => e.into(),
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// Records request latency, and issuance and refusal counts, from what handlers left in the
/// response: metrics wrap the handlers instead of being sprinkled through them.
async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::histogram!("ca_http_request_duration_seconds", "method" => method, "path" => path.clone(), "status" => status)
        .record(start.elapsed().as_secs_f64());
    if let Some(o) = resp.extensions().get::<Outcome>() {
        let env = o.env.clone().unwrap_or_else(|| "unknown".into());
        let op = match path.as_str() {
            "/v1/enroll" => "enroll",
            "/v1/renew" => "renew",
            _ => "other",
        };
        match o.problem {
            None => metrics::counter!("ca_certificates_issued_total", "env" => env, "via" => op)
                .increment(1),
            Some(reason) => {
                metrics::counter!("ca_requests_denied_total", "op" => op, "reason" => reason)
                    .increment(1)
            }
        }
    }
    resp
}

/// Routes for CRL and OCSP distribution, the only ones also served over plain HTTP.
fn distribution_routes() -> Router<AppState> {
    Router::new()
        .route("/crl/{file}", get(crl))
        .route("/ocsp", post(ocsp_post))
        .route("/ocsp/{*request}", get(ocsp_get))
}

/// The plain-HTTP router: CRLs and OCSP only, as CRL and OCSP clients expect.
pub fn distribution_router(state: AppState) -> Router {
    let max_body = state.max_body;
    distribution_routes()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(track))
        .with_state(state)
}

/// The API's routes over `state`.
pub fn router(state: AppState) -> Router {
    let max_body = state.max_body;
    Router::new()
        .route("/v1/enroll", post(enroll))
        .route("/v1/renew", post(renew))
        .route("/v1/roots", get(roots))
        .route("/v1/bundle", get(bundle))
        .route("/v1/info", get(info))
        .route("/v1/admin/certs", get(admin_certs))
        .route("/v1/admin/revoke", post(admin_revoke))
        .route("/v1/revoke", post(self_revoke))
        .route("/v1/admin/{*rest}", axum::routing::any(admin_fallback))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .merge(distribution_routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(track))
        .with_state(state)
}
