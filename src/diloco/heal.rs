//! When a node heals: it adopts the outer state (θ₀, momentum, round) the majority of trainers
//! holds, instead of its own. A pure function of what the peers' heartbeats say and the clock,
//! so the rule is tested without sockets; its reason is what the logs and /api/diloco show.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One trainer peer's outer state, from its last heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerOuterState {
    pub peer_id: String,
    pub round: u64,
    pub theta0_hash: String,
    pub momentum_hash: String,
}

/// Heal from `sources` (peers of the majority, any of them will do) to `round` / `theta0_hash`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealPlan {
    pub round: u64,
    pub theta0_hash: String,
    pub sources: Vec<PeerOuterState>,
    pub reason: String,
}

/// How long a same-round disagreement must last before a node heals: a node that closes its
/// round a moment after the others passes through it on its way to the same θ₀.
pub const DISAGREEMENT_GRACE: Duration = Duration::from_secs(3);

/// The majority group: most peers, then the highest round, then (so that both sides of an even
/// split agree on which one yields) the larger hash. `None` when no peer trains.
fn majority(peers: &[PeerOuterState]) -> Option<((u64, &str), Vec<&PeerOuterState>)> {
    let mut groups: BTreeMap<(u64, &str), Vec<&PeerOuterState>> = BTreeMap::new();
    for p in peers {
        groups
            .entry((p.round, p.theta0_hash.as_str()))
            .or_default()
            .push(p);
    }
    groups
        .into_iter()
        .max_by_key(|((round, hash), members)| (members.len(), *round, *hash))
}

/// Whether this node (at `round` with `theta0_hash`) should heal, given the trainer peers' states.
/// `disagreeing_since` is when the current disagreement was first seen (the caller remembers it).
/// - Two or more rounds behind the majority (a joiner, a restarted node): heal at once.
/// - Otherwise on another θ₀ than a larger group (more peers; then the later round; then the
///   larger hash) for longer than [`DISAGREEMENT_GRACE`]: heal, even back to an earlier round —
///   a node that ran ahead alone is the minority.
pub fn heal_decision(
    now: Instant,
    round: u64,
    theta0_hash: &str,
    peers: &[PeerOuterState],
    disagreeing_since: Option<Instant>,
) -> Option<HealPlan> {
    let grace_over = disagreeing_since
        .is_some_and(|since| now.saturating_duration_since(since) >= DISAGREEMENT_GRACE);
    plan(round, theta0_hash, peers, grace_over)
}

/// Whether this node disagrees with a larger group right now (the caller starts or clears its
/// grace clock with it).
pub fn disagrees(round: u64, theta0_hash: &str, peers: &[PeerOuterState]) -> bool {
    plan(round, theta0_hash, peers, true).is_some()
}

/// Counts the peers still at the round this node just left, on the θ₀ it left (`previous`), as
/// holding this node's state: they are on their way to it (they have not aggregated the round
/// yet), not a fork. Without this a node that aggregates first would count its slower peers as a
/// larger group and heal back a round, throwing its round away.
pub fn catching_up(
    mut peers: Vec<PeerOuterState>,
    round: u64,
    theta0_hash: &str,
    previous: Option<(u64, &str)>,
) -> Vec<PeerOuterState> {
    if let Some((previous_round, previous_hash)) = previous
        && previous_round + 1 == round
    {
        for p in peers
            .iter_mut()
            .filter(|p| p.round == previous_round && p.theta0_hash == previous_hash)
        {
            p.round = round;
            p.theta0_hash = theta0_hash.to_string();
        }
    }
    peers
}

fn plan(
    round: u64,
    theta0_hash: &str,
    peers: &[PeerOuterState],
    grace_over: bool,
) -> Option<HealPlan> {
    let ((best_round, best_hash), members) = majority(peers)?;
    if best_hash == theta0_hash && best_round == round {
        return None;
    }
    let ours = 1 + peers
        .iter()
        .filter(|p| p.round == round && p.theta0_hash == theta0_hash)
        .count();
    let heal = |reason: String| HealPlan {
        round: best_round,
        theta0_hash: best_hash.to_string(),
        sources: members.iter().map(|p| (*p).clone()).collect(),
        reason,
    };
    if best_round >= round + 2 {
        return Some(heal(format!(
            "{} peer(s) are at round {best_round}, this node at round {round}: joining them",
            members.len()
        )));
    }
    let larger = (members.len(), best_round, best_hash) > (ours, round, theta0_hash);
    if larger && grace_over {
        return Some(heal(format!(
            "{} peer(s) hold θ₀ {} at round {best_round}; {ours} node(s), this one included, hold {} at round {round}",
            members.len(),
            &best_hash[..12.min(best_hash.len())],
            &theta0_hash[..12.min(theta0_hash.len())]
        )));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, round: u64, hash: &str) -> PeerOuterState {
        PeerOuterState {
            peer_id: id.into(),
            round,
            theta0_hash: hash.into(),
            momentum_hash: format!("m-{hash}"),
        }
    }

    #[test]
    fn peers_still_aggregating_the_round_this_node_left_do_not_pull_it_back() {
        let t0 = Instant::now();
        let late = t0 + DISAGREEMENT_GRACE * 10;
        // This node closed round 1 (θ₀ h1 → h2) first; four peers still show round 1, h1.
        let slow: Vec<_> = ["a", "b", "c", "d"].map(|id| peer(id, 1, "h1")).into();
        assert!(
            heal_decision(late, 2, "h2", &slow, Some(t0)).is_some(),
            "the bare rule heals back"
        );
        let peers = catching_up(slow.clone(), 2, "h2", Some((1, "h1")));
        assert!(!disagrees(2, "h2", &peers));
        assert_eq!(heal_decision(late, 2, "h2", &peers, Some(t0)), None);
        // A majority at round 1 on another θ₀ than the one this node left is a fork: heal.
        let forked: Vec<_> = ["a", "b", "c"].map(|id| peer(id, 1, "other")).into();
        let peers = catching_up(forked, 2, "h2", Some((1, "h1")));
        assert!(heal_decision(late, 2, "h2", &peers, Some(t0)).is_some());
        // Only the round just left counts: peers two rounds behind are not on their way here.
        let peers = catching_up(slow, 3, "h3", Some((1, "h1")));
        assert_eq!(peers[0].round, 1);
    }

    #[test]
    fn a_node_in_step_with_the_majority_does_not_heal() {
        let now = Instant::now();
        let peers = [peer("a", 4, "h4"), peer("b", 4, "h4"), peer("c", 3, "old")];
        assert_eq!(heal_decision(now, 4, "h4", &peers, None), None);
        assert_eq!(
            heal_decision(now, 0, "x", &[], None),
            None,
            "no peers, nothing to heal from"
        );
    }

    #[test]
    fn a_joiner_far_behind_heals_at_once_from_the_majority() {
        let now = Instant::now();
        let peers = [peer("a", 3, "h3"), peer("b", 3, "h3"), peer("c", 3, "h3")];
        let plan = heal_decision(now, 0, "init", &peers, None).unwrap();
        assert_eq!((plan.round, plan.theta0_hash.as_str()), (3, "h3"));
        assert_eq!(plan.sources.len(), 3);
        assert!(
            plan.reason.contains("round 3, this node at round 0"),
            "{}",
            plan.reason
        );
    }

    #[test]
    fn a_minority_theta0_heals_only_after_the_grace_period() {
        let t0 = Instant::now();
        let peers = [
            peer("a", 5, "good"),
            peer("b", 5, "good"),
            peer("c", 5, "bad"),
        ];
        assert_eq!(heal_decision(t0, 5, "bad", &peers, None), None);
        assert_eq!(
            heal_decision(t0 + Duration::from_secs(2), 5, "bad", &peers, Some(t0)),
            None
        );
        let plan = heal_decision(t0 + DISAGREEMENT_GRACE, 5, "bad", &peers, Some(t0)).unwrap();
        assert_eq!(plan.theta0_hash, "good");
        assert!(disagrees(5, "bad", &peers));
        // The other side of the split (a node on "good" beside b, against c and d) stays put.
        let other_side = [
            peer("b", 5, "good"),
            peer("c", 5, "bad"),
            peer("d", 5, "bad"),
        ];
        assert!(!disagrees(5, "good", &other_side));
    }

    #[test]
    fn the_majority_never_heals_towards_a_minority_or_a_laggard() {
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(60);
        // This node and one peer agree; one peer differs: not larger, no heal.
        let peers = [peer("a", 5, "good"), peer("c", 5, "bad")];
        assert_eq!(heal_decision(late, 5, "good", &peers, Some(t0)), None);
        // A lone peer one round behind does not pull this node back.
        assert_eq!(
            heal_decision(late, 6, "new", &[peer("a", 5, "old")], Some(t0)),
            None
        );
    }

    #[test]
    fn a_node_that_ran_ahead_alone_rejoins_the_majority_after_the_grace_period() {
        let t0 = Instant::now();
        let peers = [peer("a", 1, "h1"), peer("b", 1, "h1"), peer("c", 1, "h1")];
        assert_eq!(
            heal_decision(t0 + Duration::from_secs(1), 2, "solo", &peers, Some(t0)),
            None
        );
        let plan = heal_decision(t0 + DISAGREEMENT_GRACE, 2, "solo", &peers, Some(t0)).unwrap();
        assert_eq!((plan.round, plan.theta0_hash.as_str()), (1, "h1"));
    }

    #[test]
    fn two_nodes_one_ahead_the_one_behind_follows() {
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(60);
        // Equal group sizes: the higher round wins, so the laggard heals and the leader does not.
        assert!(heal_decision(late, 4, "h4", &[peer("lead", 5, "h5")], Some(t0)).is_some());
        assert_eq!(
            heal_decision(late, 5, "h5", &[peer("lag", 4, "h4")], Some(t0)),
            None
        );
    }
}
