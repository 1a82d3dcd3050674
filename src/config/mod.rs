//! The deviceMapping config: parsed once at the edge into checked types.
//!
//! Stage one is serde: [`RawConfig`] mirrors the YAML with `deny_unknown_fields`, and its leaves are
//! already checked types ([`ResourceName`], [`InstanceId`], [`EnvKey`], [`EnvValue`], [`NodeName`])
//! whose `Deserialize` refuses bad values, so serde_yaml reports them with their path
//! (`deviceMapping[0].devices[1].instanceID`) and line/column. Stage two, `Config::try_from`, applies
//! the rules that span several entries (one env and health check per device, env prefixes and
//! env names that must not collide across resources).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub mod dra;
pub mod layout;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::text::Cut;
use crate::time::parse_duration;

/// Longest device ID the kubelet accepts (`Device.ID`).
const MAX_INSTANCE_ID: usize = 63;

/// Largest config read: what one ConfigMap can hold (1 MiB of data in all). Checked before
/// parsing, so a huge file (or `/dev/zero`) costs nothing.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;
/// Most entries a config may expand to: mappings, hosts, devices and env keys, each counted every
/// time it is read, so a YAML alias used again counts again. A 1 MiB config written out holds at
/// most ~40,000 of them; aliases could otherwise expand it a hundredfold (serde_yaml's own limit)
/// into gigabytes. Counted while parsing: a config past it stops there.
pub const MAX_ENTRIES: usize = 100_000;
/// Most device entries (also counted each time an alias repeats them).
pub const MAX_DEVICE_ENTRIES: usize = 20_000;
/// Most structural tokens (`[ ] { } , :`, list dashes, lines) outside quotes and comments,
/// counted before parsing: about one YAML event each, and serde_yaml holds every event of the
/// document (~200 bytes each) before deserializing anything. A config of 10,000 devices in flow
/// style has ~140,000; a dense 1 MiB file of `[],` would have 500,000 (~100 MB of events).
pub const MAX_TOKENS: usize = 160_000;
/// Deepest nesting (flow brackets, or list dashes on one line): parsing cost grows with depth
/// times length, so 40,000 `[` took seconds and 1 MiB of them hours. A config needs 6.
pub const MAX_DEPTH: usize = 64;
/// Widest indentation, in columns (block nesting): a config needs about 12.
pub const MAX_INDENT: usize = 256;
/// Most resources one node may be given: each is a gRPC server with its socket, ~55 KB and two
/// file descriptors, and the DaemonSet's 64 Mi limit must hold them all.
pub const MAX_NODE_RESOURCES: usize = 256;
/// Most devices one resource may have: its ListAndWatch list must stay well within the 4 MiB a
/// gRPC message may carry (a device takes up to ~80 bytes of it).
pub const MAX_RESOURCE_DEVICES: usize = 10_000;
/// Most bytes of text (names, IDs, env keys and values) a config may expand to: an alias of one
/// 32 KiB env value used 200,000 times would otherwise be 6 GiB of copies.
pub const MAX_TEXT_BYTES: usize = 8 << 20;
/// Most (host, device) pairs, summed over the mappings: what the per-node views hold.
pub const MAX_ASSIGNMENTS: usize = 1_000_000;
/// Most env keys one device may set.
pub const MAX_ENV_KEYS: usize = 128;
/// Longest env value. Linux refuses one env string over 128 KiB at exec (`MAX_ARG_STRLEN`); a
/// device's value is set twice (DEV<n>_ and un-indexed) among other resources' in one container.
pub const MAX_ENV_VALUE: usize = 32 << 10;
/// Most bytes of env keys and values one device may set.
pub const MAX_DEVICE_ENV_BYTES: usize = 64 << 10;

/// An extended resource name the kubelet accepts: `<domain>/<name>`, outside `kubernetes.io`.
/// Shared, not copied: every map keyed by device (the probes' in two threads, Leases, the views)
/// clones these, and a clone is a count, not an allocation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceName(Arc<str>);

/// A device's ID within its resource: non-empty, at most 63 characters (shared like
/// [`ResourceName`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(Arc<str>);

/// A Kubernetes node name (an RFC 1123 subdomain).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName(String);

/// An env key a device may set: `[A-Za-z_][A-Za-z0-9_]*`, none of the generated suffixes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvKey(String);

/// An env value: a YAML string verbatim, or a number or boolean as serde_yaml prints it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvValue(String);

/// A device's env: keys unique, sorted.
///
/// A sorted slice, shared: a config of 10,000 devices holds 10,000 of these, once in the checked
/// config and again in each node's view. As `BTreeMap`s they took 544 bytes each for one or two
/// keys (a whole B-tree leaf) and were copied into the view: 5.4 MiB of the state thread's heap
/// at 10,000 devices. Shared slices take 16 bytes per view and the pairs once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env(Arc<[(EnvKey, EnvValue)]>);

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
    /// An IP address and port; names are refused (see [`RawHealthCheck`]).
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
struct Spec {
    env: Env,
    health_check: Option<HealthCheck>,
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
/// Each device is held once; nodes hold indices. At 10,000 devices a reload builds this in 3–4 ms,
/// where sets of cloned keys per node took 13–24 (see README, Performance).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Every device once, sorted by (resource, instanceID).
    devices: Vec<(ResourceName, InstanceId, Spec)>,
    /// Per node, the indices into `devices` it serves: ascending, no repeats.
    hosts: BTreeMap<NodeName, Vec<usize>>,
}

/// Why a config could not be used. The last good config stays in force.
#[derive(Debug)]
pub enum ConfigError {
    /// The config could not be read.
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The ConfigMap has no such key.
    MissingKey { origin: String, key: String },
    /// The config is empty (or only whitespace and comments).
    Empty { origin: String },
    /// Not YAML, or not the deviceMapping shape, or a field breaks its rule. serde_yaml's message
    /// carries the field's path and the line and column.
    Parse {
        origin: String,
        source: serde_yaml::Error,
    },
    /// The config path is not a regular file (a FIFO would block the reader, a device never end).
    NotRegular { path: PathBuf, kind: &'static str },
    /// The config is larger than [`MAX_CONFIG_BYTES`].
    TooLarge { origin: String, limit: usize },
    /// The config maps more (host, device) pairs than [`MAX_ASSIGNMENTS`].
    TooManyAssignments { origin: String, limit: usize },
    /// The text is denser or deeper than a config needs ([`MAX_TOKENS`], [`MAX_DEPTH`],
    /// [`MAX_INDENT`]); refused before parsing.
    TooComplex {
        origin: String,
        line: usize,
        what: &'static str,
        limit: usize,
    },
    /// A node is given more resources than [`MAX_NODE_RESOURCES`].
    TooManyResources {
        origin: String,
        node: NodeName,
        count: usize,
        limit: usize,
    },
    /// A resource has more devices than [`MAX_RESOURCE_DEVICES`].
    TooManyDevices {
        origin: String,
        resource: ResourceName,
        count: usize,
        limit: usize,
    },
    /// The same device appears twice with a different `field` (env or healthCheck).
    ConflictingDevice {
        origin: String,
        field: &'static str,
        resource: ResourceName,
        instance: InstanceId,
        first_mapping: usize,
        mapping: usize,
    },
    /// Two resource names give the same env prefix, so their variables would overwrite each other.
    PrefixCollision {
        origin: String,
        first: ResourceName,
        second: ResourceName,
        prefix: String,
    },
    /// One env variable could be set by two resources (one's prefix extends the other's, e.g.
    /// `a.io/x` with env key `Y_ID` and `a.io/x-y`): a container given both would get one value.
    EnvNameCollision {
        origin: String,
        first: ResourceName,
        second: ResourceName,
        name: String,
    },
    /// `--dra`: two devices (or two resources) derive the same DRA name (see [`dra`]).
    DraNameCollision {
        origin: String,
        /// "device name" or "DeviceClass name".
        what: &'static str,
        first: String,
        second: String,
        name: String,
    },
    /// `--dra`: a device's resourceName or instanceID is longer than a ResourceSlice attribute
    /// may be.
    DraAttributeTooLong {
        origin: String,
        resource: ResourceName,
        instance: InstanceId,
        attribute: &'static str,
        limit: usize,
    },
}

/// Every variant may quote the config (a value, a key, a path of keys): shown cut to
/// [`crate::text::MAX_MESSAGE`] wherever it is shown.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Cut(Whole(self)))
    }
}

/// A [`ConfigError`] in full.
struct Whole<'a>(&'a ConfigError);

impl fmt::Display for Whole<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read config {}: {source}", path.display())
            }
            ConfigError::MissingKey { origin, key } => {
                write!(f, "{origin}: the ConfigMap has no key {key}")
            }
            ConfigError::Empty { origin } => write!(
                f,
                "{origin}: the config is empty; write deviceMapping: [] to serve nothing"
            ),
            ConfigError::Parse { origin, source } => write!(f, "{origin}: {source}"),
            ConfigError::NotRegular { path, kind } => write!(
                f,
                "cannot read config {}: it is {kind}, not a regular file",
                path.display()
            ),
            ConfigError::TooLarge { origin, limit } => write!(
                f,
                "{origin}: the config is larger than {limit} bytes (what a ConfigMap can hold)"
            ),
            ConfigError::TooComplex {
                origin,
                line,
                what,
                limit,
            } => write!(
                f,
                "{origin}: line {line}: the config has more than {limit} {what}; no config needs \
                 that many (refused before parsing)"
            ),
            ConfigError::TooManyResources {
                origin,
                node,
                count,
                limit,
            } => write!(
                f,
                "{origin}: node {node} is given {count} resources, more than {limit} (each is a \
                 gRPC server on its own socket); merge resources or split the hosts"
            ),
            ConfigError::TooManyDevices {
                origin,
                resource,
                count,
                limit,
            } => write!(
                f,
                "{origin}: {resource} has {count} devices, more than {limit} (its device list must \
                 fit one gRPC message)"
            ),
            ConfigError::TooManyAssignments { origin, limit } => write!(
                f,
                "{origin}: the mappings give more than {limit} (host, device) pairs (hosts × \
                 devices, summed over the mappings); split the config or map fewer hosts"
            ),
            ConfigError::ConflictingDevice {
                origin,
                field,
                resource,
                instance,
                first_mapping,
                mapping,
            } => write!(
                f,
                "{origin}: deviceMapping[{mapping}]: device {resource} instanceID \"{instance}\" has \
                 different {field} than in deviceMapping[{first_mapping}]; a device must carry \
                 identical {field} wherever it appears"
            ),
            ConfigError::PrefixCollision {
                origin,
                first,
                second,
                prefix,
            } => write!(
                f,
                "{origin}: resource names {first} and {second} both give the env prefix {prefix}; \
                 rename one of them"
            ),
            ConfigError::EnvNameCollision {
                origin,
                first,
                second,
                name,
            } => write!(
                f,
                "{origin}: env variable {name} could be set by both {first} and {second} (a \
                 container given both would get only one value); rename a resource or an env key"
            ),
            ConfigError::DraNameCollision {
                origin,
                what,
                first,
                second,
                name,
            } => write!(
                f,
                "{origin}: {first} and {second} both get the DRA {what} {name} (names are \
                 lower-cased, with other characters as '-'); rename one of them"
            ),
            ConfigError::DraAttributeTooLong {
                origin,
                resource,
                instance,
                attribute,
                limit,
            } => write!(
                f,
                "{origin}: device {resource} instanceID \"{instance}\": its {attribute} is longer \
                 than {limit} bytes, the most a ResourceSlice attribute may hold"
            ),
        }
    }
}

impl ConfigError {
    /// Whether the source could not read a config at all (as opposed to reading an invalid one):
    /// a source that cannot make progress, which /readyz reports.
    pub fn is_unreadable(&self) -> bool {
        matches!(
            self,
            ConfigError::Read { .. }
                | ConfigError::NotRegular { .. }
                | ConfigError::TooLarge { .. }
        )
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            ConfigError::Parse { source, .. } => Some(source),
            ConfigError::Empty { .. }
            | ConfigError::MissingKey { .. }
            | ConfigError::NotRegular { .. }
            | ConfigError::TooLarge { .. }
            | ConfigError::TooManyAssignments { .. }
            | ConfigError::TooComplex { .. }
            | ConfigError::TooManyResources { .. }
            | ConfigError::TooManyDevices { .. }
            | ConfigError::ConflictingDevice { .. }
            | ConfigError::PrefixCollision { .. }
            | ConfigError::EnvNameCollision { .. }
            | ConfigError::DraNameCollision { .. }
            | ConfigError::DraAttributeTooLong { .. } => None,
        }
    }
}

/// The YAML as written. Leaves are checked types; cross-entry rules wait for `Config::try_from`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawConfig {
    #[serde(deserialize_with = "mapping_list")]
    device_mapping: Vec<RawMapping>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    #[serde(deserialize_with = "host_list")]
    hosts: Vec<NodeName>,
    #[serde(deserialize_with = "device_list")]
    devices: Vec<RawDevice>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDevice {
    resource_name: ResourceName,
    #[serde(rename = "instanceID")]
    instance_id: InstanceId,
    #[serde(default, deserialize_with = "unique_keys")]
    env: Env,
    #[serde(default)]
    health_check: Option<HealthCheck>,
}

/// `healthCheck` as written; `tcp` is required, the rest have Kubernetes-probe-like defaults.
///
/// `tcp` takes an IP address, not a name: resolving a name blocks in the C library with no
/// timeout we control, and one hanging lookup would stall every other device's probe.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHealthCheck {
    tcp: TcpTarget,
    interval: Option<ProbeDuration>,
    timeout: Option<ProbeDuration>,
    failure_threshold: Option<Threshold>,
    success_threshold: Option<Threshold>,
}

/// `IP:PORT` (`[IPv6]:PORT`), port not 0.
#[derive(Debug)]
struct TcpTarget(SocketAddr);

/// A duration written as the CLI takes it (`500ms`, `10s`, `1m`), at least 10 ms.
#[derive(Debug)]
struct ProbeDuration(Duration);

/// A count of at least 1.
#[derive(Debug)]
struct Threshold(u32);

impl RawHealthCheck {
    /// The rule across fields: a probe must end before the next is due.
    fn check(self) -> Result<HealthCheck, InvalidValue> {
        let interval = self.interval.map_or(HealthCheck::DEFAULT_INTERVAL, |d| d.0);
        let timeout = self.timeout.map_or(HealthCheck::DEFAULT_TIMEOUT, |d| d.0);
        if interval < HealthCheck::MIN_INTERVAL {
            return Err(invalid(
                "healthCheck.interval",
                &format!("{interval:?}"),
                "must be at least 100ms",
            ));
        }
        if interval > HealthCheck::MAX_INTERVAL {
            return Err(invalid(
                "healthCheck.interval",
                &format!("{interval:?}"),
                "must be at most 1h",
            ));
        }
        if timeout > interval {
            return Err(invalid(
                "healthCheck.timeout",
                &format!("{timeout:?}"),
                "must not be longer than the interval",
            ));
        }
        Ok(HealthCheck {
            tcp: self.tcp.0,
            interval,
            timeout,
            failure_threshold: self
                .failure_threshold
                .map_or(HealthCheck::DEFAULT_FAILURE_THRESHOLD, |t| t.0),
            success_threshold: self
                .success_threshold
                .map_or(HealthCheck::DEFAULT_SUCCESS_THRESHOLD, |t| t.0),
        })
    }
}

impl Config {
    /// Parses and checks a config. `origin` names where it came from, for error messages.
    pub fn parse(text: &[u8], origin: &str) -> Result<Config, ConfigError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                origin: origin.to_owned(),
                limit: MAX_CONFIG_BYTES,
            });
        }
        let blank = |line: &str| line.trim().is_empty() || line.trim_start().starts_with('#');
        if String::from_utf8_lossy(text).lines().all(blank) {
            return Err(ConfigError::Empty {
                origin: origin.to_owned(),
            });
        }
        prescan(text).map_err(|(line, what, limit)| ConfigError::TooComplex {
            origin: origin.to_owned(),
            line,
            what,
            limit,
        })?;
        let raw: RawConfig = {
            let scope = ParseScope::enter(text);
            serde_yaml::from_slice(scope.text())
        }
        .map_err(|source| ConfigError::Parse {
            origin: origin.to_owned(),
            source,
        })?;
        Config::check(raw, origin)
    }

    /// Stage two: the rules across entries.
    fn check(raw: RawConfig, origin: &str) -> Result<Config, ConfigError> {
        // Each device's index in order of first appearance, with what it declares and where.
        let mut index: BTreeMap<(ResourceName, InstanceId), usize> = BTreeMap::new();
        let mut specs: Vec<(Spec, usize)> = Vec::new();
        let mut prefixes: BTreeMap<String, ResourceName> = BTreeMap::new();
        let mut hosts: BTreeMap<NodeName, Vec<usize>> = BTreeMap::new();
        let mut checked: BTreeSet<ResourceName> = BTreeSet::new();
        let mut assignments: usize = 0;
        for (mapping, raw_mapping) in raw.device_mapping.into_iter().enumerate() {
            assignments = assignments.saturating_add(
                raw_mapping
                    .hosts
                    .len()
                    .saturating_mul(raw_mapping.devices.len()),
            );
            if assignments > MAX_ASSIGNMENTS {
                return Err(ConfigError::TooManyAssignments {
                    origin: origin.to_owned(),
                    limit: MAX_ASSIGNMENTS,
                });
            }
            let mut served = Vec::with_capacity(raw_mapping.devices.len());
            for device in raw_mapping.devices {
                let spec = Spec {
                    env: device.env,
                    health_check: device.health_check,
                };
                // A resource's prefix is checked once, at its first device.
                let resource = device.resource_name;
                if !checked.contains(&resource) {
                    checked.insert(resource.clone());
                    let prefix = layout::prefix(&resource);
                    match prefixes.get(&prefix) {
                        Some(other) if *other != resource => {
                            return Err(ConfigError::PrefixCollision {
                                origin: origin.to_owned(),
                                first: other.clone(),
                                second: resource,
                                prefix,
                            })
                        }
                        Some(_) => {}
                        None => {
                            prefixes.insert(prefix, resource.clone());
                        }
                    }
                }
                match index.entry((resource, device.instance_id)) {
                    Entry::Occupied(seen) => {
                        let (first, first_mapping) = &specs[*seen.get()];
                        if *first != spec {
                            let (resource, instance) = seen.remove_entry().0;
                            return Err(ConfigError::ConflictingDevice {
                                origin: origin.to_owned(),
                                field: if first.env != spec.env {
                                    "env"
                                } else {
                                    "healthCheck"
                                },
                                first_mapping: *first_mapping,
                                mapping,
                                resource,
                                instance,
                            });
                        }
                        served.push(*seen.get());
                    }
                    Entry::Vacant(new) => {
                        let i = specs.len();
                        new.insert(i);
                        specs.push((spec, mapping));
                        served.push(i);
                    }
                }
            }
            for host in raw_mapping.hosts {
                hosts.entry(host).or_default().extend_from_slice(&served);
            }
        }
        // Renumber in key order, so each node's indices sort into (resource, instanceID) order.
        let mut rank = vec![0; specs.len()];
        let mut specs: Vec<Option<Spec>> = specs.into_iter().map(|(s, _)| Some(s)).collect();
        let mut devices = Vec::with_capacity(specs.len());
        for (sorted, ((resource, id), first)) in index.into_iter().enumerate() {
            rank[first] = sorted;
            // Each index was pushed to `specs` exactly once, and is taken once here.
            if let Some(spec) = specs[first].take() {
                devices.push((resource, id, spec));
            }
        }
        let mut per_resource: BTreeMap<&ResourceName, usize> = BTreeMap::new();
        for (resource, _, _) in &devices {
            *per_resource.entry(resource).or_default() += 1;
        }
        if let Some((resource, &count)) =
            per_resource.iter().find(|(_, &n)| n > MAX_RESOURCE_DEVICES)
        {
            return Err(ConfigError::TooManyDevices {
                origin: origin.to_owned(),
                resource: (*resource).clone(),
                count,
                limit: MAX_RESOURCE_DEVICES,
            });
        }
        check_env_names(&devices, &prefixes, origin)?;
        for (node, served) in &mut hosts {
            for i in served.iter_mut() {
                *i = rank[*i];
            }
            served.sort_unstable();
            served.dedup();
            served.shrink_to_fit();
            // Sorted by (resource, instanceID): each resource is one run.
            let resources = 1 + served
                .windows(2)
                .filter(|w| devices[w[0]].0 != devices[w[1]].0)
                .count();
            if !served.is_empty() && resources > MAX_NODE_RESOURCES {
                return Err(ConfigError::TooManyResources {
                    origin: origin.to_owned(),
                    node: node.clone(),
                    count: resources,
                    limit: MAX_NODE_RESOURCES,
                });
            }
        }
        Ok(Config { devices, hosts })
    }

    /// The devices `node` serves. Empty when the node is in no mapping.
    pub fn for_node(&self, node: &NodeName) -> NodeDevices {
        let mut out = NodeDevices::new();
        let mut run: Vec<Device> = Vec::new();
        let served = self.hosts.get(node).map_or(&[][..], Vec::as_slice);
        // Every index in `hosts` indexes `devices` (both made by `check`).
        // Indices ascend in (resource, instanceID) order: each resource's devices are one run.
        for (n, &i) in served.iter().enumerate() {
            let (resource, id, spec) = &self.devices[i];
            run.push(Device {
                id: id.clone(),
                env: spec.env.clone(),
                health_check: spec.health_check,
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
            .map(|((resource, id, spec), hosts)| Placement {
                resource,
                device: Device {
                    id: id.clone(),
                    env: spec.env.clone(),
                    health_check: spec.health_check,
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

/// Refuses a config where two resources could set the same env variable. Only a resource whose
/// prefix extends another's by `_…` can: those pairs (rare) are compared by the shape of the names
/// each can set ([`layout::shared_name`]), in time linear in their keys, whatever their counts.
fn check_env_names(
    devices: &[(ResourceName, InstanceId, Spec)],
    prefixes: &BTreeMap<String, ResourceName>,
    origin: &str,
) -> Result<(), ConfigError> {
    // Prefixes are [A-Z0-9_]; '`' follows '_': the range is every prefix starting `{prefix}_`.
    let pairs: Vec<(&ResourceName, &ResourceName)> = prefixes
        .iter()
        .flat_map(|(prefix, first)| {
            (prefixes.range(format!("{prefix}_")..format!("{prefix}`")))
                .map(move |(_, second)| (first, second))
        })
        .collect();
    if pairs.is_empty() {
        return Ok(());
    }
    // Per resource: its device count and every env key any of its devices sets.
    let mut shapes: BTreeMap<&ResourceName, layout::Shape<'_>> = BTreeMap::new();
    for (resource, _, spec) in devices {
        let shape = shapes.entry(resource).or_default();
        shape.count += 1;
        shape.keys.extend(spec.env.iter().map(|(k, _)| k.as_str()));
    }
    let none = layout::Shape::default();
    for (first, second) in pairs {
        let prefix = layout::prefix(first);
        let x = &layout::prefix(second)[prefix.len() + 1..];
        let shape = |r| shapes.get(r).unwrap_or(&none);
        if let Some(name) = layout::shared_name(&prefix, shape(first), x, shape(second)) {
            return Err(ConfigError::EnvNameCollision {
                origin: origin.to_owned(),
                first: first.clone(),
                second: second.clone(),
                name,
            });
        }
    }
    Ok(())
}

/// Counts what the YAML parser would have to hold, without parsing: structural tokens outside
/// quotes and comments, flow nesting, list dashes on one line, indentation. The error is (line,
/// what, limit). Conservative where the YAML is unusual (a comma inside a block scalar counts).
fn prescan(text: &[u8]) -> Result<(), (usize, &'static str, usize)> {
    #[derive(PartialEq)]
    enum In {
        Plain,
        Double,
        Single,
        Comment,
    }
    let (mut tokens, mut depth, mut line) = (0usize, 0usize, 1usize);
    let mut state = In::Plain;
    let mut at_line_start = true;
    let (mut indent, mut dashes) = (0usize, 0usize);
    let mut prev = b'\n';
    let mut escaped = false;
    for &b in text {
        if b == b'\n' {
            line += 1;
            tokens += 1;
            if state == In::Comment {
                state = In::Plain;
            }
            at_line_start = true;
            (indent, dashes) = (0, 0);
            prev = b;
            continue;
        }
        match state {
            In::Comment => {}
            In::Double => {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    state = In::Plain;
                }
            }
            In::Single => {
                if b == b'\'' {
                    state = In::Plain;
                }
            }
            In::Plain => {
                if at_line_start {
                    match b {
                        b' ' => {
                            indent += 1;
                            if indent > MAX_INDENT {
                                return Err((line, "columns of indentation", MAX_INDENT));
                            }
                            prev = b;
                            continue;
                        }
                        b'-' => {}
                        _ => at_line_start = false,
                    }
                }
                match b {
                    b'#' if prev.is_ascii_whitespace() => state = In::Comment,
                    b'"' | b'\'' if prev.is_ascii_whitespace() || b"[{,:-?".contains(&prev) => {
                        state = if b == b'"' { In::Double } else { In::Single };
                    }
                    b'[' | b'{' => {
                        tokens += 1;
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return Err((line, "levels of nesting", MAX_DEPTH));
                        }
                    }
                    b']' | b'}' => {
                        tokens += 1;
                        depth = depth.saturating_sub(1);
                    }
                    b',' | b':' => tokens += 1,
                    b'-' if at_line_start => {
                        tokens += 1;
                        dashes += 1;
                        if dashes > MAX_DEPTH {
                            return Err((line, "levels of nesting", MAX_DEPTH));
                        }
                    }
                    _ => {}
                }
            }
        }
        if tokens > MAX_TOKENS {
            return Err((
                line,
                "structural tokens (list items, keys, commas, lines)",
                MAX_TOKENS,
            ));
        }
        prev = b;
    }
    if tokens > MAX_TOKENS {
        return Err((
            line,
            "structural tokens (list items, keys, commas, lines)",
            MAX_TOKENS,
        ));
    }
    Ok(())
}

/// The text being parsed and what its entries have cost so far, for the leaf types' visitors.
///
/// serde's derived visitors pass no context down, and serde_yaml tells a visitor neither a
/// scalar's style nor its position: only that a string is borrowed from the input. The scope
/// keeps the input (one copy, small beside the parse) so a visitor can look at the bytes around a
/// borrowed scalar, and counts entries so an alias bomb stops at [`MAX_ENTRIES`] instead of
/// expanding first. Per thread: parses on other threads have their own.
struct ParseScope {
    text: std::rc::Rc<[u8]>,
}

#[derive(Default)]
struct Scope {
    text: Option<std::rc::Rc<[u8]>>,
    entries: usize,
    devices: usize,
    text_bytes: usize,
}

thread_local! {
    static SCOPE: std::cell::RefCell<Scope> = std::cell::RefCell::new(Scope::default());
}

impl ParseScope {
    fn enter(text: &[u8]) -> ParseScope {
        let text: std::rc::Rc<[u8]> = text.into();
        SCOPE.with(|s| {
            *s.borrow_mut() = Scope {
                text: Some(text.clone()),
                ..Scope::default()
            }
        });
        ParseScope { text }
    }

    fn text(&self) -> &[u8] {
        &self.text
    }
}

impl Drop for ParseScope {
    fn drop(&mut self) {
        SCOPE.with(|s| *s.borrow_mut() = Scope::default());
    }
}

/// Counts one entry (and one device when `device`); the error once a bound is passed.
fn spend(device: bool) -> Result<(), String> {
    SCOPE.with(|s| {
        let mut s = s.borrow_mut();
        s.entries += 1;
        s.devices += usize::from(device);
        if s.entries > MAX_ENTRIES {
            Err(format!(
                "the config expands to more than {MAX_ENTRIES} entries (mappings, hosts, devices \
                 and env keys; a YAML alias counts each time it is used)"
            ))
        } else if s.devices > MAX_DEVICE_ENTRIES {
            Err(format!(
                "the config expands to more than {MAX_DEVICE_ENTRIES} device entries (a YAML \
                 alias counts each time it is used)"
            ))
        } else {
            Ok(())
        }
    })
}

/// Counts `len` bytes of text kept from the config; the error once [`MAX_TEXT_BYTES`] is passed.
fn spend_text(len: usize) -> Result<(), String> {
    SCOPE.with(|s| {
        let mut s = s.borrow_mut();
        s.text_bytes = s.text_bytes.saturating_add(len);
        if s.text_bytes > MAX_TEXT_BYTES {
            Err(format!(
                "the config expands to more than {MAX_TEXT_BYTES} bytes of names, IDs and env \
                 (a YAML alias counts each time it is used)"
            ))
        } else {
            Ok(())
        }
    })
}

/// How a scalar was written, judged from where the string serde_yaml borrowed from the input
/// sits in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    /// Unquoted and untagged: YAML readers resolve it (`0001` may be a number, `yes` a boolean).
    Plain,
    /// Quoted, a block scalar, or tagged `!!str`: a string to every reader.
    Explicit,
}

/// The style of a scalar serde_yaml lent as `s`. A string that is not a slice of the input had
/// escapes, folding or a block style: not plain.
fn style_of(s: &str) -> Style {
    SCOPE.with(|scope| {
        let scope = scope.borrow();
        let Some(text) = &scope.text else {
            return Style::Explicit;
        };
        let start = (s.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
        let Some((before, rest)) = text.split_at_checked(start) else {
            return Style::Explicit;
        };
        let Some((lent, after)) = rest.split_at_checked(s.len()) else {
            return Style::Explicit;
        };
        if lent != s.as_bytes() {
            return Style::Explicit;
        }
        // A quoted scalar's string ends at its closing quote (serde_yaml lends the text before
        // it, even when escapes came earlier); no plain scalar can end just before a quote.
        if matches!(after.first(), Some(b'"' | b'\'')) {
            return Style::Explicit;
        }
        // The tokens before it on its line, nearest first: an anchor (`&x`) says nothing; a tag
        // `!!str` (or the non-specific `!`) makes it a string.
        let line = before.rsplit(|b| *b == b'\n').next().unwrap_or_default();
        for token in line
            .split(|b| b.is_ascii_whitespace())
            .rev()
            .filter(|t| !t.is_empty())
        {
            match token {
                b"!!str" | b"!<tag:yaml.org,2002:str>" | b"!" => return Style::Explicit,
                t if t.starts_with(b"&") => continue,
                _ => break,
            }
        }
        Style::Plain
    })
}

/// What a YAML 1.1 or 1.2 reader may take a plain scalar for other than a string: `0001` and
/// `0x1F` (numbers), `yes` and `off` (YAML 1.1 booleans), `~` (null).
fn reads_as_non_string(s: &str) -> Option<&'static str> {
    let words = |list: &[&str]| list.iter().any(|w| s.eq_ignore_ascii_case(w));
    if s.is_empty() || words(&["~", "null"]) {
        return Some("null");
    }
    if words(&["true", "false", "yes", "no", "on", "off", "y", "n"]) {
        return Some("a boolean");
    }
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits = |t: &str, radix: u32| {
        t.chars().any(|c| c.is_digit(radix)) && t.chars().all(|c| c.is_digit(radix) || c == '_')
    };
    let prefixed = [("0x", 16), ("0o", 8), ("0b", 2)]
        .iter()
        .any(|(p, radix)| unsigned.strip_prefix(p).is_some_and(|t| digits(t, *radix)));
    // Sexagesimal (YAML 1.1): 1:30, 1:30:00.5.
    let sexagesimal = unsigned.contains(':') && {
        let parts: Vec<&str> = unsigned.split(':').collect();
        let (last, rest) = parts.split_last().unwrap_or((&"", &[]));
        rest.iter().all(|t| digits(t, 10)) && (digits(last, 10) || is_float(last))
    };
    let number = digits(unsigned, 10)
        || prefixed
        || sexagesimal
        || is_float(unsigned)
        || words(&[".inf", "+.inf", "-.inf", ".nan"]);
    if number {
        return Some("a number");
    }
    // YAML 1.1 timestamps: 2001-12-14, 2001-12-14t21:59:43.10-05:00.
    let b = s.as_bytes();
    let date = b.len() >= 8
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && s[5..]
            .split(['-', 't', 'T', ' '])
            .take(2)
            .all(|t| !t.is_empty() && t.len() <= 2 && t.bytes().all(|c| c.is_ascii_digit()));
    date.then_some("a timestamp")
}

/// `1.5`, `.5`, `1.`, `1e3`, `1.5E-3` (digits may carry `_`).
fn is_float(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit() || b == b'_');
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mantissa_ok = (!int.is_empty() || !frac.is_empty())
        && digits(int)
        && digits(frac)
        && int.bytes().chain(frac.bytes()).any(|b| b.is_ascii_digit());
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())
    });
    mantissa_ok && (mantissa.contains('.') || exponent.is_some()) && exponent_ok
}

/// A list that must be written as one: `key:` with nothing (or only comments) after it is null
/// to YAML, which serde_yaml would read as an empty list; only an explicit `[]` is empty.
fn explicit_list<'de, D, T>(d: D, what: &'static str) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(&'static str, std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of {}", self.0)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element()? {
                spend(self.0 == "devices").map_err(de::Error::custom)?;
                out.push(item);
            }
            Ok(out)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Vec<T>, E> {
            Err(E::custom(format!(
                "no {} (nothing, or only comments, after the key): write [] to mean none",
                self.0
            )))
        }
    }
    d.deserialize_any(V(what, std::marker::PhantomData))
}

fn mapping_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RawMapping>, D::Error> {
    explicit_list(d, "mappings")
}

fn host_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<NodeName>, D::Error> {
    explicit_list(d, "hosts")
}

fn device_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RawDevice>, D::Error> {
    explicit_list(d, "devices")
}

/// An env map that refuses a key written twice (serde_yaml would silently keep the last).
fn unique_keys<'de, D: Deserializer<'de>>(d: D) -> Result<Env, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Env;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of env keys to values")
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out: Vec<(EnvKey, EnvValue)> = Vec::new();
            let mut bytes = 0usize;
            while let Some((k, v)) = map.next_entry::<EnvKey, EnvValue>()? {
                spend(false).map_err(de::Error::custom)?;
                bytes += k.0.len() + v.0.len();
                if out.len() == MAX_ENV_KEYS {
                    return Err(de::Error::custom(format!(
                        "more than {MAX_ENV_KEYS} env keys on one device"
                    )));
                }
                if bytes > MAX_DEVICE_ENV_BYTES {
                    return Err(de::Error::custom(format!(
                        "the device's env keys and values take more than {MAX_DEVICE_ENV_BYTES} \
                         bytes (a container's env is set at exec, which Linux bounds)"
                    )));
                }
                out.push((k, v));
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            if let Some(pair) = out.windows(2).find(|pair| pair[0].0 == pair[1].0) {
                return Err(de::Error::custom(format!(
                    "env key {} is written twice",
                    pair[0].0
                )));
            }
            Ok(Env(out.into()))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Env::default())
        }
    }
    d.deserialize_any(V)
}

macro_rules! string_newtype {
    ($t:ident) => {
        impl $t {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}
string_newtype!(ResourceName);
string_newtype!(InstanceId);

/// Sets of instanceIDs are looked up by the kubelet's strings (Ord is the string's: consistent).
impl std::borrow::Borrow<str> for InstanceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}
string_newtype!(NodeName);
string_newtype!(EnvKey);
string_newtype!(EnvValue);

/// Why a single value was refused. Becomes a serde error, which serde_yaml places in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidValue {
    what: &'static str,
    value: String,
    rule: &'static str,
}

impl fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} {:?}: {}", self.what, self.value, self.rule)
    }
}

impl std::error::Error for InvalidValue {}

fn invalid(what: &'static str, value: &str, rule: &'static str) -> InvalidValue {
    InvalidValue {
        what,
        value: value.to_owned(),
        rule,
    }
}

/// RFC 1123 label: lowercase alphanumerics and '-', starting and ending alphanumeric, ≤ 63.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain: dot-separated labels, ≤ 253 in all.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

impl TryFrom<String> for ResourceName {
    type Error = InvalidValue;

    /// The kubelet's `IsExtendedResourceName`: not native (no `/`, or `kubernetes.io/` inside), not
    /// `requests.`-prefixed, and `requests.<name>` a qualified name.
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        const WHAT: &str = "resourceName";
        let Some((domain, name)) = s.split_once('/') else {
            return Err(invalid(
                WHAT,
                &s,
                "must be <domain>/<name>, e.g. example.com/widget",
            ));
        };
        if !is_dns_subdomain(domain) || domain.len() + "requests.".len() > 253 {
            return Err(invalid(
                WHAT,
                &s,
                "the domain must be a DNS subdomain: lowercase letters, digits, '-' and '.'",
            ));
        }
        if domain == "kubernetes.io" || domain.ends_with(".kubernetes.io") {
            return Err(invalid(WHAT, &s, "the kubernetes.io domain is reserved"));
        }
        if domain.starts_with("requests.") {
            return Err(invalid(
                WHAT,
                &s,
                "the requests. prefix is reserved for quotas",
            ));
        }
        let b = name.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c));
        if !ok {
            return Err(invalid(
                WHAT,
                &s,
                "the name after '/' must be at most 63 letters, digits, '-', '_' or '.', starting \
                 and ending with a letter or digit",
            ));
        }
        Ok(ResourceName(s.into()))
    }
}

impl TryFrom<String> for InstanceId {
    type Error = InvalidValue;

    /// It becomes an env value, a label of /metrics, a log line's word and the kubelet's device
    /// ID: no control characters (NUL, CR, LF, tab, …), no white space at either end.
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        if s.is_empty() || s.chars().count() > MAX_INSTANCE_ID {
            return Err(invalid("instanceID", &s, "must be 1 to 63 characters"));
        }
        if s.chars().any(char::is_control) {
            return Err(invalid(
                "instanceID",
                &s,
                "must not contain control characters (NUL, tab, CR, LF, …)",
            ));
        }
        if s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace) {
            return Err(invalid(
                "instanceID",
                &s,
                "must not start or end with white space",
            ));
        }
        Ok(InstanceId(s.into()))
    }
}

impl TryFrom<String> for NodeName {
    type Error = InvalidValue;

    fn try_from(s: String) -> Result<Self, InvalidValue> {
        if !is_dns_subdomain(&s) {
            return Err(invalid(
                "host",
                &s,
                "node names are lowercase DNS subdomains (letters, digits, '-' and '.')",
            ));
        }
        Ok(NodeName(s))
    }
}

impl TryFrom<String> for EnvKey {
    type Error = InvalidValue;

    fn try_from(s: String) -> Result<Self, InvalidValue> {
        const WHAT: &str = "env key";
        let b = s.as_bytes();
        let shape = !b.is_empty()
            && (b[0].is_ascii_alphabetic() || b[0] == b'_')
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
        if !shape {
            return Err(invalid(WHAT, &s, "must match [A-Za-z_][A-Za-z0-9_]*"));
        }
        let indexed = s
            .strip_prefix("DEV")
            .and_then(|rest| rest.split_once('_'))
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()));
        if matches!(s.as_str(), "ID" | "TYPE" | "NUM_DEVICES") || indexed {
            return Err(invalid(
                WHAT,
                &s,
                "ID, TYPE, NUM_DEVICES and DEV<n>_... are generated by spookd",
            ));
        }
        Ok(EnvKey(s))
    }
}

impl TryFrom<String> for EnvValue {
    type Error = InvalidValue;

    /// What a container runtime takes: no NUL (env strings are C strings), and short enough that
    /// exec does not fail (see [`MAX_ENV_VALUE`]).
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        if s.contains('\0') {
            return Err(invalid(
                "env value",
                &s,
                "contains a NUL character, which no container env can hold",
            ));
        }
        if s.len() > MAX_ENV_VALUE {
            return Err(InvalidValue {
                what: "env value",
                value: format!("{}…", s.chars().take(32).collect::<String>()),
                rule: "is longer than 32 KiB",
            });
        }
        Ok(EnvValue(s))
    }
}

/// Through [`RawHealthCheck`], so serde_yaml places a cross-field error at the healthCheck.
impl<'de> Deserialize<'de> for HealthCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RawHealthCheck::deserialize(d)?
            .check()
            .map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for TcpTarget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const WHAT: &str = "healthCheck.tcp";
        let s = String::deserialize(d)?;
        let addr: SocketAddr = s.parse().map_err(|_| {
            de::Error::custom(invalid(
                WHAT,
                &s,
                "must be IP:PORT, e.g. 10.0.10.215:5025 or [fd00::1]:5025 (an address, not a \
                 name: lookups could stall every probe)",
            ))
        })?;
        if addr.port() == 0 {
            return Err(de::Error::custom(invalid(WHAT, &s, "port 0 is not a port")));
        }
        Ok(TcpTarget(addr))
    }
}

impl<'de> Deserialize<'de> for ProbeDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ProbeDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 500ms, 10s or 1m")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ProbeDuration, E> {
                match parse_duration(s) {
                    Some(d) if d >= HealthCheck::MIN_TIMEOUT => Ok(ProbeDuration(d)),
                    Some(_) => Err(E::custom(invalid("duration", s, "must be at least 10ms"))),
                    None => Err(E::custom(invalid(
                        "duration",
                        s,
                        "write a number and a unit (ms, s, m, h), e.g. 500ms, 10s, 1m30s",
                    ))),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ProbeDuration, E> {
                Err(E::custom(format!(
                    "a duration needs a unit: write {v}s or {v}ms"
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ProbeDuration, E> {
                Err(E::custom(format!(
                    "a duration needs a unit: write {v}s or {v}ms"
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ProbeDuration, E> {
                Err(E::custom(format!("a duration needs a unit: write {v}s")))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u32::deserialize(d)?;
        if n == 0 {
            return Err(de::Error::custom(invalid(
                "threshold",
                "0",
                "must be at least 1",
            )));
        }
        Ok(Threshold(n))
    }
}

/// Deserializes a checked string type from a YAML string only.
macro_rules! deserialize_via_string {
    ($t:ident) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                spend_text(s.len()).map_err(de::Error::custom)?;
                $t::try_from(s).map_err(de::Error::custom)
            }
        }
    };
}
deserialize_via_string!(ResourceName);
deserialize_via_string!(NodeName);
deserialize_via_string!(EnvKey);

/// The scalar's text as written, refused when unquoted and any YAML reader could take it for
/// something other than a string: `0001` is the integer 1 to many, and turning it back into "1"
/// would silently name another device. Decided from the scalar's style, not from its text alone.
impl<'de> Deserialize<'de> for InstanceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = InstanceId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quoted string, e.g. instanceID: \"0001\"")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<InstanceId, E> {
                if s.is_empty() {
                    return Err(E::custom(
                        "instanceID is empty: a device needs an ID of 1 to 63 characters",
                    ));
                }
                match reads_as_non_string(s).filter(|_| style_of(s) == Style::Plain) {
                    Some(kind) => Err(E::custom(format!(
                        "instanceID {s} must be a quoted string (YAML readers may take it for \
                         {kind}): write instanceID: \"{s}\""
                    ))),
                    None => self.visit_str(s),
                }
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<InstanceId, E> {
                spend_text(s.len()).map_err(E::custom)?;
                InstanceId::try_from(s.to_owned()).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// The scalar's text as written, quoted or not (`0x1F` stays `0x1F`, `1.50` stays `1.50`: YAML
/// readers differ on what such values mean, the text does not); an unquoted null (`~`, nothing)
/// is refused, and so are lists and maps.
impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<EnvValue, E> {
                if reads_as_non_string(s) == Some("null") && style_of(s) == Style::Plain {
                    return Err(E::custom(
                        "the env value is null (nothing, ~ or null), expected a string, number or \
                         boolean: write \"\" for an empty value",
                    ));
                }
                self.visit_str(s)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<EnvValue, E> {
                spend_text(s.len()).map_err(E::custom)?;
                EnvValue::try_from(s.to_owned()).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text.as_bytes(), "test.yaml")
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("config must be refused").to_string()
    }

    fn node(name: &str) -> NodeName {
        NodeName::try_from(name.to_owned()).unwrap()
    }

    fn ids(devices: &NodeDevices, resource: &str) -> Vec<String> {
        let r = ResourceName::try_from(resource.to_owned()).unwrap();
        devices[&r].iter().map(|d| d.id.to_string()).collect()
    }

    const SEED: &str = r#"
deviceMapping:
  - hosts: [lab1-host1, lab1-host2]
    devices:
      - resourceName: skao.int/oscilloscope
        instanceID: "0002"
        env: {IP: 10.0.10.216}
      - resourceName: skao.int/oscilloscope
        instanceID: "0001"
        env: {IP: 10.0.10.215, PORT: 5025}
  - hosts: [lab1-host2]
    devices:
      - resourceName: skao.int/signal-generator
        instanceID: "sg-1"
      - resourceName: skao.int/oscilloscope
        instanceID: "0001"
        env: {PORT: 5025, IP: 10.0.10.215}
"#;

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

    #[test]
    fn empty_and_junk_documents_are_refused() {
        let empty = "test.yaml: the config is empty; write deviceMapping: [] to serve nothing";
        assert_eq!(err(""), empty);
        assert_eq!(err("  \n# only a comment\n"), empty);
        assert!(err("deviceMapping: [").contains("test.yaml"));
        assert!(err("\u{0}\u{1}\u{2}garbage").contains("test.yaml"));
        assert!(err("just a string").contains("test.yaml"));
    }

    #[test]
    fn unknown_fields_are_refused_with_position() {
        let e = err("deviceMapping:\n  - hosts: [a]\n    devices: []\n    host: [b]\n");
        assert_eq!(
            e,
            "test.yaml: deviceMapping[0]: unknown field `host`, expected `hosts` or `devices` at \
             line 4 column 5"
        );
        let e = err("deviceMapping:\n  - hosts: [a]\n    devices:\n      - resourceName: a.io/x\n        instanceId: \"1\"\n");
        assert!(e.contains("unknown field `instanceId`"), "{e}");
    }

    fn device_with_id(id: &str) -> String {
        format!("deviceMapping:\n  - hosts: [a]\n    devices:\n      - resourceName: a.io/x\n        instanceID: {id}\n")
    }

    #[test]
    fn unquoted_instance_ids_are_refused_not_converted() {
        let e = err(&device_with_id("0001"));
        assert_eq!(
            e,
            "test.yaml: deviceMapping[0].devices[0].instanceID: instanceID 0001 must be a quoted \
             string (YAML readers may take it for a number): write instanceID: \"0001\" at line 5 \
             column 21"
        );
        let e = err("deviceMapping:\n  - hosts: [a]\n    devices:\n      - {resourceName: a.io/x, instanceID: 007}\n");
        assert!(e.contains("instanceID 007 must be a quoted string"), "{e}");
        assert!(e.ends_with("at line 4 column 44"), "{e}");
        // Quoted, tagged as a string, a block scalar, or not a number: fine.
        for ok in [
            "\"0001\"",
            "'0001'",
            "sg-1",
            "0001a",
            "A1234",
            "x # 0001",
            "!!str 0001",
            "!!str &x 0001",
            "&y !!str 0002",
            "! 0003",
            "0x_",
            "\"\\x30001\"",
            "|-\n          0001",
        ] {
            assert!(
                parse(&device_with_id(ok)).is_ok(),
                "{ok}: {:?}",
                parse(&device_with_id(ok))
            );
        }
        // Whatever a YAML reader takes for a number, boolean or null, wherever it is written.
        for (bad, kind) in [
            ("7", "a number"),
            ("0x1F", "a number"),
            ("0o17", "a number"),
            ("1_000", "a number"),
            ("1.5", "a number"),
            ("1e3", "a number"),
            ("1:30", "a number"),
            ("1:30:00.5", "a number"),
            ("2001-12-14", "a timestamp"),
            (".inf", "a number"),
            ("99999999999999999999", "a number"),
            ("true", "a boolean"),
            ("yes", "a boolean"),
            ("Off", "a boolean"),
            ("&x 0001", "a number"),
            ("\n          0001", "a number"),
        ] {
            let e = err(&device_with_id(bad));
            assert!(
                e.contains(&format!("may take it for {kind})")),
                "{bad:?}: {e}"
            );
            assert!(
                e.contains("deviceMapping[0].devices[0].instanceID"),
                "{bad:?}: {e}"
            );
        }
        // An alias to a plain number is that number, found where the anchor is.
        let e = err("deviceMapping:\n  - hosts: [a]\n    devices:\n      - {resourceName: a.io/x, instanceID: \"1\", env: {A: &n 0001}}\n      - {resourceName: a.io/x, instanceID: *n}\n");
        assert!(e.contains("instanceID 0001 must be a quoted string"), "{e}");
        // The old text scan refused these valid configs.
        let comment = "deviceMapping:\n  - hosts: [a]\n    devices:\n      # was: instanceID: 0001\n      - resourceName: a.io/x\n        instanceID: \"0001\"\n";
        assert!(parse(comment).is_ok());
        let block = "deviceMapping:\n  - hosts: [a]\n    devices:\n      - resourceName: a.io/x\n        instanceID: \"1\"\n        env:\n          NOTE: |\n            instanceID: 42\n";
        assert!(parse(block).is_ok(), "{:?}", parse(block));
    }

    #[test]
    fn instance_ids_a_container_or_metrics_would_choke_on_are_refused() {
        for bad in [
            "\"a\\rb\"",
            "\"a\\nb\"",
            "\"a\\tb\"",
            "\"a\\u0000b\"",
            "\" \"",
            "\" x\"",
            "\"x \"",
            "\"\\u007f\"",
        ] {
            let e = err(&device_with_id(bad));
            assert!(e.contains("invalid instanceID"), "{bad}: {e}");
        }
        assert!(parse(&device_with_id("\"a b\"")).is_ok());
        assert!(parse(&device_with_id("\"é-1\"")).is_ok());
    }

    #[test]
    fn instance_id_length() {
        let ok = "x".repeat(63);
        assert!(InstanceId::try_from(ok).is_ok());
        assert!(InstanceId::try_from("x".repeat(64)).is_err());
        assert!(InstanceId::try_from(String::new()).is_err());
    }

    #[test]
    fn resource_names() {
        for good in [
            "example.com/widget",
            "skao.int/signal-generator",
            "a.io/x_y.z",
            "a/b",
            "nvidia.com/gpu",
        ] {
            assert!(ResourceName::try_from(good.to_owned()).is_ok(), "{good}");
        }
        for bad in [
            "widget",
            "Example.com/widget",
            "example.com/",
            "/widget",
            "example.com/-widget",
            "example.com/widget-",
            "example.com/wid get",
            "example.com/a/b",
            "kubernetes.io/widget",
            "node.kubernetes.io/widget",
            "requests.example.com/widget",
            "exa_mple.com/widget",
            "-a.com/widget",
        ] {
            assert!(ResourceName::try_from(bad.to_owned()).is_err(), "{bad}");
        }
        let long = format!("a.io/{}", "x".repeat(64));
        assert!(ResourceName::try_from(long).is_err());
        let e = err("deviceMapping:\n  - hosts: [a]\n    devices:\n      - resourceName: kubernetes.io/x\n        instanceID: \"1\"\n");
        assert_eq!(
            e,
            "test.yaml: deviceMapping[0].devices[0]: invalid resourceName \"kubernetes.io/x\": the \
             kubernetes.io domain is reserved at line 4 column 9"
        );
    }

    #[test]
    fn env_keys() {
        for good in [
            "IP",
            "_x",
            "port2",
            "DEV",
            "DEVICE_ID",
            "DEVx_1",
            "ID2",
            "DEV_1",
        ] {
            assert!(EnvKey::try_from(good.to_owned()).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1IP",
            "I-P",
            "ID",
            "TYPE",
            "NUM_DEVICES",
            "DEV0_X",
            "DEV12_",
            "É",
        ] {
            assert!(EnvKey::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }

    fn device_with_env(env: &str) -> String {
        format!("deviceMapping:\n  - hosts: [a]\n    devices:\n      - resourceName: a.io/x\n        instanceID: \"1\"\n        env: {env}\n")
    }

    #[test]
    fn env_values() {
        let c = parse(&device_with_env(
            "{S: \"0010\", N: 0010, F: 1.50, B: true, Q: \"1.50\", Y: yes, H: 0x1F, O: 0o17, BIG: 123456789012345678901234567890, E: 1e3}",
        ))
        .unwrap();
        let d = &c.for_node(&node("a"))[&ResourceName::try_from("a.io/x".to_owned()).unwrap()][0];
        let env: Vec<(&str, &str)> = d
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            env,
            // Every value exactly as written: YAML readers differ on what 0x1F or 1.50 mean.
            [
                ("B", "true"),
                ("BIG", "123456789012345678901234567890"),
                ("E", "1e3"),
                ("F", "1.50"),
                ("H", "0x1F"),
                ("N", "0010"),
                ("O", "0o17"),
                ("Q", "1.50"),
                ("S", "0010"),
                ("Y", "yes")
            ]
        );
        for bad in ["~", "null", "", "[1, 2]", "{a: b}"] {
            let e = err(&device_with_env(&format!("{{K: {bad}}}")));
            assert!(
                e.contains("expected a string, number or boolean"),
                "{bad}: {e}"
            );
            assert!(
                e.contains("deviceMapping[0].devices[0].env.K"),
                "{bad}: {e}"
            );
        }
        let e = err(&device_with_env("{K: ~}"));
        assert!(e.contains("the env value is null (nothing, ~ or null), expected a string, number or boolean: write \"\" for an empty value"), "{e}");
        let e = err(&device_with_id("!!null"));
        assert!(
            e.contains("instanceID is empty: a device needs an ID of 1 to 63 characters"),
            "{e}"
        );
        // Quoted, a null word is a string.
        assert!(parse(&device_with_env("{K: \"~\", L: ''}")).is_ok());
    }

    #[test]
    fn env_values_a_container_cannot_take_are_refused() {
        let e = err(&device_with_env("{K: \"a\\0b\"}"));
        assert!(e.contains("contains a NUL character"), "{e}");
        assert!(e.contains("deviceMapping[0].devices[0].env.K"), "{e}");
        let e = err(&device_with_env(&format!(
            "{{K: {}}}",
            "x".repeat(MAX_ENV_VALUE + 1)
        )));
        assert!(e.contains("is longer than 32 KiB"), "{e}");
        assert!(parse(&device_with_env(&format!(
            "{{K: {}}}",
            "x".repeat(MAX_ENV_VALUE)
        )))
        .is_ok());
        let many: Vec<String> = (0..=MAX_ENV_KEYS).map(|i| format!("K{i}: v")).collect();
        let e = err(&device_with_env(&format!("{{{}}}", many.join(", "))));
        assert!(e.contains("more than 128 env keys on one device"), "{e}");
        let big: Vec<String> = (0..3)
            .map(|i| format!("K{i}: {}", "x".repeat(30_000)))
            .collect();
        let e = err(&device_with_env(&format!("{{{}}}", big.join(", "))));
        assert!(e.contains("take more than 65536 bytes"), "{e}");
    }

    #[test]
    fn lists_must_be_written_out() {
        // Only comments after the key is null to YAML, not an empty list: refused.
        let e = err("deviceMapping:\n  # - hosts: [a]\n  #   devices: []\n");
        assert!(
            e.contains(
                "no mappings (nothing, or only comments, after the key): write [] to mean none"
            ),
            "{e}"
        );
        let e = err("deviceMapping: ~\n");
        assert!(e.contains("no mappings"), "{e}");
        let e = err("deviceMapping:\n  - hosts: [a]\n    devices:\n");
        assert!(e.contains("deviceMapping[0].devices: no devices"), "{e}");
        let e = err("deviceMapping:\n  - hosts:\n    devices: []\n");
        assert!(e.contains("deviceMapping[0].hosts: no hosts"), "{e}");
        // Written out, empty is fine.
        assert!(parse("deviceMapping:\n  - hosts: [a]\n    devices: []\n").is_ok());
    }

    #[test]
    fn alias_expansion_is_bounded_while_parsing() {
        // 1,000 hosts and 1,000 devices behind aliases, used by 30,000 mappings: 931 KB that
        // expanded to 1.9 GB before the bound.
        let hosts: Vec<String> = (0..1000).map(|i| format!("h{i}")).collect();
        let devices: Vec<String> = (0..1000)
            .map(|i| format!("{{resourceName: a.io/x, instanceID: \"{i}\"}}"))
            .collect();
        let mut text = format!(
            "deviceMapping:\n- hosts: &H [{}]\n  devices: &D [{}]\n",
            hosts.join(", "),
            devices.join(", ")
        );
        // Within the token bound (a few hundred short lines), the expansion is what stops it.
        let small = text.clone() + &"- {hosts: *H, devices: *D}\n".repeat(200);
        let e = err(&small);
        assert!(e.contains("the config expands to more than"), "{e}");
        // The issue's 931 KB: refused before parsing, by its density alone.
        while text.len() < 931_000 {
            text.push_str("- {hosts: *H, devices: *D}\n");
        }
        let e = err(&text);
        assert!(e.contains("more than 160000 structural tokens"), "{e}");
        // Env maps behind an alias count too.
        let env: Vec<String> = (0..100).map(|i| format!("K{i}: v")).collect();
        let mut text = format!(
            "deviceMapping:\n- hosts: [a]\n  devices:\n  - {{resourceName: a.io/x, instanceID: \"0\", env: &E {{{}}}}}\n",
            env.join(", ")
        );
        for i in 1..3000 {
            text.push_str(&format!(
                "  - {{resourceName: a.io/x, instanceID: \"{i}\", env: *E}}\n"
            ));
        }
        let e = err(&text);
        assert!(e.contains("more than 100000 entries"), "{e}");
        // One long value behind an alias, used over and over.
        let mut text = format!(
            "deviceMapping:\n- hosts: [a]\n  devices:\n  - {{resourceName: a.io/x, instanceID: \"0\", env: {{K: &V {}}}}}\n",
            "v".repeat(30_000)
        );
        for i in 1..400 {
            text.push_str(&format!(
                "  - {{resourceName: a.io/x, instanceID: \"{i}\", env: {{K: *V}}}}\n"
            ));
        }
        let e = err(&text);
        assert!(
            e.contains("more than 8388608 bytes of names, IDs and env"),
            "{e}"
        );
    }

    #[test]
    fn dense_deep_and_wide_texts_are_refused_before_parsing() {
        // 40,000 `[`: seconds of parsing (1 MiB of them: hours). Refused at once.
        let e = err(&format!("deviceMapping: {}", "[".repeat(40_000)));
        assert_eq!(
            e,
            "test.yaml: line 1: the config has more than 64 levels of nesting; no config needs \
             that many (refused before parsing)"
        );
        assert!(
            err(&format!("deviceMapping: {}", "{a: ".repeat(100))).contains("levels of nesting")
        );
        assert!(
            err(&format!("deviceMapping:\n{}x\n", "- ".repeat(100))).contains("levels of nesting")
        );
        assert!(err(&format!("deviceMapping:\n{}- x\n", " ".repeat(300)))
            .contains("columns of indentation"));
        // 1 MiB of tiny list items: ~100 MB of parser events before any other bound applied.
        let hosts = format!(
            "deviceMapping:\n- hosts: [{}]\n  devices: []\n",
            vec!["a"; 200_000].join(",")
        );
        assert!(err(&hosts).contains("more than 160000 structural tokens"));
        // Brackets, commas and colons in quotes and comments are text, not structure.
        let quoted = format!(
            "# {}\ndeviceMapping:\n- hosts: [a]\n  devices:\n  - {{resourceName: a.io/x, instanceID: \"{}\", env: {{K: '{}'}}}}\n",
            "[".repeat(1000),
            "[[[[",
            ",:[{".repeat(8_000)
        );
        assert!(
            parse(&quoted).is_ok(),
            "{:?}",
            parse(&quoted).err().map(|e| e.to_string())
        );
        // The largest config the bench measures (10,000 devices in flow style) passes.
        let mut big = String::from("deviceMapping:\n  - hosts: [n]\n    devices:\n");
        for r in 0..200 {
            for d in 0..50 {
                big.push_str(&format!("      - {{resourceName: bench.example.com/r{r:03}, instanceID: \"d{d:02}\", env: {{IP: 127.0.0.1, PORT: \"{}\"}}}}\n", 9000 + d));
            }
        }
        assert!(
            parse(&big).is_ok(),
            "{:?}",
            parse(&big).err().map(|e| e.to_string())
        );
    }

    #[test]
    fn per_node_and_per_resource_bounds() {
        // 300 resources of one device each on one node: 300 gRPC servers (2,000 took 129 MB).
        let mut text = String::from("deviceMapping:\n- hosts: [n1]\n  devices:\n");
        for i in 0..300 {
            text.push_str(&format!(
                "  - {{resourceName: a.io/r{i}, instanceID: \"1\"}}\n"
            ));
        }
        assert_eq!(
            err(&text),
            "test.yaml: node n1 is given 300 resources, more than 256 (each is a gRPC server on \
             its own socket); merge resources or split the hosts"
        );
        let mut text = String::from("deviceMapping:\n- hosts: [n1]\n  devices:\n");
        for i in 0..10_001 {
            text.push_str(&format!(
                "  - {{resourceName: a.io/x, instanceID: \"{i}\"}}\n"
            ));
        }
        assert!(err(&text).contains("a.io/x has 10001 devices, more than 10000"));
    }

    #[test]
    fn the_collision_check_is_not_quadratic_in_devices_or_keys() {
        // a.io/x with 700 devices sharing a 128-key env, and 250 resources a.io/x-rI: valid, and
        // minutes of work when every pair listed both resources' names (1,400 and 1,000: 144 s).
        let keys: Vec<String> = (0..128).map(|i| format!("K{i}: v")).collect();
        let mut text = format!(
            "deviceMapping:\n- hosts: [n1]\n  devices:\n  - {{resourceName: a.io/x, instanceID: \"0\", env: &E {{{}}}}}\n",
            keys.join(", ")
        );
        // 700 × 128 keys: within the entries bound (the issue's 1,400 is past it now).
        for i in 1..700 {
            text.push_str(&format!(
                "  - {{resourceName: a.io/x, instanceID: \"{i}\", env: *E}}\n"
            ));
        }
        text.push_str("- hosts: [n2]\n  devices:\n");
        for i in 0..250 {
            text.push_str(&format!(
                "  - {{resourceName: a.io/x-r{i}, instanceID: \"1\"}}\n"
            ));
        }
        assert!(
            parse(&text).is_ok(),
            "{:?}",
            parse(&text).err().map(|e| e.to_string())
        );
        // And a collision among them is still found: a.io/x-dev5 would set AIO_X_DEV5_ID.
        let clash = text.replace("a.io/x-r7,", "a.io/x-dev5,");
        assert!(err(&clash)
            .contains("env variable AIO_X_DEV5_ID could be set by both a.io/x and a.io/x-dev5"));
    }

    #[test]
    fn size_and_pair_bounds() {
        let e = err(&format!(
            "deviceMapping: []\n#{}",
            "x".repeat(MAX_CONFIG_BYTES)
        ));
        assert_eq!(
            e,
            "test.yaml: the config is larger than 1048576 bytes (what a ConfigMap can hold)"
        );
        // 2,000 hosts × 600 devices in one mapping: 1.2 million pairs.
        let hosts: Vec<String> = (0..2000).map(|i| format!("h{i}")).collect();
        let devices: Vec<String> = (0..600)
            .map(|i| format!("{{resourceName: a.io/x, instanceID: \"{i}\"}}"))
            .collect();
        let text = format!(
            "deviceMapping:\n- hosts: [{}]\n  devices: [{}]\n",
            hosts.join(", "),
            devices.join(", ")
        );
        assert!(err(&text).contains("more than 1000000 (host, device) pairs"));
    }

    #[test]
    fn duplicate_env_keys_are_refused() {
        let e = err("deviceMapping:\n  - hosts: [a]\n    devices:\n      - resourceName: a.io/x\n        instanceID: \"1\"\n        env: {K: a, K: b}\n");
        assert!(e.contains("env key K is written twice"), "{e}");
        assert!(e.contains("deviceMapping[0].devices[0].env"), "{e}");
    }

    #[test]
    fn conflicting_env_invalidates_the_whole_config() {
        let e = err(r#"
deviceMapping:
  - hosts: [a]
    devices:
      - {resourceName: a.io/x, instanceID: "1", env: {IP: 1.2.3.4}}
  - hosts: [b]
    devices:
      - {resourceName: a.io/x, instanceID: "2"}
      - {resourceName: a.io/x, instanceID: "1", env: {IP: 1.2.3.5}}
"#);
        assert_eq!(
            e,
            "test.yaml: deviceMapping[1]: device a.io/x instanceID \"1\" has different env than \
             in deviceMapping[0]; a device must carry identical env wherever it appears"
        );
        // Missing env against present env is a conflict too.
        let e = err(r#"
deviceMapping:
  - hosts: [a]
    devices:
      - {resourceName: a.io/x, instanceID: "1", env: {IP: 1.2.3.4}}
      - {resourceName: a.io/x, instanceID: "1"}
"#);
        assert!(
            e.contains("deviceMapping[0]: device a.io/x instanceID \"1\""),
            "{e}"
        );
    }

    #[test]
    fn colliding_prefixes_are_refused() {
        let e = err(r#"
deviceMapping:
  - hosts: [a]
    devices:
      - {resourceName: a.io/x-y, instanceID: "1"}
  - hosts: [b]
    devices:
      - {resourceName: a.io/x_y, instanceID: "1"}
"#);
        assert_eq!(
            e,
            "test.yaml: resource names a.io/x-y and a.io/x_y both give the env prefix AIO_X_Y; \
             rename one of them"
        );
    }

    #[test]
    fn env_names_two_resources_could_both_set_are_refused() {
        // a.io/x's key Y_ID gives AIO_X_Y_ID, which is a.io/x-y's own ID.
        assert_eq!(
            err("deviceMapping:\n- hosts: [a]\n  devices:\n  - {resourceName: a.io/x, instanceID: \"1\", env: {Y_ID: v}}\n- hosts: [b]\n  devices:\n  - {resourceName: a.io/x-y, instanceID: \"1\"}\n"),
            "test.yaml: env variable AIO_X_Y_ID could be set by both a.io/x and a.io/x-y (a container \
             given both would get only one value); rename a resource or an env key"
        );
        // example.com/widget's first device is EXAMPLECOM_WIDGET_DEV0_*; so is widget-dev0's
        // un-indexed copy.
        assert_eq!(
            err("deviceMapping:\n- hosts: [a]\n  devices:\n  - {resourceName: example.com/widget-dev0, instanceID: \"1\"}\n  - {resourceName: example.com/widget, instanceID: \"1\"}\n"),
            "test.yaml: env variable EXAMPLECOM_WIDGET_DEV0_ID could be set by both example.com/widget \
             and example.com/widget-dev0 (a container given both would get only one value); \
             rename a resource or an env key"
        );
        // A second device makes DEV1 possible.
        let two = "deviceMapping:\n- hosts: [a]\n  devices:\n  - {resourceName: a.io/x-dev1, instanceID: \"1\"}\n  - {resourceName: a.io/x, instanceID: \"1\"}\n";
        parse(two).unwrap();
        let e = err(&format!(
            "{two}  - {{resourceName: a.io/x, instanceID: \"2\"}}\n"
        ));
        assert!(
            e.contains("AIO_X_DEV1_ID could be set by both a.io/x and a.io/x-dev1"),
            "{e}"
        );
        // Extending a prefix is fine while no name meets.
        parse("deviceMapping:\n- hosts: [a]\n  devices:\n  - {resourceName: a.io/x, instanceID: \"1\", env: {Z: v}}\n  - {resourceName: a.io/x-y, instanceID: \"1\", env: {Y_ID: w}}\n").unwrap();
    }

    #[test]
    fn host_names_are_checked() {
        let e = err("deviceMapping:\n  - hosts: [Lab1]\n    devices: []\n");
        assert_eq!(
            e,
            "test.yaml: deviceMapping[0].hosts: invalid host \"Lab1\": node names are lowercase DNS \
             subdomains (letters, digits, '-' and '.') at line 2 column 12"
        );
    }

    #[test]
    fn missing_required_fields() {
        assert!(err("{}").contains("missing field `deviceMapping`"));
        assert!(err("deviceMapping:\n  - devices: []\n").contains("missing field `hosts`"));
        let e = err("deviceMapping:\n  - hosts: [a]\n    devices:\n      - resourceName: a.io/x\n");
        assert!(e.contains("missing field `instanceID`"), "{e}");
    }

    fn probe(health_check: &str) -> Result<Config, ConfigError> {
        parse(&format!(
            "deviceMapping:\n- hosts: [a]\n  devices:\n  - resourceName: a.io/x\n    instanceID: \"1\"\n    healthCheck: {health_check}\n"
        ))
    }

    fn check_of(c: &Config) -> Option<HealthCheck> {
        c.for_node(&node("a")).pop_first().unwrap().1[0].health_check
    }

    #[test]
    fn health_checks_with_defaults_and_every_field() {
        let c = probe(r#"{tcp: "127.0.0.1:5025"}"#).unwrap();
        assert_eq!(
            check_of(&c),
            Some(HealthCheck {
                tcp: "127.0.0.1:5025".parse().unwrap(),
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                failure_threshold: 3,
                success_threshold: 1,
            })
        );
        let c = probe(r#"{tcp: "[::1]:80", interval: 1m30s, timeout: 250ms, failureThreshold: 5, successThreshold: 2}"#).unwrap();
        assert_eq!(
            check_of(&c),
            Some(HealthCheck {
                tcp: "[::1]:80".parse().unwrap(),
                interval: Duration::from_secs(90),
                timeout: Duration::from_millis(250),
                failure_threshold: 5,
                success_threshold: 2,
            })
        );
        let devices = parse(SEED).unwrap().for_node(&node("lab1-host1"));
        assert!(devices
            .values()
            .flat_map(|d| d.iter())
            .all(|d| d.health_check.is_none()));
    }

    #[test]
    fn bad_health_checks_are_refused_where_they_are() {
        // serde_yaml places field errors at the field, cross-field ones at the device.
        let at = "deviceMapping[0].devices[0]";
        for (text, wanted) in [
            (r#"{}"#, "missing field `tcp`"),
            (r#"{tcp: "lab-scope.local:5025"}"#, "an address, not a name"),
            (r#"{tcp: "127.0.0.1"}"#, "must be IP:PORT"),
            (r#"{tcp: "127.0.0.1:0"}"#, "port 0 is not a port"),
            (r#"{tcp: "127.0.0.1:70000"}"#, "must be IP:PORT"),
            (
                r#"{tcp: "127.0.0.1:1", interval: 10}"#,
                "a duration needs a unit: write 10s or 10ms",
            ),
            (
                r#"{tcp: "127.0.0.1:1", interval: 10 s}"#,
                "write a number and a unit",
            ),
            (
                r#"{tcp: "127.0.0.1:1", timeout: 5ms}"#,
                "must be at least 10ms",
            ),
            (
                r#"{tcp: "127.0.0.1:1", interval: 50ms, timeout: 20ms}"#,
                "interval \"50ms\": must be at least 100ms",
            ),
            (
                r#"{tcp: "127.0.0.1:1", interval: 1s, timeout: 2s}"#,
                "must not be longer than the interval",
            ),
            // Aborted the probe thread (Instant overflow) while `check` called it valid.
            (
                r#"{tcp: "127.0.0.1:1", interval: 5000000000000000h}"#,
                "must be at most 1h",
            ),
            (
                r#"{tcp: "127.0.0.1:1", interval: 61m}"#,
                "must be at most 1h",
            ),
            (
                r#"{tcp: "127.0.0.1:1", failureThreshold: 0}"#,
                "must be at least 1",
            ),
            (
                r#"{tcp: "127.0.0.1:1", successThreshold: -1}"#,
                "expected u32",
            ),
            (r#"{tcp: "127.0.0.1:1", http: "/"}"#, "unknown field `http`"),
        ] {
            let e = probe(text).expect_err(text).to_string();
            assert!(e.contains(wanted), "{text}: {e}");
            assert!(e.contains(at) && e.contains("healthCheck"), "{text}: {e}");
            assert!(e.contains("line 6") || e.contains("line 4"), "{text}: {e}");
        }
    }

    #[test]
    fn a_device_must_have_the_same_health_check_wherever_it_appears() {
        let e = err(r#"
deviceMapping:
  - hosts: [a]
    devices:
      - {resourceName: a.io/x, instanceID: "1", healthCheck: {tcp: "127.0.0.1:1"}}
  - hosts: [b]
    devices:
      - {resourceName: a.io/x, instanceID: "1", healthCheck: {tcp: "127.0.0.1:1", interval: 5s}}
"#);
        assert_eq!(
            e,
            "test.yaml: deviceMapping[1]: device a.io/x instanceID \"1\" has different healthCheck \
             than in deviceMapping[0]; a device must carry identical healthCheck wherever it appears"
        );
        // Written differently, meaning the same: accepted.
        parse(r#"
deviceMapping:
  - hosts: [a]
    devices:
      - {resourceName: a.io/x, instanceID: "1", healthCheck: {tcp: "127.0.0.1:1"}}
  - hosts: [b]
    devices:
      - {resourceName: a.io/x, instanceID: "1", healthCheck: {tcp: "127.0.0.1:1", interval: 10000ms, failureThreshold: 3}}
"#).unwrap();
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
