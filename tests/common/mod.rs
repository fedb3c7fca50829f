//! Starting real `neuroshard` processes on free loopback ports, and stopping them even when a test
//! fails (Drop kills what is still running).

#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_neuroshard");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A started `neuroshard` process answering HTTP on 127.0.0.1:`port`; killed on drop, so a failing
/// test leaves nothing running.
pub struct Process {
    child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
    agent: ureq::Agent,
    what: &'static str,
}

impl Process {
    /// Spawns `cmd` (stderr to `log`) and waits until GET `ready_path` answers 200.
    fn spawn(
        mut cmd: Command,
        port: u16,
        log: PathBuf,
        what: &'static str,
        ready_path: &str,
    ) -> Self {
        let log_file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            // Below actix's 5 s keep-alive: a connection idle longer may be closed by the server
            // as the request goes out on it (a node resumed after SIGSTOP closes its expired
            // ones at once), which read as "the node does not answer".
            .max_idle_age(Duration::from_secs(2))
            .build()
            .new_agent();
        let mut process = Self {
            child: Some(child),
            port,
            log,
            agent,
            what,
        };
        let start = Instant::now();
        while process.try_get(ready_path).is_none_or(|(s, _)| s != 200) {
            if let Some(status) = process.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{what} exited with {status}; log:\n{}", process.log_tail());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{what} did not answer within 60 s; log:\n{}",
                process.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        process
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// (status, JSON body), or why the process gave neither.
    fn request(&self, path: &str) -> Result<(u16, Value), String> {
        let mut resp = self
            .agent
            .get(&self.url(path))
            .call()
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_json()
            .map_err(|e| format!("status {status}, body not JSON: {e}"))?;
        Ok((status, body))
    }

    /// (status, JSON body) or None when the process does not answer.
    pub fn try_get(&self, path: &str) -> Option<(u16, Value)> {
        self.request(path).ok()
    }

    /// GET of a text resource (e.g. /metrics) that must answer 200.
    pub fn get_text(&self, path: &str) -> String {
        let mut resp = self.agent.get(&self.url(path)).call().expect("GET");
        assert_eq!(resp.status().as_u16(), 200, "GET {path}");
        resp.body_mut().read_to_string().expect("text body")
    }

    /// GET that must answer: (status, JSON body).
    pub fn get_with_status(&self, path: &str) -> (u16, Value) {
        self.request(path)
            .unwrap_or_else(|e| panic!("GET {path} failed: {e}; log:\n{}", self.log_tail()))
    }

    /// GET that must answer 200: the JSON body.
    pub fn get(&self, path: &str) -> Value {
        let (status, body) = self.get_with_status(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// POSTs a raw body; returns (status, JSON body).
    pub fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        let mut resp = self
            .agent
            .post(&self.url(path))
            .header("content-type", "application/json")
            .send(body)
            .expect("POST");
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_json().expect("JSON body"))
    }

    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, &body.to_string())
    }

    /// POST with `Authorization: Bearer <key>`.
    pub fn post_with_key(&self, path: &str, key: &str, body: &Value) -> (u16, Value) {
        let mut resp = self
            .agent
            .post(&self.url(path))
            .header("content-type", "application/json")
            .header("authorization", &format!("Bearer {key}"))
            .send(body.to_string())
            .expect("POST");
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_json().expect("JSON body"))
    }

    pub fn wait_for(&self, what: &str, timeout: Duration, mut ok: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while !ok(self) {
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}; log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not exit within 60 s of SIGTERM; log:\n{}",
                    self.what,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The operating system's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A node: `neuroshard` on the nano preset, with the API on a free port and libp2p on loopback.
pub type Node = Process;

impl Node {
    /// Starts a node with state in `state_dir`, logging to state_dir/../<port>.log.
    pub fn start(state_dir: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let log = state_dir.with_extension(format!("{port}.log"));
        let mut cmd = Command::new(BIN);
        if !extra_args.contains(&"--preset") {
            cmd.args(["--preset", "nano"]);
        }
        cmd.args(["--port", &port.to_string(), "--state-dir"])
            .arg(state_dir)
            .args(extra_args)
            .env("NEUROSHARD_TRAINING__LOG_EVERY", "20")
            // Loopback only, no multicast, quick heartbeats: tests see the network settle in seconds.
            .env("NEUROSHARD_NETWORK__MDNS", "false")
            .env("NEUROSHARD_NETWORK__HEARTBEAT_INTERVAL_S", "1");
        if !extra_args.contains(&"--listen") {
            cmd.args(["--listen", "/ip4/127.0.0.1/tcp/0"]);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd, port, log, "node", "/api/health")
    }

    pub fn stats(&self) -> Value {
        self.get("/api/stats")
    }

    pub fn peer_id(&self) -> String {
        self.stats()["peer_id"].as_str().unwrap().to_string()
    }

    /// The node's own multiaddr with /p2p/, as a --seed-peers value (once the Swarm listens).
    pub fn p2p_addr(&self) -> String {
        let mut addr = None;
        self.wait_for("a p2p listen address", Duration::from_secs(10), |n| {
            addr = n.get("/api/network")["listen_addrs"][0]
                .as_str()
                .map(str::to_string);
            addr.is_some()
        });
        addr.unwrap()
    }

    /// Starts `neuroshard tracker` on a free loopback port, logging into `dir`.
    pub fn start_tracker(dir: &Path) -> Self {
        let port = free_port();
        let mut cmd = Command::new(BIN);
        cmd.args([
            "tracker",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ]);
        Self::spawn(
            cmd,
            port,
            dir.join(format!("tracker-{port}.log")),
            "tracker",
            "/health",
        )
    }
}

pub fn f64_of(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

/// Polls `ok` until it holds; on timeout, fails with the logs of `nodes`.
pub fn wait_until(what: &str, timeout: Duration, nodes: &[&Node], mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > timeout {
            let logs: Vec<String> = nodes.iter().map(|n| n.log_tail()).collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}; logs:\n{}",
                logs.join("\n-----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A fixed token per node index, so repeated runs have the same identities (and data orders).
pub fn fixed_token(i: usize) -> String {
    format!("{:064x}", i + 1)
}

/// `Node::start` with owned flags and environment.
pub fn start_owned(state_dir: &Path, flags: &[String], env: &[(String, String)]) -> Node {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Node::start(state_dir, &flags, &env)
}

/// Starts `count` nodes in `dir`: node 0 alone, the others with node 0 as their seed peer.
/// `args(i)` and `env(i)` give node i's extra flags and environment.
pub fn start_cluster(
    dir: &Path,
    count: usize,
    args: impl Fn(usize) -> Vec<String>,
    env: impl Fn(usize) -> Vec<(String, String)>,
) -> Vec<Node> {
    let start = |i: usize, seed: Option<&str>| {
        let mut flags = args(i);
        if let Some(seed) = seed {
            flags.extend(["--seed-peers".to_string(), seed.to_string()]);
        }
        start_owned(&dir.join(format!("n{i}")), &flags, &env(i))
    };
    let first = start(0, None);
    let seed = first.p2p_addr();
    let mut nodes = vec![first];
    for i in 1..count {
        nodes.push(start(i, Some(&seed)));
    }
    nodes
}

/// Node 0's validation loss at the end of round `rounds` (H = `inner_steps`). With evaluations
/// only at round ends (eval_every > the run), the loss published from step k·H until the next
/// round's end is round k's, so polling catches it anywhere in that window.
pub fn val_loss_at_round(nodes: &[Node], rounds: u64, inner_steps: u64, timeout: Duration) -> f64 {
    let window = rounds * inner_steps..(rounds + 1) * inner_steps;
    let mut val = None;
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_until(&format!("round {rounds}"), timeout, &refs, || {
        let stats = nodes[0].stats();
        let step = stats["global_step"].as_u64().unwrap_or(0);
        assert!(
            step < window.end,
            "round {rounds} passed unobserved (step {step})"
        );
        if window.contains(&step) {
            val = stats["val_loss"].as_f64();
        }
        val.is_some()
    });
    val.unwrap()
}

/// Environment for `key=value` pairs.
pub fn env_of(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Reads the dashboard's event stream (GET /api/events) of the node on `port` until an event named
/// `until` has arrived; returns the raw response, headers included.
pub fn read_events(port: u16, until: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(
            b"GET /api/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
        )
        .unwrap();
    let marker = format!("event: {until}\n");
    let mut received = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let text = String::from_utf8_lossy(&received);
        if let Some(at) = text.find(&marker)
            && text[at..].contains("\n\n")
        {
            return text.into_owned();
        }
        let n = stream
            .read(&mut buf)
            .expect("the event stream keeps sending");
        assert!(n > 0, "the event stream ended: {text}");
        received.extend_from_slice(&buf[..n]);
    }
}

/// The data of the first event named `name` in `raw` (as read by [`read_events`]).
pub fn event_data(raw: &str, name: &str) -> Value {
    let at = raw
        .find(&format!("event: {name}\n"))
        .unwrap_or_else(|| panic!("no {name} event in {raw}"));
    let data = raw[at..]
        .lines()
        .nth(1)
        .and_then(|line| line.strip_prefix("data: "))
        .expect("a data line after the event line");
    serde_json::from_str(data).expect("event data is JSON")
}

/// A finished command's stdout then stderr, as text: what a failing assertion shows.
pub fn combined_output(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `probe` (e.g. `chromium --version`) and returns its output; fails the test (never skips
/// it) naming what is missing: `./test.sh`, the README's test command, sets up every such tool.
pub fn require_tool(probe: &mut Command, what: &str, install: &str) -> String {
    let problem = match probe.output() {
        Ok(out) if out.status.success() => {
            return String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        Ok(out) => format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr)),
        Err(e) => e.to_string(),
    };
    panic!(
        "this test needs {what}, which is missing ({problem}): run the tests with ./test.sh, \
         which sets it up, or {install}"
    )
}

/// tests/python/`name`.
pub fn python_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// A process's resident memory, from /proc/<pid>/status, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// VmRSS: resident now.
    pub rss_kib: u64,
    /// VmHWM: the peak resident size so far.
    pub hwm_kib: u64,
}

/// VmRSS and VmHWM out of the text of a /proc/<pid>/status file (pure).
pub fn parse_memory(status: &str) -> Option<Memory> {
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    Some(Memory {
        rss_kib: field("VmRSS")?,
        hwm_kib: field("VmHWM")?,
    })
}

/// The memory of process `pid` now (None once it has exited, or where there is no /proc).
pub fn memory_of(pid: u32) -> Option<Memory> {
    parse_memory(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

impl Process {
    /// This process's memory now (None once it has exited).
    pub fn memory(&self) -> Option<Memory> {
        memory_of(self.pid()?)
    }
}

/// `neuroshard network init` into `dir` (nano preset, network `id`): the genesis file and the
/// authority key file.
pub fn network_init(dir: &Path, id: &str) -> (String, String) {
    let out = Command::new(BIN)
        .args(["network", "init", "--out", dir.to_str().unwrap()])
        .args(["--preset", "nano", "--network-id", id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", combined_output(&out));
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    (path("genesis.json"), path("authority.key"))
}

/// `neuroshard network admit` for `token`'s node, written to `file`.
pub fn admit(
    genesis: &str,
    key: &str,
    token: &str,
    file: &Path,
) -> neuroshard::admission::Certificate {
    let node_id = neuroshard::crypto::Identity::from_token(token)
        .unwrap()
        .node_id;
    let out = Command::new(BIN)
        .args(["network", "admit", "--genesis", genesis])
        .args(["--authority-key", key, "--node-id", &node_id, "--days", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", combined_output(&out));
    std::fs::write(file, &out.stdout).unwrap();
    neuroshard::admission::Certificate::from_json(&String::from_utf8_lossy(&out.stdout)).unwrap()
}

/// A node's balance table (GET /api/ledger/balances `accounts`).
pub fn balances(node: &Node) -> Value {
    node.get("/api/ledger/balances")["accounts"].clone()
}

/// A node's verdict on a proof it holds.
#[derive(Debug, PartialEq)]
struct Held {
    claimant: String,
    status: String,
    /// Credited nano-NEURO.
    credited: Option<u64>,
    /// When the proof was made (unix ms).
    timestamp_ms: u64,
}

/// A node's verdict on each proof it holds, by proof id.
type Verdicts = BTreeMap<String, Held>;

/// A node's balance table and its verdicts on the proofs of every account in it, read so that
/// they belong together: the table read before and after the proof lists is the same, so no
/// proof was credited in between.
fn ledger_read(node: &Node) -> (Value, Verdicts) {
    loop {
        let before = balances(node);
        let mut verdicts = Verdicts::new();
        for id in before
            .as_object()
            .into_iter()
            .flat_map(|table| table.keys())
        {
            let listed = node.get(&format!("/api/ledger/proofs/{id}?limit=1000"))["proofs"].clone();
            let listed = listed.as_array().cloned().unwrap_or_default();
            assert!(
                listed.len() < 1000,
                "{id} holds over 1000 proofs: the lists are cut"
            );
            for p in listed {
                let verdict = Held {
                    claimant: id.clone(),
                    status: p["status"].as_str().unwrap_or_default().to_string(),
                    credited: p["credited"].as_u64(),
                    timestamp_ms: p["proof"]["timestamp_ms"].as_u64().unwrap_or_default(),
                };
                verdicts.insert(p["id"].as_str().unwrap().to_string(), verdict);
            }
        }
        if balances(node) == before {
            return (before, verdicts);
        }
    }
}

/// Polls until every node of `nodes` holds the same balance table over the proofs they all hold
/// with the same verdict, and every proof they disagreed on at the first look is agreed; returns
/// that table (per account `balance`, `balance_nano`, `proof_count`). Proofs keep streaming and
/// each node settles them when their inputs reach it (a round's verdict, uptime witnesses), so the
/// full tables of live nodes need not ever match at one instant; what must hold is that every
/// verdict converges and no proof is credited by one node and refused by another. After 120 s
/// (an uptime proof a node held late settles an uptime interval later, `witness::settle_wait`)
/// fails with the tables and `diagnose()`.
pub fn agreed_balances(nodes: &[Node], diagnose: impl Fn() -> String) -> Value {
    agreed_balances_since(nodes, 0, diagnose)
}

/// `agreed_balances` over the proofs made at or after `since_ms` (unix ms); of earlier ones only
/// that no node credits what another refuses. Gossip is not stored and forwarded: a node that was
/// stopped or partitioned misses the proofs and round verdicts made meanwhile until history sync
/// brings them with the checkpoint of their epoch, but what is made once the network is whole
/// again must agree.
pub fn agreed_balances_since(
    nodes: &[Node],
    since_ms: u64,
    diagnose: impl Fn() -> String,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut first_disputed: Option<BTreeSet<String>> = None;
    loop {
        let reads: Vec<(Value, Verdicts)> = nodes.iter().map(ledger_read).collect();
        let ids: BTreeSet<&String> = reads.iter().flat_map(|(_, v)| v.keys()).collect();
        let verdicts_of =
            |id: &String| -> Vec<Option<&Held>> { reads.iter().map(|(_, v)| v.get(id)).collect() };
        for id in &ids {
            let settled: BTreeSet<&str> = verdicts_of(id)
                .into_iter()
                .flatten()
                .map(|held| held.status.as_str())
                .filter(|status| *status != "pending")
                .collect();
            assert!(
                settled.len() <= 1,
                "proof {id} settled differently: {:?}",
                verdicts_of(id)
            );
        }
        let (earlier, recent): (BTreeSet<&String>, BTreeSet<&String>) =
            ids.iter().partition(|id| {
                verdicts_of(id)
                    .into_iter()
                    .flatten()
                    .any(|held| held.timestamp_ms < since_ms)
            });
        let disputed: BTreeSet<String> = recent
            .into_iter()
            .filter(|id| verdicts_of(id).windows(2).any(|w| w[0] != w[1]))
            .map(|id| id.to_string())
            .collect();
        let first = first_disputed.get_or_insert_with(|| disputed.clone());
        let left_out: BTreeSet<String> = earlier
            .into_iter()
            .map(|id| id.to_string())
            .chain(disputed.iter().cloned())
            .collect();
        let tables: Vec<Value> = reads
            .iter()
            .map(|(table, verdicts)| agreed_table(table, verdicts, &left_out))
            .collect();
        let converged = first.is_disjoint(&disputed);
        if converged && tables.windows(2).all(|w| w[0] == w[1]) {
            return tables[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "balance tables still differ after 120 s (verdicts per node on the proofs still disputed since the first look: {:?}):\n{}\n{}",
            first
                .intersection(&disputed)
                .map(|id| (id, held_proof(nodes, id, &verdicts_of(id))))
                .collect::<Vec<_>>(),
            tables
                .iter()
                .map(|t| format!("{t:#}"))
                .collect::<Vec<_>>()
                .join("\n---\n"),
            diagnose()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Proof `id` as each node of `nodes` lists it (status, reason, the proof), to explain a dispute.
fn held_proof(nodes: &[Node], id: &str, verdicts: &[Option<&Held>]) -> Vec<Value> {
    nodes
        .iter()
        .zip(verdicts)
        .map(|(node, verdict)| {
            let Some(Held { claimant, .. }) = verdict else {
                return Value::Null;
            };
            let listed =
                node.get(&format!("/api/ledger/proofs/{claimant}?limit=1000"))["proofs"].clone();
            listed
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["id"] == id)
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// `table` without what the `left_out` proofs credited: per account its balance and credited
/// proofs over the proofs every node settled alike.
fn agreed_table(table: &Value, verdicts: &Verdicts, left_out: &BTreeSet<String>) -> Value {
    let mut agreed = serde_json::Map::new();
    for (id, account) in table.as_object().into_iter().flatten() {
        let mut balance = account["balance_nano"].as_u64().unwrap_or_default();
        let mut proofs = account["proof_count"].as_u64().unwrap_or_default();
        for (proof, held) in verdicts {
            if held.claimant == *id && held.status == "credited" && left_out.contains(proof) {
                balance = balance.saturating_sub(held.credited.unwrap_or_default());
                proofs = proofs.saturating_sub(1);
            }
        }
        if balance == 0 && proofs == 0 {
            // An account only the disputed proofs made: not every node holds it yet.
            continue;
        }
        agreed.insert(
            id.clone(),
            serde_json::json!({
                "balance": balance as f64 / 1e9,
                "balance_nano": balance,
                "proof_count": proofs,
            }),
        );
    }
    Value::Object(agreed)
}

/// The validation loss `node`'s trainer logged first in `round` (the θ₀ it started the round
/// from), from its "validation step=S round=R val_loss=V" lines.
pub fn validation_at_round(node: &Node, round: u64) -> Option<f64> {
    let logs = node.get("/api/logs?target=trainer&q=validation&limit=500");
    logs["lines"]
        .as_array()?
        .iter()
        .filter_map(|line| neuroshard::experiment::parse_validation(line["message"].as_str()?))
        .find(|(_, r, _)| *r == round)
        .map(|(_, _, val_loss)| f64::from(val_loss))
}

/// GET /api/diloco.
pub fn diloco(node: &Node) -> Value {
    node.get("/api/diloco")
}

/// The node's outer round and θ₀ hash, as /api/diloco shows them together.
pub fn outer_state(node: &Node) -> (u64, String) {
    let d = diloco(node);
    (
        d["outer_step_count"].as_u64().unwrap(),
        d["theta0_hash"].as_str().unwrap().to_string(),
    )
}
