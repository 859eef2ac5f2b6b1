//! `meterflow-instructions`: the core stages once over the workload, for counting instructions
//! per event under callgrind (repeatable on a shared, noisy machine, unlike seconds).
//!
//! ```sh
//! bash scripts/instructions.sh            # both batch sizes, prints instructions per event
//! ```
//!
//! The script runs `valgrind --tool=callgrind --toggle-collect='meterflow_benches::core::run*'
//! --toggle-collect='*shard_loop*'`: only the stages (the pipeline thread inside
//! `meterflow_benches::core::run` and the dedup thread) are counted, not the workload's
//! generation or the set-up. It divides the total by the event count this binary prints.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use meterflow_benches::core::{config, messages, run};
use meterflow_pipeline::ops::Ops;
use meterflow_pipeline::Stages;

/// The allocator the `meterflow` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let batch_size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let events: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let config = config();
    let ops = Ops::new(&config);
    let (msgs, total) = messages(&config, events, batch_size);
    let mut stages = Stages::fresh(&config).expect("stages");
    let rows = run(&mut stages, &ops, &msgs, chrono::Utc::now().timestamp());
    println!("events={total} messages={} batch_size={batch_size} rows={rows}", msgs.len());
}
