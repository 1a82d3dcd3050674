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
use crate::state::msg::{ClaimDevices, DraEvent, DraStatus, PrepareRefusal, PrepareReply};
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
        info!(
            "{origin}: {} devices of {} resources to publish",
            inventory.devices().len(),
            inventory.classes().len()
        );
        driver.inventory = Some(inventory.clone());
        self.backend.publish(inventory);
    }

    pub(super) fn prepare(&mut self, claims: &[ClaimDevices], reply: &PrepareReply) {
        let inventory = self.dra.as_ref().and_then(|d| d.inventory.as_deref());
        let answers = claims
            .iter()
            .map(|claim| {
                let inventory = inventory.ok_or(PrepareRefusal::NoConfig)?;
                let names: Vec<&str> = claim.devices.iter().map(String::as_str).collect();
                inventory.env(&names).map_err(PrepareRefusal::Env)
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
            } => {
                status.generation = generation;
                status.slices = slices;
                status.devices = devices;
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
