//! `cargo xtask`: repository automation, in the style of rust-analyzer's
//! xtask. [`run_cli`] parses flags and dispatches to each command's `run`;
//! a library so the fuzz targets in `fuzz/` can call the parsers.

mod bench;
// xflags writes its structs `pub`; the module is private all the same.
#[allow(unreachable_pub)]
mod flags;
mod fsutil;
mod fuzz;
mod help;
mod output;
mod pool;
#[allow(unsafe_code)] // libc for signals, descriptors and prctl; nowhere else.
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

/// What the fuzz targets in `fuzz/` call: the only public part of the crate.
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

/// Declares an error that is its message alone.
macro_rules! message_error {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name(pub String);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::error::Error for $name {}
    };
}

message_error!(
    /// A mistake in the command line (exit 2).
    UsageError
);
message_error!(
    /// Some of the work landed and some did not; the message lists both (exit 3).
    PartialError
);

/// Shorthand for returning a [`UsageError`].
#[macro_export]
macro_rules! usage {
    ($($arg:tt)*) => { return Err(anyhow::Error::new($crate::UsageError(format!($($arg)*)))) };
}

/// Parses the command line, runs the command, and maps errors to exit codes.
/// A closed stdout or stderr ends a read-only command quietly with exit 0,
/// as `rg` does: we catch `print!`'s broken-pipe panic (so destructors still
/// run). A command that changes state finishes instead ([`changes_state`]).
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
    let Err(err) = result else {
        return ExitCode::SUCCESS;
    };
    say_error(&output::one_line_errors(&format!("{err:#}")));
    match () {
        _ if err.is::<UsageError>() => ExitCode::from(EXIT_USAGE),
        _ if err.is::<PartialError>() => ExitCode::from(EXIT_PARTIAL),
        _ => ExitCode::FAILURE,
    }
}

/// Whether the command writes to a store, the flag file or the journal.
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

/// Refuses an `--env` that names no environment of the repository (exit 2);
/// for `check`, which may read another tree (`--infra`), only its form.
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
    env.as_ref()
        .map_or(Ok(()), |env| project::require_env(root, env, known_here))
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
        for (message, quiet) in [
            ("failed printing to stdout: Broken pipe (os error 32)", true),
            ("failed printing to stderr: Broken pipe (os error 32)", true),
            ("index out of bounds", false),
            (
                "failed printing to stdout: No space left on device (os error 28)",
                false,
            ),
        ] {
            assert_eq!(is_broken_pipe(message), quiet, "{message}");
        }
    }
}
