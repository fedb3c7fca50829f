//! When a DiLoCo round closes. A pure function of the clock and the round's progress, so the rule
//! is tested without sockets or sleeps; its reason is what the logs and /api/diloco show.

use std::time::{Duration, Instant};

/// The `[diloco]` settings that govern closing a round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundOptions {
    /// Contributions (this node's included) a round needs before the deadline.
    pub min_peers: usize,
    /// Fraction of the expected contributors a round needs before the deadline.
    pub quorum_fraction: f64,
    /// How long after this node's own delta is ready the round waits for the others.
    pub deadline: Duration,
}

/// Where the current round stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundProgress {
    /// When this node's own delta was ready (None: still training).
    pub own_ready_at: Option<Instant>,
    /// Valid deltas in hand, this node's included.
    pub contributions: usize,
    /// Deltas announced for this round and θ₀ but not fetched yet (or still being fetched).
    pub pending: usize,
    /// Trainers expected in this round: this node plus the live peers at this round.
    pub expected: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RoundDecision {
    Wait(String),
    Close(String),
}

/// Contributions needed to close before the deadline.
pub fn quorum(progress: &RoundProgress, options: &RoundOptions) -> usize {
    let by_fraction = (options.quorum_fraction * progress.expected as f64).ceil() as usize;
    options.min_peers.max(by_fraction).max(1)
}

/// Close when the quorum is in hand and nothing announced is still in flight, or at the deadline
/// with whatever arrived; never before this node's own delta is ready.
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
    if have >= needed && progress.pending == 0 {
        return RoundDecision::Close(format!(
            "quorum: {have} contribution(s), {needed} needed of {} expected",
            progress.expected
        ));
    }
    if waited >= options.deadline {
        return RoundDecision::Close(format!(
            "deadline: {have} contribution(s) after {:.1} s ({needed} needed, {} still in flight)",
            waited.as_secs_f64(),
            progress.pending
        ));
    }
    RoundDecision::Wait(format!(
        "{have} of {needed} contribution(s), {} in flight; deadline in {:.1} s",
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
    };

    fn progress(
        ready: Option<Instant>,
        contributions: usize,
        pending: usize,
        expected: usize,
    ) -> RoundProgress {
        RoundProgress {
            own_ready_at: ready,
            contributions,
            pending,
            expected,
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
    fn closes_at_quorum_once_nothing_is_in_flight() {
        let t0 = Instant::now();
        // 4 expected, 0.75 → 3 needed.
        assert!(!closes(round_decision(
            t0,
            &progress(Some(t0), 2, 0, 4),
            &OPTIONS
        )));
        assert!(!closes(round_decision(
            t0,
            &progress(Some(t0), 3, 1, 4),
            &OPTIONS
        )));
        let RoundDecision::Close(reason) =
            round_decision(t0, &progress(Some(t0), 3, 0, 4), &OPTIONS)
        else {
            panic!("should close")
        };
        assert!(
            reason.contains("3 contribution(s), 3 needed of 4"),
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
        assert!(
            reason.starts_with("deadline: 1 contribution(s)"),
            "{reason}"
        );
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
}
