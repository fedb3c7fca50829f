//! When a node without any peer dials its seed peers again. Nodes started together (a devnet, an
//! operator's script, a test) often dial a seed before it listens: waiting three heartbeat
//! intervals (30 s at the defaults) for the next try left such a node alone, and rounds closed
//! without it. An isolated node now tries again after one second, then backs off, doubling, up to
//! `cap`; once connected, a later isolation starts again from one second.

use std::time::{Duration, Instant};

/// The first retry after isolation.
pub const FIRST_REDIAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct SeedRedial {
    backoff: Duration,
    next: Instant,
    cap: Duration,
}

impl SeedRedial {
    /// The seeds were dialled at `now`; retries back off up to `cap`.
    pub fn new(now: Instant, cap: Duration) -> Self {
        Self {
            backoff: FIRST_REDIAL,
            next: now + FIRST_REDIAL,
            cap: cap.max(FIRST_REDIAL),
        }
    }

    /// Whether to dial the seeds at `now`; `isolated`: no peer is connected.
    pub fn due(&mut self, now: Instant, isolated: bool) -> bool {
        if !isolated {
            *self = Self::new(now, self.cap);
            return false;
        }
        if now < self.next {
            return false;
        }
        self.backoff = (self.backoff * 2).min(self.cap);
        self.next = now + self.backoff;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seconds after `start` at which an isolated node dials, checked every half second.
    fn dials(redial: &mut SeedRedial, start: Instant, until_s: u64) -> Vec<f64> {
        (1..=until_s * 2)
            .map(|half| start + Duration::from_millis(500 * half))
            .filter(|&now| redial.due(now, true))
            .map(|now| (now - start).as_secs_f64())
            .collect()
    }

    #[test]
    fn an_isolated_node_redials_after_a_second_then_backs_off_to_the_cap() {
        let start = Instant::now();
        let mut redial = SeedRedial::new(start, Duration::from_secs(6));
        assert_eq!(
            dials(&mut redial, start, 30),
            [1.0, 3.0, 7.0, 13.0, 19.0, 25.0]
        );
    }

    #[test]
    fn a_connected_node_does_not_redial_and_starts_over_once_alone() {
        let start = Instant::now();
        let mut redial = SeedRedial::new(start, Duration::from_secs(30));
        assert_eq!(dials(&mut redial, start, 8), [1.0, 3.0, 7.0]);
        let connected = start + Duration::from_secs(9);
        assert!(!redial.due(connected, false));
        assert!(!redial.due(connected + Duration::from_millis(500), true));
        assert!(redial.due(connected + FIRST_REDIAL, true));
    }
}
