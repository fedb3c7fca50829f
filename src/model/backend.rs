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

/// The nice value of the threads that train and aggregate. Only contention makes it matter: a
/// node alone on its cores trains at full speed, but its API, network and ledger threads (and the
/// rest of the volunteer's machine) get a core first when they wake (BENCHMARKS.md, API latency).
pub const COMPUTE_NICE: i32 = 10;

/// Lowers the calling thread to [`COMPUTE_NICE`] (on Linux the nice value is per thread).
pub fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on the calling thread's own id changes only its scheduling weight.
    unsafe {
        let tid = libc::gettid();
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, COMPUTE_NICE) != 0 {
            tracing::debug!("could not lower the compute threads' priority");
        }
    }
}

/// Builds rayon's global pool (burn's CPU kernels and the aggregation run on it) with every
/// thread at [`COMPUTE_NICE`]. Call before anything uses rayon; later calls change nothing.
pub fn lower_compute_pool_priority() {
    let _ = rayon::ThreadPoolBuilder::new()
        .start_handler(|_| lower_thread_priority())
        .build_global();
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
