//! The limits a connection is held to, and the channel-name grammar.

use serde::{Deserialize, Serialize};

/// Limits the server announces in `welcome`. The defaults are the server's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest WebSocket message (one frame or one batch) in bytes; a larger one closes the
    /// connection with 1009. Defaults to 65,536.
    pub max_frame_bytes: u32,
    /// Most frames in one batch. Defaults to 100.
    pub max_batch: u32,
    /// Most channels one connection may be subscribed to. Defaults to 100.
    pub max_subscriptions: u32,
    /// Sustained frames per second a connection may send (a batch counts each frame).
    /// Defaults to 50.
    pub rate_per_sec: u32,
    /// Frames a connection may send in a burst above the sustained rate. Defaults to 100.
    pub rate_burst: u32,
    /// Longest id, in bytes: a `publish`, `request` or `ping` id, a `request` method name,
    /// a `direct` target, a `since` epoch, `hello.resume` and the `hello.client` strings.
    /// A longer one is refused with `too_large`. Defaults to 64. (Absent in a `welcome`
    /// from a server that predates it: read as the default.)
    #[serde(default = "default_max_id_bytes")]
    pub max_id_bytes: u32,
    /// Largest presence `info` in a `subscribe`, in bytes of JSON. A larger one is refused
    /// with `too_large`. Defaults to 1,024.
    #[serde(default = "default_max_presence_bytes")]
    pub max_presence_bytes: u32,
}

fn default_max_id_bytes() -> u32 {
    Limits::default().max_id_bytes
}

fn default_max_presence_bytes() -> u32 {
    Limits::default().max_presence_bytes
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            max_batch: 100,
            max_subscriptions: 100,
            rate_per_sec: 50,
            rate_burst: 100,
            max_id_bytes: 64,
            max_presence_bytes: 1024,
        }
    }
}

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 128;

/// Checks a channel name: 1 to [`MAX_CHANNEL_LEN`] characters, each an ASCII letter or
/// digit or one of `_ - . : @ / =`. A `:` conventionally separates a namespace
/// (`room:lobby`, `ticker:BTC`).
///
/// ```
/// use switchboard_protocol::limits::validate_channel;
/// assert!(validate_channel("room:lobby").is_ok());
/// assert!(validate_channel("has space").is_err());
/// ```
pub fn validate_channel(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("channel name is empty".into());
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(format!(
            "channel name is {} bytes, the limit is {MAX_CHANNEL_LEN}",
            name.len()
        ));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_-.:@/=".contains(*c)))
    {
        Some(c) => Err(format!(
            "channel name contains {c:?}; allowed are ASCII letters, digits and _ - . : @ / ="
        )),
        None => Ok(()),
    }
}
