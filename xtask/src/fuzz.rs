//! `cargo xtask fuzz`: cargo fuzz over the fixture parser, the manifest
//! scanner and the flag editor, seeded from `fuzz/corpus/`; new inputs go to
//! a scratch folder, so the committed corpus only grows on purpose.

// A developer command: its children run through xshell (see clippy.toml).
#![allow(clippy::disallowed_macros)]

use std::path::Path;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::flags;
use crate::project::Process;

pub(crate) const TARGETS: &[&str] = &["fixtures", "manifests", "flag_editor"];

pub(crate) fn run(flags: &flags::Fuzz, process: &Process) -> Result<()> {
    let targets: Vec<&str> = match flags.target.as_deref() {
        None => TARGETS.to_vec(),
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => crate::usage!("unknown fuzz target {t:?}: use {}", TARGETS.join(", ")),
    };
    ensure_tools(true)?;
    run_targets(&process.root, &targets, flags.seconds.unwrap_or(10))
}

/// Whether nightly and cargo-fuzz are there; `install` installs a missing cargo-fuzz.
pub(crate) fn ensure_tools(install: bool) -> Result<bool> {
    let sh = Shell::new()?;
    let works = |cmd: xshell::Cmd| cmd.quiet().ignore_stdout().ignore_stderr().run().is_ok();
    if !works(cmd!(sh, "cargo +nightly --version")) {
        if install {
            bail!("fuzzing needs the nightly toolchain: `rustup toolchain install nightly`");
        }
        return Ok(false);
    }
    if !works(cmd!(sh, "cargo fuzz --version")) {
        if !install {
            return Ok(false);
        }
        eprintln!("installing cargo-fuzz from crates.io ...");
        let install = cmd!(sh, "cargo install cargo-fuzz --locked --quiet");
        install.run().context("installing cargo-fuzz")?;
    }
    Ok(true)
}

/// Runs each target for `seconds`; a crash fails with its artifact path.
pub(crate) fn run_targets(root: &Path, targets: &[&str], seconds: u64) -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(root);
    for target in targets {
        let scratch =
            std::env::temp_dir().join(format!("xtask-fuzz-{target}-{}", std::process::id()));
        std::fs::create_dir_all(&scratch)?;
        let corpus = root.join("fuzz/corpus").join(target);
        let max = format!("-max_total_time={seconds}");
        eprintln!("fuzz {target}: {seconds}s");
        let fuzz = cmd!(sh, "cargo +nightly fuzz run {target} {scratch} {corpus} -- {max}");
        let result = fuzz.quiet().ignore_stdout().output();
        let _ = std::fs::remove_dir_all(&scratch);
        let out = result.map_err(|e| {
            anyhow::anyhow!(
                "fuzz target {target} failed: {e}. The crashing input is under fuzz/artifacts/{target}/; reproduce \
                 with `cargo +nightly fuzz run {target} <that file>` and add it to fuzz/corpus/{target}/ once fixed."
            )
        })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let runs = stderr.lines().rev().find(|l| l.starts_with("Done ")).unwrap_or("done");
        eprintln!("fuzz {target}: {runs}");
    }
    Ok(())
}
