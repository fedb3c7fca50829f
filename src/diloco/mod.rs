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
/// `[diloco] outer_lr` / `outer_momentum` / `outer_momentum_warmup_rounds` (default 1.0 / 0.7
/// reached after 4 rounds, not the paper's 0.7 / 0.9 from the start: chosen on one seed,
/// confirmed on held-out ones, EXPERIMENTS.md). The momentum grows linearly from 0 at round 0 to
/// μ at the warm-up's last round: the first rounds' deltas are the largest and least alike
/// (training from random weights), and a full μ carries them too far.
///
/// With `momentum_at_workers` (`[diloco.aggregation] worker_momentum`) the momentum moves from
/// the aggregate to each worker (Karimireddy, He, Jaggi 2021, "Learning from history"): a node
/// sends its own Nesterov direction Δ + μ·m instead of Δ ([`Self::worker_direction`]) and the
/// outer step applies the aggregate as it is. With the mean and the same honest workers in
/// every round that is the same update; what changes is what a robust rule compares: each input
/// carries its node's past rounds, so one round's noise weighs less against the attacker's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OuterOptimizer {
    pub lr: f32,
    pub momentum: f32,
    #[serde(default)]
    pub momentum_at_workers: bool,
    /// Rounds over which the momentum grows from 0 to `momentum` (0: full from the start).
    #[serde(default)]
    pub momentum_warmup_rounds: u64,
}

/// One coordinate of PyTorch's SGD(nesterov=True): b ← μ·b + d, returns the direction d + μ·b.
#[inline(always)]
fn nesterov(mu: f32, buf: &mut f32, d: f32) -> f32 {
    *buf = mu * *buf + d;
    d + mu * *buf
}

impl OuterOptimizer {
    /// μ of the outer step that closes `round` (0-based): μ·round/W during the warm-up of W
    /// rounds, then μ. Every node computes it from the round alone, so their θ₀ stay equal.
    pub fn momentum_at(&self, round: u64) -> f32 {
        if round >= self.momentum_warmup_rounds {
            self.momentum
        } else {
            // Rounds are far below f32's exact integers; the product is the same on every node.
            self.momentum * (round as f32 / self.momentum_warmup_rounds as f32)
        }
    }

    /// One outer step in place, closing `round`: θ₀ ← θ₀ − lr·(Δ + μ·b) with b ← μ·b + Δ
    /// (μ = [`Self::momentum_at`]), or, with the momentum at the workers, θ₀ ← θ₀ − lr·Δ (Δ
    /// being the aggregate of their directions; b untouched).
    pub fn step(&self, round: u64, theta0: &mut [f32], momentum_buf: &mut [f32], delta: &[f32]) {
        assert!(
            theta0.len() == delta.len() && momentum_buf.len() == delta.len(),
            "outer step on vectors of different lengths"
        );
        let (lr, mu, at_workers) = (self.lr, self.momentum_at(round), self.momentum_at_workers);
        (theta0, momentum_buf, delta)
            .into_par_iter()
            .with_min_len(4096)
            .for_each(|(theta, buf, &d)| {
                let direction = if at_workers { d } else { nesterov(mu, buf, d) };
                *theta -= lr * direction;
            });
    }

    /// The largest momentum the outer step itself applies: none when it is at the workers (each
    /// step then moves θ₀ by lr·‖aggregate‖ at most, which bounds how far a healing node may
    /// jump).
    pub fn step_momentum(&self) -> f32 {
        if self.momentum_at_workers {
            0.0
        } else {
            self.momentum
        }
    }

    /// What this node sends for its pseudo-gradient Δ of `round`, and its momentum after the
    /// round: Δ itself (no new momentum), or with the momentum at the workers its Nesterov
    /// direction Δ + μ·m' with m' = μ·m + Δ, μ = [`Self::momentum_at`] (`momentum` is then this
    /// node's own m: checkpointed, and adopted from the
    /// source on healing). The caller adopts m' only when the round's aggregate is applied: a
    /// round that fails, or is retrained after a restart, starts again from the same θ₀ and m,
    /// and must not count its Δ twice.
    pub fn worker_direction(
        &self,
        round: u64,
        momentum: &[f32],
        mut delta: Vec<f32>,
    ) -> (Vec<f32>, Option<Vec<f32>>) {
        if !self.momentum_at_workers {
            return (delta, None);
        }
        assert_eq!(
            momentum.len(),
            delta.len(),
            "momentum and Δ differ in length"
        );
        let mu = self.momentum_at(round);
        let mut next = momentum.to_vec();
        (next.as_mut_slice(), delta.as_mut_slice())
            .into_par_iter()
            .with_min_len(4096)
            .for_each(|(buf, d)| *d = nesterov(mu, buf, *d));
        (delta, Some(next))
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
            momentum_at_workers: false,
            momentum_warmup_rounds: 0,
        };
        let (mut theta, mut buf) = (vec![1.0f32, -2.0], vec![0.0f32, 0.0]);
        // step 1, Δ = (0.5, -1): b = (0.5, -1); θ = 1 − 0.7·(0.5 + 0.45) = 0.335, −2 − 0.7·(−1 − 0.9) = −0.67
        opt.step(5, &mut theta, &mut buf, &[0.5, -1.0]);
        assert!(
            (theta[0] - 0.335).abs() < 1e-6 && (theta[1] + 0.67).abs() < 1e-6,
            "{theta:?}"
        );
        assert!((buf[0] - 0.5).abs() < 1e-6 && (buf[1] + 1.0).abs() < 1e-6);
        // step 2, same Δ: b = 0.9·0.5 + 0.5 = 0.95; θ = 0.335 − 0.7·(0.5 + 0.855) = −0.6135
        opt.step(5, &mut theta, &mut buf, &[0.5, -1.0]);
        assert!((buf[0] - 0.95).abs() < 1e-6);
        assert!((theta[0] + 0.6135).abs() < 1e-6, "{theta:?}");
    }

    #[test]
    fn lr_one_without_momentum_moves_theta0_to_theta_h() {
        let opt = OuterOptimizer {
            lr: 1.0,
            momentum: 0.0,
            momentum_at_workers: false,
            momentum_warmup_rounds: 0,
        };
        let (theta0, theta_h) = (vec![1.0f32, 2.0, 3.0], vec![0.0f32, 2.5, -1.0]);
        let mut theta = theta0.clone();
        opt.step(
            0,
            &mut theta,
            &mut [0.0; 3],
            &pseudo_gradient(&theta0, &theta_h),
        );
        assert_eq!(theta, theta_h);
    }

    #[test]
    fn momentum_at_the_workers_under_the_mean_is_the_outer_nesterov_step() {
        let at_aggregate = OuterOptimizer {
            lr: 0.7,
            momentum: 0.9,
            momentum_at_workers: false,
            momentum_warmup_rounds: 3,
        };
        let at_workers = OuterOptimizer {
            momentum_at_workers: true,
            ..at_aggregate
        };
        let (workers, d) = (3usize, 5usize);
        let mut state = 11u64;
        let mut theta_a = vec![0.5f32; d];
        let mut buf_a = vec![0.0f32; d];
        let mut theta_w = theta_a.clone();
        let mut unused = vec![0.0f32; d];
        let mut bufs_w = vec![vec![0.0f32; d]; workers];
        for round in 0..6 {
            let deltas: Vec<Vec<f32>> = (0..workers)
                .map(|_| (0..d).map(|_| attack::normal(&mut state)).collect())
                .collect();
            let mean_of = |vs: &[Vec<f32>]| -> Vec<f32> {
                (0..d)
                    .map(|j| vs.iter().map(|v| v[j]).sum::<f32>() / workers as f32)
                    .collect()
            };
            at_aggregate.step(round, &mut theta_a, &mut buf_a, &mean_of(&deltas));
            let sent: Vec<Vec<f32>> = deltas
                .into_iter()
                .zip(&mut bufs_w)
                .map(|(delta, buf)| {
                    let (direction, next) = at_workers.worker_direction(round, buf, delta);
                    *buf = next.expect("momentum at the workers");
                    direction
                })
                .collect();
            at_workers.step(round, &mut theta_w, &mut unused, &mean_of(&sent));
        }
        assert_eq!(
            unused,
            vec![0.0; d],
            "the outer step keeps no momentum of its own"
        );
        assert_eq!(
            (at_workers.step_momentum(), at_aggregate.step_momentum()),
            (0.0, 0.9)
        );
        for (a, w) in theta_a.iter().zip(&theta_w) {
            assert!((a - w).abs() < 1e-4, "{theta_a:?} vs {theta_w:?}");
        }
        // Without it, a node sends Δ as it is.
        assert_eq!(
            at_aggregate.worker_direction(0, &[1.0], vec![2.0]),
            (vec![2.0], None)
        );
    }

    #[test]
    fn the_momentum_grows_from_zero_over_its_warm_up_rounds() {
        let opt = OuterOptimizer {
            lr: 1.0,
            momentum: 0.8,
            momentum_at_workers: false,
            momentum_warmup_rounds: 4,
        };
        let schedule: Vec<f32> = (0..6).map(|r| opt.momentum_at(r)).collect();
        assert_eq!(schedule, vec![0.0, 0.2, 0.4, 0.6, 0.8, 0.8]);
        assert_eq!(
            opt.step_momentum(),
            0.8,
            "the bound a heal is checked against"
        );
        // Round 0 applies Δ alone (no look-ahead) but still starts the buffer; round 1 looks
        // ahead with μ = 0.2: b = 0.2·1 + 1 = 1.2, direction 1 + 0.2·1.2 = 1.24.
        let (mut theta, mut buf) = (vec![0.0f32], vec![0.0f32]);
        opt.step(0, &mut theta, &mut buf, &[1.0]);
        assert_eq!((theta[0], buf[0]), (-1.0, 1.0));
        opt.step(1, &mut theta, &mut buf, &[1.0]);
        assert!(
            (buf[0] - 1.2).abs() < 1e-6 && (theta[0] + 2.24).abs() < 1e-6,
            "{theta:?} {buf:?}"
        );
        // Without a warm-up, μ from the start.
        let full = OuterOptimizer {
            momentum_warmup_rounds: 0,
            ..opt
        };
        assert_eq!(full.momentum_at(0), 0.8);
    }
}
