//! Ledger checkpoints on real nodes on 127.0.0.1: after each emission epoch the trainers of the
//! epoch before decide its checkpoint (the root of its events and of the balances after it) with
//! Tendermint (Malachite); every honest node stores the same one with a commit certificate, and
//! `ledger verify` checks the certificate against its own events. One trainer proposes and votes
//! for made-up balances (NEUROSHARD_FAULT_CHECKPOINT_FORGE): it neither sways nor stalls the
//! others, and no certificate carries its signature.
//!
//! Only the epoch timing is shortened (an operator's network setting): 20 s epochs, a 20 s
//! freshness window, checkpoints 25 s after an epoch ends, and the hourly proof limit raised for
//! rounds of H = 20. Rounds and everything else are the shipped defaults.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::{BIN, Node, combined_output, env_of, fixed_token, start_cluster, wait_until};
use serde_json::Value;

const TIMING: [(&str, &str); 4] = [
    ("NEUROSHARD_LEDGER__REWARDS__EPOCH_S", "20"),
    ("NEUROSHARD_LEDGER__LIMITS__FRESHNESS_WINDOW_S", "20"),
    ("NEUROSHARD_LEDGER__CHECKPOINT_DELAY_S", "25"),
    // Rounds of H = 20 close every ~2 s: the hourly proof limit (made for H = 500) would stop
    // the training proofs, and with them the validators, after a few minutes.
    ("NEUROSHARD_LEDGER__LIMITS__MAX_PROOFS_PER_HOUR", "100000"),
];
const FORGER: usize = 3;
const HISTORY_FORGER: usize = 1;

fn checkpoints(node: &Node) -> Vec<Value> {
    node.get("/api/ledger/checkpoints")["checkpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn node_id(i: usize) -> String {
    neuroshard::crypto::Identity::from_token(&fixed_token(i))
        .unwrap()
        .node_id
}

/// `neuroshard ledger verify` on a node's state dir, with the node's settings: (passed, output).
fn ledger_verify(state_dir: &std::path::Path) -> (bool, String) {
    let mut command = Command::new(BIN);
    command
        .args(["ledger", "verify", "--state-dir"])
        .arg(state_dir);
    command.envs(TIMING);
    let output = command.output().unwrap();
    (output.status.success(), combined_output(&output))
}

#[test]
fn honest_trainers_certify_each_epoch_and_a_forging_validator_neither_sways_nor_stalls_them() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = trainers(
        dir.path(),
        4,
        Some((FORGER, "NEUROSHARD_FAULT_CHECKPOINT_FORGE")),
    );
    let honest: Vec<&Node> = (0..4).filter(|&i| i != FORGER).map(|i| &nodes[i]).collect();
    let all: Vec<&Node> = nodes.iter().collect();
    // The first epoch with validators is the second one a node sees; its checkpoint comes 25 s
    // after it ends.
    wait_until(
        "every honest node to store a checkpoint",
        Duration::from_secs(240),
        &all,
        || honest.iter().all(|n| !checkpoints(n).is_empty()),
    );
    let epochs: Vec<BTreeSet<u64>> = honest
        .iter()
        .map(|n| {
            checkpoints(n)
                .iter()
                .map(|c| c["epoch"].as_u64().unwrap())
                .collect()
        })
        .collect();
    let common_epoch = *epochs
        .iter()
        .skip(1)
        .fold(epochs[0].clone(), |acc, e| &acc & e)
        .last()
        .unwrap_or_else(|| panic!("no epoch certified by every honest node: {epochs:?}"));
    let decided: Vec<Value> = honest
        .iter()
        .map(|n| {
            checkpoints(n)
                .into_iter()
                .find(|c| c["epoch"] == common_epoch)
                .unwrap()
        })
        .collect();
    for record in &decided {
        assert_eq!(
            record["checkpoint_id"], decided[0]["checkpoint_id"],
            "{decided:#?}"
        );
        assert_eq!(record["events_root"], decided[0]["events_root"]);
        assert_eq!(record["balances_root"], decided[0]["balances_root"]);
        let signers: BTreeSet<String> = record["signatures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| pair[0].as_str().unwrap().to_string())
            .collect();
        assert!(
            !signers.contains(&node_id(FORGER)),
            "the forger signed the honest checkpoint: {record:#}"
        );
        assert!(signers.len() >= 3, "{record:#}");
    }
    // The forger never decides its made-up value, nor stores the honest one it voted against.
    assert!(
        checkpoints(&nodes[FORGER])
            .iter()
            .all(|c| c["epoch"] != common_epoch),
        "{:#?}",
        checkpoints(&nodes[FORGER])
    );
    for i in (0..4).filter(|&i| i != FORGER) {
        let (passed, output) = ledger_verify(&dir.path().join(format!("n{i}")));
        assert!(passed, "ledger verify on node {i}: {output}");
        assert!(
            output.contains("checkpoints holding") && !output.contains(" 0 checkpoints holding"),
            "{output}"
        );
    }
}

fn newest_checkpoint(node: &Node) -> Option<u64> {
    checkpoints(node).first().and_then(|c| c["epoch"].as_u64())
}

fn holds_checkpoint(node: &Node, epoch: u64) -> bool {
    checkpoints(node).iter().any(|c| c["epoch"] == epoch)
}

/// The balance table after checkpointed `epoch` on every node, all equal.
fn assert_same_balances_after(nodes: &[&Node], epoch: u64) {
    let tables: Vec<Value> = nodes
        .iter()
        .map(|n| n.get(&format!("/api/ledger/balances?epoch={epoch}"))["accounts"].clone())
        .collect();
    assert!(
        tables[0].as_object().is_some_and(|t| !t.is_empty()),
        "{tables:#?}"
    );
    for (i, table) in tables.iter().enumerate() {
        assert_eq!(table, &tables[0], "node {i}'s balances after epoch {epoch}");
    }
}

fn start_trainer(dir: &std::path::Path, i: usize, seed: &str) -> Node {
    let flags = [
        "--diloco-steps",
        "20",
        "--token",
        &fixed_token(i),
        "--seed-peers",
        seed,
    ];
    Node::start(&dir.join(format!("n{i}")), &flags, &TIMING)
}

/// `count` trainers on the test timing; node `fault.0` also runs fault switch `fault.1`.
fn trainers(dir: &std::path::Path, count: usize, fault: Option<(usize, &str)>) -> Vec<Node> {
    start_cluster(
        dir,
        count,
        |i| {
            vec![
                "--diloco-steps".into(),
                "20".into(),
                "--token".into(),
                fixed_token(i),
            ]
        },
        |i| {
            let mut env = env_of(&TIMING);
            if let Some((_, switch)) = fault.filter(|(faulty, _)| *faulty == i) {
                env.extend(env_of(&[(switch, "1")]));
            }
            env
        },
    )
}

fn verify_all(dir: &std::path::Path, nodes: std::ops::Range<usize>) {
    for i in nodes {
        let (passed, output) = ledger_verify(&dir.join(format!("n{i}")));
        assert!(passed, "ledger verify on node {i}: {output}");
    }
}

/// A node that joins after the freshness window and after a checkpoint catches up by history
/// sync: within a minute and a half it holds the certificates the others held when it came, the
/// same balances after them, and passes `ledger verify`. One trainer serves forged history
/// (NEUROSHARD_FAULT_HISTORY_FORGE: a proof's status changed, a checkpoint nobody decided): the
/// joiner refuses and blames it, and adopts the others' copies.
#[test]
fn a_late_joiner_syncs_the_certified_history_and_refuses_a_forged_copy() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = trainers(
        dir.path(),
        3,
        Some((HISTORY_FORGER, "NEUROSHARD_FAULT_HISTORY_FORGE")),
    );
    let seed = nodes[0].p2p_addr();
    let started = std::time::Instant::now();
    wait_until(
        "the first checkpoint",
        Duration::from_secs(240),
        &nodes.iter().collect::<Vec<_>>(),
        || newest_checkpoint(&nodes[0]).is_some(),
    );
    // Past the freshness window (20 s): gossip alone cannot bring the joiner what came before.
    std::thread::sleep(Duration::from_secs(21).saturating_sub(started.elapsed()));
    let before_join = newest_checkpoint(&nodes[0]).unwrap();
    nodes.push(start_trainer(dir.path(), 3, &seed));
    let all: Vec<&Node> = nodes.iter().collect();
    wait_until(
        "the joiner (and every node) to hold the checkpoints made before it came",
        Duration::from_secs(90),
        &all,
        || all.iter().all(|n| holds_checkpoint(n, before_join)),
    );
    assert_same_balances_after(&all, before_join);
    verify_all(dir.path(), 0..4);
    // Every sync asks the next peer in turn; the forger's answers are refused and blamed.
    let forger = nodes[HISTORY_FORGER].peer_id();
    let blamed = || {
        nodes[3].get("/api/peers")["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["peer_id"] == forger.as_str())
            .is_some_and(|p| p["last_rejection"].to_string().contains("ledger history"))
    };
    wait_until(
        "the joiner to blame the forger",
        Duration::from_secs(60),
        &all,
        blamed,
    );
}

/// A node that was down for three epochs catches up the same way. Four trainers: without it the
/// other three hold more than 2/3 of the validators' power, so the epochs it misses are certified.
#[test]
fn a_node_back_after_three_epochs_syncs_what_was_certified_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = trainers(dir.path(), 4, None);
    let seed = nodes[0].p2p_addr();
    wait_until(
        "the first checkpoint",
        Duration::from_secs(240),
        &nodes.iter().collect::<Vec<_>>(),
        || newest_checkpoint(&nodes[0]).is_some(),
    );
    let away_since = newest_checkpoint(&nodes[0]).unwrap();
    let status = nodes.remove(2).terminate();
    assert!(status.success(), "node 2 exited with {status}");
    let others: Vec<&Node> = nodes.iter().collect();
    wait_until(
        "three epochs certified while node 2 is away",
        Duration::from_secs(180),
        &others,
        || newest_checkpoint(others[0]).is_some_and(|e| e >= away_since + 3),
    );
    let while_away = newest_checkpoint(&nodes[0]).unwrap();
    nodes.insert(2, start_trainer(dir.path(), 2, &seed));
    let all: Vec<&Node> = nodes.iter().collect();
    wait_until(
        "node 2 (and every node) to hold what was certified while it was away",
        Duration::from_secs(90),
        &all,
        || all.iter().all(|n| holds_checkpoint(n, while_away)),
    );
    assert_same_balances_after(&all, while_away);
    verify_all(dir.path(), 0..4);
}
