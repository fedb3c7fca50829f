//! The properties of every decoder that reads a peer's or a client's bytes (issue 14), shared by
//! `tests/fuzz.rs` (a few hundred cases per decoder, in `cargo test`) and `benches/fuzz.rs` (a
//! time budget per decoder, in release). One [`Target`] per decoder: a generator of valid
//! values and their encodings, a generator of hostile inputs (valid encodings mutated byte by
//! byte or field by field, and random bytes), and a check run on each input:
//!
//! - no panic (a panic fails the case; proptest shrinks it to a minimal input);
//! - every refusal is an `Err` with a named reason (the rejection kind the peer table or the
//!   ledger counts, the API's error code), tallied per reason in the [`Report`];
//! - an untouched valid encoding decodes to the value it encodes (round trip);
//! - the peak memory a decode call allocates stays under a bound set by the input's length and
//!   the decoder's documented limit, measured by the counting allocator below.
//!
//! Where the decoding happens inside an actor (PeerActor's gossip validation, the tracker and API
//! handlers), the check calls the same public functions in the same order; the comments name the
//! code they follow.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::executor::block_on;
use futures::io::Cursor;
use libp2p::request_response::Codec as _;
use libp2p::{PeerId, StreamProtocol};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use neuroshard::admission::{Certificate, Genesis, Policy};
use neuroshard::crypto::Identity;
use neuroshard::diloco::codec::{
    Codec, CodecConfig, CodecError, F16_MAX, decode, encode, encoded_len, max_encoded_len,
};
use neuroshard::ledger::proof::{check_signature, sign_proof, sign_receipt};
use neuroshard::ledger::rewards::{RewardSchedule, burn_fee};
use neuroshard::ledger::tx::{check_transaction, sign_transaction};
use neuroshard::ledger::verify::{Offer, ProofHistory, ProofLimits, verify_proof};
use neuroshard::ledger::{
    Proof, ProofKind, ProofRejection, SignedProof, SignedTransaction, Transaction, TxKind,
    TxRejection,
};
use neuroshard::net::announce::{AnnounceError, Announcement, PeerRecord};
use neuroshard::net::blob::{BlobCodec, BlobId, BlobRequest, BlobResponse};
use neuroshard::net::peer_table::{GossipLimits, PeerPolicy, PeerTable};
use neuroshard::net::wire::{
    self, Heartbeat, LedgerMessage, MAX_GOSSIP_BYTES, Rejection, RoundAnnouncement,
    RoundVerdictsWire,
};
use neuroshard::web::{
    ApiError, FetchBlobRequest, GenerateRequest, ReceiptRequest, SendRequest, StakeRequest,
    UnstakeRequest,
};

// ---------------------------------------------------------------------------------------------
// Counting allocator

/// `System`, counting the bytes currently allocated and their peak since the last reset.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

/// `p`, a fresh allocation of `size` bytes, counted if it succeeded.
fn counted_alloc(p: *mut u8, size: usize) -> *mut u8 {
    if !p.is_null() {
        grew(size);
    }
    p
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted_alloc(unsafe { System.alloc(layout) }, layout.size())
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        counted_alloc(unsafe { System.alloc_zeroed(layout) }, layout.size())
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One measurement at a time: the counters are process-wide (a decode may allocate on rayon's
/// threads), so the callers run their checks one after another (tests/fuzz.rs holds a lock).
static MEASURING: Mutex<()> = Mutex::new(());

/// The largest peak seen by [`measured`] since the last [`drive`] began.
static MAX_EXTRA: AtomicUsize = AtomicUsize::new(0);

/// `f()` and the peak number of bytes allocated while it ran, above what was allocated before.
pub fn measured<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let _one = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let value = f();
    let extra = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    MAX_EXTRA.fetch_max(extra, Ordering::Relaxed);
    (value, extra)
}

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// What a JSON decoder may allocate for `len` input bytes: serde_json builds values no more than
/// a small multiple of the text they come from (the worst case is a long array of tiny strings,
/// 24 bytes of `String` per 3 bytes of `"",`, doubled by `Vec` growth), plus a fixed allowance
/// for error messages and signature checks.
fn json_bound(len: usize) -> usize {
    64 * len + 256 * KIB
}

// ---------------------------------------------------------------------------------------------
// Running a property

/// `Ok(reason)`: the input was handled as the decoder promises, with the reason it was refused
/// (or `"ok"`); `Err`: a property failed, and why.
pub type Verdict = Result<&'static str, String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// A decode of `len` bytes, of which the decoder reads at most `read`, allocated `extra` bytes:
/// within [`json_bound`] of `read`.
fn within_json_bound(len: usize, read: usize, extra: usize) -> Result<(), String> {
    ensure!(extra <= json_bound(read), "{len} bytes allocated {extra}");
    Ok(())
}

/// How many inputs to try: `cases`, or as many as fit in `budget`; with `shrink`, a failure is
/// reduced to a minimal input and ends the run (tests), else every failure is recorded and the
/// run goes on (bench).
#[derive(Debug, Clone)]
pub struct Plan {
    pub cases: u64,
    pub budget: Option<Duration>,
    pub shrink: bool,
    pub seed: u64,
}

/// What one run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub cases: u64,
    pub elapsed: Duration,
    /// How the inputs were handled, by reason ("ok" for accepted ones).
    pub reasons: BTreeMap<&'static str, u64>,
    /// The largest allocation peak of one decode call, bytes.
    pub max_alloc: usize,
    /// Failed properties and panics, with the input (shortened).
    pub findings: Vec<String>,
}

impl Report {
    pub fn cases_per_s(&self) -> f64 {
        self.cases as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn shortened(text: String) -> String {
    const MAX: usize = 1500;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}… ({} chars)", &text[..cut], text.chars().count()),
        None => text,
    }
}

fn rng(seed: u64) -> TestRng {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&(!seed).to_le_bytes());
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

/// Runs `check` on inputs drawn from `strategy` as `plan` says.
pub fn drive<S>(strategy: S, check: impl Fn(&S::Value) -> Verdict, plan: &Plan) -> Report
where
    S: Strategy,
    S::Value: Debug,
{
    MAX_EXTRA.store(0, Ordering::Relaxed);
    let reasons = RefCell::new(BTreeMap::<&'static str, u64>::new());
    let mut findings = Vec::new();
    let mut cases = 0u64;
    let started = Instant::now();
    if plan.shrink {
        let config = Config {
            cases: plan.cases.min(u32::MAX as u64) as u32,
            failure_persistence: None,
            max_shrink_iters: 4096,
            ..Config::default()
        };
        let mut runner = TestRunner::new_with_rng(config, rng(plan.seed));
        let counted = std::cell::Cell::new(0u64);
        let result = runner.run(&strategy, |value| {
            counted.set(counted.get() + 1);
            match check(&value) {
                Ok(reason) => {
                    *reasons.borrow_mut().entry(reason).or_default() += 1;
                    Ok(())
                }
                Err(why) => Err(TestCaseError::fail(why)),
            }
        });
        cases = counted.get();
        match result {
            Ok(()) => {}
            Err(TestError::Fail(why, value)) => {
                findings.push(shortened(format!("{why}; minimal input: {value:?}")))
            }
            Err(TestError::Abort(why)) => findings.push(format!("aborted: {why}")),
        }
    } else {
        let mut runner = TestRunner::new_with_rng(Config::default(), rng(plan.seed));
        while cases < plan.cases && plan.budget.is_none_or(|b| started.elapsed() < b) {
            let value = strategy
                .new_tree(&mut runner)
                .expect("the generators reject nothing")
                .current();
            cases += 1;
            match catch_unwind(AssertUnwindSafe(|| check(&value))) {
                Ok(Ok(reason)) => *reasons.borrow_mut().entry(reason).or_default() += 1,
                Ok(Err(why)) => {
                    *reasons.borrow_mut().entry("PROPERTY FAILED").or_default() += 1;
                    if findings.len() < 5 {
                        findings.push(shortened(format!("{why}; input: {value:?}")));
                    }
                }
                Err(panic) => {
                    *reasons.borrow_mut().entry("PANIC").or_default() += 1;
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    if findings.len() < 5 {
                        findings.push(shortened(format!("panic {message:?}; input: {value:?}")));
                    }
                }
            }
        }
    }
    Report {
        cases,
        elapsed: started.elapsed(),
        reasons: reasons.into_inner(),
        max_alloc: MAX_EXTRA.load(Ordering::Relaxed),
        findings,
    }
}

/// One decoder under test.
pub struct Target {
    pub name: &'static str,
    /// Where the bytes go in (file: function).
    pub decoder: &'static str,
    /// Valid encodings only: the round trip, and the bench's baseline throughput.
    pub valid: fn(&Plan) -> Report,
    /// Hostile inputs.
    pub hostile: fn(&Plan) -> Report,
}

/// A [`Target`] whose valid and hostile runs drive `check`: over the decoder's own two
/// generators, or (`json`, `gossip` first) over JSON or gossip cases made from one generator of
/// values. A macro, as `Target` holds plain `fn`s, which capture nothing.
macro_rules! target {
    (json, $name:expr, $decoder:expr, $values:expr, $check:expr) => {
        target!(
            $name,
            $decoder,
            json_valid($values),
            json_hostile($values),
            $check
        )
    };
    (gossip, $name:expr, $decoder:expr, $kind:expr, $check:expr) => {
        target!(
            $name,
            $decoder,
            gossip_valid($kind),
            gossip_hostile($kind),
            $check
        )
    };
    ($name:expr, $decoder:expr, $valid:expr, $hostile:expr, $check:expr) => {
        Target {
            name: $name,
            decoder: $decoder,
            valid: |plan| drive($valid, $check, plan),
            hostile: |plan| drive($hostile, $check, plan),
        }
    };
}

/// Every target, in the order the bench prints them.
pub fn targets() -> Vec<Target> {
    vec![
        target!(
            "codec",
            "src/diloco/codec.rs: decode",
            codec_valid(),
            codec_hostile(),
            check_codec
        ),
        target!(
            "blob",
            "src/net/blob.rs: BlobCodec::read_response, read_request",
            blob_valid(),
            blob_hostile(),
            check_blob
        ),
        target!(
            gossip,
            "gossip_heartbeat",
            "src/net/wire.rs: open::<Heartbeat>, Heartbeat::check; \
             src/net/peer_table.rs: accept_heartbeat (certificate)",
            heartbeat(),
            check_heartbeat
        ),
        target!(
            gossip,
            "gossip_round",
            "src/net/wire.rs: open::<RoundAnnouncement>, RoundAnnouncement::check",
            round_announcement(),
            check_round
        ),
        target!(
            gossip,
            "gossip_ledger",
            "src/net/wire.rs: open::<LedgerMessage>, LedgerMessage::check; \
             src/ledger/proof.rs: check_signature; verify.rs: verify_proof; \
             tx.rs: check_transaction",
            ledger_message(),
            check_ledger_message
        ),
        target!(
            json,
            "ledger_proof",
            "SignedProof JSON (POST /api/ponw/verify) -> src/ledger/verify.rs: \
             verify_proof",
            signed_proof(),
            check_proof_json
        ),
        target!(
            json,
            "ledger_tx",
            "SignedTransaction JSON -> src/ledger/tx.rs: check_transaction",
            signed_tx(),
            check_tx_json
        ),
        target!(
            json,
            "tracker_announce",
            "Announcement JSON (tracker POST /announce) -> src/net/announce.rs: \
             Announcement::verify",
            announcement(),
            check_announcement
        ),
        target!(
            json,
            "tracker_peers",
            "tracker's GET /peers answer -> src/net/announce.rs: \
             PeerRecord::is_well_formed",
            peers_body(),
            check_peers_body
        ),
        target!(
            json,
            "admission",
            "src/admission.rs: Certificate::from_json, verify; Genesis::from_json",
            admission_doc(),
            check_admission
        ),
        target!(
            json,
            "api_bodies",
            "src/web/api.rs, ledger.rs: POST bodies (serde, 64 KiB limit) and their \
             checks",
            api_body(),
            check_api_body
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Fixtures

pub const NOW_MS: u64 = 1_800_000_000_000;
pub const NOW_S: u64 = NOW_MS / 1000;
/// The largest Δ a round announcement may name in these checks (the node's `max_blob_bytes`).
const MAX_DELTA_BYTES: u64 = 64 * 1024 * 1024;
const TOPIC_HEARTBEAT: &str = "neuroshard/fuzznet/heartbeat/1";
const TOPIC_ROUND: &str = "neuroshard/fuzznet/round/1";
const TOPIC_LEDGER: &str = "neuroshard/fuzznet/ledger/1";

/// Four fixed identities: 0 and 1 send, 2 and 3 are the genesis's authorities.
pub fn identity(i: usize) -> &'static Identity {
    static IDS: OnceLock<Vec<Identity>> = OnceLock::new();
    &IDS.get_or_init(|| {
        (1..=4)
            .map(|i| Identity::from_token(&format!("{:064x}", 0xf0220 + i)).unwrap())
            .collect()
    })[i % 4]
}

fn peer_id(i: usize) -> PeerId {
    static PEERS: OnceLock<Vec<PeerId>> = OnceLock::new();
    PEERS.get_or_init(|| (0..4).map(|i| identity(i).peer_id()).collect())[i % 4]
}

/// A PeerId that inlines no secp256k1 key.
fn keyless_peer() -> PeerId {
    static PEER: OnceLock<PeerId> = OnceLock::new();
    *PEER.get_or_init(PeerId::random)
}

/// A permissioned genesis whose authorities are identities 2 and 3, both needed.
pub fn genesis() -> &'static Genesis {
    static GENESIS: OnceLock<Genesis> = OnceLock::new();
    GENESIS.get_or_init(|| {
        Genesis::new(
            "fuzznet",
            "nano",
            Policy::Permissioned,
            &[identity(2).public, identity(3).public],
            2,
            RewardSchedule::default(),
            NOW_S - 86_400,
        )
        .unwrap()
    })
}

/// Identity `i`'s certificate under [`genesis`], valid for a day around NOW.
fn certificate(i: usize) -> &'static Certificate {
    static CERTS: OnceLock<Vec<Certificate>> = OnceLock::new();
    &CERTS.get_or_init(|| {
        (0..4)
            .map(|i| {
                let mut cert = Certificate::unsigned(
                    genesis(),
                    &identity(i).node_id,
                    vec!["trainer".into()],
                    NOW_S - 3600,
                    NOW_S + 86_400,
                );
                cert.sign(identity(2));
                cert.sign(identity(3));
                cert
            })
            .collect()
    })[i % 4]
}

fn peer_table() -> PeerTable {
    PeerTable::new(PeerPolicy {
        heartbeat_interval: Duration::from_secs(1),
        drop_after_intervals: 3,
        gossip_limits: GossipLimits::uniform(1000),
        ban_after_rejections: 1000,
        ban_below_score: -80.0,
        ban_for: Duration::from_secs(60),
    })
    .with_genesis(genesis().clone())
}

fn hex32() -> impl Strategy<Value = String> {
    any::<[u8; 32]>().prop_map(hex::encode)
}

fn near_now_ms() -> impl Strategy<Value = u64> {
    (NOW_MS - 100_000)..(NOW_MS + 100_000)
}

// ---------------------------------------------------------------------------------------------
// Mutations

/// One edit of an encoding. Positions are `Index`es, scaled to the input's length when applied.
#[derive(Debug, Clone)]
pub enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Truncate(Index),
    Extend(Vec<u8>),
    Insert(Index, Vec<u8>),
    Remove(Index, u8),
    /// Repeats a span of up to 64 bytes many times (long inputs, long arrays).
    Repeat(Index, u8, u16),
    /// Overwrites 8 bytes (big-endian when true) with an interesting value: length fields.
    PutU64(Index, u64, bool),
    /// Overwrites 8 bytes at a fixed offset: a format's own length or count field.
    PutU64At(usize, u64, bool),
    PutU32At(usize, u32, bool),
    SetByteAt(usize, u8),
    /// Inserts a JSON token (a huge number, a lone surrogate, deep nesting, a stray comma).
    Splice(Index, &'static str),
}

fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX / 2 + 1),
        Just(u32::MAX as u64),
        Just(1 << 32),
        Just(1 << 40),
        Just(4 << 30),
        0u64..2048,
        any::<u64>(),
    ]
}

const JSON_TOKENS: &[&str] = &[
    "null",
    "-1",
    "0",
    "-0",
    "1e999",
    "-1e999",
    "18446744073709551616",
    "1.5",
    "1e-400",
    "\"\"",
    "[]",
    "{}",
    "\"\\ud800\"",
    "\"\\u0000\"",
    ",",
    "]",
    "}",
    "\"",
    ":",
    "\"x\":1,",
    "\u{feff}",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\
     [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        1 => proptest::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Extend),
        1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => (any::<Index>(), 1u8..64, 1u16..2000).prop_map(|(i, s, n)| Mutation::Repeat(i, s, n)),
        1 => (any::<Index>(), interesting_u64(), any::<bool>())
            .prop_map(|(i, v, be)| Mutation::PutU64(i, v, be)),
        2 => (any::<Index>(), proptest::sample::select(JSON_TOKENS))
            .prop_map(|(i, t)| Mutation::Splice(i, t)),
    ]
}

fn at(index: &Index, len: usize) -> usize {
    if len == 0 { 0 } else { index.index(len) }
}

fn put(bytes: &mut Vec<u8>, offset: usize, value: &[u8]) {
    if bytes.len() < offset + value.len() {
        bytes.resize(offset + value.len(), 0);
    }
    bytes[offset..offset + value.len()].copy_from_slice(value);
}

/// Writes an integer's bytes at `offset`: `big` when `be`, else `little`.
fn put_int<const N: usize>(
    out: &mut Vec<u8>,
    offset: usize,
    be: bool,
    big: [u8; N],
    little: [u8; N],
) {
    put(out, offset, if be { &big } else { &little });
}

/// `bytes` with `mutations` applied in order.
pub fn mutate(bytes: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for m in mutations {
        let len = out.len();
        match m {
            Mutation::FlipBit(i, bit) if len > 0 => out[at(i, len)] ^= 1 << bit,
            Mutation::SetByte(i, v) if len > 0 => out[at(i, len)] = *v,
            Mutation::FlipBit(..) | Mutation::SetByte(..) => out.push(0),
            Mutation::Truncate(i) => out.truncate(at(i, len)),
            Mutation::Extend(tail) => out.extend_from_slice(tail),
            Mutation::Insert(i, b) => {
                let p = at(i, len + 1);
                out.splice(p..p, b.iter().copied());
            }
            Mutation::Remove(i, n) => {
                let p = at(i, len);
                let end = (p + *n as usize).min(len);
                out.drain(p..end);
            }
            Mutation::Repeat(i, span, times) => {
                let p = at(i, len);
                let end = (p + *span as usize).min(len);
                let piece = out[p..end].to_vec();
                let repeated: Vec<u8> = piece
                    .iter()
                    .copied()
                    .cycle()
                    .take(piece.len() * *times as usize)
                    .collect();
                out.splice(end..end, repeated);
            }
            Mutation::PutU64(i, v, be) => {
                put_int(&mut out, at(i, len), *be, v.to_be_bytes(), v.to_le_bytes())
            }
            Mutation::PutU64At(offset, v, be) => {
                put_int(&mut out, *offset, *be, v.to_be_bytes(), v.to_le_bytes())
            }
            Mutation::PutU32At(offset, v, be) => {
                put_int(&mut out, *offset, *be, v.to_be_bytes(), v.to_le_bytes())
            }
            Mutation::SetByteAt(offset, v) => put(&mut out, *offset, &[*v]),
            Mutation::Splice(i, token) => {
                let p = at(i, len + 1);
                out.splice(p..p, token.bytes());
            }
        }
    }
    out
}

/// A field-level edit of a JSON document: the parser accepts the result more often than after a
/// byte edit, so the checks behind it (shape, range, signature) see the hostile values.
#[derive(Debug, Clone)]
pub enum JsonEdit {
    Replace(Index, Value),
    Remove(Index),
    AddKey(Index, String, Value),
}

fn deep(depth: usize) -> Value {
    (0..depth).fold(Value::Null, |inner, _| Value::Array(vec![inner]))
}

fn interesting_json() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![Just(0i64), Just(-1), Just(i64::MIN), Just(i64::MAX)].prop_map(Value::from),
        interesting_u64().prop_map(Value::from),
        prop_oneof![
            Just(0.5f64),
            Just(-0.0),
            Just(1e300),
            Just(-1e300),
            Just(f64::MIN_POSITIVE),
            Just(1e-300),
            Just(3650.000001),
            Just(1e9),
        ]
        .prop_map(Value::from),
        hex32().prop_map(Value::from),
        (any::<[u8; 32]>(), 0usize..=64)
            .prop_map(|(b, n)| Value::from(hex::encode(b)[..n].to_string())),
        hex32().prop_map(|h| Value::from(h.to_uppercase())),
        "\\PC{0,40}".prop_map(Value::from),
        (0usize..3000).prop_map(|n| Value::Array(vec![Value::from(""); n])),
        (0usize..40).prop_map(|n| Value::Array(vec![json!({"a": 1}); n])),
        (100usize..200).prop_map(deep),
        (0usize..20_000).prop_map(|n| Value::from("a".repeat(n))),
        Just(json!({})),
        Just(json!([])),
    ]
}

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    prop_oneof![
        4 => (any::<Index>(), interesting_json()).prop_map(|(i, v)| JsonEdit::Replace(i, v)),
        1 => any::<Index>().prop_map(JsonEdit::Remove),
        1 => (any::<Index>(), "[a-z_]{1,12}", interesting_json())
            .prop_map(|(i, k, v)| JsonEdit::AddKey(i, k, v)),
    ]
}

/// JSON pointers of every node of `value`, the root ("") first.
fn pointers(value: &Value, prefix: String, out: &mut Vec<String>) {
    let escape = |k: &str| k.replace('~', "~0").replace('/', "~1");
    match value {
        Value::Object(map) => {
            out.push(prefix.clone());
            for (k, v) in map {
                pointers(v, format!("{prefix}/{}", escape(k)), out);
            }
        }
        Value::Array(items) => {
            out.push(prefix.clone());
            for (i, v) in items.iter().enumerate() {
                pointers(v, format!("{prefix}/{i}"), out);
            }
        }
        _ => out.push(prefix),
    }
}

/// `value` with `edits` applied.
pub fn edit_json(mut value: Value, edits: &[JsonEdit]) -> Value {
    for edit in edits {
        let mut all = Vec::new();
        pointers(&value, String::new(), &mut all);
        match edit {
            JsonEdit::Replace(i, new) => {
                if let Some(node) = value.pointer_mut(&all[at(i, all.len())]) {
                    *node = new.clone();
                }
            }
            JsonEdit::Remove(i) => {
                let pointer = &all[at(i, all.len())];
                if let Some((parent, last)) = pointer.rsplit_once('/') {
                    let key = last.replace("~1", "/").replace("~0", "~");
                    match value.pointer_mut(parent) {
                        Some(Value::Object(map)) => {
                            map.remove(&key);
                        }
                        Some(Value::Array(items)) => {
                            if let Ok(i) = key.parse::<usize>()
                                && i < items.len()
                            {
                                items.remove(i);
                            }
                        }
                        _ => {}
                    }
                }
            }
            JsonEdit::AddKey(i, key, new) => {
                let objects: Vec<&String> = all
                    .iter()
                    .filter(|p| value.pointer(p).is_some_and(Value::is_object))
                    .collect();
                if !objects.is_empty() {
                    let pointer = objects[at(i, objects.len())].clone();
                    if let Some(Value::Object(map)) = value.pointer_mut(&pointer) {
                        map.insert(key.clone(), new.clone());
                    }
                }
            }
        }
    }
    value
}

/// How a hostile input was made from a valid value.
#[derive(Debug, Clone)]
pub enum Hostile {
    Bytes(Vec<Mutation>),
    Json(Vec<JsonEdit>),
    /// Both: fields edited, then bytes.
    Both(Vec<JsonEdit>, Vec<Mutation>),
    Random(Vec<u8>),
}

fn hostile_json_edits() -> impl Strategy<Value = Hostile> {
    prop_oneof![
        4 => proptest::collection::vec(mutation(), 1..4).prop_map(Hostile::Bytes),
        4 => proptest::collection::vec(json_edit(), 1..3).prop_map(Hostile::Json),
        1 => (
            proptest::collection::vec(json_edit(), 1..3),
            proptest::collection::vec(mutation(), 1..3)
        )
            .prop_map(|(j, b)| Hostile::Both(j, b)),
        1 => proptest::collection::vec(any::<u8>(), 0..512).prop_map(Hostile::Random),
    ]
}

fn apply_hostile(encoded: &[u8], hostile: &Hostile) -> Vec<u8> {
    let edited = |edits: &[JsonEdit]| {
        let value: Value = serde_json::from_slice(encoded).expect("our encodings are JSON");
        serde_json::to_vec(&edit_json(value, edits)).expect("a Value serializes")
    };
    match hostile {
        Hostile::Bytes(m) => mutate(encoded, m),
        Hostile::Json(edits) => edited(edits),
        Hostile::Both(edits, m) => mutate(&edited(edits), m),
        Hostile::Random(bytes) => bytes.clone(),
    }
}

/// A valid value, the bytes given to the decoder, and whether they are its untouched encoding.
#[derive(Debug, Clone)]
pub struct Case<V> {
    pub original: V,
    pub bytes: Vec<u8>,
    pub untouched: bool,
}

fn json_valid<V>(valid: impl Strategy<Value = V>) -> impl Strategy<Value = Case<V>>
where
    V: Serialize + Debug + Clone,
{
    valid.prop_map(|original| {
        let bytes = serde_json::to_vec(&original).expect("serializes");
        Case {
            original,
            bytes,
            untouched: true,
        }
    })
}

fn json_hostile<V>(valid: impl Strategy<Value = V>) -> impl Strategy<Value = Case<V>>
where
    V: Serialize + Debug + Clone,
{
    (valid, hostile_json_edits()).prop_map(|(original, hostile)| {
        let encoded = serde_json::to_vec(&original).expect("serializes");
        let bytes = apply_hostile(&encoded, &hostile);
        Case {
            untouched: bytes == encoded,
            original,
            bytes,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Δ codec: src/diloco/codec.rs decode(bytes, expected_len, max_norm)

#[derive(Debug, Clone)]
pub struct CodecCase {
    config: CodecConfig,
    delta: Vec<f32>,
    /// The length the receiver expects (the model's parameter count).
    expected_len: usize,
    max_norm: f32,
    bytes: Vec<u8>,
    untouched: bool,
}

fn codec_config() -> impl Strategy<Value = CodecConfig> {
    (
        proptest::sample::select(Codec::ALL.to_vec()),
        prop_oneof![1usize..300, Just(256), Just(1), Just(100_000)],
        1u32..=1000,
    )
        .prop_map(|(codec, int8_block, permille)| CodecConfig {
            codec,
            int8_block,
            topk_fraction: permille as f32 / 1000.0,
        })
}

fn delta() -> impl Strategy<Value = Vec<f32>> {
    let value = prop_oneof![
        8 => -10.0f32..10.0,
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        1 => -1e6f32..1e6,
        1 => proptest::num::f32::NORMAL | proptest::num::f32::SUBNORMAL | proptest::num::f32::ZERO,
    ];
    proptest::collection::vec(value, 0..600)
}

fn codec_valid() -> impl Strategy<Value = CodecCase> {
    (codec_config(), delta()).prop_map(|(config, delta)| {
        let bytes = encode(&config, &delta);
        CodecCase {
            expected_len: delta.len(),
            max_norm: f32::INFINITY,
            config,
            delta,
            bytes,
            untouched: true,
        }
    })
}

fn codec_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => mutation(),
        // The header's count (offset 8, u64 LE) and parameter (offset 16, u32 LE).
        2 => interesting_u64().prop_map(|v| Mutation::PutU64At(8, v, false)),
        2 => prop_oneof![interesting_u64().prop_map(|v| v as u32), 0u32..700]
            .prop_map(|v| Mutation::PutU32At(16, v, false)),
        1 => (4usize..8, any::<u8>()).prop_map(|(o, v)| Mutation::SetByteAt(o, v)),
        1 => (0u8..4).prop_map(|c| Mutation::SetByteAt(5, c)),
        // Payload bytes that make a NaN, an infinity or the int8 code −128.
        2 => (any::<Index>(), proptest::sample::select(vec![0x80u8, 0xff, 0x7f, 0x7c]))
            .prop_map(|(i, v)| Mutation::SetByte(i, v)),
    ]
}

fn codec_hostile() -> impl Strategy<Value = CodecCase> {
    let max_norm = prop_oneof![
        3 => Just(f32::INFINITY),
        1 => Just(f32::NAN),
        1 => Just(0.0f32),
        1 => 0.0f32..1000.0,
    ];
    (
        codec_valid(),
        prop_oneof![
            6 => proptest::collection::vec(codec_mutation(), 1..4).prop_map(Some),
            1 => Just(None),
        ],
        proptest::collection::vec(any::<u8>(), 0..256),
        prop_oneof![3 => Just(0i64), 1 => -2i64..3],
        max_norm,
    )
        .prop_map(|(mut case, mutations, random, shift, max_norm)| {
            let encoded = case.bytes.clone();
            case.bytes = match mutations {
                Some(m) => mutate(&encoded, &m),
                // Random bytes behind a valid-looking header.
                None => [&encoded[..encoded.len().min(20)], &random[..]].concat(),
            };
            case.expected_len = (case.expected_len as i64 + shift).max(0) as usize;
            case.max_norm = max_norm;
            case.untouched = case.bytes == encoded && shift == 0 && max_norm == f32::INFINITY;
            case
        })
}

fn codec_reason(e: &CodecError) -> &'static str {
    match e {
        CodecError::TooShort(_) => "too_short",
        CodecError::BadMagic(_) => "bad_magic",
        CodecError::UnsupportedVersion(_) => "unsupported_version",
        CodecError::UnknownCodec(_) => "unknown_codec",
        CodecError::Reserved(_) => "reserved",
        CodecError::WrongLength { .. } => "wrong_length",
        CodecError::BadParam { .. } => "bad_param",
        CodecError::PayloadLength { .. } => "payload_length",
        CodecError::BadScale { .. } => "bad_scale",
        CodecError::Int8OutOfRange(_) => "int8_out_of_range",
        CodecError::IndexOutOfRange { .. } => "index_out_of_range",
        CodecError::IndexNotIncreasing { .. } => "index_not_increasing",
        CodecError::NonFinite(_) => "non_finite",
        CodecError::NormTooLarge { .. } => "norm_too_large",
    }
}

fn check_codec(case: &CodecCase) -> Verdict {
    let n = case.expected_len;
    let (result, extra) = measured(|| decode(&case.bytes, n, case.max_norm));
    // The output vector, and rayon's per-split scratch for fp16 (96 KiB each).
    let bound = 4 * n + MIB;
    ensure!(
        extra <= bound,
        "decode of {} bytes for {n} values allocated {extra} bytes, bound {bound}",
        case.bytes.len()
    );
    match result {
        Ok(values) => {
            ensure!(values.len() == n, "{} values, expected {n}", values.len());
            ensure!(
                values.iter().all(|x| x.is_finite()),
                "a non-finite value passed"
            );
            let norm = values
                .iter()
                .map(|&x| x as f64 * x as f64)
                .sum::<f64>()
                .sqrt();
            let within = norm <= case.max_norm as f64 * (1.0 + 1e-9);
            ensure!(within, "norm {norm} passed the limit {}", case.max_norm);
            if case.untouched {
                check_codec_round_trip(case, &values)?;
            }
            Ok("ok")
        }
        Err(e) => {
            ensure!(!case.untouched, "a valid encoding was refused: {e}");
            ensure!(!e.to_string().is_empty(), "an error without a reason");
            let header = matches!(
                e,
                CodecError::TooShort(_)
                    | CodecError::BadMagic(_)
                    | CodecError::UnsupportedVersion(_)
                    | CodecError::UnknownCodec(_)
                    | CodecError::Reserved(_)
                    | CodecError::WrongLength { .. }
                    | CodecError::BadParam { .. }
                    | CodecError::PayloadLength { .. }
            );
            // Documented: nothing is allocated before the header and payload length check out.
            ensure!(
                !header || extra == 0,
                "{e}: refused at the header after allocating {extra} bytes"
            );
            Ok(codec_reason(&e))
        }
    }
}

fn check_codec_round_trip(case: &CodecCase, values: &[f32]) -> Result<(), String> {
    let (config, delta) = (&case.config, &case.delta);
    let n = delta.len();
    ensure!(
        case.bytes.len() == encoded_len(config, n)
            && case.bytes.len() as u64 <= max_encoded_len(config.codec, n),
        "encoded length {} is not what encoded_len / max_encoded_len say",
        case.bytes.len()
    );
    match config.codec {
        Codec::Fp32 => ensure!(
            values
                .iter()
                .zip(delta)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "fp32 did not round-trip exactly"
        ),
        Codec::Fp16 => {
            for (i, (&got, &x)) in values.iter().zip(delta).enumerate() {
                let want = half::f16::from_f32(x.clamp(-F16_MAX, F16_MAX)).to_f32();
                ensure!(
                    got == want,
                    "fp16 value {i}: {got}, expected {want} (from {x})"
                );
            }
        }
        Codec::Int8 => {
            for (b, (got, x)) in values
                .chunks(config.int8_block)
                .zip(delta.chunks(config.int8_block))
                .enumerate()
            {
                let scale = x.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
                let tolerance = scale * (0.5 + 1.0 / 65536.0) * (1.0 + 1e-6) + 1e-30;
                ensure!(
                    got.iter().zip(x).all(|(g, v)| (g - v).abs() <= tolerance),
                    "int8 block {b}: error above scale/2"
                );
            }
        }
        Codec::TopK => {
            let k = config.topk_count(n);
            let kept = values.iter().filter(|v| **v != 0.0).count();
            ensure!(kept <= k, "top-k kept {kept} values, k = {k}");
            ensure!(
                values.iter().zip(delta).all(|(g, v)| *g == 0.0 || g == v),
                "a top-k value differs from the one sent"
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Blob frames: src/net/blob.rs BlobCodec::read_response (and read_request)

#[derive(Debug, Clone)]
pub struct BlobCase {
    /// The node's limit and the request's bound; the response is checked against the smaller.
    node_limit: u64,
    request_limit: u64,
    /// What the peer served (None: Missing).
    blob: Option<Vec<u8>>,
    bytes: Vec<u8>,
    untouched: bool,
}

fn protocol() -> StreamProtocol {
    StreamProtocol::new("/neuroshard/fuzznet/blob/1")
}

fn blob_wire(blob: &Option<Vec<u8>>) -> Vec<u8> {
    let response = match blob {
        Some(bytes) => BlobResponse::Found {
            id: BlobId::of(bytes),
            bytes: std::sync::Arc::new(bytes.clone()),
        },
        None => BlobResponse::Missing,
    };
    let mut wire = Cursor::new(Vec::new());
    block_on(BlobCodec::new(u64::MAX).write_response(&protocol(), &mut wire, response))
        .expect("writing to memory");
    wire.into_inner()
}

fn blob_valid() -> impl Strategy<Value = BlobCase> {
    (
        proptest::option::weighted(0.9, proptest::collection::vec(any::<u8>(), 0..3000)),
        0u64..1000,
        0u64..1000,
    )
        .prop_map(|(blob, slack_node, slack_request)| {
            let len = blob.as_ref().map_or(0, |b| b.len() as u64);
            let bytes = blob_wire(&blob);
            BlobCase {
                node_limit: len + slack_node,
                request_limit: len + slack_request,
                blob,
                bytes,
                untouched: true,
            }
        })
}

fn blob_hostile() -> impl Strategy<Value = BlobCase> {
    let limit = prop_oneof![
        Just(0u64),
        0u64..4000,
        Just(1 << 20),
        Just(64 << 20),
        Just(1 << 30),
        Just(u64::MAX),
    ];
    let blob_mutation = prop_oneof![
        3 => mutation(),
        // The length header: 8 bytes big-endian after the status byte.
        3 => interesting_u64().prop_map(|v| Mutation::PutU64At(1, v, true)),
        1 => any::<u8>().prop_map(|v| Mutation::SetByteAt(0, v)),
    ];
    (
        blob_valid(),
        proptest::collection::vec(blob_mutation, 1..4),
        limit.clone(),
        limit,
        any::<bool>(),
    )
        .prop_map(|(mut case, mutations, node, request, keep)| {
            let encoded = case.bytes.clone();
            case.bytes = mutate(&encoded, &mutations);
            if !keep {
                (case.node_limit, case.request_limit) = (node, request);
            }
            case.untouched = case.bytes == encoded && keep;
            case
        })
}

fn check_blob(case: &BlobCase) -> Verdict {
    // What a PeerActor reading a response does: the codec copy that wrote the request reads its
    // response, bounded by min(request, node limit).
    let mut codec = BlobCodec::new(case.node_limit);
    let request = BlobRequest {
        id: BlobId([7; 32]),
        max_bytes: case.request_limit,
        range: None,
    };
    block_on(codec.write_request(&protocol(), &mut Cursor::new(Vec::new()), request))
        .expect("writing to memory");
    let limit = case.node_limit.min(case.request_limit);
    let bytes = &case.bytes;
    let (result, extra) =
        measured(|| block_on(codec.read_response(&protocol(), &mut Cursor::new(bytes.as_slice()))));
    let claimed = (bytes.len() >= 9 && bytes[0] == 1)
        .then(|| u64::from_be_bytes(bytes[1..9].try_into().unwrap()));
    // Documented: the header is checked against the bound before anything is allocated; then the
    // receiver reserves at most 64 MiB up front and grows 1 MiB a chunk as the bytes arrive.
    let bound = match claimed {
        Some(len) if len <= limit => (len.min(64 << 20) as usize) + MIB + 4 * KIB,
        _ => 4 * KIB,
    };
    ensure!(
        extra <= bound,
        "reading a {}-byte response (claims {claimed:?}, limit {limit}) allocated {extra} bytes, \
         bound {bound}",
        bytes.len()
    );
    ensure!(
        extra as u64 <= limit.saturating_add(4 * KIB as u64),
        "allocated {extra} bytes, above the limit {limit}"
    );
    // read_request: 32 bytes of id, whatever they are, then nothing or a 16-byte range.
    let request = block_on(
        codec
            .clone()
            .read_request(&protocol(), &mut Cursor::new(bytes.as_slice())),
    );
    let be = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
    match request {
        Ok(r) => {
            ensure!(
                bytes.len() >= 32 && r.id.0 == bytes[..32],
                "request id misread"
            );
            let range = (bytes.len() == 48).then(|| (be(32), be(40)));
            ensure!(
                matches!(bytes.len(), 32 | 48) && r.range == range,
                "a {}-byte request read as range {:?}",
                bytes.len(),
                r.range
            );
        }
        Err(e) => ensure!(
            (bytes.len() < 32 && e.kind() == std::io::ErrorKind::UnexpectedEof)
                || (bytes.len() > 32
                    && bytes.len() != 48
                    && e.kind() == std::io::ErrorKind::InvalidData),
            "request of {} bytes: {e}",
            bytes.len()
        ),
    }
    let reason = match result {
        Ok(BlobResponse::Missing) => {
            ensure!(bytes.first() == Some(&0), "Missing without a 0 status byte");
            "missing"
        }
        Ok(BlobResponse::Found { id, bytes: got }) => {
            let len = claimed.ok_or("Found without a header")?;
            ensure!(
                len <= limit,
                "a blob of {len} bytes passed the limit {limit}"
            );
            ensure!(
                got.len() as u64 == len,
                "read {} bytes, header said {len}",
                got.len()
            );
            ensure!(
                *got == bytes[9..9 + got.len()],
                "the bytes read differ from those sent"
            );
            ensure!(
                id == BlobId::of(&got),
                "the id is not the BLAKE3 of the bytes"
            );
            "ok"
        }
        Err(e) => {
            ensure!(!case.untouched, "a valid response was refused: {e}");
            // peer.rs counts InvalidData against the peer as Rejection::Malformed ("blob
            // response: …"); a stream that ends early is a failed transfer, nobody's offence.
            match e.kind() {
                std::io::ErrorKind::InvalidData => {
                    let rejection = Rejection::Malformed(format!("blob response: {e}"));
                    ensure!(rejection.kind() == "malformed", "uncounted rejection");
                    if e.to_string().contains("exceeds the limit") {
                        "over_limit"
                    } else {
                        "unknown_status"
                    }
                }
                std::io::ErrorKind::UnexpectedEof => "truncated",
                other => return Err(format!("unexpected error kind {other:?}: {e}")),
            }
        }
    };
    if case.untouched {
        let same = match (&result_summary(bytes), &case.blob) {
            (Some(a), Some(b)) => a == b,
            (None, None) => true,
            _ => false,
        };
        ensure!(same, "a valid response did not round-trip");
    }
    Ok(reason)
}

/// The blob a well-formed frame carries (None for Missing).
fn result_summary(bytes: &[u8]) -> Option<Vec<u8>> {
    (bytes[0] == 1).then(|| bytes[9..].to_vec())
}

// ---------------------------------------------------------------------------------------------
// Gossip: src/net/wire.rs open + each kind's check, as actors/peer.rs validate_gossip runs them

/// A gossip message: its body sealed by `sender`, delivered as from `origin`.
#[derive(Debug, Clone)]
pub struct GossipCase<M> {
    original: M,
    sender: usize,
    /// The PeerId gossipsub names as the source (None: one without a secp256k1 key).
    origin: Option<usize>,
    /// The topic the message arrives on (true: the one it was sealed for).
    right_topic: bool,
    bytes: Vec<u8>,
    untouched: bool,
}

/// A message kind: its topic and a generator of valid messages signed by sender 0 or 1.
pub struct Kind<M> {
    topic: &'static str,
    valid: BoxedStrategy<(usize, M)>,
}

fn gossip_valid<M>(kind: Kind<M>) -> impl Strategy<Value = GossipCase<M>>
where
    M: Serialize + Debug + Clone + 'static,
{
    let topic = kind.topic;
    kind.valid.prop_map(move |(sender, original)| GossipCase {
        bytes: wire::seal(identity(sender), topic, &original),
        original,
        sender,
        origin: Some(sender),
        right_topic: true,
        untouched: true,
    })
}

fn gossip_hostile<M>(kind: Kind<M>) -> impl Strategy<Value = GossipCase<M>>
where
    M: Serialize + Debug + Clone + 'static,
{
    let topic = kind.topic;
    let origin = prop_oneof![
        8 => Just(Some(0usize)),
        1 => Just(Some(1usize)),
        1 => Just(None),
    ];
    (
        kind.valid,
        prop_oneof![
            // The body edited, then sealed: a peer may sign anything.
            6 => hostile_json_edits().prop_map(|h| (h, true)),
            // The sealed message edited in transit (signature, body).
            3 => proptest::collection::vec(mutation(), 1..4).prop_map(|m| (Hostile::Bytes(m), false)),
        ],
        origin,
        prop_oneof![9 => Just(true), 1 => Just(false)],
    )
        .prop_map(move |((sender, original), (hostile, reseal), origin, right_topic)| {
            let body = serde_json::to_vec(&original).expect("serializes");
            let sealed = wire::seal_bytes(identity(sender), topic, &body);
            let bytes = if reseal {
                wire::seal_bytes(identity(sender), topic, &apply_hostile(&body, &hostile))
            } else {
                apply_hostile(&sealed, &hostile)
            };
            // The claimed origin is who sent it when the sender signs as itself.
            let origin = origin.map(|o| if o == 0 { sender } else { 1 - sender });
            GossipCase {
                untouched: bytes == sealed && origin == Some(sender) && right_topic,
                original,
                sender,
                origin,
                right_topic,
                bytes,
            }
        })
}

fn origin_of<M>(case: &GossipCase<M>) -> PeerId {
    case.origin.map_or_else(keyless_peer, peer_id)
}

fn topic_of<M>(case: &GossipCase<M>, topic: &'static str) -> &'static str {
    if case.right_topic {
        topic
    } else {
        "neuroshard/othernet/heartbeat/1"
    }
}

/// Every kind the peer table counts (wire::Rejection::kind and the ledger's reasons it passes).
const REJECTION_KINDS: &[&str] = &[
    "oversized",
    "malformed",
    "bad_signature",
    "unknown_signer",
    "wrong_node_id",
    "stale",
    "replayed",
    "rate_limited",
    "banned",
    "bad_certificate",
    "foreign_key",
    "future",
    "replay",
    "implausible",
    "over_cap",
    "delta_rejected",
    "bad_fee",
    "bad_sequence",
    "overdraft",
    "stake_locked",
    "insufficient_stake",
];

/// A rejection is counted against the peer, under its kind, as PeerActor::rejected does.
fn counted(table: &mut PeerTable, origin: PeerId, rejection: &Rejection) -> Verdict {
    let kind = rejection.kind();
    ensure!(
        REJECTION_KINDS.contains(&kind),
        "unknown rejection kind {kind:?}"
    );
    ensure!(
        !rejection.to_string().is_empty(),
        "a rejection without a reason"
    );
    let now = Instant::now();
    table.reject(now, origin, rejection);
    let (views, totals) = table.view(now, NOW_S, &HashMap::new());
    let origin = origin.to_string();
    let view = views.iter().find(|v| v.peer_id == origin);
    ensure!(
        view.is_some_and(|v| v.rejections.get(kind) == Some(&1)) && totals.messages_rejected == 1,
        "the rejection {kind:?} was not counted against the peer"
    );
    Ok(kind)
}

/// What actors/peer.rs validate_gossip does with a message of `topic`'s kind, measured: `wire::open`
/// as from the case's origin, then the kind's `checks` (given the message, the signer's node_id
/// and the origin). The allocation stays within [`json_bound`] of what `open` reads. Returns the
/// outcome and the origin.
fn open_checked<M, R>(
    case: &GossipCase<M>,
    topic: &'static str,
    checks: impl FnOnce(M, String, PeerId) -> Result<R, Rejection>,
) -> Result<(Result<R, Rejection>, PeerId), String>
where
    M: serde::de::DeserializeOwned,
{
    let origin = origin_of(case);
    let topic = topic_of(case, topic);
    let (result, extra) = measured(|| {
        let (message, node_id) = wire::open::<M>(topic, &case.bytes, &origin)?;
        checks(message, node_id, origin)
    });
    let len = case.bytes.len();
    within_json_bound(len, len.min(MAX_GOSSIP_BYTES), extra)?;
    Ok((result, origin))
}

/// A gossip message of kind `what` was refused: never an untouched one, and the rejection is
/// [`counted`] against `origin` in `table`.
fn refused<M>(
    case: &GossipCase<M>,
    what: &str,
    table: &mut PeerTable,
    origin: PeerId,
    rejection: &Rejection,
) -> Verdict {
    ensure!(!case.untouched, "a valid {what} was refused: {rejection}");
    counted(table, origin, rejection)
}

fn heartbeat() -> Kind<Heartbeat> {
    let valid = (
        0usize..2,
        prop_oneof![Just("trainer"), Just("observer")],
        any::<u64>(),
        any::<u64>(),
        hex32(),
        hex32(),
        0.0f64..1e6,
        near_now_ms(),
        any::<bool>(),
    )
        .prop_map(|(sender, role, step, round, t, m, tps, sent, cert)| {
            (
                sender,
                Heartbeat {
                    node_id: identity(sender).node_id.clone(),
                    role: role.into(),
                    global_step: step,
                    outer_round: round,
                    theta0_hash: t,
                    momentum_hash: m,
                    tokens_per_sec: tps,
                    sent_at_ms: sent,
                    membership: cert.then(|| certificate(sender).clone()),
                },
            )
        });
    Kind {
        topic: TOPIC_HEARTBEAT,
        valid: valid.boxed(),
    }
}

fn check_heartbeat(case: &GossipCase<Heartbeat>) -> Verdict {
    let mut table = peer_table();
    let (result, origin) = open_checked(case, TOPIC_HEARTBEAT, |heartbeat, node_id, origin| {
        heartbeat.check(&node_id, NOW_MS)?;
        table.accept_heartbeat(Instant::now(), NOW_MS, origin, origin, heartbeat.clone())?;
        Ok(heartbeat)
    })?;
    match result {
        Ok(heartbeat) => {
            if case.untouched {
                // serde_json without its `float_roundtrip` feature may parse an f64 one ULP
                // off (found here; see BENCHMARKS.md): tokens_per_sec is compared to within it.
                let (got, sent) = (heartbeat.tokens_per_sec, case.original.tokens_per_sec);
                let same_rest = Heartbeat {
                    tokens_per_sec: sent,
                    ..heartbeat.clone()
                } == case.original;
                ensure!(
                    same_rest && (got - sent).abs() <= f64::EPSILON * sent.abs(),
                    "the heartbeat did not round-trip"
                );
                ensure!(
                    table.is_admitted(&origin, NOW_S) == case.original.membership.is_some(),
                    "a valid certificate did not admit its holder"
                );
                if got != sent {
                    return Ok("ok_f64_one_ulp_off");
                }
            }
            Ok("ok")
        }
        Err(rejection) => refused(case, "heartbeat", &mut table, origin, &rejection),
    }
}

fn round_announcement() -> Kind<RoundAnnouncement> {
    let valid = (
        0usize..2,
        any::<u64>(),
        hex32(),
        hex32(),
        1..=MAX_DELTA_BYTES,
        proptest::sample::select(Codec::ALL.map(Codec::name).to_vec()),
        any::<u64>(),
        near_now_ms(),
    )
        .prop_map(|(sender, round, t, d, size, codec, tokens, sent)| {
            (
                sender,
                RoundAnnouncement {
                    node_id: identity(sender).node_id.clone(),
                    round,
                    theta0_hash: t,
                    delta_hash: d,
                    delta_bytes: size,
                    codec: codec.into(),
                    tokens,
                    sent_at_ms: sent,
                    claims: Vec::new(),
                },
            )
        });
    Kind {
        topic: TOPIC_ROUND,
        valid: valid.boxed(),
    }
}

fn check_round(case: &GossipCase<RoundAnnouncement>) -> Verdict {
    let (result, origin) = open_checked(case, TOPIC_ROUND, |announcement, node_id, _| {
        announcement.check(&node_id, MAX_DELTA_BYTES, NOW_MS)?;
        Ok(announcement)
    })?;
    match result {
        Ok(announcement) => {
            ensure!(
                !case.untouched || announcement == case.original,
                "the announcement did not round-trip"
            );
            Ok("ok")
        }
        Err(rejection) => refused(case, "announcement", &mut peer_table(), origin, &rejection),
    }
}

fn proof_kind() -> impl Strategy<Value = ProofKind> {
    proptest::sample::select(vec![
        ProofKind::Uptime,
        ProofKind::Training,
        ProofKind::Inference,
        ProofKind::Data,
    ])
}

fn small_or_any() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..10_000, 1 => any::<u64>()]
}

/// A proof signed by identity `sender`, of any kind, with a receipt where its kind takes one.
fn proof_by(sender: usize) -> impl Strategy<Value = SignedProof> {
    (
        proof_kind(),
        (NOW_MS - 200_000)..(NOW_MS + 10_000),
        any::<u64>(),
        (small_or_any(), small_or_any(), 1u64..3600, small_or_any()),
        (small_or_any(), small_or_any(), small_or_any()),
        "[a-z0-9-]{0,64}",
        (
            proptest::option::of(hex32()),
            proptest::option::of(hex32()),
            proptest::option::of(hex32()),
        ),
        0.0f32..20.0,
        any::<bool>(),
    )
        .prop_map(
            move |(
                kind,
                ts,
                nonce,
                (epoch, round, work, uptime),
                (tokens, batches, samples),
                request_id,
                (before, after, delta),
                loss,
                receipt,
            )| {
                let mut proof = Proof {
                    kind,
                    timestamp_ms: ts,
                    nonce,
                    epoch,
                    outer_round: round,
                    work_seconds: work,
                    uptime_seconds: uptime,
                    tokens,
                    batches,
                    data_samples: samples,
                    request_id,
                    model_hash_before: before.unwrap_or_default(),
                    model_hash_after: after.unwrap_or_default(),
                    delta_hash: delta.unwrap_or_default(),
                    loss,
                    ..Proof::empty(kind)
                };
                if receipt {
                    proof.node_id = identity(sender).node_id.clone();
                    proof.public_key = hex::encode(identity(sender).public.serialize());
                    proof.receipt = Some(sign_receipt(identity(1 - sender), &proof).unwrap());
                }
                sign_proof(identity(sender), proof).expect("a canonical proof")
            },
        )
}

fn signed_proof() -> impl Strategy<Value = SignedProof> {
    (0usize..2).prop_flat_map(proof_by)
}

fn tx_by(sender: usize) -> impl Strategy<Value = SignedTransaction> {
    (
        proptest::sample::select(vec![TxKind::Transfer, TxKind::Stake, TxKind::Unstake]),
        prop_oneof![4 => 1u64..1_000_000_000_000, 1 => any::<u64>()],
        1u64..1000,
        (NOW_MS - 200_000)..(NOW_MS + 10_000),
        1u64..400,
    )
        .prop_map(move |(kind, amount, seq, ts, lock_days)| {
            let tx = Transaction {
                kind,
                from: String::new(),
                public_key: String::new(),
                to: match kind {
                    TxKind::Transfer => identity(1 - sender).node_id.clone(),
                    _ => String::new(),
                },
                amount,
                fee: match kind {
                    TxKind::Transfer => burn_fee(amount),
                    _ => 0,
                },
                seq,
                timestamp_ms: ts,
                lock_until_ms: match kind {
                    TxKind::Stake => ts.saturating_add(lock_days * 86_400_000),
                    _ => 0,
                },
            };
            sign_transaction(identity(sender), tx).expect("a canonical transaction")
        })
}

fn signed_tx() -> impl Strategy<Value = SignedTransaction> {
    (0usize..2).prop_flat_map(tx_by)
}

fn ledger_message() -> Kind<LedgerMessage> {
    let valid = (0usize..2).prop_flat_map(|sender| {
        let message = prop_oneof![
            proof_by(sender).prop_map(LedgerMessage::Proof),
            tx_by(sender).prop_map(LedgerMessage::Transaction),
            (
                any::<u64>(),
                hex32(),
                proptest::collection::vec((hex32(), hex32(), any::<bool>()), 0..6)
            )
                .prop_map(|(round, theta0_after, verdicts)| {
                    LedgerMessage::Verdicts(RoundVerdictsWire {
                        round,
                        theta0_after,
                        verdicts: verdicts
                            .into_iter()
                            .map(|(n, d, k)| (n[..32].to_string(), d, k))
                            .collect(),
                    })
                }),
            (
                proptest::collection::vec(proof_by(sender), 0..3),
                proptest::collection::vec(tx_by(sender), 0..3)
            )
                .prop_map(|(proofs, transactions)| LedgerMessage::Recent {
                    proofs,
                    transactions,
                }),
            proptest::collection::vec(hex32(), 0..8)
                .prop_map(|proofs| LedgerMessage::Witnessed { proofs }),
        ];
        (Just(sender), message)
    });
    Kind {
        topic: TOPIC_LEDGER,
        valid: valid.boxed(),
    }
}

/// `verify_proof` at NOW with an empty history and the default limits and schedule.
fn verify_unseen(proof: &SignedProof) -> Result<Offer, ProofRejection> {
    verify_proof(
        NOW_MS,
        proof,
        &ProofHistory::default(),
        &ProofLimits::default(),
        &RewardSchedule::default(),
    )
}

fn check_ledger_message(case: &GossipCase<LedgerMessage>) -> Verdict {
    let (result, origin) = open_checked(case, TOPIC_LEDGER, |entry, node_id, _| {
        // The PeerActor's gate, then what the LedgerActor checks with an empty history.
        let proofs = match &entry {
            LedgerMessage::Proof(p) => std::slice::from_ref(p),
            LedgerMessage::Recent { proofs, .. } => proofs.as_slice(),
            _ => &[],
        };
        entry.check(&node_id)?;
        for proof in proofs {
            check_signature(proof)?;
        }
        let transactions = match &entry {
            LedgerMessage::Transaction(t) => std::slice::from_ref(t),
            LedgerMessage::Recent { transactions, .. } => transactions.as_slice(),
            _ => &[],
        };
        let mut ledger_reasons = Vec::new();
        for proof in proofs {
            let verdict = verify_unseen(proof);
            ledger_reasons.push(verdict.err().map(|r| r.kind()));
        }
        for tx in transactions {
            let verdict = check_transaction(NOW_MS, tx, &ProofLimits::default());
            ledger_reasons.push(verdict.err().map(|r| r.kind()));
        }
        Ok((entry, ledger_reasons))
    })?;
    match result {
        Ok((entry, ledger_reasons)) => {
            ensure!(
                !case.untouched || entry == case.original,
                "the ledger message did not round-trip"
            );
            for reason in ledger_reasons.iter().flatten() {
                ensure!(
                    REJECTION_KINDS.contains(reason),
                    "the ledger refused with an unknown reason {reason:?}"
                );
            }
            Ok(match ledger_reasons.iter().flatten().next() {
                Some(_) => "passed_gate_refused_by_ledger",
                None => "ok",
            })
        }
        Err(rejection) => refused(
            case,
            "ledger message",
            &mut peer_table(),
            origin,
            &rejection,
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Ledger proofs and transactions as JSON (POST /api/ponw/verify; what a stored or gossiped one is)

/// The JSON decoders' shared steps: `case.bytes` parsed as a `T` and given to `examine`, both
/// measured, within [`json_bound`] of the input. A parse failure is refused as `invalid`, never
/// for an untouched encoding (a valid `what`); a parsed value and what `examine` found go to
/// `judge`.
fn check_json<V, T, R>(
    case: &Case<V>,
    invalid: &'static str,
    what: impl std::fmt::Display,
    examine: impl FnOnce(&T) -> R,
    judge: impl FnOnce(T, R) -> Verdict,
) -> Verdict
where
    T: serde::de::DeserializeOwned,
{
    let (result, extra) = measured(|| {
        let value: T = serde_json::from_slice(&case.bytes).map_err(|_| invalid)?;
        let examined = examine(&value);
        Ok::<_, &'static str>((value, examined))
    });
    let len = case.bytes.len();
    within_json_bound(len, len, extra)?;
    match result {
        Err(reason) => {
            ensure!(!case.untouched, "a valid {what} did not parse");
            Ok(reason)
        }
        Ok((value, examined)) => judge(value, examined),
    }
}

/// A ledger refusal: a named reason, counted under a kind the peer table knows.
trait LedgerRefusal: std::fmt::Display {
    fn kind(&self) -> &'static str;
}

impl LedgerRefusal for ProofRejection {
    fn kind(&self) -> &'static str {
        ProofRejection::kind(self)
    }
}

impl LedgerRefusal for TxRejection {
    fn kind(&self) -> &'static str {
        TxRejection::kind(self)
    }
}

/// A signed ledger record (`what`) as JSON, checked by `verify` with an empty history (`Ok`: the
/// reason it is accepted under): an untouched encoding round-trips and its signature holds
/// (`signature_ok`); a refusal has a reason of a known kind.
fn check_signed_json<T, E>(
    case: &Case<T>,
    verify: impl FnOnce(&T) -> Result<&'static str, E>,
    signature_ok: impl FnOnce(&T) -> bool,
    what: &str,
) -> Verdict
where
    T: serde::de::DeserializeOwned + PartialEq,
    E: LedgerRefusal,
{
    let unparsed = format_args!("{what}'s JSON");
    check_json(case, "invalid_json", unparsed, verify, |record, verdict| {
        if case.untouched {
            ensure!(record == case.original, "the {what} did not round-trip");
            ensure!(signature_ok(&record), "a signed {what}'s signature failed");
        }
        match verdict {
            Ok(reason) => Ok(reason),
            Err(rejection) => {
                ensure!(!rejection.to_string().is_empty(), "no reason");
                let kind = rejection.kind();
                ensure!(REJECTION_KINDS.contains(&kind), "unknown reason {kind:?}");
                Ok(kind)
            }
        }
    })
}

fn check_proof_json(case: &Case<SignedProof>) -> Verdict {
    let verify = |proof: &SignedProof| {
        verify_unseen(proof).map(|offer| offer.unpaid.map_or("ok", |why| why.kind()))
    };
    let signature_ok = |proof: &SignedProof| check_signature(proof).is_ok();
    check_signed_json(case, verify, signature_ok, "proof")
}

fn check_tx_json(case: &Case<SignedTransaction>) -> Verdict {
    let verify = |tx: &SignedTransaction| {
        check_transaction(NOW_MS, tx, &ProofLimits::default()).map(|()| "ok")
    };
    let signature_ok = |tx: &SignedTransaction| neuroshard::ledger::tx::check_signature(tx).is_ok();
    check_signed_json(case, verify, signature_ok, "transaction")
}

// ---------------------------------------------------------------------------------------------
// Tracker: POST /announce bodies (src/tracker.rs announce) and GET /peers answers (the node's
// client, src/net/announce.rs announce_to_tracker)

/// The tracker's body limit (src/tracker.rs MAX_BODY_BYTES): actix refuses longer bodies unread.
const TRACKER_BODY_LIMIT: usize = neuroshard::tracker::MAX_BODY_BYTES;

fn multiaddr(sender: usize) -> impl Strategy<Value = String> {
    (
        prop_oneof![
            any::<[u8; 4]>().prop_map(|a| format!("/ip4/{}.{}.{}.{}", a[0], a[1], a[2], a[3])),
            Just("/ip6/::1".to_string()),
            "[a-z]{1,12}".prop_map(|h| format!("/dns4/{h}.example")),
        ],
        any::<u16>(),
        any::<bool>(),
    )
        .prop_map(move |(host, port, p2p)| {
            let addr = format!("{host}/tcp/{port}");
            if p2p {
                format!("{addr}/p2p/{}", peer_id(sender))
            } else {
                addr
            }
        })
}

fn announcement() -> impl Strategy<Value = Announcement> {
    (0usize..2).prop_flat_map(|sender| {
        (
            "[A-Za-z0-9._-]{1,64}",
            proptest::collection::vec(multiaddr(sender), 1..5),
            (NOW_S - 100)..(NOW_S + 100),
        )
            .prop_map(move |(network, addrs, ts)| {
                Announcement::signed(identity(sender), &network, addrs, ts)
            })
    })
}

/// What `Announcement::verify` says.
type Verified = Result<(), AnnounceError>;

fn check_announcement(case: &Case<Announcement>) -> Verdict {
    if case.bytes.len() > TRACKER_BODY_LIMIT {
        return Ok("payload_too_large");
    }
    // A last accepted timestamp at or after the announcement's: a replay.
    let last = case
        .original
        .timestamp
        .checked_add(case.bytes.len() as u64 % 3);
    let examine = |announcement: &Announcement| {
        let verdict = announcement.verify(NOW_S, None);
        let replayed = announcement.verify(NOW_S, last);
        (verdict, replayed)
    };
    let judge = |announcement: Announcement, (verdict, replayed): (Verified, Verified)| {
        if case.untouched {
            ensure!(announcement == case.original, "no round trip");
            ensure!(
                verdict.is_ok(),
                "a valid announcement was refused: {verdict:?}"
            );
            ensure!(
                matches!(replayed, Err(AnnounceError::Replayed { .. })),
                "a replayed announcement passed: {replayed:?}"
            );
        }
        match verdict {
            Ok(()) => Ok("ok"),
            Err(e) => {
                ensure!(!e.to_string().is_empty(), "no reason");
                Ok(e.code())
            }
        }
    };
    check_json(case, "invalid_json", "announcement", examine, judge)
}

/// The tracker's answer to GET /peers, as the node's client reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeersBody {
    peers: Vec<PeerRecord>,
}

fn peers_body() -> impl Strategy<Value = PeersBody> {
    let record = (0usize..4).prop_flat_map(|i| {
        (proptest::collection::vec(multiaddr(i), 1..4), any::<u64>()).prop_map(move |(addrs, s)| {
            PeerRecord {
                peer_id: peer_id(i).to_string(),
                node_id: identity(i).node_id.clone(),
                multiaddrs: addrs,
                last_seen_s: s,
            }
        })
    });
    proptest::collection::vec(record, 0..6).prop_map(|peers| PeersBody { peers })
}

fn check_peers_body(case: &Case<PeersBody>) -> Verdict {
    // The client reads at most MAX_TRACKER_RESPONSE_BYTES.
    let limit = neuroshard::net::announce::MAX_TRACKER_RESPONSE_BYTES as usize;
    if case.bytes.len() > limit {
        return Ok("answer_too_large");
    }
    let examine = |body: &PeersBody| body.peers.iter().filter(|p| p.is_well_formed()).count();
    let judge = |body: PeersBody, kept: usize| {
        if case.untouched {
            ensure!(
                body.peers == case.original.peers && kept == body.peers.len(),
                "valid records did not round-trip or were dropped"
            );
        }
        Ok(if kept == body.peers.len() {
            "ok"
        } else {
            "records_dropped"
        })
    };
    check_json(case, "malformed_answer", "answer", examine, judge)
}

// ---------------------------------------------------------------------------------------------
// Admission: certificates (files, and in peers' heartbeats) and genesis documents

/// A certificate or a genesis document.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum AdmissionDoc {
    Certificate(Certificate),
    Genesis(Genesis),
}

fn admission_doc() -> impl Strategy<Value = AdmissionDoc> {
    prop_oneof![
        3 => (0usize..4).prop_map(|i| AdmissionDoc::Certificate(certificate(i).clone())),
        1 => Just(AdmissionDoc::Genesis(genesis().clone())),
    ]
}

fn check_admission(case: &Case<AdmissionDoc>) -> Verdict {
    let Ok(text) = std::str::from_utf8(&case.bytes) else {
        // Certificate::load / Genesis::load read the file as UTF-8 text first.
        return Ok("not_utf8");
    };
    let (result, extra) = measured(|| match &case.original {
        AdmissionDoc::Certificate(original) => {
            let cert =
                Certificate::from_json(text).map_err(|e| format!("{}: {}", e.field, e.reason))?;
            let node_id = &original.node_id;
            let verdict = neuroshard::admission::verify(NOW_S, genesis(), &cert, node_id);
            Ok::<_, String>((Some(cert == *original), verdict.err()))
        }
        AdmissionDoc::Genesis(original) => {
            let genesis =
                Genesis::from_json(text).map_err(|e| format!("{}: {}", e.field, e.reason))?;
            Ok((Some(genesis == *original), None))
        }
    });
    // These loaders parse into a serde_json::Value first (to name the offending field), and on
    // a wrongly typed field keep a second copy of it while they look for the culprit: an object
    // in a Value costs ~80 times its text (a B-tree node per map), so two trees of a document
    // of small objects take ~160 times its length (found by the bench; linear, and only ever
    // for files the operator gives, never for a peer's bytes: certificates in heartbeats are
    // parsed by serde directly).
    let bound = 4 * json_bound(case.bytes.len());
    ensure!(
        extra <= bound,
        "{} bytes allocated {extra}, bound {bound}",
        case.bytes.len()
    );
    match result {
        Err(why) => {
            ensure!(!case.untouched, "a valid document was refused: {why}");
            ensure!(!why.is_empty(), "no reason");
            Ok("field_error")
        }
        Ok((same, refused)) => {
            if case.untouched {
                ensure!(same == Some(true), "no round trip");
                ensure!(
                    refused.is_none(),
                    "a valid certificate was refused: {refused:?}"
                );
            }
            Ok(match refused {
                None => "ok",
                Some(e) if e.is_offence() => "bad_certificate",
                Some(_) => "not_admitted_now",
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// API bodies: src/web/api.rs and ledger.rs POST handlers (JsonConfig limit 64 KiB, serde, check)

/// The body limit of the node's JSON API (src/web/state.rs MAX_BODY_BYTES).
const API_BODY_LIMIT: usize = 64 * 1024;

/// A body for one route; it serializes as the body alone.
#[derive(Debug, Clone)]
pub struct ApiBody {
    route: &'static str,
    body: Value,
}

impl Serialize for ApiBody {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.body.serialize(serializer)
    }
}

fn api_body() -> impl Strategy<Value = ApiBody> {
    let node_id = (0usize..4).prop_map(|i| identity(i).node_id.clone());
    prop_oneof![
        (0usize..4, hex32()).prop_map(|(i, h)| ApiBody {
            route: "/api/blobs/fetch",
            body: json!({"peer_id": peer_id(i).to_string(), "hash": h}),
        }),
        (
            "\\PC{0,200}",
            proptest::option::of(1usize..=512),
            proptest::option::of(0.0f32..=5.0),
            proptest::option::of(any::<usize>()),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(prompt, max_new, temperature, top_k, seed)| {
                let mut body = json!({"prompt": prompt});
                let map = body.as_object_mut().unwrap();
                for (k, v) in [
                    ("max_new_tokens", max_new.map(Value::from)),
                    ("temperature", temperature.map(Value::from)),
                    ("top_k", top_k.map(Value::from)),
                    ("seed", seed.map(Value::from)),
                ] {
                    if let Some(v) = v {
                        map.insert(k.into(), v);
                    }
                }
                ApiBody {
                    route: "/generate_text",
                    body,
                }
            }),
        (signed_proof(), "[0-9a-f]{1,64}").prop_map(|(p, request_id)| ApiBody {
            route: "/api/ponw/receipt",
            body: json!({
                "request_id": request_id,
                "receipt": sign_receipt(identity(1), &p.proof).unwrap(),
            }),
        }),
        (node_id, 1e-9f64..1e9).prop_map(|(to, amount)| ApiBody {
            route: "/api/wallet/send",
            body: json!({"to": to, "amount": amount}),
        }),
        (1e-9f64..1e9, 0.001f64..3650.0).prop_map(|(amount, days)| ApiBody {
            route: "/api/stake",
            body: json!({"amount": amount, "duration_days": days}),
        }),
        (1e-9f64..1e9).prop_map(|amount| ApiBody {
            route: "/api/unstake",
            body: json!({"amount": amount}),
        }),
    ]
}

/// What a handler does with a body before asking an actor: parse it (actix's `web::Json`, which
/// answers 400 `invalid_json`) and run the route's check.
fn api_check(route: &str, bytes: &[u8]) -> Result<(), Result<ApiError, &'static str>> {
    fn parse<T: serde::de::DeserializeOwned>(
        bytes: &[u8],
    ) -> Result<T, Result<ApiError, &'static str>> {
        serde_json::from_slice(bytes).map_err(|_| Err("invalid_json"))
    }
    let checked = match route {
        "/api/blobs/fetch" => parse::<FetchBlobRequest>(bytes)?.check().map(drop),
        "/generate_text" => parse::<GenerateRequest>(bytes)?.validate(),
        "/api/ponw/receipt" => parse::<ReceiptRequest>(bytes)?.check(),
        "/api/wallet/send" => parse::<SendRequest>(bytes)?.check().map(drop),
        "/api/stake" => parse::<StakeRequest>(bytes)?.check().map(drop),
        "/api/unstake" => parse::<UnstakeRequest>(bytes)?.check().map(drop),
        other => unreachable!("no route {other}"),
    };
    checked.map_err(Ok)
}

fn check_api_body(case: &Case<ApiBody>) -> Verdict {
    let bytes = &case.bytes;
    if bytes.len() > API_BODY_LIMIT {
        return Ok("invalid_json");
    }
    let route = case.original.route;
    let (result, extra) = measured(|| api_check(route, bytes));
    within_json_bound(bytes.len(), bytes.len(), extra)?;
    match result {
        Ok(()) => Ok("ok"),
        Err(Err(reason)) => {
            ensure!(!case.untouched, "{route}: a valid body did not parse");
            Ok(reason)
        }
        Err(Ok(error)) => {
            ensure!(
                !case.untouched,
                "{route}: a valid body was refused: {error}"
            );
            use actix_web::ResponseError;
            ensure!(
                error.status_code().is_client_error(),
                "{route}: refused with status {}",
                error.status_code()
            );
            let code = error.to_string();
            Ok(match code.split_once(':').map(|(c, _)| c) {
                Some("bad_request") => "bad_request",
                _ => "other_4xx",
            })
        }
    }
}
