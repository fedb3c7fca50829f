//! The dashboard's memory: training curves, earnings and recent DiLoCo verdicts over time, sampled
//! from the published status once a second. Pure: the caller passes the clock and the readings.

use std::collections::VecDeque;

use serde::Serialize;

use crate::diloco::round::RoundSummary;

/// One point of the curves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the node started.
    pub t: f64,
    pub step: u64,
    pub tokens_seen: u64,
    pub loss: Option<f32>,
    pub val_loss: Option<f32>,
    pub tokens_per_sec: f64,
    /// NEURO balance.
    pub balance: f64,
}

impl Sample {
    /// Whether `self` says something the previous point did not (an idle node adds no points).
    fn differs_from(&self, previous: &Sample) -> bool {
        self.step != previous.step
            || self.val_loss != previous.val_loss
            || self.balance != previous.balance
    }
}

/// What one observation added: the dashboard streams exactly this to its open pages.
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct Additions {
    pub sample: Option<Sample>,
    pub round: Option<RoundSummary>,
}

/// Bounded history. When the curve is full, every other point is dropped, so a long run keeps its
/// whole shape at half the resolution instead of forgetting its beginning.
#[derive(Debug, Serialize)]
pub struct Timeline {
    samples: Vec<Sample>,
    rounds: VecDeque<RoundSummary>,
    #[serde(skip)]
    max_samples: usize,
    #[serde(skip)]
    max_rounds: usize,
}

impl Timeline {
    pub fn new(max_samples: usize, max_rounds: usize) -> Self {
        assert!(max_samples >= 2 && max_rounds >= 1);
        Self {
            samples: Vec::new(),
            rounds: VecDeque::new(),
            max_samples,
            max_rounds,
        }
    }

    /// Records `sample` if it differs from the last point, and `round` if it is newer than the
    /// last recorded one.
    pub fn observe(&mut self, sample: Sample, round: Option<&RoundSummary>) -> Additions {
        let mut added = Additions::default();
        if self
            .samples
            .last()
            .is_none_or(|last| sample.differs_from(last))
        {
            if self.samples.len() == self.max_samples {
                self.samples = self.samples.iter().copied().step_by(2).collect();
            }
            self.samples.push(sample);
            added.sample = Some(sample);
        }
        if let Some(round) = round
            && self
                .rounds
                .back()
                .is_none_or(|last| round.round > last.round)
        {
            if self.rounds.len() == self.max_rounds {
                self.rounds.pop_front();
            }
            self.rounds.push_back(round.clone());
            added.round = Some(round.clone());
        }
        added
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Inner steps per second over the last `window_s` seconds of samples.
    pub fn steps_per_second(&self, window_s: f64) -> Option<f64> {
        let last = self.samples.last()?;
        let first = self
            .samples
            .iter()
            .find(|s| last.t - s.t <= window_s && s.step <= last.step)?;
        let dt = last.t - first.t;
        (dt > 0.0 && last.step > first.step).then(|| (last.step - first.step) as f64 / dt)
    }
}

/// Seconds until this node's inner steps are done and it syncs, at `steps_per_second`.
pub fn seconds_to_sync(inner_step: u64, inner_steps_total: u64, steps_per_second: f64) -> f64 {
    inner_steps_total.saturating_sub(inner_step) as f64 / steps_per_second
}

/// Bytes one node would have sent training `steps` steps with synchronous data-parallel across
/// `nodes` nodes: a ring all-reduce of the fp32 gradient every step, 2(n−1)/n · 4 bytes per parameter.
pub fn data_parallel_bytes(steps: u64, nodes: usize, params: usize) -> u64 {
    if nodes < 2 {
        return 0;
    }
    let per_step = 2.0 * (nodes - 1) as f64 / nodes as f64 * 4.0 * params as f64;
    (per_step * steps as f64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, step: u64) -> Sample {
        Sample {
            t,
            step,
            tokens_seen: step * 100,
            loss: Some(5.0),
            val_loss: None,
            tokens_per_sec: 100.0,
            balance: 0.0,
        }
    }

    fn round(n: u64) -> RoundSummary {
        RoundSummary {
            round: n,
            participants: 2,
            kept: vec!["a".into(), "b".into()],
            rejected: vec![],
            rule: "mean".into(),
            reason: "all in".into(),
            bytes_sent: 0,
            bytes_received: 0,
            sync_seconds: 0.1,
            delta_norm: Some(1.0),
            aggregate_norm: Some(0.5),
        }
    }

    #[test]
    fn an_idle_node_adds_no_points() {
        let mut timeline = Timeline::new(10, 4);
        assert!(timeline.observe(sample(0.0, 1), None).sample.is_some());
        assert_eq!(timeline.observe(sample(1.0, 1), None), Additions::default());
        assert!(timeline.observe(sample(2.0, 2), None).sample.is_some());
        let mut earned = sample(3.0, 2);
        earned.balance = 0.5;
        assert!(timeline.observe(earned, None).sample.is_some());
        assert_eq!(timeline.samples().len(), 3);
    }

    #[test]
    fn a_full_curve_halves_its_resolution_and_keeps_its_start() {
        let mut timeline = Timeline::new(4, 4);
        for step in 0..9 {
            timeline.observe(sample(step as f64, step), None);
        }
        let steps: Vec<u64> = timeline.samples().iter().map(|s| s.step).collect();
        assert!(steps.len() <= 4, "{steps:?}");
        assert_eq!(steps[0], 0);
        assert_eq!(*steps.last().unwrap(), 8);
        assert!(steps.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn each_round_is_recorded_once_and_old_ones_fall_off() {
        let mut timeline = Timeline::new(10, 2);
        assert_eq!(
            timeline.observe(sample(0.0, 0), Some(&round(1))).round,
            Some(round(1))
        );
        assert_eq!(
            timeline.observe(sample(1.0, 0), Some(&round(1))).round,
            None
        );
        timeline.observe(sample(2.0, 0), Some(&round(2)));
        timeline.observe(sample(3.0, 0), Some(&round(3)));
        let rounds: Vec<u64> = timeline.rounds.iter().map(|r| r.round).collect();
        assert_eq!(rounds, [2, 3]);
    }

    #[test]
    fn step_rate_and_time_to_sync() {
        let mut timeline = Timeline::new(100, 2);
        assert_eq!(timeline.steps_per_second(10.0), None);
        for t in 0..20 {
            timeline.observe(sample(t as f64, 5 * t), None);
        }
        assert_eq!(timeline.steps_per_second(10.0), Some(5.0));
        assert_eq!(seconds_to_sync(50, 100, 5.0), 10.0);
        assert_eq!(seconds_to_sync(100, 100, 5.0), 0.0);
    }

    #[test]
    fn data_parallel_sends_a_gradient_per_step() {
        assert_eq!(data_parallel_bytes(10, 1, 1000), 0);
        // Two nodes: each sends half the gradient twice (reduce-scatter, all-gather) = 4 bytes/param.
        assert_eq!(data_parallel_bytes(10, 2, 1000), 40_000);
        assert_eq!(data_parallel_bytes(1, 4, 1000), 6_000);
    }
}
