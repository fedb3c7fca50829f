//! What admission and the Sybil-bounded decisions cost (issue 13): per message, checking a
//! peer's membership certificate in full (ECDSA) and as the peer table does it (cached by the
//! certificate's hash, holder and expiry checked each time), and the bytes a certificate adds to
//! a heartbeat; per round, weighing the peers, the heal decision and settling verdicts. The
//! baseline, measured in the same run, is what every heartbeat already costs: opening the sealed
//! gossip message (signature check and JSON parse).
//!
//!   cargo bench --bench admission -- [--iterations 2000]

mod common;
use common::arg;

use std::collections::HashSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use neuroshard::admission::{Certificate, Genesis, Policy, verify};
use neuroshard::crypto::Identity;
use neuroshard::diloco::heal::{OwnState, PeerOuterState, heal_decision};
use neuroshard::diloco::weight::{Reputation, Standing, WeightRule, weights};
use neuroshard::ledger::rewards::RewardSchedule;
use neuroshard::ledger::settle::{SignedVerdicts, settle};
use neuroshard::net::wire::{self, Heartbeat, RoundVerdictsWire, unix_ms};

/// Median time of one call of `f` over `runs` runs of `per_run` calls each.
fn time(runs: usize, per_run: usize, mut f: impl FnMut()) -> Duration {
    let mut samples: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_run {
                f();
            }
            start.elapsed() / per_run as u32
        })
        .collect();
    samples.sort();
    samples[runs / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let iterations = arg("--iterations", 2000);
    let per_run = (iterations / 10).max(1);
    let authority = Identity::from_token(&format!("{:064x}", 77)).unwrap();
    let now_s = unix_ms() / 1000;
    let genesis = Genesis::new(
        "benchnet",
        "nano",
        Policy::Permissioned,
        &[authority.public],
        1,
        RewardSchedule::default(),
        now_s,
    )
    .unwrap();
    let node = Identity::from_token(&format!("{:064x}", 5)).unwrap();
    let mut certificate = Certificate::unsigned(
        &genesis,
        &node.node_id,
        vec!["trainer".into()],
        0,
        now_s + 86_400,
    );
    certificate.sign(&authority);
    let heartbeat = |membership: Option<Certificate>| Heartbeat {
        node_id: node.node_id.clone(),
        role: "trainer".into(),
        global_step: 12_345,
        outer_round: 67,
        theta0_hash: "ab".repeat(32),
        momentum_hash: "cd".repeat(32),
        tokens_per_sec: 1500.0,
        sent_at_ms: unix_ms(),
        membership,
    };
    let topic = "neuroshard/benchnet/heartbeat";
    let plain = wire::seal(&node, topic, &heartbeat(None));
    let with_certificate = wire::seal(&node, topic, &heartbeat(Some(certificate.clone())));
    let peer = node.peer_id();

    println!("admission cost, {iterations} calls per figure (median of 10 runs)");
    let open = time(10, per_run, || {
        black_box(wire::open::<Heartbeat>(topic, black_box(&plain), &peer).unwrap());
    });
    let open_cert = time(10, per_run, || {
        black_box(wire::open::<Heartbeat>(topic, black_box(&with_certificate), &peer).unwrap());
    });
    let full = time(10, per_run, || {
        verify(now_s, &genesis, black_box(&certificate), &node.node_id).unwrap();
    });
    let cache: HashSet<[u8; 32]> = [certificate.cache_key()].into();
    let cached = time(10, per_run, || {
        assert!(cache.contains(&black_box(&certificate).cache_key()));
        certificate.check_holder(now_s, &node.node_id).unwrap();
    });
    println!(
        "per heartbeat  baseline: open a sealed heartbeat (ECDSA + JSON)  {:8.1} µs  {} bytes",
        us(open),
        plain.len()
    );
    println!(
        "               with a certificate inside                      {:8.1} µs  {} bytes (+{} bytes, ratio {:.2})",
        us(open_cert),
        with_certificate.len(),
        with_certificate.len() - plain.len(),
        open_cert.as_secs_f64() / open.as_secs_f64()
    );
    println!(
        "               certificate check, first time (ECDSA)          {:8.1} µs  (ratio to baseline {:.2})",
        us(full),
        full.as_secs_f64() / open.as_secs_f64()
    );
    println!(
        "               certificate check, cached (hash + holder)      {:8.1} µs  (ratio to baseline {:.2})",
        us(cached),
        cached.as_secs_f64() / open.as_secs_f64()
    );

    for n in [20usize, 1000] {
        let standings: Vec<Standing> = (0..n)
            .map(|i| Standing {
                node_id: format!("{i:032x}"),
                admitted: i % 2 == 0,
            })
            .collect();
        let mut reputation = Reputation::default();
        for _ in 0..3 {
            reputation.record_kept(standings.iter().take(n / 4).map(|s| s.node_id.as_str()));
        }
        let weigh = time(10, per_run.min(200), || {
            black_box(weights(
                WeightRule::Open,
                &reputation,
                black_box(&standings),
            ));
        });
        let peers: Vec<PeerOuterState> = (0..n)
            .map(|i| PeerOuterState {
                peer_id: format!("p{i}"),
                round: 40 + (i % 3) as u64,
                theta0_hash: format!("{:064x}", i % 5),
                momentum_hash: String::new(),
                weight: if i % 2 == 0 { 1.0 } else { 0.0 },
            })
            .collect();
        let own = OwnState {
            round: 41,
            theta0_hash: "h",
            weight: 1.0,
        };
        let t0 = Instant::now();
        let heal = time(10, per_run.min(200), || {
            black_box(heal_decision(t0, own, black_box(&peers), Some(t0)));
        });
        let sets: Vec<SignedVerdicts> = (0..n.min(64))
            .map(|i| SignedVerdicts {
                signer: format!("{i:032x}"),
                wire: RoundVerdictsWire {
                    round: 41,
                    theta0_after: "T".into(),
                    verdicts: (0..16)
                        .map(|j| (format!("{j:032x}"), format!("{j:064x}"), (i + j) % 7 != 0))
                        .collect(),
                },
            })
            .collect();
        let settling = time(10, per_run.min(200), || {
            black_box(settle(black_box(&sets), "T", |_| 1.0));
        });
        println!(
            "per round, {n:4} peers: weights {:7.1} µs, heal decision {:7.1} µs, settle {} verdict sets {:7.1} µs (baseline: {:.1} heartbeats' worth)",
            us(weigh),
            us(heal),
            sets.len(),
            us(settling),
            (weigh + heal + settling).as_secs_f64() / open.as_secs_f64()
        );
    }
}
