//! `neuroshard simulate`: a network of 10 to 1,000 nodes in one process, on simulated time,
//! running the node's own pure logic: `round_decision` closes every node's (and aggregator's)
//! round, the configured robust rule and `aggregate::shard` aggregate and settle the slices,
//! `heal_decision` brings back a node that missed a round, the int8 codec quantizes what is sent,
//! the outer Nesterov step moves θ₀.
//!
//! Modelled, not run: training (an honest Δ is a step towards a fixed optimum θ* plus noise, so
//! the loss proxy ‖θ₀ − θ*‖² / ‖θ_init − θ*‖² falls as the network learns), sockets (a transfer
//! finishes when the slower of its sender's upload and its receiver's download has moved every
//! byte that end moves, plus both ends' latency), signatures (claims are taken as signed),
//! compute time. Vectors are `--params` long; bytes and transfer times are those of the
//! `--preset` model's encoded Δ, sliced the same way.
//!
//! Attackers (`--attackers`, a fraction of the nodes) send poisoned deltas (`--attack`) and,
//! as aggregators, report their slices scaled by −10 (with distances that match). A group member
//! whose report its partner contradicts is caught when the slice's backup group recomputes it
//! from the inputs, and excluded from later rounds; a group made only of attackers agrees on
//! its lie and is not caught (counted as `colluding_slices`). Churn (`--churn`) takes each node
//! offline for a round with that probability; a node that comes back heals first.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plotters::prelude::*;

use crate::aggregate::shard::{
    Settled, ShardOptions, ShardPlan, SliceReport, accused_slices, aggregate_slice, assemble,
    disputed, recompute, settle_slice,
};
use crate::aggregate::{
    Aggregate, AggregationConfig, Contribution, aggregate, check_aggregate, squared_distance,
};
use crate::diloco::OuterOptimizer;
use crate::diloco::attack::{Attack, normal, poison, splitmix};
use crate::diloco::codec::{Codec, CodecConfig, encode, encoded_len};
use crate::diloco::heal::{DISAGREEMENT_GRACE, OwnState, PeerOuterState, heal_decision};
use crate::diloco::round::{
    RoundDecision, RoundOptions, RoundProgress, has_quorum, round_decision,
};
use crate::model::config::NeuroLlmConfig;

/// A signed claim on the gossip topic: slice, aggregator, result hash, signature.
const CLAIM_BYTES: f64 = 100.0;
/// Per contributor in a round's verdicts (node_id, kept, score).
const VERDICT_BYTES: f64 = 21.0;
/// Copies of each gossip message that cross a node (gossipsub's mesh, less the duplicates its
/// IDONTWANT suppresses): an estimate.
const GOSSIP_COPIES: f64 = 2.0;
/// Copies of one slice a node serves: a tree of this fan-out reaches 1,000 nodes in five hops.
const SWARM_FANOUT: usize = 4;
/// Honest inner training moves θ towards θ* by this fraction a round.
const STEP: f32 = 0.2;
/// An honest Δ's noise per coordinate, relative to the step's root mean square.
const NOISE: f32 = 1.0;

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Network sizes to simulate, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,30,100,300,1000")]
    pub nodes: Vec<usize>,
    /// Fraction of the nodes that attack.
    #[arg(long, default_value_t = 0.1)]
    pub attackers: f64,
    /// Probability that a node is offline in a round.
    #[arg(long, default_value_t = 0.05)]
    pub churn: f64,
    /// Outer rounds per network size.
    #[arg(long, default_value_t = 10)]
    pub rounds: u64,
    /// sharded | full_mesh | both | auto (sharded from the default `min_nodes` on).
    #[arg(long, default_value = "both")]
    pub mode: String,
    /// Length of the simulated vectors (the values aggregated).
    #[arg(long, default_value_t = 20_000)]
    pub params: usize,
    /// The model whose encoded Δ sizes every transfer: nano | micro | bootstrap.
    #[arg(long, default_value = "micro")]
    pub preset: String,
    /// Delta codec: fp32 | fp16 | int8.
    #[arg(long, default_value = "int8")]
    pub codec: String,
    /// Aggregators per slice.
    #[arg(long, default_value_t = 2)]
    pub redundancy: usize,
    /// Each node's upload and download, Mbit/s (drawn between half and 1.5 times this).
    #[arg(long, default_value_t = 100.0)]
    pub bandwidth_mbit: f64,
    /// A node's one-way latency, ms (drawn between half and 1.5 times this).
    #[arg(long, default_value_t = 40.0)]
    pub latency_ms: f64,
    /// What attackers send: sign_flip | scale | gaussian | alie[:Z] | ipm[:EPSILON].
    #[arg(long, default_value = "sign_flip")]
    pub attack: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Directory for simulation.csv and simulation.svg.
    #[arg(long, default_value = "simulation")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    FullMesh,
    Sharded,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::FullMesh => "full_mesh",
            Mode::Sharded => "sharded",
        }
    }
}

/// Everything a run needs, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub attackers: f64,
    pub churn: f64,
    pub rounds: u64,
    pub params: usize,
    pub model_params: usize,
    pub codec: CodecConfig,
    pub shard: ShardOptions,
    pub aggregation: AggregationConfig,
    pub closing: RoundOptions,
    pub outer: OuterOptimizer,
    pub max_delta_norm: f32,
    /// Bytes per second.
    pub bandwidth: f64,
    /// Seconds, one way.
    pub latency: f64,
    pub attack: Attack,
    pub seed: u64,
}

impl Settings {
    /// The node's shipped defaults for everything the options do not set.
    pub fn from_options(o: &Options) -> Result<Self, String> {
        let model = NeuroLlmConfig::preset(&o.preset)
            .ok_or_else(|| format!("--preset: unknown model preset {:?}", o.preset))?;
        let codec = Codec::from_name(&o.codec)
            .filter(|c| *c != Codec::TopK)
            .ok_or_else(|| format!("--codec: {:?} is not fp32, fp16 or int8", o.codec))?;
        let attack = Attack::parse(&o.attack)
            .filter(|a| *a != Attack::Nan)
            .ok_or_else(|| format!("--attack: unknown attack {:?}", o.attack))?;
        let defaults = crate::config::Config::default();
        let shard = ShardOptions {
            redundancy: o.redundancy,
            ..ShardOptions::default()
        };
        shard.validate().map_err(|e| format!("--redundancy: {e}"))?;
        for (name, value) in [("--attackers", o.attackers), ("--churn", o.churn)] {
            if !(0.0..0.5).contains(&value) {
                return Err(format!("{name}: {value} is not in [0, 0.5)"));
            }
        }
        if o.params < 1000 {
            return Err(format!("--params: {} is below 1000", o.params));
        }
        if !(o.bandwidth_mbit > 0.0 && o.latency_ms >= 0.0) {
            return Err("--bandwidth-mbit must be positive and --latency-ms not negative".into());
        }
        Ok(Self {
            attackers: o.attackers,
            churn: o.churn,
            rounds: o.rounds,
            params: o.params,
            model_params: model.num_params(),
            codec: CodecConfig {
                codec,
                ..CodecConfig::default()
            },
            shard,
            aggregation: defaults.diloco.aggregation.clone(),
            closing: defaults.diloco.round_options(),
            outer: defaults.diloco.outer_optimizer(),
            max_delta_norm: defaults.diloco.max_delta_norm,
            bandwidth: o.bandwidth_mbit * 1e6 / 8.0,
            latency: o.latency_ms / 1000.0,
            attack,
            seed: o.seed,
        })
    }

    /// Bytes of the model's encoded Δ.
    fn delta_bytes(&self) -> f64 {
        encoded_len(&self.codec, self.model_params) as f64
    }
}

/// One round of one network, as the CSV has it.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundRow {
    pub mode: Mode,
    pub nodes: usize,
    pub round: u64,
    pub online: usize,
    pub contributors: usize,
    /// Every honest node that took part closed with a quorum (not by the deadline short of it).
    pub closed: bool,
    pub close_reason: String,
    pub attackers_kept: usize,
    pub attackers_rejected: usize,
    pub honest_rejected: usize,
    pub liars_caught: usize,
    /// Slices whose whole group was attackers (they agree on their lie).
    pub colluding_slices: usize,
    /// Slices recomputed because contributors of more than a third of the weight accused them.
    pub accused_slices: usize,
    pub unconfirmed_slices: usize,
    pub missing_slices: usize,
    /// From the deltas being ready to the last honest node holding the new θ₀.
    pub round_seconds: f64,
    /// Per honest node, in encoded Δ of the model.
    pub max_in: f64,
    pub max_out: f64,
    pub mean_in: f64,
    /// The largest heal (θ₀ and momentum, fp32) a returning node made, in encoded Δ.
    pub heal: f64,
    /// Share of the honest online nodes on the most common θ₀ after the round.
    pub agreement: f64,
    pub loss_proxy: f64,
}

/// An outer state: θ₀ and the momentum.
#[derive(Debug, Clone)]
struct OuterState {
    round: u64,
    theta0: Vec<f32>,
    momentum: Vec<f32>,
}

#[derive(Debug, Clone)]
struct SimNode {
    id: String,
    attacker: bool,
    /// Caught serving a wrong slice: its peers refuse it from then on.
    excluded: bool,
    online: bool,
    state: usize,
    up: f64,
    down: f64,
    latency: f64,
}

/// Per-node bytes of one round.
#[derive(Debug, Clone, Default)]
struct Traffic {
    bytes_in: Vec<f64>,
    bytes_out: Vec<f64>,
}

impl Traffic {
    fn new(n: usize) -> Self {
        Self {
            bytes_in: vec![0.0; n],
            bytes_out: vec![0.0; n],
        }
    }

    fn send(&mut self, from: usize, to: usize, bytes: f64) {
        self.bytes_out[from] += bytes;
        self.bytes_in[to] += bytes;
    }
}

/// A network of `n` nodes and its history.
pub struct Simulation {
    settings: Settings,
    mode: Mode,
    nodes: Vec<SimNode>,
    /// The outer states some node holds, by id.
    states: BTreeMap<usize, OuterState>,
    next_state: usize,
    target: Vec<f32>,
    initial_distance: f64,
    rng: u64,
    base: Instant,
}

fn uniform(rng: &mut u64) -> f64 {
    (splitmix(rng) >> 11) as f64 / (1u64 << 53) as f64
}

impl Simulation {
    pub fn new(settings: Settings, mode: Mode, n: usize) -> Self {
        let mut rng = settings.seed ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let attackers = (settings.attackers * n as f64).round() as usize;
        let nodes = (0..n)
            .map(|i| {
                let spread = |rng: &mut u64| 0.5 + uniform(rng);
                SimNode {
                    id: format!("{:032x}", splitmix(&mut rng) as u128 | (i as u128) << 64),
                    // Spread through the ranking, not the first ones.
                    attacker: i * attackers / n.max(1) != (i + 1) * attackers / n.max(1),
                    excluded: false,
                    online: true,
                    state: 0,
                    up: settings.bandwidth * spread(&mut rng),
                    down: settings.bandwidth * spread(&mut rng),
                    latency: settings.latency * spread(&mut rng),
                }
            })
            .collect();
        let target: Vec<f32> = (0..settings.params).map(|_| normal(&mut rng)).collect();
        let initial_distance = squared_distance(&vec![0.0; settings.params], &target);
        let states = BTreeMap::from([(
            0,
            OuterState {
                round: 0,
                theta0: vec![0.0; settings.params],
                momentum: vec![0.0; settings.params],
            },
        )]);
        Self {
            settings,
            mode,
            nodes,
            states,
            next_state: 1,
            target,
            initial_distance,
            rng,
            base: Instant::now(),
        }
    }

    fn at(&self, seconds: f64) -> Instant {
        self.base + Duration::from_secs_f64(seconds.max(0.0))
    }

    /// Runs every round: one row each.
    pub fn run(&mut self) -> Vec<RoundRow> {
        (0..self.settings.rounds).map(|r| self.round(r)).collect()
    }

    /// The state most honest online nodes hold.
    fn majority_state(&self) -> (usize, usize) {
        let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
        for node in self.nodes.iter().filter(|n| n.online && !n.attacker) {
            *counts.entry(node.state).or_default() += 1;
        }
        counts
            .into_iter()
            .max_by_key(|(state, count)| (*count, *state))
            .unwrap_or((0, 0))
    }

    /// This round's honest Δ of a node on `state` (attackers poison it).
    fn delta_of(&mut self, node: usize, state: usize) -> Vec<f32> {
        let theta0 = &self.states[&state].theta0;
        let step: Vec<f32> = theta0
            .iter()
            .zip(&self.target)
            .map(|(t, star)| STEP * (t - star))
            .collect();
        let rms = (step.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / step.len() as f64)
            .sqrt() as f32;
        let mut noise_rng = splitmix(&mut self.rng);
        let honest: Vec<f32> = step
            .iter()
            .map(|x| x + NOISE * rms * normal(&mut noise_rng))
            .collect();
        if self.nodes[node].attacker {
            poison(self.settings.attack, &honest, noise_rng)
        } else {
            honest
        }
    }

    /// What a receiver decodes of `values` sent with the codec, the codes kept as nodes keep
    /// them (the values as they are when they do not decode).
    fn received(&self, node_id: &str, values: &[f32]) -> Contribution {
        let bytes = Arc::new(encode(&self.settings.codec, values));
        Contribution::decoded(node_id, bytes, values.len(), f32::INFINITY)
            .unwrap_or_else(|_| Contribution::new(node_id, values.to_vec()))
    }

    /// Bytes of the model's slice `slice` of `plan` (the model cut into as many slices).
    fn slice_bytes(&self, plan: &ShardPlan, slice: usize) -> f64 {
        let s = plan.slices().max(1);
        let m = self.settings.model_params;
        let len = (slice + 1) * m / s - slice * m / s;
        encoded_len(&self.settings.codec, len) as f64
    }

    /// Brings back the online nodes that are not on the heaviest state, by `heal_decision`:
    /// (when each node can start sending, the largest heal in bytes). Heals are counted apart
    /// from the round's traffic: they are a returning node's, not every round's.
    fn heal_returning(&mut self, round: u64) -> (Vec<f64>, f64) {
        let (majority, _) = self.majority_state();
        let peers: Vec<PeerOuterState> = self
            .nodes
            .iter()
            .filter(|n| n.online && !n.excluded)
            .map(|n| PeerOuterState {
                peer_id: n.id.clone(),
                round: self.states[&n.state].round,
                theta0_hash: format!("{:x}", n.state),
                momentum_hash: String::new(),
                weight: 1.0,
            })
            .collect();
        let state_bytes = 8.0 * self.settings.model_params as f64;
        let index = self.index();
        let mut start = vec![0.0; self.nodes.len()];
        let mut largest = 0.0f64;
        for (i, start) in start.iter_mut().enumerate() {
            let node = &self.nodes[i];
            if !node.online || node.state == majority {
                continue;
            }
            let hash = format!("{:x}", node.state);
            let own = OwnState {
                round: self.states[&node.state].round,
                theta0_hash: &hash,
                weight: 1.0,
            };
            // It has been away for a round: any disagreement is older than the grace.
            let now = self.at(round as f64 + DISAGREEMENT_GRACE.as_secs_f64());
            let since = Some(self.at(round as f64));
            let others: Vec<PeerOuterState> = peers
                .iter()
                .filter(|p| p.peer_id != node.id)
                .cloned()
                .collect();
            let Some(plan) = heal_decision(now, own, &others, since) else {
                continue;
            };
            let Ok(state) = usize::from_str_radix(&plan.theta0_hash, 16) else {
                continue;
            };
            // Any member of the heaviest group will do: spread over them.
            let pick = (splitmix(&mut self.rng) % plan.sources.len().max(1) as u64) as usize;
            let Some(&source) = plan.sources.get(pick).and_then(|p| index.get(&p.peer_id)) else {
                continue;
            };
            let (up, down) = (self.nodes[source].up, self.nodes[i].down);
            *start = DISAGREEMENT_GRACE.as_secs_f64()
                + state_bytes / up.min(down)
                + self.link(source, i);
            self.nodes[i].state = state;
            largest = largest.max(state_bytes);
        }
        (start, largest)
    }

    /// When a node whose own input is ready at `own_ready` closes, by the node's
    /// `round_decision`: inputs arrive at `arrivals` (seconds; its own included), and it
    /// expects `expected` weight.
    fn close_time(&self, own_ready: f64, arrivals: &[f64], expected: f64) -> (f64, String) {
        let options = &self.settings.closing;
        let mut sorted = arrivals.to_vec();
        sorted.sort_by(f64::total_cmp);
        let mut times: Vec<f64> = sorted.iter().map(|a| a.max(own_ready)).collect();
        times.push(own_ready);
        times.push(own_ready + options.deadline.as_secs_f64());
        times.sort_by(f64::total_cmp);
        let mut quorum_since: Option<f64> = None;
        let mut i = 0;
        while i < times.len() {
            let t = times[i];
            let arrived = sorted.partition_point(|a| *a <= t) as f64;
            let progress = RoundProgress {
                own_ready_at: Some(self.at(own_ready)),
                contributions: arrived,
                pending: arrivals.len() as f64 - arrived,
                expected,
                quorum_since: quorum_since.map(|q| self.at(q)),
            };
            if quorum_since.is_none() && has_quorum(&progress, options) {
                quorum_since = Some(t);
                let grace_over = t + options.straggler_grace.as_secs_f64();
                let at = times.partition_point(|x| *x <= grace_over);
                times.insert(at, grace_over);
            }
            let progress = RoundProgress {
                quorum_since: quorum_since.map(|q| self.at(q)),
                ..progress
            };
            if let RoundDecision::Close(reason) = round_decision(self.at(t), &progress, options) {
                return (t, reason);
            }
            i += 1;
        }
        let end = own_ready + options.deadline.as_secs_f64();
        (end, "deadline".into())
    }

    /// Each node's position by node_id.
    fn index(&self) -> HashMap<String, usize> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect()
    }

    fn link(&self, a: usize, b: usize) -> f64 {
        self.nodes[a].latency + self.nodes[b].latency
    }

    fn round(&mut self, round: u64) -> RoundRow {
        let churn = self.settings.churn;
        let was_online: Vec<bool> = self.nodes.iter().map(|n| n.online).collect();
        for i in 0..self.nodes.len() {
            let offline = uniform(&mut self.rng) < churn;
            self.nodes[i].online = !offline;
        }
        let n = self.nodes.len();
        let mut traffic = Traffic::new(n);
        let (start, heal) = self.heal_returning(round);
        let (state, _) = self.majority_state();
        // Members: the trainers heard last round (a node that went offline is still listed
        // until its heartbeat expires); contributors: who is online now.
        let members: Vec<usize> = (0..n)
            .filter(|&i| was_online[i] && !self.nodes[i].excluded)
            .collect();
        let contributors: Vec<usize> = (0..n)
            .filter(|&i| self.nodes[i].online && !self.nodes[i].excluded)
            .filter(|&i| self.nodes[i].state == state)
            .collect();
        let expected = members
            .iter()
            .chain(&contributors)
            .collect::<std::collections::BTreeSet<_>>()
            .len() as f64;
        let deltas: Vec<(usize, Vec<f32>)> = contributors
            .iter()
            .map(|&i| (i, self.delta_of(i, state)))
            .collect();
        let outcome = match self.mode {
            Mode::FullMesh => self.full_mesh(round, &deltas, &start, expected, &mut traffic),
            Mode::Sharded => self.sharded(
                round,
                state,
                &members,
                &deltas,
                &start,
                expected,
                &mut traffic,
            ),
        };
        // The outer step on the aggregate every honest participant took.
        let mut moved: HashMap<usize, usize> = HashMap::new();
        for (group, aggregate) in &outcome.aggregates {
            let mut next = self.states[&state].clone();
            next.round = round + 1;
            if check_aggregate(&aggregate.delta, self.settings.max_delta_norm).is_ok() {
                self.settings.outer.step(
                    round,
                    &mut next.theta0,
                    &mut next.momentum,
                    &aggregate.delta,
                );
            }
            self.states.insert(self.next_state, next);
            moved.insert(*group, self.next_state);
            self.next_state += 1;
        }
        // Attackers follow the largest group (they want their deltas in the next round).
        if let Some((group, _)) = outcome.aggregates.first() {
            for &c in &contributors {
                self.nodes[c].state = moved[group];
            }
        }
        for (node, group) in &outcome.group_of {
            self.nodes[*node].state = moved[group];
        }
        let held: std::collections::BTreeSet<usize> = self.nodes.iter().map(|n| n.state).collect();
        self.states.retain(|id, _| held.contains(id));
        let verdicts = outcome
            .aggregates
            .first()
            .map(|(_, a)| a.verdicts.clone())
            .unwrap_or_default();
        let attacker = |id: &str| self.nodes.iter().any(|n| n.id == id && n.attacker);
        let count = |kept: bool, bad: bool| {
            verdicts
                .iter()
                .filter(|v| v.kept == kept && attacker(&v.node_id) == bad)
                .count()
        };
        let (new_state, on_majority) = self.majority_state();
        let honest_online: Vec<usize> = (0..n)
            .filter(|&i| self.nodes[i].online && !self.nodes[i].attacker)
            .collect();
        let delta_bytes = self.settings.delta_bytes();
        let in_of = |i: &usize| traffic.bytes_in[*i] / delta_bytes;
        let out_of = |i: &usize| traffic.bytes_out[*i] / delta_bytes;
        let max = |xs: Vec<f64>| xs.into_iter().fold(0.0, f64::max);
        RoundRow {
            mode: self.mode,
            nodes: n,
            round,
            online: self.nodes.iter().filter(|n| n.online).count(),
            contributors: contributors.len(),
            closed: outcome.closed,
            close_reason: outcome.close_reason,
            attackers_kept: count(true, true),
            attackers_rejected: count(false, true),
            honest_rejected: count(false, false),
            liars_caught: outcome.liars_caught,
            colluding_slices: outcome.colluding_slices,
            accused_slices: outcome.accused_slices,
            unconfirmed_slices: outcome.unconfirmed_slices,
            missing_slices: outcome.missing_slices,
            round_seconds: outcome.round_seconds,
            max_in: max(honest_online.iter().map(in_of).collect()),
            max_out: max(honest_online.iter().map(out_of).collect()),
            mean_in: honest_online.iter().map(in_of).sum::<f64>()
                / honest_online.len().max(1) as f64,
            heal: heal / delta_bytes,
            agreement: on_majority as f64 / honest_online.len().max(1) as f64,
            loss_proxy: squared_distance(&self.states[&new_state].theta0, &self.target)
                / self.initial_distance,
        }
    }
}

/// How the honest nodes (or aggregators) of a round closed it.
struct Closings {
    /// Every one closed with the quorum in hand.
    closed: bool,
    /// How many closed for each kind of reason (the text before round_decision's colon).
    reasons: BTreeMap<String, usize>,
}

impl Closings {
    fn new() -> Self {
        Self {
            closed: true,
            reasons: BTreeMap::new(),
        }
    }

    fn record(&mut self, inputs: usize, reason: &str, needed: f64) {
        self.closed &= inputs as f64 + 1e-9 >= needed;
        let kind = reason.split(':').next().unwrap_or("").to_string();
        *self.reasons.entry(kind).or_default() += 1;
    }

    fn summary(&self) -> String {
        self.reasons
            .iter()
            .map(|(r, c)| format!("{r} ×{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What a round's aggregation came to.
struct Outcome {
    /// The aggregates honest nodes took, by group (group 0: the most common).
    aggregates: Vec<(usize, Aggregate)>,
    /// Honest participant → the group whose aggregate it took.
    group_of: Vec<(usize, usize)>,
    closed: bool,
    close_reason: String,
    round_seconds: f64,
    liars_caught: usize,
    colluding_slices: usize,
    accused_slices: usize,
    unconfirmed_slices: usize,
    missing_slices: usize,
}

impl Simulation {
    /// Every node fetches every delta and aggregates what arrived when its round closes.
    fn full_mesh(
        &mut self,
        round: u64,
        deltas: &[(usize, Vec<f32>)],
        start: &[f64],
        expected: f64,
        traffic: &mut Traffic,
    ) -> Outcome {
        let bytes = self.settings.delta_bytes();
        let senders = deltas.len();
        let contributions: Vec<Contribution> = deltas
            .iter()
            .map(|(i, d)| self.received(&self.nodes[*i].id, d))
            .collect();
        let load = bytes * senders.saturating_sub(1) as f64;
        let sent_at: Vec<f64> = deltas
            .iter()
            .map(|(i, _)| start[*i] + load / self.nodes[*i].up)
            .collect();
        let mut sets: BTreeMap<Vec<usize>, usize> = BTreeMap::new();
        let mut group_of = Vec::new();
        let mut round_seconds = 0.0f64;
        let mut closings = Closings::new();
        let needed = self.settings.closing.quorum_fraction * expected;
        for (k, (i, _)) in deltas.iter().enumerate() {
            let received_at = start[*i] + load / self.nodes[*i].down;
            let arrivals: Vec<f64> = deltas
                .iter()
                .enumerate()
                .map(|(j, (c, _))| {
                    if j == k {
                        start[*i]
                    } else {
                        sent_at[j].max(received_at) + self.link(*c, *i)
                    }
                })
                .collect();
            let (close, reason) = self.close_time(start[*i], &arrivals, expected);
            let inputs: Vec<usize> = (0..senders).filter(|j| arrivals[*j] <= close).collect();
            for (j, (c, _)) in deltas.iter().enumerate() {
                if j != k {
                    // What moved before the close.
                    let share =
                        ((close - start[*i]) / (arrivals[j] - start[*i]).max(1e-9)).min(1.0);
                    traffic.send(*c, *i, bytes * share);
                }
            }
            if self.nodes[*i].attacker {
                continue;
            }
            closings.record(inputs.len(), &reason, needed);
            round_seconds = round_seconds.max(close);
            let next = sets.len();
            let group = *sets.entry(inputs).or_insert(next);
            group_of.push((*i, group));
        }
        let mut by_size: Vec<(usize, usize)> = sets
            .values()
            .map(|g| (*g, group_of.iter().filter(|(_, h)| h == g).count()))
            .collect();
        by_size.sort_by_key(|(g, count)| (std::cmp::Reverse(*count), *g));
        let aggregates = by_size
            .iter()
            .filter_map(|(g, _)| {
                let (inputs, _) = sets.iter().find(|(_, h)| *h == g)?;
                let chosen: Vec<Contribution> =
                    inputs.iter().map(|j| contributions[*j].clone()).collect();
                Some((
                    *g,
                    aggregate(&self.settings.aggregation, round, &chosen).ok()?,
                ))
            })
            .collect();
        Outcome {
            aggregates,
            group_of,
            closed: closings.closed,
            close_reason: closings.summary(),
            round_seconds,
            liars_caught: 0,
            colluding_slices: 0,
            accused_slices: 0,
            unconfirmed_slices: 0,
            missing_slices: 0,
        }
    }

    /// Sharded: slices to their groups, each group member closes by `round_decision` and
    /// reports, every node settles the slices from the reports and assembles the aggregate.
    #[allow(clippy::too_many_arguments)]
    fn sharded(
        &mut self,
        round: u64,
        state: usize,
        members: &[usize],
        deltas: &[(usize, Vec<f32>)],
        start: &[f64],
        expected: f64,
        traffic: &mut Traffic,
    ) -> Outcome {
        let ids: Vec<String> = members.iter().map(|&i| self.nodes[i].id.clone()).collect();
        let index = self.index();
        let plan = ShardPlan::new(
            round,
            &format!("{state:x}"),
            &ids,
            self.settings.params,
            self.settings.shard.redundancy,
        );
        let slices = plan.slices();
        let groups: Vec<Vec<usize>> = (0..slices)
            .map(|s| plan.group(s).iter().map(|id| index[*id]).collect())
            .collect();
        let slice_bytes: Vec<f64> = (0..slices).map(|s| self.slice_bytes(&plan, s)).collect();
        let active = |i: usize| self.nodes[i].online && !self.nodes[i].excluded;
        // Phase 1: each contributor sends slice s to the online members of its group.
        let mut upload = vec![0.0; self.nodes.len()];
        let mut download = vec![0.0; self.nodes.len()];
        for (c, _) in deltas {
            for s in 0..slices {
                for &m in groups[s].iter().filter(|&&m| m != *c && active(m)) {
                    upload[*c] += slice_bytes[s];
                    download[m] += slice_bytes[s];
                    traffic.send(*c, m, slice_bytes[s]);
                }
            }
        }
        let sliced: Vec<Vec<Contribution>> = (0..slices)
            .map(|s| {
                let range = plan.range(s);
                deltas
                    .iter()
                    // A slice's parts carry no codes, as on nodes.
                    .map(|(i, d)| {
                        let part = self.received(&self.nodes[*i].id, &d[range.clone()]);
                        Contribution::new(part.node_id, part.delta)
                    })
                    .collect()
            })
            .collect();
        let position: HashMap<&str, usize> = deltas
            .iter()
            .enumerate()
            .map(|(j, (c, _))| (self.nodes[*c].id.as_str(), j))
            .collect();
        let sent_at: HashMap<usize, f64> = deltas
            .iter()
            .map(|(c, _)| (*c, start[*c] + upload[*c] / self.nodes[*c].up))
            .collect();
        // Phase 2: every active member closes by `round_decision` (once: the parts of its
        // slices arrive together). The members of a group then swap the names of the parts
        // they hold and fetch the ones they lack from each other, so honest members aggregate
        // the same union and agree; each reports.
        let mut reports: Vec<Vec<(usize, f64, SliceReport)>> = vec![Vec::new(); slices];
        let mut cache: HashMap<(usize, Vec<usize>), Option<SliceReport>> = HashMap::new();
        let mut closes: HashMap<usize, (f64, Vec<usize>)> = HashMap::new();
        let mut closings = Closings::new();
        let needed = self.settings.closing.quorum_fraction * expected;
        for s in 0..slices {
            let group: Vec<usize> = groups[s].iter().copied().filter(|&m| active(m)).collect();
            for &m in &group {
                if closes.contains_key(&m) {
                    continue;
                }
                let received_at = start[m] + download[m] / self.nodes[m].down;
                let arrivals: Vec<f64> = deltas
                    .iter()
                    .map(|(c, _)| {
                        if *c == m {
                            start[m]
                        } else {
                            sent_at[c].max(received_at) + self.link(*c, m)
                        }
                    })
                    .collect();
                let (close, reason) = self.close_time(start[m], &arrivals, expected);
                let inputs: Vec<usize> = (0..deltas.len())
                    .filter(|j| arrivals[*j] <= close)
                    .collect();
                if !self.nodes[m].attacker {
                    closings.record(inputs.len(), &reason, needed);
                }
                closes.insert(m, (close, inputs));
            }
            let mut union: Vec<usize> = group
                .iter()
                .flat_map(|m| closes[m].1.iter().copied())
                .collect();
            union.sort_unstable();
            union.dedup();
            let swapped_at = group.iter().map(|m| closes[m].0).fold(0.0, f64::max)
                + group
                    .iter()
                    .flat_map(|&a| group.iter().map(move |&b| (a, b)))
                    .map(|(a, b)| self.link(a, b))
                    .fold(0.0, f64::max);
            let honest = cache
                .entry((s, union.clone()))
                .or_insert_with(|| {
                    let chosen: Vec<Contribution> =
                        union.iter().map(|j| sliced[s][*j].clone()).collect();
                    aggregate_slice(&self.settings.aggregation, round, s, "", &chosen).ok()
                })
                .clone();
            // No member online, or nothing arrived: the slice gets no report.
            let Some(honest) = honest else {
                continue;
            };
            for &m in &group {
                let lacking = (union.len() - closes[&m].1.len()) as f64 * slice_bytes[s];
                if let Some(&partner) = group.iter().find(|&&p| p != m)
                    && lacking > 0.0
                {
                    traffic.send(partner, m, lacking);
                }
                let at = swapped_at + lacking / self.nodes[m].down;
                let mut report = SliceReport {
                    aggregator: self.nodes[m].id.clone(),
                    ..honest.clone()
                };
                if self.nodes[m].attacker {
                    for x in report.delta.iter_mut() {
                        *x *= -10.0;
                    }
                    for (id, d) in report.sq_distances.iter_mut() {
                        if let Some(&j) = position.get(id.as_str()) {
                            *d = squared_distance(&sliced[s][j].delta, &report.delta);
                        }
                    }
                }
                reports[s].push((m, at, report));
            }
        }
        // Phase 3: claims on the gossip topic; each node fetches every slice's report from a
        // member whose report was taken. A slice whose reports differ, or that contributors of
        // more than a third of the round's weight accuse once they hold it, is recomputed by
        // its backup group (the next r members) from the contributors' parts.
        let settle = |s: usize, accused: bool| {
            let mut recomputed = false;
            let outcome = settle_slice(
                plan.range(s).len(),
                self.settings.max_delta_norm,
                reports[s].iter().map(|(_, _, r)| r.clone()).collect(),
                accused,
                |names| {
                    recomputed = true;
                    recompute(&self.settings.aggregation, round, s, &sliced[s], names)
                },
            );
            (outcome, recomputed)
        };
        let mut settled: Vec<(Settled, bool)> = (0..slices).map(|s| settle(s, false)).collect();
        let aggregated: Vec<Option<&[f32]>> = settled
            .iter()
            .map(|(o, _)| o.report.as_ref().map(|r| r.delta.as_slice()))
            .collect();
        let mut accusations = vec![0usize; slices];
        for (_, delta) in deltas.iter().filter(|(c, _)| !self.nodes[*c].attacker) {
            for s in accused_slices(&plan, delta, &aggregated) {
                accusations[s] += 1;
            }
        }
        let mut accused = 0;
        for s in 0..slices {
            if disputed(accusations[s] as f64, deltas.len() as f64) {
                accused += 1;
                let (outcome, _) = settle(s, true);
                settled[s] = (outcome, true);
            }
        }
        let mut ready_at = vec![0.0f64; slices];
        let mut served_by = vec![Vec::new(); slices];
        let mut colluding = 0;
        let mut caught = Vec::new();
        for (s, (outcome, recomputed)) in settled.iter().enumerate() {
            let latest = reports[s].iter().map(|(_, t, _)| *t).fold(0.0, f64::max);
            ready_at[s] = latest;
            let backups: Vec<usize> = (0..slices)
                .map(|k| groups[(s + self.settings.shard.redundancy + k) % slices][0])
                .filter(|&b| active(b))
                .take(self.settings.shard.redundancy)
                .collect();
            if *recomputed {
                let inputs_bytes = slice_bytes[s] * deltas.len() as f64;
                for &b in &backups {
                    for (c, _) in deltas {
                        traffic.send(*c, b, slice_bytes[s]);
                    }
                    // An accused slice waits for the round's slices and the accusations first.
                    let waited = if accusations[s] > 0 { 2.0 } else { 1.0 };
                    ready_at[s] = ready_at[s].max(
                        latest
                            + waited * inputs_bytes / self.nodes[b].down
                            + 4.0 * self.nodes[b].latency,
                    );
                }
            }
            caught.extend(outcome.wrong.iter().map(|id| index[id.as_str()]));
            if !reports[s].is_empty() && reports[s].iter().all(|(m, _, _)| self.nodes[*m].attacker)
            {
                colluding += 1;
            }
            if let Some(taken) = &outcome.report {
                served_by[s] = reports[s]
                    .iter()
                    .filter(|(_, _, r)| r.delta == taken.delta)
                    .map(|(m, _, _)| *m)
                    .collect();
                if served_by[s].is_empty() {
                    served_by[s] = backups;
                }
            }
        }
        let settled: Vec<Settled> = settled.into_iter().map(|(o, _)| o).collect();
        // Caught serving a wrong slice: its peers refuse it from the next round on.
        caught.sort_unstable();
        caught.dedup();
        let liars = caught.len();
        for i in caught {
            self.nodes[i].excluded = true;
        }
        let contributor_ids: Vec<String> = deltas
            .iter()
            .map(|(i, _)| self.nodes[*i].id.clone())
            .collect();
        let aggregate = assemble(
            &self.settings.aggregation,
            &plan,
            &settled,
            &contributor_ids,
        );
        let participants: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].online && !self.nodes[i].attacker)
            .filter(|&i| self.nodes[i].state == state)
            .collect();
        let gossip = CLAIM_BYTES * (slices * self.settings.shard.redundancy) as f64;
        let verdicts = VERDICT_BYTES * deltas.len() as f64 * self.settings.shard.redundancy as f64;
        let before_phase3 = traffic.bytes_in.clone();
        for &i in &participants {
            traffic.bytes_in[i] += (gossip + verdicts) * GOSSIP_COPIES;
            traffic.bytes_out[i] += (gossip + verdicts) * GOSSIP_COPIES;
        }
        // Swarming: each slice spreads from its aggregators through the nodes that already
        // fetched it, each fetcher taking the holder that can deliver it soonest (a holder
        // sends one copy at a time, and at most SWARM_FANOUT of each slice).
        let mut done = vec![0.0f64; self.nodes.len()];
        let micros = |t: f64| (t * 1e6) as u64;
        for s in 0..slices {
            let mut holders: std::collections::BinaryHeap<std::cmp::Reverse<(u64, usize)>> =
                served_by[s]
                    .iter()
                    .map(|&m| std::cmp::Reverse((micros(ready_at[s]), m)))
                    .collect();
            let offset = s * participants.len() / slices.max(1);
            let mut copies = vec![0usize; self.nodes.len()];
            for k in 0..participants.len() {
                let i = participants[(offset + k) % participants.len()];
                if served_by[s].contains(&i) || groups[s].contains(&i) {
                    continue;
                }
                let Some(std::cmp::Reverse((free, source))) = holders.pop() else {
                    break;
                };
                traffic.send(source, i, slice_bytes[s]);
                let sending = slice_bytes[s] / self.nodes[source].up.min(self.nodes[i].down);
                let sent = free as f64 / 1e6 + sending;
                let at = sent + self.link(source, i);
                done[i] = done[i].max(at);
                copies[source] += 1;
                if copies[source] < SWARM_FANOUT {
                    holders.push(std::cmp::Reverse((micros(sent), source)));
                }
                holders.push(std::cmp::Reverse((micros(at), i)));
            }
        }
        // No node moves its bytes faster than its own link allows.
        for &i in &participants {
            let wire = (traffic.bytes_in[i] - before_phase3[i]) / self.nodes[i].down;
            let first = ready_at.iter().copied().fold(f64::INFINITY, f64::min);
            done[i] = done[i].max(first + wire);
        }
        let round_seconds = participants.iter().map(|&i| done[i]).fold(0.0, f64::max);
        Outcome {
            aggregates: vec![(0, aggregate)],
            group_of: participants.iter().map(|&i| (i, 0)).collect(),
            closed: closings.closed,
            close_reason: closings.summary(),
            round_seconds,
            liars_caught: liars,
            colluding_slices: colluding,
            accused_slices: accused,
            unconfirmed_slices: settled
                .iter()
                .filter(|s| s.report.is_some() && !s.confirmed)
                .count(),
            missing_slices: settled.iter().filter(|s| s.report.is_none()).count(),
        }
    }
}

/// The modes `--mode` names for a network of `n`.
fn modes_for(mode: &str, n: usize, shard: &ShardOptions) -> Result<Vec<Mode>, String> {
    Ok(match mode {
        "sharded" => vec![Mode::Sharded],
        "full_mesh" => vec![Mode::FullMesh],
        "both" => vec![Mode::FullMesh, Mode::Sharded],
        "auto" if shard.sharded(n) => vec![Mode::Sharded],
        "auto" => vec![Mode::FullMesh],
        other => {
            return Err(format!(
                "--mode: {other:?} is not sharded, full_mesh, both or auto"
            ));
        }
    })
}

const CSV_HEADER: &str = "mode,nodes,round,online,contributors,closed,close_reason,attackers_kept,attackers_rejected,honest_rejected,liars_caught,colluding_slices,accused_slices,unconfirmed_slices,missing_slices,round_seconds,max_in_deltas,max_out_deltas,mean_in_deltas,heal_deltas,agreement,loss_proxy";

fn csv_row(r: &RoundRow) -> String {
    format!(
        "{},{},{},{},{},{},\"{}\",{},{},{},{},{},{},{},{},{:.3},{:.4},{:.4},{:.4},{:.4},{:.4},{:.6}",
        r.mode.name(),
        r.nodes,
        r.round,
        r.online,
        r.contributors,
        r.closed,
        r.close_reason.replace('"', "'"),
        r.attackers_kept,
        r.attackers_rejected,
        r.honest_rejected,
        r.liars_caught,
        r.colluding_slices,
        r.accused_slices,
        r.unconfirmed_slices,
        r.missing_slices,
        r.round_seconds,
        r.max_in,
        r.max_out,
        r.mean_in,
        r.heal,
        r.agreement,
        r.loss_proxy
    )
}

/// One line per (mode, nodes): the medians and worst cases over its rounds.
pub fn summary_table(rows: &[RoundRow]) -> String {
    let mut keys: Vec<(Mode, usize)> = rows.iter().map(|r| (r.mode, r.nodes)).collect();
    keys.dedup();
    let mut out = String::from(
        "| mode | nodes | rounds closed | round s (median / max) | max bytes in / out per node (encoded Δ) | heal (Δ) | honest agreement (min) | liars caught | colluding / accused slices | loss proxy at the end |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (mode, nodes) in keys {
        let these: Vec<&RoundRow> = rows
            .iter()
            .filter(|r| r.mode == mode && r.nodes == nodes)
            .collect();
        let mut times: Vec<f64> = these.iter().map(|r| r.round_seconds).collect();
        times.sort_by(f64::total_cmp);
        let max_of = |f: &dyn Fn(&RoundRow) -> f64| these.iter().map(|r| f(r)).fold(0.0, f64::max);
        out.push_str(&format!(
            "| {} | {nodes} | {}/{} | {:.1} / {:.1} | {:.2} / {:.2} | {:.1} | {:.3} | {} | {} / {} | {:.4} |\n",
            mode.name(),
            these.iter().filter(|r| r.closed).count(),
            these.len(),
            times[times.len() / 2],
            times.last().copied().unwrap_or(0.0),
            max_of(&|r| r.max_in),
            max_of(&|r| r.max_out),
            max_of(&|r| r.heal),
            these.iter().map(|r| r.agreement).fold(1.0, f64::min),
            these.iter().map(|r| r.liars_caught).sum::<usize>(),
            these.iter().map(|r| r.colluding_slices).sum::<usize>(),
            these.iter().map(|r| r.accused_slices).sum::<usize>(),
            these.last().map_or(f64::NAN, |r| r.loss_proxy),
        ));
    }
    out
}

/// Median round time and largest per-node bytes in against n, one line per mode.
fn plot(path: &Path, rows: &[RoundRow]) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("cannot plot {}: {e}", path.display());
    let series = |mode: Mode, f: &dyn Fn(&[&RoundRow]) -> f64| -> Vec<(f64, f64)> {
        let mut sizes: Vec<usize> = rows
            .iter()
            .filter(|r| r.mode == mode)
            .map(|r| r.nodes)
            .collect();
        sizes.dedup();
        sizes
            .into_iter()
            .map(|n| {
                let these: Vec<&RoundRow> = rows
                    .iter()
                    .filter(|r| r.mode == mode && r.nodes == n)
                    .collect();
                (n as f64, f(&these))
            })
            .collect()
    };
    let median_time = |these: &[&RoundRow]| {
        let mut t: Vec<f64> = these.iter().map(|r| r.round_seconds).collect();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let max_in = |these: &[&RoundRow]| these.iter().map(|r| r.max_in).fold(0.0, f64::max);
    let max_n = rows.iter().map(|r| r.nodes).max().unwrap_or(10) as f64;
    let min_n = rows.iter().map(|r| r.nodes).min().unwrap_or(1) as f64;
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let panels = root.split_evenly((1, 2));
    for (panel, (title, metric, unit)) in panels.iter().zip([
        (
            "round time",
            &median_time as &dyn Fn(&[&RoundRow]) -> f64,
            "seconds (median)",
        ),
        ("bytes in per node", &max_in, "encoded Δ (max)"),
    ]) {
        let points: Vec<(Mode, Vec<(f64, f64)>)> = [Mode::FullMesh, Mode::Sharded]
            .into_iter()
            .map(|m| (m, series(m, metric)))
            .filter(|(_, p)| !p.is_empty())
            .collect();
        let top = points
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
            .fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((min_n..max_n).log_scale(), (0.1f64..top * 1.5).log_scale())
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("nodes")
            .y_desc(unit)
            .draw()
            .map_err(|e| err(&e))?;
        for (index, (mode, p)) in points.into_iter().enumerate() {
            let color = Palette99::pick(index).to_rgba();
            chart
                .draw_series(LineSeries::new(p.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(mode.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(p.into_iter().map(|xy| Circle::new(xy, 4, color.filled())))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))
}

/// Every size and mode the options name: rows, written as they come.
fn run_all(options: &Options, settings: &Settings) -> Result<Vec<RoundRow>, String> {
    std::fs::create_dir_all(&options.out)
        .map_err(|e| format!("cannot create {}: {e}", options.out.display()))?;
    let csv_path = options.out.join("simulation.csv");
    let mut csv = std::fs::File::create(&csv_path)
        .map_err(|e| format!("cannot write {}: {e}", csv_path.display()))?;
    let write_err = |e: std::io::Error| format!("cannot write {}: {e}", csv_path.display());
    writeln!(csv, "{CSV_HEADER}").map_err(write_err)?;
    let mut rows = Vec::new();
    for &n in &options.nodes {
        if !(3..=10_000).contains(&n) {
            return Err(format!("--nodes: {n} is not in 3..=10000"));
        }
        for mode in modes_for(&options.mode, n, &settings.shard)? {
            let started = Instant::now();
            let mut sim = Simulation::new(settings.clone(), mode, n);
            for row in sim.run() {
                writeln!(csv, "{}", csv_row(&row)).map_err(write_err)?;
                rows.push(row);
            }
            eprintln!(
                "simulate: {} nodes, {}: {} rounds in {:.1} s",
                n,
                mode.name(),
                settings.rounds,
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(rows)
}

pub fn run(options: Options) -> ExitCode {
    let settings = match Settings::from_options(&options) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: simulate: {e}");
            return ExitCode::from(2);
        }
    };
    let result = run_all(&options, &settings).and_then(|rows| {
        let svg = options.out.join("simulation.svg");
        plot(&svg, &rows)?;
        println!("{}", summary_table(&rows));
        println!(
            "wrote {} and {}",
            options.out.join("simulation.csv").display(),
            svg.display()
        );
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: simulate: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        options: Options,
    }

    fn settings(args: &[&str]) -> Settings {
        let cli = Cli::parse_from(std::iter::once("simulate").chain(args.iter().copied()));
        Settings::from_options(&cli.options).unwrap()
    }

    #[test]
    fn sharded_rounds_close_agree_and_keep_per_node_bytes_near_three_deltas_with_attackers_and_churn()
     {
        let settings = settings(&["--rounds", "4", "--params", "4000"]);
        let rows = Simulation::new(settings, Mode::Sharded, 60).run();
        for row in &rows {
            assert!(row.closed, "{rows:#?}");
            assert_eq!(row.agreement, 1.0, "{rows:#?}");
            assert_eq!(
                row.attackers_kept, 0,
                "sign-flipped deltas are rejected: {rows:#?}"
            );
        }
        // Round 0: the lying aggregators are caught (their slices recomputed by backups);
        // from then on a node moves about r + 1 = 3 encoded Δ.
        assert!(rows[0].liars_caught > 0, "{rows:#?}");
        for row in &rows[1..] {
            assert!(row.max_in < 3.1 && row.max_out < 3.6, "{rows:#?}");
        }
        assert!(
            rows.last().unwrap().loss_proxy < rows[0].loss_proxy,
            "{rows:?}"
        );
    }

    #[test]
    fn full_mesh_traffic_grows_with_the_network() {
        let settings = settings(&["--rounds", "2", "--params", "2000", "--churn", "0"]);
        let small = Simulation::new(settings.clone(), Mode::FullMesh, 10).run();
        let large = Simulation::new(settings, Mode::FullMesh, 40).run();
        assert!(
            small[0].max_in > 8.0 && large[0].max_in > 35.0,
            "{small:?} {large:?}"
        );
        assert!(large[0].round_seconds > 3.0 * small[0].round_seconds);
    }

    #[test]
    fn bad_options_are_refused_with_the_flag_named() {
        let cli = Cli::parse_from(["simulate", "--codec", "top_k"]);
        let error = Settings::from_options(&cli.options).unwrap_err();
        assert!(error.starts_with("--codec"), "{error}");
        let cli = Cli::parse_from(["simulate", "--churn", "0.7"]);
        assert!(
            Settings::from_options(&cli.options)
                .unwrap_err()
                .starts_with("--churn")
        );
    }
}
