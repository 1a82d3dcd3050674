//! Why a config, or one value of it, was refused: each error says where and what to write instead,
//! cut to what a log line or an Event may carry.

use std::fmt;
use std::path::PathBuf;

use super::{InstanceId, NodeName, ResourceName};
use crate::text::Cut;

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
    /// The config is larger than [`MAX_CONFIG_BYTES`](super::MAX_CONFIG_BYTES).
    TooLarge { origin: String, limit: usize },
    /// The config maps more (host, device) pairs than [`MAX_ASSIGNMENTS`](super::MAX_ASSIGNMENTS).
    TooManyAssignments { origin: String, limit: usize },
    /// The text is denser or deeper than a config needs ([`MAX_TOKENS`](super::MAX_TOKENS), [`MAX_DEPTH`](super::MAX_DEPTH),
    /// [`MAX_INDENT`](super::MAX_INDENT)); refused before parsing.
    TooComplex {
        origin: String,
        line: usize,
        what: &'static str,
        limit: usize,
    },
    /// A node is given more resources than [`MAX_NODE_RESOURCES`](super::MAX_NODE_RESOURCES).
    TooManyResources {
        origin: String,
        node: NodeName,
        count: usize,
        limit: usize,
    },
    /// A resource has more devices than [`MAX_RESOURCE_DEVICES`](super::MAX_RESOURCE_DEVICES).
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
    /// `--dra`: two devices (or two resources) derive the same DRA name (see [`dra`](super::dra)).
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

/// Why a single value was refused. Becomes a serde error, which serde_yaml places in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidValue {
    pub(super) what: &'static str,
    pub(super) value: String,
    pub(super) rule: &'static str,
}

impl fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} {:?}: {}", self.what, self.value, self.rule)
    }
}

impl std::error::Error for InvalidValue {}

pub(super) fn invalid(what: &'static str, value: &str, rule: &'static str) -> InvalidValue {
    InvalidValue {
        what,
        value: value.to_owned(),
        rule,
    }
}
