//! spookd's entry point: parses the command line, dispatches (`check`, `status`, or the daemon in
//! [`spookd::daemon`]), maps errors to exit codes.

use std::fmt;
use std::path::Path;
use std::process::ExitCode;

use log::error;

use spookd::cli::{self, CliError, Command};
use spookd::config::{Config, ConfigError, NodeName};
use spookd::daemon::{self, DaemonError};
use spookd::source::file::read_config;
use spookd::status::{self, StatusError};
use spookd::{check, VERSION};

/// Everything that ends spookd with an error.
#[derive(Debug)]
enum MainError {
    Usage(CliError),
    InvalidConfig(ConfigError),
    Daemon(DaemonError),
    Status(StatusError),
}

impl fmt::Display for MainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MainError::Usage(e) => write!(f, "{e}"),
            MainError::InvalidConfig(e) => write!(f, "invalid config: {e}"),
            MainError::Daemon(e) => write!(f, "{e}"),
            MainError::Status(e) => write!(f, "status: {e}"),
        }
    }
}

impl MainError {
    fn exit_code(&self) -> ExitCode {
        match self {
            MainError::Usage(_) => ExitCode::from(2),
            MainError::InvalidConfig(_) | MainError::Daemon(_) | MainError::Status(_) => {
                ExitCode::FAILURE
            }
        }
    }
}

fn main() -> ExitCode {
    let command = cli::parse(
        std::env::args_os().skip(1),
        |k| std::env::var(k).ok(),
        cli::hostname,
    );
    let result = match command {
        Ok(Command::Help) => {
            print!("{}", cli::help());
            Ok(())
        }
        Ok(Command::Version) => {
            println!("spookd {VERSION}");
            Ok(())
        }
        Ok(Command::Check { node, path }) => run_check(node.as_ref(), &path),
        Ok(Command::Status(opts)) => status::run(&opts)
            .map(|out| print!("{out}"))
            .map_err(MainError::Status),
        Ok(Command::Run(opts)) => daemon::run(*opts).map_err(MainError::Daemon),
        Err(e) => Err(MainError::Usage(e)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            // A usage error echoes the argument, an invalid config quotes it: one line, bounded.
            let message = e.to_string();
            let line = spookd::text::one_line(&message, spookd::text::MAX_LOG_LINE);
            eprintln!("spookd: {line}");
            e.exit_code()
        }
    }
}

fn run_check(node: Option<&NodeName>, path: &Path) -> Result<(), MainError> {
    let text = read_config(path).map_err(MainError::InvalidConfig)?;
    let config =
        Config::parse(&text, &path.display().to_string()).map_err(MainError::InvalidConfig)?;
    print!("{}", check::describe(&config, node));
    Ok(())
}
