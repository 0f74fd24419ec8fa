//! `secrets migrate`, `rollback` and `status` with fake kubectl and helmfile
//! sync (the fake kubectl runs a small ESO: `tests/fakes/_eso.py`), real
//! OpenBao for seed and coverage, real helmfile for rendering.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{assert_contains, block_on, OpenBao, Run, Sandbox};

const FLAG: &str = "infra/kubernetes/environments/local/platform/15-secrets.values.yaml";
const JOURNAL: &str = ".local/secrets/journal/local.json";
const CRD: &str = "externalsecrets.external-secrets.io";

/// A cluster whose ESO syncs two ExternalSecrets from ClusterSecretStore/
/// ameide-vault (and one from a store of its own), on a clock
/// `clock_offset` seconds off ours; `stores` gives a provider's health.
fn eso(clock_offset: i64, stores: Value) -> Value {
    json!({
        "clock_offset": clock_offset,
        "reconcile_delay": 0.2,
        "provider": "azure",
        "stores": stores,
        "externalsecrets": [
            {"namespace": "ameide", "name": "graph-db-credentials"},
            {"namespace": "ameide", "name": "platform-db-credentials"},
            {"namespace": "team", "name": "elsewhere", "store": {"kind": "SecretStore", "name": "team"}},
        ],
    })
}

fn healthy() -> Value {
    json!({})
}

fn unhealthy(provider: &str) -> Value {
    json!({provider: {"ready": false, "message": format!("could not get secret data from provider: {provider} store is down")}})
}

/// The scenario the fakes replay: a local context with ESO, and what
/// `helmfile sync` answers, call after call.
fn cluster(context: &str, eso: Value, syncs: Value) -> Value {
    json!({"kubectl": {"context": context, "crds": [CRD], "eso": eso,
        "clustersecretstore": {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}},
        "helmfile": {"sync": syncs}})
}

/// The local cluster, on our clock, whose `helmfile sync` succeeds;
/// `stores` as for [`eso`].
fn local(stores: Value) -> Value {
    cluster("k3d-ameide", eso(0, stores), sync_ok())
}

fn sync_ok() -> Value {
    json!([{"exit": 0}])
}

fn sync_fails() -> Value {
    json!({"exit": 1, "stderr": "Error: UPGRADE FAILED: release vault-secret-store failed\n"})
}

/// A sandbox whose local environment starts on Azure Key Vault (committed).
fn on_azure() -> Sandbox {
    let sb = Sandbox::new();
    let text = sb
        .read(FLAG)
        .replace("  provider: vault\n", "  provider: azure\n");
    sb.write(FLAG, &text);
    commit(&sb, "local on azure");
    sb
}

fn commit(sb: &Sandbox, msg: &str) {
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t.invalid",
            "commit",
            "-qam",
            msg,
        ])
        .current_dir(&sb.root)
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// `cargo xtask <args>` with the test's Vault and a short wait.
fn xt(sb: &Sandbox, bao: &OpenBao, args: &[&str]) -> Run {
    sb.xtask_env(
        args,
        &[
            ("VAULT_ADDR", &bao.addr),
            ("VAULT_TOKEN", &bao.token),
            ("EXTERNALSECRET_WAIT_SLEEP", "0.1"),
            ("EXTERNALSECRET_WAIT_ATTEMPTS", "15"),
        ],
    )
}

fn migrate(sb: &Sandbox, bao: &OpenBao, args: &[&str]) -> Run {
    let mut all = vec!["secrets", "migrate"];
    all.extend_from_slice(args);
    xt(sb, bao, &all)
}

/// `secrets migrate --to vault --yes`.
fn to_vault(sb: &Sandbox, bao: &OpenBao) -> Run {
    migrate(sb, bao, &["--to", "vault", "--yes"])
}

fn rollback(sb: &Sandbox, bao: &OpenBao, args: &[&str]) -> Run {
    let mut all = vec!["secrets", "rollback"];
    all.extend_from_slice(args);
    xt(sb, bao, &all)
}

fn journal(sb: &Sandbox) -> Value {
    serde_json::from_str(&sb.read(JOURNAL)).unwrap()
}

/// The journal's exact text (its bytes: it is UTF-8 JSON), if there is one.
fn journal_bytes(sb: &Sandbox) -> Option<String> {
    std::fs::read_to_string(sb.path(JOURNAL)).ok()
}

/// An entry's steps as `name outcome`.
fn steps(entry: &Value) -> Vec<String> {
    entry["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s["name"].as_str().unwrap(),
                s["outcome"].as_str().unwrap()
            )
        })
        .collect()
}

fn argvs(sb: &Sandbox, tool: &str) -> Vec<Vec<String>> {
    sb.calls()
        .into_iter()
        .filter(|c| c.tool == tool)
        .map(|c| c.argv)
        .collect()
}

/// The step labels a run printed, `[1/7] preflight`, in order.
fn labels(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l.strip_prefix('[')?;
            let (n, rest) = rest.split_once("] ")?;
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                .collect();
            Some(format!("[{n}] {name}"))
        })
        .collect()
}

/// The last `cargo xtask ...` command the output names in backticks.
fn named_command(text: &str) -> Vec<String> {
    let start = text
        .rfind("`cargo xtask secrets ")
        .unwrap_or_else(|| panic!("no command named in:\n{text}"));
    let rest = &text[start + 1..];
    let cmd = &rest[..rest.find('`').unwrap()];
    cmd.split_whitespace().skip(2).map(String::from).collect()
}

fn run_named(sb: &Sandbox, bao: &OpenBao, text: &str) -> Run {
    let cmd = named_command(text);
    let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    xt(sb, bao, &args)
}

fn tools() -> bool {
    crate::support::require_tools(&["bao", "kubectl", "helm", "helmfile"])
}

/// The test's Vault and a sandbox on Azure Key Vault, or `None` (skip the
/// test) when the tools are missing.
fn start() -> Option<(OpenBao, Sandbox)> {
    tools().then(|| (OpenBao::start(), on_azure()))
}

fn store_provider(sb: &Sandbox) -> String {
    let out = std::process::Command::new("helmfile")
        .args([
            "--file",
            "infra/kubernetes/helmfiles/15-secrets-certificates.yaml",
            "--environment",
            "local",
            "template",
            "--skip-deps",
        ])
        .current_dir(&sb.root)
        .env("PATH", crate::support::tools_path())
        .env("HELM_CACHE_HOME", sb.home.join("cache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let doc = text
        .split("\n---")
        .find(|d| d.contains("kind: ClusterSecretStore"))
        .unwrap()
        .to_string();
    assert!(doc.contains("name: ameide-vault"));
    if doc.contains("    vault:\n") {
        "vault".into()
    } else if doc.contains("    azurekv:\n") {
        "azure".into()
    } else {
        panic!("{doc}")
    }
}

const MIGRATED: [&str; 7] = [
    "preflight ok",
    "seed ok",
    "coverage ok",
    "flip ok",
    "sync ok",
    "wait ok",
    "record ok",
];

#[test]
fn migrates_to_vault_and_back_when_everything_is_ready() {
    let Some((bao, sb)) = start() else {
        return;
    };
    let before = sb.read(FLAG);
    assert_eq!(store_provider(&sb), "azure");
    sb.scenario(local(healthy()));
    let run = to_vault(&sb, &bao).ok();
    assert_contains(&run.stdout, "migrated local to vault");

    let after = sb.read(FLAG);
    assert_eq!(
        after,
        before.replace("  provider: azure\n", "  provider: vault\n"),
        "only the value's bytes change"
    );
    assert_eq!(
        store_provider(&sb),
        "vault",
        "real helmfile renders the new provider"
    );

    let j = journal(&sb);
    let m = &j["migrations"][0];
    assert_eq!(
        (
            m["kind"].as_str(),
            m["from"].as_str(),
            m["to"].as_str(),
            m["state"].as_str()
        ),
        (
            Some("migrate"),
            Some("azure"),
            Some("vault"),
            Some("completed")
        )
    );
    assert_eq!(steps(m), MIGRATED);
    assert_eq!(m["before_content"].as_str().unwrap(), before);
    // The seed step lets ESO in too (eso_access.rs tests the details).
    let seeded = m["steps"][1]["detail"].as_str().unwrap();
    assert!(
        seeded.contains("ESO's access: ensured auth kubernetes/"),
        "{seeded}"
    );
    assert!(bao
        .bao(&["read", "auth/kubernetes/role/external-secrets"])
        .status
        .success());

    assert_eq!(
        argvs(&sb, "helmfile"),
        [[
            "--file",
            &sb.path("infra/kubernetes/helmfiles/15-secrets-certificates.yaml")
                .display()
                .to_string(),
            "--environment",
            "local",
            "sync"
        ]]
    );
    let annotated: Vec<String> = argvs(&sb, "kubectl")
        .into_iter()
        .filter(|a| a[0] == "annotate")
        .map(|a| a[2].clone())
        .collect();
    assert_eq!(
        annotated,
        ["graph-db-credentials", "platform-db-credentials"],
        "only ExternalSecrets on ameide-vault are forced"
    );
    // The seed really happened.
    let client = bao.client();
    let meta = crate::support::block_on(vaultrs::kv2::read_metadata(
        &client,
        "secret",
        "graph-db-url",
    ))
    .unwrap();
    assert_eq!(meta.current_version, 1);

    // Undo it: the flag file comes back byte for byte.
    let run = rollback(&sb, &bao, &["--yes"]).ok();
    assert_contains(&run.stdout, "rolled back local to azure");
    assert_eq!(sb.read(FLAG), before);
    let j = journal(&sb);
    assert_eq!(j["migrations"][0]["kind"], "rollback");
    assert_eq!(j["migrations"][0]["state"], "completed");
    assert_eq!(
        steps(&j["migrations"][0]),
        ["preflight ok", "flip ok", "sync ok", "wait ok", "record ok"]
    );
    assert_eq!(j["migrations"][0]["undoes"], j["migrations"][1]["id"]);
    assert_eq!(j["migrations"][1]["state"], "rolled-back");
    let run = rollback(&sb, &bao, &["--yes"]).code(1);
    assert_contains(&run.stderr, "no migration of local in the journal to undo");
}

/// The cluster's clock 30 s behind ours, then 30 s ahead: freshness is
/// judged from the cluster's own values, so both migrate.
#[test]
fn a_migration_succeeds_whatever_the_cluster_clock_says() {
    if !tools() {
        return;
    }
    let bao = OpenBao::start();
    for offset in [-30, 30] {
        let sb = on_azure();
        sb.scenario(cluster("k3d-ameide", eso(offset, healthy()), sync_ok()));
        let run = to_vault(&sb, &bao).ok();
        assert!(
            run.stdout.contains("migrated local to vault"),
            "{offset}: {}",
            run.stdout
        );
        assert_eq!(steps(&journal(&sb)["migrations"][0]), MIGRATED, "{offset}");
    }
}

/// An ExternalSecret that is Ready but that ESO never refreshes after the
/// force (a stuck controller) must not count as synced.
#[test]
fn ready_but_never_refreshed_is_not_done() {
    let Some((bao, sb)) = start() else {
        return;
    };
    let before = sb.read(FLAG);
    let mut cluster_eso = eso(0, healthy());
    cluster_eso["externalsecrets"]
        .as_array_mut()
        .unwrap()
        .push(json!({"namespace": "ameide", "name": "frozen", "frozen": true}));
    sb.scenario(cluster("k3d-ameide", cluster_eso, sync_ok()));
    let run = to_vault(&sb, &bao).code(1);
    assert_contains(
        &run.stderr,
        "ameide/frozen: Ready, but not refreshed since the force-sync",
    );
    let m = &journal(&sb)["migrations"][0];
    assert_eq!(steps(m)[5], "wait failed");
    assert_eq!(sb.read(FLAG), before);
}

/// One failure case: how the cluster misbehaves, how to fix it, and what
/// the journal must say afterwards.
struct Case {
    name: &'static str,
    /// Sets the sandbox up to fail (scenario, files).
    break_it: fn(&Sandbox),
    /// Puts it right, before the command the tool named.
    fix_it: fn(&Sandbox),
    steps: &'static [&'static str],
    state: &'static str,
    /// What the named command leaves in the flag file: the target's value.
    finishes_on: &'static str,
}

fn tmp_path(sb: &Sandbox) -> std::path::PathBuf {
    sb.path(&format!("{FLAG}.xtask-tmp"))
}

const CASES: &[Case] = &[
    Case {
        name: "preflight",
        break_it: |sb| sb.scenario(cluster("aks-prod", eso(0, healthy()), sync_ok())),
        fix_it: |sb| sb.scenario(local(healthy())),
        steps: &[],
        state: "",
        finishes_on: "vault",
    },
    Case {
        name: "seed",
        break_it: |sb| {
            sb.scenario(local(healthy()));
            sb.write(".local/secrets/overrides.json", "{not json");
        },
        fix_it: |sb| std::fs::remove_file(sb.path(".local/secrets/overrides.json")).unwrap(),
        steps: &["preflight ok", "seed failed"],
        state: "failed",
        finishes_on: "vault",
    },
    Case {
        name: "coverage",
        break_it: |sb| {
            sb.scenario(local(healthy()));
            let path = "scripts/azure/default-local-keyvault-secrets.json";
            let mut fixtures: serde_json::Map<String, Value> =
                serde_json::from_str(&sb.read(path)).unwrap();
            fixtures.remove("platform-db-password").unwrap();
            sb.write(path, &serde_json::to_string_pretty(&fixtures).unwrap());
        },
        fix_it: |sb| {
            let out = std::process::Command::new("git")
                .args(["checkout", "--", "scripts"])
                .current_dir(&sb.root)
                .output()
                .unwrap();
            assert!(out.status.success());
        },
        steps: &["preflight ok", "seed ok", "coverage failed"],
        state: "failed",
        finishes_on: "vault",
    },
    Case {
        name: "flip",
        break_it: |sb| {
            sb.scenario(local(healthy()));
            std::fs::create_dir_all(tmp_path(sb).join("in-the-way")).unwrap();
        },
        fix_it: |sb| std::fs::remove_dir_all(tmp_path(sb)).unwrap(),
        steps: &["preflight ok", "seed ok", "coverage ok", "flip failed"],
        state: "failed",
        finishes_on: "vault",
    },
    Case {
        name: "sync",
        break_it: |sb| {
            sb.scenario(cluster(
                "k3d-ameide",
                eso(0, healthy()),
                json!([sync_fails(), {"exit": 0}]),
            ));
        },
        fix_it: |sb| sb.scenario(local(healthy())),
        steps: &[
            "preflight ok",
            "seed ok",
            "coverage ok",
            "flip ok",
            "sync failed",
            "rollback-restore ok",
            "rollback-sync ok",
            "rollback-wait ok",
        ],
        state: "rolled-back",
        finishes_on: "vault",
    },
    Case {
        name: "wait",
        break_it: |sb| {
            sb.scenario(local(unhealthy("vault")));
        },
        fix_it: |sb| sb.scenario(local(healthy())),
        steps: &[
            "preflight ok",
            "seed ok",
            "coverage ok",
            "flip ok",
            "sync ok",
            "wait failed",
            "rollback-restore ok",
            "rollback-sync ok",
            "rollback-wait ok",
        ],
        state: "rolled-back",
        finishes_on: "vault",
    },
    Case {
        name: "the automatic rollback's sync",
        break_it: |sb| {
            sb.scenario(cluster(
                "k3d-ameide",
                eso(0, healthy()),
                json!([sync_fails()]),
            ));
        },
        fix_it: |sb| sb.scenario(local(healthy())),
        steps: &[
            "preflight ok",
            "seed ok",
            "coverage ok",
            "flip ok",
            "sync failed",
            "rollback-restore ok",
            "rollback-sync failed",
        ],
        state: "rollback-failed",
        finishes_on: "azure",
    },
    Case {
        name: "the automatic rollback's wait",
        break_it: |sb| {
            let both = json!({"vault": {"ready": false}, "azure": {"ready": false}});
            sb.scenario(local(both));
        },
        fix_it: |sb| sb.scenario(local(healthy())),
        steps: &[
            "preflight ok",
            "seed ok",
            "coverage ok",
            "flip ok",
            "sync ok",
            "wait failed",
            "rollback-restore ok",
            "rollback-sync ok",
            "rollback-wait failed",
        ],
        state: "rollback-failed",
        finishes_on: "azure",
    },
];

/// For every step at which a migration can fail: the journal says exactly
/// what happened, the flag file is byte for byte the committed one, and
/// the command the tool names finishes the job.
fn fail_and_finish(name: &str) {
    if !tools() {
        return;
    }
    let bao = OpenBao::start();
    let case = CASES.iter().find(|c| c.name == name).unwrap();
    {
        let sb = on_azure();
        let before = sb.read(FLAG);
        (case.break_it)(&sb);
        let run = to_vault(&sb, &bao).code(1);
        if case.steps.is_empty() {
            // Stopped at preflight: nothing journaled, nothing changed; the
            // same command works once the cause is fixed.
            assert_contains(&run.stderr, "Nothing in the cluster changed");
            assert_eq!(journal_bytes(&sb), None);
            assert_eq!(sb.read(FLAG), before);
            (case.fix_it)(&sb);
            to_vault(&sb, &bao).ok();
            assert_eq!(steps(&journal(&sb)["migrations"][0]), MIGRATED);
            return;
        }
        let m = &journal(&sb)["migrations"][0];
        assert_eq!(steps(m), case.steps, "{}:\n{}", case.name, run.stderr);
        assert_eq!(m["state"], case.state, "{}", case.name);
        assert_eq!(
            sb.read(FLAG),
            before,
            "{}: the committed flag, byte for byte",
            case.name
        );
        if case.state == "rollback-failed" {
            assert_eq!(
                named_command(&run.stderr),
                ["secrets", "rollback", "--resume", "--yes"],
                "{}",
                case.name
            );
            let status = xt(&sb, &bao, &["secrets", "status"]).ok();
            assert!(
                status
                    .stdout
                    .contains("migrate azure -> vault: rollback-failed")
                    && status
                        .stdout
                        .contains("finish it with `cargo xtask secrets rollback --resume --yes`"),
                "{}: {}",
                case.name,
                status.stdout
            );
        }
        (case.fix_it)(&sb);
        let done = run_named(&sb, &bao, &run.stderr);
        assert_eq!(done.code, 0, "{}: {}", case.name, done.all());
        let target = before.replace(
            "  provider: azure\n",
            &format!("  provider: {}\n", case.finishes_on),
        );
        assert_eq!(sb.read(FLAG), target, "{}", case.name);
        let j = journal(&sb);
        let newest = &j["migrations"][0];
        if case.state == "rollback-failed" {
            // The same entry, finished: its steps, then the recovery's.
            let mut want: Vec<String> = case.steps.iter().map(|s| s.to_string()).collect();
            want.extend(["preflight ok", "rollback-sync ok", "rollback-wait ok"].map(String::from));
            assert_eq!(steps(newest), want, "{}", case.name);
            assert_eq!(newest["state"], "rolled-back", "{}", case.name);
            let run = xt(&sb, &bao, &["secrets", "status"]).ok();
            assert!(!run.stdout.contains("finish it with"), "{}", run.stdout);
        } else {
            assert_eq!(steps(newest), MIGRATED, "{}", case.name);
            assert_eq!(
                j["migrations"][1]["state"], case.state,
                "{}: history kept",
                case.name
            );
        }
    }
}

#[test]
fn a_refused_preflight_journals_nothing_and_the_same_command_finishes() {
    fail_and_finish("preflight");
}

#[test]
fn a_failed_seed_leaves_a_true_journal_and_a_command_that_finishes() {
    fail_and_finish("seed");
}

#[test]
fn a_failed_coverage_gate_leaves_a_true_journal_and_a_command_that_finishes() {
    fail_and_finish("coverage");
}

#[test]
fn a_failed_flip_leaves_a_true_journal_and_a_command_that_finishes() {
    fail_and_finish("flip");
}

#[test]
fn a_failed_sync_rolls_back_and_names_the_command_that_finishes() {
    fail_and_finish("sync");
}

#[test]
fn a_failed_wait_rolls_back_and_names_the_command_that_finishes() {
    fail_and_finish("wait");
}

#[test]
fn a_failed_automatic_rollback_sync_is_finished_by_rollback_resume() {
    fail_and_finish("the automatic rollback's sync");
}

#[test]
fn a_failed_automatic_rollback_wait_is_finished_by_rollback_resume() {
    fail_and_finish("the automatic rollback's wait");
}

/// A refused rollback (preflight) changes nothing, and the journal's
/// migration can still be undone afterwards.
#[test]
fn a_refused_rollback_records_nothing() {
    let Some((bao, sb)) = start() else {
        return;
    };
    let before = sb.read(FLAG);
    sb.scenario(local(healthy()));
    to_vault(&sb, &bao).ok();
    let flipped = sb.read(FLAG);
    let journal_before = journal_bytes(&sb);

    sb.scenario(cluster("aks-prod", eso(0, healthy()), sync_ok()));
    for args in [&["--yes"][..], &["--to", "azure", "--yes"]] {
        let run = rollback(&sb, &bao, args).code(1);
        assert!(
            run.stderr.contains("refusing kube context \"aks-prod\"")
                && run.stderr.contains("Nothing in the cluster changed"),
            "{}",
            run.stderr
        );
        assert_eq!(
            journal_bytes(&sb),
            journal_before,
            "the journal is untouched"
        );
        assert_eq!(sb.read(FLAG), flipped);
    }

    sb.scenario(local(healthy()));
    rollback(&sb, &bao, &["--yes"]).ok();
    assert_eq!(sb.read(FLAG), before);
    let j = journal(&sb);
    assert_eq!(j["migrations"][1]["state"], "rolled-back");
}

/// A rollback that fails after its flip: the journal says rollback-failed,
/// the flag is the committed one, and `rollback --resume` finishes it.
#[test]
fn a_failed_rollback_is_finished_by_the_command_it_names() {
    let Some((bao, sb)) = start() else {
        return;
    };
    let before = sb.read(FLAG);
    sb.scenario(local(healthy()));
    to_vault(&sb, &bao).ok();

    // Its flip fails (something in the way of the temp file): nothing changed.
    let flipped = sb.read(FLAG);
    std::fs::create_dir_all(tmp_path(&sb).join("in-the-way")).unwrap();
    let run = rollback(&sb, &bao, &["--yes"]).code(1);
    let j = journal(&sb);
    assert_eq!(steps(&j["migrations"][0]), ["preflight ok", "flip failed"]);
    assert_eq!(j["migrations"][0]["state"], "failed");
    assert_eq!(j["migrations"][1]["state"], "completed");
    assert_eq!(
        sb.read(FLAG),
        flipped,
        "the migration's target, byte for byte"
    );
    assert_eq!(
        named_command(&run.stderr),
        ["secrets", "rollback", "--to", "azure", "--yes"]
    );
    std::fs::remove_dir_all(tmp_path(&sb)).unwrap();

    // Its sync fails.
    sb.scenario(cluster(
        "k3d-ameide",
        eso(0, healthy()),
        json!([sync_fails()]),
    ));
    let run = rollback(&sb, &bao, &["--yes"]).code(1);
    let j = journal(&sb);
    assert_eq!(
        steps(&j["migrations"][0]),
        ["preflight ok", "flip ok", "sync failed"]
    );
    assert_eq!(j["migrations"][0]["state"], "rollback-failed");
    assert_eq!(j["migrations"][2]["state"], "completed", "not undone yet");
    assert_eq!(sb.read(FLAG), before);
    assert_eq!(
        named_command(&run.stderr),
        ["secrets", "rollback", "--resume", "--yes"]
    );
    // Then its wait fails (Azure Key Vault is down): still rollback-failed.
    sb.scenario(local(unhealthy("azure")));
    let run = run_named(&sb, &bao, &run.stderr).code(1);
    let j = journal(&sb);
    assert_eq!(j["migrations"][0]["state"], "rollback-failed");
    assert!(steps(&j["migrations"][0]).ends_with(&["wait failed".to_string()]));
    // Fixed: the named command finishes the job.
    sb.scenario(local(healthy()));
    let out = run_named(&sb, &bao, &run.stderr).ok();
    assert_contains(&out.stdout, "[2/5] flip: done earlier");
    let j = journal(&sb);
    assert_eq!(j["migrations"][0]["state"], "completed");
    assert_eq!(j["migrations"][1]["state"], "failed", "the refused flip");
    assert_eq!(j["migrations"][2]["state"], "rolled-back");
    assert_eq!(sb.read(FLAG), before);
}

/// After a failed automatic rollback the flag already says azure: `rollback
/// --to azure` still syncs and waits, and closes the migration.
#[test]
fn rollback_to_the_restored_provider_still_syncs() {
    let Some((bao, sb)) = start() else {
        return;
    };
    let before = sb.read(FLAG);
    sb.scenario(cluster(
        "k3d-ameide",
        eso(0, healthy()),
        json!([sync_fails()]),
    ));
    to_vault(&sb, &bao).code(1);
    assert_eq!(journal(&sb)["migrations"][0]["state"], "rollback-failed");

    sb.scenario(local(healthy()));
    let synced = argvs(&sb, "helmfile").len();
    let run = rollback(&sb, &bao, &["--to", "azure", "--yes"]).ok();
    assert!(
        !run.stdout.contains("nothing to roll back"),
        "{}",
        run.stdout
    );
    assert_eq!(argvs(&sb, "helmfile").len(), synced + 1, "synced layer 15");
    let j = journal(&sb);
    assert_eq!(
        steps(&j["migrations"][0]),
        ["preflight ok", "sync ok", "wait ok", "record ok"]
    );
    assert_eq!(j["migrations"][1]["state"], "rolled-back");
    assert_eq!(sb.read(FLAG), before);
    // Now settled: nothing to roll back.
    let run = rollback(&sb, &bao, &["--to", "azure", "--yes"]).ok();
    assert_contains(&run.stdout, "nothing to roll back");
}

/// `--dry-run` prints the steps the real run then executes, for migrate,
/// rollback and resume (and the automatic rollback's).
#[test]
fn dry_run_prints_the_plan_the_real_run_executes() {
    let Some((bao, sb)) = start() else {
        return;
    };
    sb.scenario(local(unhealthy("vault")));
    let dry = migrate(&sb, &bao, &["--to", "vault", "--dry-run"]).ok();
    assert!(sb.calls().is_empty(), "a dry run calls nothing");
    let real = to_vault(&sb, &bao).code(1);
    assert_eq!(
        labels(&dry.stdout),
        [
            "[1/7] preflight",
            "[2/7] seed",
            "[3/7] coverage",
            "[4/7] flip",
            "[5/7] sync",
            "[6/7] wait",
            "[7/7] record",
            "[r1/3] rollback-restore",
            "[r2/3] rollback-sync",
            "[r3/3] rollback-wait"
        ]
    );
    let mut want = labels(&dry.stdout);
    want.remove(6); // the wait failed: no record
    assert_eq!(labels(&real.stdout), want, "{}", real.stdout);

    // --no-rollback leaves an unfinished migration; resume it.
    sb.scenario(local(unhealthy("vault")));
    let run = migrate(&sb, &bao, &["--to", "vault", "--yes", "--no-rollback"]).code(1);
    assert_eq!(journal(&sb)["migrations"][0]["state"], "in-progress");
    assert!(
        run.stderr.contains(
            "finish with `cargo xtask secrets migrate --resume --yes` (or undo it with `cargo xtask secrets rollback --yes`)"
        ),
        "{}",
        run.stderr
    );
    assert!(
        sb.read(FLAG).contains("  provider: vault\n"),
        "left flipped"
    );
    sb.scenario(local(healthy()));
    let dry = migrate(&sb, &bao, &["--resume", "--dry-run"]).ok();
    let real = migrate(&sb, &bao, &["--resume", "--yes"]).ok();
    assert_eq!(
        labels(&dry.stdout)[..7],
        labels(&real.stdout)[..],
        "{}\n{}",
        dry.stdout,
        real.stdout
    );
    assert_contains(&dry.stdout, "[4/7] flip: done earlier");

    // A rollback's own plan: five steps, no seed or coverage gate.
    let dry = rollback(&sb, &bao, &["--dry-run"]).ok();
    assert!(
        !dry.stdout.contains("seed") && !dry.stdout.contains("reachable"),
        "{}",
        dry.stdout
    );
    let real = rollback(&sb, &bao, &["--yes"]).ok();
    assert_eq!(
        labels(&dry.stdout),
        [
            "[1/5] preflight",
            "[2/5] flip",
            "[3/5] sync",
            "[4/5] wait",
            "[5/5] record"
        ]
    );
    assert_eq!(labels(&real.stdout), labels(&dry.stdout));
}

#[test]
fn an_interrupted_migration_resumes_and_a_second_one_is_refused() {
    let Some((bao, sb)) = start() else {
        return;
    };
    sb.scenario(cluster(
        "k3d-ameide",
        eso(0, healthy()),
        json!([{"sleep": 30}]),
    ));
    let mut first = sb
        .command(&["secrets", "migrate", "--to", "vault", "--yes"])
        .env("VAULT_ADDR", &bao.addr)
        .env("VAULT_TOKEN", &bao.token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let flipped = std::fs::read_to_string(sb.path(JOURNAL))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|j| {
                j["migrations"][0]["steps"]
                    .as_array()
                    .is_some_and(|s| s.last().is_some_and(|l| l["name"] == "flip"))
            });
        if flipped && sb.fake_dir.join("helmfile.pid").exists() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the migration never reached sync"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // While it runs, a second migration is refused and told who holds the lock.
    let run = to_vault(&sb, &bao).code(1);
    assert!(
        run.stderr.contains(&format!(
            "another migration of local is running (pid {}",
            first.id()
        )),
        "{}",
        run.stderr
    );

    // Kill it mid-sync (and its helmfile), as a closed laptop would.
    first.kill().unwrap();
    first.wait().unwrap();
    let pid = std::fs::read_to_string(sb.fake_dir.join("helmfile.pid")).unwrap();
    let _ = std::process::Command::new("kill")
        .arg("-9")
        .arg(pid.trim())
        .status();
    assert!(
        sb.read(FLAG).contains("  provider: vault\n"),
        "interrupted after the flip"
    );
    let m = &journal(&sb)["migrations"][0];
    assert_eq!(m["state"], "in-progress");
    assert_eq!(steps(m), MIGRATED[..4], "only finished steps are journaled");

    sb.scenario(local(healthy()));
    let run = to_vault(&sb, &bao).code(1);
    assert_contains(&run.stderr, "migrate --resume --yes");
    // An edit the tool did not make: resume refuses and journals nothing.
    let flipped = sb.read(FLAG);
    let journal_before = journal_bytes(&sb);
    sb.write(FLAG, &format!("{flipped}# edited by hand\n"));
    let run = migrate(&sb, &bao, &["--resume", "--yes"]).code(1);
    assert_contains(&run.stderr, "changed since the journal's last step");
    assert_eq!(journal_bytes(&sb), journal_before);
    sb.write(FLAG, &flipped);
    let run = migrate(&sb, &bao, &["--resume", "--yes"]).ok();
    assert_contains(&run.stdout, "[4/7] flip: done earlier");
    assert!(run.stdout.contains("[5/7] sync ... ok"), "{}", run.stdout);
    let m = &journal(&sb)["migrations"][0];
    assert_eq!(m["state"], "completed");
}

#[test]
fn dry_run_changes_nothing_and_preflight_refuses_unsafe_states() {
    let Some((bao, sb)) = start() else {
        return;
    };
    let before = sb.read(FLAG);
    sb.scenario(local(healthy()));
    let run = migrate(&sb, &bao, &["--to", "vault", "--dry-run"]).ok();
    assert_contains(&run.stdout, "-  provider: azure\n");
    assert_contains(&run.stdout, "+  provider: vault\n");
    assert!(run.stdout.contains("helmfile --file infra/kubernetes/helmfiles/15-secrets-certificates.yaml --environment local sync"));
    assert_eq!(sb.read(FLAG), before);
    assert!(!sb.path(JOURNAL).exists());
    assert!(sb.calls().is_empty(), "a dry run calls nothing");

    let run = migrate(&sb, &bao, &["--to", "vault"]).code(2);
    assert!(run.stderr.contains("Pass --yes"), "{}", run.stderr);

    sb.scenario(cluster("aks-prod", eso(0, healthy()), sync_ok()));
    let run = to_vault(&sb, &bao).code(1);
    assert!(
        run.stderr.contains("refusing kube context \"aks-prod\"")
            && run.stderr.contains("Nothing in the cluster changed"),
        "{}",
        run.stderr
    );
    assert!(
        !sb.path(JOURNAL).exists(),
        "a refused preflight journals nothing"
    );

    sb.scenario(json!({"kubectl": {"context": "kind-dev", "crds": []}}));
    let run = to_vault(&sb, &bao).code(1);
    assert_contains(&run.stderr, "External Secrets Operator is not installed");

    sb.scenario(cluster("kind-dev", eso(0, healthy()), sync_ok()));
    sb.write(FLAG, &format!("{before}# my local tweak\n"));
    let run = to_vault(&sb, &bao).code(1);
    assert_contains(&run.stderr, "has an uncommitted change");
    assert_eq!(sb.read(FLAG), format!("{before}# my local tweak\n"));
    assert!(argvs(&sb, "helmfile").is_empty(), "nothing synced");
    assert!(
        !sb.path(JOURNAL).exists(),
        "a refused preflight journals nothing"
    );
}

#[test]
fn status_shows_flags_migration_and_config_sources() {
    let Some((bao, sb)) = start() else {
        return;
    };
    sb.scenario(local(unhealthy("azure")));
    let run = sb.xtask_env(&["secrets", "status"], &bao.env()).ok();
    let out = &run.stdout;
    assert!(out.contains("  local        azure   <-"), "{out}");
    assert!(out.contains("  staging      azure"), "{out}");
    assert!(out.contains("unsealed"), "{out}");
    assert!(
        out.contains("external secrets on ameide-vault: 0/2 Ready"),
        "{out}"
    );
    assert!(
        out.contains("ameide/graph-db-credentials: SecretSyncedError"),
        "{out}"
    );
    assert!(
        out.contains("vault.token        (set, not shown)") && out.contains("env VAULT_TOKEN"),
        "{out}"
    );
    assert!(
        !out.contains(&bao.token),
        "the token is shown by source only"
    );
    let run = sb
        .xtask_env(&["secrets", "status", "--output", "json"], &bao.env())
        .ok();
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["vault"]["sealed"], false);
    assert_eq!(v["kube_context_local"], true);
}

#[test]
fn doctor_reports_each_finding_with_its_fix() {
    if !tools() {
        return;
    }
    let bao = OpenBao::start();
    let sb = Sandbox::new();
    let store = |ready: bool| {
        json!({"status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
            "reason": if ready { "Valid" } else { "InvalidProviderConfig" }, "message": if ready { "store validated" } else { "unable to log in to auth method" }}]}})
    };
    sb.scenario(json!({"kubectl": {"context": "k3d-ameide", "crds": ["externalsecrets.external-secrets.io"], "clustersecretstore": store(true)}}));
    let env = bao.env();
    // An empty Vault is a finding of its own (eso_access.rs): seed it first.
    sb.xtask_env(&["secrets", "seed"], &env).ok();
    let run = sb.xtask_env(&["secrets", "doctor"], &env).ok();
    for line in [
        "ok    cluster    context k3d-ameide is local",
        "ok    eso        ClusterSecretStore/ameide-vault Ready",
        "reachable, unsealed, token valid",
        "all checks passed",
    ] {
        assert!(run.stdout.contains(line), "{line}:\n{}", run.stdout);
    }
    sb.scenario(json!({"kubectl": {"context": "k3d-ameide", "crds": [], "clustersecretstore": store(false)}}));
    let run = sb.xtask_env(&["secrets", "doctor"], &env).code(1);
    assert_contains(
        &run.stdout,
        "FAIL  eso        External Secrets Operator is not installed",
    );
    assert_contains(
        &run.stdout,
        "not Ready: InvalidProviderConfig: unable to log in to auth method",
    );
    assert!(run.stderr.contains("2 checks failed"), "{}", run.stderr);
}

#[test]
fn a_canary_never_reaches_the_journal_output_or_any_child() {
    if !tools() {
        return;
    }
    let canary = "CANARY-migrate-5d6e7f";
    let bao = OpenBao::start();
    let sb = on_azure();
    sb.write(
        ".local/secrets/overrides.json",
        &format!("{{\"graph-db-password\": \"{canary}\"}}"),
    );
    // The first run rolls back (Vault's store is not Ready), the second completes.
    sb.scenario(local(unhealthy("vault")));
    let mut outputs = vec![to_vault(&sb, &bao).code(1).all()];
    sb.scenario(local(healthy()));
    outputs.push(to_vault(&sb, &bao).ok().all());
    // The canary did go through the pipeline: Vault holds it, read back
    // independently.
    let held: std::collections::HashMap<String, String> = block_on(vaultrs::kv2::read(
        &bao.client(),
        "secret",
        "graph-db-password",
    ))
    .expect("graph-db-password is in Vault");
    assert!(
        held.get("value").map(String::as_str) == Some(canary),
        "Vault holds the override for graph-db-password"
    );
    let env = bao.env();
    for args in [
        &["secrets", "status"][..],
        &["secrets", "status", "--output", "json"],
        &["secrets", "doctor"],
    ] {
        outputs.push(sb.xtask_env(args, &env).all());
    }
    let journal = sb.read(JOURNAL);
    assert!(
        journal.contains("rolled-back") && journal.contains("completed"),
        "both runs are journaled"
    );
    for text in outputs.iter().chain(std::iter::once(&journal)) {
        assert!(!text.contains(canary), "canary leaked:\n{text}");
        assert!(!text.contains(&bao.token), "token leaked:\n{text}");
    }
    for call in sb.calls() {
        assert!(
            !call.argv.join(" ").contains(canary) && !call.stdin.contains(canary),
            "{} argv/stdin: {:?}",
            call.tool,
            call.argv
        );
    }
    let journal_path = sb.path(JOURNAL);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(journal_path).unwrap().permissions(),
    ) & 0o777;
    assert_eq!(mode, 0o600, "the journal is private");
}

/// A hung `helmfile sync` is stopped at the configured deadline, and the
/// migration rolls back instead of hanging.
#[test]
fn a_hung_sync_is_stopped_at_its_deadline() {
    let Some((bao, sb)) = start() else {
        return;
    };
    let before = sb.read(FLAG);
    sb.write(".local/secrets.toml", "[helmfile]\nsync_timeout_secs = 2\n");
    sb.scenario(cluster(
        "k3d-ameide",
        eso(0, healthy()),
        json!([{"sleep": 60}, {"exit": 0}]),
    ));
    let t = Instant::now();
    let run = to_vault(&sb, &bao).code(1);
    assert!(t.elapsed() < Duration::from_secs(50), "{:?}", t.elapsed());
    assert_contains(&run.stderr, "did not finish within 2 s");
    assert_contains(&run.stderr, "helmfile.sync_timeout_secs");
    let m = &journal(&sb)["migrations"][0];
    assert_eq!(m["state"], "rolled-back");
    assert_eq!(steps(m)[4], "sync failed");
    assert_eq!(sb.read(FLAG), before);
}
