//! Error codes (in `error` frames) and WebSocket close codes, with the reconnect rule.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The stable, machine-readable code of an `error` frame. The connection stays open after
/// an error frame; see [`CloseCode`] for the problems that end it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// Not JSON, not an object or array of objects, or a field is missing or has the wrong
    /// type.
    BadFrame,
    /// A JSON object whose `type` is missing or not a known frame kind.
    UnknownType,
    /// A channel name that breaks the grammar in [`crate::limits::validate_channel`].
    InvalidChannel,
    /// A batch with more frames than `limits.max_batch`. No frame of it was processed.
    BatchTooLarge,
    /// A well-formed frame the server cannot act on as given (e.g. bad request params).
    BadRequest,
    /// The action needs a valid token and the connection has none.
    Unauthorized,
    /// The token does not allow this action on this channel.
    Forbidden,
    /// `unsubscribe` on a channel the client is not subscribed to.
    NotSubscribed,
    /// `subscribe` on a channel the client is already subscribed to.
    AlreadySubscribed,
    /// More subscriptions than `limits.max_subscriptions`.
    TooManySubscriptions,
    /// `request` with a method no handler is registered for.
    UnknownMethod,
    /// The request handler failed; the message says why.
    HandlerFailed,
    /// `direct` to a client id that is not connected.
    TargetGone,
    /// The connection sent faster than `limits.rate_per_sec` allows; the frame was not
    /// processed. Repeat offenders are closed with [`CloseCode::RATE_LIMITED`].
    RateLimited,
    /// The server cannot do this right now (e.g. its broker is unreachable); try again.
    Unavailable,
    /// A field is longer than its limit (`limits.max_id_bytes`,
    /// `limits.max_presence_bytes`). The frame was not processed.
    TooLarge,
    /// `direct` to a connection whose queue for direct messages is full. The receiver is
    /// not affected; try again later.
    TargetBusy,
    /// `subscribe` with `presence` to a channel whose presence set is full (the server's
    /// `--max-presence-members`). Nothing was done; a `subscribe` without `presence` works.
    PresenceFull,
    /// The server failed while handling this frame (a bug on the server's side). The
    /// connection stays usable.
    Internal,
    /// A code this version of the library does not know (sent by a newer server).
    Other,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadFrame => "bad_frame",
            Self::UnknownType => "unknown_type",
            Self::InvalidChannel => "invalid_channel",
            Self::BatchTooLarge => "batch_too_large",
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotSubscribed => "not_subscribed",
            Self::AlreadySubscribed => "already_subscribed",
            Self::TooManySubscriptions => "too_many_subscriptions",
            Self::UnknownMethod => "unknown_method",
            Self::HandlerFailed => "handler_failed",
            Self::TargetGone => "target_gone",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::TooLarge => "too_large",
            Self::TargetBusy => "target_busy",
            Self::PresenceFull => "presence_full",
            Self::Internal => "internal",
            Self::Other => "other",
        }
    }

    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 20] = [
        Self::BadFrame,
        Self::UnknownType,
        Self::InvalidChannel,
        Self::BatchTooLarge,
        Self::BadRequest,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotSubscribed,
        Self::AlreadySubscribed,
        Self::TooManySubscriptions,
        Self::UnknownMethod,
        Self::HandlerFailed,
        Self::TargetGone,
        Self::RateLimited,
        Self::Unavailable,
        Self::TooLarge,
        Self::TargetBusy,
        Self::PresenceFull,
        Self::Internal,
        Self::Other,
    ];
}

/// By name, through [`ErrorCode::as_str`]: a derived enum deserializer is ~1 KB of wasm
/// in every browser bundle, this is a string and a search.
impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Ok(Self::ALL
            .into_iter()
            .find(|code| code.as_str() == name)
            .unwrap_or(Self::Other))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a client should do after the connection closed with a given code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// Reconnect soon: the first try after a short random delay (so a server restart does
    /// not bring every client back in the same millisecond), then the usual backoff.
    Now,
    /// Reconnect with exponential backoff and jitter: the server is overloaded or the
    /// client was too fast.
    Backoff,
    /// Reconnect only after obtaining a fresh token from the token provider.
    WithNewToken,
    /// Do not reconnect: it would fail the same way. Tell the user.
    Never,
}

/// A WebSocket close code. The application codes come in ranges, so a client knows what to
/// do even with a code newer than itself:
///
/// | range | meaning | [`Reconnect`] |
/// |---|---|---|
/// | 4000–4099 | the client is refused | `Never` |
/// | 4100–4199 | the server is overloaded or the client too fast | `Backoff` |
/// | 4200–4299 | the connection is stale | `Now` |
/// | 4300–4399 | the credentials expired | `WithNewToken` |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the client (or server) is done on purpose.
    pub const NORMAL: Self = Self(1000);
    /// 1001: the server is shutting down or restarting.
    pub const GOING_AWAY: Self = Self(1001);
    /// 1002: a WebSocket protocol error (bad framing).
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// 1006: closed without a close frame (network loss); never sent, only observed.
    pub const ABNORMAL: Self = Self(1006);
    /// 1007: a text message that is not valid UTF-8.
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// 1009: a message larger than `limits.max_frame_bytes`.
    pub const TOO_BIG: Self = Self(1009);
    /// 1011: the server hit an unexpected condition.
    pub const INTERNAL_ERROR: Self = Self(1011);
    /// 1012: the server is restarting.
    pub const SERVICE_RESTART: Self = Self(1012);
    /// 1013: try again later.
    pub const TRY_AGAIN_LATER: Self = Self(1013);

    /// 4000: the client kept sending malformed frames.
    pub const BAD_PROTOCOL: Self = Self(4000);
    /// 4001: the token was missing or invalid where one is required.
    pub const UNAUTHORIZED: Self = Self(4001);
    /// 4005: the client speaks a protocol version the server does not.
    pub const UNSUPPORTED_PROTOCOL: Self = Self(4005);
    /// 4108: the client did not read fast enough; its outbound queue overflowed.
    pub const SLOW_CONSUMER: Self = Self(4108);
    /// 4109: the client kept exceeding its message rate.
    pub const RATE_LIMITED: Self = Self(4109);
    /// 4113: the server (or this IP) has too many connections.
    pub const SERVER_FULL: Self = Self(4113);
    /// 4210: no traffic and no pong within the heartbeat timeout.
    pub const HEARTBEAT_TIMEOUT: Self = Self(4210);
    /// 4301: the token expired while connected and was not refreshed through `hello`.
    pub const TOKEN_EXPIRED: Self = Self(4301);

    /// The reconnect rule for this code.
    pub fn reconnect(self) -> Reconnect {
        match self.0 {
            1000 => Reconnect::Never,
            1011 | 1013 => Reconnect::Backoff,
            4000..=4099 => Reconnect::Never,
            4100..=4199 => Reconnect::Backoff,
            4200..=4299 => Reconnect::Now,
            4300..=4399 => Reconnect::WithNewToken,
            // 1001, 1006, 1009, 1012, other standard codes, and unknown 44xx+ codes.
            _ => Reconnect::Now,
        }
    }

    /// True unless [`Self::reconnect`] is [`Reconnect::Never`].
    pub fn should_reconnect(self) -> bool {
        self.reconnect() != Reconnect::Never
    }

    /// A short name for logs and the close frame's reason text.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NORMAL => "normal",
            Self::GOING_AWAY => "going away",
            Self::PROTOCOL_ERROR => "protocol error",
            Self::ABNORMAL => "abnormal closure",
            Self::INVALID_PAYLOAD => "invalid payload",
            Self::TOO_BIG => "message too big",
            Self::INTERNAL_ERROR => "internal error",
            Self::SERVICE_RESTART => "service restart",
            Self::TRY_AGAIN_LATER => "try again later",
            Self::BAD_PROTOCOL => "bad protocol",
            Self::UNAUTHORIZED => "unauthorized",
            Self::UNSUPPORTED_PROTOCOL => "unsupported protocol",
            Self::SLOW_CONSUMER => "slow consumer",
            Self::RATE_LIMITED => "rate limited",
            Self::SERVER_FULL => "server full",
            Self::HEARTBEAT_TIMEOUT => "heartbeat timeout",
            Self::TOKEN_EXPIRED => "token expired",
            _ => "",
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason() {
            "" => write!(f, "{}", self.0),
            reason => write!(f, "{} ({reason})", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_rule() {
        use Reconnect::*;
        let table = [
            (CloseCode::NORMAL, Never),
            (CloseCode::GOING_AWAY, Now),
            (CloseCode::ABNORMAL, Now),
            (CloseCode::TOO_BIG, Now),
            (CloseCode::INTERNAL_ERROR, Backoff),
            (CloseCode::TRY_AGAIN_LATER, Backoff),
            (CloseCode::BAD_PROTOCOL, Never),
            (CloseCode::UNAUTHORIZED, Never),
            (CloseCode::UNSUPPORTED_PROTOCOL, Never),
            (CloseCode::SLOW_CONSUMER, Backoff),
            (CloseCode::RATE_LIMITED, Backoff),
            (CloseCode::SERVER_FULL, Backoff),
            (CloseCode::HEARTBEAT_TIMEOUT, Now),
            (CloseCode::TOKEN_EXPIRED, WithNewToken),
            // unknown codes follow their range
            (CloseCode(4042), Never),
            (CloseCode(4150), Backoff),
            (CloseCode(4299), Now),
            (CloseCode(4333), WithNewToken),
        ];
        for (code, want) in table {
            assert_eq!(code.reconnect(), want, "{code}");
        }
        assert!(!CloseCode::UNAUTHORIZED.should_reconnect());
        assert!(CloseCode::SLOW_CONSUMER.should_reconnect());
    }

    #[test]
    fn error_codes_serialize_as_their_names() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        // a code from a newer server still decodes
        assert_eq!(
            serde_json::from_str::<ErrorCode>("\"quota_exceeded\"").unwrap(),
            ErrorCode::Other
        );
    }

    #[test]
    fn display_names_known_codes() {
        assert_eq!(CloseCode::SLOW_CONSUMER.to_string(), "4108 (slow consumer)");
        assert_eq!(CloseCode(4999).to_string(), "4999");
    }
}
