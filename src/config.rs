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

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::env;

/// Longest device ID the kubelet accepts (`Device.ID`).
const MAX_INSTANCE_ID: usize = 63;

/// An extended resource name the kubelet accepts: `<domain>/<name>`, outside `kubernetes.io`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceName(String);

/// A device's ID within its resource: non-empty, at most 63 characters.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(String);

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
    /// An instanceID written as a plain (unquoted) number-like scalar such as `0001`: serde_yaml
    /// keeps it as the string "0001", but other YAML readers make it the number 1.
    UnquotedInstanceId {
        origin: String,
        line: usize,
        column: usize,
        value: String,
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
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
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
            ConfigError::UnquotedInstanceId {
                origin,
                line,
                column,
                value,
            } => write!(
                f,
                "{origin}: line {line} column {column}: instanceID {value} must be a quoted \
                 string (YAML readers may take it for a number): write instanceID: \"{value}\""
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
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            ConfigError::Parse { source, .. } => Some(source),
            ConfigError::Empty { .. }
            | ConfigError::MissingKey { .. }
            | ConfigError::UnquotedInstanceId { .. }
            | ConfigError::ConflictingDevice { .. }
            | ConfigError::PrefixCollision { .. }
            | ConfigError::EnvNameCollision { .. } => None,
        }
    }
}

/// The YAML as written. Leaves are checked types; cross-entry rules wait for `Config::try_from`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawConfig {
    device_mapping: Vec<RawMapping>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    hosts: Vec<NodeName>,
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
        let blank = |line: &str| line.trim().is_empty() || line.trim_start().starts_with('#');
        // Borrowed (no copy) when the text is UTF-8, as any text serde_yaml accepts is.
        let lossy = String::from_utf8_lossy(text);
        if lossy.lines().all(blank) {
            return Err(ConfigError::Empty {
                origin: origin.to_owned(),
            });
        }
        let raw: RawConfig = serde_yaml::from_slice(text).map_err(|source| ConfigError::Parse {
            origin: origin.to_owned(),
            source,
        })?;
        let text = lossy;
        if let Some((line, column, value)) = unquoted_numeric_instance_id(&text) {
            return Err(ConfigError::UnquotedInstanceId {
                origin: origin.to_owned(),
                line,
                column,
                value,
            });
        }
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
        for (mapping, raw_mapping) in raw.device_mapping.into_iter().enumerate() {
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
                    let prefix = env::prefix(&resource);
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
        check_env_names(&devices, &prefixes, origin)?;
        for served in hosts.values_mut() {
            for i in served.iter_mut() {
                *i = rank[*i];
            }
            served.sort_unstable();
            served.dedup();
            served.shrink_to_fit();
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
/// prefix extends another's by `_…` can: those pairs (rare) get their full name sets compared.
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
    let mut shape: BTreeMap<&ResourceName, (usize, BTreeSet<&str>)> = BTreeMap::new();
    for (resource, _, spec) in devices {
        let (count, keys) = shape.entry(resource).or_default();
        *count += 1;
        keys.extend(spec.env.iter().map(|(k, _)| k.as_str()));
    }
    let names = |resource: &ResourceName| -> BTreeSet<String> {
        let Some((count, keys)) = shape.get(resource) else {
            return BTreeSet::new();
        };
        let keys: Vec<&str> = keys.iter().copied().collect();
        env::possible_names(resource, *count, &keys)
            .into_iter()
            .collect()
    };
    for (first, second) in pairs {
        if let Some(name) = names(second).intersection(&names(first)).next() {
            return Err(ConfigError::EnvNameCollision {
                origin: origin.to_owned(),
                first: first.clone(),
                second: second.clone(),
                name: name.clone(),
            });
        }
    }
    Ok(())
}

/// Parses a duration as the config and the command line take it: `250ms`, `2s`, `1m`, `1h`, `1.5s`, `1m30s`: one or more number-unit pairs.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(split);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds_per_unit = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
            return None;
        }
        let n: f64 = number.parse().ok()?;
        total = total.checked_add(Duration::try_from_secs_f64(n * seconds_per_unit).ok()?)?;
        rest = tail;
    }
    Some(total)
}

/// Finds an `instanceID` whose value is a plain scalar of digits (and `_`), such as `0001`.
///
/// serde_yaml does not tell a visitor whether a scalar was quoted, and it keeps `0001` as the
/// string "0001" while other YAML readers take it for the number 1 (or octal). Numbers it does
/// read as numbers (`7`) are refused by [`InstanceId`]'s visitor; this catches the rest, in the
/// block (`instanceID: 0001`) and flow (`{instanceID: 0001}`) styles. Returns 1-based line and
/// column of the value.
fn unquoted_numeric_instance_id(text: &str) -> Option<(usize, usize, String)> {
    const KEY: &str = "instanceID";
    for (n, line) in text.lines().enumerate() {
        let mut from = 0;
        while let Some(at) = line[from..].find(KEY) {
            let start = from + at;
            from = start + KEY.len();
            let before = line[..start].chars().next_back();
            if !matches!(
                before,
                None | Some(' ' | '\t' | '{' | ',' | '-' | '"' | '\'')
            ) {
                continue;
            }
            let rest = line[from..].trim_start_matches(['"', '\'']);
            let Some(value) = rest.strip_prefix(':') else {
                continue;
            };
            if !value.is_empty() && !value.starts_with([' ', '\t']) {
                continue;
            }
            let token_start = value.len() - value.trim_start().len();
            let token: String = value[token_start..]
                .chars()
                .take_while(|c| !matches!(c, ',' | '}' | ']' | '#' | ' ' | '\t'))
                .collect();
            let numeric = token.bytes().any(|b| b.is_ascii_digit())
                && token.bytes().all(|b| b.is_ascii_digit() || b == b'_');
            if numeric {
                let column = line.len() - value.len() + token_start + 1;
                return Some((n + 1, column, token));
            }
        }
    }
    None
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
            while let Some((k, v)) = map.next_entry::<EnvKey, EnvValue>()? {
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
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain: dot-separated labels, ≤ 253 in all.
fn is_dns_subdomain(s: &str) -> bool {
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
        Ok(ResourceName(s))
    }
}

impl TryFrom<String> for InstanceId {
    type Error = InvalidValue;

    fn try_from(s: String) -> Result<Self, InvalidValue> {
        if s.is_empty() || s.chars().count() > MAX_INSTANCE_ID {
            return Err(invalid("instanceID", &s, "must be 1 to 63 characters"));
        }
        Ok(InstanceId(s))
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

    fn try_from(s: String) -> Result<Self, InvalidValue> {
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
                $t::try_from(s).map_err(de::Error::custom)
            }
        }
    };
}
deserialize_via_string!(ResourceName);
deserialize_via_string!(NodeName);
deserialize_via_string!(EnvKey);

/// Accepts only a YAML string: `0001` unquoted is the integer 1, and turning it back into "1"
/// would silently name another device.
impl<'de> Deserialize<'de> for InstanceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = InstanceId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quoted string, e.g. instanceID: \"0001\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<InstanceId, E> {
                InstanceId::try_from(s.to_owned()).map_err(E::custom)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<InstanceId, E> {
                Err(E::custom(format!(
                    "instanceID must be a string, found the boolean {v}; quote it"
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<InstanceId, E> {
                Err(not_a_string(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<InstanceId, E> {
                Err(not_a_string(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<InstanceId, E> {
                Err(not_a_string(v))
            }
        }
        fn not_a_string<E: de::Error>(v: impl fmt::Display) -> E {
            E::custom(format!(
                "instanceID must be a string, found the number {v}; quote it to keep it as \
                 written, e.g. instanceID: \"0001\""
            ))
        }
        d.deserialize_any(V)
    }
}

/// Strings verbatim; numbers and booleans as serde_yaml reads them (`1.50` becomes `1.5`: quote
/// a value to keep it verbatim); null, lists and maps are refused.
impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<EnvValue, E> {
                Ok(EnvValue(s.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
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

    #[test]
    fn unquoted_instance_ids_are_refused_not_converted() {
        let e = err("deviceMapping:\n  - hosts: [a]\n    devices:\n      - resourceName: a.io/x\n        instanceID: 0001\n");
        assert_eq!(
            e,
            "test.yaml: line 5 column 21: instanceID 0001 must be a quoted string (YAML readers \
             may take it for a number): write instanceID: \"0001\""
        );
        let e = err("deviceMapping:\n  - hosts: [a]\n    devices:\n      - {resourceName: a.io/x, instanceID: 007}\n");
        assert!(
            e.starts_with("test.yaml: line 4 column 44: instanceID 007 must be"),
            "{e}"
        );
        // Quoted, or not a number: fine.
        for ok in ["\"0001\"", "'0001'", "sg-1", "0001a", "x # 0001"] {
            let text = format!("deviceMapping:\n  - hosts: [a]\n    devices:\n      - resourceName: a.io/x\n        instanceID: {ok}\n");
            assert!(parse(&text).is_ok(), "{ok}");
        }
        let e = err("deviceMapping:\n  - hosts: [a]\n    devices:\n      - resourceName: a.io/x\n        instanceID: 7\n");
        assert!(e.contains("found the number 7; quote it"), "{e}");
        assert!(e.contains("deviceMapping[0].devices[0]"), "{e}");
        assert!(e.contains("line 5 column 21"), "{e}");
        let e = err("deviceMapping:\n  - hosts: [a]\n    devices:\n      - resourceName: a.io/x\n        instanceID: true\n");
        assert!(e.contains("found the boolean true"), "{e}");
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

    #[test]
    fn env_values() {
        let c = parse(
            "deviceMapping:\n  - hosts: [a]\n    devices:\n      - resourceName: a.io/x\n        instanceID: \"1\"\n        env: {S: \"0010\", N: 0010, F: 1.50, B: true, Q: \"1.50\", Y: yes}\n",
        )
        .unwrap();
        let d = &c.for_node(&node("a"))[&ResourceName::try_from("a.io/x".to_owned()).unwrap()][0];
        let env: Vec<(&str, &str)> = d
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            env,
            // serde_yaml keeps 0010 (leading zero) as written but reads 1.50 as the number 1.5.
            [
                ("B", "true"),
                ("F", "1.5"),
                ("N", "0010"),
                ("Q", "1.50"),
                ("S", "0010"),
                ("Y", "yes")
            ]
        );
        for bad in ["~", "[1, 2]", "{a: b}"] {
            let e = err(&format!(
                "deviceMapping:\n  - hosts: [a]\n    devices:\n      - resourceName: a.io/x\n        instanceID: \"1\"\n        env: {{K: {bad}}}\n"
            ));
            assert!(
                e.contains("expected a string, number or boolean"),
                "{bad}: {e}"
            );
            assert!(
                e.contains("deviceMapping[0].devices[0].env.K"),
                "{bad}: {e}"
            );
        }
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
            let mut text = String::from("deviceMapping:\n");
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
