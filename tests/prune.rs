//! `--prune-stale-resources` of the real binary against the HTTPS API stand-in holding a Node.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::apiserver::{with_credentials, ApiServer, Credentials, Fault, Node};
use crate::util::{Setup, SEED, WAIT};

const ANNOTATION: &str = "spookd/advertised-resources";

/// The API server with node1, counting what the kubelet would: cpu, a foreign zero GPU, and
/// `counts`; credentials for it in a temp dir.
fn api(annotations: &[(&str, &str)], counts: &[(&str, &str)]) -> (ApiServer, Credentials) {
    let (api, creds) = with_credentials("prune test CA");
    let mut capacity: BTreeMap<String, String> = [("cpu", "2"), ("nvidia.com/gpu", "0")]
        .iter()
        .chain(counts)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    capacity.insert("memory".into(), "4Gi".into());
    api.set_node(Node {
        name: "node1".into(),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        allocatable: capacity.clone(),
        capacity,
    });
    (api, creds)
}

fn start(api: &ApiServer, creds: &Credentials, after: &str, config: &str) -> Setup {
    let (token, ca) = (&creds.token, &creds.ca);
    Setup::with_args(
        "node1",
        config,
        &[
            "--prune-stale-resources",
            "--prune-after",
            after,
            "--api-server",
            &api.url(),
            "--token-file",
            token.to_str().unwrap(),
            "--ca-file",
            ca.to_str().unwrap(),
        ],
    )
}

fn wait_node(s: &Setup, api: &ApiServer, what: &str, done: impl Fn(&Node) -> bool) {
    assert!(
        api.wait_node(WAIT, done),
        "{what}; node now {:#?}\n--- spookd log ---\n{}",
        api.node(),
        s.spookd.log()
    );
}

fn annotation(n: &Node) -> Option<&str> {
    n.annotations.get(ANNOTATION).map(String::as_str)
}

const BOTH: &str = "example.com/thingamajig,example.com/widget";

fn without_thingamajig() -> String {
    SEED.replace(
        "      - resourceName: example.com/thingamajig\n        instanceID: \"0001\"\n",
        "",
    )
}

#[test]
fn a_removed_resource_is_pruned_after_the_wait_and_nothing_else_is_touched() {
    let counts = [
        ("example.com/widget", "1"),
        ("example.com/thingamajig", "1"),
    ];
    let (api, creds) = api(&[], &counts);
    let mut s = start(&api, &creds, "1s", SEED);
    wait_node(&s, &api, "served names recorded", |n| {
        annotation(n) == Some(BOTH)
    });
    // The kubelet's stream open first: an edit before it would retire the server under it
    // (a slow spookd, under emulation, showed it).
    s.expect_devices("example.com/thingamajig", &["0001"]);
    let edited = s.config.write(&without_thingamajig());
    s.expect_devices("example.com/thingamajig", &[]);
    // The kubelet's view once the plugin is gone: 0.
    api.set_count("example.com/thingamajig", "0");
    wait_node(&s, &api, "thingamajig pruned", |n| {
        !n.capacity.contains_key("example.com/thingamajig")
            && !n.allocatable.contains_key("example.com/thingamajig")
    });
    let node = api.node().unwrap();
    let keep = |m: &BTreeMap<String, String>| -> Vec<(String, String)> {
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let expected: Vec<(String, String)> = [
        ("cpu", "2"),
        ("example.com/widget", "1"),
        ("memory", "4Gi"),
        ("nvidia.com/gpu", "0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(keep(&node.capacity), expected);
    assert_eq!(keep(&node.allocatable), expected);
    // One guarded JSON patch on the status subresource, not before --prune-after.
    let patches: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.target.ends_with("/status"))
        .collect();
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].target, "/api/v1/nodes/node1/status");
    assert_eq!(patches[0].content_type, "application/json-patch+json");
    assert_eq!(
        patches[0].body,
        r#"[{"op":"test","path":"/status/capacity/example.com~1thingamajig","value":"0"},{"op":"remove","path":"/status/capacity/example.com~1thingamajig"},{"op":"test","path":"/status/allocatable/example.com~1thingamajig","value":"0"},{"op":"remove","path":"/status/allocatable/example.com~1thingamajig"}]"#
    );
    assert!(patches[0].at >= edited + Duration::from_secs(1));
    // Confirmed gone a wait later: it leaves the annotation.
    wait_node(&s, &api, "annotation updated", |n| {
        annotation(n) == Some("example.com/widget")
    });
    assert!(s
        .spookd
        .log()
        .contains("example.com/thingamajig: removed from the node's capacity"));
}

#[test]
fn a_resource_served_again_before_the_deadline_is_untouched() {
    let counts = [
        ("example.com/widget", "1"),
        ("example.com/thingamajig", "1"),
    ];
    let (api, creds) = api(&[], &counts);
    let mut s = start(&api, &creds, "2s", SEED);
    wait_node(&s, &api, "served names recorded", |n| {
        annotation(n) == Some(BOTH)
    });
    // The kubelet's stream open first: an edit before it would retire the server under it
    // (a slow spookd, under emulation, showed it).
    s.expect_devices("example.com/thingamajig", &["0001"]);
    s.config.write(&without_thingamajig());
    s.expect_devices("example.com/thingamajig", &[]);
    api.set_count("example.com/thingamajig", "0");
    // The pruner saw it go (so the deadline was set) before it comes back.
    assert!(
        s.spookd
            .wait_log("example.com/thingamajig: no longer served", 1),
        "{}",
        s.spookd.log()
    );
    s.config.write(SEED);
    s.expect_devices("example.com/thingamajig", &["0001"]);
    // Past the deadline, bounded: nothing was patched.
    std::thread::sleep(Duration::from_secs(3));
    assert!(api
        .requests()
        .iter()
        .all(|r| !r.target.ends_with("/status")));
    let node = api.node().unwrap();
    assert_eq!(node.capacity["example.com/thingamajig"], "0");
    assert_eq!(annotation(&node), Some(BOTH));
}

#[test]
fn a_restarted_spookd_prunes_what_it_advertised_before_and_never_a_foreign_name() {
    // A previous spookd advertised example.com/old; today's config does not serve it.
    let counts = [("example.com/old", "0"), ("other.io/manual", "0")];
    let annotations = [(ANNOTATION, "example.com/old")];
    let (api, creds) = api(&annotations, &counts);
    let s = start(&api, &creds, "1s", SEED);
    wait_node(&s, &api, "old pruned", |n| {
        !n.capacity.contains_key("example.com/old")
    });
    wait_node(&s, &api, "annotation is today's", |n| {
        annotation(n) == Some(BOTH)
    });
    let node = api.node().unwrap();
    assert_eq!(node.capacity["other.io/manual"], "0");
    assert_eq!(node.capacity["nvidia.com/gpu"], "0");
}

#[test]
fn api_errors_are_retried_and_a_missing_permission_is_named() {
    let counts = [("example.com/old", "0")];
    let annotations = [(ANNOTATION, "example.com/old")];
    let (api, creds) = api(&annotations, &counts);
    api.fail_when("GET", "/nodes/node1", Fault::Status(403, None));
    api.fail_when("PATCH", "/nodes/node1", Fault::Status(500, None));
    api.fail_when("PATCH", "/nodes/node1/status", Fault::Status(409, None));
    let started = Instant::now();
    let s = start(&api, &creds, "1s", SEED);
    wait_node(&s, &api, "old pruned despite the errors", |n| {
        !n.capacity.contains_key("example.com/old")
    });
    wait_node(&s, &api, "annotation is today's", |n| {
        annotation(n) == Some(BOTH)
    });
    let log = s.spookd.log();
    assert!(
        log.contains("needs get and patch on nodes and patch on nodes/status"),
        "{log}"
    );
    assert!(log.contains("HTTP 500"), "{log}");
    assert!(log.contains("the Node changed meanwhile"), "{log}");
    // Serving never waited on the API: registered long before the prune finished.
    assert!(s.kubelet.registrations().len() >= 2);
    assert!(started.elapsed() < WAIT);
}
