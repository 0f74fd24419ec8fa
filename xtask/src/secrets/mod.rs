//! `cargo xtask secrets`: seed the local store, check coverage, migrate.

pub mod check;
pub mod config;
pub mod coverage;
pub mod doctor;
pub mod eso_access;
pub mod eso_read;
pub mod fixtures;
pub mod flagfile;
pub mod guard;
pub mod helmfile;
pub mod kube;
pub mod manifests;
pub mod migrate;
pub mod port_forward;
pub mod provider;
pub mod scan;
pub mod seed;
pub mod seeding;
pub mod status;
pub mod vault_checks;

use anyhow::Result;

use crate::flags;
use crate::project::Process;

pub fn run(cmd: flags::Secrets, process: &Process) -> Result<()> {
    match cmd.subcommand {
        flags::SecretsCmd::Seed(f) => seed::run(&f, process),
        flags::SecretsCmd::Check(f) => check::run(&f, process),
        flags::SecretsCmd::Migrate(f) => migrate::run_migrate(&f, process),
        flags::SecretsCmd::Rollback(f) => migrate::run_rollback(&f, process),
        flags::SecretsCmd::Status(f) => status::run(&f, process),
        flags::SecretsCmd::Doctor(f) => doctor::run(&f, process),
    }
}
