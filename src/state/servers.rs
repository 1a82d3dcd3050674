//! The device-plugin servers: one per resource on a fresh socket, registered with the kubelet,
//! started again when the kubelet restarts or a socket goes, its ListAndWatch streams fed, and
//! retired after a grace when the resource goes. The fallback check behind inotify is here too.

#[cfg(test)]
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::sync::Arc;
use std::time::Instant;

use log::{debug, error, info, warn};

use super::msg::{Listed, Listing, RegisterError, StreamSender};
use super::{Backend, State, FALLBACK_CHECK, RETIRE_GRACE};
use crate::clock::later;
use crate::config::{Device, InstanceId, ResourceName};

/// A resource this node serves. Fields drop in order: streams end before their server shuts down.
pub(super) struct Served<S> {
    pub(super) streams: Vec<StreamSender>,
    /// `None` after a failed start; retried at the next check.
    pub(super) server: Option<Live<S>>,
    pub(super) devices: Arc<[Device]>,
    /// Devices whose probe says Unhealthy; every other device is Healthy.
    pub(super) unhealthy: BTreeSet<InstanceId>,
    /// Shared devices another node holds a Lease on: advertised Unhealthy here.
    pub(super) held_by_others: BTreeSet<InstanceId>,
}

pub(super) struct Live<S> {
    pub(super) id: u64,
    pub(super) endpoint: String,
    pub(super) registered: bool,
    /// The kubelet opened a ListAndWatch stream on this server since it registered.
    pub(super) watched: bool,
    /// When the check first saw every stream closed (none reopened): registered again at the
    /// next check if still so.
    pub(super) orphaned: bool,
    pub(super) _server: S,
}

impl<B: Backend> State<B> {
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
            self.start_server(&resource);
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

    /// Stops everything and removes our sockets, so the kubelet dials no socket nobody answers.
    pub fn shutdown(mut self) {
        for (resource, served) in std::mem::take(&mut self.served) {
            self.backend.forget(&resource);
            drop(served);
        }
        self.retiring.clear();
        info!("stopped serving; sockets removed");
    }

    pub(super) fn retire(&mut self, resource: &ResourceName, now: Instant) {
        let Some(mut served) = self.served.remove(resource) else {
            return;
        };
        info!("{resource}: no longer in the config; advertising no devices, then stopping");
        self.backend.forget(resource);
        served.devices = Arc::from(Vec::new());
        push(resource, &mut served);
        self.retiring.push((later(now, RETIRE_GRACE), served));
    }

    /// Starts `resource`'s server on a fresh socket and queues its registration: its first server,
    /// or a new one in place of the old (retired right after).
    pub(super) fn start_server(&mut self, resource: &ResourceName) {
        let Some(served) = self.served.get_mut(resource) else {
            return;
        };
        let id = self.next_server;
        self.next_server += 1;
        // Streams of the old server end with it; the kubelet opens new ones on the new socket.
        let old = Served {
            devices: served.devices.clone(),
            unhealthy: BTreeSet::new(),
            held_by_others: BTreeSet::new(),
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

    pub(super) fn kubelet_started(&mut self) {
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
            // `resources` are the keys of `served`, and only `start_server` runs in between (it keeps them).
            let served = &self.served[&resource];
            match &served.server {
                Some(live) if self.backend.socket_exists(&live.endpoint) => {
                    let endpoint = live.endpoint.clone();
                    self.backend.register(&resource, &endpoint);
                }
                _ => self.start_server(&resource),
            }
        }
    }

    pub(super) fn socket_removed(&mut self, name: &OsString) {
        let Some(name) = name.to_str() else { return };
        let hit = self.served.iter().find_map(|(r, s)| match &s.server {
            Some(live) if live.endpoint == name => Some(r.clone()),
            _ => None,
        });
        if let Some(resource) = hit {
            info!("{resource}: socket {name} was deleted; restarting its server");
            self.start_server(&resource);
        }
    }

    pub(super) fn watch(&mut self, resource: ResourceName, server: u64, stream: StreamSender) {
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

    /// The registrar's outcome: counted, and the current endpoint marked registered.
    pub(super) fn registered(
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

    /// Drops retired servers whose grace is over: they lived on only so the kubelet could read
    /// their empty list, and dropping one stops it and removes its socket.
    pub(super) fn reap(&mut self, now: Instant) {
        self.retiring.retain(|(at, _)| *at > now);
    }

    /// Resources served, with their endpoint and whether it is registered.
    #[cfg(test)]
    pub(super) fn registrations(&self) -> BTreeMap<ResourceName, Option<(String, bool)>> {
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
            healthy: !served.unhealthy.contains(&d.id) && !served.held_by_others.contains(&d.id),
        })
        .collect()
}

/// Sends the current list on every open stream, dropping streams whose client went away.
pub(super) fn push<S>(resource: &ResourceName, served: &mut Served<S>) {
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

#[cfg(test)]
mod tests {
    use super::super::msg::Msg;
    use super::super::test_support::*;
    use super::super::Flow;
    use super::*;
    use std::time::Duration;

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
