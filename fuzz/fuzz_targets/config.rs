//! Config parse + validate on arbitrary bytes: never a panic; whatever is accepted renders env
//! whose layout holds (see env.rs target for the invariants).
#![no_main]

use libfuzzer_sys::fuzz_target;

// spookd's config and env modules, compiled here by path (see ../Cargo.toml).
#[path = "../../src/config.rs"]
#[allow(dead_code)]
mod config;
#[path = "../../src/env.rs"]
#[allow(dead_code)]
mod env;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = config::Config::parse(data, "fuzz") else {
        return;
    };
    for node in config.nodes() {
        for (resource, devices) in config.for_node(node) {
            // A node's list is sorted by instanceID and has no duplicates.
            assert!(devices.windows(2).all(|w| w[0].id < w[1].id));
            let all: Vec<&config::Device> = devices.iter().collect();
            let vars = env::render(&resource, &all);
            let expected: usize = all.iter().map(|d| 2 + d.env.len()).sum::<usize>()
                + 1
                + all.first().map_or(0, |d| 2 + d.env.len());
            assert_eq!(vars.len(), expected, "generated names collided");
        }
    }
});
