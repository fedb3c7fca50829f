//! The REST API and the status page (actix-web handlers). Handlers read the published
//! [`StatusBoard`](crate::status::StatusBoard); none of them waits on the trainer.

mod api;
mod dashboard;
mod ledger;
mod metrics;
mod openapi;

pub use api::{ApiError, ApiState, configure, not_found};
pub use dashboard::tick;
