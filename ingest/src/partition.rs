//! Partitions of the usage stream, for workers that each own some of them: the stream inserts a
//! partition token derived from the customer's subject token with the subject transform
//! [`TRANSFORM_SOURCE`] → [`transform_destination`] (`usage.<customer>.<type>` is stored as
//! `usage.<p>.<customer>.<type>`). nats-server computes the token as the FNV-1a 32-bit hash of
//! the customer token, modulo the partition count; [`partition_of`] is the same function, so a
//! worker knows without asking the server which partition a customer's usage lands in. Dedup,
//! windows, period totals and rating are per customer, so everything one decision needs is
//! inside one partition. Pure.

/// The subjects the transform applies to: a customer token, then anything.
pub const TRANSFORM_SOURCE: &str = "usage.*.>";

/// The destination of the partitioning transform for `partitions` partitions.
pub fn transform_destination(partitions: u32) -> String {
    format!("usage.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}.>")
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
    fn a_partition_count_of_zero_is_one_partition_and_the_transform_names_the_count() {
        assert_eq!(partition_of("acme", 0), 0);
        assert_eq!(transform_destination(32), "usage.{{partition(32,1)}}.{{wildcard(1)}}.>");
    }
}
