//! Which verdicts on a round's deltas settle its training proofs. Anyone can sign a verdict, so
//! the first to arrive must not decide: a verdict set settles when the signers that agree on it
//! (the same kept/rejected list, from an aggregate that produced the θ₀ this node holds) carry
//! more weight than the signers of any other set for the round. Honest nodes that aggregated the
//! same deltas produce identical sets, so the honest admitted weight settles; identities without
//! weight sign for nothing. Pure: the caller passes the weights.

use std::collections::{BTreeMap, BTreeSet};

use crate::diloco::weight::EPSILON;
use crate::net::wire::RoundVerdictsWire;

/// One signed verdict set of a round, with its signer's node_id.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedVerdicts {
    pub signer: String,
    pub wire: RoundVerdictsWire,
}

/// The set that settles and why, or why none does.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// Index into the candidates of the set that settles.
    Settle {
        index: usize,
        reason: String,
    },
    Unsettled(String),
}

/// A round's (node_id, delta hash, kept) triples, sorted: the key signers agree on.
type VerdictList = Vec<(String, String, bool)>;
/// Signers' total weight, the index of the first candidate, the number of signers.
type Group = (f64, usize, usize);

/// Chooses among the verdict sets of one round those whose aggregate produced `theta0_after`
/// (the θ₀ this node holds for the next round): the agreeing group of most weight settles, when
/// it outweighs every other group; a tie, or no weight at all, settles nothing. Each signer counts
/// once (its first set).
pub fn settle(
    candidates: &[SignedVerdicts],
    theta0_after: &str,
    weight_of: impl Fn(&str) -> f64,
) -> Settlement {
    let mut signed: BTreeSet<&str> = BTreeSet::new();
    let mut groups: BTreeMap<VerdictList, Group> = BTreeMap::new();
    for (index, c) in candidates.iter().enumerate() {
        if c.wire.theta0_after != theta0_after || !signed.insert(c.signer.as_str()) {
            continue;
        }
        let mut list = c.wire.verdicts.clone();
        list.sort();
        let group = groups.entry(list).or_insert((0.0, index, 0));
        group.0 += weight_of(&c.signer);
        group.2 += 1;
    }
    let mut ranked: Vec<Group> = groups.into_values().collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    match ranked.as_slice() {
        [] => Settlement::Unsettled("no verdicts from the aggregate that produced this θ₀".into()),
        [(best, ..), ..] if *best <= EPSILON => {
            Settlement::Unsettled("verdicts only from identities without weight".into())
        }
        [(best, _, _), (second, _, _), ..] if *best <= *second + EPSILON => {
            Settlement::Unsettled(format!("conflicting verdicts of equal weight {best:.2}"))
        }
        [(best, index, signers), rest @ ..] => Settlement::Settle {
            index: *index,
            reason: format!(
                "{signers} signer(s) of weight {best:.2} agree{}",
                rest.first()
                    .map(|(w, ..)| format!(", against weight {w:.2}"))
                    .unwrap_or_default()
            ),
        },
    }
}

/// The θ₀ that the verdict sets of most weight say a round produced, when it outweighs every
/// other: what a node that healed over the round (it holds no θ₀ of its own for the next round)
/// settles the round by, since the chain it joined is the heaviest one. A tie or no weight:
/// `None`. Each signer counts once (its first set).
pub fn heaviest_outcome(
    candidates: &[SignedVerdicts],
    weight_of: impl Fn(&str) -> f64,
) -> Option<String> {
    let mut signed: BTreeSet<&str> = BTreeSet::new();
    let mut weights: BTreeMap<&str, f64> = BTreeMap::new();
    for c in candidates {
        if signed.insert(c.signer.as_str()) {
            *weights.entry(c.wire.theta0_after.as_str()).or_default() += weight_of(&c.signer);
        }
    }
    let mut ranked: Vec<(&str, f64)> = weights.into_iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    match ranked.as_slice() {
        [(best, w), rest @ ..]
            if *w > EPSILON && rest.first().is_none_or(|(_, second)| *w > second + EPSILON) =>
        {
            Some(best.to_string())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(signer: &str, theta0_after: &str, kept: &[bool]) -> SignedVerdicts {
        SignedVerdicts {
            signer: signer.into(),
            wire: RoundVerdictsWire {
                round: 3,
                theta0_after: theta0_after.into(),
                verdicts: kept
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (format!("n{i}"), format!("d{i}"), *k))
                    .collect(),
            },
        }
    }

    fn admitted(id: &str) -> f64 {
        if id.starts_with("sybil") { 0.0 } else { 1.0 }
    }

    #[test]
    fn a_node_that_healed_over_a_round_follows_the_outcome_of_most_weight() {
        let honest = [true, true, false];
        let mut sets = vec![set("a", "T", &honest), set("b", "T", &honest)];
        // Weightless identities vouching for another outcome change nothing.
        sets.extend((0..16).map(|i| set(&format!("sybil{i}"), "X", &honest)));
        assert_eq!(heaviest_outcome(&sets, admitted).as_deref(), Some("T"));
        // A signer counts once; a tie settles nothing.
        sets.push(set("a", "Y", &honest));
        sets.push(set("c", "Y", &honest));
        assert_eq!(heaviest_outcome(&sets, admitted).as_deref(), Some("T"));
        sets.push(set("d", "Y", &honest));
        assert_eq!(heaviest_outcome(&sets, admitted), None);
        assert_eq!(heaviest_outcome(&sets[2..18], admitted), None, "no weight");
    }

    #[test]
    fn a_forged_set_arriving_first_does_not_settle_against_the_honest_weight() {
        let honest = [true, true, true, false];
        let forged = [false, false, false, true];
        let mut sets = vec![set("attacker", "T", &forged)];
        sets.extend((0..16).map(|i| set(&format!("sybil{i}"), "T", &forged)));
        sets.extend(["a", "b", "c"].map(|id| set(id, "T", &honest)));
        let Settlement::Settle { index, reason } = settle(&sets, "T", admitted) else {
            panic!("the honest weight settles")
        };
        assert!(!sets[index].wire.verdicts[3].2, "{reason}");
        assert_eq!(
            reason,
            "3 signer(s) of weight 3.00 agree, against weight 1.00"
        );
    }

    #[test]
    fn weightless_signers_and_other_histories_settle_nothing() {
        let sets: Vec<_> = (0..4)
            .map(|i| set(&format!("sybil{i}"), "T", &[true]))
            .collect();
        assert!(matches!(
            settle(&sets, "T", admitted),
            Settlement::Unsettled(_)
        ));
        assert!(matches!(
            settle(&[set("a", "other", &[true])], "T", admitted),
            Settlement::Unsettled(_)
        ));
    }

    #[test]
    fn a_signer_counts_once_and_a_tie_settles_nothing() {
        let sets = [
            set("a", "T", &[true, false]),
            set("a", "T", &[false, true]),
            set("b", "T", &[false, true]),
        ];
        assert_eq!(
            settle(&sets, "T", admitted),
            Settlement::Unsettled("conflicting verdicts of equal weight 1.00".into())
        );
        // Order within a set does not matter; a lone honest set settles.
        let mut reversed = set("a", "T", &[true, false]);
        reversed.wire.verdicts.reverse();
        let sets = [set("b", "T", &[true, false]), reversed];
        assert!(matches!(
            settle(&sets, "T", admitted),
            Settlement::Settle { index: 0, .. }
        ));
    }
}
