//! The config-to-Allocate path on arbitrary bytes: parse + validate, then for every node and
//! resource of whatever is accepted, Allocate as the kubelet could ask it (every device to one
//! container, split between two, an unknown ID, one ID twice). Never a panic, the env layout holds
//! (see env.rs target for the invariants), and scripts/fuzz runs it under a memory limit
//! (`-rss_limit_mb`), so an input that makes the parse or an answer balloon fails the run.
#![no_main]

use libfuzzer_sys::fuzz_target;

// spookd's config model (with its env layout), compiled here by path (see ../Cargo.toml).
#[path = "../../src/config/mod.rs"]
// Re-exports the fuzzer does not name are the library's, not dead weight here.
#[allow(dead_code, unused_imports)]
mod config;
// The config's errors cut what they quote with it.
#[path = "../../src/text.rs"]
#[allow(dead_code)]
mod text;
// Probe durations are read with it.
#[path = "../../src/time.rs"]
#[allow(dead_code)]
mod time;
// DRA device names are derived with it.
#[path = "../../src/hash.rs"]
#[allow(dead_code)]
mod hash;

use config::layout;

fuzz_target!(|data: &[u8]| {
    // A config the parse cuts into pieces reads as the whole does.
    assert!(config::pieces_agree(data));
    let config = match config::Config::parse(data, "fuzz") {
        Ok(config) => config,
        // What the log, the Event and `spookd check` show: bounded whatever the input quotes.
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.len() <= text::MAX_MESSAGE, "{} bytes", shown.len());
            return;
        }
    };
    for node in config.nodes() {
        for (resource, devices) in config.for_node(node) {
            // A node's list is sorted by instanceID and has no duplicates.
            assert!(devices.windows(2).all(|w| w[0].id < w[1].id));
            let all: Vec<&config::Device> = devices.iter().collect();
            let vars = layout::render(&resource, &all);
            let expected: usize = all.iter().map(|d| 2 + d.env.len()).sum::<usize>()
                + 1
                + all.first().map_or(0, |d| 2 + d.env.len());
            assert_eq!(vars.len(), expected, "generated names collided");
            let ids: Vec<String> = devices.iter().map(|d| d.id.to_string()).collect();
            let whole = layout::allocate(&resource, &devices, &[ids.clone()]);
            if let Ok(envs) = &whole {
                assert_eq!(envs.len(), 1);
                assert_eq!(envs[0], vars);
            }
            let (a, b) = ids.split_at(ids.len() / 2);
            if !a.is_empty() {
                let split = layout::allocate(&resource, &devices, &[a.to_vec(), b.to_vec()]);
                if !b.is_empty() && whole.is_ok() {
                    assert!(split.is_ok(), "{split:?}");
                }
                let twice = layout::allocate(&resource, &devices, &[a.to_vec(), a.to_vec()]);
                assert!(matches!(twice, Err(layout::Refusal::DuplicateDevice(_))));
            }
            let unknown = layout::allocate(&resource, &devices, &[vec!["\u{0}unknown".to_owned()]]);
            assert!(matches!(unknown, Err(layout::Refusal::UnknownDevice(_))));
            assert!(matches!(layout::allocate(&resource, &devices, &[]), Err(layout::Refusal::NoContainers)));
        }
    }
});
