//! Centered clipping (Karimireddy, He, Jaggi 2021): from a centre v, repeat
//! v ← v + (1/n) Σ (xᵢ − v)·min(1, τ/‖xᵢ − v‖). The paper starts from the previous round's
//! aggregate; rules here are stateless, so v starts at the coordinate median. Needs n ≥ 2f+1 (the
//! median start needs an honest majority).
//!
//! Each iteration moves v by at most τ·f/n towards the f attackers, whatever their values, so over
//! `iterations` their pull away from the start is bounded by iterations·f·τ/n. Contributors within
//! τ of v count in full (the iteration then reaches their mean).
//!
//! Verdict: rejected iff clipped in the last iteration (‖xᵢ − v‖ > τ) AND among the f farthest
//! from v, so an honest contributor merely clipped because τ is small relative to the honest
//! spread keeps its credit, and an attacker within τ (counted in full, but bounded) is kept.
//! Score: the last iteration's clip factor min(1, τ/‖xᵢ − v‖) in (0, 1], 1 = counted in full.

use super::blocks::{self, Measure};
use super::{Contribution, Outcome, kept_nearest, median, outlier_floor, verdicts};

pub(super) fn centered_clip(
    contributions: &[Contribution],
    d: usize,
    f: usize,
    tau: f64,
    iterations: usize,
) -> Outcome {
    let n = contributions.len();
    // Each pass moves the centre and measures the inputs' distances to where it moved, so an
    // iteration reads the inputs once; the last one needs no distances after it.
    let first = median::median_pass(contributions, d, Measure::FINITE_AND_DISTANCES);
    let inputs_finite = first.finite;
    let (mut centre, mut norm) = (first.out, first.norm);
    let mut to_centre = first.distances;
    let mut distances = vec![0.0; n];
    let mut factors = vec![1.0; n];
    for iteration in 1..=iterations {
        distances = to_centre.clone();
        factors = distances
            .iter()
            .map(|&r| if r > tau { tau / r } else { 1.0 })
            .collect();
        let weights: Vec<f64> = factors.iter().map(|c| c / n as f64).collect();
        let measure = if iteration < iterations {
            Measure::FINITE_AND_DISTANCES
        } else {
            Measure::NOTHING
        };
        let moved = blocks::pass(
            contributions,
            centre,
            measure,
            #[inline(always)]
            |cols, out| {
                // v += Σᵢ wᵢ·(xᵢ − v) per coordinate, the terms added in input order from −0.0;
                // input by input over the block, so it vectorises across coordinates.
                let mut steps = [-0.0f64; blocks::RUN];
                let steps = &mut steps[..out.len()];
                for (col, w) in cols.iter().zip(&weights) {
                    for ((s, &x), &v) in steps.iter_mut().zip(col.iter()).zip(out.iter()) {
                        *s += w * (f64::from(x) - f64::from(v));
                    }
                }
                for (v, s) in out.iter_mut().zip(steps.iter()) {
                    *v = (f64::from(*v) + s) as f32;
                }
            },
        );
        (centre, norm, to_centre) = (moved.out, moved.norm, moved.distances);
    }
    let clipped: Vec<bool> = distances.iter().map(|&r| r > tau).collect();
    let kept = kept_nearest(&distances, f, outlier_floor(norm))
        .into_iter()
        .zip(&clipped)
        .map(|(near, &clipped)| near || !clipped);
    let count = clipped.iter().filter(|&&c| c).count();
    let mut sorted = distances.clone();
    sorted.sort_by(f64::total_cmp);
    // The median distance to the centre tells an operator what τ would leave the honest unclipped.
    let typical = sorted[(n - 1) / 2];
    Outcome {
        delta: centre,
        inputs_finite,
        verdicts: verdicts(contributions, kept, factors),
        note: format!(
            "{iterations} iteration(s) from the coordinate median, τ = {tau}; \
             {count} of {n} clipped in the last (median distance {typical:.3})"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::*;

    fn clip(tau: f32, iterations: usize, f: usize, cs: &[Contribution]) -> Aggregate {
        let cfg = AggregationConfig {
            clip_tau: tau,
            clip_iterations: iterations,
            ..config(Rule::CenteredClip, f)
        };
        let out = aggregate(&cfg, 0, cs).unwrap();
        assert_eq!(out.rule_used, Rule::CenteredClip);
        out
    }

    #[test]
    fn hand_computed_cases() {
        let cs = named(&[&[0.0], &[1.0], &[10.0]]);
        // Median 1; distances 1, 0, 9; τ = 2 clips the last to 2/9:
        // v = 1 + (−1 + 0 + 9·2/9)/3 = 4/3.
        let out = clip(2.0, 1, 1, &cs);
        assert!((out.delta[0] - 4.0 / 3.0).abs() < 1e-6);
        let kept: Vec<_> = out.verdicts.iter().map(|v| v.kept).collect();
        assert_eq!(kept, [true, true, false]);
        let scores: Vec<_> = out.verdicts.iter().map(|v| v.score).collect();
        assert_eq!(scores, [1.0, 1.0, 2.0 / 9.0]);
        assert_eq!(
            out.reason,
            "centered_clip: n = 3 meets n ≥ 2f+1 = 3; \
             1 iteration(s) from the coordinate median, τ = 2; 1 of 3 clipped in the last \
             (median distance 1.000)"
        );
        // Second iteration: distances 4/3, 1/3, 26/3; v = 4/3 + (−4/3 − 1/3 + 2)/3 = 13/9.
        let out = clip(2.0, 2, 1, &cs);
        assert!((out.delta[0] - 13.0 / 9.0).abs() < 1e-6);
        assert!((out.verdicts[2].score - 3.0 / 13.0).abs() < 1e-6);
        // A radius beyond every distance: one step reaches the mean and stays there.
        for iterations in [1, 3] {
            let out = clip(100.0, iterations, 1, &cs);
            assert!((out.delta[0] - 11.0 / 3.0).abs() < 1e-6);
            assert!(out.verdicts.iter().all(|v| v.kept && v.score == 1.0));
        }
    }

    #[test]
    fn bounds_the_attackers_influence_by_tau() {
        let h = random_vec(13, 500, 1.0);
        let (tau, iterations, n) = (0.5f32, 3usize, 5usize);
        for size in [-100.0f32, -1e6] {
            let mut cs: Vec<_> = (0..n - 1).map(|i| c(&format!("h{i}"), h.clone())).collect();
            cs.push(c("a", h.iter().map(|x| size * x).collect()));
            let out = clip(tau, iterations, 1, &cs);
            let off = blocks::sq_dist(&out.delta, &h).sqrt();
            let bound = (iterations as f64) * f64::from(tau) / n as f64;
            assert!(
                off > 0.0 && off <= bound + 1e-5,
                "moved {off}, bound {bound}"
            );
            assert!(!out.verdicts[n - 1].kept);
            assert!(
                out.verdicts[..n - 1]
                    .iter()
                    .all(|v| v.kept && v.score == 1.0)
            );
        }
    }

    #[test]
    fn honest_contributors_clipped_by_a_small_tau_keep_their_credit() {
        let centre = random_vec(14, 400, 1.0);
        let cs = honest_and_attackers(&centre, 5, 0.2, 2);
        let out = clip(0.01, 3, 2, &cs);
        assert!(
            out.reason.contains("7 of 7 clipped in the last"),
            "{}",
            out.reason
        );
        for v in &out.verdicts {
            assert_eq!(v.kept, v.node_id.starts_with("honest"), "{}", v.node_id);
            assert!(v.score < 1.0);
        }
        // With a τ that covers the honest spread they count in full, and the attackers stay bounded.
        let out = clip(5.0, 3, 2, &cs);
        for v in &out.verdicts {
            assert_eq!(v.kept, v.node_id.starts_with("honest"), "{}", v.node_id);
            assert_eq!(
                v.score == 1.0,
                v.node_id.starts_with("honest"),
                "{}",
                v.node_id
            );
        }
    }

    #[test]
    fn identical_inputs_and_permutations() {
        assert_identical_inputs_return_the_input(Rule::CenteredClip, 1, 4, 0.0);
        let cs = honest_and_attackers(&random_vec(5, 2 * blocks::BLOCK + 3, 1.0), 4, 0.3, 1);
        assert_permutation_invariant(Rule::CenteredClip, 1, &cs, 1e-5);
    }
}
