//! Faults an operator meets on a bad day, tried against the real binary: a
//! full disk, NATS down or hanging, slow and broken clients, a key file
//! others can read. Each test names the promise it checks; the figures they
//! print are collected in docs/RELIABILITY.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use support::*;

/// A test that needs what this machine cannot give prints why and passes
/// only outside CI; in CI (`CI` set) the same test fails.
fn cannot_run(reason: &str) {
    assert!(std::env::var_os("CI").is_none(), "this test must run in CI: {reason}");
    eprintln!("SKIPPED: {reason}");
}

/// A tmpfs mounted in a mount namespace of its own, held by a process that
/// lives until this is dropped. Commands started through [`Self::wrapper`]
/// see it at `dir`; the test reaches it through `/proc/<holder>/root`.
struct PrivateDisk {
    holder: Child,
    dir: PathBuf,
}

impl PrivateDisk {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) at `dir`, or
    /// says why this machine cannot.
    async fn mount(dir: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).unwrap();
        let script = r#"mount -t tmpfs -o "size=$1,mode=0700" tmpfs "$2" && echo mounted && exec sleep 600"#;
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script, "sh", size])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run unshare: {e}"))?;
        let mut out = BufReader::new(holder.stdout.take().unwrap()).lines();
        match tokio::time::timeout(Duration::from_secs(10), out.next_line()).await {
            Ok(Ok(Some(line))) if line == "mounted" => Ok(Self { holder, dir: dir.to_owned() }),
            _ => {
                let mut why = String::new();
                use tokio::io::AsyncReadExt as _;
                let _ = holder.stderr.take().unwrap().read_to_string(&mut why).await;
                Err(format!("cannot mount a private tmpfs: {}", why.trim()))
            }
        }
    }

    fn pid(&self) -> String {
        self.holder.id().unwrap().to_string()
    }

    /// The command prefix that runs a program inside the namespace.
    fn wrapper(&self) -> Vec<String> {
        ["nsenter", "-t", &self.pid(), "-m", "--"].map(String::from).to_vec()
    }

    /// `dir` as the test sees it from outside the namespace.
    fn outside(&self) -> PathBuf {
        Path::new("/proc").join(self.pid()).join("root").join(self.dir.strip_prefix("/").unwrap())
    }
}

/// How a [`Relay`] treats the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Pass,
    /// Bytes stop in both directions and nothing is closed, as when a
    /// firewall or a dead route drops packets silently.
    Hang,
}

/// A TCP relay in front of `target` that the test can make hang.
struct Relay {
    addr: std::net::SocketAddr,
    link: tokio::sync::watch::Sender<Link>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (link, mode) = tokio::sync::watch::channel(Link::Pass);
        let task = tokio::spawn(async move {
            // Owns every connection's pumps: aborting the relay ends them.
            let mut pumps = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else { continue };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                pumps.spawn(pump(client_read, server_write, mode.clone()));
                pumps.spawn(pump(server_read, client_write, mode.clone()));
            }
        });
        Self { addr, link, task }
    }

    fn nats_url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    fn set(&self, link: Link) {
        self.link.send_replace(link);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` while the link passes; holds what it read while it hangs.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: tokio::sync::watch::Receiver<Link>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if mode.wait_for(|l| *l == Link::Pass).await.is_err() {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        if mode.wait_for(|l| *l == Link::Pass).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Polls `check` every 20 ms until it holds; how long that took, or `None`
/// after `limit`.
async fn within<F: std::future::Future<Output = bool>>(
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> Option<Duration> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

mod client_faults;
mod database;
mod deployment;
mod disk_full;
mod key_file;
mod nats_link;
mod nats_outage;
mod slow_clients;
