//! The framing shared by the engine's snapshot files (`producers.snapshot`,
//! `tenants.snapshot`): `| 0..4 magic | 4..8 crc32 of bytes 8.. | body |`, and a bounds-
//! checked reader for their bodies. A damaged file is an `Err(reason)`, never a panic.
//! A snapshot is built in memory ([`begin`], [`seal`]) or, when large, streamed to its
//! file ([`FileSnapshot`]): the same bytes either way.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
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

/// Bytes a [`FileSnapshot`] gathers before each write.
const STREAM_CHUNK: usize = 1 << 20;

/// A snapshot written straight to its file through a 1 MiB buffer, its CRC computed on
/// the way, so that a large one (the tenant index's: 24 bytes per live key) never exists
/// whole in memory. The body is written through [`Write`]; [`FileSnapshot::finish`] puts
/// the CRC in place. Nothing is synced.
pub(crate) struct FileSnapshot {
    file: File,
    buf: Vec<u8>,
    crc: crc32fast::Hasher,
}

impl FileSnapshot {
    /// Creates (or truncates) `path` and writes the magic and a CRC placeholder.
    pub fn create(path: &Path, magic: &[u8; 4]) -> io::Result<FileSnapshot> {
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        file.write_all(magic)?;
        file.write_all(&[0; 4])?;
        Ok(FileSnapshot {
            file,
            buf: Vec::with_capacity(STREAM_CHUNK),
            crc: crc32fast::Hasher::new(),
        })
    }

    /// Writes what is buffered and the CRC; returns the file (unsynced).
    pub fn finish(mut self) -> io::Result<File> {
        self.flush()?;
        let crc = std::mem::take(&mut self.crc).finalize();
        self.file.write_all_at(&crc.to_le_bytes(), 4)?;
        Ok(self.file)
    }
}

impl Write for FileSnapshot {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.crc.update(bytes);
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= STREAM_CHUNK {
            self.flush()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.write_all(&self.buf)?;
        self.buf.clear();
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
