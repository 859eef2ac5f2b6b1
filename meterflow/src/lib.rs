//! # meterflow: the binary's building blocks
//!
//! The `meterflow` command (see `main.rs`) is a thin CLI over these modules:
//!
//! * [`config`]: the config file, `METERFLOW_<SECTION>__<KEY>` overrides, reference data;
//! * [`pipeline`]: the wiring of ingest → aggregator → rater → sink and the commit protocol;
//! * [`workload`]: the synthetic workload (with an exact oracle) used by the demo and the tests;
//! * [`local_nats`]: starting a local nats-server with JetStream;
//! * [`rerate`]: `meterflow rerate`, price corrections as adjustment rows;
//! * [`ops`]: Prometheus metrics and the operations page of `meterflow run`;
//! * [`trace`]: `meterflow trace`, one event's lineage to its invoice lines and ERP postings;
//! * [`demo`]: `meterflow demo`.

pub mod config;
pub mod demo;
pub mod finance;
pub mod local_nats;
pub mod ops;
pub mod pipeline;
pub mod rerate;
pub mod status;
pub mod trace;
pub mod workload;
