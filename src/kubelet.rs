//! Talking to the kubelet: registering endpoints (the registrar thread) and noticing kubelet
//! restarts and deleted sockets (the watcher thread, inotify on the device-plugins dir).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use grpcio::{CallOption, ChannelBuilder, Environment};
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use log::{debug, error, warn};

use crate::clock::later;
use crate::config::ResourceName;
use crate::plugin;
use crate::proto::{RegisterRequest, RegistrationClient, KUBELET_SOCKET, VERSION};
use crate::state::Msg;
use crate::worker::Worker;

/// Longest a Register call may take; the kubelet answers at once when healthy.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(2);
/// First retry after a failed registration: kubelet.sock can appear a moment before it listens.
const FIRST_RETRY: Duration = Duration::from_millis(5);
/// Longest wait between registration attempts.
const MAX_RETRY: Duration = Duration::from_secs(1);

/// Why registering with the kubelet failed.
#[derive(Debug)]
pub enum RegisterError {
    /// kubelet.sock does not exist: the kubelet is not running (yet).
    NoKubelet { socket: PathBuf },
    /// The Register call failed.
    Rpc {
        socket: PathBuf,
        source: grpcio::Error,
    },
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterError::NoKubelet { socket } => {
                write!(
                    f,
                    "{} does not exist (kubelet not running?)",
                    socket.display()
                )
            }
            RegisterError::Rpc { socket, source } => {
                write!(f, "Register on {}: {source}", socket.display())
            }
        }
    }
}

impl std::error::Error for RegisterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RegisterError::NoKubelet { .. } => None,
            RegisterError::Rpc { source, .. } => Some(source),
        }
    }
}

enum Job {
    Register {
        resource: ResourceName,
        endpoint: String,
    },
    Forget(ResourceName),
}

/// Handle of the registrar thread (`spookd-register`): a queue of registrations it retries with a
/// capped exponential backoff until they succeed or are replaced. Dropping it stops the thread.
pub struct Registrar {
    jobs: Sender<Job>,
    _worker: Worker,
}

impl Registrar {
    pub fn spawn(env: Arc<Environment>, dir: PathBuf, state: Sender<Msg>) -> io::Result<Self> {
        let (jobs, rx) = crossbeam_channel::unbounded();
        let worker = Worker::spawn("spookd-register", move || {
            run_registrar(&env, &dir, &rx, &state)
        })?;
        Ok(Registrar {
            jobs,
            _worker: worker,
        })
    }

    /// Registers `endpoint` for `resource` now, replacing any pending attempt for it.
    pub fn register(&self, resource: &ResourceName, endpoint: &str) {
        // The thread only ends when this handle drops, so the send cannot fail while we live.
        let _ = self.jobs.send(Job::Register {
            resource: resource.clone(),
            endpoint: endpoint.to_owned(),
        });
    }

    /// Stops trying to register `resource`.
    pub fn forget(&self, resource: &ResourceName) {
        let _ = self.jobs.send(Job::Forget(resource.clone()));
    }
}

struct Pending {
    endpoint: String,
    attempt: u32,
    at: Instant,
    reported: bool,
}

/// An identity of the kubelet's socket file, `None` when absent. Inode numbers are reused (tmpfs),
/// so the change time is part of it: a re-created kubelet.sock gets a new identity.
pub fn kubelet_identity(dir: &Path) -> Option<u64> {
    use std::hash::Hasher;
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir.join(KUBELET_SOCKET)).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write_u64(m.ino());
    h.write_i64(m.ctime());
    h.write_i64(m.ctime_nsec());
    Some(h.finish())
}

fn run_registrar(env: &Arc<Environment>, dir: &Path, jobs: &Receiver<Job>, state: &Sender<Msg>) {
    let mut pending: BTreeMap<ResourceName, Pending> = BTreeMap::new();
    // What is registered with which kubelet.sock: a kubelet restart is seen both as our socket
    // deleted and as kubelet.sock created, and must not register the same endpoint twice (the
    // kubelet would drop and re-dial it).
    let mut done: BTreeMap<ResourceName, (String, Option<u64>)> = BTreeMap::new();
    let apply = |pending: &mut BTreeMap<ResourceName, Pending>,
                 done: &mut BTreeMap<ResourceName, (String, Option<u64>)>,
                 job: Job| match job {
        Job::Register { resource, endpoint } => {
            let kubelet = kubelet_identity(dir);
            if kubelet.is_some() && done.get(&resource) == Some(&(endpoint.clone(), kubelet)) {
                debug!("{resource}: {endpoint} is registered with this kubelet already");
                pending.remove(&resource);
                return;
            }
            pending.insert(
                resource,
                Pending {
                    endpoint,
                    attempt: 0,
                    at: Instant::now(),
                    reported: false,
                },
            );
        }
        Job::Forget(resource) => {
            pending.remove(&resource);
            done.remove(&resource);
        }
    };
    loop {
        let next = pending.values().map(|p| p.at).min();
        let job = match next {
            Some(at) => jobs.recv_deadline(at),
            None => jobs.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match job {
            Ok(job) => apply(&mut pending, &mut done, job),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        // A kubelet restart queues every resource at once: take them all before dialling.
        while let Ok(job) = jobs.try_recv() {
            apply(&mut pending, &mut done, job);
        }
        let now = Instant::now();
        let due: Vec<ResourceName> = pending
            .iter()
            .filter(|(_, p)| p.at <= now)
            .map(|(r, _)| r.clone())
            .collect();
        for resource in due {
            let Some(p) = pending.get_mut(&resource) else {
                continue;
            };
            debug!(
                "{resource}: registering {} (attempt {})",
                p.endpoint,
                p.attempt + 1
            );
            let result = register(env, dir, &resource, &p.endpoint);
            let endpoint = p.endpoint.clone();
            match result {
                Ok(()) => {
                    pending.remove(&resource);
                    // The kubelet.sock that just answered: if it is replaced later, a new
                    // kubelet started and registering again is right.
                    done.insert(resource.clone(), (endpoint.clone(), kubelet_identity(dir)));
                    send(state, resource, endpoint, Ok(()));
                }
                Err(e) => {
                    p.attempt += 1;
                    p.at = later(Instant::now(), backoff(p.attempt));
                    if p.reported {
                        debug!("{resource}: registration attempt {} failed: {e}", p.attempt);
                    } else {
                        p.reported = true;
                        send(state, resource, endpoint, Err(e));
                    }
                }
            }
        }
    }
}

fn send(
    state: &Sender<Msg>,
    resource: ResourceName,
    endpoint: String,
    result: Result<(), RegisterError>,
) {
    let _ = state.send(Msg::Registered {
        resource,
        endpoint,
        result,
    });
}

/// 5 ms, 10 ms, 20 ms … capped at 1 s, each stretched by up to a quarter at random so that many
/// plugins do not dial a restarting kubelet in lockstep.
fn backoff(attempt: u32) -> Duration {
    let base = FIRST_RETRY
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_RETRY);
    base + base.mul_f64(plugin::random_unit() * 0.25)
}

/// One Register call on a fresh channel: a reused channel would wait out gRPC's own reconnect
/// backoff after the kubelet restarts.
fn register(
    env: &Arc<Environment>,
    dir: &Path,
    resource: &ResourceName,
    endpoint: &str,
) -> Result<(), RegisterError> {
    let socket = dir.join(KUBELET_SOCKET);
    if !socket.exists() {
        return Err(RegisterError::NoKubelet { socket });
    }
    let channel = ChannelBuilder::new(env.clone())
        .use_local_subchannel_pool(true)
        .connect(&format!("unix:{}", socket.display()));
    let client = RegistrationClient::new(channel);
    let mut req = RegisterRequest::new();
    req.version = VERSION.to_owned();
    req.endpoint = endpoint.to_owned();
    req.resource_name = resource.to_string();
    req.options = protobuf::MessageField::some(plugin::options());
    client
        .register(&req, CallOption::default().timeout(REGISTER_TIMEOUT))
        .map(|_| ())
        .map_err(|source| RegisterError::Rpc { socket, source })
}

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

// The real socket behaviour is covered by the integration tests (tests/kubelet.rs).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) >= FIRST_RETRY && backoff(1) <= FIRST_RETRY * 5 / 4);
        assert!(backoff(2) >= FIRST_RETRY * 2);
        assert!(backoff(40) >= MAX_RETRY && backoff(40) <= MAX_RETRY * 5 / 4);
    }

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
