//! The audit trail of authentication events: logins that succeed, fail or
//! are throttled, logouts, refresh-token reuse, password resets and
//! changes, deletions, provider links. A handler notes what its answer did
//! with [`Audit::note`]; [`record`], a layer round every route, writes it
//! to the audit table (beside the administrative actions) and as one log
//! line (target `gatehouse::audit`), with the client's address, its user
//! agent and the request id.
//!
//! Nothing secret is noted: no address typed at login (a password typed
//! into the email field would land there), no password, no token.

use std::sync::{Arc, Mutex};

use auth_core::{AuditEntry, SessionId, UserId};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Map, Value};

use crate::AppState;
use crate::routes::accounts::ClientAddress;

/// The header carrying the request id (set by the gateway in front).
pub const REQUEST_ID: &str = "x-request-id";

/// User agents are cut to this many characters, as on sessions.
pub const MAX_USER_AGENT: usize = 256;

/// What an answer did, for the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub action: &'static str,
    /// The signed-in user who acted, if any.
    pub actor: Option<UserId>,
    /// The account concerned, when known.
    pub user: Option<UserId>,
    pub reason: Option<String>,
    pub detail: Map<String, Value>,
    /// Logged at WARN: a sign of compromise (a replayed refresh token).
    pub alarming: bool,
}

impl Event {
    pub fn new(action: &'static str) -> Self {
        Self { action, actor: None, user: None, reason: None, detail: Map::new(), alarming: false }
    }

    /// Logs the event at WARN instead of INFO.
    pub fn alarming(mut self) -> Self {
        self.alarming = true;
        self
    }

    /// The account concerned.
    pub fn user(mut self, user: UserId) -> Self {
        self.user = Some(user);
        self
    }

    /// The account concerned, acting on itself while signed in.
    pub fn by(mut self, user: UserId) -> Self {
        self.actor = Some(user);
        self.user = Some(user);
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub fn session(self, session: SessionId) -> Self {
        self.with("session", session.to_string())
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.detail.insert(key.to_owned(), value.into());
        self
    }
}

/// Who sent the request, read once by [`record`] and left in the request's
/// extensions for whoever else records it (the admin guard's actor).
#[derive(Debug, Clone, Default)]
pub struct Client {
    /// The client's address, as the service trusts it.
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The request's id: the one it came with if usable (see
    /// [`request_id`]), else one made by [`record`] and sent back.
    pub request_id: Option<String>,
}

/// Where a handler notes the event its answer makes; taken from the
/// request (put there by [`record`]).
#[derive(Debug, Clone, Default)]
pub struct Audit {
    noted: Arc<Mutex<Option<Noted>>>,
    request_id: Option<String>,
}

/// What a handler noted.
#[derive(Debug)]
enum Noted {
    /// For [`record`] to write.
    Event(Event),
    /// Written already, with what it tells of (a login's session).
    Stored(AuditEntry),
}

impl Audit {
    /// Notes `event` for the answer being made (a later note replaces it).
    pub fn note(&self, event: Event) {
        self.keep(Noted::Event(event));
    }

    /// Notes an entry the store wrote already, in the transaction of what
    /// it tells of: it is logged, not written again.
    pub fn stored(&self, entry: AuditEntry) {
        self.keep(Noted::Stored(entry));
    }

    /// The request's id (see [`Client::request_id`]), for an entry made
    /// elsewhere.
    pub fn request_id(&self) -> Option<String> {
        self.request_id.clone()
    }

    fn keep(&self, noted: Noted) {
        if let Ok(mut slot) = self.noted.lock() {
            *slot = Some(noted);
        }
    }

    fn take(&self) -> Option<Noted> {
        self.noted.lock().ok().and_then(|mut slot| slot.take())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Audit {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Without the layer (a router assembled without it) notes go nowhere.
        Ok(parts.extensions.get::<Audit>().cloned().unwrap_or_default())
    }
}

/// The request id the gateway gave the request, if it is one the gateway
/// would keep: 1–128 of `A-Z a-z 0-9 . _ -`.
pub fn request_id(headers: &HeaderMap) -> Option<String> {
    let id = headers.get(REQUEST_ID)?.to_str().ok()?;
    let sane = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    (!id.is_empty() && id.len() <= 128 && id.bytes().all(sane)).then(|| id.to_owned())
}

/// The client's user agent, bytes outside UTF-8 replaced, cut to
/// [`MAX_USER_AGENT`] characters.
pub fn user_agent(headers: &HeaderMap) -> Option<String> {
    let agent = headers.get(header::USER_AGENT)?;
    Some(String::from_utf8_lossy(agent.as_bytes()).chars().take(MAX_USER_AGENT).collect())
}

/// Runs the request; writes the event its handler noted, if any. Every
/// answer to a request that came without a usable request id gets one made
/// here, in `x-request-id`, noted or not (so its presence tells nothing).
pub async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let Ok(ClientAddress(ip)) = ClientAddress::from_request_parts(&mut parts, &state).await;
    let given = request_id(&parts.headers);
    let made = given.is_none().then(|| uuid::Uuid::now_v7().simple().to_string());
    let request_id = given.or_else(|| made.clone()).unwrap_or_default();
    let client = Client {
        ip: ip.map(|ip| ip.to_string()),
        user_agent: user_agent(&parts.headers),
        request_id: Some(request_id.clone()),
    };
    let audit = Audit { noted: Arc::default(), request_id: Some(request_id.clone()) };
    parts.extensions.insert(audit.clone());
    parts.extensions.insert(client.clone());
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if let Some(value) = made.and_then(|made| HeaderValue::from_str(&made).ok()) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let event = match audit.take() {
        None => return response,
        Some(Noted::Stored(entry)) => {
            log(&entry, false);
            return response;
        }
        Some(Noted::Event(event)) => event,
    };
    let alarming = event.alarming;
    let entry = AuditEntry {
        id: uuid::Uuid::now_v7(),
        at: state.clock().now(),
        actor: event.actor,
        action: event.action.to_owned(),
        target: event.user.map(|u| u.to_string()),
        request_id: Some(request_id),
        detail: Value::Object(event.detail),
        ip: client.ip,
        user_agent: client.user_agent,
        reason: event.reason,
    };
    log(&entry, alarming);
    // On a task of its own, so a client hanging up does not cancel it; the
    // answer waits for it, so an answered event is a stored one.
    let write = tokio::spawn(async move {
        if let Err(error) = state.admin().record_entry(&entry).await {
            // The answer is decided (a session may be open): the whole
            // entry goes to the log instead.
            tracing::error!(%error, entry = ?entry, "cannot write the audit entry");
        }
    });
    let _ = write.await;
    response
}

/// The entry as one structured log line. The user agent, the one field a
/// client writes freely, is quoted and escaped; the others are ids, codes
/// and addresses the service made or parsed.
fn log(entry: &AuditEntry, alarming: bool) {
    if alarming {
        tracing::warn!(action = %entry.action, user_id = ?entry.target, "a sign of compromise; see the audit line");
    }
    let text = |field: &Option<String>| field.clone().unwrap_or_else(|| "-".to_owned());
    tracing::info!(
        target: "gatehouse::audit",
        action = %entry.action,
        user_id = %text(&entry.target),
        actor = %entry.actor.map_or_else(|| "-".to_owned(), |a| a.to_string()),
        reason = %text(&entry.reason),
        ip = %text(&entry.ip),
        user_agent = ?entry.user_agent.as_deref().unwrap_or(""),
        request_id = %text(&entry.request_id),
        detail = %entry.detail,
        "audit",
    );
}
