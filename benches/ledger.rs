//! Ledger speed (issue 5): Proof-of-Neural-Work verifications per second on one core and on both
//! (rayon), and ledger inserts per second into the real SQLite store (WAL, synchronous=FULL), one
//! proof per transaction as the LedgerActor writes today and in batches. Baselines measured in the
//! same run: Python's `ecdsa` verifying the same proofs and Python's sqlite3 inserting the same
//! rows with the same pragmas (benches/ledger_python.py).
//!
//!   cargo bench --bench ledger -- [--proofs 4000] [--inserts 1000] [--skip-python]

mod common;
#[path = "common/python.rs"]
mod python;
use common::arg;
use python::ledger_python;

use std::time::Instant;

use neuroshard::crypto::Identity;
use neuroshard::ledger::proof::{check_signature, sign_proof};
use neuroshard::ledger::rewards::RewardSchedule;
use neuroshard::ledger::store::LedgerStore;
use neuroshard::ledger::{Proof, ProofKind, SignedProof};
use neuroshard::net::wire::unix_ms;
use rayon::prelude::*;

/// `count` signed proofs from 8 nodes: uptime and training, as a network gossips them.
fn proofs(count: usize) -> Vec<SignedProof> {
    let nodes: Vec<Identity> = (1..=8)
        .map(|i| Identity::from_token(&format!("{i:064x}")).unwrap())
        .collect();
    let now = unix_ms();
    (0..count)
        .map(|i| {
            let kind = if i % 4 == 0 {
                ProofKind::Training
            } else {
                ProofKind::Uptime
            };
            let mut proof = Proof {
                timestamp_ms: now - (count - i) as u64,
                nonce: i as u64,
                work_seconds: 60,
                ..Proof::empty(kind)
            };
            if kind == ProofKind::Training {
                proof.batches = 500;
                proof.outer_round = i as u64;
                proof.delta_hash = format!("{:064x}", i + 1);
                proof.model_hash_before = format!("{:064x}", i + 2);
            } else {
                proof.uptime_seconds = 60;
            }
            sign_proof(&nodes[i % nodes.len()], proof).unwrap()
        })
        .collect()
}

fn per_second(count: usize, start: Instant) -> f64 {
    count as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let (n_proofs, n_inserts) = (arg("--proofs", 4000), arg("--inserts", 1000));
    let skip_python = std::env::args().any(|a| a == "--skip-python");
    let threads = rayon::current_num_threads();
    println!("ledger benchmark: {n_proofs} proofs, {n_inserts} inserts, {threads} threads");
    let signed = proofs(n_proofs);

    let start = Instant::now();
    assert!(signed.iter().all(|p| check_signature(p).is_ok()));
    let one_core = per_second(n_proofs, start);
    let start = Instant::now();
    assert!(signed.par_iter().all(|p| check_signature(p).is_ok()));
    let all_cores = per_second(n_proofs, start);
    println!("verify  1 core : {one_core:>9.0} proofs/s");
    println!("verify  {threads} cores: {all_cores:>9.0} proofs/s");

    let dir = tempfile::tempdir().unwrap();
    let rows = &signed[..n_inserts.min(signed.len())];
    let mut store =
        LedgerStore::open(&dir.path().join("one.sqlite"), RewardSchedule::default()).unwrap();
    let start = Instant::now();
    for proof in rows {
        store.insert_proofs(&[(proof.clone(), 1000)]).unwrap();
    }
    let single = per_second(rows.len(), start);
    let mut store =
        LedgerStore::open(&dir.path().join("batch.sqlite"), RewardSchedule::default()).unwrap();
    let batch: Vec<_> = rows.iter().map(|p| (p.clone(), 1000)).collect();
    let start = Instant::now();
    for chunk in batch.chunks(100) {
        store.insert_proofs(chunk).unwrap();
    }
    let batched = per_second(rows.len(), start);
    // Newest first: every proof sorts before the ones stored, so each insert re-folds them all
    // (what out-of-order gossip costs).
    let mut store =
        LedgerStore::open(&dir.path().join("late.sqlite"), RewardSchedule::default()).unwrap();
    let start = Instant::now();
    for proof in rows.iter().rev() {
        store.insert_proofs(&[(proof.clone(), 1000)]).unwrap();
    }
    let late = per_second(rows.len(), start);
    println!("insert  1 per transaction  : {single:>9.0} proofs/s (in time order)");
    println!("insert  100 per transaction: {batched:>9.0} proofs/s (in time order)");
    println!(
        "insert  1 per transaction  : {late:>9.0} proofs/s (each sorting first: full re-fold)"
    );

    if skip_python {
        return;
    }
    let file = dir.path().join("proofs.json");
    std::fs::write(&file, serde_json::to_vec(&signed).unwrap()).unwrap();
    let report = ledger_python(&[file.to_str().unwrap(), &n_inserts.to_string()]);
    let Some(py) = report else {
        println!("python baseline unavailable (needs python3 with `pip install ecdsa`)");
        return;
    };
    let f = |k: &str| py[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "python ecdsa verify (1 core): {:>9.0} proofs/s  -> Rust 1 core {:.0}x, {threads} cores {:.0}x",
        f("verify_per_s"),
        one_core / f("verify_per_s"),
        all_cores / f("verify_per_s")
    );
    println!(
        "python sqlite3 insert, 1 per transaction: {:>9.0} rows/s -> Rust store {:.2}x (it also folds balances)",
        f("insert_per_s"),
        single / f("insert_per_s")
    );
}
