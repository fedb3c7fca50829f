//! Local faults are local (TRUST.md guarantee 5): a node whose state dir runs out of space says so
//! on /api/health, /metrics and the dashboard, blames no peer, leaves no temporary checkpoint
//! behind, keeps training, and writes what it kept once space returns.
//!
//! The full disk is a file-size limit (RLIMIT_FSIZE, set on the running node with prlimit): it
//! needs no root and no mount, so it works on any CI machine. A write past the limit fails with
//! EFBIG (the node ignores SIGXFSZ) exactly where a full disk fails with ENOSPC.

#![cfg(target_os = "linux")]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{BIN, Node, env_of, event_data, read_events, start_cluster, wait_until};
use serde_json::{Value, json};

const API_KEY: &str = "local-faults-test-api-key-0123";

/// The file-size limit of a running process; only the soft limit moves, so lifting it needs no
/// privilege.
struct FileSizeLimit {
    pid: libc::pid_t,
    original: libc::rlimit,
}

impl FileSizeLimit {
    fn set(pid: u32, bytes: u64) -> Self {
        let pid = libc::pid_t::try_from(pid).unwrap();
        let mut original = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit reads the limit into `original`; no new limit is given.
        let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, std::ptr::null(), &mut original) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
        let limit = Self { pid, original };
        limit.apply(bytes.min(original.rlim_max));
        limit
    }

    fn apply(&self, soft: libc::rlim_t) {
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: self.original.rlim_max,
        };
        // SAFETY: `new` is a valid rlimit; the old one is not asked for.
        let rc = unsafe { libc::prlimit(self.pid, libc::RLIMIT_FSIZE, &new, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    }

    /// Space returns.
    fn lift(self) {
        self.apply(self.original.rlim_cur);
    }
}

fn health(node: &Node) -> Value {
    node.get("/api/health")
}

fn degraded_components(health: &Value) -> BTreeSet<String> {
    health["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["component"].as_str().unwrap().to_string())
        .collect()
}

fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

/// Ids of the proofs `holder` has stored for `node_id`, each with its timestamp.
fn stored_proofs(holder: &Node, node_id: &str) -> Vec<(String, u64)> {
    holder.get(&format!("/api/ledger/proofs/{node_id}?limit=1000"))["proofs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["proof"]["timestamp_ms"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// `of`'s entry in `node`'s peer table.
fn peer_entry(node: &Node, of: &str) -> Option<Value> {
    node.get("/api/peers")["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer_id"] == of)
        .cloned()
}

fn stake(node: &Node) -> (u16, Value) {
    node.post_with_key(
        "/api/stake",
        API_KEY,
        &json!({"amount": 0.00000001, "duration_days": 1}),
    )
}

fn assert_no_blame(node: &Node, peer: &str, who: &str) {
    let entry = peer_entry(node, peer).unwrap_or_else(|| panic!("{who}: {peer} not listed"));
    assert_eq!(entry["rejected"], 0, "{who} blamed its peer: {entry}");
    let rejections = &node.get("/api/neuro")["rejections"];
    let counted: u64 = rejections
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(counted, 0, "{who} counted rejections: {rejections}");
}

#[test]
fn a_full_state_dir_degrades_health_blames_no_peer_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, format!("api_key = \"{API_KEY}\"\n")).unwrap();
    // Node 0 trains and checkpoints often; node 1 (an observer) proves its uptime every 2 s.
    let nodes = start_cluster(
        dir.path(),
        2,
        |i| {
            let mut args = vec!["--diloco-steps".to_string(), "10".to_string()];
            if i == 0 {
                args.extend(["--config".to_string(), config.display().to_string()]);
            } else {
                args.push("--no-training".into());
            }
            args
        },
        |_| {
            env_of(&[
                ("NEUROSHARD_LEDGER__UPTIME_INTERVAL_S", "2"),
                ("NEUROSHARD_LEDGER__LIMITS__MAX_PROOFS_PER_HOUR", "100000"),
                ("NEUROSHARD_TRAINING__CHECKPOINT_EVERY", "10"),
                ("NEUROSHARD_TRAINING__EVAL_EVERY", "1000"),
            ])
        },
    );
    let (full, healthy) = (&nodes[0], &nodes[1]);
    let state_dir = dir.path().join("n0");
    let checkpoints = state_dir.join("checkpoints");
    let (full_peer, healthy_peer) = (full.peer_id(), healthy.peer_id());
    let healthy_id = healthy.stats()["node_id"].as_str().unwrap().to_string();
    let all = [full, healthy];

    // Connected, the observer's proofs stored on node 0, a checkpoint written, a balance to stake.
    wait_until("a settled pair", Duration::from_secs(180), &all, || {
        peer_entry(full, &healthy_peer).is_some_and(|p| p["connected"] == true)
            && !stored_proofs(full, &healthy_id).is_empty()
            && full.stats()["checkpoints_written"].as_u64() > Some(0)
            && full.get("/api/neuro")["balance"].as_f64() > Some(0.0)
    });
    assert_eq!(health(full)["status"], "ok");
    assert_eq!(health(full)["reasons"], json!([]));
    // The disk fills up: no file may grow past the ledger's write-ahead log as it is now (SQLite
    // appends to it; nothing checkpoints it back to its start in a run this short) nor hold a
    // whole checkpoint. The node's log file is past it too: node 0's log ends here (/api/logs
    // still has its lines).
    let size = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
    let wal_bytes = size(&state_dir.join("ledger.sqlite-wal"));
    let checkpoint_bytes = size(&checkpoints.join("checkpoint.safetensors"));
    let limit_bytes = wal_bytes.min(checkpoint_bytes - 1);
    println!(
        "file size limit {limit_bytes} bytes (WAL {wal_bytes}, checkpoint {checkpoint_bytes})"
    );
    let limit = FileSizeLimit::set(full.pid().unwrap(), limit_bytes);
    wait_until(
        "node 0 to report the ledger and checkpoints degraded",
        Duration::from_secs(120),
        &all,
        || {
            let h = health(full);
            h["status"] == "degraded"
                && degraded_components(&h) == BTreeSet::from(["ledger".into(), "checkpoint".into()])
        },
    );
    let h = health(full);
    let reasons: Vec<&str> = h["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("ledger: "))
            && reasons.iter().any(|r| r.starts_with("checkpoint: ")),
        "reasons name the component: {reasons:?}"
    );
    println!("degraded: {reasons:?}");
    let degraded_since = h["faults"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["component"] == "ledger")
        .unwrap()["since_ms"]
        .as_u64()
        .unwrap();

    // What an operator sees: the metrics and the dashboard's feed say so too.
    let metrics = full.get_text("/metrics");
    for line in [
        "neuroshard_degraded{component=\"ledger\"} 1",
        "neuroshard_degraded{component=\"checkpoint\"} 1",
    ] {
        assert!(metrics.contains(line), "/metrics lacks {line}:\n{metrics}");
    }
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("neuroshard_local_write_failures_total{component=\"ledger\"}"))
        .unwrap_or_else(|| panic!("no write failure counter:\n{metrics}"));
    assert_ne!(failures.rsplit(' ').next(), Some("0"), "{failures}");
    let snapshot = event_data(&read_events(full.port, "snapshot"), "snapshot");
    assert_eq!(snapshot["health"]["status"], "degraded");
    assert!(
        full.get_text("/").contains("id=\"health-banner\""),
        "the dashboard has the banner"
    );

    // A failed checkpoint leaves no temporary file (one being written exists for a moment).
    wait_until(
        "no temporary checkpoint file",
        Duration::from_secs(30),
        &all,
        || temp_files(&checkpoints).is_empty(),
    );
    // This node's own transaction is not acknowledged: 503, not a 5xx panic or a refusal.
    let (status, body) = stake(full);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "storage_unavailable", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("ledger"),
        "{body}"
    );

    // Training goes on, and the observer's proofs made meanwhile reach node 0 (not yet stored).
    let step = full.stats()["global_step"].as_u64().unwrap();
    let mut made_meanwhile = Vec::new();
    wait_until(
        "training and the observer's proofs to go on",
        Duration::from_secs(60),
        &all,
        || {
            made_meanwhile = stored_proofs(healthy, &healthy_id)
                .into_iter()
                .filter(|(_, t)| *t > degraded_since)
                .map(|(id, _)| id)
                .collect();
            made_meanwhile.len() >= 3 && full.stats()["global_step"].as_u64() > Some(step)
        },
    );
    assert_eq!(health(full)["status"], "degraded");
    let on_full: BTreeSet<String> = stored_proofs(full, &healthy_id)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(
        made_meanwhile.iter().all(|id| !on_full.contains(id)),
        "written while the disk was full?"
    );

    // Space returns: the node recovers by itself and writes what it kept.
    limit.lift();
    wait_until(
        "node 0 to be healthy again",
        Duration::from_secs(120),
        &all,
        || health(full)["status"] == "ok",
    );
    assert_eq!(health(full)["reasons"], json!([]));
    let on_full: BTreeSet<String> = stored_proofs(full, &healthy_id)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    for id in &made_meanwhile {
        assert!(
            on_full.contains(id),
            "proof {id} made while the disk was full was lost"
        );
    }
    println!(
        "{} proofs made while degraded are stored; {failures}",
        made_meanwhile.len()
    );
    let metrics = full.get_text("/metrics");
    assert!(
        metrics.contains("neuroshard_degraded{component=\"ledger\"} 0"),
        "{metrics}"
    );
    let (status, body) = stake(full);
    assert_eq!(status, 200, "{body}");

    // Nobody was blamed for node 0's disk, on either side.
    assert_no_blame(full, &healthy_peer, "node 0");
    assert_no_blame(healthy, &full_peer, "node 1");

    let [full, healthy] = <[Node; 2]>::try_from(nodes).ok().unwrap();
    assert!(full.terminate().success());
    assert!(healthy.terminate().success());
    assert!(temp_files(&checkpoints).is_empty());
    let out = Command::new(BIN)
        .args(["ledger", "verify", "--state-dir"])
        .arg(&state_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ledger verify: {}",
        common::combined_output(&out)
    );
}
