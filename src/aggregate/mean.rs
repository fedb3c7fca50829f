//! The plain mean: optimal with honest workers, broken by a single attacker. Every contributor
//! counts once: a weight taken from a number the contributor declares (tokens, samples) would let
//! it buy influence with a lie. Needs n ≥ 1; everyone is kept and scored by its weight 1/n.

use super::blocks::{self, Measure};
use super::{Contribution, Outcome, verdicts};

/// (1/n)·Σ Δᵢ; keeps everyone. Per coordinate the values are added in input order, in f64: the
/// result is a convex combination, so even values near f32::MAX cannot overflow to infinity.
pub(super) fn mean(contributions: &[Contribution], d: usize) -> Outcome {
    let weight = 1.0 / contributions.len() as f64;
    let pass = blocks::pass(
        contributions,
        vec![0.0; d],
        Measure::FINITE,
        #[inline(always)]
        |cols, out| {
            blocks::combine(out, cols.iter().map(|col| (*col, weight)), |s| s as f32);
        },
    );
    Outcome {
        delta: pass.out,
        inputs_finite: pass.finite,
        verdicts: verdicts(
            contributions,
            std::iter::repeat(true),
            std::iter::repeat(weight),
        ),
        note: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::*;

    fn mean(cs: &[Contribution]) -> Aggregate {
        run(Rule::Mean, 1, cs)
    }

    #[test]
    fn every_contributor_counts_once_and_is_kept() {
        let out = mean(&[c("a", vec![1.0, 0.0]), c("b", vec![5.0, 4.0])]);
        assert_eq!(out.delta, vec![3.0, 2.0]);
        assert!(out.verdicts.iter().all(|v| v.kept && v.score == 0.5));
        assert_eq!(out.reason, "mean: n = 2 meets n ≥ 1");
        let out = mean(&[c("a", vec![1.0]), c("b", vec![2.0]), c("c", vec![6.0])]);
        assert_eq!(out.delta, [3.0]);
        assert!(out.verdicts.iter().all(|v| v.score == 1.0 / 3.0));
    }

    #[test]
    fn a_single_input_is_returned_as_is() {
        let out = mean(&[c("a", vec![0.25, -3.0])]);
        assert_eq!(out.delta, vec![0.25, -3.0]);
    }

    #[test]
    fn identical_inputs_and_permutations() {
        assert_identical_inputs_return_the_input(Rule::Mean, 1, 7, 0.0);
        let cs = honest_and_attackers(&random_vec(1, 2 * blocks::BLOCK + 5, 1.0), 4, 0.1, 1);
        assert_permutation_invariant(Rule::Mean, 1, &cs, 1e-4);
    }

    #[test]
    fn values_near_the_largest_f32_do_not_overflow() {
        let out = mean(&[
            c("a", vec![f32::MAX]),
            c("b", vec![f32::MAX]),
            c("c", vec![f32::MAX]),
        ]);
        assert_eq!(out.delta, [f32::MAX]);
    }

    #[test]
    fn one_attacker_drags_the_mean_away() {
        let centre = random_vec(2, 64, 1.0);
        let cs = honest_and_attackers(&centre, 4, 0.0, 1);
        let out = mean(&cs);
        // (4·x − 100·x) / 5 = −19.2·x
        let expected: Vec<f32> = centre.iter().map(|x| -19.2 * x).collect();
        assert!(max_abs_diff(&out.delta, &expected) < 1e-4);
        assert!(out.verdicts.iter().all(|v| v.kept));
    }

    #[test]
    fn refuses_empty_mismatched_and_non_finite_inputs() {
        let cfg = config(Rule::Mean, 1);
        assert_eq!(aggregate(&cfg, 0, &[]), Err(AggregateError::Empty));
        assert!(matches!(
            aggregate(&cfg, 0, &[c("a", vec![1.0]), c("b", vec![1.0, 2.0])]),
            Err(AggregateError::LengthMismatch { .. })
        ));
        assert_eq!(
            aggregate(&cfg, 0, &[c("a", vec![f32::NAN])]),
            Err(AggregateError::NonFinite("a".into()))
        );
    }
}
