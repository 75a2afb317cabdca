//! `switchboard-token`: mints a JWT for trying the server by hand (wscat, curl) or for
//! tests. Production tokens come from your own backend, signed with the same secret.
//!
//! ```text
//! SWITCHBOARD_JWT_SECRET=dev-secret switchboard-token --sub u1 --name Ada --ttl 1h \
//!     --subscribe 'room:*' --publish 'room:*'
//! ```
//!
//! The grant claims (`subscribe`, `publish`, `direct`) are written only when given, so a
//! token without them gets the server's defaults (`--token-default-*`: nothing unless set).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde::Serialize;
use switchboard_server::auth::Claims;

/// Mint an HS256 token for switchboard-server.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The secret the server was started with (--jwt-secret).
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    secret: String,
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
    let key = EncodingKey::from_secret(args.secret.as_bytes());
    let token = encode(&Header::default(), &minted, &key)?;
    println!("{token}");
    Ok(())
}
