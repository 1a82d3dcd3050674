//! `--help`, written from the flag table: a flag added to the table is documented by adding it.

use super::defs::{Fallback, Group, FLAGS};
use crate::time::format_duration;

/// The sections of `--help`, each introduced by its text.
const GROUPS: &[(Group, &str)] = &[
    (
        Group::Main,
        "Options (each may instead come from the environment variable in brackets; a flag wins):\n",
    ),
    (
        Group::Api,
        "\nConfig from a ConfigMap through the Kubernetes API instead of a file (not with --config):\n",
    ),
    (
        Group::Prune,
        "\nRemoving resources spookd no longer serves from the node's status (needs RBAC on nodes; uses\n\
         --api-server, --token-file and --ca-file as above, with the same in-cluster defaults):\n",
    ),
    (
        Group::Leases,
        "\nExclusive access to devices mapped to several hosts, through coordination.k8s.io Leases (uses\n\
         the API flags above; needs a Role on leases and the kubelet's podresources socket):\n",
    ),
    (
        Group::Dra,
        "\nA DRA driver instead of device-plugin servers (Kubernetes 1.34 or later; uses the API flags\n\
         above, and --lease-namespace and --lease-duration for the leader Lease):\n",
    ),
    (
        Group::Events,
        "\nKubernetes Events (events.k8s.io/v1; uses the API flags above; needs create and patch on\n\
         events in the Pod's namespace, and in the ConfigMap's for the API source):\n",
    ),
    (Group::Metrics, "\n"),
];

const HELP_HEAD: &str = "\
spookd: a Kubernetes device plugin for virtual devices declared in YAML

Usage:
  spookd [OPTIONS]                       serve this node's devices to the kubelet
  spookd check [--node-name NAME] PATH   check a config; print each node's resources and devices
  spookd status [--metrics-addr ADDR:PORT] [--pod-resources-socket PATH] [--output json]
                                         what the running spookd serves: devices, health, holders
  spookd --help | --version

";

const HELP_TAIL: &str = "  -h, --help                 print this help
  -V, --version              print the version

`check` reads only its flag, not NODE_NAME: without --node-name it prints every node.
`status` asks the daemon at --metrics-addr (SPOOKD_METRICS_ADDR, as the daemon's; 0.0.0.0 is
asked on 127.0.0.1) and the kubelet's --pod-resources-socket for who holds each device.

Logging: RUST_LOG (default info; e.g. RUST_LOG=debug).
Exit status: 0 success; 1 error (for check: the config is invalid); 2 usage error.
";

/// Where the help text starts on a line.
const HELP_COLUMN: usize = 29;

/// `--help`, from the table.
pub fn help() -> String {
    let mut out = String::from(HELP_HEAD);
    for (group, intro) in GROUPS {
        out.push_str(intro);
        for def in FLAGS.iter().filter(|s| s.group == *group) {
            let head = match def.value {
                Some(value) => format!("{} {value}", def.name),
                None => def.name.to_owned(),
            };
            let env = if def.value.is_none() {
                format!("{}=true", def.env)
            } else {
                def.env.to_owned()
            };
            let mut default = match def.default {
                Fallback::Text(t) => format!("(default {t}"),
                Fallback::Duration(d) => format!("(default {}", format_duration(d)),
                Fallback::Derived(what) => format!("(default: {what}"),
            };
            if let Some((min, max)) = def.range {
                default.push_str(&format!(
                    "; from {} to {}",
                    format_duration(min),
                    format_duration(max)
                ));
            }
            default.push(')');
            let text = def
                .help
                .replace("{env}", &env)
                .replace("{default}", &default);
            // Padded to the column; a head that reaches it gets two spaces.
            let width = HELP_COLUMN - 2;
            let pad = if head.len() + 2 <= width {
                width - head.len()
            } else {
                2
            };
            for (n, line) in text.lines().enumerate() {
                if n == 0 {
                    out.push_str(&format!("  {head}{}{line}\n", " ".repeat(pad)));
                } else {
                    out.push_str(&format!("{}{line}\n", " ".repeat(HELP_COLUMN)));
                }
            }
        }
    }
    out.push_str(HELP_TAIL);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_names_every_flag_and_env_var() {
        let help = help();
        for s in FLAGS {
            assert!(
                help.contains(s.name) && help.contains(s.env),
                "{:?}",
                s.flag
            );
        }
    }
}
