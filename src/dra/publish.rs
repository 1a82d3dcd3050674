//! The publisher (`spookd-dra-publish`): on every node, it competes for the driver's leader Lease;
//! the node holding it publishes the pool (ResourceSlices) and the DeviceClasses of the last good
//! config, and only it. So one `spookd --dra` DaemonSet both serves each kubelet and publishes,
//! with nothing else to deploy.
//!
//! - **Leadership** is the driver's leader Lease ([`crate::dra::leader`]).
//! - **Publishing** ([`reconcile`], in [`crate::dra::reconcile`]) makes the driver's slices and
//!   classes what the inventory gives, writing only what differs.
//! - It publishes on leadership won, on each new inventory, after a failure (with the backoff),
//!   half a second after the `spookd-dra-watch` thread ([`SliceWatcher`], the one list-then-watch
//!   loop) sees the driver's slices change (someone edited or deleted one), and every [`RESYNC`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{debug, info, warn};

use crate::backoff::Backoff;
use crate::clock::later;
use crate::config::dra::Inventory;
use crate::dra::api::{HttpObjects, Object, Objects};
use crate::dra::leader::Leadership;
use crate::dra::objects::{DeviceClass, Kept, ResourceSlice, Taints, POOL};
use crate::dra::reconcile::{reconcile, Wanted};
use crate::dra::report::{ReportLease, Reports};
use crate::kube::client::ApiError;
use crate::kube::watch::{list_then_watch, Events, Failure, Observer, Phase, Policy, WatchApi};
use crate::leases::protocol::LeaseApi;
use crate::state::msg::{DraEvent, Msg};
use crate::worker::Worker;

/// How often the leader re-reads its objects and repairs them.
pub const RESYNC: Duration = Duration::from_secs(60);
/// Retries of a failed publish.
const RETRY: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(30));

enum Cmd {
    Publish(Arc<Inventory>),
    /// The driver's slices changed (seen by the watch): the leader compares soon.
    Changed,
    /// Release the Lease and end (the watch holds a sender too: the channel never disconnects).
    Stop,
}

/// How long after a change seen by the watch the leader compares: changes come in bursts (its
/// own writes, someone's kubectl delete of several).
const SETTLE: Duration = Duration::from_millis(500);

/// Tells the publisher that the driver's slices changed.
#[derive(Clone)]
pub struct Nudge(Sender<Cmd>);

impl Nudge {
    /// Tells the publisher that something it reads changed.
    pub fn changed(&self) -> bool {
        self.0.send(Cmd::Changed).is_ok()
    }
}

#[cfg(test)]
impl Nudge {
    /// A nudge, and how many times it has been sent since last asked.
    pub(crate) fn counted() -> (Nudge, impl Fn() -> usize) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let sent = move || rx.try_iter().filter(|c| matches!(c, Cmd::Changed)).count();
        (Nudge(tx), sent)
    }
}

impl<T> Observer<T> for Nudge {
    fn listed(&mut self, _: Vec<T>, _: &str) -> bool {
        self.changed()
    }
    fn put(&mut self, _: T) -> bool {
        self.changed()
    }
    fn deleted(&mut self, _: T) -> bool {
        self.changed()
    }
    fn failed(&mut self, phase: Phase, why: &Failure<'_>) -> bool {
        debug!("watch of the driver's ResourceSlices: {phase:?} failed: {why:?}; retrying");
        true
    }
}

/// A watch of the driver's objects of one kind (its ResourceSlices, the nodes' health reports),
/// over the one list-then-watch loop.
pub struct ObjectWatch<T> {
    pub objects: HttpObjects<T>,
    pub timeout: Duration,
}

impl<T: Object + crate::kube::watch::Versioned + Send + 'static> WatchApi for ObjectWatch<T> {
    type Object = T;
    fn list(&mut self) -> Result<(Vec<T>, String), ApiError> {
        self.objects.list_at()
    }
    fn watch(&mut self, version: &str) -> Result<Events<T>, ApiError> {
        self.objects.watch_from(version, self.timeout)
    }
}

/// Handle of a watch thread (`spookd-dra-watch` of the slices, `spookd-dra-reports` of the
/// health reports): someone's edit or delete of the driver's slices is repaired by the leader at
/// once, and a node's new report published, not at the next resync. Dropping it stops the thread.
pub struct SliceWatcher {
    _stop: Sender<()>,
    _worker: Worker,
}

impl SliceWatcher {
    pub fn spawn<T: Object + crate::kube::watch::Versioned + Send + 'static>(
        name: &str,
        mut api: ObjectWatch<T>,
        nudge: impl Observer<T> + Send + 'static,
    ) -> std::io::Result<SliceWatcher> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let mut nudge = nudge;
        let worker = Worker::spawn(name, move || {
            let mut backoff = Backoff::new(RETRY);
            list_then_watch(&mut api, &mut nudge, Policy::Relist, &mut backoff, &stopped);
        })?
        // It may sit in a watch read: the process is exiting anyway.
        .stop_wait(Duration::from_millis(50));
        Ok(SliceWatcher {
            _stop: stop,
            _worker: worker,
        })
    }
}

/// The API calls the publisher makes.
pub struct PublisherApi {
    pub leases: Box<dyn LeaseApi + Send>,
    pub slices: Box<dyn Objects<ResourceSlice> + Send>,
    pub classes: Box<dyn Objects<DeviceClass> + Send>,
    /// The nodes' health reports ([`crate::dra::report`]).
    pub reports: Box<dyn Objects<ReportLease> + Send>,
}

/// Handle of the publisher thread; dropping it releases the Lease and stops the thread.
pub struct Publisher {
    tx: Sender<Cmd>,
    _worker: Worker,
}

impl Publisher {
    pub fn spawn(
        api: PublisherApi,
        driver: String,
        leadership: Leadership,
        state: Sender<Msg>,
    ) -> std::io::Result<Publisher> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let worker = Worker::spawn("spookd-dra-publish", move || {
            run(api, &driver, leadership, &rx, &state)
        })?
        // At a stop it may be in an API call (up to 30 s): the process is exiting anyway.
        .stop_wait(Duration::from_millis(300));
        Ok(Publisher {
            tx,
            _worker: worker,
        })
    }

    /// Publishes `inventory` (when this node leads).
    pub fn publish(&self, inventory: Arc<Inventory>) {
        let _ = self.tx.send(Cmd::Publish(inventory));
    }

    /// What the slice watch tells of changes.
    pub fn nudge(&self) -> Nudge {
        Nudge(self.tx.clone())
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Stop);
    }
}

fn run(
    mut api: PublisherApi,
    driver: &str,
    mut leadership: Leadership,
    rx: &Receiver<Cmd>,
    state: &Sender<Msg>,
) {
    let mut inventory: Option<Arc<Inventory>> = None;
    let mut backoff = Backoff::new(RETRY);
    let now = Instant::now();
    let mut next_lease = now;
    let mut next_publish = now;
    let mut leader = false;
    let mut failing = false;
    let mut floor = 0;
    let mut kept = Kept::default();
    let mut reports = Reports::default();
    let mut taints = Taints::new();
    loop {
        let mut deadline = next_lease;
        if leader && inventory.is_some() {
            deadline = deadline.min(next_publish);
        }
        match rx.recv_deadline(deadline) {
            Ok(Cmd::Publish(new)) => {
                inventory = Some(new);
                next_publish = Instant::now();
            }
            Ok(Cmd::Changed) => {
                next_publish = next_publish.min(later(Instant::now(), SETTLE));
            }
            Ok(Cmd::Stop) => break,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        if now >= next_lease {
            next_lease = leadership.step(api.leases.as_mut(), now);
        }
        let now = Instant::now();
        if leadership.is_leader(now) != leader {
            leader = !leader;
            if leader {
                info!("this node leads: publishing driver {driver}'s devices");
                next_publish = now;
            } else {
                info!("this node no longer leads: another publishes");
            }
            let _ = state.send(Msg::Dra(DraEvent::Leader(leader)));
        }
        let Some(inv) = inventory
            .as_deref()
            .filter(|_| leader && now >= next_publish)
        else {
            continue;
        };
        // The nodes' reports decide the taints; unread, the last known stand.
        match api.reports.list() {
            Ok(listed) => taints = reports.taints(inv, driver, &listed, Instant::now()),
            Err(e) => debug!("cannot read the health reports: {e}; the last taints stand"),
        }
        let dropped_before = kept.dropped();
        let PublisherApi {
            leases,
            slices,
            classes,
            ..
        } = &mut api;
        let mut lead = || {
            let now = Instant::now();
            if now >= next_lease {
                next_lease = leadership.step(leases.as_mut(), now);
            }
            leadership.is_leader(Instant::now())
        };
        match reconcile(
            slices.as_mut(),
            classes.as_mut(),
            &Wanted {
                driver,
                inventory: inv,
                taints: &taints,
            },
            floor,
            &mut kept,
            &mut lead,
        ) {
            Ok(p) => {
                floor = p.generation;
                if p.changed || failing {
                    info!(
                        "published {} devices in {} ResourceSlices, pool {POOL} generation {}",
                        p.devices, p.slices, p.generation
                    );
                }
                let dropped = kept.dropped();
                if dropped != dropped_before {
                    // Once per process: the server keeps dropping it, and nothing is rewritten.
                    warn!(
                        "the API server drops {} (its feature gates are off: Kubernetes 1.34 or \
                         1.35?): pods asking for the resources in resources.limits are not \
                         served by DRA; compared by what the server keeps",
                        dropped.join(", ")
                    );
                }
                failing = false;
                backoff.reset();
                next_publish = later(Instant::now(), RESYNC);
                let _ = state.send(Msg::Dra(DraEvent::Published {
                    generation: p.generation,
                    slices: p.slices,
                    devices: p.devices,
                    dropped,
                }));
            }
            Err(e) => {
                let wait = backoff.wait();
                if !failing {
                    warn!("cannot publish driver {driver}'s devices: {e}; retrying");
                } else {
                    debug!("publish failed again: {e}; retrying in {wait:?}");
                }
                failing = true;
                next_publish = later(Instant::now(), wait);
                let _ = state.send(Msg::Dra(DraEvent::PublishFailed));
            }
        }
    }
    leadership.release(api.leases.as_mut());
}
