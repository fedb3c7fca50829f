//! `ledger verify`: a database re-checked from its events alone.

use super::*;

/// Re-checks a ledger database from its events alone: every stored proof and transaction
/// against the given signature checks (not verification's freshness: stored events are old),
/// every id against its body, training statuses against the verdicts, uptime statuses against
/// the witness tallies (`witness::decide` again), then folds the valid
/// events and compares each account, each event's status and the network totals with what is
/// stored. Opens the file read-only and reads one snapshot, so a running node may keep writing.
pub fn verify_store(
    path: &Path,
    schedule: RewardSchedule,
    check: impl Fn(&SignedProof) -> bool,
    check_tx: impl Fn(&SignedTransaction) -> bool,
) -> Result<VerifyReport, LedgerError> {
    verify_at(path, &schedule, &check, &check_tx).map_err(|kind| LedgerError {
        path: path.to_owned(),
        kind,
    })
}

pub(super) fn verify_at(
    path: &Path,
    schedule: &RewardSchedule,
    check: &dyn Fn(&SignedProof) -> bool,
    check_tx: &dyn Fn(&SignedTransaction) -> bool,
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

    let proofs = verify_proofs(&snapshot, &verdicts, &tallies, check, &mut report)?;
    let txs = verify_transactions(&snapshot, check_tx, &mut report)?;
    let mut state = LedgerState::default();
    let fold = fold_onto(&mut state, &proofs, &txs, schedule);
    let show_credit = |credit: Option<Nano>| credit.map_or("none".into(), |c| c.to_string());
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
    Ok(report)
}

pub(super) fn show_status(status: &str, reason: Option<&str>) -> String {
    match reason {
        Some(reason) => format!("{status} ({reason})"),
        None => status.to_owned(),
    }
}

pub(super) fn verify_proofs(
    db: &Connection,
    verdicts: &HashMap<(u64, String), StoredVerdict>,
    tallies: &HashMap<String, Tally>,
    check: &dyn Fn(&SignedProof) -> bool,
    report: &mut VerifyReport,
) -> Fallible<Vec<ProofRow>> {
    let mut statement = db.prepare(
        "SELECT id, node_id, timestamp_ms, base_reward, status, reason, credited_amount, body
         FROM proofs",
    )?;
    let mut rows = statement.query([])?;
    let mut proofs = Vec::new();
    while let Some(row) = rows.next()? {
        report.proofs += 1;
        let id: String = row.get(0)?;
        let (node_id, timestamp_ms) = (row.get::<_, String>(1)?, get_u64(row, 2)?);
        let Some(signed) = checked_event(
            &id,
            &row.get::<_, String>(7)?,
            report,
            check,
            |s: &SignedProof| proof_id(&s.proof).map_err(|e| e.to_string()),
            |s| {
                (s.proof.node_id == node_id && s.proof.timestamp_ms == timestamp_ms)
                    .then_some(())
                    .ok_or("node_id or timestamp_ms column differs from the body")
            },
        ) else {
            continue;
        };
        let proof = signed.proof;
        let (status, reason) = match proof.kind {
            ProofKind::Training => {
                let key = (proof.outer_round, proof.delta_hash.clone());
                training_status(&proof.node_id, verdicts.get(&key))
            }
            ProofKind::Uptime => uptime_status(&proof.node_id, tallies.get(&id)),
            ProofKind::Data | ProofKind::Inference => receipt_status(&proof),
        };
        let stored_status: String = row.get(4)?;
        let stored_reason: Option<String> = row.get(5)?;
        if (stored_status.as_str(), stored_reason.as_deref())
            != (status.as_str(), reason.as_deref())
        {
            report.event_mismatches.push(EventMismatch {
                id: id.clone(),
                field: "status",
                stored: show_status(&stored_status, stored_reason.as_deref()),
                recomputed: show_status(status.as_str(), reason.as_deref()),
            });
        }
        proofs.push(ProofRow {
            id,
            node_id: proof.node_id,
            timestamp_ms: proof.timestamp_ms,
            base_reward: get_u64(row, 3)?,
            credited: status == ProofStatus::Credited,
            stored_credit: row.get::<_, Option<i64>>(6)?.map(from_sql_int),
        });
    }
    Ok(proofs)
}

pub(super) fn verify_transactions(
    db: &Connection,
    check_tx: &dyn Fn(&SignedTransaction) -> bool,
    report: &mut VerifyReport,
) -> Fallible<Vec<TxRow>> {
    let mut statement =
        db.prepare("SELECT id, sender, timestamp_ms, status, reason, body FROM transactions")?;
    let mut rows = statement.query([])?;
    let mut txs = Vec::new();
    while let Some(row) = rows.next()? {
        report.transactions += 1;
        let id: String = row.get(0)?;
        let (sender, timestamp_ms) = (row.get::<_, String>(1)?, get_u64(row, 2)?);
        let Some(signed) = checked_event(
            &id,
            &row.get::<_, String>(5)?,
            report,
            check_tx,
            |s: &SignedTransaction| tx_id(&s.tx).map_err(|e| e.to_string()),
            |s| {
                (s.tx.from == sender && s.tx.timestamp_ms == timestamp_ms)
                    .then_some(())
                    .ok_or("sender or timestamp_ms column differs from the body")
            },
        ) else {
            continue;
        };
        let tx = signed.tx;
        txs.push(TxRow {
            id,
            tx,
            stored_status: row.get(3)?,
            stored_reason: row.get(4)?,
        });
    }
    Ok(txs)
}

/// A stored event's body, if it parses, passes `check` (its signature) and hashes to its id;
/// otherwise the problem goes into `report` and the event is left out of the fold. Indexed columns
/// that disagree with the body are reported too, but the event (its body is what counts) stays.
pub(super) fn checked_event<T: serde::de::DeserializeOwned>(
    id: &str,
    body: &str,
    report: &mut VerifyReport,
    check: &dyn Fn(&T) -> bool,
    id_of: impl Fn(&T) -> Result<String, String>,
    columns_match: impl Fn(&T) -> Result<(), &'static str>,
) -> Option<T> {
    let bad = |report: &mut VerifyReport, problem: String| {
        report.bad_records.push(BadRecord {
            id: id.to_string(),
            problem,
        })
    };
    let event = match serde_json::from_str::<T>(body) {
        Ok(event) => event,
        Err(error) => {
            bad(report, format!("body is not a signed event: {error}"));
            return None;
        }
    };
    if !check(&event) {
        report.bad_signatures.push(id.to_string());
        return None;
    }
    if let Some(problem) = id_problem(id, id_of(&event)) {
        bad(report, problem);
        return None;
    }
    if let Err(problem) = columns_match(&event) {
        bad(report, problem.to_string());
    }
    Some(event)
}

/// Why a stored id does not name its body, if it does not.
pub(super) fn id_problem(stored: &str, recomputed: Result<String, String>) -> Option<String> {
    match recomputed {
        Ok(id) if id == stored => None,
        Ok(id) => Some(format!("body hashes to {id}")),
        Err(error) => Some(format!("body is not canonical: {error}")),
    }
}
