//! The command line: flags, their environment variables and defaults, parsed into typed options.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{is_dns_subdomain, InvalidValue, NodeName};
use crate::dra::{self, DraOptions};
use crate::events::{EventOptions, ObjectRef};
use crate::kube::client::Connection;
use crate::kubelet::podresources;
use crate::leases::LeaseOptions;
use crate::prune::PruneOptions;
use crate::source::configmap::ApiOptions;
use crate::status::StatusOptions;
use crate::time::{format_duration, parse_duration};

pub const DEFAULT_CONFIG: &str = "/etc/spookd/config.yaml";
pub const DEFAULT_DEVICE_PLUGIN_DIR: &str = "/var/lib/kubelet/device-plugins";
/// The fallback read of the config file behind inotify (only a filesystem without inotify
/// events, an overlay or network one, relies on it): 30 s is one wakeup in 30 s on an idle node,
/// and small beside the kubelet's own ConfigMap volume sync (about a minute). See README,
/// Performance.
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

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run(Box<RunOptions>),
    Check {
        node: Option<NodeName>,
        path: PathBuf,
    },
    /// `spookd status`: ask the running daemon.
    Status(StatusOptions),
    Help,
    Version,
}

/// Options of the daemon.
#[derive(Debug, PartialEq, Eq)]
pub struct RunOptions {
    pub source: Source,
    pub node_name: NodeName,
    pub device_plugin_dir: PathBuf,
    /// Where to serve /healthz, /readyz and /metrics; `None`: not at all.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// `--prune-stale-resources`: `None` when off.
    pub prune: Option<PruneOptions>,
    /// `--exclusive-leases`: `None` when off.
    pub leases: Option<LeaseOptions>,
    /// `--dra`: a DRA driver instead of device-plugin servers; `None` when off.
    pub dra: Option<DraOptions>,
    /// Kubernetes Events about configs and devices; `None` when off (outside a cluster).
    pub events: Option<EventOptions>,
}

/// Where the config comes from.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    /// A file, polled (normally a key of a mounted ConfigMap).
    File {
        path: PathBuf,
        poll_interval: Duration,
    },
    /// A ConfigMap watched through the API.
    ConfigMap(ApiOptions),
}

/// A usage error. `from` names the flag or environment variable a value came from.
#[derive(Debug)]
pub enum CliError {
    UnknownArgument(String),
    NotUnicode(OsString),
    MissingValue(&'static str),
    Duplicate(&'static str),
    BadDuration {
        from: &'static str,
        value: String,
    },
    /// A duration outside its flag's documented range.
    DurationRange {
        from: &'static str,
        value: String,
        min: String,
        max: String,
    },
    BadNodeName {
        from: &'static str,
        source: InvalidValue,
    },
    NoHostName(std::io::Error),
    MissingPath,
    /// --config and --configmap both given (flags or environment).
    TwoSources,
    BadConfigMap {
        from: &'static str,
        value: String,
    },
    BadApiServer {
        from: &'static str,
        value: String,
    },
    BadAddress {
        from: &'static str,
        value: String,
    },
    /// --configmap or --prune-stale-resources without --api-server outside a cluster.
    NoApiServer {
        by: &'static str,
    },
    BadSwitch {
        from: &'static str,
        value: String,
    },
    BadNamespace {
        from: &'static str,
        value: String,
    },
    /// A flag that only means something with a switch that is off.
    Alone {
        from: &'static str,
        needs: &'static str,
    },
    /// Two switches that exclude each other.
    Conflict {
        from: &'static str,
        with: &'static str,
    },
    BadDriver {
        from: &'static str,
        value: String,
    },
    /// `--events` on, without the Pod to report about.
    NoPod,
    /// `status --output` takes `text` or `json`.
    BadOutput(String),
    BadPod {
        from: &'static str,
        value: String,
    },
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::UnknownArgument(a) => write!(f, "unexpected argument {a:?} (see --help)"),
            CliError::NotUnicode(a) => write!(f, "argument {a:?} is not valid UTF-8"),
            CliError::MissingValue(flag) => write!(f, "{flag} needs a value"),
            CliError::Duplicate(flag) => write!(f, "{flag} given twice"),
            CliError::BadDuration { from, value } => write!(
                f,
                "{from}: {value:?} is not a positive duration (write e.g. 250ms, 2s, 1m or 1m30s)"
            ),
            CliError::DurationRange {
                from,
                value,
                min,
                max,
            } => write!(f, "{from}: {value:?} is out of range: from {min} to {max}"),
            CliError::BadNodeName { from, source } => write!(f, "{from}: {source}"),
            CliError::NoHostName(e) => write!(
                f,
                "cannot read the host name ({e}); set --node-name or NODE_NAME"
            ),
            CliError::MissingPath => write!(f, "check needs the PATH of a config"),
            CliError::TwoSources => write!(
                f,
                "--config and --configmap (or SPOOKD_CONFIG and SPOOKD_CONFIGMAP) exclude each \
                 other: choose the file or the API"
            ),
            CliError::BadConfigMap { from, value } => write!(
                f,
                "{from}: {value:?} is not NAMESPACE/NAME (a namespace and a ConfigMap name)"
            ),
            CliError::BadApiServer { from, value } => {
                write!(f, "{from}: {value:?} is not an https:// URL")
            }
            CliError::BadAddress { from, value } => write!(
                f,
                "{from}: {value:?} is not ADDR:PORT (e.g. 0.0.0.0:9470, 127.0.0.1:9470, [::]:9470)"
            ),
            CliError::NoApiServer { by } => write!(
                f,
                "{by} needs --api-server outside a cluster (KUBERNETES_SERVICE_HOST and \
                 KUBERNETES_SERVICE_PORT are not set)"
            ),
            CliError::BadSwitch { from, value } => {
                write!(f, "{from}: {value:?} is not true or false")
            }
            CliError::BadNamespace { from, value } => write!(
                f,
                "{from}: {value:?} is not a namespace (a lowercase DNS label)"
            ),
            CliError::Alone { from, needs } => {
                write!(f, "{from} only has a meaning with {needs}")
            }
            CliError::Conflict { from, with } => write!(
                f,
                "{from} is a device-plugin feature; {with} runs a DRA driver instead (the \
                 scheduler gives each device to one claim: no Leases or pruning needed)"
            ),
            CliError::BadOutput(v) => {
                write!(f, "--output: {v:?} is not text or json")
            }
            CliError::NoPod => write!(
                f,
                "--events needs the Pod to report about: --pod-name and --pod-namespace (POD_NAME \
                 and POD_NAMESPACE, from the downward API)"
            ),
            CliError::BadPod { from, value } => {
                write!(f, "{from}: {value:?} is not a Pod's name, namespace or UID")
            }
            CliError::BadDriver { from, value } => write!(
                f,
                "{from}: {value:?} is not a driver name (a lowercase DNS subdomain of at most \
                 {} characters, starting with a letter, e.g. {})",
                dra::MAX_DRIVER,
                dra::DEFAULT_DRIVER
            ),
        }
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CliError::BadNodeName { source, .. } => Some(source),
            CliError::NoHostName(e) => Some(e),
            _ => None,
        }
    }
}

/// The flags, by name in the code; everything else about each is its [`Spec`] in [`FLAGS`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flag {
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
enum Group {
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
enum Fallback {
    /// A literal value: `(default VALUE)`.
    Text(&'static str),
    /// A duration: `(default 1m30s)`.
    Duration(Duration),
    /// Something spookd works out: `(default: WHAT)`.
    Derived(&'static str),
}

/// One flag, declared once: `--help`, the environment fallback, the switch rule, the default
/// and the duration range all read it.
struct Spec {
    flag: Flag,
    name: &'static str,
    env: &'static str,
    /// The value's name in `--help`; `None` for a switch (`--flag`, or `--flag=false`).
    value: Option<&'static str>,
    default: Fallback,
    /// For a duration: the shortest and longest it may be.
    range: Option<(Duration, Duration)>,
    group: Group,
    /// The help text, lines as printed: `{env}` is the variable (`{env}=true` for a switch),
    /// `{default}` the default.
    help: &'static str,
}

const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

/// Every flag: the one table.
static FLAGS: &[Spec] = &[
    Spec {
        flag: Flag::Config,
        name: "--config",
        env: "SPOOKD_CONFIG",
        value: Some("PATH"),
        default: Fallback::Text(DEFAULT_CONFIG),
        range: None,
        group: Group::Main,
        help: "config file, normally a key of a mounted ConfigMap\n[{env}] {default}",
    },
    Spec {
        flag: Flag::NodeName,
        name: "--node-name",
        env: "NODE_NAME",
        value: Some("NAME"),
        default: Fallback::Derived("the host name, lower-cased"),
        range: None,
        group: Group::Main,
        help: "this node's name, as the config's hosts name it\n[{env}] {default}",
    },
    Spec {
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
    Spec {
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
    Spec {
        flag: Flag::ConfigMap,
        name: "--configmap",
        env: "SPOOKD_CONFIGMAP",
        value: Some("NAMESPACE/NAME"),
        default: Fallback::Derived("none"),
        range: None,
        group: Group::Api,
        help: "the ConfigMap to watch   [{env}]",
    },
    Spec {
        flag: Flag::ConfigMapKey,
        name: "--configmap-key",
        env: "SPOOKD_CONFIGMAP_KEY",
        value: Some("KEY"),
        default: Fallback::Text(DEFAULT_CONFIGMAP_KEY),
        range: None,
        group: Group::Api,
        help: "its key holding the config   [{env}] {default}",
    },
    Spec {
        flag: Flag::ApiServer,
        name: "--api-server",
        env: "SPOOKD_API_SERVER",
        value: Some("URL"),
        default: Fallback::Text("https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"),
        range: None,
        group: Group::Api,
        help: "https URL of the API server   [{env}]\n{default}",
    },
    Spec {
        flag: Flag::TokenFile,
        name: "--token-file",
        env: "SPOOKD_TOKEN_FILE",
        value: Some("PATH"),
        default: Fallback::Text(DEFAULT_TOKEN_FILE),
        range: None,
        group: Group::Api,
        help: "bearer token, re-read on every request   [{env}]\n{default}",
    },
    Spec {
        flag: Flag::CaFile,
        name: "--ca-file",
        env: "SPOOKD_CA_FILE",
        value: Some("PATH"),
        default: Fallback::Text(DEFAULT_CA_FILE),
        range: None,
        group: Group::Api,
        help: "the only CA trusted for the API server   [{env}]\n{default}",
    },
    Spec {
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
    Spec {
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
    Spec {
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
    Spec {
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
    Spec {
        flag: Flag::LeaseNamespace,
        name: "--lease-namespace",
        env: "SPOOKD_LEASE_NAMESPACE",
        value: Some("NS"),
        default: Fallback::Derived("the namespace of spookd's ServiceAccount"),
        range: None,
        group: Group::Leases,
        help: "where the Leases live   [{env}]\n{default}",
    },
    Spec {
        flag: Flag::LeaseDuration,
        name: "--lease-duration",
        env: "SPOOKD_LEASE_DURATION",
        value: Some("DURATION"),
        default: Fallback::Duration(DEFAULT_LEASE_DURATION),
        range: Some((SECOND, HOUR)),
        group: Group::Leases,
        help: "how long a Lease lasts unrenewed   [{env}]\n{default}",
    },
    Spec {
        flag: Flag::PodResourcesSocket,
        name: "--pod-resources-socket",
        env: "SPOOKD_POD_RESOURCES_SOCKET",
        value: Some("PATH"),
        default: Fallback::Text(podresources::DEFAULT_SOCKET),
        range: None,
        group: Group::Leases,
        help: "the kubelet's podresources API   [{env}]\n{default}",
    },
    Spec {
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
    Spec {
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
    Spec {
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
    Spec {
        flag: Flag::KubeletRegistryDir,
        name: "--kubelet-registry-dir",
        env: "SPOOKD_KUBELET_REGISTRY_DIR",
        value: Some("DIR"),
        default: Fallback::Text(dra::DEFAULT_REGISTRY_DIR),
        range: None,
        group: Group::Dra,
        help: "the kubelet's plugin registry   [{env}]\n{default}",
    },
    Spec {
        flag: Flag::CdiDir,
        name: "--cdi-dir",
        env: "SPOOKD_CDI_DIR",
        value: Some("DIR"),
        default: Fallback::Text(dra::DEFAULT_CDI_DIR),
        range: None,
        group: Group::Dra,
        help: "where prepared claims' CDI specs are written   [{env}]\n{default}",
    },
    Spec {
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
    Spec {
        flag: Flag::PodName,
        name: "--pod-name",
        env: "POD_NAME",
        value: Some("NAME"),
        default: Fallback::Derived("none"),
        range: None,
        group: Group::Events,
        help: "spookd's own Pod, which the Events are about   [{env}]",
    },
    Spec {
        flag: Flag::PodNamespace,
        name: "--pod-namespace",
        env: "POD_NAMESPACE",
        value: Some("NS"),
        default: Fallback::Derived("none"),
        range: None,
        group: Group::Events,
        help: "its namespace, where the Events go   [{env}]",
    },
    Spec {
        flag: Flag::PodUid,
        name: "--pod-uid",
        env: "POD_UID",
        value: Some("UID"),
        default: Fallback::Derived("none"),
        range: None,
        group: Group::Events,
        help: "its UID, so kubectl describe pod shows them   [{env}]",
    },
    Spec {
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

impl Flag {
    fn spec(self) -> &'static Spec {
        // Every Flag has a row: `every_flag_has_one_spec` checks it.
        FLAGS.iter().find(|s| s.flag == self).unwrap_or(&FLAGS[0])
    }

    /// A switch is given alone (`--flag`, or `--flag=false`); every other flag takes a value.
    fn is_switch(self) -> bool {
        self.spec().value.is_none()
    }

    fn name(self) -> &'static str {
        self.spec().name
    }

    fn env(self) -> &'static str {
        self.spec().env
    }
}

/// `--help`, from the table.
pub fn help() -> String {
    let mut out = String::from(HELP_HEAD);
    for (group, intro) in GROUPS {
        out.push_str(intro);
        for spec in FLAGS.iter().filter(|s| s.group == *group) {
            let head = match spec.value {
                Some(value) => format!("{} {value}", spec.name),
                None => spec.name.to_owned(),
            };
            let env = if spec.value.is_none() {
                format!("{}=true", spec.env)
            } else {
                spec.env.to_owned()
            };
            let mut default = match spec.default {
                Fallback::Text(t) => format!("(default {t}"),
                Fallback::Duration(d) => format!("(default {}", format_duration(d)),
                Fallback::Derived(what) => format!("(default: {what}"),
            };
            if let Some((min, max)) = spec.range {
                default.push_str(&format!(
                    "; from {} to {}",
                    format_duration(min),
                    format_duration(max)
                ));
            }
            default.push(')');
            let text = spec
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

/// Parses the arguments after the program name. `var` looks up an environment variable and
/// `hostname` gives the host name; both are parameters so tests control them.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    var: impl Fn(&str) -> Option<String>,
    hostname: impl FnOnce() -> std::io::Result<String>,
) -> Result<Command, CliError> {
    let mut args = args
        .into_iter()
        .map(|a| a.into_string().map_err(CliError::NotUnicode))
        .collect::<Result<Vec<String>, _>>()?
        .into_iter()
        .peekable();
    let check = args.peek().map(String::as_str) == Some("check");
    let status = args.peek().map(String::as_str) == Some("status");
    if check || status {
        args.next();
    }
    // `status` takes the daemon's own flags for where to ask (and their variables, so inside the
    // pod it needs none), and --output.
    let for_status = [Flag::MetricsAddr, Flag::PodResourcesSocket];
    let mut output: Option<String> = None;
    let mut values: Vec<(Flag, String)> = Vec::new();
    let mut positional: Vec<String> = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            _ => {}
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if status && name == "--output" {
            let v = match inline {
                Some(v) => Some(v),
                None => args.next(),
            };
            match v.as_deref() {
                None | Some("") => return Err(CliError::MissingValue("--output")),
                Some("json" | "text") if output.is_none() => output = v,
                Some("json" | "text") => return Err(CliError::Duplicate("--output")),
                _ => return Err(CliError::BadOutput(v.unwrap_or_default())),
            }
            continue;
        }
        let found = FLAGS
            .iter()
            .map(|s| s.flag)
            .filter(|f| !check || *f == Flag::NodeName)
            .filter(|f| !status || for_status.contains(f))
            .find(|f| f.name() == name);
        match found {
            Some(flag) => {
                let value = match inline {
                    // `--config=` is a mistake, never "the default".
                    Some(v) if v.is_empty() => return Err(CliError::MissingValue(flag.name())),
                    Some(v) => v,
                    None if flag.is_switch() => "true".to_owned(),
                    // `--config ""` as much as `--config=`.
                    None => args
                        .next()
                        .filter(|v| !v.is_empty())
                        .ok_or(CliError::MissingValue(flag.name()))?,
                };
                if values.iter().any(|(f, _)| *f == flag) {
                    return Err(CliError::Duplicate(flag.name()));
                }
                values.push((flag, value));
            }
            None if check && !arg.starts_with('-') => positional.push(arg),
            None => return Err(CliError::UnknownArgument(arg)),
        }
    }
    let flag = |f: Flag| values.iter().find(|(g, _)| *g == f).map(|(_, v)| v.clone());
    if check {
        if positional.len() > 1 {
            return Err(CliError::UnknownArgument(positional.swap_remove(1)));
        }
        let path = positional.pop().ok_or(CliError::MissingPath)?;
        let node = flag(Flag::NodeName)
            .map(|n| node_name(Flag::NodeName.name(), n))
            .transpose()?;
        return Ok(Command::Check {
            node,
            path: path.into(),
        });
    }
    // A flag wins over its environment variable; an empty variable counts as unset.
    let value = |f: Flag| -> Option<(&'static str, String)> {
        flag(f)
            .map(|v| (f.name(), v))
            .or_else(|| var(f.env()).filter(|v| !v.is_empty()).map(|v| (f.env(), v)))
    };
    // The daemon serves it; `status` asks it there.
    let metrics_addr = || -> Result<Option<std::net::SocketAddr>, CliError> {
        value(Flag::MetricsAddr)
            .map(|(from, v)| {
                v.parse()
                    .map_err(|_| CliError::BadAddress { from, value: v })
            })
            .transpose()
    };
    if status {
        return Ok(Command::Status(StatusOptions {
            addr: metrics_addr()?,
            json: output.as_deref() == Some("json"),
            pod_resources: value(Flag::PodResourcesSocket)
                .map_or_else(|| podresources::DEFAULT_SOCKET.into(), |(_, v)| v.into()),
        }));
    }
    let node_name = match value(Flag::NodeName) {
        Some((from, v)) => node_name(from, v)?,
        None => {
            let host = hostname().map_err(CliError::NoHostName)?;
            node_name("the host name", host.trim().to_lowercase())?
        }
    };
    // Every duration has a range: a floor where less would spin (a 1 ns poll is a busy loop),
    // a ceiling that keeps every deadline computed from it far inside `Instant`'s range.
    let duration = |f: Flag| {
        let spec = f.spec();
        match value(f) {
            Some((from, v)) => match parse_duration(&v) {
                Some(d) if !d.is_zero() => match spec.range {
                    Some((min, max)) if d < min || d > max => Err(CliError::DurationRange {
                        from,
                        value: v,
                        min: format_duration(min),
                        max: format_duration(max),
                    }),
                    _ => Ok(d),
                },
                _ => Err(CliError::BadDuration { from, value: v }),
            },
            None => match spec.default {
                Fallback::Duration(d) => Ok(d),
                _ => Err(CliError::BadDuration {
                    from: spec.name,
                    value: String::new(),
                }),
            },
        }
    };
    let poll_interval = duration(Flag::PollInterval)?;
    // The API server and credentials, for whichever feature needs them (`by` names it).
    let connection = |by: &'static str| -> Result<Connection, CliError> {
        Ok(Connection {
            server: match value(Flag::ApiServer) {
                Some((from, url)) => api_server(from, url)?,
                None => in_cluster_server(&var).ok_or(CliError::NoApiServer { by })?,
            },
            token_file: value(Flag::TokenFile)
                .map_or_else(|| DEFAULT_TOKEN_FILE.into(), |(_, v)| v.into()),
            ca_file: value(Flag::CaFile).map_or_else(|| DEFAULT_CA_FILE.into(), |(_, v)| v.into()),
        })
    };
    let source = match (value(Flag::Config), value(Flag::ConfigMap)) {
        (Some(_), Some(_)) => return Err(CliError::TwoSources),
        (_, Some((from, cm))) => {
            let (namespace, name) = cm
                .split_once('/')
                .filter(|(ns, n)| is_namespace(ns) && is_object_name(n))
                .ok_or_else(|| CliError::BadConfigMap {
                    from,
                    value: cm.clone(),
                })?;
            Source::ConfigMap(ApiOptions {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                key: value(Flag::ConfigMapKey)
                    .map_or_else(|| DEFAULT_CONFIGMAP_KEY.to_owned(), |(_, v)| v),
                conn: connection(Flag::ConfigMap.name())?,
                watch_timeout: duration(Flag::WatchTimeout)?,
            })
        }
        (config, None) => Source::File {
            path: config.map_or_else(|| DEFAULT_CONFIG.into(), |(_, v)| v.into()),
            poll_interval,
        },
    };
    let metrics_addr = metrics_addr()?;
    let switch = |f: Flag| match value(f) {
        Some((from, v)) => match v.as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(CliError::BadSwitch { from, value: v }),
        },
        None => Ok(false),
    };
    // A flag that belongs to a switch that is off is a mistake worth stopping for.
    let alone = |switch: Flag, flags: &[Flag]| -> Result<(), CliError> {
        match flags.iter().find_map(|f| value(*f)) {
            Some((from, _)) => Err(CliError::Alone {
                from,
                needs: switch.name(),
            }),
            None => Ok(()),
        }
    };
    let prune = if switch(Flag::PruneStaleResources)? {
        Some(PruneOptions {
            conn: connection(Flag::PruneStaleResources.name())?,
            after: duration(Flag::PruneAfter)?,
        })
    } else {
        alone(Flag::PruneStaleResources, &[Flag::PruneAfter])?;
        None
    };
    let lease_namespace = || match value(Flag::LeaseNamespace) {
        Some((from, ns)) if !is_namespace(&ns) => Err(CliError::BadNamespace { from, value: ns }),
        other => Ok(other.map(|(_, ns)| ns)),
    };
    let dra_on = switch(Flag::Dra)?;
    let lease_flags: &[Flag] = if dra_on {
        &[Flag::PodResourcesSocket]
    } else {
        &[
            Flag::LeaseNamespace,
            Flag::LeaseDuration,
            Flag::PodResourcesSocket,
        ]
    };
    let leases = if switch(Flag::ExclusiveLeases)? {
        let namespace = lease_namespace()?;
        Some(LeaseOptions {
            conn: connection(Flag::ExclusiveLeases.name())?,
            namespace,
            duration: duration(Flag::LeaseDuration)?,
            pod_resources_socket: value(Flag::PodResourcesSocket)
                .map_or_else(|| podresources::DEFAULT_SOCKET.into(), |(_, v)| v.into()),
        })
    } else {
        alone(Flag::ExclusiveLeases, lease_flags)?;
        None
    };
    let dra_flags = [
        Flag::DraDriver,
        Flag::KubeletPluginsDir,
        Flag::KubeletRegistryDir,
        Flag::CdiDir,
    ];
    let dra = if dra_on {
        for (on, f) in [
            (leases.is_some(), Flag::ExclusiveLeases),
            (prune.is_some(), Flag::PruneStaleResources),
        ] {
            if on {
                return Err(CliError::Conflict {
                    from: f.name(),
                    with: Flag::Dra.name(),
                });
            }
        }
        let driver = match value(Flag::DraDriver) {
            // Also the CDI vendor, which must start with a letter.
            Some((from, d))
                if !(is_dns_subdomain(&d)
                    && d.len() <= dra::MAX_DRIVER
                    && d.starts_with(|c: char| c.is_ascii_lowercase())) =>
            {
                return Err(CliError::BadDriver { from, value: d })
            }
            Some((_, d)) => d,
            None => dra::DEFAULT_DRIVER.to_owned(),
        };
        let dir =
            |f: Flag, default: &str| value(f).map_or_else(|| default.into(), |(_, v)| v.into());
        Some(DraOptions {
            driver,
            plugins_dir: dir(Flag::KubeletPluginsDir, dra::DEFAULT_PLUGINS_DIR),
            registry_dir: dir(Flag::KubeletRegistryDir, dra::DEFAULT_REGISTRY_DIR),
            cdi_dir: dir(Flag::CdiDir, dra::DEFAULT_CDI_DIR),
            conn: connection(Flag::Dra.name())?,
            lease_namespace: lease_namespace()?,
            lease_duration: duration(Flag::LeaseDuration)?,
        })
    } else {
        alone(Flag::Dra, &dra_flags)?;
        None
    };
    // A flag given on the command line that the chosen mode ignores is a mistake too. (Only
    // flags: an environment variable may be set for a mode another pod uses.)
    let given = |flags: &[Flag]| flags.iter().copied().find(|f| flag(*f).is_some());
    let api_source = matches!(source, Source::ConfigMap(_));
    if !api_source {
        if let Some(f) = given(&[Flag::ConfigMapKey, Flag::WatchTimeout]) {
            return Err(CliError::Alone {
                from: f.name(),
                needs: Flag::ConfigMap.name(),
            });
        }
    } else if let Some(f) = given(&[Flag::PollInterval]) {
        return Err(CliError::Alone {
            from: f.name(),
            needs: "the file source (--config)",
        });
    }
    // An API server is known: given, or the in-cluster one.
    let api_known = value(Flag::ApiServer).is_some() || in_cluster_server(&var).is_some();
    let events = events(&value, &switch, &source, api_known, &connection)?;
    if !api_source && prune.is_none() && leases.is_none() && dra.is_none() && events.is_none() {
        if let Some(f) = given(&[Flag::ApiServer, Flag::TokenFile, Flag::CaFile]) {
            return Err(CliError::Alone {
                from: f.name(),
                needs: "--configmap, --prune-stale-resources, --exclusive-leases or --dra",
            });
        }
    }
    if dra.is_some() {
        if let Some(f) = given(&[Flag::DevicePluginDir]) {
            return Err(CliError::Alone {
                from: f.name(),
                needs: "device-plugin servers (not --dra)",
            });
        }
    }
    Ok(Command::Run(Box::new(RunOptions {
        source,
        node_name,
        metrics_addr,
        prune,
        leases,
        dra,
        events,
        device_plugin_dir: value(Flag::DevicePluginDir)
            .map_or_else(|| DEFAULT_DEVICE_PLUGIN_DIR.into(), |(_, v)| v.into()),
    })))
}

/// `--events`: on when asked, or when the Pod and an API server are known (in a cluster); off
/// when asked, or outside a cluster.
fn events(
    value: &dyn Fn(Flag) -> Option<(&'static str, String)>,
    switch: &dyn Fn(Flag) -> Result<bool, CliError>,
    source: &Source,
    api_known: bool,
    connection: &dyn Fn(&'static str) -> Result<Connection, CliError>,
) -> Result<Option<EventOptions>, CliError> {
    let asked = value(Flag::Events).is_some();
    if asked && !switch(Flag::Events)? {
        return Ok(None);
    }
    let (Some((nf, name)), Some((sf, namespace))) =
        (value(Flag::PodName), value(Flag::PodNamespace))
    else {
        return if asked {
            Err(CliError::NoPod)
        } else {
            Ok(None)
        };
    };
    if !is_object_name(&name) {
        return Err(CliError::BadPod {
            from: nf,
            value: name,
        });
    }
    if !is_namespace(&namespace) {
        return Err(CliError::BadPod {
            from: sf,
            value: namespace,
        });
    }
    let uid = match value(Flag::PodUid) {
        Some((from, uid))
            if uid.len() > 64 || !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            return Err(CliError::BadPod { from, value: uid })
        }
        Some((_, uid)) => uid,
        None => String::new(),
    };
    if !asked && !api_known {
        return Ok(None);
    }
    Ok(Some(EventOptions {
        conn: connection(Flag::Events.name())?,
        pod: ObjectRef {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace,
            name,
            uid,
        },
        configmap: match source {
            Source::ConfigMap(api) => Some((api.namespace.clone(), api.name.clone())),
            Source::File { .. } => None,
        },
    }))
}

/// A namespace: an RFC 1123 label.
fn is_namespace(s: &str) -> bool {
    NodeName::try_from(s.to_owned()).is_ok() && !s.contains('.')
}

/// A ConfigMap name: an RFC 1123 subdomain (the same rule as node names).
fn is_object_name(s: &str) -> bool {
    NodeName::try_from(s.to_owned()).is_ok()
}

fn api_server(from: &'static str, url: String) -> Result<String, CliError> {
    let trimmed = url.trim_end_matches('/');
    match trimmed.strip_prefix("https://") {
        Some(rest) if !rest.is_empty() && !rest.contains(['/', '?', '#', ' ']) => {
            Ok(trimmed.to_owned())
        }
        _ => Err(CliError::BadApiServer { from, value: url }),
    }
}

/// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, as client-go builds it.
fn in_cluster_server(var: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let host = var("KUBERNETES_SERVICE_HOST").filter(|h| !h.is_empty())?;
    let port = var("KUBERNETES_SERVICE_PORT").filter(|p| !p.is_empty())?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Some(format!("https://{host}:{port}"))
}

fn node_name(from: &'static str, value: String) -> Result<NodeName, CliError> {
    NodeName::try_from(value).map_err(|source| CliError::BadNodeName { from, source })
}

/// The host name as the kernel has it.
pub fn hostname() -> std::io::Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Command, CliError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(
            args.iter().map(OsString::from),
            move |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            || Ok("My-Host\n".to_owned()),
        )
    }

    fn opts(args: &[&str], env: &[(&str, &str)]) -> RunOptions {
        match run(args, env).unwrap() {
            Command::Run(o) => *o,
            other => panic!("expected Run, got {other:?}"),
        }
    }

    fn node(n: &str) -> NodeName {
        NodeName::try_from(n.to_owned()).unwrap()
    }

    #[test]
    fn events_are_on_in_a_cluster_and_off_outside_unless_asked() {
        let cluster = [
            ("POD_NAME", "spookd-x1"),
            ("POD_NAMESPACE", "spookd"),
            ("POD_UID", "0b7c4e36-5a1f"),
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ];
        let on = opts(&[], &cluster).events.unwrap();
        assert_eq!(on.conn.server, "https://10.0.0.1:443");
        assert_eq!(
            on.pod,
            ObjectRef {
                api_version: "v1".into(),
                kind: "Pod".into(),
                namespace: "spookd".into(),
                name: "spookd-x1".into(),
                uid: "0b7c4e36-5a1f".into(),
            }
        );
        assert_eq!(on.configmap, None);
        let cm = opts(&["--configmap", "lab/cfg"], &cluster).events.unwrap();
        assert_eq!(cm.configmap, Some(("lab".into(), "cfg".into())));
        // Outside a cluster (no Pod, or no API server): off.
        assert_eq!(opts(&[], &cluster[..2]).events, None);
        assert_eq!(opts(&[], &cluster[2..]).events, None);
        assert_eq!(opts(&["--events=false"], &cluster).events, None);
        let err = |args: &[&str], env: &[(&str, &str)]| run(args, env).unwrap_err().to_string();
        assert!(err(&["--events"], &cluster[2..]).starts_with("--events needs the Pod"));
        assert!(err(&["--events"], &cluster[..2]).starts_with("--events needs --api-server"));
        assert_eq!(
            err(&["--pod-name", "Bad_Name"], &cluster[1..]),
            "--pod-name: \"Bad_Name\" is not a Pod's name, namespace or UID"
        );
        assert!(err(
            &[],
            &[
                ("POD_UID", "../x"),
                cluster[0],
                cluster[1],
                cluster[3],
                cluster[4]
            ]
        )
        .starts_with("POD_UID: "));
    }

    #[test]
    fn dra_mode_takes_its_flags_the_api_and_the_lease_flags() {
        let o = opts(
            &[
                "--dra",
                "--dra-driver",
                "scopes.skao.int",
                "--kubelet-plugins-dir",
                "/p",
                "--cdi-dir",
                "/cdi",
                "--api-server",
                "https://127.0.0.1:6443",
                "--lease-namespace",
                "lab",
                "--lease-duration",
                "15s",
            ],
            &[("SPOOKD_KUBELET_REGISTRY_DIR", "/reg")],
        );
        assert_eq!(
            o.dra,
            Some(DraOptions {
                driver: "scopes.skao.int".into(),
                plugins_dir: "/p".into(),
                registry_dir: "/reg".into(),
                cdi_dir: "/cdi".into(),
                conn: Connection {
                    server: "https://127.0.0.1:6443".into(),
                    token_file: DEFAULT_TOKEN_FILE.into(),
                    ca_file: DEFAULT_CA_FILE.into(),
                },
                lease_namespace: Some("lab".into()),
                lease_duration: Duration::from_secs(15),
            })
        );
        let defaults = opts(&["--dra", "--api-server", "https://a:1"], &[])
            .dra
            .unwrap();
        assert_eq!(defaults.driver, dra::DEFAULT_DRIVER);
        assert_eq!(
            defaults.plugins_dir,
            PathBuf::from(dra::DEFAULT_PLUGINS_DIR)
        );
        assert_eq!(
            defaults.registry_dir,
            PathBuf::from(dra::DEFAULT_REGISTRY_DIR)
        );
        assert_eq!(defaults.cdi_dir, PathBuf::from(dra::DEFAULT_CDI_DIR));
        assert_eq!(defaults.lease_duration, DEFAULT_LEASE_DURATION);
    }

    #[test]
    fn dra_mode_refuses_what_does_not_fit_it() {
        let err = |args: &[&str]| run(args, &[]).unwrap_err().to_string();
        let with = |extra: &[&str]| {
            let mut v = vec!["--dra", "--api-server", "https://a:1"];
            v.extend_from_slice(extra);
            err(&v)
        };
        let long = "a".repeat(64);
        for bad in [
            "Upper.io",
            "a_b.io",
            "-a.io",
            "3d.example.com",
            long.as_str(),
        ] {
            assert!(
                with(&["--dra-driver", bad]).contains("is not a driver name"),
                "{bad}"
            );
        }
        assert!(with(&["--exclusive-leases"]).starts_with("--exclusive-leases is a device-plugin"));
        assert!(
            with(&["--prune-stale-resources"]).starts_with("--prune-stale-resources is a device")
        );
        assert_eq!(
            with(&["--device-plugin-dir", "/x"]),
            "--device-plugin-dir only has a meaning with device-plugin servers (not --dra)"
        );
        assert_eq!(
            err(&["--cdi-dir", "/x"]),
            "--cdi-dir only has a meaning with --dra"
        );
        assert_eq!(
            err(&["--dra"]),
            "--dra needs --api-server outside a cluster (KUBERNETES_SERVICE_HOST and \
             KUBERNETES_SERVICE_PORT are not set)"
        );
        // Without --dra or --exclusive-leases, the lease flags stand alone.
        assert_eq!(
            err(&["--lease-duration", "5s"]),
            "--lease-duration only has a meaning with --exclusive-leases"
        );
    }

    #[test]
    fn defaults() {
        assert_eq!(
            opts(&[], &[]),
            RunOptions {
                source: Source::File {
                    path: DEFAULT_CONFIG.into(),
                    poll_interval: DEFAULT_POLL_INTERVAL
                },
                node_name: node("my-host"),
                device_plugin_dir: DEFAULT_DEVICE_PLUGIN_DIR.into(),
                metrics_addr: None,
                prune: None,
                leases: None,
                dra: None,
                events: None,
            }
        );
    }

    #[test]
    fn flags_win_over_env_which_wins_over_defaults() {
        let env = [
            ("SPOOKD_CONFIG", "/env.yaml"),
            ("NODE_NAME", "env-node"),
            ("SPOOKD_DEVICE_PLUGIN_DIR", "/env/dp"),
            ("SPOOKD_POLL_INTERVAL", "2s"),
            ("SPOOKD_METRICS_ADDR", "127.0.0.1:9470"),
        ];
        assert_eq!(
            opts(&[], &env),
            RunOptions {
                source: Source::File {
                    path: "/env.yaml".into(),
                    poll_interval: Duration::from_secs(2)
                },
                node_name: node("env-node"),
                device_plugin_dir: "/env/dp".into(),
                metrics_addr: Some("127.0.0.1:9470".parse().unwrap()),
                prune: None,
                leases: None,
                dra: None,
                events: None,
            }
        );
        let o = opts(
            &[
                "--config",
                "/f.yaml",
                "--node-name=flag-node",
                "--device-plugin-dir",
                "/dp",
                "--poll-interval=250ms",
                "--metrics-addr=[::1]:0",
            ],
            &env,
        );
        assert_eq!(
            o,
            RunOptions {
                source: Source::File {
                    path: "/f.yaml".into(),
                    poll_interval: Duration::from_millis(250)
                },
                node_name: node("flag-node"),
                device_plugin_dir: "/dp".into(),
                metrics_addr: Some("[::1]:0".parse().unwrap()),
                prune: None,
                leases: None,
                dra: None,
                events: None,
            }
        );
    }

    #[test]
    fn usage_errors() {
        let e = |args: &[&str], env: &[(&str, &str)]| run(args, env).unwrap_err().to_string();
        assert_eq!(
            e(&["--bogus"], &[]),
            "unexpected argument \"--bogus\" (see --help)"
        );
        assert_eq!(e(&["--config"], &[]), "--config needs a value");
        assert_eq!(
            e(&["--config", "a", "--config", "b"], &[]),
            "--config given twice"
        );
        assert_eq!(
            e(&["--poll-interval", "0s"], &[]),
            "--poll-interval: \"0s\" is not a positive duration (write e.g. 250ms, 2s, 1m or 1m30s)"
        );
        assert!(e(&[], &[("SPOOKD_POLL_INTERVAL", "soon")])
            .starts_with("SPOOKD_POLL_INTERVAL: \"soon\""));
        assert!(e(&["--node-name", "Bad_Node"], &[])
            .starts_with("--node-name: invalid host \"Bad_Node\""));
        assert_eq!(e(&["check"], &[]), "check needs the PATH of a config");
        assert_eq!(
            e(&["--metrics-addr", "9470"], &[]),
            "--metrics-addr: \"9470\" is not ADDR:PORT (e.g. 0.0.0.0:9470, 127.0.0.1:9470, [::]:9470)"
        );
        assert_eq!(
            e(&["check", "a", "b"], &[]),
            "unexpected argument \"b\" (see --help)"
        );
        assert_eq!(
            e(&["check", "--config", "x", "a"], &[]),
            "unexpected argument \"--config\" (see --help)"
        );
    }

    #[test]
    fn configmap_source_in_cluster_defaults_and_overrides() {
        let in_cluster = [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ];
        let o = opts(&["--configmap", "spookd/spookd-device-plugin"], &in_cluster);
        assert_eq!(
            o.source,
            Source::ConfigMap(ApiOptions {
                namespace: "spookd".into(),
                name: "spookd-device-plugin".into(),
                key: "config.yaml".into(),
                conn: Connection {
                    server: "https://10.96.0.1:443".into(),
                    token_file: DEFAULT_TOKEN_FILE.into(),
                    ca_file: DEFAULT_CA_FILE.into(),
                },
                watch_timeout: Duration::from_secs(60),
            })
        );
        let v6 = [
            ("KUBERNETES_SERVICE_HOST", "fd00::1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ];
        let Source::ConfigMap(api) = opts(&["--configmap", "a/b"], &v6).source else {
            panic!()
        };
        assert_eq!(api.conn.server, "https://[fd00::1]:443");
        let env = [
            ("SPOOKD_CONFIGMAP", "ns/cm"),
            ("SPOOKD_CONFIGMAP_KEY", "k.yaml"),
            ("SPOOKD_API_SERVER", "https://127.0.0.1:6443/"),
            ("SPOOKD_TOKEN_FILE", "/t"),
            ("SPOOKD_CA_FILE", "/ca"),
            ("SPOOKD_WATCH_TIMEOUT", "5s"),
        ];
        assert_eq!(
            opts(&[], &env).source,
            Source::ConfigMap(ApiOptions {
                namespace: "ns".into(),
                name: "cm".into(),
                key: "k.yaml".into(),
                conn: Connection {
                    server: "https://127.0.0.1:6443".into(),
                    token_file: "/t".into(),
                    ca_file: "/ca".into(),
                },
                watch_timeout: Duration::from_secs(5),
            })
        );
    }

    #[test]
    fn prune_is_off_by_default_and_takes_the_api_flags() {
        let in_cluster = [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ];
        assert_eq!(opts(&[], &in_cluster).prune, None);
        assert_eq!(
            opts(&["--prune-stale-resources"], &in_cluster).prune,
            Some(PruneOptions {
                conn: Connection {
                    server: "https://10.96.0.1:443".into(),
                    token_file: DEFAULT_TOKEN_FILE.into(),
                    ca_file: DEFAULT_CA_FILE.into(),
                },
                after: Duration::from_secs(330),
            })
        );
        let env = [
            ("SPOOKD_PRUNE_STALE_RESOURCES", "true"),
            ("SPOOKD_PRUNE_AFTER", "2s"),
            ("SPOOKD_API_SERVER", "https://127.0.0.1:6443"),
            ("SPOOKD_TOKEN_FILE", "/t"),
            ("SPOOKD_CA_FILE", "/ca"),
        ];
        let o = opts(&["--config", "/c.yaml"], &env);
        assert_eq!(
            o.prune,
            Some(PruneOptions {
                conn: Connection {
                    server: "https://127.0.0.1:6443".into(),
                    token_file: "/t".into(),
                    ca_file: "/ca".into(),
                },
                after: Duration::from_secs(2),
            })
        );
        // The file source stays the source.
        assert!(matches!(o.source, Source::File { .. }));
        // A flag wins over the variable, both ways.
        assert_eq!(
            opts(&["--prune-stale-resources=false"], &env[..1]).prune,
            None
        );
        let e = |args: &[&str], env: &[(&str, &str)]| run(args, env).unwrap_err().to_string();
        assert_eq!(
            e(&["--prune-stale-resources"], &[]),
            "--prune-stale-resources needs --api-server outside a cluster \
             (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set)"
        );
        assert_eq!(
            e(&["--prune-after", "1m"], &in_cluster),
            "--prune-after only has a meaning with --prune-stale-resources"
        );
        assert_eq!(
            e(&[], &[("SPOOKD_PRUNE_STALE_RESOURCES", "yes")]),
            "SPOOKD_PRUNE_STALE_RESOURCES: \"yes\" is not true or false"
        );
        assert_eq!(
            e(
                &["--prune-stale-resources", "--prune-after", "0s"],
                &in_cluster
            ),
            "--prune-after: \"0s\" is not a positive duration (write e.g. 250ms, 2s, 1m or 1m30s)"
        );
    }

    #[test]
    fn exclusive_leases_are_off_by_default_and_take_their_flags() {
        let in_cluster = [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ];
        assert_eq!(opts(&[], &in_cluster).leases, None);
        assert_eq!(
            opts(&["--exclusive-leases"], &in_cluster).leases,
            Some(LeaseOptions {
                conn: Connection {
                    server: "https://10.96.0.1:443".into(),
                    token_file: DEFAULT_TOKEN_FILE.into(),
                    ca_file: DEFAULT_CA_FILE.into(),
                },
                namespace: None,
                duration: Duration::from_secs(40),
                pod_resources_socket: "/var/lib/kubelet/pod-resources/kubelet.sock".into(),
            })
        );
        let env = [
            ("SPOOKD_EXCLUSIVE_LEASES", "1"),
            ("SPOOKD_LEASE_NAMESPACE", "devices"),
            ("SPOOKD_LEASE_DURATION", "15s"),
            ("SPOOKD_POD_RESOURCES_SOCKET", "/pr.sock"),
            ("SPOOKD_API_SERVER", "https://127.0.0.1:6443"),
        ];
        let leases = opts(&[], &env).leases.unwrap();
        assert_eq!(leases.namespace.as_deref(), Some("devices"));
        assert_eq!(leases.duration, Duration::from_secs(15));
        assert_eq!(leases.pod_resources_socket, PathBuf::from("/pr.sock"));
        let e = |args: &[&str], env: &[(&str, &str)]| run(args, env).unwrap_err().to_string();
        assert_eq!(
            e(&["--lease-duration", "1m"], &in_cluster),
            "--lease-duration only has a meaning with --exclusive-leases"
        );
        assert_eq!(
            e(
                &["--exclusive-leases", "--lease-namespace", "Bad_NS"],
                &in_cluster
            ),
            "--lease-namespace: \"Bad_NS\" is not a namespace (a lowercase DNS label)"
        );
        assert_eq!(
            e(&["--exclusive-leases"], &[]),
            "--exclusive-leases needs --api-server outside a cluster (KUBERNETES_SERVICE_HOST \
             and KUBERNETES_SERVICE_PORT are not set)"
        );
    }

    #[test]
    fn configmap_source_errors() {
        let e = |args: &[&str], env: &[(&str, &str)]| run(args, env).unwrap_err().to_string();
        assert!(e(&["--config", "a", "--configmap", "n/c"], &[])
            .starts_with("--config and --configmap"));
        assert!(e(&["--configmap", "n/c"], &[("SPOOKD_CONFIG", "x")])
            .starts_with("--config and --configmap"));
        assert_eq!(
            e(&["--configmap", "n/c"], &[]),
            "--configmap needs --api-server outside a cluster (KUBERNETES_SERVICE_HOST and \
             KUBERNETES_SERVICE_PORT are not set)"
        );
        for bad in ["nc", "n/", "/c", "N/c", "n.x/c", "n/c/d"] {
            assert!(
                e(&["--configmap", bad, "--api-server", "https://h"], &[])
                    .contains("is not NAMESPACE/NAME"),
                "{bad}"
            );
        }
        for bad in ["http://h:1", "h:1", "https://", "https://h/path"] {
            assert_eq!(
                e(&["--configmap", "n/c", "--api-server", bad], &[]),
                format!("--api-server: {bad:?} is not an https:// URL")
            );
        }
    }

    #[test]
    fn check_help_version() {
        assert_eq!(
            run(&["check", "c.yaml"], &[("NODE_NAME", "ignored")]).unwrap(),
            Command::Check {
                node: None,
                path: "c.yaml".into()
            }
        );
        assert_eq!(
            run(&["check", "--node-name", "n1", "c.yaml"], &[]).unwrap(),
            Command::Check {
                node: Some(node("n1")),
                path: "c.yaml".into()
            }
        );
        assert_eq!(run(&["--help"], &[]).unwrap(), Command::Help);
        assert_eq!(
            run(&["--config", "x", "-V"], &[]).unwrap(),
            Command::Version
        );
    }

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

    #[test]
    fn every_flag_has_one_spec() {
        for (i, s) in FLAGS.iter().enumerate() {
            assert_eq!(
                FLAGS.iter().filter(|t| t.flag == s.flag).count(),
                1,
                "{:?}",
                s.flag
            );
            assert!(std::ptr::eq(s.flag.spec(), &FLAGS[i]));
        }
        assert_eq!(FLAGS.len(), 26);
    }
}
