//! The command line: flags, their environment variables and defaults, parsed into typed options.
//!
//! Laid out as ripgrep lays out its flags: `defs` is the one table of flags, `help` writes
//! `--help` from it, `parse` reads the arguments and each flag's winning value, `modes` turns
//! those into the daemon's options, feature by feature.

mod defs;
mod error;
mod help;
mod modes;
mod parse;

use std::path::PathBuf;
use std::time::Duration;

use crate::config::NodeName;
use crate::dra::DraOptions;
use crate::events::EventOptions;
use crate::leases::LeaseOptions;
use crate::prune::PruneOptions;
use crate::source::configmap::ApiOptions;
use crate::status::StatusOptions;

pub use defs::{
    DEFAULT_CA_FILE, DEFAULT_CONFIG, DEFAULT_CONFIGMAP_KEY, DEFAULT_DEVICE_PLUGIN_DIR,
    DEFAULT_LEASE_DURATION, DEFAULT_POLL_INTERVAL, DEFAULT_PRUNE_AFTER, DEFAULT_TOKEN_FILE,
    DEFAULT_WATCH_TIMEOUT,
};
pub use error::CliError;
pub use help::help;
pub use parse::parse;

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

/// The host name as the kernel has it.
pub fn hostname() -> std::io::Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
}

/// What the tests of each part parse with.
#[cfg(test)]
mod test_support {
    use super::*;
    use std::ffi::OsString;

    pub fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Command, CliError> {
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
    pub fn opts(args: &[&str], env: &[(&str, &str)]) -> RunOptions {
        match run(args, env).unwrap() {
            Command::Run(o) => *o,
            other => panic!("expected Run, got {other:?}"),
        }
    }
    pub fn node(n: &str) -> NodeName {
        NodeName::try_from(n.to_owned()).unwrap()
    }
}
