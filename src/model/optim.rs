//! Inner optimizer on the flat parameter view: AdamW with decoupled weight decay, global-norm
//! gradient clipping and a linear-warmup + cosine learning-rate schedule.
//!
//! It works on flat vectors (not burn's ParamId-keyed records) so that its state checkpoints by
//! position, survives a trainer restart, and lines up with DiLoCo's θ₀/Δ vectors. On a GPU the
//! same update runs on the device ([`DeviceAdamW`]): one tensor pair per parameter in flattening
//! order, so the state still converts to and from the flat [`AdamWState`] by position.

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
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
            let range = (offset, offset + spec.num_elements(), spec.shape.len() >= 2);
            offset += spec.num_elements();
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
    let scale = clip_scale(norm, max_norm);
    if scale < 1.0 {
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

/// AdamW with its moments on the compute device: [`AdamWState::step`]'s arithmetic as tensor
/// operations, one parameter at a time. The host version costs a copy of every gradient down and
/// every parameter up per step, which on a GPU takes longer than the step itself.
pub struct DeviceAdamW<B: Backend> {
    /// First and second moments, one flat tensor per parameter in flattening order.
    m: Vec<Tensor<B, 1>>,
    v: Vec<Tensor<B, 1>>,
    /// Whether each parameter gets weight decay (matrices yes, norm gains no).
    decays: Vec<bool>,
    pub t: u64,
}

/// What one [`DeviceAdamW`] step uses for every parameter.
pub struct DeviceStep<B: Backend> {
    /// Multiplies every gradient: the global-norm clip factor, 1 when the norm is within bounds.
    /// A one-element tensor, so that the step never waits for the device to read it back.
    pub grad_scale: Tensor<B, 1>,
    pub lr: f32,
    bias1: f32,
    bias2: f32,
}

impl<B: Backend> DeviceAdamW<B> {
    /// The device copy of `state`, for the parameters in `layout`.
    pub fn from_host(state: &AdamWState, layout: &[ParamSpec], device: &B::Device) -> Self {
        let upload = |flat: &[f32]| -> Vec<Tensor<B, 1>> {
            let mut offset = 0;
            layout
                .iter()
                .map(|spec| {
                    let part = flat[offset..offset + spec.num_elements()].to_vec();
                    offset += spec.num_elements();
                    Tensor::from_data(TensorData::new(part, [spec.num_elements()]), device)
                })
                .collect()
        };
        Self {
            m: upload(&state.m),
            v: upload(&state.v),
            decays: layout.iter().map(|spec| spec.shape.len() >= 2).collect(),
            t: state.t,
        }
    }

    /// The flat host copy of the state (checkpoints).
    pub fn to_host(&self) -> AdamWState {
        let download = |parts: &[Tensor<B, 1>]| -> Vec<f32> {
            let mut flat = Vec::new();
            for part in parts {
                flat.extend(part.to_data().iter::<f32>());
            }
            flat
        };
        AdamWState {
            m: download(&self.m),
            v: download(&self.v),
            t: self.t,
        }
    }

    /// Starts a step: advances t and fixes the bias corrections and the gradients' scale.
    pub fn begin(&mut self, lr: f32, grad_scale: Tensor<B, 1>, cfg: &AdamWConfig) -> DeviceStep<B> {
        self.t += 1;
        DeviceStep {
            grad_scale,
            lr,
            bias1: 1.0 - cfg.beta1.powi(self.t as i32),
            bias2: 1.0 - cfg.beta2.powi(self.t as i32),
        }
    }

    /// Parameter `index` (flattened) after one update with its gradient (None: zero).
    pub fn update(
        &mut self,
        index: usize,
        param: Tensor<B, 1>,
        grad: Option<Tensor<B, 1>>,
        step: &DeviceStep<B>,
        cfg: &AdamWConfig,
    ) -> Tensor<B, 1> {
        let grad = grad.map_or_else(|| param.zeros_like(), |g| g.mul(step.grad_scale.clone()));
        let m = self.m[index]
            .clone()
            .mul_scalar(cfg.beta1)
            .add(grad.clone().mul_scalar(1.0 - cfg.beta1));
        let v = self.v[index]
            .clone()
            .mul_scalar(cfg.beta2)
            .add(grad.square().mul_scalar(1.0 - cfg.beta2));
        let update = m
            .clone()
            .div_scalar(step.bias1)
            .div(v.clone().div_scalar(step.bias2).sqrt().add_scalar(cfg.eps));
        self.m[index] = m;
        self.v[index] = v;
        let wd = if self.decays[index] {
            step.lr * cfg.weight_decay
        } else {
            0.0
        };
        param
            .clone()
            .sub(update.mul_scalar(step.lr))
            .sub(param.mul_scalar(wd))
    }
}

/// The global L2 norm of `grads` (one flat tensor per parameter), as a one-element tensor.
pub fn device_grad_norm<B: Backend>(
    grads: &[Option<Tensor<B, 1>>],
    device: &B::Device,
) -> Tensor<B, 1> {
    grads
        .iter()
        .flatten()
        .map(|g| g.clone().square().sum())
        .reduce(|a, b| a.add(b))
        .unwrap_or_else(|| Tensor::zeros([1], device))
        .sqrt()
}

/// [`clip_scale`] on the device: max_norm / norm, at most 1 (a zero norm gives 1).
pub fn device_clip_scale<B: Backend>(norm: Tensor<B, 1>, max_norm: f32) -> Tensor<B, 1> {
    norm.recip().mul_scalar(max_norm).clamp_max(1.0)
}

/// A one-element tensor's value on the host.
pub fn read_scalar<B: Backend>(value: Tensor<B, 1>) -> f32 {
    value.into_scalar().elem()
}

/// The factor that clips a gradient of global norm `norm` to `max_norm` (1 when within it).
pub fn clip_scale(norm: f32, max_norm: f32) -> f32 {
    if norm > max_norm && norm > 0.0 {
        max_norm / norm
    } else {
        1.0
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

    #[test]
    fn the_device_update_matches_the_host_update() {
        use crate::model::backend::{CpuBackend, cpu_device};
        let cfg = AdamWConfig::default();
        let layout = [
            ParamSpec {
                name: "w".into(),
                shape: vec![3, 4],
            },
            ParamSpec {
                name: "gain".into(),
                shape: vec![5],
            },
        ];
        let decay = decay_ranges(&layout);
        let wave = |i: usize, k: f32| ((i as f32 + 1.0) * k).sin();
        let mut host_params: Vec<f32> = (0..17).map(|i| wave(i, 0.7)).collect();
        let mut host = AdamWState::new(17);
        let device = cpu_device();
        let mut on_device = DeviceAdamW::<CpuBackend>::from_host(&host, &layout, &device);
        let mut device_params = host_params.clone();
        for step in 0..3 {
            let mut grads: Vec<f32> = (0..17).map(|i| 3.0 * wave(i + step, 1.3)).collect();
            let grad_parts: Vec<Option<Tensor<CpuBackend, 1>>> = vec![
                Some(Tensor::from_floats(&grads[..12], &device)),
                Some(Tensor::from_floats(&grads[12..], &device)),
            ];
            let device_norm = device_grad_norm(&grad_parts, &device);
            let host_norm = clip_grad_norm(&mut grads, cfg.grad_clip);
            assert!((read_scalar(device_norm.clone()) - host_norm).abs() < 1e-5 * host_norm);
            host.step(&mut host_params, &grads, 1e-2, &cfg, &decay);

            let scale = device_clip_scale(device_norm, cfg.grad_clip);
            let update = on_device.begin(1e-2, scale, &cfg);
            let mut next = Vec::new();
            for (index, (range, grad)) in [(0..12, &grad_parts[0]), (12..17, &grad_parts[1])]
                .into_iter()
                .enumerate()
            {
                let param = Tensor::from_floats(&device_params[range], &device);
                let param = on_device.update(index, param, grad.clone(), &update, &cfg);
                next.extend(param.to_data().iter::<f32>());
            }
            device_params = next;
        }
        let worst = host_params
            .iter()
            .zip(&device_params)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-6, "parameters differ by {worst}");
        let back = on_device.to_host();
        assert_eq!(back.t, 3);
        let moment_gap = host
            .m
            .iter()
            .zip(&back.m)
            .chain(host.v.iter().zip(&back.v))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(moment_gap < 1e-6, "moments differ by {moment_gap}");
    }
}
