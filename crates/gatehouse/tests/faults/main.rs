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

mod disk_full;
mod nats_outage;
