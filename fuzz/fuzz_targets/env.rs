//! Env rendering from arbitrary resource names, IDs and env keys/values: whenever the pieces pass
//! their checks, the layout invariants hold.
#![no_main]

use std::collections::BTreeMap;

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

use config::{Device, EnvKey, EnvValue, InstanceId, ResourceName};

fuzz_target!(|data: &[u8]| {
    // Fields separated by 0xff: resource, then per device "id 0xfe key=value 0xfe key=value …".
    let mut parts = data.split(|b| *b == 0xff);
    let Some(resource) = parts.next() else { return };
    let Ok(resource) = ResourceName::try_from(String::from_utf8_lossy(resource).into_owned()) else {
        return;
    };
    let mut devices: Vec<Device> = Vec::new();
    for part in parts.take(16) {
        let mut fields = part.split(|b| *b == 0xfe);
        let id = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
        let Ok(id) = InstanceId::try_from(id) else { continue };
        if devices.iter().any(|d| d.id == id) {
            continue;
        }
        let mut vars = BTreeMap::new();
        for kv in fields.take(8) {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=').unwrap_or((&kv, ""));
            if let (Ok(k), Ok(v)) = (EnvKey::try_from(k.to_owned()), EnvValue::try_from(v.to_owned())) {
                vars.insert(k, v);
            }
        }
        devices.push(Device { id, env: vars.into(), health_check: None });
    }
    if devices.is_empty() {
        return;
    }
    let refs: Vec<&Device> = devices.iter().collect();
    let out = layout::render(&resource, &refs);
    let p = layout::prefix(&resource);
    let mut sorted = refs.clone();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    // Every generated name is distinct: the count is exact.
    let expected: usize =
        sorted.iter().map(|d| 2 + d.env.len()).sum::<usize>() + 1 + 2 + sorted[0].env.len();
    assert_eq!(out.len(), expected);
    assert_eq!(out[&format!("{p}_NUM_DEVICES")], sorted.len().to_string());
    for (n, d) in sorted.iter().enumerate() {
        assert_eq!(out[&format!("{p}_DEV{n}_ID")], d.id.as_str());
        assert_eq!(out[&format!("{p}_DEV{n}_TYPE")], resource.as_str());
        for (k, v) in &d.env {
            assert_eq!(out[&format!("{p}_DEV{n}_{k}")], v.as_str());
        }
    }
    assert_eq!(out[&format!("{p}_ID")], sorted[0].id.as_str());
    assert_eq!(out[&format!("{p}_TYPE")], resource.as_str());
    // The prefix is upper-case [A-Z0-9_] only.
    assert!(p.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'));
});
