//! NeuroShard's types for Malachite (Tendermint as a library): what the checkpoint consensus
//! decides (height = emission epoch, value = the epoch's [`Checkpoint`]), who decides it
//! ([`ValidatorSet`]) and how its messages are signed: ECDSA secp256k1 over SHA-256 of canonical
//! bytes, like proofs, prefixed with the network's domain so a vote of one network counts in no
//! other.

use std::fmt;

use malachitebft_core_types::{
    self as mc, CertificateError, CommitCertificate, NilOrVal, Round, SignedMessage,
    SigningProvider, SigningProviderExt, ThresholdParams, VoteType,
};
use secp256k1::PublicKey;
use sha2::{Digest, Sha256};

use crate::crypto::{self, Identity};

/// A checkpoint's height: the emission epoch it seals.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl mc::Height for Epoch {
    const ZERO: Self = Epoch(0);
    const INITIAL: Self = Epoch(0);

    fn increment_by(&self, n: u64) -> Self {
        Epoch(self.0.saturating_add(n))
    }

    fn decrement_by(&self, n: u64) -> Option<Self> {
        self.0.checked_sub(n).map(Epoch)
    }

    fn as_u64(&self) -> u64 {
        self.0
    }
}

/// A validator's address: its node_id (hex of 16 bytes).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeAddress(pub String);

impl fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl mc::Address for NodeAddress {}

/// SHA-256 of a checkpoint's content: what votes and certificates name.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CheckpointId(pub [u8; 32]);

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// What the validators decide for an epoch: the root of its ordered events (with the statuses
/// that decide what they earn) and the root of the balance table they leave. A certificate names
/// only the id, so anyone holding the two roots can check them against it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Checkpoint {
    pub epoch: u64,
    pub events_root: [u8; 32],
    pub balances_root: [u8; 32],
}

impl mc::Value for Checkpoint {
    type Id = CheckpointId;

    fn id(&self) -> CheckpointId {
        let mut hasher = Sha256::new();
        hasher.update(b"neuroshard/checkpoint/v1");
        hasher.update(self.epoch.to_be_bytes());
        hasher.update(self.events_root);
        hasher.update(self.balances_root);
        CheckpointId(hasher.finalize().into())
    }
}

/// A 64-byte compact ECDSA signature (low-S, as `crypto::verify` demands).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EcdsaSignature(pub [u8; 64]);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secp256k1;

impl mc::SigningScheme for Secp256k1 {
    type DecodingError = String;
    type Signature = EcdsaSignature;
    type PublicKey = PublicKey;
    type PrivateKey = Identity;

    fn decode_signature(bytes: &[u8]) -> Result<EcdsaSignature, String> {
        let bytes: [u8; 64] = bytes
            .try_into()
            .map_err(|_| format!("a signature is 64 bytes, got {}", bytes.len()))?;
        Ok(EcdsaSignature(bytes))
    }

    fn encode_signature(signature: &EcdsaSignature) -> Vec<u8> {
        signature.0.to_vec()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validator {
    pub address: NodeAddress,
    pub public_key: PublicKey,
    pub voting_power: u64,
}

impl Validator {
    pub fn new(public_key: PublicKey, voting_power: u64) -> Self {
        Self {
            address: NodeAddress(crypto::node_id_of(&public_key)),
            public_key,
            voting_power,
        }
    }
}

impl mc::Validator<CheckpointContext> for Validator {
    fn address(&self) -> &NodeAddress {
        &self.address
    }

    fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    fn voting_power(&self) -> u64 {
        self.voting_power
    }
}

/// The validators of one epoch, sorted by address, each once, none without power: every node
/// that builds the set from the same inputs gets the same set, and so the same proposers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatorSet {
    validators: Vec<Validator>,
}

impl ValidatorSet {
    pub fn new(validators: impl IntoIterator<Item = Validator>) -> Self {
        let mut validators: Vec<Validator> = validators
            .into_iter()
            .filter(|v| v.voting_power > 0)
            .collect();
        validators.sort_by(|a, b| a.address.cmp(&b.address));
        validators.dedup_by(|a, b| a.address == b.address);
        Self { validators }
    }

    pub fn validators(&self) -> &[Validator] {
        &self.validators
    }

    pub fn contains(&self, address: &NodeAddress) -> bool {
        mc::ValidatorSet::get_by_address(self, address).is_some()
    }
}

impl mc::ValidatorSet<CheckpointContext> for ValidatorSet {
    fn count(&self) -> usize {
        self.validators.len()
    }

    fn total_voting_power(&self) -> u64 {
        self.validators.iter().map(|v| v.voting_power).sum()
    }

    fn get_by_address(&self, address: &NodeAddress) -> Option<&Validator> {
        self.validators
            .binary_search_by(|v| v.address.cmp(address))
            .ok()
            .map(|i| &self.validators[i])
    }

    fn get_by_index(&self, index: usize) -> Option<&Validator> {
        self.validators.get(index)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub height: Epoch,
    pub round: Round,
    pub value: Checkpoint,
    pub pol_round: Round,
    pub proposer: NodeAddress,
}

impl mc::Proposal<CheckpointContext> for Proposal {
    fn height(&self) -> Epoch {
        self.height
    }

    fn round(&self) -> Round {
        self.round
    }

    fn value(&self) -> &Checkpoint {
        &self.value
    }

    fn take_value(self) -> Checkpoint {
        self.value
    }

    fn pol_round(&self) -> Round {
        self.pol_round
    }

    fn validator_address(&self) -> &NodeAddress {
        &self.proposer
    }
}

/// A checkpoint is 72 bytes, so a proposal carries it whole and no part is ever sent; Malachite
/// still needs a part type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WholeValue;

impl mc::ProposalPart<CheckpointContext> for WholeValue {
    fn is_first(&self) -> bool {
        true
    }

    fn is_last(&self) -> bool {
        true
    }
}

/// A prevote or precommit. Vote extensions are not used.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Vote {
    pub height: Epoch,
    pub round: Round,
    pub value: NilOrVal<CheckpointId>,
    pub vote_type: VoteType,
    pub voter: NodeAddress,
}

impl mc::Vote<CheckpointContext> for Vote {
    fn height(&self) -> Epoch {
        self.height
    }

    fn round(&self) -> Round {
        self.round
    }

    fn value(&self) -> &NilOrVal<CheckpointId> {
        &self.value
    }

    fn take_value(self) -> NilOrVal<CheckpointId> {
        self.value
    }

    fn vote_type(&self) -> VoteType {
        self.vote_type
    }

    fn validator_address(&self) -> &NodeAddress {
        &self.voter
    }

    fn extension(&self) -> Option<&mc::SignedExtension<CheckpointContext>> {
        None
    }

    fn take_extension(&mut self) -> Option<mc::SignedExtension<CheckpointContext>> {
        None
    }

    fn extend(self, _: mc::SignedExtension<CheckpointContext>) -> Self {
        self
    }
}

/// The network's consensus context: its domain (the network id) separates its signatures from
/// every other network's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointContext {
    domain: String,
}

impl CheckpointContext {
    pub fn new(network: &str) -> Self {
        Self {
            domain: format!("neuroshard/checkpoint/v1/{network}"),
        }
    }

    fn message(&self, kind: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(160);
        bytes.extend_from_slice(&(self.domain.len() as u32).to_be_bytes());
        bytes.extend_from_slice(self.domain.as_bytes());
        bytes.extend_from_slice(kind);
        bytes
    }

    /// The bytes a validator signs for `vote`.
    pub fn vote_bytes(&self, vote: &Vote) -> Vec<u8> {
        let mut bytes = self.message(match vote.vote_type {
            VoteType::Prevote => b"/prevote",
            VoteType::Precommit => b"/precommit",
        });
        bytes.extend_from_slice(&vote.height.0.to_be_bytes());
        bytes.extend_from_slice(&vote.round.as_i64().to_be_bytes());
        match &vote.value {
            NilOrVal::Nil => bytes.push(0),
            NilOrVal::Val(id) => {
                bytes.push(1);
                bytes.extend_from_slice(&id.0);
            }
        }
        bytes.extend_from_slice(vote.voter.0.as_bytes());
        bytes
    }

    /// The bytes a proposer signs for `proposal`.
    pub fn proposal_bytes(&self, proposal: &Proposal) -> Vec<u8> {
        let mut bytes = self.message(b"/proposal");
        bytes.extend_from_slice(&proposal.height.0.to_be_bytes());
        bytes.extend_from_slice(&proposal.round.as_i64().to_be_bytes());
        bytes.extend_from_slice(&proposal.pol_round.as_i64().to_be_bytes());
        bytes.extend_from_slice(&proposal.value.epoch.to_be_bytes());
        bytes.extend_from_slice(&proposal.value.events_root);
        bytes.extend_from_slice(&proposal.value.balances_root);
        bytes.extend_from_slice(proposal.proposer.0.as_bytes());
        bytes
    }

    /// Whether `certificate` holds precommits of more than 2/3 of `validators`' power for its
    /// value, each a valid signature of a distinct validator of the set.
    pub fn verify_certificate(
        &self,
        certificate: &CommitCertificate<CheckpointContext>,
        validators: &ValidatorSet,
    ) -> Result<(), Box<CertificateError<CheckpointContext>>> {
        Verifier { ctx: self.clone() }
            .verify_commit_certificate(self, certificate, validators, ThresholdParams::default())
            .map_err(Box::new)
    }
}

impl mc::Context for CheckpointContext {
    type Address = NodeAddress;
    type Height = Epoch;
    type ProposalPart = WholeValue;
    type Proposal = Proposal;
    type Validator = Validator;
    type ValidatorSet = ValidatorSet;
    type Value = Checkpoint;
    type Vote = Vote;
    type Extension = ();
    type SigningScheme = Secp256k1;

    /// Round-robin over the sorted set, shifted by the epoch, so that no validator proposes
    /// every epoch's first round.
    fn select_proposer<'a>(
        &self,
        validator_set: &'a ValidatorSet,
        height: Epoch,
        round: Round,
    ) -> &'a Validator {
        let count = validator_set.validators.len().max(1) as u64;
        let round = u64::from(round.as_u32().unwrap_or(0));
        let index = height.0.wrapping_add(round) % count;
        // Consensus never runs a height with an empty set (Engine::start refuses it).
        &validator_set.validators[index as usize]
    }

    fn new_proposal(
        &self,
        height: Epoch,
        round: Round,
        value: Checkpoint,
        pol_round: Round,
        proposer: NodeAddress,
    ) -> Proposal {
        Proposal {
            height,
            round,
            value,
            pol_round,
            proposer,
        }
    }

    fn new_prevote(
        &self,
        height: Epoch,
        round: Round,
        value: NilOrVal<CheckpointId>,
        voter: NodeAddress,
    ) -> Vote {
        Vote {
            height,
            round,
            value,
            vote_type: VoteType::Prevote,
            voter,
        }
    }

    fn new_precommit(
        &self,
        height: Epoch,
        round: Round,
        value: NilOrVal<CheckpointId>,
        voter: NodeAddress,
    ) -> Vote {
        Vote {
            height,
            round,
            value,
            vote_type: VoteType::Precommit,
            voter,
        }
    }
}

fn signature_ok(public_key: &PublicKey, bytes: &[u8], signature: &EcdsaSignature) -> bool {
    crypto::verify(public_key, bytes, &signature.0)
}

/// Checks signatures and signs nothing: certificate checks need no key (`ledger verify` runs
/// without one). Malachite's certificate check is generic over a full provider, so the signing
/// half exists but is never called by it.
struct Verifier {
    ctx: CheckpointContext,
}

/// Signs this validator's votes and proposals and checks everyone's.
pub struct Signer {
    ctx: CheckpointContext,
    identity: Identity,
}

impl Signer {
    pub fn new(ctx: CheckpointContext, identity: Identity) -> Self {
        Self { ctx, identity }
    }

    pub fn address(&self) -> NodeAddress {
        NodeAddress(self.identity.node_id.clone())
    }

    pub fn ctx(&self) -> &CheckpointContext {
        &self.ctx
    }

    fn sign(&self, bytes: &[u8]) -> EcdsaSignature {
        EcdsaSignature(self.identity.sign(bytes))
    }
}

/// One implementation of the checks for both providers: what differs is only who signs.
macro_rules! checks {
    () => {
        fn verify_signed_vote(
            &self,
            vote: &Vote,
            signature: &EcdsaSignature,
            public_key: &PublicKey,
        ) -> bool {
            signature_ok(public_key, &self.ctx.vote_bytes(vote), signature)
        }

        fn verify_signed_proposal(
            &self,
            proposal: &Proposal,
            signature: &EcdsaSignature,
            public_key: &PublicKey,
        ) -> bool {
            signature_ok(public_key, &self.ctx.proposal_bytes(proposal), signature)
        }

        fn verify_signed_proposal_part(
            &self,
            _: &WholeValue,
            _: &EcdsaSignature,
            _: &PublicKey,
        ) -> bool {
            false
        }

        fn verify_signed_vote_extension(&self, _: &(), _: &EcdsaSignature, _: &PublicKey) -> bool {
            false
        }
    };
}

impl SigningProvider<CheckpointContext> for Signer {
    checks!();

    fn sign_vote(&self, vote: Vote) -> SignedMessage<CheckpointContext, Vote> {
        let signature = self.sign(&self.ctx.vote_bytes(&vote));
        SignedMessage::new(vote, signature)
    }

    fn sign_proposal(&self, proposal: Proposal) -> SignedMessage<CheckpointContext, Proposal> {
        let signature = self.sign(&self.ctx.proposal_bytes(&proposal));
        SignedMessage::new(proposal, signature)
    }

    fn sign_proposal_part(&self, part: WholeValue) -> SignedMessage<CheckpointContext, WholeValue> {
        SignedMessage::new(part, self.sign(b"neuroshard/checkpoint/unused-part"))
    }

    fn sign_vote_extension(&self, extension: ()) -> SignedMessage<CheckpointContext, ()> {
        SignedMessage::new(
            extension,
            self.sign(b"neuroshard/checkpoint/unused-extension"),
        )
    }
}

impl SigningProvider<CheckpointContext> for Verifier {
    checks!();

    fn sign_vote(&self, _: Vote) -> SignedMessage<CheckpointContext, Vote> {
        unreachable!("a Verifier is only asked to verify")
    }

    fn sign_proposal(&self, _: Proposal) -> SignedMessage<CheckpointContext, Proposal> {
        unreachable!("a Verifier is only asked to verify")
    }

    fn sign_proposal_part(&self, _: WholeValue) -> SignedMessage<CheckpointContext, WholeValue> {
        unreachable!("a Verifier is only asked to verify")
    }

    fn sign_vote_extension(&self, _: ()) -> SignedMessage<CheckpointContext, ()> {
        unreachable!("a Verifier is only asked to verify")
    }
}
