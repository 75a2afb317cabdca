//! The network edge of an upgrade request: who it really comes from, and whether a browser
//! page may open it.
//!
//! - [`client_ip`]: the client's address. The TCP peer, unless the peer is one of the
//!   `--trusted-proxies`; then the address those proxies forwarded in `X-Forwarded-For`.
//!   The connection caps count this address and the logs show it as `client_ip`.
//! - [`check_origin`]: the cross-site WebSocket hijacking guard (the `Origin` header).
//!
//! Both are pure functions of the request's headers and the options, so they are
//! unit-tested here; [`crate::admission`] holds the caps.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::Ordering;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;

use crate::AppState;
use crate::config::Config;

/// The origins `trunk serve` serves the web app from during development. Allowed only with
/// `--dev`.
pub const DEV_ORIGINS: [&str; 2] = ["http://127.0.0.1:8080", "http://localhost:8080"];

/// One entry of `--trusted-proxies`: an address (`10.0.0.7`, `::1`) or a network in CIDR
/// notation (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyNet(IpNet);

impl ProxyNet {
    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address (`::ffff:10.0.0.7`)
    /// counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl FromStr for ProxyNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self(IpNet::from(ip.to_canonical())));
        }
        s.parse::<IpNet>().map(Self).map_err(|_| {
            format!("{s:?} is neither an IP address nor a network like 10.0.0.0/8 or fd00::/8")
        })
    }
}

impl std::fmt::Display for ProxyNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

/// The client's address for a request whose TCP peer is `peer`.
///
/// When `peer` is in `trusted`, the client is taken from `X-Forwarded-For` (every such
/// header, in order, as one comma-separated list): its entries are walked right to left,
/// skipping those in `trusted` (further proxies); the first one that is not trusted is the
/// client. If every entry is trusted, the leftmost one is. If the header is missing, or an
/// entry the walk reaches is not an address, the client is `peer`. Entries left of the
/// client are never looked at: the client wrote them and they prove nothing.
///
/// When `peer` is not trusted, the header is ignored, so a client cannot choose the
/// address it is counted under.
///
/// An entry may carry a port (`203.0.113.7:5123`, `[2001:db8::7]:443`) or brackets
/// (`[2001:db8::7]`); both are dropped. IPv4-mapped IPv6 addresses come back as IPv4.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ProxyNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut leftmost = None;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(value) = value.to_str() else {
            return peer;
        };
        for entry in value.rsplit(',') {
            let Some(ip) = parse_forwarded(entry) else {
                return peer;
            };
            if !is_trusted(ip) {
                return ip;
            }
            leftmost = Some(ip);
        }
    }
    leftmost.unwrap_or(peer)
}

/// One `X-Forwarded-For` entry: an address, optionally bracketed (IPv6) and with a port.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<std::net::Ipv6Addr>()
                .ok()
                .map(IpAddr::V6)
        })?;
    Some(ip.to_canonical())
}

/// Cross-site WebSocket hijacking guard. Browsers always send `Origin`; it must be the
/// server's own origin (`http://` or `https://` and the request's `Host`), listed in
/// `--allowed-origins` (`*` allows any), or, with `--dev` only, one of [`DEV_ORIGINS`].
/// A request without an `Origin` is not from a browser (wscat, servers, load generators)
/// and is allowed. Returns the refused origin, readable for a log line.
pub fn check_origin(config: &Config, headers: &HeaderMap) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let Ok(origin) = origin.to_str() else {
        if config.allowed_origins.iter().any(|o| o == "*") {
            return Ok(());
        }
        return Err(String::from_utf8_lossy(origin.as_bytes()).into_owned());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let own = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|rest| !host.is_empty() && rest.eq_ignore_ascii_case(host));
    let listed = config
        .allowed_origins
        .iter()
        .any(|o| o == "*" || o.trim_end_matches('/').eq_ignore_ascii_case(origin));
    let dev = config.dev && DEV_ORIGINS.contains(&origin);
    if own || listed || dev {
        Ok(())
    } else {
        Err(origin.to_owned())
    }
}

/// [`check_origin`] for an upgrade handler: a foreign origin is logged, counted in
/// `switchboard_origin_refused_total` and gets the 403 returned here, to send instead of
/// upgrading.
pub(crate) fn refuse_foreign_origin(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    client_ip: IpAddr,
) -> Option<Response> {
    let origin = check_origin(&state.config, headers).err()?;
    tracing::info!(%client_ip, %peer, origin, "refused a WebSocket from a foreign origin");
    state
        .hub
        .metrics()
        .origin_refused
        .fetch_add(1, Ordering::Relaxed);
    let body = format!("origin {origin} is not allowed");
    Some((StatusCode::FORBIDDEN, body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn nets(list: &[&str]) -> Vec<ProxyNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn proxy_nets_parse_addresses_and_cidrs() {
        let list = nets(&[
            "10.0.0.0/8",
            "192.0.2.1",
            "fd00::/8",
            "::1",
            " 172.16.0.0/12 ",
        ]);
        assert!(list[0].contains(ip("10.200.3.4")));
        assert!(!list[0].contains(ip("11.0.0.1")));
        assert!(list[1].contains(ip("192.0.2.1")) && !list[1].contains(ip("192.0.2.2")));
        assert!(list[2].contains(ip("fd12::1")) && !list[2].contains(ip("fe80::1")));
        assert!(list[3].contains(ip("::1")));
        assert!(list[4].contains(ip("172.31.255.255")));
        // an IPv4-mapped peer is its IPv4 address, and so is a mapped entry in the list
        assert!(list[0].contains(ip("::ffff:10.1.2.3")));
        assert!(nets(&["::ffff:192.0.2.9"])[0].contains(ip("192.0.2.9")));
        assert!(
            !list[0].contains(ip("::a01:203")),
            "IPv4-compatible is not mapped"
        );
        for bad in ["", "10.0.0.0/33", "example.com", "10.0.0.0/8/8", "*"] {
            assert!(bad.parse::<ProxyNet>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_the_header_says() {
        let h = xff(&["203.0.113.7"]);
        assert_eq!(client_ip(ip("198.51.100.1"), &h, &[]), ip("198.51.100.1"));
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("198.51.100.1"), &h, &trusted),
            ip("198.51.100.1")
        );
        // a mapped peer comes back as IPv4
        assert_eq!(
            client_ip(ip("::ffff:198.51.100.1"), &h, &trusted),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn a_trusted_peer_forwards_the_client() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.2");
        assert_eq!(
            client_ip(peer, &xff(&["203.0.113.7"]), &trusted),
            ip("203.0.113.7")
        );
        // no header: the peer
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), peer);
        // the mapped form of a trusted peer is trusted
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.2"), &xff(&["203.0.113.7"]), &trusted),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn the_walk_goes_right_to_left_past_trusted_hops() {
        let trusted = nets(&["10.0.0.0/8", "192.0.2.0/24"]);
        let peer = ip("10.0.0.2");
        // the client forged the leftmost entry; the proxies appended the real one
        let h = xff(&["1.2.3.4, 203.0.113.7, 192.0.2.5, 10.1.1.1"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("203.0.113.7"));
        // the same list over several headers, in order
        let h = xff(&["1.2.3.4, 203.0.113.7", "192.0.2.5", "10.1.1.1"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("203.0.113.7"));
        // all trusted: the leftmost
        let h = xff(&["192.0.2.9, 10.1.1.1"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("192.0.2.9"));
        // only the nearest hop trusted: the next one is the client, even if it is a proxy
        let only_peer = nets(&["10.0.0.2"]);
        let h = xff(&["203.0.113.7, 10.1.1.1"]);
        assert_eq!(client_ip(peer, &h, &only_peer), ip("10.1.1.1"));
    }

    #[test]
    fn garbage_the_walk_reaches_means_the_peer_and_garbage_beyond_the_client_is_ignored() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.2");
        for bad in [
            "not-an-ip",
            "203.0.113.7, unknown",
            "203.0.113.7,",
            "",
            "203.0.113.7, 10.1.1.1, 300.1.1.1",
            "[203.0.113.7]",
            "2001:db8::1::2",
        ] {
            assert_eq!(client_ip(peer, &xff(&[bad]), &trusted), peer, "{bad:?}");
        }
        // garbage left of the client was written by the client: the walk never gets there
        let h = xff(&["<script>, unknown, 203.0.113.7, 10.1.1.1"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("203.0.113.7"));
        // a value that is not visible ASCII
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"203.0.113.7\xff").unwrap(),
        );
        assert_eq!(client_ip(peer, &h, &trusted), peer);
    }

    #[test]
    fn ipv6_entries_and_ports() {
        let trusted = nets(&["10.0.0.0/8", "fd00::/8"]);
        let peer = ip("fd00::2");
        let cases = [
            ("2001:db8::7", "2001:db8::7"),
            ("[2001:db8::7]", "2001:db8::7"),
            ("[2001:db8::7]:443", "2001:db8::7"),
            ("203.0.113.7:5123", "203.0.113.7"),
            (" 203.0.113.7 ", "203.0.113.7"),
            ("::ffff:203.0.113.7", "203.0.113.7"),
            ("2001:db8::7, fd00::9, [fd00::a]:80", "2001:db8::7"),
            ("2001:db8::7, ::ffff:10.9.9.9", "2001:db8::7"),
        ];
        for (header, want) in cases {
            assert_eq!(
                client_ip(peer, &xff(&[header]), &trusted),
                ip(want),
                "{header}"
            );
        }
    }

    fn config(args: &[&str]) -> Config {
        use clap::Parser;
        let mut argv = vec!["switchboard-server"];
        argv.extend_from_slice(args);
        Config::parse_from(argv)
    }

    fn request(origin: Option<&[u8]>, host: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_bytes(o).unwrap());
        }
        if let Some(host) = host {
            h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        h
    }

    fn allowed(config: &Config, origin: &str, host: &str) -> bool {
        check_origin(config, &request(Some(origin.as_bytes()), Some(host))).is_ok()
    }

    #[test]
    fn the_own_origin_is_allowed_over_http_and_https() {
        let c = config(&[]);
        assert!(allowed(&c, "http://chat.example.com", "chat.example.com"));
        assert!(allowed(&c, "https://chat.example.com", "chat.example.com"));
        assert!(allowed(&c, "http://127.0.0.1:3000", "127.0.0.1:3000"));
        assert!(allowed(
            &c,
            "https://Chat.Example.com:8443",
            "chat.example.com:8443"
        ));
        // same host, other port; other host; other scheme; a prefix of the host
        assert!(!allowed(&c, "http://127.0.0.1:3001", "127.0.0.1:3000"));
        assert!(!allowed(&c, "https://evil.example.net", "chat.example.com"));
        assert!(!allowed(&c, "ftp://chat.example.com", "chat.example.com"));
        assert!(!allowed(
            &c,
            "http://chat.example.com.evil",
            "chat.example.com"
        ));
        // no Host: nothing is the own origin
        assert!(check_origin(&c, &request(Some(b"http://"), None)).is_err());
    }

    #[test]
    fn listed_origins_and_the_wildcard() {
        let c = config(&[
            "--allowed-origins",
            "https://app.example.com,https://admin.example.com/",
        ]);
        assert!(allowed(&c, "https://app.example.com", "api.example.com"));
        assert!(allowed(&c, "https://admin.example.com", "api.example.com"));
        assert!(!allowed(&c, "http://app.example.com", "api.example.com"));
        assert!(!allowed(
            &c,
            "https://app.example.com:444",
            "api.example.com"
        ));
        let any = config(&["--allowed-origins", "*"]);
        assert!(allowed(&any, "https://anything.example", "api.example.com"));
        assert!(allowed(&any, "null", "api.example.com"));
    }

    #[test]
    fn trunk_serve_origins_need_dev_mode() {
        let prod = config(&[]);
        let dev = config(&["--dev"]);
        for origin in DEV_ORIGINS {
            assert_eq!(
                check_origin(
                    &prod,
                    &request(Some(origin.as_bytes()), Some("127.0.0.1:3000"))
                ),
                Err(origin.to_owned())
            );
            assert!(allowed(&dev, origin, "127.0.0.1:3000"));
        }
        // dev mode adds exactly those two
        assert!(!allowed(&dev, "http://127.0.0.1:8081", "127.0.0.1:3000"));
        assert!(!allowed(&dev, "https://localhost:8080", "127.0.0.1:3000"));
    }

    #[test]
    fn no_origin_is_allowed_and_garbage_is_not() {
        let c = config(&[]);
        assert!(check_origin(&c, &request(None, Some("a.example"))).is_ok());
        assert!(check_origin(&c, &HeaderMap::new()).is_ok());
        assert!(!allowed(&c, "null", "a.example"));
        assert!(!allowed(&c, "", "a.example"));
        assert!(!allowed(&c, "a.example", "a.example"));
        let refused = check_origin(
            &c,
            &request(Some(b"http://a.example\xff"), Some("a.example")),
        );
        assert_eq!(refused, Err("http://a.example\u{fffd}".to_owned()));
        let any = config(&["--allowed-origins", "*"]);
        assert!(check_origin(&any, &request(Some(b"\xff"), Some("a.example"))).is_ok());
    }
}
