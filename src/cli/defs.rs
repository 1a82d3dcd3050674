//! The flag table: every flag declared once, with its environment variable, default, duration
//! range and help, so `--help`, the parser and the fallbacks cannot disagree.

use std::time::Duration;

use crate::dra;
use crate::kubelet::podresources;

pub const DEFAULT_CONFIG: &str = "/etc/spookd/config.yaml";
pub const DEFAULT_DEVICE_PLUGIN_DIR: &str = "/var/lib/kubelet/device-plugins";
/// The fallback read of the config file behind inotify (only a filesystem without inotify
/// events, an overlay or network one, relies on it): 30 s is one wakeup in 30 s on an idle node,
/// and small beside the kubelet's own ConfigMap volume sync (about a minute). See
/// docs/performance.md.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_CONFIGMAP_KEY: &str = "config.yaml";
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const DEFAULT_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
pub const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(60);
/// The kubelet keeps a resource whose plugin is gone for 5 minutes (`endpointStopGracePeriod`)
/// before it reports it at 0: wait a little longer.
pub const DEFAULT_PRUNE_AFTER: Duration = Duration::from_secs(330);
/// How long a shared device's Lease lasts without renewal.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(40);

/// The flags, by name in the code; everything else about each is its [`FlagDef`] in [`FLAGS`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Flag {
    Config,
    NodeName,
    DevicePluginDir,
    PollInterval,
    ConfigMap,
    ConfigMapKey,
    ApiServer,
    TokenFile,
    CaFile,
    WatchTimeout,
    MetricsAddr,
    PruneStaleResources,
    PruneAfter,
    ExclusiveLeases,
    LeaseNamespace,
    LeaseDuration,
    PodResourcesSocket,
    Dra,
    DraDriver,
    KubeletPluginsDir,
    KubeletRegistryDir,
    CdiDir,
    Events,
    PodName,
    PodNamespace,
    PodUid,
}

/// Where a flag's help goes in `--help`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Group {
    Main,
    Api,
    Prune,
    Leases,
    Dra,
    Events,
    Metrics,
}

/// A flag's default, as `--help` shows it and the parser falls back to it.
#[derive(Clone, Copy, Debug)]
pub(super) enum Fallback {
    /// A literal value: `(default VALUE)`.
    Text(&'static str),
    /// A duration: `(default 1m30s)`.
    Duration(Duration),
    /// Something spookd works out: `(default: WHAT)`.
    Derived(&'static str),
}

/// One flag, declared once: `--help`, the environment fallback, the switch rule, the default
/// and the duration range all read it.
pub(super) struct FlagDef {
    pub(super) flag: Flag,
    pub(super) name: &'static str,
    pub(super) env: &'static str,
    /// The value's name in `--help`; `None` for a switch (`--flag`, or `--flag=false`).
    pub(super) value: Option<&'static str>,
    pub(super) default: Fallback,
    /// For a duration: the shortest and longest it may be.
    pub(super) range: Option<(Duration, Duration)>,
    pub(super) group: Group,
    /// The help text, lines as printed: `{env}` is the variable (`{env}=true` for a switch),
    /// `{default}` the default.
    pub(super) help: &'static str,
}

const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

/// Every flag: the one table.
pub(super) static FLAGS: &[FlagDef] = &[
    FlagDef {
        flag: Flag::Config,
        name: "--config",
        env: "SPOOKD_CONFIG",
        value: Some("PATH"),
        default: Fallback::Text(DEFAULT_CONFIG),
        range: None,
        group: Group::Main,
        help: "config file, normally a key of a mounted ConfigMap\n[{env}] {default}",
    },
    FlagDef {
        flag: Flag::NodeName,
        name: "--node-name",
        env: "NODE_NAME",
        value: Some("NAME"),
        default: Fallback::Derived("the host name, lower-cased"),
        range: None,
        group: Group::Main,
        help: "this node's name, as the config's hosts name it\n[{env}] {default}",
    },
    FlagDef {
        flag: Flag::DevicePluginDir,
        name: "--device-plugin-dir",
        env: "SPOOKD_DEVICE_PLUGIN_DIR",
        value: Some("DIR"),
        default: Fallback::Text(DEFAULT_DEVICE_PLUGIN_DIR),
        range: None,
        group: Group::Main,
        help: "the kubelet's device-plugins directory (one spookd per directory: a\n\
               second waits for the first to stop)\n[{env}] {default}",
    },
    FlagDef {
        flag: Flag::PollInterval,
        name: "--poll-interval",
        env: "SPOOKD_POLL_INTERVAL",
        value: Some("DURATION"),
        default: Fallback::Duration(DEFAULT_POLL_INTERVAL),
        range: Some((MS.saturating_mul(10), HOUR)),
        group: Group::Main,
        help: "the longest wait between two reads of the config file (a change is\n\
               read at once, through inotify), e.g. 250ms, 2s, 1m, 1m30s\n[{env}] {default}",
    },
    FlagDef {
        flag: Flag::ConfigMap,
        name: "--configmap",
        env: "SPOOKD_CONFIGMAP",
        value: Some("NAMESPACE/NAME"),
        default: Fallback::Derived("none"),
        range: None,
        group: Group::Api,
        help: "the ConfigMap to watch   [{env}]",
    },
    FlagDef {
        flag: Flag::ConfigMapKey,
        name: "--configmap-key",
        env: "SPOOKD_CONFIGMAP_KEY",
        value: Some("KEY"),
        default: Fallback::Text(DEFAULT_CONFIGMAP_KEY),
        range: None,
        group: Group::Api,
        help: "its key holding the config   [{env}] {default}",
    },
    FlagDef {
        flag: Flag::ApiServer,
        name: "--api-server",
        env: "SPOOKD_API_SERVER",
        value: Some("URL"),
        default: Fallback::Text("https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"),
        range: None,
        group: Group::Api,
        help: "https URL of the API server   [{env}]\n{default}",
    },
    FlagDef {
        flag: Flag::TokenFile,
        name: "--token-file",
        env: "SPOOKD_TOKEN_FILE",
        value: Some("PATH"),
        default: Fallback::Text(DEFAULT_TOKEN_FILE),
        range: None,
        group: Group::Api,
        help: "bearer token, re-read on every request   [{env}]\n{default}",
    },
    FlagDef {
        flag: Flag::CaFile,
        name: "--ca-file",
        env: "SPOOKD_CA_FILE",
        value: Some("PATH"),
        default: Fallback::Text(DEFAULT_CA_FILE),
        range: None,
        group: Group::Api,
        help: "the only CA trusted for the API server   [{env}]\n{default}",
    },
    FlagDef {
        flag: Flag::WatchTimeout,
        name: "--watch-timeout",
        env: "SPOOKD_WATCH_TIMEOUT",
        value: Some("DURATION"),
        default: Fallback::Duration(DEFAULT_WATCH_TIMEOUT),
        range: Some((SECOND, HOUR)),
        group: Group::Api,
        help: "how long one watch request lasts; a silent connection is dropped\n\
               after this plus a quarter   [{env}]\n{default}",
    },
    FlagDef {
        flag: Flag::PruneStaleResources,
        name: "--prune-stale-resources",
        env: "SPOOKD_PRUNE_STALE_RESOURCES",
        value: None,
        default: Fallback::Derived("off"),
        range: None,
        group: Group::Prune,
        help: "remove a resource this spookd advertised and no longer serves from\n\
               the node's capacity and allocatable once the kubelet shows it at 0\n\
               [{env}] {default}",
    },
    FlagDef {
        flag: Flag::PruneAfter,
        name: "--prune-after",
        env: "SPOOKD_PRUNE_AFTER",
        value: Some("DURATION"),
        default: Fallback::Duration(DEFAULT_PRUNE_AFTER),
        range: Some((SECOND, HOUR.saturating_mul(24 * 30))),
        group: Group::Prune,
        help: "how long after it stopped serving a resource spookd re-checks and\n\
               removes it   [{env}] {default}",
    },
    FlagDef {
        flag: Flag::ExclusiveLeases,
        name: "--exclusive-leases",
        env: "SPOOKD_EXCLUSIVE_LEASES",
        value: None,
        default: Fallback::Derived("off"),
        range: None,
        group: Group::Leases,
        help: "hold a shared device's Lease while a container on this node has it;\n\
               one held by another node is advertised Unhealthy here\n\
               [{env}] {default}",
    },
    FlagDef {
        flag: Flag::LeaseNamespace,
        name: "--lease-namespace",
        env: "SPOOKD_LEASE_NAMESPACE",
        value: Some("NS"),
        default: Fallback::Derived("the namespace of spookd's ServiceAccount"),
        range: None,
        group: Group::Leases,
        help: "where the Leases live   [{env}]\n{default}",
    },
    FlagDef {
        flag: Flag::LeaseDuration,
        name: "--lease-duration",
        env: "SPOOKD_LEASE_DURATION",
        value: Some("DURATION"),
        default: Fallback::Duration(DEFAULT_LEASE_DURATION),
        range: Some((SECOND, HOUR)),
        group: Group::Leases,
        help: "how long a Lease lasts unrenewed   [{env}]\n{default}",
    },
    FlagDef {
        flag: Flag::PodResourcesSocket,
        name: "--pod-resources-socket",
        env: "SPOOKD_POD_RESOURCES_SOCKET",
        value: Some("PATH"),
        default: Fallback::Text(podresources::DEFAULT_SOCKET),
        range: None,
        group: Group::Leases,
        help: "the kubelet's podresources API   [{env}]\n{default}",
    },
    FlagDef {
        flag: Flag::Dra,
        name: "--dra",
        env: "SPOOKD_DRA",
        value: None,
        default: Fallback::Derived("off"),
        range: None,
        group: Group::Dra,
        help: "run as a DRA driver: publish every device once in ResourceSlices (the\n\
               node holding the leader Lease publishes) and prepare claims for the\n\
               kubelet with CDI specs, instead of device-plugin servers\n\
               [{env}] {default}",
    },
    FlagDef {
        flag: Flag::DraDriver,
        name: "--dra-driver",
        env: "SPOOKD_DRA_DRIVER",
        value: Some("NAME"),
        default: Fallback::Text(dra::DEFAULT_DRIVER),
        range: None,
        group: Group::Dra,
        help: "the driver's name (a DNS subdomain); also the CDI vendor\n\
               [{env}] {default}",
    },
    FlagDef {
        flag: Flag::KubeletPluginsDir,
        name: "--kubelet-plugins-dir",
        env: "SPOOKD_KUBELET_PLUGINS_DIR",
        value: Some("DIR"),
        default: Fallback::Text(dra::DEFAULT_PLUGINS_DIR),
        range: None,
        group: Group::Dra,
        help: "the plugin's socket goes in DIR/<driver>/dra.sock\n\
               [{env}] {default}",
    },
    FlagDef {
        flag: Flag::KubeletRegistryDir,
        name: "--kubelet-registry-dir",
        env: "SPOOKD_KUBELET_REGISTRY_DIR",
        value: Some("DIR"),
        default: Fallback::Text(dra::DEFAULT_REGISTRY_DIR),
        range: None,
        group: Group::Dra,
        help: "the kubelet's plugin registry   [{env}]\n{default}",
    },
    FlagDef {
        flag: Flag::CdiDir,
        name: "--cdi-dir",
        env: "SPOOKD_CDI_DIR",
        value: Some("DIR"),
        default: Fallback::Text(dra::DEFAULT_CDI_DIR),
        range: None,
        group: Group::Dra,
        help: "where prepared claims' CDI specs are written   [{env}]\n{default}",
    },
    FlagDef {
        flag: Flag::Events,
        name: "--events",
        env: "SPOOKD_EVENTS",
        value: None,
        default: Fallback::Derived("on when the Pod and an API server are known"),
        range: None,
        group: Group::Events,
        help: "write Kubernetes Events when a config is refused or applied and when\n\
               a device's health changes   [{env}]\n{default}",
    },
    FlagDef {
        flag: Flag::PodName,
        name: "--pod-name",
        env: "POD_NAME",
        value: Some("NAME"),
        default: Fallback::Derived("none"),
        range: None,
        group: Group::Events,
        help: "spookd's own Pod, which the Events are about   [{env}]",
    },
    FlagDef {
        flag: Flag::PodNamespace,
        name: "--pod-namespace",
        env: "POD_NAMESPACE",
        value: Some("NS"),
        default: Fallback::Derived("none"),
        range: None,
        group: Group::Events,
        help: "its namespace, where the Events go   [{env}]",
    },
    FlagDef {
        flag: Flag::PodUid,
        name: "--pod-uid",
        env: "POD_UID",
        value: Some("UID"),
        default: Fallback::Derived("none"),
        range: None,
        group: Group::Events,
        help: "its UID, so kubectl describe pod shows them   [{env}]",
    },
    FlagDef {
        flag: Flag::MetricsAddr,
        name: "--metrics-addr",
        env: "SPOOKD_METRICS_ADDR",
        value: Some("ADDR:PORT"),
        default: Fallback::Derived("off"),
        range: None,
        group: Group::Metrics,
        help: "serve /healthz, /readyz and Prometheus /metrics over HTTP there,\n\
               e.g. 0.0.0.0:9470   [{env}] {default}",
    },
];

impl Flag {
    pub(super) fn def(self) -> &'static FlagDef {
        // Every Flag has a row: `every_flag_has_one_def` checks it.
        FLAGS.iter().find(|s| s.flag == self).unwrap_or(&FLAGS[0])
    }

    /// A switch is given alone (`--flag`, or `--flag=false`); every other flag takes a value.
    pub(super) fn is_switch(self) -> bool {
        self.def().value.is_none()
    }

    pub(super) fn name(self) -> &'static str {
        self.def().name
    }

    pub(super) fn env(self) -> &'static str {
        self.def().env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_has_one_def() {
        for (i, s) in FLAGS.iter().enumerate() {
            assert_eq!(
                FLAGS.iter().filter(|t| t.flag == s.flag).count(),
                1,
                "{:?}",
                s.flag
            );
            assert!(std::ptr::eq(s.flag.def(), &FLAGS[i]));
        }
        assert_eq!(FLAGS.len(), 26);
    }
}
