//! `--dra`: the real binary as a DRA driver against the API server stand-in (ResourceSlices,
//! DeviceClasses, ResourceClaims, the leader Lease) and the kubelet's DRA stand-in (plugin
//! registry, NodePrepareResources and NodeUnprepareResources over both versions), and the CDI
//! specs it writes consumed by a real CDI consumer, podman.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_yaml::Value;

use crate::apiserver::{self, ApiServer, Credentials, Fault};
use crate::sim::dra::DraKubelet;
use crate::util::{ConfigVolume, Spookd, TempDir, WAIT};
use spookd::dra::proto::Version;

const DRIVER: &str = "spookd.dev";

const CONFIG: &str = r#"
deviceMapping:
  - hosts: [node1, node2]
    devices:
      - resourceName: skao.int/oscilloscope
        instanceID: "0001"
        env: {IP: 10.0.10.215}
  - hosts: [node1]
    devices:
      - resourceName: skao.int/oscilloscope
        instanceID: "0002"
        env: {IP: 10.0.10.216}
      - resourceName: example.com/widget
        instanceID: sg-1
"#;

/// One node: its own kubelet dirs and CDI dir, sharing the API server and config.
struct Node {
    dir: TempDir,
    kubelet: DraKubelet,
    spookd: Option<Spookd>,
    name: String,
}

impl Node {
    fn start(
        name: &str,
        api: &ApiServer,
        creds: &Credentials,
        config: &Path,
        extra: &[&str],
    ) -> Node {
        let dir = TempDir::new();
        let kubelet = DraKubelet::start(&dir.join("registry"));
        let mut node = Node {
            dir,
            kubelet,
            spookd: None,
            name: name.to_owned(),
        };
        node.spookd = Some(node.run(api, creds, config, extra));
        node
    }

    fn run(&self, api: &ApiServer, creds: &Credentials, config: &Path, extra: &[&str]) -> Spookd {
        let url = api.url();
        let (plugins, registry, cdi) = (
            self.dir.join("plugins"),
            self.dir.join("registry"),
            self.cdi(),
        );
        let mut args: Vec<&std::ffi::OsStr> = vec!["--dra".as_ref()];
        if !extra.contains(&"--configmap") {
            args.extend([
                "--config".as_ref(),
                config.as_os_str(),
                "--poll-interval".as_ref(),
                "50ms".as_ref(),
            ]);
        }
        let rest: [&std::ffi::OsStr; 16] = [
            "--node-name".as_ref(),
            self.name.as_ref(),
            "--api-server".as_ref(),
            url.as_ref(),
            "--token-file".as_ref(),
            creds.token.as_os_str(),
            "--ca-file".as_ref(),
            creds.ca.as_os_str(),
            "--lease-namespace".as_ref(),
            "spookd".as_ref(),
            "--lease-duration".as_ref(),
            "2s".as_ref(),
            "--kubelet-plugins-dir".as_ref(),
            plugins.as_os_str(),
            "--kubelet-registry-dir".as_ref(),
            registry.as_os_str(),
        ];
        args.extend(rest);
        if !extra.contains(&"--cdi-dir") {
            args.extend(["--cdi-dir".as_ref(), cdi.as_os_str()]);
        }
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        Spookd::start_args(&args, self.dir.join(&format!("spookd-{n}.log")))
    }

    fn cdi(&self) -> PathBuf {
        self.dir.join("cdi")
    }

    fn spookd(&self) -> &Spookd {
        self.spookd.as_ref().unwrap()
    }

    fn log(&self) -> String {
        self.spookd.as_ref().map(Spookd::log).unwrap_or_default()
    }
}

/// An object as the test compares it: without what the server adds.
fn strip(mut v: Value) -> Value {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_mapping_mut) {
        meta.remove("resourceVersion");
        meta.remove("uid");
    }
    v
}

fn generation(slices: &BTreeMap<String, Value>) -> Vec<i64> {
    slices
        .values()
        .map(|s| s["spec"]["pool"]["generation"].as_i64().unwrap())
        .collect()
}

fn writes(api: &ApiServer) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.target.starts_with("/apis/resource.k8s.io") && r.method != "GET")
        .count()
}

fn lease_holder(api: &ApiServer) -> Option<String> {
    api.leases()
        .get("spookd-dra-spookd-dev")
        .map(|l| l.holder.clone())
        .filter(|h| !h.is_empty())
}

const SLICES: &str = r#"
spookd.dev-0:
  apiVersion: resource.k8s.io/v1
  kind: ResourceSlice
  metadata:
    name: spookd.dev-0
    labels: {app.kubernetes.io/instance: spookd.dev, app.kubernetes.io/managed-by: spookd}
  spec:
    driver: spookd.dev
    pool: {name: spookd, generation: 1, resourceSliceCount: 2}
    nodeSelector:
      nodeSelectorTerms:
        - matchFields: [{key: metadata.name, operator: In, values: [node1]}]
    devices:
      - name: oscilloscope-skao-int-0002
        attributes:
          IP: {string: 10.0.10.216}
          instanceID: {string: "0002"}
          resourceName: {string: skao.int/oscilloscope}
      - name: widget-example-com-sg-1
        attributes:
          instanceID: {string: sg-1}
          resourceName: {string: example.com/widget}
spookd.dev-1:
  apiVersion: resource.k8s.io/v1
  kind: ResourceSlice
  metadata:
    name: spookd.dev-1
    labels: {app.kubernetes.io/instance: spookd.dev, app.kubernetes.io/managed-by: spookd}
  spec:
    driver: spookd.dev
    pool: {name: spookd, generation: 1, resourceSliceCount: 2}
    nodeSelector:
      nodeSelectorTerms:
        - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [node1, node2]}]
    devices:
      - name: oscilloscope-skao-int-0001
        attributes:
          IP: {string: 10.0.10.215}
          instanceID: {string: "0001"}
          resourceName: {string: skao.int/oscilloscope}
"#;

const CLASSES: &str = r#"
oscilloscope.skao.int:
  apiVersion: resource.k8s.io/v1
  kind: DeviceClass
  metadata:
    name: oscilloscope.skao.int
    labels: {app.kubernetes.io/instance: spookd.dev, app.kubernetes.io/managed-by: spookd}
  spec:
    selectors:
      - cel:
          expression: device.driver == "spookd.dev" && device.attributes["spookd.dev"].resourceName == "skao.int/oscilloscope"
    extendedResourceName: skao.int/oscilloscope
widget.example.com:
  apiVersion: resource.k8s.io/v1
  kind: DeviceClass
  metadata:
    name: widget.example.com
    labels: {app.kubernetes.io/instance: spookd.dev, app.kubernetes.io/managed-by: spookd}
  spec:
    selectors:
      - cel:
          expression: device.driver == "spookd.dev" && device.attributes["spookd.dev"].resourceName == "example.com/widget"
    extendedResourceName: example.com/widget
"#;

fn stripped(objects: BTreeMap<String, Value>) -> BTreeMap<String, Value> {
    objects.into_iter().map(|(k, v)| (k, strip(v))).collect()
}

/// Where the objects spookd wrote are kept for scripts/test to validate against the schemas.
fn keep_for_validation(name: &str, objects: &BTreeMap<String, Value>) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dra-objects");
    std::fs::create_dir_all(&dir).unwrap();
    let docs: Vec<String> = objects
        .values()
        .map(|o| serde_yaml::to_string(&strip(o.clone())).unwrap())
        .collect();
    std::fs::write(dir.join(format!("{name}.yaml")), docs.join("---\n")).unwrap();
}

#[test]
fn publishes_every_device_once_and_follows_config_edits() {
    let (api, creds) = apiserver::with_credentials("dra-publish");
    let tmp = TempDir::new();
    let mut config = ConfigVolume::new(tmp.join("cm"), CONFIG);
    let node = Node::start("node1", &api, &creds, &config.path(), &[]);
    let want: BTreeMap<String, Value> = serde_yaml::from_str(SLICES).unwrap();
    let ok = api.wait_objects("resourceslices", WAIT, |s| stripped(s.clone()) == want);
    assert!(
        ok,
        "slices: {:#?}\n--- log ---\n{}",
        api.objects("resourceslices"),
        node.log()
    );
    let classes: BTreeMap<String, Value> = serde_yaml::from_str(CLASSES).unwrap();
    assert!(api.wait_objects("deviceclasses", WAIT, |c| stripped(c.clone()) == classes));
    assert_eq!(lease_holder(&api).as_deref(), Some("node1"));
    keep_for_validation("slices", &api.objects("resourceslices"));
    keep_for_validation("classes", &api.objects("deviceclasses"));

    // Up to date: the resync writes nothing.
    let before = writes(&api);
    assert!(node
        .spookd()
        .wait_log("published 3 devices in 2 ResourceSlices", 1));

    // 0002 moves to both hosts and the widget goes: one slice at generation 2, the other
    // deleted, the widget's class deleted.
    config.write(
        r#"
deviceMapping:
  - hosts: [node1, node2]
    devices:
      - resourceName: skao.int/oscilloscope
        instanceID: "0001"
        env: {IP: 10.0.10.215}
      - resourceName: skao.int/oscilloscope
        instanceID: "0002"
        env: {IP: 10.0.10.216}
"#,
    );
    let ok = api.wait_objects("resourceslices", WAIT, |s| {
        s.len() == 1 && generation(s) == [2]
    });
    assert!(ok, "{:#?}\n{}", api.objects("resourceslices"), node.log());
    let slice = &api.objects("resourceslices")["spookd.dev-0"];
    let names: Vec<&str> = slice["spec"]["devices"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["oscilloscope-skao-int-0001", "oscilloscope-skao-int-0002"]
    );
    assert_eq!(slice["spec"]["pool"]["resourceSliceCount"], 1);
    assert_eq!(
        slice["spec"]["nodeSelector"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"],
        serde_yaml::from_str::<Value>("[node1, node2]").unwrap()
    );
    assert!(api.wait_objects("deviceclasses", WAIT, |c| c
        .keys()
        .eq(["oscilloscope.skao.int"])));
    assert!(writes(&api) > before);

    // An invalid config on the leader publishes nothing: the last good stays.
    let before = writes(&api);
    config.write("deviceMapping:\n  - hosts: [node1]\n    devices:\n      - {resourceName: a.io/x, instanceID: A1}\n      - {resourceName: a.io/x, instanceID: a1}\n");
    assert!(
        node.spookd().wait_log("both get the DRA device name", 1),
        "{}",
        node.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(writes(&api), before);
    assert_eq!(generation(&api.objects("resourceslices")), [2]);

    // Someone deletes the slice: the leader's watch sees it, and it is back at once (not at the
    // resync a minute away), at a new generation.
    api.remove_object("resourceslices", "spookd.dev-0");
    let ok = api.wait_objects("resourceslices", WAIT, |s| {
        s.len() == 1 && generation(s) == [3]
    });
    assert!(ok, "{:#?}\n{}", api.objects("resourceslices"), node.log());
    config.write(CONFIG);
    let ok = api.wait_objects("resourceslices", WAIT, |s| {
        s.len() == 2 && generation(s) == [4, 4]
    });
    assert!(ok, "{:#?}", api.objects("resourceslices"));
    let watched = api
        .requests()
        .iter()
        .any(|r| r.target.contains("/resourceslices?") && r.target.contains("watch=true"));
    assert!(watched, "no watch of the slices");
}

/// A 1.34/1.35 API server with the `DRAExtendedResource` gate off drops `extendedResourceName`
/// on write: each class is written once, the drop is learnt from what the server stored, and no
/// later publish rewrites a class; the log says so once, and the status shows it.
#[test]
fn a_server_that_drops_new_fields_is_not_rewritten_in_a_loop() {
    let (api, creds) = apiserver::with_credentials("dra-gates-off");
    api.set_gates_off(true);
    let tmp = TempDir::new();
    let mut config = ConfigVolume::new(tmp.join("cm"), CONFIG);
    let node = Node::start(
        "node1",
        &api,
        &creds,
        &config.path(),
        &["--metrics-addr", "127.0.0.1:0"],
    );
    let metrics = crate::metrics::metrics_addr(node.spookd());
    let ok = api.wait_objects("deviceclasses", WAIT, |c| c.len() == 2);
    assert!(ok, "{}", node.log());
    for class in api.objects("deviceclasses").values() {
        assert!(class["spec"].get("extendedResourceName").is_none());
    }
    let class_writes = |api: &ApiServer| {
        api.requests()
            .iter()
            .filter(|r| r.target.contains("/deviceclasses") && r.method != "GET")
            .count()
    };
    assert!(api.wait_objects("resourceslices", WAIT, |s| generation(s) == [1, 1]));
    assert_eq!(class_writes(&api), 2);
    // Three more publishes (each a config edit): slices written, no class.
    for n in 3..6 {
        let more = format!(
            "{CONFIG}      - resourceName: example.com/widget\n        instanceID: sg-{n}\n"
        );
        config.write(&more);
        let ok = api.wait_objects("resourceslices", WAIT, |s| {
            generation(s).iter().all(|g| *g == i64::from(n) - 1)
        });
        assert!(ok, "{:#?}\n{}", api.objects("resourceslices"), node.log());
    }
    assert_eq!(class_writes(&api), 2, "{}", node.log());
    let said = "the API server drops DeviceClass extendedResourceName";
    assert!(node.spookd().wait_log(said, 1));
    assert_eq!(node.log().matches(said).count(), 1, "{}", node.log());
    let (_, status) = crate::metrics::get(&metrics, "/status");
    assert!(
        status.contains(r#""droppedFields":["DeviceClass extendedResourceName"]"#),
        "{status}"
    );
}

/// A device plugin on this node that advertises a name the node serves by DRA (allocatable
/// above 0; the scheduler would give pods asking for it in resources.limits the device plugin's
/// devices here): spookd --dra reads its Node, warns once, and /status says so until it goes.
#[test]
fn a_device_plugin_serving_the_same_name_on_the_node_is_warned_about() {
    let (api, creds) = apiserver::with_credentials("dra-both-modes");
    let count = |n: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), "2".to_owned()),
            ("example.com/widget".to_owned(), n.to_owned()),
        ])
    };
    api.set_node(apiserver::Node {
        name: "node1".into(),
        annotations: BTreeMap::new(),
        capacity: count("1"),
        allocatable: count("1"),
    });
    let tmp = TempDir::new();
    let config = ConfigVolume::new(tmp.join("cm"), CONFIG);
    let node = Node::start(
        "node1",
        &api,
        &creds,
        &config.path(),
        &[
            ["--metrics-addr", "127.0.0.1:0"].as_slice(),
            &crate::events::POD_ARGS,
        ]
        .concat(),
    );
    let metrics = crate::metrics::metrics_addr(node.spookd());
    let said = "a device plugin on node node1 also advertises example.com/widget: pods asking for \
                it in resources.limits are given the device plugin's devices there, not DRA's";
    assert!(node.spookd().wait_log(said, 1), "{}", node.log());
    let (_, status) = crate::metrics::get(&metrics, "/status");
    assert!(
        status.contains(r#""servedByDevicePlugin":["example.com/widget"]"#),
        "{status}"
    );
    let warned = |api: &ApiServer| {
        (api.events("spookd").values())
            .filter(|e| e["reason"] == "ServedByDevicePlugin")
            .count()
    };
    let deadline = Instant::now() + WAIT;
    while warned(&api) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(warned(&api), 1, "{:#?}", api.events("spookd"));
}

#[test]
fn the_configmap_source_feeds_the_driver_too() {
    let (api, creds) = apiserver::with_configmap("dra-configmap", "spookd-dra");
    api.set(CONFIG);
    let node = Node::start(
        "node1",
        &api,
        &creds,
        Path::new("/nonexistent"),
        &["--configmap", "spookd/spookd-dra"],
    );
    let want: BTreeMap<String, Value> = serde_yaml::from_str(SLICES).unwrap();
    let ok = api.wait_objects("resourceslices", WAIT, |s| stripped(s.clone()) == want);
    assert!(ok, "{}", node.log());
    api.set(&CONFIG.replace("10.0.10.216", "10.0.10.218"));
    let ok = api.wait_objects("resourceslices", WAIT, |s| generation(s) == [2, 2]);
    assert!(ok, "{}", node.log());
}

#[test]
fn a_pool_of_many_slices_is_read_in_pages() {
    let (api, creds) = apiserver::with_credentials("dra-pages");
    let tmp = TempDir::new();
    // 20 host sets of one device each: 20 slices, five pages of 4 (a slice may hold 128 devices);
    // the health reports are listed 16 a page.
    let many = |ip: &str| {
        let mut yaml = String::from("deviceMapping:\n");
        for i in 0..20 {
            yaml.push_str(&format!(
                "  - hosts: [node{i}]\n    devices:\n      - {{resourceName: a.io/x, instanceID: '{i}', env: {{IP: {ip}}}}}\n"
            ));
        }
        yaml
    };
    let mut config = ConfigVolume::new(tmp.join("cm"), &many("10.0.0.1"));
    let node = Node::start("node0", &api, &creds, &config.path(), &[]);
    assert!(
        api.wait_objects("resourceslices", WAIT, |s| s.len() == 20),
        "{}",
        node.log()
    );
    config.write(&many("10.0.0.2"));
    let ok = api.wait_objects("resourceslices", WAIT, |s| {
        s.len() == 20 && generation(s).iter().all(|g| *g == 2)
    });
    assert!(ok, "{}", node.log());
    let requests = api.requests();
    let lists = |what: &str| -> Vec<&str> {
        (requests.iter())
            .filter(|r| r.method == "GET" && r.target.contains(what) && !r.is_watch())
            .map(|r| r.target.as_str())
            .collect()
    };
    let slices = lists("/resourceslices?");
    assert!(slices.iter().all(|t| t.contains("&limit=4")), "{slices:#?}");
    let paged = slices.iter().any(|t| t.contains("&continue=page%3A16"));
    assert!(paged, "no fifth page was asked for");
    let reports = lists("/leases?labelSelector");
    assert!(
        !reports.is_empty() && reports.iter().all(|t| t.contains("&limit=16")),
        "{reports:#?}"
    );
}

/// A Node past etcd's 1.5 MiB (a hostile or broken API server's answer) is not read whole: the
/// check says once that it cannot read the node, and the driver goes on publishing.
#[test]
fn a_node_too_large_to_read_is_not_checked_and_publishing_goes_on() {
    let (api, creds) = apiserver::with_credentials("dra-huge-node");
    api.set_node(apiserver::Node {
        name: "node1".into(),
        annotations: BTreeMap::from([("x".to_owned(), "y".repeat(2 << 20))]),
        capacity: BTreeMap::new(),
        allocatable: BTreeMap::from([("example.com/widget".to_owned(), "1".to_owned())]),
    });
    let tmp = TempDir::new();
    let config = ConfigVolume::new(tmp.join("cm"), CONFIG);
    let node = Node::start("node1", &api, &creds, &config.path(), &[]);
    let said = "cannot read this node to see whether a device plugin serves the same names";
    assert!(node.spookd().wait_log(said, 1), "{}", node.log());
    assert!(
        api.wait_objects("resourceslices", WAIT, |s| s.len() == 2),
        "{}",
        node.log()
    );
    assert!(!node.log().contains("also advertises"), "{}", node.log());
}

/// Another driver's slice named as spookd's first slice would be: spookd publishes that slice
/// under a name the API server gives, leaves the other one alone, and then writes nothing more.
#[test]
fn a_foreign_slice_with_our_name_is_left_alone_and_ours_published_beside_it() {
    let (api, creds) = apiserver::with_credentials("dra-foreign");
    let want: BTreeMap<String, Value> = serde_yaml::from_str(SLICES).unwrap();
    let mut foreign = want["spookd.dev-0"].clone();
    foreign["spec"]["driver"] = "other.dev".into();
    foreign["metadata"]
        .as_mapping_mut()
        .unwrap()
        .remove("labels");
    api.put_object("resourceslices", foreign.clone());
    let tmp = TempDir::new();
    let config = ConfigVolume::new(tmp.join("cm"), CONFIG);
    let node = Node::start("node1", &api, &creds, &config.path(), &[]);
    let generated = |s: &BTreeMap<String, Value>| -> Option<String> {
        s.keys()
            .find(|k| k.starts_with("spookd.dev-0-") && k.len() == "spookd.dev-0-".len() + 5)
            .cloned()
    };
    let ok = api.wait_objects("resourceslices", WAIT, |s| {
        let Some(name) = generated(s) else {
            return false;
        };
        let mut ours = want.clone();
        let mut first = ours.remove("spookd.dev-0").unwrap();
        first["metadata"]["name"] = name.clone().into();
        first["metadata"]["generateName"] = "spookd.dev-0-".into();
        ours.insert(name, first);
        ours.insert("spookd.dev-0".to_owned(), foreign.clone());
        stripped(s.clone()) == stripped(ours)
    });
    assert!(
        ok,
        "{:#?}\n--- log ---\n{}",
        api.objects("resourceslices"),
        node.log()
    );
    assert!(
        node.log().contains(
            "a ResourceSlice spookd.dev-0 exists that is not spookd.dev's; publishing under a \
             name the API server gives"
        ),
        "{}",
        node.log()
    );
    // Its own writes, seen by the slice watch, make it compare again half a second later: up
    // to date under those names, nothing more is written.
    let before = writes(&api);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(writes(&api), before, "{}", node.log());
    assert_eq!(api.objects("resourceslices").len(), 3);
}

#[test]
fn api_faults_are_retried_until_published() {
    let (api, creds) = apiserver::with_credentials("dra-faults");
    api.fail_when("POST", "/resourceslices", Fault::Status(500, None));
    api.fail_when("GET", "/resourceslices", Fault::Status(429, Some(0)));
    api.fail_when("POST", "/deviceclasses", Fault::Status(503, None));
    let tmp = TempDir::new();
    let config = ConfigVolume::new(tmp.join("cm"), CONFIG);
    let node = Node::start("node1", &api, &creds, &config.path(), &[]);
    let want: BTreeMap<String, Value> = serde_yaml::from_str(SLICES).unwrap();
    let ok = api.wait_objects("resourceslices", WAIT, |s| stripped(s.clone()) == want);
    assert!(ok, "{}", node.log());
    assert!(
        node.log()
            .contains("cannot publish driver spookd.dev's devices"),
        "{}",
        node.log()
    );
}

#[test]
fn another_node_takes_over_when_the_leader_goes() {
    let (api, creds) = apiserver::with_credentials("dra-failover");
    let tmp = TempDir::new();
    let mut config = ConfigVolume::new(tmp.join("cm"), CONFIG);
    let mut a = Node::start("node1", &api, &creds, &config.path(), &[]);
    assert!(a.spookd().wait_log("this node leads", 1), "{}", a.log());
    let mut b = Node::start("node2", &api, &creds, &config.path(), &[]);
    assert!(api.wait_objects("resourceslices", WAIT, |s| s.len() == 2));
    assert!(
        b.kubelet.wait_registered(DRIVER, WAIT).is_some(),
        "{}",
        b.log()
    );
    assert_eq!(lease_holder(&api).as_deref(), Some("node1"));
    assert!(!b.log().contains("this node leads"));

    // The leader dies without a word: node2 leads within the Lease's duration (2 s, plus its
    // eighth for the next try and the slack of a loaded machine).
    let died = Instant::now();
    drop(a.spookd.take());
    let deadline = died + Duration::from_secs(6);
    while lease_holder(&api).as_deref() != Some("node2") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(lease_holder(&api).as_deref(), Some("node2"), "{}", b.log());
    let took = died.elapsed();
    // Not before the Lease could have run out: its last renewal was at most a third of the
    // duration before the leader died. (A wall-clock margin: under emulation a slow leader may
    // have renewed late, so the Lease ran out earlier after its death; checked natively only.)
    if crate::util::runner().is_none() {
        assert!(
            took >= Duration::from_millis(1000),
            "took over after {took:?}: too early"
        );
    }
    assert!(b.spookd().wait_log("this node leads", 1));
    // The new leader publishes what changes.
    config.write(&CONFIG.replace("10.0.10.216", "10.0.10.217"));
    let ok = api.wait_objects("resourceslices", WAIT, |s| {
        generation(s) == [2, 2] && serde_yaml::to_string(s).unwrap().contains("10.0.10.217")
    });
    assert!(ok, "{}", b.log());

    // A leader stopped cleanly releases the Lease: the other leads at once.
    a.spookd = Some(a.run(&api, &creds, &config.path(), &[]));
    assert!(a.kubelet.wait_registered(DRIVER, WAIT).is_some());
    let stopped = Instant::now();
    b.spookd.as_mut().unwrap().terminate();
    assert!(b.log().contains("released the leader Lease"), "{}", b.log());
    assert!(a.spookd().wait_log("this node leads", 1), "{}", a.log());
    assert!(
        stopped.elapsed() < Duration::from_millis(1500),
        "{:?}",
        stopped.elapsed()
    );
}

/// A ResourceClaim the scheduler allocated: `devices` as (request, device).
fn claim(namespace: &str, name: &str, uid: &str, devices: &[(&str, &str)]) -> Value {
    let results: Vec<String> = devices
        .iter()
        .map(|(request, device)| {
            format!("{{request: {request}, driver: {DRIVER}, pool: spookd, device: {device}}}")
        })
        .collect();
    serde_yaml::from_str(&format!(
        "apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {{name: {name}, namespace: {namespace}, uid: {uid}}}
spec:
  devices:
    requests: [{{name: scope, exactly: {{deviceClassName: oscilloscope.skao.int}}}}]
status:
  allocation:
    devices:
      results: [{}]
",
        results.join(", ")
    ))
    .unwrap()
}

/// The env of a CDI spec file.
fn spec_env(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let spec: Value = serde_yaml::from_str(&text).unwrap();
    spec["devices"][0]["containerEdits"]["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| {
            let (k, v) = e.as_str().unwrap().split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Both scopes: the seed's layout, numbered within the claim.
fn two_scopes_env() -> BTreeMap<String, String> {
    env(&[
        ("SKAOINT_OSCILLOSCOPE_DEV0_ID", "0001"),
        ("SKAOINT_OSCILLOSCOPE_DEV0_IP", "10.0.10.215"),
        ("SKAOINT_OSCILLOSCOPE_DEV0_TYPE", "skao.int/oscilloscope"),
        ("SKAOINT_OSCILLOSCOPE_DEV1_ID", "0002"),
        ("SKAOINT_OSCILLOSCOPE_DEV1_IP", "10.0.10.216"),
        ("SKAOINT_OSCILLOSCOPE_DEV1_TYPE", "skao.int/oscilloscope"),
        ("SKAOINT_OSCILLOSCOPE_ID", "0001"),
        ("SKAOINT_OSCILLOSCOPE_IP", "10.0.10.215"),
        ("SKAOINT_OSCILLOSCOPE_NUM_DEVICES", "2"),
        ("SKAOINT_OSCILLOSCOPE_TYPE", "skao.int/oscilloscope"),
    ])
}

#[test]
fn prepares_claims_with_cdi_specs_and_unprepares_them() {
    let (api, creds) = apiserver::with_credentials("dra-prepare");
    let tmp = TempDir::new();
    let config = ConfigVolume::new(tmp.join("cm"), CONFIG);
    let mut node = Node::start("node1", &api, &creds, &config.path(), &[]);
    let reg = node.kubelet.wait_registered(DRIVER, WAIT);
    let reg = reg.unwrap_or_else(|| panic!("not registered\n{}", node.log()));
    assert_eq!(
        reg.versions,
        [
            "v1.DRAPlugin",
            "v1beta1.DRAPlugin",
            "v1alpha1.DRAResourceHealth"
        ]
    );
    assert_eq!(
        reg.endpoint,
        node.dir
            .join("plugins/spookd.dev/dra.sock")
            .display()
            .to_string()
    );
    assert!(node
        .spookd()
        .wait_log("the kubelet registered DRA driver spookd.dev", 1));

    api.put_object(
        "namespaces/lab/resourceclaims",
        claim(
            "lab",
            "scopes",
            "uid-1",
            &[
                ("scope", "oscilloscope-skao-int-0002"),
                ("scope", "oscilloscope-skao-int-0001"),
            ],
        ),
    );
    api.put_object(
        "namespaces/lab/resourceclaims",
        claim(
            "lab",
            "moved",
            "uid-new",
            &[("scope", "oscilloscope-skao-int-0001")],
        ),
    );
    api.put_object(
        "namespaces/lab/resourceclaims",
        claim(
            "lab",
            "gone",
            "uid-3",
            &[("scope", "oscilloscope-skao-int-0099")],
        ),
    );
    let claims = [
        ("lab", "uid-1", "scopes"),
        ("lab", "uid-old", "moved"),
        ("lab", "uid-2", "missing"),
        ("lab", "uid-3", "gone"),
        ("../x", "uid-4", "bad"),
    ];
    let answer = node.kubelet.prepare(DRIVER, Version::V1, &claims).unwrap();
    let errors: BTreeMap<&str, &str> = answer
        .claims
        .iter()
        .map(|(uid, r)| (uid.as_str(), r.error.as_str()))
        .collect();
    assert_eq!(
        errors,
        BTreeMap::from([
            ("uid-1", ""),
            ("uid-old", "ResourceClaim lab/moved has UID uid-new, not uid-old (deleted and created again?)"),
            ("uid-2", "ResourceClaim lab/missing does not exist"),
            (
                "uid-3",
                "device oscilloscope-skao-int-0099 is not in the config (removed since it was allocated?)"
            ),
            ("uid-4", "namespace \"../x\" is not a DNS label"),
        ]),
        "{}",
        node.log()
    );
    let devices: Vec<(Vec<String>, String, String, Vec<String>)> = answer.claims["uid-1"]
        .devices
        .iter()
        .map(|d| {
            (
                d.request_names.to_vec(),
                d.pool_name.clone(),
                d.device_name.clone(),
                d.cdi_device_ids.to_vec(),
            )
        })
        .collect();
    let id = vec!["spookd.dev/claim=uid-1".to_owned()];
    assert_eq!(
        devices,
        [
            (
                vec!["scope".to_owned()],
                "spookd".to_owned(),
                "oscilloscope-skao-int-0002".to_owned(),
                id.clone()
            ),
            (
                vec!["scope".to_owned()],
                "spookd".to_owned(),
                "oscilloscope-skao-int-0001".to_owned(),
                id.clone()
            ),
        ]
    );
    let spec = node.cdi().join("spookd.dev-claim_uid-1.yaml");
    assert_eq!(spec_env(&spec), two_scopes_env());
    let specs: Vec<_> = std::fs::read_dir(node.cdi())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(specs.len(), 1, "{specs:?}");

    // Repeated, and over v1beta1: the same answer.
    let again = node
        .kubelet
        .prepare(DRIVER, Version::V1beta1, &claims[..1])
        .unwrap();
    assert_eq!(again.claims["uid-1"], answer.claims["uid-1"]);

    // spookd restarts: the spec stays, the plugin registers again, the answer is the same.
    node.spookd.as_mut().unwrap().terminate();
    assert!(spec.exists());
    let first = node.kubelet.registrations(DRIVER);
    node.spookd = Some(node.run(&api, &creds, &config.path(), &[]));
    let deadline = Instant::now() + WAIT;
    while node.kubelet.registrations(DRIVER) == first && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        node.kubelet.registrations(DRIVER),
        first + 1,
        "{}",
        node.log()
    );
    let again = node
        .kubelet
        .prepare(DRIVER, Version::V1, &claims[..1])
        .unwrap();
    assert_eq!(again.claims["uid-1"], answer.claims["uid-1"]);
    assert_eq!(spec_env(&spec), two_scopes_env());

    // The kubelet restarts: it finds the socket again.
    node.kubelet.restart();
    assert!(node.kubelet.wait_registered(DRIVER, WAIT).is_some());
    assert_eq!(node.kubelet.registrations(DRIVER), first + 2);

    // Unprepare removes the spec; unknown claims succeed; a bad UID is an error of its own.
    let gone = node
        .kubelet
        .unprepare(
            DRIVER,
            Version::V1,
            &[
                ("lab", "uid-1", "scopes"),
                ("lab", "uid-9", "x"),
                ("lab", "../../etc", "x"),
            ],
        )
        .unwrap();
    let errors: BTreeMap<&str, &str> = gone
        .claims
        .iter()
        .map(|(u, r)| (u.as_str(), r.error.as_str()))
        .collect();
    assert_eq!(
        errors,
        BTreeMap::from([
            (
                "../../etc",
                "claim UID \"../../etc\" is not 1 to 64 letters, digits and '-' (a letter or digit at each end)"
            ),
            ("uid-1", ""),
            ("uid-9", ""),
        ])
    );
    assert!(!spec.exists());
    // A deleted socket is served again and registered anew.
    std::fs::remove_file(node.dir.join("registry/spookd.dev-reg.sock")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while node.kubelet.registrations(DRIVER) < first + 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        node.kubelet.registrations(DRIVER),
        first + 3,
        "{}",
        node.log()
    );
}

/// A busybox image podman can run without a registry.
/// Claims whose identity or allocation quotes 1 MB (a device name, a pool, the API's UID, the
/// kubelet's UID): each refusal the kubelet gets, and each log line, is cut; four such claims in
/// one call are answered (whole refusals made the answer larger than gRPC's 4 MiB, failing
/// every claim in the call).
#[test]
fn prepare_refusals_that_quote_hostile_claims_are_cut() {
    let (api, creds) = apiserver::with_credentials("dra-cut");
    let tmp = TempDir::new();
    let config = ConfigVolume::new(tmp.join("cm"), CONFIG);
    let node = Node::start("node1", &api, &creds, &config.path(), &[]);
    let reg = node.kubelet.wait_registered(DRIVER, WAIT);
    reg.unwrap_or_else(|| panic!("not registered\n{}", node.log()));
    let huge = "h".repeat(1 << 20);
    let mut c = claim("lab", "dev", "uid-dev", &[("scope", "x")]);
    c["status"]["allocation"]["devices"]["results"][0]["device"] = huge.clone().into();
    api.put_object("namespaces/lab/resourceclaims", c);
    let mut c = claim("lab", "pool", "uid-pool", &[("scope", "x")]);
    c["status"]["allocation"]["devices"]["results"][0]["pool"] = huge.clone().into();
    api.put_object("namespaces/lab/resourceclaims", c);
    let mut c = claim("lab", "uid", "uid-x", &[("scope", "x")]);
    c["metadata"]["uid"] = huge.clone().into();
    api.put_object("namespaces/lab/resourceclaims", c);
    let claims = [
        ("lab", "uid-dev", "dev"),
        ("lab", "uid-pool", "pool"),
        ("lab", "uid-x", "uid"),
        ("lab", huge.as_str(), "kubelet"),
    ];
    let answer = node.kubelet.prepare(DRIVER, Version::V1, &claims).unwrap();
    assert_eq!(answer.claims.len(), 4);
    for (uid, r) in &answer.claims {
        let uid = &uid[..uid.len().min(8)];
        assert!(
            !r.error.is_empty() && r.error.len() <= 1024,
            "{uid}: {}",
            r.error.len()
        );
        assert!(r.error.contains(" bytes cut]… "), "{uid}: {}", r.error);
    }
    assert!(
        node.spookd().wait_log("cannot prepare claim", 4),
        "{}",
        node.log()
    );
    let long: Vec<usize> = (node.log().lines().map(str::len))
        .filter(|&n| n > 1200)
        .collect();
    assert!(long.is_empty(), "log lines of {long:?} bytes");
}

fn busybox_image() -> &'static str {
    const IMAGE: &str = "localhost/spookd-busybox:test";
    let exists = std::process::Command::new("podman")
        .args(["image", "exists", IMAGE])
        .status()
        .is_ok_and(|s| s.success());
    if !exists {
        let dir = TempDir::new();
        std::fs::create_dir_all(dir.join("root/bin")).unwrap();
        std::fs::copy("/bin/busybox", dir.join("root/bin/busybox")).expect("busybox-static");
        let tar = dir.join("root.tar");
        let ok = std::process::Command::new("tar")
            .arg("-C")
            .arg(dir.join("root"))
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let ok = std::process::Command::new("podman")
            .arg("import")
            .arg(&tar)
            .arg(IMAGE)
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
    }
    IMAGE
}

/// `env` in a busybox container given CDI devices `ids`, as this machine's podman runs it (runc
/// on cgroup v1 with cgroupfs; rlimits no higher than the sandbox allows).
fn podman_env(ids: &[&str]) -> std::process::Output {
    std::process::Command::new("podman")
        .args([
            "--runtime",
            "/usr/sbin/runc",
            "--cgroup-manager",
            "cgroupfs",
            "run",
            "--rm",
        ])
        .args([
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ])
        .args(ids.iter().flat_map(|id| ["--device", id]))
        .args([busybox_image(), "/bin/busybox", "env"])
        .output()
        .unwrap()
}

#[test]
fn podman_runs_a_container_with_a_prepared_claims_env() {
    let root = crate::util::is_root();
    // Rootful podman, as CI runs it: as another user it would need a setup of its own.
    if !root {
        eprintln!("podman test skipped: it runs podman as root");
        return;
    }
    let podman = std::process::Command::new("podman")
        .arg("--version")
        .output()
        .is_ok();
    assert!(
        podman,
        "podman is not installed (scripts/prereqs installs it as root)"
    );
    let (api, creds) = apiserver::with_credentials("dra-podman");
    let tmp = TempDir::new();
    let config = ConfigVolume::new(tmp.join("cm"), CONFIG);
    // podman 4.3 reads CDI specs from /etc/cdi and /var/run/cdi only: a driver name of this run's
    // own keeps its spec apart from anything else there.
    let driver = format!("t{}.spookd.test", std::process::id());
    let node = Node::start(
        "node1",
        &api,
        &creds,
        &config.path(),
        &["--dra-driver", &driver, "--cdi-dir", "/var/run/cdi"],
    );
    assert!(
        node.kubelet.wait_registered(&driver, WAIT).is_some(),
        "{}",
        node.log()
    );
    let mut object = claim(
        "lab",
        "scopes",
        "uid-podman",
        &[
            ("scope", "oscilloscope-skao-int-0001"),
            ("scope", "oscilloscope-skao-int-0002"),
        ],
    );
    for r in object["status"]["allocation"]["devices"]["results"]
        .as_sequence_mut()
        .unwrap()
    {
        r["driver"] = driver.clone().into();
    }
    api.put_object("namespaces/lab/resourceclaims", object);
    let answer = node
        .kubelet
        .prepare(&driver, Version::V1, &[("lab", "uid-podman", "scopes")])
        .unwrap();
    let prepared = &answer.claims["uid-podman"];
    assert_eq!(prepared.error, "", "{}", node.log());
    let cdi_id = prepared.devices[0].cdi_device_ids[0].clone();
    assert_eq!(cdi_id, format!("{driver}/claim=uid-podman"));
    let out = podman_env(&[&cdi_id]);
    let spec = PathBuf::from("/var/run/cdi").join(format!("{driver}-claim_uid-podman.yaml"));
    let unprepared =
        node.kubelet
            .unprepare(&driver, Version::V1, &[("lab", "uid-podman", "scopes")]);
    assert!(!spec.exists());
    assert!(
        out.status.success(),
        "podman: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("SKAOINT_"))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(seen, two_scopes_env());
    assert_eq!(unprepared.unwrap().claims["uid-podman"].error, "");
}

/// A claim the scheduler made for a pod's extended resources (KEP-5004): its annotation, and one
/// request per (container, resource), `results` as (request, device).
fn extended_claim(name: &str, uid: &str, driver: &str, results: &[(&str, &str)]) -> Value {
    let mut c = claim("lab", name, uid, results);
    c["metadata"]["annotations"] =
        serde_yaml::from_str("{resource.kubernetes.io/extended-resource-claim: 'true'}").unwrap();
    for r in c["status"]["allocation"]["devices"]["results"]
        .as_sequence_mut()
        .unwrap()
    {
        r["driver"] = driver.into();
    }
    c
}

/// A prepared claim's CDI IDs by request, and each CDI device's env (from the spec in `cdi`).
type ByRequest = BTreeMap<String, Vec<String>>;
fn prepared(
    answer: &spookd::dra::proto::NodePrepareResourceResponse,
    cdi: &Path,
    driver: &str,
    uid: &str,
) -> (ByRequest, BTreeMap<String, BTreeMap<String, String>>) {
    assert_eq!(answer.error, "");
    let mut by_request = ByRequest::new();
    for d in &answer.devices {
        assert_eq!(d.request_names.len(), 1, "{d:?}");
        let ids = by_request.entry(d.request_names[0].clone()).or_default();
        ids.extend(d.cdi_device_ids.iter().cloned());
        ids.sort();
        ids.dedup();
    }
    let path = cdi.join(format!("{driver}-claim_{uid}.yaml"));
    let spec: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let envs = spec["devices"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|d| {
            let env = d["containerEdits"]["env"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|e| {
                    let (k, v) = e.as_str().unwrap().split_once('=').unwrap();
                    (k.to_owned(), v.to_owned())
                })
                .collect();
            (
                format!("{driver}/claim={}", d["name"].as_str().unwrap()),
                env,
            )
        })
        .collect();
    (by_request, envs)
}

/// The env each container of a pod with unchanged `resources.limits` gets from the claim the
/// scheduler made: one CDI device per request, each numbered within its request. Container 0
/// asks one scope; container 1 one scope and one widget (its requests sorted by resource name, as
/// the scheduler names them; spookd reads them from the claim). A second pod's one container asks
/// two scopes: DEV0 and DEV1 within its request. With podman as root, each container runs with
/// only its own CDI IDs and its env is read inside it.
#[test]
fn a_scheduler_made_claim_gives_each_container_only_its_requests_env() {
    let (api, creds) = apiserver::with_credentials("dra-per-request");
    let tmp = TempDir::new();
    let config = ConfigVolume::new(tmp.join("cm"), CONFIG);
    let podman = crate::util::is_root();
    let driver = if podman {
        format!("r{}.spookd.test", std::process::id())
    } else {
        DRIVER.to_owned()
    };
    let mut extra = vec!["--dra-driver", driver.as_str()];
    if podman {
        // podman 4.3 reads CDI specs from /etc/cdi and /var/run/cdi only.
        extra.extend(["--cdi-dir", "/var/run/cdi"]);
    }
    let node = Node::start("node1", &api, &creds, &config.path(), &extra);
    let cdi = if podman {
        PathBuf::from("/var/run/cdi")
    } else {
        node.cdi()
    };
    assert!(
        node.kubelet.wait_registered(&driver, WAIT).is_some(),
        "{}",
        node.log()
    );
    let claims = "namespaces/lab/resourceclaims";
    api.put_object(
        claims,
        extended_claim(
            "pod-a-extended-resources-x7k2q",
            "uid-a",
            &driver,
            &[
                ("container-0-request-0", "oscilloscope-skao-int-0002"),
                ("container-1-request-0", "widget-example-com-sg-1"),
                ("container-1-request-1", "oscilloscope-skao-int-0001"),
            ],
        ),
    );
    api.put_object(
        claims,
        extended_claim(
            "pod-b-extended-resources-p4m9z",
            "uid-b",
            &driver,
            &[
                ("container-0-request-0", "oscilloscope-skao-int-0002"),
                ("container-0-request-0", "oscilloscope-skao-int-0001"),
            ],
        ),
    );
    let answer = node
        .kubelet
        .prepare(
            &driver,
            Version::V1,
            &[
                ("lab", "uid-a", "pod-a-extended-resources-x7k2q"),
                ("lab", "uid-b", "pod-b-extended-resources-p4m9z"),
            ],
        )
        .unwrap();
    let id = |s: &str| format!("{driver}/claim={s}");
    let (a, a_env) = prepared(&answer.claims["uid-a"], &cdi, &driver, "uid-a");
    assert_eq!(
        a,
        BTreeMap::from([
            ("container-0-request-0".to_owned(), vec![id("uid-a-r0")]),
            ("container-1-request-0".to_owned(), vec![id("uid-a-r1")]),
            ("container-1-request-1".to_owned(), vec![id("uid-a-r2")]),
        ])
    );
    let scope = |n: &str, ip: &str| {
        env(&[
            ("SKAOINT_OSCILLOSCOPE_DEV0_ID", n),
            ("SKAOINT_OSCILLOSCOPE_DEV0_IP", ip),
            ("SKAOINT_OSCILLOSCOPE_DEV0_TYPE", "skao.int/oscilloscope"),
            ("SKAOINT_OSCILLOSCOPE_ID", n),
            ("SKAOINT_OSCILLOSCOPE_IP", ip),
            ("SKAOINT_OSCILLOSCOPE_NUM_DEVICES", "1"),
            ("SKAOINT_OSCILLOSCOPE_TYPE", "skao.int/oscilloscope"),
        ])
    };
    let widget = env(&[
        ("EXAMPLECOM_WIDGET_DEV0_ID", "sg-1"),
        ("EXAMPLECOM_WIDGET_DEV0_TYPE", "example.com/widget"),
        ("EXAMPLECOM_WIDGET_ID", "sg-1"),
        ("EXAMPLECOM_WIDGET_NUM_DEVICES", "1"),
        ("EXAMPLECOM_WIDGET_TYPE", "example.com/widget"),
    ]);
    assert_eq!(
        a_env,
        BTreeMap::from([
            (id("uid-a-r0"), scope("0002", "10.0.10.216")),
            (id("uid-a-r1"), widget.clone()),
            (id("uid-a-r2"), scope("0001", "10.0.10.215")),
        ])
    );
    let (b, b_env) = prepared(&answer.claims["uid-b"], &cdi, &driver, "uid-b");
    assert_eq!(
        b,
        BTreeMap::from([("container-0-request-0".to_owned(), vec![id("uid-b-r0")])])
    );
    assert_eq!(b_env, BTreeMap::from([(id("uid-b-r0"), two_scopes_env())]));

    // An ordinary claim keeps one CDI device for the whole claim.
    api.put_object(
        claims,
        claim(
            "lab",
            "plain",
            "uid-c",
            &[("scope", "oscilloscope-skao-int-0001")],
        ),
    );
    let mut plain = claim(
        "lab",
        "plain",
        "uid-c",
        &[("scope", "oscilloscope-skao-int-0001")],
    );
    plain["status"]["allocation"]["devices"]["results"][0]["driver"] = driver.clone().into();
    api.put_object(claims, plain);
    let answer = node
        .kubelet
        .prepare(&driver, Version::V1, &[("lab", "uid-c", "plain")])
        .unwrap();
    let (c, _) = prepared(&answer.claims["uid-c"], &cdi, &driver, "uid-c");
    assert_eq!(c, BTreeMap::from([("scope".to_owned(), vec![id("uid-c")])]));

    if podman {
        // Each container as the kubelet starts it: with the CDI IDs of its own requests.
        let containers: [(&[&str], BTreeMap<String, String>); 3] = [
            (&["container-0-request-0"], scope("0002", "10.0.10.216")),
            (
                &["container-1-request-0", "container-1-request-1"],
                widget
                    .into_iter()
                    .chain(scope("0001", "10.0.10.215"))
                    .collect(),
            ),
            (&["container-0-request-0"], two_scopes_env()),
        ];
        for (n, (requests, want)) in containers.iter().enumerate() {
            let by = if n < 2 { &a } else { &b };
            let ids: Vec<&str> = requests
                .iter()
                .flat_map(|r| by[*r].iter().map(String::as_str))
                .collect();
            let out = podman_env(&ids);
            assert!(
                out.status.success(),
                "podman: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let seen: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_once('='))
                .filter(|(k, _)| k.starts_with("SKAOINT_") || k.starts_with("EXAMPLECOM_"))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            assert_eq!(&seen, want, "container {n} ({requests:?})");
        }
    } else {
        eprintln!("podman part skipped: it runs podman as root");
    }
    for (uid, name) in [
        ("uid-a", "pod-a-extended-resources-x7k2q"),
        ("uid-b", "pod-b-extended-resources-p4m9z"),
        ("uid-c", "plain"),
    ] {
        let r = node
            .kubelet
            .unprepare(&driver, Version::V1, &[("lab", uid, name)]);
        assert_eq!(r.unwrap().claims[uid].error, "");
        assert!(!cdi.join(format!("{driver}-claim_{uid}.yaml")).exists());
    }
}

/// The kubelet's device-health stream (NodeWatchResources, listed in the registration): every
/// device this node reaches, Healthy at once; a probe failing turns its device Unhealthy with
/// what the probe saw, and it heals when the probe succeeds again. Devices of other nodes are
/// not listed.
#[test]
fn the_kubelet_sees_each_devices_health_on_its_stream() {
    use spookd::dra::proto::HealthStatus::{HEALTHY, UNHEALTHY};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let config = format!(
        r#"
deviceMapping:
  - hosts: [node1]
    devices:
      - resourceName: skao.int/oscilloscope
        instanceID: "0001"
        healthCheck: {{tcp: "{addr}", interval: 100ms, timeout: 50ms, failureThreshold: 1}}
      - resourceName: example.com/widget
        instanceID: sg-1
  - hosts: [node2]
    devices:
      - resourceName: skao.int/oscilloscope
        instanceID: "0009"
"#
    );
    let (api, creds) = apiserver::with_credentials("dra-health");
    let tmp = TempDir::new();
    let volume = ConfigVolume::new(tmp.join("cm"), &config);
    let node = Node::start("node1", &api, &creds, &volume.path(), &[]);
    let reg = node.kubelet.wait_registered(DRIVER, WAIT);
    let reg = reg.unwrap_or_else(|| panic!("not registered\n{}", node.log()));
    assert!(reg
        .versions
        .iter()
        .any(|v| v == "v1alpha1.DRAResourceHealth"));
    let seen = node.kubelet.watch_health(DRIVER);
    let wait = |want: &[(&str, spookd::dra::proto::HealthStatus)]| {
        let deadline = spookd::clock::later(Instant::now(), WAIT);
        loop {
            let now: Option<Vec<(String, spookd::dra::proto::HealthStatus)>> = seen
                .lock()
                .unwrap()
                .as_ref()
                .map(|l| l.iter().map(|(d, h, _)| (d.clone(), *h)).collect());
            let want: Vec<(String, _)> = want.iter().map(|(d, h)| (d.to_string(), *h)).collect();
            if now.as_ref() == Some(&want) {
                return seen.lock().unwrap().clone().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "expected {want:?}, seen {now:?}\n{}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait(&[
        ("oscilloscope-skao-int-0001", HEALTHY),
        ("widget-example-com-sg-1", HEALTHY),
    ]);
    drop(listener);
    let list = wait(&[
        ("oscilloscope-skao-int-0001", UNHEALTHY),
        ("widget-example-com-sg-1", HEALTHY),
    ]);
    assert!(list[0].2.contains(&addr.to_string()), "{list:?}");
    assert_eq!(list[1].2, "");
    let _listener = std::net::TcpListener::bind(addr).unwrap();
    wait(&[
        ("oscilloscope-skao-int-0001", HEALTHY),
        ("widget-example-com-sg-1", HEALTHY),
    ]);
    assert!(node.spookd().wait_log("Unhealthy", 1));
}

/// The taints of the stored slices' devices: device → (key, value, effect).
fn taints_of(api: &ApiServer) -> BTreeMap<String, Vec<(String, String, String)>> {
    let mut out = BTreeMap::new();
    for slice in api.objects("resourceslices").values() {
        for d in slice["spec"]["devices"].as_sequence().unwrap() {
            let taints: Vec<(String, String, String)> =
                (d["taints"].as_sequence().into_iter().flatten())
                    .map(|t| {
                        let s = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
                        (s("key"), s("value"), s("effect"))
                    })
                    .collect();
            out.insert(d["name"].as_str().unwrap().to_owned(), taints);
        }
    }
    out
}

/// No instrument that is off handed out: node2's probe finds a device only node2 reaches
/// Unhealthy; its report (a Lease of its own) reaches the leader, node1, which cannot reach the
/// device, and the leader taints it NoSchedule in its slice at the same generation; the probe
/// succeeding again removes the taint. A probe flapping meanwhile costs a bounded number of
/// writes: the report at most every 5 s (and its renewals), the slices as often.
#[test]
fn a_device_no_live_host_reaches_is_tainted_and_untainted() {
    let scope = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = scope.local_addr().unwrap();
    let config = format!(
        r#"
deviceMapping:
  - hosts: [node1]
    devices:
      - resourceName: example.com/widget
        instanceID: sg-1
  - hosts: [node2]
    devices:
      - resourceName: skao.int/oscilloscope
        instanceID: "0002"
        healthCheck: {{tcp: "{addr}", interval: 100ms, timeout: 50ms, failureThreshold: 1}}
"#
    );
    let (api, creds) = apiserver::with_credentials("dra-taints");
    let tmp = TempDir::new();
    let volume = ConfigVolume::new(tmp.join("cm"), &config);
    let node1 = Node::start("node1", &api, &creds, &volume.path(), &[]);
    assert!(
        api.wait_objects("resourceslices", WAIT, |s| s.len() == 2),
        "{}",
        node1.log()
    );
    let node2 = Node::start("node2", &api, &creds, &volume.path(), &[]);
    let report = "spookd-dra-spookd-dev.node2";
    let deadline = spookd::clock::later(Instant::now(), WAIT);
    while !api.reports().contains_key(report) {
        assert!(Instant::now() < deadline, "no report\n{}", node2.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(lease_holder(&api).as_deref(), Some("node1"));
    let none = BTreeMap::from([
        ("oscilloscope-skao-int-0002".to_owned(), vec![]),
        ("widget-example-com-sg-1".to_owned(), vec![]),
    ]);
    assert_eq!(taints_of(&api), none);
    let generation_before = generation(&api.objects("resourceslices"));

    drop(scope);
    let ok = api.wait_objects("resourceslices", WAIT, |_| {
        !taints_of(&api)["oscilloscope-skao-int-0002"].is_empty()
    });
    assert!(ok, "{:#?}\n{}\n{}", api.reports(), node1.log(), node2.log());
    let taints = taints_of(&api);
    let (key, value, effect) = &taints["oscilloscope-skao-int-0002"][0];
    assert_eq!(
        (key.as_str(), effect.as_str()),
        ("spookd.dev/unhealthy", "NoSchedule")
    );
    assert!(
        value.starts_with(&addr.to_string().replace(':', "-")) && value.contains("refused"),
        "{value}"
    );
    assert!(
        value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
    );
    assert!(taints["widget-example-com-sg-1"].is_empty());
    assert_eq!(
        generation(&api.objects("resourceslices")),
        generation_before
    );
    // The report says what node2's probe saw.
    let r = &api.reports()[report];
    assert_eq!(r["spec"]["holderIdentity"], "node2");
    let listed = r["metadata"]["annotations"]["spookd.dev/unhealthy"]
        .as_str()
        .unwrap();
    assert_eq!(listed, format!("oscilloscope-skao-int-0002 {value}\n"));
    let mut tainted = api.objects("resourceslices");
    tainted.retain(|_, s| s["spec"]["devices"][0]["taints"].is_sequence());
    keep_for_validation("tainted-slices", &tainted);
    let slice = tainted.values().next().unwrap();
    assert!(slice["spec"]["devices"].as_sequence().unwrap().len() <= 64);

    // Flapping: the probe's target comes and goes every 150 ms for 6 s.
    let start = Instant::now();
    let count = |api: &ApiServer, what: &str| {
        api.requests()
            .iter()
            .filter(|r| r.method == "PUT" && r.target.contains(what))
            .count()
    };
    let (reports_before, slices_before) = (count(&api, report), count(&api, "/resourceslices/"));
    let mut listener = None;
    while start.elapsed() < Duration::from_secs(6) {
        listener = match listener {
            None => Some(std::net::TcpListener::bind(addr).unwrap()),
            Some(_) => None,
        };
        std::thread::sleep(Duration::from_millis(150));
    }
    let secs = start.elapsed().as_secs_f64();
    let (reports, slices) = (
        count(&api, report) - reports_before,
        count(&api, "/resourceslices/") - slices_before,
    );
    // Changes at most every 5 s, plus renewals every third of the 2 s Lease duration.
    let bound = (secs / 5.0).ceil() as usize + (secs / (2.0 / 3.0)).ceil() as usize + 1;
    assert!(
        reports <= bound,
        "{reports} report writes in {secs:.1} s (bound {bound})"
    );
    assert!(
        slices <= (secs / 5.0).ceil() as usize + 1,
        "{slices} slice writes in {secs:.1} s"
    );
    eprintln!("flapping for {secs:.1} s: {reports} report writes, {slices} slice writes");

    // Healthy again: the taint goes.
    let _scope = listener.unwrap_or_else(|| std::net::TcpListener::bind(addr).unwrap());
    let ok = api.wait_objects("resourceslices", Duration::from_secs(15), |_| {
        taints_of(&api) == none
    });
    assert!(ok, "{:#?}\n{}", taints_of(&api), node2.log());
    assert_eq!(
        generation(&api.objects("resourceslices")),
        generation_before
    );
}

/// `scripts/demo-dra`: the whole flow without a cluster, printed (ignored by the suite).
#[test]
#[ignore = "a demo: scripts/demo-dra runs it"]
fn demo() {
    let say = |s: &str| println!("\n==> {s}");
    let (api, creds) = apiserver::with_credentials("dra-demo");
    let tmp = TempDir::new();
    let config = ConfigVolume::new(tmp.join("cm"), CONFIG);
    say("the config (two scopes, one widget; 0001 reaches node1 and node2)");
    print!("{CONFIG}");
    let root = crate::util::is_root();
    let podman = root
        && std::process::Command::new("podman")
            .arg("--version")
            .output()
            .is_ok();
    let driver = if podman {
        format!("demo{}.spookd.test", std::process::id())
    } else {
        DRIVER.to_owned()
    };
    let mut extra = vec!["--dra-driver", driver.as_str()];
    if podman {
        extra.extend(["--cdi-dir", "/var/run/cdi"]);
    }
    say(&format!("spookd --dra --dra-driver {driver} --node-name node1 … (against an HTTPS API stand-in and a kubelet stand-in)"));
    let node = Node::start("node1", &api, &creds, &config.path(), &extra);
    assert!(
        api.wait_objects("resourceslices", WAIT, |s| s.len() == 2),
        "{}",
        node.log()
    );
    say("it leads (Lease spookd-dra-…) and published these ResourceSlices and DeviceClasses");
    for (_, o) in api
        .objects("resourceslices")
        .into_iter()
        .chain(api.objects("deviceclasses"))
    {
        println!(
            "---\n{}",
            serde_yaml::to_string(&strip(o)).unwrap().trim_end()
        );
    }
    let reg = node.kubelet.wait_registered(&driver, WAIT).unwrap();
    say(&format!(
        "the kubelet stand-in found the plugin: endpoint {}, versions {:?}",
        reg.endpoint, reg.versions
    ));
    let mut object = claim(
        "lab",
        "scopes",
        "0b7c4e36-5a1f-4c9e-9d0e-1f2a3b4c5d6e",
        &[
            ("scope", "oscilloscope-skao-int-0001"),
            ("scope", "oscilloscope-skao-int-0002"),
        ],
    );
    for r in object["status"]["allocation"]["devices"]["results"]
        .as_sequence_mut()
        .unwrap()
    {
        r["driver"] = driver.clone().into();
    }
    api.put_object("namespaces/lab/resourceclaims", object);
    say("the scheduler allocated both scopes to claim lab/scopes; the kubelet calls NodePrepareResources");
    let uid = "0b7c4e36-5a1f-4c9e-9d0e-1f2a3b4c5d6e";
    let answer = node
        .kubelet
        .prepare(&driver, Version::V1, &[("lab", uid, "scopes")])
        .unwrap();
    for d in &answer.claims[uid].devices {
        println!(
            "device {} (pool {}, request {:?}) → CDI {:?}",
            d.device_name, d.pool_name, d.request_names, d.cdi_device_ids
        );
    }
    let cdi_dir = if podman {
        PathBuf::from("/var/run/cdi")
    } else {
        node.cdi()
    };
    let spec = cdi_dir.join(format!("{driver}-claim_{uid}.yaml"));
    say(&format!("the CDI spec {}", spec.display()));
    print!("{}", std::fs::read_to_string(&spec).unwrap());
    if podman {
        let id = format!("{driver}/claim={uid}");
        say(&format!(
            "podman run --device {id} busybox env (the container runtime applies the spec)"
        ));
        let out = podman_env(&[&id]);
        for line in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("SKAOINT_"))
        {
            println!("{line}");
        }
        print!("{}", String::from_utf8_lossy(&out.stderr));
    } else {
        say("(podman runs the container only as root: skipped)");
    }
    node.kubelet
        .unprepare(&driver, Version::V1, &[("lab", uid, "scopes")])
        .unwrap();
    say(&format!(
        "NodeUnprepareResources: the spec is gone: {}",
        !spec.exists()
    ));
}

#[test]
fn a_call_with_too_many_claims_is_refused_and_a_second_spookd_waits() {
    let (api, creds) = apiserver::with_credentials("dra-bounds");
    let tmp = TempDir::new();
    let config = ConfigVolume::new(tmp.join("cm"), CONFIG);
    let node = Node::start("node1", &api, &creds, &config.path(), &[]);
    assert!(
        node.kubelet.wait_registered(DRIVER, WAIT).is_some(),
        "{}",
        node.log()
    );
    let uids: Vec<String> = (0..65).map(|i| format!("uid-{i}")).collect();
    let claims: Vec<(&str, &str, &str)> = uids.iter().map(|u| ("lab", u.as_str(), "c")).collect();
    let e = node
        .kubelet
        .prepare(DRIVER, Version::V1, &claims)
        .unwrap_err();
    match e {
        grpcio::Error::RpcFailure(s) => {
            assert_eq!(s.code(), grpcio::RpcStatusCode::INVALID_ARGUMENT);
            assert_eq!(s.message(), "65 claims in one call; at most 64");
        }
        other => panic!("{other:?}"),
    }
    let e = node
        .kubelet
        .unprepare(DRIVER, Version::V1beta1, &claims)
        .unwrap_err();
    assert!(
        matches!(e, grpcio::Error::RpcFailure(s) if s.code() == grpcio::RpcStatusCode::INVALID_ARGUMENT)
    );
    // 64 are taken (each gets its own answer).
    let answer = node
        .kubelet
        .unprepare(DRIVER, Version::V1, &claims[..64])
        .unwrap();
    assert_eq!(answer.claims.len(), 64);

    // A second spookd for the same driver on the same node waits for the first's lock and
    // touches nothing meanwhile.
    let second = node.run(&api, &creds, &config.path(), &[]);
    assert!(
        second.wait_log("another spookd serves", 1),
        "{}",
        second.log()
    );
    let first = node.kubelet.registrations(DRIVER);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(node.kubelet.registrations(DRIVER), first);
    assert!(!second.log().contains("serving"), "{}", second.log());
}
