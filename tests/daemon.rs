//! The daemon against the kubelet stand-in.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use futures_util::StreamExt;
use grpcio::{CallOption, RpcStatusCode};
use spookd::kubelet::proto::{ContainerPreferredAllocationRequest, PreferredAllocationRequest};

use crate::util::{own_sockets, ConfigVolume, Kubelet, Setup, Spookd, TempDir, SEED, WAIT};

fn env_of(
    resp: &spookd::kubelet::proto::AllocateResponse,
    container: usize,
) -> BTreeMap<String, String> {
    resp.container_responses[container]
        .envs
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn registers_each_resource_and_serves_the_exact_devices_and_env() {
    let s = Setup::new("node1", SEED);
    s.expect_resources(&["example.com/thingamajig", "example.com/widget"]);
    s.expect_devices("example.com/widget", &["0001"]);
    s.expect_devices("example.com/thingamajig", &["0001"]);

    let plugins = s.kubelet.plugins();
    for (resource, plugin) in &plugins {
        // A bare file name in the dir (not a path), fresh and ours, private to root.
        assert!(
            plugin.endpoint.starts_with("spookd-"),
            "{resource}: {}",
            plugin.endpoint
        );
        assert!(!plugin.endpoint.contains('/'));
        let meta = fs::metadata(s.dp().join(&plugin.endpoint)).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{resource}");
        assert_eq!(
            plugin.devices.as_ref().unwrap(),
            &[("0001".to_string(), "Healthy".to_string())]
        );
        let options = plugin.options.as_ref().unwrap();
        assert!(!options.pre_start_required);
        assert!(options.get_preferred_allocation_available);
    }
    let endpoints: Vec<&String> = plugins.values().map(|p| &p.endpoint).collect();
    assert_ne!(endpoints[0], endpoints[1]);

    let resp = s
        .kubelet
        .allocate("example.com/widget", &[&["0001"]])
        .unwrap();
    assert_eq!(resp.container_responses.len(), 1);
    assert_eq!(
        env_of(&resp, 0),
        map(&[
            ("EXAMPLECOM_WIDGET_DEV0_ID", "0001"),
            ("EXAMPLECOM_WIDGET_DEV0_IP", "192.168.0.200"),
            ("EXAMPLECOM_WIDGET_DEV0_PORT", "12345"),
            ("EXAMPLECOM_WIDGET_DEV0_TYPE", "example.com/widget"),
            ("EXAMPLECOM_WIDGET_ID", "0001"),
            ("EXAMPLECOM_WIDGET_IP", "192.168.0.200"),
            ("EXAMPLECOM_WIDGET_NUM_DEVICES", "1"),
            ("EXAMPLECOM_WIDGET_PORT", "12345"),
            ("EXAMPLECOM_WIDGET_TYPE", "example.com/widget"),
        ])
    );
    let c = &resp.container_responses[0];
    assert!(
        c.mounts.is_empty()
            && c.devices.is_empty()
            && c.annotations.is_empty()
            && c.cdi_devices.is_empty()
    );

    let resp = s
        .kubelet
        .allocate("example.com/thingamajig", &[&["0001"]])
        .unwrap();
    assert_eq!(
        env_of(&resp, 0),
        map(&[
            ("EXAMPLECOM_THINGAMAJIG_DEV0_ID", "0001"),
            (
                "EXAMPLECOM_THINGAMAJIG_DEV0_TYPE",
                "example.com/thingamajig"
            ),
            ("EXAMPLECOM_THINGAMAJIG_ID", "0001"),
            ("EXAMPLECOM_THINGAMAJIG_NUM_DEVICES", "1"),
            ("EXAMPLECOM_THINGAMAJIG_TYPE", "example.com/thingamajig"),
        ])
    );
    // node1 does not reach node3's oscilloscope.
    assert!(!s.kubelet.plugins().contains_key("skao.int/oscilloscope"));
}

const MULTI: &str = r#"
deviceMapping:
  - hosts: [node1]
    devices:
      - {resourceName: skao.int/signal-generator, instanceID: b, env: {IP: 10.0.0.2}}
      - {resourceName: skao.int/signal-generator, instanceID: a, env: {IP: 10.0.0.1}}
      - {resourceName: skao.int/signal-generator, instanceID: c}
"#;

#[test]
fn allocate_answers_each_container_in_order_and_refuses_unknown_ids() {
    let s = Setup::new("node1", MULTI);
    s.expect_devices("skao.int/signal-generator", &["a", "b", "c"]);
    let r = "skao.int/signal-generator";
    let resp = s.kubelet.allocate(r, &[&["b", "a"], &["c"]]).unwrap();
    assert_eq!(resp.container_responses.len(), 2);
    assert_eq!(
        env_of(&resp, 0),
        map(&[
            ("SKAOINT_SIGNAL_GENERATOR_DEV0_ID", "a"),
            ("SKAOINT_SIGNAL_GENERATOR_DEV0_IP", "10.0.0.1"),
            (
                "SKAOINT_SIGNAL_GENERATOR_DEV0_TYPE",
                "skao.int/signal-generator"
            ),
            ("SKAOINT_SIGNAL_GENERATOR_DEV1_ID", "b"),
            ("SKAOINT_SIGNAL_GENERATOR_DEV1_IP", "10.0.0.2"),
            (
                "SKAOINT_SIGNAL_GENERATOR_DEV1_TYPE",
                "skao.int/signal-generator"
            ),
            ("SKAOINT_SIGNAL_GENERATOR_ID", "a"),
            ("SKAOINT_SIGNAL_GENERATOR_IP", "10.0.0.1"),
            ("SKAOINT_SIGNAL_GENERATOR_NUM_DEVICES", "2"),
            ("SKAOINT_SIGNAL_GENERATOR_TYPE", "skao.int/signal-generator"),
        ])
    );
    assert_eq!(
        env_of(&resp, 1),
        map(&[
            ("SKAOINT_SIGNAL_GENERATOR_DEV0_ID", "c"),
            (
                "SKAOINT_SIGNAL_GENERATOR_DEV0_TYPE",
                "skao.int/signal-generator"
            ),
            ("SKAOINT_SIGNAL_GENERATOR_ID", "c"),
            ("SKAOINT_SIGNAL_GENERATOR_NUM_DEVICES", "1"),
            ("SKAOINT_SIGNAL_GENERATOR_TYPE", "skao.int/signal-generator"),
        ])
    );

    let refused = |containers: &[&[&str]]| match s.kubelet.allocate(r, containers) {
        Err(grpcio::Error::RpcFailure(status)) => (status.code(), status.message().to_owned()),
        other => panic!("expected an RPC failure, got {other:?}"),
    };
    assert_eq!(
        refused(&[&["a"], &["zz"]]),
        (
            RpcStatusCode::INVALID_ARGUMENT,
            "skao.int/signal-generator has no device \"zz\"".to_owned()
        )
    );
    assert_eq!(
        refused(&[&["a", "a"]]),
        (
            RpcStatusCode::INVALID_ARGUMENT,
            "skao.int/signal-generator device \"a\" requested twice in one request".to_owned()
        )
    );
    // One device given to two containers of one request: refused, not handed out twice.
    assert_eq!(
        refused(&[&["a"], &["b", "a"]]),
        (
            RpcStatusCode::INVALID_ARGUMENT,
            "skao.int/signal-generator device \"a\" requested twice in one request".to_owned()
        )
    );
    // No container at all (was answered with an empty success).
    assert_eq!(
        refused(&[]),
        (
            RpcStatusCode::INVALID_ARGUMENT,
            "an Allocate request for skao.int/signal-generator names no container".to_owned()
        )
    );
    // A 1 MB ID: its refusal quotes it cut to 1 KiB (a whole one would be a 1 MB status
    // message, past what the kubelet's gRPC takes in trailers, and a 1 MB log line).
    let huge = "z".repeat(1 << 20);
    let (code, message) = refused(&[&[&huge]]);
    assert_eq!(code, RpcStatusCode::INVALID_ARGUMENT);
    assert!(message.len() <= 1100, "{}", message.len());
    assert!(
        message.starts_with("skao.int/signal-generator has no device \"zzz")
            && message.ends_with("zzz\"")
            && message.contains(" bytes cut]… "),
        "{message}"
    );
    // Still serving after refusals.
    assert!(s.kubelet.allocate(r, &[&["a"]]).is_ok());
    assert!(s
        .spookd
        .log()
        .contains("Allocate refused: skao.int/signal-generator has no device \"zz\""));
}

#[test]
fn preferred_allocation_and_prestart() {
    let s = Setup::new("node1", MULTI);
    s.expect_devices("skao.int/signal-generator", &["a", "b", "c"]);
    let client = s
        .kubelet
        .plugin_client("skao.int/signal-generator")
        .unwrap();
    let mut req = PreferredAllocationRequest::new();
    let mut c = ContainerPreferredAllocationRequest::new();
    c.available_deviceIDs = vec!["c".into(), "a".into(), "b".into()];
    c.must_include_deviceIDs = vec!["c".into()];
    c.allocation_size = 2;
    req.container_requests.push(c);
    let resp = client
        .get_preferred_allocation(&req, CallOption::default().timeout(WAIT))
        .unwrap();
    assert_eq!(resp.container_responses[0].deviceIDs, ["c", "a"]);
    client
        .pre_start_container(&Default::default(), CallOption::default().timeout(WAIT))
        .unwrap();
}

#[test]
fn config_edits_through_the_data_swap_are_applied_live() {
    let mut s = Setup::new("node1", SEED);
    s.expect_resources(&["example.com/thingamajig", "example.com/widget"]);
    let before = s.kubelet.plugins();

    // A device added to widget: pushed on the open stream; nothing re-registers.
    s.config.write(&SEED.replace(
        "      - resourceName: example.com/thingamajig",
        "      - resourceName: example.com/widget\n        instanceID: \"0002\"\n      - resourceName: example.com/thingamajig",
    ));
    s.expect_devices("example.com/widget", &["0001", "0002"]);
    let resp = s
        .kubelet
        .allocate("example.com/widget", &[&["0002"]])
        .unwrap();
    assert_eq!(env_of(&resp, 0)["EXAMPLECOM_WIDGET_ID"], "0002");
    assert!(!env_of(&resp, 0).contains_key("EXAMPLECOM_WIDGET_IP"));

    // A new resource: a new server and registration; thingamajig removed: empty list, then
    // its stream ends and its socket goes; widget keeps its server and stream throughout.
    s.config.write(
        r#"
deviceMapping:
  - hosts: [node1]
    devices:
      - {resourceName: example.com/widget, instanceID: "0001", env: {IP: 192.168.0.200, PORT: 12345}}
      - {resourceName: example.com/widget, instanceID: "0002"}
      - {resourceName: example.com/gizmo, instanceID: "g1"}
"#,
    );
    s.expect_devices("example.com/gizmo", &["g1"]);
    s.expect_devices("example.com/thingamajig", &[]);
    let gone = &before["example.com/thingamajig"].endpoint;
    let ok = s.kubelet.wait_until(WAIT, |k| {
        !k.plugins()["example.com/thingamajig"].stream_open && !s.dp().join(gone).exists()
    });
    assert!(
        ok,
        "thingamajig's stream and socket must end\n{}",
        s.spookd.log()
    );

    let after = s.kubelet.plugins();
    let widget = &after["example.com/widget"];
    assert_eq!(widget.endpoint, before["example.com/widget"].endpoint);
    assert!(widget.stream_open);
    assert_eq!(widget.updates, 2, "initial list, then one change");
    // Exactly three registrations: the two at start (in either order) and gizmo's.
    let mut registered: Vec<String> = s
        .kubelet
        .registrations()
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(registered.pop().as_deref(), Some("example.com/gizmo"));
    registered.sort();
    assert_eq!(
        registered,
        ["example.com/thingamajig", "example.com/widget"]
    );
    assert_eq!(s.own_sockets().len(), 2, "{:?}", s.own_sockets());
}

#[test]
fn invalid_configs_are_ignored_and_the_last_good_one_stays() {
    let mut s = Setup::new("node1", SEED);
    s.expect_devices("example.com/widget", &["0001"]);
    let bad: &[(&str, &[u8])] = &[
        ("malformed YAML", b"deviceMapping: [\n"),
        ("empty file", b""),
        ("binary junk", b"\x00\xff\xfe\x01garbage"),
        ("unknown field", b"deviceMapping:\n  - hosts: [node1]\n    devices: []\n    extra: 1\n"),
        ("unquoted instanceID", b"deviceMapping:\n  - hosts: [node1]\n    devices:\n      - {resourceName: example.com/widget, instanceID: 0002}\n"),
        ("invalid resource name", b"deviceMapping:\n  - hosts: [node1]\n    devices:\n      - {resourceName: kubernetes.io/widget, instanceID: \"1\"}\n"),
        (
            "conflicting env",
            b"deviceMapping:\n  - hosts: [node1]\n    devices:\n      - {resourceName: example.com/widget, instanceID: \"1\", env: {A: x}}\n  - hosts: [node2]\n    devices:\n      - {resourceName: example.com/widget, instanceID: \"1\", env: {A: y}}\n",
        ),
    ];
    for (n, (what, content)) in bad.iter().enumerate() {
        s.config.write_bytes(content);
        assert!(
            s.spookd.wait_log("keeping the last good config", n + 1),
            "{what}: no error logged\n{}",
            s.spookd.log()
        );
        assert_eq!(
            s.kubelet.device_ids("example.com/widget").unwrap(),
            ["0001"],
            "{what}"
        );
        assert_eq!(
            s.kubelet.device_ids("example.com/thingamajig").unwrap(),
            ["0001"],
            "{what}"
        );
    }
    let log = s.spookd.log();
    assert!(
        log.contains("instanceID 0002 must be a quoted string (YAML readers may take it for a number): write instanceID: \"0002\" at line 4 column 56"),
        "{log}"
    );
    assert!(
        log.contains("different env than in deviceMapping[0]"),
        "{log}"
    );
    assert!(log.contains("config.yaml: the config is empty"), "{log}");
    // Nothing was restarted or re-registered by the bad configs.
    assert_eq!(s.kubelet.registrations().len(), 2);
    // A good config after the bad ones applies.
    s.config
        .write(&SEED.replace("\"0001\"\n        env", "\"0007\"\n        env"));
    s.expect_devices("example.com/widget", &["0007"]);
}

#[test]
fn kubelet_restart_reregisters_every_resource_on_fresh_sockets() {
    let mut s = Setup::new("node1", SEED);
    s.expect_resources(&["example.com/thingamajig", "example.com/widget"]);
    let before = s.kubelet.plugins();
    for round in 0..3 {
        s.kubelet.restart().unwrap();
        s.expect_resources(&["example.com/thingamajig", "example.com/widget"]);
        s.expect_devices("example.com/widget", &["0001"]);
        let after = s.kubelet.plugins();
        for (r, p) in &after {
            assert_ne!(
                p.endpoint, before[r].endpoint,
                "round {round}: {r} must get a fresh socket"
            );
            assert!(s.dp().join(&p.endpoint).exists());
        }
        // Only the live sockets remain; the wiped ones are not re-created or leaked.
        let ok = s.kubelet.wait_until(WAIT, |_| s.own_sockets().len() == 2);
        assert!(ok, "round {round}: sockets {:?}", s.own_sockets());
        // Exactly one Register per resource per kubelet start: the wiped socket and the new
        // kubelet.sock are two signals of one restart (a second Register makes the kubelet drop
        // and re-dial the endpoint). Give a late duplicate time to show up.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            s.kubelet.register_calls().len(),
            2 * (round + 2),
            "round {round}\n{}",
            s.spookd.log()
        );
    }
    assert!(s
        .kubelet
        .allocate("example.com/widget", &[&["0001"]])
        .is_ok());
}

#[test]
fn a_deleted_socket_is_recreated_and_registered_again() {
    let s = Setup::new("node1", SEED);
    s.expect_resources(&["example.com/thingamajig", "example.com/widget"]);
    let old = s.kubelet.plugins()["example.com/widget"].endpoint.clone();
    fs::remove_file(s.dp().join(&old)).unwrap();
    let ok = s
        .kubelet
        .wait_until(WAIT, |k| k.plugins()["example.com/widget"].endpoint != old);
    assert!(ok, "widget must re-register\n{}", s.spookd.log());
    s.expect_devices("example.com/widget", &["0001"]);
    assert_eq!(
        s.kubelet.plugins()["example.com/thingamajig"].updates,
        1,
        "thingamajig untouched"
    );
}

#[test]
fn starts_before_the_kubelet_and_registers_when_it_appears() {
    let tmp = TempDir::new();
    let dp = tmp.join("dp");
    fs::create_dir_all(&dp).unwrap();
    let config = ConfigVolume::new(tmp.join("cm"), SEED);
    let spookd = Spookd::start(&config.path(), "node1", &dp, tmp.join("spookd.log"));
    assert!(
        spookd.wait_log("does not exist (kubelet not running?)", 1),
        "{}",
        spookd.log()
    );
    let kubelet = Kubelet::start(&dp).unwrap();
    let ok = kubelet.wait_until(WAIT, |k| k.plugins().len() == 2);
    assert!(ok, "{}", spookd.log());
    assert_eq!(
        kubelet.wait_devices("example.com/widget", &["0001"], WAIT),
        Ok(())
    );
}

/// The kubelet dials `<its own device-plugins dir>/<endpoint>`, a dir spookd cannot see (issue
/// #27): endpoints of at most 32 bytes, whatever the resource, fit any kubelet dir of up to 74
/// bytes. Here the dir is exactly that, and the names after '/' are the longest allowed (63),
/// sharing a long prefix.
#[test]
fn the_longest_resource_names_are_served_in_a_74_byte_device_plugins_dir() {
    let tmp = TempDir::new();
    // The temp dir and its '/'.
    let base = tmp.join("x").as_os_str().len() - 1;
    assert!(
        base < 74,
        "the temp dir is too long: {}",
        tmp.join("").display()
    );
    let dp = tmp.join(&"d".repeat(74 - base));
    assert_eq!(dp.as_os_str().len(), 74, "{}", dp.display());
    fs::create_dir_all(&dp).unwrap();

    let stem = "signal-generator-".repeat(4);
    let long = |tail: &str| format!("example.com/{}{tail}", &stem[..63 - tail.len()]);
    let resources = [
        long("a1"),
        long("a2"),
        long("b"),
        "example.com/w".to_owned(),
    ];
    for resource in &resources[..3] {
        assert_eq!(resource.len(), "example.com/".len() + 63, "{resource}");
    }
    let mut config = String::from("deviceMapping:\n  - hosts: [node1]\n    devices:\n");
    for (n, resource) in resources.iter().enumerate() {
        for id in ["0001", "0002"] {
            config.push_str(&format!(
                "      - {{resourceName: {resource}, instanceID: \"{n}-{id}\"}}\n"
            ));
        }
    }

    let kubelet = Kubelet::start(&dp).unwrap();
    let config = ConfigVolume::new(tmp.join("cm"), &config);
    let spookd = Spookd::start(&config.path(), "node1", &dp, tmp.join("spookd.log"));
    let s = Setup {
        tmp,
        kubelet,
        config,
        spookd,
    };
    let mut sorted: Vec<&str> = resources.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    s.expect_resources(&sorted);
    for (n, resource) in resources.iter().enumerate() {
        s.expect_devices(resource, &[&format!("{n}-0001"), &format!("{n}-0002")]);
    }
    let resp = s.kubelet.allocate(&resources[0], &[&["0-0002"]]).unwrap();
    assert_eq!(resp.container_responses.len(), 1);

    let plugins = s.kubelet.plugins();
    let endpoints: std::collections::BTreeSet<&str> =
        plugins.values().map(|p| p.endpoint.as_str()).collect();
    assert_eq!(endpoints.len(), resources.len(), "{endpoints:?}");
    let sockets = own_sockets(&dp);
    assert_eq!(
        sockets
            .iter()
            .map(String::as_str)
            .collect::<std::collections::BTreeSet<_>>(),
        endpoints
    );
    for name in &sockets {
        assert!(name.len() <= 32, "{name}: {} bytes", name.len());
        assert!(dp.join(name).as_os_str().len() <= 107);
    }
}

#[test]
fn kubelet_gone_then_back() {
    let mut s = Setup::new("node1", SEED);
    s.expect_resources(&["example.com/thingamajig", "example.com/widget"]);
    s.kubelet.stop().unwrap();
    // Allow spookd to notice nothing in particular; then the kubelet comes back.
    std::thread::sleep(Duration::from_millis(200));
    s.kubelet.restart().unwrap();
    s.expect_resources(&["example.com/thingamajig", "example.com/widget"]);
}

#[test]
fn a_node_in_no_mapping_serves_nothing_until_it_is_added() {
    let mut s = Setup::new("node9", SEED);
    assert!(
        s.spookd.wait_log("node node9 is in no mapping", 1),
        "{}",
        s.spookd.log()
    );
    assert!(s.kubelet.plugins().is_empty());
    assert!(s.own_sockets().is_empty());
    s.config.write(&SEED.replace("[node3]", "[node3, node9]"));
    s.expect_devices("skao.int/oscilloscope", &["0001"]);
    assert_eq!(s.kubelet.plugins().len(), 1);
}

#[test]
fn stale_sockets_of_a_dead_instance_go_and_nothing_else_is_touched() {
    let tmp = TempDir::new();
    let dp = tmp.join("dp");
    fs::create_dir_all(&dp).unwrap();
    // A dead spookd's socket: bound, then the listener closed (the file stays).
    drop(UnixListener::bind(dp.join("spookd-widget-deadbeef-0.sock")).unwrap());
    // A live spookd's socket (another instance during a rolling update), a foreign dead socket,
    // and a regular file with our prefix.
    let _live = UnixListener::bind(dp.join("spookd-widget-cafe0000-0.sock")).unwrap();
    drop(UnixListener::bind(dp.join("other-plugin.sock")).unwrap());
    fs::write(dp.join("spookd-notes.sock"), b"not a socket").unwrap();
    fs::write(dp.join("kubelet_internal_checkpoint"), b"{}").unwrap();

    let kubelet = Kubelet::start(&dp).unwrap();
    let config = ConfigVolume::new(tmp.join("cm"), SEED);
    let spookd = Spookd::start(&config.path(), "node1", &dp, tmp.join("spookd.log"));
    assert!(
        kubelet.wait_until(WAIT, |k| k.plugins().len() == 2),
        "{}",
        spookd.log()
    );
    assert!(!dp.join("spookd-widget-deadbeef-0.sock").exists());
    for kept in [
        "spookd-widget-cafe0000-0.sock",
        "other-plugin.sock",
        "spookd-notes.sock",
        "kubelet_internal_checkpoint",
    ] {
        assert!(dp.join(kept).exists(), "{kept} must be kept");
    }
}

#[test]
fn several_list_and_watch_streams_all_get_every_change() {
    let mut s = Setup::new("node1", SEED);
    s.expect_devices("example.com/widget", &["0001"]);
    let client = s.kubelet.plugin_client("example.com/widget").unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    for _ in 0..2 {
        let mut stream = client.list_and_watch(CallOption::default()).unwrap();
        let tx = tx.clone();
        client.spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let ids: Vec<String> = msg.devices.iter().map(|d| d.ID.clone()).collect();
                if tx.send(ids).is_err() {
                    return;
                }
            }
        });
    }
    for _ in 0..2 {
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), ["0001"]);
    }
    s.config
        .write(&SEED.replace("\"0001\"\n        env", "\"0003\"\n        env"));
    for _ in 0..2 {
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), ["0003"]);
    }
    s.expect_devices("example.com/widget", &["0003"]);
}

#[test]
fn sigterm_stops_serving_removes_own_sockets_and_exits_zero() {
    let mut s = Setup::new("node1", SEED);
    s.expect_resources(&["example.com/thingamajig", "example.com/widget"]);
    assert_eq!(s.own_sockets().len(), 2);
    let (status, took) = s.spookd.terminate();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        s.spookd.log()
    );
    assert!(s.own_sockets().is_empty(), "{:?}", s.own_sockets());
    // kubelet.sock is not ours and stays.
    assert!(s.dp().join("kubelet.sock").exists());
    eprintln!(
        "spookd exited {took:?} after SIGTERM (pid {})",
        s.spookd.pid()
    );
    let ok = s
        .kubelet
        .wait_until(WAIT, |k| k.plugins().values().all(|p| !p.stream_open));
    assert!(ok, "streams must end");
    assert!(own_sockets(&s.dp()).is_empty());
}

#[test]
fn a_kubelet_that_stops_reading_a_stream_holds_up_nothing() {
    let mut s = Setup::new("node1", SEED);
    s.expect_devices("example.com/widget", &["0001"]);
    // A second ListAndWatch on widget that is never read: its HTTP/2 window fills up.
    let client = s.kubelet.plugin_client("example.com/widget").unwrap();
    let _stalled = client.list_and_watch(CallOption::default()).unwrap();
    // Large lists, many times: far more than a stream's flow-control window.
    let mut last = String::new();
    for round in 0..40 {
        let mut config = String::from("deviceMapping:\n  - hosts: [node1]\n    devices:\n");
        for d in 0..200 {
            config.push_str(&format!(
                "      - {{resourceName: example.com/widget, instanceID: \"r{round:02}-{d:03}-{}\"}}\n",
                "x".repeat(40)
            ));
        }
        config.push_str(&format!(
            "      - {{resourceName: example.com/thingamajig, instanceID: \"t{round:02}\"}}\n"
        ));
        s.config.write(&config);
        last = format!("t{round:02}");
        std::thread::sleep(Duration::from_millis(60));
    }
    // The reading streams kept up; the state thread and the other resource were never held up.
    // (The two resources' lists travel on different connections: wait for each.)
    s.expect_devices("example.com/thingamajig", &[&last]);
    let newest = |k: &Kubelet| {
        k.device_ids("example.com/widget")
            .is_some_and(|w| w.len() == 200 && w[0].starts_with("r39-000-"))
    };
    assert!(
        s.kubelet.wait_until(WAIT, newest),
        "{:?}",
        s.kubelet
            .device_ids("example.com/widget")
            .map(|w| w[0].clone())
    );
    assert!(s
        .kubelet
        .allocate("example.com/thingamajig", &[&[last.as_str()]])
        .is_ok());
}

#[test]
fn a_kubelet_that_never_reads_allocate_answers_holds_up_nothing() {
    let mut s = Setup::new("node1", SEED);
    s.expect_resources(&["example.com/thingamajig", "example.com/widget"]);
    let client = s.kubelet.plugin_client("example.com/widget").unwrap();
    let mut req = spookd::kubelet::proto::AllocateRequest::new();
    let mut c = spookd::kubelet::proto::ContainerAllocateRequest::new();
    c.devices_ids = vec!["0001".into()];
    req.container_requests.push(c);
    // 500 Allocates in flight whose answers are never read.
    let pending: Vec<_> = (0..500)
        .map(|_| client.allocate_async(&req, CallOption::default()).unwrap())
        .collect();
    // The other resource, the state thread and config pushes carry on.
    assert!(s
        .kubelet
        .allocate("example.com/thingamajig", &[&["0001"]])
        .is_ok());
    s.config
        .write(&SEED.replace("\"0001\"\n        env", "\"0005\"\n        env"));
    s.expect_devices("example.com/widget", &["0005"]);
    assert!(s
        .kubelet
        .allocate("example.com/widget", &[&["0005"]])
        .is_ok());
    drop(pending);
}

/// gRPC core's backup poller (a wakeup every 5 s) is off unless the environment says otherwise:
/// the binary behaves the same outside the image, whose Containerfile sets it too.
#[test]
fn grpc_backup_poller_is_off_unless_the_environment_sets_it() {
    assert!(std::env::var_os("GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS").is_none());
    let s = Setup::new("node1", SEED);
    assert!(
        s.spookd.wait_log(
            "gRPC: GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS=0 set by spookd",
            1
        ),
        "{}",
        s.spookd.log()
    );
    // And it says how many CPUs gRPC core sizes its timers for: what glibc counts (getconf asks
    // it), where getconf exists.
    if let Some(n) = glibc_cpus(&[]) {
        let cpus = if n == 1 {
            "1 CPU".to_owned()
        } else {
            format!("{n} CPUs")
        };
        let want = format!("gRPC core counts {cpus} (");
        assert!(s.spookd.log().contains(&want), "{}", s.spookd.log());
    }
    let tmp = TempDir::new();
    let dp = tmp.join("dp");
    fs::create_dir_all(&dp).unwrap();
    let log = fs::File::create(tmp.join("log")).unwrap();
    let config = tmp.join("c.yaml");
    fs::write(&config, SEED).unwrap();
    let mut child = crate::util::spookd_command()
        .args(["--node-name", "node1", "--config"])
        .arg(&config)
        .arg("--device-plugin-dir")
        .arg(&dp)
        .env("GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS", "5000")
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let want = "gRPC: GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS=5000 from the environment";
    while !fs::read_to_string(tmp.join("log")).unwrap().contains(want)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(fs::read_to_string(tmp.join("log")).unwrap().contains(want));
}

/// glibc's `sysconf(_SC_NPROCESSORS_CONF)`, asked through `getconf`, after running `setup` (shell
/// lines) in a private mount namespace; `None` if getconf (or the setup) fails.
fn glibc_cpus(setup: &[String]) -> Option<i64> {
    let script =
        setup.iter().map(|l| format!("{l} && ")).collect::<String>() + "getconf _NPROCESSORS_CONF";
    let mut cmd = if setup.is_empty() {
        std::process::Command::new("sh")
    } else {
        let mut c = std::process::Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh"]);
        c
    };
    let out = cmd.arg("-c").arg(script).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// spookd counts a CPU list as glibc does (each list bind-mounted over the kernel's, with a
/// /proc/stat of 7 CPUs for glibc's fallback, in a private mount namespace, where getconf asks
/// glibc), says where the count came from, and refuses one no machine has before gRPC starts
/// (#20: gRPC core sizes per-CPU tables without a bound). As root only: it needs mounts.
#[test]
fn cpu_lists_count_as_glibc_counts_them_and_absurd_ones_are_refused() {
    if !crate::util::is_root() || glibc_cpus(&[]).is_none() {
        eprintln!("CPU-list test skipped: it needs root (a mount namespace) and getconf");
        return;
    }
    let tmp = TempDir::new();
    let stat = tmp.join("stat");
    let mut text = "cpu  1 2 3 4\n".to_owned();
    for i in 0..7 {
        text.push_str(&format!("cpu{i} 1 2 3 4\n"));
    }
    fs::write(&stat, text + "intr 1\nctxt 2\n").unwrap();
    let mounts = |list: &std::path::Path| {
        vec![
            format!(
                "mount --bind '{}' {}",
                list.display(),
                spookd::daemon::CPU_LIST
            ),
            format!("mount --bind '{}' /proc/stat", stat.display()),
        ]
    };
    let lists = [
        "0\n",
        "0",
        "3",
        "0,0",
        "0-1\n\n",
        "0-63\n",
        "0,2-5,7",
        " 0",
        "+0",
        "0,1 ",
        "0, 1",
        "0\n1",
        "0,3-1",
        "0-100000,",
        "abc",
        "",
        "\n",
        "3-1",
        "0-",
        "0-1 junk",
        "1,,2",
        "0-8191",
    ];
    for (i, list) in lists.iter().enumerate() {
        let file = tmp.join(&format!("list{i}"));
        fs::write(&file, list).unwrap();
        let glibc = glibc_cpus(&mounts(&file)).unwrap();
        let ours = spookd::daemon::cpus_in(list).unwrap_or(7);
        assert_eq!(i64::try_from(ours).unwrap(), glibc, "{list:?}");
    }
    // spookd under the same mounts: where the count came from, and a refusal.
    let spookd_with = |list: &str| {
        let file = tmp.join("list");
        fs::write(&file, list).unwrap();
        let dp = tmp.join("dp");
        fs::create_dir_all(&dp).unwrap();
        let config = tmp.join("c.yaml");
        fs::write(&config, SEED).unwrap();
        let script = mounts(&file).join(" && ") + " && exec \"$0\" \"$@\"";
        std::process::Command::new("timeout")
            .args(["5", "unshare", "-m", "--propagation", "private", "sh", "-c"])
            .arg(script)
            .args(
                crate::util::runner()
                    .into_iter()
                    .chain([std::ffi::OsString::from(env!("CARGO_BIN_EXE_spookd"))]),
            )
            .args(["--node-name", "node1", "--config"])
            .arg(&config)
            .arg("--device-plugin-dir")
            .arg(&dp)
            .output()
            .unwrap()
    };
    let out = spookd_with("0-100000\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{} lists 100001 CPUs, more than Linux supports (8192): gRPC core would size its \
             tables for that many",
            spookd::daemon::CPU_LIST
        )),
        "{err}"
    );
    assert!(!err.contains("registered"), "{err}");
    let out = spookd_with(&"0,".repeat(600));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("first line is over 1000 bytes"), "{err}");
    // Not a CPU list: glibc (and so gRPC) counts /proc/stat, and spookd says so. It runs until
    // `timeout` ends it.
    let out = spookd_with("abc\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "gRPC core counts 7 CPUs (/proc/stat: {} is missing or not a CPU list)",
            spookd::daemon::CPU_LIST
        )),
        "{err}"
    );
}
