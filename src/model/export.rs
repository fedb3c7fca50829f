//! The model leaves the network: a checkpoint's θ₀ as a Llama-compatible Hugging Face directory
//! (config.json, model.safetensors, a byte-level tokenizer), loadable with `transformers`'
//! `AutoModelForCausalLM` / `AutoTokenizer`.
//!
//! NeuroLLM is a Llama in all that matters: pre-norm RMSNorm with a gain only, half-split RoPE
//! (`rotate_half`, the convention of HF's Llama, so q and k rows keep their order: no permutation),
//! grouped-query attention where query head h reads key/value head h / (heads / kv_heads), SwiGLU
//! as W2(silu(W1 x) ⊙ W3 x), no biases, unscaled tied embeddings. Only the names differ, and the
//! layout of linear weights: burn stores them [in, out], HF [out, in].

use std::fs;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde_json::{Value, json};

use super::backend::{CpuBackend, cpu_device};
use super::checkpoint::{self, CHECKPOINT_DIR, CHECKPOINT_FILE, CheckpointError};
use super::config::{NeuroLlmConfig, PRESETS};
use super::llm::NeuroLlm;
use super::params::{ParamSpec, layout, unflatten};
use super::tokenizer::{BOS, EOS, PAD, VOCAB_SIZE};

/// The export formats `neuroshard export --format` accepts.
pub const FORMATS: &[&str] = &["hf"];

/// The special tokens' text in the exported tokenizer (our tokenizer never produces them from text).
pub const BOS_TEXT: &str = "<|bos|>";
pub const EOS_TEXT: &str = "<|eos|>";
pub const PAD_TEXT: &str = "<|pad|>";

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("no checkpoint at {0} (a node writes one every round and when it stops)")]
    NoCheckpoint(PathBuf),
    #[error(
        "checkpoint {path} is for a model none of the presets ({}) is (model hash {hash})",
        PRESETS.join(", ")
    )]
    UnknownModel { path: PathBuf, hash: String },
    #[error("checkpoint {path}: parameter {name} has no Hugging Face name")]
    UnknownParam { path: PathBuf, name: String },
    #[error("{path}: {reason}")]
    Out { path: PathBuf, reason: String },
}

/// A checkpoint's outer weights θ₀ and the model they belong to.
pub struct Theta0 {
    /// The checkpoint file read.
    pub path: PathBuf,
    pub preset: &'static str,
    pub config: NeuroLlmConfig,
    pub layout: Vec<ParamSpec>,
    pub params: Vec<f32>,
    /// The DiLoCo round θ₀ starts (outer steps taken).
    pub round: u64,
}

impl Theta0 {
    /// Reads θ₀ from the checkpoint of the node whose state directory is `state_dir`. The model is
    /// the preset whose hash the checkpoint names. Read only: it may run beside the node.
    pub fn load(state_dir: &Path) -> Result<Self, ExportError> {
        let path = state_dir.join(CHECKPOINT_DIR).join(CHECKPOINT_FILE);
        let bytes =
            checkpoint::read_bytes(&path)?.ok_or(ExportError::NoCheckpoint(path.clone()))?;
        let hash = checkpoint::model_hash_in(&path, &bytes)?;
        let (preset, config) = PRESETS
            .iter()
            .map(|name| {
                (
                    *name,
                    NeuroLlmConfig::preset(name).expect("a listed preset"),
                )
            })
            .find(|(_, c)| c.hash_hex() == hash)
            .ok_or_else(|| ExportError::UnknownModel {
                path: path.clone(),
                hash,
            })?;
        let layout = layout(&config.init::<CpuBackend>(&cpu_device()));
        let ckpt = checkpoint::parse(&path, &bytes, &config.hash_hex(), &layout)?;
        Ok(Self {
            path,
            preset,
            config,
            layout,
            params: ckpt.outer.theta0,
            round: ckpt.outer.round,
        })
    }

    /// The NeuroLLM with these weights, on the CPU.
    pub fn model(&self) -> NeuroLlm<CpuBackend> {
        unflatten(self.config.init::<CpuBackend>(&cpu_device()), &self.params)
    }
}

/// The Hugging Face name of a NeuroLLM parameter, and whether it is a linear weight (stored
/// [in, out] here, [out, in] there).
pub fn hf_name(name: &str) -> Option<(String, bool)> {
    match name {
        "embedding.weight" => return Some(("model.embed_tokens.weight".into(), false)),
        "final_norm.gamma" => return Some(("model.norm.weight".into(), false)),
        _ => {}
    }
    let rest = name.strip_prefix("blocks.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (hf, linear) = match part {
        "attn_norm.gamma" => ("input_layernorm", false),
        "ffn_norm.gamma" => ("post_attention_layernorm", false),
        "attn.wq.weight" => ("self_attn.q_proj", true),
        "attn.wk.weight" => ("self_attn.k_proj", true),
        "attn.wv.weight" => ("self_attn.v_proj", true),
        "attn.wo.weight" => ("self_attn.o_proj", true),
        "ffn.w1.weight" => ("mlp.gate_proj", true),
        "ffn.w3.weight" => ("mlp.up_proj", true),
        "ffn.w2.weight" => ("mlp.down_proj", true),
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{hf}.weight"), linear))
}

/// `values` as a row-major [rows, cols] matrix, transposed to [cols, rows].
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(values.len(), rows * cols, "a [{rows}, {cols}] matrix");
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// One tensor of the exported model.
#[derive(Debug, Clone, PartialEq)]
pub struct HfTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// The flat parameters `params` (in `layout` order) under Hugging Face names and layouts; the
/// error is the name of the first parameter that has none.
pub fn hf_tensors(layout: &[ParamSpec], params: &[f32]) -> Result<Vec<HfTensor>, String> {
    let mut offset = 0;
    let mut tensors = Vec::with_capacity(layout.len());
    for spec in layout {
        let values = &params[offset..offset + spec.num_elements()];
        offset += spec.num_elements();
        let (name, linear) = hf_name(&spec.name).ok_or_else(|| spec.name.clone())?;
        let (shape, values) = match (linear, spec.shape.as_slice()) {
            (true, &[d_in, d_out]) => (vec![d_out, d_in], transpose(values, d_in, d_out)),
            _ => (spec.shape.clone(), values.to_vec()),
        };
        tensors.push(HfTensor {
            name,
            shape,
            values,
        });
    }
    Ok(tensors)
}

/// config.json of a `LlamaForCausalLM` with `config`'s shape.
pub fn hf_config(config: &NeuroLlmConfig) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim(),
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": null,
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "attention_dropout": 0.0,
        "tie_word_embeddings": true,
        "torch_dtype": "float32",
        "initializer_range": config.init_std,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
        "use_cache": true,
    })
}

/// GPT-2's byte → printable character table, the one `tokenizers`' ByteLevel pre-tokenizer and
/// decoder use: printable Latin-1 bytes stand for themselves, the others for 256, 257, ….
pub fn byte_chars() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    let mut table = ['\0'; 256];
    let mut next = 256;
    for (b, slot) in table.iter_mut().enumerate() {
        let b = b as u32;
        let code = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).expect("a valid code point");
    }
    table
}

/// tokenizer.json (the `tokenizers` format): a BPE without merges over the 256 byte characters,
/// token id = byte value, behind a ByteLevel pre-tokenizer that does not split, so a text encodes
/// to its UTF-8 bytes exactly as `tokenizer::encode`; BOS/EOS/PAD are added special tokens.
pub fn tokenizer_json() -> Value {
    let vocab: serde_json::Map<String, Value> = byte_chars()
        .iter()
        .enumerate()
        .map(|(id, c)| (c.to_string(), json!(id)))
        .collect();
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
                            "use_regex": false});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(BOS, BOS_TEXT), special(EOS, EOS_TEXT), special(PAD, PAD_TEXT)],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": [],
        },
    })
}

/// special_tokens_map.json.
pub fn special_tokens_map() -> Value {
    json!({"bos_token": BOS_TEXT, "eos_token": EOS_TEXT, "pad_token": PAD_TEXT})
}

/// tokenizer_config.json: the fast tokenizer of tokenizer.json, adding no token to a text (our
/// training data separates documents by EOS and prepends nothing).
pub fn tokenizer_config(config: &NeuroLlmConfig) -> Value {
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TEXT,
        "eos_token": EOS_TEXT,
        "pad_token": PAD_TEXT,
        "add_bos_token": false,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": config.max_seq_len,
    })
}

/// Writes θ₀ as a Hugging Face Llama directory `out`, which must not exist or be empty.
pub fn write_hf(theta0: &Theta0, out: &Path) -> Result<(), ExportError> {
    let fail = |path: &Path, reason: String| ExportError::Out {
        path: path.to_path_buf(),
        reason,
    };
    match fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(fail(
                    out,
                    "exists and is not empty; refusing to overwrite".into(),
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(out, e.to_string())),
    }
    assert_eq!(
        theta0.config.vocab_size, VOCAB_SIZE,
        "the byte tokenizer's vocabulary"
    );
    let tensors =
        hf_tensors(&theta0.layout, &theta0.params).map_err(|name| ExportError::UnknownParam {
            path: theta0.path.clone(),
            name,
        })?;
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|t| {
            let bytes = bytemuck::cast_slice(&t.values);
            let view = TensorView::new(Dtype::F32, t.shape.clone(), bytes).expect("shape fits");
            (t.name.clone(), view)
        })
        .collect();
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);

    fs::create_dir_all(out).map_err(|e| fail(out, e.to_string()))?;
    let weights = out.join("model.safetensors");
    checkpoint::write_safetensors(&weights, &views, metadata)
        .map_err(|e| fail(&weights, e.to_string()))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = out.join(name);
        fs::write(&path, bytes).map_err(|e| fail(&path, e.to_string()))
    };
    let pretty = |v: Value| format!("{v:#}\n").into_bytes();
    write("config.json", &pretty(hf_config(&theta0.config)))?;
    write(
        "generation_config.json",
        &pretty(json!({"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD})),
    )?;
    write("tokenizer.json", &pretty(tokenizer_json()))?;
    write(
        "tokenizer_config.json",
        &pretty(tokenizer_config(&theta0.config)),
    )?;
    write("special_tokens_map.json", &pretty(special_tokens_map()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parameter_of_a_model_has_a_unique_hf_name() {
        let config = NeuroLlmConfig::preset("nano").unwrap();
        let specs = layout(&config.init::<CpuBackend>(&cpu_device()));
        let mut names: Vec<String> = specs
            .iter()
            .map(|s| {
                hf_name(&s.name)
                    .unwrap_or_else(|| panic!("{} unmapped", s.name))
                    .0
            })
            .collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), specs.len());
        assert!(names.contains(&"model.layers.1.mlp.gate_proj.weight".to_string()));
        assert!(!names.iter().any(|n| n.starts_with("lm_head")), "tied");
        assert_eq!(hf_name("blocks.0.attn.rotate"), None);
    }

    #[test]
    fn linear_weights_are_transposed_to_out_in_and_the_rest_kept() {
        // burn's Linear computes x·W with W [in, out]; HF's computes x·Wᵀ with W [out, in].
        let layout = vec![
            ParamSpec {
                name: "blocks.0.attn.wq.weight".into(),
                shape: vec![2, 3],
            },
            ParamSpec {
                name: "final_norm.gamma".into(),
                shape: vec![2],
            },
        ];
        // W = [[0, 1, 2], [3, 4, 5]]: input 0 feeds outputs with weights 0, 1, 2.
        let params = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 8.0];
        let tensors = hf_tensors(&layout, &params).unwrap();
        assert_eq!(tensors[0].name, "model.layers.0.self_attn.q_proj.weight");
        assert_eq!(tensors[0].shape, vec![3, 2]);
        // Row o of the HF weight holds the weights into output o: [W[0][o], W[1][o]].
        assert_eq!(tensors[0].values, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(
            tensors[1],
            HfTensor {
                name: "model.norm.weight".into(),
                shape: vec![2],
                values: vec![7.0, 8.0]
            }
        );
        let bad = [ParamSpec {
            name: "blocks.0.attn.rope".into(),
            shape: vec![1],
        }];
        assert_eq!(hf_tensors(&bad, &[0.0]).unwrap_err(), "blocks.0.attn.rope");
    }

    /// HF Llama's RoPE: q·cos + rotate_half(q)·sin with rotate_half(q) = (−q₂, q₁) over the two
    /// halves of a head and frequency i for dims i and i + d/2. Applied to a projection exported
    /// without any row permutation, it gives what NeuroLLM's attention computes (tested in llm.rs:
    /// `rope_rotates_each_pair_by_position_times_frequency` pairs dim i with dim i + d/2). Meta's
    /// `permute` would be needed only for interleaved pairs (2i, 2i + 1): the rows of q_proj keep
    /// their order here.
    #[test]
    fn query_rows_keep_their_order_for_half_split_rope() {
        let layout = vec![ParamSpec {
            name: "blocks.0.attn.wq.weight".into(),
            shape: vec![1, 8],
        }];
        let params: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let q = &hf_tensors(&layout, &params).unwrap()[0];
        // One input, two heads of 4: output row o of HF's q_proj is our output column o.
        assert_eq!(q.values, params);
    }

    #[test]
    fn tokenizer_maps_every_byte_to_its_value_through_gpt2s_byte_characters() {
        let chars = byte_chars();
        assert_eq!(chars[b'!' as usize], '!');
        assert_eq!(chars[b' ' as usize], 'Ġ'); // U+0120, as in every GPT-2 vocabulary
        assert_eq!(chars[b'\n' as usize], 'Ċ');
        assert_eq!(chars[0xff], 'ÿ');
        let mut unique = chars.to_vec();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 256);
        let tokenizer = tokenizer_json();
        let vocab = tokenizer["model"]["vocab"].as_object().unwrap();
        assert_eq!(vocab.len(), 256);
        assert_eq!(vocab["Ġ"], 32);
        let specials: Vec<u64> = tokenizer["added_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_u64().unwrap())
            .collect();
        assert_eq!(specials, vec![256, 257, 258]);
    }

    #[test]
    fn config_json_has_the_presets_shape() {
        let micro = NeuroLlmConfig::preset("micro").unwrap();
        let c = hf_config(&micro);
        assert_eq!(c["model_type"], "llama");
        assert_eq!(c["hidden_size"], 384);
        assert_eq!(c["num_key_value_heads"], 2);
        assert_eq!(c["head_dim"], 64);
        assert_eq!(c["vocab_size"], VOCAB_SIZE);
        assert_eq!(c["tie_word_embeddings"], true);
        assert_eq!(c["rms_norm_eps"].as_f64(), Some(micro.norm_eps));
    }
}
