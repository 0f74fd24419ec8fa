//! The migration journal, `.local/secrets/journal/<env>.json`: one entry per migrate or
//! rollback, newest first, each a state machine ([`State::next`]). A step is written after it
//! finished; it holds checksums and the flag file's bytes from before, never a secret value.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil::{self, now_rfc3339, sha256_hex};
use crate::secrets::config::ProviderKind;
use crate::secrets::flagfile;

crate::named! {
    /// One step of a migration or rollback, spelled as the journal has it.
    pub(crate) enum Step ("step") {
        Preflight = "preflight",
        Seed = "seed",
        Coverage = "coverage",
        Flip = "flip",
        Sync = "sync",
        Wait = "wait",
        Record = "record",
        RollbackRestore = "rollback-restore",
        RollbackSync = "rollback-sync",
        RollbackWait = "rollback-wait",
    }
}

impl Step {
    /// A failure here leaves the cluster and the flag file as they were (the flip is atomic).
    pub(crate) fn fails_before_any_change(self) -> bool {
        matches!(self, Step::Preflight | Step::Seed | Step::Coverage | Step::Flip)
    }
}

crate::named! {
    /// A migration, or a rollback (undoing one, or going `--to` a provider).
    pub(crate) enum Kind ("kind") {
        Migrate = "migrate",
        Rollback = "rollback",
    }
}

crate::named! {
    /// Where an entry stands; [`State::next`] has every transition.
    pub(crate) enum State ("state") {
        /// Running, interrupted, or stopped after the flip with `--no-rollback`.
        InProgress = "in-progress",
        Completed = "completed",
        /// A step failed before the cluster changed: nothing to undo.
        Failed = "failed",
        /// Undone: by its automatic rollback, `rollback --resume`, or a later rollback.
        RolledBack = "rolled-back",
        /// The (automatic) rollback failed after the flag was restored or flipped.
        RollbackFailed = "rollback-failed",
    }
}

impl State {
    /// An entry that still needs a command to finish it.
    pub(crate) fn is_open(self) -> bool {
        matches!(self, State::InProgress | State::RollbackFailed)
    }

    /// The state an entry moves to on `event`; an error for a transition the machine lacks.
    pub(crate) fn next(self, kind: Kind, event: Event) -> Result<State> {
        use {Event as E, Kind as K, State as S};
        Ok(match (kind, self, event) {
            (_, S::InProgress, E::Succeeded) => S::Completed,
            (K::Rollback, S::RollbackFailed, E::Succeeded) => S::Completed,
            (_, S::InProgress, E::FailedBeforeFlip) => S::Failed,
            (K::Migrate, S::InProgress, E::FailedAfterFlip) => S::InProgress,
            (K::Rollback, S::InProgress | S::RollbackFailed, E::FailedAfterFlip) => {
                S::RollbackFailed
            }
            (K::Migrate, S::InProgress | S::RollbackFailed, E::RollbackSucceeded) => S::RolledBack,
            (K::Migrate, S::InProgress | S::RollbackFailed, E::RollbackFailed) => S::RollbackFailed,
            (K::Migrate, S::InProgress | S::Completed | S::RollbackFailed, E::Undone) => {
                S::RolledBack
            }
            (kind, state, event) => {
                bail!("the journal has no transition from {state} on {event:?} for a {kind}")
            }
        })
    }
}

crate::named! {
    /// What happened to an entry, as the engine reports it.
    pub(crate) enum Event ("event") {
        Succeeded = "succeeded",
        /// A step failed before the cluster changed.
        FailedBeforeFlip = "failed-before-flip",
        /// A step failed after the flip, and nothing rolls it back.
        FailedAfterFlip = "failed-after-flip",
        /// The automatic rollback, or `rollback --resume`, put everything back.
        RollbackSucceeded = "rollback-succeeded",
        RollbackFailed = "rollback-failed",
        /// A later rollback that undoes this migration completed.
        Undone = "undone",
    }
}

crate::named! {
    pub(crate) enum Outcome ("outcome") {
        Ok = "ok",
        Failed = "failed",
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StepRecord {
    pub name: Step,
    pub started: String,
    pub ended: String,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Migration {
    pub id: String,
    pub kind: Kind,
    pub env: String,
    pub from: ProviderKind,
    pub to: ProviderKind,
    pub state: State,
    pub started: String,
    pub ended: Option<String>,
    pub flag_file: String,
    /// The flag file before the change, byte for byte (it holds no secret).
    pub before_content: String,
    pub before_sha256: String,
    pub after_sha256: Option<String>,
    /// For a rollback: the id of the migration it undoes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undoes: Option<String>,
    pub steps: Vec<StepRecord>,
}

impl Migration {
    /// A new entry in progress, from the flag file's `text` before it.
    pub(crate) fn new(
        kind: Kind,
        env: &str,
        (from, to): (ProviderKind, ProviderKind),
        flag_file: &str,
        text: &str,
        undoes: Option<String>,
    ) -> Migration {
        let started = now_rfc3339();
        Migration {
            id: format!("{kind}-{started}-{to}-{}", std::process::id()),
            kind,
            env: env.to_string(),
            from,
            to,
            state: State::InProgress,
            started,
            ended: None,
            flag_file: flag_file.to_string(),
            before_content: text.to_string(),
            before_sha256: sha256_hex(text.as_bytes()),
            after_sha256: None,
            undoes,
            steps: Vec::new(),
        }
    }

    /// Whether the last run of step `name` succeeded.
    pub(crate) fn step_ok(&self, name: Step) -> bool {
        let last = self.steps.iter().rev().find(|s| s.name == name);
        last.is_some_and(|s| s.outcome == Outcome::Ok)
    }

    /// The flag file's checksum where this entry left it.
    pub(crate) fn flag_sha_now(&self) -> &str {
        match &self.after_sha256 {
            Some(after) if !self.step_ok(Step::RollbackRestore) => after,
            _ => &self.before_sha256,
        }
    }

    /// The journal's copy of the flag file matches its checksum (an edited journal may not).
    pub(crate) fn copy_intact(&self) -> bool {
        fsutil::sha256_hex(self.before_content.as_bytes()) == self.before_sha256
    }

    /// An unfinished migration whose flip is journaled and whose flag says `from` again.
    pub(crate) fn rolling_back(&self, flag_now: Option<ProviderKind>) -> bool {
        self.kind == Kind::Migrate
            && self.state == State::InProgress
            && self.step_ok(Step::Flip)
            && flag_now == Some(self.from)
    }

    /// The one command that finishes or follows up this entry, if any.
    pub(crate) fn next_command(&self, flag_now: Option<ProviderKind>) -> Option<String> {
        let args = match (self.kind, self.state) {
            // Its copy of the flag file cannot be restored from: set the value instead.
            (Kind::Migrate, State::RollbackFailed) if !self.copy_intact() => {
                format!("rollback --to {} --yes", self.from)
            }
            (Kind::Migrate, State::InProgress) if !self.rolling_back(flag_now) => {
                "migrate --resume --yes".into()
            }
            (_, State::RollbackFailed | State::InProgress) => "rollback --resume --yes".into(),
            _ => return None,
        };
        Some(command(&args, &self.env))
    }

    /// The command that finishes an open entry, and for a migration the way to undo it.
    pub(crate) fn next_step_text(&self, flag_now: Option<ProviderKind>) -> Option<String> {
        let next = self.next_command(flag_now)?;
        if (self.kind, self.state) == (Kind::Migrate, State::InProgress)
            && !self.rolling_back(flag_now)
        {
            let undo = command("rollback --yes", &self.env);
            return Some(format!("`{next}` (or undo it with `{undo}`)"));
        }
        Some(format!("`{next}`"))
    }
}

/// A `cargo xtask secrets` command line, with `--env` unless it is `local`.
pub(crate) fn command(args: &str, env: &str) -> String {
    let env = if env == "local" { String::new() } else { format!(" --env {env}") };
    format!("cargo xtask secrets {args}{env}")
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Journal {
    /// The newest migration or rollback first.
    pub migrations: Vec<Migration>,
}

pub(crate) fn path(root: &Path, env: &str) -> PathBuf {
    root.join(format!(".local/secrets/journal/{env}.json"))
}

pub(crate) fn unreadable_fix(root: &Path, env: &str) -> String {
    let p = path(root, env).display().to_string();
    format!(
        "move it aside (`mv {p} {p}.unreadable`): the tool then starts a new journal, and `cargo xtask secrets \
         status` shows the flag files and the cluster"
    )
}

impl Journal {
    pub(crate) fn load(root: &Path, env: &str) -> Result<Journal> {
        let p = path(root, env);
        match std::fs::read_to_string(&p) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                let fix = unreadable_fix(root, env);
                format!("{} cannot be read as a journal; {fix}", p.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    pub(crate) fn save(&self, root: &Path, env: &str) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(self)?;
        json.push(b'\n');
        fsutil::write_private_atomic(&path(root, env), &json)
    }

    pub(crate) fn current(&self) -> Option<&Migration> {
        self.migrations.first()
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Migration> {
        self.migrations.iter().find(|m| m.id == id)
    }

    fn get_mut(&mut self, id: &str) -> Result<&mut Migration> {
        self.migrations
            .iter_mut()
            .find(|m| m.id == id)
            .with_context(|| format!("no entry {id} in the journal"))
    }

    /// The newest migration a rollback would undo.
    pub(crate) fn undo_candidate(&self) -> Option<&Migration> {
        let undoable = |m: &&Migration| m.state.is_open() || m.state == State::Completed;
        self.migrations.iter().filter(|m| m.kind == Kind::Migrate).find(undoable)
    }

    pub(crate) fn set_flipped_to(&mut self, id: &str, sha: &str) -> Result<()> {
        self.get_mut(id)?.after_sha256 = Some(sha.to_string());
        Ok(())
    }

    pub(crate) fn record(
        &mut self,
        id: &str,
        name: Step,
        started: String,
        outcome: Outcome,
        detail: &str,
    ) -> Result<()> {
        let (ended, detail) = (now_rfc3339(), detail.to_string());
        self.get_mut(id)?.steps.push(StepRecord { name, started, ended, outcome, detail });
        Ok(())
    }

    pub(crate) fn apply(&mut self, id: &str, event: Event) -> Result<State> {
        let m = self.get_mut(id)?;
        let next = m.state.next(m.kind, event)?;
        m.state = next;
        if next != State::InProgress {
            m.ended = Some(now_rfc3339());
        }
        Ok(next)
    }
}

/// What `entry`'s flip writes over `text`, and how: the value set, or for a rollback of a
/// migration whose flip `text` still is, that migration's intact copy of the file before it.
pub(crate) fn flipped(
    journal: &Journal,
    entry: &Migration,
    text: &str,
) -> Result<(String, &'static str)> {
    let (sha, to, flag_rel) = (sha256_hex(text.as_bytes()), entry.to, &entry.flag_file);
    let undone = entry.undoes.as_deref().and_then(|id| journal.get(id));
    let undone = undone.filter(|u| u.after_sha256.as_deref() == Some(sha.as_str()) && u.from == to);
    Ok(match undone {
        Some(u) if u.copy_intact() => (u.before_content.clone(), "restored byte for byte"),
        Some(_) => (
            flagfile::set(text, flag_rel, to)?,
            "set; the journal's copy of the file from before the migration does not match its checksum, so it \
             is not used",
        ),
        None => (flagfile::set(text, flag_rel, to)?, "set"),
    })
}

/// Whether the flag file (`text`) is where `m` left it, or where a killed run's step put it.
pub(crate) fn flag_fits(journal: &Journal, m: &Migration, text: &str) -> bool {
    let sha = sha256_hex(text.as_bytes());
    if sha == m.flag_sha_now() {
        return true;
    }
    if !m.state.is_open() {
        return false;
    }
    if !m.step_ok(Step::Flip) {
        return m.copy_intact()
            && flipped(journal, m, &m.before_content)
                .is_ok_and(|(new, _)| sha256_hex(new.as_bytes()) == sha);
    }
    m.kind == Kind::Migrate && !m.step_ok(Step::RollbackRestore) && sha == m.before_sha256
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use ProviderKind::{Azure, Vault};

    /// An entry of `kind` in `state` whose steps `ok` succeeded.
    pub(crate) fn entry(kind: Kind, state: State, ok: &[Step]) -> Migration {
        let (from, to) = match kind {
            Kind::Migrate => (Azure, Vault),
            Kind::Rollback => (Vault, Azure),
        };
        let text = "secrets:\n  provider: azure\n";
        let mut m = Migration::new(kind, "local", (from, to), "f", text, None);
        m.state = state;
        for &name in ok {
            let (started, ended) = (now_rfc3339(), now_rfc3339());
            let detail = String::new();
            m.steps.push(StepRecord { name, started, ended, outcome: Outcome::Ok, detail });
        }
        m
    }

    /// Every transition the machine has, and that it has no other.
    #[test]
    fn every_transition_and_no_other() {
        let mut got = Vec::new();
        for &kind in Kind::ALL {
            for &state in State::ALL {
                for &event in Event::ALL {
                    if let Ok(to) = state.next(kind, event) {
                        got.push(format!("{kind} {state} {event:?} -> {to}"));
                    }
                }
            }
        }
        let want = [
            "migrate in-progress Succeeded -> completed",
            "migrate in-progress FailedBeforeFlip -> failed",
            "migrate in-progress FailedAfterFlip -> in-progress",
            "migrate in-progress RollbackSucceeded -> rolled-back",
            "migrate in-progress RollbackFailed -> rollback-failed",
            "migrate in-progress Undone -> rolled-back",
            "migrate completed Undone -> rolled-back",
            "migrate rollback-failed RollbackSucceeded -> rolled-back",
            "migrate rollback-failed RollbackFailed -> rollback-failed",
            "migrate rollback-failed Undone -> rolled-back",
            "rollback in-progress Succeeded -> completed",
            "rollback in-progress FailedBeforeFlip -> failed",
            "rollback in-progress FailedAfterFlip -> rollback-failed",
            "rollback rollback-failed Succeeded -> completed",
            "rollback rollback-failed FailedAfterFlip -> rollback-failed",
        ];
        assert_eq!(got, want);
    }

    /// The commands outside `local` carry `--env`; only open states have one.
    #[test]
    fn open_states_name_the_command_that_finishes_them() {
        let mut m = entry(Kind::Migrate, State::InProgress, &[]);
        m.env = "dev".into();
        assert_eq!(
            m.next_step_text(Some(Vault)).as_deref(),
            Some("`cargo xtask secrets migrate --resume --yes --env dev` (or undo it with `cargo xtask secrets rollback --yes --env dev`)")
        );
        for &state in State::ALL {
            m.state = state;
            assert_eq!(state.is_open(), m.next_command(None).is_some(), "{state}");
        }
    }

    #[test]
    fn round_trips_records_outcomes_and_finds_what_to_undo() {
        let root = std::env::temp_dir().join(format!("xtask-journal-{}", std::process::id()));
        let migration = entry(Kind::Migrate, State::Completed, &[]);
        let mut j =
            Journal { migrations: vec![entry(Kind::Rollback, State::InProgress, &[]), migration] };
        assert_eq!(j.undo_candidate().unwrap().kind, Kind::Migrate);
        let (id, before) = (j.migrations[0].id.clone(), j.migrations[0].before_sha256.clone());
        j.set_flipped_to(&id, "flipped").unwrap();
        assert!(j.set_flipped_to("no-such-entry", "flipped").is_err());
        // A failed restore leaves the flipped file; a restore that succeeded, the one from before.
        for (step, outcome, sha) in [
            (Step::Sync, Outcome::Ok, "flipped"),
            (Step::RollbackRestore, Outcome::Failed, "flipped"),
            (Step::RollbackRestore, Outcome::Ok, before.as_str()),
        ] {
            j.record(&id, step, now_rfc3339(), outcome, "3").unwrap();
            assert_eq!(j.migrations[0].flag_sha_now(), sha, "{step} {outcome}");
        }
        assert_eq!(j.apply(&id, Event::FailedAfterFlip).unwrap(), State::RollbackFailed);
        assert!(j.apply(&id, Event::Undone).is_err());
        j.save(&root, "local").unwrap();
        let back = Journal::load(&root, "local").unwrap();
        let cur = back.current().unwrap();
        assert!(cur.step_ok(Step::Sync) && !cur.step_ok(Step::Wait) && cur.ended.is_some());
        assert_eq!((cur.state, cur.from, back.migrations.len()), (State::RollbackFailed, Vault, 2));
        assert_eq!(fsutil::mode(&path(&root, "local")).unwrap(), 0o600);
        // The spellings on disk, which journals written before must still load with.
        let text = std::fs::read_to_string(path(&root, "local")).unwrap();
        for field in [
            r#""state": "rollback-failed""#,
            r#""kind": "rollback""#,
            r#""from": "azure""#,
            r#""to": "vault""#,
            r#""outcome": "failed""#,
            r#""name": "rollback-restore""#,
        ] {
            assert!(text.contains(field), "{field} in {text}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
