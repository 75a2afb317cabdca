//! Authentication (JWT, HS256) and channel permissions.
//!
//! A token is presented as `?token=` on the WebSocket URL or in a `hello` frame. Its claims:
//!
//! ```json
//! {"sub": "u42", "name": "Ada", "exp": 1767225600,
//!  "subscribe": ["room:*", "news"], "publish": ["room:*"]}
//! ```
//!
//! `sub` is the user id presence counts by; `name`, when present, is put into the member's
//! presence info as `name` (so nobody can appear under another's name); `exp` is enforced
//! while connected. `subscribe` and `publish` list channel patterns: an exact name, a prefix
//! ending in `*` (`room:*`), or `*` for all; when a list is absent it means `["*"]`.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// The claims Switchboard reads from a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Display name, enforced in presence info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Channel patterns the user may subscribe to. Defaults to `["*"]`.
    #[serde(default = "everything")]
    pub subscribe: Vec<String>,
    /// Channel patterns the user may publish on. Defaults to `["*"]`.
    #[serde(default = "everything")]
    pub publish: Vec<String>,
}

fn everything() -> Vec<String> {
    vec!["*".into()]
}

/// What a connection may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    /// Patterns for `subscribe`.
    pub subscribe: Vec<String>,
    /// Patterns for `publish`.
    pub publish: Vec<String>,
}

impl Grants {
    /// Everything allowed.
    pub fn all() -> Self {
        Self {
            subscribe: everything(),
            publish: everything(),
        }
    }

    /// Whether `channel` may be subscribed to.
    pub fn may_subscribe(&self, channel: &str) -> bool {
        self.subscribe.iter().any(|p| pattern_matches(p, channel))
    }

    /// Whether `channel` may be published on.
    pub fn may_publish(&self, channel: &str) -> bool {
        self.publish.iter().any(|p| pattern_matches(p, channel))
    }

    /// Whether `direct` messages may be sent.
    pub fn may_direct(&self) -> bool {
        true
    }
}

/// `*` matches everything, `prefix*` matches names starting with `prefix`, anything else
/// matches itself.
pub fn pattern_matches(pattern: &str, channel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => pattern == channel,
    }
}

/// Who is on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`; `None` for anonymous connections.
    pub user_id: Option<String>,
    /// The token's `name`.
    pub name: Option<String>,
    /// When the token expires (seconds since the Unix epoch).
    pub expires_at: Option<u64>,
    /// What the connection may do (shared: anonymous connections all hold the same).
    pub grants: Arc<Grants>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The server has no secret configured, so it cannot check tokens.
    #[error("this server does not accept tokens (no --jwt-secret configured)")]
    Disabled,
    /// The token's `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// Bad signature, malformed, wrong algorithm, missing claims.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// A connection needs a token and has none.
    #[error("a token is required: pass ?token= or send hello with a token")]
    Required,
}

/// The server's authentication settings.
#[derive(Clone)]
pub struct Auth {
    key: Option<DecodingKey>,
    validation: Validation,
    allow_anonymous: bool,
    anonymous: Arc<Grants>,
}

impl Auth {
    /// From the server options.
    pub fn from_config(config: &Config) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        // Switchboard does not issue or check audiences; a token that names one is fine.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            key: config
                .jwt_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.expose().as_bytes())),
            validation,
            allow_anonymous: config.jwt_secret.is_none() || config.allow_anonymous,
            anonymous: Arc::new(if config.jwt_secret.is_none() {
                Grants::all()
            } else {
                Grants {
                    subscribe: config.anonymous_subscribe.clone(),
                    publish: config.anonymous_publish.clone(),
                }
            }),
        }
    }

    /// Whether tokens are checked at all.
    pub fn enabled(&self) -> bool {
        self.key.is_some()
    }

    /// The identity of a connection without a token, if such connections are allowed.
    pub fn anonymous(&self) -> Result<Identity, AuthError> {
        if !self.allow_anonymous {
            return Err(AuthError::Required);
        }
        Ok(Identity {
            user_id: None,
            name: None,
            expires_at: None,
            grants: self.anonymous.clone(),
        })
    }

    /// Checks a token and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let key = self.key.as_ref().ok_or(AuthError::Disabled)?;
        let claims = decode::<Claims>(token, key, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })?
            .claims;
        Ok(Identity {
            user_id: Some(claims.sub),
            name: claims.name,
            expires_at: Some(claims.exp),
            grants: Arc::new(Grants {
                subscribe: claims.subscribe,
                publish: claims.publish,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("room:*", "room:lobby"));
        assert!(!pattern_matches("room:*", "rooms"));
        assert!(pattern_matches("news", "news"));
        assert!(!pattern_matches("news", "news2"));
        let g = Grants {
            subscribe: vec!["room:*".into(), "news".into()],
            publish: vec![],
        };
        assert!(g.may_subscribe("room:a") && g.may_subscribe("news") && !g.may_subscribe("x"));
        assert!(!g.may_publish("room:a"));
    }
}
