//! The `rust-version` Cargo.toml declares is one the locked dependencies build with: no
//! dependency (normal or build, however deep) declares a newer one. Read from `cargo metadata`
//! (offline, from Cargo.lock), whose JSON serde_yaml reads as YAML. Only this platform's
//! dependencies: those the build has already fetched (spookd is Linux-only; glibc targets).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_yaml::Value;

/// `1.85` and `1.85.0` alike, as (major, minor, patch).
fn version(v: &str) -> [u32; 3] {
    let mut out = [0; 3];
    for (slot, n) in out.iter_mut().zip(v.split('.')) {
        *slot = n.parse().unwrap();
    }
    out
}

#[test]
fn the_declared_rust_version_covers_every_locked_dependency() {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args([
            "--filter-platform",
            &format!("{}-unknown-linux-gnu", std::env::consts::ARCH),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let packages: BTreeMap<&str, &Value> = meta["packages"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    let nodes: BTreeMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let root = meta["resolve"]["root"].as_str().unwrap();
    // Everything building spookd needs: normal and build dependencies, not dev ones.
    let (mut seen, mut todo) = (BTreeSet::new(), vec![root]);
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_sequence().unwrap() {
            let needed = dep["dep_kinds"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null() || k["kind"] == "build");
            if needed {
                todo.push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    let ours = version(packages[root]["rust_version"].as_str().unwrap());
    let newer: Vec<String> = seen
        .iter()
        .filter_map(|id| {
            let p = packages[id];
            let theirs = p["rust_version"].as_str()?;
            let (name, v) = (p["name"].as_str()?, p["version"].as_str()?);
            (version(theirs) > ours).then(|| format!("{name} {v} needs {theirs}"))
        })
        .collect();
    assert!(
        newer.is_empty(),
        "Cargo.toml says rust-version {ours:?}, but: {newer:?}"
    );
}
