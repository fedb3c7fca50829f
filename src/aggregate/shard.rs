//! Sharded robust aggregation (BTARD's ButterflyClip, with redundancy): the vector is cut into S
//! slices, one per member of the round; each slice has an aggregator group of r members chosen by
//! a public rule nobody can bias (the round and its θ₀ hash rank the members); contributors send
//! each slice only to its group; each group member aggregates its slice with the configured rule
//! and reports the result with every contributor's squared distance to it; every node takes the S
//! aggregated slices and settles each from its group's reports. Per-node traffic is about r + 1
//! encoded Δ, whatever n is, instead of n − 1.
//!
//! For the coordinate-wise rules (mean, median, trimmed mean) the assembled aggregate is bit for
//! bit the full-mesh one, and so are the verdicts: a contributor's distance to the aggregate is
//! the root of the sum of its per-slice squared distances, judged by the same `kept_nearest`.
//! The other rules run per slice (as BTARD's CenteredClip does), which is not the same function.
//!
//! A group's reports are settled by agreement: reports that are not finite, not the slice's length
//! or longer than the bound are wrong outright; when the rest differ, the slice is recomputed from
//! the inputs each report names, and a report that is not what its inputs give is wrong (its
//! aggregator is excluded and blamed). A lone report (its partners are gone) is taken after the
//! outright checks only: `Settled::confirmed` says so.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use sha2::{Digest, Sha256};

use super::{
    Aggregate, AggregateError, AggregationConfig, Contribution, OUTLIER_FLOOR, Rule, Verdict,
    aggregate, blocks, kept_nearest,
};
use crate::diloco::codec::{CodecConfig, decode, encode};

/// The `[diloco.sharding]` table.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShardOptions {
    /// Aggregators per slice (r ≥ 2: one bad aggregator is outvoted or caught by its partner).
    pub redundancy: usize,
    /// Rounds with fewer contributors than this run full mesh (every node fetches every delta).
    pub min_nodes: usize,
}

impl Default for ShardOptions {
    fn default() -> Self {
        Self {
            redundancy: 2,
            min_nodes: 16,
        }
    }
}

impl ShardOptions {
    pub fn validate(&self) -> Result<(), String> {
        if self.redundancy < 2 {
            return Err(format!(
                "redundancy: {} is below 2 (one aggregator per slice is trusted blindly)",
                self.redundancy
            ));
        }
        if self.min_nodes <= self.redundancy {
            return Err(format!(
                "min_nodes: {} must be above redundancy {}",
                self.min_nodes, self.redundancy
            ));
        }
        Ok(())
    }

    /// Whether a round of `members` runs sharded.
    pub fn sharded(&self, members: usize) -> bool {
        members >= self.min_nodes
    }
}

/// Who aggregates which slice of a round.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardPlan {
    /// The members in rank order: slice s is aggregated by ranks s, s+1, …, s+r−1 (mod n).
    ranked: Vec<String>,
    params: usize,
    redundancy: usize,
    /// Slice boundaries fall on multiples of this (an int8 block: a slice is then cut out of an
    /// encoded Δ byte for byte).
    align: usize,
}

/// A member's place in the round's ranking: SHA-256 of the round, its θ₀ hash and the node_id.
/// Nobody knows θ₀ before the round before it closes, so no key can be made to rank well.
fn rank(round: u64, theta0_hash: &str, node_id: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"neuroshard shard plan\0");
    hash.update(round.to_be_bytes());
    hash.update(theta0_hash.as_bytes());
    hash.update([0]);
    hash.update(node_id.as_bytes());
    hash.finalize().into()
}

impl ShardPlan {
    /// The plan of `round` on θ₀ `theta0_hash` for `members` (any order, no repeats) and a vector
    /// of `params` values: every node that knows the same members computes the same plan.
    pub fn new(
        round: u64,
        theta0_hash: &str,
        members: &[String],
        params: usize,
        redundancy: usize,
    ) -> Self {
        let mut ranked: Vec<([u8; 32], String)> = members
            .iter()
            .map(|id| (rank(round, theta0_hash, id), id.clone()))
            .collect();
        ranked.sort();
        ranked.dedup_by(|a, b| a.1 == b.1);
        Self {
            ranked: ranked.into_iter().map(|(_, id)| id).collect(),
            params,
            redundancy: redundancy.max(1),
            align: 1,
        }
    }

    /// The same plan with slice boundaries on multiples of `align`.
    pub fn aligned(self, align: usize) -> Self {
        Self {
            align: align.max(1),
            ..self
        }
    }

    /// The plan's identity (hex SHA-256 of its members in rank order, the vector length, r and
    /// the alignment): claims name it, so reports of different plans are never compared.
    pub fn id(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(b"neuroshard shard plan id\0");
        for id in &self.ranked {
            hash.update(id.as_bytes());
            hash.update([0]);
        }
        for n in [self.params, self.redundancy, self.align] {
            hash.update((n as u64).to_be_bytes());
        }
        hex::encode(hash.finalize())
    }

    /// The members in rank order.
    pub fn members(&self) -> &[String] {
        &self.ranked
    }

    /// Whether `node_id` aggregates `slice`.
    pub fn aggregates(&self, node_id: &str, slice: usize) -> bool {
        self.group(slice).contains(&node_id)
    }

    /// S: one slice per member.
    pub fn slices(&self) -> usize {
        self.ranked.len()
    }

    /// The coordinates of `slice`: S nearly equal runs.
    pub fn range(&self, slice: usize) -> Range<usize> {
        let s = self.slices().max(1);
        let boundary = |k: usize| {
            if k >= s {
                self.params
            } else {
                (k * self.params / s) / self.align * self.align
            }
        };
        boundary(slice)..boundary(slice + 1)
    }

    /// The members that aggregate `slice` (r of them, fewer when the round has fewer members).
    pub fn group(&self, slice: usize) -> Vec<&str> {
        let n = self.ranked.len();
        (0..self.redundancy.min(n))
            .map(|j| self.ranked[(slice + j) % n].as_str())
            .collect()
    }

    /// The slices `node_id` aggregates: r of them for a member, none otherwise.
    pub fn slices_of(&self, node_id: &str) -> Vec<usize> {
        let n = self.ranked.len();
        let Some(position) = self.ranked.iter().position(|id| id == node_id) else {
            return Vec::new();
        };
        (0..self.redundancy.min(n))
            .map(|j| (position + n - j) % n)
            .collect()
    }
}

/// One aggregator's account of its slice.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceReport {
    pub slice: usize,
    pub aggregator: String,
    /// The aggregated slice.
    pub delta: Vec<f32>,
    /// Each contributor whose slice it aggregated (by node_id) and its squared L2 distance to
    /// `delta`: the inputs it names, and its part of the verdicts.
    pub sq_distances: BTreeMap<String, f64>,
    /// The BLAKE3 of each input's part as the aggregator had it ([`part_hash`]): a checker
    /// blames a report only when it recomputes from these very parts and gets something else.
    pub parts: BTreeMap<String, [u8; 32]>,
    /// The rule that made it: the configured one, or its fallback when the slice had too few
    /// inputs for it.
    pub rule: Rule,
}

/// A part's identity in a report: BLAKE3 of its values as little-endian f32.
pub fn part_hash(values: &[f32]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    for x in values {
        hasher.update(&x.to_le_bytes());
    }
    hasher.finalize().into()
}

impl SliceReport {
    /// The node_ids whose slices this report says it aggregated.
    pub fn inputs(&self) -> Vec<String> {
        self.sq_distances.keys().cloned().collect()
    }

    fn same_result(&self, other: &SliceReport) -> bool {
        self.delta.len() == other.delta.len()
            && self
                .delta
                .iter()
                .zip(&other.delta)
                .all(|(a, b)| a.to_bits() == b.to_bits())
            && self.rule == other.rule
            && self.parts == other.parts
            && self.sq_distances.len() == other.sq_distances.len()
            && self
                .sq_distances
                .iter()
                .zip(&other.sq_distances)
                .all(|((a, x), (b, y))| a == b && x.to_bits() == y.to_bits())
    }
}

/// What an aggregator of `slice` of round `round` reports for the slices `inputs` it received
/// (each one slice long, any order): the configured rule's aggregate of them (after the
/// configured pre-aggregation, bucketing in the round's order) and each one's squared distance.
/// A pre-aggregator that needs whole vectors (NNM) is refused: a slice's result would not be
/// what it means (such rounds run full mesh, `RoundMachine::decide_mode`).
pub fn aggregate_slice(
    config: &AggregationConfig,
    round: u64,
    slice: usize,
    aggregator: &str,
    inputs: &[Contribution],
) -> Result<SliceReport, AggregateError> {
    if !config.pre.runs_per_slice() {
        return Err(AggregateError::InvalidConfig(format!(
            "pre = \"{}\" mixes whole vectors; it cannot run on a slice",
            config.pre.name()
        )));
    }
    let mut sorted = inputs.to_vec();
    sorted.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let Aggregate {
        delta, rule_used, ..
    } = aggregate(config, round, &sorted)?;
    let sq_distances = sorted
        .iter()
        .map(|c| (c.node_id.clone(), blocks::sq_dist(&c.delta, &delta)))
        .collect();
    let parts = sorted
        .iter()
        .map(|c| (c.node_id.clone(), part_hash(&c.delta)))
        .collect();
    Ok(SliceReport {
        slice,
        aggregator: aggregator.to_string(),
        delta,
        sq_distances,
        parts,
        rule: rule_used,
    })
}

/// What a checker of `slice` of round `round` computes from the inputs a report `names`, given
/// the contributors' parts of the slice it could fetch (`parts`): None when a named input is not
/// among them.
pub fn recompute(
    config: &AggregationConfig,
    round: u64,
    slice: usize,
    parts: &[Contribution],
    names: &[String],
) -> Option<SliceReport> {
    let named: Vec<Contribution> = parts
        .iter()
        .filter(|c| names.contains(&c.node_id))
        .cloned()
        .collect();
    if named.len() != names.len() {
        return None;
    }
    aggregate_slice(config, round, slice, "recomputed", &named).ok()
}

/// A slice settled from its group's reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    /// The report taken (None: no usable report; the slice does not move this round).
    pub report: Option<SliceReport>,
    /// More than one report agreed, or a recomputation bore the taken one out.
    pub confirmed: bool,
    /// Aggregators whose report was wrong: excluded and blamed.
    pub wrong: Vec<String>,
    pub reason: String,
}

/// Why a report is wrong before any comparison, if it is.
fn outright_wrong(report: &SliceReport, len: usize, max_norm: f32) -> Option<String> {
    if report.delta.len() != len {
        return Some(format!("{} values, not {len}", report.delta.len()));
    }
    if report.delta.iter().any(|x| !x.is_finite()) {
        return Some("a value is not finite".into());
    }
    if report
        .sq_distances
        .values()
        .any(|x| !x.is_finite() || *x < 0.0)
    {
        return Some("a distance is not a finite non-negative number".into());
    }
    let norm = blocks::norm(&report.delta);
    (norm > f64::from(max_norm)).then(|| format!("its norm {norm:.3e} is above {max_norm:.3e}"))
}

/// Settles a slice of `len` values from its group's `reports`. When they differ, or when the
/// slice is `accused` ([`disputed`]), `recompute` gives the slice's report from the inputs a
/// report names (None: those inputs cannot be had), and a report that is not it is wrong. Of the
/// reports left, the one aggregating the most inputs is taken (ties: the first aggregator by id),
/// so every node that sees the same reports takes the same one.
pub fn settle_slice(
    len: usize,
    max_norm: f32,
    mut reports: Vec<SliceReport>,
    accused: bool,
    mut recompute: impl FnMut(&[String]) -> Option<SliceReport>,
) -> Settled {
    reports.sort_by(|a, b| a.aggregator.cmp(&b.aggregator));
    let mut wrong = Vec::new();
    let mut notes = Vec::new();
    reports.retain(|r| match outright_wrong(r, len, max_norm) {
        Some(problem) => {
            notes.push(format!("{}: {problem}", r.aggregator));
            wrong.push(r.aggregator.clone());
            false
        }
        None => true,
    });
    let agreed = reports.windows(2).all(|w| w[0].same_result(&w[1]));
    let confirmed = if accused || (reports.len() > 1 && !agreed) {
        let mut checked: Vec<(Vec<String>, Option<SliceReport>)> = Vec::new();
        reports.retain(|r| {
            let inputs = r.inputs();
            let truth = match checked.iter().find(|(named, _)| *named == inputs) {
                Some((_, truth)) => truth.clone(),
                None => {
                    let truth = recompute(&inputs);
                    checked.push((inputs, truth.clone()));
                    truth
                }
            };
            let holds = truth.as_ref().is_some_and(|t| t.same_result(r));
            // Blame needs proof: the very parts the report names (by hash), recomputed to
            // something else. A contributor that sent different parts to different nodes, or a
            // part this node could not fetch, leaves the report unchecked, not wrong.
            match truth {
                _ if holds => {}
                Some(t) if t.parts == r.parts => {
                    notes.push(format!(
                        "{}: not what its {} inputs give",
                        r.aggregator,
                        r.sq_distances.len()
                    ));
                    wrong.push(r.aggregator.clone());
                }
                _ => notes.push(format!(
                    "{}: left out unchecked (this node holds other parts than it names, or not all)",
                    r.aggregator
                )),
            }
            holds
        });
        if reports.is_empty() {
            // No report held: the recomputation itself is the slice.
            let fullest = checked
                .into_iter()
                .filter_map(|(_, truth)| truth)
                .max_by_key(|truth| truth.sq_distances.len());
            reports.extend(fullest);
        }
        !reports.is_empty()
    } else {
        reports.len() > 1
    };
    let taken = reports
        .into_iter()
        .fold(None::<SliceReport>, |best, r| match best {
            Some(b) if b.sq_distances.len() >= r.sq_distances.len() => Some(b),
            _ => Some(r),
        });
    let reason = match (&taken, confirmed) {
        (None, _) => "no usable report".to_string(),
        (Some(r), true) => format!("{}'s report, confirmed", r.aggregator),
        (Some(r), false) => format!("{}'s report alone", r.aggregator),
    };
    let reason = if notes.is_empty() {
        reason
    } else {
        format!("{reason}; wrong: {}", notes.join("; "))
    };
    Settled {
        report: taken,
        confirmed,
        wrong,
        reason,
    }
}

/// How many times farther than usual a contributor must find an aggregated slice from its own
/// part of it to accuse the slice: usual is the median over the slices of its distance to the
/// aggregate relative to its own part's length. Honest slices spread far less (a chi-square
/// with a slice's length in degrees of freedom); a slice scaled or flipped by its aggregators
/// lies an order of magnitude out.
pub const SUSPICION_FACTOR: f64 = 4.0;

/// The slices a contributor accuses, given its own Δ and the aggregated slices it holds (None:
/// not had): those whose distance to its own part, relative to that part's length, is more
/// than [`SUSPICION_FACTOR`] times the median of the same ratio over the slices. A group made
/// only of attackers agrees on its lie; the contributors see it.
pub fn accused_slices(plan: &ShardPlan, own: &[f32], aggregated: &[Option<&[f32]>]) -> Vec<usize> {
    let ratios: Vec<(usize, f64)> = aggregated
        .iter()
        .enumerate()
        .filter_map(|(slice, y)| {
            let y = (*y)?;
            let part = own.get(plan.range(slice))?;
            (part.len() == y.len()).then(|| {
                let norm = part.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>();
                (slice, blocks::sq_dist(part, y) / (norm + f64::MIN_POSITIVE))
            })
        })
        .collect();
    if ratios.is_empty() {
        return Vec::new();
    }
    let mut sorted: Vec<f64> = ratios.iter().map(|(_, r)| *r).collect();
    sorted.sort_by(f64::total_cmp);
    let bound = sorted[sorted.len() / 2] * SUSPICION_FACTOR * SUSPICION_FACTOR;
    ratios
        .into_iter()
        .filter(|(_, r)| *r > bound)
        .map(|(slice, _)| slice)
        .collect()
}

/// Whether accusations by contributors of `accusing` weight, of the round's `total`, make a
/// slice recomputed: more than a third, so the attackers a robust round tolerates cannot force
/// recomputations (each costs its backups about one Δ) on their own.
pub fn disputed(accusing: f64, total: f64) -> bool {
    accusing * 3.0 > total
}

/// The round's aggregate from its settled slices (in slice order): the slices side by side
/// (zeros where none was usable), and the verdicts of `contributors` as the full-mesh mean and
/// distance rules give them: with the mean everyone is kept (score 1/n); otherwise kept unless
/// among the f farthest (f = the config's tolerance for n), more than twice the median distance
/// and above the floor (score: the distance; Krum's and the iterative rules' own scores are not
/// kept across slices). A contributor missing from a settled slice gets no verdict: this node
/// cannot judge a delta it did not see whole (its part came late, or its aggregators planned
/// the round on other members); its parts in the other slices count as aggregated.
pub fn assemble(
    config: &AggregationConfig,
    plan: &ShardPlan,
    settled: &[Settled],
    contributors: &[String],
) -> Aggregate {
    let mut delta = vec![0.0f32; plan.params];
    let mut sq_norm = 0.0;
    let mut sq_distance: BTreeMap<&str, f64> =
        contributors.iter().map(|c| (c.as_str(), 0.0)).collect();
    let mut missing_from: BTreeSet<&str> = BTreeSet::new();
    let mut unusable = 0;
    for (slice, s) in settled.iter().enumerate() {
        let Some(report) = &s.report else {
            unusable += 1;
            continue;
        };
        let range = plan.range(slice);
        if report.delta.len() == range.len() {
            delta[range].copy_from_slice(&report.delta);
        }
        sq_norm += report
            .delta
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>();
        for (id, total) in sq_distance.iter_mut() {
            match report.sq_distances.get(*id) {
                Some(d) => *total += d,
                None => {
                    missing_from.insert(id);
                }
            }
        }
    }
    let (ids, distances): (Vec<&str>, Vec<f64>) = sq_distance
        .iter()
        .filter(|(id, _)| !missing_from.contains(*id))
        .map(|(id, d)| (*id, d.sqrt()))
        .unzip();
    let rule = settled
        .iter()
        .find_map(|s| s.report.as_ref().map(|r| r.rule))
        .unwrap_or(config.rule);
    let (kept, scores) = if rule == Rule::Mean {
        let weight = 1.0 / ids.len().max(1) as f64;
        (vec![true; ids.len()], vec![weight; ids.len()])
    } else {
        let f = config.tolerance(ids.len());
        let floor = OUTLIER_FLOOR * sq_norm.sqrt();
        (kept_nearest(&distances, f, floor), distances)
    };
    let verdicts = ids
        .iter()
        .zip(kept)
        .zip(&scores)
        .map(|((id, kept), &score)| Verdict {
            node_id: id.to_string(),
            kept,
            score,
        })
        .collect();
    let mut reason = format!(
        "sharded: {} slices, {} aggregators each; {} per slice",
        settled.len(),
        plan.redundancy,
        rule.name()
    );
    if unusable > 0 {
        reason.push_str(&format!(
            "; {unusable} slices without a usable report stay put"
        ));
    }
    if !missing_from.is_empty() {
        reason.push_str(&format!(
            "; {} contributors missing from some slice left unjudged",
            missing_from.len()
        ));
    }
    Aggregate {
        delta,
        verdicts,
        rule_used: rule,
        reason,
    }
}

/// Every contribution cut to `slice` of `plan`.
pub fn slice_of(
    plan: &ShardPlan,
    slice: usize,
    contributions: &[Contribution],
) -> Vec<Contribution> {
    let range = plan.range(slice);
    contributions
        .iter()
        .map(|c| Contribution::new(c.node_id.clone(), c.delta[range.clone()].to_vec()))
        .collect()
}

/// What a node holds to settle one slice: its group's reports (as served), the aggregators whose
/// report blob did not decode, whether its own part accuses the slice ([`accused_slices`]), and
/// the contributors' parts of the slice it fetched to check the reports (only when they differ,
/// none came, or it accuses the slice).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SliceEvidence {
    pub reports: Vec<SliceReport>,
    pub malformed: Vec<String>,
    pub accused: bool,
    pub parts: Vec<Contribution>,
}

/// A sharded round settled: the aggregate the outer step applies, with the verdicts, and the
/// aggregators whose reports were wrong (their deltas are rejected too: they leave the round).
#[derive(Debug, Clone)]
pub struct SettledRound {
    pub aggregate: Aggregate,
    pub wrong: Vec<String>,
}

/// Settles every slice of `plan` from `evidence` (by slice; a slice without any is left at zero)
/// and assembles the round. Recomputed reports go through the report blob (`as_served` with
/// `codec`), so they compare with what aggregators served bit for bit. A slice nobody reported
/// is computed from the parts in hand.
pub fn settle_round(
    config: &AggregationConfig,
    round: u64,
    codec: &CodecConfig,
    plan: &ShardPlan,
    max_norm: f32,
    mut evidence: BTreeMap<usize, SliceEvidence>,
) -> SettledRound {
    let mut settled = Vec::with_capacity(plan.slices());
    let mut wrong = BTreeSet::new();
    let mut notes = Vec::new();
    for slice in 0..plan.slices() {
        let e = evidence.remove(&slice).unwrap_or_default();
        let recompute = |names: &[String]| {
            recompute(config, round, slice, &e.parts, names).map(|r| as_served(codec, r).1)
        };
        let mut s = if e.reports.is_empty() && !e.parts.is_empty() {
            let names: Vec<String> = e.parts.iter().map(|c| c.node_id.clone()).collect();
            Settled {
                report: recompute(&names),
                confirmed: false,
                wrong: Vec::new(),
                reason: "no report came; computed from the parts".into(),
            }
        } else {
            settle_slice(
                plan.range(slice).len(),
                max_norm,
                e.reports,
                e.accused,
                recompute,
            )
        };
        s.wrong.extend(e.malformed);
        wrong.extend(s.wrong.iter().cloned());
        if !s.wrong.is_empty() || s.report.is_none() {
            notes.push(format!("slice {slice}: {}", s.reason));
        }
        settled.push(s);
    }
    let contributors: std::collections::BTreeSet<String> = settled
        .iter()
        .filter_map(|s| s.report.as_ref())
        .flat_map(|r| r.sq_distances.keys().cloned())
        .collect();
    let contributors: Vec<String> = contributors.into_iter().collect();
    let mut aggregate = assemble(config, plan, &settled, &contributors);
    for v in &mut aggregate.verdicts {
        if wrong.contains(&v.node_id) {
            v.kept = false;
        }
    }
    if !notes.is_empty() {
        aggregate
            .reason
            .push_str(&format!("; {}", notes.join("; ")));
    }
    SettledRound {
        aggregate,
        wrong: wrong.into_iter().collect(),
    }
}

/// Most contributors a report blob may name.
pub const MAX_REPORT_INPUTS: usize = 4096;

/// A report as the blob its aggregator serves: the aggregated slice encoded with `codec` (what
/// every node assembles; a lossy codec quantizes it once, the same way for every aggregator), the
/// rule's name and each input's squared distance. Two honest aggregators of the same inputs
/// serve the same bytes, so agreement is equal blob ids. Layout (little-endian): u32 length of
/// the encoded slice, the encoded slice, u8 length and the rule's name, u32 count, then per
/// input a u16 length, the node_id, its f64 squared distance and its 32-byte part hash.
pub fn encode_report(codec: &CodecConfig, report: &SliceReport) -> Vec<u8> {
    let values = encode(codec, &report.delta);
    let mut out = Vec::with_capacity(values.len() + 64 * report.sq_distances.len() + 32);
    out.extend_from_slice(&(values.len() as u32).to_le_bytes());
    out.extend_from_slice(&values);
    let rule = report.rule.name().as_bytes();
    out.push(rule.len() as u8);
    out.extend_from_slice(rule);
    out.extend_from_slice(&(report.sq_distances.len() as u32).to_le_bytes());
    for (id, d) in &report.sq_distances {
        out.extend_from_slice(&(id.len() as u16).to_le_bytes());
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&d.to_le_bytes());
        out.extend_from_slice(report.parts.get(id).unwrap_or(&[0; 32]));
    }
    out
}

/// Reads a report blob of `slice` (`len` values) served by `aggregator`, checking everything:
/// the encoded slice (`decode`: length, finite, norm ≤ `max_norm`), a known rule, at most
/// [`MAX_REPORT_INPUTS`] distinct inputs in order, nothing left over.
pub fn decode_report(
    bytes: &[u8],
    slice: usize,
    len: usize,
    aggregator: &str,
    max_norm: f32,
) -> Result<SliceReport, String> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let part = bytes
            .get(at..at.checked_add(n).ok_or("length overflows")?)
            .ok_or_else(|| format!("report blob ends at byte {} of {}", bytes.len(), at + n))?;
        at += n;
        Ok(part)
    };
    let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize;
    let values_len = u32_at(take(4)?);
    let delta = decode(take(values_len)?, len, max_norm).map_err(|e| e.to_string())?;
    let rule_len = take(1)?[0] as usize;
    let rule_name = take(rule_len)?;
    let rule = Rule::ALL
        .into_iter()
        .find(|r| r.name().as_bytes() == rule_name)
        .ok_or("unknown rule")?;
    let count = u32_at(take(4)?);
    if count > MAX_REPORT_INPUTS {
        return Err(format!("{count} inputs, limit {MAX_REPORT_INPUTS}"));
    }
    let mut sq_distances = BTreeMap::new();
    let mut parts = BTreeMap::new();
    let mut previous: Option<String> = None;
    for _ in 0..count {
        let id_len = u16::from_le_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
        let id = std::str::from_utf8(take(id_len)?)
            .map_err(|_| "a node_id is not UTF-8")?
            .to_string();
        let d = f64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        let part: [u8; 32] = take(32)?.try_into().expect("32 bytes");
        if previous.as_ref().is_some_and(|p| *p >= id) {
            return Err("inputs are not in strictly increasing order".into());
        }
        previous = Some(id.clone());
        parts.insert(id.clone(), part);
        sq_distances.insert(id, d);
    }
    if at != bytes.len() {
        return Err(format!("{} bytes after the report", bytes.len() - at));
    }
    Ok(SliceReport {
        slice,
        aggregator: aggregator.to_string(),
        delta,
        sq_distances,
        parts,
        rule,
    })
}

/// `report` as every node sees it: through its blob (the slice quantized by `codec`).
pub fn as_served(codec: &CodecConfig, report: SliceReport) -> (Vec<u8>, SliceReport) {
    let bytes = encode_report(codec, &report);
    let served = decode_report(
        &bytes,
        report.slice,
        report.delta.len(),
        &report.aggregator,
        f32::INFINITY,
    )
    .expect("a report we encoded decodes");
    (bytes, served)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::aggregate::aggregate;
    use crate::diloco::codec::Codec;

    /// fp32 deltas (the default is int8).
    fn exact() -> CodecConfig {
        CodecConfig {
            codec: Codec::Fp32,
            ..CodecConfig::default()
        }
    }

    #[test]
    fn a_settled_round_equals_full_mesh_and_a_lying_aggregator_is_caught_and_rejected() {
        let inputs = honest_round(8, 1, 800);
        let ids = members(8);
        let plan = ShardPlan::new(4, "θ₀", &ids, 800, 2).aligned(16);
        let config = AggregationConfig {
            rule: Rule::TrimmedMean,
            ..AggregationConfig::default()
        };
        // fp32: the slices are exact, so sharded equals full mesh bit for bit.
        let codec = exact();
        let liar = plan.group(3)[0].to_string();
        let evidence = |lie: bool| -> BTreeMap<usize, SliceEvidence> {
            (0..plan.slices())
                .map(|slice| {
                    let parts = slice_of(&plan, slice, &inputs);
                    let reports: Vec<SliceReport> = plan
                        .group(slice)
                        .into_iter()
                        .map(|a| {
                            let mut r = aggregate_slice(&config, 0, slice, a, &parts).unwrap();
                            if lie && a == liar {
                                r.delta.iter_mut().for_each(|x| *x *= -10.0);
                            }
                            as_served(&codec, r).1
                        })
                        .collect();
                    let differ = reports.windows(2).any(|w| w[0] != w[1]);
                    let parts = if differ { parts } else { Vec::new() };
                    (
                        slice,
                        SliceEvidence {
                            reports,
                            parts,
                            ..SliceEvidence::default()
                        },
                    )
                })
                .collect()
        };
        let full = aggregate(&config, 0, &inputs).unwrap();
        let honest = settle_round(&config, 0, &codec, &plan, 1e9, evidence(false));
        assert_eq!(honest.aggregate.delta, full.delta);
        assert!(honest.wrong.is_empty());
        let kept = |a: &Aggregate| -> Vec<bool> { a.verdicts.iter().map(|v| v.kept).collect() };
        assert_eq!(kept(&honest.aggregate), kept(&full));
        let lied = settle_round(&config, 0, &codec, &plan, 1e9, evidence(true));
        assert_eq!(lied.wrong, std::slice::from_ref(&liar));
        assert_eq!(
            lied.aggregate.delta, full.delta,
            "the honest partner's report is taken"
        );
        let verdict = lied
            .aggregate
            .verdicts
            .iter()
            .find(|v| v.node_id == liar)
            .unwrap();
        assert!(!verdict.kept, "the liar's delta is rejected");
        // A slice nobody reported is computed from the parts in hand.
        let mut none = evidence(false);
        let parts = slice_of(&plan, 0, &inputs);
        none.insert(
            0,
            SliceEvidence {
                parts,
                ..SliceEvidence::default()
            },
        );
        let computed = settle_round(&config, 0, &codec, &plan, 1e9, none);
        assert_eq!(computed.aggregate.delta, full.delta);
    }

    #[test]
    fn a_contributor_sending_different_parts_cannot_get_an_honest_aggregator_blamed() {
        let inputs = honest_round(5, 0, 100);
        let plan = ShardPlan::new(2, "θ₀", &members(5), 100, 2);
        let config = AggregationConfig::default();
        let parts = slice_of(&plan, 0, &inputs);
        let [a, b] = plan.group(0)[..] else {
            panic!("two aggregators")
        };
        // node0000 sends one part to the first aggregator and another to the second and to
        // the checker.
        let mut equivocated = parts.clone();
        equivocated[0].delta.iter_mut().for_each(|x| *x += 1.0);
        let first = aggregate_slice(&config, 0, 0, a, &parts).unwrap();
        let second = aggregate_slice(&config, 0, 0, b, &equivocated).unwrap();
        let len = plan.range(0).len();
        let settled = settle_slice(len, 1e9, vec![first, second], false, |names| {
            recompute(&config, 0, 0, &equivocated, names)
        });
        assert!(settled.wrong.is_empty(), "{:?}", settled.wrong);
        assert!(settled.reason.contains("unchecked"), "{}", settled.reason);
        assert_eq!(settled.report.unwrap().aggregator, b);
    }

    #[test]
    fn a_report_blob_round_trips_and_garbage_is_refused_with_a_reason() {
        let inputs = honest_round(5, 1, 300);
        let plan = ShardPlan::new(1, "θ₀", &members(5), 300, 2).aligned(64);
        assert!(
            (0..4).all(|s| plan.range(s).end.is_multiple_of(64)),
            "{:?}",
            plan.range(0)
        );
        assert_eq!(plan.range(4).end, 300);
        let report = aggregate_slice(
            &AggregationConfig::default(),
            0,
            2,
            "node0001",
            &slice_of(&plan, 2, &inputs),
        )
        .unwrap();
        for codec in [Codec::Fp32, Codec::Int8] {
            let config = CodecConfig {
                codec,
                ..CodecConfig::default()
            };
            let (bytes, served) = as_served(&config, report.clone());
            assert_eq!(served.sq_distances, report.sq_distances);
            assert_eq!(served.rule, report.rule);
            if codec == Codec::Fp32 {
                assert_eq!(served, report, "fp32 serves the slice exactly");
            }
            let len = report.delta.len();
            assert!(decode_report(&bytes, 2, len + 1, "a", f32::INFINITY).is_err());
            assert!(decode_report(&bytes, 2, len, "a", 1e-9).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(
                decode_report(&longer, 2, len, "a", f32::INFINITY)
                    .unwrap_err()
                    .contains("after the report")
            );
            assert!(decode_report(&bytes[..bytes.len() - 3], 2, len, "a", f32::INFINITY).is_err());
        }
        assert_ne!(
            plan.id(),
            ShardPlan::new(1, "θ₀", &members(6), 300, 2)
                .aligned(64)
                .id()
        );
    }

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node{i:04}")).collect()
    }

    #[test]
    fn every_member_aggregates_r_slices_and_every_slice_has_r_distinct_aggregators() {
        let ids = members(100);
        let plan = ShardPlan::new(7, "θ₀", &ids, 10_007, 2);
        assert_eq!(plan.slices(), 100);
        let covered: usize = (0..100).map(|s| plan.range(s).len()).sum();
        assert_eq!(covered, 10_007);
        assert_eq!(plan.range(99).end, 10_007);
        for s in 0..100 {
            let group = plan.group(s);
            assert_eq!(group.len(), 2);
            assert_ne!(group[0], group[1]);
            for member in group {
                assert!(plan.slices_of(member).contains(&s));
            }
        }
        for id in &ids {
            assert_eq!(plan.slices_of(id).len(), 2, "{id}");
        }
        assert!(plan.slices_of("stranger").is_empty());
        // Any order of the same members gives the same plan; another θ₀ another one.
        let mut shuffled = ids.clone();
        shuffled.reverse();
        assert_eq!(ShardPlan::new(7, "θ₀", &shuffled, 10_007, 2), plan);
        assert_ne!(
            ShardPlan::new(7, "θ₀'", &ids, 10_007, 2).group(0),
            plan.group(0)
        );
    }

    fn honest_round(n: usize, attackers: usize, d: usize) -> Vec<Contribution> {
        let centre = random_vec(1, d, 1.0);
        let mut cs = honest_and_attackers(&centre, n - attackers, 0.3, attackers);
        for (i, c) in cs.iter_mut().enumerate() {
            c.node_id = format!("node{i:04}");
        }
        cs
    }

    /// Every group member honest: each slice's report by its first aggregator.
    fn settle_all(
        config: &AggregationConfig,
        plan: &ShardPlan,
        cs: &[Contribution],
    ) -> Vec<Settled> {
        settle_all_in(config, 0, plan, cs)
    }

    /// [`settle_all`] in round `round`.
    fn settle_all_in(
        config: &AggregationConfig,
        round: u64,
        plan: &ShardPlan,
        cs: &[Contribution],
    ) -> Vec<Settled> {
        (0..plan.slices())
            .map(|s| {
                let inputs = slice_of(plan, s, cs);
                let reports = plan
                    .group(s)
                    .iter()
                    .map(|a| aggregate_slice(config, round, s, a, &inputs).unwrap())
                    .collect();
                settle_slice(plan.range(s).len(), f32::MAX, reports, false, |_| None)
            })
            .collect()
    }

    #[test]
    fn bucketing_runs_per_slice_and_nnm_is_refused_there() {
        // Bucketing's order is the round's and the contributors', the same in every slice: the
        // coordinate-wise rules on bucket means give the full-mesh result bit for bit, and the
        // verdicts judge each contributor by its distance to the assembled aggregate.
        let cs = honest_round(20, 4, 1000);
        let ids: Vec<String> = cs.iter().map(|c| c.node_id.clone()).collect();
        let plan = ShardPlan::new(3, "θ₀", &ids, 1000, 2);
        for rule in [Rule::Mean, Rule::Median, Rule::TrimmedMean] {
            let config = AggregationConfig {
                pre: crate::aggregate::PreAggregation::Bucketing,
                ..config(rule, 4)
            };
            let full = aggregate(&config, 3, &cs).unwrap();
            if rule != Rule::Mean {
                assert!(
                    full.reason
                        .starts_with("bucketing: 20 inputs in 10 buckets")
                );
            }
            let settled = settle_all_in(&config, 3, &plan, &cs);
            let sharded = assemble(&config, &plan, &settled, &ids);
            assert_eq!(sharded.delta, full.delta, "{rule:?}");
            let kept = |a: &Aggregate| a.verdicts.iter().map(|v| v.kept).collect::<Vec<_>>();
            assert_eq!(kept(&sharded), kept(&full), "{rule:?}");
            if rule != Rule::Mean {
                assert_eq!(kept(&full)[16..], [false; 4], "{rule:?}");
                // Another round buckets otherwise.
                let other = settle_all_in(&config, 4, &plan, &cs);
                assert_ne!(assemble(&config, &plan, &other, &ids).delta, full.delta);
            }
        }
        let nnm = AggregationConfig {
            pre: crate::aggregate::PreAggregation::Nnm,
            ..config(Rule::Median, 4)
        };
        let refused = aggregate_slice(&nnm, 3, 0, "a", &slice_of(&plan, 0, &cs)).unwrap_err();
        assert!(refused.to_string().contains("pre = \"nnm\""), "{refused}");
    }

    #[test]
    fn coordinate_wise_rules_give_the_full_mesh_aggregate_and_verdicts_bit_for_bit() {
        let cs = honest_round(20, 4, 1000);
        let ids: Vec<String> = cs.iter().map(|c| c.node_id.clone()).collect();
        let plan = ShardPlan::new(3, "θ₀", &ids, 1000, 2);
        for rule in [Rule::Mean, Rule::Median, Rule::TrimmedMean] {
            let config = config(rule, 4);
            let full = aggregate(&config, 0, &cs).unwrap();
            let settled = settle_all(&config, &plan, &cs);
            assert!(settled.iter().all(|s| s.confirmed && s.wrong.is_empty()));
            let sharded = assemble(&config, &plan, &settled, &ids);
            assert_eq!(sharded.delta, full.delta, "{rule:?}");
            let kept = |a: &Aggregate| a.verdicts.iter().map(|v| v.kept).collect::<Vec<_>>();
            assert_eq!(kept(&sharded), kept(&full), "{rule:?}");
            for (s, f) in sharded.verdicts.iter().zip(&full.verdicts) {
                assert!(
                    (s.score - f.score).abs() <= 1e-9 * f.score.max(1.0),
                    "{rule:?}"
                );
            }
        }
    }

    #[test]
    fn a_wrong_report_is_caught_by_its_partner_and_the_recomputed_slice_taken() {
        let config = config(Rule::TrimmedMean, 1);
        let cs = honest_round(5, 0, 40);
        let honest = aggregate_slice(&config, 0, 0, "a", &cs).unwrap();
        let mut lie = aggregate_slice(&config, 0, 0, "b", &cs).unwrap();
        lie.delta[3] += 0.5;
        let settled = settle_slice(
            40,
            f32::MAX,
            vec![lie.clone(), honest.clone()],
            false,
            |names| recompute(&config, 0, 0, &cs, names),
        );
        assert_eq!(settled.wrong, ["b"]);
        assert!(settled.confirmed);
        assert_eq!(settled.report.unwrap().delta, honest.delta);

        // NaN, a wrong length or a huge norm are wrong without recomputing anything.
        let mut nan = honest.clone();
        nan.aggregator = "c".into();
        nan.delta[0] = f32::NAN;
        let mut huge = honest.clone();
        huge.aggregator = "d".into();
        huge.delta[0] = 1e9;
        let settled = settle_slice(40, 1e3, vec![nan, huge, honest.clone()], false, |_| {
            panic!("nothing to recompute")
        });
        assert_eq!(settled.wrong, ["c", "d"]);
        assert!(!settled.confirmed, "one usable report is not confirmed");
        assert_eq!(settled.report.unwrap().aggregator, "a");
    }

    #[test]
    fn contributors_accuse_a_slice_its_whole_group_flipped_and_recomputing_it_catches_both() {
        let config = config(Rule::TrimmedMean, 2);
        let cs = honest_round(12, 0, 1200);
        let ids: Vec<String> = cs.iter().map(|c| c.node_id.clone()).collect();
        let plan = ShardPlan::new(5, "θ₀", &ids, 1200, 2);
        let mut settled = settle_all(&config, &plan, &cs);
        // Both aggregators of slice 3 report it flipped and scaled, with matching distances.
        let lie = |aggregator: &str| {
            let mut report = settled[3].report.clone().unwrap();
            report.aggregator = aggregator.into();
            report.delta.iter_mut().for_each(|x| *x *= -10.0);
            let inputs = slice_of(&plan, 3, &cs);
            for c in &inputs {
                report
                    .sq_distances
                    .insert(c.node_id.clone(), blocks::sq_dist(&c.delta, &report.delta));
            }
            report
        };
        let group: Vec<String> = plan.group(3).iter().map(|s| s.to_string()).collect();
        let lies = vec![lie(&group[0]), lie(&group[1])];
        let agreed = settle_slice(plan.range(3).len(), f32::MAX, lies.clone(), false, |_| None);
        assert!(
            agreed.confirmed && agreed.wrong.is_empty(),
            "agreement alone is fooled"
        );
        settled[3] = agreed;
        let aggregated: Vec<Option<&[f32]>> = settled
            .iter()
            .map(|s| s.report.as_ref().map(|r| r.delta.as_slice()))
            .collect();
        let accusers = cs
            .iter()
            .filter(|c| accused_slices(&plan, &c.delta, &aggregated) == [3])
            .count();
        assert_eq!(
            accusers, 12,
            "every honest contributor accuses slice 3 and no other"
        );
        assert!(disputed(accusers as f64, 12.0) && !disputed(4.0, 12.0));
        let parts = slice_of(&plan, 3, &cs);
        let recomputed = settle_slice(plan.range(3).len(), f32::MAX, lies, true, |names| {
            recompute(&config, 0, 3, &parts, names)
        });
        assert_eq!(recomputed.wrong, group);
        let honest = aggregate_slice(&config, 0, 3, "recomputed", &parts).unwrap();
        assert_eq!(
            recomputed.report,
            Some(honest),
            "the recomputed slice is taken"
        );
    }

    #[test]
    fn honest_aggregators_with_different_inputs_are_both_right_and_the_fuller_one_is_taken() {
        let config = config(Rule::Mean, 0);
        let cs = honest_round(4, 0, 8);
        let all = aggregate_slice(&config, 0, 0, "b", &cs).unwrap();
        let three = aggregate_slice(&config, 0, 0, "a", &cs[..3]).unwrap();
        let settled = settle_slice(8, f32::MAX, vec![three, all.clone()], false, |names| {
            recompute(&config, 0, 0, &cs, names)
        });
        assert!(settled.wrong.is_empty(), "{settled:?}");
        assert_eq!(settled.report.unwrap(), all);
    }

    #[test]
    fn a_contributor_missing_from_a_slice_is_left_unjudged_and_a_slice_without_reports_stays_put() {
        let config = config(Rule::TrimmedMean, 1);
        let cs = honest_round(6, 0, 60);
        let ids: Vec<String> = cs.iter().map(|c| c.node_id.clone()).collect();
        let plan = ShardPlan::new(1, "θ₀", &ids, 60, 2);
        let mut settled = settle_all(&config, &plan, &cs);
        // Slice 0 lost one contributor's part; slice 1 has no report at all.
        let short: Vec<Contribution> = slice_of(&plan, 0, &cs)[1..].to_vec();
        settled[0] = settle_slice(
            plan.range(0).len(),
            f32::MAX,
            vec![aggregate_slice(&config, 0, 0, "x", &short).unwrap()],
            false,
            |_| None,
        );
        settled[1] = settle_slice(plan.range(1).len(), f32::MAX, Vec::new(), false, |_| None);
        let out = assemble(&config, &plan, &settled, &ids);
        let judged: Vec<&str> = out.verdicts.iter().map(|v| v.node_id.as_str()).collect();
        assert_eq!(judged, ids[1..], "{:?}", out.verdicts);
        assert!(out.verdicts.iter().all(|v| v.kept));
        assert!(
            out.reason
                .contains("1 contributors missing from some slice left unjudged")
        );
        assert!(out.delta[plan.range(1)].iter().all(|&x| x == 0.0));
        assert!(
            out.reason.contains("1 slices without a usable report"),
            "{}",
            out.reason
        );
    }
}
