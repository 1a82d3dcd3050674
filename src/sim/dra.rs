//! The kubelet's side of DRA, as far as a driver meets it: the plugin watcher (it finds sockets in
//! the plugin registry, calls GetInfo, checks the answer as the kubelet does and answers with
//! NotifyRegistrationStatus; a socket re-created is registered again, one deleted deregistered)
//! and the DRA manager's calls (NodePrepareResources, NodeUnprepareResources, in either version).
//! Only the tests use it, and a stand-in that cannot do its part fails the test: it unwraps.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grpcio::{CallOption, ChannelBuilder, Environment};

use spookd::dra::proto::{
    self, Claim, DraPluginClient, NodePrepareResourcesRequest, NodePrepareResourcesResponse,
    NodeUnprepareResourcesRequest, NodeUnprepareResourcesResponse, RegistrationClient,
    RegistrationStatus, Version,
};

const CALL_TIMEOUT: Duration = Duration::from_secs(20);
const SCAN: Duration = Duration::from_millis(20);

/// A driver the stand-in registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registered {
    pub endpoint: String,
    pub versions: Vec<String>,
    /// The registry socket it came from, and its identity (inode, change time).
    socket: (PathBuf, (u64, i64, i64)),
}

#[derive(Default)]
struct Inner {
    plugins: BTreeMap<String, Registered>,
    /// Every registration, in order: (driver, accepted, error).
    log: Vec<(String, bool, String)>,
}

/// A running stand-in; stops its watcher on drop.
pub struct DraKubelet {
    registry: PathBuf,
    grpc: Arc<Environment>,
    inner: Arc<Mutex<Inner>>,
    stop: Arc<AtomicBool>,
}

fn identity(path: &Path) -> Option<(u64, i64, i64)> {
    let m = std::fs::symlink_metadata(path).ok()?;
    // Not ctime: a plugin's chmod of its new socket changes it, and a scan between its bind
    // and its chmod took the socket for a replaced one and registered it twice.
    Some((m.ino(), m.mtime(), m.mtime_nsec()))
}

impl DraKubelet {
    pub fn start(registry: &Path) -> DraKubelet {
        std::fs::create_dir_all(registry).unwrap();
        let k = DraKubelet {
            registry: registry.to_owned(),
            grpc: Arc::new(Environment::new(1)),
            inner: Arc::default(),
            stop: Arc::default(),
        };
        let (registry, grpc, inner, stop) = (
            k.registry.clone(),
            k.grpc.clone(),
            k.inner.clone(),
            k.stop.clone(),
        );
        std::thread::Builder::new()
            .name("dra-kubelet".into())
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    scan(&registry, &grpc, &inner);
                    std::thread::sleep(SCAN);
                }
            })
            .unwrap();
        k
    }

    /// The driver's registration, if the stand-in holds one.
    pub fn registered(&self, driver: &str) -> Option<Registered> {
        self.inner.lock().unwrap().plugins.get(driver).cloned()
    }

    /// Waits (bounded) for the driver's registration.
    pub fn wait_registered(&self, driver: &str, timeout: Duration) -> Option<Registered> {
        let deadline = spookd::clock::later(Instant::now(), timeout);
        while Instant::now() < deadline {
            if let Some(r) = self.registered(driver) {
                return Some(r);
            }
            std::thread::sleep(SCAN);
        }
        None
    }

    /// How many times `driver` was registered (accepted) so far.
    pub fn registrations(&self, driver: &str) -> usize {
        (self.inner.lock().unwrap().log.iter())
            .filter(|(d, ok, _)| d == driver && *ok)
            .count()
    }

    /// A kubelet restart: it forgets every plugin and registers what it finds again.
    pub fn restart(&self) {
        self.inner.lock().unwrap().plugins.clear();
    }

    fn client(&self, driver: &str) -> DraPluginClient {
        let endpoint = self
            .registered(driver)
            .unwrap_or_else(|| panic!("{driver} is not registered"))
            .endpoint;
        let channel = ChannelBuilder::new(self.grpc.clone()).connect(&format!("unix:{endpoint}"));
        DraPluginClient::new(channel)
    }

    fn claims(claims: &[(&str, &str, &str)]) -> Vec<Claim> {
        claims
            .iter()
            .map(|(namespace, uid, name)| {
                let mut c = Claim::new();
                c.namespace = (*namespace).to_owned();
                c.uid = (*uid).to_owned();
                c.name = (*name).to_owned();
                c
            })
            .collect()
    }

    /// NodePrepareResources for claims given as (namespace, uid, name).
    pub fn prepare(
        &self,
        driver: &str,
        version: Version,
        claims: &[(&str, &str, &str)],
    ) -> grpcio::Result<NodePrepareResourcesResponse> {
        let mut req = NodePrepareResourcesRequest::new();
        req.claims = Self::claims(claims);
        self.client(driver)
            .prepare(version, &req, CallOption::default().timeout(CALL_TIMEOUT))
    }

    /// NodeUnprepareResources for claims given as (namespace, uid, name).
    pub fn unprepare(
        &self,
        driver: &str,
        version: Version,
        claims: &[(&str, &str, &str)],
    ) -> grpcio::Result<NodeUnprepareResourcesResponse> {
        let mut req = NodeUnprepareResourcesRequest::new();
        req.claims = Self::claims(claims);
        self.client(driver)
            .unprepare(version, &req, CallOption::default().timeout(CALL_TIMEOUT))
    }
}

/// The newest list a device-health stream sent: (device, health, message) each.
pub type HealthSeen = Arc<Mutex<Option<Vec<(String, proto::HealthStatus, String)>>>>;

impl DraKubelet {
    /// Opens NodeWatchResources on the driver's DRA socket, as the kubelet does when the
    /// registration lists the health service; the stream's newest list lands in the answer.
    pub fn watch_health(&self, driver: &str) -> HealthSeen {
        let endpoint = self
            .registered(driver)
            .unwrap_or_else(|| panic!("{driver} is not registered"))
            .endpoint;
        let channel = ChannelBuilder::new(self.grpc.clone()).connect(&format!("unix:{endpoint}"));
        let client = proto::DraHealthClient::new(channel);
        let seen: HealthSeen = Arc::default();
        let out = seen.clone();
        let Ok(mut stream) = client.watch(CallOption::default()) else {
            return seen;
        };
        let keep = client.clone();
        let reader = async move {
            use futures_util::StreamExt as _;
            // The call lives as long as its client.
            let _client = keep;
            while let Some(Ok(r)) = stream.next().await {
                let list = (r.devices.iter())
                    .map(|d| {
                        (
                            d.device.device_name.clone(),
                            d.health.enum_value_or_default(),
                            d.message.clone(),
                        )
                    })
                    .collect();
                *out.lock().unwrap() = Some(list);
            }
        };
        client.spawn(reader);
        seen
    }
}

impl Drop for DraKubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One pass of the plugin watcher.
fn scan(registry: &Path, grpc: &Arc<Environment>, inner: &Arc<Mutex<Inner>>) {
    // Deregister plugins whose socket is gone or was replaced.
    inner
        .lock()
        .unwrap()
        .plugins
        .retain(|_, r| identity(&r.socket.0) == Some(r.socket.1));
    let Ok(entries) = std::fs::read_dir(registry) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(id) = identity(&path) else { continue };
        let known =
            (inner.lock().unwrap().plugins.values()).any(|r| r.socket == (path.clone(), id));
        if known
            || !entry.file_type().is_ok_and(|t| {
                use std::os::unix::fs::FileTypeExt as _;
                t.is_socket()
            })
        {
            continue;
        }
        register(&path, id, grpc, inner);
    }
}

fn register(path: &Path, id: (u64, i64, i64), grpc: &Arc<Environment>, inner: &Arc<Mutex<Inner>>) {
    let channel = ChannelBuilder::new(grpc.clone()).connect(&format!("unix:{}", path.display()));
    let client = RegistrationClient::new(channel);
    let opt = || CallOption::default().timeout(Duration::from_secs(2));
    let Ok(info) = client.get_info(opt()) else {
        return;
    };
    // The kubelet's checks: the type, a version it speaks, an endpoint that exists.
    let problem = if info.type_ != proto::PLUGIN_TYPE {
        Some(format!("type {:?} is not DRAPlugin", info.type_))
    } else if !info
        .supported_versions
        .iter()
        .any(|v| v == proto::V1 || v == proto::V1BETA1)
    {
        Some(format!(
            "no supported version in {:?}",
            info.supported_versions
        ))
    } else if std::fs::symlink_metadata(&info.endpoint).is_err() {
        Some(format!("endpoint {} does not exist", info.endpoint))
    } else {
        None
    };
    let mut status = RegistrationStatus::new();
    status.plugin_registered = problem.is_none();
    status.error = problem.clone().unwrap_or_default();
    let _ = client.notify(&status, opt());
    let mut inner = inner.lock().unwrap();
    inner.log.push((
        info.name.clone(),
        problem.is_none(),
        problem.clone().unwrap_or_default(),
    ));
    if problem.is_none() {
        inner.plugins.insert(
            info.name.clone(),
            Registered {
                endpoint: info.endpoint,
                versions: info.supported_versions,
                socket: (path.to_owned(), id),
            },
        );
    }
}
