//! The file source: polls a config file, normally a key of a ConfigMap mounted as a volume.
//!
//! The kubelet updates such a volume by writing a new timestamped directory and atomically renaming
//! the `..data` symlink to it, so the path is opened afresh on every poll (a cached inode or fd
//! would keep the old content) and a change is detected by content, not by mtime.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::config::{Config, ConfigError};
use crate::state::Msg;
use crate::worker::Worker;

/// Handle of the file-poll thread (`spookd-config-file`); dropping it stops the thread.
pub struct FilePoller {
    _stop: Sender<()>,
    _worker: Worker,
}

impl FilePoller {
    /// Reads `path` at once, then every `interval`, and sends each new content to `state`.
    pub fn spawn(path: PathBuf, interval: Duration, state: Sender<Msg>) -> io::Result<Self> {
        let (stop, stopped) = crossbeam_channel::bounded(0);
        let worker = Worker::spawn("spookd-config-file", move || {
            run(&path, interval, &stopped, &state)
        })?;
        Ok(FilePoller {
            _stop: stop,
            _worker: worker,
        })
    }
}

/// What one read saw: the content, or the kind of error (so a lasting error is logged once).
enum Seen {
    Content(Vec<u8>),
    Error(io::ErrorKind),
}

fn run(path: &PathBuf, interval: Duration, stop: &Receiver<()>, state: &Sender<Msg>) {
    let origin = path.display().to_string();
    let mut last: Option<Seen> = None;
    loop {
        let read = fs::read(path);
        // Only a change is parsed: an idle poll is one read and a comparison.
        let changed = match (&read, &last) {
            (Ok(bytes), Some(Seen::Content(before))) => bytes != before,
            (Err(e), Some(Seen::Error(before))) => e.kind() != *before,
            _ => true,
        };
        if changed {
            let (seen, msg) = match read {
                Ok(bytes) => {
                    let msg = match Config::parse(&bytes, &origin) {
                        Ok(config) => Msg::Config {
                            origin: origin.clone(),
                            config,
                        },
                        Err(e) => Msg::ConfigInvalid(e),
                    };
                    (Seen::Content(bytes), msg)
                }
                Err(source) => (
                    Seen::Error(source.kind()),
                    Msg::ConfigInvalid(ConfigError::Read {
                        path: path.clone(),
                        source,
                    }),
                ),
            };
            if state.send(msg).is_err() {
                return;
            }
            last = Some(seen);
        }
        match stop.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_each_new_content_once_and_follows_errors() {
        let dir = std::env::temp_dir().join(format!("spookd-file-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        let (tx, rx) = crossbeam_channel::unbounded();
        let poller = FilePoller::spawn(path.clone(), Duration::from_millis(10), tx).unwrap();
        let t = Duration::from_secs(5);
        match rx.recv_timeout(t).unwrap() {
            Msg::ConfigInvalid(ConfigError::Read { path: p, .. }) => assert_eq!(p, path),
            _ => panic!("expected a read error for the missing file"),
        }
        fs::write(&path, "deviceMapping: []\n").unwrap();
        assert!(matches!(rx.recv_timeout(t).unwrap(), Msg::Config { .. }));
        fs::write(&path, "deviceMapping: [\n").unwrap();
        assert!(matches!(
            rx.recv_timeout(t).unwrap(),
            Msg::ConfigInvalid(ConfigError::Parse { .. })
        ));
        // Unchanged content is not sent again.
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        drop(poller);
        // The thread has ended: it held the only sender.
        assert!(matches!(
            rx.recv_timeout(t),
            Err(RecvTimeoutError::Disconnected)
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
