//! Server-side publishing: `POST /api/publish` for backends, and the demo ticker.
//!
//! ```text
//! curl -X POST http://127.0.0.1:8080/api/publish \
//!   -H 'Authorization: Bearer <api key>' -H 'Content-Type: application/json' \
//!   -d '{"channel":"notifications","data":{"text":"Deploy finished"}}'
//! → 200 {"offset":1}
//! ```
//!
//! Errors are JSON `{"code": <error code>, "message": …}` with 401 (`unauthorized`: missing
//! or wrong key), 400 (`bad_request` / `invalid_channel`), 503 (`unavailable`: the broker
//! failed), or 404 (`unavailable`) when no `--api-key` is configured.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use switchboard_protocol::{Channel, ErrorCode, Payload, limits::validate_channel};

use crate::AppState;
use crate::broker::Publication;
use crate::hub::Hub;

/// The body of `POST /api/publish`.
#[derive(Debug, Deserialize)]
pub struct PublishRequest {
    /// Target channel.
    pub channel: String,
    /// Any JSON value.
    pub data: Payload,
    /// Deliver without storing, like an ephemeral client publish.
    #[serde(default)]
    pub ephemeral: bool,
}

fn error(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    let body = json!({ "code": code, "message": message.into() });
    (status, Json(body)).into_response()
}

/// `POST /api/publish`.
pub async fn publish(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<PublishRequest>, JsonRejection>,
) -> Response {
    let Some(key) = &state.config.api_key else {
        let msg = "the publishing API is disabled: start the server with --api-key";
        return error(StatusCode::NOT_FOUND, ErrorCode::Unavailable, msg);
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), key.expose().as_bytes())) {
        let msg = "missing or wrong API key (Authorization: Bearer <key>)";
        return error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, msg);
    }
    let Json(req) = match body {
        Ok(body) => body,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                e.body_text(),
            );
        }
    };
    if let Err(why) = validate_channel(&req.channel) {
        return error(StatusCode::BAD_REQUEST, ErrorCode::InvalidChannel, why);
    }
    let publication = Publication {
        dedupe_key: None,
        channel: Channel::from(req.channel),
        from: None,
        data: req.data,
        ephemeral: req.ephemeral,
        except: None,
    };
    match state.hub.publish(publication).await {
        Ok(published) => {
            let offset = published.position.map(|p| p.offset);
            Json(json!({ "offset": offset })).into_response()
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            e.to_string(),
        ),
    }
}

/// Compares without leaking the position of the first difference through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// The channel the demo ticker publishes on.
pub const TICKER_CHANNEL: &str = "ticker:demo";

/// Publishes a made-up price on [`TICKER_CHANNEL`] every `every`, forever:
/// `{"symbol":"SBX","price":101.25,"seq":17}`.
pub async fn demo_ticker(hub: Hub, every: Duration) {
    let channel = Channel::from(TICKER_CHANNEL);
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut price = 100.0_f64;
    for seq in 0u64.. {
        interval.tick().await;
        // A deterministic wobble: a slow wave plus a fast, smaller one.
        let t = seq as f64;
        price = (price + 0.8 * (t / 17.0).sin() + 0.3 * (t * 1.7).sin()).max(1.0);
        let price = (price * 100.0).round() / 100.0;
        let data = Payload::from(json!({ "symbol": "SBX", "price": price, "seq": seq }));
        let publication = Publication {
            dedupe_key: None,
            channel: channel.clone(),
            from: None,
            data,
            ephemeral: false,
            except: None,
        };
        if let Err(e) = hub.publish(publication).await {
            tracing::warn!("demo ticker: {e}");
        }
    }
}
