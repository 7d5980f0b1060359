//! CPU time spent by the bench itself and, when it started the server (`--spawn-server`),
//! by the server, over a measured window: what a record costs in CPU as well as in wall
//! time. Client and server share this machine's cores, and its wall-clock figures swing
//! by ±20 % with the host's load; the CPU a run spent per record is the steadier figure
//! when two configurations are compared (e.g. the tenant index on and off).

/// CPU seconds used so far (user + system, all threads), and the server's by thread.
#[derive(Debug, Clone)]
pub struct CpuClock {
    client: f64,
    server: Option<f64>,
    server_threads: ThreadClock,
}

/// CPU seconds used over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuUse {
    pub client: f64,
    /// `None` when the server is not this bench's child (its CPU is not ours to read).
    pub server: Option<f64>,
    /// The server's CPU by thread name, in ns (empty when `server` is `None`): which
    /// thread a change of cost lands on, e.g. the event loop (`main`) or the indexer.
    pub server_threads: std::collections::BTreeMap<String, u64>,
}

impl CpuClock {
    /// Reads both clocks; `server` is the spawned server's process id.
    pub fn now(server: Option<u32>) -> CpuClock {
        CpuClock {
            client: own_cpu_seconds(),
            server: server.and_then(process_cpu_seconds),
            server_threads: ThreadClock::now(server),
        }
    }

    pub fn since(&self, start: &CpuClock) -> CpuUse {
        CpuUse {
            client: self.client - start.client,
            server: self
                .server
                .zip(start.server)
                .map(|(end, start)| end - start),
            server_threads: self.server_threads.since(&start.server_threads),
        }
    }
}

impl CpuUse {
    /// [`CpuUse::server_threads`] per record, in ns, as a JSON object by thread name.
    pub fn server_thread_ns_per_record(&self, records: u64) -> serde_json::Value {
        let records = records.max(1) as f64;
        self.server_threads
            .iter()
            .map(|(name, &ns)| (name.clone(), serde_json::json!(ns as f64 / records)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// CPU time of each of a process's threads so far, by thread name (threads of one name
/// summed; the main thread as [`MAIN_THREAD`], whatever the binary is called), in
/// nanoseconds from `/proc/PID/task/TID/schedstat`: which thread spent it, e.g. the
/// server's event loop (its main thread) against its indexer, and to the nanosecond
/// (`/proc/PID/stat` counts clock ticks of 10 ms, coarse against a burst of 70 ms).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThreadClock {
    ns: std::collections::BTreeMap<String, u64>,
}

/// The name [`ThreadClock`] gives a process's main thread (the server's event loop).
pub const MAIN_THREAD: &str = "main";

impl ThreadClock {
    /// Empty when `pid` is `None` or its threads cannot be read.
    pub fn now(pid: Option<u32>) -> ThreadClock {
        let mut ns = std::collections::BTreeMap::new();
        let tasks = pid.and_then(|pid| std::fs::read_dir(format!("/proc/{pid}/task")).ok());
        for task in tasks.into_iter().flatten().flatten() {
            let dir = task.path();
            let main = pid.is_some_and(|pid| task.file_name() == *pid.to_string());
            let (Ok(comm), Ok(stat)) = (
                std::fs::read_to_string(dir.join("comm")),
                std::fs::read_to_string(dir.join("schedstat")),
            ) else {
                continue; // the thread ended meanwhile
            };
            let name = if main { MAIN_THREAD } else { comm.trim() };
            if let Some(run_ns) = run_ns_of_schedstat(&stat) {
                *ns.entry(name.to_string()).or_insert(0) += run_ns;
            }
        }
        ThreadClock { ns }
    }

    /// Nanoseconds each thread name ran since `start` (a thread started meanwhile counts
    /// from zero).
    pub fn since(&self, start: &ThreadClock) -> std::collections::BTreeMap<String, u64> {
        self.ns
            .iter()
            .map(|(name, &end)| {
                let begun = start.ns.get(name).copied().unwrap_or(0);
                (name.clone(), end.saturating_sub(begun))
            })
            .collect()
    }
}

/// The first field of a `/proc/.../schedstat` line: nanoseconds spent running.
fn run_ns_of_schedstat(stat: &str) -> Option<u64> {
    stat.split_whitespace().next()?.parse().ok()
}

/// User + system time of a process, from `/proc/PID/stat` (Linux).
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    ticks_of_stat(&stat).map(|ticks| ticks as f64 / clock_ticks_per_second())
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field
/// 2, in parentheses) may hold spaces and parentheses: fields are counted after its last
/// `)`.
fn ticks_of_stat(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (tidelog (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    1234 567 0 0 20 0 5 0 100 0 0";
        assert_eq!(ticks_of_stat(stat), Some(1234 + 567));
        assert_eq!(ticks_of_stat("4242 (short) S 1"), None);
    }

    #[test]
    fn schedstat_gives_the_run_time_first() {
        assert_eq!(run_ns_of_schedstat("438619 538222 2\n"), Some(438619));
        assert_eq!(run_ns_of_schedstat(""), None);
    }

    #[test]
    fn the_thread_clock_charges_the_thread_that_worked() {
        let me = Some(std::process::id());
        let start = ThreadClock::now(me);
        let worker = std::thread::Builder::new()
            .name("busy-thread".into())
            .spawn(|| {
                let mut x = 0u64;
                let begun = std::time::Instant::now();
                while begun.elapsed() < std::time::Duration::from_millis(50) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
                // Still alive when the clock is read.
                std::thread::park_timeout(std::time::Duration::from_secs(5));
            })
            .expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(120));
        let used = ThreadClock::now(me).since(&start);
        worker.thread().unpark();
        worker.join().expect("join");
        let busy = used.get("busy-thread").copied().unwrap_or(0);
        assert!(busy >= 20_000_000, "{used:?}");
        // The test harness runs this test off the main thread, which slept.
        assert!(
            used.get(MAIN_THREAD).is_some_and(|&ns| ns < busy),
            "{used:?}"
        );
        assert!(ThreadClock::now(None).ns.is_empty());
    }

    #[test]
    fn thread_time_is_given_per_record_by_thread() {
        let used = CpuUse {
            server_threads: [
                ("main".to_string(), 2_500),
                ("tidelog-flusher".to_string(), 500),
            ]
            .into_iter()
            .collect(),
            ..CpuUse::default()
        };
        assert_eq!(
            used.server_thread_ns_per_record(10),
            serde_json::json!({"main": 250.0, "tidelog-flusher": 50.0})
        );
        // No records: per one record, not a division by zero.
        assert_eq!(
            used.server_thread_ns_per_record(0)["main"],
            serde_json::json!(2_500.0)
        );
    }

    #[test]
    fn the_clocks_advance_with_work() {
        let me = std::process::id();
        let start = CpuClock::now(Some(me));
        let mut x = 0u64;
        let begun = std::time::Instant::now();
        while begun.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let used = CpuClock::now(Some(me)).since(&start);
        assert!(used.client > 0.0, "{used:?}");
        assert!(used.server.is_some_and(|s| s >= 0.0), "{used:?}");
    }
}
