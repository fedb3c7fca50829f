//! `neuroshard devnet`: three real nodes on loopback that see each other, train as one group with
//! devnet's defaults (every round with all three, one θ₀), stop together on one SIGTERM, and are
//! taken down with devnet when it is SIGKILLed.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{BIN, event_data, read_events};
use serde_json::Value;

/// A node line printed by devnet.
struct Printed {
    url: String,
    node_id: String,
    log: String,
}

/// The running `neuroshard devnet`; SIGKILLed on drop (its nodes follow through their
/// parent-death signal), so a failing test leaves nothing running.
struct Devnet {
    child: Option<Child>,
    nodes: Vec<Printed>,
    log: std::path::PathBuf,
}

impl Devnet {
    fn start(dir: &Path, nodes: usize) -> Self {
        let log = dir.join("devnet.log");
        let mut child = Command::new(BIN)
            .args(["devnet", "--nodes", &nodes.to_string(), "--state-dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start devnet");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut devnet = Self {
            child: Some(child),
            nodes: Vec::new(),
            log,
        };
        for k in 1..=nodes {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no line for node {k}; {}", devnet.logs()));
            // node K  URL  node_id ID  log PATH
            let words: Vec<&str> = line.split_whitespace().collect();
            assert!(
                words.len() == 7 && words[0] == "node" && words[1] == k.to_string(),
                "unexpected line {line:?}"
            );
            assert_eq!((words[3], words[5]), ("node_id", "log"), "{line}");
            devnet.nodes.push(Printed {
                url: words[2].to_string(),
                node_id: words[4].to_string(),
                log: words[6].to_string(),
            });
        }
        devnet
    }

    fn pid(&self) -> libc::pid_t {
        self.child.as_ref().unwrap().id() as libc::pid_t
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: the pid is our unreaped child.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "devnet did not exit within {timeout:?}; {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// devnet's stderr and the end of every node log.
    fn logs(&self) -> String {
        let tail = |path: &Path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        let mut out = format!("devnet stderr:\n{}", tail(&self.log));
        for (i, node) in self.nodes.iter().enumerate() {
            out += &format!(
                "\n----- node {} log:\n{}",
                i + 1,
                tail(Path::new(&node.log))
            );
        }
        out
    }
}

impl Drop for Devnet {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .new_agent()
}

fn get(agent: &ureq::Agent, url: &str) -> Option<Value> {
    agent.get(url).call().ok()?.body_mut().read_json().ok()
}

/// node_ids a node lists as connected in /api/peers.
fn connected(agent: &ureq::Agent, url: &str) -> Vec<String> {
    let Some(body) = get(agent, &format!("{url}/api/peers")) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = body["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["connected"] == true)
        .filter_map(|p| p["node_id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

/// (round, θ₀ hash, participants of the last closed round) as /api/diloco shows them.
fn round_state(agent: &ureq::Agent, url: &str) -> Option<(u64, String, u64)> {
    let d = get(agent, &format!("{url}/api/diloco"))?;
    Some((
        d["outer_step_count"].as_u64()?,
        d["theta0_hash"].as_str()?.to_string(),
        d["last_round"]["participants"].as_u64().unwrap_or(0),
    ))
}

/// Waits until the nodes form one group (a round with all of them, on one θ₀), then watches
/// `rounds` more rounds: each must have had every node in it, on every node.
fn train_as_one_group(devnet: &Devnet, agent: &ureq::Agent, rounds: u64) {
    let everyone = devnet.nodes.len() as u64;
    let states = || -> Vec<Option<(u64, String, u64)>> {
        devnet
            .nodes
            .iter()
            .map(|n| round_state(agent, &n.url))
            .collect()
    };
    let started = Instant::now();
    let first = loop {
        let now = states();
        let one_group = now.iter().all(|s| {
            s.as_ref().is_some_and(|(r, hash, p)| {
                *p == everyone
                    && (*r, hash) == (now[0].as_ref().unwrap().0, &now[0].as_ref().unwrap().1)
            })
        });
        if one_group {
            break now[0].as_ref().unwrap().0;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the nodes did not form one group within 120 s: {now:?}; {}",
            devnet.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!(
        "one group of {everyone} at round {first} after {:?}",
        started.elapsed()
    );
    // Every closed round seen from here on, per node: (round, participants).
    let mut seen: Vec<Vec<(u64, u64)>> = vec![Vec::new(); devnet.nodes.len()];
    let watch = Instant::now();
    loop {
        for (node, state) in states().into_iter().enumerate() {
            if let Some((round, _, participants)) = state
                && seen[node].last().is_none_or(|(r, _)| *r < round)
            {
                seen[node].push((round, participants));
            }
        }
        if seen
            .iter()
            .all(|s| s.last().is_some_and(|(r, _)| *r >= first + rounds))
        {
            break;
        }
        assert!(
            watch.elapsed() < Duration::from_secs(60 * rounds),
            "the group did not pass {rounds} more rounds in {:?}: {seen:?}; {}",
            watch.elapsed(),
            devnet.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for (node, rounds) in seen.iter().enumerate() {
        assert!(
            rounds.iter().all(|(_, p)| *p == everyone),
            "node {}: a round without all {everyone} nodes: {rounds:?}; {}",
            node + 1,
            devnet.logs()
        );
    }
    let hashes: Vec<Option<String>> = states().into_iter().map(|s| s.map(|s| s.1)).collect();
    eprintln!("rounds seen per node (round, participants): {seen:?}; θ₀ now {hashes:?}");
}

fn answers(url: &str) -> bool {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .new_agent();
    agent.get(&format!("{url}/api/health")).call().is_ok()
}

#[test]
fn three_nodes_see_each_other_train_as_one_group_and_stop_together_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut devnet = Devnet::start(dir.path(), 3);
    let agent = agent();

    let ids: Vec<String> = devnet.nodes.iter().map(|n| n.node_id.clone()).collect();
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{ids:?}");
    for node in &devnet.nodes {
        assert!(node.log.ends_with("node.log"), "{}", node.log);
    }

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let all_meet = devnet.nodes.iter().all(|node| {
            let mut others: Vec<String> = ids
                .iter()
                .filter(|i| **i != node.node_id)
                .cloned()
                .collect();
            others.sort();
            connected(&agent, &node.url) == others
        });
        if all_meet {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes did not all see each other within 90 s: {:?}; {}",
            devnet
                .nodes
                .iter()
                .map(|n| connected(&agent, &n.url))
                .collect::<Vec<_>>(),
            devnet.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Each node answers as the node_id devnet printed for it, and its dashboard's feed lists the
    // other two as connected peers.
    for node in &devnet.nodes {
        let stats = get(&agent, &format!("{}/api/stats", node.url)).unwrap();
        assert_eq!(stats["node_id"], node.node_id.as_str());
        let port = node.url.rsplit(':').next().unwrap().parse().unwrap();
        let dashboard = event_data(&read_events(port, "snapshot"), "snapshot");
        let shown: Vec<&str> = dashboard["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["connected"] == true)
            .filter_map(|p| p["node_id"].as_str())
            .collect();
        for other in ids.iter().filter(|i| **i != node.node_id) {
            assert!(
                shown.contains(&other.as_str()),
                "{} shows {shown:?}",
                node.url
            );
        }
    }
    eprintln!("3 nodes met {:?} after devnet started", started.elapsed());
    // Devnet's defaults (nano, its round length, the shipped round rules): one group.
    train_as_one_group(&devnet, &agent, 3);

    devnet.signal(libc::SIGTERM);
    let status = devnet.wait_exit(Duration::from_secs(40));
    assert_eq!(status.code(), Some(0), "{status}; {}", devnet.logs());
    for node in &devnet.nodes {
        assert!(
            !answers(&node.url),
            "{} still answers after devnet exited",
            node.url
        );
    }
    // The tokens stay for the next run: same node ids.
    for (k, id) in ids.iter().enumerate() {
        let token = dir.path().join(format!("node{}/token", k + 1));
        let out = Command::new(BIN)
            .args(["id", "--token"])
            .arg(std::fs::read_to_string(&token).unwrap().trim())
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);
    }
}

#[test]
fn nodes_die_with_a_sigkilled_devnet() {
    let dir = tempfile::tempdir().unwrap();
    let mut devnet = Devnet::start(dir.path(), 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !devnet.nodes.iter().all(|n| answers(&n.url)) {
        assert!(
            Instant::now() < deadline,
            "nodes did not answer; {}",
            devnet.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    devnet.signal(libc::SIGKILL);
    devnet.wait_exit(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(40);
    while devnet.nodes.iter().any(|n| answers(&n.url)) {
        assert!(
            Instant::now() < deadline,
            "nodes outlived a SIGKILLed devnet; {}",
            devnet.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
