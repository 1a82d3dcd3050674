//! A kubelet stand-in (not part of spookd's library: compiled by path into kubelet-sim, the tests
//! and the bench): the kubelet's side of the v1beta1 device-plugin protocol, for the
//! `kubelet-sim` demo program and the integration tests.
//!
//! Like the kubelet's device manager it serves Registration on `kubelet.sock`, checks each
//! request's version and resource name, then dials the plugin's endpoint (relative to the
//! directory), calls GetDevicePluginOptions and keeps a ListAndWatch stream open, replacing its
//! device set with every message. A restart wipes the directory's sockets and re-creates
//! kubelet.sock, as the real kubelet does. It also serves the podresources API (v1 `List`) at
//! `../pod-resources/kubelet.sock` beside the directory, as the kubelet lays them out, answering
//! with the pods a test sets ([`Kubelet::set_pod`]).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use futures_util::{FutureExt, StreamExt};
use grpcio::{
    CallOption, ChannelBuilder, Environment, RpcContext, RpcStatus, RpcStatusCode, ServerBuilder,
    ServerCredentials, UnarySink,
};

use spookd::clock::later;
use spookd::config::ResourceName;
use spookd::kubelet::proto::podresources::{
    self, ContainerDevices, ContainerResources, ListPodResourcesRequest, ListPodResourcesResponse,
    PodResources,
};
use spookd::kubelet::proto::{
    self, AllocateRequest, AllocateResponse, ContainerAllocateRequest, DevicePluginClient,
    DevicePluginOptions, Empty, RegisterRequest, KUBELET_SOCKET,
};

/// The kubelet's checkpoint file, which survives a kubelet restart (everything else is wiped).
const CHECKPOINT: &str = "kubelet_internal_checkpoint";
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the stand-in saw, in order (for printing and for tests that follow a sequence).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Registered {
        resource: String,
        endpoint: String,
    },
    Refused {
        resource: String,
        reason: String,
    },
    Devices {
        resource: String,
        devices: Vec<(String, String)>,
    },
    StreamEnded {
        resource: String,
        endpoint: String,
    },
}

/// One registered plugin as the stand-in knows it.
#[derive(Clone)]
pub struct Plugin {
    pub endpoint: String,
    pub options: Option<DevicePluginOptions>,
    /// The last device list, as (ID, health); `None` before the first message.
    pub devices: Option<Vec<(String, String)>>,
    /// ListAndWatch messages received on the current stream.
    pub updates: usize,
    pub stream_open: bool,
    client: Arc<DevicePluginClient>,
    /// Fired by [`Kubelet::hang_up`]: the stream task drops its ListAndWatch call.
    hang_up: Arc<Mutex<Option<futures_channel::oneshot::Sender<()>>>>,
}

#[derive(Default)]
struct Inner {
    /// Every Register call accepted, in order, across restarts.
    registrations: Vec<(String, String)>,
    /// When each accepted Register call arrived (before the stand-in dials the plugin back).
    register_calls: Vec<(String, Instant)>,
    plugins: BTreeMap<String, Plugin>,
    /// Pod name → its devices as (resource, IDs), for podresources List.
    pods: BTreeMap<String, Vec<(String, Vec<String>)>>,
    /// When set, podresources List fails with UNAVAILABLE.
    pod_resources_down: bool,
    generation: u64,
    subscribers: Vec<Sender<Event>>,
}

#[derive(Default)]
struct Shared {
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock only happens in a failing test; keep going with the data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn event(&self, inner: &mut Inner, e: Event) {
        inner.subscribers.retain(|s| s.send(e.clone()).is_ok());
        self.changed.notify_all();
    }
}

/// A running kubelet stand-in in one device-plugins directory.
pub struct Kubelet {
    dir: PathBuf,
    env: Arc<Environment>,
    shared: Arc<Shared>,
    server: Option<grpcio::Server>,
}

impl Kubelet {
    /// Starts serving Registration on `dir/kubelet.sock`.
    pub fn start(dir: &Path) -> io::Result<Kubelet> {
        let env = Arc::new(
            grpcio::EnvBuilder::new()
                .cq_count(1)
                .name_prefix("sim-grpc")
                .build(),
        );
        let mut k = Kubelet {
            dir: dir.to_owned(),
            env,
            shared: Arc::default(),
            server: None,
        };
        k.listen()?;
        Ok(k)
    }

    fn listen(&mut self) -> io::Result<()> {
        let service = proto::create_registration(RegistrationService {
            dir: self.dir.clone(),
            env: self.env.clone(),
            shared: self.shared.clone(),
            generation: self.shared.lock().generation,
        });
        let lister = podresources::create_pod_resources_lister(PodResourcesService {
            shared: self.shared.clone(),
        });
        let mut server = ServerBuilder::new(self.env.clone())
            .register_service(service)
            .register_service(lister)
            .build()
            .map_err(io::Error::other)?;
        let path = self.dir.join(KUBELET_SOCKET);
        server
            .add_listening_port(
                format!("unix:{}", path.display()),
                ServerCredentials::insecure(),
            )
            .map_err(io::Error::other)?;
        let pod_resources = self.pod_resources_socket();
        if let Some(parent) = pod_resources.parent() {
            fs::create_dir_all(parent)?;
        }
        let _ = fs::remove_file(&pod_resources);
        server
            .add_listening_port(
                format!("unix:{}", pod_resources.display()),
                ServerCredentials::insecure(),
            )
            .map_err(io::Error::other)?;
        server.start();
        self.server = Some(server);
        Ok(())
    }

    /// The device-plugins directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where podresources is served: `pod-resources/kubelet.sock` beside the directory.
    pub fn pod_resources_socket(&self) -> PathBuf {
        let parent = self.dir.parent().unwrap_or(&self.dir);
        parent.join("pod-resources").join(KUBELET_SOCKET)
    }

    /// Sets pod `name`'s assigned devices as (resource, IDs); an empty list removes the pod.
    pub fn set_pod(&self, name: &str, devices: &[(&str, &[&str])]) {
        let mut inner = self.shared.lock();
        if devices.is_empty() {
            inner.pods.remove(name);
            return;
        }
        let devices = devices
            .iter()
            .map(|(r, ids)| (r.to_string(), ids.iter().map(|i| i.to_string()).collect()))
            .collect();
        inner.pods.insert(name.to_owned(), devices);
    }

    /// Makes podresources List fail (true) or answer again (false).
    pub fn set_pod_resources_down(&self, down: bool) {
        self.shared.lock().pod_resources_down = down;
    }

    /// Receives every later event.
    pub fn subscribe(&self, events: Sender<Event>) {
        self.shared.lock().subscribers.push(events);
    }

    /// Stops, wipes every socket in the directory (keeping the checkpoint file, as the kubelet
    /// does), forgets every plugin and serves kubelet.sock again. Returns when kubelet.sock was
    /// about to be created.
    pub fn restart(&mut self) -> io::Result<Instant> {
        self.stop()?;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_name() != CHECKPOINT {
                fs::remove_file(entry.path())?;
            }
        }
        let at = Instant::now();
        self.listen()?;
        Ok(at)
    }

    /// Stops serving and removes kubelet.sock; plugins are forgotten (their streams dropped).
    pub fn stop(&mut self) -> io::Result<()> {
        {
            let mut inner = self.shared.lock();
            inner.generation += 1;
            inner.plugins.clear();
        }
        self.server = None;
        let _ = fs::remove_file(self.pod_resources_socket());
        match fs::remove_file(self.dir.join(KUBELET_SOCKET)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Closes `resource`'s ListAndWatch stream and does not dial again, as the kubelet does to a
    /// plugin whose resource another endpoint registered meanwhile. False if it has no stream.
    pub fn hang_up(&self, resource: &str) -> bool {
        let hang_up = self
            .shared
            .lock()
            .plugins
            .get(resource)
            .map(|p| p.hang_up.clone());
        let sender = hang_up.and_then(|h| h.lock().unwrap_or_else(|e| e.into_inner()).take());
        sender.is_some_and(|s| s.send(()).is_ok())
    }

    /// When each accepted Register call arrived, as (resource, instant), in order.
    pub fn register_calls(&self) -> Vec<(String, Instant)> {
        self.shared.lock().register_calls.clone()
    }

    /// Every accepted registration so far as (resource, endpoint), in order.
    pub fn registrations(&self) -> Vec<(String, String)> {
        self.shared.lock().registrations.clone()
    }

    /// The registered plugins by resource name.
    pub fn plugins(&self) -> BTreeMap<String, Plugin> {
        self.shared.lock().plugins.clone()
    }

    /// The device IDs of `resource`'s last list (`None` if not registered or nothing received).
    pub fn device_ids(&self, resource: &str) -> Option<Vec<String>> {
        let inner = self.shared.lock();
        let devices = inner.plugins.get(resource)?.devices.as_ref()?;
        Some(devices.iter().map(|(id, _)| id.clone()).collect())
    }

    /// Waits up to `timeout` for `done` to hold; returns whether it did.
    pub fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&Kubelet) -> bool) -> bool {
        let deadline = later(Instant::now(), timeout);
        loop {
            if done(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let inner = self.shared.lock();
            // Bounded: wakes on any event, or every 50 ms to re-check file-based conditions.
            let wait = (deadline - now).min(Duration::from_millis(50));
            drop(self.changed_wait(inner, wait));
        }
    }

    fn changed_wait<'a>(
        &'a self,
        inner: MutexGuard<'a, Inner>,
        wait: Duration,
    ) -> MutexGuard<'a, Inner> {
        match self.shared.changed.wait_timeout(inner, wait) {
            Ok((g, _)) => g,
            Err(e) => e.into_inner().0,
        }
    }

    /// Waits until `resource`'s stream shows exactly `ids` (in order); returns the last list seen.
    pub fn wait_devices(
        &self,
        resource: &str,
        ids: &[&str],
        timeout: Duration,
    ) -> Result<(), Option<Vec<String>>> {
        let want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        if self.wait_until(timeout, |k| k.device_ids(resource).as_ref() == Some(&want)) {
            Ok(())
        } else {
            Err(self.device_ids(resource))
        }
    }

    fn client(&self, resource: &str) -> io::Result<Arc<DevicePluginClient>> {
        let inner = self.shared.lock();
        let plugin = inner.plugins.get(resource).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{resource} is not registered"),
            )
        })?;
        Ok(plugin.client.clone())
    }

    /// Allocate, one container per entry of `containers`, on `resource`'s registered endpoint.
    pub fn allocate(
        &self,
        resource: &str,
        containers: &[&[&str]],
    ) -> Result<AllocateResponse, grpcio::Error> {
        let client = self.client(resource).map_err(|e| {
            grpcio::Error::RpcFailure(RpcStatus::with_message(
                RpcStatusCode::NOT_FOUND,
                e.to_string(),
            ))
        })?;
        let mut req = AllocateRequest::new();
        req.container_requests = containers
            .iter()
            .map(|ids| {
                let mut c = ContainerAllocateRequest::new();
                c.devices_ids = ids.iter().map(|s| s.to_string()).collect();
                c
            })
            .collect();
        client.allocate(&req, CallOption::default().timeout(CALL_TIMEOUT))
    }

    /// A client for `resource`'s registered endpoint, for the other calls.
    pub fn plugin_client(&self, resource: &str) -> io::Result<Arc<DevicePluginClient>> {
        self.client(resource)
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[derive(Clone)]
struct RegistrationService {
    dir: PathBuf,
    env: Arc<Environment>,
    shared: Arc<Shared>,
    generation: u64,
}

impl proto::Registration for RegistrationService {
    fn register(&mut self, ctx: RpcContext<'_>, req: RegisterRequest, sink: UnarySink<Empty>) {
        let resource = req.resource_name.clone();
        let refusal = if req.version != proto::VERSION {
            Some(format!("unsupported version {:?}", req.version))
        } else if ResourceName::try_from(resource.clone()).is_err() {
            Some(format!("invalid resource name {resource:?}"))
        } else if req.endpoint.contains('/') {
            Some(format!(
                "endpoint {:?} must be a file name in the directory",
                req.endpoint
            ))
        } else {
            None
        };
        if let Some(reason) = refusal {
            let mut inner = self.shared.lock();
            self.shared.event(
                &mut inner,
                Event::Refused {
                    resource,
                    reason: reason.clone(),
                },
            );
            let status = RpcStatus::with_message(RpcStatusCode::INVALID_ARGUMENT, reason);
            ctx.spawn(sink.fail(status).map(|_| ()));
            return;
        }
        self.shared
            .lock()
            .register_calls
            .push((resource, Instant::now()));
        ctx.spawn(sink.success(Empty::new()).map(|_| ()));
        // Dial from a thread of our own, as the kubelet does from a goroutine: the handler must
        // not block the completion queue.
        let service = self.clone();
        let _ = std::thread::Builder::new()
            .name("sim-dial".into())
            .spawn(move || service.connect(req));
    }
}

impl RegistrationService {
    fn connect(self, req: RegisterRequest) {
        let resource = req.resource_name.clone();
        let endpoint = req.endpoint.clone();
        let path = self.dir.join(&endpoint);
        let channel = ChannelBuilder::new(self.env.clone())
            .use_local_subchannel_pool(true)
            .connect(&format!("unix:{}", path.display()));
        let client = Arc::new(DevicePluginClient::new(channel));
        let opt = || CallOption::default().timeout(CALL_TIMEOUT);
        let options = client.get_device_plugin_options(opt()).ok();
        let Ok(mut stream) = client.list_and_watch(CallOption::default()) else {
            return;
        };
        let (hang_up, mut hung_up) = futures_channel::oneshot::channel::<()>();
        {
            let mut inner = self.shared.lock();
            if inner.generation != self.generation {
                return; // restarted meanwhile
            }
            inner
                .registrations
                .push((resource.clone(), endpoint.clone()));
            inner.plugins.insert(
                resource.clone(),
                Plugin {
                    endpoint: endpoint.clone(),
                    options,
                    devices: None,
                    updates: 0,
                    stream_open: true,
                    client: client.clone(),
                    hang_up: Arc::new(Mutex::new(Some(hang_up))),
                },
            );
            let event = Event::Registered {
                resource: resource.clone(),
                endpoint: endpoint.clone(),
            };
            self.shared.event(&mut inner, event);
        }
        let shared = self.shared.clone();
        let generation = self.generation;
        client.spawn(async move {
            // Only this endpoint's entry is updated: a newer registration replaces it.
            let current = |inner: &Inner| {
                inner.generation == generation
                    && inner
                        .plugins
                        .get(&resource)
                        .is_some_and(|p| p.endpoint == endpoint)
            };
            loop {
                let next = futures_util::future::select(stream.next(), &mut hung_up).await;
                let futures_util::future::Either::Left((Some(Ok(msg)), _)) = next else {
                    break;
                };
                let devices: Vec<(String, String)> = msg
                    .devices
                    .iter()
                    .map(|d| (d.ID.clone(), d.health.clone()))
                    .collect();
                let mut inner = shared.lock();
                if !current(&inner) {
                    return;
                }
                if let Some(p) = inner.plugins.get_mut(&resource) {
                    p.devices = Some(devices.clone());
                    p.updates += 1;
                }
                shared.event(
                    &mut inner,
                    Event::Devices {
                        resource: resource.clone(),
                        devices,
                    },
                );
            }
            let mut inner = shared.lock();
            if current(&inner) {
                if let Some(p) = inner.plugins.get_mut(&resource) {
                    p.stream_open = false;
                }
            }
            shared.event(&mut inner, Event::StreamEnded { resource, endpoint });
        });
    }
}

/// The podresources List the stand-in serves.
#[derive(Clone)]
struct PodResourcesService {
    shared: Arc<Shared>,
}

impl podresources::PodResourcesLister for PodResourcesService {
    fn list(
        &mut self,
        ctx: RpcContext<'_>,
        _req: ListPodResourcesRequest,
        sink: UnarySink<ListPodResourcesResponse>,
    ) {
        let inner = self.shared.lock();
        if inner.pod_resources_down {
            let status = RpcStatus::with_message(RpcStatusCode::UNAVAILABLE, "down".into());
            ctx.spawn(sink.fail(status).map(|_| ()));
            return;
        }
        let mut response = ListPodResourcesResponse::new();
        for (name, devices) in &inner.pods {
            let mut pod = PodResources::new();
            pod.name = name.clone();
            pod.namespace = "default".into();
            let mut container = ContainerResources::new();
            container.name = "main".into();
            for (resource, ids) in devices {
                let mut d = ContainerDevices::new();
                d.resource_name = resource.clone();
                d.device_ids = ids.clone();
                container.devices.push(d);
            }
            pod.containers.push(container);
            response.pod_resources.push(pod);
        }
        drop(inner);
        ctx.spawn(sink.success(response).map(|_| ()));
    }
}

/// The kubelet's side of DRA, as far as a driver meets it: the plugin watcher (it finds sockets in
/// the plugin registry, calls GetInfo, checks the answer as the kubelet does and answers with
/// NotifyRegistrationStatus; a socket re-created is registered again, one deleted deregistered)
/// and the DRA manager's calls (NodePrepareResources, NodeUnprepareResources, in either version).
/// Only the tests use it, and a stand-in that cannot do its part fails the test: it unwraps.
#[allow(clippy::unwrap_used)]
pub mod dra {
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
            let channel =
                ChannelBuilder::new(self.grpc.clone()).connect(&format!("unix:{endpoint}"));
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
            self.client(driver).unprepare(
                version,
                &req,
                CallOption::default().timeout(CALL_TIMEOUT),
            )
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
            let channel =
                ChannelBuilder::new(self.grpc.clone()).connect(&format!("unix:{endpoint}"));
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

    fn register(
        path: &Path,
        id: (u64, i64, i64),
        grpc: &Arc<Environment>,
        inner: &Arc<Mutex<Inner>>,
    ) {
        let channel =
            ChannelBuilder::new(grpc.clone()).connect(&format!("unix:{}", path.display()));
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
}
