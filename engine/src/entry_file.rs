//! A memory-mapped file of fixed-size entries, appended by one writer and read by many.
//!
//! The offset index and the time index are both such files. The file is preallocated to
//! `capacity` entries while its segment is active and trimmed to its real length when the
//! segment closes. Readers see entries `[0, len)`, where `len` is published with release
//! ordering after the entry bytes are written: an entry a reader can see is complete.
//!
//! Entries are never rewritten in place while readers can see them, except by
//! [`EntryFile::truncate`], which only runs during recovery before the log is shared.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{EngineError, Result};
use crate::fsio;

#[derive(Debug)]
pub struct EntryFile<const N: usize> {
    path: PathBuf,
    file: File,
    /// `None` while the file is empty (a zero-length mapping is not allowed).
    map: Option<MmapRaw>,
    /// Entries the mapping can hold.
    capacity: usize,
    /// Entries visible to readers.
    len: AtomicUsize,
}

impl<const N: usize> EntryFile<N> {
    /// Opens (creating if needed) the file for appending, preallocated to `capacity`
    /// entries, keeping the first `len` entries that are already there.
    pub fn open_writable(path: &Path, capacity: usize, len: usize) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| EngineError::io("open index", path, e))?;
        let capacity = capacity.max(len).max(1);
        let bytes = (capacity * N) as u64;
        let current = file
            .metadata()
            .map_err(|e| EngineError::io("stat", path, e))?
            .len();
        if current < bytes {
            fsio::preallocate(&file, path, bytes)?;
        }
        let map = MmapOptions::new()
            .len(capacity * N)
            .map_raw(&file)
            .map_err(|e| EngineError::io("mmap index", path, e))?;
        let this = EntryFile {
            path: path.to_owned(),
            file,
            map: Some(map),
            capacity,
            len: AtomicUsize::new(len),
        };
        // Stale bytes past `len` (from a torn run) must never be mistaken for entries.
        this.zero_from(len);
        Ok(this)
    }

    /// Opens a closed (trimmed) file read-only; every whole entry in it is visible.
    pub fn open_readonly(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| EngineError::io("open index", path, e))?;
        let bytes = file
            .metadata()
            .map_err(|e| EngineError::io("stat", path, e))?
            .len() as usize;
        let len = bytes / N;
        let map = if len == 0 {
            None
        } else {
            Some(
                MmapOptions::new()
                    .len(len * N)
                    .map_raw_read_only(&file)
                    .map_err(|e| EngineError::io("mmap index", path, e))?,
            )
        };
        Ok(EntryFile {
            path: path.to_owned(),
            file,
            map,
            capacity: len,
            len: AtomicUsize::new(len),
        })
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_full(&self) -> bool {
        self.len() >= self.capacity
    }

    /// Entry `i`, if visible.
    pub fn get(&self, i: usize) -> Option<[u8; N]> {
        if i >= self.len() {
            return None;
        }
        let map = self.map.as_ref()?;
        let mut out = [0u8; N];
        // SAFETY: i < len <= capacity, so the range is inside the mapping, and entries
        // below `len` are never written again while shared.
        unsafe { std::ptr::copy_nonoverlapping(map.as_ptr().add(i * N), out.as_mut_ptr(), N) };
        Some(out)
    }

    /// Appends one entry. Single writer only (the partition's append lock).
    pub fn push(&self, entry: [u8; N]) -> bool {
        let len = self.len.load(Ordering::Relaxed);
        let Some(map) = self.map.as_ref() else {
            return false;
        };
        if len >= self.capacity || map.as_ptr().is_null() {
            return false;
        }
        // SAFETY: len < capacity: inside the mapping; slot `len` is invisible to readers
        // until the store below publishes it.
        unsafe { std::ptr::copy_nonoverlapping(entry.as_ptr(), map.as_mut_ptr().add(len * N), N) };
        self.len.store(len + 1, Ordering::Release);
        true
    }

    /// Drops entries `[len, ..)`. Recovery only: no reader may hold this file.
    pub fn truncate(&self, len: usize) {
        if len < self.len() {
            self.len.store(len, Ordering::Release);
            self.zero_from(len);
        }
    }

    fn zero_from(&self, len: usize) {
        if let Some(map) = self.map.as_ref() {
            if len < self.capacity && !map.as_ptr().is_null() && map.len() >= self.capacity * N {
                // SAFETY: range [len*N, capacity*N) is inside the writable mapping and not
                // visible to readers (they only read below `len`).
                unsafe {
                    std::ptr::write_bytes(
                        map.as_mut_ptr().add(len * N),
                        0,
                        (self.capacity - len) * N,
                    )
                };
            }
        }
    }

    /// msync of the entries `[from, to)`.
    pub fn sync_range(&self, from: usize, to: usize, policy: &fsio::SyncPolicy) -> Result<()> {
        let Some(map) = self.map.as_ref() else {
            return Ok(());
        };
        if to <= from {
            return Ok(());
        }
        policy
            .check(&self.path)
            .map_err(|e| EngineError::io("msync index", &self.path, e))?;
        map.flush_range(from * N, (to - from) * N)
            .map_err(|e| EngineError::io("msync index", &self.path, e))
    }

    /// Trims the file to its visible entries and fsyncs it. Called when the segment closes.
    pub fn trim(&self, policy: &fsio::SyncPolicy) -> Result<()> {
        let len = self.len();
        self.sync_range(0, len, policy)?;
        self.file
            .set_len((len * N) as u64)
            .map_err(|e| EngineError::io("trim index", &self.path, e))?;
        policy
            .check(&self.path)
            .map_err(|e| EngineError::io("fsync index", &self.path, e))?;
        self.file
            .sync_all()
            .map_err(|e| EngineError::io("fsync index", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_trim_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.index");
        let f = EntryFile::<8>::open_writable(&path, 16, 0).expect("open");
        for i in 0..5u64 {
            assert!(f.push(i.to_le_bytes()));
        }
        f.trim(&fsio::SyncPolicy::default()).expect("trim");
        drop(f);
        let r = EntryFile::<8>::open_readonly(&path).expect("reopen");
        assert_eq!(r.len(), 5);
        assert_eq!(r.get(4), Some(4u64.to_le_bytes()));
        assert_eq!(r.get(5), None);
    }

    #[test]
    fn full_file_refuses_more() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = EntryFile::<4>::open_writable(&dir.path().join("y"), 2, 0).expect("open");
        assert!(f.push([1; 4]));
        assert!(f.push([2; 4]));
        assert!(!f.push([3; 4]));
        assert!(f.is_full());
    }
}
