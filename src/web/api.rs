//! /api/health, /api/stats, /api/diloco, /api/peers, /api/network, POST /generate_text,
//! POST /api/blobs/fetch (each also under /api/v1) and the plain status page at /.
//! Every error is JSON {error, detail} with a 4xx (or 503) status.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::state::{ApiState, MAX_BODY_BYTES, get, not_found, post};
use super::views::{diloco_view, health_view, network_view, stats_view};
use crate::actors::messages::{FetchBlob, FetchError, ProveInference};
use crate::diloco::codec::max_delta_len;
use crate::model::backend::cpu_device;
use crate::model::inference::{SamplingOptions, generate};
use crate::net::blob::BlobId;

const MAX_PROMPT_BYTES: usize = 8 * 1024;
const MAX_NEW_TOKENS: usize = 512;

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

/// 200 in either case: "degraded" (this node's own disk or database failing, with the reasons)
/// is not a reason to restart the process; it recovers when the disk does.
async fn health(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(health_view(&state, &state.status.read()))
}

async fn stats(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(stats_view(&state, &state.status.read()))
}

async fn peers(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({"peers": state.status.read().network.peers}))
}

async fn network(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(network_view(&state.status.read()))
}

/// The body of POST /api/blobs/fetch.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchBlobRequest {
    peer_id: String,
    hash: String,
}

impl FetchBlobRequest {
    /// The peer and blob the body names, or why not (400).
    pub fn check(&self) -> Result<(libp2p::PeerId, BlobId), ApiError> {
        let peer: libp2p::PeerId = self
            .peer_id
            .parse()
            .map_err(|e| ApiError::bad_request(format!("peer_id: {e}")))?;
        let id = BlobId::from_hex(&self.hash)
            .ok_or_else(|| ApiError::bad_request("hash must be 64 hexadecimal characters"))?;
        Ok((peer, id))
    }
}

/// Fetches a blob a peer serves (e.g. its θ₀, named by the theta0_hash of its heartbeat) and
/// reports the transfer: a check of the path to a peer and its throughput. The bytes are dropped.
async fn fetch_blob(
    state: web::Data<ApiState>,
    body: web::Json<FetchBlobRequest>,
) -> Result<HttpResponse, ApiError> {
    let (peer, id) = body.check()?;
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
            range: None,
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

/// The body of POST /generate_text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
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
    /// Prompt size, token count and temperature within bounds, or why not (400).
    pub fn validate(&self) -> Result<(), ApiError> {
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
