//! `tidelog serve` as a real process: it opens (and creates) the data directory and, on
//! SIGTERM or SIGINT, shuts down cleanly with exit code 0, leaving the clean-shutdown
//! marker so the next start skips recovery.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn stop_cleanly(signal: i32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidelog"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tidelog");
    // Wait until the server says it is listening: engine open, signals installed.
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    assert!(
        stdout.read_line(&mut line).expect("read") > 0,
        "server exited before listening"
    );
    assert!(line.starts_with("tidelog listening on "), "{line}");
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        data.join("clean-shutdown").exists(),
        "clean-shutdown marker written"
    );
}

#[test]
fn serve_stops_cleanly_on_sigterm() {
    stop_cleanly(libc::SIGTERM);
}

#[test]
fn serve_stops_cleanly_on_sigint() {
    stop_cleanly(libc::SIGINT);
}
