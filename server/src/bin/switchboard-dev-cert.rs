//! `switchboard-dev-cert`: writes a self-signed certificate and key for development
//! (`cert.pem`, `key.pem`), for `switchboard-server --tls-cert cert.pem --tls-key key.pem`.
//! Never use it in production: browsers trust it only when told to.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Writes a self-signed TLS certificate for development.
#[derive(Parser)]
#[command(name = "switchboard-dev-cert", version, about)]
struct Args {
    /// Directory to write `cert.pem` and `key.pem` into (created if missing).
    #[arg(long, default_value = "switchboard-data/tls")]
    out: PathBuf,

    /// Names the certificate is valid for (DNS names or IP addresses).
    #[arg(long = "name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
    names: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dev = switchboard_server::tls::dev_certificate(&args.names).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let (cert, key) = (args.out.join("cert.pem"), args.out.join("key.pem"));
    std::fs::write(&cert, &dev.cert_pem).with_context(|| format!("writing {}", cert.display()))?;
    write_private(&key, &dev.key_pem).with_context(|| format!("writing {}", key.display()))?;
    println!("wrote {} and {}", cert.display(), key.display());
    println!("spki-sha256 {}", dev.spki_sha256);
    println!(
        "serve:   switchboard-server --tls-cert {} --tls-key {}",
        cert.display(),
        key.display()
    );
    println!(
        "browse:  chromium --ignore-certificate-errors-spki-list={} https://127.0.0.1:8080",
        dev.spki_sha256
    );
    Ok(())
}

/// Writes the key readable by its owner only.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}
