//! LedgerActor: owns the SQLite ledger on its own thread (every call blocks on the database).
//! It signs this node's proofs (uptime on a timer, training when Sync has a delta out, inference
//! when HTTP served a request), verifies and records everyone's proofs and transactions the same
//! way, credits training proofs only when the round's robust aggregation kept their delta, and
//! publishes this node's account to the StatusBoard for the API.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use libp2p::PeerId;
use tracing::{info, warn};

use super::messages::{
    CheckProof, GetAccount, GetBalances, GetProofs, LedgerGossip, ModelAdopted, PeerOffence,
    ProofCheck, ProveInference, ProveTraining, PublishLedger, RefusedAtGate, RegisterLedger,
    RoundVerdicts, SubmitTransaction, SubmittedTransaction,
};
use super::peer::PeerActor;
use crate::crypto::{Identity, generate_nonce};
use crate::ledger::proof::{proof_id, sign_proof};
use crate::ledger::rewards::{RewardSchedule, stake_multiplier};
use crate::ledger::state::Account;
use crate::ledger::store::{
    InsertOutcome, LedgerError, LedgerStore, ProofStatus, StoredProof, TxInsertOutcome,
};
use crate::ledger::tx::{check_transaction, sign_transaction, tx_id};
use crate::ledger::verify::{ProofLimits, verify_proof};
use crate::ledger::{
    Nano, Proof, ProofKind, ProofRejection, SignedProof, SignedTransaction, Transaction, TxKind,
    TxRejection, rewards::burn_fee,
};
use crate::net::wire::{LedgerMessage, Rejection, RoundVerdictsWire, unix_ms};
use crate::status::{NeuroView, StatusBoard};

/// Test fault switches. NEUROSHARD_FAULT_PONW=1 (`cheat`): this node gossips only forged proofs
/// (counters raised after signing) and replays of its peers' proofs, to show that neither earns
/// anything. NEUROSHARD_FAULT_CLAIM_INFLATION=1 (`inflate_claims`): every uptime tick this node
/// also signs and gossips a self-declared data proof of 10⁷ samples and an inference proof of
/// 10⁹ tokens (each at the per-proof cap, and plausible), to show that claims nobody else vouches
/// for earn nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct PonwFault {
    pub cheat: bool,
    pub inflate_claims: bool,
}

pub struct LedgerOptions {
    pub identity: Identity,
    pub schedule: RewardSchedule,
    pub limits: ProofLimits,
    pub uptime_interval: Duration,
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
    /// Peers' verified proofs waiting for the next batch write, with who sent them.
    inbox: Vec<(SignedProof, Nano, PeerId)>,
    inbox_ids: HashSet<String>,
}

/// Peers' proofs are written at least this often, or when this many are waiting.
const INBOX_FLUSH: Duration = Duration::from_millis(200);
const INBOX_BATCH: usize = 128;

/// A round's verdicts before they settle; `reasons` (this node's own, with scores) is empty for
/// a peer's.
struct PendingVerdicts {
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
        Self {
            store,
            options,
            peers,
            status,
            last_uptime_proof: Instant::now(),
            stolen: Vec::new(),
            adopted: BTreeMap::new(),
            pending_verdicts: Vec::new(),
            inbox: Vec::new(),
            inbox_ids: HashSet::new(),
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
    /// gossips it.
    fn prove(&mut self, proof: Proof) {
        let kind = proof.kind;
        let signed = match sign_proof(&self.options.identity, proof) {
            Ok(signed) => signed,
            Err(e) => return warn!(?kind, error = %e, "cannot sign our own proof"),
        };
        if self.options.fault.cheat {
            return self.cheat(signed);
        }
        match self.accept_proof(&signed) {
            Ok(_) => self
                .peers
                .do_send(PublishLedger(LedgerMessage::Proof(signed))),
            Err(e) => warn!(?kind, error = %e, "our own proof was refused"),
        }
    }

    /// Verifies a proof against what the ledger knows of its signer and records it at once (this
    /// node's own proofs: acknowledged when stored); a proof already stored is a no-op.
    fn accept_proof(&mut self, signed: &SignedProof) -> Result<Option<ProofStatus>, Rejection> {
        match self.check_proof(signed) {
            Ok(Some((_, base))) => self
                .store_proofs(vec![(signed.clone(), base)])
                .into_iter()
                .next()
                .unwrap_or(Ok(None)),
            Ok(None) => Ok(None),
            Err(rejection) => {
                self.count(&rejection);
                Err(rejection)
            }
        }
    }

    /// The proof's id and base reward if it is new and passes verification; `None` if it is
    /// known.
    fn check_proof(&self, signed: &SignedProof) -> Result<Option<(String, Nano)>, Rejection> {
        let id = proof_id(&signed.proof)?;
        if self.inbox_ids.contains(&id) || self.store.has_proof(&id).map_err(unavailable)? {
            return Ok(None);
        }
        let now = unix_ms();
        let proof = &signed.proof;
        let history = self
            .store
            .history(&proof.node_id, proof.nonce, now, proof.timestamp_ms)
            .map_err(unavailable)?;
        let (limits, schedule) = (&self.options.limits, &self.options.schedule);
        let offer = verify_proof(now, signed, &history, limits, schedule)?;
        Ok(Some((id, offer.reward)))
    }

    /// Writes verified proofs in one transaction; per proof, its status or why it was refused.
    fn store_proofs(
        &mut self,
        batch: Vec<(SignedProof, Nano)>,
    ) -> Vec<Result<Option<ProofStatus>, Rejection>> {
        let outcomes = match self.store.insert_proofs(&batch) {
            Ok(outcomes) => outcomes,
            Err(e) => {
                let rejection = unavailable(e);
                return batch.iter().map(|_| Err(rejection.clone())).collect();
            }
        };
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
        self.publish_account();
        results
    }

    /// A peer's proof: verified now, written with the others of the next flush (one SQLite
    /// transaction, and one re-fold at most, per batch instead of per proof).
    fn receive_proof(&mut self, signed: &SignedProof, origin: PeerId) -> Option<Rejection> {
        match self.check_proof(signed) {
            Ok(Some((id, base))) => {
                self.inbox_ids.insert(id);
                self.inbox.push((signed.clone(), base, origin));
                if self.inbox.len() >= INBOX_BATCH {
                    self.flush_inbox();
                }
                None
            }
            Ok(None) => None,
            Err(rejection) => {
                self.count(&rejection);
                Some(rejection)
            }
        }
    }

    fn flush_inbox(&mut self) {
        if self.inbox.is_empty() {
            return;
        }
        self.inbox_ids.clear();
        let (batch, origins): (Vec<_>, Vec<_>) = std::mem::take(&mut self.inbox)
            .into_iter()
            .map(|(signed, base, origin)| ((signed, base), origin))
            .unzip();
        let results = self.store_proofs(batch);
        for (result, peer) in results.into_iter().zip(origins) {
            if let Err(rejection) = result {
                self.peers.do_send(PeerOffence { peer, rejection });
            }
        }
    }

    /// Checks a transaction (signature, freshness, fee) and lets the fold decide whether it
    /// applies; the status says which ("applied", or the fold's reason, e.g. an overdraft).
    fn accept_transaction(&mut self, signed: &SignedTransaction) -> Result<String, Rejection> {
        let outcome = check_transaction(unix_ms(), signed, &self.options.limits)
            .map_err(Rejection::from)
            .and_then(|()| {
                let mut outcomes = self
                    .store
                    .insert_transactions(std::slice::from_ref(signed))
                    .map_err(unavailable)?;
                match outcomes.pop() {
                    Some(TxInsertOutcome::Applied) => Ok("applied".to_string()),
                    Some(TxInsertOutcome::Rejected(why)) => Ok(format!("refused: {why}")),
                    // The same transaction again changes nothing (idempotent, like proofs).
                    Some(TxInsertOutcome::Duplicate) | None => Ok("duplicate".to_string()),
                    Some(TxInsertOutcome::Malformed(why)) => {
                        Err(TxRejection::Malformed(why).into())
                    }
                }
            });
        if let Err(rejection) = &outcome {
            self.count(rejection);
        }
        self.publish_account();
        outcome
    }

    fn record_verdicts(&mut self, round: u64, verdicts: &[(String, String, bool, String)]) {
        if let Err(e) = self.store.record_verdicts(round, verdicts) {
            warn!(round, error = %e, "cannot record the round's verdicts");
        }
        self.publish_account();
    }

    /// Keeps a round's verdicts (this node's or a peer's) until they can be settled.
    fn hold_verdicts(&mut self, pending: PendingVerdicts) {
        if self.pending_verdicts.len() >= KEPT_ROUNDS * 8 {
            self.pending_verdicts.remove(0);
        }
        self.pending_verdicts.push(pending);
        self.settle_verdicts();
    }

    /// Verdicts on round r are settled once this node trains round r + 2, from the θ₀ it then
    /// holds for round r + 1: by then a node that aggregated round r on a minority θ₀ has
    /// healed to the majority's, so only verdicts whose aggregate produced that θ₀ are recorded
    /// (its own, or any peer's), and all nodes on the majority's θ₀ settle the same proofs.
    fn settle_verdicts(&mut self) {
        let Some(&current) = self.adopted.keys().next_back() else {
            return;
        };
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_verdicts)
            .into_iter()
            .partition(|p| p.wire.round + 2 <= current);
        self.pending_verdicts = waiting;
        for pending in ready {
            let round = pending.wire.round;
            let Some(theta0) = self.adopted.get(&(round + 1)).cloned() else {
                continue; // older than the θ₀ hashes this node remembers
            };
            if theta0 != pending.wire.theta0_after {
                continue; // another history than the one this node holds
            }
            let verdicts: Vec<_> = pending
                .wire
                .verdicts
                .iter()
                .enumerate()
                .map(|(i, (node_id, delta_hash, kept))| {
                    let reason = pending.reasons.get(i).cloned().unwrap_or_else(|| {
                        let word = if *kept { "kept" } else { "rejected" };
                        let theta0 = theta0.get(..12).unwrap_or(&theta0);
                        format!("{word} in round {round} (by the peers that produced θ₀ {theta0})")
                    });
                    (delta_hash.clone(), node_id.clone(), *kept, reason)
                })
                .collect();
            self.record_verdicts(round, &verdicts);
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
        self.prove(data);
        let mut inference = self.blank_proof(ProofKind::Inference, 60_000.0);
        inference.tokens = 1_000_000_000;
        inference.request_id = format!("inflated-{:016x}", inference.nonce);
        self.prove(inference);
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

    /// Gossips this node's newest proofs and transactions still inside the freshness window
    /// again (as many as fit one gossip message), for peers that missed them.
    fn republish_recent(&self) {
        let own = &self.options.identity.node_id;
        let since = unix_ms().saturating_sub(self.options.limits.freshness_window_s * 1000 / 2);
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
    }

    fn prove_uptime(&mut self) {
        let seconds = self.last_uptime_proof.elapsed().as_secs();
        self.last_uptime_proof = Instant::now();
        let cap = self.options.limits.max_uptime_per_proof_s;
        let mut proof = self.blank_proof(ProofKind::Uptime, seconds as f64);
        proof.uptime_seconds = seconds.min(cap).max(1);
        proof.work_seconds = proof.uptime_seconds;
        self.prove(proof);
    }
}

/// The database failed under us: refuse the message rather than lose it silently.
fn unavailable(e: LedgerError) -> Rejection {
    Rejection::Malformed(format!("ledger unavailable: {e}"))
}

impl Actor for LedgerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.peers.do_send(RegisterLedger {
            gossip: ctx.address().recipient(),
            refused: ctx.address().recipient(),
        });
        self.publish_account();
        ctx.run_interval(INBOX_FLUSH, |act, _| {
            act.flush_inbox();
            if let Err(e) = act.store.save_rejections() {
                warn!(error = %e, "cannot save the rejection counts");
            }
        });
        ctx.run_interval(self.options.uptime_interval, |act, _| {
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
            LedgerMessage::Transaction(tx) => self.accept_transaction(tx).err(),
            LedgerMessage::Recent {
                proofs,
                transactions,
            } => {
                // Transactions after proofs: a transfer may spend what a proof just earned.
                let mut refused: Vec<Rejection> = proofs
                    .iter()
                    .filter_map(|proof| self.receive_proof(proof, msg.origin))
                    .collect();
                self.flush_inbox();
                for tx in transactions {
                    refused.extend(self.accept_transaction(tx).err());
                }
                refused.into_iter().next()
            }
            LedgerMessage::Verdicts(verdicts) => {
                self.hold_verdicts(PendingVerdicts {
                    wire: verdicts.clone(),
                    reasons: Vec::new(),
                });
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
        self.prove(proof);
    }
}

impl Handler<ProveInference> for LedgerActor {
    type Result = ();

    fn handle(&mut self, msg: ProveInference, _: &mut Self::Context) {
        let mut proof = self.blank_proof(ProofKind::Inference, msg.seconds);
        proof.request_id = msg.request_id;
        proof.tokens = msg.tokens;
        self.prove(proof);
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
        self.hold_verdicts(PendingVerdicts { wire, reasons });
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
    type Result = Result<std::collections::BTreeMap<String, Account>, String>;

    fn handle(&mut self, _: GetBalances, _: &mut Self::Context) -> Self::Result {
        Ok(self.store.balances())
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
    type Result = Result<SubmittedTransaction, Rejection>;

    /// Signs a transaction of this node with the next sequence number and handles it exactly
    /// as a peer's; it is gossiped only when the fold applied it.
    fn handle(&mut self, msg: SubmitTransaction, _: &mut Self::Context) -> Self::Result {
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
            Ok(SubmittedTransaction {
                id,
                transaction: signed,
                status,
            })
        } else {
            Err(Rejection::Malformed(status))
        }
    }
}
