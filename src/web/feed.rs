//! The dashboard feed's state: the [`Timeline`] the sampler extends, the log lines already
//! streamed and the broadcast channel of the open event streams. The sampler and the handlers that
//! read it are in `dashboard.rs`.

use std::sync::Mutex;

use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use tokio::sync::broadcast;

use super::error::ApiError;
use crate::logs::LogRing;
use crate::timeline::Timeline;

/// Open event streams one node serves at most; more get 503.
const MAX_STREAMS: usize = 64;
/// Points kept per curve (one a second while training: the last hour at full resolution).
const MAX_SAMPLES: usize = 3600;
const MAX_ROUNDS: usize = 50;
/// Log lines one event or one /api/logs answer carries at most.
pub(super) const MAX_LOG_LINES: usize = 500;

/// The sampler's state, shared by the tick and the handlers.
pub struct Feed {
    pub(super) timeline: Mutex<Timeline>,
    pub(super) logs: LogRing,
    /// Log lines up to this sequence number have been streamed.
    pub(super) logs_streamed: Mutex<u64>,
    /// `None` once the server is stopping: open streams end, so shutdown does not wait on them.
    pub(super) events: Mutex<Option<broadcast::Sender<Bytes>>>,
}

impl Feed {
    pub fn new(logs: LogRing) -> Self {
        Self {
            timeline: Mutex::new(Timeline::new(MAX_SAMPLES, MAX_ROUNDS)),
            logs_streamed: Mutex::new(logs.last_seq().saturating_sub(MAX_LOG_LINES as u64)),
            logs,
            events: Mutex::new(Some(broadcast::channel(16).0)),
        }
    }

    /// Ends every open stream and refuses new ones.
    pub fn close(&self) {
        lock(&self.events).take();
    }

    pub(super) fn subscribe(&self) -> Result<broadcast::Receiver<Bytes>, ApiError> {
        let events = lock(&self.events);
        let sender = events.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the node is stopping",
            )
        })?;
        if sender.receiver_count() >= MAX_STREAMS {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_streams",
                format!("this node serves at most {MAX_STREAMS} open event streams"),
            ));
        }
        Ok(sender.subscribe())
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
