//! `spookd check`: the operator's dry run of a config.

use std::fmt::Write;

use crate::config::dra::Inventory;
use crate::config::layout;
use crate::config::{Config, NodeName};

/// `spookd check`'s word on running both modes.
const DRA_ONE_MODE: &str = "  deploy one mode per resource name: on a node where a device plugin \
     also serves a name, pods asking for it in resources.limits get the device plugin's devices, \
     not DRA's (--dra warns where it sees that)\n";

/// What each node (or only `only`) would serve, with every device's probe settings and its env as
/// Allocate would set it for that device alone.
pub fn describe(config: &Config, only: Option<&NodeName>) -> String {
    let mut out = String::new();
    let nodes: Vec<&NodeName> = match only {
        Some(node) => vec![node],
        None => config.nodes().collect(),
    };
    if nodes.is_empty() {
        out.push_str("the config maps no hosts: no node serves anything\n");
    }
    for node in nodes {
        let devices = config.for_node(node);
        if !config.has_node(node) {
            let _ = writeln!(out, "node {node}: in no mapping, serves nothing");
            continue;
        }
        if devices.is_empty() {
            let _ = writeln!(
                out,
                "node {node}: its mappings list no devices, serves nothing"
            );
            continue;
        }
        let _ = writeln!(out, "node {node}:");
        for (resource, list) in &devices {
            let _ = writeln!(out, "  {resource} ({} devices)", list.len());
            for device in list.iter() {
                let _ = writeln!(out, "    {}", device.id);
                if let Some(check) = &device.health_check {
                    let _ = writeln!(out, "      healthCheck: {check}");
                }
                for (k, v) in layout::render(resource, &[device]) {
                    if k.contains("_DEV0_") {
                        let _ = writeln!(out, "      {k}={v}");
                    }
                }
            }
        }
    }
    let resources: usize = config.nodes().map(|n| config.for_node(n).len()).sum();
    let _ = writeln!(
        out,
        "config is valid: {} nodes, {resources} node resources",
        config.nodes().count()
    );
    // --dra has rules of its own (names and attribute lengths): a config valid here can still be
    // refused there, so say so (the exit status stays the device plugin's).
    match Inventory::new(config, "the config") {
        Ok(inv) => {
            let _ = writeln!(
                out,
                "as a DRA driver (--dra): {} devices, {} DeviceClasses",
                inv.devices().len(),
                inv.classes().len()
            );
            // Each class serves its resource by name: where a device plugin also advertises it
            // on a node, the scheduler gives pods there the device plugin's devices.
            if !inv.classes().is_empty() {
                out.push_str(DRA_ONE_MODE);
            }
        }
        Err(e) => {
            let _ = writeln!(out, "as a DRA driver (--dra) it would be refused: {e}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_in_a_mapping_without_devices_is_not_called_unmapped() {
        let c = Config::parse(b"deviceMapping:\n- hosts: [h1]\n  devices: []\n", "t").unwrap();
        assert_eq!(
            describe(&c, None),
            "node h1: its mappings list no devices, serves nothing\nconfig is valid: 1 nodes, 0 node resources\nas a DRA driver (--dra): 0 devices, 0 DeviceClasses\n"
        );
    }

    #[test]
    fn describes_every_node_or_one() {
        let c = Config::parse(
            b"deviceMapping:\n- hosts: [h1, h2]\n  devices:\n  - {resourceName: example.com/widget, instanceID: \"0001\", env: {IP: 1.2.3.4}}\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            describe(&c, None),
            format!(
                "node h1:\n  example.com/widget (1 devices)\n    0001\n      EXAMPLECOM_WIDGET_DEV0_ID=0001\n      EXAMPLECOM_WIDGET_DEV0_IP=1.2.3.4\n      EXAMPLECOM_WIDGET_DEV0_TYPE=example.com/widget\n\
             node h2:\n  example.com/widget (1 devices)\n    0001\n      EXAMPLECOM_WIDGET_DEV0_ID=0001\n      EXAMPLECOM_WIDGET_DEV0_IP=1.2.3.4\n      EXAMPLECOM_WIDGET_DEV0_TYPE=example.com/widget\n\
             config is valid: 2 nodes, 2 node resources\n\
             as a DRA driver (--dra): 1 devices, 1 DeviceClasses\n{DRA_ONE_MODE}"
            )
        );
        let other = NodeName::try_from("h3".to_owned()).unwrap();
        assert!(describe(&c, Some(&other)).starts_with("node h3: in no mapping, serves nothing\n"));
    }

    #[test]
    fn shows_probe_settings_with_defaults_filled_in() {
        let c = Config::parse(
            b"deviceMapping:\n- hosts: [h1]\n  devices:\n  - {resourceName: example.com/widget, instanceID: \"0001\", healthCheck: {tcp: \"127.0.0.1:5025\", timeout: 500ms}}\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            describe(&c, None),
            format!(
                "node h1:\n  example.com/widget (1 devices)\n    0001\n      healthCheck: tcp 127.0.0.1:5025 every 10s, timeout 500ms, Unhealthy after 3 failures, Healthy after 1 successes\n      EXAMPLECOM_WIDGET_DEV0_ID=0001\n      EXAMPLECOM_WIDGET_DEV0_TYPE=example.com/widget\n\
             config is valid: 1 nodes, 1 node resources\n\
             as a DRA driver (--dra): 1 devices, 1 DeviceClasses\n{DRA_ONE_MODE}"
            )
        );
    }
}
