//! The indexer's cost per update, alone (no appends beside it), for profiling:
//! `cargo run --release -p tidelog-bench --example index_apply -- [keys] [updates] [warm]`.
//! With `warm` = 1 the tenant has all its keys before the clock starts (a long-lived
//! tenant: updates of existing keys); with 0 it starts empty, as `index_cost` does (new
//! keys, table growth). Updates are queued 16 384 at a time, as the indexer drains them.
//! Then times what a state extraction's freeze does with the tenant's offsets (copy,
//! sort) and the encoding of the index's checkpoint.

use std::time::Instant;

use tidelog_bench::{index_updates, random_keys};
use tidelog_engine::tenant_index::{PendingUpdates, TenantIndex};

const QUEUE: u64 = 16_384;
const TENANT: &[u8] = b"tenant-0042";

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
        index.apply_pending(&index_updates(TENANT, 0..keys, 0));
        offset = keys;
    }
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let queues: Vec<PendingUpdates> = (0..updates.div_ceil(QUEUE))
        .map(|q| {
            let keys = random_keys(&mut seed, keys, QUEUE as usize);
            index_updates(TENANT, keys, offset + q * QUEUE)
        })
        .collect();
    let start = Instant::now();
    for q in &queues {
        index.apply_pending(q);
    }
    let elapsed = start.elapsed();
    let n = queues.len() as u64 * QUEUE;
    println!(
        "keys {keys}, {n} updates ({}): {:.1} ns/update",
        if warm { "warm" } else { "cold" },
        elapsed.as_nanos() as f64 / n as f64
    );
    // What a state extraction does on the event loop: the tenant's live offsets, sorted.
    let start = Instant::now();
    let keys = &index.tenant(TENANT).expect("the tenant").keys;
    let mut offsets = Vec::with_capacity(keys.len());
    offsets.extend(keys.values());
    let collected = start.elapsed();
    if std::env::var_os("SORT_UNSTABLE").is_some() {
        offsets.sort_unstable(); // the comparison sort, for comparison
    } else {
        tidelog_engine::offset_sort::sort(&mut offsets);
    }
    println!(
        "snapshot offsets: collect {:.1} ms, sort {:.1} ms ({} offsets)",
        collected.as_secs_f64() * 1e3,
        (start.elapsed() - collected).as_secs_f64() * 1e3,
        offsets.len()
    );
    // The checkpoint the indexer encodes once per segment roll, under the index lock.
    let start = Instant::now();
    let bytes = index.encode().len();
    println!(
        "checkpoint encode: {:.1} ms, {bytes} bytes",
        start.elapsed().as_secs_f64() * 1e3
    );
}
