//! The dashboard's live feed: GET /api/events (Server-Sent Events) and GET /api/logs.
//!
//! One sampler (the HttpActor's one-second tick) reads the status board, extends the
//! [`Timeline`] and broadcasts one `update` event to every open page; a page that connects first
//! gets a `snapshot` with the whole history. Pages never poll, so a hundred open dashboards cost one
//! status read a second.

use actix_web::web::{self, Bytes};
use actix_web::{HttpResponse, Responder};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::error::ApiError;
use super::feed::{MAX_LOG_LINES, lock};
use super::state::{ApiState, get};
use super::views::{diloco_view, health_view, network_view, neuro_view, stats_view};
use crate::ledger::to_neuro;
use crate::logs::{LogLine, LogQuery, LogRing};
use crate::status::NodeStatus;
use crate::timeline::{Sample, Timeline, data_parallel_bytes, seconds_to_sync};

/// The window over which the step rate (and so the time to the next sync) is measured.
const STEP_RATE_WINDOW_S: f64 = 30.0;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/events", events))
        .service(get("/logs", logs));
}

/// One sampler tick: record what changed and tell every open page.
pub fn tick(state: &ApiState) {
    let s = state.status.read();
    let sample = Sample {
        t: state.status.uptime_s(),
        step: s.global_step,
        tokens_seen: s.tokens_seen,
        loss: s.loss,
        val_loss: s.val_loss,
        tokens_per_sec: s.tokens_per_sec,
        balance: to_neuro(s.neuro.account.balance),
    };
    let (added, derived) = {
        let mut timeline = lock(&state.feed.timeline);
        let added = timeline.observe(sample, s.last_round.as_ref());
        (added, derived_view(&timeline, &s))
    };
    let new_logs = {
        let mut streamed = lock(&state.feed.logs_streamed);
        let lines = recent_logs(&state.feed.logs, *streamed);
        if let Some(last) = lines.last() {
            *streamed = last.seq;
        }
        lines
    };
    let mut update = views(state, &s);
    update["derived"] = derived;
    update["sample"] = json!(added.sample);
    update["round"] = json!(added.round);
    update["logs"] = json!(new_logs);
    if let Some(sender) = lock(&state.feed.events).as_ref() {
        // No open page is not an error: the timeline above is what a page gets when it opens.
        let _ = sender.send(sse_event("update", &update));
    }
}

fn recent_logs(logs: &LogRing, after: u64) -> Vec<LogLine> {
    logs.query(&LogQuery {
        after,
        limit: MAX_LOG_LINES,
        ..LogQuery::default()
    })
}

/// What every event carries: the same objects /api/stats, /api/diloco, /api/neuro, /api/network,
/// /api/peers and /api/health return.
fn views(state: &ApiState, s: &NodeStatus) -> Value {
    json!({
        "health": health_view(state, s),
        "stats": stats_view(state, s),
        "diloco": diloco_view(state, s),
        "neuro": neuro_view(s),
        "network": network_view(s),
        "peers": s.network.peers,
    })
}

/// Figures the page shows that no single endpoint holds.
fn derived_view(timeline: &Timeline, s: &NodeStatus) -> Value {
    let steps_per_second = timeline.steps_per_second(STEP_RATE_WINDOW_S);
    let steps_since_start = timeline
        .samples()
        .first()
        .map_or(0, |first| s.global_step.saturating_sub(first.step));
    let nodes = s.network.connected_peers + 1;
    json!({
        "steps_per_second": steps_per_second,
        "seconds_to_sync": steps_per_second
            .filter(|_| s.inner_steps_total > 0)
            .map(|rate| seconds_to_sync(s.inner_step, s.inner_steps_total, rate)),
        "nodes": nodes,
        "bytes_out": s.network.totals.bytes_out,
        "data_parallel_bytes_out": data_parallel_bytes(steps_since_start, nodes, s.num_params),
    })
}

fn sse_event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

fn snapshot(state: &ApiState) -> Bytes {
    let s = state.status.read();
    let mut body = views(state, &s);
    {
        let timeline = lock(&state.feed.timeline);
        body["derived"] = derived_view(&timeline, &s);
        body["timeline"] = json!(*timeline);
    }
    body["logs"] = json!(recent_logs(&state.feed.logs, 0));
    sse_event("snapshot", &body)
}

/// GET /api/events: `snapshot` first, then an `update` a second. A page that falls behind gets a
/// fresh snapshot instead of the updates it missed.
async fn events(state: web::Data<ApiState>) -> Result<impl Responder, ApiError> {
    let receiver = state.feed.subscribe()?;
    let first = futures::stream::once(futures::future::ready(snapshot(&state)));
    let rest = futures::stream::unfold((receiver, state), |(mut receiver, state)| async move {
        let event = match receiver.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(_)) => snapshot(&state),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((event, (receiver, state)))
    });
    let stream = futures::StreamExt::map(futures::StreamExt::chain(first, rest), |event| {
        Ok::<_, actix_web::Error>(event)
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(stream))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsRequest {
    /// error | warn | info | debug | trace: that severity or worse.
    level: Option<String>,
    #[serde(default)]
    target: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

/// GET /api/logs?level=&target=&q=&after=&limit=: the latest matching lines, oldest first.
async fn logs(
    state: web::Data<ApiState>,
    query: Result<web::Query<LogsRequest>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let request = query
        .map_err(|e| ApiError::bad_request(format!("query: {e}")))?
        .into_inner();
    let min_level = request
        .level
        .map(|level| {
            level.parse().map_err(|_| {
                ApiError::bad_request("level must be one of error, warn, info, debug, trace")
            })
        })
        .transpose()?;
    let limit = request.limit.unwrap_or(200);
    if !(1..=MAX_LOG_LINES).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be in 1..={MAX_LOG_LINES}"
        )));
    }
    let lines = state.feed.logs.query(&LogQuery {
        min_level,
        target: request.target,
        text: request.q,
        after: request.after,
        limit,
    });
    Ok(HttpResponse::Ok().json(json!({"lines": lines, "last_seq": state.feed.logs.last_seq()})))
}
