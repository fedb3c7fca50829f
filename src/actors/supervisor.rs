//! SupervisorActor: starts the TrainerActor on its own thread and restarts it when any of its
//! handlers panics (a step, an evaluation, the reset to θ₀, a snapshot) — from the last snapshot, made consistent with the current round by the SyncActor — while
//! the rest of the node (HTTP, sync) keeps running. Restarts are counted on /api/stats.

use std::sync::Arc;

use actix::prelude::*;
use tracing::{info, warn};

use super::messages::{GetResumeState, RegisterTrainer, ResumeState, StopTraining, TrainerCrashed};
use super::sync::SyncActor;
use super::trainer::{Cadence, PanicFault, TrainerActor};
use crate::model::NeuroLlmConfig;
use crate::model::checkpoint::TrainerSnapshot;
use crate::model::data::TokenDataset;
use crate::model::training::{Trainer, TrainerOptions};
use crate::status::{StatusBoard, TrainerPhase};

/// Everything needed to build a trainer, again and again.
#[derive(Clone)]
pub struct TrainerRecipe {
    pub model: NeuroLlmConfig,
    pub data: Arc<TokenDataset>,
    pub options: TrainerOptions,
    pub cadence: Cadence,
    pub fault: PanicFault,
}

pub struct SupervisorActor {
    recipe: TrainerRecipe,
    sync: Addr<SyncActor>,
    status: StatusBoard,
    /// The trainer's own thread; every incarnation of the trainer runs there.
    arbiter: Arbiter,
    trainer: Option<Addr<TrainerActor>>,
    restarts: u64,
    stopping: bool,
}

impl SupervisorActor {
    pub fn new(recipe: TrainerRecipe, sync: Addr<SyncActor>, status: StatusBoard) -> Self {
        Self {
            recipe,
            sync,
            status,
            arbiter: Arbiter::new(),
            trainer: None,
            restarts: 0,
            stopping: false,
        }
    }

    /// Asks the SyncActor what to resume from, then starts a trainer on the trainer thread.
    fn start_trainer(&mut self, ctx: &mut Context<Self>) {
        let fut = self
            .sync
            .send(GetResumeState)
            .into_actor(self)
            .map(|resume, act, ctx| match resume {
                Ok(resume) if !act.stopping => act.spawn_trainer(resume, ctx),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "sync actor unavailable; trainer not started"),
            });
        ctx.wait(fut);
    }

    fn spawn_trainer(&mut self, resume: ResumeState, ctx: &mut Context<Self>) {
        let recipe = self.recipe.clone();
        let (sync, status) = (self.sync.clone(), self.status.clone());
        let supervisor = ctx.address().recipient();
        let snapshot: Option<TrainerSnapshot> = resume.snapshot;
        let addr = TrainerActor::start_in_arbiter(&self.arbiter.handle(), move |_| {
            let trainer = Trainer::new(
                &recipe.model,
                recipe.data,
                recipe.options,
                &resume.theta0,
                resume.round,
                snapshot,
            );
            TrainerActor::new(
                trainer,
                recipe.cadence,
                sync,
                supervisor,
                status,
                recipe.fault,
            )
        });
        self.sync.do_send(RegisterTrainer(addr.clone().recipient()));
        self.trainer = Some(addr);
    }
}

impl Actor for SupervisorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.start_trainer(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.arbiter.stop();
    }
}

impl Handler<TrainerCrashed> for SupervisorActor {
    type Result = ();

    fn handle(&mut self, msg: TrainerCrashed, ctx: &mut Self::Context) {
        self.restarts += 1;
        self.trainer = None;
        let restarts = self.restarts;
        warn!(step = msg.step, reason = %msg.reason, restarts, "trainer crashed; restarting it from the last snapshot");
        let stopping = self.stopping;
        self.status.update(|s| {
            s.trainer_restarts = restarts;
            s.last_crash = Some(format!("step {}: {}", msg.step, msg.reason));
            // Not "training" while no trainer runs; a crash during shutdown stays "stopped".
            if !stopping {
                s.phase = TrainerPhase::Restarting;
            }
        });
        if !stopping {
            self.start_trainer(ctx);
            info!(restarts, "trainer restarted");
        }
    }
}

impl Handler<StopTraining> for SupervisorActor {
    type Result = ResponseFuture<Option<Arc<TrainerSnapshot>>>;

    fn handle(&mut self, msg: StopTraining, _: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        let trainer = self.trainer.take();
        Box::pin(async move {
            match trainer {
                Some(t) => t.send(msg).await.ok().flatten(),
                None => None,
            }
        })
    }
}
