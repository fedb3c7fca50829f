//! SyncActor: owns DiLoCo's outer state — θ₀, the outer Nesterov momentum, the error-feedback
//! residual — and the checkpoints, and carries out what the round state machine
//! ([`RoundMachine`], pure) decides: when the trainer finishes its H inner steps it encodes
//! Δ = θ₀ − θ_H, serves it as a blob and announces it; it fetches the peers' deltas the machine
//! asks for; when the machine closes the round the AggregatorActor combines the deltas, the
//! outer step is applied, and the trainer restarts from the new θ₀; when the machine heals, it
//! fetches and checks a heavier group's state.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use libp2p::PeerId;
use tracing::{debug, error, info, warn};

use super::aggregator::AggregatorActor;
use super::ledger::LedgerActor;
use super::messages::{
    AggregateRound, AggregateSlices, AnnounceRound, BlobServed, CheckpointError, DeltaVerdict,
    FetchBlob, FetchError, GetResumeState, InnerRoundDone, ModelAdopted, OfferBlob,
    PeerRoundAnnounced, PeerWeights, ProveTraining, RegisterRounds, RegisterTrainer, ResumeState,
    RoundVerdicts, RoundWork, SettleRound, SnapshotTaken, StartRound, TrainerPeers, WithdrawBlobs,
    WriteCheckpoint,
};
use super::peer::PeerActor;
use super::run_every;
use crate::aggregate::shard::{ShardOptions, ShardPlan, SliceEvidence, as_served};
use crate::aggregate::{Aggregate, AggregationConfig, Contribution, check_aggregate, norm};
use crate::diloco::attack::{self, Attack, attacker_sends, poison_informed};
use crate::diloco::codec::{Codec, CodecConfig, ErrorFeedback, encode};
use crate::diloco::heal::{HealPlan, PeerOuterState, check_adopted, reach};
use crate::diloco::machine::{Effect, MachineRules, RoundMachine};
use crate::diloco::round::RoundOptions;
use crate::diloco::weight::WeightRule;
use crate::diloco::{OuterOptimizer, pseudo_gradient};
use crate::model::checkpoint::{self, Checkpoint, OuterState, TrainerSnapshot};
use crate::model::params::ParamSpec;
use crate::net::blob::BlobId;
use crate::net::peer_table::{REANNOUNCE_EVERY, REANNOUNCED};
use crate::net::wire::{RoundAnnouncement, unix_ms};
use crate::status::{Component, LocalFault, StatusBoard};

/// How often the round state machine sees the clock (a round's deadline, a heal's grace).
const ROUND_CHECK: Duration = Duration::from_millis(200);
/// Outer states (θ₀ and momentum) served at once: this round's and the one before.
const SERVED_OUTER_STATES: usize = 2;

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

    /// `write` on a blocking thread: writing tens of MB must stay off the async loop.
    async fn write_blocking(
        self,
        checkpoint: Checkpoint,
        status: StatusBoard,
    ) -> Result<PathBuf, LocalFault> {
        tokio::task::spawn_blocking(move || self.write(&checkpoint, &status))
            .await
            .map_err(|e| LocalFault::new(Component::Checkpoint, format!("writer crashed: {e}")))?
    }
}

/// A `FetchParts` in flight.
struct PartsFetch {
    peer: PeerId,
    node_id: String,
    round: u64,
    delta: BlobId,
    max_bytes: u64,
    check: bool,
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
    /// When rounds run sharded (`[diloco.sharding]`).
    pub sharding: ShardOptions,
    /// Test fault switch NEUROSHARD_FAULT_LYING_AGGREGATOR: serve aggregated slices scaled by −10.
    pub lying_aggregator: Option<LyingAggregator>,
    /// No round closes this long after the node starts (`MachineRules::listen_first`).
    pub listen_first: Duration,
}

/// Which of its slices a lying aggregator (test fault switch) serves wrong.
#[derive(Debug, Clone, PartialEq)]
pub enum LyingAggregator {
    /// Every one: its partners' reports differ, which catches it.
    Always,
    /// Every one from this round on: an aggregator that serves honest reports while the
    /// network forms and then lies (and is caught by every honest node at once, because by then
    /// they all make the same plan).
    From(u64),
    /// Only those it aggregates with this node alone: the two agree on the lie, and only the
    /// contributors' accusations can catch them.
    With(String),
}

pub struct SyncActor {
    node_id: String,
    /// θ₀ and momentum blob ids of the outer states still served, oldest first.
    served_outer: VecDeque<[BlobId; 2]>,
    theta0: Arc<Vec<f32>>,
    momentum: Vec<f32>,
    /// With worker momentum: this node's momentum after the open round's Δ, adopted when the
    /// round's aggregate is applied (a failed or healed-away round leaves `momentum` as it was).
    pending_momentum: Option<Vec<f32>>,
    settings: RoundSettings,
    feedback: ErrorFeedback,
    /// The open round, healing and who counts: every decision about rounds.
    machine: RoundMachine,
    /// This node's announcements of its last two rounds, repeated: a peer still in the previous
    /// round (it started later, or missed the first announcement) must still get that delta.
    announced: VecDeque<RoundAnnouncement>,
    aggregator: Addr<AggregatorActor>,
    trainer: Option<Recipient<StartRound>>,
    last_snapshot: Option<Arc<TrainerSnapshot>>,
    checkpoints: CheckpointTarget,
    status: StatusBoard,
    /// Serves θ₀ and deltas to peers, announces rounds, fetches peers' deltas.
    network: Addr<PeerActor>,
    ledger: Addr<LedgerActor>,
    /// The ALIE/IPM fault switch's own delta while it waits for the peers' deltas.
    withheld: Option<Withheld>,
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
        let rules = MachineRules {
            closing: settings.closing,
            weight_rule: settings.weight_rule,
            own_admitted: settings.own_admitted,
            byzantine_fraction: settings.aggregation.byzantine_fraction,
            params: outer.theta0.len(),
            max_delta_norm: settings.max_delta_norm,
            sharding: settings.sharding,
            pre: settings.aggregation.pre,
            // Every node cuts at the same boundaries whatever codec it sends with.
            slice_align: settings.compression.int8_block,
            listen_first: settings.listen_first,
        };
        let theta0_hash = BlobId::of(bytemuck::cast_slice(&outer.theta0)).to_string();
        let mut machine = RoundMachine::new(node_id.clone(), rules, outer.round, theta0_hash);
        machine.start_listening(Instant::now());
        Self {
            node_id,
            served_outer: VecDeque::new(),
            theta0: Arc::new(outer.theta0),
            momentum: outer.momentum,
            pending_momentum: None,
            settings,
            feedback,
            machine,
            announced: VecDeque::new(),
            aggregator,
            trainer: None,
            last_snapshot,
            checkpoints,
            status,
            network,
            ledger,
            withheld: None,
        }
    }

    fn checkpoint_of(&self, snapshot: &Arc<TrainerSnapshot>) -> Checkpoint {
        let round = self.machine.round();
        Checkpoint {
            trainer: snapshot.clone(),
            outer: OuterState {
                round,
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
        (!lossless && !self.machine.own_delta_out()).then(|| self.feedback.residual().to_vec())
    }

    /// Serves θ₀ and the outer momentum (little-endian f32 bytes) to peers under their BLAKE3
    /// hashes, and publishes `round` and both hashes together (heartbeats and the API never see
    /// one without the others). Returns θ₀'s hash.
    ///
    /// Only the two latest outer states stay served (a peer one round behind heals to the latest;
    /// older ones are withdrawn): each is two parameter-sized blobs, 680 MB for the bootstrap
    /// preset.
    fn publish_outer_state(&mut self, round: u64) -> String {
        let serve = |values: &[f32]| {
            let bytes = Arc::new(bytemuck::cast_slice::<f32, u8>(values).to_vec());
            let id = BlobId::of(&bytes);
            self.network.do_send(OfferBlob { id, bytes });
            id
        };
        let (theta0, momentum) = (serve(&self.theta0), serve(&self.momentum));
        self.served_outer.push_back([theta0, momentum]);
        while self.served_outer.len() > SERVED_OUTER_STATES {
            let old = self.served_outer.pop_front().expect("more than kept");
            // An id still among the kept ones (θ₀ unchanged by a refused aggregate) stays.
            let ids = old
                .into_iter()
                .filter(|id| !self.served_outer.iter().flatten().any(|kept| kept == id))
                .collect();
            self.network.do_send(WithdrawBlobs { ids });
        }
        let (theta0_hash, momentum_hash) = (theta0.to_string(), momentum.to_string());
        self.ledger.do_send(ModelAdopted {
            round,
            theta0_hash: theta0_hash.clone(),
        });
        let published = theta0_hash.clone();
        self.status.update(|s| {
            s.theta0_hash = published;
            s.momentum_hash = momentum_hash;
            s.outer_step_count = round;
        });
        theta0_hash
    }

    /// Restarts the trainer's inner steps from θ₀ at the machine's round.
    fn start_trainer(&self) {
        if let Some(trainer) = &self.trainer {
            trainer.do_send(StartRound {
                round: self.machine.round(),
                theta0: self.theta0.clone(),
            });
        }
    }

    /// Carries out what the round state machine decided.
    fn perform(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        for effect in effects {
            match effect {
                Effect::FetchDelta {
                    peer,
                    node_id,
                    round,
                    delta,
                    max_bytes,
                } => self.fetch_delta(peer, node_id, round, delta, max_bytes, ctx),
                Effect::Aggregate {
                    round,
                    contributions,
                } => self.aggregate(
                    AggregateRound {
                        round,
                        config: self.settings.aggregation.clone(),
                        contributions,
                    },
                    ctx,
                ),
                Effect::FetchState { plan, source } => self.heal(plan, source, ctx),
                Effect::FetchParts {
                    peer,
                    node_id,
                    round,
                    delta,
                    max_bytes,
                    slices,
                    check,
                } => {
                    let fetch = PartsFetch {
                        peer,
                        node_id,
                        round,
                        delta,
                        max_bytes,
                        check,
                    };
                    self.fetch_parts(fetch, slices, ctx)
                }
                Effect::AggregateSlices { round, inputs } => {
                    self.aggregate_slices(round, inputs, ctx)
                }
                Effect::FetchReport {
                    peer,
                    round,
                    slice,
                    result,
                    max_bytes,
                    ..
                } => self.fetch_report(peer, round, slice, result, max_bytes, ctx),
                Effect::Settle {
                    round,
                    plan,
                    evidence,
                } => self.settle(round, plan, evidence, ctx),
                Effect::Skipped(why) => debug!("{why}"),
                Effect::Refused(why) => warn!("peer delta refused: {why}"),
            }
        }
        if let Some(note) = self.machine.take_shard_note() {
            info!("{note}");
        }
        let state = self.machine.state();
        if self.status.read().round_state != state {
            let state = state.to_string();
            self.status.update(|s| s.round_state = state);
        }
    }

    /// Fetches blob `id` (or values `range` of it) from `peer`; any failure as text.
    fn fetch_blob(
        &self,
        peer: PeerId,
        id: BlobId,
        max_bytes: u64,
        range: Option<(u64, u64)>,
    ) -> impl std::future::Future<Output = Result<Arc<Vec<u8>>, String>> + 'static {
        let sent = self.network.send(FetchBlob {
            peer,
            id,
            max_bytes,
            range,
        });
        async move {
            match sent.await {
                Ok(fetched) => fetched.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    }

    fn fetch_delta(
        &mut self,
        peer: PeerId,
        node_id: String,
        round: u64,
        delta: BlobId,
        max_bytes: u64,
        ctx: &mut Context<Self>,
    ) {
        let fetch = self.fetch_blob(peer, delta, max_bytes, None);
        ctx.spawn(fetch.into_actor(self).map(move |fetched, act, ctx| {
            let delta_hash = delta.to_string();
            let now = Instant::now();
            let effects = act
                .machine
                .delta_fetched(now, round, &node_id, &delta_hash, fetched);
            act.perform(effects, ctx);
        }));
    }

    fn aggregate(&mut self, request: AggregateRound, ctx: &mut Context<Self>) {
        let round = request.round;
        ctx.spawn(
            self.aggregator
                .send(request)
                .into_actor(self)
                .map(move |result, act, ctx| {
                    let aggregated = match result {
                        Ok(Ok(aggregate)) => Ok(aggregate),
                        Ok(Err(e)) => Err(format!("aggregation refused the round: {e}")),
                        Err(e) => Err(format!("aggregator unavailable: {e}")),
                    };
                    act.finish_round(round, aggregated, &[], ctx);
                }),
        );
    }

    /// Fetches `fetch.node_id`'s parts of `slices` (ranges of its encoded Δ), all or none.
    fn fetch_parts(
        &mut self,
        fetch: PartsFetch,
        slices: crate::diloco::sharded::SliceRanges,
        ctx: &mut Context<Self>,
    ) {
        let requests = slices.iter().map(|(_, range)| {
            let range = Some((range.start as u64, range.end as u64));
            self.fetch_blob(fetch.peer, fetch.delta, fetch.max_bytes, range)
        });
        let all = futures::future::join_all(requests);
        let ids: Vec<usize> = slices.iter().map(|(slice, _)| *slice).collect();
        ctx.spawn(all.into_actor(self).map(move |results, act, ctx| {
            let parts: Result<Vec<Arc<Vec<u8>>>, String> = results.into_iter().collect();
            let effects = act.machine.parts_fetched(
                Instant::now(),
                fetch.round,
                &fetch.node_id,
                &ids,
                fetch.check,
                parts,
            );
            act.perform(effects, ctx);
        }));
    }

    /// Aggregates this node's slices, serves the reports and claims them in its announcement.
    fn aggregate_slices(
        &mut self,
        round: u64,
        inputs: Vec<(usize, Vec<crate::aggregate::Contribution>)>,
        ctx: &mut Context<Self>,
    ) {
        let request = AggregateSlices {
            round,
            config: self.settings.aggregation.clone(),
            aggregator: self.node_id.clone(),
            inputs,
        };
        ctx.spawn(
            self.aggregator
                .send(request)
                .into_actor(self)
                .map(move |reports, act, ctx| {
                    let mut served = Vec::new();
                    for mut report in reports.unwrap_or_default() {
                        let lie = match &act.settings.lying_aggregator {
                            None => false,
                            Some(LyingAggregator::Always) => true,
                            Some(LyingAggregator::From(first)) => round >= *first,
                            Some(LyingAggregator::With(partner)) => {
                                let group = act.machine.slice_group(report.slice);
                                group.iter().all(|a| *a == act.node_id || a == partner)
                            }
                        };
                        if lie {
                            report.delta.iter_mut().for_each(|x| *x *= -10.0);
                        }
                        let (bytes, seen) = as_served(&act.settings.compression, report);
                        let (id, size) = (BlobId::of(&bytes), bytes.len() as u64);
                        act.network.do_send(OfferBlob {
                            id,
                            bytes: Arc::new(bytes),
                        });
                        served.push((seen, id, size));
                    }
                    let effects = act.machine.reports_served(Instant::now(), round, served);
                    act.announce_claims(round);
                    act.perform(effects, ctx);
                }),
        );
    }

    /// Adds this node's claims to its announcement of `round` and publishes it again.
    fn announce_claims(&mut self, round: u64) {
        let claims = self.machine.own_claims();
        if let Some(announcement) = self.announced.iter_mut().find(|a| a.round == round) {
            announcement.claims = claims;
            announcement.sent_at_ms = unix_ms();
            self.network.do_send(AnnounceRound(announcement.clone()));
        }
    }

    fn fetch_report(
        &mut self,
        peer: PeerId,
        round: u64,
        slice: usize,
        result: BlobId,
        max_bytes: u64,
        ctx: &mut Context<Self>,
    ) {
        let fetch = self.fetch_blob(peer, result, max_bytes, None);
        ctx.spawn(fetch.into_actor(self).map(move |fetched, act, ctx| {
            let effects = act
                .machine
                .report_fetched(Instant::now(), round, slice, result, fetched);
            act.perform(effects, ctx);
        }));
    }

    /// Settles the sharded round on the aggregator's thread; wrong aggregators are excluded.
    fn settle(
        &mut self,
        round: u64,
        plan: ShardPlan,
        evidence: std::collections::BTreeMap<usize, SliceEvidence>,
        ctx: &mut Context<Self>,
    ) {
        let request = SettleRound {
            round,
            config: self.settings.aggregation.clone(),
            codec: self.settings.compression.clone(),
            plan,
            max_norm: self.settings.max_delta_norm,
            evidence,
        };
        ctx.spawn(self.aggregator.send(request).into_actor(self).map(move |settled, act, ctx| {
            match settled {
                Ok(settled) => {
                    if !settled.wrong.is_empty() {
                        warn!(round, wrong = ?settled.wrong, "aggregators served wrong slice reports: excluded for {} rounds", crate::diloco::machine::EXCLUDED_ROUNDS);
                        act.machine.exclude(&settled.wrong);
                    }
                    act.finish_round(round, Ok(settled.aggregate), &settled.wrong, ctx);
                }
                Err(e) => act.finish_round(round, Err(format!("aggregator unavailable: {e}")), &[], ctx),
            }
        }));
    }

    /// The round's aggregate is in (or why not): check it, apply the outer step, report the
    /// verdicts (`wrong`: aggregators whose slice reports were wrong), start the next round.
    fn finish_round(
        &mut self,
        round: u64,
        aggregated: Result<Aggregate, String>,
        wrong: &[String],
        ctx: &mut Context<Self>,
    ) {
        let checked = aggregated.and_then(|aggregate| {
            check_aggregate(&aggregate.delta, self.settings.max_delta_norm)
                .map(|norm| (aggregate, norm))
                .map_err(|e| format!("aggregate refused: {e}"))
        });
        let (summary, delta_hashes) = self.machine.closed(
            Instant::now(),
            checked
                .as_ref()
                .map(|(aggregate, norm)| (aggregate, *norm))
                .map_err(Clone::clone),
        );
        let pending_momentum = self.pending_momentum.take();
        match &checked {
            Ok((aggregate, _)) => {
                let mut theta0 = self.theta0.to_vec();
                self.settings.optimizer.step(
                    round,
                    &mut theta0,
                    &mut self.momentum,
                    &aggregate.delta,
                );
                self.theta0 = Arc::new(theta0);
                if let Some(momentum) = pending_momentum {
                    self.momentum = momentum;
                }
                self.report_verdicts(round, aggregate, &delta_hashes, wrong);
                // How far each contribution lay from the aggregate: what a rejection rests on.
                let scores: Vec<String> = aggregate
                    .verdicts
                    .iter()
                    .map(|v| {
                        format!(
                            "{}={:.4}",
                            v.node_id.get(..8).unwrap_or(&v.node_id),
                            v.score
                        )
                    })
                    .collect();
                info!(round, scores = %scores.join(" "), "contributions' distances to the aggregate");
            }
            Err(e) => error!(round, error = %e, "θ₀ unchanged"),
        }
        info!(
            round,
            kept = summary.kept.len(),
            rejected = ?summary.rejected,
            delta_norm = ?summary.delta_norm,
            aggregate_norm = ?summary.aggregate_norm,
            // The warm-up's μ of this round: what an operator checks the first rounds against.
            outer_momentum = self.settings.optimizer.momentum_at(round),
            "{}",
            summary.reason
        );
        self.status.update(|s| {
            s.last_outer_reason = Some(summary.reason.clone());
            s.last_round = Some(summary);
        });
        let theta0_hash = self.publish_outer_state(round + 1);
        let effects = self.machine.advance(theta0_hash);
        self.start_trainer();
        self.perform(effects, ctx);
    }

    /// Fetches θ₀ (checked against the heavier group's hash) and the momentum from `source`,
    /// checks them (`check_adopted`), adopts them with that group's round and restarts the
    /// trainer there.
    fn heal(&mut self, plan: HealPlan, source: PeerOuterState, ctx: &mut Context<Self>) {
        let (Ok(peer), Some(theta0_id), Some(momentum_id)) = (
            source.peer_id.parse::<PeerId>(),
            BlobId::from_hex(&plan.theta0_hash),
            BlobId::from_hex(&source.momentum_hash),
        ) else {
            return self.machine.heal_failed(Instant::now());
        };
        info!(round = plan.round, from = %source.peer_id, "healing: {}", plan.reason);
        let network = self.network.clone();
        // θ₀ and the momentum are 4 bytes a value.
        let max_bytes = 4 * self.theta0.len() as u64;
        let fetch = async move {
            let theta0 = network
                .send(FetchBlob {
                    peer,
                    id: theta0_id,
                    max_bytes,
                    range: None,
                })
                .await;
            let momentum = network
                .send(FetchBlob {
                    peer,
                    id: momentum_id,
                    max_bytes,
                    range: None,
                })
                .await;
            (theta0, momentum)
        };
        ctx.spawn(fetch.into_actor(self).map(move |(theta0, momentum), act, ctx| {
            let as_values = |fetched: Result<Result<Arc<Vec<u8>>, FetchError>, MailboxError>| {
                let bytes = fetched.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
                if bytes.len() % 4 != 0 {
                    return Err(format!("{} bytes is not a whole number of f32", bytes.len()));
                }
                Ok(bytemuck::pod_collect_to_vec::<u8, f32>(&bytes))
            };
            let (theta0, momentum) = match (as_values(theta0), as_values(momentum)) {
                (Ok(t), Ok(m)) => (t, m),
                (Err(e), _) | (_, Err(e)) => {
                    act.machine.heal_failed(Instant::now());
                    return warn!(from = %source.peer_id, error = %e, "healing failed; will retry");
                }
            };
            let rounds = plan.round.abs_diff(act.machine.round());
            let o = &act.settings.optimizer;
            let bound = reach(rounds, o.lr, o.step_momentum(), act.settings.max_delta_norm);
            if let Err(why) = check_adopted(&act.theta0, &theta0, &momentum, bound, rounds) {
                warn!(from = %source.peer_id, theta0 = %plan.theta0_hash, error = %why, "healing refused the fetched state; its holders cannot pull this node");
                return act.machine.heal_refused(plan.theta0_hash);
            }
            act.theta0 = Arc::new(theta0);
            act.momentum = momentum;
            act.pending_momentum = None;
            act.feedback = ErrorFeedback::new(act.theta0.len());
            act.announced.clear();
            let theta0_hash = act.publish_outer_state(plan.round);
            act.machine.healed(plan.round, theta0_hash);
            let reason = plan.reason;
            act.status.update(|s| {
                s.heals += 1;
                s.last_heal = Some(reason);
            });
            info!(round = plan.round, "healed: θ₀ and momentum adopted from {}", source.peer_id);
            act.start_trainer();
            act.perform(Vec::new(), ctx);
        }));
    }

    /// Tells the ledger which deltas the rule kept: only those earn their training proofs.
    fn report_verdicts(
        &self,
        round: u64,
        aggregate: &Aggregate,
        delta_hashes: &BTreeMap<String, String>,
        wrong: &[String],
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
                    reason: if wrong.contains(&v.node_id) {
                        format!("rejected in round {round}: it served a wrong slice report")
                    } else {
                        format!(
                            "{} by {rule} in round {round} (score {:.4})",
                            if v.kept { "kept" } else { "rejected" },
                            v.score
                        )
                    },
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
        self.ledger.do_send(PeerWeights(self.machine.weights()));
    }
}

impl Actor for SyncActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.publish_outer_state(self.machine.round());
        self.network.do_send(RegisterRounds {
            announced: ctx.address().recipient(),
            served: ctx.address().recipient(),
            trainers: ctx.address().recipient(),
        });
        run_every(ctx, ROUND_CHECK, |act, ctx| {
            let effects = act.machine.tick(Instant::now());
            act.perform(effects, ctx);
        });
        // Gossip is fire-and-forget: a peer that connected (or joined the mesh) after the first
        // announcement must still learn of the delta. The gossip budget counts these.
        run_every(ctx, REANNOUNCE_EVERY, |act, _| {
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

impl Handler<TrainerPeers> for SyncActor {
    type Result = ();

    fn handle(&mut self, msg: TrainerPeers, _: &mut Self::Context) {
        self.machine.trainers_heard(msg.0);
    }
}

impl Handler<InnerRoundDone> for SyncActor {
    type Result = ();

    /// This node's H inner steps are done: encode, serve and announce its delta (the ALIE and
    /// IPM fault switches first wait for the others').
    fn handle(&mut self, msg: InnerRoundDone, ctx: &mut Self::Context) {
        let round = self.machine.round();
        if msg.round != round || self.machine.own_delta_out() || self.withheld.is_some() {
            warn!(
                reported = msg.round,
                current = round,
                "ignoring θ_H of another round"
            );
            return;
        }
        // With worker momentum, this node's Nesterov direction in place of Δ.
        let (delta, next_momentum) = self.settings.optimizer.worker_direction(
            round,
            &self.momentum,
            pseudo_gradient(&self.theta0, &msg.theta_h),
        );
        self.pending_momentum = next_momentum;
        let own = OwnDelta {
            round,
            delta,
            theta_h_hash: BlobId::of(bytemuck::cast_slice(&msg.theta_h)).to_string(),
            tokens: msg.tokens,
            work: msg.work,
        };
        match self.settings.attack {
            Some(attack) if attack.reads_the_others() => {
                info!(
                    round,
                    "fault switch: holding this node's delta back until the others' are in"
                );
                self.withheld = Some(Withheld::new(own));
                self.send_when_informed(ctx);
            }
            _ => self.send_own_delta(own, None, ctx),
        }
    }
}

/// This node's pseudo-gradient of a round, before it is encoded and announced.
struct OwnDelta {
    round: u64,
    delta: Vec<f32>,
    theta_h_hash: String,
    tokens: u64,
    work: RoundWork,
}

/// An own delta the ALIE/IPM fault switch holds back while the peers' deltas come in.
struct Withheld {
    own: OwnDelta,
    since: Instant,
    seen: usize,
    last_seen_at: Instant,
}

impl Withheld {
    fn new(own: OwnDelta) -> Self {
        let now = Instant::now();
        Self {
            own,
            since: now,
            seen: 0,
            last_seen_at: now,
        }
    }
}

impl SyncActor {
    /// Checks every `ROUND_CHECK` whether the withheld delta goes out (`attacker_sends`).
    fn send_when_informed(&mut self, ctx: &mut Context<Self>) {
        ctx.run_later(ROUND_CHECK, |act, ctx| {
            let Some(withheld) = &mut act.withheld else {
                return;
            };
            if withheld.own.round != act.machine.round() {
                // The round moved on without it (a heal): its delta is of no use.
                act.withheld = None;
                return;
            }
            let seen = act.machine.peer_deltas().count();
            let now = Instant::now();
            if seen != withheld.seen {
                withheld.seen = seen;
                withheld.last_seen_at = now;
            }
            let sends = attacker_sends(
                withheld.seen,
                act.machine.weighty_peers(),
                now - withheld.last_seen_at,
                now - withheld.since,
            );
            if !sends {
                return act.send_when_informed(ctx);
            }
            let own = act.withheld.take().expect("checked above").own;
            let stats = attack::seen_statistics(&own.delta, act.machine.peer_deltas());
            // How far apart the honest deltas are, against their mean: what ALIE hides in.
            let (mean, spread) = stats
                .as_ref()
                .map_or((0.0, 0.0), |(m, s)| (norm(m), norm(s)));
            info!(
                round = own.round,
                attack = ?act.settings.attack,
                seen,
                mean_norm = mean,
                spread_norm = spread,
                "fault switch: sending the delta made from the others'"
            );
            act.send_own_delta(own, stats.as_ref(), ctx);
        });
    }

    /// Encodes, serves and announces this node's delta, proves the work and hands the delta to
    /// the round. `seen`: the mean and spread of the deltas the Byzantine fault switch has seen.
    fn send_own_delta(
        &mut self,
        own: OwnDelta,
        seen: Option<&(Vec<f32>, Vec<f32>)>,
        ctx: &mut Context<Self>,
    ) {
        let OwnDelta {
            round,
            delta,
            theta_h_hash,
            tokens,
            work,
        } = own;
        // Our own contribution is what peers will decode, so every node combines the same inputs.
        // The Byzantine fault switch: peers get the poisoned delta.
        let bytes = Arc::new(match self.settings.attack {
            None => self.feedback.encode(&self.settings.compression, &delta),
            Some(attack) => {
                let poisoned = poison_informed(attack, &delta, seen, round);
                encode(&self.settings.compression, &poisoned)
            }
        });
        let decoded = Contribution::decoded(
            self.node_id.clone(),
            Arc::clone(&bytes),
            delta.len(),
            f32::INFINITY,
        );
        let own = match decoded {
            Ok(own) => own,
            // An attacker keeps its honest delta when nothing of the poisoned one decodes (NaN).
            Err(_) if self.settings.attack.is_some() => {
                Contribution::new(self.node_id.clone(), delta)
            }
            Err(e) => {
                return error!(error = %e, "cannot decode our own delta; round skipped");
            }
        };
        let id = BlobId::of(&bytes);
        let size = bytes.len() as u64;
        self.network.do_send(OfferBlob { id, bytes });
        let theta0_hash = self.machine.theta0_hash().to_string();
        let announcement = RoundAnnouncement {
            node_id: self.node_id.clone(),
            round,
            theta0_hash: theta0_hash.clone(),
            delta_hash: id.to_string(),
            delta_bytes: size,
            codec: self.settings.compression.codec.name().to_string(),
            tokens,
            sent_at_ms: unix_ms(),
            claims: Vec::new(),
        };
        self.network.do_send(AnnounceRound(announcement.clone()));
        self.announced.push_back(announcement);
        if self.announced.len() as u64 > REANNOUNCED {
            self.announced.pop_front();
        }
        self.ledger.do_send(ProveTraining {
            round,
            theta0_hash,
            theta_h_hash,
            delta_hash: id.to_string(),
            tokens,
            work,
        });
        let effects = self.machine.own_delta(Instant::now(), own, id);
        self.perform(effects, ctx);
    }
}

impl Handler<BlobServed> for SyncActor {
    type Result = ();

    fn handle(&mut self, msg: BlobServed, _: &mut Self::Context) {
        self.machine.blob_served(msg.id, msg.bytes);
    }
}

impl Handler<PeerRoundAnnounced> for SyncActor {
    type Result = ();

    fn handle(&mut self, msg: PeerRoundAnnounced, ctx: &mut Self::Context) {
        let effects = self.machine.announced(msg.peer, msg.announcement);
        self.perform(effects, ctx);
    }
}

impl Handler<SnapshotTaken> for SyncActor {
    type Result = ();

    fn handle(&mut self, msg: SnapshotTaken, _: &mut Self::Context) {
        let checkpoint = self.checkpoint_of(&msg.0);
        let step = checkpoint.trainer.counters.global_step;
        self.last_snapshot = Some(msg.0);
        let (target, status) = (self.checkpoints.clone(), self.status.clone());
        actix::spawn(async move {
            match target.write_blocking(checkpoint, status.clone()).await {
                Ok(path) => {
                    status.update(|s| {
                        s.checkpoints_written += 1;
                        s.last_checkpoint_step = Some(step);
                    });
                    debug!(step, path = %path.display(), "checkpoint written");
                }
                Err(e) => error!(step, error = %e, "checkpoint failed; training goes on"),
            }
        });
    }
}

impl Handler<GetResumeState> for SyncActor {
    type Result = MessageResult<GetResumeState>;

    fn handle(&mut self, _: GetResumeState, _: &mut Self::Context) -> Self::Result {
        let round = self.machine.round();
        let snapshot = self
            .last_snapshot
            .as_ref()
            .map(|s| s.aligned_to(round, &self.theta0));
        MessageResult(ResumeState {
            snapshot,
            round,
            theta0: self.theta0.clone(),
        })
    }
}

impl Handler<WriteCheckpoint> for SyncActor {
    type Result = ResponseFuture<Result<PathBuf, CheckpointError>>;

    fn handle(&mut self, msg: WriteCheckpoint, _: &mut Self::Context) -> Self::Result {
        let Some(snapshot) = msg.0.or_else(|| self.last_snapshot.clone()) else {
            return Box::pin(async { Err(CheckpointError::NoTrainerState) });
        };
        let checkpoint = self.checkpoint_of(&snapshot);
        let (target, status) = (self.checkpoints.clone(), self.status.clone());
        Box::pin(async move { Ok(target.write_blocking(checkpoint, status).await?) })
    }
}
