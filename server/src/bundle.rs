//! The web bundle at `/`: the files of `--dist`, precompressed, with cache headers.
//!
//! - A release build (`trunk build --release`, see `scripts/post-build.sh`) writes a `.br`
//!   and a `.gz` copy next to each HTML, JS, CSS and wasm file; a request whose
//!   `Accept-Encoding` allows one gets it (brotli first), with `Content-Encoding` and
//!   `Vary: Accept-Encoding` (tower-http's `ServeDir`). A file without copies is sent as is.
//! - Trunk names every asset with a hash of its content (`app-<hash>.js`), so a changed
//!   asset has a new name: those are `Cache-Control: public, max-age=31536000, immutable`.
//!   Everything else (`index.html`, which names the current assets, and the `index.html`
//!   that unknown paths get so client-side routes survive a reload) is `no-cache`: the
//!   browser asks again each visit and gets `304 Not Modified` while it is unchanged.

use std::path::Path;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use tower_http::services::{ServeDir, ServeFile};

/// For a year, never revalidated: the name changes when the content does.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Revalidated on every use (a conditional request, answered 304 while unchanged).
pub const NO_CACHE: &str = "no-cache";

/// The bundle in `dist`; unknown paths get `dist/index.html`.
pub fn router(dist: &Path) -> Router {
    let index = ServeFile::new(dist.join("index.html"))
        .precompressed_br()
        .precompressed_gzip();
    let files = ServeDir::new(dist)
        .precompressed_br()
        .precompressed_gzip()
        .fallback(index);
    Router::new()
        .fallback_service(files)
        .layer(middleware::from_fn(cache_control))
}

async fn cache_control(request: Request, next: Next) -> Response {
    let hashed = is_hashed_asset(request.uri().path());
    let mut response = next.run(request).await;
    // The index.html fallback for a missing hashed name must not be kept for a year.
    let html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/html"));
    let ok = response.status().is_success() || response.status().as_u16() == 304;
    let value = if hashed && ok && !html {
        IMMUTABLE
    } else {
        NO_CACHE
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(value));
    response
}

/// Whether the last segment of `path` is a name Trunk gave a content hash:
/// `<stem>-<12 to 16 hex digits>[_bg].<ext>` (Trunk prints the hash without leading zeros).
pub fn is_hashed_asset(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or_default();
    let Some((stem, ext)) = name.rsplit_once('.') else {
        return false;
    };
    if ext.is_empty() {
        return false;
    }
    let stem = stem.strip_suffix("_bg").unwrap_or(stem);
    let Some((_, hash)) = stem.rsplit_once('-') else {
        return false;
    };
    (12..=16).contains(&hash.len()) && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trunks_hashed_names_are_recognised() {
        for hashed in [
            "/switchboard-web-e24bdd6fb09e7849.js",
            "/switchboard-web-e24bdd6fb09e7849_bg.wasm",
            "/main-4a97ecc9b9be856.css",
            "/nested/dir/app-0123456789ab.js",
        ] {
            assert!(is_hashed_asset(hashed), "{hashed}");
        }
        for plain in [
            "/",
            "/index.html",
            "/rooms/lobby",
            "/favicon.ico",
            "/app-e24bdd6fb09e7849",
            "/app-e24bdd6fb09e7849.",
            "/app-xyzbdd6fb09e7849.js",
            "/app-e24bdd6.js",
            "/app-e24bdd6fb09e7849aa.js",
        ] {
            assert!(!is_hashed_asset(plain), "{plain}");
        }
    }
}
