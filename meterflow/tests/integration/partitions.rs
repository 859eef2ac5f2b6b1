//! Partitions of the usage stream: nats-server's `partition()` subject transform and
//! `meterflow_ingest::partition::partition_of` put every customer in the same partition.

use async_nats::jetstream::stream;
use meterflow_ingest::partition::{partition_of, transform_destination, TRANSFORM_SOURCE};

use crate::common::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_files_each_customers_usage_under_the_partition_meterflow_computes() {
    let env = TestEnv::start();
    let js = env.jetstream().await;
    const PARTITIONS: u32 = 32;
    let parts = js
        .create_stream(stream::Config {
            name: "PARTITIONED".into(),
            subjects: vec!["usage.>".into()],
            subject_transform: Some(stream::SubjectTransform {
                source: TRANSFORM_SOURCE.into(),
                destination: transform_destination(PARTITIONS),
            }),
            ..Default::default()
        })
        .await
        .expect("the server takes the partitioning transform");
    let customers: Vec<String> = (0..300)
        .map(|i| format!("cust-{i:05}"))
        .chain(["acme", "globex", "ünïcode-co", "a_b-c~d"].map(String::from))
        .collect();
    for c in &customers {
        js.publish(format!("usage.{c}.api_calls"), "{}".into()).await.unwrap().await.unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in customers.iter().enumerate() {
        let stored = parts.get_raw_message(i as u64 + 1).await.unwrap();
        let p = partition_of(c, PARTITIONS);
        assert_eq!(stored.subject.as_str(), format!("usage.{p}.{c}.api_calls"), "customer {c}");
        seen.insert(p);
    }
    assert_eq!(seen.len(), PARTITIONS as usize, "300 customers cover every partition");
}
