//! spookd: a Kubernetes device plugin for virtual devices declared in YAML.
//!
//! Threads, each named `spookd-*`, talk over channels to one state thread that owns all state
//! (see [`state`]): config sources ([`source`]), the kubelet registrar and watcher ([`kubelet`]),
//! and one gRPC server per resource ([`plugin`]) on gRPC's completion-queue threads.

pub mod api;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod env;
pub mod exclusive;
pub mod health;
pub mod kubelet;
pub mod latest;
pub mod lease;
pub mod metrics;
pub mod plugin;
pub mod podresources;
pub mod proto;
pub mod prune;
pub mod sim;
pub mod source;
pub mod state;
pub mod worker;

/// The version printed by `--version` and logged at start.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
