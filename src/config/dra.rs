//! The config as a DRA driver publishes it (`--dra`): every device once, named as a DNS label,
//! with its attributes and the hosts that reach it; one DeviceClass name per resource; and the env
//! a claim's containers get. Pure: the publisher turns it into ResourceSlices, the state thread
//! renders a claim's env from it.
//!
//! Names are derived from the device alone, so every node and every leader derives the same:
//! - a device `skao.int/oscilloscope` + `0001` is `oscilloscope-skao-int-0001`: the resource's
//!   name, its domain and the instanceID, lower-cased, every other character as `-` (runs of them
//!   as one). Longer than 63: cut, and a hash of the exact resource and instanceID appended.
//! - its DeviceClass is `oscilloscope.skao.int`: `<name>.<domain>`, lower-cased, `_` as `-`.
//!
//! Two devices (or resources) that derive one name are refused, as a config error: `A1` and
//! `a1`, or `sg-1` and `sg_1`, cannot both be published.
//!
//! Attributes (unqualified, so in the driver's domain): `resourceName` and `instanceID` (strings),
//! then each env key whose name is at most 32 characters and whose value is at most 64 bytes, in
//! key order while the device has fewer than 32 attributes (the API's limits). Other env keys are
//! not published (they still reach the container's env).

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use crate::config::layout;
use crate::config::{Config, ConfigError, Device, InstanceId, NodeName, ResourceName};
use crate::hash::stable_hash;

/// Most devices in one ResourceSlice (`ResourceSliceMaxDevices`).
pub const MAX_SLICE_DEVICES: usize = 128;
/// Most attributes and capacities of one device.
pub const MAX_ATTRIBUTES: usize = 32;
/// Longest attribute name (a C identifier: `DeviceMaxIDLength`).
pub const MAX_ATTRIBUTE_NAME: usize = 32;
/// Longest string attribute value, in bytes (`DeviceAttributeMaxValueLength`).
pub const MAX_STRING_ATTRIBUTE: usize = 64;
/// The attribute naming a device's resource; DeviceClasses select on it.
pub const RESOURCE_ATTRIBUTE: &str = "resourceName";
/// The attribute carrying a device's instanceID.
pub const INSTANCE_ATTRIBUTE: &str = "instanceID";
/// Longest DNS label.
const MAX_LABEL: usize = 63;

/// One published device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DraDevice {
    /// Its name in the ResourceSlice: a DNS label.
    pub name: String,
    pub resource: ResourceName,
    pub device: Device,
    /// Every host that reaches it, sorted.
    pub hosts: Arc<[NodeName]>,
}

impl DraDevice {
    /// Its published attributes (name, string value), in the order derived, and the env keys
    /// left out (too long, or too many). Derived when a slice is built, not stored: held per
    /// device, they were a third of a 10,000-device pool's memory, twice over a reload.
    pub fn attributes(&self) -> (Vec<(&str, &str)>, Vec<&str>) {
        let mut attributes = vec![
            (RESOURCE_ATTRIBUTE, self.resource.as_str()),
            (INSTANCE_ATTRIBUTE, self.device.id.as_str()),
        ];
        let mut skipped = Vec::new();
        for (key, value) in &self.device.env {
            let (key, value) = (key.as_str(), value.as_str());
            let fits = key.len() <= MAX_ATTRIBUTE_NAME
                && value.len() <= MAX_STRING_ATTRIBUTE
                && attributes.len() < MAX_ATTRIBUTES
                && !attributes.iter().any(|(k, _)| *k == key);
            if fits {
                attributes.push((key, value));
            } else {
                skipped.push(key);
            }
        }
        (attributes, skipped)
    }
}

/// Everything a DRA driver publishes from one config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Sorted by name.
    devices: Vec<DraDevice>,
    /// DeviceClass name → its resource.
    classes: BTreeMap<String, ResourceName>,
}

/// Why a claim's env cannot be rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvRefusal {
    /// A device name the config does not have (any more).
    UnknownDevice(String),
    /// The env would be more than a container may be given.
    TooLarge { bytes: usize, limit: usize },
}

impl Inventory {
    /// Names and checks every device of `config`; `origin` names the config in errors.
    pub fn new(config: &Config, origin: &str) -> Result<Inventory, ConfigError> {
        let mut devices: Vec<DraDevice> = Vec::new();
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut classes: BTreeMap<String, ResourceName> = BTreeMap::new();
        let mut hosts_seen: BTreeMap<Vec<&NodeName>, Arc<[NodeName]>> = BTreeMap::new();
        for placement in config.placements() {
            let resource = placement.resource;
            let id = &placement.device.id;
            for (attribute, value) in [
                (RESOURCE_ATTRIBUTE, resource.as_str()),
                (INSTANCE_ATTRIBUTE, id.as_str()),
            ] {
                if value.len() > MAX_STRING_ATTRIBUTE {
                    return Err(ConfigError::DraAttributeTooLong {
                        origin: origin.to_owned(),
                        resource: resource.clone(),
                        instance: id.clone(),
                        attribute,
                        limit: MAX_STRING_ATTRIBUTE,
                    });
                }
            }
            let class = class_name(resource);
            match classes.entry(class) {
                Entry::Occupied(e) if e.get() != resource => {
                    return Err(ConfigError::DraNameCollision {
                        origin: origin.to_owned(),
                        what: "DeviceClass name",
                        first: e.get().to_string(),
                        second: resource.to_string(),
                        name: e.key().clone(),
                    })
                }
                Entry::Occupied(_) => {}
                Entry::Vacant(e) => {
                    e.insert(resource.clone());
                }
            }
            let name = device_name(resource, id);
            if let Some(&other) = names.get(&name) {
                let first: &DraDevice = &devices[other];
                return Err(ConfigError::DraNameCollision {
                    origin: origin.to_owned(),
                    what: "device name",
                    first: format!(
                        "{} instanceID {:?}",
                        first.resource,
                        first.device.id.as_str()
                    ),
                    second: format!("{resource} instanceID {:?}", id.as_str()),
                    name,
                });
            }
            // Devices of one host set share the list (a config of 10,000 devices has few sets).
            let hosts = hosts_seen
                .entry(placement.hosts.clone())
                .or_insert_with(|| placement.hosts.iter().map(|h| (*h).clone()).collect())
                .clone();
            names.insert(name.clone(), devices.len());
            devices.push(DraDevice {
                name,
                resource: resource.clone(),
                device: placement.device,
                hosts,
            });
        }
        devices.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Inventory { devices, classes })
    }

    /// Every device, sorted by name.
    pub fn devices(&self) -> &[DraDevice] {
        &self.devices
    }

    /// The device named `name`.
    pub fn device(&self, name: &str) -> Option<&DraDevice> {
        self.devices
            .binary_search_by(|d| d.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.devices[i])
    }

    /// DeviceClass name → resource.
    pub fn classes(&self) -> &BTreeMap<String, ResourceName> {
        &self.classes
    }

    /// The env of a claim given devices `names` (in any order, repeats counted once): per resource
    /// the seed's layout, its devices numbered DEV0… by instanceID within the claim.
    pub fn env(&self, names: &[&str]) -> Result<BTreeMap<String, String>, EnvRefusal> {
        let mut per_resource: BTreeMap<&ResourceName, Vec<&Device>> = BTreeMap::new();
        let mut picked: Vec<&str> = names.to_vec();
        picked.sort_unstable();
        picked.dedup();
        for name in picked {
            let d = self
                .device(name)
                .ok_or_else(|| EnvRefusal::UnknownDevice(name.to_owned()))?;
            per_resource.entry(&d.resource).or_default().push(&d.device);
        }
        let mut env = BTreeMap::new();
        for (resource, devices) in per_resource {
            env.extend(layout::render(resource, &devices));
        }
        let bytes: usize = env.iter().map(|(k, v)| k.len() + 1 + v.len()).sum();
        if bytes > layout::MAX_CONTAINER_ENV_BYTES {
            return Err(EnvRefusal::TooLarge {
                bytes,
                limit: layout::MAX_CONTAINER_ENV_BYTES,
            });
        }
        Ok(env)
    }
}

/// The device's name in a ResourceSlice (see the module doc).
pub fn device_name(resource: &ResourceName, id: &InstanceId) -> String {
    let (domain, name) = resource
        .as_str()
        .split_once('/')
        .unwrap_or(("", resource.as_str()));
    let mut out = String::with_capacity(MAX_LABEL);
    for c in format!("{name}-{domain}-{id}").chars() {
        let c = match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    while out.ends_with('-') {
        out.pop();
    }
    if out.len() > MAX_LABEL {
        let hash = stable_hash(&[resource.as_str().as_bytes(), b"\0", id.as_str().as_bytes()]);
        out.truncate(MAX_LABEL - 9);
        while out.ends_with('-') {
            out.pop();
        }
        let _ = write!(out, "-{:08x}", hash as u32);
    }
    if out.is_empty() {
        // An instanceID of only punctuation on a resource of only punctuation cannot happen (a
        // resource's name starts with a letter or digit), but a name must never be empty.
        out.push('d');
    }
    out
}

/// The DeviceClass of a resource: `<name>.<domain>`, lower-cased, `_` as `-`; each label starts
/// and ends with a letter or digit.
pub fn class_name(resource: &ResourceName) -> String {
    let (domain, name) = resource
        .as_str()
        .split_once('/')
        .unwrap_or(("", resource.as_str()));
    let labels: Vec<String> = name
        .split('.')
        .map(|label| {
            let mapped: String = label
                .chars()
                .map(|c| match c {
                    'A'..='Z' => c.to_ascii_lowercase(),
                    'a'..='z' | '0'..='9' | '-' => c,
                    _ => '-',
                })
                .collect();
            mapped.trim_matches('-').to_owned()
        })
        .filter(|l| !l.is_empty())
        .collect();
    format!("{}.{domain}", labels.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::is_dns_label;

    fn res(s: &str) -> ResourceName {
        ResourceName::try_from(s.to_owned()).unwrap()
    }

    fn id(s: &str) -> InstanceId {
        InstanceId::try_from(s.to_owned()).unwrap()
    }

    #[test]
    fn device_names_are_readable_dns_labels() {
        let scope = res("skao.int/oscilloscope");
        assert_eq!(
            device_name(&scope, &id("0001")),
            "oscilloscope-skao-int-0001"
        );
        assert_eq!(
            device_name(&scope, &id("sg-1")),
            "oscilloscope-skao-int-sg-1"
        );
        assert_eq!(
            device_name(&scope, &id("A1234")),
            "oscilloscope-skao-int-a1234"
        );
        assert_eq!(
            device_name(&scope, &id("x/ y..z_")),
            "oscilloscope-skao-int-x-y-z"
        );
        let long = device_name(&scope, &id(&"Z".repeat(63)));
        assert_eq!(long.len(), 63);
        assert!(is_dns_label(&long), "{long}");
        assert_ne!(long, device_name(&scope, &id(&"Z".repeat(62))));
        for odd in ["é", "--", "-a-", " a", "日本"] {
            let n = device_name(&res("a.io/B_c.D"), &InstanceId(odd.into()));
            assert!(is_dns_label(&n), "{odd:?} → {n:?}");
        }
    }

    #[test]
    fn class_names_are_dns_subdomains() {
        assert_eq!(
            class_name(&res("skao.int/oscilloscope")),
            "oscilloscope.skao.int"
        );
        assert_eq!(class_name(&res("a.io/My_Scope.v2")), "my-scope.v2.a.io");
        assert_eq!(class_name(&res("a.io/x._y")), "x.y.a.io");
        assert!(crate::config::is_dns_subdomain(&class_name(&res(
            "a.io/A-._-b"
        ))));
    }

    fn inventory(yaml: &str) -> Result<Inventory, ConfigError> {
        Inventory::new(&Config::parse(yaml.as_bytes(), "t").unwrap(), "t")
    }

    #[test]
    fn devices_carry_their_hosts_and_attributes() {
        let inv = inventory(
            "deviceMapping:
  - hosts: [b, a]
    devices:
      - {resourceName: skao.int/oscilloscope, instanceID: '0001', env: {IP: 10.0.0.1, LONG_VALUE: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'}}
  - hosts: [c]
    devices:
      - {resourceName: skao.int/oscilloscope, instanceID: '0001', env: {IP: 10.0.0.1, LONG_VALUE: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'}}
      - {resourceName: skao.int/oscilloscope, instanceID: '0002'}
",
        )
        .unwrap();
        let names: Vec<&str> = inv.devices().iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["oscilloscope-skao-int-0001", "oscilloscope-skao-int-0002"]
        );
        let first = &inv.devices()[0];
        let hosts: Vec<&str> = first.hosts.iter().map(NodeName::as_str).collect();
        assert_eq!(hosts, ["a", "b", "c"]);
        let (attributes, skipped) = first.attributes();
        assert_eq!(
            attributes,
            [
                ("resourceName", "skao.int/oscilloscope"),
                ("instanceID", "0001"),
                ("IP", "10.0.0.1"),
            ]
        );
        assert_eq!(skipped, ["LONG_VALUE"]);
        assert_eq!(
            inv.classes(),
            &BTreeMap::from([(
                "oscilloscope.skao.int".to_owned(),
                res("skao.int/oscilloscope")
            )])
        );
    }

    #[test]
    fn at_most_32_attributes() {
        let env: Vec<String> = (0..40).map(|i| format!("K{i:02}: v")).collect();
        let inv = inventory(&format!(
            "deviceMapping:\n  - hosts: [a]\n    devices:\n      - resourceName: a.io/x\n        instanceID: '1'\n        env: {{{}}}\n",
            env.join(", ")
        ))
        .unwrap();
        let (attributes, skipped) = inv.devices()[0].attributes();
        assert_eq!(attributes.len(), MAX_ATTRIBUTES);
        assert_eq!(skipped.len(), 40 - 30);
        assert_eq!(skipped[0], "K30");
    }

    #[test]
    fn colliding_names_are_refused() {
        let e = inventory(
            "deviceMapping:\n  - hosts: [a]\n    devices:\n      - {resourceName: a.io/x, instanceID: A1}\n      - {resourceName: a.io/x, instanceID: a1}\n",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "t: a.io/x instanceID \"A1\" and a.io/x instanceID \"a1\" both get the DRA device name \
             x-a-io-a1 (names are lower-cased, with other characters as '-'); rename one of them"
        );
        let e = inventory(
            "deviceMapping:\n  - hosts: [a]\n    devices:\n      - {resourceName: a.io/x.y, instanceID: '1'}\n      - {resourceName: a.io/x._y, instanceID: '2'}\n",
        )
        .unwrap_err();
        assert!(
            matches!(&e, ConfigError::DraNameCollision { what: "DeviceClass name", name, .. } if name == "x.y.a.io"),
            "{e}"
        );
        let long_domain = format!("{}.io/x", "d".repeat(62));
        let e = inventory(&format!(
            "deviceMapping:\n  - hosts: [a]\n    devices:\n      - {{resourceName: {long_domain}, instanceID: '1'}}\n"
        ))
        .unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::DraAttributeTooLong {
                    attribute: "resourceName",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_claims_env_is_the_seed_layout_numbered_within_the_claim() {
        let inv = inventory(
            "deviceMapping:
  - hosts: [a]
    devices:
      - {resourceName: example.com/widget, instanceID: '3', env: {IP: 10.0.0.3}}
      - {resourceName: example.com/widget, instanceID: '1', env: {IP: 10.0.0.1}}
      - {resourceName: example.com/gadget, instanceID: g}
",
        )
        .unwrap();
        let env = inv
            .env(&[
                "widget-example-com-3",
                "gadget-example-com-g",
                "widget-example-com-3",
            ])
            .unwrap();
        let want: BTreeMap<String, String> = [
            ("EXAMPLECOM_GADGET_DEV0_ID", "g"),
            ("EXAMPLECOM_GADGET_DEV0_TYPE", "example.com/gadget"),
            ("EXAMPLECOM_GADGET_ID", "g"),
            ("EXAMPLECOM_GADGET_NUM_DEVICES", "1"),
            ("EXAMPLECOM_GADGET_TYPE", "example.com/gadget"),
            ("EXAMPLECOM_WIDGET_DEV0_ID", "3"),
            ("EXAMPLECOM_WIDGET_DEV0_IP", "10.0.0.3"),
            ("EXAMPLECOM_WIDGET_DEV0_TYPE", "example.com/widget"),
            ("EXAMPLECOM_WIDGET_ID", "3"),
            ("EXAMPLECOM_WIDGET_IP", "10.0.0.3"),
            ("EXAMPLECOM_WIDGET_NUM_DEVICES", "1"),
            ("EXAMPLECOM_WIDGET_TYPE", "example.com/widget"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(env, want);
        let two = inv
            .env(&["widget-example-com-3", "widget-example-com-1"])
            .unwrap();
        assert_eq!(two["EXAMPLECOM_WIDGET_DEV0_ID"], "1");
        assert_eq!(two["EXAMPLECOM_WIDGET_DEV1_ID"], "3");
        assert_eq!(two["EXAMPLECOM_WIDGET_NUM_DEVICES"], "2");
        assert_eq!(
            inv.env(&["widget-example-com-9"]),
            Err(EnvRefusal::UnknownDevice("widget-example-com-9".into()))
        );
    }
}
