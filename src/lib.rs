//! spookd: a Kubernetes device plugin for virtual devices declared in YAML.
//!
//! Rooms, named for what they talk to (docs/architecture.md has the map and the threads):
//! - [`daemon`] starts every thread and stops them; [`cli`] is the flag table; [`check`] the dry run;
//!   [`status`] asks a running daemon what it serves.
//! - [`config`] is the config model: pure, no I/O, parsed once at the edge into checked types.
//! - [`state`] owns everything served; [`state::msg`] is the vocabulary every thread speaks.
//! - [`kubelet`] talks to the kubelet: the device-plugin service, the registrar, the watcher of
//!   its directory and its podresources API.
//! - [`kube`] talks to the Kubernetes API: one HTTPS client and one list-then-watch loop.
//! - [`source`] reads configs (a file, or a ConfigMap through [`kube`]).
//! - One room per optional feature: `health` probes, [`leases`] for exclusive access,
//!   `prune` for stale resources, `metrics` and [`events`] for operators, [`dra`] for the DRA driver mode (it
//!   builds on the Lease protocol, so it sits one layer above the other features).
//! - Small shared pieces: [`clock`], `worker`, [`latest`], `random`, [`text`], [`time`] (durations
//!   and timestamps as text), [`hash`] (names every node derives alike), `backoff`.
//!
//! Imports go down this list, never up or sideways between features (a test checks it):
//! shared pieces, then config, then state, then kube and kubelet, then the features and
//! sources, then dra, then cli, check and daemon. The kubelet stand-in (`src/sim/`) is not part of the
//! library: kubelet-sim and the tests compile it by path.

pub(crate) mod backoff;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod dra;
pub mod events;
pub mod hash;
pub(crate) mod health;
pub mod kube;
pub mod kubelet;
pub mod latest;
pub mod leases;
pub(crate) mod metrics;
pub(crate) mod prune;
pub(crate) mod random;
pub mod source;
pub mod state;
pub mod status;
pub mod text;
pub mod time;
pub(crate) mod worker;

/// The version printed by `--version` and logged at start.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
