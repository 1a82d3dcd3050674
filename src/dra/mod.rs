//! `--dra`: spookd as a Kubernetes DRA driver (`resource.k8s.io/v1`, Kubernetes ≥ 1.34) instead of
//! device-plugin servers, from the same config.
//!
//! Every node runs both halves; what crosses to the state thread is in [`crate::state::msg`]:
//! - [`publish`]: the node holding the driver's leader Lease publishes each device once, in
//!   ResourceSlices whose node selectors name the hosts that reach it ([`objects`]), and one
//!   DeviceClass per resource. The scheduler then gives a device to one claim at a time across
//!   the cluster.
//! - [`plugin`]: the kubelet plugin. The kubelet finds its registration socket, and calls
//!   NodePrepareResources for the claims of a pod about to start here: their env (the seed's
//!   layout) goes into a CDI spec per claim ([`cdi`]), which the container runtime applies.
//!
//! - [`node`]: each node checks that no device plugin advertises the names it serves by DRA
//!   there (the device plugin would win).
//!
//! [`api`] holds its API calls (over the one HTTPS client), [`proto`] the kubelet's protos.

pub mod api;
pub mod cdi;
pub mod leader;
pub mod node;
pub mod objects;
pub mod plugin;
pub mod proto;
pub mod publish;
pub mod reconcile;
pub mod report;
#[cfg(test)]
mod test_support;

use std::path::PathBuf;
use std::time::Duration;

use crate::kube::client::Connection;

/// The driver name when `--dra-driver` is not given.
pub const DEFAULT_DRIVER: &str = "spookd.dev";
pub const DEFAULT_PLUGINS_DIR: &str = "/var/lib/kubelet/plugins";
pub const DEFAULT_REGISTRY_DIR: &str = "/var/lib/kubelet/plugins_registry";
pub const DEFAULT_CDI_DIR: &str = "/var/run/cdi";
/// Longest driver name (`DriverNameMaxLength`).
pub const MAX_DRIVER: usize = 63;

/// Options of the DRA mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DraOptions {
    /// A DNS subdomain of at most 63 characters.
    pub driver: String,
    pub plugins_dir: PathBuf,
    pub registry_dir: PathBuf,
    pub cdi_dir: PathBuf,
    pub conn: Connection,
    /// Where the leader Lease lives; `None`: the ServiceAccount's namespace.
    pub lease_namespace: Option<String>,
    pub lease_duration: Duration,
}
