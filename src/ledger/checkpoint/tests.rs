//! Several validators in one process, their messages routed by hand and their timers on a
//! simulated clock: what they decide, when they cannot, and what a certificate proves.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use malachitebft_core_consensus::SignedConsensusMsg;
use malachitebft_core_types::{CertificateError, CommitSignature, Timeout, Value};

use super::context::NodeAddress;
use super::*;
use crate::crypto::Identity;

const NETWORK: &str = "test-net";

fn identity(i: usize) -> Identity {
    Identity::from_token(&format!("{:064x}", i + 1)).unwrap()
}

fn validators(n: usize) -> ValidatorSet {
    ValidatorSet::new((0..n).map(|i| Validator::new(identity(i).public, 1)))
}

fn checkpoint(epoch: u64, tag: u8) -> Checkpoint {
    Checkpoint {
        epoch,
        events_root: [tag; 32],
        balances_root: [tag.wrapping_add(1); 32],
    }
}

/// Validators on a simulated network: every message reaches every other live validator, and
/// time jumps to the next timer only when no message is in flight.
struct Network {
    engines: Vec<Engine>,
    /// Validators that crashed: they send and receive nothing.
    down: BTreeSet<usize>,
    in_flight: VecDeque<(usize, SignedConsensusMsg<CheckpointContext>)>,
    timers: Vec<(Duration, usize, Timeout)>,
    now: Duration,
    decisions: Vec<Option<Decision>>,
}

impl Network {
    /// `own[i]`: validator i's checkpoint of `epoch`.
    fn start(epoch: u64, own: &[Option<Checkpoint>], down: &[usize]) -> Self {
        let set = validators(own.len());
        let mut network = Self {
            engines: Vec::new(),
            down: down.iter().copied().collect(),
            in_flight: VecDeque::new(),
            timers: Vec::new(),
            now: Duration::ZERO,
            decisions: vec![None; own.len()],
        };
        for (i, own) in own.iter().enumerate() {
            let mut engine = Engine::new(
                CheckpointContext::new(NETWORK),
                identity(i),
                set.clone(),
                Timeouts::default(),
            );
            let outputs = engine.start(epoch, set.clone(), *own).unwrap();
            network.engines.push(engine);
            network.carry_out(i, outputs);
        }
        network
    }

    fn carry_out(&mut self, from: usize, outputs: Vec<Output>) {
        if self.down.contains(&from) {
            return;
        }
        for output in outputs {
            match output {
                Output::Publish(message) => self.in_flight.push_back((from, message)),
                Output::Schedule { timeout, after } => {
                    self.timers.retain(|t| (t.1, t.2) != (from, timeout));
                    self.timers.push((self.now + after, from, timeout));
                }
                Output::Cancel(timeout) => self.timers.retain(|t| (t.1, t.2) != (from, timeout)),
                Output::CancelAll => self.timers.retain(|t| t.1 != from),
                Output::RoundStarted { .. } => {}
                Output::Decided(decision) => self.decisions[from] = Some(decision),
            }
        }
    }

    /// Runs until every live validator decided or `limit` of simulated time passed.
    fn run(mut self, limit: Duration) -> Self {
        let live: Vec<usize> = (0..self.engines.len())
            .filter(|i| !self.down.contains(i))
            .collect();
        while self.now < limit && live.iter().any(|&i| self.decisions[i].is_none()) {
            if let Some((from, message)) = self.in_flight.pop_front() {
                for &to in live.iter().filter(|&&to| to != from) {
                    let outputs = self.engines[to].receive(message.clone());
                    self.carry_out(to, outputs);
                }
                continue;
            }
            let Some(next) = (0..self.timers.len()).min_by_key(|&k| self.timers[k].0) else {
                break;
            };
            let (at, to, timeout) = self.timers.remove(next);
            self.now = self.now.max(at);
            let outputs = self.engines[to].timeout_elapsed(timeout);
            self.carry_out(to, outputs);
        }
        self
    }

    fn decided(&self, i: usize) -> Option<Checkpoint> {
        self.decisions[i].as_ref().map(|d| d.checkpoint)
    }
}

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn four_validators_decide_the_checkpoint_they_all_computed() {
    let honest = checkpoint(7, 1);
    let network = Network::start(7, &[Some(honest); 4], &[]).run(LIMIT);
    let ctx = CheckpointContext::new(NETWORK);
    for i in 0..4 {
        let decision = network.decisions[i]
            .as_ref()
            .expect("every validator decides");
        assert_eq!(decision.checkpoint, honest);
        assert_eq!(decision.certificate.value_id, honest.id());
        assert!(decision.certificate.commit_signatures.len() >= 3);
        assert_eq!(
            ctx.verify_certificate(&decision.certificate, &validators(4)),
            Ok(())
        );
    }
    assert!(
        network.now < Duration::from_secs(10),
        "took {:?}",
        network.now
    );
}

#[test]
fn a_crashed_validator_of_four_only_delays_the_decision() {
    let epoch = 3;
    let honest = checkpoint(epoch, 1);
    // Round 0's proposer is validator (epoch + 0) mod n in address order: crash it.
    let set = validators(4);
    let proposer = &set.validators()[(epoch % 4) as usize].address;
    let crashed = (0..4)
        .find(|&i| NodeAddress(identity(i).node_id) == *proposer)
        .unwrap();
    let network = Network::start(epoch, &[Some(honest); 4], &[crashed]).run(LIMIT);
    for i in (0..4).filter(|&i| i != crashed) {
        assert_eq!(network.decided(i), Some(honest), "validator {i}");
    }
    assert!(
        network.now >= Timeouts::default().propose,
        "round 0 had to time out"
    );
}

#[test]
fn a_validator_with_another_checkpoint_neither_blocks_nor_sways_the_others() {
    let honest = checkpoint(5, 1);
    let forged = checkpoint(5, 9);
    let mut own = [Some(honest); 4];
    own[0] = Some(forged);
    let network = Network::start(5, &own, &[]).run(LIMIT);
    for i in 1..4 {
        assert_eq!(network.decided(i), Some(honest), "validator {i}");
    }
    assert_eq!(network.decided(0), None, "it never holds the honest value");
}

#[test]
fn without_two_thirds_on_one_value_nothing_is_decided() {
    let a = checkpoint(2, 1);
    let b = checkpoint(2, 2);
    let network = Network::start(2, &[Some(a), Some(a), Some(b), Some(b)], &[]).run(LIMIT);
    assert!((0..4).all(|i| network.decided(i).is_none()));
    // A node without its own checkpoint yet votes nil: 3 of 4 still decide.
    let network = Network::start(2, &[Some(a), Some(a), Some(a), None], &[]).run(LIMIT);
    assert!((0..3).all(|i| network.decided(i) == Some(a)));
}

#[test]
fn a_certificate_proves_its_value_only_with_enough_distinct_validators() {
    let honest = checkpoint(4, 1);
    let network = Network::start(4, &[Some(honest); 4], &[]).run(LIMIT);
    let certificate = network.decisions[0].clone().unwrap().certificate;
    let ctx = CheckpointContext::new(NETWORK);
    let set = validators(4);
    assert_eq!(ctx.verify_certificate(&certificate, &set), Ok(()));

    let mut other_value = certificate.clone();
    other_value.value_id = checkpoint(4, 2).id();
    assert!(matches!(
        ctx.verify_certificate(&other_value, &set).map_err(|e| *e),
        Err(CertificateError::NotEnoughVotingPower { .. })
    ));

    let mut too_few = certificate.clone();
    too_few.commit_signatures.truncate(2);
    assert!(ctx.verify_certificate(&too_few, &set).is_err());

    let mut repeated = too_few.clone();
    repeated
        .commit_signatures
        .push(repeated.commit_signatures[0].clone());
    assert!(matches!(
        ctx.verify_certificate(&repeated, &set).map_err(|e| *e),
        Err(CertificateError::DuplicateVote(_))
    ));

    let outsider = identity(9);
    let mut stranger = too_few.clone();
    stranger.commit_signatures.push(CommitSignature::new(
        NodeAddress(outsider.node_id.clone()),
        certificate.commit_signatures[0].signature,
    ));
    assert!(matches!(
        ctx.verify_certificate(&stranger, &set).map_err(|e| *e),
        Err(CertificateError::UnknownValidator(_))
    ));

    // The same votes count in no other network.
    assert!(
        CheckpointContext::new("other-net")
            .verify_certificate(&certificate, &set)
            .is_err()
    );
}

#[test]
fn a_first_certificate_is_trusted_only_by_the_weight_its_validators_hold_now() {
    let set = validators(3);
    let weight = |pairs: &[(usize, f64)]| -> std::collections::BTreeMap<String, f64> {
        pairs
            .iter()
            .map(|&(i, w)| (identity(i).node_id, w))
            .collect()
    };
    // The three trainers weigh 1 each; this node (a newcomer) a little.
    assert!(anchored_by_weight(&set, &weight(&[(0, 1.0), (1, 1.0), (2, 1.0), (7, 0.2)])).is_ok());
    // Made-up validators: keys nobody weighs, however many.
    let strangers = ValidatorSet::new((10..50).map(|i| Validator::new(identity(i).public, 1)));
    let error = anchored_by_weight(&strangers, &weight(&[(0, 1.0), (1, 1.0)])).unwrap_err();
    assert!(error.contains("2/3"), "{error}");
    // Two of three weighed trainers are not more than 2/3; nothing known yet is no anchor.
    assert!(anchored_by_weight(&set, &weight(&[(0, 1.0), (1, 1.0), (5, 1.0)])).is_err());
    assert!(anchored_by_weight(&set, &weight(&[])).is_err());
}

#[test]
fn validators_that_compute_the_checkpoint_again_let_a_stuck_epoch_decide() {
    let honest = checkpoint(6, 1);
    let stale = checkpoint(6, 3);
    // Two of four hold a stale checkpoint (they missed a verdict): no value has 2/3.
    let network = Network::start(6, &[Some(honest), Some(honest), Some(stale), None], &[])
        .run(Duration::from_secs(30));
    assert!((0..4).all(|i| network.decided(i).is_none()));
    // They catch up; the next rounds decide.
    let mut network = network;
    network.engines[2].set_own(honest);
    network.engines[3].set_own(honest);
    let network = network.run(Duration::from_secs(240));
    assert!((0..4).all(|i| network.decided(i) == Some(honest)));
}
