//! A connection's queue of bytes to send: small owned frames and zero-copy slices of the
//! log, written with `writev` until the socket would block.
//!
//! Invariant: `bytes` is the exact number of unsent bytes queued; it is what
//! back-pressure counts (requests are not read and subscriptions not pumped while it is
//! above the connection's limit), so a slow reader costs bounded memory.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use tidelog_engine::Fetched;

/// Owned chunks are coalesced up to this size, so many small responses go out in one
/// write instead of one chunk each.
const COALESCE_BYTES: usize = 64 << 10;
/// Chunks handed to one `writev` call.
const IOVECS_MAX: usize = 64;

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
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<usize> {
        let mut total = 0;
        while self.bytes > 0 {
            let mut slices: [IoSlice<'_>; IOVECS_MAX] = [IoSlice::new(&[]); IOVECS_MAX];
            let mut n = 0;
            for (i, chunk) in self.chunks.iter().take(IOVECS_MAX).enumerate() {
                let bytes = chunk.bytes();
                slices[i] = IoSlice::new(if i == 0 {
                    &bytes[self.head_written..]
                } else {
                    bytes
                });
                n = i + 1;
            }
            let written = match w.write_vectored(&slices[..n]) {
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
        let mut w = Trickle {
            out: Vec::new(),
            step: 7,
            calls: 0,
        };
        while !o.is_empty() {
            o.write_to(&mut w).expect("write");
        }
        assert_eq!(w.out, expected);
    }
}
