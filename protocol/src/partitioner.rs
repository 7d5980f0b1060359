//! Partitioning: all of a tenant's events go to one partition (in order); records without
//! a tenant go by key; records with neither are spread round-robin by the producer.
//!
//! The hash is FNV-1a 64 over the tenant (or key) bytes, reduced modulo the partition
//! count. Every client must use the same function, so it is part of the protocol
//! (docs/PROTOCOL.md, "Partitioning").

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// The partition for a record, or `None` when it has neither tenant nor key (the
/// producer then chooses round-robin).
pub fn partition_for(tenant: Option<&[u8]>, key: Option<&[u8]>, partitions: u32) -> Option<u32> {
    let basis = tenant.or(key)?;
    Some((fnv1a64(basis) % u64::from(partitions.max(1))) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // Reference values of FNV-1a 64.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn tenant_wins_over_key() {
        let p = partition_for(Some(b"acme"), Some(b"k"), 12);
        assert_eq!(p, partition_for(Some(b"acme"), Some(b"other"), 12));
        assert_eq!(partition_for(None, None, 12), None);
    }
}
