//! Fused kernels for the two elementwise blocks of a transformer step that burn otherwise runs as
//! chains of separate passes: attention's causal softmax and the SwiGLU gate.
//!
//! Under autodiff, burn composes `softmax` from five operations (max, subtract, exp, sum, divide)
//! plus the mask's add, each a pass over the scores with its own backward, and `silu(a) · b` from
//! sigmoid and two multiplications; the CPU backend also runs `exp` through scalar libm. Here each
//! block is one operation with its own backward: one pass forward, one pass back, an exp that
//! vectorises, and the causal mask applied by position instead of by an added tensor.
//!
//! [`FusedOps`] is implemented for the CPU backend (`Flex`, the kernels below), for
//! `Autodiff<B>` (the backward passes) and, with the composite defaults, for any other backend.

use burn::backend::Autodiff;
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::tensor::activation::{sigmoid, silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Bool, Bytes, DType, Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_flex::{FlexTensor, Layout};
use neuroshard_kernels::{self as kernels, Simd};

/// Backends with the fused blocks. The defaults compose them from burn's operations; a backend
/// overrides them with kernels.
pub trait FusedOps: Backend {
    /// Softmax of each row of `scores` [rows, seq] over the keys its query may see: row `r` is
    /// query position `r % seq`, which sees keys `0..=r % seq`; the others get probability 0.
    fn causal_softmax(scores: FloatTensor<Self>) -> FloatTensor<Self> {
        primitive(composite::causal_softmax::<Self>(float(scores)))
    }

    /// The gradient of a row softmax from its output `probs` and the output's gradient `grad`:
    /// `probs ⊙ (grad − Σ_row grad ⊙ probs)`.
    fn softmax_backward(probs: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        primitive(composite::softmax_backward::<Self>(
            float(probs),
            float(grad),
        ))
    }

    /// [a, b, c, d] → [a, c, b, d] in memory of its own: attention's [batch, seq, heads, d] ↔
    /// [batch, heads, seq, d]. Its own inverse, so also its own gradient.
    fn swap_seq_and_heads(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Tensor::<Self, 4>::from_primitive(TensorPrimitive::Float(x))
            .swap_dims(1, 2)
            .into_primitive()
            .tensor()
    }

    /// The SwiGLU gate `silu(gate) ⊙ up`, elementwise, for [rows, width] tensors.
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        primitive(silu(float::<Self>(gate)) * float::<Self>(up))
    }

    /// The gradients of [`FusedOps::swiglu`] with respect to `gate` and `up`, given the output's
    /// gradient `grad`.
    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (d_gate, d_up) =
            composite::swiglu_backward::<Self>(float(gate), float(up), float(grad));
        (primitive(d_gate), primitive(d_up))
    }
}

/// The blocks composed from burn's operations: [`FusedOps`]' defaults, and what the kernels are
/// tested against.
mod composite {
    use super::*;

    pub fn causal_softmax<B: Backend>(scores: Tensor<B, 2>) -> Tensor<B, 2> {
        let [rows, seq] = scores.dims();
        // `tril_mask` marks what lies outside the lower triangle: the future.
        let future = Tensor::<B, 2, Bool>::tril_mask([seq, seq], 0, &scores.device())
            .unsqueeze::<3>()
            .expand([rows / seq, seq, seq]);
        let masked = scores
            .reshape([rows / seq, seq, seq])
            .mask_fill(future, f32::NEG_INFINITY);
        softmax(masked, 2).reshape([rows, seq])
    }

    pub fn softmax_backward<B: Backend>(probs: Tensor<B, 2>, grad: Tensor<B, 2>) -> Tensor<B, 2> {
        let dot = (grad.clone() * probs.clone()).sum_dim(1);
        probs * (grad - dot)
    }

    pub fn swiglu_backward<B: Backend>(
        gate: Tensor<B, 2>,
        up: Tensor<B, 2>,
        grad: Tensor<B, 2>,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let s = sigmoid(gate.clone());
        let d_up = grad.clone() * gate.clone() * s.clone();
        let d_gate = grad * up * s.clone() * (gate * (s.neg() + 1.0) + 1.0);
        (d_gate, d_up)
    }
}

/// A rank-2 float primitive as a tensor.
fn float<B: Backend>(primitive: FloatTensor<B>) -> Tensor<B, 2> {
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

fn primitive<B: Backend>(tensor: Tensor<B, 2>) -> FloatTensor<B> {
    tensor.into_primitive().tensor()
}

/// `causal_softmax(scores)` for a `[rows, seq]` tensor, `rows` a multiple of `seq` (see
/// [`FusedOps::causal_softmax`]).
pub fn causal_softmax<B: FusedOps>(scores: Tensor<B, 2>) -> Tensor<B, 2> {
    Tensor::from_primitive(TensorPrimitive::Float(B::causal_softmax(
        scores.into_primitive().tensor(),
    )))
}

/// `x` [a, b, c, d] as [a, c, b, d], copied so that each [b, d] or [c, d] slice is contiguous.
pub fn swap_seq_and_heads<B: FusedOps>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(B::swap_seq_and_heads(
        x.into_primitive().tensor(),
    )))
}

/// `silu(gate) ⊙ up` for two tensors of the same shape.
pub fn swiglu<B: FusedOps>(gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 2> {
    Tensor::from_primitive(TensorPrimitive::Float(B::swiglu(
        gate.into_primitive().tensor(),
        up.into_primitive().tensor(),
    )))
}

#[cfg(feature = "cuda")]
impl FusedOps for burn::backend::Cuda {}

impl<B: FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn causal_softmax(scores: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct CausalSoftmax;

        impl<B: FusedOps> Backward<B, 1> for CausalSoftmax {
            /// The output: the gradient needs only the probabilities.
            type State = FloatTensor<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let probs = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::softmax_backward(probs, grad)
                });
            }
        }

        match CausalSoftmax
            .prepare::<C>([scores.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let probs = B::causal_softmax(scores.primitive);
                prep.finish(probs.clone(), probs)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::causal_softmax(scores.primitive)),
        }
    }

    fn swap_seq_and_heads(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SwapSeqAndHeads;

        impl<B: FusedOps> Backward<B, 1> for SwapSeqAndHeads {
            type State = ();

            fn backward(self, ops: Ops<(), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                unary::<B, _>(ops.parents, ops.node, grads, B::swap_seq_and_heads);
            }
        }

        SwapSeqAndHeads
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateless(B::swap_seq_and_heads(x.primitive))
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SwiGlu;

        impl<B: FusedOps> Backward<B, 2> for SwiGlu {
            /// The inputs (gate, up).
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                let (gate, up) = ops.state;
                let (d_gate, d_up) = B::swiglu_backward(gate, up, grad);
                let [gate_node, up_node] = ops.parents;
                if let Some(node) = gate_node {
                    grads.register::<B>(node.id, d_gate);
                }
                if let Some(node) = up_node {
                    grads.register::<B>(node.id, d_up);
                }
            }
        }

        match SwiGlu
            .prepare::<C>([gate.node.clone(), up.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = (gate.primitive.clone(), up.primitive.clone());
                prep.finish(state, B::swiglu(gate.primitive, up.primitive))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::swiglu(gate.primitive, up.primitive)),
        }
    }
}

impl FusedOps for Flex {
    fn causal_softmax(scores: FlexTensor) -> FlexTensor {
        let shape = scores.shape();
        let scores = contiguous_f32(scores);
        let probs = kernels::causal_softmax(Simd::widest(), scores.storage(), shape[1]);
        tensor(probs, shape)
    }

    fn softmax_backward(probs: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let shape = probs.shape();
        let (probs, grad) = (contiguous_f32(probs), contiguous_f32(grad));
        let d_scores =
            kernels::softmax_backward(Simd::widest(), probs.storage(), grad.storage(), shape[1]);
        tensor(d_scores, shape)
    }

    fn swap_seq_and_heads(x: FlexTensor) -> FlexTensor {
        let [a, b, c, d] = x.shape().dims();
        let x = contiguous_f32(x);
        tensor(
            kernels::swap_middle_dims(x.storage(), [a, b, c, d]),
            Shape::new([a, c, b, d]),
        )
    }

    fn swiglu(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
        let shape = gate.shape();
        let (gate, up) = (contiguous_f32(gate), contiguous_f32(up));
        tensor(
            kernels::swiglu(Simd::widest(), gate.storage(), up.storage()),
            shape,
        )
    }

    fn swiglu_backward(
        gate: FlexTensor,
        up: FlexTensor,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        let shape = gate.shape();
        let (gate, up, grad) = (
            contiguous_f32(gate),
            contiguous_f32(up),
            contiguous_f32(grad),
        );
        let (d_gate, d_up) =
            kernels::swiglu_backward(Simd::widest(), gate.storage(), up.storage(), grad.storage());
        (tensor(d_gate, shape.clone()), tensor(d_up, shape))
    }
}

/// The tensor with its f32 values in one contiguous buffer from offset 0.
fn contiguous_f32(tensor: FlexTensor) -> FlexTensor {
    assert_eq!(tensor.dtype(), DType::F32, "the fused kernels run in f32");
    tensor.to_contiguous()
}

fn tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(shape),
        DType::F32,
    )
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, TensorData, Tolerance};

    use super::*;
    use crate::model::backend::{CpuBackend, cpu_device};

    /// The flex kernels under autodiff, also in the CUDA build (which trains on another backend).
    type TrainBackend = Autodiff<CpuBackend>;

    use kernels::exp as exp_f32;

    #[test]
    fn exp_is_within_two_ulp_of_the_true_value_and_saturates_like_exp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let exact = (x as f64).exp();
            worst = worst.max(((exp_f32(x) as f64 - exact) / exact).abs());
            x += 0.0137;
        }
        assert!(worst < 2.4e-7, "worst relative error {worst:e}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-1e9), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let xs: Vec<f32> = (0..4096).map(|i| (i as f32 - 2048.0) * 0.043).collect();
        let run = |simd: Simd| {
            let probs = kernels::causal_softmax(simd, &xs, 64);
            let gated = kernels::swiglu(simd, &xs, &xs);
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            (bits(probs), bits(gated))
        };
        let baseline = run(Simd::Baseline);
        for simd in Simd::available() {
            assert!(run(simd) == baseline, "{simd:?} differs from the baseline");
        }
    }

    /// N(0, 3) inputs from `seed`: the same on every run, so a failure can be reproduced.
    fn random<B: Backend>(shape: [usize; 2], seed: u64, device: &B::Device) -> Tensor<B, 2> {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let normal = Distribution::Normal(0.0, 3.0);
        Tensor::from_data(
            TensorData::random::<f32, _, _>(shape, normal, &mut rng),
            device,
        )
    }

    #[test]
    fn causal_softmax_matches_the_masked_softmax_and_hides_the_future() {
        let device = cpu_device();
        // 3 query groups of a 37-long sequence: rows restart at position 0 every 37 rows.
        let scores = random::<CpuBackend>([3 * 37, 37], 1, &device);
        let fused = causal_softmax(scores.clone());
        let reference = composite::causal_softmax(scores);
        fused
            .to_data()
            .assert_approx_eq::<f32>(&reference.to_data(), Tolerance::absolute(1e-6));
        let probs = fused.to_data().to_vec::<f32>().unwrap();
        for (row, p) in probs.chunks(37).enumerate() {
            let position = row % 37;
            assert!(
                p[position + 1..].iter().all(|&v| v == 0.0),
                "row {row} sees the future"
            );
            assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn swiglu_matches_silu_times_up_including_large_gates() {
        let device = cpu_device();
        let gate = random::<CpuBackend>([40, 700], 2, &device).mul_scalar(10.0);
        let up = random::<CpuBackend>([40, 700], 3, &device);
        swiglu(gate.clone(), up.clone())
            .to_data()
            .assert_approx_eq::<f32>(&(silu(gate) * up).to_data(), Tolerance::rel_abs(1e-5, 1e-5));
    }

    /// The fused blocks' gradients against autodiff through burn's compositions, for a loss that
    /// weighs every output differently.
    #[test]
    fn gradients_match_autodiff_through_the_compositions() {
        let device = cpu_device();
        let leaf =
            |t: Tensor<CpuBackend, 2>| Tensor::<TrainBackend, 2>::from_inner(t).require_grad();
        let (scores, gate, up) = (
            random::<CpuBackend>([2 * 29, 29], 4, &device),
            random::<CpuBackend>([33, 300], 5, &device),
            random::<CpuBackend>([33, 300], 6, &device),
        );
        let (w_softmax, w_swiglu) = (
            Tensor::<TrainBackend, 2>::from_inner(random([2 * 29, 29], 7, &device)),
            Tensor::<TrainBackend, 2>::from_inner(random([33, 300], 8, &device)),
        );
        let grads_of = |fused: bool| {
            let (s, g, u) = (leaf(scores.clone()), leaf(gate.clone()), leaf(up.clone()));
            let (probs, gated) = if fused {
                (causal_softmax(s.clone()), swiglu(g.clone(), u.clone()))
            } else {
                (
                    composite::causal_softmax(s.clone()),
                    silu(g.clone()) * u.clone(),
                )
            };
            let loss = (probs * w_softmax.clone()).sum() + (gated * w_swiglu.clone()).sum();
            let grads = loss.backward();
            [s, g, u].map(|t| t.grad(&grads).unwrap().to_data())
        };
        let (fused, reference) = (grads_of(true), grads_of(false));
        for (name, (f, r)) in ["scores", "gate", "up"]
            .iter()
            .zip(fused.iter().zip(&reference))
        {
            f.assert_approx_eq::<f32>(r, Tolerance::rel_abs(1e-4, 1e-5));
            assert!(f.iter::<f32>().any(|v| v != 0.0), "{name} got no gradient");
        }
    }

    /// The defaults other backends run (composed from burn's operations) against the kernels.
    #[test]
    fn the_backward_kernels_match_the_composed_defaults() {
        let device = cpu_device();
        let probs = causal_softmax(random::<CpuBackend>([3 * 41, 41], 9, &device));
        let grad = random::<CpuBackend>([3 * 41, 41], 10, &device);
        let fused = float::<CpuBackend>(CpuBackend::softmax_backward(
            primitive(probs.clone()),
            primitive(grad.clone()),
        ));
        fused.to_data().assert_approx_eq::<f32>(
            &composite::softmax_backward(probs, grad).to_data(),
            Tolerance::rel_abs(1e-5, 1e-6),
        );
        let [gate, up, grad] =
            [11, 12, 13].map(|seed| random::<CpuBackend>([17, 515], seed, &device));
        let (d_gate, d_up) = CpuBackend::swiglu_backward(
            primitive(gate.clone()),
            primitive(up.clone()),
            primitive(grad.clone()),
        );
        let (ref_gate, ref_up) = composite::swiglu_backward(gate, up, grad);
        // d_gate = grad · up · σ(g)(1 + g(1 − σ(g))) cancels near g ≈ −1.28, where a result of
        // 0.08 from terms of ~10 differs by 1e-6 (a few ulps of the terms) between the two
        // orders of operations: the absolute bound is relative to the terms, not the result.
        for (fused, reference) in [(d_gate, ref_gate), (d_up, ref_up)] {
            float::<CpuBackend>(fused)
                .to_data()
                .assert_approx_eq::<f32>(&reference.to_data(), Tolerance::rel_abs(1e-5, 1e-5));
        }
    }

    #[test]
    fn swapping_seq_and_heads_matches_swap_dims_forward_and_backward() {
        let device = cpu_device();
        let x = Tensor::<CpuBackend, 4>::random([2, 7, 3, 5], Distribution::Default, &device);
        let weights = Tensor::<TrainBackend, 4>::from_inner(Tensor::random(
            [2, 3, 7, 5],
            Distribution::Default,
            &device,
        ));
        let run = |fused: bool| {
            let leaf = Tensor::<TrainBackend, 4>::from_inner(x.clone()).require_grad();
            let swapped = if fused {
                swap_seq_and_heads(leaf.clone())
            } else {
                leaf.clone().swap_dims(1, 2)
            };
            let grads = (swapped.clone() * weights.clone()).sum().backward();
            (swapped.to_data(), leaf.grad(&grads).unwrap().to_data())
        };
        let ((fused, fused_grad), (reference, reference_grad)) = (run(true), run(false));
        assert_eq!(fused, reference);
        assert_eq!(fused_grad, reference_grad);
    }
}
