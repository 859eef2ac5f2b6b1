//! # meterflow-faults: named fault points on the commit path
//!
//! Each step of the pipeline's commit path calls [`hit`] with one of the [`POINTS`]. In a normal
//! build (`enabled` feature off) `hit` is an empty inline function and [`ENABLED`] is `false`:
//! the points cost nothing. The test build (`bash scripts/test.sh` turns the feature on) arms
//! them from the `METERFLOW_FAULTS` environment variable:
//!
//! ```text
//! METERFLOW_FAULTS=<point>:<action>[,<point>:<action>...]
//!   action  kill@N       SIGKILL the process at the N-th hit of the point (N >= 1)
//!           sleep=MS     sleep MS milliseconds at every hit (a slow step)
//!           skip@N       make the N-th hit of the point report `true` from [`fires`]
//!                        (`drop_delivery`: a pulled message lost on the way)
//! ```
//!
//! A kill prints `meterflow fault point <point>: hit <N>, killing the process` on stderr first,
//! so a test can tell which step the process died at.

/// Whether fault points are compiled in.
pub const ENABLED: bool = cfg!(feature = "enabled");

/// Every fault point, in the order the commit path passes them, with what has happened when it
/// fires.
pub const POINTS: &[(&str, &str)] = &[
    ("after_decode", "a fetched batch is decoded; nothing is deduplicated, committed or acknowledged"),
    ("after_dedup", "the dedup index holds the batch's ids; nothing is committed"),
    ("after_dlq_publish", "rejects are stored in the DLQ stream; no table is committed"),
    ("after_rejections_commit", "the rejections table is committed; usage_summaries is not"),
    ("during_parquet_write", "a usage_summaries Parquet file is partly written (its first part is on disk)"),
    ("before_delta_commit", "the Parquet files are complete; the Delta log entry is not written"),
    ("after_delta_commit", "usage_summaries is committed; the broker is not acknowledged"),
    ("after_ack", "the broker is acknowledged; no state snapshot is taken"),
    ("during_snapshot", "the state snapshot is in its temporary file (fsynced), not renamed"),
    ("after_snapshot", "the state snapshot is saved"),
    ("drop_delivery", "a pulled message is lost between the server and the pipeline (skip@N only)"),
];

/// Errors in `METERFLOW_FAULTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(pub String);

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "METERFLOW_FAULTS: {}", self.0)
    }
}

impl std::error::Error for SpecError {}

/// What to do at a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// SIGKILL the process at the n-th hit.
    KillAt(u64),
    /// Sleep this many milliseconds at every hit.
    Sleep(u64),
    /// [`fires`] is true at the n-th hit.
    SkipAt(u64),
}

/// Parses a `METERFLOW_FAULTS` value into (point index, action) pairs.
pub fn parse(spec: &str) -> Result<Vec<(usize, Action)>, SpecError> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, action) =
            part.split_once(':').ok_or_else(|| SpecError(format!("{part:?}: expected <point>:<action>")))?;
        let point = POINTS.iter().position(|(p, _)| *p == name).ok_or_else(|| {
            let names: Vec<&str> = POINTS.iter().map(|(p, _)| *p).collect();
            SpecError(format!("unknown fault point {name:?}; known points: {}", names.join(", ")))
        })?;
        let number =
            |s: &str| s.parse::<u64>().map_err(|_| SpecError(format!("{part:?}: {s:?} is not a whole number")));
        let action = if let Some(n) = action.strip_prefix("kill@") {
            match number(n)? {
                0 => return Err(SpecError(format!("{part:?}: hits count from 1"))),
                n => Action::KillAt(n),
            }
        } else if action == "kill" {
            Action::KillAt(1)
        } else if let Some(n) = action.strip_prefix("skip@") {
            match number(n)? {
                0 => return Err(SpecError(format!("{part:?}: hits count from 1"))),
                n => Action::SkipAt(n),
            }
        } else if let Some(ms) = action.strip_prefix("sleep=") {
            Action::Sleep(number(ms)?)
        } else {
            return Err(SpecError(format!("{part:?}: unknown action {action:?} (use kill@N, skip@N or sleep=MS)")));
        };
        out.push((point, action));
    }
    Ok(out)
}

#[cfg(feature = "enabled")]
mod armed {
    use super::{parse, Action, SpecError, POINTS};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static SPEC: OnceLock<Vec<(usize, Action)>> = OnceLock::new();
    static HITS: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];

    pub fn arm() -> Result<usize, SpecError> {
        let spec = match std::env::var("METERFLOW_FAULTS") {
            Ok(s) => parse(&s)?,
            Err(_) => Vec::new(),
        };
        let n = spec.len();
        SPEC.get_or_init(|| spec);
        Ok(n)
    }

    pub fn hit(point: &'static str) {
        fires(point);
    }

    pub fn fires(point: &'static str) -> bool {
        let mut fired = false;
        let Some(index) = POINTS.iter().position(|(p, _)| *p == point) else { return false };
        let hits = HITS[index].fetch_add(1, Ordering::SeqCst) + 1;
        let spec = SPEC
            .get_or_init(|| std::env::var("METERFLOW_FAULTS").ok().and_then(|s| parse(&s).ok()).unwrap_or_default());
        for (p, action) in spec {
            if *p != index {
                continue;
            }
            match *action {
                Action::Sleep(ms) => std::thread::sleep(std::time::Duration::from_millis(ms)),
                Action::KillAt(n) if n == hits => kill(point, hits),
                Action::SkipAt(n) if n == hits => {
                    eprintln!("meterflow fault point {point}: hit {hits}, firing");
                    fired = true;
                }
                Action::KillAt(_) | Action::SkipAt(_) => {}
            }
        }
        fired
    }

    fn kill(point: &str, hits: u64) -> ! {
        eprintln!("meterflow fault point {point}: hit {hits}, killing the process");
        let pid = std::process::id().to_string();
        let killed = std::process::Command::new("kill").args(["-KILL", &pid]).status();
        // SIGKILL cannot be caught; reaching this line means `kill` could not be run.
        eprintln!("meterflow fault point {point}: `kill -KILL {pid}` failed ({killed:?}); aborting");
        std::process::abort()
    }
}

/// Reads `METERFLOW_FAULTS` and reports how many faults are armed. With fault points compiled
/// out, a set variable is an error (a torture run must not silently test nothing).
pub fn arm() -> Result<usize, SpecError> {
    #[cfg(feature = "enabled")]
    {
        armed::arm()
    }
    #[cfg(not(feature = "enabled"))]
    {
        match std::env::var("METERFLOW_FAULTS") {
            Ok(s) if !s.trim().is_empty() => Err(SpecError(
                "fault points are not compiled into this build (build with --features meterflow/fault-injection)"
                    .into(),
            )),
            _ => Ok(0),
        }
    }
}

/// Passes the named fault point and reports whether a `skip@N` action fires at this hit
/// (always `false` when fault points are compiled out).
#[inline(always)]
pub fn fires(point: &'static str) -> bool {
    #[cfg(feature = "enabled")]
    {
        armed::fires(point)
    }
    #[cfg(not(feature = "enabled"))]
    {
        let _ = point;
        false
    }
}

/// Passes the named fault point (one of [`POINTS`]).
#[inline(always)]
pub fn hit(point: &'static str) {
    #[cfg(feature = "enabled")]
    armed::hit(point);
    #[cfg(not(feature = "enabled"))]
    let _ = point;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_known_points_and_valid_actions() {
        assert_eq!(
            parse("after_decode:kill@3, during_snapshot:sleep=20").unwrap(),
            vec![(0, Action::KillAt(3)), (8, Action::Sleep(20))]
        );
        assert_eq!(parse("after_ack:kill").unwrap(), vec![(7, Action::KillAt(1))]);
        assert!(parse("").unwrap().is_empty());
        for bad in ["nowhere:kill", "after_ack", "after_ack:kill@0", "after_ack:kill@x", "after_ack:explode"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("METERFLOW_FAULTS: "), "{e}");
        }
        assert!(parse("nowhere:kill").unwrap_err().0.contains("known points: after_decode"));
    }

    #[test]
    fn skip_actions_parse() {
        assert_eq!(parse("drop_delivery:skip@7").unwrap(), vec![(10, Action::SkipAt(7))]);
    }

    #[test]
    fn there_are_fewer_points_than_hit_counters() {
        assert!(POINTS.len() <= 16);
    }
}
