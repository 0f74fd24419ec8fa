//! `cargo xtask secrets`: seed the local store, check coverage, migrate.

pub mod check;
pub mod config;
pub mod fixtures;
pub mod guard;
pub mod kube;
pub mod manifests;
pub mod plan;
pub mod provider;
pub mod scan;
pub mod seed;

use anyhow::{bail, Result};

use crate::flags;

pub fn run(cmd: flags::Secrets) -> Result<()> {
    match cmd.subcommand {
        flags::SecretsCmd::Seed(f) => seed::run(&f),
        flags::SecretsCmd::Check(f) => check::run(&f),
        flags::SecretsCmd::Migrate(_) => bail!("`secrets migrate` is not built yet"),
        flags::SecretsCmd::Rollback(_) => bail!("`secrets rollback` is not built yet"),
        flags::SecretsCmd::Status(_) => bail!("`secrets status` is not built yet"),
    }
}
