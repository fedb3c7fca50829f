//! /api/health, /api/stats, /api/diloco, /api/peers, /api/network, POST /generate_text,
//! POST /api/blobs/fetch (each also under /api/v1) and the plain status page at /.
//! Every error is JSON {error, detail} with a 4xx (or 503) status.

use std::sync::{Arc, Mutex};

use actix_web::http::{Method, StatusCode, header};
use actix_web::{
    FromRequest, Handler, HttpRequest, HttpResponse, Resource, Responder, ResponseError, Route, web,
};
use serde::Deserialize;
use serde_json::json;

use crate::actors::ledger::LedgerActor;
use crate::actors::messages::{FetchBlob, FetchError, ProveInference};
use crate::actors::peer::PeerActor;
use crate::diloco::codec::max_delta_len;
use crate::logs::LogRing;
use crate::model::backend::{CpuBackend, cpu_device};
use crate::model::inference::{SamplingOptions, generate};
use crate::model::params::unflatten;
use crate::model::{NeuroLlm, NeuroLlmConfig};
use crate::net::blob::BlobId;
use crate::status::{NodeStatus, StatusBoard};

/// Largest accepted JSON body; prompts are short.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_PROMPT_BYTES: usize = 8 * 1024;
const MAX_NEW_TOKENS: usize = 512;

pub struct ApiState {
    pub status: StatusBoard,
    pub model: NeuroLlmConfig,
    pub training_enabled: bool,
    peers: actix::Addr<PeerActor>,
    pub(super) ledger: actix::Addr<LedgerActor>,
    /// Bearer key of the mutating wallet endpoints; `None` refuses them.
    pub(super) api_key: Option<String>,
    /// The CPU model generation uses, rebuilt when the published weights change.
    inference: Mutex<Option<(u64, Arc<NeuroLlm<CpuBackend>>)>>,
    /// The dashboard's history and its open event streams.
    pub(super) feed: super::dashboard::Feed,
}

impl ApiState {
    pub fn new(
        status: StatusBoard,
        model: NeuroLlmConfig,
        training_enabled: bool,
        peers: actix::Addr<PeerActor>,
        ledger: actix::Addr<LedgerActor>,
        api_key: Option<String>,
        logs: LogRing,
    ) -> Self {
        Self {
            status,
            model,
            training_enabled,
            peers,
            ledger,
            api_key,
            inference: Mutex::new(None),
            feed: super::dashboard::Feed::new(logs),
        }
    }

    /// Ends the dashboard's open event streams, so a graceful stop does not wait on them.
    pub fn close_streams(&self) {
        self.feed.close();
    }

    fn current_model(&self) -> Option<Arc<NeuroLlm<CpuBackend>>> {
        let status = self.status.read();
        let weights = status.weights?;
        let mut cache = self.inference.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((version, model)) = cache.as_ref()
            && *version == status.weights_version
        {
            return Some(model.clone());
        }
        let model = Arc::new(unflatten(
            self.model.init::<CpuBackend>(&cpu_device()),
            &weights,
        ));
        *cache = Some((status.weights_version, model.clone()));
        Some(model)
    }
}

/// An API error: rendered as {error, detail} with its status code.
#[derive(Debug, thiserror::Error)]
#[error("{error}: {detail}")]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            error,
            detail: detail.into(),
        }
    }
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(json!({"error": self.error, "detail": self.detail}))
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    let json = web::JsonConfig::default()
        .limit(MAX_BODY_BYTES)
        .error_handler(|err, _| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", err.to_string()).into()
        });
    cfg.app_data(json)
        .service(get("/", index))
        .service(post("/generate_text", generate_text))
        .configure(super::metrics::configure)
        // /api/v1/... first: the /api scope would claim its prefix.
        .service(web::scope("/api/v1").configure(api_routes))
        .service(web::scope("/api").configure(api_routes))
        .default_service(web::to(not_found));
}

/// The JSON API, served under /api (the original's paths) and /api/v1.
fn api_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/health", health))
        .service(get("/stats", stats))
        .service(get("/diloco", diloco))
        .service(get("/peers", peers))
        .service(get("/network", network))
        .service(post("/blobs/fetch", fetch_blob))
        .service(post("/generate_text", generate_text))
        .configure(super::dashboard::configure)
        .configure(super::openapi::configure)
        .configure(super::ledger::configure);
}

/// `path` served by `handler` for GET; any other method gets a 405 JSON error naming GET.
pub fn get<F, Args>(path: &str, handler: F) -> Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    endpoint(path, Method::GET, web::get().to(handler))
}

/// `path` served by `handler` for POST; any other method gets a 405 JSON error naming POST.
pub fn post<F, Args>(path: &str, handler: F) -> Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    endpoint(path, Method::POST, web::post().to(handler))
}

/// A resource whose method guard sits on the route, not on the resource, so a known path asked
/// with another method answers 405 with `Allow` instead of falling through to the 404.
fn endpoint(path: &str, method: Method, route: Route) -> Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(move |req: HttpRequest| {
            let method = method.clone();
            async move {
                let mut response = ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!(
                        "{} {} is not served; this path answers {method}",
                        req.method(),
                        req.path()
                    ),
                )
                .error_response();
                response.headers_mut().insert(
                    header::ALLOW,
                    header::HeaderValue::from_str(method.as_str())
                        .expect("an HTTP method is a valid header value"),
                );
                response
            }
        }))
}

/// 404 as JSON, for every route nobody serves.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {} {}", req.method(), req.path()),
    )
    .error_response()
}

/// 200 in either case: "degraded" (this node's own disk or database failing, with the reasons)
/// is not a reason to restart the process; it recovers when the disk does.
async fn health(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(health_view(&state, &state.status.read()))
}

/// The body of /api/health (also part of the dashboard's stream).
pub(super) fn health_view(state: &ApiState, s: &NodeStatus) -> serde_json::Value {
    json!({
        "status": s.health.status(),
        "uptime_s": state.status.uptime_s(),
        "reasons": s.health.reasons(),
        "faults": s.health.faults,
    })
}

async fn stats(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(stats_view(&state, &state.status.read()))
}

/// The body of /api/stats (also part of the dashboard's stream).
pub(super) fn stats_view(state: &ApiState, s: &NodeStatus) -> serde_json::Value {
    json!({
        "node_id": s.node_id,
        "peer_id": s.peer_id,
        "role": s.role,
        "version": s.version,
        "uptime_s": state.status.uptime_s(),
        "phase": s.phase,
        "preset": s.preset,
        "num_params": s.num_params,
        "backend": s.backend,
        "global_step": s.global_step,
        "loss": s.loss,
        "val_loss": s.val_loss,
        "initial_val_loss": s.initial_val_loss,
        "tokens_per_sec": s.tokens_per_sec,
        "tokens_seen": s.tokens_seen,
        "lr": s.lr,
        "trainer_restarts": s.trainer_restarts,
        "last_crash": s.last_crash,
        "checkpoints_written": s.checkpoints_written,
        "last_checkpoint_step": s.last_checkpoint_step,
        "theta0_hash": s.theta0_hash,
        "peer_count": s.network.peer_count,
        "admission": {
            "policy": s.admission.policy,
            "genesis_hash": s.admission.genesis_hash,
            "certificate_expires_at_s": s.admission.certificate_expires_at_s,
            "admitted": s.admission.admitted(crate::admission::unix_s()),
        },
    })
}

async fn peers(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({"peers": state.status.read().network.peers}))
}

async fn network(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(network_view(&state.status.read()))
}

/// The body of /api/network: the network totals without the peer list.
pub(super) fn network_view(s: &NodeStatus) -> serde_json::Value {
    let mut view = serde_json::to_value(s.network.as_ref()).unwrap_or_default();
    if let Some(object) = view.as_object_mut() {
        object.remove("peers");
        object.insert("peer_id".into(), json!(s.peer_id));
    }
    view
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FetchBlobRequest {
    peer_id: String,
    hash: String,
}

/// Fetches a blob a peer serves (e.g. its θ₀, named by the theta0_hash of its heartbeat) and
/// reports the transfer: a check of the path to a peer and its throughput. The bytes are dropped.
async fn fetch_blob(
    state: web::Data<ApiState>,
    body: web::Json<FetchBlobRequest>,
) -> Result<HttpResponse, ApiError> {
    let peer: libp2p::PeerId = body
        .peer_id
        .parse()
        .map_err(|e| ApiError::bad_request(format!("peer_id: {e}")))?;
    let id = BlobId::from_hex(&body.hash)
        .ok_or_else(|| ApiError::bad_request("hash must be 64 hexadecimal characters"))?;
    // A peer this node has never seen is the caller's mistake, not a failed transfer (502).
    let listed = peer.to_string();
    let network = state.status.read().network;
    if !network.peers.iter().any(|p| p.peer_id == listed) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_peer",
            format!("{listed} is not in this node's peer table (see /api/peers)"),
        ));
    }
    let started = std::time::Instant::now();
    let bytes = state
        .peers
        .send(FetchBlob {
            peer,
            id,
            // θ₀, the momentum or a Δ: at most the longest Δ of this model.
            max_bytes: max_delta_len(state.model.num_params()),
        })
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "network_down",
                e.to_string(),
            )
        })?
        .map_err(|e| match e {
            // This node's own limit on transfers in flight: the caller may retry.
            FetchError::Busy { .. } | FetchError::Stopped => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "fetch_busy", e.to_string())
            }
            _ => ApiError::new(StatusCode::BAD_GATEWAY, "fetch_failed", e.to_string()),
        })?;
    let seconds = started.elapsed().as_secs_f64();
    // The network layer hashed the bytes as they arrived and refused a mismatch.
    Ok(HttpResponse::Ok().json(json!({
        "hash": id.to_string(),
        "bytes": bytes.len(),
        "seconds": seconds,
        "mb_per_s": bytes.len() as f64 / 1e6 / seconds.max(1e-9),
    })))
}

async fn diloco(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(diloco_view(&state, &state.status.read()))
}

/// The body of /api/diloco (also part of the dashboard's stream).
pub(super) fn diloco_view(state: &ApiState, s: &NodeStatus) -> serde_json::Value {
    let progress = s.inner_step as f64 / s.inner_steps_total.max(1) as f64;
    json!({
        "enabled": state.training_enabled,
        "inner_step_count": s.inner_step,
        "inner_steps_total": s.inner_steps_total,
        "progress": progress,
        "outer_step_count": s.outer_step_count,
        "phase": s.phase,
        "last_outer_step": s.last_outer_reason,
        "round_state": s.round_state,
        "theta0_hash": s.theta0_hash,
        "heals": s.heals,
        "last_heal": s.last_heal,
        "last_round": s.last_round,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateRequest {
    prompt: String,
    #[serde(default = "default_max_new_tokens")]
    max_new_tokens: usize,
    #[serde(default = "default_temperature")]
    temperature: f32,
    #[serde(default = "default_top_k")]
    top_k: usize,
    #[serde(default)]
    seed: Option<u64>,
}

fn default_max_new_tokens() -> usize {
    64
}
fn default_temperature() -> f32 {
    0.8
}
fn default_top_k() -> usize {
    40
}

impl GenerateRequest {
    fn validate(&self) -> Result<(), ApiError> {
        if self.prompt.len() > MAX_PROMPT_BYTES {
            return Err(ApiError::bad_request(format!(
                "prompt is {} bytes; the limit is {MAX_PROMPT_BYTES}",
                self.prompt.len()
            )));
        }
        if !(1..=MAX_NEW_TOKENS).contains(&self.max_new_tokens) {
            return Err(ApiError::bad_request(format!(
                "max_new_tokens must be in 1..={MAX_NEW_TOKENS}"
            )));
        }
        if !(self.temperature.is_finite() && (0.0..=5.0).contains(&self.temperature)) {
            return Err(ApiError::bad_request("temperature must be in [0, 5]"));
        }
        Ok(())
    }
}

async fn generate_text(
    state: web::Data<ApiState>,
    body: web::Json<GenerateRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = body.into_inner();
    request.validate()?;
    let model = state.current_model().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "model_not_ready",
            "the model has not been published yet; retry in a moment",
        )
    })?;
    let options = SamplingOptions {
        max_new_tokens: request.max_new_tokens,
        temperature: request.temperature,
        top_k: request.top_k,
        seed: request.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        }),
    };
    let prompt = request.prompt.clone();
    let started = std::time::Instant::now();
    let text = web::block(move || generate(&model, &prompt, &options, &cpu_device()))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "generation_failed",
                e.to_string(),
            )
        })?;
    let weights_version = state.status.read().weights_version;
    // Byte-level tokenizer: the prompt's and the text's bytes are the tokens processed.
    let request_id = format!("{:016x}", crate::crypto::generate_nonce());
    let proof = state
        .ledger
        .send(ProveInference {
            request_id: request_id.clone(),
            tokens: (request.prompt.len() + text.len()) as u64,
            seconds: started.elapsed().as_secs_f64(),
        })
        .await;
    // The text is served even when the ledger cannot answer: the proof is the node's business.
    let proof = match proof {
        Ok(Ok(proof)) => Some(proof),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "no inference proof for a served request");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "no inference proof for a served request");
            None
        }
    };
    Ok(HttpResponse::Ok().json(json!({
        "prompt": request.prompt,
        "text": text,
        "generated_tokens": text.len(),
        "model_version": weights_version,
        "elapsed_ms": started.elapsed().as_millis() as u64,
        "request_id": request_id,
        "proof": proof,
    })))
}

async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("index.html"))
}
