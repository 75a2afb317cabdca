//! Wall-clock time and random ids.

use std::hash::{BuildHasher, RandomState};
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// 128 random bits as 22 URL-safe characters: unguessable ids (connections).
pub fn random_id() -> String {
    url_safe(rand::rng().random())
}

/// Two keyed hashes with keys random per process: a 128-bit keyed function of a value
/// that nobody without the keys can compute.
static KEYS: LazyLock<(RandomState, RandomState)> =
    LazyLock::new(|| (RandomState::new(), RandomState::new()));

/// An id derived from `id` with the process's secret keys (SipHash), as 22 URL-safe
/// characters: as unguessable as a random one to anyone who knows `id`, and not stored.
pub fn derived_id(id: &str) -> String {
    let (a, b) = &*KEYS;
    url_safe((u128::from(a.hash_one(id)) << 64) | u128::from(b.hash_one(id)))
}

fn url_safe(mut bits: u128) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..22)
        .map(|_| {
            let c = ALPHABET[(bits & 63) as usize] as char;
            bits >>= 6;
            c
        })
        .collect()
}

/// A short random epoch: 8 lowercase letters and digits (41 bits), enough to tell one
/// incarnation of a stream from another.
pub fn random_epoch() -> String {
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_22_url_safe_characters_and_differ() {
        let a = random_id();
        let b = random_id();
        assert_eq!(a.len(), 22);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_ne!(a, b);
        assert_eq!(random_epoch().len(), 8);
        let (da, db) = (derived_id(&a), derived_id(&b));
        assert_eq!(da.len(), 22);
        assert_ne!(da, db);
        assert_eq!(da, derived_id(&a), "stable within the process");
    }
}
