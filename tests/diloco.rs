//! DiLoCo across real nodes on 127.0.0.1: each trains H inner steps on its own data order, the
//! deltas are exchanged (encoded, announced, fetched) and combined, and every node applies the same
//! outer step, so all hold the same θ₀ after every round while the shared model learns.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Node, f64_of};

/// 4 trainers that wait for each other: a round needs all 4 deltas (or its deadline).
fn start_trainers(dir: &std::path::Path, count: usize, inner_steps: &str) -> Vec<Node> {
    let env = [
        ("NEUROSHARD_DILOCO__MIN_PEERS", "4"),
        ("NEUROSHARD_DILOCO__QUORUM_FRACTION", "1.0"),
        ("NEUROSHARD_DILOCO__ROUND_DEADLINE_S", "60"),
        ("NEUROSHARD_TRAINING__EVAL_EVERY", "1000"),
    ];
    let first = Node::start(&dir.join("n0"), &["--diloco-steps", inner_steps], &env);
    let seed = first.p2p_addr();
    let mut nodes = vec![first];
    for i in 1..count {
        nodes.push(Node::start(
            &dir.join(format!("n{i}")),
            &["--diloco-steps", inner_steps, "--seed-peers", &seed],
            &env,
        ));
    }
    nodes
}

#[test]
fn four_nodes_agree_on_theta0_every_round_and_learn() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_trainers(dir.path(), 4, "20");
    // θ₀ hash per round, as each node reported it while at that round.
    let mut seen: BTreeMap<u64, BTreeMap<String, String>> = BTreeMap::new();
    let start = Instant::now();
    loop {
        let states: Vec<(u64, String)> = nodes
            .iter()
            .map(|n| {
                let d = n.get("/api/diloco");
                (
                    d["outer_step_count"].as_u64().unwrap(),
                    d["theta0_hash"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        for (i, (round, hash)) in states.iter().enumerate() {
            seen.entry(*round)
                .or_default()
                .insert(format!("n{i}"), hash.clone());
        }
        if states.iter().all(|(round, _)| *round >= 5) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "5 rounds not reached in 240 s: {states:?}; log:\n{}",
            nodes[0].log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (round, hashes) in &seen {
        let distinct: std::collections::BTreeSet<&String> = hashes.values().collect();
        assert_eq!(
            distinct.len(),
            1,
            "nodes disagree on θ₀ at round {round}: {hashes:?}"
        );
    }
    assert!(
        seen.range(1..).filter(|(_, h)| h.len() >= 2).count() >= 3,
        "too few rounds observed on several nodes to compare: {seen:?}"
    );
    for node in &nodes {
        let last = node.get("/api/diloco")["last_round"].clone();
        assert_eq!(last["participants"], 4, "{last}");
        assert_eq!(
            last["kept"].as_array().unwrap().len() + last["rejected"].as_array().unwrap().len(),
            4
        );
        assert!(last["bytes_received"].as_u64().unwrap() > 0, "{last}");
    }
    // The shared model learns: the validation loss after the rounds is well below the initial one.
    let stats = nodes[0].stats();
    let initial = f64_of(&stats, "initial_val_loss");
    let now = f64_of(&stats, "val_loss");
    assert!(
        now <= 0.7 * initial,
        "val_loss {now} is not 30% below the initial {initial}"
    );
}
