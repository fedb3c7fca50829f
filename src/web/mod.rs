//! The REST API and the status page (actix-web handlers). Handlers read the published
//! [`StatusBoard`](crate::status::StatusBoard); none of them waits on the trainer.
//!
//! Layers, each using only those below it: `error` ([`ApiError`]), `feed` (the dashboard's
//! sampler state), `state` ([`ApiState`] and the route helpers), `views` (JSON bodies shared by
//! routes and the dashboard's stream); on top, the route modules `api`, `dashboard`, `ledger`,
//! `metrics` and `openapi`.

mod api;
mod dashboard;
mod error;
mod feed;
mod ledger;
mod metrics;
mod openapi;
mod state;
mod views;

/// The POST routes' JSON bodies and the checks their handlers run before any actor is asked:
/// public so `tests/fuzz.rs` decodes and checks clients' bytes exactly as the handlers do.
pub use api::{FetchBlobRequest, GenerateRequest, configure};
pub use dashboard::tick;
pub use error::ApiError;
pub use ledger::{ReceiptRequest, SendRequest, StakeRequest, UnstakeRequest};
pub use state::{ApiState, not_found};
