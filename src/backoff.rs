//! The one backoff: exponential, capped, each wait stretched by up to a quarter at random so that
//! many clients do not retry in lockstep. The API clients start at 250 ms and stop at 30 s; the
//! registrar at 5 ms and 1 s (kubelet.sock can appear a moment before the kubelet listens).

use std::time::Duration;

use crate::random::random_unit;

/// A retry schedule: the first wait, then doubling to the cap; [`Backoff::reset`] after a success.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// The API's: 250 ms doubling to 30 s.
    pub const API: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(30));

    /// First wait `first` (and after a reset), doubling up to `max`.
    pub fn new((first, max): (Duration, Duration)) -> Self {
        Backoff {
            first,
            max,
            current: first,
        }
    }

    /// The next wait; doubles the one after.
    pub fn wait(&mut self) -> Duration {
        let wait = self
            .current
            .saturating_add(self.current.mul_f64(random_unit() * 0.25));
        self.current = self.current.saturating_mul(2).min(self.max);
        wait
    }

    /// After a success: the next failure waits the shortest again.
    pub fn reset(&mut self) {
        self.current = self.first;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Backoff::API)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let (first, max) = Backoff::API;
        let mut b = Backoff::default();
        let w = b.wait();
        assert!(w >= first && w <= first.mul_f64(1.25));
        for _ in 0..20 {
            b.wait();
        }
        let capped = b.wait();
        assert!(capped >= max && capped <= max.mul_f64(1.25));
        b.reset();
        assert!(b.wait() <= first.mul_f64(1.25));
    }

    #[test]
    fn a_short_schedule_grows_and_is_capped() {
        let (first, max) = (Duration::from_millis(5), Duration::from_secs(1));
        let mut b = Backoff::new((first, max));
        let w = b.wait();
        assert!(w >= first && w <= first * 5 / 4);
        assert!(b.wait() >= first * 2);
        for _ in 0..40 {
            b.wait();
        }
        let w = b.wait();
        assert!(w >= max && w <= max * 5 / 4);
    }
}
