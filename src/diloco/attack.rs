//! Poisoned deltas for the Byzantine test fault switch (NEUROSHARD_FAULT_BYZANTINE): what a
//! malicious node would send in place of its honest Δ. A test and demo tool: it lets a test show
//! that the robust rules keep the shared model on course. A lone attacker only knows its own
//! delta, so the attacks that need the honest mean and spread (ALIE, IPM) estimate them from it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attack {
    /// −10 × Δ: pushes the model uphill, hard.
    SignFlip,
    /// 10 × Δ: right direction, ten times too far.
    Scale,
    /// Gaussian noise with 10 × Δ's standard deviation per coordinate, in place of Δ.
    Gaussian,
    /// Δ with NaNs in it: must be refused before aggregation.
    Nan,
    /// "A little is enough" (Baruch et al., 2019): μ − z·σ per coordinate, small enough to pass
    /// distance-based filters; μ and σ estimated from the own Δ (σ ≈ |Δ|), z = 1.
    Alie,
    /// Inner-product manipulation (Xie et al., 2020): −ε·μ with ε = 0.5, μ ≈ the own Δ.
    Ipm,
}

impl Attack {
    pub fn parse(name: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
    }
}

/// SplitMix64: a fixed, seedable stream, so a poisoned run is reproducible.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A standard normal sample (Box–Muller).
fn normal(state: &mut u64) -> f32 {
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
        Attack::Alie => honest.iter().map(|&x| x - x.abs()).collect(),
        Attack::Ipm => honest.iter().map(|x| -0.5 * x).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(poison(Attack::Alie, &HONEST, 0), vec![0.0, -4.0, 0.0, 0.0]);
        assert_eq!(
            poison(Attack::Ipm, &HONEST, 0),
            vec![-0.5, 1.0, -0.25, -0.0]
        );
        assert!(poison(Attack::Nan, &HONEST, 0)[0].is_nan());
        let noise = poison(Attack::Gaussian, &HONEST, 7);
        assert_eq!(noise, poison(Attack::Gaussian, &HONEST, 7), "seeded");
        assert!(noise.iter().all(|x| x.is_finite()) && noise != HONEST);
    }

    #[test]
    fn names_parse_as_in_the_fault_switch() {
        assert_eq!(Attack::parse("sign_flip"), Some(Attack::SignFlip));
        assert_eq!(Attack::parse("ipm"), Some(Attack::Ipm));
        assert_eq!(Attack::parse("nonsense"), None);
    }
}
