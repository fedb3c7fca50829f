//! The JSON bodies the REST routes and the dashboard's stream share, so both say the same thing.

use serde_json::json;

use super::state::ApiState;
use crate::ledger::rewards::stake_multiplier;
use crate::ledger::state::Account;
use crate::ledger::to_neuro;
use crate::status::NodeStatus;

/// The body of /api/health (also part of the dashboard's stream).
pub(super) fn health_view(state: &ApiState, s: &NodeStatus) -> serde_json::Value {
    json!({
        "status": s.health.status(),
        "uptime_s": state.status.uptime_s(),
        "reasons": s.health.reasons(),
        "faults": s.health.faults,
    })
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

/// The body of /api/network: the network totals without the peer list.
pub(super) fn network_view(s: &NodeStatus) -> serde_json::Value {
    let mut view = serde_json::to_value(s.network.as_ref()).unwrap_or_default();
    if let Some(object) = view.as_object_mut() {
        object.remove("peers");
        object.insert("peer_id".into(), json!(s.peer_id));
    }
    view
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

pub(super) fn account_json(node_id: &str, account: &Account) -> serde_json::Value {
    json!({
        "node_id": node_id,
        "balance": to_neuro(account.balance),
        "total_earned": to_neuro(account.total_earned),
        "total_spent": to_neuro(account.total_spent),
        "stake": to_neuro(account.stake),
        "stake_locked_until_ms": account.stake_locked_until_ms,
        "stake_multiplier": stake_multiplier(account.stake),
        "proof_count": account.proof_count,
        "balance_nano": account.balance,
    })
}

/// The body of /api/neuro (also part of the dashboard's stream).
pub(super) fn neuro_view(s: &NodeStatus) -> serde_json::Value {
    let view = &s.neuro;
    let mut body = account_json(&s.node_id, &view.account);
    body["wallet_id"] = json!(s.node_id);
    body["network"] = json!({
        "total_minted": to_neuro(view.network.total_minted),
        "total_burned": to_neuro(view.network.total_burned),
        "circulating_supply": to_neuro(view.network.circulating_supply),
    });
    body["rejections"] = json!(view.rejections);
    body
}
