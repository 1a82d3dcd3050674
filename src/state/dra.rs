//! `--dra`: the state thread as a DRA driver's owner. A good config becomes an [`Inventory`]
//! (a config whose devices cannot be published is invalid: the last good one stays) handed to the
//! publisher; the kubelet plugin asks for each claim's env ([`Msg::Prepare`]); both report what
//! they did ([`Msg::Dra`]) for /metrics. The devices this node reaches are probed here as in the
//! device-plugin mode ([`Msg::Health`]), and their health goes to the kubelet's device-health
//! streams ([`Msg::WatchHealth`]): the whole list at once, after each change, and at every
//! periodic check (the kubelet takes a device it hears nothing of for a while as Unknown).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use log::{debug, info, warn};

use crate::config::dra::{device_name, Inventory};
use crate::config::{Config, InstanceId, ResourceName};
#[cfg(doc)]
use crate::state::msg::Msg;
use crate::state::msg::{
    ClaimDevices, DeviceHealth, DraEvent, DraStatus, HealthSender, Notice, PrepareRefusal,
    PrepareReply, ProbeSet, Unhealthy,
};
use crate::state::{Backend, State};

/// The DRA driver's part of the state.
#[derive(Default)]
pub(super) struct Driver {
    inventory: Option<Arc<Inventory>>,
    pub(super) status: DraStatus,
    /// The devices this node reaches, by name, as its probes see them.
    health: BTreeMap<String, DeviceHealth>,
    /// The kubelet's open device-health streams.
    streams: Vec<HealthSender>,
    /// How many of this node's devices are probed.
    probed: usize,
    /// What device plugins advertise on this node, as last read.
    advertised: BTreeSet<String>,
}

impl Driver {
    /// Puts the health list in every open stream, dropping those the kubelet closed.
    fn push_health(&mut self) {
        let list = Arc::new(self.health.values().cloned().collect::<Vec<_>>());
        self.streams.retain(|s| s.send(list.clone()).is_ok());
    }

    /// The devices this node's probes find Unhealthy; `None` where it probes none (a node with
    /// nothing to report writes no report, so an idle node makes no API call for it).
    fn unhealthy(&self, probes: usize) -> Option<Unhealthy> {
        (probes > 0).then(|| {
            (self.health.values())
                .filter(|h| !h.healthy)
                .map(|h| (h.device.clone(), h.detail.clone()))
                .collect()
        })
    }
}

impl<B: Backend> State<B> {
    pub(super) fn dra_config(&mut self, origin: &str, config: &Config) {
        let inventory = match Inventory::new(config, origin) {
            Ok(inventory) => Arc::new(inventory),
            Err(e) => return self.config_invalid(&e),
        };
        self.count_good();
        self.have_config = true;
        let Some(driver) = self.dra.as_mut() else {
            return;
        };
        if driver.inventory.as_deref() == Some(&*inventory) {
            info!("{origin}: the same devices as before; nothing to publish");
            return;
        }
        driver.inventory = Some(inventory.clone());
        // This node's devices: their health as known (a device new here is Healthy until its
        // probe says otherwise), and the probes of those that have a healthCheck.
        let mut probes = ProbeSet::new();
        let mut health = BTreeMap::new();
        for d in inventory
            .devices()
            .iter()
            .filter(|d| d.hosts.contains(&self.node))
        {
            if let Some(check) = &d.device.health_check {
                probes.insert((d.resource.clone(), d.device.id.clone()), *check);
            }
            let known = driver
                .health
                .remove(&d.name)
                .filter(|_| d.device.health_check.is_some());
            let entry = known.unwrap_or_else(|| DeviceHealth {
                device: d.name.clone(),
                healthy: true,
                detail: String::new(),
            });
            health.insert(d.name.clone(), entry);
        }
        driver.health = health;
        driver.probed = probes.len();
        driver.push_health();
        let unhealthy = driver.unhealthy(driver.probed);
        self.backend.set_probes(probes);
        self.backend.report_health(unhealthy);
        let (devices, resources) = (inventory.devices().len(), inventory.classes().len());
        info!("{origin}: {devices} devices of {resources} resources to publish");
        self.backend.publish(inventory);
        self.check_device_plugins();
        self.backend.notify(Notice::normal(
            "ConfigApplied",
            "Apply",
            format!(
                "node {} applied the config from {origin}: {devices} devices of {resources} \
                 resources, published by the leader",
                self.node
            ),
        ));
    }

    pub(super) fn prepare(&mut self, claims: &[ClaimDevices], reply: &PrepareReply) {
        let inventory = self.dra.as_ref().and_then(|d| d.inventory.as_deref());
        let node = &self.node;
        let answers = claims
            .iter()
            .map(|claim| {
                let inventory = inventory.ok_or(PrepareRefusal::NoConfig)?;
                // A device this node does not reach gets no env here, whatever the claim says.
                for name in claim.groups.iter().flatten() {
                    if let Some(d) = inventory.device(name) {
                        if !d.hosts.contains(node) {
                            return Err(PrepareRefusal::NotHere {
                                device: name.clone(),
                                node: node.to_string(),
                            });
                        }
                    }
                }
                (claim.groups.iter())
                    .map(|group| {
                        let names: Vec<&str> = group.iter().map(String::as_str).collect();
                        inventory.env(&names).map_err(PrepareRefusal::Env)
                    })
                    .collect()
            })
            .collect();
        // The asker may have given up (its call timed out): nothing to do then.
        let _ = reply.send(answers);
    }

    /// A probe of a device this node reaches saw its health change.
    pub(super) fn dra_health(
        &mut self,
        resource: &ResourceName,
        id: &InstanceId,
        healthy: bool,
        detail: &str,
    ) {
        let node = self.node.clone();
        let Some(driver) = self.dra.as_mut() else {
            return;
        };
        let name = device_name(resource, id);
        let Some(entry) = driver.health.get_mut(&name) else {
            debug!("{resource} {id}: health of a device this node no longer reaches");
            return;
        };
        entry.detail = detail.to_owned();
        if entry.healthy == healthy {
            debug!("{resource} {id}: probe: {detail}");
            return;
        }
        entry.healthy = healthy;
        let unhealthy = driver.unhealthy(driver.probed);
        self.backend.report_health(unhealthy);
        if healthy {
            info!("{resource} {id}: Healthy again ({detail})");
        } else {
            warn!(
                "{resource} {id}: Unhealthy ({detail}); the kubelet shows it in the pods given it"
            );
        }
        driver.push_health();
        self.stats.health_changes += 1;
        self.backend.notify(Notice::health_change(
            healthy,
            format!(
                "node {node}: {resource} device {:?} is {} ({detail})",
                id.as_str(),
                if healthy { "Healthy" } else { "Unhealthy" }
            ),
        ));
    }

    /// The kubelet opened a device-health stream: it gets the list at once.
    pub(super) fn watch_health(&mut self, stream: HealthSender) {
        let Some(driver) = self.dra.as_mut() else {
            return;
        };
        driver.streams.push(stream);
        driver.push_health();
    }

    /// The periodic check: every stream gets the list again.
    pub(super) fn dra_tick(&mut self) {
        if let Some(driver) = self.dra.as_mut().filter(|d| !d.streams.is_empty()) {
            driver.push_health();
        }
    }

    /// Warns when a device plugin advertises here a name this node serves by DRA (the scheduler
    /// would give pods asking for it in `resources.limits` the device plugin's devices here), once
    /// each time the set of such names changes; /status shows it while it lasts.
    fn check_device_plugins(&mut self) {
        let Some(driver) = self.dra.as_mut() else {
            return;
        };
        let node = &self.node;
        let both: Vec<ResourceName> = (driver.inventory.iter())
            .flat_map(|inv| inv.devices())
            .filter(|d| d.hosts.contains(node) && driver.advertised.contains(d.resource.as_str()))
            .map(|d| d.resource.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if both == driver.status.served_by_device_plugin {
            return;
        }
        driver.status.served_by_device_plugin = both.clone();
        if both.is_empty() {
            info!(
                "no device plugin on this node advertises a name this node serves by DRA any more"
            );
            return;
        }
        let names: Vec<&str> = both.iter().map(ResourceName::as_str).collect();
        let note = format!(
            "a device plugin on node {node} also advertises {}: pods asking for it in \
             resources.limits are given the device plugin's devices there, not DRA's; deploy \
             one mode per name (remove the device plugin, or this node from the DRA config)",
            names.join(", ")
        );
        warn!("{note}");
        self.backend
            .notify(Notice::warning("ServedByDevicePlugin", "Check", note));
    }

    pub(super) fn dra_event(&mut self, event: DraEvent) {
        if let DraEvent::NodeAdvertises(names) = event {
            if let Some(driver) = self.dra.as_mut() {
                driver.advertised = names;
            }
            return self.check_device_plugins();
        }
        let Some(status) = self.dra.as_mut().map(|d| &mut d.status) else {
            return;
        };
        match event {
            DraEvent::Leader(leader) => status.leader = leader,
            DraEvent::Published {
                generation,
                slices,
                devices,
                dropped,
            } => {
                status.generation = generation;
                status.slices = slices;
                status.devices = devices;
                status.dropped = dropped;
            }
            DraEvent::PublishFailed => status.publish_failures += 1,
            DraEvent::Registered(registered) => status.registered = registered,
            DraEvent::Claims { ok, failed } => {
                status.claims_ok += ok;
                status.claims_failed += failed;
            }
            DraEvent::NodeAdvertises(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeSet;
    use std::rc::Rc;
    use std::time::Instant;

    use super::*;
    use crate::config::dra::EnvRefusal;
    use crate::config::{NodeName, ResourceName};
    use crate::state::msg::{LeaseCmd, Msg, ProbeSet};

    /// What the state published, and the notices it wrote.
    struct Published(Rc<RefCell<Vec<Arc<Inventory>>>>, Rc<RefCell<Vec<Notice>>>);

    impl Backend for Published {
        type Server = ();
        type Error = &'static str;
        fn start(&mut self, _: &ResourceName, _: u64) -> Result<((), String), &'static str> {
            panic!("a DRA driver starts no device-plugin server")
        }
        fn register(&mut self, _: &ResourceName, _: &str) {
            panic!("a DRA driver registers no resource")
        }
        fn forget(&mut self, _: &ResourceName) {}
        fn socket_exists(&self, _: &str) -> bool {
            true
        }
        fn kubelet_socket(&self) -> Option<u64> {
            None
        }
        fn set_probes(&mut self, _: ProbeSet) {}
        fn exclusive(&self) -> bool {
            false
        }
        fn leases(&mut self, _: LeaseCmd) {}
        fn set_served_resources(&mut self, _: BTreeSet<ResourceName>) {}
        fn dra(&self) -> bool {
            true
        }
        fn publish(&mut self, inventory: Arc<Inventory>) {
            self.0.borrow_mut().push(inventory);
        }
        fn notify(&mut self, notice: Notice) {
            self.1.borrow_mut().push(notice);
        }
    }

    fn msg(yaml: &str) -> Msg {
        Msg::Config {
            origin: "t".into(),
            config: Config::parse(yaml.as_bytes(), "t").unwrap(),
        }
    }

    fn prepare(s: &mut State<Published>, devices: &[&str]) -> Result<usize, PrepareRefusal> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let claims = vec![ClaimDevices {
            uid: "u".into(),
            groups: vec![devices.iter().map(|d| (*d).to_owned()).collect()],
        }];
        s.handle(Msg::Prepare { claims, reply }, Instant::now());
        answer.recv().unwrap().remove(0).map(|envs| envs[0].len())
    }

    const ONE: &str = "deviceMapping:\n  - hosts: [n1]\n    devices:\n      - {resourceName: a.io/s, instanceID: '1'}\n";

    /// A device plugin advertising here a name this node serves by DRA (allocatable above 0)
    /// is a Warning once, shown in the status while it lasts; names this node does not serve by
    /// DRA, or serves on other nodes only, are not.
    #[test]
    fn a_device_plugin_serving_the_same_name_here_is_warned_about() {
        let notices: Rc<RefCell<Vec<Notice>>> = Rc::default();
        let node = NodeName::try_from("n1".to_owned()).unwrap();
        let mut s = State::new(
            node,
            Published(Rc::default(), notices.clone()),
            Instant::now(),
        );
        let two = "deviceMapping:\n  - hosts: [n1]\n    devices:\n      - {resourceName: a.io/s, instanceID: '1'}\n  - hosts: [n2]\n    devices:\n      - {resourceName: a.io/t, instanceID: '1'}\n";
        s.handle(msg(two), Instant::now());
        let advertises = |names: &[&str]| {
            let names = names.iter().map(|n| (*n).to_owned()).collect();
            Msg::Dra(DraEvent::NodeAdvertises(names))
        };
        let warnings = || -> Vec<(&'static str, String)> {
            (notices.borrow().iter())
                .filter(|n| n.warning)
                .map(|n| (n.reason, n.note.clone()))
                .collect()
        };
        let shown = |s: &State<Published>| -> Vec<String> {
            let snap = s.snapshot();
            let dra = snap.dra.unwrap();
            dra.served_by_device_plugin
                .iter()
                .map(|r| r.to_string())
                .collect()
        };
        s.handle(advertises(&["a.io/t", "b.io/u"]), Instant::now());
        assert_eq!((warnings(), shown(&s)), (vec![], Vec::<String>::new()));
        s.handle(advertises(&["a.io/s", "a.io/t"]), Instant::now());
        s.handle(advertises(&["a.io/s"]), Instant::now());
        let note = "a device plugin on node n1 also advertises a.io/s: pods asking for it in \
                    resources.limits are given the device plugin's devices there, not DRA's; \
                    deploy one mode per name (remove the device plugin, or this node from the \
                    DRA config)";
        assert_eq!(
            (warnings(), shown(&s)),
            (
                vec![("ServedByDevicePlugin", note.to_owned())],
                vec!["a.io/s".to_owned()]
            )
        );
        // The device plugin goes (or its allocatable drops to 0): cleared.
        s.handle(advertises(&[]), Instant::now());
        assert_eq!((warnings().len(), shown(&s)), (1, Vec::<String>::new()));
    }

    #[test]
    fn good_configs_are_published_once_and_bad_ones_never() {
        let published = Rc::new(RefCell::new(Vec::new()));
        let node = NodeName::try_from("n1".to_owned()).unwrap();
        let mut s = State::new(
            node,
            Published(published.clone(), Rc::default()),
            Instant::now(),
        );
        assert_eq!(
            prepare(&mut s, &["s-a-io-1"]),
            Err(PrepareRefusal::NoConfig)
        );
        s.handle(msg(ONE), Instant::now());
        s.handle(msg(ONE), Instant::now());
        assert_eq!(published.borrow().len(), 1);
        // Names that collide: the config is invalid here (and only here), the last good stays.
        let clash = "deviceMapping:\n  - hosts: [n1]\n    devices:\n      - {resourceName: a.io/s, instanceID: A}\n      - {resourceName: a.io/s, instanceID: a}\n";
        s.handle(msg(clash), Instant::now());
        assert_eq!(published.borrow().len(), 1);
        let snap = s.snapshot();
        assert_eq!((snap.reloads_ok, snap.reloads_error), (2, 1));
        // Served on no node in device-plugin terms, whatever the hosts.
        assert!(snap.resources.is_empty());
        assert_eq!(prepare(&mut s, &["s-a-io-1"]), Ok(5));
        assert_eq!(
            prepare(&mut s, &["s-a-io-2"]),
            Err(PrepareRefusal::Env(EnvRefusal::UnknownDevice(
                "s-a-io-2".into()
            )))
        );
        s.handle(Msg::Dra(DraEvent::Leader(true)), Instant::now());
        s.handle(
            Msg::Dra(DraEvent::Claims { ok: 2, failed: 1 }),
            Instant::now(),
        );
        let dra = s.snapshot().dra.unwrap();
        assert!(dra.leader);
        assert_eq!((dra.claims_ok, dra.claims_failed), (2, 1));
    }
}
