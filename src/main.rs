//! spookd's entry point: parses the command line, wires the threads, maps errors to exit codes.

use std::fmt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use spookd::cli::{self, CliError, Command, RunOptions, Source};
use spookd::config::{Config, ConfigError};
use spookd::exclusive::LeaseKeeper;
use spookd::kubelet::Watcher;
use spookd::metrics::MetricsServer;
use spookd::plugin::{self, GrpcBackend};
use spookd::prune::Pruner;
use spookd::source::file::FilePoller;
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
}

impl fmt::Display for MainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MainError::Usage(e) => write!(f, "{e}"),
            MainError::InvalidConfig(e) => write!(f, "invalid config: {e}"),
            MainError::Startup { what, source } => write!(f, "cannot {what}: {source}"),
        }
    }
}

impl MainError {
    fn exit_code(&self) -> ExitCode {
        match self {
            MainError::Usage(_) => ExitCode::from(2),
            MainError::InvalidConfig(_) | MainError::Startup { .. } => ExitCode::FAILURE,
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
    let text = std::fs::read(path).map_err(|source| {
        MainError::InvalidConfig(ConfigError::Read {
            path: path.to_owned(),
            source,
        })
    })?;
    let config =
        Config::parse(&text, &path.display().to_string()).map_err(MainError::InvalidConfig)?;
    print!("{}", check::describe(&config, node));
    Ok(())
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
    plugin::remove_stale_sockets(&dir).map_err(startup("clean stale sockets"))?;
    let signals = Signals::new([SIGTERM, SIGINT]).map_err(startup("install signal handlers"))?;

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
            (Some(poller), None)
        }
        Source::ConfigMap(api) => {
            let watch =
                ApiSource::spawn(api, tx.clone()).map_err(startup("start the API watch"))?;
            (None, Some(watch))
        }
    };

    let metrics = match opts.metrics_addr {
        Some(addr) => {
            Some(MetricsServer::spawn(addr, tx.clone()).map_err(startup("serve --metrics-addr"))?)
        }
        None => None,
    };

    let mut signals = signals;
    if let Some(signal) = signals.forever().next() {
        info!("received signal {signal}; stopping");
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
