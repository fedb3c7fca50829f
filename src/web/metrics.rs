//! GET /metrics: the node's state in the Prometheus text format, built from the published
//! StatusBoard snapshot on each scrape (nothing is kept between scrapes, nothing waits on an actor).

use actix_web::{HttpResponse, web};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::state::{ApiState, get};
use crate::ledger::to_neuro;
use crate::status::{Component, NodeStatus};

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/metrics", metrics));
}

async fn metrics(state: web::Data<ApiState>) -> HttpResponse {
    match render(&state.status.read()) {
        Ok(text) => HttpResponse::Ok().content_type(CONTENT_TYPE).body(text),
        Err(e) => HttpResponse::InternalServerError().json(serde_json::json!({
            "error": "metrics_encoding", "detail": e.to_string()
        })),
    }
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let metric = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    metric.set(value);
    registry.register(name, help, metric);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric = Counter::<u64>::default();
    metric.inc_by(value);
    registry.register(name, help, metric);
}

/// The text exposition of one status snapshot.
pub fn render(s: &NodeStatus) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("neuroshard");
    let r = &mut registry;
    let nan = f64::NAN;
    counter(r, "global_step", "Training steps taken", s.global_step);
    gauge(
        r,
        "loss",
        "Last training loss",
        s.loss.map_or(nan, f64::from),
    );
    gauge(
        r,
        "val_loss",
        "Last validation loss",
        s.val_loss.map_or(nan, f64::from),
    );
    gauge(
        r,
        "tokens_per_second",
        "Training throughput",
        s.tokens_per_sec,
    );
    counter(
        r,
        "outer_rounds",
        "DiLoCo outer steps applied",
        s.outer_step_count,
    );
    counter(
        r,
        "heals",
        "Times this node adopted the majority's θ₀",
        s.heals,
    );
    counter(
        r,
        "trainer_restarts",
        "Trainer restarts by the supervisor",
        s.trainer_restarts,
    );
    let totals = &s.network.totals;
    counter(
        r,
        "network_bytes_in",
        "Bytes received from peers",
        totals.bytes_in,
    );
    counter(
        r,
        "network_bytes_out",
        "Bytes sent to peers",
        totals.bytes_out,
    );
    gauge(
        r,
        "peers",
        "Peers in the peer table",
        s.network.peer_count as f64,
    );
    let neuro = &s.neuro;
    gauge(
        r,
        "neuro_balance",
        "This node's NEURO balance",
        to_neuro(neuro.account.balance),
    );
    counter(
        r,
        "ledger_proofs",
        "Proofs stored in the ledger",
        neuro.network.proofs,
    );
    let rejected = Family::<Vec<(String, String)>, Counter>::default();
    for (reason, count) in &neuro.rejections {
        rejected
            .get_or_create(&vec![("reason".to_string(), reason.clone())])
            .inc_by(*count);
    }
    r.register(
        "ledger_rejections",
        "Proofs and transactions refused, by reason",
        rejected,
    );
    let degraded = Family::<Vec<(String, String)>, Gauge>::default();
    let failures = Family::<Vec<(String, String)>, Counter>::default();
    for component in Component::ALL {
        let label = vec![("component".to_string(), component.as_str().to_string())];
        degraded
            .get_or_create(&label)
            .set(i64::from(s.health.is_degraded(component)));
        failures.get_or_create(&label).inc_by(
            s.health
                .write_failures
                .get(&component)
                .copied()
                .unwrap_or(0),
        );
    }
    r.register(
        "degraded",
        "1 while this node's own storage fails for the component (a full disk, a database error)",
        degraded,
    );
    r.register(
        "local_write_failures",
        "Writes to this node's own state dir that failed, by component",
        failures,
    );
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}
