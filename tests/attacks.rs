//! Every attack of ../shared/TRUST.md at once, against honest nodes on real processes on
//! 127.0.0.1: one attacker node runs 16 extra identities (NEUROSHARD_FAULT_SYBIL) and every
//! attack switch — a far-ahead round on a NaN θ₀ (HEAL_POISON), forged round verdicts
//! (VERDICT_FORGE), self-declared data and inference claims (CLAIM_INFLATION), withheld deltas
//! (SLOW_BLOB), sign-flipped deltas (BYZANTINE) and forged or replayed proofs (PONW). The honest
//! nodes run the shipped defaults (round rules, deadlines, aggregation), with only the flags a user
//! passes, and must: keep one θ₀ and never heal to the attacker's, learn as well as without the
//! attacker, close every round by quorum keeping every honest delta, credit the attacker nothing,
//! ban no honest peer, and stay within a memory bound. Once in a permissioned network (attacker
//! unadmitted, then admitted with its identities unadmitted), once in an open network where the
//! honest nodes have a reputation.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    BIN, Node, admit, diloco, env_of, fixed_token, network_init, outer_state, start_cluster,
    start_owned, validation_at_round, wait_until,
};

/// The token of Sybil identity `i` of the node whose token is `token`: hex(SHA-256(secret ‖
/// "sybil" ‖ i)), with secret = SHA-256(token), as `crypto::Identity::sybil_token` derives it.
fn sybil_token(token: &str, i: usize) -> String {
    use sha2::{Digest, Sha256};
    let secret = Sha256::digest(token.trim().to_ascii_lowercase().as_bytes());
    let mut hasher = Sha256::new();
    hasher.update(secret);
    hasher.update(b"sybil");
    hasher.update(i.to_string().as_bytes());
    hex::encode(hasher.finalize())
}

/// `neuroshard id --token`.
fn node_id_of(token: &str) -> String {
    let out = Command::new(BIN)
        .args(["id", "--token", token])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn sybil_ids(token: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| node_id_of(&sybil_token(token, i))).collect()
}

/// Honest node memory bound these tests hold (the nano preset needs a few hundred MB).
const MEMORY_BOUND_KIB: u64 = 2 * 1024 * 1024;

fn assert_memory_bounded(what: &str, node: &Node) {
    let memory = node.memory().expect("the node runs");
    eprintln!(
        "{what}: VmRSS {} MiB, VmHWM {} MiB",
        memory.rss_kib / 1024,
        memory.hwm_kib / 1024
    );
    assert!(
        memory.hwm_kib < MEMORY_BOUND_KIB,
        "{what} peaked at {} KiB, bound {MEMORY_BOUND_KIB} KiB",
        memory.hwm_kib
    );
}

#[test]
fn memory_is_read_from_proc_status() {
    let text = "Name:\tneuroshard\nVmPeak:\t  900 kB\nVmHWM:\t  512000 kB\nVmRSS:\t  300000 kB\n";
    assert_eq!(
        common::parse_memory(text),
        Some(common::Memory {
            rss_kib: 300_000,
            hwm_kib: 512_000
        })
    );
    assert_eq!(common::parse_memory("Name:\tx\n"), None);
    let own = common::memory_of(std::process::id()).expect("/proc/self exists on Linux");
    assert!(own.rss_kib > 0 && own.hwm_kib >= own.rss_kib);
}

/// The attack tests each run 5 nodes and an attacker with 16 identities: one at a time, so that
/// 2 cores keep heartbeats on time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Inner steps per round and the rounds watched under attack.
const H: u64 = 20;
const ROUNDS: u64 = 4;
/// The attacker's switches: every attack at once.
const ATTACK: [(&str, &str); 7] = [
    ("NEUROSHARD_FAULT_SYBIL", "16"),
    ("NEUROSHARD_FAULT_HEAL_POISON", "1"),
    ("NEUROSHARD_FAULT_VERDICT_FORGE", "1"),
    ("NEUROSHARD_FAULT_CLAIM_INFLATION", "1"),
    ("NEUROSHARD_FAULT_SLOW_BLOB", "1"),
    ("NEUROSHARD_FAULT_BYZANTINE", "sign_flip"),
    ("NEUROSHARD_FAULT_PONW", "1"),
];
const ATTACKER_TOKEN: usize = 9;

/// Four honest trainers with the shipped round rules: node 0 first, the others seeded with it.
/// `extra(i)`: the flags a user adds (genesis, certificate). Evaluations happen at round starts
/// only, so each round's validation loss is the network θ₀'s.
fn honest_network(dir: &Path, extra: impl Fn(usize) -> Vec<String>) -> Vec<Node> {
    std::fs::create_dir_all(dir).unwrap();
    start_cluster(
        dir,
        4,
        |i| {
            let mut flags = vec![
                "--diloco-steps".to_string(),
                H.to_string(),
                "--token".to_string(),
                fixed_token(i),
            ];
            flags.extend(extra(i));
            flags
        },
        |_| env_of(&[("NEUROSHARD_TRAINING__EVAL_EVERY", "1000")]),
    )
}

/// The attacker, seeded with honest node 0, with every attack switch on.
fn attacker(dir: &Path, seed: &Node, extra: Vec<String>) -> Node {
    let mut flags = vec![
        "--diloco-steps".to_string(),
        H.to_string(),
        "--token".to_string(),
        fixed_token(ATTACKER_TOKEN),
        "--seed-peers".to_string(),
        seed.p2p_addr(),
    ];
    flags.extend(extra);
    start_owned(&dir.join("attacker"), &flags, &env_of(&ATTACK))
}

/// What the honest network did over the watched rounds.
struct Watched {
    /// The validation loss of the network's θ₀ at the start of the last watched round (node 0's
    /// first evaluation in that round).
    val_loss: f64,
}

/// Watches the honest nodes from round `from` until all are past `from + ROUNDS`: every round
/// they close must close by quorum, none may move to the attacker's far-ahead round, and they end
/// on one θ₀.
fn watch(honest: &[Node], others: &[&Node], from: u64) -> Watched {
    let target = from + ROUNDS;
    let mut all: Vec<&Node> = honest.iter().collect();
    all.extend(others);
    // (node, round, reason, rejected node_ids)
    let mut reasons: Vec<(usize, u64, String, Vec<String>)> = Vec::new();
    let mut val_loss = None;
    wait_until(
        &format!("the honest nodes to pass round {target}"),
        Duration::from_secs(240),
        &all,
        || {
            let mut done = true;
            for (i, node) in honest.iter().enumerate() {
                let d = diloco(node);
                let round = d["outer_step_count"].as_u64().unwrap();
                assert!(
                    round < 1000,
                    "honest node {i} moved to the attacker's round: {d}"
                );
                let last = &d["last_round"];
                if let Some(r) = last["round"].as_u64()
                    && r >= from
                    && !reasons.iter().any(|(n, seen, ..)| *n == i && *seen == r)
                {
                    let reason = format!(
                        "{} (rejected: {})",
                        last["reason"].as_str().unwrap(),
                        last["rejected"]
                    );
                    let rejected = last["rejected"].as_array().unwrap();
                    let rejected = rejected.iter().map(|v| v.to_string()).collect();
                    reasons.push((i, r, reason, rejected));
                }
                done &= round > target;
            }
            val_loss = val_loss.or_else(|| validation_at_round(&honest[0], target));
            done && val_loss.is_some()
        },
    );
    let honest_ids: Vec<String> = honest
        .iter()
        .map(|n| n.stats()["node_id"].to_string())
        .collect();
    for (node, round, reason, rejected) in &reasons {
        eprintln!("honest node {node}, round {round}: {reason}");
        assert!(
            reason.contains("(quorum:"),
            "honest node {node} closed round {round} otherwise than by quorum: {reason}"
        );
        // Honest deltas lie within the honest spread: none loses its round's reward.
        assert!(
            !rejected.iter().any(|id| honest_ids.contains(id)),
            "honest node {node} rejected an honest delta in round {round}: {reason}"
        );
    }
    wait_until(
        "the honest nodes to hold one θ₀",
        Duration::from_secs(60),
        &all,
        || {
            let states: BTreeSet<(u64, String)> = honest.iter().map(outer_state).collect();
            states.len() == 1
        },
    );
    Watched {
        val_loss: val_loss.unwrap(),
    }
}

/// The attacker and its identities hold nothing on any honest ledger, no honest peer is banned
/// by another, and every honest node stays within the memory bound.
fn attacker_gained_nothing(honest: &[Node], attacker: &Node) {
    let mut attacker_ids = sybil_ids(&fixed_token(ATTACKER_TOKEN), 16);
    attacker_ids.push(attacker.stats()["node_id"].as_str().unwrap().to_string());
    let honest_peers: BTreeSet<String> = honest.iter().map(Node::peer_id).collect();
    for (i, node) in honest.iter().enumerate() {
        for id in &attacker_ids {
            let account = node.get(&format!("/api/ledger/balance/{id}"));
            assert_eq!(
                account["balance_nano"], 0,
                "honest node {i} credits attacker identity {id}: {account}"
            );
        }
        for peer in node.get("/api/peers")["peers"].as_array().unwrap() {
            if honest_peers.contains(peer["peer_id"].as_str().unwrap()) {
                assert_eq!(peer["banned"], false, "honest node {i} banned {peer}");
            }
        }
        let d = diloco(node);
        eprintln!(
            "honest node {i}: heals {}, last heal {}",
            d["heals"], d["last_heal"]
        );
        assert_memory_bounded(&format!("honest node {i}"), node);
    }
}

/// A permissioned network of 4 admitted trainers: the same attacker (all switches, 16 extra
/// identities) changes nothing whether it is unadmitted or admitted itself (its identities are
/// not): one θ₀, every round by quorum with every honest delta kept (node 0 trains round 0
/// alone before the others are up and heals: its deltas must still be kept), the validation loss
/// within 3% of the network without the attacker, nothing earned, nobody honest banned.
#[test]
fn a_permissioned_network_holds_against_a_sybil_attacker() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (genesis, key) = network_init(&dir.path().join("net"), "holdnet");
    let membership = |token: usize| {
        let file = dir.path().join(format!("cert{token}.json"));
        admit(&genesis, &key, &fixed_token(token), &file);
        file.to_str().unwrap().to_string()
    };
    let certificates: Vec<String> = (0..4).map(membership).collect();
    let member = |i: usize| {
        vec![
            "--genesis".to_string(),
            genesis.clone(),
            "--membership".to_string(),
            certificates[i].clone(),
        ]
    };

    let clean = {
        let honest = honest_network(&dir.path().join("clean"), member);
        watch(&honest, &[], 0).val_loss
    };
    for admitted in [false, true] {
        let case = if admitted { "admitted" } else { "unadmitted" };
        let honest = honest_network(&dir.path().join(case), member);
        let mut flags = vec!["--genesis".to_string(), genesis.clone()];
        if admitted {
            flags.extend(["--membership".to_string(), membership(ATTACKER_TOKEN)]);
        }
        let attacker = attacker(&dir.path().join(case), &honest[0], flags);
        eprintln!("attacker {}", attacker.stats()["node_id"]);
        for (i, node) in honest.iter().enumerate() {
            eprintln!("honest node {i}: {}", node.stats()["node_id"]);
        }
        let attacked = watch(&honest, &[&attacker], 0).val_loss;
        eprintln!("{case} attacker: val_loss {attacked:.4}, clean {clean:.4}");
        assert!(
            (attacked - clean).abs() <= 0.03 * clean,
            "{case} attacker: val_loss {attacked} against {clean} without it"
        );
        attacker_gained_nothing(&honest, &attacker);
    }
}

/// An open network (no genesis) whose 4 honest nodes have kept each other's deltas for a few
/// rounds: the attacker's 16 fresh identities and its own weigh one newcomer's share together, so
/// they can neither move θ₀ nor hold rounds open nor earn.
#[test]
fn an_open_network_holds_against_fresh_identities() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let honest = honest_network(dir.path(), |_| Vec::new());
    // Reputation: three rounds of kept deltas make the honest nodes established to each other.
    let established = 4;
    let nodes: Vec<&Node> = honest.iter().collect();
    wait_until(
        "the honest nodes to establish a reputation",
        Duration::from_secs(120),
        &nodes,
        || {
            honest
                .iter()
                .all(|n| diloco(n)["outer_step_count"].as_u64().unwrap() >= established)
        },
    );
    let attacker = attacker(dir.path(), &honest[0], Vec::new());
    eprintln!("attacker {}", attacker.stats()["node_id"]);
    let from = honest
        .iter()
        .map(|n| diloco(n)["outer_step_count"].as_u64().unwrap())
        .max()
        .unwrap()
        + 1;
    watch(&honest, &[&attacker], from);
    attacker_gained_nothing(&honest, &attacker);
}
