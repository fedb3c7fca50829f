//! Checkpoint consensus messages and certificates as bytes: JSON with hex fields, every field
//! checked on the way in (a peer's message that does not decode is a counted rejection, never a
//! panic).

use malachitebft_core_consensus::SignedConsensusMsg;
use malachitebft_core_types::{
    CommitCertificate, CommitSignature, NilOrVal, Round, SignedMessage, Value, VoteType,
};
use serde::{Deserialize, Serialize};

use super::context::{
    Checkpoint, CheckpointContext, CheckpointId, EcdsaSignature, Epoch, NodeAddress, Proposal,
    Validator, ValidatorSet, Vote,
};
use crate::admission::parse_public_key;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    Proposal,
    Prevote,
    Precommit,
}

/// One signed consensus message on the ledger topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsensusWire {
    pub kind: MessageKind,
    pub epoch: u64,
    pub round: u32,
    /// Proposals: the round whose prevotes locked the value, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pol_round: Option<u32>,
    /// Proposals: the checkpoint's events root and balances root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<(String, String)>,
    /// Votes: the checkpoint id voted for; absent for a vote for nothing (nil).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_id: Option<String>,
    /// The signer's node_id.
    pub validator: String,
    pub signature: String,
}

fn hash_from_hex(text: &str, what: &str) -> Result<[u8; 32], String> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes)
        .map_err(|_| format!("{what} is not 64 hex characters"))?;
    Ok(bytes)
}

fn signature_from_hex(text: &str) -> Result<EcdsaSignature, String> {
    let mut bytes = [0u8; 64];
    hex::decode_to_slice(text, &mut bytes)
        .map_err(|_| "signature is not 128 hex characters".to_string())?;
    Ok(EcdsaSignature(bytes))
}

fn address_from(node_id: &str) -> Result<NodeAddress, String> {
    if node_id.len() == 32 && node_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(NodeAddress(node_id.to_ascii_lowercase()))
    } else {
        Err("validator is not a node_id (32 hex characters)".into())
    }
}

fn defined(round: Round) -> u32 {
    round.as_u32().unwrap_or(0)
}

impl ConsensusWire {
    pub fn from_message(message: &SignedConsensusMsg<CheckpointContext>) -> Self {
        match message {
            SignedConsensusMsg::Proposal(signed) => {
                let p = &signed.message;
                Self {
                    kind: MessageKind::Proposal,
                    epoch: p.height.0,
                    round: defined(p.round),
                    pol_round: p.pol_round.as_u32(),
                    value: Some((
                        hex::encode(p.value.events_root),
                        hex::encode(p.value.balances_root),
                    )),
                    value_id: None,
                    validator: p.proposer.0.clone(),
                    signature: hex::encode(signed.signature.0),
                }
            }
            SignedConsensusMsg::Vote(signed) => {
                let v = &signed.message;
                Self {
                    kind: match v.vote_type {
                        VoteType::Prevote => MessageKind::Prevote,
                        VoteType::Precommit => MessageKind::Precommit,
                    },
                    epoch: v.height.0,
                    round: defined(v.round),
                    pol_round: None,
                    value: None,
                    value_id: match &v.value {
                        NilOrVal::Nil => None,
                        NilOrVal::Val(id) => Some(id.to_string()),
                    },
                    validator: v.voter.0.clone(),
                    signature: hex::encode(signed.signature.0),
                }
            }
        }
    }

    /// The message, or what is wrong with it (signatures are checked by the engine).
    pub fn to_message(&self) -> Result<SignedConsensusMsg<CheckpointContext>, String> {
        let signature = signature_from_hex(&self.signature)?;
        let validator = address_from(&self.validator)?;
        let (epoch, round) = (Epoch(self.epoch), Round::new(self.round));
        let vote = |vote_type| -> Result<_, String> {
            if self.value.is_some() || self.pol_round.is_some() {
                return Err("a vote carries a value id, not a value".into());
            }
            let value = match &self.value_id {
                None => NilOrVal::Nil,
                Some(id) => NilOrVal::Val(CheckpointId(hash_from_hex(id, "value_id")?)),
            };
            let vote = Vote {
                height: epoch,
                round,
                value,
                vote_type,
                voter: validator.clone(),
            };
            Ok(SignedConsensusMsg::Vote(SignedMessage::new(
                vote, signature,
            )))
        };
        match self.kind {
            MessageKind::Prevote => vote(VoteType::Prevote),
            MessageKind::Precommit => vote(VoteType::Precommit),
            MessageKind::Proposal => {
                let (Some((events, balances)), None) = (&self.value, &self.value_id) else {
                    return Err("a proposal carries a value and no value id".into());
                };
                let proposal = Proposal {
                    height: epoch,
                    round,
                    value: Checkpoint {
                        epoch: self.epoch,
                        events_root: hash_from_hex(events, "events root")?,
                        balances_root: hash_from_hex(balances, "balances root")?,
                    },
                    pol_round: self.pol_round.map(Round::new).unwrap_or(Round::Nil),
                    proposer: validator,
                };
                Ok(SignedConsensusMsg::Proposal(SignedMessage::new(
                    proposal, signature,
                )))
            }
        }
    }
}

/// A decided checkpoint as stored and served: the value and the precommits that decided it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRecord {
    pub epoch: u64,
    pub round: u32,
    pub checkpoint_id: String,
    pub events_root: String,
    pub balances_root: String,
    /// (validator node_id, precommit signature), hex.
    pub signatures: Vec<(String, String)>,
    /// The validators that decided it: (compressed public key, power), hex.
    pub validators: Vec<(String, u64)>,
}

impl CertificateRecord {
    pub fn new(
        checkpoint: &Checkpoint,
        certificate: &CommitCertificate<CheckpointContext>,
        validators: &ValidatorSet,
    ) -> Self {
        Self {
            epoch: checkpoint.epoch,
            round: defined(certificate.round),
            checkpoint_id: checkpoint.id().to_string(),
            events_root: hex::encode(checkpoint.events_root),
            balances_root: hex::encode(checkpoint.balances_root),
            signatures: certificate
                .commit_signatures
                .iter()
                .map(|s| (s.address.0.clone(), hex::encode(s.signature.0)))
                .collect(),
            validators: validators
                .validators()
                .iter()
                .map(|v| (hex::encode(v.public_key.serialize()), v.voting_power))
                .collect(),
        }
    }

    /// A record of `checkpoint` that nobody signed: what a forger serves (the
    /// NEUROSHARD_FAULT_HISTORY_FORGE switch), a benchmark's fixture; no certificate check passes it.
    pub fn unsigned(checkpoint: &Checkpoint) -> Self {
        Self {
            epoch: checkpoint.epoch,
            round: 0,
            checkpoint_id: checkpoint.id().to_string(),
            events_root: hex::encode(checkpoint.events_root),
            balances_root: hex::encode(checkpoint.balances_root),
            signatures: Vec::new(),
            validators: Vec::new(),
        }
    }

    /// The validator set it names, or what is malformed.
    pub fn validator_set(&self) -> Result<ValidatorSet, String> {
        let validators = self
            .validators
            .iter()
            .map(|(key, power)| Ok(Validator::new(parse_public_key(key)?, *power)))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(ValidatorSet::new(validators))
    }

    /// The checkpoint and certificate, or what is malformed. Whether the certificate holds
    /// (signatures, power) is `CheckpointContext::verify_certificate`'s question.
    pub fn decode(&self) -> Result<(Checkpoint, CommitCertificate<CheckpointContext>), String> {
        let checkpoint = Checkpoint {
            epoch: self.epoch,
            events_root: hash_from_hex(&self.events_root, "events root")?,
            balances_root: hash_from_hex(&self.balances_root, "balances root")?,
        };
        if checkpoint.id().to_string() != self.checkpoint_id {
            return Err("checkpoint_id is not the id of the roots".into());
        }
        let signatures = self
            .signatures
            .iter()
            .map(|(node_id, signature)| {
                Ok(CommitSignature::new(
                    address_from(node_id)?,
                    signature_from_hex(signature)?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let certificate = CommitCertificate {
            height: Epoch(self.epoch),
            round: Round::new(self.round),
            value_id: checkpoint.id(),
            commit_signatures: signatures,
        };
        Ok((checkpoint, certificate))
    }
}
