//! [`build`] turns a request (migrate, rollback, rollback `--to`, `--resume`) and the journal
//! into the [`Plan`] that both `--dry-run` prints and the engine runs.

use anyhow::{bail, ensure, Result};

use super::journal::{self, Event, Journal, Kind, Migration, State, Step};
use crate::secrets::config::ProviderKind;

pub(super) const MIGRATE: [Step; 7] =
    [Step::Preflight, Step::Seed, Step::Coverage, Step::Flip, Step::Sync, Step::Wait, Step::Record];
/// A migration's automatic rollback after a failure past the flip.
const AUTO_ROLLBACK: [Step; 3] = [Step::RollbackRestore, Step::RollbackSync, Step::RollbackWait];
/// Finishing a migration's failed automatic rollback.
const RESUME_AUTO_ROLLBACK: [Step; 4] =
    [Step::Preflight, Step::RollbackRestore, Step::RollbackSync, Step::RollbackWait];
const ROLLBACK_WITH_FLIP: [Step; 5] =
    [Step::Preflight, Step::Flip, Step::Sync, Step::Wait, Step::Record];
/// A rollback whose flag already says where to: the cluster synced again.
const ROLLBACK_NO_FLIP: [Step; 4] = [Step::Preflight, Step::Sync, Step::Wait, Step::Record];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Request {
    Migrate { to: Option<ProviderKind>, resume: bool, auto_rollback: bool },
    Rollback { to: Option<ProviderKind>, resume: bool },
}

/// A step of a plan; `done_earlier` when a resumed entry already has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Planned {
    pub step: Step,
    pub done_earlier: bool,
}

/// The journal entry a plan writes to: new (added after preflight) or continued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    New { undoes: Option<String> },
    Continue { id: String },
}

/// What happens when a step past the flip fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OnFailure {
    AutoRollback(Vec<Step>),
    Stop(Event),
}

/// Everything one run will do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub kind: Kind,
    pub entry: Entry,
    /// Where the entry started; an automatic rollback goes back here.
    pub from: ProviderKind,
    pub to: ProviderKind,
    pub steps: Vec<Planned>,
    pub on_success: Event,
    pub on_failure: OnFailure,
    /// One line saying what this run is, printed first.
    pub title: String,
}

impl Plan {
    /// A plan that continues `resumed`, or starts a new entry, and stops on a failure.
    fn new(
        kind: Kind,
        resumed: Option<&Migration>,
        (from, to): (ProviderKind, ProviderKind),
        steps: &[Step],
        title: String,
    ) -> Plan {
        // On resume, preflight, sync and wait are redone: the cluster may have moved.
        let skippable =
            |step| matches!(step, Step::Seed | Step::Coverage | Step::Flip | Step::RollbackRestore);
        let steps = steps.iter().map(|&step| Planned {
            step,
            done_earlier: skippable(step) && resumed.is_some_and(|m| m.step_ok(step)),
        });
        Plan {
            kind,
            entry: resumed
                .map_or(Entry::New { undoes: None }, |m| Entry::Continue { id: m.id.clone() }),
            from,
            to,
            steps: steps.collect(),
            on_success: Event::Succeeded,
            on_failure: OnFailure::Stop(Event::FailedAfterFlip),
            title,
        }
    }

    pub(crate) fn has(&self, step: Step) -> bool {
        self.steps.iter().any(|p| p.step == step && !p.done_earlier)
    }
}

/// A plan, or why there is nothing to do.
#[derive(Debug)]
pub(super) enum Decision {
    Run(Plan),
    Nothing(String),
}

/// The journal's newest entry finished with the cluster synced to `flag`.
fn synced_to_flag(newest: Option<&Migration>, flag: ProviderKind) -> bool {
    newest.is_some_and(|m| match m.state {
        State::Completed => m.to == flag,
        State::RolledBack => m.from == flag,
        _ => false,
    })
}

/// The one plan for `request`, given the flag file's provider now and the journal.
pub(super) fn build(
    request: Request,
    env: &str,
    flag_now: ProviderKind,
    journal: &Journal,
) -> Result<Decision> {
    let newest = journal.current();
    let open = newest.filter(|m| m.state.is_open());
    let flag = Some(flag_now);
    let next = |m: &Migration| m.next_step_text(flag).unwrap_or_default();
    let plan = match request {
        Request::Migrate { to, resume, auto_rollback } => {
            let plan = match (open, resume) {
                (Some(m), false) => bail!(
                    "an unfinished {} of {env} to {} is in the journal ({}, last step: {}). Finish it first: {}.",
                    m.kind,
                    m.to,
                    m.state,
                    m.steps.last().map_or("none", |s| s.name.as_str()),
                    next(m)
                ),
                (None, true) => bail!("nothing to resume: the journal has no unfinished migration of {env}"),
                (Some(m), true) => {
                    let (state, next) = (m.state, next(m));
                    ensure!(m.kind == Kind::Migrate && state == State::InProgress, "the unfinished operation is a rollback ({state}): finish it with {next}");
                    if m.rolling_back(flag) {
                        let (file, from) = (&m.flag_file, m.from);
                        bail!(
                            "the migration's automatic rollback began ({file} says {from} again), so it is not \
                             continued: finish the rollback with {next}"
                        );
                    }
                    if let Some(t) = to.filter(|t| *t != m.to) {
                        bail!("the unfinished migration goes to {}, not {t}", m.to);
                    }
                    let title = format!("resume the migration of {env} to {} ({})", m.to, m.id);
                    Plan::new(Kind::Migrate, Some(m), (m.from, m.to), &MIGRATE, title)
                }
                (None, false) => {
                    let Some(to) = to else {
                        crate::usage!("say where to: --to vault or --to azure (or --resume an unfinished migration)");
                    };
                    if to == flag_now && synced_to_flag(newest, flag_now) {
                        return Ok(Decision::Nothing(format!("{env} already uses {to}: nothing to migrate")));
                    }
                    if to == flag_now {
                        let sync = journal::command(&format!("rollback --to {to} --yes"), env);
                        return Ok(Decision::Nothing(format!(
                            "the flag file already says {to}, but the journal does not show the cluster \
                             synced to it: `{sync}` syncs layer 15 and waits for the ExternalSecrets"
                        )));
                    }
                    let title = format!("migrate {env}: {flag_now} -> {to}");
                    Plan::new(Kind::Migrate, None, (flag_now, to), &MIGRATE, title)
                }
            };
            if auto_rollback {
                let on_failure = OnFailure::AutoRollback(AUTO_ROLLBACK.to_vec());
                Plan { on_failure, ..plan }
            } else {
                plan
            }
        }
        Request::Rollback { to, resume: true } => {
            if to.is_some() {
                crate::usage!("--resume continues the journal's rollback: leave out --to");
            }
            let Some(m) = open else {
                bail!("nothing to resume: the journal has no unfinished rollback of {env}");
            };
            match m.kind {
                Kind::Migrate if m.state == State::RollbackFailed || m.rolling_back(flag) => {
                    let title = format!("finish the rollback of {env} to {} ({})", m.from, m.id);
                    Plan {
                        on_success: Event::RollbackSucceeded,
                        on_failure: OnFailure::Stop(Event::RollbackFailed),
                        ..Plan::new(Kind::Migrate, Some(m), (m.from, m.from), &RESUME_AUTO_ROLLBACK, title)
                    }
                }
                Kind::Rollback => {
                    let steps: &[Step] = if m.from == m.to { &ROLLBACK_NO_FLIP } else { &ROLLBACK_WITH_FLIP };
                    let title = format!("finish the rollback of {env} to {} ({})", m.to, m.id);
                    Plan::new(Kind::Rollback, Some(m), (m.from, m.to), steps, title)
                }
                Kind::Migrate => bail!(
                    "the unfinished operation is a migration whose automatic rollback has not begun: continue it \
                     with `{}`, or undo it with `{}`",
                    journal::command("migrate --resume --yes", env),
                    journal::command("rollback --yes", env)
                ),
            }
        }
        Request::Rollback { to, resume: false } => {
            if let Some(m) = open.filter(|m| m.kind == Kind::Rollback) {
                let (to, state) = (m.to, m.state);
                bail!("an unfinished rollback of {env} to {to} is in the journal ({state}): finish it with {}", next(m));
            }
            let candidate = journal.undo_candidate();
            if let Some(m) =
                candidate.filter(|m| to.is_none() && !m.copy_intact() && flag_now != m.from)
            {
                let (file, id) = (&m.flag_file, &m.id);
                let set = journal::command(&format!("rollback --to {} --yes", m.from), env);
                bail!(
                    "the journal's copy of {file} from before {id} does not match the checksum stored beside it (the \
                     journal was edited or damaged): `rollback` restores that copy byte for byte, so it refuses, and \
                     nothing changed. `{set}` sets only the value instead"
                );
            }
            let Some(to) = to.or(candidate.map(|m| m.from)) else {
                bail!(
                    "no migration of {env} in the journal to undo; pass --to vault or --to azure"
                );
            };
            let undoes = candidate.filter(|m| m.from == to).map(|m| m.id.clone());
            // The flag already says `to`: nothing to flip, but the cluster may not follow it.
            let steps: &[Step] = if to != flag_now {
                &ROLLBACK_WITH_FLIP
            } else if !synced_to_flag(newest, flag_now) || undoes.is_some() {
                &ROLLBACK_NO_FLIP
            } else {
                return Ok(Decision::Nothing(format!(
                    "{env} already uses {to} and the journal's last operation finished: nothing to roll back"
                )));
            };
            let title = format!("rollback {env}: {flag_now} -> {to}");
            Plan {
                entry: Entry::New { undoes },
                ..Plan::new(Kind::Rollback, None, (flag_now, to), steps, title)
            }
        }
    };
    Ok(Decision::Run(plan))
}

#[cfg(test)]
mod tests {
    use super::journal::tests::entry;
    use super::*;
    use ProviderKind::{Azure, Vault};

    fn journal(migrations: Vec<Migration>) -> Journal {
        Journal { migrations }
    }

    const fn migrate(to: Option<ProviderKind>, resume: bool) -> Request {
        Request::Migrate { to, resume, auto_rollback: true }
    }
    const fn rollback(to: Option<ProviderKind>, resume: bool) -> Request {
        Request::Rollback { to, resume }
    }

    /// A resumed entry redoes preflight, sync and wait, not what it did.
    #[test]
    fn resume_continues_what_the_journal_left() {
        let cases = [
            (
                migrate(None, true),
                Vault,
                entry(Kind::Migrate, State::InProgress, &MIGRATE[..4]),
                "preflight, seed (done), coverage (done), flip (done), sync, wait, record",
            ),
            (
                rollback(None, true),
                Azure,
                entry(Kind::Migrate, State::RollbackFailed, &[Step::Flip, Step::RollbackRestore]),
                "preflight, rollback-restore (done), rollback-sync, rollback-wait",
            ),
            (
                rollback(None, true),
                Azure,
                entry(Kind::Rollback, State::RollbackFailed, &[Step::Preflight, Step::Flip]),
                "preflight, flip (done), sync, wait, record",
            ),
        ];
        for (request, flag, m, want) in cases {
            let Decision::Run(plan) = build(request, "local", flag, &journal(vec![m])).unwrap()
            else {
                panic!("{request:?}: nothing to do");
            };
            let done = |s: &Planned| if s.done_earlier { " (done)" } else { "" };
            let steps = plan.steps.iter().map(|s| format!("{}{}", s.step, done(s)));
            assert_eq!(steps.collect::<Vec<_>>().join(", "), want);
        }
    }

    /// Each refusal names why and the command that gets past it.
    #[test]
    fn what_the_journal_does_not_allow_is_refused_with_the_way_out() {
        let killed = || entry(Kind::Migrate, State::InProgress, &[Step::Flip]);
        let rb = entry(Kind::Rollback, State::InProgress, &[]);
        let cases: [(Request, ProviderKind, Vec<Migration>, &str); 7] = [
            (migrate(None, true), Vault, vec![], "nothing to resume: the journal has no unfinished migration"),
            (rollback(None, true), Vault, vec![], "nothing to resume: the journal has no unfinished rollback"),
            (migrate(Some(Azure), true), Vault, vec![killed()], "the unfinished migration goes to vault, not azure"),
            (rollback(Some(Azure), true), Vault, vec![killed()], "--resume continues the journal's rollback: leave out --to"),
            (rollback(None, true), Vault, vec![killed()], "continue it with `cargo xtask secrets migrate --resume --yes`, or undo it with `cargo xtask secrets rollback --yes`"),
            (migrate(None, true), Azure, vec![rb.clone()], "the unfinished operation is a rollback (in-progress): finish it with `cargo xtask secrets rollback --resume --yes`"),
            (rollback(None, false), Azure, vec![rb], "an unfinished rollback of local to azure is in the journal (in-progress)"),
        ];
        for (request, flag, entries, want) in cases {
            let err = build(request, "local", flag, &journal(entries)).unwrap_err();
            assert!(format!("{err:#}").contains(want), "{request:?}: {err:#}");
        }
    }
}
