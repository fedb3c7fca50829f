//! `ledger verify`: a database re-checked from its events alone.

use rayon::prelude::*;
use serde::de::DeserializeOwned;

use super::checkpoints::{balances_root, certificates, events_root, fold_between, validators_of};
use super::*;
use crate::ledger::checkpoint::{Checkpoint, CheckpointContext};

/// Stored events checked at a time: their signatures in parallel, their outcomes recorded in
/// order.
const VERIFY_CHUNK: usize = 4096;

/// A signature check `ledger verify` runs on every stored event, on several threads.
type Check<'a, T> = &'a (dyn Fn(&T) -> bool + Sync);

/// Re-checks a ledger database from its events alone: every stored proof and transaction
/// against the given signature checks (not verification's freshness: stored events are old),
/// every id against its body, training statuses against the verdicts, uptime statuses against
/// the witness tallies (`witness::decide` again), then folds the valid
/// events and compares each account, each event's status and the network totals with what is
/// stored; and every stored checkpoint certificate: its precommits (of network `network`'s
/// validators of that epoch, more than 2/3 of their power) and its value against the stored
/// events. Opens the file read-only and reads one snapshot, so a running node may keep writing.
pub fn verify_store(
    path: &Path,
    schedule: RewardSchedule,
    network: &str,
    check: impl Fn(&SignedProof) -> bool + Sync,
    check_tx: impl Fn(&SignedTransaction) -> bool + Sync,
) -> Result<VerifyReport, LedgerError> {
    verify_at(path, &schedule, network, &check, &check_tx).map_err(|kind| LedgerError {
        path: path.to_owned(),
        kind,
    })
}

pub(super) fn verify_at(
    path: &Path,
    schedule: &RewardSchedule,
    network: &str,
    check: Check<'_, SignedProof>,
    check_tx: Check<'_, SignedTransaction>,
) -> Fallible<VerifyReport> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let found = schema_version(&conn)?;
    if found != SCHEMA_VERSION {
        let supported = SCHEMA_VERSION;
        return Err(if found > supported {
            LedgerErrorKind::TooNew { found, supported }
        } else {
            LedgerErrorKind::TooOld { found, supported }
        });
    }
    let snapshot = conn.unchecked_transaction()?;
    let mut report = VerifyReport::default();

    let mut verdicts = HashMap::new();
    let mut statement =
        snapshot.prepare("SELECT outer_round, delta_hash, node_id, kept, reason FROM verdicts")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let key: (u64, String) = (get_u64(row, 0)?, row.get(1)?);
        let verdict = StoredVerdict {
            node_id: row.get(2)?,
            kept: row.get(3)?,
            reason: row.get(4)?,
        };
        verdicts.insert(key, verdict);
    }
    report.verdicts = verdicts.len() as u64;
    let mut tallies = HashMap::new();
    let mut statement = snapshot.prepare("SELECT proof_id, tally FROM witnessed")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let proof_id: String = row.get(0)?;
        let tally: Tally = parse_json(&row.get::<_, String>(1)?, || {
            format!("witness tally of proof {proof_id}")
        })?;
        tallies.insert(proof_id, tally);
    }

    let newest_checkpoint = certificates(&snapshot, 1)?
        .first()
        .map(|record| record.epoch);
    let sealed = |timestamp_ms| Some(schedule.epoch_of(timestamp_ms)) <= newest_checkpoint;
    let proofs = verify_proofs(&snapshot, &verdicts, &tallies, &sealed, check, &mut report)?;
    let txs = verify_transactions(&snapshot, check_tx, &mut report)?;
    let show_credit = |credit: Option<Nano>| credit.map_or("none".into(), |c| c.to_string());
    // The fold takes credited proofs only, as the store's does: uncredited ones change no
    // balance, and an epoch that holds nothing else has no base in the store either.
    let (proofs, uncredited): (Vec<ProofRow>, Vec<ProofRow>) =
        proofs.into_iter().partition(|row| row.credited);
    for row in uncredited
        .into_iter()
        .filter(|row| row.stored_credit.is_some())
    {
        report.event_mismatches.push(EventMismatch {
            id: row.id,
            field: "credited_amount",
            stored: show_credit(row.stored_credit),
            recomputed: show_credit(None),
        });
    }
    let mut state = LedgerState::default();
    let fold = fold_onto(&mut state, &proofs, &txs, schedule);
    for change in fold.credit_changes {
        report.event_mismatches.push(EventMismatch {
            id: change.id,
            field: "credited_amount",
            stored: show_credit(change.stored),
            recomputed: show_credit(change.recomputed),
        });
    }
    for change in fold.status_changes {
        let (stored_status, stored_reason) = &change.stored;
        let (status, reason) = &change.recomputed;
        report.event_mismatches.push(EventMismatch {
            id: change.id,
            field: "status",
            stored: show_status(stored_status, stored_reason.as_deref()),
            recomputed: show_status(status, reason.as_deref()),
        });
    }
    report.mismatches = compare_balances(&state, &read_stored_balances(&snapshot)?);
    // The store keeps the bases of the last epochs with events: the full fold's own.
    let folded: BTreeMap<u64, LedgerState> = fold.folded.bases.into_iter().collect();
    report.bad_bases = read_bases(&snapshot, schedule)?
        .into_iter()
        .filter(|(epoch, base)| folded.get(epoch) != Some(base))
        .map(|(epoch, _)| epoch)
        .collect();
    report.accounts = state.accounts().len() as u64;
    report.bad_checkpoints = verify_checkpoints(&snapshot, schedule, network, &mut report)?;
    Ok(report)
}

/// Each stored certificate checked against the stored events, oldest first (one pass of the
/// fold over the history): what is wrong with each that does not hold.
fn verify_checkpoints(
    conn: &Connection,
    schedule: &RewardSchedule,
    network: &str,
    report: &mut VerifyReport,
) -> Fallible<Vec<BadRecord>> {
    let ctx = CheckpointContext::new(network);
    let mut records = certificates(conn, usize::MAX)?;
    records.reverse();
    report.checkpoints = records.len() as u64;
    let mut bad = Vec::new();
    let (mut state, mut folded_until_ms) = (LedgerState::default(), 0);
    for record in records {
        let epoch = record.epoch;
        let until_ms = schedule.epoch_start_ms(epoch.saturating_add(1));
        fold_between(conn, schedule, &mut state, folded_until_ms, until_ms)?;
        folded_until_ms = until_ms;
        let decoded = record.decode().and_then(|(checkpoint, certificate)| {
            Ok((checkpoint, certificate, record.validator_set()?))
        });
        let problem = match decoded {
            Err(problem) => Some(problem),
            Ok((checkpoint, certificate, recorded)) => {
                let ours = Checkpoint {
                    epoch,
                    events_root: events_root(conn, schedule, epoch)?,
                    balances_root: balances_root(&state),
                };
                if recorded != validators_of(conn, schedule, epoch)? {
                    Some("its validators are not the trainers the epoch before kept".into())
                } else if let Err(e) = ctx.verify_certificate(&certificate, &recorded) {
                    Some(format!("certificate does not hold: {e}"))
                } else if ours.events_root != checkpoint.events_root {
                    Some("the stored events of the epoch have another root".into())
                } else if ours.balances_root != checkpoint.balances_root {
                    Some("the balances after the epoch have another root".into())
                } else {
                    None
                }
            }
        };
        if let Some(problem) = problem {
            bad.push(BadRecord {
                id: format!("checkpoint of epoch {epoch}"),
                problem,
            });
        }
    }
    Ok(bad)
}

pub(super) fn show_status(status: &str, reason: Option<&str>) -> String {
    match reason {
        Some(reason) => format!("{status} ({reason})"),
        None => status.to_owned(),
    }
}

/// The next `VERIFY_CHUNK` rows (fewer at the end, none when all are read), each read by `read`.
fn next_chunk<R>(
    rows: &mut rusqlite::Rows<'_>,
    read: impl Fn(&Row<'_>) -> rusqlite::Result<R>,
) -> Fallible<Vec<R>> {
    let mut chunk = Vec::with_capacity(VERIFY_CHUNK);
    while chunk.len() < VERIFY_CHUNK {
        let Some(row) = rows.next()? else { break };
        chunk.push(read(row)?);
    }
    Ok(chunk)
}

/// A stored proof's row as read, before its body is checked.
struct ProofRecord {
    id: String,
    node_id: String,
    timestamp_ms: u64,
    base_reward: Nano,
    status: String,
    reason: Option<String>,
    credited: Option<Nano>,
    body: String,
}

/// `sealed(timestamp_ms)`: the proof is dated at or before the newest stored checkpoint. Its
/// training and uptime statuses are then the ones the certificates vouch for (checked by
/// `verify_checkpoints` against their events roots and, cumulatively, balances roots), not
/// what verdicts and tallies that came later say.
pub(super) fn verify_proofs(
    db: &Connection,
    verdicts: &HashMap<(u64, String), StoredVerdict>,
    tallies: &HashMap<String, Tally>,
    sealed: &(dyn Fn(u64) -> bool + Sync),
    check: Check<'_, SignedProof>,
    report: &mut VerifyReport,
) -> Fallible<Vec<ProofRow>> {
    let mut statement = db.prepare(
        "SELECT id, node_id, timestamp_ms, base_reward, status, reason, credited_amount, body
         FROM proofs",
    )?;
    let mut rows = statement.query([])?;
    let mut proofs = Vec::new();
    loop {
        let chunk = next_chunk(&mut rows, |row| {
            Ok(ProofRecord {
                id: row.get(0)?,
                node_id: row.get(1)?,
                timestamp_ms: get_u64(row, 2)?,
                base_reward: get_u64(row, 3)?,
                status: row.get(4)?,
                reason: row.get(5)?,
                credited: row.get::<_, Option<i64>>(6)?.map(from_sql_int),
                body: row.get(7)?,
            })
        })?;
        if chunk.is_empty() {
            return Ok(proofs);
        }
        let checked: Vec<_> = chunk
            .par_iter()
            .map(|record| {
                let checked = check_event(
                    &record.body,
                    check,
                    |s: &SignedProof| proof_id(&s.proof).map_err(|e| e.to_string()),
                    |s| {
                        (s.proof.node_id == record.node_id
                            && s.proof.timestamp_ms == record.timestamp_ms)
                            .then_some(())
                            .ok_or("node_id or timestamp_ms column differs from the body")
                    },
                    &record.id,
                );
                // A receipt check is another signature: computed here, in parallel, too.
                checked.map(|signed| {
                    let proof = signed.proof;
                    let settled_later =
                        matches!(proof.kind, ProofKind::Training | ProofKind::Uptime);
                    // (An unreadable stored status is recomputed, and reported as differing.)
                    if let Ok(status) = ProofStatus::parse(&record.status)
                        && settled_later
                        && sealed(proof.timestamp_ms)
                    {
                        return (proof, (status, record.reason.clone()));
                    }
                    let status = match proof.kind {
                        ProofKind::Training => {
                            let key = (proof.outer_round, proof.delta_hash.clone());
                            training_status(&proof.node_id, verdicts.get(&key))
                        }
                        ProofKind::Uptime => uptime_status(&proof.node_id, tallies.get(&record.id)),
                        ProofKind::Data | ProofKind::Inference => receipt_status(&proof),
                    };
                    (proof, status)
                })
            })
            .collect();
        for (record, checked) in chunk.into_iter().zip(checked) {
            report.proofs += 1;
            let Some((proof, (status, reason))) = record_checked(report, &record.id, checked)
            else {
                continue;
            };
            if (record.status.as_str(), record.reason.as_deref())
                != (status.as_str(), reason.as_deref())
            {
                report.event_mismatches.push(EventMismatch {
                    id: record.id.clone(),
                    field: "status",
                    stored: show_status(&record.status, record.reason.as_deref()),
                    recomputed: show_status(status.as_str(), reason.as_deref()),
                });
            }
            proofs.push(ProofRow {
                id: record.id,
                node_id: proof.node_id,
                timestamp_ms: proof.timestamp_ms,
                base_reward: record.base_reward,
                credited: status == ProofStatus::Credited,
                stored_credit: record.credited,
            });
        }
    }
}

/// A stored transaction's row as read, before its body is checked.
struct TxRecord {
    id: String,
    sender: String,
    timestamp_ms: u64,
    status: String,
    reason: Option<String>,
    body: String,
}

pub(super) fn verify_transactions(
    db: &Connection,
    check_tx: Check<'_, SignedTransaction>,
    report: &mut VerifyReport,
) -> Fallible<Vec<TxRow>> {
    let mut statement =
        db.prepare("SELECT id, sender, timestamp_ms, status, reason, body FROM transactions")?;
    let mut rows = statement.query([])?;
    let mut txs = Vec::new();
    loop {
        let chunk = next_chunk(&mut rows, |row| {
            Ok(TxRecord {
                id: row.get(0)?,
                sender: row.get(1)?,
                timestamp_ms: get_u64(row, 2)?,
                status: row.get(3)?,
                reason: row.get(4)?,
                body: row.get(5)?,
            })
        })?;
        if chunk.is_empty() {
            return Ok(txs);
        }
        let checked: Vec<_> = chunk
            .par_iter()
            .map(|record| {
                check_event(
                    &record.body,
                    check_tx,
                    |s: &SignedTransaction| tx_id(&s.tx).map_err(|e| e.to_string()),
                    |s| {
                        (s.tx.from == record.sender && s.tx.timestamp_ms == record.timestamp_ms)
                            .then_some(())
                            .ok_or("sender or timestamp_ms column differs from the body")
                    },
                    &record.id,
                )
            })
            .collect();
        for (record, checked) in chunk.into_iter().zip(checked) {
            report.transactions += 1;
            let Some(signed) = record_checked(report, &record.id, checked) else {
                continue;
            };
            txs.push(TxRow {
                id: record.id,
                tx: signed.tx,
                stored_status: record.status,
                stored_reason: record.reason,
            });
        }
    }
}

/// What checking one stored event's body found.
pub(super) enum Checked<T> {
    /// It parses, passes its signature check and hashes to its id; indexed columns that
    /// disagree with the body are a problem to report, but the event (its body is what counts)
    /// stays in the fold.
    Valid {
        event: T,
        column_problem: Option<&'static str>,
    },
    BadSignature,
    BadRecord(String),
}

impl<T> Checked<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Checked<U> {
        match self {
            Checked::Valid {
                event,
                column_problem,
            } => Checked::Valid {
                event: f(event),
                column_problem,
            },
            Checked::BadSignature => Checked::BadSignature,
            Checked::BadRecord(problem) => Checked::BadRecord(problem),
        }
    }
}

/// Checks a stored event's body: it parses, passes `check` (its signature), hashes to `id`, and
/// its indexed columns match it (`columns_match`).
pub(super) fn check_event<T: DeserializeOwned>(
    body: &str,
    check: Check<'_, T>,
    id_of: impl Fn(&T) -> Result<String, String>,
    columns_match: impl Fn(&T) -> Result<(), &'static str>,
    id: &str,
) -> Checked<T> {
    let event = match serde_json::from_str::<T>(body) {
        Ok(event) => event,
        Err(error) => return Checked::BadRecord(format!("body is not a signed event: {error}")),
    };
    if !check(&event) {
        return Checked::BadSignature;
    }
    if let Some(problem) = id_problem(id, id_of(&event)) {
        return Checked::BadRecord(problem);
    }
    Checked::Valid {
        column_problem: columns_match(&event).err(),
        event,
    }
}

/// Records what checking event `id` found in `report`; the event if it stays in the fold.
fn record_checked<T>(report: &mut VerifyReport, id: &str, checked: Checked<T>) -> Option<T> {
    let bad = |problem: String| BadRecord {
        id: id.to_string(),
        problem,
    };
    match checked {
        Checked::Valid {
            event,
            column_problem,
        } => {
            if let Some(problem) = column_problem {
                report.bad_records.push(bad(problem.to_string()));
            }
            Some(event)
        }
        Checked::BadSignature => {
            report.bad_signatures.push(id.to_string());
            None
        }
        Checked::BadRecord(problem) => {
            report.bad_records.push(bad(problem));
            None
        }
    }
}

/// Why a stored id does not name its body, if it does not.
pub(super) fn id_problem(stored: &str, recomputed: Result<String, String>) -> Option<String> {
    match recomputed {
        Ok(id) if id == stored => None,
        Ok(id) => Some(format!("body hashes to {id}")),
        Err(error) => Some(format!("body is not canonical: {error}")),
    }
}
