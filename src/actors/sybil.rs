//! SybilActor: the attacker's toolkit of the test fault switches NEUROSHARD_FAULT_SYBIL and
//! NEUROSHARD_FAULT_VERDICT_FORGE (and the Sybils' side of _HEAL_POISON and _SLOW_BLOB). A test
//! and demo tool, never for production: it makes today's Sybil weaknesses observable.
//!
//! The node runs N extra identities in its own process, on this actor's thread. Identity i's
//! token is `Identity::sybil_token(i)` of the node's key (deterministic, so a test can compute
//! its node_id); each has its own libp2p Swarm built by the node's own `peer::build_swarm` (same
//! transport, protocol version, topics and gossip configuration), dials the peers the node knows,
//! and every heartbeat interval gossips a signed heartbeat as a trainer mirroring the node's round
//! and θ₀. When the node announces its delta for a round, each identity announces (and serves) a
//! poisoned delta of its own for the same round and θ₀ (`diloco::attack::sybil_delta`). With
//! VERDICT_FORGE the node and its identities gossip forged verdicts for every round they see close:
//! every honest contributor rejected, themselves kept.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use actix::fut::ActorStream;
use actix::prelude::*;
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, Swarm, identify};
use tracing::{debug, info, warn};

use super::messages::{PublishLedger, RegisterAttack, RoundObserved};
use super::peer::{
    Behaviour, BehaviourEvent, MAX_HELD_REQUESTS, OWN_DELTAS_KEPT, PeerActor, PeerOptions, Serve,
    SlowBlob, Topics, build_swarm, heartbeat_of, poisoned_blob,
};
use super::run_every;
use crate::admission::Certificate;
use crate::crypto::Identity;
use crate::diloco::attack::{Attack, sybil_delta};
use crate::diloco::codec::{CodecConfig, decode, encode};
use crate::net::blob::{BlobId, BlobRequest, BlobResponse, BlobStore};
use crate::net::meter::ByteMeter;
use crate::net::wire::{self, LedgerMessage, RoundAnnouncement, RoundVerdictsWire, unix_ms};
use crate::status::{NodeStatus, StatusBoard};

/// Most Sybil identities one node runs.
pub const MAX_SYBILS: usize = 64;
/// Rounds of announcements remembered for forging verdicts.
const ROUNDS_KEPT: usize = 8;

/// What the attacker runs with.
pub struct SybilOptions {
    /// The node's network options (its identity is the node's; the Sybils get their own).
    pub network: PeerOptions,
    pub identities: Vec<Identity>,
    /// Values in θ₀: the length every delta has.
    pub num_params: usize,
    /// The node's delta codec: the Sybils' deltas are encoded the same way.
    pub compression: CodecConfig,
    /// The node's NEUROSHARD_FAULT_BYZANTINE attack, if any.
    pub attack: Option<Attack>,
    /// NEUROSHARD_FAULT_VERDICT_FORGE.
    pub verdict_forge: bool,
    /// NEUROSHARD_FAULT_SYBIL_CERTS: identity i presents DIR/sybil-<i>.json once it exists.
    pub certificates: Option<PathBuf>,
}

/// One extra identity and its Swarm.
struct Sybil {
    index: usize,
    identity: Identity,
    swarm: Swarm<Behaviour>,
    blobs: BlobStore,
    own_deltas: VecDeque<BlobId>,
    held: VecDeque<(Instant, ResponseChannel<BlobResponse>)>,
    /// This identity's announcement for the round the node last announced.
    announced: Option<RoundAnnouncement>,
    /// Its membership certificate (NEUROSHARD_FAULT_SYBIL_CERTS), once the file exists.
    certificate: Option<Certificate>,
}

impl Sybil {
    fn publish(&mut self, topic: &IdentTopic, body: &impl serde::Serialize) {
        let data = wire::seal(&self.identity, &topic.to_string(), body);
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic.clone(), data)
        {
            Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => debug!(sybil = self.index, error = %e, "gossip publish failed"),
        }
    }

    /// Reads DIR/sybil-<i>.json once it exists (a test writes it when it admits the identity).
    fn load_certificate(&mut self, dir: Option<&PathBuf>) {
        let Some(dir) = dir.filter(|_| self.certificate.is_none()) else {
            return;
        };
        let path = dir.join(format!("sybil-{}.json", self.index));
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        match serde_json::from_str(&text) {
            Ok(certificate) => {
                info!(sybil = self.index, path = %path.display(), "membership certificate loaded");
                self.certificate = Some(certificate);
            }
            Err(e) => warn!(path = %path.display(), error = %e, "not a JSON certificate"),
        }
    }

    /// This identity's heartbeat: a trainer at the node's round and θ₀ (or the poisoned claim).
    /// The one place a Sybil's heartbeat is made.
    ///
    /// Identity i presents DIR/sybil-<i>.json (NEUROSHARD_FAULT_SYBIL_CERTS) once it exists.
    fn heartbeat(
        &self,
        status: &NodeStatus,
        poison: Option<&crate::diloco::attack::PoisonedOuter>,
    ) -> Option<wire::Heartbeat> {
        heartbeat_of(
            status,
            &self.identity.node_id,
            "trainer",
            poison,
            self.certificate.as_ref(),
        )
    }
}

pub struct SybilActor {
    options: SybilOptions,
    topics: Topics,
    sybils: Vec<Sybil>,
    status: StatusBoard,
    /// The node's own network actor: the node's forged verdicts go out through it.
    node: Addr<PeerActor>,
    /// PeerIds and node_ids of the node and its Sybils: "ours".
    our_peers: HashSet<PeerId>,
    our_nodes: HashSet<String>,
    /// Round announcements seen: round → node_id → delta hash.
    seen: BTreeMap<u64, BTreeMap<String, String>>,
    /// Rounds whose verdicts were forged already.
    forged: BTreeSet<u64>,
    /// The latest round the node announced a delta for (and the Sybils did too).
    prepared_round: Option<u64>,
}

/// `addr` with its TCP port replaced by 0: the Sybils listen where the node does, on any port.
fn any_port(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .map(|p| match p {
            Protocol::Tcp(_) => Protocol::Tcp(0),
            p => p,
        })
        .collect()
}

impl SybilActor {
    /// Starts the Sybils on a thread of their own: builds their Swarms there and binds them.
    pub async fn start(
        options: SybilOptions,
        status: StatusBoard,
        node: Addr<PeerActor>,
    ) -> Result<Addr<Self>, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let started = Arbiter::new().spawn_fn(move || {
            let _ = tx.send(Self::build(options, status, node).map(Actor::start));
        });
        if !started {
            return Err("cannot start the Sybil thread".into());
        }
        rx.await
            .map_err(|_| "the Sybil thread stopped while starting".to_string())?
    }

    fn build(
        options: SybilOptions,
        status: StatusBoard,
        node: Addr<PeerActor>,
    ) -> Result<Self, String> {
        let topics = Topics::new(&options.network.protocols);
        let mut network = options.network.clone();
        network.mdns = false; // the Sybils dial what the node knows
        let mut sybils = Vec::with_capacity(options.identities.len());
        for (index, identity) in options.identities.iter().enumerate() {
            let mut swarm = build_swarm(identity, &network, &topics, &ByteMeter::default())?;
            for addr in &options.network.listen {
                let addr = any_port(addr);
                swarm
                    .listen_on(addr.clone())
                    .map_err(|e| format!("sybil {index}: cannot listen on {addr}: {e}"))?;
            }
            warn!(
                sybil = index,
                node_id = %identity.node_id,
                peer_id = %identity.peer_id(),
                "test fault switch NEUROSHARD_FAULT_SYBIL: Sybil identity running"
            );
            sybils.push(Sybil {
                index,
                identity: identity.clone(),
                swarm,
                blobs: BlobStore::new(2 * OWN_DELTAS_KEPT),
                own_deltas: VecDeque::new(),
                held: VecDeque::new(),
                announced: None,
                certificate: None,
            });
        }
        let node_identity = &options.network.identity;
        let our_peers = options
            .identities
            .iter()
            .chain([node_identity])
            .map(Identity::peer_id)
            .collect();
        let our_nodes = options
            .identities
            .iter()
            .chain([node_identity])
            .map(|i| i.node_id.clone())
            .collect();
        Ok(Self {
            options,
            topics,
            sybils,
            status,
            node,
            our_peers,
            our_nodes,
            seen: BTreeMap::new(),
            forged: BTreeSet::new(),
            prepared_round: None,
        })
    }

    /// Connects every Sybil to the node itself, the peers the node lists and its seed peers.
    fn dial(&mut self) {
        let status = self.status.read();
        let view = &status.network;
        let mut targets: Vec<(PeerId, Vec<Multiaddr>)> = Vec::new();
        let node_addrs: Vec<Multiaddr> = view
            .listen_addrs
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        targets.push((self.options.network.identity.peer_id(), node_addrs));
        for p in view.peers.iter().filter(|p| !p.banned) {
            let Ok(peer) = p.peer_id.parse::<PeerId>() else {
                continue;
            };
            if self.our_peers.contains(&peer) {
                continue;
            }
            let addrs: Vec<Multiaddr> = p.addrs.iter().filter_map(|a| a.parse().ok()).collect();
            if !addrs.is_empty() {
                targets.push((peer, addrs));
            }
        }
        for sybil in &mut self.sybils {
            for (peer, addrs) in &targets {
                if addrs.is_empty() || sybil.swarm.is_connected(peer) {
                    continue;
                }
                let dial = DialOpts::peer_id(*peer)
                    .addresses(addrs.clone())
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                if let Err(e) = sybil.swarm.dial(dial) {
                    debug!(sybil = sybil.index, %peer, error = %e, "dial failed");
                }
            }
            if sybil.swarm.connected_peers().next().is_none() {
                for addr in &self.options.network.seed_peers {
                    if let Err(e) = sybil.swarm.dial(addr.clone()) {
                        debug!(sybil = sybil.index, %addr, error = %e, "cannot dial seed peer");
                    }
                }
            }
        }
    }

    /// Every heartbeat interval: dial, heartbeat as trainers, forge verdicts of closed rounds.
    fn tick(&mut self) {
        self.dial();
        let status = self.status.read();
        let poison = self.options.network.faults.heal_poison.clone();
        let limit = self.options.network.blob_timeout * 2;
        let topic = self.topics.heartbeat.clone();
        for sybil in &mut self.sybils {
            while sybil
                .held
                .front()
                .is_some_and(|(at, _)| at.elapsed() > limit)
            {
                sybil.held.pop_front();
            }
            sybil.load_certificate(self.options.certificates.as_ref());
            if let Some(heartbeat) = sybil.heartbeat(&status, poison.as_deref()) {
                sybil.publish(&topic, &heartbeat);
            }
        }
        if self.options.verdict_forge {
            self.forge_verdicts(&status);
        }
    }

    /// Remembers who announced which delta for which round.
    fn record(&mut self, a: &RoundAnnouncement) {
        self.seen
            .entry(a.round)
            .or_default()
            .insert(a.node_id.clone(), a.delta_hash.clone());
        while self.seen.len() > ROUNDS_KEPT {
            self.seen.pop_first();
        }
    }

    /// For each round r the honest trainers have left (their heartbeats show round r + 1), once:
    /// gossip verdicts on r from the node and every Sybil, naming the θ₀ the honest majority
    /// holds for r + 1, rejecting every honest contributor and keeping our own.
    fn forge_verdicts(&mut self, status: &NodeStatus) {
        let mut honest: BTreeMap<u64, BTreeMap<String, usize>> = BTreeMap::new();
        for p in status.network.peers.iter().filter(|p| !p.banned) {
            let ours = p
                .peer_id
                .parse::<PeerId>()
                .is_ok_and(|peer| self.our_peers.contains(&peer));
            let Some(h) = p
                .heartbeat
                .as_ref()
                .filter(|h| h.role == "trainer" && !ours)
            else {
                continue;
            };
            *honest
                .entry(h.outer_round)
                .or_default()
                .entry(h.theta0_hash.clone())
                .or_default() += 1;
        }
        for (next, hashes) in honest {
            let Some(round) = next.checked_sub(1) else {
                continue;
            };
            let Some(seen) = self
                .seen
                .get(&round)
                .filter(|_| !self.forged.contains(&round))
            else {
                continue;
            };
            let Some((theta0_after, _)) = hashes
                .iter()
                .max_by_key(|(hash, count)| (**count, (*hash).clone()))
            else {
                continue;
            };
            let verdicts: Vec<(String, String, bool)> = seen
                .iter()
                .map(|(node_id, delta)| {
                    (
                        node_id.clone(),
                        delta.clone(),
                        self.our_nodes.contains(node_id),
                    )
                })
                .collect();
            let rejected = verdicts.iter().filter(|v| !v.2).count();
            let message = LedgerMessage::Verdicts(RoundVerdictsWire {
                round,
                theta0_after: theta0_after.clone(),
                verdicts,
            });
            self.node.do_send(PublishLedger(message.clone()));
            let topic = self.topics.ledger.clone();
            for sybil in &mut self.sybils {
                sybil.publish(&topic, &message);
            }
            warn!(
                round,
                rejected,
                identities = self.sybils.len() + 1,
                theta0_after = %&theta0_after[..12.min(theta0_after.len())],
                "test fault switch NEUROSHARD_FAULT_VERDICT_FORGE: forged verdicts gossiped"
            );
            self.forged.insert(round);
        }
        while self.forged.len() > 4 * ROUNDS_KEPT {
            self.forged.pop_first();
        }
    }

    /// The node announced its delta for a new round: each Sybil makes, serves and announces its
    /// own poisoned delta for the same round and θ₀.
    fn prepare(&mut self, node: &RoundAnnouncement, bytes: &[u8]) {
        let n = self.options.num_params;
        let sent = decode(bytes, n, f32::INFINITY).ok();
        let mut announced = Vec::new();
        for sybil in &mut self.sybils {
            let delta = sybil_delta(
                sent.as_deref(),
                n,
                self.options.attack,
                sybil.index,
                node.round,
            );
            let encoded = encode(&self.options.compression, &delta);
            let id = BlobId::of(&encoded);
            let announcement = RoundAnnouncement {
                node_id: sybil.identity.node_id.clone(),
                round: node.round,
                theta0_hash: node.theta0_hash.clone(),
                delta_hash: id.to_string(),
                delta_bytes: encoded.len() as u64,
                codec: node.codec.clone(),
                tokens: node.tokens,
                sent_at_ms: unix_ms(),
                claims: Vec::new(),
            };
            sybil.blobs.insert(id, Arc::new(encoded));
            if sybil.own_deltas.len() >= OWN_DELTAS_KEPT {
                sybil.own_deltas.pop_front();
            }
            sybil.own_deltas.push_back(id);
            sybil.announced = Some(announcement.clone());
            announced.push(announcement);
        }
        for a in &announced {
            self.record(a);
        }
        self.prepared_round = Some(node.round);
        info!(
            round = node.round,
            sybils = self.sybils.len(),
            "Sybil deltas announced"
        );
    }

    fn on_event(&mut self, i: usize, event: SwarmEvent<BehaviourEvent>, ctx: &mut Context<Self>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let sybil = &self.sybils[i];
                debug!(sybil = i, address = %format!("{address}/p2p/{}", sybil.identity.peer_id()), "sybil listening");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let swarm = &mut self.sybils[i].swarm;
                if self
                    .options
                    .network
                    .protocols
                    .check_peer(&info.protocol_version)
                    .is_err()
                {
                    let _ = swarm.disconnect_peer_id(peer_id);
                    return;
                }
                for addr in info.listen_addrs {
                    swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                let mut acceptance = MessageAcceptance::Ignore;
                if message.topic == self.topics.round.hash()
                    && let Some(origin) = message.source
                    && let Ok((a, node_id)) = wire::open::<RoundAnnouncement>(
                        &self.topics.round.to_string(),
                        &message.data,
                        &origin,
                    )
                    && a.node_id == node_id
                {
                    self.record(&a);
                    acceptance = MessageAcceptance::Accept;
                }
                let _ = self.sybils[i]
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Blobs(request_response::Event::Message {
                message:
                    request_response::Message::Request {
                        request: BlobRequest { id, range, .. },
                        channel,
                        ..
                    },
                ..
            })) => {
                let faults = &self.options.network.faults;
                let sybil = &mut self.sybils[i];
                let response = poisoned_blob(faults.heal_poison.as_deref(), &id)
                    .unwrap_or_else(|| sybil.blobs.response(&id, range));
                let round_delta = sybil.own_deltas.contains(&id);
                match SlowBlob::serve(
                    faults.slow_blob,
                    round_delta,
                    self.options.network.blob_timeout,
                ) {
                    Serve::Now => {
                        let _ = sybil
                            .swarm
                            .behaviour_mut()
                            .blobs
                            .send_response(channel, response);
                    }
                    Serve::After(delay) => {
                        ctx.run_later(delay, move |act, _| {
                            let _ = act.sybils[i]
                                .swarm
                                .behaviour_mut()
                                .blobs
                                .send_response(channel, response);
                        });
                    }
                    Serve::Hold => {
                        if sybil.held.len() >= MAX_HELD_REQUESTS {
                            sybil.held.pop_front();
                        }
                        sybil.held.push_back((Instant::now(), channel));
                    }
                }
            }
            _ => {}
        }
    }
}

/// Sybil `.0`'s Swarm as an actor stream.
struct SybilEvents(usize);

impl ActorStream<SybilActor> for SybilEvents {
    type Item = (usize, SwarmEvent<BehaviourEvent>);

    fn poll_next(
        self: Pin<&mut Self>,
        act: &mut SybilActor,
        _: &mut Context<SybilActor>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        let i = self.0;
        act.sybils[i]
            .swarm
            .poll_next_unpin(task)
            .map(|event| event.map(|e| (i, e)))
    }
}

impl Actor for SybilActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        for i in 0..self.sybils.len() {
            ctx.spawn(
                SybilEvents(i)
                    .map(|(i, event), act: &mut Self, ctx| act.on_event(i, event, ctx))
                    .finish(),
            );
        }
        self.node.do_send(RegisterAttack(ctx.address().recipient()));
        // The first dial waits for the node's listen addresses to be published.
        ctx.run_later(std::time::Duration::from_millis(600), |act, _| act.dial());
        run_every(
            ctx,
            self.options.network.policy.heartbeat_interval,
            |act, _| act.tick(),
        );
    }
}

impl Handler<RoundObserved> for SybilActor {
    type Result = ();

    /// A round announcement: remembered (for forged verdicts); when it is the node's own, the
    /// Sybils announce theirs for the same round (and repeat it whenever the node repeats its).
    fn handle(&mut self, msg: RoundObserved, _: &mut Self::Context) {
        let a = msg.announcement;
        self.record(&a);
        let Some(bytes) = msg.own_delta else {
            return;
        };
        if self.prepared_round.is_none_or(|r| a.round > r) {
            self.prepare(&a, &bytes);
        }
        if self.prepared_round != Some(a.round) {
            return; // the node repeating an older round's announcement
        }
        let topic = self.topics.round.clone();
        for sybil in &mut self.sybils {
            if let Some(mine) = sybil.announced.clone() {
                let again = RoundAnnouncement {
                    sent_at_ms: unix_ms(),
                    ..mine
                };
                sybil.publish(&topic, &again);
            }
        }
    }
}
