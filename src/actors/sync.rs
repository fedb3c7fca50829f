//! SyncActor: owns DiLoCo's outer state — θ₀, the outer Nesterov momentum, the round number — and
//! the checkpoints. When the trainer finishes its H inner steps it computes Δ = θ₀ − θ_H, has the
//! AggregatorActor combine the round's contributions, applies the outer step and restarts the
//! trainer from the new θ₀.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use tracing::{error, info, warn};

use super::aggregator::AggregatorActor;
use super::messages::{
    AggregateRound, GetResumeState, InnerRoundDone, OfferBlob, RegisterTrainer, ResumeState,
    SnapshotTaken, StartRound, WriteCheckpoint,
};
use crate::aggregate::{Contribution, Rule};
use crate::diloco::{OuterOptimizer, pseudo_gradient};
use crate::model::checkpoint::{self, Checkpoint, OuterState, TrainerSnapshot};
use crate::model::params::ParamSpec;
use crate::net::blob::BlobId;
use crate::status::StatusBoard;

/// Where and for which model checkpoints are written.
#[derive(Clone)]
pub struct CheckpointTarget {
    pub dir: PathBuf,
    pub model_hash: String,
    pub layout: Arc<Vec<ParamSpec>>,
    /// One writer at a time: two concurrent writes would race on the temporary file.
    pub lock: Arc<Mutex<()>>,
}

impl CheckpointTarget {
    fn write(&self, checkpoint: &Checkpoint) -> Result<PathBuf, String> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        checkpoint::save(&self.dir, &self.model_hash, &self.layout, checkpoint)
            .map_err(|e| e.to_string())
    }
}

pub struct SyncActor {
    node_id: String,
    round: u64,
    theta0: Arc<Vec<f32>>,
    momentum: Vec<f32>,
    optimizer: OuterOptimizer,
    rule: Rule,
    aggregator: Addr<AggregatorActor>,
    trainer: Option<Recipient<StartRound>>,
    last_snapshot: Option<Arc<TrainerSnapshot>>,
    checkpoints: CheckpointTarget,
    status: StatusBoard,
    /// Serves θ₀ to peers (healing and joining nodes fetch it by its hash).
    network: Recipient<OfferBlob>,
}

impl SyncActor {
    /// `resume` is the trainer state of the checkpoint the node started from, if any.
    pub fn new(
        node_id: String,
        outer: OuterState,
        resume: Option<TrainerSnapshot>,
        optimizer: OuterOptimizer,
        rule: Rule,
        aggregator: Addr<AggregatorActor>,
        checkpoints: CheckpointTarget,
        status: StatusBoard,
        network: Recipient<OfferBlob>,
    ) -> Self {
        let last_snapshot = resume.map(Arc::new);
        Self {
            node_id,
            round: outer.round,
            theta0: Arc::new(outer.theta0),
            momentum: outer.momentum,
            optimizer,
            rule,
            aggregator,
            trainer: None,
            last_snapshot,
            checkpoints,
            status,
            network,
        }
    }

    fn checkpoint_of(&self, snapshot: &TrainerSnapshot) -> Checkpoint {
        Checkpoint {
            trainer: snapshot.aligned_to(self.round, &self.theta0),
            outer: OuterState {
                round: self.round,
                theta0: self.theta0.to_vec(),
                momentum: self.momentum.clone(),
            },
        }
    }
}

impl SyncActor {
    /// Hashes θ₀ (its little-endian f32 bytes), publishes the hash for heartbeats and serves the
    /// bytes to peers under it.
    fn publish_theta0(&self) {
        let bytes = Arc::new(bytemuck::cast_slice::<f32, u8>(&self.theta0).to_vec());
        let id = BlobId::of(&bytes);
        self.status.update(|s| s.theta0_hash = id.to_string());
        self.network.do_send(OfferBlob { id, bytes });
    }
}

impl Actor for SyncActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        self.publish_theta0();
    }
}

impl Handler<RegisterTrainer> for SyncActor {
    type Result = ();
    fn handle(&mut self, msg: RegisterTrainer, _: &mut Self::Context) {
        self.trainer = Some(msg.0);
    }
}

impl Handler<InnerRoundDone> for SyncActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: InnerRoundDone, _: &mut Self::Context) -> Self::Result {
        let round = self.round;
        if msg.round != round {
            warn!(
                reported = msg.round,
                current = round,
                "ignoring θ_H of another round"
            );
            return Box::pin(fut::ready(()));
        }
        let own = Contribution {
            node_id: self.node_id.clone(),
            delta: pseudo_gradient(&self.theta0, &msg.theta_h),
            tokens: msg.tokens,
        };
        let request = AggregateRound {
            round,
            rule: self.rule,
            contributions: vec![own],
        };
        Box::pin(self.aggregator.send(request).into_actor(self).map(move |result, act, _| {
            let aggregate = match result {
                Ok(Ok(aggregate)) => aggregate,
                Ok(Err(e)) => return error!(round, error = %e, "aggregation refused the round; θ₀ unchanged"),
                Err(e) => return error!(round, error = %e, "aggregator unavailable; θ₀ unchanged"),
            };
            let mut theta0 = act.theta0.to_vec();
            act.optimizer.step(&mut theta0, &mut act.momentum, &aggregate.delta);
            act.theta0 = Arc::new(theta0);
            act.round += 1;
            act.publish_theta0();
            let kept = aggregate.verdicts.iter().filter(|v| v.kept).count();
            let reason = format!("round {round} closed: {kept} of {} contribution(s) kept by rule {}, outer Nesterov step applied", aggregate.verdicts.len(), act.rule.name());
            info!(round, kept, "{reason}");
            act.status.update(|s| {
                s.outer_step_count = act.round;
                s.last_outer_reason = Some(reason);
            });
            if let Some(trainer) = &act.trainer {
                trainer.do_send(StartRound { round: act.round, theta0: act.theta0.clone() });
            }
        }))
    }
}

impl Handler<SnapshotTaken> for SyncActor {
    type Result = ();

    fn handle(&mut self, msg: SnapshotTaken, _: &mut Self::Context) {
        let checkpoint = self.checkpoint_of(&msg.0);
        let step = checkpoint.trainer.counters.global_step;
        self.last_snapshot = Some(msg.0);
        let (target, status) = (self.checkpoints.clone(), self.status.clone());
        // Writing tens of MB is blocking I/O: keep it off the async loop.
        actix::spawn(async move {
            match tokio::task::spawn_blocking(move || target.write(&checkpoint)).await {
                Ok(Ok(path)) => {
                    status.update(|s| {
                        s.checkpoints_written += 1;
                        s.last_checkpoint_step = Some(step);
                    });
                    tracing::debug!(step, path = %path.display(), "checkpoint written");
                }
                Ok(Err(e)) => error!(step, error = %e, "checkpoint failed"),
                Err(e) => error!(step, error = %e, "checkpoint writer crashed"),
            }
        });
    }
}

impl Handler<GetResumeState> for SyncActor {
    type Result = MessageResult<GetResumeState>;

    fn handle(&mut self, _: GetResumeState, _: &mut Self::Context) -> Self::Result {
        let snapshot = self
            .last_snapshot
            .as_ref()
            .map(|s| s.aligned_to(self.round, &self.theta0));
        MessageResult(ResumeState {
            snapshot,
            round: self.round,
            theta0: self.theta0.clone(),
        })
    }
}

impl Handler<WriteCheckpoint> for SyncActor {
    type Result = ResponseFuture<Result<PathBuf, String>>;

    fn handle(&mut self, msg: WriteCheckpoint, _: &mut Self::Context) -> Self::Result {
        let Some(snapshot) = msg.0.or_else(|| self.last_snapshot.clone()) else {
            return Box::pin(async { Err("no trainer state to checkpoint".to_string()) });
        };
        let checkpoint = self.checkpoint_of(&snapshot);
        let target = self.checkpoints.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || target.write(&checkpoint))
                .await
                .map_err(|e| e.to_string())?
        })
    }
}
