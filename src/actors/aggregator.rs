//! AggregatorActor: runs the configured robust aggregation rule on its own thread, off the async
//! loops (the rules are CPU-heavy and use rayon inside). It owns no state.

use actix::prelude::*;

use super::messages::AggregateRound;
use crate::aggregate::{Aggregate, AggregateError, aggregate};

pub struct AggregatorActor;

impl Actor for AggregatorActor {
    type Context = SyncContext<Self>;
}

impl Handler<AggregateRound> for AggregatorActor {
    type Result = Result<Aggregate, AggregateError>;

    fn handle(&mut self, msg: AggregateRound, _: &mut Self::Context) -> Self::Result {
        let result = aggregate(&msg.config, &msg.contributions);
        if let Err(e) = &result {
            tracing::warn!(round = msg.round, rule = msg.config.rule.name(), error = %e, "aggregation failed");
        }
        result
    }
}
