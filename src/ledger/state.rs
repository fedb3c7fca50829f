//! The fold: balances are a deterministic function of the set of accepted events. Events are
//! applied in one total order, `(timestamp_ms, id)`, with integer arithmetic that saturates or is
//! checked, so two nodes holding the same set hold identical state whatever order it arrived in.
//! No I/O here: the store (`store`) decides what the set is and persists what this computes.
//!
//! Emission is bounded per epoch (`RewardSchedule::epoch_s`, by proof timestamp). Each credited
//! proof claims its base reward × its signer's stake multiplier (the stake held when the epoch
//! began), capped per proof. When an epoch's claims add up to more than `emission_per_epoch`,
//! every claim of that epoch is scaled to `claim × emission / Σ claims`, rounded down in
//! nano-NEURO; the epoch then mints exactly its emission and the rounding remainder is burned.
//! So however many identities share an epoch, together they mint at most its emission. Because a
//! proof's credit depends on every other proof of its epoch, events are folded an epoch at a time.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::rewards::{RewardSchedule, burn_fee};
use super::{Nano, Transaction, TxKind, TxRejection};

/// One accepted event, borrowed from wherever the caller keeps it (the fold only reads it).
/// Ids are content hashes (`proof::proof_id`, `tx::tx_id`), so the order key is unique.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event<'a> {
    /// A verified proof of work. `credited` is false while it earns nothing yet (a training proof
    /// whose delta no round has kept) or never will (one whose delta was rejected).
    Proof {
        id: &'a str,
        node_id: &'a str,
        timestamp_ms: u64,
        base_reward: Nano,
        credited: bool,
    },
    Tx {
        id: &'a str,
        tx: &'a Transaction,
    },
}

impl<'a> Event<'a> {
    pub fn id(&self) -> &'a str {
        match *self {
            Event::Proof { id, .. } | Event::Tx { id, .. } => id,
        }
    }

    pub fn timestamp_ms(&self) -> u64 {
        match *self {
            Event::Proof { timestamp_ms, .. } => timestamp_ms,
            Event::Tx { tx, .. } => tx.timestamp_ms,
        }
    }

    /// Where the event sits in the fold.
    pub fn order_key(&self) -> (u64, &'a str) {
        (self.timestamp_ms(), self.id())
    }

    /// The fold's order: `order_key`, then proofs before transactions on an equal key (only a
    /// hash collision gives one), so the order stays total and the fold independent of the input
    /// order.
    fn fold_key(&self) -> (u64, &'a str, bool) {
        (
            self.timestamp_ms(),
            self.id(),
            matches!(self, Event::Tx { .. }),
        )
    }

    fn fold_order(&self, other: &Self) -> Ordering {
        self.fold_key().cmp(&other.fold_key())
    }
}

/// Sorts `events` into the fold's order: `(timestamp_ms, id)`.
pub fn sort_events(events: &mut [Event<'_>]) {
    events.sort_unstable_by(Event::fold_order);
}

/// One node's holdings, all in nano-NEURO except the counters and the time.
#[derive(Default, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Spendable.
    pub balance: Nano,
    /// Minted to this node by its proofs (transfers received are not earnings).
    pub total_earned: Nano,
    /// Sent and burned by its transfers.
    pub total_spent: Nano,
    pub stake: Nano,
    pub stake_locked_until_ms: u64,
    /// Credited proofs.
    pub proof_count: u64,
    /// Sequence number of its last applied transaction (0: none yet).
    pub last_seq: u64,
}

/// What `LedgerState::apply_sorted` returns besides the state.
#[derive(Debug, Default)]
pub struct Folded {
    /// The states before the last epochs folded, oldest first, with their epochs.
    pub bases: Vec<(u64, LedgerState)>,
    /// Where the newest epoch stands; `None` when nothing was folded.
    pub head: Option<EpochHead>,
}

/// The newest epoch of a fold as far as it went: what extending it at its end needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochHead {
    pub epoch: u64,
    /// What its credited proofs claim so far, priced with the stakes held before it.
    pub claimed: u128,
    /// Its last event's place in the fold's order: (timestamp, id, is a transaction).
    pub last: (u64, String, bool),
}

impl EpochHead {
    /// Whether `event` sorts after this epoch's last event.
    pub fn precedes(&self, event: &Event<'_>) -> bool {
        (self.last.0, self.last.1.as_str(), self.last.2) < event.fold_key()
    }

    fn key(event: &Event<'_>) -> (u64, String, bool) {
        let (timestamp_ms, id, is_tx) = event.fold_key();
        (timestamp_ms, id.to_owned(), is_tx)
    }
}

/// Every account and the network totals after folding a set of events.
#[derive(Default, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerState {
    accounts: BTreeMap<String, Account>,
    total_minted: Nano,
    total_burned: Nano,
}

impl LedgerState {
    pub fn accounts(&self) -> &BTreeMap<String, Account> {
        &self.accounts
    }

    pub fn account(&self, node_id: &str) -> Option<&Account> {
        self.accounts.get(node_id)
    }

    pub fn total_minted(&self) -> Nano {
        self.total_minted
    }

    pub fn total_burned(&self) -> Nano {
        self.total_burned
    }

    /// What exists and has not been burned.
    pub fn circulating_supply(&self) -> Nano {
        self.total_minted.saturating_sub(self.total_burned)
    }

    /// Sorts `events` into the fold's order and applies them an epoch at a time, handing each
    /// outcome (what a proof credited, 0 when uncredited; what a transaction moved, or why it was
    /// refused) to `on_outcome`. A refused transaction changes nothing, its sequence number
    /// included.
    ///
    /// Every event must belong to a later epoch than those already folded into `self`: an epoch's
    /// credits depend on all of its proofs, so an epoch that gains an event is folded again from
    /// the state before it. Those states, before each of the last `keep_bases` epochs of
    /// `events`, are returned oldest first with their epochs: the bases from which the store
    /// re-folds an epoch that gains a late event, and every epoch after it. So is where the
    /// newest epoch stands (`EpochHead`), for `extend_epoch`.
    pub fn apply_sorted<'e>(
        &mut self,
        events: &mut [Event<'e>],
        schedule: &RewardSchedule,
        keep_bases: usize,
        mut on_outcome: impl FnMut(&Event<'e>, Result<Nano, TxRejection>),
    ) -> Folded {
        sort_events(events);
        let epoch_of = |event: &Event<'_>| schedule.epoch_of(event.timestamp_ms());
        let groups: Vec<&[Event<'e>]> =
            events.chunk_by(|a, b| epoch_of(a) == epoch_of(b)).collect();
        let first_kept = groups.len().saturating_sub(keep_bases);
        let mut folded = Folded {
            bases: Vec::with_capacity(keep_bases.min(groups.len())),
            head: None,
        };
        for (index, group) in groups.into_iter().enumerate() {
            if index >= first_kept {
                folded.bases.push((epoch_of(&group[0]), self.clone()));
            }
            let claimed = self.fold_epoch(group, schedule, &mut on_outcome);
            folded.head = group.last().map(|last| EpochHead {
                epoch: epoch_of(last),
                claimed,
                last: EpochHead::key(last),
            });
        }
        folded
    }

    /// Extends the newest epoch folded into `self` (`head`) with `events` when each belongs to it
    /// and sorts after its last event, and the epoch stays within its emission: then no earlier
    /// credit changes, and applying the events in order gives what folding the whole epoch again
    /// would. `base` is the state before the epoch (its stakes price the claims). Returns where
    /// the epoch then stands, or `None`, having changed nothing, when the events do not qualify.
    pub fn extend_epoch<'e>(
        &mut self,
        base: &LedgerState,
        head: &EpochHead,
        events: &mut [Event<'e>],
        schedule: &RewardSchedule,
        mut on_outcome: impl FnMut(&Event<'e>, Result<Nano, TxRejection>),
    ) -> Option<EpochHead> {
        sort_events(events);
        let (first, last) = (events.first()?, events.last()?);
        if !head.precedes(first) || schedule.epoch_of(last.timestamp_ms()) != head.epoch {
            return None;
        }
        let claims: Vec<Nano> = events.iter().map(|e| base.claim(e, schedule)).collect();
        let claimed = head.claimed + claims.iter().map(|&c| u128::from(c)).sum::<u128>();
        if claimed > u128::from(schedule.emission_per_epoch_nano()) {
            return None;
        }
        self.apply_claimed(events, claims, None, &mut on_outcome);
        Some(EpochHead {
            epoch: head.epoch,
            claimed,
            last: EpochHead::key(last),
        })
    }

    /// What a credited proof claims, with the stake its signer holds in `self` (the state before
    /// the proof's epoch); 0 for anything else.
    fn claim(&self, event: &Event<'_>, schedule: &RewardSchedule) -> Nano {
        match *event {
            Event::Proof {
                node_id,
                base_reward,
                credited: true,
                ..
            } => {
                let stake = self.accounts.get(node_id).map_or(0, |a| a.stake);
                schedule.credited(base_reward, stake)
            }
            _ => 0,
        }
    }

    /// Applies the events of one epoch, in order, with the epoch's emission bound; returns what
    /// its proofs claimed.
    fn fold_epoch<'e>(
        &mut self,
        group: &[Event<'e>],
        schedule: &RewardSchedule,
        on_outcome: &mut impl FnMut(&Event<'e>, Result<Nano, TxRejection>),
    ) -> u128 {
        // `self` is still the state before the epoch.
        let claims: Vec<Nano> = group.iter().map(|e| self.claim(e, schedule)).collect();
        let claimed: u128 = claims.iter().map(|&claim| u128::from(claim)).sum();
        let emission = u128::from(schedule.emission_per_epoch_nano());
        let over = claimed > emission;
        let paid = self.apply_claimed(
            group,
            claims,
            over.then_some((emission, claimed)),
            on_outcome,
        );
        if over {
            // Σ ⌊claim·E/Σ⌋ ≤ E: the epoch mints exactly E and the remainder is given to no one.
            let remainder = (emission - paid) as Nano;
            self.total_minted = self.total_minted.saturating_add(remainder);
            self.total_burned = self.total_burned.saturating_add(remainder);
        }
        claimed
    }

    /// Applies `events` in order, each credited proof paid its claim, or when its epoch claims more
    /// than its emission (`scaled`: (emission, all the epoch claims)) its pro-rata share; returns
    /// what the proofs were paid.
    fn apply_claimed<'e>(
        &mut self,
        events: &[Event<'e>],
        claims: Vec<Nano>,
        scaled: Option<(u128, u128)>,
        on_outcome: &mut impl FnMut(&Event<'e>, Result<Nano, TxRejection>),
    ) -> u128 {
        let mut paid: u128 = 0;
        for (event, claim) in events.iter().zip(claims) {
            let outcome = match *event {
                Event::Proof {
                    node_id, credited, ..
                } => Ok(if credited {
                    // claim ≤ claimed, so the share is at most the emission and fits a Nano.
                    let amount = match scaled {
                        Some((emission, claimed)) => {
                            (u128::from(claim) * emission / claimed) as Nano
                        }
                        None => claim,
                    };
                    paid += u128::from(amount);
                    self.credit_proof(node_id, amount)
                } else {
                    0
                }),
                Event::Tx { tx, .. } => self.apply_transaction(tx),
            };
            on_outcome(event, outcome);
        }
        paid
    }

    /// Credits `amount` (the proof's share of its epoch's emission) to its signer.
    fn credit_proof(&mut self, node_id: &str, amount: Nano) -> Nano {
        let account = self.accounts.entry(node_id.to_owned()).or_default();
        account.balance = account.balance.saturating_add(amount);
        account.total_earned = account.total_earned.saturating_add(amount);
        account.proof_count = account.proof_count.saturating_add(1);
        self.total_minted = self.total_minted.saturating_add(amount);
        amount
    }

    fn apply_transaction(&mut self, tx: &Transaction) -> Result<Nano, TxRejection> {
        // Work on a copy of the sender and store it only once every check has passed.
        let mut sender = self.accounts.get(&tx.from).cloned().unwrap_or_default();
        if sender.last_seq.checked_add(1) != Some(tx.seq) {
            return Err(TxRejection::BadSequence {
                expected: sender.last_seq.saturating_add(1),
                got: tx.seq,
            });
        }
        // The fee is re-checked here so that the fold never burns what the signed rule says not to.
        let expected_fee = match tx.kind {
            TxKind::Transfer => burn_fee(tx.amount),
            TxKind::Stake | TxKind::Unstake => 0,
        };
        if tx.fee != expected_fee {
            return Err(TxRejection::BadFee {
                expected: expected_fee,
                got: tx.fee,
            });
        }
        match tx.kind {
            TxKind::Transfer => {
                if tx.to.is_empty() {
                    return Err(TxRejection::Malformed(
                        "transfer without a recipient".into(),
                    ));
                }
                let needed = tx.amount.checked_add(tx.fee);
                let remaining = needed.and_then(|needed| sender.balance.checked_sub(needed));
                let (Some(needed), Some(remaining)) = (needed, remaining) else {
                    return Err(TxRejection::Overdraft {
                        needed: needed.unwrap_or(Nano::MAX),
                        balance: sender.balance,
                    });
                };
                sender.balance = remaining;
                sender.total_spent = sender.total_spent.saturating_add(needed);
                sender.last_seq = tx.seq;
                // The sender is stored before the recipient is credited, so a transfer to oneself
                // nets out to the fee.
                self.accounts.insert(tx.from.clone(), sender);
                let recipient = self.accounts.entry(tx.to.clone()).or_default();
                recipient.balance = recipient.balance.saturating_add(tx.amount);
                self.total_burned = self.total_burned.saturating_add(tx.fee);
            }
            TxKind::Stake => {
                let Some(remaining) = sender.balance.checked_sub(tx.amount) else {
                    return Err(TxRejection::Overdraft {
                        needed: tx.amount,
                        balance: sender.balance,
                    });
                };
                sender.balance = remaining;
                sender.stake = sender.stake.saturating_add(tx.amount);
                sender.stake_locked_until_ms = sender.stake_locked_until_ms.max(tx.lock_until_ms);
                sender.last_seq = tx.seq;
                self.accounts.insert(tx.from.clone(), sender);
            }
            TxKind::Unstake => {
                let Some(remaining) = sender.stake.checked_sub(tx.amount) else {
                    return Err(TxRejection::InsufficientStake {
                        requested: tx.amount,
                        staked: sender.stake,
                    });
                };
                if tx.timestamp_ms < sender.stake_locked_until_ms {
                    return Err(TxRejection::StakeLocked {
                        until_ms: sender.stake_locked_until_ms,
                    });
                }
                sender.stake = remaining;
                sender.balance = sender.balance.saturating_add(tx.amount);
                sender.last_seq = tx.seq;
                self.accounts.insert(tx.from.clone(), sender);
            }
        }
        Ok(tx.amount)
    }
}

/// Folds `events` (sorted here) from an empty ledger: the state and every refused transaction.
pub fn replay(
    events: &mut [Event<'_>],
    schedule: &RewardSchedule,
) -> (LedgerState, Vec<(String, TxRejection)>) {
    let mut state = LedgerState::default();
    let mut rejections = Vec::new();
    state.apply_sorted(events, schedule, 0, |event, outcome| {
        if let Err(rejection) = outcome {
            rejections.push((event.id().to_owned(), rejection));
        }
    });
    (state, rejections)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::ledger::rewards::nano;

    const ALICE: &str = "alice";
    const BOB: &str = "bob";

    fn proof<'a>(id: &'a str, node_id: &'a str, timestamp_ms: u64, base_reward: Nano) -> Event<'a> {
        Event::Proof {
            id,
            node_id,
            timestamp_ms,
            base_reward,
            credited: true,
        }
    }

    fn tx(kind: TxKind, from: &str, seq: u64, timestamp_ms: u64, amount: Nano) -> Transaction {
        Transaction {
            kind,
            from: from.into(),
            public_key: String::new(),
            to: if kind == TxKind::Transfer {
                BOB.into()
            } else {
                String::new()
            },
            amount,
            fee: if kind == TxKind::Transfer {
                burn_fee(amount)
            } else {
                0
            },
            seq,
            timestamp_ms,
            lock_until_ms: 0,
        }
    }

    /// A schedule whose cap and emission bound are out of the way, so the arithmetic in a test
    /// is only its own (an emission this large saturates to `Nano::MAX`).
    fn uncapped() -> RewardSchedule {
        RewardSchedule {
            max_per_proof: 1e9,
            emission_per_epoch: 1e12,
            ..RewardSchedule::default()
        }
    }

    /// Applies one event onto `state` (which must hold no event of its epoch) and returns its
    /// outcome.
    fn apply_one(
        state: &mut LedgerState,
        event: Event<'_>,
        schedule: &RewardSchedule,
    ) -> Result<Nano, TxRejection> {
        let mut outcome = None;
        state.apply_sorted(&mut [event], schedule, 0, |_, o| outcome = Some(o));
        outcome.unwrap()
    }

    fn fold(events: &[Event<'_>]) -> (LedgerState, Vec<(String, TxRejection)>) {
        replay(&mut events.to_vec(), &uncapped())
    }

    #[test]
    fn balances_are_hand_computed() {
        let send = tx(TxKind::Transfer, ALICE, 1, 30, nano(2.0));
        let (state, rejected) = fold(&[
            proof("p1", ALICE, 10, nano(3.0)),
            proof("p2", ALICE, 20, nano(1.5)),
            Event::Tx {
                id: "t1",
                tx: &send,
            },
        ]);
        assert!(rejected.is_empty());
        let alice = state.account(ALICE).unwrap();
        // 4.5 earned − 2 sent − 0.1 burned.
        assert_eq!(alice.balance, nano(2.4));
        assert_eq!(alice.total_earned, nano(4.5));
        assert_eq!(alice.total_spent, nano(2.1));
        assert_eq!((alice.proof_count, alice.last_seq), (2, 1));
        let bob = state.account(BOB).unwrap();
        assert_eq!(
            (bob.balance, bob.total_earned, bob.proof_count),
            (nano(2.0), 0, 0)
        );
        assert_eq!(state.total_minted(), nano(4.5));
        assert_eq!(state.total_burned(), nano(0.1));
        assert_eq!(state.circulating_supply(), nano(4.4));
    }

    /// splitmix64: a fixed-seed generator so the shuffles are the same on every run.
    pub(in crate::ledger) struct SplitMix(pub(in crate::ledger) u64);

    impl SplitMix {
        pub(in crate::ledger) fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        pub(in crate::ledger) fn shuffle<T>(&mut self, items: &mut [T]) {
            for i in (1..items.len()).rev() {
                let j = (self.next() % (i as u64 + 1)) as usize;
                items.swap(i, j);
            }
        }
    }

    #[test]
    fn every_permutation_of_the_same_events_gives_the_same_state() {
        let mut rng = SplitMix(7);
        let nodes = [ALICE, BOB, "carol"];
        let ids: Vec<String> = (0..60).map(|i| format!("e{i:02}")).collect();
        let mut transactions = Vec::new();
        let mut next_seq = [1u64; 3];
        for i in 0..30 {
            let sender = (rng.next() % 3) as usize;
            // Some sequence numbers repeat (double spends) and some transfers overdraw.
            let seq = next_seq[sender];
            if !rng.next().is_multiple_of(4) {
                next_seq[sender] += 1;
            }
            let kind = [
                TxKind::Transfer,
                TxKind::Transfer,
                TxKind::Stake,
                TxKind::Unstake,
            ][(rng.next() % 4) as usize];
            let mut t = tx(
                kind,
                nodes[sender],
                seq,
                100 + i * 7 % 50,
                rng.next() % nano(3.0),
            );
            t.to = nodes[(sender + 1) % 3].into();
            if kind != TxKind::Transfer {
                t.to.clear();
            }
            t.lock_until_ms = if kind == TxKind::Stake {
                rng.next() % 400
            } else {
                0
            };
            transactions.push(t);
        }
        let mut events: Vec<Event<'_>> = transactions
            .iter()
            .enumerate()
            .map(|(i, tx)| Event::Tx { id: &ids[i], tx })
            .collect();
        for (i, id) in ids.iter().enumerate().skip(30) {
            events.push(Event::Proof {
                id,
                node_id: nodes[i % 3],
                // Some proofs share a timestamp with a transaction: the id decides.
                timestamp_ms: 90 + (i as u64 * 13) % 80,
                base_reward: rng.next() % nano(2.0),
                credited: i % 5 != 0,
            });
        }
        let reference = fold(&events);
        assert!(!reference.1.is_empty(), "the set must exercise refusals");
        assert!(
            reference
                .0
                .account("carol")
                .is_some_and(|a| a.stake > 0 || a.last_seq > 0)
        );
        for _ in 0..50 {
            rng.shuffle(&mut events);
            assert_eq!(fold(&events), reference);
        }
    }

    #[test]
    fn a_reused_sequence_number_is_refused_and_changes_nothing() {
        let first = tx(TxKind::Transfer, ALICE, 1, 20, nano(1.0));
        let mut again = first.clone();
        again.timestamp_ms = 30;
        again.to = "carol".into();
        let (state, rejected) = fold(&[
            proof("p", ALICE, 10, nano(5.0)),
            Event::Tx {
                id: "t1",
                tx: &first,
            },
            Event::Tx {
                id: "t2",
                tx: &again,
            },
        ]);
        assert_eq!(
            rejected,
            vec![(
                "t2".to_owned(),
                TxRejection::BadSequence {
                    expected: 2,
                    got: 1
                }
            )]
        );
        assert_eq!(state.account(ALICE).unwrap().balance, nano(3.95));
        assert!(state.account("carol").is_none());
        // A sequence number that skips one is refused too.
        let skip = tx(TxKind::Transfer, ALICE, 3, 40, 1);
        let mut next = state.clone();
        let event = Event::Tx {
            id: "t3",
            tx: &skip,
        };
        assert_eq!(
            apply_one(&mut next, event, &uncapped()),
            Err(TxRejection::BadSequence {
                expected: 2,
                got: 3
            })
        );
        assert_eq!(next, state);
    }

    #[test]
    fn an_overdraft_is_refused_fee_included() {
        // 1 NEURO covers the amount but not the amount and its fee.
        let send = tx(TxKind::Transfer, ALICE, 1, 20, nano(1.0));
        let (state, rejected) = fold(&[
            proof("p", ALICE, 10, nano(1.0)),
            Event::Tx { id: "t", tx: &send },
        ]);
        assert_eq!(
            rejected,
            vec![(
                "t".to_owned(),
                TxRejection::Overdraft {
                    needed: nano(1.05),
                    balance: nano(1.0)
                }
            )]
        );
        let alice = state.account(ALICE).unwrap();
        assert_eq!(
            (alice.balance, alice.last_seq, alice.total_spent),
            (nano(1.0), 0, 0)
        );
        // A sender the ledger has never seen has nothing to spend and gets no account.
        let stranger = tx(TxKind::Transfer, "nobody", 1, 20, 1);
        let (state, rejected) = fold(&[Event::Tx {
            id: "t",
            tx: &stranger,
        }]);
        assert_eq!(rejected.len(), 1);
        assert!(state.accounts().is_empty());
    }

    #[test]
    fn the_fee_is_burned_exactly() {
        let amount = 1_234_567_891;
        let send = tx(TxKind::Transfer, ALICE, 1, 20, amount);
        let (state, rejected) = fold(&[
            proof("p", ALICE, 10, nano(5.0)),
            Event::Tx { id: "t", tx: &send },
        ]);
        assert!(rejected.is_empty());
        let fee = burn_fee(amount);
        assert_eq!(fee, 61_728_395);
        assert_eq!(state.total_burned(), fee);
        assert_eq!(
            state.account(ALICE).unwrap().balance,
            nano(5.0) - amount - fee
        );
        assert_eq!(state.account(BOB).unwrap().balance, amount);
        let held: Nano = state.accounts().values().map(|a| a.balance).sum();
        assert_eq!(held, state.circulating_supply());
        // A fee that is not the rule's is refused.
        let mut cheap = tx(TxKind::Transfer, ALICE, 1, 20, amount);
        cheap.fee -= 1;
        let (_, rejected) = fold(&[
            proof("p", ALICE, 10, nano(5.0)),
            Event::Tx {
                id: "t",
                tx: &cheap,
            },
        ]);
        assert_eq!(
            rejected[0].1,
            TxRejection::BadFee {
                expected: fee,
                got: fee - 1
            }
        );
    }

    #[test]
    fn a_transfer_to_oneself_costs_the_fee() {
        let mut send = tx(TxKind::Transfer, ALICE, 1, 20, nano(1.0));
        send.to = ALICE.into();
        let (state, _) = fold(&[
            proof("p", ALICE, 10, nano(2.0)),
            Event::Tx { id: "t", tx: &send },
        ]);
        assert_eq!(state.account(ALICE).unwrap().balance, nano(1.95));
        assert_eq!(state.circulating_supply(), nano(1.95));
    }

    #[test]
    fn stake_unlocks_only_when_its_lock_has_passed() {
        let mut stake = tx(TxKind::Stake, ALICE, 1, 20, nano(4.0));
        stake.lock_until_ms = 1000;
        let early = tx(TxKind::Unstake, ALICE, 2, 999, nano(1.0));
        let too_much = tx(TxKind::Unstake, ALICE, 2, 1000, nano(5.0));
        let on_time = tx(TxKind::Unstake, ALICE, 2, 1000, nano(1.0));
        let base = [
            proof("p", ALICE, 10, nano(10.0)),
            Event::Tx {
                id: "s",
                tx: &stake,
            },
        ];

        let (state, rejected) = fold(&base);
        assert!(rejected.is_empty());
        let alice = state.account(ALICE).unwrap();
        assert_eq!(
            (alice.balance, alice.stake, alice.stake_locked_until_ms),
            (nano(6.0), nano(4.0), 1000)
        );

        let (_, rejected) = fold(&[
            base[0],
            base[1],
            Event::Tx {
                id: "u",
                tx: &early,
            },
        ]);
        assert_eq!(rejected[0].1, TxRejection::StakeLocked { until_ms: 1000 });
        let (_, rejected) = fold(&[
            base[0],
            base[1],
            Event::Tx {
                id: "u",
                tx: &too_much,
            },
        ]);
        assert_eq!(
            rejected[0].1,
            TxRejection::InsufficientStake {
                requested: nano(5.0),
                staked: nano(4.0)
            }
        );
        let (state, rejected) = fold(&[
            base[0],
            base[1],
            Event::Tx {
                id: "u",
                tx: &on_time,
            },
        ]);
        assert!(rejected.is_empty());
        let alice = state.account(ALICE).unwrap();
        assert_eq!(
            (alice.balance, alice.stake, alice.last_seq),
            (nano(7.0), nano(3.0), 2)
        );

        // Staking more never shortens a lock.
        let mut shorter = tx(TxKind::Stake, ALICE, 2, 30, nano(1.0));
        shorter.lock_until_ms = 500;
        let (state, _) = fold(&[
            base[0],
            base[1],
            Event::Tx {
                id: "s2",
                tx: &shorter,
            },
        ]);
        assert_eq!(state.account(ALICE).unwrap().stake_locked_until_ms, 1000);
        // Staking more than the balance is an overdraft.
        let greedy = tx(TxKind::Stake, ALICE, 2, 30, nano(7.0));
        let (_, rejected) = fold(&[
            base[0],
            base[1],
            Event::Tx {
                id: "s2",
                tx: &greedy,
            },
        ]);
        assert_eq!(
            rejected[0].1,
            TxRejection::Overdraft {
                needed: nano(7.0),
                balance: nano(6.0)
            }
        );
    }

    #[test]
    fn the_stake_multiplier_applies_from_the_next_epoch() {
        let stake = tx(TxKind::Stake, ALICE, 1, 20, nano(1000.0));
        let next_epoch = uncapped().epoch_s * 1000;
        let (state, _) = fold(&[
            proof("before", ALICE, 10, nano(1000.0)),
            Event::Tx {
                id: "s",
                tx: &stake,
            },
            proof("same epoch", ALICE, 30, nano(1.0)),
            proof("next epoch", ALICE, next_epoch, nano(1.0)),
        ]);
        let alice = state.account(ALICE).unwrap();
        // 1000 staked gives ×1.1 (rewards::stake_multiplier), from the epoch after the stake.
        assert_eq!(alice.total_earned, nano(1000.0) + nano(1.0) + nano(1.1));
        assert_eq!(alice.balance, nano(2.1));
        assert_eq!(alice.stake, nano(1000.0));
    }

    #[test]
    fn an_uncredited_proof_counts_nothing() {
        let pending = Event::Proof {
            id: "p",
            node_id: ALICE,
            timestamp_ms: 10,
            base_reward: nano(5.0),
            credited: false,
        };
        let mut state = LedgerState::default();
        assert_eq!(apply_one(&mut state, pending, &uncapped()), Ok(0));
        assert_eq!(state, LedgerState::default());
    }

    #[test]
    fn the_per_proof_cap_holds_in_the_fold() {
        let (state, _) = fold(&[]);
        assert_eq!(state, LedgerState::default());
        let (state, _) = replay(
            &mut [proof("p", ALICE, 10, nano(500.0))],
            &RewardSchedule::default(),
        );
        assert_eq!(state.total_minted(), nano(100.0));
    }

    #[test]
    fn huge_amounts_saturate_or_are_refused_without_overflow() {
        let schedule = uncapped();
        let mut events = Vec::new();
        let ids: Vec<String> = (0..40).map(|i| format!("p{i:02}")).collect();
        for (i, id) in ids.iter().enumerate() {
            events.push(proof(id, ALICE, i as u64, Nano::MAX));
        }
        // amount + fee overflows u64: an overdraft, not a wrap-around.
        let mut send = tx(TxKind::Transfer, ALICE, 1, 100, Nano::MAX);
        send.fee = burn_fee(Nano::MAX);
        let mut stake = tx(TxKind::Stake, ALICE, 1, 101, Nano::MAX / 2);
        stake.lock_until_ms = u64::MAX;
        let unstake = tx(TxKind::Unstake, ALICE, 2, u64::MAX, Nano::MAX / 2);
        let mut last = tx(TxKind::Stake, ALICE, u64::MAX, 103, 0);
        last.lock_until_ms = 0;
        events.push(Event::Tx {
            id: "t1",
            tx: &send,
        });
        events.push(Event::Tx {
            id: "t2",
            tx: &stake,
        });
        events.push(Event::Tx {
            id: "t3",
            tx: &unstake,
        });
        events.push(Event::Tx {
            id: "t4",
            tx: &last,
        });
        let (state, rejected) = replay(&mut events, &schedule);
        let alice = state.account(ALICE).unwrap();
        // 40 claims of 10⁹ NEURO overflow a u64 together: scaled to the (saturated) emission.
        assert_eq!(state.total_minted(), Nano::MAX);
        assert_eq!(alice.total_earned, Nano::MAX - state.total_burned());
        assert!(state.total_burned() < 40, "{}", state.total_burned());
        assert_eq!(alice.proof_count, 40);
        assert_eq!(alice.stake, 0);
        assert_eq!(alice.last_seq, 2);
        let kinds: Vec<&str> = rejected.iter().map(|(_, r)| r.kind()).collect();
        assert_eq!(kinds, ["overdraft", "bad_sequence"]);

        // A sender whose last sequence number is u64::MAX can send nothing more, without panicking.
        let mut maxed = LedgerState::default();
        maxed.accounts.insert(
            ALICE.into(),
            Account {
                last_seq: u64::MAX,
                balance: Nano::MAX,
                ..Account::default()
            },
        );
        let after = tx(TxKind::Transfer, ALICE, u64::MAX, 1, 1);
        assert!(matches!(
            apply_one(
                &mut maxed,
                Event::Tx {
                    id: "t",
                    tx: &after
                },
                &schedule
            ),
            Err(TxRejection::BadSequence { .. })
        ));
        // Crediting a full recipient saturates.
        let mut full = LedgerState::default();
        full.accounts.insert(
            BOB.into(),
            Account {
                balance: Nano::MAX,
                ..Account::default()
            },
        );
        full.accounts.insert(
            ALICE.into(),
            Account {
                balance: nano(10.0),
                ..Account::default()
            },
        );
        let send = tx(TxKind::Transfer, ALICE, 1, 1, nano(1.0));
        assert_eq!(
            apply_one(&mut full, Event::Tx { id: "t", tx: &send }, &schedule),
            Ok(nano(1.0))
        );
        assert_eq!(full.account(BOB).unwrap().balance, Nano::MAX);
    }

    /// `identities` nodes, each with `per_identity` proofs of 100 NEURO (the cap) in one epoch.
    fn flood(identities: usize, per_identity: usize) -> LedgerState {
        let names: Vec<String> = (0..identities).map(|i| format!("sybil{i:04}")).collect();
        let ids: Vec<String> = (0..identities * per_identity)
            .map(|i| format!("p{i:07}"))
            .collect();
        let mut events: Vec<Event<'_>> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| proof(id, &names[i % identities], 1000 + i as u64, nano(100.0)))
            .collect();
        let (state, rejected) = replay(&mut events, &RewardSchedule::default());
        assert!(rejected.is_empty());
        state
    }

    #[test]
    fn one_or_a_thousand_identities_mint_the_same_in_one_epoch() {
        let schedule = RewardSchedule::default();
        let emission = schedule.emission_per_epoch_nano();
        assert_eq!(emission, nano(1000.0));
        // 30 capped proofs claim 3000 NEURO, three times the epoch's emission.
        let one = flood(1, 30);
        let thousand = flood(1000, 30);
        for state in [&one, &thousand] {
            assert_eq!(state.total_minted(), emission);
            let held: Nano = state.accounts().values().map(|a| a.balance).sum();
            assert_eq!(held, state.circulating_supply());
            assert!(held <= emission);
        }
        // Every proof is paid a third of its claim, rounded down; the remainders are burned.
        let alone = one.account("sybil0000").unwrap();
        assert_eq!(alone.balance, 30 * 33_333_333_333);
        assert_eq!(one.total_burned(), emission - 30 * 33_333_333_333);
        // A thousand identities share the same 1000 NEURO: one NEURO each, less rounding.
        assert_eq!(thousand.accounts().len(), 1000);
        for account in thousand.accounts().values() {
            assert_eq!(account.balance, 30 * 33_333_333);
            assert_eq!(account.proof_count, 30);
        }
        assert_eq!(thousand.total_burned(), emission - 30_000 * 33_333_333);
    }

    #[test]
    fn an_epoch_under_its_emission_is_paid_in_full() {
        let (state, _) = replay(
            &mut [
                proof("a", ALICE, 10, nano(100.0)),
                proof("b", BOB, 20, nano(400.0)),
            ],
            &RewardSchedule::default(),
        );
        assert_eq!(state.account(ALICE).unwrap().balance, nano(100.0));
        assert_eq!(state.account(BOB).unwrap().balance, nano(100.0)); // the per-proof cap
        assert_eq!(
            (state.total_minted(), state.total_burned()),
            (nano(200.0), 0)
        );
    }

    #[test]
    fn each_epoch_has_its_own_emission_and_shares_it_pro_rata() {
        let schedule = RewardSchedule {
            emission_per_epoch: 10.0,
            ..uncapped()
        };
        let epoch_ms = schedule.epoch_s * 1000;
        let events = [
            // Epoch 0 claims 30 for 10: a third each.
            proof("a", ALICE, 10, nano(6.0)),
            proof("b", BOB, 20, nano(24.0)),
            // Epoch 1 claims 5: paid in full.
            proof("c", ALICE, epoch_ms, nano(5.0)),
            // Epoch 2 claims exactly its emission.
            proof("d", BOB, 2 * epoch_ms + 5, nano(10.0)),
        ];
        let (state, _) = replay(&mut events.to_vec(), &schedule);
        assert_eq!(state.account(ALICE).unwrap().balance, nano(2.0) + nano(5.0));
        assert_eq!(state.account(BOB).unwrap().balance, nano(8.0) + nano(10.0));
        assert_eq!(state.total_minted(), nano(25.0));
        assert_eq!(state.total_burned(), 0);
    }

    #[test]
    fn a_transfer_spends_the_scaled_credit_not_the_claim() {
        let schedule = RewardSchedule {
            emission_per_epoch: 10.0,
            ..uncapped()
        };
        // Alice claims 20 but the epoch pays 10: a transfer of 12 later in the epoch overdraws.
        let send = tx(TxKind::Transfer, ALICE, 1, 30, nano(12.0));
        let (state, rejected) = replay(
            &mut [
                proof("a", ALICE, 10, nano(20.0)),
                Event::Tx { id: "t", tx: &send },
            ],
            &schedule,
        );
        assert_eq!(
            rejected,
            vec![(
                "t".to_owned(),
                TxRejection::Overdraft {
                    needed: nano(12.6),
                    balance: nano(10.0)
                }
            )]
        );
        assert_eq!(state.account(ALICE).unwrap().balance, nano(10.0));
    }

    #[test]
    fn with_the_emission_bound_every_permutation_still_gives_the_same_state() {
        let schedule = RewardSchedule {
            epoch_s: 1,
            emission_per_epoch: 3.0,
            ..uncapped()
        };
        let mut rng = SplitMix(11);
        let nodes = [ALICE, BOB, "carol"];
        let ids: Vec<String> = (0..80).map(|i| format!("e{i:02}")).collect();
        let transactions: Vec<Transaction> = (1..=20)
            .map(|seq| {
                let mut t = tx(TxKind::Transfer, nodes[seq as usize % 3], seq / 3 + 1, 0, 0);
                t.timestamp_ms = rng.next() % 4000;
                t.amount = rng.next() % nano(1.0);
                t.fee = burn_fee(t.amount);
                t.to = nodes[(seq as usize + 1) % 3].into();
                t
            })
            .collect();
        let mut events: Vec<Event<'_>> = transactions
            .iter()
            .zip(&ids)
            .map(|(tx, id)| Event::Tx { id, tx })
            .collect();
        for (i, id) in ids.iter().enumerate().skip(20) {
            events.push(Event::Proof {
                id,
                node_id: nodes[i % 3],
                // Four epochs of one second, some over their emission.
                timestamp_ms: rng.next() % 4000,
                base_reward: rng.next() % nano(1.5),
                credited: true,
            });
        }
        let reference = replay(&mut events.clone(), &schedule);
        let claimed: Nano = events
            .iter()
            .map(|event| match *event {
                Event::Proof { base_reward, .. } => base_reward,
                Event::Tx { .. } => 0,
            })
            .sum();
        assert!(
            reference.0.total_minted() < claimed,
            "some epoch must be scaled"
        );
        for _ in 0..50 {
            rng.shuffle(&mut events);
            assert_eq!(replay(&mut events.clone(), &schedule), reference);
        }
        // Folding any of the last epochs again from its returned base gives the same state.
        let mut state = LedgerState::default();
        let bases = state
            .apply_sorted(&mut events.clone(), &schedule, 3, |_, _| {})
            .bases;
        assert_eq!(bases.len(), 3);
        assert!(bases.windows(2).all(|pair| pair[0].0 < pair[1].0));
        for (epoch, base) in bases {
            let mut since: Vec<Event<'_>> = events
                .iter()
                .copied()
                .filter(|e| schedule.epoch_of(e.timestamp_ms()) >= epoch)
                .collect();
            let mut refolded = base;
            refolded.apply_sorted(&mut since, &schedule, 0, |_, _| {});
            assert_eq!(refolded, reference.0);
        }

        // Extending the newest epoch at its end gives what folding everything gives, or is
        // refused (changing nothing) when the events would take the epoch over its emission,
        // begin another epoch or sort before its last event.
        sort_events(&mut events);
        let (mut extended, mut refused) = (0, 0);
        for k in 1..events.len() {
            for len in 1..=3.min(events.len() - k) {
                let mut state = LedgerState::default();
                let folded = state.apply_sorted(&mut events[..k].to_vec(), &schedule, 1, |_, _| {});
                let (head, (_, base)) = (folded.head.unwrap(), &folded.bases[0]);
                let mut tail = events[k..k + len].to_vec();
                let before = state.clone();
                let mut outcomes = Vec::new();
                match state.extend_epoch(base, &head, &mut tail, &schedule, |e, o| {
                    outcomes.push((e.id().to_owned(), o))
                }) {
                    Some(new_head) => {
                        extended += 1;
                        let mut whole = LedgerState::default();
                        let mut expected = Vec::new();
                        let refolded = whole.apply_sorted(
                            &mut events[..k + len].to_vec(),
                            &schedule,
                            0,
                            |e, o| expected.push((e.id().to_owned(), o)),
                        );
                        assert_eq!(state, whole, "extending {k}..{}", k + len);
                        assert_eq!(Some(new_head), refolded.head);
                        assert_eq!(outcomes[..], expected[k..]);
                    }
                    None => {
                        refused += 1;
                        assert_eq!(state, before);
                        assert!(outcomes.is_empty());
                    }
                }
            }
        }
        assert!(
            extended > 20 && refused > 20,
            "{extended} extended, {refused} refused"
        );
        // An event that sorts before the epoch's last one is refused.
        let mut state = LedgerState::default();
        let last = events.len() - 1;
        let folded = state.apply_sorted(&mut events[..last].to_vec(), &schedule, 1, |_, _| {});
        let mut early = [events[last - 1]];
        let head = folded.head.unwrap();
        assert!(
            state
                .extend_epoch(&folded.bases[0].1, &head, &mut early, &schedule, |_, _| {})
                .is_none()
        );
    }

    #[test]
    fn events_sort_by_time_then_id() {
        let send = tx(TxKind::Transfer, ALICE, 1, 10, 1);
        let mut events = [
            proof("b", ALICE, 10, 1),
            Event::Tx { id: "a", tx: &send },
            proof("z", ALICE, 5, 1),
        ];
        sort_events(&mut events);
        let ids: Vec<&str> = events.iter().map(Event::id).collect();
        assert_eq!(ids, ["z", "a", "b"]);
    }
}
