//! The actor tree. Actors are thin owners of state; the logic they call lives in model/,
//! diloco/ and aggregate/. Every message type is in messages.rs.

pub mod aggregator;
pub mod checkpoint;
pub mod http;
pub mod ledger;
pub mod messages;
pub mod peer;
pub mod supervisor;
pub mod sybil;
pub mod sync;
pub mod trainer;

use std::time::Duration;

use actix::prelude::*;
use futures::stream;
use tokio::time::{Instant, MissedTickBehavior, interval_at};

/// Runs `task` every `period` (first after one period), like `Context::run_interval`, except
/// after a stall: actix's interval fires every tick missed while the process was suspended at
/// once when it resumes (52 heartbeats in a burst after a 130 s SIGSTOP, which every peer's
/// rate limit took for a flood and banned); this one runs once and goes on a period later.
pub fn run_every<A, F>(ctx: &mut Context<A>, period: Duration, mut task: F) -> SpawnHandle
where
    A: Actor<Context = Context<A>>,
    F: FnMut(&mut A, &mut Context<A>) + 'static,
{
    let mut timer = interval_at(Instant::now() + period, period);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let ticks = stream::unfold(timer, |mut timer| async move {
        timer.tick().await;
        Some(((), timer))
    });
    ctx.spawn(
        actix::fut::wrap_stream::<_, A>(ticks)
            .map(move |(), act, ctx| task(act, ctx))
            .finish(),
    )
}
