//! The checked config and what the rest of spookd reads of it: each node's devices, every device
//! with its hosts, the devices shared between hosts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{EnvKey, EnvValue, InstanceId, NodeName, ResourceName};

/// A device's env: keys unique, sorted.
///
/// A sorted slice, shared: a config of 10,000 devices holds 10,000 of these, once in the checked
/// config and again in each node's view. As `BTreeMap`s they took 544 bytes each for one or two
/// keys (a whole B-tree leaf) and were copied into the view: 5.4 MiB of the state thread's heap
/// at 10,000 devices. Shared slices take 16 bytes per view and the pairs once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env(pub(super) Arc<[(EnvKey, EnvValue)]>);

impl Env {
    /// The pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&EnvKey, &EnvValue)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<BTreeMap<EnvKey, EnvValue>> for Env {
    fn from(map: BTreeMap<EnvKey, EnvValue>) -> Env {
        Env(map.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Env {
    type Item = (&'a EnvKey, &'a EnvValue);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (EnvKey, EnvValue)>,
        fn(&'a (EnvKey, EnvValue)) -> (&'a EnvKey, &'a EnvValue),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

/// One device as a node serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub id: InstanceId,
    pub env: Env,
    /// `None`: the device is always Healthy.
    pub health_check: Option<HealthCheck>,
}

/// A device's TCP health probe: Healthy while `tcp` accepts connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    /// An IP address and port; names are refused (see `RawHealthCheck`, in `raw.rs`).
    pub tcp: SocketAddr,
    pub interval: Duration,
    /// At most `interval`.
    pub timeout: Duration,
    /// Consecutive failures that make a Healthy device Unhealthy; at least 1.
    pub failure_threshold: u32,
    /// Consecutive successes that make an Unhealthy device Healthy; at least 1.
    pub success_threshold: u32,
}

impl HealthCheck {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
    pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
    pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 1;
    /// Shortest interval: more often would cost the node more than it tells.
    pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
    /// Shortest timeout: a connect on a LAN needs at least this much.
    pub const MIN_TIMEOUT: Duration = Duration::from_millis(10);
    /// Longest interval (and so timeout): a device probed less often than hourly is not watched.
    /// The bound also keeps every deadline computed from it far from `Instant`'s range.
    pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
}

impl fmt::Display for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tcp {} every {:?}, timeout {:?}, Unhealthy after {} failures, Healthy after {} \
             successes",
            self.tcp, self.interval, self.timeout, self.failure_threshold, self.success_threshold
        )
    }
}

/// What one appearance of a device declares; every appearance must declare the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Declaration {
    pub(super) env: Env,
    pub(super) health_check: Option<HealthCheck>,
}

/// A device and every host that reaches it ([`Config::placements`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement<'a> {
    pub resource: &'a ResourceName,
    pub device: Device,
    pub hosts: Vec<&'a NodeName>,
}

/// The devices one node serves: per resource, its devices sorted by instanceID.
pub type NodeDevices = BTreeMap<ResourceName, Arc<[Device]>>;

/// A checked config: every rule holds.
///
/// Each device is held once; nodes hold indices: per-node sets of cloned keys made a reload of
/// 10,000 devices several times slower (docs/performance.md has the reload figures).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Every device once, sorted by (resource, instanceID).
    pub(super) devices: Vec<(ResourceName, InstanceId, Declaration)>,
    /// Per node, the indices into `devices` it serves: ascending, no repeats.
    pub(super) hosts: BTreeMap<NodeName, Vec<usize>>,
}

impl Config {
    /// The devices `node` serves. Empty when the node is in no mapping.
    pub fn for_node(&self, node: &NodeName) -> NodeDevices {
        let mut out = NodeDevices::new();
        let mut run: Vec<Device> = Vec::new();
        let served = self.hosts.get(node).map_or(&[][..], Vec::as_slice);
        // Every index in `hosts` indexes `devices` (both made by `check`).
        // Indices ascend in (resource, instanceID) order: each resource's devices are one run.
        for (n, &i) in served.iter().enumerate() {
            let (resource, id, declared) = &self.devices[i];
            run.push(Device {
                id: id.clone(),
                env: declared.env.clone(),
                health_check: declared.health_check,
            });
            let last_of_resource = served
                .get(n + 1)
                .is_none_or(|&next| self.devices[next].0 != *resource);
            if last_of_resource {
                out.insert(resource.clone(), std::mem::take(&mut run).into());
            }
        }
        out
    }

    /// Every device once, in (resource, instanceID) order, with the hosts that reach it (sorted).
    pub fn placements(&self) -> Vec<Placement<'_>> {
        let mut hosts: Vec<Vec<&NodeName>> = vec![Vec::new(); self.devices.len()];
        // Nodes come in order, so each device's hosts are sorted.
        for (node, served) in &self.hosts {
            for &i in served {
                hosts[i].push(node);
            }
        }
        (self.devices.iter().zip(hosts))
            .map(|((resource, id, declared), hosts)| Placement {
                resource,
                device: Device {
                    id: id.clone(),
                    env: declared.env.clone(),
                    health_check: declared.health_check,
                },
                hosts,
            })
            .collect()
    }

    /// Every node the config names.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeName> {
        self.hosts.keys()
    }

    /// Whether the config names `node`.
    pub fn has_node(&self, node: &NodeName) -> bool {
        self.hosts.contains_key(node)
    }

    /// The devices mapped to more than one host: those that need a Lease for exclusive access
    /// (one host's devices are already serialised by its kubelet).
    pub fn shared_devices(&self) -> BTreeSet<(ResourceName, InstanceId)> {
        let mut count = vec![0usize; self.devices.len()];
        for &i in self.hosts.values().flatten() {
            count[i] += 1;
        }
        (self.devices.iter().zip(count))
            .filter(|(_, n)| *n > 1)
            .map(|((resource, id, _), _)| (resource.clone(), id.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;

    #[test]
    fn seed_shape_per_node() {
        let c = parse(SEED).unwrap();
        let h1 = c.for_node(&node("lab1-host1"));
        assert_eq!(h1.len(), 1);
        assert_eq!(ids(&h1, "skao.int/oscilloscope"), ["0001", "0002"]);
        let h2 = c.for_node(&node("lab1-host2"));
        // 0001 is reached twice by host2 and advertised once.
        assert_eq!(ids(&h2, "skao.int/oscilloscope"), ["0001", "0002"]);
        assert_eq!(ids(&h2, "skao.int/signal-generator"), ["sg-1"]);
        assert!(c.for_node(&node("elsewhere")).is_empty());
        let env = &h1[&ResourceName::try_from("skao.int/oscilloscope".to_owned()).unwrap()][0].env;
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(env, [("IP", "10.0.10.215"), ("PORT", "5025")]);
    }

    #[test]
    fn shared_devices_are_those_of_several_hosts() {
        let c = parse(SEED).unwrap();
        let shared: Vec<String> = c
            .shared_devices()
            .iter()
            .map(|(r, i)| format!("{r} {i}"))
            .collect();
        // 0001 is reached twice by host2 and once by host1: two hosts. sg-1 has one host.
        assert_eq!(
            shared,
            ["skao.int/oscilloscope 0001", "skao.int/oscilloscope 0002"]
        );
    }

    #[test]
    fn empty_mapping_list_is_valid() {
        let c = parse("deviceMapping: []").unwrap();
        assert_eq!(c.nodes().count(), 0);
    }

    proptest::proptest! {
        /// Against a model of sets: each node serves the union of its mappings' devices, each
        /// once, grouped by resource and sorted by instanceID; shared devices are those of two or
        /// more nodes. Mappings repeat hosts and devices in any order.
        #[test]
        fn per_node_views_match_a_model_of_sets(
            mappings in proptest::collection::vec(
                (
                    proptest::collection::vec(0usize..4, 0..4),
                    proptest::collection::vec((0usize..3, 0usize..6), 0..8),
                ),
                0..6,
            )
        ) {
            let mut text = String::from(if mappings.is_empty() { "deviceMapping: []\n" } else { "deviceMapping:\n" });
            let mut model: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
            for (hosts, devices) in &mappings {
                let hosts: Vec<String> = hosts.iter().map(|h| format!("h{h}")).collect();
                let empty = if devices.is_empty() { " []" } else { "" };
                text.push_str(&format!("- hosts: [{}]\n  devices:{empty}\n", hosts.join(", ")));
                for (r, i) in devices {
                    // The env follows from the device, so repeats agree.
                    text.push_str(&format!(
                        "  - {{resourceName: r{r}.io/x, instanceID: \"i{i}\", env: {{K: v{r}{i}}}}}\n"
                    ));
                    for h in &hosts {
                        model.entry(h.clone()).or_default().entry(format!("r{r}.io/x")).or_default().insert(format!("i{i}"));
                    }
                }
            }
            let c = Config::parse(text.as_bytes(), "t").unwrap();
            for h in 0..4 {
                let name = format!("h{h}");
                let view = c.for_node(&node(&name));
                let got: BTreeMap<String, Vec<String>> = view
                    .iter()
                    .map(|(r, d)| (r.to_string(), d.iter().map(|d| d.id.to_string()).collect()))
                    .collect();
                let want: BTreeMap<String, Vec<String>> = model
                    .get(&name)
                    .into_iter()
                    .flatten()
                    .map(|(r, ids)| (r.clone(), ids.iter().cloned().collect()))
                    .collect();
                proptest::prop_assert_eq!(&got, &want);
                for (r, devices) in &view {
                    for d in devices.iter() {
                        let env: Vec<String> = d.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        proptest::prop_assert_eq!(env, [format!("K=v{}{}", &r.as_str()[1..2], &d.id.as_str()[1..])]);
                    }
                }
            }
            let mut hosts_of: BTreeMap<(String, String), usize> = BTreeMap::new();
            for resources in model.values() {
                for (r, ids) in resources {
                    for i in ids {
                        *hosts_of.entry((r.clone(), i.clone())).or_default() += 1;
                    }
                }
            }
            let want: Vec<(String, String)> = hosts_of.into_iter().filter(|(_, n)| *n > 1).map(|(k, _)| k).collect();
            let got: Vec<(String, String)> = c.shared_devices().into_iter().map(|(r, i)| (r.to_string(), i.to_string())).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
