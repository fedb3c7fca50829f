//! Every typed message the actors exchange, in one place. Large vectors travel as `Arc`s: the
//! actors share one process, so a message is a pointer, never a copy.

use std::path::PathBuf;
use std::sync::Arc;

use actix::prelude::*;

use crate::aggregate::{Aggregate, AggregateError, Contribution, Rule};
use crate::model::checkpoint::TrainerSnapshot;
use crate::net::blob::BlobId;

/// Trainer → itself: run one inner step (through the mailbox, so other messages interleave).
#[derive(Message)]
#[rtype(result = "()")]
pub struct TrainStep;

/// Trainer → Sync: the H inner steps of `round` are done; θ_H is attached.
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

/// Sync → Aggregator: combine one round's contributions with `rule`.
#[derive(Message)]
#[rtype(result = "Result<Aggregate, AggregateError>")]
pub struct AggregateRound {
    pub round: u64,
    pub rule: Rule,
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
