//! The indexer's cost per update, alone (no appends beside it), for profiling:
//! `cargo run --release -p tidelog-bench --example index_apply -- [keys] [updates] [warm]`.
//! With `warm` = 1 the tenant has all its keys before the clock starts (a long-lived
//! tenant: updates of existing keys); with 0 it starts empty, as `index_cost` does (new
//! keys, table growth). Updates are queued 16 384 at a time, as the indexer drains them.

use std::time::Instant;

use tidelog_engine::key_map::key_hash;
use tidelog_engine::tenant_index::{PendingUpdates, TenantIndex, Update};

const QUEUE: u64 = 16_384;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let keys = args.first().copied().unwrap_or(1_000_000);
    let updates = args.get(1).copied().unwrap_or(2_000_000);
    let warm = args.get(2).copied().unwrap_or(0) == 1;
    let mut index = TenantIndex::default();
    let mut offset = 0;
    if warm {
        let mut fill = PendingUpdates::default();
        let tenant = fill.intern(b"tenant-0042");
        for k in 0..keys {
            fill.updates.push(Update {
                key: key_hash(format!("file-{k:08}").as_bytes()),
                offset: k,
                tenant,
                flags: Update::HAS_KEY | Update::LIVE,
            });
        }
        index.apply_pending(&fill, |_| {});
        offset = keys;
    }
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let queues: Vec<PendingUpdates> = (0..updates.div_ceil(QUEUE))
        .map(|_| {
            let mut p = PendingUpdates::default();
            let tenant = p.intern(b"tenant-0042");
            for _ in 0..QUEUE {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                p.updates.push(Update {
                    key: key_hash(format!("file-{:08}", seed % keys).as_bytes()),
                    offset,
                    tenant,
                    flags: Update::HAS_KEY | Update::LIVE,
                });
                offset += 1;
            }
            p
        })
        .collect();
    let start = Instant::now();
    for q in &queues {
        index.apply_pending(q, |_| {});
    }
    let elapsed = start.elapsed();
    let n = queues.len() as u64 * QUEUE;
    println!(
        "keys {keys}, {n} updates ({}): {:.1} ns/update",
        if warm { "warm" } else { "cold" },
        elapsed.as_nanos() as f64 / n as f64
    );
}
