//! `cargo xtask secrets`: seed the local store, check coverage, migrate.

pub(crate) mod check;
pub(crate) mod config;
pub(crate) mod coverage;
pub(crate) mod doctor;
pub(crate) mod eso_access;
pub(crate) mod eso_read;
pub(crate) mod fixtures;
pub(crate) mod flagfile;
pub(crate) mod guard;
pub(crate) mod helmfile;
pub(crate) mod kube;
pub(crate) mod manifests;
pub(crate) mod migrate;
pub(crate) mod port_forward;
pub(crate) mod provider;
pub(crate) mod scan;
pub(crate) mod seed;
pub(crate) mod seeding;
pub(crate) mod status;
pub(crate) mod vault_checks;

use anyhow::Result;

use crate::flags;
use crate::project::Process;

pub(crate) fn run(cmd: flags::Secrets, process: &Process) -> Result<()> {
    match cmd.subcommand {
        flags::SecretsCmd::Seed(f) => seed::run(&f, process),
        flags::SecretsCmd::Check(f) => check::run(&f, process),
        flags::SecretsCmd::Migrate(f) => migrate::run_migrate(&f, process),
        flags::SecretsCmd::Rollback(f) => migrate::run_rollback(&f, process),
        flags::SecretsCmd::Status(f) => status::run(&f, process),
        flags::SecretsCmd::Doctor(f) => doctor::run(&f, process),
    }
}
