//! A one-slot channel for ListAndWatch: the state thread puts the newest device list, the stream
//! task takes it. Every message is the full list, so a reader that fell behind only ever needs the
//! newest one: a kubelet that stops reading holds one list, never a queue of every change. The
//! stream is not dropped either (the kubelet would take a closed stream for a dead plugin).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use futures_util::Stream;

struct Shared<T> {
    slot: Mutex<Option<T>>,
    waker: AtomicWaker,
    sender_gone: AtomicBool,
    receiver_gone: AtomicBool,
}

impl<T> Shared<T> {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<T>> {
        // Nothing panics while holding the lock; if something did, the value is still usable.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The state thread's end.
pub struct Sender<T>(Arc<Shared<T>>);

/// The stream task's end: a `Stream` of the newest values, ending when the sender is dropped.
pub struct Receiver<T>(Arc<Shared<T>>);

pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        slot: Mutex::new(None),
        waker: AtomicWaker::new(),
        sender_gone: AtomicBool::new(false),
        receiver_gone: AtomicBool::new(false),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Sender<T> {
    /// Replaces the value not yet taken, if any. Fails (giving it back) when the receiver is gone.
    pub fn send(&self, value: T) -> Result<(), T> {
        if self.0.receiver_gone.load(Ordering::SeqCst) {
            return Err(value);
        }
        *self.0.slot() = Some(value);
        self.0.waker.wake();
        Ok(())
    }
}

impl<T> Sender<T> {
    /// Whether the receiver is gone: the stream task ended (its client went away).
    pub fn is_closed(&self) -> bool {
        self.0.receiver_gone.load(Ordering::SeqCst)
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.0.sender_gone.store(true, Ordering::SeqCst);
        self.0.waker.wake();
    }
}

impl<T> Receiver<T> {
    /// The value waiting, if any (without a task context; for tests and benchmarks).
    pub fn newest(&mut self) -> Option<T> {
        self.0.slot().take()
    }

    /// Whether the sender is gone and nothing is waiting: the stream has ended.
    pub fn is_closed(&self) -> bool {
        self.0.sender_gone.load(Ordering::SeqCst) && self.0.slot().is_none()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.0.receiver_gone.store(true, Ordering::SeqCst);
    }
}

impl<T> Stream for Receiver<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        // Register first, then look: a send after the look wakes us again.
        self.0.waker.register(cx.waker());
        if let Some(value) = self.0.slot().take() {
            return Poll::Ready(Some(value));
        }
        if self.0.sender_gone.load(Ordering::SeqCst) {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

impl<T> Unpin for Receiver<T> {}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn keeps_only_the_newest_and_ends_after_the_sender() {
        let (tx, mut rx) = channel();
        for i in 0..1000 {
            tx.send(i).unwrap();
        }
        assert_eq!(rx.newest(), Some(999));
        assert_eq!(rx.newest(), None);
        tx.send(7).unwrap();
        drop(tx);
        assert!(!rx.is_closed());
        let rest: Vec<i32> = futures_executor_lite(rx.by_ref());
        assert_eq!(rest, [7]);
        assert!(rx.is_closed());
    }

    #[test]
    fn send_fails_once_the_receiver_is_gone() {
        let (tx, rx) = channel();
        drop(rx);
        assert_eq!(tx.send(1), Err(1));
    }

    /// Drains a stream whose sender is gone (every poll is ready), without an executor.
    fn futures_executor_lite<S: Stream + Unpin>(mut s: S) -> Vec<S::Item> {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        while let Poll::Ready(Some(v)) = Pin::new(&mut s).poll_next(&mut cx) {
            out.push(v);
        }
        out
    }
}
