//! Training throughput of NeuroLLM on this machine: burn (this crate's Trainer: forward, backward,
//! clipping, AdamW) against the same architecture in JAX (benches/jax_neurollm.py), both run here,
//! in the same invocation, with the ratio printed, and each against the fp32 matmul peak that
//! burn reaches on the training backend, measured first in the same run.
//!
//!   cargo bench --bench train_throughput -- [--preset micro] [--steps 10] [--batches 8,32] [--skip-jax]
//!   cargo bench --bench train_throughput --features cuda -- --preset bootstrap --batches 8
//!
//! With `--features cuda` burn trains on the GPU and JAX runs on the GPU too (`--device gpu`).
//! `--optimizer host|device` overrides where AdamW runs (default: the backend's choice).
//! Needs `pip install jax optax` for the baseline; without it the JAX column says so.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::{Distribution, ElementConversion, Tensor};
use neuroshard::model::NeuroLlmConfig;
use neuroshard::model::backend::{
    CpuBackend, TrainInnerBackend, cpu_device, train_backend_name, train_device,
};
use neuroshard::model::corpus::builtin_corpus;
use neuroshard::model::data::TokenDataset;
use neuroshard::model::optim::{AdamWConfig, LrSchedule};
use neuroshard::model::params::flatten;
use neuroshard::model::training::{OptimizerPlacement, Trainer, TrainerOptions};

struct Args {
    preset: String,
    steps: usize,
    warmup: usize,
    batches: Vec<usize>,
    threads: usize,
    /// Measure burn only (e.g. under a profiler).
    skip_jax: bool,
    optimizer: OptimizerPlacement,
    /// Internal: measure burn at this one batch size in this process and print tokens/s.
    child_batch: Option<usize>,
}

fn parse_args() -> Args {
    let mut args = Args {
        preset: "micro".into(),
        steps: 10,
        warmup: 2,
        batches: vec![8, 32],
        threads: 2,
        skip_jax: false,
        optimizer: OptimizerPlacement::for_backend(),
        child_batch: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--preset" => args.preset = value(),
            "--steps" => args.steps = value().parse().expect("--steps N"),
            "--warmup" => args.warmup = value().parse().expect("--warmup N"),
            "--threads" => args.threads = value().parse().expect("--threads N"),
            "--batches" => {
                args.batches = value()
                    .split(',')
                    .map(|b| b.parse().expect("--batches 8,32"))
                    .collect()
            }
            "--skip-jax" => args.skip_jax = true,
            "--optimizer" => {
                args.optimizer = match value().as_str() {
                    "host" => OptimizerPlacement::Host,
                    "device" => OptimizerPlacement::Device,
                    other => panic!("--optimizer host|device, not {other}"),
                }
            }
            "--child-batch" => args.child_batch = Some(value().parse().expect("--child-batch N")),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// Tokens per second of `steps` timed inner steps after `warmup` untimed ones.
fn burn_tokens_per_sec(config: &NeuroLlmConfig, batch: usize, args: &Args) -> f64 {
    let data = Arc::new(
        TokenDataset::new(&builtin_corpus(4_000, 0), config.max_seq_len, 0.05, 0).unwrap(),
    );
    let options = TrainerOptions {
        batch_size: batch,
        schedule: LrSchedule {
            peak_lr: 3e-4,
            warmup_steps: 0,
            total_steps: 1_000_000,
            min_lr_ratio: 1.0,
        },
        // One round longer than the run: every step is an inner step of round 0.
        inner_steps: u64::MAX,
        adamw: AdamWConfig::default(),
        eval_sequences: 8,
        optimizer: args.optimizer,
    };
    let theta0 = flatten(&config.init::<CpuBackend>(&cpu_device()));
    let mut trainer = Trainer::new(config, data, options, &theta0, 0, None);
    for _ in 0..args.warmup {
        trainer.step();
    }
    let start = Instant::now();
    let tokens: u64 = (0..args.steps).map(|_| trainer.step().tokens).sum();
    tokens as f64 / start.elapsed().as_secs_f64()
}

/// Runs [`burn_tokens_per_sec`] in a fresh process, as the JAX baseline runs: one measurement's
/// heap must not shape the next one's.
fn burn_in_child(batch: usize, args: &Args) -> f64 {
    let out = Command::new(std::env::current_exe().expect("own path"))
        .args([
            "--preset",
            &args.preset,
            "--steps",
            &args.steps.to_string(),
            "--warmup",
            &args.warmup.to_string(),
            "--optimizer",
            placement_name(args.optimizer),
            "--child-batch",
            &batch.to_string(),
        ])
        .output()
        .expect("re-run the benchmark");
    assert!(
        out.status.success(),
        "burn run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("tokens/s from the burn run")
}

fn jax_tokens_per_sec(batch: usize, args: &Args) -> Result<f64, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/jax_neurollm.py");
    let out = Command::new("python3")
        .args([
            script,
            "--preset",
            &args.preset,
            "--batch",
            &batch.to_string(),
            "--steps",
            &args.steps.to_string(),
            "--warmup",
            &args.warmup.to_string(),
            "--threads",
            &args.threads.to_string(),
            "--device",
            if on_gpu() { "gpu" } else { "cpu" },
        ])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().last().unwrap_or("failed").to_string());
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(line.trim())
        .map_err(|e| format!("bad JSON from the JAX script: {e}"))?;
    json["tokens_per_sec"]
        .as_f64()
        .ok_or_else(|| "no tokens_per_sec".into())
}

fn on_gpu() -> bool {
    train_backend_name() == "cuda"
}

fn placement_name(placement: OptimizerPlacement) -> &'static str {
    match placement {
        OptimizerPlacement::Host => "host",
        OptimizerPlacement::Device => "device",
    }
}

/// GFLOP/s of a square fp32 matmul on the training backend (2 n³ per product), the ceiling the
/// training steps are compared with: 2048² on the CPU, 8192² on a GPU.
fn matmul_peak_gflops() -> f64 {
    let (n, reps) = if on_gpu() { (8192, 20) } else { (2048, 5) };
    let device = train_device();
    let a = Tensor::<TrainInnerBackend, 2>::random([n, n], Distribution::Default, &device);
    let b = Tensor::<TrainInnerBackend, 2>::random([n, n], Distribution::Default, &device);
    let product = || {
        let sum: f32 = a.clone().matmul(b.clone()).sum().into_scalar().elem();
        assert!(sum.is_finite());
    };
    product();
    product();
    let start = Instant::now();
    for _ in 0..reps {
        product();
    }
    2.0 * (n as f64).powi(3) * reps as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let args = parse_args();
    // as the node does (src/main.rs)
    neuroshard::model::backend::keep_freed_memory_in_heap();
    let config = NeuroLlmConfig::preset(&args.preset).expect("preset");
    if let Some(batch) = args.child_batch {
        println!("{}", burn_tokens_per_sec(&config, batch, &args));
        return;
    }
    // Model FLOPs per token (PaLM, appendix B): 6 per parameter and 12·L·T·d for attention.
    let flops_per_token = 6.0 * config.num_params() as f64
        + 12.0 * (config.n_layers * config.max_seq_len * config.d_model) as f64;
    let gflops = |tps: f64| flops_per_token * tps / 1e9;
    println!(
        "NeuroLLM {} ({} params, context {}), {} timed steps after {} warm-up, burn backend {} (AdamW on the {}), {} threads",
        args.preset,
        config.num_params(),
        config.max_seq_len,
        args.steps,
        args.warmup,
        train_backend_name(),
        placement_name(args.optimizer),
        args.threads
    );
    let peak = matmul_peak_gflops();
    println!(
        "fp32 matmul peak on this backend: {peak:.1} GFLOP/s; GFLOP/s below count {:.1} MFLOP per token",
        flops_per_token / 1e6
    );
    println!(
        "{:>6} {:>14} {:>10} {:>7} {:>14} {:>10} {:>7} {:>10}",
        "batch", "burn tok/s", "GFLOP/s", "% peak", "jax tok/s", "GFLOP/s", "% peak", "burn/jax"
    );
    let percent = |tps: f64| 100.0 * gflops(tps) / peak;
    for &batch in &args.batches {
        let burn = burn_in_child(batch, &args);
        let jax = if args.skip_jax {
            Err("skipped (--skip-jax)".to_string())
        } else {
            jax_tokens_per_sec(batch, &args)
        };
        match jax {
            Ok(jax) => println!(
                "{batch:>6} {burn:>14.0} {:>10.1} {:>6.1}% {jax:>14.0} {:>10.1} {:>6.1}% {:>9.2}x",
                gflops(burn),
                percent(burn),
                gflops(jax),
                percent(jax),
                burn / jax
            ),
            Err(e) => println!(
                "{batch:>6} {burn:>14.0} {:>10.1} {:>6.1}%   jax unavailable: {e}",
                gflops(burn),
                percent(burn)
            ),
        }
    }
}
