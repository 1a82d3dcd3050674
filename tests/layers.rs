//! The library's rooms import one another only downwards, in the order lib.rs documents: no
//! import circles, no feature reaching into another feature or up into the daemon.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Top-level modules by layer, lowest first. A module may import only from lower layers (and
/// from itself).
const LAYERS: &[&[&str]] = &[
    &[
        "clock", "worker", "latest", "random", "text", "time", "hash",
    ],
    &["backoff"],
    &["config"],
    &["state"],
    &["kube", "kubelet"],
    &["source", "health", "leases", "prune", "metrics"],
    &["dra", "events", "status"],
    &["cli", "check"],
    &["daemon"],
];

/// Every `crate::<module>` a top-level module's files name, by top-level module.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    fn walk(dir: &Path, top: Option<&str>, out: &mut BTreeMap<String, BTreeSet<String>>) {
        for entry in fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                // `src/bin` holds binaries, and `src/sim` the kubelet stand-in (compiled by path
                // elsewhere): not library modules.
                if top.is_none() && matches!(name.as_str(), "bin" | "sim") {
                    continue;
                }
                walk(&path, Some(top.unwrap_or(&name)), out);
                continue;
            }
            let Some(stem) = name.strip_suffix(".rs") else {
                continue;
            };
            // The crate root and the binary.
            if top.is_none() && matches!(stem, "lib" | "main") {
                continue;
            }
            let module = top.unwrap_or(stem).to_owned();
            let text = fs::read_to_string(&path).unwrap();
            let used = out.entry(module.clone()).or_default();
            // Comments out, lines joined: a `use crate::{…}` group may span lines.
            let code: String = text
                .lines()
                .map(|l| l.split("//").next().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n");
            let ident = |s: &str| -> String {
                s.trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()
            };
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                let names: Vec<String> = match rest.strip_prefix('{') {
                    // `crate::{a::X, b}`: each item's first name, at the group's top level.
                    Some(group) => {
                        let (mut depth, mut items, mut item) = (0usize, Vec::new(), String::new());
                        for c in group.chars() {
                            match c {
                                '{' => depth += 1,
                                '}' if depth == 0 => break,
                                '}' => depth -= 1,
                                ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                                _ => {}
                            }
                            if !(c == ',' && depth == 0) {
                                item.push(c);
                            }
                        }
                        items.push(item);
                        items.iter().map(|i| ident(i)).collect()
                    }
                    None => vec![ident(rest)],
                };
                for name in names {
                    // `crate::VERSION` and the like: the root, not a module.
                    if !name.is_empty()
                        && name != module
                        && name.starts_with(|c: char| c.is_ascii_lowercase())
                    {
                        used.insert(name);
                    }
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, None, &mut out);
    out
}

/// Every import against the layer order, and every module in an import circle.
fn violations(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let layer = |m: &str| LAYERS.iter().position(|l| l.contains(&m));
    let mut found = Vec::new();
    for (from, tos) in graph {
        let Some(lf) = layer(from) else {
            found.push(format!(
                "module {from} is in no layer of LAYERS (tests/layers.rs)"
            ));
            continue;
        };
        for to in tos {
            match layer(to) {
                Some(lt) if lt < lf => {}
                Some(_) => found.push(format!("{from} imports {to}: not a lower layer")),
                None => found.push(format!("{from} imports {to}, which is in no layer")),
            }
        }
    }
    // Circles, found by depth-first search (any circle also breaks the order above; this names it).
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        found: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|p| *p == m) {
            let mut circle: Vec<&str> = path[at..].to_vec();
            circle.push(m);
            found.push(format!("import circle: {}", circle.join(" → ")));
            return;
        }
        if !done.insert(m) {
            return;
        }
        path.push(m);
        for to in graph.get(m).into_iter().flatten() {
            visit(to, graph, path, done, found);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

#[test]
fn the_library_imports_only_downwards_and_in_no_circle() {
    // SPOOKD_LAYERS_SRC checks another tree (the tree before the restructure fails: 12 import circles).
    let src = std::env::var_os("SPOOKD_LAYERS_SRC").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        Into::into,
    );
    let graph = imports(&src);
    assert!(
        graph.contains_key("state") && graph.contains_key("kubelet"),
        "{graph:?}"
    );
    assert_eq!(violations(&graph), Vec::<String>::new(), "{graph:#?}");
}

#[test]
fn the_check_finds_circles_and_upward_imports() {
    // The tree as it was before the restructure, in miniature: the state thread took its message
    // payloads from the features, which imported its Msg back.
    let tmp = crate::util::TempDir::new();
    let src = tmp.join("src");
    fs::create_dir_all(src.join("kubelet")).unwrap();
    fs::write(
        src.join("state.rs"),
        "use crate::health::ProbeSet;\nuse crate::config::Config;\n",
    )
    .unwrap();
    fs::write(
        src.join("health.rs"),
        "use crate::state::Msg; // crate::daemon in a comment\n",
    )
    .unwrap();
    fs::write(src.join("config.rs"), "pub struct Config;\n").unwrap();
    fs::write(
        src.join("kubelet/plugin.rs"),
        "fn f() { crate::random::random_unit(); }\n",
    )
    .unwrap();
    let graph = imports(&src);
    assert_eq!(graph["health"], BTreeSet::from(["state".to_owned()]));
    assert_eq!(graph["kubelet"], BTreeSet::from(["random".to_owned()]));
    assert_eq!(
        violations(&graph),
        [
            "state imports health: not a lower layer",
            "import circle: health → state → health",
        ]
    );
    // A grouped import names each of its modules, over lines and nested groups.
    fs::write(
        src.join("daemon.rs"),
        "use crate::{\n    kubelet::{plugin::X, Y},\n    state, VERSION,\n};\n",
    )
    .unwrap();
    fs::write(src.join("check.rs"), "use crate::{daemon::Z};\n").unwrap();
    let graph = imports(&src);
    assert_eq!(
        graph["daemon"],
        BTreeSet::from(["kubelet".to_owned(), "state".to_owned()])
    );
    assert_eq!(graph["check"], BTreeSet::from(["daemon".to_owned()]));
    assert!(violations(&graph).contains(&"check imports daemon: not a lower layer".to_owned()));
}
