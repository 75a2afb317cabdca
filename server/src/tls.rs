//! TLS (`--tls-cert` / `--tls-key`): the server speaks HTTPS and `wss://` itself, with
//! rustls on the ring provider.
//!
//! - [`Certificates`] holds the certificate chain and key every new handshake uses. It
//!   reloads them when the files change (checked every `--tls-watch`) or on SIGHUP; a
//!   reload never touches open connections, and a file that does not load (half-written,
//!   wrong key) is logged and the previous pair stays in use.
//! - [`TlsListener`] is an [`axum::serve::Listener`]: a task accepts TCP connections and
//!   runs their handshakes beside each other (at most [`MAX_HANDSHAKES`] at once and
//!   [`MAX_HANDSHAKES_PER_IP`] from one address, each sending its first byte within
//!   [`FIRST_BYTE_TIMEOUT`] and done within [`HANDSHAKE_TIMEOUT`]), so a client that
//!   stalls its handshakes delays no one else.
//! - [`dev_certificate`]: a self-signed certificate for development (the
//!   `switchboard-dev-cert` binary writes one).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Most TLS handshakes in progress at once; further connections wait in the kernel's
/// accept backlog until one finishes. A handshake holds a task and rustls' state, at
/// most [`crate::budget::TLS_HANDSHAKE_BYTES`] (rustls buffers up to 64 KiB of handshake
/// messages), so this bounds what half-open connections cost at 40 MiB.
pub const MAX_HANDSHAKES: usize = 512;

/// Most handshakes in progress from one address (an IPv6 address counts with its /64);
/// more are closed at once, so one client cannot take the slots of [`MAX_HANDSHAKES`].
pub const MAX_HANDSHAKES_PER_IP: usize = 16;

/// A connection that sends nothing within this is dropped (a browser's ClientHello comes
/// at once).
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(3);

/// A handshake not finished within this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The provider every TLS part of the server uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or
/// SEC1), and checks that they belong together.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let private =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, private, &provider())
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))
}

/// The certificate and key new handshakes use, reloaded from their files.
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' modification times and sizes when last loaded.
    stamp: RwLock<Option<Stamp>>,
}

type Stamp = [(SystemTime, u64); 2];

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Certificates {
    /// Loads the pair, or says why it cannot.
    pub fn open(cert: &Path, key: &Path) -> Result<Arc<Self>, String> {
        let stamp = stamp(cert, key);
        let loaded = load(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(loaded)),
            stamp: RwLock::new(stamp),
        }))
    }

    /// Loads the files again. On success new handshakes use them; on failure the previous
    /// pair stays in use and the error is returned.
    pub fn reload(&self) -> Result<(), String> {
        let stamp = stamp(&self.cert, &self.key);
        // Recorded either way: a file that does not load is reported once, and tried
        // again when it changes (or on SIGHUP).
        *self.stamp.write().unwrap_or_else(|p| p.into_inner()) = stamp;
        let loaded = load(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        Ok(())
    }

    /// Reloads if either file's modification time or size changed since the last load.
    /// Returns whether it reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = stamp(&self.cert, &self.key);
        if now.is_none() || now == *self.stamp.read().unwrap_or_else(|p| p.into_inner()) {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// A rustls configuration that takes the certificate from here at every handshake.
    /// HTTP/1.1 only: the WebSocket upgrade is an HTTP/1.1 request, and browsers open a
    /// separate connection for it anyway.
    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, String> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Watches the files: reloads when they change (checked every `every`) and on
    /// SIGHUP, logging each reload and each failure. Runs until aborted.
    pub fn watch(self: Arc<Self>, every: Duration) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut hangup = hangup();
            loop {
                let forced = tokio::select! {
                    _ = tick.tick() => false,
                    _ = recv(&mut hangup) => true,
                };
                let result = if forced {
                    self.reload().map(|()| true)
                } else {
                    self.reload_if_changed()
                };
                match result {
                    Ok(true) => {
                        tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(
                        "TLS certificate not reloaded, the previous one stays in use: {e}"
                    ),
                }
            }
        })
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn stamp(cert: &Path, key: &Path) -> Option<Stamp> {
    let one = |p: &Path| {
        let meta = std::fs::metadata(p).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    Some([one(cert)?, one(key)?])
}

#[cfg(unix)]
fn hangup() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(unix)]
async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
fn hangup() -> Option<()> {
    None
}

#[cfg(not(unix))]
async fn recv(_: &mut Option<()>) {
    std::future::pending().await
}

/// Accepts TCP connections and hands over those whose TLS handshake completed.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor: JoinHandle<()>,
}

impl TlsListener {
    /// Serves TLS on `listener` with `config`. TCP_NODELAY is set on every connection
    /// (frames are small; see [`crate::run`]).
    pub fn new(listener: TcpListener, config: ServerConfig) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let tls = TlsAcceptor::from(Arc::new(config));
        let acceptor = tokio::spawn(accept_loop(listener, tls, tx));
        Ok(Self {
            local,
            ready,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let per_ip: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // About that one connection: go on at once (as axum does).
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning (as axum).
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(ip_slot) = IpSlot::take(&per_ip, peer.ip()) else {
            tracing::debug!(%peer, "too many TLS handshakes from this address: closed");
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY not set: {e}");
        }
        let (tls, ready) = (tls.clone(), ready.clone());
        tokio::spawn(async move {
            let handshake = async {
                // Nothing at all within a few seconds: not a client worth a slot.
                tokio::time::timeout(FIRST_BYTE_TIMEOUT, tcp.peek(&mut [0u8; 1]))
                    .await
                    .map_err(|_| "sent nothing".to_string())?
                    .map_err(|e| e.to_string())?;
                tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp))
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|e| e.to_string())
            };
            let result = handshake.await;
            drop((slot, ip_slot));
            match result {
                Ok(stream) => {
                    let _ = ready.send((stream, peer)).await;
                }
                Err(e) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
            }
        });
    }
}

/// Errors about one incoming connection, not the listener (axum's list).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One handshake's place under [`MAX_HANDSHAKES_PER_IP`], given back when dropped.
struct IpSlot {
    map: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl IpSlot {
    fn take(map: &Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr) -> Option<Self> {
        let key = match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
            IpAddr::V6(v6) => IpAddr::V4(
                v6.to_ipv4_mapped()
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            ),
            v4 => v4,
        };
        let mut counts = map.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(key).or_insert(0);
        if *count >= MAX_HANDSHAKES_PER_IP {
            return None;
        }
        *count += 1;
        Some(Self {
            map: map.clone(),
            key,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended (it never does on its own): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// A self-signed development certificate and its key, both PEM.
pub struct DevCertificate {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
    /// base64 of the SHA-256 of the certificate's public key (SubjectPublicKeyInfo): what
    /// Chromium's `--ignore-certificate-errors-spki-list` takes to trust it.
    pub spki_sha256: String,
}

/// A self-signed certificate for `names` (DNS names or IP addresses), valid for a year.
pub fn dev_certificate(names: &[String]) -> Result<DevCertificate, String> {
    let generated =
        rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| e.to_string())?;
    let spki = rcgen::PublicKeyData::subject_public_key_info(&generated.signing_key);
    let digest = ring::digest::digest(&ring::digest::SHA256, &spki);
    Ok(DevCertificate {
        cert_pem: generated.cert.pem(),
        key_pem: generated.signing_key.serialize_pem(),
        spki_sha256: base64(digest.as_ref()),
    })
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn a_dev_certificate_loads_and_a_mismatched_key_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let a = dev_certificate(&["localhost".into()]).unwrap();
        let b = dev_certificate(&["localhost".into()]).unwrap();
        assert_ne!(a.spki_sha256, b.spki_sha256);
        let (cert, key) = (write("a.pem", &a.cert_pem), write("a.key", &a.key_pem));
        load(&cert, &key).unwrap();
        let other_key = write("b.key", &b.key_pem);
        let err = load(&cert, &other_key).err().unwrap();
        assert!(err.contains("a.pem"), "{err}");
        let empty = write("empty.pem", "");
        assert!(load(&empty, &key).is_err());
    }
}
