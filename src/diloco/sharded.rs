//! A sharded round as one node sees it (the network side of `aggregate::shard`): which slices it
//! aggregates and whose parts of them it fetches, the claims of every slice's aggregators, the
//! reports it fetches, and when it has what it needs to settle the round. Pure, like the round
//! machine that owns it: inputs carry the clock, outputs are [`Effect`]s.
//!
//! The plan is fixed the first time the round needs it, from the members this node hears on its
//! round and θ₀. Nodes that hear the same members make the same plan; a node whose view differs
//! names another plan id, its claims are not compared with the others', and the slices it misses
//! are computed from the contributors' parts (the cost of a view split is bytes, not agreement).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::machine::Effect;
use crate::aggregate::Contribution;
use crate::aggregate::shard::{
    ShardPlan, SliceEvidence, SliceReport, accused_slices, decode_report,
};
use crate::diloco::codec::decode;
use crate::net::blob::BlobId;
use crate::net::wire::SliceClaim;

/// Slices and their coordinates, in slice order.
pub type SliceRanges = Vec<(usize, std::ops::Range<usize>)>;

/// Where a contributor's encoded Δ of the round is served.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Source {
    peer: PeerId,
    delta: BlobId,
    bytes: u64,
}

/// One aggregator's claim on a slice.
#[derive(Debug, Clone)]
struct Claim {
    /// None for this node's own claims.
    peer: Option<PeerId>,
    result: BlobId,
    bytes: u64,
}

/// A report blob: being fetched, read, or refused (it did not decode).
#[derive(Debug, Clone)]
enum Report {
    Fetching,
    Read(SliceReport),
    Malformed,
    /// The transfer failed: another claimer of the same blob is asked next.
    Failed,
}

#[derive(Debug)]
pub struct ShardRound {
    node_id: String,
    plan: ShardPlan,
    plan_id: String,
    /// The slices this node aggregates.
    mine: Vec<usize>,
    /// This node's own Δ as peers decode it.
    own: Option<Arc<Vec<f32>>>,
    sources: BTreeMap<String, Source>,
    /// Contributors' parts by slice, then node_id.
    parts: BTreeMap<usize, BTreeMap<String, Vec<f32>>>,
    /// (slice, contributor) parts asked for to check or compute a slice, not yet in.
    checking: BTreeSet<(usize, String)>,
    /// Slices whose parts were asked for (once per slice).
    checked: BTreeSet<usize>,
    /// Slices this node's own part accuses (`accused_slices`), once all reports are read; None
    /// before. A group made only of attackers agrees on its lie: this is what catches it.
    accused: Option<BTreeSet<usize>>,
    claims: BTreeMap<usize, BTreeMap<String, Claim>>,
    reports: BTreeMap<(usize, BlobId), Report>,
    /// Whom each report was asked of: a failed fetch is tried once from each claimer.
    asked: BTreeSet<(usize, BlobId, PeerId)>,
    /// This node's report blobs: uploads of them count as sent.
    own_reports: BTreeSet<BlobId>,
    /// This node's reports are out: the round is settling.
    settling_since: Option<Instant>,
    settled: bool,
}

impl ShardRound {
    pub fn new(node_id: String, plan: ShardPlan) -> Self {
        let mine = {
            let mut mine = plan.slices_of(&node_id);
            mine.sort_unstable();
            mine
        };
        Self {
            node_id,
            plan_id: plan.id(),
            plan,
            mine,
            own: None,
            sources: BTreeMap::new(),
            parts: BTreeMap::new(),
            checking: BTreeSet::new(),
            checked: BTreeSet::new(),
            accused: None,
            claims: BTreeMap::new(),
            reports: BTreeMap::new(),
            asked: BTreeSet::new(),
            own_reports: BTreeSet::new(),
            settling_since: None,
            settled: false,
        }
    }

    pub fn plan(&self) -> &ShardPlan {
        &self.plan
    }

    pub fn plan_id(&self) -> &str {
        &self.plan_id
    }

    /// The slices this node aggregates and their coordinates.
    pub fn my_ranges(&self) -> SliceRanges {
        self.mine.iter().map(|&s| (s, self.plan.range(s))).collect()
    }

    pub fn own_delta(&mut self, own: Arc<Vec<f32>>) {
        self.own = Some(own);
    }

    /// A contributor's Δ is announced: where its parts are fetched from.
    pub fn source(&mut self, node_id: &str, peer: PeerId, delta: BlobId, bytes: u64) {
        self.sources
            .insert(node_id.to_string(), Source { peer, delta, bytes });
    }

    /// The parts `node_id` sent of `slices` (encoded, in the order asked), decoded and checked
    /// (length, finite, norm ≤ `max_norm`); the first one that fails is the error.
    pub fn parts_arrived(
        &mut self,
        node_id: &str,
        slices: &[usize],
        encoded: &[Arc<Vec<u8>>],
        max_norm: f32,
    ) -> Result<(), String> {
        if encoded.len() != slices.len() {
            return Err(format!(
                "{} parts for {} slices",
                encoded.len(),
                slices.len()
            ));
        }
        let mut decoded = Vec::with_capacity(slices.len());
        for (&slice, bytes) in slices.iter().zip(encoded) {
            let len = self.plan.range(slice).len();
            let values = decode(bytes, len, max_norm).map_err(|e| format!("slice {slice}: {e}"))?;
            decoded.push((slice, values));
        }
        for (slice, values) in decoded {
            self.parts
                .entry(slice)
                .or_default()
                .insert(node_id.to_string(), values);
        }
        Ok(())
    }

    /// A check's fetch of `node_id`'s parts of `slices` ended (its parts, if any, are in).
    pub fn check_done(&mut self, node_id: &str, slices: &[usize]) {
        for &slice in slices {
            self.checking.remove(&(slice, node_id.to_string()));
        }
    }

    /// The inputs of the slices this node aggregates: the parts of `contributors` (its own
    /// included), by slice.
    pub fn inputs(&self, contributors: &[String]) -> Vec<(usize, Vec<Contribution>)> {
        self.mine
            .iter()
            .map(|&slice| (slice, self.parts_of(slice, contributors)))
            .collect()
    }

    /// The parts of `slice` this node holds of `contributors`.
    fn parts_of(&self, slice: usize, contributors: &[String]) -> Vec<Contribution> {
        contributors
            .iter()
            .filter_map(|id| {
                self.part(slice, id)
                    .map(|delta| Contribution::new(id.clone(), delta))
            })
            .collect()
    }

    fn part(&self, slice: usize, node_id: &str) -> Option<Vec<f32>> {
        if node_id == self.node_id {
            let own = self.own.as_ref()?;
            return own.get(self.plan.range(slice)).map(<[f32]>::to_vec);
        }
        self.parts.get(&slice)?.get(node_id).cloned()
    }

    /// This node's reports are served: it claims them, and the round settles from here on.
    pub fn reported(&mut self, now: Instant, reports: Vec<(SliceReport, BlobId, u64)>) {
        for (report, blob, bytes) in reports {
            let slice = report.slice;
            self.own_reports.insert(blob);
            self.reports.insert((slice, blob), Report::Read(report));
            self.claims.entry(slice).or_default().insert(
                self.node_id.clone(),
                Claim {
                    peer: None,
                    result: blob,
                    bytes,
                },
            );
        }
        self.settling_since.get_or_insert(now);
    }

    /// The claims this node makes in its re-announcements.
    pub fn own_claims(&self) -> Vec<SliceClaim> {
        self.claims
            .iter()
            .filter_map(|(&slice, by)| {
                let c = by.get(&self.node_id)?;
                Some(SliceClaim {
                    plan: self.plan_id.clone(),
                    slice: slice as u32,
                    result: c.result.to_string(),
                    result_bytes: c.bytes,
                })
            })
            .collect()
    }

    pub fn is_own_report(&self, blob: &BlobId) -> bool {
        self.own_reports.contains(blob)
    }

    /// A peer's claims (from its announcement): those of this plan whose slice it aggregates are
    /// recorded (the first claim per aggregator and slice stands); a report not yet had is
    /// fetched.
    pub fn claimed(
        &mut self,
        round: u64,
        aggregator: &str,
        peer: PeerId,
        claims: &[SliceClaim],
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        for c in claims {
            let slice = c.slice as usize;
            if c.plan != self.plan_id
                || slice >= self.plan.slices()
                || !self.plan.aggregates(aggregator, slice)
            {
                continue;
            }
            let Some(result) = BlobId::from_hex(&c.result) else {
                continue;
            };
            let by = self.claims.entry(slice).or_default();
            if by.contains_key(aggregator) {
                continue;
            }
            by.insert(
                aggregator.to_string(),
                Claim {
                    peer: Some(peer),
                    result,
                    bytes: c.result_bytes,
                },
            );
            if let std::collections::btree_map::Entry::Vacant(entry) =
                self.reports.entry((slice, result))
            {
                entry.insert(Report::Fetching);
                self.asked.insert((slice, result, peer));
                effects.push(Effect::FetchReport {
                    peer,
                    aggregator: aggregator.to_string(),
                    round,
                    slice,
                    result,
                    max_bytes: c.result_bytes,
                });
            }
        }
        effects
    }

    /// A report fetch ended: decoded and checked (`decode_report`), or why not.
    pub fn report_arrived(
        &mut self,
        round: u64,
        slice: usize,
        result: BlobId,
        fetched: Result<Arc<Vec<u8>>, String>,
        max_norm: f32,
    ) -> Vec<Effect> {
        let len = self.plan.range(slice).len();
        let outcome = match fetched {
            Ok(bytes) => match decode_report(&bytes, slice, len, "", max_norm) {
                Ok(report) => Report::Read(report),
                Err(_) => Report::Malformed,
            },
            Err(_) => Report::Failed,
        };
        let failed = matches!(outcome, Report::Failed);
        self.reports.insert((slice, result), outcome);
        if !failed {
            return Vec::new();
        }
        // Ask the next aggregator that claimed the same report.
        let next = self.claims.get(&slice).and_then(|by| {
            by.iter()
                .filter(|(_, c)| c.result == result)
                .filter_map(|(id, c)| Some((id.clone(), c.peer?, c.bytes)))
                .find(|(_, peer, _)| !self.asked.contains(&(slice, result, *peer)))
        });
        let Some((aggregator, peer, bytes)) = next else {
            return Vec::new();
        };
        self.reports.insert((slice, result), Report::Fetching);
        self.asked.insert((slice, result, peer));
        vec![Effect::FetchReport {
            peer,
            aggregator,
            round,
            slice,
            result,
            max_bytes: bytes,
        }]
    }

    /// The distinct reports claimed for `slice`, and whether all are read (or refused).
    fn report_state(&self, slice: usize) -> (BTreeSet<BlobId>, bool) {
        let results: BTreeSet<BlobId> = self
            .claims
            .get(&slice)
            .map(|by| by.values().map(|c| c.result).collect())
            .unwrap_or_default();
        let done = results.iter().all(|r| {
            !matches!(
                self.reports.get(&(slice, *r)),
                Some(Report::Fetching) | None
            )
        });
        (results, done)
    }

    /// The clock while settling: asks for the parts that checking needs (a slice whose claims
    /// differ; after `grace`, a slice nobody reported), and settles when every slice is either
    /// claimed by its whole group and read, or past the grace with nothing more in flight, or
    /// at `deadline` whatever is in hand.
    pub fn next(
        &mut self,
        now: Instant,
        round: u64,
        grace: Duration,
        deadline: Duration,
    ) -> Vec<Effect> {
        let Some(since) = self.settling_since else {
            return Vec::new();
        };
        if self.settled {
            return Vec::new();
        }
        let waited = now.saturating_duration_since(since);
        let mut effects = self.accuse(round, waited >= grace);
        let mut ready = true;
        for slice in 0..self.plan.slices() {
            let (results, read) = self.report_state(slice);
            let group_in = self.plan.group(slice).iter().all(|a| {
                self.claims
                    .get(&slice)
                    .is_some_and(|by| by.contains_key(*a))
            });
            let usable = results
                .iter()
                .any(|r| matches!(self.reports.get(&(slice, *r)), Some(Report::Read(_))));
            let needs_parts = results.len() > 1
                || (!results.is_empty() && read && !usable)
                || (results.is_empty() && waited >= grace);
            if needs_parts && self.checked.insert(slice) {
                effects.extend(self.fetch_parts_of(slice, round));
            }
            let parts_in = !self.checking.iter().any(|(s, _)| *s == slice);
            let complete = read
                && parts_in
                && self.accused.is_some()
                && (group_in || (waited >= grace && usable));
            let given_up = waited >= grace && read && parts_in && self.checked.contains(&slice);
            if !(complete || given_up) {
                ready = false;
            }
        }
        if ready || waited >= deadline {
            self.settled = true;
            effects.push(Effect::Settle {
                round,
                plan: self.plan.clone(),
                evidence: self.evidence(),
            });
        }
        effects
    }

    /// Once every slice's reports are read (or at the grace, with what is read), compares each
    /// slice with this node's own part of it; the slices it accuses are checked from the parts.
    fn accuse(&mut self, round: u64, graced: bool) -> Vec<Effect> {
        if self.accused.is_some() {
            return Vec::new();
        }
        let taken: Vec<Option<Vec<f32>>> = (0..self.plan.slices())
            .map(|slice| {
                let by = self.claims.get(&slice)?;
                by.values()
                    .find_map(|c| match self.reports.get(&(slice, c.result)) {
                        Some(Report::Read(r)) => Some(r.delta.clone()),
                        _ => None,
                    })
            })
            .collect();
        let all_read = (0..self.plan.slices()).all(|slice| {
            let (results, read) = self.report_state(slice);
            !results.is_empty() && read
        });
        if !(all_read || graced) {
            return Vec::new();
        }
        let accused: BTreeSet<usize> = match &self.own {
            Some(own) => {
                let views: Vec<Option<&[f32]>> = taken.iter().map(|t| t.as_deref()).collect();
                accused_slices(&self.plan, own, &views)
                    .into_iter()
                    .collect()
            }
            None => BTreeSet::new(),
        };
        let mut effects = Vec::new();
        for &slice in &accused {
            if self.checked.insert(slice) {
                effects.extend(self.fetch_parts_of(slice, round));
            }
        }
        self.accused = Some(accused);
        effects
    }

    /// Fetches every announced contributor's part of `slice` (to check or compute it).
    fn fetch_parts_of(&mut self, slice: usize, round: u64) -> Vec<Effect> {
        let range = self.plan.range(slice);
        let mut effects = Vec::new();
        for (node_id, source) in &self.sources {
            if self
                .parts
                .get(&slice)
                .is_some_and(|p| p.contains_key(node_id))
            {
                continue;
            }
            self.checking.insert((slice, node_id.clone()));
            effects.push(Effect::FetchParts {
                peer: source.peer,
                node_id: node_id.clone(),
                round,
                delta: source.delta,
                max_bytes: source.bytes,
                slices: vec![(slice, range.clone())],
                check: true,
            });
        }
        effects
    }

    /// What this node holds for each slice.
    fn evidence(&self) -> BTreeMap<usize, SliceEvidence> {
        let mut contributors: Vec<String> = self.sources.keys().cloned().collect();
        if self.own.is_some() {
            contributors.push(self.node_id.clone());
        }
        (0..self.plan.slices())
            .map(|slice| {
                let mut e = SliceEvidence {
                    accused: self.accused.as_ref().is_some_and(|a| a.contains(&slice)),
                    ..SliceEvidence::default()
                };
                if let Some(by) = self.claims.get(&slice) {
                    for (aggregator, claim) in by {
                        match self.reports.get(&(slice, claim.result)) {
                            Some(Report::Read(r)) => e.reports.push(SliceReport {
                                aggregator: aggregator.clone(),
                                ..r.clone()
                            }),
                            Some(Report::Malformed) => e.malformed.push(aggregator.clone()),
                            _ => {}
                        }
                    }
                }
                if self.checked.contains(&slice) {
                    e.parts = self.parts_of(slice, &contributors);
                }
                (slice, e)
            })
            .collect()
    }
}
