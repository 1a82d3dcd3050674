//! The state thread's tests' backend, which records what it was asked, and their helpers.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Instant;

use futures_channel::oneshot;

use super::msg::{AllocateError, ContainerEnv, LeaseCmd, Listing, Msg, Notice, ProbeSet};
use super::{Backend, State};
use crate::config::{Config, InstanceId, NodeName, ResourceName};
use crate::latest::{channel, Receiver};

/// Records what the state thread asked for.
#[derive(Default)]
pub(super) struct Log {
    pub(super) started: Vec<(String, u64)>,
    pub(super) stopped: Vec<String>,
    pub(super) registered: Vec<(String, String)>,
    pub(super) forgotten: Vec<String>,
    pub(super) sockets: BTreeSet<String>,
    pub(super) kubelet: Option<u64>,
    pub(super) fail_start: bool,
    pub(super) probes: Vec<ProbeSet>,
    pub(super) served: Vec<Vec<String>>,
    pub(super) exclusive: bool,
    pub(super) leases: Vec<LeaseCmd>,
    pub(super) notices: Vec<Notice>,
}

pub(super) struct FakeBackend(pub(super) Rc<RefCell<Log>>);
pub(super) struct FakeServer(Rc<RefCell<Log>>, String);

impl Drop for FakeServer {
    fn drop(&mut self) {
        let mut log = self.0.borrow_mut();
        log.stopped.push(self.1.clone());
        log.sockets.remove(&self.1);
    }
}

impl Backend for FakeBackend {
    type Server = FakeServer;
    type Error = String;
    fn start(&mut self, r: &ResourceName, id: u64) -> Result<(FakeServer, String), String> {
        let mut log = self.0.borrow_mut();
        if log.fail_start {
            return Err("bind failed".into());
        }
        let endpoint = format!("spookd-{id}.sock");
        log.started.push((r.to_string(), id));
        log.sockets.insert(endpoint.clone());
        Ok((FakeServer(self.0.clone(), endpoint.clone()), endpoint))
    }
    fn register(&mut self, r: &ResourceName, endpoint: &str) {
        self.0
            .borrow_mut()
            .registered
            .push((r.to_string(), endpoint.to_owned()));
    }
    fn forget(&mut self, r: &ResourceName) {
        self.0.borrow_mut().forgotten.push(r.to_string());
    }
    fn socket_exists(&self, endpoint: &str) -> bool {
        self.0.borrow().sockets.contains(endpoint)
    }
    fn kubelet_socket(&self) -> Option<u64> {
        self.0.borrow().kubelet
    }
    fn set_probes(&mut self, probes: ProbeSet) {
        self.0.borrow_mut().probes.push(probes);
    }
    fn set_served_resources(&mut self, resources: BTreeSet<ResourceName>) {
        let names = resources.iter().map(ToString::to_string).collect();
        self.0.borrow_mut().served.push(names);
    }
    fn notify(&mut self, notice: Notice) {
        self.0.borrow_mut().notices.push(notice);
    }
    fn exclusive(&self) -> bool {
        self.0.borrow().exclusive
    }
    fn leases(&mut self, cmd: LeaseCmd) {
        self.0.borrow_mut().leases.push(cmd);
    }
}

pub(super) fn setup() -> (State<FakeBackend>, Rc<RefCell<Log>>, Instant) {
    let log = Rc::new(RefCell::new(Log {
        kubelet: Some(1),
        ..Log::default()
    }));
    let now = Instant::now();
    let node = NodeName::try_from("n1".to_owned()).unwrap();
    (State::new(node, FakeBackend(log.clone()), now), log, now)
}

pub(super) fn config(yaml: &str) -> Msg {
    Msg::Config {
        origin: "t".into(),
        config: Config::parse(yaml.as_bytes(), "t").unwrap(),
    }
}

pub(super) fn res(s: &str) -> ResourceName {
    ResourceName::try_from(s.to_owned()).unwrap()
}

pub(super) fn ids(l: &Listing) -> Vec<&str> {
    l.iter().map(|d| d.id.as_str()).collect()
}

pub(super) fn drain(rx: &mut Receiver<Listing>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    while let Some(l) = rx.newest() {
        out.push(ids(&l).into_iter().map(str::to_owned).collect());
    }
    out
}

pub(super) fn watch(
    state: &mut State<FakeBackend>,
    r: &str,
    server: u64,
    now: Instant,
) -> Receiver<Listing> {
    let (tx, rx) = channel();
    state.handle(
        Msg::Watch {
            resource: res(r),
            server,
            stream: tx,
        },
        now,
    );
    rx
}

pub(super) const TWO: &str = "deviceMapping:\n- hosts: [n1]\n  devices:\n  - {resourceName: a.io/x, instanceID: \"1\"}\n  - {resourceName: b.io/y, instanceID: \"9\"}\n";

pub(super) fn listed(l: &Listing) -> Vec<(String, bool)> {
    l.iter().map(|d| (d.id.to_string(), d.healthy)).collect()
}

pub(super) fn health(r: &str, id: &str, healthy: bool) -> Msg {
    Msg::Health {
        resource: res(r),
        id: InstanceId::try_from(id.to_owned()).unwrap(),
        healthy,
        detail: "test".into(),
    }
}

pub(super) const PROBED: &str = "deviceMapping:\n- hosts: [n1]\n  devices:\n  - {resourceName: a.io/x, instanceID: \"1\", healthCheck: {tcp: \"127.0.0.1:7\"}}\n  - {resourceName: a.io/x, instanceID: \"2\"}\n";

pub(super) const SHARED: &str = "deviceMapping:\n- hosts: [n1, n2]\n  devices:\n  - {resourceName: a.io/x, instanceID: \"1\"}\n- hosts: [n1]\n  devices:\n  - {resourceName: a.io/x, instanceID: \"2\"}\n";

pub(super) fn allocate(
    s: &mut State<FakeBackend>,
    ids: &[&str],
    now: Instant,
) -> oneshot::Receiver<Result<Vec<ContainerEnv>, AllocateError>> {
    let (reply, answer) = oneshot::channel();
    let containers = vec![ids.iter().map(|s| s.to_string()).collect()];
    s.handle(
        Msg::Allocate {
            resource: res("a.io/x"),
            containers,
            reply,
        },
        now,
    );
    answer
}
