//! The operations page: one self-contained HTML document rendered on the server from a [`View`]
//! (no scripts, styles or fonts from elsewhere, so it works offline and in any browser). It
//! refreshes itself every few seconds. A pure function: the same view gives the same page.

use std::fmt::Write;

use super::live::{Sample, View};
use crate::status::PeriodStatus;

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1f24;background:#f6f8fa}\
h1{font-size:1.4rem;margin:0 0 .2rem}h2{font-size:1.05rem;margin:1.2rem 0 .4rem}\
.sub{color:#57606a;font-size:.85rem}.grid{display:flex;flex-wrap:wrap;gap:.6rem}\
.card{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:.6rem .9rem;min-width:9rem}\
.card b{display:block;font-size:1.35rem}.card span{color:#57606a;font-size:.8rem}\
table{border-collapse:collapse;background:#fff;font-size:.85rem}td,th{border:1px solid #d0d7de;padding:.25rem .55rem;text-align:left}\
th{background:#eaeef2}.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}\
svg{background:#fff;border:1px solid #d0d7de;border-radius:6px}.panel{display:flex;flex-wrap:wrap;gap:1.2rem}";

fn card(out: &mut String, id: &str, value: impl std::fmt::Display, label: &str) {
    let _w = write!(out, "<div class=\"card\" id=\"{id}\"><b>{value}</b><span>{}</span></div>", escape(label));
}

/// A line chart of one series over the history, as inline SVG.
fn chart(id: &str, title: &str, samples: &[Sample], value: impl Fn(&Sample) -> f64) -> String {
    let (w, h, pad) = (560.0, 170.0, 30.0);
    let max = samples.iter().map(&value).fold(0.0_f64, f64::max).max(1.0);
    let n = samples.len().max(2) as f64 - 1.0;
    let points: Vec<String> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let x = pad + (w - 2.0 * pad) * i as f64 / n;
            let y = h - pad - (h - 2.0 * pad) * value(s) / max;
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let last = samples.last().map_or(0.0, &value);
    format!(
        "<figure id=\"{id}\"><svg width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{t}\">\
         <text x=\"{pad}\" y=\"18\" font-size=\"12\">{t}: now {last:.0}, max {max:.0} (last {secs} s)</text>\
         <line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#8c959f\"/>\
         <polyline fill=\"none\" stroke=\"#0969da\" stroke-width=\"2\" points=\"{pts}\"/></svg></figure>",
        t = escape(title),
        b = h - pad,
        r = w - pad,
        secs = samples.first().zip(samples.last()).map_or(0, |(a, z)| z.at - a.at),
        pts = points.join(" "),
    )
}

fn table(out: &mut String, id: &str, head: &[&str], rows: &[Vec<String>], empty: &str) {
    if rows.is_empty() {
        let _w = write!(out, "<p id=\"{id}\" class=\"sub\">{}</p>", escape(empty));
        return;
    }
    let _w = write!(out, "<table id=\"{id}\"><tr>");
    for h in head {
        let _w = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            // Cells are escaped here, except the ones built as markup below (status badges).
            if c.starts_with("<span class=") {
                out.push_str("<td>");
                out.push_str(c);
                out.push_str("</td>");
            } else {
                let _w = write!(out, "<td>{}</td>", escape(c));
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
}

fn badge(ok: bool, text: &str) -> String {
    format!("<span class=\"{}\">{}</span>", if ok { "ok" } else { "bad" }, escape(text))
}

/// Renders the page.
pub fn render(v: &View, refresh_s: u64) -> String {
    let mut o = String::with_capacity(16 * 1024);
    let _w = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" \
            content=\"{refresh_s}\">\
         <title>meterflow operations</title><style>{STYLE}</style></head><body>\
         <h1>meterflow operations</h1><p class=\"sub\">running since {} · page taken {} · refreshes every \
             {refresh_s} s · \
         <a href=\"/metrics\">/metrics</a> · <a href=\"/api/status\">/api/status</a></p>",
        escape(&v.started_at),
        escape(&v.now)
    );
    pipeline_cards(&mut o, v);
    o.push_str("<h2>Throughput and lag</h2><div class=\"panel\">");
    o.push_str(&chart("throughput-chart", "accepted events/s", &v.history, |s| s.accepted_per_s));
    o.push_str(&chart("lag-chart", "consumer lag (messages)", &v.history, |s| s.lag as f64));
    o.push_str("</div>");
    breakdowns(&mut o, v);
    billing_periods(&mut o, v);
    partitions(&mut o, v);
    o.push_str("</body></html>\n");
    o
}

/// The pipeline's counters since start.
fn pipeline_cards(o: &mut String, v: &View) {
    o.push_str("<h2>Pipeline</h2><div class=\"grid\">");
    card(o, "accepted", v.events_accepted, "events accepted");
    card(o, "received", v.events_received, "events received");
    card(o, "duplicates", v.events_duplicate, "duplicates dropped");
    card(o, "rejected", v.rejected.values().sum::<u64>(), "rejected (DLQ)");
    card(o, "late", v.late.values().sum::<u64>(), "late events");
    card(o, "lag", v.lag, "consumer lag (messages)");
    card(o, "committed", v.committed_seq, "committed stream sequence");
    card(o, "commits", v.commits, "commits");
    card(o, "windows", v.open_windows, "open windows");
    o.push_str("</div>");
}

/// Rejects by reason, late events by meter, and the meters' watermarks.
fn breakdowns(o: &mut String, v: &View) {
    o.push_str("<div class=\"panel\"><div><h2>Rejects by reason</h2>");
    let rows: Vec<Vec<String>> = v.rejected.iter().map(|(k, n)| vec![k.clone(), n.to_string()]).collect();
    table(o, "rejects", &["reason", "events"], &rows, "no rejects since start");
    o.push_str("</div><div><h2>Exception queue (DLQ)</h2>");
    let now = chrono::Utc::now().timestamp();
    let rows: Vec<Vec<String>> = v
        .billing
        .iter()
        .flat_map(|b| b.broker.exception_queue.iter())
        .map(|q| {
            vec![
                q.reason.clone(),
                q.messages.to_string(),
                q.oldest_unix.map_or_else(String::new, |t| format!("{} min", now.saturating_sub(t).max(0) / 60)),
                if q.redrivable { "meterflow dlq replay".into() } else { "publisher fix".into() },
            ]
        })
        .collect();
    table(o, "exception-queue", &["reason", "entries", "oldest", "cure"], &rows, "empty");
    o.push_str("</div><div><h2>Late events by meter</h2>");
    let rows: Vec<Vec<String>> = v.late.iter().map(|(k, n)| vec![k.clone(), n.to_string()]).collect();
    table(o, "late-events", &["meter", "events"], &rows, "no late events since start");
    o.push_str("</div><div><h2>Watermarks</h2>");
    let rows: Vec<Vec<String>> = v
        .meters
        .iter()
        .map(|m| {
            vec![
                m.meter.clone(),
                m.watermark.clone().unwrap_or_else(|| "no events yet".into()),
                m.watermark_age_s.map_or_else(String::new, |a| format!("{a} s")),
            ]
        })
        .collect();
    table(o, "watermarks", &["meter", "watermark", "age"], &rows, "no meters");
    o.push_str("</div></div>");
}

/// The billing periods: close, events, invoices, ERP documents, last reconciliation.
fn billing_periods(o: &mut String, v: &View) {
    o.push_str("<h2>Billing periods</h2>");
    if let Some(e) = &v.billing_error {
        let _w = write!(o, "<p class=\"bad\" id=\"billing-error\">{}</p>", escape(e));
    }
    let rows: Vec<Vec<String>> = v.billing.iter().flat_map(|b| b.periods.iter()).map(|p| period_row(v, p)).collect();
    table(
        o,
        "periods",
        &["period", "status", "events", "invoices", "ERP documents", "reconciliation"],
        &rows,
        "no billing periods yet",
    );
}

/// On a partitioned stream, every partition: owner, committed and last sequence, watermark.
fn partitions(o: &mut String, v: &View) {
    let parts: Vec<&crate::status::PartitionStatus> = v.billing.iter().flat_map(|b| b.partitions.iter()).collect();
    if parts.is_empty() {
        return;
    }
    o.push_str("<h2>Partitions</h2>");
    let rows: Vec<Vec<String>> = parts
        .iter()
        .map(|p| {
            vec![
                format!("p{}", p.partition),
                p.owner.clone().unwrap_or_else(|| badge(false, "no owner")),
                p.committed_seq.to_string(),
                p.last_seq.map_or_else(|| "?".into(), |l| l.to_string()),
                match p.behind() {
                    Some(false) => badge(true, "caught up"),
                    Some(true) => badge(false, "behind"),
                    None => "?".into(),
                },
                p.watermark.clone().unwrap_or_else(|| "none".into()),
            ]
        })
        .collect();
    table(o, "partitions", &["partition", "owner", "committed seq", "last seq", "state", "watermark"], &rows, "");
}

/// One billing period's row.
fn period_row(v: &View, p: &PeriodStatus) -> Vec<String> {
    let invoiced = p.invoiced.iter().map(|(c, t)| format!("{c} {t}")).collect::<Vec<_>>().join(", ");
    let docs = ["posted", "failed", "pending"]
        .iter()
        .filter_map(|s| p.documents.get(*s).map(|n| format!("{n} {s}")))
        .collect::<Vec<_>>()
        .join(", ");
    let failed = p.documents.get("failed").copied().unwrap_or(0) + p.documents.get("pending").copied().unwrap_or(0);
    let reconciled = match v.reconciliations.iter().find(|r| r.period == p.period) {
        Some(r) if r.variances == 0 => badge(true, &format!("zero variance ({})", r.at)),
        Some(r) => badge(false, &format!("{} rows with a variance ({})", r.variances, r.at)),
        None => "not run".into(),
    };
    vec![
        p.period.clone(),
        if p.status == crate::status::PeriodState::Closed {
            format!("closed ({})", p.closed_by.clone().unwrap_or_default())
        } else {
            "open".into()
        },
        p.events.to_string(),
        format!("{} {}", p.invoices, if invoiced.is_empty() { String::new() } else { format!("({invoiced})") }),
        if docs.is_empty() {
            "none".into()
        } else if failed > 0 {
            badge(false, &docs)
        } else {
            badge(true, &docs)
        },
        reconciled,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn view() -> View {
        View {
            now: "2026-11-23T10:00:00Z".into(),
            started_at: "2026-11-23T09:00:00Z".into(),
            events_received: 12,
            events_accepted: 10,
            events_duplicate: 1,
            rejected: BTreeMap::from([("invalid_json".to_string(), 1)]),
            late: BTreeMap::new(),
            redeliveries: 0,
            commits: 3,
            committed_seq: 12,
            lag: 0,
            open_windows: 4,
            meters: vec![],
            history: vec![
                Sample { at: 0, accepted_per_s: 5.0, received_per_s: 6.0, lag: 3 },
                Sample { at: 2, accepted_per_s: 10.0, received_per_s: 12.0, lag: 0 },
            ],
            billing: None,
            billing_error: Some("<script>alert(1)</script>".into()),
            reconciliations: vec![],
        }
    }

    #[test]
    fn a_billing_period_row_shows_its_close_invoices_documents_and_reconciliation() {
        let mut v = view();
        let mut p = PeriodStatus::open("2026-10");
        p.status = crate::status::PeriodState::Closed;
        p.closed_by = Some("watermark".into());
        p.events = 40;
        p.invoices = 2;
        p.invoiced = BTreeMap::from([("USD".to_string(), "12.500000000".to_string())]);
        p.documents = BTreeMap::from([("posted".to_string(), 3), ("failed".to_string(), 1)]);
        v.billing = Some(crate::status::Status {
            data_dir: "/data".into(),
            broker: crate::status::BrokerStatus {
                url: "nats://x".into(),
                stream_last_seq: None,
                dlq_messages: None,
                exception_queue: vec![meterflow_ingest::QueuedReason {
                    reason: "unknown_subject".into(),
                    messages: 2,
                    oldest_unix: None,
                    redrivable: true,
                }],
                placement: None,
                error: None,
            },
            committed_seq: 12,
            lag: None,
            summaries_version: None,
            catalog_revision: Some(3),
            events_accepted: 40,
            late_events: BTreeMap::new(),
            rejects: BTreeMap::new(),
            periods: vec![p, PeriodStatus::open("2026-11")],
            partitions: vec![crate::status::PartitionStatus {
                partition: 3,
                owner: None,
                committed_seq: 40,
                last_seq: Some(41),
                watermark: None,
            }],
        });
        v.reconciliations = vec![super::super::live::ReconcileResult {
            period: "2026-10".into(),
            variances: 0,
            at: "2026-11-02T00:00:00Z".into(),
        }];
        let page = render(&v, 5);
        assert!(
            page.contains(
                "<tr><td>p3</td><td><span class=\"bad\">no owner</span></td><td>40</td><td>41</td>\
                 <td><span class=\"bad\">behind</span></td><td>none</td></tr>"
            ),
            "a partition without an owner, behind: {page}"
        );
        assert!(
            page.contains(
                "<tr><td>2026-10</td><td>closed (watermark)</td><td>40</td><td>2 (USD 12.500000000)</td>\
                 <td><span class=\"bad\">3 posted, 1 failed</span></td>\
                 <td><span class=\"ok\">zero variance (2026-11-02T00:00:00Z)</span></td></tr>"
            ),
            "{page}"
        );
        assert!(
            page.contains("<tr><td>2026-11</td><td>open</td><td>0</td><td>0 </td><td>none</td><td>not run</td></tr>")
        );
    }

    #[test]
    fn the_page_is_self_contained_and_escapes_what_it_shows() {
        let page = render(&view(), 5);
        assert!(page.contains("<div class=\"card\" id=\"accepted\"><b>10</b>"), "{page}");
        assert!(page.contains("<td>invalid_json</td><td>1</td>"));
        assert!(page.contains("accepted events/s: now 10, max 10"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!page.contains("<script"));
        // Nothing is loaded from elsewhere.
        assert!(!page.contains("src=") && !page.contains("http://") && !page.contains("https://"));
    }
}
