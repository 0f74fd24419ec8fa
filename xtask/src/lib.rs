//! `cargo xtask`: repository automation, in the style of rust-analyzer's xtask.
//!
//! [`run_cli`] parses flags and dispatches; each command lives in its own
//! module with a `run`. See `flags.rs` for the `--help` text and DEVELOPERS.md
//! for the layout. A library so the fuzz targets in `fuzz/` can call the
//! parsers; `main.rs` is one line.

// `unsafe` only where the process layer (signals, descriptors, prctl) needs
// libc: every other module is refused it (workspace lint `unsafe_code`).

mod bench;
// xflags writes its structs `pub`; the module is private all the same.
#[allow(unreachable_pub)]
mod flags;
mod fsutil;
mod fuzz;
mod help;
mod output;
mod pool;
#[allow(unsafe_code)]
mod process;
mod project;
mod secrets;
mod test_cmd;
mod tools;
mod yaml;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tidy;

use std::process::ExitCode;

#[cfg(test)]
use project::project_root;

/// What the fuzz targets in `fuzz/` call: the parsers, and nothing else of
/// the crate is public.
pub mod fuzzing {
    pub use crate::flags::ProviderKind;
    pub use crate::secrets::fixtures::{parse as parse_fixtures, valid_name, MAX_VALUE_BYTES};
    pub use crate::secrets::flagfile::{find as find_flag, set as set_flag};
    pub use crate::secrets::scan::scan_text;
}

/// Exit code for a bad flag, value or command: fix the command line.
pub const EXIT_USAGE: u8 = 2;
/// Exit code when some writes landed and some did not: re-run to finish.
pub const EXIT_PARTIAL: u8 = 3;

/// A mistake in the command line. Exits 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}

/// Some of the work landed and some did not; the message lists both. Exits 3.
#[derive(Debug)]
pub struct PartialError(pub String);

impl std::fmt::Display for PartialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for PartialError {}

/// Shorthand for returning a [`UsageError`].
#[macro_export]
macro_rules! usage {
    ($($arg:tt)*) => { return Err(anyhow::Error::new($crate::UsageError(format!($($arg)*)))) };
}

/// Parses the command line, runs the command, and maps errors to exit codes.
///
/// A closed standard output or error (`status | head -1`) ends a command
/// that only reads quietly with exit 0, as `rg` and `fd` do: `print!`
/// panics on a broken pipe, and we catch that one panic (so destructors
/// still stop any port-forward) and say nothing about it. A command that
/// changes state finishes instead, whatever happens to its output or its
/// terminal, and exits with its own code ([`changes_state`]).
pub fn run_cli() -> ExitCode {
    quiet_broken_pipe_panics();
    match std::panic::catch_unwind(run_cli_inner) {
        Ok(code) => code,
        Err(payload) if is_broken_pipe(panic_message(&*payload)) => ExitCode::SUCCESS,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

fn run_cli_inner() -> ExitCode {
    let flags = match flags::Xtask::from_env() {
        Ok(flags) => flags,
        Err(err) if err.is_help() => {
            let path: Vec<String> = std::env::args()
                .skip(1)
                .take_while(|a| a != "--help" && a != "-h")
                .filter(|a| !a.starts_with('-'))
                .collect();
            print!("{}", help::focused(&err.to_string(), &path));
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            say_error(&format!(
                "{err}\nRun `cargo xtask --help` (or `cargo xtask secrets --help`) for usage."
            ));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // Held to the end, past the error message: see `process::FinishRegardless`.
    let _finish = changes_state(&flags.subcommand).then(process::finish_regardless);
    // The process state every command reads: read once, here.
    let state = project::Process::read();
    if let Err(err) = flags
        .validate()
        .and_then(|()| check_env_flag(&flags.subcommand, &state.root))
    {
        say_error(&format!("{err:#}"));
        return ExitCode::from(EXIT_USAGE);
    }
    let result = match flags.subcommand {
        flags::XtaskCmd::Tools(cmd) => tools::run(&cmd, &state),
        flags::XtaskCmd::Test(cmd) => test_cmd::run(&cmd, &state),
        flags::XtaskCmd::Bench(cmd) => bench::run(&cmd, &state),
        flags::XtaskCmd::Fuzz(cmd) => fuzz::run(&cmd, &state),
        flags::XtaskCmd::Secrets(cmd) => secrets::run(cmd, &state),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let code = if err.downcast_ref::<UsageError>().is_some() {
                EXIT_USAGE
            } else if err.downcast_ref::<PartialError>().is_some() {
                EXIT_PARTIAL
            } else {
                1
            };
            say_error(&output::one_line_errors(&format!("{err:#}")));
            ExitCode::from(code)
        }
    }
}

/// Whether the command writes to a store, the flag file or the journal: a
/// seed that is not a dry run, `migrate` and `rollback`. Such a command
/// runs to its end (or its rollback) when its output or terminal goes away.
fn changes_state(cmd: &flags::XtaskCmd) -> bool {
    let flags::XtaskCmd::Secrets(secrets) = cmd else {
        return false;
    };
    match &secrets.subcommand {
        flags::SecretsCmd::Seed(f) => !f.dry_run,
        flags::SecretsCmd::Migrate(f) => !f.dry_run,
        flags::SecretsCmd::Rollback(f) => !f.dry_run,
        _ => false,
    }
}

/// Refuses an `--env` that names no environment of the repository (exit 2).
/// `check` may read another infra tree (`--infra`): there only the name's
/// form is checked here, and `check` itself knows that tree's environments.
fn check_env_flag(cmd: &flags::XtaskCmd, root: &std::path::Path) -> anyhow::Result<()> {
    let flags::XtaskCmd::Secrets(secrets) = cmd else {
        return Ok(());
    };
    let (env, known_here) = match &secrets.subcommand {
        flags::SecretsCmd::Seed(f) => (&f.env, true),
        flags::SecretsCmd::Migrate(f) => (&f.env, true),
        flags::SecretsCmd::Rollback(f) => (&f.env, true),
        flags::SecretsCmd::Status(f) => (&f.env, true),
        flags::SecretsCmd::Doctor(f) => (&f.env, true),
        flags::SecretsCmd::Check(f) => (&f.env, false),
    };
    match env {
        Some(env) => project::require_env(root, env, known_here),
        None => Ok(()),
    }
}

/// `error: ...` on stderr; a closed stderr must not change the exit code.
fn say_error(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "error: {message}");
}

/// The text of a panic payload (`panic!` with a literal or a format).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or_default()
}

/// `print!`'s panic when the reader of stdout or stderr has gone away.
fn is_broken_pipe(message: &str) -> bool {
    (message.starts_with("failed printing to stdout")
        || message.starts_with("failed printing to stderr"))
        && message.contains("Broken pipe")
}

/// Keeps the default panic report for every panic but a broken pipe.
fn quiet_broken_pipe_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_broken_pipe(panic_message(info.payload())) {
            default(info);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_closed_pipe_is_quiet() {
        assert!(is_broken_pipe(
            "failed printing to stdout: Broken pipe (os error 32)"
        ));
        assert!(is_broken_pipe(
            "failed printing to stderr: Broken pipe (os error 32)"
        ));
        assert!(!is_broken_pipe("index out of bounds"));
        assert!(!is_broken_pipe(
            "failed printing to stdout: No space left on device (os error 28)"
        ));
    }
}
