//! Pure DiLoCo math (Douillard et al., 2023, arXiv 2311.08105): each worker trains H inner steps
//! from the shared parameters θ₀, the pseudo-gradient Δ = θ₀ − θ_H of the workers is aggregated, and
//! an outer optimizer (SGD with Nesterov momentum) applies it to θ₀.

pub mod attack;
pub mod codec;
pub mod heal;
pub mod machine;
pub mod round;
pub mod sharded;
pub mod weight;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Δ = θ₀ − θ_H: the direction the inner steps moved, as a gradient (positive = descend).
pub fn pseudo_gradient(theta0: &[f32], theta_h: &[f32]) -> Vec<f32> {
    assert_eq!(theta0.len(), theta_h.len(), "θ₀ and θ_H differ in length");
    theta0.par_iter().zip(theta_h).map(|(a, b)| a - b).collect()
}

/// The outer optimizer: SGD with Nesterov momentum, as in the paper. Its values come from
/// `[diloco] outer_lr` / `outer_momentum` (default 1.0 / 0.5, not the paper's 0.7 / 0.9: chosen
/// on one seed, confirmed on held-out ones, EXPERIMENTS.md).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OuterOptimizer {
    pub lr: f32,
    pub momentum: f32,
}

impl OuterOptimizer {
    /// One outer step in place, PyTorch's SGD(nesterov=True) form:
    /// b ← μ·b + Δ;  θ₀ ← θ₀ − lr·(Δ + μ·b).
    pub fn step(&self, theta0: &mut [f32], momentum_buf: &mut [f32], delta: &[f32]) {
        assert!(
            theta0.len() == delta.len() && momentum_buf.len() == delta.len(),
            "outer step on vectors of different lengths"
        );
        let (lr, mu) = (self.lr, self.momentum);
        (theta0, momentum_buf, delta)
            .into_par_iter()
            .with_min_len(4096)
            .for_each(|(theta, buf, &d)| {
                *buf = mu * *buf + d;
                *theta -= lr * (d + mu * *buf);
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_gradient_points_from_theta_h_back_to_theta0() {
        assert_eq!(pseudo_gradient(&[1.0, 2.0], &[0.5, 3.0]), vec![0.5, -1.0]);
    }

    #[test]
    fn nesterov_matches_a_hand_computed_example() {
        let opt = OuterOptimizer {
            lr: 0.7,
            momentum: 0.9,
        };
        let (mut theta, mut buf) = (vec![1.0f32, -2.0], vec![0.0f32, 0.0]);
        // step 1, Δ = (0.5, -1): b = (0.5, -1); θ = 1 − 0.7·(0.5 + 0.45) = 0.335, −2 − 0.7·(−1 − 0.9) = −0.67
        opt.step(&mut theta, &mut buf, &[0.5, -1.0]);
        assert!(
            (theta[0] - 0.335).abs() < 1e-6 && (theta[1] + 0.67).abs() < 1e-6,
            "{theta:?}"
        );
        assert!((buf[0] - 0.5).abs() < 1e-6 && (buf[1] + 1.0).abs() < 1e-6);
        // step 2, same Δ: b = 0.9·0.5 + 0.5 = 0.95; θ = 0.335 − 0.7·(0.5 + 0.855) = −0.6135
        opt.step(&mut theta, &mut buf, &[0.5, -1.0]);
        assert!((buf[0] - 0.95).abs() < 1e-6);
        assert!((theta[0] + 0.6135).abs() < 1e-6, "{theta:?}");
    }

    #[test]
    fn lr_one_without_momentum_moves_theta0_to_theta_h() {
        let opt = OuterOptimizer {
            lr: 1.0,
            momentum: 0.0,
        };
        let (theta0, theta_h) = (vec![1.0f32, 2.0, 3.0], vec![0.0f32, 2.5, -1.0]);
        let mut theta = theta0.clone();
        opt.step(
            &mut theta,
            &mut [0.0; 3],
            &pseudo_gradient(&theta0, &theta_h),
        );
        assert_eq!(theta, theta_h);
    }
}
