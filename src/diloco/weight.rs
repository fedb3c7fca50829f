//! How much each node counts in this node's decisions (heal, quorum, who may contribute), so that
//! no rule counts identities: keys are free, weight is not. Pure: tested without sockets.
//!
//! - **Permissioned** network (a genesis with membership certificates): an admitted peer weighs
//!   1, anyone else 0: it may observe, its votes and deltas count for nothing.
//! - **Open** network (no genesis, or an open one): a peer whose deltas this node's aggregation
//!   kept in at least [`ESTABLISHED_AFTER`] rounds is *established* and weighs 1; all the
//!   newcomers together weigh 1, shared equally, so a thousand fresh keys count as one node.
//!   A node that has established nobody yet (the network is just starting, or the node just
//!   started) counts every node 1: it has nothing else to go by, and is protected only once
//!   reputations exist. Once it has, established peers that fall silent for a while (a load
//!   spike) do not turn it back: newcomers still share one unit.

use std::collections::BTreeMap;

/// Kept rounds after which an open network's peer counts fully.
pub const ESTABLISHED_AFTER: u32 = 3;
/// Identities whose reputation is remembered; the least reputed are forgotten beyond it.
pub const MAX_REMEMBERED: usize = 4096;
/// Weights this close are equal (sums of shares like 1/3 are not exact).
pub const EPSILON: f64 = 1e-9;

/// Who counts in this node's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightRule {
    /// Only peers with a valid membership certificate count.
    Permissioned,
    /// Reputation earned by kept deltas counts; newcomers share one unit.
    Open,
}

/// What this node knows of one peer.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    pub node_id: String,
    /// Holds a valid, unexpired membership certificate of this network.
    pub admitted: bool,
}

/// Rounds in which this node's own aggregation kept each node's delta.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reputation {
    kept: BTreeMap<String, u32>,
}

impl Reputation {
    /// Counts one kept delta per node_id; bounded: beyond [`MAX_REMEMBERED`] identities the least
    /// reputed (then the smallest id) is forgotten.
    pub fn record_kept<'a>(&mut self, kept: impl IntoIterator<Item = &'a str>) {
        for id in kept {
            *self.kept.entry(id.to_string()).or_default() += 1;
        }
        while self.kept.len() > MAX_REMEMBERED {
            let least = self
                .kept
                .iter()
                .min_by_key(|(id, n)| (**n, id.as_str()))
                .map(|(id, _)| id.clone());
            if let Some(id) = least {
                self.kept.remove(&id);
            }
        }
    }

    pub fn established(&self, node_id: &str) -> bool {
        self.kept.get(node_id).copied().unwrap_or(0) >= ESTABLISHED_AFTER
    }

    /// Established identities, for the API.
    pub fn established_count(&self) -> usize {
        self.kept
            .values()
            .filter(|n| **n >= ESTABLISHED_AFTER)
            .count()
    }
}

/// The weight of each peer (same order as `peers`) under `rule`.
pub fn weights(rule: WeightRule, reputation: &Reputation, peers: &[Standing]) -> Vec<f64> {
    match rule {
        WeightRule::Permissioned => peers
            .iter()
            .map(|p| if p.admitted { 1.0 } else { 0.0 })
            .collect(),
        WeightRule::Open => {
            if reputation.established_count() == 0 {
                return vec![1.0; peers.len()];
            }
            let established: Vec<bool> = peers
                .iter()
                .map(|p| reputation.established(&p.node_id))
                .collect();
            let newcomers = established.iter().filter(|e| !**e).count();
            established
                .iter()
                .map(|&e| if e { 1.0 } else { 1.0 / newcomers as f64 })
                .collect()
        }
    }
}

/// This node's own weight: 1, unless it is an unadmitted node of a permissioned network.
pub fn own_weight(rule: WeightRule, admitted: bool) -> f64 {
    match rule {
        WeightRule::Permissioned if !admitted => 0.0,
        _ => 1.0,
    }
}

/// Whether a node of weight `weight` is a newcomer whose delta takes one of a round's few
/// newcomer places (open networks, once someone is established).
pub fn is_newcomer_share(weight: f64) -> bool {
    weight > EPSILON && weight < 1.0 - EPSILON
}

/// Newcomers' deltas a round takes in an open network where `established` contributors are
/// expected: ⌊β·n⌋ of the round at most, and at least one so that newcomers can earn a reputation.
pub fn newcomer_places(established: usize, byzantine_fraction: f64) -> usize {
    ((byzantine_fraction * established as f64).floor() as usize).max(1)
}

/// The order in which newcomers get a round's places: a hash of the round's θ₀ and the node_id,
/// so every node picks the same ones and nobody can grind an identity that wins every round.
pub fn newcomer_rank(theta0_hash: &str, node_id: &str) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"neuroshard/newcomer/v1");
    hasher.update(theta0_hash.as_bytes());
    hasher.update(node_id.as_bytes());
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing(id: &str, admitted: bool) -> Standing {
        Standing {
            node_id: id.into(),
            admitted,
        }
    }

    #[test]
    fn permissioned_counts_only_admitted_peers() {
        let peers = [standing("a", true), standing("sybil", false)];
        assert_eq!(
            weights(WeightRule::Permissioned, &Reputation::default(), &peers),
            [1.0, 0.0]
        );
        assert_eq!(own_weight(WeightRule::Permissioned, false), 0.0);
        assert_eq!(own_weight(WeightRule::Open, false), 1.0);
    }

    #[test]
    fn open_newcomers_share_one_unit_once_someone_is_established() {
        let mut reputation = Reputation::default();
        let mut peers = vec![standing("honest", false)];
        peers.extend((0..16).map(|i| standing(&format!("sybil{i}"), false)));
        // Nobody established yet: a starting network counts heads.
        assert!(
            weights(WeightRule::Open, &reputation, &peers)
                .iter()
                .all(|w| *w == 1.0)
        );
        for _ in 0..ESTABLISHED_AFTER {
            reputation.record_kept(["honest"]);
        }
        let w = weights(WeightRule::Open, &reputation, &peers);
        assert_eq!(w[0], 1.0);
        let sybils: f64 = w[1..].iter().sum();
        assert!(
            (sybils - 1.0).abs() < EPSILON,
            "16 fresh keys weigh {sybils}"
        );
        assert!(is_newcomer_share(w[1]) && !is_newcomer_share(w[0]));
        assert_eq!(reputation.established_count(), 1);
        // The established peer falls silent: the fresh keys still share one unit.
        let w = weights(WeightRule::Open, &reputation, &peers[1..]);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < EPSILON);
    }

    #[test]
    fn reputation_is_bounded() {
        let mut reputation = Reputation::default();
        reputation.record_kept(["old", "old"]);
        let fresh: Vec<String> = (0..MAX_REMEMBERED + 10)
            .map(|i| format!("n{i:05}"))
            .collect();
        reputation.record_kept(fresh.iter().map(String::as_str));
        assert_eq!(reputation.kept.len(), MAX_REMEMBERED);
        assert!(reputation.kept.contains_key("old"), "the reputed one stays");
    }

    #[test]
    fn newcomer_places_follow_the_round_and_ranks_agree_everywhere() {
        assert_eq!(newcomer_places(0, 0.2), 1);
        assert_eq!(newcomer_places(4, 0.2), 1);
        assert_eq!(newcomer_places(20, 0.2), 4);
        assert_eq!(newcomer_rank("h", "a"), newcomer_rank("h", "a"));
        assert_ne!(newcomer_rank("h", "a"), newcomer_rank("h2", "a"));
    }
}
