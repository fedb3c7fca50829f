//! PeerActor: the libp2p Swarm's event loop, on its own thread. It alone touches the Swarm; the rest
//! of the node sends it typed messages (`OfferBlob`, `FetchBlob`) and reads the published peer table.
//! Every decision about a peer (refuse, reject, ban, drop) is made by `net::peer_table` /
//! `net::protocol` and only applied and logged here.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use actix::fut::ActorStream;
use actix::prelude::*;
use futures::StreamExt;
use libp2p::core::upgrade;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{
    self, OutboundFailure, OutboundRequestId, ProtocolSupport, ResponseChannel,
};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, SwarmBuilder, Transport, allow_block_list, connection_limits,
    identify, kad, mdns, noise, ping, tcp, yamux,
};
use tracing::{debug, info, warn};

use super::messages::{
    AnnounceRound, BlobServed, FetchBlob, FetchError, FetchHistory, LedgerGossip, OfferBlob,
    PeerHeard, PeerOffence, PeerRoundAnnounced, PublishLedger, RefusedAtGate, RegisterAttack,
    RegisterLedger, RegisterRounds, RoundObserved, ServeHistory, TrainerPeers, WithdrawBlobs,
};
use super::run_every;
use crate::admission::{Certificate, Genesis, Policy, unix_s};
use crate::crypto::{Identity, generate_token};
use crate::diloco::attack::{HEAL_POISON_ROUNDS_AHEAD, PoisonedOuter};
use crate::diloco::machine::TrainerPeer;
use crate::ledger::proof::check_signature;
use crate::net::announce::{
    Announcement, MAX_MULTIADDRS, PeerRecord, announce_to_tracker, unix_time_s,
};
use crate::net::blob::{BlobCodec, BlobId, BlobRequest, BlobResponse, BlobStore};
use crate::net::history::{self, HistoryCodec, HistoryRequest, HistoryResponse};
use crate::net::meter::{ByteMeter, CountingMuxer};
use crate::net::peer_table::{MAX_PEERS, PeerPolicy, PeerTable, PeerView, Topic};
use crate::net::protocol::Protocols;
use crate::net::redial::{FIRST_REDIAL, SeedRedial};
use crate::net::wire::{
    self, GOSSIP_TRANSMIT_LIMIT, LedgerMessage, MAX_GOSSIP_BYTES, Rejection, unix_ms,
};
use crate::status::{NetworkView, NodeStatus, StatusBoard};

/// Blob transfers in flight from one peer, and in all (a round fetches one delta a peer; a heal
/// θ₀ and the momentum).
const MAX_FETCHES_PER_PEER: usize = 4;
const MAX_FETCHES: usize = 128;
/// From an identity without admission in a permissioned network: one. No round needs its blobs
/// (its deltas count for nothing), and a heal fetches θ₀ and the momentum one after the other.
const MAX_FETCHES_UNADMITTED: usize = 1;
/// Blobs served at once: θ₀ of the current and the previous round, and room for round deltas and
/// a sharded round's slice reports.
const SERVED_BLOBS: usize = 12;
const TRACKER_TIMEOUT: Duration = Duration::from_secs(10);
/// Ledger history requests this node serves at once (each a read of its ledger), and sends.
const MAX_HISTORY_SERVED: usize = 4;
const MAX_HISTORY_FETCHES: usize = 4;
/// A page is at most a couple of MiB.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the published peer table is refreshed for the API.
const VIEW_REFRESH: Duration = Duration::from_millis(500);

/// Everything the network layer is configured with.
#[derive(Clone)]
pub struct PeerOptions {
    pub identity: Identity,
    pub protocols: Protocols,
    pub listen: Vec<Multiaddr>,
    pub announce_addrs: Vec<Multiaddr>,
    pub seed_peers: Vec<Multiaddr>,
    pub tracker: Option<String>,
    pub mdns: bool,
    pub policy: PeerPolicy,
    pub announce_interval: Duration,
    pub target_peers: usize,
    pub max_blob_bytes: u64,
    pub blob_timeout: Duration,
    pub faults: GossipFaults,
    /// This node's genesis: peers' certificates are checked against it.
    pub genesis: Option<Genesis>,
    /// This node's own membership certificate, presented in every heartbeat.
    pub membership: Option<Certificate>,
}

/// Test fault switches that make this node a misbehaving peer (NEUROSHARD_FAULT_GOSSIP_*,
/// NEUROSHARD_FAULT_HEAL_POISON, NEUROSHARD_FAULT_SLOW_BLOB, NEUROSHARD_FAULT_SYBIL).
#[derive(Clone, Default)]
pub struct GossipFaults {
    /// Each heartbeat, also gossip a malformed, an oversized and a badly signed message.
    pub garbage: bool,
    /// Each heartbeat, also gossip this many extra (valid) heartbeats: a flood.
    pub flood: u32,
    /// Advertise a far-ahead round and this poisoned outer state (served as blobs) in heartbeats.
    pub heal_poison: Option<Arc<PoisonedOuter>>,
    /// Answer requests for this node's round deltas late or never.
    pub slow_blob: Option<SlowBlob>,
    /// This node's own Sybil identities: their gossip is relayed but otherwise ignored here, so
    /// the attacker's own rounds and heals are not steered by its own lies.
    pub own_sybils: HashSet<PeerId>,
}

/// NEUROSHARD_FAULT_SLOW_BLOB: how a withholding sender answers requests for its round deltas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowBlob {
    /// Just under the requester's blob timeout (taken to be this node's own `blob_timeout`).
    JustInTime,
    /// Never: the request is held until it times out.
    Never,
}

/// What to do with one blob request.
pub(crate) enum Serve {
    Now,
    After(Duration),
    Hold,
}

impl SlowBlob {
    /// `1` → just in time, `never` → never.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "1" => Some(Self::JustInTime),
            "never" => Some(Self::Never),
            _ => None,
        }
    }

    /// How a request is answered; only round deltas are withheld.
    pub(crate) fn serve(slow: Option<Self>, round_delta: bool, blob_timeout: Duration) -> Serve {
        match (slow, round_delta) {
            (Some(Self::JustInTime), true) => {
                Serve::After(blob_timeout.saturating_sub(Duration::from_secs(1)))
            }
            (Some(Self::Never), true) => Serve::Hold,
            _ => Serve::Now,
        }
    }
}

/// Held blob requests (SLOW_BLOB=never) are let go after this many blob timeouts.
const HOLD_FOR_TIMEOUTS: u32 = 2;
/// At most this many held requests; the oldest is let go first.
pub(crate) const MAX_HELD_REQUESTS: usize = 256;
/// Round deltas of this node remembered for the slow-blob switch.
pub(crate) const OWN_DELTAS_KEPT: usize = 4;

/// The heartbeat `node_id` gossips with `role`, from the node's published status. With the
/// heal-poisoning switch it claims a round far ahead, on the poisoned θ₀ it serves. `None` while
/// Sync has not hashed θ₀ yet: nothing true to mirror. The one place a heartbeat is made (the
/// node's own and its Sybils').
pub(crate) fn heartbeat_of(
    status: &NodeStatus,
    node_id: &str,
    role: &str,
    poison: Option<&PoisonedOuter>,
    membership: Option<&Certificate>,
) -> Option<wire::Heartbeat> {
    if status.theta0_hash.is_empty() {
        return None;
    }
    let (outer_round, theta0_hash, momentum_hash) = match poison {
        None => (
            status.outer_step_count,
            status.theta0_hash.clone(),
            status.momentum_hash.clone(),
        ),
        Some(p) => (
            status.outer_step_count + HEAL_POISON_ROUNDS_AHEAD,
            p.theta0_hash.clone(),
            p.momentum_hash.clone(),
        ),
    };
    Some(wire::Heartbeat {
        node_id: node_id.to_string(),
        role: role.to_string(),
        global_step: status.global_step,
        outer_round,
        theta0_hash,
        momentum_hash,
        tokens_per_sec: status.tokens_per_sec,
        sent_at_ms: unix_ms(),
        membership: membership.cloned(),
    })
}

/// The poisoned outer state's blobs, if `id` names one of them.
pub(crate) fn poisoned_blob(poison: Option<&PoisonedOuter>, id: &BlobId) -> Option<BlobResponse> {
    let p = poison?;
    [(&p.theta0_hash, &p.theta0), (&p.momentum_hash, &p.momentum)]
        .into_iter()
        .find(|(hash, _)| BlobId::from_hex(hash) == Some(*id))
        .map(|(_, bytes)| BlobResponse::Found {
            id: *id,
            bytes: bytes.clone(),
        })
}

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// First, so a connection over the limits is denied before the other behaviours see it.
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) blobs: request_response::Behaviour<BlobCodec>,
    pub(crate) history: request_response::Behaviour<HistoryCodec>,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
}

/// The gossip topics of this node's network.
#[derive(Clone)]
pub(crate) struct Topics {
    /// Signed heartbeats: who is alive, at which step and round, on which θ₀.
    pub(crate) heartbeat: IdentTopic,
    /// Signed round announcements: a node's delta for a round is ready to fetch.
    pub(crate) round: IdentTopic,
    /// Proofs of Neural Work and transactions, each gossiped by its signer.
    pub(crate) ledger: IdentTopic,
}

impl Topics {
    pub(crate) fn new(protocols: &Protocols) -> Self {
        Self {
            heartbeat: IdentTopic::new(protocols.topic("heartbeat")),
            round: IdentTopic::new(protocols.topic("round")),
            ledger: IdentTopic::new(protocols.topic("ledger")),
        }
    }

    pub(crate) fn all(&self) -> [&IdentTopic; 3] {
        [&self.heartbeat, &self.round, &self.ledger]
    }
}

fn gossip_scoring(topics: &Topics) -> gossipsub::PeerScoreParams {
    let mut params = gossipsub::PeerScoreParams::default();
    // Local devnets run many nodes on one machine; they must not count as a Sybil cluster.
    params
        .ip_colocation_factor_whitelist
        .insert(IpAddr::V4(Ipv4Addr::LOCALHOST));
    // Messages that expired in a peer's send queue are no offence of that peer: a node suspended
    // for two minutes resumed with hundreds of them (a score of -120 at once) and every peer
    // banned it for 10 minutes. A peer that cannot keep up is dropped when silent (peer table).
    params.slow_peer_weight = 0.0;
    for topic in topics.all() {
        params.topics.insert(
            topic.hash(),
            gossipsub::TopicScoreParams {
                topic_weight: 1.0,
                // Small rewards (at most +36 for an hour in the mesh, +10 for first deliveries), so
                // that a steady stream of invalid messages outweighs them. The defaults (+1 per ms in
                // the mesh) would keep a misbehaving mesh peer's score high for an hour.
                time_in_mesh_quantum: Duration::from_secs(1),
                time_in_mesh_weight: 0.01,
                first_message_deliveries_cap: 10.0,
                // Heartbeats are rare: delivery-rate penalties would punish honest peers. Invalid
                // messages are what lowers a score here.
                mesh_message_deliveries_weight: 0.0,
                mesh_failure_penalty_weight: 0.0,
                // Squared counter: three invalid messages (-45) are still delivered and counted; a
                // steady stream graylists the peer, and then the peer table bans it.
                invalid_message_deliveries_weight: -5.0,
                invalid_message_deliveries_decay: 0.5,
                ..Default::default()
            },
        );
    }
    params
}

/// gossipsub's defaults; the graylist threshold is also where the peer table bans.
pub fn gossip_thresholds() -> gossipsub::PeerScoreThresholds {
    gossipsub::PeerScoreThresholds::default()
}

fn behaviour(
    key: &libp2p::identity::Keypair,
    o: &PeerOptions,
    topics: &Topics,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let peer_id = key.public().to_peer_id();
    let gossip_config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(GOSSIP_TRANSMIT_LIMIT)
        .build()?;
    let mut gossipsub =
        gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gossip_config)?;
    gossipsub.with_peer_score(gossip_scoring(topics), gossip_thresholds())?;
    for topic in topics.all() {
        gossipsub.subscribe(topic)?;
    }

    let mut kad_config = kad::Config::new(o.protocols.kademlia());
    kad_config.set_periodic_bootstrap_interval(Some(Duration::from_secs(60)));
    let mut kad =
        kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
    // Training peers must be reachable anyway; answer DHT queries without waiting for an
    // externally confirmed address (which loopback devnets never get).
    kad.set_mode(Some(kad::Mode::Server));

    let mdns = if o.mdns {
        Some(mdns::tokio::Behaviour::new(
            mdns::Config::default(),
            peer_id,
        )?)
    } else {
        None
    };
    Ok(Behaviour {
        limits: connection_limits::Behaviour::new(limits()),
        identify: identify::Behaviour::new(
            identify::Config::new(o.protocols.identify_version(), key.public())
                .with_agent_version(format!("neuroshard/{}", env!("CARGO_PKG_VERSION")))
                .with_push_listen_addr_updates(true),
        ),
        ping: ping::Behaviour::new(ping::Config::new().with_interval(o.policy.heartbeat_interval)),
        kad,
        gossipsub,
        blobs: request_response::Behaviour::with_codec(
            BlobCodec::new(o.max_blob_bytes),
            [(o.protocols.blob(), ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(o.blob_timeout),
        ),
        history: request_response::Behaviour::with_codec(
            history::codec(),
            [(o.protocols.history(), ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(HISTORY_TIMEOUT),
        ),
        mdns: Toggle::from(mdns),
        blocked: Default::default(),
    })
}

/// Connections to one peer: two, for when both sides dial each other at once.
const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// Established connections in all: half the peer table. The table never evicts a connected
/// peer, so with at most half of it connected a flood of new identities always finds an entry
/// to evict and the table stays within `MAX_PEERS`.
const MAX_CONNECTIONS: u32 = (MAX_PEERS / 2) as u32;
/// Inbound ones (identities that chose this node) at most half of those: an inbound flood
/// leaves room for the peers this node dials itself, so it cannot eclipse them.
const MAX_INBOUND_CONNECTIONS: u32 = MAX_CONNECTIONS / 2;
/// Handshakes in flight each way (each a socket and a Noise key exchange). An honest node dials
/// at most `target_peers` and a tracker answer's `MAX_PEERS_PER_ANSWER` (32) at once.
const MAX_PENDING_CONNECTIONS: u32 = 64;

fn limits() -> connection_limits::ConnectionLimits {
    connection_limits::ConnectionLimits::default()
        .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
        .with_max_established(Some(MAX_CONNECTIONS))
        .with_max_established_incoming(Some(MAX_INBOUND_CONNECTIONS))
        .with_max_pending_incoming(Some(MAX_PENDING_CONNECTIONS))
        .with_max_pending_outgoing(Some(MAX_PENDING_CONNECTIONS))
}

/// A Swarm for `identity` with this network's transport (TCP + Noise + Yamux, bytes counted in
/// `meter`), protocol version, topics and gossip configuration: the node's, and each Sybil's of
/// the NEUROSHARD_FAULT_SYBIL switch. Listening and dialing are the caller's.
pub(crate) fn build_swarm(
    identity: &Identity,
    options: &PeerOptions,
    topics: &Topics,
    meter: &ByteMeter,
) -> Result<Swarm<Behaviour>, String> {
    let counting = meter.clone();
    Ok(
        SwarmBuilder::with_existing_identity(identity.libp2p_keypair())
            .with_tokio()
            .with_other_transport(|key| {
                // TCP + Noise + Yamux, as `with_tcp` builds it, plus per-peer byte counters.
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                        .upgrade(upgrade::Version::V1Lazy)
                        .authenticate(noise::Config::new(key)?)
                        .multiplex(yamux::Config::default())
                        .map(move |(peer, muxer), _| {
                            (peer, CountingMuxer::new(muxer, counting.for_peer(peer)))
                        }),
                )
            })
            .map_err(|e| format!("transport: {e}"))?
            .with_behaviour(|key| behaviour(key, options, topics))
            .map_err(|e| format!("network behaviour: {e}"))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
            .build(),
    )
}

/// Transfers in flight allowed from one peer: the fewest for an identity without admission in a
/// permissioned network.
/// `policy`: this network's genesis policy, if it has a genesis.
fn fetch_limit(policy: Option<Policy>, admitted: bool) -> usize {
    if policy == Some(Policy::Permissioned) && !admitted {
        MAX_FETCHES_UNADMITTED
    } else {
        MAX_FETCHES_PER_PEER
    }
}

/// Whom a rejected gossip message counts against.
#[derive(Clone, Copy)]
enum Blame {
    /// The peer that sent it to us: the message failed before its signature verified.
    Sender,
    /// The node that signed it.
    Origin,
}

struct PendingFetch {
    peer: PeerId,
    blob: BlobId,
    /// A range of the blob was asked for (`BlobRequest::range`).
    range: bool,
    reply: tokio::sync::oneshot::Sender<Result<Arc<Vec<u8>>, FetchError>>,
}

pub struct PeerActor {
    swarm: Swarm<Behaviour>,
    meter: ByteMeter,
    options: PeerOptions,
    topics: Topics,
    /// Where valid round announcements go (the SyncActor, once it registered).
    rounds: Option<RegisterRounds>,
    ledger: Option<RegisterLedger>,
    table: PeerTable,
    blobs: BlobStore,
    pending: HashMap<OutboundRequestId, PendingFetch>,
    listen_addrs: Vec<Multiaddr>,
    status: StatusBoard,
    /// The attacker's actor (NEUROSHARD_FAULT_SYBIL / _VERDICT_FORGE), told of every round
    /// announcement this node makes or validates.
    attack: Option<Recipient<RoundObserved>>,
    /// This node's latest round deltas (for NEUROSHARD_FAULT_SLOW_BLOB).
    own_deltas: VecDeque<BlobId>,
    /// Blob requests held unanswered (NEUROSHARD_FAULT_SLOW_BLOB=never), oldest first.
    held: VecDeque<(Instant, ResponseChannel<BlobResponse>)>,
    /// History requests this node sent, waiting for their answers.
    history_fetches: HashMap<OutboundRequestId, HistoryReply>,
    /// History requests from peers the ledger is answering.
    history_served: usize,
    /// Which connected peer the next history request without a peer goes to.
    history_turn: usize,
}

type HistoryReply = tokio::sync::oneshot::Sender<Result<(PeerId, HistoryResponse), String>>;

impl PeerActor {
    /// Starts the network on its own thread: builds the Swarm there and binds the listen addresses.
    pub async fn start(options: PeerOptions, status: StatusBoard) -> Result<Addr<Self>, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let started = Arbiter::new().spawn_fn(move || {
            let _ = tx.send(Self::build(options, status).map(Actor::start));
        });
        if !started {
            return Err("cannot start the network thread".into());
        }
        rx.await
            .map_err(|_| "the network thread stopped while starting".to_string())?
    }

    fn build(options: PeerOptions, status: StatusBoard) -> Result<Self, String> {
        let topics = Topics::new(&options.protocols);
        let meter = ByteMeter::default();
        let mut swarm = build_swarm(&options.identity, &options, &topics, &meter)?;
        for addr in &options.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| format!("network.listen: cannot listen on {addr}: {e}"))?;
        }
        for addr in &options.announce_addrs {
            swarm.add_external_address(addr.clone());
        }
        let table = PeerTable::new(options.policy.clone());
        Ok(Self {
            swarm,
            meter,
            table: match options.genesis.clone() {
                Some(genesis) => table.with_genesis(genesis),
                None => table,
            },
            options,
            topics,
            rounds: None,
            ledger: None,
            blobs: BlobStore::new(SERVED_BLOBS),
            pending: HashMap::new(),
            listen_addrs: Vec::new(),
            status,
            attack: None,
            own_deltas: VecDeque::new(),
            held: VecDeque::new(),
            history_fetches: HashMap::new(),
            history_served: 0,
            history_turn: 0,
        })
    }

    fn local_peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// The addresses peers should dial: the configured announce addresses, else where we listen.
    fn advertised_addrs(&self) -> Vec<Multiaddr> {
        if self.options.announce_addrs.is_empty() {
            self.listen_addrs.clone()
        } else {
            self.options.announce_addrs.clone()
        }
    }

    fn dial_seeds(&mut self) {
        for addr in self.options.seed_peers.clone() {
            if let Err(e) = self.swarm.dial(addr.clone()) {
                warn!(%addr, error = ?e, "cannot dial seed peer");
            }
        }
    }

    /// Remembers a discovered peer in the DHT and connects to it while below `target_peers`.
    fn discovered(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if peer == self.local_peer_id() || self.table.is_banned(&peer, Instant::now()) {
            return;
        }
        for addr in &addrs {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
        }
        if self.swarm.is_connected(&peer)
            || self.swarm.connected_peers().count() >= self.options.target_peers
        {
            return;
        }
        let dial = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(dial) {
            debug!(%peer, error = %e, "dial failed");
        }
    }

    fn announce(&mut self, ctx: &mut Context<Self>) {
        let Some(url) = self.options.tracker.clone() else {
            return;
        };
        // Routable addresses first, loopback last, within what the tracker accepts.
        let mut addrs = self.advertised_addrs();
        addrs.sort_by_key(|a| {
            a.iter().any(|p| {
                matches!(p, Protocol::Ip4(ip) if ip.is_loopback())
                    || matches!(p, Protocol::Ip6(ip) if ip.is_loopback())
            })
        });
        let addrs: Vec<String> = addrs
            .iter()
            .take(MAX_MULTIADDRS)
            .map(|a| a.to_string())
            .collect();
        if addrs.is_empty() {
            return;
        }
        let announcement = Announcement::signed(
            &self.options.identity,
            &self.options.protocols.network_id,
            addrs,
            unix_time_s(),
        );
        let request = tokio::task::spawn_blocking(move || {
            announce_to_tracker(&url, &announcement, TRACKER_TIMEOUT)
        });
        ctx.spawn(request.into_actor(self).map(|result, act, _| match result {
            Ok(Ok(records)) => {
                debug!(peers = records.len(), "tracker answered");
                act.meet(records);
            }
            Ok(Err(e)) => warn!(error = %e, "tracker announcement failed"),
            Err(e) => warn!(error = %e, "tracker client crashed"),
        }));
    }

    fn meet(&mut self, records: Vec<PeerRecord>) {
        for record in records {
            let Ok(peer) = record.peer_id.parse::<PeerId>() else {
                continue;
            };
            let addrs = record
                .multiaddrs
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect();
            self.discovered(peer, addrs);
        }
    }

    fn publish(&mut self, topic: IdentTopic, data: Vec<u8>) {
        match self.swarm.behaviour_mut().gossipsub.publish(topic, data) {
            Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => debug!(error = %e, "gossip publish failed"),
        }
    }

    fn heartbeat(&self) -> Option<wire::Heartbeat> {
        let s = self.status.read();
        heartbeat_of(
            &s,
            &s.node_id,
            s.role,
            self.options.faults.heal_poison.as_deref(),
            self.options.membership.as_ref(),
        )
    }

    /// Every heartbeat interval: ban peers gossipsub scored below the threshold, expire silent
    /// peers and ended bans, prune their byte counters, then gossip our heartbeat.
    /// Notes that the network loop runs; after a stall of this node (suspended, SIGSTOP) its
    /// peers' queued messages are not held against them.
    fn observe_clock(&mut self, now: Instant) {
        if let Some(gap) = self.table.observe_clock(now) {
            warn!(
                stalled_s = gap.as_secs(),
                "this node was stalled; the messages peers sent meanwhile ban nobody while it catches up"
            );
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        self.observe_clock(now);
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in connected {
            let Some(score) = self.swarm.behaviour().gossipsub.peer_score(&peer) else {
                continue;
            };
            if let Some(reason) = self.table.judge_score(now, peer, score) {
                self.banned(peer, reason);
            }
        }
        let expired = self.table.expire(now);
        for (peer, reason) in expired.dropped {
            info!(%peer, %reason, "peer dropped");
        }
        for peer in expired.unbanned {
            info!(%peer, "ban ended");
            let b = self.swarm.behaviour_mut();
            b.blocked.unblock_peer(peer);
            b.gossipsub.remove_blacklisted_peer(&peer);
        }
        self.meter.prune(|peer| self.table.contains(peer));
        let limit = self.options.blob_timeout * HOLD_FOR_TIMEOUTS;
        while self
            .held
            .front()
            .is_some_and(|(at, _)| at.elapsed() > limit)
        {
            self.held.pop_front();
        }
        let topic = self.topics.heartbeat.clone();
        let Some(heartbeat) = self.heartbeat() else {
            return; // Sync has not hashed θ₀ yet: nothing true to say.
        };
        let name = topic.to_string();
        self.publish(
            topic.clone(),
            wire::seal(&self.options.identity, &name, &heartbeat),
        );
        if self.options.faults.garbage {
            self.publish_garbage(&topic, &heartbeat);
        }
        for extra in 1..=u64::from(self.options.faults.flood) {
            let flood = wire::Heartbeat {
                sent_at_ms: heartbeat.sent_at_ms + extra,
                ..heartbeat.clone()
            };
            self.publish(
                topic.clone(),
                wire::seal(&self.options.identity, &name, &flood),
            );
        }
    }

    /// The misbehaving-peer fault switch: one malformed, one oversized and one badly signed message.
    fn publish_garbage(&mut self, topic: &IdentTopic, heartbeat: &wire::Heartbeat) {
        let impostor = Identity::from_token(&generate_token()).expect("generated tokens are valid");
        let name = topic.to_string();
        let malformed = wire::seal_bytes(&self.options.identity, &name, b"{not json");
        self.publish(topic.clone(), malformed);
        self.publish(topic.clone(), vec![b'x'; 2 * MAX_GOSSIP_BYTES]);
        self.publish(topic.clone(), wire::seal(&impostor, &name, heartbeat));
    }

    fn publish_view(&self) {
        let now = Instant::now();
        let bytes = self.meter.snapshot();
        let (peers, mut totals) = self.table.view(now, unix_s(), &bytes.peers);
        totals.bytes_in += bytes.retired.0;
        totals.bytes_out += bytes.retired.1;
        if let Some(rounds) = &self.rounds {
            rounds.trainers.do_send(TrainerPeers(trainer_peers(&peers)));
        }
        let view = NetworkView {
            network_id: self.options.protocols.network_id.clone(),
            listen_addrs: self
                .listen_addrs
                .iter()
                .map(|a| format!("{a}/p2p/{}", self.local_peer_id()))
                .collect(),
            peer_count: self.table.live_peers(now),
            connected_peers: self.swarm.connected_peers().count(),
            peers,
            totals,
        };
        self.status.update(|s| s.network = Arc::new(view));
    }

    /// Validates a gossip message. Until its signature checks out, a bad message is the fault of
    /// the peer that sent it to us (honest peers validate before they forward); after that, the
    /// origin signed it, so rate limits, replays and implausible fields count against the origin,
    /// and a relaying peer is not penalised for it.
    fn on_gossip(&mut self, source: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        let now = Instant::now();
        self.observe_clock(now);
        let acceptance = match self.validate_gossip(now, source, &message) {
            // While catching up after its own stall, this node passes on nothing: what it receives
            // now is what its peers sent a while ago, and they have it already.
            Ok(_) if self.table.catching_up(now) => MessageAcceptance::Ignore,
            Ok(acceptance) => acceptance,
            Err((blame, rejection)) => {
                let blamed = match (blame, message.source) {
                    (Blame::Origin, Some(origin)) => origin,
                    _ => source,
                };
                self.rejected(now, blamed, &rejection);
                // Stale messages queued while this node was stalled are not the sender's fault.
                if blamed == source && !self.table.catching_up(now) {
                    MessageAcceptance::Reject
                } else {
                    MessageAcceptance::Ignore
                }
            }
        };
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &source, acceptance);
    }

    /// `Ignore` for valid work of an unadmitted origin in a permissioned network: not passed on
    /// (to Sync, the ledger or other peers), counted as unadmitted, not held against anyone.
    fn validate_gossip(
        &mut self,
        now: Instant,
        source: PeerId,
        message: &gossipsub::Message,
    ) -> Result<MessageAcceptance, (Blame, Rejection)> {
        let Some(origin) = message.source else {
            return Err((Blame::Sender, Rejection::UnknownSigner));
        };
        if self.options.faults.own_sybils.contains(&origin) {
            // This node's own Sybils: relayed, not believed.
            return Ok(MessageAcceptance::Accept);
        }
        let blame = |blame| move |rejection| (blame, rejection);
        let now_ms = unix_ms();
        if message.topic == self.topics.heartbeat.hash() {
            let name = self.topics.heartbeat.to_string();
            let (heartbeat, node_id) = wire::open::<wire::Heartbeat>(&name, &message.data, &origin)
                .map_err(blame(Blame::Sender))?;
            // A heartbeat no newer than the origin's last is a late copy or a replay: anyone can
            // relay a signed message again (a peer resuming from a stall did, 60 of each of its
            // peers' heartbeats at once). Neither passed on nor counted against the origin,
            // whose rate limit would otherwise ban an honest node for what another sent.
            if self.table.already_heard(&origin, heartbeat.sent_at_ms) {
                return Ok(MessageAcceptance::Ignore);
            }
            self.table
                .admit(now, origin, Topic::Heartbeat)
                .map_err(blame(Blame::Origin))?;
            heartbeat
                .check(&node_id, now_ms)
                .and_then(|()| {
                    self.table
                        .accept_heartbeat(now, now_ms, source, origin, heartbeat)
                })
                .map_err(blame(Blame::Origin))?;
            if let Some(ledger) = &self.ledger {
                ledger.heard.do_send(PeerHeard(node_id));
            }
            Ok(MessageAcceptance::Accept)
        } else if message.topic == self.topics.round.hash() {
            self.table
                .admit(now, origin, Topic::Round)
                .map_err(blame(Blame::Origin))?;
            let name = self.topics.round.to_string();
            let (announcement, node_id) =
                wire::open::<wire::RoundAnnouncement>(&name, &message.data, &origin)
                    .map_err(blame(Blame::Sender))?;
            announcement
                .check(&node_id, self.options.max_blob_bytes, now_ms)
                .map_err(blame(Blame::Origin))?;
            if !self.table.passes_work(now, now_ms / 1000, origin) {
                return Ok(MessageAcceptance::Ignore);
            }
            self.table.accept(now, source);
            if let Some(attack) = &self.attack {
                attack.do_send(RoundObserved {
                    announcement: announcement.clone(),
                    own_delta: None,
                });
            }
            if let Some(sync) = &self.rounds {
                sync.announced.do_send(PeerRoundAnnounced {
                    peer: origin,
                    announcement,
                });
            }
            Ok(MessageAcceptance::Accept)
        } else if message.topic == self.topics.ledger.hash() {
            self.table
                .admit(now, origin, Topic::Ledger)
                .map_err(blame(Blame::Origin))?;
            let name = self.topics.ledger.to_string();
            let (entry, node_id) = wire::open::<LedgerMessage>(&name, &message.data, &origin)
                .map_err(blame(Blame::Sender))?;
            // A forged proof, or anyone's proof sent by someone else, is not passed on; the rest
            // of the checks need the ledger's state. The ledger counts these by reason too.
            let proofs = match &entry {
                LedgerMessage::Proof(p) => std::slice::from_ref(p),
                LedgerMessage::Recent { proofs, .. } => proofs.as_slice(),
                _ => &[],
            };
            let gate = entry.check(&node_id).and_then(|()| {
                proofs
                    .iter()
                    .try_for_each(|proof| check_signature(proof).map_err(Rejection::from))
            });
            if let Err(rejection) = gate {
                if let Some(ledger) = &self.ledger {
                    ledger.refused.do_send(RefusedAtGate(rejection.kind()));
                }
                return Err((Blame::Origin, rejection));
            }
            if !self.table.passes_work(now, now_ms / 1000, origin) {
                return Ok(MessageAcceptance::Ignore);
            }
            self.table.accept(now, source);
            if let Some(ledger) = &self.ledger {
                ledger.gossip.do_send(LedgerGossip {
                    origin,
                    message: entry,
                });
            }
            Ok(MessageAcceptance::Accept)
        } else {
            let unexpected = format!("unexpected topic {}", message.topic);
            Err((Blame::Sender, Rejection::Malformed(unexpected)))
        }
    }

    /// Counts a rejection against `peer`, logs it (sparingly: a flood must not flood the log) and
    /// bans the peer when the table says so.
    fn rejected(&mut self, now: Instant, peer: PeerId, rejection: &Rejection) {
        let outcome = self.table.reject(now, peer, rejection);
        if outcome.total.is_power_of_two() {
            warn!(%peer, %rejection, rejected_so_far = outcome.total, "message rejected");
        }
        if let Some(reason) = outcome.ban {
            self.banned(peer, reason);
        }
    }

    /// Applies a ban the peer table decided: no gossip from it, no connection to it.
    fn banned(&mut self, peer: PeerId, reason: String) {
        warn!(%peer, %reason, "peer banned");
        let b = self.swarm.behaviour_mut();
        b.gossipsub.blacklist_peer(&peer);
        b.blocked.block_peer(peer);
    }

    /// Sends `response` to a blob request and reports what was uploaded.
    fn respond(
        &mut self,
        channel: ResponseChannel<BlobResponse>,
        id: BlobId,
        response: BlobResponse,
    ) {
        let served = match &response {
            BlobResponse::Found { bytes, .. } => bytes.len() as u64,
            BlobResponse::Missing => 0,
        };
        // Fails only if the peer already gave up: then nothing was uploaded.
        let sent = self
            .swarm
            .behaviour_mut()
            .blobs
            .send_response(channel, response);
        if let (Ok(()), Some(rounds), true) = (sent, &self.rounds, served > 0) {
            rounds.served.do_send(BlobServed { id, bytes: served });
        }
    }

    fn on_blob_event(
        &mut self,
        event: request_response::Event<BlobRequest, BlobResponse>,
        ctx: &mut Context<Self>,
    ) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                message:
                    Message::Request {
                        request: BlobRequest { id, range, .. },
                        channel,
                        ..
                    },
                ..
            } => {
                let response = poisoned_blob(self.options.faults.heal_poison.as_deref(), &id)
                    .unwrap_or_else(|| self.blobs.response(&id, range));
                let round_delta = self.own_deltas.contains(&id);
                match SlowBlob::serve(
                    self.options.faults.slow_blob,
                    round_delta,
                    self.options.blob_timeout,
                ) {
                    Serve::Now => self.respond(channel, id, response),
                    Serve::After(delay) => {
                        ctx.run_later(delay, move |act, _| act.respond(channel, id, response));
                    }
                    Serve::Hold => {
                        if self.held.len() >= MAX_HELD_REQUESTS {
                            self.held.pop_front();
                        }
                        self.held.push_back((Instant::now(), channel));
                    }
                }
            }
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                let Some(pending) = self.pending.remove(&request_id) else {
                    return;
                };
                let result = match response {
                    BlobResponse::Missing => Err(FetchError::Missing {
                        peer,
                        blob: pending.blob,
                    }),
                    BlobResponse::Found { id, bytes } => {
                        let now = Instant::now();
                        // A range's bytes are checked by decoding them, not against the Δ's id.
                        if id == pending.blob || pending.range {
                            Ok(bytes)
                        } else {
                            let rejection = Rejection::Malformed(format!(
                                "blob does not hash to the requested {}",
                                pending.blob
                            ));
                            self.rejected(now, peer, &rejection);
                            Err(FetchError::Refused { peer, rejection })
                        }
                    }
                };
                let _ = pending.reply.send(result);
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let refused = self.undecodable_response(peer, &error, "blob");
                if let Some(pending) = self.pending.remove(&request_id) {
                    let failure = match refused {
                        Some(rejection) => FetchError::Refused { peer, rejection },
                        None => FetchError::Transfer {
                            peer,
                            blob: pending.blob,
                            reason: error.to_string(),
                        },
                    };
                    let _ = pending.reply.send(Err(failure));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "serving a blob failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    /// A response that failed to decode (over its bound, malformed) is the peer's offence,
    /// counted like a rejected message; any other failure (timeout, closed stream) is not.
    fn undecodable_response(
        &mut self,
        peer: PeerId,
        error: &OutboundFailure,
        protocol: &str,
    ) -> Option<Rejection> {
        let OutboundFailure::Io(e) = error else {
            return None;
        };
        if e.kind() != std::io::ErrorKind::InvalidData {
            return None;
        }
        let rejection = Rejection::Malformed(format!("{protocol} response: {e}"));
        self.rejected(Instant::now(), peer, &rejection);
        Some(rejection)
    }

    /// A peer's history request goes to the ledger (at most `MAX_HISTORY_SERVED` at once, the
    /// rest answered busy); an answer to ours goes to whoever asked.
    fn on_history_event(
        &mut self,
        event: request_response::Event<HistoryRequest, HistoryResponse>,
        ctx: &mut Context<Self>,
    ) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let server = self.ledger.as_ref().map(|l| l.history.clone());
                let Some(server) = server.filter(|_| self.history_served < MAX_HISTORY_SERVED)
                else {
                    let busy = HistoryResponse::Unavailable("busy".into());
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .history
                        .send_response(channel, busy);
                    return;
                };
                self.history_served += 1;
                server
                    .send(ServeHistory(request))
                    .into_actor(self)
                    .map(move |answer, act, _| {
                        act.history_served -= 1;
                        let response =
                            answer.unwrap_or_else(|e| HistoryResponse::Unavailable(e.to_string()));
                        // Fails only if the peer gave up waiting.
                        let _ = act
                            .swarm
                            .behaviour_mut()
                            .history
                            .send_response(channel, response);
                    })
                    .spawn(ctx);
            }
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.history_fetches.remove(&request_id) {
                    let _ = reply.send(Ok((peer, response)));
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.undecodable_response(peer, &error, "history");
                if let Some(reply) = self.history_fetches.remove(&request_id) {
                    let _ = reply.send(Err(format!("history request to {peer}: {error}")));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "serving ledger history failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>, ctx: &mut Context<Self>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(address = %format!("{address}/p2p/{}", self.local_peer_id()), "p2p listening");
                self.listen_addrs.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => self.table.disconnected(&peer_id),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => match self.options.protocols.check_peer(&info.protocol_version) {
                Ok(()) => {
                    if !self.table.contains(&peer_id) {
                        info!(peer = %peer_id, "peer joined");
                    }
                    self.table
                        .connected(Instant::now(), peer_id, info.listen_addrs.clone());
                    for addr in info.listen_addrs {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
                Err(reason) => {
                    warn!(peer = %peer_id, %reason, "peer refused");
                    self.table.refused(format!("{peer_id}: {reason}"));
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => self.table.record_alive(Instant::now(), &peer, rtt),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer,
                addresses,
                ..
            })) => self.discovered(peer, addresses.into_vec()),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    self.discovered(peer, vec![addr]);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.on_gossip(propagation_source, message_id, message),
            SwarmEvent::Behaviour(BehaviourEvent::Blobs(event)) => self.on_blob_event(event, ctx),
            SwarmEvent::Behaviour(BehaviourEvent::History(event)) => {
                self.on_history_event(event, ctx)
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(peer = ?peer_id, %error, "outgoing connection failed");
            }
            _ => {}
        }
    }
}

/// The Swarm as an actor stream: polled with access to the actor, so events and commands are
/// handled on the same thread, one at a time.
struct SwarmEvents;

impl ActorStream<PeerActor> for SwarmEvents {
    type Item = SwarmEvent<BehaviourEvent>;

    fn poll_next(
        self: Pin<&mut Self>,
        act: &mut PeerActor,
        _: &mut Context<PeerActor>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        act.swarm.poll_next_unpin(task)
    }
}

impl Actor for PeerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.spawn(
            SwarmEvents
                .map(|event, act: &mut Self, ctx| act.on_swarm_event(event, ctx))
                .finish(),
        );
        self.dial_seeds();
        let interval = self.options.policy.heartbeat_interval;
        run_every(ctx, interval, |act, _| act.tick());
        run_every(ctx, VIEW_REFRESH, |act, _| act.publish_view());
        // Seeds are dialled again while the node has no peer at all (it started before its seed
        // listened, or the seed restarted): after a second, backing off to three heartbeats.
        let mut redial = SeedRedial::new(Instant::now(), interval * 3);
        run_every(ctx, FIRST_REDIAL / 2, move |act, _| {
            let isolated = act.swarm.connected_peers().next().is_none();
            if redial.due(Instant::now(), isolated) {
                act.dial_seeds();
            }
        });
        if self.options.tracker.is_some() {
            // The first announcement waits for the listen addresses to be known.
            ctx.run_later(Duration::from_millis(500), |act, ctx| act.announce(ctx));
            run_every(ctx, self.options.announce_interval, |act, ctx| {
                act.announce(ctx)
            });
        }
    }
}

/// The trainer peers of the view, banned ones left out: what the round decisions count.
fn trainer_peers(peers: &[PeerView]) -> Vec<TrainerPeer> {
    peers
        .iter()
        .filter(|p| !p.banned)
        .filter_map(|p| {
            let h = p.heartbeat.as_ref().filter(|h| h.role == "trainer")?;
            Some(TrainerPeer {
                node_id: p.node_id.clone(),
                peer_id: p.peer_id.parse().ok()?,
                admitted: p.admitted,
                round: h.outer_round,
                theta0_hash: h.theta0_hash.clone(),
                momentum_hash: h.momentum_hash.clone(),
            })
        })
        .collect()
}

impl Handler<OfferBlob> for PeerActor {
    type Result = ();

    fn handle(&mut self, msg: OfferBlob, _: &mut Self::Context) {
        self.blobs.insert(msg.id, msg.bytes);
    }
}

impl Handler<WithdrawBlobs> for PeerActor {
    type Result = ();

    fn handle(&mut self, msg: WithdrawBlobs, _: &mut Self::Context) {
        msg.ids.iter().for_each(|id| self.blobs.remove(id));
    }
}

impl Handler<FetchBlob> for PeerActor {
    type Result = ResponseFuture<Result<Arc<Vec<u8>>, FetchError>>;

    /// At most `fetch_limit` transfers from one peer and `MAX_FETCHES` in all are in flight:
    /// more are refused at once, so neither a flood of announcements nor a slow peer can pile
    /// transfers (and their buffers) up.
    fn handle(&mut self, msg: FetchBlob, _: &mut Self::Context) -> Self::Result {
        let per_peer = fetch_limit(
            self.options.genesis.as_ref().map(|g| g.policy),
            self.table.is_admitted(&msg.peer, unix_s()),
        );
        let from_peer = self.pending.values().filter(|p| p.peer == msg.peer).count();
        if from_peer >= per_peer || self.pending.len() >= MAX_FETCHES {
            let busy = FetchError::Busy {
                peer: msg.peer,
                from_peer,
                total: self.pending.len(),
                per_peer,
                max: MAX_FETCHES,
            };
            return Box::pin(async move { Err(busy) });
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = BlobRequest {
            id: msg.id,
            max_bytes: msg.max_bytes,
            range: msg.range,
        };
        let request_id = self
            .swarm
            .behaviour_mut()
            .blobs
            .send_request(&msg.peer, request);
        self.pending.insert(
            request_id,
            PendingFetch {
                peer: msg.peer,
                blob: msg.id,
                range: msg.range.is_some(),
                reply,
            },
        );
        Box::pin(async move { answer.await.unwrap_or(Err(FetchError::Stopped)) })
    }
}

impl Handler<FetchHistory> for PeerActor {
    type Result = ResponseFuture<Result<(PeerId, HistoryResponse), String>>;

    fn handle(&mut self, msg: FetchHistory, _: &mut Self::Context) -> Self::Result {
        let peer = msg.peer.or_else(|| {
            let own = &self.options.faults.own_sybils;
            let connected: Vec<PeerId> = self
                .swarm
                .connected_peers()
                .filter(|p| !own.contains(p))
                .copied()
                .collect();
            self.history_turn = self.history_turn.wrapping_add(1);
            connected
                .get(self.history_turn % connected.len().max(1))
                .copied()
        });
        let Some(peer) = peer else {
            return Box::pin(async { Err("no peer connected".to_string()) });
        };
        if self.history_fetches.len() >= MAX_HISTORY_FETCHES {
            return Box::pin(async { Err("history requests in flight at the limit".to_string()) });
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request_id = self
            .swarm
            .behaviour_mut()
            .history
            .send_request(&peer, msg.request);
        self.history_fetches.insert(request_id, reply);
        Box::pin(async move {
            answer
                .await
                .unwrap_or_else(|_| Err("the network stopped".to_string()))
        })
    }
}

impl Handler<RegisterRounds> for PeerActor {
    type Result = ();

    fn handle(&mut self, msg: RegisterRounds, _: &mut Self::Context) {
        self.rounds = Some(msg);
    }
}

impl Handler<RegisterLedger> for PeerActor {
    type Result = ();

    fn handle(&mut self, msg: RegisterLedger, _: &mut Self::Context) {
        self.ledger = Some(msg);
    }
}

impl Handler<PublishLedger> for PeerActor {
    type Result = ();

    fn handle(&mut self, msg: PublishLedger, _: &mut Self::Context) {
        let topic = self.topics.ledger.clone();
        let data = wire::seal(&self.options.identity, &topic.to_string(), &msg.0);
        self.publish(topic, data);
    }
}

impl Handler<PeerOffence> for PeerActor {
    type Result = ();

    /// The ledger refused what `peer` signed (replay, rate, implausible, overdraft…): it counts
    /// against the peer like any other rejected message.
    fn handle(&mut self, msg: PeerOffence, _: &mut Self::Context) {
        self.rejected(Instant::now(), msg.peer, &msg.rejection);
    }
}

impl Handler<AnnounceRound> for PeerActor {
    type Result = ();

    fn handle(&mut self, msg: AnnounceRound, _: &mut Self::Context) {
        let topic = self.topics.round.clone();
        let data = wire::seal(&self.options.identity, &topic.to_string(), &msg.0);
        self.publish(topic, data);
        if let Some(id) = BlobId::from_hex(&msg.0.delta_hash)
            && !self.own_deltas.contains(&id)
        {
            if self.own_deltas.len() >= OWN_DELTAS_KEPT {
                self.own_deltas.pop_front();
            }
            self.own_deltas.push_back(id);
        }
        if let Some(attack) = &self.attack {
            let own_delta = BlobId::from_hex(&msg.0.delta_hash).and_then(|id| {
                match self.blobs.response(&id, None) {
                    BlobResponse::Found { bytes, .. } => Some(bytes),
                    BlobResponse::Missing => None,
                }
            });
            attack.do_send(RoundObserved {
                announcement: msg.0,
                own_delta,
            });
        }
    }
}

impl Handler<RegisterAttack> for PeerActor {
    type Result = ();

    fn handle(&mut self, msg: RegisterAttack, _: &mut Self::Context) {
        self.attack = Some(msg.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_sender_withholds_only_its_round_deltas() {
        let timeout = Duration::from_secs(30);
        let serve = |slow, delta| match SlowBlob::serve(slow, delta, timeout) {
            Serve::Now => "now".to_string(),
            Serve::After(d) => format!("after {}", d.as_secs()),
            Serve::Hold => "hold".to_string(),
        };
        assert_eq!(serve(None, true), "now");
        assert_eq!(serve(Some(SlowBlob::JustInTime), false), "now");
        assert_eq!(serve(Some(SlowBlob::JustInTime), true), "after 29");
        assert_eq!(serve(Some(SlowBlob::Never), true), "hold");
        assert_eq!(SlowBlob::parse("never"), Some(SlowBlob::Never));
        assert_eq!(SlowBlob::parse("0"), None);
    }

    #[test]
    fn unadmitted_identities_get_the_fewest_transfers_only_where_admission_exists() {
        let permissioned = Some(Policy::Permissioned);
        assert_eq!(fetch_limit(permissioned, false), MAX_FETCHES_UNADMITTED);
        assert_eq!(fetch_limit(permissioned, true), MAX_FETCHES_PER_PEER);
        // Open networks and the built-in default admit nobody by certificate: no one is singled out.
        assert_eq!(fetch_limit(Some(Policy::Open), false), MAX_FETCHES_PER_PEER);
        assert_eq!(fetch_limit(None, false), MAX_FETCHES_PER_PEER);
    }
}
