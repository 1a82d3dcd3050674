//! The kubelet plugin (`spookd-dra-plugin`): on every node, the DRA service on
//! `<plugins>/<driver>/dra.sock` and the registration service on
//! `<plugins_registry>/<driver>-reg.sock`, which the kubelet's plugin watcher finds and dials.
//!
//! gRPC handlers never block: they queue a job here (a full queue is RESOURCE_EXHAUSTED) and
//! answer when it is done. For each claim of a NodePrepareResources the thread reads the
//! ResourceClaim from the API, checks its UID, takes this driver's allocation results, asks the
//! state thread for the claim's env ([`Msg::Prepare`]), writes the claim's CDI spec and answers
//! its CDI device ID for each device. A claim that cannot be prepared gets its error in its own
//! entry; the others are prepared. A claim whose spec is already written keeps it (a repeated
//! call answers the same; the env of a claim's containers does not change under them).
//! NodeUnprepareResources removes the spec; a claim without one is already unprepared.
//!
//! The sockets are checked every [`SOCKET_CHECK`]: one that was deleted is bound again, and the
//! kubelet's plugin watcher registers it anew.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use futures_channel::oneshot;
use futures_util::FutureExt as _;
use futures_util::{SinkExt as _, StreamExt as _};
use grpcio::{
    Environment, RpcContext, RpcStatus, RpcStatusCode, ServerBuilder, ServerCredentials,
    ServerStreamingSink, UnarySink, WriteFlags,
};
use log::{debug, info, warn};

use crate::clock::later;
use crate::config::{is_dns_label, is_dns_subdomain};
use crate::dra::api::Claims;
use crate::dra::cdi::{device_name, valid_uid, CdiDir};
use crate::dra::objects::POOL;
use crate::dra::proto::{
    self, Claim, HealthStatus, InfoRequest, NodePrepareResourceResponse,
    NodePrepareResourcesRequest, NodePrepareResourcesResponse, NodeUnprepareResourceResponse,
    NodeUnprepareResourcesRequest, NodeUnprepareResourcesResponse, NodeWatchResourcesRequest,
    NodeWatchResourcesResponse, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
    Version,
};
use crate::kubelet::plugin::bind_cause;
use crate::state::msg::{ClaimDevices, DraEvent, HealthList, Msg};
use crate::text::{Cut, Quoted};
use crate::worker::Worker;

/// How often the sockets are checked for having been deleted.
pub const SOCKET_CHECK: Duration = Duration::from_secs(10);
/// Calls queued at most; more are refused until the queue drains.
const QUEUE: usize = 64;
/// Most claims one call may name (a pod's claims; the kubelet sends one pod's at a time): a call
/// with more is refused whole, as INVALID_ARGUMENT.
pub const MAX_CLAIMS: usize = 64;
/// Longest wait for the state thread's answer.
const STATE_WAIT: Duration = Duration::from_secs(10);
/// Most time one call spends reading claims (each read is bounded by the API client too): the
/// claims not read by then get an error in their entry, and the kubelet asks for them again. So
/// a slow API server cannot hold the thread, and the unprepares queued behind, for long.
const CALL_BUDGET: Duration = Duration::from_secs(20);
/// Calls a server keeps pre-posted (the kubelet makes one at a time).
const REQUEST_SLOTS: usize = 4;

/// The socket file names.
pub const DRA_SOCKET: &str = "dra.sock";

/// Where the plugin's sockets go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sockets {
    /// `<plugins>/<driver>/dra.sock`
    pub dra: PathBuf,
    /// `<plugins_registry>/<driver>-reg.sock`
    pub registration: PathBuf,
}

impl Sockets {
    pub fn new(plugins_dir: &Path, registry_dir: &Path, driver: &str) -> Sockets {
        Sockets {
            dra: plugins_dir.join(driver).join(DRA_SOCKET),
            registration: registry_dir.join(format!("{driver}-reg.sock")),
        }
    }
}

/// Why a socket could not be served.
#[derive(Debug)]
pub enum SocketError {
    Build(grpcio::Error),
    Dir {
        path: PathBuf,
        source: io::Error,
    },
    Bind {
        path: PathBuf,
        source: grpcio::Error,
        cause: Option<io::Error>,
    },
}

impl fmt::Display for SocketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketError::Build(e) => write!(f, "cannot build a gRPC server: {e}"),
            SocketError::Dir { path, source } => {
                write!(f, "cannot create {}: {source}", path.display())
            }
            SocketError::Bind {
                path,
                cause: Some(cause),
                ..
            } => write!(f, "cannot listen on {}: {cause}", path.display()),
            SocketError::Bind { path, source, .. } => {
                write!(f, "cannot listen on {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for SocketError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SocketError::Build(e) | SocketError::Bind { source: e, .. } => Some(e),
            SocketError::Dir { source, .. } => Some(source),
        }
    }
}

/// A served socket; dropping it removes the socket first, then stops the server.
struct Bound {
    path: PathBuf,
    _server: grpcio::Server,
}

impl Drop for Bound {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn bind(
    grpc: &Arc<Environment>,
    services: Vec<grpcio::Service>,
    path: &Path,
) -> Result<Bound, SocketError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|source| SocketError::Dir {
            path: dir.to_owned(),
            source,
        })?;
    }
    // Ours (the caller holds the plugin dir's lock): a socket left by a dead spookd goes.
    let _ = fs::remove_file(path);
    let mut builder = ServerBuilder::new(grpc.clone());
    for service in services {
        builder = builder.register_service(service);
    }
    let mut server = builder
        .requests_slot_per_cq(REQUEST_SLOTS)
        .build()
        .map_err(SocketError::Build)?;
    server
        .add_listening_port(
            format!("unix:{}", path.display()),
            ServerCredentials::insecure(),
        )
        .map_err(|source| SocketError::Bind {
            path: path.to_owned(),
            source,
            cause: bind_cause(path),
        })?;
    let bound = Bound {
        path: path.to_owned(),
        _server: server,
    };
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
    let mut bound = bound;
    bound._server.start();
    Ok(bound)
}

enum Job {
    Prepare {
        claims: Vec<Claim>,
        reply: oneshot::Sender<NodePrepareResourcesResponse>,
    },
    Unprepare {
        claims: Vec<Claim>,
        reply: oneshot::Sender<NodeUnprepareResourcesResponse>,
    },
}

#[derive(Clone)]
struct DraService {
    jobs: Sender<Job>,
}

fn refused<T>(e: &TrySendError<T>) -> RpcStatus {
    match e {
        TrySendError::Full(_) => RpcStatus::with_message(
            RpcStatusCode::RESOURCE_EXHAUSTED,
            format!("{QUEUE} calls are queued already; retry"),
        ),
        TrySendError::Disconnected(_) => stopping(),
    }
}

fn stopping() -> RpcStatus {
    RpcStatus::with_message(RpcStatusCode::UNAVAILABLE, "spookd is stopping".to_owned())
}

impl DraService {
    /// Queues a call's claims as the job `make` builds, and answers from its reply; never blocks
    /// the completion-queue thread. A call naming too many claims is refused whole.
    fn queue<T: Send + 'static>(
        &self,
        ctx: &RpcContext<'_>,
        claims: Vec<Claim>,
        sink: UnarySink<T>,
        make: impl FnOnce(Vec<Claim>, oneshot::Sender<T>) -> Job,
    ) {
        if claims.len() > MAX_CLAIMS {
            let status = RpcStatus::with_message(
                RpcStatusCode::INVALID_ARGUMENT,
                format!("{} claims in one call; at most {MAX_CLAIMS}", claims.len()),
            );
            ctx.spawn(sink.fail(status).map(|_| ()));
            return;
        }
        let (reply, answer) = oneshot::channel();
        if let Err(e) = self.jobs.try_send(make(claims, reply)) {
            ctx.spawn(sink.fail(refused(&e)).map(|_| ()));
            return;
        }
        ctx.spawn(async move {
            let _ = match answer.await {
                Ok(resp) => sink.success(resp).await,
                Err(_) => sink.fail(stopping()).await,
            };
        });
    }
}

impl proto::DraPlugin for DraService {
    fn prepare(
        &mut self,
        ctx: RpcContext<'_>,
        _version: Version,
        req: NodePrepareResourcesRequest,
        sink: UnarySink<NodePrepareResourcesResponse>,
    ) {
        self.queue(&ctx, req.claims, sink, |claims, reply| Job::Prepare {
            claims,
            reply,
        });
    }

    fn unprepare(
        &mut self,
        ctx: RpcContext<'_>,
        _version: Version,
        req: NodeUnprepareResourcesRequest,
        sink: UnarySink<NodeUnprepareResourcesResponse>,
    ) {
        self.queue(&ctx, req.claims, sink, |claims, reply| Job::Unprepare {
            claims,
            reply,
        });
    }
}

/// The device-health stream (NodeWatchResources): the state thread keeps the stream's sender and
/// puts each new list in it; a kubelet that reads slowly only ever has the newest waiting.
#[derive(Clone)]
struct HealthService {
    driver: String,
    state: Sender<Msg>,
}

/// How long the kubelet may go without a report before it takes a device's health as Unknown:
/// the state thread sends the list again at every [`crate::state::FALLBACK_CHECK`] (10 s).
const HEALTH_TIMEOUT_SECONDS: i64 = 60;

fn health_response(list: &HealthList) -> NodeWatchResourcesResponse {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut r = NodeWatchResourcesResponse::new();
    r.devices = (list.iter())
        .map(|d| {
            let mut id = proto::DeviceIdentifier::new();
            id.pool_name = POOL.to_owned();
            id.device_name = d.device.clone();
            let mut h = proto::DeviceHealth::new();
            h.device = Some(id).into();
            h.health = if d.healthy {
                HealthStatus::HEALTHY
            } else {
                HealthStatus::UNHEALTHY
            }
            .into();
            h.last_updated_time = now;
            h.health_check_timeout_seconds = HEALTH_TIMEOUT_SECONDS;
            h.message = d.detail.clone();
            h
        })
        .collect();
    r
}

impl proto::DraHealth for HealthService {
    fn watch_resources(
        &mut self,
        ctx: RpcContext<'_>,
        _req: NodeWatchResourcesRequest,
        mut sink: ServerStreamingSink<NodeWatchResourcesResponse>,
    ) {
        let (tx, rx) = crate::latest::channel::<HealthList>();
        if self.state.send(Msg::WatchHealth(tx)).is_err() {
            ctx.spawn(sink.fail(stopping()).map(|_| ()));
            return;
        }
        let driver = self.driver.clone();
        ctx.spawn(async move {
            let mut items = rx.map(|list| Ok((health_response(&list), WriteFlags::default())));
            match sink.send_all(&mut items).await {
                Ok(()) => {
                    let _ = sink.close().await;
                }
                Err(e) => debug!("{driver}: device-health stream ended: {e}"),
            }
        });
    }
}

#[derive(Clone)]
struct RegistrationService {
    info: PluginInfo,
    state: Sender<Msg>,
}

impl proto::Registration for RegistrationService {
    fn get_info(&mut self, ctx: RpcContext<'_>, _req: InfoRequest, sink: UnarySink<PluginInfo>) {
        ctx.spawn(sink.success(self.info.clone()).map(|_| ()));
    }

    fn notify_registration_status(
        &mut self,
        ctx: RpcContext<'_>,
        req: RegistrationStatus,
        sink: UnarySink<RegistrationStatusResponse>,
    ) {
        if req.plugin_registered {
            info!("the kubelet registered DRA driver {}", self.info.name);
        } else {
            // The kubelet's own words: what it could not accept.
            warn!(
                "the kubelet refused DRA driver {}: {}",
                self.info.name,
                req.error.escape_debug()
            );
        }
        let _ = self
            .state
            .send(Msg::Dra(DraEvent::Registered(req.plugin_registered)));
        ctx.spawn(sink.success(RegistrationStatusResponse::new()).map(|_| ()));
    }
}

/// What the plugin thread works with.
pub struct PluginContext {
    pub driver: String,
    pub sockets: Sockets,
    pub cdi: CdiDir,
    pub claims: Box<dyn Claims + Send>,
    pub state: Sender<Msg>,
}

/// Handle of the kubelet plugin; dropping it removes its sockets and stops it.
pub struct KubeletPlugin {
    // Dropped first: the thread sees it disconnect and stops.
    _stop: Sender<()>,
    _worker: Worker,
    sockets: Sockets,
}

impl Drop for KubeletPlugin {
    fn drop(&mut self) {
        // The thread removes them when it stops; one stuck in an API call past the handle's wait
        // is left running, and the sockets must go all the same (a stale registration socket
        // would have the kubelet dial a dead plugin).
        for path in [&self.sockets.registration, &self.sockets.dra] {
            let _ = fs::remove_file(path);
        }
    }
}

struct Served {
    grpc: Arc<Environment>,
    jobs: Sender<Job>,
    info: PluginInfo,
    state: Sender<Msg>,
    // Registration first: it drops (and its socket goes) before the DRA socket.
    registration: Option<Bound>,
    dra: Option<Bound>,
}

impl Served {
    fn bind_dra(&self, path: &Path) -> Result<Bound, SocketError> {
        let service = proto::create_dra_plugin(DraService {
            jobs: self.jobs.clone(),
        });
        let health = proto::create_dra_health(HealthService {
            driver: self.info.name.clone(),
            state: self.state.clone(),
        });
        bind(&self.grpc, vec![service, health], path)
    }

    fn bind_registration(&self, path: &Path) -> Result<Bound, SocketError> {
        let service = proto::create_registration(RegistrationService {
            info: self.info.clone(),
            state: self.state.clone(),
        });
        bind(&self.grpc, vec![service], path)
    }

    /// Binds again a socket that was deleted (the DRA one first: registration points at it).
    fn repair(&mut self, sockets: &Sockets) {
        let gone = |b: &Option<Bound>, p: &Path| b.is_none() || fs::symlink_metadata(p).is_err();
        if gone(&self.dra, &sockets.dra) {
            warn!("{} is gone; serving it again", sockets.dra.display());
            self.dra = None;
            match self.bind_dra(&sockets.dra) {
                Ok(b) => self.dra = Some(b),
                Err(e) => warn!("{e}"),
            }
        }
        if gone(&self.registration, &sockets.registration) {
            warn!(
                "{} is gone; serving it again",
                sockets.registration.display()
            );
            self.registration = None;
            match self.bind_registration(&sockets.registration) {
                Ok(b) => self.registration = Some(b),
                Err(e) => warn!("{e}"),
            }
        }
    }
}

impl KubeletPlugin {
    /// Binds both sockets (an error here is a start-up error) and starts the plugin thread.
    pub fn spawn(grpc: Arc<Environment>, ctx: PluginContext) -> Result<KubeletPlugin, SocketError> {
        let (jobs, rx) = crossbeam_channel::bounded(QUEUE);
        let mut info = PluginInfo::new();
        info.type_ = proto::PLUGIN_TYPE.to_owned();
        info.name = ctx.driver.clone();
        info.endpoint = ctx.sockets.dra.display().to_string();
        info.supported_versions = vec![
            proto::V1.to_owned(),
            proto::V1BETA1.to_owned(),
            proto::HEALTH_V1ALPHA1.to_owned(),
        ];
        let mut served = Served {
            grpc,
            jobs: jobs.clone(),
            info,
            state: ctx.state.clone(),
            registration: None,
            dra: None,
        };
        served.dra = Some(served.bind_dra(&ctx.sockets.dra)?);
        served.registration = Some(served.bind_registration(&ctx.sockets.registration)?);
        info!(
            "DRA driver {}: serving {} (registration {})",
            ctx.driver,
            ctx.sockets.dra.display(),
            ctx.sockets.registration.display()
        );
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let sockets = ctx.sockets.clone();
        ctx.cdi.sweep();
        let worker = Worker::spawn("spookd-dra-plugin", move || run(ctx, served, &rx, &stopped))
            .map_err(|source| SocketError::Dir {
                path: PathBuf::from("(thread)"),
                source,
            })?
            // It may be in an API call (30 s at most): the process is exiting anyway.
            .stop_wait(Duration::from_millis(300));
        Ok(KubeletPlugin {
            _stop: stop,
            _worker: worker,
            sockets,
        })
    }
}

fn run(mut ctx: PluginContext, mut served: Served, jobs: &Receiver<Job>, stop: &Receiver<()>) {
    let mut next_check = later(Instant::now(), SOCKET_CHECK);
    loop {
        let wait = next_check.saturating_duration_since(Instant::now());
        crossbeam_channel::select! {
            recv(jobs) -> job => match job {
                // A call the kubelet gave up on (its deadline passed) is not worked on.
                Ok(Job::Prepare { reply, .. }) if reply.is_canceled() => {}
                Ok(Job::Unprepare { reply, .. }) if reply.is_canceled() => {}
                Ok(Job::Prepare { claims, reply }) => {
                    let _ = reply.send(prepare(&mut ctx, &claims));
                }
                Ok(Job::Unprepare { claims, reply }) => {
                    let _ = reply.send(unprepare(&ctx, &claims));
                }
                Err(_) => break,
            },
            recv(stop) -> _ => break,
            default(wait) => {}
        }
        // Due whatever the traffic: a steady stream of calls must not starve it.
        if Instant::now() >= next_check {
            served.repair(&ctx.sockets);
            next_check = later(Instant::now(), SOCKET_CHECK);
        }
    }
    drop(served);
    info!("DRA plugin stopped; sockets removed (prepared claims' CDI specs stay)");
}

/// Checks a claim's identity as the kubelet sent it: it becomes a URL and a file name.
fn check_claim(claim: &Claim) -> Result<(), String> {
    if !valid_uid(&claim.uid) {
        return Err(format!(
            "claim UID {} is not a Kubernetes UID",
            Quoted(&claim.uid)
        ));
    }
    if !is_dns_label(&claim.namespace) {
        let namespace = Quoted(&claim.namespace);
        return Err(format!("namespace {namespace} is not a DNS label"));
    }
    if !is_dns_subdomain(&claim.name) || claim.name.is_empty() {
        let name = Quoted(&claim.name);
        return Err(format!("claim name {name} is not a DNS subdomain"));
    }
    Ok(())
}

/// One claim's allocation results of this driver.
struct Results {
    /// (request, device) pairs, as the claim's allocation names them.
    pairs: Vec<(String, String)>,
    /// Each request gets a CDI device of its own ([`Results::groups`]).
    per_request: bool,
}

impl Results {
    /// The requests each CDI device serves, in order: the whole claim as one, or each request
    /// (sorted by name) as its own. Request names are read from the claim, never computed.
    fn requests(&self) -> Vec<Vec<&str>> {
        if !self.per_request {
            return vec![self.pairs.iter().map(|(r, _)| r.as_str()).collect()];
        }
        let mut names: Vec<&str> = self.pairs.iter().map(|(r, _)| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names.into_iter().map(|n| vec![n]).collect()
    }

    /// The devices of each CDI device, in [`Results::requests`]' order.
    fn groups(&self) -> Vec<Vec<String>> {
        (self.requests().iter())
            .map(|requests| {
                (self.pairs.iter())
                    .filter(|(r, _)| requests.contains(&r.as_str()))
                    .map(|(_, d)| d.clone())
                    .collect()
            })
            .collect()
    }

    /// The CDI device name of a request's device.
    fn device_name(&self, uid: &str, request: &str) -> String {
        if !self.per_request {
            return device_name(uid, None);
        }
        let n = self.requests().iter().position(|r| r.contains(&request));
        device_name(uid, n)
    }
}

/// One claim's allocation results of this driver.
fn results(ctx: &mut PluginContext, claim: &Claim) -> Result<Results, String> {
    check_claim(claim)?;
    let what = format!("ResourceClaim {}/{}", claim.namespace, claim.name);
    let found = ctx
        .claims
        .get(&claim.namespace, &claim.name)
        .map_err(|e| format!("cannot read {what}: {e}"))?
        .ok_or_else(|| format!("{what} does not exist"))?;
    if found.metadata.uid != claim.uid {
        return Err(format!(
            "{what} has UID {}, not {} (deleted and created again?)",
            found.metadata.uid, claim.uid
        ));
    }
    let per_request = found.for_extended_resources();
    let allocation = found
        .status
        .allocation
        .ok_or_else(|| format!("{what} is not allocated"))?;
    let mut out = Vec::new();
    for r in allocation.devices.results {
        if r.driver != ctx.driver {
            continue;
        }
        if r.pool != POOL {
            return Err(format!(
                "{what} was given device {} of pool {:?}; driver {} publishes only pool {POOL}",
                r.device, r.pool, ctx.driver
            ));
        }
        out.push((r.request, r.device));
    }
    Ok(Results {
        pairs: out,
        per_request,
    })
}

/// A claim's refusal, as the kubelet shows it on the pod: it may quote the claim and the API's
/// answer, so it is cut (64 of them in one answer stay far below gRPC's 4 MiB).
fn error(e: String) -> NodePrepareResourceResponse {
    let mut r = NodePrepareResourceResponse::new();
    r.error = Cut(e).to_string();
    r
}

fn prepare(ctx: &mut PluginContext, claims: &[Claim]) -> NodePrepareResourcesResponse {
    let mut answers: BTreeMap<String, NodePrepareResourceResponse> = BTreeMap::new();
    // Claims read and allocated, waiting for their env: (uid, results).
    let mut ready: Vec<(String, Results)> = Vec::new();
    let start = Instant::now();
    for claim in claims {
        if answers.contains_key(&claim.uid) || ready.iter().any(|(u, _)| *u == claim.uid) {
            continue;
        }
        if start.elapsed() > CALL_BUDGET {
            let e = format!("not read within this call's {CALL_BUDGET:?} (a slow API server?)");
            answers.insert(claim.uid.clone(), error(e));
            continue;
        }
        match results(ctx, claim) {
            Ok(r) => ready.push((claim.uid.clone(), r)),
            Err(e) => {
                let uid = claim.uid.escape_debug();
                warn!("{}", Cut(format_args!("cannot prepare claim {uid}: {e}")));
                answers.insert(claim.uid.clone(), error(e));
            }
        }
    }
    let envs = ask_env(&ctx.state, &ready);
    for ((uid, results), envs) in ready.into_iter().zip(envs) {
        let written = envs.and_then(|envs| {
            if ctx.cdi.has(&uid) {
                return Ok(());
            }
            let devices: Vec<(String, BTreeMap<String, String>)> = (results.requests().iter())
                .map(|requests| results.device_name(&uid, requests[0]))
                .zip(envs)
                .collect();
            ctx.cdi.write(&uid, &devices).map_err(|e| e.to_string())
        });
        let answer = match written {
            Ok(()) => {
                let mut r = NodePrepareResourceResponse::new();
                r.devices = (results.pairs.iter())
                    .map(|(request, device)| {
                        let mut d = proto::Device::new();
                        d.request_names = vec![request.clone()];
                        d.pool_name = POOL.to_owned();
                        d.device_name = device.clone();
                        let name = results.device_name(&uid, request);
                        d.cdi_device_ids = vec![ctx.cdi.device_id(&name)];
                        d
                    })
                    .collect();
                r
            }
            Err(e) => {
                warn!("{}", Cut(format_args!("cannot prepare claim {uid}: {e}")));
                error(e)
            }
        };
        answers.insert(uid, answer);
    }
    let failed = answers.values().filter(|a| !a.error.is_empty()).count() as u64;
    let _ = ctx.state.send(Msg::Dra(DraEvent::Claims {
        ok: answers.len() as u64 - failed,
        failed,
    }));
    let mut resp = NodePrepareResourcesResponse::new();
    resp.claims = answers.into_iter().collect();
    resp
}

/// The state thread's env for each ready claim (an error for each if it does not answer).
fn ask_env(
    state: &Sender<Msg>,
    ready: &[(String, Results)],
) -> Vec<Result<Vec<BTreeMap<String, String>>, String>> {
    if ready.is_empty() {
        return Vec::new();
    }
    let claims = ready
        .iter()
        .map(|(uid, results)| ClaimDevices {
            uid: uid.clone(),
            groups: results.groups(),
        })
        .collect();
    let (reply, answer) = crossbeam_channel::bounded(1);
    let asked = state.send(Msg::Prepare { claims, reply }).is_ok();
    match answer.recv_timeout(STATE_WAIT).ok().filter(|_| asked) {
        Some(envs) if envs.len() == ready.len() => envs
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect(),
        _ => ready
            .iter()
            .map(|_| Err("spookd's state thread did not answer; retry".to_owned()))
            .collect(),
    }
}

fn unprepare(ctx: &PluginContext, claims: &[Claim]) -> NodeUnprepareResourcesResponse {
    let mut answers: BTreeMap<String, NodeUnprepareResourceResponse> = BTreeMap::new();
    for claim in claims {
        let mut r = NodeUnprepareResourceResponse::new();
        if let Err(e) = ctx.cdi.remove(&claim.uid) {
            r.error = Cut(e).to_string();
        }
        answers.insert(claim.uid.clone(), r);
    }
    let failed = answers.values().filter(|a| !a.error.is_empty()).count() as u64;
    let _ = ctx.state.send(Msg::Dra(DraEvent::Claims {
        ok: answers.len() as u64 - failed,
        failed,
    }));
    let mut resp = NodeUnprepareResourcesResponse::new();
    resp.claims = answers.into_iter().collect();
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kubelet's claim identity is quoted in the refusal it gets back (and in the log): cut.
    #[test]
    fn a_huge_claim_identity_is_refused_with_a_cut_quote() {
        let huge = "Q".repeat(1 << 20);
        let ok = |c: &mut Claim| {
            c.uid = "0b2c8f1e-7d3a-4c55-9e61-2f0a9b8c7d6e".into();
            c.namespace = "lab".into();
            c.name = "scope".into();
        };
        let mut claim = Claim::default();
        ok(&mut claim);
        assert_eq!(check_claim(&claim), Ok(()));
        for field in 0..3 {
            ok(&mut claim);
            match field {
                0 => claim.uid = huge.clone(),
                1 => claim.namespace = huge.clone(),
                _ => claim.name = huge.clone(),
            }
            let e = check_claim(&claim).unwrap_err();
            assert!(
                e.len() <= 1100 && e.contains("\"QQQ") && e.contains(" bytes cut]… "),
                "{e}"
            );
        }
    }
}
