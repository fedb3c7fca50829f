//! Verification of a Proof of Neural Work: signature, freshness, replay, rate, plausibility and
//! the per-proof cap, with the Python original's anti-cheat constants as defaults; then whether
//! anyone but the claimant vouches for the work (a data or inference proof's receipt).

use serde::{Deserialize, Serialize};

use super::proof::{check_receipt, check_signature, needs_receipt};
use super::rewards::RewardSchedule;
use super::{Nano, Proof, ProofKind, ProofRejection, SignedProof, TxRejection, Unreceipted};

/// Anti-cheat bounds. `[ledger.limits]` in the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProofLimits {
    /// Proofs and transactions older than this are stale (PROOF_FRESHNESS_WINDOW).
    pub freshness_window_s: u64,
    /// How far ahead of this node's clock a timestamp may be (clock skew between nodes).
    pub max_future_s: u64,
    /// Proofs one node may have accepted in the last hour (MAX_PROOFS_PER_HOUR).
    pub max_proofs_per_hour: u32,
    /// Uptime one proof may claim (MAX_UPTIME_PER_PROOF).
    pub max_uptime_per_proof_s: u64,
    /// Tokens per minute of work_seconds (MAX_TOKENS_PER_MINUTE).
    pub max_tokens_per_minute: u64,
    /// Training batches per minute of work_seconds.
    pub max_batches_per_minute: u64,
    /// Data samples per minute of work_seconds.
    pub max_samples_per_minute: u64,
    /// Shortest stake lock.
    pub min_lock_s: u64,
    /// Longest stake lock.
    pub max_lock_s: u64,
}

impl Default for ProofLimits {
    fn default() -> Self {
        Self {
            freshness_window_s: 300,
            max_future_s: 60,
            max_proofs_per_hour: 120,
            max_uptime_per_proof_s: 120,
            max_tokens_per_minute: 1_000_000,
            max_batches_per_minute: 6_000,
            max_samples_per_minute: 1_000_000,
            min_lock_s: 86_400,
            max_lock_s: 365 * 86_400,
        }
    }
}

impl ProofLimits {
    /// Every window and rate is positive and the lock bounds are ordered.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("freshness_window_s", self.freshness_window_s),
            ("max_future_s", self.max_future_s),
            ("max_proofs_per_hour", u64::from(self.max_proofs_per_hour)),
            ("max_uptime_per_proof_s", self.max_uptime_per_proof_s),
            ("max_tokens_per_minute", self.max_tokens_per_minute),
            ("max_batches_per_minute", self.max_batches_per_minute),
            ("max_samples_per_minute", self.max_samples_per_minute),
            ("min_lock_s", self.min_lock_s),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if self.min_lock_s > self.max_lock_s {
            return Err(format!(
                "min_lock_s ({}) must not exceed max_lock_s ({})",
                self.min_lock_s, self.max_lock_s
            ));
        }
        Ok(())
    }
}

/// What the store knows about a proof's signer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProofHistory {
    /// The signer already has an accepted proof with this nonce.
    pub nonce_used: bool,
    /// The signer's proofs accepted in the hour before this one.
    pub proofs_last_hour: u32,
    /// timestamp_ms of the signer's last accepted uptime proof.
    pub last_uptime_ms: Option<u64>,
}

/// One proof covers at most a day of work.
pub const MAX_WORK_SECONDS: u64 = 86_400;
/// Tolerance for an uptime claim against the time since the last one (timer jitter).
pub const UPTIME_SLACK_S: u64 = 5;

/// Whether a node that made `proofs_last_hour` proofs in the last hour may make one more training
/// proof and still have room for the uptime proofs it owes every `uptime_interval_s` until the
/// hour is over: peers refuse proofs beyond `max_proofs_per_hour`, and an honest node does not
/// send what they would refuse (at a short round length it trains more rounds an hour than
/// the limit admits proofs; the rounds beyond go unclaimed).
pub fn room_for_training_proof(
    proofs_last_hour: u32,
    limits: &ProofLimits,
    uptime_interval_s: u64,
) -> bool {
    let uptime_reserve = 3600u32.div_ceil(uptime_interval_s.clamp(1, 3600) as u32);
    proofs_last_hour.saturating_add(uptime_reserve) < limits.max_proofs_per_hour
}

/// What a valid proof is offered.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// Base reward in nano-NEURO, before the stake multiplier and the epoch's emission bound;
    /// 0 when `unpaid`.
    pub reward: Nano,
    /// Why a valid proof earns nothing: a data or inference proof that no one but its claimant
    /// vouches for. It is stored and shown, credited 0.
    pub unpaid: Option<Unreceipted>,
}

impl Offer {
    pub fn paid(reward: Nano) -> Self {
        Self {
            reward,
            unpaid: None,
        }
    }
}

/// What a proof is offered if it passes every check, in order: signature (format, signature,
/// key), freshness, replay, rate limit, plausibility, cap. A data or inference proof without a
/// valid receipt from its receiver passes (it is stored) but is offered 0, with the reason.
pub fn verify_proof(
    now_ms: u64,
    signed: &SignedProof,
    history: &ProofHistory,
    limits: &ProofLimits,
    schedule: &RewardSchedule,
) -> Result<Offer, ProofRejection> {
    check_signature(signed)?;
    let proof = &signed.proof;
    check_freshness(now_ms, proof.timestamp_ms, limits)?;
    if history.nonce_used {
        return Err(ProofRejection::Replay { nonce: proof.nonce });
    }
    if history.proofs_last_hour >= limits.max_proofs_per_hour {
        return Err(ProofRejection::RateLimited {
            limit: limits.max_proofs_per_hour,
        });
    }
    check_kind_requirements(proof)?;
    check_plausibility(proof, history, limits)?;
    offer(proof, schedule)
}

/// What a proof that passed the other checks is offered: its base reward within the cap, 0 when
/// it lacks a valid receipt. The store's base reward of a synced proof is the same.
pub fn offer(proof: &Proof, schedule: &RewardSchedule) -> Result<Offer, ProofRejection> {
    let reward = schedule.base_reward(proof);
    let cap = schedule.max_per_proof_nano();
    if reward > cap {
        return Err(ProofRejection::OverCap { reward, cap });
    }
    Ok(match unpaid_reason(proof) {
        None => Offer::paid(reward),
        unpaid => Offer { reward: 0, unpaid },
    })
}

/// Why a proof that passed verification earns nothing (`None`: it earns its reward). The same
/// rule decides a stored proof's status, so `ledger verify` recomputes it from the body.
pub fn unpaid_reason(proof: &Proof) -> Option<Unreceipted> {
    if needs_receipt(proof.kind) {
        check_receipt(proof).err()
    } else {
        None
    }
}

/// A timestamp outside the freshness window, shared by proofs and transactions.
#[derive(Debug, PartialEq)]
pub(super) enum Unfresh {
    Stale { age_s: u64, window_s: u64 },
    Future { ahead_s: u64 },
}

pub(super) fn check_freshness(
    now_ms: u64,
    timestamp_ms: u64,
    limits: &ProofLimits,
) -> Result<(), Unfresh> {
    let age_ms = now_ms.saturating_sub(timestamp_ms);
    if age_ms > limits.freshness_window_s.saturating_mul(1000) {
        return Err(Unfresh::Stale {
            age_s: age_ms / 1000,
            window_s: limits.freshness_window_s,
        });
    }
    let ahead_ms = timestamp_ms.saturating_sub(now_ms);
    if ahead_ms > limits.max_future_s.saturating_mul(1000) {
        return Err(Unfresh::Future {
            ahead_s: ahead_ms / 1000,
        });
    }
    Ok(())
}

impl From<Unfresh> for ProofRejection {
    fn from(unfresh: Unfresh) -> Self {
        match unfresh {
            Unfresh::Stale { age_s, window_s } => ProofRejection::Stale { age_s, window_s },
            Unfresh::Future { ahead_s } => ProofRejection::Future { ahead_s },
        }
    }
}

impl From<Unfresh> for TxRejection {
    fn from(unfresh: Unfresh) -> Self {
        match unfresh {
            Unfresh::Stale { age_s, window_s } => TxRejection::Stale { age_s, window_s },
            Unfresh::Future { ahead_s } => TxRejection::Future { ahead_s },
        }
    }
}

/// The counters and hashes without which a kind's proof claims nothing checkable.
fn check_kind_requirements(proof: &Proof) -> Result<(), ProofRejection> {
    let missing = match proof.kind {
        ProofKind::Training if proof.batches == 0 => Some("a training proof needs batches > 0"),
        ProofKind::Training if proof.delta_hash.is_empty() => {
            Some("a training proof needs a delta_hash")
        }
        ProofKind::Training if proof.model_hash_before.is_empty() => {
            Some("a training proof needs a model_hash_before")
        }
        ProofKind::Inference if proof.request_id.is_empty() => {
            Some("an inference proof needs a request_id")
        }
        ProofKind::Inference if proof.tokens == 0 => Some("an inference proof needs tokens > 0"),
        ProofKind::Uptime if proof.uptime_seconds == 0 => {
            Some("an uptime proof needs uptime_seconds > 0")
        }
        ProofKind::Data if proof.data_samples == 0 => Some("a data proof needs data_samples > 0"),
        kind if proof.receipt.is_some() && !needs_receipt(kind) => {
            Some("only data and inference proofs carry a receipt")
        }
        _ => None,
    };
    match missing {
        Some(message) => Err(ProofRejection::Malformed(message.into())),
        None => Ok(()),
    }
}

/// Counters no honest node can reach in the work_seconds the proof covers.
fn check_plausibility(
    proof: &Proof,
    history: &ProofHistory,
    limits: &ProofLimits,
) -> Result<(), ProofRejection> {
    let work_seconds = proof.work_seconds;
    // Every bound below is a rate over work_seconds; zero seconds of work claims nothing.
    if work_seconds == 0 {
        return Err(ProofRejection::Malformed(
            "work_seconds must be at least 1".into(),
        ));
    }
    at_most("work_seconds", work_seconds, MAX_WORK_SECONDS)?;
    at_most(
        "uptime_seconds",
        proof.uptime_seconds,
        limits.max_uptime_per_proof_s,
    )?;
    at_most("uptime_seconds", proof.uptime_seconds, work_seconds)?;
    if proof.kind == ProofKind::Uptime
        && let Some(last_uptime_ms) = history.last_uptime_ms
    {
        // Two uptime proofs cannot both claim the same seconds.
        let since_last_s = proof.timestamp_ms.saturating_sub(last_uptime_ms) / 1000;
        at_most(
            "uptime_seconds",
            proof.uptime_seconds,
            since_last_s.saturating_add(UPTIME_SLACK_S),
        )?;
    }
    // Only inference is paid per token; a training proof's tokens earn nothing (its batches do),
    // and a small model trains far faster than the original's inference bound.
    if proof.kind == ProofKind::Inference {
        at_most(
            "tokens",
            proof.tokens,
            per_minute(limits.max_tokens_per_minute, work_seconds),
        )?;
    }
    at_most(
        "batches",
        proof.batches,
        per_minute(limits.max_batches_per_minute, work_seconds),
    )?;
    at_most(
        "data_samples",
        proof.data_samples,
        per_minute(limits.max_samples_per_minute, work_seconds),
    )
}

fn at_most(field: &'static str, value: u64, limit: u64) -> Result<(), ProofRejection> {
    if value > limit {
        return Err(ProofRejection::Implausible {
            field,
            value,
            limit,
        });
    }
    Ok(())
}

/// `rate_per_minute` over `seconds`, rounded up (so a short proof still allows one unit).
fn per_minute(rate_per_minute: u64, seconds: u64) -> u64 {
    let limit = (u128::from(rate_per_minute) * u128::from(seconds)).div_ceil(60);
    u64::try_from(limit).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_training_proof_is_made_only_with_room_left_for_the_hours_uptime() {
        let limits = ProofLimits::default();
        // 120 an hour, an uptime proof a minute: 60 places for training.
        assert!(room_for_training_proof(59, &limits, 60));
        assert!(!room_for_training_proof(60, &limits, 60));
        // Uptime every 2 s alone fills the hour: no training proof.
        assert!(!room_for_training_proof(0, &limits, 2));
        assert!(!room_for_training_proof(0, &limits, 0));
    }
    use crate::crypto::Identity;
    use crate::ledger::proof::tests::{
        Edit, NOW_MS, data_proof, high_s_twin, identity, other_identity, receipted,
        signed_training_proof, tamperings, training_proof,
    };
    use crate::ledger::proof::{canonical_bytes, sign_proof, sign_receipt};
    use crate::ledger::rewards::nano;

    fn verify(signed: &SignedProof) -> Result<Nano, ProofRejection> {
        verify_with(signed, &ProofHistory::default())
    }

    fn verify_with(signed: &SignedProof, history: &ProofHistory) -> Result<Nano, ProofRejection> {
        offer_with(signed, history).map(|offer| offer.reward)
    }

    fn offer(signed: &SignedProof) -> Result<Offer, ProofRejection> {
        offer_with(signed, &ProofHistory::default())
    }

    fn offer_with(signed: &SignedProof, history: &ProofHistory) -> Result<Offer, ProofRejection> {
        verify_proof(
            NOW_MS,
            signed,
            history,
            &ProofLimits::default(),
            &RewardSchedule::default(),
        )
    }

    fn self_declared() -> Result<Offer, ProofRejection> {
        Ok(Offer {
            reward: 0,
            unpaid: Some(Unreceipted::Missing),
        })
    }

    /// An inference proof of `identity()` claiming 10⁶ tokens in 60 s, without a receipt.
    fn inference_proof() -> Proof {
        Proof {
            kind: ProofKind::Inference,
            work_seconds: 60,
            tokens: 1_000_000,
            data_samples: 0,
            request_id: "req-7".into(),
            ..data_proof()
        }
    }

    #[test]
    fn a_self_declared_data_proof_from_a_fresh_key_is_valid_and_offered_nothing() {
        // The measured attack: 10⁷ samples in 600 s would earn the 100 NEURO cap.
        let fresh = Identity::from_token(&format!("{:064x}", 0xf4e5)).unwrap();
        let claim = sign_proof(&fresh, data_proof()).unwrap();
        assert_eq!(offer(&claim), self_declared());
        assert_eq!(
            Unreceipted::Missing.to_string(),
            "self-declared: no receipt from the receiving party"
        );
        // With the receiving party's receipt the same work earns its reward.
        assert_eq!(
            offer(&receipted(&other_identity(), data_proof())),
            Ok(Offer::paid(nano(100.0)))
        );
    }

    #[test]
    fn the_claim_inflation_switchs_proofs_are_valid_and_offered_nothing() {
        // What NEUROSHARD_FAULT_CLAIM_INFLATION signs every uptime tick: each plausible and at
        // the 100 NEURO cap, so only the missing receipt stands between them and the cap.
        let data = sign_proof(&identity(), data_proof()).unwrap();
        let inference = sign_proof(
            &identity(),
            Proof {
                kind: ProofKind::Inference,
                work_seconds: 60_000,
                tokens: 1_000_000_000,
                data_samples: 0,
                request_id: "inflated-0000000000000008".into(),
                ..data_proof()
            },
        )
        .unwrap();
        for claim in [data, inference] {
            assert_eq!(offer(&claim), self_declared(), "{:?}", claim.proof.kind);
            let mut vouched = claim.proof.clone();
            vouched.receipt = Some(sign_receipt(&other_identity(), &vouched).unwrap());
            let vouched = sign_proof(&identity(), vouched).unwrap();
            assert_eq!(offer(&vouched), Ok(Offer::paid(nano(100.0))));
        }
    }

    #[test]
    fn a_self_declared_inference_proof_is_offered_nothing() {
        let claim = sign_proof(&identity(), inference_proof()).unwrap();
        assert_eq!(offer(&claim), self_declared());
        assert_eq!(
            offer(&receipted(&other_identity(), inference_proof())),
            Ok(Offer::paid(nano(0.1)))
        );
    }

    #[test]
    fn an_invalid_receipt_is_offered_nothing_with_its_reason() {
        let own = receipted(&identity(), data_proof());
        assert_eq!(
            offer(&own),
            Ok(Offer {
                reward: 0,
                unpaid: Some(Unreceipted::OwnReceipt)
            })
        );
        // The receipt was for half the samples; the claimant re-signed a claim of all of them.
        let half = Proof {
            data_samples: 5_000_000,
            ..data_proof()
        };
        let mut inflated = receipted(&other_identity(), half).proof;
        inflated.data_samples = 10_000_000;
        let inflated = sign_proof(&identity(), inflated).unwrap();
        assert_eq!(
            offer(&inflated),
            Ok(Offer {
                reward: 0,
                unpaid: Some(Unreceipted::BadSignature)
            })
        );
    }

    #[test]
    fn a_self_declared_proof_still_passes_every_check_first() {
        // Over the cap, replayed or implausible: refused, receipt or not.
        let greedy = sign_proof(
            &identity(),
            Proof {
                data_samples: 20_000_000,
                work_seconds: 1200,
                ..data_proof()
            },
        )
        .unwrap();
        assert!(matches!(
            offer(&greedy),
            Err(ProofRejection::OverCap { .. })
        ));
        let replayed = ProofHistory {
            nonce_used: true,
            ..ProofHistory::default()
        };
        let claim = sign_proof(&identity(), data_proof()).unwrap();
        assert_eq!(
            offer_with(&claim, &replayed),
            Err(ProofRejection::Replay { nonce: 8 })
        );
        let fast = sign_proof(
            &identity(),
            Proof {
                work_seconds: 599,
                ..data_proof()
            },
        )
        .unwrap();
        assert!(matches!(
            offer(&fast),
            Err(ProofRejection::Implausible {
                field: "data_samples",
                ..
            })
        ));
    }

    #[test]
    fn only_data_and_inference_proofs_carry_a_receipt() {
        for mut proof in [signed_training_proof().proof, uptime(|_| {}).proof] {
            proof.receipt = Some(sign_receipt(&other_identity(), &proof).unwrap());
            let signed = sign_proof(&identity(), proof).unwrap();
            assert!(malformed_message(verify(&signed)).contains("receipt"));
        }
    }

    fn signed(edit: impl FnOnce(&mut Proof)) -> SignedProof {
        let mut proof = training_proof();
        edit(&mut proof);
        sign_proof(&identity(), proof).unwrap()
    }

    fn uptime(edit: impl FnOnce(&mut Proof)) -> SignedProof {
        signed(|p| {
            *p = Proof {
                kind: ProofKind::Uptime,
                work_seconds: 60,
                uptime_seconds: 60,
                tokens: 0,
                batches: 0,
                data_samples: 0,
                request_id: String::new(),
                model_hash_before: String::new(),
                model_hash_after: String::new(),
                delta_hash: String::new(),
                loss: 0.0,
                ..p.clone()
            };
            edit(p)
        })
    }

    fn implausible(field: &'static str, value: u64, limit: u64) -> Result<Nano, ProofRejection> {
        Err(ProofRejection::Implausible {
            field,
            value,
            limit,
        })
    }

    fn malformed_message(result: Result<Nano, ProofRejection>) -> String {
        match result {
            Err(ProofRejection::Malformed(message)) => message,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_proof_earns_its_base_reward() {
        // 120 batches at 0.0005 NEURO.
        assert_eq!(verify(&signed_training_proof()), Ok(nano(0.06)));
        assert_eq!(verify(&uptime(|_| {})), Ok(nano(0.0001)));
    }

    #[test]
    fn tampering_any_field_fails_verification() {
        let original = signed_training_proof();
        for (field, tamper) in tamperings() {
            let mut tampered = original.clone();
            tamper(&mut tampered);
            assert_eq!(
                verify(&tampered),
                Err(ProofRejection::BadSignature),
                "{field}"
            );
        }
    }

    #[test]
    fn a_signature_by_another_key_fails_verification() {
        let mut forged = signed_training_proof();
        forged.signature = sign_proof(&other_identity(), training_proof())
            .unwrap()
            .signature;
        assert_eq!(verify(&forged), Err(ProofRejection::BadSignature));
    }

    #[test]
    fn a_foreign_public_key_with_a_matching_signature_fails_verification() {
        let other = other_identity();
        let mut proof = training_proof();
        proof.node_id = identity().node_id;
        proof.public_key = hex::encode(other.public.serialize());
        let signature = hex::encode(other.sign(&canonical_bytes(&proof).unwrap()));
        assert!(matches!(
            verify(&SignedProof { proof, signature }),
            Err(ProofRejection::ForeignKey { .. })
        ));
    }

    #[test]
    fn a_high_s_signature_fails_verification() {
        let mut high = signed_training_proof();
        let low: [u8; 64] = hex::decode(&high.signature).unwrap().try_into().unwrap();
        high.signature = hex::encode(high_s_twin(&low));
        assert_eq!(verify(&high), Err(ProofRejection::BadSignature));
    }

    #[test]
    fn malformed_fields_fail_verification_before_the_signature() {
        let mut upper = signed_training_proof();
        upper.proof.delta_hash.replace_range(..1, "A");
        assert!(malformed_message(verify(&upper)).contains("delta_hash"));
        let mut infinite = signed_training_proof();
        infinite.proof.loss = f32::INFINITY;
        assert!(malformed_message(verify(&infinite)).contains("loss"));
    }

    #[test]
    fn a_stale_proof_is_refused() {
        let limits = ProofLimits::default();
        let signed = signed_training_proof();
        let window_ms = limits.freshness_window_s * 1000;
        let schedule = RewardSchedule::default();
        let history = ProofHistory::default();
        let at = |now_ms| verify_proof(now_ms, &signed, &history, &limits, &schedule);
        assert!(at(NOW_MS + window_ms).is_ok());
        assert_eq!(
            at(NOW_MS + window_ms + 1),
            Err(ProofRejection::Stale {
                age_s: 300,
                window_s: 300
            })
        );
        assert_eq!(
            at(NOW_MS + 3_600_000),
            Err(ProofRejection::Stale {
                age_s: 3600,
                window_s: 300
            })
        );
    }

    #[test]
    fn a_proof_from_the_future_is_refused() {
        let limits = ProofLimits::default();
        let signed = signed_training_proof();
        let schedule = RewardSchedule::default();
        let history = ProofHistory::default();
        let at = |now_ms| verify_proof(now_ms, &signed, &history, &limits, &schedule);
        assert!(at(NOW_MS - 60_000).is_ok());
        assert_eq!(
            at(NOW_MS - 61_000),
            Err(ProofRejection::Future { ahead_s: 61 })
        );
        assert_eq!(
            at(0),
            Err(ProofRejection::Future {
                ahead_s: NOW_MS / 1000
            })
        );
    }

    #[test]
    fn a_used_nonce_is_a_replay() {
        let history = ProofHistory {
            nonce_used: true,
            ..ProofHistory::default()
        };
        assert_eq!(
            verify_with(&signed_training_proof(), &history),
            Err(ProofRejection::Replay { nonce: 7 })
        );
    }

    #[test]
    fn too_many_proofs_in_an_hour_are_rate_limited() {
        let mut history = ProofHistory {
            proofs_last_hour: 119,
            ..ProofHistory::default()
        };
        assert!(verify_with(&signed_training_proof(), &history).is_ok());
        history.proofs_last_hour = 120;
        assert_eq!(
            verify_with(&signed_training_proof(), &history),
            Err(ProofRejection::RateLimited { limit: 120 })
        );
    }

    #[test]
    fn work_seconds_must_be_between_one_second_and_a_day() {
        assert!(
            malformed_message(verify(&signed(|p| p.work_seconds = 0))).contains("work_seconds")
        );
        assert!(verify(&signed(|p| p.work_seconds = 86_400)).is_ok());
        assert_eq!(
            verify(&signed(|p| p.work_seconds = 86_401)),
            implausible("work_seconds", 86_401, 86_400)
        );
        assert_eq!(
            verify(&signed(|p| p.work_seconds = u64::MAX)),
            implausible("work_seconds", u64::MAX, 86_400)
        );
    }

    #[test]
    fn uptime_is_capped_per_proof_and_by_work_seconds() {
        assert_eq!(
            verify(&uptime(|p| {
                p.work_seconds = 600;
                p.uptime_seconds = 121;
            })),
            implausible("uptime_seconds", 121, 120)
        );
        assert_eq!(
            verify(&uptime(|p| p.uptime_seconds = 61)),
            implausible("uptime_seconds", 61, 60)
        );
    }

    #[test]
    fn overlapping_uptime_claims_are_implausible() {
        let proof = uptime(|_| {});
        let since = |seconds: u64| ProofHistory {
            last_uptime_ms: Some(NOW_MS - seconds * 1000),
            ..ProofHistory::default()
        };
        assert!(verify_with(&proof, &since(60)).is_ok());
        assert!(verify_with(&proof, &since(55)).is_ok()); // within the slack
        assert_eq!(
            verify_with(&proof, &since(54)),
            implausible("uptime_seconds", 60, 59)
        );
        // A last uptime proof after this one leaves only the slack.
        let later = ProofHistory {
            last_uptime_ms: Some(NOW_MS + 1000),
            ..ProofHistory::default()
        };
        assert_eq!(
            verify_with(&proof, &later),
            implausible("uptime_seconds", 60, 5)
        );
        // Only uptime proofs claim uptime intervals.
        assert!(verify_with(&signed_training_proof(), &since(1)).is_ok());
    }

    #[test]
    fn counters_are_bounded_by_rates_over_work_seconds() {
        // 90 s of work: 9,000 batches, 1.5M samples, and (inference) 1.5M tokens.
        let inference = |tokens: u64| {
            signed(move |p| {
                p.kind = ProofKind::Inference;
                p.request_id = "req-1".into();
                p.tokens = tokens;
            })
        };
        assert!(
            verify(&signed(|p| {
                p.batches = 9_000;
                p.data_samples = 1_500_000;
            }))
            .is_ok()
        );
        assert!(verify(&inference(1_500_000)).is_ok());
        assert_eq!(
            verify(&inference(1_500_001)),
            implausible("tokens", 1_500_001, 1_500_000)
        );
        assert_eq!(
            verify(&inference(u64::MAX)),
            implausible("tokens", u64::MAX, 1_500_000)
        );
        // Training tokens earn nothing, so a small fast model may process any number of them.
        assert!(verify(&signed(|p| p.tokens = 100_000_000)).is_ok());
        assert_eq!(
            verify(&signed(|p| p.batches = 9_001)),
            implausible("batches", 9_001, 9_000)
        );
        assert_eq!(
            verify(&signed(|p| p.data_samples = 1_500_001)),
            implausible("data_samples", 1_500_001, 1_500_000)
        );
    }

    #[test]
    fn rate_bounds_round_up() {
        // One second at 6,000 batches a minute allows 100; 7 s at 1M tokens a minute 116,667.
        assert_eq!(per_minute(6_000, 1), 100);
        assert_eq!(per_minute(1_000_000, 7), 116_667);
        assert_eq!(per_minute(u64::MAX, u64::MAX), u64::MAX);
        assert_eq!(
            verify(&signed(|p| {
                p.work_seconds = 1;
                p.uptime_seconds = 1;
                p.batches = 101;
            })),
            implausible("batches", 101, 100)
        );
    }

    #[test]
    fn each_kind_needs_its_own_evidence() {
        let cases: [Edit<Proof>; 7] = [
            ("batches", |p| p.batches = 0),
            ("delta_hash", |p| p.delta_hash.clear()),
            ("model_hash_before", |p| p.model_hash_before.clear()),
            ("request_id", |p| {
                p.kind = ProofKind::Inference;
                p.request_id.clear();
            }),
            ("tokens", |p| {
                p.kind = ProofKind::Inference;
                p.tokens = 0;
            }),
            ("uptime_seconds", |p| {
                p.kind = ProofKind::Uptime;
                p.uptime_seconds = 0;
            }),
            ("data_samples", |p| {
                p.kind = ProofKind::Data;
                p.data_samples = 0;
            }),
        ];
        for (field, edit) in cases {
            assert!(
                malformed_message(verify(&signed(edit))).contains(field),
                "{field}"
            );
        }
        assert!(verify(&signed(|p| p.kind = ProofKind::Inference)).is_ok());
        assert!(verify(&signed(|p| p.kind = ProofKind::Data)).is_ok());
    }

    #[test]
    fn a_reward_over_the_cap_is_refused() {
        // A day of training at 300,000 batches (within 600/min) would earn 150 NEURO.
        let over = signed(|p| {
            p.work_seconds = 86_400;
            p.batches = 300_000;
        });
        assert_eq!(
            verify(&over),
            Err(ProofRejection::OverCap {
                reward: nano(150.0),
                cap: nano(100.0)
            })
        );
        let at_cap = signed(|p| {
            p.work_seconds = 86_400;
            p.batches = 200_000;
        });
        assert_eq!(verify(&at_cap), Ok(nano(100.0)));
    }

    #[test]
    fn default_limits_are_the_originals_and_valid() {
        let limits = ProofLimits::default();
        assert_eq!(limits.freshness_window_s, 300);
        assert_eq!(limits.max_proofs_per_hour, 120);
        assert_eq!(limits.max_uptime_per_proof_s, 120);
        assert_eq!(limits.max_tokens_per_minute, 1_000_000);
        assert_eq!(limits.max_lock_s, 31_536_000);
        assert_eq!(limits.validate(), Ok(()));
    }

    #[test]
    fn limits_refuse_zero_windows_and_inverted_lock_bounds() {
        let zero_window = ProofLimits {
            freshness_window_s: 0,
            ..ProofLimits::default()
        };
        assert!(
            zero_window
                .validate()
                .unwrap_err()
                .contains("freshness_window_s")
        );
        let zero_rate = ProofLimits {
            max_proofs_per_hour: 0,
            ..ProofLimits::default()
        };
        assert!(
            zero_rate
                .validate()
                .unwrap_err()
                .contains("max_proofs_per_hour")
        );
        let inverted = ProofLimits {
            min_lock_s: 10,
            max_lock_s: 9,
            ..ProofLimits::default()
        };
        assert!(inverted.validate().unwrap_err().contains("min_lock_s"));
    }

    #[test]
    fn limits_deserialize_with_defaults_and_refuse_unknown_fields() {
        let limits: ProofLimits = serde_json::from_str(r#"{"max_future_s": 30}"#).unwrap();
        assert_eq!(
            limits,
            ProofLimits {
                max_future_s: 30,
                ..ProofLimits::default()
            }
        );
        assert!(serde_json::from_str::<ProofLimits>(r#"{"max_futur_s": 30}"#).is_err());
    }
}
