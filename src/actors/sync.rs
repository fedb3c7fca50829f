//! SyncActor: owns DiLoCo's outer state — θ₀, the outer Nesterov momentum, the round number — the
//! round in progress and the checkpoints. When the trainer finishes its H inner steps it encodes
//! Δ = θ₀ − θ_H (with error feedback), serves it as a blob and announces it; it fetches the peers'
//! deltas for the same round and θ₀ as their announcements arrive; when `round_decision` says the
//! round is complete (quorum or deadline) the AggregatorActor combines the deltas, the outer step
//! is applied, and the trainer restarts from the new θ₀.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use libp2p::PeerId;
use serde::Serialize;
use tracing::{debug, error, info, warn};

use super::aggregator::AggregatorActor;
use super::ledger::LedgerActor;
use super::messages::{
    AggregateRound, AnnounceRound, BlobServed, DeltaVerdict, FetchBlob, GetResumeState,
    InnerRoundDone, ModelAdopted, OfferBlob, PeerRoundAnnounced, PeerWeights, ProveTraining,
    RegisterRounds, RegisterTrainer, ResumeState, RoundVerdicts, SnapshotTaken, StartRound,
    WriteCheckpoint,
};
use super::peer::PeerActor;
use crate::aggregate::{Aggregate, AggregationConfig, Contribution, check_aggregate};
use crate::diloco::attack::{Attack, poison};
use crate::diloco::codec::{Codec, CodecConfig, ErrorFeedback, decode, encode, max_encoded_len};
use crate::diloco::heal::{
    HealPlan, OwnState, PeerOuterState, catching_up, check_adopted, disagrees, heal_decision, reach,
};
use crate::diloco::round::{
    RoundDecision, RoundOptions, RoundProgress, has_quorum, round_decision,
};
use crate::diloco::weight::{
    self, EPSILON, Reputation, Standing, WeightRule, is_newcomer_share, newcomer_places,
    newcomer_rank,
};
use crate::diloco::{OuterOptimizer, pseudo_gradient};
use crate::model::checkpoint::{self, Checkpoint, OuterState, TrainerSnapshot};
use crate::model::params::ParamSpec;
use crate::net::blob::BlobId;
use crate::net::wire::{RoundAnnouncement, unix_ms};
use crate::status::{Component, LocalFault, StatusBoard};

/// How often an open round is re-examined (its deadline needs a clock).
const ROUND_CHECK: Duration = Duration::from_millis(200);
/// How often this node repeats its latest round announcement: gossip is fire-and-forget, and a
/// peer that connected (or joined the mesh) after the first one must still learn of the delta.
const REANNOUNCE: Duration = Duration::from_secs(2);
/// θ₀ hashes whose state failed `check_adopted`, remembered so they are never fetched again.
const MAX_REFUSED_STATES: usize = 64;
/// Announcements kept for the next round while this one is still open.
const MAX_EARLY_ANNOUNCEMENTS: usize = 1024;

/// Where and for which model checkpoints are written.
#[derive(Clone)]
pub struct CheckpointTarget {
    pub dir: PathBuf,
    pub model_hash: String,
    pub layout: Arc<Vec<ParamSpec>>,
    /// One writer at a time: two concurrent writes would race on the temporary file.
    pub lock: Arc<Mutex<()>>,
}

impl CheckpointTarget {
    /// Writes `checkpoint`; a failure is this node's own (its disk), reported on /api/health
    /// until the next checkpoint is written. Training goes on either way.
    fn write(&self, checkpoint: &Checkpoint, status: &StatusBoard) -> Result<PathBuf, LocalFault> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let written = checkpoint::save(&self.dir, &self.model_hash, &self.layout, checkpoint)
            .map_err(|e| LocalFault::new(Component::Checkpoint, e));
        match &written {
            Ok(_) => {
                if status.local_recovery(Component::Checkpoint) {
                    tracing::info!("checkpoints are written again");
                }
            }
            Err(fault) => status.local_fault(fault),
        }
        written
    }
}

/// How this node takes part in rounds (the `[diloco]` config).
#[derive(Debug, Clone)]
pub struct RoundSettings {
    pub optimizer: OuterOptimizer,
    pub aggregation: AggregationConfig,
    pub compression: CodecConfig,
    pub closing: RoundOptions,
    /// A peer's decoded delta with a larger L2 norm is refused.
    pub max_delta_norm: f32,
    /// Test fault switch NEUROSHARD_FAULT_BYZANTINE: send poisoned deltas.
    pub attack: Option<Attack>,
    /// Who counts in heal, quorum and aggregation: admitted peers, or reputation.
    pub weight_rule: WeightRule,
    /// This node holds a valid membership certificate (what counts in a permissioned network).
    pub own_admitted: bool,
}

/// What /api/diloco shows of the last closed round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundSummary {
    pub round: u64,
    pub participants: usize,
    pub kept: Vec<String>,
    pub rejected: Vec<String>,
    pub rule: String,
    pub reason: String,
    /// Bytes of this node's encoded delta uploaded to peers while the round was open.
    pub bytes_sent: u64,
    /// Encoded deltas fetched from peers.
    pub bytes_received: u64,
    /// From this node's delta being ready to the round's aggregate in hand: waiting for the
    /// slower peers, fetching and aggregating.
    pub sync_seconds: f64,
}

/// The round in progress.
#[derive(Default)]
struct OpenRound {
    own_ready_at: Option<Instant>,
    /// Decoded deltas by node_id: every node combines them in the same order.
    contributions: BTreeMap<String, Contribution>,
    /// node_ids whose announced delta is being fetched.
    pending: HashSet<String>,
    /// Newcomers (open networks) holding one of the round's few newcomer places.
    newcomers: BTreeSet<String>,
    /// When the contributions in hand first made the quorum.
    quorum_since: Option<Instant>,
    /// The aggregation is running; nothing joins the round any more.
    closing: bool,
    /// The blob id (hex) of each contribution's encoded delta, for the ledger's verdicts.
    delta_hashes: BTreeMap<String, String>,
    /// The blob of this node's own encoded delta; its uploads to peers are `bytes_sent`.
    own_delta: Option<BlobId>,
    bytes_sent: u64,
    bytes_received: u64,
}

pub struct SyncActor {
    node_id: String,
    round: u64,
    theta0: Arc<Vec<f32>>,
    theta0_hash: String,
    /// The round and θ₀ hash published before the current ones (None after a heal: the path
    /// here is not this node's own).
    previous_outer: Option<(u64, String)>,
    published_round: u64,
    momentum: Vec<f32>,
    settings: RoundSettings,
    feedback: ErrorFeedback,
    open: OpenRound,
    /// Announcements for the next round that arrived before this one closed.
    early: Vec<(PeerId, RoundAnnouncement)>,
    /// This node's announcements of its last two rounds, repeated: a peer still in the previous
    /// round (it started later, or missed the first announcement) must still get that delta.
    announced: VecDeque<RoundAnnouncement>,
    /// A heal (fetching the majority's outer state) is under way.
    healing: bool,
    heal_attempts: u32,
    /// Since when this node has disagreed with a heavier group of trainers.
    disagreeing_since: Option<Instant>,
    /// Rounds in which this node's aggregation kept each peer's delta (open networks' weight).
    reputation: Reputation,
    /// θ₀ hashes of fetched states that failed the checks: peers holding them cannot pull this
    /// node (a poisoned θ₀ is fetched once, not every 200 ms).
    refused_states: VecDeque<String>,
    aggregator: Addr<AggregatorActor>,
    trainer: Option<Recipient<StartRound>>,
    last_snapshot: Option<Arc<TrainerSnapshot>>,
    checkpoints: CheckpointTarget,
    status: StatusBoard,
    /// Serves θ₀ and deltas to peers, announces rounds, fetches peers' deltas.
    network: Addr<PeerActor>,
    ledger: Addr<LedgerActor>,
}

impl SyncActor {
    /// `resume` is the trainer state of the checkpoint the node started from, if any.
    #[allow(clippy::too_many_arguments)] // each is a distinct collaborator, named at the call site
    pub fn new(
        node_id: String,
        outer: OuterState,
        resume: Option<TrainerSnapshot>,
        settings: RoundSettings,
        aggregator: Addr<AggregatorActor>,
        checkpoints: CheckpointTarget,
        status: StatusBoard,
        network: Addr<PeerActor>,
        ledger: Addr<LedgerActor>,
    ) -> Self {
        let last_snapshot = resume.map(Arc::new);
        let feedback = match outer.residual {
            Some(residual) if residual.len() == outer.theta0.len() => {
                ErrorFeedback::from_residual(residual)
            }
            _ => ErrorFeedback::new(outer.theta0.len()),
        };
        Self {
            node_id,
            round: outer.round,
            theta0: Arc::new(outer.theta0),
            theta0_hash: String::new(),
            previous_outer: None,
            published_round: 0,
            momentum: outer.momentum,
            settings,
            feedback,
            open: OpenRound::default(),
            early: Vec::new(),
            announced: VecDeque::new(),
            healing: false,
            heal_attempts: 0,
            disagreeing_since: None,
            reputation: Reputation::default(),
            refused_states: VecDeque::new(),
            aggregator,
            trainer: None,
            last_snapshot,
            checkpoints,
            status,
            network,
            ledger,
        }
    }

    fn checkpoint_of(&self, snapshot: &TrainerSnapshot) -> Checkpoint {
        Checkpoint {
            trainer: snapshot.aligned_to(self.round, &self.theta0),
            outer: OuterState {
                round: self.round,
                theta0: self.theta0.to_vec(),
                momentum: self.momentum.clone(),
                residual: self.residual_at_round_start(),
            },
        }
    }

    /// The error-feedback residual to checkpoint: only a lossy codec has one, and once this
    /// round's delta is encoded it already holds this round's error, which a restart (that
    /// retrains the round) would count twice — then none is saved.
    fn residual_at_round_start(&self) -> Option<Vec<f32>> {
        let lossless = self.settings.compression.codec == Codec::Fp32;
        (!lossless && self.open.own_ready_at.is_none()).then(|| self.feedback.residual().to_vec())
    }

    /// Serves θ₀ and the outer momentum (little-endian f32 bytes) to peers under their BLAKE3
    /// hashes, and publishes the round and both hashes together (heartbeats and the API never
    /// see one without the others).
    fn publish_outer_state(&mut self) {
        let serve = |values: &[f32]| {
            let bytes = Arc::new(bytemuck::cast_slice::<f32, u8>(values).to_vec());
            let id = BlobId::of(&bytes);
            self.network.do_send(OfferBlob { id, bytes });
            id.to_string()
        };
        let (theta0_hash, momentum_hash) = (serve(&self.theta0), serve(&self.momentum));
        let round = self.round;
        let left = std::mem::replace(&mut self.theta0_hash, theta0_hash.clone());
        self.previous_outer = (!left.is_empty() && self.published_round + 1 == round)
            .then_some((self.published_round, left));
        self.published_round = round;
        self.ledger.do_send(ModelAdopted {
            round,
            theta0_hash: theta0_hash.clone(),
        });
        self.status.update(|s| {
            s.theta0_hash = theta0_hash;
            s.momentum_hash = momentum_hash;
            s.outer_step_count = round;
        });
    }

    /// The trainer peers' outer states and weights, from their last heartbeats, by node_id.
    fn trainer_peers(&self) -> BTreeMap<String, PeerOuterState> {
        let network = self.status.read().network;
        let trainers: Vec<_> = network
            .peers
            .iter()
            .filter(|p| !p.banned)
            .filter_map(|p| Some((p, p.heartbeat.as_ref().filter(|h| h.role == "trainer")?)))
            .collect();
        let standings: Vec<Standing> = trainers
            .iter()
            .map(|(p, _)| Standing {
                node_id: p.node_id.clone(),
                admitted: p.admitted,
            })
            .collect();
        let weights = weight::weights(self.settings.weight_rule, &self.reputation, &standings);
        trainers
            .into_iter()
            .zip(weights)
            .map(|((p, h), weight)| {
                let state = PeerOuterState {
                    peer_id: p.peer_id.clone(),
                    round: h.outer_round,
                    theta0_hash: h.theta0_hash.clone(),
                    momentum_hash: h.momentum_hash.clone(),
                    weight,
                };
                (p.node_id.clone(), state)
            })
            .collect()
    }

    fn own_weight(&self) -> f64 {
        weight::own_weight(self.settings.weight_rule, self.settings.own_admitted)
    }

    /// Heals when `heal_decision` says a heavier group holds another outer state.
    fn check_heal(&mut self, ctx: &mut Context<Self>) {
        // Not while an aggregation is in flight: its outer step would land on the healed θ₀.
        if self.healing || self.open.closing || self.theta0_hash.is_empty() {
            return;
        }
        let previous = self.previous_outer.as_ref().map(|(r, h)| (*r, h.as_str()));
        let candidates = self
            .trainer_peers()
            .into_values()
            .filter(|p| !self.refused_states.contains(&p.theta0_hash))
            .collect();
        let peers = catching_up(candidates, self.round, &self.theta0_hash, previous);
        let theta0_hash = self.theta0_hash.clone();
        let own = OwnState {
            round: self.round,
            theta0_hash: &theta0_hash,
            weight: self.own_weight(),
        };
        let now = Instant::now();
        if !disagrees(own, &peers) {
            self.disagreeing_since = None;
            return;
        }
        let since = *self.disagreeing_since.get_or_insert(now);
        if let Some(plan) = heal_decision(now, own, &peers, Some(since)) {
            self.heal(plan, ctx);
        }
    }

    /// Fetches θ₀ (checked against the heavier group's hash) and the momentum from one of its
    /// peers, checks them (`check_adopted`), adopts them with that group's round and restarts the
    /// trainer there.
    fn heal(&mut self, plan: HealPlan, ctx: &mut Context<Self>) {
        // Successive attempts try the group's peers in turn.
        let source = plan.sources[self.heal_attempts as usize % plan.sources.len()].clone();
        self.heal_attempts += 1;
        let (Ok(peer), Some(theta0_id), Some(momentum_id)) = (
            source.peer_id.parse::<PeerId>(),
            BlobId::from_hex(&plan.theta0_hash),
            BlobId::from_hex(&source.momentum_hash),
        ) else {
            return;
        };
        self.healing = true;
        info!(round = plan.round, from = %source.peer_id, "healing: {}", plan.reason);
        let network = self.network.clone();
        // θ₀ and the momentum are 4 bytes a value.
        let state_bytes = 4 * self.theta0.len() as u64;
        let fetch = async move {
            let theta0 = network
                .send(FetchBlob {
                    peer,
                    id: theta0_id,
                    max_bytes: state_bytes,
                })
                .await;
            let momentum = network
                .send(FetchBlob {
                    peer,
                    id: momentum_id,
                    max_bytes: state_bytes,
                })
                .await;
            (theta0, momentum)
        };
        ctx.spawn(fetch.into_actor(self).map(move |(theta0, momentum), act, ctx| {
            act.healing = false;
            let as_values = |fetched: Result<Result<Arc<Vec<u8>>, String>, MailboxError>| {
                let bytes = fetched.map_err(|e| e.to_string())??;
                if bytes.len() % 4 != 0 {
                    return Err(format!("{} bytes is not a whole number of f32", bytes.len()));
                }
                Ok(bytemuck::pod_collect_to_vec::<u8, f32>(&bytes))
            };
            let rounds = plan.round.abs_diff(act.round);
            let o = &act.settings.optimizer;
            let bound = reach(rounds, o.lr, o.momentum, act.settings.max_delta_norm);
            let (theta0, momentum) = match (as_values(theta0), as_values(momentum)) {
                (Ok(t), Ok(m)) => (t, m),
                (Err(e), _) | (_, Err(e)) => {
                    return warn!(from = %source.peer_id, error = %e, "healing failed; will retry");
                }
            };
            if let Err(why) = check_adopted(&act.theta0, &theta0, &momentum, bound, rounds) {
                warn!(from = %source.peer_id, theta0 = %plan.theta0_hash, error = %why, "healing refused the fetched state; its holders cannot pull this node");
                act.refused_states.push_back(plan.theta0_hash.clone());
                if act.refused_states.len() > MAX_REFUSED_STATES {
                    act.refused_states.pop_front();
                }
                act.disagreeing_since = None;
                return;
            }
            act.round = plan.round;
            act.theta0 = Arc::new(theta0);
            act.momentum = momentum;
            act.feedback = ErrorFeedback::new(act.theta0.len());
            act.open = OpenRound::default();
            act.early.clear();
            act.announced.clear();
            act.disagreeing_since = None;
            act.heal_attempts = 0;
            act.publish_outer_state();
            // The round this node left is not on the path to the adopted θ₀.
            act.previous_outer = None;
            let reason = plan.reason.clone();
            act.status.update(|s| {
                s.heals += 1;
                s.last_heal = Some(reason);
            });
            info!(round = act.round, "healed: θ₀ and momentum adopted from {}", source.peer_id);
            if let Some(trainer) = &act.trainer {
                trainer.do_send(StartRound { round: act.round, theta0: act.theta0.clone() });
            }
            act.evaluate(ctx);
        }));
    }

    /// The weight of a contributor of this round: this node's own, or a peer's from its heartbeat
    /// (0 for an identity this node has no standing for).
    fn weight_of(&self, node_id: &str, peers: &BTreeMap<String, PeerOuterState>) -> f64 {
        if node_id == self.node_id {
            return self.own_weight();
        }
        peers.get(node_id).map_or(0.0, |p| p.weight)
    }

    /// Whether a newcomer (open networks) gets one of the round's newcomer places: ⌊β·n⌋ of
    /// them (at least one), given in the order of `newcomer_rank`, so every node takes the same
    /// newcomers and a thousand fresh keys take no more places than one. A better-ranked newcomer
    /// displaces the worst one holding a place.
    fn newcomer_place(&mut self, node_id: &str, peers: &BTreeMap<String, PeerOuterState>) -> bool {
        let established = 1 + peers
            .values()
            .filter(|p| p.round == self.round && p.weight >= 1.0 - EPSILON)
            .count();
        let places = newcomer_places(established, self.settings.aggregation.byzantine_fraction);
        let rank = |id: &str| newcomer_rank(&self.theta0_hash, id);
        if self.open.newcomers.len() >= places {
            let Some(worst) = self
                .open
                .newcomers
                .iter()
                .max_by_key(|id| rank(id))
                .cloned()
            else {
                return false;
            };
            if rank(node_id) >= rank(&worst) {
                return false;
            }
            self.open.newcomers.remove(&worst);
            self.open.pending.remove(&worst);
            self.open.contributions.remove(&worst);
            self.open.delta_hashes.remove(&worst);
        }
        self.open.newcomers.insert(node_id.to_string());
        true
    }

    /// Weight expected in this round: this node and the live trainer peers, whatever round their
    /// heartbeat says (one behind is about to join this round, one ahead will heal back to it).
    fn expected_weight(&self, peers: &BTreeMap<String, PeerOuterState>) -> f64 {
        self.own_weight() + peers.values().map(|p| p.weight).sum::<f64>()
    }

    /// A peer's announcement: fetch its delta if it belongs to this round and θ₀.
    fn consider(&mut self, peer: PeerId, a: RoundAnnouncement, ctx: &mut Context<Self>) {
        if a.node_id == self.node_id {
            return;
        }
        if a.round > self.round || (a.round == self.round && self.open.closing) {
            if a.round <= self.round + 1 && self.early.len() < MAX_EARLY_ANNOUNCEMENTS {
                self.early.push((peer, a));
            }
            return;
        }
        if a.round < self.round {
            debug!(node = %a.node_id, round = a.round, current = self.round, "late delta dropped");
            return;
        }
        if a.theta0_hash != self.theta0_hash {
            debug!(node = %a.node_id, round = a.round, "delta from another θ₀ left out");
            return;
        }
        let longest = Codec::from_name(&a.codec).map(|c| max_encoded_len(c, self.theta0.len()));
        if longest.is_none_or(|longest| a.delta_bytes > longest) {
            debug!(node = %a.node_id, round = a.round, codec = %a.codec, bytes = a.delta_bytes, "delta left out: an unknown codec, or longer than its codec makes for this model");
            return;
        }
        if self.open.contributions.contains_key(&a.node_id)
            || self.open.pending.contains(&a.node_id)
        {
            return;
        }
        let peers = self.trainer_peers();
        let weight = self.weight_of(&a.node_id, &peers);
        if weight <= EPSILON {
            debug!(node = %a.node_id, round = a.round, "delta of an identity without weight left out");
            return;
        }
        if is_newcomer_share(weight) && !self.newcomer_place(&a.node_id, &peers) {
            debug!(node = %a.node_id, round = a.round, "newcomer's delta left out: the round's newcomer places are taken");
            return;
        }
        self.open.pending.insert(a.node_id.clone());
        let Some(id) = BlobId::from_hex(&a.delta_hash) else {
            self.open.pending.remove(&a.node_id);
            return;
        };
        let (round, len, max_norm) = (self.round, self.theta0.len(), self.settings.max_delta_norm);
        let fetch = self.network.send(FetchBlob {
            peer,
            id,
            max_bytes: a.delta_bytes,
        });
        ctx.spawn(fetch.into_actor(self).map(move |result, act, ctx| {
            if act.round != round || !act.open.pending.remove(&a.node_id) {
                return; // the round closed without it
            }
            let decoded = match result {
                Ok(Ok(bytes)) => {
                    act.open.bytes_received += bytes.len() as u64;
                    decode(&bytes, len, max_norm).map_err(|e| e.to_string())
                }
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e.to_string()),
            };
            match decoded {
                Ok(delta) => {
                    act.open
                        .delta_hashes
                        .insert(a.node_id.clone(), a.delta_hash.clone());
                    act.open.contributions.insert(
                        a.node_id.clone(),
                        Contribution {
                            node_id: a.node_id.clone(),
                            delta,
                        },
                    );
                }
                Err(e) => warn!(node = %a.node_id, round, error = %e, "peer delta refused"),
            }
            act.evaluate(ctx);
        }));
    }

    /// Closes the round when `round_decision` says so.
    fn evaluate(&mut self, ctx: &mut Context<Self>) {
        if self.open.closing || self.healing {
            return;
        }
        let peers = self.trainer_peers();
        // A fold from +0.0: an empty f64 sum is −0.0, which the reasons would print.
        let weight_of = |ids: &mut dyn Iterator<Item = &String>| -> f64 {
            ids.fold(0.0, |sum, id| sum + self.weight_of(id, &peers))
        };
        let now = Instant::now();
        let mut progress = RoundProgress {
            own_ready_at: self.open.own_ready_at,
            contributions: weight_of(&mut self.open.contributions.keys()),
            pending: weight_of(&mut self.open.pending.iter()),
            expected: self.expected_weight(&peers),
            quorum_since: self.open.quorum_since,
        };
        if self.open.own_ready_at.is_some() && has_quorum(&progress, &self.settings.closing) {
            progress.quorum_since = Some(*self.open.quorum_since.get_or_insert(now));
        }
        match round_decision(now, &progress, &self.settings.closing) {
            RoundDecision::Wait(_) => {}
            RoundDecision::Close(reason) => self.close(reason, ctx),
        }
    }

    fn close(&mut self, why: String, ctx: &mut Context<Self>) {
        self.open.closing = true;
        let round = self.round;
        let contributions: Vec<Contribution> = std::mem::take(&mut self.open.contributions)
            .into_values()
            .collect();
        let participants = contributions.len();
        let delta_hashes = std::mem::take(&mut self.open.delta_hashes);
        let request = AggregateRound {
            round,
            config: self.settings.aggregation.clone(),
            contributions,
        };
        ctx.spawn(self.aggregator.send(request).into_actor(self).map(move |result, act, ctx| {
            let checked = match result {
                Ok(Ok(aggregate)) => check_aggregate(&aggregate.delta, act.settings.max_delta_norm)
                    .map(|()| aggregate)
                    .map_err(|e| format!("aggregate refused: {e}")),
                Ok(Err(e)) => Err(format!("aggregation refused the round: {e}")),
                Err(e) => Err(format!("aggregator unavailable: {e}")),
            };
            let summary = match checked {
                Ok(aggregate) => {
                    let summary = act.summary(round, participants, &aggregate, &why);
                    act.reputation.record_kept(
                        aggregate.verdicts.iter().filter(|v| v.kept).map(|v| v.node_id.as_str()),
                    );
                    let mut theta0 = act.theta0.to_vec();
                    act.settings.optimizer.step(&mut theta0, &mut act.momentum, &aggregate.delta);
                    act.theta0 = Arc::new(theta0);
                    act.report_verdicts(round, &aggregate, &delta_hashes);
                    summary
                }
                Err(e) => {
                    error!(round, error = %e, "θ₀ unchanged");
                    act.summary_of_failure(round, participants, &why, &e)
                }
            };
            info!(round, kept = summary.kept.len(), rejected = ?summary.rejected, "{}", summary.reason);
            act.status.update(|s| {
                s.last_outer_reason = Some(summary.reason.clone());
                s.last_round = Some(summary);
            });
            act.round += 1;
            act.publish_outer_state();
            act.open = OpenRound::default();
            if let Some(trainer) = &act.trainer {
                trainer.do_send(StartRound { round: act.round, theta0: act.theta0.clone() });
            }
            for (peer, a) in std::mem::take(&mut act.early) {
                act.consider(peer, a, ctx);
            }
        }));
    }

    fn summary(
        &self,
        round: u64,
        participants: usize,
        aggregate: &Aggregate,
        why: &str,
    ) -> RoundSummary {
        let (kept, rejected): (Vec<_>, Vec<_>) = aggregate.verdicts.iter().partition(|v| v.kept);
        RoundSummary {
            round,
            participants,
            kept: kept.iter().map(|v| v.node_id.clone()).collect(),
            rejected: rejected.iter().map(|v| v.node_id.clone()).collect(),
            rule: aggregate.rule_used.name().to_string(),
            reason: format!(
                "round {round} closed ({why}); {} of {participants} kept by {}: {}; outer Nesterov step applied",
                kept.len(),
                aggregate.rule_used.name(),
                aggregate.reason
            ),
            bytes_sent: self.open.bytes_sent,
            bytes_received: self.open.bytes_received,
            sync_seconds: self.sync_seconds(),
        }
    }

    /// Tells the ledger which deltas the rule kept: only those earn their training proofs.
    fn report_verdicts(
        &self,
        round: u64,
        aggregate: &Aggregate,
        delta_hashes: &BTreeMap<String, String>,
    ) {
        let rule = aggregate.rule_used.name();
        let verdicts = aggregate
            .verdicts
            .iter()
            .filter_map(|v| {
                Some(DeltaVerdict {
                    node_id: v.node_id.clone(),
                    delta_hash: delta_hashes.get(&v.node_id)?.clone(),
                    kept: v.kept,
                    reason: format!(
                        "{} by {rule} in round {round} (score {:.4})",
                        if v.kept { "kept" } else { "rejected" },
                        v.score
                    ),
                })
            })
            .collect();
        let theta0_after = BlobId::of(bytemuck::cast_slice(&self.theta0)).to_string();
        self.report_weights();
        self.ledger.do_send(RoundVerdicts {
            round,
            theta0_after,
            verdicts,
        });
    }

    /// Tells the ledger what every node counts for now (whose verdicts settle proofs).
    fn report_weights(&self) {
        let mut weights: BTreeMap<String, f64> = self
            .trainer_peers()
            .into_iter()
            .map(|(node_id, p)| (node_id, p.weight))
            .collect();
        weights.insert(self.node_id.clone(), self.own_weight());
        self.ledger.do_send(PeerWeights(weights));
    }

    fn sync_seconds(&self) -> f64 {
        self.open
            .own_ready_at
            .map_or(0.0, |ready| ready.elapsed().as_secs_f64())
    }

    fn summary_of_failure(
        &self,
        round: u64,
        participants: usize,
        why: &str,
        error: &str,
    ) -> RoundSummary {
        RoundSummary {
            round,
            participants,
            kept: Vec::new(),
            rejected: Vec::new(),
            rule: self.settings.aggregation.rule.name().to_string(),
            reason: format!("round {round} closed ({why}) but not applied: {error}"),
            bytes_sent: self.open.bytes_sent,
            bytes_received: self.open.bytes_received,
            sync_seconds: self.sync_seconds(),
        }
    }
}

impl Actor for SyncActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.publish_outer_state();
        self.network.do_send(RegisterRounds {
            announced: ctx.address().recipient(),
            served: ctx.address().recipient(),
        });
        ctx.run_interval(ROUND_CHECK, |act, ctx| {
            act.check_heal(ctx);
            act.evaluate(ctx);
        });
        ctx.run_interval(REANNOUNCE, |act, _| {
            act.report_weights();
            for announcement in &act.announced {
                let again = RoundAnnouncement {
                    sent_at_ms: unix_ms(),
                    ..announcement.clone()
                };
                act.network.do_send(AnnounceRound(again));
            }
        });
    }
}

impl Handler<RegisterTrainer> for SyncActor {
    type Result = ();
    fn handle(&mut self, msg: RegisterTrainer, _: &mut Self::Context) {
        self.trainer = Some(msg.0);
    }
}

impl Handler<InnerRoundDone> for SyncActor {
    type Result = ();

    /// This node's H inner steps are done: encode, serve and announce its delta.
    fn handle(&mut self, msg: InnerRoundDone, ctx: &mut Self::Context) {
        if msg.round != self.round || self.open.own_ready_at.is_some() {
            warn!(
                reported = msg.round,
                current = self.round,
                "ignoring θ_H of another round"
            );
            return;
        }
        let delta = pseudo_gradient(&self.theta0, &msg.theta_h);
        // Our own contribution is what peers will decode, so every node combines the same inputs.
        let (bytes, own) = match self.settings.attack {
            None => {
                let bytes = self.feedback.encode(&self.settings.compression, &delta);
                match decode(&bytes, delta.len(), f32::INFINITY) {
                    Ok(own) => (bytes, own),
                    Err(e) => {
                        return error!(error = %e, "cannot decode our own delta; round skipped");
                    }
                }
            }
            // The Byzantine fault switch: peers get the poisoned delta; this node keeps what
            // decodes of it, or its honest delta when nothing does (NaN).
            Some(attack) => {
                let bytes = encode(
                    &self.settings.compression,
                    &poison(attack, &delta, self.round),
                );
                let own = decode(&bytes, delta.len(), f32::INFINITY).unwrap_or(delta);
                (bytes, own)
            }
        };
        let id = BlobId::of(&bytes);
        let size = bytes.len() as u64;
        self.network.do_send(OfferBlob {
            id,
            bytes: Arc::new(bytes),
        });
        let announcement = RoundAnnouncement {
            node_id: self.node_id.clone(),
            round: self.round,
            theta0_hash: self.theta0_hash.clone(),
            delta_hash: id.to_string(),
            delta_bytes: size,
            codec: self.settings.compression.codec.name().to_string(),
            tokens: msg.tokens,
            sent_at_ms: unix_ms(),
        };
        self.network.do_send(AnnounceRound(announcement.clone()));
        self.announced.push_back(announcement);
        if self.announced.len() > 2 {
            self.announced.pop_front();
        }
        self.open.own_delta = Some(id);
        self.open
            .delta_hashes
            .insert(self.node_id.clone(), id.to_string());
        self.ledger.do_send(ProveTraining {
            round: self.round,
            theta0_hash: self.theta0_hash.clone(),
            theta_h_hash: BlobId::of(bytemuck::cast_slice(&msg.theta_h)).to_string(),
            delta_hash: id.to_string(),
            tokens: msg.tokens,
            work: msg.work,
        });
        self.open.own_ready_at = Some(Instant::now());
        self.open.contributions.insert(
            self.node_id.clone(),
            Contribution {
                node_id: self.node_id.clone(),
                delta: own,
            },
        );
        self.evaluate(ctx);
    }
}

impl Handler<BlobServed> for SyncActor {
    type Result = ();

    /// Counts the uploads of this round's own delta (a peer's retry counts again: it was sent).
    fn handle(&mut self, msg: BlobServed, _: &mut Self::Context) {
        if self.open.own_delta == Some(msg.id) {
            self.open.bytes_sent += msg.bytes;
        }
    }
}

impl Handler<PeerRoundAnnounced> for SyncActor {
    type Result = ();

    fn handle(&mut self, msg: PeerRoundAnnounced, ctx: &mut Self::Context) {
        self.consider(msg.peer, msg.announcement, ctx);
    }
}

impl Handler<SnapshotTaken> for SyncActor {
    type Result = ();

    fn handle(&mut self, msg: SnapshotTaken, _: &mut Self::Context) {
        let checkpoint = self.checkpoint_of(&msg.0);
        let step = checkpoint.trainer.counters.global_step;
        self.last_snapshot = Some(msg.0);
        let (target, status) = (self.checkpoints.clone(), self.status.clone());
        // Writing tens of MB is blocking I/O: keep it off the async loop.
        actix::spawn(async move {
            let writer = status.clone();
            match tokio::task::spawn_blocking(move || target.write(&checkpoint, &writer)).await {
                Ok(Ok(path)) => {
                    status.update(|s| {
                        s.checkpoints_written += 1;
                        s.last_checkpoint_step = Some(step);
                    });
                    tracing::debug!(step, path = %path.display(), "checkpoint written");
                }
                Ok(Err(e)) => error!(step, error = %e, "checkpoint failed; training goes on"),
                Err(e) => error!(step, error = %e, "checkpoint writer crashed"),
            }
        });
    }
}

impl Handler<GetResumeState> for SyncActor {
    type Result = MessageResult<GetResumeState>;

    fn handle(&mut self, _: GetResumeState, _: &mut Self::Context) -> Self::Result {
        let snapshot = self
            .last_snapshot
            .as_ref()
            .map(|s| s.aligned_to(self.round, &self.theta0));
        MessageResult(ResumeState {
            snapshot,
            round: self.round,
            theta0: self.theta0.clone(),
        })
    }
}

impl Handler<WriteCheckpoint> for SyncActor {
    type Result = ResponseFuture<Result<PathBuf, String>>;

    fn handle(&mut self, msg: WriteCheckpoint, _: &mut Self::Context) -> Self::Result {
        let Some(snapshot) = msg.0.or_else(|| self.last_snapshot.clone()) else {
            return Box::pin(async { Err("no trainer state to checkpoint".to_string()) });
        };
        let checkpoint = self.checkpoint_of(&snapshot);
        let (target, status) = (self.checkpoints.clone(), self.status.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || target.write(&checkpoint, &status))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        })
    }
}
