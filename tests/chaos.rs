//! Chaos with the shipped round settings (quorum, straggler grace, the 120 s round deadline; only
//! `--diloco-steps 10` and the harness's quick heartbeat are set): four nano nodes on loopback;
//! one joins late, one is paused (SIGSTOP) for longer than the round deadline and resumed, one is
//! killed mid-round and restarted from its state dir. The network must end on one θ₀ with every
//! node taking part in its rounds, nobody banned or rate-limited, and identical balances.
//!
//! It found: self-reputation, the 0.67 quorum of 3, newcomers waited for beyond the round's
//! places, a resumed node banning its peers, a resumed node's timers firing every tick missed
//! while it was stopped at once (52 heartbeats in a burst, which its peers banned as a flood),
//! slow-peer penalties and relayed old heartbeats banning honest nodes, training proofs of rounds
//! a node healed over pending for ever, uptime settled differently by a node that slept, and
//! witnesses that stopped restating an uptime proof as soon as its claimant stopped re-gossiping
//! it (the resumed node, which got the proof from that last re-gossip, heard one witness of two
//! and refused what the others credited).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const INNER_STEPS: &str = "10";
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
    let args = |i: usize| {
        vec![
            "--diloco-steps".to_string(),
            INNER_STEPS.to_string(),
            "--token".to_string(),
            fixed_token(i),
        ]
    };
    let mut nodes = start_cluster(dir.path(), 3, args, |_| Vec::new());
    let seed = nodes[0].p2p_addr();
    let start = |i: usize| {
        let mut flags = args(i);
        flags.extend(["--seed-peers".to_string(), seed.clone()]);
        start_owned(&dir.path().join(format!("n{i}")), &flags, &[])
    };
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
    std::thread::sleep(ROUND_DEADLINE + Duration::from_secs(10));
    let others = [&nodes[0], &nodes[2], &nodes[3]];
    let went_on = others.iter().map(|n| round_of(n)).min().unwrap();
    signal(&nodes[1], "-CONT");
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

    for node in &nodes {
        let offences = offences(node);
        assert!(
            offences.is_empty(),
            "{} blamed honest peers: {offences:?}",
            node.port
        );
    }
    agreed_balances(&nodes, || {
        nodes
            .iter()
            .map(|n| format!("{:#}", diloco(n)))
            .collect::<Vec<_>>()
            .join("\n")
    });
}
