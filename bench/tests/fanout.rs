//! The fan-out workload end to end, small: the load generator against both bare peers, in
//! one process and spread over worker processes. Every message must be counted once
//! (no loss), whichever process holds the subscriber, and the efficiency columns must be
//! filled in.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Peer(Child, String);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A bare peer on a free loopback port, with `extra` arguments.
fn bare_peer(extra: &[&str]) -> Peer {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bare-peer"))
        .args(["--addr", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("bare-peer");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on http://")
        .map(|a| format!("ws://{a}"))
        .unwrap_or_else(|| panic!("bare-peer said {line:?}"));
    Peer(child, url)
}

/// One fan-out row's columns, subscribers spread over `procs` processes.
fn fanout(url: &str, procs: usize) -> Vec<String> {
    let procs = procs.to_string();
    common::fanout_row(&[], &["--url", url, "--dialect", "raw", "--procs", &procs])
}

#[test]
fn every_message_is_counted_once_in_one_process_and_over_three() {
    for flush_each in [false, true] {
        let peer = bare_peer(if flush_each { &["--flush-each"] } else { &[] });
        for procs in [1, 3] {
            let cols = fanout(&peer.1, procs);
            // label, subs, rate, delivered/s, loss, p50, p99, max, cpu, cpu, bytes, cpu/M
            assert_eq!(cols.len(), 12, "{cols:?}");
            // 200/s for 1 s (the last millisecond's message may fall after the end) × 30.
            let delivered: f64 = cols[3].parse().unwrap();
            assert!(
                (5900.0..=6000.0).contains(&delivered),
                "{procs} processes: {cols:?}"
            );
            assert_eq!(cols[4], "0.00", "no loss, {procs} processes: {cols:?}");
            // The raw payload: {"t":<µs>,"p":"x…"} of about 100 bytes, plus a 2-byte header.
            let bytes: f64 = cols[10].parse().unwrap();
            assert!((90.0..=110.0).contains(&bytes), "{cols:?}");
            let p99: f64 = cols[6].parse().unwrap();
            assert!(p99 > 0.0, "latencies from every process: {cols:?}");
        }
    }
}
