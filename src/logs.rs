//! The node's recent log lines, kept in memory for the dashboard's logs tab and /api/logs: a
//! tracing layer next to the stderr one, so both see the same filtered events.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Longest message kept; a log line is for reading, not for dumping data.
const MAX_MESSAGE_BYTES: usize = 2048;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogLine {
    /// Increases by one per line: a client asks for what came after the last one it saw.
    pub seq: u64,
    /// Unix milliseconds.
    pub t_ms: u64,
    pub level: &'static str,
    /// The module that logged it, e.g. neuroshard::actors::sync.
    pub target: String,
    /// The message followed by its fields as key=value.
    pub message: String,
}

/// Which lines a reader wants. Empty strings match everything.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Only lines at this severity or worse.
    pub min_level: Option<Level>,
    /// Only targets containing this.
    pub target: String,
    /// Only lines whose message contains this (case-insensitive).
    pub text: String,
    /// Only lines after this sequence number.
    pub after: u64,
    pub limit: usize,
}

impl LogQuery {
    /// `text` must be lower-case already: it is lowered once per query, not once per line.
    fn matches(&self, line: &LogLine, text: &str) -> bool {
        let level_ok = self.min_level.is_none_or(|min| {
            // tracing orders levels by verbosity: ERROR < WARN < ... < TRACE.
            line.level.parse::<Level>().is_ok_and(|level| level <= min)
        });
        level_ok
            && line.seq > self.after
            && line.target.contains(&self.target)
            && (text.is_empty() || line.message.to_lowercase().contains(text))
    }
}

/// A bounded ring of the latest lines; cloning shares it.
#[derive(Clone)]
pub struct LogRing {
    inner: Arc<Mutex<Ring>>,
}

struct Ring {
    lines: VecDeque<LogLine>,
    capacity: usize,
    next_seq: u64,
}

impl LogRing {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Ring {
                lines: VecDeque::with_capacity(capacity),
                capacity: capacity.max(1),
                next_seq: 1,
            })),
        }
    }

    pub fn push(&self, t_ms: u64, level: &'static str, target: &str, mut message: String) {
        if message.len() > MAX_MESSAGE_BYTES {
            let mut end = MAX_MESSAGE_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        let mut ring = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if ring.lines.len() == ring.capacity {
            ring.lines.pop_front();
        }
        let seq = ring.next_seq;
        ring.next_seq += 1;
        ring.lines.push_back(LogLine {
            seq,
            t_ms,
            level,
            target: target.to_owned(),
            message,
        });
    }

    /// The latest `query.limit` matching lines, oldest first.
    pub fn query(&self, query: &LogQuery) -> Vec<LogLine> {
        let text = query.text.to_lowercase();
        let ring = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut found: Vec<LogLine> = ring
            .lines
            .iter()
            .rev()
            .filter(|line| query.matches(line, &text))
            .take(query.limit)
            .cloned()
            .collect();
        found.reverse();
        found
    }

    /// The sequence number of the newest line (0 when there is none).
    pub fn last_seq(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_seq
            - 1
    }
}

/// The value of field `name` in a log message as [`RingLayer`] writes it (" name=value").
pub fn message_field<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message
        .split_whitespace()
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
}

/// The tracing layer that feeds a [`LogRing`].
pub struct RingLayer(pub LogRing);

impl<S: Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut text = MessageText::default();
        event.record(&mut text);
        let meta = event.metadata();
        let t_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.0
            .push(t_ms, meta.level().as_str(), meta.target(), text.finish());
    }
}

#[derive(Default)]
struct MessageText {
    message: String,
    fields: String,
}

impl MessageText {
    fn finish(self) -> String {
        if self.fields.is_empty() {
            self.message
        } else {
            format!("{}{}", self.message, self.fields)
        }
    }
}

impl Visit for MessageText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    fn query(limit: usize) -> LogQuery {
        LogQuery {
            limit,
            ..LogQuery::default()
        }
    }

    #[test]
    fn keeps_the_latest_lines_in_order() {
        let ring = LogRing::new(3);
        for i in 0..5 {
            ring.push(i, "INFO", "t", format!("line {i}"));
        }
        let lines = ring.query(&query(10));
        let messages: Vec<&str> = lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(messages, ["line 2", "line 3", "line 4"]);
        assert_eq!(ring.last_seq(), 5);
        assert_eq!(ring.query(&query(1))[0].message, "line 4");
    }

    #[test]
    fn filters_by_level_target_text_and_sequence() {
        let ring = LogRing::new(10);
        ring.push(
            0,
            "INFO",
            "neuroshard::actors::sync",
            "round 3 closed".into(),
        );
        ring.push(
            0,
            "WARN",
            "neuroshard::actors::peer",
            "peer rejected".into(),
        );
        ring.push(0, "ERROR", "neuroshard::node", "Checkpoint failed".into());
        ring.push(0, "DEBUG", "neuroshard::actors::sync", "noise".into());
        let warn = LogQuery {
            min_level: Some(Level::WARN),
            ..query(10)
        };
        let levels: Vec<&str> = ring.query(&warn).iter().map(|l| l.level).collect();
        assert_eq!(levels, ["WARN", "ERROR"]);
        let sync = LogQuery {
            target: "sync".into(),
            ..query(10)
        };
        assert_eq!(ring.query(&sync).len(), 2);
        let text = LogQuery {
            text: "checkpoint".into(),
            ..query(10)
        };
        assert_eq!(ring.query(&text)[0].level, "ERROR");
        let after = LogQuery {
            after: 3,
            ..query(10)
        };
        assert_eq!(ring.query(&after).len(), 1);
    }

    #[test]
    fn a_huge_message_is_cut_on_a_character_boundary() {
        let ring = LogRing::new(1);
        ring.push(0, "INFO", "t", "é".repeat(MAX_MESSAGE_BYTES));
        let line = &ring.query(&query(1))[0];
        assert!(line.message.len() <= MAX_MESSAGE_BYTES + '…'.len_utf8());
        assert!(line.message.ends_with('…'));
    }

    #[test]
    fn the_layer_records_message_and_fields() {
        let ring = LogRing::new(10);
        let subscriber = tracing_subscriber::registry().with(RingLayer(ring.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(peer = "abc", count = 3, "peer rejected");
        });
        let line = &ring.query(&query(1))[0];
        assert_eq!(line.level, "WARN");
        assert_eq!(line.message, "peer rejected peer=abc count=3");
        assert!(line.target.ends_with("logs::tests"));
    }
}
