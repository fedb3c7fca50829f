//! Pre-aggregation: a step between the contributions and the robust rule that makes Krum, the
//! median and the others hold against attackers that hide inside the honest spread (ALIE, IPM)
//! on heterogeneous data, where the rules alone do not.
//!
//! - **Nearest-neighbour mixing** (NNM; Allouah et al. 2023, "Fixing by Mixing"): each input is
//!   replaced by the mean of its n − f nearest inputs (itself included, L2; ties broken by input
//!   index). An honest input's neighbourhood is mostly honest, so the mixed honest inputs lie close
//!   together and the rule's f tolerance covers what the attackers still reach. The rule keeps f
//!   and n. Needs whole-vector distances: it cannot run on a slice of the coordinates.
//! - **Bucketing** (Karimireddy, He, Jaggi 2022): the inputs in a seeded random order, cut into
//!   ⌈n/s⌉ buckets of at most s (`bucket_size`), each averaged; the rule runs on the bucket means,
//!   of which up to f may hold an attacker. The order is a function of the round and the
//!   contributors' node ids ([`bucket_order`]), never of the deltas (an attacker could grind
//!   those), so every node that aggregates the same contributions in the same round buckets them
//!   alike, and the buckets change from round to round. Once the order is fixed it works
//!   coordinate by coordinate, so a slice aggregator of a sharded round runs it as it is.
//!
//! Both make new vectors (n, or ⌈n/s⌉, of the delta's length) in one read of the inputs
//! ([`blocks::group_means`]); NNM reads them once more before, for the pairwise distances.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Contribution, Rule, blocks};

/// The `pre` key of `[diloco.aggregation]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreAggregation {
    /// The rule runs on the contributions themselves.
    #[default]
    None,
    /// Nearest-neighbour mixing: each input becomes the mean of its n − f nearest.
    Nnm,
    /// Bucketing: the rule runs on the means of ⌈n/s⌉ shuffled buckets of at most s inputs.
    Bucketing,
}

impl PreAggregation {
    pub const ALL: [PreAggregation; 3] = [
        PreAggregation::None,
        PreAggregation::Nnm,
        PreAggregation::Bucketing,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PreAggregation::None => "none",
            PreAggregation::Nnm => "nnm",
            PreAggregation::Bucketing => "bucketing",
        }
    }

    /// Whether it gives the same result on a slice of the coordinates as on the whole vector
    /// (so a sharded round's slice aggregators can run it): NNM's distances are whole-vector.
    pub fn runs_per_slice(self) -> bool {
        !matches!(self, PreAggregation::Nnm)
    }
}

/// What pre-aggregation made of the contributions: the rule's inputs (None: the contributions
/// themselves), whether every input value was finite (as its pass found; true when it read
/// nothing), and what it did, for the reason ("" for nothing to say).
pub(super) struct Prepared {
    pub inputs: Option<Vec<Contribution>>,
    pub finite: bool,
    pub note: String,
}

impl Prepared {
    fn unmixed(note: String) -> Self {
        Self {
            inputs: None,
            finite: true,
            note,
        }
    }
}

/// Runs `pre` on `contributions` (d values each) before `rule`, which tolerates `f` of them:
/// nothing before the mean (it is not robust to begin with); NNM with n − f neighbours; bucketing
/// with the largest bucket size up to `bucket_size` that leaves `rule` enough inputs for f
/// (⌈n/s⌉ ≥ its requirement; 1, i.e. no buckets, when none does).
pub(super) fn prepare(
    pre: PreAggregation,
    bucket_size: usize,
    round: u64,
    contributions: &[Contribution],
    d: usize,
    f: usize,
    rule: Rule,
) -> Prepared {
    let n = contributions.len();
    match pre {
        PreAggregation::None => Prepared::unmixed(String::new()),
        _ if rule == Rule::Mean => {
            Prepared::unmixed(format!("{}: not run before the mean", pre.name()))
        }
        PreAggregation::Nnm => {
            let (mixed, finite) = nearest_neighbour_mixing(contributions, d, f);
            Prepared {
                inputs: Some(mixed),
                finite,
                note: format!(
                    "nnm: each of {n} inputs mixed with its {} nearest (itself included)",
                    n - f
                ),
            }
        }
        PreAggregation::Bucketing => {
            let need = rule.min_contributors(f);
            let size = fitting_bucket_size(n, bucket_size, need);
            let too_few = |s: usize| {
                format!(
                    "buckets of {s} would leave {}, {} needs {}",
                    n.div_ceil(s),
                    rule.name(),
                    rule.needs(f)
                )
            };
            if size <= 1 {
                let why = if bucket_size <= 1 {
                    "bucket_size 1".to_string()
                } else {
                    too_few(bucket_size)
                };
                return Prepared::unmixed(format!("bucketing: {why}; not bucketed"));
            }
            let (buckets, finite) = bucketing(contributions, d, round, size);
            let mut note = format!(
                "bucketing: {n} inputs in {} buckets of ≤ {size} (order of round {round})",
                buckets.len()
            );
            if size < bucket_size {
                note.push_str(&format!(" ({})", too_few(bucket_size)));
            }
            Prepared {
                inputs: Some(buckets),
                finite,
                note,
            }
        }
    }
}

/// The largest bucket size s ≤ `bucket_size` with ⌈n/s⌉ ≥ `need` (1 when none above 1 does).
pub(super) fn fitting_bucket_size(n: usize, bucket_size: usize, need: usize) -> usize {
    (2..=bucket_size.min(n))
        .rev()
        .find(|&s| n.div_ceil(s) >= need)
        .unwrap_or(1)
}

/// Nearest-neighbour mixing: input i becomes the mean of itself and its n − f − 1 nearest other
/// inputs (squared L2 distances from [`blocks::pairwise_sq_distances`]; equal distances: the
/// lower input index first), added in input order. Keeps each input's node_id. Also whether every
/// input value is finite (from the distance pass; the mixed vectors are then left at zero).
pub(super) fn nearest_neighbour_mixing(
    contributions: &[Contribution],
    d: usize,
    f: usize,
) -> (Vec<Contribution>, bool) {
    let blocks::Pairwise {
        sq_distances: distances,
        finite,
        ..
    } = blocks::pairwise_sq_distances(contributions, d);
    let groups = if finite {
        neighbourhoods(&distances, contributions.len(), f)
    } else {
        Vec::new()
    };
    let (mixed, _) = blocks::group_means(contributions, d, &groups, false);
    let named = contributions
        .iter()
        .zip(mixed)
        .map(|(c, delta)| Contribution::new(c.node_id.clone(), delta))
        .collect();
    (named, finite)
}

/// For each of the n inputs, itself and its n − f − 1 nearest others by the row-major n×n
/// `distances` (ties: lower index first), in index order.
fn neighbourhoods(distances: &[f64], n: usize, f: usize) -> Vec<Vec<usize>> {
    let k = n.saturating_sub(f).max(1);
    (0..n)
        .map(|i| {
            let row = &distances[i * n..(i + 1) * n];
            let mut others: Vec<usize> = (0..n).filter(|&j| j != i).collect();
            others.sort_by(|&a, &b| row[a].total_cmp(&row[b]).then(a.cmp(&b)));
            let mut group: Vec<usize> = std::iter::once(i)
                .chain(others.into_iter().take(k - 1))
                .collect();
            group.sort_unstable();
            group
        })
        .collect()
}

/// Bucketing: the contributions in [`bucket_order`] of `round`, cut into buckets of `size`
/// (the last one may be smaller), each bucket's mean (added in that order). A bucket is named by
/// its members' node_ids joined by '+'. Also whether every input value is finite.
pub(super) fn bucketing(
    contributions: &[Contribution],
    d: usize,
    round: u64,
    size: usize,
) -> (Vec<Contribution>, bool) {
    let order = bucket_order(round, contributions);
    let groups: Vec<Vec<usize>> = order.chunks(size.max(1)).map(<[usize]>::to_vec).collect();
    let (means, finite) = blocks::group_means(contributions, d, &groups, true);
    let named = groups
        .iter()
        .zip(means)
        .map(|(group, delta)| {
            Contribution::new(
                group
                    .iter()
                    .map(|&i| contributions[i].node_id.as_str())
                    .collect::<Vec<_>>()
                    .join("+"),
                delta,
            )
        })
        .collect();
    (named, finite)
}

/// The seed of a round's bucket order: SHA-256 of the round and the contributors' node_ids,
/// sorted (so the input order does not matter) and length-prefixed. Nothing in it depends on
/// the deltas: an attacker could otherwise try deltas until its bucket suits it.
pub fn bucket_seed(round: u64, contributions: &[Contribution]) -> [u8; 32] {
    let mut ids: Vec<&str> = contributions.iter().map(|c| c.node_id.as_str()).collect();
    ids.sort_unstable();
    let mut hash = Sha256::new();
    hash.update(b"neuroshard bucketing\0");
    hash.update(round.to_be_bytes());
    for id in ids {
        hash.update((id.len() as u64).to_be_bytes());
        hash.update(id.as_bytes());
    }
    hash.finalize().into()
}

/// The order in which `round`'s contributions fill the buckets: input indices sorted by
/// SHA-256(seed, node_id) ([`bucket_seed`]); equal node_ids by input index. The same on every
/// node for the same contributors and round, whatever order they come in; another round,
/// another order.
pub fn bucket_order(round: u64, contributions: &[Contribution]) -> Vec<usize> {
    let seed = bucket_seed(round, contributions);
    let keys: Vec<[u8; 32]> = contributions
        .iter()
        .map(|c| {
            let mut hash = Sha256::new();
            hash.update(seed);
            hash.update(c.node_id.as_bytes());
            hash.finalize().into()
        })
        .collect();
    let mut order: Vec<usize> = (0..contributions.len()).collect();
    order.sort_by(|&a, &b| keys[a].cmp(&keys[b]).then(a.cmp(&b)));
    order
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::*;
    use super::*;
    use crate::diloco::attack;

    /// `honest` deltas: a common direction of per-coordinate size `signal` plus each node's own
    /// noise of per-coordinate size `spread` (heterogeneous data), named h0, h1, ….
    fn heterogeneous(honest: usize, d: usize, signal: f32, spread: f32) -> Vec<Contribution> {
        let common = random_vec(11, d, signal);
        (0..honest)
            .map(|i| {
                let own = random_vec(200 + i as u64, d, spread);
                let delta = common.iter().zip(own).map(|(c, e)| c + e).collect();
                c(&format!("h{i}"), delta)
            })
            .collect()
    }

    fn mean_and_std(honest: &[Contribution]) -> (Vec<f32>, Vec<f32>) {
        let deltas: Vec<&[f32]> = honest.iter().map(|h| h.delta.as_slice()).collect();
        attack::mean_and_std(&deltas)
    }

    /// ALIE (Baruch et al.): μ − z·σ per coordinate, from the honest deltas (omniscient).
    fn alie(honest: &[Contribution], z: f32) -> Vec<f32> {
        let (mean, std) = mean_and_std(honest);
        attack::alie(&mean, &std, z)
    }

    /// IPM (Xie et al.): −ε·μ.
    fn ipm(honest: &[Contribution], epsilon: f32) -> Vec<f32> {
        attack::ipm(&mean_and_std(honest).0, epsilon)
    }

    fn with_attackers(honest: &[Contribution], attack: &[f32], count: usize) -> Vec<Contribution> {
        let mut cs = honest.to_vec();
        cs.extend((0..count).map(|a| c(&format!("a{a}"), attack.to_vec())));
        cs
    }

    fn distance(a: &[f32], b: &[f32]) -> f64 {
        blocks::sq_dist(a, b).sqrt()
    }

    fn with_pre(rule: Rule, f: usize, pre: PreAggregation) -> AggregationConfig {
        AggregationConfig {
            pre,
            ..config(rule, f)
        }
    }

    /// (honest, attackers): 1 of 5 and 3 of 16, f = the attackers.
    const ROUNDS: [(usize, usize); 2] = [(4, 1), (13, 3)];
    const D: usize = 20_000;

    /// Distances to the honest mean of `rule` alone, after NNM, and after bucketing (in each of
    /// rounds 0..10: the buckets change with the round).
    fn distances(rule: Rule, cs: &[Contribution], f: usize, mean: &[f32]) -> (f64, f64, Vec<f64>) {
        let run = |pre, round| {
            let out = aggregate(&with_pre(rule, f, pre), round, cs).unwrap();
            assert_eq!(out.rule_used, rule, "{}", out.reason);
            distance(&out.delta, mean)
        };
        let bucketed = (0..10).map(|r| run(PreAggregation::Bucketing, r)).collect();
        (
            run(PreAggregation::None, 0),
            run(PreAggregation::Nnm, 0),
            bucketed,
        )
    }

    #[test]
    fn nnm_pulls_krum_and_the_median_back_to_the_honest_mean_under_alie_and_ipm() {
        // 4 honest deltas of 20,000 values, their own noise 5× the shared direction (heterogeneous
        // data), and one attacker: n = 5, f = 1. Measured (distance to the honest mean; one
        // honest delta lies 70.7 from it): ALIE z = 1: krum 70.5 → 25.0, median 40.7 → 20.4;
        // IPM ε = 0.5: krum 66.2 → 24.2, median 25.0 → 21.0.
        let honest = heterogeneous(4, D, 0.2, 1.0);
        let (mean, _) = mean_and_std(&honest);
        for (name, attack) in [("alie", alie(&honest, 1.0)), ("ipm", ipm(&honest, 0.5))] {
            let cs = with_attackers(&honest, &attack, 1);
            for (rule, factor) in [(Rule::Krum, 0.4), (Rule::Median, 0.9)] {
                let (alone, mixed, _) = distances(rule, &cs, 1, &mean);
                assert!(
                    mixed < factor * alone,
                    "{name} {}: {mixed:.2} with nnm, {alone:.2} alone",
                    rule.name()
                );
            }
        }
        // An attacker a few standard deviations out, or IPM against a strong shared direction:
        // every honest input's nearest are the honest ones, so NNM gives each the honest mean,
        // and the rules return it (alone: 18–70 away).
        let strong = heterogeneous(4, D, 1.0, 1.0);
        let (strong_mean, _) = mean_and_std(&strong);
        for (honest, mean, attack) in [
            (&honest, &mean, alie(&honest, 2.0)),
            (&strong, &strong_mean, ipm(&strong, 0.5)),
        ] {
            let cs = with_attackers(honest, &attack, 1);
            for rule in [
                Rule::Krum,
                Rule::Median,
                Rule::TrimmedMean,
                Rule::GeometricMedian,
            ] {
                let (alone, mixed, _) = distances(rule, &cs, 1, mean);
                assert!(
                    alone > 15.0 && mixed < 0.01,
                    "{}: {mixed} vs {alone}",
                    rule.name()
                );
            }
        }
    }

    #[test]
    fn bucketing_pulls_the_median_and_centered_clipping_back_in_a_round_of_sixteen() {
        // 13 honest and 3 attackers, f = 3: 8 buckets of 2 (the median needs 7). Measured:
        // ALIE z = 1: median 35.4 → ≤ 21.3 in every round, centered clipping 30.1 → ≤ 17.8;
        // IPM: median 19.4 → ≤ 14.4, centered clipping 16.7 → ≤ 11.6. (Krum needs 9 > 8
        // inputs: not bucketed. At n = 5 three buckets leave the median of three bucket means,
        // farther than the median alone: measured, not asserted.)
        let honest = heterogeneous(13, D, 0.2, 1.0);
        let (mean, _) = mean_and_std(&honest);
        for (name, attack) in [("alie", alie(&honest, 1.0)), ("ipm", ipm(&honest, 0.5))] {
            let cs = with_attackers(&honest, &attack, 3);
            for rule in [Rule::Median, Rule::CenteredClip] {
                let (alone, _, bucketed) = distances(rule, &cs, 3, &mean);
                let worst = bucketed.iter().copied().fold(0.0, f64::max);
                assert!(
                    worst < 0.8 * alone,
                    "{name} {}: {bucketed:?} bucketed, {alone:.2} alone",
                    rule.name()
                );
            }
        }
    }

    #[test]
    /// The whole table (`cargo test --lib table_of_distances -- --nocapture` prints it, EXPERIMENTS.md
    /// quotes it): after NNM every rule ends within 0.4 of one honest delta's own distance from
    /// the honest mean, for every attack in it; Krum alone ends over twice as far under ALIE z ≥ 1
    /// and IPM.
    fn table_of_distances_to_the_honest_mean() {
        for (honest_n, f) in ROUNDS {
            let honest = heterogeneous(honest_n, D, 0.2, 1.0);
            let (mean, _) = mean_and_std(&honest);
            let one_honest = squared_distance(&honest[0].delta, &mean).sqrt();
            for (name, attack) in [
                ("alie z=0.25", alie(&honest, 0.25)),
                ("alie z=1", alie(&honest, 1.0)),
                ("alie z=2", alie(&honest, 2.0)),
                ("ipm ε=0.5", ipm(&honest, 0.5)),
            ] {
                let cs = with_attackers(&honest, &attack, f);
                for rule in [
                    Rule::TrimmedMean,
                    Rule::Median,
                    Rule::Krum,
                    Rule::GeometricMedian,
                    Rule::CenteredClip,
                ] {
                    let (alone, mixed, bucketed) = distances(rule, &cs, f, &mean);
                    let mean_bucketed = bucketed.iter().sum::<f64>() / bucketed.len() as f64;
                    println!(
                        "{honest_n}+{f} {name:12} {:16} alone {alone:6.2}  nnm {mixed:6.2}  \
                         bucketing {mean_bucketed:6.2} (mean of 10 rounds)",
                        rule.name()
                    );
                    assert!(
                        mixed < 0.4 * one_honest,
                        "{name} {}: nnm {mixed} (one honest delta: {one_honest})",
                        rule.name()
                    );
                    if rule == Rule::Krum && name != "alie z=0.25" {
                        assert!(
                            alone > 2.0 * mixed,
                            "{name} krum: alone {alone}, nnm {mixed}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn verdicts_stay_per_contributor_and_name_a_far_attacker() {
        let honest = heterogeneous(13, 2 * blocks::BLOCK + 7, 0.2, 1.0);
        let far = alie(&honest, 3.0);
        let flipped: Vec<f32> = mean_and_std(&honest).0.iter().map(|m| -10.0 * m).collect();
        let mut mixed = 0;
        for attack in [far, flipped] {
            let cs = with_attackers(&honest, &attack, 3);
            for pre in [PreAggregation::Nnm, PreAggregation::Bucketing] {
                for rule in Rule::ALL.into_iter().filter(|r| *r != Rule::Mean) {
                    let out = aggregate(&with_pre(rule, 3, pre), 5, &cs).unwrap();
                    let ids: Vec<&str> = out.verdicts.iter().map(|v| v.node_id.as_str()).collect();
                    let expected: Vec<&str> = cs.iter().map(|c| c.node_id.as_str()).collect();
                    assert_eq!(ids, expected, "{} {}", pre.name(), rule.name());
                    for v in &out.verdicts {
                        assert_eq!(
                            v.kept,
                            v.node_id.starts_with('h'),
                            "{} {}: {v:?} ({})",
                            pre.name(),
                            rule.name(),
                            out.reason
                        );
                        // Mixed: the score is the contributor's own distance to the aggregate.
                        // (Krum needs 9 inputs, more than 8 buckets: not bucketed, its score.)
                        if out.reason.contains("not bucketed") {
                            continue;
                        }
                        let own = &cs.iter().find(|c| c.node_id == v.node_id).unwrap().delta;
                        let d = distance(own, &out.delta);
                        assert!(
                            (v.score - d).abs() <= 1e-9 * d,
                            "{} {}",
                            pre.name(),
                            rule.name()
                        );
                    }
                    mixed += usize::from(!out.reason.contains("not bucketed"));
                }
            }
        }
        // 2 attacks × (6 rules after NNM + 4 bucketed: not Krum or Multi-Krum).
        assert_eq!(mixed, 20);
    }

    #[test]
    fn nnm_of_identical_inputs_is_the_input() {
        let x = random_vec(7, 3 * blocks::BLOCK + 11, 2.0);
        let cs: Vec<_> = (0..5).map(|i| c(&format!("n{i}"), x.clone())).collect();
        let (mixed, finite) = nearest_neighbour_mixing(&cs, x.len(), 1);
        assert!(finite);
        for m in &mixed {
            assert!(
                m.delta
                    .iter()
                    .zip(&x)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
            );
        }
        for rule in Rule::ALL.into_iter().filter(|r| *r != Rule::Mean) {
            let out = aggregate(&with_pre(rule, 1, PreAggregation::Nnm), 0, &cs).unwrap();
            assert_eq!(out.delta, x, "{}", rule.name());
            assert!(out.verdicts.iter().all(|v| v.kept), "{}", rule.name());
        }
    }

    #[test]
    fn nnm_mixes_each_input_with_its_nearest_and_breaks_ties_by_index() {
        let cs = named(&[&[0.0], &[1.0], &[2.0], &[10.0], &[11.0]]);
        // f = 2: each input with its 2 nearest others.
        let (mixed, _) = nearest_neighbour_mixing(&cs, 1, 2);
        let values: Vec<f32> = mixed.iter().map(|m| m.delta[0]).collect();
        assert_eq!(values, [1.0, 1.0, 1.0, 23.0 / 3.0, 23.0 / 3.0]);
        let ids: Vec<&str> = mixed.iter().map(|m| m.node_id.as_str()).collect();
        assert_eq!(ids, ["n0", "n1", "n2", "n3", "n4"]);
        // n0 is as far from n1 as from n2: the lower index wins.
        let tie = named(&[&[0.0], &[1.0], &[-1.0]]);
        let (mixed, _) = nearest_neighbour_mixing(&tie, 1, 1);
        assert_eq!(mixed[0].delta, [0.5]);
        assert_eq!(
            neighbourhoods(&[0.0, 1.0, 1.0, 1.0, 0.0, 4.0, 1.0, 4.0, 0.0], 3, 1)[0],
            [0, 1]
        );
    }

    #[test]
    fn bucketing_averages_shuffled_buckets_of_at_most_s() {
        let cs = named(&[&[1.0], &[2.0], &[4.0], &[8.0], &[16.0]]);
        let order = bucket_order(9, &cs);
        let (buckets, finite) = bucketing(&cs, 1, 9, 2);
        assert!(finite);
        let sizes: Vec<usize> = buckets
            .iter()
            .map(|b| b.node_id.split('+').count())
            .collect();
        assert_eq!(sizes, [2, 2, 1]);
        for (bucket, members) in buckets.iter().zip(order.chunks(2)) {
            let names: Vec<&str> = members.iter().map(|&i| cs[i].node_id.as_str()).collect();
            assert_eq!(bucket.node_id, names.join("+"));
            let mean = members.iter().map(|&i| cs[i].delta[0]).sum::<f32>() / members.len() as f32;
            assert_eq!(bucket.delta, [mean]);
        }
        let out = aggregate(
            &AggregationConfig {
                pre: PreAggregation::Bucketing,
                ..config(Rule::TrimmedMean, 1)
            },
            9,
            &cs,
        )
        .unwrap();
        assert_eq!(
            out.reason,
            "bucketing: 5 inputs in 3 buckets of ≤ 2 (order of round 9); \
             trimmed_mean: n = 3 meets n ≥ 2f+1 = 3; trimmed 1 per side"
        );
    }

    #[test]
    fn the_bucket_order_is_the_same_for_the_same_round_and_contributors_and_changes_by_round() {
        let cs: Vec<_> = (0..8)
            .map(|i| c(&format!("node{i}"), random_vec(i, 16, 1.0)))
            .collect();
        let ids = |cs: &[Contribution], order: Vec<usize>| -> Vec<String> {
            order.into_iter().map(|i| cs[i].node_id.clone()).collect()
        };
        let base = ids(&cs, bucket_order(4, &cs));
        // Any input order, and any deltas (an attacker cannot grind its bucket by its delta).
        let mut reversed = cs.clone();
        reversed.reverse();
        assert_eq!(ids(&reversed, bucket_order(4, &reversed)), base);
        let mut other_deltas = cs.clone();
        other_deltas[3].delta = vec![1e6; 16];
        assert_eq!(ids(&other_deltas, bucket_order(4, &other_deltas)), base);
        // Another round, or another set of contributors: another order.
        assert_ne!(ids(&cs, bucket_order(5, &cs)), base);
        let fewer = &cs[..7];
        assert_ne!(ids(fewer, bucket_order(4, fewer)), base[..7].to_vec());
        let mut sorted = base.clone();
        sorted.sort();
        assert_ne!(base, sorted, "shuffled, not in id order");
    }

    #[test]
    fn bucketing_with_bucket_size_1_is_no_pre_aggregation_bit_for_bit() {
        let cs = honest_and_attackers(&random_vec(3, 2 * blocks::BLOCK + 5, 1.0), 5, 0.3, 2);
        for rule in Rule::ALL {
            let plain = run(rule, 2, &cs);
            let cfg = AggregationConfig {
                pre: PreAggregation::Bucketing,
                bucket_size: 1,
                ..config(rule, 2)
            };
            let one = aggregate(&cfg, 3, &cs).unwrap();
            let bits = |a: &Aggregate| a.delta.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&one), bits(&plain), "{}", rule.name());
            assert_eq!(one.verdicts, plain.verdicts, "{}", rule.name());
            if rule != Rule::Mean {
                assert_eq!(
                    one.reason,
                    format!("bucketing: bucket_size 1; not bucketed; {}", plain.reason)
                );
            }
        }
    }

    #[test]
    fn buckets_shrink_until_the_rule_has_enough_inputs_for_f() {
        assert_eq!(fitting_bucket_size(5, 2, 3), 2);
        assert_eq!(fitting_bucket_size(8, 2, 5), 1);
        assert_eq!(fitting_bucket_size(9, 3, 5), 2);
        assert_eq!(fitting_bucket_size(16, 4, 7), 2);
        assert_eq!(fitting_bucket_size(3, 1, 3), 1);
        assert_eq!(fitting_bucket_size(4, 100, 1), 4);
        // 2 attackers of 8 (f = 2): 4 buckets of 2 are too few for the trimmed mean (5).
        let cs = honest_and_attackers(&random_vec(1, 64, 1.0), 6, 0.1, 2);
        let cfg = AggregationConfig {
            pre: PreAggregation::Bucketing,
            ..config(Rule::TrimmedMean, 2)
        };
        let out = aggregate(&cfg, 1, &cs).unwrap();
        assert_eq!(
            out.reason,
            "bucketing: buckets of 2 would leave 4, trimmed_mean needs n ≥ 2f+1 = 5; \
             not bucketed; trimmed_mean: n = 8 meets n ≥ 2f+1 = 5; trimmed 2 per side"
        );
        // 2 of 10 with buckets of up to 3: 4 buckets are too few, 5 of 2 do.
        let cs = honest_and_attackers(&random_vec(1, 64, 1.0), 8, 0.1, 2);
        let cfg = AggregationConfig {
            bucket_size: 3,
            ..cfg
        };
        let out = aggregate(&cfg, 1, &cs).unwrap();
        assert_eq!(
            out.reason,
            "bucketing: 10 inputs in 5 buckets of ≤ 2 (order of round 1) \
             (buckets of 3 would leave 4, trimmed_mean needs n ≥ 2f+1 = 5); \
             trimmed_mean: n = 5 meets n ≥ 2f+1 = 5; trimmed 2 per side"
        );
    }

    #[test]
    fn pre_aggregation_reasons_name_what_it_did() {
        let cs = honest_and_attackers(&random_vec(1, 64, 1.0), 4, 0.1, 1);
        let out = aggregate(&with_pre(Rule::TrimmedMean, 1, PreAggregation::Nnm), 0, &cs).unwrap();
        assert_eq!(
            out.reason,
            "nnm: each of 5 inputs mixed with its 4 nearest (itself included); \
             trimmed_mean: n = 5 meets n ≥ 2f+1 = 3; trimmed 1 per side"
        );
        // Not before the mean, also not when the rule falls back to it.
        let out = aggregate(&with_pre(Rule::Krum, 1, PreAggregation::Nnm), 0, &cs[..2]).unwrap();
        assert_eq!(
            out.reason,
            "nnm: not run before the mean; krum needs n ≥ 2f+3 = 5, got 2; fell back to mean"
        );
        assert_eq!(out.verdicts.iter().filter(|v| v.kept).count(), 2);
    }

    #[test]
    fn pre_aggregation_keeps_determinism_on_any_number_of_threads() {
        let d = 3 * blocks::BLOCK * blocks::SPAN_BLOCKS + 123;
        let cs = honest_and_attackers(&random_vec(9, d, 1.0), 7, 0.5, 2);
        let on = |threads: usize, cfg: &AggregationConfig| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| aggregate(cfg, 11, &cs).unwrap())
        };
        for pre in [PreAggregation::Nnm, PreAggregation::Bucketing] {
            for rule in Rule::ALL {
                let cfg = with_pre(rule, 2, pre);
                let (one, three) = (on(1, &cfg), on(3, &cfg));
                let bits = |a: &Aggregate| a.delta.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&one), bits(&three), "{} {}", pre.name(), rule.name());
                assert_eq!(
                    one.verdicts,
                    three.verdicts,
                    "{} {}",
                    pre.name(),
                    rule.name()
                );
            }
        }
    }

    #[test]
    fn only_nnm_cannot_run_on_a_slice() {
        let runs: Vec<bool> = PreAggregation::ALL
            .iter()
            .map(|p| p.runs_per_slice())
            .collect();
        assert_eq!(runs, [true, false, true]);
    }
}
