//! Robust aggregation speed (issue 4, benchmark b): the time of each rule of
//! `neuroshard::aggregate` on n = 16 pseudo-gradients of 10M f32 with f = 3, against one
//! memory-bandwidth pass over the same data measured in the same run (goal: each one-shot rule
//! within 2× of it, centered clipping within 2× per read of the inputs), and against numpy
//! (benches/aggregate_numpy.py, 2 threads) where numpy is installed.
//!
//!   cargo bench --bench aggregate -- [--d 10000000] [--n 16] [--f 3] [--runs 3]
//!                                    [--rules mean,krum] [--codec int8|fp32] [--skip-numpy]
//!
//! `--codec`: how the inputs reached the aggregator. int8 (the shipped codec, the default): each
//! input is its int8 message decoded, codes kept, as nodes hold them, so the pairwise rules read
//! the codes; fp32: plain values.
//!
//! Each measurement is the median of `runs` after one warm-up. Also prints the fp16 codec's
//! encode and decode time for one input vector (the step before aggregation). Peak memory: the
//! n·d inputs (640 MB at the defaults) plus a few d-sized outputs; the inputs are dropped before
//! numpy runs (its own copy of the data and its sort/median temporaries: 1.4 GB at the defaults).

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use neuroshard::aggregate::{AggregationConfig, Contribution, Rule, aggregate};
use neuroshard::diloco::codec::{Codec, CodecConfig, decode, encode};
use neuroshard::model::backend::keep_freed_memory_in_heap;
use rayon::prelude::*;
use serde_json::Value;

/// The one-pass baseline and input generation work on blocks of this many coordinates.
const BLOCK: usize = 4096;
/// The goal (issue 17): a one-shot rule within this factor of one pass over the inputs, an
/// iterative one (centered clipping) within it per read of the inputs.
const GOAL: f64 = 2.0;

/// How often `rule` reads the inputs as implemented, for the per-read column: most rules fuse
/// everything into one pass; Multi-Krum and the geometric median combine the inputs after their
/// distance pass; centered clipping reads them for its median and once per iteration.
fn reads(rule: Rule, config: &AggregationConfig) -> usize {
    match rule {
        Rule::MultiKrum | Rule::GeometricMedian => 2,
        Rule::CenteredClip => 1 + config.clip_iterations,
        _ => 1,
    }
}

struct Args {
    n: usize,
    d: usize,
    f: usize,
    runs: usize,
    rules: Vec<Rule>,
    codec: Codec,
    skip_numpy: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        n: 16,
        d: 10_000_000,
        f: 3,
        runs: 3,
        rules: Rule::ALL.to_vec(),
        codec: Codec::Int8,
        skip_numpy: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--n" => args.n = value().parse().expect("--n N"),
            "--d" => args.d = value().parse().expect("--d N"),
            "--f" => args.f = value().parse().expect("--f N"),
            "--runs" => args.runs = value().parse().expect("--runs N"),
            "--rules" => {
                args.rules = value()
                    .split(',')
                    .map(|name| {
                        *Rule::ALL
                            .iter()
                            .find(|r| r.name() == name)
                            .unwrap_or_else(|| panic!("unknown rule {name}"))
                    })
                    .collect()
            }
            "--codec" => {
                args.codec = match value().as_str() {
                    "int8" => Codec::Int8,
                    "fp32" => Codec::Fp32,
                    other => panic!("--codec int8|fp32, not {other}"),
                }
            }
            "--skip-numpy" => args.skip_numpy = true,
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(args.runs >= 1, "--runs must be at least 1");
    args
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Seconds of each of `runs` timed calls of `f`, after one untimed warm-up. What `f` returns is
/// dropped inside the timing, as a caller of the library would drop it.
fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> Vec<f64> {
    drop(f());
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            drop(std::hint::black_box(f()));
            start.elapsed().as_secs_f64()
        })
        .collect()
}

/// A uniform number in [−1, 1) from (stream, index): SplitMix64's finaliser on a counter, so the
/// inputs are the same whatever the thread count.
fn noise(stream: u64, index: usize) -> f32 {
    let mut z = stream
        .wrapping_mul(0xD1B5_4A32_D192_ED03)
        .wrapping_add((index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// n − f honest Δs = centre + noise (centre uniform in ±1e-2 per coordinate, noise ±1e-3: norms
/// ~18 and ~1.8 at d = 10M), and f attackers sending −100 × centre.
fn inputs(n: usize, d: usize, f: usize) -> Vec<Contribution> {
    let fill = |v: &mut [f32], value: &(dyn Fn(usize) -> f32 + Sync)| {
        v.par_chunks_mut(BLOCK).enumerate().for_each(|(b, chunk)| {
            for (j, x) in chunk.iter_mut().enumerate() {
                *x = value(b * BLOCK + j);
            }
        })
    };
    let mut centre = vec![0.0f32; d];
    fill(&mut centre, &|j| 1e-2 * noise(0, j));
    (0..n)
        .map(|i| {
            let mut delta = vec![0.0f32; d];
            if i < n - f {
                fill(&mut delta, &|j| centre[j] + 1e-3 * noise(i as u64 + 1, j));
                Contribution::new(format!("honest{i}"), delta)
            } else {
                fill(&mut delta, &|j| -100.0 * centre[j]);
                Contribution::new(format!("attacker{}", i - (n - f)), delta)
            }
        })
        .collect()
}

/// `cs` as an aggregator holds them after int8 messages with the shipped block size: each one
/// encoded, then decoded with its codes kept.
fn as_int8_messages(cs: Vec<Contribution>) -> Vec<Contribution> {
    let int8 = CodecConfig::default();
    assert_eq!(int8.codec, Codec::Int8, "the shipped codec");
    cs.into_iter()
        .map(|c| {
            let bytes = Arc::new(encode(&int8, &c.delta));
            Contribution::decoded(c.node_id, bytes, c.delta.len(), f32::INFINITY)
                .expect("an int8 message decodes")
        })
        .collect()
}

/// The baseline: read all n·d inputs once and write d outputs (their sum), block by block on all
/// threads, into a freshly allocated output as the rules do.
fn one_pass(cs: &[Contribution]) -> Vec<f32> {
    let d = cs[0].delta.len();
    let mut out = vec![0.0f32; d];
    out.par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(b, chunk)| {
            let start = b * BLOCK;
            let end = start + chunk.len();
            chunk.copy_from_slice(&cs[0].delta[start..end]);
            for c in &cs[1..] {
                for (o, x) in chunk.iter_mut().zip(&c.delta[start..end]) {
                    *o += x;
                }
            }
        });
    out
}

/// numpy's seconds per rule, or why there are none.
fn numpy_times(args: &Args) -> Result<(String, Vec<(String, f64)>), String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/aggregate_numpy.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["--n", &args.n.to_string()])
        .args(["--d", &args.d.to_string()])
        .args(["--f", &args.f.to_string()])
        .args(["--runs", &args.runs.to_string()])
        .env("OMP_NUM_THREADS", "2")
        .env("OPENBLAS_NUM_THREADS", "2")
        .env("MKL_NUM_THREADS", "2")
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or("").to_string();
        return Err(format!("{}: {last}", out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().ok_or("no output")?;
    let json: Value = serde_json::from_str(line).map_err(|e| format!("bad JSON: {e}"))?;
    let version = json["numpy"].as_str().unwrap_or("?").to_string();
    let times = json["seconds"]
        .as_object()
        .ok_or("no \"seconds\" in the output")?
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
        .collect();
    Ok((version, times))
}

fn ms(seconds: f64) -> String {
    if seconds < 0.1 {
        format!("{:.1} ms", seconds * 1e3)
    } else {
        format!("{:.0} ms", seconds * 1e3)
    }
}

fn main() {
    keep_freed_memory_in_heap(); // as the node does
    let args = parse_args();
    let (n, d, f) = (args.n, args.d, args.f);
    println!(
        "aggregation of n = {n} Δs of d = {d} f32 ({:.0} MB), f = {f}, {} rayon threads; median of {} runs after 1 warm-up",
        (n * d * 4) as f64 / 1e6,
        rayon::current_num_threads(),
        args.runs
    );
    let start = Instant::now();
    let cs = inputs(n, d, f);
    let (cs, reached_as) = match args.codec {
        Codec::Int8 => (as_int8_messages(cs), "int8 messages (codes kept)"),
        _ => (cs, "fp32 values"),
    };
    println!(
        "inputs: {} honest around a common centre, {f} attackers at −100 × centre, as {reached_as} (built in {:.1} s)",
        n - f,
        start.elapsed().as_secs_f64()
    );

    let pass_bytes = ((n + 1) * d * 4) as f64;
    let mut pass_samples = time(args.runs, || one_pass(&cs));

    let mut results = Vec::new();
    for &rule in &args.rules {
        let config = AggregationConfig {
            rule,
            byzantine: f,
            byzantine_fraction: 0.0,
            ..AggregationConfig::default()
        };
        let out = aggregate(&config, 0, &cs).expect("aggregation runs");
        assert_eq!(out.rule_used, rule, "{}", out.reason);
        let kept = out.verdicts.iter().filter(|v| v.kept).count();
        let attackers_kept = out.verdicts[n - f..].iter().filter(|v| v.kept).count();
        drop(out);
        let seconds = median(time(args.runs, || aggregate(&config, 0, &cs).unwrap()));
        println!(
            "  {:<16} {:>9}   kept {kept} of {n}, {attackers_kept} of them attackers",
            rule.name(),
            ms(seconds),
        );
        results.push((rule, seconds, reads(rule, &config)));
    }
    // The pass again after the rules, so both ends of the run are in its median.
    pass_samples.extend(time(args.runs, || one_pass(&cs)));
    let pass = median(pass_samples.clone());

    let fp16 = CodecConfig {
        codec: Codec::Fp16,
        ..CodecConfig::default()
    };
    let encode_s = median(time(args.runs, || encode(&fp16, &cs[0].delta)));
    let bytes = encode(&fp16, &cs[0].delta);
    let decode_s = median(time(args.runs, || {
        decode(&bytes, d, f32::INFINITY).expect("fp16 decodes")
    }));
    drop(bytes);
    drop(cs); // numpy holds its own copy next

    let numpy = if args.skip_numpy {
        Err("skipped (--skip-numpy)".to_string())
    } else {
        numpy_times(&args)
    };

    println!();
    println!(
        "one pass (read {n}×{d} f32, write {d}): {} = {:.1} GB/s (samples: {})",
        ms(pass),
        pass_bytes / pass / 1e9,
        pass_samples
            .iter()
            .map(|&s| format!("{:.1}", s * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    );
    match &numpy {
        Ok((version, _)) => println!("numpy {version}, 2 threads (benches/aggregate_numpy.py)"),
        Err(e) => println!("numpy unavailable: {e}"),
    }
    println!(
        "{:<16} {:>9} {:>9} {:>6} {:>10} {:>8} {:>10} {:>11}",
        "rule", "time", "× pass", "reads", "× per read", "≤ 2×", "numpy", "Rust/numpy"
    );
    for &(rule, seconds, reads) in &results {
        let ratio = seconds / pass;
        let per_read = ratio / reads as f64;
        let judged = if rule == Rule::CenteredClip {
            per_read
        } else {
            ratio
        };
        let numpy_s = numpy
            .as_ref()
            .ok()
            .and_then(|(_, t)| t.iter().find(|(k, _)| k == rule.name()).map(|x| x.1));
        let (numpy_col, vs_numpy) = match numpy_s {
            Some(t) => (ms(t), format!("{:.2}×", seconds / t)),
            None => ("–".to_string(), "–".to_string()),
        };
        println!(
            "{:<16} {:>9} {:>8.1}× {:>6} {:>9.1}× {:>8} {:>10} {:>11}",
            rule.name(),
            ms(seconds),
            ratio,
            reads,
            per_read,
            if judged <= GOAL { "yes" } else { "NO" },
            numpy_col,
            vs_numpy
        );
    }
    println!();
    println!(
        "fp16 codec, one Δ of {d} values: encode {}, decode (checks included) {}",
        ms(encode_s),
        ms(decode_s)
    );
}
