//! The schema: versioned migrations, applied in order.

use super::*;

/// Schema migrations, applied in order and each in its own transaction; `PRAGMA user_version` is
/// how many have run. Append only: a released entry is never edited.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 5: the fold reads credited proofs from an index that holds every column its query names, so
    // a re-fold reads a few index pages instead of every proof's row (bodies included).
    "CREATE INDEX proofs_fold
        ON proofs (timestamp_ms, id, node_id, base_reward, credited_amount, status)
        WHERE status = 'credited';
    DROP INDEX proofs_credited_by_time;",
    // 6: the fold's bases (the state before each of the last few epochs, `LedgerState` as JSON)
    // and the reward schedule they were folded with: opening folds from the oldest of them
    // instead of from the start, unless the schedule changed.
    "CREATE TABLE epoch_bases (
        epoch INTEGER PRIMARY KEY NOT NULL,
        state TEXT NOT NULL,
        schedule TEXT NOT NULL
    ) STRICT;",
    // 7: decided checkpoints: an epoch's checkpoint id and its commit certificate
    // (`checkpoint::CertificateRecord`, JSON), one per epoch.
    "CREATE TABLE checkpoints (
        epoch INTEGER PRIMARY KEY NOT NULL,
        checkpoint_id TEXT NOT NULL,
        certificate TEXT NOT NULL,
        decided_ms INTEGER NOT NULL
    ) STRICT;",
    // 8: events in (timestamp, id) order, the fold's order: history pages and an epoch's events
    // root read them from these instead of sorting.
    "CREATE INDEX proofs_by_time_id ON proofs (timestamp_ms, id);
    CREATE INDEX transactions_by_time_id ON transactions (timestamp_ms, id);
    DROP INDEX transactions_by_time;",
];

/// The schema this binary writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Applies the migrations this database lacks. The version is read inside each migration's
/// write transaction, so two processes opening one file at once cannot both run a migration.
pub(super) fn migrate(conn: &mut Connection) -> Fallible<()> {
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

pub(super) fn schema_version(conn: &Connection) -> Fallible<usize> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    usize::try_from(version)
        .map_err(|_| LedgerErrorKind::Unusable(format!("negative schema version {version}")))
}
