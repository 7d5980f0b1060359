//! A connection to a tidelog server: pipelined requests matched to responses by
//! correlation id, and pushed subscription data routed by subscription id.
//!
//! A reader thread owns the socket's read side and hands each frame to whoever waits for
//! it; writers serialise whole frames under a lock. Any number of requests may be in
//! flight at once (pipelining): `send` returns a [`PendingReply`] to wait on later.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidelog_protocol::frame::{self, FrameHeader, HEADER_LEN};
use tidelog_protocol::response::decode_error;
use tidelog_protocol::{encode_request_split, Request, Response, PROTOCOL_VERSION};

use crate::error::{ClientError, Result};

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub connect_timeout: Duration,
    /// How long a request waits for its response.
    pub request_timeout: Duration,
    pub client_name: String,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            client_name: format!("tidelog-client {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// A whole frame received from the server.
#[derive(Debug)]
pub struct Frame {
    pub header: FrameHeader,
    pub bytes: Vec<u8>,
}

impl Frame {
    pub fn body(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }

    /// The server's error, if this frame is an error response.
    pub fn error(&self) -> Option<ClientError> {
        self.header
            .is_error()
            .then(|| match decode_error(self.body()) {
                Ok(e) => ClientError::Server(e),
                Err(e) => ClientError::Protocol(format!("undecodable error frame: {e}")),
            })
    }

    /// Decodes the frame as the response to a request of its kind.
    pub fn response(&self) -> Result<Response<'_>> {
        if let Some(e) = self.error() {
            return Err(e);
        }
        Response::decode(self.header.kind, self.body())
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

/// Receives the frames pushed to one id, on the reader thread: it must not block.
type PushSink = Arc<dyn Fn(Frame) + Send + Sync>;

struct Shared {
    writer: Mutex<TcpStream>,
    pending: Mutex<HashMap<u64, SyncSender<Frame>>>,
    /// Where pushed frames go, by id (subscriptions, extractions, group notices).
    subscriptions: Mutex<HashMap<u32, PushSink>>,
    next_correlation: AtomicU64,
    next_subscription: AtomicU32,
    closed: AtomicBool,
    /// Closed by this side (`close`, or the last handle dropped), not by the peer.
    closed_here: AtomicBool,
}

/// Server facts learned in the handshake.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub address: SocketAddr,
    pub name: String,
    pub version: u8,
    pub frame_bytes_max: u32,
    pub fetch_bytes_max: u32,
}

/// A connection; cheap to clone (clones share the socket). The socket closes (and the
/// reader thread ends) when the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    info: Arc<ServerInfo>,
    options: Arc<ConnectOptions>,
    /// Held by user handles only, not by the reader thread: its drop closes the socket.
    _closer: Arc<Closer>,
}

struct Closer(Arc<Shared>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.closed_here.store(true, Ordering::Release);
        self.0.closed.store(true, Ordering::Release);
        let _ = lock(&self.0.writer).shutdown(std::net::Shutdown::Both);
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.info.address)
            .finish()
    }
}

/// A response not yet received.
#[derive(Debug)]
pub struct PendingReply {
    rx: Receiver<Frame>,
    timeout: Duration,
}

impl PendingReply {
    /// The response if it has arrived, without waiting.
    pub fn try_wait(&self) -> Option<Result<Frame>> {
        match self.rx.try_recv() {
            Ok(frame) => Some(Ok(frame)),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => Some(Err(ClientError::Disconnected)),
        }
    }

    pub fn wait(self) -> Result<Frame> {
        match self.rx.recv_timeout(self.timeout) {
            Ok(frame) => Ok(frame),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(ClientError::Timeout("a response")),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(ClientError::Disconnected),
        }
    }
}

impl Client {
    /// Connects to the first reachable of `addrs` (in order: a failover list) and
    /// performs the version handshake.
    pub fn connect(addrs: impl ToSocketAddrs, options: ConnectOptions) -> Result<Client> {
        let mut last_error = None;
        for addr in addrs.to_socket_addrs()? {
            match Self::connect_one(addr, options.clone()) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "connect failed; trying the next address");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| ClientError::InvalidArgument("no address to connect to".into())))
    }

    /// Connects to the first reachable address of a list like `["a:7979", "b:7979"]`.
    pub fn connect_any(addrs: &[&str], options: ConnectOptions) -> Result<Client> {
        let mut last_error = None;
        for a in addrs {
            match Self::connect(*a, options.clone()) {
                Ok(c) => return Ok(c),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| ClientError::InvalidArgument("no address to connect to".into())))
    }

    fn connect_one(addr: SocketAddr, options: ConnectOptions) -> Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, options.connect_timeout)?;
        stream.set_nodelay(true)?;
        let reader = stream.try_clone()?;
        let shared = Arc::new(Shared {
            writer: Mutex::new(stream),
            pending: Mutex::new(HashMap::new()),
            subscriptions: Mutex::new(HashMap::new()),
            next_correlation: AtomicU64::new(1),
            next_subscription: AtomicU32::new(1),
            closed: AtomicBool::new(false),
            closed_here: AtomicBool::new(false),
        });
        let reader_shared = shared.clone();
        std::thread::Builder::new()
            .name("tidelog-client-reader".into())
            .spawn(move || read_loop(reader, &reader_shared))?;
        let mut client = Client {
            _closer: Arc::new(Closer(shared.clone())),
            shared,
            info: Arc::new(ServerInfo {
                address: addr,
                name: String::new(),
                version: 0,
                frame_bytes_max: frame::FRAME_BYTES_MAX_DEFAULT,
                fetch_bytes_max: 0,
            }),
            options: Arc::new(options),
        };
        let hello = client.request(&Request::Hello {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            client: &client.options.client_name,
        })?;
        match hello.response()? {
            Response::Hello {
                version,
                server,
                frame_bytes_max,
                fetch_bytes_max,
            } => {
                client.info = Arc::new(ServerInfo {
                    address: addr,
                    name: server.to_string(),
                    version,
                    frame_bytes_max,
                    fetch_bytes_max,
                });
            }
            other => {
                return Err(ClientError::Protocol(format!(
                    "unexpected HELLO response {other:?}"
                )))
            }
        }
        Ok(client)
    }

    pub fn server(&self) -> &ServerInfo {
        &self.info
    }

    pub fn options(&self) -> &ConnectOptions {
        &self.options
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Sends a request without waiting; `None` for requests the server does not answer
    /// when they succeed (publish with ack `none`, grant credits).
    pub fn send(&self, request: &Request<'_>) -> Result<Option<PendingReply>> {
        if self.is_closed() {
            return Err(ClientError::Disconnected);
        }
        let correlation = self.shared.next_correlation.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::with_capacity(64);
        let payload = encode_request_split(&mut frame, correlation, request);
        let total = frame.len() + payload.len();
        if total > self.info.frame_bytes_max as usize {
            return Err(ClientError::InvalidArgument(format!(
                "request of {total} bytes exceeds the server's frame limit of {}",
                self.info.frame_bytes_max
            )));
        }
        let reply = if request.expects_response() {
            let (tx, rx) = mpsc::sync_channel(1);
            lock(&self.shared.pending).insert(correlation, tx);
            Some(PendingReply {
                rx,
                timeout: self.options.request_timeout,
            })
        } else {
            None
        };
        let written = write_all_vectored(&mut *lock(&self.shared.writer), &frame, payload);
        if let Err(e) = written {
            lock(&self.shared.pending).remove(&correlation);
            self.shared.closed.store(true, Ordering::Release);
            return Err(e.into());
        }
        Ok(reply)
    }

    /// Sends a request and waits for its response frame.
    pub fn request(&self, request: &Request<'_>) -> Result<Frame> {
        match self.send(request)? {
            Some(pending) => pending.wait(),
            None => Err(ClientError::InvalidArgument(
                "this request has no response".into(),
            )),
        }
    }

    /// Reserves a subscription id and the channel its DATA frames arrive on.
    pub(crate) fn register_subscription(&self) -> (u32, Receiver<Frame>) {
        let (tx, rx) = mpsc::channel::<Frame>();
        let id = self.register_push(move |frame| {
            let _ = tx.send(frame);
        });
        (id, rx)
    }

    /// Reserves a push id whose frames are handed to `sink` on the reader thread. The sink
    /// is dropped when the id is forgotten or the connection ends.
    pub(crate) fn register_push(&self, sink: impl Fn(Frame) + Send + Sync + 'static) -> u32 {
        let id = self
            .shared
            .next_subscription
            .fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.subscriptions).insert(id, Arc::new(sink));
        id
    }

    pub(crate) fn forget_subscription(&self, id: u32) {
        lock(&self.shared.subscriptions).remove(&id);
    }

    /// Whether the connection was closed by this side (`close`), rather than lost.
    pub fn is_closed_here(&self) -> bool {
        self.shared.closed_here.load(Ordering::Acquire)
    }

    /// Closes the connection; pending requests fail with `Disconnected`.
    pub fn close(&self) {
        self.shared.closed_here.store(true, Ordering::Release);
        self.shared.closed.store(true, Ordering::Release);
        let _ = lock(&self.shared.writer).shutdown(std::net::Shutdown::Both);
    }
}

/// Writes `head` then `tail` (a publish's batches, never copied into `head`).
fn write_all_vectored(w: &mut impl Write, mut head: &[u8], mut tail: &[u8]) -> std::io::Result<()> {
    while !head.is_empty() || !tail.is_empty() {
        let n = match w.write_vectored(&[std::io::IoSlice::new(head), std::io::IoSlice::new(tail)])
        {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let from_head = n.min(head.len());
        head = &head[from_head..];
        tail = &tail[n - from_head..];
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The reader thread: frames → waiting requests / subscriptions, until the socket closes.
fn read_loop(stream: TcpStream, shared: &Shared) {
    let mut reader = BufReader::with_capacity(1 << 20, LowWater::new(stream));
    while let Ok(frame) = read_frame(&mut reader) {
        if frame.header.is_push() {
            let id = frame.header.correlation as u32;
            let sink = lock(&shared.subscriptions).get(&id).cloned();
            if let Some(sink) = sink {
                sink(frame);
            }
        } else if let Some(tx) = lock(&shared.pending).remove(&frame.header.correlation) {
            let _ = tx.send(frame);
        } else if frame.header.correlation == 0 && frame.header.is_error() {
            // A connection-level error (framing lost, over the connection limit).
            if let Some(ClientError::Server(e)) = frame.error() {
                tracing::warn!(error = %e, "server reported a connection error");
            }
        }
    }
    shared.closed.store(true, Ordering::Release);
    // Dropping the senders wakes every waiter with `Disconnected`.
    lock(&shared.pending).clear();
    lock(&shared.subscriptions).clear();
}

/// A server's frame is never allowed to make the client allocate more than this.
const FRAME_FROM_SERVER_BYTES_MAX: usize = 1 << 30;

/// Frame bodies at least this large bypass the reader's buffer.
const DIRECT_READ_BYTES: u64 = 64 << 10;

/// Bytes of a frame's body the reader waits for before it is woken, at most.
const WAKE_BYTES_MAX: usize = 256 << 10;

/// The socket the reader thread reads, with its receive low-water mark (`SO_RCVLOWAT`)
/// under control: while the rest of a large frame is on its way, the kernel wakes the
/// reader only once [`WAKE_BYTES_MAX`] of it (or all of it) can be read, instead of at
/// every segment that arrives. Consuming, that wake-up was the server's cost: the
/// sending thread delivers loopback segments itself and pays for waking the sleeping
/// reader (an inter-processor interrupt, a VM exit on a virtual machine) —
/// docs/BENCHMARKS.md, "Fewer wake-ups consuming".
///
/// The kernel wakes the reader when the mark is reached whatever the read asked for, so
/// the mark must never exceed what is still to come: it is the rest of the frame, capped,
/// and back to 1 between frames (a header, a small reply).
struct LowWater {
    stream: TcpStream,
    /// The mark as set on the socket (1 when not set).
    mark: usize,
}

impl LowWater {
    fn new(stream: TcpStream) -> LowWater {
        LowWater { stream, mark: 1 }
    }

    /// Sets the mark to `bytes` (at least 1). An error leaves the socket's mark unknown,
    /// so it ends the connection (the reader then stops: waiting on a mark that may be
    /// above what is coming could wait forever).
    fn wake_at(&mut self, bytes: usize) -> std::io::Result<()> {
        let bytes = bytes.max(1);
        if bytes == self.mark {
            return Ok(());
        }
        let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: setsockopt on the descriptor this struct owns, with a pointer to a
        // c_int that lives across the call and its exact length.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&self.stream),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                std::ptr::from_ref(&value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.mark = bytes;
        Ok(())
    }

    /// Reads `n` more bytes of the current frame onto `out` (fewer only at the end of the
    /// stream), woken at most every [`WAKE_BYTES_MAX`] bytes.
    ///
    /// Waits in `poll`, which reports the socket readable once the mark is reached, and
    /// then takes what is there without blocking, lowering the mark to what is left of
    /// the frame before each wait. Never a blocking `recv` with the mark raised: the
    /// kernel's wake-up compares the bytes queued with the mark, not with what that
    /// call still needs once it has copied part of them, so such a call can sleep
    /// forever on bytes it already has.
    fn read_body(&mut self, out: &mut Vec<u8>, n: usize) -> std::io::Result<()> {
        let end = out.len() + n;
        out.reserve(n);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.stream);
        let result = loop {
            let rest = end - out.len();
            if rest == 0 {
                break Ok(());
            }
            if let Err(e) = self.wake_at(rest.min(WAKE_BYTES_MAX)) {
                break Err(e);
            }
            let mut ready = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd that lives across the call.
            if unsafe { libc::poll(&mut ready, 1, -1) } < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                break Err(e);
            }
            let spare = &mut out.spare_capacity_mut()[..rest];
            // SAFETY: the kernel writes at most `rest` bytes into `spare`, memory this
            // Vec owns and does not otherwise touch during the call.
            let got =
                unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), rest, libc::MSG_DONTWAIT) };
            match usize::try_from(got) {
                Ok(0) => break Ok(()),
                // SAFETY: the kernel initialised exactly `got` (≤ `rest`) bytes after `len`.
                Ok(got) => unsafe { out.set_len(out.len() + got) },
                Err(_) => {
                    let e = std::io::Error::last_os_error();
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                    ) {
                        break Err(e);
                    }
                }
            }
        };
        result.and(self.wake_at(1))
    }
}

impl Read for LowWater {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.read(buf)
    }
}

fn read_frame(reader: &mut BufReader<LowWater>) -> std::io::Result<Frame> {
    let mut header = [0u8; HEADER_LEN];
    reader.read_exact(&mut header)?;
    let frame_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if !(HEADER_LEN - 4..=FRAME_FROM_SERVER_BYTES_MAX).contains(&frame_len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "frame length out of range",
        ));
    }
    // Read into spare capacity (no zeroing of a buffer about to be overwritten: fetch
    // responses are megabytes).
    let mut bytes = Vec::with_capacity(frame_len + 4);
    bytes.extend_from_slice(&header);
    let rest = (frame_len + 4 - HEADER_LEN) as u64;
    if rest >= DIRECT_READ_BYTES {
        // What the buffer holds, then straight from the socket into the frame: a fetch
        // response's megabytes are copied once, not socket → buffer → frame (that second
        // copy was a tenth of the reader thread's time consuming 1 KiB records).
        let buffered = reader.buffer();
        let now = buffered.len().min(rest as usize);
        bytes.extend_from_slice(&buffered[..now]);
        reader.consume(now);
        reader
            .get_mut()
            .read_body(&mut bytes, rest as usize - now)?;
    } else {
        reader.by_ref().take(rest).read_to_end(&mut bytes)?;
    }
    if bytes.len() != frame_len + 4 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let parsed = frame::check(&bytes, u32::MAX)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "short frame"))?;
    Ok(Frame {
        header: parsed,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Instant;

    /// A frame of `body` bytes (kind and correlation arbitrary), its body a pattern.
    fn frame_of(body: usize, correlation: u64) -> Vec<u8> {
        let mut out = Vec::new();
        frame::put_header(&mut out, 7, frame::FLAG_RESPONSE, correlation, body);
        out.extend((0..body).map(|i| (i as u64 * 31 + correlation) as u8));
        out
    }

    /// The low-water mark must never wait for bytes that are not coming: frames above and
    /// below the mark's cap, their bodies dribbled out in small writes with pauses, the
    /// last one's tail too, and nothing after it. A mark left above what is still to come
    /// hangs the reader here (the test then fails on its deadline).
    #[test]
    fn the_reader_gets_every_frame_however_slowly_its_bytes_come() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let sizes = [
            WAKE_BYTES_MAX * 3 + 5,
            100 << 10,
            DIRECT_READ_BYTES as usize,
            40,
            WAKE_BYTES_MAX + 1,
            2 << 20,
        ];
        let frames: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| frame_of(n, i as u64))
            .collect();
        let sent = frames.clone();
        let writer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let all: Vec<u8> = sent.concat();
            // Uneven pieces, a pause now and then: many wake-ups, partial bodies queued.
            let (mut at, mut piece) = (0, 1usize);
            while at < all.len() {
                let n = piece.min(all.len() - at);
                s.write_all(&all[at..at + n]).expect("write");
                at += n;
                piece = piece * 7 % 90_001 + 1;
                if piece % 5 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            // Stay open (no EOF to wake the reader) until the reader has everything.
            let mut end = [0u8; 1];
            let _ = s.read(&mut end);
        });
        let stream = TcpStream::connect(addr).expect("connect");
        let closer = stream.try_clone().expect("clone");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::with_capacity(1 << 20, LowWater::new(stream));
            for _ in 0..sizes.len() {
                let frame = read_frame(&mut reader).map(|f| f.bytes);
                if tx.send(frame).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        for (i, expected) in frames.iter().enumerate() {
            let got = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("frame {i} ({} bytes) never came", expected.len()))
                .expect("read");
            assert!(got == *expected, "frame {i} differs");
        }
        drop(closer.shutdown(std::net::Shutdown::Both));
        writer.join().expect("writer");
    }
}
