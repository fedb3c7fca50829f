//! Signs proofs and transactions here and has tests/python/ponw_crosscheck.py, an independent
//! Python implementation (hashlib + the `ecdsa` package), re-encode and verify them and derive the
//! node ids the way the Python original does — for proofs signed here and for what a running
//! node signs.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Node, combined_output, python_script, require_tool};
use serde_json::json;

use neuroshard::crypto::Identity;
use neuroshard::ledger::proof::{proof_id, sign_proof, sign_receipt};
use neuroshard::ledger::rewards::{RewardSchedule, burn_fee};
use neuroshard::ledger::tx::{check_transaction, sign_transaction, tx_id};
use neuroshard::ledger::verify::{ProofHistory, ProofLimits, verify_proof};
use neuroshard::ledger::{Proof, ProofKind, Transaction, TxKind};
use sha2::{Digest, Sha256};

// The known answers of src/crypto.rs's tests (computed there with the Python original's formula).
const TOKEN: &str = "c7bcca42c5583383e4933fac637e10e9504b8e67346e87b1702e97fe0d1794ec";
const TOKEN_NODE_ID: &str = "f99a98e479263f0a28a91c4809fe5910";
const MNEMONIC: &str =
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";
const MNEMONIC_NODE_ID: &str = "d72992fd962a53bbab62f8710b11e0f7";
const NOW_MS: u64 = 1_754_000_000_123;

fn proof(kind: ProofKind) -> Proof {
    Proof {
        timestamp_ms: NOW_MS,
        nonce: 1,
        work_seconds: 60,
        ..Proof::empty(kind)
    }
}

fn proofs() -> Vec<Proof> {
    let training = Proof {
        nonce: 17,
        epoch: 3,
        outer_round: 12,
        work_seconds: 240,
        uptime_seconds: 120,
        tokens: 491_520,
        batches: 500,
        data_samples: 4000,
        model_hash_before: hex::encode([0xa5; 32]),
        model_hash_after: hex::encode([0x5a; 32]),
        delta_hash: hex::encode(Sha256::digest(b"a pseudo-gradient")),
        // Not exactly representable in decimal: checks the f32 survives JSON both ways.
        loss: 4.187_3,
        ..proof(ProofKind::Training)
    };
    let uptime = Proof {
        // Above i64::MAX: checks both sides read the full u64 range.
        nonce: u64::MAX - 1,
        uptime_seconds: 60,
        ..proof(ProofKind::Uptime)
    };
    let inference = Proof {
        nonce: 18,
        work_seconds: 3,
        tokens: 256,
        request_id: "req-ü-42".into(), // multi-byte UTF-8
        ..proof(ProofKind::Inference)
    };
    vec![training, uptime, inference]
}

/// Proofs that the mnemonic's identity receipts.
fn receipted_proofs() -> Vec<Proof> {
    let data = Proof {
        nonce: 19,
        work_seconds: 600,
        data_samples: 10_000_000,
        ..proof(ProofKind::Data)
    };
    let inference = Proof {
        nonce: 20,
        work_seconds: 60,
        tokens: 1_000_000,
        request_id: "req-receipted".into(),
        ..proof(ProofKind::Inference)
    };
    vec![data, inference]
}

fn transactions(recipient: &str) -> Vec<Transaction> {
    let amount = 12_345_678_901;
    let transfer = Transaction {
        kind: TxKind::Transfer,
        from: String::new(),
        public_key: String::new(),
        to: recipient.into(),
        amount,
        fee: burn_fee(amount),
        seq: 1,
        timestamp_ms: NOW_MS,
        lock_until_ms: 0,
    };
    let stake = Transaction {
        kind: TxKind::Stake,
        to: String::new(),
        fee: 0,
        seq: 2,
        lock_until_ms: NOW_MS + 30 * 86_400_000,
        ..transfer.clone()
    };
    vec![transfer, stake]
}

/// Fails (never skips) without Python and `ecdsa`: the check is what guards the encoding spec.
fn require_python_with_ecdsa() {
    require_tool(
        Command::new("python3").args(["-c", "import ecdsa"]),
        "python3 with ecdsa",
        "pip install ecdsa",
    );
}

#[test]
fn python_re_encodes_and_verifies_what_rust_signs() {
    require_python_with_ecdsa();
    let identity = Identity::from_token(TOKEN).unwrap();
    let mnemonic_identity = Identity::from_token(MNEMONIC).unwrap();
    assert_eq!(identity.node_id, TOKEN_NODE_ID);
    assert_eq!(mnemonic_identity.node_id, MNEMONIC_NODE_ID);

    let (limits, schedule) = (ProofLimits::default(), RewardSchedule::default());
    let mut signed_proofs: Vec<_> = proofs()
        .into_iter()
        .map(|proof| sign_proof(&identity, proof).unwrap())
        .collect();
    // Data and inference proofs with the receipt of their receiver (the mnemonic's key).
    for proof in receipted_proofs() {
        let mut proof = sign_proof(&identity, proof).unwrap().proof;
        proof.receipt = Some(sign_receipt(&mnemonic_identity, &proof).unwrap());
        signed_proofs.push(sign_proof(&identity, proof).unwrap());
    }
    for signed in &signed_proofs {
        let offer = verify_proof(NOW_MS, signed, &ProofHistory::default(), &limits, &schedule);
        let offer = offer.unwrap_or_else(|e| panic!("{:?}: {e}", signed.proof.kind));
        // Receipted work is paid; the inference proof without a receipt is self-declared.
        let self_declared =
            signed.proof.kind == ProofKind::Inference && signed.proof.receipt.is_none();
        assert_eq!(
            offer.unpaid.is_some(),
            self_declared,
            "{signed:?}: {offer:?}"
        );
    }
    let signed_transactions: Vec<_> = transactions(&mnemonic_identity.node_id)
        .into_iter()
        .map(|tx| sign_transaction(&identity, tx).unwrap())
        .collect();
    for signed in &signed_transactions {
        assert_eq!(check_transaction(NOW_MS, signed, &limits), Ok(()));
    }

    let document = serde_json::json!({
        "token": TOKEN,
        "mnemonic": MNEMONIC,
        "node_id_of_token": identity.node_id,
        "node_id_of_mnemonic": mnemonic_identity.node_id,
        "proofs": signed_proofs,
        "transactions": signed_transactions,
        "proof_ids": signed_proofs.iter().map(|s| proof_id(&s.proof).unwrap()).collect::<Vec<_>>(),
        "tx_ids": signed_transactions.iter().map(|s| tx_id(&s.tx).unwrap()).collect::<Vec<_>>(),
    });
    run_python_check(&document);
}

/// Runs the independent Python check on `document`; fails with its report unless it passes.
fn run_python_check(document: &serde_json::Value) {
    let file = tempfile::NamedTempFile::new().unwrap();
    serde_json::to_writer_pretty(&file, document).unwrap();
    let script = python_script("ponw_crosscheck.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(file.path())
        .output()
        .unwrap();
    let report = combined_output(&output);
    assert!(
        output.status.success(),
        "{} failed ({}):\n{report}",
        script.display(),
        output.status
    );
    println!("{report}");
}

/// What a running node signs — its uptime, training and inference proofs, a transfer and a stake
/// made through the API — verifies in Python, and `neuroshard id` derives the original's node ids.
#[test]
fn python_verifies_what_a_running_node_signs() {
    require_python_with_ecdsa();
    let dir = tempfile::tempdir().unwrap();
    let key = "test-api-key-0123456789";
    let node = Node::start(
        &dir.path().join("n"),
        &["--token", TOKEN, "--diloco-steps", "10"],
        &[
            ("NEUROSHARD_LEDGER__UPTIME_INTERVAL_S", "1"),
            ("NEUROSHARD_LEDGER__LIMITS__MAX_PROOFS_PER_HOUR", "100000"),
            ("NEUROSHARD_API_KEY", key),
        ],
    );
    let (status, generated) = node.post_json(
        "/generate_text",
        &json!({"prompt": "hello", "max_new_tokens": 8}),
    );
    assert_eq!(status, 200, "{generated}");
    let path = format!("/api/ledger/proofs/{TOKEN_NODE_ID}?limit=1000");
    let mut listed = Vec::new();
    node.wait_for(
        "uptime, training and inference proofs",
        Duration::from_secs(60),
        |n| {
            listed = n.get(&path)["proofs"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            // The inference proof carries no receipt and a lone node's uptime has no witness,
            // so neither earns: training pays for the transfer and the stake below (3,100
            // nano-NEURO).
            ["uptime", "training", "inference"]
                .iter()
                .all(|kind| listed.iter().any(|p| p["proof"]["kind"] == *kind))
                && n.get("/api/neuro")["balance_nano"].as_u64() >= Some(4000)
        },
    );
    let mut transactions = Vec::new();
    for (endpoint, body) in [
        (
            "/api/wallet/send",
            json!({"to": MNEMONIC_NODE_ID, "amount": 0.000002}),
        ),
        (
            "/api/stake",
            json!({"amount": 0.000001, "duration_days": 1}),
        ),
    ] {
        let (status, answer) = node.post_with_key(endpoint, key, &body);
        assert_eq!(status, 200, "{endpoint}: {answer}");
        assert_eq!(answer["status"], "applied", "{answer}");
        transactions.push(answer["transaction"].clone());
    }
    let node_id_of = |token: &str| {
        let out = Command::new(common::BIN)
            .args(["id", "--token", token])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let proofs: Vec<_> = listed.iter().map(|p| p["proof"].clone()).collect();
    run_python_check(&json!({
        "token": TOKEN,
        "mnemonic": MNEMONIC,
        "node_id_of_token": node_id_of(TOKEN),
        "node_id_of_mnemonic": node_id_of(MNEMONIC),
        "proofs": proofs,
        "proof_ids": listed.iter().map(|p| p["id"].clone()).collect::<Vec<_>>(),
        "transactions": transactions,
    }));
}
