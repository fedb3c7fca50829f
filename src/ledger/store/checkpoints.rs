//! Checkpoints in the store: what this node computes for an epoch (the root of its events with
//! their statuses, the root of the balances after it), who validates an epoch, and the decided
//! certificates.

use sha2::{Digest, Sha256};

use super::*;
use crate::ledger::checkpoint::{CertificateRecord, Checkpoint, Validator, ValidatorSet};

/// SHA-256 over the epoch's events in the fold's order (timestamp, id), each with what decides
/// its effect: a proof's status and credited amount, a transaction's status.
pub(super) fn events_root(
    conn: &Connection,
    schedule: &RewardSchedule,
    epoch: u64,
) -> Fallible<[u8; 32]> {
    let (since, until) = epoch_bounds(schedule, epoch);
    let mut statement = conn.prepare_cached(
        "SELECT timestamp_ms, id, 'p', status, credited_amount FROM proofs
         WHERE timestamp_ms >= ?1 AND timestamp_ms < ?2
         UNION ALL
         SELECT timestamp_ms, id, 't', status, NULL FROM transactions
         WHERE timestamp_ms >= ?1 AND timestamp_ms < ?2
         ORDER BY 1, 2",
    )?;
    let mut rows = statement.query(params![since, until])?;
    let mut hasher = Sha256::new();
    hasher.update(b"neuroshard/events/v1");
    while let Some(row) = rows.next()? {
        let (timestamp, id, kind, status): (i64, String, String, String) =
            (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?);
        let credited: Option<i64> = row.get(4)?;
        hasher.update(kind.as_bytes());
        hasher.update(timestamp.to_be_bytes());
        hasher.update(id.as_bytes());
        hasher.update([0]);
        hasher.update(status.as_bytes());
        hasher.update([0]);
        hasher.update(credited.map_or(u64::MAX, from_sql_int).to_be_bytes());
    }
    Ok(hasher.finalize().into())
}

/// The epoch's stored timestamp range [since, until) as SQL integers (epochs near 2⁶³ ms hold
/// nothing a fresh event can carry).
fn epoch_bounds(schedule: &RewardSchedule, epoch: u64) -> (i64, i64) {
    let clamp = |ms: u64| sql_int(ms.min(i64::MAX as u64));
    (
        clamp(schedule.epoch_start_ms(epoch)),
        clamp(schedule.epoch_start_ms(epoch.saturating_add(1))),
    )
}

/// SHA-256 over every account (in node_id order) and the network totals.
pub fn balances_root(state: &LedgerState) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"neuroshard/balances/v1");
    for (node_id, account) in state.accounts() {
        hasher.update((node_id.len() as u32).to_be_bytes());
        hasher.update(node_id.as_bytes());
        for (_, value) in account_fields(account) {
            hasher.update(value.to_be_bytes());
        }
    }
    hasher.update(state.total_minted().to_be_bytes());
    hasher.update(state.total_burned().to_be_bytes());
    hasher.finalize().into()
}

/// The state after `epoch`: folded from the newest kept base at or before it (from the start
/// when none is), through the end of the epoch.
pub(super) fn state_after(
    conn: &Connection,
    schedule: &RewardSchedule,
    bases: &BTreeMap<u64, LedgerState>,
    epoch: u64,
) -> Fallible<LedgerState> {
    let (since_ms, mut state) = match bases.range(..=epoch).next_back() {
        Some((&from, base)) => (schedule.epoch_start_ms(from), base.clone()),
        None => (0, LedgerState::default()),
    };
    fold_between(
        conn,
        schedule,
        &mut state,
        since_ms,
        schedule.epoch_start_ms(epoch.saturating_add(1)),
    )?;
    Ok(state)
}

/// Applies the events dated in `since_ms..until_ms` (whole epochs) onto `state`.
pub(super) fn fold_between(
    conn: &Connection,
    schedule: &RewardSchedule,
    state: &mut LedgerState,
    since_ms: u64,
    until_ms: u64,
) -> Fallible<()> {
    let rows = load_event_rows(conn, since_ms, until_ms)?;
    fold_onto(state, &rows.proofs, &rows.txs, schedule);
    Ok(())
}

/// The validators of `epoch`: the nodes whose training the rounds of the epoch before kept
/// (credited training proofs), each with one unit of power per kept round. Deltas are kept by
/// robust aggregation weighted by admitted weight, so identities that trained nothing the
/// network kept have no say, however many there are.
pub(super) fn validators_of(
    conn: &Connection,
    schedule: &RewardSchedule,
    epoch: u64,
) -> Fallible<ValidatorSet> {
    let Some(previous) = epoch.checked_sub(1) else {
        return Ok(ValidatorSet::new([]));
    };
    let (since, until) = epoch_bounds(schedule, previous);
    let mut statement = conn.prepare_cached(
        "SELECT node_id, body FROM proofs
         WHERE kind = 'training' AND status = 'credited'
           AND timestamp_ms >= ?1 AND timestamp_ms < ?2",
    )?;
    let mut rows = statement.query(params![since, until])?;
    let mut kept: BTreeMap<String, (secp256k1::PublicKey, u64)> = BTreeMap::new();
    while let Some(row) = rows.next()? {
        let (node_id, body): (String, String) = (row.get(0)?, row.get(1)?);
        let signed: SignedProof = parse_json(&body, || format!("proof of {node_id}"))?;
        let key = crate::admission::parse_public_key(&signed.proof.public_key).map_err(|e| {
            LedgerErrorKind::Unusable(format!("stored proof of {node_id}: public key {e}"))
        })?;
        kept.entry(node_id).or_insert((key, 0)).1 += 1;
    }
    Ok(ValidatorSet::new(
        kept.into_values()
            .map(|(key, rounds)| Validator::new(key, rounds)),
    ))
}

/// Stores a decided checkpoint. A second certificate for an epoch that names another value
/// would mean more than a third of the validators' power signed two values: it is refused and
/// reported, the first is kept.
pub(super) fn record(db: &Connection, record: &CertificateRecord) -> Fallible<RecordOutcome> {
    let existing: Option<String> = db
        .prepare_cached("SELECT checkpoint_id FROM checkpoints WHERE epoch = ?1")?
        .query_row([sql_int(record.epoch)], |row| row.get(0))
        .optional()?;
    match existing {
        Some(id) if id == record.checkpoint_id => Ok(RecordOutcome::Known),
        Some(id) => Ok(RecordOutcome::Conflict { stored: id }),
        None => {
            let body = to_json(record, || {
                format!("the certificate of epoch {}", record.epoch)
            })?;
            db.prepare_cached(
                "INSERT INTO checkpoints (epoch, checkpoint_id, certificate, decided_ms)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                sql_int(record.epoch),
                record.checkpoint_id,
                body,
                sql_int(unix_ms())
            ])?;
            Ok(RecordOutcome::Stored)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    Stored,
    Known,
    Conflict { stored: String },
}

/// Stored certificates, newest epoch first, at most `limit` (all with `usize::MAX`).
pub(super) fn certificates(conn: &Connection, limit: usize) -> Fallible<Vec<CertificateRecord>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut statement = conn.prepare_cached(
        "SELECT epoch, certificate FROM checkpoints ORDER BY epoch DESC LIMIT ?1",
    )?;
    read_certificates(statement.query([limit])?)
}

/// Rows of (epoch, certificate JSON) as records.
fn read_certificates(mut rows: rusqlite::Rows<'_>) -> Fallible<Vec<CertificateRecord>> {
    let mut records = Vec::new();
    while let Some(row) = rows.next()? {
        let (epoch, body): (i64, String) = (row.get(0)?, row.get(1)?);
        records.push(parse_json(&body, || {
            format!("the certificate of epoch {epoch}")
        })?);
    }
    Ok(records)
}

impl LedgerStore {
    /// This node's checkpoint of `epoch` from what it stores now.
    pub fn checkpoint_of(&self, epoch: u64) -> Result<Checkpoint, LedgerError> {
        let compute = || -> Fallible<Checkpoint> {
            let state = state_after(&self.conn, &self.schedule, &self.bases, epoch)?;
            Ok(Checkpoint {
                epoch,
                events_root: events_root(&self.conn, &self.schedule, epoch)?,
                balances_root: balances_root(&state),
            })
        };
        compute().map_err(|kind| self.error(kind))
    }

    /// Every account after `epoch` (folded from the nearest kept base before it).
    pub fn balances_after(&self, epoch: u64) -> Result<BTreeMap<String, Account>, LedgerError> {
        state_after(&self.conn, &self.schedule, &self.bases, epoch)
            .map(|state| state.accounts().clone())
            .map_err(|kind| self.error(kind))
    }

    pub fn validators_of(&self, epoch: u64) -> Result<ValidatorSet, LedgerError> {
        validators_of(&self.conn, &self.schedule, epoch).map_err(|kind| self.error(kind))
    }

    pub fn record_checkpoint(
        &mut self,
        certificate: &CertificateRecord,
    ) -> Result<RecordOutcome, LedgerError> {
        record(&self.conn, certificate).map_err(|kind| self.error(kind))
    }

    /// Whether `epoch` has a stored certificate.
    pub fn is_checkpointed(&self, epoch: u64) -> Result<bool, LedgerError> {
        let found = self
            .conn
            .prepare_cached("SELECT 1 FROM checkpoints WHERE epoch = ?1")
            .and_then(|mut s| s.exists([sql_int(epoch)]))
            .map_err(|e| self.error(e.into()))?;
        Ok(found)
    }

    /// At most `limit` certificates, oldest first: the first ones after epoch `after` (what a
    /// node that holds `after` chains on), or with None the newest (what a node that holds
    /// none anchors on: the validators of the first epochs may be long gone).
    pub fn checkpoints_after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>, LedgerError> {
        let Some(after) = after else {
            return self.checkpoints(limit).map(|mut newest| {
                newest.reverse();
                newest
            });
        };
        let read = || -> Fallible<Vec<CertificateRecord>> {
            let mut statement = self.conn.prepare_cached(
                "SELECT epoch, certificate FROM checkpoints WHERE epoch > ?1
                 ORDER BY epoch LIMIT ?2",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            read_certificates(statement.query(params![sql_int(after), limit])?)
        };
        read().map_err(|kind| self.error(kind))
    }

    /// The newest stored certificates, newest first.
    pub fn checkpoints(&self, limit: usize) -> Result<Vec<CertificateRecord>, LedgerError> {
        certificates(&self.conn, limit).map_err(|kind| self.error(kind))
    }

    /// The epoch of the newest stored event (None: the ledger is empty).
    pub fn newest_epoch(&self) -> Option<u64> {
        self.head.as_ref().map(|head| head.epoch)
    }
}
