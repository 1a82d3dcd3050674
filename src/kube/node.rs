//! Reading one Node: what the pruner and the DRA mode need of it (an annotation, the capacity and
//! allocatable the kubelet reports).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::NodeName;
use crate::kube::client::{ApiError, Client, Connection, REQUEST_TIMEOUT};

/// Largest Node object read: etcd's default request limit (1.5 MiB), which no stored Node
/// passes. The YAML parser holds every token of a body at once, so a larger bound would cost
/// several times its size.
const MAX_NODE: u64 = 3 << 19;

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

/// Node `node`'s URL.
pub fn url(conn: &Connection, node: &NodeName) -> String {
    format!("{}/api/v1/nodes/{node}", conn.server)
}

/// The Node at `url` ([`url`]), with its `annotation`.
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

/// Whether a quantity is above zero, however written (`2`, `1k`, `0.5`; `0m`, `0.0`, `00` and
/// anything not a number are not).
pub fn is_positive(quantity: &str) -> bool {
    let mut digits = quantity
        .strip_prefix('+')
        .unwrap_or(quantity)
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.');
    digits.any(|b| b != b'0' && b != b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_above_zero() {
        for q in ["1", "2", "1k", "0.5", "+3", "10Mi", "1e3"] {
            assert!(is_positive(q), "{q}");
        }
        for q in ["0", "0m", "0.0", "00", "0Ki", "-1", "", "x", "0e3"] {
            assert!(!is_positive(q), "{q}");
        }
    }
}
