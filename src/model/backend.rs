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
