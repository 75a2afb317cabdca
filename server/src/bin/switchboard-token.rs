//! `switchboard-token`: mints a JWT for trying the server by hand (wscat, curl) or for
//! tests. Production tokens come from your own backend, signed with the same secret or with
//! the private key whose public key the server has.
//!
//! ```text
//! SWITCHBOARD_JWT_SECRET=dev-secret switchboard-token --sub u1 --name Ada --ttl 1h \
//!     --subscribe 'room:*' --publish 'room:*'
//! switchboard-token --key server/tests/keys/ec256.pem --alg ES256 --sub u1 --subscribe 'room:*'
//! ```
//!
//! The grant claims (`subscribe`, `publish`, `direct`) are written only when given, so a
//! token without them gets the server's defaults (`--token-default-*`: nothing unless set).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde::Serialize;
use switchboard_server::auth::Claims;
use switchboard_server::auth::keys::{parse_public_key_algorithm, read_signing_key};

/// Mint a token for switchboard-server: HS256 with --secret, or RS256, ES256, EdDSA (and the
/// other public-key algorithms) with --key and --alg.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The secret the server was started with (--jwt-secret), for an HS256 token. Ignored
    /// when --key is given.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Private key PEM file for a public-key token: PKCS#8 (`PRIVATE KEY`, as
    /// `openssl genpkey` writes it) or, for RSA, `RSA PRIVATE KEY`. The server needs its
    /// public key (--jwt-public-key or --jwt-jwks).
    #[arg(long, value_name = "PATH", requires = "alg")]
    key: Option<PathBuf>,
    /// The algorithm for --key: RS256, RS384, RS512, PS256, PS384, PS512 (RSA keys), ES256
    /// (P-256), ES384 (P-384) or EdDSA (Ed25519).
    #[arg(long, value_parser = parse_public_key_algorithm, requires = "key")]
    alg: Option<Algorithm>,
    /// Key id for the header (`kid`): the key of the server's --jwt-jwks that signs.
    #[arg(long)]
    kid: Option<String>,
    /// User id (`sub`).
    #[arg(long)]
    sub: String,
    /// Display name (`name`, enforced in presence info).
    #[arg(long)]
    name: Option<String>,
    /// Lifetime (`exp` is now plus this).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Not valid before now plus this (`nbf`). Unset: no `nbf`, valid at once.
    #[arg(long, value_parser = humantime::parse_duration)]
    nbf: Option<Duration>,
    /// Audiences (`aud`, comma-separated): one is written as a string, several as a list.
    #[arg(long, value_delimiter = ',')]
    aud: Vec<String>,
    /// Issuer (`iss`).
    #[arg(long)]
    iss: Option<String>,
    /// Channel patterns the user may subscribe to (comma-separated; '' writes an empty
    /// list). Unset: no claim, so the server's --token-default-subscribe applies.
    #[arg(long, value_delimiter = ',')]
    subscribe: Option<Vec<String>>,
    /// Channel patterns the user may publish on (comma-separated; '' writes an empty list).
    /// Unset: no claim, so the server's --token-default-publish applies.
    #[arg(long, value_delimiter = ',')]
    publish: Option<Vec<String>>,
    /// Whether the user may send direct messages: `--direct` writes `"direct": true`,
    /// `--direct false` writes false. Unset: no claim, so the server's
    /// --token-default-direct applies.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    direct: Option<bool>,
}

/// The token's claims: the ones the server keeps, plus the registered ones it checks.
#[derive(Serialize)]
struct Minted {
    #[serde(flatten)]
    claims: Claims,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    // `--subscribe ''` parses as one empty pattern: an empty list.
    let patterns =
        |list: Option<Vec<String>>| list.map(|l| l.into_iter().filter(|p| !p.is_empty()).collect());
    let minted = Minted {
        claims: Claims {
            sub: args.sub,
            name: args.name,
            exp: (now + args.ttl).as_secs(),
            subscribe: patterns(args.subscribe),
            publish: patterns(args.publish),
            direct: args.direct,
        },
        nbf: args.nbf.map(|d| (now + d).as_secs()),
        aud: match args.aud.as_slice() {
            [] => None,
            [one] => Some(one.as_str().into()),
            many => Some(many.into()),
        },
        iss: args.iss,
    };
    let (alg, key) = match (&args.key, args.alg, &args.secret) {
        (Some(path), Some(alg), _) => (
            alg,
            read_signing_key(path, alg).map_err(anyhow::Error::msg)?,
        ),
        (None, _, Some(secret)) => (
            Algorithm::HS256,
            EncodingKey::from_secret(secret.as_bytes()),
        ),
        _ => bail!("give --secret (or SWITCHBOARD_JWT_SECRET), or --key with --alg"),
    };
    let mut header = Header::new(alg);
    header.kid = args.kid;
    let token = encode(&header, &minted, &key).with_context(|| match &args.key {
        Some(path) => format!(
            "signing with {} as {alg:?}: does the key suit it?",
            path.display()
        ),
        None => "signing".into(),
    })?;
    println!("{token}");
    Ok(())
}
