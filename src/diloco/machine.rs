//! The round state machine: which peers' deltas join the open round, when it closes, when this
//! node heals, and what happens to announcements that arrive early. Pure: every input carries the
//! clock, every output is an [`Effect`] that SyncActor carries out (fetch a blob, aggregate, fetch
//! an outer state) or a note it logs. The rules it applies are the pure decisions of
//! [`super::round`], [`super::heal`] and [`super::weight`]; this module holds the state they need
//! between inputs (the open round, early announcements, the disagreement clock, refused states,
//! reputation), so the whole round is tested without actors, sockets or sleeps.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::codec::{Codec, max_encoded_len};
use super::heal::{HealPlan, OwnState, PeerOuterState, catching_up, disagrees, heal_decision};
use super::round::{
    RoundDecision, RoundOptions, RoundProgress, RoundSummary, has_quorum, quorum, round_decision,
};
use super::sharded::{ShardRound, SliceRanges};
use super::weight::{
    self, EPSILON, Reputation, Standing, WeightRule, is_newcomer_share, newcomer_places,
    newcomer_rank,
};
use crate::aggregate::shard::{ShardOptions, ShardPlan, SliceEvidence, SliceReport};
use crate::aggregate::{Aggregate, Contribution, PreAggregation};
use crate::net::blob::BlobId;
use crate::net::wire::{RoundAnnouncement, SliceClaim};

/// θ₀ hashes whose state failed `check_adopted`, remembered so they are never fetched again.
pub const MAX_REFUSED_STATES: usize = 64;
/// Announcements kept for the next round while this one is still open.
pub const MAX_EARLY_ANNOUNCEMENTS: usize = 1024;
/// Rounds an aggregator whose report was wrong stays out: it aggregates nothing and its
/// deltas are not fetched.
pub const EXCLUDED_ROUNDS: u64 = 10;

/// A trainer peer as the network layer last heard it (its heartbeat and admission): what
/// PeerActor tells SyncActor in `TrainerPeers`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerPeer {
    pub node_id: String,
    pub peer_id: PeerId,
    /// Holds a valid membership certificate under this node's genesis.
    pub admitted: bool,
    pub round: u64,
    pub theta0_hash: String,
    pub momentum_hash: String,
}

/// The `[diloco]` settings the machine decides by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineRules {
    pub closing: RoundOptions,
    /// Who counts in heal, quorum and aggregation: admitted peers, or reputation.
    pub weight_rule: WeightRule,
    /// This node holds a valid membership certificate (what counts in a permissioned network).
    pub own_admitted: bool,
    /// β: the share of newcomer places per round (open networks), as the aggregation's f.
    pub byzantine_fraction: f64,
    /// Values in θ₀ (a delta's length).
    pub params: usize,
    /// A peer's decoded delta with a larger L2 norm is refused.
    pub max_delta_norm: f32,
    /// When rounds run sharded, and how.
    pub sharding: ShardOptions,
    /// The aggregation's pre-aggregator: one that needs whole vectors (NNM) keeps every round
    /// full mesh.
    pub pre: PreAggregation,
    /// Slice boundaries fall on multiples of this (the int8 block: parts are cut out of an
    /// encoded Δ byte for byte).
    pub slice_align: usize,
    /// How long after it starts a node listens for trainers before it closes a round: two
    /// heartbeat intervals, within which every connected peer's heartbeat arrives; and half of
    /// it after the last trainer it had not heard before.
    pub listen_first: Duration,
}

/// What SyncActor must do (or log) after an input.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Fetch `node_id`'s encoded delta of `round` from `peer` and hand it to `delta_fetched`.
    FetchDelta {
        peer: PeerId,
        node_id: String,
        round: u64,
        delta: BlobId,
        /// The announced size: a longer answer is refused before it is read.
        max_bytes: u64,
    },
    /// Aggregate these contributions (ordered by node_id), then `closed` and `advance`.
    Aggregate {
        round: u64,
        contributions: Vec<Contribution>,
    },
    /// Fetch `node_id`'s parts of `slices` (values `range` of its encoded delta) and hand them
    /// to `parts_fetched`: to aggregate them, or (`check`) to check or compute a slice.
    FetchParts {
        peer: PeerId,
        node_id: String,
        round: u64,
        delta: BlobId,
        max_bytes: u64,
        slices: SliceRanges,
        check: bool,
    },
    /// Aggregate this node's slices of a sharded round (each one's parts), serve the reports
    /// and hand them to `reports_served`.
    AggregateSlices {
        round: u64,
        inputs: Vec<(usize, Vec<Contribution>)>,
    },
    /// Fetch an aggregator's report blob and hand it to `report_fetched`.
    FetchReport {
        peer: PeerId,
        aggregator: String,
        round: u64,
        slice: usize,
        result: BlobId,
        max_bytes: u64,
    },
    /// Settle the sharded round from this evidence (`shard::settle_round`), then `excluded`,
    /// `closed` and `advance`.
    Settle {
        round: u64,
        plan: ShardPlan,
        evidence: BTreeMap<usize, SliceEvidence>,
    },
    /// Fetch θ₀ (by the plan's hash) and the momentum from `source`, check them, then
    /// `healed`, `heal_refused` or `heal_failed`.
    FetchState {
        plan: HealPlan,
        source: PeerOuterState,
    },
    /// An input left out, and why (a debug line).
    Skipped(String),
    /// A peer's delta refused, and why (a warning).
    Refused(String),
}

/// The round in progress.
#[derive(Debug, Default)]
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
    /// The aggregation is running (why it closed, how many took part); nothing joins any more.
    closing: Option<(String, usize)>,
    /// The blob id (hex) of each contribution's encoded delta, for the ledger's verdicts.
    delta_hashes: BTreeMap<String, String>,
    /// The blob of this node's own encoded delta; its uploads to peers are `bytes_sent`.
    own_delta: Option<BlobId>,
    /// The L2 norm of this node's own delta, as peers decode it.
    own_delta_norm: Option<f64>,
    bytes_sent: u64,
    bytes_received: u64,
    /// Whether this round runs sharded was decided (`plan_round`).
    mode_decided: bool,
    /// Announcements of this round that arrived before its mode was decided, the latest per
    /// node_id: considered once it is.
    undecided: BTreeMap<String, (PeerId, RoundAnnouncement)>,
    /// The sharded round, when it is one.
    shard: Option<ShardRound>,
    /// How the round was sharded, until SyncActor logs it.
    shard_note: Option<String>,
}

/// How many of `peers` carry weight (whose deltas a round waits for).
fn weighty(peers: &BTreeMap<String, PeerOuterState>) -> usize {
    peers.values().filter(|p| p.weight > EPSILON).count()
}

fn skipped(a: &RoundAnnouncement, why: &str) -> Vec<Effect> {
    vec![Effect::Skipped(format!(
        "{} round {}: {why}",
        a.node_id, a.round
    ))]
}

/// How long a node waits before its next heal after `failed_attempts` in a row: 1 s, doubling up
/// to 30 s. A source that closes every connection (it banned this node, or is gone) is not asked
/// again five times a second.
pub fn heal_backoff(failed_attempts: usize) -> Duration {
    let doublings = failed_attempts.saturating_sub(1).min(5) as u32;
    (Duration::from_secs(1) * 2u32.pow(doublings)).min(Duration::from_secs(30))
}

/// This node's view of the rounds: the open one, the outer state it is on, healing.
#[derive(Debug)]
pub struct RoundMachine {
    node_id: String,
    rules: MachineRules,
    round: u64,
    theta0_hash: String,
    /// The round and θ₀ hash this node left by its own aggregation (None after a heal: the path
    /// here is not this node's own).
    previous: Option<(u64, String)>,
    open: OpenRound,
    /// Announcements for the next round that arrived before this one closed.
    early: Vec<(PeerId, RoundAnnouncement)>,
    trainers: Vec<TrainerPeer>,
    /// A heal (fetching a heavier group's outer state) is under way.
    healing: bool,
    heal_attempts: usize,
    /// No heal starts before this, after a failed one (`heal_backoff`).
    heal_retry_at: Option<Instant>,
    /// Since when this node has disagreed with a heavier group of trainers.
    disagreeing_since: Option<Instant>,
    /// θ₀ hashes of fetched states that failed the checks: peers holding them cannot pull this
    /// node (a poisoned θ₀ is fetched once, not every tick).
    refused_states: VecDeque<String>,
    /// Rounds in which this node's aggregation kept each peer's delta (open networks' weight).
    reputation: Reputation,
    /// Why the open round waits or closed: /api/diloco's `round_state`.
    state: String,
    /// Aggregators whose reports were wrong, and the round they stay out until.
    excluded: BTreeMap<String, u64>,
    /// Until the node has listened for the network's trainers, no round closes.
    listening: Option<Listening>,
}

/// A node's first listening for the network's trainers (`RoundMachine::start_listening`).
#[derive(Debug)]
struct Listening {
    /// No round closes before this.
    until: Instant,
    /// New trainers heard do not extend it past this.
    at_most: Instant,
    /// The trainers heard so far; one not heard before extends `until`.
    heard: BTreeSet<String>,
    /// A trainer not heard before arrived since the last evaluation.
    grew: bool,
}

impl RoundMachine {
    /// A node at `round` on the θ₀ whose blob id is `theta0_hash`.
    pub fn new(node_id: String, rules: MachineRules, round: u64, theta0_hash: String) -> Self {
        Self {
            node_id,
            rules,
            round,
            theta0_hash,
            previous: None,
            open: OpenRound::default(),
            early: Vec::new(),
            trainers: Vec::new(),
            healing: false,
            heal_attempts: 0,
            heal_retry_at: None,
            disagreeing_since: None,
            refused_states: VecDeque::new(),
            reputation: Reputation::default(),
            state: "inner steps running".into(),
            excluded: BTreeMap::new(),
            listening: None,
        }
    }

    /// The node starts at `now`: its rounds close only once it has listened `listen_first` for
    /// the trainers of the network, and half of that since the last one it had not heard before
    /// (nodes still starting up keep appearing), but no longer than half the round deadline.
    /// Until then it cannot know whom a round should wait for, and nodes that closed their first
    /// rounds in groups before hearing each other would keep each other's deltas, weigh each
    /// other as established and everyone else as newcomers, and fork.
    pub fn start_listening(&mut self, now: Instant) {
        let first = self.rules.listen_first;
        self.listening = Some(Listening {
            until: now + first,
            at_most: now + first.max(self.rules.closing.deadline / 2),
            heard: BTreeSet::new(),
            grew: false,
        });
    }

    /// Whether this node still listens for the network's trainers at `now`, and how long more.
    fn listening_left(&mut self, now: Instant) -> Option<Duration> {
        let quiet = self.rules.listen_first / 2;
        let l = self.listening.as_mut()?;
        if std::mem::take(&mut l.grew) {
            l.until = l.until.max(now + quiet).min(l.at_most);
        }
        if now >= l.until {
            self.listening = None;
            return None;
        }
        Some(l.until - now)
    }

    /// The weight of the plan's members heard, and the round's quorum.
    fn members_heard(&self, peers: &BTreeMap<String, PeerOuterState>) -> (f64, f64) {
        let heard = self
            .members(peers)
            .iter()
            .fold(0.0, |sum, id| sum + self.weight_of(id, peers));
        (heard, quorum(&self.progress(peers), &self.rules.closing))
    }

    /// The members of the open round's plan: this node and the weighty trainers it hears on its
    /// round and θ₀ (or on the round and θ₀ it just left, on their way here).
    fn members(&self, peers: &BTreeMap<String, PeerOuterState>) -> Vec<String> {
        let previous = self.previous.as_ref();
        let mut members: Vec<String> = peers
            .iter()
            .filter(|(_, p)| {
                let here = p.round == self.round && p.theta0_hash == self.theta0_hash;
                let coming = previous.is_some_and(|(r, h)| p.round == *r && p.theta0_hash == *h);
                p.weight > EPSILON && (here || coming)
            })
            .map(|(id, _)| id.clone())
            .collect();
        members.push(self.node_id.clone());
        members
    }

    /// Decides, once, whether the open round runs sharded, and on which members: when the round
    /// first needs to know (this node's delta is ready, or a peer's arrived), but not before the
    /// members heard carry the round's quorum (`ready`: every node then plans on the same
    /// members, where a node that planned on a partial view would cut the deltas into other
    /// slices than its partners) unless half the deadline has passed since this node's own
    /// delta was ready (members it does not hear by then are not coming in time). A round that
    /// cannot shard runs full mesh at once. Announcements that waited for the decision are
    /// considered then.
    fn plan_round(&mut self, now: Option<Instant>) -> Vec<Effect> {
        let needed = self.open.own_ready_at.is_some() || !self.open.undecided.is_empty();
        if self.open.mode_decided || !needed {
            return Vec::new();
        }
        let waited_long = now.zip(self.open.own_ready_at).is_some_and(|(now, at)| {
            now.saturating_duration_since(at) >= self.rules.closing.deadline / 2
        });
        // While the node still listens at start it does not know the members: it plans nothing.
        if self.listening.is_some() && !waited_long {
            return Vec::new();
        }
        // After that, a round that cannot shard on every trainer heard runs full mesh whoever is
        // missing.
        let peers = self.peers();
        let may_shard =
            self.rules.pre.runs_per_slice() && self.rules.sharding.sharded(1 + weighty(&peers));
        if may_shard && !waited_long {
            let (heard, quorum) = self.members_heard(&peers);
            if heard + EPSILON < quorum {
                return Vec::new();
            }
        }
        self.open.mode_decided = true;
        let members = self.members(&peers);
        self.decide_mode(members);
        self.place_own_delta();
        std::mem::take(&mut self.open.undecided)
            .into_values()
            .flat_map(|(peer, a)| self.announced(peer, a))
            .collect()
    }

    /// The plan for `members`: sharded when they are at least `min_nodes`, unless the
    /// pre-aggregator cannot run on a slice (NNM: whole-vector distances), then full mesh, and
    /// the note says why.
    fn decide_mode(&mut self, members: Vec<String>) {
        if !self.rules.sharding.sharded(members.len()) {
            return;
        }
        if !self.rules.pre.runs_per_slice() {
            self.open.shard_note = Some(format!(
                "round {}: full mesh among {} members, not sharded: pre = \"{}\" mixes whole \
                 vectors (each input with its nearest by L2 distance), which a slice aggregator \
                 does not have",
                self.round,
                members.len(),
                self.rules.pre.name()
            ));
            return;
        }
        let plan = ShardPlan::new(
            self.round,
            &self.theta0_hash,
            &members,
            self.rules.params,
            self.rules.sharding.redundancy,
        )
        .aligned(self.rules.slice_align);
        let shard = ShardRound::new(self.node_id.clone(), plan);
        self.open.shard_note = Some(format!(
            "round {}: sharded among {} members (plan {}), aggregating slices {:?}",
            self.round,
            members.len(),
            &shard.plan_id()[..8],
            shard.my_ranges().iter().map(|(s, _)| s).collect::<Vec<_>>()
        ));
        self.open.shard = Some(shard);
    }

    /// A sharded round keeps this node's own Δ with the shard (its parts); the contribution's
    /// entry stays, empty, to mark it in.
    fn place_own_delta(&mut self) {
        let (Some(shard), Some(own)) = (
            self.open.shard.as_mut(),
            self.open.contributions.get_mut(&self.node_id),
        ) else {
            return;
        };
        if !own.delta.is_empty() {
            shard.own_delta(Arc::new(std::mem::take(&mut own.delta)));
            own.int8 = None;
        }
    }

    /// The aggregators of `slice` in the open round's shard plan (none when it runs full mesh).
    pub fn slice_group(&self, slice: usize) -> Vec<String> {
        self.open.shard.as_ref().map_or_else(Vec::new, |s| {
            s.plan()
                .group(slice)
                .into_iter()
                .map(String::from)
                .collect()
        })
    }

    /// How the open round was sharded (members, plan, own slices), once: for the log.
    pub fn take_shard_note(&mut self) -> Option<String> {
        self.open.shard_note.take()
    }

    /// The claims this node's announcement carries (its served reports of a sharded round).
    pub fn own_claims(&self) -> Vec<SliceClaim> {
        self.open
            .shard
            .as_ref()
            .map(ShardRound::own_claims)
            .unwrap_or_default()
    }

    /// Aggregators whose reports were wrong: out of the next [`EXCLUDED_ROUNDS`] rounds.
    pub fn exclude(&mut self, wrong: &[String]) {
        for id in wrong {
            self.excluded
                .insert(id.clone(), self.round + EXCLUDED_ROUNDS);
        }
    }

    pub fn round(&self) -> u64 {
        self.round
    }

    /// The open round's whole peer deltas in hand (a sharded round holds parts: none).
    pub fn peer_deltas(&self) -> impl Iterator<Item = &[f32]> {
        self.open
            .contributions
            .values()
            .filter(|c| c.node_id != self.node_id && !c.delta.is_empty())
            .map(|c| c.delta.as_slice())
    }

    /// The trainer peers that carry weight for this node (whose deltas a round waits for).
    pub fn weighty_peers(&self) -> usize {
        weighty(&self.peers())
    }

    pub fn theta0_hash(&self) -> &str {
        &self.theta0_hash
    }

    /// This node's delta of the open round is out (its error-feedback residual holds this
    /// round's error already).
    pub fn own_delta_out(&self) -> bool {
        self.open.own_ready_at.is_some()
    }

    /// Why the open round waits, or why the last one closed.
    pub fn state(&self) -> &str {
        &self.state
    }

    /// The trainer peers as the network layer last heard them.
    pub fn trainers_heard(&mut self, trainers: Vec<TrainerPeer>) {
        if let Some(l) = &mut self.listening {
            for t in &trainers {
                l.grew |= l.heard.insert(t.node_id.clone());
            }
        }
        self.trainers = trainers;
    }

    fn own_weight(&self) -> f64 {
        weight::own_weight(self.rules.weight_rule, self.rules.own_admitted)
    }

    /// The trainer peers' outer states and weights, by node_id.
    fn peers(&self) -> BTreeMap<String, PeerOuterState> {
        let standings: Vec<Standing> = self
            .trainers
            .iter()
            .map(|t| Standing {
                node_id: t.node_id.clone(),
                admitted: t.admitted,
            })
            .collect();
        let weights = weight::weights(self.rules.weight_rule, &self.reputation, &standings);
        self.trainers
            .iter()
            .zip(weights)
            .map(|(t, weight)| {
                // An excluded aggregator counts for nothing: not expected, not fetched, and it
                // cannot pull anyone to its state.
                let weight = if self.excluded.contains_key(&t.node_id) {
                    0.0
                } else {
                    weight
                };
                let state = PeerOuterState {
                    peer_id: t.peer_id.to_string(),
                    round: t.round,
                    theta0_hash: t.theta0_hash.clone(),
                    momentum_hash: t.momentum_hash.clone(),
                    weight,
                };
                (t.node_id.clone(), state)
            })
            .collect()
    }

    /// What every node counts for now, this one included (whose verdicts settle proofs).
    pub fn weights(&self) -> BTreeMap<String, f64> {
        let mut weights: BTreeMap<String, f64> = self
            .peers()
            .into_iter()
            .map(|(id, p)| (id, p.weight))
            .collect();
        weights.insert(self.node_id.clone(), self.own_weight());
        weights
    }

    /// The weight of a contributor of this round: this node's own, or a peer's (0 for an
    /// identity this node has no standing for).
    fn weight_of(&self, node_id: &str, peers: &BTreeMap<String, PeerOuterState>) -> f64 {
        if node_id == self.node_id {
            return self.own_weight();
        }
        peers.get(node_id).map_or(0.0, |p| p.weight)
    }

    /// This node's H inner steps are done: its delta (`own`, decoded as peers will decode it,
    /// with its codes when it went out as int8: [`Contribution::decoded`]) is served as blob
    /// `blob`.
    pub fn own_delta(&mut self, now: Instant, own: Contribution, blob: BlobId) -> Vec<Effect> {
        debug_assert_eq!(own.node_id, self.node_id, "own delta under another id");
        self.open.own_ready_at = Some(now);
        self.open.own_delta = Some(blob);
        self.open.own_delta_norm = Some(crate::aggregate::norm(&own.delta));
        self.open
            .delta_hashes
            .insert(self.node_id.clone(), blob.to_string());
        self.open.contributions.insert(self.node_id.clone(), own);
        self.place_own_delta();
        self.evaluate(now)
    }

    /// A blob was uploaded to a peer: counts when it is this round's own delta (a peer's retry
    /// counts again: it was sent).
    pub fn blob_served(&mut self, blob: BlobId, bytes: u64) {
        let own_report = self
            .open
            .shard
            .as_ref()
            .is_some_and(|s| s.is_own_report(&blob));
        if self.open.own_delta == Some(blob) || own_report {
            self.open.bytes_sent += bytes;
        }
    }

    /// A peer's announcement: fetch its delta if it belongs to this round and θ₀ and its sender
    /// carries weight (of an open network's newcomers, only the round's few newcomer places).
    pub fn announced(&mut self, peer: PeerId, a: RoundAnnouncement) -> Vec<Effect> {
        if a.node_id == self.node_id {
            return Vec::new();
        }
        let this_round = a.round == self.round && a.theta0_hash == self.theta0_hash;
        if this_round && !self.open.mode_decided && self.open.closing.is_none() {
            let known = self.open.undecided.contains_key(&a.node_id);
            if known || self.open.undecided.len() < MAX_EARLY_ANNOUNCEMENTS {
                self.open.undecided.insert(a.node_id.clone(), (peer, a));
            }
            return self.plan_round(None);
        }
        let mut effects = Vec::new();
        if this_round
            && !a.claims.is_empty()
            && let Some(shard) = &mut self.open.shard
        {
            effects = shard.claimed(a.round, &a.node_id, peer, &a.claims);
        }
        effects.extend(self.announced_delta(peer, a));
        effects
    }

    /// The delta part of an announcement: fetched (or its parts, in a sharded round) if it
    /// belongs to this round and θ₀ and its sender carries weight.
    fn announced_delta(&mut self, peer: PeerId, a: RoundAnnouncement) -> Vec<Effect> {
        if a.round > self.round || (a.round == self.round && self.open.closing.is_some()) {
            if a.round <= self.round + 1 && self.early.len() < MAX_EARLY_ANNOUNCEMENTS {
                self.early.push((peer, a));
            }
            return Vec::new();
        }
        if a.round < self.round {
            return skipped(
                &a,
                &format!("late delta dropped (this node is at round {})", self.round),
            );
        }
        if a.theta0_hash != self.theta0_hash {
            return skipped(&a, "delta from another θ₀ left out");
        }
        if self.open.contributions.contains_key(&a.node_id)
            || self.open.pending.contains(&a.node_id)
        {
            return Vec::new();
        }
        let Some(delta) = BlobId::from_hex(&a.delta_hash) else {
            return skipped(&a, "announced delta hash is not a blob id");
        };
        let longest = Codec::from_name(&a.codec).map(|c| max_encoded_len(c, self.rules.params));
        if longest.is_none_or(|longest| a.delta_bytes > longest) {
            return skipped(
                &a,
                &format!(
                    "delta left out: codec {:?} of {} bytes is unknown or longer than it makes for this model",
                    a.codec, a.delta_bytes
                ),
            );
        }
        let peers = self.peers();
        let weight = self.weight_of(&a.node_id, &peers);
        if weight <= EPSILON {
            return skipped(&a, "delta of an identity without weight left out");
        }
        if is_newcomer_share(weight) && !self.newcomer_place(&a.node_id, &peers) {
            return skipped(
                &a,
                "newcomer's delta left out: the round's newcomer places are taken",
            );
        }
        if let Some(shard) = &mut self.open.shard {
            shard.source(&a.node_id, peer, delta, a.delta_bytes);
            self.open
                .delta_hashes
                .insert(a.node_id.clone(), a.delta_hash.clone());
            // Every member aggregates r ≥ 2 slices (`min_nodes` > `redundancy`).
            let slices = shard.my_ranges();
            self.open.pending.insert(a.node_id.clone());
            return vec![Effect::FetchParts {
                peer,
                node_id: a.node_id,
                round: a.round,
                delta,
                max_bytes: a.delta_bytes,
                slices,
                check: false,
            }];
        }
        self.open.pending.insert(a.node_id.clone());
        vec![Effect::FetchDelta {
            peer,
            node_id: a.node_id,
            round: a.round,
            delta,
            max_bytes: a.delta_bytes,
        }]
    }

    /// A contributor's parts of this node's slices are in: it counts for the round's close.
    fn parts_in(&mut self, now: Instant, node_id: &str) -> Vec<Effect> {
        self.open.contributions.insert(
            node_id.to_string(),
            Contribution::new(node_id.to_string(), Vec::new()),
        );
        self.evaluate(now)
    }

    /// A fetch of `FetchParts` ended: the encoded parts of `slices` (in order), or why not.
    pub fn parts_fetched(
        &mut self,
        now: Instant,
        round: u64,
        node_id: &str,
        slices: &[usize],
        check: bool,
        fetched: Result<Vec<Arc<Vec<u8>>>, String>,
    ) -> Vec<Effect> {
        let max_norm = self.rules.max_delta_norm;
        if self.round != round {
            return Vec::new();
        }
        let Some(shard) = self.open.shard.as_mut() else {
            return Vec::new();
        };
        if !check && !self.open.pending.remove(node_id) {
            return Vec::new(); // the round closed without it
        }
        let stored = fetched.and_then(|parts| {
            self.open.bytes_received += parts.iter().map(|p| p.len() as u64).sum::<u64>();
            shard.parts_arrived(node_id, slices, &parts, max_norm)
        });
        let mut effects = Vec::new();
        if let Err(e) = &stored {
            effects.push(Effect::Refused(format!(
                "{node_id} round {round}: parts: {e}"
            )));
        }
        if check {
            shard.check_done(node_id, slices);
            effects.extend(self.settling(now));
        } else if stored.is_ok() {
            effects.extend(self.parts_in(now, node_id));
        } else {
            effects.extend(self.evaluate(now));
        }
        effects
    }

    /// This node's reports of its slices are served (`AggregateSlices`): it claims them, and
    /// the round settles.
    pub fn reports_served(
        &mut self,
        now: Instant,
        round: u64,
        reports: Vec<(SliceReport, BlobId, u64)>,
    ) -> Vec<Effect> {
        if self.round != round {
            return Vec::new();
        }
        match self.open.shard.as_mut() {
            Some(shard) => {
                shard.reported(now, reports);
                self.settling(now)
            }
            None => Vec::new(),
        }
    }

    /// A `FetchReport` ended.
    pub fn report_fetched(
        &mut self,
        now: Instant,
        round: u64,
        slice: usize,
        result: BlobId,
        fetched: Result<Arc<Vec<u8>>, String>,
    ) -> Vec<Effect> {
        let max_norm = self.rules.max_delta_norm;
        if self.round != round {
            return Vec::new();
        }
        let Some(shard) = self.open.shard.as_mut() else {
            return Vec::new();
        };
        if let Ok(bytes) = &fetched {
            self.open.bytes_received += bytes.len() as u64;
        }
        let mut effects = shard.report_arrived(round, slice, result, fetched, max_norm);
        effects.extend(self.settling(now));
        effects
    }

    /// The sharded round's settling step at `now`.
    fn settling(&mut self, now: Instant) -> Vec<Effect> {
        let (round, closing) = (self.round, self.rules.closing);
        match &mut self.open.shard {
            Some(shard) => shard.next(now, round, closing.straggler_grace, closing.deadline),
            None => Vec::new(),
        }
    }

    /// Whether a newcomer (open networks) gets one of the round's newcomer places: ⌊β·n⌋ of
    /// them (at least one), given in the order of `newcomer_rank`, so every node takes the same
    /// newcomers and a thousand fresh keys take no more places than one. A better-ranked newcomer
    /// displaces the worst one holding a place.
    fn newcomer_place(&mut self, node_id: &str, peers: &BTreeMap<String, PeerOuterState>) -> bool {
        let places = self.newcomer_places(peers);
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

    /// The round's newcomer places: ⌊β·n⌋ of the full-weight contributors at this round (this
    /// node included), at least one.
    fn newcomer_places(&self, peers: &BTreeMap<String, PeerOuterState>) -> usize {
        let established = 1 + peers
            .values()
            .filter(|p| p.round == self.round && p.weight >= 1.0 - EPSILON)
            .count();
        newcomer_places(established, self.rules.byzantine_fraction)
    }

    /// The weight a round can take: this node's, the full-weight peers', and of the newcomers'
    /// shares only as many as the round has newcomer places. A round cannot take more newcomers,
    /// so it must not wait (the straggler grace, every round) for deltas it will never fetch.
    fn expected_weight(&self, peers: &BTreeMap<String, PeerOuterState>) -> f64 {
        let (newcomers, full): (Vec<f64>, Vec<f64>) = peers
            .values()
            .map(|p| p.weight)
            .partition(|w| is_newcomer_share(*w));
        let places = self.newcomer_places(peers);
        let taken = newcomers.iter().take(places);
        full.iter()
            .chain(taken)
            .fold(self.own_weight(), |sum, w| sum + w)
    }

    /// A fetch of `FetchDelta` ended: the encoded bytes, or why not. A delta that decodes and
    /// passes the checks (length, finite, norm) joins the round, if the round still waits for it.
    pub fn delta_fetched(
        &mut self,
        now: Instant,
        round: u64,
        node_id: &str,
        delta_hash: &str,
        fetched: Result<Arc<Vec<u8>>, String>,
    ) -> Vec<Effect> {
        if self.round != round || !self.open.pending.remove(node_id) {
            return Vec::new(); // the round closed without it
        }
        let decoded = fetched.and_then(|bytes| {
            self.open.bytes_received += bytes.len() as u64;
            Contribution::decoded(node_id, bytes, self.rules.params, self.rules.max_delta_norm)
                .map_err(|e| e.to_string())
        });
        let mut effects = match decoded {
            Ok(contribution) => {
                self.open
                    .delta_hashes
                    .insert(node_id.to_string(), delta_hash.to_string());
                self.open
                    .contributions
                    .insert(node_id.to_string(), contribution);
                Vec::new()
            }
            Err(e) => vec![Effect::Refused(format!("{node_id} round {round}: {e}"))],
        };
        effects.extend(self.evaluate(now));
        effects
    }

    /// The clock: heal when a heavier group holds another state, close the round when
    /// `round_decision` says so.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        let mut effects = self.check_heal(now);
        effects.extend(self.evaluate(now));
        effects.extend(self.settling(now));
        effects
    }

    /// Where the open round stands, in weight (contributions in hand, in flight and expected:
    /// this node and every live trainer peer, whatever round it claims).
    fn progress(&self, peers: &BTreeMap<String, PeerOuterState>) -> RoundProgress {
        // A fold from +0.0: an empty f64 sum is −0.0, which the reasons would print.
        let weight_of = |ids: &mut dyn Iterator<Item = &String>| -> f64 {
            ids.fold(0.0, |sum, id| sum + self.weight_of(id, peers))
        };
        RoundProgress {
            own_ready_at: self.open.own_ready_at,
            contributions: weight_of(&mut self.open.contributions.keys()),
            pending: weight_of(&mut self.open.pending.iter()),
            expected: self.expected_weight(peers),
            quorum_since: self.open.quorum_since,
        }
    }

    /// Closes the round when `round_decision` says so (weights of the contributions in hand,
    /// in flight and expected: this node and every live trainer peer, whatever round it claims).
    fn evaluate(&mut self, now: Instant) -> Vec<Effect> {
        if self.open.closing.is_some() || self.healing {
            return Vec::new();
        }
        let listening = self.listening_left(now);
        let effects = self.plan_round(Some(now));
        if let Some(left) = listening
            && self.open.own_ready_at.is_some()
        {
            self.state = format!(
                "round {}: listening for the network's trainers {:.1} s more before closing",
                self.round,
                left.as_secs_f64()
            );
            return effects;
        }
        let peers = self.peers();
        let mut progress = self.progress(&peers);
        if self.open.own_ready_at.is_some() && has_quorum(&progress, &self.rules.closing) {
            progress.quorum_since = Some(*self.open.quorum_since.get_or_insert(now));
        }
        match round_decision(now, &progress, &self.rules.closing) {
            RoundDecision::Wait(why) => {
                self.state = format!("round {}: waiting: {why}", self.round);
                if !self.open.mode_decided {
                    let (heard, quorum) = self.members_heard(&peers);
                    self.state.push_str(&format!(
                        "; its plan waits for members: weight {heard:.2} heard of {quorum:.2}"
                    ));
                }
                effects
            }
            RoundDecision::Close(why) => {
                self.state = format!("round {}: closing: {why}", self.round);
                let contributions: Vec<Contribution> = std::mem::take(&mut self.open.contributions)
                    .into_values()
                    .collect();
                self.open.closing = Some((why, contributions.len()));
                if let Some(shard) = &self.open.shard {
                    let ids: Vec<String> = contributions.into_iter().map(|c| c.node_id).collect();
                    return vec![Effect::AggregateSlices {
                        round: self.round,
                        inputs: shard.inputs(&ids),
                    }];
                }
                vec![Effect::Aggregate {
                    round: self.round,
                    contributions,
                }]
            }
        }
    }

    /// The round's aggregation ended: `Ok` with the (checked) aggregate the outer step applies
    /// and its L2 norm, or why θ₀ stays. Returns what /api/diloco shows of the round and the blob ids of the
    /// contributions (for the ledger's verdicts); the kept contributors gain reputation.
    pub fn closed(
        &mut self,
        now: Instant,
        outcome: Result<(&Aggregate, f64), String>,
    ) -> (RoundSummary, BTreeMap<String, String>) {
        let (why, participants) = self.open.closing.clone().unwrap_or_default();
        let round = self.round;
        let sync_seconds = self.open.own_ready_at.map_or(0.0, |ready| {
            now.saturating_duration_since(ready).as_secs_f64()
        });
        let mut summary = RoundSummary {
            round,
            participants,
            kept: Vec::new(),
            rejected: Vec::new(),
            rule: String::new(),
            reason: String::new(),
            bytes_sent: self.open.bytes_sent,
            bytes_received: self.open.bytes_received,
            sync_seconds,
            delta_norm: self.open.own_delta_norm,
            aggregate_norm: None,
        };
        match outcome {
            Ok((aggregate, norm)) => {
                summary.aggregate_norm = Some(norm);
                let (kept, rejected): (Vec<_>, Vec<_>) =
                    aggregate.verdicts.iter().partition(|v| v.kept);
                // Reputation is what peers earned in this node's eyes; its own delta being kept
                // says nothing, and counting it would end the bootstrap (everyone 1) before any
                // peer is established.
                let own = self.node_id.as_str();
                self.reputation.record_kept(
                    kept.iter()
                        .map(|v| v.node_id.as_str())
                        .filter(|id| *id != own),
                );
                summary.kept = kept.iter().map(|v| v.node_id.clone()).collect();
                summary.rejected = rejected.iter().map(|v| v.node_id.clone()).collect();
                summary.rule = aggregate.rule_used.name().to_string();
                summary.reason = format!(
                    "round {round} closed ({why}); {} of {participants} kept by {}: {}; outer step applied",
                    kept.len(),
                    aggregate.rule_used.name(),
                    aggregate.reason
                );
            }
            Err(error) => {
                summary.reason = format!("round {round} closed ({why}) but not applied: {error}");
            }
        }
        self.state = summary.reason.clone();
        (summary, std::mem::take(&mut self.open.delta_hashes))
    }

    /// The outer step is applied (or θ₀ stayed): the next round starts on `theta0_hash`, and
    /// the announcements that arrived early are considered again.
    pub fn advance(&mut self, theta0_hash: String) -> Vec<Effect> {
        let left = std::mem::replace(&mut self.theta0_hash, theta0_hash);
        self.previous = Some((self.round, left));
        self.round += 1;
        self.open = OpenRound::default();
        let round = self.round;
        self.excluded.retain(|_, until| *until > round);
        self.state = format!("round {}: inner steps running", self.round);
        std::mem::take(&mut self.early)
            .into_iter()
            .flat_map(|(peer, a)| self.announced(peer, a))
            .collect()
    }

    /// Starts a heal when `heal_decision` says a heavier group holds another outer state.
    fn check_heal(&mut self, now: Instant) -> Vec<Effect> {
        // Not while an aggregation is in flight: its outer step would land on the healed θ₀.
        if self.healing
            || self.open.closing.is_some()
            || self.theta0_hash.is_empty()
            || self.heal_retry_at.is_some_and(|at| now < at)
        {
            return Vec::new();
        }
        let previous = self.previous.as_ref().map(|(r, h)| (*r, h.as_str()));
        let candidates = self
            .peers()
            .into_values()
            .filter(|p| !self.refused_states.contains(&p.theta0_hash))
            .collect();
        let peers = catching_up(candidates, self.round, &self.theta0_hash, previous);
        let own = OwnState {
            round: self.round,
            theta0_hash: &self.theta0_hash,
            weight: self.own_weight(),
        };
        if !disagrees(own, &peers) {
            self.disagreeing_since = None;
            return Vec::new();
        }
        let since = *self.disagreeing_since.get_or_insert(now);
        let Some(plan) = heal_decision(now, own, &peers, Some(since)) else {
            return Vec::new();
        };
        // Successive attempts try the group's peers in turn.
        let source = plan.sources[self.heal_attempts % plan.sources.len()].clone();
        self.heal_attempts += 1;
        self.healing = true;
        self.state = format!("healing: {}", plan.reason);
        vec![Effect::FetchState { plan, source }]
    }

    /// The heal's fetch failed (the source left, a transfer error): it is tried again from the
    /// group's next peer after `heal_backoff`.
    pub fn heal_failed(&mut self, now: Instant) {
        self.healing = false;
        self.heal_retry_at = Some(now + heal_backoff(self.heal_attempts));
    }

    /// The fetched state of `theta0_hash` failed `check_adopted`: its holders cannot pull this
    /// node any more.
    pub fn heal_refused(&mut self, theta0_hash: String) {
        self.healing = false;
        self.disagreeing_since = None;
        self.refused_states.push_back(theta0_hash);
        if self.refused_states.len() > MAX_REFUSED_STATES {
            self.refused_states.pop_front();
        }
    }

    /// The heavier group's state is adopted: this node is at `round` on `theta0_hash`, and the
    /// round it was in is abandoned (its deltas belong to another θ₀).
    pub fn healed(&mut self, round: u64, theta0_hash: String) {
        self.round = round;
        self.theta0_hash = theta0_hash;
        // The round this node left is not on the path to the adopted θ₀.
        self.previous = None;
        self.open = OpenRound::default();
        self.early.clear();
        self.healing = false;
        self.heal_attempts = 0;
        self.heal_retry_at = None;
        self.disagreeing_since = None;
        self.state = format!("round {round}: healed; inner steps running");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::aggregate::{AggregationConfig, Rule, aggregate};
    use crate::diloco::codec::{CodecConfig, encode};
    use crate::diloco::weight::ESTABLISHED_AFTER;

    /// fp32 deltas (the default is int8).
    fn exact() -> CodecConfig {
        CodecConfig {
            codec: Codec::Fp32,
            ..CodecConfig::default()
        }
    }

    const OPTIONS: RoundOptions = RoundOptions {
        min_peers: 1,
        quorum_fraction: 0.75,
        deadline: Duration::from_secs(60),
        straggler_grace: Duration::from_secs(15),
    };

    fn rules(weight_rule: WeightRule) -> MachineRules {
        MachineRules {
            closing: OPTIONS,
            weight_rule,
            own_admitted: true,
            byzantine_fraction: 0.2,
            params: 4,
            max_delta_norm: 100.0,
            sharding: ShardOptions::default(),
            pre: PreAggregation::None,
            slice_align: 1,
            listen_first: Duration::ZERO,
        }
    }

    fn machine(weight_rule: WeightRule) -> RoundMachine {
        RoundMachine::new("me".into(), rules(weight_rule), 3, hash_of(&[0.0; 4]))
    }

    fn hash_of(values: &[f32]) -> String {
        BlobId::of(bytemuck::cast_slice(values)).to_string()
    }

    fn trainer(node_id: &str, round: u64, theta0_hash: &str) -> TrainerPeer {
        TrainerPeer {
            node_id: node_id.into(),
            peer_id: PeerId::random(),
            admitted: true,
            round,
            theta0_hash: theta0_hash.into(),
            momentum_hash: hash_of(&[0.0; 4]),
        }
    }

    fn announcement(
        node_id: &str,
        round: u64,
        theta0_hash: &str,
        delta: &[u8],
    ) -> RoundAnnouncement {
        RoundAnnouncement {
            node_id: node_id.into(),
            round,
            theta0_hash: theta0_hash.into(),
            delta_hash: BlobId::of(delta).to_string(),
            delta_bytes: delta.len() as u64,
            codec: "fp32".into(),
            tokens: 0,
            sent_at_ms: 0,
            claims: Vec::new(),
        }
    }

    fn encoded(values: &[f32]) -> Vec<u8> {
        encode(&exact(), values)
    }

    fn fetches(effects: &[Effect]) -> Vec<&str> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::FetchDelta { node_id, .. } => Some(node_id.as_str()),
                _ => None,
            })
            .collect()
    }

    fn aggregation(effects: &[Effect]) -> Option<Vec<String>> {
        effects.iter().find_map(|e| match e {
            Effect::Aggregate { contributions, .. } => {
                Some(contributions.iter().map(|c| c.node_id.clone()).collect())
            }
            _ => None,
        })
    }

    /// A permissioned node at round 3 that knows one admitted trainer peer, "p1", on its θ₀.
    fn with_one_peer() -> (RoundMachine, PeerId, String) {
        let mut m = machine(WeightRule::Permissioned);
        let theta0 = m.theta0_hash().to_string();
        let peer = trainer("p1", 3, &theta0);
        let peer_id = peer.peer_id;
        m.trainers_heard(vec![peer]);
        (m, peer_id, theta0)
    }

    fn own_blob() -> BlobId {
        BlobId::of(b"own")
    }

    #[test]
    fn a_round_fetches_announced_deltas_and_closes_when_every_expected_trainer_is_in() {
        let t0 = Instant::now();
        let (mut m, peer_id, theta0) = with_one_peer();

        let bytes = encoded(&[1.0, 0.0, 0.0, 0.0]);
        let effects = m.announced(peer_id, announcement("p1", 3, &theta0, &bytes));
        assert_eq!(fetches(&effects), ["p1"]);
        // The same announcement again (re-announced every 2 s) fetches nothing more.
        assert!(
            m.announced(peer_id, announcement("p1", 3, &theta0, &bytes))
                .is_empty()
        );

        assert_eq!(
            aggregation(&m.own_delta(t0, Contribution::new("me", vec![0.5; 4]), own_blob())),
            None
        );
        assert!(m.state().contains("waiting"), "{}", m.state());
        let hash = BlobId::of(&bytes).to_string();
        let effects = m.delta_fetched(t0, 3, "p1", &hash, Ok(Arc::new(bytes)));
        assert_eq!(aggregation(&effects), Some(vec!["me".into(), "p1".into()]));
        assert!(m.state().contains("all of 2.00 expected"), "{}", m.state());
        // Nothing joins a closing round; the next round's announcement waits for it.
        let next = announcement("p1", 4, "next", &[1]);
        assert!(m.announced(peer_id, next).is_empty());
    }

    /// Permissioned rules for 8 parameters, sharded from `min_nodes` members with redundancy 2.
    fn sharding_rules(min_nodes: usize) -> MachineRules {
        MachineRules {
            params: 8,
            sharding: ShardOptions {
                redundancy: 2,
                min_nodes,
            },
            ..rules(WeightRule::Permissioned)
        }
    }

    /// A node at round 3 under `rules` (not hearing anyone yet), its three admitted trainer
    /// peers p1–p3 on its θ₀, and that θ₀'s hash.
    fn three_peers_of(rules: MachineRules) -> (RoundMachine, Vec<TrainerPeer>, String) {
        let theta0 = hash_of(&[0.0; 8]);
        let m = RoundMachine::new("me".into(), rules, 3, theta0.clone());
        let peers = ["p1", "p2", "p3"]
            .iter()
            .map(|id| trainer(id, 3, &theta0))
            .collect();
        (m, peers, theta0)
    }

    #[test]
    fn a_round_plans_its_shards_only_once_it_hears_the_members_its_quorum_needs() {
        let t0 = Instant::now();
        let rules = MachineRules {
            closing: RoundOptions {
                min_peers: 4,
                ..OPTIONS
            },
            ..sharding_rules(3)
        };
        let (mut m, peers, theta0) = three_peers_of(rules);
        // Two of the three peers heard: a plan now would shard among three members, where the
        // others shard among four.
        m.trainers_heard(peers[..2].to_vec());
        let bytes = encoded(&[0.5; 8]);
        let p1 = announcement("p1", 3, &theta0, &bytes);
        assert!(m.announced(peers[0].peer_id, p1).is_empty());
        assert!(
            m.own_delta(t0, Contribution::new("me", vec![0.1; 8]), own_blob())
                .is_empty()
        );
        assert!(m.open.shard.is_none());
        assert!(
            m.state()
                .contains("its plan waits for members: weight 3.00 heard of 4.00"),
            "{}",
            m.state()
        );

        // The third is heard: the plan takes all four, and p1's waiting announcement fetches
        // this node's slices of its delta.
        m.trainers_heard(peers.clone());
        let effects = m.tick(t0 + Duration::from_secs(1));
        let shard = m.open.shard.as_ref().expect("4 members ≥ min_nodes");
        assert_eq!(shard.plan().members().len(), 4);
        assert_eq!(shard.plan().slices(), 4);
        assert!(
            matches!(&effects[..], [Effect::FetchParts { node_id, .. }] if node_id == "p1"),
            "{effects:?}"
        );

        // A member never heard does not hold the plan past half the deadline: the round plans
        // on those it hears, in time to fetch their deltas.
        let (mut m, ..) = three_peers_of(rules);
        m.trainers_heard(peers[..2].to_vec());
        m.own_delta(t0, Contribution::new("me", vec![0.1; 8]), own_blob());
        assert!(m.tick(t0 + OPTIONS.deadline / 3).is_empty());
        assert!(m.open.shard.is_none() && !m.open.mode_decided);
        m.tick(t0 + OPTIONS.deadline / 2);
        let shard = m.open.shard.as_ref().expect("3 members ≥ min_nodes");
        assert_eq!(shard.plan().members().len(), 3);

        // With fewer trainers heard than sharding needs, the round runs full mesh at once.
        let (mut m, ..) = three_peers_of(rules);
        m.trainers_heard(peers[..1].to_vec());
        let p1 = announcement("p1", 3, &theta0, &bytes);
        assert_eq!(fetches(&m.announced(peers[0].peer_id, p1)), ["p1"]);
    }

    #[test]
    fn a_node_listens_for_the_networks_trainers_before_it_closes_its_first_round() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let rules = MachineRules {
            listen_first: Duration::from_secs(20),
            ..rules(WeightRule::Permissioned)
        };
        let mut m = RoundMachine::new("me".into(), rules, 3, hash_of(&[0.0; 4]));
        m.start_listening(t0);
        // Alone, with min_peers 1, the round would close on its own delta at once.
        let own = m.own_delta(at(2), Contribution::new("me", vec![0.5; 4]), own_blob());
        assert_eq!(aggregation(&own), None);
        assert!(m.state().contains("listening"), "{}", m.state());
        // Peers heard meanwhile: their announcements wait until the node knows the members.
        let theta0 = m.theta0_hash().to_string();
        let (p1, p2) = (trainer("p1", 3, &theta0), trainer("p2", 3, &theta0));
        let bytes = encoded(&[1.0, 0.0, 0.0, 0.0]);
        m.trainers_heard(vec![p1.clone()]);
        assert!(
            m.announced(p1.peer_id, announcement("p1", 3, &theta0, &bytes))
                .is_empty()
        );
        assert!(m.tick(at(5)).is_empty());
        // Another trainer is heard late (nodes still starting): listening goes on half of
        // listen_first after it, until 28 s.
        m.trainers_heard(vec![p1.clone(), p2.clone()]);
        assert!(m.tick(at(18)).is_empty());
        assert!(
            m.announced(p2.peer_id, announcement("p2", 3, &theta0, &bytes))
                .is_empty()
        );
        assert!(m.tick(at(27)).is_empty(), "listening until 28 s");
        let mut fetched = fetches(&m.tick(at(28)))
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        fetched.sort();
        assert_eq!(fetched, ["p1", "p2"]);
        let hash = BlobId::of(&bytes).to_string();
        let one = m.delta_fetched(at(29), 3, "p1", &hash, Ok(Arc::new(bytes.clone())));
        assert_eq!(aggregation(&one), None);
        let both = m.delta_fetched(at(29), 3, "p2", &hash, Ok(Arc::new(bytes)));
        assert_eq!(
            aggregation(&both),
            Some(vec!["me".into(), "p1".into(), "p2".into()])
        );
    }

    #[test]
    fn a_closed_round_reports_its_verdicts_and_considers_early_announcements_on_the_new_theta0() {
        let t0 = Instant::now();
        let (mut m, peer_id, theta0) = with_one_peer();
        let bytes = encoded(&[1.0, 0.0, 0.0, 0.0]);
        let hash = BlobId::of(&bytes).to_string();
        m.announced(peer_id, announcement("p1", 3, &theta0, &bytes));
        m.own_delta(t0, Contribution::new("me", vec![0.5; 4]), own_blob());
        let effects = m.delta_fetched(t0, 3, "p1", &hash, Ok(Arc::new(bytes)));
        let Some(Effect::Aggregate { contributions, .. }) = effects.into_iter().last() else {
            panic!("the round should close");
        };
        let next = hash_of(&[0.1; 4]);
        m.announced(peer_id, announcement("p1", 4, &next, &encoded(&[2.0; 4])));

        let config = AggregationConfig {
            rule: Rule::Mean,
            ..AggregationConfig::default()
        };
        let aggregate = aggregate(&config, 3, &contributions).unwrap();
        let (summary, delta_hashes) = m.closed(t0 + Duration::from_secs(2), Ok((&aggregate, 1.0)));
        assert_eq!((summary.round, summary.participants), (3, 2));
        assert_eq!(summary.kept, ["me", "p1"]);
        assert_eq!(summary.aggregate_norm, Some(1.0));
        assert!(
            summary.reason.contains("all of 2.00 expected"),
            "{}",
            summary.reason
        );
        assert_eq!(summary.sync_seconds, 2.0);
        assert_eq!(delta_hashes.get("p1"), Some(&hash));

        let effects = m.advance(next);
        assert_eq!(m.round(), 4);
        assert_eq!(
            fetches(&effects),
            ["p1"],
            "the early announcement is fetched now"
        );
    }

    #[test]
    fn announcements_of_other_rounds_states_and_identities_without_weight_are_left_out() {
        let mut m = machine(WeightRule::Permissioned);
        let theta0 = m.theta0_hash().to_string();
        let mut stranger = trainer("stranger", 3, &theta0);
        stranger.admitted = false;
        let (peer_id, stranger_id) = (PeerId::random(), stranger.peer_id);
        m.trainers_heard(vec![trainer("p1", 3, &theta0), stranger]);
        let skipped = |effects: Vec<Effect>| match effects.as_slice() {
            [Effect::Skipped(why)] => why.clone(),
            other => panic!("expected one skip, got {other:?}"),
        };
        assert!(
            skipped(m.announced(peer_id, announcement("p1", 2, &theta0, &[1]))).contains("late")
        );
        assert!(
            skipped(m.announced(peer_id, announcement("p1", 3, "other", &[1])))
                .contains("another θ₀")
        );
        let why = skipped(m.announced(stranger_id, announcement("stranger", 3, &theta0, &[1])));
        assert!(why.contains("without weight"), "{why}");
        // A delta longer than its codec can make for this model is not fetched at all.
        let mut oversized = announcement("p1", 3, &theta0, &encoded(&[1.0; 4]));
        oversized.delta_bytes = 1 << 30;
        let why = skipped(m.announced(peer_id, oversized));
        assert!(why.contains("longer than it makes"), "{why}");
        // An identity nobody heard a heartbeat from weighs nothing either.
        let why = skipped(m.announced(peer_id, announcement("ghost", 3, &theta0, &[1])));
        assert!(why.contains("without weight"), "{why}");
    }

    #[test]
    fn a_refused_delta_is_a_warning_and_the_round_waits_for_the_deadline() {
        let t0 = Instant::now();
        let mut m = machine(WeightRule::Permissioned);
        let theta0 = m.theta0_hash().to_string();
        let peer = trainer("p1", 3, &theta0);
        let peer_id = peer.peer_id;
        m.trainers_heard(vec![peer, trainer("p2", 3, &theta0)]);
        let nan = encoded(&[f32::NAN; 4]);
        m.announced(peer_id, announcement("p1", 3, &theta0, &nan));
        m.own_delta(t0, Contribution::new("me", vec![0.5; 4]), own_blob());
        let effects = m.delta_fetched(t0, 3, "p1", "h", Ok(Arc::new(nan)));
        assert!(matches!(effects.as_slice(), [Effect::Refused(why)] if why.contains("p1")));
        // 1 of 3 expected: short of the quorum (0.75 · 3) until the deadline.
        assert!(m.tick(t0 + Duration::from_secs(30)).is_empty());
        let effects = m.tick(t0 + OPTIONS.deadline);
        assert_eq!(aggregation(&effects), Some(vec!["me".into()]));
        assert!(m.state().contains("deadline"), "{}", m.state());
        // A fetch that ends after the round closed changes nothing.
        assert!(
            m.delta_fetched(t0, 3, "p2", "h", Err("slow".into()))
                .is_empty()
        );
    }

    #[test]
    fn a_heavier_group_ahead_is_healed_to_once_and_a_refused_state_never_pulls_again() {
        let t0 = Instant::now();
        let mut m = machine(WeightRule::Permissioned);
        let far = hash_of(&[9.0; 4]);
        m.trainers_heard(vec![trainer("p1", 9, &far), trainer("p2", 9, &far)]);
        let effects = m.tick(t0);
        let Some(Effect::FetchState { plan, .. }) = effects.first() else {
            panic!("two admitted peers 6 rounds ahead pull a lone node: {effects:?}");
        };
        assert_eq!((plan.round, plan.theta0_hash.as_str()), (9, far.as_str()));
        assert!(m.state().starts_with("healing"));
        // One heal at a time.
        assert!(m.tick(t0).is_empty());

        m.heal_refused(far.clone());
        assert!(
            m.tick(t0 + Duration::from_secs(10)).is_empty(),
            "a refused state is not fetched again"
        );

        let good = hash_of(&[1.0; 4]);
        m.trainers_heard(vec![trainer("p1", 9, &good), trainer("p2", 9, &good)]);
        let Some(Effect::FetchState { source: first, .. }) = m.tick(t0).first().cloned() else {
            panic!("the good state is not fetched");
        };
        // A failed fetch is tried again after a backoff, from the group's next peer.
        m.heal_failed(t0);
        let backoff = heal_backoff(2);
        assert!(
            m.tick(t0 + backoff / 2).is_empty(),
            "retried before the backoff"
        );
        let Some(Effect::FetchState { source, .. }) = m.tick(t0 + backoff).first().cloned() else {
            panic!("the heal is not retried after the backoff");
        };
        assert_ne!(source.peer_id, first.peer_id, "the same source asked again");
        m.healed(9, good.clone());
        assert_eq!((m.round(), m.theta0_hash()), (9, good.as_str()));
        assert!(
            m.tick(t0).is_empty(),
            "on the group's state, nothing to heal"
        );
    }

    #[test]
    fn an_open_network_node_that_trained_alone_still_counts_its_first_peers_fully() {
        let t0 = Instant::now();
        let mut m = machine(WeightRule::Open);
        let config = AggregationConfig::default();
        // Three rounds alone: its own kept deltas establish nobody.
        for round in 3..6 {
            let effects = m.own_delta(t0, Contribution::new("me", vec![0.5; 4]), own_blob());
            let Some(Effect::Aggregate { contributions, .. }) = effects.first() else {
                panic!("a lone node closes at once: {effects:?}");
            };
            let aggregate = aggregate(&config, round, contributions).unwrap();
            m.closed(t0, Ok((&aggregate, 1.0)));
            m.advance(hash_of(&[round as f32; 4]));
        }
        // Two peers appear: both count 1 (nobody is established yet), so both deltas are taken.
        let theta0 = m.theta0_hash().to_string();
        let (p1, p2) = (trainer("p1", 6, &theta0), trainer("p2", 6, &theta0));
        let ids = [p1.peer_id, p2.peer_id];
        m.trainers_heard(vec![p1, p2]);
        assert_eq!(m.weights().values().copied().collect::<Vec<_>>(), [1.0; 3]);
        let bytes = encoded(&[1.0; 4]);
        let fetched: Vec<Effect> = ["p1", "p2"]
            .iter()
            .zip(ids)
            .flat_map(|(id, peer)| m.announced(peer, announcement(id, 6, &theta0, &bytes)))
            .collect();
        assert_eq!(fetches(&fetched), ["p1", "p2"]);
    }

    #[test]
    fn a_round_does_not_wait_for_newcomers_beyond_its_places() {
        let t0 = Instant::now();
        let mut m = machine(WeightRule::Open);
        let theta0 = m.theta0_hash().to_string();
        // p1 is established (its deltas kept in 3 rounds); n1 and n2 are newcomers sharing one
        // unit, and the round has ⌊0.2 · 2⌋ → 1 newcomer place.
        m.reputation.record_kept(["p1"; ESTABLISHED_AFTER as usize]);
        let [p1, n1, n2] = ["p1", "n1", "n2"].map(|id| trainer(id, 3, &theta0));
        let peer_ids = [p1.peer_id, n1.peer_id, n2.peer_id];
        m.trainers_heard(vec![p1, n1, n2]);
        let bytes = encoded(&[1.0; 4]);
        let hash = BlobId::of(&bytes).to_string();
        let mut fetched = Vec::new();
        for (id, peer) in ["p1", "n1", "n2"].into_iter().zip(peer_ids) {
            fetched.extend(m.announced(peer, announcement(id, 3, &theta0, &bytes)));
        }
        let placed = fetches(&fetched)
            .into_iter()
            .filter(|id| id.starts_with('n'))
            .map(str::to_string)
            .collect::<Vec<_>>();
        assert_eq!(placed.len(), 1, "{placed:?}");
        m.own_delta(t0, Contribution::new("me", vec![0.5; 4]), own_blob());
        m.delta_fetched(t0, 3, "p1", &hash, Ok(Arc::new(bytes.clone())));
        let effects = m.delta_fetched(t0, 3, &placed[0], &hash, Ok(Arc::new(bytes)));
        assert!(
            aggregation(&effects).is_some(),
            "closes at once, not after the grace"
        );
        assert!(m.state().contains("all of 2.50 expected"), "{}", m.state());
    }

    #[test]
    fn unadmitted_identities_claiming_a_far_round_pull_nobody() {
        let t0 = Instant::now();
        let mut m = machine(WeightRule::Permissioned);
        let poisoned = hash_of(&[f32::NAN; 4]);
        let sybils = (0..16)
            .map(|i| TrainerPeer {
                admitted: false,
                ..trainer(&format!("sybil{i}"), 1000, &poisoned)
            })
            .collect();
        m.trainers_heard(sybils);
        assert!(m.tick(t0).is_empty());
        assert!(
            m.tick(t0 + Duration::from_secs(60))
                .iter()
                .all(|e| !matches!(e, Effect::FetchState { .. }))
        );
    }

    #[test]
    fn a_node_that_aggregated_first_does_not_heal_back_to_peers_still_closing_its_last_round() {
        let t0 = Instant::now();
        let mut m = machine(WeightRule::Permissioned);
        let before = m.theta0_hash().to_string();
        m.trainers_heard(vec![trainer("p1", 3, &before), trainer("p2", 3, &before)]);
        m.own_delta(t0, Contribution::new("me", vec![0.5; 4]), own_blob());
        let effects = m.tick(t0 + OPTIONS.deadline);
        assert!(aggregation(&effects).is_some());
        m.closed(t0 + OPTIONS.deadline, Err("test".into()));
        m.advance(hash_of(&[0.3; 4]));
        assert!(m.tick(t0 + OPTIONS.deadline * 2).is_empty());
    }

    /// A sharded round of four (this node and p1–p3) driven through the machine to its
    /// settlement; with `colluding`, both aggregators of a slice this node does not aggregate
    /// serve it scaled by −10 (they agree on the lie).
    fn sharded_round(
        colluding: bool,
    ) -> (
        crate::aggregate::shard::SettledRound,
        Aggregate,
        Vec<String>,
    ) {
        use crate::aggregate::shard::{aggregate_slice, as_served, settle_round};
        use crate::diloco::codec::extract;
        let t0 = Instant::now();
        let (mut m, peers, theta0) = three_peers_of(sharding_rules(4));
        m.trainers_heard(peers.clone());
        let delta = |i: usize| -> Vec<f32> { (0..8).map(|j| (i * 8 + j) as f32 * 0.1).collect() };
        assert!(
            m.own_delta(t0, Contribution::new("me", delta(0)), own_blob())
                .is_empty()
        );
        let plan = m
            .open
            .shard
            .as_ref()
            .expect("4 members ≥ min_nodes")
            .plan()
            .clone();
        let mine = plan.slices_of("me");
        assert_eq!(mine.len(), 2);

        // Each peer's announcement fetches only this node's two slices of its delta.
        let mut effects = Vec::new();
        for (i, p) in peers.iter().enumerate() {
            let bytes = encoded(&delta(i + 1));
            let fetch = m.announced(p.peer_id, announcement(&p.node_id, 3, &theta0, &bytes));
            let [
                Effect::FetchParts {
                    slices,
                    check: false,
                    ..
                },
            ] = fetch.as_slice()
            else {
                panic!("expected a parts fetch: {fetch:?}");
            };
            let ids: Vec<usize> = slices.iter().map(|(s, _)| *s).collect();
            let mut sorted = mine.clone();
            sorted.sort_unstable();
            assert_eq!(ids, sorted);
            let parts = slices
                .iter()
                .map(|(_, r)| Arc::new(extract(&bytes, r.clone()).unwrap()))
                .collect();
            effects = m.parts_fetched(t0, 3, &p.node_id, &ids, false, Ok(parts));
        }
        let [Effect::AggregateSlices { inputs, .. }] = effects.as_slice() else {
            panic!("every contributor is in: the slices are aggregated: {effects:?}");
        };
        assert!(inputs.iter().all(|(_, parts)| parts.len() == 4));
        let config = AggregationConfig {
            rule: Rule::TrimmedMean,
            ..AggregationConfig::default()
        };
        // fp32: the slices are exact, so sharded equals full mesh bit for bit.
        let codec = exact();
        let serve = |slice: usize, aggregator: &str, parts: &[Contribution]| {
            let report = aggregate_slice(&config, 3, slice, aggregator, parts).unwrap();
            let (bytes, seen) = as_served(&codec, report);
            (bytes.clone(), seen, BlobId::of(&bytes))
        };
        let served: Vec<(SliceReport, BlobId, u64)> = inputs
            .iter()
            .map(|(slice, parts)| {
                let (bytes, seen, id) = serve(*slice, "me", parts);
                (seen, id, bytes.len() as u64)
            })
            .collect();
        assert!(
            m.reports_served(t0, 3, served).is_empty(),
            "waits for the claims"
        );
        assert_eq!(m.own_claims().len(), 2);

        // The peers claim their slices; reports this node has already (its partner's equal
        // ones) are not fetched.
        let all: Vec<Contribution> = (0..4)
            .map(|i| Contribution::new(["me", "p1", "p2", "p3"][i], delta(i)))
            .collect();
        let lied_on = (0..plan.slices()).find(|s| !mine.contains(s)).unwrap();
        let liars: Vec<String> = plan.group(lied_on).iter().map(|a| a.to_string()).collect();
        let mut blobs = BTreeMap::new();
        let mut fetched = Vec::new();
        for p in &peers {
            let claims = plan
                .slices_of(&p.node_id)
                .into_iter()
                .map(|slice| {
                    let parts = crate::aggregate::shard::slice_of(&plan, slice, &all);
                    let (bytes, id) = if colluding && slice == lied_on {
                        let mut report =
                            aggregate_slice(&config, 3, slice, &p.node_id, &parts).unwrap();
                        report.delta.iter_mut().for_each(|x| *x *= -10.0);
                        let (bytes, _) = as_served(&codec, report);
                        let id = BlobId::of(&bytes);
                        (bytes, id)
                    } else {
                        let (bytes, _, id) = serve(slice, &p.node_id, &parts);
                        (bytes, id)
                    };
                    blobs.insert(id, bytes.clone());
                    SliceClaim {
                        plan: plan.id(),
                        slice: slice as u32,
                        result: id.to_string(),
                        result_bytes: bytes.len() as u64,
                    }
                })
                .collect();
            let mut a = announcement(&p.node_id, 3, &theta0, &encoded(&delta(1)));
            a.claims = claims;
            fetched.extend(m.announced(p.peer_id, a));
        }
        let reports: Vec<(usize, BlobId)> = fetched
            .iter()
            .filter_map(|e| match e {
                Effect::FetchReport { slice, result, .. } => Some((*slice, *result)),
                _ => None,
            })
            .collect();
        assert_eq!(
            reports.len(),
            2,
            "the two slices this node does not aggregate: {fetched:?}"
        );
        let mut last = Vec::new();
        for (slice, id) in reports {
            last = m.report_fetched(t0, 3, slice, id, Ok(Arc::new(blobs[&id].clone())));
        }
        if colluding {
            // This node's own part accuses the slice: it fetches everyone's part of it.
            let checks: Vec<(String, SliceRanges)> = last
                .iter()
                .filter_map(|e| match e {
                    Effect::FetchParts {
                        node_id,
                        slices,
                        check: true,
                        ..
                    } => Some((node_id.clone(), slices.clone())),
                    _ => None,
                })
                .collect();
            assert_eq!(checks.len(), 3, "{last:?}");
            for (node_id, slices) in checks {
                let i = ["me", "p1", "p2", "p3"]
                    .iter()
                    .position(|id| *id == node_id)
                    .unwrap();
                let bytes = encoded(&delta(i));
                let parts = slices
                    .iter()
                    .map(|(_, r)| Arc::new(extract(&bytes, r.clone()).unwrap()))
                    .collect();
                let ids: Vec<usize> = slices.iter().map(|(s, _)| *s).collect();
                last = m.parts_fetched(t0, 3, &node_id, &ids, true, Ok(parts));
            }
        }
        let [Effect::Settle { plan, evidence, .. }] = last.as_slice() else {
            panic!("every slice is in: the round settles: {last:?}");
        };
        let settled = settle_round(&config, 3, &codec, plan, 100.0, evidence.clone());
        let full = crate::aggregate::aggregate(&config, 3, &all).unwrap();
        (settled, full, liars)
    }

    #[test]
    fn a_sharded_round_fetches_only_its_slices_claims_its_reports_and_settles_to_the_full_mesh_aggregate()
     {
        let (settled, full, _) = sharded_round(false);
        assert_eq!(settled.aggregate.delta, full.delta);
        assert!(settled.wrong.is_empty());
    }

    #[test]
    fn a_round_with_nnm_runs_full_mesh_and_says_why_bucketing_runs_sharded() {
        let t0 = Instant::now();
        let mode = |pre: PreAggregation| {
            let rules = MachineRules {
                params: 8,
                sharding: ShardOptions {
                    redundancy: 2,
                    min_nodes: 4,
                },
                pre,
                ..rules(WeightRule::Permissioned)
            };
            let theta0 = hash_of(&[0.0; 8]);
            let mut m = RoundMachine::new("me".into(), rules, 3, theta0.clone());
            m.trainers_heard(
                ["p1", "p2", "p3"]
                    .iter()
                    .map(|id| trainer(id, 3, &theta0))
                    .collect(),
            );
            m.own_delta(t0, Contribution::new("me", vec![0.5; 8]), own_blob());
            (m.slice_group(0), m.take_shard_note().unwrap_or_default())
        };
        let (group, note) = mode(PreAggregation::Nnm);
        assert!(group.is_empty(), "{group:?}");
        assert_eq!(
            note,
            "round 3: full mesh among 4 members, not sharded: pre = \"nnm\" mixes whole vectors \
             (each input with its nearest by L2 distance), which a slice aggregator does not have"
        );
        for pre in [PreAggregation::Bucketing, PreAggregation::None] {
            let (group, note) = mode(pre);
            assert_eq!(group.len(), 2, "{pre:?}");
            assert!(
                note.starts_with("round 3: sharded among 4 members"),
                "{note}"
            );
        }
    }

    #[test]
    fn a_slice_whose_two_aggregators_agree_on_a_lie_is_accused_by_a_contributor_and_both_caught() {
        let (settled, full, mut liars) = sharded_round(true);
        liars.sort();
        assert_eq!(settled.wrong, liars);
        assert_eq!(
            settled.aggregate.delta, full.delta,
            "the recomputed slice is taken"
        );
    }
}
