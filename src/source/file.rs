//! The file source: polls a config file, normally a key of a ConfigMap mounted as a volume.
//!
//! The kubelet updates such a volume by writing a new timestamped directory and atomically renaming
//! the `..data` symlink to it, so the path is opened afresh on every poll (a cached inode or fd
//! would keep the old content) and a change is detected by content, not by mtime.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::config::{Config, ConfigError, MAX_CONFIG_BYTES};
use crate::state::msg::Msg;
use crate::state::msg::Progress;
use crate::worker::Worker;

/// Handle of the file-poll thread (`spookd-config-file`); dropping it stops the thread.
pub struct FilePoller {
    progress: Progress,
    _stop: Sender<()>,
    _worker: Worker,
}

impl FilePoller {
    /// Reads `path` at once, then every `interval`, and sends each new content to `state`.
    pub fn spawn(path: PathBuf, interval: Duration, state: Sender<Msg>) -> io::Result<Self> {
        let (stop, stopped) = crossbeam_channel::bounded(0);
        // Three polls missed, and never less than 10 s: a slow disk is not a stall.
        let progress = Progress::new(interval.saturating_mul(3).max(Duration::from_secs(10)));
        let beat = progress.clone();
        let worker = Worker::spawn("spookd-config-file", move || {
            run(&path, interval, &stopped, &state, &beat)
        })?;
        Ok(FilePoller {
            progress,
            _stop: stop,
            _worker: worker,
        })
    }

    /// The thread's heartbeat, for the state thread ([`Msg::SourceProgress`]).
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }
}

/// What one read saw: the content, or the kind of error (so a lasting error is logged once).
enum LastRead {
    Content(Vec<u8>),
    Error(String),
}

/// New content of a plain file waits one poll: applied when the next read is the same.
#[derive(Default)]
struct Settle(Option<Vec<u8>>);

impl Settle {
    /// Whether `bytes`, just read and new, may be applied now; `wait`: not before it reads the
    /// same twice.
    fn ready(&mut self, bytes: &[u8], wait: bool) -> bool {
        if !wait {
            self.0 = None;
            return true;
        }
        let same = self.0.as_deref() == Some(bytes);
        self.0 = (!same).then(|| bytes.to_vec());
        same
    }
}

/// A read error's kind, to tell a lasting error from a new one.
fn error_kind(e: &ConfigError) -> String {
    match e {
        ConfigError::Read { source, .. } => format!("{:?}", source.kind()),
        other => other.to_string(),
    }
}

/// Reads a config file without ever blocking on it and without reading more than a config may
/// hold: a FIFO at the path would block `open` and `read` until a writer came, a device such as
/// `/dev/zero` never ends, and a huge file would be read whole before the parser refused it.
/// Opened non-blocking (a FIFO then opens at once), then refused unless it is a regular file.
pub fn read_config(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    // Looked at before it is opened (opening a device can act: a watchdog arms), and again
    // after, in case it was swapped in between.
    let not_regular = |kind: fs::FileType| {
        let kind = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        ConfigError::NotRegular {
            path: path.to_owned(),
            kind,
        }
    };
    let kind = fs::metadata(path).map_err(read_error)?.file_type();
    if !kind.is_file() {
        return Err(not_regular(kind));
    }
    let file: File = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(read_error)?;
    let kind = file.metadata().map_err(read_error)?.file_type();
    if !kind.is_file() {
        return Err(not_regular(kind));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            origin: path.display().to_string(),
            limit: MAX_CONFIG_BYTES,
        });
    }
    Ok(bytes)
}

fn run(
    path: &Path,
    interval: Duration,
    stop: &Receiver<()>,
    state: &Sender<Msg>,
    progress: &Progress,
) {
    let origin = path.display().to_string();
    let mut last: Option<LastRead> = None;
    let mut settle = Settle::default();
    loop {
        let read = read_config(path);
        progress.beat();
        // Only a change is parsed: an idle poll is one read and a comparison.
        let changed = match (&read, &last) {
            (Ok(bytes), Some(LastRead::Content(before))) => bytes != before,
            (Err(e), Some(LastRead::Error(before))) => error_kind(e) != *before,
            _ => true,
        };
        // A mounted ConfigMap's key is a symlink the kubelet swaps atomically: its content is
        // whole the moment it is seen. A plain file may be mid-rewrite (a shell's `>` truncates,
        // then writes): a prefix cut at a line is valid YAML, and applying it would drain the
        // devices after the cut. So its new content waits one poll to read the same.
        let atomic = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        // Before the first content there is nothing to drain: applied at once.
        let had_content = matches!(last, Some(LastRead::Content(_)));
        let settled = match &read {
            Ok(bytes) if changed => settle.ready(bytes, !atomic && had_content),
            _ => settle.ready(&[], false),
        };
        if changed && settled {
            let (seen, msg) = match read {
                Ok(bytes) => {
                    let msg = match Config::parse(&bytes, &origin) {
                        Ok(config) => Msg::Config {
                            origin: origin.clone(),
                            config,
                        },
                        Err(e) => Msg::ConfigInvalid(e),
                    };
                    (LastRead::Content(bytes), msg)
                }
                Err(e) => (LastRead::Error(error_kind(&e)), Msg::ConfigInvalid(e)),
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
    use crate::config::NodeName;

    #[test]
    fn new_content_waits_to_read_the_same_twice() {
        let mut s = Settle::default();
        assert!(s.ready(b"a", false));
        assert!(!s.ready(b"half", true));
        assert!(!s.ready(b"whole", true));
        assert!(s.ready(b"whole", true));
        assert!(!s.ready(b"next", true));
    }

    #[test]
    fn a_plain_file_rewritten_in_place_is_applied_only_once_it_reads_the_same_twice() {
        let dir = std::env::temp_dir().join(format!("spookd-settle-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        let full = "deviceMapping:\n- hosts: [n]\n  devices:\n  - {resourceName: a.io/x, instanceID: \"1\"}\n  - {resourceName: a.io/x, instanceID: \"2\"}\n";
        fs::write(&path, full).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let poller = FilePoller::spawn(path.clone(), Duration::from_millis(1000), tx).unwrap();
        let t = Duration::from_secs(5);
        assert!(matches!(rx.recv_timeout(t).unwrap(), Msg::Config { .. }));
        // A writer part-way through: the first device only, valid YAML. Read by at most one poll,
        // then rewritten whole: never applied.
        let half = &full[..full.rfind("  - ").unwrap()];
        fs::write(&path, half).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        fs::write(&path, full.replace('2', "3")).unwrap();
        match rx.recv_timeout(t).unwrap() {
            Msg::Config { config, .. } => {
                let n = NodeName::try_from("n".to_owned()).unwrap();
                let ids: Vec<String> = config
                    .for_node(&n)
                    .values()
                    .flat_map(|d| d.iter().map(|d| d.id.to_string()))
                    .collect();
                assert_eq!(ids, ["1", "3"], "a half-written file was applied");
            }
            _ => panic!("expected a config"),
        }
        drop(poller);
        fs::remove_dir_all(&dir).unwrap();
    }

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
