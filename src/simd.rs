//! Run-time choice of vector instructions for the hot loops, so one portable binary vectorises on
//! every x86 CPU.

/// The vector instructions the hot loops (the aggregation rules, the CPU training kernels) are compiled for, picked at run time so that one
/// portable binary vectorises on every x86 CPU: the build's baseline is SSE2, which has no 32-bit
/// integer min/max and only 2-lane f64 arithmetic, so an AVX2-only CPU ran the sorting network
/// and the distances several times slower than it can.
///
/// Every path gives the same bits: Rust never reassociates or contracts (FMA) float operations,
/// so a loop adds its terms in the same order whatever the vector width, and integer min/max are
/// exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Simd {
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
    #[cfg(test)]
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
