//! Text generation with the current model: autoregressive sampling with temperature and top-k.

use super::fused::FusedOps;
use burn::tensor::{Int, Tensor, TensorData};

use super::corpus::SplitMix64;
use super::llm::NeuroLlm;
use super::tokenizer::{self, EOS};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingOptions {
    pub max_new_tokens: usize,
    /// 0 means greedy decoding.
    pub temperature: f32,
    /// Sample among the k most likely tokens; 0 means all.
    pub top_k: usize,
    pub seed: u64,
}

/// Index of the token drawn from `logits` under `options`.
pub fn sample_token(logits: &[f32], options: &SamplingOptions, rng: &mut SplitMix64) -> usize {
    let mut ranked: Vec<(usize, f32)> = logits.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    if options.temperature <= 0.0 {
        return ranked[0].0;
    }
    if options.top_k > 0 {
        ranked.truncate(options.top_k);
    }
    let max = ranked[0].1;
    let weights: Vec<f64> = ranked
        .iter()
        .map(|(_, l)| (((l - max) / options.temperature) as f64).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut draw = (rng.next_u64() as f64 / u64::MAX as f64) * total;
    for ((token, _), w) in ranked.iter().zip(&weights) {
        draw -= w;
        if draw <= 0.0 {
            return *token;
        }
    }
    ranked[ranked.len() - 1].0
}

/// Next-token logits after every position of `tokens` (non-empty, at most the context length):
/// `tokens.len()` rows of the vocabulary size, concatenated.
pub fn logits<B: FusedOps>(model: &NeuroLlm<B>, tokens: &[u32], device: &B::Device) -> Vec<f32> {
    let input: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(input, [1, tokens.len()]), device);
    model
        .forward(input)
        .into_data()
        .to_vec::<f32>()
        .unwrap_or_default()
}

/// Continues `prompt` by up to `max_new_tokens` tokens (stopping at EOS) and returns only the new text.
pub fn generate<B: FusedOps>(
    model: &NeuroLlm<B>,
    prompt: &str,
    options: &SamplingOptions,
    device: &B::Device,
) -> String {
    let mut tokens: Vec<u32> = tokenizer::encode(prompt);
    let prompt_len = tokens.len();
    let mut rng = SplitMix64::new(options.seed);
    for _ in 0..options.max_new_tokens {
        let window = &tokens[tokens.len().saturating_sub(model.max_seq_len())..];
        if window.is_empty() {
            tokens.push(tokenizer::BOS);
            continue;
        }
        let all = logits(model, window, device);
        let last = &all[all.len() - all.len() / window.len()..];
        let next = sample_token(last, options, &mut rng) as u32;
        if next == EOS {
            break;
        }
        tokens.push(next);
    }
    tokenizer::decode(&tokens[prompt_len..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax_and_top_1_is_greedy_at_any_temperature() {
        let logits = [0.1, 2.0, -1.0, 1.9];
        let mut rng = SplitMix64::new(1);
        let greedy = SamplingOptions {
            max_new_tokens: 1,
            temperature: 0.0,
            top_k: 0,
            seed: 0,
        };
        assert_eq!(sample_token(&logits, &greedy, &mut rng), 1);
        let top1 = SamplingOptions {
            temperature: 5.0,
            top_k: 1,
            ..greedy
        };
        for _ in 0..20 {
            assert_eq!(sample_token(&logits, &top1, &mut rng), 1);
        }
        let top2 = SamplingOptions {
            temperature: 1.0,
            top_k: 2,
            ..greedy
        };
        for _ in 0..50 {
            assert!([1, 3].contains(&sample_token(&logits, &top2, &mut rng)));
        }
    }
}
