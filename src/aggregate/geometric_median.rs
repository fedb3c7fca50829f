//! Geometric median (the point minimising Σ‖z − xᵢ‖) by the smoothed Weiszfeld iteration of RFA
//! (Pillutla, Kakade, Harchaoui 2022): z ← Σ βᵢxᵢ / Σ βᵢ with βᵢ = 1 / max(ν, ‖z − xᵢ‖), from the
//! unweighted mean. Its breakdown point is 1/2: needs n ≥ 2f+1.
//!
//! Every iterate is a convex combination z = Σ αᵢxᵢ (Σ αᵢ = 1), and
//! ‖z − xᵢ‖² = Σⱼ αⱼDᵢⱼ − ½ Σⱼₖ αⱼαₖDⱼₖ with D the squared pairwise distances. So one pass over
//! the inputs computes D, the iteration runs on the n weights alone (O(n²) per iteration), and one
//! more pass forms z. It stops when the objective changes by at most [`TOLERANCE`] (relative) or
//! after [`MAX_ITERATIONS`].
//!
//! Verdict: kept unless among the f farthest from z (L2); score: the final normalised Weiszfeld
//! weight αᵢ (the weights sum to 1; an outlier's is small).

use super::blocks;
use super::{Contribution, Outcome, kept_nearest, outlier_floor, verdicts};

/// Upper bound on Weiszfeld iterations (each costs O(n²), not a pass over the deltas).
pub const MAX_ITERATIONS: usize = 1000;
/// Stop when |Δ objective| ≤ TOLERANCE × objective.
pub const TOLERANCE: f64 = 1e-10;
/// ν, relative to the largest pairwise distance: keeps the weights finite when z meets an input.
pub const SMOOTHING: f64 = 1e-9;

/// ‖Σⱼ αⱼxⱼ − xᵢ‖ for every i, from the n×n squared distances `dsq` (requires Σ α = 1).
fn distances_from_combination(dsq: &[f64], alpha: &[f64]) -> Vec<f64> {
    let n = alpha.len();
    let rows: Vec<f64> = dsq
        .chunks_exact(n)
        .map(|row| row.iter().zip(alpha).map(|(d, a)| d * a).sum())
        .collect();
    let half_quadratic = 0.5 * alpha.iter().zip(&rows).map(|(a, r)| a * r).sum::<f64>();
    rows.iter()
        .map(|r| (r - half_quadratic).max(0.0).sqrt())
        .collect()
}

pub(super) fn geometric_median(contributions: &[Contribution], d: usize, f: usize) -> Outcome {
    let n = contributions.len();
    let pairwise = blocks::pairwise_sq_distances(contributions, d);
    let (dsq, inputs_finite) = (&pairwise.sq_distances, pairwise.finite);
    let scale = dsq.iter().copied().fold(0.0, f64::max).sqrt();
    // Nothing to iterate on: identical inputs, or ones `aggregate` refuses anyway.
    if scale == 0.0 || !inputs_finite {
        return Outcome {
            delta: contributions[0].delta.clone(),
            inputs_finite,
            verdicts: verdicts(
                contributions,
                std::iter::repeat(true),
                std::iter::repeat(1.0 / n as f64),
            ),
            note: "all contributions identical".into(),
        };
    }
    let nu = SMOOTHING * scale;
    let mut alpha = vec![1.0 / n as f64; n];
    let mut distances = distances_from_combination(dsq, &alpha);
    let mut objective: f64 = distances.iter().sum();
    let mut iterations = 0;
    let mut converged = false;
    while iterations < MAX_ITERATIONS && !converged {
        iterations += 1;
        let beta: Vec<f64> = distances.iter().map(|&x| 1.0 / x.max(nu)).collect();
        let total: f64 = beta.iter().sum();
        alpha = beta.iter().map(|b| b / total).collect();
        distances = distances_from_combination(dsq, &alpha);
        let next: f64 = distances.iter().sum();
        converged = (objective - next).abs() <= TOLERANCE * next;
        objective = next;
    }

    let weighted: Vec<(usize, f64)> = alpha.iter().copied().enumerate().collect();
    let (delta, norm) = blocks::weighted_sum(contributions, d, &weighted, |z| z as f32);
    let state = if converged { "converged" } else { "stopped" };
    let floor = outlier_floor(norm);
    Outcome {
        delta,
        inputs_finite,
        verdicts: verdicts(contributions, kept_nearest(&distances, f, floor), alpha),
        note: format!(
            "Weiszfeld {state} after {iterations} iterations{}",
            pairwise.source_note()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::*;
    use super::*;

    fn norm(v: &[f32], w: &[f32]) -> f64 {
        blocks::sq_dist(v, w).sqrt()
    }

    #[test]
    fn distances_from_weights_match_direct_ones() {
        let cs: Vec<_> = (0..4).map(|i| c("x", random_vec(i, 50, 1.0))).collect();
        let dsq = blocks::pairwise_sq_distances(&cs, 50).sq_distances;
        let alpha = [0.1, 0.2, 0.3, 0.4];
        let z: Vec<f32> = (0..50)
            .map(|j| {
                cs.iter()
                    .zip(alpha)
                    .map(|(c, a)| a * f64::from(c.delta[j]))
                    .sum::<f64>() as f32
            })
            .collect();
        for (c, got) in cs.iter().zip(distances_from_combination(&dsq, &alpha)) {
            assert!((got - norm(&c.delta, &z)).abs() < 1e-6);
        }
    }

    #[test]
    fn hand_computed_cases() {
        // On a line the geometric median is the median.
        let out = run(Rule::GeometricMedian, 1, &named(&[&[0.0], &[1.0], &[10.0]]));
        assert!((out.delta[0] - 1.0).abs() < 1e-5, "{:?}", out.delta);
        let kept: Vec<_> = out.verdicts.iter().map(|v| v.kept).collect();
        assert_eq!(kept, [true, true, false]);
        let weights: Vec<_> = out.verdicts.iter().map(|v| v.score).collect();
        assert!((weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(weights[1] > weights[0] && weights[0] > weights[2]);
        assert!(out.reason.contains("Weiszfeld converged"), "{}", out.reason);

        // An equilateral triangle's Fermat point is its centroid.
        let h = 3f32.sqrt() / 2.0;
        let out = run(
            Rule::GeometricMedian,
            1,
            &named(&[&[0.0, 0.0], &[1.0, 0.0], &[0.5, h]]),
        );
        assert!(max_abs_diff(&out.delta, &[0.5, h / 3.0]) < 1e-6);
    }

    #[test]
    fn the_result_is_a_stationary_point_of_the_sum_of_distances() {
        let cs: Vec<_> = (0..6)
            .map(|i| c(&format!("n{i}"), random_vec(20 + i, 3, 5.0)))
            .collect();
        let out = run(Rule::GeometricMedian, 1, &cs);
        // Σ (z − xᵢ)/‖z − xᵢ‖ = 0 at the geometric median (z is not one of the inputs here).
        let mut gradient = [0.0f64; 3];
        for c in &cs {
            let r = norm(&out.delta, &c.delta);
            for (g, (z, x)) in gradient.iter_mut().zip(out.delta.iter().zip(&c.delta)) {
                *g += f64::from(z - x) / r;
            }
        }
        assert!(gradient.iter().all(|g| g.abs() < 1e-4), "{gradient:?}");
    }

    #[test]
    fn a_majority_at_one_point_wins() {
        let x = random_vec(3, 100, 1.0);
        let mut cs: Vec<_> = (0..3).map(|i| c(&format!("h{i}"), x.clone())).collect();
        cs.push(c("a0", x.iter().map(|v| -100.0 * v).collect()));
        cs.push(c("a1", random_vec(4, 100, 50.0)));
        let out = run(Rule::GeometricMedian, 2, &cs);
        assert!(max_abs_diff(&out.delta, &x) < 1e-5);
        let kept: Vec<_> = out.verdicts.iter().map(|v| v.kept).collect();
        assert_eq!(kept, [true, true, true, false, false]);
    }

    #[test]
    fn stays_near_the_honest_centre_with_f_attackers() {
        let centre = random_vec(8, 2 * blocks::BLOCK + 7, 1.0);
        let cs = honest_and_attackers(&centre, 5, 0.05, 2);
        let out = run(Rule::GeometricMedian, 2, &cs);
        // The honest deltas lie at about the same distance r from the centre, in nearly
        // orthogonal directions; two attackers pull z only a fraction of r away (≈ 0.44 r here),
        // while the mean lands about 29 × ‖centre‖ away.
        let r = cs[..5]
            .iter()
            .map(|c| norm(&c.delta, &centre))
            .fold(f64::INFINITY, f64::min);
        let off = norm(&out.delta, &centre);
        assert!(off < 0.6 * r, "off {off}, honest radius {r}");
        for v in &out.verdicts {
            assert_eq!(v.kept, v.node_id.starts_with("honest"), "{}", v.node_id);
        }
        let attacker_weight = out.verdicts[5].score.max(out.verdicts[6].score);
        assert!(out.verdicts[..5].iter().all(|v| v.score > attacker_weight));
    }

    #[test]
    fn identical_inputs_and_permutations() {
        assert_identical_inputs_return_the_input(Rule::GeometricMedian, 1, 4, 0.0);
        let cs = honest_and_attackers(&random_vec(5, 2 * blocks::BLOCK + 3, 1.0), 4, 0.3, 1);
        assert_permutation_invariant(Rule::GeometricMedian, 1, &cs, 1e-5);
    }
}
