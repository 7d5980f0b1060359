//! `tidelog-bench` itself, run as users run it: every scenario against a server it spawns,
//! with the JSON fields scripts depend on, and `verified: true`.

use std::process::Command;

/// `tidelog-bench --json ARGS`, which must succeed: its one JSON object.
fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tidelog-bench"))
        .arg("--json")
        .args(args)
        .output()
        .expect("run tidelog-bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// A scenario against a server `tidelog-bench` spawns for it.
fn run(args: &[&str]) -> serde_json::Value {
    let bin = tidelog_e2e::binary();
    let spawn = [
        "--spawn-server",
        "--tidelog-bin",
        bin.to_str().expect("utf-8 path"),
    ];
    bench(&[&spawn[..], args].concat())
}

fn check(report: &serde_json::Value, scenario: &str, records: u64) {
    assert_eq!(report["scenario"], scenario);
    assert_eq!(report["records"], records);
    assert_eq!(report["verified"], true, "{report}");
    for field in ["bytes", "seconds", "records_per_sec", "mb_per_sec"] {
        assert!(
            report[field].as_f64().is_some_and(|v| v > 0.0),
            "{field} in {report}"
        );
    }
}

#[test]
fn every_scenario_runs_and_verifies() {
    let publish = run(&[
        "publish",
        "--count",
        "20000",
        "--record-size",
        "100",
        "--batch",
        "100",
        "--producers",
        "2",
        "--partitions",
        "2",
    ]);
    check(&publish, "publish", 20000);
    // The spawned server's CPU by thread: the event loop is `main`.
    assert!(
        publish["server_thread_ns_per_record"]["main"]
            .as_f64()
            .is_some_and(|ns| ns > 0.0),
        "{publish}"
    );
    for q in ["p50", "p90", "p99", "p999", "max"] {
        assert!(
            publish["latency_us"][q].as_u64().is_some(),
            "latency_us.{q}"
        );
    }
    check(
        &run(&[
            "consume",
            "--count",
            "20000",
            "--record-size",
            "200",
            "--batch",
            "50",
            "--consumers",
            "2",
            "--partitions",
            "3",
        ]),
        "consume",
        20000,
    );
    let e2e = run(&[
        "e2e",
        "--count",
        "5000",
        "--record-size",
        "64",
        "--batch",
        "10",
        "--rate",
        "20000",
    ]);
    check(&e2e, "e2e", 5000);
    assert!(e2e["latency_us"]["p99"].as_u64().is_some());
    check(
        &run(&[
            "publish", "--count", "3000", "--ack", "durable", "--batch", "10",
        ]),
        "publish",
        3000,
    );
    check(
        &run(&[
            "queue",
            "--count",
            "20000",
            "--record-size",
            "100",
            "--partitions",
            "4",
            "--consumers",
            "3",
        ]),
        "queue",
        20000,
    );
    let extract = run(&[
        "extract",
        "--keys",
        "2000",
        "--log-records",
        "6000",
        "--record-size",
        "100",
        "--batch",
        "100",
    ]);
    check(&extract, "extract", 2000);
    assert!(extract["settings"]["extract_vs_fetch"].as_f64().is_some());
    // 200 batches of 50, one in 4 the tenant's; a quarter of those records (13 of each
    // batch's 50: the batches start at multiples of 200) are shares.
    let history = |criteria: &[&str]| {
        let args = [
            "history",
            "--count",
            "10000",
            "--batch",
            "50",
            "--record-size",
            "100",
            "--tenants",
            "4",
            "--partitions",
            "3",
        ];
        run(&[&args[..], criteria].concat())
    };
    let all = history(&[]);
    check(&all, "history", 2500);
    assert_eq!(all["settings"]["tenant_records"], 2500);
    assert!(all["settings"]["history_vs_fetch_whole_partition_seconds"]
        .as_f64()
        .is_some_and(|r| r > 0.0));
    check(&history(&["--header", "type=share"]), "history", 50 * 13);
    let group = run(&[
        "group",
        "--count",
        "20000",
        "--record-size",
        "100",
        "--partitions",
        "12",
        "--consumers",
        "3",
        "--rebalances",
        "2",
    ]);
    check(&group, "group", 20000);
    for field in ["rebalance_join_ms", "rebalance_leave_ms"] {
        assert!(
            group["settings"][field]["p50"]
                .as_f64()
                .is_some_and(|v| v > 0.0),
            "{field} in {group}"
        );
    }
}

#[test]
fn publish_with_a_tenant_and_random_keys_verifies_and_says_so() {
    let report = run(&[
        "publish",
        "--count",
        "20000",
        "--record-size",
        "100",
        "--producers",
        "2",
        "--partitions",
        "3",
        "--tenant",
        "acme",
        "--keys",
        "1000",
    ]);
    check(&report, "publish", 20000);
    assert_eq!(report["settings"]["tenant"], "acme", "{report}");
    assert_eq!(report["settings"]["keys"], 1000, "{report}");
}

#[test]
fn a_prefill_is_published_first_and_left_out_of_the_figures_and_the_check() {
    // The prefill's records carry the same producers' sequence numbers from 0: were they
    // read back, the check would count them as duplicates.
    let report = run(&[
        "publish",
        "--count",
        "10000",
        "--record-size",
        "100",
        "--tenant",
        "acme",
        "--keys",
        "500",
        "--prefill",
        "7000",
    ]);
    check(&report, "publish", 10000);
    assert_eq!(report["settings"]["prefill"], 7000, "{report}");
}

#[test]
fn index_cost_compares_keyed_and_plain_bursts_and_verifies_both() {
    let report = run(&[
        "index-cost",
        "--count",
        "20000",
        "--burst",
        "5000",
        "--prefill",
        "3000",
        "--record-size",
        "100",
        "--keys",
        "500",
    ]);
    // The figures are the keyed side's; the plain side's are in `settings`.
    check(&report, "index_cost", 20000);
    let s = &report["settings"];
    assert_eq!(s["bursts_per_side"], 4, "{report}");
    assert_eq!(s["plain_record_size"], 115, "{report}");
    let bursts = s["bursts"].as_array().expect("bursts");
    assert_eq!(bursts.len(), 8, "{report}");
    for (side, n) in [("plain", 4), ("keyed", 4)] {
        assert_eq!(bursts.iter().filter(|b| b["side"] == side).count(), n);
    }
    for field in [
        "plain_records_per_sec",
        "keyed_vs_plain",
        "keyed_vs_plain_burst_medians",
        "cpu_plain_vs_keyed",
    ] {
        assert!(
            s[field].as_f64().is_some_and(|v| v > 0.0),
            "{field} in {report}"
        );
    }
    // The spawned server's event loop (its main thread) appended both sides' records:
    // each side's share of its CPU is there, per record.
    for side in ["plain", "keyed"] {
        let threads = &s["server_thread_ns_per_record"][side];
        assert!(
            threads["main"].as_f64().is_some_and(|ns| ns > 0.0),
            "{side}: {threads}"
        );
    }
}

/// `consume --existing` reads what a topic already holds — here what an earlier `publish`
/// run left on a server both runs share — and verifies it, publishing nothing itself.
#[test]
fn consume_existing_reads_back_what_an_earlier_run_left() {
    let server = tidelog_e2e::Server::start();
    let addr = server.addr.to_string();
    let bench = |args: &[&str]| bench(&[&["--server", addr.as_str()][..], args].concat());
    let common = [
        "--topic",
        "kept",
        "--record-size",
        "120",
        "--producers",
        "2",
    ];
    let published = bench(
        &[
            &["publish", "--count", "12000", "--partitions", "2"],
            &common[..],
        ]
        .concat(),
    );
    check(&published, "publish", 12000);
    let existing = bench(&[&["consume", "--existing"], &common[..]].concat());
    check(&existing, "consume", 12000);
    // Twice: nothing was added by the first read.
    let again = bench(&[&["consume", "--existing"], &common[..]].concat());
    check(&again, "consume", 12000);
    server.stop();
}
