//! `spookd status` of the real binary against a running spookd and the kubelet stand-in's
//! podresources API.

use crate::metrics::metrics_addr;
use crate::util::{Setup, SEED};

fn status(args: &[&str]) -> (Option<i32>, String, String) {
    let out = crate::util::spookd_command()
        .arg("status")
        .args(args)
        .env_remove("SPOOKD_METRICS_ADDR")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn status_shows_each_device_its_health_and_its_holder() {
    let s = Setup::with_args("node1", SEED, &["--metrics-addr", "127.0.0.1:0"]);
    s.expect_resources(&["example.com/thingamajig", "example.com/widget"]);
    let addr = metrics_addr(&s.spookd);
    s.kubelet
        .set_pod("consumer-1", &[("example.com/widget", &["0001"])]);
    let socket = s.kubelet.pod_resources_socket();
    let socket = socket.to_str().unwrap();
    let (code, out, err) = status(&["--metrics-addr", &addr, "--pod-resources-socket", socket]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "node node1 (device plugin): a valid config is applied
RESOURCE                 REGISTERED  DEVICE  HEALTH   HELD BY                  LEASE
example.com/thingamajig  yes         0001    Healthy  -                        -
example.com/widget       yes         0001    Healthy  default/consumer-1/main  -
"
    );
    let (code, json, _) = status(&[
        "--metrics-addr",
        &addr,
        "--pod-resources-socket",
        socket,
        "--output",
        "json",
    ]);
    assert_eq!(code, Some(0));
    let v: serde_yaml::Value = serde_yaml::from_str(&json).unwrap();
    assert_eq!(v["node"], "node1");
    assert_eq!(v["mode"], "device-plugin");
    assert!(v["podResourcesProblem"].is_null());
    let widget = &v["resources"][1];
    assert_eq!(widget["name"], "example.com/widget");
    assert_eq!(widget["registered"], true);
    assert_eq!(
        widget["devices"][0],
        serde_yaml::from_str::<serde_yaml::Value>(
            "{id: '0001', healthy: true, probe: null, leaseHolder: null, heldBy: [default/consumer-1/main]}"
        )
        .unwrap()
    );

    // podresources cannot be read: the devices are still listed, and it says why not.
    s.kubelet.set_pod_resources_down(true);
    let (code, out, _) = status(&["--metrics-addr", &addr, "--pod-resources-socket", socket]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("holders unknown: cannot list pod resources at "),
        "{out}"
    );
    assert!(
        out.contains("example.com/widget       yes         0001    Healthy  ?"),
        "{out}"
    );
}

#[test]
fn status_says_when_there_is_no_daemon_to_ask() {
    let (code, _, err) = status(&[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("no metrics address: the daemon serves its status only with --metrics-addr"),
        "{err}"
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let (code, _, err) = status(&["--metrics-addr", &addr]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("cannot reach the daemon at {addr}")),
        "{err}"
    );
    let (code, _, err) = status(&["--output", "yaml"]);
    assert_eq!(
        (code, err.trim()),
        (Some(2), "spookd: --output: \"yaml\" is not text or json")
    );
}
