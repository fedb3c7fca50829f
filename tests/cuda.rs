//! The GPU path: a few training steps of the node's own Trainer on burn-cuda. It runs when the
//! tests are built with `--features cuda` on a machine with an NVIDIA GPU, and is skipped, saying
//! why, everywhere else (CI has no GPU):
//!
//!   cargo test --features cuda --test cuda -- --nocapture

use std::path::Path;
use std::sync::Arc;

use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use neuroshard::model::backend::{CpuBackend, cpu_device, train_backend_name};
use neuroshard::model::corpus::builtin_corpus;
use neuroshard::model::data::{Batch, TokenDataset};
use neuroshard::model::fused::FusedOps;
use neuroshard::model::optim::{AdamWConfig, LrSchedule};
use neuroshard::model::params::{flatten, unflatten};
use neuroshard::model::training::{OptimizerPlacement, Trainer, TrainerOptions};
use neuroshard::model::{NeuroLlm, NeuroLlmConfig};

/// Why the GPU test cannot run here, if it cannot.
fn skip_reason() -> Option<&'static str> {
    if !cfg!(feature = "cuda") {
        return Some("built without --features cuda, so the trainer runs on the CPU");
    }
    if !Path::new("/dev/nvidia0").exists() && !Path::new("/proc/driver/nvidia/version").exists() {
        return Some("no NVIDIA GPU on this machine (/dev/nvidia0 is absent)");
    }
    None
}

/// The mean loss of `model` on `batch`, read back to the host.
fn loss_on<B: FusedOps>(model: &NeuroLlm<B>, batch: &Batch, device: &B::Device) -> f32 {
    let shape = [batch.batch, batch.seq_len];
    let tokens = |values: &[i32]| {
        Tensor::<B, 2, Int>::from_data(TensorData::new(values.to_vec(), shape), device)
    };
    model
        .loss(tokens(&batch.inputs), tokens(&batch.targets))
        .into_scalar()
        .elem()
}

#[test]
fn a_few_training_steps_run_on_the_gpu() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    assert_eq!(train_backend_name(), "cuda");
    let config = NeuroLlmConfig::preset("micro").unwrap();
    let data =
        Arc::new(TokenDataset::new(&builtin_corpus(400, 0), config.max_seq_len, 0.05, 0).unwrap());
    let theta0 = flatten(&config.init::<CpuBackend>(&cpu_device()));
    let options = TrainerOptions {
        batch_size: 4,
        schedule: LrSchedule {
            peak_lr: 3e-3,
            warmup_steps: 2,
            total_steps: 1000,
            min_lr_ratio: 1.0,
        },
        inner_steps: 100,
        adamw: AdamWConfig::default(),
        eval_sequences: 4,
        optimizer: OptimizerPlacement::for_backend(),
    };
    assert_eq!(options.optimizer, OptimizerPlacement::Device);
    let mut trainer = Trainer::new(&config, data.clone(), options, &theta0, 0, None);

    // The GPU's forward pass computes what the CPU's does from the same θ₀ (TF32 matmuls allowed).
    let held_out = &data.val_batches(4, 4)[0];
    let cpu_model = unflatten(config.init::<CpuBackend>(&cpu_device()), &theta0);
    let cpu_loss = loss_on(&cpu_model, held_out, &cpu_device());
    let gpu_loss = trainer.evaluate();
    eprintln!("held-out loss at θ₀: CPU {cpu_loss:.6}, GPU {gpu_loss:.6}");
    assert!(
        (cpu_loss - gpu_loss).abs() < 1e-2 * cpu_loss,
        "GPU loss {gpu_loss} is not the CPU's {cpu_loss}"
    );

    // Twenty steps on one repeated batch: the loss must fall and every value stay finite.
    let first = trainer.step();
    let mut last = first;
    for _ in 0..19 {
        trainer.counters.data_cursor = 0;
        last = trainer.step();
        assert!(last.loss.is_finite() && last.grad_norm.is_finite());
    }
    eprintln!(
        "training loss on one batch: {} -> {}",
        first.loss, last.loss
    );
    assert!(
        last.loss < 0.7 * first.loss,
        "loss {} -> {}",
        first.loss,
        last.loss
    );

    // The parameters and AdamW's moments come back to the host for checkpoints and deltas.
    let snapshot = trainer.snapshot();
    assert_eq!(snapshot.params.len(), theta0.len());
    assert_eq!(snapshot.adam.t, 20);
    assert!(snapshot.params.iter().all(|x| x.is_finite()));
    let moved = snapshot
        .params
        .iter()
        .zip(&theta0)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(moved > 1e-3, "the steps did not move θ (max |Δ| {moved})");
}
