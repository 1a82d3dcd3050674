//! Usage errors: each names the flag or environment variable its value came from.

use std::ffi::OsString;
use std::fmt;

use crate::config::InvalidValue;
use crate::dra;

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
