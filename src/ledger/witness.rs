//! Witnessed uptime. An uptime proof is the claimant's own word that it was up; it earns only
//! when peers other than the claimant, carrying weight, say they heard it live over the interval
//! it claims. Two pure decisions, clocks and weights passed in:
//! - `saw`: whether this node's own observation of a peer (a [`Sighting`]: the stretch of time
//!   over which it received that peer's signed heartbeats with no silence long enough for the
//!   peer table to drop it) covers an uptime proof's interval, so that it may witness the proof;
//! - `decide`: whether a proof's witnesses carry enough weight to credit it, taken once,
//!   `settle_delay` after the node first holds the proof, so that honest nodes decide alike (the
//!   [`Tally`] is stored with the settlement, so `ledger verify` recomputes the decision from the
//!   database).
//!
//! The threshold: the witnesses (the claimant never counts) weigh at least one full peer and more
//! than half the weight of every node this node weighs except the claimant. Identities without
//! weight add nothing; an attacker holding less weight than the honest nodes (TRUST.md's
//! assumption) cannot reach half of the others' weight alone, so it can credit neither its own
//! identities' made-up uptime nor anyone's; a lone node (no one else weighs anything) never
//! reaches one full peer. Honest nodes hear each other's heartbeats on the gossip mesh, so an
//! honest claimant is witnessed by all of the honest weight, which is the majority.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::Proof;
use crate::diloco::weight::EPSILON;

/// Proof ids one witness statement names at most (~70 bytes each on the wire).
pub const MAX_WITNESSED: usize = 64;

/// How often a node gossips the statements it made since the last time, in one message: one
/// message per proof witnessed would grow with the network, and the gossip budget
/// (`net::peer_table::HonestGossip`) could not bound it.
pub const WITNESS_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// How long after it first holds an uptime proof a node decides it, once and for good: long
/// enough that every honest node decides from the same statements and weights. A witness's
/// statement reaches it within a flush interval plus gossip, and a peer that just joined is
/// weighed once its heartbeat (one interval) is heard; deciding at the first tally that passes
/// let a node that did not weigh a newcomer yet credit what the others never would.
pub fn settle_delay(watch: &Watch) -> std::time::Duration {
    std::time::Duration::from_millis(watch.heartbeat_ms.saturating_mul(2)) + WITNESS_FLUSH * 2
}

/// Whether `claimed` (an uptime proof's `claimed_interval`) overlaps one of `stalls`, stretches (unix ms) over which
/// this node itself was not running (suspended): it could observe nothing then, so its own weight
/// has no say in that proof, or the node that slept through a peer's uptime would refuse what
/// every node awake credited.
pub fn slept_through(stalls: &[(u64, u64)], claimed: (u64, u64)) -> bool {
    let (start, end) = claimed;
    stalls.iter().any(|&(from, to)| from < end && start < to)
}

/// How long a node waits to settle an uptime proof it stores `proof_age` after the proof was
/// made: `settle_delay`, or, for a proof it holds late (it was stalled, just joined, restarted,
/// or got the proof from the claimant's re-gossip), an uptime interval more: the witnesses'
/// first statements went out before this node could hear them, and they gossip them again once
/// every `uptime_interval`.
pub fn settle_wait(
    proof_age: std::time::Duration,
    watch: &Watch,
    uptime_interval: std::time::Duration,
) -> std::time::Duration {
    let delay = settle_delay(watch);
    if proof_age <= delay {
        delay
    } else {
        uptime_interval + delay
    }
}

/// How old a proof may be for its witnesses to gossip their statements about it again (each
/// `uptime_interval`): as long as its claimant gossips the proof again (`republished_for`, its
/// age at the last republish), and an uptime interval and a settle delay more. A node that gets
/// the proof from the claimant's last republish settles it `settle_wait` later; every witness
/// restates within that wait. Stopping with the claimant left such a node with the statements of
/// only the witnesses whose timers happened to fire first, and it refused what the others credited.
pub fn restate_for(
    republished_for: std::time::Duration,
    watch: &Watch,
    uptime_interval: std::time::Duration,
) -> std::time::Duration {
    republished_for + uptime_interval + settle_delay(watch)
}

/// How this node judges liveness, from the network settings: heartbeats come every
/// `heartbeat_ms`, and a peer silent for `silence_ms` is dropped from the peer table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watch {
    pub heartbeat_ms: u64,
    pub silence_ms: u64,
}

/// A stretch of this node's clock (unix ms) over which it heard a peer's heartbeats with no
/// silence longer than `Watch::silence_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    pub since_ms: u64,
    pub last_ms: u64,
}

impl Sighting {
    /// The sighting after a heartbeat heard at `at_ms`: a longer silence than the peer table
    /// allows starts a new one (the peer may have been down in between).
    pub fn heard(previous: Option<Sighting>, at_ms: u64, watch: &Watch) -> Sighting {
        match previous {
            // A clock stepping back proves nothing new.
            Some(s) if at_ms < s.last_ms => s,
            Some(s) if at_ms - s.last_ms <= watch.silence_ms => Sighting {
                since_ms: s.since_ms,
                last_ms: at_ms,
            },
            _ => Sighting {
                since_ms: at_ms,
                last_ms: at_ms,
            },
        }
    }
}

/// The interval an uptime proof claims, in the claimant's unix ms: the `uptime_seconds` up to
/// its timestamp.
pub fn claimed_interval(proof: &Proof) -> (u64, u64) {
    let start = proof
        .timestamp_ms
        .saturating_sub(proof.uptime_seconds.saturating_mul(1000));
    (start, proof.timestamp_ms)
}

/// Why this node does not witness an uptime proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unseen {
    #[error("this node never heard the claimant")]
    Never,
    #[error("this node first heard the claimant {late_s} s after the claimed interval began")]
    Late { late_s: u64 },
    #[error("this node heard the claimant last {silent_s} s before the claimed interval ended")]
    Silent { silent_s: u64 },
}

/// Whether `sighting` (this node's observation of the proof's claimant) covers the interval
/// the uptime proof claims: heard from no later than one heartbeat after its start (and before
/// its end), and still heard, within the peer table's silence, at its end. A claimant gains at
/// most one heartbeat interval it was not up for, once per (re)join.
pub fn saw(sighting: Option<&Sighting>, proof: &Proof, watch: &Watch) -> Result<(), Unseen> {
    let sighting = sighting.ok_or(Unseen::Never)?;
    let (start, end) = claimed_interval(proof);
    let first_allowed = start.saturating_add(watch.heartbeat_ms).min(end);
    if sighting.since_ms > first_allowed {
        return Err(Unseen::Late {
            late_s: sighting.since_ms.saturating_sub(start) / 1000,
        });
    }
    if sighting.last_ms.saturating_add(watch.silence_ms) < end {
        return Err(Unseen::Silent {
            silent_s: end.saturating_sub(sighting.last_ms) / 1000,
        });
    }
    Ok(())
}

/// The witnesses of one uptime proof and what they and the others weighed in this node's view
/// when it settled the proof; stored with the settlement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tally {
    /// (node_id, weight) of each witness with weight, the claimant left out, by node_id.
    pub witnesses: Vec<(String, f64)>,
    /// The weight of every node this node weighs (itself included) except the claimant.
    pub others: f64,
}

/// Weighs `witnesses` of `claimant`'s proof by `weights` (every node this node weighs, itself
/// included; anyone else weighs 0).
pub fn tally(
    claimant: &str,
    witnesses: &BTreeSet<String>,
    weights: &BTreeMap<String, f64>,
) -> Tally {
    let weight = |id: &str| {
        weights
            .get(id)
            .copied()
            .filter(|w| w.is_finite() && *w > 0.0)
    };
    Tally {
        witnesses: witnesses
            .iter()
            .filter(|id| *id != claimant)
            .filter_map(|id| Some((id.clone(), weight(id)?)))
            .collect(),
        others: weights
            .keys()
            .filter(|id| *id != claimant)
            .filter_map(|id| weight(id))
            .sum(),
    }
}

/// Whether a tally credits `claimant`'s uptime proof: `Ok` with the reason, or why not (the
/// proof is then refused: the tally is taken once, at `settle_delay`). Reads
/// the tally defensively (it comes back from the database): each witness counts once, the
/// claimant and weights that are not finite and positive not at all.
pub fn decide(claimant: &str, tally: &Tally) -> Result<String, String> {
    let mut counted = BTreeSet::new();
    let weight: f64 = tally
        .witnesses
        .iter()
        .filter(|(id, w)| id != claimant && w.is_finite() && *w > 0.0 && counted.insert(id))
        .map(|(_, w)| w)
        .sum();
    let others = if tally.others.is_finite() {
        tally.others
    } else {
        f64::INFINITY
    };
    let summary = format!(
        "{} witness(es) of weight {weight:.2}, of {others:.2} besides the claimant",
        counted.len()
    );
    if weight < 1.0 - EPSILON {
        Err(format!("unwitnessed: {summary}; one full peer is needed"))
    } else if weight * 2.0 <= others + EPSILON {
        Err(format!("unwitnessed: {summary}; more than half is needed"))
    } else {
        Ok(format!("witnessed: {summary}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::ProofKind;

    const WATCH: Watch = Watch {
        heartbeat_ms: 10_000,
        silence_ms: 30_000,
    };
    const T: u64 = 1_700_000_000_000;

    /// An uptime proof made at `end_ms` claiming `seconds`.
    fn uptime(end_ms: u64, seconds: u64) -> Proof {
        Proof {
            timestamp_ms: end_ms,
            uptime_seconds: seconds,
            ..Proof::empty(ProofKind::Uptime)
        }
    }

    /// Heartbeats heard at each of `at` (ms after T).
    fn heard(at: &[u64]) -> Option<Sighting> {
        at.iter()
            .fold(None, |s, t| Some(Sighting::heard(s, T + t, &WATCH)))
    }

    fn ids(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn weights(list: &[(&str, f64)]) -> BTreeMap<String, f64> {
        list.iter().map(|(id, w)| (id.to_string(), *w)).collect()
    }

    #[test]
    fn uptime_settles_after_a_newcomer_is_weighed_and_statements_arrive() {
        let delay = settle_delay(&WATCH);
        // A heartbeat interval to hear (and weigh) a peer that just joined, with margin, and
        // the witnesses' next flush of statements plus gossip.
        assert!(delay >= std::time::Duration::from_millis(WATCH.heartbeat_ms) + WITNESS_FLUSH * 2);
        assert_eq!(delay, std::time::Duration::from_secs(22));
        // A proof held late waits for the witnesses' next re-gossip as well.
        let minute = std::time::Duration::from_secs(60);
        assert_eq!(
            settle_wait(std::time::Duration::ZERO, &WATCH, minute),
            delay
        );
        assert_eq!(settle_wait(delay, &WATCH, minute), delay);
        assert_eq!(settle_wait(delay * 2, &WATCH, minute), minute + delay);
    }

    #[test]
    fn a_node_asleep_during_a_claimed_interval_slept_through_it() {
        let claimed = claimed_interval(&uptime(T + 60_000, 60));
        assert!(slept_through(&[(T + 10_000, T + 140_000)], claimed));
        assert!(slept_through(&[(T - 5_000, T + 1)], claimed));
        assert!(!slept_through(&[(T - 5_000, T)], claimed));
        assert!(!slept_through(&[(T + 60_000, T + 90_000)], claimed));
        assert!(!slept_through(&[], claimed));
    }

    #[test]
    fn a_peer_heard_throughout_the_interval_is_witnessed() {
        let every_10s: Vec<u64> = (0..=12).map(|i| i * 10_000).collect();
        let seen = heard(&every_10s);
        assert_eq!(saw(seen.as_ref(), &uptime(T + 120_000, 60), &WATCH), Ok(()));
        // Its first proof after joining: heard from one heartbeat after it started.
        let joined = heard(&[4_000, 14_000]);
        assert_eq!(
            saw(joined.as_ref(), &uptime(T + 14_000, 14), &WATCH),
            Ok(())
        );
    }

    #[test]
    fn uptime_before_this_node_heard_the_claimant_or_from_an_unheard_identity_is_not_witnessed() {
        assert_eq!(saw(None, &uptime(T, 60), &WATCH), Err(Unseen::Never));
        // Joined at T + 100 s and claims the 120 s before its first proof at T + 110 s.
        let joined = heard(&[100_000, 110_000]);
        assert_eq!(
            saw(joined.as_ref(), &uptime(T + 110_000, 120), &WATCH),
            Err(Unseen::Late { late_s: 110 })
        );
        // Heard only after a short interval ended: not before its end, whatever the slack.
        let after = heard(&[5_000]);
        assert_eq!(
            saw(after.as_ref(), &uptime(T + 2_000, 2), &WATCH),
            Err(Unseen::Late { late_s: 5 })
        );
    }

    #[test]
    fn a_silence_the_peer_table_would_drop_starts_a_new_sighting() {
        // Heard, then silent for 40 s (> 30 s), then heard again: the claim across the gap fails.
        let gap = heard(&[0, 10_000, 50_000, 60_000]);
        assert_eq!(
            gap,
            Some(Sighting {
                since_ms: T + 50_000,
                last_ms: T + 60_000
            })
        );
        assert!(matches!(
            saw(gap.as_ref(), &uptime(T + 60_000, 60), &WATCH),
            Err(Unseen::Late { .. })
        ));
        // Gone for good since T + 10 s: a claim ending at T + 60 s is not witnessed.
        let gone = heard(&[0, 10_000]);
        assert_eq!(
            saw(gone.as_ref(), &uptime(T + 60_000, 50), &WATCH),
            Err(Unseen::Silent { silent_s: 50 })
        );
        // A clock stepping back changes nothing.
        let back = Sighting::heard(heard(&[10_000]), T, &WATCH);
        assert_eq!(
            back,
            Sighting {
                since_ms: T + 10_000,
                last_ms: T + 10_000
            }
        );
    }

    #[test]
    fn more_than_half_of_the_others_weight_and_one_full_peer_credit_uptime() {
        let all = weights(&[("a", 1.0), ("b", 1.0), ("c", 1.0), ("d", 1.0)]);
        // b and c of a's three others.
        let two = tally("a", &ids(&["b", "c"]), &all);
        assert_eq!(two.others, 3.0);
        assert_eq!(
            decide("a", &two),
            Ok("witnessed: 2 witness(es) of weight 2.00, of 3.00 besides the claimant".into())
        );
        // One of three is not a majority; the claimant's own word never counts.
        assert!(decide("a", &tally("a", &ids(&["a", "b"]), &all)).is_err());
        // Two nodes: the one other is all of the others.
        let pair = weights(&[("a", 1.0), ("b", 1.0)]);
        assert!(decide("a", &tally("a", &ids(&["b"]), &pair)).is_ok());
    }

    #[test]
    fn a_lone_node_weightless_identities_and_a_minority_witness_nothing() {
        let lone = weights(&[("a", 1.0)]);
        assert!(decide("a", &tally("a", &ids(&["a"]), &lone)).is_err());
        // 16 Sybils without weight, and the attacker's one admitted identity, vouch for x.
        let mut network = weights(&[("h1", 1.0), ("h2", 1.0), ("h3", 1.0), ("attacker", 1.0)]);
        let mut sybils = ids(&["attacker"]);
        for i in 0..16 {
            network.insert(format!("sybil{i}"), 0.0);
            sybils.insert(format!("sybil{i}"));
        }
        let t = tally("x", &sybils, &network);
        assert_eq!(t.witnesses, vec![("attacker".to_string(), 1.0)]);
        assert!(decide("x", &t).is_err(), "{t:?}");
        // An open network's newcomers share one unit: all of them together are not a majority
        // against two established peers.
        let mut open = weights(&[("h1", 1.0), ("h2", 1.0)]);
        let newcomers: BTreeSet<String> = (0..4).map(|i| format!("new{i}")).collect();
        for id in &newcomers {
            open.insert(id.clone(), 0.25);
        }
        assert!(decide("x", &tally("x", &newcomers, &open)).is_err());
    }

    #[test]
    fn a_tampered_tally_is_read_defensively() {
        let repeated = Tally {
            witnesses: vec![("b".into(), 1.0), ("b".into(), 1.0), ("a".into(), 5.0)],
            others: 3.0,
        };
        assert!(decide("a", &repeated).is_err(), "b counts once, a never");
        let nan = Tally {
            witnesses: vec![("b".into(), f64::NAN), ("c".into(), f64::INFINITY)],
            others: f64::NAN,
        };
        assert!(decide("a", &nan).is_err());
    }

    #[test]
    fn a_node_that_gets_a_proof_from_its_last_republish_hears_every_witness_again_in_time() {
        let uptime_interval = std::time::Duration::from_secs(60);
        let republished_for = std::time::Duration::from_secs(150);
        let horizon = restate_for(republished_for, &WATCH, uptime_interval);
        // The late node stores the proof at its age `republished_for` and settles it then.
        let stored = republished_for;
        let settles = stored + settle_wait(stored, &WATCH, uptime_interval);
        // Whatever the phase of a witness's timer, one of its restatements falls between the
        // two, while the proof is young enough to be restated.
        for phase_s in 0..60 {
            let ticks = (0..10).map(|k| std::time::Duration::from_secs(phase_s + 60 * k));
            let heard = ticks
                .filter(|&t| t >= stored && t + WITNESS_FLUSH < settles)
                .any(|t| t <= horizon);
            assert!(
                heard,
                "a witness ticking at phase {phase_s} s is never heard"
            );
        }
    }
}
