//! A connection's queue of bytes to send: small owned frames and zero-copy slices of the
//! log, written with `writev` until the socket would block — except large slices of the
//! log, which go out with `sendfile(2)`.
//!
//! Invariants: `bytes` is the exact number of unsent bytes queued; it is what
//! back-pressure counts (requests are not read and subscriptions not pumped while it is
//! above the connection's limit), so a slow reader costs bounded memory. Chunks leave in
//! the order they were queued, whichever call sends them.
//!
//! Why `sendfile` for the large slices: `writev` from the mapping makes the kernel copy
//! every byte into socket buffers (and fault the mapping's pages in first) — on a 1 KiB
//! consume from earliest that was 30 % of the event loop's time, with the faults another
//! 10 %. `sendfile` hands the page cache's pages to the socket instead. It is safe
//! because a published range of a segment is never written again (the pages the socket
//! holds cannot change before the peer reads them), and a segment deleted meanwhile
//! keeps its pages until the socket lets go of them.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::fd::AsRawFd;

use tidelog_engine::Fetched;

/// Owned chunks are coalesced up to this size, so many small responses go out in one
/// write instead of one chunk each.
const COALESCE_BYTES: usize = 64 << 10;
/// Chunks handed to one `writev` call.
const IOVECS_MAX: usize = 64;
/// Slices of the log at least this large are sent with `sendfile`: below it the extra
/// system call costs more than the copy it saves (a subscription's small deliveries).
const SENDFILE_MIN_BYTES: usize = 64 << 10;

/// Where an outbox's bytes go: a stream that can also take a file's bytes directly.
pub trait Sink: Write {
    /// Sends up to `len` bytes of `file` from `offset`, with `write`'s contract: may send
    /// fewer, fails with `WouldBlock` when it can send nothing now.
    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize>;
}

impl Sink for mio::net::TcpStream {
    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
        let mut at = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file offset too large"))?;
        // SAFETY: both descriptors are open for the call; `at` is a valid off_t.
        let sent = unsafe { libc::sendfile(self.as_raw_fd(), file.as_raw_fd(), &mut at, len) };
        if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(sent as usize)
        }
    }
}

#[derive(Debug)]
enum Chunk {
    Owned(Vec<u8>),
    /// Bytes of a segment mapping, sent without copying them into user space buffers.
    Mapped(Fetched),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Mapped(f) => f,
        }
    }

    /// The file and the range of it (start, length) to `sendfile` this chunk from, if it
    /// goes out that way.
    fn file_range(&self) -> Option<(&File, u64, usize)> {
        match self {
            Chunk::Mapped(f) if f.len() >= SENDFILE_MIN_BYTES => {
                f.file_range().map(|(segment, start, end)| {
                    (segment.file(), u64::from(start), (end - start) as usize)
                })
            }
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
pub struct Outbox {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    head_written: usize,
    bytes: usize,
}

impl Outbox {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// A buffer to encode the next frame(s) into; call [`Outbox::commit`] after.
    pub fn tail(&mut self) -> &mut Vec<u8> {
        let reuse = matches!(self.chunks.back(), Some(Chunk::Owned(v)) if v.len() < COALESCE_BYTES)
            && !(self.chunks.len() == 1 && self.head_written > 0);
        if !reuse {
            self.chunks.push_back(Chunk::Owned(Vec::with_capacity(256)));
        }
        match self.chunks.back_mut() {
            Some(Chunk::Owned(v)) => v,
            _ => unreachable!("an owned chunk was just ensured"),
        }
    }

    /// Accounts for bytes appended through [`Outbox::tail`] (`before` = its length then).
    pub fn commit(&mut self, before: usize, after: usize) {
        self.bytes += after - before;
    }

    /// Encodes with `f` into the tail and accounts for it.
    pub fn encode(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        let tail = self.tail();
        let before = tail.len();
        f(tail);
        let after = tail.len();
        self.commit(before, after);
    }

    pub fn push_mapped(&mut self, fetched: Fetched) {
        if !fetched.is_empty() {
            self.bytes += fetched.len();
            self.chunks.push_back(Chunk::Mapped(fetched));
        }
    }

    pub fn push_owned(&mut self, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.bytes += bytes.len();
            self.chunks.push_back(Chunk::Owned(bytes));
        }
    }

    /// Writes until the queue is empty or the socket would block. Returns bytes written.
    pub fn write_to(&mut self, w: &mut impl Sink) -> io::Result<usize> {
        let mut total = 0;
        while self.bytes > 0 {
            let sent = match self.chunks.front().and_then(Chunk::file_range) {
                Some((file, start, len)) => {
                    let done = self.head_written;
                    w.send_file(file, start + done as u64, len - done)
                }
                None => {
                    // Everything up to the next chunk that goes out with sendfile.
                    let mut slices: [IoSlice<'_>; IOVECS_MAX] = [IoSlice::new(&[]); IOVECS_MAX];
                    let mut n = 0;
                    for (i, chunk) in self.chunks.iter().take(IOVECS_MAX).enumerate() {
                        if i > 0 && chunk.file_range().is_some() {
                            break;
                        }
                        let bytes = chunk.bytes();
                        slices[i] = IoSlice::new(if i == 0 {
                            &bytes[self.head_written..]
                        } else {
                            bytes
                        });
                        n = i + 1;
                    }
                    w.write_vectored(&slices[..n])
                }
            };
            let written = match sent {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "peer closed")),
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            total += written;
            self.advance(written);
        }
        Ok(total)
    }

    fn advance(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.bytes().len() - self.head_written;
            if n >= left {
                n -= left;
                self.chunks.pop_front();
                self.head_written = 0;
            } else {
                self.head_written += n;
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that accepts at most `step` bytes per call, then would-block once.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
        calls: usize,
        /// Bytes per `send_file` call, and how many calls there were.
        file_step: usize,
        file_sends: usize,
    }

    impl Trickle {
        fn new(step: usize, file_step: usize) -> Trickle {
            Trickle {
                out: Vec::new(),
                step,
                calls: 0,
                file_step,
                file_sends: 0,
            }
        }
    }

    impl Sink for Trickle {
        fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
            use std::os::unix::fs::FileExt;
            self.calls += 1;
            self.file_sends += 1;
            if self.calls % 3 == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut buf = vec![0u8; len.min(self.file_step)];
            file.read_exact_at(&mut buf, offset)?;
            self.out.extend_from_slice(&buf);
            Ok(buf.len())
        }
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls % 3 == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_deliver_every_byte_in_order() {
        let mut o = Outbox::default();
        let mut expected = Vec::new();
        for i in 0..200u32 {
            let frame: Vec<u8> = (0..(i % 37 + 1)).map(|j| (i + j) as u8).collect();
            expected.extend_from_slice(&frame);
            if i % 5 == 0 {
                o.push_owned(frame);
            } else {
                o.encode(|t| t.extend_from_slice(&frame));
            }
        }
        assert_eq!(o.bytes(), expected.len());
        let mut w = Trickle::new(7, 7);
        while !o.is_empty() {
            o.write_to(&mut w).expect("write");
        }
        assert_eq!(w.out, expected);
        assert_eq!(w.file_sends, 0, "no slice of the log was queued");
    }

    /// Owned frames, small slices of the log (written from the mapping) and large ones
    /// (sent from the file) interleaved: every byte arrives once, in queue order.
    #[test]
    fn large_log_slices_go_out_from_the_file_in_queue_order() {
        use tidelog_engine::{
            build_batch, Engine, EngineConfig, ProducerStamp, Record, TopicConfig,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(dir.path(), EngineConfig::default()).expect("open");
        engine
            .create_topic("t", TopicConfig::default())
            .expect("create");
        let p = engine.partition("t", 0).expect("partition");
        for b in 0..8u8 {
            let records: Vec<Record> = (0..64u8)
                .map(|r| Record::value(0, vec![b.wrapping_mul(31) ^ r; 1000]))
                .collect();
            p.append(&build_batch(&records, ProducerStamp::default()))
                .expect("append");
        }
        let fetched = p.read(0, 1 << 20).expect("read");
        assert!(fetched.len() > 4 * SENDFILE_MIN_BYTES);
        let cuts = [
            0,
            100,
            1000,
            SENDFILE_MIN_BYTES + 1000,
            2 * SENDFILE_MIN_BYTES + 1000,
        ];
        let mut o = Outbox::default();
        let mut expected = Vec::new();
        for (i, pair) in cuts
            .windows(2)
            .chain([[cuts[4], fetched.len()].as_slice()])
            .enumerate()
        {
            let frame = vec![i as u8; 10 + i * 3];
            expected.extend_from_slice(&frame);
            o.encode(|t| t.extend_from_slice(&frame));
            let part = fetched.slice(pair[0], pair[1]);
            expected.extend_from_slice(&part);
            o.push_mapped(part);
        }
        o.encode(|t| t.extend_from_slice(b"end"));
        expected.extend_from_slice(b"end");
        assert_eq!(o.bytes(), expected.len());
        let mut w = Trickle::new(7, 5000);
        while !o.is_empty() {
            o.write_to(&mut w).expect("write");
        }
        assert_eq!(w.out, expected);
        assert!(w.file_sends > 0, "the large slices went out from the file");
        drop((fetched, p));
        engine.close().expect("close");
    }
}
