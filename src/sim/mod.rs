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

pub mod dra;
mod pod_resources;
mod registration;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use grpcio::{CallOption, Environment, RpcStatus, RpcStatusCode, ServerBuilder, ServerCredentials};

use pod_resources::PodResourcesService;
use registration::RegistrationService;
use spookd::clock::later;
use spookd::kubelet::proto::podresources;
use spookd::kubelet::proto::{
    self, AllocateRequest, AllocateResponse, ContainerAllocateRequest, DevicePluginClient,
    DevicePluginOptions, KUBELET_SOCKET,
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
