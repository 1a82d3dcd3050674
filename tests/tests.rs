//! Integration tests: the real spookd binary, real gRPC servers on real Unix sockets in temp dirs,
//! driven by the kubelet stand-in (`src/sim/`, compiled in by path). Every wait is bounded.

// Test helpers panic on purpose: that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod apiserver;
// The kubelet stand-in: not part of spookd's library, compiled into the tests by path.
#[path = "../src/sim/mod.rs"]
#[allow(dead_code)]
mod sim;
mod util;

mod api;
mod chart;
mod cli;
mod daemon;
mod docs;
mod dra;
mod events;
mod exclusive;
mod health;
mod hostile;
mod layers;
mod lease_model;
mod leases;
mod manifests;
mod metrics;
mod msrv;
mod podresources;
mod prune;
mod soak;
mod status;
