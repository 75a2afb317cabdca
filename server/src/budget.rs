//! The memory bound: the most memory the server can hold on behalf of its clients,
//! computed from its options. Every input a client controls is bounded in bytes (frames,
//! ids, presence info, queues, subscriptions, history), so the sum is a bound, printed at
//! startup and checked by `tests/hostile.rs` against the RSS of a server under attack.
//!
//! Per connection, at worst, all at once:
//!
//! | part | bound |
//! |---|---|
//! | the session: task, state, registry entries | [`SESSION_BYTES`] |
//! | reading: tungstenite's read buffer grown to a whole frame, and the message | `2 × max_frame_bytes + read_buffer_bytes` |
//! | handling one frame: its decoded payload, the encoded message, its numbered copy | `3 × max_frame_bytes` |
//! | writing: the write buffer, which takes at most one frame beyond its size | `WRITE_BUFFER + 2 × max_frame_bytes` |
//! | the largest reply: a presence snapshot, or one frame | `max(max_presence_members × member, max_frame_bytes)` |
//! | a recovery, rewind or `history` page read and its encoding | `2 × queue_bytes` |
//! | publishes waiting to be stored: their data and numbered frames | `2 × 2 × max_frame_bytes` |
//! | the outbound queue and its direct-message budget | `queue_bytes + direct_queue_bytes` |
//! | subscriptions, each with its presence entry | `max_subscriptions × (SUBSCRIPTION_BYTES + channel + member)` |
//! | permessage-deflate (when on): an inflater, its output chunk and the inflated frames while a compressed message is read (one at a time: the rest of a read is held back); a compressed copy of each queued frame (never larger than the frame); a compressor of its own with server context takeover | `INFLATE_BYTES + 16 KiB + max_frame_bytes + queue_bytes (+ DEFLATE_BYTES)` |
//! | TLS (with `--tls-cert`): rustls's buffers and state | [`TLS_BYTES`] |
//!
//! where `member = max_presence_bytes + 2 × 256 + max_id_bytes + MEMBER_BYTES` (the
//! info, the name a token stamps into it and the token's `sub`, each at most 256 bytes,
//! and a connection id). Shared by all: the streams (with Redis, only what the fills
//! read back after a gap or an outage: `2 ×` [`crate::broker::FILLS_AT_ONCE`] `×`
//! [`crate::broker::FILL_BYTES`]; with `--history memory`,
//! `history_memory`; with the disk store, its page cache and the stream records it keeps
//! in memory: [`crate::history::PAGE_CACHE_BYTES`] + [`crate::history::CACHED_STREAMS`] ×
//! [`crate::history::CACHED_STREAM_BYTES`]), with permessage-deflate each worker thread's
//! compressors and pooled inflaters ([`DEFLATE_THREAD_BYTES`]), with TLS the handshakes in
//! progress ([`crate::tls::MAX_HANDSHAKES`] × [`TLS_HANDSHAKE_BYTES`]), and [`BASE_BYTES`]
//! for the process itself.
//! Requests
//! running beside a session ([`crate::session`] allows 16 per connection) hold what their
//! handlers hold; the built-in ones answer at once.

use crate::config::Config;

/// A session's own memory: its task, state, queue handle and registry entries (an idle
/// subscribed connection measures ~4 KiB; see docs/benchmarks.md), with room to spare.
pub const SESSION_BYTES: usize = 8 << 10;
/// One subscription's entries in the session, the hub and the broker, beyond its name.
pub const SUBSCRIPTION_BYTES: usize = 512;
/// One presence member's bookkeeping beyond its info and ids.
pub const MEMBER_BYTES: usize = 128;
/// The process before any client: runtime, router, tables (measured ~10 MiB RSS at start).
pub const BASE_BYTES: usize = 32 << 20;
/// A zlib compressor at 15 window bits and memory level 8: `2^(15+2) + 2^(8+9)` bytes
/// (zlib's formula; zlib-rs keeps zlib's layout), plus its state.
pub const DEFLATE_BYTES: usize = 264 << 10;
/// A zlib inflater at 15 window bits: its 32 KiB window and ~7 KiB of state.
pub const INFLATE_BYTES: usize = 40 << 10;
/// Per worker thread with permessage-deflate: a compressor per window size in use
/// (9–15 bits) and the pooled inflaters ([`crate::deflate`]).
pub const DEFLATE_THREAD_BYTES: usize = 7 * DEFLATE_BYTES + 4 * INFLATE_BYTES;

/// A TLS connection's rustls buffers at worst (rustls 0.23's own limits), and its state: the
/// buffer of records being read (up to 64 KiB: rustls allows that much while a handshake
/// message is buffered, and a client may start one after the handshake, e.g. a key
/// update, and stall), plaintext read but not yet taken (a 16 KiB limit that one record
/// can pass), records not yet written (a 64 KiB limit, checked before each record is
/// added), and the keys and session state (an idle TLS connection measures ~8 KiB more
/// than a plain one; docs/benchmarks.md).
pub const TLS_BYTES: usize = (64 << 10) + (32 << 10) + (82 << 10) + (8 << 10);
/// One TLS handshake in progress: up to 64 KiB of handshake messages buffered (rustls's
/// cap) and the handshake's state.
pub const TLS_HANDSHAKE_BYTES: usize = 80 << 10;

/// The parts of the bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryBudget {
    /// What one connection can hold at worst.
    pub per_connection: usize,
    /// What all connections share at worst (the streams).
    pub shared: usize,
    /// The process itself.
    pub base: usize,
    /// The parts of `per_connection`, by name, for the startup log and the docs.
    pub parts: Vec<(&'static str, usize)>,
}

impl MemoryBudget {
    /// The bound for `config`.
    pub fn from_config(config: &Config) -> Self {
        let frame = config.max_frame_bytes as usize;
        let limits = config.limits();
        // Its info, the name a token stamps into it, its user id (a token's `sub`, or a
        // connection id) and a connection id.
        let member = limits.max_presence_bytes as usize
            + 2 * crate::auth::MAX_CLAIM_BYTES
            + limits.max_id_bytes as usize
            + MEMBER_BYTES;
        let channel = switchboard_protocol::limits::MAX_CHANNEL_LEN;
        let compression = if config.deflate {
            INFLATE_BYTES
                + (16 << 10)
                + frame
                + config.queue_bytes
                + if config.deflate_server_context_takeover {
                    DEFLATE_BYTES
                } else {
                    0
                }
        } else {
            0
        };
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let parts = vec![
            ("session", SESSION_BYTES),
            ("reading", 2 * frame + config.read_buffer_bytes),
            ("handling a frame", 3 * frame),
            ("writing", crate::WRITE_BUFFER_BYTES + 2 * frame),
            (
                "largest reply",
                (config.max_presence_members * member).max(frame),
            ),
            ("recovery", 2 * config.queue_bytes),
            // `Core::inflight_publish_bytes` of data, each also held as a numbered frame.
            ("publishes in flight", 2 * 2 * frame),
            ("queues", config.queue_bytes + config.direct_queue_bytes),
            (
                "subscriptions",
                config.max_subscriptions as usize * (SUBSCRIPTION_BYTES + channel + member),
            ),
            // An embedding app's publish decisions: a channel name and a flag each.
            (
                "publish decisions",
                crate::embed::PUBLISH_DECISIONS * (channel + 32),
            ),
            ("compression", compression),
            (
                "tls",
                if config.tls_cert.is_some() {
                    TLS_BYTES
                } else {
                    0
                },
            ),
        ];
        Self {
            per_connection: parts.iter().map(|(_, n)| n).sum(),
            shared: if config.deflate {
                threads * DEFLATE_THREAD_BYTES
            } else {
                0
            } + if config.tls_cert.is_some() {
                crate::tls::MAX_HANDSHAKES * TLS_HANDSHAKE_BYTES
            } else {
                0
            } + match config.history {
                // The streams are in Redis; the node holds what its fills read.
                _ if config.redis_url.is_some() => {
                    2 * crate::broker::FILLS_AT_ONCE * crate::broker::FILL_BYTES
                }
                crate::config::HistoryStore::Memory => config.history_memory,
                crate::config::HistoryStore::Disk => {
                    crate::history::PAGE_CACHE_BYTES
                        + crate::history::CACHED_STREAMS * crate::history::CACHED_STREAM_BYTES
                }
            },
            base: BASE_BYTES,
            parts,
        }
    }

    /// The bound with `connections` connections.
    pub fn for_connections(&self, connections: usize) -> usize {
        self.base + self.shared + connections * self.per_connection
    }

    /// The bound with as many connections as `--max-connections` allows.
    pub fn total(&self, config: &Config) -> usize {
        self.for_connections(config.max_connections)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn the_default_bound_adds_up_and_follows_the_options() {
        let config = Config::parse_from(["switchboard-server"]);
        let b = MemoryBudget::from_config(&config);
        assert_eq!(b.per_connection, b.parts.iter().map(|p| p.1).sum::<usize>());
        // Queues dominate: 1 MiB + 256 KiB.
        assert!(b.per_connection > (1 << 20) + (256 << 10));
        let smaller = Config::parse_from(["switchboard-server", "--queue-bytes", "131072"]);
        let s = MemoryBudget::from_config(&smaller);
        // The queue, a recovery read of up to a queue's worth and its encoding, and the
        // queued frames' compressed copies.
        assert_eq!(
            b.per_connection - s.per_connection,
            4 * ((1 << 20) - 131_072)
        );
        assert_eq!(b.for_connections(0), b.base + b.shared);
        // The disk store's share is its caches; the memory store's, its budget (both
        // beside the compressors).
        let plain = |args: &[&str]| {
            let mut argv = vec!["switchboard-server", "--deflate", "false"];
            argv.extend_from_slice(args);
            MemoryBudget::from_config(&Config::parse_from(argv))
        };
        assert_eq!(plain(&["--history", "memory"]).shared, 64 << 20);
        assert!(plain(&[]).shared < 64 << 20, "{}", plain(&[]).shared);
        // Compression's share: nothing when off; a compressor per connection with server
        // context takeover.
        assert_eq!(
            b.per_connection - plain(&[]).per_connection,
            40 * 1024 + 16 * 1024 + 65_536 + (1 << 20)
        );
        let takeover =
            Config::parse_from(["switchboard-server", "--deflate-server-context-takeover"]);
        assert_eq!(
            MemoryBudget::from_config(&takeover).per_connection - b.per_connection,
            DEFLATE_BYTES
        );
        // TLS: rustls's buffers per connection, and the handshakes in progress.
        let tls = MemoryBudget::from_config(&Config::parse_from([
            "switchboard-server",
            "--tls-cert",
            "cert.pem",
            "--tls-key",
            "key.pem",
        ]));
        assert_eq!(tls.per_connection - b.per_connection, TLS_BYTES);
        assert_eq!(tls.shared - b.shared, 512 * TLS_HANDSHAKE_BYTES);
    }
}
