//! History sync in the store: the events of a span of epochs served page by page (each proof
//! with its status), and a peer's copy adopted only when the certified epoch then gives exactly
//! the roots its certificate names.

use std::collections::HashSet;

use serde::Deserialize;

use super::checkpoints::{balances_root, events_root, record, state_after, validators_of};
use super::*;
use crate::ledger::checkpoint::CertificateRecord;
use crate::ledger::verify::offer;

/// A stored proof and the status it holds there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryProof {
    pub signed: SignedProof,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One page of a span of epochs' events, in the fold's order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryPage {
    pub proofs: Vec<HistoryProof>,
    pub transactions: Vec<SignedTransaction>,
    /// The last event's (timestamp_ms, id) when more follow: where the next page starts.
    pub next: Option<(u64, String)>,
}

/// What adopting a peer's copy of certified history changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Adopted {
    pub proofs_added: u64,
    pub transactions_added: u64,
    /// Proofs this node held with another status (e.g. pending: it missed the verdict).
    pub statuses_changed: u64,
    /// Events this node held in the span that the certified history does not have (the
    /// network refused or never saw them): removed.
    pub removed: u64,
}

/// The events dated in epochs `from..=to` after `after`, in the fold's order, until their bodies
/// reach `max_bytes` (at least one event per page).
fn page(
    conn: &Connection,
    schedule: &RewardSchedule,
    (from, to): (u64, u64),
    after: Option<&(u64, String)>,
    max_bytes: usize,
) -> Fallible<HistoryPage> {
    let clamp = |ms: u64| sql_int(ms.min(i64::MAX as u64));
    let since = clamp(schedule.epoch_start_ms(from));
    let until = clamp(schedule.epoch_start_ms(to.saturating_add(1)));
    let (after_ms, after_id) = match after {
        Some((ms, id)) => (clamp(*ms), id.as_str()),
        None => (i64::MIN, ""),
    };
    // Each table in (timestamp, id) order from its index (migration 8), merged here: one
    // ORDER BY over both would sort the rest of the span for every page.
    let read = |table: &str| -> Fallible<(Vec<StoredEvent>, bool)> {
        let mut statement = conn.prepare_cached(&format!(
            "SELECT timestamp_ms, id, body, status, reason FROM {table}
             WHERE timestamp_ms >= ?1 AND timestamp_ms < ?2 AND (timestamp_ms, id) > (?3, ?4)
             ORDER BY timestamp_ms, id LIMIT ?5"
        ))?;
        let rows = statement
            .query_map(
                params![since, until, after_ms, after_id, PAGE_ROWS as i64],
                |row| {
                    Ok(StoredEvent {
                        key: (from_sql_int(row.get(0)?), row.get(1)?),
                        body: row.get(2)?,
                        status: row.get(3)?,
                        reason: row.get(4)?,
                    })
                },
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let more = rows.len() == PAGE_ROWS;
        Ok((rows, more))
    };
    let (proofs, more_proofs) = read("proofs")?;
    let (txs, more_txs) = read("transactions")?;
    let (mut proofs, mut txs) = (proofs.into_iter().peekable(), txs.into_iter().peekable());
    let mut page = HistoryPage::default();
    let mut bytes = 0;
    loop {
        let take_proof = match (proofs.peek(), txs.peek()) {
            (Some(p), Some(t)) => Some(p.key < t.key),
            // A table whose read ended at its limit may hold rows before the other's next one:
            // the page ends here.
            (Some(_), None) if more_txs => None,
            (None, Some(_)) if more_proofs => None,
            (Some(_), None) => Some(true),
            (None, Some(_)) => Some(false),
            (None, None) if more_proofs || more_txs => None,
            (None, None) => return Ok(page),
        };
        let Some(take_proof) = take_proof.filter(|_| bytes < max_bytes) else {
            page.next = last_key(&page);
            return Ok(page);
        };
        let row = if take_proof {
            proofs.next()
        } else {
            txs.next()
        };
        let Some(row) = row else {
            return Ok(page);
        };
        bytes += row.body.len();
        let id = &row.key.1;
        if take_proof {
            page.proofs.push(HistoryProof {
                signed: parse_json(&row.body, || format!("proof {id}"))?,
                status: row.status,
                reason: row.reason,
            });
        } else {
            page.transactions
                .push(parse_json(&row.body, || format!("transaction {id}"))?);
        }
    }
}

/// The (timestamp, id) of the page's last event in the fold's order.
fn last_key(page: &HistoryPage) -> Option<(u64, String)> {
    let proof = page
        .proofs
        .last()
        .and_then(|p| Some((p.signed.proof.timestamp_ms, proof_id(&p.signed.proof).ok()?)));
    let tx = page
        .transactions
        .last()
        .and_then(|t| Some((t.tx.timestamp_ms, tx_id(&t.tx).ok()?)));
    proof.max(tx)
}

/// Rows read from each table per page at most: more than a page of ~1 KiB events holds.
const PAGE_ROWS: usize = 1024;

/// One stored event as a page reads it.
struct StoredEvent {
    key: (u64, String),
    body: String,
    status: String,
    reason: Option<String>,
}

fn mismatch(problem: impl Into<String>) -> LedgerErrorKind {
    LedgerErrorKind::Mismatch(problem.into())
}

impl LedgerStore {
    /// A page of the events dated in epochs `from..=to` after `after` (see [`HistoryPage`]).
    pub fn history_page(
        &self,
        from: u64,
        to: u64,
        after: Option<&(u64, String)>,
        max_bytes: usize,
    ) -> Result<HistoryPage, LedgerError> {
        page(&self.conn, &self.schedule, (from, to), after, max_bytes)
            .map_err(|kind| self.error(kind))
    }

    /// Adopts a peer's copy of the events dated in epochs `from..=record.epoch` (their
    /// signatures checked by the caller) with the certificate of the last: the events this node
    /// lacks are stored, every proof takes the status the copy gives it, and the certificate is
    /// stored. All in one SQLite transaction, refused (nothing written, a `Mismatch` error)
    /// unless the certified epoch then gives exactly the certificate's roots: a copy that leaves
    /// out, adds or alters anything is not adopted.
    pub fn adopt_history(
        &mut self,
        from: u64,
        certificate: &CertificateRecord,
        proofs: &[HistoryProof],
        transactions: &[SignedTransaction],
    ) -> Result<Adopted, LedgerError> {
        // The kept states before epochs after `from` may not hold once the span is adopted.
        let bases: BTreeMap<u64, LedgerState> = self
            .bases
            .range(..=from)
            .map(|(epoch, base)| (*epoch, base.clone()))
            .collect();
        let schedule = self.schedule.clone();
        let epoch = certificate.epoch;
        let span = schedule.epoch_start_ms(from)..schedule.epoch_start_ms(epoch.saturating_add(1));
        let received_ms = unix_ms();
        let result = self.commit_batch(
            |db| {
                let mut dated = proofs
                    .iter()
                    .map(|p| p.signed.proof.timestamp_ms)
                    .chain(transactions.iter().map(|t| t.tx.timestamp_ms));
                if let Some(outside) = dated.find(|t| !span.contains(t)) {
                    return Err(mismatch(format!(
                        "an event dated {outside} is outside epochs {from}..={epoch}"
                    )));
                }
                let batch = proofs
                    .iter()
                    .map(|p| {
                        let offered = offer(&p.signed.proof, &schedule)
                            .map_err(|e| mismatch(format!("a synced proof: {e}")))?;
                        Ok((p.signed.clone(), offered.reward))
                    })
                    .collect::<Fallible<Vec<_>>>()?;
                let stored = stage_proofs(db, &batch, received_ms)?;
                if let Some(refused) = stored.value.iter().find(|outcome| {
                    matches!(outcome, InsertOutcome::Replay | InsertOutcome::Malformed(_))
                }) {
                    return Err(mismatch(format!("a synced proof was refused: {refused:?}")));
                }
                let mut statuses_changed = 0;
                let mut set_status = db.prepare_cached(
                    "UPDATE proofs SET status = ?2, reason = ?3
                     WHERE id = ?1 AND (status != ?2 OR reason IS NOT ?3)",
                )?;
                for p in proofs {
                    let status =
                        ProofStatus::parse(&p.status).map_err(|e| mismatch(e.to_string()))?;
                    let id = proof_id(&p.signed.proof).map_err(|e| mismatch(e.to_string()))?;
                    statuses_changed +=
                        set_status.execute(params![id, status.as_str(), p.reason])?;
                }
                let txs = stage_transactions(db, transactions, received_ms)?;
                if txs
                    .value
                    .iter()
                    .any(|t| matches!(t, StagedTx::Done(TxInsertOutcome::Malformed(_))))
                {
                    return Err(mismatch("a synced transaction is malformed"));
                }
                let removed = remove_uncertified(db, &span, proofs, transactions)?;
                if let RecordOutcome::Conflict { stored } = record(db, certificate)? {
                    return Err(mismatch(format!(
                        "this node stores another checkpoint of epoch {epoch}: {stored}"
                    )));
                }
                Ok(Staged {
                    value: Adopted {
                        proofs_added: stored.proofs_added,
                        transactions_added: txs.transactions_added,
                        statuses_changed: statuses_changed as u64,
                        removed,
                    },
                    events: load_event_rows(db, span.start, span.end)?,
                    proofs_added: stored.proofs_added,
                    transactions_added: txs.transactions_added,
                })
            },
            |db, adopted, _| {
                check_certified(db, &schedule, &bases, certificate)?;
                Ok(adopted)
            },
        );
        let adopted = result.map_err(|kind| self.error(kind))?;
        if adopted.removed > 0 {
            let counted = count_rows(&self.conn, "SELECT COUNT(*) FROM proofs").and_then(|p| {
                Ok((
                    p,
                    count_rows(&self.conn, "SELECT COUNT(*) FROM transactions")?,
                ))
            });
            (self.stored_proofs, self.stored_transactions) =
                counted.map_err(|kind| self.error(kind))?;
        }
        Ok(adopted)
    }

    /// Stores the certificate of an epoch before the one this node's history was adopted up to,
    /// once the stored events give exactly what it names (a `Mismatch` error otherwise, nothing
    /// stored). Its signatures are checked by the caller.
    pub fn record_certified(
        &mut self,
        certificate: &CertificateRecord,
    ) -> Result<RecordOutcome, LedgerError> {
        check_certified(&self.conn, &self.schedule, &self.bases, certificate)
            .and_then(|()| record(&self.conn, certificate))
            .map_err(|kind| self.error(kind))
    }
}

/// Whether the stored events give exactly what `certificate` names: its validators are the
/// trainers the epoch before kept, the epoch's events give its events root and the balances
/// after it its balances root.
fn check_certified(
    db: &Connection,
    schedule: &RewardSchedule,
    bases: &BTreeMap<u64, LedgerState>,
    certificate: &CertificateRecord,
) -> Fallible<()> {
    let epoch = certificate.epoch;
    let (certified, _) = certificate.decode().map_err(mismatch)?;
    if Ok(validators_of(db, schedule, epoch)?) != certificate.validator_set() {
        return Err(mismatch(format!(
            "epoch {epoch}'s validators are not the trainers the epoch before kept"
        )));
    }
    if events_root(db, schedule, epoch)? != certified.events_root {
        return Err(mismatch(format!(
            "epoch {epoch}'s events do not give the certified events root"
        )));
    }
    if balances_root(&state_after(db, schedule, bases, epoch)?) != certified.balances_root {
        return Err(mismatch(format!(
            "the balances after epoch {epoch} are not the certified ones"
        )));
    }
    Ok(())
}

/// Deletes the events dated in `span` that the adopted copy does not have: the certified
/// history is the one history, and the same copy gives every node the same set.
fn remove_uncertified(
    db: &Connection,
    span: &std::ops::Range<u64>,
    proofs: &[HistoryProof],
    transactions: &[SignedTransaction],
) -> Fallible<u64> {
    let mut kept = HashSet::new();
    for p in proofs {
        kept.insert(proof_id(&p.signed.proof).map_err(|e| mismatch(e.to_string()))?);
    }
    for t in transactions {
        kept.insert(tx_id(&t.tx).map_err(|e| mismatch(e.to_string()))?);
    }
    let clamp = |ms: u64| sql_int(ms.min(i64::MAX as u64));
    let (since, until) = (clamp(span.start), clamp(span.end));
    let mut removed = 0;
    for table in ["proofs", "transactions"] {
        let ids: Vec<String> = db
            .prepare_cached(&format!(
                "SELECT id FROM {table} WHERE timestamp_ms >= ?1 AND timestamp_ms < ?2"
            ))?
            .query_map(params![since, until], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut delete = db.prepare_cached(&format!("DELETE FROM {table} WHERE id = ?1"))?;
        for id in ids.iter().filter(|id| !kept.contains(*id)) {
            removed += delete.execute([id])? as u64;
        }
    }
    Ok(removed)
}
