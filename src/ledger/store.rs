//! The durable ledger: accepted proofs, transactions and aggregation verdicts in SQLite (WAL,
//! `synchronous=FULL`, so an acknowledged write survives kill -9), and the balances folded from
//! them (`state`), kept in memory and mirrored in the `balances` table.
//!
//! Events are the truth and balances derived data: every write call is one SQLite transaction that
//! inserts its rows and rewrites what they change. The fold runs an emission epoch at a time (a
//! proof's credit depends on every proof of its epoch, `state`), so the store keeps the state
//! before the newest folded epoch (the open epoch). When every new event belongs to the open epoch
//! or a later one, that state is the base: the events from the open epoch's start are loaded and
//! folded onto it. An event of an earlier epoch folds everything again from the start, because an
//! earlier event can change the outcome of every later one (a transfer refused for an overdraft
//! becomes valid when an earlier proof arrives). Transaction statuses, credited amounts and the
//! balances that changed are rewritten to follow the fold.
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
use super::state::{Account, Event, LedgerState};
use super::tx::tx_id;
use super::verify::{ProofHistory, unpaid_reason};
use super::witness::{Tally, decide};
use super::{
    Nano, Proof, ProofKind, SignedProof, SignedTransaction, Transaction, TxKind, TxRejection,
};
use crate::net::wire::unix_ms;

/// Schema migrations, applied in order and each in its own transaction; `PRAGMA user_version` is
/// how many have run. Append only: a released entry is never edited.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE proofs (
        id TEXT PRIMARY KEY NOT NULL,
        node_id TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('uptime', 'training', 'inference', 'data')),
        timestamp_ms INTEGER NOT NULL,
        nonce INTEGER NOT NULL,
        outer_round INTEGER NOT NULL,
        delta_hash TEXT NOT NULL,
        base_reward INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('credited', 'pending', 'rejected')),
        reason TEXT,
        -- What the fold credited (the stake multiplier applied); NULL unless credited.
        credited_amount INTEGER,
        body TEXT NOT NULL,
        received_ms INTEGER NOT NULL,
        UNIQUE (node_id, nonce)
    ) STRICT;
    CREATE INDEX proofs_by_node_time ON proofs (node_id, timestamp_ms);
    CREATE INDEX proofs_by_node_kind_time ON proofs (node_id, kind, timestamp_ms);
    CREATE INDEX proofs_by_delta ON proofs (outer_round, delta_hash);
    CREATE TABLE transactions (
        id TEXT PRIMARY KEY NOT NULL,
        sender TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('transfer', 'stake', 'unstake')),
        seq INTEGER NOT NULL,
        timestamp_ms INTEGER NOT NULL,
        body TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('applied', 'rejected')),
        reason TEXT,
        received_ms INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX transactions_by_sender_time ON transactions (sender, timestamp_ms);
    CREATE TABLE verdicts (
        outer_round INTEGER NOT NULL,
        delta_hash TEXT NOT NULL,
        node_id TEXT NOT NULL,
        kept INTEGER NOT NULL CHECK (kept IN (0, 1)),
        reason TEXT NOT NULL,
        PRIMARY KEY (outer_round, delta_hash)
    ) STRICT;
    CREATE TABLE balances (
        node_id TEXT PRIMARY KEY NOT NULL,
        balance INTEGER NOT NULL,
        total_earned INTEGER NOT NULL,
        total_spent INTEGER NOT NULL,
        stake INTEGER NOT NULL,
        stake_locked_until_ms INTEGER NOT NULL,
        proof_count INTEGER NOT NULL,
        last_seq INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE network (key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL) STRICT;
    CREATE TABLE rejections (kind TEXT PRIMARY KEY NOT NULL, count INTEGER NOT NULL) STRICT;",
    // 2: the events of an epoch onwards, loaded to fold the open epoch again.
    "CREATE INDEX proofs_credited_by_time ON proofs (timestamp_ms) WHERE status = 'credited';
    CREATE INDEX transactions_by_time ON transactions (timestamp_ms);",
    // 3: uptime proofs settled by their witnesses: the witnesses and weights that settled each
    // (`witness::Tally`, JSON), so the decision can be recomputed.
    "CREATE TABLE witnessed (
        proof_id TEXT PRIMARY KEY NOT NULL,
        tally TEXT NOT NULL
    ) STRICT;",
    // 4: this node's own witness statements (uptime proof id, the proof's timestamp): a restarted
    // node restates them for peers that missed them, as it did before it stopped.
    "CREATE TABLE statements (
        proof_id TEXT PRIMARY KEY NOT NULL,
        timestamp_ms INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX statements_by_time ON statements (timestamp_ms);",
];

/// The schema this binary writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const HOUR_MS: u64 = 3_600_000;
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
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.bad_signatures.is_empty()
            && self.bad_records.is_empty()
            && self.event_mismatches.is_empty()
            && self.mismatches.is_empty()
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
    /// The newest emission epoch in `state`, and the state before it: events of that epoch or a
    /// later one are folded onto `base` with the stored events from the epoch's start.
    open_epoch: Option<u64>,
    base: LedgerState,
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

        let rows = load_event_rows(&conn, 0)?;
        let mut state = LedgerState::default();
        let fold = fold_onto(&mut state, &rows.proofs, &rows.txs, &schedule);
        let drift = compare_balances(&state, &read_stored_balances(&conn)?);
        if !drift.is_empty() || fold.has_changes() {
            tracing::warn!(
                path = %path.display(),
                accounts = drift.len(),
                events = fold.credit_changes.len() + fold.status_changes.len(),
                "stored balances disagree with the stored events; rewriting them from the events"
            );
            let db = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            write_event_changes(&db, &fold)?;
            rewrite_balances(&db, &state)?;
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
            open_epoch: fold.last_epoch,
            base: fold.base.unwrap_or_default(),
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
            |outcomes, _| Ok(outcomes),
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
            |staged, fold_outcomes| {
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
        let result = self.commit_batch(
            |db| stage_verdicts(db, round, verdicts),
            |settled, _| Ok(settled),
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
        let result = self.commit_batch(
            |db| stage_witnessed(db, proof_id, tally),
            |status, _| Ok(status),
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
    /// settles them, `finish` reads the fold's transaction outcomes; all in one SQLite
    /// transaction, and the in-memory fold moves on only once it has committed.
    fn commit_batch<S, T>(
        &mut self,
        stage: impl FnOnce(&Connection) -> Fallible<Staged<S>>,
        finish: impl FnOnce(S, &mut TxOutcomes) -> Fallible<T>,
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
                self.open_epoch.map(|epoch| (epoch, &self.base)),
                &staged.events,
                &self.schedule,
            )?)
        };
        let mut tx_outcomes = settled
            .as_mut()
            .map(|settled| std::mem::take(&mut settled.fold.tx_outcomes))
            .unwrap_or_default();
        let result = finish(staged.value, &mut tx_outcomes)?;
        db.commit()?;
        if let Some(settled) = settled {
            self.state = settled.state;
            if let Some(base) = settled.fold.base {
                self.base = base;
                self.open_epoch = settled.fold.last_epoch;
            }
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

/// Applies the migrations this database lacks. The version is read inside each migration's
/// write transaction, so two processes opening one file at once cannot both run a migration.
fn migrate(conn: &mut Connection) -> Fallible<()> {
    loop {
        let db = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found = schema_version(&db)?;
        if found > SCHEMA_VERSION {
            return Err(LedgerErrorKind::TooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        let Some(migration) = MIGRATIONS.get(found) else {
            return Ok(());
        };
        db.execute_batch(migration)?;
        // `found` is at most the number of migrations, so the cast is exact.
        db.pragma_update(None, "user_version", found as i64 + 1)?;
        db.commit()?;
    }
}

fn schema_version(conn: &Connection) -> Fallible<usize> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    usize::try_from(version)
        .map_err(|_| LedgerErrorKind::Unusable(format!("negative schema version {version}")))
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

/// A stored verdict on one delta.
struct StoredVerdict {
    node_id: String,
    kept: bool,
    reason: String,
}

fn verdict_for(db: &Connection, round: u64, delta_hash: &str) -> Fallible<Option<StoredVerdict>> {
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
fn training_status(
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
fn uptime_status(node_id: &str, tally: Option<&Tally>) -> (ProofStatus, Option<String>) {
    match tally.map(|tally| decide(node_id, tally)) {
        None => (ProofStatus::Pending, None),
        Some(Ok(reason)) => (ProofStatus::Credited, Some(reason)),
        Some(Err(why)) => (ProofStatus::Rejected, Some(why)),
    }
}

fn tally_for(db: &Connection, proof_id: &str) -> Fallible<Option<Tally>> {
    let text: Option<String> = db
        .prepare_cached("SELECT tally FROM witnessed WHERE proof_id = ?1")?
        .query_row([proof_id], |row| row.get(0))
        .optional()?;
    text.map(|text| parse_json(&text, || format!("witness tally of proof {proof_id}")))
        .transpose()
}

/// The status of a data or inference proof: credited, unless no one but its claimant vouches
/// for it (no valid receipt): then it is stored and shown but credited nothing.
fn receipt_status(proof: &Proof) -> (ProofStatus, Option<String>) {
    match unpaid_reason(proof) {
        None => (ProofStatus::Credited, None),
        Some(why) => (ProofStatus::Rejected, Some(why.to_string())),
    }
}

/// A credited proof as the fold sees it, with the credited amount stored for it so far.
struct ProofRow {
    id: String,
    node_id: String,
    timestamp_ms: u64,
    base_reward: Nano,
    credited: bool,
    stored_credit: Option<Nano>,
}

impl ProofRow {
    fn event(&self) -> Event<'_> {
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
struct TxRow {
    id: String,
    tx: Transaction,
    stored_status: String,
    stored_reason: Option<String>,
}

impl TxRow {
    fn event(&self) -> Event<'_> {
        Event::Tx {
            id: &self.id,
            tx: &self.tx,
        }
    }
}

/// The status a new transaction row is inserted with, before the fold (in the same SQLite
/// transaction) sets the real one.
const UNFOLDED_TX_STATUS: &str = "applied";

fn tx_status_columns(outcome: &Result<Nano, TxRejection>) -> (&'static str, Option<String>) {
    match outcome {
        Ok(_) => ("applied", None),
        Err(rejection) => ("rejected", Some(rejection.to_string())),
    }
}

#[derive(Default)]
struct EventRows {
    proofs: Vec<ProofRow>,
    txs: Vec<TxRow>,
}

impl EventRows {
    fn is_empty(&self) -> bool {
        self.proofs.is_empty() && self.txs.is_empty()
    }

    fn timestamps(&self) -> impl Iterator<Item = u64> {
        let proofs = self.proofs.iter().map(|row| row.timestamp_ms);
        proofs.chain(self.txs.iter().map(|row| row.tx.timestamp_ms))
    }
}

/// Every event the daemon folds from `since_ms` on: credited proofs (pending and rejected ones
/// change nothing) and all transactions.
fn load_event_rows(conn: &Connection, since_ms: u64) -> Fallible<EventRows> {
    // Timestamps of 2⁶³ ms and more are stored negative (`sql_int`): they are after any start.
    let since = sql_int(since_ms.min(i64::MAX as u64));
    let mut statement = conn.prepare_cached(
        "SELECT id, node_id, timestamp_ms, base_reward, credited_amount FROM proofs
         WHERE status = 'credited' AND (timestamp_ms >= ?1 OR timestamp_ms < 0)",
    )?;
    let proofs = statement
        .query_map([since], |row| {
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
    // The query is a superset when since_ms is 2⁶³ or more; the fold needs exactly these.
    let proofs: Vec<ProofRow> = proofs
        .into_iter()
        .filter(|row| row.timestamp_ms >= since_ms)
        .collect();
    let mut statement = conn.prepare_cached(
        "SELECT id, body, status, reason FROM transactions
         WHERE timestamp_ms >= ?1 OR timestamp_ms < 0",
    )?;
    let mut rows = statement.query([since])?;
    let mut txs = Vec::new();
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let signed: SignedTransaction =
            parse_json(&row.get::<_, String>(1)?, || format!("transaction {id}"))?;
        if signed.tx.timestamp_ms < since_ms {
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

type TxOutcomes = HashMap<String, Result<Nano, TxRejection>>;

struct CreditChange {
    id: String,
    stored: Option<Nano>,
    recomputed: Option<Nano>,
}

struct StatusChange {
    id: String,
    stored: (String, Option<String>),
    recomputed: (&'static str, Option<String>),
}

/// What folding a set of rows produced besides the state.
#[derive(Default)]
struct Fold {
    /// The newest emission epoch folded, and the state before it (`LedgerState::apply_sorted`).
    last_epoch: Option<u64>,
    base: Option<LedgerState>,
    /// Stored per-event columns that disagree with the fold.
    credit_changes: Vec<CreditChange>,
    status_changes: Vec<StatusChange>,
    tx_outcomes: TxOutcomes,
}

impl Fold {
    fn has_changes(&self) -> bool {
        !self.credit_changes.is_empty() || !self.status_changes.is_empty()
    }
}

/// Applies the rows' events to `state` in the fold's order and diffs each event's outcome
/// against what is stored for it.
fn fold_onto(
    state: &mut LedgerState,
    proofs: &[ProofRow],
    txs: &[TxRow],
    schedule: &RewardSchedule,
) -> Fold {
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
    let base = state.apply_sorted(&mut events, schedule, |event, outcome| match *event {
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
    fold.last_epoch = events
        .last()
        .map(|event| schedule.epoch_of(event.timestamp_ms()));
    fold.base = base;
    fold
}

fn write_event_changes(db: &Connection, fold: &Fold) -> Fallible<()> {
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

fn upsert_account(db: &Connection, node_id: &str, account: &Account) -> Fallible<()> {
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

fn write_network(db: &Connection, state: &LedgerState) -> Fallible<()> {
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
fn rewrite_balances(db: &Connection, state: &LedgerState) -> Fallible<()> {
    db.execute("DELETE FROM balances", [])?;
    for (node_id, account) in state.accounts() {
        upsert_account(db, node_id, account)?;
    }
    write_network(db, state)
}

/// The balances table and network totals as stored.
struct StoredBalances {
    accounts: BTreeMap<String, Account>,
    total_minted: Nano,
    total_burned: Nano,
}

fn read_stored_balances(conn: &Connection) -> Fallible<StoredBalances> {
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

fn account_fields(account: &Account) -> [(&'static str, u64); 7] {
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
fn compare_balances(state: &LedgerState, stored: &StoredBalances) -> Vec<Mismatch> {
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

/// What a write call's `stage` produced.
struct Staged<S> {
    value: S,
    /// Events the rows made effective: new credited proofs and new transactions.
    events: EventRows,
    proofs_added: u64,
    transactions_added: u64,
}

/// The fold after a write call, not yet adopted (its SQLite transaction has not committed).
struct Settled {
    state: LedgerState,
    fold: Fold,
}

/// Folds the stored events (the new ones among them) again from the open epoch's start onto the
/// state before it when every new event belongs to the open epoch or a later one, else from the
/// start; then writes what changed: per-event columns, accounts, network totals.
fn settle(
    db: &Connection,
    state: &LedgerState,
    open: Option<(u64, &LedgerState)>,
    new: &EventRows,
    schedule: &RewardSchedule,
) -> Fallible<Settled> {
    let first_new_epoch = new.timestamps().map(|t| schedule.epoch_of(t)).min();
    let (since_ms, mut next) = match (open, first_new_epoch) {
        (Some((open_epoch, base)), Some(first)) if first >= open_epoch => {
            (schedule.epoch_start_ms(open_epoch), base.clone())
        }
        _ => (0, LedgerState::default()),
    };
    let rows = load_event_rows(db, since_ms)?;
    let fold = fold_onto(&mut next, &rows.proofs, &rows.txs, schedule);
    write_event_changes(db, &fold)?;
    write_balance_changes(db, state, &next)?;
    Ok(Settled { state: next, fold })
}

/// Writes the accounts that differ between `before` and `after` (a re-fold can also remove one:
/// a transfer that created it no longer applies) and the network totals.
fn write_balance_changes(
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

fn stage_proofs(
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
    for (signed, base_reward) in batch {
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
            ProofKind::Data | ProofKind::Inference => receipt_status(proof),
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
enum StagedTx {
    Done(TxInsertOutcome),
    Folded(String),
}

fn stage_transactions(
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

fn stage_verdicts(
    db: &Connection,
    round: u64,
    verdicts: &[(String, String, bool, String)],
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
        let mut waiting = db.prepare_cached(
            "SELECT id, node_id, timestamp_ms, base_reward FROM proofs
             WHERE outer_round = ?1 AND delta_hash = ?2 AND kind = 'training'
               AND status = 'pending'",
        )?;
        let proofs = waiting
            .query_map(params![sql_int(round), delta_hash], |row| {
                Ok(ProofRow {
                    id: row.get(0)?,
                    node_id: row.get(1)?,
                    timestamp_ms: get_u64(row, 2)?,
                    base_reward: get_u64(row, 3)?,
                    credited: true,
                    stored_credit: None,
                })
            })?
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

fn stage_witnessed(
    db: &Connection,
    proof_id: &str,
    tally: &Tally,
) -> Fallible<Staged<Option<ProofStatus>>> {
    let mut staged = Staged {
        value: None,
        events: EventRows::default(),
        proofs_added: 0,
        transactions_added: 0,
    };
    let pending = db
        .prepare_cached(
            "SELECT node_id, timestamp_ms, base_reward FROM proofs
             WHERE id = ?1 AND kind = 'uptime' AND status = 'pending'",
        )?
        .query_row([proof_id], |row| {
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

fn verify_at(
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
    report.accounts = state.accounts().len() as u64;
    Ok(report)
}

fn show_status(status: &str, reason: Option<&str>) -> String {
    match reason {
        Some(reason) => format!("{status} ({reason})"),
        None => status.to_owned(),
    }
}

fn verify_proofs(
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

fn verify_transactions(
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
fn checked_event<T: serde::de::DeserializeOwned>(
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
fn id_problem(stored: &str, recomputed: Result<String, String>) -> Option<String> {
    match recomputed {
        Ok(id) if id == stored => None,
        Ok(id) => Some(format!("body hashes to {id}")),
        Err(error) => Some(format!("body is not canonical: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Identity;
    use crate::ledger::Proof;
    use crate::ledger::proof::{check_signature, sign_proof, sign_receipt};
    use crate::ledger::rewards::{burn_fee, nano};
    use crate::ledger::state::replay;
    use crate::ledger::state::tests::SplitMix;
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
        for round in 0..4 {
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
            assert_eq!(shuffled.balances(), ordered.balances());
            assert_eq!(shuffled.network(), ordered.network());
            for tx in &txs {
                assert_eq!(tx_status(&shuffled, tx), tx_status(&ordered, tx));
            }
            assert_mirrored(&shuffled);
            drop(shuffled);
            assert_eq!(open_with(&dir, schedule.clone()).state, expected);
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
}
