//! Per-coordinate sorting of up to [`MAX_N`] contributions with a sorting network, vectorised
//! across coordinates: for a run of [`LANES`] coordinates, row i holds contribution i's values
//! and each compare-exchange is an element-wise min/max of two rows, so it runs on every lane at
//! once (the coordinate median and the trimmed mean spend their time here).
//!
//! Bit-identical to sorting each coordinate with `f32::total_cmp`: values are sorted as the i32
//! keys `total_cmp` itself compares (so −0.0 < +0.0, and equal keys are equal bits), and integer
//! min/max are exact on any instruction set, so every [`Simd`] path gives the same rows.

use super::Contribution;
use super::blocks::{self, Measure, Pass};
use neuroshard_kernels::Simd;

/// The most contributions the network sorts; rules fall back to a per-coordinate sort above it.
pub(super) const MAX_N: usize = 16;
/// Coordinates sorted together: a [`blocks::pass`]'s run, 16 rows of 128 i32 keys (8 KiB) in L1.
pub(super) const LANES: usize = blocks::RUN;
type Rows = [[i32; LANES]; MAX_N];

/// Batcher's odd–even merge sort for [`MAX_N`] inputs: 63 compare-exchanges (a, b), a < b, the
/// smaller value going to a (the tests rebuild it from Batcher's construction), handed to the
/// macro `$apply` as its arguments: the one list both kernels unroll or iterate. It sorts n < 16
/// inputs too: padded with keys no value exceeds, rows n..16 keep them throughout.
#[rustfmt::skip] // One line per stage of the network.
macro_rules! batcher_16 {
    ($apply:ident) => {
        $apply!(
            (0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15),
            (0, 2), (1, 3), (4, 6), (5, 7), (8, 10), (9, 11), (12, 14), (13, 15),
            (1, 2), (5, 6), (9, 10), (13, 14),
            (0, 4), (1, 5), (2, 6), (3, 7), (8, 12), (9, 13), (10, 14), (11, 15),
            (2, 4), (3, 5), (10, 12), (11, 13),
            (1, 2), (3, 4), (5, 6), (9, 10), (11, 12), (13, 14),
            (0, 8), (1, 9), (2, 10), (3, 11), (4, 12), (5, 13), (6, 14), (7, 15),
            (4, 8), (5, 9), (6, 10), (7, 11),
            (2, 4), (3, 5), (6, 8), (7, 9), (10, 12), (11, 13),
            (1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14)
        )
    };
}

macro_rules! pairs_array {
    ($(($a:literal, $b:literal)),*) => {
        [$(($a, $b)),*]
    };
}

/// [`batcher_16`] as a table.
const NETWORK: [(usize, usize); 63] = batcher_16!(pairs_array);
/// Lanes the AVX2 kernel sorts at once: 16 rows of 8 i32 keys are 16 registers, so the network
/// runs as register min/max (in memory, its loads and stores were most of the median's time).
#[cfg(target_arch = "x86_64")]
const GROUP: usize = 8;
/// A value whose [`key`] no value's key exceeds (i32::MAX, a NaN): rows n..16 hold it, so the
/// network for 16 sorts fewer inputs too.
const PAD: f32 = f32::from_bits(0x7fff_ffff);
/// [`PAD`]s standing in for the missing contributions' runs.
static PAD_RUN: [f32; LANES] = [PAD; LANES];

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

/// Lanes 0..len of rows 0..cols.len() of `rows` get the keys of `cols[i][..len]`, sorted per lane
/// (lanes from `len` on are to be ignored), on the kernel `simd` allows. Both kernels sort
/// exactly, so they give the same rows.
#[inline(always)]
fn load_and_sort(simd: Simd, rows: &mut Rows, cols: &[&[f32]], len: usize) {
    #[cfg(target_arch = "x86_64")]
    if simd != Simd::Baseline {
        // SAFETY: every Simd but the baseline implies AVX2 (AVX-512F includes it).
        unsafe { load_and_sort_avx2(rows, cols, len) };
        return;
    }
    let _ = simd;
    load_and_sort_in_memory(rows, cols, len);
}

/// Rows are the contributions' runs, padded to 16 rows; the network runs row against row over
/// all lanes, so each compare-exchange vectorises across coordinates with whatever the CPU has.
#[inline(always)]
fn load_and_sort_in_memory(rows: &mut Rows, cols: &[&[f32]], len: usize) {
    for (i, row) in rows.iter_mut().enumerate() {
        let col = cols.get(i).copied().unwrap_or(&PAD_RUN);
        for (r, &x) in row[..len].iter_mut().zip(&col[..len]) {
            *r = key(x);
        }
    }
    for &(a, b) in NETWORK.iter() {
        let (lo, hi) = rows.split_at_mut(b);
        for (x, y) in lo[a].iter_mut().zip(hi[0].iter_mut()) {
            let (p, q) = (*x, *y);
            *x = p.min(q);
            *y = p.max(q);
        }
    }
}

/// [`GROUP`] lanes at a time: load 16 rows of keys into registers, sort them there, store them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn load_and_sort_avx2(rows: &mut Rows, cols: &[&[f32]], len: usize) {
    use std::arch::x86_64::*;
    // What `key` does, on 8 lanes: flip the magnitude bits of negative values.
    let key8 = |bits: __m256i| {
        _mm256_xor_si256(bits, _mm256_srli_epi32::<1>(_mm256_srai_epi32::<31>(bits)))
    };
    let runs: [&[f32]; MAX_N] = std::array::from_fn(|i| cols.get(i).copied().unwrap_or(&PAD_RUN));
    for start in (0..len).step_by(GROUP) {
        let left = len - start;
        let mut g: [__m256i; MAX_N] = std::array::from_fn(|i| {
            let run = &runs[i][start..];
            key8(if left >= GROUP {
                // SAFETY: `run` holds at least 8 f32 (an unaligned 256-bit load).
                unsafe { _mm256_loadu_si256(run.as_ptr().cast()) }
            } else {
                let mut values = [0.0f32; GROUP];
                values[..left].copy_from_slice(&run[..left]);
                // SAFETY: `values` holds 8 f32.
                unsafe { _mm256_loadu_si256(values.as_ptr().cast()) }
            })
        });
        macro_rules! sort_by {
            ($(($a:literal, $b:literal)),*) => {
                $(
                    let (low, high) = (g[$a], g[$b]);
                    g[$a] = _mm256_min_epi32(low, high);
                    g[$b] = _mm256_max_epi32(low, high);
                )*
            };
        }
        batcher_16!(sort_by);
        for (row, sorted) in rows.iter_mut().zip(g) {
            // SAFETY: lanes start..start + 8 lie in the row (LANES is a multiple of GROUP).
            unsafe { _mm256_storeu_si256(row[start..start + GROUP].as_mut_ptr().cast(), sorted) };
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
    let simd = Simd::widest();
    blocks::pass(
        cs,
        vec![0.0f32; d],
        measure,
        #[inline(always)]
        |cols, out| {
            // A pass hands over one run: at most LANES coordinates.
            let mut rows = [[0i32; LANES]; MAX_N];
            load_and_sort(simd, &mut rows, cols, out.len());
            finish(&rows[..n], out);
        },
    )
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{c, random_vec};
    use super::super::{median, trimmed_mean};
    use super::*;

    /// [`NETWORK`] as Batcher's odd–even merge sort for [`MAX_N`] inputs builds it.
    fn network() -> Vec<(usize, usize)> {
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
        net
    }

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
        assert_eq!(network(), NETWORK);
        for simd in Simd::available() {
            for n in 1..=MAX_N {
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
                    let run: Vec<&[f32]> =
                        cols.iter().map(|col| &col[start..start + len]).collect();
                    simd.run(|| load_and_sort(simd, &mut rows, &run, len));
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
