//! The durable ledger: accepted proofs, transactions and aggregation verdicts in SQLite (WAL,
//! `synchronous=FULL`, so an acknowledged write survives kill -9), and the balances folded from
//! them (`state`), kept in memory and mirrored in the `balances` table.
//!
//! Events are the truth and balances derived data: every write call is one SQLite transaction that
//! inserts its rows and rewrites what they change. The fold runs an emission epoch at a time (a
//! proof's credit depends on every proof of its epoch, `state`), so the store keeps the state
//! before each of the last few folded epochs (its bases, also stored, so that opening folds from
//! them) and where the newest epoch stands. A batch whose events all sort after the newest
//! epoch's last event is applied onto the state (within the epoch's emission). Otherwise it
//! re-folds from the newest base that none of its events precedes: the stored events from that
//! epoch's start are loaded and folded onto it, so a late event costs the epochs after it, not
//! the history. Only an event older than every kept base folds everything again from the start,
//! because an earlier event can change the outcome of every later one (a transfer refused for an
//! overdraft becomes valid when an earlier proof arrives). Transaction statuses, credited amounts
//! and the balances that changed are rewritten to follow the fold.
//!
//! The parts: `schema` (migrations), `stage` (a write call's rows and the statuses verdicts,
//! witness tallies and receipts give them), `fold` (loading events, folding, writing what
//! changed), `audit` (`ledger verify`).
//!
//! SQLite integers are signed: a u64 is stored as its i64 bit pattern (`sql_int`), so every value
//! below 2⁶³ (any realistic amount or time) reads the same in raw SQL and larger ones round-trip.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};
use serde::Serialize;

use super::proof::proof_id;
use super::rewards::RewardSchedule;
use super::state::{Account, EpochHead, Event, Folded, LedgerState};
use super::tx::tx_id;
use super::verify::{ProofHistory, unpaid_reason};
use super::witness::{Tally, decide};
use super::{
    Nano, Proof, ProofKind, SignedProof, SignedTransaction, Transaction, TxKind, TxRejection,
};
use crate::net::wire::unix_ms;

mod audit;
mod checkpoints;
mod fold;
mod history;
mod schema;
mod stage;

pub use audit::verify_store;
pub use checkpoints::{RecordOutcome, balances_root};
use fold::*;
pub use history::{Adopted, HistoryPage, HistoryProof};
pub use schema::SCHEMA_VERSION;
use schema::*;
use stage::*;
#[cfg(test)]
mod tests;

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const HOUR_MS: u64 = 3_600_000;
/// How many epoch bases the store keeps. Fresh events fall in the last one or two epochs (the
/// freshness window is minutes, an epoch an hour by default); each base is a copy of every account.
const KEPT_BASES: usize = 4;
/// `proofs_of` returns at least one and at most this many proofs.
pub const MAX_PROOFS_PER_PAGE: usize = 1000;
/// The node id under which `VerifyReport` lists a network total (node ids are 32 hex characters).
pub const NETWORK_ROW: &str = "network";

/// A ledger database problem, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("ledger database {}: {kind}", path.display())]
pub struct LedgerError {
    pub path: PathBuf,
    pub kind: LedgerErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerErrorKind {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("{what} is not valid JSON: {error}")]
    Json {
        what: String,
        error: serde_json::Error,
    },
    #[error(
        "schema version {found} is newer than this binary's {supported}: run a newer neuroshard"
    )]
    TooNew { found: usize, supported: usize },
    #[error(
        "schema version {found} is older than {supported}: open it with the node once to migrate"
    )]
    TooOld { found: usize, supported: usize },
    #[error("{0}")]
    Unusable(String),
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// A peer's copy of certified history that is not what the certificate names.
    #[error("synced history refused: {0}")]
    Mismatch(String),
}

type Fallible<T> = Result<T, LedgerErrorKind>;

/// Where a stored proof stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProofStatus {
    /// Counted in the balances.
    Credited,
    /// A training proof waiting for the verdict on its delta, or an uptime proof waiting for
    /// witnesses of enough weight.
    Pending,
    /// Credited nothing: a training proof whose delta was not kept (or belongs to another
    /// node), or a data or inference proof without a valid receipt (self-declared).
    Rejected,
}

impl ProofStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ProofStatus::Credited => "credited",
            ProofStatus::Pending => "pending",
            ProofStatus::Rejected => "rejected",
        }
    }

    fn parse(text: &str) -> Fallible<Self> {
        match text {
            "credited" => Ok(ProofStatus::Credited),
            "pending" => Ok(ProofStatus::Pending),
            "rejected" => Ok(ProofStatus::Rejected),
            other => Err(LedgerErrorKind::Corrupt(format!("proof status {other:?}"))),
        }
    }
}

/// What `insert_proofs` did with one proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    Stored(ProofStatus),
    /// The same proof (same id) is already stored: nothing changed.
    Duplicate,
    /// Another proof of this node already used its nonce: not stored.
    Replay,
    /// Not canonical, so it has no id (verification refuses such a proof): not stored.
    Malformed(String),
}

/// What `insert_transactions` did with one transaction. Stored transactions are refolded with
/// every event that sorts before them, so a later call can turn `Rejected` into applied.
#[derive(Debug, Clone, PartialEq)]
pub enum TxInsertOutcome {
    Applied,
    Rejected(TxRejection),
    Duplicate,
    /// Not canonical, so it has no id: not stored.
    Malformed(String),
}

/// A stored proof for the HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredProof {
    pub id: String,
    pub status: ProofStatus,
    pub reason: Option<String>,
    pub base_reward: Nano,
    /// What the fold credited, stake multiplier and cap applied; `None` unless credited.
    pub credited: Option<Nano>,
    pub proof: SignedProof,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetworkTotals {
    pub total_minted: Nano,
    pub total_burned: Nano,
    pub circulating_supply: Nano,
    pub accounts: u64,
    pub proofs: u64,
    pub transactions: u64,
}

/// What `verify_store` found; `is_ok` when nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VerifyReport {
    pub proofs: u64,
    pub transactions: u64,
    pub verdicts: u64,
    pub accounts: u64,
    /// Ids of events whose signature check failed; they are left out of the recomputed fold.
    pub bad_signatures: Vec<String>,
    /// Events whose body is unreadable, hashes to another id, or disagrees with its columns.
    pub bad_records: Vec<BadRecord>,
    /// Per-event columns (status, credited amount) that disagree with the recomputed fold.
    pub event_mismatches: Vec<EventMismatch>,
    /// Stored balances (and network totals, under `NETWORK_ROW`) that disagree with the fold.
    pub mismatches: Vec<Mismatch>,
    /// Epochs whose stored base (the state before them, which opening folds from) is not the
    /// fold's.
    pub bad_bases: Vec<u64>,
    pub checkpoints: u64,
    /// Stored checkpoint certificates that do not hold, or name a value the stored events do not
    /// give.
    pub bad_checkpoints: Vec<BadRecord>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.bad_signatures.is_empty()
            && self.bad_records.is_empty()
            && self.event_mismatches.is_empty()
            && self.mismatches.is_empty()
            && self.bad_bases.is_empty()
            && self.bad_checkpoints.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadRecord {
    pub id: String,
    pub problem: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventMismatch {
    pub id: String,
    pub field: &'static str,
    pub stored: String,
    pub recomputed: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub node_id: String,
    pub field: &'static str,
    pub stored: u64,
    pub recomputed: u64,
}

/// The SQLite ledger and the in-memory fold of everything in it.
#[derive(Debug)]
pub struct LedgerStore {
    path: PathBuf,
    conn: Connection,
    state: LedgerState,
    /// The states before the last few epochs folded (at most `KEPT_BASES`): a batch whose
    /// earliest event falls in one of them or later re-folds from there, not from the start.
    bases: BTreeMap<u64, LedgerState>,
    /// Where the newest epoch stands: a batch that extends it at its end is applied onto the
    /// state without reading stored events.
    head: Option<EpochHead>,
    schedule: RewardSchedule,
    stored_proofs: u64,
    stored_transactions: u64,
    /// The `rejections` table, kept in memory so that reading it cannot fail.
    rejections: BTreeMap<String, u64>,
    /// Counted since the last `save_rejections`.
    unsaved_rejections: BTreeMap<String, u64>,
}

impl LedgerStore {
    /// Opens (creating and migrating) the database and folds every stored event. Stored balances
    /// or statuses that disagree with the fold are rewritten from it with a warning: they are
    /// derived data (`verify_store` is the tool that reports such drift as an error).
    pub fn open(path: &Path, schedule: RewardSchedule) -> Result<Self, LedgerError> {
        Self::open_at(path, schedule).map_err(|kind| LedgerError {
            path: path.to_owned(),
            kind,
        })
    }

    fn open_at(path: &Path, schedule: RewardSchedule) -> Fallible<Self> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(LedgerErrorKind::Unusable(format!(
                "cannot switch to WAL (journal_mode is {mode})"
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;

        // Folds from the oldest stored base, so opening costs the last few epochs, not the
        // history. When that disagrees with the stored balances or statuses, the bases are not
        // trusted either: everything is folded again from the start, the events being the truth.
        let stored_bases = read_bases(&conn, &schedule)?;
        let stored_balances = read_stored_balances(&conn)?;
        let (mut state, mut fold, mut bases) = fold_stored(&conn, &schedule, &stored_bases)?;
        let mut drift = compare_balances(&state, &stored_balances);
        if (!drift.is_empty() || fold.has_changes()) && !stored_bases.is_empty() {
            (state, fold, bases) = fold_stored(&conn, &schedule, &BTreeMap::new())?;
            drift = compare_balances(&state, &stored_balances);
        }
        if !drift.is_empty() || fold.has_changes() {
            tracing::warn!(
                path = %path.display(),
                accounts = drift.len(),
                events = fold.credit_changes.len() + fold.status_changes.len(),
                "stored balances disagree with the stored events; rewriting them from the events"
            );
        }
        if !drift.is_empty() || fold.has_changes() || bases != stored_bases {
            let db = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            write_event_changes(&db, &fold)?;
            rewrite_balances(&db, &state)?;
            db.execute("DELETE FROM epoch_bases", [])?;
            write_bases(&db, &BTreeMap::new(), &bases, &schedule)?;
            db.commit()?;
        }
        let stored_proofs = count_rows(&conn, "SELECT COUNT(*) FROM proofs")?;
        let stored_transactions = count_rows(&conn, "SELECT COUNT(*) FROM transactions")?;
        let rejections = conn
            .prepare("SELECT kind, count FROM rejections")?
            .query_map([], |row| Ok((row.get(0)?, get_u64(row, 1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Self {
            path: path.to_owned(),
            conn,
            state,
            bases,
            head: fold.folded.head.take(),
            schedule,
            stored_proofs,
            stored_transactions,
            rejections,
            unsaved_rejections: BTreeMap::new(),
        })
    }

    fn error(&self, kind: LedgerErrorKind) -> LedgerError {
        LedgerError {
            path: self.path.clone(),
            kind,
        }
    }

    /// What verification needs to know about `node_id`'s earlier proofs; `uptime_before_ms` is
    /// the timestamp of the proof being checked, so a late-arriving uptime proof is compared with
    /// the one before it, not with newer ones.
    pub fn history(
        &self,
        node_id: &str,
        nonce: u64,
        now_ms: u64,
        uptime_before_ms: u64,
    ) -> Result<ProofHistory, LedgerError> {
        self.history_at(node_id, nonce, now_ms, uptime_before_ms)
            .map_err(|kind| self.error(kind))
    }

    /// Whether the proof with this id is stored (the same proof gossiped again is a no-op).
    pub fn has_proof(&self, id: &str) -> Result<bool, LedgerError> {
        self.conn
            .prepare_cached("SELECT 1 FROM proofs WHERE id = ?1")
            .and_then(|mut statement| statement.exists(params![id]))
            .map_err(|e| self.error(e.into()))
    }

    fn history_at(
        &self,
        node_id: &str,
        nonce: u64,
        now_ms: u64,
        uptime_before_ms: u64,
    ) -> Fallible<ProofHistory> {
        let nonce_used = self
            .conn
            .prepare_cached("SELECT 1 FROM proofs WHERE node_id = ?1 AND nonce = ?2")?
            .exists(params![node_id, sql_int(nonce)])?;
        let last_hour: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM proofs WHERE node_id = ?1 AND timestamp_ms > ?2")?
            .query_row(
                params![node_id, sql_int(now_ms.saturating_sub(HOUR_MS))],
                |row| row.get(0),
            )?;
        let last_uptime: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT MAX(timestamp_ms) FROM proofs
                 WHERE node_id = ?1 AND kind = 'uptime' AND timestamp_ms < ?2",
            )?
            .query_row(
                params![node_id, sql_int(uptime_before_ms.min(i64::MAX as u64))],
                |row| row.get(0),
            )?;
        Ok(ProofHistory {
            nonce_used,
            proofs_last_hour: u32::try_from(last_hour).unwrap_or(u32::MAX),
            last_uptime_ms: last_uptime.map(from_sql_int),
        })
    }

    /// Stores verified proofs with their base rewards, in one SQLite transaction. A training
    /// proof is credited only once a verdict says its delta was kept: pending until one exists,
    /// rejected if it says otherwise; any other proof is credited at once.
    pub fn insert_proofs(
        &mut self,
        batch: &[(SignedProof, Nano)],
    ) -> Result<Vec<InsertOutcome>, LedgerError> {
        let received_ms = unix_ms();
        let result = self.commit_batch(
            |db| stage_proofs(db, batch, received_ms),
            |_, outcomes, _| Ok(outcomes),
        );
        result.map_err(|kind| self.error(kind))
    }

    /// Stores signature-checked transactions in one SQLite transaction; the fold decides whether
    /// each applies (sequence, balance, stake lock).
    pub fn insert_transactions(
        &mut self,
        batch: &[SignedTransaction],
    ) -> Result<Vec<TxInsertOutcome>, LedgerError> {
        let received_ms = unix_ms();
        let result = self.commit_batch(
            |db| stage_transactions(db, batch, received_ms),
            |_, staged, fold_outcomes| {
                staged
                    .into_iter()
                    .map(|entry| match entry {
                        StagedTx::Done(outcome) => Ok(outcome),
                        StagedTx::Folded(id) => match fold_outcomes.remove(&id) {
                            Some(Ok(_)) => Ok(TxInsertOutcome::Applied),
                            Some(Err(rejection)) => Ok(TxInsertOutcome::Rejected(rejection)),
                            None => Err(LedgerErrorKind::Corrupt(format!(
                                "transaction {id} was stored but not folded"
                            ))),
                        },
                    })
                    .collect()
            },
        );
        result.map_err(|kind| self.error(kind))
    }

    /// Records aggregation's verdicts on the deltas of `round`, each `(delta_hash, node_id that
    /// delivered it, kept, reason)`, and settles the training proofs waiting on them; returns
    /// those proofs' ids and new statuses. The first verdict on a delta stands: a repeated one is
    /// ignored.
    pub fn record_verdicts(
        &mut self,
        round: u64,
        verdicts: &[(String, String, bool, String)],
    ) -> Result<Vec<(String, ProofStatus)>, LedgerError> {
        let epoch_ms = self.schedule.epoch_ms();
        let result = self.commit_batch(
            |db| stage_verdicts(db, round, verdicts, epoch_ms),
            |_, settled, _| Ok(settled),
        );
        result.map_err(|kind| self.error(kind))
    }

    /// The claimant of the stored uptime proof `proof_id` and its status; `None` when no uptime
    /// proof with that id is stored (yet).
    pub fn uptime_claim(
        &self,
        proof_id: &str,
    ) -> Result<Option<(String, ProofStatus)>, LedgerError> {
        let row: Option<(String, String)> = self
            .conn
            .prepare_cached("SELECT node_id, status FROM proofs WHERE id = ?1 AND kind = 'uptime'")
            .and_then(|mut statement| {
                statement
                    .query_row([proof_id], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()
            })
            .map_err(|e| self.error(e.into()))?;
        row.map(|(node_id, status)| Ok((node_id, ProofStatus::parse(&status)?)))
            .transpose()
            .map_err(|kind| self.error(kind))
    }

    /// The newest `limit` uptime proofs still pending, by id: a restarted node settles them.
    pub fn pending_uptime(&self, limit: usize) -> Result<Vec<String>, LedgerError> {
        self.conn
            .prepare_cached(
                "SELECT id FROM proofs WHERE kind = 'uptime' AND status = 'pending'
                 ORDER BY timestamp_ms DESC LIMIT ?1",
            )
            .and_then(|mut statement| {
                statement
                    .query_map([limit as i64], |row| row.get(0))?
                    .collect::<Result<Vec<String>, _>>()
            })
            .map_err(|e| self.error(e.into()))
    }

    /// Settles the pending uptime proof `proof_id` by `tally` (its witnesses, weighed): credited
    /// when it passes `witness::decide`, refused otherwise, and the tally recorded with it;
    /// returns the proof's status, `None` when no pending uptime proof has that id. The first
    /// tally stands: a settled proof is not pending any more.
    pub fn record_witnessed(
        &mut self,
        proof_id: &str,
        tally: &Tally,
    ) -> Result<Option<ProofStatus>, LedgerError> {
        let epoch_ms = self.schedule.epoch_ms();
        let result = self.commit_batch(
            |db| stage_witnessed(db, proof_id, tally, epoch_ms),
            |_, status, _| Ok(status),
        );
        result.map_err(|kind| self.error(kind))
    }

    /// Records this node's own witness statements, (proof timestamp, uptime proof id), and forgets
    /// those about proofs made before `keep_since_ms`: one transaction per call.
    pub fn record_statements(
        &mut self,
        statements: &[(u64, String)],
        keep_since_ms: u64,
    ) -> Result<(), LedgerError> {
        let save = |conn: &mut Connection| -> Fallible<()> {
            let db = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (timestamp_ms, id) in statements {
                db.prepare_cached(
                    "INSERT OR IGNORE INTO statements (proof_id, timestamp_ms) VALUES (?1, ?2)",
                )?
                .execute(params![id, sql_int(*timestamp_ms)])?;
            }
            db.prepare_cached("DELETE FROM statements WHERE timestamp_ms < ?1")?
                .execute([sql_int(keep_since_ms)])?;
            db.commit()?;
            Ok(())
        };
        save(&mut self.conn).map_err(|kind| self.error(kind))
    }

    /// This node's own witness statements about proofs made at or after `since_ms`, (proof
    /// timestamp, id), oldest first; the newest `limit` of them.
    pub fn statements_since(
        &self,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, LedgerError> {
        let mut newest_first = self
            .conn
            .prepare_cached(
                "SELECT timestamp_ms, proof_id FROM statements WHERE timestamp_ms >= ?1
                 ORDER BY timestamp_ms DESC, proof_id LIMIT ?2",
            )
            .and_then(|mut statement| {
                statement
                    .query_map(params![sql_int(since_ms), limit as i64], |row| {
                        Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| self.error(e.into()))?;
        newest_first.reverse();
        Ok(newest_first
            .into_iter()
            .map(|(timestamp_ms, id)| (from_sql_int(timestamp_ms), id))
            .collect())
    }

    /// Counts a proof or transaction refused by verification (not stored as an event); written
    /// by the next `save_rejections`.
    pub fn count_rejection(&mut self, kind: &str) {
        for counts in [&mut self.rejections, &mut self.unsaved_rejections] {
            let count = counts.entry(kind.to_owned()).or_default();
            *count = count.saturating_add(1);
        }
    }

    /// Writes the rejection counts gathered since the last call, in one transaction: a flood
    /// of bad proofs costs one fsync per call, not one per proof.
    pub fn save_rejections(&mut self) -> Result<(), LedgerError> {
        if self.unsaved_rejections.is_empty() {
            return Ok(());
        }
        let save = |conn: &mut Connection, counts: &BTreeMap<String, u64>| -> Fallible<()> {
            let db = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (kind, added) in counts {
                db.prepare_cached(
                    "INSERT INTO rejections (kind, count) VALUES (?1, ?2)
                     ON CONFLICT (kind) DO UPDATE SET count = count + ?2",
                )?
                .execute(params![kind, sql_int(*added)])?;
            }
            db.commit()?;
            Ok(())
        };
        save(&mut self.conn, &self.unsaved_rejections).map_err(|kind| self.error(kind))?;
        self.unsaved_rejections.clear();
        Ok(())
    }

    /// One write call: `stage` inserts rows and names the events they make effective, the fold
    /// settles them, `finish` reads the fold's transaction outcomes (and may still refuse the
    /// whole call: nothing is then written); all in one SQLite
    /// transaction, and the in-memory fold moves on only once it has committed.
    fn commit_batch<S, T>(
        &mut self,
        stage: impl FnOnce(&Connection) -> Fallible<Staged<S>>,
        finish: impl FnOnce(&Connection, S, &mut TxOutcomes) -> Fallible<T>,
    ) -> Fallible<T> {
        let db = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let staged = stage(&db)?;
        let mut settled = if staged.events.is_empty() {
            None
        } else {
            Some(settle(
                &db,
                &self.state,
                &self.bases,
                self.head.as_ref(),
                &staged.events,
                &self.schedule,
            )?)
        };
        let mut tx_outcomes = settled
            .as_mut()
            .map(|settled| std::mem::take(&mut settled.fold.tx_outcomes))
            .unwrap_or_default();
        let result = finish(&db, staged.value, &mut tx_outcomes)?;
        db.commit()?;
        if let Some(settled) = settled {
            self.state = settled.state;
            if let Some(bases) = settled.bases {
                self.bases = bases;
            }
            self.head = settled.fold.folded.head;
        }
        self.stored_proofs += staged.proofs_added;
        self.stored_transactions += staged.transactions_added;
        Ok(result)
    }

    /// `node_id`'s account; all zero for a node the ledger has not seen.
    pub fn account(&self, node_id: &str) -> Account {
        self.state.account(node_id).cloned().unwrap_or_default()
    }

    pub fn balances(&self) -> BTreeMap<String, Account> {
        self.state.accounts().clone()
    }

    pub fn network(&self) -> NetworkTotals {
        NetworkTotals {
            total_minted: self.state.total_minted(),
            total_burned: self.state.total_burned(),
            circulating_supply: self.state.circulating_supply(),
            accounts: self.state.accounts().len() as u64,
            proofs: self.stored_proofs,
            transactions: self.stored_transactions,
        }
    }

    /// `node_id`'s stored proofs, newest first; `limit` is clamped to 1..=1000.
    pub fn proofs_of(&self, node_id: &str, limit: usize) -> Result<Vec<StoredProof>, LedgerError> {
        self.proofs_of_at(node_id, limit)
            .map_err(|kind| self.error(kind))
    }

    fn proofs_of_at(&self, node_id: &str, limit: usize) -> Fallible<Vec<StoredProof>> {
        let limit = limit.clamp(1, MAX_PROOFS_PER_PAGE);
        let mut statement = self.conn.prepare_cached(
            "SELECT id, status, reason, base_reward, credited_amount, body FROM proofs
             WHERE node_id = ?1 ORDER BY timestamp_ms DESC, id DESC LIMIT ?2",
        )?;
        // At most MAX_PROOFS_PER_PAGE, so the cast is exact.
        let mut rows = statement.query(params![node_id, limit as i64])?;
        let mut proofs = Vec::new();
        while let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            let body: String = row.get(5)?;
            let proof = parse_json(&body, || format!("proof {id}"))?;
            proofs.push(StoredProof {
                status: ProofStatus::parse(&row.get::<_, String>(1)?)?,
                reason: row.get(2)?,
                base_reward: get_u64(row, 3)?,
                credited: row.get::<_, Option<i64>>(4)?.map(from_sql_int),
                proof,
                id,
            });
        }
        Ok(proofs)
    }

    /// `sender`'s newest transactions made at or after `since_ms` (applied or not), at most
    /// `limit`: what the node gossips again for peers that missed them.
    pub fn transactions_of(
        &self,
        sender: &str,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<SignedTransaction>, LedgerError> {
        self.transactions_of_at(sender, since_ms, limit)
            .map_err(|kind| self.error(kind))
    }

    fn transactions_of_at(
        &self,
        sender: &str,
        since_ms: u64,
        limit: usize,
    ) -> Fallible<Vec<SignedTransaction>> {
        let limit = limit.clamp(1, MAX_PROOFS_PER_PAGE);
        let mut statement = self.conn.prepare_cached(
            "SELECT id, body FROM transactions WHERE sender = ?1 AND timestamp_ms >= ?2
             ORDER BY timestamp_ms DESC, id DESC LIMIT ?3",
        )?;
        let since = sql_int(since_ms.min(i64::MAX as u64));
        let mut rows = statement.query(params![sender, since, limit as i64])?;
        let mut txs = Vec::new();
        while let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            txs.push(parse_json(&row.get::<_, String>(1)?, || {
                format!("transaction {id}")
            })?);
        }
        Ok(txs)
    }

    /// Counted verification rejections by kind.
    pub fn rejections(&self) -> BTreeMap<String, u64> {
        self.rejections.clone()
    }
}

/// A u64 as SQLite stores it (see the module comment).
fn sql_int(value: u64) -> i64 {
    value as i64
}

fn from_sql_int(value: i64) -> u64 {
    value as u64
}

fn get_u64(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    row.get::<_, i64>(index).map(from_sql_int)
}

fn count_rows(conn: &Connection, sql: &str) -> Fallible<u64> {
    Ok(conn.query_row(sql, [], |row| get_u64(row, 0))?)
}

fn parse_json<T: serde::de::DeserializeOwned>(
    text: &str,
    what: impl FnOnce() -> String,
) -> Fallible<T> {
    serde_json::from_str(text).map_err(|error| LedgerErrorKind::Json {
        what: what(),
        error,
    })
}

fn to_json(value: &impl Serialize, what: impl FnOnce() -> String) -> Fallible<String> {
    serde_json::to_string(value).map_err(|error| LedgerErrorKind::Json {
        what: what(),
        error,
    })
}

fn proof_kind_name(kind: ProofKind) -> &'static str {
    match kind {
        ProofKind::Uptime => "uptime",
        ProofKind::Training => "training",
        ProofKind::Inference => "inference",
        ProofKind::Data => "data",
    }
}

fn tx_kind_name(kind: TxKind) -> &'static str {
    match kind {
        TxKind::Transfer => "transfer",
        TxKind::Stake => "stake",
        TxKind::Unstake => "unstake",
    }
}
