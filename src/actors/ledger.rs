//! LedgerActor: owns the SQLite ledger on its own thread (every call blocks on the database).
//! It signs this node's proofs (uptime on a timer, training when Sync has a delta out, inference
//! when HTTP served a request), verifies and records everyone's proofs and transactions the same
//! way, credits training proofs only when the round's robust aggregation kept their delta and
//! uptime proofs only when peers of enough weight witnessed them (it witnesses its peers' uptime
//! from the heartbeats it hears), and publishes this node's account to the StatusBoard for the
//! API.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use libp2p::PeerId;
use tracing::{debug, error, info, warn};

use super::messages::{
    AdoptHistory, AttachReceipt, CheckProof, CheckpointGossip, ChooseAnchor, GetAccount,
    GetBalances, GetCheckpoints, GetProofs, LedgerGossip, ModelAdopted, NewestCheckpoint,
    PeerHeard, PeerOffence, PeerWeights, PrepareCheckpoint, ProofCheck, ProveInference,
    ProveTraining, PublishLedger, ReceiptAccepted, ReceiptRefused, RecordCertified,
    RecordCheckpoint, RefusedAtGate, RegisterCheckpoints, RegisterLedger, RoundVerdicts,
    ServeHistory, SubmitTransaction, SubmittedTransaction,
};
use super::peer::PeerActor;
use super::run_every;
use crate::crypto::{Identity, generate_nonce, node_id_of_peer};
use crate::ledger::checkpoint::{
    CertificateRecord, Checkpoint, CheckpointContext, ValidatorSet, anchored_by_weight,
};
use crate::ledger::proof::{check_receipt, check_signature, proof_id, sign_proof};
use crate::ledger::rewards::{RewardSchedule, stake_multiplier};
use crate::ledger::settle::{Settlement, SignedVerdicts, heaviest_outcome, settle};
use crate::ledger::state::Account;
use crate::ledger::store::{
    Adopted, InsertOutcome, LedgerError, LedgerErrorKind, LedgerStore, ProofStatus, RecordOutcome,
    StoredProof, TxInsertOutcome,
};
use crate::ledger::tx::{
    check_signature as tx_signature, check_transaction, sign_transaction, tx_id,
};
use crate::ledger::verify::{ProofLimits, room_for_training_proof, verify_proof};
use crate::ledger::witness::{
    MAX_WITNESSED, Sighting, WITNESS_FLUSH, Watch, claimed_interval, restate_for, saw, settle_wait,
    slept_through, tally,
};
use crate::ledger::{
    Nano, Proof, ProofKind, ProofRejection, SignedProof, SignedTransaction, Transaction, TxKind,
    TxRejection, rewards::burn_fee,
};
use crate::net::history::{
    HistoryRequest, HistoryResponse, MAX_CHECKPOINTS_PER_ANSWER, PAGE_BYTES,
};
use crate::net::wire::{LedgerMessage, Rejection, RoundVerdictsWire, unix_ms};
use crate::status::{Component, LocalFault, NeuroView, StatusBoard};
use rayon::prelude::*;

/// Test fault switches. NEUROSHARD_FAULT_PONW=1 (`cheat`): this node gossips only forged proofs
/// (counters raised after signing) and replays of its peers' proofs, to show that neither earns
/// anything. NEUROSHARD_FAULT_CLAIM_INFLATION=1 (`inflate_claims`): every uptime tick this node
/// also signs and gossips a self-declared data proof of 10⁷ samples and an inference proof of
/// 10⁹ tokens (each at the per-proof cap, and plausible), and its first uptime proof claims the
/// most one proof may (`max_uptime_per_proof_s`), time before it started included, to show that
/// claims nobody else vouches for earn nothing. NEUROSHARD_FAULT_DOUBLE_SPEND=S
/// (`double_spend_backdate_s`): each transfer this node's wallet sends is followed, 2 s later, by
/// a second one with the same sequence number to another account, dated S seconds earlier and
/// gossiped only (this node keeps the first), to show that every honest node ends with the same
/// winner.
#[derive(Debug, Clone, Copy, Default)]
pub struct PonwFault {
    pub cheat: bool,
    pub inflate_claims: bool,
    pub double_spend_backdate_s: Option<u64>,
    /// NEUROSHARD_FAULT_HISTORY_FORGE: the history this node serves says its first proof has
    /// another status than it has, and its list of checkpoints ends with one nobody decided.
    pub forge_history: bool,
}

pub struct LedgerOptions {
    pub identity: Identity,
    /// The network id: the domain of its checkpoint signatures.
    pub network: String,
    pub schedule: RewardSchedule,
    pub limits: ProofLimits,
    pub uptime_interval: Duration,
    /// How this node judges its peers' liveness when it witnesses their uptime.
    pub watch: Watch,
    pub fault: PonwFault,
}

pub struct LedgerActor {
    store: LedgerStore,
    options: LedgerOptions,
    peers: Addr<PeerActor>,
    status: StatusBoard,
    last_uptime_proof: Instant,
    /// Fault switch only: peers' proofs kept to replay.
    stolen: Vec<SignedProof>,
    /// θ₀ hash this node trained each recent round from.
    adopted: BTreeMap<u64, String>,
    /// Round verdicts (own and peers') waiting to settle.
    pending_verdicts: Vec<PendingVerdicts>,
    /// What each signer of verdicts counts for, as Sync last weighed it.
    weights: BTreeMap<String, f64>,
    /// Peers' verified proofs waiting for the next batch write, with who sent them; while the
    /// database refuses writes they wait here (at most `MAX_INBOX`) for the retry.
    inbox: Vec<(SignedProof, Nano, PeerId)>,
    inbox_ids: HashSet<String>,
    /// Peers' checked transactions the database has not taken yet, in arrival order.
    unwritten_transactions: Vec<(SignedTransaction, PeerId)>,
    /// Settled verdicts the database has not taken yet, oldest first.
    unwritten_verdicts: VecDeque<(u64, Vec<VerdictRow>)>,
    /// When to try writing again after a local fault.
    retry: Retry,
    /// Peers' verified proofs dropped because the inbox was full while writes failed.
    dropped: u64,
    /// What this node heard of each peer (its signed heartbeats): what it may witness.
    sightings: HashMap<String, Sighting>,
    /// Witnesses (this node's own statement included) of uptime proofs not settled yet, by
    /// proof id.
    witnesses: BTreeMap<String, Witnesses>,
    /// Stored uptime proofs waiting for their settlement, (when, id, claimed interval), earliest
    /// first: each is decided once, `witness::settle_wait` after this node stored it.
    unsettled_uptime: VecDeque<(Instant, String, (u64, u64))>,
    /// Peers' uptime proofs this node witnessed lately, (proof timestamp, id), oldest first:
    /// gossiped again each uptime interval for peers that missed the statement (also after a
    /// restart: the store keeps them).
    witnessed: VecDeque<(u64, String)>,
    /// Uptime proofs witnessed since the last `flush_witnessed`, (proof timestamp, id).
    unannounced_witnessed: VecDeque<(u64, String)>,
    /// Stretches (unix ms) over which this node was not running (suspended), newest last, and
    /// when it last ran: it has no say in uptime it slept through (`witness::slept_through`).
    own_stalls: VecDeque<(u64, u64)>,
    last_ran_ms: u64,
    /// Rounds this node trained but made no proof for: the hour's proof limit was reached.
    unclaimed_rounds: u64,
    /// This node's inference proofs waiting for their requester's receipt, by request id.
    awaiting_receipt: BTreeMap<String, (Proof, Instant)>,
    /// Where peers' checkpoint consensus messages go (CheckpointActor).
    checkpoints: Option<Recipient<CheckpointGossip>>,
}

/// How long an inference proof waits for its requester's receipt before it is stored without
/// one (credited 0): ample for a client that signs as soon as the answer arrives.
const RECEIPT_WAIT: Duration = Duration::from_secs(30);
/// Inference proofs waiting for receipts; beyond it the oldest is stored without one.
const MAX_AWAITING_RECEIPT: usize = 1024;

/// Who witnessed one uptime proof, and when this node first learnt of a witness.
struct Witnesses {
    since: Instant,
    by: BTreeSet<String>,
}

/// Peers whose heartbeats are remembered for witnessing (as many as the peer table holds); the
/// longest silent is forgotten first.
const MAX_SIGHTINGS: usize = 4096;
/// Uptime proofs whose witnesses are kept until they settle; a flood evicts the oldest (honest
/// witnesses gossip their statements again each uptime interval). Beyond it, the oldest waiting
/// proof is settled early.
const MAX_UNSETTLED_UPTIME: usize = 4096;
/// Own stalls remembered (older ones no longer matter: their proofs have settled).
const MAX_OWN_STALLS: usize = 16;
/// Witnesses kept per uptime proof; beyond it, a witness with weight replaces one without.
const MAX_WITNESSES_PER_PROOF: usize = 64;

/// One verdict as the store records it: (delta hash, node_id, kept, reason).
type VerdictRow = (String, String, bool, String);

/// Peers' proofs are written at least this often, or when this many are waiting.
const INBOX_FLUSH: Duration = Duration::from_millis(200);
const INBOX_BATCH: usize = 128;
/// Peers' verified proofs kept in memory while the database refuses writes (~1 KB each); beyond
/// it new ones are dropped, unblamed: their signers gossip their recent proofs again each uptime
/// interval.
const MAX_INBOX: usize = 4096;
/// Peers' checked transactions kept while the database refuses writes (~0.5 KB each).
const MAX_UNWRITTEN_TRANSACTIONS: usize = 1024;
/// Rounds of settled verdicts kept while the database refuses writes.
const MAX_UNWRITTEN_VERDICTS: usize = KEPT_ROUNDS * 8;
/// While writes fail, the backlog is written again this often.
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// Why a proof or transaction was not recorded: its signer's offence (counted against it), or
/// this node's own storage failing (never the signer's fault).
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotRecorded {
    #[error(transparent)]
    Offence(#[from] Rejection),
    #[error(transparent)]
    Local(#[from] LocalFault),
}

impl NotRecorded {
    /// The rejection to count against the signer, if it was the signer's fault.
    pub fn offence(self) -> Option<Rejection> {
        match self {
            NotRecorded::Offence(rejection) => Some(rejection),
            NotRecorded::Local(_) => None,
        }
    }
}

impl From<ProofRejection> for NotRecorded {
    fn from(rejection: ProofRejection) -> Self {
        NotRecorded::Offence(rejection.into())
    }
}

impl From<TxRejection> for NotRecorded {
    fn from(rejection: TxRejection) -> Self {
        NotRecorded::Offence(rejection.into())
    }
}

/// What `check_proof` found: the proof at fault, or the database (which `checked` records).
enum CheckError {
    Offence(Rejection),
    Database(LedgerError),
}

impl CheckError {
    fn offence(rejection: ProofRejection) -> Self {
        CheckError::Offence(rejection.into())
    }
}

/// The database failed under us: this node's fault, whatever message was being stored.
fn local(e: LedgerError) -> LocalFault {
    LocalFault::new(Component::Ledger, e)
}

/// Pacing of the ledger's writes after a local fault: healthy, every flush tick writes; degraded,
/// the backlog is tried again every `RETRY_EVERY`. The clock is an argument.
#[derive(Debug, Clone, Copy, Default)]
struct Retry {
    /// Set by the first failed write, cleared once the whole backlog is written.
    degraded_since: Option<Instant>,
    last_failure: Option<Instant>,
}

impl Retry {
    fn degraded(&self) -> bool {
        self.degraded_since.is_some()
    }

    fn due(&self, now: Instant) -> bool {
        self.last_failure
            .is_none_or(|failed| now.saturating_duration_since(failed) >= RETRY_EVERY)
    }

    /// True for the failure that starts a degraded period.
    fn failed(&mut self, now: Instant) -> bool {
        self.last_failure = Some(now);
        let first = self.degraded_since.is_none();
        self.degraded_since.get_or_insert(now);
        first
    }

    /// The backlog is written: how long the ledger was degraded, if it was.
    fn recovered(&mut self, now: Instant) -> Option<Duration> {
        self.last_failure = None;
        self.degraded_since
            .take()
            .map(|since| now.saturating_duration_since(since))
    }
}

/// A round's verdicts before they settle; `reasons` (this node's own, with scores) is empty for
/// a peer's.
struct PendingVerdicts {
    signer: String,
    wire: RoundVerdictsWire,
    reasons: Vec<String>,
}

/// Own proofs (~700 bytes each) and transactions (~450) gossiped again each uptime interval,
/// well inside one gossip message.
const RECENT_PROOFS: usize = 10;
const RECENT_TRANSACTIONS: usize = 6;

/// Rounds of θ₀ hashes remembered for matching peers' verdicts.
const KEPT_ROUNDS: usize = 16;

impl LedgerActor {
    pub fn new(
        store: LedgerStore,
        options: LedgerOptions,
        peers: Addr<PeerActor>,
        status: StatusBoard,
    ) -> Self {
        let now = Instant::now();
        // The claim-inflation switch: the first uptime proof claims time before the node started.
        let last_uptime_proof = if options.fault.inflate_claims {
            let cap = Duration::from_secs(options.limits.max_uptime_per_proof_s);
            now.checked_sub(cap).unwrap_or(now)
        } else {
            now
        };
        Self {
            store,
            options,
            peers,
            status,
            last_uptime_proof,
            stolen: Vec::new(),
            adopted: BTreeMap::new(),
            pending_verdicts: Vec::new(),
            weights: BTreeMap::new(),
            inbox: Vec::new(),
            inbox_ids: HashSet::new(),
            unwritten_transactions: Vec::new(),
            unwritten_verdicts: VecDeque::new(),
            retry: Retry::default(),
            dropped: 0,
            sightings: HashMap::new(),
            witnesses: BTreeMap::new(),
            unsettled_uptime: VecDeque::new(),
            witnessed: VecDeque::new(),
            unannounced_witnessed: VecDeque::new(),
            awaiting_receipt: BTreeMap::new(),
            checkpoints: None,
            unclaimed_rounds: 0,
            own_stalls: VecDeque::new(),
            last_ran_ms: unix_ms(),
        }
    }

    /// The validators of a certificate whose signatures hold for them in this network, or why
    /// it does not hold.
    fn holding_validators(&self, record: &CertificateRecord) -> Result<ValidatorSet, String> {
        let (_, certificate) = record.decode()?;
        let validators = record.validator_set()?;
        CheckpointContext::new(&self.options.network)
            .verify_certificate(&certificate, &validators)
            .map_err(|e| {
                format!(
                    "the certificate of epoch {} does not hold: {e}",
                    record.epoch
                )
            })?;
        Ok(validators)
    }

    /// Whether validators this node cannot chain to a checkpoint it holds carry the weight of
    /// the peers it trains with (`anchored_by_weight`). Its own weight is left out: it is not
    /// in the history it is about to trust, and counting it would lock a joiner out of a network
    /// of two.
    fn anchored(&self, validators: &ValidatorSet) -> Result<(), String> {
        let own = &self.options.identity.node_id;
        let mut peers = self.weights.clone();
        peers.remove(own);
        anchored_by_weight(validators, &peers)
    }

    /// `peer` served history that is not what it claims: counted against it; the problem is
    /// returned for the caller's error.
    fn blame_history(&self, peer: PeerId, problem: String) -> String {
        self.peers.do_send(PeerOffence {
            peer,
            rejection: Rejection::Malformed(format!("ledger history: {problem}")),
        });
        problem
    }

    /// A read or write of the database failed: reported on /api/health and /metrics, logged at
    /// the start of a degraded period, and the backlog is retried on the timer.
    fn failed(&mut self, e: LedgerError) -> LocalFault {
        let fault = local(e);
        self.status.local_fault(&fault);
        if self.retry.failed(Instant::now()) {
            error!(error = %fault, "ledger writes fail; peers' proofs are kept and retried");
        } else {
            debug!(error = %fault, "ledger write failed again");
        }
        fault
    }

    /// Writes what waited for the database: peers' proofs, settled verdicts, rejection counts.
    fn write_backlog(&mut self) -> Result<(), LocalFault> {
        // Proofs before transactions, as they arrived: a transfer may spend what a proof earned.
        self.flush_inbox()?;
        self.write_transactions()?;
        self.write_verdicts()?;
        self.store.save_rejections().map_err(|e| self.failed(e))
    }

    /// The flush tick: the backlog is written every tick while healthy, every `RETRY_EVERY` after
    /// a failure; once it is all written, the ledger is healthy again.
    fn tick(&mut self) {
        let now = Instant::now();
        self.store_unreceipted(now);
        if !self.retry.due(now) || self.write_backlog().is_err() {
            return;
        }
        if let Some(degraded) = self.retry.recovered(now) {
            self.status.local_recovery(Component::Ledger);
            info!(
                degraded_s = degraded.as_secs(),
                dropped = self.dropped,
                "ledger writes work again; the kept proofs are written"
            );
            self.dropped = 0;
        }
    }

    /// Stores (and gossips) this node's inference proofs whose receipt did not come in time:
    /// shown, credited 0.
    fn store_unreceipted(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .awaiting_receipt
            .iter()
            .filter(|(_, (_, since))| now.saturating_duration_since(*since) >= RECEIPT_WAIT)
            .map(|(request_id, _)| request_id.clone())
            .collect();
        for request_id in expired {
            if let Some((proof, _)) = self.awaiting_receipt.remove(&request_id) {
                // Not stored means not gossiped; `prove` logged why.
                let _ = self.prove(proof);
            }
        }
    }

    fn blank_proof(&self, kind: ProofKind, work_seconds: f64) -> Proof {
        Proof {
            node_id: self.options.identity.node_id.clone(),
            public_key: hex::encode(self.options.identity.public.serialize()),
            timestamp_ms: unix_ms(),
            nonce: generate_nonce(),
            // Whole seconds, at least one: rates are checked over it.
            work_seconds: (work_seconds.ceil() as u64).max(1),
            ..Proof::empty(kind)
        }
    }

    /// Signs this node's proof, verifies and records it exactly as a peer's would be, and
    /// gossips it once stored: a proof the database did not take is not acknowledged.
    fn prove(&mut self, proof: Proof) -> Result<Option<ProofStatus>, NotRecorded> {
        let kind = proof.kind;
        let signed = match sign_proof(&self.options.identity, proof) {
            Ok(signed) => signed,
            Err(e) => {
                warn!(?kind, error = %e, "cannot sign our own proof");
                return Err(e.into());
            }
        };
        if self.options.fault.cheat {
            self.cheat(signed);
            return Ok(None);
        }
        match self.accept_proof(&signed) {
            Ok(status) => {
                self.peers
                    .do_send(PublishLedger(LedgerMessage::Proof(signed)));
                Ok(status)
            }
            Err(e) => {
                match &e {
                    NotRecorded::Offence(rejection) => {
                        warn!(?kind, error = %rejection, "our own proof was refused")
                    }
                    NotRecorded::Local(fault) => {
                        warn!(?kind, error = %fault, "our own proof was not stored, nor gossiped")
                    }
                }
                Err(e)
            }
        }
    }

    /// Verifies a proof against what the ledger knows of its signer and records it at once (this
    /// node's own proofs: acknowledged when stored); a proof already stored is a no-op.
    fn accept_proof(&mut self, signed: &SignedProof) -> Result<Option<ProofStatus>, NotRecorded> {
        let Some((_, base)) = self.checked(signed)? else {
            return Ok(None);
        };
        let mut results = self.store_proofs(&[(signed.clone(), base)])?;
        Ok(results.pop().unwrap_or(Ok(None))?)
    }

    /// `check_proof`, counting a refusal as a rejection and recording a database failure as this
    /// node's fault.
    fn checked(&mut self, signed: &SignedProof) -> Result<Option<(String, Nano)>, NotRecorded> {
        self.check_proof(signed).map_err(|e| match e {
            CheckError::Offence(rejection) => {
                self.count(&rejection);
                NotRecorded::Offence(rejection)
            }
            CheckError::Database(e) => NotRecorded::Local(self.failed(e)),
        })
    }

    /// The proof's id and base reward if it is new and passes verification; `None` if it is
    /// known.
    fn check_proof(&self, signed: &SignedProof) -> Result<Option<(String, Nano)>, CheckError> {
        let id = proof_id(&signed.proof).map_err(CheckError::offence)?;
        if self.inbox_ids.contains(&id)
            || self.store.has_proof(&id).map_err(CheckError::Database)?
        {
            return Ok(None);
        }
        let now = unix_ms();
        let proof = &signed.proof;
        let history = self
            .store
            .history(&proof.node_id, proof.nonce, now, proof.timestamp_ms)
            .map_err(CheckError::Database)?;
        let (limits, schedule) = (&self.options.limits, &self.options.schedule);
        let offer =
            verify_proof(now, signed, &history, limits, schedule).map_err(CheckError::offence)?;
        Ok(Some((id, offer.reward)))
    }

    /// Writes verified proofs in one transaction; per proof, its status or why it was refused.
    /// A database failure refuses none of them: it is this node's fault.
    fn store_proofs(
        &mut self,
        batch: &[(SignedProof, Nano)],
    ) -> Result<Vec<Result<Option<ProofStatus>, Rejection>>, LocalFault> {
        let outcomes = self
            .store
            .insert_proofs(batch)
            .map_err(|e| self.failed(e))?;
        let results: Vec<_> = batch
            .iter()
            .zip(outcomes)
            .map(|((signed, _), inserted)| match inserted {
                InsertOutcome::Stored(status) => Ok(Some(status)),
                InsertOutcome::Duplicate => Ok(None),
                InsertOutcome::Replay => Err(ProofRejection::Replay {
                    nonce: signed.proof.nonce,
                }
                .into()),
                InsertOutcome::Malformed(why) => Err(ProofRejection::Malformed(why).into()),
            })
            .collect();
        for rejection in results.iter().filter_map(|r| r.as_ref().err()) {
            self.count(rejection);
        }
        let (now, now_ms) = (Instant::now(), unix_ms());
        let waiting = self.unsettled_uptime.len();
        for ((signed, _), result) in batch.iter().zip(&results) {
            if signed.proof.kind == ProofKind::Uptime
                && matches!(result, Ok(Some(ProofStatus::Pending)))
                && let Ok(id) = proof_id(&signed.proof)
            {
                let age = Duration::from_millis(now_ms.saturating_sub(signed.proof.timestamp_ms));
                let wait = settle_wait(age, &self.options.watch, self.options.uptime_interval);
                let claimed = claimed_interval(&signed.proof);
                self.unsettled_uptime.push_back((now + wait, id, claimed));
            }
        }
        // Proofs held late wait longer: settle in time order, not arrival order (sorted only
        // when this batch added any: a batch without uptime proofs leaves the queue as it was).
        if self.unsettled_uptime.len() > waiting {
            self.unsettled_uptime
                .make_contiguous()
                .sort_by_key(|(at, ..)| *at);
        }
        self.publish_account();
        Ok(results)
    }

    /// A peer's proof: verified now, written with the others of the next flush (one SQLite
    /// transaction, and one re-fold at most, per batch instead of per proof). A proof this node
    /// cannot check or keep because of its own database is not the peer's offence.
    fn receive_proof(&mut self, signed: &SignedProof, origin: PeerId) -> Option<Rejection> {
        let (id, base) = match self.checked(signed) {
            Ok(Some(checked)) => checked,
            Ok(None) => return None,
            Err(e) => return e.offence(),
        };
        self.witness(&id, &signed.proof);
        if self.inbox.len() >= MAX_INBOX {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                warn!(
                    dropped = self.dropped,
                    kept = MAX_INBOX,
                    "ledger writes fail and the kept proofs fill memory: a peer's proof is dropped"
                );
            }
            return None;
        }
        self.inbox_ids.insert(id);
        self.inbox.push((signed.clone(), base, origin));
        if self.inbox.len() >= INBOX_BATCH && !self.retry.degraded() {
            // On failure the batch stays in the inbox for the retry.
            let _ = self.flush_inbox();
        }
        None
    }

    /// Writes the inbox in one transaction; rejections count against their senders. When the
    /// database fails, every proof stays in the inbox and nobody is blamed.
    fn flush_inbox(&mut self) -> Result<(), LocalFault> {
        if self.inbox.is_empty() {
            return Ok(());
        }
        let batch: Vec<_> = self
            .inbox
            .iter()
            .map(|(signed, base, _)| (signed.clone(), *base))
            .collect();
        let results = self.store_proofs(&batch)?;
        self.inbox_ids.clear();
        let origins = std::mem::take(&mut self.inbox)
            .into_iter()
            .map(|(_, _, origin)| origin);
        for (result, peer) in results.into_iter().zip(origins) {
            if let Err(rejection) = result {
                self.peers.do_send(PeerOffence { peer, rejection });
            }
        }
        Ok(())
    }

    /// A peer's new uptime proof: this node witnesses it (records its own statement and gossips
    /// it) when it carries weight itself and heard the claimant over the whole claimed interval.
    fn witness(&mut self, id: &str, proof: &Proof) {
        let own = &self.options.identity.node_id;
        if proof.kind != ProofKind::Uptime || proof.node_id == *own || self.weight_of(own) <= 0.0 {
            return;
        }
        if let Err(why) = saw(
            self.sightings.get(&proof.node_id),
            proof,
            &self.options.watch,
        ) {
            debug!(claimant = %proof.node_id, proof = id, "uptime not witnessed: {why}");
            return;
        }
        self.add_witness(id, own.clone());
        self.witnessed
            .push_back((proof.timestamp_ms, id.to_owned()));
        if self.witnessed.len() > MAX_WITNESSED {
            self.witnessed.pop_front();
        }
        self.unannounced_witnessed
            .push_back((proof.timestamp_ms, id.to_owned()));
        if self.unannounced_witnessed.len() > MAX_UNSETTLED_UPTIME {
            self.unannounced_witnessed.pop_front();
        }
    }

    /// Gossips the statements made since the last flush: one message of at most
    /// `MAX_WITNESSED` ids (the rest wait for the next flush; the oldest are dropped past a bound,
    /// the uptime tick's re-gossip carries them anyway), and stores them, so that a restart does
    /// not end their re-gossip: a witness restarted before a peer that had missed its statement
    /// heard it again left that peer refusing what every other node credited. A statement the
    /// store refuses is still gossiped and restated until this node stops.
    fn flush_witnessed(&mut self) {
        if self.unannounced_witnessed.is_empty() {
            return;
        }
        let take = self.unannounced_witnessed.len().min(MAX_WITNESSED);
        let statements: Vec<(u64, String)> = self.unannounced_witnessed.drain(..take).collect();
        let proofs = statements.iter().map(|(_, id)| id.clone()).collect();
        self.peers
            .do_send(PublishLedger(LedgerMessage::Witnessed { proofs }));
        let keep_since = self.restated_since_ms(unix_ms());
        if let Err(e) = self.store.record_statements(&statements, keep_since) {
            self.failed(e);
        }
    }

    /// Proofs made at or after this time (unix ms) are restated by their witnesses
    /// (`witness::restate_for`); claimants re-gossip their own for half the freshness window.
    fn restated_since_ms(&self, now_ms: u64) -> u64 {
        let restated = restate_for(
            self.republished_for(),
            &self.options.watch,
            self.options.uptime_interval,
        );
        now_ms.saturating_sub(restated.as_millis() as u64)
    }

    /// How long a node gossips its own proofs again: half the freshness window.
    fn republished_for(&self) -> Duration {
        Duration::from_secs(self.options.limits.freshness_window_s / 2)
    }

    fn add_witness(&mut self, id: &str, witness: String) {
        if !self.witnesses.contains_key(id) && self.witnesses.len() >= MAX_UNSETTLED_UPTIME {
            let oldest = self
                .witnesses
                .iter()
                .min_by_key(|(_, w)| w.since)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                self.witnesses.remove(&oldest);
            }
        }
        let weights = &self.weights;
        let weighs = |id: &String| weights.get(id).is_some_and(|w| *w > 0.0);
        let entry = self
            .witnesses
            .entry(id.to_owned())
            .or_insert_with(|| Witnesses {
                since: Instant::now(),
                by: BTreeSet::new(),
            });
        if entry.by.len() >= MAX_WITNESSES_PER_PROOF {
            let Some(unweighted) = entry.by.iter().find(|w| !weighs(w)).cloned() else {
                return;
            };
            if !weighs(&witness) {
                return;
            }
            entry.by.remove(&unweighted);
        }
        entry.by.insert(witness);
    }

    /// Notes a stretch over which this node did not run (its once-a-second timer came over 3 s
    /// late): uptime claimed then is none of its business.
    fn observe_own_clock(&mut self, now_ms: u64) {
        let gap_ms = now_ms.saturating_sub(self.last_ran_ms);
        if gap_ms > 3 * WITNESS_FLUSH.as_millis() as u64 {
            self.own_stalls.push_back((self.last_ran_ms, now_ms));
            if self.own_stalls.len() > MAX_OWN_STALLS {
                self.own_stalls.pop_front();
            }
        }
        self.last_ran_ms = now_ms;
    }

    /// Settles the stored uptime proofs whose time has come (and the oldest beyond the bound),
    /// each once and for good: credited when its witnesses weigh enough by this node's weights
    /// now (`witness::decide`), refused otherwise; the tally is stored with it. After a database
    /// failure the proof waits for the next try.
    fn settle_due_uptime(&mut self) {
        let now = Instant::now();
        let mut credited = false;
        while self.unsettled_uptime.front().is_some_and(|(at, ..)| {
            *at <= now || self.unsettled_uptime.len() > MAX_UNSETTLED_UPTIME
        }) {
            let Some((at, id, claimed)) = self.unsettled_uptime.pop_front() else {
                break;
            };
            let claimant = match self.store.uptime_claim(&id) {
                Ok(Some((claimant, ProofStatus::Pending))) => claimant,
                Ok(_) => {
                    self.witnesses.remove(&id);
                    continue;
                }
                Err(e) => {
                    self.unsettled_uptime.push_front((at, id, claimed));
                    self.failed(e);
                    break;
                }
            };
            let by = self
                .witnesses
                .get(&id)
                .map(|w| w.by.clone())
                .unwrap_or_default();
            let tally = if slept_through(self.own_stalls.make_contiguous(), claimed) {
                let mut awake = self.weights.clone();
                awake.remove(&self.options.identity.node_id);
                tally(&claimant, &by, &awake)
            } else {
                tally(&claimant, &by, &self.weights)
            };
            match self.store.record_witnessed(&id, &tally) {
                Ok(status) => {
                    debug!(proof = %id, %claimant, ?status, "uptime settled");
                    self.witnesses.remove(&id);
                    credited |= status == Some(ProofStatus::Credited);
                }
                Err(e) => {
                    self.unsettled_uptime.push_front((at, id, claimed));
                    self.failed(e);
                    break;
                }
            }
        }
        if credited {
            self.publish_account();
        }
    }

    /// Checks a transaction (signature, freshness, fee) and lets the fold decide whether it
    /// applies; the status says which ("applied", or the fold's reason, e.g. an overdraft).
    fn accept_transaction(&mut self, signed: &SignedTransaction) -> Result<String, NotRecorded> {
        let outcome = match check_transaction(unix_ms(), signed, &self.options.limits) {
            Err(rejection) => Err(rejection.into()),
            Ok(()) => match self.store.insert_transactions(std::slice::from_ref(signed)) {
                Err(e) => Err(NotRecorded::Local(self.failed(e))),
                Ok(mut outcomes) => match outcomes.pop() {
                    Some(TxInsertOutcome::Applied) => Ok("applied".to_string()),
                    Some(TxInsertOutcome::Rejected(why)) => Ok(format!("refused: {why}")),
                    // The same transaction again changes nothing (idempotent, like proofs).
                    Some(TxInsertOutcome::Duplicate) | None => Ok("duplicate".to_string()),
                    Some(TxInsertOutcome::Malformed(why)) => {
                        Err(TxRejection::Malformed(why).into())
                    }
                },
            },
        };
        if let Err(NotRecorded::Offence(rejection)) = &outcome {
            self.count(rejection);
        }
        self.publish_account();
        outcome
    }

    /// A peer's transaction: checked and stored now; while the database refuses writes, checked
    /// and kept (after the proofs already kept) for the retry, never blamed on the peer.
    fn receive_transaction(
        &mut self,
        signed: &SignedTransaction,
        origin: PeerId,
    ) -> Option<Rejection> {
        if !self.retry.degraded() {
            return match self.accept_transaction(signed) {
                Err(NotRecorded::Local(_)) => {
                    self.hold_transaction(signed, origin);
                    None
                }
                outcome => outcome.err().and_then(NotRecorded::offence),
            };
        }
        if let Err(rejection) = check_transaction(unix_ms(), signed, &self.options.limits) {
            let rejection = rejection.into();
            self.count(&rejection);
            return Some(rejection);
        }
        self.hold_transaction(signed, origin);
        None
    }

    fn hold_transaction(&mut self, signed: &SignedTransaction, origin: PeerId) {
        let known = self.unwritten_transactions.iter().any(|(t, _)| t == signed);
        if known {
            return;
        }
        if self.unwritten_transactions.len() >= MAX_UNWRITTEN_TRANSACTIONS {
            self.dropped += 1;
            return;
        }
        self.unwritten_transactions.push((signed.clone(), origin));
    }

    /// Writes the kept transactions in one SQLite transaction; a malformed one counts against
    /// its sender, as it would have on arrival.
    fn write_transactions(&mut self) -> Result<(), LocalFault> {
        if self.unwritten_transactions.is_empty() {
            return Ok(());
        }
        let batch: Vec<_> = self
            .unwritten_transactions
            .iter()
            .map(|(signed, _)| signed.clone())
            .collect();
        let outcomes = self
            .store
            .insert_transactions(&batch)
            .map_err(|e| self.failed(e))?;
        let origins = std::mem::take(&mut self.unwritten_transactions)
            .into_iter()
            .map(|(_, origin)| origin);
        for (outcome, peer) in outcomes.into_iter().zip(origins) {
            if let TxInsertOutcome::Malformed(why) = outcome {
                let rejection = TxRejection::Malformed(why).into();
                self.count(&rejection);
                self.peers.do_send(PeerOffence { peer, rejection });
            }
        }
        self.publish_account();
        Ok(())
    }

    /// Records a round's settled verdicts; while the database refuses writes they wait, in
    /// order, for the retry.
    fn record_verdicts(&mut self, round: u64, verdicts: Vec<VerdictRow>) {
        if self.unwritten_verdicts.len() >= MAX_UNWRITTEN_VERDICTS
            && let Some((lost, _)) = self.unwritten_verdicts.pop_front()
        {
            warn!(
                round = lost,
                "ledger writes fail: the oldest unwritten verdicts are dropped"
            );
        }
        self.unwritten_verdicts.push_back((round, verdicts));
        // On failure they stay queued for the retry.
        let _ = self.write_verdicts();
        self.publish_account();
    }

    fn write_verdicts(&mut self) -> Result<(), LocalFault> {
        while let Some((round, verdicts)) = self.unwritten_verdicts.front() {
            if let Err(e) = self.store.record_verdicts(*round, verdicts) {
                return Err(self.failed(e));
            }
            self.unwritten_verdicts.pop_front();
        }
        Ok(())
    }

    fn weight_of(&self, node_id: &str) -> f64 {
        self.weights.get(node_id).copied().unwrap_or(0.0)
    }

    /// Keeps a round's verdicts (this node's or a peer's) until they can be settled: one set per
    /// signer and round (the newest), and when full, sets of signers without weight go first.
    fn hold_verdicts(&mut self, pending: PendingVerdicts) {
        self.pending_verdicts
            .retain(|p| !(p.signer == pending.signer && p.wire.round == pending.wire.round));
        if self.pending_verdicts.len() >= KEPT_ROUNDS * 8 {
            let weightless = self
                .pending_verdicts
                .iter()
                .position(|p| self.weight_of(&p.signer) <= 0.0);
            self.pending_verdicts.remove(weightless.unwrap_or(0));
        }
        self.pending_verdicts.push(pending);
        self.settle_verdicts();
    }

    /// Verdicts on round r are settled once this node trains round r + 2, from the θ₀ it then
    /// holds for round r + 1: by then a node that aggregated round r on a minority θ₀ has
    /// healed, so only verdicts whose aggregate produced that θ₀ count (its own, or peers'), and
    /// of those the set that the most weight signed (`ledger::settle`), never the first to arrive.
    fn settle_verdicts(&mut self) {
        let Some(&current) = self.adopted.keys().next_back() else {
            return;
        };
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_verdicts)
            .into_iter()
            .partition(|p| p.wire.round + 2 <= current);
        self.pending_verdicts = waiting;
        let mut by_round: BTreeMap<u64, Vec<PendingVerdicts>> = BTreeMap::new();
        for pending in ready {
            by_round
                .entry(pending.wire.round)
                .or_default()
                .push(pending);
        }
        let oldest = self.adopted.keys().next().copied().unwrap_or(current);
        for (round, sets) in by_round {
            let candidates: Vec<SignedVerdicts> = sets
                .iter()
                .map(|p| SignedVerdicts {
                    signer: p.signer.clone(),
                    wire: p.wire.clone(),
                })
                .collect();
            let theta0 = match self.adopted.get(&(round + 1)) {
                Some(theta0) => theta0.clone(),
                // Healed over this round: the chain this node joined is the heaviest one.
                None if round + 1 > oldest => {
                    match heaviest_outcome(&candidates, |id| self.weight_of(id)) {
                        Some(theta0) => theta0,
                        None => continue,
                    }
                }
                None => continue, // older than the θ₀ hashes this node remembers
            };
            let (index, agreement) = match settle(&candidates, &theta0, |id| self.weight_of(id)) {
                Settlement::Settle { index, reason } => (index, reason),
                Settlement::Unsettled(why) => {
                    debug!(round, "round verdicts not settled: {why}");
                    continue;
                }
            };
            let chosen = &sets[index];
            let verdicts: Vec<_> = chosen
                .wire
                .verdicts
                .iter()
                .enumerate()
                .map(|(i, (node_id, delta_hash, kept))| {
                    let reason = chosen.reasons.get(i).cloned().unwrap_or_else(|| {
                        let word = if *kept { "kept" } else { "rejected" };
                        let theta0 = theta0.get(..12).unwrap_or(&theta0);
                        format!(
                            "{word} in round {round} (by the peers that produced θ₀ {theta0}: {agreement})"
                        )
                    });
                    (delta_hash.clone(), node_id.clone(), *kept, reason)
                })
                .collect();
            self.record_verdicts(round, verdicts);
        }
    }

    fn count(&mut self, rejection: &Rejection) {
        self.store.count_rejection(rejection.kind());
    }

    /// The fault switch: what goes out is a forged copy of `signed` (its reward-bearing
    /// counters raised after signing) and a replay of a peer's proof; nothing honest.
    fn cheat(&mut self, signed: SignedProof) {
        let mut forged = signed;
        forged.proof.uptime_seconds = forged.proof.uptime_seconds.saturating_mul(10).max(60);
        forged.proof.batches = forged.proof.batches.saturating_mul(10);
        self.peers
            .do_send(PublishLedger(LedgerMessage::Proof(forged)));
        if let Some(stolen) = self.stolen.pop() {
            self.peers
                .do_send(PublishLedger(LedgerMessage::Proof(stolen)));
        }
    }

    /// The claim-inflation fault switch: data and inference proofs with huge counters and no
    /// receipt, signed and gossiped like honest ones.
    fn inflate_claims(&mut self) {
        let mut data = self.blank_proof(ProofKind::Data, 600.0);
        data.data_samples = 10_000_000;
        let _ = self.prove(data);
        let mut inference = self.blank_proof(ProofKind::Inference, 60_000.0);
        inference.tokens = 1_000_000_000;
        inference.request_id = format!("inflated-{:016x}", inference.nonce);
        let _ = self.prove(inference);
    }

    /// This node's account and the network totals, for /api/neuro and /api/stats.
    fn publish_account(&self) {
        let node_id = &self.options.identity.node_id;
        let account = self.store.account(node_id);
        let view = NeuroView {
            stake_multiplier: stake_multiplier(account.stake),
            account,
            network: self.store.network(),
            rejections: self.store.rejections(),
        };
        self.status.update(|s| s.neuro = Arc::new(view));
    }

    /// Fault switch only: the same transfer's sequence number spent again on another account,
    /// backdated, gossiped 2 s after the first.
    fn double_spend(&self, first: &Transaction, backdate_s: u64, ctx: &mut Context<Self>) {
        let balances = self.store.balances();
        let Some(other) = balances
            .keys()
            .find(|id| **id != first.from && **id != first.to)
        else {
            warn!("double-spend switch: no other account to spend on");
            return;
        };
        let second = Transaction {
            to: other.clone(),
            timestamp_ms: first
                .timestamp_ms
                .saturating_sub(backdate_s.saturating_mul(1000)),
            ..first.clone()
        };
        let Ok(signed) = sign_transaction(&self.options.identity, second) else {
            return;
        };
        warn!(seq = first.seq, to = %other, "double-spend switch: spending the sequence number again");
        let peers = self.peers.clone();
        ctx.run_later(Duration::from_secs(2), move |_, _| {
            peers.do_send(PublishLedger(LedgerMessage::Transaction(signed)));
        });
    }

    /// Gossips this node's newest proofs and transactions still inside the freshness window
    /// again (as many as fit one gossip message), for peers that missed them.
    fn republish_recent(&self) {
        let own = &self.options.identity.node_id;
        let now_ms = unix_ms();
        let since = now_ms.saturating_sub(self.republished_for().as_millis() as u64);
        let (Ok(proofs), Ok(transactions)) = (
            self.store.proofs_of(own, RECENT_PROOFS),
            self.store.transactions_of(own, since, RECENT_TRANSACTIONS),
        ) else {
            return;
        };
        let proofs: Vec<SignedProof> = proofs
            .into_iter()
            .map(|s| s.proof)
            .filter(|p| p.proof.timestamp_ms >= since)
            .collect();
        if !proofs.is_empty() || !transactions.is_empty() {
            self.peers.do_send(PublishLedger(LedgerMessage::Recent {
                proofs,
                transactions,
            }));
        }
        let restated_since = self.restated_since_ms(now_ms);
        let witnessed: Vec<String> = self
            .witnessed
            .iter()
            .filter(|(timestamp_ms, _)| *timestamp_ms >= restated_since)
            .map(|(_, id)| id.clone())
            .collect();
        if !witnessed.is_empty() {
            self.peers.do_send(PublishLedger(LedgerMessage::Witnessed {
                proofs: witnessed,
            }));
        }
    }

    fn prove_uptime(&mut self) {
        let now = Instant::now();
        let seconds = now.duration_since(self.last_uptime_proof).as_secs();
        let cap = self.options.limits.max_uptime_per_proof_s;
        let mut proof = self.blank_proof(ProofKind::Uptime, seconds as f64);
        proof.uptime_seconds = seconds.min(cap).max(1);
        proof.work_seconds = proof.uptime_seconds;
        // Uptime not stored (a full disk) is claimed by the next proof, within the cap.
        if !matches!(self.prove(proof), Err(NotRecorded::Local(_))) {
            self.last_uptime_proof = now;
        }
    }
}

impl Actor for LedgerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.peers.do_send(RegisterLedger {
            gossip: ctx.address().recipient(),
            refused: ctx.address().recipient(),
            heard: ctx.address().recipient(),
            history: ctx.address().recipient(),
        });
        self.publish_account();
        run_every(ctx, INBOX_FLUSH, |act, _| act.tick());
        // Uptime proofs pending from before a restart are held late (`settle_wait`).
        let settle_at = Instant::now()
            + settle_wait(
                Duration::MAX,
                &self.options.watch,
                self.options.uptime_interval,
            );
        match self.store.pending_uptime(MAX_UNSETTLED_UPTIME) {
            Ok(ids) => self
                .unsettled_uptime
                .extend(ids.into_iter().map(|id| (settle_at, id, (0, 0)))),
            Err(e) => warn!(error = %e, "cannot read the pending uptime proofs; they stay pending"),
        }
        // What this node witnessed before it stopped is restated as if it had not.
        match self
            .store
            .statements_since(self.restated_since_ms(unix_ms()), MAX_WITNESSED)
        {
            Ok(statements) => self.witnessed.extend(statements),
            Err(e) => {
                warn!(error = %e, "cannot read this node's witness statements; they are not restated")
            }
        }
        run_every(ctx, WITNESS_FLUSH, |act, _| {
            act.observe_own_clock(unix_ms());
            act.flush_witnessed();
            act.settle_due_uptime();
        });
        run_every(ctx, self.options.uptime_interval, |act, _| {
            act.prove_uptime();
            if act.options.fault.inflate_claims {
                act.inflate_claims();
            }
            if !act.options.fault.cheat {
                act.republish_recent();
            }
        });
        info!(
            node_id = %self.options.identity.node_id,
            uptime_interval_s = self.options.uptime_interval.as_secs(),
            "ledger open"
        );
    }
}

impl Handler<LedgerGossip> for LedgerActor {
    type Result = ();

    fn handle(&mut self, msg: LedgerGossip, _: &mut Self::Context) {
        let refused = match &msg.message {
            LedgerMessage::Proof(proof) => {
                if self.options.fault.cheat && self.stolen.len() < 16 {
                    self.stolen.push(proof.clone());
                }
                self.receive_proof(proof, msg.origin)
            }
            LedgerMessage::Transaction(tx) => self.receive_transaction(tx, msg.origin),
            LedgerMessage::Recent {
                proofs,
                transactions,
            } => {
                // Transactions after proofs: a transfer may spend what a proof just earned.
                let mut refused: Vec<Rejection> = proofs
                    .iter()
                    .filter_map(|proof| self.receive_proof(proof, msg.origin))
                    .collect();
                if !self.retry.degraded() {
                    // On failure the proofs stay in the inbox for the retry.
                    let _ = self.flush_inbox();
                }
                for tx in transactions {
                    refused.extend(self.receive_transaction(tx, msg.origin));
                }
                refused.into_iter().next()
            }
            LedgerMessage::Verdicts(verdicts) => {
                self.hold_verdicts(PendingVerdicts {
                    signer: node_id_of_peer(&msg.origin),
                    wire: verdicts.clone(),
                    reasons: Vec::new(),
                });
                None
            }
            LedgerMessage::Checkpoint(message) => {
                if let Some(checkpoints) = &self.checkpoints {
                    checkpoints.do_send(CheckpointGossip {
                        origin: msg.origin,
                        message: message.clone(),
                    });
                }
                None
            }
            LedgerMessage::Witnessed { proofs } => {
                let witness = node_id_of_peer(&msg.origin);
                // Kept from peers this node weighs or heard live (a newcomer may be weighed by
                // settlement time); what a witness weighs is read when the proof settles.
                if self.weight_of(&witness) > 0.0 || self.sightings.contains_key(&witness) {
                    for id in proofs {
                        self.add_witness(id, witness.clone());
                    }
                }
                None
            }
        };
        if let Some(rejection) = refused {
            self.peers.do_send(PeerOffence {
                peer: msg.origin,
                rejection,
            });
        }
    }
}

impl Handler<RegisterCheckpoints> for LedgerActor {
    type Result = ();

    fn handle(&mut self, msg: RegisterCheckpoints, _: &mut Self::Context) {
        self.checkpoints = Some(msg.0);
    }
}

impl Handler<PrepareCheckpoint> for LedgerActor {
    type Result = Result<Option<(Checkpoint, ValidatorSet)>, String>;

    fn handle(&mut self, msg: PrepareCheckpoint, _: &mut Self::Context) -> Self::Result {
        let epoch = msg.epoch;
        let prepare = || {
            if self.store.is_checkpointed(epoch)? {
                return Ok(None);
            }
            Ok(Some((
                self.store.checkpoint_of(epoch)?,
                self.store.validators_of(epoch)?,
            )))
        };
        prepare().map_err(|e: LedgerError| e.to_string())
    }
}

impl Handler<RecordCheckpoint> for LedgerActor {
    type Result = ();

    fn handle(&mut self, msg: RecordCheckpoint, _: &mut Self::Context) {
        let epoch = msg.0.epoch;
        match self.store.record_checkpoint(&msg.0) {
            Ok(RecordOutcome::Stored | RecordOutcome::Known) => {}
            Ok(RecordOutcome::Conflict { stored }) => error!(
                epoch,
                stored = %stored,
                decided = %msg.0.checkpoint_id,
                "two checkpoints decided for one epoch: more than a third of the validators' power signed both; keeping the first"
            ),
            Err(e) => warn!(epoch, error = %e, "cannot store the decided checkpoint"),
        }
    }
}

impl Handler<ServeHistory> for LedgerActor {
    type Result = MessageResult<ServeHistory>;

    fn handle(&mut self, msg: ServeHistory, _: &mut Self::Context) -> Self::Result {
        let answer = match msg.0 {
            HistoryRequest::Checkpoints { after } => self
                .store
                .checkpoints_after(after, MAX_CHECKPOINTS_PER_ANSWER)
                .map(|mut records| {
                    if self.options.fault.forge_history {
                        records.push(made_up_checkpoint(after, records.last()));
                    }
                    HistoryResponse::Checkpoints(records)
                }),
            HistoryRequest::Events { from, to, after } => self
                .store
                .history_page(from, to, after.as_ref(), PAGE_BYTES)
                .map(|mut page| {
                    if self.options.fault.forge_history
                        && let Some(first) = page.proofs.first_mut()
                    {
                        let forged = if first.status == "credited" {
                            "rejected"
                        } else {
                            "credited"
                        };
                        first.status = forged.into();
                    }
                    HistoryResponse::Events(page)
                }),
        };
        MessageResult(answer.unwrap_or_else(|e| {
            warn!(error = %e, "cannot serve ledger history");
            HistoryResponse::Unavailable("this node's ledger failed".into())
        }))
    }
}

/// NEUROSHARD_FAULT_HISTORY_FORGE: a checkpoint after the last one listed that nobody decided
/// (made-up roots, no precommit).
fn made_up_checkpoint(after: Option<u64>, last: Option<&CertificateRecord>) -> CertificateRecord {
    let epoch = last.map(|r| r.epoch).or(after).map_or(0, |e| e + 1);
    let checkpoint = Checkpoint {
        epoch,
        events_root: [0xf0; 32],
        balances_root: [0x0f; 32],
    };
    CertificateRecord::unsigned(&checkpoint)
}

impl Handler<NewestCheckpoint> for LedgerActor {
    type Result = Result<Option<u64>, String>;

    fn handle(&mut self, _: NewestCheckpoint, _: &mut Self::Context) -> Self::Result {
        let newest = self.store.checkpoints(1).map_err(|e| e.to_string())?;
        Ok(newest.first().map(|record| record.epoch))
    }
}

impl Handler<AdoptHistory> for LedgerActor {
    type Result = Result<Adopted, String>;

    /// Checks a peer's copy of certified history before the store adopts it: the certificate
    /// holds for the validators it names, those carry this node's weight when it cannot chain
    /// them to a checkpoint it holds, every event is signed by its claimant. A copy that fails
    /// a check, or that the store finds is not what the certificate names, is the peer's offence.
    fn handle(&mut self, msg: AdoptHistory, _: &mut Self::Context) -> Self::Result {
        let epoch = msg.certificate.epoch;
        let validators = self
            .holding_validators(&msg.certificate)
            .map_err(|problem| self.blame_history(msg.peer, problem))?;
        let chained = match msg.from.checked_sub(1) {
            Some(before) => self
                .store
                .is_checkpointed(before)
                .map_err(|e| e.to_string())?,
            None => false,
        };
        if !chained {
            // Not the peer's fault: this node may not weigh the network's trainers yet.
            self.anchored(&validators).map_err(|e| {
                format!("the first certificate (epoch {epoch}) is not trusted: {e}")
            })?;
        }
        let forged = msg
            .events
            .proofs
            .par_iter()
            .find_any(|p| check_signature(&p.signed).is_err())
            .map(|p| {
                format!(
                    "a proof of {} is not validly signed",
                    p.signed.proof.node_id
                )
            })
            .or_else(|| {
                msg.events
                    .transactions
                    .par_iter()
                    .find_any(|t| tx_signature(t).is_err())
                    .map(|t| format!("a transaction of {} is not validly signed", t.tx.from))
            });
        if let Some(problem) = forged {
            return Err(self.blame_history(msg.peer, problem));
        }
        let adopted = self.store.adopt_history(
            msg.from,
            &msg.certificate,
            &msg.events.proofs,
            &msg.events.transactions,
        );
        match adopted {
            Ok(adopted) => {
                info!(
                    epoch,
                    from = msg.from,
                    proofs_added = adopted.proofs_added,
                    transactions_added = adopted.transactions_added,
                    statuses_changed = adopted.statuses_changed,
                    "ledger history adopted up to a checkpoint"
                );
                self.publish_account();
                Ok(adopted)
            }
            Err(e) if matches!(e.kind, LedgerErrorKind::Mismatch(_)) => {
                Err(self.blame_history(msg.peer, e.to_string()))
            }
            Err(e) => {
                warn!(error = %e, "cannot adopt ledger history");
                Err(e.to_string())
            }
        }
    }
}

impl Handler<ChooseAnchor> for LedgerActor {
    type Result = Result<usize, String>;

    fn handle(&mut self, msg: ChooseAnchor, _: &mut Self::Context) -> Self::Result {
        let anchored = |record: &CertificateRecord| {
            record
                .validator_set()
                .and_then(|validators| self.anchored(&validators))
        };
        let newest = msg.0.last().ok_or("the peer lists no checkpoint")?;
        match msg.0.iter().rposition(|record| anchored(record).is_ok()) {
            Some(position) => Ok(position),
            // Not the peer's fault: this node may not weigh the network's trainers yet.
            None => Err(format!(
                "none of the {} checkpoints listed is trusted yet (the newest, epoch {}: {})",
                msg.0.len(),
                newest.epoch,
                anchored(newest).err().unwrap_or_default()
            )),
        }
    }
}

impl Handler<RecordCertified> for LedgerActor {
    type Result = Result<usize, String>;

    fn handle(&mut self, msg: RecordCertified, _: &mut Self::Context) -> Self::Result {
        let mut stored = 0;
        for record in &msg.certificates {
            self.holding_validators(record)
                .map_err(|problem| self.blame_history(msg.peer, problem))?;
            match self.store.record_certified(record) {
                Ok(RecordOutcome::Stored) => stored += 1,
                Ok(RecordOutcome::Known) => {}
                Ok(RecordOutcome::Conflict { stored }) => {
                    return Err(format!(
                        "this node stores another checkpoint of epoch {}: {stored}",
                        record.epoch
                    ));
                }
                Err(e) if matches!(e.kind, LedgerErrorKind::Mismatch(_)) => {
                    return Err(self.blame_history(msg.peer, e.to_string()));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(stored)
    }
}

impl Handler<GetCheckpoints> for LedgerActor {
    type Result = Result<Vec<CertificateRecord>, String>;

    fn handle(&mut self, msg: GetCheckpoints, _: &mut Self::Context) -> Self::Result {
        self.store.checkpoints(msg.limit).map_err(|e| e.to_string())
    }
}

impl Handler<RefusedAtGate> for LedgerActor {
    type Result = ();

    fn handle(&mut self, msg: RefusedAtGate, _: &mut Self::Context) {
        self.store.count_rejection(msg.0);
        self.publish_account();
    }
}

impl Handler<ProveTraining> for LedgerActor {
    type Result = ();

    fn handle(&mut self, msg: ProveTraining, _: &mut Self::Context) {
        let own = self.options.identity.node_id.clone();
        let now = unix_ms();
        let made = match self.store.history(&own, 0, now, now) {
            Ok(history) => history.proofs_last_hour,
            Err(e) => {
                warn!(error = %self.failed(e), "our training proof is not made");
                return;
            }
        };
        let uptime_s = self.options.uptime_interval.as_secs();
        if !room_for_training_proof(made, &self.options.limits, uptime_s) {
            self.unclaimed_rounds += 1;
            if self.unclaimed_rounds.is_power_of_two() {
                warn!(
                    round = msg.round,
                    unclaimed_rounds = self.unclaimed_rounds,
                    made_last_hour = made,
                    limit = self.options.limits.max_proofs_per_hour,
                    "no training proof for this round: peers refuse proofs beyond \
                     ledger.limits.max_proofs_per_hour, and the hour's uptime proofs need the rest"
                );
            }
            return;
        }
        let mut proof = self.blank_proof(ProofKind::Training, msg.work.seconds);
        proof.epoch = msg.work.epoch;
        proof.outer_round = msg.round;
        proof.tokens = msg.tokens;
        proof.batches = msg.work.batches;
        proof.model_hash_before = msg.theta0_hash;
        proof.model_hash_after = msg.theta_h_hash;
        proof.delta_hash = msg.delta_hash;
        proof.loss = if msg.work.mean_loss.is_finite() {
            msg.work.mean_loss
        } else {
            0.0
        };
        // Not stored means not gossiped; `prove` logged why.
        let _ = self.prove(proof);
    }
}

impl Handler<ProveInference> for LedgerActor {
    type Result = Result<Proof, String>;

    /// The proof waits for its requester's receipt (`AttachReceipt`) or `RECEIPT_WAIT`.
    fn handle(&mut self, msg: ProveInference, _: &mut Self::Context) -> Self::Result {
        let mut proof = self.blank_proof(ProofKind::Inference, msg.seconds);
        proof.request_id = msg.request_id.clone();
        proof.tokens = msg.tokens;
        if self.awaiting_receipt.len() >= MAX_AWAITING_RECEIPT {
            let oldest = self
                .awaiting_receipt
                .iter()
                .min_by_key(|(_, (_, since))| *since)
                .map(|(request_id, _)| request_id.clone());
            if let Some((unreceipted, _)) = oldest.and_then(|id| self.awaiting_receipt.remove(&id))
            {
                let _ = self.prove(unreceipted);
            }
        }
        self.awaiting_receipt
            .insert(msg.request_id, (proof.clone(), Instant::now()));
        Ok(proof)
    }
}

impl Handler<AttachReceipt> for LedgerActor {
    type Result = Result<ReceiptAccepted, ReceiptRefused>;

    /// Signs the waiting proof with the receipt in it, then stores and gossips it like any own
    /// proof. A receipt that does not verify leaves the proof waiting for a valid one.
    fn handle(&mut self, msg: AttachReceipt, _: &mut Self::Context) -> Self::Result {
        let Some((waiting, _)) = self.awaiting_receipt.get(&msg.request_id) else {
            return Err(ReceiptRefused::Unknown(msg.request_id));
        };
        let proof = Proof {
            receipt: Some(msg.receipt),
            ..waiting.clone()
        };
        check_receipt(&proof)?;
        let proof_id = proof_id(&proof).map_err(NotRecorded::from)?;
        let Some(waiting) = self.awaiting_receipt.remove(&msg.request_id) else {
            return Err(ReceiptRefused::Unknown(msg.request_id));
        };
        match self.prove(proof) {
            Ok(status) => Ok(ReceiptAccepted { proof_id, status }),
            Err(e) => {
                // This node's disk failed, not the receipt: the client may post it again.
                if matches!(e, NotRecorded::Local(_)) {
                    self.awaiting_receipt.insert(msg.request_id, waiting);
                }
                Err(e.into())
            }
        }
    }
}

impl Handler<RoundVerdicts> for LedgerActor {
    type Result = ();

    /// Holds this node's verdicts until they settle and gossips them for peers that missed the
    /// round.
    fn handle(&mut self, msg: RoundVerdicts, _: &mut Self::Context) {
        let wire = RoundVerdictsWire {
            round: msg.round,
            theta0_after: msg.theta0_after,
            verdicts: msg
                .verdicts
                .iter()
                .map(|v| (v.node_id.clone(), v.delta_hash.clone(), v.kept))
                .collect(),
        };
        if !self.options.fault.cheat {
            self.peers
                .do_send(PublishLedger(LedgerMessage::Verdicts(wire.clone())));
        }
        let reasons = msg.verdicts.into_iter().map(|v| v.reason).collect();
        let signer = self.options.identity.node_id.clone();
        self.hold_verdicts(PendingVerdicts {
            signer,
            wire,
            reasons,
        });
    }
}

impl Handler<PeerWeights> for LedgerActor {
    type Result = ();

    fn handle(&mut self, msg: PeerWeights, _: &mut Self::Context) {
        self.weights = msg.0;
        self.settle_verdicts();
        // Witnesses older than the freshness window gain no company: their proofs' claimants
        // stopped gossiping them.
        let window = Duration::from_secs(self.options.limits.freshness_window_s);
        self.witnesses.retain(|_, w| w.since.elapsed() < window);
    }
}

impl Handler<PeerHeard> for LedgerActor {
    type Result = ();

    fn handle(&mut self, msg: PeerHeard, _: &mut Self::Context) {
        let PeerHeard(node_id) = msg;
        if !self.sightings.contains_key(&node_id) && self.sightings.len() >= MAX_SIGHTINGS {
            let longest_silent = self
                .sightings
                .iter()
                .min_by_key(|(_, s)| s.last_ms)
                .map(|(id, _)| id.clone());
            if let Some(id) = longest_silent {
                self.sightings.remove(&id);
            }
        }
        let previous = self.sightings.get(&node_id).copied();
        let sighting = Sighting::heard(previous, unix_ms(), &self.options.watch);
        self.sightings.insert(node_id, sighting);
    }
}

impl Handler<ModelAdopted> for LedgerActor {
    type Result = ();

    /// This node now trains `round` from this θ₀: verdicts that waited for it may settle.
    fn handle(&mut self, msg: ModelAdopted, _: &mut Self::Context) {
        self.adopted.insert(msg.round, msg.theta0_hash);
        while self.adopted.len() > KEPT_ROUNDS {
            self.adopted.pop_first();
        }
        self.settle_verdicts();
    }
}

impl Handler<GetAccount> for LedgerActor {
    type Result = Result<Account, String>;

    fn handle(&mut self, msg: GetAccount, _: &mut Self::Context) -> Self::Result {
        Ok(self.store.account(&msg.0))
    }
}

impl Handler<GetBalances> for LedgerActor {
    type Result = Result<Option<std::collections::BTreeMap<String, Account>>, String>;

    fn handle(&mut self, msg: GetBalances, _: &mut Self::Context) -> Self::Result {
        let Some(epoch) = msg.epoch else {
            return Ok(Some(self.store.balances()));
        };
        if !self
            .store
            .is_checkpointed(epoch)
            .map_err(|e| e.to_string())?
        {
            return Ok(None);
        }
        self.store
            .balances_after(epoch)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

impl Handler<GetProofs> for LedgerActor {
    type Result = Result<Vec<StoredProof>, String>;

    fn handle(&mut self, msg: GetProofs, _: &mut Self::Context) -> Self::Result {
        self.store
            .proofs_of(&msg.node_id, msg.limit)
            .map_err(|e| e.to_string())
    }
}

impl Handler<CheckProof> for LedgerActor {
    type Result = Result<ProofCheck, String>;

    fn handle(&mut self, msg: CheckProof, _: &mut Self::Context) -> Self::Result {
        let proof = &msg.0;
        let now = unix_ms();
        let history = self
            .store
            .history(
                &proof.proof.node_id,
                proof.proof.nonce,
                now,
                proof.proof.timestamp_ms,
            )
            .map_err(|e| e.to_string())?;
        Ok(ProofCheck {
            proof_id: proof_id(&proof.proof).ok(),
            verdict: verify_proof(
                now,
                proof,
                &history,
                &self.options.limits,
                &self.options.schedule,
            ),
        })
    }
}

impl Handler<SubmitTransaction> for LedgerActor {
    type Result = Result<SubmittedTransaction, NotRecorded>;

    /// Signs a transaction of this node with the next sequence number and handles it exactly
    /// as a peer's; it is gossiped only when the fold applied it.
    fn handle(&mut self, msg: SubmitTransaction, ctx: &mut Self::Context) -> Self::Result {
        let identity = &self.options.identity;
        let now = unix_ms();
        let account = self.store.account(&identity.node_id);
        // Refused here rather than stored as a refused transaction that a later refold of
        // earlier events could still apply behind the user's back.
        let fee = if msg.kind == TxKind::Transfer {
            burn_fee(msg.amount)
        } else {
            0
        };
        match msg.kind {
            TxKind::Transfer | TxKind::Stake
                if account.balance < msg.amount.saturating_add(fee) =>
            {
                return Err(TxRejection::Overdraft {
                    needed: msg.amount.saturating_add(fee),
                    balance: account.balance,
                }
                .into());
            }
            TxKind::Unstake if account.stake < msg.amount => {
                return Err(TxRejection::InsufficientStake {
                    requested: msg.amount,
                    staked: account.stake,
                }
                .into());
            }
            TxKind::Unstake if now < account.stake_locked_until_ms => {
                return Err(TxRejection::StakeLocked {
                    until_ms: account.stake_locked_until_ms,
                }
                .into());
            }
            _ => {}
        }
        let tx = Transaction {
            kind: msg.kind,
            from: identity.node_id.clone(),
            public_key: hex::encode(identity.public.serialize()),
            to: msg.to,
            amount: msg.amount,
            fee,
            seq: account.last_seq + 1,
            timestamp_ms: now,
            lock_until_ms: if msg.kind == TxKind::Stake {
                now.saturating_add(msg.lock_s.saturating_mul(1000))
            } else {
                0
            },
        };
        let id = tx_id(&tx)?;
        let signed = sign_transaction(identity, tx)?;
        let status = self.accept_transaction(&signed)?;
        if status == "applied" {
            self.peers
                .do_send(PublishLedger(LedgerMessage::Transaction(signed.clone())));
            if let Some(backdate_s) = self.options.fault.double_spend_backdate_s
                && signed.tx.kind == TxKind::Transfer
            {
                self.double_spend(&signed.tx, backdate_s, ctx);
            }
            Ok(SubmittedTransaction {
                id,
                transaction: signed,
                status,
            })
        } else {
            Err(Rejection::Malformed(status).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn while_degraded_the_backlog_is_retried_every_interval_after_the_last_failure() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut retry = Retry::default();
        assert!(
            retry.due(t0) && !retry.degraded(),
            "healthy: every tick writes"
        );
        assert!(
            retry.failed(t0),
            "the first failure starts a degraded period"
        );
        assert!(!retry.failed(at(1)), "a later one does not");
        assert!(retry.degraded());
        assert!(!retry.due(at(2)), "the last failure was 1 s ago");
        assert!(retry.due(at(3)));
        assert_eq!(retry.recovered(at(4)), Some(Duration::from_secs(4)));
        assert!(retry.due(at(4)) && !retry.degraded());
        assert_eq!(
            retry.recovered(at(5)),
            None,
            "only a degraded ledger recovers"
        );
    }

    #[test]
    fn a_local_fault_is_never_an_offence() {
        let local = NotRecorded::from(LocalFault::new(Component::Ledger, "disk full"));
        assert!(local.offence().is_none());
        let replay = NotRecorded::from(ProofRejection::Replay { nonce: 7 });
        assert!(replay.offence().is_some());
        let overdraft = NotRecorded::from(TxRejection::Overdraft {
            needed: 2,
            balance: 1,
        });
        assert!(overdraft.offence().is_some());
    }
}
