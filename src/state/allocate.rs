//! Allocate: the kubelet's request answered with env, or parked until its shared devices' Leases
//! are taken (`--exclusive-leases`), then answered.

use std::collections::BTreeSet;

use log::{debug, info, warn};

use super::msg::{AllocateError, AllocateReply, ContainerEnv, DeviceKey, LeaseCmd, LeaseRefusal};
use super::{Backend, State};
use crate::config::layout::{self, Refusal};
use crate::config::ResourceName;

/// An Allocate waiting for its Leases.
pub(super) struct Parked {
    resource: ResourceName,
    containers: Vec<Vec<String>>,
    envs: Vec<ContainerEnv>,
    reply: AllocateReply,
}

impl<B: Backend> State<B> {
    /// Renders the env; a request naming a shared device first waits for its Leases.
    pub(super) fn allocate(
        &mut self,
        resource: ResourceName,
        containers: Vec<Vec<String>>,
        reply: AllocateReply,
    ) {
        let result = self.try_allocate(&resource, &containers);
        let shared = self.lease_devices(&resource, &containers);
        match result {
            Ok(envs) if !shared.is_empty() && self.backend.exclusive() => {
                let request = self.next_request;
                self.next_request += 1;
                debug!("{resource}: Allocate {request} waits for its Leases");
                self.parked.insert(
                    request,
                    Parked {
                        resource,
                        containers,
                        envs,
                        reply,
                    },
                );
                self.backend.leases(LeaseCmd::Acquire {
                    request,
                    devices: shared,
                });
            }
            result => self.answer(&resource, &containers, result, reply),
        }
    }

    /// The Leases of a parked Allocate were all taken (or refused): it is answered now.
    pub(super) fn leases_taken(&mut self, request: u64, result: Result<(), LeaseRefusal>) {
        if let Some(p) = self.parked.remove(&request) {
            let result = result.map(|()| p.envs).map_err(AllocateError::Lease);
            self.answer(&p.resource, &p.containers, result, p.reply);
        }
    }

    /// Answers an Allocate, logging and counting it. The kubelet may have given up (deadline):
    /// nothing to do then.
    fn answer(
        &mut self,
        resource: &ResourceName,
        containers: &[Vec<String>],
        result: Result<Vec<ContainerEnv>, AllocateError>,
        reply: AllocateReply,
    ) {
        match &result {
            Ok(_) => {
                for ids in containers {
                    info!("{resource}: allocated {} to a container", ids.join(", "));
                }
                let served = self.served.get(resource);
                for id in containers.iter().flatten() {
                    if served.is_some_and(|s| s.unhealthy.contains(id.as_str())) {
                        warn!("{resource} {id}: allocated while Unhealthy (the kubelet chose it)");
                    }
                }
            }
            Err(e) => warn!("Allocate refused: {e}"),
        }
        let outcome = if result.is_ok() { "ok" } else { "error" };
        *self
            .stats
            .allocations
            .entry((resource.to_string(), outcome))
            .or_default() += 1;
        let _ = reply.send(result);
    }

    /// The requested devices that need a Lease.
    fn lease_devices(&self, resource: &ResourceName, containers: &[Vec<String>]) -> Vec<DeviceKey> {
        let asked: BTreeSet<&str> = containers.iter().flatten().map(String::as_str).collect();
        self.shared
            .iter()
            .filter(|(r, id)| r == resource && asked.contains(id.as_str()))
            .cloned()
            .collect()
    }

    fn try_allocate(
        &self,
        resource: &ResourceName,
        containers: &[Vec<String>],
    ) -> Result<Vec<ContainerEnv>, AllocateError> {
        let served = self
            .served
            .get(resource)
            .ok_or_else(|| AllocateError::NotServed {
                resource: resource.clone(),
            })?;
        layout::allocate(resource, &served.devices, containers).map_err(|refusal| {
            let resource = resource.clone();
            match refusal {
                Refusal::NoContainers => AllocateError::NoContainers { resource },
                Refusal::NoDevices => AllocateError::NoDevices { resource },
                Refusal::UnknownDevice(id) => AllocateError::UnknownDevice { resource, id },
                Refusal::DuplicateDevice(id) => AllocateError::DuplicateDevice { resource, id },
                Refusal::TooLarge { bytes, limit } => AllocateError::TooLarge {
                    resource,
                    bytes,
                    limit,
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::msg::{AllocateError, Msg};
    use super::super::test_support::*;
    use super::super::State;
    use futures_channel::oneshot;

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
}
