//! The NEURO ledger across real nodes on 127.0.0.1: proofs gossip, every node verifies and records
//! them in its own SQLite ledger, honest nodes end with identical balance tables, a cheating node
//! earns nothing, and acknowledged proofs survive kill -9.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::{BIN, Node, agreed_balances, balances, env_of, start_cluster, wait_until};

fn ledger_verify(state_dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["ledger", "verify", "--state-dir"])
        .arg(state_dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Per node, the proofs of `ids` it holds but has not credited, to explain differing tables.
fn uncredited(nodes: &[Node], ids: &[String]) -> String {
    let mut out = String::new();
    for (i, node) in nodes.iter().enumerate() {
        for id in ids {
            let listed = node.get(&format!("/api/ledger/proofs/{id}?limit=1000"))["proofs"].clone();
            let all = listed.as_array().cloned().unwrap_or_default();
            out += &format!("node {i}, proofs of {id}: {} held\n", all.len());
            for p in all.iter().filter(|p| p["status"] != "credited") {
                let proof = &p["proof"];
                out += &format!(
                    "  {} round {} delta {}: {} {}\n",
                    proof["kind"],
                    proof["outer_round"],
                    proof["delta_hash"],
                    p["status"],
                    p["reason"]
                );
            }
        }
    }
    out
}

#[test]
fn honest_nodes_hold_identical_balances_and_a_forging_replaying_node_earns_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Node 3 (an observer) gossips only forged proofs and replays of its peers' proofs (the test
    // fault switch). The three trainers' rounds wait for all three deltas, so every trainer
    // aggregates the same inputs and reaches the same verdicts.
    let nodes = start_cluster(
        dir.path(),
        4,
        |i| {
            let mut args = vec!["--diloco-steps".to_string(), "20".to_string()];
            if i == 3 {
                args.push("--no-training".into());
            }
            args
        },
        |i| {
            let mut env = env_of(&[
                ("NEUROSHARD_LEDGER__UPTIME_INTERVAL_S", "2"),
                // An uptime proof every 2 s is 1800 an hour: the hourly limit must take them.
                ("NEUROSHARD_LEDGER__LIMITS__MAX_PROOFS_PER_HOUR", "100000"),
                ("NEUROSHARD_DILOCO__MIN_PEERS", "3"),
                ("NEUROSHARD_DILOCO__QUORUM_FRACTION", "1.0"),
                ("NEUROSHARD_DILOCO__ROUND_DEADLINE_S", "60"),
                ("NEUROSHARD_TRAINING__EVAL_EVERY", "1000"),
            ]);
            if i == 3 {
                env.extend(env_of(&[("NEUROSHARD_FAULT_PONW", "1")]));
            }
            env
        },
    );
    let ids: Vec<String> = nodes
        .iter()
        .map(|n| n.stats()["node_id"].as_str().unwrap().to_string())
        .collect();
    let cheater_peer = nodes[3].peer_id();
    let (honest, refs): (&[Node], Vec<&Node>) = (&nodes[..3], nodes.iter().collect());
    wait_until(
        "three outer rounds and three credited proofs of each trainer",
        Duration::from_secs(120),
        &refs,
        || {
            honest.iter().all(|n| {
                let table = balances(n);
                n.get("/api/diloco")["outer_step_count"].as_u64() >= Some(3)
                    && ids[..3]
                        .iter()
                        .all(|id| table[id]["proof_count"].as_u64() >= Some(3))
            })
        },
    );

    // Proofs keep streaming; between two of them every honest node holds the same table.
    let table = &agreed_balances(honest, || {
        format!("proofs not credited:\n{}", uncredited(honest, &ids[..3]))
    });
    for id in &ids[..3] {
        let account = &table[id];
        assert!(account["balance"].as_f64() > Some(0.0), "{id}: {table}");
        assert!(account["proof_count"].as_u64() >= Some(3), "{id}: {table}");
    }
    // Training proofs were credited: more than uptime alone could earn.
    let uptime_only = 0.0001 / 60.0 * 2.0 * table[&ids[0]]["proof_count"].as_f64().unwrap();
    assert!(
        table[&ids[0]]["balance"].as_f64().unwrap() > uptime_only,
        "{table}"
    );

    let cheater = &ids[3];
    for node in honest {
        let cheater_balance = &balances(node)[cheater];
        assert!(
            cheater_balance.is_null() || cheater_balance["balance"] == 0.0,
            "the forger earned: {cheater_balance}"
        );
    }
    // Every honest node counted the forger's rejections, by reason.
    wait_until(
        "the forger's rejections counted",
        Duration::from_secs(30),
        &refs,
        || {
            honest.iter().all(|node| {
                let peers = node.get("/api/peers")["peers"].clone();
                let against_the_peer = peers.as_array().unwrap().iter().any(|p| {
                    p["peer_id"] == cheater_peer.as_str()
                        && p["rejections"]["bad_signature"].as_u64() > Some(0)
                        && p["rejections"]["replay"].as_u64() > Some(0)
                });
                let by_reason = &node.get("/api/neuro")["rejections"];
                against_the_peer
                    && by_reason["bad_signature"].as_u64() > Some(0)
                    && by_reason["replay"].as_u64() > Some(0)
            })
        },
    );
    let metrics = honest[0].get_text("/metrics");
    assert!(
        metrics.contains("neuroshard_ledger_rejections_total{reason=\"bad_signature\"}"),
        "/metrics lacks the rejections by reason:\n{metrics}"
    );
    drop(nodes);
    for i in 0..3 {
        let (ok, report) = ledger_verify(&dir.path().join(format!("n{i}")));
        assert!(ok, "node {i}'s ledger does not verify:\n{report}");
    }
}

#[test]
fn acknowledged_proofs_survive_kill_9_and_the_ledger_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("n");
    let env = [
        ("NEUROSHARD_LEDGER__UPTIME_INTERVAL_S", "1"),
        ("NEUROSHARD_LEDGER__LIMITS__MAX_PROOFS_PER_HOUR", "100000"),
    ];
    let node = Node::start(&state, &["--diloco-steps", "5"], &env);
    let id = node.stats()["node_id"].as_str().unwrap().to_string();
    let path = format!("/api/ledger/proofs/{id}?limit=1000");
    let listed = |node: &Node| -> BTreeSet<String> {
        node.get(&path)["proofs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect()
    };
    let mut acknowledged = BTreeSet::new();
    node.wait_for("proofs streaming in", Duration::from_secs(60), |n| {
        acknowledged.extend(listed(n));
        acknowledged.len() >= 8
    });
    acknowledged.extend(listed(&node));
    drop(node); // SIGKILL, while uptime and training proofs are being written

    let (ok, report) = ledger_verify(&state);
    assert!(ok, "the ledger does not verify after kill -9:\n{report}");
    let node = Node::start(&state, &["--diloco-steps", "5"], &env);
    let after = listed(&node);
    let lost: Vec<_> = acknowledged.difference(&after).collect();
    assert!(lost.is_empty(), "acknowledged proofs lost: {lost:?}");
}

/// What `account` received in transfers, in NEURO: balance + spent + staked − earned.
fn received(account: &serde_json::Value) -> f64 {
    let f = |key: &str| account[key].as_f64().unwrap_or(0.0);
    f("balance") + f("total_spent") + f("stake") - f("total_earned")
}

#[test]
fn a_double_spend_ends_with_the_same_winner_on_every_node() {
    const KEY: &str = "double-spend-test-api-key-0123";
    let dir = tempfile::tempdir().unwrap();
    // Node 2 spends one sequence number twice (the test fault switch): the transfer its wallet
    // sends to node 0 and, 2 s later, one to node 1 dated 5 s earlier, gossiped only. Node 0
    // and node 1 store the first, then the earlier second arrives.
    let nodes = start_cluster(
        dir.path(),
        3,
        |_| vec!["--diloco-steps".to_string(), "20".to_string()],
        |i| {
            let mut env = env_of(&[
                ("NEUROSHARD_LEDGER__UPTIME_INTERVAL_S", "2"),
                ("NEUROSHARD_LEDGER__LIMITS__MAX_PROOFS_PER_HOUR", "100000"),
                ("NEUROSHARD_TRAINING__EVAL_EVERY", "1000"),
            ]);
            if i == 2 {
                env.extend(env_of(&[
                    ("NEUROSHARD_FAULT_DOUBLE_SPEND", "5"),
                    ("NEUROSHARD_API_KEY", KEY),
                ]));
            }
            env
        },
    );
    let ids: Vec<String> = nodes
        .iter()
        .map(|n| n.stats()["node_id"].as_str().unwrap().to_string())
        .collect();
    let refs: Vec<&Node> = nodes.iter().collect();
    let amount = 0.000_01;
    wait_until(
        "the double spender to hold twice what it sends, and its peers' accounts",
        Duration::from_secs(120),
        &refs,
        || {
            let table = balances(&nodes[2]);
            table[&ids[2]]["balance"].as_f64() > Some(2.0 * amount)
                && !table[&ids[0]].is_null()
                && !table[&ids[1]].is_null()
        },
    );
    // The backdated transfer must find the balance too: it was there 5 s before the send.
    std::thread::sleep(Duration::from_secs(6));
    let (status, sent) = nodes[2].post_with_key(
        "/api/wallet/send",
        KEY,
        &serde_json::json!({"to": ids[0], "amount": amount}),
    );
    assert_eq!(
        (status, sent["status"].as_str()),
        (200, Some("applied")),
        "{sent}"
    );

    // Node 0 and node 1 settle on the earlier transfer, to node 1; the one to node 0 is refused
    // (its sequence number is used). Both hold the same table.
    let (honest, watched) = (&nodes[..2], &refs[..2]);
    wait_until(
        "both honest nodes to apply the earlier transfer",
        Duration::from_secs(30),
        watched,
        || {
            honest.iter().all(|node| {
                let table = balances(node);
                (received(&table[&ids[1]]) - amount).abs() < 1e-12
            })
        },
    );
    agreed_balances(honest, || String::from("double spend"));
    for node in honest {
        let table = balances(node);
        assert!(
            received(&table[&ids[0]]).abs() < 1e-12,
            "node 0 received the refused transfer too: {table}"
        );
        let spent = table[&ids[2]]["total_spent"].as_f64().unwrap();
        assert!(
            spent < 2.0 * amount,
            "both transfers of one sequence number were applied: {table}"
        );
    }
    drop(nodes);
    for i in 0..2 {
        let (ok, report) = ledger_verify(&dir.path().join(format!("n{i}")));
        assert!(ok, "node {i}'s ledger does not verify:\n{report}");
    }
}
