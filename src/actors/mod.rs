//! The actor tree. Actors are thin owners of state; the logic they call lives in model/,
//! diloco/ and aggregate/. Every message type is in messages.rs.

pub mod aggregator;
pub mod http;
pub mod ledger;
pub mod messages;
pub mod peer;
pub mod supervisor;
pub mod sybil;
pub mod sync;
pub mod trainer;
