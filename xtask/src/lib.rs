//! `cargo xtask`: repository automation, in the style of rust-analyzer's
//! xtask; a library so the fuzz targets in `fuzz/` can call the parsers.

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

/// A mistake in the command line (exit 2).
#[derive(Debug)]
pub struct UsageError(pub String);

/// Some of the work landed and some did not; the message lists both (exit 3).
#[derive(Debug)]
pub struct PartialError(pub String);

/// Each error shows its message as is.
macro_rules! message_errors {
    ($($error:ident),+) => {$(
        impl std::fmt::Display for $error {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::error::Error for $error {}
    )+};
}
message_errors!(UsageError, PartialError);

/// Shorthand for returning a [`UsageError`].
#[macro_export]
macro_rules! usage {
    ($($arg:tt)*) => { return Err(anyhow::Error::new($crate::UsageError(format!($($arg)*)))) };
}

/// Runs the command line. A closed stdout or stderr ends a read-only command
/// quietly with exit 0 (as `rg` does) by catching `print!`'s panic.
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
            let args = std::env::args().skip(1);
            let args = args.take_while(|a| a != "--help" && a != "-h");
            let path: Vec<String> = args.filter(|a| !a.starts_with('-')).collect();
            print!("{}", help::focused(&err.to_string(), &path));
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            let hint = "Run `cargo xtask --help` (or `cargo xtask secrets --help`) for usage.";
            say_error(&format!("{err}\n{hint}"));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let (env, known_here, changes_state) = secrets_command(&flags.subcommand);
    // Held to the end, past the error message: see `process::FinishRegardless`.
    let _finish = changes_state.then(process::finish_regardless);
    let state = project::Process::read();
    // An `--env` the repository does not have is a usage error too.
    let require_env = |env| project::require_env(&state.root, env, known_here);
    let env_known = |()| env.map_or(Ok(()), require_env);
    if let Err(err) = flags.validate().and_then(env_known) {
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
    let Err(err) = result else { return ExitCode::SUCCESS };
    say_error(&output::one_line_errors(&format!("{err:#}")));
    match () {
        _ if err.is::<UsageError>() => ExitCode::from(EXIT_USAGE),
        _ if err.is::<PartialError>() => ExitCode::from(EXIT_PARTIAL),
        _ => ExitCode::FAILURE,
    }
}

/// A `secrets` command's `--env`; whether it must be the repository's (not for
/// `check`, which may read another tree); whether the command changes state.
fn secrets_command(cmd: &flags::XtaskCmd) -> (Option<&str>, bool, bool) {
    use flags::SecretsCmd::*;
    let flags::XtaskCmd::Secrets(secrets) = cmd else { return (None, true, false) };
    match &secrets.subcommand {
        Seed(f) => (f.env.as_deref(), true, !f.dry_run),
        Migrate(f) => (f.env.as_deref(), true, !f.dry_run),
        Rollback(f) => (f.env.as_deref(), true, !f.dry_run),
        Status(f) => (f.env.as_deref(), true, false),
        Doctor(f) => (f.env.as_deref(), true, false),
        Check(f) => (f.env.as_deref(), false, false),
    }
}

/// `error: ...` on stderr; a closed stderr must not change the exit code.
fn say_error(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "error: {message}");
}

/// The text of a panic payload (`panic!` with a literal or a format).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    let text = payload.downcast_ref::<String>().map(String::as_str);
    payload.downcast_ref::<&str>().copied().or(text).unwrap_or_default()
}

/// `print!`'s panic when the reader of stdout or stderr has gone away.
fn is_broken_pipe(message: &str) -> bool {
    let printing = ["failed printing to stdout", "failed printing to stderr"];
    printing.iter().any(|p| message.starts_with(p)) && message.contains("Broken pipe")
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
            ("failed printing to stdout: No space left (os error 28)", false),
        ] {
            assert_eq!(is_broken_pipe(message), quiet, "{message}");
        }
    }
}
