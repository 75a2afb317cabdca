//! Server configuration: every option is a command-line flag and a `SWITCHBOARD_*`
//! environment variable, with the default shown in `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use switchboard_protocol::Limits;

/// Switchboard's server: the WebSocket hub at `/ws` plus the web bundle at `/`.
#[derive(Debug, Clone, Parser)]
#[command(name = "switchboard-server", version, about)]
pub struct Config {
    /// Address to listen on. Port 0 picks a free port (the chosen address is printed).
    #[arg(long, env = "SWITCHBOARD_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// Directory of the built web bundle (`trunk build --release` writes `dist/`).
    #[arg(long, env = "SWITCHBOARD_DIST", default_value = "dist")]
    pub dist: PathBuf,

    /// Interval of the server's WebSocket pings, announced in `welcome.heartbeat_ms`.
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT", default_value = "25s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,

    /// A connection that sends nothing (no frame, no pong) for this long is closed with
    /// 4210 (heartbeat timeout).
    #[arg(long, env = "SWITCHBOARD_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Largest WebSocket message accepted, in bytes; larger ones close the connection
    /// with 1009.
    #[arg(long, env = "SWITCHBOARD_MAX_FRAME_BYTES", default_value_t = 65_536)]
    pub max_frame_bytes: u32,

    /// Most frames in one batch (a JSON array).
    #[arg(long, env = "SWITCHBOARD_MAX_BATCH", default_value_t = 100)]
    pub max_batch: u32,

    /// Most channels one connection may subscribe to.
    #[arg(long, env = "SWITCHBOARD_MAX_SUBSCRIPTIONS", default_value_t = 100)]
    pub max_subscriptions: u32,

    /// Outbound frames queued per connection. A connection whose queue is full is closed
    /// with 4108 (slow consumer); ephemeral messages are dropped instead.
    #[arg(long, env = "SWITCHBOARD_QUEUE_CAPACITY", default_value_t = 256)]
    pub queue_capacity: usize,

    /// Sustained frames per second one connection may send; faster frames are refused
    /// with `rate_limited`.
    #[arg(long, env = "SWITCHBOARD_RATE_PER_SEC", default_value_t = 50)]
    pub rate_per_sec: u32,

    /// Frames one connection may send at once above the sustained rate. A connection that
    /// has this many frames refused in a row is closed with 4109.
    #[arg(long, env = "SWITCHBOARD_RATE_BURST", default_value_t = 100)]
    pub rate_burst: u32,

    /// A write that the client does not take within this time closes the connection with
    /// 4108 (slow consumer): it catches clients that stopped reading.
    #[arg(long, env = "SWITCHBOARD_WRITE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// On shutdown, how long to wait for connections to close after sending them 1001.
    #[arg(long, env = "SWITCHBOARD_DRAIN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Log format.
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self::parse_from(["switchboard-server"])
    }
}

impl Config {
    /// The limits announced to clients in `welcome`.
    pub fn limits(&self) -> Limits {
        Limits {
            max_frame_bytes: self.max_frame_bytes,
            max_batch: self.max_batch,
            max_subscriptions: self.max_subscriptions,
            rate_per_sec: self.rate_per_sec,
            rate_burst: self.rate_burst,
        }
    }

    /// Rejects values that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.queue_capacity == 0 {
            return Err("--queue-capacity must be at least 1".into());
        }
        if self.max_frame_bytes < 1024 {
            return Err("--max-frame-bytes must be at least 1024".into());
        }
        if self.rate_per_sec == 0 || self.rate_burst == 0 {
            return Err("--rate-per-sec and --rate-burst must be at least 1".into());
        }
        if self.heartbeat.is_zero() || self.idle_timeout <= self.heartbeat {
            return Err("--idle-timeout must be longer than a non-zero --heartbeat".into());
        }
        Ok(())
    }
}
