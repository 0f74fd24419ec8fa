//! `cargo xtask bench`: runs the `xtask-bench` crate (`xtask/bench/`), which
//! measures this very binary (`XTASK_BIN`) as a user runs it.

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
    let bench = cmd!(sh, "cargo run --quiet --release -p xtask-bench -- {args...}");
    bench.env("XTASK_BIN", exe).run().context("the benchmark failed")
}
