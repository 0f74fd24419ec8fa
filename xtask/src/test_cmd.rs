//! `cargo xtask test`: what CI runs. Installs the pinned tools, then checks
//! formatting and lints, fuzzes each target briefly (with CI=true a missing
//! fuzz toolchain fails), then runs every test with the tools first on PATH.

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::{flags, fuzz, project, project_root, tools};

/// Seconds of fuzzing per target in a full test run.
const FUZZ_SECONDS: u64 = 10;

pub fn run(flags: &flags::Test) -> Result<()> {
    let root = project_root();
    tools::ensure_all(&root).context("the tests need bao, helm and helmfile")?;
    let sh = Shell::new()?;
    sh.change_dir(&root);
    sh.set_var("PATH", project::path_with_tools(&root));
    cmd!(sh, "cargo fmt --all -- --check")
        .run()
        .context("formatting differs: run `cargo fmt --all`")?;
    cmd!(
        sh,
        "cargo clippy --workspace --all-targets --quiet -- -D warnings"
    )
    .run()
    .context("clippy found problems (see above)")?;
    let args = &flags.args;
    // A filtered run is a developer's quick loop: no fuzzing then.
    if args.is_empty() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        if fuzz::ensure_tools(ci)? {
            fuzz::run_targets(&root, fuzz::TARGETS, FUZZ_SECONDS)?;
        } else {
            eprintln!(
                "SKIPPED fuzzing: needs the nightly toolchain and cargo-fuzz (`cargo xtask fuzz` installs cargo-fuzz)"
            );
        }
    }
    // Last, so the test runner's summary closes the output.
    cmd!(sh, "cargo test --workspace {args...}")
        .run()
        .context("tests failed (see above)")?;
    Ok(())
}
