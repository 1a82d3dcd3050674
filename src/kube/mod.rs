//! Talking to the Kubernetes API: one HTTPS client ([`client`]) every API user shares (the
//! ConfigMap source, the Leases, the pruning of stale resources).

pub mod client;
