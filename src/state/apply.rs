//! A good config applied: this node's resources diffed against what it serves (new ones get a
//! server, changed ones push their list, removed ones retire), then the probes, the shared
//! devices and the served names updated, and the operators told. A bad config only counted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use log::{error, info, warn};

use super::msg::Notice;
use super::servers::{push, Served};
use super::{Backend, State};
use crate::config::{Config, ConfigError, Device, InstanceId, ResourceName};

impl<B: Backend> State<B> {
    /// A good config: counted, then applied.
    pub(super) fn config(&mut self, origin: &str, config: &Config, now: Instant) {
        if self.dra.is_some() {
            return self.dra_config(origin, config);
        }
        self.count_good();
        self.apply(origin, config, now);
    }

    pub(super) fn count_good(&mut self) {
        self.stats.reloads_ok += 1;
        self.stats.source_problem = None;
        self.stats.last_reload_success = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs_f64());
    }

    /// A config that failed a check, or could not be read: logged, counted; the last good stays.
    pub(super) fn config_invalid(&mut self, e: &ConfigError) {
        self.backend.notify(Notice::warning(
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
                            held_by_others: BTreeSet::new(),
                            server: None,
                            streams: Vec::new(),
                        },
                    );
                    self.start_server(&resource);
                    changed += 1;
                }
            }
        }
        self.update_probes();
        if self.backend.exclusive() {
            self.update_shared(config);
        }
        let names: BTreeSet<ResourceName> = self.served.keys().cloned().collect();
        if self.last_served_resources.as_ref() != Some(&names) {
            self.last_served_resources = Some(names.clone());
            self.backend.set_served_resources(names);
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
        self.backend.notify(Notice::normal(
            "ConfigApplied",
            "Apply",
            format!(
                "node {} applied the config from {origin}: {} resources, {count} devices ({serves})",
                self.node,
                self.served.len()
            ),
        ));
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

#[cfg(test)]
mod tests {
    use super::super::msg::Msg;
    use super::super::test_support::*;
    use super::super::RETIRE_GRACE;
    use super::*;
    use crate::config::NodeName;
    use std::time::Duration;

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
}
