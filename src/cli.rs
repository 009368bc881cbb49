//! The command line's dispatch: logging set up, then the subcommand run and its exit code.

use crate::args::{Command, LogLevel, MountCommand};

/// Logs go to stderr (above any progress bars): at `level` when given, else as RUST_LOG says,
/// else at info. Colours only on a terminal, not in a daemon's log file. Every field is escaped
/// (`output::EscapedFields`): one event is one line.
fn init_logging(level: Option<LogLevel>) {
    use std::io::IsTerminal;
    let filter = match level {
        Some(level) => level.filter(),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .fmt_fields(crate::output::EscapedFields::new())
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| maxlofs_sync::progress::LogWriter)
        .try_init();
}

/// Parses arguments, runs the subcommand, and answers the process exit code. Usage and
/// configuration errors exit with 2 (clap's convention), as does a mount refused for what it was
/// asked to mount or a state or log path it will not use (`args::NotMounted`); failures with 1;
/// `status --wait` and `verify` have exit codes of their own for what they found.
pub fn main() -> i32 {
    let cli = crate::config::parse(std::env::args_os()).unwrap_or_else(|err| err.exit());
    init_logging(match &cli.command {
        Command::Mount(mount) => mount.settings.log_level,
        _ => None,
    });
    if matches!(
        cli.command,
        Command::Completions { .. } | Command::Hash { .. }
    ) {
        end_quietly_on_closed_pipe();
    }
    let result = match cli.command {
        Command::Completions { shell } => {
            let mut command = crate::config::command();
            clap_complete::generate(shell, &mut command, "maxlofs", &mut std::io::stdout());
            Ok(0)
        }
        Command::Emulator(args) => crate::emulator_command::run(&args).map(|()| 0),
        Command::Grants(args) => crate::grants::run(&args).map(|()| 0),
        Command::Hash { files } => return crate::hash::run_cli(&files),
        Command::Mount(mount) => run_mount(*mount).map(|()| 0),
        Command::ReleaseDeletes { mountpoint } => {
            crate::status::release_deletes(&mountpoint).map(|()| 0)
        }
        Command::Restore(args) => crate::heal::run_restore(&args),
        Command::Scrub(args) => crate::heal::run_scrub(&args),
        Command::Status(args) => crate::status::run(&args),
        Command::Verify(args) => return crate::verify::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("maxlofs: {}", crate::output::error_line(&err));
            match err.downcast_ref::<crate::args::NotMounted>() {
                Some(_) => 2,
                None => 1,
            }
        }
    }
}

/// A command whose output is a stream of lines ends quietly when its reader goes away (`| head`,
/// `| true`), as Unix tools do: the default action of SIGPIPE, which Rust's runtime sets aside
/// (writes then fail with EPIPE, and `println!` panics).
fn end_quietly_on_closed_pipe() {
    // SAFETY: restores a signal's default disposition; no handler of ours is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn run_mount(mount: MountCommand) -> anyhow::Result<()> {
    let args = mount.settings;
    if mount.print_config {
        println!("{}", serde_json::to_string_pretty(&args)?);
        return Ok(());
    }
    if !args.foreground {
        return crate::daemonize::spawn(&args);
    }
    // Before anything else starts a process that could inherit the readiness pipe.
    crate::daemonize::claim_ready_fd();
    crate::daemon::run(&args)
}
