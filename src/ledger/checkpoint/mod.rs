//! Checkpoints of the ledger: every emission epoch, the validators decide one value (the root of
//! the epoch's ordered events and of the balances they leave) with Tendermint, through Malachite's
//! effect-based core. A decided checkpoint carries its commit certificate (precommits of more than
//! 2/3 of the validators' power); a node that was away trusts an epoch's history by it.
//!
//! `context.rs`: Malachite's types for us (height = epoch, value = checkpoint, ECDSA votes);
//! `engine.rs`: one validator's consensus as inputs → outputs, no clock or socket; `wire.rs`:
//! its messages and certificates as checked JSON.

pub mod context;
pub mod engine;
pub mod wire;

#[cfg(test)]
mod tests;

pub use context::{Checkpoint, CheckpointContext, CheckpointId, Validator, ValidatorSet};
pub use engine::{Decision, Engine, Output, Timeouts};
pub use wire::{CertificateRecord, ConsensusWire};
