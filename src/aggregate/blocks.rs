//! Coordinate-block machinery the rules share: parallel per-coordinate maps and deterministic
//! parallel reductions (squared distances), both over fixed blocks of [`BLOCK`] coordinates.
//!
//! Memory stays near one copy of the inputs: outputs are one vector of the delta's length, and a
//! reduction keeps `width` partial sums per block. Results never depend on the number of threads:
//! each output coordinate is computed alone, and a reduction adds its blocks in a fixed order
//! inside each span of [`SPAN_BLOCKS`] and then the spans in order. A [`pass`] writes an output
//! and measures it (the inputs' finiteness, each input's distance to it, its norm) in one read of
//! the inputs: reading them is what the rules' time goes to.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::Contribution;
use crate::diloco::codec::Int8Codes;
use neuroshard_kernels::Simd;

/// Coordinates per block: n blocks of 4096 f32 (16 KiB each) stay in L2 while a block is worked on.
pub(super) const BLOCK: usize = 4096;
/// Coordinates a [`pass`] works on at once inside a block: 16 inputs' runs of 128 f32 (8 KiB)
/// stay in L1 while they are checked, written from and measured. A multiple of [`LaneSum`]'s lanes.
pub(super) const RUN: usize = 128;
/// Values whose int8 blocks [`int8_gram`] sums, in order, into one partial per parallel task
/// (rounded down to whole blocks, at least one).
const INT8_SPAN: usize = 1 << 16;
/// Blocks summed, in order, into one partial per parallel task of a reduction.
pub(super) const SPAN_BLOCKS: usize = 16;
/// Zeros to measure a block's norm as its distance to them.
const ZEROS: [f32; BLOCK] = [0.0; BLOCK];

/// The slices `range` of every contribution, in input order, into `cols` (reused across blocks).
pub(super) fn columns<'a>(cs: &'a [Contribution], range: Range<usize>, cols: &mut Vec<&'a [f32]>) {
    cols.clear();
    cols.extend(cs.iter().map(|c| &c.delta[range.clone()]));
}

/// What a [`pass`] measures besides its output, while each block is still in cache.
#[derive(Debug, Clone, Copy)]
pub(super) struct Measure {
    /// Whether every input value is finite (the inputs' check, fused into the rule's pass).
    pub finite: bool,
    /// ‖xᵢ − out‖ for every input (the verdicts' distances).
    pub distances: bool,
}

impl Measure {
    pub const NOTHING: Self = Self {
        finite: false,
        distances: false,
    };
    pub const FINITE: Self = Self {
        finite: true,
        distances: false,
    };
    pub const FINITE_AND_DISTANCES: Self = Self {
        finite: true,
        distances: true,
    };
    pub const DISTANCES: Self = Self {
        finite: false,
        distances: true,
    };
}

/// An output vector and what its [`pass`] measured.
#[derive(Debug)]
pub(super) struct Pass {
    pub out: Vec<f32>,
    /// Every input value was finite (true when not measured).
    pub finite: bool,
    /// ‖xᵢ − out‖ per input, reduced as every sum here ([`fold_blocks`]); empty when not
    /// measured.
    pub distances: Vec<f64>,
    /// ‖out‖ ([`norm`]'s bits).
    pub norm: f64,
}

/// One parallel pass over the inputs, block by block and inside a block [`RUN`] coordinates at a
/// time: `write(cols, out)` gets the contributions' slices of a run and the output slice of the
/// same coordinates (holding `out`'s values), and what `measure` asks for is computed from the
/// same run while it is in L1, so a rule and its checks read each input value from memory once
/// and touch it while it is still in the nearest cache.
pub(super) fn pass(
    cs: &[Contribution],
    mut out: Vec<f32>,
    measure: Measure,
    write: impl Fn(&[&[f32]], &mut [f32]) + Sync + Send,
) -> Pass {
    // Per block: each input's squared distance (when measured), then the output's squared norm.
    let width = if measure.distances { cs.len() + 1 } else { 1 };
    let mut per_block = vec![0.0f64; out.len().div_ceil(BLOCK) * width];
    let simd = Simd::widest();
    let finite = out
        .par_chunks_mut(BLOCK)
        .zip(per_block.par_chunks_mut(width))
        .enumerate()
        .map_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(cols, run_cols, sq_dists), (b, (chunk, sums))| {
                let start = b * BLOCK;
                columns(cs, start..start + chunk.len(), cols);
                sq_dists.clear();
                sq_dists.resize(width, LaneSum::ZERO);
                simd.run(
                    #[inline(always)]
                    || {
                        let mut finite = true;
                        for (r, out) in chunk.chunks_mut(RUN).enumerate() {
                            let range = r * RUN..r * RUN + out.len();
                            run_cols.clear();
                            run_cols.extend(cols.iter().map(|col| &col[range.clone()]));
                            if measure.finite {
                                finite &= run_cols.iter().fold(true, |f, col| f & all_finite(col));
                            }
                            write(run_cols, out);
                            let (own, distances) = sq_dists.split_last_mut().expect("width ≥ 1");
                            own.add_sq_diffs(out, &ZEROS[..out.len()]);
                            if measure.distances {
                                for (distance, col) in distances.iter_mut().zip(run_cols.iter()) {
                                    distance.add_sq_diffs(col, out);
                                }
                            }
                        }
                        for (s, distance) in sums.iter_mut().zip(sq_dists.iter()) {
                            *s = distance.total();
                        }
                        finite
                    },
                )
            },
        )
        .reduce(|| true, |a, b| a && b);
    let mut totals = fold_blocks(&per_block, width);
    let norm = totals.pop().unwrap_or(0.0).sqrt();
    Pass {
        out,
        finite,
        distances: totals.into_iter().map(f64::sqrt).collect(),
        norm,
    }
}

/// Per coordinate of a run (at most [`RUN`] coordinates), Σᵢ wᵢ·xᵢ over the `weighted` columns
/// (xᵢ, wᵢ) in order, from −0.0 as `Sum` does, then `finish`ed into `out`. Column by column, so it
/// vectorises across coordinates; per coordinate the same additions in the same order as a
/// per-coordinate sum.
#[inline(always)]
pub(super) fn combine<'a>(
    out: &mut [f32],
    weighted: impl IntoIterator<Item = (&'a [f32], f64)>,
    finish: impl Fn(f64) -> f32,
) {
    let mut sums = [-0.0f64; RUN];
    let sums = &mut sums[..out.len()];
    for (col, w) in weighted {
        for (s, &x) in sums.iter_mut().zip(col) {
            *s += w * f64::from(x);
        }
    }
    for (o, &s) in out.iter_mut().zip(sums.iter()) {
        *o = finish(s);
    }
}

/// Per coordinate Σ wᵢ·xᵢ over `weighted` (input index, weight), added in that order from −0.0 as
/// [`combine`] adds, `finish`ed into f32; and the result's norm ([`norm`]'s bits). When every
/// contribution came as int8 with one block size, from the codes: each value computed as the
/// decoder computes it (code × scale in f32), so the output has the same bits as from the
/// values, from a quarter of the bytes; otherwise one [`pass`] over the values.
pub(super) fn weighted_sum(
    cs: &[Contribution],
    d: usize,
    weighted: &[(usize, f64)],
    finish: impl Fn(f64) -> f32 + Sync + Send,
) -> (Vec<f32>, f64) {
    let Some(codes) = same_int8_codes(cs, d) else {
        let pass = pass(
            cs,
            vec![0.0; d],
            Measure::NOTHING,
            #[inline(always)]
            |cols, out| combine(out, weighted.iter().map(|&(i, w)| (cols[i], w)), &finish),
        );
        return (pass.out, pass.norm);
    };
    let block = codes.first().map_or(1, |q| q.block());
    // Whole int8 blocks per task, about a block of the passes.
    let chunk = (BLOCK / block).max(1) * block;
    let mut out = vec![0.0f32; d];
    let simd = Simd::widest();
    out.par_chunks_mut(chunk)
        .enumerate()
        .for_each_init(Vec::new, |sums, (c, out)| {
            simd.run(
                #[inline(always)]
                || {
                    sums.clear();
                    sums.resize(out.len(), -0.0f64);
                    let first = c * chunk / block;
                    let blocks = first..first + out.len().div_ceil(block);
                    for &(i, w) in weighted {
                        let payload = codes[i].blocks(blocks.clone());
                        for (sums, b) in sums.chunks_mut(block).zip(payload.chunks(4 + block)) {
                            let scale = f32::from_le_bytes(b[..4].try_into().expect("4 bytes"));
                            for (s, &q) in sums.iter_mut().zip(&b[4..]) {
                                *s += w * f64::from(q as i8 as f32 * scale);
                            }
                        }
                    }
                    for (o, &s) in out.iter_mut().zip(sums.iter()) {
                        *o = finish(s);
                    }
                },
            )
        });
    let norm = norm(&out);
    (out, norm)
}

/// One vector per group: output g is the mean of the contributions `groups[g]` names, per
/// coordinate their values added in the group's order (as [`combine`] does) and divided by the
/// group's size, so a group of one is its input bit for bit and k copies of one vector are that
/// vector. Also whether every input value is finite, when `check_finite` (the inputs' check,
/// fused into this read). One parallel pass over the inputs: each task writes block b of every
/// output from the inputs' block b while it is in cache. Memory: the outputs, one d-vector each.
pub(super) fn group_means(
    cs: &[Contribution],
    d: usize,
    groups: &[Vec<usize>],
    check_finite: bool,
) -> (Vec<Vec<f32>>, bool) {
    let mut outs: Vec<Vec<f32>> = groups.iter().map(|_| vec![0.0f32; d]).collect();
    let mut per_block: Vec<Vec<&mut [f32]>> = (0..d.div_ceil(BLOCK))
        .map(|_| Vec::with_capacity(groups.len()))
        .collect();
    for out in &mut outs {
        for (chunks, chunk) in per_block.iter_mut().zip(out.chunks_mut(BLOCK)) {
            chunks.push(chunk);
        }
    }
    let simd = Simd::widest();
    let finite = per_block
        .into_par_iter()
        .enumerate()
        .map_init(Vec::new, |cols, (b, mut chunks)| {
            let start = b * BLOCK;
            columns(cs, start..(start + BLOCK).min(d), cols);
            simd.run(
                #[inline(always)]
                || {
                    let finite = !check_finite || cols.iter().all(|col| all_finite(col));
                    for (chunk, group) in chunks.iter_mut().zip(groups) {
                        let size = group.len() as f64;
                        for (r, out) in chunk.chunks_mut(RUN).enumerate() {
                            let range = r * RUN..r * RUN + out.len();
                            let members = group.iter().map(|&i| (&cols[i][range.clone()], 1.0));
                            combine(out, members, |sum| (sum / size) as f32);
                        }
                    }
                    finite
                },
            )
        })
        .reduce(|| true, |a, b| a && b);
    (outs, finite)
}

/// Every value finite; branch-free, so it vectorises (a short-circuiting `any` does not).
#[inline(always)]
pub(super) fn all_finite(values: &[f32]) -> bool {
    values.iter().fold(true, |finite, x| finite & x.is_finite())
}

/// A [`pass`] whose output coordinate j is `value(xs)`, where `xs` holds the n contributions'
/// values at j (in input order; `value` may reorder them). One scratch buffer per block.
pub(super) fn per_coordinate(
    cs: &[Contribution],
    d: usize,
    measure: Measure,
    value: impl Fn(&mut [f32]) -> f32 + Sync + Send,
) -> Pass {
    pass(cs, vec![0.0f32; d], measure, |cols, out| {
        let mut xs = vec![0.0f32; cols.len()];
        for (j, o) in out.iter_mut().enumerate() {
            for (x, col) in xs.iter_mut().zip(cols) {
                *x = col[j];
            }
            *o = value(&mut xs);
        }
    })
}

/// Deterministic parallel sum over the coordinates 0..d of `width` quantities: `add(range, acc)`
/// adds the contribution of `range` (one block) into `acc` (zeros). Blocks run in parallel; their
/// sums are added as [`fold_blocks`] does, whatever the thread count.
pub(super) fn reduce_blocks(
    d: usize,
    width: usize,
    add: impl Fn(Range<usize>, &mut [f64]) + Sync + Send,
) -> Vec<f64> {
    if width == 0 {
        return Vec::new();
    }
    let mut per_block = vec![0.0f64; d.div_ceil(BLOCK) * width];
    let simd = Simd::widest();
    per_block
        .par_chunks_mut(width)
        .enumerate()
        .for_each(|(b, acc)| {
            simd.run(
                #[inline(always)]
                || add(b * BLOCK..((b + 1) * BLOCK).min(d), acc),
            )
        });
    fold_blocks(&per_block, width)
}

/// The sum of per-block sums (`width` per block, blocks in coordinate order) in the one order
/// every reduction here uses: from zero, the blocks of each span of [`SPAN_BLOCKS`] in order, then
/// the spans in order. Fixed, so every node gets the same bits.
fn fold_blocks(per_block: &[f64], width: usize) -> Vec<f64> {
    let mut total = vec![0.0f64; width];
    let mut span_sum = vec![0.0f64; width];
    for span in per_block.chunks(width * SPAN_BLOCKS) {
        span_sum.fill(0.0);
        for block in span.chunks_exact(width) {
            span_sum.iter_mut().zip(block).for_each(|(s, b)| *s += b);
        }
        total.iter_mut().zip(&span_sum).for_each(|(t, s)| *t += s);
    }
    total
}

/// ‖a − b‖² accumulated in f64 (the difference of two finite f32 can overflow f32), in 8 lanes,
/// on the widest [`Simd`]: each lane adds its terms in the same order and the lanes are added in
/// the same order whatever the vector width, so every CPU gets the same bits.
pub(super) fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    Simd::widest().run(
        #[inline(always)]
        || sq_dist_inlined(a, b),
    )
}

/// [`sq_dist`] compiled into its caller, for loops already under [`Simd::run`].
#[inline(always)]
pub(super) fn sq_dist_inlined(a: &[f32], b: &[f32]) -> f64 {
    let mut sum = LaneSum::ZERO;
    sum.add_sq_diffs(a, b);
    sum.total()
}

/// A sum fed run by run in 8 lanes, each adding its terms in coordinate order, then a tail of the
/// last run: runs whose lengths are multiples of [`LaneSum::LANES`], then at most one shorter, give
/// the bits of one call over their concatenation, on every [`Simd`] path. Its terms are squared
/// differences ([`LaneSum::add_sq_diffs`], ‖a − b‖²) or products ([`LaneSum::add_products`], x · y).
#[derive(Debug, Clone, Copy)]
pub(super) struct LaneSum {
    lanes: [f64; Self::LANES],
    tail: f64,
}

impl LaneSum {
    const LANES: usize = 8;
    pub const ZERO: Self = Self {
        lanes: [0.0; Self::LANES],
        tail: 0.0,
    };

    /// Adds the terms (a − b)² of one run, given as f32 or already widened to f64 (the same terms).
    #[inline(always)]
    pub fn add_sq_diffs<T: Copy>(&mut self, a: &[T], b: &[T])
    where
        f64: From<T>,
    {
        let (ca, cb) = (a.chunks_exact(Self::LANES), b.chunks_exact(Self::LANES));
        if !ca.remainder().is_empty() {
            // Only the last run may leave a remainder: its terms are summed apart, as in one call.
            self.tail = ca
                .remainder()
                .iter()
                .zip(cb.remainder())
                .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
                .sum();
        }
        // A local copy stays in registers (through `self` the lanes were stored every step).
        let mut lanes = self.lanes;
        for (x, y) in ca.zip(cb) {
            for ((s, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
                let t = f64::from(x) - f64::from(y);
                *s += t * t;
            }
        }
        self.lanes = lanes;
    }

    /// Adds x · yₖ over one run to each of `sums` at once: x's values are loaded once for all of
    /// them, and the G × 8 lanes stay in registers for the whole run.
    #[inline(always)]
    fn add_products<const G: usize>(sums: &mut [LaneSum], x: &[f64], ys: [&[f64]; G]) {
        let sums: &mut [LaneSum; G] = sums.try_into().expect("one sum per y");
        let (xc, xr) = x.as_chunks::<{ Self::LANES }>();
        let ycs = ys.map(|y| y[..x.len()].as_chunks::<{ Self::LANES }>());
        if !xr.is_empty() {
            for (sum, (_, yr)) in sums.iter_mut().zip(&ycs) {
                sum.tail = xr.iter().zip(*yr).map(|(&a, &b)| a * b).sum();
            }
        }
        let mut lanes: [[f64; Self::LANES]; G] = std::array::from_fn(|g| sums[g].lanes);
        for (c, xs) in xc.iter().enumerate() {
            for (lanes, (yc, _)) in lanes.iter_mut().zip(&ycs) {
                for ((s, &a), &b) in lanes.iter_mut().zip(xs).zip(&yc[c]) {
                    *s += a * b;
                }
            }
        }
        for (sum, lanes) in sums.iter_mut().zip(lanes) {
            sum.lanes = lanes;
        }
    }

    /// Adds, over one run, xᵢ · xⱼ to `row[j − first]` for j = first, first + 1, … (as many as
    /// `row` holds), input k being `inputs[k * stride..][..len]`. Four products at a time: 8
    /// registers of lanes, xᵢ loaded once for the four.
    #[inline(always)]
    fn add_products_of_row(
        row: &mut [LaneSum],
        inputs: &[f64],
        (stride, len): (usize, usize),
        i: usize,
        first: usize,
    ) {
        let input = |k: usize| &inputs[k * stride..][..len];
        for (k, group) in row.chunks_mut(4).enumerate() {
            let j = first + 4 * k;
            match group.len() {
                4 => Self::add_products(group, input(i), [0, 1, 2, 3].map(|g| input(j + g))),
                3 => Self::add_products(group, input(i), [0, 1, 2].map(|g| input(j + g))),
                2 => Self::add_products(group, input(i), [0, 1].map(|g| input(j + g))),
                _ => Self::add_products(group, input(i), [input(j)]),
            }
        }
    }

    /// The lanes added in order, then the tail (a +0.0 tail leaves the lanes' sum, which is never
    /// −0.0, unchanged).
    #[inline(always)]
    pub fn total(&self) -> f64 {
        self.lanes.iter().sum::<f64>() + self.tail
    }
}

/// What one look at every pair of contributions gives: [`pairwise_sq_distances`].
pub(super) struct Pairwise {
    /// The full n×n matrix (row-major) of squared L2 distances.
    pub sq_distances: Vec<f64>,
    /// ‖xᵢ‖², the Gram matrix's diagonal. From the values: the same terms in the same lanes as
    /// [`norm`], so `sq_norms[i].sqrt()` has the bits of `norm(xᵢ)`; from int8 codes: the norm
    /// of what the codes stand for, within ~1e-7 of it.
    pub sq_norms: Vec<f64>,
    /// Whether every input value is finite.
    pub finite: bool,
    /// Whether G came from the int8 codes rather than the values.
    pub from_codes: bool,
}

impl Pairwise {
    /// What a rule's note adds about where its distances came from.
    pub fn source_note(&self) -> &'static str {
        if self.from_codes {
            ", distances from the int8 codes"
        } else {
            ""
        }
    }
}

/// The squared L2 distances between contributions, their squared norms and whether every input
/// value is finite, from the Gram matrix G: ‖xᵢ − xⱼ‖² = Gᵢᵢ + Gⱼⱼ − 2Gᵢⱼ. When every contribution
/// came as int8 with the same block size, G is computed from the codes ([`int8_gram`]); otherwise
/// from the values ([`f32_gram`]). Which one depends only on the inputs, so every node that
/// aggregates the same messages takes the same path and gets the same bits.
///
/// Why the Gram matrix: the distances are compute, not memory (n(n−1)/2 pairs per coordinate);
/// a product is one multiply and one add where a difference squared is three operations, and its
/// terms are exact (a product of two f32 in f64, or of two int8 codes in integers), so G's bits
/// do not depend on FMA or the vector width. Identical inputs have bit-identical Gᵢᵢ, Gⱼⱼ and
/// Gᵢⱼ and so distance exactly 0; the form loses digits only for inputs closer than ~1e-6 of
/// their norm, which no verdict can tell apart.
pub(super) fn pairwise_sq_distances(cs: &[Contribution], d: usize) -> Pairwise {
    let n = cs.len();
    let codes = same_int8_codes(cs, d);
    let from_codes = codes.is_some();
    let (gram, finite) = match codes {
        Some(codes) => (int8_gram(&codes), true),
        None => f32_gram(cs, d),
    };
    // Row i of the triangle starts after rows 0..i, of n, n − 1, … entries.
    let row_start: Vec<usize> = (0..n)
        .map(|i| i * n - i * (i.saturating_sub(1)) / 2)
        .collect();
    let g = |i: usize, j: usize| gram[row_start[i] + j - i];
    let mut matrix = vec![0.0f64; n * n];
    for i in 0..n {
        for j in i + 1..n {
            // Rounding can leave a hair below zero for near inputs; a distance is never negative.
            let s = (g(i, i) + g(j, j) - 2.0 * g(i, j)).max(0.0);
            matrix[i * n + j] = s;
            matrix[j * n + i] = s;
        }
    }
    Pairwise {
        sq_distances: matrix,
        sq_norms: (0..n).map(|i| g(i, i)).collect(),
        finite,
        from_codes,
    }
}

/// Every contribution's int8 codes, when all have them for `d` values with one block size.
fn same_int8_codes(cs: &[Contribution], d: usize) -> Option<Vec<&Int8Codes>> {
    let codes: Vec<&Int8Codes> = cs.iter().map(|c| c.int8.as_ref()).collect::<Option<_>>()?;
    let block = codes.first()?.block();
    codes
        .iter()
        .all(|q| q.block() == block && q.num_values() == d)
        .then_some(codes)
}

/// G's upper triangle with its diagonal, row by row ((i, i), (i, i + 1), …, (i, n − 1)), from the
/// codes: per int8 block exact integer dot products times the two scales, blocks added in order
/// within spans of [`INT8_SPAN`] values, then the spans in order, whatever the thread count.
/// Reads a quarter of the bytes [`f32_gram`] reads. The codes decoded to finite values, so there
/// is nothing to check (the values are the codes times their scales).
fn int8_gram(codes: &[&Int8Codes]) -> Vec<f64> {
    let n = codes.len();
    let triangle = n * (n + 1) / 2;
    let Some(first) = codes.first() else {
        return Vec::new();
    };
    let span = (INT8_SPAN / first.block()).max(1);
    let blocks = first.num_blocks();
    let simd = Simd::widest();
    let per_span: Vec<Vec<f64>> = (0..blocks.div_ceil(span))
        .into_par_iter()
        .map_init(Vec::new, |payloads, s| {
            let range = s * span..((s + 1) * span).min(blocks);
            payloads.clear();
            payloads.extend(codes.iter().map(|q| q.blocks(range.clone())));
            let mut sums = vec![0.0f64; triangle];
            neuroshard_kernels::int8_gram(simd, first.block(), payloads, &mut sums);
            sums
        })
        .collect();
    let mut gram = vec![0.0f64; triangle];
    for sums in per_span {
        for (g, s) in gram.iter_mut().zip(sums) {
            *g += s;
        }
    }
    gram
}

/// G's upper triangle with its diagonal (as [`int8_gram`] lays it out) from the values, and
/// whether every value is finite: one parallel pass over the inputs, the check and G of a block
/// computed while the block is in cache.
fn f32_gram(cs: &[Contribution], d: usize) -> (Vec<f64>, bool) {
    let n = cs.len();
    // G's upper triangle with its diagonal, row by row: (i, i), (i, i + 1), …, (i, n − 1).
    let triangle = n * (n + 1) / 2;
    let finite = AtomicBool::new(true);
    let gram = reduce_blocks(
        d,
        triangle,
        #[inline(always)]
        |range, acc| {
            // Run by run, as a pass goes: G's entries of a run are summed while it is in L1.
            // Each input's run is widened to f64 once, not once per pair it is in.
            let mut dots = vec![LaneSum::ZERO; triangle];
            let mut wide = vec![0.0f64; n * RUN];
            let mut finite_here = true;
            for start in range.clone().step_by(RUN) {
                let run = start..(start + RUN).min(range.end);
                for (c, wide) in cs.iter().zip(wide.chunks_exact_mut(RUN)) {
                    let values = &c.delta[run.clone()];
                    finite_here &= all_finite(values);
                    for (w, &x) in wide.iter_mut().zip(values) {
                        *w = f64::from(x);
                    }
                }
                let mut row = dots.as_mut_slice();
                for i in 0..n {
                    let (this_row, rest) = row.split_at_mut(n - i);
                    row = rest;
                    LaneSum::add_products_of_row(this_row, &wide, (RUN, run.len()), i, i);
                }
            }
            if !finite_here {
                finite.store(false, Ordering::Relaxed);
            }
            for (s, dot) in acc.iter_mut().zip(&dots) {
                *s += dot.total();
            }
        },
    );
    (gram, finite.into_inner())
}

/// ‖v‖, reduced like every sum here: the same bits on every node, and as a [`pass`] measures it.
pub(super) fn norm(v: &[f32]) -> f64 {
    reduce_blocks(
        v.len(),
        1,
        #[inline(always)]
        |range, acc| {
            acc[0] += sq_dist_inlined(&v[range.clone()], &ZEROS[..range.len()]);
        },
    )[0]
    .sqrt()
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{c, int8_coded, random_vec};
    use super::*;

    #[test]
    fn squared_distance_matches_the_naive_sum_and_survives_f32_overflow() {
        let a = random_vec(1, 37, 1.0);
        let b = random_vec(2, 37, 1.0);
        let naive: f64 = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
            .sum();
        assert!((sq_dist(&a, &b) - naive).abs() < 1e-12 * naive);
        let d = sq_dist(&[f32::MAX], &[-f32::MAX]);
        assert!(d.is_finite() && d > 1e77);
    }

    #[test]
    fn squared_distance_has_the_same_bits_on_every_code_path() {
        for len in [0, 1, 7, 8, 9, 63, 64, 65, BLOCK + 13] {
            let a = random_vec(3 + len as u64, len, 1e3);
            let b: Vec<f32> = random_vec(4 + len as u64, len, 1.0)
                .iter()
                .map(|&x| if x > 0.9 { f32::MAX } else { x * 1e-30 })
                .collect();
            let baseline = Simd::Baseline.run(|| sq_dist_inlined(&a, &b)).to_bits();
            for simd in Simd::available() {
                let got = simd.run(|| sq_dist_inlined(&a, &b)).to_bits();
                assert_eq!(got, baseline, "{simd:?}, len {len}");
            }
            assert_eq!(sq_dist(&a, &b).to_bits(), baseline, "len {len}");
        }
    }

    #[test]
    fn dot_products_have_the_same_bits_on_every_code_path_and_group_size() {
        // Products of f32 widened to f64 are exact, so even extreme magnitudes keep their bits.
        // Input 0 is x, inputs 1..=5 the ys, RUN apart as in a run of the Gram matrix.
        let inputs: Vec<f64> = (0..6u64)
            .flat_map(|i| random_vec(60 + i, RUN, 1e3))
            .map(|x| f64::from(if x > 990.0 { f32::MAX } else { x * 1e-30 }))
            .collect();
        let input = |k: usize, len: usize| &inputs[k * RUN..][..len];
        for len in [RUN, RUN - 3, 5] {
            // Rows of 1 to 5 products take groups of every size 1 to 4, and 4 + 1.
            let rows = |simd: Simd| {
                simd.run(|| {
                    (1..=5)
                        .map(|ys| {
                            let mut row = vec![LaneSum::ZERO; ys];
                            LaneSum::add_products_of_row(&mut row, &inputs, (RUN, len), 0, 1);
                            row.iter().map(|s| s.total().to_bits()).collect::<Vec<_>>()
                        })
                        .collect::<Vec<_>>()
                })
            };
            let baseline = rows(Simd::Baseline);
            let longest = &baseline[4];
            for (k, &got) in longest.iter().enumerate() {
                let got = f64::from_bits(got);
                let want: f64 = input(0, len)
                    .iter()
                    .zip(input(1 + k, len))
                    .map(|(a, b)| a * b)
                    .sum();
                assert!(
                    (got - want).abs() <= 1e-12 * want.abs(),
                    "y{k}: {got} vs {want}"
                );
            }
            for row in &baseline {
                assert_eq!(
                    row[..],
                    longest[..row.len()],
                    "a row of {}, len {len}",
                    row.len()
                );
            }
            for simd in Simd::available() {
                assert_eq!(rows(simd), baseline, "{simd:?}, len {len}");
            }
        }
    }

    #[test]
    fn reductions_cover_every_coordinate_once_across_blocks_and_spans() {
        let d = (2 * SPAN_BLOCKS + 3) * BLOCK + 5;
        let counts = reduce_blocks(d, 2, |range, acc| {
            assert!(range.len() <= BLOCK);
            acc[0] += range.len() as f64;
            acc[1] += range.map(|j| j as f64).sum::<f64>();
        });
        assert_eq!(counts[0], d as f64);
        assert_eq!(counts[1], (d * (d - 1) / 2) as f64);
    }

    #[test]
    fn pairwise_and_centre_distances_match_naive_ones() {
        let d = BLOCK * 2 + 17;
        let cs: Vec<_> = (0..4)
            .map(|i| c(&format!("n{i}"), random_vec(i, d, 1.0)))
            .collect();
        let Pairwise {
            sq_distances: m,
            sq_norms,
            finite,
            ..
        } = pairwise_sq_distances(&cs, d);
        assert!(finite);
        for (i, c) in cs.iter().enumerate() {
            assert_eq!(sq_norms[i].sqrt().to_bits(), norm(&c.delta).to_bits());
        }
        for i in 0..4 {
            assert_eq!(m[i * 4 + i], 0.0);
            for j in 0..4 {
                let naive = sq_dist(&cs[i].delta, &cs[j].delta);
                assert!((m[i * 4 + j] - naive).abs() <= 1e-9 * naive.max(1.0));
            }
        }
        // A pass that leaves cs[2] in place measures the distances to it.
        let to = pass(
            &cs,
            cs[2].delta.clone(),
            Measure::FINITE_AND_DISTANCES,
            |_, _| {},
        );
        assert!(to.finite);
        assert_eq!(to.distances[2], 0.0);
        assert!((to.distances[0] - m[2].sqrt()).abs() < 1e-9 * to.distances[0]);
        assert_eq!(to.norm.to_bits(), norm(&cs[2].delta).to_bits());
        assert_eq!(to.out, cs[2].delta);
    }

    #[test]
    fn pairwise_distances_from_int8_codes_match_those_of_the_decoded_values() {
        let d = BLOCK * 3 + 77;
        // The default block; one that leaves a short last block; one larger than the vector.
        for block in [256, 100, 1 << 17] {
            let mut plain: Vec<_> = (0..5)
                .map(|i| c(&format!("n{i}"), random_vec(i, d, 1.0)))
                .collect();
            plain.push(c("copy", plain[1].delta.clone()));
            let coded = int8_coded(&plain, block);
            assert!(coded.iter().all(|c| c.int8.is_some()));
            let values: Vec<_> = coded
                .iter()
                .map(|c| Contribution::new(c.node_id.clone(), c.delta.clone()))
                .collect();
            let from_codes = pairwise_sq_distances(&coded, d);
            let from_values = pairwise_sq_distances(&values, d);
            assert!(from_codes.finite && from_codes.from_codes && !from_values.from_codes);
            let n = coded.len();
            for i in 0..n {
                let (a, b) = (from_codes.sq_norms[i], from_values.sq_norms[i]);
                assert!(
                    (a - b).abs() <= 1e-6 * b,
                    "block {block}: ‖x{i}‖² {a} vs {b}"
                );
                for j in 0..n {
                    let (a, b) = (
                        from_codes.sq_distances[i * n + j],
                        from_values.sq_distances[i * n + j],
                    );
                    assert!(
                        (a - b).abs() <= 1e-5 * b,
                        "block {block} ({i}, {j}): {a} vs {b}"
                    );
                }
            }
            // The same message twice: the same codes, distance exactly 0.
            assert_eq!(from_codes.sq_distances[n + n - 1], 0.0);
            // One contribution without codes: every distance from the values, bit for bit.
            let mut mixed = coded.clone();
            mixed[3].int8 = None;
            let from_mixed = pairwise_sq_distances(&mixed, d);
            assert_eq!(from_mixed.sq_distances, from_values.sq_distances);
            assert_eq!(from_mixed.sq_norms, from_values.sq_norms);
        }
    }

    #[test]
    fn int8_gram_is_exact_in_its_integer_sums_and_has_the_same_bits_on_every_code_path() {
        // Blocks longer than an i32 sum of products (2¹⁶), full of the largest codes: the sums
        // would overflow an i32.
        let d = (1 << 17) + 5;
        let cs = vec![
            c("ones", vec![1.0; d]),
            c("minus", vec![-0.5; d]),
            c("mixed", random_vec(3, d, 1.0)),
        ];
        let coded = int8_coded(&cs, 1 << 17);
        let payloads: Vec<&[u8]> = coded
            .iter()
            .map(|c| {
                let q = c.int8.as_ref().expect("codes");
                q.blocks(0..q.num_blocks())
            })
            .collect();
        let gram_on = |simd: Simd| {
            let mut triangle = vec![0.0f64; 6];
            neuroshard_kernels::int8_gram(simd, 1 << 17, &payloads, &mut triangle);
            triangle
        };
        let reference = gram_on(Simd::Baseline);
        for simd in Simd::available() {
            assert_eq!(gram_on(simd), reference, "{simd:?}");
        }
        // ‖ones‖² = 1·1·d (the codes are all 127 and the scales 1/127: the product's exact
        // integer sum times the scales' product, one rounding); ⟨ones, minus⟩ = −0.5·d.
        let scale = f64::from(1.0f32 / 127.0);
        let main = (127.0 * 127.0 * (1 << 17) as f64) * (scale * scale);
        let tail = (127.0 * 127.0 * 5.0) * (scale * scale);
        assert_eq!(reference[0], main + tail);
        assert!((reference[1] + 0.5 * d as f64).abs() <= 1e-6 * d as f64);
        assert!((reference[3] - 0.25 * d as f64).abs() <= 1e-6 * d as f64);
    }

    #[test]
    fn pairwise_distances_are_exact_for_identical_inputs_and_close_for_near_ones() {
        let d = BLOCK + 13;
        let base = random_vec(5, d, 1.0);
        let near: Vec<f32> = base
            .iter()
            .zip(random_vec(6, d, 1e-3))
            .map(|(x, e)| x + e)
            .collect();
        let cs: Vec<_> = [&base, &near, &base, &near, &base, &near]
            .iter()
            .enumerate()
            .map(|(i, v)| c(&format!("n{i}"), (*v).clone()))
            .collect();
        let m = pairwise_sq_distances(&cs, d).sq_distances;
        let exact = sq_dist(&base, &near);
        for i in 0..6 {
            for j in 0..6 {
                let got = m[i * 6 + j];
                if i % 2 == j % 2 {
                    assert_eq!(got, 0.0, "({i}, {j})");
                } else {
                    assert!(
                        (got - exact).abs() <= 1e-6 * exact,
                        "({i}, {j}): {got} vs {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn combine_adds_like_a_per_coordinate_sum() {
        let cols: Vec<Vec<f32>> = (0..5).map(|i| random_vec(i + 40, RUN, 1e3)).collect();
        let weights = [0.2, 1.0 / 3.0, -0.5, 1e-3, 7.0];
        let mut out = vec![0.0f32; RUN];
        combine(
            &mut out,
            cols.iter().zip(weights).map(|(c, w)| (c.as_slice(), w)),
            |s| s as f32,
        );
        for (j, o) in out.iter().enumerate() {
            let sum: f64 = cols
                .iter()
                .zip(weights)
                .map(|(c, w)| w * f64::from(c[j]))
                .sum();
            assert_eq!(o.to_bits(), (sum as f32).to_bits(), "coordinate {j}");
        }
    }

    #[test]
    fn a_pass_finds_any_non_finite_input_and_measures_as_the_reductions_do() {
        let d = (SPAN_BLOCKS + 2) * BLOCK + 9;
        let mut cs: Vec<_> = (0..3)
            .map(|i| c(&format!("n{i}"), random_vec(i + 7, d, 1.0)))
            .collect();
        let mean = |cols: &[&[f32]], out: &mut [f32]| {
            combine(out, cols.iter().map(|col| (*col, 1.0 / 3.0)), |s| s as f32);
        };
        let clean = pass(&cs, vec![0.0; d], Measure::FINITE_AND_DISTANCES, mean);
        assert!(clean.finite);
        assert_eq!(clean.norm.to_bits(), norm(&clean.out).to_bits());
        for (c, distance) in cs.iter().zip(&clean.distances) {
            let sum = reduce_blocks(d, 1, |range, acc| {
                acc[0] += sq_dist(&c.delta[range.clone()], &clean.out[range]);
            });
            assert_eq!(distance.to_bits(), sum[0].sqrt().to_bits());
        }
        for (index, bad) in [
            (0, f32::NAN),
            (d - 1, f32::INFINITY),
            (BLOCK, f32::NEG_INFINITY),
        ] {
            let saved = cs[1].delta[index];
            cs[1].delta[index] = bad;
            assert!(!pass(&cs, vec![0.0; d], Measure::FINITE, mean).finite);
            // Not asked: not looked for.
            assert!(pass(&cs, vec![0.0; d], Measure::NOTHING, mean).finite);
            cs[1].delta[index] = saved;
        }
    }

    #[test]
    fn per_coordinate_hands_each_coordinate_all_values_in_input_order() {
        let d = BLOCK + 3;
        let cs: Vec<_> = (0..3)
            .map(|i| c("x", (0..d).map(|j| (j * 10 + i) as f32).collect()))
            .collect();
        let out = per_coordinate(&cs, d, Measure::NOTHING, |xs| {
            assert_eq!(xs.len(), 3);
            xs[2] - xs[0]
        });
        assert!(out.out.iter().all(|&v| v == 2.0));
    }
}
