//! `cargo xtask bench`: seed and check throughput against a local OpenBao.

use anyhow::{bail, Result};

use crate::flags;

pub fn run(_flags: &flags::Bench) -> Result<()> {
    bail!("`cargo xtask bench` is not built yet (issue: Benchmarks).")
}
