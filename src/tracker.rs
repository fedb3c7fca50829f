//! The bootstrap tracker (`neuroshard tracker`): nodes POST signed announcements and GET the peer
//! list of their network. It only ever sees public keys and signatures, never a token.
//!
//! Routes: POST /announce, GET /peers?network=ID, GET /health; anything else is a 404. Every error
//! is JSON {error, detail}, the shape the node's API uses.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{App, HttpResponse, HttpServer, web};
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use crate::crypto;
use crate::net::announce::{
    AnnounceError, Announcement, MAX_CLOCK_SKEW_S, PeerRecord, unix_time_s,
};
use crate::net::protocol::valid_network_id;
use crate::node::shutdown_signal;
use crate::web::{ApiError, not_found};

/// Largest accepted POST /announce body.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Most nodes listed per network.
pub const MAX_ENTRIES_PER_NETWORK: usize = 10_000;
/// Most nodes held across all networks, so that many small networks cannot exhaust memory either.
pub const MAX_ENTRIES_TOTAL: usize = 100_000;
/// Peers one GET /peers answer lists: a uniform random sample of the live ones, so that a burst
/// of fake announcements can neither push the answer past the client's size limit nor put the
/// attacker's addresses first; a node asks again every announce interval and meets the rest
/// through the DHT. 32 × 16 multiaddrs of 256 bytes stay far below the client's 1 MiB.
pub const MAX_PEERS_PER_ANSWER: usize = 32;

/// The last accepted announcement of one node in one network.
struct Entry {
    announcement: Announcement,
    received: Instant,
}

/// network_id → node_id → entry.
#[derive(Default)]
struct Registry {
    networks: HashMap<String, HashMap<String, Entry>>,
    total: usize,
}

struct TrackerState {
    registry: Mutex<Registry>,
    ttl: Duration,
}

impl Entry {
    fn is_live(&self, now: Instant, ttl: Duration) -> bool {
        now.duration_since(self.received) <= ttl
    }

    /// Whether forgetting the entry is safe: it is past the ttl, and its timestamp is too old to
    /// pass the clock-skew check again, so forgetting its timestamp cannot let a replay in.
    fn is_evictable(&self, now: Instant, now_s: u64, ttl: Duration) -> bool {
        !self.is_live(now, ttl)
            && now_s > self.announcement.timestamp.saturating_add(MAX_CLOCK_SKEW_S)
    }
}

impl Registry {
    /// Drops the evictable entries of `network_id` (and the network when it empties).
    fn prune(&mut self, network_id: &str, now: Instant, now_s: u64, ttl: Duration) {
        let Some(nodes) = self.networks.get_mut(network_id) else {
            return;
        };
        let before = nodes.len();
        nodes.retain(|_, e| !e.is_evictable(now, now_s, ttl));
        self.total -= before - nodes.len();
        if nodes.is_empty() {
            self.networks.remove(network_id);
        }
    }

    fn prune_all(&mut self, now: Instant, now_s: u64, ttl: Duration) {
        let ids: Vec<String> = self.networks.keys().cloned().collect();
        for id in ids {
            self.prune(&id, now, now_s, ttl);
        }
    }

    fn live_count(&self, network_id: &str, now: Instant, ttl: Duration) -> usize {
        self.networks
            .get(network_id)
            .map_or(0, |n| n.values().filter(|e| e.is_live(now, ttl)).count())
    }
}

fn refused(e: &AnnounceError) -> ApiError {
    let status = match e {
        AnnounceError::BadSignature => StatusCode::UNAUTHORIZED,
        AnnounceError::Replayed { .. } => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, e.code(), e.to_string())
}

fn configure(cfg: &mut web::ServiceConfig) {
    let json = web::JsonConfig::default()
        .limit(MAX_BODY_BYTES)
        .content_type_required(false)
        .error_handler(|err, _| {
            use actix_web::error::{JsonPayloadError, PayloadError};
            match err {
                JsonPayloadError::OverflowKnownLength { .. }
                | JsonPayloadError::Overflow { .. }
                | JsonPayloadError::Payload(PayloadError::Overflow) => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("the announcement body is larger than {MAX_BODY_BYTES} bytes"),
                ),
                err => ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", err.to_string()),
            }
            .into()
        });
    let query = web::QueryConfig::default().error_handler(|err, _| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", err.to_string()).into()
    });
    cfg.app_data(json)
        .app_data(query)
        .route("/announce", web::post().to(announce))
        .route("/peers", web::get().to(peers))
        .route("/health", web::get().to(health))
        .default_service(web::to(not_found));
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn announce(
    state: web::Data<TrackerState>,
    body: web::Json<Announcement>,
) -> Result<HttpResponse, ApiError> {
    let announcement = body.into_inner();
    let (now, now_s, ttl) = (Instant::now(), unix_time_s(), state.ttl);
    let mut registry = state.registry.lock().unwrap_or_else(|e| e.into_inner());
    // Verified under the lock, so two copies of one announcement cannot both be accepted.
    let last = registry
        .networks
        .get(&announcement.network_id)
        .and_then(|n| n.get(&announcement.node_id))
        .map(|e| e.announcement.timestamp);
    if let Err(e) = announcement.verify(now_s, last) {
        warn!(network = %clip(&announcement.network_id), node_id = %clip(&announcement.node_id), error = %e, "announcement refused");
        return Err(refused(&e));
    }
    let network_id = announcement.network_id.clone();
    let node_id = announcement.node_id.clone();
    let is_new = last.is_none();
    if is_new {
        let network_full = |r: &Registry| {
            r.networks
                .get(&network_id)
                .is_some_and(|n| n.len() >= MAX_ENTRIES_PER_NETWORK)
        };
        if network_full(&registry) {
            registry.prune(&network_id, now, now_s, ttl);
        }
        if registry.total >= MAX_ENTRIES_TOTAL {
            registry.prune_all(now, now_s, ttl);
        }
        if network_full(&registry) || registry.total >= MAX_ENTRIES_TOTAL {
            warn!(network = %network_id, %node_id, "announcement refused: tracker full");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "tracker_full",
                format!(
                    "the tracker holds its maximum of nodes ({MAX_ENTRIES_PER_NETWORK} per network, {MAX_ENTRIES_TOTAL} in all); retry later"
                ),
            ));
        }
        registry.total += 1;
    }
    registry
        .networks
        .entry(network_id.clone())
        .or_default()
        .insert(
            node_id.clone(),
            Entry {
                announcement,
                received: now,
            },
        );
    let peers = registry.live_count(&network_id, now, ttl);
    drop(registry);
    info!(network = %network_id, %node_id, new = is_new, peers, "announcement accepted");
    Ok(HttpResponse::Ok().json(json!({"accepted": true, "peers": peers})))
}

#[derive(Deserialize)]
struct PeersQuery {
    network: Option<String>,
}

async fn peers(
    state: web::Data<TrackerState>,
    query: web::Query<PeersQuery>,
) -> Result<HttpResponse, ApiError> {
    let Some(network_id) = query.into_inner().network else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the `network` query parameter is required: GET /peers?network=ID",
        ));
    };
    if !valid_network_id(&network_id) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "network {:?} is invalid: it must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'",
                clip(&network_id)
            ),
        ));
    }
    let (now, now_s, ttl) = (Instant::now(), unix_time_s(), state.ttl);
    let mut registry = state.registry.lock().unwrap_or_else(|e| e.into_inner());
    registry.prune(&network_id, now, now_s, ttl);
    let mut peers: Vec<PeerRecord> = registry
        .networks
        .get(&network_id)
        .into_iter()
        .flat_map(|n| n.values())
        .filter(|e| e.is_live(now, ttl))
        .map(|e| PeerRecord {
            peer_id: e.announcement.peer_id.clone(),
            node_id: e.announcement.node_id.clone(),
            multiaddrs: e.announcement.multiaddrs.clone(),
            last_seen_s: now.duration_since(e.received).as_secs(),
        })
        .collect();
    drop(registry);
    let sample = sample_uniform(&mut peers, MAX_PEERS_PER_ANSWER, crypto::generate_nonce);
    Ok(HttpResponse::Ok().json(json!({"peers": sample})))
}

/// `k` items drawn uniformly without replacement (a partial Fisher–Yates shuffle driven by
/// `random`); all of them, shuffled, when there are no more than `k`.
fn sample_uniform<T>(items: &mut [T], k: usize, mut random: impl FnMut() -> u64) -> &[T] {
    let k = k.min(items.len());
    for i in 0..k {
        let remaining = (items.len() - i) as u64;
        let j = i + (random() % remaining) as usize;
        items.swap(i, j);
    }
    &items[..k]
}

/// Untrusted input cut short for a log line.
fn clip(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((cut, _)) => &s[..cut],
        None => s,
    }
}

/// Runs the tracker on `host:port` until SIGINT/SIGTERM; announcements older than `ttl` are no
/// longer listed. Must be called inside an actix `System`. The only error is failing to bind.
pub async fn run(host: &str, port: u16, ttl: Duration) -> std::io::Result<()> {
    let state = web::Data::new(TrackerState {
        registry: Mutex::new(Registry::default()),
        ttl,
    });
    let server = HttpServer::new(move || App::new().app_data(state.clone()).configure(configure))
        .workers(2)
        .disable_signals()
        .shutdown_timeout(5)
        .bind((host, port))
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {host}:{port}: {e}"))
        })?;
    let addrs = server.addrs();
    let server = server.run();
    let handle = server.handle();
    let task = actix_rt::spawn(server);
    info!(?addrs, ttl_s = ttl.as_secs(), "tracker listening");
    shutdown_signal().await;
    info!("shutting down");
    handle.stop(true).await;
    if let Ok(Err(e)) = task.await {
        warn!(error = %e, "server ended with an error");
    }
    info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Identity, generate_token};

    fn entry(timestamp: u64, age: Duration) -> Entry {
        let id = Identity::from_token(&generate_token()).unwrap();
        Entry {
            announcement: Announcement::signed(
                &id,
                "net",
                vec!["/ip4/127.0.0.1/tcp/1".into()],
                timestamp,
            ),
            received: Instant::now() - age,
        }
    }

    #[test]
    fn expired_entries_are_kept_while_their_timestamp_could_still_be_replayed() {
        let ttl = Duration::from_secs(10);
        let now = Instant::now();
        let now_s = 1_000_000;
        // Past the ttl, but its (future) timestamp would still pass the skew check: kept.
        let e = entry(now_s + 100, Duration::from_secs(20));
        assert!(!e.is_live(now, ttl));
        assert!(!e.is_evictable(now, now_s, ttl));
        // Past the ttl and stale: evictable.
        let e = entry(now_s - MAX_CLOCK_SKEW_S - 1, Duration::from_secs(20));
        assert!(e.is_evictable(now, now_s, ttl));
        // Within the ttl: live.
        let e = entry(now_s - 1000, Duration::ZERO);
        assert!(e.is_live(now, ttl) && !e.is_evictable(now, now_s, ttl));
    }

    #[test]
    fn pruning_keeps_the_total_in_step() {
        let ttl = Duration::from_secs(10);
        let now_s = 1_000_000;
        let mut r = Registry::default();
        let nodes = r.networks.entry("net".into()).or_default();
        let old = entry(now_s - 1000, Duration::from_secs(20));
        let fresh = entry(now_s, Duration::ZERO);
        nodes.insert(old.announcement.node_id.clone(), old);
        nodes.insert(fresh.announcement.node_id.clone(), fresh);
        r.total = 2;
        r.prune_all(Instant::now(), now_s, ttl);
        assert_eq!(r.total, 1);
        assert_eq!(r.live_count("net", Instant::now(), ttl), 1);
        r.networks.get_mut("net").unwrap().clear();
        r.total = 0;
        r.prune("net", Instant::now(), now_s, ttl);
        assert!(r.networks.is_empty());
    }

    #[test]
    fn answers_are_bounded_uniform_samples() {
        let mut items: Vec<u32> = (0..100).collect();
        let mut seen = std::collections::BTreeSet::new();
        let mut state = 7u64;
        let mut random = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state >> 11
        };
        for _ in 0..20 {
            let sample = sample_uniform(&mut items, MAX_PEERS_PER_ANSWER, &mut random).to_vec();
            assert_eq!(sample.len(), MAX_PEERS_PER_ANSWER);
            let distinct: std::collections::BTreeSet<_> = sample.iter().collect();
            assert_eq!(distinct.len(), sample.len(), "no entry twice");
            seen.extend(sample);
        }
        assert!(
            seen.len() > 90,
            "every entry gets its turn: {} of 100 seen",
            seen.len()
        );
        let mut few = vec![1, 2, 3];
        assert_eq!(sample_uniform(&mut few, 32, &mut random).len(), 3);
    }
}
