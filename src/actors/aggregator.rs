//! AggregatorActor: runs the configured robust aggregation rule on its own thread, off the async
//! loops (the rules are CPU-heavy and use rayon inside). It owns no state.

use actix::prelude::*;

use super::messages::{AggregateRound, AggregateSlices, SettleRound};
use crate::aggregate::shard::{SliceReport, aggregate_slice, settle_round};
use crate::aggregate::{Aggregate, AggregateError, aggregate};

pub struct AggregatorActor;

impl Actor for AggregatorActor {
    type Context = SyncContext<Self>;
}

impl Handler<AggregateRound> for AggregatorActor {
    type Result = Result<Aggregate, AggregateError>;

    fn handle(&mut self, msg: AggregateRound, _: &mut Self::Context) -> Self::Result {
        let result = aggregate(&msg.config, msg.round, &msg.contributions);
        if let Err(e) = &result {
            tracing::warn!(round = msg.round, rule = msg.config.rule.name(), error = %e, "aggregation failed");
        }
        result
    }
}

impl Handler<AggregateSlices> for AggregatorActor {
    type Result = Vec<SliceReport>;

    /// A slice the rule cannot aggregate (no parts) is left out: its partners' reports, or the
    /// other nodes' own computation, stand for it.
    fn handle(&mut self, msg: AggregateSlices, _: &mut Self::Context) -> Self::Result {
        msg.inputs
            .iter()
            .filter_map(|(slice, parts)| {
                aggregate_slice(&msg.config, msg.round, *slice, &msg.aggregator, parts)
                    .inspect_err(|e| {
                        tracing::warn!(round = msg.round, slice, error = %e, "slice not aggregated");
                    })
                    .ok()
            })
            .collect()
    }
}

impl Handler<SettleRound> for AggregatorActor {
    type Result = MessageResult<SettleRound>;

    fn handle(&mut self, msg: SettleRound, _: &mut Self::Context) -> Self::Result {
        MessageResult(settle_round(
            &msg.config,
            msg.round,
            &msg.codec,
            &msg.plan,
            msg.max_norm,
            msg.evidence,
        ))
    }
}
