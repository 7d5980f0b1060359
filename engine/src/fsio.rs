//! File-system helpers and the I/O seam used to inject faults.
//!
//! Every durability-relevant operation (fsync of a mapping or file) goes through
//! [`SyncPolicy`], so a test can make a flush fail and check that the partition poisons
//! itself instead of acknowledging data the kernel may have dropped.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use crate::error::{EngineError, Result};

/// Hook consulted before every sync the engine issues. The default does nothing; tests
/// install one that returns an error to simulate a failed fsync.
pub trait SyncHook: Send + Sync + std::fmt::Debug {
    fn before_sync(&self, path: &Path) -> io::Result<()>;
}

/// How syncs are performed: the real thing, optionally preceded by a hook.
#[derive(Debug, Clone, Default)]
pub struct SyncPolicy {
    pub hook: Option<Arc<dyn SyncHook>>,
}

impl SyncPolicy {
    pub fn check(&self, path: &Path) -> io::Result<()> {
        match &self.hook {
            Some(hook) => hook.before_sync(path),
            None => Ok(()),
        }
    }
}

/// Allocates real blocks for `[0, len)` so that writing through a mapping can never hit a
/// hole on a full disk (which would raise SIGBUS and kill the process).
pub fn preallocate(file: &File, path: &Path, len: u64) -> Result<()> {
    let len_i64 =
        i64::try_from(len).map_err(|_| EngineError::InvalidConfig(format!("file length {len}")))?;
    loop {
        // SAFETY: plain syscall on an owned, open descriptor.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len_i64) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            // File systems without fallocate: fall back to a sparse length. Writes could
            // then SIGBUS on a full disk; we log it once per file.
            Some(libc::EOPNOTSUPP) => {
                tracing::warn!(path = %path.display(), "fallocate unsupported; segment is sparse");
                return file
                    .set_len(len)
                    .map_err(|e| EngineError::io("set_len", path, e));
            }
            _ => return Err(EngineError::io("fallocate", path, err)),
        }
    }
}

/// fsync of a directory, so that creates, renames and unlinks in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| EngineError::io("fsync dir", dir, e))
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| EngineError::io("create", &tmp, e))?;
    f.write_all(bytes)
        .map_err(|e| EngineError::io("write", &tmp, e))?;
    if sync {
        f.sync_all()
            .map_err(|e| EngineError::io("fsync", &tmp, e))?;
    }
    drop(f);
    fs::rename(&tmp, path).map_err(|e| EngineError::io("rename", path, e))?;
    if sync {
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
    }
    Ok(())
}

/// Asks the kernel to fault in `[ptr, ptr+len)` writable now, in one call, so appends into
/// that range are plain memcpy with no page faults. Best effort: errors are ignored
/// (kernels before 5.14 lack MADV_POPULATE_WRITE; the cost then moves to the faults).
pub fn populate_write(ptr: *mut u8, len: usize) {
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    if len == 0 {
        return;
    }
    // SAFETY: the caller passes a range inside a live shared mapping; madvise does not
    // change its contents (populating a shared file mapping only faults pages in).
    unsafe {
        libc::madvise(ptr.cast(), len, MADV_POPULATE_WRITE);
    }
}

/// Starts write-back of a file range without waiting, so dirty pages do not pile up and
/// the next fsync has little left to do.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    if len == 0 {
        return;
    }
    // SAFETY: plain syscall on an open descriptor; failure only loses the hint.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Zeroes `[offset, offset+len)` of a file in place, keeping its blocks allocated
/// (FALLOC_FL_ZERO_RANGE). Returns false if the file system cannot, so the caller zeroes
/// by hand.
pub fn zero_range(file: &File, offset: u64, len: u64) -> bool {
    if len == 0 {
        return true;
    }
    // SAFETY: plain syscall on an open descriptor.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_ZERO_RANGE,
            offset as libc::off64_t,
            len as libc::off64_t,
        )
    };
    rc == 0
}

/// Current wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
