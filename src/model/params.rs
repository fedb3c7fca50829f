//! Parameter flattening: a model's float parameters as one `Vec<f32>` in a fixed order, and back.
//! DiLoCo, the optimizer and checkpoints all work on this flat view.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

/// Name and shape of one parameter tensor in flattening order.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl ParamSpec {
    pub fn num_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Tracks the dotted path of the parameter being visited (e.g. `blocks.0.attn.wq.weight`).
#[derive(Default)]
struct Path(Vec<String>);

impl Path {
    fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    fn exit(&mut self) {
        self.0.pop();
    }
}

struct LayoutVisitor {
    path: Path,
    specs: Vec<ParamSpec>,
}

impl<B: Backend> ModuleVisitor<B> for LayoutVisitor {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let name = self.path.0.join(".");
        self.specs.push(ParamSpec {
            name,
            shape: param.val().dims().to_vec(),
        });
    }
}

/// The names and shapes of a model's float parameters, in flattening order.
pub fn layout<B: Backend, M: Module<B>>(model: &M) -> Vec<ParamSpec> {
    let mut visitor = LayoutVisitor {
        path: Path::default(),
        specs: Vec::new(),
    };
    model.visit(&mut visitor);
    visitor.specs
}

struct Flatten(Vec<f32>);

impl<B: Backend> ModuleVisitor<B> for Flatten {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        extend_from(&mut self.0, param.val().into_data());
    }
}

fn extend_from(out: &mut Vec<f32>, data: TensorData) {
    match data.as_slice::<f32>() {
        Ok(slice) => out.extend_from_slice(slice),
        Err(_) => out.extend(data.iter::<f32>()),
    }
}

/// All float parameters of `model` concatenated in flattening order.
pub fn flatten<B: Backend, M: Module<B>>(model: &M) -> Vec<f32> {
    let mut visitor = Flatten(Vec::with_capacity(model.num_params()));
    model.visit(&mut visitor);
    visitor.0
}

struct FlattenGrads<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    out: Vec<f32>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for FlattenGrads<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        match value.grad(self.grads) {
            Some(grad) => extend_from(&mut self.out, grad.into_data()),
            // A parameter the loss does not reach has a zero gradient.
            None => self
                .out
                .resize(self.out.len() + value.shape().num_elements(), 0.0),
        }
    }
}

/// The gradient of every float parameter, in flattening order.
pub fn flatten_grads<B: AutodiffBackend, M: Module<B>>(
    model: &M,
    grads: &B::Gradients,
) -> Vec<f32> {
    let mut visitor = FlattenGrads {
        grads,
        out: Vec::with_capacity(model.num_params()),
    };
    model.visit(&mut visitor);
    visitor.out
}

struct Unflatten<'a> {
    flat: &'a [f32],
    offset: usize,
}

impl<B: Backend> ModuleMapper<B> for Unflatten<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let n = shape.num_elements();
        let values = self.flat[self.offset..self.offset + n].to_vec();
        self.offset += n;
        // A tensor rebuilt from data is a new autodiff leaf: keep it trainable if the old one was.
        let require_grad = tensor.is_require_grad();
        let rebuilt = Tensor::<B, D>::from_data(TensorData::new(values, shape), &tensor.device());
        Param::from_mapped_value(id, rebuilt.set_require_grad(require_grad), mapper)
    }
}

/// `model` with its float parameters replaced by `flat` (same order and length as [`flatten`]).
pub fn unflatten<B: Backend, M: Module<B>>(model: M, flat: &[f32]) -> M {
    assert_eq!(
        flat.len(),
        model.num_params(),
        "flat parameter vector has the wrong length"
    );
    model.map(&mut Unflatten { flat, offset: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::backend::{CpuBackend, cpu_device};
    use crate::model::config::NeuroLlmConfig;

    #[test]
    fn flatten_then_unflatten_is_identity_and_layout_names_are_unique() {
        let config = NeuroLlmConfig::preset("nano").unwrap();
        let model = config.init::<CpuBackend>(&cpu_device());
        let flat = flatten(&model);
        assert_eq!(flat.len(), config.num_params());
        let specs = layout(&model);
        assert_eq!(
            specs.iter().map(ParamSpec::num_elements).sum::<usize>(),
            flat.len()
        );
        let mut names: Vec<_> = specs.iter().map(|s| s.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(
            names.len(),
            specs.len(),
            "duplicate parameter names: {specs:?}"
        );

        let shifted: Vec<f32> = flat.iter().map(|x| x + 1.0).collect();
        let model = unflatten(model, &shifted);
        assert_eq!(flatten(&model), shifted);
    }
}
