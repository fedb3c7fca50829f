//! When a node heals: it adopts the outer state (θ₀, momentum, round) that the heaviest group of
//! trainers holds, instead of its own. Groups are weighed by admitted weight
//! ([`super::weight`]), never by head count: identities are free, so a thousand keys claiming a
//! far-ahead round weigh what their admission or reputation gives them, and a state is adopted
//! only after [`check_adopted`] (finite, within reach of this node's θ₀). A pure function of the
//! peers' heartbeats, their weights and the clock; its reason is what the logs and /api/diloco show.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::weight::EPSILON;

/// One trainer peer's outer state, from its last heartbeat, and its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerOuterState {
    pub peer_id: String,
    pub round: u64,
    pub theta0_hash: String,
    pub momentum_hash: String,
    /// What this peer counts for (0 for an unadmitted identity).
    pub weight: f64,
}

/// This node's own outer state and weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OwnState<'a> {
    pub round: u64,
    pub theta0_hash: &'a str,
    pub weight: f64,
}

/// Heal from `sources` (peers of the heaviest group, any of them will do) to `round` / `theta0_hash`.
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

struct Group<'a> {
    round: u64,
    hash: &'a str,
    weight: f64,
    /// Holds a member of full weight (admitted or established), not only newcomers' shares.
    full: bool,
    members: Vec<&'a PeerOuterState>,
}

/// The heaviest group of peers on another state than `own`: most weight, then a full member,
/// then the highest round, then (so that both sides of an even split agree on which one yields)
/// the larger hash. Groups of no weight are no candidates at all.
fn heaviest_other<'a>(own: &OwnState, peers: &'a [PeerOuterState]) -> Option<Group<'a>> {
    let mut groups: BTreeMap<(u64, &str), Group> = BTreeMap::new();
    for p in peers {
        let g = groups
            .entry((p.round, p.theta0_hash.as_str()))
            .or_insert_with(|| Group {
                round: p.round,
                hash: p.theta0_hash.as_str(),
                weight: 0.0,
                full: false,
                members: Vec::new(),
            });
        g.weight += p.weight;
        g.full |= p.weight >= 1.0 - EPSILON;
        g.members.push(p);
    }
    groups
        .into_values()
        .filter(|g| (g.round, g.hash) != (own.round, own.theta0_hash) && g.weight > EPSILON)
        .max_by(|a, b| {
            a.weight
                .total_cmp(&b.weight)
                .then(a.full.cmp(&b.full))
                .then((a.round, a.hash).cmp(&(b.round, b.hash)))
        })
}

/// Whether this node should heal, given the trainer peers' states and weights.
/// `disagreeing_since` is when the current disagreement was first seen (the caller remembers it).
/// Another group pulls this node when it weighs more than this node's own group (this node and
/// the peers on its state); at equal weight only when it holds a member of full weight and is
/// ahead by (round, hash): newcomers' shares never win a tie, not even against a lone node.
/// - Two or more rounds behind such a group (a joiner, a restarted node): heal at once.
/// - Otherwise after [`DISAGREEMENT_GRACE`], even back to an earlier round: a node that ran ahead
///   alone is the lighter side.
pub fn heal_decision(
    now: Instant,
    own: OwnState,
    peers: &[PeerOuterState],
    disagreeing_since: Option<Instant>,
) -> Option<HealPlan> {
    let grace_over = disagreeing_since
        .is_some_and(|since| now.saturating_duration_since(since) >= DISAGREEMENT_GRACE);
    plan(own, peers, grace_over)
}

/// Whether a heavier group holds another state right now (the caller starts or clears its grace
/// clock with it).
pub fn disagrees(own: OwnState, peers: &[PeerOuterState]) -> bool {
    plan(own, peers, true).is_some()
}

/// Counts the peers still at the round this node just left, on the θ₀ it left (`previous`), as
/// holding this node's state: they are on their way to it (they have not aggregated the round
/// yet), not a fork. Without this a node that aggregates first would count its slower peers as a
/// heavier group and heal back a round, throwing its round away.
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

fn plan(own: OwnState, peers: &[PeerOuterState], grace_over: bool) -> Option<HealPlan> {
    let best = heaviest_other(&own, peers)?;
    let with_us: Vec<&PeerOuterState> = peers
        .iter()
        .filter(|p| p.round == own.round && p.theta0_hash == own.theta0_hash)
        .collect();
    let ours = own.weight + with_us.iter().map(|p| p.weight).sum::<f64>();
    let heavier = best.weight > ours + EPSILON;
    let tie_won = (best.weight - ours).abs() <= EPSILON
        && best.full
        && (best.round, best.hash) > (own.round, own.theta0_hash);
    if !(heavier || tie_won) {
        return None;
    }
    let heal = |reason: String| HealPlan {
        round: best.round,
        theta0_hash: best.hash.to_string(),
        sources: best.members.iter().map(|p| (*p).clone()).collect(),
        reason,
    };
    let short = |h: &str| h[..12.min(h.len())].to_string();
    if best.round >= own.round + 2 {
        return Some(heal(format!(
            "{} peer(s) of weight {:.2} are at round {}, this node (weight {ours:.2} with its group) at round {}: joining them",
            best.members.len(),
            best.weight,
            best.round,
            own.round
        )));
    }
    grace_over.then(|| {
        heal(format!(
            "{} peer(s) of weight {:.2} hold θ₀ {} at round {}; this node's group of weight {ours:.2} holds {} at round {}",
            best.members.len(),
            best.weight,
            short(best.hash),
            best.round,
            short(own.theta0_hash),
            own.round
        ))
    })
}

/// Why a fetched outer state is refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AdoptionRefused {
    #[error("{what} has {found} values, expected {expected}")]
    Length {
        what: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("{what} holds a non-finite value at index {index}")]
    NonFinite { what: &'static str, index: usize },
    #[error(
        "θ₀ is {distance:.4e} away from this node's, more than the {bound:.4e} that {rounds} round(s) of outer steps can move it"
    )]
    TooFar {
        distance: f64,
        bound: f64,
        rounds: u64,
    },
}

/// How far θ₀ can move in `rounds` outer steps whose deltas are bounded by `max_delta_norm`:
/// a Nesterov step is lr·(Δ + μ·b) with ‖b‖ ≤ ‖Δ‖/(1−μ), so at most lr·‖Δ‖/(1−μ) per round; one
/// extra round covers two sides of a fork.
pub fn reach(rounds: u64, lr: f32, momentum: f32, max_delta_norm: f32) -> f64 {
    let per_round =
        f64::from(lr) * f64::from(max_delta_norm) / (1.0 - f64::from(momentum)).max(1e-6);
    (rounds.saturating_add(1)) as f64 * per_round
}

/// The checks a healing node makes before adopting a fetched θ₀ and momentum (their hashes were
/// checked as they arrived): the right length, every value finite, and θ₀ within `bound` of this
/// node's own (see [`reach`]).
pub fn check_adopted(
    current: &[f32],
    theta0: &[f32],
    momentum: &[f32],
    bound: f64,
    rounds: u64,
) -> Result<(), AdoptionRefused> {
    for (what, values) in [("θ₀", theta0), ("the momentum", momentum)] {
        if values.len() != current.len() {
            return Err(AdoptionRefused::Length {
                what,
                found: values.len(),
                expected: current.len(),
            });
        }
        if let Some(index) = values.iter().position(|x| !x.is_finite()) {
            return Err(AdoptionRefused::NonFinite { what, index });
        }
    }
    let distance = current
        .iter()
        .zip(theta0)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
        .sum::<f64>()
        .sqrt();
    if distance > bound {
        return Err(AdoptionRefused::TooFar {
            distance,
            bound,
            rounds,
        });
    }
    Ok(())
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
            weight: 1.0,
        }
    }

    fn weighing(weight: f64, mut p: PeerOuterState) -> PeerOuterState {
        p.weight = weight;
        p
    }

    fn own(round: u64, theta0_hash: &str) -> OwnState<'_> {
        OwnState {
            round,
            theta0_hash,
            weight: 1.0,
        }
    }

    #[test]
    fn peers_still_aggregating_the_round_this_node_left_do_not_pull_it_back() {
        let t0 = Instant::now();
        let late = t0 + DISAGREEMENT_GRACE * 10;
        // This node closed round 1 (θ₀ h1 → h2) first; four peers still show round 1, h1.
        let slow: Vec<_> = ["a", "b", "c", "d"].map(|id| peer(id, 1, "h1")).into();
        assert!(
            heal_decision(late, own(2, "h2"), &slow, Some(t0)).is_some(),
            "the bare rule heals back"
        );
        let peers = catching_up(slow.clone(), 2, "h2", Some((1, "h1")));
        assert!(!disagrees(own(2, "h2"), &peers));
        assert_eq!(heal_decision(late, own(2, "h2"), &peers, Some(t0)), None);
        // A majority at round 1 on another θ₀ than the one this node left is a fork: heal.
        let forked: Vec<_> = ["a", "b", "c"].map(|id| peer(id, 1, "other")).into();
        let peers = catching_up(forked, 2, "h2", Some((1, "h1")));
        assert!(heal_decision(late, own(2, "h2"), &peers, Some(t0)).is_some());
        // Only the round just left counts: peers two rounds behind are not on their way here.
        let peers = catching_up(slow, 3, "h3", Some((1, "h1")));
        assert_eq!(peers[0].round, 1);
    }

    #[test]
    fn a_node_in_step_with_the_majority_does_not_heal() {
        let now = Instant::now();
        let peers = [peer("a", 4, "h4"), peer("b", 4, "h4"), peer("c", 3, "old")];
        assert_eq!(heal_decision(now, own(4, "h4"), &peers, None), None);
        assert_eq!(
            heal_decision(now, own(0, "x"), &[], None),
            None,
            "no peers, nothing to heal from"
        );
    }

    #[test]
    fn a_joiner_far_behind_heals_at_once_from_the_majority() {
        let now = Instant::now();
        let peers = [peer("a", 3, "h3"), peer("b", 3, "h3"), peer("c", 3, "h3")];
        let plan = heal_decision(now, own(0, "init"), &peers, None).unwrap();
        assert_eq!((plan.round, plan.theta0_hash.as_str()), (3, "h3"));
        assert_eq!(plan.sources.len(), 3);
        assert!(
            plan.reason
                .contains("are at round 3, this node (weight 1.00 with its group) at round 0"),
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
        assert_eq!(heal_decision(t0, own(5, "bad"), &peers, None), None);
        assert_eq!(
            heal_decision(t0 + Duration::from_secs(2), own(5, "bad"), &peers, Some(t0)),
            None
        );
        let plan = heal_decision(t0 + DISAGREEMENT_GRACE, own(5, "bad"), &peers, Some(t0)).unwrap();
        assert_eq!(plan.theta0_hash, "good");
        assert!(disagrees(own(5, "bad"), &peers));
        // The other side of the split (a node on "good" beside b, against c and d) stays put.
        let other_side = [
            peer("b", 5, "good"),
            peer("c", 5, "bad"),
            peer("d", 5, "bad"),
        ];
        assert!(!disagrees(own(5, "good"), &other_side));
    }

    #[test]
    fn the_majority_never_heals_towards_a_minority_or_a_laggard() {
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(60);
        // This node and one peer agree; one peer differs: not larger, no heal.
        let peers = [peer("a", 5, "good"), peer("c", 5, "bad")];
        assert_eq!(heal_decision(late, own(5, "good"), &peers, Some(t0)), None);
        // A lone peer one round behind does not pull this node back.
        assert_eq!(
            heal_decision(late, own(6, "new"), &[peer("a", 5, "old")], Some(t0)),
            None
        );
    }

    #[test]
    fn a_node_that_ran_ahead_alone_rejoins_the_majority_after_the_grace_period() {
        let t0 = Instant::now();
        let peers = [peer("a", 1, "h1"), peer("b", 1, "h1"), peer("c", 1, "h1")];
        assert_eq!(
            heal_decision(
                t0 + Duration::from_secs(1),
                own(2, "solo"),
                &peers,
                Some(t0)
            ),
            None
        );
        let plan =
            heal_decision(t0 + DISAGREEMENT_GRACE, own(2, "solo"), &peers, Some(t0)).unwrap();
        assert_eq!((plan.round, plan.theta0_hash.as_str()), (1, "h1"));
    }

    #[test]
    fn two_nodes_one_ahead_the_one_behind_follows() {
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(60);
        // Equal group sizes: the higher round wins, so the laggard heals and the leader does not.
        assert!(heal_decision(late, own(4, "h4"), &[peer("lead", 5, "h5")], Some(t0)).is_some());
        assert_eq!(
            heal_decision(late, own(5, "h5"), &[peer("lag", 4, "h4")], Some(t0)),
            None
        );
    }

    #[test]
    fn identities_without_weight_never_pull_a_node_however_many() {
        let t0 = Instant::now();
        let late = t0 + DISAGREEMENT_GRACE * 10;
        // 16 unadmitted identities far ahead on a poisoned θ₀, against this node and one admitted peer.
        let mut peers: Vec<_> = (0..16)
            .map(|i| weighing(0.0, peer(&format!("s{i}"), 1000, "poison")))
            .collect();
        peers.push(peer("honest", 4, "h4"));
        assert_eq!(heal_decision(late, own(4, "h4"), &peers, Some(t0)), None);
        assert!(!disagrees(own(4, "h4"), &peers));
        // Newcomers of an open network share one unit: they tie with a lone node at best, and a
        // tie goes to them only when they hold a full member.
        let pool: Vec<_> = (0..16)
            .map(|i| weighing(1.0 / 16.0, peer(&format!("s{i}"), 1000, "poison")))
            .collect();
        let mut with_honest = pool.clone();
        with_honest.push(peer("honest", 4, "h4"));
        assert_eq!(
            heal_decision(late, own(4, "h4"), &with_honest, Some(t0)),
            None
        );
        let mut against_two = pool;
        against_two.push(weighing(1.0 / 16.0, peer("honest-newcomer", 4, "h4")));
        assert_eq!(
            heal_decision(late, own(4, "h4"), &against_two, Some(t0)),
            None
        );
    }

    #[test]
    fn admitted_weight_decides_not_head_count() {
        let now = Instant::now();
        // Two admitted peers far ahead outweigh three unadmitted ones at this node's state.
        let mut peers: Vec<_> = (0..3)
            .map(|i| weighing(0.0, peer(&format!("u{i}"), 0, "init")))
            .collect();
        peers.extend([peer("a", 7, "h7"), peer("b", 7, "h7")]);
        let plan = heal_decision(now, own(0, "init"), &peers, None).unwrap();
        assert_eq!((plan.round, plan.sources.len()), (7, 2));
        // An unadmitted observer (weight 0) follows any admitted group.
        let observer = OwnState {
            weight: 0.0,
            ..own(0, "init")
        };
        assert!(heal_decision(now, observer, &[peer("a", 2, "h2")], None).is_some());
    }

    #[test]
    fn an_adopted_state_must_be_finite_and_within_reach() {
        let current = [0.0f32, 0.0];
        let bound = reach(1, 0.7, 0.9, 1.0);
        assert!((bound - 14.0).abs() < 1e-5, "{bound}");
        assert_eq!(
            check_adopted(&current, &[3.0, 4.0], &[0.0, 0.0], bound, 1),
            Ok(())
        );
        assert_eq!(
            check_adopted(&current, &[f32::NAN, 0.0], &[0.0, 0.0], bound, 1),
            Err(AdoptionRefused::NonFinite {
                what: "θ₀",
                index: 0
            })
        );
        assert!(matches!(
            check_adopted(&current, &[0.0, 0.0], &[0.0, f32::INFINITY], bound, 1),
            Err(AdoptionRefused::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            check_adopted(&current, &[30.0, 40.0], &[0.0, 0.0], bound, 1),
            Err(AdoptionRefused::TooFar { .. })
        ));
        assert!(matches!(
            check_adopted(&current, &[1.0], &[0.0, 0.0], bound, 1),
            Err(AdoptionRefused::Length { .. })
        ));
    }
}
