//! What every step of one migrate or rollback shares ([`Ctx`]), and the
//! tests' interruption point ([`stop_at`]).

use std::cell::{OnceCell, RefCell};
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::journal::Step;
use super::plan::Plan;
use crate::project::{self, Process};
use crate::secrets::config::{Config, ProviderKind};
use crate::secrets::fixtures::{self, SecretSet};
use crate::secrets::flagfile;
use crate::secrets::provider::{self, SecretProvider};

crate::named! {
    /// Where in a step a run can be stopped: before it, after its effect, or after its record.
    pub(super) enum At ("point") {
        Before = "before",
        AfterEffect = "after-effect",
        AfterRecord = "after-record",
    }
}

/// The tests' interruption point, `XTASK_TEST_STOP_AT=<step>:<point>`.
pub(super) fn stop_at(process: &Process) -> Result<Option<(Step, At)>> {
    let Some(value) = process.var("XTASK_TEST_STOP_AT") else {
        return Ok(None);
    };
    match value.split_once(':').map(|(s, at)| (s.parse(), at.parse())) {
        Some((Ok(step), Ok(at))) => Ok(Some((step, at))),
        _ => crate::usage!(
            "XTASK_TEST_STOP_AT={value:?} names no point: <step>:<before|after-effect|after-record>"
        ),
    }
}

/// What every step of one run shares; the store and fixtures open on first use.
pub(crate) struct Ctx {
    pub(super) plan: Plan,
    pub(super) root: PathBuf,
    pub(super) env: String,
    pub(super) flag_rel: String,
    pub(super) cfg: Config,
    allow_non_local: Option<String>,
    store: RefCell<Option<Box<dyn SecretProvider>>>,
    desired: OnceCell<SecretSet>,
    stop_at: Option<(Step, At)>,
}

impl Ctx {
    pub(super) fn new(
        plan: Plan,
        cfg: Config,
        env: &str,
        allow_non_local: Option<&str>,
        stop_at: Option<(Step, At)>,
    ) -> Ctx {
        Ctx {
            plan,
            root: cfg.root.clone(),
            env: env.to_string(),
            flag_rel: project::flag_file(env).display().to_string(),
            cfg,
            allow_non_local: allow_non_local.map(String::from),
            store: RefCell::new(None),
            desired: OnceCell::new(),
            stop_at,
        }
    }

    /// Runs `f` with the target store, opening it (and a port-forward) once.
    pub(super) fn with_store<T>(
        &self,
        f: impl FnOnce(&mut dyn SecretProvider) -> Result<T>,
    ) -> Result<T> {
        let mut slot = self.store.borrow_mut();
        if slot.is_none() {
            *slot = Some(provider::open(&self.cfg, self.allow_non_local.as_deref())?);
        }
        f(slot.as_mut().expect("opened above").as_mut())
    }

    /// The fixtures and overrides, loaded on first use.
    pub(super) fn desired(&self) -> Result<&SecretSet> {
        if let Some(set) = self.desired.get() {
            return Ok(set);
        }
        let (_, set) = fixtures::load_configured(&self.cfg)?;
        Ok(self.desired.get_or_init(|| set))
    }

    pub(super) fn flag_path(&self) -> PathBuf {
        self.root.join(&self.flag_rel)
    }

    pub(super) fn read_flag(&self) -> Result<String> {
        std::fs::read_to_string(self.flag_path())
            .with_context(|| format!("reading {}: is --env {} right?", self.flag_rel, self.env))
    }

    /// The provider the flag file names now; `None` when it cannot be read.
    pub(super) fn flag_now(&self) -> Option<ProviderKind> {
        flagfile::provider(&self.read_flag().ok()?, &self.flag_rel).ok()
    }

    /// Dies here, as `kill -9` would, if this is the tests' interruption point.
    pub(super) fn stop(&self, step: Step, at: At) {
        if self.stop_at == Some((step, at)) {
            // kill(1), a child like any other: SIGKILL lands while we wait for it.
            let pid = std::process::id().to_string();
            let _ = crate::process::Tool::new("kill").args(["-s", "KILL", &pid]).run();
            std::process::abort();
        }
    }
}
