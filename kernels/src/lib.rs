//! NeuroShard's CPU kernels, in a crate of their own so that they are compiled optimised in every
//! profile (the node's crate is built at opt-level 0 for tests, where these loops ran 40% of a
//! training step slower than burn's own unfused operations): the run-time choice of vector
//! instructions ([`Simd`]) and the fused training operations of `neuroshard::model::fused` on
//! f32 slices.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// The vector instructions the hot loops (the aggregation rules, the CPU training kernels) are compiled for, picked at run time so that one
/// portable binary vectorises on every x86 CPU: the build's baseline is SSE2, which has no 32-bit
/// integer min/max and only 2-lane f64 arithmetic, so an AVX2-only CPU ran the sorting network
/// and the distances several times slower than it can.
///
/// Every path gives the same bits: Rust never reassociates or contracts (FMA) float operations,
/// so a loop adds its terms in the same order whatever the vector width, and integer min/max are
/// exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simd {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Simd {
    /// The widest instruction set this CPU runs.
    #[inline(always)]
    pub fn widest() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Simd::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Simd::Avx2;
            }
        }
        Simd::Baseline
    }

    /// Every instruction set this CPU runs, the baseline first (the tests compare them).
    pub fn available() -> Vec<Self> {
        let mut all = vec![Simd::Baseline];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                all.push(Simd::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                all.push(Simd::Avx512);
            }
        }
        all
    }

    /// Runs `work` compiled for this instruction set: `work` and what it inlines (the kernels
    /// here are `#[inline(always)]`) are code-generated inside a `#[target_feature]` function.
    #[inline(always)]
    pub fn run<R>(self, work: impl FnOnce() -> R) -> R {
        match self {
            Simd::Baseline => work(),
            // SAFETY: `widest` and `available` return a variant only when the CPU has it.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { run_avx2(work) },
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => unsafe { run_avx512(work) },
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn run_avx2<R>(work: impl FnOnce() -> R) -> R {
    work()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn run_avx512<R>(work: impl FnOnce() -> R) -> R {
    work()
}

/// Values per parallel task of an elementwise kernel: large enough to amortise a task, small
/// enough to split a step's activations over the cores.
const ELEMENTS_PER_TASK: usize = 1 << 14;
/// Softmax rows per parallel task.
const ROWS_PER_TASK: usize = 64;
/// Lanes of the row reductions: independent partial maxima and sums let the loops vectorise
/// (Rust keeps float additions in program order, so one running sum would stay scalar).
const LANES: usize = 8;

/// Causal softmax of `scores` [rows, seq], row `r` being query position `r % seq`, which sees
/// keys `0..=r % seq`; the others get probability 0. Compiled for `simd`.
pub fn causal_softmax(simd: Simd, scores: &[f32], seq: usize) -> Vec<f32> {
    by_rows(simd, scores.len(), seq, |r, row| {
        causal_softmax_row(&scores[r * seq..(r + 1) * seq], r % seq + 1, row)
    })
}

/// The gradient of a row softmax over rows of `seq` from its output `probs` and the output's
/// gradient `grad`: `probs ⊙ (grad − Σ_row grad ⊙ probs)`.
pub fn softmax_backward(simd: Simd, probs: &[f32], grad: &[f32], seq: usize) -> Vec<f32> {
    by_rows(simd, probs.len(), seq, |r, row| {
        let at = r * seq..(r + 1) * seq;
        softmax_backward_row(&probs[at.clone()], &grad[at], row)
    })
}

/// `silu(gate) ⊙ up`, elementwise.
pub fn swiglu(simd: Simd, gate: &[f32], up: &[f32]) -> Vec<f32> {
    filled(gate.len(), ELEMENTS_PER_TASK, |start, out| {
        simd.run(
            #[inline(always)]
            || {
                let at = start..start + out.len();
                for ((o, &a), &b) in out.iter_mut().zip(&gate[at.clone()]).zip(&up[at]) {
                    o.write(a * sigmoid(a) * b);
                }
            },
        )
    })
}

/// The gradients of [`swiglu`] with respect to `gate` and `up`, given the output's gradient.
pub fn swiglu_backward(simd: Simd, gate: &[f32], up: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>) {
    filled_pair(gate.len(), ELEMENTS_PER_TASK, |start, d_a, d_b| {
        simd.run(
            #[inline(always)]
            || {
                let at = start..start + d_a.len();
                let (a, b, g) = (&gate[at.clone()], &up[at.clone()], &grad[at]);
                let d_b = &mut d_b[..a.len()];
                for i in 0..d_a.len() {
                    let (a, b, g) = (a[i], b[i], g[i]);
                    let s = sigmoid(a);
                    d_a[i].write(g * b * s * (a * (1.0 - s) + 1.0));
                    d_b[i].write(g * a * s);
                }
            },
        )
    })
}

/// `x` of shape [a, b, c, d] as [a, c, b, d], each row of d values copied whole.
pub fn swap_middle_dims(x: &[f32], [a, b, c, d]: [usize; 4]) -> Vec<f32> {
    // Output row (i, k, j) is input row (i, j, k); a task writes whole [b, d] blocks.
    filled(
        a * c * b * d,
        (ELEMENTS_PER_TASK / (b * d)).max(1) * b * d,
        |start, out| {
            for (n, row) in out.chunks_mut(d).enumerate() {
                let (i_k, j) = ((start / d + n) / b, (start / d + n) % b);
                let (i, k) = (i_k / c, i_k % c);
                let from = ((i * b + j) * c + k) * d;
                for (o, &v) in row.iter_mut().zip(&x[from..from + d]) {
                    o.write(v);
                }
            }
        },
    )
}

/// A new [n / seq, seq] buffer whose row `r` is written by `row(r, slots)`, rows in parallel,
/// compiled for `simd`; `row` must write every slot.
#[inline(always)]
fn by_rows(
    simd: Simd,
    n: usize,
    seq: usize,
    row: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    filled(n, ROWS_PER_TASK * seq, |start, out| {
        simd.run(
            #[inline(always)]
            || {
                for (i, slots) in out.chunks_mut(seq).enumerate() {
                    row(start / seq + i, slots);
                }
            },
        )
    })
}

/// A new vector of `n` values, written in parallel by `fill(start, slots)` for each chunk of
/// `chunk` slots beginning at `start`; `fill` must write every slot it is given. Skips zeroing the
/// buffer first: that would be one more pass over memory per output.
fn filled(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(i, slots)| fill(i * chunk, slots));
    // SAFETY: the chunks cover all n slots and each `fill` writes every slot of its chunk.
    unsafe { out.set_len(n) };
    out
}

/// Two vectors written together, as in [`filled`].
fn filled_pair(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>], &mut [MaybeUninit<f32>]) + Sync,
) -> (Vec<f32>, Vec<f32>) {
    let (mut first, mut second) = (Vec::with_capacity(n), Vec::with_capacity(n));
    first.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk)
        .zip(second.spare_capacity_mut()[..n].par_chunks_mut(chunk))
        .enumerate()
        .for_each(|(i, (a, b))| fill(i * chunk, a, b));
    // SAFETY: as in `filled`, for both vectors.
    unsafe {
        first.set_len(n);
        second.set_len(n);
    }
    (first, second)
}

/// One row of [`FusedOps::causal_softmax`]: the first `visible` scores normalised, the rest 0.
#[inline(always)]
fn causal_softmax_row(scores: &[f32], visible: usize, out: &mut [MaybeUninit<f32>]) {
    let (seen, hidden) = out.split_at_mut(visible);
    let max = lane_max(&scores[..visible]);
    for (o, &x) in seen.iter_mut().zip(&scores[..visible]) {
        o.write(exp(x - max));
    }
    for o in hidden {
        o.write(0.0);
    }
    // SAFETY: every slot of `seen` was written just above.
    let seen = unsafe { &mut *(seen as *mut [MaybeUninit<f32>] as *mut [f32]) };
    let inverse = 1.0 / lane_sum(seen);
    for p in seen {
        *p *= inverse;
    }
}

/// One row of [`FusedOps::softmax_backward`].
#[inline(always)]
fn softmax_backward_row(probs: &[f32], grad: &[f32], out: &mut [MaybeUninit<f32>]) {
    let dot = lane_dot(probs, grad);
    for ((o, &p), &g) in out.iter_mut().zip(probs).zip(grad) {
        o.write(p * (g - dot));
    }
}

#[inline(always)]
fn lane_max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    tail.iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

#[inline(always)]
fn lane_sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (s, &x) in lanes.iter_mut().zip(chunk) {
            *s += x;
        }
    }
    lanes.iter().chain(tail).sum()
}

#[inline(always)]
fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let (chunks_a, chunks_b) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail = chunks_a.remainder().iter().zip(chunks_b.remainder());
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for ((s, &x), &y) in lanes.iter_mut().zip(ca).zip(cb) {
            *s += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail.map(|(x, y)| x * y).sum::<f32>()
}

/// `1 / (1 + e^(−x))`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// e^x in f32 without branches, so that loops over it vectorise (libm's `expf` is a scalar call):
/// x = n·ln 2 + r with |r| ≤ ln 2 / 2, e^r from Cephes' degree-6 polynomial, 2ⁿ built in the
/// exponent bits. Within 2 ulp of the true value; 0 below −87.3 (where e^x is subnormal) and +∞
/// above 88.3; NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOWEST: f32 = -87.3;
    const HIGHEST: f32 = 88.3;
    // Adding 1.5·2²³ rounds to an integer, which then sits in the low bits of the mantissa.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 in two parts, so that n·LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = x.clamp(LOWEST, HIGHEST);
    let shifted = clamped * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let poly = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e_r = poly * r * r + r + 1.0;
    let exponent = (shifted.to_bits() as i32 - ROUND.to_bits() as i32 + 127) as u32;
    let y = e_r * f32::from_bits(exponent << 23);
    if x < LOWEST {
        0.0
    } else if x > HIGHEST {
        f32::INFINITY
    } else {
        y
    }
}

/// Products of int8 codes summed in i32 before they are widened: at most this many, each at most
/// 127² in magnitude, so an i32 cannot overflow (2¹⁶ · 127² < 2³¹).
const INT8_PRODUCTS_PER_I32: usize = 1 << 16;

/// Adds the Gram matrix of n int8-coded vectors over the blocks `payloads` hold to `triangle`,
/// its upper triangle with the diagonal, row by row: (0,0), (0,1), …, (0,n−1), (1,1), ….
/// Every payload holds the same blocks of the int8 codec's layout, each `[f32 scale,
/// little-endian][block codes, i8 in −127..=127]`, the last one possibly shorter. Per block the
/// dot product of two inputs' codes is an exact integer; it is multiplied by the product of their
/// scales (exact in f64) and added to the triangle block after block, so the result has the same
/// bits on every path. Compiled for `simd`.
pub fn int8_gram(simd: Simd, block: usize, payloads: &[&[u8]], triangle: &mut [f64]) {
    let n = payloads.len();
    assert_eq!(triangle.len(), n * (n + 1) / 2, "triangle of n = {n}");
    let len = payloads.first().map_or(0, |p| p.len());
    assert!(payloads.iter().all(|p| p.len() == len), "unequal payloads");
    simd.run(
        #[inline(always)]
        || {
            // Each block's codes widened to i16 once, not once per pair they are in.
            let mut wide = vec![0i16; n * block];
            let mut scales = vec![0.0f64; n];
            let mut offset = 0;
            while offset < len {
                let values = (len - offset - 4).min(block);
                for ((p, scale), wide) in
                    payloads.iter().zip(&mut scales).zip(wide.chunks_mut(block))
                {
                    let bytes: [u8; 4] = p[offset..offset + 4].try_into().expect("4 bytes");
                    *scale = f64::from(f32::from_le_bytes(bytes));
                    for (w, &q) in wide.iter_mut().zip(&p[offset + 4..offset + 4 + values]) {
                        *w = i16::from(q as i8);
                    }
                }
                let mut entry = triangle.iter_mut();
                for i in 0..n {
                    let a = &wide[i * block..i * block + values];
                    for j in i..n {
                        let b = &wide[j * block..j * block + values];
                        let product = (scales[i] * scales[j]) * int_dot(a, b) as f64;
                        *entry.next().expect("triangle of n") += product;
                    }
                }
                offset += 4 + values;
            }
        },
    )
}

/// Σ aₖ·bₖ, exact. Written as a widening multiply-add, which vectorises (pmaddwd).
#[inline(always)]
fn int_dot(a: &[i16], b: &[i16]) -> i64 {
    a.chunks(INT8_PRODUCTS_PER_I32)
        .zip(b.chunks(INT8_PRODUCTS_PER_I32))
        .map(|(a, b)| {
            let sum: i32 = a
                .iter()
                .zip(b)
                .map(|(&x, &y)| i32::from(x) * i32::from(y))
                .sum();
            i64::from(sum)
        })
        .sum()
}
