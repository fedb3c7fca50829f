//! The bootstrap tracker as a real `neuroshard tracker` process: signed announcements are
//! accepted once, forged / stale / replayed / oversized ones are refused with JSON errors, and the
//! library's client gets the other peers of its network.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, Process, free_port};
use neuroshard::crypto::{Identity, generate_token};
use neuroshard::net::announce::{Announcement, announce_to_tracker, unix_time_s};
use serde_json::Value;

fn identity() -> Identity {
    Identity::from_token(&generate_token()).unwrap()
}

fn addrs(port: u16) -> Vec<String> {
    vec![format!("/ip4/127.0.0.1/tcp/{port}")]
}

fn body(a: &Announcement) -> String {
    serde_json::to_string(a).unwrap()
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_error: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"], want_error, "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
}

#[test]
fn announcements_are_listed_in_their_network_only() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Process::start_tracker(dir.path());
    assert_eq!(
        tracker.get_with_status("/health"),
        (200, serde_json::json!({"status": "ok"}))
    );

    let id = identity();
    let a = Announcement::signed(&id, "net-a", addrs(4001), unix_time_s());
    let (status, answer) = tracker.post_raw("/announce", &body(&a));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, serde_json::json!({"accepted": true, "peers": 1}));

    let (status, listed) = tracker.get_with_status("/peers?network=net-a");
    assert_eq!(status, 200, "{listed}");
    let peers = listed["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1, "{listed}");
    assert_eq!(peers[0]["peer_id"], id.peer_id().to_string());
    assert_eq!(peers[0]["node_id"], id.node_id);
    assert_eq!(peers[0]["multiaddrs"], serde_json::json!(addrs(4001)));
    assert!(peers[0]["last_seen_s"].as_u64().unwrap() <= 5);
    // The signature and the timestamp are not handed out.
    assert!(peers[0].get("signature").is_none());

    let (status, other) = tracker.get_with_status("/peers?network=net-b");
    assert_eq!(status, 200);
    assert_eq!(other, serde_json::json!({"peers": []}));

    let (status, missing) = tracker.get_with_status("/peers");
    assert_error(status, &missing, 400, "bad_request");
    let (status, unknown) = tracker.get_with_status("/nowhere");
    assert_error(status, &unknown, 404, "not_found");
}

#[test]
fn forged_stale_and_replayed_announcements_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Process::start_tracker(dir.path());
    let id = identity();
    let other = identity();
    let now = unix_time_s();

    // Replay: the same body twice.
    let a = Announcement::signed(&id, "net", addrs(4001), now);
    assert_eq!(tracker.post_raw("/announce", &body(&a)).0, 200);
    let (status, answer) = tracker.post_raw("/announce", &body(&a));
    assert_error(status, &answer, 409, "replayed_announcement");
    // A later announcement from the same node replaces it.
    let later = Announcement::signed(&id, "net", addrs(4002), now + 1);
    let (status, answer) = tracker.post_raw("/announce", &body(&later));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["peers"], 1);
    let (_, listed) = tracker.get_with_status("/peers?network=net");
    assert_eq!(
        listed["peers"][0]["multiaddrs"],
        serde_json::json!(addrs(4002))
    );

    // Stale, both ways.
    for timestamp in [now - 1000, now + 1000] {
        let stale = Announcement::signed(&other, "net", addrs(4003), timestamp);
        let (status, answer) = tracker.post_raw("/announce", &body(&stale));
        assert_error(status, &answer, 400, "stale_announcement");
    }

    // Signed by another identity.
    let mut forged = Announcement::signed(&id, "net", addrs(4004), now + 2);
    forged.signature = hex::encode(other.sign(&forged.canonical_bytes()));
    let (status, answer) = tracker.post_raw("/announce", &body(&forged));
    assert_error(status, &answer, 401, "bad_signature");

    // node_id not matching peer_id, even when signed.
    let mut mismatched = Announcement::signed(&id, "net", addrs(4005), now + 3);
    mismatched.node_id = other.node_id.clone();
    mismatched.signature = hex::encode(id.sign(&mismatched.canonical_bytes()));
    let (status, answer) = tracker.post_raw("/announce", &body(&mismatched));
    assert_error(status, &answer, 400, "invalid_announcement");
    assert!(
        answer["detail"].as_str().unwrap().contains("node_id"),
        "{answer}"
    );

    // Nothing refused was listed.
    let (_, listed) = tracker.get_with_status("/peers?network=net");
    assert_eq!(listed["peers"].as_array().unwrap().len(), 1, "{listed}");
}

#[test]
fn malformed_and_oversized_bodies_get_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Process::start_tracker(dir.path());
    let (status, answer) = tracker.post_raw("/announce", "{not json");
    assert_error(status, &answer, 400, "invalid_json");

    let mut v = serde_json::to_value(Announcement::signed(
        &identity(),
        "net",
        addrs(4001),
        unix_time_s(),
    ))
    .unwrap();
    v["extra"] = Value::from(1);
    let (status, answer) = tracker.post_raw("/announce", &v.to_string());
    assert_error(status, &answer, 400, "invalid_json");

    let mut big = Announcement::signed(&identity(), "net", addrs(4001), unix_time_s());
    big.network_id = "x".repeat(17 * 1024);
    let (status, answer) = tracker.post_raw("/announce", &body(&big));
    assert_error(status, &answer, 413, "payload_too_large");

    // The tracker still serves after all that.
    assert_eq!(tracker.get_with_status("/health").0, 200);
}

#[test]
fn the_client_gets_the_other_peers_of_its_network() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Process::start_tracker(dir.path());
    let (a, b, c) = (identity(), identity(), identity());
    let now = unix_time_s();
    let timeout = Duration::from_secs(10);

    let from_a = announce_to_tracker(
        &tracker.url(""),
        &Announcement::signed(&a, "net", addrs(4001), now),
        timeout,
    )
    .unwrap();
    assert!(from_a.is_empty(), "{from_a:?}");
    // c is in another network: never listed to a or b.
    announce_to_tracker(
        &format!("{}/", tracker.url("")),
        &Announcement::signed(&c, "elsewhere", addrs(4003), now),
        timeout,
    )
    .unwrap();

    let from_b = announce_to_tracker(
        &tracker.url(""),
        &Announcement::signed(&b, "net", addrs(4002), now),
        timeout,
    )
    .unwrap();
    assert_eq!(from_b.len(), 1, "{from_b:?}");
    assert_eq!(from_b[0].node_id, a.node_id);
    assert_eq!(from_b[0].peer_id, a.peer_id().to_string());
    assert_eq!(from_b[0].multiaddrs, addrs(4001));

    // A refusal comes back with the tracker's status and detail.
    let err = announce_to_tracker(
        &tracker.url(""),
        &Announcement::signed(&b, "net", addrs(4002), now),
        timeout,
    )
    .unwrap_err();
    match err {
        neuroshard::net::announce::TrackerError::Refused {
            status,
            error,
            detail,
        } => {
            assert_eq!(status, 409);
            assert_eq!(error, "replayed_announcement");
            assert!(detail.contains("replayed"), "{detail}");
        }
        other => panic!("expected Refused, got {other}"),
    }
}

#[test]
fn sigterm_stops_the_tracker_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Process::start_tracker(dir.path());
    let status = tracker.terminate();
    assert!(status.success(), "{status}");
}

#[test]
fn a_port_in_use_exits_2() {
    let port = free_port();
    let _held = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let out = Command::new(BIN)
        .args([
            "tracker",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen"), "{stderr}");
}
