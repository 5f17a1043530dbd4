//! Real peers for the test suites: an SMTP server (`aiosmtpd`, installed on
//! first use under `target/test-tools/` with pip, run on a free port,
//! keeping each message it receives in a Maildir that tests read), an
//! OpenID provider (`oidc-provider` from npm, `tests/oidc-provider/`), and
//! a stub of GitHub's, Facebook's and a misbehaving OpenID provider's APIs
//! ([`provider_stub`]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod provider_stub;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

const AIOSMTPD: &str = "aiosmtpd==1.4.6";

/// One message as the server received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The envelope recipient.
    pub to: String,
    pub subject: String,
    /// The decoded plain-text and HTML parts.
    pub text: String,
    pub html: String,
    /// The message as it came over the wire.
    pub raw: String,
}

impl Received {
    /// Reads a message as it came over the wire (or as an `.eml` file).
    pub fn parse(raw: &str) -> Self {
        parse(raw)
    }

    /// The first link in the plain-text part that starts with `prefix`.
    pub fn link(&self, prefix: &str) -> Option<String> {
        let at = self.text.find(prefix)?;
        let rest = &self.text[at..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        Some(rest[..end].to_owned())
    }
}

/// The SMTP server; stopped when dropped.
pub struct SmtpSink {
    child: Option<Child>,
    port: u16,
    maildir: PathBuf,
    _dir: TempPath,
}

struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tools() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("test-tools/aiosmtpd")
}

/// Installs aiosmtpd once per machine (per target directory).
fn installed() -> PathBuf {
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _one = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tools();
    if dir.join("aiosmtpd").is_dir() {
        return dir;
    }
    let staging = dir.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-warn-script-location"])
        .arg("--target")
        .arg(&staging)
        .arg(AIOSMTPD)
        .status()
        .expect("the SMTP test server needs python3 with pip");
    assert!(status.success(), "pip could not install {AIOSMTPD} for the SMTP test server");
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    // Another test binary may have won the race; either copy is whole.
    if std::fs::rename(&staging, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl SmtpSink {
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("gatehouse-smtp-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut sink = Self { child: None, port: free_port(), maildir: dir.join("maildir"), _dir: TempPath(dir) };
        sink.restart();
        sink
    }

    /// `smtp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server: connections are refused until [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same port, keeping what it received.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("python3")
            .env("PYTHONPATH", installed())
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{}", self.port)])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&self.maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("aiosmtpd exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "aiosmtpd did not listen on {} within 30 s", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every message received so far, oldest first.
    pub fn messages(&self) -> Vec<Received> {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = ["new", "cur"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(self.maildir.join(sub)).ok())
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| (e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), e.path()))
            .collect();
        files.sort();
        files.into_iter().filter_map(|(_, path)| std::fs::read_to_string(path).ok()).map(|raw| parse(&raw)).collect()
    }

    /// Messages to `to`, oldest first.
    pub fn messages_to(&self, to: &str) -> Vec<Received> {
        self.messages().into_iter().filter(|m| m.to.eq_ignore_ascii_case(to)).collect()
    }

    /// Waits (up to `within`) until `to` has received `count` messages, and returns them.
    pub async fn wait_for(&self, to: &str, count: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.messages_to(to);
            if got.len() >= count {
                return got;
            }
            assert!(Instant::now() < deadline, "{to} received {} of {count} messages within {within:?}", got.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Headers (unfolded, names lower-cased) and body of a message or part.
fn split(raw: &str) -> (Vec<(String, String)>, String) {
    let raw = raw.replace("\r\n", "\n");
    let (head, body) = raw.split_once("\n\n").unwrap_or((&raw, ""));
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    (headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

fn decode(body: &str, encoding: Option<&str>) -> String {
    match encoding.map(str::to_ascii_lowercase).as_deref() {
        Some("base64") => {
            let joined: String = body.split_whitespace().collect();
            String::from_utf8_lossy(&base64::engine::general_purpose::STANDARD.decode(joined).unwrap_or_default())
                .into_owned()
        }
        Some("quoted-printable") => {
            let mut out = Vec::new();
            let bytes = body.replace("=\n", "").into_bytes();
            let mut i = 0;
            while i < bytes.len() {
                let escaped = (bytes[i] == b'=')
                    .then(|| bytes.get(i + 1..i + 3))
                    .flatten()
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match escaped {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(bytes[i]);
                        i += 1;
                    }
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        }
        _ => body.to_owned(),
    }
}

fn parse(raw: &str) -> Received {
    let (headers, body) = split(raw);
    let mut received = Received {
        to: header(&headers, "x-rcptto").or(header(&headers, "to")).unwrap_or_default().to_owned(),
        subject: header(&headers, "subject").unwrap_or_default().to_owned(),
        text: String::new(),
        html: String::new(),
        raw: raw.to_owned(),
    };
    let content_type = header(&headers, "content-type").unwrap_or("text/plain").to_owned();
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()
        .map(|b| b.trim_matches('"').to_owned());
    let parts: Vec<(Vec<(String, String)>, String)> = match boundary {
        Some(boundary) => body
            .split(&format!("--{boundary}"))
            .skip(1)
            .filter(|p| !p.starts_with("--"))
            .map(|p| split(p.trim_start_matches('\n')))
            .collect(),
        None => vec![(headers.clone(), body)],
    };
    for (part_headers, part_body) in parts {
        let kind = header(&part_headers, "content-type").unwrap_or("text/plain").to_ascii_lowercase();
        let decoded = decode(&part_body, header(&part_headers, "content-transfer-encoding"));
        if kind.starts_with("text/html") {
            received.html = decoded;
        } else if kind.starts_with("text/plain") {
            received.text = decoded;
        }
    }
    received
}

/// panva's `oidc-provider` (`tests/oidc-provider/provider.mjs`), its npm
/// packages installed with `npm ci` on first use; stopped when dropped.
pub struct OidcProvider {
    child: Child,
    pub issuer: String,
}

fn provider_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/oidc-provider")
}

impl OidcProvider {
    /// Starts a provider whose one client may return to `redirect_uri`.
    pub fn start(redirect_uri: &str) -> Self {
        static INSTALLING: Mutex<()> = Mutex::new(());
        let dir = provider_dir();
        {
            let _one = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
            if !dir.join("node_modules/oidc-provider").is_dir() {
                let status = Command::new("npm")
                    .args(["ci", "--silent", "--no-audit", "--no-fund"])
                    .current_dir(&dir)
                    .status()
                    .expect("the OpenID provider of the tests needs node and npm");
                assert!(status.success(), "npm ci failed in {}", dir.display());
            }
        }
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(&dir)
            .env("PORT", "0")
            .env("REDIRECT_URI", redirect_uri)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node provider.mjs");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(issuer) = line.strip_prefix("ready ") {
                    let _ = tx.send(issuer.to_owned());
                }
            }
        });
        let issuer = rx.recv_timeout(Duration::from_secs(30)).expect("the OpenID provider did not start within 30 s");
        Self { child, issuer }
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
