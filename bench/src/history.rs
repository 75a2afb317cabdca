//! The durable-history workloads (issue 11), Switchboard only:
//! - `publish`: connections publishing with ids, each keeping a window of publishes
//!   unacknowledged: acked publishes per second, publish → ack latency, the server's CPU
//!   per acked publish and what its store wrote;
//! - `storm-recover`: subscribed clients lose the server (the caller restarts it on the
//!   same data dir); a publisher publishes messages they miss as soon as the server is
//!   back; every client reconnects with backoff and resubscribes with `since`: time until
//!   all have every missed message, and whether each got each exactly once and in order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::Value;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::{Backoff, SplitMix, Ws, cpu_secs, latency_and_cpu, open_many, peak_rate, welcomed};

/// The publish workload's options.
#[derive(clap::Args)]
pub(crate) struct PublishArgs {
    /// Base URL, e.g. ws://127.0.0.1:8080.
    #[arg(long)]
    url: String,
    /// Name in the table.
    #[arg(long)]
    label: String,
    /// Publishing connections.
    #[arg(long, default_value_t = 50)]
    conns: usize,
    /// Publishes each connection keeps unacknowledged.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Channels (`bench:0`, `bench:1`, …); connection `i` publishes on `bench:{i % channels}`.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Payload bytes per message (about).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// The server's process id, for its CPU and disk writes.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The server's --data-dir (disk store): the size of its files after the run.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// Bytes a process caused to be written to storage (`write_bytes` in /proc/<pid>/io).
fn io_write_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The total size of the files directly in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The string value of `"key":"…"` in a frame (ids and codes have no escapes).
fn str_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":\"");
    let i = text.find(&pat)? + pat.len();
    let end = text[i..].find('"')?;
    Some(&text[i..i + end])
}

/// What one publishing connection measured.
struct PublisherTally {
    hist: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

/// Publishes on `channel` until `end`, keeping at most `window` publishes unacknowledged,
/// then waits for the last acks. Every ack's latency (publish written → ack read) is
/// recorded; an `error` answer is counted by its code.
async fn publish_window(
    mut ws: Ws,
    channel: String,
    window: usize,
    end: Instant,
    pad: Arc<str>,
) -> anyhow::Result<PublisherTally> {
    let mut sent_at: Vec<Option<Instant>> = vec![None; window];
    let (mut next, mut inflight) = (0u64, 0usize);
    let mut tally = PublisherTally {
        hist: Histogram::new(3)?,
        errors: BTreeMap::new(),
    };
    loop {
        if inflight < window && Instant::now() < end {
            while inflight < window {
                let text = format!(
                    r#"{{"type":"publish","id":"{next}","channel":"{channel}","data":{{"p":"{pad}"}}}}"#
                );
                sent_at[(next % window as u64) as usize] = Some(Instant::now());
                ws.feed(Message::text(text)).await?;
                next += 1;
                inflight += 1;
            }
            ws.flush().await?;
        }
        if inflight == 0 {
            return Ok(tally);
        }
        let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .context("no ack within 10 s")?;
        let mut msg = first;
        loop {
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let t = t.as_str();
                    let slot = str_field(t, "id")
                        .and_then(|id| id.parse::<u64>().ok())
                        .and_then(|id| sent_at[(id % window as u64) as usize].take());
                    if let Some(at) = slot {
                        inflight -= 1;
                        if t.contains(r#""type":"ack""#) {
                            let _ = tally.hist.record(at.elapsed().as_micros() as u64);
                        } else {
                            let code = str_field(t, "code").unwrap_or("?").to_owned();
                            *tally.errors.entry(code).or_default() += 1;
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the server closed a publisher"),
            }
            // Take whatever else has arrived before writing again.
            match ws.next().now_or_never() {
                Some(next_msg) => msg = next_msg,
                None => break,
            }
        }
    }
}

pub(crate) async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let PublishArgs {
        url,
        label,
        conns,
        window,
        channels,
        secs,
        payload,
        server_pid,
        data_dir,
    } = args;
    let url = url.as_str();
    let window = window.max(1);
    let sockets = open_many(conns, |i| welcomed(url, i)).await?;
    let pad: Arc<str> = "x".repeat(payload.saturating_sub(30)).into();
    let io0 = server_pid.and_then(io_write_bytes);
    let (cpu0, self0, t0) = (cpu_secs(server_pid), cpu_secs(None), Instant::now());
    let end = t0 + Duration::from_secs(secs);
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            let channel = format!("bench:{}", i % channels.max(1));
            tokio::spawn(publish_window(ws, channel, window, end, pad.clone()))
        })
        .collect();
    let mut hist = Histogram::<u64>::new(3)?;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        let tally = t.await??;
        hist.add(&tally.hist)?;
        for (code, n) in tally.errors {
            *errors.entry(code).or_default() += n;
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let (cpu1, self1) = (cpu_secs(server_pid), cpu_secs(None));
    let io1 = server_pid.and_then(io_write_bytes);
    let acked = hist.len();
    let per_publish_us = 1e6 * (cpu1 - cpu0) / acked.max(1) as f64;
    let errors = if errors.is_empty() {
        "0".to_owned()
    } else {
        let list: Vec<String> = errors.iter().map(|(c, n)| format!("{n} {c}")).collect();
        list.join(", ")
    };
    let (written, stored) = match data_dir {
        Some(dir) => (
            match (io0, io1) {
                (Some(a), Some(b)) => format!("{:.0}", (b - a) as f64 / acked.max(1) as f64),
                _ => "?".to_owned(),
            },
            format!("{:.1}", dir_bytes(&dir) as f64 / (1024.0 * 1024.0)),
        ),
        None => ("–".to_owned(), "–".to_owned()),
    };
    println!(
        "| {label} | {conns} | {window} | {channels} | {:.0} | {} | {per_publish_us:.1} | {errors} | {written} | {stored} |",
        acked as f64 / wall,
        latency_and_cpu(&hist, (cpu0, cpu1), (self0, self1), wall),
    );
    Ok(())
}

/// The recovery storm's options. The load generator subscribes `conns` clients to channel
/// `recover`, publishes `before` messages that every client receives live, writes
/// `ready_file`, and the caller restarts the server on the same address and data dir. As
/// soon as the server is back, a publisher (retrying every 5 ms) publishes `missed`
/// messages with ids; client attempts that would start while it publishes wait until its
/// acks are in (a few ms), and a client connected before then (it raced the publisher in
/// the accept backlog) resubscribes only after them, so every client has `missed` messages
/// to recover. Each client reconnects on its backoff schedule and resubscribes with
/// `since` = the last position it saw.
#[derive(clap::Args)]
pub(crate) struct RecoverArgs {
    /// Base URL, e.g. ws://127.0.0.1:8080.
    #[arg(long)]
    url: String,
    /// Name in the table.
    #[arg(long)]
    label: String,
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Messages published (and received live by every client) before the restart.
    #[arg(long, default_value_t = 10)]
    before: u32,
    /// Messages published right after the restart, before the clients are back.
    #[arg(long, default_value_t = 50)]
    missed: u32,
    /// How a client spaces its attempts.
    #[arg(long, value_enum, default_value = "full-jitter")]
    backoff: Backoff,
    /// The first delay's bound in ms, doubled per failed attempt.
    #[arg(long, default_value_t = 500)]
    base_ms: u64,
    /// The cap on the delay's bound in ms.
    #[arg(long, default_value_t = 30_000)]
    cap_ms: u64,
    /// Created once every client has the messages from before: the caller's signal to
    /// restart the server.
    #[arg(long)]
    ready_file: PathBuf,
    /// Seconds to wait, after the first drop, for every client to have caught up.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

/// The publisher's phase: before the restart, connected again and publishing, done.
const BEFORE: u8 = 0;
const PUBLISHING: u8 = 1;
const PUBLISHED: u8 = 2;

/// What the storm's clients and the publisher share.
struct Shared {
    first_drop: OnceLock<Instant>,
    attempts_ms: Mutex<Vec<u64>>,
    failed: AtomicU64,
    /// Initial `subscribed` frames and live messages received before the restart.
    subscribed0: AtomicU64,
    received0: AtomicU64,
    /// Clients that resubscribed after the restart and have every missed message (or were
    /// told they cannot have them); when each did, in ms after the first drop.
    caught_up_ms: Mutex<Vec<u64>>,
    /// Resubscribes answered `recovered: true`, and the others by reason.
    recovered: AtomicU64,
    unrecovered: Mutex<BTreeMap<String, u64>>,
    /// Messages received after a resubscribe and before its `subscribed` (the replay).
    replayed: AtomicU64,
    /// `error` frames the clients received.
    errors: AtomicU64,
    phase: watch::Sender<u8>,
    /// ms from the first drop until the publisher was welcomed again.
    down_ms: OnceLock<u64>,
}

impl Shared {
    fn new() -> Self {
        Shared {
            first_drop: OnceLock::new(),
            attempts_ms: Mutex::default(),
            failed: AtomicU64::new(0),
            subscribed0: AtomicU64::new(0),
            received0: AtomicU64::new(0),
            caught_up_ms: Mutex::default(),
            recovered: AtomicU64::new(0),
            unrecovered: Mutex::default(),
            replayed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            phase: watch::channel(BEFORE).0,
            down_ms: OnceLock::new(),
        }
    }
}

/// One client's view of the channel.
struct Track {
    /// How often each message (by its `k`, 1-based) arrived.
    seen: Vec<u32>,
    last_k: u64,
    out_of_order: u64,
    position: Option<(u64, String)>,
    /// Between a resubscribe after the restart and its `subscribed`.
    awaiting: bool,
    resubscribed: bool,
    unrecovered: bool,
    caught_up: bool,
}

impl Track {
    fn new(total: u32) -> Self {
        Self {
            seen: vec![0; total as usize + 1],
            last_k: 0,
            out_of_order: 0,
            position: None,
            awaiting: false,
            resubscribed: false,
            unrecovered: false,
            caught_up: false,
        }
    }
}

fn subscribe_text(since: Option<&(u64, String)>) -> String {
    match since {
        Some((offset, epoch)) => format!(
            r#"{{"type":"subscribe","channel":"recover","since":{{"offset":{offset},"epoch":{}}}}}"#,
            Value::String(epoch.clone())
        ),
        None => r#"{"type":"subscribe","channel":"recover"}"#.to_owned(),
    }
}

/// Handles one frame of a storm client.
fn on_frame(text: &str, track: &mut Track, shared: &Shared, before: u32, missed: u32) {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return;
    };
    match v["type"].as_str() {
        Some("message") => {
            let k = v["data"]["k"].as_u64().unwrap_or(0);
            if let (Some(offset), Some(epoch)) = (v["offset"].as_u64(), v["epoch"].as_str()) {
                track.position = Some((offset, epoch.to_owned()));
            }
            if let Some(n) = track.seen.get_mut(k as usize).filter(|_| k > 0) {
                *n += 1;
                if *n == 1 && k < track.last_k {
                    track.out_of_order += 1;
                }
                track.last_k = track.last_k.max(k);
            }
            if track.awaiting {
                shared.replayed.fetch_add(1, Ordering::Relaxed);
            } else if !track.resubscribed && k <= u64::from(before) {
                shared.received0.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some("subscribed") => {
            let position = &v["position"];
            if let (Some(offset), Some(epoch)) =
                (position["offset"].as_u64(), position["epoch"].as_str())
            {
                track.position = Some((offset, epoch.to_owned()));
            }
            if track.awaiting {
                track.awaiting = false;
                track.resubscribed = true;
                if v["recovered"].as_bool() == Some(true) {
                    shared.recovered.fetch_add(1, Ordering::Relaxed);
                } else {
                    track.unrecovered = true;
                    let reason = v["unrecovered"].as_str().unwrap_or("none").to_owned();
                    *shared
                        .unrecovered
                        .lock()
                        .expect("not poisoned")
                        .entry(reason)
                        .or_default() += 1;
                }
            } else if !track.resubscribed {
                shared.subscribed0.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some("error") => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    let first_missed = before as usize + 1;
    let all_missed = track.seen[first_missed..=(before + missed) as usize]
        .iter()
        .all(|&n| n > 0);
    if !track.caught_up && track.resubscribed && (all_missed || track.unrecovered) {
        track.caught_up = true;
        let at = shared
            .first_drop
            .get()
            .map_or(0, |t| t.elapsed().as_millis() as u64);
        shared.caught_up_ms.lock().expect("not poisoned").push(at);
    }
}

/// Publishes messages `ks` on `recover` with ids and waits for their acks: the number
/// acked.
async fn publish_ks(
    ws: &mut Ws,
    ks: std::ops::RangeInclusive<u32>,
    pad: &str,
) -> anyhow::Result<u32> {
    let n = ks.clone().count();
    for k in ks {
        let text = format!(
            r#"{{"type":"publish","id":"k{k}","channel":"recover","data":{{"k":{k},"p":"{pad}"}}}}"#
        );
        ws.feed(Message::text(text)).await?;
    }
    ws.flush().await?;
    let (mut answered, mut acked) = (0, 0);
    while answered < n {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .context("no ack within 10 s")?;
        match msg {
            Some(Ok(Message::Text(t))) if t.as_str().contains(r#""type":"ack""#) => {
                answered += 1;
                acked += 1;
            }
            Some(Ok(Message::Text(t))) if t.as_str().contains(r#""type":"error""#) => {
                eprintln!("publisher: {}", t.as_str());
                answered += 1;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the server closed the publisher"),
        }
    }
    Ok(acked)
}

pub(crate) async fn storm_recover(args: RecoverArgs) -> anyhow::Result<()> {
    let RecoverArgs {
        url,
        label,
        conns,
        before,
        missed,
        backoff,
        base_ms,
        cap_ms,
        ready_file,
        timeout,
    } = args;
    let url: Arc<str> = url.into();
    let total = before + missed;
    let shared = Arc::new(Shared::new());
    let sockets = open_many(conns, |i| {
        let url = url.clone();
        async move {
            let mut ws = welcomed(&url, i).await?;
            ws.send(Message::text(subscribe_text(None))).await?;
            Ok(ws)
        }
    })
    .await?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let tracks: Vec<Arc<Mutex<Track>>> = (0..conns)
        .map(|_| Arc::new(Mutex::new(Track::new(total))))
        .collect();
    for (i, mut ws) in sockets.into_iter().enumerate() {
        let (shared, url, track) = (shared.clone(), url.clone(), tracks[i].clone());
        let mut rng = SplitMix(seed ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        let mut phase = shared.phase.subscribe();
        tokio::spawn(async move {
            loop {
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg {
                        let mut track = track.lock().expect("not poisoned");
                        on_frame(t.as_str(), &mut track, &shared, before, missed);
                    }
                }
                let dropped = *shared.first_drop.get_or_init(Instant::now);
                let mut attempt = 0;
                ws = loop {
                    let delay = backoff.delay(attempt, base_ms, cap_ms, rng.next_f64());
                    tokio::time::sleep(delay).await;
                    // The publisher is back and publishing: its messages go first.
                    let _ = phase.wait_for(|p| *p != PUBLISHING).await;
                    let started = dropped.elapsed().as_millis() as u64;
                    shared
                        .attempts_ms
                        .lock()
                        .expect("not poisoned")
                        .push(started);
                    // A connection that raced the publisher's (in the restarted server's
                    // accept backlog) resubscribes once its messages are acked too.
                    let opened = tokio::time::timeout(Duration::from_secs(10), async {
                        let ws = welcomed(&url, i).await?;
                        let _ = phase.wait_for(|p| *p == PUBLISHED).await;
                        anyhow::Ok(ws)
                    })
                    .await;
                    if let Ok(Ok(mut ws)) = opened {
                        let since = {
                            let mut track = track.lock().expect("not poisoned");
                            track.awaiting = true;
                            track.position.clone()
                        };
                        if ws
                            .send(Message::text(subscribe_text(since.as_ref())))
                            .await
                            .is_ok()
                        {
                            break ws;
                        }
                    }
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    attempt += 1;
                };
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while shared.subscribed0.load(Ordering::SeqCst) < conns as u64 {
        if Instant::now() > deadline {
            bail!("not every client was subscribed within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Before the restart: `before` messages every client receives live.
    let pad = "x".repeat(60);
    let mut publisher = welcomed(&url, conns).await?;
    let acked = publish_ks(&mut publisher, 1..=before, &pad).await?;
    if acked < before {
        bail!("only {acked} of {before} publishes before the restart were acked");
    }
    let want = u64::from(before) * conns as u64;
    while shared.received0.load(Ordering::SeqCst) < want {
        if Instant::now() > deadline {
            bail!("the clients did not receive the messages from before within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let publisher_task = {
        let (shared, url, pad) = (shared.clone(), url.clone(), pad.clone());
        tokio::spawn(async move {
            crate::hold(&mut publisher, crate::Dialect::Switchboard).await;
            let dropped = *shared.first_drop.get_or_init(Instant::now);
            let mut ws = loop {
                if dropped.elapsed() > Duration::from_secs(60) {
                    bail!("the server was not back within 60 s");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                if let Ok(Ok(ws)) =
                    tokio::time::timeout(Duration::from_secs(2), welcomed(&url, conns)).await
                {
                    break ws;
                }
            };
            let _ = shared.down_ms.set(dropped.elapsed().as_millis() as u64);
            shared.phase.send_replace(PUBLISHING);
            let acked = publish_ks(&mut ws, before + 1..=before + missed, &pad).await;
            shared.phase.send_replace(PUBLISHED);
            let acked = acked?;
            // Held open until the run ends.
            Ok((ws, acked))
        })
    };
    let dropped = crate::wait_for_restart(&ready_file, &shared.first_drop).await?;
    let mut all = None;
    while dropped.elapsed() < Duration::from_secs(timeout) {
        if shared.caught_up_ms.lock().expect("not poisoned").len() >= conns {
            all = Some(dropped.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Late duplicates would arrive now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_publisher, published) = publisher_task.await??;
    let (mut lost, mut duplicated, mut out_of_order) = (0u64, 0u64, 0u64);
    for track in &tracks {
        let track = track.lock().expect("not poisoned");
        for &n in &track.seen[1..] {
            if n == 0 {
                lost += 1;
            }
            duplicated += u64::from(n.saturating_sub(1));
        }
        out_of_order += track.out_of_order;
    }
    let mut caught = shared.caught_up_ms.lock().expect("not poisoned").clone();
    caught.sort_unstable();
    let all = match all {
        Some(t) => format!("{:.2}", t.as_secs_f64()),
        None => format!("not within {timeout} s ({} of {conns})", caught.len()),
    };
    let median = caught
        .get(caught.len() / 2)
        .map_or("–".to_owned(), |&m| format!("{:.2}", m as f64 / 1000.0));
    let mut attempts = shared.attempts_ms.lock().expect("not poisoned").clone();
    attempts.sort_unstable();
    let unrecovered = shared.unrecovered.lock().expect("not poisoned").clone();
    let not_recovered = if unrecovered.is_empty() {
        "0".to_owned()
    } else {
        let list: Vec<String> = unrecovered
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        list.join(", ")
    };
    println!(
        "| {label} | {conns} | {published} | {} | {median} | {all} | {} | {} | {:.0} | {:.0} | {} | {not_recovered} | {} | {lost} | {duplicated} | {out_of_order} | {} |",
        shared.down_ms.get().copied().unwrap_or(0),
        attempts.len(),
        shared.failed.load(Ordering::SeqCst),
        peak_rate(&attempts, 100),
        peak_rate(&attempts, 1000),
        shared.recovered.load(Ordering::SeqCst),
        shared.replayed.load(Ordering::SeqCst),
        shared.errors.load(Ordering::SeqCst),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_frames() {
        let ack = r#"{"type":"ack","id":"17","offset":3}"#;
        assert_eq!(str_field(ack, "id"), Some("17"));
        let err = r#"{"type":"error","id":"4","code":"unavailable","message":"x"}"#;
        assert_eq!(str_field(err, "code"), Some("unavailable"));
        assert_eq!(str_field(ack, "code"), None);
    }

    fn shared() -> Shared {
        Shared::new()
    }

    fn message(k: u32, offset: u64) -> String {
        format!(
            r#"{{"type":"message","channel":"recover","data":{{"k":{k},"p":"x"}},"ts":1,"offset":{offset},"epoch":"e1"}}"#
        )
    }

    #[test]
    fn a_client_tracks_recovery() {
        let s = shared();
        let mut t = Track::new(4);
        let sub =
            r#"{"type":"subscribed","channel":"recover","position":{"offset":0,"epoch":"e1"}}"#;
        on_frame(sub, &mut t, &s, 2, 2);
        on_frame(&message(1, 1), &mut t, &s, 2, 2);
        on_frame(&message(2, 2), &mut t, &s, 2, 2);
        assert_eq!(s.received0.load(Ordering::SeqCst), 2);
        assert_eq!(t.position, Some((2, "e1".into())));
        let since = subscribe_text(t.position.as_ref());
        assert!(
            since.contains(r#""since":{"offset":2,"epoch":"e1"}"#),
            "{since}"
        );
        // After the restart: one missed message replayed, a duplicate, then subscribed.
        t.awaiting = true;
        on_frame(&message(3, 3), &mut t, &s, 2, 2);
        on_frame(&message(3, 3), &mut t, &s, 2, 2);
        let sub = r#"{"type":"subscribed","channel":"recover","position":{"offset":3,"epoch":"e1"},"recovered":true}"#;
        on_frame(sub, &mut t, &s, 2, 2);
        assert!(!t.caught_up);
        on_frame(&message(4, 4), &mut t, &s, 2, 2);
        assert!(t.caught_up);
        assert_eq!(s.recovered.load(Ordering::SeqCst), 1);
        assert_eq!(s.replayed.load(Ordering::SeqCst), 2);
        assert_eq!(t.seen, [0, 1, 1, 2, 1]);
        assert_eq!(t.out_of_order, 0);
    }

    #[test]
    fn an_unrecovered_client_is_done_with_its_loss() {
        let s = shared();
        let mut t = Track::new(3);
        t.awaiting = true;
        let sub = r#"{"type":"subscribed","channel":"recover","position":{"offset":0,"epoch":"e2"},"unrecovered":"epoch"}"#;
        on_frame(sub, &mut t, &s, 1, 2);
        assert!(t.caught_up);
        assert_eq!(s.unrecovered.lock().unwrap().get("epoch"), Some(&1));
    }
}
