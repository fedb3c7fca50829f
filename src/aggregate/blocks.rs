//! Coordinate-block machinery the rules share: parallel per-coordinate maps and deterministic
//! parallel reductions (squared distances), both over fixed blocks of [`BLOCK`] coordinates.
//!
//! Memory stays near one copy of the inputs: outputs are one vector of the delta's length, and a
//! reduction keeps `width` partial sums per span of [`SPAN_BLOCKS`] blocks. Results never depend on
//! the number of threads: each output coordinate is computed alone, and a reduction adds its blocks
//! in a fixed order inside each span and then the spans in order.

use std::ops::Range;

use rayon::prelude::*;

use super::Contribution;

/// Coordinates per block: n blocks of 4096 f32 (16 KiB each) stay in L2 while a block is worked on.
pub(super) const BLOCK: usize = 4096;
/// Blocks summed, in order, into one partial per parallel task of a reduction.
pub(super) const SPAN_BLOCKS: usize = 16;
const SPAN: usize = BLOCK * SPAN_BLOCKS;

/// The slices `range` of every contribution, in input order, into `cols` (reused across blocks).
pub(super) fn columns<'a>(cs: &'a [Contribution], range: Range<usize>, cols: &mut Vec<&'a [f32]>) {
    cols.clear();
    cols.extend(cs.iter().map(|c| &c.delta[range.clone()]));
}

/// Output vector of length `d`, filled block by block in parallel: `fill(cols, out)` gets the
/// contributions' slices of the block and the output slice of the same coordinates.
pub(super) fn fill_blocks(
    cs: &[Contribution],
    d: usize,
    fill: impl Fn(&[&[f32]], &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let mut out = vec![0.0f32; d];
    update_blocks(cs, &mut out, fill);
    out
}

/// Like [`fill_blocks`], updating `out` (of the contributions' length) in place.
pub(super) fn update_blocks(
    cs: &[Contribution],
    out: &mut [f32],
    update: impl Fn(&[&[f32]], &mut [f32]) + Sync + Send,
) {
    out.par_chunks_mut(BLOCK)
        .enumerate()
        .for_each_init(Vec::new, |cols, (b, chunk)| {
            let start = b * BLOCK;
            columns(cs, start..start + chunk.len(), cols);
            update(cols, chunk);
        });
}

/// Output vector whose coordinate j is `value(xs)` where `xs` holds the n contributions' values at j
/// (in input order; `value` may reorder them). One scratch buffer per block, none per coordinate.
pub(super) fn per_coordinate(
    cs: &[Contribution],
    d: usize,
    value: impl Fn(&mut [f32]) -> f32 + Sync + Send,
) -> Vec<f32> {
    let n = cs.len();
    let mut out = vec![0.0f32; d];
    out.par_chunks_mut(BLOCK).enumerate().for_each_init(
        || (Vec::with_capacity(n), vec![0.0f32; n]),
        |(cols, xs), (b, chunk)| {
            let start = b * BLOCK;
            columns(cs, start..start + chunk.len(), cols);
            for (j, o) in chunk.iter_mut().enumerate() {
                for (x, col) in xs.iter_mut().zip(cols.iter()) {
                    *x = col[j];
                }
                *o = value(xs);
            }
        },
    );
    out
}

/// Deterministic parallel sum over the coordinates 0..d of `width` quantities: `add(range, acc)`
/// adds the contribution of `range` (one block at most) into `acc`. Spans run in parallel; the
/// blocks of a span and then the spans are added in order, whatever the thread count.
pub(super) fn reduce_blocks(
    d: usize,
    width: usize,
    add: impl Fn(Range<usize>, &mut [f64]) + Sync + Send,
) -> Vec<f64> {
    let mut total = vec![0.0f64; width];
    if width == 0 || d == 0 {
        return total;
    }
    let mut partial = vec![0.0f64; d.div_ceil(SPAN) * width];
    partial
        .par_chunks_mut(width)
        .enumerate()
        .for_each(|(s, acc)| {
            let end = ((s + 1) * SPAN).min(d);
            let mut start = s * SPAN;
            while start < end {
                let stop = (start + BLOCK).min(end);
                add(start..stop, acc);
                start = stop;
            }
        });
    for span in partial.chunks_exact(width) {
        total.iter_mut().zip(span).for_each(|(t, p)| *t += p);
    }
    total
}

/// ‖a − b‖² accumulated in f64 (the difference of two finite f32 can overflow f32), in 8 lanes.
///
/// The same bits on every CPU: the AVX-512 variant (picked at run time) compiles the same body,
/// and Rust never reassociates or contracts (FMA) float operations, so each lane adds its terms in
/// the same order and the lanes are added in the same order whatever the vector width.
pub(super) fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { sq_dist_avx512(a, b) };
    }
    sq_dist_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn sq_dist_avx512(a: &[f32], b: &[f32]) -> f64 {
    sq_dist_body(a, b)
}

fn sq_dist_portable(a: &[f32], b: &[f32]) -> f64 {
    sq_dist_body(a, b)
}

#[inline(always)]
fn sq_dist_body(a: &[f32], b: &[f32]) -> f64 {
    const LANES: usize = 8;
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    let mut acc = [0.0f64; LANES];
    for (x, y) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            let t = f64::from(x) - f64::from(y);
            *s += t * t;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// The full n×n matrix (row-major) of squared L2 distances between contributions: one parallel
/// pass over the inputs, all pairs of a block computed while the block is in cache.
pub(super) fn pairwise_sq_distances(cs: &[Contribution], d: usize) -> Vec<f64> {
    let n = cs.len();
    let pairs: Vec<(usize, usize)> = (0..n)
        .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
        .collect();
    let sums = reduce_blocks(d, pairs.len(), |range, acc| {
        for (s, &(i, j)) in acc.iter_mut().zip(&pairs) {
            *s += sq_dist(&cs[i].delta[range.clone()], &cs[j].delta[range.clone()]);
        }
    });
    let mut matrix = vec![0.0f64; n * n];
    for (&(i, j), &s) in pairs.iter().zip(&sums) {
        matrix[i * n + j] = s;
        matrix[j * n + i] = s;
    }
    matrix
}

/// ‖xᵢ − center‖ for every contribution, in one parallel pass.
pub(super) fn distances_to(cs: &[Contribution], center: &[f32]) -> Vec<f64> {
    reduce_blocks(center.len(), cs.len(), |range, acc| {
        for (s, c) in acc.iter_mut().zip(cs) {
            *s += sq_dist(&c.delta[range.clone()], &center[range.clone()]);
        }
    })
    .into_iter()
    .map(f64::sqrt)
    .collect()
}

/// ‖v‖, reduced like [`distances_to`]: the same bits on every node.
pub(super) fn norm(v: &[f32]) -> f64 {
    const ZEROS: [f32; BLOCK] = [0.0; BLOCK];
    reduce_blocks(v.len(), 1, |range, acc| {
        acc[0] += sq_dist(&v[range.clone()], &ZEROS[..range.len()]);
    })[0]
        .sqrt()
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{c, random_vec};
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
            let portable = sq_dist_portable(&a, &b).to_bits();
            assert_eq!(sq_dist(&a, &b).to_bits(), portable, "len {len}");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F.
                let avx = unsafe { sq_dist_avx512(&a, &b) }.to_bits();
                assert_eq!(avx, portable, "len {len}");
            }
        }
    }

    #[test]
    fn reductions_cover_every_coordinate_once_across_blocks_and_spans() {
        let d = 2 * SPAN + 3 * BLOCK + 5;
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
        let m = pairwise_sq_distances(&cs, d);
        for i in 0..4 {
            assert_eq!(m[i * 4 + i], 0.0);
            for j in 0..4 {
                let naive = sq_dist(&cs[i].delta, &cs[j].delta);
                assert!((m[i * 4 + j] - naive).abs() <= 1e-9 * naive.max(1.0));
            }
        }
        let to = distances_to(&cs, &cs[2].delta);
        assert_eq!(to[2], 0.0);
        assert!((to[0] - m[2].sqrt()).abs() < 1e-9 * to[0]);
    }

    #[test]
    fn per_coordinate_hands_each_coordinate_all_values_in_input_order() {
        let d = BLOCK + 3;
        let cs: Vec<_> = (0..3)
            .map(|i| c("x", (0..d).map(|j| (j * 10 + i) as f32).collect()))
            .collect();
        let out = per_coordinate(&cs, d, |xs| {
            assert_eq!(xs.len(), 3);
            xs[2] - xs[0]
        });
        assert!(out.iter().all(|&v| v == 2.0));
    }
}
