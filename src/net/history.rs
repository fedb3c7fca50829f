//! The ledger history protocol (request-response, JSON, every message bounded): a node that
//! joins or returns asks a peer for the checkpoints it lacks and for the events of the epochs they
//! certify, a page at a time. What it gets is adopted only as certified (`LedgerStore::
//! adopt_history`), so a peer can withhold history but not change it.

use libp2p::request_response::json::codec::Codec;
use serde::{Deserialize, Serialize};

use crate::ledger::checkpoint::CertificateRecord;
use crate::ledger::store::HistoryPage;

/// A request is a few numbers and one event id.
pub const MAX_REQUEST_BYTES: u64 = 4 * 1024;
/// The event bodies of one page reach at most about this many bytes (one event more).
pub const PAGE_BYTES: usize = 1 << 20;
/// A page's events with their statuses, the JSON around them, and one body past `PAGE_BYTES`.
pub const MAX_RESPONSE_BYTES: u64 = 2 * PAGE_BYTES as u64;
/// Certificates in one answer (each a few KiB: a signature and a key per validator).
pub const MAX_CHECKPOINTS_PER_ANSWER: usize = 16;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HistoryRequest {
    /// At most `MAX_CHECKPOINTS_PER_ANSWER` certificates, oldest first: the first ones after
    /// epoch `after`, or with None the newest (a node that holds none anchors on them).
    Checkpoints { after: Option<u64> },
    /// One page of the events dated in epochs `from..=to`, after the event `after`
    /// ((timestamp_ms, id), the previous page's `next`).
    Events {
        from: u64,
        to: u64,
        after: Option<(u64, String)>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HistoryResponse {
    Checkpoints(Vec<CertificateRecord>),
    Events(HistoryPage),
    /// The peer cannot answer now (busy, or its ledger failed).
    Unavailable(String),
}

pub type HistoryCodec = Codec<HistoryRequest, HistoryResponse>;

pub fn codec() -> HistoryCodec {
    Codec::default()
        .set_request_size_maximum(MAX_REQUEST_BYTES)
        .set_response_size_maximum(MAX_RESPONSE_BYTES)
}
