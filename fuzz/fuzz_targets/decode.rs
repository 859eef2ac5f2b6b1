//! Fuzzes the message decoder: any bytes must decode without a panic and keep every promise of
//! `check_decode_invariants` (one outcome per event, spans and originals quoting the message).
//!
//! Run: `cargo +nightly fuzz run decode -- -max_total_time=60` (from the repository root;
//! `cargo install cargo-fuzz` once). Seeds: `fuzz/corpus/decode/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Err(broken) = meterflow_schemas::check_decode_invariants(bytes) {
        panic!("{broken} for {:?}", String::from_utf8_lossy(bytes));
    }
});
