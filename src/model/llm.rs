//! NeuroLLM: a decoder-only transformer (pre-norm, RMSNorm, RoPE, grouped-query attention, SwiGLU,
//! no biases, tied input/output embeddings), initialised N(0, 0.02).

use burn::module::{Initializer, Module};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::config::NeuroLlmConfig;
use super::fused::{FusedOps, causal_softmax, swap_seq_and_heads, swiglu};

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

/// Rotary position embedding (Su et al., 2021), half-split form; constants, not parameters.
#[derive(Module, Debug)]
struct Rope<B: Backend> {
    /// cos and sin of position × frequency, [max_seq_len, heads·head_dim] for query and key heads.
    cos_q: Tensor<B, 2>,
    sin_q: Tensor<B, 2>,
    cos_k: Tensor<B, 2>,
    sin_k: Tensor<B, 2>,
    /// [head_dim, head_dim] signed permutation with x·R = rotate_half(x).
    rotate: Tensor<B, 2>,
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
            rope: Rope::new(
                hd,
                self.n_heads,
                self.n_kv_heads,
                self.max_seq_len,
                self.rope_theta,
                device,
            ),
        }
    }
}

impl<B: FusedOps> NeuroLlm<B> {
    /// Next-token logits [batch, seq, vocab] for tokens [batch, seq].
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = tokens.dims();
        let logits = self.logits(tokens);
        let vocab = logits.dims()[1];
        logits.reshape([batch, seq, vocab])
    }

    /// Logits as [batch·seq, vocab]. Activations stay 2-D ([batch·seq, d_model]) between blocks:
    /// every projection is then one large matmul, and broadcasts hit the backend's fast paths.
    fn logits(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let shape = Shape2 {
            batch: tokens.dims()[0],
            seq: tokens.dims()[1],
        };
        let x = self.embedding.forward(tokens);
        let d = x.dims()[2];
        let mut x = x.reshape([shape.batch * shape.seq, d]);
        for block in &self.blocks {
            x = block.forward(x, shape, &self.rope);
        }
        self.final_norm
            .forward(x)
            .matmul(self.embedding.weight.val().transpose())
    }

    /// Mean next-token cross-entropy of `targets` [batch, seq] given `inputs` [batch, seq].
    pub fn loss(&self, inputs: Tensor<B, 2, Int>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
        let [batch, seq] = targets.dims();
        let log_probs = log_softmax(self.logits(inputs), 1);
        let picked = log_probs.gather(1, targets.reshape([batch * seq, 1]));
        picked.mean().neg()
    }

    pub fn max_seq_len(&self) -> usize {
        self.rope.cos_q.dims()[0]
    }
}

/// Batch and sequence length of the 2-D activations [batch·seq, features].
#[derive(Debug, Clone, Copy)]
struct Shape2 {
    batch: usize,
    seq: usize,
}

impl<B: FusedOps> Block<B> {
    fn forward(&self, x: Tensor<B, 2>, shape: Shape2, rope: &Rope<B>) -> Tensor<B, 2> {
        let h = x.clone() + self.attn.forward(self.attn_norm.forward(x), shape, rope);
        h.clone() + self.ffn.forward(self.ffn_norm.forward(h))
    }
}

impl<B: FusedOps> GroupedQueryAttention<B> {
    fn forward(&self, x: Tensor<B, 2>, shape: Shape2, rope: &Rope<B>) -> Tensor<B, 2> {
        let (hd, kv) = (self.head_dim, self.n_kv_heads);
        let heads4 = |t: Tensor<B, 2>, n: usize| t.reshape([shape.batch, shape.seq, n, hd]);
        let q = heads4(
            rope.apply(self.wq.forward(x.clone()), shape, RopeTable::Query),
            self.n_heads,
        );
        let k = heads4(
            rope.apply(self.wk.forward(x.clone()), shape, RopeTable::Key),
            kv,
        );
        let v = heads4(self.wv.forward(x), kv);
        self.wo.forward(grouped_causal_attention(q, k, v))
    }
}

/// causal_softmax(q·kᵀ/√d)·v for q [batch, seq, heads, d] and k, v [batch, seq, kv_heads, d];
/// returns [batch·seq, heads·d]. The g = heads / kv_heads query heads that share a key/value head
/// (head h uses kv head h / g) are stacked along the sequence axis, so one batched matmul serves the
/// whole group without copying keys and values g times; each score row is still query position
/// `row % seq`, which is what [`causal_softmax`] masks by.
fn grouped_causal_attention<B: FusedOps>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
) -> Tensor<B, 2> {
    let [batch, seq, heads, hd] = q.dims();
    let kv = k.dims()[2];
    let group = heads / kv;
    let q = swap_seq_and_heads(q * (hd as f64).powf(-0.5)).reshape([batch, kv, group * seq, hd]);
    let (k, v) = (swap_seq_and_heads(k), swap_seq_and_heads(v));
    let scores = q
        .matmul(k.transpose())
        .reshape([batch * kv * group * seq, seq]);
    let probs = causal_softmax(scores).reshape([batch, kv, group * seq, seq]);
    let out = probs.matmul(v); // [batch, kv, group·seq, hd]
    swap_seq_and_heads(out.reshape([batch, heads, seq, hd])).reshape([batch * seq, heads * hd])
}

impl<B: FusedOps> SwiGlu<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.w2
            .forward(swiglu(self.w1.forward(x.clone()), self.w3.forward(x)))
    }
}

#[derive(Debug, Clone, Copy)]
enum RopeTable {
    Query,
    Key,
}

impl<B: Backend> Rope<B> {
    fn new(
        head_dim: usize,
        n_heads: usize,
        n_kv_heads: usize,
        max_seq_len: usize,
        theta: f32,
        device: &B::Device,
    ) -> Self {
        let half = head_dim / 2;
        // cos/sin of position × frequency for one head; tiled over the heads below, so applying
        // them to [batch, seq·heads·head_dim] is a plain row broadcast over the batch.
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for pos in 0..max_seq_len {
            for i in 0..head_dim {
                let angle = pos as f32 * theta.powf(-2.0 * (i % half) as f32 / head_dim as f32);
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let tiled = |table: &[f32], heads: usize| {
            let rows: Vec<f32> = table
                .chunks(head_dim)
                .flat_map(|row| row.repeat(heads))
                .collect();
            Tensor::from_data(
                TensorData::new(rows, [max_seq_len, heads * head_dim]),
                device,
            )
        };
        // rotate_half(x) = (−x₂, x₁) = x·R, with R a signed permutation
        let mut rotate = vec![0.0f32; head_dim * head_dim];
        for j in 0..half {
            rotate[(j + half) * head_dim + j] = -1.0;
            rotate[j * head_dim + j + half] = 1.0;
        }
        Self {
            cos_q: tiled(&cos, n_heads),
            sin_q: tiled(&sin, n_heads),
            cos_k: tiled(&cos, n_kv_heads),
            sin_k: tiled(&sin, n_kv_heads),
            rotate: Tensor::from_data(TensorData::new(rotate, [head_dim, head_dim]), device),
        }
    }

    /// x·cos + rotate_half(x)·sin per head, for x [batch·seq, heads·head_dim].
    #[allow(clippy::single_range_in_vec_init)] // burn's slice takes one range per sliced dimension
    fn apply(&self, x: Tensor<B, 2>, shape: Shape2, table: RopeTable) -> Tensor<B, 2> {
        let (cos, sin) = match table {
            RopeTable::Query => (&self.cos_q, &self.sin_q),
            RopeTable::Key => (&self.cos_k, &self.sin_k),
        };
        let hd = self.rotate.dims()[0];
        let [rows, width] = x.dims();
        let row = shape.seq * width;
        let flat = |t: &Tensor<B, 2>| t.clone().slice([0..shape.seq]).reshape([1, row]);
        let rotated = x
            .clone()
            .reshape([rows * width / hd, hd])
            .matmul(self.rotate.clone())
            .reshape([shape.batch, row]);
        (x.reshape([shape.batch, row]) * flat(cos) + rotated * flat(sin)).reshape([rows, width])
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
    fn grouped_attention_matches_burns_attention_with_repeated_kv_heads() {
        use burn::tensor::Distribution;
        use burn::tensor::module::attention;
        use burn::tensor::ops::AttentionModuleOptions;
        let (b, t, h, kv, d) = (2, 5, 6, 2, 4);
        let device = cpu_device();
        let rand = |heads| {
            Tensor::<CpuBackend, 4>::random(
                [b, t, heads, d],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
        };
        let (q, k, v) = (rand(h), rand(kv), rand(kv));
        let ours = grouped_causal_attention(q.clone(), k.clone(), v.clone());

        let repeat = |x: Tensor<CpuBackend, 4>| {
            x.swap_dims(1, 2)
                .unsqueeze_dim::<5>(2)
                .expand([b, kv, h / kv, t, d])
                .reshape([b, h, t, d])
        };
        let options = AttentionModuleOptions {
            is_causal: true,
            ..Default::default()
        };
        let reference = attention(q.swap_dims(1, 2), repeat(k), repeat(v), None, None, options)
            .swap_dims(1, 2)
            .reshape([b * t, h * d]);
        let diff = (ours - reference).abs().max().into_scalar();
        assert!(diff < 1e-5, "max difference {diff}");
    }

    #[test]
    fn rope_rotates_each_pair_by_position_times_frequency() {
        let (seq, heads, hd, theta) = (3, 2, 4, 10000.0f32);
        let device = cpu_device();
        let rope = Rope::<CpuBackend>::new(hd, heads, heads, 8, theta, &device);
        let x: Vec<f32> = (0..seq * heads * hd)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let input = Tensor::<CpuBackend, 2>::from_data(
            TensorData::new(x.clone(), [seq, heads * hd]),
            &device,
        );
        let out = rope
            .apply(input, Shape2 { batch: 1, seq }, RopeTable::Query)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        for pos in 0..seq {
            for head in 0..heads {
                let base = (pos * heads + head) * hd;
                for i in 0..hd / 2 {
                    let angle = pos as f32 * theta.powf(-2.0 * i as f32 / hd as f32);
                    let (a, b) = (x[base + i], x[base + i + hd / 2]);
                    let expected = (
                        a * angle.cos() - b * angle.sin(),
                        b * angle.cos() + a * angle.sin(),
                    );
                    assert!(
                        (out[base + i] - expected.0).abs() < 1e-5
                            && (out[base + i + hd / 2] - expected.1).abs() < 1e-5,
                        "pos {pos} head {head} pair {i}"
                    );
                }
            }
        }
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
