//! Integration tests: the real `xtask` binary against real OpenBao, real
//! helm and helmfile, and honest fakes of kubectl, helmfile sync and az.

mod support;

mod bad_input;
mod check;
mod cli;
mod docs;
mod faults;
mod harness;
mod infra;
mod keepalive;
mod migrate;
mod raft;
mod seed_azure;
mod seed_file;
mod seed_listing;
mod seed_vault;
mod shims;
mod threads;
