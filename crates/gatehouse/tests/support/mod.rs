//! What the binary's test suites share: a temporary data dir, the
//! `gatehouse` command, a started server with its log, a browser's cookies,
//! a NATS server of a test's own.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
pub(crate) const PASSWORD: &str = "correct horse battery staple";

pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("gatehouse-cli-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub(crate) fn data(&self) -> PathBuf {
        self.0.join("data")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `gatehouse` with a clean environment: no GATEHOUSE_* from the caller.
pub(crate) fn gatehouse(data_dir: &Path) -> Command {
    gatehouse_via(&[], data_dir)
}

/// `gatehouse` run by `wrapper` (e.g. `nsenter …`), which ends with the
/// binary's arguments following.
pub(crate) fn gatehouse_via(wrapper: &[&str], data_dir: &Path) -> Command {
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(BIN);
            cmd
        }
        None => Command::new(BIN),
    };
    for (key, _) in std::env::vars() {
        if key.starts_with("GATEHOUSE_") {
            cmd.env_remove(key);
        }
    }
    cmd.arg("--data-dir").arg(data_dir).env("RUST_LOG", "info").kill_on_drop(true);
    // Tests of other things log in and register from one address, often at
    // once; a test of the limits sets them back (`real_limits`).
    for bucket in ["LOGIN", "REGISTER", "FORGOT", "REFRESH"] {
        cmd.env(format!("GATEHOUSE_LIMITS__{bucket}__BURST"), "100000");
        cmd.env(format!("GATEHOUSE_LIMITS__{bucket}__PER_MINUTE"), "100000");
    }
    cmd.env("GATEHOUSE_LIMITS__FAILURES_BEFORE_DELAY", "99");
    // Many servers at once: each its own operator port; /metrics on the
    // client port to this token.
    cmd.env("GATEHOUSE_ADMIN__LISTEN", "127.0.0.1:0").env("GATEHOUSE_ADMIN__METRICS_TOKEN", METRICS_TOKEN);
    cmd
}

/// The bearer `/metrics` answers on the client port of servers these tests start.
pub(crate) const METRICS_TOKEN: &str = "metrics-token-for-tests";

/// Takes back what [`gatehouse_via`] set: the limits a user gets.
#[allow(dead_code)]
pub(crate) fn real_limits(cmd: &mut Command) {
    for bucket in ["LOGIN", "REGISTER", "FORGOT", "REFRESH"] {
        cmd.env_remove(format!("GATEHOUSE_LIMITS__{bucket}__BURST"));
        cmd.env_remove(format!("GATEHOUSE_LIMITS__{bucket}__PER_MINUTE"));
    }
    cmd.env_remove("GATEHOUSE_LIMITS__FAILURES_BEFORE_DELAY");
}

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) url: String,
    pub(crate) log: tokio::sync::mpsc::UnboundedReceiver<String>,
}

/// Starts a serving command on port 0 and waits for its `listening on` line.
pub(crate) async fn start(cmd: Command) -> Server {
    start_listening(cmd, "127.0.0.1:0").await
}

/// Starts a serving command on `listen` and waits for its `listening on` line.
pub(crate) async fn start_listening(mut cmd: Command, listen: &str) -> Server {
    let mut child = cmd.arg("--listen").arg(listen).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(at) = line.find("listening on http://") {
                return line[at + "listening on ".len()..].trim().to_owned();
            }
        }
        panic!("gatehouse exited before listening");
    })
    .await
    .expect("no `listening on` line within 60 s");
    // Keep draining the log so the server never blocks on a full pipe.
    let (tx, log) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    Server { child, url, log }
}

impl Server {
    /// Waits (bounded) for a log line containing `needle`.
    pub(crate) async fn wait_for_log(&mut self, needle: &str) -> String {
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = self.log.recv().await {
                if line.contains(needle) {
                    return line;
                }
            }
            panic!("the log ended without {needle:?}");
        });
        found.await.unwrap_or_else(|_| panic!("no log line with {needle:?} within 20 s"))
    }

    pub(crate) fn hang_up(&self) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    }

    pub(crate) async fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await.expect("no exit within 20 s").unwrap()
    }
}

/// A browser: the cookie header to send and the CSRF token to echo.
pub(crate) struct Browser {
    pub(crate) cookie: String,
    pub(crate) csrf: String,
}

impl Browser {
    /// The session cookies a login response set.
    pub(crate) fn from_login(login: &reqwest::Response) -> Self {
        let pairs: Vec<String> = login
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
            .collect();
        let csrf = pairs.iter().find_map(|p| p.strip_prefix("__Host-csrf_token=")).unwrap().to_owned();
        Self { cookie: pairs.join("; "), csrf }
    }

    /// `request` as the page sends an unsafe one: the cookies and the CSRF header.
    pub(crate) fn unsafe_request(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.header("cookie", &self.cookie).header("x-csrf-token", &self.csrf)
    }
}

/// How many times each event id of `subject` appears in the stream of the
/// NATS server at `url`, from sequence `from` on.
pub(crate) async fn stream_ids(url: &str, subject: &str, from: u64) -> std::collections::HashMap<String, u32> {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    use futures_util::StreamExt as _;
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let reader = js
        .get_stream("GATEHOUSE_USERS")
        .await
        .unwrap()
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: from.max(1) },
            ack_policy: AckPolicy::None,
            filter_subject: subject.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut seen = std::collections::HashMap::new();
    loop {
        let mut batch = reader.fetch().max_messages(1000).expires(Duration::from_millis(500)).messages().await.unwrap();
        let mut got = 0;
        while let Some(message) = batch.next().await {
            got += 1;
            let event: serde_json::Value = serde_json::from_slice(&message.unwrap().payload).unwrap();
            *seen.entry(event["id"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        if got == 0 {
            return seen;
        }
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; tests bind it soon after).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A NATS server of the test's own (a free port, its own storage folder), so
/// it can be killed and restarted without touching the machine's shared one.
pub(crate) struct OwnNats {
    child: Child,
    port: u16,
    /// The storage folder, when this server made its own.
    _store: Option<TempDir>,
}

impl OwnNats {
    /// A server on a free port with a storage folder of its own.
    pub(crate) async fn fresh() -> Self {
        let store = TempDir::new();
        let nats = Self::start(free_port(), &store.0).await;
        Self { _store: Some(store), ..nats }
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub(crate) async fn start(port: u16, store: &Path) -> Self {
        let binary = if Path::new("/usr/sbin/nats-server").exists() { "/usr/sbin/nats-server" } else { "nats-server" };
        let child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server (Debian package nats-server) is installed");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "our nats-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { child, port, _store: None }
    }

    pub(crate) async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// A plain upstream answering 200 "ok" to everything.
pub(crate) async fn echo_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(|| async { "ok" });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}
