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
    /// The last closed DiLoCo round: who took part, who was kept, why it closed.
    pub last_round: Option<crate::actors::sync::RoundSummary>,
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
}
