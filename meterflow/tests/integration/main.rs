//! The end-to-end tests, in one binary (each test binary links DataFusion and deltalake again):
//! a real nats-server, the real `meterflow` binary, real Delta tables.
//!
//! * [`pipeline_e2e`]: exact totals, restarts, late data, other engines reading the tables;
//! * [`bad_input`]: every kind of bad input rejected with a reason, nothing else lost;
//! * [`live_catalog`]: customers onboarded while the pipeline runs, replays across catalog changes;
//! * [`billing_e2e`]: golden invoices, posting, reconcile, compaction and vacuum;
//! * [`broker_and_disk_faults`]: broker restarts, disk faults, two writers, lost consumers;
//! * [`cluster`]: a three-server JetStream cluster whose stream leader is killed under load;
//! * [`http_api`]: the HTTP API (OpenMeter SDK, schemathesis) and the Postgres endpoint (psql, psycopg);
//! * [`nats_security`]: TLS, credentials and least-privilege permissions;
//! * [`object_storage`]: tables and snapshots on an S3-compatible server (moto), kill -9, billing;
//! * [`ops_page`]: the operations page and `/metrics` under a real workload;
//! * [`partitions`]: the stream's partitioning transform, computed alike by the server and meterflow;
//! * [`torture`]: SIGKILL at every fault point of the commit path, under load.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly by design

mod common;

mod bad_input;
mod billing_e2e;
mod broker_and_disk_faults;
mod cluster;
mod http_api;
mod live_catalog;
mod nats_security;
mod object_storage;
mod ops_page;
mod partitions;
mod pipeline_e2e;
mod torture;
