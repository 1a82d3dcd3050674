//! The podresources client (`spookd::podresources`) against the kubelet stand-in's List, over a
//! real Unix socket laid out as the kubelet lays it out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use spookd::kubelet::podresources::assigned;

use crate::util::{Kubelet, TempDir};

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[test]
fn lists_every_assigned_device_and_fails_clearly_when_the_kubelet_cannot_answer() {
    let tmp = TempDir::new();
    let dp = tmp.join("device-plugins");
    std::fs::create_dir_all(&dp).unwrap();
    let mut kubelet = Kubelet::start(&dp).unwrap();
    let socket = kubelet.pod_resources_socket();
    assert_eq!(socket, tmp.join("pod-resources/kubelet.sock"));
    let env = Arc::new(grpcio::EnvBuilder::new().cq_count(1).build());
    assert_eq!(assigned(&env, &socket).unwrap(), BTreeMap::new());
    kubelet.set_pod("p1", &[("a.io/x", &["1", "2"])]);
    kubelet.set_pod("p2", &[("a.io/x", &["3"]), ("b.io/y", &["9"])]);
    let expected: BTreeMap<String, BTreeSet<String>> = [
        ("a.io/x".to_string(), set(&["1", "2", "3"])),
        ("b.io/y".to_string(), set(&["9"])),
    ]
    .into();
    assert_eq!(assigned(&env, &socket).unwrap(), expected);
    // A pod that ended frees its devices.
    kubelet.set_pod("p1", &[]);
    assert_eq!(assigned(&env, &socket).unwrap()["a.io/x"], set(&["3"]));
    // Unavailable, or no kubelet at all: an error naming the socket, never an empty answer.
    kubelet.set_pod_resources_down(true);
    let e = assigned(&env, &socket).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "cannot list pod resources at {}",
            socket.display()
        )),
        "{e}"
    );
    kubelet.set_pod_resources_down(false);
    kubelet.stop().unwrap();
    assert!(assigned(&env, &socket).is_err());
    // After a kubelet restart it answers again.
    kubelet.restart().unwrap();
    assert_eq!(assigned(&env, &socket).unwrap()["b.io/y"], set(&["9"]));
}
