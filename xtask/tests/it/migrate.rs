//! `secrets migrate`, `rollback` and `status` with fake kubectl and helmfile
//! sync, real OpenBao for seed and coverage, real helmfile for rendering.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{OpenBao, Run, Sandbox};

const FLAG: &str = "infra/kubernetes/environments/local/platform/15-secrets.values.yaml";

fn es(name: &str, ready: bool, reason: &str, message: &str) -> Value {
    json!({
        "metadata": {"namespace": "ameide", "name": name},
        "spec": {"secretStoreRef": {"kind": "ClusterSecretStore", "name": "ameide-vault"}},
        "status": {
            "refreshTime": "2099-01-01T00:00:00Z",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "reason": reason, "message": message}]
        }
    })
}

fn ready() -> Value {
    json!({"apiVersion": "v1", "items": [
        es("graph-db-credentials", true, "SecretSynced", "secret synced"),
        es("platform-db-credentials", true, "SecretSynced", "secret synced"),
        {"metadata": {"namespace": "team", "name": "elsewhere"}, "spec": {"secretStoreRef": {"kind": "SecretStore", "name": "team"}}},
    ]})
}

fn stuck() -> Value {
    json!({"apiVersion": "v1", "items": [
        es("graph-db-credentials", false, "SecretSyncedError", "could not get secret data from provider"),
        es("platform-db-credentials", true, "SecretSynced", "secret synced"),
    ]})
}

/// A sandbox whose local environment starts on Azure Key Vault (committed).
fn on_azure() -> Sandbox {
    let sb = Sandbox::new();
    let text = sb
        .read(FLAG)
        .replace("  provider: vault\n", "  provider: azure\n");
    sb.write(FLAG, &text);
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t.invalid",
            "commit",
            "-qam",
            "local on azure",
        ])
        .current_dir(&sb.root)
        .output()
        .unwrap();
    assert!(out.status.success());
    sb
}

fn migrate(sb: &Sandbox, bao: &OpenBao, args: &[&str]) -> Run {
    let mut all = vec!["secrets", "migrate"];
    all.extend_from_slice(args);
    sb.xtask_env(
        &all,
        &[
            ("VAULT_ADDR", &bao.addr),
            ("VAULT_TOKEN", &bao.token),
            ("EXTERNALSECRET_WAIT_SLEEP", "0"),
        ],
    )
}

fn journal(sb: &Sandbox) -> Value {
    serde_json::from_str(&sb.read(".local/secrets/journal/local.json")).unwrap()
}

fn argvs(sb: &Sandbox, tool: &str) -> Vec<Vec<String>> {
    sb.calls()
        .into_iter()
        .filter(|c| c.tool == tool)
        .map(|c| c.argv)
        .collect()
}

fn tools() -> bool {
    crate::support::require_tools(&["bao", "helm", "helmfile"])
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

#[test]
fn migrates_to_vault_when_everything_is_ready() {
    if !tools() {
        return;
    }
    let bao = OpenBao::start();
    let sb = on_azure();
    let before = sb.read(FLAG);
    assert_eq!(store_provider(&sb), "azure");
    sb.scenario(json!({"kubectl": {"context": "k3d-ameide", "crds": ["externalsecrets.external-secrets.io"], "externalsecrets": [ready()]}}));
    let run = migrate(&sb, &bao, &["--to", "vault", "--yes"]).ok();
    assert!(
        run.stdout.contains("migrated local to vault"),
        "{}",
        run.stdout
    );

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
    let steps: Vec<(&str, &str)> = m["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            ("preflight", "ok"),
            ("seed", "ok"),
            ("coverage", "ok"),
            ("flip", "ok"),
            ("sync", "ok"),
            ("wait", "ok"),
            ("record", "ok")
        ]
    );
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
    sb.scenario(json!({"kubectl": {"context": "k3d-ameide", "crds": ["externalsecrets.external-secrets.io"], "externalsecrets": [ready()]}}));
    let run = sb
        .xtask_env(
            &["secrets", "rollback", "--yes"],
            &[("EXTERNALSECRET_WAIT_SLEEP", "0")],
        )
        .ok();
    assert!(
        run.stdout.contains("rolled back local to azure"),
        "{}",
        run.stdout
    );
    assert_eq!(sb.read(FLAG), before);
    let j = journal(&sb);
    assert_eq!(j["migrations"][0]["kind"], "rollback");
    assert_eq!(j["migrations"][1]["state"], "rolled-back");
    let run = sb.xtask(&["secrets", "rollback", "--yes"]).code(1);
    assert!(
        run.stderr.contains("no completed migration"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_stuck_external_secret_rolls_back_automatically() {
    if !tools() {
        return;
    }
    let bao = OpenBao::start();
    let sb = on_azure();
    let before = sb.read(FLAG);
    // list + 2 polls stuck, then the rollback's list + poll are ready.
    sb.scenario(
        json!({"kubectl": {"context": "k3d-ameide", "crds": ["externalsecrets.external-secrets.io"],
        "externalsecrets": [stuck(), stuck(), stuck(), ready()]}}),
    );
    let run = migrate(
        &sb,
        &bao,
        &["--to", "vault", "--yes", "--wait-attempts", "2"],
    )
    .code(1);
    assert!(run.stderr.contains("ameide/graph-db-credentials: SecretSyncedError: could not get secret data from provider"), "{}", run.stderr);
    assert!(run.stderr.contains("rolled back"), "{}", run.stderr);
    assert_eq!(sb.read(FLAG), before, "restored byte for byte");
    assert_eq!(
        argvs(&sb, "helmfile").len(),
        2,
        "synced, then synced again after the restore"
    );
    let m = &journal(&sb)["migrations"][0];
    assert_eq!(m["state"], "rolled-back");
    let names: Vec<&str> = m["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "preflight",
            "seed",
            "coverage",
            "flip",
            "sync",
            "wait",
            "rollback-restore",
            "rollback-sync",
            "rollback-wait"
        ]
    );
}

#[test]
fn a_failed_sync_rolls_back_unless_told_not_to() {
    if !tools() {
        return;
    }
    let bao = OpenBao::start();
    let sb = on_azure();
    let before = sb.read(FLAG);
    let scenario = json!({"kubectl": {"context": "k3d-ameide", "crds": ["externalsecrets.external-secrets.io"], "externalsecrets": [ready()]},
        "helmfile": {"sync": [{"exit": 1, "stderr": "Error: UPGRADE FAILED: release vault-secret-store failed\n"}, {"exit": 0}]}});
    sb.scenario(scenario.clone());
    let run = migrate(&sb, &bao, &["--to", "vault", "--yes"]).code(1);
    assert!(
        run.stderr
            .contains("UPGRADE FAILED: release vault-secret-store failed"),
        "{}",
        run.stderr
    );
    assert_eq!(sb.read(FLAG), before);

    sb.scenario(scenario);
    let run = migrate(&sb, &bao, &["--to", "vault", "--yes", "--no-rollback"]).code(1);
    assert!(
        run.stderr.contains("migrate --resume --yes"),
        "{}",
        run.stderr
    );
    assert!(
        sb.read(FLAG).contains("  provider: vault\n"),
        "left flipped with --no-rollback"
    );
    assert_eq!(journal(&sb)["migrations"][0]["state"], "failed");
}

#[test]
fn an_interrupted_migration_resumes_and_a_second_one_is_refused() {
    if !tools() {
        return;
    }
    let bao = OpenBao::start();
    let sb = on_azure();
    sb.scenario(json!({"kubectl": {"context": "k3d-ameide", "crds": ["externalsecrets.external-secrets.io"], "externalsecrets": [ready()]},
        "helmfile": {"sync": [{"sleep": 30}]}}));
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
        let syncing = std::fs::read_to_string(sb.path(".local/secrets/journal/local.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|j| {
                j["migrations"][0]["steps"]
                    .as_array()
                    .is_some_and(|s| s.last().is_some_and(|l| l["name"] == "sync"))
            });
        if syncing && sb.fake_dir.join("helmfile.pid").exists() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the migration never reached sync"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // While it runs, a second migration is refused and told who holds the lock.
    let run = migrate(&sb, &bao, &["--to", "vault", "--yes"]).code(1);
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

    sb.scenario(json!({"kubectl": {"context": "k3d-ameide", "crds": ["externalsecrets.external-secrets.io"], "externalsecrets": [ready()]}}));
    let run = migrate(&sb, &bao, &["--to", "vault", "--yes"]).code(1);
    assert!(
        run.stderr.contains("migrate --resume --yes"),
        "{}",
        run.stderr
    );
    let run = migrate(&sb, &bao, &["--resume", "--yes"]).ok();
    assert!(
        run.stdout.contains("[4/7] flip: done earlier"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("[5/7] sync ... ok"), "{}", run.stdout);
    let m = &journal(&sb)["migrations"][0];
    assert_eq!(m["state"], "completed");
}

#[test]
fn dry_run_changes_nothing_and_preflight_refuses_unsafe_states() {
    if !tools() {
        return;
    }
    let bao = OpenBao::start();
    let sb = on_azure();
    let before = sb.read(FLAG);
    sb.scenario(json!({"kubectl": {"context": "k3d-ameide", "crds": ["externalsecrets.external-secrets.io"], "externalsecrets": [ready()]}}));
    let run = migrate(&sb, &bao, &["--to", "vault", "--dry-run"]).ok();
    assert!(
        run.stdout.contains("-  provider: azure\n") && run.stdout.contains("+  provider: vault\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("helmfile --file infra/kubernetes/helmfiles/15-secrets-certificates.yaml --environment local sync"));
    assert_eq!(sb.read(FLAG), before);
    assert!(!sb.path(".local/secrets/journal/local.json").exists());
    assert!(sb.calls().is_empty(), "a dry run calls nothing");

    let run = migrate(&sb, &bao, &["--to", "vault"]).code(2);
    assert!(run.stderr.contains("Pass --yes"), "{}", run.stderr);

    sb.scenario(json!({"kubectl": {"context": "aks-prod", "crds": ["externalsecrets.external-secrets.io"]}}));
    let run = migrate(&sb, &bao, &["--to", "vault", "--yes"]).code(1);
    assert!(
        run.stderr.contains("refusing kube context \"aks-prod\"")
            && run.stderr.contains("Nothing in the cluster changed"),
        "{}",
        run.stderr
    );

    sb.scenario(json!({"kubectl": {"context": "kind-dev", "crds": []}}));
    let run = migrate(&sb, &bao, &["--to", "vault", "--yes"]).code(1);
    assert!(
        run.stderr
            .contains("External Secrets Operator is not installed"),
        "{}",
        run.stderr
    );

    sb.scenario(json!({"kubectl": {"context": "kind-dev", "crds": ["externalsecrets.external-secrets.io"]}}));
    sb.write(FLAG, &format!("{before}# my local tweak\n"));
    let run = migrate(&sb, &bao, &["--to", "vault", "--yes"]).code(1);
    assert!(
        run.stderr.contains("has an uncommitted change"),
        "{}",
        run.stderr
    );
    assert_eq!(sb.read(FLAG), format!("{before}# my local tweak\n"));
    assert!(argvs(&sb, "helmfile").is_empty(), "nothing synced");
}

#[test]
fn status_shows_flags_migration_and_config_sources() {
    if !tools() {
        return;
    }
    let bao = OpenBao::start();
    let sb = on_azure();
    sb.scenario(json!({"kubectl": {"context": "k3d-ameide", "crds": ["externalsecrets.external-secrets.io"], "externalsecrets": [stuck()]}}));
    let run = sb
        .xtask_env(
            &["secrets", "status"],
            &[("VAULT_ADDR", &bao.addr), ("VAULT_TOKEN", &bao.token)],
        )
        .ok();
    let out = &run.stdout;
    assert!(out.contains("  local        azure   <-"), "{out}");
    assert!(out.contains("  staging      azure"), "{out}");
    assert!(out.contains("unsealed"), "{out}");
    assert!(
        out.contains("external secrets on ameide-vault: 1/2 Ready"),
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
        .xtask_env(
            &["secrets", "status", "--output", "json"],
            &[("VAULT_ADDR", &bao.addr), ("VAULT_TOKEN", &bao.token)],
        )
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
    let env = [
        ("VAULT_ADDR", bao.addr.as_str()),
        ("VAULT_TOKEN", bao.token.as_str()),
    ];
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
    assert!(
        run.stdout
            .contains("FAIL  eso        External Secrets Operator is not installed"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("not Ready: InvalidProviderConfig: unable to log in to auth method"),
        "{}",
        run.stdout
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
    sb.scenario(json!({"kubectl": {"context": "k3d-ameide", "crds": ["externalsecrets.external-secrets.io"], "externalsecrets": [stuck(), stuck(), ready()],
        "clustersecretstore": {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}}}));
    let mut outputs = vec![migrate(
        &sb,
        &bao,
        &["--to", "vault", "--yes", "--wait-attempts", "1"],
    )
    .all()];
    outputs.push(migrate(&sb, &bao, &["--to", "vault", "--yes"]).all());
    let env = [
        ("VAULT_ADDR", bao.addr.as_str()),
        ("VAULT_TOKEN", bao.token.as_str()),
    ];
    for args in [
        &["secrets", "status"][..],
        &["secrets", "status", "--output", "json"],
        &["secrets", "doctor"],
    ] {
        outputs.push(sb.xtask_env(args, &env).all());
    }
    let journal = sb.read(".local/secrets/journal/local.json");
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
    let journal_path = sb.path(".local/secrets/journal/local.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(journal_path).unwrap().permissions(),
    ) & 0o777;
    assert_eq!(mode, 0o600, "the journal is private");
}
