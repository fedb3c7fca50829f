//! Every typed message the actors exchange, in one place. Large vectors travel as `Arc`s: the
//! actors share one process, so a message is a pointer, never a copy.

use std::path::PathBuf;
use std::sync::Arc;

use actix::prelude::*;

use crate::aggregate::{Aggregate, AggregateError, AggregationConfig, Contribution};
use crate::model::checkpoint::TrainerSnapshot;
use crate::net::blob::BlobId;
use crate::net::wire::RoundAnnouncement;

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
#[rtype(result = "Result<PathBuf, String>")]
pub struct WriteCheckpoint(pub Option<Arc<TrainerSnapshot>>);

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

/// → Peer: fetch blob `id` from `peer`; the bytes are checked against `id` before they are returned.
#[derive(Message)]
#[rtype(result = "Result<Arc<Vec<u8>>, String>")]
pub struct FetchBlob {
    pub peer: libp2p::PeerId,
    pub id: BlobId,
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
}

/// Peer → Sync: blob `id` was sent to a peer, `bytes` long: what this node actually uploaded.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BlobServed {
    pub id: BlobId,
    pub bytes: u64,
}
