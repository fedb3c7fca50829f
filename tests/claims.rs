//! Self-declared work earns nothing, across real nodes on 127.0.0.1: a node that signs and
//! gossips data and inference proofs with huge counters and claims uptime from before it started
//! (the NEUROSHARD_FAULT_CLAIM_INFLATION switch) is credited, on every honest node, only the
//! uptime its peers witnessed, while honest nodes' witnessed uptime is paid; an inference proof
//! earns once its requester signs a receipt (`neuroshard generate`); and `POST /api/ponw/verify`
//! offers nothing for a self-declared claim.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{BIN, Node, balances, combined_output, env_of, start_cluster, wait_until};
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

/// `node`'s credited uptime proofs of `id`, each with the reason its witnesses gave.
fn witnessed_uptime(node: &Node, id: &str) -> Vec<Value> {
    of_kind(&proofs_of(node, id), "uptime")
        .into_iter()
        .filter(|p| p["status"] == "credited")
        .cloned()
        .collect()
}

#[test]
fn inflated_claims_and_unwitnessed_uptime_earn_nothing_while_witnessed_uptime_and_receipted_inference_are_paid()
 {
    let dir = tempfile::tempdir().unwrap();
    // Two honest trainers (trainers carry weight, so they witness each other) and node 2, an
    // observer which every uptime tick also signs and gossips a data proof of 10⁷ samples and an
    // inference proof of 10⁹ tokens (each worth the 100 NEURO cap if credited) with no receipt,
    // and whose first uptime proof claims the 120 s before it, most of them before it started.
    let mut nodes = start_cluster(
        dir.path(),
        3,
        |i| {
            if i == 2 {
                vec!["--no-training".to_string()]
            } else {
                Vec::new()
            }
        },
        |i| {
            let mut env = env_of(&[
                ("NEUROSHARD_LEDGER__UPTIME_INTERVAL_S", "2"),
                ("NEUROSHARD_LEDGER__LIMITS__MAX_PROOFS_PER_HOUR", "100000"),
                ("NEUROSHARD_TRAINING__EVAL_EVERY", "100000"),
            ]);
            if i == 2 {
                env.extend(env_of(&[("NEUROSHARD_FAULT_CLAIM_INFLATION", "1")]));
            }
            env
        },
    );
    let ids: Vec<String> = nodes
        .iter()
        .map(|n| n.stats()["node_id"].as_str().unwrap().to_string())
        .collect();
    let attacker = ids[2].clone();
    {
        let refs: Vec<&Node> = nodes.iter().collect();
        wait_until(
            "inflated proofs and witnessed uptime on every honest node",
            Duration::from_secs(45),
            &refs,
            || {
                nodes[..2].iter().all(|node| {
                    let held = proofs_of(node, &attacker);
                    of_kind(&held, "data").len() >= 3
                        && of_kind(&held, "inference").len() >= 3
                        && of_kind(&held, "uptime").iter().any(|p| {
                            p["proof"]["uptime_seconds"] == 120 && p["status"] != "pending"
                        })
                        && ids.iter().all(|id| !witnessed_uptime(node, id).is_empty())
                })
            },
        );
    }
    drop(nodes.pop());
    let honest = &nodes[..2];
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
        // The uptime it did not have: nobody heard it then, so nobody witnessed it, and it is
        // refused when it settles.
        let inflated: Vec<_> = of_kind(&held, "uptime")
            .into_iter()
            .filter(|p| p["proof"]["uptime_seconds"] == 120)
            .collect();
        assert_eq!(inflated.len(), 1, "node {i}: {held:?}");
        assert_eq!(
            inflated[0]["status"], "rejected",
            "node {i}: {}",
            inflated[0]
        );
        assert!(
            inflated[0]["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("unwitnessed: ")),
            "node {i}: {}",
            inflated[0]
        );
        assert!(
            inflated[0]["credited"].is_null(),
            "node {i}: {}",
            inflated[0]
        );
        // What it is paid is its uptime since the honest nodes heard it, all of it witnessed.
        let credited: Vec<_> = held.iter().filter(|p| p["status"] == "credited").collect();
        for proof in &credited {
            assert_eq!(proof["proof"]["kind"], "uptime", "node {i}: {proof}");
            let reason = proof["reason"].as_str().unwrap();
            assert!(reason.starts_with("witnessed: "), "node {i}: {proof}");
        }
        let earned: u64 = credited.iter().filter_map(|p| p["credited"].as_u64()).sum();
        let account = &balances(node)[&attacker];
        assert_eq!(account["balance_nano"], earned, "node {i}: {account}");
        // 0.0001 NEURO a minute of uptime, of at most a minute here.
        assert!(earned < 100_000, "node {i}: {earned}");
        // Honest uptime is witnessed by the other trainer, and paid.
        for id in &ids[..2] {
            let paid: u64 = witnessed_uptime(node, id)
                .iter()
                .filter_map(|p| p["credited"].as_u64())
                .sum();
            assert!(paid > 0, "node {i}: {id}'s witnessed uptime paid nothing");
        }
    }

    // Inference earns with its requester's receipt: `neuroshard generate` signs one for the
    // proof of the answer it got and posts it back; node 0 stores the proof with it, credited.
    let token: String = (0..4)
        .map(|_| format!("{:016x}", generate_nonce()))
        .collect();
    let requester_id = Identity::from_token(&token).unwrap().node_id;
    let out = Command::new(BIN)
        .args([
            "generate",
            "--node",
            &honest[0].url(""),
            "--max-new-tokens",
            "8",
        ])
        .args(["--token", &token, "hello"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", combined_output(&out));
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(said.contains("credited"), "{said}");
    let vouched: Vec<Value> = of_kind(&proofs_of(&honest[0], &ids[0]), "inference")
        .into_iter()
        .filter(|p| p["proof"]["receipt"]["node_id"] == requester_id.as_str())
        .cloned()
        .collect();
    assert_eq!(vouched.len(), 1, "{vouched:?}");
    assert_eq!(vouched[0]["status"], "credited", "{}", vouched[0]);
    assert!(vouched[0]["credited"].as_u64() > Some(0), "{}", vouched[0]);
    // A receipt for no waiting request, or one that does not verify, is refused with the reason.
    let (status, generated) = honest[0].post_json(
        "/generate_text",
        &json!({"prompt": "hi", "max_new_tokens": 4}),
    );
    assert_eq!(status, 200, "{generated}");
    let proof: Proof = serde_json::from_value(generated["proof"].clone()).unwrap();
    // Signed over another claim (one token more) than the proof waiting.
    let mut forged = sign_receipt(&fresh_identity(), &proof).unwrap();
    let inflated = Proof {
        tokens: proof.tokens + 1,
        ..proof.clone()
    };
    forged.signature = sign_receipt(&fresh_identity(), &inflated)
        .unwrap()
        .signature;
    let (status, answer) = honest[0].post_json(
        "/api/ponw/receipt",
        &json!({"request_id": generated["request_id"], "receipt": forged}),
    );
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("bad_receipt_signature")),
        "{answer}"
    );
    let receipt = sign_receipt(&fresh_identity(), &proof).unwrap();
    let (status, answer) = honest[0].post_json(
        "/api/ponw/receipt",
        &json!({"request_id": "0123456789abcdef", "receipt": receipt}),
    );
    assert_eq!(
        (status, answer["error"].as_str()),
        (404, Some("unknown_request")),
        "{answer}"
    );

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

    // Each honest ledger recomputes from its events alone: self-declared proofs stay uncredited,
    // uptime is credited by its stored witnesses.
    drop(nodes);
    for i in 0..2 {
        let out = Command::new(BIN)
            .args(["ledger", "verify", "--state-dir"])
            .arg(dir.path().join(format!("n{i}")))
            .output()
            .unwrap();
        assert!(out.status.success(), "node {i}: {}", combined_output(&out));
    }
}
