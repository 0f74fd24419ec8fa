//! What every step of one migrate or rollback shares ([`Ctx`]), and the
//! tests' interruption point ([`StopAt`]).

use std::cell::{OnceCell, RefCell};
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::journal::Step;
use crate::project::Process;
use crate::secrets::config::{Config, ProviderKind, Wait};
use crate::secrets::fixtures::{self, SecretSet};
use crate::secrets::flagfile;
use crate::secrets::provider::{self, SecretProvider};

/// Where in a step a run can be stopped: before it, after its effect and
/// before its journal record, or after that record was saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum At {
    Before,
    AfterEffect,
    AfterRecord,
}

/// The tests' interruption point, `XTASK_TEST_STOP_AT=<step>:<before|after-effect|after-record>`:
/// the run has `kill -s KILL` stop it there, as `kill -9` or a closed laptop
/// would (no destructor runs, nothing more is written). Read once, when the
/// command starts; a value that names no point is a usage error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StopAt {
    pub(super) step: Step,
    pub(super) at: At,
}

impl StopAt {
    const VAR: &'static str = "XTASK_TEST_STOP_AT";

    pub(super) fn from(process: &Process) -> Result<Option<StopAt>> {
        let Some(value) = process.var(Self::VAR) else {
            return Ok(None);
        };
        let parsed = value.split_once(':').and_then(|(step, at)| {
            let step: Step = step.parse().ok()?;
            let at = match at {
                "before" => At::Before,
                "after-effect" => At::AfterEffect,
                "after-record" => At::AfterRecord,
                _ => return None,
            };
            Some(StopAt { step, at })
        });
        match parsed {
            Some(stop) => Ok(Some(stop)),
            None => crate::usage!(
                "{}={value:?} names no point: <step>:<before|after-effect|after-record>",
                Self::VAR
            ),
        }
    }
}

/// What every step of one run shares: the configuration, loaded once, and
/// the target store and fixtures, opened once on first use.
pub(crate) struct Ctx {
    pub(super) root: PathBuf,
    pub(super) env: String,
    pub(super) flag_rel: String,
    pub(super) wait: Wait,
    pub(super) allow_non_local: Option<String>,
    pub(super) cfg: Config,
    pub(super) store: RefCell<Option<Box<dyn SecretProvider>>>,
    pub(super) desired: OnceCell<SecretSet>,
    pub(super) stop_at: Option<StopAt>,
}

impl Ctx {
    /// Runs `f` with the target store, opening it on first use (a
    /// port-forward is started once).
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
        let text = self.read_flag().ok()?;
        flagfile::provider(&text, &self.flag_rel).ok()
    }

    /// The tests' interruption point ([`StopAt`]): dies here if it is this one.
    pub(super) fn stop(&self, step: Step, at: At) {
        if self.stop_at == Some(StopAt { step, at }) {
            // kill(1), a child like any other: SIGKILL lands while we wait for it.
            let pid = std::process::id().to_string();
            let _ = crate::process::Tool::new("kill").args(["-s", "KILL", &pid]).run();
            std::process::abort();
        }
    }
}
