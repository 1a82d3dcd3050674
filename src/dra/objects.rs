//! The API objects a DRA driver writes (`resource.k8s.io/v1` ResourceSlices and DeviceClasses),
//! built from an [`Inventory`] alone: every leader builds the same ones. Typed both ways: what is
//! read back is compared with what would be written, field by field, ignoring what the server
//! adds.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::dra::{DraDevice, Inventory, MAX_SLICE_DEVICES, RESOURCE_ATTRIBUTE};

/// Most devices in a slice that may hold a tainted device (a device with a healthCheck).
pub const MAX_TAINTED_SLICE_DEVICES: usize = 64;
/// Longest taint value (a label value).
const MAX_TAINT_VALUE: usize = 63;
use crate::config::NodeName;

pub const API_VERSION: &str = "resource.k8s.io/v1";
/// The one pool of a driver's devices.
pub const POOL: &str = "spookd";
/// Labels on every object spookd writes, to list its own.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "spookd");
/// The second label: the driver the object belongs to.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    /// Empty in a create that names only [`Meta::generate_name`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The API server names the object: this prefix and 5 random characters.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub generate_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSlice {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: Meta,
    pub spec: SliceSpec,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceSpec {
    pub driver: String,
    pub pool: Pool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<NodeSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_nodes: Option<bool>,
    #[serde(default)]
    pub devices: Vec<SliceDevice>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    pub name: String,
    #[serde(default)]
    pub generation: i64,
    #[serde(default)]
    pub resource_slice_count: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelector {
    pub node_selector_terms: Vec<NodeSelectorTerm>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelectorTerm {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_fields: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Requirement {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceDevice {
    pub name: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, Attribute>,
    /// `NoSchedule` while no live host's probe reaches the device (KEP-5055): the scheduler
    /// allocates it to no new claim. A server with the `DRADeviceTaints` gate off drops it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
}

/// A device taint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    pub effect: String,
    /// Set by the server when absent: never written, never compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_added: Option<String>,
}

/// The key of the taint spookd puts on an Unhealthy device: in the driver's domain.
pub fn taint_key(driver: &str) -> String {
    format!("{driver}/unhealthy")
}

/// A probe's message as a taint value (a label value): other characters as `-` (runs as one),
/// cut to 63 characters, starting and ending with a letter or digit; empty if nothing is left.
pub fn taint_value(message: &str) -> String {
    let mut out = String::new();
    for c in message.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
            c
        } else {
            '-'
        };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
        if out.len() >= MAX_TAINT_VALUE {
            break;
        }
    }
    out.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// A device attribute: exactly one of its fields is set (spookd writes strings).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attribute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bool: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceClass {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: Meta,
    pub spec: ClassSpec,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClassSpec {
    #[serde(default)]
    pub selectors: Vec<Selector>,
    /// The extended resource a pod asks for in `resources.limits` that this class serves
    /// (KEP-5004): the resource's own name, so the seed's pods run unchanged. A server with the
    /// `DRAExtendedResource` gate off drops it (see [`Kept`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_resource_name: Option<String>,
}

/// Which of the newer fields the API server keeps. A server with a feature gate off drops the
/// field on write without a word, so what it keeps is learnt from what a write returns: comparing
/// with what was wanted regardless would rewrite the object forever. `None` until a write tells.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kept {
    /// `DeviceClass.spec.extendedResourceName` (gate `DRAExtendedResource`: beta, on, in 1.36).
    pub extended_resource_name: Option<bool>,
    /// `ResourceSlice.spec.devices[].taints` (gate `DRADeviceTaints`: beta, on, in 1.36).
    pub taints: Option<bool>,
}

impl Kept {
    /// What the server dropped, by field, for the log and `spookd status`.
    pub fn dropped(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.extended_resource_name == Some(false) {
            out.push("DeviceClass extendedResourceName");
        }
        if self.taints == Some(false) {
            out.push("ResourceSlice device taints");
        }
        out
    }

    /// A digest of a slice's spec as compared: without what the server sets (a taint's
    /// `timeAdded`), without taints where the server drops them, and without any taints unless
    /// `with_taints`. Keyed by `keys` (random per publish), so no slice can be made to collide
    /// with another on purpose; a publish compares digests, not slices, so it never holds the
    /// pool read back (a pool of 20,000 devices is tens of MiB typed).
    pub fn digest(&self, spec: &SliceSpec, with_taints: bool, keys: &impl BuildHasher) -> u64 {
        let mut h = keys.build_hasher();
        // Destructured: a field added to the spec must be decided on here.
        let SliceSpec {
            driver,
            pool,
            node_name,
            node_selector,
            all_nodes,
            devices,
        } = spec;
        (driver, pool, node_name, node_selector, all_nodes).hash(&mut h);
        devices.len().hash(&mut h);
        let taints = with_taints && self.taints != Some(false);
        for SliceDevice {
            name,
            attributes,
            taints: t,
        } in devices
        {
            (name, attributes).hash(&mut h);
            if taints {
                t.len().hash(&mut h);
                for Taint {
                    key,
                    value,
                    effect,
                    time_added: _,
                } in t
                {
                    (key, value, effect).hash(&mut h);
                }
            }
        }
        h.finish()
    }

    /// Learns from a slice written as `sent` and stored as `stored`.
    pub fn learn_slice(&mut self, sent: &SliceSpec, stored: &SliceSpec) {
        let tainted = |s: &SliceSpec| s.devices.iter().any(|d| !d.taints.is_empty());
        if tainted(sent) {
            self.taints = Some(tainted(stored));
        }
    }

    /// Whether a class the server holds (`old`) is the one wanted, by what the server keeps.
    pub fn same_class(&self, old: &ClassSpec, want: &ClassSpec) -> bool {
        old.selectors == want.selectors
            && (old.extended_resource_name == want.extended_resource_name
                || (self.extended_resource_name == Some(false)
                    && old.extended_resource_name.is_none()))
    }

    /// Learns from a class written as `sent` and stored as `stored`.
    pub fn learn_class(&mut self, sent: &ClassSpec, stored: &ClassSpec) {
        if sent.extended_resource_name.is_some() {
            self.extended_resource_name = Some(stored.extended_resource_name.is_some());
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector {
    pub cel: Cel,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cel {
    pub expression: String,
}

/// A list as the API answers it (one page of it).
#[derive(Debug, Deserialize)]
pub struct List<T> {
    #[serde(default = "Vec::new")]
    pub items: Vec<T>,
    #[serde(default)]
    pub metadata: ListMeta,
}

#[derive(Debug, Default, Deserialize)]
pub struct ListMeta {
    /// Where the next page starts; empty on the last.
    #[serde(default, rename = "continue")]
    pub next: String,
    /// The list's version (of its first page: a paged list is one snapshot), to watch from.
    #[serde(default, rename = "resourceVersion")]
    pub resource_version: String,
}

/// An object read for its name and version only: a watch that only notices changes keeps no
/// more (serde skips the rest).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Named {
    #[serde(default)]
    pub metadata: Meta,
}

impl crate::kube::watch::Versioned for Named {
    fn resource_version(&self) -> &str {
        &self.metadata.resource_version
    }
}

impl crate::kube::watch::Versioned for ResourceSlice {
    fn resource_version(&self) -> &str {
        &self.metadata.resource_version
    }
}

/// The labels of every object of `driver`.
pub fn labels(driver: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (INSTANCE_LABEL.to_owned(), driver.to_owned()),
    ])
}

/// The name of slice number `n` of `driver`'s pool.
pub fn slice_name(driver: &str, n: usize) -> String {
    format!("{driver}-{n}")
}

/// The label the kubelet sets to the node's host name, which is its name (`--hostname-override`
/// changes both alike).
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// The node selector of a host set. One host: its name (`metadata.name`, a field). Several: the
/// API takes one node selector term, and a field requirement with one value only, so they are
/// matched by their `kubernetes.io/hostname` label. (Always a selector, even for one host: the
/// kubelet deletes the slices naming its node in `nodeName` when our plugin goes away, and these
/// are the publisher's.)
fn selector(hosts: &[NodeName]) -> NodeSelector {
    let values: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    let (match_fields, match_expressions) = if values.len() == 1 {
        let field = Requirement {
            key: "metadata.name".to_owned(),
            operator: "In".to_owned(),
            values,
        };
        (vec![field], Vec::new())
    } else {
        let label = Requirement {
            key: HOSTNAME_LABEL.to_owned(),
            operator: "In".to_owned(),
            values,
        };
        (Vec::new(), vec![label])
    };
    NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_expressions,
            match_fields,
        }],
    }
}

fn device(driver: &str, d: &DraDevice, taints: &Taints) -> SliceDevice {
    SliceDevice {
        taints: (taints.get(&d.name).iter())
            .map(|message| Taint {
                key: taint_key(driver),
                value: taint_value(message),
                effect: "NoSchedule".to_owned(),
                time_added: None,
            })
            .collect(),
        name: d.name.clone(),
        attributes: (d.attributes().0.into_iter())
            .map(|(k, v)| {
                let value = Attribute {
                    string: Some(v.to_owned()),
                    ..Attribute::default()
                };
                (k.to_owned(), value)
            })
            .collect(),
    }
}

/// The pool's layout: devices grouped by host set (sets in order, devices by name), at most
/// [`MAX_SLICE_DEVICES`] a slice ([`MAX_TAINTED_SLICE_DEVICES`] in a group with a probed device,
/// which may be tainted: the layout does not change with health), named `<driver>-<n>` (the
/// publisher may keep another name: slices are told apart by their driver, not their names).
/// Slices are built from it one at a time ([`Layout::slice`]): a publish holds one, not the pool.
pub struct Layout<'a> {
    driver: &'a str,
    /// Each host set's devices.
    groups: Vec<(&'a Arc<[NodeName]>, Vec<&'a DraDevice>)>,
    /// Each slice: its group, and the range of the group's devices it holds.
    chunks: Vec<(usize, std::ops::Range<usize>)>,
}

impl<'a> Layout<'a> {
    pub fn new(driver: &'a str, inventory: &'a Inventory) -> Self {
        let mut by_hosts: BTreeMap<&Arc<[NodeName]>, Vec<&DraDevice>> = BTreeMap::new();
        for d in inventory.devices() {
            by_hosts.entry(&d.hosts).or_default().push(d);
        }
        let groups: Vec<_> = by_hosts.into_iter().collect();
        let mut chunks = Vec::new();
        for (g, (_, devices)) in groups.iter().enumerate() {
            let probed = devices.iter().any(|d| d.device.health_check.is_some());
            let size = if probed {
                MAX_TAINTED_SLICE_DEVICES
            } else {
                MAX_SLICE_DEVICES
            };
            let mut at = 0;
            while at < devices.len() {
                let end = devices.len().min(at + size);
                chunks.push((g, at..end));
                at = end;
            }
        }
        Layout {
            driver,
            groups,
            chunks,
        }
    }

    /// How many slices the pool has.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Slice `n`'s name.
    pub fn name(&self, n: usize) -> String {
        slice_name(self.driver, n)
    }

    /// Slice `n` (below [`Layout::len`]) at `generation`; the devices of `taints` carry a
    /// `NoSchedule` taint.
    pub fn slice(&self, n: usize, generation: i64, taints: &Taints) -> ResourceSlice {
        let (g, range) = &self.chunks[n];
        let (hosts, devices) = &self.groups[*g];
        let driver = self.driver;
        ResourceSlice {
            api_version: API_VERSION.to_owned(),
            kind: "ResourceSlice".to_owned(),
            metadata: Meta {
                name: self.name(n),
                generate_name: String::new(),
                resource_version: String::new(),
                labels: labels(driver),
            },
            spec: SliceSpec {
                driver: driver.to_owned(),
                pool: Pool {
                    name: POOL.to_owned(),
                    generation,
                    resource_slice_count: self.chunks.len() as i64,
                },
                node_name: None,
                node_selector: Some(selector(hosts)),
                all_nodes: None,
                devices: (devices[range.clone()].iter())
                    .map(|d| device(driver, d, taints))
                    .collect(),
            },
        }
    }
}

/// The whole pool's slices at `generation` (see [`Layout`]).
#[cfg(test)]
pub fn slices(
    driver: &str,
    inventory: &Inventory,
    generation: i64,
    taints: &Taints,
) -> Vec<ResourceSlice> {
    let layout = Layout::new(driver, inventory);
    (0..layout.len())
        .map(|n| layout.slice(n, generation, taints))
        .collect()
}

/// What spookd publishes of a device's health: `device name → the probe's message` for each
/// device to taint.
pub type Taints = BTreeMap<String, String>;

/// One DeviceClass per resource, selecting this driver's devices of that resource, and serving
/// pods that ask for the resource by its name as an extended resource.
pub fn classes(driver: &str, inventory: &Inventory) -> Vec<DeviceClass> {
    (inventory.classes().iter())
        .map(|(name, resource)| DeviceClass {
            api_version: API_VERSION.to_owned(),
            kind: "DeviceClass".to_owned(),
            metadata: Meta {
                name: name.clone(),
                generate_name: String::new(),
                resource_version: String::new(),
                labels: labels(driver),
            },
            spec: ClassSpec {
                selectors: vec![Selector {
                    // Driver names are DNS subdomains and resource names extended resource
                    // names: neither holds a quote or a backslash.
                    cel: Cel {
                        expression: format!(
                            "device.driver == \"{driver}\" && \
                             device.attributes[\"{driver}\"].{RESOURCE_ATTRIBUTE} == \"{resource}\""
                        ),
                    },
                }],
                extended_resource_name: Some(resource.to_string()),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn inventory(yaml: &str) -> Inventory {
        Inventory::new(&Config::parse(yaml.as_bytes(), "t").unwrap(), "t").unwrap()
    }

    #[test]
    fn devices_are_grouped_by_host_set_and_chunked() {
        let mut yaml = String::from("deviceMapping:\n  - hosts: [b, a]\n    devices:\n");
        for i in 0..130 {
            yaml.push_str(&format!(
                "      - {{resourceName: a.io/x, instanceID: '{i:03}'}}\n"
            ));
        }
        yaml.push_str("  - hosts: [c]\n    devices:\n      - {resourceName: a.io/y, instanceID: '1', env: {IP: 10.0.0.1}}\n");
        let slices = slices("d.io", &inventory(&yaml), 7, &Taints::new());
        let summary: Vec<(String, Vec<String>, usize, i64, i64)> = slices
            .iter()
            .map(|s| {
                let terms = &s.spec.node_selector.as_ref().unwrap().node_selector_terms;
                assert_eq!(terms.len(), 1);
                let term = &terms[0];
                let r = term
                    .match_fields
                    .first()
                    .or(term.match_expressions.first())
                    .unwrap();
                if term.match_fields.is_empty() {
                    assert_eq!(r.key, HOSTNAME_LABEL);
                } else {
                    assert_eq!((r.key.as_str(), r.values.len()), ("metadata.name", 1));
                }
                let values = r.values.clone();
                (
                    s.metadata.name.clone(),
                    values,
                    s.spec.devices.len(),
                    s.spec.pool.generation,
                    s.spec.pool.resource_slice_count,
                )
            })
            .collect();
        let ab = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(
            summary,
            [
                ("d.io-0".to_owned(), ab.clone(), 128, 7, 3),
                ("d.io-1".to_owned(), ab, 2, 7, 3),
                ("d.io-2".to_owned(), vec!["c".to_owned()], 1, 7, 3),
            ]
        );
        let y = &slices[2].spec.devices[0];
        assert_eq!(y.name, "y-a-io-1");
        assert_eq!(y.attributes["IP"].string.as_deref(), Some("10.0.0.1"));
        assert_eq!(
            y.attributes["resourceName"].string.as_deref(),
            Some("a.io/y")
        );
        // What is read back compares equal to what was written.
        let text = serde_yaml::to_string(&slices[2]).unwrap();
        let back: ResourceSlice = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back, slices[2]);
    }

    #[test]
    fn one_class_per_resource() {
        let classes = classes(
            "d.io",
            &inventory("deviceMapping:\n  - hosts: [a]\n    devices:\n      - {resourceName: skao.int/oscilloscope, instanceID: '1'}\n"),
        );
        assert_eq!(classes.len(), 1);
        assert_eq!(classes[0].metadata.name, "oscilloscope.skao.int");
        assert_eq!(
            classes[0].spec.selectors[0].cel.expression,
            "device.driver == \"d.io\" && device.attributes[\"d.io\"].resourceName == \"skao.int/oscilloscope\""
        );
    }
}
