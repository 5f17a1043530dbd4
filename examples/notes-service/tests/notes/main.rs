//! The notes service over HTTP, on SQLite and (when configured) PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use auth_store::testing::{Backend, TestDatabase};
use notes_service::NotesStore;
use serde_json::{Value, json};

struct App {
    url: String,
    store: NotesStore,
    client: reqwest::Client,
    _db: TestDatabase,
}

async fn each_backend(scenario: impl AsyncFn(App)) {
    for backend in Backend::available() {
        eprintln!("-- backend {backend:?}");
        let db = TestDatabase::create(backend).await;
        let store = NotesStore::connect(&db.url).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(notes_service::serve(listener, notes_service::router(store.clone()), std::future::pending()));
        scenario(App { url, store, client: reqwest::Client::new(), _db: db }).await;
    }
}

impl App {
    async fn add(&self, user: &str, body: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/api/notes", self.url))
            .header("x-user-id", user)
            .json(&json!({"body": body}))
            .send()
            .await
            .unwrap()
    }

    async fn list(&self, user: &str) -> Value {
        let response =
            self.client.get(format!("{}/api/notes", self.url)).header("x-user-id", user).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }
}

#[tokio::test]
async fn each_user_sees_and_deletes_only_their_own_notes() {
    each_backend(async |app| {
        let created: Value = app.add("alice", "buy milk").await.json().await.unwrap();
        app.add("alice", "call bob").await;
        app.add("bob", "secret").await;
        let alice = app.list("alice").await;
        let bodies: Vec<&str> =
            alice["notes"].as_array().unwrap().iter().map(|n| n["body"].as_str().unwrap()).collect();
        assert_eq!(bodies, ["buy milk", "call bob"]);
        let id = created["id"].as_str().unwrap();
        let as_bob =
            app.client.delete(format!("{}/api/notes/{id}", app.url)).header("x-user-id", "bob").send().await.unwrap();
        assert_eq!(as_bob.status(), 404);
        let as_alice =
            app.client.delete(format!("{}/api/notes/{id}", app.url)).header("x-user-id", "alice").send().await.unwrap();
        assert_eq!(as_alice.status(), 204);
        assert_eq!(app.list("alice").await["notes"].as_array().unwrap().len(), 1);
        assert_eq!(app.list("bob").await["notes"].as_array().unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn without_the_gateways_identity_nothing_is_served() {
    each_backend(async |app| {
        let response = app.client.get(format!("{}/api/notes", app.url)).send().await.unwrap();
        assert_eq!(response.status(), 401);
        let response =
            app.client.post(format!("{}/api/notes", app.url)).json(&json!({"body": "x"})).send().await.unwrap();
        assert_eq!(response.status(), 401);
    })
    .await;
}

#[tokio::test]
async fn bad_notes_are_400() {
    each_backend(async |app| {
        for body in [json!({"body": ""}), json!({"body": "x".repeat(10_001)}), json!({"text": "x"}), json!([1])] {
            let response = app
                .client
                .post(format!("{}/api/notes", app.url))
                .header("x-user-id", "alice")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 400, "{body}");
        }
        assert_eq!(app.list("alice").await["notes"], json!([]));
    })
    .await;
}

#[tokio::test]
async fn erasing_a_user_removes_all_their_notes_and_no_one_elses() {
    each_backend(async |app| {
        for i in 0..3 {
            app.add("alice", &format!("note {i}")).await;
        }
        app.add("bob", "keep me").await;
        assert_eq!(app.store.erase_user("alice").await.unwrap(), 3);
        assert_eq!(app.store.count_of("alice").await.unwrap(), 0);
        assert_eq!(app.store.count_of("bob").await.unwrap(), 1);
    })
    .await;
}
