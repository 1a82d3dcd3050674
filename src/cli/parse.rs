//! Reading the arguments: which command, each flag's value as written (checked for repeats and
//! for flags the command does not take), then, per flag, the value that wins (the flag over its
//! environment variable) read as the kind of value it is.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::defs::{Fallback, Flag, DEFAULT_CA_FILE, DEFAULT_TOKEN_FILE, FLAGS};
use super::{modes, CliError, Command};
use crate::config::NodeName;
use crate::kube::client::Connection;
use crate::kubelet::podresources;
use crate::status::StatusOptions;
use crate::time::{format_duration, parse_duration};

/// The command the first argument names: each takes its own flags.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Run,
    Check,
    Status,
}

impl Mode {
    /// `check` reads only --node-name. `status` takes the daemon's own flags for where to ask
    /// (and their variables, so inside the pod it needs none).
    fn takes(self, flag: Flag) -> bool {
        match self {
            Mode::Run => true,
            Mode::Check => flag == Flag::NodeName,
            Mode::Status => matches!(flag, Flag::MetricsAddr | Flag::PodResourcesSocket),
        }
    }
}

/// The arguments as written: each flag once, with its value.
#[derive(Default)]
struct Read {
    values: Vec<(Flag, String)>,
    /// `check`'s PATH (and any extra, refused).
    positional: Vec<String>,
    /// `status --output`.
    output: Option<String>,
}

/// `--help` and `--version` answer wherever they stand, whatever else is wrong.
enum Reading {
    Done(Read),
    Answered(Command),
}

/// Parses the arguments after the program name. `var` looks up an environment variable and
/// `hostname` gives the host name; both are parameters so tests control them.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    var: impl Fn(&str) -> Option<String>,
    hostname: impl FnOnce() -> std::io::Result<String>,
) -> Result<Command, CliError> {
    let mut args = args
        .into_iter()
        .map(|a| a.into_string().map_err(CliError::NotUnicode))
        .collect::<Result<Vec<String>, _>>()?;
    let mode = match args.first().map(String::as_str) {
        Some("check") => Mode::Check,
        Some("status") => Mode::Status,
        _ => Mode::Run,
    };
    if mode != Mode::Run {
        args.remove(0);
    }
    let read = match read_args(args, mode)? {
        Reading::Done(read) => read,
        Reading::Answered(command) => return Ok(command),
    };
    match mode {
        Mode::Check => check_command(read),
        Mode::Status => {
            let output = read.output.clone();
            status_command(&Inputs::new(read.values, &var), output.as_deref())
        }
        Mode::Run => {
            let run = modes::run_options(&Inputs::new(read.values, &var), hostname)?;
            Ok(Command::Run(Box::new(run)))
        }
    }
}

/// Each argument in turn: flags the command takes (once each), `check`'s PATH, `status --output`.
fn read_args(args: Vec<String>, mode: Mode) -> Result<Reading, CliError> {
    let mut args = args.into_iter();
    let mut read = Read::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Reading::Answered(Command::Help)),
            "-V" | "--version" => return Ok(Reading::Answered(Command::Version)),
            _ => {}
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if mode == Mode::Status && name == "--output" {
            read_output(inline, &mut args, &mut read.output)?;
            continue;
        }
        let found = FLAGS
            .iter()
            .map(|d| d.flag)
            .filter(|f| mode.takes(*f))
            .find(|f| f.name() == name);
        match found {
            Some(flag) => {
                let value = flag_value(flag, inline, &mut args)?;
                if read.values.iter().any(|(f, _)| *f == flag) {
                    return Err(CliError::Duplicate(flag.name()));
                }
                read.values.push((flag, value));
            }
            None if mode == Mode::Check && !arg.starts_with('-') => read.positional.push(arg),
            None => return Err(CliError::UnknownArgument(arg)),
        }
    }
    Ok(Reading::Done(read))
}

/// A flag's value: after `=`, or the next argument; a switch alone means true.
fn flag_value(
    flag: Flag,
    inline: Option<String>,
    args: &mut impl Iterator<Item = String>,
) -> Result<String, CliError> {
    match inline {
        // `--config=` is a mistake, never "the default".
        Some(v) if v.is_empty() => Err(CliError::MissingValue(flag.name())),
        Some(v) => Ok(v),
        None if flag.is_switch() => Ok("true".to_owned()),
        // `--config ""` as much as `--config=`.
        None => args
            .next()
            .filter(|v| !v.is_empty())
            .ok_or(CliError::MissingValue(flag.name())),
    }
}

/// `status --output text|json`, given once.
fn read_output(
    inline: Option<String>,
    args: &mut impl Iterator<Item = String>,
    output: &mut Option<String>,
) -> Result<(), CliError> {
    let v = match inline {
        Some(v) => Some(v),
        None => args.next(),
    };
    match v.as_deref() {
        None | Some("") => Err(CliError::MissingValue("--output")),
        Some("json" | "text") if output.is_none() => {
            *output = v;
            Ok(())
        }
        Some("json" | "text") => Err(CliError::Duplicate("--output")),
        _ => Err(CliError::BadOutput(v.unwrap_or_default())),
    }
}

/// `spookd check [--node-name NAME] PATH`.
fn check_command(mut read: Read) -> Result<Command, CliError> {
    if read.positional.len() > 1 {
        return Err(CliError::UnknownArgument(read.positional.swap_remove(1)));
    }
    let path = read.positional.pop().ok_or(CliError::MissingPath)?;
    let node = (read.values.into_iter())
        .find(|(f, _)| *f == Flag::NodeName)
        .map(|(f, n)| node_name(f.name(), n))
        .transpose()?;
    Ok(Command::Check {
        node,
        path: path.into(),
    })
}

/// `spookd status`: where the daemon and the kubelet are asked.
fn status_command(inputs: &Inputs<'_>, output: Option<&str>) -> Result<Command, CliError> {
    Ok(Command::Status(StatusOptions {
        addr: inputs.metrics_addr()?,
        json: output == Some("json"),
        pod_resources: inputs.path(Flag::PodResourcesSocket, podresources::DEFAULT_SOCKET),
    }))
}

/// Each flag's value (the command line's over the environment's), read as the kind of value
/// the flag takes. Errors name where the value came from.
pub(super) struct Inputs<'a> {
    given: Vec<(Flag, String)>,
    var: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Inputs<'a> {
    fn new(given: Vec<(Flag, String)>, var: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Inputs { given, var }
    }

    /// The first of `flags` given on the command line (not through the environment: a variable
    /// may be set for a mode another pod uses).
    pub(super) fn given(&self, flags: &[Flag]) -> Option<Flag> {
        (flags.iter().copied()).find(|f| self.given.iter().any(|(g, _)| g == f))
    }

    /// A flag wins over its environment variable; an empty variable counts as unset. With the
    /// flag's or the variable's name, for errors.
    pub(super) fn value(&self, f: Flag) -> Option<(&'static str, String)> {
        let flag = self.given.iter().find(|(g, _)| *g == f);
        flag.map(|(_, v)| (f.name(), v.clone())).or_else(|| {
            (self.var)(f.env())
                .filter(|v| !v.is_empty())
                .map(|v| (f.env(), v))
        })
    }

    /// A path, or its default.
    pub(super) fn path(&self, f: Flag, default: &str) -> PathBuf {
        self.value(f)
            .map_or_else(|| default.into(), |(_, v)| v.into())
    }

    /// `true`/`1` or `false`/`0`; off when not given.
    pub(super) fn switch(&self, f: Flag) -> Result<bool, CliError> {
        match self.value(f) {
            Some((from, v)) => match v.as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(CliError::BadSwitch { from, value: v }),
            },
            None => Ok(false),
        }
    }

    /// A flag that belongs to a switch that is off is a mistake worth stopping for.
    pub(super) fn alone(&self, switch: Flag, flags: &[Flag]) -> Result<(), CliError> {
        match flags.iter().find_map(|f| self.value(*f)) {
            Some((from, _)) => Err(CliError::Alone {
                from,
                needs: switch.name(),
            }),
            None => Ok(()),
        }
    }

    /// Every duration has a range: a floor where less would spin (a 1 ns poll is a busy loop),
    /// a ceiling that keeps every deadline computed from it far inside `Instant`'s range.
    pub(super) fn duration(&self, f: Flag) -> Result<Duration, CliError> {
        let def = f.def();
        match self.value(f) {
            Some((from, v)) => match parse_duration(&v) {
                Some(d) if !d.is_zero() => match def.range {
                    Some((min, max)) if d < min || d > max => Err(CliError::DurationRange {
                        from,
                        value: v,
                        min: format_duration(min),
                        max: format_duration(max),
                    }),
                    _ => Ok(d),
                },
                _ => Err(CliError::BadDuration { from, value: v }),
            },
            None => match def.default {
                Fallback::Duration(d) => Ok(d),
                _ => Err(CliError::BadDuration {
                    from: def.name,
                    value: String::new(),
                }),
            },
        }
    }

    /// Where the daemon serves /metrics, and so where `status` asks it.
    pub(super) fn metrics_addr(&self) -> Result<Option<SocketAddr>, CliError> {
        self.value(Flag::MetricsAddr)
            .map(|(from, v)| {
                v.parse()
                    .map_err(|_| CliError::BadAddress { from, value: v })
            })
            .transpose()
    }

    /// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, as client-go builds it.
    pub(super) fn in_cluster_server(&self) -> Option<String> {
        let host = (self.var)("KUBERNETES_SERVICE_HOST").filter(|h| !h.is_empty())?;
        let port = (self.var)("KUBERNETES_SERVICE_PORT").filter(|p| !p.is_empty())?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Some(format!("https://{host}:{port}"))
    }

    /// The API server and credentials, for whichever feature needs them (`by` names it).
    pub(super) fn connection(&self, by: &'static str) -> Result<Connection, CliError> {
        Ok(Connection {
            server: match self.value(Flag::ApiServer) {
                Some((from, url)) => api_server(from, url)?,
                None => self
                    .in_cluster_server()
                    .ok_or(CliError::NoApiServer { by })?,
            },
            token_file: self.path(Flag::TokenFile, DEFAULT_TOKEN_FILE),
            ca_file: self.path(Flag::CaFile, DEFAULT_CA_FILE),
        })
    }
}

/// A namespace: an RFC 1123 label.
pub(super) fn is_namespace(s: &str) -> bool {
    NodeName::try_from(s.to_owned()).is_ok() && !s.contains('.')
}

/// A ConfigMap's or Pod's name: an RFC 1123 subdomain (the same rule as node names).
pub(super) fn is_object_name(s: &str) -> bool {
    NodeName::try_from(s.to_owned()).is_ok()
}

/// An `https://` URL with nothing after the host and port (a trailing `/` is dropped): the
/// client appends the API's paths to it.
fn api_server(from: &'static str, url: String) -> Result<String, CliError> {
    let trimmed = url.trim_end_matches('/');
    match trimmed.strip_prefix("https://") {
        Some(rest) if !rest.is_empty() && !rest.contains(['/', '?', '#', ' ']) => {
            Ok(trimmed.to_owned())
        }
        _ => Err(CliError::BadApiServer { from, value: url }),
    }
}

pub(super) fn node_name(from: &'static str, value: String) -> Result<NodeName, CliError> {
    NodeName::try_from(value).map_err(|source| CliError::BadNodeName { from, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_support::*;
    use crate::cli::{
        RunOptions, Source, DEFAULT_CONFIG, DEFAULT_DEVICE_PLUGIN_DIR, DEFAULT_POLL_INTERVAL,
    };

    #[test]
    fn defaults() {
        assert_eq!(
            opts(&[], &[]),
            RunOptions {
                source: Source::File {
                    path: DEFAULT_CONFIG.into(),
                    poll_interval: DEFAULT_POLL_INTERVAL
                },
                node_name: node("my-host"),
                device_plugin_dir: DEFAULT_DEVICE_PLUGIN_DIR.into(),
                metrics_addr: None,
                prune: None,
                leases: None,
                dra: None,
                events: None,
            }
        );
    }

    #[test]
    fn flags_win_over_env_which_wins_over_defaults() {
        let env = [
            ("SPOOKD_CONFIG", "/env.yaml"),
            ("NODE_NAME", "env-node"),
            ("SPOOKD_DEVICE_PLUGIN_DIR", "/env/dp"),
            ("SPOOKD_POLL_INTERVAL", "2s"),
            ("SPOOKD_METRICS_ADDR", "127.0.0.1:9470"),
        ];
        assert_eq!(
            opts(&[], &env),
            RunOptions {
                source: Source::File {
                    path: "/env.yaml".into(),
                    poll_interval: Duration::from_secs(2)
                },
                node_name: node("env-node"),
                device_plugin_dir: "/env/dp".into(),
                metrics_addr: Some("127.0.0.1:9470".parse().unwrap()),
                prune: None,
                leases: None,
                dra: None,
                events: None,
            }
        );
        let o = opts(
            &[
                "--config",
                "/f.yaml",
                "--node-name=flag-node",
                "--device-plugin-dir",
                "/dp",
                "--poll-interval=250ms",
                "--metrics-addr=[::1]:0",
            ],
            &env,
        );
        assert_eq!(
            o,
            RunOptions {
                source: Source::File {
                    path: "/f.yaml".into(),
                    poll_interval: Duration::from_millis(250)
                },
                node_name: node("flag-node"),
                device_plugin_dir: "/dp".into(),
                metrics_addr: Some("[::1]:0".parse().unwrap()),
                prune: None,
                leases: None,
                dra: None,
                events: None,
            }
        );
    }

    #[test]
    fn usage_errors() {
        let e = |args: &[&str], env: &[(&str, &str)]| run(args, env).unwrap_err().to_string();
        assert_eq!(
            e(&["--bogus"], &[]),
            "unexpected argument \"--bogus\" (see --help)"
        );
        assert_eq!(e(&["--config"], &[]), "--config needs a value");
        assert_eq!(
            e(&["--config", "a", "--config", "b"], &[]),
            "--config given twice"
        );
        assert_eq!(
            e(&["--poll-interval", "0s"], &[]),
            "--poll-interval: \"0s\" is not a positive duration (write e.g. 250ms, 2s, 1m or 1m30s)"
        );
        assert!(e(&[], &[("SPOOKD_POLL_INTERVAL", "soon")])
            .starts_with("SPOOKD_POLL_INTERVAL: \"soon\""));
        assert!(e(&["--node-name", "Bad_Node"], &[])
            .starts_with("--node-name: invalid host \"Bad_Node\""));
        assert_eq!(e(&["check"], &[]), "check needs the PATH of a config");
        assert_eq!(
            e(&["--metrics-addr", "9470"], &[]),
            "--metrics-addr: \"9470\" is not ADDR:PORT (e.g. 0.0.0.0:9470, 127.0.0.1:9470, [::]:9470)"
        );
        assert_eq!(
            e(&["check", "a", "b"], &[]),
            "unexpected argument \"b\" (see --help)"
        );
        assert_eq!(
            e(&["check", "--config", "x", "a"], &[]),
            "unexpected argument \"--config\" (see --help)"
        );
    }

    #[test]
    fn check_help_version() {
        assert_eq!(
            run(&["check", "c.yaml"], &[("NODE_NAME", "ignored")]).unwrap(),
            Command::Check {
                node: None,
                path: "c.yaml".into()
            }
        );
        assert_eq!(
            run(&["check", "--node-name", "n1", "c.yaml"], &[]).unwrap(),
            Command::Check {
                node: Some(node("n1")),
                path: "c.yaml".into()
            }
        );
        assert_eq!(run(&["--help"], &[]).unwrap(), Command::Help);
        assert_eq!(
            run(&["--config", "x", "-V"], &[]).unwrap(),
            Command::Version
        );
    }
}
