//! Tracker announcements: what a node tells the bootstrap tracker about itself, signed with its
//! wallet key, and the blocking client that announces and fetches the peer list.
//!
//! The token never leaves the node: an announcement carries the PeerId (which inlines the public
//! key), the node_id derived from that key and a signature over every other field. The tracker
//! checks it with [`Announcement::verify`], a pure function of the announcement, the clock and the
//! last timestamp it accepted from that node.

use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::crypto::{self, Identity};
use crate::net::protocol::{MAX_NETWORK_ID_LEN, valid_network_id};

/// Domain tag of the signed bytes: a signature made for anything else never verifies here.
const DOMAIN_TAG: &[u8] = b"neuroshard/announce/v1";
/// Most multiaddrs one announcement may list.
pub const MAX_MULTIADDRS: usize = 16;
/// Longest multiaddr accepted, in characters.
pub const MAX_MULTIADDR_LEN: usize = 256;
/// How far an announcement's timestamp may be from the tracker's clock, either way.
pub const MAX_CLOCK_SKEW_S: u64 = 120;
/// Largest answer body the client reads from a tracker.
pub const MAX_TRACKER_RESPONSE_BYTES: u64 = 1024 * 1024;
/// Longest piece of untrusted input quoted back in an error message.
const QUOTE_LEN: usize = 80;

/// A node's signed announcement to a tracker (the JSON body of POST /announce).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Announcement {
    pub network_id: String,
    /// The libp2p PeerId; it inlines the node's secp256k1 public key.
    pub peer_id: String,
    /// hex(SHA-256(compressed public key))[:32], checked against `peer_id`.
    pub node_id: String,
    pub multiaddrs: Vec<String>,
    /// Unix time in seconds when the node signed it.
    pub timestamp: u64,
    /// Hex of the 64-byte compact ECDSA signature of [`Announcement::canonical_bytes`].
    pub signature: String,
}

/// Why an announcement is refused. The messages say exactly what is wrong: trackers send them
/// back as the `detail` of their error answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnounceError {
    #[error(
        "network_id {0:?} is invalid: it must be 1 to {MAX_NETWORK_ID_LEN} characters of A-Z, a-z, 0-9, '.', '_' or '-'"
    )]
    InvalidNetworkId(String),
    #[error("peer_id {peer_id:?} is not a valid libp2p PeerId: {reason}")]
    InvalidPeerId { peer_id: String, reason: String },
    #[error("peer_id {0} does not inline a secp256k1 public key")]
    PeerIdWithoutKey(String),
    #[error("node_id {got:?} does not match peer_id's public key, whose node_id is {expected}")]
    NodeIdMismatch { got: String, expected: String },
    #[error("no multiaddrs: an announcement must list at least one address")]
    NoMultiaddrs,
    #[error("{0} multiaddrs: an announcement may list at most {MAX_MULTIADDRS}")]
    TooManyMultiaddrs(usize),
    #[error("multiaddr #{index} is {len} characters long; the limit is {MAX_MULTIADDR_LEN}")]
    MultiaddrTooLong { index: usize, len: usize },
    #[error("multiaddr #{index} {addr:?} is invalid: {reason}")]
    InvalidMultiaddr {
        index: usize,
        addr: String,
        reason: String,
    },
    #[error("signature is not 64 bytes of hex (128 hex characters): {0}")]
    MalformedSignature(String),
    #[error("signature does not verify against peer_id's public key")]
    BadSignature,
    #[error(
        "timestamp {timestamp} is {skew_s} s from the tracker's clock ({now_s}); at most {MAX_CLOCK_SKEW_S} s is accepted"
    )]
    Stale {
        timestamp: u64,
        now_s: u64,
        skew_s: u64,
    },
    #[error(
        "timestamp {timestamp} is not later than this node's last accepted announcement ({last}): replayed"
    )]
    Replayed { timestamp: u64, last: u64 },
}

impl AnnounceError {
    /// A short machine-readable code for the error (the `error` field of a tracker's answer).
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadSignature => "bad_signature",
            Self::Stale { .. } => "stale_announcement",
            Self::Replayed { .. } => "replayed_announcement",
            _ => "invalid_announcement",
        }
    }
}

/// One peer as a tracker lists it (GET /peers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    pub peer_id: String,
    pub node_id: String,
    pub multiaddrs: Vec<String>,
    /// Seconds since the tracker accepted this peer's last announcement.
    pub last_seen_s: u64,
}

impl PeerRecord {
    /// Whether the record is usable: its peer_id inlines a secp256k1 key, node_id matches it, and
    /// it lists 1..=MAX_MULTIADDRS multiaddrs that all parse.
    pub fn is_well_formed(&self) -> bool {
        let Ok(peer_id) = self.peer_id.parse::<PeerId>() else {
            return false;
        };
        let Some(key) = crypto::public_key_of(&peer_id) else {
            return false;
        };
        crypto::node_id_of(&key) == self.node_id
            && (1..=MAX_MULTIADDRS).contains(&self.multiaddrs.len())
            && self
                .multiaddrs
                .iter()
                .enumerate()
                .all(|(i, a)| check_multiaddr(i, a, &peer_id).is_ok())
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_time_s() -> u64 {
    crate::net::wire::unix_ms() / 1000
}

impl Announcement {
    /// An announcement of `identity` in `network_id`, signed with its key.
    pub fn signed(
        identity: &Identity,
        network_id: &str,
        multiaddrs: Vec<String>,
        timestamp: u64,
    ) -> Self {
        let mut announcement = Self {
            network_id: network_id.to_string(),
            peer_id: identity.peer_id().to_string(),
            node_id: identity.node_id.clone(),
            multiaddrs,
            timestamp,
            signature: String::new(),
        };
        announcement.signature = hex::encode(identity.sign(&announcement.canonical_bytes()));
        announcement
    }

    /// The bytes the signature covers: the domain tag, then network_id, peer_id, node_id (each
    /// u32 BE length + UTF-8), the multiaddr count (u32 BE) and each multiaddr (length-prefixed),
    /// then the timestamp (u64 BE). Every field but the signature is covered, unambiguously.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        fn put(out: &mut Vec<u8>, field: &str) {
            out.extend_from_slice(&len_u32(field.len()).to_be_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        let mut out = Vec::with_capacity(
            DOMAIN_TAG.len() + 128 + self.multiaddrs.iter().map(|a| a.len() + 4).sum::<usize>(),
        );
        out.extend_from_slice(DOMAIN_TAG);
        put(&mut out, &self.network_id);
        put(&mut out, &self.peer_id);
        put(&mut out, &self.node_id);
        out.extend_from_slice(&len_u32(self.multiaddrs.len()).to_be_bytes());
        for addr in &self.multiaddrs {
            put(&mut out, addr);
        }
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out
    }

    /// Checks the announcement against the clock `now_s` (Unix seconds) and the timestamp of the
    /// last announcement accepted from the same node in the same network.
    ///
    /// Order: the fields' form, then the signature, then freshness (stale, then replayed), so
    /// `Stale` and `Replayed` are only ever reported for announcements the node really signed.
    pub fn verify(
        &self,
        now_s: u64,
        last_accepted_timestamp: Option<u64>,
    ) -> Result<(), AnnounceError> {
        if !valid_network_id(&self.network_id) {
            return Err(AnnounceError::InvalidNetworkId(quote(&self.network_id)));
        }
        let peer_id = self
            .peer_id
            .parse::<PeerId>()
            .map_err(|e| AnnounceError::InvalidPeerId {
                peer_id: quote(&self.peer_id),
                reason: e.to_string(),
            })?;
        let key = crypto::public_key_of(&peer_id)
            .ok_or_else(|| AnnounceError::PeerIdWithoutKey(peer_id.to_string()))?;
        let expected = crypto::node_id_of(&key);
        if self.node_id != expected {
            return Err(AnnounceError::NodeIdMismatch {
                got: quote(&self.node_id),
                expected,
            });
        }
        match self.multiaddrs.len() {
            0 => return Err(AnnounceError::NoMultiaddrs),
            n if n > MAX_MULTIADDRS => return Err(AnnounceError::TooManyMultiaddrs(n)),
            _ => {}
        }
        for (index, addr) in self.multiaddrs.iter().enumerate() {
            check_multiaddr(index, addr, &peer_id)?;
        }
        let signature = match hex::decode(&self.signature) {
            Ok(bytes) if bytes.len() == 64 => bytes,
            Ok(bytes) => {
                return Err(AnnounceError::MalformedSignature(format!(
                    "got {} bytes",
                    bytes.len()
                )));
            }
            Err(e) => return Err(AnnounceError::MalformedSignature(e.to_string())),
        };
        if !crypto::verify(&key, &self.canonical_bytes(), &signature) {
            return Err(AnnounceError::BadSignature);
        }
        let skew_s = self.timestamp.abs_diff(now_s);
        if skew_s > MAX_CLOCK_SKEW_S {
            return Err(AnnounceError::Stale {
                timestamp: self.timestamp,
                now_s,
                skew_s,
            });
        }
        if let Some(last) = last_accepted_timestamp
            && self.timestamp <= last
        {
            return Err(AnnounceError::Replayed {
                timestamp: self.timestamp,
                last,
            });
        }
        Ok(())
    }
}

/// A multiaddr is at most MAX_MULTIADDR_LEN characters, parses, is not empty, and any /p2p/
/// component in it names the announcing peer.
fn check_multiaddr(index: usize, addr: &str, peer_id: &PeerId) -> Result<(), AnnounceError> {
    if addr.len() > MAX_MULTIADDR_LEN {
        return Err(AnnounceError::MultiaddrTooLong {
            index,
            len: addr.len(),
        });
    }
    let invalid = |reason: String| AnnounceError::InvalidMultiaddr {
        index,
        addr: quote(addr),
        reason,
    };
    let parsed: Multiaddr = addr.parse().map_err(|e| invalid(format!("{e}")))?;
    if parsed.is_empty() {
        return Err(invalid("it has no protocol component".into()));
    }
    for protocol in parsed.iter() {
        if let Protocol::P2p(named) = protocol
            && named != *peer_id
        {
            return Err(invalid(format!(
                "its /p2p/ component names another peer ({named})"
            )));
        }
    }
    Ok(())
}

fn len_u32(len: usize) -> u32 {
    // Fields are bounded far below 4 GiB by verify and by every transport; saturate regardless.
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Untrusted input, cut to QUOTE_LEN characters for an error message.
fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_LEN) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

/// Why talking to a tracker failed.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error("tracker URL {url:?} is invalid: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("tracker {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("tracker refused the request with HTTP {status} ({error}): {detail}")]
    Refused {
        status: u16,
        error: String,
        detail: String,
    },
    #[error("tracker sent a malformed answer: {0}")]
    Malformed(String),
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    detail: String,
}

#[derive(Deserialize)]
struct AcceptedBody {
    accepted: bool,
}

#[derive(Deserialize)]
struct PeersBody {
    peers: Vec<PeerRecord>,
}

/// Announces `announcement` to the tracker at `tracker_url` (POST /announce), then fetches the
/// peer list of its network (GET /peers). Returns the well-formed records of every other peer;
/// malformed ones (bad PeerId, node_id not matching it, unparsable multiaddrs) are dropped.
/// Blocking: call it off the async threads. `timeout` bounds each of the two requests.
pub fn announce_to_tracker(
    tracker_url: &str,
    announcement: &Announcement,
    timeout: Duration,
) -> Result<Vec<PeerRecord>, TrackerError> {
    let base = tracker_url.trim_end_matches('/');
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .build()
        .new_agent();

    let response = agent
        .post(format!("{base}/announce"))
        .send_json(announcement)
        .map_err(|e| request_error(base, e))?;
    let answer: AcceptedBody = read_answer(base, response)?;
    if !answer.accepted {
        return Err(TrackerError::Malformed(
            "POST /announce answered 200 with accepted: false".into(),
        ));
    }

    let response = agent
        .get(format!("{base}/peers"))
        .query("network", &announcement.network_id)
        .call()
        .map_err(|e| request_error(base, e))?;
    let PeersBody { peers } = read_answer(base, response)?;
    Ok(peers
        .into_iter()
        .filter(|p| p.node_id != announcement.node_id && p.peer_id != announcement.peer_id)
        .filter(PeerRecord::is_well_formed)
        .collect())
}

/// The JSON body of a 200 answer, or the tracker's refusal, reading at most
/// MAX_TRACKER_RESPONSE_BYTES.
fn read_answer<T: serde::de::DeserializeOwned>(
    base: &str,
    mut response: ureq::http::Response<ureq::Body>,
) -> Result<T, TrackerError> {
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_TRACKER_RESPONSE_BYTES)
        .read_to_vec()
        .map_err(|e| body_error(base, e))?;
    if status != 200 {
        let (error, detail) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => (e.error, e.detail),
            Err(_) => (
                "unknown".to_string(),
                quote(&String::from_utf8_lossy(&body)),
            ),
        };
        return Err(TrackerError::Refused {
            status,
            error,
            detail,
        });
    }
    serde_json::from_slice(&body).map_err(|e| TrackerError::Malformed(e.to_string()))
}

fn request_error(base: &str, e: ureq::Error) -> TrackerError {
    match e {
        ureq::Error::BadUri(reason) => TrackerError::InvalidUrl {
            url: base.to_string(),
            reason,
        },
        ureq::Error::Http(e) => TrackerError::InvalidUrl {
            url: base.to_string(),
            reason: e.to_string(),
        },
        e => TrackerError::Unreachable {
            url: base.to_string(),
            reason: e.to_string(),
        },
    }
}

fn body_error(base: &str, e: ureq::Error) -> TrackerError {
    match e {
        ureq::Error::BodyExceedsLimit(limit) => {
            TrackerError::Malformed(format!("answer is larger than {limit} bytes"))
        }
        ureq::Error::Io(_) | ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed => {
            TrackerError::Unreachable {
                url: base.to_string(),
                reason: e.to_string(),
            }
        }
        e => TrackerError::Malformed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::generate_token;

    const NOW: u64 = 1_700_000_000;
    const NET: &str = "neuroshard-test.v1";

    fn identity() -> Identity {
        Identity::from_token(&generate_token()).unwrap()
    }

    fn addrs() -> Vec<String> {
        vec![
            "/ip4/127.0.0.1/tcp/4001".to_string(),
            "/ip6/::1/tcp/4001".to_string(),
        ]
    }

    fn signed(id: &Identity) -> Announcement {
        Announcement::signed(id, NET, addrs(), NOW)
    }

    #[test]
    fn a_signed_announcement_verifies() {
        let id = identity();
        let a = signed(&id);
        assert_eq!(a.node_id, id.node_id);
        assert_eq!(a.peer_id, id.peer_id().to_string());
        assert_eq!(a.signature.len(), 128);
        assert_eq!(a.verify(NOW, None), Ok(()));
        assert_eq!(a.verify(NOW, Some(NOW - 1)), Ok(()));
        // JSON round trip keeps it valid.
        let back: Announcement = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back.verify(NOW, None), Ok(()));
    }

    #[test]
    fn a_multiaddr_naming_the_announcer_is_accepted() {
        let id = identity();
        let addr = format!("/ip4/10.0.0.1/tcp/4001/p2p/{}", id.peer_id());
        assert_eq!(
            Announcement::signed(&id, NET, vec![addr], NOW).verify(NOW, None),
            Ok(())
        );
    }

    #[test]
    fn every_tampered_field_fails() {
        let id = identity();
        let other = identity();
        let a = signed(&id);

        let mut t = a.clone();
        t.network_id = "other-net".into();
        assert_eq!(t.verify(NOW, None), Err(AnnounceError::BadSignature));

        let mut t = a.clone();
        t.peer_id = other.peer_id().to_string();
        t.node_id = other.node_id.clone();
        assert_eq!(t.verify(NOW, None), Err(AnnounceError::BadSignature));

        let mut t = a.clone();
        t.node_id = other.node_id.clone();
        assert!(matches!(
            t.verify(NOW, None),
            Err(AnnounceError::NodeIdMismatch { .. })
        ));

        let mut t = a.clone();
        t.multiaddrs[1] = "/ip4/10.9.9.9/tcp/4001".into();
        assert_eq!(t.verify(NOW, None), Err(AnnounceError::BadSignature));

        let mut t = a.clone();
        t.multiaddrs.pop();
        assert_eq!(t.verify(NOW, None), Err(AnnounceError::BadSignature));

        let mut t = a.clone();
        t.multiaddrs.swap(0, 1);
        assert_eq!(t.verify(NOW, None), Err(AnnounceError::BadSignature));

        let mut t = a.clone();
        t.timestamp += 1;
        assert_eq!(t.verify(NOW, None), Err(AnnounceError::BadSignature));

        let mut t = a.clone();
        let mut sig = hex::decode(&t.signature).unwrap();
        sig[10] ^= 1;
        t.signature = hex::encode(sig);
        assert_eq!(t.verify(NOW, None), Err(AnnounceError::BadSignature));
    }

    #[test]
    fn the_length_prefixes_make_field_boundaries_unambiguous() {
        let id = identity();
        let a = Announcement::signed(&id, NET, vec!["/ip4/1.2.3.4/tcp/1".into()], NOW);
        let mut b = a.clone();
        b.network_id = format!("{NET}x");
        assert_ne!(a.canonical_bytes(), b.canonical_bytes());
        assert!(a.canonical_bytes().starts_with(DOMAIN_TAG));
        assert!(a.canonical_bytes().ends_with(&NOW.to_be_bytes()));
    }

    #[test]
    fn another_identitys_signature_fails() {
        let id = identity();
        let other = identity();
        let mut a = signed(&id);
        a.signature = hex::encode(other.sign(&a.canonical_bytes()));
        assert_eq!(a.verify(NOW, None), Err(AnnounceError::BadSignature));
        // A signature of the same bytes without the domain tag does not verify either.
        let mut b = signed(&id);
        b.signature = hex::encode(id.sign(&b.canonical_bytes()[DOMAIN_TAG.len()..]));
        assert_eq!(b.verify(NOW, None), Err(AnnounceError::BadSignature));
    }

    #[test]
    fn malformed_signatures_are_refused() {
        let mut a = signed(&identity());
        a.signature = "zz".repeat(64);
        assert!(matches!(
            a.verify(NOW, None),
            Err(AnnounceError::MalformedSignature(_))
        ));
        a.signature = "00".repeat(63);
        assert!(matches!(
            a.verify(NOW, None),
            Err(AnnounceError::MalformedSignature(_))
        ));
    }

    #[test]
    fn stale_announcements_are_refused_both_ways() {
        let a = signed(&identity());
        assert_eq!(a.verify(NOW + MAX_CLOCK_SKEW_S, None), Ok(()));
        assert_eq!(a.verify(NOW - MAX_CLOCK_SKEW_S, None), Ok(()));
        let old = a.verify(NOW + MAX_CLOCK_SKEW_S + 1, None).unwrap_err();
        assert!(
            matches!(old, AnnounceError::Stale { skew_s: 121, .. }),
            "{old}"
        );
        assert_eq!(old.code(), "stale_announcement");
        let future = a.verify(NOW - MAX_CLOCK_SKEW_S - 1, None).unwrap_err();
        assert!(matches!(future, AnnounceError::Stale { .. }), "{future}");
    }

    #[test]
    fn replayed_announcements_are_refused() {
        let a = signed(&identity());
        assert_eq!(
            a.verify(NOW, Some(NOW)),
            Err(AnnounceError::Replayed {
                timestamp: NOW,
                last: NOW
            })
        );
        assert!(matches!(
            a.verify(NOW, Some(NOW + 5)),
            Err(AnnounceError::Replayed { .. })
        ));
        assert_eq!(
            a.verify(NOW, Some(NOW)).unwrap_err().code(),
            "replayed_announcement"
        );
    }

    #[test]
    fn multiaddr_lists_are_checked() {
        let id = identity();
        let many: Vec<String> = (0..=MAX_MULTIADDRS)
            .map(|i| format!("/ip4/127.0.0.1/tcp/{}", 4000 + i))
            .collect();
        assert_eq!(
            Announcement::signed(&id, NET, many, NOW).verify(NOW, None),
            Err(AnnounceError::TooManyMultiaddrs(MAX_MULTIADDRS + 1))
        );
        assert_eq!(
            Announcement::signed(&id, NET, vec![], NOW).verify(NOW, None),
            Err(AnnounceError::NoMultiaddrs)
        );
        for bad in ["not a multiaddr", "/ip4/999.0.0.1/tcp/1", "/", ""] {
            let a = Announcement::signed(&id, NET, vec![addrs()[0].clone(), bad.into()], NOW);
            let err = a.verify(NOW, None).unwrap_err();
            assert!(
                matches!(err, AnnounceError::InvalidMultiaddr { index: 1, .. }),
                "{bad:?}: {err}"
            );
        }
        let long = format!("/dns4/{}/tcp/1", "a".repeat(MAX_MULTIADDR_LEN));
        assert!(matches!(
            Announcement::signed(&id, NET, vec![long], NOW).verify(NOW, None),
            Err(AnnounceError::MultiaddrTooLong { index: 0, .. })
        ));
        let foreign = format!("/ip4/10.0.0.1/tcp/4001/p2p/{}", identity().peer_id());
        assert!(matches!(
            Announcement::signed(&id, NET, vec![foreign], NOW).verify(NOW, None),
            Err(AnnounceError::InvalidMultiaddr { .. })
        ));
    }

    #[test]
    fn network_ids_and_peer_ids_are_checked() {
        let id = identity();
        for bad in ["", "has space", "slash/", &"a".repeat(65), "é"] {
            let err = Announcement::signed(&id, bad, addrs(), NOW)
                .verify(NOW, None)
                .unwrap_err();
            assert!(matches!(err, AnnounceError::InvalidNetworkId(_)), "{bad:?}");
        }
        assert!(valid_network_id(&"a".repeat(64)));
        let mut a = signed(&id);
        a.peer_id = "not-a-peer-id".into();
        assert!(matches!(
            a.verify(NOW, None),
            Err(AnnounceError::InvalidPeerId { .. })
        ));
        // An Ed25519 PeerId inlines a key, but not a secp256k1 one.
        a.peer_id = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
            .to_string();
        assert!(matches!(
            a.verify(NOW, None),
            Err(AnnounceError::PeerIdWithoutKey(_))
        ));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let a = signed(&identity());
        let mut v = serde_json::to_value(&a).unwrap();
        v["extra"] = serde_json::json!(1);
        assert!(serde_json::from_value::<Announcement>(v).is_err());
    }

    #[test]
    fn error_messages_quote_at_most_a_prefix_of_the_input() {
        let err = AnnounceError::InvalidNetworkId(quote(&"x".repeat(10_000)));
        assert!(err.to_string().len() < 300, "{err}");
    }

    #[test]
    fn peer_records_are_validated() {
        let id = identity();
        let good = PeerRecord {
            peer_id: id.peer_id().to_string(),
            node_id: id.node_id.clone(),
            multiaddrs: addrs(),
            last_seen_s: 3,
        };
        assert!(good.is_well_formed());
        let mut bad = good.clone();
        bad.multiaddrs.push("garbage".into());
        assert!(!bad.is_well_formed());
        let mut bad = good.clone();
        bad.node_id = identity().node_id;
        assert!(!bad.is_well_formed());
        let mut bad = good;
        bad.multiaddrs.clear();
        assert!(!bad.is_well_formed());
    }

    #[test]
    fn an_unreachable_tracker_is_reported_as_such() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let a = signed(&identity());
        let err = announce_to_tracker(
            &format!("http://127.0.0.1:{port}"),
            &a,
            Duration::from_secs(2),
        )
        .unwrap_err();
        assert!(matches!(err, TrackerError::Unreachable { .. }), "{err}");
        let err = announce_to_tracker("not a url", &a, Duration::from_secs(2)).unwrap_err();
        assert!(
            matches!(
                err,
                TrackerError::InvalidUrl { .. } | TrackerError::Unreachable { .. }
            ),
            "{err}"
        );
    }
}
