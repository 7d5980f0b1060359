//! One client connection: its socket, the bytes read but not yet parsed, the outbox, and
//! the subscriptions it holds.
//!
//! Reading is bounded twice: the input buffer never holds more than one maximum frame plus
//! a read chunk, and a connection whose outbox is above its limit is not read at all until
//! the client drains it (a client that sends requests without reading responses stalls
//! only itself).

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use tidelog_protocol::frame::{self, FrameHeader};
use tidelog_protocol::ProtocolError;

use crate::extraction::Extraction;
use crate::outbox::Outbox;
use crate::subscription::Subscription;

/// Bytes read per `read` call.
const READ_CHUNK_BYTES: usize = 256 << 10;

#[derive(Debug)]
pub struct Connection {
    /// Never the same for two connections of one server run (a token's slot is reused):
    /// an answer prepared off the loop goes to the connection only if this matches.
    pub serial: u64,
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// Bytes read but not yet handled. Taken out while its frames are dispatched, so the
    /// handlers can borrow the frame bytes and the connection at once.
    pub input: Input,
    pub outbox: Outbox,
    /// HELLO has been accepted.
    pub handshaken: bool,
    /// The client's name from HELLO (shown in group descriptions).
    pub client_name: String,
    /// Close once the outbox is flushed (after a framing error).
    pub closing: bool,
    /// The socket can be read (edge-triggered: stays set until a read would block).
    pub read_ready: bool,
    /// The peer closed its side.
    pub eof: bool,
    /// A subscription stopped because the outbox was full; pump again once it drains.
    pub throttled: bool,
    pub last_active: Instant,
    pub subscriptions: HashMap<u32, Subscription>,
    /// Extractions in progress, by id (ids are shared with subscriptions).
    pub extractions: HashMap<u32, Extraction>,
    /// State extractions whose snapshot the worker is taking, by id: not answered yet.
    pub freezing: HashMap<u32, Freezing>,
    /// A topic change (create, delete, add partitions) of this connection's is out on the
    /// worker thread: its later requests wait, unread, so that they still run after it.
    pub admin_pending: bool,
}

/// A state extraction waiting for its snapshot.
#[derive(Debug)]
pub struct Freezing {
    /// The freeze job's token: its result is this extraction's only if they match.
    pub token: u64,
    /// Credit granted so far (the request's, plus any granted meanwhile).
    pub credit_bytes: u64,
}

/// The input buffer: unparsed bytes are `buf[start..filled]`.
#[derive(Debug, Default)]
pub struct Input {
    buf: Vec<u8>,
    start: usize,
    filled: usize,
}

#[derive(Debug)]
pub enum NextFrame {
    Frame(FrameHeader, std::ops::Range<usize>),
    /// Not a whole frame yet.
    NeedMore,
    /// Framing is lost: answer with this error, then close.
    Broken(ProtocolError),
}

impl Connection {
    pub fn new(stream: TcpStream, peer: SocketAddr, serial: u64) -> Connection {
        Connection {
            serial,
            stream,
            peer,
            input: Input::default(),
            outbox: Outbox::default(),
            handshaken: false,
            client_name: String::new(),
            closing: false,
            read_ready: true,
            eof: false,
            throttled: false,
            last_active: Instant::now(),
            subscriptions: HashMap::new(),
            extractions: HashMap::new(),
            freezing: HashMap::new(),
            admin_pending: false,
        }
    }

    /// Reads up to `budget` bytes (or until the socket would block). Reading stops while
    /// a whole maximum frame is already buffered: parse it first.
    pub fn read_some(&mut self, budget: usize, frame_bytes_max: usize) -> io::Result<usize> {
        let mut total = 0;
        let input = &mut self.input;
        while total < budget && input.filled - input.start < frame_bytes_max {
            input.make_room(frame_bytes_max);
            match self.stream.read(&mut input.buf[input.filled..]) {
                Ok(0) => {
                    self.eof = true;
                    self.read_ready = false;
                    break;
                }
                Ok(n) => {
                    input.filled += n;
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.read_ready = false;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if total > 0 {
            self.last_active = Instant::now();
        }
        Ok(total)
    }
}

impl Input {
    /// Ensures free space after `filled`, compacting parsed bytes away first.
    fn make_room(&mut self, frame_bytes_max: usize) {
        if self.start > 0
            && (self.start == self.filled || self.buf.len() - self.filled < READ_CHUNK_BYTES)
        {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        let want = (self.filled + READ_CHUNK_BYTES).min(frame_bytes_max + READ_CHUNK_BYTES);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
    }

    /// The next whole frame in the buffer, if any.
    pub fn next_frame(&mut self, frame_bytes_max: u32) -> NextFrame {
        match frame::check(&self.buf[self.start..self.filled], frame_bytes_max) {
            Ok(Some(h)) => {
                let range = self.start..self.start + h.total_len;
                self.start += h.total_len;
                NextFrame::Frame(h, range)
            }
            Ok(None) => NextFrame::NeedMore,
            Err(e) => NextFrame::Broken(e),
        }
    }

    /// Puts frames returned by `next_frame` back, from byte `at` (a frame's start) on:
    /// they are returned again (and their bytes stay valid) until the next read.
    pub fn rewind_to(&mut self, at: usize) {
        debug_assert!(at <= self.start);
        self.start = at;
    }

    /// Bytes of a frame returned by `next_frame` (valid until the next read).
    pub fn bytes(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// Returns the buffer's memory once it is idle and large.
    pub fn shrink_if_idle(&mut self) {
        if self.start == self.filled && self.buf.len() > 4 * READ_CHUNK_BYTES {
            *self = Input::default();
        }
    }
}
