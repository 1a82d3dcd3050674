//! The env variables an Allocate sets in a container.
//!
//! For `example.com/widget` (prefix `EXAMPLECOM_WIDGET`) and devices sorted by instanceID as DEV0,
//! DEV1, …: `<P>_DEV<n>_ID`, `<P>_DEV<n>_TYPE`, `<P>_DEV<n>_<KEY>` per env key, then
//! `<P>_NUM_DEVICES`, and un-indexed copies of DEV0 (`<P>_ID`, `<P>_TYPE`, `<P>_<KEY>`).

use std::collections::BTreeMap;

use crate::config::{Device, ResourceName};

/// The resource name upper-cased, `.` removed, `/` and `-` replaced by `_`.
pub fn prefix(resource: &ResourceName) -> String {
    resource
        .as_str()
        .chars()
        .filter(|c| *c != '.')
        .map(|c| match c {
            '/' | '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// The env for one container given `devices`; they are sorted here by instanceID, whatever order
/// the kubelet asked in.
pub fn render(resource: &ResourceName, devices: &[&Device]) -> BTreeMap<String, String> {
    let p = prefix(resource);
    let mut sorted = devices.to_vec();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut env = BTreeMap::new();
    for (n, device) in sorted.iter().enumerate() {
        for (suffix, value) in fields(resource, device) {
            env.insert(format!("{p}_DEV{n}_{suffix}"), value.to_owned());
            if n == 0 {
                env.insert(format!("{p}_{suffix}"), value.to_owned());
            }
        }
    }
    env.insert(format!("{p}_NUM_DEVICES"), sorted.len().to_string());
    env
}

/// A device's (suffix, value) pairs: ID, TYPE and its env keys.
fn fields<'a>(
    resource: &'a ResourceName,
    device: &'a Device,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    [("ID", device.id.as_str()), ("TYPE", resource.as_str())]
        .into_iter()
        .chain(device.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, NodeName};

    fn devices(yaml: &str) -> (ResourceName, Vec<Device>) {
        let c = Config::parse(yaml.as_bytes(), "t").unwrap();
        let mut n = c.for_node(&NodeName::try_from("a".to_owned()).unwrap());
        let (r, d) = n.pop_first().unwrap();
        (r, d.to_vec())
    }

    fn pairs(env: &BTreeMap<String, String>) -> Vec<(&str, &str)> {
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn prefixes() {
        let p = |s: &str| prefix(&ResourceName::try_from(s.to_owned()).unwrap());
        assert_eq!(p("example.com/widget"), "EXAMPLECOM_WIDGET");
        assert_eq!(p("skao.int/signal-generator"), "SKAOINT_SIGNAL_GENERATOR");
        assert_eq!(p("a-b.io/x.y_z"), "A_BIO_XY_Z");
    }

    #[test]
    fn seed_example_exact() {
        let (r, d) = devices(
            "deviceMapping:\n- hosts: [a]\n  devices:\n  - resourceName: example.com/widget\n    instanceID: \"0001\"\n    env: {IP: 192.168.0.200, PORT: 12345}\n",
        );
        let env = render(&r, &[&d[0]]);
        assert_eq!(
            pairs(&env),
            [
                ("EXAMPLECOM_WIDGET_DEV0_ID", "0001"),
                ("EXAMPLECOM_WIDGET_DEV0_IP", "192.168.0.200"),
                ("EXAMPLECOM_WIDGET_DEV0_PORT", "12345"),
                ("EXAMPLECOM_WIDGET_DEV0_TYPE", "example.com/widget"),
                ("EXAMPLECOM_WIDGET_ID", "0001"),
                ("EXAMPLECOM_WIDGET_IP", "192.168.0.200"),
                ("EXAMPLECOM_WIDGET_NUM_DEVICES", "1"),
                ("EXAMPLECOM_WIDGET_PORT", "12345"),
                ("EXAMPLECOM_WIDGET_TYPE", "example.com/widget"),
            ]
        );
    }

    #[test]
    fn several_devices_are_indexed_in_instance_id_order() {
        let (r, d) = devices(
            "deviceMapping:\n- hosts: [a]\n  devices:\n  - {resourceName: a.io/x, instanceID: b, env: {K: vb}}\n  - {resourceName: a.io/x, instanceID: a}\n",
        );
        // Asked in reverse order; DEV0 is still the smaller instanceID.
        let env = render(&r, &[&d[1], &d[0]]);
        assert_eq!(
            pairs(&env),
            [
                ("AIO_X_DEV0_ID", "a"),
                ("AIO_X_DEV0_TYPE", "a.io/x"),
                ("AIO_X_DEV1_ID", "b"),
                ("AIO_X_DEV1_K", "vb"),
                ("AIO_X_DEV1_TYPE", "a.io/x"),
                ("AIO_X_ID", "a"),
                ("AIO_X_NUM_DEVICES", "2"),
                ("AIO_X_TYPE", "a.io/x"),
            ]
        );
    }
}
