//! One validator's checkpoint consensus: Malachite's Tendermint core driven by inputs (start an
//! epoch, a peer's message, a timeout that fired) and answering with [`Output`]s for its owner to
//! carry out (publish, schedule, record a decision). No clock, socket or thread: the tests run
//! several engines in one process and route their messages by hand.
//!
//! A validator proposes, and votes for, only the checkpoint it computed itself from its own
//! ledger: a proposal of any other value is invalid to it, so it prevotes nil. A value is decided
//! only when validators of more than 2/3 of the power computed the same one.

use std::collections::VecDeque;
use std::time::Duration;

use malachitebft_core_consensus::{
    self as consensus, Effect, Input, LivenessMsg, LocallyProposedValue, Params, ProposedValue,
    Resumable, SignedConsensusMsg, State, ValuePayload,
};
use malachitebft_core_types::{
    CommitCertificate, Context, Round, SignedProposal, SigningProvider, SigningProviderExt,
    Timeout, TimeoutKind, Validity, Value, ValueOrigin,
};

use super::context::{Checkpoint, CheckpointContext, Epoch, NodeAddress, Signer, ValidatorSet};
use crate::crypto::Identity;

/// How long each step of a round waits; round r waits `base + r × delta`, so a network slower
/// than the base still decides a few rounds later.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timeouts {
    pub propose: Duration,
    pub prevote: Duration,
    pub precommit: Duration,
    /// Votes are re-sent this often while a round is stuck, so a lost gossip message delays a
    /// decision instead of stalling it.
    pub rebroadcast: Duration,
    pub delta: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            propose: Duration::from_secs(3),
            prevote: Duration::from_secs(1),
            precommit: Duration::from_secs(1),
            rebroadcast: Duration::from_secs(5),
            delta: Duration::from_millis(500),
        }
    }
}

impl Timeouts {
    pub fn duration(&self, timeout: Timeout) -> Duration {
        let base = match timeout.kind {
            TimeoutKind::Propose => self.propose,
            TimeoutKind::Prevote => self.prevote,
            TimeoutKind::Precommit => self.precommit,
            TimeoutKind::Rebroadcast => return self.rebroadcast,
        };
        base + self.delta * timeout.round.as_u32().unwrap_or(0)
    }
}

/// A decided checkpoint and the precommits that prove it.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub checkpoint: Checkpoint,
    pub certificate: CommitCertificate<CheckpointContext>,
    /// The validators that decided it.
    pub validators: ValidatorSet,
}

/// What the engine's owner must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send to every validator (gossip).
    Publish(SignedConsensusMsg<CheckpointContext>),
    /// Feed `Engine::timeout_elapsed(timeout)` after `after`, unless cancelled first.
    Schedule {
        timeout: Timeout,
        after: Duration,
    },
    Cancel(Timeout),
    CancelAll,
    /// A round began; for the logs.
    RoundStarted {
        epoch: u64,
        round: Round,
        proposer: NodeAddress,
    },
    Decided(Decision),
}

/// What effects need besides the consensus state (kept apart so both can be borrowed at once).
struct Host {
    signer: Signer,
    /// The epoch being decided.
    epoch: u64,
    timeouts: Timeouts,
    validators: ValidatorSet,
    /// This validator's own checkpoint of the epoch it is deciding, when it has one.
    own: Option<Checkpoint>,
    /// Inputs that effects produce (a value to propose): fed after the current one completes.
    pending: VecDeque<Input<CheckpointContext>>,
    outputs: Vec<Output>,
}

pub struct Engine {
    state: State<CheckpointContext>,
    host: Host,
}

/// Why an epoch cannot start.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StartError {
    #[error("epoch {0} has no validators")]
    NoValidators(u64),
}

impl Engine {
    pub fn new(
        ctx: CheckpointContext,
        identity: Identity,
        validators: ValidatorSet,
        timeouts: Timeouts,
    ) -> Self {
        let signer = Signer::new(ctx.clone(), identity);
        let params = Params {
            initial_height: Epoch(0),
            initial_validator_set: validators.clone(),
            address: signer.address(),
            threshold_params: Default::default(),
            // The proposal carries the value; its validity is this node's own check
            // (`Engine::receive`), not Malachite's default of "valid".
            value_payload: ValuePayload::ProposalAndParts,
        };
        Self {
            state: State::new(ctx, params, 16),
            host: Host {
                signer,
                epoch: 0,
                timeouts,
                validators,
                own: None,
                pending: VecDeque::new(),
                outputs: Vec::new(),
            },
        }
    }

    pub fn address(&self) -> NodeAddress {
        self.host.signer.address()
    }

    /// The epoch being decided.
    pub fn epoch(&self) -> u64 {
        self.state.height().0
    }

    /// Starts deciding `epoch` among `validators`; `own` is this node's checkpoint of it (None:
    /// it has none yet and votes nil on every proposal).
    pub fn start(
        &mut self,
        epoch: u64,
        validators: ValidatorSet,
        own: Option<Checkpoint>,
    ) -> Result<Vec<Output>, StartError> {
        if validators.validators().is_empty() {
            return Err(StartError::NoValidators(epoch));
        }
        self.host.epoch = epoch;
        self.host.validators = validators.clone();
        self.host.own = own.filter(|c| c.epoch == epoch);
        Ok(self.run([Input::StartHeight(Epoch(epoch), validators)]))
    }

    /// A message from a peer. A proposal is checked against this node's own checkpoint first:
    /// only the same value is valid.
    pub fn receive(&mut self, message: SignedConsensusMsg<CheckpointContext>) -> Vec<Output> {
        match message {
            SignedConsensusMsg::Vote(vote) => self.run([Input::Vote(vote)]),
            SignedConsensusMsg::Proposal(proposal) => {
                let value = ProposedValue {
                    height: proposal.message.height,
                    round: proposal.message.round,
                    valid_round: proposal.message.pol_round,
                    proposer: proposal.message.proposer.clone(),
                    value: proposal.message.value,
                    validity: Validity::from_bool(self.is_own(&proposal)),
                };
                // The value (with this node's verdict on it) goes in before the proposal.
                self.run([
                    Input::ProposedValue(value, ValueOrigin::Consensus),
                    Input::Proposal(proposal),
                ])
            }
        }
    }

    /// This node's checkpoint of the epoch being decided, if it has one.
    pub fn own(&self) -> Option<Checkpoint> {
        self.host.own
    }

    /// This node's checkpoint of the epoch being decided, computed again: the rounds after
    /// this one propose it and accept only it (a proposal already judged stays judged).
    pub fn set_own(&mut self, own: Checkpoint) {
        if own.epoch == self.host.epoch {
            self.host.own = Some(own);
        }
    }

    pub fn timeout_elapsed(&mut self, timeout: Timeout) -> Vec<Output> {
        self.run([Input::TimeoutElapsed(timeout)])
    }

    fn is_own(&self, proposal: &SignedProposal<CheckpointContext>) -> bool {
        self.host.own.as_ref().map(Value::id) == Some(proposal.message.value.id())
    }

    fn run(&mut self, inputs: impl IntoIterator<Item = Input<CheckpointContext>>) -> Vec<Output> {
        self.host.pending.extend(inputs);
        while let Some(input) = self.host.pending.pop_front() {
            let host = &mut self.host;
            let result: Result<(), consensus::Error<CheckpointContext>> = consensus::process!(
                input: input,
                state: &mut self.state,
                metrics: &(),
                with: effect => host.carry_out(effect)
            );
            if let Err(error) = result {
                tracing::warn!(%error, "checkpoint consensus refused an input");
            }
        }
        std::mem::take(&mut self.host.outputs)
    }
}

impl Host {
    fn carry_out(
        &mut self,
        effect: Effect<CheckpointContext>,
    ) -> Result<consensus::Resume<CheckpointContext>, std::convert::Infallible> {
        Ok(match effect {
            Effect::ResetTimeouts(r) => r.resume_with(()),
            Effect::CancelAllTimeouts(r) => {
                self.outputs.push(Output::CancelAll);
                r.resume_with(())
            }
            Effect::CancelTimeout(timeout, r) => {
                self.outputs.push(Output::Cancel(timeout));
                r.resume_with(())
            }
            Effect::ScheduleTimeout(timeout, r) => {
                let after = self.timeouts.duration(timeout);
                self.outputs.push(Output::Schedule { timeout, after });
                r.resume_with(())
            }
            Effect::GetValidatorSet(height, r) => {
                // Only the epoch being decided: a message of a later one is dropped and comes
                // again with the re-sent votes once this node gets there.
                r.resume_with(Some(self.validators.clone()).filter(|_| height.0 == self.epoch))
            }
            Effect::StartRound(height, round, proposer, _role, r) => {
                self.outputs.push(Output::RoundStarted {
                    epoch: height.0,
                    round,
                    proposer,
                });
                r.resume_with(())
            }
            Effect::PublishConsensusMsg(message, r) => {
                self.outputs.push(Output::Publish(message));
                r.resume_with(())
            }
            Effect::PublishLivenessMsg(LivenessMsg::Vote(vote), r)
            | Effect::RepublishVote(vote, r) => {
                self.outputs
                    .push(Output::Publish(SignedConsensusMsg::Vote(vote)));
                r.resume_with(())
            }
            // Certificates are not gossiped: re-sent votes rebuild them on every node.
            Effect::PublishLivenessMsg(_, r) | Effect::RepublishRoundCertificate(_, r) => {
                r.resume_with(())
            }
            Effect::GetValue(height, round, _timeout, r) => {
                if let Some(own) = self.own.filter(|own| own.epoch == height.0) {
                    self.pending
                        .push_back(Input::Propose(LocallyProposedValue::new(
                            height, round, own,
                        )));
                }
                r.resume_with(())
            }
            Effect::RestreamProposal(height, round, valid_round, proposer, value_id, r) => {
                if let Some(own) = self.own.filter(|own| {
                    own.epoch == height.0
                        && own.id() == value_id
                        && proposer == self.signer.address()
                }) {
                    let proposal =
                        self.signer
                            .ctx()
                            .new_proposal(height, round, own, valid_round, proposer);
                    let signed = self.signer.sign_proposal(proposal);
                    self.outputs
                        .push(Output::Publish(SignedConsensusMsg::Proposal(signed)));
                }
                r.resume_with(())
            }
            Effect::SyncValue(_, r) | Effect::WalAppend(_, r) => r.resume_with(()),
            Effect::Decide(certificate, _extensions, r) => {
                if let Some(own) = self.own.filter(|own| own.id() == certificate.value_id) {
                    self.outputs.push(Output::Decided(Decision {
                        checkpoint: own,
                        certificate,
                        validators: self.validators.clone(),
                    }));
                }
                r.resume_with(())
            }
            Effect::SignVote(vote, r) => r.resume_with(self.signer.sign_vote(vote)),
            Effect::SignProposal(proposal, r) => r.resume_with(self.signer.sign_proposal(proposal)),
            Effect::VerifySignature(message, public_key, r) => {
                let valid = match &message.message {
                    consensus::ConsensusMsg::Vote(vote) => {
                        self.signer
                            .verify_signed_vote(vote, &message.signature, &public_key)
                    }
                    consensus::ConsensusMsg::Proposal(proposal) => self
                        .signer
                        .verify_signed_proposal(proposal, &message.signature, &public_key),
                };
                r.resume_with(valid)
            }
            Effect::VerifyCommitCertificate(certificate, validators, thresholds, r) => r
                .resume_with(self.signer.verify_commit_certificate(
                    self.signer.ctx(),
                    &certificate,
                    &validators,
                    thresholds,
                )),
            Effect::VerifyPolkaCertificate(certificate, validators, thresholds, r) => r
                .resume_with(self.signer.verify_polka_certificate(
                    self.signer.ctx(),
                    &certificate,
                    &validators,
                    thresholds,
                )),
            Effect::VerifyRoundCertificate(certificate, validators, thresholds, r) => r
                .resume_with(self.signer.verify_round_certificate(
                    self.signer.ctx(),
                    &certificate,
                    &validators,
                    thresholds,
                )),
            Effect::ExtendVote(_, _, _, r) => r.resume_with(None),
            Effect::VerifyVoteExtension(_, _, _, _, _, r) => r.resume_with(Ok(())),
        })
    }
}
