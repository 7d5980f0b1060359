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
    commit(f, &tmp, path, sync)
}

/// The second half of [`write_atomic`], for a temp file written some other way (a
/// snapshot streamed to it): fsync, rename onto `path`, fsync of the directory.
pub fn commit(file: File, tmp: &Path, path: &Path, sync: bool) -> Result<()> {
    if sync {
        file.sync_all()
            .map_err(|e| EngineError::io("fsync", tmp, e))?;
    }
    drop(file);
    fs::rename(tmp, path).map_err(|e| EngineError::io("rename", path, e))?;
    if sync {
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
    }
    Ok(())
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

/// Most parts one `pwritev` takes (Linux's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// Writes all of `parts`, in order, at `offset` of `file`: one `pwritev` when the kernel
/// takes it all (it does for regular files short of an error, up to `IOV_MAX` parts), more
/// if it stops short.
pub fn pwrite_all(file: &File, parts: &[&[u8]], mut offset: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut parts: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    let mut first = 0;
    while first < parts.len() {
        // At most IOV_MAX parts a call (more is EINVAL); the loop writes the rest.
        let iov: Vec<libc::iovec> = parts[first..]
            .iter()
            .take(IOV_MAX)
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            })
            .collect();
        let at = libc::off_t::try_from(offset)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: every iovec points into a slice alive for the duration of the call.
        let n = unsafe { libc::pwritev(file.as_raw_fd(), iov.as_ptr(), iov.len() as i32, at) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut written = n as usize;
        offset += written as u64;
        while written > 0 {
            let part = parts[first];
            if written >= part.len() {
                written -= part.len();
                first += 1;
            } else {
                parts[first] = &part[written..];
                written = 0;
            }
        }
    }
    Ok(())
}
