//! Named worker threads whose handles stop them with a bounded wait.
//!
//! A worker's own handle struct holds whatever tells it to stop (usually a `Sender` whose drop makes
//! the worker's `recv` see `Disconnected`) declared *before* its [`Worker`], so dropping the handle
//! first signals the thread and then waits for it here, never longer than [`STOP_WAIT`].

use std::io;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::warn;

/// Longest a handle's drop waits for its thread. Shutdown must finish within 2 s in all: the
/// state thread gets 1.5 s (it removes our sockets), the four other handles 100 ms each at most.
/// A thread that is told to stop ends in microseconds; the bound only matters if one is stuck.
pub const STOP_WAIT: Duration = Duration::from_millis(100);

/// A running named thread.
pub struct Worker {
    name: String,
    stop_wait: Duration,
    handle: Option<JoinHandle<()>>,
    /// Disconnected once the thread's closure has returned (or unwound).
    done: Receiver<()>,
}

impl Worker {
    /// Spawns `f` on a thread called `name`.
    pub fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<Worker> {
        let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let _done = done_tx;
                f();
            })?;
        Ok(Worker {
            name: name.to_owned(),
            stop_wait: STOP_WAIT,
            handle: Some(handle),
            done,
        })
    }

    /// Sets how long dropping the handle waits (default [`STOP_WAIT`]): shorter for a thread that
    /// may sit in a blocking network read when the process is exiting anyway.
    pub fn stop_wait(mut self, wait: Duration) -> Self {
        self.stop_wait = wait;
        self
    }

    /// Waits up to `timeout` for the thread to end; true if it did.
    pub fn join_timeout(&mut self, timeout: Duration) -> bool {
        match self.done.recv_timeout(timeout) {
            Err(RecvTimeoutError::Disconnected) | Ok(()) => {
                if let Some(h) = self.handle.take() {
                    let _ = h.join();
                }
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.handle.is_some() && !self.join_timeout(self.stop_wait) {
            warn!(
                "thread {} did not stop within {:?}; leaving it",
                self.name, self.stop_wait
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopping_thread_is_joined_and_a_stuck_one_is_left_after_its_wait() {
        let (tx, rx) = crossbeam_channel::unbounded::<()>();
        let mut w = Worker::spawn("t-stops", move || while rx.recv().is_ok() {}).unwrap();
        drop(tx);
        // Bounded generously: the point is that it ends, not how fast.
        assert!(w.join_timeout(Duration::from_secs(5)));

        let (_keep, rx) = crossbeam_channel::unbounded::<()>();
        let w = Worker::spawn("t-stuck", move || {
            let _ = rx.recv_timeout(Duration::from_secs(2));
        })
        .unwrap()
        .stop_wait(Duration::from_millis(20));
        assert_eq!(w.stop_wait, Duration::from_millis(20));
        // Dropping gives up after its own wait and leaves the thread to end by itself.
        drop(w);
    }
}
