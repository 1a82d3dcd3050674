//! Reading one Node: what the pruner and the DRA mode need of it (an annotation, the capacity and
//! allocatable the kubelet reports).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::kube::client::{ApiError, Client, REQUEST_TIMEOUT};

/// Largest Node object read (a Node with many images is a few hundred KiB).
const MAX_NODE: u64 = 8 << 20;

/// The parts of a Node spookd reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    /// The value of the annotation asked for, if the Node has it.
    pub annotation: Option<String>,
    pub capacity: BTreeMap<String, String>,
    pub allocatable: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct NodeJson {
    #[serde(default)]
    metadata: NodeMeta,
    #[serde(default)]
    status: NodeStatus,
}

#[derive(Default, Deserialize)]
struct NodeMeta {
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Default, Deserialize)]
struct NodeStatus {
    #[serde(default)]
    capacity: BTreeMap<String, String>,
    #[serde(default)]
    allocatable: BTreeMap<String, String>,
}

/// The Node at `url` (`…/api/v1/nodes/<name>`), with its `annotation`.
pub fn read(client: &Client, url: &str, annotation: &str) -> Result<NodeView, ApiError> {
    let response = client.get(url, REQUEST_TIMEOUT)?;
    let body = Client::read_body(url, response, MAX_NODE)?;
    let mut node: NodeJson = serde_yaml::from_slice(&body).map_err(|source| ApiError::Decode {
        url: url.to_owned(),
        source,
    })?;
    Ok(NodeView {
        annotation: node.metadata.annotations.remove(annotation),
        capacity: node.status.capacity,
        allocatable: node.status.allocatable,
    })
}

/// A quantity of zero as the kubelet writes it (for a resource whose plugin went away).
pub fn is_zero(quantity: &str) -> bool {
    quantity == "0"
}
