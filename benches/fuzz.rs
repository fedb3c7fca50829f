//! Issue 14: the decoder properties of `tests/fuzz/props.rs` with a large case count, in release.
//! For each decoder of peers' and clients' bytes: hostile inputs (valid encodings mutated byte by
//! byte or field by field, random bytes) for a time budget, checking no panic, a named reason for
//! every refusal, valid round trips and an allocation bound; prints cases, time, cases/s, the
//! reasons seen, the largest allocation of one decode, and anything found.
//!
//! Baseline, measured in the same run: the throughput of the same decoder on valid encodings
//! only (the round-trip property). The ratio hostile/valid says what hostile input costs a
//! node relative to honest input (above 1: refusing is cheaper than accepting).
//!
//!   cargo bench --bench fuzz -- [--seconds 12] [--cases 1000000] [--seed 1] [--only NAME]

#[path = "../tests/fuzz/props.rs"]
mod props;

mod common;
use common::arg;

use std::time::Duration;

use props::{Plan, targets};

fn main() {
    let seconds = arg("--seconds", 12) as u64;
    let max_cases = arg("--cases", 1_000_000) as u64;
    let seed = arg("--seed", 1) as u64;
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    println!(
        "fuzz: {seconds} s of hostile inputs per decoder (at most {max_cases} cases), \
         valid baseline {} s, seed {seed}",
        (seconds / 4).max(1)
    );
    println!(
        "| decoder | hostile cases | time s | cases/s | valid cases/s (baseline) | ratio | \
         peak alloc of one call | found |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut details = Vec::new();
    let mut found_any = false;
    for target in targets() {
        if only.as_deref().is_some_and(|o| o != target.name) {
            continue;
        }
        let valid = (target.valid)(&Plan {
            cases: max_cases,
            budget: Some(Duration::from_secs((seconds / 4).max(1))),
            shrink: false,
            seed,
        });
        let hostile = (target.hostile)(&Plan {
            cases: max_cases,
            budget: Some(Duration::from_secs(seconds)),
            shrink: false,
            seed: seed.wrapping_add(1),
        });
        let findings: Vec<String> = valid
            .findings
            .iter()
            .chain(&hostile.findings)
            .cloned()
            .collect();
        found_any |= !findings.is_empty();
        println!(
            "| {} | {} | {:.1} | {:.0} | {:.0} | {:.2} | {} | {} |",
            target.name,
            hostile.cases,
            hostile.elapsed.as_secs_f64(),
            hostile.cases_per_s(),
            valid.cases_per_s(),
            hostile.cases_per_s() / valid.cases_per_s(),
            human_bytes(hostile.max_alloc.max(valid.max_alloc)),
            if findings.is_empty() {
                "nothing".to_string()
            } else {
                format!("{} finding(s)", findings.len())
            },
        );
        details.push((target, valid, hostile, findings));
    }
    println!();
    for (target, valid, hostile, findings) in &details {
        println!("{} ({})", target.name, target.decoder);
        println!(
            "  valid: {} cases, reasons {:?}",
            valid.cases, valid.reasons
        );
        println!("  hostile reasons: {:?}", hostile.reasons);
        for finding in findings {
            println!("  FOUND: {finding}");
        }
    }
    if found_any {
        std::process::exit(1);
    }
}

fn human_bytes(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}
