//! The plain (token-weighted) mean: optimal with honest workers, broken by a single attacker.

use super::{Aggregate, Contribution, Verdict};

/// Σ wᵢ·Δᵢ with wᵢ = tokensᵢ / Σ tokens (equal weights when no tokens are reported); keeps everyone.
pub fn weighted_mean(contributions: &[Contribution]) -> Aggregate {
    let total: u64 = contributions.iter().map(|c| c.tokens).sum();
    let weight = |c: &Contribution| {
        if total == 0 {
            1.0 / contributions.len() as f64
        } else {
            c.tokens as f64 / total as f64
        }
    };
    let mut delta = vec![0.0f32; contributions[0].delta.len()];
    for c in contributions {
        let w = weight(c) as f32;
        delta
            .iter_mut()
            .zip(&c.delta)
            .for_each(|(acc, x)| *acc += w * x);
    }
    let verdicts = contributions
        .iter()
        .map(|c| Verdict {
            node_id: c.node_id.clone(),
            kept: true,
            score: weight(c),
        })
        .collect();
    Aggregate { delta, verdicts }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    fn c(id: &str, delta: Vec<f32>, tokens: u64) -> Contribution {
        Contribution {
            node_id: id.into(),
            delta,
            tokens,
        }
    }

    #[test]
    fn weights_by_tokens_and_keeps_everyone() {
        let out = aggregate(
            Rule::Mean,
            &[c("a", vec![1.0, 0.0], 300), c("b", vec![5.0, 4.0], 100)],
        )
        .unwrap();
        assert_eq!(out.delta, vec![2.0, 1.0]);
        assert!(out.verdicts.iter().all(|v| v.kept));
        assert_eq!(out.verdicts[0].score, 0.75);
    }

    #[test]
    fn a_single_input_is_returned_as_is() {
        let out = aggregate(Rule::Mean, &[c("a", vec![0.25, -3.0], 0)]).unwrap();
        assert_eq!(out.delta, vec![0.25, -3.0]);
    }

    #[test]
    fn refuses_empty_mismatched_and_non_finite_inputs() {
        assert_eq!(aggregate(Rule::Mean, &[]), Err(AggregateError::Empty));
        assert!(matches!(
            aggregate(
                Rule::Mean,
                &[c("a", vec![1.0], 1), c("b", vec![1.0, 2.0], 1)]
            ),
            Err(AggregateError::LengthMismatch { .. })
        ));
        assert_eq!(
            aggregate(Rule::Mean, &[c("a", vec![f32::NAN], 1)]),
            Err(AggregateError::NonFinite("a".into()))
        );
    }
}
