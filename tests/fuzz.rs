//! Fuzzing of every decoder that reads bytes from a peer or a client (issue 14), with a small
//! case count: no panic, every refusal an `Err` with the reason that is counted, valid encodings
//! round-trip, and no decode call allocates more than its input and documented limit allow. The
//! properties live in `tests/fuzz/props.rs`; `cargo bench --bench fuzz` runs them with a large
//! case count. `FUZZ_CASES=N` changes the number of hostile inputs per decoder (default 512).

#[path = "fuzz/props.rs"]
mod props;

use std::sync::Mutex;

use props::{Plan, Report, Target, measured, mutate, targets};

/// The allocation counters are process-wide: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn cases() -> u64 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

fn target(name: &str) -> Target {
    targets()
        .into_iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no target {name}"))
}

fn assert_clean(name: &str, kind: &str, report: &Report) {
    assert!(
        report.findings.is_empty(),
        "{name} ({kind}): {}",
        report.findings.join("\n")
    );
    eprintln!(
        "{name} {kind}: {} cases, peak allocation {} B, reasons {:?}",
        report.cases, report.max_alloc, report.reasons
    );
}

/// Valid encodings (a quarter of the hostile count) round-trip; hostile inputs hold every
/// property. Seeds are fixed so a failure reproduces; proptest shrinks it first.
fn fuzz(name: &str) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = target(name);
    let valid = (t.valid)(&Plan {
        cases: (cases() / 4).max(1),
        budget: None,
        shrink: true,
        seed: 14,
    });
    assert_clean(name, "valid", &valid);
    let hostile = (t.hostile)(&Plan {
        cases: cases(),
        budget: None,
        shrink: true,
        seed: 41,
    });
    assert_clean(name, "hostile", &hostile);
    // The hostile inputs reach past the first check: more than one reason shows up.
    assert!(hostile.reasons.len() > 1, "{name}: {:?}", hostile.reasons);
}

#[test]
fn codec() {
    fuzz("codec");
}

#[test]
fn blob() {
    fuzz("blob");
}

#[test]
fn gossip_heartbeat() {
    fuzz("gossip_heartbeat");
}

#[test]
fn gossip_round() {
    fuzz("gossip_round");
}

#[test]
fn gossip_ledger() {
    fuzz("gossip_ledger");
}

#[test]
fn ledger_proof() {
    fuzz("ledger_proof");
}

#[test]
fn ledger_tx() {
    fuzz("ledger_tx");
}

#[test]
fn tracker_announce() {
    fuzz("tracker_announce");
}

#[test]
fn tracker_peers() {
    fuzz("tracker_peers");
}

#[test]
fn admission() {
    fuzz("admission");
}

#[test]
fn api_bodies() {
    fuzz("api_bodies");
}

/// The allocation bound is real: a 100-byte Δ message whose header claims 2⁶⁰ values allocates
/// nothing, and the counter does see a decode's output vector.
#[test]
fn the_counting_allocator_sees_a_decode_and_a_huge_claim_allocates_nothing() {
    use neuroshard::diloco::codec::{Codec, CodecConfig, decode, encode};
    use props::Mutation;
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let values = vec![0.5f32; 20];
    // fp32: a 100-byte message below holds a whole header and values (int8, the default, is
    // shorter than that for 20 values).
    let fp32 = CodecConfig {
        codec: Codec::Fp32,
        ..CodecConfig::default()
    };
    let bytes = encode(&fp32, &values);
    // The counter is process-wide: another thread freeing memory meanwhile lowers the peak
    // seen, never raises it, so the largest of a few measurements is the decode's.
    let extra = (0..3)
        .map(|_| {
            let (decoded, extra) = measured(|| decode(&bytes, 20, f32::INFINITY));
            assert_eq!(decoded.unwrap(), values);
            extra
        })
        .max()
        .unwrap();
    assert!(extra >= 80, "{extra}");
    let huge = mutate(&bytes, &[Mutation::PutU64At(8, 1 << 60, false)]);
    let (refused, extra) = measured(|| decode(&huge, 1 << 60, f32::INFINITY));
    assert!(refused.is_err());
    assert_eq!(extra, 0);
    // A receiver that expects 2^28 values still allocates nothing for a 100-byte message.
    let (refused, extra) = measured(|| decode(&huge[..100], 1 << 28, f32::INFINITY));
    assert!(refused.is_err());
    assert_eq!(extra, 0);
}
