//! The ledger's REST surface: GET /api/neuro (the original's keys), /api/ledger/balance/{id},
//! /api/ledger/proofs/{id}?limit=, /api/ledger/network, /api/ledger/balances; POST /api/ponw/verify,
//! POST /api/ponw/receipt (a requester's receipt for this node's inference proof); and the mutating
//! POST /api/wallet/send, /api/stake, /api/unstake, which need `Authorization: Bearer <api_key>`.

use actix::{Handler, Message};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::state::{ApiState, get, post};
use super::views::{account_json, neuro_view};
use crate::actors::ledger::{LedgerActor, NotRecorded};
use crate::actors::messages::{
    AttachReceipt, CheckProof, GetAccount, GetBalances, GetCheckpoints, GetProofs, ReceiptRefused,
    SubmitTransaction,
};
use crate::ledger::proof::MAX_REQUEST_ID_BYTES;
use crate::ledger::rewards::nano;
use crate::ledger::verify::Offer;
use crate::ledger::{Nano, Receipt, SignedProof, TxKind, to_neuro};

const MAX_PROOFS_LISTED: usize = 1000;
/// The largest amount one request may move, in NEURO (far above any balance; keeps the
/// NEURO → nano conversion exact and in range).
const MAX_AMOUNT_NEURO: f64 = 1e9;

/// Paths relative to the API scope (/api and /api/v1).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/neuro", neuro))
        .service(get("/ledger/balance/{id}", balance))
        .service(get("/ledger/proofs/{id}", proofs))
        .service(get("/ledger/network", network))
        .service(get("/ledger/balances", balances))
        .service(get("/ledger/checkpoints", checkpoints))
        .service(post("/ponw/verify", verify))
        .service(post("/ponw/receipt", receipt))
        .service(post("/wallet/send", send))
        .service(post("/stake", stake))
        .service(post("/unstake", unstake));
}

/// This node's wallet with the Python original's keys.
async fn neuro(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(neuro_view(&state.status.read()))
}

fn node_id_of_path(id: &str) -> Result<String, ApiError> {
    let valid = id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if valid {
        Ok(id.to_string())
    } else {
        Err(ApiError::bad_request(
            "node id must be 32 lower-case hexadecimal characters",
        ))
    }
}

fn ledger_unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "ledger_unavailable",
        e.to_string(),
    )
}

/// Asks the LedgerActor a question whose only failure is the database: either error is a 503.
async fn ask<M, T, E>(state: &ApiState, question: M) -> Result<T, ApiError>
where
    M: Message<Result = Result<T, E>> + Send + 'static,
    M::Result: Send,
    LedgerActor: Handler<M>,
    E: std::fmt::Display,
{
    state
        .ledger
        .send(question)
        .await
        .map_err(ledger_unavailable)?
        .map_err(ledger_unavailable)
}

async fn balance(
    state: web::Data<ApiState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let node_id = node_id_of_path(&id)?;
    let account = ask(&state, GetAccount(node_id.clone())).await?;
    Ok(HttpResponse::Ok().json(account_json(&node_id, &account)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalancesQuery {
    epoch: Option<u64>,
}

/// Every account: nodes that saw the same proofs and transactions show identical tables. With
/// `?epoch=E`, the table after checkpointed epoch E, which every node holding that checkpoint
/// shows identically.
async fn balances(
    state: web::Data<ApiState>,
    query: Result<web::Query<BalancesQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let query = query.map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
    let Some(accounts) = ask(&state, GetBalances { epoch: query.epoch }).await? else {
        return Err(ApiError::new(
            actix_web::http::StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "this node holds no checkpoint of epoch {}",
                query.epoch.unwrap_or(0)
            ),
        ));
    };
    let table: serde_json::Map<String, serde_json::Value> = accounts
        .iter()
        .map(|(id, account)| (id.clone(), account_json(id, account)))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"accounts": table})))
}

/// The newest decided checkpoints, newest first, each with its certificate's signers.
async fn checkpoints(
    state: web::Data<ApiState>,
    query: Result<web::Query<ProofsQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let query = query.map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=MAX_PROOFS_LISTED).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be in 1..={MAX_PROOFS_LISTED}"
        )));
    }
    let records = ask(&state, GetCheckpoints { limit }).await?;
    Ok(HttpResponse::Ok().json(json!({ "checkpoints": records })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProofsQuery {
    limit: Option<usize>,
}

async fn proofs(
    state: web::Data<ApiState>,
    id: web::Path<String>,
    query: Result<web::Query<ProofsQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let node_id = node_id_of_path(&id)?;
    let query = query.map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_PROOFS_LISTED).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be in 1..={MAX_PROOFS_LISTED}"
        )));
    }
    let proofs = ask(
        &state,
        GetProofs {
            node_id: node_id.clone(),
            limit,
        },
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({"node_id": node_id, "proofs": proofs})))
}

async fn network(state: web::Data<ApiState>) -> HttpResponse {
    let view = state.status.read().neuro;
    HttpResponse::Ok().json(json!({
        "total_minted": to_neuro(view.network.total_minted),
        "total_burned": to_neuro(view.network.total_burned),
        "circulating_supply": to_neuro(view.network.circulating_supply),
        "totals": view.network,
        "rejections": view.rejections,
    }))
}

/// A proof in, the verdict out: what this node would decide if the proof arrived now. A data or
/// inference proof without a valid receipt from its receiver is valid but offered 0, with why.
async fn verify(
    state: web::Data<ApiState>,
    body: web::Json<SignedProof>,
) -> Result<HttpResponse, ApiError> {
    let check = ask(&state, CheckProof(body.into_inner())).await?;
    Ok(HttpResponse::Ok().json(match check.verdict {
        Ok(Offer {
            reward,
            unpaid: None,
        }) => json!({
            "valid": true,
            "proof_id": check.proof_id,
            "reward": to_neuro(reward),
            "reward_nano": reward,
        }),
        // Valid and stored if gossiped, but nobody other than the claimant vouches for the work.
        Ok(Offer {
            reward,
            unpaid: Some(why),
        }) => json!({
            "valid": true,
            "proof_id": check.proof_id,
            "reward": to_neuro(reward),
            "reward_nano": reward,
            "reason": why.kind(),
            "detail": why.to_string(),
        }),
        Err(rejection) => json!({
            "valid": false,
            "proof_id": check.proof_id,
            "reason": rejection.kind(),
            "detail": rejection.to_string(),
        }),
    }))
}

/// The body of POST /api/ponw/receipt.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptRequest {
    request_id: String,
    receipt: Receipt,
}

impl ReceiptRequest {
    /// The request id's length, or why not (400); the receipt itself is the ledger's to check.
    pub fn check(&self) -> Result<(), ApiError> {
        if self.request_id.is_empty() || self.request_id.len() > MAX_REQUEST_ID_BYTES {
            return Err(ApiError::bad_request(format!(
                "request_id must be 1..={MAX_REQUEST_ID_BYTES} bytes"
            )));
        }
        Ok(())
    }
}

/// The requester of a /generate_text answer vouches for it: its receipt (`proof::sign_receipt`
/// over the `proof` the answer carried) is attached to this node's waiting inference proof, which
/// is then signed, stored and gossiped, and earns. No API key: the receipt's signature is the
/// requester's authority.
async fn receipt(
    state: web::Data<ApiState>,
    body: web::Json<ReceiptRequest>,
) -> Result<HttpResponse, ApiError> {
    body.check()?;
    let ReceiptRequest {
        request_id,
        receipt,
    } = body.into_inner();
    let accepted = state
        .ledger
        .send(AttachReceipt {
            request_id,
            receipt,
        })
        .await
        .map_err(ledger_unavailable)?
        .map_err(|refused| match refused {
            ReceiptRefused::Unknown(_) => ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_request",
                refused.to_string(),
            ),
            ReceiptRefused::Invalid(why) => {
                ApiError::new(StatusCode::BAD_REQUEST, why.kind(), why.to_string())
            }
            ReceiptRefused::NotRecorded(not_recorded) => refusal(not_recorded),
        })?;
    Ok(HttpResponse::Ok().json(json!({
        "proof_id": accepted.proof_id,
        "status": accepted.status.map_or("not_stored", |s| s.as_str()),
    })))
}

/// A proof or transaction of this node that the ledger did not record, as an HTTP error.
fn refusal(refused: NotRecorded) -> ApiError {
    match refused {
        NotRecorded::Offence(rejection) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            rejection.kind(),
            rejection.to_string(),
        ),
        // Not stored, so not applied nor gossiped: the caller may retry once space returns.
        NotRecorded::Local(fault) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            fault.to_string(),
        ),
    }
}

/// The mutating endpoints need the configured API key as a bearer token.
fn authorize(state: &ApiState, req: &HttpRequest) -> Result<(), ApiError> {
    let Some(expected) = &state.api_key else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "api_key_not_configured",
            "set api_key (or NEUROSHARD_API_KEY) to enable wallet operations",
        ));
    };
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(key) if constant_time_eq(key.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer API key",
        )),
    }
}

/// Compares without an early exit, so response timing does not reveal the key's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn amount_nano(amount: f64) -> Result<Nano, ApiError> {
    if !(amount.is_finite() && amount > 0.0 && amount <= MAX_AMOUNT_NEURO) {
        return Err(ApiError::bad_request(format!(
            "amount must be a number in (0, {MAX_AMOUNT_NEURO}] NEURO"
        )));
    }
    match nano(amount) {
        0 => Err(ApiError::bad_request("amount is below 1 nano-NEURO")),
        n => Ok(n),
    }
}

async fn submit(state: &ApiState, request: SubmitTransaction) -> Result<HttpResponse, ApiError> {
    let submitted = state
        .ledger
        .send(request)
        .await
        .map_err(ledger_unavailable)?
        .map_err(refusal)?;
    Ok(HttpResponse::Ok().json(json!({
        "id": submitted.id,
        "status": submitted.status,
        "transaction": submitted.transaction,
    })))
}

/// The body of POST /api/wallet/send.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    to: String,
    amount: f64,
}

impl SendRequest {
    /// The recipient's node_id and the amount in nano-NEURO, or why not (400).
    pub fn check(&self) -> Result<(String, Nano), ApiError> {
        Ok((node_id_of_path(&self.to)?, amount_nano(self.amount)?))
    }
}

async fn send(
    state: web::Data<ApiState>,
    req: HttpRequest,
    body: web::Json<SendRequest>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (to, amount) = body.check()?;
    submit(
        &state,
        SubmitTransaction {
            kind: TxKind::Transfer,
            to,
            amount,
            lock_s: 0,
        },
    )
    .await
}

/// The body of POST /api/stake.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StakeRequest {
    amount: f64,
    /// Lock period; the config's ledger.limits bound it (1 to 365 days by default).
    duration_days: f64,
}

impl StakeRequest {
    /// The amount in nano-NEURO and the lock in seconds, or why not (400).
    pub fn check(&self) -> Result<(Nano, u64), ApiError> {
        let amount = amount_nano(self.amount)?;
        let days = self.duration_days;
        if !(days.is_finite() && days > 0.0 && days <= 3650.0) {
            return Err(ApiError::bad_request(
                "duration_days must be a number in (0, 3650]",
            ));
        }
        Ok((amount, (days * 86_400.0).round() as u64))
    }
}

async fn stake(
    state: web::Data<ApiState>,
    req: HttpRequest,
    body: web::Json<StakeRequest>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (amount, lock_s) = body.check()?;
    submit(
        &state,
        SubmitTransaction {
            kind: TxKind::Stake,
            to: String::new(),
            amount,
            lock_s,
        },
    )
    .await
}

/// The body of POST /api/unstake.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnstakeRequest {
    amount: f64,
}

impl UnstakeRequest {
    /// The amount in nano-NEURO, or why not (400).
    pub fn check(&self) -> Result<Nano, ApiError> {
        amount_nano(self.amount)
    }
}

async fn unstake(
    state: web::Data<ApiState>,
    req: HttpRequest,
    body: web::Json<UnstakeRequest>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let amount = body.check()?;
    submit(
        &state,
        SubmitTransaction {
            kind: TxKind::Unstake,
            to: String::new(),
            amount,
            lock_s: 0,
        },
    )
    .await
}
