//! `cargo xtask bench`: builds and runs the benchmark, the `xtask-bench`
//! crate (`xtask/bench/`), a workspace member outside the product. It
//! measures this very binary (`XTASK_BIN`), the one `cargo xtask` runs, as
//! a user runs it; nothing in the product knows it is measured.

// A developer command: its children run through xshell (see clippy.toml).
#![allow(clippy::disallowed_macros)]

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::flags;
use crate::project::Process;

pub(crate) fn run(flags: &flags::Bench, process: &Process) -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(&process.root);
    let mut args: Vec<String> = Vec::new();
    for n in &flags.secrets {
        args.extend(["--secrets".to_string(), n.to_string()]);
    }
    if let Some(c) = flags.concurrency {
        args.extend(["--concurrency".to_string(), c.to_string()]);
    }
    let exe = std::env::current_exe()?;
    // Release: the ceiling is the bench's own client, at its fastest.
    cmd!(
        sh,
        "cargo run --quiet --release -p xtask-bench -- {args...}"
    )
    .env("XTASK_BIN", exe)
    .run()
    .context("the benchmark failed")?;
    Ok(())
}
