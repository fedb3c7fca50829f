//! The node's published read model: actors write their part, the HTTP layer only reads it.
//! A snapshot, not a channel, so a slow API client can never hold up training.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde::Serialize;

use crate::model::checkpoint::TrainerCounters;
use crate::net::peer_table::{NetworkTotals, PeerView};

/// What the trainer is doing right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainerPhase {
    Starting,
    Training,
    /// Inner steps done; waiting for the outer step of the round.
    Syncing,
    Restarting,
    Stopped,
    Disabled,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub node_id: String,
    /// libp2p PeerId of the same key as node_id.
    pub peer_id: String,
    pub role: &'static str,
    pub version: &'static str,
    pub preset: String,
    pub num_params: usize,
    pub backend: &'static str,
    pub phase: TrainerPhase,
    pub global_step: u64,
    pub loss: Option<f32>,
    pub val_loss: Option<f32>,
    pub initial_val_loss: Option<f32>,
    pub tokens_per_sec: f64,
    pub tokens_seen: u64,
    pub lr: f64,
    pub trainer_restarts: u64,
    pub last_crash: Option<String>,
    pub inner_step: u64,
    pub inner_steps_total: u64,
    pub outer_step_count: u64,
    pub last_outer_reason: Option<String>,
    /// Why the open round waits (or closes), or that this node heals: the round state
    /// machine's latest decision.
    pub round_state: String,
    /// The last closed DiLoCo round: who took part, who was kept, why it closed.
    pub last_round: Option<crate::diloco::round::RoundSummary>,
    /// BLAKE3 of θ₀'s bytes (its blob id): peers on the same outer parameters show the same hash.
    pub theta0_hash: String,
    /// Blob id of the outer momentum (served to healing peers).
    pub momentum_hash: String,
    /// Times this node adopted the majority's outer state, and why it last did.
    pub heals: u64,
    pub last_heal: Option<String>,
    pub checkpoints_written: u64,
    pub last_checkpoint_step: Option<u64>,
    /// The parameters generation uses (the latest published model) and their version.
    #[serde(skip)]
    pub weights: Option<Arc<Vec<f32>>>,
    pub weights_version: u64,
    /// The peer table as the network layer last published it.
    #[serde(skip)]
    pub network: Arc<NetworkView>,
    /// This node's account and the ledger's totals, as the LedgerActor last published them.
    #[serde(skip)]
    pub neuro: Arc<NeuroView>,
    /// This node's admission: policy, genesis, own certificate.
    pub admission: crate::admission::AdmissionView,
    /// This node's own faults (a full disk, a failing database): /api/health, /metrics.
    pub health: Health,
}

/// A part of this node that writes to its state dir and can fail on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    Ledger,
    Checkpoint,
}

impl Component {
    pub const ALL: [Component; 2] = [Component::Ledger, Component::Checkpoint];

    pub fn as_str(self) -> &'static str {
        match self {
            Component::Ledger => "ledger",
            Component::Checkpoint => "checkpoint",
        }
    }
}

/// A storage or I/O failure of this node: its own disk or database, never a peer's offence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} storage unavailable: {reason}", component.as_str())]
pub struct LocalFault {
    pub component: Component,
    pub reason: String,
}

impl LocalFault {
    pub fn new(component: Component, reason: impl std::fmt::Display) -> Self {
        Self {
            component,
            reason: reason.to_string(),
        }
    }
}

/// A local fault that is still active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActiveFault {
    pub component: Component,
    /// The latest failure's message.
    pub reason: String,
    /// When the component first failed (Unix ms); later failures keep it.
    pub since_ms: u64,
}

/// The node's own faults: at most one active per component (set by a failed write, cleared by
/// the component's next successful one), and how many local writes failed since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Health {
    pub faults: Vec<ActiveFault>,
    pub write_failures: std::collections::BTreeMap<Component, u64>,
}

impl Health {
    /// Records a failed write: the component is degraded from its first failure on.
    pub fn fail(&mut self, fault: &LocalFault, now_ms: u64) {
        let count = self.write_failures.entry(fault.component).or_default();
        *count = count.saturating_add(1);
        match self
            .faults
            .iter_mut()
            .find(|f| f.component == fault.component)
        {
            Some(active) => active.reason.clone_from(&fault.reason),
            None => {
                self.faults.push(ActiveFault {
                    component: fault.component,
                    reason: fault.reason.clone(),
                    since_ms: now_ms,
                });
                self.faults.sort_by_key(|f| f.component);
            }
        }
    }

    /// The component works again; true if it was degraded.
    pub fn recover(&mut self, component: Component) -> bool {
        let before = self.faults.len();
        self.faults.retain(|f| f.component != component);
        self.faults.len() != before
    }

    pub fn is_degraded(&self, component: Component) -> bool {
        self.faults.iter().any(|f| f.component == component)
    }

    /// "ok", or "degraded" while any component has an active fault.
    pub fn status(&self) -> &'static str {
        if self.faults.is_empty() {
            "ok"
        } else {
            "degraded"
        }
    }

    /// One line per active fault, naming the component first.
    pub fn reasons(&self) -> Vec<String> {
        self.faults
            .iter()
            .map(|f| format!("{}: {}", f.component.as_str(), f.reason))
            .collect()
    }
}

/// What /api/neuro shows, refreshed by the LedgerActor after every change.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NeuroView {
    pub account: crate::ledger::state::Account,
    pub stake_multiplier: f64,
    pub network: crate::ledger::store::NetworkTotals,
    /// Refused proofs and transactions by reason.
    pub rejections: std::collections::BTreeMap<String, u64>,
}

/// What /api/peers and /api/network show, refreshed by the PeerActor.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NetworkView {
    pub network_id: String,
    /// Full multiaddrs (with /p2p/<peer_id>) other nodes can use as --seed-peers.
    pub listen_addrs: Vec<String>,
    /// Peers listed and not banned.
    pub peer_count: usize,
    pub connected_peers: usize,
    pub peers: Vec<PeerView>,
    #[serde(flatten)]
    pub totals: NetworkTotals,
}

impl NodeStatus {
    /// Copies the trainer's counters into the published status.
    pub fn record_counters(&mut self, c: &TrainerCounters) {
        self.global_step = c.global_step;
        self.inner_step = c.inner_step;
        self.loss = c.loss;
        self.val_loss = c.val_loss;
        self.initial_val_loss = c.initial_val_loss;
        self.tokens_seen = c.tokens_seen;
    }
}

#[derive(Clone)]
pub struct StatusBoard {
    inner: Arc<RwLock<NodeStatus>>,
    started: Instant,
}

impl StatusBoard {
    pub fn new(status: NodeStatus) -> Self {
        Self {
            inner: Arc::new(RwLock::new(status)),
            started: Instant::now(),
        }
    }

    pub fn update(&self, f: impl FnOnce(&mut NodeStatus)) {
        // A panic elsewhere while holding the lock must not take the API down with it.
        let mut guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
        f(&mut guard);
    }

    pub fn read(&self) -> NodeStatus {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn publish_weights(&self, weights: Arc<Vec<f32>>) {
        self.update(|s| {
            s.weights = Some(weights);
            s.weights_version += 1;
        });
    }

    pub fn uptime_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Records a failed local write of `fault.component` (logged by the caller).
    pub fn local_fault(&self, fault: &LocalFault) {
        let now_ms = crate::net::wire::unix_ms();
        self.update(|s| s.health.fail(fault, now_ms));
    }

    /// `component` wrote successfully: it is no longer degraded. True if it was.
    pub fn local_recovery(&self, component: Component) -> bool {
        let degraded = self
            .inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .health
            .is_degraded(component);
        // Read first: the common case (nothing to clear) takes no write lock.
        degraded && {
            let mut recovered = false;
            self.update(|s| recovered = s.health.recover(component));
            recovered
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(component: Component) -> LocalFault {
        LocalFault::new(component, "database or disk is full")
    }

    #[test]
    fn a_fault_degrades_until_its_component_recovers() {
        let mut health = Health::default();
        assert_eq!(health.status(), "ok");
        assert!(health.reasons().is_empty());
        health.fail(&full(Component::Ledger), 1_000);
        assert_eq!(health.status(), "degraded");
        assert_eq!(health.reasons(), ["ledger: database or disk is full"]);
        assert!(!health.recover(Component::Checkpoint));
        assert_eq!(health.status(), "degraded");
        assert!(health.recover(Component::Ledger));
        assert_eq!(health.status(), "ok");
        assert!(!health.recover(Component::Ledger));
        // Failures stay counted after recovery.
        assert_eq!(health.write_failures[&Component::Ledger], 1);
    }

    #[test]
    fn repeated_failures_keep_the_first_time_and_the_latest_reason() {
        let mut health = Health::default();
        health.fail(&full(Component::Checkpoint), 5);
        health.fail(&full(Component::Ledger), 7);
        health.fail(&LocalFault::new(Component::Checkpoint, "disk I/O error"), 9);
        assert_eq!(health.faults.len(), 2);
        // Listed in component order, whatever order they failed in.
        assert_eq!(health.faults[0].component, Component::Ledger);
        let checkpoint = &health.faults[1];
        assert_eq!(
            (checkpoint.since_ms, checkpoint.reason.as_str()),
            (5, "disk I/O error")
        );
        assert_eq!(health.write_failures[&Component::Checkpoint], 2);
        assert!(health.is_degraded(Component::Checkpoint));
    }

    #[test]
    fn a_local_fault_names_its_component() {
        let fault = full(Component::Ledger);
        assert_eq!(
            fault.to_string(),
            "ledger storage unavailable: database or disk is full"
        );
    }
}
