//! One worker's inner training loop: forward, backward, clip, AdamW, on the flat parameter view.
//! No actors or threads here: the TrainerActor owns a [`Trainer`] and drives it step by step.

use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::backend::{TrainBackend, TrainInnerBackend, train_device};
use super::checkpoint::{TrainerCounters, TrainerSnapshot};
use super::config::NeuroLlmConfig;
use super::data::{Batch, TokenDataset};
use super::llm::NeuroLlm;
use super::optim::{AdamWConfig, AdamWState, LrSchedule, clip_grad_norm, decay_ranges};
use super::params::{flatten_grads, layout, unflatten};

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
    /// The source of truth for the parameters; the burn model is rebuilt from it after each update.
    params: Vec<f32>,
    adam: AdamWState,
    decay: Vec<(usize, usize, bool)>,
    data: Arc<TokenDataset>,
    options: TrainerOptions,
    pub counters: TrainerCounters,
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
        let decay = decay_ranges(&layout(&model));
        let snapshot = snapshot.unwrap_or_else(|| TrainerSnapshot {
            params: theta0.to_vec(),
            adam: AdamWState::new(theta0.len()),
            counters: TrainerCounters {
                round,
                ..Default::default()
            },
        });
        let model = unflatten(model, &snapshot.params);
        Self {
            model,
            params: snapshot.params,
            adam: snapshot.adam,
            decay,
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
        let loss_value: f32 = loss.clone().into_scalar();
        let grads = loss.backward();
        let mut grad = flatten_grads(&self.model, &grads);
        let grad_norm = clip_grad_norm(&mut grad, self.options.adamw.grad_clip);
        let lr = self.options.schedule.lr_at(self.schedule_step());
        self.adam.step(
            &mut self.params,
            &grad,
            lr as f32,
            &self.options.adamw,
            &self.decay,
        );
        self.model = unflatten(self.model.clone(), &self.params);

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

    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// Passes the data cursor has made over this node's training sequences.
    pub fn data_epoch(&self) -> u64 {
        self.counters.data_cursor / self.data.train_sequences().max(1) as u64
    }

    /// DiLoCo: the inner model restarts every round from the new outer parameters θ₀ (the inner
    /// optimizer's moments carry over).
    pub fn reset_to(&mut self, theta0: &[f32], round: u64) {
        self.params.copy_from_slice(theta0);
        self.model = unflatten(self.model.clone(), &self.params);
        self.counters.round = round;
        self.counters.inner_step = 0;
    }

    pub fn snapshot(&self) -> TrainerSnapshot {
        TrainerSnapshot {
            params: self.params.clone(),
            adam: self.adam.clone(),
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
        assert_eq!(trainer.params(), &theta0[..]);
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
}
