//! Coordinate-wise trimmed mean: per coordinate, drop the k lowest and k highest values and average
//! the rest, with k = f, or k = max(f, ⌊β·n⌋) when `trim_fraction` β is set. Needs n ≥ 2f+1 (so
//! that k ≥ f values can go at each end and one remains); then up to f attacker values per
//! coordinate are trimmed or lie between honest ones. Verdict: kept unless among the f farthest
//! from the aggregate (L2); score: that distance.

use super::blocks::{self, Measure, Pass};
use super::network::{self, LANES, MAX_N};
use super::{Contribution, Outcome, nearest_kept};

/// Trims `k` values at each end of `xs` (sorted in place) and averages the rest in sorted order.
pub(super) fn trimmed_mean_of(xs: &mut [f32], k: usize) -> f32 {
    xs.sort_unstable_by(f32::total_cmp);
    let kept = &xs[k..xs.len() - k];
    let sum: f64 = kept.iter().map(|&x| f64::from(x)).sum();
    (sum / kept.len() as f64) as f32
}

/// The trimmed-mean vector and what `measure` asks for: bit for bit [`trimmed_mean_of`] at every
/// coordinate (the kept values summed in the same sorted order from the same −0.0 as `Sum`), by
/// the sorting network up to [`MAX_N`] contributions.
pub(super) fn trimmed_mean_pass(
    contributions: &[Contribution],
    d: usize,
    k: usize,
    measure: Measure,
) -> Pass {
    if contributions.len() > MAX_N {
        return blocks::per_coordinate(contributions, d, measure, |xs| trimmed_mean_of(xs, k));
    }
    network::per_coordinate_sorted(
        contributions,
        d,
        measure,
        #[inline(always)]
        |rows, out| {
            let kept = &rows[k..rows.len() - k];
            let mut sum = [-0.0f64; LANES];
            for row in kept {
                for (s, &x) in sum.iter_mut().zip(row) {
                    *s += f64::from(network::value(x));
                }
            }
            let count = kept.len() as f64;
            for (o, s) in out.iter_mut().zip(&sum) {
                *o = (s / count) as f32;
            }
        },
    )
}

/// `k` (≥ f, 2k < n) values trimmed at each end of every coordinate.
pub(super) fn trimmed_mean(
    contributions: &[Contribution],
    d: usize,
    f: usize,
    k: usize,
) -> Outcome {
    debug_assert!(2 * k < contributions.len());
    let pass = trimmed_mean_pass(contributions, d, k, Measure::FINITE_AND_DISTANCES);
    nearest_kept(contributions, pass, f, format!("trimmed {k} per side"))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::*;

    #[test]
    fn hand_computed_case() {
        let cs = named(&[
            &[1.0, -50.0],
            &[2.0, 0.0],
            &[100.0, 1.0],
            &[3.0, 2.0],
            &[4.0, 3.0],
        ]);
        let out = run(Rule::TrimmedMean, 1, &cs);
        assert_eq!(out.delta, [3.0, 1.0]);
        assert_eq!(
            out.reason,
            "trimmed_mean: n = 5 meets n ≥ 2f+1 = 3; trimmed 1 per side"
        );
        // Distances to (3, 1): n2 at (100, 1) is the farthest (97), then n0 (51); f = 1.
        let kept: Vec<_> = out.verdicts.iter().map(|v| v.kept).collect();
        assert_eq!(kept, [true, true, false, true, true]);
        assert_eq!(out.verdicts[3].score, 1.0);

        // f = 0 trims nothing: the unweighted mean.
        let out = run(Rule::TrimmedMean, 0, &cs);
        assert_eq!(out.delta, [22.0, -8.8]);
    }

    #[test]
    fn trim_fraction_trims_more_but_never_fewer_than_f() {
        let cs = named(&[&[1.0], &[2.0], &[100.0], &[3.0], &[4.0]]);
        let with = |beta: f32| {
            let cfg = AggregationConfig {
                trim_fraction: Some(beta),
                ..config(Rule::TrimmedMean, 1)
            };
            aggregate(&cfg, 0, &cs).unwrap()
        };
        // ⌊0.4·5⌋ = 2 per side: the median.
        assert_eq!(with(0.4).delta, [3.0]);
        assert!(with(0.4).reason.ends_with("trimmed 2 per side"));
        // ⌊0.1·5⌋ = 0 < f = 1: still trims 1.
        assert_eq!(with(0.1).delta, [3.0]);
        assert!(with(0.1).reason.ends_with("trimmed 1 per side"));
    }

    #[test]
    fn ignores_up_to_f_extreme_values_per_coordinate() {
        let d = blocks::BLOCK + 9;
        let honest: Vec<_> = (0..6)
            .map(|i| c(&format!("h{i}"), random_vec(i, d, 1.0)))
            .collect();
        let with_attack = |size: f32| {
            let mut cs = honest.clone();
            for a in 0..2u64 {
                let signs = random_vec(50 + a, d, 1.0);
                cs.push(c(
                    &format!("a{a}"),
                    signs.iter().map(|s| size * s.signum()).collect(),
                ));
            }
            run(Rule::TrimmedMean, 2, &cs)
        };
        let (big, huge) = (with_attack(1e3), with_attack(1e7));
        // The attackers' values are trimmed wherever they are extreme: their size does not matter.
        assert_eq!(big.delta, huge.delta);
        for j in 0..d {
            let h = honest.iter().map(|c| c.delta[j]);
            let lo = h.clone().fold(f32::INFINITY, f32::min);
            let hi = h.fold(f32::NEG_INFINITY, f32::max);
            assert!((lo..=hi).contains(&big.delta[j]), "coordinate {j}");
        }
        for v in &huge.verdicts {
            assert_eq!(v.kept, v.node_id.starts_with('h'), "{}", v.node_id);
        }
    }

    #[test]
    fn far_attackers_are_rejected() {
        let centre = random_vec(4, 300, 1.0);
        let cs = honest_and_attackers(&centre, 5, 0.05, 2);
        let out = run(Rule::TrimmedMean, 2, &cs);
        for v in &out.verdicts {
            assert_eq!(v.kept, v.node_id.starts_with("honest"), "{}", v.node_id);
        }
        assert!(max_abs_diff(&out.delta, &centre) <= 0.05);
    }

    #[test]
    fn identical_inputs_and_permutations() {
        assert_identical_inputs_return_the_input(Rule::TrimmedMean, 1, 5, 0.0);
        let cs = honest_and_attackers(&random_vec(5, 2 * blocks::BLOCK + 3, 1.0), 4, 0.3, 1);
        assert_permutation_invariant(Rule::TrimmedMean, 1, &cs, 0.0);
    }
}
