//! spookd's entry point: parses the command line, wires the threads, maps errors to exit codes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use signal_hook::consts::{
    SIGALRM, SIGHUP, SIGINT, SIGIO, SIGPROF, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGVTALRM,
    SIGXCPU, SIGXFSZ,
};
use signal_hook::iterator::Signals;

use spookd::cli::{self, CliError, Command, RunOptions, Source};
use spookd::config::{Config, ConfigError};
use spookd::exclusive::LeaseKeeper;
use spookd::kubelet::Watcher;
use spookd::metrics::MetricsListener;
use spookd::plugin::{self, GrpcBackend};
use spookd::prune::Pruner;
use spookd::source::file::{read_config, FilePoller};
use spookd::source::kube::ApiSource;
use spookd::state::{self, Msg, State};
use spookd::worker::Worker;
use spookd::{check, VERSION};

/// The namespace of the pod's ServiceAccount, the default home of the Leases.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// How long shutdown waits for the state thread to stop the servers and remove the sockets.
const SHUTDOWN_WAIT: Duration = Duration::from_millis(1500);

/// Everything that ends spookd with an error.
#[derive(Debug)]
enum MainError {
    Usage(CliError),
    InvalidConfig(ConfigError),
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
}

impl fmt::Display for MainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MainError::Usage(e) => write!(f, "{e}"),
            MainError::InvalidConfig(e) => write!(f, "invalid config: {e}"),
            MainError::Startup { what, source } => write!(f, "cannot {what}: {source}"),
            MainError::SocketDir { dir, len, max } => write!(
                f,
                "the device-plugins dir {} is {len} bytes long; sockets in it need it at most \
                 {max} (a Unix socket's path holds 107 bytes)",
                dir.display()
            ),
        }
    }
}

impl MainError {
    fn exit_code(&self) -> ExitCode {
        match self {
            MainError::Usage(_) => ExitCode::from(2),
            MainError::InvalidConfig(_)
            | MainError::Startup { .. }
            | MainError::SocketDir { .. } => ExitCode::FAILURE,
        }
    }
}

fn startup(what: &'static str) -> impl FnOnce(std::io::Error) -> MainError {
    move |source| MainError::Startup { what, source }
}

fn main() -> ExitCode {
    let command = cli::parse(
        std::env::args_os().skip(1),
        |k| std::env::var(k).ok(),
        cli::hostname,
    );
    let result = match command {
        Ok(Command::Help) => {
            print!("{}", cli::HELP);
            Ok(())
        }
        Ok(Command::Version) => {
            println!("spookd {VERSION}");
            Ok(())
        }
        Ok(Command::Check { node, path }) => run_check(node.as_ref(), &path),
        Ok(Command::Run(opts)) => serve(*opts),
        Err(e) => Err(MainError::Usage(e)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("spookd: {e}");
            e.exit_code()
        }
    }
}

fn run_check(node: Option<&spookd::config::NodeName>, path: &Path) -> Result<(), MainError> {
    let text = read_config(path).map_err(MainError::InvalidConfig)?;
    let config =
        Config::parse(&text, &path.display().to_string()).map_err(MainError::InvalidConfig)?;
    print!("{}", check::describe(&config, node));
    Ok(())
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

/// The longest path a Unix socket can have (`sun_path` holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// The longest socket name spookd makes: `spookd-` + 24 characters + `-` + 8 hex digits + `-` +
/// a server number of up to 20 digits + `.sock`.
const LONGEST_SOCKET_NAME: usize = 7 + 24 + 1 + 8 + 1 + 20 + 5;

/// Refuses a device-plugins dir whose sockets could not be bound (gRPC would only say
/// `BindFail`, later, on every resource).
fn check_socket_dir(dir: &Path) -> Result<(), MainError> {
    let len = dir.as_os_str().len() + 1 + LONGEST_SOCKET_NAME;
    if len > MAX_SOCKET_PATH {
        return Err(MainError::SocketDir {
            dir: dir.to_owned(),
            len: dir.as_os_str().len(),
            max: MAX_SOCKET_PATH - 1 - LONGEST_SOCKET_NAME,
        });
    }
    Ok(())
}

/// Takes the device-plugins dir's lock (`flock` on the directory itself: the kubelet wipes the
/// files in it when it restarts, never the directory). Held by another spookd, it waits: in a
/// DaemonSet's rolling update the new pod can start while the old one is still stopping, and
/// waiting hands over within moments where refusing would crash-loop the new pod for its back-off
/// (10 s and more). A stop signal while waiting ends spookd (`None`).
fn lock_dir(dir: &Path, signals: &mut Signals) -> Result<Option<std::fs::File>, MainError> {
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
                return Err(MainError::Startup {
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

fn serve(opts: RunOptions) -> Result<(), MainError> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
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
    let source = match &opts.source {
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
    };
    info!(
        "spookd {VERSION} starting: node {}, {source}, device-plugins dir {}",
        opts.node_name,
        opts.device_plugin_dir.display()
    );
    let dir = opts.device_plugin_dir;
    std::fs::create_dir_all(&dir).map_err(startup("create the device-plugins dir"))?;
    check_socket_dir(&dir)?;
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
    let metrics = match opts.metrics_addr {
        Some(addr) => Some(MetricsListener::bind(addr).map_err(startup("serve --metrics-addr"))?),
        None => None,
    };

    let env = Arc::new(
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
            let namespace = match leases.namespace.clone() {
                Some(ns) => ns,
                None => std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
                    .map(|ns| ns.trim().to_owned())
                    .map_err(startup(
                        "read the ServiceAccount's namespace for the Leases (set --lease-namespace)",
                    ))?,
            };
            info!(
                "exclusive Leases for shared devices in namespace {namespace}, {:?} each \
                 (API server {}, podresources {})",
                leases.duration,
                leases.conn.server,
                leases.pod_resources_socket.display()
            );
            let node = opts.node_name.clone();
            Some(
                LeaseKeeper::spawn(leases, namespace, node, env.clone(), tx.clone())
                    .map_err(startup("start the Lease thread"))?,
            )
        }
        None => None,
    };
    let backend = GrpcBackend::new(env, dir.clone(), tx.clone(), pruner, keeper)
        .map_err(startup("start the registrar thread"))?;
    let state = State::new(opts.node_name, backend, Instant::now());
    let mut state_thread = Worker::spawn("spookd-state", move || state::run(state, &rx))
        .map_err(startup("start the state thread"))?;
    // From here the state thread may have created sockets: a failure stops it first, which
    // removes them.
    let inputs = (|| -> Result<_, MainError> {
        let watcher =
            Watcher::spawn(&dir, tx.clone()).map_err(startup("watch the device-plugins dir"))?;
        // Exactly one source runs; the handles stop their threads when dropped.
        let (file_source, api_source) = match opts.source {
            Source::File {
                path,
                poll_interval,
            } => {
                let poller = FilePoller::spawn(path, poll_interval, tx.clone())
                    .map_err(startup("start the config file poller"))?;
                let _ = tx.send(Msg::SourceProgress(poller.progress()));
                (Some(poller), None)
            }
            Source::ConfigMap(api) => {
                let watch =
                    ApiSource::spawn(api, tx.clone()).map_err(startup("start the API watch"))?;
                (None, Some(watch))
            }
        };
        let metrics = match metrics {
            Some(listener) => Some(
                listener
                    .serve(tx.clone())
                    .map_err(startup("start the metrics thread"))?,
            ),
            None => None,
        };
        Ok((watcher, file_source, api_source, metrics))
    })();
    let (watcher, file_source, api_source, metrics) = match inputs {
        Ok(inputs) => inputs,
        Err(e) => {
            let _ = tx.send(Msg::Shutdown);
            state_thread.join_timeout(SHUTDOWN_WAIT);
            return Err(e);
        }
    };

    for signal in signals.forever() {
        if STOP_SIGNALS.contains(&signal) {
            info!("received signal {signal}; stopping");
            break;
        }
        info!("received signal {signal}; ignored (the config applies live; SIGTERM stops spookd)");
    }
    // The state thread first: it removes our sockets. Then the inputs, which may be blocked.
    let _ = tx.send(Msg::Shutdown);
    if !state_thread.join_timeout(SHUTDOWN_WAIT) {
        warn!("state thread did not stop within {SHUTDOWN_WAIT:?}; exiting anyway");
    }
    drop(metrics);
    drop(file_source);
    drop(api_source);
    drop(watcher);
    Ok(())
}
