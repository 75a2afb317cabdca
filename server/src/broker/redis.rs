//! The Redis broker: several server nodes share channels, streams, presence and `direct`
//! messages through one Redis (7 or later; RESP3). `--redis-url` selects it.
//!
//! Layout in Redis (prefix `sb` by default; `{ch}` is a cluster hash tag, so one
//! channel's keys live in one slot):
//! - `sb:{ch}:m` meta hash: `e` the epoch, `s` the last offset;
//! - `sb:{ch}:s` the stream: entry id `0-<offset>`, fields `t` (ms) and `d` (the message
//!   frame without its position), capped with `MAXLEN`;
//! - `sb:{ch}:d` / `sb:{ch}:o` the idempotent-publish window: key → offset, and the keys
//!   by offset (the oldest go first);
//! - `sb:{ch}:p` / `sb:{ch}:x` presence: connection → `user\ninfo`, and connection →
//!   lease expiry (ms);
//! - `sb:nodes` live nodes by lease expiry, `sb:chans:<node>` a node's channels → local
//!   subscriber count;
//! - pub/sub channels `sb:c:<ch>` (a channel's deliveries) and `sb:n:<node>` (a node's
//!   `direct` messages and their answers).
//!
//! A stored publish is one Lua script ([`PUBLISH`]): dedupe check, next offset, `XADD`,
//! window upkeep, `PUBLISH` with the offset and epoch in front of the frame. So numbering,
//! storing and fan-out are one atomic step, and a message is delivered only once stored.
//!
//! Pub/sub is at most once: a node that loses its Redis connection misses what was
//! published meanwhile. The connection is a `redis` 1.x [`ConnectionManager`] (it
//! reconnects and resubscribes by itself, before any other command runs on the new
//! connection); its pushes reach [`Shared::on_push`] through the manager's task (redis-rs
//! forwards them over an unbounded channel; the handler never waits, so it drains at the
//! speed of fan-out). Every channel this node subscribes to
//! tracks the last offset it forwarded. A delivery past a gap, or a lost connection, puts
//! the channel in *filling*: live stored deliveries are held back (only their highest
//! offset is remembered) while a task reads the missing messages from the stream and
//! forwards them in order, until it has caught up with everything seen. So the hub gets
//! each stored message once, in offset order, after any outage the stream covers. What
//! the stream no longer has (trimmed, or Redis lost its data: a new epoch) the clients
//! learn from the offsets, as with any gap.
//!
//! Presence entries are leases: each node rewrites its own every `presence_ttl / 3`;
//! every read and every node's sweep drops the expired ones, and the sweep announces the
//! users that left with them. The members of a node that died are gone within one lease.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{PushInfo, PushKind, Script, Value};
use switchboard_protocol::{
    Channel, ClientId, Member, Payload, PresenceAction, ServerFrame, StreamPosition,
};
use tokio::sync::oneshot;

use super::{
    Broker, BrokerError, BrokerHandler, ChannelCounts, Delivery, DirectError, PresenceChange,
    Publication, Published,
};
use crate::clock::{now_ms, random_id};
use crate::frame::{Encoded, message_body, with_position};
use crate::history::{History, HistoryError, Page, ReadLimit, Retention, Since, Unrecoverable};

/// How a node reaches Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://host:port/db` (RESP3 is switched on here).
    pub url: String,
    /// Prefix of every key and pub/sub channel, so several deployments can share a Redis.
    pub prefix: String,
    /// How long streams keep their messages (count per channel, age, dedupe window).
    pub retention: Retention,
    /// Presence lease: a member whose node stops refreshing it is dropped after this.
    pub presence_ttl: Duration,
    /// How long a `direct` to a connection on another node waits for that node's answer.
    pub direct_timeout: Duration,
}

impl RedisOptions {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "sb".into(),
            retention: Retention::default(),
            presence_ttl: Duration::from_secs(60),
            direct_timeout: Duration::from_secs(2),
        }
    }
}

/// A node on Redis.
pub struct RedisBroker {
    shared: Arc<Shared>,
    history: RedisHistory,
}

/// The streams, read from Redis.
struct RedisHistory(Arc<Shared>);

/// Most messages one fill read takes.
const FILL_PAGE: usize = 512;
/// Most bytes of messages one fill read takes (Redis's reply, then the frames made from it).
pub const FILL_BYTES: usize = 4 << 20;
/// Fills reading at once, however many channels need one (after an outage, all of them):
/// with [`FILL_BYTES`], what fills can hold is bounded.
pub const FILLS_AT_ONCE: usize = 4;
/// How long a fill waits before retrying while Redis is unreachable.
const RETRY: Duration = Duration::from_millis(250);
/// How often the node checks Redis (and notices it is back), and writes its channel
/// counts when they changed.
const HEALTH_EVERY: Duration = Duration::from_millis(500);

struct Shared {
    conn: ConnectionManager,
    opts: RedisOptions,
    node: String,
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    /// Channels this node is subscribed to.
    channels: Mutex<HashMap<Channel, Live>>,
    /// This node's presence entries: channel → connection → (user, info), rewritten every
    /// lease period.
    joined: Mutex<HashMap<Channel, Joined>>,
    /// `direct` messages sent to other nodes and waiting for their answer.
    directs: Mutex<HashMap<u64, oneshot::Sender<Result<(), DirectError>>>>,
    /// Sends to a user's connections on every node, waiting for the nodes' counts.
    user_sends: Mutex<HashMap<u64, tokio::sync::mpsc::Sender<usize>>>,
    next_direct: AtomicU64,
    up: AtomicBool,
    /// [`FILLS_AT_ONCE`] permits.
    fills: tokio::sync::Semaphore,
    /// Test hook: a fill passes it between its read and forwarding what it read.
    fill_gate: tokio::sync::RwLock<()>,
    /// Fills waiting at the gate.
    fills_waiting: AtomicU64,
    stats: Stats,
    runtime: tokio::runtime::Handle,
}

#[derive(Default)]
struct Stats {
    outages: AtomicU64,
    fills: AtomicU64,
    filled: AtomicU64,
    unfillable: AtomicU64,
    ghosts: AtomicU64,
}

/// A channel's presence entries on this node: connection → (user, info).
type Joined = HashMap<String, (String, Payload)>;

/// What a fill does next.
enum Step {
    Done,
    Again,
}

/// One subscribed channel's forwarding state.
#[derive(Default)]
struct Live {
    /// The last stored message forwarded (or the position read at subscribe).
    last: Option<StreamPosition>,
    /// A fill is running: stored deliveries are held back.
    filling: bool,
    /// The highest stored offset held back while filling.
    held: Option<StreamPosition>,
    /// Connections lost since the channel was subscribed: a fill whose read started
    /// before the last loss reads again, since what was published during the loss may
    /// not be in it.
    outages: u64,
}

impl RedisBroker {
    /// A node on the Redis at `opts.url`. Connects lazily: a node whose Redis is down
    /// starts anyway, serves its local clients, and says so at `/healthz`. Must be called
    /// inside a tokio runtime.
    pub fn new(opts: RedisOptions) -> Result<Self, String> {
        let url = if opts.url.contains("protocol=") {
            opts.url.clone()
        } else if opts.url.contains('?') {
            format!("{}&protocol=resp3", opts.url)
        } else {
            format!("{}?protocol=resp3", opts.url)
        };
        let client = redis::Client::open(url.as_str()).map_err(|e| format!("redis url: {e}"))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the Redis broker needs a tokio runtime".to_owned())?;
        // The push handler needs the node, and the node holds the connection: the handler
        // finds the node through a slot filled once both exist.
        let slot: Arc<OnceLock<Weak<Shared>>> = Arc::default();
        let pushes = slot.clone();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_max_delay(Duration::from_secs(1))
            .set_automatic_resubscription()
            .set_push_sender(move |push: PushInfo| {
                if let Some(shared) = pushes.get().and_then(Weak::upgrade) {
                    shared.on_push(push);
                }
                Ok::<(), redis::aio::SendError>(())
            });
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("redis: {e}"))?;
        let shared = Arc::new(Shared {
            conn,
            node: random_id()[..10].replace(['-', '_'], "x"),
            opts,
            handler: OnceLock::new(),
            channels: Mutex::default(),
            joined: Mutex::default(),
            directs: Mutex::default(),
            user_sends: Mutex::default(),
            next_direct: AtomicU64::new(1),
            // Optimistic until the first check says otherwise (the connection is lazy).
            up: AtomicBool::new(true),
            fills: tokio::sync::Semaphore::new(FILLS_AT_ONCE),
            fill_gate: tokio::sync::RwLock::new(()),
            fills_waiting: AtomicU64::new(0),
            stats: Stats::default(),
            runtime,
        });
        let _ = slot.set(Arc::downgrade(&shared));
        Ok(Self {
            history: RedisHistory(shared.clone()),
            shared,
        })
    }
}

/// Forgets a request waiting for other nodes' answers however its future ends (answered,
/// timed out, or dropped by a caller that went away).
struct Waiting<'a, T> {
    map: &'a Mutex<HashMap<u64, T>>,
    req: u64,
}

impl<T> Drop for Waiting<'_, T> {
    fn drop(&mut self) {
        lock(self.map).remove(&self.req);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn broker_err(e: redis::RedisError) -> BrokerError {
    BrokerError(format!("redis: {e}"))
}

fn history_err(e: redis::RedisError) -> HistoryError {
    HistoryError(format!("redis: {e}"))
}

/// A fresh epoch: 8 letters and digits.
fn new_epoch() -> String {
    random_id()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect()
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn bytes(v: &Value) -> Option<Bytes> {
    match v {
        Value::BulkString(b) => Some(Bytes::copy_from_slice(b)),
        Value::SimpleString(s) => Some(Bytes::copy_from_slice(s.as_bytes())),
        _ => None,
    }
}

fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other)?.parse().ok(),
    }
}

fn array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        Value::Nil => Vec::new(),
        other => vec![other],
    }
}

fn malformed(what: &str) -> BrokerError {
    BrokerError(format!("redis: unexpected reply to {what}"))
}

/// Presence info as stored (JSON text), or null.
fn payload(v: Option<&Value>) -> Payload {
    v.and_then(text)
        .and_then(|t| Payload::from_json(t).ok())
        .unwrap_or_else(Payload::null)
}

/// A join's or leave's reply, `{announce, connections, count, …}`, as the change it made
/// to `user`'s membership.
fn change(
    reply: &[Value],
    user: &str,
    info: Payload,
    what: &str,
) -> Result<PresenceChange, BrokerError> {
    let (Some(announce), Some(connections), Some(count)) = (
        reply.first().and_then(number),
        reply.get(1).and_then(number),
        reply.get(2).and_then(number),
    ) else {
        return Err(malformed(what));
    };
    Ok(PresenceChange {
        member: Member {
            user_id: user.to_owned(),
            info,
            connections: connections as u32,
        },
        count: count as u32,
        announce: announce == 1,
    })
}

/// Appends a stored message: dedupe, number, store, trim, fan out, in one step.
/// KEYS: meta, stream, dedupe hash, dedupe order. ARGV: pub/sub channel, body, epoch if
/// new, max messages, stream ttl ms, meta ttl ms, dedupe key or '', dedupe window, except
/// or '', now ms. Returns {offset, epoch, duplicate}.
const PUBLISH: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[3]
  redis.call('HSET', KEYS[1], 'e', e, 's', 0)
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
end
if ARGV[7] ~= '' then
  local seen = redis.call('HGET', KEYS[3], ARGV[7])
  if seen then return {tonumber(seen), e, 1} end
end
local offset = redis.call('HINCRBY', KEYS[1], 's', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], '0-' .. offset, 't', ARGV[10], 'd', ARGV[2], 'x', ARGV[9])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[7], offset)
  redis.call('ZADD', KEYS[4], offset, ARGV[7])
  local n = redis.call('ZCARD', KEYS[4])
  local window = tonumber(ARGV[8])
  if n > window then
    local old = redis.call('ZPOPMIN', KEYS[4], n - window)
    for i = 1, #old, 2 do redis.call('HDEL', KEYS[3], old[i]) end
  end
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
  redis.call('PEXPIRE', KEYS[4], ARGV[6])
end
redis.call('PUBLISH', ARGV[1], 'm' .. offset .. ' ' .. e .. ' ' .. ARGV[9] .. '\n' .. ARGV[2])
return {offset, e, 0}
";

/// The stream's position, creating its meta (a new epoch) if missing.
/// KEYS: meta, stream. ARGV: epoch if new, meta ttl ms. Returns {epoch, offset}.
const POSITION: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', e, 's', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('DEL', KEYS[2])
end
return {e, tonumber(redis.call('HGET', KEYS[1], 's'))}
";

/// Messages after an offset. KEYS: meta, stream. ARGV: since offset, since epoch, most
/// messages, oldest kept ms, most bytes. Returns {epoch or '', top, status, offset, body,
/// except, offset, body, except…}; status is ok, epoch or trimmed.
const SINCE: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then return {'', 0, 'epoch'} end
local top = tonumber(redis.call('HGET', KEYS[1], 's'))
local since = tonumber(ARGV[1])
if ARGV[2] ~= e or since > top then return {e, top, 'epoch'} end
local out = {e, top, 'ok'}
if since == top or tonumber(ARGV[3]) == 0 then return out end
local msgs = redis.call('XRANGE', KEYS[2], '0-' .. (since + 1), '+', 'COUNT', ARGV[3])
if #msgs == 0 or msgs[1][1] ~= '0-' .. (since + 1) then out[3] = 'trimmed' return out end
local bytes = 0
for i, m in ipairs(msgs) do
  local f = m[2]
  if i == 1 and tonumber(f[2]) < tonumber(ARGV[4]) then out[3] = 'trimmed' return out end
  bytes = bytes + #f[4]
  -- The first one always: a fill must make progress whatever the message's size (a
  -- recovery's own byte limit is applied after the read).
  if bytes > tonumber(ARGV[5]) and i > 1 then break end
  out[#out + 1] = tonumber(string.sub(m[1], 3))
  out[#out + 1] = f[4]
  out[#out + 1] = f[6] or ''
end
return out
";

/// The newest messages. KEYS: meta, stream. ARGV: most messages, oldest kept ms, most
/// bytes. Returns {epoch or '', top, offset, body, except…} newest first.
const LATEST: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then return {'', 0} end
local out = {e, tonumber(redis.call('HGET', KEYS[1], 's'))}
if tonumber(ARGV[1]) == 0 then return out end
local msgs = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[1])
local bytes = 0
for _, m in ipairs(msgs) do
  local f = m[2]
  if tonumber(f[2]) < tonumber(ARGV[2]) then break end
  bytes = bytes + #f[4]
  if bytes > tonumber(ARGV[3]) then break end
  out[#out + 1] = tonumber(string.sub(m[1], 3))
  out[#out + 1] = f[4]
  out[#out + 1] = f[6] or ''
end
return out
";

/// Shared by the presence scripts: drops expired leases, then groups the entries by user.
const PRESENCE_COMMON: &str = r"
local function prune(now)
  local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
  local gone = {}
  for _, c in ipairs(dead) do
    local v = redis.call('HGET', KEYS[1], c)
    if v then gone[#gone + 1] = v end
    redis.call('HDEL', KEYS[1], c)
  end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end
  return gone
end
local function entry(user, info)
  return #user .. ':' .. user .. info
end
local function split(v)
  local i = string.find(v, ':', 1, true)
  local len = tonumber(string.sub(v, 1, i - 1))
  return string.sub(v, i + 1, i + len), string.sub(v, i + len + 1)
end
local function users(now)
  local alive = {}
  for _, c in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')) do
    alive[c] = true
  end
  local all = redis.call('HGETALL', KEYS[1])
  local by, n = {}, 0
  for i = 1, #all, 2 do
    if alive[all[i]] then
      local u, info = split(all[i + 1])
      if not by[u] then by[u] = {0, info}; n = n + 1 end
      by[u][1] = by[u][1] + 1
    end
  end
  return by, n
end
";

/// KEYS: presence hash, leases. ARGV: user, conn, info, max members, now, expiry, ttl
/// ms. Returns nil when full, else {announce, connections, count}. Expired leases are not
/// counted, and left for the sweep to remove and announce.
const JOIN: &str = r"
local by, n = users(ARGV[5])
local mine = by[ARGV[1]]
if not mine and n >= tonumber(ARGV[4]) then return false end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local u = split(all[i + 1])
  if u == ARGV[1] and all[i] ~= ARGV[2] then
    redis.call('HSET', KEYS[1], all[i], entry(u, ARGV[3]))
  end
end
local before = redis.call('ZSCORE', KEYS[2], ARGV[2])
local counted = before and tonumber(before) > tonumber(ARGV[5])
redis.call('HSET', KEYS[1], ARGV[2], entry(ARGV[1], ARGV[3]))
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
local conns = (mine and mine[1] or 0) + (counted and 0 or 1)
if not mine then n = n + 1 end
return {mine and 0 or 1, conns, n}
";

/// KEYS: presence hash, leases. ARGV: user, conn, now. Returns nil when not present, else
/// {announce, connections, count, info}.
const LEAVE: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[2])
if not v then return false end
local u, info = split(v)
if u ~= ARGV[1] then return false end
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
local by, n = users(ARGV[3])
local mine = by[ARGV[1]]
return {mine and 0 or 1, mine and mine[1] or 0, n, info}
";

/// KEYS: presence hash, leases. ARGV: now, '1' to sweep (drop expired leases). Returns
/// {n, user, info…} first: the users whose last lease the sweep dropped; then {user,
/// connections, info…} for the live members.
const MEMBERS: &str = r"
local gone = {}
if ARGV[2] == '1' then gone = prune(ARGV[1]) end
local by, n = users(ARGV[1])
local out = {0}
for _, v in ipairs(gone) do
  local u, info = split(v)
  if not by[u] then
    out[1] = out[1] + 1
    table.insert(out, 2, info)
    table.insert(out, 2, u)
    by[u] = {0, info}
  end
end
for u, e in pairs(by) do
  if e[1] > 0 then
    out[#out + 1] = u
    out[#out + 1] = e[1]
    out[#out + 1] = e[2]
  end
end
return out
";

/// Every other live node's channel counts. KEYS: nodes. ARGV: now, this node, the
/// prefix of the per-node hashes. Returns {channel, count…}.
const CHANNELS: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local out = {}
for _, n in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if n ~= ARGV[2] then
    local h = redis.call('HGETALL', ARGV[3] .. n)
    for i = 1, #h do out[#out + 1] = h[i] end
  end
end
return out
";

struct Scripts {
    publish: Script,
    position: Script,
    since: Script,
    latest: Script,
    join: Script,
    leave: Script,
    members: Script,
    channels: Script,
}

static SCRIPTS: std::sync::LazyLock<Scripts> = std::sync::LazyLock::new(|| Scripts {
    publish: Script::new(PUBLISH),
    position: Script::new(POSITION),
    since: Script::new(SINCE),
    latest: Script::new(LATEST),
    join: Script::new(&format!("{PRESENCE_COMMON}{JOIN}")),
    leave: Script::new(&format!("{PRESENCE_COMMON}{LEAVE}")),
    members: Script::new(&format!("{PRESENCE_COMMON}{MEMBERS}")),
    channels: Script::new(CHANNELS),
});

impl Shared {
    fn key(&self, channel: &Channel, kind: &str) -> String {
        format!("{}:{{{}}}:{kind}", self.opts.prefix, channel.0)
    }

    fn pubsub(&self, channel: &Channel) -> String {
        format!("{}:c:{}", self.opts.prefix, channel.0)
    }

    fn node_channel(&self, node: &str) -> String {
        format!("{}:n:{node}", self.opts.prefix)
    }

    /// The pub/sub channel every node listens on (sends to a user's connections).
    fn all_channel(&self) -> String {
        format!("{}:all", self.opts.prefix)
    }

    /// `channel`'s age limit (its `--retention` rule, else `--history-ttl`).
    fn max_age_ms(&self, channel: &Channel) -> u64 {
        self.opts.retention.for_channel(&channel.0).1
    }

    /// How long a channel's meta (its epoch and offset) outlives its last publish.
    fn meta_ttl_ms(&self, channel: &Channel) -> u64 {
        self.max_age_ms(channel)
            .clamp(24 * 3600 * 1000, u64::MAX / 4)
    }

    fn stream_ttl_ms(&self, channel: &Channel) -> u64 {
        self.max_age_ms(channel).clamp(1000, u64::MAX / 4)
    }

    fn oldest_kept_ms(&self, channel: &Channel) -> u64 {
        now_ms().saturating_sub(self.max_age_ms(channel))
    }

    /// Fails at once while Redis is known to be unreachable, instead of queueing behind
    /// the reconnection: the client is told `unavailable` and retries with backoff.
    fn check_up(&self) -> Result<(), BrokerError> {
        if self.up.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(BrokerError("redis unreachable".into()))
        }
    }

    fn handler(&self) -> Option<&Arc<dyn BrokerHandler>> {
        self.handler.get()
    }

    /// A push from the connection: pub/sub messages and the connection's loss. Runs on
    /// the connection's task, so it never waits: deliveries go to bounded queues.
    fn on_push(self: &Arc<Self>, push: PushInfo) {
        match push.kind {
            PushKind::Disconnection => self.went_down(),
            PushKind::Message => {
                let mut data = push.data.into_iter();
                let (Some(name), Some(payload)) = (data.next(), data.next()) else {
                    return;
                };
                let (Some(name), Some(payload)) = (text(&name), bytes(&payload)) else {
                    return;
                };
                if name == self.node_channel(&self.node) || name == self.all_channel() {
                    self.on_node_message(&payload);
                } else if let Some(ch) = name.strip_prefix(&format!("{}:c:", self.opts.prefix)) {
                    self.on_channel_message(Channel::from(ch), payload);
                }
            }
            _ => {}
        }
    }

    fn on_channel_message(self: &Arc<Self>, channel: Channel, payload: Bytes) {
        let Some(nl) = payload.iter().position(|b| *b == b'\n') else {
            return;
        };
        let header = String::from_utf8_lossy(&payload[..nl]).into_owned();
        let body = payload.slice(nl + 1..);
        let Some(handler) = self.handler() else {
            return;
        };
        let except = |s: &str| (!s.is_empty()).then(|| ClientId(s.to_owned()));
        match header.as_bytes().first() {
            Some(b'm') => {
                let mut parts = header[1..].splitn(3, ' ');
                let (Some(offset), Some(epoch), Some(skip)) = (
                    parts.next().and_then(|o| o.parse().ok()),
                    parts.next(),
                    parts.next(),
                ) else {
                    return;
                };
                let position = StreamPosition {
                    offset,
                    epoch: epoch.to_owned(),
                };
                let delivery = Delivery {
                    frame: with_position(&body, &position),
                    position: Some(position),
                    droppable: false,
                    except: except(skip),
                };
                self.on_stored(&channel, delivery);
            }
            Some(b'e') | Some(b'b') => {
                let Some(frame) = Encoded::from_bytes(body) else {
                    return;
                };
                let delivery = Delivery {
                    frame,
                    position: None,
                    droppable: header.starts_with('e'),
                    except: except(&header[1..]),
                };
                if lock(&self.channels).contains_key(&channel) {
                    handler.deliver(&channel, &delivery);
                }
            }
            _ => {}
        }
    }

    /// A live stored message: forwarded if it is the next one; held back while a fill
    /// runs; a gap starts a fill.
    fn on_stored(self: &Arc<Self>, channel: &Channel, delivery: Delivery) {
        let Some(handler) = self.handler() else {
            return;
        };
        let pos = delivery.position.clone().expect("stored");
        let mut channels = lock(&self.channels);
        let Some(live) = channels.get_mut(channel) else {
            return;
        };
        if live.filling {
            if live
                .held
                .as_ref()
                .is_none_or(|h| h.epoch != pos.epoch || h.offset < pos.offset)
            {
                live.held = Some(pos);
            }
            return;
        }
        match &live.last {
            Some(last) if last.epoch == pos.epoch && pos.offset <= last.offset => {}
            Some(last) if last.epoch != pos.epoch || pos.offset > last.offset + 1 => {
                live.filling = true;
                live.held = Some(pos);
                drop(channels);
                self.start_fill(channel.clone());
            }
            _ => {
                live.last = Some(pos);
                handler.deliver(channel, &delivery);
            }
        }
    }

    fn start_fill(self: &Arc<Self>, channel: Channel) {
        self.stats.fills.fetch_add(1, Ordering::Relaxed);
        let shared = self.clone();
        self.runtime
            .spawn(async move { shared.fill(channel).await });
    }

    /// Reads the channel's stream from the last forwarded offset and forwards what is
    /// there, until it has caught up with everything held back. Retries while Redis is
    /// unreachable; ends when the channel is unsubscribed.
    async fn fill(self: Arc<Self>, channel: Channel) {
        loop {
            let (last, outages) = match lock(&self.channels).get(&channel) {
                Some(live) => (live.last.clone(), live.outages),
                None => return,
            };
            let Ok(permit) = self.fills.acquire().await else {
                return;
            };
            let read = match &last {
                Some(last) => {
                    let limit = ReadLimit {
                        messages: FILL_PAGE,
                        bytes: FILL_BYTES,
                    };
                    self.read_since(&channel, last, limit).await
                }
                None => self.position(&channel).await.map(|position| Read {
                    position,
                    messages: Ok(Vec::new()),
                }),
            };
            let Ok(read) = read else {
                drop(permit);
                tokio::time::sleep(RETRY).await;
                continue;
            };
            self.fills_waiting.fetch_add(1, Ordering::AcqRel);
            drop(self.fill_gate.read().await);
            self.fills_waiting.fetch_sub(1, Ordering::AcqRel);
            match self.forward(&channel, read, outages) {
                Step::Done => return,
                Step::Again => {}
            }
        }
    }

    /// Forwards what a fill read, in order, skipping what was forwarded already; says
    /// whether the fill is done.
    fn forward(&self, channel: &Channel, read: Read, outages: u64) -> Step {
        let Some(handler) = self.handler() else {
            return Step::Done;
        };
        let mut channels = lock(&self.channels);
        let Some(live) = channels.get_mut(channel) else {
            return Step::Done;
        };
        let epoch = read.position.epoch.clone();
        match read.messages {
            Ok(messages) => {
                for m in messages {
                    if live
                        .last
                        .as_ref()
                        .is_some_and(|l| l.epoch == epoch && l.offset >= m.offset)
                    {
                        continue;
                    }
                    let position = StreamPosition {
                        offset: m.offset,
                        epoch: epoch.clone(),
                    };
                    live.last = Some(position.clone());
                    self.stats.filled.fetch_add(1, Ordering::Relaxed);
                    let delivery = Delivery {
                        frame: m.frame,
                        position: Some(position),
                        droppable: false,
                        except: m.except,
                    };
                    handler.deliver(channel, &delivery);
                }
                match &live.last {
                    None => live.last = Some(read.position),
                    Some(l) if l.epoch == epoch && l.offset < read.position.offset => {
                        return Step::Again;
                    }
                    Some(_) => {}
                }
            }
            Err(Unrecoverable::Epoch)
                if live
                    .last
                    .as_ref()
                    .is_some_and(|l| l.epoch != read.position.epoch) =>
            {
                // The stream has a new epoch (its meta expired, or Redis lost its data):
                // what it has is read from its start, delivered as the new epoch's.
                self.stats.unfillable.fetch_add(1, Ordering::Relaxed);
                live.last = Some(StreamPosition {
                    offset: 0,
                    epoch: read.position.epoch,
                });
                return Step::Again;
            }
            Err(_) => {
                // Gone from the stream: the clients see the gap in the offsets.
                self.stats.unfillable.fetch_add(1, Ordering::Relaxed);
                live.last = Some(read.position);
            }
        }
        if live.outages != outages {
            return Step::Again;
        }
        match (&live.held, &live.last) {
            (None, _) => {}
            (Some(h), Some(l)) if h.epoch == l.epoch && h.offset <= l.offset => {}
            // Held back from another epoch than the stream has now (Redis lost its data
            // again meanwhile): nothing to read them back from; the clients see the
            // epoch change.
            (Some(h), Some(l)) if h.epoch != l.epoch => {}
            _ => return Step::Again,
        }
        live.filling = false;
        live.held = None;
        Step::Done
    }

    /// The connection was lost: anything published meanwhile must be read back.
    fn went_down(self: &Arc<Self>) {
        if self.up.swap(false, Ordering::AcqRel) {
            self.stats.outages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "redis unreachable: serving local clients; publishes fail until it is back"
            );
        }
        let start: Vec<Channel> = {
            let mut channels = lock(&self.channels);
            channels
                .iter_mut()
                .filter_map(|(ch, live)| {
                    live.outages += 1;
                    // A fill already running sees the count change and reads again.
                    (!std::mem::replace(&mut live.filling, true)).then(|| ch.clone())
                })
                .collect()
        };
        for ch in start {
            self.start_fill(ch);
        }
    }

    /// Publishes `answer` on `node`'s channel, without waiting (called from the push
    /// handler, which never waits).
    fn answer(&self, node: &str, answer: String) {
        let to_node = self.node_channel(node);
        let mut conn = self.conn.clone();
        self.runtime.spawn(async move {
            let _: Result<(), _> = redis::cmd("PUBLISH")
                .arg(to_node)
                .arg(answer)
                .query_async(&mut conn)
                .await;
        });
    }

    fn on_node_message(self: &Arc<Self>, payload: &[u8]) {
        let Some(nl) = payload.iter().position(|b| *b == b'\n') else {
            return;
        };
        let header = String::from_utf8_lossy(&payload[..nl]).into_owned();
        let mut parts = header[1..].split(' ');
        match header.as_bytes().first() {
            Some(b'd') => {
                let (Some(req), Some(from), Some(to)) = (parts.next(), parts.next(), parts.next())
                else {
                    return;
                };
                let Some(frame) = Encoded::from_bytes(Bytes::copy_from_slice(&payload[nl + 1..]))
                else {
                    return;
                };
                let result = match self.handler() {
                    Some(h) => h.direct(&ClientId(to.to_owned()), &frame),
                    None => Err(DirectError::Gone),
                };
                let code = match result {
                    Ok(()) => "ok",
                    Err(DirectError::Busy) => "busy",
                    Err(_) => "gone",
                };
                self.answer(from, format!("a{req} {code}\n"));
            }
            Some(b'u') => {
                // `u<req> <from node> <user length>\n<user><frame>`: deliver to the user's
                // connections here and answer with how many took it. (The user id goes in
                // the body: it may hold any character.)
                let (Some(req), Some(from), Some(len)) = (
                    parts.next(),
                    parts.next(),
                    parts.next().and_then(|l| l.parse::<usize>().ok()),
                ) else {
                    return;
                };
                let body = &payload[nl + 1..];
                if from == self.node || body.len() < len {
                    return;
                }
                let (Ok(user), Some(frame)) = (
                    std::str::from_utf8(&body[..len]),
                    Encoded::from_bytes(Bytes::copy_from_slice(&body[len..])),
                ) else {
                    return;
                };
                let n = self.handler().map_or(0, |h| h.direct_user(user, &frame));
                self.answer(from, format!("c{req} {n}\n"));
            }
            Some(b'c') => {
                let (Some(req), Some(n)) = (
                    parts.next().and_then(|r| r.parse::<u64>().ok()),
                    parts.next().and_then(|n| n.parse::<usize>().ok()),
                ) else {
                    return;
                };
                if let Some(tx) = lock(&self.user_sends).get(&req) {
                    let _ = tx.try_send(n);
                }
            }
            Some(b'a') => {
                let (Some(req), Some(code)) =
                    (parts.next().and_then(|r| r.parse().ok()), parts.next())
                else {
                    return;
                };
                if let Some(tx) = lock(&self.directs).remove(&req) {
                    let _ = tx.send(match code {
                        "ok" => Ok(()),
                        "busy" => Err(DirectError::Busy),
                        _ => Err(DirectError::Gone),
                    });
                }
            }
            _ => {}
        }
    }

    async fn position(&self, channel: &Channel) -> Result<StreamPosition, HistoryError> {
        let reply: Value = SCRIPTS
            .position
            .key(self.key(channel, "m"))
            .key(self.key(channel, "s"))
            .arg(new_epoch())
            .arg(self.meta_ttl_ms(channel))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(history_err)?;
        let reply = array(reply);
        match (reply.first().and_then(text), reply.get(1).and_then(number)) {
            (Some(epoch), Some(offset)) => Ok(StreamPosition { offset, epoch }),
            _ => Err(HistoryError("redis: unexpected reply to position".into())),
        }
    }

    /// The messages after `since` (within the script's byte and count caps) and where
    /// the stream stands, or why they cannot be read.
    async fn read_since(
        &self,
        channel: &Channel,
        since: &StreamPosition,
        limit: ReadLimit,
    ) -> Result<Read, HistoryError> {
        let reply: Value = SCRIPTS
            .since
            .key(self.key(channel, "m"))
            .key(self.key(channel, "s"))
            .arg(since.offset)
            .arg(&since.epoch)
            .arg(limit.messages.min(100_000))
            .arg(self.oldest_kept_ms(channel))
            .arg(limit.bytes.min(1 << 40))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(history_err)?;
        let reply = array(reply);
        let bad = || HistoryError("redis: unexpected reply to since".into());
        let epoch = reply.first().and_then(text).ok_or_else(bad)?;
        let top = reply.get(1).and_then(number).ok_or_else(bad)?;
        let status = reply.get(2).and_then(text).ok_or_else(bad)?;
        let position = if epoch.is_empty() {
            self.position(channel).await?
        } else {
            StreamPosition { offset: top, epoch }
        };
        let messages = match status.as_str() {
            "epoch" => Err(Unrecoverable::Epoch),
            "trimmed" => Err(Unrecoverable::Trimmed),
            _ => Ok(stored(&reply[3..], &position)),
        };
        Ok(Read { position, messages })
    }

    async fn since(
        &self,
        channel: &Channel,
        since: &StreamPosition,
        limit: ReadLimit,
    ) -> Result<Since, HistoryError> {
        let read = self.read_since(channel, since, limit).await?;
        Ok(match read.messages {
            Err(why) => Since::Unrecoverable(why, read.position),
            Ok(messages) => Since::Complete(Page {
                messages: limit.take(messages.iter().map(|m| &m.frame)),
                first: since.offset + 1,
                position: read.position,
            }),
        })
    }

    async fn latest(&self, channel: &Channel, limit: ReadLimit) -> Result<Page, HistoryError> {
        let reply: Value = SCRIPTS
            .latest
            .key(self.key(channel, "m"))
            .key(self.key(channel, "s"))
            .arg(limit.messages.min(100_000))
            .arg(self.oldest_kept_ms(channel))
            .arg(limit.bytes.min(1 << 40))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(history_err)?;
        let reply = array(reply);
        let bad = || HistoryError("redis: unexpected reply to latest".into());
        let epoch = reply.first().and_then(text).ok_or_else(bad)?;
        let top = reply.get(1).and_then(number).ok_or_else(bad)?;
        let position = if epoch.is_empty() {
            self.position(channel).await?
        } else {
            StreamPosition { offset: top, epoch }
        };
        // Newest first from Redis: take within the limit from the newest, then reverse.
        let newest_first = stored(&reply[2..], &position);
        let mut messages = limit.take(newest_first.iter().map(|m| &m.frame));
        messages.reverse();
        let first = newest_first
            .get(messages.len().wrapping_sub(1))
            .map_or(position.offset + 1, |m| m.offset);
        Ok(Page {
            messages,
            first,
            position,
        })
    }

    /// Rewrites this node's presence leases, announces the members whose lease ran out
    /// on the channels this node serves, and refreshes this node's entry and channel list.
    async fn refresh(self: &Arc<Self>) -> Result<(), redis::RedisError> {
        let ttl = self.opts.presence_ttl.as_millis() as u64;
        let now = now_ms();
        let mut pipe = redis::pipe();
        let joined: Vec<_> = lock(&self.joined)
            .iter()
            .map(|(ch, conns)| (ch.clone(), conns.clone()))
            .collect();
        for (ch, conns) in &joined {
            let (h, x) = (self.key(ch, "p"), self.key(ch, "x"));
            for (conn, (user, info)) in conns {
                // Only if it was dropped meanwhile (a pause longer than the lease): a newer
                // join of the same user on another node may have replaced the info.
                pipe.hset_nx(&h, conn, format!("{}:{user}{}", user.len(), info.get()))
                    .ignore();
                pipe.zadd(&x, conn, now + ttl).ignore();
            }
            pipe.pexpire(&h, ttl as i64).ignore();
            pipe.pexpire(&x, ttl as i64).ignore();
        }
        // A channel this node serves keeps its epoch however long nobody publishes.
        let served: Vec<Channel> = lock(&self.channels).keys().cloned().collect();
        for ch in &served {
            pipe.pexpire(self.key(ch, "m"), self.meta_ttl_ms(ch) as i64)
                .ignore();
        }
        let nodes = format!("{}:nodes", self.opts.prefix);
        pipe.zadd(&nodes, &self.node, now + ttl).ignore();
        let () = pipe.query_async(&mut self.conn.clone()).await?;
        // Sweep the channels this node serves: whoever expired is announced as left.
        for ch in served {
            let (gone, members) = self.members(&ch, true).await?;
            let count = members.len() as u32;
            for member in gone {
                self.stats.ghosts.fetch_add(1, Ordering::Relaxed);
                let frame = ServerFrame::Presence {
                    channel: ch.clone(),
                    action: PresenceAction::Leave,
                    member,
                    count,
                };
                let frame = Encoded::new(&frame);
                self.publish_unstored(&ch, b'b', frame.bytes(), None)
                    .await?;
            }
        }
        Ok(())
    }

    /// Writes this node's channels and local subscriber counts (read by the `channels`
    /// method on every node), to expire with the node's lease.
    async fn write_counts(&self, counts: &ChannelCounts) -> Result<(), redis::RedisError> {
        let ttl = self.opts.presence_ttl.as_millis() as i64;
        let chans = format!("{}:chans:{}", self.opts.prefix, self.node);
        let mut pipe = redis::pipe();
        pipe.atomic().del(&chans).ignore();
        for (ch, n) in counts {
            pipe.hset(&chans, &ch.0, *n).ignore();
        }
        pipe.pexpire(&chans, ttl).ignore();
        pipe.query_async(&mut self.conn.clone()).await
    }

    /// The members, after dropping expired leases; and those whose last lease expired
    /// now (with `connections: 0`).
    async fn members(
        &self,
        channel: &Channel,
        sweep: bool,
    ) -> Result<(Vec<Member>, Vec<Member>), redis::RedisError> {
        let reply: Value = SCRIPTS
            .members
            .key(self.key(channel, "p"))
            .key(self.key(channel, "x"))
            .arg(now_ms())
            .arg(if sweep { "1" } else { "0" })
            .invoke_async(&mut self.conn.clone())
            .await?;
        let reply = array(reply);
        let gone_n = reply.first().and_then(number).unwrap_or(0) as usize;
        let mut gone = Vec::new();
        for i in 0..gone_n {
            gone.push(Member {
                user_id: reply.get(1 + 2 * i).and_then(text).unwrap_or_default(),
                info: payload(reply.get(2 + 2 * i)),
                connections: 0,
            });
        }
        let mut members = BTreeMap::new();
        for chunk in reply[(1 + 2 * gone_n).min(reply.len())..].chunks(3) {
            if let [u, n, i] = chunk {
                let user = text(u).unwrap_or_default();
                members.insert(
                    user.clone(),
                    Member {
                        user_id: user,
                        info: payload(Some(i)),
                        connections: number(n).unwrap_or(0) as u32,
                    },
                );
            }
        }
        Ok((gone, members.into_values().collect()))
    }

    /// Publishes an unstored frame on `channel`: `kind` `b` (a broadcast) or `e` (an
    /// ephemeral message), with the connection not to deliver it to.
    async fn publish_unstored(
        &self,
        channel: &Channel,
        kind: u8,
        frame: &[u8],
        except: Option<ClientId>,
    ) -> Result<(), redis::RedisError> {
        let except = except.map(|c| c.0).unwrap_or_default();
        let mut payload = Vec::with_capacity(frame.len() + except.len() + 2);
        payload.push(kind);
        payload.extend_from_slice(except.as_bytes());
        payload.push(b'\n');
        payload.extend_from_slice(frame);
        redis::cmd("PUBLISH")
            .arg(self.pubsub(channel))
            .arg(payload)
            .query_async::<()>(&mut self.conn.clone())
            .await
    }

    /// The background work of a node: health checks, lease refreshes, node channel.
    async fn run(weak: Weak<Self>) {
        let mut subscribed = false;
        let mut last_refresh = None::<tokio::time::Instant>;
        let mut written = ChannelCounts::new();
        loop {
            let Some(shared) = weak.upgrade() else {
                return;
            };
            let mut conn = shared.conn.clone();
            let ping = redis::cmd("PING").query_async::<()>(&mut conn).await;
            match ping {
                Ok(()) => {
                    if !subscribed {
                        subscribed = conn
                            .subscribe(&[shared.node_channel(&shared.node), shared.all_channel()])
                            .await
                            .is_ok();
                    }
                    if !shared.up.swap(true, Ordering::AcqRel) {
                        tracing::info!(node = %shared.node, "redis reachable");
                    }
                    let every = shared.opts.presence_ttl / 3;
                    let renew = last_refresh.is_none_or(|t| t.elapsed() >= every);
                    if renew {
                        match shared.refresh().await {
                            Ok(()) => last_refresh = Some(tokio::time::Instant::now()),
                            Err(e) => tracing::warn!("presence refresh failed: {e}"),
                        }
                    }
                    // The channel counts: when they changed (so `channels` is at most a
                    // tick old), and with every lease renewal.
                    let counts = shared.handler().map(|h| h.channels()).unwrap_or_default();
                    if (renew || counts != written) && shared.write_counts(&counts).await.is_ok() {
                        written = counts;
                    }
                }
                Err(_) => shared.went_down(),
            }
            let every = HEALTH_EVERY.min(shared.opts.presence_ttl / 3);
            drop(shared);
            tokio::time::sleep(every).await;
        }
    }
}

/// What a `since` read found: where the stream stands, and the messages after the offset
/// or why they cannot be read.
struct Read {
    position: StreamPosition,
    messages: Result<Vec<Stored>, Unrecoverable>,
}

/// One stored message read back: its offset, its frame, and the connection its
/// publisher asked not to deliver it to.
struct Stored {
    offset: u64,
    frame: Encoded,
    except: Option<ClientId>,
}

/// `{offset, body, except}` triples from a script's reply, completed into frames.
fn stored(triples: &[Value], position: &StreamPosition) -> Vec<Stored> {
    triples
        .chunks(3)
        .filter_map(|t| {
            let offset = number(t.first()?)?;
            let body = bytes(t.get(1)?)?;
            let at = StreamPosition {
                offset,
                epoch: position.epoch.clone(),
            };
            let except = t.get(2).and_then(text).filter(|x| !x.is_empty());
            Some(Stored {
                offset,
                frame: with_position(&body, &at),
                except: except.map(ClientId),
            })
        })
        .collect()
}

impl RedisBroker {
    /// Test hook: fills stop between their read and forwarding it while the guard lives.
    #[doc(hidden)]
    pub async fn pause_fills(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.shared.fill_gate.write().await
    }

    /// Test hook: fills waiting at the pause.
    #[doc(hidden)]
    pub fn fills_waiting(&self) -> u64 {
        self.shared.fills_waiting.load(Ordering::Acquire)
    }
}

impl History for RedisHistory {
    fn position<'a>(
        &'a self,
        channel: &'a Channel,
    ) -> BoxFuture<'a, Result<StreamPosition, HistoryError>> {
        Box::pin(self.0.position(channel))
    }

    fn since<'a>(
        &'a self,
        channel: &'a Channel,
        since: &'a StreamPosition,
        limit: ReadLimit,
    ) -> BoxFuture<'a, Result<Since, HistoryError>> {
        Box::pin(self.0.since(channel, since, limit))
    }

    fn latest<'a>(
        &'a self,
        channel: &'a Channel,
        limit: ReadLimit,
    ) -> BoxFuture<'a, Result<Page, HistoryError>> {
        Box::pin(self.0.latest(channel, limit))
    }
}

impl Broker for RedisBroker {
    fn start(&self, handler: Arc<dyn BrokerHandler>) {
        assert!(
            self.shared.handler.set(handler).is_ok(),
            "RedisBroker::start called twice"
        );
        let weak = Arc::downgrade(&self.shared);
        self.shared.runtime.spawn(Shared::run(weak));
    }

    fn subscribe<'a>(&'a self, channel: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let s = &self.shared;
            s.check_up()?;
            lock(&s.channels).entry(channel.clone()).or_default();
            let mut conn = s.conn.clone();
            let subscribed = conn.subscribe(s.pubsub(channel)).await.map_err(broker_err);
            let position = match subscribed {
                Ok(()) => s.position(channel).await.map_err(BrokerError::from),
                Err(e) => Err(e),
            };
            match position {
                Ok(position) => {
                    if let Some(live) = lock(&s.channels).get_mut(channel)
                        && live.last.as_ref().is_none_or(|l| l.epoch != position.epoch)
                    {
                        live.last = Some(position);
                    }
                    Ok(())
                }
                Err(e) => {
                    lock(&s.channels).remove(channel);
                    // Subscribed but not positioned: do not keep receiving it.
                    let _ = conn.unsubscribe(s.pubsub(channel)).await;
                    Err(e)
                }
            }
        })
    }

    fn unsubscribe<'a>(&'a self, channel: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let s = &self.shared;
            lock(&s.channels).remove(channel);
            let mut conn = s.conn.clone();
            conn.unsubscribe(s.pubsub(channel))
                .await
                .map_err(broker_err)
        })
    }

    fn publish(&self, p: Publication) -> BoxFuture<'_, Result<Published, BrokerError>> {
        Box::pin(async move {
            let s = &self.shared;
            s.check_up()?;
            let body = message_body(&p.channel, p.from, p.data, now_ms(), p.ephemeral);
            if p.ephemeral {
                s.publish_unstored(&p.channel, b'e', &body, p.except)
                    .await
                    .map_err(broker_err)?;
                return Ok(Published {
                    position: None,
                    duplicate: false,
                });
            }
            let except = p.except.map(|c| c.0).unwrap_or_default();
            let (max_messages, _) = s.opts.retention.for_channel(&p.channel.0);
            let ch = &p.channel;
            let reply: Value = SCRIPTS
                .publish
                .key(s.key(ch, "m"))
                .key(s.key(ch, "s"))
                .key(s.key(ch, "d"))
                .key(s.key(ch, "o"))
                .arg(s.pubsub(ch))
                .arg(body.as_ref())
                .arg(new_epoch())
                .arg(max_messages.max(1))
                .arg(s.stream_ttl_ms(ch))
                .arg(s.meta_ttl_ms(ch))
                .arg(p.dedupe_key.as_deref().unwrap_or(""))
                .arg(s.opts.retention.dedupe_window.max(1))
                .arg(&except)
                .arg(now_ms())
                .invoke_async(&mut s.conn.clone())
                .await
                .map_err(broker_err)?;
            let reply = array(reply);
            match (
                reply.first().and_then(number),
                reply.get(1).and_then(text),
                reply.get(2).and_then(number),
            ) {
                (Some(offset), Some(epoch), Some(dup)) => Ok(Published {
                    position: Some(StreamPosition { offset, epoch }),
                    duplicate: dup == 1,
                }),
                _ => Err(malformed("publish")),
            }
        })
    }

    fn broadcast<'a>(
        &'a self,
        channel: &'a Channel,
        frame: Encoded,
        except: Option<ClientId>,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.shared
                .publish_unstored(channel, b'b', frame.bytes(), except)
                .await
                .map_err(broker_err)
        })
    }

    fn history(&self) -> &dyn History {
        &self.history
    }

    fn presence_join<'a>(
        &'a self,
        channel: &'a Channel,
        user: &'a str,
        conn: &'a str,
        info: Payload,
        max_members: usize,
    ) -> BoxFuture<'a, Result<Option<PresenceChange>, BrokerError>> {
        Box::pin(async move {
            let s = &self.shared;
            s.check_up()?;
            let ttl = s.opts.presence_ttl.as_millis() as u64;
            let now = now_ms();
            let reply: Value = SCRIPTS
                .join
                .key(s.key(channel, "p"))
                .key(s.key(channel, "x"))
                .arg(user)
                .arg(conn)
                .arg(info.get())
                .arg(max_members)
                .arg(now)
                .arg(now + ttl)
                .arg(ttl)
                .invoke_async(&mut s.conn.clone())
                .await
                .map_err(broker_err)?;
            let reply = array(reply);
            if reply.is_empty() {
                return Ok(None);
            }
            lock(&s.joined)
                .entry(channel.clone())
                .or_default()
                .insert(conn.to_owned(), (user.to_owned(), info.clone()));
            change(&reply, user, info, "presence join").map(Some)
        })
    }

    fn presence_leave<'a>(
        &'a self,
        channel: &'a Channel,
        user: &'a str,
        conn: &'a str,
    ) -> BoxFuture<'a, Result<Option<PresenceChange>, BrokerError>> {
        Box::pin(async move {
            let s = &self.shared;
            {
                let mut joined = lock(&s.joined);
                if let Some(conns) = joined.get_mut(channel) {
                    conns.remove(conn);
                    if conns.is_empty() {
                        joined.remove(channel);
                    }
                }
            }
            let reply: Value = SCRIPTS
                .leave
                .key(s.key(channel, "p"))
                .key(s.key(channel, "x"))
                .arg(user)
                .arg(conn)
                .arg(now_ms())
                .invoke_async(&mut s.conn.clone())
                .await
                .map_err(broker_err)?;
            let reply = array(reply);
            if reply.is_empty() {
                return Ok(None);
            }
            let info = payload(reply.get(3));
            change(&reply, user, info, "presence leave").map(Some)
        })
    }

    fn presence<'a>(
        &'a self,
        channel: &'a Channel,
    ) -> BoxFuture<'a, Result<Vec<Member>, BrokerError>> {
        Box::pin(async move {
            self.shared.check_up()?;
            let (_, members) = self
                .shared
                .members(channel, false)
                .await
                .map_err(broker_err)?;
            Ok(members)
        })
    }

    fn node_id(&self) -> Option<&str> {
        Some(&self.shared.node)
    }

    fn direct<'a>(
        &'a self,
        to: &'a ClientId,
        frame: Encoded,
    ) -> BoxFuture<'a, Result<(), DirectError>> {
        Box::pin(async move {
            let s = &self.shared;
            // Ids are made by nodes from URL-safe characters; anything else names nobody
            // (and must not reach the framing below).
            let well_formed =
                to.0.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            let Some((node, _)) = to.0.split_once('.').filter(|_| well_formed) else {
                return Err(DirectError::Gone);
            };
            if node == s.node {
                return match s.handler() {
                    Some(h) => h.direct(to, &frame),
                    None => Err(DirectError::Gone),
                };
            }
            if let Err(e) = s.check_up() {
                return Err(DirectError::Unavailable(e.0));
            }
            let req = s.next_direct.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            lock(&s.directs).insert(req, tx);
            let _waiting = Waiting {
                map: &s.directs,
                req,
            };
            let mut payload = format!("d{req} {} {}\n", s.node, to.0).into_bytes();
            payload.extend_from_slice(frame.bytes());
            let sent = redis::cmd("PUBLISH")
                .arg(s.node_channel(node))
                .arg(payload)
                .query_async::<u64>(&mut s.conn.clone())
                .await;
            match sent {
                Ok(0) => Err(DirectError::Gone), // no such node (any more)
                Ok(_) => match tokio::time::timeout(s.opts.direct_timeout, rx).await {
                    Ok(Ok(answer)) => answer,
                    _ => Err(DirectError::Unavailable(format!(
                        "node {node} did not answer"
                    ))),
                },
                Err(e) => Err(DirectError::Unavailable(format!("redis: {e}"))),
            }
        })
    }

    fn direct_user<'a>(
        &'a self,
        user: &'a str,
        frame: Encoded,
    ) -> BoxFuture<'a, Result<usize, BrokerError>> {
        Box::pin(async move {
            let s = &self.shared;
            s.check_up()?;
            let req = s.next_direct.fetch_add(1, Ordering::Relaxed);
            // Room for every node's answer (more than 256 nodes would be undercounted).
            let (tx, mut rx) = tokio::sync::mpsc::channel(256);
            lock(&s.user_sends).insert(req, tx);
            let _waiting = Waiting {
                map: &s.user_sends,
                req,
            };
            let mut payload = format!("u{req} {} {}\n{user}", s.node, user.len()).into_bytes();
            payload.extend_from_slice(frame.bytes());
            let sent = redis::cmd("PUBLISH")
                .arg(s.all_channel())
                .arg(payload)
                .query_async::<usize>(&mut s.conn.clone())
                .await;
            match sent {
                // Every node listening, this one included, which does not answer.
                Ok(listeners) => {
                    let mut total = 0;
                    let deadline = tokio::time::Instant::now() + s.opts.direct_timeout;
                    for _ in 1..listeners {
                        match tokio::time::timeout_at(deadline, rx.recv()).await {
                            Ok(Some(n)) => total += n,
                            _ => break,
                        }
                    }
                    Ok(total)
                }
                Err(e) => Err(broker_err(e)),
            }
        })
    }

    fn channels(&self) -> BoxFuture<'_, Result<Option<ChannelCounts>, BrokerError>> {
        Box::pin(async move {
            let s = &self.shared;
            s.check_up()?;
            let reply: Value = SCRIPTS
                .channels
                .key(format!("{}:nodes", s.opts.prefix))
                .arg(now_ms())
                .arg(&s.node)
                .arg(format!("{}:chans:", s.opts.prefix))
                .invoke_async(&mut s.conn.clone())
                .await
                .map_err(broker_err)?;
            let mut counts: BTreeMap<Channel, usize> = BTreeMap::new();
            for pair in array(reply).chunks(2) {
                if let [ch, n] = pair
                    && let (Some(ch), Some(n)) = (text(ch), number(n))
                {
                    *counts.entry(Channel::from(ch.as_str())).or_default() += n as usize;
                }
            }
            for (ch, n) in s.handler().map(|h| h.channels()).unwrap_or_default() {
                *counts.entry(ch).or_default() += n;
            }
            Ok(Some(counts.into_iter().filter(|(_, n)| *n > 0).collect()))
        })
    }

    fn health(&self) -> Result<(), String> {
        if self.shared.up.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err("redis unreachable".into())
        }
    }

    fn metrics(&self) -> Vec<(&'static str, &'static str, u64)> {
        let s = &self.shared.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            (
                "switchboard_redis_up",
                "1 while Redis answers, 0 while it is unreachable",
                u64::from(self.shared.up.load(Ordering::Relaxed)),
            ),
            (
                "switchboard_redis_outages_total",
                "Times the connection to Redis was lost",
                get(&s.outages),
            ),
            (
                "switchboard_redis_fills_total",
                "Channels read back from their stream after a gap or an outage",
                get(&s.fills),
            ),
            (
                "switchboard_redis_filled_total",
                "Messages forwarded from a stream by those fills",
                get(&s.filled),
            ),
            (
                "switchboard_redis_unfillable_total",
                "Fills that found the missed messages gone (trimmed or a new epoch)",
                get(&s.unfillable),
            ),
            (
                "switchboard_presence_expired_total",
                "Presence members dropped because their node stopped renewing the lease",
                get(&s.ghosts),
            ),
        ]
    }
}
