//! `--exclusive-leases` in the state thread: which served devices are shared with other hosts
//! (given to the Lease thread), and which of them other nodes hold (advertised Unhealthy here).

use std::collections::BTreeSet;

use log::{debug, info};

use super::msg::{DeviceKey, LeaseCmd, LeaseReport};
use super::servers::push;
use super::{Backend, State};
use crate::config::{Config, InstanceId};

impl<B: Backend> State<B> {
    /// The devices served here that other hosts are mapped to too, given to the Lease thread when
    /// they change; then the devices other nodes hold are marked again, as the served set moved.
    pub(super) fn update_shared(&mut self, config: &Config) {
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
        self.mark_held_by_others();
    }

    pub(super) fn lease_report(&mut self, report: LeaseReport) {
        self.stats.leases_held = report.held_here as u64;
        self.stats.lease_acquisitions_won = report.won;
        self.stats.lease_acquisitions_lost = report.lost;
        self.held_here = report.mine;
        if report.held_by_others == self.held_by_others {
            return;
        }
        self.held_by_others = report.held_by_others;
        self.mark_held_by_others();
    }

    /// Sets each resource's devices held elsewhere from the last report; pushes what changed.
    pub(super) fn mark_held_by_others(&mut self) {
        for (resource, served) in &mut self.served {
            let held_by_others: BTreeSet<InstanceId> = self
                .held_by_others
                .iter()
                .filter(|((r, id), _)| r == resource && served.devices.iter().any(|d| d.id == *id))
                .map(|((_, id), holder)| {
                    debug!("{resource} {id}: held by node {holder}");
                    id.clone()
                })
                .collect();
            if held_by_others != served.held_by_others {
                info!(
                    "{resource}: held by other nodes now: {}",
                    if held_by_others.is_empty() {
                        "none".to_owned()
                    } else {
                        held_by_others
                            .iter()
                            .map(InstanceId::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                );
                served.held_by_others = held_by_others;
                push(resource, served);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::msg::{AllocateError, LeaseRefusal, Msg};
    use super::super::test_support::*;
    use super::*;

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
            held_by_others: held
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
}
