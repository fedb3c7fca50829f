//! A whole DiLoCo round between 4 real nodes on loopback, 10M parameters (micro preset):
//! `cargo bench --bench round`. Each node reports `sync_seconds` per round: from its own delta
//! being ready to the aggregate in hand. The node that finished training last in a round waits for
//! nobody, so the round's minimum over the nodes is the exchange itself: announce, fetch 3 deltas
//! of 38 MB, validate, aggregate. Baseline, same run: the H = 2 inner steps of a round on this node.
//! Goal: ≤ 2 s.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{env_of, fixed_token, start_cluster};

const ROUNDS: u64 = 6;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(
        dir.path(),
        4,
        |i| {
            [
                "--preset",
                "micro",
                "--diloco-steps",
                "2",
                "--token",
                &fixed_token(i),
            ]
            .map(String::from)
            .to_vec()
        },
        |_| {
            env_of(&[
                ("NEUROSHARD_DILOCO__MIN_PEERS", "4"),
                ("NEUROSHARD_DILOCO__QUORUM_FRACTION", "1.0"),
                ("NEUROSHARD_DILOCO__ROUND_DEADLINE_S", "120"),
                ("NEUROSHARD_TRAINING__EVAL_EVERY", "100000"),
                ("NEUROSHARD_TRAINING__BATCH_SIZE", "2"),
            ])
        },
    );
    // round → node → (sync_seconds, bytes_received)
    let mut seen: BTreeMap<u64, BTreeMap<usize, (f64, u64)>> = BTreeMap::new();
    let began = Instant::now();
    while seen
        .range(1..=ROUNDS)
        .filter(|(_, by)| by.len() == 4)
        .count()
        < ROUNDS as usize
    {
        assert!(
            began.elapsed() < Duration::from_secs(900),
            "rounds too slow: {seen:?}"
        );
        for (i, node) in nodes.iter().enumerate() {
            let last = node.get("/api/diloco")["last_round"].clone();
            if let (Some(round), Some(sync)) =
                (last["round"].as_u64(), last["sync_seconds"].as_f64())
            {
                let received = last["bytes_received"].as_u64().unwrap_or(0);
                seen.entry(round).or_default().insert(i, (sync, received));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let stats = nodes[0].stats();
    // 2 inner steps of batch 2 × 256 tokens.
    let step_s = 2.0 * 2.0 * 256.0 / stats["tokens_per_sec"].as_f64().unwrap_or(1.0).max(1.0);
    println!(
        "whole round, 4 nodes, micro ({} parameters), H = 2, fp32 deltas:",
        stats["num_params"]
    );
    let mut exchange = Vec::new();
    for (round, by_node) in seen.range(1..=ROUNDS) {
        let min = by_node.values().map(|v| v.0).fold(f64::INFINITY, f64::min);
        let received = by_node.values().map(|v| v.1).max().unwrap_or(0);
        println!(
            "  round {round}: exchange {min:.2} s (node finishing last), {:.1} MB fetched per node",
            received as f64 / 1e6
        );
        exchange.push(min);
    }
    exchange.sort_by(f64::total_cmp);
    let median = exchange[exchange.len() / 2];
    println!(
        "  median exchange {median:.2} s (goal <= 2 s: {})",
        if median <= 2.0 { "met" } else { "not met" }
    );
    println!(
        "  baseline: the round's 2 inner steps take about {step_s:.2} s here (4 nodes sharing 2 cores); ratio {:.2}",
        median / step_s
    );
}
