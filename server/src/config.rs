//! Server configuration: every option is a command-line flag and a `SWITCHBOARD_*`
//! environment variable, with the default shown in `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use jsonwebtoken::Algorithm;
use switchboard_protocol::Limits;

use crate::auth::keys::{JwksFile, PublicKeyFile, parse_public_key_algorithm};
use crate::edge::ProxyNet;

/// Switchboard's server: the WebSocket hub at `/ws` plus the web bundle at `/`.
#[derive(Debug, Clone, Parser)]
#[command(name = "switchboard-server", version, about)]
pub struct Config {
    /// Address to listen on. Port 0 picks a free port (the chosen address is printed).
    #[arg(long, env = "SWITCHBOARD_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// PEM certificate chain (leaf first) to serve HTTPS and `wss://` with; needs
    /// --tls-key. Reloaded when the file changes (see --tls-watch) or on SIGHUP, without
    /// touching open connections. `switchboard-dev-cert` makes one for development.
    #[arg(
        long,
        env = "SWITCHBOARD_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "SWITCHBOARD_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// How often the TLS files are checked for changes (modification time and size).
    #[arg(long, env = "SWITCHBOARD_TLS_WATCH", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_watch: Duration,

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

    /// Most members in one channel's presence set; a `subscribe` with `presence` beyond it
    /// is refused with `presence_full`. It bounds the size of a presence snapshot.
    #[arg(long, env = "SWITCHBOARD_MAX_PRESENCE_MEMBERS", default_value_t = 1000)]
    pub max_presence_members: usize,

    /// Outbound frames queued per connection. A connection whose queue is full is closed
    /// with 4108 (slow consumer); ephemeral messages are dropped instead.
    #[arg(long, env = "SWITCHBOARD_QUEUE_CAPACITY", default_value_t = 256)]
    pub queue_capacity: usize,

    /// Outbound bytes queued per connection (each frame charged its length plus 64): the
    /// same rule as --queue-capacity applies when they are used up. At least twice
    /// --max-frame-bytes.
    #[arg(long, env = "SWITCHBOARD_QUEUE_BYTES", default_value_t = 1 << 20)]
    pub queue_bytes: usize,

    /// Bytes of `direct` messages queued per connection, apart from --queue-bytes. A
    /// `direct` that does not fit is refused to its sender with `target_busy`; the
    /// receiver is never closed because of them. At least --max-frame-bytes + 64.
    #[arg(long, env = "SWITCHBOARD_DIRECT_QUEUE_BYTES", default_value_t = 256 << 10)]
    pub direct_queue_bytes: usize,

    /// Where channel streams are kept: `disk` (the embedded store in --data-dir, kept
    /// across restarts) or `memory` (lost on restart).
    #[arg(long, env = "SWITCHBOARD_HISTORY", value_enum, default_value_t = HistoryStore::Disk)]
    pub history: HistoryStore,

    /// Directory of the embedded store (`history.redb`), created if missing.
    #[arg(long, env = "SWITCHBOARD_DATA_DIR", default_value = "switchboard-data")]
    pub data_dir: PathBuf,

    /// What a publish's ack means with the disk store: `fsync` (on disk: group commits
    /// are fsync'd before their acks) or `os` (written, fsync'd within a second; a crash
    /// loses that second and starts new epochs).
    #[arg(long, env = "SWITCHBOARD_DURABILITY", value_enum, default_value_t = crate::history::Durability::Fsync)]
    pub durability: crate::history::Durability,

    /// Retention for the channels matching a pattern, `PATTERN=COUNT[/AGE]`, e.g.
    /// `ticker:*=10/1m` (repeat the option or separate with commas; the first match
    /// wins; others use --history-size and --history-ttl).
    #[arg(long, env = "SWITCHBOARD_RETENTION", value_delimiter = ',')]
    pub retention: Vec<crate::history::RetentionRule>,

    /// Most messages one recovery (`subscribe` with `since`) or `history` request
    /// returns; a client further behind is told to reload (`recovered: false`).
    #[arg(long, env = "SWITCHBOARD_RECOVERY_LIMIT", default_value_t = 1000)]
    pub recovery_limit: usize,

    /// Most messages each channel's stream keeps.
    #[arg(long, env = "SWITCHBOARD_HISTORY_SIZE", default_value_t = 100)]
    pub history_size: usize,

    /// Messages older than this are dropped from the streams.
    #[arg(long, env = "SWITCHBOARD_HISTORY_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub history_ttl: Duration,

    /// Memory the in-memory streams may use together (messages, publish ids, one record
    /// per channel), in bytes. Over it, the least recently used channels' streams are
    /// dropped whole and come back with a new epoch.
    #[arg(long, env = "SWITCHBOARD_HISTORY_MEMORY", default_value_t = 64 << 20)]
    pub history_memory: usize,

    /// Bytes the disk store's streams may use together (messages, publish ids, one record
    /// per channel). Over it, the least recently written channels' streams are dropped
    /// whole and come back with a new epoch.
    #[arg(long, env = "SWITCHBOARD_HISTORY_DISK", default_value_t = 1 << 30)]
    pub history_disk: u64,

    /// Publish ids each channel's stream remembers, so a resend gets its first offset
    /// instead of a second copy.
    #[arg(long, env = "SWITCHBOARD_DEDUPE_WINDOW", default_value_t = 1024)]
    pub dedupe_window: usize,

    /// Run as one of several nodes sharing this Redis (7 or later), e.g.
    /// `redis://127.0.0.1:6379/0`: fan-out between nodes, the channel streams, presence
    /// and `direct` go through it, and --history is not used. See docs/scaling.md.
    #[arg(long, env = "SWITCHBOARD_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and pub/sub channel, so deployments can share a Redis.
    #[arg(long, env = "SWITCHBOARD_REDIS_PREFIX", default_value = "sb")]
    pub redis_prefix: String,

    /// With Redis: how long a presence member outlives its node (the node renews its
    /// members every third of this; a node that dies takes them along within it).
    #[arg(long, env = "SWITCHBOARD_PRESENCE_TTL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub presence_ttl: Duration,

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

    /// Secret for HS256 JSON Web Tokens. The server checks tokens when this,
    /// --jwt-public-key or --jwt-jwks is set; with none of them, tokens are refused and every
    /// connection is anonymous with full access (a development setting).
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// PEM file with a public key for tokens, read at startup: RSA (RS256, or
    /// --jwt-algorithm), EC P-256 (ES256), EC P-384 (ES384) or Ed25519 (EdDSA), as
    /// `openssl pkey -pubout` writes it.
    #[arg(long, env = "SWITCHBOARD_JWT_PUBLIC_KEY", value_name = "PATH", value_parser = PublicKeyFile::read)]
    pub jwt_public_key: Option<PublicKeyFile>,

    /// The algorithm of tokens for an RSA --jwt-public-key: RS256 (the default), RS384,
    /// RS512, PS256, PS384 or PS512. EC and Ed25519 keys have one algorithm each; this must
    /// agree with it.
    #[arg(long, env = "SWITCHBOARD_JWT_ALGORITHM", value_parser = parse_public_key_algorithm)]
    pub jwt_algorithm: Option<Algorithm>,

    /// JSON Web Key Set file with public keys for tokens, read at startup. A token names its
    /// key with the `kid` header (a set of one key also takes tokens without `kid`); each
    /// key's algorithm is its `alg`, or its type's default.
    #[arg(long, env = "SWITCHBOARD_JWT_JWKS", value_name = "PATH", value_parser = JwksFile::read)]
    pub jwt_jwks: Option<JwksFile>,

    /// Audiences this server accepts (comma-separated). When set, a token must have an
    /// `aud` naming one of them; when unset, a token with an `aud` is refused.
    #[arg(long, env = "SWITCHBOARD_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,

    /// Issuers this server accepts (comma-separated). When set, a token must have an `iss`
    /// that is one of them; when unset, `iss` is not checked.
    #[arg(long, env = "SWITCHBOARD_JWT_ISSUER", value_delimiter = ',')]
    pub jwt_issuer: Vec<String>,

    /// Clock skew allowed when checking a token's `exp` and `nbf`: whole seconds, at most
    /// 1h. A connection is closed when its token's `exp` plus this has passed.
    #[arg(long, env = "SWITCHBOARD_JWT_LEEWAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,

    /// Channel patterns a token without a `subscribe` claim may subscribe to
    /// (comma-separated). Defaults to none.
    #[arg(
        long,
        env = "SWITCHBOARD_TOKEN_DEFAULT_SUBSCRIBE",
        value_delimiter = ','
    )]
    pub token_default_subscribe: Vec<String>,

    /// Channel patterns a token without a `publish` claim may publish on (comma-separated).
    /// Defaults to none.
    #[arg(long, env = "SWITCHBOARD_TOKEN_DEFAULT_PUBLISH", value_delimiter = ',')]
    pub token_default_publish: Vec<String>,

    /// Let a token without a `direct` claim send direct messages. Off by default.
    #[arg(long, env = "SWITCHBOARD_TOKEN_DEFAULT_DIRECT")]
    pub token_default_direct: bool,

    /// With token checking: let connections without a token in, limited to the anonymous
    /// grants below. Without it they must authenticate within --auth-timeout.
    #[arg(long, env = "SWITCHBOARD_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,

    /// Channel patterns anonymous connections may subscribe to (comma-separated; `*` all,
    /// `room:*` a prefix).
    #[arg(
        long,
        env = "SWITCHBOARD_ANONYMOUS_SUBSCRIBE",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub anonymous_subscribe: Vec<String>,

    /// Channel patterns anonymous connections may publish on (comma-separated). Defaults to
    /// none.
    #[arg(long, env = "SWITCHBOARD_ANONYMOUS_PUBLISH", value_delimiter = ',')]
    pub anonymous_publish: Vec<String>,

    /// With token checking: let anonymous connections send direct messages. Off by default.
    /// (Without token checking, anonymous connections may do everything.)
    #[arg(long, env = "SWITCHBOARD_ANONYMOUS_DIRECT")]
    pub anonymous_direct: bool,

    /// A connection that needs a token and has not sent a valid one within this time is
    /// closed with 4001. A program sends `hello` one round trip after `welcome` and the
    /// web client puts its token on the URL, so 5 s is plenty; while a connection waits it
    /// holds a pending-auth slot (see --max-pending-auth). To type a token by hand
    /// (wscat), pass a longer one.
    #[arg(long, env = "SWITCHBOARD_AUTH_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub auth_timeout: Duration,

    /// API key for `POST /api/publish` (sent as `Authorization: Bearer <key>`). When unset,
    /// the endpoint answers 404.
    #[arg(long, env = "SWITCHBOARD_API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,

    /// Origins allowed to open the WebSocket (comma-separated, e.g.
    /// `https://app.example.com`; `*` allows any). The server's own origin is always
    /// allowed, and so are requests without an Origin header (non-browser clients).
    #[arg(long, env = "SWITCHBOARD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Development mode: also allow the `trunk serve` origins (http://127.0.0.1:8080,
    /// http://localhost:8080), for a server behind `trunk serve`'s proxy. Never in
    /// production: any page served on those origins could then connect.
    #[arg(long, env = "SWITCHBOARD_DEV")]
    pub dev: bool,

    /// Proxies whose `X-Forwarded-For` is believed (comma-separated addresses or CIDR
    /// networks, e.g. `10.0.0.0/8,::1`). A connection from one of them is counted and
    /// logged under the forwarded client address: the header's entries are read right to
    /// left, skipping trusted ones. From anyone else the header is ignored. Defaults to
    /// none.
    #[arg(long, env = "SWITCHBOARD_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<ProxyNet>,

    /// Most simultaneous connections; more are closed with 4113 (server full).
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Most simultaneous connections from one client address (an IPv6 address counts
    /// with its whole /64); more are closed with 4113.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_CONNECTIONS_PER_IP",
        default_value_t = 1_000
    )]
    pub max_connections_per_ip: usize,

    /// Most connections still waiting for a token (the server requires one and none came
    /// in `?token=`); more are closed with 4113. A connection stops waiting when a `hello`
    /// authenticates it.
    #[arg(long, env = "SWITCHBOARD_MAX_PENDING_AUTH", default_value_t = 1_000)]
    pub max_pending_auth: usize,

    /// Most connections waiting for a token from one client address (IPv6: one /64);
    /// more are closed with 4113.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_PENDING_AUTH_PER_IP",
        default_value_t = 100
    )]
    pub max_pending_auth_per_ip: usize,

    /// WebSocket read buffer per connection, in bytes, allocated whole when the connection
    /// opens. tungstenite's default (128 KiB) costs ~134 KiB per idle connection; 512
    /// bytes keep an idle subscribed connection under 4 KiB in all. A bigger frame still
    /// arrives in one read: the buffer grows to the frame's length.
    #[arg(long, env = "SWITCHBOARD_READ_BUFFER_BYTES", default_value_t = 512)]
    pub read_buffer_bytes: usize,

    /// permessage-deflate (RFC 7692): compress messages for clients that offer it (every
    /// browser does). `false` declines every offer.
    #[arg(long, env = "SWITCHBOARD_DEFLATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub deflate: bool,

    /// Messages shorter than this many bytes are sent uncompressed (compressing them
    /// costs CPU and saves little).
    #[arg(long, env = "SWITCHBOARD_DEFLATE_THRESHOLD", default_value_t = 256)]
    pub deflate_threshold: usize,

    /// zlib compression level, 0 (none) to 9 (smallest, slowest).
    #[arg(long, env = "SWITCHBOARD_DEFLATE_LEVEL", default_value_t = 6)]
    pub deflate_level: u32,

    /// Largest LZ77 window the server compresses with, 9–15 bits (a client may ask for
    /// less with `server_max_window_bits`).
    #[arg(long, env = "SWITCHBOARD_DEFLATE_WINDOW_BITS", default_value_t = 15)]
    pub deflate_window_bits: u8,

    /// Keep each connection's compressor between messages (`server_no_context_takeover`
    /// is then not sent unless the client asks): smaller messages, but ~256 KiB per
    /// compressing connection, and a broadcast is compressed per connection instead of
    /// once. Off by default.
    #[arg(long, env = "SWITCHBOARD_DEFLATE_SERVER_CONTEXT_TAKEOVER")]
    pub deflate_server_context_takeover: bool,

    /// Let clients keep their compressor between messages (`client_no_context_takeover`
    /// is then not sent unless the client offers it): the server keeps an inflater per
    /// such connection (~40 KiB). Off by default.
    #[arg(long, env = "SWITCHBOARD_DEFLATE_CLIENT_CONTEXT_TAKEOVER")]
    pub deflate_client_context_takeover: bool,

    /// With --deflate-client-context-takeover: the window clients that offer
    /// `client_max_window_bits` are asked to stay within, 8–15 bits.
    #[arg(
        long,
        env = "SWITCHBOARD_DEFLATE_CLIENT_WINDOW_BITS",
        default_value_t = 15
    )]
    pub deflate_client_window_bits: u8,

    /// Publish a demo price ticker on channel `ticker:demo` at this interval (e.g. `100ms`).
    /// Off by default.
    #[arg(long, env = "SWITCHBOARD_DEMO_TICKER", value_parser = humantime::parse_duration)]
    pub demo_ticker: Option<Duration>,

    /// Serve a raw WebSocket echo at `/echo` (no protocol, large limits): only for the
    /// Autobahn conformance suite (`scripts/autobahn.sh`). Off by default.
    #[arg(long, env = "SWITCHBOARD_ECHO_ENDPOINT")]
    pub echo_endpoint: bool,

    /// Log format.
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// A secret option value: printed as `<redacted>` by `Debug`, so logging the config
/// never leaks it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Where channel streams are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HistoryStore {
    /// The embedded store on disk (redb), kept across restarts.
    Disk,
    /// In this process's memory, lost on restart.
    Memory,
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
    /// The permessage-deflate settings.
    pub fn deflate_options(&self) -> crate::deflate::DeflateOptions {
        crate::deflate::DeflateOptions {
            enabled: self.deflate,
            threshold: self.deflate_threshold,
            level: self.deflate_level.min(9),
            window_bits: self.deflate_window_bits.clamp(9, 15),
            server_context_takeover: self.deflate_server_context_takeover,
            client_context_takeover: self.deflate_client_context_takeover,
            client_window_bits: self.deflate_client_window_bits.clamp(8, 15),
        }
    }

    /// The limits announced to clients in `welcome`.
    pub fn limits(&self) -> Limits {
        Limits {
            max_frame_bytes: self.max_frame_bytes,
            max_batch: self.max_batch,
            max_subscriptions: self.max_subscriptions,
            rate_per_sec: self.rate_per_sec,
            rate_burst: self.rate_burst,
            ..Limits::default()
        }
    }

    /// Each connection's outbound queue bounds.
    pub fn queue_bounds(&self) -> crate::queue::Bounds {
        crate::queue::Bounds {
            frames: self.queue_capacity,
            bytes: self.queue_bytes,
            direct_bytes: self.direct_queue_bytes,
        }
    }

    /// How long the in-memory streams keep messages.
    pub fn retention(&self) -> crate::history::Retention {
        crate::history::Retention {
            max_messages: self.history_size,
            max_age_ms: self.history_ttl.as_millis() as u64,
            dedupe_window: self.dedupe_window,
            max_bytes: self.history_memory,
            max_disk_bytes: self.history_disk,
            rules: self.retention.clone(),
        }
    }

    /// How much one recovery, rewind or `history` page may send: `--recovery-limit`
    /// messages, and no more bytes than one connection's queue holds.
    pub fn recovery_read_limit(&self) -> crate::history::ReadLimit {
        crate::history::ReadLimit {
            messages: self.recovery_limit,
            bytes: self.queue_bytes,
        }
    }

    /// Options from the server's flags, as for the binary (`["--history", "memory"]`);
    /// unset options take their `SWITCHBOARD_*` variable, then their default. For an app
    /// that embeds the server ([`crate::Switchboard`]).
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser;
        let argv = std::iter::once(std::ffi::OsString::from("switchboard-server"))
            .chain(args.into_iter().map(Into::into));
        Self::try_parse_from(argv)
    }

    /// The channel streams these options ask for: the embedded store in --data-dir, or
    /// memory.
    pub fn open_history(&self) -> Result<std::sync::Arc<dyn crate::history::Store>, String> {
        Ok(match self.history {
            HistoryStore::Memory => {
                std::sync::Arc::new(crate::history::MemoryHistory::new(self.retention()))
            }
            HistoryStore::Disk => {
                let path = self.data_dir.join("history.redb");
                let store =
                    crate::history::DiskHistory::open(&path, self.durability, self.retention())
                        .map_err(|e| format!("opening {}: {e}", path.display()))?;
                std::sync::Arc::new(store)
            }
        })
    }

    /// The broker these options ask for: Redis with --redis-url, else this process with
    /// the configured history store. Must be called inside a tokio runtime for Redis.
    pub fn open_broker(&self) -> Result<std::sync::Arc<dyn crate::broker::Broker>, String> {
        Ok(match &self.redis_url {
            Some(url) => {
                let mut opts = crate::broker::RedisOptions::new(url);
                opts.prefix = self.redis_prefix.clone();
                opts.retention = self.retention();
                opts.presence_ttl = self.presence_ttl;
                std::sync::Arc::new(crate::broker::RedisBroker::new(opts)?)
            }
            None => std::sync::Arc::new(crate::broker::MemoryBroker::with_history(
                self.open_history()?,
            )),
        })
    }

    /// Whether the server checks tokens: a secret, a public key or a key set is configured.
    pub fn checks_tokens(&self) -> bool {
        self.jwt_secret.is_some() || self.jwt_public_key.is_some() || self.jwt_jwks.is_some()
    }

    /// Rejects values that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_auth()?;
        if self.presence_ttl < Duration::from_secs(1) {
            return Err("--presence-ttl must be at least 1s".into());
        }
        if self.max_presence_members == 0 {
            return Err("--max-presence-members must be at least 1".into());
        }
        if !(9..=15).contains(&self.deflate_window_bits) {
            return Err("--deflate-window-bits must be 9 to 15".into());
        }
        if !(8..=15).contains(&self.deflate_client_window_bits) {
            return Err("--deflate-client-window-bits must be 8 to 15".into());
        }
        if self.deflate_level > 9 {
            return Err("--deflate-level must be 0 to 9".into());
        }
        if self.tls_watch.is_zero() {
            return Err("--tls-watch must be more than 0s".into());
        }
        if self.queue_capacity == 0 {
            return Err("--queue-capacity must be at least 1".into());
        }
        let frame = self.max_frame_bytes as usize;
        if self.queue_bytes < 2 * frame {
            return Err("--queue-bytes must be at least twice --max-frame-bytes".into());
        }
        if self.direct_queue_bytes < frame + crate::queue::FRAME_OVERHEAD {
            return Err("--direct-queue-bytes must be at least --max-frame-bytes + 64".into());
        }
        if self.max_frame_bytes < 1024 {
            return Err("--max-frame-bytes must be at least 1024".into());
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return Err("--max-connections and --max-connections-per-ip must be at least 1".into());
        }
        if self.max_pending_auth == 0 || self.max_pending_auth_per_ip == 0 {
            return Err(
                "--max-pending-auth and --max-pending-auth-per-ip must be at least 1".into(),
            );
        }
        if self.read_buffer_bytes < 256 {
            return Err("--read-buffer-bytes must be at least 256".into());
        }
        if self.demo_ticker.is_some_and(|d| d.is_zero()) {
            return Err("--demo-ticker must be a non-zero interval".into());
        }
        if self.rate_per_sec == 0 || self.rate_burst == 0 {
            return Err("--rate-per-sec and --rate-burst must be at least 1".into());
        }
        if self.heartbeat.is_zero() || self.idle_timeout <= self.heartbeat {
            return Err("--idle-timeout must be longer than a non-zero --heartbeat".into());
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), String> {
        if self
            .jwt_secret
            .as_ref()
            .is_some_and(|s| s.expose().is_empty())
        {
            return Err("--jwt-secret must not be empty".into());
        }
        match (&self.jwt_public_key, self.jwt_algorithm) {
            (Some(key), alg) => {
                key.algorithm(alg)?;
            }
            (None, Some(_)) => {
                return Err("--jwt-algorithm needs --jwt-public-key".into());
            }
            (None, None) => {}
        }
        if self.jwt_leeway.subsec_nanos() != 0 || self.jwt_leeway > Duration::from_secs(3600) {
            return Err("--jwt-leeway must be whole seconds, at most 1h".into());
        }
        if self.jwt_audience.iter().any(String::is_empty) {
            return Err("--jwt-audience has an empty entry".into());
        }
        if self.jwt_issuer.iter().any(String::is_empty) {
            return Err("--jwt-issuer has an empty entry".into());
        }
        Ok(())
    }
}
