//! TLS: `wss://` with a real rustls client, certificates reloaded from their files (by the
//! watcher and on SIGHUP) without dropping open connections, and handshakes that a
//! stalled client cannot hold up.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use switchboard_protocol::{ClientFrame, ServerFrame, codec};
use switchboard_server::tls::{DevCertificate, dev_certificate};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// A dev certificate written to `dir` as cert.pem / key.pem (replacing what is there).
fn write_cert(dir: &Path) -> (DevCertificate, PathBuf, PathBuf) {
    let dev = dev_certificate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    // Written aside and renamed, as a certificate manager does: never half a file.
    std::fs::write(dir.join("cert.tmp"), &dev.cert_pem).unwrap();
    std::fs::write(dir.join("key.tmp"), &dev.key_pem).unwrap();
    std::fs::rename(dir.join("key.tmp"), &key).unwrap();
    std::fs::rename(dir.join("cert.tmp"), &cert).unwrap();
    (dev, cert, key)
}

/// A client that trusts `cert` only.
fn connector(cert: &DevCertificate) -> TlsConnector {
    let der = CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

use rustls::pki_types::pem::PemObject;

async fn tls(port: u16, trust: &DevCertificate) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    connector(trust).connect(name, tcp).await
}

/// Opens `wss://127.0.0.1:port/ws` trusting `trust`, and reads the `welcome`.
async fn wss(port: u16, trust: &DevCertificate) -> WebSocketStream<TlsStream<TcpStream>> {
    let stream = tls(port, trust).await.expect("TLS handshake");
    let url = format!("wss://127.0.0.1:{port}/ws");
    let (mut ws, response) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("upgrade");
    assert_eq!(response.status(), 101);
    assert!(matches!(next(&mut ws).await, ServerFrame::Welcome { .. }));
    ws
}

async fn next(ws: &mut WebSocketStream<TlsStream<TcpStream>>) -> ServerFrame {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("no error");
        if let Message::Text(text) = msg {
            let mut frames = codec::decode_server(text.as_str());
            return frames.remove(0).unwrap();
        }
    }
}

/// A request on `ws` answered: the connection still works.
async fn answers(ws: &mut WebSocketStream<TlsStream<TcpStream>>, id: &str) {
    let frame = ClientFrame::Request {
        id: id.into(),
        method: "time".into(),
        params: Default::default(),
    };
    ws.send(Message::text(codec::encode(&frame))).await.unwrap();
    match next(ws).await {
        ServerFrame::Response { id: got, .. } => assert_eq!(got.as_str(), id),
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// Polls until a new handshake trusting `cert` succeeds (up to 10 s).
async fn served(port: u16, cert: &DevCertificate) -> bool {
    for _ in 0..200 {
        if tls(port, cert).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn wss_works_and_a_new_certificate_is_picked_up_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (a, cert, key) = write_cert(dir.path());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let config = common::config(&["--tls-cert", cert, "--tls-key", key, "--tls-watch", "50ms"]);
    let server = common::start(config).await;
    let port = server.addr.port();

    let mut old = wss(port, &a).await;
    answers(&mut old, "before").await;
    // Plain text on the TLS port is not served.
    let (status, _) =
        tokio::task::spawn_blocking(move || common::cluster::http_get(port, "/healthz"))
            .await
            .unwrap();
    assert_eq!(status, 0, "plain HTTP must not be answered on the TLS port");

    // A half-written file is not loaded: the previous certificate stays in use.
    std::fs::write(
        dir.path().join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tls(port, &a).await.is_ok(),
        "a broken file must not replace the certificate"
    );

    let (b, _, _) = write_cert(dir.path());
    assert!(
        served(port, &b).await,
        "the new certificate was not picked up"
    );
    assert!(
        tls(port, &a).await.is_err(),
        "the old certificate is still served"
    );
    let mut new = wss(port, &b).await;
    answers(&mut new, "new").await;
    // The connection made with the old certificate is untouched.
    answers(&mut old, "after").await;
}

#[tokio::test]
async fn stalled_handshakes_hold_up_no_one_and_one_address_cannot_take_every_slot() {
    use switchboard_server::tls::{FIRST_BYTE_TIMEOUT, MAX_HANDSHAKES_PER_IP};
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let (a, cert, key) = write_cert(dir.path());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let server = common::start(common::config(&["--tls-cert", cert, "--tls-key", key])).await;
    let port = server.addr.port();
    // Clients that connect and never finish (or never start) their handshake, fewer than
    // one address may have.
    let mut stalled = Vec::new();
    for i in 0..MAX_HANDSHAKES_PER_IP - 2 {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        if i % 2 == 0 {
            // The first bytes of a ClientHello record, then nothing.
            tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
                .await
                .unwrap();
        }
        stalled.push(tcp);
    }
    let mut ws = tokio::time::timeout(Duration::from_secs(2), wss(port, &a))
        .await
        .expect("a handshake behind stalled ones completes at once");
    answers(&mut ws, "through").await;
    // Past the per-address cap, a new connection is closed at once.
    let mut extra = Vec::new();
    for _ in 0..4 {
        extra.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    let mut closed = 0;
    for tcp in &mut extra {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 2,
        "only {closed} of the connections over the cap were closed"
    );
    // One that says nothing is dropped after FIRST_BYTE_TIMEOUT, freeing its place.
    let silent = &mut stalled[1];
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(
        FIRST_BYTE_TIMEOUT + Duration::from_secs(2),
        silent.read(&mut byte),
    )
    .await
    .expect("a silent connection is dropped");
    assert!(matches!(read, Ok(0) | Err(_)));
    let mut again = tokio::time::timeout(Duration::from_secs(2), wss(port, &a))
        .await
        .expect("places are free again");
    answers(&mut again, "again").await;
}

#[test]
fn the_server_binary_reloads_its_certificate_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (a, cert, key) = write_cert(dir.path());
    let port = common::redis::free_port();
    let args: Vec<OsString> = [
        "--addr",
        &format!("127.0.0.1:{port}"),
        "--history",
        "memory",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        // Only the signal makes it look.
        "--tls-watch",
        "1h",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    let mut child = common::cluster::spawn_server(&args);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut ws = wss(port, &a).await;
        let (b, _, _) = write_cert(dir.path());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(tls(port, &b).await.is_err(), "reloaded before the signal");
        let status = std::process::Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(
            served(port, &b).await,
            "SIGHUP did not reload the certificate"
        );
        answers(&mut ws, "still open").await;
    });
    let _ = child.kill();
    let _ = child.wait();
}
