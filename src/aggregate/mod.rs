//! Robust aggregation of pseudo-gradients: each rule is a pure function from the contributions of
//! one round to the aggregate and a verdict per contributor (kept or rejected) for the ledger.
//!
//! Rules are stateless, one file per family. Each rule guarantees robustness to `f` Byzantine
//! contributors, and `f` follows n ([`AggregationConfig::tolerance`]: ⌊β·n⌋ with β =
//! `byzantine_fraction`, never below `byzantine`), only from some number of contributors
//! on ([`Rule::min_contributors`]); below it [`aggregate`] runs the configured fallback, then the
//! mean, and says so in [`Aggregate::reason`].
//!
//! | rule | needs | aggregate | kept | score |
//! |---|---|---|---|---|
//! | `mean` | n ≥ 1 | (1/n)·Σ Δᵢ | everyone | weight 1/n |
//! | `median` | n ≥ 2f+1 | coordinate-wise median | not among the f farthest | L2 distance to the aggregate |
//! | `trimmed_mean` | n ≥ 2f+1 | per coordinate, mean without the k lowest and k highest | not among the f farthest | L2 distance to the aggregate |
//! | `krum` | n ≥ 2f+3 | the contribution with the lowest Krum score | not among the f worst-scored | Krum score (lower is better) |
//! | `multi_krum` | n ≥ 2f+3 | mean of the m lowest-scored contributions | not among the f worst-scored | Krum score (lower is better) |
//! | `geometric_median` | n ≥ 2f+1 | smoothed Weiszfeld geometric median | not among the f farthest | final Weiszfeld weight (sums to 1) |
//! | `centered_clip` | n ≥ 2f+1 | centered clipping from the coordinate median | unless clipped and among the f farthest | last clip factor in (0, 1] |
//!
//! "Not among the f farthest" (or f worst-scored): kept unless its L2 distance to the aggregate is above the
//! (n−f)-th smallest such distance, more than `OUTLIER_FACTOR` (2) times the median distance
//! and more than `OUTLIER_FLOOR` (0.75) times the aggregate's length (Krum: in score units):
//! at most f are rejected, ties with a kept one are kept, and honest peers within the usual
//! spread of honest deltas are not (they would otherwise lose their training reward every round),
//! nor one whose optimizer history differs while the honest deltas agree closely.
//! An attacker inside that spread (ALIE-style) is kept: no rule can tell it from an honest peer.
//!
//! A pre-aggregator ([`AggregationConfig::pre`], module [`pre`]) runs before every rule but the
//! mean, and the reason starts with what it did:
//!
//! | pre | the rule runs on | the rule's n, f | sharded rounds |
//! |---|---|---|---|
//! | `none` | the contributions | n, f | yes |
//! | `nnm` | each contribution replaced by the mean of its n − f nearest (L2, itself included) | n, f | no: full mesh (whole-vector distances) |
//! | `bucketing` | the means of ⌈n/s⌉ buckets of ≤ s, in an order drawn from the round and the node ids | ⌈n/s⌉, f (s shrinks until ⌈n/s⌉ meets the rule's need; 1: not bucketed) | yes, per slice |
//!
//! After a pre-aggregator every contributor is judged by its own distance to the aggregate,
//! "not among the f farthest" as above, scored by that distance, whatever the rule (the rule
//! judged mixed inputs; the ledger rewards and blames node ids).
//!
//! No rule weights a contributor by a number it declares (tokens, samples): every contributor
//! counts once, and who may contribute at all is decided before aggregation (admission). The
//! aggregate itself is checked ([`check_aggregate`]) before an outer step uses it. Every rule is deterministic: the same inputs in the same order give the same
//! bits on any number of threads (see `blocks`), so every node that aggregates a round's
//! contributions gets the same θ₀. Reordering the inputs changes the result by rounding at most.

mod blocks;
mod centered_clip;
mod geometric_median;
mod krum;
mod mean;
mod median;
mod network;
pub mod pre;
pub mod shard;
mod trimmed_mean;

use std::sync::Arc;

use blocks::Measure;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use pre::PreAggregation;

use crate::diloco::codec::{self, CodecError, Int8Codes};

/// One worker's pseudo-gradient for a round.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    pub node_id: String,
    pub delta: Vec<f32>,
    /// The int8 message `delta` was decoded from, when it came as one
    /// ([`Contribution::decoded`]): the pairwise distances (Krum, Multi-Krum, geometric median,
    /// nearest-neighbour mixing) are computed from its codes when every contribution has them.
    pub int8: Option<Int8Codes>,
}

impl Contribution {
    /// A contribution of plain values (no codes: its pairwise distances come from the values).
    pub fn new(node_id: impl Into<String>, delta: Vec<f32>) -> Self {
        Self {
            node_id: node_id.into(),
            delta,
            int8: None,
        }
    }

    /// A contribution decoded from a message, checked as [`codec::decode`] checks it; an int8
    /// message's codes are kept (shared with `bytes`).
    pub fn decoded(
        node_id: impl Into<String>,
        bytes: Arc<Vec<u8>>,
        expected_len: usize,
        max_norm: f32,
    ) -> Result<Self, CodecError> {
        let (delta, int8) = codec::decode_keeping_codes(bytes, expected_len, max_norm)?;
        Ok(Self {
            node_id: node_id.into(),
            delta,
            int8,
        })
    }
}

/// What the rule made of one contributor; the ledger credits only `kept` ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub node_id: String,
    pub kept: bool,
    /// Rule-specific score (see the module table): mean: its weight; median and trimmed mean: its
    /// L2 distance to the aggregate; Krum and Multi-Krum: its Krum score (lower is better);
    /// geometric median: its final Weiszfeld weight; centered clipping: its last clip factor.
    /// After a pre-aggregator (NNM, bucketing), whatever the rule: its L2 distance to the aggregate.
    pub score: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    pub delta: Vec<f32>,
    /// One per contribution, in input order.
    pub verdicts: Vec<Verdict>,
    /// The rule that produced `delta`: the configured one, or a fallback when n was too small.
    pub rule_used: Rule,
    /// Human-readable account, e.g. "krum needs n ≥ 2f+3 = 5, got 4; fell back to mean".
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Plain mean; no robustness. Needs n ≥ 1.
    Mean,
    /// Coordinate-wise median. Needs n ≥ 2f+1.
    Median,
    /// Coordinate-wise trimmed mean, k = max(f, ⌊β·n⌋) trimmed at each end. Needs n ≥ 2f+1.
    TrimmedMean,
    /// Krum (Blanchard et al. 2017): the contribution closest to its n−f−2 nearest. Needs n ≥ 2f+3.
    Krum,
    /// Multi-Krum: mean of the m contributions with the best Krum scores. Needs n ≥ 2f+3.
    MultiKrum,
    /// Geometric median by smoothed Weiszfeld (Pillutla et al., RFA). Needs n ≥ 2f+1.
    GeometricMedian,
    /// Centered clipping (Karimireddy et al. 2021) from the coordinate median. Needs n ≥ 2f+1.
    CenteredClip,
}

impl Rule {
    pub const ALL: [Rule; 7] = [
        Rule::Mean,
        Rule::Median,
        Rule::TrimmedMean,
        Rule::Krum,
        Rule::MultiKrum,
        Rule::GeometricMedian,
        Rule::CenteredClip,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rule::Mean => "mean",
            Rule::Median => "median",
            Rule::TrimmedMean => "trimmed_mean",
            Rule::Krum => "krum",
            Rule::MultiKrum => "multi_krum",
            Rule::GeometricMedian => "geometric_median",
            Rule::CenteredClip => "centered_clip",
        }
    }

    /// The fewest contributors for which the rule tolerates `f` Byzantine ones.
    pub fn min_contributors(self, f: usize) -> usize {
        match self {
            Rule::Mean => 1,
            Rule::Krum | Rule::MultiKrum => f.saturating_mul(2).saturating_add(3),
            Rule::Median | Rule::TrimmedMean | Rule::GeometricMedian | Rule::CenteredClip => {
                f.saturating_mul(2).saturating_add(1)
            }
        }
    }

    /// [`Rule::min_contributors`] as a formula in f, for messages.
    pub fn requirement(self) -> &'static str {
        match self {
            Rule::Mean => "1",
            Rule::Krum | Rule::MultiKrum => "2f+3",
            _ => "2f+1",
        }
    }

    /// "n ≥ 2f+3 = 5" (or "n ≥ 1" for the mean), for messages.
    fn needs(self, f: usize) -> String {
        match self {
            Rule::Mean => "n ≥ 1".into(),
            _ => format!("n ≥ {} = {}", self.requirement(), self.min_contributors(f)),
        }
    }
}

/// The `[diloco.aggregation]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregationConfig {
    /// mean | median | trimmed_mean | krum | multi_krum | geometric_median | centered_clip
    pub rule: Rule,
    /// The least f (contributors assumed Byzantine), whatever n is.
    pub byzantine: usize,
    /// β: a round of n contributors assumes f = max(`byzantine`, ⌊β·n⌋) of them Byzantine, so the
    /// tolerance grows with the round instead of staying at a fixed count. In [0, 0.5).
    pub byzantine_fraction: f64,
    /// β for trimmed_mean: ⌊β·n⌋ values trimmed at each end per coordinate, never fewer than f.
    /// In [0, 0.5). None trims exactly f.
    pub trim_fraction: Option<f32>,
    /// m for multi_krum, at least 1; None (and anything above n − f) means n − f.
    pub multi_krum_m: Option<usize>,
    /// Centered clipping radius τ (L2, absolute). Each iteration moves the centre by at most
    /// f·τ/n towards the f attackers; contributors within τ of the centre count in full.
    /// Default 10: the attackers' pull stays within iterations·f·τ/n = 10 at the smallest n (3,
    /// f = 1), small next to the L2 norm of a pseudo-gradient of the 10M-parameter micro model
    /// (estimated, not measured: AdamW at lr 1e-3 over H = 500 steps moves a parameter by ~1e-2,
    /// so ‖Δ‖ ~ 30); a τ below the honest spread only keeps the result nearer the coordinate
    /// median (robust, slower to average out noise). The reason reports how many were clipped and
    /// the median distance to the centre, from which to tune τ.
    pub clip_tau: f32,
    /// Centered clipping iterations, 1..=100.
    pub clip_iterations: usize,
    /// Used when n is below `rule`'s requirement; must not need more contributors than `rule`.
    /// When n is below its requirement too, the mean is used.
    pub fallback: Rule,
    /// none | nnm | bucketing: what runs on the contributions before the rule (module `pre`).
    pub pre: PreAggregation,
    /// s for `pre = "bucketing"`: at most this many contributions per bucket, at least 1 (1: no
    /// buckets). Smaller when ⌈n/s⌉ buckets would be too few for the rule to tolerate f.
    pub bucket_size: usize,
    /// Worker momentum: each node sends its own Nesterov direction Δ + μ·m (m ← μ·m + Δ,
    /// μ = `[diloco] outer_momentum`) instead of Δ, and the outer step applies the rule's result
    /// without momentum of its own: the same update under the mean, less noise in each input the
    /// rule compares (Karimireddy et al. 2021 pair it with `centered_clip`). Every node of a
    /// network must agree on it.
    pub worker_momentum: bool,
}

impl Default for AggregationConfig {
    /// Trimmed mean tolerating one attacker from 3 contributors on and a fifth of the round from
    /// 10 on, the mean below 3.
    fn default() -> Self {
        Self {
            rule: Rule::TrimmedMean,
            byzantine: 1,
            byzantine_fraction: 0.2,
            trim_fraction: None,
            multi_krum_m: None,
            clip_tau: 10.0,
            clip_iterations: 3,
            fallback: Rule::Mean,
            pre: PreAggregation::None,
            bucket_size: 2,
            worker_momentum: false,
        }
    }
}

impl AggregationConfig {
    /// Parameters in range, and a fallback that needs no more contributors than the rule. Messages
    /// start with the key inside `[diloco.aggregation]`.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(beta) = self.trim_fraction
            && !(0.0..0.5).contains(&beta)
        {
            return Err(format!("trim_fraction: {beta} is not in [0, 0.5)"));
        }
        if !(0.0..0.5).contains(&self.byzantine_fraction) {
            return Err(format!(
                "byzantine_fraction: {} is not in [0, 0.5)",
                self.byzantine_fraction
            ));
        }
        if self.multi_krum_m == Some(0) {
            return Err("multi_krum_m: must be at least 1".into());
        }
        if !(self.clip_tau.is_finite() && self.clip_tau > 0.0) {
            return Err(format!(
                "clip_tau: {} is not a positive finite number",
                self.clip_tau
            ));
        }
        if !(1..=100).contains(&self.clip_iterations) {
            return Err(format!(
                "clip_iterations: {} is not in 1..=100",
                self.clip_iterations
            ));
        }
        if self.bucket_size == 0 {
            return Err("bucket_size: must be at least 1".into());
        }
        let f = self.byzantine;
        if self.fallback.min_contributors(f) > self.rule.min_contributors(f) {
            return Err(format!(
                "fallback: {} needs {}, more than rule {} ({})",
                self.fallback.name(),
                self.fallback.needs(f),
                self.rule.name(),
                self.rule.needs(f),
            ));
        }
        Ok(())
    }

    /// f for a round of `n` contributors: max(`byzantine`, ⌊β·n⌋).
    pub fn tolerance(&self, n: usize) -> usize {
        let by_fraction = (self.byzantine_fraction * n as f64).floor() as usize;
        self.byzantine.max(by_fraction)
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
    #[error("invalid aggregation config: {0}")]
    InvalidConfig(String),
}

/// What a rule returns; [`aggregate`] adds the rule and the reason.
struct Outcome {
    delta: Vec<f32>,
    verdicts: Vec<Verdict>,
    /// Every input value was finite, as the rule's first pass over them found (the inputs'
    /// check rides on it, so the honest case reads them once); when not, [`aggregate`] fails.
    inputs_finite: bool,
    /// Rule-specific detail for the reason ("" for none).
    note: String,
}

/// Checks that there are contributions and that all have the same length, which it returns.
fn check_lengths(contributions: &[Contribution]) -> Result<usize, AggregateError> {
    let expected = contributions
        .first()
        .ok_or(AggregateError::Empty)?
        .delta
        .len();
    match contributions.iter().find(|c| c.delta.len() != expected) {
        Some(c) => Err(AggregateError::LengthMismatch {
            node_id: c.node_id.clone(),
            found: c.delta.len(),
            expected,
        }),
        None => Ok(expected),
    }
}

/// The error naming the first contribution that holds a non-finite value (a rule's pass found
/// one; only then is this scan run).
fn non_finite(contributions: &[Contribution]) -> AggregateError {
    let first = contributions
        .iter()
        .find(|c| !c.delta.iter().all(|x| x.is_finite()))
        .map_or_else(String::new, |c| c.node_id.clone());
    AggregateError::NonFinite(first)
}

/// Aggregates round `round`'s contributions with `config.rule`, or with its fallback (then the
/// mean) when there are too few contributors for the rule's guarantee, after `config.pre` (the
/// round seeds bucketing's order). None, unequal lengths or a NaN/infinite value are errors (the
/// last found by the first pass over the inputs), as is an invalid config.
pub fn aggregate(
    config: &AggregationConfig,
    round: u64,
    contributions: &[Contribution],
) -> Result<Aggregate, AggregateError> {
    config.validate().map_err(AggregateError::InvalidConfig)?;
    let d = check_lengths(contributions)?;
    let n = contributions.len();
    let f = config.tolerance(n);

    let mut skipped: Vec<String> = Vec::new();
    let mut tried: Vec<Rule> = Vec::new();
    let mut rule = Rule::Mean;
    for candidate in [config.rule, config.fallback, Rule::Mean] {
        if tried.contains(&candidate) {
            continue;
        }
        tried.push(candidate);
        if n >= candidate.min_contributors(f) {
            rule = candidate;
            break;
        }
        skipped.push(format!(
            "{} needs {}, got {n}",
            candidate.name(),
            candidate.needs(f)
        ));
    }

    let prepared = pre::prepare(
        config.pre,
        config.bucket_size,
        round,
        contributions,
        d,
        f,
        rule,
    );
    if !prepared.finite {
        return Err(non_finite(contributions));
    }
    let inputs = prepared.inputs.as_deref().unwrap_or(contributions);
    let outcome = run_rule(config, rule, inputs, d, f);
    if !outcome.inputs_finite {
        return Err(non_finite(contributions));
    }
    let mut reason = prepared.note;
    if !reason.is_empty() {
        reason.push_str("; ");
    }
    if skipped.is_empty() {
        let m = inputs.len();
        reason.push_str(&format!("{}: n = {m} meets {}", rule.name(), rule.needs(f)));
    } else {
        reason.push_str(&format!(
            "{}; fell back to {}",
            skipped.join("; "),
            rule.name()
        ));
    }
    if !outcome.note.is_empty() {
        reason.push_str("; ");
        reason.push_str(&outcome.note);
    }
    // The rule judged the mixed inputs; the ledger judges contributors: each one by its own
    // distance to the aggregate, as the distance rules do (one more read of the inputs).
    let (delta, verdicts) = if prepared.inputs.is_some() {
        let measured = blocks::pass(contributions, outcome.delta, Measure::DISTANCES, |_, _| {});
        let verdicts = nearest_verdicts(contributions, measured.distances, measured.norm, f);
        (measured.out, verdicts)
    } else {
        (outcome.delta, outcome.verdicts)
    };
    Ok(Aggregate {
        delta,
        verdicts,
        rule_used: rule,
        reason,
    })
}

/// `rule` on `inputs` (d values each) tolerating `f`; the rule's own parameters from `config`,
/// counted on the inputs it gets.
fn run_rule(
    config: &AggregationConfig,
    rule: Rule,
    inputs: &[Contribution],
    d: usize,
    f: usize,
) -> Outcome {
    let n = inputs.len();
    match rule {
        Rule::Mean => mean::mean(inputs, d),
        Rule::Median => median::coordinate_median(inputs, d, f),
        Rule::TrimmedMean => {
            let by_fraction = config
                .trim_fraction
                .map_or(0, |beta| (f64::from(beta) * n as f64).floor() as usize);
            trimmed_mean::trimmed_mean(inputs, d, f, f.max(by_fraction))
        }
        Rule::Krum => krum::multi_krum(inputs, d, f, 1),
        Rule::MultiKrum => {
            let m = config.multi_krum_m.unwrap_or(n - f).min(n - f);
            krum::multi_krum(inputs, d, f, m)
        }
        Rule::GeometricMedian => geometric_median::geometric_median(inputs, d, f),
        Rule::CenteredClip => centered_clip::centered_clip(
            inputs,
            d,
            f,
            f64::from(config.clip_tau),
            config.clip_iterations,
        ),
    }
}

/// Why an aggregate must not be applied to θ₀.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UnsafeAggregate {
    #[error("the aggregate holds a non-finite value at coordinate {0}")]
    NonFinite(usize),
    #[error("the aggregate's L2 norm {norm:.4e} is above the bound {bound:.4e}")]
    TooLarge { norm: f64, bound: f64 },
}

/// The last check before an outer step: every coordinate finite and ‖Δ‖ ≤ `max_norm` (the bound
/// each contribution met). A rule's output is a combination of checked inputs, so this fails only
/// through a bug or a rule pushed outside its guarantee; θ₀ must not move then. Returns ‖Δ‖.
pub fn check_aggregate(delta: &[f32], max_norm: f32) -> Result<f64, UnsafeAggregate> {
    let norm = norm(delta);
    if !norm.is_finite() {
        let i = delta.par_iter().position_first(|x| !x.is_finite());
        return Err(UnsafeAggregate::NonFinite(i.unwrap_or(0)));
    }
    let bound = f64::from(max_norm);
    if norm > bound {
        return Err(UnsafeAggregate::TooLarge { norm, bound });
    }
    Ok(norm)
}

/// ‖v‖, summed in f64 with the same bits on every CPU (as the rules' distances are). Non-finite
/// exactly when a value is: a finite f32 squared is at most 1.2e77, so no sum of them overflows.
/// The one L2 norm of a parameter vector: codecs' bounds, the aggregate's check, round reports.
pub fn norm(v: &[f32]) -> f64 {
    blocks::norm(v)
}

/// ‖a − b‖², the same bits on every CPU (what the rules' distances use).
pub fn squared_distance(a: &[f32], b: &[f32]) -> f64 {
    blocks::sq_dist(a, b)
}

/// How much farther than the median contributor a contribution must lie from the aggregate to be
/// rejected. Honest deltas differ by their data: rejecting the f farthest of them every round
/// would take honest peers' rewards away; attackers the rules guard against sit far outside.
pub const OUTLIER_FACTOR: f64 = 2.0;

/// How far from the aggregate, relative to the aggregate's own length, a contribution may lie
/// and never be an outlier. When honest deltas agree closely (the common direction dominates the
/// noise of their data), the median distance is a small fraction of ‖Δ‖, and an honest node whose
/// inner optimizer state differs (it healed, restarted or joined late, so its AdamW moments come
/// from another path) lies a few median distances out: measured 3–6× in a 4-node nano network
/// at 0.3–0.5 of ‖aggregate‖. It lost its reward for rounds. What this keeps still points where
/// the aggregate does; a zero delta (1.0), a sign flip (2.0) or noise as long as Δ (√2) do not.
pub const OUTLIER_FLOOR: f64 = 0.75;

/// The distance to an aggregate of L2 norm `norm` below which nothing is an outlier
/// ([`OUTLIER_FLOOR`]).
fn outlier_floor(norm: f64) -> f64 {
    OUTLIER_FLOOR * norm
}

/// Kept flags for "not an outlier": rejected only when among the f farthest (distance above the
/// (n−f)-th smallest), more than [`OUTLIER_FACTOR`] times the median distance and above `floor`.
fn kept_nearest(distances: &[f64], f: usize, floor: f64) -> Vec<bool> {
    let n = distances.len();
    if f == 0 || f >= n {
        return vec![f == 0; n];
    }
    let mut sorted = distances.to_vec();
    sorted.sort_by(f64::total_cmp);
    let threshold = sorted[n - f - 1]
        .max(OUTLIER_FACTOR * sorted[(n - 1) / 2])
        .max(floor);
    distances.iter().map(|&x| x <= threshold).collect()
}

/// The outcome of a rule whose verdict is "not among the f farthest from the aggregate", scored
/// by that distance: from the pass that wrote the aggregate and measured the distances.
fn nearest_kept(
    contributions: &[Contribution],
    pass: blocks::Pass,
    f: usize,
    note: String,
) -> Outcome {
    Outcome {
        verdicts: nearest_verdicts(contributions, pass.distances, pass.norm, f),
        delta: pass.out,
        inputs_finite: pass.finite,
        note,
    }
}

/// "Not among the f farthest from the aggregate" ([`kept_nearest`], its floor from the
/// aggregate's length `norm`), scored by that distance: the verdicts of the distance rules, and
/// of every rule after a pre-aggregator (the rule judged mixed inputs; the ledger judges
/// contributors).
fn nearest_verdicts(
    contributions: &[Contribution],
    distances: Vec<f64>,
    norm: f64,
    f: usize,
) -> Vec<Verdict> {
    let kept = kept_nearest(&distances, f, outlier_floor(norm));
    verdicts(contributions, kept, distances)
}

fn verdicts(
    contributions: &[Contribution],
    kept: impl IntoIterator<Item = bool>,
    scores: impl IntoIterator<Item = f64>,
) -> Vec<Verdict> {
    contributions
        .iter()
        .zip(kept)
        .zip(scores)
        .map(|((c, kept), score)| Verdict {
            node_id: c.node_id.clone(),
            kept,
            score,
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Helpers shared by the rules' tests.

    use super::*;

    pub fn c(id: &str, delta: Vec<f32>) -> Contribution {
        Contribution::new(id, delta)
    }

    /// `cs` as nodes hold them after int8 messages of blocks of `block`: values and codes.
    pub fn int8_coded(cs: &[Contribution], block: usize) -> Vec<Contribution> {
        let config = codec::CodecConfig {
            codec: codec::Codec::Int8,
            int8_block: block,
            ..Default::default()
        };
        cs.iter()
            .map(|c| {
                let bytes = Arc::new(codec::encode(&config, &c.delta));
                Contribution::decoded(c.node_id.clone(), bytes, c.delta.len(), f32::INFINITY)
                    .expect("decodes")
            })
            .collect()
    }

    /// Contributions named n0, n1, … from rows of values.
    pub fn named(rows: &[&[f32]]) -> Vec<Contribution> {
        rows.iter()
            .enumerate()
            .map(|(i, r)| c(&format!("n{i}"), r.to_vec()))
            .collect()
    }

    pub fn config(rule: Rule, f: usize) -> AggregationConfig {
        AggregationConfig {
            rule,
            byzantine: f,
            byzantine_fraction: 0.0,
            ..Default::default()
        }
    }

    pub fn run(rule: Rule, f: usize, cs: &[Contribution]) -> Aggregate {
        let out = aggregate(&config(rule, f), 0, cs).unwrap();
        assert_eq!(out.rule_used, rule, "{}", out.reason);
        out
    }

    /// Uniform values in [-scale, scale) from a SplitMix64 stream.
    pub fn random_vec(seed: u64, d: usize, scale: f32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
        (0..d)
            .map(|_| {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    /// `honest` contributions around `centre` (noise of size `noise`), then `attackers` at
    /// −100 × centre (sign-flipped and scaled).
    pub fn honest_and_attackers(
        centre: &[f32],
        honest: usize,
        noise: f32,
        attackers: usize,
    ) -> Vec<Contribution> {
        let mut cs: Vec<_> = (0..honest)
            .map(|i| {
                let delta = centre
                    .iter()
                    .zip(random_vec(i as u64 + 100, centre.len(), noise))
                    .map(|(x, e)| x + e)
                    .collect();
                c(&format!("honest{i}"), delta)
            })
            .collect();
        for a in 0..attackers {
            cs.push(c(
                &format!("attacker{a}"),
                centre.iter().map(|x| -100.0 * x).collect(),
            ));
        }
        cs
    }

    pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Runs `rule` on `cs` and on a reversed and a rotated copy: the aggregates agree within `tol`
    /// and every node keeps its verdict.
    pub fn assert_permutation_invariant(rule: Rule, f: usize, cs: &[Contribution], tol: f32) {
        let base = run(rule, f, cs);
        let mut reversed = cs.to_vec();
        reversed.reverse();
        let mut rotated = cs.to_vec();
        rotated.rotate_left(1);
        for other in [reversed, rotated] {
            let out = run(rule, f, &other);
            assert!(
                max_abs_diff(&base.delta, &out.delta) <= tol,
                "{} differs after permutation",
                rule.name()
            );
            for v in &out.verdicts {
                let b = base.verdicts.iter().find(|b| b.node_id == v.node_id);
                assert_eq!(b.unwrap().kept, v.kept, "{}: {}", rule.name(), v.node_id);
            }
        }
    }

    /// n copies of one vector aggregate to that vector (within `tol`), everyone kept.
    pub fn assert_identical_inputs_return_the_input(rule: Rule, f: usize, n: usize, tol: f32) {
        let x = random_vec(7, 3 * blocks::BLOCK + 11, 2.0);
        let cs: Vec<_> = (0..n).map(|i| c(&format!("n{i}"), x.clone())).collect();
        let out = run(rule, f, &cs);
        assert!(max_abs_diff(&out.delta, &x) <= tol, "{}", rule.name());
        assert!(out.verdicts.iter().all(|v| v.kept), "{}", rule.name());
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn default_config_is_trimmed_mean_with_one_attacker_falling_back_to_the_mean() {
        let d = AggregationConfig::default();
        assert_eq!(d.rule, Rule::TrimmedMean);
        assert_eq!((d.byzantine, d.byzantine_fraction), (1, 0.2));
        assert_eq!(d.fallback, Rule::Mean);
        assert_eq!((d.trim_fraction, d.multi_krum_m), (None, None));
        assert_eq!((d.clip_tau, d.clip_iterations), (10.0, 3));
        assert_eq!((d.pre, d.bucket_size), (PreAggregation::None, 2));
        assert_eq!(d.validate(), Ok(()));
    }

    #[test]
    fn requirements_per_rule() {
        let needs: Vec<_> = Rule::ALL.iter().map(|r| r.min_contributors(2)).collect();
        assert_eq!(needs, [1, 5, 5, 7, 7, 5, 5]);
        assert_eq!(Rule::Krum.min_contributors(usize::MAX), usize::MAX);
        assert_eq!(Rule::Median.min_contributors(0), 1);
    }

    #[test]
    fn config_validation_names_the_bad_key() {
        let bad = |edit: fn(&mut AggregationConfig)| {
            let mut cfg = AggregationConfig::default();
            edit(&mut cfg);
            cfg.validate().unwrap_err()
        };
        assert!(bad(|c| c.trim_fraction = Some(0.5)).starts_with("trim_fraction:"));
        assert!(bad(|c| c.trim_fraction = Some(-0.1)).starts_with("trim_fraction:"));
        assert!(bad(|c| c.trim_fraction = Some(f32::NAN)).starts_with("trim_fraction:"));
        assert!(bad(|c| c.multi_krum_m = Some(0)).starts_with("multi_krum_m:"));
        assert!(bad(|c| c.clip_tau = 0.0).starts_with("clip_tau:"));
        assert!(bad(|c| c.clip_tau = f32::INFINITY).starts_with("clip_tau:"));
        assert!(bad(|c| c.clip_iterations = 0).starts_with("clip_iterations:"));
        assert!(bad(|c| c.clip_iterations = 101).starts_with("clip_iterations:"));
        assert!(bad(|c| c.bucket_size = 0).starts_with("bucket_size:"));
        assert_eq!(
            bad(|c| c.fallback = Rule::Krum),
            "fallback: krum needs n ≥ 2f+3 = 5, more than rule trimmed_mean (n ≥ 2f+1 = 3)"
        );
        let mut ok = AggregationConfig {
            rule: Rule::Krum,
            fallback: Rule::Median,
            trim_fraction: Some(0.0),
            multi_krum_m: Some(1),
            ..Default::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        ok.fallback = Rule::MultiKrum;
        assert_eq!(ok.validate(), Ok(()));
        // An invalid config is refused by aggregate too.
        ok.clip_iterations = 0;
        assert!(matches!(
            aggregate(&ok, 0, &named(&[&[1.0]])),
            Err(AggregateError::InvalidConfig(_))
        ));
    }

    #[test]
    fn config_reads_the_toml_table_with_snake_case_rule_names() {
        use figment::Figment;
        use figment::providers::{Format, Toml};
        let read = |toml: &str| {
            Figment::from(Toml::string(toml))
                .extract::<AggregationConfig>()
                .map_err(|e| e.to_string())
        };
        for rule in Rule::ALL {
            let cfg = read(&format!("rule = \"{}\"", rule.name())).unwrap();
            assert_eq!(cfg.rule, rule);
            assert_eq!(
                serde_json::to_string(&rule).unwrap(),
                format!("\"{}\"", rule.name())
            );
        }
        let cfg = read(
            "rule = \"multi_krum\"\nbyzantine = 2\nbyzantine_fraction = 0.3\nmulti_krum_m = 3\ntrim_fraction = 0.25\n\
             clip_tau = 2.5\nclip_iterations = 1\nfallback = \"median\"\npre = \"bucketing\"\nbucket_size = 3\n\
             worker_momentum = true",
        )
        .unwrap();
        assert_eq!(
            cfg,
            AggregationConfig {
                rule: Rule::MultiKrum,
                byzantine: 2,
                byzantine_fraction: 0.3,
                trim_fraction: Some(0.25),
                multi_krum_m: Some(3),
                clip_tau: 2.5,
                clip_iterations: 1,
                fallback: Rule::Median,
                pre: PreAggregation::Bucketing,
                bucket_size: 3,
                worker_momentum: true,
            }
        );
        assert_eq!(read("").unwrap(), AggregationConfig::default());
        assert!(read("rule = \"average\"").is_err());
        for pre in PreAggregation::ALL {
            assert_eq!(read(&format!("pre = \"{}\"", pre.name())).unwrap().pre, pre);
        }
        let unknown = read("pre = \"knn\"").unwrap_err();
        assert!(
            unknown.contains("knn") && unknown.contains("nnm"),
            "{unknown}"
        );
        assert!(read("byzantin = 1").is_err());
    }

    #[test]
    fn too_few_contributors_fall_back_and_say_why() {
        let cs = named(&[&[1.0], &[2.0], &[3.0], &[10.0]]);
        let cfg = AggregationConfig {
            rule: Rule::Krum,
            ..Default::default()
        };
        let out = aggregate(&cfg, 0, &cs).unwrap();
        assert_eq!(out.rule_used, Rule::Mean);
        assert_eq!(
            out.reason,
            "krum needs n ≥ 2f+3 = 5, got 4; fell back to mean"
        );
        assert_eq!(out.delta, [4.0]);
        assert!(out.verdicts.iter().all(|v| v.kept));

        // rule → fallback when the fallback's requirement is met …
        let cfg = AggregationConfig {
            rule: Rule::Krum,
            fallback: Rule::Median,
            ..Default::default()
        };
        let out = aggregate(&cfg, 0, &cs).unwrap();
        assert_eq!(out.rule_used, Rule::Median);
        assert!(
            out.reason
                .starts_with("krum needs n ≥ 2f+3 = 5, got 4; fell back to median"),
            "{}",
            out.reason
        );
        assert_eq!(out.delta, [2.5]);

        // … and on to the mean when it is not.
        let out = aggregate(&cfg, 0, &cs[..2]).unwrap();
        assert_eq!(out.rule_used, Rule::Mean);
        assert_eq!(
            out.reason,
            "krum needs n ≥ 2f+3 = 5, got 2; median needs n ≥ 2f+1 = 3, got 2; fell back to mean"
        );

        // Enough contributors: the rule runs and the reason says its requirement is met.
        let out = aggregate(&cfg, 0, &named(&[&[1.0], &[2.0], &[3.0], &[4.0], &[50.0]])).unwrap();
        assert_eq!(out.rule_used, Rule::Krum);
        assert!(out.reason.starts_with("krum: n = 5 meets n ≥ 2f+3 = 5"));
    }

    #[test]
    fn every_rule_refuses_bad_inputs() {
        for (rule, pre) in Rule::ALL
            .into_iter()
            .flat_map(|rule| pre::PreAggregation::ALL.map(|pre| (rule, pre)))
        {
            let cfg = AggregationConfig {
                pre,
                ..config(rule, 1)
            };
            let mut cs = named(&[
                &[1.0, 2.0],
                &[1.0, 2.0],
                &[1.0, 2.0],
                &[1.0, 2.0],
                &[0.0, 0.0],
            ]);
            assert_eq!(aggregate(&cfg, 0, &[]), Err(AggregateError::Empty));
            cs[3].delta[1] = f32::NAN;
            assert_eq!(
                aggregate(&cfg, 0, &cs),
                Err(AggregateError::NonFinite("n3".into()))
            );
            cs[3].delta[1] = f32::NEG_INFINITY;
            assert_eq!(
                aggregate(&cfg, 0, &cs),
                Err(AggregateError::NonFinite("n3".into()))
            );
            cs[3].delta = vec![1.0];
            assert!(matches!(
                aggregate(&cfg, 0, &cs),
                Err(AggregateError::LengthMismatch { .. })
            ));
            // The check rides on each rule's own pass: a value in any block is found, also with
            // several offenders (the first in input order is named).
            let d = 2 * blocks::BLOCK + 3;
            let mut cs: Vec<_> = (0..5)
                .map(|i| c(&format!("n{i}"), random_vec(i, d, 1.0)))
                .collect();
            cs[4].delta[d - 1] = f32::INFINITY;
            cs[2].delta[blocks::BLOCK] = f32::NAN;
            assert_eq!(
                aggregate(&cfg, 0, &cs),
                Err(AggregateError::NonFinite("n2".into())),
                "{} {}",
                rule.name(),
                pre.name()
            );
        }
    }

    #[test]
    fn every_rule_gives_one_verdict_per_contributor_in_input_order() {
        let cs = honest_and_attackers(&random_vec(3, 100, 1.0), 5, 0.1, 2);
        for rule in Rule::ALL {
            let out = run(rule, 2, &cs);
            let ids: Vec<_> = out.verdicts.iter().map(|v| v.node_id.as_str()).collect();
            let expected: Vec<_> = cs.iter().map(|c| c.node_id.as_str()).collect();
            assert_eq!(ids, expected, "{}", rule.name());
            assert_eq!(out.delta.len(), 100);
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let d = 3 * blocks::BLOCK * blocks::SPAN_BLOCKS + 123;
        let cs = honest_and_attackers(&random_vec(9, d, 1.0), 5, 0.5, 2);
        // As values, and as int8 messages (the pairwise rules then read the codes).
        let coded = int8_coded(&cs, 256);
        let on = |threads: usize, rule: Rule, cs: &[Contribution]| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| run(rule, 2, cs))
        };
        for rule in Rule::ALL {
            let (one, three) = (on(1, rule, &cs), on(3, rule, &cs));
            let bits = |a: &Aggregate| a.delta.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&one), bits(&three), "{}", rule.name());
            assert_eq!(one.verdicts, three.verdicts, "{}", rule.name());
            let (one, three) = (on(1, rule, &coded), on(3, rule, &coded));
            assert_eq!(bits(&one), bits(&three), "{} on int8", rule.name());
            assert_eq!(one.verdicts, three.verdicts, "{} on int8", rule.name());
        }
    }

    #[test]
    fn int8_messages_aggregate_as_their_decoded_values() {
        let d = 2 * blocks::BLOCK + 321;
        let cs = int8_coded(
            &honest_and_attackers(&random_vec(4, d, 1.0), 7, 0.3, 2),
            100,
        );
        let values: Vec<Contribution> = cs
            .iter()
            .map(|c| Contribution::new(c.node_id.clone(), c.delta.clone()))
            .collect();
        let bits = |a: &Aggregate| a.delta.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for rule in Rule::ALL {
            let (from_codes, from_values) = (run(rule, 2, &cs), run(rule, 2, &values));
            if rule == Rule::GeometricMedian {
                // Its weights come from the Gram matrix, whose last bits differ.
                assert!(max_abs_diff(&from_codes.delta, &from_values.delta) < 1e-5);
            } else {
                // The passes read the decoded values; Krum's selection from the codes is
                // the same away from near-ties.
                assert_eq!(bits(&from_codes), bits(&from_values), "{}", rule.name());
            }
            let kept = |a: &Aggregate| a.verdicts.iter().map(|v| v.kept).collect::<Vec<_>>();
            assert_eq!(kept(&from_codes), kept(&from_values), "{}", rule.name());
            // The reason says where the distances came from.
            let pairwise = matches!(rule, Rule::Krum | Rule::MultiKrum | Rule::GeometricMedian);
            let said = |a: &Aggregate| a.reason.contains("distances from the int8 codes");
            assert_eq!(
                (said(&from_codes), said(&from_values)),
                (pairwise, false),
                "{}",
                from_codes.reason
            );
        }
    }

    #[test]
    fn the_tolerance_grows_with_the_round() {
        let cfg = AggregationConfig::default();
        let f: Vec<_> = [2, 3, 9, 10, 20, 64].map(|n| cfg.tolerance(n)).into();
        assert_eq!(f, [1, 1, 1, 2, 4, 12]);
        // A round of 20 contributors assumes 4 of them Byzantine, not 1.
        let cs = honest_and_attackers(&random_vec(5, 64, 1.0), 16, 0.1, 4);
        let out = aggregate(&cfg, 0, &cs).unwrap();
        assert!(
            out.reason
                .starts_with("trimmed_mean: n = 20 meets n ≥ 2f+1 = 9"),
            "{}",
            out.reason
        );
        let bad = AggregationConfig {
            byzantine_fraction: 0.5,
            ..cfg
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .starts_with("byzantine_fraction:")
        );
    }

    #[test]
    fn an_aggregate_is_applied_only_when_finite_and_bounded() {
        assert_eq!(check_aggregate(&[3.0, 4.0], 5.0), Ok(5.0));
        assert_eq!(
            check_aggregate(&[1.0, f32::NAN], 5.0),
            Err(UnsafeAggregate::NonFinite(1))
        );
        assert!(matches!(
            check_aggregate(&[3.0, 4.0], 4.9),
            Err(UnsafeAggregate::TooLarge { .. })
        ));
    }

    #[test]
    fn kept_nearest_rejects_the_f_farthest_and_keeps_ties() {
        assert_eq!(
            kept_nearest(&[1.0, 9.0, 2.0, 8.0], 2, 0.0),
            [true, false, true, false]
        );
        assert_eq!(kept_nearest(&[0.0, 0.0, 0.0], 1, 0.0), [true, true, true]);
        assert_eq!(kept_nearest(&[3.0, 1.0], 0, 0.0), [true, true]);
    }

    #[test]
    fn honest_spread_is_kept_and_only_far_outliers_are_rejected() {
        // Three honest peers at similar distances: none loses its reward.
        assert_eq!(kept_nearest(&[1.0, 1.3, 1.6], 1, 0.0), [true, true, true]);
        // A sign-flipped (x10) delta lies far outside: rejected.
        assert_eq!(kept_nearest(&[1.0, 1.2, 12.0], 1, 0.0), [true, true, false]);
        // Just at twice the median distance: still kept.
        assert_eq!(kept_nearest(&[1.0, 1.0, 2.0], 1, 0.0), [true, true, true]);
        // Below the floor nothing is an outlier, however tight the others agree.
        assert_eq!(kept_nearest(&[0.1, 0.1, 0.35], 1, 0.8), [true, true, true]);
    }

    /// Deltas sharing one direction `common` (length `scale`), each off it by its own noise of
    /// length `noise`.
    fn around(common: &[f32], scale: f32, noise: &[f32]) -> Vec<Contribution> {
        noise
            .iter()
            .enumerate()
            .map(|(i, &length)| {
                let jitter = random_vec(1000 + i as u64, common.len(), 1.0);
                let jitter_norm = jitter.iter().map(|x| x * x).sum::<f32>().sqrt();
                let delta = common
                    .iter()
                    .zip(&jitter)
                    .map(|(&c, &j)| scale * c + length * j / jitter_norm)
                    .collect();
                test_support::c(&format!("n{i}"), delta)
            })
            .collect()
    }

    #[test]
    fn an_honest_node_with_other_optimizer_history_is_kept_when_honest_deltas_agree_closely() {
        // As measured on a 4-node nano network: three deltas 0.1 off their common direction
        // (‖Δ‖ ≈ 1.1), one that healed 0.35 off it. Every rule keeps all four.
        let d = 20_000;
        let common = random_vec(7, d, 1.0);
        let length = common.iter().map(|x| x * x).sum::<f32>().sqrt();
        let unit: Vec<f32> = common.iter().map(|x| x / length).collect();
        let honest = around(&unit, 1.1, &[0.1, 0.1, 0.1, 0.35, 0.1]);
        let rules = [
            Rule::TrimmedMean,
            Rule::Median,
            Rule::GeometricMedian,
            Rule::Krum,
        ];
        for rule in rules {
            let out = run(rule, 1, &honest);
            assert!(
                out.verdicts.iter().all(|v| v.kept),
                "{rule:?}: {:?}",
                out.verdicts
            );
        }
        // A sign-flipped or a zero delta among them is still rejected.
        for attack in [-1.0f32, 0.0] {
            let mut cs = honest.clone();
            cs[4].delta = cs[0].delta.iter().map(|x| attack * x).collect();
            for rule in rules {
                let out = run(rule, 1, &cs);
                let kept: Vec<bool> = out.verdicts.iter().map(|v| v.kept).collect();
                assert_eq!(
                    kept,
                    [true, true, true, true, false],
                    "{rule:?} against ×{attack}"
                );
            }
        }
    }
}

#[cfg(test)]
mod perf {
    use super::test_support::*;
    use super::*;

    /// `cargo test --release --lib aggregate::perf -- --ignored --nocapture`
    #[test]
    #[ignore = "timing: 16 × 10M f32, run in release"]
    fn timing_of_every_rule_on_ten_million_coordinates() {
        let d = 10_000_000;
        for n in [4usize, 16] {
            let f = (n - 3) / 2;
            let cs = honest_and_attackers(&random_vec(1, d, 1.0), n - f, 0.1, f);
            for rule in Rule::ALL {
                let start = std::time::Instant::now();
                let out = run(rule, f, &cs);
                println!(
                    "n = {n:2}, f = {f}, {:16} {:7.3} s  {}",
                    rule.name(),
                    start.elapsed().as_secs_f64(),
                    out.reason
                );
            }
        }
    }
}
