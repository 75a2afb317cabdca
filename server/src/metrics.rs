//! Counters the server keeps, rendered in Prometheus text format at `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Process-wide counters (relaxed atomics: exact totals, no ordering needed).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Frames received from clients.
    pub frames_in: AtomicU64,
    /// Frames sent to clients.
    pub frames_out: AtomicU64,
    /// Messages queued to subscribers by fan-out and direct delivery.
    pub deliveries: AtomicU64,
    /// Ephemeral messages dropped because a subscriber's queue was full.
    pub dropped_ephemeral: AtomicU64,
    /// Connections closed because their queue overflowed.
    pub slow_consumers: AtomicU64,
    /// `error` frames sent.
    pub errors: AtomicU64,
}

impl Metrics {
    /// Prometheus text exposition, with the live connection count as a gauge.
    pub fn render(&self, connections: usize) -> String {
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
            "switchboard_dropped_ephemeral_total",
            "Ephemeral messages dropped on full queues.",
            &self.dropped_ephemeral,
        );
        counter(
            "switchboard_slow_consumers_total",
            "Connections closed as slow consumers.",
            &self.slow_consumers,
        );
        counter(
            "switchboard_errors_total",
            "Error frames sent.",
            &self.errors,
        );
        let _ = writeln!(
            out,
            "# HELP switchboard_connections Live connections.\n# TYPE switchboard_connections gauge\nswitchboard_connections {connections}"
        );
        out
    }
}
