//! The one source of randomness: jitter for backoffs, probes and socket names.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// 64 random bits from the standard library's randomly keyed hasher (no rand crate needed).
pub fn random_u64() -> u64 {
    RandomState::new().build_hasher().finish()
}

/// A number in [0, 1).
pub fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_unit_is_in_range() {
        for _ in 0..100 {
            let x = random_unit();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
