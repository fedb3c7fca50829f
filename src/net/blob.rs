//! Blob transfer over request-response: pseudo-gradients and model state are too large for gossip.
//! A blob is named by the BLAKE3 hash of its bytes, so the receiver checks what it got against what it
//! asked for. The response streams in 1 MiB chunks after a length header that is checked against
//! the request's bound (the size the protocol implies for that blob, within the node's limit)
//! before anything is allocated.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response::Codec;

use crate::diloco::codec::extract;

const CHUNK_BYTES: usize = 1 << 20;
const FOUND: u8 = 1;
const MISSING: u8 = 0;

/// BLAKE3 of a blob's bytes. BLAKE3 rather than SHA-256: hashing runs on the receiver's critical
/// path, and BLAKE3's SIMD code is several times faster (profile in BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    pub fn of(bytes: &[u8]) -> Self {
        Self(blake3::hash(bytes).into())
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        let mut id = [0u8; 32];
        hex::decode_to_slice(text, &mut id).ok()?;
        Some(Self(id))
    }
}

impl std::fmt::Display for BlobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

#[derive(Debug, Clone)]
pub struct BlobRequest {
    pub id: BlobId,
    /// The longest answer the requester accepts (a Δ's announced size, θ₀'s 4 bytes a value).
    /// Not sent: a request read from a peer carries this node's own limit.
    pub max_bytes: u64,
    /// Only values `start..end` of an encoded Δ (`codec::extract`): an aggregator's slice. The
    /// answer is then not the blob, so it is not checked against `id`.
    pub range: Option<(u64, u64)>,
}

#[derive(Debug, Clone)]
pub enum BlobResponse {
    /// `id` is the BLAKE3 of `bytes`: known when serving, computed chunk by chunk while receiving
    /// (so hashing overlaps the transfer instead of following it).
    Found {
        id: BlobId,
        bytes: Arc<Vec<u8>>,
    },
    Missing,
}

/// The request-response codec; `max_bytes` bounds what a peer may send us.
#[derive(Debug, Clone)]
pub struct BlobCodec {
    max_bytes: u64,
    /// The bound of the request this copy sent. request-response clones the codec for each
    /// outbound stream and reads the response with the clone that wrote the request, so each
    /// response is checked against its own request's bound.
    response_limit: u64,
}

impl BlobCodec {
    pub fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            response_limit: max_bytes,
        }
    }
}

impl Codec for BlobCodec {
    type Protocol = StreamProtocol;
    type Request = BlobRequest;
    type Response = BlobResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<BlobRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut id = [0u8; 32];
        io.read_exact(&mut id).await?;
        let mut rest = Vec::new();
        io.take(17).read_to_end(&mut rest).await?;
        let range = match rest.len() {
            0 => None,
            16 => {
                let at = |i: usize| u64::from_be_bytes(rest[i..i + 8].try_into().expect("8 bytes"));
                Some((at(0), at(8)))
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a blob request is 32 or 48 bytes, got {}", 32 + other),
                ));
            }
        };
        Ok(BlobRequest {
            id: BlobId(id),
            max_bytes: self.max_bytes,
            range,
        })
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<BlobResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut status = [0u8; 1];
        io.read_exact(&mut status).await?;
        match status[0] {
            MISSING => return Ok(BlobResponse::Missing),
            FOUND => {}
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown blob status byte {other}"),
                ));
            }
        }
        let mut header = [0u8; 8];
        io.read_exact(&mut header).await?;
        let len = u64::from_be_bytes(header);
        if len > self.response_limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "blob of {len} bytes exceeds the limit of {}",
                    self.response_limit
                ),
            ));
        }
        let len = len as usize;
        let mut bytes = Vec::with_capacity(len.min(64 * CHUNK_BYTES));
        let mut hasher = blake3::Hasher::new();
        while bytes.len() < len {
            let start = bytes.len();
            let chunk = (len - start).min(CHUNK_BYTES);
            bytes.resize(start + chunk, 0);
            io.read_exact(&mut bytes[start..]).await?;
            hasher.update(&bytes[start..]);
        }
        Ok(BlobResponse::Found {
            id: BlobId(hasher.finalize().into()),
            bytes: Arc::new(bytes),
        })
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: BlobRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.response_limit = request.max_bytes.min(self.max_bytes);
        io.write_all(&request.id.0).await?;
        if let Some((start, end)) = request.range {
            io.write_all(&start.to_be_bytes()).await?;
            io.write_all(&end.to_be_bytes()).await?;
        }
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: BlobResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match response {
            BlobResponse::Missing => io.write_all(&[MISSING]).await?,
            BlobResponse::Found { bytes, .. } => {
                io.write_all(&[FOUND]).await?;
                io.write_all(&(bytes.len() as u64).to_be_bytes()).await?;
                for chunk in bytes.chunks(CHUNK_BYTES) {
                    io.write_all(chunk).await?;
                }
            }
        }
        io.close().await
    }
}

/// The blobs this node serves: the newest `capacity`, oldest evicted first.
pub struct BlobStore {
    capacity: usize,
    blobs: HashMap<BlobId, Arc<Vec<u8>>>,
    order: VecDeque<BlobId>,
}

impl BlobStore {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            blobs: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Serves `bytes` under `id` (the caller computed `BlobId::of(&bytes)`).
    pub fn insert(&mut self, id: BlobId, bytes: Arc<Vec<u8>>) {
        if self.blobs.insert(id, bytes).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.blobs.remove(&old);
            }
        }
    }

    /// Stops serving `id` (nothing if it is not served).
    pub fn remove(&mut self, id: &BlobId) {
        if self.blobs.remove(id).is_some() {
            self.order.retain(|kept| kept != id);
        }
    }

    /// The response serving blob `id`, or values `range` of it when it is an encoded Δ
    /// (Missing when it is not, or the range does not fit it).
    pub fn response(&self, id: &BlobId, range: Option<(u64, u64)>) -> BlobResponse {
        let Some(bytes) = self.blobs.get(id) else {
            return BlobResponse::Missing;
        };
        let Some((start, end)) = range else {
            return BlobResponse::Found {
                id: *id,
                bytes: bytes.clone(),
            };
        };
        let part = usize::try_from(start)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(start, end)| extract(bytes, start..end));
        match part {
            Some(part) => BlobResponse::Found {
                id: BlobId::of(&part),
                bytes: Arc::new(part),
            },
            None => BlobResponse::Missing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::io::Cursor;

    fn protocol() -> StreamProtocol {
        StreamProtocol::new("/test/blob/1")
    }

    fn round_trip(codec: &mut BlobCodec, response: BlobResponse) -> io::Result<BlobResponse> {
        let mut wire = Cursor::new(Vec::new());
        block_on(codec.write_response(&protocol(), &mut wire, response)).unwrap();
        let mut wire = Cursor::new(wire.into_inner());
        block_on(codec.read_response(&protocol(), &mut wire))
    }

    #[test]
    fn a_multi_chunk_blob_arrives_intact() {
        let bytes: Vec<u8> = (0..3 * CHUNK_BYTES + 17).map(|i| (i * 7) as u8).collect();
        let mut codec = BlobCodec::new(1 << 30);
        let sent = BlobResponse::Found {
            id: BlobId([0; 32]),
            bytes: Arc::new(bytes.clone()),
        };
        let BlobResponse::Found { id, bytes: got } = round_trip(&mut codec, sent).unwrap() else {
            panic!("expected the blob")
        };
        assert_eq!(*got, bytes);
        assert_eq!(id, BlobId::of(&bytes), "the receiver hashes what it read");
    }

    #[test]
    fn a_blob_over_the_limit_is_refused_before_it_is_read() {
        let mut codec = BlobCodec::new(1000);
        let big = BlobResponse::Found {
            id: BlobId::of(&[0; 1001]),
            bytes: Arc::new(vec![0; 1001]),
        };
        let err = round_trip(&mut codec, big).unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
    }

    #[test]
    fn a_response_is_bounded_by_its_request_within_the_nodes_limit() {
        let node = BlobCodec::new(1000);
        let ask = |max_bytes| {
            let mut codec = node.clone();
            let mut wire = Cursor::new(Vec::new());
            let request = BlobRequest {
                id: BlobId([1; 32]),
                max_bytes,
                range: None,
            };
            block_on(codec.write_request(&protocol(), &mut wire, request)).unwrap();
            assert_eq!(wire.into_inner(), [1; 32], "only the id goes on the wire");
            codec
        };
        let blob = |len| BlobResponse::Found {
            id: BlobId([0; 32]),
            bytes: Arc::new(vec![7; len]),
        };
        assert!(matches!(
            round_trip(&mut ask(100), blob(100)),
            Ok(BlobResponse::Found { bytes, .. }) if bytes.len() == 100
        ));
        // A header over the bound is refused before the body is read: there is none here.
        let mut header_only = Cursor::new([&[FOUND][..], &101u64.to_be_bytes()].concat());
        let err = block_on(ask(100).read_response(&protocol(), &mut header_only)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("limit of 100"), "{err}");
        // A request cannot raise the node's limit.
        let err = round_trip(&mut ask(5000), blob(1001)).unwrap_err();
        assert!(err.to_string().contains("limit of 1000"), "{err}");
        // A request read from a peer carries this node's limit.
        let mut wire = Cursor::new(vec![3u8; 32]);
        let read = block_on(node.clone().read_request(&protocol(), &mut wire)).unwrap();
        assert_eq!((read.id, read.max_bytes), (BlobId([3; 32]), 1000));
    }

    #[test]
    fn a_range_request_travels_and_is_answered_with_those_values_of_the_delta() {
        use crate::diloco::codec::{CodecConfig, decode, encode};
        let delta: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let encoded = encode(&CodecConfig::default(), &delta);
        let whole = decode(&encoded, 1000, f32::INFINITY).unwrap();
        let id = BlobId::of(&encoded);
        let mut store = BlobStore::new(2);
        store.insert(id, Arc::new(encoded));
        let mut wire = Cursor::new(Vec::new());
        let request = BlobRequest {
            id,
            max_bytes: 1 << 20,
            range: Some((256, 512)),
        };
        block_on(BlobCodec::new(1 << 20).write_request(&protocol(), &mut wire, request)).unwrap();
        let mut wire = Cursor::new(wire.into_inner());
        let read = block_on(BlobCodec::new(1 << 20).read_request(&protocol(), &mut wire)).unwrap();
        assert_eq!(read.range, Some((256, 512)));
        let BlobResponse::Found { bytes, .. } = store.response(&read.id, read.range) else {
            panic!("the range is served");
        };
        // The values as the whole Δ decodes them (cut, not re-quantized).
        assert_eq!(decode(&bytes, 256, f32::INFINITY).unwrap(), whole[256..512]);
        assert!(matches!(
            store.response(&id, Some((900, 1001))),
            BlobResponse::Missing
        ));
        // A request of another length is refused.
        let mut odd = Cursor::new(vec![0u8; 40]);
        assert!(block_on(BlobCodec::new(10).read_request(&protocol(), &mut odd)).is_err());
    }

    #[test]
    fn truncated_or_garbled_responses_are_errors() {
        let mut codec = BlobCodec::new(1000);
        let mut wire = Cursor::new(vec![FOUND, 0, 0, 0, 0, 0, 0, 0, 10, 1, 2]);
        assert!(block_on(codec.read_response(&protocol(), &mut wire)).is_err());
        let mut wire = Cursor::new(vec![7]);
        assert!(block_on(codec.read_response(&protocol(), &mut wire)).is_err());
        assert!(matches!(
            round_trip(&mut codec, BlobResponse::Missing),
            Ok(BlobResponse::Missing)
        ));
    }

    #[test]
    fn the_store_keeps_the_newest_blobs() {
        let mut store = BlobStore::new(2);
        let [a, b, c] = [1, 2, 3].map(|byte| {
            let id = BlobId::of(&[byte]);
            store.insert(id, Arc::new(vec![byte]));
            id
        });
        assert!(matches!(store.response(&a, None), BlobResponse::Missing));
        assert!(matches!(store.response(&c, None), BlobResponse::Found { id, .. } if id == c));
        assert!(matches!(
            store.response(&b, None),
            BlobResponse::Found { .. }
        ));
        // A range of a blob that is no encoded Δ is missing.
        assert!(matches!(
            store.response(&b, Some((0, 1))),
            BlobResponse::Missing
        ));
        assert_eq!(BlobId::from_hex(&c.to_string()), Some(c));
        // A withdrawn blob is no longer served, and frees its place for the next one.
        store.remove(&b);
        assert!(matches!(store.response(&b, None), BlobResponse::Missing));
        let d = BlobId::of(&[4]);
        store.insert(d, Arc::new(vec![4]));
        assert!(matches!(
            store.response(&c, None),
            BlobResponse::Found { .. }
        ));
        assert!(matches!(
            store.response(&d, None),
            BlobResponse::Found { .. }
        ));
    }
}
