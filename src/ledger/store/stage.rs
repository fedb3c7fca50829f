//! Staging a write call: inserting its rows and settling statuses (verdicts, witness tallies,
//! receipts) before the fold.

use rayon::prelude::*;

use super::*;

/// A stored verdict on one delta.
pub(super) struct StoredVerdict {
    pub(super) node_id: String,
    pub(super) kept: bool,
    pub(super) reason: String,
}

pub(super) fn verdict_for(
    db: &Connection,
    round: u64,
    delta_hash: &str,
) -> Fallible<Option<StoredVerdict>> {
    Ok(db
        .prepare_cached(
            "SELECT node_id, kept, reason FROM verdicts WHERE outer_round = ?1 AND delta_hash = ?2",
        )?
        .query_row(params![sql_int(round), delta_hash], |row| {
            Ok(StoredVerdict {
                node_id: row.get(0)?,
                kept: row.get(1)?,
                reason: row.get(2)?,
            })
        })
        .optional()?)
}

/// A training proof's status given the verdict on its delta. A verdict on a delta another node
/// delivered rejects it: a proof cannot claim a kept delta by naming its hash.
pub(super) fn training_status(
    node_id: &str,
    verdict: Option<&StoredVerdict>,
) -> (ProofStatus, Option<String>) {
    match verdict {
        None => (ProofStatus::Pending, None),
        Some(verdict) if verdict.node_id != node_id => (
            ProofStatus::Rejected,
            Some(format!(
                "delta_rejected: the delta was delivered by {}",
                verdict.node_id
            )),
        ),
        Some(verdict) if verdict.kept => (ProofStatus::Credited, None),
        Some(verdict) => (
            ProofStatus::Rejected,
            Some(format!("delta_rejected: {}", verdict.reason)),
        ),
    }
}

/// An uptime proof's status given the tally that settled it: pending until its tally is
/// recorded, then credited or refused for good (`witness::decide`, which gives the reason either
/// way).
pub(super) fn uptime_status(node_id: &str, tally: Option<&Tally>) -> (ProofStatus, Option<String>) {
    match tally.map(|tally| decide(node_id, tally)) {
        None => (ProofStatus::Pending, None),
        Some(Ok(reason)) => (ProofStatus::Credited, Some(reason)),
        Some(Err(why)) => (ProofStatus::Rejected, Some(why)),
    }
}

pub(super) fn tally_for(db: &Connection, proof_id: &str) -> Fallible<Option<Tally>> {
    let text: Option<String> = db
        .prepare_cached("SELECT tally FROM witnessed WHERE proof_id = ?1")?
        .query_row([proof_id], |row| row.get(0))
        .optional()?;
    text.map(|text| parse_json(&text, || format!("witness tally of proof {proof_id}")))
        .transpose()
}

/// The status of a data or inference proof: credited, unless no one but its claimant vouches
/// for it (no valid receipt): then it is stored and shown but credited nothing.
pub(super) fn receipt_status(proof: &Proof) -> (ProofStatus, Option<String>) {
    match unpaid_reason(proof) {
        None => (ProofStatus::Credited, None),
        Some(why) => (ProofStatus::Rejected, Some(why.to_string())),
    }
}

/// What a write call's `stage` produced.
pub(super) struct Staged<S> {
    pub(super) value: S,
    /// Events the rows made effective: new credited proofs and new transactions.
    pub(super) events: EventRows,
    pub(super) proofs_added: u64,
    pub(super) transactions_added: u64,
}

pub(super) fn stage_proofs(
    db: &Connection,
    batch: &[(SignedProof, Nano)],
    received_ms: u64,
) -> Fallible<Staged<Vec<InsertOutcome>>> {
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut events = EventRows::default();
    let mut added = 0;
    let mut insert = db.prepare_cached(
        "INSERT INTO proofs (id, node_id, kind, timestamp_ms, nonce, outer_round, delta_hash,
                             base_reward, status, reason, body, received_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    // A receipt check is an ECDSA verification: they run in parallel before the rows are written.
    let mut receipts: Vec<Option<(ProofStatus, Option<String>)>> = batch
        .par_iter()
        .map(|(signed, _)| {
            let kind = signed.proof.kind;
            matches!(kind, ProofKind::Data | ProofKind::Inference)
                .then(|| receipt_status(&signed.proof))
        })
        .collect();
    for ((signed, base_reward), receipt) in batch.iter().zip(&mut receipts) {
        let proof = &signed.proof;
        let id = match proof_id(proof) {
            Ok(id) => id,
            Err(rejection) => {
                outcomes.push(InsertOutcome::Malformed(rejection.to_string()));
                continue;
            }
        };
        if db
            .prepare_cached("SELECT 1 FROM proofs WHERE id = ?1")?
            .exists([&id])?
        {
            outcomes.push(InsertOutcome::Duplicate);
            continue;
        }
        if db
            .prepare_cached("SELECT 1 FROM proofs WHERE node_id = ?1 AND nonce = ?2")?
            .exists(params![proof.node_id, sql_int(proof.nonce)])?
        {
            outcomes.push(InsertOutcome::Replay);
            continue;
        }
        let (status, reason) = match proof.kind {
            ProofKind::Training => {
                let verdict = verdict_for(db, proof.outer_round, &proof.delta_hash)?;
                training_status(&proof.node_id, verdict.as_ref())
            }
            ProofKind::Uptime => uptime_status(&proof.node_id, tally_for(db, &id)?.as_ref()),
            ProofKind::Data | ProofKind::Inference => {
                receipt.take().unwrap_or_else(|| receipt_status(proof))
            }
        };
        let body = to_json(signed, || format!("proof {id}"))?;
        insert.execute(params![
            id,
            proof.node_id,
            proof_kind_name(proof.kind),
            sql_int(proof.timestamp_ms),
            sql_int(proof.nonce),
            sql_int(proof.outer_round),
            proof.delta_hash,
            sql_int(*base_reward),
            status.as_str(),
            reason,
            body,
            sql_int(received_ms),
        ])?;
        added += 1;
        if status == ProofStatus::Credited {
            events.proofs.push(ProofRow {
                id,
                node_id: proof.node_id.clone(),
                timestamp_ms: proof.timestamp_ms,
                base_reward: *base_reward,
                credited: true,
                stored_credit: None,
            });
        }
        outcomes.push(InsertOutcome::Stored(status));
    }
    Ok(Staged {
        value: outcomes,
        events,
        proofs_added: added,
        transactions_added: 0,
    })
}

/// A transaction's outcome known at staging, or the id whose outcome the fold decides.
pub(super) enum StagedTx {
    Done(TxInsertOutcome),
    Folded(String),
}

pub(super) fn stage_transactions(
    db: &Connection,
    batch: &[SignedTransaction],
    received_ms: u64,
) -> Fallible<Staged<Vec<StagedTx>>> {
    let mut staged = Vec::with_capacity(batch.len());
    let mut events = EventRows::default();
    let mut insert = db.prepare_cached(
        "INSERT INTO transactions (id, sender, kind, seq, timestamp_ms, body, status, reason,
                                   received_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8)",
    )?;
    for signed in batch {
        let tx = &signed.tx;
        let id = match tx_id(tx) {
            Ok(id) => id,
            Err(rejection) => {
                staged.push(StagedTx::Done(TxInsertOutcome::Malformed(
                    rejection.to_string(),
                )));
                continue;
            }
        };
        if db
            .prepare_cached("SELECT 1 FROM transactions WHERE id = ?1")?
            .exists([&id])?
        {
            staged.push(StagedTx::Done(TxInsertOutcome::Duplicate));
            continue;
        }
        let body = to_json(signed, || format!("transaction {id}"))?;
        insert.execute(params![
            id,
            tx.from,
            tx_kind_name(tx.kind),
            sql_int(tx.seq),
            sql_int(tx.timestamp_ms),
            body,
            UNFOLDED_TX_STATUS,
            sql_int(received_ms),
        ])?;
        events.txs.push(TxRow {
            id: id.clone(),
            tx: tx.clone(),
            stored_status: UNFOLDED_TX_STATUS.into(),
            stored_reason: None,
        });
        staged.push(StagedTx::Folded(id));
    }
    Ok(Staged {
        value: staged,
        transactions_added: events.txs.len() as u64,
        events,
        proofs_added: 0,
    })
}

/// An SQL condition on a `proofs` row: its epoch (epochs of `?E` ms) is after the newest
/// checkpoint. A checkpoint seals its epoch and every one before it: verdicts and witness
/// tallies that arrive later settle nothing there (the certificate vouches for the statuses it
/// was decided with: its events root for its epoch, its balances root for all before).
const NOT_SEALED: &str =
    "proofs.timestamp_ms / ?E > COALESCE((SELECT MAX(epoch) FROM checkpoints), -1)";

pub(super) fn stage_verdicts(
    db: &Connection,
    round: u64,
    verdicts: &[(String, String, bool, String)],
    epoch_ms: u64,
) -> Fallible<Staged<Vec<(String, ProofStatus)>>> {
    let mut settled = Vec::new();
    let mut events = EventRows::default();
    for (delta_hash, node_id, kept, reason) in verdicts {
        let inserted = db
            .prepare_cached(
                "INSERT OR IGNORE INTO verdicts (outer_round, delta_hash, node_id, kept, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![sql_int(round), delta_hash, node_id, kept, reason])?;
        if inserted == 0 {
            continue;
        }
        let verdict = StoredVerdict {
            node_id: node_id.clone(),
            kept: *kept,
            reason: reason.clone(),
        };
        let mut waiting = db.prepare_cached(&format!(
            "SELECT id, node_id, timestamp_ms, base_reward FROM proofs
             WHERE outer_round = ?1 AND delta_hash = ?2 AND kind = 'training'
               AND status = 'pending' AND {}",
            NOT_SEALED.replace("?E", "?3")
        ))?;
        let proofs = waiting
            .query_map(
                params![sql_int(round), delta_hash, sql_int(epoch_ms)],
                |row| {
                    Ok(ProofRow {
                        id: row.get(0)?,
                        node_id: row.get(1)?,
                        timestamp_ms: get_u64(row, 2)?,
                        base_reward: get_u64(row, 3)?,
                        credited: true,
                        stored_credit: None,
                    })
                },
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for proof in proofs {
            let (status, reason) = training_status(&proof.node_id, Some(&verdict));
            db.prepare_cached("UPDATE proofs SET status = ?2, reason = ?3 WHERE id = ?1")?
                .execute(params![proof.id, status.as_str(), reason])?;
            settled.push((proof.id.clone(), status));
            if status == ProofStatus::Credited {
                events.proofs.push(proof);
            }
        }
    }
    Ok(Staged {
        value: settled,
        events,
        proofs_added: 0,
        transactions_added: 0,
    })
}

pub(super) fn stage_witnessed(
    db: &Connection,
    proof_id: &str,
    tally: &Tally,
    epoch_ms: u64,
) -> Fallible<Staged<Option<ProofStatus>>> {
    let mut staged = Staged {
        value: None,
        events: EventRows::default(),
        proofs_added: 0,
        transactions_added: 0,
    };
    let pending = db
        .prepare_cached(&format!(
            "SELECT node_id, timestamp_ms, base_reward FROM proofs
             WHERE id = ?1 AND kind = 'uptime' AND status = 'pending' AND {}",
            NOT_SEALED.replace("?E", "?2")
        ))?
        .query_row(params![proof_id, sql_int(epoch_ms)], |row| {
            Ok((row.get::<_, String>(0)?, get_u64(row, 1)?, get_u64(row, 2)?))
        })
        .optional()?;
    let Some((node_id, timestamp_ms, base_reward)) = pending else {
        return Ok(staged);
    };
    let (status, reason) = uptime_status(&node_id, Some(tally));
    staged.value = Some(status);
    let text = to_json(tally, || format!("witness tally of proof {proof_id}"))?;
    db.prepare_cached("INSERT INTO witnessed (proof_id, tally) VALUES (?1, ?2)")?
        .execute(params![proof_id, text])?;
    db.prepare_cached("UPDATE proofs SET status = ?2, reason = ?3 WHERE id = ?1")?
        .execute(params![proof_id, status.as_str(), reason])?;
    if status != ProofStatus::Credited {
        return Ok(staged);
    }
    staged.events.proofs.push(ProofRow {
        id: proof_id.to_owned(),
        node_id,
        timestamp_ms,
        base_reward,
        credited: true,
        stored_credit: None,
    });
    Ok(staged)
}
