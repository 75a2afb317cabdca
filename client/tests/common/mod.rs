//! Helpers of the client core's tests: a deterministic generator for simulations, and the
//! `welcome` a simulated server sends.
#![allow(dead_code, unreachable_pub)]

use switchboard_protocol::{Limits, ServerFrame};

/// A small deterministic generator for a simulation's choices (xorshift).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() % 1_000_000) as f64 / 1_000_000.0 < p
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A server's `welcome` announcing `limits` (and its clock, if given).
pub fn welcome(limits: Limits, ts: Option<u64>) -> ServerFrame {
    ServerFrame::Welcome {
        client_id: "c".into(),
        session_id: "s".into(),
        resumed: false,
        protocol: 1,
        user_id: None,
        heartbeat_ms: 25_000,
        limits,
        ts,
    }
}
