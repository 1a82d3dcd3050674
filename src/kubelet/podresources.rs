//! The kubelet's podresources API (v1 `List`): which device IDs are assigned to containers on
//! this node. The device-plugin API has no "deallocate"; this is how a plugin learns that a device
//! was released (the `spookd-lease` thread releases a Lease once no container has its device).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use grpcio::{CallOption, ChannelBuilder, Environment};

use crate::kubelet::proto::podresources::PodResourcesListerClient;

/// Where the kubelet serves it with its default `--root-dir` (unlike the device-plugins dir, it
/// follows the root dir: a kubelet with another root needs `--pod-resources-socket`).
pub const DEFAULT_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";

/// Longest a List may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Resource name → the device IDs assigned to any container on the node.
pub type Assigned = BTreeMap<String, BTreeSet<String>>;

/// Why the assignments could not be read: nothing may be released then.
#[derive(Debug)]
pub struct PodResourcesError {
    pub path: PathBuf,
    pub source: grpcio::Error,
}

impl fmt::Display for PodResourcesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot list pod resources at {}: {}",
            self.path.display(),
            self.source
        )
    }
}

impl std::error::Error for PodResourcesError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The kubelet's whole List answer. A fresh channel each time: the kubelet restarts, and a
/// reused channel would wait out gRPC's reconnect backoff.
fn list(
    grpc: &Arc<Environment>,
    path: &Path,
) -> Result<crate::kubelet::proto::podresources::ListPodResourcesResponse, PodResourcesError> {
    let channel = ChannelBuilder::new(grpc.clone()).connect(&format!("unix:{}", path.display()));
    let client = PodResourcesListerClient::new(channel);
    client
        .list(CallOption::default().timeout(CALL_TIMEOUT))
        .map_err(|source| PodResourcesError {
            path: path.to_owned(),
            source,
        })
}

/// Reads every device assigned on the node.
pub fn assigned(grpc: &Arc<Environment>, path: &Path) -> Result<Assigned, PodResourcesError> {
    let response = list(grpc, path)?;
    let mut out = Assigned::new();
    for pod in &response.pod_resources {
        for container in &pod.containers {
            for devices in &container.devices {
                out.entry(devices.resource_name.clone())
                    .or_default()
                    .extend(devices.device_ids.iter().cloned());
            }
        }
    }
    Ok(out)
}

/// (resource, device ID) → the containers holding it, as `namespace/pod/container`.
pub type Holders = BTreeMap<(String, String), Vec<String>>;

/// Which container holds each device assigned on the node (`spookd status`).
pub fn holders(grpc: &Arc<Environment>, path: &Path) -> Result<Holders, PodResourcesError> {
    let response = list(grpc, path)?;
    let mut out = Holders::new();
    for pod in &response.pod_resources {
        for container in &pod.containers {
            let who = format!("{}/{}/{}", pod.namespace, pod.name, container.name);
            for devices in &container.devices {
                for id in &devices.device_ids {
                    out.entry((devices.resource_name.clone(), id.clone()))
                        .or_default()
                        .push(who.clone());
                }
            }
        }
    }
    Ok(out)
}
