//! Ledger checkpoints on real nodes on 127.0.0.1: after each emission epoch the trainers of the
//! epoch before decide its checkpoint (the root of its events and of the balances after it) with
//! Tendermint (Malachite); every honest node stores the same one with a commit certificate, and
//! `ledger verify` checks the certificate against its own events. One trainer proposes and votes
//! for made-up balances (NEUROSHARD_FAULT_CHECKPOINT_FORGE): it neither sways nor stalls the
//! others, and no certificate carries its signature.
//!
//! Only the epoch timing is shortened (an operator's network setting): 20 s epochs, a 20 s
//! freshness window, checkpoints 25 s after an epoch ends. Rounds and everything else are the
//! shipped defaults.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::{BIN, Node, combined_output, env_of, fixed_token, start_cluster, wait_until};
use serde_json::Value;

const TIMING: [(&str, &str); 3] = [
    ("NEUROSHARD_LEDGER__REWARDS__EPOCH_S", "20"),
    ("NEUROSHARD_LEDGER__LIMITS__FRESHNESS_WINDOW_S", "20"),
    ("NEUROSHARD_LEDGER__CHECKPOINT_DELAY_S", "25"),
];
const FORGER: usize = 3;

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
    let nodes = start_cluster(
        dir.path(),
        4,
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
            if i == FORGER {
                env.extend(env_of(&[("NEUROSHARD_FAULT_CHECKPOINT_FORGE", "1")]));
            }
            env
        },
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
