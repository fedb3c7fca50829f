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
    /// The round-start validation runs at rounds that are multiples of this.
    pub eval_every_rounds: u64,
    pub log_every: u64,
    pub checkpoint_every: u64,
}

/// The pieces of the trainer's work the test fault switch can make panic
/// (NEUROSHARD_FAULT_TRAINER_PANIC_IN): each runs in a different handler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TrainerWork {
    /// An inner step (`TrainStep`).
    #[default]
    Step,
    /// The validation loss (on start, every `eval_every` steps, at round starts).
    Evaluate,
    /// The reset to the round's θ₀ (`StartRound`).
    Reset,
    /// A snapshot for the checkpoint (every `checkpoint_every` steps, at each round start).
    Snapshot,
}

impl TrainerWork {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "step" => Some(Self::Step),
            "evaluate" => Some(Self::Evaluate),
            "reset" => Some(Self::Reset),
            "snapshot" => Some(Self::Snapshot),
            _ => None,
        }
    }
}

/// Test fault switch NEUROSHARD_FAULT_TRAINER_PANIC_AT_STEP=N (with _PANIC_IN=`work`, default
/// step): the first `work` at step N or later panics, once per process (`fired` is shared across
/// restarts, or the restarted trainer would panic again).
#[derive(Debug, Clone, Default)]
pub struct PanicFault {
    pub at_step: Option<u64>,
    pub work: TrainerWork,
    pub fired: Arc<AtomicBool>,
}

impl PanicFault {
    /// Panics when the switch is set for `work` at `step`, the first time only.
    fn fire(&self, work: TrainerWork, step: u64) {
        if let Some(at) = self.at_step
            && work == self.work
            && step >= at
            && !self.fired.swap(true, Ordering::SeqCst)
        {
            panic!(
                "injected fault: NEUROSHARD_FAULT_TRAINER_PANIC_AT_STEP={at} in {work:?} at step {step}"
            );
        }
    }
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

    /// Runs one handler's work. A panic anywhere in it (step, evaluation, reset, snapshot) would
    /// otherwise end this actor silently while the status still said "training": it is caught
    /// and reported to the supervisor, which restarts the trainer from the last snapshot.
    fn guarded(
        &mut self,
        handler: &'static str,
        ctx: &mut Context<Self>,
        work: impl FnOnce(&mut Self, &mut Context<Self>),
    ) {
        let Err(payload) = catch_unwind(AssertUnwindSafe(|| work(self, ctx))) else {
            return;
        };
        let reason = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        let reason = format!("{handler}: {reason}");
        let step = self.trainer.counters.global_step;
        error!(step, %reason, "trainer panicked; asking the supervisor for a restart");
        self.idle = true;
        self.supervisor.do_send(TrainerCrashed { reason, step });
        ctx.stop();
    }

    /// The validation loss of the current parameters, logged (the experiment reads these lines).
    fn validate(&mut self) {
        let step = self.trainer.counters.global_step;
        self.fault.fire(TrainerWork::Evaluate, step);
        let val = self.trainer.evaluate();
        let c = self.trainer.counters;
        info!(
            step = c.global_step,
            round = c.round,
            // Six decimals: codec and rule differences show in the fifth (issue 18).
            val_loss = format!("{val:.6}"),
            "validation"
        );
    }

    fn publish_snapshot(&self) {
        let step = self.trainer.counters.global_step;
        self.fault.fire(TrainerWork::Snapshot, step);
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
        self.guarded("start", ctx, |act, ctx| {
            let c = act.trainer.counters;
            info!(
                step = c.global_step,
                round = c.round,
                inner_step = c.inner_step,
                "trainer started"
            );
            if c.initial_val_loss.is_none() {
                act.validate();
            }
            let counters = act.trainer.counters;
            act.status.update(|s| {
                s.phase = TrainerPhase::Training;
                s.record_counters(&counters);
            });
            ctx.address().do_send(TrainStep);
        });
    }
}

impl TrainerActor {
    fn train_step(&mut self, ctx: &mut Context<Self>) {
        self.fault
            .fire(TrainerWork::Step, self.trainer.counters.global_step + 1);
        let report = self.trainer.step();
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

    fn start_round(&mut self, msg: StartRound, ctx: &mut Context<Self>) {
        self.fault
            .fire(TrainerWork::Reset, self.trainer.counters.global_step);
        self.trainer.reset_to(&msg.theta0, msg.round);
        // The new θ₀ is the shared model every node now holds: its loss is the network's.
        if msg.round.is_multiple_of(self.cadence.eval_every_rounds) {
            self.validate();
        }
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

impl Handler<TrainStep> for TrainerActor {
    type Result = ();

    fn handle(&mut self, _: TrainStep, ctx: &mut Self::Context) {
        if !self.idle {
            self.guarded("TrainStep", ctx, Self::train_step);
        }
    }
}

impl Handler<StartRound> for TrainerActor {
    type Result = ();

    fn handle(&mut self, msg: StartRound, ctx: &mut Self::Context) {
        self.guarded("StartRound", ctx, |act, ctx| act.start_round(msg, ctx));
    }
}

impl Handler<StopTraining> for TrainerActor {
    type Result = Option<Arc<TrainerSnapshot>>;

    fn handle(&mut self, _: StopTraining, ctx: &mut Self::Context) -> Self::Result {
        self.idle = true;
        self.status.update(|s| s.phase = TrainerPhase::Stopped);
        let mut snapshot = None;
        // A snapshot that panics is reported like any crash; the node then shuts down without
        // the trainer's part of the checkpoint (the supervisor does not restart while stopping).
        self.guarded("StopTraining", ctx, |act, _| {
            snapshot = Some(Arc::new(act.trainer.snapshot()));
        });
        ctx.stop();
        snapshot
    }
}
