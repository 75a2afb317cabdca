//! The load generator over TLS (`--tls-ca`, what `scripts/bench.sh`'s TLS rows use) against
//! Switchboard's own TLS: every message is counted once, with and without its hand-written
//! permessage-deflate upgrade, and a delivery's wire bytes are counted from after the
//! handshake (checked: counted from the start, this test fails).

mod common;

use std::path::Path;

use clap::Parser;
use switchboard_server::tls::dev_certificate;
use switchboard_server::{AppState, Config};

/// A Switchboard server on a free loopback port, TLS with `cert`/`key` when given; it runs
/// on `rt` until the runtime is dropped.
fn server(rt: &tokio::runtime::Runtime, tls: Option<(&Path, &Path)>) -> String {
    // The publisher's rate raised, as `scripts/bench.sh` does (the default, 50/s with a
    // burst of 100, would refuse a quarter of this test's publishes).
    let mut argv: Vec<String> = [
        "switchboard-server",
        "--history",
        "memory",
        "--rate-per-sec",
        "1000000",
        "--rate-burst",
        "1000000",
    ]
    .map(String::from)
    .to_vec();
    if let Some((cert, key)) = tls {
        for (flag, path) in [("--tls-cert", cert), ("--tls-key", key)] {
            argv.push(flag.into());
            argv.push(path.to_str().unwrap().into());
        }
    }
    let state = AppState::new(Config::parse_from(argv));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(switchboard_server::run(
        listener,
        state,
        std::future::pending(),
    ));
    format!("ws://{addr}")
}

/// One fan-out row's columns against the Switchboard at `url`.
fn fanout(url: &str, global: &[&str]) -> Vec<String> {
    common::fanout_row(global, &["--url", url, "--dialect", "switchboard"])
}

#[test]
fn over_tls_every_message_is_counted_once_and_the_handshake_is_not_a_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dev_certificate(&["127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &dev.cert_pem).unwrap();
    std::fs::write(&key, &dev.key_pem).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let plain_url = server(&rt, None);
    let tls_url = server(&rt, Some((&cert, &key)));
    let ca = cert.to_str().unwrap();

    let plain = fanout(&plain_url, &[]);
    assert_eq!(plain[4], "0.00", "no loss without TLS: {plain:?}");
    for extra in [&["--tls-ca", ca][..], &["--tls-ca", ca, "--deflate"]] {
        let cols = fanout(&tls_url, extra);
        // label, subs, rate, delivered/s, loss, p50, p99, max, cpu, cpu, bytes, cpu/M
        assert_eq!(cols.len(), 12, "{extra:?}: {cols:?}");
        // 200/s for 1 s (the last millisecond's message may fall after the end) × 30.
        let delivered: f64 = cols[3].parse().unwrap();
        assert!(
            (5900.0..=6000.0).contains(&delivered),
            "{extra:?}: {cols:?}"
        );
        assert_eq!(cols[4], "0.00", "no loss, {extra:?}: {cols:?}");
        // 100-byte payloads are under the server's compression threshold (256 bytes), so
        // with `--deflate` too the frames are the plain run's. A TLS 1.3 record adds 22 bytes to what it carries, and at this rate each frame is
        // its own record (batched frames share one): measured 22 more than without TLS.
        // With the handshake and the upgrade counted into the first delivery it measured
        // 30 more (~1.6 KB over 200 deliveries).
        let (bytes, plain_bytes): (f64, f64) =
            (cols[10].parse().unwrap(), plain[10].parse().unwrap());
        let overhead = bytes - plain_bytes;
        assert!(
            (0.0..=25.0).contains(&overhead),
            "{extra:?}: {bytes} bytes per delivery over TLS, {plain_bytes} without"
        );
    }
}
