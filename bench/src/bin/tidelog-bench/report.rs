//! Results: a human table on stdout, or one JSON object per scenario with `--json`.

use hdrhistogram::Histogram;

use crate::cpu::CpuUse;
use crate::verify::Verdict;

#[derive(Debug)]
pub struct Report {
    pub scenario: String,
    pub records: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub latency: Option<Histogram<u64>>,
    pub verdict: Option<Verdict>,
    /// CPU spent over the measured run (scenarios that measure it).
    pub cpu: Option<CpuUse>,
    /// Settings echoed in the output so a figure carries its conditions.
    pub settings: serde_json::Value,
}

impl Report {
    fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.seconds.max(1e-9)
    }
    fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }

    pub fn json(&self) -> serde_json::Value {
        let latency = self.latency.as_ref().map(|h| {
            serde_json::json!({
                "p50": h.value_at_quantile(0.50),
                "p90": h.value_at_quantile(0.90),
                "p99": h.value_at_quantile(0.99),
                "p999": h.value_at_quantile(0.999),
                "max": h.max(),
            })
        });
        let mut out = serde_json::json!({
            "scenario": self.scenario,
            "records": self.records,
            "bytes": self.bytes,
            "seconds": self.seconds,
            "records_per_sec": self.records_per_sec(),
            "mb_per_sec": self.mb_per_sec(),
            "latency_us": latency,
            "verified": self.verdict.as_ref().is_some_and(Verdict::passed),
            "settings": self.settings,
        });
        if let Some(cpu) = &self.cpu {
            out["cpu_seconds"] = serde_json::json!({"client": cpu.client, "server": cpu.server});
            if !cpu.server_threads.is_empty() {
                out["server_thread_ns_per_record"] = cpu.server_thread_ns_per_record(self.records);
            }
        }
        if let Some(v) = self.verdict.as_ref().filter(|v| !v.passed()) {
            out["missing"] = v.missing.into();
            out["duplicate"] = v.duplicate.into();
            out["out_of_order"] = v.out_of_order.into();
            out["foreign"] = v.foreign.into();
        }
        out
    }

    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<10} {:>12} records {:>10.1} MB {:>8.2} s {:>12.0} rec/s {:>9.1} MB/s",
            self.scenario,
            self.records,
            self.bytes as f64 / 1e6,
            self.seconds,
            self.records_per_sec(),
            self.mb_per_sec()
        );
        if let Some(h) = &self.latency {
            // What `latency_us` times differs by scenario.
            let what = match self.scenario.as_str() {
                "e2e" => "publish → delivery",
                "extract" => "writers' publish → ack during the extraction",
                _ => "publish → ack",
            };
            s += &format!(
                "\n{:<10} latency µs ({what}): p50 {} p90 {} p99 {} p999 {} max {}",
                "",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            );
        }
        if self.scenario == "index_cost" {
            let f = |k: &str| self.settings[k].as_f64().unwrap_or(0.0);
            s += &format!(
                "\n{:<10} (the keyed side above) plain side {:.0} rec/s; keyed / plain: {:.2}x \
                 over all bursts, {:.2}x of the burst medians, CPU per record {:.2}x",
                "",
                f("plain_records_per_sec"),
                f("keyed_vs_plain"),
                f("keyed_vs_plain_burst_medians"),
                1.0 / f("cpu_plain_vs_keyed").max(1e-9),
            );
        }
        if let Some(cpu) = &self.cpu {
            let per_record = |secs: f64| secs * 1e9 / self.records.max(1) as f64;
            s += &format!(
                "\n{:<10} cpu: client {:.2} s ({:.0} ns/record)",
                "",
                cpu.client,
                per_record(cpu.client)
            );
            if let Some(server) = cpu.server {
                s += &format!(
                    ", server {server:.2} s ({:.0} ns/record)",
                    per_record(server)
                );
            }
        }
        s += &match &self.verdict {
            Some(v) if v.passed() => {
                format!("\n{:<10} verified: every record exactly once, in order", "")
            }
            Some(v) => format!(
                "\n{:<10} VERIFICATION FAILED: missing {} duplicate {} out_of_order {} foreign {}",
                "", v.missing, v.duplicate, v.out_of_order, v.foreign
            ),
            None => format!("\n{:<10} not verified", ""),
        };
        s
    }
}
