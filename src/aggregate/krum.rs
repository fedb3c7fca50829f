//! Krum and Multi-Krum (Blanchard et al. 2017; El Mhamdi et al. 2018). The Krum score of a
//! contribution is the sum of its squared L2 distances to its n − f − 2 nearest other
//! contributions; Krum returns the contribution with the lowest score, Multi-Krum the mean of the m
//! lowest-scored ones (m = n − f by default, never more). Both need n ≥ 2f+3 (Blanchard et al.'s
//! 2f + 2 < n): then the n − f − 2 nearest of an honest contribution can be all honest, so its
//! score is bounded by the honest spread, while an attacker far from the honest ones has at least
//! one honest contribution among its n − f − 2 ≥ f + 1 nearest and scores higher.
//!
//! Verdict: kept unless an outlier by Krum score ([`super::kept_nearest`]: among the f worst,
//! more than twice the median score and above the floor), so honest contributors that were
//! merely not selected keep their reward and their reputation; score: the Krum score, lower is
//! better. Ties in score are broken by node id, so the selection does not depend on the input
//! order.

use super::blocks;
use super::{Contribution, Outcome, kept_nearest, outlier_floor, verdicts};

/// Multi-Krum with `m` (1 ≤ m ≤ n − f) selected; Krum is m = 1. Needs n ≥ 2f + 3.
pub(super) fn multi_krum(contributions: &[Contribution], d: usize, f: usize, m: usize) -> Outcome {
    let n = contributions.len();
    debug_assert!(n >= 2 * f + 3 && (1..=n - f).contains(&m));
    let neighbours = n - f - 2;
    let pairwise = blocks::pairwise_sq_distances(contributions, d);
    let (distances, sq_norms, inputs_finite) =
        (&pairwise.sq_distances, &pairwise.sq_norms, pairwise.finite);
    let mut row = Vec::with_capacity(n);
    let scores: Vec<f64> = (0..n)
        .map(|i| {
            row.clear();
            row.extend((0..n).filter(|&j| j != i).map(|j| distances[i * n + j]));
            row.sort_unstable_by(f64::total_cmp);
            row[..neighbours].iter().sum()
        })
        .collect();
    let mut ranking: Vec<usize> = (0..n).collect();
    ranking.sort_by(|&a, &b| {
        scores[a]
            .total_cmp(&scores[b])
            .then_with(|| contributions[a].node_id.cmp(&contributions[b].node_id))
            .then(a.cmp(&b))
    });
    let selected = &ranking[..m];

    let (delta, norm) = if m == 1 {
        // The norm from the Gram matrix's diagonal, without reading the selected delta again.
        let chosen = selected[0];
        (contributions[chosen].delta.clone(), sq_norms[chosen].sqrt())
    } else {
        let chosen: Vec<(usize, f64)> = selected.iter().map(|&i| (i, 1.0)).collect();
        blocks::weighted_sum(contributions, d, &chosen, |sum| (sum / m as f64) as f32)
    };
    let note = if m == 1 {
        format!(
            "selected {} (Krum score over the {neighbours} nearest{})",
            contributions[selected[0]].node_id,
            pairwise.source_note()
        )
    } else {
        format!(
            "averaged {m} of {n} by Krum score over the {neighbours} nearest{}",
            pairwise.source_note()
        )
    };
    // A score sums `neighbours` squared distances: the floor in the same unit.
    let floor = neighbours as f64 * outlier_floor(norm).powi(2);
    Outcome {
        delta,
        inputs_finite,
        verdicts: verdicts(
            contributions,
            kept_nearest(&scores, f, floor),
            scores.iter().copied(),
        ),
        note,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::*;

    fn points() -> Vec<Contribution> {
        named(&[&[0.0], &[1.0], &[2.0], &[10.0], &[11.0]])
    }

    #[test]
    fn hand_computed_krum() {
        // f = 1, n = 5: scores over the 2 nearest: 0 → 1+4, 1 → 1+1, 2 → 1+4, 10 → 1+64, 11 → 1+81.
        let out = run(Rule::Krum, 1, &points());
        assert_eq!(out.delta, [1.0]);
        let scores: Vec<_> = out.verdicts.iter().map(|v| v.score).collect();
        assert_eq!(scores, [5.0, 2.0, 5.0, 65.0, 82.0]);
        let kept: Vec<_> = out.verdicts.iter().map(|v| v.kept).collect();
        // Only the worst (11) is an outlier; the others were just not selected.
        assert_eq!(kept, [true, true, true, true, false]);
        assert_eq!(
            out.reason,
            "krum: n = 5 meets n ≥ 2f+3 = 5; selected n1 (Krum score over the 2 nearest)"
        );
    }

    #[test]
    fn hand_computed_multi_krum() {
        let with_m = |m: Option<usize>| {
            let cfg = AggregationConfig {
                multi_krum_m: m,
                ..config(Rule::MultiKrum, 1)
            };
            aggregate(&cfg, 0, &points()).unwrap()
        };
        // m = n − f = 4: 1, 0, 2, 10.
        let out = with_m(None);
        assert_eq!(out.delta, [3.25]);
        let kept: Vec<_> = out.verdicts.iter().map(|v| v.kept).collect();
        assert_eq!(kept, [true, true, true, true, false]);
        assert!(
            out.reason
                .ends_with("averaged 4 of 5 by Krum score over the 2 nearest")
        );
        assert_eq!(with_m(Some(3)).delta, [1.0]);
        // m above n − f is capped at n − f.
        assert_eq!(with_m(Some(10)), out);
    }

    #[test]
    fn far_attackers_are_never_selected() {
        let centre = random_vec(11, 2 * blocks::BLOCK + 1, 1.0);
        let cs = honest_and_attackers(&centre, 5, 0.1, 2);
        let krum = run(Rule::Krum, 2, &cs);
        let chosen = cs.iter().position(|c| c.delta == krum.delta).unwrap();
        assert!(chosen < 5);
        for v in &krum.verdicts {
            assert_eq!(v.kept, v.node_id.starts_with("honest"), "{}", v.node_id);
        }

        let multi = run(Rule::MultiKrum, 2, &cs);
        for v in &multi.verdicts {
            assert_eq!(v.kept, v.node_id.starts_with("honest"), "{}", v.node_id);
        }
        let honest_mean: Vec<f32> = (0..centre.len())
            .map(|j| (cs[..5].iter().map(|c| f64::from(c.delta[j])).sum::<f64>() / 5.0) as f32)
            .collect();
        assert!(max_abs_diff(&multi.delta, &honest_mean) <= 1e-6);
    }

    #[test]
    fn identical_inputs_and_permutations() {
        assert_identical_inputs_return_the_input(Rule::Krum, 1, 5, 0.0);
        assert_identical_inputs_return_the_input(Rule::MultiKrum, 1, 6, 0.0);
        let cs = honest_and_attackers(&random_vec(5, 2 * blocks::BLOCK + 3, 1.0), 5, 0.3, 1);
        assert_permutation_invariant(Rule::Krum, 1, &cs, 0.0);
        assert_permutation_invariant(Rule::MultiKrum, 1, &cs, 0.0);
    }
}
