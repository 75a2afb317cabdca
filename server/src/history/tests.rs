//! What every store must do, run against the memory store and the disk store; then what
//! only the disk store promises: restarts, crashes, its byte budget and failed writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::executor::block_on;
use serde_json::json;
use switchboard_protocol::{Channel, ServerFrame, StreamPosition, codec};

use super::*;
use crate::frame::message_body;

pub(super) fn body(n: u64) -> Bytes {
    message_body(&"c".into(), None, json!(n).into(), 0, false)
}

pub(super) fn offsets(messages: &[Encoded]) -> Vec<u64> {
    messages
        .iter()
        .map(
            |f| match codec::decode_server(f.as_str()).remove(0).unwrap() {
                ServerFrame::Message { offset, .. } => offset.unwrap(),
                other => panic!("{other:?}"),
            },
        )
        .collect()
}

/// Appends and waits until stored.
fn append(h: &dyn Store, ch: &Channel, id: Option<&str>, n: u64) -> Appended {
    let appending = h.append(ch, id, body(n)).unwrap();
    block_on(appending.stored).unwrap();
    appending.appended
}

fn page(answer: Since) -> Page {
    match answer {
        Since::Complete(page) => page,
        other => panic!("expected a page, got {other:?}"),
    }
}

fn retention(max_messages: usize) -> Retention {
    Retention {
        max_messages,
        ..Retention::default()
    }
}

/// A disk store in a fresh directory (kept while the returned guard lives).
fn disk(retention: Retention) -> (DiskHistory, tempfile::TempDir) {
    disk_with(retention, Durability::Fsync)
}

fn disk_with(retention: Retention, durability: Durability) -> (DiskHistory, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let h = DiskHistory::open(&dir.path().join("h.redb"), durability, retention).unwrap();
    (h, dir)
}

fn each_store(retention: Retention, test: impl Fn(&dyn Store)) {
    test(&MemoryHistory::new(retention.clone()));
    let (h, _dir) = disk(retention);
    test(&h);
}

#[test]
fn offsets_count_up_and_duplicates_keep_their_first_offset() {
    each_store(Retention::default(), |h| {
        let ch = Channel::from("c");
        let start = block_on(h.position(&ch)).unwrap();
        assert_eq!(start.offset, 0);
        let a = append(h, &ch, Some("u:1/m1"), 1);
        let b = append(h, &ch, None, 2);
        let again = append(h, &ch, Some("u:1/m1"), 1);
        assert_eq!((a.position.offset, b.position.offset), (1, 2));
        assert_eq!(a.position.epoch, start.epoch, "position fixed the epoch");
        assert!(again.duplicate && again.frame.is_none());
        assert_eq!(again.position, a.position);
        assert_eq!(block_on(h.position(&ch)).unwrap().offset, 2);
        // Another channel has its own stream.
        let other = block_on(h.position(&Channel::from("d"))).unwrap();
        assert_eq!(other.offset, 0);
        assert_ne!(other.epoch, start.epoch);
    });
}

#[test]
fn since_is_exact_within_its_limits_or_says_why_not() {
    each_store(retention(5), |h| {
        let ch = Channel::from("c");
        for i in 0..8 {
            append(h, &ch, None, i);
        }
        let top = block_on(h.position(&ch)).unwrap();
        let at = |offset| StreamPosition {
            offset,
            epoch: top.epoch.clone(),
        };
        let all = ReadLimit::messages(100);
        let p = page(block_on(h.since(&ch, &at(5), all)).unwrap());
        assert_eq!(
            (offsets(&p.messages), p.first, p.more()),
            (vec![6, 7, 8], 6, false)
        );
        let p = page(block_on(h.since(&ch, &at(8), all)).unwrap());
        assert!(p.messages.is_empty() && !p.more());
        // Limits cut the page; `more` says so.
        let p = page(block_on(h.since(&ch, &at(4), ReadLimit::messages(2))).unwrap());
        assert_eq!(
            (offsets(&p.messages), p.more(), p.last()),
            (vec![5, 6], true, 6)
        );
        let one_frame = p.messages[0].len();
        let bytes = ReadLimit {
            messages: 100,
            bytes: one_frame + 1,
        };
        let p = page(block_on(h.since(&ch, &at(4), bytes)).unwrap());
        assert_eq!(offsets(&p.messages), [5]);
        let why = |since: &StreamPosition| match block_on(h.since(&ch, since, all)) {
            Ok(Since::Unrecoverable(why, pos)) => {
                assert_eq!(pos, top);
                why
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(why(&at(2)), Unrecoverable::Trimmed, "1..=3 are gone");
        assert_eq!(why(&at(0)), Unrecoverable::Trimmed);
        assert_eq!(why(&at(9)), Unrecoverable::Epoch, "beyond the top");
        let other = StreamPosition {
            offset: 5,
            epoch: "other".into(),
        };
        assert_eq!(why(&other), Unrecoverable::Epoch);
        // The latest, oldest first.
        let p = block_on(h.latest(&ch, ReadLimit::messages(2))).unwrap();
        assert_eq!((offsets(&p.messages), p.first), (vec![7, 8], 7));
        let p = block_on(h.latest(&ch, ReadLimit::messages(100))).unwrap();
        assert_eq!(offsets(&p.messages), [4, 5, 6, 7, 8]);
        let p = block_on(h.latest(&ch, bytes)).unwrap();
        assert_eq!(offsets(&p.messages), [8]);
        let p = block_on(h.latest(&Channel::from("empty"), ReadLimit::messages(5))).unwrap();
        assert_eq!((p.messages.len(), p.first, p.position.offset), (0, 1, 0));
    });
}

#[test]
fn per_channel_rules_override_the_default_retention() {
    let rules = Retention {
        rules: vec!["ticker:*=2".parse().unwrap(), "log=0".parse().unwrap()],
        ..retention(10)
    };
    each_store(rules, |h| {
        for name in ["ticker:a", "log", "chat"] {
            let ch = Channel::from(name);
            for i in 0..5 {
                append(h, &ch, None, i);
            }
        }
        let kept = |name: &str| {
            let p = block_on(h.latest(&Channel::from(name), ReadLimit::messages(100))).unwrap();
            offsets(&p.messages)
        };
        assert_eq!(kept("ticker:a"), [4, 5]);
        assert_eq!(kept("log"), Vec::<u64>::new(), "numbered, not kept");
        assert_eq!(kept("chat"), [1, 2, 3, 4, 5]);
    });
}

#[test]
fn retention_rules_parse() {
    let r: RetentionRule = "ticker:*=10/1m".parse().unwrap();
    assert_eq!(
        (r.pattern.as_str(), r.max_messages, r.max_age_ms),
        ("ticker:*", 10, 60_000)
    );
    let r: RetentionRule = "chat=500".parse().unwrap();
    assert_eq!(r.max_age_ms, u64::MAX, "the default age");
    assert!("chat".parse::<RetentionRule>().is_err());
    assert!("chat=x".parse::<RetentionRule>().is_err());
    assert!("chat=1/soon".parse::<RetentionRule>().is_err());
    let ret = Retention {
        rules: vec![r],
        ..Retention::default()
    };
    assert_eq!(ret.for_channel("chat"), (500, ret.max_age_ms));
    assert_eq!(ret.for_channel("other"), (100, ret.max_age_ms));
}

#[test]
fn disk_messages_past_their_age_are_not_returned_and_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(1_000_000));
    let clock: Clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::Relaxed))
    };
    let retention = Retention {
        max_age_ms: 1000,
        ..Retention::default()
    };
    let path = dir.path().join("h.redb");
    let h = DiskHistory::open_with_clock(&path, Durability::Fsync, retention, clock).unwrap();
    let ch = Channel::from("c");
    let first = append(&h, &ch, None, 1);
    now.fetch_add(600, Ordering::Relaxed);
    append(&h, &ch, None, 2);
    now.fetch_add(600, Ordering::Relaxed);
    let p = block_on(h.latest(&ch, ReadLimit::messages(10))).unwrap();
    assert_eq!(offsets(&p.messages), [2]);
    let since_start = StreamPosition {
        offset: 0,
        epoch: first.position.epoch.clone(),
    };
    assert!(matches!(
        block_on(h.since(&ch, &since_start, ReadLimit::messages(10))).unwrap(),
        Since::Unrecoverable(Unrecoverable::Trimmed, _)
    ));
    let bytes = h.bytes();
    // The next write's trim drops it from the file and the byte count.
    append(&h, &ch, None, 3);
    let one = (body(3).len() + 30 + MESSAGE_OVERHEAD) as u64;
    assert!(h.bytes() < bytes + one, "{} vs {bytes}", h.bytes());
    // A stream nobody writes to is swept (once a minute; here, now).
    let quiet = Channel::from("quiet");
    append(&h, &quiet, None, 1);
    let before_sweep = h.bytes();
    now.fetch_add(2000, Ordering::Relaxed);
    h.sweep_now();
    assert!(h.bytes() < before_sweep, "{} vs {before_sweep}", h.bytes());
    let p = block_on(h.latest(&quiet, ReadLimit::messages(10))).unwrap();
    assert!(p.messages.is_empty());
}

#[test]
fn a_damaged_file_is_moved_aside_with_os_durability_and_refused_with_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.redb");
    std::fs::write(&path, vec![0xA5; 64 << 10]).unwrap();
    assert!(
        DiskHistory::open(&path, Durability::Fsync, Retention::default()).is_err(),
        "fsync'd history is never thrown away"
    );
    let h = DiskHistory::open(&path, Durability::Os, Retention::default()).unwrap();
    assert!(dir.path().join("h.redb.damaged").exists());
    let ch = Channel::from("c");
    assert_eq!(append(&h, &ch, None, 1).position.offset, 1, "starts empty");
}

#[test]
fn disk_keeps_offsets_epochs_messages_and_publish_ids_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.redb");
    let ch = Channel::from("c");
    let before = {
        let h = DiskHistory::open(&path, Durability::Fsync, Retention::default()).unwrap();
        for i in 1..=3 {
            append(&h, &ch, Some(&format!("id{i}")), i);
        }
        let pos = block_on(h.position(&ch)).unwrap();
        h.close();
        pos
    };
    let h = DiskHistory::open(&path, Durability::Fsync, Retention::default()).unwrap();
    assert_eq!(block_on(h.position(&ch)).unwrap(), before);
    let again = append(&h, &ch, Some("id2"), 2);
    assert!(again.duplicate, "the publish-id window survived");
    assert_eq!(again.position.offset, 2);
    assert_eq!(append(&h, &ch, None, 4).position.offset, 4);
    let since = StreamPosition {
        offset: 1,
        epoch: before.epoch.clone(),
    };
    let p = page(block_on(h.since(&ch, &since, ReadLimit::messages(10))).unwrap());
    assert_eq!(offsets(&p.messages), [2, 3, 4]);
}

#[test]
fn disk_keeps_everything_acked_when_the_process_dies() {
    for durability in [Durability::Fsync, Durability::Os] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.redb");
        let ch = Channel::from("c");
        let acked = {
            let h = DiskHistory::open(&path, durability, Retention::default()).unwrap();
            for i in 1..=5 {
                append(&h, &ch, Some(&format!("id{i}")), i);
            }
            let pos = block_on(h.position(&ch)).unwrap();
            h.simulate_crash();
            pos
        };
        let h = DiskHistory::open(&path, durability, Retention::default()).unwrap();
        assert_eq!(block_on(h.position(&ch)).unwrap(), acked, "{durability}");
        let p = block_on(h.latest(&ch, ReadLimit::messages(10))).unwrap();
        assert_eq!(offsets(&p.messages), [1, 2, 3, 4, 5], "{durability}");
        assert!(append(&h, &ch, Some("id5"), 5).duplicate);
    }
}

#[test]
fn disk_with_os_durability_starts_new_epochs_after_an_unclean_stop_and_a_reboot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.redb");
    let ch = Channel::from("c");
    let acked = {
        let h = DiskHistory::open(&path, Durability::Os, Retention::default()).unwrap();
        append(&h, &ch, None, 1);
        let pos = block_on(h.position(&ch)).unwrap();
        h.simulate_crash();
        pos
    };
    // As if the machine had restarted since: another boot id.
    {
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(disk::META_TABLE)
            .unwrap()
            .insert("boot", b"another boot".as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    let h = DiskHistory::open(&path, Durability::Os, Retention::default()).unwrap();
    let now = block_on(h.position(&ch)).unwrap();
    assert_ne!(
        now.epoch, acked.epoch,
        "the last second may be lost: a new epoch"
    );
    assert!(matches!(
        block_on(h.since(&ch, &acked, ReadLimit::messages(10))).unwrap(),
        Since::Unrecoverable(Unrecoverable::Epoch, _)
    ));
    // A clean stop keeps the epochs.
    h.close();
    drop(h);
    let h = DiskHistory::open(&path, Durability::Os, Retention::default()).unwrap();
    assert_eq!(block_on(h.position(&ch)).unwrap(), now);
}

#[test]
fn disk_stays_within_its_byte_budget_by_dropping_least_recently_written_streams() {
    let budget = 256 << 10;
    // Without an fsync per commit: 4,000 commits.
    let (h, _dir) = disk_with(
        Retention {
            max_disk_bytes: budget,
            max_messages: 5,
            ..Retention::default()
        },
        Durability::Os,
    );
    let busy = Channel::from("busy");
    let first = block_on(h.position(&busy)).unwrap();
    let slack = 8 << 10; // one commit's worth, before the eviction that follows it
    for i in 0..2000u64 {
        let ch = Channel::from(format!("spray-{i}"));
        append(&h, &ch, Some(&format!("id{i}")), i);
        if i % 10 == 0 {
            append(&h, &busy, None, i);
        }
        assert!(h.bytes() <= budget + slack, "{} at {i}", h.bytes());
    }
    assert_eq!(
        block_on(h.position(&busy)).unwrap().epoch,
        first.epoch,
        "the recently written stream stayed"
    );
    // A dropped stream comes back with a new epoch: its offsets never mix.
    let gone = Channel::from("spray-0");
    assert_eq!(block_on(h.position(&gone)).unwrap().offset, 0);
}

#[test]
fn disk_refuses_a_failed_write_and_skips_no_offset() {
    let (h, _dir) = disk(Retention::default());
    let ch = Channel::from("c");
    append(&h, &ch, Some("a"), 1);
    let paused = h.pause_writer();
    h.fail_next_commit();
    let failed = h.append(&ch, Some("b"), body(2)).unwrap();
    let behind = h.append(&ch, None, body(3)).unwrap();
    assert_eq!(failed.appended.position.offset, 2);
    assert_eq!(behind.appended.position.offset, 3);
    drop(paused);
    assert!(block_on(failed.stored).is_err(), "refused");
    assert!(
        block_on(behind.stored).is_err(),
        "queued behind it: refused too"
    );
    assert_eq!(block_on(h.position(&ch)).unwrap().offset, 1);
    // Numbering goes on from the last stored offset, and the id was not remembered.
    let retry = append(&h, &ch, Some("b"), 2);
    assert!(!retry.duplicate);
    assert_eq!(retry.position.offset, 2);
    let p = block_on(h.latest(&ch, ReadLimit::messages(10))).unwrap();
    assert_eq!(offsets(&p.messages), [1, 2]);
}

#[test]
fn disk_duplicate_of_an_append_in_flight_is_acked_once_the_first_is_stored() {
    let (h, _dir) = disk(Retention::default());
    let ch = Channel::from("c");
    let paused = h.pause_writer();
    let first = h.append(&ch, Some("x"), body(1)).unwrap();
    let dup = h.append(&ch, Some("x"), body(1)).unwrap();
    assert!(dup.appended.duplicate);
    assert_eq!(dup.appended.position, first.appended.position);
    assert_eq!(
        block_on(h.position(&ch)).unwrap().offset,
        0,
        "not stored yet"
    );
    drop(paused);
    block_on(dup.stored).unwrap();
    assert_eq!(
        block_on(h.position(&ch)).unwrap().offset,
        1,
        "stored before the ack"
    );
    block_on(first.stored).unwrap();
    // A duplicate of a write that fails fails too (the retry then appends it).
    let paused = h.pause_writer();
    h.fail_next_commit();
    let doomed = h.append(&ch, Some("y"), body(2)).unwrap();
    let dup = h.append(&ch, Some("y"), body(2)).unwrap();
    assert!(dup.appended.duplicate);
    drop(paused);
    assert!(block_on(doomed.stored).is_err());
    assert!(block_on(dup.stored).is_err());
    assert!(!append(&h, &ch, Some("y"), 2).duplicate);
}
