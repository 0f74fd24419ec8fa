//! `cargo xtask test`: what CI runs. Installs the pinned tools, checks
//! formatting and lints, fuzzes each target briefly, then runs every test
//! with the tools first on PATH, and lists tests skipped for missing tools.

// A developer command: its children run through xshell (see clippy.toml).
#![allow(clippy::disallowed_macros)]

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::project::Process;
use crate::{flags, fuzz, tools};

/// Seconds of fuzzing per target in a full test run.
const FUZZ_SECONDS: u64 = 10;

/// Where `xtask/tests/it/support.rs` lists the tests it skipped for missing tools.
const SKIP_LOG_ENV: &str = "XTASK_TOOL_SKIP_LOG";

pub(crate) fn run(flags: &flags::Test, process: &Process) -> Result<()> {
    let root = &process.root;
    if process.var("XTASK_SKIP_TOOL_TESTS") == Some("1") {
        eprintln!("XTASK_SKIP_TOOL_TESTS=1: tests that need bao, kubectl, helm or helmfile are skipped if they are missing");
    } else {
        tools::ensure_all(root).context("the tests need bao, kubectl, helm and helmfile")?;
    }
    let sh = Shell::new()?;
    sh.change_dir(root);
    sh.set_var("PATH", process.path_with_tools());
    let fmt = cmd!(sh, "cargo fmt --all -- --check");
    fmt.run().context("formatting differs: run `cargo fmt --all`")?;
    let clippy = cmd!(sh, "cargo clippy --workspace --all-targets --quiet -- -D warnings");
    clippy.run().context("clippy found problems (see above)")?;
    let args = &flags.args;
    // No fuzzing in a filtered run; without its toolchain only CI=true fails.
    let ci = matches!(process.var("CI"), Some("true" | "1"));
    let fuzz_skipped = args.is_empty() && !fuzz::ensure_tools(ci)?;
    if fuzz_skipped {
        eprintln!("{FUZZ_SKIPPED}");
    } else if args.is_empty() {
        fuzz::run_targets(root, fuzz::TARGETS, FUZZ_SECONDS)?;
    }
    let skip_log = root.join("target/tool-test-skips.txt");
    let _ = std::fs::remove_file(&skip_log);
    sh.set_var(SKIP_LOG_ENV, &skip_log);
    let tested =
        cmd!(sh, "cargo test --workspace {args...}").run().context("tests failed (see above)");
    let skipped = std::fs::read_to_string(&skip_log).unwrap_or_default();
    print!("{}", skip_summary(&skipped));
    if fuzz_skipped {
        println!("\n{FUZZ_SKIPPED}");
    }
    tested
}

/// What a run without the fuzzing tools says, where CI would fuzz.
const FUZZ_SKIPPED: &str = "SKIPPED fuzzing: needs the nightly toolchain (`rustup toolchain install nightly`) and \
     cargo-fuzz (`cargo xtask fuzz` installs it). CI fuzzes: `CI=true cargo xtask test` installs cargo-fuzz and \
     fails without nightly";

/// The closing lines about tests skipped for missing tools.
fn skip_summary(log: &str) -> String {
    let mut names: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    names.sort_unstable();
    if names.is_empty() {
        return String::new();
    }
    let count = names.len();
    let lines: String = names.iter().map(|n| format!("  {n}\n")).collect();
    format!(
        "\nSKIPPED {count} tests for missing tools (XTASK_SKIP_TOOL_TESTS=1; `cargo xtask tools` installs them):\n{lines}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_names_the_skipped_tests() {
        assert_eq!(skip_summary(""), "");
        let text = skip_summary("seed_vault::b: needs bao\ncheck::a: needs helm, helmfile\n");
        assert!(text.contains("SKIPPED 2 tests for missing tools"), "{text}");
        let sorted = text.find("check::a").unwrap() < text.find("seed_vault::b").unwrap();
        assert!(sorted, "{text}");
    }
}
