//! A permissioned network on 127.0.0.1: two trainers admitted by the genesis's authority and one
//! node without a certificate. The admitted nodes see each other admitted; the other node's round
//! announcements and ledger messages are dropped and counted as unadmitted, it is never rejected or
//! banned for it, and it still follows the network as an observer.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Node, admit, fixed_token, network_init, wait_until};
use neuroshard::admission::{Certificate, Genesis};
use serde_json::Value;

/// This node's row for the peer with `peer_id`, if listed.
fn row(node: &Node, peer_id: &str) -> Option<Value> {
    node.get("/api/peers")["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer_id"] == peer_id)
        .cloned()
}

/// Listed, heard (a heartbeat arrived), and admitted as `admitted` says.
fn sees(node: &Node, peer_id: &str, admitted: bool) -> bool {
    row(node, peer_id).is_some_and(|r| {
        r["heartbeat"]["node_id"] == r["node_id"]
            && r["admitted"] == admitted
            && r["banned"] == false
    })
}

#[test]
fn admitted_trainers_count_each_other_and_an_unadmitted_node_only_observes() {
    let dir = tempfile::tempdir().unwrap();
    let (genesis_file, key) = network_init(&dir.path().join("net"), "admitnet");
    let genesis = Genesis::load(Path::new(&genesis_file)).unwrap();
    let tokens: Vec<String> = (0..3).map(fixed_token).collect();
    let certs: Vec<Certificate> = (0..2)
        .map(|i| {
            let file = dir.path().join(format!("cert{i}.json"));
            admit(&genesis_file, &key, &tokens[i], &file)
        })
        .collect();
    let start = |i: usize, seed: Option<&str>| {
        let mut args = vec![
            "--token".to_string(),
            tokens[i].clone(),
            "--genesis".into(),
            genesis_file.clone(),
            "--diloco-steps".into(),
            "10".into(),
        ];
        if i < 2 {
            let file = dir.path().join(format!("cert{i}.json"));
            args.extend(["--membership".into(), file.to_str().unwrap().to_string()]);
        }
        if let Some(seed) = seed {
            args.extend(["--seed-peers".into(), seed.to_string()]);
        }
        common::start_owned(
            &dir.path().join(format!("n{i}")),
            &args,
            &common::env_of(&[
                ("NEUROSHARD_DILOCO__ROUND_DEADLINE_S", "10"),
                ("NEUROSHARD_DILOCO__STRAGGLER_GRACE_S", "10"),
                ("NEUROSHARD_TRAINING__EVAL_EVERY", "1000"),
            ]),
        )
    };
    let a = start(0, None);
    let seed = a.p2p_addr();
    let b = start(1, Some(&seed));
    let observer = start(2, Some(&seed));
    let nodes = [&a, &b, &observer];
    let (a_id, b_id, observer_id) = (a.peer_id(), b.peer_id(), observer.peer_id());

    // This node's own standing.
    for (node, admitted) in [(&a, true), (&b, true), (&observer, false)] {
        let stats = node.stats();
        let admission = &stats["admission"];
        assert_eq!(admission["policy"], "permissioned", "{stats}");
        assert_eq!(admission["genesis_hash"], genesis.hash().as_str());
        assert_eq!(admission["admitted"], admitted, "{stats}");
        assert_eq!(stats["role"], if admitted { "trainer" } else { "observer" });
    }
    assert_eq!(
        a.stats()["admission"]["certificate_expires_at_s"],
        certs[0].expires_at_s
    );
    assert_eq!(a.get("/api/network")["network_id"], "admitnet");

    wait_until(
        "the admitted nodes to see each other admitted and the observer unadmitted, and the \
         observer to see both admitted",
        Duration::from_secs(60),
        &nodes,
        || {
            sees(&a, &b_id, true)
                && sees(&b, &a_id, true)
                && sees(&a, &observer_id, false)
                && sees(&b, &observer_id, false)
                && sees(&observer, &a_id, true)
                && sees(&observer, &b_id, true)
        },
    );
    let b_row = row(&a, &b_id).unwrap();
    assert_eq!(b_row["admitted_until_s"], certs[1].expires_at_s, "{b_row}");

    // The observer trains locally and announces its deltas; admitted nodes drop them, counted as
    // unadmitted, not as rejections.
    wait_until(
        "both admitted nodes to drop the observer's announcements as unadmitted",
        Duration::from_secs(120),
        &nodes,
        || {
            [&a, &b].iter().all(|n| {
                row(n, &observer_id).is_some_and(|r| r["unadmitted"].as_u64().unwrap_or(0) >= 1)
                    && n.get("/api/network")["messages_unadmitted"]
                        .as_u64()
                        .unwrap_or(0)
                        >= 1
            })
        },
    );
    // The observer follows the network: it closes rounds with the admitted trainers' deltas.
    wait_until(
        "the observer and the trainers to complete a round",
        Duration::from_secs(120),
        &nodes,
        || {
            nodes.iter().all(|n| {
                n.get("/api/diloco")["outer_step_count"]
                    .as_u64()
                    .unwrap_or(0)
                    >= 1
            })
        },
    );
    for (node, other) in [(&a, &b_id), (&b, &a_id)] {
        let r = row(node, &observer_id).unwrap();
        assert_eq!(r["banned"], false, "{r}");
        assert_eq!(r["rejected"], 0, "{r}");
        assert_eq!(r["admitted"], false, "{r}");
        assert_eq!(node.get("/api/network")["peers_banned"], 0);
        // The admitted peer's work passed (a message that arrived before its first heartbeat
        // may have been dropped as unadmitted; it is repeated).
        let admitted = row(node, other).unwrap();
        assert!(admitted["accepted"].as_u64().unwrap() >= 1, "{admitted}");
        assert_eq!(admitted["rejected"], 0, "{admitted}");
    }
    // The observer holds nothing against the trainers either.
    for id in [&a_id, &b_id] {
        let r = row(&observer, id).unwrap();
        assert_eq!(
            (&r["rejected"], &r["banned"]),
            (&Value::from(0), &Value::Bool(false)),
            "{r}"
        );
    }
}
