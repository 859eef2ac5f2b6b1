//! Partitions of the usage stream, for workers that each own some of them: the stream puts a
//! partition token in front of every subject, derived from the customer's subject token, with
//! the subject transform [`TRANSFORM_SOURCE`] → [`transform_destination`]:
//! `usage.<customer>.<type>` is stored as `<p>.usage.<customer>.<type>`, and a redriven DLQ
//! entry, published on `<redrive prefix>.<customer>.<original subject>`, as
//! `<p>.<redrive prefix>.<customer>.<original subject>`. A partition's consumer then reads one
//! filter subject, `<p>.>` ([`filter`]): nats-server serves a consumer with two filter subjects
//! several times slower than one with a single filter (BENCHMARKS.md).
//!
//! nats-server computes the token as the FNV-1a 32-bit hash of the customer token, modulo the
//! partition count; [`partition_of`] is the same function, so a worker knows without asking the
//! server which partition a customer's usage lands in. Dedup, windows, period totals and rating
//! are per customer, so everything one decision needs is inside one partition. Pure.

/// The usage subjects of a partitioned stream: a customer token, then anything.
pub const USAGE_SUBJECTS: &str = "usage.*.>";

/// The subjects the transform applies to: every subject of a partitioned stream (usage and
/// redrives), whose second token is the customer's.
pub const TRANSFORM_SOURCE: &str = "*.*.>";

/// The most partitions a stream may have.
pub const MAX_PARTITIONS: u32 = 1024;

/// A customer id as one NATS subject token: letters, digits, `-` and `_` kept, anything else
/// (dots, spaces, wildcards) as `_`; never empty. The HTTP API publishes a customer's usage on
/// `usage.<token(id)>.<type>`.
pub fn token(s: &str) -> String {
    let t: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if t.is_empty() {
        "_".into()
    } else {
        t
    }
}

/// The customer token of a usage subject as published (`usage.<customer>.<type>...`).
pub fn customer_token(subject: &str) -> Option<&str> {
    let mut tokens = subject.split('.');
    tokens.next()?;
    let t = tokens.next()?;
    tokens.next().map(|_| t)
}

/// Whether usage of `customer_id`, arriving on `subject` (as published), is in the partition
/// the customer's own usage lands in: everything one decision needs (dedup, windows, period
/// totals) must sit in one partition.
pub fn in_customer_partition(subject: &str, customer_id: &str, partitions: u32) -> bool {
    customer_token(subject)
        .is_some_and(|t| partition_of(t, partitions) == partition_of(&token(customer_id), partitions))
}

/// The one filter subject of partition `p`'s consumer: everything the stream filed under it.
pub fn filter(p: u32) -> String {
    format!("{p}.>")
}

/// The token partition `p`'s subjects start with, dot included (`"<p>."`): computed once per
/// pull, not per message.
pub fn head(p: u32) -> String {
    format!("{p}.")
}

/// A subject as stored in the partition whose [`head`] is `head`, back as it was published:
/// `<p>.usage.rest` is `usage.rest`; a redrive, `<p>.<redrive prefix>.<customer>.<original>`,
/// is `<redrive prefix>.<original>` (the form [`crate::dlq::as_arrived`] reads on any stream);
/// any other as it is.
pub fn as_published(subject: &str, head: &str, redrive_prefix: &str) -> String {
    let Some(stored) = subject.strip_prefix(head) else {
        return subject.to_string();
    };
    let redriven = stored
        .strip_prefix(redrive_prefix)
        .and_then(|s| s.strip_prefix('.'))
        .and_then(|s| s.split_once('.'))
        .map(|(_customer, original)| format!("{redrive_prefix}.{original}"));
    redriven.unwrap_or_else(|| stored.to_string())
}

/// The subject a DLQ entry first published on `subject` is redriven on: the redrive prefix,
/// then (on a partitioned stream) the customer token the stream partitions it by, then the
/// subject. `None` on a partitioned stream when the subject has no customer token (usage from
/// before the stream was partitioned): no partition would read it.
pub fn redrive_subject(prefix: &str, subject: &str, partitions: u32) -> Option<String> {
    if partitions == 0 {
        return Some(format!("{prefix}.{subject}"));
    }
    customer_token(subject).map(|t| format!("{prefix}.{t}.{subject}"))
}

/// The destination of the partitioning transform for `partitions` partitions.
pub fn transform_destination(partitions: u32) -> String {
    format!("{{{{partition({partitions},2)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.>")
}

/// FNV-1a, 32 bits (the hash nats-server's `partition()` transform uses).
pub fn fnv1a_32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// The partition (0..`partitions`) the stream files `customer_token`'s usage under; a count of
/// 0 is taken as 1.
pub fn partition_of(customer_token: &str, partitions: u32) -> u32 {
    fnv1a_32(customer_token.as_bytes()) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fnv_1a_32_by_its_published_test_vectors() {
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn a_stored_subject_reads_as_published_and_a_redrive_goes_to_the_customers_partition() {
        assert_eq!(as_published("3.usage.acme.api", &head(3), "redrive"), "usage.acme.api");
        assert_eq!(as_published("3.redrive.acme.usage.acme.api", &head(3), "redrive"), "redrive.usage.acme.api");
        assert_eq!(as_published("usage.acme.api", &head(3), "redrive"), "usage.acme.api", "not stored in 3");
        assert_eq!(as_published("31.usage.acme.api", &head(3), "redrive"), "31.usage.acme.api", "not stored in 3");
        assert_eq!(redrive_subject("redrive", "usage.acme.api", 8).as_deref(), Some("redrive.acme.usage.acme.api"));
        assert_eq!(redrive_subject("redrive", "usage.acme.api", 0).as_deref(), Some("redrive.usage.acme.api"));
        assert_eq!(redrive_subject("redrive", "usage.api", 8), None, "no customer token to partition by");
        assert_eq!(filter(3), "3.>");
    }

    #[test]
    fn usage_is_in_its_customers_partition_only_on_the_customers_own_token() {
        assert!(in_customer_partition("usage.acme.api", "acme", 8));
        assert!(in_customer_partition("usage.a_b.api", "a.b", 8));
        let other = (0..100).map(|i| format!("c{i}")).find(|c| partition_of(c, 8) != partition_of("acme", 8));
        let other = other.unwrap_or_default();
        assert!(!in_customer_partition(&format!("usage.{other}.api"), "acme", 8));
        assert!(!in_customer_partition("usage.api", "acme", 8), "no customer token");
        assert_eq!(customer_token("usage.acme"), None);
        assert_eq!(token("x>y z"), "x_y_z");
        assert_eq!(token(""), "_");
    }

    #[test]
    fn a_partition_count_of_zero_is_one_partition_and_the_transform_names_the_count() {
        assert_eq!(partition_of("acme", 0), 0);
        assert_eq!(transform_destination(32), "{{partition(32,2)}}.{{wildcard(1)}}.{{wildcard(2)}}.>");
    }
}
