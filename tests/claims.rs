//! Self-declared work earns nothing, across real nodes on 127.0.0.1: a node that signs and
//! gossips data and inference proofs with huge counters (the NEUROSHARD_FAULT_CLAIM_INFLATION
//! switch) is credited, on every honest node, exactly what its uptime earns; and
//! `POST /api/ponw/verify` offers nothing for a self-declared claim.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    BIN, Node, agreed_balances, balances, combined_output, env_of, start_cluster, wait_until,
};
use serde_json::{Value, json};

use neuroshard::crypto::{Identity, generate_nonce};
use neuroshard::ledger::proof::{sign_proof, sign_receipt};
use neuroshard::ledger::{Proof, ProofKind, SignedProof};

fn proofs_of(node: &Node, id: &str) -> Vec<Value> {
    node.get(&format!("/api/ledger/proofs/{id}?limit=1000"))["proofs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn of_kind<'a>(proofs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    proofs
        .iter()
        .filter(|p| p["proof"]["kind"] == kind)
        .collect()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A fresh identity's proof of `kind` claiming `edit`'s counters, made now.
fn claim(who: &Identity, edit: impl FnOnce(&mut Proof)) -> Proof {
    let mut proof = Proof {
        timestamp_ms: unix_ms(),
        nonce: generate_nonce(),
        ..Proof::empty(ProofKind::Data)
    };
    edit(&mut proof);
    sign_proof(who, proof).unwrap().proof
}

fn fresh_identity() -> Identity {
    let token: String = (0..4)
        .map(|_| format!("{:016x}", generate_nonce()))
        .collect();
    Identity::from_token(&token).unwrap()
}

fn signed(who: &Identity, proof: Proof) -> SignedProof {
    sign_proof(who, proof).unwrap()
}

#[test]
fn an_inflating_node_earns_only_its_uptime_and_self_declared_claims_are_offered_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Three honest nodes and node 3, which every uptime tick also signs and gossips a data proof
    // of 10⁷ samples and an inference proof of 10⁹ tokens (each worth the 100 NEURO cap if
    // credited), with no receipt. Nobody trains: every honest credit is uptime.
    let mut nodes = start_cluster(
        dir.path(),
        4,
        |_| vec!["--no-training".to_string()],
        |i| {
            let mut env = env_of(&[
                ("NEUROSHARD_LEDGER__UPTIME_INTERVAL_S", "2"),
                ("NEUROSHARD_LEDGER__LIMITS__MAX_PROOFS_PER_HOUR", "100000"),
            ]);
            if i == 3 {
                env.extend(env_of(&[("NEUROSHARD_FAULT_CLAIM_INFLATION", "1")]));
            }
            env
        },
    );
    let ids: Vec<String> = nodes
        .iter()
        .map(|n| n.stats()["node_id"].as_str().unwrap().to_string())
        .collect();
    let attacker = ids[3].clone();
    {
        let refs: Vec<&Node> = nodes.iter().collect();
        wait_until(
            "three inflated data and inference proofs on every honest node",
            Duration::from_secs(90),
            &refs,
            || {
                nodes[..3].iter().all(|node| {
                    let held = proofs_of(node, &attacker);
                    of_kind(&held, "data").len() >= 3
                        && of_kind(&held, "inference").len() >= 3
                        && of_kind(&held, "uptime").len() >= 3
                })
            },
        );
    }
    // Stop the attacker so that its account stops moving, then compare the honest tables
    // between two of their own uptime proofs.
    drop(nodes.pop());
    let honest = &nodes[..3];
    agreed_balances(honest, String::new);
    for (i, node) in honest.iter().enumerate() {
        let held = proofs_of(node, &attacker);
        for proof in of_kind(&held, "data")
            .into_iter()
            .chain(of_kind(&held, "inference"))
        {
            assert_eq!(proof["status"], "rejected", "node {i}: {proof}");
            assert_eq!(
                proof["reason"], "self-declared: no receipt from the receiving party",
                "node {i}: {proof}"
            );
            assert!(proof["credited"].is_null(), "node {i}: {proof}");
            assert_eq!(proof["base_reward"], 0, "node {i}: {proof}");
        }
        let uptime = of_kind(&held, "uptime");
        let earned: u64 = uptime
            .iter()
            .map(|p| p["base_reward"].as_u64().unwrap())
            .sum();
        let credited: u64 = held.iter().filter_map(|p| p["credited"].as_u64()).sum();
        let account = &balances(node)[&attacker];
        // 0.0001 NEURO a minute of uptime (a few seconds each): tiny, and all of it.
        assert!(earned > 0 && earned < 1_000_000, "node {i}: {earned}");
        assert_eq!(credited, earned, "node {i}");
        assert_eq!(account["balance_nano"], earned, "node {i}: {account}");
        assert_eq!(account["proof_count"], uptime.len(), "node {i}: {account}");
    }
    // No claim minted anything: the network's supply is the uptime of four nodes.
    let minted = honest[0].get("/api/neuro")["network"]["total_minted"]
        .as_f64()
        .unwrap();
    assert!(minted < 0.01, "total minted {minted}");

    // The measured attack on the verify endpoint: a fresh key's data proof of 10⁷ samples in
    // 600 s, and an inference proof of 10⁶ tokens.
    let fresh = fresh_identity();
    let data = claim(&fresh, |p| {
        p.work_seconds = 600;
        p.data_samples = 10_000_000;
    });
    let inference = claim(&fresh, |p| {
        p.kind = ProofKind::Inference;
        p.work_seconds = 60;
        p.tokens = 1_000_000;
        p.request_id = "req-1".into();
    });
    for proof in [&data, &inference] {
        let (status, answer) =
            honest[0].post_json("/api/ponw/verify", &json!(signed(&fresh, proof.clone())));
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["valid"], true, "{answer}");
        assert_eq!(answer["reward"], 0.0, "{answer}");
        assert_eq!(answer["reason"], "self_declared", "{answer}");
        assert_eq!(
            answer["detail"], "self-declared: no receipt from the receiving party",
            "{answer}"
        );
    }
    // The same data proof with its receiver's receipt is offered its reward.
    let mut vouched = data.clone();
    vouched.receipt = Some(sign_receipt(&fresh_identity(), &vouched).unwrap());
    let (status, answer) = honest[0].post_json("/api/ponw/verify", &json!(signed(&fresh, vouched)));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["valid"].clone(), answer["reward"].clone()),
        (json!(true), json!(100.0)),
        "{answer}"
    );
    assert!(answer.get("reason").is_none(), "{answer}");

    // Each honest ledger recomputes from its events alone: self-declared proofs stay uncredited.
    drop(nodes);
    for i in 0..3 {
        let out = Command::new(BIN)
            .args(["ledger", "verify", "--state-dir"])
            .arg(dir.path().join(format!("n{i}")))
            .output()
            .unwrap();
        assert!(out.status.success(), "node {i}: {}", combined_output(&out));
    }
}
