//! Issue 4, benchmark (a): what each delta codec costs on the wire and in model quality.
//! `cargo bench --bench codecs`. For each codec: 4 real nodes on 127.0.0.1 (nano preset, fixed
//! identities so every run sees the same data orders, H = 20, every round waiting for all 4),
//! 6 rounds; reports the bytes each node fetched per round and node 0's val_loss after 6 rounds,
//! beside the fp32 run (the baseline, same invocation). The bytes a node would send with
//! data-parallel training (ring all-reduce of fp32 gradients every step) over the same H steps are
//! computed, and the ratio printed for H = 20 (measured here) and H = 500 (the default).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{env_of, fixed_token, start_cluster, val_loss_at_round};

const NODES: usize = 4;
const ROUNDS: u64 = 6;
const H: u64 = 20;

/// (val_loss after ROUNDS, mean bytes fetched per node per round, parameters)
fn run(codec: &str) -> (f64, f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(
        dir.path(),
        NODES,
        |i| {
            ["--diloco-steps", &H.to_string(), "--token", &fixed_token(i)]
                .map(String::from)
                .to_vec()
        },
        |_| {
            env_of(&[
                ("NEUROSHARD_DILOCO__MIN_PEERS", "4"),
                ("NEUROSHARD_DILOCO__QUORUM_FRACTION", "1.0"),
                ("NEUROSHARD_DILOCO__ROUND_DEADLINE_S", "60"),
                ("NEUROSHARD_DILOCO__COMPRESSION__CODEC", codec),
                ("NEUROSHARD_TRAINING__EVAL_EVERY", "1000"),
            ])
        },
    );
    let val = val_loss_at_round(&nodes, ROUNDS, H, Duration::from_secs(600));
    let fetched: Vec<f64> = nodes
        .iter()
        .map(|n| {
            n.get("/api/diloco")["last_round"]["bytes_received"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let params = nodes[0].stats()["num_params"].as_u64().unwrap();
    (
        val,
        fetched.iter().sum::<f64>() / fetched.len() as f64,
        params,
    )
}

fn main() {
    let (fp32_loss, fp32_bytes, params) = run("fp32");
    // Ring all-reduce: each node sends 2(N−1)/N of the fp32 gradient per step.
    let dp_per_step = 2.0 * (NODES as f64 - 1.0) / NODES as f64 * 4.0 * params as f64;
    println!("{NODES} nodes, nano ({params} parameters), {ROUNDS} rounds of H = {H}:");
    println!(
        "  codec   | fetched/node/round | vs fp32 | vs data-parallel H=20 | H=500 | val_loss | vs fp32"
    );
    for codec in ["fp32", "fp16", "int8", "top_k"] {
        let (loss, bytes, _) = if codec == "fp32" {
            (fp32_loss, fp32_bytes, params)
        } else {
            run(codec)
        };
        println!(
            "  {codec:<7} | {:>15.0} B | {:>6.2}× | {:>20.0}× | {:>5.0}× | {loss:>8.3} | {:+.1}%",
            bytes,
            fp32_bytes / bytes,
            dp_per_step * H as f64 / bytes,
            dp_per_step * 500.0 / bytes,
            100.0 * (loss / fp32_loss - 1.0)
        );
    }
}
