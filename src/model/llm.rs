//! NeuroLLM: a decoder-only transformer (pre-norm, RMSNorm, RoPE, grouped-query attention, SwiGLU,
//! no biases, tied input/output embeddings), initialised N(0, 0.02).

use burn::module::{Initializer, Module};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::{log_softmax, silu};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Int, Tensor, TensorData};

use super::config::NeuroLlmConfig;

#[derive(Module, Debug)]
pub struct NeuroLlm<B: Backend> {
    /// Token embedding, also the output head (tied weights).
    embedding: Embedding<B>,
    blocks: Vec<Block<B>>,
    final_norm: RmsNorm<B>,
    rope: Rope<B>,
}

/// One pre-norm transformer block: x + Attn(Norm(x)), then h + FFN(Norm(h)).
#[derive(Module, Debug)]
struct Block<B: Backend> {
    attn_norm: RmsNorm<B>,
    attn: GroupedQueryAttention<B>,
    ffn_norm: RmsNorm<B>,
    ffn: SwiGlu<B>,
}

#[derive(Module, Debug)]
struct GroupedQueryAttention<B: Backend> {
    wq: Linear<B>,
    wk: Linear<B>,
    wv: Linear<B>,
    wo: Linear<B>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

/// SwiGLU feed-forward: W2(silu(W1 x) ⊙ W3 x).
#[derive(Module, Debug)]
struct SwiGlu<B: Backend> {
    w1: Linear<B>,
    w2: Linear<B>,
    w3: Linear<B>,
}

/// Rotary position embedding tables (half-split / rotate_half form); constants, not parameters.
#[derive(Module, Debug)]
struct Rope<B: Backend> {
    /// cos and sin of position × frequency, each [max_seq_len, head_dim], halves repeated.
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
}

fn linear<B: Backend>(d_in: usize, d_out: usize, std: f64, device: &B::Device) -> Linear<B> {
    LinearConfig::new(d_in, d_out)
        .with_bias(false)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device)
}

impl NeuroLlmConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> NeuroLlm<B> {
        let (d, hd, std) = (self.d_model, self.head_dim(), self.init_std);
        let norm = || {
            RmsNormConfig::new(d)
                .with_epsilon(self.norm_eps)
                .init(device)
        };
        let blocks = (0..self.n_layers)
            .map(|_| Block {
                attn_norm: norm(),
                attn: GroupedQueryAttention {
                    wq: linear(d, self.n_heads * hd, std, device),
                    wk: linear(d, self.n_kv_heads * hd, std, device),
                    wv: linear(d, self.n_kv_heads * hd, std, device),
                    wo: linear(self.n_heads * hd, d, std, device),
                    n_heads: self.n_heads,
                    n_kv_heads: self.n_kv_heads,
                    head_dim: hd,
                },
                ffn_norm: norm(),
                ffn: SwiGlu {
                    w1: linear(d, self.d_ff, std, device),
                    w2: linear(self.d_ff, d, std, device),
                    w3: linear(d, self.d_ff, std, device),
                },
            })
            .collect();
        NeuroLlm {
            embedding: EmbeddingConfig::new(self.vocab_size, d)
                .with_initializer(Initializer::Normal { mean: 0.0, std })
                .init(device),
            blocks,
            final_norm: norm(),
            rope: Rope::new(hd, self.max_seq_len, self.rope_theta, device),
        }
    }
}

impl<B: Backend> NeuroLlm<B> {
    /// Next-token logits [batch, seq, vocab] for tokens [batch, seq].
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let mut x = self.embedding.forward(tokens);
        for block in &self.blocks {
            x = block.forward(x, &self.rope);
        }
        let h = self.final_norm.forward(x);
        let [batch, seq, d] = h.dims();
        let head = self.embedding.weight.val().transpose(); // [d, vocab]
        let vocab = head.dims()[1];
        h.reshape([batch * seq, d])
            .matmul(head)
            .reshape([batch, seq, vocab])
    }

    /// Mean next-token cross-entropy of `targets` [batch, seq] given `inputs` [batch, seq].
    pub fn loss(&self, inputs: Tensor<B, 2, Int>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
        let logits = self.forward(inputs);
        let [batch, seq, vocab] = logits.dims();
        let log_probs = log_softmax(logits.reshape([batch * seq, vocab]), 1);
        let picked = log_probs.gather(1, targets.reshape([batch * seq, 1]));
        picked.mean().neg()
    }

    pub fn max_seq_len(&self) -> usize {
        self.rope.cos.dims()[0]
    }
}

impl<B: Backend> Block<B> {
    fn forward(&self, x: Tensor<B, 3>, rope: &Rope<B>) -> Tensor<B, 3> {
        let h = x.clone() + self.attn.forward(self.attn_norm.forward(x), rope);
        h.clone() + self.ffn.forward(self.ffn_norm.forward(h))
    }
}

impl<B: Backend> GroupedQueryAttention<B> {
    fn forward(&self, x: Tensor<B, 3>, rope: &Rope<B>) -> Tensor<B, 3> {
        let [batch, seq, _] = x.dims();
        let heads =
            |t: Tensor<B, 3>, n: usize| t.reshape([batch, seq, n, self.head_dim]).swap_dims(1, 2);
        let q = rope.apply(heads(self.wq.forward(x.clone()), self.n_heads));
        let k = rope.apply(heads(self.wk.forward(x.clone()), self.n_kv_heads));
        let v = heads(self.wv.forward(x), self.n_kv_heads);
        let (k, v) = (self.repeat_kv(k), self.repeat_kv(v));
        let options = AttentionModuleOptions {
            is_causal: true,
            ..Default::default()
        };
        let out = attention(q, k, v, None, None, options); // [batch, heads, seq, head_dim]
        let out = out
            .swap_dims(1, 2)
            .reshape([batch, seq, self.n_heads * self.head_dim]);
        self.wo.forward(out)
    }

    /// Shares each key/value head with `n_heads / n_kv_heads` query heads (head h uses kv head h / g).
    fn repeat_kv(&self, t: Tensor<B, 4>) -> Tensor<B, 4> {
        let group = self.n_heads / self.n_kv_heads;
        if group == 1 {
            return t;
        }
        let [batch, kv, seq, hd] = t.dims();
        t.unsqueeze_dim::<5>(2)
            .expand([batch, kv, group, seq, hd])
            .reshape([batch, kv * group, seq, hd])
    }
}

impl<B: Backend> SwiGlu<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.w2
            .forward(silu(self.w1.forward(x.clone())) * self.w3.forward(x))
    }
}

impl<B: Backend> Rope<B> {
    fn new(head_dim: usize, max_seq_len: usize, theta: f32, device: &B::Device) -> Self {
        let half = head_dim / 2;
        let (mut cos, mut sin) = (
            Vec::with_capacity(max_seq_len * head_dim),
            Vec::with_capacity(max_seq_len * head_dim),
        );
        for pos in 0..max_seq_len {
            for i in 0..head_dim {
                let freq = theta.powf(-2.0 * (i % half) as f32 / head_dim as f32);
                let angle = pos as f32 * freq;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let table =
            |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [max_seq_len, head_dim]), device);
        Self {
            cos: table(cos),
            sin: table(sin),
        }
    }

    /// x·cos + rotate_half(x)·sin for x [batch, heads, seq, head_dim].
    fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, _, seq, hd] = x.dims();
        let half = hd / 2;
        let cos = self.cos.clone().slice([0..seq]).unsqueeze::<4>();
        let sin = self.sin.clone().slice([0..seq]).unsqueeze::<4>();
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * cos + rotated * sin
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::backend::{CpuBackend, cpu_device};

    fn tokens(rows: &[&[i32]]) -> Tensor<CpuBackend, 2, Int> {
        let (b, t) = (rows.len(), rows[0].len());
        let flat: Vec<i32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_data(TensorData::new(flat, [b, t]), &cpu_device())
    }

    #[test]
    fn logits_have_batch_seq_vocab_shape_and_param_count_matches_config() {
        let config = NeuroLlmConfig::preset("nano").unwrap();
        let model = config.init::<CpuBackend>(&cpu_device());
        let logits = model.forward(tokens(&[&[1, 2, 3, 4, 5], &[6, 7, 8, 9, 10]]));
        assert_eq!(logits.dims(), [2, 5, config.vocab_size]);
        assert_eq!(model.num_params(), config.num_params());
    }

    #[test]
    fn changing_a_future_token_leaves_earlier_logits_unchanged() {
        let model = NeuroLlmConfig::preset("nano")
            .unwrap()
            .init::<CpuBackend>(&cpu_device());
        let a = model
            .forward(tokens(&[&[10, 20, 30, 40, 50, 60]]))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let b = model
            .forward(tokens(&[&[10, 20, 30, 99, 50, 60]]))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let vocab = a.len() / 6;
        let max_diff = |lo: usize, hi: usize| {
            a[lo * vocab..hi * vocab]
                .iter()
                .zip(&b[lo * vocab..hi * vocab])
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max)
        };
        assert!(max_diff(0, 3) < 1e-5, "positions before the change moved");
        assert!(
            max_diff(3, 6) > 1e-4,
            "positions from the change on must see it"
        );
    }

    #[test]
    fn initial_loss_is_near_uniform() {
        let config = NeuroLlmConfig::preset("nano").unwrap();
        let model = config.init::<CpuBackend>(&cpu_device());
        let loss: f32 = model
            .loss(tokens(&[&[1, 2, 3, 4]]), tokens(&[&[2, 3, 4, 5]]))
            .into_scalar();
        let uniform = (config.vocab_size as f32).ln();
        assert!(
            (loss - uniform).abs() < 0.3,
            "initial loss {loss} vs ln(V) {uniform}"
        );
    }
}
