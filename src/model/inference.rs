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

/// Sets to −∞ the logits of the tokens that would make `generated` invalid UTF-8: a byte-level
/// model can put weight on any byte (a barely trained one does), and what it shows must be text.
pub fn rule_out_invalid_utf8(logits: &mut [f32], generated: &[u8]) {
    let pending = tokenizer::unfinished_character(generated);
    for (token, logit) in logits.iter_mut().enumerate() {
        if !tokenizer::keeps_utf8_valid(pending, token as u32) {
            *logit = f32::NEG_INFINITY;
        }
    }
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
        let mut last = logits(model, window, device);
        last.drain(..last.len() - last.len() / window.len());
        rule_out_invalid_utf8(&mut last, &tokenizer::decode_bytes(&tokens[prompt_len..]));
        let next = sample_token(&last, options, &mut rng) as u32;
        if next == EOS {
            break;
        }
        tokens.push(next);
    }
    // A character cut off by the token limit is dropped, not shown as U+FFFD.
    let generated = tokenizer::decode_bytes(&tokens[prompt_len..]);
    let finished = generated.len() - tokenizer::unfinished_character(&generated).len();
    String::from_utf8_lossy(&generated[..finished]).into_owned()
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

    /// Logits that favour breaking UTF-8 (a stray continuation byte, 0xFF, ending or leaving a
    /// character half-written) still give text: greedy and sampled picks stay valid.
    #[test]
    fn picks_never_break_utf8_whatever_the_logits_favour() {
        let mut rng = SplitMix64::new(7);
        let pick = |favoured: &[u32], generated: &[u8], temperature: f32, rng: &mut SplitMix64| {
            let mut logits = vec![0.0f32; tokenizer::VOCAB_SIZE];
            for &t in favoured {
                logits[t as usize] = 50.0;
            }
            rule_out_invalid_utf8(&mut logits, generated);
            let options = SamplingOptions {
                max_new_tokens: 1,
                temperature,
                top_k: 3,
                seed: 0,
            };
            sample_token(&logits, &options, rng) as u32
        };
        for temperature in [0.0, 1.0] {
            let first = pick(&[0x80, 0xFF], b"ok", temperature, &mut rng);
            assert!(first < 0x80 || (0xC2..=0xF4).contains(&first), "{first:#x}");
            let inside = pick(
                &[b'a'.into(), tokenizer::EOS],
                &[b'o', 0xE2],
                temperature,
                &mut rng,
            );
            assert!((0x80..=0xBF).contains(&inside), "{inside:#x}");
            let after = pick(&[tokenizer::EOS], "✓".as_bytes(), temperature, &mut rng);
            assert_eq!(
                after,
                tokenizer::EOS,
                "a finished character may end the text"
            );
        }
    }
}
