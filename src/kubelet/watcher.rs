//! The watcher thread (`spookd-kubelet-watch`): inotify on the device-plugins dir, so a kubelet
//! restart (kubelet.sock created) and a deleted socket of ours are seen at once.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use log::{error, warn};

use crate::kubelet::proto::KUBELET_SOCKET;
use crate::state::msg::Msg;
use crate::worker::Worker;

/// Handle of the watcher thread (`spookd-kubelet-watch`). Dropping it removes the inotify watch,
/// which wakes the thread's blocking read with IN_IGNORED, and waits for it.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    watches: Watches,
    wd: WatchDescriptor,
    _worker: Worker,
}

impl Watcher {
    pub fn spawn(dir: &Path, state: Sender<Msg>) -> io::Result<Self> {
        let inotify = Inotify::init()?;
        let mut watches = inotify.watches();
        let wd = watches.add(
            dir,
            WatchMask::CREATE | WatchMask::DELETE | WatchMask::MOVED_TO,
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let worker = Worker::spawn("spookd-kubelet-watch", move || {
            run_watcher(inotify, &flag, &state)
        })?;
        Ok(Watcher {
            stop,
            watches,
            wd,
            _worker: worker,
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.watches.remove(self.wd.clone());
    }
}

fn run_watcher(mut inotify: Inotify, stop: &AtomicBool, state: &Sender<Msg>) {
    let mut buf = [0u8; 4096];
    loop {
        let events = match inotify.read_events_blocking(&mut buf) {
            Ok(events) => events,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                error!(
                    "watching the device-plugins dir failed: {e}; relying on the periodic check"
                );
                return;
            }
        };
        for event in events {
            let msg = if event.mask.contains(EventMask::IGNORED) {
                if !stop.load(Ordering::SeqCst) {
                    warn!("the device-plugins dir went away; relying on the periodic check");
                }
                return;
            } else if event.mask.contains(EventMask::Q_OVERFLOW) {
                // Events were lost: re-check everything as after a kubelet restart.
                Msg::KubeletStarted
            } else if event
                .mask
                .intersects(EventMask::CREATE | EventMask::MOVED_TO)
                && event.name == Some(OsStr::new(KUBELET_SOCKET))
            {
                Msg::KubeletStarted
            } else if event.mask.contains(EventMask::DELETE) {
                match event.name {
                    Some(name) => Msg::SocketRemoved(name.to_os_string()),
                    None => continue,
                }
            } else {
                continue;
            };
            if state.send(msg).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::RecvTimeoutError;
    use std::time::Duration;

    #[test]
    fn watcher_reports_kubelet_socket_and_deletions_and_stops_on_drop() {
        let dir = std::env::temp_dir().join(format!("spookd-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let w = Watcher::spawn(&dir, tx).unwrap();
        std::fs::write(dir.join("spookd-x.sock"), b"").unwrap();
        std::fs::write(dir.join(KUBELET_SOCKET), b"").unwrap();
        std::fs::remove_file(dir.join("spookd-x.sock")).unwrap();
        let t = Duration::from_secs(5);
        assert!(matches!(rx.recv_timeout(t), Ok(Msg::KubeletStarted)));
        match rx.recv_timeout(t) {
            Ok(Msg::SocketRemoved(n)) => assert_eq!(n, "spookd-x.sock"),
            _ => panic!("expected SocketRemoved"),
        }
        drop(w);
        // The thread has ended (it held the only sender).
        assert!(matches!(
            rx.recv_timeout(t),
            Err(RecvTimeoutError::Disconnected)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
