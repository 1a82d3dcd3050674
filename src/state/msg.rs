//! The vocabulary: [`Msg`], everything the state thread is told, and every type that crosses a
//! channel to or from it. It imports the config model and the small shared pieces, never a
//! feature: every feature imports this. (Channels inside one feature, such as the Lease watch's
//! to the Lease thread, keep their types in that feature.)

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;

use crate::config::dra::EnvRefusal;
use crate::config::{Config, ConfigError, HealthCheck, InstanceId, ResourceName};
use crate::text::{Cut, Quoted};

/// Everything the state thread is told. Requests that need an answer carry their reply channel.
pub enum Msg {
    /// A source read a config that passed every check.
    Config { origin: String, config: Config },
    /// A source read a config that failed a check; the last good one stays.
    ConfigInvalid(ConfigError),
    /// kubelet.sock was created: the kubelet (re)started, every resource registers again.
    KubeletStarted,
    /// A file in the device-plugins dir was deleted; if it is one of our sockets, restart it.
    SocketRemoved(OsString),
    /// The prober saw a device's health change (`detail` says what it saw).
    Health {
        resource: ResourceName,
        id: InstanceId,
        healthy: bool,
        detail: String,
    },
    /// The kubelet opened a ListAndWatch stream on server number `server` of `resource`.
    Watch {
        resource: ResourceName,
        server: u64,
        stream: StreamSender,
    },
    /// Allocate: per container, the requested device IDs; answered with one env per container.
    Allocate {
        resource: ResourceName,
        containers: Vec<Vec<String>>,
        reply: AllocateReply,
    },
    /// The registrar's outcome for `endpoint`; failures are reported once per endpoint.
    Registered {
        resource: ResourceName,
        endpoint: String,
        result: Result<(), RegisterError>,
    },
    /// The Leases of Allocate number `request` were all taken (or refused).
    LeasesTaken {
        request: u64,
        result: Result<(), LeaseRefusal>,
    },
    /// Which shared devices other nodes hold now, and this node's Lease counts.
    Leases(LeaseReport),
    /// What operators see (/metrics, /healthz): answered with a snapshot of the counters.
    Snapshot {
        reply: crossbeam_channel::Sender<Snapshot>,
    },
    /// The config source's heartbeat: /readyz and a metric say so when it stalls.
    SourceProgress(Progress),
    /// `--dra`: the env of each claim (one answer per claim, in order).
    Prepare {
        claims: Vec<ClaimDevices>,
        reply: PrepareReply,
    },
    /// `--dra`: the kubelet opened a device-health stream (NodeWatchResources): it gets the
    /// health of every device this node reaches at once, and again after each change.
    WatchHealth(HealthSender),
    /// `--dra`: what the publisher or the kubelet plugin did, for /metrics.
    Dra(DraEvent),
    /// A Kubernetes Event could not be written (or was dropped): counted for /metrics.
    EventFailed,
    /// Stop serving: stop every server, remove our sockets, end the thread.
    Shutdown,
}

/// What the state thread tells the cluster's operators: a Kubernetes Event's type, reason,
/// action and note (the events thread adds whom it is about).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// `Warning`, else `Normal`.
    pub warning: bool,
    pub reason: &'static str,
    pub action: &'static str,
    /// At most [`Notice::MAX_NOTE`] bytes.
    pub note: String,
}

impl Notice {
    /// Longest note an Event takes (1 KiB). Cut here, before it is queued: an error quoting a
    /// 900 KB value must not sit in the queue 256 times.
    pub const MAX_NOTE: usize = crate::text::MAX_MESSAGE;

    /// An Event of type Warning: something an operator should look at.
    pub fn warning(reason: &'static str, action: &'static str, note: String) -> Notice {
        Notice::of_type(true, reason, action, note)
    }

    /// An Event of type Normal: what went as it should.
    pub fn normal(reason: &'static str, action: &'static str, note: String) -> Notice {
        Notice::of_type(false, reason, action, note)
    }

    /// A device's probe changed its health: a Warning when it goes Unhealthy, Normal when it is
    /// Healthy again.
    pub fn health_change(healthy: bool, note: String) -> Notice {
        if healthy {
            Notice::normal("DeviceHealthy", "Probe", note)
        } else {
            Notice::warning("DeviceUnhealthy", "Probe", note)
        }
    }

    fn of_type(warning: bool, reason: &'static str, action: &'static str, note: String) -> Notice {
        let note = crate::text::cut_owned(note, Notice::MAX_NOTE);
        Notice {
            warning,
            reason,
            action,
            note,
        }
    }
}

/// `--dra`: a claim to prepare, as the API has it allocated: its UID and the names of the devices
/// this driver gave it, in groups that each get their own env (numbered within the group): the
/// whole claim as one group, or one group per request where each container must see only its
/// own request's devices (a claim the scheduler made for a pod's extended resources).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimDevices {
    pub uid: String,
    pub groups: Vec<Vec<String>>,
}

/// Why a claim's env cannot be given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrepareRefusal {
    /// No valid config has been read since start.
    NoConfig,
    /// The device is not mapped to this node (the claim was allocated for another, or the config
    /// moved it since).
    NotHere {
        device: String,
        node: String,
    },
    Env(EnvRefusal),
}

impl fmt::Display for PrepareRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrepareRefusal::NoConfig => write!(f, "spookd has read no valid config yet"),
            PrepareRefusal::NotHere { device, node } => write!(
                f,
                "device {device} is not mapped to node {node} in the config (its hosts cannot \
                 include this node)"
            ),
            PrepareRefusal::Env(EnvRefusal::UnknownDevice(name)) => write!(
                f,
                "device {name} is not in the config (removed since it was allocated?)"
            ),
            PrepareRefusal::Env(EnvRefusal::TooLarge { bytes, limit }) => write!(
                f,
                "the claim's env would take {bytes} bytes, more than {limit} a container may be \
                 given"
            ),
        }
    }
}

impl std::error::Error for PrepareRefusal {}

/// Where the env of a Prepare's claims goes: for each claim, an env for each of its groups.
pub type PrepareReply = crossbeam_channel::Sender<Vec<Result<Vec<ContainerEnv>, PrepareRefusal>>>;

/// `--dra`: what the publisher and the kubelet plugin report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DraEvent {
    /// This node became the publisher (true) or stopped being it.
    Leader(bool),
    /// The pool was published (or found up to date) at `generation`.
    Published {
        generation: i64,
        slices: usize,
        devices: usize,
        /// The written fields the API server drops (its feature gates are off).
        dropped: Vec<&'static str>,
    },
    /// A publish attempt failed; it is retried.
    PublishFailed,
    /// The kubelet's answer to our plugin registration.
    Registered(bool),
    /// A NodePrepareResources or NodeUnprepareResources call: claims that succeeded and failed.
    Claims { ok: u64, failed: u64 },
    /// The extended resources a device plugin advertises on this node (allocatable above 0), as
    /// the Node read says.
    NodeAdvertises(BTreeSet<String>),
}

/// `--dra`: the driver's counters, as /metrics shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DraStatus {
    pub leader: bool,
    pub generation: i64,
    pub slices: usize,
    pub devices: usize,
    pub publish_failures: u64,
    pub registered: bool,
    pub claims_ok: u64,
    pub claims_failed: u64,
    /// The written fields the API server drops (its feature gates are off).
    pub dropped: Vec<&'static str>,
    /// The resources this node serves by DRA that a device plugin also advertises here: the
    /// scheduler gives pods asking for them in `resources.limits` the device plugin's devices.
    pub served_by_device_plugin: Vec<ResourceName>,
}

/// Why an Allocate was refused. Answered to the kubelet as INVALID_ARGUMENT (or UNAVAILABLE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocateError {
    /// The resource is no longer served on this node.
    NotServed { resource: ResourceName },
    /// A requested ID is not one of the resource's devices.
    UnknownDevice { resource: ResourceName, id: String },
    /// An ID was requested twice in one request (for one container or for two).
    DuplicateDevice { resource: ResourceName, id: String },
    /// A container request named no device.
    NoDevices { resource: ResourceName },
    /// The request named no container.
    NoContainers { resource: ResourceName },
    /// The env would be more than a container (or one answer) may carry.
    TooLarge {
        resource: ResourceName,
        bytes: usize,
        limit: usize,
    },
    /// A device shared with other hosts could not be taken (`--exclusive-leases`).
    Lease(LeaseRefusal),
}

impl fmt::Display for AllocateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocateError::NotServed { resource } => {
                write!(f, "{resource} is no longer served on this node")
            }
            AllocateError::UnknownDevice { resource, id } => {
                write!(f, "{resource} has no device {}", Quoted(id))
            }
            AllocateError::DuplicateDevice { resource, id } => {
                write!(
                    f,
                    "{resource} device {} requested twice in one request",
                    Quoted(id)
                )
            }
            AllocateError::NoDevices { resource } => {
                write!(f, "a container request for {resource} names no device")
            }
            AllocateError::NoContainers { resource } => {
                write!(f, "an Allocate request for {resource} names no container")
            }
            AllocateError::TooLarge {
                resource,
                bytes,
                limit,
            } => write!(
                f,
                "{resource}: the env for this request would take {bytes} bytes, more than \
                 {limit} (a container's exec or the kubelet's 4 MiB gRPC limit would refuse it); \
                 request fewer devices per container"
            ),
            AllocateError::Lease(refusal) => write!(f, "{refusal}"),
        }
    }
}

impl std::error::Error for AllocateError {}

/// The device list pushed on a ListAndWatch stream: always the resource's full list.
pub type Listing = Arc<[Listed]>;

/// One device as ListAndWatch reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub id: InstanceId,
    pub healthy: bool,
}

/// The sending half of one ListAndWatch stream: it keeps only the newest list (see `latest`).
pub type StreamSender = crate::latest::Sender<Listing>;

/// `--dra`: one device this node reaches, as its probes see it (a device without a healthCheck
/// is Healthy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceHealth {
    /// The device's name in the ResourceSlices.
    pub device: String,
    pub healthy: bool,
    /// What the probe last saw; empty for a device not probed.
    pub detail: String,
}

/// `--dra`: device name → the probe's message, for each device this node's probes find
/// Unhealthy.
pub type Unhealthy = BTreeMap<String, String>;

/// `--dra`: every device this node reaches, sorted by name.
pub type HealthList = Arc<Vec<DeviceHealth>>;
/// `--dra`: the state thread's end of a device-health stream (the newest list only).
pub type HealthSender = crate::latest::Sender<HealthList>;

/// One container's env, as Allocate answers it.
pub type ContainerEnv = BTreeMap<String, String>;

/// Where an Allocate's answer goes.
pub type AllocateReply = oneshot::Sender<Result<Vec<ContainerEnv>, AllocateError>>;

/// A device: resource and instance.
pub type DeviceKey = (ResourceName, InstanceId);

/// Every probe this node runs (the prober is given the whole set after each config that changes it).
pub type ProbeSet = BTreeMap<DeviceKey, HealthCheck>;

/// What the state thread asks.
#[derive(Debug)]
pub enum LeaseCmd {
    /// The shared devices this node serves now.
    Shared(BTreeSet<DeviceKey>),
    /// Acquire the Leases of `devices` for Allocate number `request`.
    Acquire {
        request: u64,
        devices: Vec<DeviceKey>,
    },
}

/// Why an Allocate's Leases could not all be taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseRefusal {
    /// Another node holds the device (`lease` is its Lease's name).
    HeldBy {
        device: DeviceKey,
        holder: String,
        lease: String,
    },
    /// The API server could not be asked (or answered an error).
    Unavailable {
        device: DeviceKey,
        reason: String,
        lease: String,
    },
}

impl fmt::Display for LeaseRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseRefusal::HeldBy {
                device: (r, id),
                holder,
                lease,
            } => write!(
                f,
                // The holder is any string another Lease writer put there.
                "{r} device {id:?} is held by node {} (its Lease {lease})",
                Cut(holder)
            ),
            LeaseRefusal::Unavailable {
                device: (r, id),
                reason,
                lease,
            } => write!(
                f,
                "cannot take the Lease {lease} of {r} device {id:?}: {reason}"
            ),
        }
    }
}

/// What the state thread is told: devices held elsewhere, how many Leases this node holds, and
/// the acquisitions won and lost so far.
#[derive(Debug, Default, PartialEq, Eq, Clone)]
pub struct LeaseReport {
    pub held_by_others: BTreeMap<DeviceKey, String>,
    pub held_here: usize,
    /// The shared devices this node holds.
    pub mine: BTreeSet<DeviceKey>,
    pub won: u64,
    pub lost: u64,
}

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

/// What the state thread reports for /metrics, /healthz and /readyz.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Per served resource: (healthy devices, unhealthy devices, registered with the kubelet).
    pub resources: BTreeMap<String, (usize, usize, bool)>,
    /// Whether a valid config has been applied since start.
    pub configured: bool,
    pub reloads_ok: u64,
    pub reloads_error: u64,
    /// Unix time of the last applied config.
    pub last_reload_success: Option<f64>,
    /// Why the config source cannot read the config now (missing, not a regular file, too large,
    /// stalled); `None` while it reads.
    pub source_problem: Option<String>,
    /// (resource, "ok" | "error") → count.
    pub allocations: BTreeMap<(String, &'static str), u64>,
    /// (resource, "ok" | "error") → count.
    pub registrations: BTreeMap<(String, &'static str), u64>,
    /// (resource, device) → Healthy.
    pub devices: BTreeMap<(String, String), bool>,
    /// Changes of a device's health seen by the probes.
    pub health_changes: u64,
    /// Times a resource's ListAndWatch streams all closed and stayed closed, so it registered
    /// again.
    pub reregistrations: u64,
    /// `--exclusive-leases`: Leases this node holds, and acquisitions won and lost.
    pub leases_held: u64,
    pub lease_acquisitions_won: u64,
    pub lease_acquisitions_lost: u64,
    /// `--dra`: the driver's counters; `None` in device-plugin mode.
    pub dra: Option<DraStatus>,
    /// Kubernetes Events that could not be written or were dropped.
    pub events_failed: u64,
    /// This node's name (for `spookd status`).
    pub node: String,
    /// (resource, device) → what its probe last saw.
    pub probe_details: BTreeMap<(String, String), String>,
    /// `--exclusive-leases`: (resource, device) → the node holding its Lease (this one too).
    pub lease_holders: BTreeMap<(String, String), String>,
}

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
    fn a_notes_length_is_bound_before_it_is_queued() {
        let long = format!("a{}", "é".repeat(500_000));
        let n = Notice::warning("InvalidConfig", "Reject", long.clone());
        assert!(n.note.len() <= Notice::MAX_NOTE, "{}", n.note.len());
        let (head, tail) = n.note.split_once(" bytes cut]… ").unwrap();
        assert!(long.starts_with(head.rsplit_once(" …[").unwrap().0) && long.ends_with(tail));
        let short = Notice::normal("ConfigApplied", "Apply", "ok".into());
        assert_eq!(short.note, "ok");
    }

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
