//! What the state thread asks of the world, as a trait: real in the daemon, recorded in the
//! tests, so the whole protocol runs without a socket.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use super::msg::{self, LeaseCmd, Notice, ProbeSet};
use crate::config::dra::Inventory;
use crate::config::ResourceName;

/// The side effects the state thread needs, so it can be tested without sockets.
pub trait Backend {
    /// A running server; dropping it stops the server and removes its socket.
    type Server;
    /// The error starting a server can give.
    type Error: fmt::Display;
    /// Starts a server for `resource` numbered `server` on a fresh socket; returns it and the
    /// socket's file name (the endpoint the kubelet is told).
    fn start(
        &mut self,
        resource: &ResourceName,
        server: u64,
    ) -> Result<(Self::Server, String), Self::Error>;
    /// Queues registering `endpoint` for `resource`; replaces any earlier job for it.
    fn register(&mut self, resource: &ResourceName, endpoint: &str);
    /// Drops any pending registration of `resource`.
    fn forget(&mut self, resource: &ResourceName);
    /// Whether our socket `endpoint` still exists.
    fn socket_exists(&self, endpoint: &str) -> bool;
    /// An identity of the kubelet's socket (its inode), `None` when absent.
    fn kubelet_socket(&self) -> Option<u64>;
    /// Replaces the set of health probes.
    fn set_probes(&mut self, probes: ProbeSet);
    /// Whether `--exclusive-leases` is on (then [`Backend::leases`] has a taker).
    fn exclusive(&self) -> bool;
    /// Tells the Lease thread.
    fn leases(&mut self, cmd: LeaseCmd);
    /// The resources served now, after the first config and every one that changes them (the
    /// pruner must never remove what is served).
    fn set_served_resources(&mut self, resources: BTreeSet<ResourceName>);
    /// `--dra`: this is a DRA driver: no device-plugin servers; each good config is published.
    fn dra(&self) -> bool {
        false
    }
    /// `--dra`: hands the publisher the inventory of a new good config.
    fn publish(&mut self, _inventory: Arc<Inventory>) {}
    /// `--dra`: the devices this node reaches that its probes find Unhealthy now, for its health
    /// report (which the leader reads to taint them); `None` where it probes none.
    fn report_health(&mut self, _unhealthy: Option<msg::Unhealthy>) {}
    /// Tells the cluster's operators (a Kubernetes Event), best effort: never blocks.
    fn notify(&mut self, _notice: Notice) {}
}
