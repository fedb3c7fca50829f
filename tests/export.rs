//! `neuroshard export --format hf`: a node trains the nano preset for a few DiLoCo rounds and stops
//! (SIGTERM writes its checkpoint); the export of its θ₀ is loaded with transformers'
//! AutoTokenizer and AutoModelForCausalLM (tests/python/hf_export_check.py), whose logits must
//! match `neuroshard logits` — the node's own model code — within 1e-3. Bad inputs exit 2 naming
//! the file or flag.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{BIN, Node, combined_output, python_script, require_tool};
use safetensors::SafeTensors;

/// 44 bytes (the nano context is 64), multi-byte UTF-8 included.
const TEXT: &str = "The quick brown fox — ünïcode ✓ jumps.";

fn neuroshard(args: &[&str], state_dir: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--state-dir")
        .arg(state_dir)
        .output()
        .expect("run neuroshard")
}

/// Exit 2 with `needle` in stderr.
fn assert_refused(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "expected exit 2: {}",
        combined_output(output)
    );
    assert!(
        stderr.contains(needle),
        "stderr does not name {needle:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn f32s(tensors: &SafeTensors, name: &str) -> Vec<f32> {
    let t = tensors
        .tensor(name)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Rewrites the checkpoint at `path` with every inner weight (`model.*`) changed to −w − 0.5.
fn move_inner_weights(path: &Path) {
    use safetensors::tensor::{Dtype, TensorView};
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let owned: Vec<(String, Vec<usize>, Vec<f32>)> = tensors
        .names()
        .into_iter()
        .map(|name| {
            let mut values = f32s(&tensors, name);
            if name.starts_with("model.") {
                values.iter_mut().for_each(|x| *x = -*x - 0.5);
            }
            let shape = tensors.tensor(name).unwrap().shape().to_vec();
            (name.to_string(), shape, values)
        })
        .collect();
    let views = owned.iter().map(|(name, shape, values)| {
        let view = TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(values));
        (name.clone(), view.unwrap())
    });
    let moved = safetensors::serialize(views, header.metadata().clone()).unwrap();
    std::fs::write(path, moved).unwrap();
}

#[test]
fn an_exported_model_loads_in_transformers_and_computes_the_nodes_logits() {
    let started = Instant::now();
    require_tool(
        Command::new("python3").args(["-c", "import torch, transformers"]),
        "python3 with torch and transformers",
        "pip install torch transformers",
    );
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");

    // Before any checkpoint: refused, naming the file.
    let out = dir.path().join("hf");
    let out_arg = out.to_str().unwrap();
    let missing = neuroshard(&["export", "--format", "hf", out_arg], &state);
    assert_refused(&missing, "checkpoint.safetensors");
    assert!(!out.exists(), "nothing is written on a refusal");
    assert_refused(
        &neuroshard(&["logits", "--text", TEXT], &state),
        "no checkpoint at",
    );
    assert_refused(
        &neuroshard(&["export", "--format", "onnx", out_arg], &state),
        "--format",
    );

    // Rounds of 50 inner steps; 300 steps train the weights well past their initial scale, so
    // the logits depend on every part of the model (the script checks that a wrong RoPE
    // convention would show).
    let node = Node::start(&state, &["--diloco-steps", "50"], &[]);
    node.wait_for("300 steps", Duration::from_secs(300), |n| {
        n.stats()["global_step"].as_u64().unwrap_or(0) >= 300
    });
    let status = node.terminate();
    assert!(status.success(), "node exit status {status:?}");
    let checkpoint = state.join("checkpoints/checkpoint.safetensors");
    // A node stopped at a round's end holds inner weights equal to θ₀; move them away, so only
    // an export of θ₀ passes the checks below.
    move_inner_weights(&checkpoint);

    let export = neuroshard(&["export", "--format", "hf", out_arg], &state);
    assert!(export.status.success(), "{}", combined_output(&export));
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }

    // The export holds θ₀ (the network's weights), not the node's own inner weights.
    let ckpt_bytes = std::fs::read(&checkpoint).unwrap();
    let ckpt = SafeTensors::deserialize(&ckpt_bytes).unwrap();
    let hf_bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let hf = SafeTensors::deserialize(&hf_bytes).unwrap();
    let embedding = f32s(&hf, "model.embed_tokens.weight");
    let theta0 = f32s(&ckpt, "diloco.theta0");
    assert_eq!(
        embedding,
        theta0[..embedding.len()],
        "embed_tokens is θ₀'s embedding"
    );
    assert_ne!(
        f32s(&ckpt, "model.embedding.weight"),
        embedding,
        "the inner weights were moved away from θ₀"
    );

    // An existing non-empty directory is never overwritten.
    let again = neuroshard(&["export", "--format", "hf", out_arg], &state);
    assert_refused(&again, "not empty");

    // The node's own logits, then transformers' on the exported directory.
    let logits = neuroshard(&["logits", "--text", TEXT], &state);
    assert!(logits.status.success(), "{}", combined_output(&logits));
    let doc: serde_json::Value = serde_json::from_slice(&logits.stdout).unwrap();
    assert_eq!(doc["tokens"].as_array().unwrap().len(), TEXT.len());
    assert_eq!(doc["logits"].as_array().unwrap().len(), TEXT.len());
    let logits_file = dir.path().join("logits.json");
    std::fs::write(&logits_file, &logits.stdout).unwrap();
    let check = Command::new("python3")
        .arg(python_script("hf_export_check.py"))
        .arg(&out)
        .arg(&logits_file)
        .arg(TEXT)
        .arg("1e-3")
        .output()
        .expect("run python3");
    let report = combined_output(&check);
    assert!(check.status.success(), "{report}");
    // The measured difference, in the test's output (cargo test -- --nocapture shows it).
    println!("{}", String::from_utf8_lossy(&check.stdout).trim());

    // A corrupt checkpoint: refused, naming the file.
    std::fs::write(&checkpoint, b"not a checkpoint").unwrap();
    let corrupt_out = dir.path().join("hf2");
    let corrupt = neuroshard(
        &["export", "--format", "hf", corrupt_out.to_str().unwrap()],
        &state,
    );
    assert_refused(&corrupt, "checkpoint.safetensors is corrupt");
    assert!(!corrupt_out.exists());
    println!("export test ran in {:.0?}", started.elapsed());
}
