//! Just enough of the W3C WebDriver protocol, over reqwest, to drive
//! Debian's `chromium` through its `chromedriver`: open pages, find
//! elements, type, click, read text, run a script, go back, take
//! screenshots. Every wait is a bounded poll of a condition.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// The key W3C WebDriver names an element reference by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const CHROMIUM: &str = "/usr/bin/chromium";
const DRIVER: &str = "/usr/bin/chromedriver";
/// How long a wait for a page to reach a state may take.
const PATIENCE: Duration = Duration::from_secs(20);

/// Whether browser tests can run here: Chromium and its driver installed.
/// Absent, the tests are skipped with a printed reason, except in CI (`CI`
/// set), where they fail.
pub fn available() -> bool {
    let present = std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(DRIVER).exists();
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "the browser tests must run in CI: install chromium and chromium-driver"
        );
        eprintln!("skipped: {CHROMIUM} or {DRIVER} is missing (apt-get install chromium chromium-driver)");
    }
    present
}

pub struct Browser {
    http: reqwest::Client,
    session: String,
    driver: Child,
}

impl Drop for Browser {
    /// Ends chromedriver and every Chromium process it started (its own
    /// process group), also when a test fails before `quit`.
    fn drop(&mut self) {
        if let Some(pid) = self.driver.id() {
            let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
        }
    }
}

#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session.
    pub async fn start() -> Self {
        let port = crate::support::free_port();
        let driver = Command::new(DRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        // No call may hang the test: WebDriver's own page-load limit is 300 s.
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(ready) = ready
                && ready.json::<Value>().await.is_ok_and(|v| v["value"]["ready"] == true)
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver not ready within {PATIENCE:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "timeouts": {"pageLoad": 20_000, "script": 20_000},
            "goog:chromeOptions": {"binary": CHROMIUM, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1200,900", "--password-store=basic",
            ]},
        }}});
        let created: Value =
            http.post(format!("{base}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let session =
            created["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {created}")).to_owned();
        Self { http, session: format!("{base}/session/{session}"), driver }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let request = self.http.request(method.clone(), format!("{}{path}", self.session));
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        answer["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn goto(&self, url: &str) {
        let answer = self.post("/url", json!({"url": url})).await;
        assert!(answer.is_null(), "navigating to {url}: {answer}");
    }

    /// Sizes the window to `width` × `height` CSS pixels (a phone: 390 × 844).
    pub async fn resize(&self, width: u32, height: u32) {
        let answer = self.post("/window/rect", json!({"width": width, "height": height})).await;
        assert_eq!(answer["width"], width, "resizing: {answer}");
    }

    /// Presses `keys` on the keyboard, one after the other, wherever the
    /// focus is (`\u{E004}` Tab, `\u{E007}` Enter).
    pub async fn press(&self, keys: &str) {
        let strokes: Vec<Value> = keys
            .chars()
            .flat_map(|k| {
                [json!({"type": "keyDown", "value": k.to_string()}), json!({"type": "keyUp", "value": k.to_string()})]
            })
            .collect();
        let answer =
            self.post("/actions", json!({"actions": [{"type": "key", "id": "keyboard", "actions": strokes}]})).await;
        assert!(answer.is_null(), "pressing keys: {answer}");
    }

    /// The id (or text, for an element without one) of the focused element.
    pub async fn focused(&self) -> String {
        let focused = self.run("const e = document.activeElement; return e.id || e.textContent.trim()").await;
        focused.as_str().unwrap_or_default().to_owned()
    }

    pub async fn back(&self) {
        let answer = self.post("/back", json!({})).await;
        assert!(answer.is_null(), "going back: {answer}");
    }

    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None).await.as_str().unwrap_or_default().to_owned()
    }

    /// Runs `script` (a function body) in the page; its `return` value.
    pub async fn run(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []})).await
    }

    async fn find_now(&self, css: &str) -> Option<Element> {
        let found = self.post("/element", json!({"using": "css selector", "value": css})).await;
        found[ELEMENT].as_str().map(|id| Element(id.to_owned()))
    }

    /// The element matching `css`, once the page has one.
    pub async fn find(&self, css: &str) -> Element {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(element) = self.find_now(css).await {
                return element;
            }
            assert!(Instant::now() < deadline, "no {css} within {PATIENCE:?} at {}", self.url().await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        let cleared = self.post(&format!("/element/{}/clear", element.0), json!({})).await;
        assert!(cleared.is_null(), "clearing {css}: {cleared}");
        let typed = self.post(&format!("/element/{}/value", element.0), json!({"text": text})).await;
        assert!(typed.is_null(), "typing into {css}: {typed}");
    }

    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        let answer = self.post(&format!("/element/{}/click", element.0), json!({})).await;
        assert!(answer.is_null(), "clicking {css}: {answer}");
    }

    /// The visible text of `css` (empty when hidden).
    pub async fn text(&self, css: &str) -> String {
        let element = self.find(css).await;
        let text = self.call(reqwest::Method::GET, &format!("/element/{}/text", element.0), None).await;
        text.as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the visible text of `css` contains `needle`; returns it.
    pub async fn wait_for_text(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = match self.find_now(css).await {
                Some(_) => self.text(css).await,
                None => String::new(),
            };
            if text.contains(needle) {
                return text;
            }
            assert!(Instant::now() < deadline, "{css} never said {needle:?} (last: {text:?}) at {}", self.url().await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the page's path is `path`.
    pub async fn wait_for_path(&self, path: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let url = self.url().await;
            if url
                .split_once("://")
                .and_then(|(_, rest)| rest.find('/').map(|at| &rest[at..]))
                .is_some_and(|p| p.split(['?', '#']).next() == Some(path))
            {
                return;
            }
            assert!(Instant::now() < deadline, "never reached {path} (at {url})");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a PNG of the window as `target/browser-screenshots/{name}.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/browser-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    pub async fn quit(self) {
        self.call(reqwest::Method::DELETE, "", None).await;
    }
}
