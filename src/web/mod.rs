//! The REST API and the status page (actix-web handlers). Handlers read the published
//! [`StatusBoard`](crate::status::StatusBoard); none of them waits on the trainer.

mod api;
mod ledger;
mod metrics;

pub use api::{ApiError, ApiState, configure, not_found};
