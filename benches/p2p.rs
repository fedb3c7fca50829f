//! Network benchmark, real processes on loopback (`cargo bench --bench p2p`):
//! 1. blob throughput between two nodes (the 38.2 MB θ₀ of the micro preset, fetched over
//!    libp2p: TCP + Noise + Yamux + request-response, BLAKE3 checked on arrival) against a plain TCP
//!    copy of the same number of bytes on the same machine, in the same run;
//! 2. gossip latency of a heartbeat to all of 5 nodes, against the ping round-trip time.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::Node;
use serde_json::{Value, json};

const RUNS: usize = 5;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

/// MB/s of copying `bytes` through a loopback TCP socket, connect to last byte received.
fn plain_tcp_copy(bytes: usize) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let data = vec![7u8; bytes];
    let sender = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        socket.write_all(&data).unwrap();
    });
    let start = Instant::now();
    let mut socket = TcpStream::connect(addr).unwrap();
    let mut received = Vec::with_capacity(bytes);
    socket.read_to_end(&mut received).unwrap();
    let seconds = start.elapsed().as_secs_f64();
    sender.join().unwrap();
    assert_eq!(received.len(), bytes);
    bytes as f64 / 1e6 / seconds
}

fn peers(node: &Node) -> Vec<Value> {
    node.get("/api/peers")["peers"].as_array().unwrap().clone()
}

fn blob_throughput(dir: &std::path::Path) {
    let server = Node::start(
        &dir.join("server"),
        &["--no-training", "--preset", "micro"],
        &[],
    );
    let seed = server.p2p_addr();
    let client = Node::start(
        &dir.join("client"),
        &["--no-training", "--preset", "micro", "--seed-peers", &seed],
        &[],
    );
    let (server_id, hash) = (server.peer_id(), server.stats()["theta0_hash"].clone());
    client.wait_for("the server", Duration::from_secs(30), |c| {
        peers(c).iter().any(|p| p["peer_id"] == server_id.as_str())
    });
    let mut blob = Vec::new();
    let mut bytes = 0;
    // The first transfer also opens the stream and grows the receive window; measured separately.
    for run in 0..=RUNS {
        let (status, body) = client.post_json(
            "/api/blobs/fetch",
            &json!({"peer_id": server_id, "hash": hash}),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["hash"], hash);
        bytes = body["bytes"].as_u64().unwrap() as usize;
        let mb_per_s = body["mb_per_s"].as_f64().unwrap();
        if run == 0 {
            println!("first (cold) blob transfer: {mb_per_s:.0} MB/s");
        } else {
            blob.push(mb_per_s);
        }
    }
    let tcp: Vec<f64> = (0..RUNS).map(|_| plain_tcp_copy(bytes)).collect();
    let (blob_mbs, tcp_mbs) = (median(blob.clone()), median(tcp.clone()));
    println!(
        "blob transfer, {:.1} MB, median of {RUNS}:",
        bytes as f64 / 1e6
    );
    println!("  libp2p blob (noise+yamux, BLAKE3 checked): {blob_mbs:8.0} MB/s  runs {blob:.0?}");
    println!("  plain TCP copy on loopback:                {tcp_mbs:8.0} MB/s  runs {tcp:.0?}");
    println!(
        "  ratio blob / plain TCP: {:.2} (goal >= 0.50)",
        blob_mbs / tcp_mbs
    );
}

fn gossip_latency(dir: &std::path::Path) {
    let first = Node::start(&dir.join("g0"), &["--no-training"], &[]);
    let seed = first.p2p_addr();
    let mut nodes = vec![first];
    for i in 1..5 {
        nodes.push(Node::start(
            &dir.join(format!("g{i}")),
            &["--no-training", "--seed-peers", &seed],
            &[],
        ));
    }
    for node in &nodes {
        node.wait_for("4 peers heard", Duration::from_secs(30), |n| {
            peers(n)
                .iter()
                .filter(|p| !p["heartbeat"].is_null())
                .count()
                == 4
        });
    }
    // Every 1 s heartbeat of every node, as each receiver last saw it: arrival minus send time
    // (one clock: all processes are on this machine).
    let mut to_all = Vec::new();
    let mut each = Vec::new();
    let mut ping = Vec::new();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(1000));
        let tables: Vec<Vec<Value>> = nodes.iter().map(peers).collect();
        let origins: Vec<String> = nodes.iter().map(Node::peer_id).collect();
        for origin in &origins {
            let ages: Vec<f64> = tables
                .iter()
                .flatten()
                .filter(|p| p["peer_id"] == origin.as_str())
                .filter_map(|p| p["heartbeat_age_ms"].as_f64())
                .collect();
            each.extend(&ages);
            if ages.len() == 4 {
                to_all.push(ages.iter().cloned().fold(0.0, f64::max));
            }
        }
        ping.extend(
            tables
                .iter()
                .flatten()
                .filter_map(|p| p["latency_ms"].as_f64()),
        );
    }
    let (p50, ping50) = (median(to_all.clone()), median(ping.clone()));
    println!("gossip, 5 nodes, heartbeats every 1 s for 20 s:");
    println!(
        "  to all 4 peers: p50 {p50:.1} ms  p95 {:.1} ms  max {:.1} ms ({} heartbeats)",
        percentile(to_all.clone(), 0.95),
        percentile(to_all.clone(), 1.0),
        to_all.len()
    );
    println!(
        "  to one peer:    p50 {:.1} ms  p95 {:.1} ms",
        median(each.clone()),
        percentile(each, 0.95)
    );
    println!("  ping round trip (baseline): p50 {ping50:.2} ms");
    println!(
        "  ratio gossip-to-all p50 / ping p50: {:.1}",
        p50 / ping50.max(1e-6)
    );
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let dir = tempfile::tempdir().unwrap();
    blob_throughput(dir.path());
    gossip_latency(dir.path());
}
