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

/// Asks the kernel to drop `file`'s clean pages from the page cache
/// (`POSIX_FADV_DONTNEED`). Dirty pages, and pages someone holds, stay; it changes no
/// data, only where the next read of it comes from.
pub fn drop_cached(file: &File, path: &Path) -> Result<()> {
    // SAFETY: plain syscall on an owned, open descriptor.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc == 0 {
        Ok(())
    } else {
        // posix_fadvise returns the error number instead of setting errno.
        Err(EngineError::io(
            "fadvise",
            path,
            io::Error::from_raw_os_error(rc),
        ))
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

/// The size of a page, as `mincore` and `madvise` count them.
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two())
        .unwrap_or(4096)
}

/// The page-aligned span of memory that holds `bytes`: (start, length).
fn page_span(bytes: &[u8]) -> (usize, usize) {
    let page = page_size();
    let start = bytes.as_ptr() as usize & !(page - 1);
    let end = (bytes.as_ptr() as usize + bytes.len()).next_multiple_of(page);
    (start, end - start)
}

/// Whether every page under `bytes` (part of a file mapping) is in the page cache
/// (`mincore`). An error (which a valid mapping does not give) answers true: the caller
/// then reads as it would have without asking.
pub fn resident(bytes: &[u8]) -> bool {
    /// Pages asked about per call: one 4 KiB vector on the stack covers 16 MiB.
    const PAGES_PER_CALL: usize = 4096;
    if bytes.is_empty() {
        return true;
    }
    let page = page_size();
    let (mut start, len) = page_span(bytes);
    let end = start + len;
    let mut vec = [0u8; PAGES_PER_CALL];
    while start < end {
        let pages = ((end - start) / page).min(PAGES_PER_CALL);
        // SAFETY: [start, start + pages * page) lies within the mapping that holds
        // `bytes` (page-aligned, and a mapping covers whole pages); the kernel writes one
        // byte per page into `vec`, which has room for `pages`.
        let rc =
            unsafe { libc::mincore(start as *mut libc::c_void, pages * page, vec.as_mut_ptr()) };
        if rc != 0 {
            return true;
        }
        if vec[..pages].iter().any(|v| v & 1 == 0) {
            return false;
        }
        start += pages * page;
    }
    true
}

/// `cachestat(2)`'s number: one for every architecture (Linux 6.5 on; the `libc` crate
/// does not name it everywhere yet).
const SYS_CACHESTAT: libc::c_long = 451;
/// Set once `cachestat` has answered ENOSYS: the kernel predates it.
static NO_CACHESTAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether every page of `[offset, offset+len)` of `file` is in the page cache, counting
/// pages still being read in (`cachestat`: it walks the cache's entries, a whole large
/// folio at a time, about 0.25 µs for a MiB against `mincore`'s 7–10 µs, which looks each
/// page up). `None` where the kernel lacks `cachestat` (before 6.5).
pub fn all_cached(file: &File, offset: u64, len: u64) -> Option<bool> {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    use std::sync::atomic::Ordering;
    if len == 0 {
        return Some(true);
    }
    if NO_CACHESTAT.load(Ordering::Relaxed) {
        return None;
    }
    let page = page_size() as u64;
    let first = offset & !(page - 1);
    let end = (offset + len).next_multiple_of(page);
    let range = Range {
        off: first,
        len: end - first,
    };
    let mut stat = Stat::default();
    // SAFETY: the kernel reads `range` and writes `stat`, both live, properly laid out
    // (struct cachestat_range / struct cachestat) locals; flags must be 0.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0u32,
        )
    };
    if rc != 0 {
        if io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
            NO_CACHESTAT.store(true, Ordering::Relaxed);
        }
        return None;
    }
    Some(stat.nr_cache >= (end - first) / page)
}

/// Asks the kernel to start reading `[offset, offset+len)` of `file` into the page cache
/// (`POSIX_FADV_WILLNEED`), without waiting for it. Failure only loses the hint.
pub fn will_need(file: &File, offset: u64, len: u64) {
    // SAFETY: plain syscall on an open descriptor.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        );
    }
}

/// Brings every page under `bytes` (part of a shared, read-only file mapping) into the
/// page cache and the mapping, returning once they are there: `MADV_POPULATE_READ`
/// (Linux 5.14), or a read of one byte per page where the kernel lacks it.
pub fn populate(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let (start, len) = page_span(bytes);
    // SAFETY: the span lies within the mapping that holds `bytes`; POPULATE_READ only
    // faults pages in for reading, as reading them would.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_POPULATE_READ) };
    if rc != 0 {
        let mut sum = 0u8;
        for at in (0..bytes.len()).step_by(page_size()) {
            // SAFETY: a reference to a byte of `bytes`, valid for reads. Volatile, so that
            // the loop is not optimised away: each read faults its page in.
            sum ^= unsafe { std::ptr::read_volatile(&bytes[at]) };
        }
        std::hint::black_box(sum);
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

/// Most bytes one `pwritev` writes.
///
/// Why: a buffered write of 2 MiB or more, aligned, lets ext4 put the page cache in
/// 2 MiB folios (`FileHugePages` in /proc/meminfo: 600 MB during a publish of 400-record
/// batches, none with this limit). On this project's VM those come from blocks the guest
/// handed back to the host (free page reporting works on 2 MiB blocks), and every first
/// touch of them during the copy costs a host fault: `copy_folio_from_iter_atomic` took
/// 68 % of the server's time against 11 % with smaller writes. Publishes of 400 × 1 KiB
/// per batch, 32 in flight (group appends of up to 13 MB): 461–596 MB/s uncapped, 1.7 GB/s
/// capped at 64 KiB, 2.2 GB/s at 1 MiB (BENCHMARKS.md, thirteenth session). A few more
/// syscalls per group append cost nothing beside that.
pub const WRITE_MAX: usize = 1 << 20;

/// Writes all of `parts`, in order, at `offset` of `file`: `pwritev` calls of at most
/// [`WRITE_MAX`] bytes and `IOV_MAX` parts each, more if the kernel stops short.
pub fn pwrite_all(file: &File, parts: &[&[u8]], mut offset: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut parts: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    let mut first = 0;
    while first < parts.len() {
        // At most IOV_MAX parts a call (more is EINVAL) and WRITE_MAX bytes (the last part
        // cut short); the loop writes the rest.
        let mut iov: Vec<libc::iovec> = Vec::with_capacity((parts.len() - first).min(IOV_MAX));
        let mut len = 0;
        for p in parts[first..].iter().take(IOV_MAX) {
            let take = p.len().min(WRITE_MAX - len);
            iov.push(libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: take,
            });
            len += take;
            if len == WRITE_MAX {
                break;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Parts across several calls' worth of bytes (one part larger than a call, others
    /// cut at a call's end) and of parts (more than `IOV_MAX`), at an offset: the file
    /// holds exactly their concatenation there.
    #[test]
    fn pwrite_all_writes_every_part_in_order_across_calls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("open");
        let big: Vec<u8> = (0..WRITE_MAX * 2 + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        let small: Vec<Vec<u8>> = (0..IOV_MAX + 300)
            .map(|i| vec![(i % 256) as u8; 1 + i % 7_000])
            .collect();
        let mut parts: Vec<&[u8]> = vec![&big[..], &[]];
        parts.extend(small.iter().map(Vec::as_slice));
        parts.push(&big[..1000]);
        let at = 4096 + 17;
        pwrite_all(&file, &parts, at).expect("written");
        let expected: Vec<u8> = parts.concat();
        assert!(expected.len() > 2 * WRITE_MAX);
        let got = std::fs::read(&path).expect("read");
        assert_eq!(got.len() as u64, at + expected.len() as u64);
        assert!(got[..at as usize].iter().all(|&b| b == 0));
        assert!(got[at as usize..] == expected[..], "same bytes in order");
    }
}
