//! `switchboard-token`: mints a JWT for trying the server by hand (wscat, curl) or for
//! tests. Production tokens come from your own backend, signed with the same secret.
//!
//! ```text
//! SWITCHBOARD_JWT_SECRET=dev-secret switchboard-token --sub u1 --name Ada --ttl 1h \
//!     --subscribe 'room:*' --publish 'room:*'
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use jsonwebtoken::{EncodingKey, Header, encode};
use switchboard_server::auth::Claims;

/// Mint an HS256 token for switchboard-server.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The secret the server was started with (--jwt-secret).
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// User id.
    #[arg(long)]
    sub: String,
    /// Display name (enforced in presence info).
    #[arg(long)]
    name: Option<String>,
    /// Lifetime.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Channel patterns the user may subscribe to (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    subscribe: Vec<String>,
    /// Channel patterns the user may publish on (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    publish: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let claims = Claims {
        sub: args.sub,
        name: args.name,
        exp: (now + args.ttl).as_secs(),
        subscribe: args.subscribe,
        publish: args.publish,
    };
    let key = EncodingKey::from_secret(args.secret.as_bytes());
    println!("{}", encode(&Header::default(), &claims, &key)?);
    Ok(())
}
