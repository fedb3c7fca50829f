//! CheckpointActor: this node's part in the checkpoint consensus (`ledger::checkpoint::Engine`).
//! `delay` after an epoch ends (past the freshness window, so no fresh event of it can still be
//! accepted), it asks the ledger for its own checkpoint of the epoch and the epoch's validators
//! and decides with them. Messages go out on the ledger topic through PeerActor, the engine's
//! timeouts are actix timers, and a decision is stored by the ledger. Every few seconds it also
//! asks a peer for checkpoints this node lacks (it joined late, was away, or did not decide) and
//! has the ledger adopt the history they certify. It asks for those after the newest checkpoint
//! its history is known to match ([`HistoryHeld`]), not after the newest it stores: a node that
//! joined late can take part in deciding an epoch before its first sync, and store that
//! checkpoint without the history before it.

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use libp2p::PeerId;
use malachitebft_core_types::Timeout;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::ledger::LedgerActor;
use super::messages::{
    AdoptHistory, CheckpointGossip, ChooseAnchor, FetchHistory, NewestCheckpoint, PeerOffence,
    PrepareCheckpoint, PublishLedger, RecordCertified, RecordCheckpoint, RegisterCheckpoints,
};
use super::peer::PeerActor;
use super::run_every;
use crate::crypto::Identity;
use crate::ledger::checkpoint::{
    CertificateRecord, Checkpoint, CheckpointContext, ConsensusWire, Engine, Output, Timeouts,
    ValidatorSet,
};
use crate::ledger::rewards::RewardSchedule;
use crate::ledger::store::HistoryPage;
use crate::net::history::{HistoryRequest, HistoryResponse};
use crate::net::wire::{LedgerMessage, Rejection, unix_ms};

/// How often the actor looks for an epoch due to be checkpointed.
const DUE_CHECK: Duration = Duration::from_secs(2);
/// How often this node asks a peer for the checkpoints (and their history) it lacks.
const HISTORY_CHECK: Duration = Duration::from_secs(10);
/// Pages of one span adopted at once (each about `PAGE_BYTES` of events).
const MAX_PAGES: usize = 64;

pub struct CheckpointOptions {
    pub identity: Identity,
    pub network: String,
    pub schedule: RewardSchedule,
    /// How long after an epoch ends its checkpoint is decided.
    pub delay: Duration,
    pub timeouts: Timeouts,
    /// Fault switch NEUROSHARD_FAULT_CHECKPOINT_FORGE: this node proposes and votes for a
    /// checkpoint whose balances it made up.
    pub forge: bool,
}

pub struct CheckpointActor {
    options: CheckpointOptions,
    ledger: Addr<LedgerActor>,
    peers: Addr<PeerActor>,
    /// Created with the first epoch that has validators.
    engine: Option<Engine>,
    /// The newest epoch this node started deciding, or found certified or without validators.
    handled: Option<u64>,
    /// The epoch under way while it is undecided.
    undecided: Option<u64>,
    /// A PrepareCheckpoint is on its way to the ledger.
    preparing: bool,
    /// A history sync is under way.
    syncing: bool,
    /// Why the last history sync failed: a new reason is logged at info, a repeated one at debug.
    sync_failure: Option<String>,
    /// Through which checkpoint this node's history is the certified one.
    held: HistoryHeld,
    timers: HashMap<Timeout, SpawnHandle>,
}

impl CheckpointActor {
    pub fn new(
        options: CheckpointOptions,
        ledger: Addr<LedgerActor>,
        peers: Addr<PeerActor>,
    ) -> Self {
        Self {
            options,
            ledger,
            peers,
            engine: None,
            handled: None,
            undecided: None,
            preparing: false,
            syncing: false,
            sync_failure: None,
            held: HistoryHeld::Unread,
            timers: HashMap::new(),
        }
    }

    /// The newest epoch that ended at least `delay` before `now_ms`.
    fn due_epoch(&self, now_ms: u64) -> Option<u64> {
        let delay_ms = u64::try_from(self.options.delay.as_millis()).unwrap_or(u64::MAX);
        let settled_ms = now_ms.checked_sub(delay_ms)?;
        self.options.schedule.epoch_of(settled_ms).checked_sub(1)
    }

    /// Starts the epoch that is due; while the one under way is undecided, computes this node's
    /// checkpoint of it again: what it holds may still change (a verdict, a synced epoch before
    /// it), and the later rounds propose and accept the new value.
    fn check_due(&mut self, ctx: &mut Context<Self>) {
        let Some(due) = self.due_epoch(unix_ms()) else {
            return;
        };
        let epoch = match self.handled {
            Some(handled) if handled >= due && self.undecided == Some(handled) => handled,
            Some(handled) if handled >= due => return,
            _ => due,
        };
        if self.preparing {
            return;
        }
        self.preparing = true;
        self.ledger
            .send(PrepareCheckpoint { epoch })
            .into_actor(self)
            .map(move |answer, act, ctx| {
                act.preparing = false;
                match answer {
                    Ok(Ok(Some((own, _)))) if act.undecided == Some(epoch) => act.recompute(own),
                    Ok(Ok(Some((own, validators)))) => act.start(epoch, own, validators, ctx),
                    Ok(Ok(None)) => {
                        act.handled = Some(epoch);
                        act.undecided = None;
                    }
                    Ok(Err(e)) => warn!(epoch, error = %e, "cannot compute this node's checkpoint"),
                    Err(e) => warn!(epoch, error = %e, "ledger unreachable"),
                }
            })
            .spawn(ctx);
    }

    /// This node's checkpoint of the epoch under way, computed again.
    fn recompute(&mut self, own: Checkpoint) {
        let own = if self.options.forge { forged(own) } else { own };
        if let Some(engine) = &mut self.engine
            && engine.own() != Some(own)
        {
            info!(
                epoch = own.epoch,
                checkpoint = %malachitebft_core_types::Value::id(&own),
                "this node's checkpoint changed; later rounds propose and accept it"
            );
            engine.set_own(own);
        }
    }

    fn start(
        &mut self,
        epoch: u64,
        own: Checkpoint,
        validators: ValidatorSet,
        ctx: &mut Context<Self>,
    ) {
        self.handled = Some(epoch);
        self.undecided = None;
        if validators.validators().is_empty() {
            info!(
                epoch,
                "no checkpoint for this epoch: the network kept nobody's training in the epoch before"
            );
            return;
        }
        let own = if self.options.forge { forged(own) } else { own };
        info!(
            epoch,
            checkpoint = %malachitebft_core_types::Value::id(&own),
            validators = validators.validators().len(),
            validator = validators.contains(&crate::ledger::checkpoint::context::NodeAddress(
                self.options.identity.node_id.clone()
            )),
            "deciding the epoch's checkpoint"
        );
        self.cancel_timers(ctx);
        let options = &self.options;
        let engine = self.engine.get_or_insert_with(|| {
            Engine::new(
                CheckpointContext::new(&options.network),
                options.identity.clone(),
                validators.clone(),
                options.timeouts,
            )
        });
        match engine.start(epoch, validators, Some(own)) {
            Ok(outputs) => {
                self.undecided = Some(epoch);
                self.carry_out(outputs, ctx);
            }
            Err(e) => warn!(epoch, error = %e, "checkpoint consensus not started"),
        }
    }

    /// Asks a peer (the next connected one in turn) for the checkpoints after the one this
    /// node's history is known to match and adopts the history each certifies, oldest first.
    fn sync_history(&mut self, ctx: &mut Context<Self>) {
        let HistoryHeld::Through(after) = self.held else {
            return;
        };
        if self.syncing {
            return;
        }
        self.syncing = true;
        catch_up(self.ledger.clone(), self.peers.clone(), after)
            .into_actor(self)
            .map(|result, act, _| {
                act.syncing = false;
                match result {
                    Ok(caught_up) => {
                        act.sync_failure = None;
                        act.held = act.held.synced(caught_up.through);
                        if caught_up.adopted > 0 {
                            info!(
                                checkpoints = caught_up.adopted,
                                "caught up with the network's ledger"
                            );
                        }
                    }
                    Err(e) if act.sync_failure.as_ref() == Some(&e) => {
                        debug!(error = %e, "ledger history sync failed again")
                    }
                    Err(e) => {
                        info!(error = %e, "ledger history sync failed");
                        act.sync_failure = Some(e);
                    }
                }
            })
            .spawn(ctx);
    }

    fn cancel_timers(&mut self, ctx: &mut Context<Self>) {
        for (_, handle) in self.timers.drain() {
            ctx.cancel_future(handle);
        }
    }

    fn carry_out(&mut self, outputs: Vec<Output>, ctx: &mut Context<Self>) {
        for output in outputs {
            match output {
                Output::Publish(message) => self.peers.do_send(PublishLedger(
                    LedgerMessage::Checkpoint(ConsensusWire::from_message(&message)),
                )),
                Output::Schedule { timeout, after } => {
                    if let Some(handle) = self.timers.remove(&timeout) {
                        ctx.cancel_future(handle);
                    }
                    let handle = ctx.run_later(after, move |act, ctx| {
                        act.timers.remove(&timeout);
                        if let Some(engine) = &mut act.engine {
                            let outputs = engine.timeout_elapsed(timeout);
                            act.carry_out(outputs, ctx);
                        }
                    });
                    self.timers.insert(timeout, handle);
                }
                Output::Cancel(timeout) => {
                    if let Some(handle) = self.timers.remove(&timeout) {
                        ctx.cancel_future(handle);
                    }
                }
                Output::CancelAll => self.cancel_timers(ctx),
                Output::RoundStarted {
                    epoch,
                    round,
                    proposer,
                } => debug!(epoch, round = round.as_i64(), %proposer, "checkpoint round"),
                Output::Decided(decision) => {
                    let own = self.engine.as_ref().and_then(Engine::own);
                    self.held = self.held.decided(own, decision.checkpoint);
                    if own != Some(decision.checkpoint) {
                        info!(
                            epoch = decision.checkpoint.epoch,
                            "the network decided another checkpoint than this node's; its history is synced from the last one it matched"
                        );
                    }
                    let record = CertificateRecord::new(
                        &decision.checkpoint,
                        &decision.certificate,
                        &decision.validators,
                    );
                    info!(
                        epoch = record.epoch,
                        checkpoint = %record.checkpoint_id,
                        round = record.round,
                        signers = record.signatures.len(),
                        "checkpoint decided"
                    );
                    self.ledger.do_send(RecordCheckpoint(record));
                    self.undecided = None;
                    // Decided: no more re-sent votes (a node that missed them syncs the
                    // certificate instead).
                    self.cancel_timers(ctx);
                }
            }
        }
    }
}

/// Through which checkpoint this node's history is the certified one: what a history sync asks
/// for the checkpoints after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HistoryHeld {
    /// Not yet read from the ledger (the actor reads it as it starts).
    Unread,
    /// Through this checkpoint (None: no checkpoint yet).
    Through(Option<u64>),
}

impl HistoryHeld {
    /// After a sync that adopted or recorded the certified history through `through`.
    fn synced(self, through: Option<u64>) -> Self {
        match self {
            HistoryHeld::Through(held) => HistoryHeld::Through(held.max(through)),
            HistoryHeld::Unread => HistoryHeld::Unread,
        }
    }

    /// After the network decided `decided`: the history is known to match through it only when
    /// this node's own checkpoint of it is the decided one (same events, same balances) and it
    /// follows the checkpoint matched before, or is the first this node holds (the network's
    /// first, or a joiner's with nothing before it to catch up on: its balances are the
    /// certified ones). Otherwise (a late joiner without the history before, a node that missed
    /// the epoch before's decision, or one whose events differ) it stores the decision and a sync
    /// asks for the checkpoints after the one matched before.
    fn decided(self, own: Option<Checkpoint>, decided: Checkpoint) -> Self {
        let follows = match self {
            HistoryHeld::Through(Some(held)) => held + 1 == decided.epoch,
            HistoryHeld::Through(None) => true,
            HistoryHeld::Unread => false,
        };
        if follows && own == Some(decided) {
            HistoryHeld::Through(Some(decided.epoch))
        } else {
            self
        }
    }
}

/// What a history sync brought: how many checkpoints were adopted, and the newest whose
/// certified history this node now holds (None: the peer listed none).
struct CaughtUp {
    adopted: usize,
    through: Option<u64>,
}

/// The checkpoints a peer holds after `after`, each adopted with the history up to it. A node
/// that holds none (`after` is None) anchors on the newest the peer lists whose validators it
/// trusts by weight, adopts the history from the start up to it, then the certificates before it
/// as the adopted events bear them out.
async fn catch_up(
    ledger: Addr<LedgerActor>,
    peers: Addr<PeerActor>,
    after: Option<u64>,
) -> Result<CaughtUp, String> {
    let request = HistoryRequest::Checkpoints { after };
    let (peer, answer) = peers
        .send(FetchHistory {
            peer: None,
            request,
        })
        .await
        .map_err(|e| e.to_string())??;
    let HistoryResponse::Checkpoints(mut certificates) = answer else {
        return Err(format!("{peer} did not list its checkpoints"));
    };
    let mut from = after.map_or(0, |epoch| epoch + 1);
    let mut adopted = 0;
    if after.is_none() && !certificates.is_empty() {
        let anchor = ledger
            .send(ChooseAnchor(certificates.clone()))
            .await
            .map_err(|e| e.to_string())??;
        let later = certificates.split_off(anchor + 1);
        let Some(anchor) = certificates.pop() else {
            return Err("the anchor is not in the list".into());
        };
        from = adopt_span(&ledger, &peers, peer, from, anchor).await?;
        adopted += 1 + ledger
            .send(RecordCertified { peer, certificates })
            .await
            .map_err(|e| e.to_string())??;
        certificates = later;
    }
    for certificate in certificates {
        if certificate.epoch < from {
            continue;
        }
        from = adopt_span(&ledger, &peers, peer, from, certificate).await?;
        adopted += 1;
    }
    Ok(CaughtUp {
        adopted,
        through: from.checked_sub(1),
    })
}

/// Adopts `peer`'s events of epochs `from..=certificate.epoch` with `certificate`: the epoch
/// after it.
async fn adopt_span(
    ledger: &Addr<LedgerActor>,
    peers: &Addr<PeerActor>,
    peer: PeerId,
    from: u64,
    certificate: CertificateRecord,
) -> Result<u64, String> {
    let events = fetch_span(peers, peer, from, certificate.epoch).await?;
    let next = certificate.epoch + 1;
    ledger
        .send(AdoptHistory {
            peer,
            from,
            certificate,
            events,
        })
        .await
        .map_err(|e| e.to_string())??;
    Ok(next)
}

/// Every page of `peer`'s events of epochs `from..=to`.
async fn fetch_span(
    peers: &Addr<PeerActor>,
    peer: PeerId,
    from: u64,
    to: u64,
) -> Result<HistoryPage, String> {
    let mut span = HistoryPage::default();
    let mut after = None;
    for _ in 0..MAX_PAGES {
        let request = HistoryRequest::Events { from, to, after };
        let (_, answer) = peers
            .send(FetchHistory {
                peer: Some(peer),
                request,
            })
            .await
            .map_err(|e| e.to_string())??;
        let HistoryResponse::Events(page) = answer else {
            return Err(format!(
                "{peer} did not send the events of epochs {from}..={to}"
            ));
        };
        span.proofs.extend(page.proofs);
        span.transactions.extend(page.transactions);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(span),
        }
    }
    Err(format!(
        "epochs {from}..={to} take more than {MAX_PAGES} pages"
    ))
}

/// The fault switch's checkpoint: the same events, balances made up.
fn forged(own: Checkpoint) -> Checkpoint {
    Checkpoint {
        balances_root: Sha256::digest(own.balances_root).into(),
        ..own
    }
}

impl Actor for CheckpointActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.ledger
            .do_send(RegisterCheckpoints(ctx.address().recipient()));
        // Before any decision: a checkpoint decided later may not be matched by this history.
        ctx
            .wait(self.ledger.send(NewestCheckpoint).into_actor(self).map(
            |newest, act, _| match newest {
                Ok(Ok(newest)) => act.held = HistoryHeld::Through(newest),
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot read the newest checkpoint; history sync stays off")
                }
                Err(e) => warn!(error = %e, "ledger unreachable; history sync stays off"),
            },
        ));
        run_every(ctx, DUE_CHECK, |act, ctx| act.check_due(ctx));
        run_every(ctx, HISTORY_CHECK, |act, ctx| act.sync_history(ctx));
    }
}

impl Handler<CheckpointGossip> for CheckpointActor {
    type Result = ();

    fn handle(&mut self, msg: CheckpointGossip, ctx: &mut Self::Context) {
        match msg.message.to_message() {
            Err(problem) => self.peers.do_send(PeerOffence {
                peer: msg.origin,
                rejection: Rejection::Malformed(format!("checkpoint message: {problem}")),
            }),
            Ok(message) => {
                if let Some(engine) = &mut self.engine {
                    let outputs = engine.receive(message);
                    self.carry_out(outputs, ctx);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(epoch: u64, balances: u8) -> Checkpoint {
        Checkpoint {
            epoch,
            events_root: [0; 32],
            balances_root: [balances; 32],
        }
    }

    #[test]
    fn a_decided_checkpoint_moves_the_synced_history_only_when_it_follows_and_is_this_nodes_own() {
        let held = HistoryHeld::Through(Some(7));
        assert_eq!(
            held.decided(Some(checkpoint(8, 1)), checkpoint(8, 1)),
            HistoryHeld::Through(Some(8))
        );
        // Its own balances differ (events it missed): a sync brings the certified ones.
        assert_eq!(held.decided(Some(checkpoint(8, 2)), checkpoint(8, 1)), held);
        // It missed epoch 8's decision: matching epoch 9 says nothing of 8.
        assert_eq!(held.decided(Some(checkpoint(9, 1)), checkpoint(9, 1)), held);
        // A late joiner lacks the history before it joined, so its balances differ: it keeps
        // asking from the start. A node whose first checkpoint is its own holds what it certifies.
        let joiner = HistoryHeld::Through(None);
        assert_eq!(
            joiner.decided(Some(checkpoint(8, 2)), checkpoint(8, 1)),
            joiner
        );
        assert_eq!(joiner.decided(None, checkpoint(8, 1)), joiner);
        assert_eq!(
            joiner.decided(Some(checkpoint(8, 1)), checkpoint(8, 1)),
            HistoryHeld::Through(Some(8))
        );
        assert_eq!(joiner.synced(Some(9)), HistoryHeld::Through(Some(9)));
        assert_eq!(held.synced(None), held);
        assert_eq!(held.synced(Some(5)), held);
        assert_eq!(HistoryHeld::Unread.synced(Some(3)), HistoryHeld::Unread);
    }
}
