//! A hash for names every node must derive alike from the same device.
//!
//! The standard library's hasher is seeded per process and may change between releases: two nodes
//! (or two builds) would name one device's Lease or DRA device differently.

/// FNV-1a, 64 bits: stable across builds and machines, for names derived from a device on every
/// node alike (Lease and DRA device names).
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}
