//! Talking to the Kubernetes API: one HTTPS client ([`client`]) every API user shares (the
//! ConfigMap source, the Leases, the pruning of stale resources), and one list-then-watch loop
//! with one watch-event parser ([`watch`]) every watcher shares (the ConfigMap source, the Leases).

pub mod client;
pub mod watch;
