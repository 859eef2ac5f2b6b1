//! `meterflow dlq`: the DLQ as an exception queue. `list` counts entries by reason (with the
//! oldest, and the usage subjects no customer owns), `show` prints one entry with its original
//! bytes, `replay` redrives entries into the usage stream after the catalog has been fixed.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use meterflow_ingest::{Broker, DlqEntry, Selection};
use meterflow_pipeline::config::Config;
use std::collections::BTreeMap;
use std::fmt::Write;

/// `meterflow dlq list`: entries by reason: count, oldest, and (for the reasons a catalog fix
/// cures) the usage subjects concerned with their event counts.
pub async fn list(config: &Config) -> Result<String> {
    let broker = Broker::connect(config.nats.clone()).await?;
    let entries = broker.dlq_entries().await?;
    Ok(render_list(&entries, Utc::now()))
}

fn render_list(entries: &[DlqEntry], now: DateTime<Utc>) -> String {
    let mut out = String::new();
    if entries.is_empty() {
        out.push_str("the DLQ is empty\n");
        return out;
    }
    let mut by_reason: BTreeMap<&str, Vec<&DlqEntry>> = BTreeMap::new();
    for e in entries {
        by_reason.entry(e.reason.as_str()).or_default().push(e);
    }
    for (reason, list) in &by_reason {
        let oldest = list.iter().map(|e| e.queued).min().unwrap_or(now);
        let kind = if list.first().is_some_and(|e| e.is_business()) { "redrivable" } else { "technical" };
        out.push_str(&format!(
            "{reason:<24} {:>7} events  oldest {} ({} ago)  {kind}\n",
            list.len(),
            oldest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            age(now - oldest)
        ));
        if list.first().is_some_and(|e| e.is_business()) {
            let mut subjects: BTreeMap<String, usize> = BTreeMap::new();
            for e in list {
                *subjects.entry(e.usage_subject().unwrap_or_else(|| "(none)".into())).or_default() += 1;
            }
            let mut subjects: Vec<_> = subjects.into_iter().collect();
            subjects.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            for (subject, n) in subjects.iter().take(10) {
                out.push_str(&format!("    subject {subject}: {n} events\n"));
            }
            if subjects.len() > 10 {
                out.push_str(&format!("    ... and {} more subjects\n", subjects.len() - 10));
            }
        }
    }
    out
}

fn age(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        s if s < 120 => format!("{s} s"),
        s if s < 7_200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3_600),
        s => format!("{} days", s / 86_400),
    }
}

/// `meterflow dlq show`: one entry, its headers and its original bytes.
pub async fn show(config: &Config, dlq_seq: u64) -> Result<String> {
    let broker = Broker::connect(config.nats.clone()).await?;
    let e = broker.dlq_entry(dlq_seq).await?;
    let mut out = String::new();
    writeln!(out, "DLQ sequence   {}", e.dlq_seq)?;
    writeln!(out, "queued         {}", e.queued.to_rfc3339())?;
    writeln!(out, "reason         {}{}", e.reason, if e.is_business() { " (redrivable)" } else { "" })?;
    writeln!(out, "detail         {}", e.detail)?;
    writeln!(
        out,
        "from           {} sequence {}, event {}",
        e.stream,
        e.stream_seq,
        e.event_index.map_or("(whole message)".into(), |i| i.to_string())
    )?;
    writeln!(out, "subject        {}", e.subject)?;
    if let Some(t) = e.arrival_unix.and_then(|t| DateTime::from_timestamp(t, 0)) {
        writeln!(out, "arrived        {}", t.to_rfc3339())?;
    }
    writeln!(out, "original bytes ({}):", e.original.len())?;
    match std::str::from_utf8(&e.original) {
        Ok(text) => writeln!(out, "{text}")?,
        Err(_) => writeln!(out, "{:?}", e.original)?,
    }
    Ok(out)
}

/// What `meterflow dlq replay` was asked to do.
#[derive(Debug)]
pub struct ReplayOptions {
    /// Which entries.
    pub selection: Selection,
    /// List them; redrive nothing.
    pub dry_run: bool,
}

/// `meterflow dlq replay`: redrives the selected entries into the usage stream, each as arrived
/// at its first arrival; the pipeline decides them under the catalog in force now.
pub async fn replay(config: &Config, opts: &ReplayOptions) -> Result<String> {
    let broker = Broker::connect(config.nats.clone()).await?;
    let entries = broker.dlq_entries().await?;
    let chosen: Vec<&DlqEntry> = entries.iter().filter(|e| opts.selection.takes(e)).collect();
    let mut out = String::new();
    if chosen.is_empty() {
        writeln!(out, "nothing to redrive: no DLQ entry matches")?;
        let technical = entries.iter().filter(|e| !e.is_business()).count();
        if technical > 0 && !opts.selection.technical {
            writeln!(out, "({technical} technical rejects are not redriven without --technical)")?;
        }
        return Ok(out);
    }
    if !opts.dry_run {
        broker.ensure_redrive_subject().await.context("the usage stream needs the redrive subject")?;
    }
    let mut redriven = 0;
    for e in &chosen {
        let arrival = match e.arrival_unix {
            Some(t) => t,
            None => broker.arrival_of(e.stream_seq).await?.unwrap_or_else(|| e.queued.timestamp()),
        };
        let subject = e.usage_subject().unwrap_or_else(|| "(none)".into());
        if opts.dry_run {
            writeln!(
                out,
                "would redrive DLQ {}: {} subject {subject} (stream sequence {})",
                e.dlq_seq, e.reason, e.stream_seq
            )?;
            continue;
        }
        let seq = broker.redrive(e, arrival).await?;
        redriven += 1;
        writeln!(out, "redrove DLQ {}: {} subject {subject} -> stream sequence {seq}", e.dlq_seq, e.reason)?;
    }
    if opts.dry_run {
        writeln!(out, "dry run: {} entries would be redriven; nothing was", chosen.len())?;
    } else {
        writeln!(
            out,
            "{redriven} entries redriven; the pipeline judges them as of their first arrival under the catalog in \
             force, and puts those that still fail back with their reason"
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn the_list_counts_entries_by_reason_with_the_oldest_and_the_subjects_no_customer_owns() {
        let at = |s: i64| DateTime::from_timestamp(1_795_000_000 + s, 0).unwrap_or_default();
        let entry = |seq: u64, reason: &str, body: &str, queued: i64| {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Meterflow-Reason", reason);
            DlqEntry::from_message(seq, at(queued), Some(&h), Bytes::from(body.to_string()))
        };
        let entries = [
            entry(1, "unknown_subject", r#"{"subject":"newco"}"#, 0),
            entry(2, "unknown_subject", r#"{"subject":"newco"}"#, 60),
            entry(3, "unknown_subject", r#"{"subject":"ghost"}"#, 90),
            entry(4, "invalid_json", "{", 30),
        ];
        let text = render_list(&entries, at(3_600));
        assert_eq!(
            text,
            "invalid_json                   1 events  oldest 2026-11-18T11:07:10Z (59 min ago)  technical\n\
             unknown_subject                3 events  oldest 2026-11-18T11:06:40Z (60 min ago)  redrivable\n    \
             subject newco: 2 events\n    subject ghost: 1 events\n"
        );
    }
}
