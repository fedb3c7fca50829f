//! Bytes per peer, counted on every libp2p stream of every connection to that peer (gossip, DHT,
//! identify, ping, blobs), where they enter and leave the stream multiplexer: protocol bytes,
//! without the Noise/Yamux framing. The transport wraps each new connection's muxer; the peer table
//! reads the counters when it publishes its view. Counters no connection uses and the peer table
//! no longer lists are pruned, so the map is bounded by the connection limits and the table.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite};
use libp2p::PeerId;
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};

#[derive(Debug, Default)]
pub struct PeerBytes {
    inbound: AtomicU64,
    outbound: AtomicU64,
}

impl PeerBytes {
    fn read(&self) -> (u64, u64) {
        (
            self.inbound.load(Ordering::Relaxed),
            self.outbound.load(Ordering::Relaxed),
        )
    }
}

/// Shared by the transport (which counts) and the PeerActor (which reads and prunes).
#[derive(Debug, Clone, Default)]
pub struct ByteMeter {
    counters: Arc<Mutex<Counters>>,
}

#[derive(Debug, Default)]
struct Counters {
    peers: HashMap<PeerId, Arc<PeerBytes>>,
    /// (in, out) of the peers pruned since the node started, so totals never go down.
    retired: (u64, u64),
}

/// What the meter has counted.
#[derive(Debug, Default, PartialEq)]
pub struct MeterReading {
    /// (bytes in, bytes out) per peer still metered, since the node started.
    pub peers: HashMap<PeerId, (u64, u64)>,
    /// (bytes in, bytes out) of the peers pruned since.
    pub retired: (u64, u64),
}

impl ByteMeter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counters of `peer`, shared by all its connections.
    pub fn for_peer(&self, peer: PeerId) -> Arc<PeerBytes> {
        self.lock().peers.entry(peer).or_default().clone()
    }

    pub fn snapshot(&self) -> MeterReading {
        let counters = self.lock();
        MeterReading {
            peers: counters
                .peers
                .iter()
                .map(|(peer, bytes)| (*peer, bytes.read()))
                .collect(),
            retired: counters.retired,
        }
    }

    /// Forgets the counters of the peers that no connection uses any more and that `listed`
    /// (the peer table) does not hold; their bytes move to the retired totals.
    pub fn prune(&self, listed: impl Fn(&PeerId) -> bool) {
        let mut counters = self.lock();
        let Counters { peers, retired } = &mut *counters;
        peers.retain(|peer, bytes| {
            // A live connection's muxer and streams hold clones of its peer's counters.
            if Arc::strong_count(bytes) > 1 || listed(peer) {
                return true;
            }
            let (inbound, outbound) = bytes.read();
            retired.0 += inbound;
            retired.1 += outbound;
            false
        });
    }
}

/// A connection's muxer whose streams count their bytes into one peer's counters.
pub struct CountingMuxer<M> {
    inner: M,
    bytes: Arc<PeerBytes>,
}

impl<M> CountingMuxer<M> {
    pub fn new(inner: M, bytes: Arc<PeerBytes>) -> Self {
        Self { inner, bytes }
    }
}

impl<M> StreamMuxer for CountingMuxer<M>
where
    M: StreamMuxer + Unpin,
    M::Substream: Unpin,
{
    type Substream = CountedStream<M::Substream>;
    type Error = M::Error;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        Pin::new(&mut this.inner)
            .poll_inbound(cx)
            .map_ok(|inner| CountedStream {
                inner,
                bytes: this.bytes.clone(),
            })
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        Pin::new(&mut this.inner)
            .poll_outbound(cx)
            .map_ok(|inner| CountedStream {
                inner,
                bytes: this.bytes.clone(),
            })
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll(cx)
    }
}

pub struct CountedStream<S> {
    inner: S,
    bytes: Arc<PeerBytes>,
}

impl<S: AsyncRead + Unpin> AsyncRead for CountedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = read {
            this.bytes.inbound.fetch_add(n as u64, Ordering::Relaxed);
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            this.bytes.outbound.fetch_add(n as u64, Ordering::Relaxed);
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::io::{AsyncReadExt, AsyncWriteExt, Cursor};

    #[test]
    fn streams_count_what_they_read_and_write_per_peer() {
        let meter = ByteMeter::default();
        let peer = crate::crypto::Identity::from_token(&crate::crypto::generate_token())
            .unwrap()
            .peer_id();
        let mut stream = CountedStream {
            inner: Cursor::new(vec![1u8; 100]),
            bytes: meter.for_peer(peer),
        };
        let mut buf = [0u8; 40];
        block_on(stream.read_exact(&mut buf)).unwrap();
        block_on(stream.write_all(&[2u8; 25])).unwrap();
        let mut other = CountedStream {
            inner: Cursor::new(Vec::new()),
            bytes: meter.for_peer(peer),
        };
        block_on(other.write_all(&[3u8; 5])).unwrap();
        assert_eq!(meter.snapshot().peers[&peer], (40, 30));
    }

    #[test]
    fn counters_of_peers_neither_connected_nor_listed_are_pruned_into_the_totals() {
        let meter = ByteMeter::default();
        let [connected, listed, gone] = [1, 2, 3].map(|_| {
            crate::crypto::Identity::from_token(&crate::crypto::generate_token())
                .unwrap()
                .peer_id()
        });
        let count = |peer, inbound: u64, outbound: u64| {
            let bytes = meter.for_peer(peer);
            bytes.inbound.fetch_add(inbound, Ordering::Relaxed);
            bytes.outbound.fetch_add(outbound, Ordering::Relaxed);
            bytes
        };
        let connection = count(connected, 1, 2);
        drop(count(listed, 10, 20));
        drop(count(gone, 100, 200));
        meter.prune(|peer| *peer == listed);
        let reading = meter.snapshot();
        assert_eq!(
            reading.peers,
            HashMap::from([(connected, (1, 2)), (listed, (10, 20))])
        );
        assert_eq!(reading.retired, (100, 200));
        // Once its last connection closes and the table drops it, a peer goes too.
        drop(connection);
        meter.prune(|_| false);
        let reading = meter.snapshot();
        assert!(reading.peers.is_empty());
        assert_eq!(reading.retired, (111, 222));
        // A peer that comes back starts from zero; the totals keep what it sent before.
        count(gone, 5, 0);
        assert_eq!(meter.snapshot().peers[&gone], (5, 0));
    }
}
