#!/usr/bin/env python3
"""Run tidelog-bench and its peers one after the other with the same record sizes and
durability settings, plus the machine's physical ceilings, and print a markdown table
with the ratios tidelog/peer and tidelog/ceiling.

Usage (from the repository root):
    python3 bench/peers/compare.py [--quick] [--index-only]

It installs what it needs from Debian's packages (redis-server, redis-tools, iperf3),
builds tidelog in release mode, and bounds every run in count and time. The settings that
make the comparison fair are in PEERS below and in docs/BENCHMARKS.md.

NATS JetStream (nats-server from Debian, 2.9) is driven by `nats-peer` (bench/src/bin/
nats-peer.rs), an equivalent of `nats bench --js` speaking the NATS protocol directly: the
`nats` CLI is not installable from this machine's registries. JetStream 2.9 has no
fsync-every-write setting (its file store syncs periodically), so it is compared with
tidelog's `written` ack only.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = "--quick" in sys.argv
# Records per run: enough for a steady state, small enough to bound the run — and, for
# publishing, to stay under ~2 GB of new page cache: past that, this VM hands the guest
# memory at ~0.4 GB/s (dd to a fresh 3 GiB file: 445 MB/s; over the same file again:
# 5.0 GB/s), and a run measures the hypervisor, not the software (docs/BENCHMARKS.md,
# "Publish runs past ~2 GB measure the VM's memory").
COUNT = {100: 2_000_000 if QUICK else 10_000_000, 1024: 500_000 if QUICK else 1_500_000}
REDIS_PORT = 6391


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def ensure_packages():
    missing = [p for p, exe in [("redis-server", "redis-server"), ("redis-tools", "redis-benchmark"), ("iperf3", "iperf3"),
                                ("nats-server", "nats-server")]
               if shutil.which(exe) is None]
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, capture_output=True)


def build():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "tidelog", "-p", "tidelog-bench", "--bins"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target", "release", "tidelog-bench")


NATS_PORT = 4391


def nats(size):
    """NATS JetStream (file storage): publishes with acks, 1000 in flight on one
    connection, then a pull consumer from the first message, batches of 1000."""
    d = tempfile.mkdtemp(dir=ROOT)
    server = subprocess.Popen(["nats-server", "-js", "-sd", d, "-a", "127.0.0.1", "-p", str(NATS_PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peer = os.path.join(ROOT, "target", "release", "nats-peer")
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", NATS_PORT), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        n = COUNT[size] // 10
        addr = f"127.0.0.1:{NATS_PORT}"
        p = json.loads(sh([peer, "publish", addr, str(n), str(size), "1000"], timeout=600))
        c = json.loads(sh([peer, "consume", addr, str(n), str(size)], timeout=600))
        return (p["records_per_sec"], p["mb_per_sec"] / 1e3), (c["records_per_sec"], c["mb_per_sec"] / 1e3)
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)


def iperf3_gbps(seconds=5):
    server = subprocess.Popen(["iperf3", "-s", "-1", "-p", "5299"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        out = json.loads(sh(["iperf3", "-c", "127.0.0.1", "-p", "5299", "-t", str(seconds), "-J"]))
        return out["end"]["sum_received"]["bits_per_second"] / 8 / 1e9  # GB/s
    finally:
        server.wait(timeout=10)


def dd_fdatasync_gbps():
    with tempfile.TemporaryDirectory(dir=ROOT) as d:
        out = subprocess.run(["dd", "if=/dev/zero", f"of={d}/dd.bin", "bs=1M", "count=2048", "conv=fdatasync"],
                             capture_output=True, text=True).stderr
    m = re.search(r"copied, ([\d.]+) s", out)
    return 2048 * 2**20 / float(m.group(1)) / 1e9 if m else float("nan")


def tidelog(bench, size, ack, extra=()):
    batch = 1000 if size == 100 else 100
    if size == 1024 and ack == "written":
        # As much data in flight as redis-benchmark keeps (50 clients x pipeline 64 x 1 KiB
        # = 3.2 MB): 32 publishes of 100 x 1 KiB.
        extra = ["--in-flight", str(PUBLISH_1K_IN_FLIGHT), *extra]
    out = sh([bench, "--spawn-server", "--json", "publish", "--count", str(COUNT[size]), "--record-size", str(size),
              "--batch", str(batch), "--ack", ack, *extra])
    r = json.loads(out)
    assert r["verified"], f"tidelog run not verified: {r}"
    return r["records_per_sec"], r["mb_per_sec"] / 1e3


def tidelog_index(bench, keys):
    """Publish 200-byte values with a tenant and a key drawn at random from `keys` (the
    tenant index updates one key per record), or (keys = 0) without tenant or key and with
    values 15 bytes longer (the key's bytes and its length), so both runs publish the same
    bytes: the ratio is the index's cost alone. After an untimed prefill of two million
    records (the same for every run), so the tenant is a long-lived one whose keys the
    index holds already (the steady state; a brand-new tenant adds its table's
    doublings once), and INDEX_IN_FLIGHT publishes in flight, so that the pipeline is
    throughput-bound (see INDEX_IN_FLIGHT)."""
    count = count_index()
    extra = ["--tenant", "tenant-0042", "--keys", str(keys)] if keys else []
    size = 200 if keys else 215
    r = json.loads(sh([bench, "--spawn-server", "--json", "publish", "--count", str(count),
                       "--record-size", str(size), "--batch", "100", "--in-flight", str(INDEX_IN_FLIGHT),
                       "--prefill", str(2 * INDEX_KEYS), *extra], env=page_cache_budget(INDEX_PAIRS_PAGE_CACHE_BYTES)))
    assert r["verified"], f"tidelog run not verified: {r}"
    cpu = r["cpu_seconds"]
    return r["records_per_sec"], r["records_per_sec"], (cpu["client"] + cpu["server"]) / r["records"]


def tidelog_consume(bench, size):
    batch = 1000 if size == 100 else 100
    r = json.loads(sh([bench, "--spawn-server", "--json", "consume", "--count", str(COUNT[size]),
                       "--record-size", str(size), "--batch", str(batch)]))
    assert r["verified"]
    return r["records_per_sec"], r["mb_per_sec"] / 1e3


def redis(size, fsync, command="XADD"):
    """Redis Streams with its own redis-benchmark: 50 clients, pipeline 64."""
    d = tempfile.mkdtemp(dir=ROOT)
    server = subprocess.Popen(["redis-server", "--port", str(REDIS_PORT), "--dir", d, "--save", "", "--appendonly", "yes",
                               "--appendfsync", fsync], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", REDIS_PORT), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        n = COUNT[size] // (4 if fsync == "always" else 1)
        value = "x" * size
        out = sh(["redis-benchmark", "-p", str(REDIS_PORT), "-P", "64", "-c", "50", "-n", str(n), "-q",
                  "XADD", "s", "*", "f", value])
        rps = float(re.findall(r"([\d.]+) requests per second", out)[-1])
        if command == "XRANGE":
            out = sh(["redis-benchmark", "-p", str(REDIS_PORT), "-P", "16", "-c", "50", "-n", str(max(n // 100, 1000)), "-q",
                      "XRANGE", "s", "-", "+", "COUNT", "100"])
            rps = float(re.findall(r"([\d.]+) requests per second", out)[-1]) * 100
        return rps, rps * size / 1e9
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)


# Publishes in flight for 1 KiB records with ack `written` (see `tidelog`).
PUBLISH_1K_IN_FLIGHT = 32
# Repetitions of each paired measurement (see `paired`).
PAIRS = 3
# The index's cost is a few percent under ±30 % run-to-run swings: more pairs.
INDEX_PAIRS = 11
INDEX_KEYS = 1_000_000
# The small tenant of the index's second comparison.
INDEX_KEYS_SMALL = 10_000
# Publishes of 100 records in flight for the index's throughput cost: the depth at which
# the plain side stops gaining (seventeenth session, docs/BENCHMARKS.md: the plain side's
# median burst rate 6.0 M records/s at 16, 7.2 at 32, 7.5 at 64, 8.4 at 128, 8.2 at 256).
# At 32 the pipeline is still partly latency-bound, and the ratio there measures the
# keyed path's extra latency as much as its extra work; the index-cost rows report that
# depth too (INDEX_LATENCY_BOUND_IN_FLIGHT). A real
# producer (`ProducerConfig`: 16 batches of up to 1 MiB in flight) runs deeper than both.
INDEX_IN_FLIGHT = 128
INDEX_LATENCY_BOUND_IN_FLIGHT = 32
# The spawned servers' page cache budget (`TIDELOG_PAGE_CACHE_BYTES`) in the index's runs.
# Each separate-server run writes ~1.3 GB; without a budget every page is a fresh one that
# this VM may have reported free to its host, whose first touch is slow, and which run
# gets more of those decided the pair (eighteenth session, docs/BENCHMARKS.md: the loop's
# time in the page cache copy 38-83 % in slow runs, with 10 000 keys as with a million).
# With 256 MiB the appends reuse the pages handed back after the first 256 MiB.
INDEX_PAIRS_PAGE_CACHE_BYTES = 256 << 20
# index-cost's bursts run on one server; every index-cost figure was taken with 1 GiB.
INDEX_COST_PAGE_CACHE_BYTES = 1 << 30


def paired(a, b, pairs=None):
    """Runs `a` and `b` alternately PAIRS times (the order flipping each time) and returns
    the median of `a`'s results, the median of `b`'s, and the median of the per-pair ratios
    a/b (by their second field, GB/s). This shared machine swings a single run by ±30 % (the
    loopback ceiling alone measured 2.7 to 4.4 GB/s on one day), so a ratio is only
    meaningful between runs made side by side."""
    ra, rb, ratios = [], [], []
    for i in range(pairs or PAIRS):
        if i % 2 == 0:
            x = a()
            y = b()
        else:
            y = b()
            x = a()
        ra.append(x)
        rb.append(y)
        ratios.append(x[1] / y[1])
        # Each pair on stderr: a median hides whether the pairs agreed or one phase of
        # the host decided it.
        print(f"  pair {i + 1}: {x[1]:.3f} / {y[1]:.3f} GB/s = {ratios[-1]:.2f}", file=sys.stderr)
    med = lambda v: sorted(v)[len(v) // 2]
    pick = lambda rs: min(rs, key=lambda r: abs(r[1] - med([q[1] for q in rs])))
    return pick(ra), pick(rb), med(ratios)


def loopback_pair():
    """The loopback ceiling as a (records/s, GB/s) pair, for `paired`."""
    return None, iperf3_gbps(seconds=2)


def main():
    if "--index-only" in sys.argv:
        # Just the tenant index's cost (no peers to install), e.g. after changing the index.
        rows = index_rows(build())
        print_rows(rows)
        return
    ensure_packages()
    bench = build()
    rows = []
    loopback = iperf3_gbps()
    disk = dd_fdatasync_gbps()
    rows.append(("ceiling: loopback TCP, one stream (iperf3)", None, loopback, None))
    rows.append(("ceiling: sequential write + fdatasync (dd, 2 GiB)", None, disk, None))
    vs_loopback = {}
    for size in (100, 1024):
        t_w, r_w, ratio = paired(lambda: tidelog(bench, size, "written"), lambda: redis(size, "everysec"))
        rows.append((f"publish {size} B: tidelog ack written (median of {PAIRS})", t_w[0], t_w[1], None))
        rows.append((f"publish {size} B: redis XADD, appendfsync everysec (median of {PAIRS})", r_w[0], r_w[1], ratio))
        n_p, n_c = nats(size)
        rows.append((f"publish {size} B: NATS JetStream, acks, 1000 in flight", n_p[0], n_p[1], t_w[0] / n_p[0]))
        t_d = tidelog(bench, size, "durable", ["--producers", "4"])
        r_d = redis(size, "always")
        rows.append((f"publish {size} B: tidelog ack durable, 4 producers", t_d[0], t_d[1], None))
        rows.append((f"publish {size} B: redis XADD, appendfsync always", r_d[0], r_d[1], t_d[0] / r_d[0]))
        t_c = tidelog_consume(bench, size)
        r_c = redis(size, "everysec", command="XRANGE")
        rows.append((f"consume {size} B: tidelog fetch from earliest", t_c[0], t_c[1], None))
        rows.append((f"consume {size} B: redis XRANGE COUNT 100", r_c[0], r_c[1], t_c[0] / r_c[0]))
        rows.append((f"consume {size} B: NATS JetStream pull consumer, batch 1000", n_c[0], n_c[1], t_c[0] / n_c[0]))
        if size == 1024:
            # Against the loopback ceiling measured right beside each run.
            _, _, vs_loopback["publish"] = paired(lambda: tidelog(bench, size, "written"), loopback_pair)
            _, _, vs_loopback["consume"] = paired(lambda: tidelog_consume(bench, size), loopback_pair)
            rows.append((f"  tidelog publish {size} B / loopback (median of {PAIRS} side-by-side pairs)", None, None,
                         vs_loopback["publish"]))
            rows.append((f"  tidelog durable {size} B / min(written, dd)", None, None, t_d[1] / min(t_w[1], disk)))
            rows.append((f"  tidelog consume {size} B / loopback (median of {PAIRS} side-by-side pairs)", None, None,
                         vs_loopback["consume"]))
    rows += index_rows(bench)
    print_rows(rows)


def index_rows(bench):
    """The tenant index's cost on publish (issue: under 15 %), side by side: with a million
    keys updated uniformly at random (the worst case: every update misses the caches), and
    with 10 000 (a table that stays in the cache)."""
    rows = []
    for keys in (INDEX_KEYS, INDEX_KEYS_SMALL):
        # CPU per record (bench and server, over the timed run) of every run, in order: the
        # runs alternate plain/keyed and keyed/plain, a pair's two runs side by side.
        cpu = {0: [], keys: []}

        def run(k):
            r = tidelog_index(bench, k)
            cpu[k].append(r[2])
            return r

        plain, keyed, ratio = paired(lambda: run(0), lambda: run(keys), pairs=INDEX_PAIRS)
        cpu_ratio = sorted(k / p for p, k in zip(cpu[0], cpu[keys]))[INDEX_PAIRS // 2]
        label = f"{keys // 1_000_000} M" if keys >= 1_000_000 else f"{keys:,}"
        rows.append((f"publish 215 B, {INDEX_IN_FLIGHT} in flight: tidelog, no tenant or key (median of {INDEX_PAIRS})",
                     plain[0], None, None))
        rows.append((f"publish 200 B + 15 B key, {INDEX_IN_FLIGHT} in flight: tidelog, long-lived tenant, {label} "
                     f"random keys (median of {INDEX_PAIRS})", keyed[0], None, None))
        rows.append((f"  tidelog with the index / without, {label} keys (median of {INDEX_PAIRS} side-by-side pairs)",
                     None, None, 1 / ratio))
        rows.append((f"  CPU per record (bench + server), without the index / with, {label} keys (median of "
                     f"{INDEX_PAIRS} pairs)", None, None, 1 / cpu_ratio))
        # The same comparison on one server, keyed and plain bursts in turn (see
        # `tidelog-bench index-cost`): both sides see the same host phases. At the
        # throughput-bound depth, then at the latency-bound one.
        for in_flight in (INDEX_IN_FLIGHT, INDEX_LATENCY_BOUND_IN_FLIGHT):
            rows += index_cost_rows(bench, keys, label, in_flight)
    return rows


def index_cost_rows(bench, keys, label, in_flight):
    r = json.loads(sh([bench, "--spawn-server", "--json", "index-cost", "--count", str(count_index()),
                       "--burst", "500000", "--prefill", str(2 * INDEX_KEYS), "--record-size", "200",
                       "--batch", "100", "--in-flight", str(in_flight), "--keys", str(keys)],
                      env=page_cache_budget(INDEX_COST_PAGE_CACHE_BYTES)))
    assert r["verified"], f"tidelog run not verified: {r}"
    st = r["settings"]
    return [
        (f"  index-cost, {label} keys, {in_flight} in flight: keyed / plain, medians of {st['bursts_per_side']} "
         f"bursts each (plain {st['plain_burst_median_records_per_sec'] / 1e6:.1f} M, keyed "
         f"{st['keyed_burst_median_records_per_sec'] / 1e6:.1f} M records/s)",
         None, None, st["keyed_vs_plain_burst_medians"]),
        (f"  index-cost, {label} keys, {in_flight} in flight: keyed / plain over all bursts (CPU per record, "
         f"plain / keyed: {st['cpu_plain_vs_keyed']:.2f}x)", None, None, st["keyed_vs_plain"]),
    ]


def page_cache_budget(nbytes):
    return {**os.environ, "TIDELOG_PAGE_CACHE_BYTES": str(nbytes)}


def count_index():
    return 1_000_000 if QUICK else 4_000_000


def print_rows(rows):
    print("| run | records/s | GB/s | ratio (tidelog / peer or ceiling) |")
    print("|-----|-----------|------|-----------------------------------|")
    for name, rps, gbps, ratio in rows:
        f = lambda v, fmt: "" if v is None else fmt.format(v)
        print(f"| {name} | {f(rps, '{:,.0f}')} | {f(gbps, '{:.2f}')} | {f(ratio, '{:.2f}x')} |")


if __name__ == "__main__":
    main()
