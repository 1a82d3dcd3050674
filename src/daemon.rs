//! The daemon: the only place its threads are started. [`run`] takes the device-plugins dir's
//! lock, binds every listener, then starts the threads in order (the Lease and prune threads, the
//! registrar and prober behind the state thread's `Effects`, the state thread, the kubelet
//! watcher, the config source, the metrics server) and, at a stop signal, stops them in reverse:
//! the state thread first (it removes our sockets), then the inputs.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use signal_hook::consts::{
    SIGALRM, SIGHUP, SIGINT, SIGIO, SIGPROF, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGVTALRM,
    SIGXCPU, SIGXFSZ,
};
use signal_hook::iterator::Signals;

use crate::cli::{RunOptions, Source};
use crate::config::dra::Inventory;
use crate::config::{NodeName, ResourceName};
use crate::dra::api::{HttpClaims, HttpObjects};
use crate::dra::cdi::CdiDir;
use crate::dra::leader::{leader_lease_name, Leadership};
use crate::dra::node::{HttpNode, NodeWatcher};
use crate::dra::objects::{Named, ResourceSlice};
use crate::dra::plugin::{KubeletPlugin, PluginContext, Sockets};
use crate::dra::publish::{ObjectWatch, Publisher, PublisherApi, SliceWatcher};
use crate::dra::report::{report_name, ReportNudge, ReportWriter, Reporter};
use crate::dra::DraOptions;
use crate::events::{EventOptions, Events};
use crate::health::Prober;
use crate::kubelet::plugin::{self, PluginError, PluginServer, MAX_SOCKET_PATH};
use crate::kubelet::registrar::{self, Registrar};
use crate::kubelet::watcher::Watcher;
use crate::leases::protocol::HttpLeaseApi;
use crate::leases::LeaseKeeper;
use crate::metrics::{MetricsListener, MetricsServer};
use crate::prune::Pruner;
use crate::source::configmap::ApiSource;
use crate::source::file::FilePoller;
use crate::state::msg::{LeaseCmd, Msg, Notice, ProbeSet, Unhealthy};
use crate::state::{self, Backend, State};
use crate::worker::Worker;
use crate::VERSION;

/// The namespace of the pod's ServiceAccount, the default home of the Leases.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// How long one watch request of the DRA driver's ResourceSlices lasts.
const WATCH_TIMEOUT: Duration = Duration::from_secs(60);

/// How long shutdown waits for the state thread to stop the servers and remove the sockets.
const SHUTDOWN_WAIT: Duration = Duration::from_millis(1500);

/// Why the daemon could not start.
#[derive(Debug)]
pub enum DaemonError {
    Startup {
        what: &'static str,
        source: std::io::Error,
    },
    /// The device-plugins dir's path leaves no room for our sockets' names.
    SocketDir {
        dir: PathBuf,
        len: usize,
        max: usize,
    },
    /// A socket's path is longer than a Unix socket's may be.
    SocketPath { path: PathBuf, len: usize },
    /// The CPU list gRPC core would size itself for is no real machine's: `cpus` it counts, or
    /// `None` for a first line longer than glibc reads.
    CpuList { cpus: Option<u64> },
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonError::Startup { what, source } => write!(f, "cannot {what}: {source}"),
            DaemonError::SocketDir { dir, len, max } => write!(
                f,
                "the device-plugins dir {} is {len} bytes long; sockets in it need it at most \
                 {max} (a Unix socket's path holds {MAX_SOCKET_PATH} bytes: the dir, '/' and a \
                 socket name of up to {} bytes)",
                dir.display(),
                plugin::MIN_ENDPOINT_ROOM
            ),
            DaemonError::CpuList { cpus } => {
                match cpus {
                    Some(n) => write!(
                        f,
                        "{CPU_LIST} lists {n} CPUs, more than Linux supports ({MAX_CPUS})"
                    )?,
                    None => write!(f, "{CPU_LIST}'s first line is over {CPU_LIST_LINE} bytes")?,
                }
                write!(
                    f,
                    ": gRPC core would size its tables for that many (a list of 1,000,000 costs \
                     ~470 MiB); mount a file holding `0` there, as the manifests do"
                )
            }
            DaemonError::SocketPath { path, len } => write!(
                f,
                "the socket path {} is {len} bytes long; a Unix socket's path holds at most \
                 {MAX_SOCKET_PATH}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for DaemonError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DaemonError::Startup { source, .. } => Some(source),
            DaemonError::SocketDir { .. }
            | DaemonError::SocketPath { .. }
            | DaemonError::CpuList { .. } => None,
        }
    }
}

fn startup(what: &'static str) -> impl FnOnce(std::io::Error) -> DaemonError {
    move |source| DaemonError::Startup { what, source }
}

/// The state thread's side effects, for real: gRPC servers on Unix sockets, and the threads that
/// register, probe, prune and hold Leases.
struct Effects {
    servers: plugin::Servers,
    registrar: Registrar,
    prober: Prober,
    /// With `--prune-stale-resources`: told the resources served.
    pruner: Option<Pruner>,
    /// With `--exclusive-leases`.
    keeper: Option<LeaseKeeper>,
    /// In a cluster: Kubernetes Events.
    events: Option<Events>,
}

impl Backend for Effects {
    type Server = PluginServer;
    type Error = PluginError;

    fn start(
        &mut self,
        resource: &ResourceName,
        id: u64,
    ) -> Result<(PluginServer, String), PluginError> {
        self.servers.start(resource, id)
    }

    fn register(&mut self, resource: &ResourceName, endpoint: &str) {
        self.registrar.register(resource, endpoint);
    }

    fn forget(&mut self, resource: &ResourceName) {
        self.registrar.forget(resource);
    }

    fn socket_exists(&self, endpoint: &str) -> bool {
        self.servers.socket_exists(endpoint)
    }

    fn kubelet_socket(&self) -> Option<u64> {
        registrar::kubelet_identity(self.servers.dir())
    }

    fn set_probes(&mut self, probes: ProbeSet) {
        self.prober.set(probes);
    }

    fn set_served_resources(&mut self, resources: BTreeSet<ResourceName>) {
        if let Some(pruner) = &self.pruner {
            pruner.served(resources);
        }
    }

    fn exclusive(&self) -> bool {
        self.keeper.is_some()
    }

    fn leases(&mut self, cmd: LeaseCmd) {
        if let Some(keeper) = &self.keeper {
            keeper.send(cmd);
        }
    }

    fn notify(&mut self, notice: Notice) {
        if let Some(events) = &self.events {
            events.send(notice);
        }
    }
}

/// Starts the events thread when Events are on.
fn start_events(
    opts: Option<EventOptions>,
    node: &NodeName,
    tx: &crossbeam_channel::Sender<Msg>,
) -> Result<Option<Events>, DaemonError> {
    let Some(opts) = opts else {
        info!("Kubernetes Events off (no Pod or API server known: outside a cluster?)");
        return Ok(None);
    };
    info!(
        "Kubernetes Events about Pod {}/{} (API server {})",
        opts.pod.namespace, opts.pod.name, opts.conn.server
    );
    Events::spawn(opts, node, tx.clone())
        .map(Some)
        .map_err(startup("start the events thread"))
}

/// Signals that stop spookd cleanly (sockets removed, exit 0).
const STOP_SIGNALS: &[i32] = &[SIGTERM, SIGINT, SIGQUIT, SIGPWR];
/// Every other signal whose default action would end the process without removing its sockets:
/// logged and ignored. (Faults such as SIGSEGV keep their default; SIGPIPE is ignored by Rust.)
const IGNORED_SIGNALS: &[i32] = &[
    SIGHUP, SIGUSR1, SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGXCPU, SIGXFSZ, SIGSTKFLT, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58,
    59, 60, 61, 62, 63, 64,
];
/// Linux's numbers (the same on x86_64 and aarch64); signal-hook does not name them. 34–64 above
/// are the real-time signals, which also terminate by default.
const SIGSTKFLT: i32 = 16;
const SIGPWR: i32 = 30;

/// Refuses a socket path longer than a Unix socket's.
fn check_socket_path(path: &Path) -> Result<(), DaemonError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(DaemonError::SocketPath {
            path: path.to_owned(),
            len,
        });
    }
    Ok(())
}

/// The longest device-plugins dir every endpoint fits in, once cut to its shortest form.
const MAX_SOCKET_DIR: usize = MAX_SOCKET_PATH - 1 - plugin::MIN_ENDPOINT_ROOM;

/// Refuses a device-plugins dir where some socket could not be bound even with its shortest name
/// (gRPC would only say `BindFail`, later, on every resource). A longer dir than the kubelet's
/// usual only shortens the names (see [`plugin::endpoint_room`]).
fn check_socket_dir(dir: &Path) -> Result<(), DaemonError> {
    let len = dir.as_os_str().len();
    if plugin::endpoint_room(len) < plugin::MIN_ENDPOINT_ROOM {
        return Err(DaemonError::SocketDir {
            dir: dir.to_owned(),
            len,
            max: MAX_SOCKET_DIR,
        });
    }
    Ok(())
}

/// Takes the device-plugins dir's lock (`flock` on the directory itself: the kubelet wipes the
/// files in it when it restarts, never the directory). Held by another spookd, it waits: in a
/// DaemonSet's rolling update the new pod can start while the old one is still stopping, and
/// waiting hands over within moments where refusing would crash-loop the new pod for its back-off
/// (10 s and more). A stop signal while waiting ends spookd (`None`).
fn lock_dir(dir: &Path, signals: &mut Signals) -> Result<Option<std::fs::File>, DaemonError> {
    use rustix::fs::{flock, FlockOperation};
    const POLL: Duration = Duration::from_millis(200);
    const LOG_EVERY: u32 = 150;
    let file = std::fs::File::open(dir).map_err(startup("open the device-plugins dir"))?;
    let mut tries = 0u32;
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                if tries > 0 {
                    info!("the other spookd on {} stopped; starting", dir.display());
                }
                return Ok(Some(file));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {}
            Err(e) => {
                return Err(DaemonError::Startup {
                    what: "lock the device-plugins dir",
                    source: e.into(),
                })
            }
        }
        if tries.is_multiple_of(LOG_EVERY) {
            warn!(
                "another spookd serves {} (it holds the directory's lock); waiting for it to stop",
                dir.display()
            );
        }
        tries = tries.wrapping_add(1);
        std::thread::sleep(POLL);
        for signal in signals.pending() {
            if STOP_SIGNALS.contains(&signal) {
                info!("received signal {signal} while waiting for the lock; stopping");
                return Ok(None);
            }
        }
    }
}

/// gRPC core's client-channel backup poller wakes its timer thread every 5 s by default to poll
/// channels whose events might have been missed. spookd's only client calls (Register, the
/// podresources List) are short and carry deadlines: it is off. Read by gRPC core when it
/// starts, so set here (before any thread) unless the environment says otherwise; the
/// Containerfile sets it too.
pub const BACKUP_POLL: &str = "GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS";

/// Sets what the process's environment must hold for gRPC core, when absent; says what it chose.
fn grpc_environment() -> String {
    match std::env::var(BACKUP_POLL) {
        Ok(v) => format!("{BACKUP_POLL}={v} from the environment"),
        Err(_) => {
            // Before any thread is started (the daemon's first step), so nothing reads it
            // concurrently.
            std::env::set_var(BACKUP_POLL, "0");
            format!("{BACKUP_POLL}=0 set by spookd (its backup poller off)")
        }
    }
}

/// Where glibc's `sysconf(_SC_NPROCESSORS_CONF)` counts CPUs, and so where gRPC core does
/// (`gpr_cpu_num_cores`): it keeps 2 timer shards per CPU (at most 32) in each of its two timer
/// loops, and an empty shard wakes its loop once a second at its own phase, so an idle spookd
/// on a 64-CPU node could wake ~64 times a second. Neither affinity nor a cgroup CPU limit
/// changes this count; a file mounted over this one does (the manifests mount a one-CPU file),
/// and the process cannot change it itself.
pub const CPU_LIST: &str = "/sys/devices/system/cpu/possible";

/// Linux's most CPUs (x86's `NR_CPUS` limit). A longer list is no real machine's, and gRPC core
/// sizes per-CPU tables without a bound: a list of 1,000,000 CPUs costs ~470 MiB before the first
/// line of work, so spookd refuses it before gRPC starts.
pub const MAX_CPUS: u64 = 8192;

/// glibc reads at most this much of [`CPU_LIST`]'s first line; a longer one is refused.
const CPU_LIST_LINE: usize = 1000;

/// How many CPUs glibc 2.36 counts in a CPU list (`read_sysfs_file` in getsysstats.c): numbers
/// (`strtoul`: leading white space and a sign allowed) and `n-m` ranges, one `,` between them, up
/// to the end of the line; a backwards range counts nothing. `None` where glibc fails (nothing
/// counted, or an item that is no number) and counts `cpuN` lines of /proc/stat instead. The
/// true sum, not glibc's `int` (which wraps): anything over [`MAX_CPUS`] is refused anyway.
pub fn cpus_in(list: &str) -> Option<u64> {
    let b = list.as_bytes();
    let mut i = 0;
    let mut total: u64 = 0;
    loop {
        let n = strtoul(b, &mut i)?;
        let m = if b.get(i) == Some(&b'-') {
            i += 1;
            strtoul(b, &mut i)?
        } else {
            n
        };
        if m >= n {
            total = total.saturating_add((m - n).saturating_add(1));
        }
        if b.get(i) == Some(&b',') {
            i += 1;
        }
        if i >= b.len() || b[i] == b'\n' {
            break;
        }
    }
    (total > 0).then_some(total)
}

/// C's `strtoul(…, 10)` from `b[*i]`: moves `*i` past what it read; `None` if no digits.
fn strtoul(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut j = *i;
    while b.get(j).is_some_and(|c| b" \t\n\x0b\x0c\r".contains(c)) {
        j += 1;
    }
    let negative = b.get(j) == Some(&b'-');
    if matches!(b.get(j), Some(b'+' | b'-')) {
        j += 1;
    }
    let start = j;
    let mut v: u64 = 0;
    while let Some(d) = b.get(j).filter(|c| c.is_ascii_digit()) {
        v = v.saturating_mul(10).saturating_add(u64::from(d - b'0'));
        j += 1;
    }
    if j == start {
        return None;
    }
    *i = j;
    Some(if negative { v.wrapping_neg() } else { v })
}

/// glibc's fallback: the `cpuN` lines of /proc/stat.
pub fn cpus_in_stat(stat: &str) -> u64 {
    let cpu_line = |l: &&str| {
        l.strip_prefix("cpu")
            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
    };
    stat.lines().filter(cpu_line).count() as u64
}

/// Reads at most `max` bytes of `path`; `None` if it cannot be read.
fn read_at_most(path: &str, max: u64) -> Option<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path).ok()?;
    file.take(max).read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// What gRPC core will size itself for, for the start-up log; an error for a list no machine has.
fn grpc_cpus() -> Result<String, DaemonError> {
    let list = read_at_most(CPU_LIST, 4096);
    if let Some(text) = &list {
        if text.split('\n').next().map_or(0, str::len) > CPU_LIST_LINE {
            return Err(DaemonError::CpuList { cpus: None });
        }
    }
    let (n, from) = match list.as_deref().and_then(cpus_in) {
        Some(n) => (n, format!("({CPU_LIST})")),
        None => match read_at_most("/proc/stat", 1 << 20).map(|s| cpus_in_stat(&s)) {
            Some(n) if n > 0 => (
                n,
                format!("(/proc/stat: {CPU_LIST} is missing or not a CPU list)"),
            ),
            _ => {
                return Ok(format!(
                    "gRPC core's CPU count unknown ({CPU_LIST} and /proc/stat unreadable)"
                ))
            }
        },
    };
    if n > MAX_CPUS {
        return Err(DaemonError::CpuList { cpus: Some(n) });
    }
    Ok(if n == 1 {
        format!("gRPC core counts 1 CPU {from}: 2 timer shards a loop")
    } else {
        format!(
            "gRPC core counts {n} CPUs {from}: {} timer shards a loop, each able to wake it once \
             a second when idle (mount a file holding `0` over {CPU_LIST}, as the manifests do)",
            n.saturating_mul(2).min(32)
        )
    })
}

/// Logging (gRPC core's too), and a panic anywhere ends the process.
fn init() {
    // env_logger's own layout, with each message made one line of at most MAX_LOG_LINE bytes:
    // messages quote config values, API answers and kubelet requests, and one must neither fill
    // the log nor forge a line of its own.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| {
            use std::io::Write as _;
            let message = record.args().to_string();
            let message = crate::text::one_line(&message, crate::text::MAX_LOG_LINE);
            let level = buf.default_level_style(record.level());
            let subtle = if level == env_logger::fmt::style::Style::new() {
                level
            } else {
                env_logger::fmt::style::AnsiColor::BrightBlack.on_default()
            };
            writeln!(
                buf,
                "{subtle}[{subtle:#}{} {level}{:<5}{level:#} {}{subtle}]{subtle:#} {message}",
                buf.timestamp_seconds(),
                record.level(),
                record.target()
            )
        })
        .init();
    // gRPC core reads the level once: below debug, keep its INFO chatter ("epoll fd: 5") out.
    let level = log::max_level();
    if level < log::LevelFilter::Debug {
        log::set_max_level(log::LevelFilter::Warn);
    }
    grpcio::redirect_log();
    log::set_max_level(level);
    // A panicking thread would leave a zombie half-serving: stop the whole process instead, so
    // the kubelet's pod restart brings back a whole spookd.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        error!("panic: {info}; aborting");
        std::process::abort();
    }));
}

/// What the config source is, for the start-up line.
fn describe(source: &Source) -> String {
    match source {
        Source::File {
            path,
            poll_interval,
        } => format!(
            "config file {} (polled every {poll_interval:?})",
            path.display()
        ),
        Source::ConfigMap(api) => format!(
            "{} from {} (CA {}, token {})",
            api.origin(),
            api.conn.server,
            api.conn.ca_file.display(),
            api.conn.token_file.display()
        ),
    }
}

/// The running config source: exactly one of them.
struct Sources {
    _file: Option<FilePoller>,
    _api: Option<ApiSource>,
}

/// Starts the config source; its handle stops its thread when dropped.
fn start_source(
    source: Source,
    tx: &crossbeam_channel::Sender<Msg>,
) -> Result<Sources, DaemonError> {
    Ok(match source {
        Source::File {
            path,
            poll_interval,
        } => {
            let poller = FilePoller::spawn(path, poll_interval, tx.clone())
                .map_err(startup("start the config file poller"))?;
            let _ = tx.send(Msg::SourceProgress(poller.progress()));
            Sources {
                _file: Some(poller),
                _api: None,
            }
        }
        Source::ConfigMap(api) => Sources {
            _file: None,
            _api: Some(ApiSource::spawn(api, tx.clone()).map_err(startup("start the API watch"))?),
        },
    })
}

/// Binds `--metrics-addr` (before anything is registered: a taken port fails start-up cleanly).
fn bind_metrics(
    addr: Option<std::net::SocketAddr>,
) -> Result<Option<MetricsListener>, DaemonError> {
    addr.map(|addr| MetricsListener::bind(addr).map_err(startup("serve --metrics-addr")))
        .transpose()
}

/// Starts serving the bound metrics listener, if any.
fn serve_metrics(
    listener: Option<MetricsListener>,
    tx: &crossbeam_channel::Sender<Msg>,
) -> Result<Option<MetricsServer>, DaemonError> {
    listener
        .map(|l| {
            l.serve(tx.clone())
                .map_err(startup("start the metrics thread"))
        })
        .transpose()
}

/// Stops the state thread (it removes our sockets), waiting at most [`SHUTDOWN_WAIT`].
fn stop_state(tx: &crossbeam_channel::Sender<Msg>, state_thread: &mut Worker) {
    let _ = tx.send(Msg::Shutdown);
    if !state_thread.join_timeout(SHUTDOWN_WAIT) {
        warn!("state thread did not stop within {SHUTDOWN_WAIT:?}; exiting anyway");
    }
}

/// Returns at the first stop signal; logs and ignores the others.
fn wait_for_stop(signals: &mut Signals) {
    for signal in signals.forever() {
        if STOP_SIGNALS.contains(&signal) {
            info!("received signal {signal}; stopping");
            break;
        }
        info!("received signal {signal}; ignored (the config applies live; SIGTERM stops spookd)");
    }
}

/// The namespace of the Leases: the flag's, or the ServiceAccount's.
fn lease_namespace(given: Option<String>, what: &'static str) -> Result<String, DaemonError> {
    match given {
        Some(ns) => Ok(ns),
        None => std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
            .map(|ns| ns.trim().to_owned())
            .map_err(startup(what)),
    }
}

/// The state thread's side effects as a DRA driver: the publisher and the probes of the devices
/// this node reaches (no device-plugin servers or registrations).
struct DraEffects {
    publisher: Publisher,
    prober: Prober,
    reporter: ReportWriter,
    events: Option<Events>,
}

impl Backend for DraEffects {
    type Server = ();
    type Error = &'static str;

    fn start(&mut self, _: &ResourceName, _: u64) -> Result<((), String), &'static str> {
        Err("a DRA driver serves no device-plugin sockets")
    }
    fn register(&mut self, _: &ResourceName, _: &str) {}
    fn forget(&mut self, _: &ResourceName) {}
    fn socket_exists(&self, _: &str) -> bool {
        true
    }
    fn kubelet_socket(&self) -> Option<u64> {
        None
    }
    fn set_probes(&mut self, probes: ProbeSet) {
        self.prober.set(probes);
    }
    fn exclusive(&self) -> bool {
        false
    }
    fn leases(&mut self, _: LeaseCmd) {}
    fn set_served_resources(&mut self, _: BTreeSet<ResourceName>) {}
    fn dra(&self) -> bool {
        true
    }
    fn publish(&mut self, inventory: Arc<Inventory>) {
        self.publisher.publish(inventory);
    }
    fn report_health(&mut self, unhealthy: Option<Unhealthy>) {
        self.reporter.report(unhealthy);
    }
    fn notify(&mut self, notice: Notice) {
        if let Some(events) = &self.events {
            events.send(notice);
        }
    }
}

/// `--dra`: the kubelet plugin, the publisher, the state thread, the config source and the
/// metrics server; stopped in reverse (the plugin's sockets first, then the state thread, whose
/// backend releases the leader Lease).
fn run_dra(opts: RunOptions, dra: DraOptions) -> Result<(), DaemonError> {
    info!(
        "spookd {VERSION} starting as DRA driver {}: node {}, {}, kubelet plugins {}, registry \
         {}, CDI specs in {}, API server {}",
        dra.driver,
        opts.node_name,
        describe(&opts.source),
        dra.plugins_dir.display(),
        dra.registry_dir.display(),
        dra.cdi_dir.display(),
        dra.conn.server
    );
    let sockets = Sockets::new(&dra.plugins_dir, &dra.registry_dir, &dra.driver);
    for path in [&sockets.dra, &sockets.registration] {
        check_socket_path(path)?;
    }
    let plugin_dir = dra.plugins_dir.join(&dra.driver);
    std::fs::create_dir_all(&plugin_dir).map_err(startup("create the plugin's directory"))?;
    std::fs::create_dir_all(&dra.registry_dir)
        .map_err(startup("create the kubelet's plugin registry"))?;
    let mut signals = Signals::new(STOP_SIGNALS.iter().chain(IGNORED_SIGNALS))
        .map_err(startup("install signal handlers"))?;
    // One spookd per driver and node: a second would serve the same sockets.
    let Some(_lock) = lock_dir(&plugin_dir, &mut signals)? else {
        return Ok(());
    };
    let metrics = bind_metrics(opts.metrics_addr)?;
    let namespace = lease_namespace(
        dra.lease_namespace.clone(),
        "read the ServiceAccount's namespace for the leader Lease (set --lease-namespace)",
    )?;
    let lease = leader_lease_name(&dra.driver);
    info!(
        "leader Lease {namespace}/{lease}, {:?}: the node holding it publishes",
        dra.lease_duration
    );
    let grpc = Arc::new(
        grpcio::EnvBuilder::new()
            .cq_count(1)
            .name_prefix("spookd-grpc")
            .build(),
    );
    let (tx, rx) = crossbeam_channel::unbounded();
    let api = PublisherApi {
        leases: Box::new(HttpLeaseApi::new(dra.conn.clone(), &namespace)),
        slices: Box::new(HttpObjects::<ResourceSlice>::slices(
            dra.conn.clone(),
            &dra.driver,
        )),
        classes: Box::new(HttpObjects::classes(dra.conn.clone(), &dra.driver)),
        reports: Box::new(HttpObjects::reports(
            dra.conn.clone(),
            &namespace,
            &dra.driver,
        )),
    };
    let reporter = ReportWriter::spawn(Reporter {
        api: Box::new(HttpObjects::reports(
            dra.conn.clone(),
            &namespace,
            &dra.driver,
        )),
        driver: dra.driver.clone(),
        namespace: namespace.clone(),
        node: opts.node_name.to_string(),
        name: report_name(&lease, opts.node_name.as_str()),
        duration: dra.lease_duration,
    })
    .map_err(startup("start the health report thread"))?;
    let leadership = Leadership::new(
        lease,
        opts.node_name.to_string(),
        dra.lease_duration,
        Instant::now(),
    );
    let publisher = Publisher::spawn(api, dra.driver.clone(), leadership, tx.clone())
        .map_err(startup("start the publisher thread"))?;
    // The watch only notices changes: it reads the slices' names and versions, not the pool.
    let watch = ObjectWatch {
        objects: HttpObjects::<Named>::slices(dra.conn.clone(), &dra.driver),
        timeout: WATCH_TIMEOUT,
    };
    let slice_watcher = SliceWatcher::spawn("spookd-dra-watch", watch, publisher.nudge())
        .map_err(startup("start the ResourceSlice watch"))?;
    let watch = ObjectWatch {
        objects: HttpObjects::reports(dra.conn.clone(), &namespace, &dra.driver),
        timeout: WATCH_TIMEOUT,
    };
    let report_watcher = SliceWatcher::spawn(
        "spookd-dra-reports",
        watch,
        ReportNudge::new(publisher.nudge()),
    )
    .map_err(startup("start the health reports' watch"))?;
    let node_watcher =
        NodeWatcher::spawn(HttpNode::new(dra.conn.clone(), &opts.node_name), tx.clone())
            .map_err(startup("start the node's device plugin check"))?;
    let events = start_events(opts.events.clone(), &opts.node_name, &tx)?;
    let prober = Prober::spawn(tx.clone()).map_err(startup("start the probe thread"))?;
    let state = State::new(
        opts.node_name,
        DraEffects {
            publisher,
            prober,
            reporter,
            events,
        },
        Instant::now(),
    );
    let mut state_thread = Worker::spawn("spookd-state", move || state::run(state, &rx))
        .map_err(startup("start the state thread"))?;
    let inputs = (|| -> Result<_, DaemonError> {
        let plugin = KubeletPlugin::spawn(
            grpc,
            PluginContext {
                driver: dra.driver.clone(),
                sockets,
                cdi: CdiDir::new(dra.cdi_dir.clone(), &dra.driver),
                claims: Box::new(HttpClaims::new(dra.conn.clone())),
                state: tx.clone(),
            },
        )
        .map_err(|e| DaemonError::Startup {
            what: "serve the kubelet plugin",
            source: std::io::Error::other(e.to_string()),
        })?;
        let sources = start_source(opts.source, &tx)?;
        let metrics = serve_metrics(metrics, &tx)?;
        Ok((plugin, sources, metrics))
    })();
    let (plugin, sources, metrics) = match inputs {
        Ok(inputs) => inputs,
        Err(e) => {
            stop_state(&tx, &mut state_thread);
            return Err(e);
        }
    };
    wait_for_stop(&mut signals);
    drop(plugin);
    drop(slice_watcher);
    drop(report_watcher);
    drop(node_watcher);
    stop_state(&tx, &mut state_thread);
    drop(metrics);
    drop(sources);
    Ok(())
}

/// Runs the daemon until a stop signal: starts every thread in order, stops them in reverse.
pub fn run(mut opts: RunOptions) -> Result<(), DaemonError> {
    let grpc_env = grpc_environment();
    init();
    info!("gRPC: {grpc_env}; {}", grpc_cpus()?);
    if let Some(dra) = opts.dra.take() {
        return run_dra(opts, dra);
    }
    let source = describe(&opts.source);
    info!(
        "spookd {VERSION} starting: node {}, {source}, device-plugins dir {}",
        opts.node_name,
        opts.device_plugin_dir.display()
    );
    let dir = opts.device_plugin_dir;
    check_socket_dir(&dir)?;
    std::fs::create_dir_all(&dir).map_err(startup("create the device-plugins dir"))?;
    let mut signals = Signals::new(STOP_SIGNALS.iter().chain(IGNORED_SIGNALS))
        .map_err(startup("install signal handlers"))?;
    // One spookd per device-plugins dir: a second would register the same resources and take
    // them from the first. Held for the process's life (the kernel drops it with the process).
    let Some(_lock) = lock_dir(&dir, &mut signals)? else {
        return Ok(());
    };
    plugin::remove_stale_sockets(&dir).map_err(startup("clean stale sockets"))?;
    // Every listener is bound before anything is registered: a taken port fails here, with
    // nothing created yet.
    let metrics = bind_metrics(opts.metrics_addr)?;

    let grpc = Arc::new(
        grpcio::EnvBuilder::new()
            .cq_count(1)
            .name_prefix("spookd-grpc")
            .build(),
    );
    let (tx, rx) = crossbeam_channel::unbounded();
    let pruner = match opts.prune {
        Some(prune) => {
            info!(
                "pruning resources no longer served from node {}'s status {:?} after they stop \
                 (API server {})",
                opts.node_name, prune.after, prune.conn.server
            );
            let node = opts.node_name.clone();
            Some(Pruner::spawn(prune, node).map_err(startup("start the prune thread"))?)
        }
        None => None,
    };
    let keeper = match opts.leases {
        Some(leases) => {
            let namespace = lease_namespace(
                leases.namespace.clone(),
                "read the ServiceAccount's namespace for the Leases (set --lease-namespace)",
            )?;
            info!(
                "exclusive Leases for shared devices in namespace {namespace}, {:?} each \
                 (API server {}, podresources {})",
                leases.duration,
                leases.conn.server,
                leases.pod_resources_socket.display()
            );
            let node = opts.node_name.clone();
            Some(
                LeaseKeeper::spawn(leases, namespace, node, grpc.clone(), tx.clone())
                    .map_err(startup("start the Lease thread"))?,
            )
        }
        None => None,
    };
    let registrar = Registrar::spawn(grpc.clone(), dir.clone(), tx.clone())
        .map_err(startup("start the registrar thread"))?;
    let prober = Prober::spawn(tx.clone()).map_err(startup("start the probe thread"))?;
    let events = start_events(opts.events.clone(), &opts.node_name, &tx)?;
    let backend = Effects {
        servers: plugin::Servers::new(grpc, dir.clone(), tx.clone()),
        registrar,
        prober,
        pruner,
        keeper,
        events,
    };
    let state = State::new(opts.node_name, backend, Instant::now());
    let mut state_thread = Worker::spawn("spookd-state", move || state::run(state, &rx))
        .map_err(startup("start the state thread"))?;
    // From here the state thread may have created sockets: a failure stops it first, which
    // removes them.
    let inputs = (|| -> Result<_, DaemonError> {
        let watcher =
            Watcher::spawn(&dir, tx.clone()).map_err(startup("watch the device-plugins dir"))?;
        let sources = start_source(opts.source, &tx)?;
        let metrics = serve_metrics(metrics, &tx)?;
        Ok((watcher, sources, metrics))
    })();
    let (watcher, sources, metrics) = match inputs {
        Ok(inputs) => inputs,
        Err(e) => {
            stop_state(&tx, &mut state_thread);
            return Err(e);
        }
    };

    wait_for_stop(&mut signals);
    // The state thread first: it removes our sockets. Then the inputs, which may be blocked.
    stop_state(&tx, &mut state_thread);
    drop(metrics);
    drop(sources);
    drop(watcher);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{check_socket_dir, cpus_in, cpus_in_stat};
    use std::path::PathBuf;

    fn dir_of(len: usize) -> PathBuf {
        PathBuf::from(format!("/{}", "d".repeat(len - 1)))
    }

    #[test]
    fn a_device_plugins_dir_is_refused_only_where_no_socket_name_fits() {
        // The test temp dirs (42 bytes) of issue #27, microk8s's 56, the 74 where every endpoint
        // has its full 32 bytes, and 77, where the shortest (29) still fit.
        for len in [1, 31, 42, 56, 74, 75, 77] {
            assert!(check_socket_dir(&dir_of(len)).is_ok(), "{len}");
        }
        let dir = dir_of(78);
        assert_eq!(
            check_socket_dir(&dir).unwrap_err().to_string(),
            format!(
                "the device-plugins dir {} is 78 bytes long; sockets in it need it at most 77 (a \
                 Unix socket's path holds 107 bytes: the dir, '/' and a socket name of up to 29 \
                 bytes)",
                dir.display()
            )
        );
        assert!(check_socket_dir(&dir_of(4096)).is_err());
    }

    /// glibc 2.36's counts (`None`: it falls back to /proc/stat); tests/daemon.rs checks the same
    /// lists against glibc itself, as root.
    #[test]
    fn counts_cpu_lists_as_glibc_does() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0\n", Some(1)),
            ("0", Some(1)),
            ("3", Some(1)),
            ("0,0", Some(2)),
            ("0-1\n\n", Some(2)),
            ("0-63\n", Some(64)),
            ("0,2-5,7", Some(6)),
            (" 0", Some(1)),
            ("+0", Some(1)),
            ("0,1 ", None),
            ("0, 1", Some(2)),
            ("0\n1", Some(1)),
            ("0,3-1", Some(1)),
            ("0-100000,", Some(100_001)),
            ("abc", None),
            ("", None),
            ("\n", None),
            ("3-1", None),
            ("0-", None),
            ("0-1 junk", None),
            ("1,,2", None),
        ];
        for (list, want) in cases {
            assert_eq!(cpus_in(list), *want, "{list:?}");
        }
        // Where glibc's int wraps, the true count (refused over MAX_CPUS).
        assert_eq!(cpus_in("0-4294967294"), Some(4_294_967_295));
        assert_eq!(cpus_in("0-99999999999999999999999"), Some(u64::MAX));
    }

    #[test]
    fn counts_cpus_in_proc_stat_as_glibc_does() {
        let stat = "cpu  1 2 3\ncpu0 1 2 3\ncpu1 1 2 3\ncpufreq 1\nintr 5\nctxt 9\n";
        assert_eq!(cpus_in_stat(stat), 2);
        assert_eq!(cpus_in_stat(""), 0);
    }
}
