//! Counters the server keeps, rendered in Prometheus text format at `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use switchboard_protocol::{CloseCode, ErrorCode};

/// Close codes counted per code in `switchboard_closes_total`.
const CLOSE_CODES: [CloseCode; 12] = [
    CloseCode::GOING_AWAY,
    CloseCode::PROTOCOL_ERROR,
    CloseCode::INVALID_PAYLOAD,
    CloseCode::TOO_BIG,
    CloseCode::BAD_PROTOCOL,
    CloseCode::UNAUTHORIZED,
    CloseCode::UNSUPPORTED_PROTOCOL,
    CloseCode::SLOW_CONSUMER,
    CloseCode::RATE_LIMITED,
    CloseCode::SERVER_FULL,
    CloseCode::HEARTBEAT_TIMEOUT,
    CloseCode::TOKEN_EXPIRED,
];

/// Process-wide counters (relaxed atomics: exact totals, no ordering needed).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Of them, those that negotiated permessage-deflate.
    pub connections_deflate: AtomicU64,
    /// Of them, those that speak MessagePack.
    pub connections_msgpack: AtomicU64,
    /// Frames received from clients.
    pub frames_in: AtomicU64,
    /// Frames sent to clients.
    pub frames_out: AtomicU64,
    /// Messages queued to subscribers by fan-out and direct delivery.
    pub deliveries: AtomicU64,
    /// Ephemeral messages dropped because a subscriber's queue was full.
    pub dropped_ephemeral: AtomicU64,
    /// Connections closed because their queue overflowed or a write timed out.
    pub slow_consumers: AtomicU64,
    /// `direct` messages refused because the receiver's budget for them was used up.
    pub directs_refused: AtomicU64,
    /// Stored messages that reached this node past a gap in their stream's offsets.
    pub gaps: AtomicU64,
    /// Messages sent again from history: recovered after a reconnect, rewound on
    /// subscribe, or read with the `history` method.
    pub recovered: AtomicU64,
    /// Subscribes with `since` that could not recover (`recovered: false`).
    pub unrecovered: AtomicU64,
    /// Request handlers that panicked (answered with `internal`).
    pub handler_panics: AtomicU64,
    /// `error` frames sent, by code (indexed like [`ErrorCode::ALL`]).
    errors: [AtomicU64; ErrorCode::ALL.len()],
    /// Connections the server closed, by code (indexed like `CLOSE_CODES`).
    closes: [AtomicU64; CLOSE_CODES.len()],
    /// Origins refused before the upgrade.
    pub origin_refused: AtomicU64,
}

/// Queue depths at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct QueueDepths {
    /// Frames waiting in all connections' queues together.
    pub total: usize,
    /// The deepest single queue, in frames.
    pub max: usize,
    /// Bytes charged for all queued frames together.
    pub bytes: usize,
    /// The most bytes charged in a single queue.
    pub max_bytes: usize,
}

impl Metrics {
    /// Counts an `error` frame.
    pub fn error(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a close the server initiated.
    pub fn close(&self, code: CloseCode) {
        if let Some(i) = CLOSE_CODES.iter().position(|c| *c == code) {
            self.closes[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Prometheus text exposition, with the live connection count and queue depths.
    pub fn render(&self, connections: usize, queues: QueueDepths) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        };
        counter(
            "switchboard_connections_total",
            "Connections accepted.",
            &self.connections_total,
        );
        counter(
            "switchboard_connections_deflate_total",
            "Connections accepted with permessage-deflate negotiated.",
            &self.connections_deflate,
        );
        counter(
            "switchboard_connections_msgpack_total",
            "Connections accepted speaking MessagePack.",
            &self.connections_msgpack,
        );
        counter(
            "switchboard_frames_in_total",
            "Frames received from clients.",
            &self.frames_in,
        );
        counter(
            "switchboard_frames_out_total",
            "Frames sent to clients.",
            &self.frames_out,
        );
        counter(
            "switchboard_deliveries_total",
            "Messages queued to subscribers.",
            &self.deliveries,
        );
        counter(
            "switchboard_slow_consumers_total",
            "Connections closed as slow consumers.",
            &self.slow_consumers,
        );
        counter(
            "switchboard_directs_refused_total",
            "Direct messages refused because the receiver's budget for them was full.",
            &self.directs_refused,
        );
        counter(
            "switchboard_stream_gaps_total",
            "Stored messages that arrived past a gap in their stream's offsets.",
            &self.gaps,
        );
        counter(
            "switchboard_recovered_messages_total",
            "Messages sent again from history (recovery, rewind and the history method).",
            &self.recovered,
        );
        counter(
            "switchboard_unrecovered_total",
            "Subscribes with since that could not recover the missed messages.",
            &self.unrecovered,
        );
        counter(
            "switchboard_handler_panics_total",
            "Request handlers that panicked.",
            &self.handler_panics,
        );
        counter(
            "switchboard_origin_refused_total",
            "WebSocket upgrades refused for their Origin.",
            &self.origin_refused,
        );
        let _ = writeln!(
            out,
            "# HELP switchboard_dropped_total Messages dropped, by reason.\n# TYPE switchboard_dropped_total counter"
        );
        let _ = writeln!(
            out,
            "switchboard_dropped_total{{reason=\"ephemeral_queue_full\"}} {}",
            self.dropped_ephemeral.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP switchboard_errors_total Error frames sent, by code.\n# TYPE switchboard_errors_total counter"
        );
        for (code, n) in ErrorCode::ALL.iter().zip(&self.errors) {
            let _ = writeln!(
                out,
                "switchboard_errors_total{{code=\"{code}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP switchboard_closes_total Connections closed by the server, by close code.\n# TYPE switchboard_closes_total counter"
        );
        for (code, n) in CLOSE_CODES.iter().zip(&self.closes) {
            let _ = writeln!(
                out,
                "switchboard_closes_total{{code=\"{}\"}} {}",
                code.0,
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP switchboard_connections Live connections.\n# TYPE switchboard_connections gauge\nswitchboard_connections {connections}"
        );
        let _ = writeln!(
            out,
            "# HELP switchboard_queued_frames Frames waiting in outbound queues.\n# TYPE switchboard_queued_frames gauge\nswitchboard_queued_frames {}",
            queues.total
        );
        let _ = writeln!(
            out,
            "# HELP switchboard_queue_depth_max The deepest outbound queue.\n# TYPE switchboard_queue_depth_max gauge\nswitchboard_queue_depth_max {}",
            queues.max
        );
        let _ = writeln!(
            out,
            "# HELP switchboard_queued_bytes Bytes waiting in outbound queues.\n# TYPE switchboard_queued_bytes gauge\nswitchboard_queued_bytes {}",
            queues.bytes
        );
        let _ = writeln!(
            out,
            "# HELP switchboard_queue_bytes_max The most bytes waiting in one outbound queue.\n# TYPE switchboard_queue_bytes_max gauge\nswitchboard_queue_bytes_max {}",
            queues.max_bytes
        );
        out
    }
}
