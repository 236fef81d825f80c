//! Results: rows of latency/throughput numbers, the stdout table, the baseline comparison,
//! and the JSON report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::runner::{OpStats, PhaseResult};

/// Latency summary in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            mean: if h.is_empty() { 0.0 } else { h.mean() },
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What was measured: the scenario, `baseline`, or `scenario/operation`.
    pub label: String,
    pub target: String,
    pub concurrency: usize,
    /// Measured window in seconds (warm-up excluded).
    pub duration_s: f64,
    /// Successful requests (or samples) in the measured window.
    pub requests: u64,
    /// `requests / duration_s`.
    pub throughput: f64,
    pub latency_us: Latency,
    /// Failed requests in the measured window.
    pub errors: u64,
    /// Failed requests by kind (`http 503`, `timeout`, `unexpected: ...`).
    pub error_kinds: BTreeMap<String, u64>,
    #[serde(skip)]
    pub hist: Histogram<u64>,
}

impl Row {
    pub fn new(
        label: impl Into<String>,
        target: &str,
        concurrency: usize,
        measured: Duration,
        hist: Histogram<u64>,
        error_kinds: BTreeMap<String, u64>,
    ) -> Row {
        let secs = measured.as_secs_f64();
        let requests = hist.len();
        Row {
            label: label.into(),
            target: target.to_string(),
            concurrency,
            duration_s: secs,
            requests,
            throughput: if secs > 0.0 {
                requests as f64 / secs
            } else {
                0.0
            },
            latency_us: Latency::of(&hist),
            errors: error_kinds.values().sum(),
            error_kinds,
            hist,
        }
    }

    pub fn from_op(
        label: impl Into<String>,
        target: &str,
        concurrency: usize,
        phase: &PhaseResult,
        op: &OpStats,
    ) -> Row {
        Row::new(
            label,
            target,
            concurrency,
            phase.measured,
            op.hist.clone(),
            op.errors.clone(),
        )
    }

    /// All operations of a phase together.
    pub fn total(
        label: impl Into<String>,
        target: &str,
        concurrency: usize,
        phase: &PhaseResult,
    ) -> Row {
        let mut hist = crate::runner::new_histogram();
        let mut errors = BTreeMap::new();
        for op in &phase.ops {
            hist.add(&op.hist).expect("same bounds");
            for (k, n) in &op.errors {
                *errors.entry(format!("{}: {k}", op.name)).or_default() += n;
            }
        }
        Row::new(label, target, concurrency, phase.measured, hist, errors)
    }
}

/// Target against baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Target throughput divided by baseline throughput.
    pub throughput_ratio: f64,
    /// Target latency minus baseline latency (µs).
    pub extra_mean_us: f64,
    pub extra_p50_us: f64,
}

impl Comparison {
    pub fn of(target: &Row, baseline: &Row) -> Comparison {
        Comparison {
            throughput_ratio: if baseline.throughput > 0.0 {
                target.throughput / baseline.throughput
            } else {
                0.0
            },
            extra_mean_us: target.latency_us.mean - baseline.latency_us.mean,
            extra_p50_us: target.latency_us.p50 as f64 - baseline.latency_us.p50 as f64,
        }
    }
}

/// Throughput over time of one phase, for the plot.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    pub label: String,
    pub bucket_s: f64,
    /// Successful requests per second in each bucket.
    pub per_second: Vec<f64>,
}

impl Timeline {
    pub fn of(label: &str, phase: &PhaseResult) -> Timeline {
        let b = phase.bucket.as_secs_f64();
        Timeline {
            label: label.to_string(),
            bucket_s: b,
            per_second: phase.timeline.iter().map(|n| *n as f64 / b).collect(),
        }
    }
}

/// Everything a run produced.
#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    /// The exact command line, shell-quoted.
    pub command_line: String,
    /// The exact command line (argv).
    pub command: Vec<String>,
    /// Start of the run, RFC 3339 UTC.
    pub timestamp: String,
    pub unix_time: u64,
    /// Generator runtime threads.
    pub threads: usize,
    /// Rate in req/s, when the load was paced.
    pub rate: Option<f64>,
    pub warmup_s: f64,
    pub rows: Vec<Row>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
    /// Scenario-specific facts (pool size, issuance time, ...), also printed under the table.
    pub details: serde_json::Map<String, serde_json::Value>,
    /// Free-text remarks printed under the table.
    pub notes: Vec<String>,
    pub timelines: Vec<Timeline>,
    /// Successful requests and errors that decide the exit status.
    #[serde(skip)]
    pub ok_requests: u64,
    #[serde(skip)]
    pub failed_requests: u64,
}

impl Report {
    pub fn new(
        scenario: &str,
        started: SystemTime,
        threads: usize,
        rate: Option<f64>,
        warmup: Duration,
    ) -> Report {
        let unix = started
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Report {
            scenario: scenario.to_string(),
            command_line: std::env::args()
                .map(|a| shell_quote(&a))
                .collect::<Vec<_>>()
                .join(" "),
            command: std::env::args().collect(),
            timestamp: rfc3339(unix),
            unix_time: unix,
            threads,
            rate,
            warmup_s: warmup.as_secs_f64(),
            rows: Vec::new(),
            comparison: None,
            details: serde_json::Map::new(),
            notes: Vec::new(),
            timelines: Vec::new(),
            ok_requests: 0,
            failed_requests: 0,
        }
    }

    pub fn detail(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.details.insert(key.to_string(), value.into());
    }

    /// Counts a row toward the exit status.
    pub fn count(&mut self, row: &Row) {
        self.ok_requests += row.requests;
        self.failed_requests += row.errors;
    }

    /// The human-readable table and the lines under it.
    pub fn table(&self) -> String {
        let mut s = self.rows_table();
        s.push('\n');
        let _ = writeln!(
            s,
            "(latency in µs; requests and req/s count successful requests of the measured window)"
        );
        if let Some(c) = &self.comparison {
            let _ = writeln!(s, "throughput target/baseline: {:.3}", c.throughput_ratio);
            let _ = writeln!(
                s,
                "extra latency per request over baseline: mean {:+.0} µs, p50 {:+.0} µs",
                c.extra_mean_us, c.extra_p50_us
            );
        }
        for r in &self.rows {
            if r.errors > 0 {
                let kinds: Vec<String> = r
                    .error_kinds
                    .iter()
                    .map(|(k, n)| format!("{k} × {n}"))
                    .collect();
                let _ = writeln!(
                    s,
                    "errors of {} ({}): {}",
                    r.label,
                    r.target,
                    kinds.join(", ")
                );
            }
        }
        for (k, v) in &self.details {
            let _ = writeln!(s, "{k}: {v}");
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        s
    }

    /// The rows, aligned: columns two spaces apart, numbers to the right, each column at
    /// least as wide as in the first version of this table, so runs line up when compared.
    fn rows_table(&self) -> String {
        use comfy_table::{CellAlignment, ColumnConstraint, Table, Width};
        // (header, minimum width, right-aligned)
        const COLUMNS: [(&str, u16, bool); 13] = [
            ("scenario", 8, false),
            ("target", 6, false),
            ("conc", 4, true),
            ("duration", 8, true),
            ("requests", 9, true),
            ("req/s", 10, true),
            ("mean", 7, true),
            ("p50", 7, true),
            ("p90", 7, true),
            ("p99", 7, true),
            ("p99.9", 7, true),
            ("max", 7, true),
            ("errors", 6, true),
        ];
        let mut t = Table::new();
        t.load_style(comfy_table::presets::NOTHING)
            .set_header(COLUMNS.map(|(name, _, _)| name));
        for r in &self.rows {
            let l = &r.latency_us;
            t.add_row(vec![
                r.label.clone(),
                r.target.clone(),
                r.concurrency.to_string(),
                format!("{:.2}s", r.duration_s),
                r.requests.to_string(),
                format!("{:.1}", r.throughput),
                format!("{:.0}", l.mean),
                l.p50.to_string(),
                l.p90.to_string(),
                l.p99.to_string(),
                l.p99_9.to_string(),
                l.max.to_string(),
                r.errors.to_string(),
            ]);
        }
        let last = COLUMNS.len() - 1;
        for (i, column) in t.column_iter_mut().enumerate() {
            let (_, width, right) = COLUMNS[i];
            // Two spaces after every column but the last; the constraint counts them.
            let gap = if i == last { 0 } else { 2 };
            column.set_padding((0, gap));
            column.set_constraint(ColumnConstraint::LowerBoundary(Width::Fixed(width + gap)));
            if right {
                column.set_cell_alignment(CellAlignment::Right);
            }
        }
        t.trim_fmt()
    }

    pub fn write_json(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Quotes an argument for a POSIX shell when it needs it.
fn shell_quote(a: &str) -> String {
    let plain = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if plain {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time.
pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_445_827), "2026-11-23T14:57:07Z");
    }

    fn row(label: &str, target: &str, numbers: [u64; 7], throughput: f64, mean: f64) -> Row {
        let [requests, p50, p90, p99, p99_9, max, errors] = numbers;
        Row {
            label: label.into(),
            target: target.into(),
            concurrency: 32,
            duration_s: 2.0,
            requests,
            throughput,
            latency_us: Latency {
                mean,
                p50,
                p90,
                p99,
                p99_9,
                max,
            },
            errors,
            error_kinds: BTreeMap::new(),
            hist: crate::runner::new_histogram(),
        }
    }

    /// The rows of loadtest/README.md's "Reading the output", byte for byte.
    #[test]
    fn the_table_keeps_its_layout() {
        let mut report = Report::new("introspect-hot", UNIX_EPOCH, 2, None, Duration::ZERO);
        report.rows = vec![
            row(
                "baseline",
                "bare hyper (268 B)",
                [189_607, 300, 437, 881, 4219, 8391, 0],
                94_803.5,
                337.2,
            ),
            row(
                "introspect-hot",
                "http://127.0.0.1:18480",
                [134_681, 434, 642, 1197, 4455, 9015, 0],
                67_340.5,
                474.0,
            ),
        ];
        let want = "\
scenario        target                  conc  duration   requests       req/s     mean      p50      p90      p99    p99.9      max  errors
baseline        bare hyper (268 B)        32     2.00s     189607     94803.5      337      300      437      881     4219     8391       0
introspect-hot  http://127.0.0.1:18480    32     2.00s     134681     67340.5      474      434      642     1197     4455     9015       0
(latency in µs; requests and req/s count successful requests of the measured window)
";
        assert_eq!(report.table(), want);

        // Short labels and no rows keep the minimum widths.
        report.rows.truncate(0);
        let header = report.table().lines().next().unwrap().to_string();
        assert!(
            header.starts_with("scenario  target  conc  duration"),
            "{header}"
        );
    }
}
