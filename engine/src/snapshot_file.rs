//! The framing shared by the engine's snapshot files (`producers.snapshot`,
//! `tenants.snapshot`): `| 0..4 magic | 4..8 crc32 of bytes 8.. | body |`, and a bounds-
//! checked reader for their bodies. A damaged file is an `Err(reason)`, never a panic.
//! A snapshot is built in memory ([`begin`], [`seal`]) or, when large, streamed to its
//! file ([`FileSnapshot`]): the same bytes either way.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Starts a snapshot: magic and a CRC placeholder.
pub(crate) fn begin(magic: &[u8; 4], capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity + 8);
    out.extend_from_slice(magic);
    out.extend_from_slice(&[0; 4]);
    out
}

/// Fills in the CRC of a snapshot started with [`begin`].
pub(crate) fn seal(out: &mut [u8]) {
    let crc = crc32fast::hash(&out[8..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Bytes a [`FileSnapshot`] gathers before each write (a multiple of [`DIRECT_ALIGN`]).
const STREAM_CHUNK: usize = 1 << 20;
/// Alignment of a direct write's buffer, file offset and length: the logical block size
/// of any device this runs on is at most this.
const DIRECT_ALIGN: usize = 4096;

/// A snapshot written straight to its file through a 1 MiB buffer, its CRC computed on
/// the way, so that a large one (the tenant index's: 24 bytes per live key) never exists
/// whole in memory. The body is written through [`Write`]; [`FileSnapshot::finish`] puts
/// the CRC in place. Nothing is synced.
///
/// Written with `O_DIRECT` where the file system takes it: a snapshot is read only by the
/// next open, so its bytes have no business in the page cache — taking tens of MB of it
/// for a large index, evicting log pages consumers read, and costing the writing thread
/// a copy into pages the kernel must first allocate (on this project's VM, pages the host
/// has to provide: 80 ms of CPU for a 21 MB checkpoint in a slow phase,
/// docs/BENCHMARKS.md). Direct, the device reads this buffer itself. Where `O_DIRECT` is
/// refused (tmpfs, some FUSE file systems) the same bytes go through the page cache.
///
/// Direct writes need whole aligned blocks: the chunks are, the last one is padded with
/// zeros and the file then cut to its length, and the CRC (in the first block) is put
/// in by writing that block again.
pub(crate) struct FileSnapshot {
    file: File,
    direct: bool,
    /// [`STREAM_CHUNK`] + [`DIRECT_ALIGN`] bytes, never resized: the chunk is the aligned
    /// `raw[at..at + STREAM_CHUNK]`.
    raw: Vec<u8>,
    at: usize,
    /// Bytes of the chunk in use.
    filled: usize,
    /// Bytes of the file written (whole chunks).
    written: u64,
    /// The file's first block as written, once the first chunk has gone out: the CRC
    /// goes into it at the end.
    first_block: Vec<u8>,
    crc: crc32fast::Hasher,
}

impl FileSnapshot {
    /// Creates (or truncates) `path` and starts the snapshot with the magic and a CRC
    /// placeholder.
    pub fn create(path: &Path, magic: &[u8; 4]) -> io::Result<FileSnapshot> {
        Self::create_as(path, magic, true)
    }

    /// As [`FileSnapshot::create`], `direct` saying whether to try `O_DIRECT` at all.
    fn create_as(path: &Path, magic: &[u8; 4], direct: bool) -> io::Result<FileSnapshot> {
        let open = |flags| {
            OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .custom_flags(flags)
                .open(path)
        };
        let (file, direct) = match direct.then(|| open(libc::O_DIRECT)) {
            Some(Ok(file)) => (file, true),
            Some(Err(e)) if e.raw_os_error() != Some(libc::EINVAL) => return Err(e),
            _ => (open(0)?, false),
        };
        let raw = vec![0u8; STREAM_CHUNK + DIRECT_ALIGN];
        let at = raw.as_ptr().align_offset(DIRECT_ALIGN);
        let mut snapshot = FileSnapshot {
            file,
            direct,
            raw,
            at,
            filled: 8,
            written: 0,
            first_block: Vec::new(),
            crc: crc32fast::Hasher::new(),
        };
        snapshot.chunk()[..4].copy_from_slice(magic);
        snapshot.chunk()[4..8].fill(0);
        Ok(snapshot)
    }

    fn chunk(&mut self) -> &mut [u8] {
        &mut self.raw[self.at..self.at + STREAM_CHUNK]
    }

    /// Writes `chunk[..len]` at `offset`; a direct write refused with `EINVAL` (a file
    /// system that took the flag at open but not the write) is retried through the page
    /// cache, and so is every later one.
    fn write_out(&mut self, len: usize, offset: u64) -> io::Result<()> {
        let at = self.at;
        let result = self.file.write_all_at(&self.raw[at..at + len], offset);
        match result {
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                self.set_buffered()?;
                self.file.write_all_at(&self.raw[at..at + len], offset)
            }
            other => other,
        }
    }

    fn set_buffered(&mut self) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl on a descriptor this struct owns; no memory is passed.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
            return Err(io::Error::last_os_error());
        }
        self.direct = false;
        Ok(())
    }

    /// Writes the full chunk and starts the next.
    fn write_chunk(&mut self) -> io::Result<()> {
        if self.written == 0 {
            self.first_block = self.chunk()[..DIRECT_ALIGN].to_vec();
        }
        self.write_out(STREAM_CHUNK, self.written)?;
        self.written += STREAM_CHUNK as u64;
        self.filled = 0;
        Ok(())
    }

    /// Writes what is buffered and the CRC; returns the file (unsynced).
    pub fn finish(mut self) -> io::Result<File> {
        let crc = std::mem::take(&mut self.crc).finalize().to_le_bytes();
        let len = self.written + self.filled as u64;
        if self.written == 0 {
            self.chunk()[4..8].copy_from_slice(&crc);
        }
        let mut tail = self.filled;
        if self.direct {
            // Whole blocks, the padding zeros; the file is cut to `len` below.
            let padded = tail.next_multiple_of(DIRECT_ALIGN);
            self.chunk()[tail..padded].fill(0);
            tail = padded;
        }
        if tail > 0 {
            self.write_out(tail, self.written)?;
        }
        if self.written > 0 {
            let mut block = std::mem::take(&mut self.first_block);
            block[4..8].copy_from_slice(&crc);
            self.chunk()[..DIRECT_ALIGN].copy_from_slice(&block);
            self.write_out(DIRECT_ALIGN, 0)?;
        }
        if self.direct {
            self.file.set_len(len)?;
        }
        Ok(self.file)
    }
}

impl Write for FileSnapshot {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.crc.update(bytes);
        let mut rest = bytes;
        while !rest.is_empty() {
            let filled = self.filled;
            let n = rest.len().min(STREAM_CHUNK - filled);
            self.chunk()[filled..filled + n].copy_from_slice(&rest[..n]);
            self.filled += n;
            rest = &rest[n..];
            if self.filled == STREAM_CHUNK {
                self.write_chunk()?;
            }
        }
        Ok(bytes.len())
    }

    /// Nothing: the bytes go out in whole chunks (a direct write takes whole blocks) and
    /// the rest in [`FileSnapshot::finish`].
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Checks magic and CRC; returns a reader over the body.
pub(crate) fn open<'a>(bytes: &'a [u8], magic: &[u8; 4]) -> Result<Reader<'a>, String> {
    let mut r = Reader { buf: bytes };
    if r.take(4)? != magic {
        return Err("bad magic".into());
    }
    let crc = r.u32()?;
    if crc32fast::hash(r.buf) != crc {
        return Err("crc mismatch".into());
    }
    Ok(r)
}

pub(crate) struct Reader<'a> {
    pub buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err("snapshot ends early".into());
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| "short")?,
        ))
    }
    pub fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| "short")?,
        ))
    }
    pub fn finish(&self) -> Result<(), String> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes [`begin`] and [`seal`] give for `body`.
    fn in_memory(body: &[u8]) -> Vec<u8> {
        let mut out = begin(b"TEST", body.len());
        out.extend_from_slice(body);
        seal(&mut out);
        out
    }

    #[test]
    fn a_streamed_snapshot_is_the_bytes_built_in_memory_direct_or_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sizes = [
            0,
            1,
            DIRECT_ALIGN - 8,
            DIRECT_ALIGN - 7,
            STREAM_CHUNK - 8,
            STREAM_CHUNK - 7,
            STREAM_CHUNK,
            2 * STREAM_CHUNK + 12_345,
        ];
        for direct in [true, false] {
            for size in sizes {
                let body: Vec<u8> = (0..size).map(|i| (i * 31 + i / 7) as u8).collect();
                let path = dir.path().join(format!("s-{direct}-{size}"));
                // A file in the way, longer than the snapshot: it is truncated.
                std::fs::write(&path, vec![0xAB; 3 * STREAM_CHUNK]).expect("old file");
                let mut out = FileSnapshot::create_as(&path, b"TEST", direct).expect("create");
                // Pieces of uneven sizes, some across a chunk's end.
                let mut rest = &body[..];
                let mut piece = 1;
                while !rest.is_empty() {
                    let n = piece.min(rest.len());
                    out.write_all(&rest[..n]).expect("write");
                    rest = &rest[n..];
                    piece = piece * 3 % 70_001 + 1;
                }
                drop(out.finish().expect("finish"));
                let written = std::fs::read(&path).expect("read");
                assert!(
                    written == in_memory(&body),
                    "direct {direct}, body of {size} bytes: {} bytes written",
                    written.len()
                );
                let mut reader = open(&written, b"TEST").expect("valid");
                assert_eq!(reader.take(size).expect("body"), &body[..]);
            }
        }
    }
}
