//! A Kubernetes API server stand-in for one ConfigMap, over real HTTPS on 127.0.0.1.
//!
//! It speaks the parts of the protocol spookd uses: LIST with a `metadata.name` field selector,
//! WATCH from a resourceVersion with chunked JSON events (ADDED, MODIFIED, DELETED, BOOKMARK,
//! ERROR 410 after a compaction), bearer tokens (401 on a wrong one), and injected faults: an
//! error status (500, 429 with Retry-After, 410), a connection that is accepted and never
//! answered, a watch dropped mid-stream. Certificates come from a test CA made at test time.

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
    pub target: String,
    pub authorization: String,
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
    faults: VecDeque<Fault>,
    watchers: Vec<Sender<WatchMsg>>,
    /// Watch connections being served now.
    open_watches: usize,
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
                watchers: Vec::new(),
                open_watches: 0,
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
        self.shared.lock().faults.extend(faults.iter().cloned());
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
    let target = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let authorization = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("authorization: ")
                .or_else(|| l.strip_prefix("Authorization: "))
        })
        .unwrap_or_default()
        .to_owned();
    let (fault, token_ok, path_ok, list_body, watch_from) = {
        let mut st = shared.lock();
        st.requests.push(Request {
            target: target.clone(),
            authorization: authorization.clone(),
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
        (
            st.faults.pop_front(),
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
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait.min(Duration::from_millis(100))) {
            Ok(WatchMsg::Line(line)) => {
                if chunk(&mut tls, &line).is_err() {
                    return;
                }
            }
            Ok(WatchMsg::Drop) => {
                // Close without the final chunk: the client sees a broken stream.
                let _ = tls.sock.shutdown(std::net::Shutdown::Both);
                return;
            }
            Err(RecvTimeoutError::Timeout)
                if Instant::now() < deadline && !shared.stop.load(Ordering::SeqCst) => {}
            Err(_) => {
                let _ = tls.write_all(b"0\r\n\r\n");
                let _ = tls.flush();
                return;
            }
        }
    }
}
