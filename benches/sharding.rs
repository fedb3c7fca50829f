//! Issue 16: bytes per node per round on real nodes, sharded against full mesh (the baseline, same
//! invocation) and against fp32 data-parallel. `cargo bench --bench sharding`. For 4 and 8 nodes on
//! 127.0.0.1 (nano preset, int8 deltas, trimmed mean, fixed identities, H = 20, every round
//! waiting for all): one run full mesh, one run sharded (`[diloco.sharding] min_nodes = 4`), each
//! until every node closed ROUNDS rounds. Every node's round summary is sampled; a sharded run
//! counts only the rounds that ran sharded (nodes that start one after the other may run their
//! first round full mesh). Data-parallel is a ring all-reduce of fp32 gradients every step,
//! 2(N−1)/N × 4 B × P per step, over H = 500 steps (the default).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Node, diloco, env_of, fixed_token, start_cluster};
use neuroshard::diloco::codec::{Codec, CodecConfig, encoded_len};
use neuroshard::timeline::data_parallel_bytes;

const ROUNDS: u64 = 6;
const H: u64 = 20;

/// Per (node, round): bytes received and sent, for the rounds the mode really ran.
fn run(nodes_count: usize, sharded: bool) -> (Vec<(u64, u64)>, usize) {
    let dir = tempfile::tempdir().unwrap();
    let min_peers = nodes_count.to_string();
    let min_nodes = if sharded { "4" } else { "1000" };
    let nodes = start_cluster(
        dir.path(),
        nodes_count,
        |i| {
            ["--diloco-steps", &H.to_string(), "--token", &fixed_token(i)]
                .map(String::from)
                .to_vec()
        },
        |_| {
            env_of(&[
                ("NEUROSHARD_DILOCO__MIN_PEERS", &min_peers),
                ("NEUROSHARD_DILOCO__QUORUM_FRACTION", "1.0"),
                ("NEUROSHARD_DILOCO__ROUND_DEADLINE_S", "60"),
                ("NEUROSHARD_DILOCO__COMPRESSION__CODEC", "int8"),
                ("NEUROSHARD_DILOCO__AGGREGATION__RULE", "trimmed_mean"),
                ("NEUROSHARD_DILOCO__SHARDING__MIN_NODES", min_nodes),
                ("NEUROSHARD_TRAINING__EVAL_EVERY", "1000"),
            ])
        },
    );
    let params = nodes[0].stats()["num_params"].as_u64().unwrap() as usize;
    let mut seen: BTreeMap<(usize, u64), (u64, u64)> = BTreeMap::new();
    let start = Instant::now();
    loop {
        let mut lowest = u64::MAX;
        for (i, node) in nodes.iter().enumerate() {
            let d = diloco(node);
            lowest = lowest.min(d["outer_step_count"].as_u64().unwrap());
            let last = &d["last_round"];
            let Some(round) = last["round"].as_u64() else {
                continue;
            };
            let ran_sharded = last["reason"].as_str().unwrap_or("").contains("sharded");
            if ran_sharded == sharded {
                let bytes = |k: &str| last[k].as_u64().unwrap();
                seen.insert((i, round), (bytes("bytes_received"), bytes("bytes_sent")));
            }
        }
        if lowest >= ROUNDS {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "{ROUNDS} rounds not reached; node 0's log:\n{}",
            nodes[0].log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop::<Vec<Node>>(nodes);
    (seen.into_values().collect(), params)
}

fn main() {
    println!(
        "nano preset, int8 deltas, H = {H} (as run) and 500 (default) for data-parallel, {ROUNDS} rounds"
    );
    println!(
        "  nodes | mode      | samples | in / node / round: mean, median, max (Δ) | out: mean, median, max (Δ) | in vs full mesh | vs data-parallel H=500 (in, out)"
    );
    for nodes in [4, 8] {
        let mut full_in = 0.0;
        for sharded in [false, true] {
            let (rows, params) = run(nodes, sharded);
            let int8 = CodecConfig {
                codec: Codec::Int8,
                ..CodecConfig::default()
            };
            let delta = encoded_len(&int8, params) as f64;
            let mean = |f: fn(&(u64, u64)) -> u64| {
                rows.iter().map(|r| f(r) as f64).sum::<f64>() / rows.len().max(1) as f64
            };
            let max = |f: fn(&(u64, u64)) -> u64| rows.iter().map(f).max().unwrap_or(0) as f64;
            let median = |f: fn(&(u64, u64)) -> u64| {
                let mut v: Vec<u64> = rows.iter().map(f).collect();
                v.sort_unstable();
                v.get(v.len() / 2).copied().unwrap_or(0) as f64
            };
            let (mean_in, mean_out) = (mean(|r| r.0), mean(|r| r.1));
            if !sharded {
                full_in = mean_in;
            }
            let dp = data_parallel_bytes(500, nodes, params) as f64;
            println!(
                "  {nodes:>5} | {:<9} | {:>7} | {:>6.2}, {:>6.2}, {:>6.2} | {:>6.2}, {:>6.2}, {:>6.2} | {:>6.2}× | {:>6.0}×, {:>6.0}×",
                if sharded { "sharded" } else { "full mesh" },
                rows.len(),
                mean_in / delta,
                median(|r| r.0) / delta,
                max(|r| r.0) / delta,
                mean_out / delta,
                median(|r| r.1) / delta,
                max(|r| r.1) / delta,
                full_in / mean_in,
                dp / mean_in,
                dp / mean_out,
            );
        }
    }
}
