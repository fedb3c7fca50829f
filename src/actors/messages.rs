//! Every typed message the actors exchange, in one place. Large vectors travel as `Arc`s: the
//! actors share one process, so a message is a pointer, never a copy.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use actix::prelude::*;

use crate::aggregate::shard::{SettledRound, ShardPlan, SliceEvidence, SliceReport};
use crate::aggregate::{Aggregate, AggregateError, AggregationConfig, Contribution};
use crate::diloco::codec::CodecConfig;
use crate::diloco::machine::TrainerPeer;
use crate::ledger::checkpoint::{CertificateRecord, Checkpoint, ConsensusWire, ValidatorSet};
use crate::ledger::state::Account;
use crate::ledger::store::{Adopted, HistoryPage, ProofStatus, StoredProof};
use crate::ledger::{
    Nano, Proof, ProofRejection, Receipt, SignedProof, SignedTransaction, TxKind, Unreceipted,
};
use crate::model::checkpoint::TrainerSnapshot;
use crate::net::blob::BlobId;
use crate::net::history::{HistoryRequest, HistoryResponse};
use crate::net::wire::{LedgerMessage, Rejection, RoundAnnouncement};
use crate::status::LocalFault;

/// Trainer → itself: run one inner step (through the mailbox, so other messages interleave).
#[derive(Message)]
#[rtype(result = "()")]
pub struct TrainStep;

/// Trainer → Sync: the H inner steps of `round` are done; θ_H is attached. Sync encodes,
/// announces and serves Δ, then waits for the round to close.
#[derive(Message)]
#[rtype(result = "()")]
pub struct InnerRoundDone {
    pub round: u64,
    pub theta_h: Arc<Vec<f32>>,
    /// Tokens processed this round (the mean weights contributions by it).
    pub tokens: u64,
    pub work: RoundWork,
}

/// What the trainer did in a round besides its tokens: the facts a training proof signs.
#[derive(Debug, Clone, Copy)]
pub struct RoundWork {
    pub batches: u64,
    pub mean_loss: f32,
    /// Passes over this node's data shard so far.
    pub epoch: u64,
    pub seconds: f64,
}

/// Sync → Trainer: start `round` from the outer parameters θ₀ (the inner model is reset to them).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StartRound {
    pub round: u64,
    pub theta0: Arc<Vec<f32>>,
}

/// Trainer → Sync: a periodic snapshot to checkpoint (and to restart from after a crash).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SnapshotTaken(pub Arc<TrainerSnapshot>);

/// Sync → Aggregator: combine one round's contributions (ordered by node_id) as configured.
#[derive(Message)]
#[rtype(result = "Result<Aggregate, AggregateError>")]
pub struct AggregateRound {
    pub round: u64,
    pub config: AggregationConfig,
    pub contributions: Vec<Contribution>,
}

/// Sync → Aggregator: aggregate this node's slices of a sharded round (each slice's parts).
#[derive(Message)]
#[rtype(result = "Vec<SliceReport>")]
pub struct AggregateSlices {
    pub round: u64,
    pub config: AggregationConfig,
    /// This node's node_id: the reports' aggregator.
    pub aggregator: String,
    pub inputs: Vec<(usize, Vec<Contribution>)>,
}

/// Sync → Aggregator: settle a sharded round from the evidence in hand (`shard::settle_round`).
#[derive(Message)]
#[rtype(result = "SettledRound")]
pub struct SettleRound {
    pub round: u64,
    pub config: AggregationConfig,
    pub codec: CodecConfig,
    pub plan: ShardPlan,
    pub max_norm: f32,
    pub evidence: BTreeMap<usize, SliceEvidence>,
}

/// Trainer → Supervisor: a training step panicked; the trainer has stopped itself.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TrainerCrashed {
    pub reason: String,
    pub step: u64,
}

/// Supervisor → Sync: what a (re)started trainer resumes from.
#[derive(Message)]
#[rtype(result = "ResumeState")]
pub struct GetResumeState;

pub struct ResumeState {
    /// The latest trainer snapshot made consistent with the current round, if any was taken.
    pub snapshot: Option<TrainerSnapshot>,
    pub round: u64,
    pub theta0: Arc<Vec<f32>>,
}

/// Supervisor → Sync: the trainer (new or restarted) that receives `StartRound`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RegisterTrainer(pub Recipient<StartRound>);

/// Node → Supervisor → Trainer: stop training and hand back the final state.
#[derive(Message)]
#[rtype(result = "Option<Arc<TrainerSnapshot>>")]
pub struct StopTraining;

/// Node → Sync: write a checkpoint now (the final one, on shutdown) and say where.
#[derive(Message)]
#[rtype(result = "Result<PathBuf, CheckpointError>")]
pub struct WriteCheckpoint(pub Option<Arc<TrainerSnapshot>>);

/// Why `WriteCheckpoint` wrote nothing: this node's own state or disk, never a peer's doing.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("no trainer state to checkpoint yet")]
    NoTrainerState,
    #[error(transparent)]
    Storage(#[from] LocalFault),
}

/// Node → Http: stop serving (graceful).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopHttp;

/// Sync → Peer: serve these bytes to peers that ask for `id` (θ₀ each round; deltas later).
#[derive(Message)]
#[rtype(result = "()")]
pub struct OfferBlob {
    /// `BlobId::of(&bytes)`, computed by the sender that already hashed it.
    pub id: BlobId,
    pub bytes: Arc<Vec<u8>>,
}

/// Sync → Peer: stop serving these blobs (an outer state two rounds old).
#[derive(Message)]
#[rtype(result = "()")]
pub struct WithdrawBlobs {
    pub ids: Vec<BlobId>,
}

/// → Peer: fetch blob `id` from `peer`; the bytes are checked against `id` before they are returned.
#[derive(Message)]
#[rtype(result = "Result<Arc<Vec<u8>>, FetchError>")]
pub struct FetchBlob {
    pub peer: libp2p::PeerId,
    pub id: BlobId,
    /// The blob's size as the protocol implies it (a Δ's announced size, θ₀'s 4 bytes a value):
    /// a longer answer is refused from its length header and counts against the peer.
    pub max_bytes: u64,
    /// Only values `start..end` of an encoded Δ (`BlobRequest::range`).
    pub range: Option<(u64, u64)>,
}

/// Why `FetchBlob` brought no bytes: this node's own limits or state, the peer's offence (counted
/// against it), or neither (the peer moved on, the transfer broke).
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// This node's bound on transfers in flight: nobody's offence, try later.
    #[error(
        "{from_peer} transfers from {peer} and {total} in all already in flight (limits {per_peer} and {max})"
    )]
    Busy {
        peer: libp2p::PeerId,
        from_peer: usize,
        total: usize,
        per_peer: usize,
        max: usize,
    },
    #[error("the network stopped")]
    Stopped,
    /// The peer no longer serves the blob (it moved to another round): no offence.
    #[error("peer {peer} does not have blob {blob}")]
    Missing { peer: libp2p::PeerId, blob: BlobId },
    /// The peer's answer broke the protocol (another hash, longer than the bound): counted
    /// against it.
    #[error("peer {peer}: {rejection}")]
    Refused {
        peer: libp2p::PeerId,
        rejection: Rejection,
    },
    /// The transfer failed (timeout, connection closed, unsupported protocol).
    #[error("fetching blob {blob} from {peer}: {reason}")]
    Transfer {
        peer: libp2p::PeerId,
        blob: BlobId,
        reason: String,
    },
}

/// Sync → Peer: gossip this node's signed announcement of its delta for a round.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AnnounceRound(pub RoundAnnouncement);

/// Peer → Sync: a peer's round announcement that passed validation (signature, fields, rate).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerRoundAnnounced {
    pub peer: libp2p::PeerId,
    pub announcement: RoundAnnouncement,
}

/// Sync → Peer: where to deliver round announcements and reports of served blobs.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RegisterRounds {
    pub announced: Recipient<PeerRoundAnnounced>,
    pub served: Recipient<BlobServed>,
    pub trainers: Recipient<TrainerPeers>,
}

/// Peer → Sync: the trainer peers as the network last heard them (heartbeat, admission), banned
/// ones left out; sent with every refresh of the peer table's view. Sync's round and heal
/// decisions read them from here, never from the StatusBoard (HTTP's read model).
#[derive(Message)]
#[rtype(result = "()")]
pub struct TrainerPeers(pub Vec<TrainerPeer>);

/// Peer → Sync: blob `id` was sent to a peer, `bytes` long: what this node actually uploaded.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BlobServed {
    pub id: BlobId,
    pub bytes: u64,
}

/// Ledger → Peer: gossip this node's own proof or transaction on the ledger topic.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PublishLedger(pub LedgerMessage);

/// Ledger → Peer: where to deliver the ledger topic's messages and the refusals made before them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RegisterLedger {
    pub gossip: Recipient<LedgerGossip>,
    pub refused: Recipient<RefusedAtGate>,
    pub heard: Recipient<PeerHeard>,
    pub history: Recipient<ServeHistory>,
}

/// Peer → Ledger: a valid, fresh heartbeat signed by this node_id arrived now: what this node
/// may later witness of that node's uptime (`ledger::witness`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerHeard(pub String);

/// Peer → Ledger: a ledger message refused before it reached the ledger (forged proof, someone
/// else's proof); counted with the ledger's own rejections, by reason.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RefusedAtGate(pub &'static str);

/// Peer → Ledger: a proof or transaction its signer gossiped (wire signature, signer and, for
/// proofs, the proof's own signature already checked).
#[derive(Message)]
#[rtype(result = "()")]
pub struct LedgerGossip {
    pub origin: libp2p::PeerId,
    pub message: LedgerMessage,
}

/// Ledger → Peer: `peer` signed something the ledger refused; count it against the peer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerOffence {
    pub peer: libp2p::PeerId,
    pub rejection: Rejection,
}

/// Sync → Ledger: this node's delta for `round` is out; sign a training proof naming it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ProveTraining {
    pub round: u64,
    pub theta0_hash: String,
    /// BLAKE3 of θ_H, the inner model the work produced.
    pub theta_h_hash: String,
    pub delta_hash: String,
    pub tokens: u64,
    pub work: RoundWork,
}

/// Sync → Ledger: which deltas `round`'s robust aggregation kept (training proofs naming them
/// are credited) and which it rejected (they earn nothing; the reason is recorded).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoundVerdicts {
    pub round: u64,
    /// BLAKE3 of the θ₀ the round's aggregate produced.
    pub theta0_after: String,
    pub verdicts: Vec<DeltaVerdict>,
}

/// What each node (this one included) counts for as Sync weighs it now: whose verdicts on rounds
/// settle proofs (see `ledger::settle`). Sent every couple of seconds and before each round's
/// verdicts, so a node that does not aggregate (an observer) settles by the same weights.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerWeights(pub BTreeMap<String, f64>);

#[derive(Debug, Clone)]
pub struct DeltaVerdict {
    pub node_id: String,
    pub delta_hash: String,
    pub kept: bool,
    pub reason: String,
}

/// Sync → Ledger: this node now trains `round` from θ₀ with this hash (after an outer step, a
/// heal, or at start). A peer's verdicts on round − 1 are adopted only when its aggregate led to
/// this same θ₀.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ModelAdopted {
    pub round: u64,
    pub theta0_hash: String,
}

/// HTTP → Ledger: a generation request was served. The answer is the inference proof this node
/// will sign, without its receipt: the requester signs a receipt over it (`proof::sign_receipt`)
/// and posts it back (`AttachReceipt`); without one in time the proof is stored unreceipted.
#[derive(Message)]
#[rtype(result = "Result<Proof, String>")]
pub struct ProveInference {
    pub request_id: String,
    pub tokens: u64,
    pub seconds: f64,
}

/// HTTP → Ledger: the requester's receipt for the inference proof of `request_id`; the proof is
/// signed with it, stored and gossiped, and earns.
#[derive(Message)]
#[rtype(result = "Result<ReceiptAccepted, ReceiptRefused>")]
pub struct AttachReceipt {
    pub request_id: String,
    pub receipt: Receipt,
}

#[derive(Debug, Clone)]
pub struct ReceiptAccepted {
    pub proof_id: String,
    /// `None` only under the NEUROSHARD_FAULT_PONW switch, which stores nothing honest.
    pub status: Option<ProofStatus>,
}

/// Why a receipt was not attached.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptRefused {
    #[error("no inference proof of this node awaits a receipt for request {0:?}")]
    Unknown(String),
    #[error(transparent)]
    Invalid(#[from] Unreceipted),
    #[error(transparent)]
    NotRecorded(#[from] super::ledger::NotRecorded),
}

/// Ledger → Checkpoint: where checkpoint consensus messages from peers go.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RegisterCheckpoints(pub Recipient<CheckpointGossip>);

/// Ledger → Checkpoint: a peer's checkpoint consensus message (the gossip signature named its
/// validator).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CheckpointGossip {
    pub origin: libp2p::PeerId,
    pub message: ConsensusWire,
}

/// Checkpoint → Ledger: this node's checkpoint of `epoch` and the epoch's validators, or None
/// when the epoch is certified already.
#[derive(Message)]
#[rtype(result = "Result<Option<(Checkpoint, ValidatorSet)>, String>")]
pub struct PrepareCheckpoint {
    pub epoch: u64,
}

/// Checkpoint → Ledger: a decided checkpoint to store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecordCheckpoint(pub CertificateRecord);

/// Peer → Ledger: a peer asks for ledger history.
#[derive(Message)]
#[rtype(result = "HistoryResponse")]
pub struct ServeHistory(pub HistoryRequest);

/// Checkpoint → Peer: send `request` to `peer`, or to the next connected peer in turn.
#[derive(Message)]
#[rtype(result = "Result<(libp2p::PeerId, HistoryResponse), String>")]
pub struct FetchHistory {
    pub peer: Option<libp2p::PeerId>,
    pub request: HistoryRequest,
}

/// Checkpoint → Ledger: the epoch of the newest stored checkpoint.
#[derive(Message)]
#[rtype(result = "Result<Option<u64>, String>")]
pub struct NewestCheckpoint;

/// Checkpoint → Ledger: `peer`'s copy of the events of epochs `from..=certificate.epoch`, to be
/// adopted only as certified.
#[derive(Message)]
#[rtype(result = "Result<Adopted, String>")]
pub struct AdoptHistory {
    pub peer: libp2p::PeerId,
    pub from: u64,
    pub certificate: CertificateRecord,
    pub events: HistoryPage,
}

/// Checkpoint → Ledger: of the certificates a peer listed (oldest first) for a node that holds
/// none, the newest whose validators this node weighs enough to trust without a chain to one it
/// holds (`anchored_by_weight`): its position in the list, or why there is none.
#[derive(Message)]
#[rtype(result = "Result<usize, String>")]
pub struct ChooseAnchor(pub Vec<CertificateRecord>);

/// Checkpoint → Ledger: `peer`'s certificates of epochs before the one its history was adopted
/// up to, each stored once its signatures hold and the stored events give what it names: how
/// many were new.
#[derive(Message)]
#[rtype(result = "Result<usize, String>")]
pub struct RecordCertified {
    pub peer: libp2p::PeerId,
    pub certificates: Vec<CertificateRecord>,
}

/// HTTP → Ledger: the newest stored checkpoint certificates, newest first.
#[derive(Message)]
#[rtype(result = "Result<Vec<CertificateRecord>, String>")]
pub struct GetCheckpoints {
    pub limit: usize,
}

/// HTTP → Ledger: one account (zero if the ledger has never seen it).
#[derive(Message)]
#[rtype(result = "Result<Account, String>")]
pub struct GetAccount(pub String);

/// HTTP → Ledger: every account the ledger holds now, or after checkpointed epoch `epoch`
/// (None when that epoch has no checkpoint).
#[derive(Message)]
#[rtype(result = "Result<Option<std::collections::BTreeMap<String, Account>>, String>")]
pub struct GetBalances {
    pub epoch: Option<u64>,
}

/// HTTP → Ledger: an account's newest proofs.
#[derive(Message)]
#[rtype(result = "Result<Vec<StoredProof>, String>")]
pub struct GetProofs {
    pub node_id: String,
    pub limit: usize,
}

/// HTTP → Ledger: would this proof be accepted now? Nothing is recorded.
#[derive(Message)]
#[rtype(result = "Result<ProofCheck, String>")]
pub struct CheckProof(pub SignedProof);

pub struct ProofCheck {
    pub proof_id: Option<String>,
    pub verdict: Result<crate::ledger::verify::Offer, ProofRejection>,
}

/// HTTP → Ledger: sign this node's transaction, apply it and gossip it. Refused as the caller's
/// offence (422) or, when the database fails, as this node's fault (503).
#[derive(Message)]
#[rtype(result = "Result<SubmittedTransaction, super::ledger::NotRecorded>")]
pub struct SubmitTransaction {
    pub kind: TxKind,
    pub to: String,
    pub amount: Nano,
    pub lock_s: u64,
}

pub struct SubmittedTransaction {
    pub id: String,
    pub transaction: SignedTransaction,
    /// Applied, or refused by the ledger's fold (e.g. an overdraft), with the reason.
    pub status: String,
}

/// Peer → Sybil (the attacker's actor of NEUROSHARD_FAULT_SYBIL / _VERDICT_FORGE): a round
/// announcement this node made (`own_delta`: the encoded delta it serves) or validated from a peer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoundObserved {
    pub announcement: RoundAnnouncement,
    pub own_delta: Option<Arc<Vec<u8>>>,
}

/// Sybil → Peer: where to deliver `RoundObserved`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RegisterAttack(pub Recipient<RoundObserved>);
