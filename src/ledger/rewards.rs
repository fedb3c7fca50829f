//! The reward schedule (defaults from the Python original's economics constants), the stake
//! multiplier and the transfer fee, all in integer nano-NEURO so every node computes the same.

use serde::{Deserialize, Serialize};

use super::{NANO_PER_NEURO, Nano, Proof, ProofKind};

/// NEURO paid per unit of work. `[ledger.rewards]` in the config; amounts in NEURO.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardSchedule {
    pub uptime_per_minute: f64,
    pub training_per_batch: f64,
    pub data_per_sample: f64,
    pub inference_per_million_tokens: f64,
    /// No single proof earns more, stake multiplier included; a proof whose base reward is
    /// above it is rejected as implausible.
    pub max_per_proof: f64,
}

impl Default for RewardSchedule {
    fn default() -> Self {
        Self {
            uptime_per_minute: 0.0001,
            training_per_batch: 0.0005,
            data_per_sample: 0.00001,
            inference_per_million_tokens: 0.1,
            max_per_proof: 100.0,
        }
    }
}

/// NEURO (config) → nano-NEURO, rounded to the nearest unit.
pub fn nano(neuro: f64) -> Nano {
    (neuro * NANO_PER_NEURO as f64).round() as Nano
}

impl RewardSchedule {
    /// Every rate is finite and non-negative, and the cap is positive.
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("uptime_per_minute", self.uptime_per_minute),
            ("training_per_batch", self.training_per_batch),
            ("data_per_sample", self.data_per_sample),
            (
                "inference_per_million_tokens",
                self.inference_per_million_tokens,
            ),
            ("max_per_proof", self.max_per_proof),
        ];
        for (name, value) in rates {
            if !value.is_finite() || value < 0.0 || value > 1e9 {
                return Err(format!(
                    "{name} must be between 0 and 1e9 NEURO, got {value}"
                ));
            }
        }
        if self.max_per_proof <= 0.0 {
            return Err("max_per_proof must be positive".into());
        }
        Ok(())
    }

    /// The reward of a proof before the stake multiplier, from its signed counters only.
    /// Saturates instead of overflowing (huge counters are rejected by the cap anyway).
    pub fn base_reward(&self, proof: &Proof) -> Nano {
        let scaled = |rate: f64, count: u64, per: u64| -> Nano {
            let product = nano(rate) as u128 * count as u128 / per as u128;
            product.min(Nano::MAX as u128) as Nano
        };
        match proof.kind {
            ProofKind::Uptime => scaled(self.uptime_per_minute, proof.uptime_seconds, 60),
            ProofKind::Training => scaled(self.training_per_batch, proof.batches, 1),
            ProofKind::Data => scaled(self.data_per_sample, proof.data_samples, 1),
            ProofKind::Inference => {
                scaled(self.inference_per_million_tokens, proof.tokens, 1_000_000)
            }
        }
    }

    pub fn max_per_proof_nano(&self) -> Nano {
        nano(self.max_per_proof)
    }

    /// What a proof is credited: base × the signer's stake multiplier, capped per proof.
    pub fn credited(&self, base: Nano, stake: Nano) -> Nano {
        let boosted = base as u128 * stake_multiplier_ppm(stake) as u128 / PPM as u128;
        boosted.min(self.max_per_proof_nano() as u128) as Nano
    }
}

const PPM: u64 = 1_000_000;
/// The original's multiplier caps at 1.5 (REMOTE_STAKE_MULTIPLIER_CAP).
const MAX_STAKE_MULTIPLIER: f64 = 1.5;
const STAKING_UNIT_NEURO: f64 = 1000.0;
const STAKING_BASE_BONUS: f64 = 0.1;

/// 1 + 0.1·log2(1 + stake/1000 NEURO), capped at 1.5 (the original's formula).
pub fn stake_multiplier(stake: Nano) -> f64 {
    let stake = stake as f64 / NANO_PER_NEURO as f64;
    (1.0 + STAKING_BASE_BONUS * (1.0 + stake / STAKING_UNIT_NEURO).log2()).min(MAX_STAKE_MULTIPLIER)
}

/// The multiplier in millionths, rounded, so the credit itself is integer arithmetic.
fn stake_multiplier_ppm(stake: Nano) -> u64 {
    (stake_multiplier(stake) * PPM as f64).round() as u64
}

/// The burned fee of a transfer: 5% of the amount, rounded up (the original's FEE_BURN_RATE).
pub fn burn_fee(amount: Nano) -> Nano {
    amount.div_ceil(20)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proof(kind: ProofKind) -> Proof {
        Proof {
            work_seconds: 60,
            ..Proof::empty(kind)
        }
    }

    #[test]
    fn base_rewards_follow_the_original_schedule() {
        let schedule = RewardSchedule::default();
        let mut p = proof(ProofKind::Uptime);
        p.uptime_seconds = 120;
        assert_eq!(schedule.base_reward(&p), nano(0.0002));
        let mut p = proof(ProofKind::Training);
        p.batches = 500;
        p.uptime_seconds = 1_000_000; // ignored by a training proof
        assert_eq!(schedule.base_reward(&p), nano(0.25));
        let mut p = proof(ProofKind::Data);
        p.data_samples = 1000;
        assert_eq!(schedule.base_reward(&p), nano(0.01));
        let mut p = proof(ProofKind::Inference);
        p.tokens = 2_000_000;
        assert_eq!(schedule.base_reward(&p), nano(0.2));
    }

    #[test]
    fn huge_counters_saturate_instead_of_overflowing() {
        let mut p = proof(ProofKind::Training);
        p.batches = u64::MAX;
        assert_eq!(RewardSchedule::default().base_reward(&p), Nano::MAX);
    }

    #[test]
    fn stake_multiplier_matches_the_original_and_caps_at_one_and_a_half() {
        assert_eq!(stake_multiplier(0), 1.0);
        assert!((stake_multiplier(nano(1000.0)) - 1.1).abs() < 1e-12);
        assert!((stake_multiplier(nano(10_000.0)) - 1.345_943_161_863_729_6).abs() < 1e-12);
        assert_eq!(stake_multiplier(nano(100_000.0)), 1.5);
    }

    #[test]
    fn credit_applies_the_multiplier_then_the_cap() {
        let schedule = RewardSchedule::default();
        assert_eq!(schedule.credited(nano(1.0), 0), nano(1.0));
        assert_eq!(schedule.credited(nano(1.0), nano(1000.0)), nano(1.1));
        assert_eq!(schedule.credited(nano(90.0), nano(1e6)), nano(100.0));
    }

    #[test]
    fn fee_is_five_percent_rounded_up() {
        assert_eq!(burn_fee(nano(1.0)), nano(0.05));
        assert_eq!(burn_fee(21), 2);
        assert_eq!(burn_fee(0), 0);
    }

    #[test]
    fn schedule_refuses_negative_or_non_finite_rates() {
        let mut schedule = RewardSchedule::default();
        assert!(schedule.validate().is_ok());
        schedule.training_per_batch = -1.0;
        assert!(
            schedule
                .validate()
                .unwrap_err()
                .contains("training_per_batch")
        );
        schedule.training_per_batch = f64::NAN;
        assert!(schedule.validate().is_err());
    }
}
