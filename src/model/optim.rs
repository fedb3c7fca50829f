//! Inner optimizer on the flat parameter view: AdamW with decoupled weight decay, global-norm
//! gradient clipping and a linear-warmup + cosine learning-rate schedule.
//!
//! It works on flat vectors (not burn's ParamId-keyed records) so that its state checkpoints by
//! position, survives a trainer restart, and lines up with DiLoCo's θ₀/Δ vectors.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::params::ParamSpec;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Global L2 norm the gradient is clipped to before the update.
    pub grad_clip: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
        }
    }
}

/// Linear warmup to `peak_lr`, then cosine decay to `peak_lr * min_lr_ratio` at `total_steps`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub min_lr_ratio: f64,
}

impl LrSchedule {
    pub fn lr_at(&self, step: u64) -> f64 {
        let min_lr = self.peak_lr * self.min_lr_ratio;
        if step < self.warmup_steps {
            return self.peak_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        if step >= self.total_steps {
            return min_lr;
        }
        let span = (self.total_steps - self.warmup_steps).max(1) as f64;
        let progress = (step - self.warmup_steps) as f64 / span;
        min_lr + 0.5 * (self.peak_lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// First and second moments and the step count of AdamW.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamWState {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub t: u64,
}

/// Which elements of the flat vector get weight decay: matrices yes, norm gains no.
pub fn decay_ranges(layout: &[ParamSpec]) -> Vec<(usize, usize, bool)> {
    let mut offset = 0;
    layout
        .iter()
        .map(|spec| {
            let range = (offset, offset + spec.len(), spec.shape.len() >= 2);
            offset += spec.len();
            range
        })
        .collect()
}

/// Scales `grads` so their global L2 norm is at most `max_norm`; returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f32) -> f32 {
    let norm = grads
        .par_iter()
        .map(|g| (*g as f64) * (*g as f64))
        .sum::<f64>()
        .sqrt() as f32;
    if norm > max_norm && norm > 0.0 {
        let scale = max_norm / norm;
        grads.par_iter_mut().for_each(|g| *g *= scale);
    }
    norm
}

impl AdamWState {
    pub fn new(len: usize) -> Self {
        Self {
            m: vec![0.0; len],
            v: vec![0.0; len],
            t: 0,
        }
    }

    /// One AdamW update of `params` in place (gradients already clipped).
    pub fn step(
        &mut self,
        params: &mut [f32],
        grads: &[f32],
        lr: f32,
        cfg: &AdamWConfig,
        decay: &[(usize, usize, bool)],
    ) {
        self.t += 1;
        let bias1 = 1.0 - cfg.beta1.powi(self.t as i32);
        let bias2 = 1.0 - cfg.beta2.powi(self.t as i32);
        for &(start, end, decays) in decay {
            let wd = if decays { lr * cfg.weight_decay } else { 0.0 };
            (
                &mut params[start..end],
                &mut self.m[start..end],
                &mut self.v[start..end],
                &grads[start..end],
            )
                .into_par_iter()
                .with_min_len(4096)
                .for_each(|(p, m, v, &g)| {
                    *m = cfg.beta1 * *m + (1.0 - cfg.beta1) * g;
                    *v = cfg.beta2 * *v + (1.0 - cfg.beta2) * g * g;
                    let update = (*m / bias1) / ((*v / bias2).sqrt() + cfg.eps);
                    *p -= lr * update + wd * *p;
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_linearly_then_decays_by_cosine() {
        let s = LrSchedule {
            peak_lr: 1.0,
            warmup_steps: 10,
            total_steps: 110,
            min_lr_ratio: 0.1,
        };
        assert!((s.lr_at(0) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(9) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(10) - 1.0).abs() < 1e-12);
        assert!(
            (s.lr_at(60) - 0.55).abs() < 1e-12,
            "half way is the mean of peak and min"
        );
        assert!((s.lr_at(500) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn clipping_scales_to_the_max_norm_and_leaves_small_gradients_alone() {
        let mut g = vec![3.0, 4.0];
        assert_eq!(clip_grad_norm(&mut g, 1.0), 5.0);
        assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6);
        let mut small = vec![0.3, 0.4];
        clip_grad_norm(&mut small, 1.0);
        assert_eq!(small, vec![0.3, 0.4]);
    }

    #[test]
    fn first_adamw_step_moves_by_lr_times_sign_and_decays_only_matrices() {
        let cfg = AdamWConfig {
            weight_decay: 0.5,
            ..Default::default()
        };
        let mut params = vec![1.0, 1.0];
        let mut state = AdamWState::new(2);
        // element 0 is a matrix (decays), element 1 a norm gain (does not)
        state.step(
            &mut params,
            &[2.0, -2.0],
            0.1,
            &cfg,
            &[(0, 1, true), (1, 2, false)],
        );
        assert!(
            (params[0] - (1.0 - 0.1 - 0.1 * 0.5)).abs() < 1e-5,
            "{}",
            params[0]
        );
        assert!((params[1] - 1.1).abs() < 1e-5, "{}", params[1]);
        assert_eq!(state.t, 1);
    }
}
