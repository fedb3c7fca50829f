//! NeuroLLM hyper-parameters and the named presets.

use burn::config::Config;
use sha2::{Digest, Sha256};

use super::tokenizer::VOCAB_SIZE;

/// The shape of a NeuroLLM. Every node of one network must use the same one: its hash is part of
/// what peers compare when they meet.
#[derive(Config, Debug, PartialEq)]
pub struct NeuroLlmConfig {
    /// Vocabulary size (byte-level: 256 bytes + special tokens).
    #[config(default = "VOCAB_SIZE")]
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Key/value heads for grouped-query attention; `n_heads` must be a multiple of it.
    pub n_kv_heads: usize,
    /// Hidden width of the SwiGLU feed-forward block.
    pub d_ff: usize,
    /// Context length the model is trained on (and the RoPE table covers).
    pub max_seq_len: usize,
    #[config(default = 10000.0)]
    pub rope_theta: f32,
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    /// Standard deviation of the N(0, σ) initialisation of every weight matrix.
    #[config(default = 0.02)]
    pub init_std: f64,
}

/// Named model sizes: `nano` for tests, `micro` for CPU nodes, `bootstrap` as the original network.
pub const PRESETS: &[&str] = &["nano", "micro", "bootstrap"];

impl NeuroLlmConfig {
    pub fn preset(name: &str) -> Option<Self> {
        let (d, layers, heads, kv, ff, ctx) = match name {
            "nano" => (64, 2, 4, 2, 172, 64),
            "micro" => (384, 6, 6, 2, 1024, 256),
            "bootstrap" => (768, 12, 12, 4, 2048, 512),
            _ => return None,
        };
        Some(Self::new(d, layers, heads, kv, ff, ctx))
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Why this shape cannot be built, if it cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.d_model == 0 || self.n_layers == 0 || self.n_heads == 0 || self.n_kv_heads == 0 {
            return Err("d_model, n_layers, n_heads and n_kv_heads must be positive".into());
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(format!(
                "d_model {} is not a multiple of n_heads {}",
                self.d_model, self.n_heads
            ));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(format!(
                "n_heads {} is not a multiple of n_kv_heads {}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err("head dimension must be even for RoPE".into());
        }
        if self.max_seq_len < 2 {
            return Err("max_seq_len must be at least 2".into());
        }
        Ok(())
    }

    /// Number of trainable scalars (the embedding counts once: it is tied to the output head).
    pub fn num_params(&self) -> usize {
        let (d, hd) = (self.d_model, self.head_dim());
        let attention = d * self.n_heads * hd * 2 + d * self.n_kv_heads * hd * 2;
        let ffn = 3 * d * self.d_ff;
        let norms = 2 * d;
        self.vocab_size * d + self.n_layers * (attention + ffn + norms) + d
    }

    /// SHA-256 of the canonical JSON of the shape: peers with another hash train another model.
    pub fn hash_hex(&self) -> String {
        let json = serde_json::to_vec(self).expect("config serialises");
        hex::encode(Sha256::digest(json))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_sized_as_documented() {
        for name in PRESETS {
            NeuroLlmConfig::preset(name).unwrap().validate().unwrap();
        }
        let micro = NeuroLlmConfig::preset("micro").unwrap().num_params();
        assert!(
            (8_000_000..12_000_000).contains(&micro),
            "micro has {micro} params"
        );
        assert!(NeuroLlmConfig::preset("giant").is_none());
    }

    #[test]
    fn bad_shapes_are_refused() {
        let mut c = NeuroLlmConfig::preset("nano").unwrap();
        c.n_kv_heads = 3;
        assert!(c.validate().is_err());
    }
}
