//! The web bundle as the server sends it: the precompressed copy the request accepts, and
//! cache headers (hashed assets immutable, everything else revalidated). The browser's
//! side (transfer sizes, a second visit, the copies decoding to the built files) is in
//! `e2e/app.test.mjs`, on the real release build.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;

use switchboard_server::bundle::{IMMUTABLE, NO_CACHE};

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 GET (connection closed after it), headers and body as sent.
fn get(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> Answer {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in extra {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

/// A bundle like Trunk's: index.html, a hashed JS and wasm file, a plain file; with the
/// `.br` and `.gz` copies `scripts/post-build.sh` would write (any bytes: the server must
/// send them as they are).
fn write_bundle(dir: &Path) {
    let files: [(&str, &[u8]); 4] = [
        ("index.html", b"<!doctype html><title>t</title>"),
        (
            "app-e24bdd6fb09e7849.js",
            b"export default function init() {}",
        ),
        ("app-e24bdd6fb09e7849_bg.wasm", b"\0asm\x01\0\0\0 and more"),
        ("robots.txt", b"User-agent: *"),
    ];
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
        if name != "robots.txt" {
            std::fs::write(dir.join(format!("{name}.br")), [b"br:", bytes].concat()).unwrap();
            std::fs::write(dir.join(format!("{name}.gz")), [b"gz:", bytes].concat()).unwrap();
        }
    }
}

#[tokio::test]
async fn the_accepted_copy_is_sent_with_its_encoding() {
    let dir = tempfile::tempdir().unwrap();
    write_bundle(dir.path());
    let server = common::start(common::config(&["--dist", dir.path().to_str().unwrap()])).await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        let wasm = "/app-e24bdd6fb09e7849_bg.wasm";
        let original = b"\0asm\x01\0\0\0 and more".to_vec();
        for (accept, encoding, body) in [
            (
                "gzip, deflate, br, zstd",
                Some("br"),
                [b"br:", &original[..]].concat(),
            ),
            ("gzip", Some("gzip"), [b"gz:", &original[..]].concat()),
            ("identity", None, original.clone()),
        ] {
            let a = get(addr, wasm, &[("Accept-Encoding", accept)]);
            assert_eq!(a.status, 200, "{accept}");
            assert_eq!(a.header("content-encoding"), encoding, "{accept}");
            assert_eq!(a.header("content-type"), Some("application/wasm"));
            assert_eq!(a.header("vary"), Some("accept-encoding"));
            assert_eq!(a.body, body, "{accept}");
        }
        // Without Accept-Encoding: the file itself.
        assert_eq!(get(addr, wasm, &[]).body, original);
        // A file without copies is sent as it is, whatever is accepted.
        let plain = get(addr, "/robots.txt", &[("Accept-Encoding", "br, gzip")]);
        assert_eq!(plain.header("content-encoding"), None);
        assert_eq!(plain.body, b"User-agent: *");
        // index.html, asked for as `/`, precompressed too.
        let index = get(addr, "/", &[("Accept-Encoding", "br")]);
        assert_eq!(index.header("content-encoding"), Some("br"));
        assert_eq!(index.body, b"br:<!doctype html><title>t</title>");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn hashed_assets_are_immutable_and_the_rest_is_revalidated() {
    let dir = tempfile::tempdir().unwrap();
    write_bundle(dir.path());
    let server = common::start(common::config(&["--dist", dir.path().to_str().unwrap()])).await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        for hashed in ["/app-e24bdd6fb09e7849.js", "/app-e24bdd6fb09e7849_bg.wasm"] {
            for accept in ["br", "gzip", "identity"] {
                let a = get(addr, hashed, &[("Accept-Encoding", accept)]);
                assert_eq!(a.status, 200);
                assert_eq!(
                    a.header("cache-control"),
                    Some(IMMUTABLE),
                    "{hashed} {accept}"
                );
            }
        }
        for path in ["/", "/index.html", "/rooms/lobby", "/robots.txt"] {
            let a = get(addr, path, &[("Accept-Encoding", "br")]);
            assert_eq!(a.status, 200, "{path}");
            assert_eq!(a.header("cache-control"), Some(NO_CACHE), "{path}");
        }
        // A hashed name that is not there (an old page after a deploy) gets index.html,
        // which must not be kept for a year under that name.
        let gone = get(addr, "/app-0123456789abcdef.js", &[]);
        assert_eq!(gone.header("content-type"), Some("text/html"));
        assert_eq!(gone.header("cache-control"), Some(NO_CACHE));
        // The revalidation a second visit makes: 304 with no body while unchanged.
        let first = get(addr, "/", &[("Accept-Encoding", "br")]);
        let etag = first.header("etag").expect("an ETag").to_owned();
        let again = get(
            addr,
            "/",
            &[("Accept-Encoding", "br"), ("If-None-Match", &etag)],
        );
        assert_eq!(again.status, 304);
        assert!(again.body.is_empty());
        assert_eq!(again.header("cache-control"), Some(NO_CACHE));
    })
    .await
    .unwrap();
}
