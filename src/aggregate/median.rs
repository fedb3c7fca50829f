//! Coordinate-wise median. Needs n ≥ 2f+1: with at most f of n values per coordinate from
//! attackers, the median lies between two honest values. Verdict: kept unless among the f farthest
//! from the median vector (L2); score: that distance.

use super::blocks::{self, Measure, Pass};
use super::network::{self, LANES, MAX_N};
use super::{Contribution, Outcome, nearest_kept};

/// The median of `xs` (reordered in place); for even n the mean of the two middle values.
pub(super) fn median_of(xs: &mut [f32]) -> f32 {
    let n = xs.len();
    let (lower, &mut upper, _) = xs.select_nth_unstable_by(n / 2, f32::total_cmp);
    if n.is_multiple_of(2) {
        let below = lower.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        ((f64::from(below) + f64::from(upper)) / 2.0) as f32
    } else {
        upper
    }
}

/// The coordinate-wise median vector and what `measure` asks for: bit for bit [`median_of`] at
/// every coordinate, by the sorting network up to [`MAX_N`] contributions.
pub(super) fn median_pass(contributions: &[Contribution], d: usize, measure: Measure) -> Pass {
    if contributions.len() > MAX_N {
        return blocks::per_coordinate(contributions, d, measure, median_of);
    }
    network::per_coordinate_sorted(
        contributions,
        d,
        measure,
        #[inline(always)]
        |rows, out| {
            let n = rows.len();
            if n % 2 == 1 {
                for (o, &k) in out.iter_mut().zip(&rows[n / 2]) {
                    *o = network::value(k);
                }
            } else {
                // The largest of the lower half, as `median_of`'s fold finds it (a ±0.0 mix there
                // leaves the sum with `upper` ≥ +0.0 unchanged), and the upper middle value.
                let (lower, upper): (&[i32; LANES], &[i32; LANES]) =
                    (&rows[n / 2 - 1], &rows[n / 2]);
                for ((o, &below), &upper) in out.iter_mut().zip(lower).zip(upper) {
                    let (below, upper) = (network::value(below), network::value(upper));
                    *o = ((f64::from(below) + f64::from(upper)) / 2.0) as f32;
                }
            }
        },
    )
}

pub(super) fn coordinate_median(contributions: &[Contribution], d: usize, f: usize) -> Outcome {
    let pass = median_pass(contributions, d, Measure::FINITE_AND_DISTANCES);
    nearest_kept(contributions, pass, f, String::new())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::*;
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median_of(&mut [3.0, -1.0, 2.0]), 2.0);
        assert_eq!(median_of(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median_of(&mut [7.0]), 7.0);
        assert_eq!(median_of(&mut [f32::MAX, f32::MAX]), f32::MAX);
    }

    #[test]
    fn hand_computed_case() {
        let cs = named(&[&[1.0, 10.0], &[2.0, 20.0], &[3.0, -30.0]]);
        let out = run(Rule::Median, 1, &cs);
        assert_eq!(out.delta, [2.0, 10.0]);
        let kept: Vec<_> = out.verdicts.iter().map(|v| v.kept).collect();
        assert_eq!(kept, [true, true, false]);
        let scores: Vec<_> = out.verdicts.iter().map(|v| v.score).collect();
        assert_eq!(scores, [1.0, 10.0, 1601f64.sqrt()]);

        let out = run(Rule::Median, 1, &named(&[&[1.0], &[2.0], &[3.0], &[4.0]]));
        assert_eq!(out.delta, [2.5]);
    }

    #[test]
    fn ignores_up_to_f_extreme_values_per_coordinate() {
        let d = blocks::BLOCK + 9;
        let mut cs: Vec<_> = (0..3)
            .map(|i| c(&format!("h{i}"), random_vec(i, d, 1.0)))
            .collect();
        // Two attackers, each at ±1e6 per coordinate, signs chosen independently.
        for a in 0..2u64 {
            let signs = random_vec(50 + a, d, 1.0);
            cs.push(c(
                &format!("a{a}"),
                signs.iter().map(|s| 1e6 * s.signum()).collect(),
            ));
        }
        let out = run(Rule::Median, 2, &cs);
        for j in 0..d {
            let honest = cs[..3].iter().map(|c| c.delta[j]);
            let lo = honest.clone().fold(f32::INFINITY, f32::min);
            let hi = honest.fold(f32::NEG_INFINITY, f32::max);
            assert!((lo..=hi).contains(&out.delta[j]), "coordinate {j}");
        }
        let rejected: Vec<_> = out.verdicts.iter().filter(|v| !v.kept).collect();
        assert_eq!(rejected.len(), 2);
        assert!(rejected.iter().all(|v| v.node_id.starts_with('a')));
    }

    #[test]
    fn far_attackers_are_rejected() {
        let cs = honest_and_attackers(&random_vec(4, 300, 1.0), 5, 0.05, 2);
        let out = run(Rule::Median, 2, &cs);
        for v in &out.verdicts {
            assert_eq!(v.kept, v.node_id.starts_with("honest"), "{}", v.node_id);
        }
    }

    #[test]
    fn identical_inputs_and_permutations() {
        assert_identical_inputs_return_the_input(Rule::Median, 1, 4, 0.0);
        let cs = honest_and_attackers(&random_vec(5, 2 * blocks::BLOCK + 3, 1.0), 4, 0.3, 1);
        assert_permutation_invariant(Rule::Median, 1, &cs, 0.0);
    }
}
