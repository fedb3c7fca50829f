//! The peer table and every decision about peers: who is alive, who is dropped for silence, who is
//! rate-limited or banned, and why. Pure: the clock is an argument, so each rule is tested without
//! sockets or sleeps; the PeerActor applies the decisions and logs the reasons.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use serde::Serialize;

use super::wire::{Heartbeat, Rejection};
use crate::admission::{CertError, Certificate, Genesis, Policy};
use crate::crypto;
use crate::ledger::checkpoint::Timeouts;
use crate::ledger::witness::WITNESS_FLUSH;

/// Certificate verifications remembered (by the certificate's bytes) before the cache starts over.
const MAX_CACHED_CERTIFICATES: usize = 1024;

/// Peers the table holds at most: gossip from any number of fresh identities (relayed by real
/// peers) cannot grow it without bound; a connection limit keeps the connected ones well below.
pub const MAX_PEERS: usize = 4096;

/// Limits from the `[network]` config.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    pub heartbeat_interval: Duration,
    /// A peer not heard from for this many heartbeat intervals is dropped.
    pub drop_after_intervals: u32,
    /// Gossip messages one origin may send per heartbeat interval on each topic; more are
    /// rejected.
    pub gossip_limits: GossipLimits,
    /// Rejections within one interval that get a peer banned.
    pub ban_after_rejections: u32,
    /// A gossipsub score below this (its graylist threshold: the router already ignores the peer)
    /// gets a peer banned too.
    pub ban_below_score: f64,
    pub ban_for: Duration,
}

/// Sync repeats its last two round announcements every 2 s so late joiners hear them
/// (actors/sync.rs uses these): what the budget counts them as.
pub const REANNOUNCED: u64 = 2;
pub const REANNOUNCE_EVERY: Duration = Duration::from_secs(2);

/// The fastest inner step the budget assumes (nano on a fast machine takes several): a round of
/// H steps takes at least H of them, which bounds an honest node's rounds per window.
pub const FASTEST_STEP: Duration = Duration::from_millis(1);

/// The limit is this many times an honest node's worst case: timers that fire late and then
/// catch up, a restart's fresh burst, transactions a user sends by hand.
pub const HEADROOM: u64 = 2;

/// The gossip topics. Each has its own budget, so a flood on one (thousands of heartbeats) is cut
/// off at that topic's few messages instead of spending the allowance that proofs need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Heartbeat,
    Round,
    Ledger,
}

impl Topic {
    pub const ALL: [Topic; 3] = [Topic::Heartbeat, Topic::Round, Topic::Ledger];

    fn index(self) -> usize {
        self as usize
    }
}

/// Gossip messages one origin may send per heartbeat interval, by topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GossipLimits {
    pub heartbeat: u32,
    pub round: u32,
    pub ledger: u32,
}

impl GossipLimits {
    /// The same limit on every topic (a configured `max_messages_per_interval`).
    pub fn uniform(limit: u32) -> Self {
        Self {
            heartbeat: limit,
            round: limit,
            ledger: limit,
        }
    }

    pub fn of(&self, topic: Topic) -> u32 {
        match topic {
            Topic::Heartbeat => self.heartbeat,
            Topic::Round => self.round,
            Topic::Ledger => self.ledger,
        }
    }
}

/// The config an honest node's gossip follows; the rate limit is derived from it, so an honest
/// peer with the same settings is never rate-limited. Per origin and per window of one heartbeat
/// interval, an honest node gossips:
/// - heartbeats, one every interval (heartbeat topic);
/// - round announcements: `REANNOUNCED` every `REANNOUNCE_EVERY`, plus two per new round (the
///   announcement, and in a sharded round again with its slice claims) (round topic);
/// - on the ledger topic: its round verdicts, one message per round; proofs (uptime each tick,
///   training each round, inference per /generate_text): its own ledger checks each against
///   `max_proofs_per_hour` before gossiping it, so however a user drives inference, no window
///   holds more than that; its recent proofs and witness statements again, two messages each
///   uptime tick; its new witness statements, one message each `WITNESS_FLUSH`; checkpoint
///   consensus, a proposal and two votes per consensus round (a round lasts at least the
///   prevote timeout) and its last two votes again each rebroadcast timeout.
///
/// Peers are assumed to run the same round length and ledger limits, as one network's nodes do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HonestGossip {
    pub heartbeat_interval: Duration,
    /// H, inner steps per round.
    pub inner_steps: u64,
    pub uptime_interval: Duration,
    pub max_proofs_per_hour: u32,
}

impl HonestGossip {
    /// The most gossip messages an honest node originates on `topic` in one heartbeat interval.
    pub fn worst_case(&self, topic: Topic) -> u64 {
        let window = self.heartbeat_interval;
        let shortest_round =
            FASTEST_STEP.saturating_mul(u32::try_from(self.inner_steps).unwrap_or(u32::MAX));
        let rounds = ticks(window, shortest_round);
        match topic {
            Topic::Heartbeat => ticks(window, self.heartbeat_interval),
            Topic::Round => REANNOUNCED
                .saturating_mul(ticks(window, REANNOUNCE_EVERY))
                .saturating_add(rounds.saturating_mul(2)),
            // Every proof of the window at once; the hourly limit bounds them together.
            Topic::Ledger => {
                let checkpoint = Timeouts::default();
                rounds
                    .saturating_add(u64::from(self.max_proofs_per_hour))
                    .saturating_add(2u64.saturating_mul(ticks(window, self.uptime_interval)))
                    .saturating_add(ticks(window, WITNESS_FLUSH))
                    .saturating_add(3u64.saturating_mul(ticks(window, checkpoint.prevote)))
                    .saturating_add(2u64.saturating_mul(ticks(window, checkpoint.rebroadcast)))
            }
        }
    }

    /// The most an honest node originates on its busiest topic: a uniform limit below it would
    /// rate-limit honest peers.
    pub fn busiest(&self) -> u64 {
        Topic::ALL
            .map(|t| self.worst_case(t))
            .into_iter()
            .max()
            .unwrap_or(0)
    }

    /// Gossip messages one origin may send per heartbeat interval on each topic: the worst case
    /// with headroom.
    pub fn limits(&self) -> GossipLimits {
        let limit = |topic| {
            u32::try_from(self.worst_case(topic).saturating_mul(HEADROOM)).unwrap_or(u32::MAX)
        };
        GossipLimits {
            heartbeat: limit(Topic::Heartbeat),
            round: limit(Topic::Round),
            ledger: limit(Topic::Ledger),
        }
    }
}

/// The most ticks of a clock of `period` in a window of `window`, counting one tick that fired
/// late and the next one on time.
fn ticks(window: Duration, period: Duration) -> u64 {
    let period = period.as_micros().max(1);
    u64::try_from(window.as_micros().div_ceil(period))
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// This node's genesis and the certificates already checked against it: a heartbeat carrying a
/// known certificate costs a hash lookup, not an ECDSA verification.
struct Admission {
    genesis: Genesis,
    checked: HashMap<[u8; 32], Result<(), CertError>>,
}

#[derive(Debug, Clone)]
struct Window {
    start: Instant,
    /// Messages by `Topic::index`.
    messages: [u32; 3],
    rejections: u32,
}

impl Window {
    /// The counters of the interval containing `now`.
    fn current(&mut self, now: Instant, interval: Duration) -> &mut Self {
        if now.saturating_duration_since(self.start) >= interval {
            *self = Window {
                start: now,
                messages: [0; 3],
                rejections: 0,
            };
        }
        self
    }
}

#[derive(Debug, Clone)]
struct Entry {
    node_id: String,
    addrs: Vec<Multiaddr>,
    connected: bool,
    last_seen: Instant,
    latency: Option<Duration>,
    accepted: u64,
    rejected: u64,
    rejections: BTreeMap<&'static str, u64>,
    last_rejection: Option<String>,
    heartbeat: Option<Heartbeat>,
    heartbeat_age_ms: Option<i64>,
    window: Window,
    banned_until: Option<Instant>,
    /// Since when its gossipsub score has been below the ban threshold, at every look.
    low_score_since: Option<Instant>,
    /// Expiry (unix s) of the valid certificate of the peer's last heartbeat.
    admitted_until_s: Option<u64>,
    /// Round announcements and ledger messages dropped because the peer is not admitted.
    unadmitted: u64,
}

/// One row of /api/peers.
#[derive(Debug, Clone, Serialize)]
pub struct PeerView {
    pub node_id: String,
    pub peer_id: String,
    pub addrs: Vec<String>,
    pub connected: bool,
    pub last_seen_s: f64,
    pub latency_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// Rejected messages by kind (malformed, oversized, bad_signature, rate_limited, ...).
    pub rejections: BTreeMap<&'static str, u64>,
    pub last_rejection: Option<String>,
    pub banned: bool,
    /// The peer's last heartbeat: role, step, round, θ₀ hash, tokens/s.
    pub heartbeat: Option<Heartbeat>,
    /// Arrival time minus the heartbeat's own timestamp: gossip delay plus clock offset.
    pub heartbeat_age_ms: Option<i64>,
    /// The peer's last heartbeat carried a valid, unexpired certificate for its node_id under this
    /// node's genesis (always false without a genesis).
    pub admitted: bool,
    /// When that certificate expires (unix seconds).
    pub admitted_until_s: Option<u64>,
    /// Messages of this peer dropped because it is not admitted (not rejections: unadmitted nodes
    /// may observe, and are never banned for it).
    pub unadmitted: u64,
}

/// Network-wide counters of /api/network.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NetworkTotals {
    /// Over all connections since start, peers gone included.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub messages_accepted: u64,
    pub messages_rejected: u64,
    /// Peers disconnected for another network id, model or protocol version.
    pub peers_refused: u64,
    pub last_refusal: Option<String>,
    pub peers_banned: u64,
    /// Round announcements and ledger messages dropped because their origin is not admitted.
    pub messages_unadmitted: u64,
}

/// What `reject` decided.
#[derive(Debug, PartialEq)]
pub struct RejectOutcome {
    /// Messages rejected from this peer so far.
    pub total: u64,
    /// Set when this rejection crossed the ban threshold: the reason, for the log.
    pub ban: Option<String>,
}

/// What `expire` decided.
#[derive(Debug, Default, PartialEq)]
pub struct Expired {
    /// Peers silent too long, with the reason.
    pub dropped: Vec<(PeerId, String)>,
    /// Peers whose ban ran out.
    pub unbanned: Vec<PeerId>,
}

pub struct PeerTable {
    policy: PeerPolicy,
    peers: HashMap<PeerId, Entry>,
    totals: NetworkTotals,
    admission: Option<Admission>,
    /// The last time this node's network loop ran (`observe_clock`).
    last_run: Option<Instant>,
    /// After this node itself stalled, until when the messages queued meanwhile are not held
    /// against their senders (`catching_up`).
    catching_up_until: Option<Instant>,
}

/// A gap in this node's own loop longer than this many heartbeat intervals is a stall of this
/// node (a suspended laptop, SIGSTOP, a swapped-out process), not of its peers.
const STALL_INTERVALS: u32 = 3;
/// Heartbeat intervals after a stall in which peers' queued messages arrive in a burst (and
/// stale): they are counted, but nobody is rate-limited or banned for them.
const CATCH_UP_INTERVALS: u32 = 5;

impl PeerTable {
    pub fn new(policy: PeerPolicy) -> Self {
        Self {
            policy,
            peers: HashMap::new(),
            totals: NetworkTotals::default(),
            admission: None,
            last_run: None,
            catching_up_until: None,
        }
    }

    /// Peers' certificates are checked against `genesis`; in a permissioned network only
    /// admitted peers' work is passed on.
    pub fn with_genesis(mut self, genesis: Genesis) -> Self {
        self.admission = Some(Admission {
            genesis,
            checked: HashMap::new(),
        });
        self
    }

    fn entry(&mut self, now: Instant, peer: PeerId) -> &mut Entry {
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_PEERS {
            self.evict_one(now);
        }
        self.peers.entry(peer).or_insert_with(|| Entry {
            node_id: crypto::node_id_of_peer(&peer),
            addrs: Vec::new(),
            connected: false,
            last_seen: now,
            latency: None,
            accepted: 0,
            rejected: 0,
            rejections: BTreeMap::new(),
            last_rejection: None,
            heartbeat: None,
            heartbeat_age_ms: None,
            window: Window {
                start: now,
                messages: [0; 3],
                rejections: 0,
            },
            banned_until: None,
            low_score_since: None,
            admitted_until_s: None,
            unadmitted: 0,
        })
    }

    /// Makes room for one more peer: the one silent longest among those neither connected nor
    /// banned (a ban must outlive a flood of new identities), else the one silent longest among
    /// those not connected.
    fn evict_one(&mut self, now: Instant) {
        let oldest = |banned_too: bool| {
            self.peers
                .iter()
                .filter(|(_, e)| !e.connected)
                .filter(|(_, e)| banned_too || e.banned_until.is_none_or(|until| now >= until))
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(peer, _)| *peer)
        };
        if let Some(peer) = oldest(false).or_else(|| oldest(true)) {
            self.peers.remove(&peer);
        }
    }

    pub fn contains(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    pub fn is_banned(&self, peer: &PeerId, now: Instant) -> bool {
        self.peers
            .get(peer)
            .and_then(|e| e.banned_until)
            .is_some_and(|until| now < until)
    }

    /// A peer of our network and model connected directly (identify checked it).
    pub fn connected(&mut self, now: Instant, peer: PeerId, addrs: Vec<Multiaddr>) {
        let entry = self.entry(now, peer);
        entry.connected = true;
        entry.last_seen = now;
        if !addrs.is_empty() {
            entry.addrs = addrs;
        }
    }

    pub fn disconnected(&mut self, peer: &PeerId) {
        if let Some(entry) = self.peers.get_mut(peer) {
            entry.connected = false;
        }
    }

    /// A ping answered on a direct connection: the peer is alive, `rtt` away.
    pub fn record_alive(&mut self, now: Instant, peer: &PeerId, rtt: Duration) {
        if let Some(entry) = self.peers.get_mut(peer) {
            entry.latency = Some(rtt);
            entry.last_seen = now;
        }
    }

    /// A peer of another network or model was disconnected.
    pub fn refused(&mut self, reason: String) {
        self.totals.peers_refused += 1;
        self.totals.last_refusal = Some(reason);
    }

    /// Whether a gossip message from `origin` may be looked at: not banned, within its rate.
    /// This node's network loop runs at `now` (each heartbeat tick, each gossip message). After a
    /// gap of over `STALL_INTERVALS` heartbeat intervals this node itself was stalled: returns the
    /// gap, and for `CATCH_UP_INTERVALS` the burst of messages its peers sent meanwhile (arriving
    /// at once, and stale) bans nobody.
    pub fn observe_clock(&mut self, now: Instant) -> Option<Duration> {
        let interval = self.policy.heartbeat_interval;
        let gap = self
            .last_run
            .map(|last| now.saturating_duration_since(last))
            .filter(|gap| *gap > interval.saturating_mul(STALL_INTERVALS));
        self.last_run = Some(now);
        if gap.is_some() {
            self.catching_up_until = Some(now + interval.saturating_mul(CATCH_UP_INTERVALS));
        }
        gap
    }

    /// Whether this node is still catching up after its own stall (`observe_clock`).
    pub fn catching_up(&self, now: Instant) -> bool {
        self.catching_up_until.is_some_and(|until| now < until)
    }

    pub fn admit(&mut self, now: Instant, origin: PeerId, topic: Topic) -> Result<(), Rejection> {
        if self.is_banned(&origin, now) {
            return Err(Rejection::Banned);
        }
        let (interval, limit) = (
            self.policy.heartbeat_interval,
            self.policy.gossip_limits.of(topic),
        );
        let window = self.entry(now, origin).window.current(now, interval);
        let messages = &mut window.messages[topic.index()];
        *messages += 1;
        if *messages > limit && !self.catching_up(now) {
            return Err(Rejection::RateLimited { limit });
        }
        Ok(())
    }

    /// A valid heartbeat of `origin` arrived from `source`. Refused when it is not newer than the
    /// last one accepted from that node (a replay), or when it carries a certificate that is
    /// forged, altered or someone else's. An expired certificate, or none, leaves the peer
    /// unadmitted but is no offence.
    /// Whether `origin`'s heartbeat sent at `sent_at_ms` is no newer than the last one accepted
    /// from it (a late copy or a replay).
    pub fn already_heard(&self, origin: &PeerId, sent_at_ms: u64) -> bool {
        self.peers
            .get(origin)
            .and_then(|e| e.heartbeat.as_ref())
            .is_some_and(|last| sent_at_ms <= last.sent_at_ms)
    }

    pub fn accept_heartbeat(
        &mut self,
        now: Instant,
        now_ms: u64,
        source: PeerId,
        origin: PeerId,
        mut heartbeat: Heartbeat,
    ) -> Result<(), Rejection> {
        if self.already_heard(&origin, heartbeat.sent_at_ms) {
            return Err(Rejection::Replayed);
        }
        // The certificate is checked here and not kept with the heartbeat (/api/peers shows the
        // outcome, `admitted`), so the view stays small.
        let certificate = heartbeat.membership.take();
        let admitted_until_s =
            self.check_certificate(now_ms / 1000, &heartbeat.node_id, certificate)?;
        let entry = self.entry(now, origin);
        entry.admitted_until_s = admitted_until_s;
        entry.last_seen = now;
        entry.heartbeat_age_ms = Some(now_ms as i64 - heartbeat.sent_at_ms as i64);
        entry.heartbeat = Some(heartbeat);
        self.accept(now, source);
        Ok(())
    }

    /// The expiry of `certificate` when it admits `node_id` at `now_s` under this node's genesis;
    /// `None` without a genesis or a certificate, or when it expired or is not valid yet.
    fn check_certificate(
        &mut self,
        now_s: u64,
        node_id: &str,
        certificate: Option<Certificate>,
    ) -> Result<Option<u64>, Rejection> {
        let (Some(admission), Some(certificate)) = (&mut self.admission, certificate) else {
            return Ok(None);
        };
        let key = certificate.cache_key();
        let signatures = match admission.checked.get(&key) {
            Some(known) => known.clone(),
            None => {
                let checked = certificate.check_signatures(&admission.genesis);
                if admission.checked.len() >= MAX_CACHED_CERTIFICATES {
                    admission.checked.clear();
                }
                admission.checked.insert(key, checked.clone());
                checked
            }
        };
        match signatures.and_then(|()| certificate.check_holder(now_s, node_id)) {
            Ok(()) => Ok(Some(certificate.expires_at_s)),
            Err(e) if e.is_offence() => Err(Rejection::BadCertificate(e.to_string())),
            Err(_) => Ok(None),
        }
    }

    /// Whether `peer` presented a certificate that admits it at `now_s` (never without a genesis).
    pub fn is_admitted(&self, peer: &PeerId, now_s: u64) -> bool {
        self.admission.is_some()
            && self
                .peers
                .get(peer)
                .and_then(|e| e.admitted_until_s)
                .is_some_and(|until| now_s < until)
    }

    /// Whether the work `origin` signed (a round announcement, a ledger message) is passed on:
    /// always, unless this node's genesis is permissioned and `origin` is not admitted; then the
    /// message is dropped and counted as unadmitted, which is not a rejection and never bans.
    pub fn passes_work(&mut self, now: Instant, now_s: u64, origin: PeerId) -> bool {
        let permissioned = self
            .admission
            .as_ref()
            .is_some_and(|a| a.genesis.policy == Policy::Permissioned);
        if !permissioned || self.is_admitted(&origin, now_s) {
            return true;
        }
        self.entry(now, origin).unadmitted += 1;
        self.totals.messages_unadmitted += 1;
        false
    }

    /// A valid gossip message arrived from `source`.
    pub fn accept(&mut self, now: Instant, source: PeerId) {
        self.entry(now, source).accepted += 1;
        self.totals.messages_accepted += 1;
    }

    /// Counts a rejected message against `peer`. When this rejection crosses the ban threshold
    /// the peer is banned from now on, and the outcome says why.
    pub fn reject(&mut self, now: Instant, peer: PeerId, rejection: &Rejection) -> RejectOutcome {
        let (interval, threshold) = (
            self.policy.heartbeat_interval,
            self.policy.ban_after_rejections,
        );
        self.totals.messages_rejected += 1;
        let catching_up = self.catching_up(now);
        let entry = self.entry(now, peer);
        entry.rejected += 1;
        *entry.rejections.entry(rejection.kind()).or_default() += 1;
        entry.last_rejection = Some(rejection.to_string());
        let total = entry.rejected;
        let window = entry.window.current(now, interval);
        window.rejections += 1;
        if window.rejections < threshold
            || catching_up
            || entry.banned_until.is_some_and(|until| now < until)
        {
            return RejectOutcome { total, ban: None };
        }
        let reason = format!(
            "{} rejected messages within {:?} (last: {rejection})",
            window.rejections, interval
        );
        RejectOutcome {
            total,
            ban: Some(self.ban(now, peer, reason)),
        }
    }

    /// Bans a peer whose gossipsub score stayed below the policy's threshold for a heartbeat
    /// interval (two looks in a row); returns the reason the first time. A score that dips once
    /// is no offence: gossipsub's behaviour penalty (IWANT promises a suspended peer could not
    /// keep) drops an honest peer that resumes below the threshold for a second, and it decays
    /// to nothing within seconds, while a peer that keeps sending invalid messages stays low.
    pub fn judge_score(&mut self, now: Instant, peer: PeerId, score: f64) -> Option<String> {
        if score >= self.policy.ban_below_score {
            if let Some(entry) = self.peers.get_mut(&peer) {
                entry.low_score_since = None;
            }
            return None;
        }
        if self.is_banned(&peer, now) || self.catching_up(now) {
            return None;
        }
        let since = *self.entry(now, peer).low_score_since.get_or_insert(now);
        let low_for = now.saturating_duration_since(since);
        if low_for < self.policy.heartbeat_interval {
            return None;
        }
        let reason = format!(
            "gossip score {score:.0} below {:.0} for {} s",
            self.policy.ban_below_score,
            low_for.as_secs()
        );
        Some(self.ban(now, peer, reason))
    }

    fn ban(&mut self, now: Instant, peer: PeerId, reason: String) -> String {
        let ban_for = self.policy.ban_for;
        self.entry(now, peer).banned_until = Some(now + ban_for);
        self.totals.peers_banned += 1;
        format!("{reason}; banned for {ban_for:?}")
    }

    /// Drops peers silent for `drop_after_intervals` heartbeat intervals and lifts bans that ran
    /// out. Banned peers stay listed (as banned) until their ban ends.
    pub fn expire(&mut self, now: Instant) -> Expired {
        let silence = self.policy.heartbeat_interval * self.policy.drop_after_intervals;
        let mut expired = Expired::default();
        self.peers.retain(|peer, entry| {
            if let Some(until) = entry.banned_until {
                if now < until {
                    return true;
                }
                entry.banned_until = None;
                entry.last_seen = now;
                expired.unbanned.push(*peer);
                return true;
            }
            let silent_for = now.saturating_duration_since(entry.last_seen);
            if silent_for < silence {
                return true;
            }
            expired.dropped.push((
                *peer,
                format!(
                    "silent for {:.1} s ({} heartbeat intervals)",
                    silent_for.as_secs_f64(),
                    self.policy.drop_after_intervals
                ),
            ));
            false
        });
        expired
    }

    /// Peers that are listed and not banned.
    pub fn live_peers(&self, now: Instant) -> usize {
        self.peers
            .keys()
            .filter(|peer| !self.is_banned(peer, now))
            .count()
    }

    /// The table for the API at `now` (`now_s`: unix seconds, for certificate expiry); `bytes`
    /// holds (in, out) per peer from the connection counters.
    pub fn view(
        &self,
        now: Instant,
        now_s: u64,
        bytes: &HashMap<PeerId, (u64, u64)>,
    ) -> (Vec<PeerView>, NetworkTotals) {
        let mut peers: Vec<PeerView> = self
            .peers
            .iter()
            .map(|(peer, e)| PeerView {
                node_id: e.node_id.clone(),
                peer_id: peer.to_string(),
                addrs: e.addrs.iter().map(|a| a.to_string()).collect(),
                connected: e.connected,
                last_seen_s: now.saturating_duration_since(e.last_seen).as_secs_f64(),
                latency_ms: e.latency.map(|d| d.as_secs_f64() * 1e3),
                bytes_in: bytes.get(peer).map_or(0, |b| b.0),
                bytes_out: bytes.get(peer).map_or(0, |b| b.1),
                accepted: e.accepted,
                rejected: e.rejected,
                rejections: e.rejections.clone(),
                last_rejection: e.last_rejection.clone(),
                banned: e.banned_until.is_some_and(|until| now < until),
                heartbeat: e.heartbeat.clone(),
                heartbeat_age_ms: e.heartbeat_age_ms,
                admitted: self.is_admitted(peer, now_s),
                admitted_until_s: e.admitted_until_s,
                unadmitted: e.unadmitted,
            })
            .collect();
        peers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let mut totals = self.totals.clone();
        totals.bytes_in = bytes.values().map(|b| b.0).sum();
        totals.bytes_out = bytes.values().map(|b| b.1).sum();
        (peers, totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Identity, generate_token};

    fn policy() -> PeerPolicy {
        PeerPolicy {
            heartbeat_interval: Duration::from_secs(1),
            drop_after_intervals: 3,
            gossip_limits: GossipLimits::uniform(5),
            ban_after_rejections: 10,
            ban_below_score: -80.0,
            ban_for: Duration::from_secs(60),
        }
    }

    fn peer() -> PeerId {
        Identity::from_token(&generate_token()).unwrap().peer_id()
    }

    fn heartbeat(sent_at_ms: u64) -> Heartbeat {
        Heartbeat {
            node_id: "n".into(),
            role: "trainer".into(),
            global_step: 1,
            outer_round: 0,
            theta0_hash: "0".repeat(64),
            momentum_hash: "0".repeat(64),
            tokens_per_sec: 0.0,
            sent_at_ms,
            membership: None,
        }
    }

    #[test]
    fn the_table_is_bounded_and_a_flood_evicts_neither_connected_nor_banned_peers() {
        let t0 = Instant::now();
        let mut table = PeerTable::new(policy());
        let (connected, banned) = (peer(), peer());
        table.connected(t0, connected, vec![]);
        for _ in 0..10 {
            table.reject(t0, banned, &Rejection::Malformed("x".into()));
        }
        assert!(table.is_banned(&banned, t0));
        for i in 0..MAX_PEERS + 10 {
            let _ = table.admit(
                t0 + Duration::from_millis(i as u64),
                peer(),
                Topic::Heartbeat,
            );
        }
        assert_eq!(table.peers.len(), MAX_PEERS);
        assert!(table.contains(&connected) && table.contains(&banned));
    }

    #[test]
    fn a_peer_silent_for_the_configured_intervals_is_dropped_with_the_reason() {
        let t0 = Instant::now();
        let mut table = PeerTable::new(policy());
        let (a, b) = (peer(), peer());
        table.connected(t0, a, vec![]);
        table.connected(t0, b, vec![]);
        table
            .accept_heartbeat(t0 + Duration::from_secs(2), 2_000, b, b, heartbeat(2_000))
            .unwrap();
        assert_eq!(
            table.expire(t0 + Duration::from_millis(2_900)),
            Expired::default()
        );
        let expired = table.expire(t0 + Duration::from_secs(3));
        assert_eq!(expired.dropped.len(), 1);
        assert_eq!(expired.dropped[0].0, a);
        assert!(expired.dropped[0].1.contains("3 heartbeat intervals"));
        assert!(table.contains(&b) && !table.contains(&a));
    }

    #[test]
    fn replayed_heartbeats_are_refused() {
        let t0 = Instant::now();
        let mut table = PeerTable::new(policy());
        let a = peer();
        table
            .accept_heartbeat(t0, 0, a, a, heartbeat(1_000))
            .unwrap();
        // The network loop asks first, and a late copy counts against nobody.
        assert!(table.already_heard(&a, 999) && table.already_heard(&a, 1_000));
        assert!(!table.already_heard(&a, 1_001) && !table.already_heard(&peer(), 1));
        assert_eq!(
            table.accept_heartbeat(t0, 0, a, a, heartbeat(1_000)),
            Err(Rejection::Replayed)
        );
        assert!(
            table
                .accept_heartbeat(t0, 0, a, a, heartbeat(1_001))
                .is_ok()
        );
    }

    /// When an honest node following `gossip` originates its messages over `span`, and on which
    /// topic, at the fastest its settings allow: every timer late by a pseudo-random part of its
    /// period, every round H fastest steps long, and `max_proofs_per_hour` inference proofs
    /// requested at once at `burst_at`. Proofs pass the node's own hourly limit first, as the
    /// ledger does.
    fn honest_timeline(
        gossip: &HonestGossip,
        span: Duration,
        burst_at: Duration,
    ) -> Vec<(Duration, Topic)> {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut late = |period: Duration| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            period.mul_f64((seed >> 11) as f64 / (1u64 << 53) as f64)
        };
        let mut messages = Vec::new();
        let mut periodic = |period: Duration, each: usize, topic, out: &mut Vec<_>| {
            let mut at = Duration::ZERO;
            let mut ticks = Vec::new();
            while at < span {
                ticks.extend(std::iter::repeat_n(at + late(period), each));
                at += period;
            }
            out.extend(ticks.iter().map(|&t| (t, topic)));
            ticks
        };
        periodic(
            gossip.heartbeat_interval,
            1,
            Topic::Heartbeat,
            &mut messages,
        );
        periodic(
            REANNOUNCE_EVERY,
            REANNOUNCED as usize,
            Topic::Round,
            &mut messages,
        );
        // Recent proofs and witness statements again.
        let uptime = periodic(gossip.uptime_interval, 2, Topic::Ledger, &mut messages);
        periodic(WITNESS_FLUSH, 1, Topic::Ledger, &mut messages);
        let round = FASTEST_STEP * u32::try_from(gossip.inner_steps).unwrap();
        let mut rounds = Vec::new();
        let mut at = round;
        while at < span {
            rounds.push(at);
            at += round;
        }
        // The announcement and the verdicts.
        messages.extend(
            rounds
                .iter()
                .flat_map(|&r| [(r, Topic::Round), (r, Topic::Ledger)]),
        );
        let burst = vec![burst_at; gossip.max_proofs_per_hour as usize];
        let mut proofs: Vec<Duration> =
            [uptime.iter().step_by(2).copied().collect(), rounds, burst].concat();
        proofs.sort();
        let hour = Duration::from_secs(3600);
        let mut last_hour = std::collections::VecDeque::new();
        for at in proofs {
            while last_hour.front().is_some_and(|&p| p + hour <= at) {
                last_hour.pop_front();
            }
            if last_hour.len() < gossip.max_proofs_per_hour as usize {
                last_hour.push_back(at);
                messages.push((at, Topic::Ledger));
            }
        }
        messages.sort_by_key(|&(t, _)| t);
        messages
    }

    #[test]
    fn an_honest_node_stays_under_the_derived_limit_at_any_setting() {
        let configs = [
            // The defaults.
            (10, 500, 60, 120),
            // The tests' quick heartbeat with short rounds.
            (1, 10, 60, 120),
            // The failing case: default heartbeat, H = 10.
            (10, 10, 60, 120),
            // Frequent uptime proofs, a generous hourly limit.
            (2, 60, 1, 3600),
            // A long heartbeat, very short rounds.
            (30, 5, 3600, 120),
        ];
        for (heartbeat_s, inner_steps, uptime_s, max_proofs_per_hour) in configs {
            let gossip = HonestGossip {
                heartbeat_interval: Duration::from_secs(heartbeat_s),
                inner_steps,
                uptime_interval: Duration::from_secs(uptime_s),
                max_proofs_per_hour,
            };
            let window = gossip.heartbeat_interval;
            let span = window * 4;
            let timeline = honest_timeline(&gossip, span, window + window / 2);
            // The worst case bounds every window of every topic, wherever it starts.
            for topic in Topic::ALL {
                let times: Vec<Duration> = timeline
                    .iter()
                    .filter(|m| m.1 == topic)
                    .map(|m| m.0)
                    .collect();
                let busiest = (0..times.len())
                    .map(|i| times[i..].partition_point(|&t| t < times[i] + window))
                    .max()
                    .unwrap_or(0);
                assert!(
                    busiest as u64 <= gossip.worst_case(topic),
                    "{gossip:?}: {busiest} {topic:?} messages in one window, worst case {}",
                    gossip.worst_case(topic)
                );
            }
            // Many honest nodes on that schedule, each started at its own moment, through one
            // table: none is ever rate-limited (the limit is per origin and topic).
            let mut table = PeerTable::new(PeerPolicy {
                heartbeat_interval: window,
                gossip_limits: gossip.limits(),
                ..policy()
            });
            let t0 = Instant::now();
            let nodes: Vec<(PeerId, Duration)> = (0..8u32)
                .map(|i| (peer(), window.mul_f64(f64::from(i) / 8.0)))
                .collect();
            let mut arrivals: Vec<(Duration, PeerId, Topic)> = nodes
                .iter()
                .flat_map(|&(id, offset)| {
                    timeline
                        .iter()
                        .map(move |&(t, topic)| (t + offset, id, topic))
                })
                .collect();
            arrivals.sort_by_key(|&(t, ..)| t);
            for (t, id, topic) in arrivals {
                assert_eq!(
                    table.admit(t0 + t, id, topic),
                    Ok(()),
                    "{gossip:?} at {t:?}"
                );
            }
        }
    }

    #[test]
    fn the_derived_limits_follow_the_round_length_and_still_stop_a_flood() {
        let gossip = |heartbeat_s, inner_steps| HonestGossip {
            heartbeat_interval: Duration::from_secs(heartbeat_s),
            inner_steps,
            uptime_interval: Duration::from_secs(60),
            max_proofs_per_hour: 120,
        };
        // The old fixed 20 per interval banned honest nodes at H = 10 (issue 14).
        assert!(gossip(10, 10).busiest() > 20);
        assert!(gossip(10, 10).limits().round > gossip(10, 500).limits().round);
        assert!(gossip(10, 500).limits().ledger > gossip(1, 500).limits().ledger);
        // A heartbeat flood (the network test's flooder sends 800 extra a second) is cut off at
        // a few heartbeats, whatever the proof allowance.
        assert_eq!(gossip(1, 500).limits().heartbeat, 4);
        assert_eq!(gossip(10, 500).limits().heartbeat, 4);
        // Nothing overflows at the extremes the config accepts.
        let extreme = HonestGossip {
            heartbeat_interval: Duration::from_secs(u64::MAX),
            inner_steps: 1,
            uptime_interval: Duration::from_secs(1),
            max_proofs_per_hour: u32::MAX,
        };
        assert_eq!(extreme.limits().ledger, u32::MAX);
    }

    #[test]
    fn after_this_node_stalls_the_burst_of_queued_messages_bans_nobody() {
        let t0 = Instant::now();
        let mut table = PeerTable::new(policy());
        let a = peer();
        assert_eq!(table.observe_clock(t0), None);
        assert_eq!(table.observe_clock(t0 + Duration::from_secs(1)), None);
        // This node was suspended for two minutes: its peers' messages arrive all at once.
        let resumed = t0 + Duration::from_secs(121);
        assert_eq!(table.observe_clock(resumed), Some(Duration::from_secs(120)));
        for _ in 0..50 {
            assert_eq!(table.admit(resumed, a, Topic::Heartbeat), Ok(()));
            assert_eq!(table.reject(resumed, a, &Rejection::Replayed).ban, None);
        }
        assert!(!table.is_banned(&a, resumed));
        // Once caught up (the loop ran every interval since), the limits hold again.
        let mut later = resumed;
        for _ in 0..CATCH_UP_INTERVALS {
            later += Duration::from_secs(1);
            assert_eq!(table.observe_clock(later), None);
        }
        for _ in 0..5 {
            assert_eq!(table.admit(later, a, Topic::Heartbeat), Ok(()));
        }
        assert_eq!(
            table.admit(later, a, Topic::Heartbeat),
            Err(Rejection::RateLimited { limit: 5 })
        );
    }

    #[test]
    fn a_flooding_origin_is_rate_limited_each_interval() {
        let t0 = Instant::now();
        let mut table = PeerTable::new(policy());
        let a = peer();
        for _ in 0..5 {
            assert_eq!(table.admit(t0, a, Topic::Heartbeat), Ok(()));
        }
        assert_eq!(
            table.admit(t0, a, Topic::Heartbeat),
            Err(Rejection::RateLimited { limit: 5 })
        );
        // Each topic has its own budget: a heartbeat flood does not stop the origin's proofs.
        assert_eq!(table.admit(t0, a, Topic::Ledger), Ok(()));
        assert_eq!(
            table.admit(t0 + Duration::from_secs(1), a, Topic::Heartbeat),
            Ok(())
        );
    }

    #[test]
    fn rejections_are_counted_and_enough_in_one_interval_ban_the_peer_until_the_ban_ends() {
        let t0 = Instant::now();
        let mut table = PeerTable::new(policy());
        let a = peer();
        for _ in 0..9 {
            assert_eq!(table.reject(t0, a, &Rejection::BadSignature).ban, None);
        }
        let outcome = table.reject(t0, a, &Rejection::BadSignature);
        assert_eq!(outcome.total, 10);
        let reason = outcome.ban.unwrap();
        assert!(reason.contains("10 rejected") && reason.contains("bad signature"));
        assert!(table.is_banned(&a, t0));
        assert_eq!(table.admit(t0, a, Topic::Round), Err(Rejection::Banned));
        let (peers, totals) = table.view(t0, 0, &HashMap::from([(a, (300, 20))]));
        assert_eq!((peers[0].rejected, peers[0].banned), (10, true));
        assert_eq!(peers[0].rejections, BTreeMap::from([("bad_signature", 10)]));
        assert_eq!(
            (peers[0].bytes_in, totals.bytes_in, totals.bytes_out),
            (300, 300, 20)
        );
        assert_eq!((totals.messages_rejected, totals.peers_banned), (10, 1));
        // Still listed while banned, even though silent; unbanned when the ban runs out.
        assert_eq!(
            table.expire(t0 + Duration::from_secs(30)),
            Expired::default()
        );
        let expired = table.expire(t0 + Duration::from_secs(60));
        assert_eq!(expired.unbanned, vec![a]);
        assert!(!table.is_banned(&a, t0 + Duration::from_secs(60)));
    }

    #[test]
    fn rejections_spread_over_intervals_do_not_ban() {
        let t0 = Instant::now();
        let mut table = PeerTable::new(policy());
        let a = peer();
        for second in 0..30 {
            let now = t0 + Duration::from_secs(second);
            for _ in 0..3 {
                assert_eq!(table.reject(now, a, &Rejection::BadSignature).ban, None);
            }
        }
        assert!(!table.is_banned(&a, t0 + Duration::from_secs(30)));
    }

    #[test]
    fn a_peer_whose_gossip_score_stays_below_the_threshold_is_banned_once() {
        let t0 = Instant::now();
        let interval = policy().heartbeat_interval;
        let mut table = PeerTable::new(policy());
        let a = peer();
        assert_eq!(table.judge_score(t0, a, -79.0), None);
        // A dip that recovers by the next look (a resumed peer's decaying penalty) bans nobody.
        assert_eq!(table.judge_score(t0, a, -130.0), None);
        assert_eq!(table.judge_score(t0 + interval, a, -20.0), None);
        assert_eq!(table.judge_score(t0 + interval * 2, a, -125.0), None);
        assert_eq!(table.judge_score(t0 + interval * 5 / 2, a, -125.0), None);
        let reason = table.judge_score(t0 + interval * 3, a, -125.0).unwrap();
        assert!(
            reason.contains("gossip score -125 below -80 for"),
            "{reason}"
        );
        assert_eq!(
            table.judge_score(t0 + interval * 4, a, -200.0),
            None,
            "already banned"
        );
        assert!(table.is_banned(&a, t0 + interval * 4));
    }

    mod admission {
        use super::*;
        use crate::admission::{Certificate, Genesis, Policy};
        use crate::ledger::rewards::RewardSchedule;

        const NOW_S: u64 = 1_800_000_000;

        fn id() -> Identity {
            Identity::from_token(&generate_token()).unwrap()
        }

        fn genesis(authority: &Identity, policy: Policy) -> Genesis {
            Genesis::new(
                "permnet",
                "nano",
                policy,
                &[authority.public],
                1,
                RewardSchedule::default(),
                NOW_S - 10,
            )
            .unwrap()
        }

        fn cert(genesis: &Genesis, authority: &Identity, node: &Identity) -> Certificate {
            let mut c = Certificate::unsigned(
                genesis,
                &node.node_id,
                vec!["trainer".into()],
                NOW_S - 5,
                NOW_S + 100,
            );
            c.sign(authority);
            c
        }

        fn heartbeat_of(
            node: &Identity,
            sent_at_ms: u64,
            membership: Option<Certificate>,
        ) -> Heartbeat {
            Heartbeat {
                node_id: node.node_id.clone(),
                membership,
                ..heartbeat(sent_at_ms)
            }
        }

        const MS: u64 = NOW_S * 1000;

        #[test]
        fn a_valid_certificate_admits_its_peer_until_it_expires_and_is_verified_once() {
            let t0 = Instant::now();
            let (authority, node) = (id(), id());
            let g = genesis(&authority, Policy::Permissioned);
            let c = cert(&g, &authority, &node);
            let mut table = PeerTable::new(policy()).with_genesis(g);
            let p = node.peer_id();
            for i in 0..3 {
                table
                    .accept_heartbeat(t0, MS, p, p, heartbeat_of(&node, MS + i, Some(c.clone())))
                    .unwrap();
            }
            assert_eq!(table.admission.as_ref().unwrap().checked.len(), 1);
            assert!(table.passes_work(t0, NOW_S, p));
            let (peers, totals) = table.view(t0, NOW_S, &HashMap::new());
            assert!(peers[0].admitted);
            assert_eq!(peers[0].admitted_until_s, Some(NOW_S + 100));
            assert!(peers[0].heartbeat.as_ref().unwrap().membership.is_none());
            assert_eq!((peers[0].unadmitted, totals.messages_unadmitted), (0, 0));
            // At its expiry the same peer is unadmitted, without a new heartbeat.
            assert!(!table.is_admitted(&p, NOW_S + 100));
            assert!(!table.passes_work(t0, NOW_S + 100, p));
        }

        #[test]
        fn an_unadmitted_peer_is_dropped_and_counted_but_never_rejected_or_banned() {
            let t0 = Instant::now();
            let (authority, node) = (id(), id());
            let mut table =
                PeerTable::new(policy()).with_genesis(genesis(&authority, Policy::Permissioned));
            let p = node.peer_id();
            table
                .accept_heartbeat(t0, MS, p, p, heartbeat_of(&node, MS, None))
                .unwrap();
            for _ in 0..100 {
                assert!(!table.passes_work(t0, NOW_S, p));
            }
            assert!(!table.is_banned(&p, t0));
            let (peers, totals) = table.view(t0, NOW_S, &HashMap::new());
            assert_eq!((peers[0].admitted, peers[0].unadmitted), (false, 100));
            assert_eq!((peers[0].rejected, peers[0].banned), (0, false));
            assert_eq!(
                (totals.messages_unadmitted, totals.messages_rejected),
                (100, 0)
            );
        }

        #[test]
        fn an_expired_certificate_is_no_offence_but_a_forged_or_borrowed_one_is() {
            let t0 = Instant::now();
            let (authority, node, other, impostor) = (id(), id(), id(), id());
            let g = genesis(&authority, Policy::Permissioned);
            let mut table = PeerTable::new(policy()).with_genesis(g.clone());
            let p = node.peer_id();
            let late = (NOW_S + 200) * 1000;
            table
                .accept_heartbeat(
                    t0,
                    late,
                    p,
                    p,
                    heartbeat_of(&node, late, Some(cert(&g, &authority, &node))),
                )
                .unwrap();
            assert!(!table.is_admitted(&p, NOW_S + 200));
            // Another node's certificate, and one signed by a non-authority.
            let borrowed = cert(&g, &authority, &other);
            let e = table
                .accept_heartbeat(t0, MS, p, p, heartbeat_of(&node, late + 1, Some(borrowed)))
                .unwrap_err();
            assert_eq!(e.kind(), "bad_certificate");
            assert!(e.to_string().contains("issued to node"), "{e}");
            let forged = cert(&g, &impostor, &node);
            let e = table
                .accept_heartbeat(t0, MS, p, p, heartbeat_of(&node, late + 2, Some(forged)))
                .unwrap_err();
            assert_eq!(e.kind(), "bad_certificate");
        }

        #[test]
        fn without_a_genesis_or_in_an_open_network_every_peer_passes_and_none_is_admitted() {
            let t0 = Instant::now();
            let (authority, node) = (id(), id());
            let g = genesis(&authority, Policy::Permissioned);
            let c = cert(&g, &authority, &node);
            let p = node.peer_id();
            let mut plain = PeerTable::new(policy());
            plain
                .accept_heartbeat(t0, MS, p, p, heartbeat_of(&node, MS, Some(c.clone())))
                .unwrap();
            assert!(plain.passes_work(t0, NOW_S, p));
            assert!(!plain.view(t0, NOW_S, &HashMap::new()).0[0].admitted);
            let mut open = PeerTable::new(policy()).with_genesis(genesis(&authority, Policy::Open));
            let stranger = id().peer_id();
            assert!(open.passes_work(t0, NOW_S, stranger));
            open.accept_heartbeat(t0, MS, p, p, heartbeat_of(&node, MS, None))
                .unwrap();
            assert!(!open.is_admitted(&p, NOW_S));
        }
    }

    #[test]
    fn the_view_shows_the_node_id_of_the_peer_key() {
        let t0 = Instant::now();
        let id = Identity::from_token(&generate_token()).unwrap();
        let mut table = PeerTable::new(policy());
        table.connected(
            t0,
            id.peer_id(),
            vec!["/ip4/127.0.0.1/tcp/1".parse().unwrap()],
        );
        let (peers, _) = table.view(t0, 0, &HashMap::new());
        assert_eq!(peers[0].node_id, id.node_id);
        assert_eq!(peers[0].addrs, vec!["/ip4/127.0.0.1/tcp/1".to_string()]);
    }
}
