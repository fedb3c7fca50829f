//! Poisoned deltas for the Byzantine test fault switch (NEUROSHARD_FAULT_BYZANTINE): what a
//! malicious node would send in place of its honest Δ. A test and demo tool: it lets a test show
//! that the robust rules keep the shared model on course. The attacks that need the honest mean
//! and spread (ALIE, IPM) hold their delta back until the others' deltas of the round are in
//! (in a full-mesh round every node fetches them all) and compute it from those, as the papers'
//! omniscient attacker does; with nothing seen they estimate both from the own delta.
//! Also the poisoned vectors of the Sybil and heal-poisoning switches (NEUROSHARD_FAULT_SYBIL,
//! NEUROSHARD_FAULT_HEAL_POISON).

use std::time::Duration;

use crate::aggregate::norm;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attack {
    /// −10 × Δ: pushes the model uphill, hard.
    SignFlip,
    /// 10 × Δ: right direction, ten times too far.
    Scale,
    /// Gaussian noise with 10 × Δ's standard deviation per coordinate, in place of Δ.
    Gaussian,
    /// Δ with NaNs in it: must be refused before aggregation.
    Nan,
    /// "A little is enough" (Baruch et al., 2019): μ − z·σ per coordinate over the deltas seen
    /// this round (small enough to pass distance-based filters); alone, μ ≈ Δ and σ ≈ |Δ|.
    /// `alie` is z = [`ALIE_Z`], `alie:Z` another z.
    Alie { z: f32 },
    /// Inner-product manipulation (Xie et al., 2020): −ε·μ, μ the mean of the deltas seen this
    /// round; alone, μ ≈ the own Δ. `ipm` is ε = [`IPM_EPSILON`], `ipm:E` another ε.
    Ipm { epsilon: f32 },
}

/// ALIE's default z: one standard deviation below the mean in every coordinate.
pub const ALIE_Z: f32 = 1.0;
/// IPM's default ε: half the honest mean, reversed.
pub const IPM_EPSILON: f32 = 0.5;
/// An attacker that reads the others' deltas sends once none has arrived for this long ...
pub const QUIET_BEFORE_SENDING: Duration = Duration::from_secs(2);
/// ... or once it has waited this long, whatever it has seen.
pub const MOST_WAITED_BEFORE_SENDING: Duration = Duration::from_secs(30);

impl Attack {
    /// The values the fault switch and `--attack` take.
    pub const NAMES: &str = "sign_flip, scale, gaussian, nan, alie[:Z], ipm[:EPSILON]";

    /// `sign_flip`, `scale`, `gaussian`, `nan`, `alie` or `ipm`; the last two optionally with
    /// their strength after a colon (`alie:2.5`, `ipm:0.9`), a finite number above 0.
    pub fn parse(name: &str) -> Option<Self> {
        let (kind, strength) = match name.split_once(':') {
            Some((kind, value)) => match value.parse::<f32>() {
                Ok(v) if v.is_finite() && v > 0.0 => (kind, Some(v)),
                _ => return None,
            },
            None => (name, None),
        };
        match (kind, strength) {
            ("sign_flip", None) => Some(Self::SignFlip),
            ("scale", None) => Some(Self::Scale),
            ("gaussian", None) => Some(Self::Gaussian),
            ("nan", None) => Some(Self::Nan),
            ("alie", z) => Some(Self::Alie {
                z: z.unwrap_or(ALIE_Z),
            }),
            ("ipm", epsilon) => Some(Self::Ipm {
                epsilon: epsilon.unwrap_or(IPM_EPSILON),
            }),
            _ => None,
        }
    }

    /// Needs the round's honest deltas (the node holds its own back until they are in).
    pub fn reads_the_others(self) -> bool {
        matches!(self, Self::Alie { .. } | Self::Ipm { .. })
    }
}

/// Whether an attacker that reads the others' deltas sends now: it has `seen` of the `others`
/// trainers it hears, the last of them `quiet` ago (none yet: `quiet` is how long it waited),
/// and it has waited `waited` since its own delta was ready. It does not wait for the whole
/// round: another attacker may be holding back too.
pub fn attacker_sends(seen: usize, others: usize, quiet: Duration, waited: Duration) -> bool {
    (others > 0 && seen >= others)
        || (seen > 0 && quiet >= QUIET_BEFORE_SENDING)
        || waited >= MOST_WAITED_BEFORE_SENDING
}

/// Per coordinate, the mean and (population) standard deviation of `deltas` (equal lengths).
pub fn mean_and_std(deltas: &[&[f32]]) -> (Vec<f32>, Vec<f32>) {
    let n = deltas.len().max(1) as f64;
    let d = deltas.first().map_or(0, |x| x.len());
    (0..d)
        .map(|j| {
            let mean = deltas.iter().map(|x| f64::from(x[j])).sum::<f64>() / n;
            let var = deltas
                .iter()
                .map(|x| (f64::from(x[j]) - mean).powi(2))
                .sum::<f64>()
                / n;
            (mean as f32, var.sqrt() as f32)
        })
        .unzip()
}

/// ALIE: μ − z·σ per coordinate.
pub fn alie(mean: &[f32], std: &[f32], z: f32) -> Vec<f32> {
    mean.iter().zip(std).map(|(m, s)| m - z * s).collect()
}

/// IPM: −ε·μ.
pub fn ipm(mean: &[f32], epsilon: f32) -> Vec<f32> {
    mean.iter().map(|m| -epsilon * m).collect()
}

/// What a node running `attack` sends, its own honest delta `own`, having seen `seen` (the
/// mean and spread of this round's deltas, its own among them: [`seen_statistics`]): ALIE and
/// IPM from those; every other attack, or nothing seen, as [`poison`].
pub fn poison_informed(
    attack: Attack,
    own: &[f32],
    seen: Option<&(Vec<f32>, Vec<f32>)>,
    seed: u64,
) -> Vec<f32> {
    match (attack, seen) {
        (Attack::Alie { z }, Some((mean, std))) => alie(mean, std, z),
        (Attack::Ipm { epsilon }, Some((mean, _))) => ipm(mean, epsilon),
        _ => poison(attack, own, seed),
    }
}

/// The mean and spread of `own` and `others` (those of its length), when there are two or more.
pub fn seen_statistics<'a>(
    own: &'a [f32],
    others: impl Iterator<Item = &'a [f32]>,
) -> Option<(Vec<f32>, Vec<f32>)> {
    let seen: Vec<&[f32]> = std::iter::once(own)
        .chain(others)
        .filter(|d| d.len() == own.len())
        .collect();
    (seen.len() >= 2).then(|| mean_and_std(&seen))
}

/// SplitMix64: a fixed, seedable stream, so a poisoned run (or a simulation) is reproducible.
pub(crate) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A standard normal sample (Box–Muller).
pub(crate) fn normal(state: &mut u64) -> f32 {
    let u1 = ((splitmix(state) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let u2 = (splitmix(state) >> 11) as f64 / (1u64 << 53) as f64;
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// The delta a node running `attack` sends instead of `honest`.
pub fn poison(attack: Attack, honest: &[f32], seed: u64) -> Vec<f32> {
    match attack {
        Attack::SignFlip => honest.iter().map(|x| -10.0 * x).collect(),
        Attack::Scale => honest.iter().map(|x| 10.0 * x).collect(),
        Attack::Gaussian => {
            let n = honest.len().max(1) as f64;
            let mean = honest.iter().map(|&x| x as f64).sum::<f64>() / n;
            let var = honest
                .iter()
                .map(|&x| (x as f64 - mean).powi(2))
                .sum::<f64>()
                / n;
            let sigma = 10.0 * var.sqrt() as f32;
            let mut state = seed;
            honest.iter().map(|_| sigma * normal(&mut state)).collect()
        }
        Attack::Nan => honest
            .iter()
            .enumerate()
            .map(|(i, &x)| if i % 97 == 0 { f32::NAN } else { x })
            .collect(),
        Attack::Alie { z } => honest.iter().map(|&x| x - z * x.abs()).collect(),
        Attack::Ipm { epsilon } => ipm(honest, epsilon),
    }
}

/// The poisoned θ₀ of the NEUROSHARD_FAULT_HEAL_POISON switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealPoison {
    /// Every value NaN.
    Nan,
    /// Finite but far off: θ₀ + 1e3 · N(0, 1) per coordinate.
    Far,
}

impl HealPoison {
    /// `1` or `nan` → NaN-filled, `far` → finite and far; anything else is not a switch value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "1" | "nan" => Some(Self::Nan),
            "far" => Some(Self::Far),
            _ => None,
        }
    }
}

/// An outer state (θ₀ and momentum, little-endian f32 bytes) served to lure healing peers, and
/// the blob ids (BLAKE3, hex) the attacker's heartbeats advertise for them.
#[derive(Debug, Clone)]
pub struct PoisonedOuter {
    pub theta0: std::sync::Arc<Vec<u8>>,
    pub momentum: std::sync::Arc<Vec<u8>>,
    pub theta0_hash: String,
    pub momentum_hash: String,
}

/// Rounds ahead of its own that a heal-poisoning node claims: far enough that an honest node
/// heals at once ("two or more rounds behind the majority").
pub const HEAL_POISON_ROUNDS_AHEAD: u64 = 1000;

/// The poisoned θ₀ for `theta0`'s length (and, for [`HealPoison::Far`], values). The momentum
/// is all zeros: finite, so that the only check a heal makes today passes.
pub fn poisoned_outer(kind: HealPoison, theta0: &[f32]) -> PoisonedOuter {
    let values: Vec<f32> = match kind {
        HealPoison::Nan => vec![f32::NAN; theta0.len()],
        HealPoison::Far => {
            let mut state = 0x005E_ED0F_7E7A_u64;
            theta0
                .iter()
                .map(|&x| x + 1e3 * normal(&mut state))
                .collect()
        }
    };
    let momentum = vec![0.0f32; theta0.len()];
    let as_blob = |v: &[f32]| {
        let bytes = bytemuck::cast_slice::<f32, u8>(v).to_vec();
        let id = crate::net::blob::BlobId::of(&bytes).to_string();
        (std::sync::Arc::new(bytes), id)
    };
    let ((theta0, theta0_hash), (momentum, momentum_hash)) = (as_blob(&values), as_blob(&momentum));
    PoisonedOuter {
        theta0,
        momentum,
        theta0_hash,
        momentum_hash,
    }
}

/// The delta Sybil identity `index` announces for a round in which its node sent `sent` (the
/// node's encoded delta decoded as peers see it; `None` when it does not decode, e.g. NaN).
/// - With the node's Byzantine `attack`: the node's own poisoned vector, as sent (colluding
///   identities push one direction), scaled by 1 + 1e-3·(index + 1) so every blob differs; for
///   `nan` (or a node delta that does not decode) a NaN-sprinkled vector.
/// - Without: sign-flipped noise, −(Δ + N(0, σ²)) with σ = ‖Δ‖/√n, rescaled to ‖Δ‖: as large
///   as an honest delta, pointing away from it.
pub fn sybil_delta(
    sent: Option<&[f32]>,
    len: usize,
    attack: Option<Attack>,
    index: usize,
    round: u64,
) -> Vec<f32> {
    let seed = round
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(index as u64 + 1);
    let Some(sent) = sent.filter(|s| s.len() == len) else {
        return poison(Attack::Nan, &vec![0.0; len], seed);
    };
    match attack {
        Some(Attack::Nan) => poison(Attack::Nan, sent, seed),
        Some(_) => {
            let scale = 1.0 + 1e-3 * (index as f32 + 1.0);
            sent.iter().map(|x| x * scale).collect()
        }
        None => {
            let sent_norm = norm(sent);
            let sigma = (sent_norm / (len.max(1) as f64).sqrt()) as f32;
            let mut state = seed;
            let flipped: Vec<f32> = sent
                .iter()
                .map(|&x| -(x + sigma * normal(&mut state)))
                .collect();
            let current = norm(&flipped);
            let rescale = if current > 0.0 {
                (sent_norm / current) as f32
            } else {
                0.0
            };
            flipped.iter().map(|x| x * rescale).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALIE: Attack = Attack::Alie { z: ALIE_Z };
    const IPM: Attack = Attack::Ipm {
        epsilon: IPM_EPSILON,
    };

    #[test]
    fn alie_and_ipm_are_computed_from_the_deltas_seen() {
        let own = [1.0, 2.0];
        let others = [[3.0, 2.0], [2.0, 2.0]];
        let seen = seen_statistics(&own, others.iter().map(|d| d.as_slice()));
        // Mean (2, 2); standard deviation (√(2/3), 0).
        let alie = poison_informed(ALIE, &own, seen.as_ref(), 0);
        assert!(
            (alie[0] - (2.0 - (2.0f32 / 3.0).sqrt())).abs() < 1e-6,
            "{alie:?}"
        );
        assert_eq!(alie[1], 2.0);
        assert_eq!(
            poison_informed(IPM, &own, seen.as_ref(), 0),
            vec![-1.0, -1.0]
        );
        assert_eq!(
            poison_informed(Attack::SignFlip, &own, seen.as_ref(), 0),
            vec![-10.0, -20.0]
        );
        // Nothing seen (or only deltas of another length): the estimate from the own delta.
        let other_length = [9.0];
        assert_eq!(
            seen_statistics(&own, std::iter::once(other_length.as_slice())),
            None
        );
        assert_eq!(poison_informed(IPM, &own, None, 0), poison(IPM, &own, 0));
    }

    #[test]
    fn an_informed_attacker_sends_once_the_others_are_in_or_quiet_or_it_waited_enough() {
        let s = Duration::from_secs;
        assert!(
            attacker_sends(3, 3, s(0), s(0)),
            "every other trainer's delta is in"
        );
        assert!(
            !attacker_sends(2, 3, s(1), s(1)),
            "a delta came a moment ago"
        );
        assert!(
            attacker_sends(2, 3, s(2), s(5)),
            "two in and quiet: another attacker waits too"
        );
        assert!(!attacker_sends(0, 3, s(10), s(10)), "nothing seen yet");
        assert!(attacker_sends(0, 3, s(30), s(30)), "waited long enough");
        assert!(
            !attacker_sends(0, 0, s(3), s(3)),
            "no peers heard: wait for them"
        );
    }

    #[test]
    fn sybil_deltas_are_as_large_as_the_honest_one_and_point_away_from_it() {
        let honest: Vec<f32> = (0..4096).map(|i| ((i % 13) as f32 - 6.0) * 1e-3).collect();
        let a = sybil_delta(Some(&honest), honest.len(), None, 0, 3);
        let b = sybil_delta(Some(&honest), honest.len(), None, 1, 3);
        assert_ne!(a, b, "each identity sends its own vector");
        assert!((norm(&a) - norm(&honest)).abs() < 1e-3 * norm(&honest));
        let dot: f64 = a
            .iter()
            .zip(&honest)
            .map(|(&x, &y)| f64::from(x) * f64::from(y))
            .sum();
        assert!(dot < 0.0, "sign-flipped: {dot}");
        // With the node's attack: its poisoned vector, slightly scaled per identity.
        let sent = poison(Attack::SignFlip, &honest, 3);
        let c = sybil_delta(Some(&sent), sent.len(), Some(Attack::SignFlip), 0, 3);
        assert!((c[1] / sent[1] - 1.001).abs() < 1e-5);
        // NaN, or a node delta that does not decode: NaNs.
        assert!(sybil_delta(None, 10, None, 0, 3)[0].is_nan());
        assert!(sybil_delta(Some(&honest), honest.len(), Some(Attack::Nan), 0, 3)[0].is_nan());
    }

    #[test]
    fn poisoned_outer_states_have_the_right_length_and_a_finite_momentum() {
        let theta0 = vec![0.5f32; 1000];
        let nan = poisoned_outer(HealPoison::Nan, &theta0);
        assert_eq!(nan.theta0.len(), 4000);
        assert_eq!(nan.momentum.len(), 4000);
        let values: Vec<f32> = bytemuck::pod_collect_to_vec(&nan.theta0);
        assert!(values.iter().all(|x| x.is_nan()));
        let far = poisoned_outer(HealPoison::Far, &theta0);
        let values: Vec<f32> = bytemuck::pod_collect_to_vec(&far.theta0);
        assert!(values.iter().all(|x| x.is_finite()));
        assert!(norm(&values) > 1e4, "far from θ₀");
        assert_eq!(far.momentum_hash, nan.momentum_hash);
        assert_eq!(HealPoison::parse("far"), Some(HealPoison::Far));
        assert_eq!(HealPoison::parse("1"), Some(HealPoison::Nan));
        assert_eq!(HealPoison::parse("0"), None);
    }

    const HONEST: [f32; 4] = [1.0, -2.0, 0.5, 0.0];

    #[test]
    fn each_attack_does_what_it_says() {
        assert_eq!(
            poison(Attack::SignFlip, &HONEST, 0),
            vec![-10.0, 20.0, -5.0, -0.0]
        );
        assert_eq!(
            poison(Attack::Scale, &HONEST, 0),
            vec![10.0, -20.0, 5.0, 0.0]
        );
        assert_eq!(poison(ALIE, &HONEST, 0), vec![0.0, -4.0, 0.0, 0.0]);
        assert_eq!(poison(IPM, &HONEST, 0), vec![-0.5, 1.0, -0.25, -0.0]);
        assert!(poison(Attack::Nan, &HONEST, 0)[0].is_nan());
        let noise = poison(Attack::Gaussian, &HONEST, 7);
        assert_eq!(noise, poison(Attack::Gaussian, &HONEST, 7), "seeded");
        assert!(noise.iter().all(|x| x.is_finite()) && noise != HONEST);
    }

    #[test]
    fn names_parse_as_in_the_fault_switch() {
        assert_eq!(Attack::parse("sign_flip"), Some(Attack::SignFlip));
        assert_eq!(Attack::parse("ipm"), Some(IPM));
        assert_eq!(Attack::parse("alie"), Some(ALIE));
        assert_eq!(Attack::parse("alie:2.5"), Some(Attack::Alie { z: 2.5 }));
        assert_eq!(Attack::parse("ipm:0.9"), Some(Attack::Ipm { epsilon: 0.9 }));
        for wrong in [
            "nonsense", "alie:", "alie:x", "alie:-1", "alie:0", "alie:inf", "scale:2",
        ] {
            assert_eq!(Attack::parse(wrong), None, "{wrong}");
        }
    }

    #[test]
    fn a_larger_z_puts_alie_further_below_the_mean() {
        let (mean, std) = (vec![2.0, -1.0], vec![0.5, 1.0]);
        let seen = Some((mean, std));
        assert_eq!(
            poison_informed(Attack::Alie { z: 3.0 }, &[0.0, 0.0], seen.as_ref(), 0),
            vec![0.5, -4.0]
        );
    }
}
