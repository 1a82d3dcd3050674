//! The state thread: the one owner of everything spookd serves.
//!
//! Every other thread only sends [`Msg`]s here ([`msg`] is the whole vocabulary); nothing else
//! mutates state. This module imports the vocabulary and the config model, never a feature: what
//! it needs done it asks of its [`Backend`] (real in [`crate::daemon`], recorded in the tests).
//! [`State::handle`] is the table of messages; each message's work lives in the file named for
//! its job: `apply.rs` (configs), `servers.rs` (the device-plugin servers, their streams and the
//! fallback check), `probes.rs` (health), `shared.rs` (devices shared under
//! `--exclusive-leases`), `allocate.rs`, `snapshot.rs` (what /metrics and `status` read),
//! `dra.rs` (the DRA driver), and [`Backend`] is what it asks of the world. The protocol:
//!
//! 1. A config source (the file poller or the API watch) reads the config, parses and checks it
//!    at its edge, and sends [`Msg::Config`] or [`Msg::ConfigInvalid`]. An invalid one is logged
//!    and dropped: the last good config stays in force.
//! 2. On a good config the state thread computes this node's resources and diffs them against what
//!    it serves: a new resource gets a server on a fresh socket (through [`Backend::start`]) and a
//!    registration job ([`Backend::register`]); a changed one has its full device list pushed to
//!    every open ListAndWatch stream; a removed one first pushes an empty list, then its server
//!    retires and stops [`RETIRE_GRACE`] later, removing its socket. Unchanged resources keep their
//!    servers and streams.
//! 3. A server's gRPC handlers never touch state: ListAndWatch sends [`Msg::Watch`] with the sending
//!    half of a stream, and gets the current list at once and every later one; Allocate sends
//!    [`Msg::Allocate`] carrying a one-shot reply channel. Nothing here blocks on a client: a stream
//!    whose client went away fails its next send and is dropped.
//! 4. The registrar thread registers endpoints with the kubelet, retrying with a capped backoff, and
//!    reports through [`Msg::Registered`].
//! 5. The kubelet watcher (inotify on the device-plugins dir) reports kubelet.sock being created
//!    ([`Msg::KubeletStarted`]: register every resource again, on a fresh socket where the kubelet
//!    wiped ours) and our sockets being deleted ([`Msg::SocketRemoved`]: restart that server).
//!    Every [`FALLBACK_CHECK`] the thread also stats the same files itself, in case an event was
//!    missed.
//! 6. The prober thread (`health`) gets the set of health checks of the devices served
//!    after every config that changes it ([`Backend::set_probes`]) and reports each change of a
//!    device's health ([`Msg::Health`]); the resource's list, with each device's health, is pushed
//!    at once. Allocate of an Unhealthy device still answers (the kubelet decides) and warns.
//! 7. With `--exclusive-leases` ([`crate::leases`]), the devices this node serves that are
//!    mapped to several hosts are given to the `spookd-lease` thread after each config
//!    ([`LeaseCmd::Shared`](msg::LeaseCmd::Shared)). An Allocate naming one is parked and its Leases requested
//!    ([`LeaseCmd::Acquire`](msg::LeaseCmd::Acquire)); [`Msg::LeasesTaken`] answers it (all taken: the env; else the
//!    refusal, naming the holder). [`Msg::Leases`] reports devices held by other nodes: they are
//!    advertised Unhealthy here until released or expired.
//! 8. The metrics thread asks with [`Msg::Snapshot`] (carrying its reply channel) for the
//!    counters and each resource's devices and registration, for /metrics and /healthz. The file
//!    source's heartbeat ([`Msg::SourceProgress`], once at start) lets /readyz show a source that
//!    has stalled.
//! 9. Every [`FALLBACK_CHECK`] a registered resource whose ListAndWatch streams the kubelet all
//!    closed, and reopened none by the next check, is registered again.
//! 10. [`Msg::Shutdown`] stops every server, removes our sockets and ends the thread.
//! 11. With `--dra` ([`crate::dra`], `dra.rs` here) none of 2–9 happens: no device-plugin
//!     servers. A good config becomes an [`Inventory`](crate::config::dra::Inventory) (one whose devices cannot be published is
//!     invalid, and the last good one stays) handed to the publisher ([`Backend::publish`]); the
//!     kubelet plugin asks for each claim's env with [`Msg::Prepare`], carrying its reply channel;
//!     the publisher and the plugin report leadership, publishes and claims with [`Msg::Dra`].

mod allocate;
mod apply;
mod backend;
mod dra;
pub mod msg;
mod probes;
mod servers;
mod shared;
mod snapshot;
#[cfg(test)]
mod test_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::clock::later;
use crate::config::{NodeName, ResourceName};

use allocate::Parked;
use msg::{DeviceKey, Msg, Progress, Snapshot};
use probes::Probed;
use servers::Served;

pub use backend::Backend;

/// How long a removed resource's server lives after pushing its empty list, so the kubelet reads it.
pub const RETIRE_GRACE: Duration = Duration::from_millis(250);

/// How often the state thread checks the device-plugins dir itself, behind inotify (and looks
/// for resources whose streams the kubelet closed): one wakeup in 10 s on an idle node, where 5 s
/// was a fifth of a wakeup a second, the whole of #20's budget for spookd's own threads.
pub const FALLBACK_CHECK: Duration = Duration::from_secs(10);

/// Whether the loop goes on after a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// All spookd serves on this node.
pub struct State<B: Backend> {
    node: NodeName,
    backend: B,
    served: BTreeMap<ResourceName, Served<B::Server>>,
    /// Removed resources, stopped at their deadline; also superseded servers (deadline now).
    retiring: Vec<(Instant, Served<B::Server>)>,
    next_server: u64,
    kubelet: Option<u64>,
    have_config: bool,
    /// The probes last given to the backend, each with what it last saw (one map, not two: at
    /// 1,000 probed devices a second map's keys cost ~170 KiB).
    probes: BTreeMap<DeviceKey, Probed>,
    /// The resource names last given to [`Backend::set_served_resources`] (`None`: before the
    /// first config, so the first is always given).
    last_served_resources: Option<BTreeSet<ResourceName>>,
    /// Served devices mapped to several hosts (`--exclusive-leases`), as last given to the backend.
    shared: BTreeSet<DeviceKey>,
    /// The last Lease report: devices held by other nodes.
    held_by_others: BTreeMap<DeviceKey, String>,
    /// The last Lease report: shared devices this node holds.
    held_here: BTreeSet<DeviceKey>,
    /// Allocates waiting for their Leases, by request number.
    parked: BTreeMap<u64, Parked>,
    next_request: u64,
    next_check: Instant,
    /// The config source's heartbeat, when it has one.
    source: Option<Progress>,
    /// Counters for /metrics; devices and registration are read from `served`.
    stats: Snapshot,
    /// `--dra`: the last good config's inventory and the driver's counters.
    dra: Option<dra::Driver>,
}

impl<B: Backend> State<B> {
    pub fn new(node: NodeName, backend: B, now: Instant) -> Self {
        let kubelet = backend.kubelet_socket();
        let dra = backend.dra().then(dra::Driver::default);
        State {
            node,
            backend,
            served: BTreeMap::new(),
            retiring: Vec::new(),
            next_server: 0,
            kubelet,
            have_config: false,
            probes: BTreeMap::new(),
            last_served_resources: None,
            shared: BTreeSet::new(),
            held_by_others: BTreeMap::new(),
            held_here: BTreeSet::new(),
            parked: BTreeMap::new(),
            next_request: 0,
            next_check: later(now, FALLBACK_CHECK),
            source: None,
            stats: Snapshot::default(),
            dra,
        }
    }

    /// Handles one message: a table, one named method per message.
    #[rustfmt::skip]
    pub fn handle(&mut self, msg: Msg, now: Instant) -> Flow {
        match msg {
            Msg::Config { origin, config } => self.config(&origin, &config, now),
            Msg::ConfigInvalid(e) => self.config_invalid(&e),
            Msg::KubeletStarted => self.kubelet_started(),
            Msg::SocketRemoved(name) => self.socket_removed(&name),
            Msg::Health { resource, id, healthy, detail } => self.health(&resource, &id, healthy, &detail),
            Msg::Watch { resource, server, stream } => self.watch(resource, server, stream),
            Msg::Allocate { resource, containers, reply } => self.allocate(resource, containers, reply),
            Msg::LeasesTaken { request, result } => self.leases_taken(request, result),
            Msg::Leases(report) => self.lease_report(report),
            Msg::Registered { resource, endpoint, result } => self.registered(&resource, &endpoint, result),
            Msg::Snapshot { reply } => drop(reply.send(self.snapshot())),
            Msg::SourceProgress(progress) => self.source = Some(progress),
            Msg::Prepare { claims, reply } => self.prepare(&claims, &reply),
            Msg::WatchHealth(stream) => self.watch_health(stream),
            Msg::Dra(event) => self.dra_event(event),
            Msg::EventFailed => self.stats.events_failed += 1,
            Msg::Shutdown => return Flow::Stop,
        }
        self.reap(now);
        Flow::Continue
    }
}

/// The state thread's loop: messages, and timer work at [`State::deadline`].
pub fn run<B: Backend>(mut state: State<B>, rx: &Receiver<Msg>) {
    loop {
        match rx.recv_deadline(state.deadline()) {
            Ok(msg) => {
                if state.handle(msg, Instant::now()) == Flow::Stop {
                    break;
                }
                // A steady stream of messages must not starve the timer work.
                let now = Instant::now();
                if now >= state.deadline() {
                    state.tick(now);
                }
            }
            Err(RecvTimeoutError::Timeout) => state.tick(Instant::now()),
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    state.shutdown();
}
