//! Chaos with the shipped round settings (quorum, straggler grace, the 120 s round deadline; only
//! `--diloco-steps` and the harness's quick heartbeat are set): four nano nodes on loopback at
//! H = 10; one joins late, one is paused (SIGSTOP) for longer than the round deadline and
//! resumed (a request sent to it meanwhile must be answered once it resumes), one is killed
//! mid-round and restarted from its state dir; then all are restarted one by one at H = 60. The
//! network must end on one θ₀ with every node taking part in its rounds, nobody banned or
//! rate-limited, no proof credited by one node and refused by another, and identical balances over
//! what was made once the network was whole again (a node that was away gets what it missed by
//! history sync once those epochs are checkpointed, an hour and seven minutes at the shipped epoch
//! length: after this test; tests/checkpoints.rs covers that).
//!
//! It found: self-reputation, the 0.67 quorum of 3, newcomers waited for beyond the round's
//! places, a resumed node banning its peers, a resumed node's timers firing every tick missed
//! while it was stopped at once (52 heartbeats in a burst, which its peers banned as a flood),
//! slow-peer penalties and relayed old heartbeats banning honest nodes, training proofs of rounds
//! a node healed over pending for ever, uptime settled differently by a node that slept, and
//! witnesses that stopped restating an uptime proof as soon as its claimant stopped re-gossiping
//! it (the resumed node, which got the proof from that last re-gossip, heard one witness of two
//! and refused what the others credited), and actix-http answering 408 to requests sent to a node
//! while it was stopped (its deadlines came from an instant cached before the stop: patches/).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const INNER_STEPS: &str = "10";
/// The round length the nodes are restarted with, one by one, at the end.
const LONG_INNER_STEPS: &str = "60";
/// The shipped `diloco.round_deadline_s`.
const ROUND_DEADLINE: Duration = Duration::from_secs(120);

fn round_of(node: &Node) -> u64 {
    outer_state(node).0
}

fn participants(node: &Node) -> u64 {
    diloco(node)["last_round"]["participants"]
        .as_u64()
        .unwrap_or(0)
}

fn signal(node: &Node, signal: &str) {
    let pid = node.pid().expect("the node runs").to_string();
    let status = Command::new("kill").args([signal, &pid]).status().unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// Peers `node` banned or rate-limited, with why: an honest network has none.
fn offences(node: &Node) -> Vec<String> {
    let peers = node.get("/api/peers");
    peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["banned"] == true || p["rejections"]["rate_limited"].as_u64().unwrap_or(0) > 0
        })
        .map(|p| format!("{} {}", p["node_id"], p["last_rejection"]))
        .collect()
}

/// Waits until every node is at round ≥ `at_least` and its last round had every node of
/// `nodes` in it, all on one θ₀.
fn wait_for_one_group(nodes: &[Node], at_least: u64, what: &str, timeout: Duration) {
    let everyone = nodes.len() as u64;
    let start = std::time::Instant::now();
    loop {
        let states: Vec<(u64, String)> = nodes.iter().map(outer_state).collect();
        if states.windows(2).all(|w| w[0] == w[1])
            && states[0].0 >= at_least
            && nodes.iter().all(|n| participants(n) == everyone)
        {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}; the nodes:\n{}",
            nodes
                .iter()
                .map(|n| format!("{:#}\n{}", diloco(n), n.log_tail()))
                .collect::<Vec<_>>()
                .join("\n-----\n")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn four_nodes_with_default_round_settings_ride_out_a_late_join_a_pause_and_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let args = |i: usize, steps: &str| {
        vec![
            "--diloco-steps".to_string(),
            steps.to_string(),
            "--token".to_string(),
            fixed_token(i),
        ]
    };
    let mut nodes = start_cluster(dir.path(), 3, |i| args(i, INNER_STEPS), |_| Vec::new());
    let start_seeded = |i: usize, steps: &str, seed: &str| {
        let mut flags = args(i, steps);
        flags.extend(["--seed-peers".to_string(), seed.to_string()]);
        start_owned(&dir.path().join(format!("n{i}")), &flags, &[])
    };
    let seed = nodes[0].p2p_addr();
    let start = |i: usize| start_seeded(i, INNER_STEPS, &seed);
    wait_for_one_group(
        &nodes,
        2,
        "3 nodes to train as one group",
        Duration::from_secs(120),
    );

    // A late joiner heals onto the group's θ₀ and takes part.
    nodes.push(start(3));
    let joined_at = round_of(&nodes[0]);
    wait_for_one_group(
        &nodes,
        joined_at + 2,
        "the late joiner to take part",
        Duration::from_secs(240),
    );

    // A partition: node 1 stops answering for longer than a round's deadline. The others go on
    // without it (it is dropped after 3 silent heartbeats).
    signal(&nodes[1], "-STOP");
    let paused_at = round_of(&nodes[0]);
    // A dashboard's request made while the node sleeps is answered once it wakes.
    let asked_asleep = {
        let url = nodes[1].url("/api/diloco");
        std::thread::spawn(move || {
            let agent = ureq::Agent::config_builder()
                .timeout_global(Some(ROUND_DEADLINE + Duration::from_secs(60)))
                .build()
                .new_agent();
            agent.get(&url).call().map(|r| r.status().as_u16())
        })
    };
    std::thread::sleep(ROUND_DEADLINE + Duration::from_secs(10));
    let others = [&nodes[0], &nodes[2], &nodes[3]];
    let went_on = others.iter().map(|n| round_of(n)).min().unwrap();
    signal(&nodes[1], "-CONT");
    match asked_asleep.join().unwrap() {
        Ok(200) => {}
        other => panic!("GET /api/diloco sent while node 1 was paused: {other:?}"),
    }
    assert!(
        went_on >= paused_at + 2,
        "the 3 others stalled while node 1 was paused: round {paused_at} → {went_on}"
    );
    wait_for_one_group(
        &nodes,
        went_on + 2,
        "the resumed node to heal and take part",
        Duration::from_secs(180),
    );

    // A crash mid-round: node 2 is killed and restarted from its state dir.
    let killed_at = round_of(&nodes[2]);
    drop(nodes.remove(2));
    std::thread::sleep(Duration::from_secs(5));
    nodes.insert(2, start(2));
    wait_for_one_group(
        &nodes,
        killed_at + 3,
        "the restarted node to take part again",
        Duration::from_secs(180),
    );

    // A rolling restart to a long round, as an operator changing the config does it: each node
    // in turn stops (SIGTERM), starts again from its state dir seeded with the running ones, and
    // is connected to them again before the next one goes.
    for i in 0..nodes.len() {
        let seeds: Vec<String> = (0..nodes.len())
            .filter(|&j| j != i)
            .map(|j| nodes[j].p2p_addr())
            .collect();
        let status = nodes.remove(i).terminate();
        assert!(status.success(), "node {i} exited with {status} on SIGTERM");
        nodes.insert(i, start_seeded(i, LONG_INNER_STEPS, &seeds.join(",")));
        nodes[i].wait_for(
            "the restarted node to connect to the others",
            Duration::from_secs(60),
            |n| n.get("/api/network")["connected_peers"].as_u64() >= Some(3),
        );
    }
    let restarted_at = nodes.iter().map(round_of).max().unwrap();
    wait_for_one_group(
        &nodes,
        restarted_at + 2,
        "the group to form again with H = 60",
        Duration::from_secs(240),
    );
    let whole_again_ms = neuroshard::net::wire::unix_ms();
    wait_for_one_group(
        &nodes,
        restarted_at + 4,
        "two more rounds with H = 60",
        Duration::from_secs(240),
    );

    for node in &nodes {
        let offences = offences(node);
        assert!(
            offences.is_empty(),
            "{} blamed honest peers: {offences:?}",
            node.port
        );
    }
    // A node misses the proofs and verdicts made while it is away until their epoch's checkpoint
    // (after this test); what the whole network made since must agree, and nothing conflicts.
    agreed_balances_since(&nodes, whole_again_ms, || {
        nodes
            .iter()
            .map(|n| format!("{:#}", diloco(n)))
            .collect::<Vec<_>>()
            .join("\n")
    });
}
