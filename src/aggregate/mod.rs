//! Robust aggregation of pseudo-gradients: each rule is a pure function from the contributions of
//! one round to the aggregate and a verdict per contributor (kept or rejected) for the ledger.

mod mean;

use serde::{Deserialize, Serialize};

pub use mean::weighted_mean;

/// One worker's pseudo-gradient for a round.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    pub node_id: String,
    pub delta: Vec<f32>,
    /// Tokens the worker processed this round; the mean weights by it.
    pub tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub node_id: String,
    pub kept: bool,
    /// Rule-specific score (for the mean: the contributor's weight).
    pub score: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    pub delta: Vec<f32>,
    pub verdicts: Vec<Verdict>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    Mean,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::Mean => "mean",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AggregateError {
    #[error("no contributions to aggregate")]
    Empty,
    #[error("contribution of {node_id} has {found} values, expected {expected}")]
    LengthMismatch {
        node_id: String,
        found: usize,
        expected: usize,
    },
    #[error("contribution of {0} holds a non-finite value")]
    NonFinite(String),
}

/// Checks that every contribution has the same length and only finite values.
fn validate(contributions: &[Contribution]) -> Result<usize, AggregateError> {
    let expected = contributions
        .first()
        .ok_or(AggregateError::Empty)?
        .delta
        .len();
    for c in contributions {
        if c.delta.len() != expected {
            return Err(AggregateError::LengthMismatch {
                node_id: c.node_id.clone(),
                found: c.delta.len(),
                expected,
            });
        }
        if c.delta.iter().any(|x| !x.is_finite()) {
            return Err(AggregateError::NonFinite(c.node_id.clone()));
        }
    }
    Ok(expected)
}

pub fn aggregate(rule: Rule, contributions: &[Contribution]) -> Result<Aggregate, AggregateError> {
    validate(contributions)?;
    match rule {
        Rule::Mean => Ok(weighted_mean(contributions)),
    }
}
