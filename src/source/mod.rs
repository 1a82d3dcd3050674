//! Where configs come from. Each source is a thread that reads, parses and checks at its edge and
//! sends the result to the state thread; the state thread never parses.

pub mod file;
pub mod kube;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When a source last finished a read: a source stuck in a system call (a hung network
/// filesystem, say) sends nothing, so silence is all the state thread could see. The source
/// beats after every read; the state thread asks whether it has been silent too long.
#[derive(Clone, Debug)]
pub struct Progress {
    start: Instant,
    /// Milliseconds from `start` to the last beat.
    last: Arc<AtomicU64>,
    max_silence: Duration,
}

impl Progress {
    /// A source that should finish a read at least every `max_silence`.
    pub fn new(max_silence: Duration) -> Progress {
        Progress {
            start: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
            max_silence,
        }
    }

    /// A read finished (whatever it found).
    pub fn beat(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// How long the source has been silent at `now`, if longer than allowed.
    pub fn stalled(&self, now: Instant) -> Option<Duration> {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        let silent = now
            .saturating_duration_since(self.start)
            .saturating_sub(last);
        (silent > self.max_silence).then_some(silent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_past_the_bound_is_a_stall() {
        let p = Progress::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(p.stalled(t0), None);
        assert!(p.stalled(t0 + Duration::from_secs(11)).is_some());
        p.beat();
        assert_eq!(p.stalled(Instant::now() + Duration::from_secs(9)), None);
    }
}
