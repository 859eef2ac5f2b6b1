//! # meterflow-faults: named fault points on the commit path
//!
//! Each step of the pipeline's commit path calls [`hit`] with one of the [`Point`]s. In a normal
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
//!           fail@N       make the N-th hit report `true` from [`fires`]: the step returns an
//!                        error although its effect happened (`after_log_entry`: the Delta log
//!                        entry is on disk, the commit call fails)
//! ```
//!
//! A kill prints `meterflow fault point <point>: hit <N>, killing the process` on stderr first,
//! so a test can tell which step the process died at. Points are a typed enum, so a misspelt
//! point is a compile error, not a point that silently never fires.

/// Whether fault points are compiled in.
pub const ENABLED: bool = cfg!(feature = "enabled");

/// A fault point, in the order the commit path passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Point {
    /// A fetched batch is decoded; nothing is deduplicated, committed or acknowledged.
    AfterDecode,
    /// The dedup index holds the batch's ids; nothing is committed.
    AfterDedup,
    /// Rejects are stored in the DLQ stream; no table is committed.
    AfterDlqPublish,
    /// The rejections table is committed; usage_summaries is not.
    AfterRejectionsCommit,
    /// A usage_summaries Parquet file is partly written.
    DuringParquetWrite,
    /// The Parquet files are complete; the Delta log entry is not written.
    BeforeDeltaCommit,
    /// The Delta log entry of a commit is on disk; the commit call has not returned.
    AfterLogEntry,
    /// A checkpoint Parquet file of the Delta log is being written (after the commit).
    CheckpointWrite,
    /// usage_summaries is committed; the broker is not acknowledged.
    AfterDeltaCommit,
    /// The broker is acknowledged; no state snapshot is taken.
    AfterAck,
    /// The state snapshot is in its temporary file (fsynced), not renamed.
    DuringSnapshot,
    /// The state snapshot is saved.
    AfterSnapshot,
    /// A pulled message is lost between the server and the pipeline (skip@N only).
    DropDelivery,
    /// Re-positioning the consumer after a gap fails (fail@N only).
    ConsumerReposition,
}

impl Point {
    /// Every point, in the order the commit path passes them.
    pub const ALL: [Point; 14] = [
        Point::AfterDecode,
        Point::AfterDedup,
        Point::AfterDlqPublish,
        Point::AfterRejectionsCommit,
        Point::DuringParquetWrite,
        Point::BeforeDeltaCommit,
        Point::AfterLogEntry,
        Point::CheckpointWrite,
        Point::AfterDeltaCommit,
        Point::AfterAck,
        Point::DuringSnapshot,
        Point::AfterSnapshot,
        Point::DropDelivery,
        Point::ConsumerReposition,
    ];

    /// The name used in `METERFLOW_FAULTS`.
    pub const fn name(self) -> &'static str {
        match self {
            Point::AfterDecode => "after_decode",
            Point::AfterDedup => "after_dedup",
            Point::AfterDlqPublish => "after_dlq_publish",
            Point::AfterRejectionsCommit => "after_rejections_commit",
            Point::DuringParquetWrite => "during_parquet_write",
            Point::BeforeDeltaCommit => "before_delta_commit",
            Point::AfterLogEntry => "after_log_entry",
            Point::CheckpointWrite => "checkpoint_write",
            Point::AfterDeltaCommit => "after_delta_commit",
            Point::AfterAck => "after_ack",
            Point::DuringSnapshot => "during_snapshot",
            Point::AfterSnapshot => "after_snapshot",
            Point::DropDelivery => "drop_delivery",
            Point::ConsumerReposition => "consumer_reposition",
        }
    }

    /// True for the points of the commit path, where a SIGKILL makes sense (not the delivery
    /// points, which only drop a message or fail a re-position).
    pub const fn is_on_commit_path(self) -> bool {
        !matches!(self, Point::DropDelivery | Point::ConsumerReposition)
    }

    /// The point named `name`.
    pub fn from_name(name: &str) -> Option<Point> {
        Point::ALL.iter().copied().find(|p| p.name() == name)
    }

    #[cfg(any(feature = "enabled", test))]
    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Point {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

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
    /// [`fires`] is true at the n-th hit (a message dropped on the way).
    SkipAt(u64),
    /// [`fires`] is true at the n-th hit (a step that fails after its effect).
    FailAt(u64),
}

/// Parses a `METERFLOW_FAULTS` value into (point, action) pairs.
pub fn parse(spec: &str) -> Result<Vec<(Point, Action)>, SpecError> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, action) =
            part.split_once(':').ok_or_else(|| SpecError(format!("{part:?}: expected <point>:<action>")))?;
        let point = Point::from_name(name).ok_or_else(|| {
            let names: Vec<&str> = Point::ALL.iter().map(|p| p.name()).collect();
            SpecError(format!("unknown fault point {name:?}; known points: {}", names.join(", ")))
        })?;
        let number =
            |s: &str| s.parse::<u64>().map_err(|_| SpecError(format!("{part:?}: {s:?} is not a whole number")));
        let nth = |s: &str| match number(s)? {
            0 => Err(SpecError(format!("{part:?}: hits count from 1"))),
            n => Ok(n),
        };
        let action = if let Some(n) = action.strip_prefix("kill@") {
            Action::KillAt(nth(n)?)
        } else if action == "kill" {
            Action::KillAt(1)
        } else if let Some(n) = action.strip_prefix("skip@") {
            Action::SkipAt(nth(n)?)
        } else if let Some(n) = action.strip_prefix("fail@") {
            Action::FailAt(nth(n)?)
        } else if let Some(ms) = action.strip_prefix("sleep=") {
            Action::Sleep(number(ms)?)
        } else {
            return Err(SpecError(format!(
                "{part:?}: unknown action {action:?} (use kill@N, skip@N, fail@N or sleep=MS)"
            )));
        };
        out.push((point, action));
    }
    Ok(out)
}

#[cfg(feature = "enabled")]
mod armed {
    use super::{parse, Action, Point, SpecError};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static SPEC: OnceLock<Vec<(Point, Action)>> = OnceLock::new();
    static HITS: [AtomicU64; Point::ALL.len()] = [const { AtomicU64::new(0) }; Point::ALL.len()];

    pub fn arm() -> Result<usize, SpecError> {
        let spec = match std::env::var("METERFLOW_FAULTS") {
            Ok(s) => parse(&s)?,
            Err(_) => Vec::new(),
        };
        let n = spec.len();
        SPEC.get_or_init(|| spec);
        Ok(n)
    }

    pub fn fires(point: Point) -> bool {
        let mut fired = false;
        let hits = HITS[point.index()].fetch_add(1, Ordering::SeqCst) + 1;
        let spec = SPEC
            .get_or_init(|| std::env::var("METERFLOW_FAULTS").ok().and_then(|s| parse(&s).ok()).unwrap_or_default());
        for (p, action) in spec {
            if *p != point {
                continue;
            }
            match *action {
                Action::Sleep(ms) => std::thread::sleep(std::time::Duration::from_millis(ms)),
                Action::KillAt(n) if n == hits => kill(point, hits),
                Action::SkipAt(n) | Action::FailAt(n) if n == hits => {
                    eprintln!("meterflow fault point {point}: hit {hits}, firing");
                    fired = true;
                }
                Action::KillAt(_) | Action::SkipAt(_) | Action::FailAt(_) => {}
            }
        }
        fired
    }

    fn kill(point: Point, hits: u64) -> ! {
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

/// Passes the fault point and reports whether a `skip@N` or `fail@N` action fires at this hit
/// (always `false` when fault points are compiled out).
#[inline(always)]
pub fn fires(point: Point) -> bool {
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

/// Passes the fault point (kills and sleeps act here).
#[inline(always)]
pub fn hit(point: Point) {
    #[cfg(feature = "enabled")]
    armed::fires(point);
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
            vec![(Point::AfterDecode, Action::KillAt(3)), (Point::DuringSnapshot, Action::Sleep(20))]
        );
        assert_eq!(parse("after_ack:kill").unwrap(), vec![(Point::AfterAck, Action::KillAt(1))]);
        assert_eq!(parse("after_log_entry:fail@2").unwrap(), vec![(Point::AfterLogEntry, Action::FailAt(2))]);
        assert!(parse("").unwrap().is_empty());
        for bad in ["nowhere:kill", "after_ack", "after_ack:kill@0", "after_ack:kill@x", "after_ack:explode"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("METERFLOW_FAULTS: "), "{e}");
        }
        assert!(parse("nowhere:kill").unwrap_err().0.contains("known points: after_decode"));
    }

    #[test]
    fn skip_actions_parse() {
        assert_eq!(parse("drop_delivery:skip@7").unwrap(), vec![(Point::DropDelivery, Action::SkipAt(7))]);
    }

    #[test]
    fn every_point_has_a_distinct_name_that_parses_back_and_an_index_in_order() {
        for (i, p) in Point::ALL.iter().enumerate() {
            assert_eq!(Point::from_name(p.name()), Some(*p));
            assert_eq!(p.index(), i);
        }
    }
}
