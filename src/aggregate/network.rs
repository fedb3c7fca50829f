//! Per-coordinate sorting of up to [`MAX_N`] contributions with a sorting network, vectorised
//! across coordinates: for a run of [`LANES`] coordinates, row i holds contribution i's values
//! and each compare-exchange is an element-wise min/max of two rows, so it runs on every lane at
//! once (the coordinate median and the trimmed mean spend their time here).
//!
//! Bit-identical to sorting each coordinate with `f32::total_cmp`: values are sorted as the i32
//! keys `total_cmp` itself compares (so −0.0 < +0.0, and equal keys are equal bits), and integer
//! min/max are exact on any instruction set, so every [`blocks::Simd`] path gives the same rows.

use super::Contribution;
use super::blocks::{self, Measure, Pass};

/// The most contributions the network sorts; rules fall back to a per-coordinate sort above it.
pub(super) const MAX_N: usize = 16;
/// Coordinates sorted together: 16 rows of 128 i32 keys (8 KiB) stay in L1.
pub(super) const LANES: usize = 128;
type Rows = [[i32; LANES]; MAX_N];

/// Batcher's odd–even merge sort for [`MAX_N`] inputs (63 compare-exchanges (a, b), a < b: the
/// smaller value goes to a), keeping those with b < n. That sorts n inputs: padded with n..16
/// holding +∞, every position from n on keeps a +∞ throughout, so the dropped ones never swap.
fn network(n: usize) -> Vec<(usize, usize)> {
    let mut net = Vec::new();
    let mut p = 1;
    while p < MAX_N {
        let mut k = p;
        while k >= 1 {
            let mut j = k % p;
            while j + k < MAX_N {
                for i in 0..k.min(MAX_N - j - k) {
                    if (i + j) / (2 * p) == (i + j + k) / (2 * p) {
                        net.push((i + j, i + j + k));
                    }
                }
                j += 2 * k;
            }
            k /= 2;
        }
        p *= 2;
    }
    net.retain(|&(_, b)| b < n);
    net
}

/// The i32 whose order is `f32::total_cmp`'s (the same transform `total_cmp` applies).
#[inline(always)]
fn key(x: f32) -> i32 {
    let b = x.to_bits() as i32;
    b ^ (((b >> 31) as u32) >> 1) as i32
}

/// The f32 of a [`key`] (the transform is its own inverse: it keeps the sign bit).
#[inline(always)]
pub(super) fn value(k: i32) -> f32 {
    f32::from_bits((k ^ (((k >> 31) as u32) >> 1) as i32) as u32)
}

/// Rows 0..cols.len() of `rows`, lanes 0..len, get the keys of `cols[i][start..start + len]`, then
/// every lane is sorted by `net` (lanes from `len` on hold stale keys, sorted and ignored).
/// Compiled into its caller, which [`blocks::pass`] runs on the widest [`blocks::Simd`].
#[inline(always)]
fn load_and_sort(
    rows: &mut Rows,
    cols: &[&[f32]],
    start: usize,
    len: usize,
    net: &[(usize, usize)],
) {
    for (row, col) in rows.iter_mut().zip(cols) {
        for (r, &x) in row[..len].iter_mut().zip(&col[start..start + len]) {
            *r = key(x);
        }
    }
    for &(a, b) in net {
        let (lo, hi) = rows.split_at_mut(b);
        for (x, y) in lo[a].iter_mut().zip(hi[0].iter_mut()) {
            let (p, q) = (*x, *y);
            *x = p.min(q);
            *y = p.max(q);
        }
    }
}

/// A [`blocks::pass`] whose output (length `d`, 1 ≤ n ≤ [`MAX_N`] contributions) is filled,
/// [`LANES`] coordinates at a time, by `finish(rows, out)`: `rows[i][l]` is the key ([`value`]
/// gives the f32) of the i-th smallest of the n values at coordinate l of `out` (lanes past
/// `out.len()` are to be ignored).
pub(super) fn per_coordinate_sorted(
    cs: &[Contribution],
    d: usize,
    measure: Measure,
    finish: impl Fn(&[[i32; LANES]], &mut [f32]) + Sync + Send,
) -> Pass {
    let n = cs.len();
    assert!(
        (1..=MAX_N).contains(&n),
        "{n} contributions for the network"
    );
    let net = network(n);
    blocks::pass(
        cs,
        vec![0.0f32; d],
        measure,
        #[inline(always)]
        |cols, out| {
            let mut rows = [[0i32; LANES]; MAX_N];
            for (s, chunk) in out.chunks_mut(LANES).enumerate() {
                load_and_sort(&mut rows, cols, s * LANES, chunk.len(), &net);
                finish(&rows[..n], chunk);
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{c, random_vec};
    use super::super::{median, trimmed_mean};
    use super::*;

    #[test]
    fn keys_order_like_total_cmp_and_round_trip() {
        let xs = [
            -f32::MAX,
            -1.5,
            -f32::MIN_POSITIVE,
            -1e-45,
            -0.0,
            0.0,
            1e-45,
            f32::MIN_POSITIVE,
            2.0,
            f32::MAX,
        ];
        for &x in &xs {
            assert_eq!(value(key(x)).to_bits(), x.to_bits());
            for &y in &xs {
                assert_eq!(key(x).cmp(&key(y)), x.total_cmp(&y), "{x} {y}");
            }
        }
    }

    /// The 0–1 principle: a network sorts every input iff it sorts every input of 0s and 1s.
    #[test]
    fn the_network_sorts_every_zero_one_input_for_every_n() {
        assert_eq!(network(MAX_N).len(), 63);
        for simd in blocks::Simd::available() {
            for n in 1..=MAX_N {
                let net = network(n);
                let patterns = 1usize << n;
                let mut cols = vec![vec![0.0f32; patterns]; n];
                for (i, col) in cols.iter_mut().enumerate() {
                    for (p, x) in col.iter_mut().enumerate() {
                        *x = ((p >> i) & 1) as f32;
                    }
                }
                let cols: Vec<&[f32]> = cols.iter().map(Vec::as_slice).collect();
                let mut rows = [[0i32; LANES]; MAX_N];
                for start in (0..patterns).step_by(LANES) {
                    let len = LANES.min(patterns - start);
                    simd.run(|| load_and_sort(&mut rows, &cols, start, len, &net));
                    for l in 0..len {
                        let ones = (start + l).count_ones() as usize;
                        for (i, row) in rows[..n].iter().enumerate() {
                            let want = if i >= n - ones { 1.0f32 } else { 0.0 };
                            assert_eq!(value(row[l]), want, "{simd:?} n {n} pattern {}", start + l);
                        }
                    }
                }
            }
        }
    }

    /// Values with many ties, both zeros, subnormals and extremes.
    fn tricky(seed: u64, d: usize) -> Vec<f32> {
        const SPECIAL: [f32; 9] = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            1e-45,
            -1e-45,
            f32::MAX,
            -f32::MAX,
            0.5,
        ];
        let pick = random_vec(seed, d, 1.0);
        let noise = random_vec(seed + 1000, d, 3.0);
        pick.iter()
            .zip(&noise)
            .map(|(&p, &x)| {
                let u = ((p + 1.0) * 8.0) as usize;
                if u < SPECIAL.len() {
                    SPECIAL[u]
                } else if u < 12 {
                    // Coarse values: ties between contributions.
                    x.round()
                } else {
                    x
                }
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn median_and_trimmed_mean_are_bit_identical_to_per_coordinate_sorting() {
        let d = blocks::BLOCK + LANES + 37;
        for n in 1..=MAX_N {
            let cs: Vec<_> = (0..n)
                .map(|i| c(&format!("n{i}"), tricky(17 * n as u64 + i as u64, d)))
                .collect();
            // Some coordinates where every value is a zero of either sign.
            let mut cs = cs;
            for (i, contribution) in cs.iter_mut().enumerate() {
                for j in 0..40 {
                    contribution.delta[j] = if (i + j) % 3 == 0 { -0.0 } else { 0.0 };
                }
                contribution.delta[40] = -0.0;
            }
            let fast = median::median_pass(&cs, d, Measure::NOTHING).out;
            let slow = blocks::per_coordinate(&cs, d, Measure::NOTHING, median::median_of).out;
            assert_eq!(bits(&fast), bits(&slow), "median, n = {n}");
            assert_eq!(fast[40].to_bits(), (-0.0f32).to_bits());
            for k in 0..n.div_ceil(2) {
                let fast = trimmed_mean::trimmed_mean_pass(&cs, d, k, Measure::NOTHING).out;
                let slow = blocks::per_coordinate(&cs, d, Measure::NOTHING, |xs| {
                    trimmed_mean::trimmed_mean_of(xs, k)
                })
                .out;
                assert_eq!(bits(&fast), bits(&slow), "trimmed mean, n = {n}, k = {k}");
            }
        }
    }
}
