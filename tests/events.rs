//! Kubernetes Events against the API server stand-in: exact objects, series, both sources, and an
//! API that is down never stopping the serving.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_yaml::Value;

use crate::apiserver::{self, ApiServer, Credentials};
use crate::util::{Kubelet, Setup, Spookd, TempDir, SEED, WAIT};

const BROKEN: &str = "deviceMapping:\n  - hosts: [node1]\n    devices:\n      - {resourceName: example.com/widget, instanceID: \"1\", bogus: 1}\n";

/// spookd's own Pod, as the downward API gives it: what Events are about.
pub const POD_ARGS: [&str; 6] = [
    "--pod-name",
    "spookd-abcde",
    "--pod-namespace",
    "spookd",
    "--pod-uid",
    "0b7c4e36-pod",
];

fn event_args<'a>(api: &'a str, creds: &'a Credentials) -> Vec<&'a str> {
    let mut args = POD_ARGS.to_vec();
    args.extend([
        "--api-server",
        api,
        "--token-file",
        creds.token.to_str().unwrap(),
        "--ca-file",
        creds.ca.to_str().unwrap(),
    ]);
    args
}

/// The Events now, oldest first, without what the server adds.
fn events(api: &ApiServer) -> Vec<Value> {
    let mut all: Vec<Value> = api.events("spookd").into_values().collect();
    all.sort_by_key(|e| e["eventTime"].as_str().unwrap().to_owned());
    for e in &mut all {
        e["metadata"]
            .as_mapping_mut()
            .unwrap()
            .remove("resourceVersion");
    }
    all
}

fn wait_events(api: &ApiServer, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + WAIT;
    while events(api).len() < n && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    events(api)
}

#[test]
fn refused_and_applied_configs_are_events_about_the_pod_counted_in_series() {
    let (api, creds) = apiserver::with_credentials("events");
    let url = api.url();
    let mut s = Setup::with_args("node1", SEED, &event_args(&url, &creds));
    s.expect_devices("example.com/widget", &["0001"]);
    let seen = wait_events(&api, 1);
    assert_eq!(seen.len(), 1, "{seen:#?}\n{}", s.spookd.log());
    let applied = &seen[0];
    let name = applied["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("spookd-abcde."), "{name}");
    let note = applied["note"].as_str().unwrap();
    assert!(
        note.starts_with(&format!(
            "node node1 applied the config from {}",
            s.config.path().display()
        )) && note.ends_with(
            ": 2 resources, 2 devices (example.com/thingamajig: 1, example.com/widget: 1)"
        ),
        "{note}"
    );
    let mut fixed = applied.clone();
    for k in ["eventTime", "note"] {
        fixed.as_mapping_mut().unwrap().remove(k);
    }
    fixed["metadata"].as_mapping_mut().unwrap().remove("name");
    let want: Value = serde_yaml::from_str(
        "apiVersion: events.k8s.io/v1
kind: Event
metadata: {namespace: spookd}
reportingController: spookd.dev/device-plugin
reportingInstance: spookd-node1
action: Apply
reason: ConfigApplied
type: Normal
regarding: {apiVersion: v1, kind: Pod, namespace: spookd, name: spookd-abcde, uid: 0b7c4e36-pod}
",
    )
    .unwrap();
    assert_eq!(fixed, want);
    // scripts/test validates what spookd wrote against the schemas.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("event-objects");
    std::fs::create_dir_all(&dir).unwrap();
    let body = api
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.target.contains("/events"))
        .unwrap()
        .body;
    std::fs::write(dir.join("event.json"), body).unwrap();

    // A broken edit: a Warning whose note is the log's error, naming the node.
    s.config.write(BROKEN);
    let seen = wait_events(&api, 2);
    assert_eq!(seen.len(), 2, "{seen:#?}");
    let warning = &seen[1];
    assert_eq!(
        (
            warning["type"].as_str(),
            warning["reason"].as_str(),
            warning["action"].as_str()
        ),
        (Some("Warning"), Some("InvalidConfig"), Some("Reject"))
    );
    let log = s.spookd.log();
    let error = log
        .lines()
        .find_map(|l| {
            l.split_once("] ")
                .map(|(_, m)| m)
                .filter(|m| m.contains("keeping the last good config"))
        })
        .unwrap()
        .trim_end_matches("; keeping the last good config")
        .to_owned();
    assert!(error.contains("line 4 column"), "{error}");
    assert_eq!(
        warning["note"].as_str().unwrap(),
        format!("node node1: {error}; the last good config stays")
    );
    // The same error in another version of the config counts in the series: no new Event.
    s.config.write(&format!("{BROKEN}# edited again\n"));
    let deadline = std::time::Instant::now() + WAIT;
    while events(&api)
        .get(1)
        .is_none_or(|e| e["series"]["count"] != 2)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let now = events(&api);
    assert_eq!(now.len(), 2);
    assert_eq!(now[1]["series"]["count"], 2);
    assert!(now[1]["series"]["lastObservedTime"].as_str().is_some());
    // Still serving the last good config.
    s.expect_devices("example.com/widget", &["0001"]);

    // The API down: serving goes on, the failure is logged once.
    api.set_outage(true);
    s.config
        .write(&SEED.replace("192.168.0.200", "192.168.0.201"));
    s.config.write(BROKEN);
    assert!(s.spookd.wait_log("cannot write a Kubernetes Event", 1));
    s.expect_devices("example.com/widget", &["0001"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        s.spookd
            .log()
            .matches("cannot write a Kubernetes Event")
            .count(),
        1
    );
    api.set_outage(false);
    // The 503s paused writes for 10 s (no Retry-After): a notice after that is written again.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    while !s.spookd.log().contains("are written again") && std::time::Instant::now() < deadline {
        n += 1;
        s.config.write(&format!("{SEED}# edit {n}\n"));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        s.spookd
            .log()
            .contains("Events about Pod/spookd-abcde are written again"),
        "{}",
        s.spookd.log()
    );
}

#[test]
fn the_api_source_reports_about_the_configmap_too() {
    let (api, creds) = apiserver::with_configmap("events-cm", "spookd-device-plugin");
    api.set(BROKEN);
    let url = api.url();
    let tmp = TempDir::new();
    let dp = tmp.join("dp");
    std::fs::create_dir_all(&dp).unwrap();
    let _kubelet = Kubelet::start(&dp).unwrap();
    let mut args = event_args(&url, &creds);
    args.extend([
        "--configmap",
        "spookd/spookd-device-plugin",
        "--node-name",
        "node1",
        "--device-plugin-dir",
        dp.to_str().unwrap(),
    ]);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    let spookd = Spookd::start_args(&args, tmp.join("spookd.log"));
    let seen = wait_events(&api, 2);
    let regarding: BTreeMap<String, (String, String)> = seen
        .iter()
        .map(|e| {
            (
                e["regarding"]["kind"].as_str().unwrap().to_owned(),
                (
                    e["regarding"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    e["reason"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect();
    assert_eq!(
        regarding,
        BTreeMap::from([
            (
                "ConfigMap".to_owned(),
                ("u-1".to_owned(), "InvalidConfig".to_owned())
            ),
            (
                "Pod".to_owned(),
                ("0b7c4e36-pod".to_owned(), "InvalidConfig".to_owned())
            ),
        ]),
        "{seen:#?}\n{}",
        spookd.log()
    );
}
