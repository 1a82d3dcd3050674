//! The file source: reads a config file, normally a key of a ConfigMap mounted as a volume.
//!
//! The kubelet updates such a volume by writing a new timestamped directory and atomically renaming
//! the `..data` symlink to it, so the path is opened afresh on every read (a cached inode or fd
//! would keep the old content) and a change is detected by content, not by mtime. The thread
//! waits on inotify on the file's directory, so a swap, a rewrite or a replacement is read at
//! once; the poll interval is the longest wait between two reads (a filesystem whose changes
//! inotify does not see: an overlay, NFS), and the retry of a watch whose directory went away.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use inotify::{EventMask, Inotify, WatchMask};
use log::warn;
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};

use crate::config::{Config, ConfigError, MAX_CONFIG_BYTES};
use crate::state::msg::Msg;
use crate::state::msg::Progress;
use crate::worker::Worker;

/// Handle of the file-poll thread (`spookd-config-file`); dropping it stops the thread.
pub struct FilePoller {
    progress: Progress,
    stop: Sender<()>,
    /// Wakes the thread's `poll(2)` once `stop` is disconnected.
    waker: Arc<OwnedFd>,
    _worker: Worker,
}

/// How the thread learns of changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Notify {
    /// inotify on the file's directory, the interval as the longest wait.
    Inotify,
    /// The interval only (a test forces it; inotify unavailable gives it too).
    #[cfg_attr(not(test), allow(dead_code))]
    Poll,
}

/// How long a plain file's new content must read the same before it is applied: a file written
/// in pieces (a shell's `>` truncates, then writes) is never applied half-written, unless its
/// writer pauses longer than this.
const SETTLE: Duration = Duration::from_millis(250);
/// How often a watch whose directory went away is tried again, at most.
const REWATCH: Duration = Duration::from_secs(1);

impl FilePoller {
    /// Reads `path` at once, then whenever its directory changes and at least every `interval`,
    /// and sends each new content to `state`.
    pub fn spawn(path: PathBuf, interval: Duration, state: Sender<Msg>) -> io::Result<Self> {
        FilePoller::spawn_with(path, interval, state, Notify::Inotify)
    }

    fn spawn_with(
        path: PathBuf,
        interval: Duration,
        state: Sender<Msg>,
        notify: Notify,
    ) -> io::Result<Self> {
        let (stop, stopped) = crossbeam_channel::bounded(0);
        // Three polls missed, and never less than 10 s: a slow disk is not a stall.
        let progress = Progress::new(interval.saturating_mul(3).max(Duration::from_secs(10)));
        let beat = progress.clone();
        let waker = Arc::new(rustix::event::eventfd(
            0,
            EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
        )?);
        let mut wait = Wait::new(&path, notify, waker.clone());
        let worker = Worker::spawn("spookd-config-file", move || {
            run(&path, interval, &stopped, &state, &beat, &mut wait)
        })?;
        Ok(FilePoller {
            progress,
            stop,
            waker,
            _worker: worker,
        })
    }

    /// The thread's heartbeat, for the state thread ([`Msg::SourceProgress`]).
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }
}

impl Drop for FilePoller {
    fn drop(&mut self) {
        // Disconnect the channel and wake the thread, so it ends before `_worker` waits for it.
        let (closed, _) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self.stop, closed));
        let _ = rustix::io::write(&*self.waker, &1u64.to_ne_bytes());
    }
}

/// The thread's wait between reads: on inotify events in the file's directory, the stop waker,
/// or a timeout.
struct Wait {
    dir: PathBuf,
    inotify: Option<Inotify>,
    watching: bool,
    waker: Arc<OwnedFd>,
}

impl Wait {
    fn new(path: &Path, notify: Notify, waker: Arc<OwnedFd>) -> Wait {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let inotify = match notify {
            Notify::Inotify => Inotify::init()
                .map_err(|e| warn!("inotify unavailable ({e}); reading the config every poll"))
                .ok(),
            Notify::Poll => None,
        };
        Wait {
            dir,
            inotify,
            watching: false,
            waker,
        }
    }

    /// Watches the directory, if not yet (or no longer): before a read, so no change between
    /// the read and the wait is missed.
    fn watch(&mut self) {
        if let Some(inotify) = &mut self.inotify {
            if !self.watching {
                // The kubelet's swap renames in the directory; a rewrite modifies the file.
                let mask = WatchMask::CREATE
                    | WatchMask::DELETE
                    | WatchMask::MODIFY
                    | WatchMask::CLOSE_WRITE
                    | WatchMask::MOVED_TO
                    | WatchMask::MOVED_FROM
                    | WatchMask::ATTRIB
                    | WatchMask::DELETE_SELF
                    | WatchMask::MOVE_SELF;
                self.watching = inotify.watches().add(&self.dir, mask).is_ok();
            }
        }
    }

    /// Sleeps until something changed in the directory, `timeout` passed, or the waker fired.
    fn until_change(&mut self, timeout: Duration) {
        let mut timeout = timeout;
        if self.inotify.is_some() && !self.watching {
            timeout = timeout.min(REWATCH);
        }
        let ready = {
            let mut fds = vec![PollFd::new(&*self.waker, PollFlags::IN)];
            if let Some(inotify) = self.inotify.as_ref().filter(|_| self.watching) {
                fds.push(PollFd::new(inotify, PollFlags::IN));
            }
            // Beyond what a Timespec holds: wait for an event.
            let timeout = Timespec::try_from(timeout).ok();
            rustix::event::poll(&mut fds, timeout.as_ref()).is_ok()
                && fds.get(1).is_some_and(|f| !f.revents().is_empty())
        };
        if let (true, Some(inotify)) = (ready, &mut self.inotify) {
            let mut buf = [0u8; 4096];
            while let Ok(events) = inotify.read_events(&mut buf) {
                let mut any = false;
                for event in events {
                    any = true;
                    if event.mask.contains(EventMask::IGNORED) {
                        // The directory went away (or was replaced): watched again next time.
                        self.watching = false;
                    }
                }
                if !any {
                    break;
                }
            }
        }
    }
}

/// What one read saw: the content, or the kind of error (so a lasting error is logged once).
enum LastRead {
    Content(Vec<u8>),
    Error(String),
}

/// New content of a plain file waits to settle: applied once it has read the same for [`SETTLE`].
#[derive(Default)]
struct Settle(Option<(Vec<u8>, Instant)>);

impl Settle {
    /// Whether `bytes`, just read and new, may be applied at `now`; `wait`: not before the same
    /// content has been read [`SETTLE`] apart.
    fn ready(&mut self, bytes: &[u8], wait: bool, now: Instant) -> bool {
        if !wait {
            self.0 = None;
            return true;
        }
        match &self.0 {
            Some((seen, since)) if seen == bytes => {
                let settled = now.saturating_duration_since(*since) >= SETTLE;
                if settled {
                    self.0 = None;
                }
                settled
            }
            _ => {
                self.0 = Some((bytes.to_vec(), now));
                false
            }
        }
    }

    /// How soon to read again to see the content settled, if something is settling.
    fn next(&self, now: Instant) -> Option<Duration> {
        self.0
            .as_ref()
            .map(|(_, since)| SETTLE.saturating_sub(now.saturating_duration_since(*since)))
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
    wait: &mut Wait,
) {
    let origin = path.display().to_string();
    let mut last: Option<LastRead> = None;
    let mut settle = Settle::default();
    loop {
        wait.watch();
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
        let now = Instant::now();
        let settled = match &read {
            Ok(bytes) if changed => settle.ready(bytes, !atomic && had_content, now),
            _ => settle.ready(&[], false, now),
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
        // A plain file's new content is read again soon, to see it settled.
        let timeout = settle
            .next(Instant::now())
            .map_or(interval, |d| interval.min(d.max(Duration::from_millis(1))));
        wait.until_change(timeout);
        match stop.try_recv() {
            Err(TryRecvError::Empty) => {}
            Ok(()) | Err(TryRecvError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeName;
    use crossbeam_channel::RecvTimeoutError;
    use std::os::unix::fs::symlink;

    /// The instanceIDs of the config in a message.
    fn ids(msg: Msg) -> Vec<String> {
        match msg {
            Msg::Config { config, .. } => {
                let n = NodeName::try_from("n".to_owned()).unwrap();
                config
                    .for_node(&n)
                    .values()
                    .flat_map(|d| d.iter().map(|d| d.id.to_string()))
                    .collect()
            }
            Msg::ConfigInvalid(e) => vec![format!("invalid: {e}")],
            _ => vec!["other".to_owned()],
        }
    }

    fn with_ids(ids: &[&str]) -> String {
        let mut s = String::from("deviceMapping:\n- hosts: [n]\n  devices:\n");
        for id in ids {
            s.push_str(&format!(
                "  - {{resourceName: a.io/x, instanceID: \"{id}\"}}\n"
            ));
        }
        s
    }

    #[test]
    fn every_kind_of_change_is_read_at_once_not_at_the_next_poll() {
        // An hour between polls: only inotify can bring these in time.
        let hour = Duration::from_secs(3600);
        let t = Duration::from_secs(5);
        let dir = std::env::temp_dir().join(format!("spookd-notify-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // A ConfigMap volume: config.yaml → ..data/config.yaml, ..data → a timestamped dir.
        let swap = |version: &str, text: &str| {
            fs::create_dir(dir.join(version)).unwrap();
            fs::write(dir.join(version).join("config.yaml"), text).unwrap();
            symlink(version, dir.join("..data_tmp")).unwrap();
            fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        };
        swap("..v1", &with_ids(&["1"]));
        symlink("..data/config.yaml", dir.join("config.yaml")).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let poller = FilePoller::spawn(dir.join("config.yaml"), hour, tx).unwrap();
        assert_eq!(ids(rx.recv_timeout(t).unwrap()), ["1"]);
        swap("..v2", &with_ids(&["2"]));
        assert_eq!(ids(rx.recv_timeout(t).unwrap()), ["2"], "the ..data swap");
        drop(poller);

        // A plain file: rewritten in place, then replaced by a rename.
        let plain = dir.join("plain.yaml");
        fs::write(&plain, with_ids(&["1"])).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let poller = FilePoller::spawn(plain.clone(), hour, tx).unwrap();
        assert_eq!(ids(rx.recv_timeout(t).unwrap()), ["1"]);
        fs::write(&plain, with_ids(&["3"])).unwrap();
        assert_eq!(
            ids(rx.recv_timeout(t).unwrap()),
            ["3"],
            "the in-place rewrite"
        );
        fs::write(dir.join("new.yaml"), with_ids(&["4"])).unwrap();
        fs::rename(dir.join("new.yaml"), &plain).unwrap();
        assert_eq!(ids(rx.recv_timeout(t).unwrap()), ["4"], "the replaced file");
        drop(poller);

        // The directory removed and made again: watched again (within a second).
        let sub = dir.join("sub");
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("c.yaml"), with_ids(&["5"])).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let poller = FilePoller::spawn(sub.join("c.yaml"), hour, tx).unwrap();
        assert_eq!(ids(rx.recv_timeout(t).unwrap()), ["5"]);
        fs::remove_dir_all(&sub).unwrap();
        assert!(ids(rx.recv_timeout(t).unwrap())[0].starts_with("invalid: cannot read config"));
        fs::create_dir(&sub).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        fs::write(sub.join("c.yaml"), with_ids(&["6"])).unwrap();
        // A read between the write's create and its data sees an empty file, refused (the last
        // good config stays; a slow reader, under emulation, caught it): then the content.
        let mut seen = ids(rx.recv_timeout(t).unwrap());
        if seen[0].contains("the config is empty") {
            seen = ids(rx.recv_timeout(t).unwrap());
        }
        assert_eq!(seen, ["6"], "the re-created directory");
        drop(poller);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_inotify_the_poll_interval_still_reads_every_change() {
        let dir = std::env::temp_dir().join(format!("spookd-nonotify-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.yaml");
        fs::write(&path, with_ids(&["1"])).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let poller =
            FilePoller::spawn_with(path.clone(), Duration::from_millis(100), tx, Notify::Poll)
                .unwrap();
        let t = Duration::from_secs(5);
        assert_eq!(ids(rx.recv_timeout(t).unwrap()), ["1"]);
        fs::write(&path, with_ids(&["2"])).unwrap();
        assert_eq!(ids(rx.recv_timeout(t).unwrap()), ["2"]);
        drop(poller);
        assert!(matches!(
            rx.recv_timeout(t),
            Err(RecvTimeoutError::Disconnected)
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn new_content_waits_to_read_the_same_for_the_settle_time() {
        let mut s = Settle::default();
        let t0 = Instant::now();
        assert!(s.ready(b"a", false, t0));
        assert!(!s.ready(b"half", true, t0));
        assert!(!s.ready(b"whole", true, t0 + SETTLE / 2));
        // The same again, too soon: still waiting; then settled.
        assert!(!s.ready(b"whole", true, t0 + SETTLE));
        assert_eq!(s.next(t0 + SETTLE), Some(SETTLE / 2));
        assert!(s.ready(b"whole", true, t0 + SETTLE * 3 / 2));
        assert_eq!(s.next(t0 + SETTLE * 2), None);
        assert!(!s.ready(b"next", true, t0 + SETTLE * 2));
    }

    #[test]
    fn a_plain_file_rewritten_in_place_is_applied_only_once_it_has_settled() {
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
        // Replaced whole (written beside, renamed over): `fs::write` creates the file empty
        // first, and a read in between is (rightly) an empty config, which is not this test's.
        let put = |text: &str| {
            let tmp = dir.join(".config.yaml.tmp");
            fs::write(&tmp, text).unwrap();
            fs::rename(&tmp, &path).unwrap();
        };
        put("deviceMapping: []\n");
        assert!(matches!(rx.recv_timeout(t).unwrap(), Msg::Config { .. }));
        put("deviceMapping: [\n");
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
