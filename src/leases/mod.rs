//! `--exclusive-leases`: a device mapped to several hosts is held by at most one node at a time.
//!
//! The `spookd-lease` thread owns this node's side of the Lease protocol ([`crate::leases::protocol`]) and
//! talks to the state thread only through messages:
//!
//! 1. After each config the state thread sends the shared devices it serves ([`LeaseCmd::Shared`]).
//! 2. An Allocate naming a shared device is parked by the state thread, which asks for its Leases
//!    ([`LeaseCmd::Acquire`]); this thread acquires them all or none (releasing the ones it got)
//!    and answers [`Msg::LeasesTaken`]; only then is the Allocate answered.
//! 3. Every third of the Lease duration it renews what it holds; a renewal refused because the
//!    Lease moved means the device was lost (logged and counted).
//! 4. The `spookd-lease-watch` thread lists spookd's Leases and watches them from the list's
//!    version ([`Seen`]); every version seen is an observation for the expiry rule, and a shared
//!    device held by a live other node is reported ([`Msg::Leases`]) at once, so the state thread
//!    advertises it Unhealthy here. Expiry needs no event: what the watch showed is re-judged every
//!    quarter of the duration (at most 5 s). When the watch loses the API nothing expires, and
//!    every expiry clock starts again once it lists again: holders could not renew through the
//!    outage either (and a holder whose renewal failed retries within a tenth of the duration).
//! 5. It reads the kubelet's podresources List; a Lease whose device no container on this node has
//!    been assigned for [`release_grace`] is released. When podresources cannot be read, nothing is
//!    released (a held device stays held and renewed), and that is logged.
//! 6. At start, Leases this node already holds (spookd restarted under running pods) are adopted:
//!    renewed, and released like any other once unassigned.

pub mod protocol;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::clock::later;
use crate::config::NodeName;
use crate::kube::client::ApiError;
use crate::kube::client::Connection;
use crate::kube::watch::{self, Events, Failure, Observer, Phase, Policy, WatchApi};
use crate::kubelet::podresources::{self, Assigned};
use crate::leases::protocol::{
    acquire, lease_name, release, renew, Acquired, HttpLeaseApi, Lease, LeaseApi, Observations,
};
use crate::state::msg::{DeviceKey, LeaseCmd, LeaseRefusal, LeaseReport, Msg};
use crate::worker::Worker;

/// What `--exclusive-leases` needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseOptions {
    pub conn: Connection,
    /// `None`: the namespace of spookd's ServiceAccount, read at start.
    pub namespace: Option<String>,
    pub duration: Duration,
    pub pod_resources_socket: PathBuf,
}

/// What the Lease watch saw.
#[derive(Debug)]
pub enum Seen {
    /// A full list.
    All(Vec<Lease>),
    /// A Lease created or changed.
    Put(Lease),
    /// A Lease deleted.
    Deleted(String),
    /// The API could not be read: what was known may be stale.
    Lost,
}

/// How long a held device may stay unassigned to any container before its Lease is released:
/// the kubelet records an assignment right after Allocate, and a pod may be slow to start.
pub fn release_grace(duration: Duration) -> Duration {
    duration.clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// One Lease this node holds.
#[derive(Debug)]
struct Held {
    lease: Lease,
    device: Option<DeviceKey>,
    /// Start of the last successful acquire or renewal.
    renewed: Instant,
    /// Since when podresources shows no container with the device.
    unassigned_since: Option<Instant>,
}

/// The keeper's decisions, over any [`LeaseApi`] and podresources reader (tested without a
/// server).
pub struct Keeper {
    me: String,
    duration: Duration,
    shared: BTreeMap<String, DeviceKey>,
    /// spookd's Leases as the watch last showed them.
    known: BTreeMap<String, Lease>,
    /// Since the watch lost the API and until it lists again: nothing expires.
    api_down: bool,
    held: BTreeMap<String, Held>,
    seen: Observations,
    held_by_others: BTreeMap<DeviceKey, String>,
    reported: Option<LeaseReport>,
    next_renew: Instant,
    next_list: Instant,
    next_release: Instant,
    /// Whether the last podresources read failed (logged once per outage).
    pod_resources_failing: bool,
    won: u64,
    lost: u64,
}

impl Keeper {
    pub fn new(me: &NodeName, duration: Duration, now: Instant) -> Self {
        Keeper {
            me: me.to_string(),
            duration,
            shared: BTreeMap::new(),
            known: BTreeMap::new(),
            api_down: false,
            held: BTreeMap::new(),
            seen: Observations::default(),
            held_by_others: BTreeMap::new(),
            reported: None,
            next_renew: later(now, duration / 3),
            next_list: now,
            next_release: later(now, release_grace(duration) / 2),
            pod_resources_failing: false,
            won: 0,
            lost: 0,
        }
    }

    fn list_interval(&self) -> Duration {
        (self.duration / 4).min(Duration::from_secs(5))
    }

    /// When periodic work is next due.
    pub fn deadline(&self) -> Instant {
        self.next_renew.min(self.next_list).min(self.next_release)
    }

    pub fn shared(&mut self, devices: BTreeSet<DeviceKey>) {
        self.shared = devices
            .into_iter()
            .map(|(r, id)| (lease_name(&r, &id), (r, id)))
            .collect();
        // Leases adopted before the config was known learn their device now, so a running
        // container keeps them.
        for (name, held) in &mut self.held {
            if held.device.is_none() {
                held.device = self.shared.get(name).cloned();
            }
        }
    }

    /// Acquires every device's Lease, or none.
    pub fn acquire(
        &mut self,
        api: &mut dyn LeaseApi,
        devices: &[DeviceKey],
        now: Instant,
    ) -> Result<(), LeaseRefusal> {
        let mut taken: Vec<String> = Vec::new();
        for device in devices {
            let name = lease_name(&device.0, &device.1);
            let start = Instant::now();
            let refusal = match acquire(api, &mut self.seen, &name, &self.me, self.duration, now) {
                Ok(Acquired::Won(lease)) => {
                    info!("{} {}: Lease {name} taken", device.0, device.1);
                    self.known.insert(name.clone(), lease.clone());
                    self.held.insert(
                        name.clone(),
                        Held {
                            lease,
                            device: Some(device.clone()),
                            renewed: start,
                            unassigned_since: None,
                        },
                    );
                    taken.push(name);
                    continue;
                }
                Ok(Acquired::HeldBy(holder)) => LeaseRefusal::HeldBy {
                    device: device.clone(),
                    holder,
                    lease: name,
                },
                Err(e) => LeaseRefusal::Unavailable {
                    device: device.clone(),
                    reason: e.to_string(),
                    lease: name,
                },
            };
            self.lost += 1;
            // All or none: give back what this request took.
            for name in taken {
                self.known.remove(&name);
                if let Some(h) = self.held.remove(&name) {
                    if let Err(e) = release(api, &h.lease, &self.me) {
                        warn!("Lease {name}: release after a refused Allocate failed: {e}");
                    }
                }
            }
            return Err(refusal);
        }
        self.won += taken.len() as u64;
        Ok(())
    }

    /// The periodic work due at `now`.
    pub fn tick(
        &mut self,
        api: &mut dyn LeaseApi,
        pod_resources: &mut dyn FnMut() -> Result<Assigned, String>,
        now: Instant,
    ) {
        if now >= self.next_renew {
            self.next_renew = later(now, self.duration / 3);
            self.renew_all(api, now);
        }
        if now >= self.next_list {
            // Expiry needs no event: re-judge what the watch last showed.
            self.next_list = later(now, self.list_interval());
            self.evaluate(now);
        }
        if now >= self.next_release {
            self.next_release = later(now, release_grace(self.duration) / 2);
            self.release_unassigned(api, pod_resources, now);
        }
    }

    fn renew_all(&mut self, api: &mut dyn LeaseApi, now: Instant) {
        let me = self.me.clone();
        let mut lost = Vec::new();
        let mut failed = false;
        for (name, held) in &mut self.held {
            let start = Instant::now();
            match renew(api, &held.lease, &me) {
                Ok(Some(lease)) => {
                    self.known.insert(name.clone(), lease.clone());
                    held.lease = lease;
                    held.renewed = start;
                }
                Ok(None) => lost.push(name.clone()),
                Err(e) => {
                    warn!("Lease {name}: renewal failed: {e}; still held here, retrying soon");
                    failed = true;
                }
            }
        }
        if failed {
            // Renew as soon as the API answers again, well inside the others' expiry clocks.
            self.next_renew = later(now, (self.duration / 10).max(Duration::from_millis(200)));
        }
        for name in lost {
            error!("Lease {name}: lost (another node took it over: it was not renewed in time)");
            self.held.remove(&name);
            // What the watch showed of it is stale (it still names us): wait for its news.
            self.known.remove(&name);
            self.lost += 1;
        }
    }

    /// What the Lease watch saw.
    pub fn seen(&mut self, seen: Seen, now: Instant) {
        match seen {
            Seen::All(leases) => {
                if self.api_down {
                    // The API answers again: every expiry clock starts now.
                    self.seen = Observations::default();
                    self.api_down = false;
                }
                let names: BTreeSet<&String> = leases.iter().map(|l| &l.name).collect();
                let gone: Vec<String> = self
                    .known
                    .keys()
                    .filter(|n| !names.contains(n))
                    .cloned()
                    .collect();
                for name in gone {
                    self.seen.forget(&name);
                }
                for lease in &leases {
                    self.seen.see(lease, now);
                }
                self.known = leases.into_iter().map(|l| (l.name.clone(), l)).collect();
            }
            Seen::Put(lease) => {
                self.seen.see(&lease, now);
                self.known.insert(lease.name.clone(), lease);
            }
            Seen::Deleted(name) => {
                self.known.remove(&name);
                self.seen.forget(&name);
            }
            Seen::Lost => {
                // While the API cannot be reached, holders cannot renew either: nothing expires
                // until it answers, and then every clock starts again, so a holder gets a whole
                // duration to renew. What was known stays in force meanwhile.
                self.api_down = true;
            }
        }
        self.evaluate(now);
    }

    /// Adopts this node's own Leases and finds the shared devices other live nodes hold.
    fn evaluate(&mut self, now: Instant) {
        let mut held_by_others = BTreeMap::new();
        for lease in self.known.values() {
            match lease.holder.as_deref() {
                // Ours from before a restart: keep renewing it until it is unassigned.
                Some(h) if h == self.me && !self.held.contains_key(&lease.name) => {
                    info!(
                        "Lease {}: held by this node already; adopting it",
                        lease.name
                    );
                    self.held.insert(
                        lease.name.clone(),
                        Held {
                            lease: lease.clone(),
                            device: self.shared.get(&lease.name).cloned(),
                            renewed: now,
                            unassigned_since: None,
                        },
                    );
                }
                Some(h) if h == self.me => {}
                Some(h) if !h.is_empty() => {
                    if let Some(device) = self.shared.get(&lease.name) {
                        if self.api_down || !self.seen.expired(lease, now) {
                            held_by_others.insert(device.clone(), h.to_owned());
                        }
                    }
                }
                _ => {}
            }
        }
        self.held_by_others = held_by_others;
    }

    fn release_unassigned(
        &mut self,
        api: &mut dyn LeaseApi,
        pod_resources: &mut dyn FnMut() -> Result<Assigned, String>,
        now: Instant,
    ) {
        if self.held.is_empty() {
            return;
        }
        let assigned = match pod_resources() {
            Ok(a) => {
                if self.pod_resources_failing {
                    info!("podresources answers again; releasing unassigned devices resumes");
                }
                self.pod_resources_failing = false;
                a
            }
            Err(e) => {
                if !self.pod_resources_failing {
                    warn!("{e}; nothing is released (held devices stay held and renewed)");
                }
                self.pod_resources_failing = true;
                return;
            }
        };
        let grace = release_grace(self.duration);
        let mut release_now = Vec::new();
        for (name, held) in &mut self.held {
            let in_use = held.device.as_ref().is_some_and(|(r, id)| {
                assigned
                    .get(r.as_str())
                    .is_some_and(|ids| ids.contains(id.as_str()))
            });
            if in_use {
                held.unassigned_since = None;
                continue;
            }
            let since = *held.unassigned_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= grace {
                release_now.push(name.clone());
            }
        }
        for name in release_now {
            let Some(held) = self.held.remove(&name) else {
                continue;
            };
            match release(api, &held.lease, &self.me) {
                Ok(()) => {
                    info!("Lease {name}: released (no container has the device any more)");
                    self.seen.forget(&name);
                    self.known.remove(&name);
                }
                Err(e) => {
                    warn!("Lease {name}: release failed: {e}; retrying");
                    self.held.insert(name, held);
                }
            }
        }
    }

    /// The report for the state thread, if it changed since the last one.
    pub fn report(&mut self) -> Option<LeaseReport> {
        let report = LeaseReport {
            held_by_others: self.held_by_others.clone(),
            held_here: self.held.len(),
            mine: self
                .held
                .values()
                .filter_map(|h| h.device.clone())
                .collect(),
            won: self.won,
            lost: self.lost,
        };
        if self.reported.as_ref() == Some(&report) {
            return None;
        }
        self.reported = Some(report.clone());
        Some(report)
    }
}

/// How long one Lease watch request lasts.
const WATCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Handle of the `spookd-lease` and `spookd-lease-watch` threads; dropping it stops them.
pub struct LeaseKeeper {
    tx: Sender<LeaseCmd>,
    _stop_watch: Sender<()>,
    _watch: Worker,
    _worker: Worker,
}

impl LeaseKeeper {
    pub fn spawn(
        opts: LeaseOptions,
        namespace: String,
        node: NodeName,
        grpc: Arc<grpcio::Environment>,
        state: Sender<Msg>,
    ) -> io::Result<LeaseKeeper> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (seen_tx, seen_rx) = crossbeam_channel::unbounded();
        let (stop_watch, stopped) = crossbeam_channel::bounded::<()>(0);
        let mut watch_api = HttpLeaseApi::new(opts.conn.clone(), &namespace);
        let watch = Worker::spawn("spookd-lease-watch", move || {
            watch_leases(&mut watch_api, &seen_tx, &stopped);
        })?
        // A watch read may be blocked on the network; the process is exiting.
        .stop_wait(Duration::from_millis(100));
        let worker = Worker::spawn("spookd-lease", move || {
            let mut api = HttpLeaseApi::new(opts.conn.clone(), &namespace);
            let socket = opts.pod_resources_socket.clone();
            let mut pod_resources =
                move || podresources::assigned(&grpc, &socket).map_err(|e| e.to_string());
            let mut keeper = Keeper::new(&node, opts.duration, Instant::now());
            run(
                &rx,
                &seen_rx,
                &state,
                &mut keeper,
                &mut api,
                &mut pod_resources,
            );
        })?
        // A request may be blocked on the network; the process is exiting.
        .stop_wait(Duration::from_millis(100));
        Ok(LeaseKeeper {
            tx,
            _stop_watch: stop_watch,
            _watch: watch,
            _worker: worker,
        })
    }

    pub fn send(&self, cmd: LeaseCmd) {
        // Fails only once the thread has ended, at shutdown.
        let _ = self.tx.send(cmd);
    }
}

/// The Lease watch as the list-then-watch loop calls it.
struct LeaseWatchApi<'a>(&'a mut HttpLeaseApi);

impl WatchApi for LeaseWatchApi<'_> {
    type Object = Lease;

    fn list(&mut self) -> Result<(Vec<Lease>, String), ApiError> {
        self.0.list_at()
    }

    fn watch(&mut self, version: &str) -> Result<Events<Lease>, ApiError> {
        Ok(Box::new(self.0.watch_events(version, WATCH_TIMEOUT)?))
    }
}

/// What the Lease watch tells the `spookd-lease` thread ([`Seen`]).
struct LeaseWatch<'a> {
    seen: &'a Sender<Seen>,
    first: bool,
}

impl Observer<Lease> for LeaseWatch<'_> {
    fn listed(&mut self, leases: Vec<Lease>, _: &str) -> bool {
        if self.first {
            info!("watching spookd's Leases ({} now)", leases.len());
            self.first = false;
        }
        self.seen.send(Seen::All(leases)).is_ok()
    }

    fn put(&mut self, lease: Lease) -> bool {
        self.seen.send(Seen::Put(lease)).is_ok()
    }

    fn deleted(&mut self, lease: Lease) -> bool {
        self.seen.send(Seen::Deleted(lease.name)).is_ok()
    }

    fn failed(&mut self, phase: Phase, why: &Failure<'_>) -> bool {
        let why = match why {
            Failure::Api(e) => e.to_string(),
            Failure::Status(s) => format!("{} {}", s.code, s.message),
        };
        match phase {
            Phase::List => {
                warn!("listing Leases: {why}; expiry clocks restart when the API answers again")
            }
            Phase::Watch => {
                let hint = if why.contains("HTTP 403") {
                    " (spookd's ServiceAccount needs get, list, watch, create, update and delete \
                     on leases in the Lease namespace: see manifests/components/exclusive-leases/)"
                } else {
                    ""
                };
                warn!("watching Leases: {why}{hint}; listing again");
            }
        }
        self.seen.send(Seen::Lost).is_ok()
    }
}

/// List, then watch from the list's version ([`Policy::Relist`]: what was known may be stale
/// after a failure, which is reported as [`Seen::Lost`]). Ends when stopped or unheard.
fn watch_leases(api: &mut HttpLeaseApi, seen: &Sender<Seen>, stop: &Receiver<()>) {
    let mut observer = LeaseWatch { seen, first: true };
    let mut backoff = Backoff::default();
    watch::list_then_watch(
        &mut LeaseWatchApi(api),
        &mut observer,
        Policy::Relist,
        &mut backoff,
        stop,
    );
}

fn run(
    rx: &Receiver<LeaseCmd>,
    seen: &Receiver<Seen>,
    state: &Sender<Msg>,
    keeper: &mut Keeper,
    api: &mut dyn LeaseApi,
    pod_resources: &mut dyn FnMut() -> Result<Assigned, String>,
) {
    loop {
        let timeout = keeper.deadline().saturating_duration_since(Instant::now());
        crossbeam_channel::select! {
            recv(rx) -> cmd => match cmd {
                Ok(LeaseCmd::Shared(devices)) => {
                    debug!("{} shared devices served here", devices.len());
                    keeper.shared(devices);
                    keeper.evaluate(Instant::now());
                }
                Ok(LeaseCmd::Acquire { request, devices }) => {
                    let result = keeper.acquire(api, &devices, Instant::now());
                    if state.send(Msg::LeasesTaken { request, result }).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            },
            recv(seen) -> s => match s {
                Ok(s) => keeper.seen(s, Instant::now()),
                // The watch thread ended: only at shutdown.
                Err(_) => return,
            },
            default(timeout) => {}
        }
        keeper.tick(api, pod_resources, Instant::now());
        if let Some(report) = keeper.report() {
            if state.send(Msg::Leases(report)).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{InstanceId, ResourceName};
    use crate::leases::protocol::MemoryLeases;

    const D: Duration = Duration::from_secs(4);

    fn key(id: &str) -> DeviceKey {
        (
            ResourceName::try_from("a.io/x".to_owned()).unwrap(),
            InstanceId::try_from(id.to_owned()).unwrap(),
        )
    }

    fn keeper(now: Instant) -> Keeper {
        let mut k = Keeper::new(&NodeName::try_from("n1".to_owned()).unwrap(), D, now);
        k.shared([key("1"), key("2")].into());
        k
    }

    fn name(id: &str) -> String {
        let (r, i) = key(id);
        lease_name(&r, &i)
    }

    /// What a watch would show: the store's Leases now.
    fn observe(k: &mut Keeper, api: &mut MemoryLeases, now: Instant) {
        k.seen(Seen::All(api.list().unwrap()), now);
    }

    fn assigned(ids: &[&str]) -> Assigned {
        [(
            "a.io/x".to_string(),
            ids.iter().map(|s| s.to_string()).collect(),
        )]
        .into()
    }

    #[test]
    fn acquires_all_or_none() {
        let now = Instant::now();
        let mut api = MemoryLeases::default();
        api.create(&name("2"), "n2", D).unwrap();
        let mut k = keeper(now);
        let refused = k.acquire(&mut api, &[key("1"), key("2")], now).unwrap_err();
        assert_eq!(
            refused,
            LeaseRefusal::HeldBy {
                device: key("2"),
                holder: "n2".into(),
                lease: name("2"),
            }
        );
        assert!(refused.to_string().contains("held by node n2"));
        // Device 1's Lease, taken on the way, was given back.
        assert!(!api.leases.contains_key(&name("1")));
        k.acquire(&mut api, &[key("1")], now).unwrap();
        let report = k.report().unwrap();
        assert_eq!((report.held_here, report.won, report.lost), (1, 1, 1));
        assert_eq!(k.report(), None, "unchanged");
    }

    #[test]
    fn reports_devices_held_elsewhere_until_their_lease_expires() {
        let t0 = Instant::now();
        let mut api = MemoryLeases::default();
        api.create(&name("2"), "n2", D).unwrap();
        let mut k = keeper(t0);
        let mut none = || Ok(Assigned::new());
        observe(&mut k, &mut api, t0);
        k.tick(&mut api, &mut none, t0);
        let report = k.report().unwrap();
        assert_eq!(report.held_by_others, [(key("2"), "n2".to_string())].into());
        // n2 stops renewing (no event): a whole duration after this node first saw that version,
        // the periodic re-judging finds it free.
        k.tick(&mut api, &mut none, t0 + D);
        assert!(k.report().unwrap().held_by_others.is_empty());
        k.acquire(&mut api, &[key("2")], t0 + D).unwrap();
        assert_eq!(api.leases[&name("2")].holder.as_deref(), Some("n1"));
    }

    #[test]
    fn releases_a_device_no_container_has_and_never_when_podresources_fails() {
        let t0 = Instant::now();
        let mut api = MemoryLeases::default();
        let mut k = keeper(t0);
        k.acquire(&mut api, &[key("1")], t0).unwrap();
        let grace = release_grace(D);
        // podresources down: nothing is released, however long.
        let mut down = || Err("podresources down".to_string());
        for step in 1..=4 {
            k.tick(&mut api, &mut down, t0 + grace * step);
        }
        assert!(api.leases.contains_key(&name("1")));
        // Assigned to a container: kept.
        let mut in_use = || Ok(assigned(&["1"]));
        k.tick(&mut api, &mut in_use, t0 + grace * 5);
        assert!(api.leases.contains_key(&name("1")));
        // Unassigned: released a grace period later, not before.
        let mut free = || Ok(assigned(&[]));
        k.tick(&mut api, &mut free, t0 + grace * 6);
        assert!(api.leases.contains_key(&name("1")));
        k.tick(&mut api, &mut free, t0 + grace * 7);
        assert!(!api.leases.contains_key(&name("1")));
        assert_eq!(k.report().unwrap().held_here, 0);
    }

    #[test]
    fn a_lease_adopted_before_the_config_is_known_is_kept_while_in_use() {
        let t0 = Instant::now();
        let mut api = MemoryLeases::default();
        api.create(&name("1"), "n1", D).unwrap();
        let mut k = Keeper::new(&NodeName::try_from("n1".to_owned()).unwrap(), D, t0);
        let mut in_use = || Ok(assigned(&["1"]));
        observe(&mut k, &mut api, t0);
        k.tick(&mut api, &mut in_use, t0);
        assert_eq!(k.report().unwrap().held_here, 1);
        k.shared([key("1"), key("2")].into());
        let grace = release_grace(D);
        for step in 1..=4 {
            k.tick(&mut api, &mut in_use, t0 + grace * step);
        }
        assert!(api.leases.contains_key(&name("1")), "released while in use");
    }

    #[test]
    fn adopts_its_own_leases_at_start_and_counts_a_lost_one() {
        let t0 = Instant::now();
        let mut api = MemoryLeases::default();
        api.create(&name("1"), "n1", D).unwrap();
        let mut k = keeper(t0);
        let mut in_use = || Ok(assigned(&["1"]));
        observe(&mut k, &mut api, t0);
        k.tick(&mut api, &mut in_use, t0);
        assert_eq!(k.report().unwrap().held_here, 1);
        // Renewed a third of the duration later: a new version.
        let before = api.leases[&name("1")].resource_version.clone();
        k.tick(&mut api, &mut in_use, t0 + D / 3);
        assert_ne!(api.leases[&name("1")].resource_version, before);
        // Someone took it over (this node failed to renew in time): lost, counted.
        let current = api.leases[&name("1")].clone();
        api.update(&current, "n2").unwrap();
        k.tick(&mut api, &mut in_use, t0 + D / 3 * 2);
        let report = k.report().unwrap();
        assert_eq!((report.held_here, report.lost), (0, 1));
    }

    #[test]
    fn an_api_outage_restarts_the_expiry_clocks() {
        let t0 = Instant::now();
        let mut api = MemoryLeases::default();
        api.create(&name("2"), "n2", D).unwrap();
        let mut k = keeper(t0);
        let mut none = || Ok(Assigned::new());
        observe(&mut k, &mut api, t0);
        k.tick(&mut api, &mut none, t0);
        // An outage longer than the duration (the watch breaks): n2 could not renew either, and
        // nothing expires meanwhile.
        k.seen(Seen::Lost, t0 + D / 2);
        k.tick(&mut api, &mut none, t0 + D * 3 / 2);
        assert_eq!(
            k.report().unwrap().held_by_others,
            [(key("2"), "n2".to_string())].into()
        );
        // Back: the same version is live for a whole duration from now, not expired.
        observe(&mut k, &mut api, t0 + D * 2);
        k.tick(&mut api, &mut none, t0 + D * 2);
        assert_eq!(k.report(), None, "still held elsewhere");
        assert!(k.acquire(&mut api, &[key("2")], t0 + D * 2).is_err());
        k.tick(&mut api, &mut none, t0 + D * 3);
        assert!(k.report().unwrap().held_by_others.is_empty());
    }
}
