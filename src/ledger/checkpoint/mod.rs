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

use std::collections::BTreeMap;

pub use context::{Checkpoint, CheckpointContext, CheckpointId, Validator, ValidatorSet};
pub use engine::{Decision, Engine, Output, Timeouts};
pub use wire::{CertificateRecord, ConsensusWire};

/// Whether the validators of a certificate this node cannot chain to one it holds (the first it
/// adopts: its validators come from history it does not have yet) carry the network's weight as
/// this node weighs it now (admission or reputation, the weight that moves θ₀, TRUST.md #2):
/// more than 2/3 of all the weight it knows. Identities that never trained with this network
/// weigh nothing, so a history an attacker made up with keys of its own is refused, however many
/// keys signed it.
pub fn anchored_by_weight(
    validators: &ValidatorSet,
    weights: &BTreeMap<String, f64>,
) -> Result<(), String> {
    let total: f64 = weights
        .values()
        .filter(|w| w.is_finite() && **w > 0.0)
        .sum();
    let held: f64 = validators
        .validators()
        .iter()
        .filter_map(|v| weights.get(&v.address.0))
        .filter(|w| w.is_finite() && **w > 0.0)
        .sum();
    if total > 0.0 && held * 3.0 > total * 2.0 {
        Ok(())
    } else {
        Err(format!(
            "its validators hold weight {held:.2} of the {total:.2} this node knows; more than 2/3 is needed"
        ))
    }
}
