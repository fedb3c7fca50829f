//! /api/stats latency under load while the trainer keeps both cores busy: `cargo bench --bench
//! api_latency`. This process is the load generator: open-loop at a fixed rate over keep-alive
//! connections, each request timed from when it was due (not when it was sent), so a stalled server
//! shows up as latency instead of hiding as fewer requests (wrk2's correction for coordinated
//! omission). Baseline, same run: the same load against a node that does not train.
//! Goal: p99 < 10 ms at 1000 requests/s.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Node;

const RATE: f64 = 1000.0;
const CONNECTIONS: usize = 16;
const WARMUP: Duration = Duration::from_secs(3);
const MEASURE: Duration = Duration::from_secs(20);

/// Latencies (ms) of every request of an open-loop run, and the failures.
struct Run {
    latencies_ms: Vec<f64>,
    errors: usize,
    wall_s: f64,
}

fn open_loop(port: u16, path: &str, rate: f64, duration: Duration) -> Run {
    let total = (rate * duration.as_secs_f64()) as usize;
    let start = Instant::now() + Duration::from_millis(100);
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|k| {
            let path = path.to_string();
            std::thread::spawn(move || {
                let mut connection = Connection::open(port);
                let mut latencies = Vec::new();
                let mut errors = 0;
                for i in (k..total).step_by(CONNECTIONS) {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    match connection.get(&path) {
                        Ok(()) => latencies.push(due.elapsed().as_secs_f64() * 1e3),
                        Err(_) => {
                            errors += 1;
                            connection = Connection::open(port);
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut run = Run {
        latencies_ms: Vec::with_capacity(total),
        errors: 0,
        wall_s: 0.0,
    };
    for thread in threads {
        let (latencies, errors) = thread.join().unwrap();
        run.latencies_ms.extend(latencies);
        run.errors += errors;
    }
    run.wall_s = start.elapsed().as_secs_f64();
    run.latencies_ms.sort_by(f64::total_cmp);
    run
}

impl Run {
    fn percentile(&self, p: f64) -> f64 {
        let i = ((self.latencies_ms.len() as f64 - 1.0) * p / 100.0).round() as usize;
        self.latencies_ms[i]
    }

    fn print(&self, label: &str) {
        println!(
            "{label:<34} {:>6} req  {:>6.0} req/s  p50 {:>6.2} ms  p90 {:>6.2}  p99 {:>6.2}  p99.9 {:>6.2}  max {:>7.2}  errors {}",
            self.latencies_ms.len(),
            self.latencies_ms.len() as f64 / self.wall_s,
            self.percentile(50.0),
            self.percentile(90.0),
            self.percentile(99.0),
            self.percentile(99.9),
            self.latencies_ms.last().copied().unwrap_or(0.0),
            self.errors
        );
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    fn open(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Self {
            reader: BufReader::new(stream),
        }
    }

    fn get(&mut self, path: &str) -> std::io::Result<()> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        self.reader.get_mut().write_all(request.as_bytes())?;
        let mut line = String::new();
        let mut length = None;
        let mut status_ok = false;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line.starts_with("HTTP/1.1 ") {
                status_ok = line.starts_with("HTTP/1.1 200");
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse::<usize>().ok();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length.ok_or(std::io::ErrorKind::InvalidData)?];
        self.reader.read_exact(&mut body)?;
        if status_ok {
            Ok(())
        } else {
            Err(std::io::ErrorKind::InvalidData.into())
        }
    }
}

/// CPU seconds (user + system) the process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: f64 =
        fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
    ticks / 100.0 // USER_HZ
}

/// CPU share (1.0 = one core) and tokens/s of a node over `window`, with no requests.
fn unloaded(node: &Node, window: Duration) -> (f64, f64) {
    let pid = node.pid().unwrap();
    let (cpu_before, tokens_before) = (cpu_seconds(pid), tokens_seen(node));
    std::thread::sleep(window);
    let seconds = window.as_secs_f64();
    (
        (cpu_seconds(pid) - cpu_before) / seconds,
        (tokens_seen(node) - tokens_before) as f64 / seconds,
    )
}

fn tokens_seen(node: &Node) -> u64 {
    node.stats()["tokens_seen"].as_u64().unwrap()
}

fn measure(node: &Node, label: &str) -> Run {
    open_loop(node.port, "/api/stats", RATE, WARMUP);
    let pid = node.pid().unwrap();
    let (cpu_before, tokens_before) = (cpu_seconds(pid), tokens_seen(node));
    let run = open_loop(node.port, "/api/stats", RATE, MEASURE);
    let cpu = (cpu_seconds(pid) - cpu_before) / run.wall_s;
    let tokens = tokens_seen(node) - tokens_before;
    run.print(label);
    println!(
        "{:<34} node process used {:.0}% CPU; trained {:.0} tokens/s meanwhile",
        "",
        cpu * 100.0,
        tokens as f64 / run.wall_s
    );
    run
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "GET /api/stats, open loop at {RATE} req/s over {CONNECTIONS} keep-alive connections, {} s per run, {cores} cores",
        MEASURE.as_secs()
    );
    let dir = tempfile::tempdir().unwrap();

    let idle = Node::start(
        &dir.path().join("idle"),
        &["--preset", "micro", "--no-training"],
        &[],
    );
    let baseline = measure(&idle, "baseline: node not training");
    drop(idle);

    let busy = Node::start(&dir.path().join("busy"), &["--preset", "micro"], &[]);
    busy.wait_for("training to run", Duration::from_secs(120), |n| {
        n.stats()["tokens_per_sec"].as_f64().unwrap_or(0.0) > 0.0
    });
    let loaded = measure(&busy, "training on every core");
    let (cpu, tokens_per_sec) = unloaded(&busy, Duration::from_secs(10));
    println!(
        "the same node, no requests: {:.0}% CPU, {tokens_per_sec:.0} tokens/s",
        cpu * 100.0
    );

    // The trainer leaves part of a core idle between kernels; a spinning process takes the rest, so
    // the API competes for truly saturated cores.
    let mut spinner = std::process::Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .spawn()
        .expect("start a busy loop");
    let saturated = measure(&busy, "training + a busy loop (cores full)");
    let _ = spinner.kill();
    let _ = spinner.wait();

    for (run, label) in [(&loaded, "while training"), (&saturated, "with cores full")] {
        let p99 = run.percentile(99.0);
        println!(
            "p99 {label}: {p99:.2} ms ({:.2}x the idle node's {:.2} ms); goal < 10 ms: {}",
            p99 / baseline.percentile(99.0),
            baseline.percentile(99.0),
            if p99 < 10.0 { "met" } else { "NOT met" }
        );
    }
}
