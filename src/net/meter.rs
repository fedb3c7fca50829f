//! Bytes per peer, counted on every libp2p stream of every connection to that peer (gossip, DHT,
//! identify, ping, blobs), where they enter and leave the stream multiplexer: protocol bytes,
//! without the Noise/Yamux framing. The transport wraps each new connection's muxer; the peer table
//! reads the counters when it publishes its view.

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

/// Shared by the transport (which counts) and the PeerActor (which reads).
#[derive(Debug, Clone, Default)]
pub struct ByteMeter {
    peers: Arc<Mutex<HashMap<PeerId, Arc<PeerBytes>>>>,
}

impl ByteMeter {
    /// The counters of `peer`, shared by all its connections.
    pub fn for_peer(&self, peer: PeerId) -> Arc<PeerBytes> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.entry(peer).or_default().clone()
    }

    /// (bytes in, bytes out) per peer since the node started.
    pub fn snapshot(&self) -> HashMap<PeerId, (u64, u64)> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .iter()
            .map(|(peer, b)| {
                (
                    *peer,
                    (
                        b.inbound.load(Ordering::Relaxed),
                        b.outbound.load(Ordering::Relaxed),
                    ),
                )
            })
            .collect()
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
        assert_eq!(meter.snapshot()[&peer], (40, 30));
    }
}
