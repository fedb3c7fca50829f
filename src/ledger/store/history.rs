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
    let mut statement = conn.prepare_cached(
        "SELECT timestamp_ms, id, 'p', body, status, reason FROM proofs
         WHERE timestamp_ms >= ?1 AND timestamp_ms < ?2
           AND (timestamp_ms > ?3 OR (timestamp_ms = ?3 AND id > ?4))
         UNION ALL
         SELECT timestamp_ms, id, 't', body, status, reason FROM transactions
         WHERE timestamp_ms >= ?1 AND timestamp_ms < ?2
           AND (timestamp_ms > ?3 OR (timestamp_ms = ?3 AND id > ?4))
         ORDER BY 1, 2",
    )?;
    let mut rows = statement.query(params![since, until, after_ms, after_id])?;
    let mut page = HistoryPage::default();
    let (mut bytes, mut last_key) = (0, (0, String::new()));
    while let Some(row) = rows.next()? {
        if bytes >= max_bytes {
            page.next = Some(last_key);
            break;
        }
        let (timestamp, id, kind, body): (i64, String, String, String) =
            (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?);
        bytes += body.len();
        if kind == "p" {
            page.proofs.push(HistoryProof {
                signed: parse_json(&body, || format!("proof {id}"))?,
                status: row.get(4)?,
                reason: row.get(5)?,
            });
        } else {
            page.transactions
                .push(parse_json(&body, || format!("transaction {id}"))?);
        }
        last_key = (from_sql_int(timestamp), id);
    }
    Ok(page)
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
                let (certified, _) = certificate.decode().map_err(mismatch)?;
                if Ok(validators_of(db, &schedule, epoch)?) != certificate.validator_set() {
                    return Err(mismatch(format!(
                        "epoch {epoch}'s validators are not the trainers the epoch before kept"
                    )));
                }
                let state = state_after(db, &schedule, &bases, epoch)?;
                if events_root(db, &schedule, epoch)? != certified.events_root {
                    return Err(mismatch(format!(
                        "epoch {epoch}'s events do not give the certified events root"
                    )));
                }
                if balances_root(&state) != certified.balances_root {
                    return Err(mismatch(format!(
                        "the balances after epoch {epoch} are not the certified ones"
                    )));
                }
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
