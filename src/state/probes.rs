//! Health probes: which devices are probed (given to the prober thread), what each probe last
//! saw, and a device's health change pushed to its resource's streams and told to operators.

use log::{debug, info, warn};

use super::msg::{Notice, ProbeSet};
use super::servers::push;
use super::{Backend, State};
use crate::config::{HealthCheck, InstanceId, ResourceName};

/// A probed device's check, and what its probe last saw (`None` before its first result).
#[derive(Debug)]
pub(super) struct Probed {
    pub(super) check: HealthCheck,
    pub(super) seen: Option<Box<str>>,
}

impl<B: Backend> State<B> {
    /// The health checks of every device served, given to the prober when they change. What a
    /// probe saw stays with its device while its check stays the same.
    pub(super) fn update_probes(&mut self) {
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
    }

    pub(super) fn health(
        &mut self,
        resource: &ResourceName,
        id: &InstanceId,
        healthy: bool,
        detail: &str,
    ) {
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
        self.backend.notify(Notice::health_change(
            healthy,
            format!(
                "node {}: {resource} device {:?} is {} ({detail})",
                self.node,
                id.as_str(),
                if healthy { "Healthy" } else { "Unhealthy" }
            ),
        ));
        self.stats.health_changes += 1;
        push(resource, served);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::State;

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
}
