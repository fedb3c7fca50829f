//! When a DiLoCo round closes. A pure function of the clock and the round's progress, so the rule
//! is tested without sockets or sleeps; its reason is what the logs and /api/diloco show.
//! Everything is counted in admitted weight ([`super::weight`]), never in identities: keys are
//! free, so identities that announce a delta and withhold it cannot stall a round, and identities
//! without weight cannot make up a quorum.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::weight::EPSILON;

/// The `[diloco]` settings that govern closing a round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundOptions {
    /// Weight of contributions (this node's included) a round needs before the deadline.
    pub min_peers: usize,
    /// Fraction of the expected weight a round needs before the deadline.
    pub quorum_fraction: f64,
    /// How long after this node's own delta is ready the round waits for the others.
    pub deadline: Duration,
    /// Once the quorum is in hand, how long the rest of the expected weight is waited for
    /// (deltas still training, announced or in flight): a slow or withholding sender is cut off
    /// then, and the round closes by the quorum of the others.
    pub straggler_grace: Duration,
}

/// Where the current round stands, in weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundProgress {
    /// When this node's own delta was ready (None: still training).
    pub own_ready_at: Option<Instant>,
    /// Weight of the valid deltas in hand, this node's included.
    pub contributions: f64,
    /// Weight of deltas announced for this round and θ₀ but not fetched yet (or being fetched).
    pub pending: f64,
    /// Weight expected in this round: this node plus the live trainer peers it knows, whatever
    /// round they are at (a node ahead waits for them rather than running ahead alone).
    pub expected: f64,
    /// When the contributions in hand first reached the quorum (the caller remembers it).
    pub quorum_since: Option<Instant>,
}

/// What /api/diloco shows of the last closed round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundSummary {
    pub round: u64,
    pub participants: usize,
    pub kept: Vec<String>,
    pub rejected: Vec<String>,
    pub rule: String,
    pub reason: String,
    /// Bytes of this node's encoded delta uploaded to peers while the round was open.
    pub bytes_sent: u64,
    /// Encoded deltas fetched from peers.
    pub bytes_received: u64,
    /// From this node's delta being ready to the round's aggregate in hand: waiting for the
    /// slower peers, fetching and aggregating.
    pub sync_seconds: f64,
    /// L2 norm of the delta this node sent (with worker momentum, its Nesterov direction); None
    /// when it sent none.
    pub delta_norm: Option<f64>,
    /// L2 norm of the aggregate the outer step applied; None when the round failed. Against
    /// `delta_norm`: near 1 when the workers' deltas agree, near 1/√n when n of them share
    /// nothing (their noise averages out, and so does the step's length).
    pub aggregate_norm: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RoundDecision {
    Wait(String),
    Close(String),
}

/// Weight needed to close before the deadline.
pub fn quorum(progress: &RoundProgress, options: &RoundOptions) -> f64 {
    let by_fraction = options.quorum_fraction * progress.expected;
    (options.min_peers as f64).max(by_fraction).max(EPSILON)
}

/// Whether the contributions in hand make the quorum (the caller starts its `quorum_since` clock).
pub fn has_quorum(progress: &RoundProgress, options: &RoundOptions) -> bool {
    progress.contributions + EPSILON >= quorum(progress, options)
}

/// Close when every expected contributor's delta is in hand, or when the quorum has waited
/// `straggler_grace` for the rest, or at the deadline with whatever arrived; never before this
/// node's own delta is ready.
pub fn round_decision(
    now: Instant,
    progress: &RoundProgress,
    options: &RoundOptions,
) -> RoundDecision {
    let Some(ready_at) = progress.own_ready_at else {
        return RoundDecision::Wait("inner steps still running".into());
    };
    let needed = quorum(progress, options);
    let have = progress.contributions;
    let waited = now.saturating_duration_since(ready_at);
    if has_quorum(progress, options) {
        if progress.pending <= EPSILON && have + EPSILON >= progress.expected {
            return RoundDecision::Close(format!(
                "quorum: weight {have:.2} in, all of {:.2} expected",
                progress.expected
            ));
        }
        let since = progress.quorum_since.unwrap_or(now);
        if now.saturating_duration_since(since) >= options.straggler_grace {
            return RoundDecision::Close(format!(
                "quorum: weight {have:.2} in, {needed:.2} needed of {:.2} expected; the rest ({:.2} in flight) cut off after {:.1} s",
                progress.expected,
                progress.pending,
                options.straggler_grace.as_secs_f64()
            ));
        }
    }
    if waited >= options.deadline {
        return RoundDecision::Close(format!(
            "deadline: weight {have:.2} in after {:.1} s ({needed:.2} needed, {:.2} still in flight)",
            waited.as_secs_f64(),
            progress.pending
        ));
    }
    RoundDecision::Wait(format!(
        "weight {have:.2} of {needed:.2}, {:.2} in flight; deadline in {:.1} s",
        progress.pending,
        (options.deadline - waited).as_secs_f64()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: RoundOptions = RoundOptions {
        min_peers: 2,
        quorum_fraction: 0.75,
        deadline: Duration::from_secs(30),
        straggler_grace: Duration::from_secs(5),
    };

    fn progress(
        ready: Option<Instant>,
        contributions: usize,
        pending: usize,
        expected: usize,
    ) -> RoundProgress {
        RoundProgress {
            own_ready_at: ready,
            contributions: contributions as f64,
            pending: pending as f64,
            expected: expected as f64,
            quorum_since: ready,
        }
    }

    fn closes(decision: RoundDecision) -> bool {
        matches!(decision, RoundDecision::Close(_))
    }

    #[test]
    fn never_closes_before_the_own_delta_is_ready() {
        let now = Instant::now();
        let d = round_decision(now, &progress(None, 4, 0, 4), &OPTIONS);
        assert_eq!(d, RoundDecision::Wait("inner steps still running".into()));
    }

    #[test]
    fn closes_at_once_when_everyone_is_in_and_waits_the_grace_for_a_straggler() {
        let t0 = Instant::now();
        // 4 expected, 0.75 → 3 needed.
        assert!(!closes(round_decision(
            t0 + Duration::from_secs(10),
            &progress(Some(t0), 2, 0, 4),
            &OPTIONS
        )));
        let RoundDecision::Close(reason) =
            round_decision(t0, &progress(Some(t0), 4, 0, 4), &OPTIONS)
        else {
            panic!("everyone is in: close at once")
        };
        assert_eq!(reason, "quorum: weight 4.00 in, all of 4.00 expected");
        // The fourth is still training (not announced): the quorum waits for it, within the grace.
        let three = progress(Some(t0), 3, 0, 4);
        assert!(!closes(round_decision(
            t0 + Duration::from_secs(4),
            &three,
            &OPTIONS
        )));
        let RoundDecision::Close(reason) =
            round_decision(t0 + Duration::from_secs(5), &three, &OPTIONS)
        else {
            panic!("the grace is over")
        };
        assert!(
            reason.contains("weight 3.00 in, 3.00 needed of 4.00 expected; the rest"),
            "{reason}"
        );
    }

    #[test]
    fn min_peers_holds_a_small_network_until_the_deadline() {
        let t0 = Instant::now();
        let alone = progress(Some(t0), 1, 0, 1);
        assert!(!closes(round_decision(t0, &alone, &OPTIONS)));
        let RoundDecision::Close(reason) =
            round_decision(t0 + Duration::from_secs(30), &alone, &OPTIONS)
        else {
            panic!("the deadline closes the round")
        };
        assert!(reason.starts_with("deadline: weight 1.00 in"), "{reason}");
    }

    #[test]
    fn a_lone_node_with_min_peers_one_closes_at_once() {
        let t0 = Instant::now();
        let solo = RoundOptions {
            min_peers: 1,
            ..OPTIONS
        };
        assert!(closes(round_decision(
            t0,
            &progress(Some(t0), 1, 0, 1),
            &solo
        )));
    }

    #[test]
    fn a_dead_peer_delays_the_round_only_until_the_deadline() {
        let t0 = Instant::now();
        let all = RoundOptions {
            quorum_fraction: 1.0,
            ..OPTIONS
        };
        let three_of_four = progress(Some(t0), 3, 0, 4);
        assert!(!closes(round_decision(
            t0 + Duration::from_secs(29),
            &three_of_four,
            &all
        )));
        assert!(closes(round_decision(
            t0 + Duration::from_secs(30),
            &three_of_four,
            &all
        )));
    }

    #[test]
    fn a_withholding_sender_is_cut_off_once_the_quorum_waited_its_grace() {
        let t0 = Instant::now();
        // 4 honest in hand of 5 expected, one delta announced and withheld.
        let mut p = progress(Some(t0), 4, 1, 5);
        assert!(!closes(round_decision(
            t0 + Duration::from_secs(4),
            &p,
            &OPTIONS
        )));
        let RoundDecision::Close(reason) =
            round_decision(t0 + Duration::from_secs(5), &p, &OPTIONS)
        else {
            panic!("the quorum closes the round after the grace")
        };
        assert!(
            reason.starts_with("quorum:") && reason.contains("cut off"),
            "{reason}"
        );
        // The grace counts from when the quorum was reached, not from the own delta.
        p.quorum_since = Some(t0 + Duration::from_secs(20));
        assert!(!closes(round_decision(
            t0 + Duration::from_secs(24),
            &p,
            &OPTIONS
        )));
    }

    #[test]
    fn weightless_identities_neither_make_nor_stall_a_quorum() {
        let t0 = Instant::now();
        // 16 unadmitted identities add no expected weight and no pending weight: 4 of 4 close.
        let p = RoundProgress {
            own_ready_at: Some(t0),
            contributions: 4.0,
            pending: 0.0,
            expected: 4.0,
            quorum_since: Some(t0),
        };
        assert!(closes(round_decision(t0, &p, &OPTIONS)));
        // Newcomers' shares (1/16 each) make up one unit at most.
        let shares = RoundProgress {
            contributions: 1.0 + 16.0 / 16.0,
            expected: 5.0,
            ..p
        };
        assert!(!has_quorum(&shares, &OPTIONS));
    }
}
