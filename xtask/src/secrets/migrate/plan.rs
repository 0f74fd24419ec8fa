//! The [`Step`]s of a migration or rollback, and [`build`]: the one function
//! that turns a request (migrate, rollback, rollback `--to`, `--resume`) and
//! the journal into the plan that both `--dry-run` prints and the engine runs.

use anyhow::{bail, Result};

use super::journal::{self, Event, Journal, Kind, Migration, State, Step};
use crate::secrets::config::ProviderKind;

/// The steps of a migration, in order.
pub const MIGRATE: [Step; 7] = [
    Step::Preflight,
    Step::Seed,
    Step::Coverage,
    Step::Flip,
    Step::Sync,
    Step::Wait,
    Step::Record,
];
/// A migration's automatic rollback after a failure past the flip.
pub const AUTO_ROLLBACK: [Step; 3] = [
    Step::RollbackRestore,
    Step::RollbackSync,
    Step::RollbackWait,
];
/// Finishing a migration's failed automatic rollback: preflight, then
/// [`AUTO_ROLLBACK`].
const RESUME_AUTO_ROLLBACK: [Step; 4] = [
    Step::Preflight,
    AUTO_ROLLBACK[0],
    AUTO_ROLLBACK[1],
    AUTO_ROLLBACK[2],
];
/// A rollback that sets the flag back.
const ROLLBACK_WITH_FLIP: [Step; 5] = [
    Step::Preflight,
    Step::Flip,
    Step::Sync,
    Step::Wait,
    Step::Record,
];
/// A rollback whose flag already says where to: the cluster synced again.
const ROLLBACK_NO_FLIP: [Step; 4] = [Step::Preflight, Step::Sync, Step::Wait, Step::Record];

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Migrate {
        to: Option<ProviderKind>,
        resume: bool,
        auto_rollback: bool,
    },
    Rollback {
        to: Option<ProviderKind>,
        resume: bool,
    },
}

/// A step of a plan; `done_earlier` when a resumed entry already has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    pub step: Step,
    pub done_earlier: bool,
}

/// The journal entry a plan writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A new entry, added once preflight has passed.
    New { undoes: Option<String> },
    /// An entry already in the journal, continued.
    Continue { id: String },
}

/// What happens when a step past the flip fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnFailure {
    /// Run these steps to put things back (a migration's automatic rollback).
    AutoRollback(Vec<Step>),
    /// Record this event and stop.
    Stop(Event),
}

/// Everything one run will do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub kind: Kind,
    pub entry: Entry,
    /// Where the entry started: the provider the flag said before it (for
    /// a new entry, what it says now). An automatic rollback goes back here.
    pub from: ProviderKind,
    pub to: ProviderKind,
    pub steps: Vec<Planned>,
    pub on_success: Event,
    pub on_failure: OnFailure,
    /// One line saying what this run is, printed first.
    pub title: String,
}

impl Plan {
    pub fn has(&self, step: Step) -> bool {
        self.steps.iter().any(|p| p.step == step && !p.done_earlier)
    }
}

/// A plan, or why there is nothing to do.
#[derive(Debug)]
pub enum Decision {
    Run(Plan),
    Nothing(String),
}

fn fresh(steps: &[Step]) -> Vec<Planned> {
    steps
        .iter()
        .map(|&step| Planned {
            step,
            done_earlier: false,
        })
        .collect()
}

/// On resume, what already succeeded is not redone, except what must be
/// re-checked: preflight, and sync and wait (the cluster may have moved).
fn resumed(entry: &Migration, steps: &[Step]) -> Vec<Planned> {
    steps
        .iter()
        .map(|&step| Planned {
            step,
            done_earlier: matches!(
                step,
                Step::Seed | Step::Coverage | Step::Flip | Step::RollbackRestore
            ) && entry.step_ok(step),
        })
        .collect()
}

fn provider(value: &str) -> Result<ProviderKind> {
    match value.parse::<ProviderKind>().ok() {
        Some(p) => Ok(p),
        None => bail!("the journal names an unknown provider {value:?}"),
    }
}

/// The journal's newest entry finished and left the flag file's provider
/// (`flag`) where it is, so the cluster was synced to it.
fn synced_to_flag(newest: Option<&Migration>, flag: &str) -> bool {
    newest.is_some_and(|m| match m.state {
        State::Completed => m.to == flag,
        State::RolledBack => m.from == flag,
        _ => false,
    })
}

/// The plan for `request`, given the flag file's provider now and the
/// journal. `migrate`, `rollback`, `--resume` and `--dry-run` all come here.
pub fn build(
    request: Request,
    env: &str,
    flag_now: ProviderKind,
    journal: &Journal,
) -> Result<Decision> {
    let newest = journal.current();
    let open = newest.filter(|m| m.state.is_open());
    let flag = flag_now.as_str();
    let plan = |kind, entry, from, to, steps, on_success, on_failure, title| Plan {
        kind,
        entry,
        from,
        to,
        steps,
        on_success,
        on_failure,
        title,
    };
    match request {
        Request::Migrate {
            to,
            resume,
            auto_rollback,
        } => {
            let on_failure = if auto_rollback {
                OnFailure::AutoRollback(AUTO_ROLLBACK.to_vec())
            } else {
                OnFailure::Stop(Event::FailedAfterFlip)
            };
            match (open, resume) {
                (Some(m), false) => bail!(
                    "an unfinished {} of {env} to {} is in the journal ({}, last step: {}). Finish it first: {}.",
                    m.kind.as_str(),
                    m.to,
                    m.state.as_str(),
                    m.steps.last().map(|s| s.name.as_str()).unwrap_or("none"),
                    m.next_step_text(flag).unwrap_or_default()
                ),
                (None, true) => bail!(
                    "nothing to resume: the journal has no unfinished migration of {env}"
                ),
                (Some(m), true) => {
                    if m.kind != Kind::Migrate || m.state != State::InProgress {
                        bail!(
                            "the unfinished operation is a rollback ({}): finish it with {}",
                            m.state.as_str(),
                            m.next_step_text(flag).unwrap_or_default()
                        );
                    }
                    if m.rolling_back(flag) {
                        bail!(
                            "the migration's automatic rollback began ({} says {} again), so it is not continued: \
                             finish the rollback with {}",
                            m.flag_file,
                            m.from,
                            m.next_step_text(flag).unwrap_or_default()
                        );
                    }
                    let journaled = provider(&m.to)?;
                    if let Some(t) = to.filter(|t| *t != journaled) {
                        bail!(
                            "the unfinished migration goes to {}, not {}",
                            m.to,
                            t.as_str()
                        );
                    }
                    Ok(Decision::Run(plan(
                        Kind::Migrate,
                        Entry::Continue { id: m.id.clone() },
                        provider(&m.from)?,
                        journaled,
                        resumed(m, &MIGRATE),
                        Event::Succeeded,
                        on_failure,
                        format!("resume the migration of {env} to {} ({})", m.to, m.id),
                    )))
                }
                (None, false) => {
                    let Some(to) = to else {
                        crate::usage!("say where to: --to vault or --to azure (or --resume an unfinished migration)");
                    };
                    if to == flag_now && synced_to_flag(newest, flag) {
                        return Ok(Decision::Nothing(format!(
                            "{env} already uses {}: nothing to migrate",
                            to.as_str()
                        )));
                    }
                    if to == flag_now {
                        return Ok(Decision::Nothing(format!(
                            "the flag file already says {flag}, but the journal does not show the cluster \
                             synced to it: `{}` syncs layer 15 and waits for the ExternalSecrets",
                            journal::command(&format!("rollback --to {flag} --yes"), env)
                        )));
                    }
                    Ok(Decision::Run(plan(
                        Kind::Migrate,
                        Entry::New { undoes: None },
                        flag_now,
                        to,
                        fresh(&MIGRATE),
                        Event::Succeeded,
                        on_failure,
                        format!("migrate {env}: {} -> {}", flag_now.as_str(), to.as_str()),
                    )))
                }
            }
        }
        Request::Rollback { to, resume: true } => {
            if to.is_some() {
                crate::usage!("--resume continues the journal's rollback: leave out --to");
            }
            let Some(m) = open else {
                bail!("nothing to resume: the journal has no unfinished rollback of {env}");
            };
            match (m.kind, m.state) {
                (Kind::Migrate, state) if state == State::RollbackFailed || m.rolling_back(flag) => {
                    let back = provider(&m.from)?;
                    Ok(Decision::Run(plan(
                        Kind::Migrate,
                        Entry::Continue { id: m.id.clone() },
                        back,
                        back,
                        resumed(m, &RESUME_AUTO_ROLLBACK),
                        Event::RollbackSucceeded,
                        OnFailure::Stop(Event::RollbackFailed),
                        format!(
                            "finish the rollback of {env} to {} ({})",
                            m.from, m.id
                        ),
                    )))
                }
                (Kind::Rollback, _) => {
                    let steps: &[Step] = if m.from == m.to {
                        &ROLLBACK_NO_FLIP
                    } else {
                        &ROLLBACK_WITH_FLIP
                    };
                    Ok(Decision::Run(plan(
                        Kind::Rollback,
                        Entry::Continue { id: m.id.clone() },
                        provider(&m.from)?,
                        provider(&m.to)?,
                        resumed(m, steps),
                        Event::Succeeded,
                        OnFailure::Stop(Event::FailedAfterFlip),
                        format!("finish the rollback of {env} to {} ({})", m.to, m.id),
                    )))
                }
                (Kind::Migrate, _) => bail!(
                    "the unfinished operation is a migration whose automatic rollback has not begun: continue it \
                     with `{}`, or undo it with `{}`",
                    journal::command("migrate --resume --yes", env),
                    journal::command("rollback --yes", env)
                ),
            }
        }
        Request::Rollback { to, resume: false } => {
            if let Some(m) = open.filter(|m| m.kind == Kind::Rollback) {
                bail!(
                    "an unfinished rollback of {env} to {} is in the journal ({}): finish it with {}",
                    m.to,
                    m.state.as_str(),
                    m.next_step_text(flag).unwrap_or_default()
                );
            }
            let candidate = journal.undo_candidate();
            if let Some(m) = candidate
                .filter(|m| to.is_none() && !m.copy_intact() && flag_now.as_str() != m.from)
            {
                bail!(
                    "the journal's copy of {} from before {} does not match the checksum stored beside it (the \
                     journal was edited or damaged): `rollback` restores that copy byte for byte, so it refuses, and \
                     nothing changed. `{}` sets only the value instead",
                    m.flag_file,
                    m.id,
                    journal::command(&format!("rollback --to {} --yes", m.from), env)
                );
            }
            let to = match (to, candidate) {
                (Some(to), _) => to,
                (None, Some(m)) => provider(&m.from)?,
                (None, None) => bail!(
                    "no migration of {env} in the journal to undo; pass --to vault or --to azure"
                ),
            };
            let undoes = candidate
                .filter(|m| m.from == to.as_str())
                .map(|m| m.id.clone());
            // The flag already says `to`: nothing to flip, but the cluster
            // may not follow it (an unfinished or failed operation, no
            // journal): sync it.
            let steps: &[Step] = if to != flag_now {
                &ROLLBACK_WITH_FLIP
            } else if !synced_to_flag(newest, flag) || undoes.is_some() {
                &ROLLBACK_NO_FLIP
            } else {
                return Ok(Decision::Nothing(format!(
                    "{env} already uses {} and the journal's last operation finished: nothing to roll back",
                    to.as_str()
                )));
            };
            Ok(Decision::Run(plan(
                Kind::Rollback,
                Entry::New { undoes },
                flag_now,
                to,
                fresh(steps),
                Event::Succeeded,
                OnFailure::Stop(Event::FailedAfterFlip),
                format!("rollback {env}: {} -> {}", flag_now.as_str(), to.as_str()),
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::journal::{Outcome, StepRecord};
    use super::*;
    use crate::fsutil::now_rfc3339;
    use ProviderKind::{Azure, Vault};

    fn entry(kind: Kind, state: State, from: &str, to: &str, ok: &[Step]) -> Migration {
        Migration {
            id: format!("{}-{from}-{to}", kind.as_str()),
            kind,
            env: "local".into(),
            from: from.into(),
            to: to.into(),
            state,
            started: now_rfc3339(),
            ended: None,
            flag_file: "f".into(),
            before_content: String::new(),
            before_sha256: crate::fsutil::sha256_hex(b""),
            after_sha256: None,
            undoes: None,
            steps: ok
                .iter()
                .map(|&name| StepRecord {
                    name,
                    started: now_rfc3339(),
                    ended: now_rfc3339(),
                    outcome: Outcome::Ok,
                    detail: String::new(),
                })
                .collect(),
        }
    }

    fn journal(entries: Vec<Migration>) -> Journal {
        Journal {
            migrations: entries,
        }
    }

    fn run(d: Result<Decision>) -> Plan {
        match d.unwrap() {
            Decision::Run(p) => p,
            Decision::Nothing(m) => panic!("nothing: {m}"),
        }
    }

    fn names(p: &Plan) -> Vec<String> {
        p.steps
            .iter()
            .map(|s| format!("{}{}", s.step, if s.done_earlier { " (done)" } else { "" }))
            .collect()
    }

    const MIGRATE_TO_VAULT: Request = Request::Migrate {
        to: Some(Vault),
        resume: false,
        auto_rollback: true,
    };
    const ROLLBACK: Request = Request::Rollback {
        to: None,
        resume: false,
    };
    const ROLLBACK_RESUME: Request = Request::Rollback {
        to: None,
        resume: true,
    };

    #[test]
    fn a_migration_has_seven_steps_and_an_automatic_rollback() {
        let p = run(build(MIGRATE_TO_VAULT, "local", Azure, &Journal::default()));
        assert_eq!(
            names(&p),
            [
                "preflight",
                "seed",
                "coverage",
                "flip",
                "sync",
                "wait",
                "record"
            ]
        );
        assert_eq!(
            p.on_failure,
            OnFailure::AutoRollback(AUTO_ROLLBACK.to_vec())
        );
        assert_eq!(p.entry, Entry::New { undoes: None });
        let no_rb = Request::Migrate {
            to: Some(Vault),
            resume: false,
            auto_rollback: false,
        };
        let p = run(build(no_rb, "local", Azure, &Journal::default()));
        assert_eq!(p.on_failure, OnFailure::Stop(Event::FailedAfterFlip));
        assert!(matches!(
            build(MIGRATE_TO_VAULT, "local", Vault, &Journal::default()).unwrap(),
            Decision::Nothing(_)
        ));
    }

    #[test]
    fn a_rollback_has_its_own_steps_and_undoes_the_last_migration() {
        let done = entry(Kind::Migrate, State::Completed, "azure", "vault", &MIGRATE);
        let p = run(build(
            ROLLBACK,
            "local",
            Vault,
            &journal(vec![done.clone()]),
        ));
        assert_eq!(names(&p), ["preflight", "flip", "sync", "wait", "record"]);
        assert_eq!((p.kind, p.to), (Kind::Rollback, Azure));
        assert_eq!(
            p.entry,
            Entry::New {
                undoes: Some(done.id.clone())
            }
        );
        assert_eq!(p.on_failure, OnFailure::Stop(Event::FailedAfterFlip));
        // --to the other provider: a rollback's steps, undoing nothing.
        let to_vault = Request::Rollback {
            to: Some(Vault),
            resume: false,
        };
        let p = run(build(
            to_vault,
            "local",
            Azure,
            &journal(vec![done.clone()]),
        ));
        assert_eq!(p.entry, Entry::New { undoes: None });
        // Nothing in the journal: say so.
        assert!(build(ROLLBACK, "local", Vault, &Journal::default()).is_err());
    }

    #[test]
    fn rollback_to_where_the_flag_already_is_still_syncs_after_a_failure() {
        let failed = entry(
            Kind::Migrate,
            State::RollbackFailed,
            "azure",
            "vault",
            &[
                Step::Preflight,
                Step::Seed,
                Step::Coverage,
                Step::Flip,
                Step::RollbackRestore,
            ],
        );
        let to_azure = Request::Rollback {
            to: Some(Azure),
            resume: false,
        };
        let p = run(build(
            to_azure,
            "local",
            Azure,
            &journal(vec![failed.clone()]),
        ));
        assert_eq!(names(&p), ["preflight", "sync", "wait", "record"]);
        assert_eq!(
            p.entry,
            Entry::New {
                undoes: Some(failed.id.clone())
            }
        );
        // After a clean rolled-back migration there is nothing to do.
        let settled = entry(Kind::Migrate, State::RolledBack, "azure", "vault", &[]);
        assert!(matches!(
            build(to_azure, "local", Azure, &journal(vec![settled])).unwrap(),
            Decision::Nothing(_)
        ));
    }

    #[test]
    fn resume_continues_what_the_journal_left() {
        let killed = entry(
            Kind::Migrate,
            State::InProgress,
            "azure",
            "vault",
            &[Step::Preflight, Step::Seed, Step::Coverage, Step::Flip],
        );
        let resume = Request::Migrate {
            to: None,
            resume: true,
            auto_rollback: true,
        };
        let p = run(build(
            resume,
            "local",
            Vault,
            &journal(vec![killed.clone()]),
        ));
        assert_eq!(
            names(&p),
            [
                "preflight",
                "seed (done)",
                "coverage (done)",
                "flip (done)",
                "sync",
                "wait",
                "record"
            ]
        );
        assert_eq!(
            p.entry,
            Entry::Continue {
                id: killed.id.clone()
            }
        );
        assert_eq!(
            (p.from, p.to),
            (Azure, Vault),
            "an automatic rollback goes back to azure"
        );
        // A new migration is refused while one is unfinished, naming the command.
        let err = build(
            MIGRATE_TO_VAULT,
            "local",
            Vault,
            &journal(vec![killed.clone()]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("migrate --resume --yes"), "{err}");
        // rollback --resume of an unfinished migration points at the two ways out.
        let err = build(ROLLBACK_RESUME, "local", Vault, &journal(vec![killed]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("rollback --yes"), "{err}");
    }

    #[test]
    fn rollback_resume_finishes_a_failed_automatic_rollback() {
        let failed = entry(
            Kind::Migrate,
            State::RollbackFailed,
            "azure",
            "vault",
            &[Step::Preflight, Step::Flip, Step::RollbackRestore],
        );
        let p = run(build(
            ROLLBACK_RESUME,
            "local",
            Azure,
            &journal(vec![failed.clone()]),
        ));
        assert_eq!(
            names(&p),
            [
                "preflight",
                "rollback-restore (done)",
                "rollback-sync",
                "rollback-wait"
            ]
        );
        assert_eq!(p.on_success, Event::RollbackSucceeded);
        assert_eq!(p.on_failure, OnFailure::Stop(Event::RollbackFailed));
        assert_eq!(p.to, Azure);
        // A new migration is refused and told to finish the rollback.
        let err = build(MIGRATE_TO_VAULT, "local", Azure, &journal(vec![failed]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("rollback --resume --yes"), "{err}");
        // A failed rollback operation resumes with its own steps.
        let mut rb = entry(
            Kind::Rollback,
            State::RollbackFailed,
            "vault",
            "azure",
            &[Step::Preflight, Step::Flip],
        );
        rb.undoes = Some("migrate-azure-vault".into());
        let done = entry(Kind::Migrate, State::Completed, "azure", "vault", &MIGRATE);
        let j = journal(vec![rb.clone(), done]);
        let p = run(build(ROLLBACK_RESUME, "local", Azure, &j));
        assert_eq!(
            names(&p),
            ["preflight", "flip (done)", "sync", "wait", "record"]
        );
        assert_eq!(p.kind, Kind::Rollback);
        // ... and a plain rollback is told to finish it first.
        let err = build(ROLLBACK, "local", Azure, &j).unwrap_err().to_string();
        assert!(err.contains("rollback --resume --yes"), "{err}");
        assert!(build(ROLLBACK_RESUME, "local", Azure, &Journal::default()).is_err());
    }

    /// Killed in its automatic rollback after the restore wrote the flag
    /// back (journaled or not): the rollback is finished, never the
    /// migration, which would record a switch that did not happen.
    #[test]
    fn an_interrupted_automatic_rollback_is_finished_not_the_migration() {
        let resume = Request::Migrate {
            to: None,
            resume: true,
            auto_rollback: true,
        };
        for ok in [
            &[Step::Preflight, Step::Seed, Step::Coverage, Step::Flip][..],
            &[
                Step::Preflight,
                Step::Seed,
                Step::Coverage,
                Step::Flip,
                Step::RollbackRestore,
            ],
        ] {
            let killed = entry(Kind::Migrate, State::InProgress, "azure", "vault", ok);
            let j = journal(vec![killed.clone()]);
            // The flag says azure again: the restore landed.
            let err = build(resume, "local", Azure, &j).unwrap_err().to_string();
            assert!(
                err.contains("automatic rollback began")
                    && err.contains("`cargo xtask secrets rollback --resume --yes`"),
                "{err}"
            );
            let p = run(build(ROLLBACK_RESUME, "local", Azure, &j));
            assert_eq!(p.steps[0].step, Step::Preflight);
            assert_eq!(
                p.steps[1..].iter().map(|s| s.step).collect::<Vec<_>>(),
                AUTO_ROLLBACK
            );
            assert_eq!(p.steps[1].done_earlier, ok.contains(&Step::RollbackRestore));
            assert_eq!((p.on_success, p.to), (Event::RollbackSucceeded, Azure));
            assert_eq!(p.entry, Entry::Continue { id: killed.id });
            // The flag still says vault: the migration continues.
            assert!(matches!(
                build(resume, "local", Vault, &j).unwrap(),
                Decision::Run(_)
            ));
        }
    }

    /// A journal whose copy of the flag file fails its checksum is not
    /// restored from: plain `rollback` refuses and names `--to`.
    #[test]
    fn a_damaged_copy_of_the_flag_file_is_refused_with_the_way_out() {
        let mut done = entry(Kind::Migrate, State::Completed, "azure", "vault", &MIGRATE);
        done.before_content = "secrets:\n".into();
        let j = journal(vec![done]);
        let err = build(ROLLBACK, "local", Vault, &j).unwrap_err().to_string();
        assert!(
            err.contains("does not match the checksum")
                && err.ends_with(
                    "`cargo xtask secrets rollback --to azure --yes` sets only the value instead"
                ),
            "{err}"
        );
        let to_azure = Request::Rollback {
            to: Some(Azure),
            resume: false,
        };
        assert_eq!(
            names(&run(build(to_azure, "local", Vault, &j))),
            ["preflight", "flip", "sync", "wait", "record"]
        );
    }

    #[test]
    fn every_step_has_one_name_in_the_journal_and_the_output() {
        let mut seen = std::collections::HashSet::new();
        for &step in Step::ALL {
            assert!(seen.insert(step.as_str()), "{step} twice in Step::ALL");
            // The journal's spelling (serde) is the output's (as_str), both ways.
            let json = serde_json::to_string(&step).unwrap();
            assert_eq!(json, format!("\"{}\"", step.as_str()));
            assert_eq!(serde_json::from_str::<Step>(&json).unwrap(), step);
        }
    }

    #[test]
    fn resuming_an_entry_from_an_unknown_provider_is_an_error() {
        let mut killed = entry(
            Kind::Migrate,
            State::InProgress,
            "azure",
            "vault",
            &[Step::Preflight, Step::Seed],
        );
        killed.from = "hashicorp".into();
        let resume = Request::Migrate {
            to: None,
            resume: true,
            auto_rollback: true,
        };
        let err = build(resume, "local", Vault, &journal(vec![killed]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown provider \"hashicorp\""), "{err}");
    }
}
