//! The migration journal: `.local/secrets/journal/<env>.json`, written
//! atomically after every step. It holds step outcomes and the state before
//! the change (the flag file's bytes and checksum), never a secret value.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil::{self, now_rfc3339};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    InProgress,
    Completed,
    Failed,
    RolledBack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Running,
    Ok,
    Failed,
    Skipped,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub started: String,
    pub ended: Option<String>,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Migration {
    pub id: String,
    /// `migrate` or `rollback`.
    pub kind: String,
    pub env: String,
    pub from: String,
    pub to: String,
    pub state: State,
    pub started: String,
    pub ended: Option<String>,
    pub flag_file: String,
    /// The flag file before the change, byte for byte (it holds no secret).
    pub before_content: String,
    pub before_sha256: String,
    /// The flag file's checksum after the flip.
    pub after_sha256: Option<String>,
    pub steps: Vec<Step>,
}

impl Migration {
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().rev().find(|s| s.name == name)
    }

    pub fn step_ok(&self, name: &str) -> bool {
        self.step(name).is_some_and(|s| s.outcome == Outcome::Ok)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Journal {
    /// The newest migration or rollback first.
    pub migrations: Vec<Migration>,
}

pub fn path(root: &Path, env: &str) -> PathBuf {
    root.join(".local/secrets/journal")
        .join(format!("{env}.json"))
}

pub fn lock_path(root: &Path, env: &str) -> PathBuf {
    root.join(".local/secrets/journal")
        .join(format!("{env}.lock"))
}

impl Journal {
    pub fn load(root: &Path, env: &str) -> Result<Journal> {
        let p = path(root, env);
        match std::fs::read_to_string(&p) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a valid journal; move it aside to start afresh",
                    p.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    pub fn save(&self, root: &Path, env: &str) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(self)?;
        json.push(b'\n');
        fsutil::write_private_atomic(&path(root, env), &json)
    }

    pub fn current(&self) -> Option<&Migration> {
        self.migrations.first()
    }

    pub fn current_mut(&mut self) -> Option<&mut Migration> {
        self.migrations.first_mut()
    }

    /// The newest completed migration (not rollback).
    pub fn last_completed_migration(&self) -> Option<&Migration> {
        self.migrations
            .iter()
            .find(|m| m.kind == "migrate" && m.state == State::Completed)
    }

    /// Starts a step in the current migration and saves.
    pub fn start_step(&mut self, root: &Path, env: &str, name: &str) -> Result<()> {
        let m = self.current_mut().expect("a migration is open");
        m.steps.push(Step {
            name: name.into(),
            started: now_rfc3339(),
            ended: None,
            outcome: Outcome::Running,
            detail: String::new(),
        });
        self.save(root, env)
    }

    /// Ends the newest step and saves.
    pub fn end_step(
        &mut self,
        root: &Path,
        env: &str,
        outcome: Outcome,
        detail: &str,
    ) -> Result<()> {
        let m = self.current_mut().expect("a migration is open");
        if let Some(step) = m.steps.last_mut() {
            step.ended = Some(now_rfc3339());
            step.outcome = outcome;
            step.detail = detail.to_string();
        }
        self.save(root, env)
    }

    /// Sets the state of the current migration and saves.
    pub fn finish(&mut self, root: &Path, env: &str, state: State) -> Result<()> {
        let m = self.current_mut().expect("a migration is open");
        m.state = state;
        m.ended = Some(now_rfc3339());
        self.save(root, env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_finds_the_last_completed_migration() {
        let root = std::env::temp_dir().join(format!("xtask-journal-{}", std::process::id()));
        let mut j = Journal::default();
        let m = |kind: &str, state| Migration {
            id: format!("{kind}-1"),
            kind: kind.into(),
            env: "local".into(),
            from: "azure".into(),
            to: "vault".into(),
            state,
            started: now_rfc3339(),
            ended: None,
            flag_file: "f".into(),
            before_content: "secrets:\n  provider: azure\n".into(),
            before_sha256: "x".into(),
            after_sha256: None,
            steps: vec![],
        };
        j.migrations.insert(0, m("migrate", State::Completed));
        j.migrations.insert(0, m("rollback", State::Completed));
        j.start_step(&root, "local", "sync").unwrap();
        j.end_step(&root, "local", Outcome::Ok, "3 releases")
            .unwrap();
        let back = Journal::load(&root, "local").unwrap();
        assert_eq!(back.migrations.len(), 2);
        assert!(back.current().unwrap().step_ok("sync"));
        assert_eq!(back.last_completed_migration().unwrap().kind, "migrate");
        assert_eq!(fsutil::mode(&path(&root, "local")).unwrap(), 0o600);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
