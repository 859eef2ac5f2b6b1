//! The report of a load run: JSON figures, a Markdown summary and a self-contained HTML page
//! with charts (inline SVG, no external assets). Several runs are summarised by their medians:
//! the machine is shared and noisy, so ratios measured within one run are the figures that count.

use serde::Serialize;
use std::fmt::Write;

use crate::{RunReport, WorkloadShape};

/// All runs of one configuration and their medians.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The command that produced it.
    pub command: String,
    /// Events per message.
    pub batch_size: usize,
    /// The workload's shape (of the first run; every run of a configuration has the same).
    pub workload: WorkloadShape,
    /// Runs.
    pub runs: Vec<RunReport>,
    /// Median raw publish events/s.
    pub median_raw_publish_eps: f64,
    /// Median raw consume events/s.
    pub median_raw_consume_eps: f64,
    /// Median pipeline events/s.
    pub median_pipeline_eps: f64,
    /// Median of the per-run ratios pipeline / raw consume.
    pub median_ratio: f64,
    /// Median freshness p50 / p90 / p99 / max (ms), when measured.
    pub median_freshness_ms: Option<[f64; 4]>,
    /// True when every run's totals equalled its oracle.
    pub exact: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Summary {
    /// Summarises runs.
    pub fn new(command: String, runs: Vec<RunReport>) -> Summary {
        let m = |f: &dyn Fn(&RunReport) -> f64| median(runs.iter().map(f).collect());
        let fresh: Vec<&crate::Freshness> = runs.iter().filter_map(|r| r.freshness.as_ref()).collect();
        let median_freshness_ms = (!fresh.is_empty()).then(|| {
            let f = |g: &dyn Fn(&crate::Freshness) -> f64| median(fresh.iter().map(|x| g(x)).collect());
            [f(&|x| x.p50_ms), f(&|x| x.p90_ms), f(&|x| x.p99_ms), f(&|x| x.max_ms)]
        });
        Summary {
            command,
            batch_size: runs.first().map_or(1, |r| r.batch_size),
            workload: runs.first().map(|r| r.workload.clone()).unwrap_or_default(),
            median_raw_publish_eps: m(&|r| r.raw_publish.events_per_s),
            median_raw_consume_eps: m(&|r| r.raw_consume.events_per_s),
            median_pipeline_eps: m(&|r| r.pipeline.events_per_s),
            median_ratio: m(&|r| r.ratio_to_consume_ceiling),
            median_freshness_ms,
            exact: runs.iter().all(|r| r.exact),
            runs,
        }
    }

    /// The Markdown summary.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _w = writeln!(s, "## meterflow load run: {} event(s) per message\n", self.batch_size);
        let _w = writeln!(s, "Command: `{}`\n", self.command);
        let _w = writeln!(s, "Workload: {}\n", self.workload.describe());
        let _w = writeln!(
            s,
            "| run | raw publish ev/s | raw consume ev/s | pipeline ev/s | pipeline / consume \
            | freshness p50 / p90 / p99 / max ms | exact |"
        );
        let _w = writeln!(s, "| --- | ---: | ---: | ---: | ---: | --- | --- |");
        for (i, r) in self.runs.iter().enumerate() {
            let f = r.freshness.as_ref().map_or("-".into(), |f| {
                format!(
                    "{:.0} / {:.0} / {:.0} / {:.0} (at {:.0} ev/s)",
                    f.p50_ms, f.p90_ms, f.p99_ms, f.max_ms, f.achieved_events_per_s
                )
            });
            let _w = writeln!(
                s,
                "| {} | {:.0} | {:.0} | {:.0} | {:.2} | {f} | {} |",
                i + 1,
                r.raw_publish.events_per_s,
                r.raw_consume.events_per_s,
                r.pipeline.events_per_s,
                r.ratio_to_consume_ceiling,
                if r.exact { "yes" } else { "NO" }
            );
        }
        let f = self
            .median_freshness_ms
            .map_or("-".into(), |f| format!("{:.0} / {:.0} / {:.0} / {:.0}", f[0], f[1], f[2], f[3]));
        let _w = writeln!(
            s,
            "| **median** | {:.0} | {:.0} | {:.0} | **{:.2}** | {f} | {} |",
            self.median_raw_publish_eps,
            self.median_raw_consume_eps,
            self.median_pipeline_eps,
            self.median_ratio,
            if self.exact { "yes" } else { "NO" }
        );
        if let Some(r) = self.runs.first() {
            let _w = writeln!(
                s,
                "\nEach run: {} accepted events, {} duplicates, {} rejects; totals checked against the oracle \
                    through SQL.",
                r.accepted, r.duplicates, r.rejected
            );
        }
        let http: Vec<String> = self
            .runs
            .iter()
            .filter_map(|r| {
                let (h, ratio) = (r.http_ingest.as_ref()?, r.http_ratio_to_publish?);
                let q = r.query_latency.as_ref().map_or(String::new(), |q| {
                    format!(
                        "; month-to-date meter query for one of {} customers p50 {:.1} ms / p99 {:.1} ms",
                        q.customers, q.p50_ms, q.p99_ms
                    )
                });
                Some(format!("HTTP ingest {:.0} ev/s = {ratio:.2} of the raw publish{q}", h.events_per_s))
            })
            .collect();
        if !http.is_empty() {
            let _w = writeln!(s, "\nHTTP API, per run: {}.", http.join("; "));
        }
        if self.workload.late_fraction.is_some() {
            let per_run: Vec<String> = self
                .runs
                .iter()
                .map(|r| format!("{} generated / {} flagged", r.late_generated, r.late_flagged))
                .collect();
            let _w = writeln!(
                s,
                "\nLate events per run (generated behind the stream time / in rows the pipeline flagged late): {}.",
                per_run.join(", ")
            );
        }
        s
    }

    /// The HTML page.
    pub fn html(&self) -> String {
        let mut s = String::from(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>meterflow load run</title>\
             <style>body{font-family:system-ui,sans-serif;margin:1.5rem}table{border-collapse:collapse}\
             td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:right}svg{border:1px solid #ccc;margin:.5rem 0}</style></head><body>",
        );
        let _w = write!(
            s,
            "<h1>meterflow load run ({} event(s) per message)</h1><p><code>{}</code></p><p>Workload: {}</p>",
            self.batch_size,
            escape(&self.command),
            escape(&self.workload.describe())
        );
        // Ratio to the ceiling: three bars.
        let bars = [
            ("raw publish", self.median_raw_publish_eps),
            ("raw consume", self.median_raw_consume_eps),
            ("pipeline", self.median_pipeline_eps),
        ];
        let max = bars.iter().map(|b| b.1).fold(1.0, f64::max);
        s.push_str("<h2>Throughput against the ceiling (median events/s)</h2><svg width=\"640\" height=\"110\">");
        for (i, (name, v)) in bars.iter().enumerate() {
            let w = 440.0 * v / max;
            let y = 10 + i * 32;
            let _w = write!(
                s,
                "<text x=\"5\" y=\"{}\" font-size=\"12\">{name}</text><rect x=\"100\" y=\"{y}\" \
                    width=\"{w:.0}\" height=\"22\" fill=\"#0969da\"/>\
                 <text x=\"{:.0}\" y=\"{}\" font-size=\"12\">{v:.0}</text>",
                y + 15,
                105.0 + w,
                y + 15
            );
        }
        let _w = write!(s, "</svg><p>pipeline / raw consume: <b>{:.2}</b></p>", self.median_ratio);
        if let Some(r) = self.runs.first() {
            s.push_str("<h2>Pipeline throughput over time (run 1)</h2>");
            s.push_str(&line_chart(&r.throughput_series, "seconds", "events/s"));
            if let Some(f) = &r.freshness {
                let _w = write!(
                    s,
                    "<h2>Freshness: publish to visible in SQL (run 1, {:.0} events/s)</h2><p>p50 {:.0} ms, p90 \
                        {:.0} ms, p99 {:.0} ms, max {:.0} ms</p>",
                    f.achieved_events_per_s, f.p50_ms, f.p90_ms, f.p99_ms, f.max_ms
                );
                let cdf: Vec<(f64, f64)> = f.distribution.iter().map(|(ms, p)| (*ms, p * 100.0)).collect();
                s.push_str(&line_chart(&cdf, "latency ms", "% of messages"));
            }
        }
        s.push_str("<h2>All runs</h2><pre>");
        s.push_str(&escape(&self.markdown()));
        s.push_str("</pre></body></html>\n");
        s
    }
}

impl WorkloadShape {
    /// One line: customers and their skew, duplicates, malformed messages, event times and
    /// lateness.
    pub fn describe(&self) -> String {
        let who = match self.skew {
            Some(skew) if self.synthetic_customers => {
                format!("{} synthetic customers, activity Zipf-skewed (exponent {skew})", self.customers)
            }
            _ => format!(
                "{} customers ({} subjects) of the config's reference data in a fixed mix (one sends half the events)",
                self.customers, self.subjects
            ),
        };
        let dups = match self.duplicate_every {
            0 => "no duplicates".to_string(),
            n => format!("a duplicate every {n} events"),
        };
        let bad = match self.bad_every {
            0 => "no malformed messages".to_string(),
            n => format!("a malformed message every {n} messages"),
        };
        let times = match (self.late_fraction, self.lateness_mean_s) {
            (Some(f), Some(mean)) => format!(
                "event times in stream order, {:.1} % late (exponential lateness, mean {mean} s, cap {} s)",
                f * 100.0,
                self.lateness_cap_s.unwrap_or_default()
            ),
            _ => "event times spread over 48 h four days back, unrelated to the publish order".to_string(),
        };
        format!("{who}; {dups}; {bad}; {times}")
    }
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn line_chart(points: &[(f64, f64)], x_label: &str, y_label: &str) -> String {
    let (w, h, pad) = (640.0, 220.0, 40.0);
    let max_x = points.iter().map(|p| p.0).fold(1e-9, f64::max);
    let max_y = points.iter().map(|p| p.1).fold(1e-9, f64::max);
    let pts: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{:.1},{:.1}", pad + (w - 2.0 * pad) * x / max_x, h - pad - (h - 2.0 * pad) * y / max_y))
        .collect();
    format!(
        "<svg width=\"{w}\" height=\"{h}\"><polyline fill=\"none\" stroke=\"#0969da\" stroke-width=\"2\" \
            points=\"{}\"/>\
         <text x=\"{pad}\" y=\"15\" font-size=\"12\">{y_label} (max {max_y:.0})</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"12\">{x_label} (max {max_x:.1})</text></svg>",
        pts.join(" "),
        w - 200.0,
        h - 8.0
    )
}
