//! `--exclusive-leases`: several spookd processes, one per node, each with its own kubelet
//! stand-in (serving podresources too), against one HTTPS API stand-in holding the Leases.

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use grpcio::RpcStatusCode;

use crate::apiserver::{with_credentials, ApiServer, Credentials};
use crate::util::{ConfigVolume, Kubelet, Spookd, TempDir, WAIT};

/// Widget 0001 is reachable from all three nodes; 0002 from n1 only.
const CONFIG: &str = r#"
deviceMapping:
  - hosts: [n1, n2, n3]
    devices:
      - {resourceName: example.com/widget, instanceID: "0001"}
  - hosts: [n1]
    devices:
      - {resourceName: example.com/widget, instanceID: "0002"}
"#;
const WIDGET: &str = "example.com/widget";
const LEASE: &str = "spookd-example.com.widget-0001";

struct Node {
    name: String,
    kubelet: Kubelet,
    spookd: Option<Spookd>,
    config: ConfigVolume,
    tmp: TempDir,
}

struct Cluster {
    api: ApiServer,
    nodes: Vec<Node>,
    creds: Credentials,
}

impl Cluster {
    /// Starts (or restarts) node `i`'s spookd with a 2 s Lease duration.
    fn start_spookd(&mut self, i: usize) {
        let node = &self.nodes[i];
        let socket = node.kubelet.pod_resources_socket();
        let (token, ca) = (&self.creds.token, &self.creds.ca);
        let spookd = Spookd::start_extra(
            &node.config.path(),
            &node.name,
            node.kubelet.dir(),
            node.tmp.join("spookd.log"),
            &[
                "--exclusive-leases",
                "--lease-namespace",
                "spookd",
                "--lease-duration",
                "2s",
                "--pod-resources-socket",
                socket.to_str().unwrap(),
                "--api-server",
                &self.api.url(),
                "--token-file",
                token.to_str().unwrap(),
                "--ca-file",
                ca.to_str().unwrap(),
            ],
        );
        self.nodes[i].spookd = Some(spookd);
    }

    fn start(n: usize) -> Cluster {
        let (api, creds) = with_credentials("exclusive test CA");
        let nodes = (1..=n)
            .map(|i| {
                let name = format!("n{i}");
                let tmp = TempDir::new();
                let dp = tmp.join("device-plugins");
                fs::create_dir_all(&dp).unwrap();
                let kubelet = Kubelet::start(&dp).unwrap();
                let config = ConfigVolume::new(tmp.join("cm"), CONFIG);
                Node {
                    name,
                    kubelet,
                    spookd: None,
                    config,
                    tmp,
                }
            })
            .collect();
        let mut c = Cluster { api, nodes, creds };
        for i in 0..n {
            c.start_spookd(i);
        }
        for node in &c.nodes {
            c.expect_health(node, "0001", "Healthy");
        }
        c
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log = n.spookd.as_ref().map(Spookd::log).unwrap_or_default();
                format!("--- {} ---\n{log}", n.name)
            })
            .collect()
    }

    /// Waits until `node` advertises widget `id` with `health`.
    fn expect_health(&self, node: &Node, id: &str, health: &str) {
        let ok = node.kubelet.wait_until(WAIT, |k| {
            k.plugins()
                .get(WIDGET)
                .and_then(|p| p.devices.clone())
                .is_some_and(|d| d.iter().any(|(i, h)| i == id && h == health))
        });
        assert!(
            ok,
            "{}: widget {id} never {health}; have {:?}\n{}",
            node.name,
            node.kubelet
                .plugins()
                .get(WIDGET)
                .map(|p| p.devices.clone()),
            self.logs()
        );
    }

    fn holder(&self) -> Option<String> {
        self.api
            .leases()
            .get(LEASE)
            .map(|l| l.holder.clone())
            .filter(|h| !h.is_empty())
    }

    fn wait_holder(&self, holder: Option<&str>) {
        let deadline = std::time::Instant::now() + WAIT;
        while self.holder().as_deref() != holder {
            assert!(
                std::time::Instant::now() < deadline,
                "Lease holder {:?}, expected {holder:?}\n{}",
                self.holder(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Allocate of widget `id` on `node`: Ok, or the gRPC status code and message.
fn allocate(node: &Node, id: &str) -> Result<(), (RpcStatusCode, String)> {
    outcome(node.kubelet.allocate(WIDGET, &[&[id]]))
}

fn outcome<T>(result: Result<T, grpcio::Error>) -> Result<(), (RpcStatusCode, String)> {
    match result {
        Ok(_) => Ok(()),
        Err(grpcio::Error::RpcFailure(s)) => Err((s.code(), s.message().to_owned())),
        Err(e) => Err((RpcStatusCode::UNKNOWN, e.to_string())),
    }
}

#[test]
fn concurrent_allocates_have_one_winner_the_others_see_it_unhealthy_and_release_frees_it() {
    let c = Cluster::start(3);
    for round in 0..3 {
        // All at once, as the kubelets of three nodes would.
        let clients: Vec<_> = c
            .nodes
            .iter()
            .map(|n| n.kubelet.plugin_client(WIDGET).unwrap())
            .collect();
        let mut req = spookd::kubelet::proto::AllocateRequest::new();
        let mut container = spookd::kubelet::proto::ContainerAllocateRequest::new();
        container.devices_ids = vec!["0001".into()];
        req.container_requests.push(container);
        let results: Vec<Result<(), (RpcStatusCode, String)>> = std::thread::scope(|s| {
            let calls: Vec<_> = clients
                .iter()
                .map(|client| {
                    let req = &req;
                    s.spawn(move || {
                        outcome(client.allocate(req, grpcio::CallOption::default().timeout(WAIT)))
                    })
                })
                .collect();
            calls.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<&Node> = c
            .nodes
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|(n, _)| n)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}\n{}", c.logs());
        let winner = winners[0];
        assert_eq!(c.holder().as_deref(), Some(winner.name.as_str()));
        for (node, result) in c.nodes.iter().zip(&results) {
            if let Err((code, message)) = result {
                assert_eq!(*code, RpcStatusCode::FAILED_PRECONDITION, "{message}");
                assert!(
                    message.contains(&format!("is held by node {}", winner.name)),
                    "{message}"
                );
                // The loser advertises it Unhealthy while the winner holds it.
                c.expect_health(node, "0001", "Unhealthy");
            }
        }
        // The winner's pod runs with it, then ends: the Lease is released after the grace.
        winner.kubelet.set_pod("consumer", &[(WIDGET, &["0001"])]);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(c.holder().as_deref(), Some(winner.name.as_str()));
        winner.kubelet.set_pod("consumer", &[]);
        c.wait_holder(None);
        for node in &c.nodes {
            c.expect_health(node, "0001", "Healthy");
        }
    }
    // Device 0002 is n1's alone: no Lease, Allocate answered at once.
    allocate(&c.nodes[0], "0002").unwrap();
    assert_eq!(c.api.leases().len(), 0);
}

/// n1 takes widget 0001 for a running container; n2 advertises it Unhealthy.
fn hold_on_n1(c: &Cluster) {
    allocate(&c.nodes[0], "0001").unwrap();
    c.nodes[0]
        .kubelet
        .set_pod("consumer", &[(WIDGET, &["0001"])]);
    c.expect_health(&c.nodes[1], "0001", "Unhealthy");
}

#[test]
fn a_killed_holder_s_lease_expires_and_another_node_takes_over() {
    let mut c = Cluster::start(2);
    hold_on_n1(&c);
    assert!(allocate(&c.nodes[1], "0001").is_err());
    // The node dies: no renewals; a whole duration later n2 sees it free and may take it.
    drop(c.nodes[0].spookd.take());
    c.expect_health(&c.nodes[1], "0001", "Healthy");
    allocate(&c.nodes[1], "0001").unwrap();
    assert_eq!(c.holder().as_deref(), Some("n2"));
    let log = c.nodes[1].spookd.as_ref().unwrap().log();
    assert!(log.contains(&format!("Lease {LEASE} taken")), "{log}");
}

#[test]
fn an_api_outage_keeps_the_holder_holding_and_podresources_failures_release_nothing() {
    let c = Cluster::start(2);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    hold_on_n1(&c);
    // An outage longer than the Lease duration: nobody renews, nobody takes over.
    c.api.set_outage(true);
    let failed = allocate(n2, "0001").unwrap_err();
    assert_eq!(failed.0, RpcStatusCode::UNAVAILABLE, "{failed:?}");
    std::thread::sleep(Duration::from_secs(3));
    c.api.set_outage(false);
    // Back: n1 renews within a tenth of the duration; n2 never sees it expire.
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        let plugins = n2.kubelet.plugins();
        let devices: BTreeMap<String, String> = plugins[WIDGET]
            .devices
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        assert_eq!(devices["0001"], "Unhealthy", "\n{}", c.logs());
    }
    assert!(allocate(n2, "0001").is_err());
    assert_eq!(c.holder().as_deref(), Some("n1"));
    // podresources cannot be read: the pod's end is not seen, nothing is released.
    n1.kubelet.set_pod_resources_down(true);
    n1.kubelet.set_pod("consumer", &[]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.holder().as_deref(), Some("n1"));
    assert!(n1
        .spookd
        .as_ref()
        .unwrap()
        .log()
        .contains("nothing is released (held devices stay held and renewed)"));
    // It answers again: released after the grace.
    n1.kubelet.set_pod_resources_down(false);
    c.wait_holder(None);
    c.expect_health(n2, "0001", "Healthy");
}

#[test]
fn a_restarted_spookd_keeps_the_leases_of_running_containers() {
    let mut c = Cluster::start(2);
    hold_on_n1(&c);
    // spookd restarts (a new image, say) while the pod runs: it adopts its Lease and renews it.
    drop(c.nodes[0].spookd.take());
    c.start_spookd(0);
    let adopted = format!("Lease {LEASE}: held by this node already; adopting it");
    assert!(
        c.nodes[0].spookd.as_ref().unwrap().wait_log(&adopted, 1),
        "{}",
        c.logs()
    );
    // Well past the duration and the grace: still held, still Unhealthy on n2.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(c.holder().as_deref(), Some("n1"), "{}", c.logs());
    c.expect_health(&c.nodes[1], "0001", "Unhealthy");
    assert!(allocate(&c.nodes[1], "0001").is_err());
    // The pod ends: released.
    c.nodes[0].kubelet.set_pod("consumer", &[]);
    c.wait_holder(None);
}
