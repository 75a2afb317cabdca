//! Authentication (JSON Web Tokens) and channel permissions.
//!
//! A token is presented as `?token=` on the WebSocket URL or in a `hello` frame. Its claims:
//!
//! ```json
//! {"sub": "u42", "name": "Ada", "exp": 1767225600, "aud": "chat",
//!  "subscribe": ["room:*", "news"], "publish": ["room:*"], "direct": true}
//! ```
//!
//! - `sub` (required) is the user id presence counts by. `name`, when present, is put into
//!   the member's presence info as `name`, so nobody can appear under another's name. Each
//!   is at most 256 bytes; a longer one makes the token invalid.
//! - `exp` (required) is enforced while connected. `nbf`, when present, must have passed.
//!   Both allow `--jwt-leeway` of clock skew.
//! - `aud`: with `--jwt-audience`, required and must name one of those audiences; without
//!   it, a token that has an `aud` is refused (it was minted for some other service).
//!   `iss`: with `--jwt-issuer`, required and must be one of those issuers; else unchecked.
//! - `subscribe` and `publish` list channel patterns: an exact name, a prefix ending in `*`
//!   (`room:*`), or `*` for all. `direct` (boolean) allows direct messages. A missing grant
//!   claim gets the operator's default (`--token-default-subscribe`,
//!   `--token-default-publish`, `--token-default-direct`), which is nothing unless set; an
//!   empty list is nothing.
//!
//! # Keys
//!
//! A token is checked with a key chosen by its header's `alg` and `kid`:
//!
//! | Key | Checks tokens with `alg` | `kid` |
//! |---|---|---|
//! | `--jwt-secret` | HS256 | ignored |
//! | `--jwt-public-key` | the key's: RS256 (RSA, or `--jwt-algorithm`), ES256 (P-256), ES384 (P-384), EdDSA (Ed25519) | ignored |
//! | `--jwt-jwks` | each key's `alg`, or its type's default | must name the key; may be absent when the set has one key |
//!
//! Any of them may be configured together. A token whose `alg` (and `kid`) no configured key
//! serves is refused, so `alg: none`, or an HS256 token signed with a public key's bytes
//! (algorithm confusion), never passes. When two keys serve a token (a PEM key and a key
//! set's key with the same algorithm), each is tried. Key files are read once, when the
//! options are parsed ([`keys`]). With no key at all, tokens are refused and connections are
//! anonymous with full access (a development setting).

pub mod keys;

use std::sync::Arc;

use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Most bytes in a token's `sub` and in its `name`.
pub const MAX_CLAIM_BYTES: usize = 256;

/// The claims Switchboard reads from a token (besides `nbf`, `aud` and `iss`, which are
/// checked but not kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id, at most [`MAX_CLAIM_BYTES`].
    pub sub: String,
    /// Display name, enforced in presence info; at most [`MAX_CLAIM_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Channel patterns the user may subscribe to. `None` means the operator's default
    /// (`--token-default-subscribe`, nothing unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Vec<String>>,
    /// Channel patterns the user may publish on. `None` means the operator's default
    /// (`--token-default-publish`, nothing unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
    /// Whether the user may send direct messages. `None` means the operator's default
    /// (`--token-default-direct`, off unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<bool>,
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
    /// Whether `direct` messages may be sent.
    pub direct: bool,
}

impl Grants {
    /// Everything allowed, direct messages included.
    pub fn all() -> Self {
        Self {
            subscribe: everything(),
            publish: everything(),
            direct: true,
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
        self.direct
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
    /// When the server stops accepting the token (seconds since the Unix epoch): its `exp`
    /// plus `--jwt-leeway`.
    pub expires_at: Option<u64>,
    /// What the connection may do (shared: anonymous connections all hold the same, and so
    /// do tokens without grant claims).
    pub grants: Arc<Grants>,
    /// Made by an embedding app's authenticator ([`Identity::user`]): such a connection
    /// takes no token in `hello` (a token's grants must not replace the app's).
    pub(crate) from_app: bool,
}

impl Identity {
    /// A user with every grant (subscribe and publish anywhere, `direct`), no name and no
    /// expiry: what an embedding app's authenticator returns for a signed-in user; narrow
    /// it with [`Identity::with_grants`].
    pub fn user(user_id: impl Into<String>) -> Self {
        Self {
            user_id: Some(user_id.into()),
            name: None,
            expires_at: None,
            grants: Arc::new(Grants::all()),
            from_app: true,
        }
    }

    /// The same identity with these grants.
    pub fn with_grants(mut self, grants: Grants) -> Self {
        self.grants = Arc::new(grants);
        self
    }

    /// The same identity with a display name (stamped into presence info as `name`).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The server has no key configured, so it cannot check tokens.
    #[error(
        "this server does not accept tokens (no --jwt-secret, --jwt-public-key or --jwt-jwks \
         configured)"
    )]
    Disabled,
    /// The token's `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// The token's `nbf` has not passed yet.
    #[error("the token is not valid yet (its nbf is in the future)")]
    NotYetValid,
    /// Bad signature, malformed, no key for its algorithm, a claim missing or refused.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// A connection needs a token and has none.
    #[error("a token is required: pass ?token= or send hello with a token")]
    Required,
    /// The embedding app's authenticator refused the connection.
    #[error("{0}")]
    Refused(String),
}

/// The server's authentication settings.
#[derive(Clone)]
pub struct Auth {
    /// The keys tokens may be signed with, in the order they are tried: the secret, the
    /// PEM key, the key set's keys. Empty when the server checks no tokens.
    keys: Vec<Key>,
    /// Whether connections without a token get in.
    allow_anonymous: bool,
    /// What anonymous connections may do (shared by all of them).
    anonymous: Arc<Grants>,
    /// What a token without grant claims may do (shared by all such tokens).
    defaults: Arc<Grants>,
    /// `--jwt-leeway` in seconds, added to `exp` for the connection's deadline.
    leeway: u64,
    /// Whether `--jwt-audience` is set (for the refusal message).
    audience_set: bool,
    /// An embedding app's authentication, tried before the tokens
    /// ([`crate::embed::Authenticator`]). Here rather than in `AppState`, which every
    /// connection holds a copy of.
    pub app: Option<Arc<dyn crate::embed::Authenticator>>,
    /// An embedding app's per-channel checks ([`crate::embed::Permissions`]).
    pub permissions: Option<Arc<dyn crate::embed::Permissions>>,
}

/// One verification key and the tokens it serves.
#[derive(Clone)]
struct Key {
    alg: Algorithm,
    kid: KidRule,
    key: DecodingKey,
    /// The claim rules, with `alg` as the only algorithm.
    validation: Validation,
}

/// Which `kid` headers a key serves.
#[derive(Clone)]
enum KidRule {
    /// Any or none: the secret, the PEM key, a key set's single key without `kid`.
    Any,
    /// This `kid`; also no `kid` when the key is its set's only key.
    Named { kid: String, only: bool },
}

impl Key {
    fn serves(&self, alg: Algorithm, kid: Option<&str>) -> bool {
        self.alg == alg
            && match (&self.kid, kid) {
                (KidRule::Any, _) => true,
                (KidRule::Named { kid: mine, .. }, Some(kid)) => mine == kid,
                (KidRule::Named { only, .. }, None) => *only,
            }
    }
}

impl Auth {
    /// From the server options.
    ///
    /// # Panics
    ///
    /// If `--jwt-algorithm` does not suit `--jwt-public-key`, which [`Config::validate`]
    /// reports.
    pub fn from_config(config: &Config) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.jwt_leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // With no audience set, jsonwebtoken refuses every token that has an `aud`.
        validation.validate_aud = true;
        let mut required = vec!["exp", "sub"];
        if !config.jwt_audience.is_empty() {
            validation.set_audience(&config.jwt_audience);
            required.push("aud");
        }
        if !config.jwt_issuer.is_empty() {
            validation.set_issuer(&config.jwt_issuer);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let key = |alg: Algorithm, kid: KidRule, key: DecodingKey| Key {
            alg,
            kid,
            key,
            validation: Validation {
                algorithms: vec![alg],
                ..validation.clone()
            },
        };

        let mut keys = Vec::new();
        if let Some(secret) = &config.jwt_secret {
            let secret = DecodingKey::from_secret(secret.expose().as_bytes());
            keys.push(key(Algorithm::HS256, KidRule::Any, secret));
        }
        if let Some(file) = &config.jwt_public_key {
            let alg = file
                .algorithm(config.jwt_algorithm)
                .unwrap_or_else(|e| panic!("{e} (Config::validate reports this)"));
            keys.push(key(alg, KidRule::Any, file.decoding_key().clone()));
        }
        if let Some(set) = &config.jwt_jwks {
            let only = set.len() == 1;
            for k in set.keys() {
                let kid = match &k.kid {
                    Some(kid) => KidRule::Named {
                        kid: kid.clone(),
                        only,
                    },
                    None => KidRule::Any,
                };
                keys.push(key(k.alg, kid, k.key.clone()));
            }
        }

        let checks_tokens = config.checks_tokens();
        Self {
            keys,
            allow_anonymous: !checks_tokens || config.allow_anonymous,
            anonymous: Arc::new(if checks_tokens {
                Grants {
                    subscribe: config.anonymous_subscribe.clone(),
                    publish: config.anonymous_publish.clone(),
                    direct: config.anonymous_direct,
                }
            } else {
                Grants::all()
            }),
            defaults: Arc::new(Grants {
                subscribe: config.token_default_subscribe.clone(),
                publish: config.token_default_publish.clone(),
                direct: config.token_default_direct,
            }),
            leeway: validation.leeway,
            audience_set: !config.jwt_audience.is_empty(),
            app: None,
            permissions: None,
        }
    }

    /// Whether tokens are checked at all: a secret, a public key or a key set is configured.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
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
            from_app: false,
        })
    }

    /// Checks a token and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if self.keys.is_empty() {
            return Err(AuthError::Disabled);
        }
        // `alg: none` (and any other unknown algorithm) fails here: no such `Algorithm`.
        let header = decode_header(token).map_err(|e| self.refusal(&e))?;
        let kid = header.kid.as_deref();
        let mut keys = self.keys.iter().filter(|k| k.serves(header.alg, kid));
        let Some(first) = keys.next() else {
            let alg = header.alg;
            return Err(AuthError::Invalid(match kid {
                Some(kid) => format!("no key for alg {alg:?} and kid {kid:?}"),
                None => format!("no key for alg {alg:?}"),
            }));
        };
        let mut outcome = decode::<Claims>(token, &first.key, &first.validation);
        for key in keys {
            // The signature is checked before the claims: only a signature that does not
            // match makes another key worth trying.
            match &outcome {
                Err(e) if *e.kind() == ErrorKind::InvalidSignature => {}
                _ => break,
            }
            outcome = decode::<Claims>(token, &key.key, &key.validation);
        }
        let claims = outcome.map_err(|e| self.refusal(&e))?.claims;
        if claims.sub.len() > MAX_CLAIM_BYTES {
            let msg = format!("sub is longer than {MAX_CLAIM_BYTES} bytes");
            return Err(AuthError::Invalid(msg));
        }
        if claims
            .name
            .as_ref()
            .is_some_and(|n| n.len() > MAX_CLAIM_BYTES)
        {
            let msg = format!("name is longer than {MAX_CLAIM_BYTES} bytes");
            return Err(AuthError::Invalid(msg));
        }
        let grants = match (claims.subscribe, claims.publish, claims.direct) {
            (None, None, None) => self.defaults.clone(),
            (subscribe, publish, direct) => Arc::new(Grants {
                subscribe: subscribe.unwrap_or_else(|| self.defaults.subscribe.clone()),
                publish: publish.unwrap_or_else(|| self.defaults.publish.clone()),
                direct: direct.unwrap_or(self.defaults.direct),
            }),
        };
        Ok(Identity {
            user_id: Some(claims.sub),
            name: claims.name,
            expires_at: Some(claims.exp.saturating_add(self.leeway)),
            grants,
            from_app: false,
        })
    }

    /// Why jsonwebtoken refused a token, in words a client developer can act on.
    fn refusal(&self, e: &JwtError) -> AuthError {
        let msg = match e.kind() {
            ErrorKind::ExpiredSignature => return AuthError::Expired,
            ErrorKind::ImmatureSignature => return AuthError::NotYetValid,
            ErrorKind::InvalidToken => "not a JWT (three base64url parts joined by dots)".into(),
            ErrorKind::InvalidSignature => "the signature does not match".into(),
            ErrorKind::InvalidAudience if self.audience_set => {
                "its aud names none of this server's audiences".into()
            }
            ErrorKind::InvalidAudience => {
                "it has an aud claim, and this server accepts no audience".into()
            }
            ErrorKind::InvalidIssuer => "its iss is not an issuer this server accepts".into(),
            ErrorKind::MissingRequiredClaim(claim) => format!("the {claim} claim is missing"),
            ErrorKind::Json(e) => format!("bad JSON: {e}"),
            _ => e.to_string(),
        };
        AuthError::Invalid(msg)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::{Value, json};

    use super::*;

    const SECRET: &str = "unit-secret";

    fn key_file(name: &str) -> String {
        format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn config(args: &[&str]) -> Config {
        let mut argv = vec!["switchboard-server".to_owned()];
        argv.extend(args.iter().map(|a| a.replace("{keys}", &key_file(""))));
        Config::try_parse_from(argv).expect("options parse")
    }

    /// Auth for the given options, which must pass `Config::validate`.
    fn auth(args: &[&str]) -> Auth {
        let config = config(args);
        config.validate().expect("valid options");
        Auth::from_config(&config)
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    /// `claims` with `sub` and a future `exp` unless given.
    fn with_defaults(mut claims: Value) -> Value {
        let map = claims.as_object_mut().unwrap();
        map.entry("sub").or_insert(json!("u1"));
        map.entry("exp").or_insert(json!(now() + 600));
        claims
    }

    fn hs256(claims: Value) -> String {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        encode(&Header::default(), &with_defaults(claims), &key).unwrap()
    }

    /// A token signed with the private key in `tests/keys/<file>`.
    fn signed(file: &str, alg: Algorithm, kid: Option<&str>, claims: Value) -> String {
        let key = keys::read_signing_key(Path::new(&key_file(file)), alg).unwrap();
        let mut header = Header::new(alg);
        header.kid = kid.map(Into::into);
        encode(&header, &with_defaults(claims), &key).unwrap()
    }

    fn invalid(result: Result<Identity, AuthError>) -> String {
        match result {
            Err(AuthError::Invalid(msg)) => msg,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

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
            direct: false,
        };
        assert!(g.may_subscribe("room:a") && g.may_subscribe("news") && !g.may_subscribe("x"));
        assert!(!g.may_publish("room:a"));
        assert!(!g.may_direct());
        assert!(Grants::all().may_direct() && Grants::all().may_publish("x"));
    }

    #[test]
    fn missing_grant_claims_get_nothing_by_default() {
        let auth = auth(&["--jwt-secret", SECRET]);
        let id = auth.verify(&hs256(json!({}))).unwrap();
        let none = Grants {
            subscribe: vec![],
            publish: vec![],
            direct: false,
        };
        assert_eq!(*id.grants, none);
        assert!(!id.grants.may_subscribe("room:a") && !id.grants.may_publish("room:a"));
        // Explicit claims are taken as they are.
        let t = hs256(json!({"subscribe": ["room:*"], "publish": ["news"], "direct": true}));
        let id = auth.verify(&t).unwrap();
        assert!(id.grants.may_subscribe("room:a") && id.grants.may_publish("news"));
        assert!(id.grants.may_direct());
    }

    #[test]
    fn missing_grant_claims_get_the_operators_defaults() {
        let auth = auth(&[
            "--jwt-secret",
            SECRET,
            "--token-default-subscribe",
            "room:*,news",
            "--token-default-publish",
            "room:*",
            "--token-default-direct",
        ]);
        let id = auth.verify(&hs256(json!({}))).unwrap();
        let defaults = Grants {
            subscribe: vec!["room:*".into(), "news".into()],
            publish: vec!["room:*".into()],
            direct: true,
        };
        assert_eq!(*id.grants, defaults);
        // An empty list and `false` are claims too: they override the defaults.
        let t = hs256(json!({"subscribe": [], "direct": false}));
        let id = auth.verify(&t).unwrap();
        assert_eq!(id.grants.subscribe, Vec::<String>::new());
        assert_eq!(id.grants.publish, vec!["room:*".to_owned()]);
        assert!(!id.grants.may_direct());
    }

    #[test]
    fn anonymous_grants_follow_whether_tokens_are_checked() {
        // No key at all: development mode, everything allowed, direct included.
        let dev = auth(&[]);
        assert!(!dev.enabled());
        assert_eq!(*dev.anonymous().unwrap().grants, Grants::all());
        assert_eq!(dev.verify("a.b.c"), Err(AuthError::Disabled));

        for key in [
            vec!["--jwt-secret", SECRET],
            vec!["--jwt-public-key", "{keys}rsa.pub.pem"],
            vec!["--jwt-jwks", "{keys}jwks.json"],
        ] {
            let strict = auth(&key);
            assert!(strict.enabled(), "{key:?}");
            assert_eq!(strict.anonymous(), Err(AuthError::Required), "{key:?}");
            let mut open = key.clone();
            open.push("--allow-anonymous");
            let grants = auth(&open).anonymous().unwrap().grants;
            assert!(
                grants.may_subscribe("x") && !grants.may_publish("x"),
                "{key:?}"
            );
            assert!(!grants.may_direct(), "{key:?}");
            open.push("--anonymous-direct");
            assert!(
                auth(&open).anonymous().unwrap().grants.may_direct(),
                "{key:?}"
            );
        }
    }

    #[test]
    fn nbf_in_the_future_is_refused_unless_within_the_leeway() {
        let auth = auth(&["--jwt-secret", SECRET]);
        let early = hs256(json!({"nbf": now() + 60}));
        let refused = auth.verify(&early);
        assert_eq!(refused, Err(AuthError::NotYetValid));
        assert!(refused.unwrap_err().to_string().contains("not valid yet"));
        assert!(auth.verify(&hs256(json!({"nbf": now() - 1}))).is_ok());
        let lenient = super::tests::auth(&["--jwt-secret", SECRET, "--jwt-leeway", "2m"]);
        assert!(lenient.verify(&early).is_ok());
    }

    #[test]
    fn exp_is_required_and_the_leeway_extends_it() {
        let auth = auth(&["--jwt-secret", SECRET]);
        let exp = now() - 5;
        let lapsed = hs256(json!({"exp": exp}));
        assert_eq!(auth.verify(&lapsed), Err(AuthError::Expired));
        let lenient = super::tests::auth(&["--jwt-secret", SECRET, "--jwt-leeway", "30s"]);
        let id = lenient.verify(&lapsed).unwrap();
        assert_eq!(
            id.expires_at,
            Some(exp + 30),
            "the connection's deadline moves too"
        );
        let id = auth.verify(&hs256(json!({"exp": exp + 100}))).unwrap();
        assert_eq!(id.expires_at, Some(exp + 100));

        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let no_exp = encode(&Header::default(), &json!({"sub": "u1"}), &key).unwrap();
        assert!(invalid(auth.verify(&no_exp)).contains("exp"));
        let no_sub = encode(&Header::default(), &json!({"exp": now() + 60}), &key).unwrap();
        assert!(invalid(auth.verify(&no_sub)).contains("sub"));
    }

    #[test]
    fn without_an_audience_configured_a_token_with_aud_is_refused() {
        let auth = auth(&["--jwt-secret", SECRET]);
        for aud in [json!("chat"), json!(["chat"]), json!([])] {
            let msg = invalid(auth.verify(&hs256(json!({ "aud": aud })))).to_string();
            assert!(msg.contains("accepts no audience"), "{aud}: {msg}");
        }
        assert!(auth.verify(&hs256(json!({}))).is_ok());
    }

    #[test]
    fn with_an_audience_configured_aud_is_required_and_must_match() {
        let auth = auth(&["--jwt-secret", SECRET, "--jwt-audience", "chat,admin"]);
        assert!(auth.verify(&hs256(json!({"aud": "chat"}))).is_ok());
        assert!(
            auth.verify(&hs256(json!({"aud": ["other", "admin"]})))
                .is_ok()
        );
        let msg = invalid(auth.verify(&hs256(json!({"aud": "billing"}))));
        assert!(msg.contains("none of this server's audiences"), "{msg}");
        let msg = invalid(auth.verify(&hs256(json!({}))));
        assert!(msg.contains("aud claim is missing"), "{msg}");
    }

    #[test]
    fn issuer_is_checked_only_when_configured() {
        let open = auth(&["--jwt-secret", SECRET]);
        assert!(open.verify(&hs256(json!({"iss": "anyone"}))).is_ok());
        let strict = auth(&["--jwt-secret", SECRET, "--jwt-issuer", "https://id.example"]);
        assert!(
            strict
                .verify(&hs256(json!({"iss": "https://id.example"})))
                .is_ok()
        );
        let msg = invalid(strict.verify(&hs256(json!({"iss": "https://evil.example"}))));
        assert!(msg.contains("iss is not an issuer"), "{msg}");
        let msg = invalid(strict.verify(&hs256(json!({}))));
        assert!(msg.contains("iss claim is missing"), "{msg}");
    }

    #[test]
    fn sub_and_name_are_capped_in_bytes() {
        let auth = auth(&["--jwt-secret", SECRET]);
        let at_cap = "u".repeat(MAX_CLAIM_BYTES);
        let id = auth
            .verify(&hs256(json!({"sub": at_cap, "name": at_cap})))
            .unwrap();
        assert_eq!(id.user_id.as_deref(), Some(at_cap.as_str()));
        let msg = invalid(auth.verify(&hs256(json!({"sub": format!("{at_cap}u")}))));
        assert!(msg.contains("sub is longer than 256 bytes"), "{msg}");
        // 129 two-byte characters: 258 bytes.
        let msg = invalid(auth.verify(&hs256(json!({"name": "é".repeat(129)}))));
        assert!(msg.contains("name is longer than 256 bytes"), "{msg}");
    }

    #[test]
    fn pem_keys_of_each_type_verify_their_algorithm() {
        for (public, private, alg) in [
            ("rsa.pub.pem", "rsa.pem", Algorithm::RS256),
            ("ec256.pub.pem", "ec256.pem", Algorithm::ES256),
            ("ec384.pub.pem", "ec384.pem", Algorithm::ES384),
            ("ed25519.pub.pem", "ed25519.pem", Algorithm::EdDSA),
        ] {
            let auth = auth(&["--jwt-public-key", &format!("{{keys}}{public}")]);
            let t = signed(private, alg, None, json!({"sub": "pem-user"}));
            let id = auth.verify(&t).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(id.user_id.as_deref(), Some("pem-user"));
            // A kid in the header does not matter to a PEM key.
            assert!(
                auth.verify(&signed(private, alg, Some("x"), json!({})))
                    .is_ok()
            );
        }
    }

    #[test]
    fn an_rsa_pem_key_takes_the_explicit_algorithm_only() {
        let auth = auth(&[
            "--jwt-public-key",
            "{keys}rsa.pub.pem",
            "--jwt-algorithm",
            "PS256",
        ]);
        assert!(
            auth.verify(&signed("rsa.pem", Algorithm::PS256, None, json!({})))
                .is_ok()
        );
        let rs256 = signed("rsa.pem", Algorithm::RS256, None, json!({}));
        assert_eq!(invalid(auth.verify(&rs256)), "no key for alg RS256");
    }

    #[test]
    fn jwks_keys_are_chosen_by_kid() {
        let auth = auth(&["--jwt-jwks", "{keys}jwks.json"]);
        for (private, alg, kid) in [
            ("rsa.pem", Algorithm::RS256, "rsa-1"),
            ("ec256.pem", Algorithm::ES256, "ec-1"),
            ("ed25519.pem", Algorithm::EdDSA, "ed-1"),
        ] {
            let t = signed(private, alg, Some(kid), json!({"sub": kid}));
            let id = auth.verify(&t).unwrap_or_else(|e| panic!("{kid}: {e}"));
            assert_eq!(id.user_id.as_deref(), Some(kid));
            // Without kid, a set of several keys has no key for the token.
            let t = signed(private, alg, None, json!({}));
            assert_eq!(invalid(auth.verify(&t)), format!("no key for alg {alg:?}"));
        }
        let t = signed("ec256.pem", Algorithm::ES256, Some("ec-2"), json!({}));
        assert_eq!(
            invalid(auth.verify(&t)),
            r#"no key for alg ES256 and kid "ec-2""#
        );
        // The kid of a key of another type: its algorithm does not match.
        let t = signed("ec256.pem", Algorithm::ES256, Some("rsa-1"), json!({}));
        assert!(invalid(auth.verify(&t)).starts_with("no key for alg ES256"));
    }

    #[test]
    fn a_single_key_set_takes_tokens_without_kid() {
        let dir = std::env::temp_dir().join(format!("switchboard-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let all: Value =
            serde_json::from_str(&std::fs::read_to_string(key_file("jwks.json")).unwrap()).unwrap();
        let ec = all["keys"][1].clone();
        assert_eq!(ec["kid"], "ec-1");
        let with_kid = dir.join("with-kid.json");
        std::fs::write(&with_kid, json!({"keys": [ec]}).to_string()).unwrap();
        let mut bare = ec.clone();
        bare.as_object_mut()
            .unwrap()
            .retain(|k, _| !["kid", "alg", "use"].contains(&k.as_str()));
        let without_kid = dir.join("without-kid.json");
        std::fs::write(&without_kid, json!({"keys": [bare]}).to_string()).unwrap();

        let named = auth(&["--jwt-jwks", with_kid.to_str().unwrap()]);
        let es256 = |kid| signed("ec256.pem", Algorithm::ES256, kid, json!({}));
        assert!(named.verify(&es256(None)).is_ok());
        assert!(named.verify(&es256(Some("ec-1"))).is_ok());
        assert!(invalid(named.verify(&es256(Some("other")))).starts_with("no key"));
        // A key without kid (and without alg: ES256 from its curve) serves any kid.
        let unnamed = auth(&["--jwt-jwks", without_kid.to_str().unwrap()]);
        assert!(unnamed.verify(&es256(None)).is_ok());
        assert!(unnamed.verify(&es256(Some("other"))).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        let auth = auth(&["--jwt-public-key", "{keys}rsa.pub.pem"]);
        let t = signed("rsa-other.pem", Algorithm::RS256, None, json!({}));
        assert_eq!(invalid(auth.verify(&t)), "the signature does not match");
        let jwks = super::tests::auth(&["--jwt-jwks", "{keys}jwks.json"]);
        let t = signed("rsa-other.pem", Algorithm::RS256, Some("rsa-1"), json!({}));
        assert_eq!(invalid(jwks.verify(&t)), "the signature does not match");
        let secret = super::tests::auth(&["--jwt-secret", "another-secret"]);
        assert_eq!(
            invalid(secret.verify(&hs256(json!({})))),
            "the signature does not match"
        );
    }

    #[test]
    fn every_key_that_serves_a_token_is_tried() {
        // The PEM key (another RSA key) serves every RS256 token; the set's rsa-1 too.
        let auth = auth(&[
            "--jwt-public-key",
            "{keys}rsa-other.pub.pem",
            "--jwt-jwks",
            "{keys}jwks.json",
            "--jwt-secret",
            SECRET,
        ]);
        let by_set = signed("rsa.pem", Algorithm::RS256, Some("rsa-1"), json!({}));
        assert!(auth.verify(&by_set).is_ok());
        let by_pem = signed("rsa-other.pem", Algorithm::RS256, Some("rsa-1"), json!({}));
        assert!(auth.verify(&by_pem).is_ok());
        assert!(auth.verify(&hs256(json!({}))).is_ok());
        let ed = signed("ed25519.pem", Algorithm::EdDSA, Some("ed-1"), json!({}));
        assert!(auth.verify(&ed).is_ok());
        // Claims are checked once a signature matched: no other key makes them right.
        let lapsed = signed(
            "rsa.pem",
            Algorithm::RS256,
            Some("rsa-1"),
            json!({"exp": 1}),
        );
        assert_eq!(auth.verify(&lapsed), Err(AuthError::Expired));
    }

    #[test]
    fn hs256_signed_with_a_public_key_is_refused() {
        // The classic confusion: the attacker HMACs with the public key's bytes, hoping the
        // server verifies HS256 with the key it has.
        let pem = std::fs::read(key_file("rsa.pub.pem")).unwrap();
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &with_defaults(json!({})),
            &EncodingKey::from_secret(&pem),
        )
        .unwrap();
        let auth = auth(&["--jwt-public-key", "{keys}rsa.pub.pem"]);
        assert_eq!(invalid(auth.verify(&forged)), "no key for alg HS256");
        let jwks = super::tests::auth(&["--jwt-jwks", "{keys}jwks.json"]);
        assert!(invalid(jwks.verify(&forged)).starts_with("no key for alg HS256"));
        // With a secret as well, HS256 is checked against the secret only.
        let both = super::tests::auth(&[
            "--jwt-public-key",
            "{keys}rsa.pub.pem",
            "--jwt-secret",
            SECRET,
        ]);
        assert_eq!(
            invalid(both.verify(&forged)),
            "the signature does not match"
        );
    }

    #[test]
    fn alg_none_is_refused() {
        // A good token's claims under a header saying `none`, without the signature.
        let good = hs256(json!({}));
        let claims = good.split('.').nth(1).unwrap();
        // {"alg":"none","typ":"JWT"} and {"alg":"None"}
        for header in ["eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0", "eyJhbGciOiJOb25lIn0"] {
            for token in [format!("{header}.{claims}."), format!("{header}.{claims}")] {
                for auth in [
                    auth(&["--jwt-secret", SECRET]),
                    auth(&["--jwt-jwks", "{keys}jwks.json"]),
                ] {
                    assert!(
                        matches!(auth.verify(&token), Err(AuthError::Invalid(_))),
                        "{token}"
                    );
                }
            }
        }
    }

    #[test]
    fn options_that_cannot_work_are_refused() {
        let refused = |args: &[&str]| config(args).validate().unwrap_err();
        assert!(refused(&["--jwt-secret", ""]).contains("must not be empty"));
        let msg = refused(&["--jwt-algorithm", "RS256"]);
        assert!(msg.contains("needs --jwt-public-key"), "{msg}");
        let msg = refused(&[
            "--jwt-public-key",
            "{keys}ec256.pub.pem",
            "--jwt-algorithm",
            "ES384",
        ]);
        assert!(msg.contains("does not suit the EC P-256 key"), "{msg}");
        let msg = refused(&[
            "--jwt-public-key",
            "{keys}ed25519.pub.pem",
            "--jwt-algorithm",
            "RS256",
        ]);
        assert!(msg.contains("does not suit the Ed25519 key"), "{msg}");
        for leeway in ["1500ms", "2h"] {
            let msg = refused(&["--jwt-secret", SECRET, "--jwt-leeway", leeway]);
            assert!(msg.contains("--jwt-leeway"), "{msg}");
        }
        assert!(refused(&["--jwt-audience", "a,,b"]).contains("empty entry"));
        // Parse errors: the algorithm name, and key files.
        let parse = |args: &[&str]| {
            let mut argv = vec!["switchboard-server".to_owned()];
            argv.extend(args.iter().map(|a| a.replace("{keys}", &key_file(""))));
            Config::try_parse_from(argv).unwrap_err().to_string()
        };
        assert!(parse(&["--jwt-algorithm", "HS256"]).contains("shared-secret"));
        assert!(parse(&["--jwt-algorithm", "none"]).contains("unknown algorithm"));
        assert!(parse(&["--jwt-public-key", "{keys}rsa.pem"]).contains("a private key"));
        assert!(parse(&["--jwt-public-key", "{keys}missing.pem"]).contains("cannot read"));
        assert!(parse(&["--jwt-public-key", "{keys}jwks.json"]).contains("not a PEM file"));
        assert!(parse(&["--jwt-jwks", "{keys}rsa.pub.pem"]).contains("not a JSON Web Key Set"));
    }
}
