//! A Kubernetes API server stand-in for one ConfigMap and one Node, over real HTTPS on 127.0.0.1.
//!
//! It speaks the parts of the protocol spookd uses: LIST with a `metadata.name` field selector,
//! WATCH from a resourceVersion with chunked JSON events (ADDED, MODIFIED, DELETED, BOOKMARK,
//! ERROR 410 after a compaction), bearer tokens (401 on a wrong one), and injected faults: an
//! error status (500, 429 with Retry-After, 410), a connection that is accepted and never
//! answered, a watch dropped mid-stream. For the Node: GET, a merge patch of its annotations,
//! and a JSON patch of its status with `test` and `remove` ops (a failed test is 422, as the real
//! server answers). Leases (`coordination.k8s.io/v1`) with the real optimistic concurrency: create
//! (409 if it exists), get, replace at a `resourceVersion` (409 if it moved), delete with a
//! `resourceVersion` precondition (409). Certificates come from a test CA made at test time.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA and a server certificate it signed for 127.0.0.1.
pub struct Pki {
    pub ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

impl Pki {
    pub fn new(ca_name: &str) -> Pki {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        server
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let key = KeyPair::generate().unwrap();
        let cert = server.signed_by(&key, &ca).unwrap();
        Pki {
            ca_pem: ca.pem(),
            chain: vec![cert.der().clone(), ca.der().clone()],
            key: key.serialize_der(),
        }
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()));
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), key)
            .unwrap();
        Arc::new(config)
    }
}

/// The token and CA files spookd is given for a stand-in, in a temp dir.
pub struct Credentials {
    pub token: std::path::PathBuf,
    pub ca: std::path::PathBuf,
    _dir: crate::util::TempDir,
}

/// A stand-in for namespace `spookd` accepting the token `secret`, with credentials for it.
pub fn with_credentials(ca_name: &str) -> (ApiServer, Credentials) {
    with_configmap(ca_name, "unused")
}

/// The same, serving ConfigMap `spookd/<configmap>`.
pub fn with_configmap(ca_name: &str, configmap: &str) -> (ApiServer, Credentials) {
    let pki = Pki::new(ca_name);
    let api = ApiServer::start(&pki, "spookd", configmap, "secret");
    let dir = crate::util::TempDir::new();
    let (token, ca) = (dir.join("token"), dir.join("ca.crt"));
    std::fs::write(&token, "secret\n").unwrap();
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    (
        api,
        Credentials {
            token,
            ca,
            _dir: dir,
        },
    )
}

/// What the next request gets instead of its normal answer.
#[derive(Clone, Debug)]
pub enum Fault {
    /// This HTTP status, with a Retry-After header if given.
    Status(u16, Option<u64>),
    /// Accept the request and never answer (until the server stops).
    Silence,
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub authorization: String,
    pub content_type: String,
    pub body: String,
    pub at: Instant,
}

/// A Lease the server holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredLease {
    pub version: u64,
    pub holder: String,
    pub duration: u64,
    pub acquire_time: String,
    pub renew_time: String,
    pub transitions: u64,
    pub managed_by: String,
}

/// The Node the server holds: annotations, and status capacity and allocatable.
#[derive(Clone, Debug, Default)]
pub struct Node {
    pub name: String,
    pub annotations: BTreeMap<String, String>,
    pub capacity: BTreeMap<String, String>,
    pub allocatable: BTreeMap<String, String>,
}

impl Request {
    pub fn is_watch(&self) -> bool {
        self.target.contains("watch=true")
    }
}

enum WatchMsg {
    Line(String),
    /// End the stream as a dropped connection: no final chunk.
    Drop,
}

struct State {
    namespace: String,
    name: String,
    token: String,
    /// The ConfigMap's data and resourceVersion, if it exists.
    configmap: Option<(u64, BTreeMap<String, String>)>,
    version: u64,
    /// Watches from a version below this get 410.
    compacted: u64,
    /// Faults for the next requests; one with a matcher waits for a request matching it.
    faults: VecDeque<(Option<(String, String)>, Fault)>,
    node: Option<Node>,
    leases: BTreeMap<String, StoredLease>,
    /// While set, every request gets 503.
    outage: bool,
    /// Open Lease watches.
    lease_watchers: Vec<Sender<WatchMsg>>,
    /// Deleted Leases as (version of the deletion, name), to replay to a watch from before.
    lease_tombstones: Vec<(u64, String)>,
    watchers: Vec<Sender<WatchMsg>>,
    /// `resource.k8s.io/v1` objects by (collection path, name): ResourceSlices, DeviceClasses,
    /// ResourceClaims.
    objects: BTreeMap<(String, String), serde_yaml::Value>,
    /// Watches of `resource.k8s.io` objects: (collection, query, stream).
    object_watchers: Vec<(String, String, Sender<WatchMsg>)>,
    /// Watch connections being served now.
    open_watches: usize,
    /// As a 1.34/1.35 server with the newer DRA gates off: drops `extendedResourceName` from
    /// DeviceClasses and `taints` from slice devices on write, without a word.
    gates_off: bool,
    requests: Vec<Request>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running API server stand-in; stops on drop.
pub struct ApiServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl ApiServer {
    /// Serves ConfigMap `namespace/name` (absent until [`ApiServer::set`]) to `token` holders.
    pub fn start(pki: &Pki, namespace: &str, name: &str, token: &str) -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                namespace: namespace.into(),
                name: name.into(),
                token: token.into(),
                configmap: None,
                version: 100,
                compacted: 0,
                faults: VecDeque::new(),
                node: None,
                leases: BTreeMap::new(),
                outage: false,
                lease_watchers: Vec::new(),
                lease_tombstones: Vec::new(),
                watchers: Vec::new(),
                objects: BTreeMap::new(),
                object_watchers: Vec::new(),
                open_watches: 0,
                gates_off: false,
                requests: Vec::new(),
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let config = pki.server_config();
        let s = shared.clone();
        std::thread::Builder::new()
            .name("api-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if s.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (s, config) = (s.clone(), config.clone());
                    let _ = std::thread::Builder::new()
                        .name("api-conn".into())
                        .spawn(move || serve(&s, config, stream));
                }
            })
            .unwrap();
        ApiServer { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Creates or updates the ConfigMap with `config.yaml: text`.
    pub fn set(&self, text: &str) {
        self.set_data(&[("config.yaml", text)]);
    }

    pub fn set_data(&self, data: &[(&str, &str)]) {
        let mut st = self.shared.lock();
        st.version += 1;
        let kind = if st.configmap.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let data = data
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        st.configmap = Some((st.version, data));
        let line = event(kind, &configmap_json(&st));
        broadcast(&mut st, &line);
        self.shared.changed.notify_all();
    }

    /// Deletes the ConfigMap.
    pub fn delete(&self) {
        let mut st = self.shared.lock();
        st.version += 1;
        let line = event("DELETED", &configmap_json(&st));
        st.configmap = None;
        broadcast(&mut st, &line);
    }

    /// Sends a BOOKMARK at a new version.
    pub fn bookmark(&self) {
        let mut st = self.shared.lock();
        st.version += 1;
        let line = event(
            "BOOKMARK",
            &format!(
                r#"{{"kind":"ConfigMap","apiVersion":"v1","metadata":{{"resourceVersion":"{}"}}}}"#,
                st.version
            ),
        );
        broadcast(&mut st, &line);
    }

    /// Compacts history: open watches get ERROR 410 and end; watching an old version gets 410.
    pub fn compact(&self) {
        let mut st = self.shared.lock();
        st.version += 1;
        st.compacted = st.version;
        let line = expired_line(st.compacted);
        broadcast(&mut st, &line);
        for w in st.watchers.drain(..) {
            let _ = w.send(WatchMsg::Drop);
        }
    }

    /// Drops every open watch connection mid-stream.
    pub fn drop_watches(&self) {
        let mut st = self.shared.lock();
        for w in st.watchers.drain(..) {
            let _ = w.send(WatchMsg::Drop);
        }
    }

    /// The next requests get these answers, in order.
    pub fn fail_next(&self, faults: &[Fault]) {
        let faults = faults.iter().map(|f| (None, f.clone()));
        self.shared.lock().faults.extend(faults);
    }

    /// The next request with `method` whose path ends with `suffix` gets `fault`.
    pub fn fail_when(&self, method: &str, suffix: &str, fault: Fault) {
        let matcher = Some((method.to_owned(), suffix.to_owned()));
        self.shared.lock().faults.push_back((matcher, fault));
    }

    /// Drops the gated DRA fields on write from now on (true), as a server with the gates off.
    pub fn set_gates_off(&self, off: bool) {
        self.shared.lock().gates_off = off;
    }

    /// Starts (true) or ends an outage: every request gets 503 meanwhile.
    pub fn set_outage(&self, down: bool) {
        let mut st = self.shared.lock();
        st.outage = down;
        if down {
            // A server that goes away drops its watches too.
            for w in st.lease_watchers.drain(..) {
                let _ = w.send(WatchMsg::Drop);
            }
        }
    }

    /// The Leases now, by name.
    pub fn leases(&self) -> BTreeMap<String, StoredLease> {
        self.shared.lock().leases.clone()
    }

    /// Creates (or replaces) the Node.
    pub fn set_node(&self, node: Node) {
        self.shared.lock().node = Some(node);
    }

    /// The Node now.
    pub fn node(&self) -> Option<Node> {
        self.shared.lock().node.clone()
    }

    /// Sets `resource` to `quantity` in capacity and allocatable, as the kubelet does.
    pub fn set_count(&self, resource: &str, quantity: &str) {
        let mut st = self.shared.lock();
        if let Some(node) = &mut st.node {
            node.capacity.insert(resource.into(), quantity.into());
            node.allocatable.insert(resource.into(), quantity.into());
        }
    }

    /// Waits until `done` holds for the Node (bounded).
    pub fn wait_node(&self, timeout: Duration, done: impl Fn(&Node) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.node().is_some_and(|n| done(&n)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `resource.k8s.io/v1` objects of a collection (`resourceslices`, `deviceclasses`, or
    /// `namespaces/NS/resourceclaims`), by name.
    pub fn objects(&self, collection: &str) -> BTreeMap<String, serde_yaml::Value> {
        let path = format!("{RESOURCE_API}/{collection}");
        (self.shared.lock().objects.iter())
            .filter(|((c, _), _)| *c == path)
            .map(|((_, n), o)| (n.clone(), o.clone()))
            .collect()
    }

    /// spookd's DRA health reports (Leases with annotations), by name.
    pub fn reports(&self) -> BTreeMap<String, serde_yaml::Value> {
        let st = self.shared.lock();
        let path = format!(
            "/apis/coordination.k8s.io/v1/namespaces/{}/leases",
            st.namespace
        );
        (st.objects.iter())
            .filter(|((c, _), _)| *c == path)
            .map(|((_, n), o)| (n.clone(), o.clone()))
            .collect()
    }

    /// Stores `object` in `collection` as is (a ResourceClaim the scheduler allocated, say),
    /// with a fresh resourceVersion.
    pub fn put_object(&self, collection: &str, mut object: serde_yaml::Value) {
        let mut st = self.shared.lock();
        st.version += 1;
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        object["metadata"]["resourceVersion"] = st.version.to_string().into();
        st.objects
            .insert((format!("{RESOURCE_API}/{collection}"), name), object);
        self.shared.changed.notify_all();
    }

    /// The Events of `namespace`, by name.
    pub fn events(&self, namespace: &str) -> BTreeMap<String, serde_yaml::Value> {
        let path = format!("{EVENTS_API}{namespace}/events");
        (self.shared.lock().objects.iter())
            .filter(|((c, _), _)| *c == path)
            .map(|((_, n), o)| (n.clone(), o.clone()))
            .collect()
    }

    /// Removes an object as someone else would (watches see it deleted).
    pub fn remove_object(&self, collection: &str, name: &str) {
        let mut st = self.shared.lock();
        let path = format!("{RESOURCE_API}/{collection}");
        if let Some(mut gone) = st.objects.remove(&(path.clone(), name.to_owned())) {
            st.version += 1;
            gone["metadata"]["resourceVersion"] = st.version.to_string().into();
            object_event(&mut st, &path, "DELETED", &gone);
        }
    }

    /// Waits until `done` holds for `collection`'s objects (bounded).
    pub fn wait_objects(
        &self,
        collection: &str,
        timeout: Duration,
        done: impl Fn(&BTreeMap<String, serde_yaml::Value>) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.objects(collection)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Changes the accepted token (the old one gets 401 from now on).
    pub fn set_token(&self, token: &str) {
        self.shared.lock().token = token.into();
    }

    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// Waits until `done` holds for the requests seen (bounded).
    pub fn wait_requests(&self, timeout: Duration, done: impl Fn(&[Request]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if done(&st.requests) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = match self.shared.changed.wait_timeout(st, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Waits until `n` watches are open (bounded).
    pub fn wait_watchers(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if st.open_watches >= n {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = match self
                .shared
                .changed
                .wait_timeout(st, (deadline - now).min(Duration::from_millis(50)))
            {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.drop_watches();
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
    }
}

fn broadcast(st: &mut State, line: &str) {
    st.watchers
        .retain(|w| w.send(WatchMsg::Line(line.to_owned())).is_ok());
}

fn event(kind: &str, object: &str) -> String {
    format!(r#"{{"type":"{kind}","object":{object}}}"#)
}

fn expired_line(version: u64) -> String {
    event(
        "ERROR",
        &format!(
            r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"too old resource version (current {version})","reason":"Expired","code":410}}"#
        ),
    )
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '/' => out.push_str("\\/"),
            c if (c as u32) < 0x20 || !c.is_ascii() => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn configmap_json(st: &State) -> String {
    let (version, data) = match &st.configmap {
        Some((v, d)) => (*v, d.clone()),
        None => (st.version, BTreeMap::new()),
    };
    let data: Vec<String> = data
        .iter()
        .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
        .collect();
    format!(
        r#"{{"kind":"ConfigMap","apiVersion":"v1","metadata":{{"name":"{}","namespace":"{}","uid":"u-1","resourceVersion":"{version}","managedFields":[{{"manager":"kubectl"}}]}},"data":{{{}}}}}"#,
        st.name,
        st.namespace,
        data.join(",")
    )
}

fn lease_json(namespace: &str, name: &str, l: &StoredLease) -> String {
    format!(
        r#"{{"kind":"Lease","apiVersion":"coordination.k8s.io/v1","metadata":{{"name":"{name}","namespace":"{namespace}","resourceVersion":"{}","labels":{{"app.kubernetes.io/managed-by":{}}}}},"spec":{{"holderIdentity":{},"leaseDurationSeconds":{},"acquireTime":{},"renewTime":{},"leaseTransitions":{}}}}}"#,
        l.version,
        json_string(&l.managed_by),
        json_string(&l.holder),
        l.duration,
        json_string(&l.acquire_time),
        json_string(&l.renew_time),
        l.transitions
    )
}

/// A Lease from a request body; `Err` names what is wrong.
fn parse_lease(body: &str) -> Result<(String, Option<u64>, StoredLease), String> {
    let v: serde_yaml::Value = serde_yaml::from_str(body).map_err(|e| e.to_string())?;
    if v["apiVersion"].as_str() != Some("coordination.k8s.io/v1")
        || v["kind"].as_str() != Some("Lease")
    {
        return Err("not a coordination.k8s.io/v1 Lease".into());
    }
    let text = |x: &serde_yaml::Value| x.as_str().unwrap_or_default().to_owned();
    let name = text(&v["metadata"]["name"]);
    let version = v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok());
    let spec = &v["spec"];
    Ok((
        name,
        version,
        StoredLease {
            version: 0,
            holder: text(&spec["holderIdentity"]),
            duration: spec["leaseDurationSeconds"]
                .as_u64()
                .ok_or("leaseDurationSeconds")?,
            acquire_time: text(&spec["acquireTime"]),
            renew_time: text(&spec["renewTime"]),
            transitions: spec["leaseTransitions"].as_u64().unwrap_or(0),
            managed_by: text(&v["metadata"]["labels"]["app.kubernetes.io/managed-by"]),
        },
    ))
}

/// Sends a Lease watch event to every open Lease watch.
fn lease_event(st: &mut State, kind: &str, object: &str) {
    let line = event(kind, object);
    st.lease_watchers
        .retain(|w| w.send(WatchMsg::Line(line.clone())).is_ok());
}

/// A Lease watch: what changed after `resourceVersion`, then every change, chunked, until the
/// timeout, a drop or the server stops.
fn watch_leases(shared: &Arc<Shared>, tls: &mut impl Write, query: &str) {
    let param = |key: &str| {
        query
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix(key))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let from = param("resourceVersion=").unwrap_or(0);
    let timeout = param("timeoutSeconds=").unwrap_or(60);
    let (tx, rx): (Sender<WatchMsg>, Receiver<WatchMsg>) = crossbeam_channel::bounded(1024);
    let replay: Vec<String> = {
        let mut st = shared.lock();
        let ns = st.namespace.clone();
        let mut replay: Vec<(u64, String)> = st
            .leases
            .iter()
            .filter(|(_, l)| l.version > from)
            .map(|(n, l)| (l.version, event("MODIFIED", &lease_json(&ns, n, l))))
            .collect();
        for (version, name) in &st.lease_tombstones {
            if *version > from {
                let gone = StoredLease {
                    version: *version,
                    ..StoredLease::default()
                };
                replay.push((*version, event("DELETED", &lease_json(&ns, name, &gone))));
            }
        }
        replay.sort();
        st.lease_watchers.push(tx);
        replay.into_iter().map(|(_, line)| line).collect()
    };
    let _ = write!(
        tls,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    for line in replay {
        if chunk(tls, &line).is_err() {
            return;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(timeout);
    // Dropped: the connection closes without the final chunk, a broken stream to the client.
    let _dropped = stream_watch(shared, tls, &rx, deadline);
}

/// Streams watch lines from `rx` until `deadline` (then the final chunk), or until the watch is
/// dropped (then returns true: the caller ends the connection without the final chunk).
fn stream_watch(
    shared: &Shared,
    tls: &mut impl Write,
    rx: &Receiver<WatchMsg>,
    deadline: Instant,
) -> bool {
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait.min(Duration::from_millis(100))) {
            Ok(WatchMsg::Line(line)) => {
                if chunk(tls, &line).is_err() {
                    return false;
                }
            }
            Ok(WatchMsg::Drop) => return true,
            Err(RecvTimeoutError::Timeout)
                if Instant::now() < deadline && !shared.stop.load(Ordering::SeqCst) => {}
            Err(_) => {
                let _ = tls.write_all(b"0\r\n\r\n");
                let _ = tls.flush();
                return false;
            }
        }
    }
}

/// Serves the Lease API with optimistic concurrency; `(status, body)`.
fn serve_leases(st: &mut State, method: &str, rest: &str, body: &str) -> (u16, String) {
    let ns = st.namespace.clone();
    let conflict = |what: &str| (409, status_json(409, what));
    match (method, rest) {
        ("POST", "") => {
            let (name, _, mut lease) = match parse_lease(body) {
                Ok(l) => l,
                Err(e) => return (422, status_json(422, &e)),
            };
            if st.leases.contains_key(&name) {
                return conflict("AlreadyExists");
            }
            st.version += 1;
            lease.version = st.version;
            let json = lease_json(&ns, &name, &lease);
            st.leases.insert(name, lease);
            lease_event(st, "ADDED", &json);
            (201, json)
        }
        ("GET", selector) if selector.starts_with('?') => {
            let wanted = selector.contains("app.kubernetes.io%2Fmanaged-by%3Dspookd");
            let items: Vec<String> = st
                .leases
                .iter()
                .filter(|(_, l)| !wanted || l.managed_by == "spookd")
                .map(|(n, l)| lease_json(&ns, n, l))
                .collect();
            let list = format!(
                r#"{{"kind":"LeaseList","apiVersion":"coordination.k8s.io/v1","metadata":{{"resourceVersion":"{}"}},"items":[{}]}}"#,
                st.version,
                items.join(",")
            );
            (200, list)
        }
        ("GET", name) if !name.is_empty() => match st.leases.get(name) {
            Some(l) => (200, lease_json(&ns, name, l)),
            None => (404, status_json(404, "NotFound")),
        },
        ("PUT", name) => {
            let (body_name, version, mut lease) = match parse_lease(body) {
                Ok(l) => l,
                Err(e) => return (422, status_json(422, &e)),
            };
            let Some(current) = st.leases.get(name) else {
                return (404, status_json(404, "NotFound"));
            };
            if body_name != name || version != Some(current.version) {
                return conflict("Conflict");
            }
            st.version += 1;
            lease.version = st.version;
            let json = lease_json(&ns, name, &lease);
            st.leases.insert(name.to_owned(), lease);
            lease_event(st, "MODIFIED", &json);
            (200, json)
        }
        ("DELETE", name) => {
            let v: serde_yaml::Value = serde_yaml::from_str(body).unwrap_or_default();
            let precondition = v["preconditions"]["resourceVersion"]
                .as_str()
                .and_then(|r| r.parse::<u64>().ok());
            let Some(current) = st.leases.get(name) else {
                return (404, status_json(404, "NotFound"));
            };
            if precondition.is_some_and(|p| p != current.version) {
                return conflict("Conflict");
            }
            if let Some(mut gone) = st.leases.remove(name) {
                st.version += 1;
                gone.version = st.version;
                let json = lease_json(&ns, name, &gone);
                st.lease_tombstones.push((gone.version, name.to_owned()));
                lease_event(st, "DELETED", &json);
            }
            (200, status_json(200, "Success"))
        }
        _ => (405, status_json(405, "MethodNotAllowed")),
    }
}

/// The `resource.k8s.io/v1` group.
const RESOURCE_API: &str = "/apis/resource.k8s.io/v1";
/// The `events.k8s.io/v1` group.
const EVENTS_API: &str = "/apis/events.k8s.io/v1/namespaces/";

/// A value as one line of JSON (watch events are a line each).
fn value_json(v: &serde_yaml::Value) -> String {
    use serde_yaml::Value as V;
    match v {
        V::Null => "null".into(),
        V::Bool(b) => b.to_string(),
        V::Number(n) => n.to_string(),
        V::String(s) => json_string(s),
        V::Sequence(items) => format!(
            "[{}]",
            items.iter().map(value_json).collect::<Vec<_>>().join(",")
        ),
        V::Mapping(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}:{}", value_json(k), value_json(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        V::Tagged(t) => value_json(&t.value),
    }
}

/// Tells the watches of `collection` that `object` was ADDED, MODIFIED or DELETED.
fn object_event(st: &mut State, collection: &str, kind: &str, object: &serde_yaml::Value) {
    let line = event(kind, &value_json(object));
    st.object_watchers.retain(|(c, query, w)| {
        c != collection || !selected(object, query) || w.send(WatchMsg::Line(line.clone())).is_ok()
    });
}

/// A watch of `resource.k8s.io` objects: every change from now, chunked, until the timeout, a
/// drop or the server stops. (No replay of what came before its version: spookd watches right
/// after listing.)
fn watch_objects(shared: &Arc<Shared>, tls: &mut impl Write, target: &str) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let timeout = query
        .split('&')
        .find_map(|p| p.strip_prefix("timeoutSeconds="))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(60);
    let (tx, rx): (Sender<WatchMsg>, Receiver<WatchMsg>) = crossbeam_channel::bounded(1024);
    {
        let mut st = shared.lock();
        st.object_watchers
            .push((path.to_owned(), query.to_owned(), tx));
        st.open_watches += 1;
        shared.changed.notify_all();
    }
    let _open = OpenWatch(shared.clone());
    let _ = write!(
        tls,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let _dropped = stream_watch(shared, tls, &rx, deadline);
}

/// Merges a JSON merge patch into `target` (RFC 7386: null removes, objects merge).
fn merge(target: &mut serde_yaml::Value, patch: &serde_yaml::Value) {
    match (target.as_mapping_mut(), patch.as_mapping()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else if let Some(existing) = t.get_mut(k) {
                    merge(existing, v);
                } else {
                    t.insert(k.clone(), v.clone());
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// Events: create (409 if the name exists, 422 without the fields the API requires), list, get,
/// and a merge patch (the series).
fn serve_events(
    st: &mut State,
    method: &str,
    target: &str,
    body: &str,
    content_type: &str,
) -> (u16, String) {
    let rest = &target[EVENTS_API.len()..];
    let (namespace, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let collection = format!("{EVENTS_API}{namespace}/events");
    let name = rest
        .strip_prefix("events")
        .unwrap_or("")
        .trim_start_matches('/');
    let yaml = |v: &serde_yaml::Value| serde_yaml::to_string(v).unwrap();
    match (method, name) {
        ("POST", "") => {
            let Ok(mut o) = serde_yaml::from_str::<serde_yaml::Value>(body) else {
                return (400, status_json(400, "BadRequest"));
            };
            let required = [
                "eventTime",
                "reportingController",
                "reportingInstance",
                "action",
                "reason",
            ];
            if o["kind"] != "Event"
                || o["metadata"]["namespace"].as_str() != Some(namespace)
                || required
                    .iter()
                    .any(|f| o[*f].as_str().is_none_or(str::is_empty))
            {
                return (422, status_json(422, "Invalid"));
            }
            let Some(name) = o["metadata"]["name"].as_str().map(str::to_owned) else {
                return (422, status_json(422, "Invalid"));
            };
            if let Some(why) = invalid_slice(&o) {
                return (422, status_json(422, &why.replace(['\'', '`'], "")));
            }
            let key = (collection, name);
            if st.objects.contains_key(&key) {
                return (409, status_json(409, "AlreadyExists"));
            }
            st.version += 1;
            o["metadata"]["resourceVersion"] = st.version.to_string().into();
            st.objects.insert(key, o.clone());
            (201, yaml(&o))
        }
        ("PATCH", name) if !name.is_empty() => {
            if content_type != "application/merge-patch+json" {
                return (415, status_json(415, "UnsupportedMediaType"));
            }
            let Ok(patch) = serde_yaml::from_str::<serde_yaml::Value>(body) else {
                return (400, status_json(400, "BadRequest"));
            };
            let Some(o) = st.objects.get_mut(&(collection, name.to_owned())) else {
                return (404, status_json(404, "NotFound"));
            };
            merge(o, &patch);
            let out = yaml(o);
            st.version += 1;
            (200, out)
        }
        _ => (405, status_json(405, "MethodNotAllowed")),
    }
}

/// Decodes the `%XX` escapes of a query value.
fn unescape_query(v: &str) -> String {
    let mut out = Vec::new();
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 2 < b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if let Some(x) = hex {
            out.push(x);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `object` matches a list's `fieldSelector` (only `spec.driver=…`) and
/// `labelSelector` (`k=v,…`).
fn selected(object: &serde_yaml::Value, query: &str) -> bool {
    for pair in query.split('&') {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        let v = unescape_query(v);
        match k {
            "fieldSelector" => {
                for term in v.split(',') {
                    let Some((field, want)) = term.split_once('=') else {
                        return false;
                    };
                    let got = match field {
                        "spec.driver" => object["spec"]["driver"].as_str(),
                        "metadata.name" => object["metadata"]["name"].as_str(),
                        _ => return false,
                    };
                    if got != Some(want) {
                        return false;
                    }
                }
            }
            "labelSelector" => {
                for term in v.split(',') {
                    let Some((label, want)) = term.split_once('=') else {
                        return false;
                    };
                    if object["metadata"]["labels"][label].as_str() != Some(want) {
                        return false;
                    }
                }
            }
            _ => {}
        }
    }
    true
}

/// The API server's semantic checks of a ResourceSlice's node selector, which no schema has: one
/// term, and a field requirement with `In` or `NotIn` names exactly one value.
fn invalid_slice(o: &serde_yaml::Value) -> Option<String> {
    let terms = o["spec"]["nodeSelector"]["nodeSelectorTerms"].as_sequence()?;
    if terms.len() != 1 {
        return Some("must have exactly one node selector term".into());
    }
    for f in terms[0]["matchFields"].as_sequence().into_iter().flatten() {
        let n = f["values"].as_sequence().map_or(0, Vec::len);
        if matches!(f["operator"].as_str(), Some("In" | "NotIn")) && n != 1 {
            return Some(
                "must be only one value when `operator` is 'In' or 'NotIn' for node field selector"
                    .into(),
            );
        }
    }
    None
}

/// The objects of `resource.k8s.io/v1` with the real optimistic concurrency: create (409 if it
/// exists), get, list with selectors, replace at a `resourceVersion` (409 if it moved, 404 if it
/// is gone), delete with a `resourceVersion` precondition (409). Bodies are YAML or JSON.
/// What a server with the newer DRA gates off drops from an object on write.
fn drop_gated(o: &mut serde_yaml::Value) {
    if let Some(spec) = o
        .get_mut("spec")
        .and_then(serde_yaml::Value::as_mapping_mut)
    {
        spec.remove("extendedResourceName");
        if let Some(devices) = spec
            .get_mut("devices")
            .and_then(serde_yaml::Value::as_sequence_mut)
        {
            for d in devices
                .iter_mut()
                .filter_map(serde_yaml::Value::as_mapping_mut)
            {
                d.remove("taints");
            }
        }
    }
}

fn serve_objects(st: &mut State, method: &str, target: &str, body: &str) -> (u16, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let collections = ["resourceslices", "deviceclasses"];
    let (collection, name) = match path.rsplit_once('/') {
        Some((c, n))
            if collections.iter().any(|k| c.ends_with(&format!("v1/{k}")))
                || c.ends_with("/resourceclaims")
                || c.ends_with("/leases") =>
        {
            (c.to_owned(), Some(n.to_owned()))
        }
        _ => (path.to_owned(), None),
    };
    let kind = if collection.ends_with("resourceslices") {
        "ResourceSlice"
    } else if collection.ends_with("deviceclasses") {
        "DeviceClass"
    } else if collection.ends_with("/leases") {
        "Lease"
    } else {
        "ResourceClaim"
    };
    let yaml = |v: &serde_yaml::Value| serde_yaml::to_string(v).unwrap();
    let parsed: Result<serde_yaml::Value, _> = serde_yaml::from_str(body);
    match (method, name) {
        ("GET", None) => {
            let all: Vec<serde_yaml::Value> = (st.objects.iter())
                .filter(|((c, _), o)| *c == collection && selected(o, query))
                .map(|(_, o)| o.clone())
                .collect();
            // Pages as the real server cuts them: `limit`, and an opaque `continue` token.
            let param = |name: &str| {
                query
                    .split('&')
                    .find_map(|p| p.strip_prefix(&format!("{name}=")))
                    .map(unescape_query)
            };
            let start: usize = param("continue")
                .and_then(|t| t.strip_prefix("page:").and_then(|n| n.parse().ok()))
                .unwrap_or(0);
            let limit: usize = param("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(usize::MAX);
            let items: Vec<serde_yaml::Value> =
                all.iter().skip(start).take(limit).cloned().collect();
            let next = (start.saturating_add(limit) < all.len())
                .then(|| format!("page:{}", start + limit));
            let mut list = serde_yaml::Mapping::new();
            list.insert("kind".into(), format!("{kind}List").into());
            list.insert("apiVersion".into(), "resource.k8s.io/v1".into());
            let mut meta = serde_yaml::Mapping::new();
            meta.insert("resourceVersion".into(), st.version.to_string().into());
            if let Some(next) = next {
                meta.insert("continue".into(), next.into());
            }
            list.insert("metadata".into(), meta.into());
            list.insert("items".into(), items.into());
            (200, yaml(&list.into()))
        }
        ("GET", Some(name)) => match st.objects.get(&(collection, name)) {
            Some(o) => (200, yaml(o)),
            None => (404, status_json(404, "NotFound")),
        },
        ("POST", None) => {
            let Ok(mut o) = parsed else {
                return (400, status_json(400, "BadRequest"));
            };
            let group = if kind == "Lease" {
                "coordination.k8s.io/v1"
            } else {
                "resource.k8s.io/v1"
            };
            if o["kind"] != kind || o["apiVersion"] != group {
                return (400, status_json(400, "BadRequest"));
            }
            // No name but a generateName: the prefix and 5 characters of the real server's
            // alphabet (from the next version here, so tests can know it).
            let generated = (o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .is_empty())
            .then(|| o["metadata"]["generateName"].as_str())
            .flatten()
            .map(|prefix| {
                const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
                let mut n = st.version + 1;
                let suffix: String = (0..5)
                    .map(|_| {
                        let c = ALPHABET[(n % 27) as usize] as char;
                        n /= 27;
                        c
                    })
                    .collect();
                format!("{prefix}{suffix}")
            });
            if let Some(name) = generated {
                o["metadata"]["name"] = name.into();
            }
            let Some(name) = o["metadata"]["name"].as_str().map(str::to_owned) else {
                return (422, status_json(422, "Invalid"));
            };
            let key = (collection, name);
            if st.objects.contains_key(&key) {
                return (409, status_json(409, "AlreadyExists"));
            }
            st.version += 1;
            if st.gates_off {
                drop_gated(&mut o);
            }
            o["metadata"]["resourceVersion"] = st.version.to_string().into();
            o["metadata"]["uid"] = format!("uid-{}", st.version).into();
            object_event(st, &key.0, "ADDED", &o);
            st.objects.insert(key, o.clone());
            (201, yaml(&o))
        }
        ("PUT", Some(name)) => {
            let Ok(mut o) = parsed else {
                return (400, status_json(400, "BadRequest"));
            };
            if o["kind"] != kind || o["metadata"]["name"].as_str() != Some(name.as_str()) {
                return (400, status_json(400, "BadRequest"));
            }
            if let Some(why) = invalid_slice(&o) {
                return (422, status_json(422, &why.replace(['\'', '`'], "")));
            }
            let key = (collection, name);
            let Some(old) = st.objects.get(&key) else {
                return (404, status_json(404, "NotFound"));
            };
            if o["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"] {
                return (409, status_json(409, "Conflict"));
            }
            st.version += 1;
            if st.gates_off {
                drop_gated(&mut o);
            }
            o["metadata"]["resourceVersion"] = st.version.to_string().into();
            o["metadata"]["uid"] = old["metadata"]["uid"].clone();
            object_event(st, &key.0, "MODIFIED", &o);
            st.objects.insert(key, o.clone());
            (200, yaml(&o))
        }
        ("DELETE", Some(name)) => {
            let key = (collection, name);
            let Some(old) = st.objects.get(&key) else {
                return (404, status_json(404, "NotFound"));
            };
            let want = parsed.ok().and_then(|b| {
                b["preconditions"]["resourceVersion"]
                    .as_str()
                    .map(str::to_owned)
            });
            if let Some(want) = want.filter(|w| !w.is_empty()) {
                if old["metadata"]["resourceVersion"].as_str() != Some(want.as_str()) {
                    return (409, status_json(409, "Conflict"));
                }
            }
            if let Some(mut gone) = st.objects.remove(&key) {
                st.version += 1;
                gone["metadata"]["resourceVersion"] = st.version.to_string().into();
                object_event(st, &key.0, "DELETED", &gone);
            }
            (200, status_json(200, "Success"))
        }
        _ => (405, status_json(405, "MethodNotAllowed")),
    }
}

fn node_json(node: &Node) -> String {
    let map = |m: &BTreeMap<String, String>| -> String {
        let entries: Vec<String> = m
            .iter()
            .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
            .collect();
        format!("{{{}}}", entries.join(","))
    };
    format!(
        r#"{{"kind":"Node","apiVersion":"v1","metadata":{{"name":"{}","uid":"n-1","resourceVersion":"7","labels":{{"kubernetes.io/os":"linux"}},"annotations":{}}},"spec":{{}},"status":{{"capacity":{},"allocatable":{},"conditions":[{{"type":"Ready","status":"True"}}],"images":[{{"names":["x"],"sizeBytes":1}}]}}}}"#,
        node.name,
        map(&node.annotations),
        map(&node.capacity),
        map(&node.allocatable)
    )
}

/// A JSON Pointer token back to its text.
fn unescape_token(t: &str) -> String {
    t.replace("~1", "/").replace("~0", "~")
}

/// Applies a merge patch of `metadata.annotations` (a null value removes the key).
fn merge_annotations(node: &mut Node, body: &str) -> Result<(), String> {
    let patch: serde_yaml::Value = serde_yaml::from_str(body).map_err(|e| e.to_string())?;
    let Some(annotations) = patch["metadata"]["annotations"].as_mapping() else {
        return Err("expected metadata.annotations".into());
    };
    for (k, v) in annotations {
        let k = k.as_str().ok_or("annotation key")?.to_owned();
        match v {
            serde_yaml::Value::Null => {
                node.annotations.remove(&k);
            }
            serde_yaml::Value::String(v) => {
                node.annotations.insert(k, v.clone());
            }
            other => return Err(format!("annotation value {other:?}")),
        }
    }
    Ok(())
}

/// Applies a JSON patch of `test` and `remove` ops on /status/{capacity,allocatable}/NAME, all or
/// nothing; a failed test or a missing path is an error (422 from the real server).
fn json_patch_status(node: &mut Node, body: &str) -> Result<(), String> {
    let ops: Vec<BTreeMap<String, String>> =
        serde_yaml::from_str(body).map_err(|e| e.to_string())?;
    let mut next = node.clone();
    for op in ops {
        let path = op.get("path").ok_or("op without path")?;
        let mut parts = path
            .strip_prefix("/status/")
            .ok_or("not a status path")?
            .splitn(2, '/');
        let field = parts.next().unwrap_or_default();
        let name = unescape_token(parts.next().ok_or("no name")?);
        let map = match field {
            "capacity" => &mut next.capacity,
            "allocatable" => &mut next.allocatable,
            other => return Err(format!("unexpected field {other}")),
        };
        match op.get("op").map(String::as_str) {
            Some("test") => {
                if map.get(&name) != op.get("value") {
                    return Err(format!("testing value {path} failed"));
                }
            }
            Some("remove") => {
                map.remove(&name).ok_or(format!("no {path} to remove"))?;
            }
            other => return Err(format!("unexpected op {other:?}")),
        }
    }
    *node = next;
    Ok(())
}

fn status_json(code: u16, reason: &str) -> String {
    format!(
        r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"{reason}","reason":"{reason}","code":{code}}}"#
    )
}

fn respond(stream: &mut impl Write, code: u16, extra: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

fn chunk(stream: &mut impl Write, line: &str) -> std::io::Result<()> {
    let data = format!("{line}\n");
    write!(stream, "{:x}\r\n{data}\r\n", data.len())?;
    stream.flush()
}

/// Counts a watch connection while it is served.
struct OpenWatch(Arc<Shared>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.lock().open_watches -= 1;
        self.0.changed.notify_all();
    }
}

fn serve(shared: &Arc<Shared>, config: Arc<rustls::ServerConfig>, tcp: TcpStream) {
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // Read the request head (the handshake happens here; an untrusting client ends it).
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tls.read(&mut byte) {
            Ok(1) if head.len() < 65536 => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let method = head
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    let target = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let header = |name: &str| -> String {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let authorization = header("authorization");
    let content_type = header("content-type");
    let length: usize = header("content-length").parse().unwrap_or(0);
    let mut body = vec![0u8; length.min(1 << 20)];
    if tls.read_exact(&mut body).is_err() {
        return;
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    let (fault, token_ok, path_ok, list_body, watch_from) = {
        let mut st = shared.lock();
        st.requests.push(Request {
            method: method.clone(),
            target: target.clone(),
            authorization: authorization.clone(),
            content_type: content_type.clone(),
            body: body.clone(),
            at: Instant::now(),
        });
        shared.changed.notify_all();
        let path = format!(
            "/api/v1/namespaces/{}/configmaps?fieldSelector=metadata.name%3D{}",
            st.namespace, st.name
        );
        let watch_from = target.contains("&watch=true").then(|| {
            target
                .split("resourceVersion=")
                .nth(1)
                .and_then(|v| v.split('&').next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        });
        let items = if st.configmap.is_some() {
            configmap_json(&st)
        } else {
            String::new()
        };
        let list = format!(
            r#"{{"kind":"ConfigMapList","apiVersion":"v1","metadata":{{"resourceVersion":"{}"}},"items":[{items}]}}"#,
            st.version
        );
        let path_only = target.split('?').next().unwrap_or_default();
        let hit = st.faults.iter().position(|(matcher, _)| match matcher {
            None => true,
            Some((m, suffix)) => *m == method && path_only.ends_with(suffix.as_str()),
        });
        let outage = st.outage.then_some(Fault::Status(503, None));
        (
            outage.or_else(|| hit.and_then(|i| st.faults.remove(i)).map(|(_, f)| f)),
            authorization == format!("Bearer {}", st.token),
            target.starts_with(&path),
            list,
            watch_from,
        )
    };
    match fault {
        Some(Fault::Status(code, retry)) => {
            let extra = retry
                .map(|s| format!("Retry-After: {s}\r\n"))
                .unwrap_or_default();
            return respond(&mut tls, code, &extra, &status_json(code, "Injected"));
        }
        Some(Fault::Silence) => {
            while !shared.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        None => {}
    }
    if !token_ok {
        return respond(&mut tls, 401, "", &status_json(401, "Unauthorized"));
    }
    // spookd's DRA health reports are Leases with annotations: held as plain objects, with the
    // resource.k8s.io ones (the Lease model below keeps only what the exclusive Leases use).
    let report = {
        let st = shared.lock();
        let leases = format!(
            "/apis/coordination.k8s.io/v1/namespaces/{}/leases",
            st.namespace
        );
        target.starts_with(&leases)
            && (target.contains("health-report")
                || body.contains("health-report")
                || st.objects.contains_key(&(
                    leases.clone(),
                    target[leases.len()..].trim_start_matches('/').to_owned(),
                )))
    };
    if (target.starts_with(RESOURCE_API) || report)
        && method == "GET"
        && target.contains("&watch=true")
    {
        return watch_objects(shared, &mut tls, &target);
    }
    if target.starts_with(EVENTS_API) {
        let (code, body) = {
            let mut st = shared.lock();
            let answer = serve_events(&mut st, &method, &target, &body, &content_type);
            shared.changed.notify_all();
            answer
        };
        return respond(&mut tls, code, "", &body);
    }
    let by_name = {
        let st = shared.lock();
        format!("/api/v1/namespaces/{}/configmaps/{}", st.namespace, st.name)
    };
    if method == "GET" && target == by_name {
        let st = shared.lock();
        if st.configmap.is_none() {
            drop(st);
            return respond(&mut tls, 404, "", &status_json(404, "NotFound"));
        }
        let json = configmap_json(&st);
        drop(st);
        return respond(&mut tls, 200, "", &json);
    }
    if target.starts_with(RESOURCE_API) || report {
        let (code, body) = {
            let mut st = shared.lock();
            let answer = serve_objects(&mut st, &method, &target, &body);
            shared.changed.notify_all();
            answer
        };
        return respond(&mut tls, code, "", &body);
    }
    let leases = format!(
        "/apis/coordination.k8s.io/v1/namespaces/{}/leases",
        shared.lock().namespace
    );
    if let Some(rest) = target.strip_prefix(&leases) {
        let rest = rest.trim_start_matches('/').to_owned();
        if method == "GET" && rest.contains("watch=true") {
            return watch_leases(shared, &mut tls, &rest);
        }
        let (code, json) = {
            let mut st = shared.lock();
            let answer = serve_leases(&mut st, &method, &rest, &body);
            shared.changed.notify_all();
            answer
        };
        return respond(&mut tls, code, "", &json);
    }
    if let Some(rest) = target.strip_prefix("/api/v1/nodes/") {
        let mut st = shared.lock();
        let (name, status) = match rest.strip_suffix("/status") {
            Some(name) => (name, true),
            None => (rest, false),
        };
        let Some(node) = st.node.as_mut().filter(|n| n.name == name) else {
            return respond(&mut tls, 404, "", &status_json(404, "NotFound"));
        };
        let result = match (method.as_str(), status) {
            ("GET", false) => Ok(()),
            ("PATCH", false) if content_type == "application/merge-patch+json" => {
                merge_annotations(node, &body)
            }
            ("PATCH", true) if content_type == "application/json-patch+json" => {
                json_patch_status(node, &body)
            }
            ("PATCH", _) => {
                return respond(&mut tls, 415, "", &status_json(415, "UnsupportedMediaType"))
            }
            _ => return respond(&mut tls, 405, "", &status_json(405, "MethodNotAllowed")),
        };
        return match result {
            Ok(()) => {
                let json = node_json(node);
                shared.changed.notify_all();
                drop(st);
                respond(&mut tls, 200, "", &json)
            }
            Err(e) => {
                drop(st);
                respond(&mut tls, 422, "", &status_json(422, &e.replace('"', "'")))
            }
        };
    }
    if !path_ok {
        return respond(&mut tls, 404, "", &status_json(404, "NotFound"));
    }
    let Some(from) = watch_from else {
        return respond(&mut tls, 200, "", &list_body);
    };
    // A watch: chunked events until the timeout, a drop, or the server stops.
    let timeout = target
        .split("timeoutSeconds=")
        .nth(1)
        .and_then(|v| v.split('&').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(60);
    let (tx, rx): (Sender<WatchMsg>, Receiver<WatchMsg>) = crossbeam_channel::bounded(1024);
    let replay = {
        let mut st = shared.lock();
        let replay = if from < st.compacted {
            Some(expired_line(st.compacted))
        } else {
            match &st.configmap {
                Some((v, _)) if *v > from => Some(event("MODIFIED", &configmap_json(&st))),
                _ => None,
            }
        };
        st.watchers.push(tx);
        st.open_watches += 1;
        shared.changed.notify_all();
        replay
    };
    let _open = OpenWatch(shared.clone());
    let _ = write!(
        tls,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    if let Some(line) = replay {
        if chunk(&mut tls, &line).is_err() {
            return;
        }
        if from < shared.lock().compacted {
            let _ = tls.write_all(b"0\r\n\r\n");
            return;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(timeout);
    if stream_watch(shared, &mut tls, &rx, deadline) {
        // Close without the final chunk: the client sees a broken stream.
        let _ = tls.sock.shutdown(std::net::Shutdown::Both);
    }
}
