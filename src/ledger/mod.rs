//! The NEURO ledger as pure logic: Proofs of Neural Work and transactions (their canonical
//! encodings and signatures), verification, the reward schedule, and the fold that turns a set of
//! accepted events into balances. The SQLite store (`store`) and the LedgerActor own state; nothing
//! here touches sockets or threads.
//!
//! Amounts are integers in nano-NEURO ([`Nano`]): every node folds the same events in the same
//! order with the same integer arithmetic, so nodes that accepted the same set hold bit-identical
//! balances (floating-point sums would depend on arrival order).

pub mod checkpoint;
pub mod proof;
pub mod rewards;
pub mod settle;
pub mod state;
pub mod store;
pub mod tx;
pub mod verify;
pub mod witness;

use serde::{Deserialize, Serialize};

/// An amount of NEURO in units of 10⁻⁹ NEURO.
pub type Nano = u64;
pub const NANO_PER_NEURO: Nano = 1_000_000_000;

/// `nano` as NEURO, for display and the JSON API.
pub fn to_neuro(nano: Nano) -> f64 {
    nano as f64 / NANO_PER_NEURO as f64
}

/// What a proof claims work for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProofKind {
    Uptime,
    Training,
    Inference,
    Data,
}

/// A Proof of Neural Work. Every field is part of the canonical encoding that is signed
/// (`proof::canonical_bytes`), so no field that affects the reward can be changed after signing.
/// Hashes are lower-case hex of 32 bytes, or empty where a kind has none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proof {
    /// hex(SHA-256(compressed public key))[:32].
    pub node_id: String,
    /// Compressed secp256k1 public key, 66 hex characters.
    pub public_key: String,
    pub kind: ProofKind,
    /// The signer's clock when the proof was made, unix milliseconds.
    pub timestamp_ms: u64,
    /// Unique per node: a nonce is accepted once.
    pub nonce: u64,
    /// Passes the node's data cursor has made over its shard.
    pub epoch: u64,
    /// The DiLoCo outer round the work belongs to.
    pub outer_round: u64,
    /// Wall-clock seconds of work the proof covers (the uptime interval, the round's inner loop,
    /// the request's generation time); plausibility bounds are rates over it.
    pub work_seconds: u64,
    pub uptime_seconds: u64,
    pub tokens: u64,
    pub batches: u64,
    pub data_samples: u64,
    /// Inference request id (≤ 64 bytes), empty for other kinds.
    pub request_id: String,
    /// θ₀ hash the work started from and the one it produced (training), hex.
    pub model_hash_before: String,
    pub model_hash_after: String,
    /// Blob id (BLAKE3) of the pseudo-gradient a training proof contributed, hex.
    pub delta_hash: String,
    /// Mean training loss of the work (finite), 0 where a kind has none.
    pub loss: f32,
    /// Data and inference only: the receiving party's signature that it got the work. Without
    /// a valid one such a proof is self-declared and credited nothing (`proof::check_receipt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
}

/// The receiving party's signed statement that it received the work a proof claims: an ECDSA
/// secp256k1 signature by its key over `proof::receipt_message` (the proof without its receipt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The receiver's node_id: hex(SHA-256(its compressed public key))[:32].
    pub node_id: String,
    /// The receiver's compressed secp256k1 public key, 66 hex characters.
    pub public_key: String,
    /// 64-byte compact signature (low-S), hex.
    pub signature: String,
}

impl Proof {
    /// A proof of `kind` with every counter zero and every optional field empty; callers set
    /// what their work claims (`Proof { batches: 20, ..Proof::empty(ProofKind::Training) }`).
    pub fn empty(kind: ProofKind) -> Self {
        Self {
            node_id: String::new(),
            public_key: String::new(),
            kind,
            timestamp_ms: 0,
            nonce: 0,
            epoch: 0,
            outer_round: 0,
            work_seconds: 0,
            uptime_seconds: 0,
            tokens: 0,
            batches: 0,
            data_samples: 0,
            request_id: String::new(),
            model_hash_before: String::new(),
            model_hash_after: String::new(),
            delta_hash: String::new(),
            loss: 0.0,
            receipt: None,
        }
    }
}

/// A proof and its ECDSA secp256k1 signature over SHA-256 of its canonical bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedProof {
    #[serde(flatten)]
    pub proof: Proof,
    /// 64-byte compact signature (low-S), hex.
    pub signature: String,
}

/// What a transaction does with the sender's balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TxKind {
    /// Move `amount` to `to`; `fee` is burned.
    Transfer,
    /// Lock `amount` until `lock_until_ms`.
    Stake,
    /// Release `amount` of stake whose lock has expired.
    Unstake,
}

/// A signed transaction. Transfers, stakes and unstakes of one sender share one sequence: `seq`
/// must be exactly one more than the sender's last accepted transaction (the first is 1), so a
/// transaction can be applied once only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transaction {
    pub kind: TxKind,
    /// Sender node_id.
    pub from: String,
    /// Sender's compressed public key, hex.
    pub public_key: String,
    /// Recipient node_id (transfers), empty otherwise.
    pub to: String,
    pub amount: Nano,
    /// Burned; must equal `rewards::burn_fee(amount)` for transfers, 0 otherwise.
    pub fee: Nano,
    pub seq: u64,
    pub timestamp_ms: u64,
    /// Stakes: when the lock ends, unix milliseconds; 0 otherwise.
    pub lock_until_ms: u64,
}

/// A transaction and its signature over SHA-256 of its canonical bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedTransaction {
    #[serde(flatten)]
    pub tx: Transaction,
    pub signature: String,
}

/// Why a proof was refused. Each is counted by `kind()` and stored with the proof's id.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProofRejection {
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("bad signature")]
    BadSignature,
    #[error("node_id {claimed} is not the id of the public key ({actual})")]
    ForeignKey { claimed: String, actual: String },
    #[error("stale: made {age_s} s ago, window {window_s} s")]
    Stale { age_s: u64, window_s: u64 },
    #[error("from the future: {ahead_s} s ahead of this node's clock")]
    Future { ahead_s: u64 },
    #[error("replay: nonce {nonce} already used by this node")]
    Replay { nonce: u64 },
    #[error("rate limited: {limit} proofs per hour")]
    RateLimited { limit: u32 },
    #[error("implausible {field}: {value} above {limit}")]
    Implausible {
        field: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("over the per-proof cap: {reward} nano-NEURO above {cap}")]
    OverCap { reward: Nano, cap: Nano },
    /// A training proof whose delta robust aggregation rejected (or that no round kept).
    #[error("delta not kept by aggregation: {0}")]
    DeltaRejected(String),
}

/// Why a valid data or inference proof is credited nothing: no one but the claimant vouches
/// for the work. The proof is stored and shown with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreceipted {
    #[error("self-declared: no receipt from the receiving party")]
    Missing,
    #[error("self-declared: the receipt is signed by the claimant itself")]
    OwnReceipt,
    #[error(
        "self-declared: the receipt's node_id {claimed} is not the id of its public key ({actual})"
    )]
    ForeignKey { claimed: String, actual: String },
    #[error("self-declared: the receipt's signature does not verify")]
    BadSignature,
}

impl Unreceipted {
    pub fn kind(&self) -> &'static str {
        match self {
            Unreceipted::Missing => "self_declared",
            Unreceipted::OwnReceipt => "own_receipt",
            Unreceipted::ForeignKey { .. } => "receipt_foreign_key",
            Unreceipted::BadSignature => "bad_receipt_signature",
        }
    }
}

impl ProofRejection {
    pub fn kind(&self) -> &'static str {
        match self {
            ProofRejection::Malformed(_) => "malformed",
            ProofRejection::BadSignature => "bad_signature",
            ProofRejection::ForeignKey { .. } => "foreign_key",
            ProofRejection::Stale { .. } => "stale",
            ProofRejection::Future { .. } => "future",
            ProofRejection::Replay { .. } => "replay",
            ProofRejection::RateLimited { .. } => "rate_limited",
            ProofRejection::Implausible { .. } => "implausible",
            ProofRejection::OverCap { .. } => "over_cap",
            ProofRejection::DeltaRejected(_) => "delta_rejected",
        }
    }
}

/// Why a transaction was refused: the stateless checks (`tx::check_transaction`) and those that
/// depend on the ledger (`state::LedgerState::apply`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TxRejection {
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("bad signature")]
    BadSignature,
    #[error("from {claimed} is not the id of the public key ({actual})")]
    ForeignKey { claimed: String, actual: String },
    #[error("stale: made {age_s} s ago, window {window_s} s")]
    Stale { age_s: u64, window_s: u64 },
    #[error("from the future: {ahead_s} s ahead of this node's clock")]
    Future { ahead_s: u64 },
    #[error("fee must be {expected} nano-NEURO (5% burned), got {got}")]
    BadFee { expected: Nano, got: Nano },
    #[error("sequence {got}: expected {expected} (reused or skipped)")]
    BadSequence { expected: u64, got: u64 },
    #[error("overdraft: needs {needed} nano-NEURO, balance {balance}")]
    Overdraft { needed: Nano, balance: Nano },
    #[error("stake locked until {until_ms} ms")]
    StakeLocked { until_ms: u64 },
    #[error("unstake of {requested} nano-NEURO, staked {staked}")]
    InsufficientStake { requested: Nano, staked: Nano },
}

impl TxRejection {
    pub fn kind(&self) -> &'static str {
        match self {
            TxRejection::Malformed(_) => "malformed",
            TxRejection::BadSignature => "bad_signature",
            TxRejection::ForeignKey { .. } => "foreign_key",
            TxRejection::Stale { .. } => "stale",
            TxRejection::Future { .. } => "future",
            TxRejection::BadFee { .. } => "bad_fee",
            TxRejection::BadSequence { .. } => "bad_sequence",
            TxRejection::Overdraft { .. } => "overdraft",
            TxRejection::StakeLocked { .. } => "stake_locked",
            TxRejection::InsufficientStake { .. } => "insufficient_stake",
        }
    }
}
