//! The registrar thread (`spookd-register`): registers each endpoint with the kubelet's
//! Registration service, retrying with a capped backoff while the kubelet is absent or refusing.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use grpcio::{CallOption, ChannelBuilder, Environment};
use log::debug;

use crate::backoff::Backoff;
use crate::clock::later;
use crate::config::ResourceName;
use crate::kubelet::plugin;
use crate::kubelet::proto::{RegisterRequest, RegistrationClient, KUBELET_SOCKET, VERSION};
use crate::state::msg::{Msg, RegisterError};
use crate::worker::Worker;

/// Longest a Register call may take; the kubelet answers at once when healthy.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(2);
/// Retries of a failed registration: 5 ms, 10 ms, 20 ms … capped at 1 s (kubelet.sock can appear
/// a moment before the kubelet listens), jittered so plugins do not dial a restarting kubelet in
/// lockstep.
const RETRY: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

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
    pub fn spawn(grpc: Arc<Environment>, dir: PathBuf, state: Sender<Msg>) -> io::Result<Self> {
        let (jobs, rx) = crossbeam_channel::unbounded();
        let worker = Worker::spawn("spookd-register", move || {
            run_registrar(&grpc, &dir, &rx, &state)
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

struct Attempt {
    endpoint: String,
    attempt: u32,
    at: Instant,
    backoff: Backoff,
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

fn run_registrar(grpc: &Arc<Environment>, dir: &Path, jobs: &Receiver<Job>, state: &Sender<Msg>) {
    let mut pending: BTreeMap<ResourceName, Attempt> = BTreeMap::new();
    // What is registered with which kubelet.sock: a kubelet restart is seen both as our socket
    // deleted and as kubelet.sock created, and must not register the same endpoint twice (the
    // kubelet would drop and re-dial it).
    let mut done: BTreeMap<ResourceName, (String, Option<u64>)> = BTreeMap::new();
    let apply = |pending: &mut BTreeMap<ResourceName, Attempt>,
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
                Attempt {
                    endpoint,
                    attempt: 0,
                    at: Instant::now(),
                    backoff: Backoff::new(RETRY),
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
            let result = register(grpc, dir, &resource, &p.endpoint);
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
                    p.at = later(Instant::now(), p.backoff.wait());
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

/// One Register call on a fresh channel: a reused channel would wait out gRPC's own reconnect
/// backoff after the kubelet restarts.
fn register(
    grpc: &Arc<Environment>,
    dir: &Path,
    resource: &ResourceName,
    endpoint: &str,
) -> Result<(), RegisterError> {
    let socket = dir.join(KUBELET_SOCKET);
    if !socket.exists() {
        return Err(RegisterError::NoKubelet { socket });
    }
    let channel = ChannelBuilder::new(grpc.clone())
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

// The real socket behaviour is covered by the integration tests (tests/kubelet.rs).
