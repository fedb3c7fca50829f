//! Which burn backends the node runs on: flex on the CPU by default, CUDA with `--features cuda`.

use burn::backend::{Autodiff, Flex};

/// CPU backend for inference and evaluation-free tools; always available.
pub type CpuBackend = Flex;

#[cfg(not(feature = "cuda"))]
pub type TrainInnerBackend = Flex;
#[cfg(feature = "cuda")]
pub type TrainInnerBackend = burn::backend::Cuda;

/// The trainer's backend: autodiff over the compute backend.
pub type TrainBackend = Autodiff<TrainInnerBackend>;

pub fn cpu_device() -> burn::tensor::ops::Device<CpuBackend> {
    Default::default()
}

pub fn train_device() -> burn::tensor::ops::Device<TrainInnerBackend> {
    Default::default()
}

/// Human-readable name of the training backend, for /api/stats and logs.
pub fn train_backend_name() -> &'static str {
    if cfg!(feature = "cuda") {
        "cuda"
    } else {
        "flex-cpu"
    }
}

/// Keeps memory freed by the training step in the process heap.
///
/// glibc hands every allocation above 32 MB straight back to the OS on free, so each large
/// activation of a training step was page-faulted and zeroed anew: at batch 32 on the micro preset
/// that cost about a third of the step (BENCHMARKS.md). A training loop allocates the same sizes
/// every step, so keeping them in the heap trades a stable peak footprint for that time.
pub fn keep_freed_memory_in_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; it is called before the threads
    // that allocate heavily are started.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
