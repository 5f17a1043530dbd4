//! The ports on SQLite: UUIDs as text, times as unix milliseconds, JSON as text.
//! WAL mode and foreign keys (the cascades of account deletion depend on them).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use auth_core::events::StoredEvent;
use auth_core::session::RefreshRecord;
use auth_core::{
    DeletionLedger, DeletionRecord, DomainEvent, Email, EventKind, EventSink, Opening, Outbox, SecretHash, Session,
    SessionId, SessionStore, StoreError, User, UserId, UserStore,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{ConnectOptions as _, Connection as _, Row, Sqlite, SqliteConnection, SqlitePool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Health, OpenError, event_columns, session_columns, store_error, user_columns};

#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// For the migrations, and for commands and tests that run SQL of
    /// their own.
    pool: SqlitePool,
    /// The connections reads go through.
    readers: Arc<Readers>,
    /// The same file, for writes a power cut may take back without harm:
    /// the throttling counters and the relay's published marks. Their
    /// commits do not wait for the disk (`synchronous=NORMAL`); the next
    /// commit on the writer or the next checkpoint makes them durable, and a
    /// crash of the process alone loses none of them. A login writes
    /// twice here (bucket, attempt) and once on the writer (its session,
    /// with its audit row and the count it clears); each wait for the disk
    /// costs CPU that hashing passwords needs.
    ///
    /// One connection, not a pool: a counter's read-then-write holds it
    /// from the read until the write, so no other count comes between
    /// them, atomic without a write transaction (two trips to the
    /// connection's thread instead of four, or one when the row is as last
    /// seen), with waiters queued here instead of polling the file lock.
    /// Its thread runs what is sent to it in order, so a write sent before
    /// its request was dropped still runs before the next holder's read.
    /// Handing it on costs no trip (a pool pings every connection given
    /// back to it); it never holds a transaction that a failure could leave
    /// open. SQLite serves a single process ([`claim_serving`] makes sure).
    relaxed: Arc<tokio::sync::Mutex<SqliteConnection>>,
    /// The connection every write of this process goes through
    /// (`synchronous=FULL`), and with it the turn to write. SQLite lets one
    /// connection write at a time; the others poll the file's lock,
    /// sleeping 1, 2, 5, 10… ms between tries (its busy handler), which
    /// under a login flood was five sleeps per login. Here writers queue in
    /// order and wake once, when the turn is theirs; only another process's
    /// writes (a command run beside the server), or a dropped request's
    /// statement still running on the other connection, are still waited
    /// for by polling. One connection, not a pool: handing it on costs no trip (a
    /// pool pings every connection given back to it), and its thread runs
    /// what is sent to it in order. Writes on the relaxed connection take
    /// the turn too (the relaxed connection first, then the turn).
    writer: Arc<tokio::sync::Mutex<Writer>>,
    /// The counter rows as last seen, to count in one trip (a guess the
    /// writes check).
    recent: Arc<crate::sqlite_recovery::RecentCounters>,
    /// One relay batch at a time (SQLite serves a single process).
    relay: Arc<tokio::sync::Mutex<()>>,
    /// The lock that makes this process the database's only server, when
    /// it serves (see [`crate::open_to_serve`]).
    _serving: Option<Arc<std::fs::File>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file named by a `sqlite://` URL.
    pub async fn connect(url: &str) -> Result<Self, OpenError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| OpenError::Connect(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // A commit is on disk before it is answered: an account the
            // service said it created survives a power cut, not only a crash.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = open_pool(2, options.clone()).await?;
        let connect = async |options: &SqliteConnectOptions| {
            options.connect().await.map_err(|e| OpenError::Connect(e.to_string()))
        };
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(Arc::new(tokio::sync::Mutex::new(connect(&options).await?)));
        }
        let writer = connect(&options).await?;
        let relaxed = options
            .clone()
            .synchronous(SqliteSynchronous::Normal)
            .connect()
            .await
            .map_err(|e| OpenError::Connect(e.to_string()))?;
        Ok(Self {
            pool,
            readers: Arc::new(Readers { free: Arc::new(tokio::sync::Semaphore::new(readers.len())), conns: readers }),
            relaxed: Arc::new(tokio::sync::Mutex::new(relaxed)),
            writer: Arc::new(tokio::sync::Mutex::new(Writer {
                conn: writer,
                unsettled: false,
                openings: false,
                options,
            })),
            recent: Arc::default(),
            relay: Arc::default(),
            _serving: None,
        })
    }

    /// Keeps `lock` (from [`claim_serving`]) as long as this store lives.
    pub(crate) fn serving(self, lock: Option<std::fs::File>) -> Self {
        Self { _serving: lock.map(Arc::new), ..self }
    }

    /// The connection for counters and marks (see [`SqliteStore::relaxed`]),
    /// once its holder before has finished with it.
    pub(crate) async fn relaxed(&self) -> tokio::sync::MutexGuard<'_, SqliteConnection> {
        self.relaxed.lock().await
    }

    /// The relaxed connection and this process's turn to write, taken in
    /// that order (the only order: a count takes the turn while holding the
    /// connection), for one statement that writes.
    pub(crate) async fn relaxed_write(
        &self,
    ) -> Result<(tokio::sync::MutexGuard<'_, SqliteConnection>, Turn), StoreError> {
        let relaxed = self.relaxed().await;
        Ok((relaxed, self.write_turn().await?))
    }

    /// The counter rows as last seen (see [`crate::sqlite_recovery::Recent`]).
    pub(crate) fn recent(&self) -> &crate::sqlite_recovery::RecentCounters {
        &self.recent
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<Vec<i64>, OpenError> {
        let applied = crate::migrations::run_sqlite(&self.pool).await?;
        for report in crate::migrations::normalise_sqlite(&self.pool).await? {
            tracing::error!("email normalisation: {report}");
        }
        Ok(applied)
    }

    /// A connection to read with, once one is free.
    pub(crate) async fn read(&self) -> Result<Read, StoreError> {
        let closed = |_| StoreError::Unavailable("the store is closed".into());
        let free = self.readers.free.clone().acquire_owned().await.map_err(closed)?;
        // A permit held means a connection is unlocked: each is unlocked
        // before its permit goes back.
        for conn in &self.readers.conns {
            if let Ok(conn) = conn.clone().try_lock_owned() {
                return Ok(Read { conn, _free: free });
            }
        }
        let first =
            self.readers.conns.first().ok_or_else(|| StoreError::Unavailable("no connection to read".into()))?;
        Ok(Read { conn: first.clone().lock_owned().await, _free: free })
    }

    /// A write transaction on the writer, once it is this process's turn.
    /// It takes the file's write lock at once (waiting for other
    /// processes), so its reads are never made stale by another writer and
    /// its first write never fails with `SQLITE_BUSY`.
    pub(crate) async fn begin(&self) -> Result<Write, StoreError> {
        let mut turn = self.write_turn().await?;
        turn.unsettle();
        sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *turn).await.map_err(store_error)?;
        Ok(Write { turn })
    }

    /// This process's turn to write: the writer, for statements that are
    /// each a transaction of their own, held until they are answered (or
    /// their request was dropped: its thread still runs them before the
    /// next holder's statements on the writer; a write on the relaxed
    /// connection meanwhile may still poll the file's lock).
    pub(crate) async fn write_turn(&self) -> Result<Turn, StoreError> {
        let mut writer = self.writer.clone().lock_owned().await;
        writer.settle().await?;
        Ok(Turn { writer })
    }
}

/// How many connections reads go through.
const READERS: usize = 4;

/// The connections reads go through, each lent to one reader at a time.
/// (A pool pings every connection given back to it: a second trip to the
/// connection's thread for each read.) A read dropped before its answer
/// came leaves nothing behind: its statement still runs on the
/// connection's thread, before the next reader's.
#[derive(Debug)]
struct Readers {
    conns: Vec<Arc<tokio::sync::Mutex<SqliteConnection>>>,
    /// One permit per connection not lent out.
    free: Arc<tokio::sync::Semaphore>,
}

/// A connection of [`Readers`], lent until dropped.
pub(crate) struct Read {
    conn: tokio::sync::OwnedMutexGuard<SqliteConnection>,
    /// Given back after `conn` is unlocked (fields drop in order).
    _free: tokio::sync::OwnedSemaphorePermit,
}

impl std::ops::Deref for Read {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Read {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

/// The writer connection, and whether a transaction may still be open on it.
#[derive(Debug)]
struct Writer {
    conn: SqliteConnection,
    unsettled: bool,
    /// [`OPENINGS`] made on `conn`.
    openings: bool,
    /// How to open it again.
    options: SqliteConnectOptions,
}

/// Opening a session as one statement: an `INSERT` into this view, whose
/// trigger writes the session, its refresh token, its event and its audit
/// entry and deletes the failed-login count it clears, all in the
/// statement's transaction, or raises [`OPENING_REFUSED`] and writes
/// nothing when the account is disabled or the hash the login checked
/// (`verified`, when given) is no longer its own. The trigger's first
/// statement is a write lock's read: it sees the latest committed hash.
/// A failing insert (a refresh token or session id met before) undoes the
/// statement's rows. Made on the writer's own connection (`TEMP`): not
/// part of the database's schema, nothing to migrate. The writer keeps its
/// temporary storage in memory (this view and trigger, and its own
/// transactions' statement journals and sorts), so opening a session never
/// needs a temporary file.
///
/// First a read of the main schema: SQLite compiles a trigger's
/// statements against the schema as this connection last read it and,
/// unlike for a statement of its own, does not read it again when a
/// table or column named there is missing, so a writer that read the
/// schema before the migrations (or another process's) ran could not
/// open a session until something else refreshed it.
const OPENINGS: &str = "SELECT 1 FROM main.sqlite_schema LIMIT 0; PRAGMA temp_store = MEMORY; \
     CREATE TEMP VIEW IF NOT EXISTS session_openings (id, user_id, created_at, last_seen_at, expires_at, \
     idle_expires_at, revoked_at, user_agent, ip, verified, refresh, event_id, event_type, event_user_id, event_data, \
     occurred_at, audit_id, audit_at, actor, action, target, request_id, detail, audit_ip, audit_user_agent, reason, \
     clears) AS SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL WHERE 0; \
     CREATE TEMP TRIGGER IF NOT EXISTS session_openings_insert INSTEAD OF INSERT ON session_openings BEGIN \
     SELECT RAISE(ABORT, 'gatehouse: session refused') WHERE NOT EXISTS (SELECT 1 FROM users \
     WHERE id = NEW.user_id AND disabled_at IS NULL AND (NEW.verified IS NULL OR password_hash = NEW.verified)); \
     INSERT INTO sessions (id, user_id, created_at, last_seen_at, expires_at, idle_expires_at, revoked_at, \
     user_agent, ip) VALUES (NEW.id, NEW.user_id, NEW.created_at, NEW.last_seen_at, NEW.expires_at, \
     NEW.idle_expires_at, NEW.revoked_at, NEW.user_agent, NEW.ip); \
     INSERT INTO refresh_tokens (token_hash, session_id, created_at) VALUES (NEW.refresh, NEW.id, NEW.created_at); \
     INSERT INTO outbox (id, event_type, user_id, data, occurred_at) \
     VALUES (NEW.event_id, NEW.event_type, NEW.event_user_id, NEW.event_data, NEW.occurred_at); \
     INSERT INTO audit_log (id, at, actor, action, target, request_id, detail, ip, user_agent, reason) \
     VALUES (NEW.audit_id, NEW.audit_at, NEW.actor, NEW.action, NEW.target, NEW.request_id, NEW.detail, \
     NEW.audit_ip, NEW.audit_user_agent, NEW.reason); \
     DELETE FROM login_attempts WHERE key = NEW.clears; \
     END";

/// The message of the error a refused opening raises (see [`OPENINGS`]).
const OPENING_REFUSED: &str = "gatehouse: session refused";

/// Whether `e` is the refusal [`OPENINGS`] raises (`SQLITE_CONSTRAINT_TRIGGER`
/// with its message; SQLite's own constraint messages name tables and
/// columns, never values).
fn refused(e: &dyn sqlx::error::DatabaseError) -> bool {
    e.code().as_deref() == Some("1811") && e.message() == OPENING_REFUSED
}

/// `SQLITE_ERROR`: among others, a statement that names a table or column
/// its connection's copy of the schema lacks.
const SQLITE_ERROR: &str = "1";

impl Writer {
    /// Ends a transaction that did not end cleanly (an error, a dropped
    /// request): the connection is closed, which rolls back what it held
    /// and frees the file's write lock, and opened again.
    async fn settle(&mut self) -> Result<(), StoreError> {
        if !self.unsettled {
            return Ok(());
        }
        let fresh = self.options.connect().await.map_err(store_error)?;
        let used = std::mem::replace(&mut self.conn, fresh);
        self.openings = false;
        // Its queued statements run first, then closing rolls back.
        if let Err(error) = used.close().await {
            tracing::warn!(%error, "closing a database connection left inside a transaction");
        }
        self.unsettled = false;
        Ok(())
    }
}

/// This process's turn to write, with the writer connection it derefs to.
pub(crate) struct Turn {
    writer: tokio::sync::OwnedMutexGuard<Writer>,
}

impl Turn {
    /// Marks the writer as possibly inside a transaction until
    /// [`Self::settle`]: if the turn ends first, the writer is opened again.
    pub(crate) fn unsettle(&mut self) {
        self.writer.unsettled = true;
    }

    pub(crate) fn settle(&mut self) {
        self.writer.unsettled = false;
    }

    /// Makes [`OPENINGS`] on the writer, once per connection (or again
    /// after [`Self::forget_openings`]).
    pub(crate) async fn prepare_openings(&mut self) -> Result<(), StoreError> {
        if self.writer.openings {
            return Ok(());
        }
        sqlx::raw_sql(OPENINGS).execute(&mut self.writer.conn).await.map_err(store_error)?;
        self.writer.openings = true;
        Ok(())
    }

    /// Has the next [`Self::prepare_openings`] read the schema and make
    /// [`OPENINGS`] again.
    pub(crate) fn forget_openings(&mut self) {
        self.writer.openings = false;
    }
}

impl Drop for Turn {
    /// A turn that ends unsettled has the writer settled at once, not at
    /// the next write: its open transaction holds the file's write lock,
    /// which a command run beside the server would wait for.
    fn drop(&mut self) {
        if !self.writer.unsettled {
            return;
        }
        let writer = tokio::sync::OwnedMutexGuard::mutex(&self.writer).clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = writer.lock_owned().await.settle().await {
                    tracing::warn!(%error, "cannot open the database's writer again; the next write tries");
                }
            });
        }
    }
}

impl std::ops::Deref for Turn {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.writer.conn
    }
}

impl std::ops::DerefMut for Turn {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.writer.conn
    }
}

/// A write transaction on the writer, holding the turn from its begin
/// until it ends. Dropped unended (an early return, a dropped request),
/// it leaves the writer unsettled, and the writer is opened again.
pub(crate) struct Write {
    turn: Turn,
}

impl Write {
    pub(crate) async fn commit(mut self) -> Result<(), sqlx::Error> {
        sqlx::raw_sql("COMMIT").execute(&mut *self.turn).await?;
        self.turn.settle();
        Ok(())
    }

    /// Ends the transaction unwritten before the turn goes on.
    pub(crate) async fn rollback(mut self) {
        if sqlx::raw_sql("ROLLBACK").execute(&mut *self.turn).await.is_ok() {
            self.turn.settle();
        }
    }
}

impl std::ops::Deref for Write {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.turn
    }
}

impl std::ops::DerefMut for Write {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.turn
    }
}

/// Takes the exclusive lock that marks `url`'s database as served (see
/// [`crate::open_to_serve`]); the lock lasts as long as the file returned.
pub(crate) fn claim_serving(url: &str) -> Result<std::fs::File, OpenError> {
    use rustix::fs::{FlockOperation, flock};
    let options = SqliteConnectOptions::from_str(url).map_err(|e| OpenError::Connect(e.to_string()))?;
    // One lock per file, however the URL spells it (relative, through
    // links); a file not made yet is found through its directory.
    let given = options.get_filename();
    let real = std::fs::canonicalize(given)
        .or_else(|_| match (given.parent(), given.file_name()) {
            (Some(dir), Some(name)) if !dir.as_os_str().is_empty() => std::fs::canonicalize(dir).map(|d| d.join(name)),
            _ => std::env::current_dir().map(|d| d.join(given)),
        })
        .unwrap_or_else(|_| given.to_owned());
    let mut path = real.into_os_string();
    path.push(".serving");
    let shown = std::path::Path::new(&path).display();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| OpenError::Connect(format!("cannot open {shown}: {e}")))?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(OpenError::InUse(options.get_filename().display().to_string())),
        Err(e) => Err(OpenError::Connect(format!("cannot lock {shown}: {e}"))),
    }
}

async fn open_pool(connections: u32, options: SqliteConnectOptions) -> Result<SqlitePool, OpenError> {
    SqlitePoolOptions::new()
        .max_connections(connections)
        // A file cannot hang up as a server can: no ping (a round trip to
        // the connection's thread) before each use.
        .test_before_acquire(false)
        .after_release(|conn, _| Box::pin(keep_after_release(conn)))
        .connect_with(options)
        .await
        .map_err(|e| OpenError::Connect(e.to_string()))
}

/// Whether a connection going back to the pool may serve again: only when
/// it is out of every transaction. When a disk is full, SQLite rolls a
/// transaction back by itself; the driver's own `ROLLBACK` then fails and it
/// still counts the connection as inside one, so its next `BEGIN` and
/// `COMMIT` would be a savepoint and its release inside a transaction that
/// never commits: every write acknowledged and none kept. Such a connection
/// is closed instead (closing rolls back whatever it still holds).
async fn keep_after_release(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Connection as _;
    // Out of every transaction already (the common case: committed, or no
    // transaction at all): nothing is queued that could change that.
    if !conn.is_in_transaction() {
        return Ok(true);
    }
    // Runs the rollback a dropped transaction queued, so the count is settled.
    conn.ping().await?;
    let clean = !conn.is_in_transaction();
    if !clean {
        tracing::warn!("closing a database connection left inside a failed transaction");
    }
    Ok(clean)
}

/// The statement that opens `s` with what `opening` lists (see [`OPENINGS`]).
fn open_statement<'q>(
    s: &'q Session,
    opening: &Opening<'q>,
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments> {
    let Opening { refresh, event, verified, audit: a, clears } = *opening;
    let query = sqlx::query(
        "INSERT INTO session_openings (id, user_id, created_at, last_seen_at, expires_at, idle_expires_at, \
         revoked_at, user_agent, ip, verified, refresh, event_id, event_type, event_user_id, event_data, \
         occurred_at, audit_id, audit_at, actor, action, target, request_id, detail, audit_ip, audit_user_agent, \
         reason, clears) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(s.id.to_string())
    .bind(s.user_id.to_string())
    .bind(ms(s.created_at))
    .bind(ms(s.last_seen_at))
    .bind(ms(s.expires_at))
    .bind(ms(s.idle_expires_at))
    .bind(s.revoked_at.map(ms))
    .bind(&s.user_agent)
    .bind(&s.ip)
    .bind(verified)
    .bind(refresh.as_str())
    .bind(event.id.to_string())
    .bind(event.kind.subject())
    .bind(event.user_id.to_string())
    .bind(event.data.to_string())
    .bind(ms(event.occurred_at));
    bind_audit(query, a).bind(clears)
}

/// `query` with `a`'s ten columns bound in turn (id, at, actor, action,
/// target, request_id, detail, ip, user_agent, reason).
pub(crate) fn bind_audit<'q>(
    query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>,
    a: &'q auth_core::AuditEntry,
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments> {
    query
        .bind(a.id.to_string())
        .bind(ms(a.at))
        .bind(a.actor.map(|u| u.to_string()))
        .bind(&a.action)
        .bind(&a.target)
        .bind(&a.request_id)
        .bind(a.detail.to_string())
        .bind(&a.ip)
        .bind(&a.user_agent)
        .bind(&a.reason)
}

pub(crate) fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub(crate) fn from_ms(ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| StoreError::Unavailable(format!("stored time out of range: {e}")))
}

pub(crate) fn uuid_of(row: &SqliteRow, column: &str) -> Result<Uuid, StoreError> {
    let text: String = row.try_get(column).map_err(store_error)?;
    Uuid::parse_str(&text).map_err(|e| StoreError::Unavailable(format!("stored id is not a UUID: {e}")))
}

pub(crate) fn time_of(row: &SqliteRow, column: &str) -> Result<OffsetDateTime, StoreError> {
    from_ms(row.try_get(column).map_err(store_error)?)
}

pub(crate) fn opt_time_of(row: &SqliteRow, column: &str) -> Result<Option<OffsetDateTime>, StoreError> {
    let value: Option<i64> = row.try_get(column).map_err(store_error)?;
    value.map(from_ms).transpose()
}

pub(crate) async fn insert_event(tx: &mut SqliteConnection, e: &DomainEvent) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO outbox (id, event_type, user_id, data, occurred_at) VALUES (?, ?, ?, ?, ?)")
        .bind(e.id.to_string())
        .bind(e.kind.subject())
        .bind(e.user_id.to_string())
        .bind(e.data.to_string())
        .bind(ms(e.occurred_at))
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    Ok(())
}

/// Replaces `verified` by `phc` only if `verified` is still `user`'s hash.
pub(crate) async fn replace_hash<'e>(
    db: impl sqlx::Executor<'e, Database = Sqlite>,
    user: UserId,
    verified: &str,
    phc: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query("UPDATE users SET password_hash = ? WHERE id = ? AND password_hash = ?")
        .bind(phc)
        .bind(user.to_string())
        .bind(verified)
        .execute(db)
        .await
        .map_err(store_error)?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn insert_user(tx: &mut SqliteConnection, user: &User) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO users (id, email, password_hash, email_verified, created_at) VALUES (?, ?, ?, ?, ?)")
        .bind(user.id.to_string())
        .bind(user.email.as_str())
        .bind(&user.password_hash)
        .bind(user.email_verified)
        .bind(ms(user.created_at))
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    for role in &user.roles {
        sqlx::query("INSERT INTO user_roles (user_id, role, granted_at) VALUES (?, ?, ?)")
            .bind(user.id.to_string())
            .bind(role)
            .bind(ms(user.created_at))
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
    }
    Ok(())
}

pub(crate) fn user_from(row: &SqliteRow) -> Result<User, StoreError> {
    let email: String = row.try_get("email").map_err(store_error)?;
    Ok(User {
        id: UserId::from_uuid(uuid_of(row, "id")?),
        email: Email::stored(email),
        password_hash: row.try_get("password_hash").map_err(store_error)?,
        email_verified: row.try_get("email_verified").map_err(store_error)?,
        created_at: time_of(row, "created_at")?,
        roles: crate::listed(row.try_get("roles").map_err(store_error)?),
        permissions: crate::listed(row.try_get("permissions").map_err(store_error)?),
        disabled: opt_time_of(row, "disabled_at")?.is_some(),
        tokens_version: row.try_get("tokens_version").map_err(store_error)?,
    })
}

fn session_from(row: &SqliteRow) -> Result<Session, StoreError> {
    Ok(Session {
        id: SessionId::from_uuid(uuid_of(row, "id")?),
        user_id: UserId::from_uuid(uuid_of(row, "user_id")?),
        created_at: time_of(row, "created_at")?,
        last_seen_at: time_of(row, "last_seen_at")?,
        expires_at: time_of(row, "expires_at")?,
        idle_expires_at: time_of(row, "idle_expires_at")?,
        revoked_at: opt_time_of(row, "revoked_at")?,
        user_agent: row.try_get("user_agent").map_err(store_error)?,
        ip: row.try_get("ip").map_err(store_error)?,
    })
}

fn event_from(row: &SqliteRow) -> Result<StoredEvent, StoreError> {
    let kind: String = row.try_get("event_type").map_err(store_error)?;
    let kind =
        EventKind::from_subject(&kind).ok_or_else(|| StoreError::Unavailable(format!("unknown event type {kind}")))?;
    let data: String = row.try_get("data").map_err(store_error)?;
    Ok(StoredEvent {
        event: DomainEvent {
            id: uuid_of(row, "id")?,
            kind,
            user_id: UserId::from_uuid(uuid_of(row, "user_id")?),
            data: serde_json::from_str(&data).map_err(|e| StoreError::Unavailable(e.to_string()))?,
            occurred_at: time_of(row, "occurred_at")?,
        },
        published_at: opt_time_of(row, "published_at")?,
    })
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn create_user(&self, user: &User, event: &DomainEvent) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        insert_user(&mut tx, user).await?;
        insert_event(&mut tx, event).await?;
        tx.commit().await.map_err(store_error)
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
        let sql = concat!("SELECT ", user_columns!("group_concat"), " FROM users WHERE email = ?");
        let row = sqlx::query(sql)
            .bind(email.as_str())
            .fetch_optional(&mut *self.read().await?)
            .await
            .map_err(store_error)?;
        row.as_ref().map(user_from).transpose()
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let sql = concat!("SELECT ", user_columns!("group_concat"), " FROM users WHERE id = ?");
        let row = sqlx::query(sql)
            .bind(id.to_string())
            .fetch_optional(&mut *self.read().await?)
            .await
            .map_err(store_error)?;
        row.as_ref().map(user_from).transpose()
    }

    async fn set_password_hash(&self, id: UserId, phc: &str) -> Result<(), StoreError> {
        let mut turn = self.write_turn().await?;
        let done = sqlx::query("UPDATE users SET password_hash = ? WHERE id = ?")
            .bind(phc)
            .bind(id.to_string())
            .execute(&mut *turn)
            .await
            .map_err(store_error)?;
        if done.rows_affected() == 0 { Err(StoreError::NotFound) } else { Ok(()) }
    }

    async fn replace_password_hash(&self, id: UserId, verified: &str, phc: &str) -> Result<bool, StoreError> {
        let mut turn = self.write_turn().await?;
        replace_hash(&mut *turn, id, verified, phc).await
    }

    async fn delete_user(&self, id: UserId, event: &DomainEvent) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let gone = sqlx::query("DELETE FROM users WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        if gone.rows_affected() == 0 {
            tx.rollback().await;
            return Err(StoreError::NotFound);
        }
        sqlx::query("INSERT INTO deletions (user_id, deleted_at) VALUES (?, ?) ON CONFLICT DO NOTHING")
            .bind(id.to_string())
            .bind(ms(event.occurred_at))
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        // Delivered events of the user go; undelivered ones lose their PII.
        sqlx::query("DELETE FROM outbox WHERE user_id = ? AND published_at IS NOT NULL")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        sqlx::query("UPDATE outbox SET data = json_remove(data, '$.email') WHERE user_id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        insert_event(&mut tx, event).await?;
        tx.commit().await.map_err(store_error)
    }
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn create_session(&self, s: &Session, opening: &Opening<'_>) -> Result<bool, StoreError> {
        // One statement (see [`OPENINGS`]), its own transaction: one answer
        // from the connection's thread. A transaction of several statements
        // gets an answer for each (and one for `BEGIN`), each waking a
        // serving thread, which preempts a thread hashing a password. (Its
        // request dropped, the statement still runs whole: a session no
        // client holds, which expires.)
        let mut turn = self.write_turn().await?;
        turn.prepare_openings().await?;
        let mut opened = open_statement(s, opening).execute(&mut *turn).await;
        if let Err(sqlx::Error::Database(e)) = &opened
            && e.code().as_deref() == Some(SQLITE_ERROR)
        {
            // The trigger was compiled against a schema another connection
            // has changed since this one read it: read it and try again.
            turn.forget_openings();
            turn.prepare_openings().await?;
            opened = open_statement(s, opening).execute(&mut *turn).await;
        }
        match opened {
            Ok(_) => {
                if let Some(key) = opening.clears {
                    self.recent().cleared(key);
                }
                Ok(true)
            }
            Err(sqlx::Error::Database(e)) if refused(&*e) => Ok(false),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn session(&self, id: SessionId) -> Result<Option<Session>, StoreError> {
        let sql = concat!("SELECT ", session_columns!(), " FROM sessions WHERE id = ?");
        let row = sqlx::query(sql)
            .bind(id.to_string())
            .fetch_optional(&mut *self.read().await?)
            .await
            .map_err(store_error)?;
        row.as_ref().map(session_from).transpose()
    }

    async fn active_sessions(&self, user: UserId, now: OffsetDateTime) -> Result<Vec<Session>, StoreError> {
        let sql = concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE user_id = ?1 AND revoked_at IS NULL \
             AND expires_at > ?2 AND idle_expires_at > ?2 ORDER BY created_at DESC, id"
        );
        let rows = sqlx::query(sql)
            .bind(user.to_string())
            .bind(ms(now))
            .fetch_all(&mut *self.read().await?)
            .await
            .map_err(store_error)?;
        rows.iter().map(session_from).collect()
    }

    async fn refresh_record(&self, token: &SecretHash) -> Result<Option<RefreshRecord>, StoreError> {
        let row = sqlx::query("SELECT session_id, superseded_at FROM refresh_tokens WHERE token_hash = ?")
            .bind(token.as_str())
            .fetch_optional(&mut *self.read().await?)
            .await
            .map_err(store_error)?;
        row.map(|r| {
            Ok(RefreshRecord {
                session_id: SessionId::from_uuid(uuid_of(&r, "session_id")?),
                superseded_at: opt_time_of(&r, "superseded_at")?,
            })
        })
        .transpose()
    }

    async fn rotate_refresh(
        &self,
        session: SessionId,
        old: &SecretHash,
        new: &SecretHash,
        now: OffsetDateTime,
        idle_expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        // The session row first: a revocation holds it until it commits.
        let live = sqlx::query(
            "UPDATE sessions SET last_seen_at = ?, idle_expires_at = ? WHERE id = ? AND revoked_at IS NULL",
        )
        .bind(ms(now))
        .bind(ms(idle_expires_at))
        .bind(session.to_string())
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        if live.rows_affected() == 0 {
            tx.rollback().await;
            return Ok(false);
        }
        let swapped = sqlx::query(
            "UPDATE refresh_tokens SET superseded_at = ? \
             WHERE token_hash = ? AND session_id = ? AND superseded_at IS NULL",
        )
        .bind(ms(now))
        .bind(old.as_str())
        .bind(session.to_string())
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        if swapped.rows_affected() == 0 {
            tx.rollback().await;
            return Ok(false);
        }
        sqlx::query("INSERT INTO refresh_tokens (token_hash, session_id, created_at) VALUES (?, ?, ?)")
            .bind(new.as_str())
            .bind(session.to_string())
            .bind(ms(now))
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(true)
    }

    async fn revoke_session(&self, id: SessionId, now: OffsetDateTime) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let user: Option<String> = sqlx::query_scalar(
            "UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL RETURNING user_id",
        )
        .bind(ms(now))
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        let Some(user) = user else {
            tx.rollback().await;
            return Ok(false);
        };
        let user = UserId::from_str(&user).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        insert_event(&mut tx, &DomainEvent::logged_out(user, id, now)).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(true)
    }

    async fn revoke_sessions_of(
        &self,
        user: UserId,
        keep: Option<SessionId>,
        now: OffsetDateTime,
    ) -> Result<Vec<SessionId>, StoreError> {
        let mut tx = self.begin().await?;
        let revoked = revoke_sessions_in(&mut tx, user, keep, now).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(revoked)
    }
}

/// Revokes every active session of `user` but `keep` inside `tx`, writing
/// one `user.logged_out` each.
pub(crate) async fn revoke_sessions_in(
    tx: &mut SqliteConnection,
    user: UserId,
    keep: Option<SessionId>,
    now: OffsetDateTime,
) -> Result<Vec<SessionId>, StoreError> {
    let ids: Vec<String> = sqlx::query_scalar(
        "UPDATE sessions SET revoked_at = ?1 WHERE user_id = ?2 AND revoked_at IS NULL \
         AND (?3 IS NULL OR id <> ?3) RETURNING id",
    )
    .bind(ms(now))
    .bind(user.to_string())
    .bind(keep.map(|k| k.to_string()))
    .fetch_all(&mut *tx)
    .await
    .map_err(store_error)?;
    let mut revoked = Vec::with_capacity(ids.len());
    for id in ids {
        let id = SessionId::from_str(&id).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        insert_event(tx, &DomainEvent::logged_out(user, id, now)).await?;
        revoked.push(id);
    }
    Ok(revoked)
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn unpublished(&self, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = concat!("SELECT ", event_columns!(), " FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT ?");
        let rows =
            sqlx::query(sql).bind(i64::from(limit)).fetch_all(&mut *self.read().await?).await.map_err(store_error)?;
        rows.iter().map(event_from).collect()
    }

    async fn events_of(&self, user: UserId) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = concat!("SELECT ", event_columns!(), " FROM outbox WHERE user_id = ? ORDER BY seq");
        let rows =
            sqlx::query(sql).bind(user.to_string()).fetch_all(&mut *self.read().await?).await.map_err(store_error)?;
        rows.iter().map(event_from).collect()
    }

    /// One statement, on the relaxed connection: a mark a power cut takes back
    /// only publishes its event again, which delivery is ready for (at
    /// least once, deduplicated by event id).
    async fn mark_published(&self, ids: &[Uuid], now: OffsetDateTime) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = serde_json::to_string(&ids.iter().map(Uuid::to_string).collect::<Vec<_>>())
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let (mut relaxed, _turn) = self.relaxed_write().await?;
        sqlx::query(
            "UPDATE outbox SET published_at = ? WHERE published_at IS NULL AND id IN (SELECT value FROM json_each(?))",
        )
        .bind(ms(now))
        .bind(ids)
        .execute(&mut *relaxed)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn prune_published(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let mut turn = self.write_turn().await?;
        let done = sqlx::query("DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < ?")
            .bind(ms(before))
            .execute(&mut *turn)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected())
    }

    /// SQLite serves one process: an in-process lock stands in for the claim,
    /// and no write transaction is held open while the sink works.
    async fn relay_batch(&self, limit: u32, sink: &dyn EventSink, now: OffsetDateTime) -> Result<usize, StoreError> {
        let Ok(_ours) = self.relay.try_lock() else { return Ok(0) };
        let events: Vec<DomainEvent> = self.unpublished(limit).await?.into_iter().map(|s| s.event).collect();
        if events.is_empty() {
            return Ok(0);
        }
        let accepted = sink.deliver(&events).await.min(events.len());
        let ids: Vec<Uuid> = events[..accepted].iter().map(|e| e.id).collect();
        self.mark_published(&ids, now).await?;
        Ok(accepted)
    }
}

#[async_trait]
impl DeletionLedger for SqliteStore {
    async fn confirm_deletion(&self, user: UserId, service: &str, at: OffsetDateTime) -> Result<(), StoreError> {
        let mut turn = self.write_turn().await?;
        sqlx::query(
            "INSERT INTO deletion_confirmations (user_id, service, confirmed_at) \
             SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM deletions WHERE user_id = ?1) ON CONFLICT DO NOTHING",
        )
        .bind(user.to_string())
        .bind(service)
        .bind(ms(at))
        .execute(&mut *turn)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn deletion(&self, user: UserId) -> Result<Option<DeletionRecord>, StoreError> {
        let deleted_at: Option<i64> = sqlx::query_scalar("SELECT deleted_at FROM deletions WHERE user_id = ?")
            .bind(user.to_string())
            .fetch_optional(&mut *self.read().await?)
            .await
            .map_err(store_error)?;
        let Some(deleted_at) = deleted_at else { return Ok(None) };
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT service, confirmed_at FROM deletion_confirmations WHERE user_id = ? ORDER BY service",
        )
        .bind(user.to_string())
        .fetch_all(&mut *self.read().await?)
        .await
        .map_err(store_error)?;
        let confirmations = rows.into_iter().map(|(s, at)| Ok((s, from_ms(at)?))).collect::<Result<_, StoreError>>()?;
        Ok(Some(DeletionRecord { user_id: user, deleted_at: from_ms(deleted_at)?, confirmations }))
    }
}

#[async_trait]
impl Health for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&mut *self.read().await?).await.map_err(store_error).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::testing::{Backend, TestDatabase};

    #[tokio::test]
    async fn a_write_dropped_half_way_frees_the_file_for_other_processes_at_once() {
        let db = TestDatabase::create(Backend::Sqlite).await;
        let store = SqliteStore::connect(&db.url).await.unwrap();
        store.migrate().await.unwrap();
        let mut half = store.begin().await.unwrap();
        sqlx::query("INSERT INTO deletions (user_id, deleted_at) VALUES ('gone', 1)")
            .execute(&mut *half)
            .await
            .unwrap();
        drop(half);
        // Another process (a command run beside the server) waits up to 5 s
        // for the file's write lock, while the store writes nothing more.
        let options = SqliteConnectOptions::from_str(&db.url).unwrap().busy_timeout(Duration::from_secs(5));
        let mut other = options.connect().await.unwrap();
        sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut other).await.expect("the dropped write still holds the file");
        let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM deletions").fetch_one(&mut other).await.unwrap();
        assert_eq!(kept, 0, "the dropped write's row was kept");
        sqlx::raw_sql("ROLLBACK").execute(&mut other).await.unwrap();
        // And the store writes on.
        let mut next = store.begin().await.unwrap();
        sqlx::query("INSERT INTO deletions (user_id, deleted_at) VALUES ('next', 2)")
            .execute(&mut *next)
            .await
            .unwrap();
        next.commit().await.unwrap();
    }

    #[tokio::test]
    async fn sessions_open_on_a_writer_whose_schema_others_changed_and_on_one_opened_again() {
        let db = TestDatabase::create(Backend::Sqlite).await;
        // The writer reads the schema when it connects, before the
        // migrations make the tables; nothing else runs on it before the
        // first opening (the user is written through the pool).
        let store = SqliteStore::connect(&db.url).await.unwrap();
        store.migrate().await.unwrap();
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let user = UserId::new();
        sqlx::query("INSERT INTO users (id, email, password_hash, created_at) VALUES (?, 'w@example.com', ?, ?)")
            .bind(user.to_string())
            .bind("$argon2id$stored")
            .bind(ms(now))
            .execute(store.pool())
            .await
            .unwrap();
        let open = async |verified: &str| {
            let session = Session {
                id: SessionId::new(),
                user_id: user,
                created_at: now,
                last_seen_at: now,
                expires_at: now + time::Duration::days(1),
                idle_expires_at: now + time::Duration::days(1),
                revoked_at: None,
                user_agent: None,
                ip: None,
            };
            let event = DomainEvent::logged_in(user, session.id, now);
            let audit = auth_core::AuditEntry {
                id: event.id,
                at: now,
                actor: Some(user),
                action: "login.succeeded".into(),
                target: None,
                request_id: None,
                detail: serde_json::json!({}),
                ip: None,
                user_agent: None,
                reason: None,
            };
            let refresh = SecretHash::of(&session.id.to_string());
            let opening =
                Opening { refresh: &refresh, event: &event, verified: Some(verified), audit: &audit, clears: None };
            store.create_session(&session, &opening).await
        };
        assert!(open("$argon2id$stored").await.unwrap(), "the first opening was refused");
        assert!(!open("$argon2id$other").await.unwrap(), "an opening with a replaced hash was not refused");
        // Another connection renames a column the openings write, and
        // back: the writer's copy of the schema is out of date twice.
        let rename = async |from: &str, to: &str| {
            let mut other = SqliteConnectOptions::from_str(&db.url).unwrap().connect().await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER TABLE audit_log RENAME COLUMN {from} TO {to}")))
                .execute(&mut other)
                .await
                .unwrap();
        };
        rename("reason", "why").await;
        assert!(open("$argon2id$stored").await.is_err(), "a session opened without its audit row's column");
        rename("why", "reason").await;
        assert!(open("$argon2id$stored").await.unwrap(), "no session opened once the column was back");
        // A write dropped half way has the writer opened again.
        drop(store.begin().await.unwrap());
        assert!(open("$argon2id$stored").await.unwrap(), "no session opened on the writer opened again");
        assert!(!open("$argon2id$other").await.unwrap(), "the writer opened again let a replaced hash open a session");
        let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions").fetch_one(store.pool()).await.unwrap();
        let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'login.succeeded'")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!((sessions, audited), (3, 3));
    }
}
