//! An existing axum app with Switchboard mounted at `/realtime`: what embedding looks like.
//!
//! The app has its own login (a cookie), its own state (sessions, room members, a "database"
//! of chat lines and last-seen times) and its own REST endpoints. Switchboard is built once
//! ([`build`]) with the app's pieces:
//! - [`CookieAuth`]: the WebSocket upgrade is admitted by the same cookie as the REST
//!   endpoints (no token to hand out);
//! - [`RoomPermissions`]: who may join or post in `room:<name>` comes from the app's member
//!   lists (everyone in `lobby`);
//! - [`Record`] (hooks): connections counted, last-seen stored, every published chat line
//!   kept in the app's database;
//! - `whoami`, a request method that reads the app's state.
//!
//! REST, every endpoint but login for signed-in users, the room ones for its members:
//! `POST /login` `{"user"}` sets the cookie; `POST /rooms/{room}/messages` `{"text"}`
//! publishes as the server; `GET /rooms/{room}/lines` reads the app's database;
//! `GET /rooms/{room}/members` reads the room's presence; `POST /users/{user}/notify` sends
//! a `direct` to every connection of a user. `tests/app.rs` drives all of it with a real
//! WebSocket client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_server::embed::{
    Authenticator, BoxFuture, Caller, Grants, Hooks, Identity, Parts, Permissions,
    PublishedMessage, Refusal,
};
use switchboard_server::methods::{MethodError, Methods};
use switchboard_server::protocol::Channel;
use switchboard_server::{Config, Switchboard};

/// The app's own state.
#[derive(Default)]
pub struct App {
    /// Session cookie → user.
    sessions: Mutex<HashMap<String, String>>,
    /// Room → its members, besides the open `lobby`.
    members: HashMap<String, Vec<String>>,
    /// The app's "database": chat lines as the `published` hook stored them.
    lines: Mutex<Vec<Line>>,
    /// User → the last time a connection of theirs came or went (ms).
    last_seen: Mutex<HashMap<String, u64>>,
    /// Connections open now.
    online: AtomicUsize,
}

/// One stored chat line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Line {
    /// Its room.
    pub room: String,
    /// Its stream offset.
    pub offset: u64,
    /// What was published.
    pub data: Value,
}

impl App {
    fn user_of(&self, headers: &HeaderMap) -> Option<String> {
        let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
        let sid = cookies
            .split(';')
            .find_map(|c| c.trim().strip_prefix("sid="))?;
        self.sessions.lock().unwrap().get(sid).cloned()
    }

    fn may_enter(&self, user: Option<&str>, channel: &Channel) -> bool {
        match channel.as_str().strip_prefix("room:") {
            Some("lobby") => true,
            Some(room) => user.is_some_and(|u| {
                self.members
                    .get(room)
                    .is_some_and(|m| m.iter().any(|x| x == u))
            }),
            None => false,
        }
    }

    fn seen(&self, user: Option<&str>) {
        if let Some(user) = user {
            let now = switchboard_server::clock::now_ms();
            self.last_seen.lock().unwrap().insert(user.to_owned(), now);
        }
    }
}

/// Admits a WebSocket upgrade by the app's session cookie, as a user allowed into every
/// `room:*` (which rooms exactly is [`RoomPermissions`]'s call).
pub struct CookieAuth(pub Arc<App>);

impl Authenticator for CookieAuth {
    fn authenticate<'a>(
        &'a self,
        request: &'a Parts,
    ) -> BoxFuture<'a, Result<Option<Identity>, Refusal>> {
        let user = self.0.user_of(&request.headers);
        Box::pin(async move {
            let user = user.ok_or_else(|| Refusal("sign in first (POST /login)".into()))?;
            let rooms = vec!["room:*".to_owned()];
            let grants = Grants {
                subscribe: rooms.clone(),
                publish: rooms,
                direct: true,
            };
            Ok(Some(Identity::user(user).with_grants(grants)))
        })
    }
}

/// Room membership from the app's own lists.
pub struct RoomPermissions(pub Arc<App>);

impl Permissions for RoomPermissions {
    fn may_subscribe<'a>(
        &'a self,
        caller: &'a Caller,
        channel: &'a Channel,
    ) -> BoxFuture<'a, bool> {
        let allowed = self.0.may_enter(caller.user_id.as_deref(), channel);
        Box::pin(async move { allowed })
    }

    fn may_publish<'a>(&'a self, caller: &'a Caller, channel: &'a Channel) -> BoxFuture<'a, bool> {
        let allowed = self.0.may_enter(caller.user_id.as_deref(), channel);
        Box::pin(async move { allowed })
    }
}

/// The app's side effects.
pub struct Record(pub Arc<App>);

impl Hooks for Record {
    fn connected(&self, caller: &Caller) {
        self.0.online.fetch_add(1, Ordering::Relaxed);
        self.0.seen(caller.user_id.as_deref());
    }

    fn disconnected(&self, caller: &Caller) {
        self.0.online.fetch_sub(1, Ordering::Relaxed);
        self.0.seen(caller.user_id.as_deref());
    }

    fn published(&self, message: &PublishedMessage<'_>) {
        let (Some(room), Some(position)) = (
            message.channel.as_str().strip_prefix("room:"),
            message.position,
        ) else {
            return;
        };
        self.0.lines.lock().unwrap().push(Line {
            room: room.to_owned(),
            offset: position.offset,
            data: message.data.to_value(),
        });
    }
}

#[derive(Clone)]
struct AppState {
    app: Arc<App>,
    sb: Switchboard,
}

/// The app with Switchboard at `/realtime` (its WebSocket at `/realtime/ws`); `members`
/// lists who may enter which room besides the open lobby.
pub fn build(members: HashMap<String, Vec<String>>) -> Result<(Router, Switchboard), String> {
    let app = Arc::new(App {
        members,
        ..App::default()
    });
    let methods = Methods::with_builtins().method_with_state(
        "whoami",
        app.clone(),
        |app: Arc<App>, ctx, _: ()| async move {
            Ok::<_, MethodError>(json!({
                "user": ctx.user_id,
                "online": app.online.load(Ordering::Relaxed),
            }))
        },
    );
    let config = Config::from_args(["--history", "memory"]).map_err(|e| e.to_string())?;
    let sb = Switchboard::builder(config)
        .methods(methods)
        .authenticator(CookieAuth(app.clone()))
        .permissions(RoomPermissions(app.clone()))
        .hooks(Record(app.clone()))
        .build()?;
    let router = Router::new()
        .route("/login", post(login))
        .route("/rooms/{room}/messages", post(post_message))
        .route("/rooms/{room}/lines", get(lines))
        .route("/rooms/{room}/members", get(members_of))
        .route("/users/{user}/notify", post(notify))
        .with_state(AppState {
            app,
            sb: sb.clone(),
        })
        .nest("/realtime", sb.router());
    Ok((router, sb))
}

/// Serves `router` on `listener` until `shutdown`; then Switchboard closes its connections
/// (1001, after what is queued for them) and axum stops.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    sb: Switchboard,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Every WebSocket is told 1001 before the server stops.
            sb.shutdown().await;
        })
        .await
}

#[derive(Deserialize)]
struct Login {
    user: String,
}

async fn login(State(s): State<AppState>, Json(login): Json<Login>) -> Response {
    let sid = format!("{:032x}", rand::random::<u128>());
    s.app
        .sessions
        .lock()
        .unwrap()
        .insert(sid.clone(), login.user);
    let cookie = format!("sid={sid}; HttpOnly; SameSite=Lax; Path=/");
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
}

#[derive(Deserialize)]
struct Post {
    text: String,
}

async fn post_message(
    State(s): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    Json(post): Json<Post>,
) -> Response {
    let user = s.app.user_of(&headers);
    let channel = Channel::from(format!("room:{room}").as_str());
    if user.is_none() || !s.app.may_enter(user.as_deref(), &channel) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let data = json!({ "user": user, "text": post.text });
    match s.sb.publish(channel.as_str(), &data).await {
        Ok(published) => {
            Json(json!({ "offset": published.position.map(|p| p.offset) })).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// The signed-in user of a request, if they may enter `room`.
fn member(s: &AppState, headers: &HeaderMap, room: &str) -> Option<String> {
    let user = s.app.user_of(headers)?;
    let channel = Channel::from(format!("room:{room}").as_str());
    s.app.may_enter(Some(&user), &channel).then_some(user)
}

async fn lines(
    State(s): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    if member(&s, &headers, &room).is_none() {
        return StatusCode::FORBIDDEN.into_response();
    }
    let lines = s.app.lines.lock().unwrap();
    let lines: Vec<Line> = lines.iter().filter(|l| l.room == room).cloned().collect();
    Json(lines).into_response()
}

async fn members_of(
    State(s): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    if member(&s, &headers, &room).is_none() {
        return StatusCode::FORBIDDEN.into_response();
    }
    match s.sb.presence(&format!("room:{room}")).await {
        Ok(members) => {
            let users: Vec<String> = members.into_iter().map(|m| m.user_id).collect();
            Json(users).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// A signed-in user pokes another: `{"from": <sender>, "data": …}` to all of their
/// connections.
async fn notify(
    State(s): State<AppState>,
    Path(user): Path<String>,
    headers: HeaderMap,
    Json(data): Json<Value>,
) -> Response {
    let Some(from) = s.app.user_of(&headers) else {
        return StatusCode::FORBIDDEN.into_response();
    };
    let sent =
        s.sb.send_to_user(&user, &json!({ "from": from, "data": data }))
            .await
            .unwrap_or(0);
    Json(json!({ "connections": sent })).into_response()
}
