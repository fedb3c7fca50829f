//! The fold in the store: stored events loaded as rows, folded onto a base state, and what
//! changed written back (per-event columns, accounts, network totals).

use super::*;

/// A credited proof as the fold sees it, with the credited amount stored for it so far.
pub(super) struct ProofRow {
    pub(super) id: String,
    pub(super) node_id: String,
    pub(super) timestamp_ms: u64,
    pub(super) base_reward: Nano,
    pub(super) credited: bool,
    pub(super) stored_credit: Option<Nano>,
}

impl ProofRow {
    pub(super) fn event(&self) -> Event<'_> {
        Event::Proof {
            id: &self.id,
            node_id: &self.node_id,
            timestamp_ms: self.timestamp_ms,
            base_reward: self.base_reward,
            credited: self.credited,
        }
    }
}

/// A stored transaction as the fold sees it, with its stored status.
pub(super) struct TxRow {
    pub(super) id: String,
    pub(super) tx: Transaction,
    pub(super) stored_status: String,
    pub(super) stored_reason: Option<String>,
}

impl TxRow {
    pub(super) fn event(&self) -> Event<'_> {
        Event::Tx {
            id: &self.id,
            tx: &self.tx,
        }
    }
}

/// The status a new transaction row is inserted with, before the fold (in the same SQLite
/// transaction) sets the real one.
pub(super) const UNFOLDED_TX_STATUS: &str = "applied";

pub(super) fn tx_status_columns(
    outcome: &Result<Nano, TxRejection>,
) -> (&'static str, Option<String>) {
    match outcome {
        Ok(_) => ("applied", None),
        Err(rejection) => ("rejected", Some(rejection.to_string())),
    }
}

#[derive(Default)]
pub(super) struct EventRows {
    pub(super) proofs: Vec<ProofRow>,
    pub(super) txs: Vec<TxRow>,
}

impl EventRows {
    pub(super) fn is_empty(&self) -> bool {
        self.proofs.is_empty() && self.txs.is_empty()
    }

    pub(super) fn timestamps(&self) -> impl Iterator<Item = u64> {
        let proofs = self.proofs.iter().map(|row| row.timestamp_ms);
        proofs.chain(self.txs.iter().map(|row| row.tx.timestamp_ms))
    }
}

/// Every event the daemon folds dated in `since_ms..until_ms`: credited proofs (pending and
/// rejected ones change nothing) and all transactions.
pub(super) fn load_event_rows(
    conn: &Connection,
    since_ms: u64,
    until_ms: u64,
) -> Fallible<EventRows> {
    // Timestamps of 2⁶³ ms and more are stored negative (`sql_int`): they are after any start,
    // and before an end only past 2⁶³.
    let since = sql_int(since_ms.min(i64::MAX as u64));
    let last = sql_int(until_ms.saturating_sub(1).min(i64::MAX as u64));
    let huge = until_ms.saturating_sub(1) > i64::MAX as u64;
    let in_range = |t: u64| (since_ms..until_ms).contains(&t);
    // Two searches of the covering index `proofs_fold`: an OR in one WHERE scans it whole (every
    // credited proof of the history) or reads each row's table page.
    let mut statement = conn.prepare_cached(
        "SELECT id, node_id, timestamp_ms, base_reward, credited_amount FROM proofs
         WHERE status = 'credited' AND timestamp_ms >= ?1 AND timestamp_ms <= ?2
         UNION ALL
         SELECT id, node_id, timestamp_ms, base_reward, credited_amount FROM proofs
         WHERE status = 'credited' AND timestamp_ms < 0 AND ?3",
    )?;
    let proofs = statement
        .query_map(params![since, last, huge], |row| {
            Ok(ProofRow {
                id: row.get(0)?,
                node_id: row.get(1)?,
                timestamp_ms: get_u64(row, 2)?,
                base_reward: get_u64(row, 3)?,
                credited: true,
                stored_credit: row.get::<_, Option<i64>>(4)?.map(from_sql_int),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    // The query is a superset near 2⁶³; the fold needs exactly these.
    let proofs: Vec<ProofRow> = proofs
        .into_iter()
        .filter(|row| in_range(row.timestamp_ms))
        .collect();
    let mut statement = conn.prepare_cached(
        "SELECT id, body, status, reason FROM transactions
         WHERE (timestamp_ms >= ?1 AND timestamp_ms <= ?2) OR (timestamp_ms < 0 AND ?3)",
    )?;
    let mut rows = statement.query(params![since, last, huge])?;
    let mut txs = Vec::new();
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let signed: SignedTransaction =
            parse_json(&row.get::<_, String>(1)?, || format!("transaction {id}"))?;
        if !in_range(signed.tx.timestamp_ms) {
            continue;
        }
        txs.push(TxRow {
            tx: signed.tx,
            stored_status: row.get(2)?,
            stored_reason: row.get(3)?,
            id,
        });
    }
    Ok(EventRows { proofs, txs })
}

pub(super) type TxOutcomes = HashMap<String, Result<Nano, TxRejection>>;

pub(super) struct CreditChange {
    pub(super) id: String,
    pub(super) stored: Option<Nano>,
    pub(super) recomputed: Option<Nano>,
}

pub(super) struct StatusChange {
    pub(super) id: String,
    pub(super) stored: (String, Option<String>),
    pub(super) recomputed: (&'static str, Option<String>),
}

/// What folding a set of rows produced besides the state.
#[derive(Default)]
pub(super) struct Fold {
    /// The kept bases and where the newest epoch stands (`LedgerState::apply_sorted`).
    pub(super) folded: Folded,
    /// Stored per-event columns that disagree with the fold.
    pub(super) credit_changes: Vec<CreditChange>,
    pub(super) status_changes: Vec<StatusChange>,
    pub(super) tx_outcomes: TxOutcomes,
}

impl Fold {
    pub(super) fn has_changes(&self) -> bool {
        !self.credit_changes.is_empty() || !self.status_changes.is_empty()
    }
}

/// Applies the rows' events to `state` in the fold's order and diffs each event's outcome
/// against what is stored for it.
pub(super) fn fold_onto(
    state: &mut LedgerState,
    proofs: &[ProofRow],
    txs: &[TxRow],
    schedule: &RewardSchedule,
) -> Fold {
    let (mut fold, folded) = diff_rows(proofs, txs, |events, record| {
        state.apply_sorted(events, schedule, KEPT_BASES, record)
    });
    fold.folded = folded;
    fold
}

/// Runs `apply` on the rows' events with a recorder of each outcome that differs from what is
/// stored for the event (and of every transaction's outcome).
fn diff_rows<R>(
    proofs: &[ProofRow],
    txs: &[TxRow],
    apply: impl FnOnce(&mut [Event<'_>], &mut dyn FnMut(&Event<'_>, Result<Nano, TxRejection>)) -> R,
) -> (Fold, R) {
    let stored_credit: HashMap<&str, Option<Nano>> = proofs
        .iter()
        .map(|row| (row.id.as_str(), row.stored_credit))
        .collect();
    let stored_status: HashMap<&str, (&str, Option<&str>)> = txs
        .iter()
        .map(|row| {
            let status = (row.stored_status.as_str(), row.stored_reason.as_deref());
            (row.id.as_str(), status)
        })
        .collect();
    let mut events: Vec<Event<'_>> = proofs
        .iter()
        .map(ProofRow::event)
        .chain(txs.iter().map(TxRow::event))
        .collect();
    let mut fold = Fold::default();
    let result = apply(&mut events, &mut |event, outcome| match *event {
        Event::Proof { id, credited, .. } => {
            let recomputed = credited.then(|| outcome.unwrap_or(0));
            let stored = stored_credit.get(id).copied().flatten();
            if stored != recomputed {
                fold.credit_changes.push(CreditChange {
                    id: id.to_owned(),
                    stored,
                    recomputed,
                });
            }
        }
        Event::Tx { id, .. } => {
            let (status, reason) = tx_status_columns(&outcome);
            let stored = stored_status.get(id).copied().unwrap_or(("", None));
            if stored != (status, reason.as_deref()) {
                fold.status_changes.push(StatusChange {
                    id: id.to_owned(),
                    stored: (stored.0.to_owned(), stored.1.map(str::to_owned)),
                    recomputed: (status, reason),
                });
            }
            fold.tx_outcomes.insert(id.to_owned(), outcome);
        }
    });
    (fold, result)
}

pub(super) fn write_event_changes(db: &Connection, fold: &Fold) -> Fallible<()> {
    let mut credit = db.prepare_cached("UPDATE proofs SET credited_amount = ?2 WHERE id = ?1")?;
    for change in &fold.credit_changes {
        credit.execute(params![change.id, change.recomputed.map(sql_int)])?;
    }
    let mut status =
        db.prepare_cached("UPDATE transactions SET status = ?2, reason = ?3 WHERE id = ?1")?;
    for change in &fold.status_changes {
        let (text, reason) = &change.recomputed;
        status.execute(params![change.id, text, reason])?;
    }
    Ok(())
}

pub(super) fn upsert_account(db: &Connection, node_id: &str, account: &Account) -> Fallible<()> {
    db.prepare_cached(
        "INSERT INTO balances (node_id, balance, total_earned, total_spent, stake,
                               stake_locked_until_ms, proof_count, last_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (node_id) DO UPDATE SET
             balance = excluded.balance, total_earned = excluded.total_earned,
             total_spent = excluded.total_spent, stake = excluded.stake,
             stake_locked_until_ms = excluded.stake_locked_until_ms,
             proof_count = excluded.proof_count, last_seq = excluded.last_seq",
    )?
    .execute(params![
        node_id,
        sql_int(account.balance),
        sql_int(account.total_earned),
        sql_int(account.total_spent),
        sql_int(account.stake),
        sql_int(account.stake_locked_until_ms),
        sql_int(account.proof_count),
        sql_int(account.last_seq),
    ])?;
    Ok(())
}

pub(super) fn write_network(db: &Connection, state: &LedgerState) -> Fallible<()> {
    let mut statement = db.prepare_cached(
        "INSERT INTO network (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?;
    statement.execute(params!["total_minted", sql_int(state.total_minted())])?;
    statement.execute(params!["total_burned", sql_int(state.total_burned())])?;
    Ok(())
}

/// Replaces the whole balances table: after a re-fold an account can also disappear (a transfer
/// that created it no longer applies).
pub(super) fn rewrite_balances(db: &Connection, state: &LedgerState) -> Fallible<()> {
    db.execute("DELETE FROM balances", [])?;
    for (node_id, account) in state.accounts() {
        upsert_account(db, node_id, account)?;
    }
    write_network(db, state)
}

/// The balances table and network totals as stored.
pub(super) struct StoredBalances {
    pub(super) accounts: BTreeMap<String, Account>,
    pub(super) total_minted: Nano,
    pub(super) total_burned: Nano,
}

pub(super) fn read_stored_balances(conn: &Connection) -> Fallible<StoredBalances> {
    let mut statement = conn.prepare(
        "SELECT node_id, balance, total_earned, total_spent, stake, stake_locked_until_ms,
                proof_count, last_seq FROM balances",
    )?;
    let accounts = statement
        .query_map([], |row| {
            Ok((
                row.get(0)?,
                Account {
                    balance: get_u64(row, 1)?,
                    total_earned: get_u64(row, 2)?,
                    total_spent: get_u64(row, 3)?,
                    stake: get_u64(row, 4)?,
                    stake_locked_until_ms: get_u64(row, 5)?,
                    proof_count: get_u64(row, 6)?,
                    last_seq: get_u64(row, 7)?,
                },
            ))
        })?
        .collect::<rusqlite::Result<BTreeMap<String, Account>>>()?;
    let total = |key: &str| -> Fallible<Nano> {
        let value: Option<i64> = conn
            .query_row("SELECT value FROM network WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()?;
        Ok(value.map_or(0, from_sql_int))
    };
    Ok(StoredBalances {
        total_minted: total("total_minted")?,
        total_burned: total("total_burned")?,
        accounts,
    })
}

pub(super) fn account_fields(account: &Account) -> [(&'static str, u64); 7] {
    [
        ("balance", account.balance),
        ("total_earned", account.total_earned),
        ("total_spent", account.total_spent),
        ("stake", account.stake),
        ("stake_locked_until_ms", account.stake_locked_until_ms),
        ("proof_count", account.proof_count),
        ("last_seq", account.last_seq),
    ]
}

/// Every stored value that differs from `state`; an account missing on one side counts as zero.
pub(super) fn compare_balances(state: &LedgerState, stored: &StoredBalances) -> Vec<Mismatch> {
    let mut mismatches = Vec::new();
    let zero = Account::default();
    let node_ids: BTreeSet<&String> = state
        .accounts()
        .keys()
        .chain(stored.accounts.keys())
        .collect();
    for node_id in node_ids {
        let recomputed = state.account(node_id).unwrap_or(&zero);
        let kept = stored.accounts.get(node_id).unwrap_or(&zero);
        let fields = account_fields(kept)
            .into_iter()
            .zip(account_fields(recomputed));
        for ((field, stored_value), (_, recomputed_value)) in fields {
            if stored_value != recomputed_value {
                mismatches.push(Mismatch {
                    node_id: node_id.clone(),
                    field,
                    stored: stored_value,
                    recomputed: recomputed_value,
                });
            }
        }
    }
    for (field, stored_value, recomputed_value) in [
        ("total_minted", stored.total_minted, state.total_minted()),
        ("total_burned", stored.total_burned, state.total_burned()),
    ] {
        if stored_value != recomputed_value {
            mismatches.push(Mismatch {
                node_id: NETWORK_ROW.into(),
                field,
                stored: stored_value,
                recomputed: recomputed_value,
            });
        }
    }
    mismatches
}

/// The fold after a write call, not yet adopted (its SQLite transaction has not committed).
pub(super) struct Settled {
    pub(super) state: LedgerState,
    pub(super) fold: Fold,
    /// The bases after this fold; `None`: unchanged.
    pub(super) bases: Option<BTreeMap<u64, LedgerState>>,
}

/// Where a write call's fold started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FoldedFrom {
    /// The current state: the new events all sort after the newest epoch's last event.
    Head,
    /// The kept base of this epoch.
    Base(u64),
    /// An empty ledger.
    Start,
}

/// Settles a write call's new events. When they all extend the newest epoch at its end within
/// its emission, they are applied onto the current state (`LedgerState::extend_epoch`): no
/// stored event is read. Otherwise the stored events are folded again from the start of the
/// newest epoch whose base (the state before it) no new event precedes, onto that base, or from
/// the start when no kept base is early enough. Then what changed is written: per-event columns,
/// accounts, network totals.
pub(super) fn settle(
    db: &Connection,
    state: &LedgerState,
    bases: &BTreeMap<u64, LedgerState>,
    head: Option<&EpochHead>,
    new: &EventRows,
    schedule: &RewardSchedule,
) -> Fallible<Settled> {
    let (next, mut fold, from) = match extend_head(state, bases, head, new, schedule) {
        Some((next, fold)) => (next, fold, FoldedFrom::Head),
        None => {
            let first_new_epoch = new.timestamps().map(|t| schedule.epoch_of(t)).min();
            let start = first_new_epoch.and_then(|first| bases.range(..=first).next_back());
            let (since_ms, mut next, from) = match start {
                Some((&epoch, base)) => (
                    schedule.epoch_start_ms(epoch),
                    base.clone(),
                    FoldedFrom::Base(epoch),
                ),
                None => (0, LedgerState::default(), FoldedFrom::Start),
            };
            let rows = load_event_rows(db, since_ms, u64::MAX)?;
            let fold = fold_onto(&mut next, &rows.proofs, &rows.txs, schedule);
            (next, fold, from)
        }
    };
    write_event_changes(db, &fold)?;
    write_balance_changes(db, state, &next)?;
    let rebased = next_bases(bases, from, std::mem::take(&mut fold.folded.bases));
    if let Some(rebased) = &rebased {
        write_bases(db, bases, rebased, schedule)?;
    }
    Ok(Settled {
        state: next,
        fold,
        bases: rebased,
    })
}

/// Folds the stored events from the oldest of `bases` (from the start when there is none): the
/// state, what differs from the stored per-event columns, and the bases then.
pub(super) fn fold_stored(
    conn: &Connection,
    schedule: &RewardSchedule,
    bases: &BTreeMap<u64, LedgerState>,
) -> Fallible<(LedgerState, Fold, BTreeMap<u64, LedgerState>)> {
    let (since_ms, mut state, from) = match bases.first_key_value() {
        Some((&epoch, base)) => (
            schedule.epoch_start_ms(epoch),
            base.clone(),
            FoldedFrom::Base(epoch),
        ),
        None => (0, LedgerState::default(), FoldedFrom::Start),
    };
    let rows = load_event_rows(conn, since_ms, u64::MAX)?;
    let mut fold = fold_onto(&mut state, &rows.proofs, &rows.txs, schedule);
    let refolded = std::mem::take(&mut fold.folded.bases);
    let bases = next_bases(bases, from, refolded).unwrap_or_default();
    Ok((state, fold, bases))
}

/// The bases after a fold that started `from` and recomputed `refolded`: those before the epoch
/// it started from still hold (no event before them changed), and all of them when it started
/// from the current state; at most `KEPT_BASES`, the newest. `None` when they are unchanged.
pub(super) fn next_bases(
    kept: &BTreeMap<u64, LedgerState>,
    from: FoldedFrom,
    refolded: Vec<(u64, LedgerState)>,
) -> Option<BTreeMap<u64, LedgerState>> {
    let mut bases: BTreeMap<u64, LedgerState> = match from {
        FoldedFrom::Head if refolded.is_empty() => return None,
        FoldedFrom::Head => kept.clone(),
        FoldedFrom::Base(epoch) => kept
            .range(..epoch)
            .map(|(&e, base)| (e, base.clone()))
            .collect(),
        FoldedFrom::Start => BTreeMap::new(),
    };
    bases.extend(refolded);
    while bases.len() > KEPT_BASES {
        bases.pop_first();
    }
    Some(bases)
}

/// Mirrors `after` in the epoch_bases table, writing only the bases that changed.
pub(super) fn write_bases(
    db: &Connection,
    before: &BTreeMap<u64, LedgerState>,
    after: &BTreeMap<u64, LedgerState>,
    schedule: &RewardSchedule,
) -> Fallible<()> {
    for epoch in before.keys().filter(|epoch| !after.contains_key(epoch)) {
        db.prepare_cached("DELETE FROM epoch_bases WHERE epoch = ?1")?
            .execute([sql_int(*epoch)])?;
    }
    let schedule = to_json(schedule, || "the reward schedule".into())?;
    for (epoch, base) in after {
        if before.get(epoch) != Some(base) {
            let state = to_json(base, || format!("the base of epoch {epoch}"))?;
            db.prepare_cached(
                "INSERT INTO epoch_bases (epoch, state, schedule) VALUES (?1, ?2, ?3)
                 ON CONFLICT (epoch) DO UPDATE SET state = excluded.state,
                     schedule = excluded.schedule",
            )?
            .execute(params![sql_int(*epoch), state, schedule])?;
        }
    }
    Ok(())
}

/// The stored bases folded with `schedule`; those of another schedule are of no use.
pub(super) fn read_bases(
    conn: &Connection,
    schedule: &RewardSchedule,
) -> Fallible<BTreeMap<u64, LedgerState>> {
    let current = to_json(schedule, || "the reward schedule".into())?;
    let mut statement = conn.prepare("SELECT epoch, state, schedule FROM epoch_bases")?;
    let mut rows = statement.query([])?;
    let mut bases = BTreeMap::new();
    while let Some(row) = rows.next()? {
        let (epoch, text, folded_with): (u64, String, String) =
            (get_u64(row, 0)?, row.get(1)?, row.get(2)?);
        if folded_with == current {
            let base = parse_json(&text, || format!("the stored base of epoch {epoch}"))?;
            bases.insert(epoch, base);
        }
    }
    Ok(bases)
}

/// The new events applied onto a copy of `state` when they all sort after the newest epoch's
/// last event: within that epoch and its emission (`LedgerState::extend_epoch`), or all in later
/// epochs (then `state` is the base of the first of them).
fn extend_head(
    state: &LedgerState,
    bases: &BTreeMap<u64, LedgerState>,
    head: Option<&EpochHead>,
    new: &EventRows,
    schedule: &RewardSchedule,
) -> Option<(LedgerState, Fold)> {
    let head = head?;
    let mut events =
        (new.proofs.iter().map(ProofRow::event)).chain(new.txs.iter().map(TxRow::event));
    if !events.all(|event| head.precedes(&event)) {
        return None;
    }
    let first_new_epoch = new.timestamps().map(|t| schedule.epoch_of(t)).min()?;
    let mut next = state.clone();
    if first_new_epoch > head.epoch {
        let (mut fold, folded) = diff_rows(&new.proofs, &new.txs, |events, record| {
            next.apply_sorted(events, schedule, KEPT_BASES, record)
        });
        fold.folded = folded;
        return Some((next, fold));
    }
    let base = bases.get(&head.epoch)?;
    let (mut fold, extended) = diff_rows(&new.proofs, &new.txs, |events, record| {
        next.extend_epoch(base, head, events, schedule, record)
    });
    fold.folded.head = Some(extended?);
    Some((next, fold))
}

/// Writes the accounts that differ between `before` and `after` (a re-fold can also remove one:
/// a transfer that created it no longer applies) and the network totals.
pub(super) fn write_balance_changes(
    db: &Connection,
    before: &LedgerState,
    after: &LedgerState,
) -> Fallible<()> {
    let node_ids: BTreeSet<&String> = before
        .accounts()
        .keys()
        .chain(after.accounts().keys())
        .collect();
    for node_id in node_ids {
        match (before.account(node_id), after.account(node_id)) {
            (old, Some(new)) if old != Some(new) => upsert_account(db, node_id, new)?,
            (Some(_), None) => {
                db.prepare_cached("DELETE FROM balances WHERE node_id = ?1")?
                    .execute([node_id])?;
            }
            _ => {}
        }
    }
    write_network(db, after)
}
