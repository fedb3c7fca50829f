//! DiLoCo across real nodes on 127.0.0.1: each trains H inner steps on its own data order, the
//! deltas are exchanged (encoded, announced, fetched) and combined, and every node applies the same
//! outer step, so all hold the same θ₀ after every round while the shared model learns.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{
    Node, diloco, env_of, f64_of, fixed_token, outer_state, start_cluster, start_owned,
    val_loss_at_round, wait_until,
};

/// Trainers that wait for each other: a round needs all of them (or its 60 s deadline).
fn start_trainers(dir: &std::path::Path, count: usize, inner_steps: &str) -> Vec<Node> {
    let min_peers = count.to_string();
    start_cluster(
        dir,
        count,
        |_| vec!["--diloco-steps".into(), inner_steps.into()],
        |_| {
            env_of(&[
                ("NEUROSHARD_DILOCO__MIN_PEERS", &min_peers),
                ("NEUROSHARD_DILOCO__QUORUM_FRACTION", "1.0"),
                ("NEUROSHARD_DILOCO__ROUND_DEADLINE_S", "60"),
                ("NEUROSHARD_TRAINING__EVAL_EVERY", "1000"),
            ])
        },
    )
}

#[test]
fn four_nodes_agree_on_theta0_every_round_and_learn() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_trainers(dir.path(), 4, "20");
    // θ₀ hash per round, as each node reported it while at that round.
    let mut seen: BTreeMap<u64, BTreeMap<String, String>> = BTreeMap::new();
    let start = Instant::now();
    loop {
        let states: Vec<(u64, String)> = nodes.iter().map(outer_state).collect();
        for (i, (round, hash)) in states.iter().enumerate() {
            seen.entry(*round)
                .or_default()
                .insert(format!("n{i}"), hash.clone());
        }
        if states.iter().all(|(round, _)| *round >= 5) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "5 rounds not reached in 240 s: {states:?}; log:\n{}",
            nodes[0].log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (round, hashes) in &seen {
        let distinct: std::collections::BTreeSet<&String> = hashes.values().collect();
        assert_eq!(
            distinct.len(),
            1,
            "nodes disagree on θ₀ at round {round}: {hashes:?}"
        );
    }
    assert!(
        seen.range(1..).filter(|(_, h)| h.len() >= 2).count() >= 3,
        "too few rounds observed on several nodes to compare: {seen:?}"
    );
    for node in &nodes {
        let last = node.get("/api/diloco")["last_round"].clone();
        assert_eq!(last["participants"], 4, "{last}");
        assert_eq!(
            last["kept"].as_array().unwrap().len() + last["rejected"].as_array().unwrap().len(),
            4
        );
        assert!(last["bytes_received"].as_u64().unwrap() > 0, "{last}");
    }
    // The shipped outer optimizer: its momentum warms up from 0 at round 0 to 0.7 from round 4,
    // as each node's "round closed" log line says.
    let mut momentum: BTreeMap<u64, f32> = BTreeMap::new();
    for node in &nodes {
        let closed = node.get("/api/logs?target=sync&q=outer_momentum&limit=100");
        for line in closed["lines"].as_array().unwrap() {
            let message = line["message"].as_str().unwrap();
            let field = |name: &str| neuroshard::logs::message_field(message, name);
            if let (Some(round), Some(mu)) = (field("round"), field("outer_momentum")) {
                // tracing records the f32 as an f64: back to the f32 the step used.
                momentum.insert(round.parse().unwrap(), mu.parse::<f64>().unwrap() as f32);
            }
        }
    }
    assert_eq!(
        (momentum.get(&0), momentum.get(&2), momentum.get(&4)),
        (Some(&0.0), Some(&0.35), Some(&0.7)),
        "{momentum:?}"
    );
    // The shared model learns: the validation loss after the rounds is well below the initial one.
    let stats = nodes[0].stats();
    let initial = f64_of(&stats, "initial_val_loss");
    let now = f64_of(&stats, "val_loss");
    assert!(
        now <= 0.7 * initial,
        "val_loss {now} is not 30% below the initial {initial}"
    );
}

fn round_of(node: &Node) -> u64 {
    diloco(node)["outer_step_count"].as_u64().unwrap()
}

#[test]
fn rounds_go_on_without_a_killed_node_which_heals_when_it_returns_as_does_a_late_joiner() {
    let dir = tempfile::tempdir().unwrap();
    // Rounds wait for every live trainer (a dead one stops counting once it is dropped, after
    // 3 silent heartbeats), or 8 s at most.
    let env = || {
        env_of(&[
            ("NEUROSHARD_DILOCO__MIN_PEERS", "2"),
            ("NEUROSHARD_DILOCO__QUORUM_FRACTION", "1.0"),
            ("NEUROSHARD_DILOCO__ROUND_DEADLINE_S", "8"),
            ("NEUROSHARD_DILOCO__STRAGGLER_GRACE_S", "8"),
            ("NEUROSHARD_TRAINING__EVAL_EVERY", "1000"),
        ])
    };
    let args = || vec!["--diloco-steps".to_string(), "20".to_string()];
    let mut nodes = start_cluster(dir.path(), 4, |_| args(), |_| env());
    let seed = nodes[0].p2p_addr();
    // A node (re)started later, with node 0 as its seed peer.
    let start = |name: &str| {
        let mut flags = args();
        flags.extend(["--seed-peers".to_string(), seed.clone()]);
        start_owned(&dir.path().join(name), &flags, &env())
    };
    let wait_rounds = |nodes: &[Node], at_least: u64, what: &str| {
        let refs: Vec<&Node> = nodes.iter().collect();
        wait_until(what, Duration::from_secs(120), &refs, || {
            nodes.iter().all(|n| round_of(n) >= at_least)
        });
    };
    wait_rounds(&nodes, 2, "4 nodes to reach round 2");

    // Kill one mid-run: the other three keep closing rounds.
    let killed = nodes.pop().unwrap();
    drop(killed);
    let after_kill = nodes.iter().map(round_of).max().unwrap();
    wait_rounds(&nodes, after_kill + 2, "3 nodes to go on for 2 rounds");
    let last = diloco(&nodes[0])["last_round"].clone();
    assert_eq!(last["participants"], 3, "{last}");

    // It comes back from its checkpoint, rounds behind: it heals to the majority and takes part.
    nodes.push(start("n3"));
    // And a fresh node joins at round ≥ 3: it heals too.
    nodes.push(start("n4"));
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_until(
        "the returning node and the joiner to heal and take part",
        Duration::from_secs(120),
        &refs,
        || {
            nodes[3..]
                .iter()
                .all(|n| diloco(n)["heals"].as_u64().unwrap() >= 1)
                && diloco(&nodes[0])["last_round"]["participants"] == 5
        },
    );
    // All five on one θ₀ once they are at the same round.
    wait_until(
        "all 5 to agree on θ₀",
        Duration::from_secs(60),
        &refs,
        || {
            let states: Vec<(u64, String)> = nodes.iter().map(outer_state).collect();
            states.windows(2).all(|w| w[0] == w[1])
        },
    );
    let healed = diloco(&nodes[4]);
    assert!(
        healed["last_heal"].as_str().unwrap().contains("round"),
        "{healed}"
    );
}

/// val_loss of node 0 at the end of round `rounds`, for 5 nodes (fixed identities, so the data
/// orders are the same in every run) of which node 4 may run a Byzantine attack; `pre` is the
/// `[diloco.aggregation] pre` step, `worker_momentum` its switch. Also returns the attacker's node_id and node 0's last round
/// summary.
fn five_node_run(
    rule: &str,
    pre: &str,
    attack: Option<&str>,
    worker_momentum: bool,
    rounds: u64,
) -> (f64, String, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(
        dir.path(),
        5,
        |i| {
            vec![
                "--diloco-steps".into(),
                "20".into(),
                "--token".into(),
                fixed_token(i),
            ]
        },
        |i| {
            let mut env = env_of(&[
                ("NEUROSHARD_DILOCO__MIN_PEERS", "5"),
                ("NEUROSHARD_DILOCO__QUORUM_FRACTION", "1.0"),
                ("NEUROSHARD_DILOCO__ROUND_DEADLINE_S", "60"),
                ("NEUROSHARD_DILOCO__AGGREGATION__RULE", rule),
                ("NEUROSHARD_DILOCO__AGGREGATION__PRE", pre),
                (
                    "NEUROSHARD_DILOCO__AGGREGATION__WORKER_MOMENTUM",
                    &worker_momentum.to_string(),
                ),
                ("NEUROSHARD_TRAINING__EVAL_EVERY", "1000"),
            ]);
            if let (4, Some(attack)) = (i, attack) {
                env.extend(env_of(&[("NEUROSHARD_FAULT_BYZANTINE", attack)]));
            }
            env
        },
    );
    let val = val_loss_at_round(&nodes, rounds, 20, Duration::from_secs(180));
    let attacker = nodes[4].stats()["node_id"].as_str().unwrap().to_string();
    (val, attacker, diloco(&nodes[0])["last_round"].clone())
}

#[test]
fn robust_rules_hold_against_a_sign_flipper_and_nnm_against_informed_ipm() {
    const ROUNDS: u64 = 6;
    let (clean, _, _) = five_node_run("mean", "none", None, false, ROUNDS);
    let (spoiled, _, _) = five_node_run("mean", "none", Some("sign_flip"), false, ROUNDS);
    // With worker momentum: every node sends its own Δ + μ·m, the attacker −10 × that.
    let (trimmed, attacker, trimmed_round) =
        five_node_run("trimmed_mean", "none", Some("sign_flip"), true, ROUNDS);
    let (krum, _, krum_round) = five_node_run("krum", "none", Some("sign_flip"), false, ROUNDS);
    // Nearest-neighbour mixing before Krum, against IPM: the attacker holds its delta back until
    // the four honest ones are in and sends −0.5 × their mean. The rule sees mixed inputs; the
    // verdicts still name the attacker by its own delta.
    let (mixed, ipm_attacker, mixed_round) =
        five_node_run("krum", "nnm", Some("ipm"), false, ROUNDS);
    assert_eq!(ipm_attacker, attacker, "fixed identities");
    eprintln!(
        "val_loss after {ROUNDS} rounds: clean mean {clean:.3}, attacked mean {spoiled:.3}, attacked trimmed_mean with worker momentum {trimmed:.3}, attacked krum {krum:.3}, krum after nnm against ipm {mixed:.3}"
    );
    assert!(
        mixed_round["reason"]
            .as_str()
            .unwrap()
            .contains("nnm: each of 5 inputs"),
        "{mixed_round}"
    );
    // Deltas travel as int8 by default, so Krum's distances come from the messages' codes.
    assert!(
        krum_round["reason"]
            .as_str()
            .unwrap()
            .contains("distances from the int8 codes"),
        "{krum_round}"
    );
    assert!(
        spoiled > 1.2 * clean,
        "the attack should spoil the plain mean: {spoiled} vs clean {clean}"
    );
    for (rule, loss, round) in [
        ("trimmed_mean with worker momentum", trimmed, &trimmed_round),
        ("krum", krum, &krum_round),
        ("krum after nnm (ipm)", mixed, &mixed_round),
    ] {
        assert!(
            loss <= 1.05 * clean,
            "{rule} under attack: {loss}, clean run {clean}"
        );
        let rejected: Vec<&str> = round["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            rejected.contains(&attacker.as_str()),
            "{rule} kept the attacker {attacker}: {round}"
        );
    }
}
