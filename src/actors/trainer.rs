//! TrainerActor: owns the burn model, the inner AdamW state and the data cursor, on its own thread
//! (an Arbiter), so training never blocks the HTTP or P2P loops. It runs one inner step per
//! `TrainStep` message and sends itself the next one through its mailbox, so `StartRound` and
//! `StopTraining` are handled between steps.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use actix::prelude::*;
use tracing::{error, info};

use super::messages::{
    InnerRoundDone, RoundWork, SnapshotTaken, StartRound, StopTraining, TrainStep, TrainerCrashed,
};
use super::sync::SyncActor;
use crate::model::checkpoint::TrainerSnapshot;
use crate::model::training::Trainer;
use crate::status::{StatusBoard, TrainerPhase};

/// When the trainer reports, evaluates and snapshots.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    pub inner_steps: u64,
    pub eval_every: u64,
    pub log_every: u64,
    pub checkpoint_every: u64,
}

/// Test fault switch NEUROSHARD_FAULT_TRAINER_PANIC_AT_STEP=N: panic inside step N, once per
/// process (`fired` is shared across restarts, or the restarted trainer would panic again).
#[derive(Debug, Clone, Default)]
pub struct PanicFault {
    pub at_step: Option<u64>,
    pub fired: Arc<AtomicBool>,
}

pub struct TrainerActor {
    trainer: Trainer,
    cadence: Cadence,
    sync: Addr<SyncActor>,
    supervisor: Recipient<TrainerCrashed>,
    status: StatusBoard,
    fault: PanicFault,
    /// No step runs while the round's outer step is pending or after a stop.
    idle: bool,
    /// This round's work so far, reported with θ_H (and proven to the ledger).
    tally: RoundTally,
    window: (Instant, u64),
}

struct RoundTally {
    started: Instant,
    tokens: u64,
    batches: u64,
    loss_sum: f64,
}

impl RoundTally {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            tokens: 0,
            batches: 0,
            loss_sum: 0.0,
        }
    }
}

impl TrainerActor {
    pub fn new(
        trainer: Trainer,
        cadence: Cadence,
        sync: Addr<SyncActor>,
        supervisor: Recipient<TrainerCrashed>,
        status: StatusBoard,
        fault: PanicFault,
    ) -> Self {
        Self {
            trainer,
            cadence,
            sync,
            supervisor,
            status,
            fault,
            idle: false,
            tally: RoundTally::new(),
            window: (Instant::now(), 0),
        }
    }

    fn step_guarded(&mut self) -> Result<crate::model::training::StepReport, String> {
        let next_step = self.trainer.counters.global_step + 1;
        let fault = &self.fault;
        let trainer = &mut self.trainer;
        catch_unwind(AssertUnwindSafe(|| {
            if fault.at_step == Some(next_step) && !fault.fired.swap(true, Ordering::SeqCst) {
                panic!("injected fault: NEUROSHARD_FAULT_TRAINER_PANIC_AT_STEP={next_step}");
            }
            trainer.step()
        }))
        .map_err(|payload| {
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into())
        })
    }

    /// The validation loss of the current parameters, logged (the experiment reads these lines).
    fn validate(&mut self) {
        let val = self.trainer.evaluate();
        let c = self.trainer.counters;
        info!(
            step = c.global_step,
            round = c.round,
            val_loss = format!("{val:.4}"),
            "validation"
        );
    }

    fn publish_snapshot(&self) {
        let snapshot = Arc::new(self.trainer.snapshot());
        self.status
            .publish_weights(Arc::new(snapshot.params.clone()));
        self.sync.do_send(SnapshotTaken(snapshot));
    }
}

impl Actor for TrainerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // This Arbiter's thread only trains: it yields to the API and the network under contention.
        crate::model::backend::lower_thread_priority();
        let c = self.trainer.counters;
        info!(
            step = c.global_step,
            round = c.round,
            inner_step = c.inner_step,
            "trainer started"
        );
        if c.initial_val_loss.is_none() {
            self.validate();
        }
        let counters = self.trainer.counters;
        self.status.update(|s| {
            s.phase = TrainerPhase::Training;
            s.record_counters(&counters);
        });
        ctx.address().do_send(TrainStep);
    }
}

impl Handler<TrainStep> for TrainerActor {
    type Result = ();

    fn handle(&mut self, _: TrainStep, ctx: &mut Self::Context) {
        if self.idle {
            return;
        }
        let report = match self.step_guarded() {
            Ok(report) => report,
            Err(reason) => {
                let step = self.trainer.counters.global_step + 1;
                error!(step, %reason, "training step panicked; asking the supervisor for a restart");
                self.idle = true;
                self.supervisor.do_send(TrainerCrashed { reason, step });
                ctx.stop();
                return;
            }
        };
        self.tally.tokens += report.tokens;
        self.tally.batches += 1;
        self.tally.loss_sum += f64::from(report.loss);
        let c = self.trainer.counters;
        let cadence = self.cadence;

        self.window.1 += report.tokens;
        let elapsed = self.window.0.elapsed().as_secs_f64();
        let tokens_per_sec = self.window.1 as f64 / elapsed.max(1e-9);
        if c.global_step.is_multiple_of(cadence.log_every) {
            info!(
                step = c.global_step,
                loss = format!("{:.4}", report.loss),
                tokens_per_sec = format!("{tokens_per_sec:.0}"),
                lr = format!("{:.2e}", report.lr),
                grad_norm = format!("{:.3}", report.grad_norm),
                steps_to_sync = cadence.inner_steps - c.inner_step,
                "training"
            );
            self.window = (Instant::now(), 0);
        }
        let round_done = c.inner_step >= cadence.inner_steps;
        if c.global_step.is_multiple_of(cadence.eval_every) && !round_done {
            self.validate();
        }
        let c = self.trainer.counters;
        self.status.update(|s| {
            s.record_counters(&c);
            s.lr = report.lr;
            if elapsed > 0.5 || s.tokens_per_sec == 0.0 {
                s.tokens_per_sec = tokens_per_sec;
            }
        });
        if c.global_step.is_multiple_of(cadence.checkpoint_every) && !round_done {
            self.publish_snapshot();
        }
        if round_done {
            self.idle = true;
            self.status.update(|s| s.phase = TrainerPhase::Syncing);
            let tally = std::mem::replace(&mut self.tally, RoundTally::new());
            self.sync.do_send(InnerRoundDone {
                round: c.round,
                theta_h: Arc::new(self.trainer.params().to_vec()),
                tokens: tally.tokens,
                work: RoundWork {
                    batches: tally.batches,
                    mean_loss: (tally.loss_sum / tally.batches.max(1) as f64) as f32,
                    epoch: self.trainer.data_epoch(),
                    seconds: tally.started.elapsed().as_secs_f64(),
                },
            });
        } else {
            ctx.address().do_send(TrainStep);
        }
    }
}

impl Handler<StartRound> for TrainerActor {
    type Result = ();

    fn handle(&mut self, msg: StartRound, ctx: &mut Self::Context) {
        self.trainer.reset_to(&msg.theta0, msg.round);
        // The new θ₀ is the shared model every node now holds: its loss is the network's.
        self.validate();
        self.tally = RoundTally::new();
        let counters = self.trainer.counters;
        self.status.update(|s| {
            s.phase = TrainerPhase::Training;
            s.record_counters(&counters);
        });
        // Every round start is checkpointed: the on-disk state is never more than a round old.
        self.publish_snapshot();
        if self.idle {
            self.idle = false;
            ctx.address().do_send(TrainStep);
        }
    }
}

impl Handler<StopTraining> for TrainerActor {
    type Result = Option<Arc<TrainerSnapshot>>;

    fn handle(&mut self, _: StopTraining, ctx: &mut Self::Context) -> Self::Result {
        self.idle = true;
        self.status.update(|s| s.phase = TrainerPhase::Stopped);
        ctx.stop();
        Some(Arc::new(self.trainer.snapshot()))
    }
}
