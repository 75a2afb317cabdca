//! What the load generator's tests share: one small fan-out run, read back as its row.
#![allow(unreachable_pub)]

use std::process::Command;

/// The columns of one fan-out row (label, subs, rate, delivered/s, loss, p50, p99, max,
/// server CPU, loadgen CPU, wire bytes, CPU per million): 30 subscribers, 200 messages/s
/// for 1 s. `global` goes before the `fanout` subcommand (`--tls-ca`), `args` after it.
pub fn fanout_row(global: &[&str], args: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--max-secs", "60"])
        .args(global)
        .arg("fanout")
        .args(args)
        .args([
            "--label", "t", "--subs", "30", "--rates", "200", "--secs", "1",
        ])
        .output()
        .expect("loadgen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let row = text
        .lines()
        .find(|l| l.starts_with("| t |"))
        .unwrap_or_else(|| panic!("a row in {text}"));
    row.trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_owned())
        .collect()
}
