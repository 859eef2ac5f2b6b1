//! # meterflow-testkit: fixtures for the demo, the tests, the benches and the load tests
//!
//! * [`workload`]: a synthetic usage workload for a reference (the example's, or many synthetic
//!   customers) with an exact oracle computed independently of the pipeline, a publisher, and
//!   the comparison of committed summaries with the oracle;
//! * [`local_nats`]: a local nats-server with JetStream on a free port and a temporary store;
//! * [`local_s3`]: a local S3-compatible server (moto) with a bucket, for tables on object storage.
//!
//! No product crate depends on this one; the `meterflow demo` command uses it to start a broker
//! and publish a workload.

pub mod local_nats;
pub mod local_s3;
pub mod workload;
