//! The connection caps: how many connections the server holds in total and per client
//! address, and how many of them may still be waiting for a token.
//!
//! Each connection (on `/ws`, and on `/echo` when enabled) holds an [`Admission`] for its
//! whole life; dropping it gives the place back. A connection that must still present a
//! token (the server requires tokens and none came on the URL) also holds a *pending-auth*
//! slot, under caps of their own, until [`Admission::authenticated`] is called or the
//! connection ends: tokenless connections cost the server a socket each and prove nothing
//! about who opened them, so they cannot take more than their share of the server.
//!
//! The per-address caps count the client address the edge resolved
//! ([`crate::edge::client_ip`]), grouped: an IPv4 address counts alone, an IPv6 address
//! counts with its whole /64 (one subscriber line or host typically holds a /64 and can
//! pick any address in it), and an IPv4-mapped IPv6 address counts as its IPv4 address.
//!
//! Locking: one `std::sync::Mutex`, held for a map lookup on connect, on authentication
//! and on close.

use std::collections::HashMap;
use std::fmt::Write;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use crate::config::Config;

/// The limits, from the options of the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// `--max-connections`: connections in total.
    pub max_connections: usize,
    /// `--max-connections-per-ip`: connections from one address (IPv6: one /64).
    pub max_connections_per_ip: usize,
    /// `--max-pending-auth`: connections waiting for a token, in total.
    pub max_pending_auth: usize,
    /// `--max-pending-auth-per-ip`: connections waiting for a token from one address.
    pub max_pending_auth_per_ip: usize,
}

impl Caps {
    /// The caps `config` sets.
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_connections: config.max_connections,
            max_connections_per_ip: config.max_connections_per_ip,
            max_pending_auth: config.max_pending_auth,
            max_pending_auth_per_ip: config.max_pending_auth_per_ip,
        }
    }
}

/// Which cap refused a connection; `Display` names its option, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The server holds `--max-connections` connections.
    #[error("max-connections")]
    Total,
    /// This address holds `--max-connections-per-ip` connections.
    #[error("max-connections-per-ip")]
    PerIp,
    /// `--max-pending-auth` connections are waiting for a token.
    #[error("max-pending-auth")]
    PendingAuth,
    /// This address has `--max-pending-auth-per-ip` connections waiting for a token.
    #[error("max-pending-auth-per-ip")]
    PendingAuthPerIp,
}

/// The server's connection counts under its [`Caps`] (a cheap clone).
#[derive(Clone)]
pub struct Admissions {
    inner: Arc<Inner>,
}

struct Inner {
    caps: Caps,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    /// Admitted connections.
    total: usize,
    /// Admitted connections still waiting for a token.
    pending: usize,
    /// Both, per address group (see [`group`]); an entry exists while it has connections.
    per_ip: HashMap<IpAddr, PerIp>,
}

#[derive(Default, Clone, Copy)]
struct PerIp {
    connections: usize,
    pending: usize,
}

impl Admissions {
    /// No connections yet, under `caps`.
    pub fn new(caps: Caps) -> Self {
        Self {
            inner: Arc::new(Inner {
                caps,
                counts: Mutex::default(),
            }),
        }
    }

    /// No connections yet, under the caps `config` sets.
    pub fn from_config(config: &Config) -> Self {
        Self::new(Caps::from_config(config))
    }

    /// The caps in force.
    pub fn caps(&self) -> Caps {
        self.inner.caps
    }

    /// Admits a connection from the client address `ip` if the caps allow it. With
    /// `pending_auth` (the connection must still send a token) it also takes a pending-auth
    /// slot. Nothing is taken when a cap refuses.
    pub fn admit(&self, ip: IpAddr, pending_auth: bool) -> Result<Admission, Refusal> {
        let caps = &self.inner.caps;
        let key = group(ip);
        let mut counts = self.lock();
        let here = counts.per_ip.get(&key).copied().unwrap_or_default();
        if counts.total >= caps.max_connections {
            return Err(Refusal::Total);
        }
        if here.connections >= caps.max_connections_per_ip {
            return Err(Refusal::PerIp);
        }
        if pending_auth && counts.pending >= caps.max_pending_auth {
            return Err(Refusal::PendingAuth);
        }
        if pending_auth && here.pending >= caps.max_pending_auth_per_ip {
            return Err(Refusal::PendingAuthPerIp);
        }
        counts.total += 1;
        counts.pending += usize::from(pending_auth);
        let entry = counts.per_ip.entry(key).or_default();
        entry.connections += 1;
        entry.pending += usize::from(pending_auth);
        drop(counts);
        Ok(Admission {
            admissions: self.clone(),
            ip,
            pending_auth,
        })
    }

    /// Admitted connections, in total.
    pub fn connections(&self) -> usize {
        self.lock().total
    }

    /// Admitted connections still waiting for a token.
    pub fn pending_auth(&self) -> usize {
        self.lock().pending
    }

    /// Appends the admission gauges to a Prometheus text exposition.
    pub fn write_metrics(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP switchboard_pending_auth Connections waiting for a token.\n# TYPE switchboard_pending_auth gauge\nswitchboard_pending_auth {}",
            self.pending_auth()
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Every critical section leaves the counts consistent: ignore poisoning.
        self.inner.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives back what an admission holds: its pending-auth slot, and its connection slot
    /// too when `connection`.
    fn release(&self, ip: IpAddr, pending_auth: bool, connection: bool) {
        let key = group(ip);
        let mut counts = self.lock();
        let counts = &mut *counts;
        counts.pending -= usize::from(pending_auth);
        counts.total -= usize::from(connection);
        if let Some(entry) = counts.per_ip.get_mut(&key) {
            entry.pending -= usize::from(pending_auth);
            entry.connections -= usize::from(connection);
            if entry.connections == 0 {
                counts.per_ip.remove(&key);
            }
        }
    }
}

/// A connection's place under the caps; given back when dropped.
pub struct Admission {
    admissions: Admissions,
    /// The client's address, as the edge resolved it.
    ip: IpAddr,
    /// Whether this connection still holds a pending-auth slot.
    pending_auth: bool,
}

impl Admission {
    /// The client's address this connection is counted under (shown as `client_ip` in the
    /// logs).
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// Whether the connection still holds a pending-auth slot (it has not authenticated).
    pub fn is_pending_auth(&self) -> bool {
        self.pending_auth
    }

    /// The connection authenticated: gives its pending-auth slot back (it keeps its
    /// connection slot). Call it whenever a `hello` establishes an identity; calling it
    /// again, or on a connection that never waited, does nothing.
    pub fn authenticated(&mut self) {
        if std::mem::take(&mut self.pending_auth) {
            self.admissions.release(self.ip, true, false);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.admissions.release(self.ip, self.pending_auth, true);
    }
}

/// What the per-address caps count `ip` under: an IPv4 address (also when IPv4-mapped)
/// itself, an IPv6 address its /64.
fn group(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn admissions(
        total: usize,
        per_ip: usize,
        pending: usize,
        pending_per_ip: usize,
    ) -> Admissions {
        Admissions::new(Caps {
            max_connections: total,
            max_connections_per_ip: per_ip,
            max_pending_auth: pending,
            max_pending_auth_per_ip: pending_per_ip,
        })
    }

    fn groups(a: &Admissions) -> usize {
        a.lock().per_ip.len()
    }

    #[test]
    fn ipv6_groups_by_64_and_mapped_ipv4_is_ipv4() {
        assert_eq!(group(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            group(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(group(ip("2001:db8:1:3::1")), group(ip("2001:db8:1:2::1")));
        assert_eq!(group(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(group(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_ne!(group(ip("192.0.2.7")), group(ip("192.0.2.8")));
        assert_eq!(group(ip("::1")), ip("::"));
    }

    #[test]
    fn the_per_ip_cap_counts_a_64_as_one_client() {
        let a = admissions(100, 2, 100, 100);
        let _x = a.admit(ip("2001:db8::1"), false).unwrap();
        let _y = a.admit(ip("2001:db8::ffff:2"), false).unwrap();
        assert_eq!(
            a.admit(ip("2001:db8::dead:beef:3"), false).err(),
            Some(Refusal::PerIp)
        );
        // the next /64 is someone else
        let _z = a.admit(ip("2001:db8:0:1::1"), false).unwrap();
        // a mapped address shares its IPv4 address's count
        let _v4 = a.admit(ip("192.0.2.7"), false).unwrap();
        let _mapped = a.admit(ip("::ffff:192.0.2.7"), false).unwrap();
        assert_eq!(a.admit(ip("192.0.2.7"), false).err(), Some(Refusal::PerIp));
        assert_eq!(a.connections(), 5);
    }

    #[test]
    fn the_total_cap_and_giving_places_back() {
        let a = admissions(2, 10, 10, 10);
        let x = a.admit(ip("192.0.2.1"), false).unwrap();
        let y = a.admit(ip("192.0.2.2"), true).unwrap();
        assert_eq!(a.admit(ip("192.0.2.3"), false).err(), Some(Refusal::Total));
        assert_eq!((a.connections(), a.pending_auth(), groups(&a)), (2, 1, 2));
        drop(x);
        drop(y);
        assert_eq!((a.connections(), a.pending_auth(), groups(&a)), (0, 0, 0));
        let _z = a.admit(ip("192.0.2.3"), false).unwrap();
    }

    #[test]
    fn refusals_take_nothing() {
        let a = admissions(10, 1, 10, 10);
        let _x = a.admit(ip("192.0.2.1"), false).unwrap();
        for _ in 0..3 {
            assert_eq!(a.admit(ip("192.0.2.1"), true).err(), Some(Refusal::PerIp));
        }
        assert_eq!((a.connections(), a.pending_auth(), groups(&a)), (1, 0, 1));
    }

    #[test]
    fn pending_auth_has_caps_of_its_own() {
        let a = admissions(100, 100, 3, 2);
        let mut p1 = a.admit(ip("192.0.2.1"), true).unwrap();
        let _p2 = a.admit(ip("192.0.2.1"), true).unwrap();
        assert!(p1.is_pending_auth());
        assert_eq!(
            a.admit(ip("192.0.2.1"), true).err(),
            Some(Refusal::PendingAuthPerIp)
        );
        // connections with a token are not held back by the pending caps
        let _t = a.admit(ip("192.0.2.1"), false).unwrap();
        let _p3 = a.admit(ip("192.0.2.2"), true).unwrap();
        assert_eq!(
            a.admit(ip("192.0.2.3"), true).err(),
            Some(Refusal::PendingAuth)
        );
        assert_eq!((a.connections(), a.pending_auth()), (4, 3));

        // authenticating gives the pending slot back and keeps the connection
        p1.authenticated();
        p1.authenticated();
        assert!(!p1.is_pending_auth());
        assert_eq!((a.connections(), a.pending_auth()), (4, 2));
        let _p4 = a.admit(ip("192.0.2.1"), true).unwrap();
        drop(p1);
        assert_eq!((a.connections(), a.pending_auth()), (4, 3));
    }

    #[test]
    fn a_pending_connection_that_closes_gives_both_places_back() {
        let a = admissions(1, 1, 1, 1);
        let p = a.admit(ip("2001:db8::1"), true).unwrap();
        assert_eq!(p.ip(), ip("2001:db8::1"));
        drop(p);
        assert_eq!((a.connections(), a.pending_auth(), groups(&a)), (0, 0, 0));
        let _p = a.admit(ip("2001:db8::2"), true).unwrap();
    }

    #[test]
    fn the_gauge() {
        let a = admissions(10, 10, 10, 10);
        let _p = a.admit(ip("192.0.2.1"), true).unwrap();
        let mut out = String::new();
        a.write_metrics(&mut out);
        assert!(out.ends_with("\nswitchboard_pending_auth 1\n"), "{out}");
    }
}
