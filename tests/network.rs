//! Real nodes on 127.0.0.1 find each other (through a tracker or seed peers), gossip signed
//! heartbeats to all, move a model-sized blob intact, drop a killed node, refuse a node of another
//! network or model, and count a misbehaving node's bad messages without falling over.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Node, wait_until};
use serde_json::{Value, json};

const MEET_WITHIN: Duration = Duration::from_secs(30);

/// Peers a node lists (not banned), by peer_id.
fn listed(node: &Node) -> BTreeSet<String> {
    node.get("/api/peers")["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["banned"] == false)
        .map(|p| p["peer_id"].as_str().unwrap().to_string())
        .collect()
}

/// Peers whose heartbeat (a gossip message) this node has received, by peer_id.
fn heard(node: &Node) -> BTreeSet<String> {
    node.get("/api/peers")["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["heartbeat"]["node_id"] == p["node_id"])
        .map(|p| p["peer_id"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until every node lists every other node and has heard a heartbeat from each.
fn wait_until_all_meet(nodes: &[Node]) -> Duration {
    let ids: Vec<String> = nodes.iter().map(Node::peer_id).collect();
    let start = Instant::now();
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_until(
        "every node to list and hear the others",
        MEET_WITHIN,
        &refs,
        || {
            nodes.iter().zip(&ids).all(|(node, own)| {
                let others: BTreeSet<String> = ids.iter().filter(|i| *i != own).cloned().collect();
                listed(node) == others && heard(node) == others
            })
        },
    );
    start.elapsed()
}

fn start_nodes(dir: &Path, count: usize, args: &[&str]) -> Vec<Node> {
    (0..count)
        .map(|i| {
            Node::start(
                &dir.join(format!("node{i}")),
                &[&["--no-training"], args].concat(),
                &[("NEUROSHARD_NETWORK__ANNOUNCE_INTERVAL_S", "1")],
            )
        })
        .collect()
}

#[test]
fn five_nodes_meet_through_a_tracker_refuse_another_network_and_drop_a_killed_node() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Node::start_tracker(dir.path());
    let url = tracker.url("");
    let mut nodes = start_nodes(dir.path(), 5, &["--tracker", &url]);
    let took = wait_until_all_meet(&nodes);
    eprintln!("5 nodes met through the tracker in {took:?}");

    // A node of another network, told about node 0 directly, is refused on both sides.
    let seed = nodes[0].p2p_addr();
    let stranger = Node::start(
        &dir.path().join("stranger"),
        &[
            "--no-training",
            "--network-id",
            "othernet",
            "--tracker",
            &url,
            "--seed-peers",
            &seed,
        ],
        &[],
    );
    wait_until(
        "node 0 and the other network's node to refuse each other",
        MEET_WITHIN,
        &[&nodes[0], &stranger],
        || {
            let network = nodes[0].get("/api/network");
            network["peers_refused"].as_u64().unwrap() >= 1
                && network["last_refusal"]
                    .as_str()
                    .is_some_and(|r| r.contains("othernet"))
                && stranger.get("/api/network")["peers_refused"]
                    .as_u64()
                    .unwrap()
                    >= 1
        },
    );
    let stranger_id = stranger.peer_id();
    for node in &nodes {
        assert!(!listed(node).contains(&stranger_id));
    }
    assert_eq!(stranger.get("/api/network")["peer_count"], 0);

    // A killed node disappears from every table (3 silent heartbeat intervals of 1 s).
    let killed = nodes.pop().unwrap();
    let killed_id = killed.peer_id();
    drop(killed);
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_until(
        "the killed node to disappear",
        Duration::from_secs(15),
        &refs,
        || nodes.iter().all(|n| !listed(n).contains(&killed_id)),
    );
    for node in &nodes {
        assert_eq!(listed(node).len(), 3);
        assert_eq!(node.get("/api/network")["messages_rejected"], 0);
    }
}

#[test]
fn five_nodes_meet_through_seed_peers_and_shrug_off_misbehaving_and_flooding_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let first = Node::start(&dir.path().join("first"), &["--no-training"], &[]);
    let seed = first.p2p_addr();
    let mut nodes = vec![first];
    nodes.extend(start_nodes(dir.path(), 4, &["--seed-peers", &seed]));
    let took = wait_until_all_meet(&nodes);
    eprintln!("5 nodes met through a seed peer in {took:?}");

    // Besides its valid heartbeats, this node gossips malformed, oversized and badly signed messages.
    let rogue = Node::start(
        &dir.path().join("rogue"),
        &["--no-training", "--seed-peers", &seed],
        &[("NEUROSHARD_FAULT_GOSSIP_GARBAGE", "1")],
    );
    let rogue_id = rogue.peer_id();
    let rogue_row = |node: &Node| -> Option<Value> {
        node.get("/api/peers")["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["peer_id"] == rogue_id.as_str())
            .cloned()
    };
    wait_until(
        "the seed node to reject each kind of bad message and ban the rogue",
        MEET_WITHIN,
        &[&nodes[0], &rogue],
        || {
            rogue_row(&nodes[0]).is_some_and(|r| {
                ["malformed", "oversized", "bad_signature"]
                    .iter()
                    .all(|kind| r["rejections"][kind].as_u64().unwrap_or(0) >= 1)
                    && r["banned"] == true
            })
        },
    );

    // A node flooding valid heartbeats is rate-limited, then banned: 800 a second is far over the
    // limit derived from the seed node's settings (1 s heartbeats, H = 500: 268), and their
    // timestamps (+1 ms each) stay below the next real heartbeat's, so none is a replay.
    let flooder = Node::start(
        &dir.path().join("flooder"),
        &["--no-training", "--seed-peers", &seed],
        &[("NEUROSHARD_FAULT_GOSSIP_FLOOD", "800")],
    );
    let flooder_id = flooder.peer_id();
    wait_until(
        "the seed node to ban the flooder",
        MEET_WITHIN,
        &[&nodes[0], &flooder],
        || {
            nodes[0].get("/api/peers")["peers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["peer_id"] == flooder_id.as_str() && p["banned"] == true)
        },
    );
    let flooded = nodes[0].get("/api/peers")["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer_id"] == flooder_id.as_str())
        .cloned()
        .unwrap();
    assert!(
        flooded["rejections"]["rate_limited"].as_u64().unwrap() >= 1,
        "{flooded}"
    );
    assert!(
        nodes[0].get("/api/network")["peers_banned"]
            .as_u64()
            .unwrap()
            >= 1
    );

    std::thread::sleep(Duration::from_secs(3));
    // The honest nodes keep running, still see each other, and blame no honest peer.
    let honest: BTreeSet<String> = nodes.iter().map(Node::peer_id).collect();
    for node in &nodes {
        assert_eq!(node.get("/api/health")["status"], "ok");
        let peers = node.get("/api/peers")["peers"].as_array().unwrap().clone();
        for p in peers
            .iter()
            .filter(|p| honest.contains(p["peer_id"].as_str().unwrap()))
        {
            assert_eq!(p["rejected"], 0, "an honest peer was blamed: {p}");
        }
        let own = node.peer_id();
        let others: BTreeSet<String> = honest.iter().filter(|i| **i != own).cloned().collect();
        assert!(listed(node).is_superset(&others));
    }
    let network = nodes[0].get("/api/network");
    assert!(network["messages_rejected"].as_u64().unwrap() >= 3);
}

#[test]
fn a_model_sized_blob_moves_between_two_nodes_intact() {
    let dir = tempfile::tempdir().unwrap();
    // micro: θ₀ is 9,541,632 f32 = 38.2 MB. A different seed, so the bytes exist only on `server`.
    let server = Node::start(
        &dir.path().join("server"),
        &["--no-training", "--preset", "micro"],
        &[("NEUROSHARD_TRAINING__SEED", "7")],
    );
    let seed = server.p2p_addr();
    let client = Node::start(
        &dir.path().join("client"),
        &["--no-training", "--preset", "micro", "--seed-peers", &seed],
        &[],
    );
    let server_id = server.peer_id();
    let server_hash = server.stats()["theta0_hash"].as_str().unwrap().to_string();
    assert_ne!(client.stats()["theta0_hash"], server_hash.as_str());
    wait_until(
        "the client to hear the server",
        MEET_WITHIN,
        &[&client],
        || heard(&client).contains(&server_id),
    );
    let advertised = client.get("/api/peers")["peers"][0]["heartbeat"]["theta0_hash"].clone();
    assert_eq!(advertised, server_hash.as_str());

    let (status, body) = client.post_json(
        "/api/blobs/fetch",
        &json!({"peer_id": server_id, "hash": server_hash}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["bytes"], 9_541_632 * 4);
    assert_eq!(body["hash"], server_hash.as_str());
    eprintln!(
        "38.2 MB blob: {:.0} MB/s",
        body["mb_per_s"].as_f64().unwrap()
    );
    // The server's connection counters saw the blob go out, the client's saw it come in.
    for (node, direction) in [(&server, "bytes_out"), (&client, "bytes_in")] {
        node.wait_for(direction, Duration::from_secs(5), |n| {
            n.get("/api/peers")["peers"][0][direction].as_u64().unwrap() >= 9_541_632 * 4
        });
    }

    // A blob the peer does not have, and bad request bodies, get clear errors.
    let (status, body) = client.post_json(
        "/api/blobs/fetch",
        &json!({"peer_id": server_id, "hash": "00".repeat(32)}),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (502, Some("fetch_failed"))
    );
    assert!(body["detail"].as_str().unwrap().contains("does not have"));
    let (status, _) = client.post_json(
        "/api/blobs/fetch",
        &json!({"peer_id": "not-a-peer", "hash": server_hash}),
    );
    assert_eq!(status, 400);
    let (status, _) = client.post_json(
        "/api/blobs/fetch",
        &json!({"peer_id": server_id, "hash": "xyz"}),
    );
    assert_eq!(status, 400);

    // A node training another model is refused by the server.
    let _nano = Node::start(
        &dir.path().join("nano"),
        &["--no-training", "--seed-peers", &seed],
        &[],
    );
    wait_until(
        "the server to refuse the nano node",
        MEET_WITHIN,
        &[&server],
        || {
            server.get("/api/network")["last_refusal"]
                .as_str()
                .is_some_and(|r| r.contains("model config hash"))
        },
    );
}
