//! `tidelog serve`: configuration (flags > environment > TOML file > defaults), the
//! listening socket, the engine, the event loop, and a clean shutdown on SIGINT/SIGTERM
//! (in-flight responses drained, every partition synced and sealed, the clean-shutdown
//! marker written).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use mio::{Poll, Waker};
use serde::Deserialize;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use socket2::{Domain, Socket, Type};
use tidelog_engine::{Engine, EngineConfig};

use crate::event_loop::{EventLoop, WAKER};
use crate::notices::Notices;
use crate::state::{Limits, State};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7979";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Data directory [default: ./tidelog-data].
    #[arg(long, env = "TIDELOG_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1:7979]; port 0 picks a free port.
    #[arg(long, env = "TIDELOG_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// A TOML file with any of these settings (flags and environment take precedence).
    #[arg(long, env = "TIDELOG_CONFIG")]
    pub config: Option<PathBuf>,

    /// Sync data not requested durable at least this often, in ms [default: 500].
    #[arg(long, env = "TIDELOG_FLUSH_INTERVAL_MS")]
    pub flush_interval_ms: Option<u64>,

    /// Largest frame accepted, in bytes [default: 17825792].
    #[arg(long, env = "TIDELOG_FRAME_BYTES_MAX")]
    pub frame_bytes_max: Option<u32>,

    /// Largest run of batches one fetch returns, in bytes [default: 8388608].
    #[arg(long, env = "TIDELOG_FETCH_BYTES_MAX")]
    pub fetch_bytes_max: Option<u32>,

    /// Most simultaneous connections [default: 1024].
    #[arg(long, env = "TIDELOG_CONNECTIONS_MAX")]
    pub connections_max: Option<usize>,

    /// Unsent bytes queued per connection before it is throttled [default: 33554432].
    #[arg(long, env = "TIDELOG_BUFFERED_BYTES_MAX")]
    pub buffered_bytes_max: Option<usize>,

    /// Close connections silent in both directions for this long, in seconds [default: 600].
    #[arg(long, env = "TIDELOG_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,

    /// An extraction can be resumed from a cursor for this long after it started or was
    /// last resumed, in seconds [default: 600].
    #[arg(long, env = "TIDELOG_EXTRACT_RESUME_WINDOW_SECS")]
    pub extract_resume_window_secs: Option<u64>,

    /// Apply retention and compaction this often, in ms [default: 10000].
    #[arg(long, env = "TIDELOG_CLEANUP_INTERVAL_MS")]
    pub cleanup_interval_ms: Option<u64>,

    /// Keep at most this many bytes of the log in the page cache, all partitions
    /// together: past it the pages of the oldest sealed segments are handed back to the
    /// kernel. Worth setting (e.g. 1073741824) on a VM that returns free memory to its
    /// host; consumers reading further back then read from disk [default: 0, no
    /// budget].
    #[arg(long, env = "TIDELOG_PAGE_CACHE_BYTES")]
    pub page_cache_bytes: Option<u64>,

    /// For tests and demonstrations, a slow disk: the threads that take disk work off the
    /// event loop wait this long before each read of pages out of the page cache and each
    /// topic change (create, delete, add partitions). The loop goes on serving everyone
    /// else meanwhile.
    #[arg(long, env = "TIDELOG_SLOW_DISK_MS", hide = true)]
    pub slow_disk_ms: Option<u64>,
}

/// The same settings, from a TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    flush_interval_ms: Option<u64>,
    frame_bytes_max: Option<u32>,
    fetch_bytes_max: Option<u32>,
    connections_max: Option<usize>,
    buffered_bytes_max: Option<usize>,
    idle_timeout_secs: Option<u64>,
    extract_resume_window_secs: Option<u64>,
    cleanup_interval_ms: Option<u64>,
    page_cache_bytes: Option<u64>,
}

/// Resolved settings.
#[derive(Debug)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub flush_interval: Duration,
    /// How often retention and compaction run.
    pub cleanup_interval: Duration,
    /// The log's page cache budget in bytes (`u64::MAX`: none).
    pub page_cache_bytes: u64,
    /// Waited before each disk job taken off the loop (tests: a slow disk).
    pub slow_disk: Duration,
    pub limits: Limits,
}

pub fn settings(args: &ServeArgs) -> Result<Settings, String> {
    let file = match &args.config {
        Some(path) => read_config(path)?,
        None => FileConfig::default(),
    };
    let defaults = Limits::default();
    let limits = Limits {
        frame_bytes_max: args
            .frame_bytes_max
            .or(file.frame_bytes_max)
            .unwrap_or(defaults.frame_bytes_max),
        fetch_bytes_max: args
            .fetch_bytes_max
            .or(file.fetch_bytes_max)
            .unwrap_or(defaults.fetch_bytes_max),
        connections_max: args
            .connections_max
            .or(file.connections_max)
            .unwrap_or(defaults.connections_max),
        buffered_bytes_max: args
            .buffered_bytes_max
            .or(file.buffered_bytes_max)
            .unwrap_or(defaults.buffered_bytes_max),
        idle_timeout: args
            .idle_timeout_secs
            .or(file.idle_timeout_secs)
            .map_or(defaults.idle_timeout, Duration::from_secs),
        extract_resume_window: args
            .extract_resume_window_secs
            .or(file.extract_resume_window_secs)
            .map_or(defaults.extract_resume_window, Duration::from_secs),
        ..defaults
    };
    if limits.frame_bytes_max < 1024 || limits.fetch_bytes_max == 0 || limits.connections_max == 0 {
        return Err(
            "frame_bytes_max must be >= 1024, fetch_bytes_max and connections_max > 0".into(),
        );
    }
    let default_listen: SocketAddr = DEFAULT_LISTEN.parse().map_err(|e| format!("{e}"))?;
    Ok(Settings {
        data_dir: args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(crate::default_data_dir),
        listen: args.listen.or(file.listen).unwrap_or(default_listen),
        flush_interval: Duration::from_millis(
            args.flush_interval_ms
                .or(file.flush_interval_ms)
                .unwrap_or(500)
                .max(1),
        ),
        cleanup_interval: Duration::from_millis(
            args.cleanup_interval_ms
                .or(file.cleanup_interval_ms)
                .unwrap_or(10_000)
                .max(10),
        ),
        page_cache_bytes: match args.page_cache_bytes.or(file.page_cache_bytes) {
            None | Some(0) => u64::MAX,
            Some(bytes) => bytes,
        },
        slow_disk: Duration::from_millis(args.slow_disk_ms.unwrap_or(0)),
        limits,
    })
}

fn read_config(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn run(args: ServeArgs) -> Result<(), String> {
    let settings = settings(&args)?;
    // Installed first, so a signal during recovery still ends in a clean shutdown.
    let mut signals =
        Signals::new([SIGINT, SIGTERM]).map_err(|e| format!("signal handler: {e}"))?;
    let started = Instant::now();
    let engine = Arc::new(
        Engine::open(
            &settings.data_dir,
            EngineConfig {
                flush_interval: settings.flush_interval,
                retention_check_interval: settings.cleanup_interval,
                page_cache_bytes: settings.page_cache_bytes,
                ..EngineConfig::default()
            },
        )
        .map_err(|e| e.to_string())?,
    );
    let poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let waker = Waker::new(poll.registry(), WAKER).map_err(|e| format!("waker: {e}"))?;
    let notices = Arc::new(Notices::new(waker));
    engine.set_watcher(notices.clone());
    let listener = listen(settings.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;

    let stop = Arc::new(AtomicBool::new(false));
    {
        let (stop, notices) = (stop.clone(), notices.clone());
        std::thread::Builder::new()
            .name("tidelog-signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    tracing::info!(signal, "stop requested");
                    stop.store(true, Ordering::SeqCst);
                    notices.wake();
                }
            })
            .map_err(|e| e.to_string())?;
    }
    // Tokens and member ids differ across server runs, so a stale one is never mistaken
    // for a new one.
    let boot = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let groups =
        crate::groups::Coordinator::open(&engine, boot >> 20).map_err(|e| e.to_string())?;
    let state = State {
        topic_defaults: EngineConfig::default().topic_defaults,
        engine: engine.clone(),
        limits: settings.limits,
        notices: notices.clone(),
        pending_acks: Vec::new(),
        flush_wanted: Vec::new(),
        long_polls: Vec::new(),
        subscribers: Default::default(),
        to_pump: Vec::new(),
        server_name: format!("tidelog {}", env!("CARGO_PKG_VERSION")),
        resumable: Default::default(),
        next_token: boot,
        groups,
        worker: crate::worker::Worker::start("tidelog-worker", notices.clone(), settings.slow_disk)
            .map_err(|e| e.to_string())?,
        reader: crate::worker::Worker::start("tidelog-reader", notices.clone(), settings.slow_disk)
            .map_err(|e| e.to_string())?,
        cold_fetches: Vec::new(),
        index_notes: tidelog_engine::IndexNotes::default(),
    };
    let mut event_loop = EventLoop::new(poll, listener, state, stop).map_err(|e| e.to_string())?;
    tracing::info!(
        data_dir = %settings.data_dir.display(),
        topics = engine.topic_names().len(),
        startup_ms = started.elapsed().as_millis() as u64,
        "tidelog listening on {local}"
    );
    // Machine-readable, for scripts and tests that start the server on port 0.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "tidelog listening on {local}");
        let _ = out.flush();
    }
    let result = event_loop.run();
    drop(event_loop);
    let engine =
        Arc::try_unwrap(engine).map_err(|_| "engine still shared at shutdown".to_string())?;
    engine.close().map_err(|e| e.to_string())?;
    result.map_err(|e| format!("event loop: {e}"))?;
    tracing::info!("stopped cleanly");
    Ok(())
}

fn listen(addr: SocketAddr) -> std::io::Result<mio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}
