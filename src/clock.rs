//! Deadlines that cannot overflow.
//!
//! `Instant + Duration` panics when the sum leaves the clock's range, and in a release build a
//! panic aborts the whole daemon. Every duration spookd reads is bounded where it is read (config
//! and flags), and every deadline is still computed here, so no future input path can bring the
//! abort back.

use std::time::{Duration, Instant};

/// Far enough to mean "never" for a daemon, near enough to stay inside any clock's range.
const NEVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// `now + after`, or a time so far ahead it never comes when that is past the clock's range.
pub fn later(now: Instant, after: Duration) -> Instant {
    now.checked_add(after)
        .or_else(|| now.checked_add(NEVER))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturates_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(
            later(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        let far = later(now, Duration::MAX);
        assert!(far > later(now, Duration::from_secs(86_400 * 365)));
        // And again from a far deadline: still no panic.
        let _ = later(far, Duration::MAX);
    }
}
