//! An example downstream service with its own database: notes per user.
//!
//! It trusts exactly one thing about identity: the `X-User-Id` header the
//! gateway sets after verifying the caller (and strips from every client
//! request). Run it only where the gateway is the sole way in.
//!
//! Layout: [`NotesStore`] (SQLite or PostgreSQL through `sqlx::Any`),
//! [`router`] (the HTTP API), [`serve`].

use std::future::Future;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS notes (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS notes_user_id ON notes (user_id);
CREATE TABLE IF NOT EXISTS handled_events (
    id TEXT PRIMARY KEY,
    handled_at BIGINT NOT NULL
);";

/// The longest note accepted, in characters.
pub const MAX_NOTE: usize = 10_000;

#[derive(Debug, Clone)]
pub struct NotesStore {
    pool: AnyPool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Note {
    pub id: String,
    pub body: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

impl NotesStore {
    /// Opens `sqlite://…` (created if missing) or `postgres://…` and creates the table.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let url =
            if url.starts_with("sqlite:") && !url.contains('?') { format!("{url}?mode=rwc") } else { url.to_owned() };
        let pool = AnyPoolOptions::new().max_connections(8).connect(&url).await?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        Ok(Self { pool })
    }

    pub async fn list(&self, user: &str) -> sqlx::Result<Vec<Note>> {
        let rows = sqlx::query("SELECT id, body, created_at FROM notes WHERE user_id = $1 ORDER BY created_at, id")
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(Note { id: r.try_get("id")?, body: r.try_get("body")?, created_at: r.try_get("created_at")? }))
            .collect()
    }

    pub async fn add(&self, user: &str, body: &str) -> sqlx::Result<Note> {
        let note = Note { id: uuid::Uuid::new_v4().to_string(), body: body.to_owned(), created_at: now_ms() };
        sqlx::query("INSERT INTO notes (id, user_id, body, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&note.id)
            .bind(user)
            .bind(&note.body)
            .bind(note.created_at)
            .execute(&self.pool)
            .await?;
        Ok(note)
    }

    /// `false` when the note does not exist or belongs to someone else.
    pub async fn remove(&self, user: &str, id: &str) -> sqlx::Result<bool> {
        let done = sqlx::query("DELETE FROM notes WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Erases `user`'s notes for event `event_id`, once: the event id is
    /// recorded in the same transaction, so a redelivered event changes
    /// nothing. `None` when the event had been handled before.
    pub async fn erase_user_once(&self, event_id: &str, user: &str) -> sqlx::Result<Option<u64>> {
        let mut tx = self.pool.begin().await?;
        let first = sqlx::query("INSERT INTO handled_events (id, handled_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(event_id)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        let erased = if first {
            Some(
                sqlx::query("DELETE FROM notes WHERE user_id = $1").bind(user).execute(&mut *tx).await?.rows_affected(),
            )
        } else {
            None
        };
        tx.commit().await?;
        Ok(erased)
    }

    pub async fn count_of(&self, user: &str) -> sqlx::Result<i64> {
        sqlx::query("SELECT COUNT(*) AS n FROM notes WHERE user_id = $1")
            .bind(user)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")
    }
}

/// Unix milliseconds.
fn now_ms() -> i64 {
    #[allow(clippy::disallowed_methods)] // an example service keeps its own wall clock
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Every way a request can fail, as `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub enum NotesError {
    NoIdentity,
    InvalidBody,
    InvalidNote,
    NotFound,
    Unavailable(sqlx::Error),
}

impl IntoResponse for NotesError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Self::NoIdentity => (StatusCode::UNAUTHORIZED, "unauthenticated", "no user identity from the gateway"),
            Self::InvalidBody => {
                (StatusCode::BAD_REQUEST, "invalid_body", "send {\"body\": \"…\"} as application/json")
            }
            Self::InvalidNote => (StatusCode::BAD_REQUEST, "invalid_note", "a note has 1 to 10000 characters"),
            Self::NotFound => (StatusCode::NOT_FOUND, "note_not_found", "no such note"),
            Self::Unavailable(e) => {
                tracing::error!(error = %e, "notes database failed");
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the notes database is unavailable")
            }
        };
        (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
    }
}

impl From<sqlx::Error> for NotesError {
    fn from(e: sqlx::Error) -> Self {
        Self::Unavailable(e)
    }
}

/// The caller as the gateway vouched for it.
fn user(headers: &HeaderMap) -> Result<&str, NotesError> {
    headers.get("x-user-id").and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()).ok_or(NotesError::NoIdentity)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNote {
    body: String,
}

async fn list(State(store): State<NotesStore>, headers: HeaderMap) -> Result<Response, NotesError> {
    let notes = store.list(user(&headers)?).await?;
    Ok(Json(json!({"notes": notes})).into_response())
}

async fn add(
    State(store): State<NotesStore>,
    headers: HeaderMap,
    body: Result<Json<NewNote>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, NotesError> {
    let user = user(&headers)?;
    let Json(note) = body.map_err(|_| NotesError::InvalidBody)?;
    if !(1..=MAX_NOTE).contains(&note.body.chars().count()) {
        return Err(NotesError::InvalidNote);
    }
    let note = store.add(user, &note.body).await?;
    Ok((StatusCode::CREATED, Json(note)).into_response())
}

async fn remove(
    State(store): State<NotesStore>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, NotesError> {
    match store.remove(user(&headers)?, &id).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(NotesError::NotFound),
    }
}

pub fn router(store: NotesStore) -> Router {
    Router::new().route("/api/notes", get(list).post(add)).route("/api/notes/{id}", delete(remove)).with_state(store)
}

/// Applies one event to the notes database: `user.deleted` erases every note
/// of that user, once per event. Other events are not this service's business.
pub async fn apply(store: &NotesStore, event: &auth_events::CloudEvent) -> sqlx::Result<()> {
    if event.kind == "user.deleted"
        && let Some(erased) = store.erase_user_once(&event.id, &event.subject).await?
    {
        tracing::info!(user_id = %event.subject, erased, "erased the notes of a deleted user");
    }
    Ok(())
}

/// The service's name in `user.deletion_completed` and in the auth-service's ledger.
pub const SERVICE: &str = "notes";

/// `user.deletion_completed` for `deleted`: a fixed id per deletion and
/// service, so that saying it twice (after a redelivery) stores it once.
pub fn deletion_completed(deleted: &auth_events::CloudEvent) -> auth_events::CloudEvent {
    auth_events::CloudEvent {
        specversion: "1.0".into(),
        id: format!("{}.{SERVICE}", deleted.id),
        source: "gatehouse/notes-service".into(),
        kind: "user.deletion_completed".into(),
        time: deleted.time.clone(),
        subject: deleted.subject.clone(),
        datacontenttype: "application/json".into(),
        data: json!({"user_id": deleted.subject, "service": SERVICE}),
    }
}

/// The notes service on NATS: applies `user.deleted`, then confirms it with
/// `user.deletion_completed` (also when a redelivered event finds the work
/// done, in case the first confirmation was lost).
pub struct NatsHandler {
    pub store: NotesStore,
    pub jetstream: async_nats::jetstream::Context,
}

#[async_trait::async_trait]
impl auth_events::EventHandler for NatsHandler {
    async fn handle(&self, event: &auth_events::CloudEvent) -> Result<(), String> {
        if event.kind != "user.deleted" {
            return Ok(());
        }
        apply(&self.store, event).await.map_err(|e| e.to_string())?;
        let done = deletion_completed(event);
        let message =
            async_nats::jetstream::message::PublishMessage::build().message_id(&done.id).payload(done.to_json().into());
        let ack = self.jetstream.send_publish(done.kind.clone(), message).await.map_err(|e| e.to_string())?;
        ack.await.map(|_| ()).map_err(|e| e.to_string())
    }
}

/// The notes service on the in-process bus of `gatehouse up`: applies
/// `user.deleted` and puts the confirmation back on the bus.
pub struct BusHandler {
    pub store: NotesStore,
    pub bus: auth_events::InProcessBus,
}

#[async_trait::async_trait]
impl auth_events::EventHandler for BusHandler {
    async fn handle(&self, event: &auth_events::CloudEvent) -> Result<(), String> {
        if event.kind == "user.deleted" {
            apply(&self.store, event).await.map_err(|e| e.to_string())?;
            // The confirmation's own handlers (the deletion ledger) must take
            // it too, or the deletion comes again and is confirmed again.
            self.bus.publish(deletion_completed(event)).await?;
        }
        Ok(())
    }
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
