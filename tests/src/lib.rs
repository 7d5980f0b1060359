//! Harness for end-to-end tests: starts the real `tidelog` binary on port 0 with a
//! temporary data directory, learns its address from the line it prints, and stops it
//! with SIGTERM (clean) or SIGKILL (crash).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tidelog_client::{Client, ConnectOptions};

/// The `tidelog` binary next to this test executable (built by `cargo test --workspace`),
/// or `TIDELOG_BIN`. Builds it if it is missing (e.g. `cargo test -p tidelog-e2e`).
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("TIDELOG_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> → target/<profile>/tidelog
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target profile dir");
        let bin = dir.join("tidelog");
        let profile = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_string();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-q", "-p", "tidelog", "--bin", "tidelog"]);
        if profile == "release" {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building the tidelog binary failed");
        bin
    })
    .clone()
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// A server on a fresh temporary data directory.
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut s = Self::start_in(&dir, args);
        s._tmp = Some(tmp);
        s
    }

    /// A server on `dir` (which may hold data from an earlier run).
    pub fn start_in(dir: &Path, args: &[&str]) -> Server {
        Self::start_in_at(dir, "127.0.0.1:0", args)
    }

    /// A server on `dir` listening on `listen` (e.g. the address of the server it
    /// replaces, so clients can reconnect to it).
    pub fn start_in_at(dir: &Path, listen: &str, args: &[&str]) -> Server {
        let mut child = Command::new(binary())
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(dir)
            .args(args)
            .env("NO_COLOR", "1")
            .env(
                "TIDELOG_LOG",
                std::env::var("TIDELOG_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start tidelog serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .trim()
            .strip_prefix("tidelog listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from the server: {line:?}"))
            .parse()
            .expect("address");
        Server {
            child: Some(child),
            addr,
            data_dir: dir.to_path_buf(),
            _tmp: None,
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr, ConnectOptions::default()).expect("connect")
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Anonymous (heap) memory of the server in KiB: what a slow client could make grow.
    /// Mapped segment pages are file-backed and not counted.
    pub fn rss_anon_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// SIGTERM, and the exit must be clean (status 0).
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().expect("wait");
        assert!(status.success(), "server exited with {status:?}");
    }

    /// SIGKILL: a crash.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Keeps the data directory alive after the server stops (for restarts).
    pub fn take_dir(&mut self) -> Option<tempfile::TempDir> {
        self._tmp.take()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Creates topic `name` with `partitions` partitions (the server's defaults otherwise).
pub fn create_topic(client: &Client, name: &str, partitions: u32) {
    client
        .create_topic(
            name,
            tidelog_client::TopicSettings {
                partitions,
                ..tidelog_client::TopicSettings::default()
            },
        )
        .expect("create topic");
}

/// Publishes `records` as one batch to `partition` of `topic`, ack `written`; returns the
/// batch's base offset.
pub fn publish_batch(
    client: &Client,
    topic: &str,
    partition: u32,
    records: &[tidelog_client::Record],
) -> u64 {
    let batch = tidelog_client::build_batch(records, tidelog_client::ProducerStamp::default());
    client
        .publish(topic, partition, tidelog_client::Ack::Written, &batch)
        .expect("publish")[0]
        .base_offset
}

/// The HELLO frame (correlation 1) a test that writes to the socket itself starts with.
pub fn hello_frame(client: &str) -> Vec<u8> {
    let mut out = Vec::new();
    tidelog_protocol::encode_request(
        &mut out,
        1,
        &tidelog_protocol::Request::Hello {
            min_version: 1,
            max_version: 1,
            client,
        },
    );
    out
}

/// One frame read off a raw socket: (kind, flags, correlation, body).
pub fn read_raw(s: &mut std::net::TcpStream) -> std::io::Result<(u16, u8, u64, Vec<u8>)> {
    use std::io::Read;
    let mut header = [0u8; 16];
    s.read_exact(&mut header)?;
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4")) as usize;
    let mut body = vec![0u8; len - 12];
    s.read_exact(&mut body)?;
    let kind = u16::from_le_bytes([header[4], header[5]]);
    let correlation = u64::from_le_bytes(header[8..16].try_into().expect("8"));
    Ok((kind, header[7], correlation, body))
}

/// A plain socket to `server`, past its HELLO, for a test that writes frames itself.
pub fn raw_connection(server: &Server) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(server.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let hello = hello_frame("raw");
    s.write_all(&hello).expect("hello");
    let (kind, flags, _, _) = read_raw(&mut s).expect("hello response");
    assert_eq!((kind, flags & 0x02), (tidelog_protocol::kind::HELLO, 0));
    s
}
