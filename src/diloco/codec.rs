//! Wire codecs for pseudo-gradients Δ, the vectors nodes exchange every DiLoCo round, with error
//! feedback for the lossy ones and a decoder that checks everything a peer sent.
//!
//! A message is self-describing: a 20-byte header, then the payload. All integers and floats are
//! little-endian.
//!
//! | offset | size | field                                                              |
//! |-------:|-----:|--------------------------------------------------------------------|
//! |      0 |    4 | magic `b"NSDC"`                                                    |
//! |      4 |    1 | version, [`VERSION`] (1)                                           |
//! |      5 |    1 | codec: 0 fp32, 1 fp16, 2 int8, 3 top-k                             |
//! |      6 |    2 | reserved, must be 0                                                |
//! |      8 |    8 | element count n (u64)                                              |
//! |     16 |    4 | parameter (u32): int8 block size, top-k k; 0 for fp32 and fp16     |
//! |     20 |    … | payload, its length fixed by (codec, n, parameter), see [`Codec`]  |
//!
//! [`encode`] is for our own Δ; [`decode`] is for a peer's bytes and never panics: it returns a
//! [`CodecError`] for anything malformed, non-finite, of the wrong size or too large in norm.

use std::ops::Range;
use std::sync::Arc;

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The first four bytes of every message.
pub const MAGIC: [u8; 4] = *b"NSDC";
/// The wire format version this module writes and reads.
pub const VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 20;

/// Largest finite f16, where [`Codec::Fp16`] saturates.
pub const F16_MAX: f32 = 65504.0;

/// How Δ is put on the wire. Sizes are payload bytes after the [`HEADER_LEN`]-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// 4 bytes per value, f32 as is: exact.
    #[default]
    Fp32,
    /// 2 bytes per value, IEEE binary16 rounded to nearest, ties to even. Relative error ≤ 2⁻¹¹
    /// for |x| in the f16 normal range [2⁻¹⁴, 65504]; absolute error ≤ 2⁻²⁵ below it (subnormals,
    /// then zero). Finite values beyond ±65504 **saturate** to ±65504 instead of becoming ±∞;
    /// ±∞ and NaN stay non-finite, so a receiver rejects them.
    Fp16,
    /// Block-quantized int8: per block of `int8_block` values one f32 scale = absmax/127, then one
    /// i8 per value, q = round(x/scale) in [−127, 127]. Payload: n + 4·⌈n/block⌉ bytes, i.e.
    /// 1 + 4/block bytes per value (1.016 at block 256), laid out block by block as
    /// `[scale][q₀ … q_{block−1}]` (the last block may be shorter). Absolute error ≤ scale/2 per
    /// value, plus f32 rounding: ≤ scale·(1/2 + 2⁻¹⁶). A NaN or ±∞ in a block makes its scale
    /// non-finite, so a receiver rejects the message.
    Int8,
    /// The k = round(`topk_fraction`·n) (at least 1) values of largest |x|, as (u32 index, f32
    /// value) pairs with strictly increasing indices: 8 bytes per kept value, 8k in all. Exact on
    /// kept values, zero elsewhere; ties at the threshold go to the lowest indices. Needs
    /// n ≤ u32::MAX.
    TopK,
}

impl Codec {
    pub const ALL: [Codec; 4] = [Codec::Fp32, Codec::Fp16, Codec::Int8, Codec::TopK];

    /// The name used in configuration and status ("fp32", "fp16", "int8", "top_k").
    pub fn name(self) -> &'static str {
        match self {
            Codec::Fp32 => "fp32",
            Codec::Fp16 => "fp16",
            Codec::Int8 => "int8",
            Codec::TopK => "top_k",
        }
    }

    /// The codec [`Codec::name`] names (a round announcement carries it as text).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    fn to_byte(self) -> u8 {
        match self {
            Codec::Fp32 => 0,
            Codec::Fp16 => 1,
            Codec::Int8 => 2,
            Codec::TopK => 3,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => Codec::Fp32,
            1 => Codec::Fp16,
            2 => Codec::Int8,
            3 => Codec::TopK,
            _ => return None,
        })
    }
}

/// Which codec a node sends with, and its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CodecConfig {
    pub codec: Codec,
    /// Values per int8 block (one f32 scale each). Default 256.
    pub int8_block: usize,
    /// Fraction of values top-k keeps, in (0, 1]. Default 0.01.
    pub topk_fraction: f32,
}

impl Default for CodecConfig {
    /// int8: a quarter of fp32's bytes and no measurable loss (BENCHMARKS.md, "Delta codecs";
    /// EXPERIMENTS.md, E); fp32 stays a config value.
    fn default() -> Self {
        Self {
            codec: Codec::Int8,
            int8_block: 256,
            topk_fraction: 0.01,
        }
    }
}

impl CodecConfig {
    /// Checks the parameters (all of them, whichever codec is chosen).
    pub fn validate(&self) -> Result<(), String> {
        if self.int8_block == 0 || self.int8_block > u32::MAX as usize {
            return Err(format!(
                "int8_block is {}, expected 1 to {}",
                self.int8_block,
                u32::MAX
            ));
        }
        if !(self.topk_fraction > 0.0 && self.topk_fraction <= 1.0) {
            return Err(format!(
                "topk_fraction is {}, expected a number in (0, 1]",
                self.topk_fraction
            ));
        }
        Ok(())
    }

    /// How many values top-k keeps out of `n`: round(fraction·n), at least 1 (0 when n is 0).
    pub fn topk_count(&self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        ((self.topk_fraction as f64 * n as f64).round() as usize).clamp(1, n)
    }

    /// The header parameter for a vector of `n` values.
    fn param(&self, n: usize) -> u32 {
        match self.codec {
            Codec::Fp32 | Codec::Fp16 => 0,
            Codec::Int8 => self.int8_block as u32,
            Codec::TopK => {
                u32::try_from(self.topk_count(n)).expect("top-k needs at most u32::MAX values")
            }
        }
    }
}

/// What is wrong with a message a peer sent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    #[error("message is {0} bytes, shorter than the {HEADER_LEN}-byte header")]
    TooShort(usize),
    #[error("bad magic {0:02x?}, expected \"NSDC\"")]
    BadMagic([u8; 4]),
    #[error("unsupported version {0}, expected {VERSION}")]
    UnsupportedVersion(u8),
    #[error("unknown codec byte {0}")]
    UnknownCodec(u8),
    #[error("reserved header field is {0}, expected 0")]
    Reserved(u16),
    #[error("message holds {got} values, expected {expected}")]
    WrongLength { got: u64, expected: usize },
    #[error("{codec:?} parameter {param} is invalid: {reason}")]
    BadParam {
        codec: Codec,
        param: u32,
        reason: &'static str,
    },
    #[error("{codec:?} payload is {got} bytes, expected {expected}")]
    PayloadLength {
        codec: Codec,
        got: usize,
        expected: usize,
    },
    #[error("int8 block {block} has scale {scale}, expected a finite number ≥ 0")]
    BadScale { block: usize, scale: f32 },
    #[error("int8 value at index {0} is −128, outside [−127, 127]")]
    Int8OutOfRange(usize),
    #[error("top-k entry {position} has index {index}, not below the length {len}")]
    IndexOutOfRange {
        position: usize,
        index: u32,
        len: usize,
    },
    #[error("top-k entry {position} has index {index}, not above the previous index {previous}")]
    IndexNotIncreasing {
        position: usize,
        index: u32,
        previous: u32,
    },
    #[error("value at index {0} is not finite")]
    NonFinite(usize),
    #[error("L2 norm {norm} is above the limit {max_norm}")]
    NormTooLarge { norm: f64, max_norm: f32 },
}

/// Payload bytes for (codec, n, parameter); None when that does not fit in usize.
fn payload_len(codec: Codec, n: usize, param: u32) -> Option<usize> {
    match codec {
        Codec::Fp32 => n.checked_mul(4),
        Codec::Fp16 => n.checked_mul(2),
        Codec::Int8 => n
            .div_ceil((param as usize).max(1))
            .checked_mul(4)?
            .checked_add(n),
        Codec::TopK => (param as usize).checked_mul(8),
    }
}

/// Total message size [`encode`] produces for `n` values: header plus payload.
pub fn encoded_len(config: &CodecConfig, n: usize) -> usize {
    HEADER_LEN
        + payload_len(config.codec, n, config.param(n)).expect("message size overflows usize")
}

/// The longest message [`encode`] can produce for `n` values with `codec`, whatever its
/// parameters: a round announcement names the codec, not its block size or fraction, so this is
/// what a receiver may accept. The worst parameters are int8 blocks of one value (a scale each:
/// 5 bytes a value) and top-k keeping every value (8 bytes a value). Saturates at u64::MAX.
pub fn max_encoded_len(codec: Codec, n: usize) -> u64 {
    let worst_param = match codec {
        Codec::Fp32 | Codec::Fp16 => 0,
        Codec::Int8 => 1,
        // `decode` takes no k above n, and none above u32::MAX.
        Codec::TopK => u32::try_from(n).unwrap_or(u32::MAX),
    };
    payload_len(codec, n, worst_param)
        .and_then(|payload| payload.checked_add(HEADER_LEN))
        .map_or(u64::MAX, |len| len as u64)
}

/// The longest Δ message of `n` values under any codec (top-k keeping every value). θ₀ and the
/// momentum (4 bytes a value) are shorter, so no blob of a model of `n` parameters is longer.
pub fn max_delta_len(n: usize) -> u64 {
    Codec::ALL
        .into_iter()
        .map(|codec| max_encoded_len(codec, n))
        .fold(0, u64::max)
}

/// Values per parallel work item for the element-wise codecs.
const CHUNK: usize = 1 << 14;

/// |x| as bits: for non-negative floats the integer order is the float order, and NaNs sort above
/// ±∞, so a maximum over these propagates NaN.
#[inline]
fn magnitude_bits(x: f32) -> u32 {
    x.to_bits() & 0x7fff_ffff
}

fn write_header(header: &mut [u8], codec: Codec, n: usize, param: u32) {
    header[0..4].copy_from_slice(&MAGIC);
    header[4] = VERSION;
    header[5] = codec.to_byte();
    header[6..8].copy_from_slice(&0u16.to_le_bytes());
    header[8..16].copy_from_slice(&(n as u64).to_le_bytes());
    header[16..20].copy_from_slice(&param.to_le_bytes());
}

/// The values `range` of an encoded message, as a message of their own that [`decode`] reads to
/// exactly those values: bytes cut out, nothing re-quantized, so an aggregator of a slice sees
/// what a full-mesh node decodes there. For int8 the range must start on a block boundary and
/// end on one or at the end. None when the message does not parse or the range does not fit.
pub fn extract(bytes: &[u8], range: std::ops::Range<usize>) -> Option<Vec<u8>> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?)).ok()?;
    let parsed = parse(bytes, n).ok()?;
    let (start, end) = (range.start, range.end);
    if start > end || end > n {
        return None;
    }
    let payload = parsed.payload;
    let (param, part): (u32, Vec<u8>) = match parsed.codec {
        Codec::Fp32 => (0, payload[4 * start..4 * end].to_vec()),
        Codec::Fp16 => (0, payload[2 * start..2 * end].to_vec()),
        Codec::Int8 => {
            let block = parsed.param as usize;
            if start % block != 0 || (end % block != 0 && end != n) {
                return None;
            }
            let stride = 4 + block;
            let to = if end == n {
                payload.len()
            } else {
                end / block * stride
            };
            (parsed.param, payload[start / block * stride..to].to_vec())
        }
        Codec::TopK => {
            let mut part = Vec::new();
            for entry in payload.chunks_exact(8) {
                let index = u32::from_le_bytes(entry[..4].try_into().expect("4 bytes")) as usize;
                if (start..end).contains(&index) {
                    part.extend_from_slice(&((index - start) as u32).to_le_bytes());
                    part.extend_from_slice(&entry[4..]);
                }
            }
            ((part.len() / 8) as u32, part)
        }
    };
    let mut out = vec![0u8; HEADER_LEN];
    write_header(&mut out, parsed.codec, end - start, param);
    out.extend_from_slice(&part);
    Some(out)
}

/// Encodes our own Δ. Panics if `config` is invalid (see [`CodecConfig::validate`]), or for
/// top-k with more than u32::MAX values. Non-finite values in `delta` are not hidden: they reach
/// the wire as non-finite values (or scales), which [`decode`] rejects.
pub fn encode(config: &CodecConfig, delta: &[f32]) -> Vec<u8> {
    if let Err(reason) = config.validate() {
        panic!("invalid codec config: {reason}");
    }
    let n = delta.len();
    let param = config.param(n);
    let mut out = vec![0u8; encoded_len(config, n)];
    let (header, payload) = out.split_at_mut(HEADER_LEN);
    write_header(header, config.codec, n, param);
    match config.codec {
        Codec::Fp32 => payload
            .par_chunks_mut(4 * CHUNK)
            .zip(delta.par_chunks(CHUNK))
            .for_each(|(dst, src)| {
                for (d, x) in dst.chunks_exact_mut(4).zip(src) {
                    d.copy_from_slice(&x.to_le_bytes());
                }
            }),
        Codec::Fp16 => payload
            .par_chunks_mut(2 * CHUNK)
            .zip(delta.par_chunks(CHUNK))
            .for_each_init(
                || (vec![0.0f32; CHUNK], vec![f16::ZERO; CHUNK]),
                |(saturated, halves), (dst, src)| {
                    let (saturated, halves) =
                        (&mut saturated[..src.len()], &mut halves[..src.len()]);
                    for (s, &x) in saturated.iter_mut().zip(src) {
                        *s = saturate_to_f16_range(x);
                    }
                    halves.convert_from_f32_slice(saturated);
                    for (d, h) in dst.chunks_exact_mut(2).zip(halves.iter()) {
                        d.copy_from_slice(&h.to_le_bytes());
                    }
                },
            ),
        Codec::Int8 => {
            let block = config.int8_block;
            payload
                .par_chunks_mut(4 + block)
                .zip(delta.par_chunks(block))
                .for_each(|(dst, src)| encode_int8_block(src, dst));
        }
        Codec::TopK => encode_topk(delta, param as usize, payload),
    }
    out
}

fn encode_int8_block(src: &[f32], dst: &mut [u8]) {
    let absmax = f32::from_bits(src.iter().map(|&x| magnitude_bits(x)).max().unwrap_or(0));
    let scale = absmax / 127.0;
    dst[..4].copy_from_slice(&scale.to_le_bytes());
    let q = &mut dst[4..];
    if scale > 0.0 && scale.is_finite() {
        for (q, &x) in q.iter_mut().zip(src) {
            // `as i8` saturates (and maps NaN to 0); the clamp keeps −128 out.
            *q = (x / scale).round().clamp(-127.0, 127.0) as i8 as u8;
        }
    } else {
        // All zeros, or a non-finite scale the receiver rejects anyway.
        q.fill(0);
    }
}

/// Writes the k entries of largest magnitude, by increasing index, into `payload` (8k bytes).
/// O(n): one selection on a copy of the magnitudes for the threshold, then a parallel scan.
fn encode_topk(delta: &[f32], k: usize, payload: &mut [u8]) {
    let n = delta.len();
    if k == 0 {
        return;
    }
    // t: the k-th largest magnitude. Everything above it is kept; of the values equal to it, as
    // many as are needed, lowest indices first.
    let threshold = {
        let mut mags: Vec<u32> = delta.par_iter().map(|&x| magnitude_bits(x)).collect();
        *mags.select_nth_unstable(n - k).1
    };
    let counts: Vec<(usize, usize)> = delta
        .par_chunks(CHUNK)
        .map(|chunk| {
            chunk.iter().fold((0, 0), |(above, equal), &x| {
                let m = magnitude_bits(x);
                (
                    above + usize::from(m > threshold),
                    equal + usize::from(m == threshold),
                )
            })
        })
        .collect();
    let mut ties_left = k - counts.iter().map(|c| c.0).sum::<usize>();
    let mut rest = payload;
    let mut jobs = Vec::with_capacity(counts.len());
    for (i, &(above, equal)) in counts.iter().enumerate() {
        let ties = equal.min(ties_left);
        ties_left -= ties;
        let (dst, tail) = std::mem::take(&mut rest).split_at_mut(8 * (above + ties));
        jobs.push((i, dst, ties));
        rest = tail;
    }
    debug_assert!(rest.is_empty() && ties_left == 0);
    jobs.into_par_iter().for_each(|(i, dst, mut ties)| {
        let start = i * CHUNK;
        let chunk = &delta[start..(start + CHUNK).min(n)];
        let mut entries = dst.chunks_exact_mut(8);
        for (j, &x) in chunk.iter().enumerate() {
            let m = magnitude_bits(x);
            let keep = if m == threshold && ties > 0 {
                ties -= 1;
                true
            } else {
                m > threshold
            };
            if keep {
                let entry = entries.next().expect("top-k counts are consistent");
                entry[..4].copy_from_slice(&((start + j) as u32).to_le_bytes());
                entry[4..].copy_from_slice(&x.to_le_bytes());
            }
        }
    });
}

/// A header that passed every check against the payload length.
struct Parsed<'a> {
    codec: Codec,
    param: u32,
    payload: &'a [u8],
}

fn parse(bytes: &[u8], expected_len: usize) -> Result<Parsed<'_>, CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::TooShort(bytes.len()));
    }
    let (header, payload) = bytes.split_at(HEADER_LEN);
    let magic: [u8; 4] = header[0..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(CodecError::BadMagic(magic));
    }
    if header[4] != VERSION {
        return Err(CodecError::UnsupportedVersion(header[4]));
    }
    let codec = Codec::from_byte(header[5]).ok_or(CodecError::UnknownCodec(header[5]))?;
    let reserved = u16::from_le_bytes([header[6], header[7]]);
    if reserved != 0 {
        return Err(CodecError::Reserved(reserved));
    }
    let count = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    if count != expected_len as u64 {
        return Err(CodecError::WrongLength {
            got: count,
            expected: expected_len,
        });
    }
    let n = expected_len;
    let param = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes"));
    let bad_param = |reason| CodecError::BadParam {
        codec,
        param,
        reason,
    };
    match codec {
        Codec::Fp32 | Codec::Fp16 if param != 0 => return Err(bad_param("expected 0")),
        Codec::Int8 if param == 0 => return Err(bad_param("block size 0")),
        Codec::TopK if param as u64 > n as u64 => {
            return Err(bad_param("k is above the element count"));
        }
        _ => {}
    }
    let expected =
        payload_len(codec, n, param).ok_or_else(|| bad_param("payload size overflows"))?;
    if payload.len() != expected {
        return Err(CodecError::PayloadLength {
            codec,
            got: payload.len(),
            expected,
        });
    }
    Ok(Parsed {
        codec,
        param,
        payload,
    })
}

/// Checks what the element-wise pass does not: int8 scales and codes, top-k indices.
fn check_structure(parsed: &Parsed, n: usize) -> Result<(), CodecError> {
    match parsed.codec {
        Codec::Fp32 | Codec::Fp16 => Ok(()),
        Codec::Int8 => {
            let block = (parsed.param as usize).min(n.max(1));
            parsed
                .payload
                .par_chunks(4 + block)
                .enumerate()
                .try_for_each(|(b, chunk)| {
                    let scale = f32::from_le_bytes(chunk[..4].try_into().expect("4 bytes"));
                    if !(scale.is_finite() && scale >= 0.0) {
                        return Err(CodecError::BadScale { block: b, scale });
                    }
                    match chunk[4..].iter().position(|&q| q == 0x80) {
                        Some(j) => Err(CodecError::Int8OutOfRange(b * block + j)),
                        None => Ok(()),
                    }
                })
        }
        Codec::TopK => {
            let mut previous: Option<u32> = None;
            for (position, entry) in parsed.payload.chunks_exact(8).enumerate() {
                let index = u32::from_le_bytes(entry[..4].try_into().expect("4 bytes"));
                if index as u64 >= n as u64 {
                    return Err(CodecError::IndexOutOfRange {
                        position,
                        index,
                        len: n,
                    });
                }
                if let Some(previous) = previous
                    && index <= previous
                {
                    return Err(CodecError::IndexNotIncreasing {
                        position,
                        index,
                        previous,
                    });
                }
                previous = Some(index);
            }
            Ok(())
        }
    }
}

/// Applies `f(slot, decoded value)` to every position a parsed, structurally checked message
/// covers (all n for the dense codecs, the k kept indices for top-k).
fn for_each_decoded(parsed: &Parsed, out: &mut [f32], f: impl Fn(&mut f32, f32) + Sync + Send) {
    let n = out.len();
    match parsed.codec {
        Codec::Fp32 => out
            .par_chunks_mut(CHUNK)
            .zip(parsed.payload.par_chunks(4 * CHUNK))
            .for_each(|(dst, src)| {
                for (d, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                    f(d, f32::from_le_bytes(b.try_into().expect("4 bytes")));
                }
            }),
        Codec::Fp16 => out
            .par_chunks_mut(CHUNK)
            .zip(parsed.payload.par_chunks(2 * CHUNK))
            .for_each_init(
                || (vec![f16::ZERO; CHUNK], vec![0.0f32; CHUNK]),
                |(halves, values), (dst, src)| {
                    let (halves, values) = (&mut halves[..dst.len()], &mut values[..dst.len()]);
                    for (h, b) in halves.iter_mut().zip(src.chunks_exact(2)) {
                        *h = f16::from_le_bytes([b[0], b[1]]);
                    }
                    halves.convert_to_f32_slice(values);
                    for (d, &v) in dst.iter_mut().zip(values.iter()) {
                        f(d, v);
                    }
                },
            ),
        Codec::Int8 => {
            if n == 0 {
                return;
            }
            let block = (parsed.param as usize).min(n);
            out.par_chunks_mut(block)
                .zip(parsed.payload.par_chunks(4 + block))
                .for_each(|(dst, src)| {
                    let scale = f32::from_le_bytes(src[..4].try_into().expect("4 bytes"));
                    for (d, &q) in dst.iter_mut().zip(&src[4..]) {
                        f(d, q as i8 as f32 * scale);
                    }
                });
        }
        Codec::TopK => {
            for entry in parsed.payload.chunks_exact(8) {
                let index = u32::from_le_bytes(entry[..4].try_into().expect("4 bytes")) as usize;
                let value = f32::from_le_bytes(entry[4..].try_into().expect("4 bytes"));
                f(&mut out[index], value);
            }
        }
    }
}

/// Decodes a peer's message into `expected_len` values. Checks the header (magic, version, known
/// codec, reserved 0, count == `expected_len`, parameter), that the payload length is exact, int8
/// scales finite and ≥ 0 with codes in [−127, 127], top-k indices in range and strictly
/// increasing, every decoded value finite, and the L2 norm ≤ `max_norm` (a NaN `max_norm`
/// rejects everything; +∞ disables the check). Never panics; allocates only after the header
/// and payload length check out, and never more than `expected_len` values.
pub fn decode(bytes: &[u8], expected_len: usize, max_norm: f32) -> Result<Vec<f32>, CodecError> {
    let parsed = parse(bytes, expected_len)?;
    check_structure(&parsed, expected_len)?;
    let mut out = vec![0.0f32; expected_len];
    for_each_decoded(&parsed, &mut out, |d, v| *d = v);
    let norm = crate::aggregate::norm(&out);
    if !norm.is_finite() {
        let index = out
            .par_iter()
            .position_first(|x| !x.is_finite())
            .unwrap_or(0);
        return Err(CodecError::NonFinite(index));
    }
    if max_norm.is_nan() || norm > max_norm as f64 {
        return Err(CodecError::NormTooLarge { norm, max_norm });
    }
    Ok(out)
}

/// Decodes as [`decode`] does, and keeps an int8 message's bytes as [`Int8Codes`] (shared, not
/// copied) for the rules that read codes instead of values.
pub fn decode_keeping_codes(
    bytes: Arc<Vec<u8>>,
    expected_len: usize,
    max_norm: f32,
) -> Result<(Vec<f32>, Option<Int8Codes>), CodecError> {
    let values = decode(&bytes, expected_len, max_norm)?;
    let parsed = parse(&bytes, expected_len)?;
    let codes = (parsed.codec == Codec::Int8).then(|| Int8Codes {
        block: (parsed.param as usize).min(expected_len.max(1)),
        len: expected_len,
        bytes: Arc::clone(&bytes),
    });
    Ok((values, codes))
}

/// The codes of an int8 message that [`decode_keeping_codes`] accepted: scales finite and ≥ 0,
/// codes in [−127, 127]. The Gram matrix of such messages is computed from their codes
/// (`aggregate::pairwise_sq_distances`): a quarter of the bytes of the values, and per block
/// exact integer products.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Codes {
    bytes: Arc<Vec<u8>>,
    block: usize,
    len: usize,
}

impl Int8Codes {
    /// Values per block (the last block may be shorter).
    pub fn block(&self) -> usize {
        self.block
    }

    /// Values the message holds.
    pub fn num_values(&self) -> usize {
        self.len
    }

    /// Blocks the message holds.
    pub fn num_blocks(&self) -> usize {
        self.len.div_ceil(self.block)
    }

    /// The payload bytes of `blocks`, each `[f32 scale, little-endian][its codes as i8]`.
    /// Panics when the range is past [`Self::num_blocks`].
    pub fn blocks(&self, blocks: Range<usize>) -> &[u8] {
        let stride = 4 + self.block;
        let payload = &self.bytes[HEADER_LEN..];
        &payload[blocks.start * stride..(blocks.end * stride).min(payload.len())]
    }
}

/// Error feedback (Karimireddy et al., 2019, "Error Feedback Fixes SignSGD"; as used with
/// compressed DiLoCo): what lossy encoding dropped this round is added to the next round's Δ, so
/// over rounds the sum of what was sent tracks the sum of the true Δs, the gap being the current
/// residual.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorFeedback {
    residual: Vec<f32>,
}

impl ErrorFeedback {
    /// A zero residual for vectors of `len` values.
    pub fn new(len: usize) -> Self {
        Self {
            residual: vec![0.0; len],
        }
    }

    /// Restores the residual saved in a checkpoint.
    pub fn from_residual(residual: Vec<f32>) -> Self {
        Self { residual }
    }

    /// What has not been sent yet, for checkpoints.
    pub fn residual(&self) -> &[f32] {
        &self.residual
    }

    /// corrected = Δ + residual; bytes = encode(corrected); residual = corrected − decode(bytes).
    /// Returns the bytes. Works in place in the residual buffer (no full-size copy besides the
    /// message). A non-finite corrected value is sent as is (peers reject the message) and its
    /// residual is reset to 0 rather than carried into later rounds. The sender's own
    /// contribution to aggregation should be the decoded bytes, like everyone else's.
    /// Panics if `delta` and the residual differ in length, or as [`encode`] does.
    pub fn encode(&mut self, config: &CodecConfig, delta: &[f32]) -> Vec<u8> {
        assert_eq!(
            delta.len(),
            self.residual.len(),
            "Δ and the error-feedback residual differ in length"
        );
        self.residual
            .par_iter_mut()
            .with_min_len(CHUNK)
            .zip(delta)
            .for_each(|(r, &d)| *r += d);
        let bytes = encode(config, &self.residual);
        let parsed = Parsed {
            codec: config.codec,
            param: config.param(delta.len()),
            payload: &bytes[HEADER_LEN..],
        };
        for_each_decoded(&parsed, &mut self.residual, |r, v| *r -= v);
        self.residual
            .par_iter_mut()
            .with_min_len(CHUNK)
            .for_each(|r| {
                if !r.is_finite() {
                    *r = 0.0;
                }
            });
        bytes
    }
}

/// Finite values beyond the f16 range become ±[`F16_MAX`] (rounding would make them ±∞); ±∞ and
/// NaN pass unchanged, so they stay non-finite on the wire. [`Codec::Fp16`] converts what this
/// returns with `half` (IEEE round to nearest, ties to even; F16C where the CPU has it).
#[inline]
fn saturate_to_f16_range(x: f32) -> f32 {
    if x.is_infinite() {
        x
    } else {
        x.clamp(-F16_MAX, F16_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::corpus::SplitMix64;

    #[test]
    fn an_extracted_range_decodes_to_exactly_those_values_of_the_whole() {
        let delta = random_vec(7, 1000, -4.0, 1.0);
        for codec in Codec::ALL {
            let config = CodecConfig {
                codec,
                int8_block: 64,
                topk_fraction: 0.1,
            };
            let bytes = encode(&config, &delta);
            let whole = decode(&bytes, 1000, f32::INFINITY).unwrap();
            for range in [0..1000, 0..128, 128..192, 640..1000, 960..1000, 64..64] {
                let part = extract(&bytes, range.clone()).unwrap();
                let values = decode(&part, range.len(), f32::INFINITY).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&values),
                    bits(&whole[range.clone()]),
                    "{codec:?} {range:?}"
                );
            }
            // Out of bounds, reversed or (int8) off a block boundary: refused.
            assert_eq!(extract(&bytes, 900..1001), None);
            #[allow(clippy::reversed_empty_ranges)] // a peer can ask for one
            let reversed = 10..5;
            assert_eq!(extract(&bytes, reversed), None);
            if codec == Codec::Int8 {
                assert_eq!(extract(&bytes, 10..64), None);
            }
        }
        assert_eq!(extract(b"NSDC garbage", 0..1), None);
    }

    fn uniform(rng: &mut SplitMix64) -> f64 {
        (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Random signs, magnitudes log-uniform in [10^lo, 10^hi], and some exact zeros.
    fn random_vec(seed: u64, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..n)
            .map(|_| {
                if rng.below(50) == 0 {
                    return 0.0;
                }
                let magnitude = 10f64.powf(lo + (hi - lo) * uniform(&mut rng));
                let sign = if rng.below(2) == 0 { -1.0 } else { 1.0 };
                (sign * magnitude) as f32
            })
            .collect()
    }

    fn config(codec: Codec) -> CodecConfig {
        CodecConfig {
            codec,
            ..CodecConfig::default()
        }
    }

    fn norm(v: &[f32]) -> f64 {
        v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt()
    }

    /// The fp16 wire values of `xs` as bits, through [`encode`] (so through the chunked slice
    /// conversion and the saturation the codec really uses).
    fn fp16_bits(xs: &[f32]) -> Vec<u16> {
        encode(&config(Codec::Fp16), xs)[HEADER_LEN..]
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect()
    }

    /// The f32s fp16 wire values decode to, through the decoder's conversion (without
    /// [`decode`]'s checks, so ±∞ and NaN come out as they are).
    fn fp16_values(bits: &[u16]) -> Vec<f32> {
        let payload: Vec<u8> = bits.iter().flat_map(|h| h.to_le_bytes()).collect();
        let parsed = Parsed {
            codec: Codec::Fp16,
            param: 0,
            payload: &payload,
        };
        let mut out = vec![0.0f32; bits.len()];
        for_each_decoded(&parsed, &mut out, |d, v| *d = v);
        out
    }

    #[test]
    fn f16_known_values() {
        let cases: &[(f32, u16)] = &[
            (0.0, 0x0000),
            (-0.0, 0x8000),
            (1.0, 0x3c00),
            (-2.0, 0xc000),
            (0.5, 0x3800),
            (0.1, 0x2e66),
            (1.0 / 3.0, 0x3555),
            (65504.0, 0x7bff),
            (-65504.0, 0xfbff),
            (65519.0, 0x7bff),
            (65520.0, 0x7bff), // IEEE would give ∞: saturates
            (1e10, 0x7bff),
            (-f32::MAX, 0xfbff),
            (f32::INFINITY, 0x7c00),
            (f32::NEG_INFINITY, 0xfc00),
            (2f32.powi(-14), 0x0400),            // smallest normal
            (2f32.powi(-24), 0x0001),            // smallest subnormal
            (2f32.powi(-25), 0x0000),            // half of it: tie, to even (0)
            (1.5 * 2f32.powi(-25), 0x0001),      // above the tie
            (1.5 * 2f32.powi(-24), 0x0002),      // tie between 1 and 2: even (2)
            (2.5 * 2f32.powi(-24), 0x0002),      // tie between 2 and 3: even (2)
            (1023.0 * 2f32.powi(-24), 0x03ff),   // largest subnormal
            (1.0 + 1.0 / 2048.0, 0x3c00),        // tie between 0x3c00 and 0x3c01: even
            (1.0 + 3.0 / 2048.0, 0x3c02),        // tie between 0x3c01 and 0x3c02: even
            (1.0 + 1.0 / 2048.0 + 1e-7, 0x3c01), // just above the tie
            (2047.5, 0x6800),                    // tie between 2047 (0x67ff) and 2048: even
            (2047.4, 0x67ff),
            (f32::from_bits(0x0000_0001), 0x0000), // f32 subnormal
        ];
        let xs: Vec<f32> = cases.iter().map(|c| c.0).collect();
        for (&(x, bits), got) in cases.iter().zip(fp16_bits(&xs)) {
            assert_eq!(got, bits, "{x:e}");
        }
        let nan = fp16_bits(&[f32::NAN, -f32::NAN]);
        assert!(fp16_values(&nan).iter().all(|v| v.is_nan()), "{nan:04x?}");
        assert_eq!(
            fp16_values(&[0x7bff, 0x0001, 0x8001, 0x3555, 0x7c00, 0xfc00]),
            [
                65504.0,
                2f32.powi(-24),
                -(2f32.powi(-24)),
                0.333_251_95,
                f32::INFINITY,
                f32::NEG_INFINITY
            ]
        );
    }

    #[test]
    fn every_f16_round_trips_through_f32() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let values = fp16_values(&all);
        let back = fp16_bits(&values);
        for ((&h, &x), &again) in all.iter().zip(&values).zip(&back) {
            if x.is_nan() {
                assert!((h & 0x7c00) == 0x7c00 && (h & 0x03ff) != 0, "{h:#06x}");
                assert!(
                    (again & 0x7c00) == 0x7c00 && (again & 0x03ff) != 0,
                    "{h:#06x} → {again:#06x}"
                );
            } else {
                // half's software conversion (CPUs without F16C) agrees.
                assert_eq!(
                    x.to_bits(),
                    f16::from_bits(h).to_f32_const().to_bits(),
                    "{h:#06x}"
                );
                assert_eq!(again, h, "{h:#06x} → {x:e}");
            }
        }
    }

    /// For f32s sampled across the whole bit space: the f16 chosen is the nearest (ties to even),
    /// or ±65504 beyond the range.
    #[test]
    fn f32_to_f16_rounds_to_nearest_even() {
        let xs: Vec<f32> = (0..=u32::MAX / 7919)
            .map(|i| f32::from_bits(i * 7919))
            .filter(|x| x.is_finite())
            .collect();
        let bits = fp16_bits(&xs);
        let values = fp16_values(&bits);
        for ((&x, &h), &y) in xs.iter().zip(&bits).zip(&values) {
            // half's software conversion (CPUs without F16C) picks the same f16.
            let software = f16::from_f32_const(saturate_to_f16_range(x)).to_bits();
            assert_eq!(software, h, "{x:e}");
            let (xd, y) = (x as f64, y as f64);
            if xd.abs() >= 65504.0 {
                assert_eq!(y, 65504.0f64.copysign(xd), "{x:e}");
            } else {
                // Neighbours of h in the same sign (toward and away from zero).
                let mag = h & 0x7fff;
                let sign = h & 0x8000;
                let err = (xd - y).abs();
                for m in [mag.wrapping_sub(1), mag + 1] {
                    if m < 0x7c00 {
                        let other = f16::from_bits(sign | m).to_f64();
                        let other_err = (xd - other).abs();
                        assert!(
                            err < other_err || (err == other_err && mag & 1 == 0),
                            "{x:e} → {h:#06x} ({y:e}), but {:#06x} ({other:e}) is nearer",
                            sign | m
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn fp32_round_trips_exactly() {
        let delta = random_vec(1, 10_007, -30.0, 30.0);
        let bytes = encode(&config(Codec::Fp32), &delta);
        assert_eq!(bytes.len(), HEADER_LEN + 4 * delta.len());
        assert_eq!(decode(&bytes, delta.len(), f32::INFINITY).unwrap(), delta);
    }

    #[test]
    fn fp16_round_trips_within_its_bound() {
        let mut delta = random_vec(2, 50_003, -9.0, 6.0);
        delta.extend([70000.0, -1e9, 65519.0, 2f32.powi(-14), -(2f32.powi(-20))]);
        let bytes = encode(&config(Codec::Fp16), &delta);
        assert_eq!(bytes.len(), HEADER_LEN + 2 * delta.len());
        let decoded = decode(&bytes, delta.len(), f32::INFINITY).unwrap();
        let (mut normals, mut subnormals, mut saturated) = (0, 0, 0);
        for (&x, &y) in delta.iter().zip(&decoded) {
            let (x, y) = (x as f64, y as f64);
            if x.abs() > 65504.0 {
                assert_eq!(y, 65504.0f64.copysign(x));
                saturated += 1;
            } else if x.abs() >= 2f64.powi(-14) {
                assert!((x - y).abs() <= x.abs() * 2f64.powi(-11), "{x:e} → {y:e}");
                normals += 1;
            } else {
                assert!((x - y).abs() <= 2f64.powi(-25), "{x:e} → {y:e}");
                subnormals += 1;
            }
        }
        assert!(
            normals > 25_000 && subnormals > 10_000 && saturated > 1000,
            "{normals} {subnormals} {saturated}"
        );
    }

    fn check_int8(delta: &[f32], block: usize) {
        let cfg = CodecConfig {
            codec: Codec::Int8,
            int8_block: block,
            ..CodecConfig::default()
        };
        let bytes = encode(&cfg, delta);
        let n = delta.len();
        assert_eq!(bytes.len(), HEADER_LEN + n + 4 * n.div_ceil(block));
        assert_eq!(bytes.len(), encoded_len(&cfg, n));
        let decoded = decode(&bytes, n, f32::INFINITY).unwrap();
        for (b, (xs, ys)) in delta.chunks(block).zip(decoded.chunks(block)).enumerate() {
            let absmax = xs.iter().fold(0f32, |m, x| m.max(x.abs()));
            let scale = (absmax / 127.0) as f64;
            for (&x, &y) in xs.iter().zip(ys) {
                let err = (x as f64 - y as f64).abs();
                assert!(
                    err <= scale * (0.5 + 2f64.powi(-16)),
                    "block {b}: {x:e} → {y:e}, error {err:e} > scale/2 = {:e}",
                    scale / 2.0
                );
            }
        }
        // A receiver keeps the codes with the values.
        let (values, codes) = decode_keeping_codes(Arc::new(bytes), n, f32::INFINITY).unwrap();
        assert_eq!(values, decoded);
        let codes = codes.expect("an int8 message keeps its codes");
        assert_eq!(
            (codes.num_values(), codes.block()),
            (n, block.min(n.max(1)))
        );
    }

    #[test]
    fn int8_round_trips_within_half_a_scale() {
        // Mixed magnitudes within blocks (from 1e-8 to 1e4), a short last block, and blocks of
        // different sizes including 1 and larger than n.
        let delta = random_vec(3, 100_000 + 77, -8.0, 4.0);
        check_int8(&delta, 256);
        check_int8(&delta, 1);
        check_int8(&delta, 1000);
        check_int8(&delta[..100], 4096);
        check_int8(&random_vec(4, 5000, 20.0, 30.0), 64);
        check_int8(&random_vec(5, 5000, -30.0, -25.0), 64);
        check_int8(&[0.0; 300], 256);
        check_int8(&[], 256);
    }

    #[test]
    fn topk_keeps_the_largest_values_exactly() {
        let mut delta = random_vec(6, 100_003, -6.0, 2.0);
        // Ties at the threshold: many equal magnitudes, some negative.
        for i in (0..delta.len()).step_by(97) {
            delta[i] = if i % 2 == 0 { 0.5 } else { -0.5 };
        }
        for fraction in [0.01, 0.1, 1.0, 1e-9] {
            let cfg = CodecConfig {
                codec: Codec::TopK,
                topk_fraction: fraction,
                ..CodecConfig::default()
            };
            let k = cfg.topk_count(delta.len());
            let bytes = encode(&cfg, &delta);
            assert_eq!(bytes.len(), HEADER_LEN + 8 * k);
            assert_eq!(bytes.len(), encoded_len(&cfg, delta.len()));
            let decoded = decode(&bytes, delta.len(), f32::INFINITY).unwrap();
            // The kept indices, read off the wire (a kept value may be 0).
            let kept: Vec<usize> = bytes[HEADER_LEN..]
                .chunks_exact(8)
                .map(|e| u32::from_le_bytes(e[..4].try_into().unwrap()) as usize)
                .collect();
            assert_eq!(kept.len(), k, "fraction {fraction}");
            let mut is_kept = vec![false; delta.len()];
            let mut min_kept = f32::INFINITY;
            for &i in &kept {
                is_kept[i] = true;
                min_kept = min_kept.min(delta[i].abs());
            }
            for i in 0..delta.len() {
                assert_eq!(decoded[i], if is_kept[i] { delta[i] } else { 0.0 });
            }
            let max_dropped = (0..delta.len())
                .filter(|&i| !is_kept[i])
                .map(|i| delta[i].abs())
                .fold(0f32, f32::max);
            assert!(max_dropped <= min_kept, "fraction {fraction}");
        }
        let cfg = config(Codec::TopK);
        assert_eq!(cfg.topk_count(10_000_000), 100_000);
        assert_eq!(cfg.topk_count(10), 1);
        assert_eq!(cfg.topk_count(0), 0);
        assert_eq!(encode(&cfg, &[]).len(), HEADER_LEN);
        assert_eq!(
            decode(&encode(&cfg, &[]), 0, 0.0).unwrap(),
            Vec::<f32>::new()
        );
    }

    #[test]
    fn no_message_is_longer_than_its_codecs_bound_and_the_worst_parameters_reach_it() {
        let with = |codec, int8_block, topk_fraction| CodecConfig {
            codec,
            int8_block,
            topk_fraction,
        };
        for n in [0, 1, 7, 256, 1000, 10_007] {
            let delta = random_vec(n as u64, n, -3.0, 3.0);
            for codec in Codec::ALL {
                let bound = max_encoded_len(codec, n);
                let worst = encode(&with(codec, 1, 1.0), &delta);
                assert_eq!(worst.len() as u64, bound, "{codec:?}, n = {n}");
                for cfg in [config(codec), with(codec, 3, 0.3), with(codec, 4096, 1e-9)] {
                    let len = encode(&cfg, &delta).len() as u64;
                    assert!(len <= bound, "{cfg:?}, n = {n}: {len} > {bound}");
                }
            }
            assert_eq!(max_delta_len(n), max_encoded_len(Codec::TopK, n));
        }
        let bounds = Codec::ALL.map(|codec| max_encoded_len(codec, 1000));
        assert_eq!(bounds, [4020, 2020, 5020, 8020]);
        assert_eq!(max_encoded_len(Codec::Fp32, usize::MAX), u64::MAX);
        assert_eq!(
            max_encoded_len(Codec::TopK, usize::MAX),
            20 + 8 * u32::MAX as u64,
            "k is a u32"
        );
        for codec in Codec::ALL {
            assert_eq!(Codec::from_name(codec.name()), Some(codec));
        }
        assert_eq!(Codec::from_name("topk"), None);
    }

    #[test]
    fn topk_ties_go_to_the_lowest_indices() {
        let delta = [1.0, -3.0, 2.0, -2.0, 2.0, 0.0, 3.0, 2.0];
        let cfg = CodecConfig {
            codec: Codec::TopK,
            topk_fraction: 0.5,
            ..CodecConfig::default()
        };
        let decoded = decode(&encode(&cfg, &delta), 8, f32::INFINITY).unwrap();
        assert_eq!(decoded, [0.0, -3.0, 2.0, -2.0, 0.0, 0.0, 3.0, 0.0]);
    }

    #[test]
    fn header_layout() {
        let cfg = CodecConfig {
            codec: Codec::Int8,
            int8_block: 3,
            ..CodecConfig::default()
        };
        let bytes = encode(&cfg, &[1.0, -0.5, 0.0, 127.0]);
        assert_eq!(&bytes[..4], b"NSDC");
        assert_eq!(bytes[4], 1);
        assert_eq!(bytes[5], 2);
        assert_eq!(&bytes[6..8], &[0, 0]);
        assert_eq!(&bytes[8..16], &4u64.to_le_bytes());
        assert_eq!(&bytes[16..20], &3u32.to_le_bytes());
        // block 0: scale 1/127, codes 127, −64 (−63.5 rounds away from 0), 0
        assert_eq!(&bytes[20..24], &(1.0f32 / 127.0).to_le_bytes());
        assert_eq!(&bytes[24..27], &[127, (-64i8) as u8, 0]);
        // block 1: scale 1, code 127
        assert_eq!(&bytes[27..31], &1.0f32.to_le_bytes());
        assert_eq!(bytes[31], 127);
        assert_eq!(bytes.len(), 32);
    }

    #[test]
    fn nonfinite_input_reaches_the_wire_and_is_rejected() {
        let mut delta = random_vec(7, 1000, -3.0, 0.0);
        for (i, bad) in [(10, f32::NAN), (500, f32::INFINITY)] {
            delta[i] = bad;
            for codec in [Codec::Fp32, Codec::Fp16, Codec::Int8, Codec::TopK] {
                let err = decode(&encode(&config(codec), &delta), 1000, f32::INFINITY);
                assert!(
                    matches!(
                        err,
                        Err(CodecError::NonFinite(_) | CodecError::BadScale { .. })
                    ),
                    "{codec:?} {bad}: {err:?}"
                );
            }
            delta[i] = 0.0;
        }
    }

    /// A valid message for each codec with its parameters, for the rejection tests.
    fn samples() -> Vec<(Codec, Vec<f32>, Vec<u8>)> {
        let delta = random_vec(8, 300, -2.0, 0.0);
        [Codec::Fp32, Codec::Fp16, Codec::Int8, Codec::TopK]
            .into_iter()
            .map(|codec| {
                let cfg = CodecConfig {
                    codec,
                    int8_block: 64,
                    topk_fraction: 0.05,
                };
                (codec, delta.clone(), encode(&cfg, &delta))
            })
            .collect()
    }

    #[test]
    fn decode_rejects_malformed_headers_and_sizes() {
        for (codec, delta, bytes) in samples() {
            let n = delta.len();
            assert!(decode(&bytes, n, f32::INFINITY).is_ok(), "{codec:?}");
            assert!(matches!(
                decode(&bytes, n + 1, f32::INFINITY),
                Err(CodecError::WrongLength { got: 300, .. })
            ));
            assert!(matches!(
                decode(&bytes, n - 1, f32::INFINITY),
                Err(CodecError::WrongLength { .. })
            ));
            assert!(matches!(
                decode(&bytes[..bytes.len() - 1], n, f32::INFINITY),
                Err(CodecError::PayloadLength { .. })
            ));
            assert!(matches!(
                decode(&bytes[..HEADER_LEN - 1], n, f32::INFINITY),
                Err(CodecError::TooShort(19))
            ));
            let mut extra = bytes.clone();
            extra.push(0);
            assert!(matches!(
                decode(&extra, n, f32::INFINITY),
                Err(CodecError::PayloadLength { .. })
            ));
            let mut bad = bytes.clone();
            bad[0] = b'X';
            assert!(matches!(
                decode(&bad, n, f32::INFINITY),
                Err(CodecError::BadMagic(_))
            ));
            let mut bad = bytes.clone();
            bad[4] = 2;
            assert!(matches!(
                decode(&bad, n, f32::INFINITY),
                Err(CodecError::UnsupportedVersion(2))
            ));
            let mut bad = bytes.clone();
            bad[5] = 4;
            assert!(matches!(
                decode(&bad, n, f32::INFINITY),
                Err(CodecError::UnknownCodec(4))
            ));
            let mut bad = bytes.clone();
            bad[7] = 1;
            assert!(matches!(
                decode(&bad, n, f32::INFINITY),
                Err(CodecError::Reserved(256))
            ));
        }
    }

    #[test]
    fn decode_rejects_bad_parameters() {
        let [fp32, _, int8, topk] = &samples()[..] else {
            unreachable!()
        };
        let with_param = |bytes: &[u8], param: u32| {
            let mut bad = bytes.to_vec();
            bad[16..20].copy_from_slice(&param.to_le_bytes());
            decode(&bad, 300, f32::INFINITY)
        };
        assert!(matches!(
            with_param(&fp32.2, 1),
            Err(CodecError::BadParam { .. })
        ));
        assert!(matches!(
            with_param(&int8.2, 0),
            Err(CodecError::BadParam { .. })
        ));
        assert!(matches!(
            with_param(&int8.2, 100),
            Err(CodecError::PayloadLength { .. })
        ));
        assert!(matches!(
            with_param(&topk.2, 301),
            Err(CodecError::BadParam { .. })
        ));
        assert!(matches!(
            with_param(&topk.2, 14),
            Err(CodecError::PayloadLength { .. })
        ));
    }

    fn put_f32(bytes: &mut [u8], at: usize, x: f32) {
        bytes[at..at + 4].copy_from_slice(&x.to_le_bytes());
    }

    #[test]
    fn decode_rejects_nonfinite_values_and_scales() {
        let [fp32, fp16, int8, topk] = &samples()[..] else {
            unreachable!()
        };
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut b = fp32.2.clone();
            put_f32(&mut b, HEADER_LEN + 4 * 7, bad);
            assert_eq!(
                decode(&b, 300, f32::INFINITY),
                Err(CodecError::NonFinite(7))
            );

            let mut b = fp16.2.clone();
            let h = fp16_bits(&[bad])[0];
            b[HEADER_LEN + 2 * 9..HEADER_LEN + 2 * 9 + 2].copy_from_slice(&h.to_le_bytes());
            assert_eq!(
                decode(&b, 300, f32::INFINITY),
                Err(CodecError::NonFinite(9))
            );

            // second block's scale (block 64: each block is 68 bytes)
            let mut b = int8.2.clone();
            put_f32(&mut b, HEADER_LEN + 68, bad);
            assert!(matches!(
                decode(&b, 300, f32::INFINITY),
                Err(CodecError::BadScale { block: 1, .. })
            ));

            // third kept value
            let mut b = topk.2.clone();
            put_f32(&mut b, HEADER_LEN + 8 * 2 + 4, bad);
            assert!(matches!(
                decode(&b, 300, f32::INFINITY),
                Err(CodecError::NonFinite(_))
            ));
        }
        // A negative scale, a −128 code, and a finite scale whose codes overflow f32.
        let mut b = int8.2.clone();
        put_f32(&mut b, HEADER_LEN, -1.0);
        assert!(matches!(
            decode(&b, 300, f32::INFINITY),
            Err(CodecError::BadScale { block: 0, .. })
        ));
        let mut b = int8.2.clone();
        b[HEADER_LEN + 68 + 4 + 5] = 0x80;
        assert_eq!(
            decode(&b, 300, f32::INFINITY),
            Err(CodecError::Int8OutOfRange(64 + 5))
        );
        let mut b = int8.2.clone();
        put_f32(&mut b, HEADER_LEN, f32::MAX);
        assert!(matches!(
            decode(&b, 300, f32::INFINITY),
            Err(CodecError::NonFinite(_))
        ));
    }

    #[test]
    fn decode_rejects_bad_topk_indices() {
        let topk = samples().pop().unwrap().2;
        let index_at = |bytes: &[u8], p: usize| {
            u32::from_le_bytes(bytes[HEADER_LEN + 8 * p..][..4].try_into().unwrap())
        };
        let set_index = |bytes: &mut [u8], p: usize, i: u32| {
            bytes[HEADER_LEN + 8 * p..][..4].copy_from_slice(&i.to_le_bytes());
        };
        let k = (topk.len() - HEADER_LEN) / 8;
        assert_eq!(k, 15);
        // out of range (last entry)
        let mut b = topk.clone();
        set_index(&mut b, k - 1, 300);
        assert!(matches!(
            decode(&b, 300, f32::INFINITY),
            Err(CodecError::IndexOutOfRange { index: 300, .. })
        ));
        let mut b = topk.clone();
        set_index(&mut b, 0, u32::MAX);
        assert!(matches!(
            decode(&b, 300, f32::INFINITY),
            Err(CodecError::IndexOutOfRange { position: 0, .. })
        ));
        // duplicate
        let mut b = topk.clone();
        set_index(&mut b, 4, index_at(&topk, 3));
        assert!(matches!(
            decode(&b, 300, f32::INFINITY),
            Err(CodecError::IndexNotIncreasing { position: 4, .. })
        ));
        // decreasing (swap two entries)
        let mut b = topk.clone();
        b[HEADER_LEN + 8 * 5..HEADER_LEN + 8 * 7].rotate_left(8);
        assert!(matches!(
            decode(&b, 300, f32::INFINITY),
            Err(CodecError::IndexNotIncreasing { position: 6, .. })
        ));
    }

    #[test]
    fn decode_enforces_the_norm_limit() {
        for (codec, _, bytes) in samples() {
            let decoded = decode(&bytes, 300, f32::INFINITY).unwrap();
            let n = norm(&decoded) as f32;
            assert!(n > 0.0);
            assert!(decode(&bytes, 300, n * 1.001).is_ok(), "{codec:?}");
            assert!(
                matches!(
                    decode(&bytes, 300, n * 0.999),
                    Err(CodecError::NormTooLarge { .. })
                ),
                "{codec:?}"
            );
            assert!(decode(&bytes, 300, f32::NAN).is_err());
        }
    }

    /// Truncations at every length, every single-bit flip, and random bytes (with and without a
    /// valid header prefix): decode returns, never panics, and truncations are all errors.
    #[test]
    fn decode_never_panics_on_garbage() {
        let mut rng = SplitMix64::new(9);
        for (_, _, bytes) in samples() {
            for len in 0..bytes.len() {
                assert!(decode(&bytes[..len], 300, f32::INFINITY).is_err());
            }
            for i in 0..bytes.len() {
                for bit in 0..8 {
                    let mut b = bytes.clone();
                    b[i] ^= 1 << bit;
                    let _ = decode(&b, 300, 1e6);
                }
            }
            for _ in 0..200 {
                let mut b = bytes.clone();
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(b.len());
                    b[i] = rng.next_u64() as u8;
                }
                let _ = decode(&b, 300, 1e6);
            }
        }
        for _ in 0..2000 {
            let len = rng.below(400);
            let mut b: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            assert!(decode(&b, 300, f32::INFINITY).is_err());
            if len >= HEADER_LEN {
                b[..4].copy_from_slice(&MAGIC);
                b[4] = VERSION;
                b[5] = rng.below(5) as u8;
                b[6] = 0;
                b[7] = 0;
                if rng.below(2) == 0 {
                    b[8..16].copy_from_slice(&(len as u64).to_le_bytes());
                }
                let expected = if rng.below(2) == 0 { len } else { 300 };
                let _ = decode(&b, expected, f32::INFINITY);
                let _ = decode(&b, usize::MAX, f32::INFINITY);
            }
        }
    }

    #[test]
    fn config_validation_and_serde() {
        assert!(CodecConfig::default().validate().is_ok());
        for bad in [
            CodecConfig {
                int8_block: 0,
                ..CodecConfig::default()
            },
            CodecConfig {
                topk_fraction: 0.0,
                ..CodecConfig::default()
            },
            CodecConfig {
                topk_fraction: 1.5,
                ..CodecConfig::default()
            },
            CodecConfig {
                topk_fraction: f32::NAN,
                ..CodecConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let cfg: CodecConfig = serde_json::from_str(r#"{"codec":"top_k"}"#).unwrap();
        assert_eq!(cfg.codec, Codec::TopK);
        assert_eq!(cfg.int8_block, 256);
        assert_eq!(cfg.topk_fraction, 0.01);
        let cfg: CodecConfig =
            serde_json::from_str(r#"{"codec":"int8","int8_block":128}"#).unwrap();
        assert_eq!((cfg.codec, cfg.int8_block), (Codec::Int8, 128));
        assert!(serde_json::from_str::<CodecConfig>(r#"{"codec":"fp16","bogus":1}"#).is_err());
        assert!(serde_json::from_str::<CodecConfig>(r#"{"codec":"int4"}"#).is_err());
        for codec in Codec::ALL {
            assert_eq!(
                serde_json::to_string(&codec).unwrap(),
                format!("\"{}\"", codec.name())
            );
            assert_eq!(Codec::from_byte(codec.to_byte()), Some(codec));
        }
    }

    /// Runs `rounds` rounds of Δ_t = base·(1 + 0.2·u_t) (a persistent direction with jitter, as
    /// DiLoCo's Δs are), with and without error feedback. Returns per round the norm of the gap
    /// between the sums of true and decoded Δs with feedback, without, and the residual's norm.
    fn feedback_run(cfg: &CodecConfig, n: usize, rounds: usize) -> Vec<(f64, f64, f64)> {
        let mut rng = SplitMix64::new(10);
        let base = random_vec(11, n, -3.0, 0.0);
        let mut feedback = ErrorFeedback::new(n);
        let mut true_sum = vec![0f64; n];
        let mut fb_sum = vec![0f64; n];
        let mut plain_sum = vec![0f64; n];
        let mut out = Vec::new();
        for _ in 0..rounds {
            let delta: Vec<f32> = base
                .iter()
                .map(|&b| b * (1.0 + 0.2 * (2.0 * uniform(&mut rng) as f32 - 1.0)))
                .collect();
            let sent = decode(&feedback.encode(cfg, &delta), n, f32::INFINITY).unwrap();
            let plain = decode(&encode(cfg, &delta), n, f32::INFINITY).unwrap();
            for i in 0..n {
                true_sum[i] += delta[i] as f64;
                fb_sum[i] += sent[i] as f64;
                plain_sum[i] += plain[i] as f64;
            }
            // The gap with feedback is exactly the residual (up to f32 rounding).
            let scale = true_sum.iter().fold(0f64, |m, x| m.max(x.abs()));
            for i in 0..n {
                let gap = true_sum[i] - fb_sum[i];
                let r = feedback.residual()[i] as f64;
                assert!(
                    (gap - r).abs() <= 1e-5 * scale,
                    "{:?} index {i}: gap {gap:e}, residual {r:e}",
                    cfg.codec
                );
            }
            let gap_norm = |sum: &[f64]| {
                sum.iter()
                    .zip(&true_sum)
                    .map(|(s, t)| (t - s) * (t - s))
                    .sum::<f64>()
                    .sqrt()
            };
            out.push((
                gap_norm(&fb_sum),
                gap_norm(&plain_sum),
                norm(feedback.residual()),
            ));
        }
        out
    }

    fn check_feedback(cfg: &CodecConfig) -> Vec<(f64, f64, f64)> {
        let run = feedback_run(cfg, 4096, 50);
        let max = |r: &[(f64, f64, f64)]| r.iter().fold(0f64, |m, x| m.max(x.0));
        let (first, second) = run.split_at(25);
        let (fb_end, plain_end) = (run[49].0, run[49].1);
        // Without feedback the gap keeps growing (the same parts are dropped every round) …
        assert!(plain_end > 5.0 * run[4].1, "{:?}: {run:?}", cfg.codec);
        // … with feedback it stays bounded: no larger in the second half than in the first,
        // and far below the gap without.
        assert!(max(second) <= 1.5 * max(first), "{:?}: {run:?}", cfg.codec);
        assert!(fb_end < plain_end / 5.0, "{:?}: {run:?}", cfg.codec);
        run
    }

    #[test]
    fn error_feedback_keeps_int8_on_track() {
        let cfg = CodecConfig {
            codec: Codec::Int8,
            int8_block: 256,
            ..CodecConfig::default()
        };
        check_feedback(&cfg);
        // With int8 the residual is at most half a scale per value, every round.
        let mut feedback = ErrorFeedback::new(1000);
        for round in 0..20 {
            let delta = random_vec(100 + round, 1000, -4.0, 0.0);
            let before: Vec<f32> = feedback
                .residual()
                .iter()
                .zip(&delta)
                .map(|(r, d)| r + d)
                .collect();
            feedback.encode(&cfg, &delta);
            for (xs, rs) in before.chunks(256).zip(feedback.residual().chunks(256)) {
                let scale = xs.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
                assert!(rs.iter().all(|r| r.abs() <= scale / 2.0 * 1.0001));
            }
        }
    }

    #[test]
    fn error_feedback_keeps_topk_on_track() {
        let cfg = CodecConfig {
            codec: Codec::TopK,
            topk_fraction: 0.1,
            ..CodecConfig::default()
        };
        check_feedback(&cfg);
    }

    #[test]
    fn error_feedback_is_lossless_for_fp32_and_survives_nonfinite_input() {
        let cfg = config(Codec::Fp32);
        let mut feedback = ErrorFeedback::new(100);
        let delta = random_vec(13, 100, -2.0, 1.0);
        let bytes = feedback.encode(&cfg, &delta);
        assert_eq!(decode(&bytes, 100, f32::INFINITY).unwrap(), delta);
        assert!(feedback.residual().iter().all(|&r| r == 0.0));

        let mut feedback = ErrorFeedback::new(100);
        let mut bad = delta.clone();
        bad[3] = f32::NAN;
        bad[40] = f32::INFINITY;
        for codec in [Codec::Fp16, Codec::Int8, Codec::TopK] {
            let bytes = feedback.encode(&config(codec), &bad);
            assert!(decode(&bytes, 100, f32::INFINITY).is_err());
            assert!(
                feedback.residual().iter().all(|r| r.is_finite()),
                "{codec:?}"
            );
        }
        // and the next clean round goes through
        let bytes = feedback.encode(&config(Codec::Int8), &delta);
        assert!(decode(&bytes, 100, f32::INFINITY).is_ok());

        let restored = ErrorFeedback::from_residual(feedback.residual().to_vec());
        assert_eq!(restored, feedback);
    }
}
