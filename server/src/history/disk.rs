//! The embedded durable store: every channel's stream in one redb file, so the server
//! alone keeps history across restarts. Why redb: pure Rust (nothing to install), ordered
//! ranges (a stream is a key range), and crash-safe commits (see ARCHITECTURE.md).
//!
//! Appends are numbered at once from an in-memory copy of each stream's record and handed
//! to one writer thread, which commits whatever has queued up in one transaction (group
//! commit: no timer, the batch is whatever arrived while the last commit ran) and then
//! answers all of them. What an answer means is the [`Durability`]:
//! - `Fsync`: the commit is fsync'd first: an acked message survives a power cut.
//! - `Os`: the commit is written to the operating system but not fsync'd (the file is
//!   fsync'd at least once a second while it changes). An acked message survives the
//!   process being killed; a machine crash can lose the last second, so after an unclean
//!   shutdown *and* a reboot every stream starts a new epoch.
//!
//! Tables:
//! - `streams`: channel → (epoch, offset of the last stored message, bytes charged, time of
//!   the last write);
//! - `messages`: (channel, offset) → (server time, the encoded `message` frame);
//! - `ids`: (channel, key hash) → offset, and `id_log`: (channel, offset) → key hash: the
//!   idempotent-publish window, which survives restarts;
//! - `meta`: the publish-id hash key, whether the last run shut down cleanly, with which
//!   durability and on which boot.
//!
//! Bounds: each stream keeps what [`Retention`] allows; all of them together at most
//! `retention.max_disk_bytes` (the least recently written streams are dropped whole past
//! it, and come back with a new epoch). In memory: the records of at most
//! [`CACHED_STREAMS`] streams with no write in flight, plus the writes in flight (at most
//! one per publishing connection or request handler, since each waits for its answer).
//!
//! A write that fails (an I/O error) is refused, with every write of its stream queued
//! behind it, and the stream's next offset goes back to its last stored one: no offset is
//! ever skipped, and nothing refused was delivered (the broker delivers only what was
//! stored).

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, ready};
use redb::backends::FileBackend;
use redb::{
    Builder, Database, Durability as RedbDurability, ReadableDatabase, ReadableTable,
    StorageBackend, TableDefinition,
};
use switchboard_protocol::{Channel, StreamPosition};
use tokio::sync::{oneshot, watch};

use super::memory::{Clock, MESSAGE_OVERHEAD, STREAM_OVERHEAD};
use super::{
    Appended, Appending, History, HistoryError, Page, ReadLimit, Retention, Since, Store,
    Unrecoverable,
};
use crate::clock;
use crate::frame::{Encoded, with_position};

const STREAMS: TableDefinition<&str, (&str, u64, u64, u64)> = TableDefinition::new("streams");
const MESSAGES: TableDefinition<(&str, u64), (u64, &[u8])> = TableDefinition::new("messages");
const IDS: TableDefinition<(&str, u64), u64> = TableDefinition::new("ids");
const ID_LOG: TableDefinition<(&str, u64), u64> = TableDefinition::new("id_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
#[cfg(test)]
pub(super) const META_TABLE: TableDefinition<&str, &[u8]> = META;

/// Bytes charged for a remembered publish id (its rows in `ids` and `id_log`).
const ID_BYTES: u64 = 64;

/// Records of streams with no write in flight kept in memory; past it they are dropped
/// (and read again from the file when next used).
pub const CACHED_STREAMS: usize = 1 << 14;

/// Memory one cached stream record may take: the record, its channel name (at most
/// `MAX_CHANNEL_LEN`) and the map's own overhead.
pub const CACHED_STREAM_BYTES: usize = 512;

/// redb's page cache (its default is 1 GiB): recent messages are read from here.
pub const PAGE_CACHE_BYTES: usize = 32 << 20;

/// Most writes in one group commit.
const MAX_BATCH: usize = 4096;

/// How often the `Os` durability fsyncs a changed file.
const OS_SYNC_EVERY: Duration = Duration::from_secs(1);

/// How often messages past their age are swept from every stream.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// What an ack means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// On disk: each group commit is fsync'd before its publishes are acked.
    Fsync,
    /// Written to the operating system: acked before the fsync, which follows within a
    /// second. Survives the process being killed; a machine crash can lose the last
    /// second, and the server then starts new epochs, so clients know to reload.
    Os,
}

impl Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fsync => "fsync",
            Self::Os => "os",
        })
    }
}

/// The in-memory copy of a stream's record.
#[derive(Debug, Clone)]
struct Meta {
    epoch: String,
    /// The last offset handed out.
    assigned: u64,
    /// The last offset the store has committed.
    committed: u64,
    /// Bumped when queued writes are refused (a failed commit): writes of an older
    /// generation are refused too.
    generation: u64,
    /// Writes queued and not answered yet; a record with some is never dropped from
    /// memory.
    in_flight: u32,
}

/// A message for the writer thread.
enum Write {
    /// A new stream's record (its epoch), written unless the stream exists.
    Create { channel: Channel, epoch: String },
    /// A numbered message.
    Message {
        channel: Channel,
        epoch: String,
        generation: u64,
        offset: u64,
        ts: u64,
        frame: Bytes,
        key: Option<u64>,
        reply: oneshot::Sender<Result<(), HistoryError>>,
    },
    /// Answers once everything queued before it is committed and durable.
    Flush(mpsc::Sender<()>),
    /// Sweeps messages past their age now, then answers (a test hook: the writer sweeps
    /// every [`SWEEP_EVERY`] by itself).
    Sweep(mpsc::Sender<()>),
    /// Ends the thread (after a flush).
    Stop,
}

struct State {
    streams: HashMap<Channel, Meta>,
    /// Publish ids appended and not committed yet: (channel, hash) → offset.
    pending_ids: HashMap<(Channel, u64), u64>,
    /// Bytes charged to all streams in the file.
    bytes: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Counts commits (and refusals), so an append waiting for another one to be stored
    /// (a duplicate) wakes up.
    commits: watch::Sender<u64>,
    /// Test hooks: the writer holds this while it commits (a test holding it pauses the
    /// writer), and fails its next commit when this is set.
    gate: Mutex<()>,
    fail_next: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Streams in a redb file.
pub struct DiskHistory {
    /// The database; `None` once closed, so the file is released (another store can open
    /// it in this process).
    db: std::sync::RwLock<Option<Arc<Database>>>,
    shared: Arc<Shared>,
    writer: mpsc::Sender<Write>,
    thread: Mutex<Option<JoinHandle<()>>>,
    retention: Arc<Retention>,
    clock: Clock,
    /// Keys of the publish-id hash, kept in the file so ids stay comparable across runs.
    key: (u64, u64),
    /// Set once closed (cleanly, or by the crash a test simulates).
    closed: AtomicBool,
}

fn err(e: impl Display) -> HistoryError {
    HistoryError(e.to_string())
}

/// A file backend whose commits skip the fsync (the `Os` durability): what a commit wrote
/// is in the operating system's cache, so it survives the process but not the machine.
/// The writer fsyncs the file itself, at most a second after it changed.
#[derive(Debug)]
struct NoSyncBackend(FileBackend);

impl StorageBackend for NoSyncBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.0.close()
    }
    fn try_lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.0.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.0.try_lock_shared_range(start, end)
    }
    fn lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.0.lock_range(start, end)
    }
    fn lock_shared_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.0.lock_shared_range(start, end)
    }
    fn unlock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.0.unlock_range(start, end)
    }
    fn query_lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.0.query_lock_range(start, end)
    }
}

/// This machine's boot, to tell a killed process (the OS still has what it wrote) from a
/// machine crash (it may not). `None` where the OS does not say.
fn boot_id() -> Option<Vec<u8>> {
    std::fs::read("/proc/sys/kernel/random/boot_id").ok()
}

fn open_file(path: &Path) -> Result<File, HistoryError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| HistoryError(format!("{}: {e}", path.display())))
}

/// Opens the database, with the backend `durability` needs.
fn open_db(path: &Path, durability: Durability) -> Result<(Database, File), HistoryError> {
    let file = open_file(path)?;
    let sync_handle = file.try_clone().map_err(err)?;
    let backend = FileBackend::new(file).map_err(err)?;
    let mut builder = Builder::new();
    builder.set_cache_size(PAGE_CACHE_BYTES);
    let db = match durability {
        Durability::Fsync => builder.create_with_backend(backend),
        Durability::Os => builder.create_with_backend(NoSyncBackend(backend)),
    }
    .map_err(err)?;
    Ok((db, sync_handle))
}

impl DiskHistory {
    /// Opens (or creates) the store at `path`. After an unclean shutdown of a run that used
    /// [`Durability::Os`] followed by a reboot (or where the boot cannot be told), every
    /// stream gets a new epoch and loses its messages (some acked ones may be missing), so
    /// no client takes a stale position for a complete one; for the same reason, a file
    /// such a crash damaged is moved aside (`.damaged`) and the store starts empty.
    pub fn open(
        path: &Path,
        durability: Durability,
        retention: Retention,
    ) -> Result<Self, HistoryError> {
        Self::open_with_clock(path, durability, retention, Arc::new(clock::now_ms))
    }

    /// [`DiskHistory::open`], telling message ages by `clock`.
    pub fn open_with_clock(
        path: &Path,
        durability: Durability,
        retention: Retention,
        clock: Clock,
    ) -> Result<Self, HistoryError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let (db, sync_handle) = match open_db(path, durability) {
            Ok(opened) => opened,
            Err(e) if durability == Durability::Os && path.exists() => {
                let aside = PathBuf::from(format!("{}.damaged", path.display()));
                tracing::error!(
                    "history file {} cannot be opened ({e}); with --durability os a crash \
                     may damage it: moving it to {} and starting empty",
                    path.display(),
                    aside.display()
                );
                std::fs::rename(path, &aside).map_err(err)?;
                open_db(path, durability)?
            }
            Err(e) => return Err(e),
        };
        let (key, bytes) = prepare(&db, durability)?;
        let db = Arc::new(db);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                streams: HashMap::new(),
                pending_ids: HashMap::new(),
                bytes,
            }),
            commits: watch::channel(0).0,
            gate: Mutex::new(()),
            fail_next: AtomicBool::new(false),
        });
        let retention = Arc::new(retention);
        let (writer, rx) = mpsc::channel();
        let thread = {
            let writer = Writer {
                db: db.clone(),
                shared: shared.clone(),
                retention: retention.clone(),
                clock: clock.clone(),
                durability,
                sync_handle,
                dirty: false,
                last_sync: Instant::now(),
                last_sweep: Instant::now(),
            };
            std::thread::Builder::new()
                .name("history-writer".into())
                .spawn(move || writer.run(&rx))
                .map_err(err)?
        };
        Ok(Self {
            db: std::sync::RwLock::new(Some(db)),
            shared,
            writer,
            thread: Mutex::new(Some(thread)),
            retention,
            clock,
            key,
            closed: AtomicBool::new(false),
        })
    }

    /// Bytes charged to all streams in the file (at most `retention.max_disk_bytes`, give or
    /// take one commit).
    pub fn bytes(&self) -> u64 {
        self.shared.lock().bytes
    }

    /// Stream records held in memory.
    pub fn cached_streams(&self) -> usize {
        self.shared.lock().streams.len()
    }

    fn db(&self) -> Result<Arc<Database>, HistoryError> {
        self.db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(stopped)
    }

    fn hash(&self, id: &str) -> u64 {
        #[allow(
            deprecated,
            reason = "std's keyed SipHash; the key is stored in the file"
        )]
        let mut h = std::hash::SipHasher::new_with_keys(self.key.0, self.key.1);
        std::hash::Hasher::write(&mut h, id.as_bytes());
        std::hash::Hasher::finish(&h)
    }

    /// The stream's record, read from the file or created (a created one's epoch is written
    /// at once).
    fn meta<'s>(
        &self,
        state: &'s mut State,
        channel: &Channel,
    ) -> Result<&'s mut Meta, HistoryError> {
        if !state.streams.contains_key(channel) {
            if state.streams.len() >= CACHED_STREAMS {
                state.streams.retain(|_, m| m.in_flight > 0);
            }
            let stored = {
                let rx = self.db()?.begin_read().map_err(err)?;
                let streams = rx.open_table(STREAMS).map_err(err)?;
                streams
                    .get(channel.as_str())
                    .map_err(err)?
                    .map(|v| (v.value().0.to_owned(), v.value().1))
            };
            let meta = match stored {
                Some((epoch, top)) => Meta {
                    epoch,
                    assigned: top,
                    committed: top,
                    generation: 0,
                    in_flight: 0,
                },
                None => {
                    let epoch = clock::random_epoch();
                    self.writer
                        .send(Write::Create {
                            channel: channel.clone(),
                            epoch: epoch.clone(),
                        })
                        .map_err(|_| stopped())?;
                    Meta {
                        epoch,
                        assigned: 0,
                        committed: 0,
                        generation: 0,
                        in_flight: 1,
                    }
                }
            };
            state.streams.insert(channel.clone(), meta);
        }
        Ok(state.streams.get_mut(channel).expect("just inserted"))
    }

    fn position_now(&self, channel: &Channel) -> Result<StreamPosition, HistoryError> {
        let mut state = self.shared.lock();
        let meta = self.meta(&mut state, channel)?;
        Ok(StreamPosition {
            offset: meta.committed,
            epoch: meta.epoch.clone(),
        })
    }

    /// The oldest time a message of `channel` may have to still be kept.
    fn cutoff(&self, channel: &str) -> u64 {
        let (_, max_age) = self.retention.for_channel(channel);
        (self.clock)().saturating_sub(max_age)
    }

    fn since_now(
        &self,
        channel: &Channel,
        since: &StreamPosition,
        limit: ReadLimit,
    ) -> Result<Since, HistoryError> {
        let position = self.position_now(channel)?;
        if since.epoch != position.epoch || since.offset > position.offset {
            return Ok(Since::Unrecoverable(Unrecoverable::Epoch, position));
        }
        let first = since.offset + 1;
        let mut page = Page {
            messages: Vec::new(),
            first,
            position,
        };
        if first > page.position.offset {
            return Ok(Since::Complete(page));
        }
        let cutoff = self.cutoff(channel.as_str());
        let rx = self.db()?.begin_read().map_err(err)?;
        let messages = rx.open_table(MESSAGES).map_err(err)?;
        let mut bytes = 0usize;
        let mut expect = first;
        for row in messages
            .range((channel.as_str(), first)..=(channel.as_str(), page.position.offset))
            .map_err(err)?
        {
            let (k, v) = row.map_err(err)?;
            let (offset, (ts, frame)) = (k.value().1, v.value());
            if offset != expect || (offset == first && ts < cutoff) {
                break;
            }
            if page.messages.len() >= limit.messages
                || bytes.saturating_add(frame.len()) > limit.bytes
            {
                return Ok(Since::Complete(page));
            }
            bytes += frame.len();
            expect += 1;
            page.messages
                .push(Encoded::from_bytes(Bytes::copy_from_slice(frame)).ok_or_else(corrupt)?);
        }
        if expect == first {
            // Not even the first one is kept.
            return Ok(Since::Unrecoverable(Unrecoverable::Trimmed, page.position));
        }
        Ok(Since::Complete(page))
    }

    fn latest_now(&self, channel: &Channel, limit: ReadLimit) -> Result<Page, HistoryError> {
        let position = self.position_now(channel)?;
        let cutoff = self.cutoff(channel.as_str());
        let mut newest_first = Vec::new();
        if position.offset > 0 && limit.messages > 0 {
            let rx = self.db()?.begin_read().map_err(err)?;
            let messages = rx.open_table(MESSAGES).map_err(err)?;
            let mut bytes = 0usize;
            let mut expect = position.offset;
            for row in messages
                .range((channel.as_str(), 1)..=(channel.as_str(), position.offset))
                .map_err(err)?
                .rev()
            {
                let (k, v) = row.map_err(err)?;
                let (offset, (ts, frame)) = (k.value().1, v.value());
                if offset != expect
                    || ts < cutoff
                    || newest_first.len() >= limit.messages
                    || bytes.saturating_add(frame.len()) > limit.bytes
                {
                    break;
                }
                bytes += frame.len();
                expect -= 1;
                newest_first
                    .push(Encoded::from_bytes(Bytes::copy_from_slice(frame)).ok_or_else(corrupt)?);
            }
        }
        newest_first.reverse();
        Ok(Page {
            first: position.offset + 1 - newest_first.len() as u64,
            messages: newest_first,
            position,
        })
    }

    /// Waits for the writer to commit everything queued, makes it durable, records a clean
    /// shutdown (so the next start needs no new epochs) and stops the writer. Idempotent.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let (tx, rx) = mpsc::channel();
        if self.writer.send(Write::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
        if let Ok(db) = self.db()
            && let Ok(tx) = db.begin_write()
        {
            if let Ok(mut meta) = tx.open_table(META) {
                let _ = meta.insert("state", b"clean".as_slice());
            }
            let _ = tx.commit();
        }
        self.stop();
    }

    fn stop(&self) {
        let _ = self.writer.send(Write::Stop);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        self.db.write().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Test hook: drops the messages past their age from every stream now, as the writer
    /// does once a minute.
    #[doc(hidden)]
    pub fn sweep_now(&self) {
        let (tx, rx) = mpsc::channel();
        if self.writer.send(Write::Sweep(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }

    /// Test hook: the next commit fails as an I/O error would.
    #[doc(hidden)]
    pub fn fail_next_commit(&self) {
        self.shared.fail_next.store(true, Ordering::Release);
    }

    /// Test hook: the writer commits nothing while the guard lives.
    #[doc(hidden)]
    pub fn pause_writer(&self) -> MutexGuard<'_, ()> {
        self.shared.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops without recording a clean shutdown, as if the process had been killed (what
    /// was committed stays; tests reopen the file afterwards).
    #[doc(hidden)]
    pub fn simulate_crash(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.stop();
        }
    }
}

fn stopped() -> HistoryError {
    HistoryError("the history writer stopped".into())
}

fn corrupt() -> HistoryError {
    HistoryError("a stored message is not UTF-8".into())
}

/// Creates the tables, reads (or makes) the hash key, records this run, and starts new
/// epochs if the last run may have lost acked messages. Returns the key and the bytes the
/// streams are charged.
fn prepare(db: &Database, durability: Durability) -> Result<((u64, u64), u64), HistoryError> {
    let tx = db.begin_write().map_err(err)?;
    let key;
    {
        let mut meta = tx.open_table(META).map_err(err)?;
        tx.open_table(STREAMS).map_err(err)?;
        tx.open_table(MESSAGES).map_err(err)?;
        tx.open_table(IDS).map_err(err)?;
        tx.open_table(ID_LOG).map_err(err)?;
        let get = |name: &str| -> Result<Option<Vec<u8>>, HistoryError> {
            Ok(meta.get(name).map_err(err)?.map(|v| v.value().to_vec()))
        };
        let stored_key = get("hash_key")?;
        let unclean = get("state")?.is_some_and(|v| v == b"running");
        let was_os = get("durability")?.is_some_and(|v| v == b"os");
        let same_boot = get("boot")?.is_some_and(|v| Some(v) == boot_id());
        key = match stored_key {
            Some(b) if b.len() == 16 => (
                u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
                u64::from_le_bytes(b[8..].try_into().expect("8 bytes")),
            ),
            _ => {
                let k: (u64, u64) = (rand::random(), rand::random());
                let mut b = k.0.to_le_bytes().to_vec();
                b.extend_from_slice(&k.1.to_le_bytes());
                meta.insert("hash_key", b.as_slice()).map_err(err)?;
                k
            }
        };
        meta.insert("state", b"running".as_slice()).map_err(err)?;
        meta.insert("durability", durability.to_string().as_bytes())
            .map_err(err)?;
        meta.insert("boot", boot_id().unwrap_or_default().as_slice())
            .map_err(err)?;
        drop(meta);
        if unclean && was_os && !same_boot {
            tracing::warn!(
                "the last run ended uncleanly with --durability os and the machine restarted \
                 since: its last second may be lost, so every stream starts a new epoch"
            );
            rotate_all(&tx)?;
        } else if unclean {
            tracing::info!("the last run ended uncleanly; every acked message was kept");
        }
    }
    tx.commit().map_err(err)?;
    let rx = db.begin_read().map_err(err)?;
    let streams = rx.open_table(STREAMS).map_err(err)?;
    let mut bytes = 0;
    for row in streams.iter().map_err(err)? {
        bytes += row.map_err(err)?.1.value().2;
    }
    Ok((key, bytes))
}

/// New epochs for every stream, their messages and ids dropped (history lost).
fn rotate_all(tx: &redb::WriteTransaction) -> Result<(), HistoryError> {
    let channels: Vec<String> = {
        let streams = tx.open_table(STREAMS).map_err(err)?;
        streams
            .iter()
            .map_err(err)?
            .map(|row| row.map(|(k, _)| k.value().to_owned()))
            .collect::<Result<_, _>>()
            .map_err(err)?
    };
    let mut tables = Tables::open(tx)?;
    let now = clock::now_ms();
    for channel in channels {
        tables.drop_stream(&channel)?;
        let epoch = clock::random_epoch();
        let bytes = (STREAM_OVERHEAD + channel.len()) as u64;
        tables
            .streams
            .insert(channel.as_str(), (epoch.as_str(), 0, bytes, now))
            .map_err(err)?;
    }
    Ok(())
}

/// The tables of one write transaction.
struct Tables<'t> {
    streams: redb::Table<'t, &'static str, (&'static str, u64, u64, u64)>,
    messages: redb::Table<'t, (&'static str, u64), (u64, &'static [u8])>,
    ids: redb::Table<'t, (&'static str, u64), u64>,
    id_log: redb::Table<'t, (&'static str, u64), u64>,
}

impl<'t> Tables<'t> {
    fn open(tx: &'t redb::WriteTransaction) -> Result<Self, HistoryError> {
        Ok(Self {
            streams: tx.open_table(STREAMS).map_err(err)?,
            messages: tx.open_table(MESSAGES).map_err(err)?,
            ids: tx.open_table(IDS).map_err(err)?,
            id_log: tx.open_table(ID_LOG).map_err(err)?,
        })
    }

    /// Removes a stream's record, messages and ids; returns the bytes it was charged.
    fn drop_stream(&mut self, ch: &str) -> Result<u64, HistoryError> {
        let charged = self
            .streams
            .remove(ch)
            .map_err(err)?
            .map_or(0, |v| v.value().2);
        self.messages
            .retain_in((ch, 0)..=(ch, u64::MAX), |_, _| false)
            .map_err(err)?;
        self.id_log
            .retain_in((ch, 0)..=(ch, u64::MAX), |_, _| false)
            .map_err(err)?;
        self.ids
            .retain_in((ch, 0)..=(ch, u64::MAX), |_, _| false)
            .map_err(err)?;
        Ok(charged)
    }

    /// Drops the messages of `ch` over its count or past its age, and the publish ids out
    /// of the window, and takes what they were charged off the stream's record; returns
    /// the bytes freed.
    fn trim(
        &mut self,
        ch: &str,
        top: u64,
        retention: &Retention,
        now: u64,
    ) -> Result<u64, HistoryError> {
        let (max_messages, max_age) = retention.for_channel(ch);
        let cutoff = now.saturating_sub(max_age);
        // By count, then by age: the oldest first, until one is young enough.
        let keep_from = top.saturating_sub(max_messages as u64) + 1;
        let mut old_until = 0;
        for row in self.messages.range((ch, 0)..=(ch, top)).map_err(err)? {
            let (k, v) = row.map_err(err)?;
            let offset = k.value().1;
            if offset >= keep_from && v.value().0 >= cutoff {
                break;
            }
            old_until = offset;
        }
        let mut freed = 0u64;
        if old_until > 0 {
            self.messages
                .retain_in((ch, 0)..=(ch, old_until), |_, v| {
                    freed += (v.1.len() + MESSAGE_OVERHEAD) as u64;
                    false
                })
                .map_err(err)?;
        }
        let ids_from = top.saturating_sub(retention.dedupe_window as u64) + 1;
        if ids_from > 1 {
            let old: Vec<u64> = self
                .id_log
                .range((ch, 0)..(ch, ids_from))
                .map_err(err)?
                .map(|row| row.map(|(_, v)| v.value()))
                .collect::<Result<_, _>>()
                .map_err(err)?;
            for key in &old {
                self.ids.remove((ch, *key)).map_err(err)?;
            }
            self.id_log
                .retain_in((ch, 0)..(ch, ids_from), |_, _| false)
                .map_err(err)?;
            freed += old.len() as u64 * ID_BYTES;
        }
        if freed > 0 {
            let record = self.streams.get(ch).map_err(err)?.map(|v| {
                let (epoch, top, bytes, last) = v.value();
                (epoch.to_owned(), top, bytes, last)
            });
            if let Some((epoch, top, bytes, last)) = record {
                let bytes = bytes.saturating_sub(freed);
                self.streams
                    .insert(ch, (epoch.as_str(), top, bytes, last))
                    .map_err(err)?;
            }
        }
        Ok(freed)
    }
}

/// The writer thread's state.
struct Writer {
    db: Arc<Database>,
    shared: Arc<Shared>,
    retention: Arc<Retention>,
    clock: Clock,
    durability: Durability,
    /// The file, to fsync it (`Os`).
    sync_handle: File,
    /// Commits not fsync'd yet (`Os`).
    dirty: bool,
    last_sync: Instant,
    last_sweep: Instant,
}

/// What a commit did to one stream.
#[derive(Default)]
struct Change {
    top: u64,
    /// Bytes charged after the commit.
    bytes: u64,
    /// Bytes charged before.
    before: u64,
}

impl Writer {
    fn run(mut self, rx: &mpsc::Receiver<Write>) {
        loop {
            let first = match rx.recv_timeout(OS_SYNC_EVERY) {
                Ok(w) => w,
                Err(RecvTimeoutError::Timeout) => {
                    self.housekeeping();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            if self.handle(batch) {
                return;
            }
            self.housekeeping();
        }
    }

    /// Periodic duties: the `Os` fsync, and the age sweep.
    fn housekeeping(&mut self) {
        if self.dirty && self.last_sync.elapsed() >= OS_SYNC_EVERY {
            self.sync();
        }
        if self.last_sweep.elapsed() >= SWEEP_EVERY {
            self.last_sweep = Instant::now();
            if let Err(e) = self.sweep() {
                tracing::warn!("history sweep: {e}");
            }
        }
    }

    fn sync(&mut self) {
        match self.sync_handle.sync_data() {
            Ok(()) => self.dirty = false,
            Err(e) => tracing::warn!("history fsync: {e}"),
        }
        self.last_sync = Instant::now();
    }

    /// Commits one batch and answers it; true when told to stop.
    fn handle(&mut self, batch: Vec<Write>) -> bool {
        let mut flushes = Vec::new();
        let mut sweeps = Vec::new();
        let mut stop = false;
        let mut writes = Vec::with_capacity(batch.len());
        {
            // Refuse writes of streams that were reset or dropped meanwhile.
            let mut st = self.shared.lock();
            for w in batch {
                match w {
                    Write::Flush(tx) => flushes.push(tx),
                    Write::Sweep(tx) => sweeps.push(tx),
                    Write::Stop => stop = true,
                    Write::Message {
                        ref channel,
                        ref epoch,
                        generation,
                        ..
                    } => {
                        let current = st
                            .streams
                            .get(channel)
                            .is_some_and(|m| &m.epoch == epoch && m.generation == generation);
                        if current {
                            writes.push(w);
                        } else {
                            refuse(&mut st, w, "the stream was reset before this was stored");
                        }
                    }
                    Write::Create { .. } => writes.push(w),
                }
            }
        }
        if !writes.is_empty() {
            let result = {
                let shared = self.shared.clone();
                let _gate = shared.gate.lock().unwrap_or_else(|e| e.into_inner());
                if shared.fail_next.swap(false, Ordering::AcqRel) {
                    Err(HistoryError("injected write failure".into()))
                } else {
                    self.commit(&writes)
                }
            };
            self.answer(writes, result);
        }
        for tx in sweeps {
            if let Err(e) = self.sweep() {
                tracing::warn!("history sweep: {e}");
            }
            let _ = tx.send(());
        }
        if !flushes.is_empty() || stop {
            if self.dirty {
                self.sync();
            }
            for tx in flushes {
                let _ = tx.send(());
            }
        }
        stop
    }

    /// One transaction for a batch: the messages, the streams' records, the publish ids,
    /// and the retention of the streams it touched.
    fn commit(&mut self, batch: &[Write]) -> Result<HashMap<String, Change>, HistoryError> {
        let mut tx = self.db.begin_write().map_err(err)?;
        tx.set_durability(RedbDurability::Immediate).map_err(err)?;
        let now = (self.clock)();
        let mut changes: HashMap<String, Change> = HashMap::new();
        {
            let mut t = Tables::open(&tx)?;
            for w in batch {
                match w {
                    Write::Create { channel, epoch } => {
                        let ch = channel.as_str();
                        if t.streams.get(ch).map_err(err)?.is_none() {
                            let bytes = (STREAM_OVERHEAD + ch.len()) as u64;
                            t.streams
                                .insert(ch, (epoch.as_str(), 0, bytes, now))
                                .map_err(err)?;
                            changes.insert(
                                ch.to_owned(),
                                Change {
                                    top: 0,
                                    bytes,
                                    before: 0,
                                },
                            );
                        }
                    }
                    Write::Message {
                        channel,
                        epoch,
                        offset,
                        ts,
                        frame,
                        key,
                        ..
                    } => {
                        let ch = channel.as_str();
                        let change = match changes.get_mut(ch) {
                            Some(c) => c,
                            None => {
                                let before = t
                                    .streams
                                    .get(ch)
                                    .map_err(err)?
                                    .map_or((STREAM_OVERHEAD + ch.len()) as u64, |v| v.value().2);
                                changes.entry(ch.to_owned()).or_insert(Change {
                                    top: 0,
                                    bytes: before,
                                    before,
                                })
                            }
                        };
                        t.messages
                            .insert((ch, *offset), (*ts, frame.as_ref()))
                            .map_err(err)?;
                        change.bytes += (frame.len() + MESSAGE_OVERHEAD) as u64;
                        if let Some(key) = key {
                            t.ids.insert((ch, *key), *offset).map_err(err)?;
                            t.id_log.insert((ch, *offset), *key).map_err(err)?;
                            change.bytes += ID_BYTES;
                        }
                        change.top = *offset;
                        t.streams
                            .insert(ch, (epoch.as_str(), *offset, change.bytes, now))
                            .map_err(err)?;
                    }
                    Write::Flush(_) | Write::Sweep(_) | Write::Stop => {}
                }
            }
            for (ch, change) in &mut changes {
                let freed = t.trim(ch, change.top, &self.retention, now)?;
                change.bytes = change.bytes.saturating_sub(freed);
            }
        }
        tx.commit().map_err(err)?;
        self.dirty = self.durability == Durability::Os;
        Ok(changes)
    }

    /// Records a commit's outcome and answers its writes.
    fn answer(
        &mut self,
        writes: Vec<Write>,
        result: Result<HashMap<String, Change>, HistoryError>,
    ) {
        {
            let mut st = self.shared.lock();
            match &result {
                Ok(changes) => {
                    for c in changes.values() {
                        st.bytes = (st.bytes + c.bytes).saturating_sub(c.before);
                    }
                }
                Err(e) => {
                    tracing::error!("history write failed: {e}");
                    // What was queued behind the failed writes is refused too, and the
                    // streams number from their last stored offset again.
                    let failed: HashSet<&Channel> = writes
                        .iter()
                        .filter_map(|w| match w {
                            Write::Message { channel, .. } => Some(channel),
                            _ => None,
                        })
                        .collect();
                    for ch in failed {
                        if let Some(m) = st.streams.get_mut(ch) {
                            m.generation += 1;
                            m.assigned = m.committed;
                        }
                    }
                }
            }
            for w in &writes {
                match w {
                    Write::Create { channel, .. } => {
                        if let Some(m) = st.streams.get_mut(channel) {
                            m.in_flight = m.in_flight.saturating_sub(1);
                        }
                    }
                    Write::Message {
                        channel,
                        epoch,
                        offset,
                        key,
                        ..
                    } => {
                        if let Some(key) = key {
                            st.pending_ids.remove(&(channel.clone(), *key));
                        }
                        if let Some(m) = st.streams.get_mut(channel)
                            && &m.epoch == epoch
                        {
                            m.in_flight = m.in_flight.saturating_sub(1);
                            if result.is_ok() {
                                m.committed = m.committed.max(*offset);
                            }
                        }
                    }
                    Write::Flush(_) | Write::Sweep(_) | Write::Stop => {}
                }
            }
            if result.is_ok() && st.bytes > self.retention.max_disk_bytes {
                drop(st);
                if let Err(e) = self.evict() {
                    tracing::warn!("history eviction: {e}");
                }
            }
        }
        for w in writes {
            if let Write::Message { reply, .. } = w {
                let _ = reply.send(result.as_ref().map(|_| ()).map_err(Clone::clone));
            }
        }
        self.shared.commits.send_modify(|n| *n += 1);
    }

    /// Over the byte budget: drops the least recently written streams whole until within
    /// 90% of it. They come back with a new epoch; writes of theirs still queued are
    /// refused.
    fn evict(&mut self) -> Result<(), HistoryError> {
        let mut streams: Vec<(u64, u64, String)> = {
            let rx = self.db.begin_read().map_err(err)?;
            let table = rx.open_table(STREAMS).map_err(err)?;
            table
                .iter()
                .map_err(err)?
                .map(|row| {
                    row.map(|(k, v)| {
                        let (_, _, bytes, last) = v.value();
                        (last, bytes, k.value().to_owned())
                    })
                })
                .collect::<Result<_, _>>()
                .map_err(err)?
        };
        streams.sort_unstable();
        let target = self.retention.max_disk_bytes / 10 * 9;
        let mut bytes = self.shared.lock().bytes;
        let tx = self.db.begin_write().map_err(err)?;
        let mut victims = Vec::new();
        {
            let mut t = Tables::open(&tx)?;
            for (_, _, ch) in streams {
                if bytes <= target {
                    break;
                }
                bytes = bytes.saturating_sub(t.drop_stream(&ch)?);
                victims.push(ch);
            }
        }
        tx.commit().map_err(err)?;
        self.dirty = self.durability == Durability::Os;
        let mut st = self.shared.lock();
        for ch in &victims {
            st.streams.remove(&Channel::from(ch.as_str()));
        }
        st.bytes = bytes;
        tracing::warn!(
            dropped = victims.len(),
            bytes,
            "history over --history-disk: dropped the least recently written streams"
        );
        Ok(())
    }

    /// Drops messages past their age in every stream.
    fn sweep(&mut self) -> Result<(), HistoryError> {
        let channels: Vec<(String, u64)> = {
            let rx = self.db.begin_read().map_err(err)?;
            let streams = rx.open_table(STREAMS).map_err(err)?;
            streams
                .iter()
                .map_err(err)?
                .map(|row| row.map(|(k, v)| (k.value().to_owned(), v.value().1)))
                .collect::<Result<_, _>>()
                .map_err(err)?
        };
        let now = (self.clock)();
        let tx = self.db.begin_write().map_err(err)?;
        let mut freed_total = 0;
        {
            let mut t = Tables::open(&tx)?;
            for (ch, top) in channels {
                freed_total += t.trim(&ch, top, &self.retention, now)?;
            }
        }
        tx.commit().map_err(err)?;
        self.dirty = self.durability == Durability::Os;
        let mut st = self.shared.lock();
        st.bytes = st.bytes.saturating_sub(freed_total);
        Ok(())
    }
}

/// Answers a write that will not be stored.
fn refuse(st: &mut State, w: Write, why: &str) {
    if let Write::Message {
        channel,
        epoch,
        key,
        reply,
        ..
    } = w
    {
        if let Some(key) = key {
            st.pending_ids.remove(&(channel.clone(), key));
        }
        if let Some(m) = st.streams.get_mut(&channel)
            && m.epoch == epoch
        {
            m.in_flight = m.in_flight.saturating_sub(1);
        }
        let _ = reply.send(Err(HistoryError(why.into())));
    }
}

impl Store for DiskHistory {
    fn append(
        &self,
        channel: &Channel,
        dedupe: Option<&str>,
        body: Bytes,
    ) -> Result<Appending, HistoryError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(stopped());
        }
        let key = dedupe.map(|id| self.hash(id));
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        let meta = self.meta(state, channel)?.clone();
        if let Some(key) = key {
            let seen = match state.pending_ids.get(&(channel.clone(), key)) {
                Some(offset) => Some(*offset),
                None => {
                    let rx = self.db()?.begin_read().map_err(err)?;
                    let ids = rx.open_table(IDS).map_err(err)?;
                    ids.get((channel.as_str(), key))
                        .map_err(err)?
                        .map(|v| v.value())
                }
            };
            if let Some(offset) = seen {
                let appended = Appended {
                    position: StreamPosition {
                        offset,
                        epoch: meta.epoch.clone(),
                    },
                    duplicate: true,
                    frame: None,
                };
                let stored = wait_stored(self.shared.clone(), channel.clone(), &meta, offset);
                return Ok(Appending { appended, stored });
            }
        }
        let offset = meta.assigned + 1;
        let position = StreamPosition {
            offset,
            epoch: meta.epoch.clone(),
        };
        let frame = with_position(&body, &position);
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Write::Message {
                channel: channel.clone(),
                epoch: meta.epoch,
                generation: meta.generation,
                offset,
                ts: (self.clock)(),
                frame: frame.bytes().clone(),
                key,
                reply: tx,
            })
            .map_err(|_| stopped())?;
        if let Some(m) = state.streams.get_mut(channel) {
            m.assigned = offset;
            m.in_flight += 1;
        }
        if let Some(key) = key {
            state.pending_ids.insert((channel.clone(), key), offset);
        }
        drop(guard);
        Ok(Appending {
            appended: Appended {
                position,
                duplicate: false,
                frame: Some(frame),
            },
            stored: Box::pin(async move { rx.await.unwrap_or_else(|_| Err(stopped())) }),
        })
    }
}

impl History for DiskHistory {
    fn position<'a>(
        &'a self,
        channel: &'a Channel,
    ) -> BoxFuture<'a, Result<StreamPosition, HistoryError>> {
        Box::pin(ready(self.position_now(channel)))
    }

    fn since<'a>(
        &'a self,
        channel: &'a Channel,
        since: &'a StreamPosition,
        limit: ReadLimit,
    ) -> BoxFuture<'a, Result<Since, HistoryError>> {
        Box::pin(ready(self.since_now(channel, since, limit)))
    }

    fn latest<'a>(
        &'a self,
        channel: &'a Channel,
        limit: ReadLimit,
    ) -> BoxFuture<'a, Result<Page, HistoryError>> {
        Box::pin(ready(self.latest_now(channel, limit)))
    }

    fn shutdown(&self) {
        self.close();
    }
}

/// Resolves once the first copy of a duplicate (at `offset`) is stored; fails if it was
/// refused (the publisher's retry then appends it).
fn wait_stored(
    shared: Arc<Shared>,
    channel: Channel,
    meta: &Meta,
    offset: u64,
) -> BoxFuture<'static, Result<(), HistoryError>> {
    let (epoch, generation) = (meta.epoch.clone(), meta.generation);
    Box::pin(async move {
        let mut commits = shared.commits.subscribe();
        loop {
            {
                let st = shared.lock();
                match st.streams.get(&channel) {
                    Some(m) if m.epoch == epoch && m.generation == generation => {
                        if m.committed >= offset {
                            return Ok(());
                        }
                    }
                    // A record dropped from memory had nothing in flight: stored.
                    None => return Ok(()),
                    Some(_) => {
                        return Err(HistoryError("the first copy was not stored".into()));
                    }
                }
            }
            if commits.changed().await.is_err() {
                return Err(stopped());
            }
        }
    })
}

impl Drop for DiskHistory {
    fn drop(&mut self) {
        self.close();
    }
}
