//! One worker's inner training loop: forward, backward, clip, AdamW, on the flat parameter view.
//! No actors or threads here: the TrainerActor owns a [`Trainer`] and drives it step by step.

use std::borrow::Cow;
use std::sync::Arc;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};

use super::backend::{TrainBackend, TrainInnerBackend, train_device};
use super::checkpoint::{TrainerCounters, TrainerSnapshot};
use super::config::NeuroLlmConfig;
use super::data::{Batch, TokenDataset};
use super::llm::NeuroLlm;
use super::optim::{
    AdamWConfig, AdamWState, DeviceAdamW, DeviceStep, LrSchedule, clip_grad_norm, decay_ranges,
    device_clip_scale, device_grad_norm, read_scalar,
};
use super::params::{flatten, flatten_grads, layout, unflatten};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainerOptions {
    pub batch_size: usize,
    /// Indexed by the network's step (see [`Trainer::schedule_step`]), not this worker's count.
    pub schedule: LrSchedule,
    /// Inner steps per DiLoCo round (H).
    pub inner_steps: u64,
    pub adamw: AdamWConfig,
    /// Held-out sequences used for one validation-loss estimate.
    pub eval_sequences: usize,
    pub optimizer: OptimizerPlacement,
}

/// Where the parameters and AdamW's moments live between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerPlacement {
    /// Flat host vectors, updated in one fused pass; the model is rebuilt from them each step.
    /// Fastest on the CPU backend, where the tensors are host memory anyway.
    Host,
    /// The model's own tensors and per-parameter moments on the compute device: nothing crosses
    /// to the host during a step but the loss and the gradient norm (a GPU's choice).
    Device,
}

impl OptimizerPlacement {
    /// The placement for the backend this build trains on.
    pub fn for_backend() -> Self {
        if cfg!(feature = "cuda") {
            Self::Device
        } else {
            Self::Host
        }
    }
}

/// What one inner step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: f32,
    pub tokens: u64,
}

pub struct Trainer {
    model: NeuroLlm<TrainBackend>,
    optimizer: Optimizer,
    data: Arc<TokenDataset>,
    options: TrainerOptions,
    pub counters: TrainerCounters,
}

/// The optimizer's state, by [`OptimizerPlacement`].
enum Optimizer {
    Host {
        /// The source of truth for the parameters; the model is rebuilt from it after each update.
        params: Vec<f32>,
        adam: AdamWState,
        decay: Vec<(usize, usize, bool)>,
    },
    /// The model holds the parameters.
    Device(DeviceAdamW<TrainInnerBackend>),
}

/// Each parameter's gradient as a flat tensor, in flattening order (None: the loss does not reach it).
struct CollectGrads<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    out: Vec<Option<Tensor<B::InnerBackend, 1>>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for CollectGrads<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let grad = param.val().grad(self.grads);
        self.out.push(grad.map(|g| g.reshape([-1])));
    }
}

/// Replaces every parameter with its [`DeviceAdamW::update`], as a fresh trainable leaf.
struct ApplyDeviceAdamW<'a, B: AutodiffBackend> {
    adam: &'a mut DeviceAdamW<B::InnerBackend>,
    grads: Vec<Option<Tensor<B::InnerBackend, 1>>>,
    step: DeviceStep<B::InnerBackend>,
    cfg: &'a AdamWConfig,
    index: usize,
}

impl<B: AutodiffBackend> ModuleMapper<B> for ApplyDeviceAdamW<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let dims = tensor.dims();
        let flat = tensor.inner().reshape([-1]);
        let grad = self.grads[self.index].take();
        let updated = self
            .adam
            .update(self.index, flat, grad, &self.step, self.cfg);
        self.index += 1;
        let leaf = Tensor::from_inner(updated.reshape(dims)).require_grad();
        Param::from_mapped_value(id, leaf, mapper)
    }
}

fn tensors<B: Backend>(
    batch: &Batch,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
    let shape = [batch.batch, batch.seq_len];
    (
        Tensor::from_data(TensorData::new(batch.inputs.clone(), shape), device),
        Tensor::from_data(TensorData::new(batch.targets.clone(), shape), device),
    )
}

impl Trainer {
    /// A trainer resuming from `snapshot`, or starting fresh at `theta0` in round `round`.
    pub fn new(
        model_config: &NeuroLlmConfig,
        data: Arc<TokenDataset>,
        options: TrainerOptions,
        theta0: &[f32],
        round: u64,
        snapshot: Option<TrainerSnapshot>,
    ) -> Self {
        let model = model_config.init::<TrainBackend>(&train_device());
        let specs = layout(&model);
        let snapshot = snapshot.unwrap_or_else(|| TrainerSnapshot {
            params: theta0.to_vec(),
            adam: AdamWState::new(theta0.len()),
            counters: TrainerCounters {
                round,
                ..Default::default()
            },
        });
        let model = unflatten(model, &snapshot.params);
        let optimizer = match options.optimizer {
            OptimizerPlacement::Host => Optimizer::Host {
                params: snapshot.params,
                adam: snapshot.adam,
                decay: decay_ranges(&specs),
            },
            OptimizerPlacement::Device => Optimizer::Device(DeviceAdamW::from_host(
                &snapshot.adam,
                &specs,
                &train_device(),
            )),
        };
        Self {
            model,
            optimizer,
            data,
            options,
            counters: snapshot.counters,
        }
    }

    pub fn step(&mut self) -> StepReport {
        let batch = self
            .data
            .next_batch(&mut self.counters.data_cursor, self.options.batch_size);
        let (inputs, targets) = tensors::<TrainBackend>(&batch, &train_device());
        let loss = self.model.loss(inputs, targets);
        // Held outside the graph and read once the update is queued (no wait mid-step on a GPU).
        let loss_value = loss.clone().inner();
        let grads = loss.backward();
        let lr = self.options.schedule.lr_at(self.schedule_step());
        let cfg = &self.options.adamw;
        let (loss_value, grad_norm) = match &mut self.optimizer {
            Optimizer::Host {
                params,
                adam,
                decay,
            } => {
                let mut grad = flatten_grads(&self.model, &grads);
                let grad_norm = clip_grad_norm(&mut grad, cfg.grad_clip);
                adam.step(params, &grad, lr as f32, cfg, decay);
                self.model = unflatten(self.model.clone(), params);
                (read_scalar(loss_value), grad_norm)
            }
            Optimizer::Device(adam) => {
                let mut collect = CollectGrads::<TrainBackend> {
                    grads: &grads,
                    out: Vec::new(),
                };
                self.model.visit(&mut collect);
                let grad_norm = device_grad_norm(&collect.out, &train_device());
                let scale = device_clip_scale(grad_norm.clone(), cfg.grad_clip);
                let step = adam.begin(lr as f32, scale, cfg);
                self.model = self
                    .model
                    .clone()
                    .map(&mut ApplyDeviceAdamW::<TrainBackend> {
                        adam,
                        grads: collect.out,
                        step,
                        cfg,
                        index: 0,
                    });
                // Read back only now: the device runs the whole step without waiting for the host.
                (read_scalar(loss_value), read_scalar(grad_norm))
            }
        };

        let tokens = (batch.batch * batch.seq_len) as u64;
        let c = &mut self.counters;
        c.global_step += 1;
        c.inner_step += 1;
        c.tokens_seen += tokens;
        c.loss = Some(loss_value);
        StepReport {
            loss: loss_value,
            lr,
            grad_norm,
            tokens,
        }
    }

    /// Where the learning-rate schedule stands: round × H + inner step, the same on every node in
    /// the same round. A node that healed into a round, joined late or restarted steps with the
    /// network's learning rate; counting its own steps would give it another one (a node that
    /// trained a round alone would still be warming up faster than its peers, and its deltas,
    /// larger than theirs, would be rejected as outliers).
    pub fn schedule_step(&self) -> u64 {
        let c = &self.counters;
        c.round.saturating_mul(self.options.inner_steps) + c.inner_step
    }

    /// Mean loss over the held-out sequences, without autodiff; records the first value as the baseline.
    pub fn evaluate(&mut self) -> f32 {
        let model: NeuroLlm<TrainInnerBackend> = self.model.valid();
        let batches = self
            .data
            .val_batches(self.options.batch_size, self.options.eval_sequences);
        let (mut total, mut count) = (0.0f64, 0usize);
        for batch in &batches {
            let (inputs, targets) = tensors::<TrainInnerBackend>(batch, &train_device());
            let loss: f32 = model.loss(inputs, targets).into_scalar();
            total += loss as f64 * batch.batch as f64;
            count += batch.batch;
        }
        let val = (total / count as f64) as f32;
        self.counters.val_loss = Some(val);
        self.counters.initial_val_loss.get_or_insert(val);
        val
    }

    /// The current parameters, flat (a copy from the device when they live there).
    pub fn params(&self) -> Cow<'_, [f32]> {
        match &self.optimizer {
            Optimizer::Host { params, .. } => Cow::Borrowed(params),
            Optimizer::Device(_) => Cow::Owned(flatten(&self.model)),
        }
    }

    /// Passes the data cursor has made over this node's training sequences.
    pub fn data_epoch(&self) -> u64 {
        self.counters.data_cursor / self.data.train_sequences().max(1) as u64
    }

    /// DiLoCo: the inner model restarts every round from the new outer parameters θ₀ (the inner
    /// optimizer's moments carry over).
    pub fn reset_to(&mut self, theta0: &[f32], round: u64) {
        if let Optimizer::Host { params, .. } = &mut self.optimizer {
            params.copy_from_slice(theta0);
        }
        self.model = unflatten(self.model.clone(), theta0);
        self.counters.round = round;
        self.counters.inner_step = 0;
    }

    pub fn snapshot(&self) -> TrainerSnapshot {
        let (params, adam) = match &self.optimizer {
            Optimizer::Host { params, adam, .. } => (params.clone(), adam.clone()),
            Optimizer::Device(adam) => (flatten(&self.model), adam.to_host()),
        };
        TrainerSnapshot {
            params,
            adam,
            counters: self.counters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::backend::{CpuBackend, cpu_device};
    use crate::model::params::flatten;

    /// A nano trainer on a tiny corpus, in round 0.
    fn nano_trainer(schedule: LrSchedule, inner_steps: u64) -> (Trainer, Vec<f32>) {
        nano_trainer_with(schedule, inner_steps, OptimizerPlacement::for_backend())
    }

    fn nano_trainer_with(
        schedule: LrSchedule,
        inner_steps: u64,
        optimizer: OptimizerPlacement,
    ) -> (Trainer, Vec<f32>) {
        let config = NeuroLlmConfig::preset("nano").unwrap();
        let docs = vec!["the quick brown fox jumps over the lazy dog. ".repeat(8)];
        let data = TokenDataset::new(&docs, 32, 0.2, 0).unwrap();
        let options = TrainerOptions {
            batch_size: 2,
            schedule,
            inner_steps,
            adamw: AdamWConfig {
                weight_decay: 0.0,
                ..Default::default()
            },
            eval_sequences: 2,
            optimizer,
        };
        let theta0 = flatten(&config.init::<CpuBackend>(&cpu_device()));
        let trainer = Trainer::new(&config, Arc::new(data), options, &theta0, 0, None);
        (trainer, theta0)
    }

    #[test]
    fn loss_falls_when_overfitting_one_batch() {
        let schedule = LrSchedule {
            peak_lr: 3e-3,
            warmup_steps: 1,
            total_steps: 1000,
            min_lr_ratio: 1.0,
        };
        let (mut trainer, theta0) = nano_trainer(schedule, 50);
        // the same two sequences every step: rewind the cursor
        let first = trainer.step().loss;
        let mut last = first;
        for _ in 0..40 {
            trainer.counters.data_cursor = 0;
            last = trainer.step().loss;
        }
        assert!(last < 0.5 * first, "loss {first} -> {last}");
        assert_eq!(trainer.counters.global_step, 41);

        trainer.reset_to(&theta0, 1);
        assert_eq!(&trainer.params()[..], &theta0[..]);
        assert_eq!(trainer.counters.inner_step, 0);
    }

    #[test]
    fn the_learning_rate_follows_the_round_not_the_steps_this_node_took() {
        let schedule = LrSchedule {
            peak_lr: 1e-3,
            warmup_steps: 100,
            total_steps: 1000,
            min_lr_ratio: 0.1,
        };
        // One node trained round 0 and 3 steps of round 1 alone before healing into round 1;
        // the other trained round 0 only. In round 1 both step with the same rate.
        let (mut ahead, theta0) = nano_trainer(schedule, 4);
        let (mut peer, _) = nano_trainer(schedule, 4);
        for _ in 0..7 {
            ahead.step();
        }
        for _ in 0..4 {
            peer.step();
        }
        ahead.reset_to(&theta0, 1);
        peer.reset_to(&theta0, 1);
        let (a, p) = (ahead.step().lr, peer.step().lr);
        assert_eq!(a, p);
        assert_eq!(a, schedule.lr_at(4));
        // A node joining at round 30 starts where the network is, not at the warmup's start.
        let (mut joiner, _) = nano_trainer(schedule, 4);
        joiner.reset_to(&theta0, 30);
        assert_eq!(joiner.step().lr, schedule.lr_at(120));
    }

    #[test]
    fn the_optimizer_on_the_device_trains_as_the_one_on_the_host() {
        let schedule = LrSchedule {
            peak_lr: 3e-3,
            warmup_steps: 2,
            total_steps: 1000,
            min_lr_ratio: 1.0,
        };
        let (mut host, theta0) = nano_trainer_with(schedule, 50, OptimizerPlacement::Host);
        let (mut device, _) = nano_trainer_with(schedule, 50, OptimizerPlacement::Device);
        device.reset_to(&theta0, 0); // each trainer was made from its own random θ₀
        for _ in 0..4 {
            let (h, d) = (host.step(), device.step());
            assert!(
                (h.loss - d.loss).abs() < 1e-4,
                "loss {} vs {}",
                h.loss,
                d.loss
            );
            assert!((h.grad_norm - d.grad_norm).abs() < 1e-4 * h.grad_norm);
        }
        let worst = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        };
        assert!(worst(&host.params(), &device.params()) < 1e-5);
        assert!(
            worst(&host.params(), &theta0) > 1e-3,
            "the steps moved nothing"
        );

        // A snapshot of the device trainer resumes as the host one does.
        let snapshot = device.snapshot();
        assert_eq!(snapshot.adam.t, 4);
        assert!(worst(&snapshot.adam.v, &host.snapshot().adam.v) < 1e-6);
        device.reset_to(&theta0, 1);
        assert_eq!(&device.params()[..], &theta0[..]);
    }
}
