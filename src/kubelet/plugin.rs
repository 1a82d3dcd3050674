//! One kubelet device-plugin gRPC server per resource, on its own Unix socket.
//!
//! The handlers run on gRPC's completion-queue threads and never block: they forward to the state
//! thread ([`Msg::Watch`], [`Msg::Allocate`]) and finish asynchronously when it answers.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::Sender;
use futures_util::{FutureExt, SinkExt, StreamExt};
use grpcio::{
    Environment, RpcContext, RpcStatus, RpcStatusCode, ServerBuilder, ServerCredentials,
    ServerStreamingSink, UnarySink, WriteFlags,
};
use log::{debug, info, warn};

use crate::config::ResourceName;
use crate::kubelet::proto::{
    self, AllocateRequest, AllocateResponse, ContainerAllocateResponse,
    ContainerPreferredAllocationResponse, DevicePluginOptions, Empty, ListAndWatchResponse,
    PreStartContainerRequest, PreStartContainerResponse, PreferredAllocationRequest,
    PreferredAllocationResponse,
};
use crate::random::random_u64;
use crate::state::msg::{AllocateError, LeaseRefusal, Listing, Msg};
use crate::text::Cut;

/// Calls a server keeps pre-posted per completion queue (more wait in gRPC core until one is
/// re-posted). The kubelet makes one or two at a time; grpcio's default of 1024 costs memory on
/// every one of hundreds of servers (measured: 16 slots cost 0.8 MiB more than 4 at 200).
const REQUEST_SLOTS: usize = 4;

/// Prefix of every socket spookd creates; the only files it ever removes.
pub const SOCKET_PREFIX: &str = "spookd-";
const SOCKET_SUFFIX: &str = ".sock";

/// The longest path a Unix socket can have (`sun_path` holds 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The longest endpoint (socket file name) spookd makes, whatever the resource. The kubelet dials
/// `<its own device-plugins dir>/<endpoint>`, a dir spookd cannot see from its container (on
/// microk8s it is 56 bytes long): a bounded name is the only way to know it fits. 32 lets any
/// kubelet dir of up to 74 bytes (107 − '/' − 32) dial every socket.
pub const MAX_ENDPOINT: usize = 32;

/// The longest endpoint once its resource name is dropped: `spookd-`, the instance's 8 hex
/// digits, `-`, a server number of up to 8 hex digits, `.sock`. Every endpoint fits in this much,
/// so a dir leaving at least this much room serves every resource.
pub const MIN_ENDPOINT_ROOM: usize = SOCKET_PREFIX.len() + 8 + 1 + 8 + SOCKET_SUFFIX.len();

/// The room for an endpoint in a dir of `dir_len` bytes: [`MAX_ENDPOINT`], less where the dir
/// is so long that `dir/endpoint` would pass [`MAX_SOCKET_PATH`] (the kubelet's dir is then
/// probably as long, and would not fit a longer name either).
pub fn endpoint_room(dir_len: usize) -> usize {
    MAX_ENDPOINT.min(MAX_SOCKET_PATH.saturating_sub(dir_len.saturating_add(1)))
}

/// The endpoint of server `server` of `resource` in this process (`instance`), at most
/// `room.clamp(MIN_ENDPOINT_ROOM, MAX_ENDPOINT)` bytes: `spookd-<name>-<instance>-<server>.sock`,
/// the numbers in hex and `<name>` the resource's name after '/' cut to the room left, or dropped
/// with its '-' when none is. The name is only for people reading the dir: ResourceName allows
/// only ASCII letters, digits, '-', '_' and '.' after the '/', so it is safe in a file name, and
/// the cut is on a character boundary.
///
/// Only the server number's low 32 bits are written, to bound the name. Live sockets still never
/// share a name: the instance is random per process, the state thread numbers servers in order,
/// and two live servers of one process would need 2^32 server starts while the older one lives
/// (each start is a config change, a kubelet restart or a deleted socket). Even then,
/// [`Servers::start`] refuses to bind over an existing file rather than take its name.
pub fn endpoint(resource: &ResourceName, instance: u32, server: u64, room: usize) -> String {
    let tail = format!(
        "{instance:08x}-{:x}{SOCKET_SUFFIX}",
        server & u64::from(u32::MAX)
    );
    let fixed = SOCKET_PREFIX.len().saturating_add(tail.len());
    // The name and its '-'.
    let left = room
        .min(MAX_ENDPOINT)
        .saturating_sub(fixed.saturating_add(1));
    let name = resource.as_str().rsplit('/').next().unwrap_or_default();
    let short = name
        .get(..left.min(name.len()))
        .unwrap_or_default()
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if short.is_empty() {
        format!("{SOCKET_PREFIX}{tail}")
    } else {
        format!("{SOCKET_PREFIX}{short}-{tail}")
    }
}

/// `dir/endpoint`, or why a Unix socket cannot have that path.
pub fn socket_path(dir: &Path, endpoint: &str) -> Result<PathBuf, PluginError> {
    let path = dir.join(endpoint);
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(PluginError::PathTooLong { path, len });
    }
    Ok(path)
}

/// The options spookd registers with and answers GetDevicePluginOptions with.
pub fn options() -> DevicePluginOptions {
    let mut o = DevicePluginOptions::new();
    o.pre_start_required = false;
    o.get_preferred_allocation_available = true;
    o
}

/// Why a server could not start.
#[derive(Debug)]
pub enum PluginError {
    Build {
        resource: ResourceName,
        source: grpcio::Error,
    },
    Bind {
        path: PathBuf,
        source: grpcio::Error,
        /// What the OS says when we bind a socket there ourselves: gRPC only says `BindFail`.
        cause: Option<io::Error>,
    },
    Permissions {
        path: PathBuf,
        source: io::Error,
    },
    /// The socket's path is longer than a Unix socket's may be.
    PathTooLong {
        path: PathBuf,
        len: usize,
    },
    /// A file already has the socket's name: gRPC would unlink a socket there and take its name.
    Exists {
        path: PathBuf,
    },
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginError::Build { resource, source } => {
                write!(f, "cannot build the gRPC server for {resource}: {source}")
            }
            PluginError::Bind {
                path,
                source,
                cause: Some(cause),
            } => write!(f, "cannot listen on {}: {cause} ({source})", path.display()),
            PluginError::Bind { path, source, .. } => {
                write!(f, "cannot listen on {}: {source}", path.display())
            }
            PluginError::Permissions { path, source } => {
                write!(f, "cannot make {} private (0600): {source}", path.display())
            }
            PluginError::PathTooLong { path, len } => write!(
                f,
                "cannot listen on {}: the path is {len} bytes long; a Unix socket's path holds at \
                 most {MAX_SOCKET_PATH}",
                path.display()
            ),
            PluginError::Exists { path } => write!(
                f,
                "cannot listen on {}: a file of that name exists (left as it is)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for PluginError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PluginError::Build { source, .. } | PluginError::Bind { source, .. } => Some(source),
            PluginError::Permissions { source, .. } => Some(source),
            PluginError::PathTooLong { .. } | PluginError::Exists { .. } => None,
        }
    }
}

/// Starts this process's servers: one per resource, each on a fresh socket in the dir.
pub struct Servers {
    grpc: Arc<Environment>,
    dir: PathBuf,
    /// Random per process, so socket names never repeat across restarts (kubernetes#121994).
    instance: u32,
    /// The longest endpoint that fits in `dir` ([`endpoint_room`]).
    room: usize,
    state: Sender<Msg>,
}

impl Servers {
    pub fn new(grpc: Arc<Environment>, dir: PathBuf, state: Sender<Msg>) -> Self {
        let instance = random_u64() as u32;
        let room = endpoint_room(dir.as_os_str().len());
        Servers {
            grpc,
            dir,
            instance,
            room,
            state,
        }
    }

    /// Starts a server for `resource` numbered `id` on a fresh socket; returns it and the
    /// socket's file name (the endpoint the kubelet is told).
    pub fn start(
        &mut self,
        resource: &ResourceName,
        id: u64,
    ) -> Result<(PluginServer, String), PluginError> {
        let endpoint = endpoint(resource, self.instance, id, self.room);
        let path = socket_path(&self.dir, &endpoint)?;
        if fs::symlink_metadata(&path).is_ok() {
            return Err(PluginError::Exists { path });
        }
        let service = proto::create_device_plugin(PluginService {
            resource: resource.clone(),
            server: id,
            state: self.state.clone(),
        });
        let mut server = ServerBuilder::new(self.grpc.clone())
            .register_service(service)
            .requests_slot_per_cq(REQUEST_SLOTS)
            .build()
            .map_err(|source| PluginError::Build {
                resource: resource.clone(),
                source,
            })?;
        server
            .add_listening_port(
                format!("unix:{}", path.display()),
                ServerCredentials::insecure(),
            )
            .map_err(|source| PluginError::Bind {
                path: path.clone(),
                source,
                cause: bind_cause(&path),
            })?;
        let server = PluginServer {
            path: path.clone(),
            _server: server,
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(|source| PluginError::Permissions { path, source })?;
        let mut server = server;
        server._server.start();
        Ok((server, endpoint))
    }

    /// Whether our socket `endpoint` still exists.
    pub fn socket_exists(&self, endpoint: &str) -> bool {
        fs::symlink_metadata(self.dir.join(endpoint)).is_ok()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A running server; dropping it removes its socket and shuts it down.
pub struct PluginServer {
    path: PathBuf,
    _server: grpcio::Server,
}

impl Drop for PluginServer {
    fn drop(&mut self) {
        match fs::remove_file(&self.path) {
            Ok(()) => debug!("removed {}", self.path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!("cannot remove {}: {e}", self.path.display()),
        }
    }
}

/// Why binding `path` fails, found by binding it ourselves (out of file descriptors, no
/// permission, a path too long); `None` if it works now.
pub fn bind_cause(path: &Path) -> Option<io::Error> {
    match std::os::unix::net::UnixListener::bind(path) {
        Ok(listener) => {
            drop(listener);
            let _ = fs::remove_file(path);
            None
        }
        Err(e) => Some(e),
    }
}

/// Removes `spookd-*.sock` sockets in `dir` that nobody listens on (left by a dead instance).
/// A socket that accepts a connection belongs to a live instance and stays; other files stay.
pub fn remove_stale_sockets(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(SOCKET_PREFIX) || !name.ends_with(SOCKET_SUFFIX) {
            continue;
        }
        if !entry.file_type()?.is_socket() {
            continue;
        }
        let path = entry.path();
        if UnixStream::connect(&path).is_err() {
            fs::remove_file(&path)?;
            info!("removed stale socket {}", path.display());
            removed.push(path);
        }
    }
    Ok(removed)
}

/// The gRPC service of one server of one resource.
#[derive(Clone)]
struct PluginService {
    resource: ResourceName,
    server: u64,
    state: Sender<Msg>,
}

fn listing_response(devices: &Listing) -> ListAndWatchResponse {
    let mut r = ListAndWatchResponse::new();
    r.devices = devices
        .iter()
        .map(|d| {
            let mut device = proto::Device::new();
            device.ID = d.id.to_string();
            device.health = if d.healthy {
                proto::HEALTHY
            } else {
                proto::UNHEALTHY
            }
            .to_owned();
            device
        })
        .collect();
    r
}

fn gone() -> RpcStatus {
    RpcStatus::with_message(
        RpcStatusCode::UNAVAILABLE,
        "spookd is shutting down".to_owned(),
    )
}

impl proto::DevicePlugin for PluginService {
    fn get_device_plugin_options(
        &mut self,
        ctx: RpcContext<'_>,
        _req: Empty,
        sink: UnarySink<DevicePluginOptions>,
    ) {
        ctx.spawn(sink.success(options()).map(|_| ()));
    }

    fn list_and_watch(
        &mut self,
        ctx: RpcContext<'_>,
        _req: Empty,
        mut sink: ServerStreamingSink<ListAndWatchResponse>,
    ) {
        let (tx, rx) = crate::latest::channel::<Listing>();
        let watch = Msg::Watch {
            resource: self.resource.clone(),
            server: self.server,
            stream: tx,
        };
        if self.state.send(watch).is_err() {
            ctx.spawn(sink.fail(gone()).map(|_| ()));
            return;
        }
        let resource = self.resource.clone();
        ctx.spawn(async move {
            let mut items =
                rx.map(|devices| Ok((listing_response(&devices), WriteFlags::default())));
            // Ends when the state thread drops the sender (resource removed or server replaced),
            // or when the kubelet goes away.
            match sink.send_all(&mut items).await {
                Ok(()) => {
                    let _ = sink.close().await;
                }
                Err(e) => debug!("{resource}: ListAndWatch stream ended: {e}"),
            }
        });
    }

    fn get_preferred_allocation(
        &mut self,
        ctx: RpcContext<'_>,
        req: PreferredAllocationRequest,
        sink: UnarySink<PreferredAllocationResponse>,
    ) {
        let mut resp = PreferredAllocationResponse::new();
        resp.container_responses = req
            .container_requests
            .iter()
            .map(|c| {
                let mut r = ContainerPreferredAllocationResponse::new();
                let size = usize::try_from(c.allocation_size).unwrap_or(0);
                r.deviceIDs = preferred(&c.available_deviceIDs, &c.must_include_deviceIDs, size);
                r
            })
            .collect();
        ctx.spawn(sink.success(resp).map(|_| ()));
    }

    fn allocate(
        &mut self,
        ctx: RpcContext<'_>,
        req: AllocateRequest,
        sink: UnarySink<AllocateResponse>,
    ) {
        let containers = req
            .container_requests
            .into_iter()
            .map(|c| c.devices_ids)
            .collect();
        let (reply, answer) = futures_channel::oneshot::channel();
        let msg = Msg::Allocate {
            resource: self.resource.clone(),
            containers,
            reply,
        };
        if self.state.send(msg).is_err() {
            ctx.spawn(sink.fail(gone()).map(|_| ()));
            return;
        }
        ctx.spawn(async move {
            let _ = match answer.await {
                Ok(Ok(envs)) => {
                    let mut resp = AllocateResponse::new();
                    resp.container_responses = envs
                        .into_iter()
                        .map(|vars| {
                            let mut c = ContainerAllocateResponse::new();
                            c.envs = vars.into_iter().collect();
                            c
                        })
                        .collect();
                    sink.success(resp).await
                }
                Ok(Err(e)) => {
                    let code = match e {
                        AllocateError::NotServed { .. }
                        | AllocateError::Lease(LeaseRefusal::Unavailable { .. }) => {
                            RpcStatusCode::UNAVAILABLE
                        }
                        AllocateError::Lease(LeaseRefusal::HeldBy { .. }) => {
                            RpcStatusCode::FAILED_PRECONDITION
                        }
                        _ => RpcStatusCode::INVALID_ARGUMENT,
                    };
                    // The kubelet shows it in the pod's events: cut, as it may quote the request.
                    sink.fail(RpcStatus::with_message(code, Cut(e).to_string()))
                        .await
                }
                Err(_) => sink.fail(gone()).await,
            };
        });
    }

    fn pre_start_container(
        &mut self,
        ctx: RpcContext<'_>,
        _req: PreStartContainerRequest,
        sink: UnarySink<PreStartContainerResponse>,
    ) {
        ctx.spawn(sink.success(PreStartContainerResponse::new()).map(|_| ()));
    }
}

/// GetPreferredAllocation: `must_include` first (sorted, deduplicated), then the other available
/// IDs in sorted order, `size` at most, and only available IDs (a must-include ID the kubelet did
/// not list as available is dropped; past `size`, the lowest must-include IDs are kept).
/// Deterministic, so the same request always gets the same hint, and n log n: it runs on the
/// completion-queue thread every resource's server shares.
pub fn preferred<T: Ord + Clone>(available: &[T], must_include: &[T], size: usize) -> Vec<T> {
    let available: BTreeSet<&T> = available.iter().collect();
    let must: BTreeSet<&T> = must_include
        .iter()
        .filter(|id| available.contains(id))
        .collect();
    must.iter()
        .chain(available.iter().filter(|id| !must.contains(*id)))
        .take(size)
        .map(|id| (*id).clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(s: &str) -> ResourceName {
        ResourceName::try_from(s.to_owned()).unwrap()
    }

    /// The longest name after '/' a resource may have: 63 characters.
    fn longest(tail: &str) -> ResourceName {
        let name = format!("{}{tail}", "a".repeat(63 - tail.len()));
        resource(&format!("example.com/{name}"))
    }

    #[test]
    fn endpoints_are_bounded_whatever_the_resource_and_server() {
        let r = longest("");
        for server in [0, 1, 0xf, 0x10, 0xffff_ffff, 0x1_0000_0000, u64::MAX] {
            for instance in [0, 0xdead_beef, u32::MAX] {
                let e = endpoint(&r, instance, server, MAX_ENDPOINT);
                assert!(e.len() <= MAX_ENDPOINT, "{e}: {} bytes", e.len());
                assert!(
                    e.starts_with(SOCKET_PREFIX) && e.ends_with(SOCKET_SUFFIX),
                    "{e}"
                );
                assert!(e.contains(&format!("{instance:08x}-")), "{e}");
            }
        }
        assert_eq!(
            endpoint(&r, 0xdead_beef, u64::MAX, MAX_ENDPOINT),
            "spookd-aa-deadbeef-ffffffff.sock"
        );
        assert_eq!(
            endpoint(&r, 0xdead_beef, 0, MAX_ENDPOINT),
            "spookd-aaaaaaaaa-deadbeef-0.sock"
        );
        assert_eq!(
            endpoint(&resource("example.com/widget"), 0xcafe, 3, MAX_ENDPOINT),
            "spookd-widget-0000cafe-3.sock"
        );
        // A cut name ends with a letter or digit, not the '-', '_' or '.' inside it.
        assert_eq!(
            endpoint(&resource("a.io/signal-g.x"), 1, 0, 30),
            "spookd-signal-00000001-0.sock"
        );
        // No room for the name: it is dropped with its '-'.
        assert_eq!(
            endpoint(&r, 1, 0xffff_ffff, MIN_ENDPOINT_ROOM),
            "spookd-00000001-ffffffff.sock"
        );
        assert_eq!(
            endpoint(&r, 1, 0xffff_ffff, 0),
            "spookd-00000001-ffffffff.sock"
        );
        assert_eq!(MIN_ENDPOINT_ROOM, "spookd-00000001-ffffffff.sock".len());
    }

    #[test]
    fn resources_sharing_a_long_prefix_get_distinct_endpoints() {
        let a = longest("-one");
        let b = longest("-two");
        // The state thread numbers servers in order: these two are 0 and 1, or later ones.
        for (x, y) in [
            (0, 1),
            (41, 42),
            (0xffff_fffe, 0xffff_ffff),
            (u64::MAX - 1, u64::MAX),
        ] {
            let (ea, eb) = (
                endpoint(&a, 7, x, MAX_ENDPOINT),
                endpoint(&b, 7, y, MAX_ENDPOINT),
            );
            assert_ne!(ea, eb);
            assert!(
                ea.len() <= MAX_ENDPOINT && eb.len() <= MAX_ENDPOINT,
                "{ea} {eb}"
            );
        }
        // Other processes' names differ by the instance.
        assert_ne!(endpoint(&a, 1, 0, 32), endpoint(&a, 2, 0, 32));
    }

    #[test]
    fn endpoints_fit_every_dir_up_to_the_bound() {
        assert_eq!(endpoint_room(0), MAX_ENDPOINT);
        // 74 + '/' + 32 = 107: the kubelet dirs every endpoint fits.
        assert_eq!(endpoint_room(74), MAX_ENDPOINT);
        assert_eq!(endpoint_room(75), MAX_ENDPOINT - 1);
        assert_eq!(
            endpoint_room(MAX_SOCKET_PATH - 1 - MIN_ENDPOINT_ROOM),
            MIN_ENDPOINT_ROOM
        );
        assert_eq!(endpoint_room(MAX_SOCKET_PATH), 0);
        assert_eq!(endpoint_room(usize::MAX), 0);
        let r = longest("");
        for dir_len in 1..=MAX_SOCKET_PATH - 1 - MIN_ENDPOINT_ROOM {
            let dir = PathBuf::from(format!("/{}", "d".repeat(dir_len - 1)));
            assert_eq!(dir.as_os_str().len(), dir_len);
            for server in [0, 0xff, u64::MAX] {
                let e = endpoint(&r, u32::MAX, server, endpoint_room(dir_len));
                assert!(e.len() <= MAX_ENDPOINT, "{e}");
                let path = socket_path(&dir, &e).unwrap();
                assert!(
                    path.as_os_str().len() <= MAX_SOCKET_PATH,
                    "{}",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn a_socket_path_too_long_is_refused_with_its_length() {
        let dir = PathBuf::from(format!("/{}", "d".repeat(79)));
        let e = endpoint(&longest(""), 1, u64::MAX, endpoint_room(80));
        assert_eq!(e.len(), MIN_ENDPOINT_ROOM);
        let err = socket_path(&dir, &e).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot listen on {}/{e}: the path is 110 bytes long; a Unix socket's path \
                 holds at most 107",
                dir.display()
            )
        );
    }

    fn v(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn preferred_is_must_include_then_sorted() {
        assert_eq!(
            preferred(&v(&["3", "1", "2"]), &v(&["2"]), 2),
            v(&["2", "1"])
        );
        assert_eq!(preferred(&v(&["3", "1", "2"]), &[], 5), v(&["1", "2", "3"]));
        assert_eq!(
            preferred(&v(&["b", "a"]), &v(&["b", "a"]), 2),
            v(&["a", "b"])
        );
        assert_eq!(
            preferred(&v(&["a", "a", "b"]), &[], 0),
            Vec::<String>::new()
        );
    }

    #[test]
    fn preferred_obeys_the_size_and_the_available_list() {
        // Never more than the size, even when must_include is longer.
        assert_eq!(
            preferred(&v(&["a", "b", "c"]), &v(&["c", "b"]), 1),
            v(&["b"])
        );
        // Never an ID the kubelet did not list as available.
        assert_eq!(
            preferred(&v(&["a", "b"]), &v(&["z", "b"]), 2),
            v(&["b", "a"])
        );
        assert_eq!(preferred(&[], &v(&["z"]), 3), Vec::<String>::new());
    }

    /// Counts every comparison, so a test can tell n log n from n² without timing anything.
    #[derive(Clone, Debug)]
    struct Counted(u32);
    thread_local!(static COMPARISONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });
    impl PartialEq for Counted {
        fn eq(&self, other: &Self) -> bool {
            self.cmp(other) == std::cmp::Ordering::Equal
        }
    }
    impl Eq for Counted {}
    impl PartialOrd for Counted {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Counted {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            COMPARISONS.with(|c| c.set(c.get() + 1));
            self.0.cmp(&other.0)
        }
    }

    #[test]
    fn preferred_is_not_quadratic() {
        // 20,000 available and as many must-include IDs took 6.3 s when every must-include ID was
        // searched for in a list: 2·10⁸ comparisons. n log n is ~10⁶.
        let ids: Vec<Counted> = (0..20_000).rev().map(Counted).collect();
        COMPARISONS.with(|c| c.set(0));
        let out = preferred(&ids, &ids, 20_000);
        let comparisons = COMPARISONS.with(std::cell::Cell::get);
        assert_eq!(out.len(), 20_000);
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(comparisons < 20_000 * 15 * 10, "{comparisons} comparisons");
    }
}
