//! Integration tests: the real `xtask` binary against real OpenBao, real
//! helm, helmfile and kubectl (talking to the cluster stand-in of
//! `tests/cluster/`), and honest fakes of helmfile sync and az.

// The tests start the real tools and the product as a user would.
#![allow(clippy::disallowed_methods)]

mod cluster;
mod support;

mod bad_input;
mod canary;
mod check;
mod children;
mod cli;
mod digests;
mod docs;
mod eso_access;
mod eso_login;
mod fail_closed;
mod faults;
mod first_contact;
mod guardrail;
mod harness;
mod infra;
mod interrupt;
mod keepalive;
mod kv1;
mod migrate;
mod partial_output;
mod paths;
mod port_forward;
mod raft;
mod seed_azure;
mod seed_file;
mod seed_listing;
mod seed_vault;
mod shims;
mod status;
mod threads;
