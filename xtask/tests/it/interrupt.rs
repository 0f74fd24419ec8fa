//! Interrupted runs: `migrate`, its automatic rollback, and `rollback`,
//! stopped at every step boundary: before the step, after its effect and
//! before its journal record, and after the record was saved. The stop is
//! a real SIGKILL at that point: `XTASK_TEST_STOP_AT=<step>:<when>` (read
//! once when the command starts, `src/secrets/migrate/mod.rs`) has the run
//! `kill -s KILL` itself there, as `kill -9` or a closed laptop would stop
//! it. Then the journal, the flag file and `status` must agree, and the
//! command `status` names must end the job: completed on vault, or rolled
//! back with the committed flag file.
//!
//! Each point starts from the same state, set up without the tool: the
//! committed flag file (azure) and no journal, or (for `rollback`) the
//! flag file and journal a real migration left, with the store on vault.

use std::os::unix::process::ExitStatusExt;

use serde_json::{json, Value};

use crate::migrate::{
    cluster, eso, healthy, journal, journal_bytes, local, on_azure, sync_fails, to_vault, tools,
    xt, FLAG, JOURNAL,
};
use crate::support::{OpenBao, Sandbox};

/// Where in a step a run is stopped.
const WHEN: [&str; 3] = ["before", "after-effect", "after-record"];

/// What `status` tells the user to run after the stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    Nothing,
    MigrateResume,
    RollbackResume,
}

/// The steps of a group and, for each of [`WHEN`], what `status` names.
type Points = &'static [(&'static str, [Named; 3])];

use Named::{MigrateResume as M, Nothing as N, RollbackResume as R};

/// `migrate --to vault` on a healthy cluster.
const MIGRATE: Points = &[
    ("preflight", [N, N, M]),
    ("seed", [M, M, M]),
    ("coverage", [M, M, M]),
    ("flip", [M, M, M]),
    ("sync", [M, M, M]),
    ("wait", [M, M, M]),
    ("record", [M, M, N]),
];

/// `migrate --to vault` whose sync fails: its automatic rollback. Before
/// the restore nothing was put back, so the migration continues; from the
/// restore's write on, only the rollback is finished.
const AUTO_ROLLBACK: Points =
    &[("rollback-restore", [M, R, R]), ("rollback-sync", [R, R, R]), ("rollback-wait", [R, R, R])];

/// `rollback` of a completed migration.
const ROLLBACK: Points = &[
    ("preflight", [N, N, R]),
    ("flip", [R, R, R]),
    ("sync", [R, R, R]),
    ("wait", [R, R, R]),
    ("record", [R, R, N]),
];

/// The committed flag file (local on azure) and the same file on vault.
struct Flags {
    azure: String,
    vault: String,
}

/// How many records of `step` the journal holds, in every entry.
fn records(sb: &Sandbox, step: &str) -> usize {
    if journal_bytes(sb).is_none() {
        return 0;
    }
    journal(sb)["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["steps"].as_array().unwrap().iter())
        .filter(|s| s["name"] == step)
        .count()
}

/// The provider ClusterSecretStore/ameide-vault uses in the cluster.
fn store(sb: &Sandbox) -> &'static str {
    let o = sb.cluster().object("ClusterSecretStore", None, "ameide-vault").unwrap();
    if o["spec"]["provider"]["vault"].is_object() {
        "vault"
    } else {
        assert!(o["spec"]["provider"]["azurekv"].is_object(), "{o}");
        "azure"
    }
}

/// `xtask secrets <args>`, stopped at `point` by SIGKILL (it must get there).
fn stopped(sb: &Sandbox, bao: &OpenBao, args: &[&str], point: &str) {
    let mut all = vec!["secrets"];
    all.extend_from_slice(args);
    let out = sb
        .command(&all)
        .env("VAULT_ADDR", &bao.addr)
        .env("VAULT_TOKEN", &bao.token)
        .env("EXTERNALSECRET_WAIT_SLEEP", "0.1")
        .env("EXTERNALSECRET_WAIT_ATTEMPTS", "15")
        .env("XTASK_TEST_STOP_AT", point)
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{point}: the run was not stopped there ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `status` after the stop: it shows the flag file's provider, finds the
/// flag file where the journal's steps (or the step in flight) put it, and
/// names the command that finishes the job; returns it and every command
/// its advice names (the way to undo a migration too), as args.
fn status_names(
    sb: &Sandbox,
    bao: &OpenBao,
    point: &str,
    flags: &Flags,
) -> (Named, Vec<Vec<String>>) {
    let run = xt(sb, bao, &["secrets", "status"]).ok();
    let out = &run.stdout;
    let flag = sb.read(FLAG);
    let provider = if flag == flags.azure {
        "azure"
    } else {
        assert_eq!(flag, flags.vault, "{point}: the flag file is one of the two");
        "vault"
    };
    assert!(
        out.contains(&format!("  local        {provider}   <-")),
        "{point}: status shows the flag as {provider}:\n{out}"
    );
    assert!(
        !out.contains("changed since the journal's last step"),
        "{point}: the flag file and the journal agree:\n{out}"
    );
    let Some(line) = out.lines().find(|l| l.starts_with("  unfinished")) else {
        return (Named::Nothing, Vec::new());
    };
    let commands: Vec<Vec<String>> = line
        .split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|c| c.strip_prefix("cargo xtask "))
        .map(|c| c.split_whitespace().map(String::from).collect())
        .collect();
    let named = match commands.first().map(|c| c.join(" ")).as_deref() {
        Some("secrets migrate --resume --yes") => Named::MigrateResume,
        Some("secrets rollback --resume --yes") => Named::RollbackResume,
        other => panic!("{point}: status names {other:?}:\n{out}"),
    };
    (named, commands)
}

/// Where things ended: "vault" (the migration completed, the flag file
/// flipped, the store on vault) or "azure" (the committed flag file, the
/// store on azure, nothing unfinished).
fn settled(sb: &Sandbox, point: &str, flags: &Flags) -> &'static str {
    let flag = sb.read(FLAG);
    let newest = journal_bytes(sb).map(|_| journal(sb)["migrations"][0].clone());
    let state = newest
        .as_ref()
        .map(|m| format!("{} {}", m["kind"].as_str().unwrap(), m["state"].as_str().unwrap()));
    if flag == flags.vault {
        assert_eq!(store(sb), "vault", "{point}");
        assert_eq!(state.as_deref(), Some("migrate completed"), "{point}");
        "vault"
    } else {
        assert_eq!(flag, flags.azure, "{point}: the committed flag file, byte for byte");
        assert_eq!(store(sb), "azure", "{point}");
        assert!(
            matches!(
                state.as_deref(),
                None | Some("migrate rolled-back") | Some("rollback completed")
            ),
            "{point}: {state:?}"
        );
        "azure"
    }
}

/// A kind of run to stop, and how each point of it starts.
struct Group<'a> {
    sb: &'a Sandbox,
    bao: &'a OpenBao,
    flags: &'a Flags,
    args: &'a [&'a str],
    setup: &'a dyn Fn(&Sandbox),
}

impl Group<'_> {
    /// Every point of `points`, each followed by the command `status` names.
    fn every(&self, points: Points) {
        for (step, named) in points {
            for (when, want) in WHEN.iter().zip(named) {
                self.stop(step, when, *want, false);
            }
        }
    }

    /// One point: set the state up, stop the run there, check that
    /// everything agrees, run what `status` names (with `undo`, its way to
    /// undo the migration instead), and check where it ends.
    fn stop(&self, step: &str, when: &str, want: Named, undo: bool) {
        let (sb, bao, flags, args) = (self.sb, self.bao, self.flags, self.args);
        let point = format!("{} {step}:{when}", args.join(" "));
        (self.setup)(sb);
        let had = records(sb, step);
        stopped(sb, bao, args, &format!("{step}:{when}"));
        // A step is journaled after it ended, and only then.
        let recorded = usize::from(when == "after-record");
        assert_eq!(records(sb, step), had + recorded, "{point}: {:?}", journal_bytes(sb));
        // The stop comes after the effect: the flag file shows it.
        if when == "after-effect" {
            let want_flag = match (args[0], step) {
                ("migrate", "flip") => Some(&flags.vault),
                ("rollback", "flip") | (_, "rollback-restore") => Some(&flags.azure),
                _ => None,
            };
            if let Some(want_flag) = want_flag {
                assert_eq!(&sb.read(FLAG), want_flag, "{point}");
            }
        }
        let (named, commands) = status_names(sb, bao, &point, flags);
        assert_eq!(named, want, "{point}");
        let follow = if undo {
            assert_eq!(
                commands.get(1).map(|c| c.join(" ")).as_deref(),
                Some("secrets rollback --yes"),
                "{point}: the way to undo it"
            );
            commands.get(1)
        } else {
            commands.first()
        };
        // `helmfile sync` works again for the command that finishes the job.
        sb.scenario(json!({"helmfile": {"sync": [{"exit": 0}]}}));
        if let Some(cmd) = follow {
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            let run = xt(sb, bao, &args);
            assert_eq!(run.code, 0, "{point}: `{}`:\n{}", cmd.join(" "), run.all());
        }
        let expected = match named {
            _ if undo => "azure",
            Named::MigrateResume => "vault",
            Named::RollbackResume => "azure",
            // Nothing happened (migrate), or the rollback was not begun (it
            // left the completed migration) or was finished (rollback).
            Named::Nothing if args[0] == "rollback" && step == "preflight" => "vault",
            Named::Nothing if args[0] == "rollback" => "azure",
            Named::Nothing if step == "preflight" => "azure",
            Named::Nothing => "vault",
        };
        assert_eq!(settled(sb, &point, flags), expected, "{point}");
    }
}

/// A sandbox on azure (committed), its Vault, and both flag files.
fn start() -> Option<(OpenBao, Sandbox, Flags)> {
    if !tools() {
        return None;
    }
    let sb = on_azure();
    let azure = sb.read(FLAG);
    let vault = azure.replace("  provider: azure\n", "  provider: vault\n");
    Some((OpenBao::start(), sb, Flags { azure, vault }))
}

/// The committed flag file, no journal, the store on azure; `syncs` is
/// what `helmfile sync` answers.
fn fresh(sb: &Sandbox, flags: &Flags, syncs: Value) {
    sb.write(FLAG, &flags.azure);
    let _ = std::fs::remove_file(sb.path(JOURNAL));
    sb.scenario(cluster("k3d-ameide", eso(0, healthy()), syncs));
}

const MIGRATE_ARGS: &[&str] = &["migrate", "--to", "vault", "--yes"];

#[test]
fn an_interrupted_migration_ends_consistent_at_every_point() {
    let Some((bao, sb, flags)) = start() else {
        return;
    };
    let setup = |sb: &Sandbox| fresh(sb, &flags, json!([{"exit": 0}]));
    let group = Group { sb: &sb, bao: &bao, flags: &flags, args: MIGRATE_ARGS, setup: &setup };
    group.every(MIGRATE);
}

#[test]
fn an_interrupted_automatic_rollback_ends_consistent_at_every_point() {
    let Some((bao, sb, flags)) = start() else {
        return;
    };
    let setup = |sb: &Sandbox| fresh(sb, &flags, json!([sync_fails(), {"exit": 0}]));
    let group = Group { sb: &sb, bao: &bao, flags: &flags, args: MIGRATE_ARGS, setup: &setup };
    group.every(AUTO_ROLLBACK);
}

/// `status` offers to undo an unfinished migration with `rollback --yes`:
/// that works too, in each state an interrupted migration can be in
/// (before its flip, its flip written but not journaled, flipped, its
/// automatic rollback not yet begun).
#[test]
fn the_undo_status_offers_works_wherever_a_migration_stopped() {
    let Some((bao, sb, flags)) = start() else {
        return;
    };
    let ok = |sb: &Sandbox| fresh(sb, &flags, json!([{"exit": 0}]));
    let failing = |sb: &Sandbox| fresh(sb, &flags, json!([sync_fails(), {"exit": 0}]));
    for (step, when, setup) in [
        ("seed", "after-effect", &ok as &dyn Fn(&Sandbox)),
        ("flip", "after-effect", &ok),
        ("sync", "after-effect", &ok),
        ("rollback-restore", "before", &failing),
    ] {
        let group = Group { sb: &sb, bao: &bao, flags: &flags, args: MIGRATE_ARGS, setup };
        group.stop(step, when, Named::MigrateResume, true);
    }
}

#[test]
fn an_interrupted_rollback_ends_consistent_at_every_point() {
    let Some((bao, sb, flags)) = start() else {
        return;
    };
    // The state a real migration leaves, set up again before each point.
    sb.scenario(local(healthy()));
    to_vault(&sb, &bao).ok();
    let migrated = journal_bytes(&sb).unwrap();
    assert_eq!(sb.read(FLAG), flags.vault);
    let setup = |sb: &Sandbox| {
        sb.write(FLAG, &flags.vault);
        sb.write(JOURNAL, &migrated);
        let mut sc = local(healthy());
        sc["kubectl"]["eso"]["provider"] = json!("vault");
        sb.scenario(sc);
        assert_eq!(store(sb), "vault");
    };
    let group =
        Group { sb: &sb, bao: &bao, flags: &flags, args: &["rollback", "--yes"], setup: &setup };
    group.every(ROLLBACK);
}
