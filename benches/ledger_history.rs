//! Ledger fold at scale (issue 15): a history of `--events` credited proofs and transfers from 64
//! nodes, `--per-epoch` events per emission epoch (an hour), in the real SQLite store.
//! - inserts in time order: the whole history, 1000 events per transaction (how gossip writes);
//! - open: `LedgerStore::open` on it, which folds from the oldest stored epoch base; and again
//!   without stored bases, which folds the whole history (what every late event cost before the
//!   store kept epoch bases);
//! - inserts at the head: `--late` new events, one per transaction, in the newest epoch;
//! - inserts that sort early: `--late` events, one per transaction, each dated in the epoch before
//!   the newest (a late arrival within the freshness window): each re-folds from that epoch's base;
//! - history sync: the whole history served in ~1 MiB pages (`history_page`) and adopted by an
//!   empty store up to a checkpoint of the newest epoch (`adopt_history`: one SQLite transaction,
//!   every event stored with its status, the fold, both roots checked).
//!
//! Baseline in the same run: Python's sqlite3 inserting the same rows (id, node, time, body) with
//! the same pragmas, 1000 per transaction and one per transaction (benches/ledger_python.py
//! `history`); it folds nothing.
//!
//!   cargo bench --bench ledger_history -- [--events 100000] [--per-epoch 1000] [--late 300]
//!       [--scaled] [--skip-python]

mod common;
#[path = "common/python.rs"]
mod python;
use common::arg;
use python::ledger_python;

use std::io::Write;
use std::time::Instant;

use neuroshard::crypto::Identity;
use neuroshard::ledger::checkpoint::CertificateRecord;
use neuroshard::ledger::proof::{self, proof_id, sign_proof, sign_receipt};
use neuroshard::ledger::rewards::{RewardSchedule, burn_fee, nano};
use neuroshard::ledger::store::{HistoryPage, LedgerStore, verify_store};
use neuroshard::ledger::tx::{self, sign_transaction, tx_id};
use neuroshard::ledger::verify::offer;
use neuroshard::ledger::{
    Nano, Proof, ProofKind, SignedProof, SignedTransaction, Transaction, TxKind,
};
use neuroshard::net::history::PAGE_BYTES;
use rayon::prelude::*;
use serde_json::{Value, json};

const NODES: usize = 64;
const HOUR_MS: u64 = 3_600_000;
/// Unix time of the history's first event: 2026-01-01.
const T0: u64 = 1_767_225_600_000;

enum Event {
    Proof(SignedProof),
    Tx(SignedTransaction),
}

impl Event {
    fn row(&self) -> Value {
        match self {
            Event::Proof(signed) => json!({
                "id": proof_id(&signed.proof).unwrap(),
                "node_id": signed.proof.node_id,
                "timestamp_ms": signed.proof.timestamp_ms,
                "body": serde_json::to_string(signed).unwrap(),
            }),
            Event::Tx(signed) => json!({
                "id": tx_id(&signed.tx).unwrap(),
                "node_id": signed.tx.from,
                "timestamp_ms": signed.tx.timestamp_ms,
                "body": serde_json::to_string(signed).unwrap(),
            }),
        }
    }
}

/// A credited proof: data work with the receiver's receipt, so it folds at once.
fn paid(who: &Identity, receiver: &Identity, nonce: u64, timestamp_ms: u64) -> SignedProof {
    let proof = Proof {
        timestamp_ms,
        nonce,
        work_seconds: 60,
        data_samples: samples(),
        ..Proof::empty(ProofKind::Data)
    };
    let proof = sign_proof(who, proof).unwrap().proof;
    let receipt = sign_receipt(receiver, &proof).unwrap();
    sign_proof(
        who,
        Proof {
            receipt: Some(receipt),
            ..proof
        },
    )
    .unwrap()
}

/// Event `i` of a history that starts at `start_ms`, `step_ms` apart: every 10th a transfer of
/// 0.01 NEURO to the next node (once every node has earned, after the first epoch), the rest
/// credited proofs. `seqs[sender]` is the sender's next sequence number.
fn plan(
    range: std::ops::Range<usize>,
    start_ms: u64,
    step_ms: u64,
    per_epoch: usize,
    seqs: &mut [u64],
) -> Vec<(usize, Option<u64>, u64)> {
    range
        .map(|i| {
            let sender = i % NODES;
            let seq = (i % 10 == 9 && i >= per_epoch).then(|| {
                seqs[sender] += 1;
                seqs[sender]
            });
            (i, seq, start_ms + i as u64 * step_ms)
        })
        .collect()
}

fn sign(nodes: &[Identity], planned: &[(usize, Option<u64>, u64)]) -> Vec<Event> {
    planned
        .par_iter()
        .map(|&(i, seq, timestamp_ms)| {
            let (who, next) = (&nodes[i % NODES], &nodes[(i + 1) % NODES]);
            match seq {
                Some(seq) => {
                    let amount = nano(0.01);
                    let tx = Transaction {
                        kind: TxKind::Transfer,
                        from: String::new(),
                        public_key: String::new(),
                        to: next.node_id.clone(),
                        amount,
                        fee: burn_fee(amount),
                        seq,
                        timestamp_ms,
                        lock_until_ms: 0,
                    };
                    Event::Tx(sign_transaction(who, tx).unwrap())
                }
                None => Event::Proof(paid(who, next, i as u64, timestamp_ms)),
            }
        })
        .collect()
}

/// Samples of every data proof: worth 0.1 NEURO at the default schedule, so an epoch of 1000
/// stays within its emission; with `--scaled` 2 NEURO, so it claims twice its emission and every
/// credit of the open epoch changes with each proof (the fold's costliest path: each insert
/// re-folds the open epoch).
fn samples() -> u64 {
    if std::env::args().any(|a| a == "--scaled") {
        200_000
    } else {
        10_000
    }
}

fn insert(store: &mut LedgerStore, events: &[Event]) {
    let proofs: Vec<(SignedProof, Nano)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Proof(p) => {
                let offered = offer(&p.proof, &RewardSchedule::default()).unwrap();
                Some((p.clone(), offered.reward))
            }
            Event::Tx(_) => None,
        })
        .collect();
    let txs: Vec<SignedTransaction> = events
        .iter()
        .filter_map(|e| match e {
            Event::Tx(t) => Some(t.clone()),
            Event::Proof(_) => None,
        })
        .collect();
    if !proofs.is_empty() {
        store.insert_proofs(&proofs).unwrap();
    }
    if !txs.is_empty() {
        store.insert_transactions(&txs).unwrap();
    }
}

fn per_second(count: usize, start: Instant) -> f64 {
    count as f64 / start.elapsed().as_secs_f64()
}

struct Synced {
    events: usize,
    per_s: f64,
    serve_s: f64,
    adopt_s: f64,
}

/// The store at `path` serves its whole history in pages; an empty store adopts it up to a
/// checkpoint of its newest epoch (unsigned: the store checks roots, the ledger actor signatures).
fn sync_history(path: &std::path::Path, dir: &std::path::Path) -> Synced {
    let served = LedgerStore::open(path, RewardSchedule::default()).unwrap();
    let newest = served.newest_epoch().unwrap();
    let checkpoint = served.checkpoint_of(newest).unwrap();
    let certificate = CertificateRecord::unsigned(&checkpoint);
    let start = Instant::now();
    let mut span = HistoryPage::default();
    let mut after = None;
    loop {
        let page = served
            .history_page(0, newest, after.as_ref(), PAGE_BYTES)
            .unwrap();
        span.proofs.extend(page.proofs);
        span.transactions.extend(page.transactions);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let serve_s = start.elapsed().as_secs_f64();
    let mut joiner =
        LedgerStore::open(&dir.join("joiner.sqlite"), RewardSchedule::default()).unwrap();
    let start = Instant::now();
    joiner
        .adopt_history(0, &certificate, &span.proofs, &span.transactions)
        .unwrap();
    let adopt_s = start.elapsed().as_secs_f64();
    assert_eq!(joiner.balances(), served.balances());
    let events = span.proofs.len() + span.transactions.len();
    Synced {
        events,
        per_s: events as f64 / (serve_s + adopt_s),
        serve_s,
        adopt_s,
    }
}

fn main() {
    let events = arg("--events", 100_000);
    let per_epoch = arg("--per-epoch", 1000).max(1);
    let late = arg("--late", 300);
    let skip_python = std::env::args().any(|a| a == "--skip-python");
    let epochs = events.div_ceil(per_epoch);
    println!(
        "ledger history benchmark: {events} events over {epochs} epochs of 1 h, {NODES} nodes, {late} late inserts"
    );
    let nodes: Vec<Identity> = (1..=NODES)
        .map(|i| Identity::from_token(&format!("{i:064x}")).unwrap())
        .collect();
    let step_ms = HOUR_MS / per_epoch as u64;
    let mut seqs = vec![0u64; NODES];

    let start = Instant::now();
    let history = sign(&nodes, &plan(0..events, T0, step_ms, per_epoch, &mut seqs));
    println!(
        "signed the history in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let end_ms = T0 + events as u64 * step_ms;
    // The late events: at the head (after the history), and dated in the epoch before the
    // newest, between its events (a late gossip arrival).
    let head = sign(
        &nodes,
        &plan(events..events + late, T0, step_ms, per_epoch, &mut seqs),
    );
    let newest_epoch = (end_ms - 1) / HOUR_MS;
    let before_newest_ms = newest_epoch.saturating_sub(1) * HOUR_MS;
    let early: Vec<Event> = (0..late)
        .into_par_iter()
        .map(|k| {
            let timestamp_ms = before_newest_ms + k as u64 * (HOUR_MS / late.max(1) as u64) + 1;
            let (who, receiver) = (&nodes[k % NODES], &nodes[(k + 1) % NODES]);
            Event::Proof(paid(
                who,
                receiver,
                (events + late + k) as u64,
                timestamp_ms,
            ))
        })
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.sqlite");
    let mut store = LedgerStore::open(&path, RewardSchedule::default()).unwrap();
    let start = Instant::now();
    for chunk in history.chunks(1000) {
        insert(&mut store, chunk);
    }
    let sync = per_second(events, start);
    let network = store.network();
    println!(
        "sync    1000 per transaction: {sync:>9.0} events/s ({} proofs, {} transactions, {:.0} NEURO minted)",
        network.proofs,
        network.transactions,
        network.total_minted as f64 / 1e9
    );
    drop(store);

    let start = Instant::now();
    drop(LedgerStore::open(&path, RewardSchedule::default()).unwrap());
    let open_s = start.elapsed().as_secs_f64();
    println!("open    (folds from the oldest stored epoch base): {open_s:.2} s");
    // Without stored bases opening folds the whole history: what every late event cost before
    // the store kept bases.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("DELETE FROM epoch_bases", [])
        .unwrap();
    let start = Instant::now();
    let mut store = LedgerStore::open(&path, RewardSchedule::default()).unwrap();
    let full_s = start.elapsed().as_secs_f64();
    println!(
        "open    (no stored bases: folds the whole history): {full_s:.2} s = {:.2} ms per 1000 events",
        full_s * 1e6 / events as f64
    );

    let start = Instant::now();
    for event in &head {
        insert(&mut store, std::slice::from_ref(event));
    }
    let at_head = per_second(late, start);
    let start = Instant::now();
    for event in &early {
        insert(&mut store, std::slice::from_ref(event));
    }
    let sorting_early = per_second(late, start);
    drop(store);
    // `ledger verify`: every signature and id checked again, every status recomputed, a full fold.
    let start = Instant::now();
    let report = verify_store(
        &path,
        RewardSchedule::default(),
        "bench",
        |p| proof::check_signature(p).is_ok(),
        |t| tx::check_signature(t).is_ok(),
    )
    .unwrap();
    assert!(report.is_ok(), "{report:?}");
    let verify = per_second(events + 2 * late, start);
    println!("insert  1 per transaction  : {at_head:>9.0} events/s (at the head)");
    println!(
        "insert  1 per transaction  : {sorting_early:>9.0} events/s (each dated in the epoch before the newest); a full re-fold would allow {:.1}/s",
        1.0 / full_s
    );
    println!("verify  (ledger verify)    : {verify:>9.0} events/s");
    let synced = sync_history(&path, dir.path());
    println!(
        "sync    (pages + adopt)    : {:>9.0} events/s ({} events: {:.1} s serving pages, {:.1} s adopting)",
        synced.per_s, synced.events, synced.serve_s, synced.adopt_s
    );

    if skip_python {
        return;
    }
    let rows_path = dir.path().join("rows.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&rows_path).unwrap());
    for event in history.iter().chain(&head) {
        serde_json::to_writer(&mut file, &event.row()).unwrap();
        file.write_all(b"\n").unwrap();
    }
    file.flush().unwrap();
    drop(file);
    let report = ledger_python(&["history", rows_path.to_str().unwrap(), &late.to_string()]);
    let Some(py) = report else {
        println!("python baseline unavailable (needs python3)");
        return;
    };
    let f = |k: &str| py[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "python sqlite3, 1000 per transaction: {:>9.0} rows/s -> Rust in time order {:.2}x, history sync {:.2}x (both also fold)",
        f("sync_per_s"),
        sync / f("sync_per_s"),
        synced.per_s / f("sync_per_s")
    );
    println!(
        "python sqlite3, 1 per transaction   : {:>9.0} rows/s -> Rust at the head {:.2}x, sorting early {:.2}x",
        f("insert_per_s"),
        at_head / f("insert_per_s"),
        sorting_early / f("insert_per_s")
    );
}
