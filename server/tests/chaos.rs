//! Chaos: servers are killed with SIGKILL in the middle of the traffic and started again,
//! repeatedly. Publishers and subscribers are native clients that reconnect by
//! themselves. In the end every subscriber must hold, for every channel, exactly the
//! channel's sequence as the publishers' acks numbered it: nothing lost, nothing twice,
//! in order, and no subscription ever reset.
//!
//! Two set-ups: one node on its default durable store, killed and restarted on the same
//! address; and three nodes on Redis behind nginx (the example in docs/scaling.md), one
//! of them killed and restarted each time, so every reconnect lands on another node.
//!
//! The test command runs a small round (`CHAOS_KILLS=4`, `CHAOS_MESSAGES=600`); the
//! documented soak is `CHAOS_KILLS=50 CHAOS_MESSAGES=20000 cargo test --release -p
//! switchboard-server --test chaos -- --nocapture`.

mod common;

use std::collections::BTreeMap;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use serde::{Deserialize, Serialize};
use switchboard_client::native::{Client, NativeOptions, SubItem};
use switchboard_client::{Backoff, Options, Recovery, SubState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Msg {
    publisher: u32,
    seq: u32,
}

const CHANNELS: u32 = 3;
const PUBLISHERS: u32 = 3;
const SUBSCRIBERS: usize = 4;
/// Publishes each publisher keeps in flight.
const WINDOW: usize = 16;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the clients connect to, and what is killed.
trait Target: Send + 'static {
    fn url(&self) -> String;
    /// Kills the `i`th victim with SIGKILL and starts it again, after `pause`.
    fn disrupt(&mut self, i: u64, pause: Duration);
    fn describe(&self) -> String;
}

/// The server binary on `addr`, on the disk store in `data`.
struct Server {
    child: Child,
}

impl Server {
    fn start(addr: &str, data: &std::path::Path, durability: &str) -> Self {
        let args: Vec<std::ffi::OsString> = [
            "--addr",
            addr,
            "--history",
            "disk",
            "--durability",
            durability,
            "--data-dir",
        ]
        .into_iter()
        .map(Into::into)
        .chain([data.as_os_str().to_owned()])
        .collect();
        Self {
            child: common::cluster::spawn_server(&args),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGKILL: no shutdown, no clean close of the store.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One node on its durable store, restarted on the same address and data.
struct OneNode {
    server: Option<Server>,
    addr: String,
    data: tempfile::TempDir,
    durability: &'static str,
}

impl OneNode {
    fn start(durability: &'static str) -> Self {
        let data = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", common::redis::free_port());
        let server = Some(Server::start(&addr, data.path(), durability));
        Self {
            server,
            addr,
            data,
            durability,
        }
    }
}

impl Target for OneNode {
    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    fn disrupt(&mut self, _i: u64, pause: Duration) {
        drop(self.server.take());
        std::thread::sleep(pause);
        self.server = Some(Server::start(&self.addr, self.data.path(), self.durability));
    }

    fn describe(&self) -> String {
        format!("one node, --durability {}", self.durability)
    }
}

/// Three nodes on Redis (append-only, fsync always) behind nginx.
struct Cluster {
    nginx: common::cluster::Nginx,
    nodes: Vec<common::cluster::Node>,
    _redis: common::redis::Redis,
}

impl Target for Cluster {
    fn url(&self) -> String {
        self.nginx.url()
    }

    fn disrupt(&mut self, i: u64, pause: Duration) {
        let n = self.nodes.len();
        let node = &mut self.nodes[i as usize % n];
        node.kill();
        std::thread::sleep(pause);
        node.restart();
    }

    fn describe(&self) -> String {
        format!("{} nodes on Redis behind nginx", self.nodes.len())
    }
}

fn options() -> NativeOptions {
    NativeOptions {
        core: Options {
            backoff: Backoff {
                base: Duration::from_millis(50),
                max: Duration::from_millis(500),
                ..Backoff::default()
            },
            ..Options::default()
        },
        ..NativeOptions::default()
    }
}

/// What one subscriber received, per channel, and whether it saw a reset.
#[derive(Default)]
struct Received {
    per_channel: BTreeMap<u32, Vec<Msg>>,
    resets: Vec<String>,
    /// Resubscribes that recovered what was missed.
    recoveries: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_restarts_lose_and_duplicate_nothing() {
    chaos(OneNode::start("fsync")).await;
}

/// `--durability os` acks before the fsync: a killed process loses nothing either, since
/// what it wrote is in the operating system's cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_restarts_lose_and_duplicate_nothing_with_os_durability() {
    chaos(OneNode::start("os")).await;
}

/// Across nodes: a node is killed each time, its clients reconnect through nginx to
/// another node and recover there from the Redis streams; resent publishes are
/// recognised by the dedupe window in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_nodes_behind_nginx_loses_and_duplicates_nothing() {
    let Some(redis) = common::redis::Redis::start_with(true) else {
        return;
    };
    let nodes: Vec<_> = (0..3)
        .map(|_| common::cluster::Node::start(&redis.url(), &[]))
        .collect();
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    let Some(nginx) = common::cluster::Nginx::start(&ports) else {
        return;
    };
    chaos(Cluster {
        nginx,
        nodes,
        _redis: redis,
    })
    .await;
}

async fn chaos(target: impl Target) {
    let kills = env_or("CHAOS_KILLS", 4);
    let per_publisher = env_or("CHAOS_MESSAGES", 600) as u32 / PUBLISHERS;
    let url = target.url();
    let label = target.describe();
    let target = Arc::new(Mutex::new(target));

    // Subscribers first, live on every channel.
    let mut received = Vec::new();
    let mut subscriber_tasks = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let client = Client::connect(url.clone(), options());
        let got = Arc::new(Mutex::new(Received::default()));
        for ch in 0..CHANNELS {
            let mut sub = client.subscribe::<Msg>(&format!("chaos:{ch}"));
            loop {
                match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
                    Ok(Some(SubItem::State(SubState::Live { .. }))) => break,
                    Ok(Some(_)) => {}
                    other => panic!("no subscription: {other:?}"),
                }
            }
            let got = got.clone();
            subscriber_tasks.push(tokio::spawn(async move {
                while let Some(item) = sub.next().await {
                    let mut g = got.lock().unwrap();
                    match item {
                        SubItem::Message(Ok(m)) => {
                            g.per_channel.entry(ch).or_default().push(m.data);
                        }
                        SubItem::State(SubState::Live {
                            recovery: Recovery::Reset(why),
                            ..
                        }) => g.resets.push(format!("chaos:{ch}: {why:?}")),
                        SubItem::State(SubState::Live {
                            recovery: Recovery::Recovered,
                            ..
                        }) => g.recoveries += 1,
                        SubItem::Lagged { missed } => g.resets.push(format!("lagged {missed}")),
                        SubItem::Message(Err(e)) => g.resets.push(format!("bad data {e:?}")),
                        _ => {}
                    }
                }
            }));
        }
        received.push((client, got));
    }

    // The killer: SIGKILL, start again shortly after, `kills` times.
    let killer = {
        let target = target.clone();
        tokio::spawn(async move {
            for i in 0..kills {
                let pause = 300 + (i * 397) % 700;
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let target = target.clone();
                let down = Duration::from_millis(50 + (i * 131) % 200);
                tokio::task::spawn_blocking(move || target.lock().unwrap().disrupt(i, down))
                    .await
                    .unwrap();
            }
        })
    };

    // Publishers: each message to one channel, a window of publishes in flight; the
    // acks' offsets number each channel's sequence.
    // Paced so the traffic spans the kills.
    let gap = Duration::from_millis(kills * 900) / per_publisher.max(1);
    let started = Instant::now();
    let mut publisher_tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let client = Client::connect(url.clone(), options());
        publisher_tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut in_flight = FuturesOrdered::new();
            for seq in 0..per_publisher {
                let msg = Msg { publisher: p, seq };
                let ch = (p + seq) % CHANNELS;
                let publish = client.publish(&format!("chaos:{ch}"), &msg).unwrap();
                in_flight.push_back(async move { (ch, msg, publish.await) });
                if in_flight.len() >= WINDOW {
                    acked.push(in_flight.next().await.unwrap());
                }
                tokio::time::sleep(gap).await;
            }
            while let Some(done) = in_flight.next().await {
                acked.push(done);
            }
            drop(client);
            acked
        }));
    }
    let mut expected: BTreeMap<u32, BTreeMap<u64, Msg>> = BTreeMap::new();
    let mut failed = Vec::new();
    for task in publisher_tasks {
        for (ch, msg, result) in task.await.unwrap() {
            match result {
                Ok(Some(offset)) => {
                    let previous = expected.entry(ch).or_default().insert(offset, msg);
                    assert!(previous.is_none(), "offset {offset} acked twice on {ch}");
                }
                other => failed.push(format!("{msg:?}: {other:?}")),
            }
        }
    }
    killer.await.unwrap();
    let published = started.elapsed();
    assert!(failed.is_empty(), "publishes failed: {failed:?}");
    let expected: BTreeMap<u32, Vec<Msg>> = expected
        .into_iter()
        .map(|(ch, by_offset)| (ch, by_offset.into_values().collect()))
        .collect();
    let total: usize = expected.values().map(Vec::len).sum();
    assert_eq!(total, (per_publisher * PUBLISHERS) as usize);

    // Every subscriber catches up (or the wait ends and the comparison shows what is
    // missing).
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let done = received.iter().all(|(_, got)| {
            let g = got.lock().unwrap();
            expected
                .iter()
                .all(|(ch, want)| g.per_channel.get(ch).map_or(0, Vec::len) >= want.len())
        });
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing more may come: a late duplicate would show here.
    tokio::time::sleep(Duration::from_millis(300)).await;

    println!(
        "chaos ({label}): {kills} SIGKILLs, {total} messages on {CHANNELS} channels from {PUBLISHERS} \
         publishers in {:.1} s, {SUBSCRIBERS} subscribers",
        published.as_secs_f64()
    );
    println!(
        "| subscriber | channel | expected | received | lost | duplicated | out of order | recoveries |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut bad = Vec::new();
    for (i, (_, got)) in received.iter().enumerate() {
        let g = got.lock().unwrap();
        for (ch, want) in &expected {
            let have = g.per_channel.get(ch).cloned().unwrap_or_default();
            let mut counts: BTreeMap<Msg, u32> = BTreeMap::new();
            for m in &have {
                *counts.entry(*m).or_default() += 1;
            }
            let lost = want.iter().filter(|m| !counts.contains_key(m)).count();
            let duplicated: u32 = counts.values().map(|n| n - 1).sum();
            let in_order = {
                let mut seen = std::collections::HashSet::new();
                let firsts: Vec<Msg> = have.iter().filter(|m| seen.insert(**m)).copied().collect();
                let wanted: Vec<Msg> = want
                    .iter()
                    .filter(|m| counts.contains_key(m))
                    .copied()
                    .collect();
                firsts == wanted
            };
            println!(
                "| {i} | chaos:{ch} | {} | {} | {lost} | {duplicated} | {} | {} |",
                want.len(),
                have.len(),
                if in_order { 0 } else { 1 },
                g.recoveries
            );
            if have != *want {
                bad.push(format!("subscriber {i} chaos:{ch}"));
            }
        }
        if !g.resets.is_empty() {
            bad.push(format!("subscriber {i}: {:?}", g.resets));
        }
    }
    assert!(bad.is_empty(), "{bad:?}");
    let recoveries: u32 = received
        .iter()
        .map(|(_, g)| g.lock().unwrap().recoveries)
        .sum();
    assert!(
        recoveries >= SUBSCRIBERS as u32 * CHANNELS,
        "the kills hit the subscribers ({recoveries} recoveries)"
    );
    drop(received);
    for t in subscriber_tasks {
        t.abort();
    }
}
