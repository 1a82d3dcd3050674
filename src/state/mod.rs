//! The state thread: the one owner of everything spookd serves.
//!
//! Every other thread only sends [`Msg`]s here ([`msg`] is the whole vocabulary); nothing else
//! mutates state. This module imports the vocabulary and the config model, never a feature: what
//! it needs done it asks of its [`Backend`] (real in [`crate::daemon`], recorded in the tests).
//! [`State::handle`] is the table of messages; Allocate lives in `allocate.rs`. The protocol:
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
//!    ([`LeaseCmd::Shared`]). An Allocate naming one is parked and its Leases requested
//!    ([`LeaseCmd::Acquire`]); [`Msg::LeasesTaken`] answers it (all taken: the env; else the
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
//!     servers. A good config becomes an [`Inventory`] (one whose devices cannot be published is
//!     invalid, and the last good one stays) handed to the publisher ([`Backend::publish`]); the
//!     kubelet plugin asks for each claim's env with [`Msg::Prepare`], carrying its reply channel;
//!     the publisher and the plugin report leadership, publishes and claims with [`Msg::Dra`].

mod allocate;
mod dra;
pub mod msg;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::{debug, error, info, warn};

use crate::clock::later;
use crate::config::dra::Inventory;
use crate::config::{Config, ConfigError, Device, HealthCheck, InstanceId, NodeName, ResourceName};

use allocate::Parked;
use msg::{
    DeviceKey, LeaseCmd, LeaseReport, Listed, Listing, Msg, Notice, ProbeSet, Progress,
    RegisterError, Snapshot, StreamSender,
};

/// How long a removed resource's server lives after pushing its empty list, so the kubelet reads it.
pub const RETIRE_GRACE: Duration = Duration::from_millis(250);

/// How often the state thread checks the device-plugins dir itself, behind inotify (and looks
/// for resources whose streams the kubelet closed): one wakeup in 10 s on an idle node, where 5 s
/// was a fifth of a wakeup a second, the whole of #20's budget for spookd's own threads.
pub const FALLBACK_CHECK: Duration = Duration::from_secs(10);

/// The side effects the state thread needs, so it can be tested without sockets.
pub trait Backend {
    /// A running server; dropping it stops the server and removes its socket.
    type Server;
    /// The error starting a server can give.
    type Error: fmt::Display;
    /// Starts a server for `resource` numbered `server` on a fresh socket; returns it and the
    /// socket's file name (the endpoint the kubelet is told).
    fn start(
        &mut self,
        resource: &ResourceName,
        server: u64,
    ) -> Result<(Self::Server, String), Self::Error>;
    /// Queues registering `endpoint` for `resource`; replaces any earlier job for it.
    fn register(&mut self, resource: &ResourceName, endpoint: &str);
    /// Drops any pending registration of `resource`.
    fn forget(&mut self, resource: &ResourceName);
    /// Whether our socket `endpoint` still exists.
    fn socket_exists(&self, endpoint: &str) -> bool;
    /// An identity of the kubelet's socket (its inode), `None` when absent.
    fn kubelet_socket(&self) -> Option<u64>;
    /// Replaces the set of health probes.
    fn set_probes(&mut self, probes: ProbeSet);
    /// Whether `--exclusive-leases` is on (then [`Backend::leases`] has a taker).
    fn exclusive(&self) -> bool;
    /// Tells the Lease thread.
    fn leases(&mut self, cmd: LeaseCmd);
    /// The resources served now (after every config that changes them, and the first).
    fn served(&mut self, resources: BTreeSet<ResourceName>);
    /// `--dra`: this is a DRA driver: no device-plugin servers; each good config is published.
    fn dra(&self) -> bool {
        false
    }
    /// `--dra`: hands the publisher the inventory of a new good config.
    fn publish(&mut self, _inventory: Arc<Inventory>) {}
    /// `--dra`: the devices this node reaches that its probes find Unhealthy now, for its health
    /// report (which the leader reads to taint them); `None` where it probes none.
    fn report_health(&mut self, _unhealthy: Option<msg::Unhealthy>) {}
    /// Tells the cluster's operators (a Kubernetes Event), best effort: never blocks.
    fn notify(&mut self, _notice: Notice) {}
}

/// A resource this node serves. Fields drop in order: streams end before their server shuts down.
struct Served<S> {
    streams: Vec<StreamSender>,
    /// `None` after a failed start; retried at the next check.
    server: Option<Live<S>>,
    devices: Arc<[Device]>,
    /// Devices whose probe says Unhealthy; every other device is Healthy.
    unhealthy: BTreeSet<InstanceId>,
    /// Shared devices another node holds a Lease on: advertised Unhealthy here.
    elsewhere: BTreeSet<InstanceId>,
}

struct Live<S> {
    id: u64,
    endpoint: String,
    registered: bool,
    /// The kubelet opened a ListAndWatch stream on this server since it registered.
    watched: bool,
    /// When the check first saw every stream closed (none reopened): registered again at the
    /// next check if still so.
    orphaned: bool,
    _server: S,
}

/// Whether the loop goes on after a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// A probed device's check, and what its probe last saw (`None` before its first result).
#[derive(Debug)]
struct Probed {
    check: HealthCheck,
    seen: Option<Box<str>>,
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
    /// The resources last given to the backend (`None`: before the first config).
    announced: Option<BTreeSet<ResourceName>>,
    /// Served devices mapped to several hosts (`--exclusive-leases`), as last given to the backend.
    shared: BTreeSet<DeviceKey>,
    /// The last Lease report: devices held by other nodes.
    held_elsewhere: BTreeMap<DeviceKey, String>,
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
            announced: None,
            shared: BTreeSet::new(),
            held_elsewhere: BTreeMap::new(),
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

    /// A good config: counted, then applied.
    fn config(&mut self, origin: &str, config: &Config, now: Instant) {
        if self.dra.is_some() {
            return self.dra_config(origin, config);
        }
        self.count_good();
        self.apply(origin, config, now);
    }

    fn count_good(&mut self) {
        self.stats.reloads_ok += 1;
        self.stats.source_problem = None;
        self.stats.last_reload_success = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs_f64());
    }

    /// A config that failed a check, or could not be read: logged, counted; the last good stays.
    fn config_invalid(&mut self, e: &ConfigError) {
        self.backend.notify(Notice::new(
            true,
            "InvalidConfig",
            "Reject",
            format!("node {}: {e}; the last good config stays", self.node),
        ));
        self.stats.reloads_error += 1;
        self.stats.source_problem = e.is_unreadable().then(|| e.to_string());
        if self.have_config {
            error!("{e}; keeping the last good config");
        } else {
            error!("{e}; serving nothing until a valid config is read");
        }
    }

    /// When the loop must wake up without a message.
    pub fn deadline(&self) -> Instant {
        self.retiring
            .iter()
            .map(|(at, _)| *at)
            .fold(self.next_check, Instant::min)
    }

    /// Timer work: stop retired servers, and the fallback check of the device-plugins dir.
    pub fn tick(&mut self, now: Instant) {
        self.reap(now);
        if now < self.next_check {
            return;
        }
        self.next_check = later(now, FALLBACK_CHECK);
        self.dra_tick();
        let kubelet = self.backend.kubelet_socket();
        if kubelet.is_some() && kubelet != self.kubelet {
            info!("kubelet.sock changed (seen by the periodic check)");
            self.kubelet_started();
            return;
        }
        self.kubelet = kubelet;
        let missing: Vec<ResourceName> = self
            .served
            .iter()
            .filter(|(_, s)| match &s.server {
                Some(live) => !self.backend.socket_exists(&live.endpoint),
                None => true,
            })
            .map(|(r, _)| r.clone())
            .collect();
        for resource in missing {
            warn!("{resource}: socket missing (seen by the periodic check); restarting its server");
            self.restart(&resource);
        }
        self.reregister_orphans();
    }

    /// A registered resource whose ListAndWatch streams the kubelet all closed, and that opened
    /// none again by the next check, is no longer the kubelet's endpoint for it (another plugin
    /// registered the name, or the kubelet dropped it): register it again, and say so.
    fn reregister_orphans(&mut self) {
        let mut again = Vec::new();
        for (resource, served) in &mut self.served {
            served.streams.retain(|s| !s.is_closed());
            let Some(live) = served.server.as_mut() else {
                continue;
            };
            if !(live.registered && live.watched && served.streams.is_empty()) {
                live.orphaned = false;
                continue;
            }
            if !live.orphaned {
                live.orphaned = true;
                continue;
            }
            warn!(
                "{resource}: the kubelet closed every ListAndWatch stream of {} and opened none \
                 again; registering it again",
                live.endpoint
            );
            live.registered = false;
            live.watched = false;
            live.orphaned = false;
            again.push((resource.clone(), live.endpoint.clone()));
        }
        for (resource, endpoint) in again {
            self.stats.reregistrations += 1;
            // The registrar remembers it registered this endpoint with this kubelet: forgotten
            // first, so it registers again.
            self.backend.forget(&resource);
            self.backend.register(&resource, &endpoint);
        }
    }

    /// Stops everything and removes our sockets.
    pub fn shutdown(mut self) {
        for (resource, served) in std::mem::take(&mut self.served) {
            self.backend.forget(&resource);
            drop(served);
        }
        self.retiring.clear();
        info!("stopped serving; sockets removed");
    }

    fn apply(&mut self, origin: &str, config: &Config, now: Instant) {
        self.have_config = true;
        let wanted = config.for_node(&self.node);
        if !config.has_node(&self.node) {
            warn!(
                "node {} is in no mapping of {origin}: serving nothing; still watching for changes",
                self.node
            );
        }
        let removed: Vec<ResourceName> = self
            .served
            .keys()
            .filter(|r| !wanted.contains_key(*r))
            .cloned()
            .collect();
        for resource in removed {
            self.retire(&resource, now);
        }
        let mut changed = 0;
        for (resource, devices) in wanted {
            match self.served.get_mut(&resource) {
                Some(served) if served.devices == devices => {}
                Some(served) => {
                    info!(
                        "{resource}: devices now {} ({})",
                        id_list(&devices),
                        difference(&served.devices, &devices)
                    );
                    // Health stays only for devices still probed; the prober keeps their counters.
                    served.unhealthy.retain(|id| {
                        devices
                            .iter()
                            .any(|d| d.id == *id && d.health_check.is_some())
                    });
                    served.devices = devices;
                    push(&resource, served);
                    changed += 1;
                }
                None => {
                    info!("{resource}: serving {}", id_list(&devices));
                    self.served.insert(
                        resource.clone(),
                        Served {
                            devices,
                            unhealthy: BTreeSet::new(),
                            elsewhere: BTreeSet::new(),
                            server: None,
                            streams: Vec::new(),
                        },
                    );
                    self.restart(&resource);
                    changed += 1;
                }
            }
        }
        let probes: ProbeSet = self
            .served
            .iter()
            .flat_map(|(r, s)| {
                s.devices.iter().filter_map(|d| {
                    d.health_check
                        .map(|check| ((r.clone(), d.id.clone()), check))
                })
            })
            .collect();
        let same = probes.len() == self.probes.len()
            && (probes.iter().zip(&self.probes))
                .all(|((k, c), (was, p))| k == was && *c == p.check);
        if !same {
            info!("probing {} devices", probes.len());
            let mut old = std::mem::take(&mut self.probes);
            self.probes = (probes.iter())
                .map(|(k, &check)| {
                    // What a probe saw of an old target would be read as this one's.
                    let seen = old
                        .remove(k)
                        .filter(|p| p.check == check)
                        .and_then(|p| p.seen);
                    (k.clone(), Probed { check, seen })
                })
                .collect();
            self.backend.set_probes(probes);
        }
        if self.backend.exclusive() {
            let shared: BTreeSet<DeviceKey> = config
                .shared_devices()
                .into_iter()
                .filter(|(r, id)| {
                    self.served
                        .get(r)
                        .is_some_and(|s| s.devices.iter().any(|d| d.id == *id))
                })
                .collect();
            if shared != self.shared {
                info!(
                    "{} devices served here are shared with other hosts",
                    shared.len()
                );
                self.shared = shared.clone();
                self.backend.leases(LeaseCmd::Shared(shared));
            }
            self.refresh_elsewhere();
        }
        let names: BTreeSet<ResourceName> = self.served.keys().cloned().collect();
        if self.announced.as_ref() != Some(&names) {
            self.announced = Some(names.clone());
            self.backend.served(names);
        }
        let count: usize = self.served.values().map(|s| s.devices.len()).sum();
        info!(
            "config from {origin} applied: {} resources, {count} devices on node {}{}",
            self.served.len(),
            self.node,
            if changed == 0 {
                " (no change here)"
            } else {
                ""
            }
        );
        let per_resource: Vec<String> = (self.served.iter())
            .map(|(r, s)| format!("{r}: {}", s.devices.len()))
            .collect();
        let serves = if per_resource.is_empty() {
            "nothing".to_owned()
        } else {
            per_resource.join(", ")
        };
        self.backend.notify(Notice::new(
            false,
            "ConfigApplied",
            "Apply",
            format!(
                "node {} applied the config from {origin}: {} resources, {count} devices ({serves})",
                self.node,
                self.served.len()
            ),
        ));
    }

    fn retire(&mut self, resource: &ResourceName, now: Instant) {
        let Some(mut served) = self.served.remove(resource) else {
            return;
        };
        info!("{resource}: no longer in the config; advertising no devices, then stopping");
        self.backend.forget(resource);
        served.devices = Arc::from(Vec::new());
        push(resource, &mut served);
        self.retiring.push((later(now, RETIRE_GRACE), served));
    }

    /// Starts a fresh server for `resource` (dropping the old one) and queues its registration.
    fn restart(&mut self, resource: &ResourceName) {
        let Some(served) = self.served.get_mut(resource) else {
            return;
        };
        let id = self.next_server;
        self.next_server += 1;
        // Streams of the old server end with it; the kubelet opens new ones on the new socket.
        let old = Served {
            devices: served.devices.clone(),
            unhealthy: BTreeSet::new(),
            elsewhere: BTreeSet::new(),
            server: served.server.take(),
            streams: std::mem::take(&mut served.streams),
        };
        match self.backend.start(resource, id) {
            Ok((server, endpoint)) => {
                debug!("{resource}: server {id} listening on {endpoint}");
                self.backend.register(resource, &endpoint);
                served.server = Some(Live {
                    id,
                    endpoint,
                    registered: false,
                    watched: false,
                    orphaned: false,
                    _server: server,
                });
            }
            Err(e) => {
                error!("{resource}: cannot start its server: {e}; retrying in {FALLBACK_CHECK:?}")
            }
        }
        // Stopped after the new one is up and queued for registration, so a kubelet restart is
        // answered first and the old servers' shutdown comes after.
        if old.server.is_some() || !old.streams.is_empty() {
            self.retiring.push((Instant::now(), old));
        }
    }

    fn kubelet_started(&mut self) {
        self.kubelet = self.backend.kubelet_socket();
        if self.served.is_empty() {
            info!("kubelet started; nothing to register");
            return;
        }
        info!(
            "kubelet started; registering {} resources again",
            self.served.len()
        );
        let resources: Vec<ResourceName> = self.served.keys().cloned().collect();
        for resource in resources {
            // `resources` are the keys of `served`, and only `restart` runs in between (it keeps them).
            let served = &self.served[&resource];
            match &served.server {
                Some(live) if self.backend.socket_exists(&live.endpoint) => {
                    let endpoint = live.endpoint.clone();
                    self.backend.register(&resource, &endpoint);
                }
                _ => self.restart(&resource),
            }
        }
    }

    fn socket_removed(&mut self, name: &OsString) {
        let Some(name) = name.to_str() else { return };
        let hit = self.served.iter().find_map(|(r, s)| match &s.server {
            Some(live) if live.endpoint == name => Some(r.clone()),
            _ => None,
        });
        if let Some(resource) = hit {
            info!("{resource}: socket {name} was deleted; restarting its server");
            self.restart(&resource);
        }
    }

    fn health(&mut self, resource: &ResourceName, id: &InstanceId, healthy: bool, detail: &str) {
        if self.dra.is_some() {
            return self.dra_health(resource, id, healthy, detail);
        }
        let probed = match self.probes.get_mut(&(resource.clone(), id.clone())) {
            Some(p) => {
                p.seen = Some(detail.into());
                true
            }
            None => false,
        };
        let Some(served) = self.served.get_mut(resource).filter(|_| probed) else {
            debug!("{resource} {id}: health of a device no longer probed");
            return;
        };
        let changed = if healthy {
            served.unhealthy.remove(id)
        } else {
            served.unhealthy.insert(id.clone())
        };
        if !changed {
            debug!("{resource} {id}: probe: {detail}");
            return;
        }
        if healthy {
            info!("{resource} {id}: Healthy again ({detail})");
        } else {
            warn!("{resource} {id}: Unhealthy ({detail}); the kubelet stops counting it");
        }
        self.backend.notify(Notice {
            warning: !healthy,
            reason: if healthy {
                "DeviceHealthy"
            } else {
                "DeviceUnhealthy"
            },
            action: "Probe",
            note: format!(
                "node {}: {resource} device {:?} is {} ({detail})",
                self.node,
                id.as_str(),
                if healthy { "Healthy" } else { "Unhealthy" }
            ),
        });
        self.stats.health_changes += 1;
        push(resource, served);
    }

    fn watch(&mut self, resource: ResourceName, server: u64, stream: StreamSender) {
        let Some(served) = self.served.get_mut(&resource) else {
            debug!("{resource}: ListAndWatch on a retired server; closing it");
            return;
        };
        let Some(live) = served.server.as_mut().filter(|live| live.id == server) else {
            debug!("{resource}: ListAndWatch on replaced server {server}; closing it");
            return;
        };
        live.watched = true;
        live.orphaned = false;
        if stream.send(listing(served)).is_ok() {
            debug!(
                "{resource}: ListAndWatch stream opened ({} open)",
                served.streams.len() + 1
            );
            served.streams.push(stream);
        }
    }

    fn lease_report(&mut self, report: LeaseReport) {
        self.stats.leases_held = report.held_here as u64;
        self.stats.lease_acquisitions_won = report.won;
        self.stats.lease_acquisitions_lost = report.lost;
        self.held_here = report.mine;
        if report.held_elsewhere == self.held_elsewhere {
            return;
        }
        self.held_elsewhere = report.held_elsewhere;
        self.refresh_elsewhere();
    }

    /// Sets each resource's devices held elsewhere from the last report; pushes what changed.
    fn refresh_elsewhere(&mut self) {
        for (resource, served) in &mut self.served {
            let elsewhere: BTreeSet<InstanceId> = self
                .held_elsewhere
                .iter()
                .filter(|((r, id), _)| r == resource && served.devices.iter().any(|d| d.id == *id))
                .map(|((_, id), holder)| {
                    debug!("{resource} {id}: held by node {holder}");
                    id.clone()
                })
                .collect();
            if elsewhere != served.elsewhere {
                info!(
                    "{resource}: held by other nodes now: {}",
                    if elsewhere.is_empty() {
                        "none".to_owned()
                    } else {
                        elsewhere
                            .iter()
                            .map(InstanceId::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                );
                served.elsewhere = elsewhere;
                push(resource, served);
            }
        }
    }

    /// The registrar's outcome: counted, and the current endpoint marked registered.
    fn registered(
        &mut self,
        resource: &ResourceName,
        endpoint: &str,
        result: Result<(), RegisterError>,
    ) {
        let outcome = if result.is_ok() { "ok" } else { "error" };
        *self
            .stats
            .registrations
            .entry((resource.to_string(), outcome))
            .or_default() += 1;
        let live = self
            .served
            .get_mut(resource)
            .and_then(|s| s.server.as_mut())
            .filter(|live| live.endpoint == endpoint);
        match (live, result) {
            (Some(live), Ok(())) => {
                live.registered = true;
                info!("{resource}: registered with the kubelet as {endpoint}");
            }
            (Some(_), Err(e)) => {
                warn!("{resource}: registration as {endpoint} failed: {e}; retrying")
            }
            (None, _) => debug!("{resource}: registration result for stale {endpoint}"),
        }
    }

    /// Drops retired servers whose deadline passed.
    fn reap(&mut self, now: Instant) {
        self.retiring.retain(|(at, _)| *at > now);
    }

    /// The counters, and per resource its devices and whether it is registered.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = self.stats.clone();
        s.dra = self.dra.as_ref().map(|d| d.status.clone());
        s.configured = self.have_config;
        if s.source_problem.is_none() {
            if let Some(silent) = self.source.as_ref().and_then(|p| p.stalled(Instant::now())) {
                s.source_problem = Some(format!(
                    "no read of the config finished for {:?} (stuck in a system call?)",
                    Duration::from_secs(silent.as_secs())
                ));
            }
        }
        s.resources = self
            .served
            .iter()
            .map(|(r, served)| {
                let registered = served.server.as_ref().is_some_and(|l| l.registered);
                let unhealthy = served.unhealthy.len();
                let healthy = served.devices.len() - unhealthy;
                (r.to_string(), (healthy, unhealthy, registered))
            })
            .collect();
        s.devices = self
            .served
            .iter()
            .flat_map(|(r, served)| {
                served.devices.iter().map(move |d| {
                    let healthy = !served.unhealthy.contains(&d.id);
                    ((r.to_string(), d.id.to_string()), healthy)
                })
            })
            .collect();
        s.node = self.node.to_string();
        let key = |(r, id): &DeviceKey| (r.to_string(), id.to_string());
        s.probe_details = (self.probes.iter())
            .filter_map(|(k, p)| Some((key(k), p.seen.as_deref()?.to_owned())))
            .collect();
        s.lease_holders = (self.held_elsewhere.iter())
            .map(|(k, holder)| (key(k), holder.clone()))
            .chain(
                self.held_here
                    .iter()
                    .map(|k| (key(k), self.node.to_string())),
            )
            .collect();
        s
    }

    /// Resources served, with their endpoint and whether it is registered.
    #[cfg(test)]
    fn registrations(&self) -> BTreeMap<ResourceName, Option<(String, bool)>> {
        self.served
            .iter()
            .map(|(r, s)| {
                let live = s
                    .server
                    .as_ref()
                    .map(|l| (l.endpoint.clone(), l.registered));
                (r.clone(), live)
            })
            .collect()
    }
}

/// The resource's devices with their health, as ListAndWatch sends them.
fn listing<S>(served: &Served<S>) -> Listing {
    served
        .devices
        .iter()
        .map(|d| Listed {
            id: d.id.clone(),
            healthy: !served.unhealthy.contains(&d.id) && !served.elsewhere.contains(&d.id),
        })
        .collect()
}

/// Sends the current list on every open stream, dropping streams whose client went away.
fn push<S>(resource: &ResourceName, served: &mut Served<S>) {
    let before = served.streams.len();
    let list = listing(served);
    served.streams.retain(|s| s.send(list.clone()).is_ok());
    if served.streams.len() != before {
        debug!(
            "{resource}: dropped {} closed ListAndWatch streams",
            before - served.streams.len()
        );
    }
}

fn id_list(devices: &[Device]) -> String {
    if devices.is_empty() {
        return "no devices".to_owned();
    }
    let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
    ids.join(", ")
}

/// `+added -removed ~env-changed`, by instanceID.
fn difference(old: &[Device], new: &[Device]) -> String {
    let old: BTreeMap<&InstanceId, &Device> = old.iter().map(|d| (&d.id, d)).collect();
    let new: BTreeMap<&InstanceId, &Device> = new.iter().map(|d| (&d.id, d)).collect();
    let mut parts = Vec::new();
    for (id, d) in &new {
        match old.get(id) {
            None => parts.push(format!("+{id}")),
            Some(o) if o.env != d.env => parts.push(format!("~{id}")),
            Some(_) => {}
        }
    }
    parts.extend(
        old.keys()
            .filter(|id| !new.contains_key(*id))
            .map(|id| format!("-{id}")),
    );
    parts.join(" ")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigError;
    use crate::latest::{channel, Receiver};
    use futures_channel::oneshot;
    use msg::{AllocateError, ContainerEnv, LeaseRefusal};
    use std::cell::RefCell;
    use std::collections::BTreeSet;
    use std::rc::Rc;

    /// Records what the state thread asked for.
    #[derive(Default)]
    struct Log {
        started: Vec<(String, u64)>,
        stopped: Vec<String>,
        registered: Vec<(String, String)>,
        forgotten: Vec<String>,
        sockets: BTreeSet<String>,
        kubelet: Option<u64>,
        fail_start: bool,
        probes: Vec<ProbeSet>,
        served: Vec<Vec<String>>,
        exclusive: bool,
        leases: Vec<LeaseCmd>,
        notices: Vec<Notice>,
    }

    struct FakeBackend(Rc<RefCell<Log>>);
    struct FakeServer(Rc<RefCell<Log>>, String);

    impl Drop for FakeServer {
        fn drop(&mut self) {
            let mut log = self.0.borrow_mut();
            log.stopped.push(self.1.clone());
            log.sockets.remove(&self.1);
        }
    }

    impl Backend for FakeBackend {
        type Server = FakeServer;
        type Error = String;
        fn start(&mut self, r: &ResourceName, id: u64) -> Result<(FakeServer, String), String> {
            let mut log = self.0.borrow_mut();
            if log.fail_start {
                return Err("bind failed".into());
            }
            let endpoint = format!("spookd-{id}.sock");
            log.started.push((r.to_string(), id));
            log.sockets.insert(endpoint.clone());
            Ok((FakeServer(self.0.clone(), endpoint.clone()), endpoint))
        }
        fn register(&mut self, r: &ResourceName, endpoint: &str) {
            self.0
                .borrow_mut()
                .registered
                .push((r.to_string(), endpoint.to_owned()));
        }
        fn forget(&mut self, r: &ResourceName) {
            self.0.borrow_mut().forgotten.push(r.to_string());
        }
        fn socket_exists(&self, endpoint: &str) -> bool {
            self.0.borrow().sockets.contains(endpoint)
        }
        fn kubelet_socket(&self) -> Option<u64> {
            self.0.borrow().kubelet
        }
        fn set_probes(&mut self, probes: ProbeSet) {
            self.0.borrow_mut().probes.push(probes);
        }
        fn served(&mut self, resources: BTreeSet<ResourceName>) {
            let names = resources.iter().map(ToString::to_string).collect();
            self.0.borrow_mut().served.push(names);
        }
        fn notify(&mut self, notice: Notice) {
            self.0.borrow_mut().notices.push(notice);
        }
        fn exclusive(&self) -> bool {
            self.0.borrow().exclusive
        }
        fn leases(&mut self, cmd: LeaseCmd) {
            self.0.borrow_mut().leases.push(cmd);
        }
    }

    fn setup() -> (State<FakeBackend>, Rc<RefCell<Log>>, Instant) {
        let log = Rc::new(RefCell::new(Log {
            kubelet: Some(1),
            ..Log::default()
        }));
        let now = Instant::now();
        let node = NodeName::try_from("n1".to_owned()).unwrap();
        (State::new(node, FakeBackend(log.clone()), now), log, now)
    }

    fn config(yaml: &str) -> Msg {
        Msg::Config {
            origin: "t".into(),
            config: Config::parse(yaml.as_bytes(), "t").unwrap(),
        }
    }

    fn res(s: &str) -> ResourceName {
        ResourceName::try_from(s.to_owned()).unwrap()
    }

    fn ids(l: &Listing) -> Vec<&str> {
        l.iter().map(|d| d.id.as_str()).collect()
    }

    fn drain(rx: &mut Receiver<Listing>) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        while let Some(l) = rx.newest() {
            out.push(ids(&l).into_iter().map(str::to_owned).collect());
        }
        out
    }

    fn watch(
        state: &mut State<FakeBackend>,
        r: &str,
        server: u64,
        now: Instant,
    ) -> Receiver<Listing> {
        let (tx, rx) = channel();
        state.handle(
            Msg::Watch {
                resource: res(r),
                server,
                stream: tx,
            },
            now,
        );
        rx
    }

    const TWO: &str = "deviceMapping:\n- hosts: [n1]\n  devices:\n  - {resourceName: a.io/x, instanceID: \"1\"}\n  - {resourceName: b.io/y, instanceID: \"9\"}\n";

    #[test]
    fn config_starts_and_registers_each_resource() {
        let (mut s, log, now) = setup();
        s.handle(config(TWO), now);
        let log = log.borrow();
        assert_eq!(log.started, [("a.io/x".into(), 0), ("b.io/y".into(), 1)]);
        assert_eq!(
            log.registered,
            [
                ("a.io/x".into(), "spookd-0.sock".into()),
                ("b.io/y".into(), "spookd-1.sock".into())
            ]
        );
    }

    #[test]
    fn watch_gets_current_list_then_changes_and_removal() {
        let (mut s, log, now) = setup();
        s.handle(config(TWO), now);
        let mut rx = watch(&mut s, "a.io/x", 0, now);
        assert_eq!(drain(&mut rx), [["1"]]);
        s.handle(config("deviceMapping:\n- hosts: [n1]\n  devices:\n  - {resourceName: a.io/x, instanceID: \"2\"}\n  - {resourceName: a.io/x, instanceID: \"1\"}\n  - {resourceName: b.io/y, instanceID: \"9\"}\n"), now);
        assert_eq!(drain(&mut rx), [["1", "2"]]);
        // Same again: nothing pushed, nothing restarted.
        let started = log.borrow().started.len();
        s.handle(config("deviceMapping:\n- hosts: [n1]\n  devices:\n  - {resourceName: a.io/x, instanceID: \"1\"}\n  - {resourceName: a.io/x, instanceID: \"2\"}\n  - {resourceName: b.io/y, instanceID: \"9\"}\n"), now);
        assert!(drain(&mut rx).is_empty());
        assert_eq!(log.borrow().started.len(), started);
        // Removal: an empty list first, the server stops after the grace.
        s.handle(config("deviceMapping:\n- hosts: [n1]\n  devices:\n  - {resourceName: b.io/y, instanceID: \"9\"}\n"), now);
        assert_eq!(drain(&mut rx), [Vec::<String>::new()]);
        assert!(log.borrow().stopped.is_empty());
        assert_eq!(log.borrow().forgotten, ["a.io/x"]);
        s.tick(now + RETIRE_GRACE + Duration::from_millis(1));
        assert_eq!(log.borrow().stopped, ["spookd-0.sock"]);
        assert!(rx.is_closed(), "stream must end");
    }

    #[test]
    fn invalid_config_keeps_the_last_good_one() {
        let (mut s, log, now) = setup();
        s.handle(config(TWO), now);
        let err = Config::parse(b"deviceMapping: [", "t").unwrap_err();
        s.handle(Msg::ConfigInvalid(err), now);
        assert_eq!(s.registrations().len(), 2);
        assert!(log.borrow().stopped.is_empty());
    }

    #[test]
    fn allocate_renders_env_and_refuses_unknown_ids() {
        let (mut s, _log, now) = setup();
        s.handle(config(TWO), now);
        let call = |s: &mut State<FakeBackend>, r: &str, ids: &[&str]| {
            let (tx, mut rx) = oneshot::channel();
            s.handle(
                Msg::Allocate {
                    resource: res(r),
                    containers: vec![ids.iter().map(|s| s.to_string()).collect()],
                    reply: tx,
                },
                now,
            );
            rx.try_recv().unwrap().unwrap()
        };
        let env = call(&mut s, "a.io/x", &["1"]).unwrap();
        assert_eq!(env[0]["AIO_X_ID"], "1");
        assert_eq!(env[0]["AIO_X_NUM_DEVICES"], "1");
        assert_eq!(
            call(&mut s, "a.io/x", &["7"]),
            Err(AllocateError::UnknownDevice {
                resource: res("a.io/x"),
                id: "7".into()
            })
        );
        assert_eq!(
            call(&mut s, "a.io/x", &["1", "1"]),
            Err(AllocateError::DuplicateDevice {
                resource: res("a.io/x"),
                id: "1".into()
            })
        );
        assert_eq!(
            call(&mut s, "a.io/x", &[]),
            Err(AllocateError::NoDevices {
                resource: res("a.io/x")
            })
        );
        assert_eq!(
            call(&mut s, "c.io/z", &["1"]),
            Err(AllocateError::NotServed {
                resource: res("c.io/z")
            })
        );
    }

    #[test]
    fn kubelet_restart_restarts_wiped_servers_and_reregisters_all() {
        let (mut s, log, now) = setup();
        s.handle(config(TWO), now);
        let mut old = watch(&mut s, "a.io/x", 0, now);
        drain(&mut old);
        // The kubelet wipes a.io/x's socket only.
        log.borrow_mut().sockets.remove("spookd-0.sock");
        s.handle(Msg::KubeletStarted, now);
        let l = log.borrow();
        assert_eq!(l.started.last().unwrap(), &("a.io/x".to_string(), 2));
        assert_eq!(
            l.registered[2..],
            [
                ("a.io/x".into(), "spookd-2.sock".into()),
                ("b.io/y".into(), "spookd-1.sock".into())
            ]
        );
        drop(l);
        // The old server is dropped right after (deadline now), and its stream ended.
        s.tick(Instant::now());
        assert!(log.borrow().stopped.contains(&"spookd-0.sock".to_string()));
        assert!(old.is_closed());
        // A watch on the replaced server is closed; on the new one it gets the list.
        let stale = watch(&mut s, "a.io/x", 0, now);
        assert!(stale.is_closed());
        let mut fresh = watch(&mut s, "a.io/x", 2, now);
        assert_eq!(drain(&mut fresh), [["1"]]);
    }

    #[test]
    fn own_socket_deleted_restarts_only_that_server() {
        let (mut s, log, now) = setup();
        s.handle(config(TWO), now);
        s.handle(Msg::SocketRemoved("spookd-1.sock".into()), now);
        s.handle(Msg::SocketRemoved("someone-else.sock".into()), now);
        assert_eq!(log.borrow().started.len(), 3);
        assert_eq!(log.borrow().started[2], ("b.io/y".to_string(), 2));
    }

    #[test]
    fn fallback_check_sees_a_new_kubelet_and_missing_sockets() {
        let (mut s, log, now) = setup();
        s.handle(config(TWO), now);
        log.borrow_mut().kubelet = Some(2);
        s.tick(now + FALLBACK_CHECK);
        assert_eq!(log.borrow().registered.len(), 4);
        log.borrow_mut().sockets.remove("spookd-1.sock");
        s.tick(now + FALLBACK_CHECK * 2);
        assert_eq!(log.borrow().started.len(), 3);
        // Before the period is over nothing is checked.
        log.borrow_mut().sockets.clear();
        s.tick(now + FALLBACK_CHECK * 2 + Duration::from_millis(10));
        assert_eq!(log.borrow().started.len(), 3);
    }

    #[test]
    fn a_registered_resource_whose_streams_all_closed_registers_again() {
        let (mut s, log, now) = setup();
        s.handle(config(TWO), now);
        s.handle(
            Msg::Registered {
                resource: res("a.io/x"),
                endpoint: "spookd-0.sock".into(),
                result: Ok(()),
            },
            now,
        );
        let rx = watch(&mut s, "a.io/x", 0, now);
        let registered = log.borrow().registered.len();
        // b.io/y was never watched (nor registered): left alone. a.io/x's stream is open.
        s.tick(now + FALLBACK_CHECK);
        s.tick(now + FALLBACK_CHECK * 2);
        assert_eq!(log.borrow().registered.len(), registered);
        drop(rx);
        // Seen once: it may be reopening. Seen again at the next check: registered again.
        s.tick(now + FALLBACK_CHECK * 3);
        assert_eq!(log.borrow().registered.len(), registered);
        s.tick(now + FALLBACK_CHECK * 4);
        let log = log.borrow();
        assert_eq!(log.registered.len(), registered + 1);
        assert_eq!(
            log.registered.last().unwrap(),
            &("a.io/x".into(), "spookd-0.sock".into())
        );
        assert_eq!(log.forgotten.last().unwrap(), "a.io/x");
        assert_eq!(s.snapshot().reregistrations, 1);
        assert_eq!(
            s.registrations()[&res("a.io/x")],
            Some(("spookd-0.sock".into(), false))
        );
    }

    #[test]
    fn a_silent_source_shows_in_the_snapshot() {
        let (mut s, _log, now) = setup();
        s.handle(config(TWO), now);
        assert_eq!(s.snapshot().source_problem, None);
        let progress = Progress::new(Duration::ZERO);
        s.handle(Msg::SourceProgress(progress.clone()), now);
        std::thread::sleep(Duration::from_millis(5));
        let problem = s.snapshot().source_problem.unwrap();
        assert!(
            problem.starts_with("no read of the config finished for"),
            "{problem}"
        );
        // A read error names itself instead.
        let err = ConfigError::NotRegular {
            path: "/c".into(),
            kind: "a FIFO",
        };
        s.handle(Msg::ConfigInvalid(err), now);
        assert_eq!(
            s.snapshot().source_problem.as_deref(),
            Some("cannot read config /c: it is a FIFO, not a regular file")
        );
    }

    #[test]
    fn failed_start_is_retried_by_the_check() {
        let (mut s, log, now) = setup();
        log.borrow_mut().fail_start = true;
        s.handle(config(TWO), now);
        assert_eq!(s.registrations()[&res("a.io/x")], None);
        log.borrow_mut().fail_start = false;
        s.tick(now + FALLBACK_CHECK);
        assert_eq!(
            s.registrations()[&res("a.io/x")],
            // Numbers 0 and 1 went to the failed starts.
            Some(("spookd-2.sock".into(), false))
        );
    }

    #[test]
    fn registered_marks_only_the_current_endpoint() {
        let (mut s, _log, now) = setup();
        s.handle(config(TWO), now);
        let reg = |endpoint: &str| Msg::Registered {
            resource: res("a.io/x"),
            endpoint: endpoint.into(),
            result: Ok(()),
        };
        s.handle(reg("spookd-old.sock"), now);
        assert_eq!(
            s.registrations()[&res("a.io/x")],
            Some(("spookd-0.sock".into(), false))
        );
        s.handle(reg("spookd-0.sock"), now);
        assert_eq!(
            s.registrations()[&res("a.io/x")],
            Some(("spookd-0.sock".into(), true))
        );
    }

    #[test]
    fn snapshot_counts_reloads_allocations_and_registrations() {
        let (mut s, _log, now) = setup();
        assert!(!s.snapshot().configured);
        s.handle(config(TWO), now);
        let err = Config::parse(b"deviceMapping: [", "t").unwrap_err();
        s.handle(Msg::ConfigInvalid(err), now);
        s.handle(
            Msg::Registered {
                resource: res("a.io/x"),
                endpoint: "spookd-0.sock".into(),
                result: Ok(()),
            },
            now,
        );
        for ids in [vec!["1".to_string()], vec!["9".to_string()]] {
            let (tx, _rx) = oneshot::channel();
            let msg = Msg::Allocate {
                resource: res("a.io/x"),
                containers: vec![ids],
                reply: tx,
            };
            s.handle(msg, now);
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        s.handle(Msg::Snapshot { reply: tx }, now);
        let snap = rx.try_recv().unwrap();
        assert!(snap.configured);
        assert_eq!((snap.reloads_ok, snap.reloads_error), (1, 1));
        assert!(snap.last_reload_success.is_some());
        assert_eq!(snap.resources["a.io/x"], (1, 0, true));
        assert_eq!(snap.resources["b.io/y"], (1, 0, false));
        assert_eq!(snap.allocations[&("a.io/x".to_string(), "ok")], 1);
        assert_eq!(snap.allocations[&("a.io/x".to_string(), "error")], 1);
        assert_eq!(snap.registrations[&("a.io/x".to_string(), "ok")], 1);
    }

    fn listed(l: &Listing) -> Vec<(String, bool)> {
        l.iter().map(|d| (d.id.to_string(), d.healthy)).collect()
    }

    fn health(r: &str, id: &str, healthy: bool) -> Msg {
        Msg::Health {
            resource: res(r),
            id: InstanceId::try_from(id.to_owned()).unwrap(),
            healthy,
            detail: "test".into(),
        }
    }

    const PROBED: &str = "deviceMapping:\n- hosts: [n1]\n  devices:\n  - {resourceName: a.io/x, instanceID: \"1\", healthCheck: {tcp: \"127.0.0.1:7\"}}\n  - {resourceName: a.io/x, instanceID: \"2\"}\n";

    #[test]
    fn operators_are_told_of_refused_and_applied_configs_and_health_changes() {
        let (mut s, log, now) = setup();
        s.handle(config(PROBED), now);
        let err = Config::parse(b"deviceMapping: [", "t").unwrap_err();
        let text = err.to_string();
        s.handle(Msg::ConfigInvalid(err), now);
        s.handle(health("a.io/x", "1", false), now);
        s.handle(health("a.io/x", "1", false), now);
        s.handle(health("a.io/x", "1", true), now);
        let seen: Vec<(bool, &str, &str, String)> = log
            .borrow()
            .notices
            .iter()
            .map(|n| (n.warning, n.reason, n.action, n.note.clone()))
            .collect();
        assert_eq!(
            seen,
            [
                (
                    false,
                    "ConfigApplied",
                    "Apply",
                    "node n1 applied the config from t: 1 resources, 2 devices (a.io/x: 2)".into()
                ),
                (
                    true,
                    "InvalidConfig",
                    "Reject",
                    format!("node n1: {text}; the last good config stays")
                ),
                (
                    true,
                    "DeviceUnhealthy",
                    "Probe",
                    "node n1: a.io/x device \"1\" is Unhealthy (test)".into()
                ),
                (
                    false,
                    "DeviceHealthy",
                    "Probe",
                    "node n1: a.io/x device \"1\" is Healthy (test)".into()
                ),
            ]
        );
    }

    #[test]
    fn health_changes_are_pushed_and_only_for_probed_devices() {
        let (mut s, log, now) = setup();
        s.handle(config(PROBED), now);
        let probes = log.borrow().probes.clone();
        assert_eq!(probes.len(), 1);
        let keys: Vec<String> = probes[0]
            .iter()
            .map(|((r, id), c)| format!("{r} {id} {}", c.tcp))
            .collect();
        assert_eq!(keys, ["a.io/x 1 127.0.0.1:7"]);
        let mut rx = watch(&mut s, "a.io/x", 0, now);
        let both = |one: bool, other: &str| vec![("1".to_string(), one), (other.to_string(), true)];
        assert_eq!(listed(&rx.newest().unwrap()), both(true, "2"));
        s.handle(health("a.io/x", "1", false), now);
        assert_eq!(listed(&rx.newest().unwrap()), both(false, "2"));
        // The same again: nothing pushed. An unprobed device's report is ignored.
        s.handle(health("a.io/x", "1", false), now);
        s.handle(health("a.io/x", "2", false), now);
        assert!(rx.newest().is_none());
        assert_eq!(s.snapshot().resources["a.io/x"], (1, 1, false));
        assert!(!s.snapshot().devices[&("a.io/x".to_string(), "1".to_string())]);
        assert_eq!(s.snapshot().health_changes, 1);
        // What the probe saw is kept for the probed device only.
        let details = |s: &State<FakeBackend>| {
            let d = s.snapshot().probe_details;
            d.into_iter()
                .map(|((r, id), d)| format!("{r} {id}: {d}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(details(&s), ["a.io/x 1: test"]);
        // A reload that keeps the probe keeps the health, and what the probe saw, and sends no
        // new probe set.
        s.handle(config(&PROBED.replace("\"2\"}", "\"3\"}")), now);
        assert_eq!(listed(&rx.newest().unwrap()), both(false, "3"));
        assert_eq!(log.borrow().probes.len(), 1);
        assert_eq!(details(&s), ["a.io/x 1: test"]);
        // Allocate of an Unhealthy device still answers.
        let mut answer = allocate(&mut s, &["1"], now);
        assert!(answer.try_recv().unwrap().unwrap().is_ok());
        // Dropping the healthCheck: Healthy at once, and the prober is told.
        s.handle(
            config(&PROBED.replace(", healthCheck: {tcp: \"127.0.0.1:7\"}", "")),
            now,
        );
        assert_eq!(log.borrow().probes.len(), 2);
        assert!(log.borrow().probes[1].is_empty());
        assert!(details(&s).is_empty());
        assert_eq!(listed(&rx.newest().unwrap()), both(true, "2"));
        s.handle(health("a.io/x", "1", false), now);
        assert!(rx.newest().is_none(), "no longer probed");
        // Probed again, then moved to another target: what it saw of the old one is forgotten.
        s.handle(config(PROBED), now);
        s.handle(health("a.io/x", "1", false), now);
        assert_eq!(details(&s), ["a.io/x 1: test"]);
        s.handle(config(&PROBED.replace("127.0.0.1:7", "127.0.0.1:8")), now);
        assert!(details(&s).is_empty());
    }

    const SHARED: &str = "deviceMapping:\n- hosts: [n1, n2]\n  devices:\n  - {resourceName: a.io/x, instanceID: \"1\"}\n- hosts: [n1]\n  devices:\n  - {resourceName: a.io/x, instanceID: \"2\"}\n";

    fn allocate(
        s: &mut State<FakeBackend>,
        ids: &[&str],
        now: Instant,
    ) -> oneshot::Receiver<Result<Vec<ContainerEnv>, AllocateError>> {
        let (reply, answer) = oneshot::channel();
        let containers = vec![ids.iter().map(|s| s.to_string()).collect()];
        s.handle(
            Msg::Allocate {
                resource: res("a.io/x"),
                containers,
                reply,
            },
            now,
        );
        answer
    }

    #[test]
    fn shared_devices_wait_for_their_leases_and_are_unhealthy_when_held_elsewhere() {
        let (mut s, log, now) = setup();
        log.borrow_mut().exclusive = true;
        s.handle(config(SHARED), now);
        let key = (res("a.io/x"), InstanceId::try_from("1".to_owned()).unwrap());
        assert!(
            matches!(&log.borrow().leases[..], [LeaseCmd::Shared(set)] if set.iter().eq([&key]))
        );
        // Device 2 is this node's alone: answered at once, no Lease.
        let mut answer = allocate(&mut s, &["2"], now);
        assert!(answer.try_recv().unwrap().unwrap().is_ok());
        assert_eq!(log.borrow().leases.len(), 1);
        // Device 1 is shared: parked until its Lease is taken.
        let mut answer = allocate(&mut s, &["1"], now);
        assert_eq!(answer.try_recv().unwrap(), None);
        let request = match log.borrow().leases.last().unwrap() {
            LeaseCmd::Acquire { request, devices } => {
                assert_eq!(devices, std::slice::from_ref(&key));
                *request
            }
            other => panic!("{other:?}"),
        };
        s.handle(
            Msg::LeasesTaken {
                request,
                result: Ok(()),
            },
            now,
        );
        let envs = answer.try_recv().unwrap().unwrap().unwrap();
        assert_eq!(envs[0]["AIO_X_ID"], "1");
        // Refused: the Allocate fails naming the holder.
        let mut answer = allocate(&mut s, &["1", "2"], now);
        let refusal = LeaseRefusal::HeldBy {
            device: key.clone(),
            holder: "n2".into(),
            lease: "spookd-a.io.x-2".into(),
        };
        s.handle(
            Msg::LeasesTaken {
                request: request + 1,
                result: Err(refusal.clone()),
            },
            now,
        );
        assert_eq!(
            answer.try_recv().unwrap().unwrap(),
            Err(AllocateError::Lease(refusal))
        );
        // Held by n2: advertised Unhealthy here until released.
        let mut rx = watch(&mut s, "a.io/x", 0, now);
        rx.newest();
        let report = |held: &[(DeviceKey, &str)]| LeaseReport {
            held_elsewhere: held
                .iter()
                .map(|(k, h)| (k.clone(), h.to_string()))
                .collect(),
            held_here: 1,
            mine: BTreeSet::new(),
            won: 1,
            lost: 1,
        };
        s.handle(Msg::Leases(report(&[(key.clone(), "n2")])), now);
        assert_eq!(
            listed(&rx.newest().unwrap()),
            [("1".to_string(), false), ("2".to_string(), true)]
        );
        let snap = s.snapshot();
        assert_eq!(
            (
                snap.leases_held,
                snap.lease_acquisitions_won,
                snap.lease_acquisitions_lost
            ),
            (1, 1, 1)
        );
        assert_eq!(snap.allocations[&("a.io/x".to_string(), "error")], 1);
        s.handle(Msg::Leases(report(&[])), now);
        assert_eq!(
            listed(&rx.newest().unwrap()),
            [("1".to_string(), true), ("2".to_string(), true)]
        );
    }

    #[test]
    fn without_exclusive_leases_shared_devices_are_answered_at_once() {
        let (mut s, log, now) = setup();
        s.handle(config(SHARED), now);
        let mut answer = allocate(&mut s, &["1"], now);
        assert!(answer.try_recv().unwrap().unwrap().is_ok());
        assert!(log.borrow().leases.is_empty());
    }

    #[test]
    fn difference_names_added_changed_and_removed_devices() {
        let c = |yaml: &str| {
            let n = NodeName::try_from("n1".to_owned()).unwrap();
            let c = Config::parse(yaml.as_bytes(), "t").unwrap();
            c.for_node(&n).pop_first().unwrap().1
        };
        let old = c("deviceMapping:\n- hosts: [n1]\n  devices:\n  - {resourceName: a.io/x, instanceID: \"1\"}\n  - {resourceName: a.io/x, instanceID: \"2\", env: {K: a}}\n  - {resourceName: a.io/x, instanceID: \"3\"}\n");
        let new = c("deviceMapping:\n- hosts: [n1]\n  devices:\n  - {resourceName: a.io/x, instanceID: \"2\", env: {K: b}}\n  - {resourceName: a.io/x, instanceID: \"3\"}\n  - {resourceName: a.io/x, instanceID: \"4\"}\n");
        assert_eq!(difference(&old, &new), "~2 +4 -1");
    }

    #[test]
    fn the_served_names_are_announced_on_the_first_config_and_each_change() {
        let (mut s, log, now) = setup();
        s.handle(config("deviceMapping: []"), now);
        s.handle(config(TWO), now);
        // The same names with other devices: nothing new to announce.
        s.handle(config(&TWO.replace("\"9\"", "\"8\"")), now);
        s.handle(
            config(&TWO.replace("  - {resourceName: b.io/y, instanceID: \"9\"}\n", "")),
            now,
        );
        assert_eq!(
            log.borrow().served,
            [
                vec![],
                vec!["a.io/x".to_string(), "b.io/y".to_string()],
                vec!["a.io/x".to_string()]
            ]
        );
    }

    #[test]
    fn node_in_no_mapping_serves_nothing_and_shutdown_stops_all() {
        let (mut s, log, now) = setup();
        s.handle(config(TWO), now);
        s.handle(config("deviceMapping:\n- hosts: [other]\n  devices:\n  - {resourceName: a.io/x, instanceID: \"1\"}\n"), now);
        assert!(s.registrations().is_empty());
        s.handle(config(TWO), now);
        assert_eq!(s.handle(Msg::Shutdown, now), Flow::Stop);
        s.shutdown();
        assert!(log.borrow().sockets.is_empty());
    }
}
