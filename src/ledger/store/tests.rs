use super::*;
use crate::crypto::Identity;
use crate::ledger::Proof;
use crate::ledger::checkpoint::{
    CertificateRecord, Checkpoint, CheckpointContext, Validator, ValidatorSet,
};
use crate::ledger::proof::{check_signature, sign_proof, sign_receipt};
use crate::ledger::rewards::{burn_fee, nano};
use crate::ledger::state::replay;
use crate::ledger::state::tests::SplitMix;
use crate::ledger::store::HistoryPage;
use crate::ledger::tx::{check_transaction, sign_transaction};
use crate::ledger::verify::ProofLimits;

const T0: u64 = 1_700_000_000_000;

fn identity(n: u64) -> Identity {
    Identity::from_token(&format!("{n:064x}")).unwrap()
}

fn blank(kind: ProofKind, nonce: u64, timestamp_ms: u64) -> Proof {
    Proof {
        timestamp_ms,
        nonce,
        work_seconds: 60,
        uptime_seconds: 60,
        ..Proof::empty(kind)
    }
}

/// An uptime proof: pending until witnesses of enough weight settle it.
fn uptime(who: &Identity, nonce: u64, timestamp_ms: u64) -> SignedProof {
    sign_proof(who, blank(ProofKind::Uptime, nonce, timestamp_ms)).unwrap()
}

/// A proof credited on arrival: a data proof with its receiver's receipt.
fn paid(who: &Identity, nonce: u64, timestamp_ms: u64) -> SignedProof {
    let proof = sign_proof(who, blank(ProofKind::Data, nonce, timestamp_ms))
        .unwrap()
        .proof;
    let receipt = sign_receipt(&identity(999), &proof).unwrap();
    sign_proof(
        who,
        Proof {
            receipt: Some(receipt),
            ..proof
        },
    )
    .unwrap()
}

fn delta_hash(byte: u8) -> String {
    hex::encode([byte; 32])
}

fn training(who: &Identity, nonce: u64, round: u64, delta: u8) -> SignedProof {
    let mut proof = blank(ProofKind::Training, nonce, T0 + nonce);
    proof.outer_round = round;
    proof.batches = 10;
    proof.delta_hash = delta_hash(delta);
    sign_proof(who, proof).unwrap()
}

fn transaction(kind: TxKind, seq: u64, timestamp_ms: u64, amount: Nano) -> Transaction {
    Transaction {
        kind,
        from: String::new(),
        public_key: String::new(),
        to: String::new(),
        amount,
        fee: if kind == TxKind::Transfer {
            burn_fee(amount)
        } else {
            0
        },
        seq,
        timestamp_ms,
        lock_until_ms: 0,
    }
}

fn transfer(
    from: &Identity,
    to: &Identity,
    seq: u64,
    timestamp_ms: u64,
    amount: Nano,
) -> SignedTransaction {
    let tx = Transaction {
        to: to.node_id.clone(),
        ..transaction(TxKind::Transfer, seq, timestamp_ms, amount)
    };
    sign_transaction(from, tx).unwrap()
}

fn stake(from: &Identity, seq: u64, timestamp_ms: u64, amount: Nano) -> SignedTransaction {
    let tx = Transaction {
        lock_until_ms: timestamp_ms + 2 * 86_400_000,
        ..transaction(TxKind::Stake, seq, timestamp_ms, amount)
    };
    sign_transaction(from, tx).unwrap()
}

fn path_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("ledger.db")
}

fn open(dir: &tempfile::TempDir) -> LedgerStore {
    open_with(dir, RewardSchedule::default())
}

fn open_with(dir: &tempfile::TempDir, schedule: RewardSchedule) -> LedgerStore {
    LedgerStore::open(&path_in(dir), schedule).unwrap()
}

fn raw(dir: &tempfile::TempDir) -> Connection {
    Connection::open(path_in(dir)).unwrap()
}

fn tx_status(store: &LedgerStore, signed: &SignedTransaction) -> (String, Option<String>) {
    let id = tx_id(&signed.tx).unwrap();
    store
        .conn
        .query_row(
            "SELECT status, reason FROM transactions WHERE id = ?1",
            [id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap()
}

fn verify(dir: &tempfile::TempDir) -> VerifyReport {
    verify_with(dir, RewardSchedule::default())
}

fn verify_with(dir: &tempfile::TempDir, schedule: RewardSchedule) -> VerifyReport {
    verify_store(
        &path_in(dir),
        schedule,
        "test",
        |proof| check_signature(proof).is_ok(),
        |signed| {
            // Freshness is judged at the transaction's own time: stored events are old.
            check_transaction(signed.tx.timestamp_ms, signed, &ProofLimits::default()).is_ok()
        },
    )
    .unwrap()
}

/// The fold of these events from scratch, every proof credited.
fn replayed(proofs: &[(SignedProof, Nano)], txs: &[SignedTransaction]) -> (LedgerState, usize) {
    replayed_with(&RewardSchedule::default(), proofs, txs)
}

fn replayed_with(
    schedule: &RewardSchedule,
    proofs: &[(SignedProof, Nano)],
    txs: &[SignedTransaction],
) -> (LedgerState, usize) {
    let proof_ids: Vec<String> = proofs
        .iter()
        .map(|(p, _)| proof_id(&p.proof).unwrap())
        .collect();
    let tx_ids: Vec<String> = txs.iter().map(|t| tx_id(&t.tx).unwrap()).collect();
    let mut events: Vec<Event<'_>> = proofs
        .iter()
        .zip(&proof_ids)
        .map(|((signed, base_reward), id)| Event::Proof {
            id,
            node_id: &signed.proof.node_id,
            timestamp_ms: signed.proof.timestamp_ms,
            base_reward: *base_reward,
            credited: true,
        })
        .chain(
            txs.iter()
                .zip(&tx_ids)
                .map(|(signed, id)| Event::Tx { id, tx: &signed.tx }),
        )
        .collect();
    let (state, rejected) = replay(&mut events, schedule);
    (state, rejected.len())
}

/// The stored balances table agrees with the in-memory fold.
fn assert_mirrored(store: &LedgerStore) {
    let stored = read_stored_balances(&store.conn).unwrap();
    assert_eq!(compare_balances(&store.state, &stored), vec![]);
}

#[test]
fn a_new_database_is_migrated_and_reopening_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (identity(1), identity(2));
    let send = transfer(&alice, &bob, 1, T0 + 30, nano(1.0));
    {
        let mut store = open(&dir);
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version as usize, SCHEMA_VERSION);
        let mode: String = store
            .conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let outcomes = store
            .insert_proofs(&[
                (paid(&alice, 1, T0 + 10), nano(2.0)),
                (paid(&alice, 2, T0 + 20), nano(0.5)),
            ])
            .unwrap();
        assert_eq!(
            outcomes,
            vec![InsertOutcome::Stored(ProofStatus::Credited); 2]
        );
        assert_eq!(
            store
                .insert_transactions(std::slice::from_ref(&send))
                .unwrap(),
            vec![TxInsertOutcome::Applied]
        );
        store.count_rejection("stale");
        store.save_rejections().unwrap();
    }
    let store = open(&dir);
    let account = store.account(&alice.node_id);
    assert_eq!(account.balance, nano(2.5) - nano(1.05));
    assert_eq!((account.proof_count, account.last_seq), (2, 1));
    assert_eq!(store.account(&bob.node_id).balance, nano(1.0));
    assert_eq!(
        store.network(),
        NetworkTotals {
            total_minted: nano(2.5),
            total_burned: nano(0.05),
            circulating_supply: nano(2.45),
            accounts: 2,
            proofs: 2,
            transactions: 1,
        }
    );
    assert_eq!(
        store.rejections(),
        BTreeMap::from([("stale".to_owned(), 1)])
    );
    assert_eq!(store.proofs_of(&alice.node_id, 10).unwrap().len(), 2);
    assert_eq!(tx_status(&store, &send), ("applied".into(), None));
    assert_eq!(store.account("unknown"), Account::default());
    assert_mirrored(&store);
}

#[test]
fn inserting_the_same_events_again_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (identity(1), identity(2));
    let mut store = open(&dir);
    let proofs = [
        (paid(&alice, 1, T0), nano(3.0)),
        (paid(&alice, 2, T0 + 1), nano(1.0)),
    ];
    let send = transfer(&alice, &bob, 1, T0 + 2, nano(1.0));
    store.insert_proofs(&proofs).unwrap();
    store
        .insert_transactions(std::slice::from_ref(&send))
        .unwrap();
    let (balances, network) = (store.balances(), store.network());

    assert_eq!(
        store.insert_proofs(&proofs).unwrap(),
        vec![InsertOutcome::Duplicate; 2]
    );
    assert_eq!(
        store
            .insert_transactions(std::slice::from_ref(&send))
            .unwrap(),
        vec![TxInsertOutcome::Duplicate]
    );
    // The same proof twice in one batch is stored once.
    let third = (paid(&alice, 3, T0 + 3), nano(1.0));
    assert_eq!(
        store.insert_proofs(&[third.clone(), third]).unwrap(),
        vec![
            InsertOutcome::Stored(ProofStatus::Credited),
            InsertOutcome::Duplicate
        ]
    );
    assert_eq!(store.network().proofs, 3);
    assert_eq!(store.network().transactions, network.transactions);
    assert_eq!(
        store.account(&alice.node_id).balance,
        balances[&alice.node_id].balance + nano(1.0)
    );
    assert_mirrored(&store);
}

#[test]
fn a_used_nonce_is_a_replay_and_history_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (identity(1), identity(2));
    let mut store = open(&dir);
    store
        .insert_proofs(&[(uptime(&alice, 7, T0), nano(1.0))])
        .unwrap();
    // A different proof (another timestamp, so another id) with the same nonce.
    assert_eq!(
        store
            .insert_proofs(&[(uptime(&alice, 7, T0 + 5), nano(1.0))])
            .unwrap(),
        vec![InsertOutcome::Replay]
    );
    // Another node may use the same nonce; uptime waits for its witnesses.
    assert_eq!(
        store
            .insert_proofs(&[(uptime(&bob, 7, T0), nano(1.0))])
            .unwrap(),
        vec![InsertOutcome::Stored(ProofStatus::Pending)]
    );
    assert_eq!(store.proofs_of(&alice.node_id, 10).unwrap().len(), 1);

    let older = paid(&alice, 8, T0 - 2 * HOUR_MS);
    store
        .insert_proofs(&[(older, 0), (training(&alice, 9, 1, 1), 0)])
        .unwrap();
    let history = store
        .history(&alice.node_id, 7, T0 + 60_000, u64::MAX)
        .unwrap();
    assert_eq!(
        history,
        ProofHistory {
            nonce_used: true,
            // The uptime and training proofs; the data proof is two hours old.
            proofs_last_hour: 2,
            last_uptime_ms: Some(T0),
        }
    );
    // A late-arriving uptime proof is compared with the uptime proof before it.
    let late = store.history(&alice.node_id, 11, T0 + 60_000, T0).unwrap();
    assert_eq!(late.last_uptime_ms, None);
    let fresh = store.history(&alice.node_id, 10, T0, u64::MAX).unwrap();
    assert!(!fresh.nonce_used);
    // Nonces above i64::MAX survive SQLite's signed integers.
    store
        .insert_proofs(&[(paid(&bob, u64::MAX, T0 + 1), nano(1.0))])
        .unwrap();
    assert!(
        store
            .history(&bob.node_id, u64::MAX, T0, u64::MAX)
            .unwrap()
            .nonce_used
    );
    assert!(
        !store
            .history(&bob.node_id, u64::MAX - 1, T0, u64::MAX)
            .unwrap()
            .nonce_used
    );
    assert_eq!(
        store
            .insert_proofs(&[(paid(&bob, u64::MAX, T0 + 2), nano(1.0))])
            .unwrap(),
        vec![InsertOutcome::Replay]
    );
    assert_eq!(
        store.history("nobody", 7, T0, u64::MAX).unwrap(),
        ProofHistory::default()
    );
}

/// One event reaching a node.
enum Arrival<'a> {
    Proof(&'a (SignedProof, Nano)),
    Tx(&'a SignedTransaction),
}

impl Arrival<'_> {
    fn timestamp_ms(&self) -> u64 {
        match self {
            Arrival::Proof((signed, _)) => signed.proof.timestamp_ms,
            Arrival::Tx(signed) => signed.tx.timestamp_ms,
        }
    }
}

#[test]
fn out_of_order_insertion_gives_the_balances_of_in_order_insertion() {
    out_of_order_insertion_matches_the_replay(RewardSchedule::default());
}

/// The same with epochs of 4 s whose emission (3 NEURO) is below what their proofs claim, so
/// every epoch is scaled and arrivals land in the open epoch, a later one and earlier ones.
#[test]
fn out_of_order_insertion_with_scaled_epochs_gives_the_replayed_balances() {
    let schedule = RewardSchedule {
        epoch_s: 4,
        emission_per_epoch: 3.0,
        ..RewardSchedule::default()
    };
    // T0 starts an epoch: four proofs (about 4 NEURO) per epoch.
    assert_eq!(schedule.epoch_start_ms(schedule.epoch_of(T0)), T0);
    out_of_order_insertion_matches_the_replay(schedule);
}

fn out_of_order_insertion_matches_the_replay(schedule: RewardSchedule) {
    let nodes = [identity(1), identity(2), identity(3)];
    let mut proofs = Vec::new();
    for i in 0..18u64 {
        let who = &nodes[(i % 3) as usize];
        proofs.push((paid(who, i, T0 + i * 1000), nano(1.0) + i * 7_654_321));
    }
    let txs = vec![
        // Before any proof of node 1: refused in order, and out of order alike.
        transfer(&nodes[1], &nodes[0], 1, T0 + 500, nano(0.5)),
        transfer(&nodes[0], &nodes[1], 1, T0 + 3_500, nano(1.5)),
        // A double spend: the earlier of the two applies.
        transfer(&nodes[0], &nodes[2], 2, T0 + 6_500, nano(0.5)),
        transfer(&nodes[0], &nodes[1], 2, T0 + 6_600, nano(0.6)),
        // Staking changes what node 2's proofs of later epochs are credited.
        stake(&nodes[2], 1, T0 + 2_500, nano(0.5)),
        transfer(&nodes[1], &nodes[2], 1, T0 + 12_500, nano(2.0)),
        transfer(&nodes[2], &nodes[0], 2, T0 + 16_500, nano(50.0)),
    ];
    let (expected, rejected) = replayed_with(&schedule, &proofs, &txs);
    assert!(
        rejected >= 3,
        "the set must exercise refusals, got {rejected}"
    );
    assert!(expected.account(&nodes[2].node_id).unwrap().stake > 0);

    let ordered_dir = tempfile::tempdir().unwrap();
    let mut ordered = open_with(&ordered_dir, schedule.clone());
    let mut timeline: Vec<Arrival<'_>> = proofs
        .iter()
        .map(Arrival::Proof)
        .chain(txs.iter().map(Arrival::Tx))
        .collect();
    timeline.sort_by_key(Arrival::timestamp_ms);
    for arrival in &timeline {
        match arrival {
            Arrival::Proof(proof) => {
                ordered.insert_proofs(std::slice::from_ref(*proof)).unwrap();
            }
            Arrival::Tx(tx) => {
                ordered
                    .insert_transactions(std::slice::from_ref(*tx))
                    .unwrap();
            }
        }
    }
    assert_eq!(ordered.state, expected);
    assert_mirrored(&ordered);

    let mut rng = SplitMix(11);
    for round in 0..8 {
        let dir = tempfile::tempdir().unwrap();
        let mut shuffled = open_with(&dir, schedule.clone());
        rng.shuffle(&mut timeline);
        for chunk in timeline.chunks(3) {
            let batch_proofs: Vec<_> = chunk
                .iter()
                .filter_map(|arrival| match arrival {
                    Arrival::Proof(proof) => Some((*proof).clone()),
                    Arrival::Tx(_) => None,
                })
                .collect();
            let batch_txs: Vec<_> = chunk
                .iter()
                .filter_map(|arrival| match arrival {
                    Arrival::Tx(tx) => Some((*tx).clone()),
                    Arrival::Proof(_) => None,
                })
                .collect();
            shuffled.insert_transactions(&batch_txs).unwrap();
            shuffled.insert_proofs(&batch_proofs).unwrap();
        }
        assert_eq!(shuffled.state, expected, "shuffle {round}");
        // Every kept base is the state of the events before its epoch, whatever the arrivals.
        assert!(!shuffled.bases.is_empty());
        for (&epoch, base) in &shuffled.bases {
            let start = schedule.epoch_start_ms(epoch);
            let proofs_before: Vec<_> = proofs
                .iter()
                .filter(|(p, _)| p.proof.timestamp_ms < start)
                .cloned()
                .collect();
            let txs_before: Vec<_> = txs
                .iter()
                .filter(|t| t.tx.timestamp_ms < start)
                .cloned()
                .collect();
            let (before, _) = replayed_with(&schedule, &proofs_before, &txs_before);
            assert_eq!(base, &before, "shuffle {round}, base of epoch {epoch}");
        }
        assert_eq!(shuffled.balances(), ordered.balances());
        assert_eq!(shuffled.network(), ordered.network());
        for tx in &txs {
            assert_eq!(tx_status(&shuffled, tx), tx_status(&ordered, tx));
        }
        assert_mirrored(&shuffled);
        let head = shuffled.head.clone();
        drop(shuffled);
        // Reopening folds everything from the start: the same state and newest epoch's head.
        let reopened = open_with(&dir, schedule.clone());
        assert_eq!(reopened.state, expected);
        assert_eq!(reopened.head, head);
        assert_eq!(reopened.head, ordered.head);
        let report = verify_with(&dir, schedule.clone());
        assert!(report.is_ok(), "{report:?}");
    }
    assert!(verify_with(&ordered_dir, schedule).is_ok());
}

#[test]
fn training_proofs_wait_for_the_verdict_on_their_delta() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (identity(1), identity(2));
    let mut store = open(&dir);
    let kept = training(&alice, 1, 5, 0xaa);
    let dropped = training(&alice, 2, 5, 0xbb);
    let outcomes = store
        .insert_proofs(&[(kept.clone(), nano(2.0)), (dropped.clone(), nano(3.0))])
        .unwrap();
    assert_eq!(
        outcomes,
        vec![InsertOutcome::Stored(ProofStatus::Pending); 2]
    );
    assert_eq!(store.account(&alice.node_id), Account::default());
    assert_eq!(store.network().total_minted, 0);

    let settled = store
        .record_verdicts(
            5,
            &[
                (delta_hash(0xaa), alice.node_id.clone(), true, "kept".into()),
                (
                    delta_hash(0xbb),
                    alice.node_id.clone(),
                    false,
                    "outlier: norm 40x the median".into(),
                ),
            ],
        )
        .unwrap();
    assert_eq!(
        settled,
        vec![
            (proof_id(&kept.proof).unwrap(), ProofStatus::Credited),
            (proof_id(&dropped.proof).unwrap(), ProofStatus::Rejected),
        ]
    );
    let account = store.account(&alice.node_id);
    assert_eq!((account.balance, account.proof_count), (nano(2.0), 1));
    let listed = store.proofs_of(&alice.node_id, 10).unwrap();
    let rejected = listed.iter().find(|p| p.proof == dropped).unwrap();
    assert_eq!(rejected.status, ProofStatus::Rejected);
    assert_eq!(
        rejected.reason.as_deref(),
        Some("delta_rejected: outlier: norm 40x the median")
    );
    assert_eq!(rejected.credited, None);
    let credited = listed.iter().find(|p| p.proof == kept).unwrap();
    assert_eq!(
        (credited.status, credited.credited),
        (ProofStatus::Credited, Some(nano(2.0)))
    );

    // A repeated verdict is ignored: the first stands.
    let again = store
        .record_verdicts(
            5,
            &[(delta_hash(0xbb), alice.node_id.clone(), true, "kept".into())],
        )
        .unwrap();
    assert!(again.is_empty());
    assert_eq!(store.account(&alice.node_id).balance, nano(2.0));

    // A verdict that arrived first settles the proof when it is stored.
    store
        .record_verdicts(
            6,
            &[(delta_hash(0xcc), alice.node_id.clone(), true, "kept".into())],
        )
        .unwrap();
    assert_eq!(
        store
            .insert_proofs(&[(training(&alice, 3, 6, 0xcc), nano(1.0))])
            .unwrap(),
        vec![InsertOutcome::Stored(ProofStatus::Credited)]
    );
    // A proof naming a delta that another node delivered is not credited for it.
    assert_eq!(
        store
            .insert_proofs(&[(training(&bob, 4, 6, 0xcc), nano(1.0))])
            .unwrap(),
        vec![InsertOutcome::Stored(ProofStatus::Rejected)]
    );
    assert_eq!(store.account(&alice.node_id).balance, nano(3.0));
    assert_eq!(store.account(&bob.node_id), Account::default());
    assert_mirrored(&store);
    drop(store);
    assert!(verify(&dir).is_ok());
}

#[test]
fn a_late_earlier_proof_turns_an_overdraft_into_an_applied_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob, carol) = (identity(1), identity(2), identity(3));
    let mut store = open(&dir);
    let send = transfer(&alice, &bob, 1, T0 + 200, nano(1.0));
    let outcome = store
        .insert_transactions(std::slice::from_ref(&send))
        .unwrap();
    assert_eq!(
        outcome,
        vec![TxInsertOutcome::Rejected(TxRejection::Overdraft {
            needed: nano(1.05),
            balance: 0
        })]
    );
    assert_eq!(tx_status(&store, &send).0, "rejected");

    store
        .insert_proofs(&[(paid(&alice, 1, T0 + 100), nano(2.0))])
        .unwrap();
    assert_eq!(tx_status(&store, &send), ("applied".into(), None));
    assert_eq!(store.account(&bob.node_id).balance, nano(1.0));
    assert_eq!(store.account(&alice.node_id).balance, nano(0.95));

    // And back: a double spend of seq 1 that sorts earlier takes the sequence number, so the
    // first transfer no longer applies and bob's account, which only it created, disappears.
    let earlier = transfer(&alice, &carol, 1, T0 + 150, nano(0.5));
    assert_eq!(
        store
            .insert_transactions(std::slice::from_ref(&earlier))
            .unwrap(),
        vec![TxInsertOutcome::Applied]
    );
    assert_eq!(tx_status(&store, &send).0, "rejected");
    assert!(!store.balances().contains_key(&bob.node_id));
    assert_eq!(store.account(&carol.node_id).balance, nano(0.5));
    assert_mirrored(&store);
    let (expected, _) = replayed(&[(paid(&alice, 1, T0 + 100), nano(2.0))], &[send, earlier]);
    assert_eq!(store.state, expected);
}

#[test]
fn proofs_of_a_staker_in_later_epochs_are_credited_with_the_multiplier() {
    let dir = tempfile::tempdir().unwrap();
    let alice = identity(1);
    let mut store = open(&dir);
    for nonce in 1..=4 {
        store
            .insert_proofs(&[(paid(&alice, nonce, T0 + nonce), nano(100.0))])
            .unwrap();
    }
    store
        .insert_transactions(&[stake(&alice, 1, T0 + 10, nano(300.0))])
        .unwrap();
    let schedule = RewardSchedule::default();
    let next_epoch = schedule.epoch_start_ms(schedule.epoch_of(T0) + 1);
    store
        .insert_proofs(&[(paid(&alice, 5, next_epoch + 20), nano(10.0))])
        .unwrap();
    let newest = &store.proofs_of(&alice.node_id, 1).unwrap()[0];
    let multiplied = schedule.credited(nano(10.0), nano(300.0));
    assert!(multiplied > nano(10.0));
    assert_eq!(newest.credited, Some(multiplied));
    // Proofs that arrive late in the stake's epoch, before or after it, are credited without
    // it: a stake counts from the next epoch.
    store
        .insert_proofs(&[
            (paid(&alice, 6, T0 + 5), nano(10.0)),
            (paid(&alice, 7, T0 + 30), nano(10.0)),
        ])
        .unwrap();
    let account = store.account(&alice.node_id);
    assert_eq!(account.total_earned, nano(400.0) + nano(20.0) + multiplied);
    assert_eq!(account.stake, nano(300.0));
    assert_mirrored(&store);
    drop(store);
    assert!(verify(&dir).is_ok());
}

#[test]
fn an_epoch_over_its_emission_is_shared_pro_rata_as_proofs_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let schedule = RewardSchedule {
        emission_per_epoch: 250.0,
        ..RewardSchedule::default()
    };
    let nodes = [identity(1), identity(2), identity(3)];
    let mut store = open_with(&dir, schedule.clone());
    store
        .insert_proofs(&[(paid(&nodes[0], 1, T0), nano(100.0))])
        .unwrap();
    store
        .insert_proofs(&[(paid(&nodes[1], 1, T0 + 1), nano(100.0))])
        .unwrap();
    // Under the emission: paid in full.
    assert_eq!(store.account(&nodes[0].node_id).balance, nano(100.0));
    // A third claim takes the epoch to 300 for 250: every credit of the epoch shrinks.
    store
        .insert_proofs(&[(paid(&nodes[2], 1, T0 + 2), nano(100.0))])
        .unwrap();
    for node in &nodes {
        let account = store.account(&node.node_id);
        assert_eq!(account.balance, 83_333_333_333, "{}", node.node_id);
        let listed = &store.proofs_of(&node.node_id, 1).unwrap()[0];
        assert_eq!(listed.credited, Some(83_333_333_333));
    }
    let network = store.network();
    assert_eq!(network.total_minted, nano(250.0));
    assert_eq!(network.total_burned, 1); // 250 − 3 × 83.333333333
    assert_mirrored(&store);
    drop(store);
    let report = verify_with(&dir, schedule.clone());
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(
        open_with(&dir, schedule).account(&nodes[2].node_id).balance,
        83_333_333_333
    );
}

#[test]
fn proofs_of_lists_newest_first_within_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let alice = identity(1);
    let mut store = open(&dir);
    let batch: Vec<_> = (0..5)
        .map(|i| (paid(&alice, i, T0 + i * 10), nano(1.0)))
        .collect();
    store.insert_proofs(&batch).unwrap();
    let listed = store.proofs_of(&alice.node_id, 3).unwrap();
    let nonces: Vec<u64> = listed.iter().map(|p| p.proof.proof.nonce).collect();
    assert_eq!(nonces, [4, 3, 2]);
    assert_eq!(listed[0].id, proof_id(&batch[4].0.proof).unwrap());
    assert_eq!(listed[0].base_reward, nano(1.0));
    assert_eq!(store.proofs_of(&alice.node_id, 0).unwrap().len(), 1);
    assert_eq!(
        store.proofs_of(&alice.node_id, usize::MAX).unwrap().len(),
        5
    );
    assert!(store.proofs_of("nobody", 10).unwrap().is_empty());
}

#[test]
fn a_malformed_proof_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let mut bad = paid(&identity(1), 1, T0);
    bad.proof.loss = f32::NAN;
    let outcomes = store.insert_proofs(&[(bad, nano(1.0))]).unwrap();
    assert!(matches!(outcomes[..], [InsertOutcome::Malformed(_)]));
    assert_eq!(store.network().proofs, 0);
}

/// A data proof of `who` claiming 10⁷ samples, with `receiver`'s receipt if there is one.
fn data(who: &Identity, nonce: u64, receiver: Option<&Identity>) -> SignedProof {
    let mut proof = Proof {
        data_samples: 10_000_000,
        work_seconds: 600,
        uptime_seconds: 0,
        ..blank(ProofKind::Data, nonce, T0 + nonce)
    };
    if let Some(receiver) = receiver {
        proof = sign_proof(who, proof).unwrap().proof;
        proof.receipt = Some(sign_receipt(receiver, &proof).unwrap());
    }
    sign_proof(who, proof).unwrap()
}

#[test]
fn a_self_declared_proof_is_stored_and_shown_but_credits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (identity(1), identity(2));
    let mut store = open(&dir);
    let claim = data(&alice, 1, None);
    let vouched = data(&alice, 2, Some(&bob));
    let outcomes = store
        .insert_proofs(&[(claim.clone(), 0), (vouched, nano(100.0))])
        .unwrap();
    assert_eq!(
        outcomes,
        [
            InsertOutcome::Stored(ProofStatus::Rejected),
            InsertOutcome::Stored(ProofStatus::Credited)
        ]
    );
    let listed = store.proofs_of(&alice.node_id, 10).unwrap();
    let shown = listed.iter().find(|p| p.proof == claim).unwrap();
    assert_eq!(shown.status, ProofStatus::Rejected);
    assert_eq!(
        shown.reason.as_deref(),
        Some("self-declared: no receipt from the receiving party")
    );
    assert_eq!(shown.credited, None);
    let account = store.account(&alice.node_id);
    assert_eq!((account.balance, account.proof_count), (nano(100.0), 1));
    assert_eq!(store.network().proofs, 2);
    // A self-declared proof alone opens no account.
    let mut store = open(&tempfile::tempdir().unwrap());
    store.insert_proofs(&[(claim, 0)]).unwrap();
    assert!(store.balances().is_empty());
    assert_eq!(store.network().total_minted, 0);
    drop(store);
    assert!(verify(&dir).is_ok(), "{:?}", verify(&dir));
}

#[test]
fn own_witness_statements_outlive_a_restart_until_they_are_too_old_to_restate() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let statements = |list: &[(u64, &str)]| -> Vec<(u64, String)> {
        list.iter().map(|(t, id)| (*t, id.to_string())).collect()
    };
    store
        .record_statements(&statements(&[(T0 + 2, "b"), (T0, "a")]), 0)
        .unwrap();
    // Recorded twice (a re-gossip): still one statement.
    store
        .record_statements(&statements(&[(T0 + 2, "b"), (T0 + 5, "c")]), 0)
        .unwrap();
    drop(store);
    let mut store = open(&dir);
    assert_eq!(
        store.statements_since(0, 10).unwrap(),
        statements(&[(T0, "a"), (T0 + 2, "b"), (T0 + 5, "c")])
    );
    assert_eq!(
        store.statements_since(T0 + 1, 10).unwrap(),
        statements(&[(T0 + 2, "b"), (T0 + 5, "c")])
    );
    assert_eq!(
        store.statements_since(0, 1).unwrap(),
        statements(&[(T0 + 5, "c")])
    );
    // Those about proofs older than what is restated are forgotten on the next write.
    store.record_statements(&[], T0 + 3).unwrap();
    assert_eq!(
        store.statements_since(0, 10).unwrap(),
        statements(&[(T0 + 5, "c")])
    );
}

#[test]
fn uptime_is_settled_once_by_its_witnesses_tally() {
    let dir = tempfile::tempdir().unwrap();
    let alice = identity(1);
    let mut store = open(&dir);
    let proof = uptime(&alice, 1, T0);
    let id = proof_id(&proof.proof).unwrap();
    assert_eq!(
        store.insert_proofs(&[(proof, nano(1.0))]).unwrap(),
        [InsertOutcome::Stored(ProofStatus::Pending)]
    );
    assert_eq!(
        store.uptime_claim(&id).unwrap(),
        Some((alice.node_id.clone(), ProofStatus::Pending))
    );
    assert!(store.balances().is_empty());
    let witnessed_by = |ids: &[&str]| Tally {
        witnesses: ids.iter().map(|id| (id.to_string(), 1.0)).collect(),
        others: 3.0,
    };
    assert_eq!(store.pending_uptime(10).unwrap(), std::slice::from_ref(&id));
    // One of the three others is not enough: refused for good.
    let refused = uptime(&alice, 2, T0 + 1);
    let refused_id = proof_id(&refused.proof).unwrap();
    store.insert_proofs(&[(refused, nano(1.0))]).unwrap();
    assert_eq!(
        store
            .record_witnessed(&refused_id, &witnessed_by(&["b"]))
            .unwrap(),
        Some(ProofStatus::Rejected)
    );
    assert_eq!(
        store
            .record_witnessed(&refused_id, &witnessed_by(&["b", "c", "d"]))
            .unwrap(),
        None
    );
    assert_eq!(store.account(&alice.node_id).balance, 0);
    assert_eq!(
        store
            .record_witnessed(&id, &witnessed_by(&["b", "c"]))
            .unwrap(),
        Some(ProofStatus::Credited)
    );
    assert_eq!(store.account(&alice.node_id).balance, nano(1.0));
    // Settled: another tally changes nothing; unknown ids are no pending uptime.
    let all = witnessed_by(&["b", "c", "d"]);
    assert_eq!(store.record_witnessed(&id, &all).unwrap(), None);
    assert_eq!(
        store.record_witnessed(&"00".repeat(32), &all).unwrap(),
        None
    );
    assert_eq!(store.uptime_claim(&"00".repeat(32)).unwrap(), None);
    assert!(store.pending_uptime(10).unwrap().is_empty());
    let shown = store.proofs_of(&alice.node_id, 10).unwrap();
    assert_eq!(shown[0].status, ProofStatus::Rejected);
    assert_eq!(
        shown[0].reason.as_deref(),
        Some(
            "unwitnessed: 1 witness(es) of weight 1.00, of 3.00 besides the claimant; more than half is needed"
        )
    );
    let shown = shown[1].clone();
    assert_eq!(shown.status, ProofStatus::Credited);
    assert_eq!(
        shown.reason.as_deref(),
        Some("witnessed: 2 witness(es) of weight 2.00, of 3.00 besides the claimant")
    );
    drop(store);
    assert_eq!(open(&dir).account(&alice.node_id).balance, nano(1.0));
    assert!(verify(&dir).is_ok(), "{:?}", verify(&dir));
    // A tally edited below the threshold no longer credits the proof.
    raw(&dir)
        .execute(
            "UPDATE witnessed SET tally = ?1 WHERE proof_id = ?2",
            [
                serde_json::to_string(&witnessed_by(&["b"])).unwrap(),
                id.clone(),
            ],
        )
        .unwrap();
    let report = verify(&dir);
    assert!(
        report
            .event_mismatches
            .iter()
            .any(|m| m.id == id && m.field == "status" && m.recomputed.starts_with("rejected")),
        "{report:?}"
    );
}

#[test]
fn verify_store_passes_a_good_database_and_reports_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (identity(1), identity(2));
    let mut store = open(&dir);
    let proof = paid(&alice, 1, T0);
    store
        .insert_proofs(&[(proof.clone(), nano(5.0)), (paid(&bob, 1, T0), nano(1.0))])
        .unwrap();
    let send = transfer(&alice, &bob, 1, T0 + 10, nano(1.0));
    store
        .insert_transactions(std::slice::from_ref(&send))
        .unwrap();
    // A running node keeps the file open while it is verified.
    let report = verify(&dir);
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(
        (report.proofs, report.transactions, report.accounts),
        (2, 1, 2)
    );
    drop(store);

    let db = raw(&dir);
    db.execute(
        "UPDATE balances SET balance = balance + 1 WHERE node_id = ?1",
        [&alice.node_id],
    )
    .unwrap();
    db.execute(
        "UPDATE network SET value = 7 WHERE key = 'total_burned'",
        [],
    )
    .unwrap();
    let report = verify(&dir);
    assert_eq!(
        report.mismatches,
        vec![
            Mismatch {
                node_id: alice.node_id.clone(),
                field: "balance",
                stored: nano(5.0) - nano(1.05) + 1,
                recomputed: nano(5.0) - nano(1.05),
            },
            Mismatch {
                node_id: NETWORK_ROW.into(),
                field: "total_burned",
                stored: 7,
                recomputed: nano(0.05),
            },
        ]
    );
    assert!(!report.is_ok());

    // A forged body: the signature no longer covers it, and the fold leaves it out.
    let mut forged = proof.clone();
    forged.proof.uptime_seconds = 120;
    let id = proof_id(&proof.proof).unwrap();
    let body = serde_json::to_string(&forged).unwrap();
    db.execute(
        "UPDATE proofs SET body = ?2 WHERE id = ?1",
        params![id, body],
    )
    .unwrap();
    db.execute(
        "UPDATE transactions SET status = 'rejected', reason = 'made up'",
        [],
    )
    .unwrap();
    let report = verify(&dir);
    assert_eq!(report.bad_signatures, vec![id]);
    assert!(
        report
            .mismatches
            .iter()
            .any(|m| m.node_id == alice.node_id && m.field == "total_earned")
    );
    // Without alice's proof the transfer overdraws: both stored and recomputed say rejected,
    // with different reasons.
    assert_eq!(report.event_mismatches.len(), 1);
    assert_eq!(report.event_mismatches[0].field, "status");
    assert_eq!(report.event_mismatches[0].stored, "rejected (made up)");
}

#[test]
fn opening_rewrites_balances_that_drifted_from_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let alice = identity(1);
    {
        let mut store = open(&dir);
        store
            .insert_proofs(&[(paid(&alice, 1, T0), nano(5.0))])
            .unwrap();
    }
    let db = raw(&dir);
    db.execute("UPDATE balances SET balance = 1", []).unwrap();
    db.execute(
        "INSERT INTO balances VALUES ('ghost', 9, 9, 0, 0, 0, 0, 0)",
        [],
    )
    .unwrap();
    db.execute("UPDATE proofs SET credited_amount = NULL", [])
        .unwrap();
    drop(db);
    assert!(!verify(&dir).is_ok());
    let store = open(&dir);
    assert_eq!(store.account(&alice.node_id).balance, nano(5.0));
    assert_mirrored(&store);
    assert_eq!(
        store.proofs_of(&alice.node_id, 1).unwrap()[0].credited,
        Some(nano(5.0))
    );
    drop(store);
    assert!(verify(&dir).is_ok());
}

/// Opening folds from the stored bases; a base that disagrees with the events is reported by
/// `ledger verify` and not trusted when opening: the fold starts over from the events.
#[test]
fn a_stored_base_that_disagrees_with_the_events_is_reported_and_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let schedule = RewardSchedule {
        epoch_s: 4,
        ..RewardSchedule::default()
    };
    let (alice, bob) = (identity(1), identity(2));
    // Six epochs of 4 s, a proof of each node in each.
    let proofs: Vec<(SignedProof, Nano)> = (0..12u64)
        .map(|i| {
            let who = if i % 2 == 0 { &alice } else { &bob };
            (paid(who, i, T0 + i * 2000), nano(1.0))
        })
        .collect();
    let (expected, _) = replayed_with(&schedule, &proofs, &[]);
    {
        let mut store = open_with(&dir, schedule.clone());
        for proof in &proofs {
            store.insert_proofs(std::slice::from_ref(proof)).unwrap();
        }
        assert_eq!(store.bases.len(), KEPT_BASES);
    }
    assert!(verify_with(&dir, schedule.clone()).is_ok());
    let reopened = open_with(&dir, schedule.clone());
    assert_eq!(reopened.state, expected);
    drop(reopened);

    // The oldest stored base (the one opening folds from) now credits alice 1000 NEURO more.
    let db = raw(&dir);
    let (epoch, text): (i64, String) = db
        .query_row(
            "SELECT epoch, state FROM epoch_bases ORDER BY epoch LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    let mut base: serde_json::Value = serde_json::from_str(&text).unwrap();
    let balance = &mut base["accounts"][&alice.node_id]["balance"];
    *balance = (balance.as_u64().unwrap() + nano(1000.0)).into();
    db.execute(
        "UPDATE epoch_bases SET state = ?1 WHERE epoch = ?2",
        params![serde_json::to_string(&base).unwrap(), epoch],
    )
    .unwrap();
    drop(db);
    let report = verify_with(&dir, schedule.clone());
    assert_eq!(report.bad_bases, [epoch as u64], "{report:?}");
    assert!(!report.is_ok());

    // The balances table still matches the events: opening finds that the fold from the bases
    // drifts from it and folds from the start.
    let store = open_with(&dir, schedule.clone());
    assert_eq!(store.state, expected);
    drop(store);
    assert!(verify_with(&dir, schedule).is_ok());
}

#[test]
fn a_database_from_a_newer_binary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&dir));
    raw(&dir)
        .pragma_update(None, "user_version", SCHEMA_VERSION as i64 + 1)
        .unwrap();
    let error = LedgerStore::open(&path_in(&dir), RewardSchedule::default()).unwrap_err();
    assert!(
        matches!(error.kind, LedgerErrorKind::TooNew { found, .. } if found == SCHEMA_VERSION + 1)
    );
    let message = error.to_string();
    assert!(
        message.contains("ledger.db") && message.contains("newer"),
        "{message}"
    );
    let error = verify_store(
        &path_in(&dir),
        RewardSchedule::default(),
        "test",
        |_| true,
        |_| true,
    )
    .unwrap_err();
    assert!(matches!(error.kind, LedgerErrorKind::TooNew { .. }));
}

#[test]
fn unreadable_stored_json_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (identity(1), identity(2));
    {
        let mut store = open(&dir);
        store
            .insert_proofs(&[(paid(&alice, 1, T0), nano(5.0))])
            .unwrap();
        store
            .insert_transactions(&[transfer(&alice, &bob, 1, T0 + 1, 10)])
            .unwrap();
    }
    let db = raw(&dir);
    db.execute("UPDATE transactions SET body = '{'", [])
        .unwrap();
    db.execute("UPDATE proofs SET body = 'null'", []).unwrap();
    drop(db);
    let error = LedgerStore::open(&path_in(&dir), RewardSchedule::default()).unwrap_err();
    assert!(
        matches!(error.kind, LedgerErrorKind::Json { .. }),
        "{error}"
    );
    let report = verify(&dir);
    assert_eq!(report.bad_records.len(), 2);
}

/// Precommits of `signers` for `checkpoint`, as a stored certificate.
fn certified(
    checkpoint: &Checkpoint,
    signers: &[&Identity],
    trainer_keys: &[secp256k1::PublicKey],
) -> CertificateRecord {
    use crate::ledger::checkpoint::context::{Epoch, Signer};
    use malachitebft_core_types::{
        CommitCertificate, CommitSignature, Context, NilOrVal, Round, SigningProvider, Value,
    };
    let ctx = CheckpointContext::new("test");
    let signatures = signers
        .iter()
        .map(|who| {
            let signer = Signer::new(ctx.clone(), (*who).clone());
            let vote = ctx.new_precommit(
                Epoch(checkpoint.epoch),
                Round::new(0),
                NilOrVal::Val(checkpoint.id()),
                signer.address(),
            );
            CommitSignature::new(signer.address(), signer.sign_vote(vote).signature)
        })
        .collect();
    let certificate = CommitCertificate {
        height: Epoch(checkpoint.epoch),
        round: Round::new(0),
        value_id: checkpoint.id(),
        commit_signatures: signatures,
    };
    let validators = ValidatorSet::new(trainer_keys.iter().map(|key| Validator::new(*key, 1)));
    CertificateRecord::new(checkpoint, &certificate, &validators)
}

/// A proof with the base reward verification offers it (what a node stores).
fn offered(signed: SignedProof) -> (SignedProof, Nano) {
    let reward = crate::ledger::verify::offer(&signed.proof, &RewardSchedule::default())
        .unwrap()
        .reward;
    (signed, reward)
}

/// Three trainers whose deltas of round 1 (epoch e0) were kept, an outsider whose delta was
/// not, and in epoch e0 + 1 a paid proof and a training proof whose verdict has not come:
/// (store, trainers, e0 + 1, the pending training proof).
fn trained_two_epochs(dir: &tempfile::TempDir) -> (LedgerStore, [Identity; 3], u64, SignedProof) {
    let schedule = RewardSchedule::default();
    let trainers = [identity(1), identity(2), identity(3)];
    let mut store = open(dir);
    // Epoch e0: each trainer's delta of round 1 is kept; a fourth identity's is not.
    let outsider = identity(4);
    let mut proofs: Vec<(SignedProof, Nano)> = trainers
        .iter()
        .enumerate()
        .map(|(i, who)| offered(training(who, 1, 1, i as u8)))
        .collect();
    proofs.push(offered(training(&outsider, 1, 1, 0xee)));
    store.insert_proofs(&proofs).unwrap();
    let mut verdicts: Vec<(String, String, bool, String)> = trainers
        .iter()
        .enumerate()
        .map(|(i, who)| {
            (
                delta_hash(i as u8),
                who.node_id.clone(),
                true,
                "kept".into(),
            )
        })
        .collect();
    verdicts.push((
        delta_hash(0xee),
        outsider.node_id.clone(),
        false,
        "outlier".into(),
    ));
    store.record_verdicts(1, &verdicts).unwrap();
    let e0 = schedule.epoch_of(T0);
    let epoch = e0 + 1;
    let in_epoch = schedule.epoch_start_ms(epoch) + 5;
    // A training proof of the epoch whose round's verdict comes only after the checkpoint.
    let mut late = blank(ProofKind::Training, 3, in_epoch + 2);
    late.outer_round = 2;
    late.batches = 10;
    late.delta_hash = delta_hash(0x77);
    let late = sign_proof(&trainers[2], late).unwrap();
    store
        .insert_proofs(&[
            offered(paid(&trainers[0], 2, in_epoch)),
            offered(late.clone()),
        ])
        .unwrap();

    (store, trainers, epoch, late)
}

#[test]
fn a_checkpoint_is_validated_by_the_trainers_of_the_epoch_before_and_checked_by_ledger_verify() {
    let dir = tempfile::tempdir().unwrap();
    let schedule = RewardSchedule::default();
    let (mut store, trainers, epoch, _) = trained_two_epochs(&dir);
    let e0 = epoch - 1;
    let in_epoch = schedule.epoch_start_ms(epoch) + 5;
    let validators = store.validators_of(epoch).unwrap();
    let mut expected: Vec<&str> = trainers.iter().map(|t| t.node_id.as_str()).collect();
    expected.sort();
    let named: Vec<&str> = validators
        .validators()
        .iter()
        .map(|v| v.address.0.as_str())
        .collect();
    assert_eq!(
        named, expected,
        "the kept trainers of the epoch before, not the outsider"
    );
    assert!(store.validators_of(e0).unwrap().validators().is_empty());

    // Computed again from the same events, the checkpoint is the same.
    let checkpoint = store.checkpoint_of(epoch).unwrap();
    assert_eq!(store.checkpoint_of(epoch).unwrap(), checkpoint);
    assert_ne!(store.checkpoint_of(e0).unwrap(), checkpoint);

    let keys: Vec<_> = trainers.iter().map(|t| t.public).collect();
    let record = certified(
        &checkpoint,
        &[&trainers[0], &trainers[1], &trainers[2]],
        &keys,
    );
    assert_eq!(
        store.record_checkpoint(&record).unwrap(),
        RecordOutcome::Stored
    );
    assert_eq!(
        store.record_checkpoint(&record).unwrap(),
        RecordOutcome::Known
    );
    let other = Checkpoint {
        balances_root: [7; 32],
        ..checkpoint
    };
    assert_eq!(
        store
            .record_checkpoint(&certified(&other, &[&trainers[0], &trainers[1]], &keys))
            .unwrap(),
        RecordOutcome::Conflict {
            stored: record.checkpoint_id.clone()
        }
    );
    assert_eq!(store.checkpoints(10).unwrap(), vec![record.clone()]);
    // The checkpoint sealed the epoch: the late verdict settles nothing in it.
    let settled = store
        .record_verdicts(
            2,
            &[(
                delta_hash(0x77),
                trainers[2].node_id.clone(),
                true,
                "kept".into(),
            )],
        )
        .unwrap();
    assert!(settled.is_empty(), "{settled:?}");
    assert_eq!(store.checkpoint_of(epoch).unwrap(), checkpoint);
    let report = verify_with(&dir, schedule.clone());
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.checkpoints, 1);

    // Two of three signatures are not more than 2/3 of the power.
    let weak = certified(&checkpoint, &[&trainers[0], &trainers[1]], &keys);
    let db = raw(&dir);
    let set_certificate = |record: &CertificateRecord| {
        db.execute(
            "UPDATE checkpoints SET certificate = ?1",
            [serde_json::to_string(record).unwrap()],
        )
        .unwrap()
    };
    set_certificate(&weak);
    let report = verify_with(&dir, schedule.clone());
    assert_eq!(report.bad_checkpoints.len(), 1, "{report:?}");
    assert!(report.bad_checkpoints[0].problem.contains("does not hold"));

    // An event added to a sealed epoch changes its root.
    set_certificate(&record);
    store
        .insert_proofs(&[(paid(&trainers[1], 2, in_epoch + 1), nano(2.0))])
        .unwrap();
    let report = verify_with(&dir, schedule);
    assert_eq!(report.bad_checkpoints.len(), 1, "{report:?}");
    assert!(report.bad_checkpoints[0].problem.contains("root"));
}

/// Every page of epochs `from..=to` of `store`, `max_bytes` a page.
fn all_pages(store: &LedgerStore, from: u64, to: u64, max_bytes: usize) -> HistoryPage {
    let mut all = HistoryPage::default();
    let mut after = None;
    loop {
        let page = store
            .history_page(from, to, after.as_ref(), max_bytes)
            .unwrap();
        all.proofs.extend(page.proofs);
        all.transactions.extend(page.transactions);
        match page.next {
            Some(next) => after = Some(next),
            None => return all,
        }
    }
}

#[test]
fn a_joiner_adopts_certified_history_only_as_certified() {
    let dir = tempfile::tempdir().unwrap();
    let (mut network, trainers, epoch, _) = trained_two_epochs(&dir);
    let in_epoch = RewardSchedule::default().epoch_start_ms(epoch) + 5;
    let send = transfer(&trainers[0], &trainers[1], 1, in_epoch + 9, nano(0.5));
    network
        .insert_transactions(std::slice::from_ref(&send))
        .unwrap();
    let keys: Vec<_> = trainers.iter().map(|t| t.public).collect();
    let record = certified(
        &network.checkpoint_of(epoch).unwrap(),
        &[&trainers[0], &trainers[1], &trainers[2]],
        &keys,
    );
    network.record_checkpoint(&record).unwrap();

    // Pages of any size give the same events, in order.
    let whole = all_pages(&network, 0, epoch, usize::MAX);
    assert_eq!(whole.proofs.len(), 6);
    assert_eq!(whole.transactions, vec![send]);
    assert_eq!(all_pages(&network, 0, epoch, 1), whole);
    let pending: Vec<&str> = whole.proofs.iter().map(|p| p.status.as_str()).collect();
    assert!(pending.contains(&"pending") && pending.contains(&"rejected"));

    let joiner_dir = tempfile::tempdir().unwrap();
    let mut joiner = open(&joiner_dir);
    // A copy that leaves a proof out, or says a pending proof was credited, is refused whole.
    let mut short = whole.clone();
    short.proofs.pop();
    let mut altered = whole.clone();
    let pending_one = altered
        .proofs
        .iter_mut()
        .find(|p| p.status == "pending")
        .unwrap();
    pending_one.status = "credited".into();
    for bad in [&short, &altered] {
        let error = joiner
            .adopt_history(0, &record, &bad.proofs, &bad.transactions)
            .unwrap_err();
        assert!(
            matches!(error.kind, LedgerErrorKind::Mismatch(_)),
            "{error}"
        );
        assert_eq!(
            joiner.network().proofs,
            0,
            "nothing of a refused copy is kept"
        );
        assert!(joiner.checkpoints(10).unwrap().is_empty());
    }

    // The joiner holds a proof of the epoch the network never stored: it goes.
    let stray = paid(&identity(9), 1, in_epoch + 3);
    joiner.insert_proofs(&[offered(stray)]).unwrap();
    let adopted = joiner
        .adopt_history(0, &record, &whole.proofs, &whole.transactions)
        .unwrap();
    assert_eq!(
        (
            adopted.proofs_added,
            adopted.transactions_added,
            adopted.removed
        ),
        (6, 1, 1)
    );
    assert_eq!(joiner.network().proofs, 6);
    assert_eq!(joiner.balances(), network.balances());
    assert_eq!(joiner.checkpoints(10).unwrap(), vec![record.clone()]);
    let report = verify(&joiner_dir);
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.checkpoints, 1);

    // A certificate recorded after the history it covers is stored only as the stored events
    // bear it out: not for another value, not for validators other than the epoch before's
    // kept trainers.
    let checkpoint = network.checkpoint_of(epoch).unwrap();
    let signers = [&trainers[0], &trainers[1], &trainers[2]];
    let other_value = Checkpoint {
        balances_root: [7; 32],
        ..checkpoint
    };
    let earlier = network.checkpoint_of(epoch - 1).unwrap();
    for wrong in [
        certified(&other_value, &signers, &keys),
        certified(&earlier, &signers, &keys),
    ] {
        let error = joiner.record_certified(&wrong).unwrap_err();
        assert!(
            matches!(error.kind, LedgerErrorKind::Mismatch(_)),
            "{error}"
        );
    }
    assert_eq!(
        joiner.record_certified(&record).unwrap(),
        RecordOutcome::Known
    );
    assert_eq!(joiner.checkpoints(10).unwrap(), vec![record.clone()]);
    // A node that holds no checkpoint is offered the newest; one that holds one, those after.
    assert_eq!(network.checkpoints_after(None, 1).unwrap(), vec![record]);
    assert!(
        network
            .checkpoints_after(Some(epoch), 16)
            .unwrap()
            .is_empty()
    );
}
