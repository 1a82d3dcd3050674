//! `--dra`: the state thread as a DRA driver's owner. A good config becomes an [`Inventory`]
//! (a config whose devices cannot be published is invalid: the last good one stays) handed to the
//! publisher; the kubelet plugin asks for each claim's env ([`Msg::Prepare`]); both report what
//! they did ([`Msg::Dra`]) for /metrics.

use std::sync::Arc;

use log::info;

use crate::config::dra::Inventory;
use crate::config::Config;
#[cfg(doc)]
use crate::state::msg::Msg;
use crate::state::msg::{ClaimDevices, DraEvent, DraStatus, Notice, PrepareRefusal, PrepareReply};
use crate::state::{Backend, State};

/// The DRA driver's part of the state.
#[derive(Default)]
pub(super) struct Driver {
    inventory: Option<Arc<Inventory>>,
    pub(super) status: DraStatus,
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
        let (devices, resources) = (inventory.devices().len(), inventory.classes().len());
        info!("{origin}: {devices} devices of {resources} resources to publish");
        self.backend.publish(inventory);
        self.backend.notify(Notice::new(
            false,
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

    pub(super) fn dra_event(&mut self, event: DraEvent) {
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

    struct Published(Rc<RefCell<Vec<Arc<Inventory>>>>);

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
        fn served(&mut self, _: BTreeSet<ResourceName>) {}
        fn dra(&self) -> bool {
            true
        }
        fn publish(&mut self, inventory: Arc<Inventory>) {
            self.0.borrow_mut().push(inventory);
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

    #[test]
    fn good_configs_are_published_once_and_bad_ones_never() {
        let published = Rc::new(RefCell::new(Vec::new()));
        let node = NodeName::try_from("n1".to_owned()).unwrap();
        let mut s = State::new(node, Published(published.clone()), Instant::now());
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
