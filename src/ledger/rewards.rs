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
    /// Length of an emission epoch: proofs are grouped by `timestamp_ms / (epoch_s · 1000)`.
    pub epoch_s: u64,
    /// The most NEURO all proofs of one epoch mint together, whatever the number of identities
    /// that made them: above it every credit of the epoch is scaled down pro rata.
    pub emission_per_epoch: f64,
}

impl Default for RewardSchedule {
    fn default() -> Self {
        Self {
            uptime_per_minute: 0.0001,
            training_per_batch: 0.0005,
            data_per_sample: 0.00001,
            inference_per_million_tokens: 0.1,
            max_per_proof: 100.0,
            epoch_s: 3600,
            // The original's rates pay a node that trains one batch a second 1.8 NEURO an hour
            // (0.0005 × 3600) and 0.006 for its uptime: 1000 NEURO an hour pays about 550 such
            // nodes in full, and is ten capped proofs.
            emission_per_epoch: 1000.0,
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
            ("emission_per_epoch", self.emission_per_epoch),
        ];
        for (name, value) in rates {
            if !(0.0..=1e9).contains(&value) {
                return Err(format!(
                    "{name} must be between 0 and 1e9 NEURO, got {value}"
                ));
            }
        }
        if self.max_per_proof <= 0.0 {
            return Err("max_per_proof must be positive".into());
        }
        if self.emission_per_epoch <= 0.0 {
            return Err("emission_per_epoch must be positive".into());
        }
        if !(1..=MAX_EPOCH_S).contains(&self.epoch_s) {
            return Err(format!(
                "epoch_s must be between 1 and {MAX_EPOCH_S} (a year), got {}",
                self.epoch_s
            ));
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

    pub fn emission_per_epoch_nano(&self) -> Nano {
        nano(self.emission_per_epoch)
    }

    /// An epoch's length in milliseconds (an `epoch_s` of 0 counts as 1 s, so an unvalidated
    /// schedule cannot divide by zero).
    pub fn epoch_ms(&self) -> u64 {
        self.epoch_s.max(1).saturating_mul(1000)
    }

    /// The emission epoch a timestamp falls in.
    pub fn epoch_of(&self, timestamp_ms: u64) -> u64 {
        timestamp_ms / self.epoch_ms()
    }

    /// The first millisecond of `epoch`.
    pub fn epoch_start_ms(&self, epoch: u64) -> u64 {
        epoch.saturating_mul(self.epoch_ms())
    }

    /// What a proof is credited: base × the signer's stake multiplier, capped per proof.
    pub fn credited(&self, base: Nano, stake: Nano) -> Nano {
        let boosted = base as u128 * stake_multiplier_ppm(stake) as u128 / PPM as u128;
        boosted.min(self.max_per_proof_nano() as u128) as Nano
    }
}

/// The longest emission epoch `validate` allows: a year.
pub const MAX_EPOCH_S: u64 = 365 * 86_400;

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
        let no_emission = RewardSchedule {
            emission_per_epoch: 0.0,
            ..RewardSchedule::default()
        };
        assert!(
            no_emission
                .validate()
                .unwrap_err()
                .contains("emission_per_epoch")
        );
        let no_epoch = RewardSchedule {
            epoch_s: 0,
            ..RewardSchedule::default()
        };
        assert!(no_epoch.validate().unwrap_err().contains("epoch_s"));
    }

    #[test]
    fn timestamps_fall_into_epochs_of_epoch_s() {
        let schedule = RewardSchedule::default();
        assert_eq!(schedule.epoch_of(0), 0);
        assert_eq!(schedule.epoch_of(3_599_999), 0);
        assert_eq!(schedule.epoch_of(3_600_000), 1);
        assert_eq!(schedule.epoch_start_ms(2), 7_200_000);
        assert_eq!(schedule.emission_per_epoch_nano(), nano(1000.0));
    }
}
