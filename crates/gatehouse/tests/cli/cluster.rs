//! Several processes on PostgreSQL and NATS, as in production: two
//! auth-services, two gateways, one upstream.

use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

fn ledger_consumer(db: &TestDatabase) -> String {
    format!("ledger-{}", db.url.rsplit('/').next().unwrap_or_default())
}

/// Removes the deployment's ledger consumer from the shared NATS server.
async fn forget_ledger(db: &TestDatabase) {
    let nats = async_nats::connect(std::env::var("GATEHOUSE_TEST_NATS_URL").unwrap()).await.unwrap();
    let stream = async_nats::jetstream::new(nats).get_stream("GATEHOUSE_USERS").await.unwrap();
    let _ = stream.delete_consumer(&ledger_consumer(db)).await;
}

/// The processes of one deployment: its database, NATS, and a deletion-ledger
/// consumer of its own (deployments sharing a NATS server must not share it).
fn with_services(mut cmd: Command, db: &TestDatabase) -> Command {
    let ledger = ledger_consumer(db);
    cmd.env("GATEHOUSE_DATABASE__URL", &db.url)
        .env("GATEHOUSE_NATS__URL", std::env::var("GATEHOUSE_TEST_NATS_URL").unwrap())
        .env("GATEHOUSE_EVENTS__LEDGER_CONSUMER", ledger);
    cmd
}

/// Polls `url`'s `/readyz` until it answers 200, for at most 20 s.
async fn until_ready(client: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(format!("{url}/readyz")).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "{url} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test]
#[cfg_attr(not(services_available), ignore = "set GATEHOUSE_TEST_POSTGRES_URL and GATEHOUSE_TEST_NATS_URL")]
async fn a_logout_through_one_gateway_is_refused_by_every_gateway_within_a_second() {
    let dir = TempDir::new();
    let db = TestDatabase::create(Backend::Postgres).await;
    let auth_service = || {
        let mut cmd = with_services(gatehouse(&dir.data()), &db);
        cmd.arg("auth-service");
        cmd
    };
    let auth_a = start(auth_service()).await;
    let auth_b = start(auth_service()).await;
    let upstream = echo_upstream().await;
    let gateway = |auth: &str| {
        let file = dir.0.join(format!("gateway-{}.toml", uuid::Uuid::new_v4().simple()));
        std::fs::write(
            &file,
            format!("[gateway]\nauth_service_url = \"{auth}\"\n\n[[gateway.routes]]\nprefix = \"/api\"\nupstream = \"{upstream}\"\n"),
        )
        .unwrap();
        let mut cmd = with_services(gatehouse(&dir.data()), &db);
        cmd.arg("--config").arg(file).arg("gateway");
        cmd
    };
    let gw_a = start(gateway(&auth_a.url)).await;
    let gw_b = start(gateway(&auth_b.url)).await;
    let client = reqwest::Client::new();
    for g in [&gw_a.url, &gw_b.url] {
        until_ready(&client, g).await;
    }

    let email = format!("cluster-{}@example.com", uuid::Uuid::new_v4().simple());
    let creds = json!({"email": email, "password": PASSWORD});
    assert_eq!(client.post(format!("{}/auth/register", gw_a.url)).json(&creds).send().await.unwrap().status(), 201);
    let mut delays = Vec::new();
    let mut last_cookie = None;
    for _ in 0..20 {
        let login = client.post(format!("{}/auth/login", gw_a.url)).json(&creds).send().await.unwrap();
        assert_eq!(login.status(), 200);
        let Browser { cookie, csrf } = Browser::from_login(&login);
        for g in [&gw_a.url, &gw_b.url] {
            let ok = client.get(format!("{g}/api/x")).header("cookie", &cookie).send().await.unwrap();
            assert_eq!(ok.status(), 200);
        }
        let logout = client
            .delete(format!("{}/auth/logout", gw_b.url))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .send()
            .await
            .unwrap();
        assert_eq!(logout.status(), 204);
        let since = Instant::now();
        let mut refused = [false, false];
        while refused != [true, true] {
            assert!(since.elapsed() < Duration::from_secs(1), "a gateway still accepted a logged-out cookie after 1 s");
            for (i, g) in [&gw_a.url, &gw_b.url].into_iter().enumerate() {
                if !refused[i] {
                    let status =
                        client.get(format!("{g}/api/x")).header("cookie", &cookie).send().await.unwrap().status();
                    refused[i] = status == 401;
                }
            }
        }
        delays.push(since.elapsed());
        last_cookie = Some(cookie);
    }
    // A gateway started after those logouts never lets one of them through:
    // before it has replayed the bucket it answers 503, after it 401.
    let old_cookie = last_cookie.clone().unwrap();
    let late = gateway(&auth_a.url);
    let late = start(late).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status =
            client.get(format!("{}/api/x", late.url)).header("cookie", &old_cookie).send().await.unwrap().status();
        assert_ne!(status, 200, "a new gateway served a logged-out session");
        if status == 401 {
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "the new gateway never caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(late.stop().await.success());
    delays.sort();
    eprintln!(
        "logout to 401 on both gateways over {} logouts: p50 {:?}, p99 {:?}, max {:?}",
        delays.len(),
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays[delays.len() - 1]
    );
    for server in [gw_a, gw_b, auth_a, auth_b] {
        assert!(server.stop().await.success());
    }
    forget_ledger(&db).await;
}

/// The notes service as its own process would run it: its router as the
/// gateways' upstream, its consumer on NATS, its own SQLite database.
async fn notes_service(db_url: &str) -> (String, notes_service::NotesStore, String) {
    let store = notes_service::NotesStore::connect(db_url).await.unwrap();
    let nats = std::env::var("GATEHOUSE_TEST_NATS_URL").unwrap();
    let client = async_nats::connect(&nats).await.unwrap();
    let handler =
        notes_service::NatsHandler { store: store.clone(), jetstream: async_nats::jetstream::new(client.clone()) };
    let durable = format!("notes-{}", uuid::Uuid::new_v4().simple());
    let settings = auth_events::ConsumerSettings {
        deliver: async_nats::jetstream::consumer::DeliverPolicy::New,
        ..auth_events::ConsumerSettings::new(&durable, "user.deleted")
    };
    let consumer = auth_events::Consumer::connect(&nats, settings, std::sync::Arc::new(handler)).await.unwrap();
    std::sync::Arc::new(consumer).spawn();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(notes_service::serve(listener, notes_service::router(store.clone()), std::future::pending()));
    (url, store, durable)
}

#[tokio::test]
#[cfg_attr(not(services_available), ignore = "set GATEHOUSE_TEST_POSTGRES_URL and GATEHOUSE_TEST_NATS_URL")]
async fn a_deleted_account_leaves_no_row_in_any_database_and_the_ledger_shows_it() {
    let dir = TempDir::new();
    let db = TestDatabase::create(Backend::Postgres).await;
    let mut auth = with_services(gatehouse(&dir.data()), &db);
    auth.env("GATEHOUSE_ADMIN__OPERATOR_TOKEN", "cluster-operator").arg("auth-service");
    let auth = start(auth).await;
    let notes_db = format!("sqlite://{}", dir.0.join("notes.db").display());
    let (notes_url, notes, durable) = notes_service(&notes_db).await;
    let file = dir.0.join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "[gateway]\nauth_service_url = \"{}\"\n\n[[gateway.routes]]\nprefix = \"/api/notes\"\nupstream = \"{notes_url}\"\n",
            auth.url
        ),
    )
    .unwrap();
    let mut gw = with_services(gatehouse(&dir.data()), &db);
    gw.arg("--config").arg(&file).arg("gateway");
    let gw = start(gw).await;
    let client = reqwest::Client::new();
    until_ready(&client, &gw.url).await;

    let email = format!("erase-{}@example.com", uuid::Uuid::new_v4().simple());
    let creds = json!({"email": email, "password": PASSWORD});
    assert_eq!(client.post(format!("{}/auth/register", gw.url)).json(&creds).send().await.unwrap().status(), 201);
    let login = client.post(format!("{}/auth/login", gw.url)).json(&creds).send().await.unwrap();
    let Browser { cookie, csrf } = Browser::from_login(&login);
    let user: serde_json::Value = login.json().await.unwrap();
    let user_id = user["user"]["id"].as_str().unwrap().to_owned();
    for body in ["one", "two"] {
        let created = client
            .post(format!("{}/api/notes", gw.url))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .json(&json!({"body": body}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
    }
    assert_eq!(notes.count_of(&user_id).await.unwrap(), 2);

    let deleted = client
        .delete(format!("{}/auth/delete", gw.url))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .json(&json!({"password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let since = Instant::now();
    let ledger = format!("{}/auth/admin/deletions/{user_id}", auth.url);
    loop {
        let status: serde_json::Value =
            client.get(&ledger).bearer_auth("cluster-operator").send().await.unwrap().json().await.unwrap();
        if status["complete"] == true {
            break;
        }
        assert!(since.elapsed() < Duration::from_secs(15), "the ledger never completed: {status}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    eprintln!("deletion to ledger-complete across processes: {:?}", since.elapsed());
    assert_eq!(notes.count_of(&user_id).await.unwrap(), 0, "notes left in the notes database");

    // No row of the user in the auth database; events not yet relayed at the
    // deletion stay in the outbox, stripped to ids.
    let mut conn = {
        use sqlx::Connection as _;
        sqlx::PgConnection::connect(&db.url).await.unwrap()
    };
    for (table, column) in [("users", "id"), ("sessions", "user_id")] {
        let sql = format!("SELECT count(*) FROM {table} WHERE {column} = $1::uuid");
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(&user_id).fetch_one(&mut conn).await.unwrap();
        assert_eq!(rows, 0, "rows of the user left in {table}");
    }
    let pii: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE data::text LIKE '%' || $1 || '%'")
        .bind(&email)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(pii, 0, "the email survived in the outbox");

    let js = async_nats::jetstream::new(
        async_nats::connect(std::env::var("GATEHOUSE_TEST_NATS_URL").unwrap()).await.unwrap(),
    );
    js.get_stream("GATEHOUSE_USERS").await.unwrap().delete_consumer(&durable).await.unwrap();
    for server in [gw, auth] {
        assert!(server.stop().await.success());
    }
    forget_ledger(&db).await;
}

#[tokio::test]
#[cfg_attr(not(services_available), ignore = "set GATEHOUSE_TEST_POSTGRES_URL and GATEHOUSE_TEST_NATS_URL")]
async fn an_auth_service_killed_mid_relay_loses_no_event_and_duplicates_none() {
    use sqlx::Connection as _;

    const EVENTS: i64 = 10_000;
    let dir = TempDir::new();
    let db = TestDatabase::create(Backend::Postgres).await;
    let out = with_services(gatehouse(&dir.data()), &db).arg("migrate").output().await.unwrap();
    assert!(out.status.success());
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query(
        "INSERT INTO outbox (id, event_type, user_id, data, occurred_at) \
         SELECT gen_random_uuid(), 'user.registered', u, jsonb_build_object('user_id', u, 'method', 'password'), now() \
         FROM (SELECT gen_random_uuid() AS u FROM generate_series(1, $1)) AS users",
    )
    .bind(EVENTS)
    .execute(&mut conn)
    .await
    .unwrap();
    let nats = async_nats::connect(std::env::var("GATEHOUSE_TEST_NATS_URL").unwrap()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let stream = js.get_stream("GATEHOUSE_USERS").await.unwrap().info().await.unwrap().state.last_sequence;

    // Small batches, so that the kill lands between a publish and its commit.
    let relay = |cmd: &mut Command| {
        cmd.env("GATEHOUSE_EVENTS__RELAY_BATCH", "50").env("GATEHOUSE_EVENTS__RELAY_INTERVAL_MS", "10");
    };
    let mut first = with_services(gatehouse(&dir.data()), &db);
    relay(&mut first);
    first.arg("auth-service");
    let first = start(first).await;
    let published = async |conn: &mut sqlx::PgConnection| -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL").fetch_one(conn).await.unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while published(&mut conn).await == 0 {
        assert!(Instant::now() < deadline, "the relay never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let pid = first.child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-KILL", &pid]).status().await.unwrap().success());
    let at_kill = published(&mut conn).await;
    assert!(at_kill < EVENTS, "the relay finished before it could be killed");

    let mut second = with_services(gatehouse(&dir.data()), &db);
    relay(&mut second);
    second.arg("auth-service");
    let second = start(second).await;
    while published(&mut conn).await < EVENTS {
        assert!(Instant::now() < deadline, "the second relay never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("killed with {at_kill} of {EVENTS} events published; the second relay published the rest");

    // Every event is in the stream exactly once.
    let ids: std::collections::HashSet<String> = sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM outbox")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.to_string())
        .collect();
    let nats_url = std::env::var("GATEHOUSE_TEST_NATS_URL").unwrap();
    let seen: std::collections::HashMap<String, u32> = stream_ids(&nats_url, "user.registered", stream + 1)
        .await
        .into_iter()
        .filter(|(id, _)| ids.contains(id))
        .collect();
    assert_eq!(seen.len(), ids.len(), "events lost: {} of {}", ids.len() - seen.len(), ids.len());
    let duplicated = seen.values().filter(|n| **n > 1).count();
    assert_eq!(duplicated, 0, "{duplicated} events stored twice");
    assert!(second.stop().await.success());
    forget_ledger(&db).await;
}

#[tokio::test]
#[cfg_attr(not(services_available), ignore = "set GATEHOUSE_TEST_POSTGRES_URL and GATEHOUSE_TEST_NATS_URL")]
async fn a_standalone_gateway_judges_a_roles_only_token_by_the_auth_services_role_map() {
    let dir = TempDir::new();
    let db = TestDatabase::create(Backend::Postgres).await;
    let mut auth = with_services(gatehouse(&dir.data()), &db);
    auth.arg("auth-service");
    let auth = start(auth).await;
    let upstream = echo_upstream().await;
    let file = dir.0.join("gateway.toml");
    let routes = format!(
        "[gateway]\nauth_service_url = \"{}\"\n\n[[gateway.routes]]\nprefix = \"/api\"\nupstream = \"{upstream}\"\n\
         require_permissions = [\"r00:act099\"]\n",
        auth.url
    );
    std::fs::write(&file, routes).unwrap();
    let mut gw = with_services(gatehouse(&dir.data()), &db);
    gw.arg("--config").arg(&file).arg("gateway");
    let gw = start(gw).await;
    let client = reqwest::Client::new();
    until_ready(&client, &gw.url).await;
    let account = async |name: &str| {
        let email = format!("{name}-{}@example.com", uuid::Uuid::new_v4().simple());
        let creds = json!({"email": email, "password": PASSWORD});
        assert_eq!(client.post(format!("{}/auth/register", gw.url)).json(&creds).send().await.unwrap().status(), 201);
        email
    };
    let log_in = async |email: &str| {
        let creds = json!({"email": email, "password": PASSWORD});
        Browser::from_login(&client.post(format!("{}/auth/login", gw.url)).json(&creds).send().await.unwrap())
    };
    let (admin, big) = (account("admin").await, account("big").await);
    let mut grant = with_services(gatehouse(&dir.data()), &db);
    let granted = grant.args(["users", "grant-role", &admin, "admin"]).output().await.unwrap();
    assert!(granted.status.success(), "{}", String::from_utf8_lossy(&granted.stderr));
    let admin = log_in(&admin).await;
    let big_b = log_in(&big).await;
    let me: serde_json::Value = client
        .get(format!("{}/auth/me", gw.url))
        .header("cookie", &big_b.cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = me["id"].as_str().unwrap().to_owned();
    // 31 roles of 100 long permissions (the most a role may hold): far too many for a cookie.
    for i in 0..31 {
        let name = format!("r{i:02}");
        let mut permissions: Vec<String> = (0..99).map(|j| format!("r{i:02}:act{j:03}-{}", "p".repeat(50))).collect();
        permissions.push(format!("r{i:02}:act099"));
        let put = admin.unsafe_request(client.put(format!("{}/auth/admin/roles/{name}", gw.url)));
        assert_eq!(put.json(&json!({"permissions": permissions})).send().await.unwrap().status(), 200);
        let grant = admin.unsafe_request(client.put(format!("{}/auth/admin/users/{id}/roles/{name}", gw.url)));
        assert_eq!(grant.send().await.unwrap().status(), 200);
    }
    let big_b = log_in(&big).await;
    let token = big_b.cookie.split("; ").find_map(|c| c.strip_prefix("__Host-access_token=")).unwrap().to_owned();
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap(),
    )
    .unwrap();
    assert_eq!(claims["permissions_by_role"], true, "roles only");
    // The gateway's map catches up within its refresh (5 s); never a 200 before.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status =
            client.get(format!("{}/api/x", gw.url)).header("cookie", &big_b.cookie).send().await.unwrap().status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 403, "before the map has r00, the route is forbidden");
        assert!(Instant::now() < deadline, "the gateway never fetched the role map");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let plain = log_in(&account("plain").await).await;
    let status = client.get(format!("{}/api/x", gw.url)).header("cookie", &plain.cookie).send().await.unwrap().status();
    assert_eq!(status, 403);
    for server in [gw, auth] {
        assert!(server.stop().await.success());
    }
    forget_ledger(&db).await;
}

/// Polls `url` with `cookie` until it answers `status`, for at most 10 s.
async fn until_status(client: &reqwest::Client, url: &str, cookie: &str, status: u16) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = client.get(url).header("cookie", cookie).send().await.unwrap();
        if answer.status() == status {
            return answer;
        }
        assert!(Instant::now() < deadline, "{url} still answers {} after 10 s", answer.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
#[cfg_attr(not(services_available), ignore = "set GATEHOUSE_TEST_POSTGRES_URL and GATEHOUSE_TEST_NATS_URL")]
async fn two_up_processes_enforce_each_others_logouts_and_the_command_lines_role_changes() {
    let dir = TempDir::new();
    let db = TestDatabase::create(Backend::Postgres).await;
    let a = start(with_services(gatehouse(&dir.data()), &db)).await;
    let b = start(with_services(gatehouse(&dir.data()), &db)).await;
    let client = reqwest::Client::new();
    for server in [&a.url, &b.url] {
        until_ready(&client, server).await;
    }
    let email = format!("twin-{}@example.com", uuid::Uuid::new_v4().simple());
    let creds = json!({"email": email, "password": PASSWORD});
    assert_eq!(client.post(format!("{}/auth/register", a.url)).json(&creds).send().await.unwrap().status(), 201);
    let login =
        async || Browser::from_login(&client.post(format!("{}/auth/login", a.url)).json(&creds).send().await.unwrap());

    // Logged out through b: a, which signed the token, refuses it too.
    let first = login().await;
    let notes_at_a = format!("{}/api/notes", a.url);
    assert_eq!(client.get(&notes_at_a).header("cookie", &first.cookie).send().await.unwrap().status(), 200);
    let logout = first.unsafe_request(client.delete(format!("{}/auth/logout", b.url))).send().await.unwrap();
    assert_eq!(logout.status(), 204);
    until_status(&client, &notes_at_a, &first.cookie, 401).await;

    // A role taken away from the command line, a third process: both
    // running gateways call the token stale.
    let second = login().await;
    assert_eq!(client.get(&notes_at_a).header("cookie", &second.cookie).send().await.unwrap().status(), 200);
    let mut users = with_services(gatehouse(&dir.data()), &db);
    let out = users.args(["users", "revoke-role", &email, "user"]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for server in [&a.url, &b.url] {
        let stale = until_status(&client, &format!("{server}/api/notes"), &second.cookie, 401).await;
        let body: serde_json::Value = stale.json().await.unwrap();
        assert_eq!(body["error"]["code"], "token_stale", "{server}");
    }
    for server in [a, b] {
        assert!(server.stop().await.success());
    }
    forget_ledger(&db).await;
}
