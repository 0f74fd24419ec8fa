//! `secrets migrate`, `rollback` and `status` with the real kubectl talking
//! to the cluster stand-in (`tests/cluster/`: ESO's controllers with
//! external-secrets 0.16+ semantics), a fake helmfile sync that applies the
//! flag's provider to the stand-in's store, real OpenBao for seed and
//! coverage, real helmfile for rendering.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster::namespace;
use crate::support::{assert_contains, block_on, OpenBao, Run, Sandbox};

pub(crate) const FLAG: &str = "infra/kubernetes/environments/local/platform/15-secrets.values.yaml";
pub(crate) const JOURNAL: &str = ".local/secrets/journal/local.json";
pub(crate) const CRD: &str = "externalsecrets.external-secrets.io";

/// The namespaces of layer 15's ExternalSecrets that the stand-in does not
/// make by itself (it makes `ameide`): helm would not create them either.
pub(crate) const LAYER15_NAMESPACES: [&str; 3] = ["keycloak", "cert-manager", "minio"];

/// A cluster whose ESO runs on a clock `clock_offset` seconds off ours;
/// `stores` gives a provider's health. The store starts on Azure Key Vault.
pub(crate) fn eso(clock_offset: i64, stores: Value) -> Value {
    json!({
        "clock_offset": clock_offset,
        "reconcile_delay": 0.2,
        "provider": "azure",
        "stores": stores,
    })
}

/// An ExternalSecret that reads `key` from `store` (`Kind/name`), as the
/// charts write them; `spec` adds fields (`refreshInterval`, ...).
fn external_secret(ns: &str, name: &str, store: &str, key: &str, spec: Value) -> Value {
    let (kind, store_name) = store.split_once('/').unwrap();
    let mut o = json!({"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
        "metadata": {"namespace": ns, "name": name},
        "spec": {"refreshInterval": "1h", "secretStoreRef": {"kind": kind, "name": store_name},
                 "target": {"name": name, "creationPolicy": "Owner"},
                 "data": [{"secretKey": "value", "remoteRef": {"key": key, "property": "value"}}]}});
    for (k, v) in spec.as_object().cloned().unwrap_or_default() {
        o["spec"][k] = v;
    }
    o
}

/// Two ExternalSecrets on ClusterSecretStore/ameide-vault (both rendered
/// by layer 15) and one on a store of its own, plus the namespaces layer
/// 15 needs.
pub(crate) fn objects() -> Vec<Value> {
    let mut o: Vec<Value> = LAYER15_NAMESPACES.iter().map(|ns| namespace(ns)).collect();
    o.push(external_secret(
        "ameide",
        "graph-db-credentials",
        "ClusterSecretStore/ameide-vault",
        "graph-db-password",
        json!({}),
    ));
    o.push(external_secret(
        "ameide",
        "platform-db-credentials",
        "ClusterSecretStore/ameide-vault",
        "platform-db-password",
        json!({}),
    ));
    o.push(external_secret("team", "elsewhere", "SecretStore/team", "team-key", json!({})));
    o
}

pub(crate) fn healthy() -> Value {
    json!({})
}

/// A provider that fails, in its own words (as ESO's store controller
/// reports them in a Warning Event).
pub(crate) fn unhealthy(provider: &str) -> Value {
    json!({provider: {"ready": false, "message": down(provider)}})
}

pub(crate) fn down(provider: &str) -> String {
    match provider {
        "vault" => "Get \"http://vault.vault.svc.cluster.local:8200/v1/sys/health\": dial tcp 10.43.0.10:8200: \
                    connect: connection refused"
            .into(),
        _ => format!("{provider}: AADSTS7000215: Invalid client secret provided"),
    }
}

/// The scenario: a local context with ESO (the store Ready as ESO last
/// validated it), and what `helmfile sync` answers, call after call.
pub(crate) fn cluster(context: &str, eso: Value, syncs: Value) -> Value {
    json!({"kubectl": {"context": context, "crds": [CRD], "eso": eso, "objects": objects(),
        "clustersecretstore": {"status": {"conditions": [{"type": "Ready", "status": "True",
            "reason": "Valid", "message": "store validated",
            "lastTransitionTime": "2026-12-01T00:00:00Z"}]}}},
        "helmfile": {"sync": syncs}})
}

/// The local cluster, on our clock, whose `helmfile sync` succeeds;
/// `stores` as for [`eso`].
pub(crate) fn local(stores: Value) -> Value {
    cluster("k3d-ameide", eso(0, stores), sync_ok())
}

pub(crate) fn sync_ok() -> Value {
    json!([{"exit": 0}])
}

pub(crate) fn sync_fails() -> Value {
    json!({"exit": 1, "stderr": "Error: UPGRADE FAILED: release vault-secret-store failed\n"})
}

/// A sandbox whose local environment starts on Azure Key Vault (committed).
pub(crate) fn on_azure() -> Sandbox {
    let sb = Sandbox::new();
    let text = sb.read(FLAG).replace("  provider: vault\n", "  provider: azure\n");
    sb.write(FLAG, &text);
    commit(&sb, "local on azure");
    sb
}

pub(crate) fn commit(sb: &Sandbox, msg: &str) {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-qam", msg])
        .current_dir(&sb.root)
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// `cargo xtask <args>` with the test's Vault and a short wait.
pub(crate) fn xt(sb: &Sandbox, bao: &OpenBao, args: &[&str]) -> Run {
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

pub(crate) fn migrate(sb: &Sandbox, bao: &OpenBao, args: &[&str]) -> Run {
    let mut all = vec!["secrets", "migrate"];
    all.extend_from_slice(args);
    xt(sb, bao, &all)
}

/// `secrets migrate --to vault --yes`.
pub(crate) fn to_vault(sb: &Sandbox, bao: &OpenBao) -> Run {
    migrate(sb, bao, &["--to", "vault", "--yes"])
}

pub(crate) fn rollback(sb: &Sandbox, bao: &OpenBao, args: &[&str]) -> Run {
    let mut all = vec!["secrets", "rollback"];
    all.extend_from_slice(args);
    xt(sb, bao, &all)
}

pub(crate) fn journal(sb: &Sandbox) -> Value {
    serde_json::from_str(&sb.read(JOURNAL)).unwrap()
}

/// The journal's exact text (its bytes: it is UTF-8 JSON), if there is one.
pub(crate) fn journal_bytes(sb: &Sandbox) -> Option<String> {
    std::fs::read_to_string(sb.path(JOURNAL)).ok()
}

/// An entry's steps as `name outcome`.
pub(crate) fn steps(entry: &Value) -> Vec<String> {
    entry["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{} {}", s["name"].as_str().unwrap(), s["outcome"].as_str().unwrap()))
        .collect()
}

pub(crate) fn argvs(sb: &Sandbox, tool: &str) -> Vec<Vec<String>> {
    sb.calls().into_iter().filter(|c| c.tool == tool).map(|c| c.argv).collect()
}

/// The step labels a run printed, `[1/7] preflight`, in order.
pub(crate) fn labels(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l.strip_prefix('[')?;
            let (n, rest) = rest.split_once("] ")?;
            let name: String =
                rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '-').collect();
            Some(format!("[{n}] {name}"))
        })
        .collect()
}

/// The last `cargo xtask ...` command the output names in backticks.
pub(crate) fn named_command(text: &str) -> Vec<String> {
    let start = text
        .rfind("`cargo xtask secrets ")
        .unwrap_or_else(|| panic!("no command named in:\n{text}"));
    let rest = &text[start + 1..];
    let cmd = &rest[..rest.find('`').unwrap()];
    cmd.split_whitespace().skip(2).map(String::from).collect()
}

pub(crate) fn run_named(sb: &Sandbox, bao: &OpenBao, text: &str) -> Run {
    let cmd = named_command(text);
    let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    xt(sb, bao, &args)
}

pub(crate) fn tools() -> bool {
    crate::support::require_tools(&["bao", "kubectl", "helm", "helmfile"])
}

/// The test's Vault and a sandbox on Azure Key Vault, or `None` (skip the
/// test) when the tools are missing.
pub(crate) fn start() -> Option<(OpenBao, Sandbox)> {
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
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let doc =
        text.split("\n---").find(|d| d.contains("kind: ClusterSecretStore")).unwrap().to_string();
    assert!(doc.contains("name: ameide-vault"));
    if doc.contains("    vault:\n") {
        "vault".into()
    } else if doc.contains("    azurekv:\n") {
        "azure".into()
    } else {
        panic!("{doc}")
    }
}

pub(crate) const MIGRATED: [&str; 7] =
    ["preflight ok", "seed ok", "coverage ok", "flip ok", "sync ok", "wait ok", "record ok"];

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
    assert_eq!(store_provider(&sb), "vault", "real helmfile renders the new provider");

    let j = journal(&sb);
    let m = &j["migrations"][0];
    assert_eq!(
        (m["kind"].as_str(), m["from"].as_str(), m["to"].as_str(), m["state"].as_str()),
        (Some("migrate"), Some("azure"), Some("vault"), Some("completed"))
    );
    assert_eq!(steps(m), MIGRATED);
    assert_eq!(m["before_content"].as_str().unwrap(), before);
    // The seed step lets ESO in too (eso_access.rs tests the details).
    let seeded = m["steps"][1]["detail"].as_str().unwrap();
    assert!(seeded.contains("ESO's access: ensured auth kubernetes/"), "{seeded}");
    assert!(bao.bao(&["read", "auth/kubernetes/role/external-secrets"]).status.success());

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
        .map(|a| format!("{}/{}", a[1], a[2]))
        .collect();
    assert_eq!(
        annotated,
        [
            "clustersecretstore/ameide-vault",
            "externalsecret/graph-db-credentials",
            "externalsecret/platform-db-credentials"
        ],
        "the store first, then only ExternalSecrets on ameide-vault"
    );
    // The seed really happened.
    let client = bao.client();
    let meta =
        crate::support::block_on(vaultrs::kv2::read_metadata(&client, "secret", "graph-db-url"))
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
        assert!(run.stdout.contains("migrated local to vault"), "{offset}: {}", run.stdout);
        assert_eq!(steps(&journal(&sb)["migrations"][0]), MIGRATED, "{offset}");
    }
}

/// An ExternalSecret that is Ready but that ESO never reconciles after the
/// force (a stuck controller: the stand-in's `eso.frozen`) must not count
/// as synced.
#[test]
fn ready_but_never_refreshed_is_not_done() {
    let Some((bao, sb)) = start() else {
        return;
    };
    let before = sb.read(FLAG);
    sb.scenario(local(healthy()));
    sb.cluster()
        .knobs(json!({"eso": {"running": true, "frozen": ["ameide/graph-db-credentials"]}}));
    let run = to_vault(&sb, &bao).code(1);
    assert_contains(
        &run.stderr,
        "ameide/graph-db-credentials: Ready, but not refreshed since the force-sync (status.refreshTime still ",
    );
    let m = &journal(&sb)["migrations"][0];
    assert_eq!(steps(m)[5], "wait failed");
    assert_eq!(sb.read(FLAG), before);
}

/// The scenario of [`local`] with these fields in the `spec` of the named
/// ExternalSecrets.
fn with_specs(mut sc: Value, specs: &[(&str, Value)]) -> Value {
    for o in sc["kubectl"]["objects"].as_array_mut().unwrap() {
        for (name, spec) in specs {
            if o["kind"] == "ExternalSecret" && o["metadata"]["name"] == *name {
                for (k, v) in spec.as_object().unwrap() {
                    o["spec"][k] = v.clone();
                }
            }
        }
    }
    sc
}

/// The first backticked command on the line of `stderr` that starts with
/// `  <id> `.
fn advice_for(stderr: &str, id: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&format!("  {id} ")))
        .unwrap_or_else(|| panic!("no line for {id} in:\n{stderr}"));
    let start = line.find('`').unwrap() + 1;
    let len = line[start..].find('`').unwrap();
    line[start..start + len].to_string()
}

/// `sh -c <command>` in the sandbox: the real kubectl (through the
/// recording wrapper) against the stand-in, the fake helmfile sync, the
/// real helmfile for everything else.
pub(crate) fn shell(sb: &Sandbox, command: &str) -> Run {
    sb.command_of(std::path::Path::new("sh"), &["-c", command]).output().unwrap().into()
}

/// ESO 0.16+ does not re-read an ExternalSecret with `refreshInterval: 0`
/// or `refreshPolicy: CreatedOnce` once it synced, force-sync or not. The
/// migration used to wait out its whole budget on them, then roll back and
/// wait again (rollback-failed). Now it names them, with a fix that works,
/// and does not wait on them.
#[test]
fn external_secrets_eso_does_not_reread_are_named_with_a_fix_not_waited_on() {
    let Some((bao, sb)) = start() else {
        return;
    };
    sb.scenario(with_specs(
        local(healthy()),
        &[
            ("graph-db-credentials", json!({"refreshInterval": "0"})),
            ("platform-db-credentials", json!({"refreshPolicy": "CreatedOnce"})),
        ],
    ));
    let run = to_vault(&sb, &bao).ok();
    assert_contains(&run.stdout, "migrated local to vault");
    assert_contains(
        &run.stderr,
        "warning: ESO does not re-read 2 ExternalSecret(s) on ameide-vault when forced, so each keeps what it \
         read from the store it used before; to read the store in use now:\n",
    );
    let fix = advice_for(&run.stderr, "ameide/graph-db-credentials");
    assert_eq!(
        fix,
        "kubectl delete externalsecret graph-db-credentials --namespace ameide && helmfile --file \
         infra/kubernetes/helmfiles/15-secrets-certificates.yaml --environment local --selector \
         name=vault-secrets-platform sync"
    );
    assert_contains(
        &run.stderr,
        "  ameide/graph-db-credentials (refreshInterval: 0): `kubectl delete externalsecret",
    );
    assert_contains(
        &run.stderr,
        "  ameide/platform-db-credentials (refreshPolicy: CreatedOnce): `kubectl delete externalsecret \
         platform-db-credentials --namespace ameide && helmfile",
    );
    let m = &journal(&sb)["migrations"][0];
    assert_eq!(steps(m), MIGRATED);
    let waited = m["steps"][5]["detail"].as_str().unwrap();
    assert!(
        waited.contains(
            "not forced, as ESO does not re-read them: ameide/graph-db-credentials (refreshInterval: 0), \
             ameide/platform-db-credentials (refreshPolicy: CreatedOnce)"
        ),
        "{waited}"
    );
    let annotated: Vec<String> = argvs(&sb, "kubectl")
        .into_iter()
        .filter(|a| a[0] == "annotate" && a[1] == "externalsecret")
        .map(|a| a[2].clone())
        .collect();
    assert!(annotated.is_empty(), "{annotated:?}");

    // The advice works. The selector picks the release that renders it
    // (the real helmfile, rendering instead of syncing) ...
    let template = fix.split(" && ").nth(1).unwrap().replace(" sync", " template --skip-deps");
    let rendered = shell(&sb, &template).ok();
    assert_contains(&rendered.stdout, "name: graph-db-credentials\n");
    // ... the real kubectl deletes it, the sync runs ...
    let old =
        sb.cluster().object("ExternalSecret", Some("ameide"), "graph-db-credentials").unwrap();
    shell(&sb, &fix).ok();
    assert!(sb
        .cluster()
        .object("ExternalSecret", Some("ameide"), "graph-db-credentials")
        .is_none());
    // ... helm creates it again (the fake sync does not: the stand-in plays
    // helm), and ESO reads the new one at once, from the store in use.
    let again =
        with_specs(local(healthy()), &[("graph-db-credentials", json!({"refreshInterval": "0"}))])
            ["kubectl"]["objects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["metadata"]["name"] == "graph-db-credentials")
            .unwrap()
            .clone();
    sb.cluster().put(&[again]);
    let until = Instant::now() + Duration::from_secs(10);
    let new = loop {
        let o =
            sb.cluster().object("ExternalSecret", Some("ameide"), "graph-db-credentials").unwrap();
        if o["status"]["refreshTime"].is_string() {
            break o;
        }
        assert!(Instant::now() < until, "ESO never read it: {o}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(new["metadata"]["uid"], old["metadata"]["uid"]);
    let ready = new["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "True", "{new}");
    assert!(sb.cluster().object("ClusterSecretStore", None, "ameide-vault").unwrap()["spec"]
        ["provider"]["vault"]
        .is_object());
}

/// After Vault restarted, ESO backs off a store that failed to validate:
/// it stays not Ready for minutes once Vault is back, and every
/// ExternalSecret on it waits. The wait forces the store (again after each
/// poll that finds it not Ready), and then the ExternalSecrets.
#[test]
fn a_store_in_esos_backoff_is_forced_before_the_external_secrets() {
    let Some((bao, sb)) = start() else {
        return;
    };
    // Vault restarts as the sync switches the store to it: ESO's
    // validation fails and it backs off.
    let restarting = json!({"vault": {"ready": false, "backoff": true, "message": down("vault")}});
    sb.scenario(local(restarting));
    let child = sb
        .command(&["secrets", "migrate", "--to", "vault", "--yes"])
        .env("VAULT_ADDR", &bao.addr)
        .env("VAULT_TOKEN", &bao.token)
        .env("EXTERNALSECRET_WAIT_SLEEP", "0.25")
        .env("EXTERNALSECRET_WAIT_ATTEMPTS", "40")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let store = sb.cluster().object("ClusterSecretStore", None, "ameide-vault");
        let failed_on_vault = store.as_ref().is_some_and(|s| {
            s["spec"]["provider"]["vault"].is_object()
                && s["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter().any(|c| c["type"] == "Ready" && c["status"] == "False")
                })
        });
        if failed_on_vault {
            break;
        }
        assert!(Instant::now() < until, "the store never failed on vault: {store:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Vault is back; ESO would retry the store only after its backoff.
    sb.cluster().knobs(json!({"store_health": {"vault": {"ready": true, "backoff": true}}}));
    let run: Run = child.wait_with_output().unwrap().into();
    let run = run.ok();
    assert_contains(&run.stdout, "migrated local to vault");
    let m = &journal(&sb)["migrations"][0];
    assert_eq!(steps(m), MIGRATED);
    let waited = m["steps"][5]["detail"].as_str().unwrap();
    assert!(
        waited.contains("ClusterSecretStore/ameide-vault Ready (poll ")
            && waited.contains("2 ExternalSecrets on ameide-vault refreshed and Ready"),
        "{waited}"
    );
    // The store first, then the ExternalSecrets.
    let annotations: Vec<String> = argvs(&sb, "kubectl")
        .into_iter()
        .filter(|a| a[0] == "annotate")
        .map(|a| a[1].clone())
        .collect();
    let first_es = annotations.iter().position(|k| k == "externalsecret").unwrap();
    assert!(
        first_es > 0 && annotations[..first_es].iter().all(|k| k == "clustersecretstore"),
        "{annotations:?}"
    );
}

/// A store that stays not Ready fails the wait with ESO's generic condition
/// and, next to it, ESO's Warning Event with the real cause.
#[test]
fn a_store_that_stays_not_ready_fails_the_wait_with_esos_event() {
    let Some((bao, sb)) = start() else {
        return;
    };
    sb.scenario(local(unhealthy("vault")));
    let run = migrate(&sb, &bao, &["--to", "vault", "--yes", "--no-rollback"]).code(1);
    assert_contains(
        &run.stderr,
        "ClusterSecretStore/ameide-vault not Ready after 15 polls 0.1 s apart (forced with force-sync=",
    );
    assert_contains(
        &run.stderr,
        &format!(
            "): ValidationFailed: unable to validate store; ESO's last warning (ValidationFailed): {}. Its \
             ExternalSecrets cannot sync until it is; `kubectl describe clustersecretstore ameide-vault` shows \
             ESO's events.",
            down("vault")
        ),
    );
    // ESO's own account, read the way the message says.
    let described = shell(&sb, "kubectl describe clustersecretstore ameide-vault").ok();
    assert_contains(&described.stdout, &down("vault"));
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
            sb.scenario(cluster("k3d-ameide", eso(0, healthy()), json!([sync_fails()])));
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
        assert_eq!(sb.read(FLAG), before, "{}: the committed flag, byte for byte", case.name);
        if case.state == "rollback-failed" {
            assert_eq!(
                named_command(&run.stderr),
                ["secrets", "rollback", "--resume", "--yes"],
                "{}",
                case.name
            );
            let status = xt(&sb, &bao, &["secrets", "status"]).ok();
            assert!(
                status.stdout.contains("migrate azure -> vault: rollback-failed")
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
        let target =
            before.replace("  provider: azure\n", &format!("  provider: {}\n", case.finishes_on));
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
            assert_eq!(j["migrations"][1]["state"], case.state, "{}: history kept", case.name);
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
        assert_eq!(journal_bytes(&sb), journal_before, "the journal is untouched");
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
    assert_eq!(sb.read(FLAG), flipped, "the migration's target, byte for byte");
    assert_eq!(named_command(&run.stderr), ["secrets", "rollback", "--to", "azure", "--yes"]);
    std::fs::remove_dir_all(tmp_path(&sb)).unwrap();

    // Its sync fails.
    sb.scenario(cluster("k3d-ameide", eso(0, healthy()), json!([sync_fails()])));
    let run = rollback(&sb, &bao, &["--yes"]).code(1);
    let j = journal(&sb);
    assert_eq!(steps(&j["migrations"][0]), ["preflight ok", "flip ok", "sync failed"]);
    assert_eq!(j["migrations"][0]["state"], "rollback-failed");
    assert_eq!(j["migrations"][2]["state"], "completed", "not undone yet");
    assert_eq!(sb.read(FLAG), before);
    assert_eq!(named_command(&run.stderr), ["secrets", "rollback", "--resume", "--yes"]);
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
    sb.scenario(cluster("k3d-ameide", eso(0, healthy()), json!([sync_fails()])));
    to_vault(&sb, &bao).code(1);
    assert_eq!(journal(&sb)["migrations"][0]["state"], "rollback-failed");

    sb.scenario(local(healthy()));
    let synced = argvs(&sb, "helmfile").len();
    let run = rollback(&sb, &bao, &["--to", "azure", "--yes"]).ok();
    assert!(!run.stdout.contains("nothing to roll back"), "{}", run.stdout);
    assert_eq!(argvs(&sb, "helmfile").len(), synced + 1, "synced layer 15");
    let j = journal(&sb);
    assert_eq!(steps(&j["migrations"][0]), ["preflight ok", "sync ok", "wait ok", "record ok"]);
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
    assert!(sb.read(FLAG).contains("  provider: vault\n"), "left flipped");
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
    assert!(!dry.stdout.contains("seed") && !dry.stdout.contains("reachable"), "{}", dry.stdout);
    let real = rollback(&sb, &bao, &["--yes"]).ok();
    assert_eq!(
        labels(&dry.stdout),
        ["[1/5] preflight", "[2/5] flip", "[3/5] sync", "[4/5] wait", "[5/5] record"]
    );
    assert_eq!(labels(&real.stdout), labels(&dry.stdout));
}

#[test]
fn an_interrupted_migration_resumes_and_a_second_one_is_refused() {
    let Some((bao, sb)) = start() else {
        return;
    };
    sb.scenario(cluster("k3d-ameide", eso(0, healthy()), json!([{"sleep": 30}])));
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
        assert!(Instant::now() < deadline, "the migration never reached sync");
        std::thread::sleep(Duration::from_millis(50));
    }
    // While it runs, a second migration is refused and told who holds the lock.
    let run = to_vault(&sb, &bao).code(1);
    assert!(
        run.stderr.contains(&format!("another migration of local is running (pid {}", first.id())),
        "{}",
        run.stderr
    );

    // Kill it mid-sync (and its helmfile), as a closed laptop would.
    first.kill().unwrap();
    first.wait().unwrap();
    let pid = std::fs::read_to_string(sb.fake_dir.join("helmfile.pid")).unwrap();
    let _ = std::process::Command::new("kill").arg("-9").arg(pid.trim()).status();
    assert!(sb.read(FLAG).contains("  provider: vault\n"), "interrupted after the flip");
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
    assert!(!sb.path(JOURNAL).exists(), "a refused preflight journals nothing");

    // ESO goes away, every CRD of its group (first_contact.rs has the details).
    for crd in sb.cluster().objects() {
        if crd["kind"] == "CustomResourceDefinition"
            && crd["spec"]["group"] == "external-secrets.io"
        {
            let name = crd["metadata"]["name"].as_str().unwrap();
            sb.cluster().delete("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, name);
        }
    }
    sb.scenario(json!({"kubectl": {"context": "kind-dev"}}));
    let run = to_vault(&sb, &bao).code(1);
    assert_contains(&run.stderr, "External Secrets Operator is not installed");

    sb.scenario(cluster("kind-dev", eso(0, healthy()), sync_ok()));
    sb.write(FLAG, &format!("{before}# my local tweak\n"));
    let run = to_vault(&sb, &bao).code(1);
    assert_contains(&run.stderr, "has an uncommitted change");
    assert_eq!(sb.read(FLAG), format!("{before}# my local tweak\n"));
    assert!(argvs(&sb, "helmfile").is_empty(), "nothing synced");
    assert!(!sb.path(JOURNAL).exists(), "a refused preflight journals nothing");
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
    assert!(out.contains("external secrets on ameide-vault: 0/2 Ready"), "{out}");
    assert!(out.contains("ameide/graph-db-credentials: SecretSyncedError"), "{out}");
    assert!(
        out.contains("vault.token        (set, not shown)") && out.contains("env VAULT_TOKEN"),
        "{out}"
    );
    assert!(!out.contains(&bao.token), "the token is shown by source only");
    let run = sb.xtask_env(&["secrets", "status", "--output", "json"], &bao.env()).ok();
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["vault"]["sealed"], false);
    assert_eq!(v["kube_context_local"], true);
}

/// The Ready condition of `kind`/`name` (in `ns`) in the stand-in.
fn condition(sb: &Sandbox, kind: &str, ns: Option<&str>, name: &str) -> Value {
    let o = sb.cluster().object(kind, ns, name).unwrap();
    o["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
        .unwrap_or(Value::Null)
}

/// Waits until `kind`/`name`'s Ready condition has `status`.
fn wait_condition(sb: &Sandbox, kind: &str, ns: Option<&str>, name: &str, status: &str) {
    let until = Instant::now() + Duration::from_secs(10);
    while condition(sb, kind, ns, name)["status"] != status {
        assert!(
            Instant::now() < until,
            "{kind}/{name} never {status}: {}",
            condition(sb, kind, ns, name)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn doctor_reports_each_finding_with_its_fix() {
    if !tools() {
        return;
    }
    let bao = OpenBao::start();
    let sb = Sandbox::new();
    let mut sc = local(healthy());
    sc["kubectl"]["eso"]["provider"] = json!("vault");
    // Vault runs outside the cluster here: ESO's own token reviews, and
    // needs what layer 15 gives Vault's in a cluster.
    sc["kubectl"]["objects"].as_array_mut().unwrap().push(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "external-secrets-external-secrets-auth-delegator"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "system:auth-delegator"},
            "subjects": [{"kind": "ServiceAccount", "name": "external-secrets",
                          "namespace": "external-secrets"}]}),
    );
    sb.scenario(sc);
    let env = bao.env();
    // An empty Vault is a finding of its own (eso_access.rs): seed it first.
    sb.xtask_env(&["secrets", "seed"], &env).ok();
    let run = sb.xtask_env(&["secrets", "doctor"], &env).ok();
    for line in [
        "ok    cluster    context k3d-ameide is local",
        "ok    eso        External Secrets Operator serves external-secrets.io/v1",
        "ok    eso        ClusterSecretStore/ameide-vault Ready",
        "ok    eso        2 ExternalSecrets on ameide-vault Ready",
        "reachable, unsealed, token valid",
        "all checks passed",
    ] {
        assert!(run.stdout.contains(line), "{line}:\n{}", run.stdout);
    }

    // ESO's login now fails (Vault says `permission denied` to a failed
    // TokenReview). The store was validated before: ESO reads with it,
    // and the ExternalSecret's condition is generic; its event says why.
    let denied = "unable to log in to auth method: unable to log in with Kubernetes auth: Error making API request.\n\nURL: PUT \
                  http://vault.vault.svc.cluster.local:8200/v1/auth/kubernetes/login\nCode: 403. Errors:\n\n* \
                  permission denied";
    sb.cluster().knobs(json!({"store_health": {"vault": {"ready": false, "message": denied}}}));
    shell(
        &sb,
        "kubectl annotate externalsecret graph-db-credentials --namespace ameide force-sync=1 --overwrite",
    )
    .ok();
    wait_condition(&sb, "ExternalSecret", Some("ameide"), "graph-db-credentials", "False");
    let run = sb.xtask_env(&["secrets", "doctor"], &env).code(1);
    let one_line: Vec<&str> = denied.split_whitespace().collect();
    assert_contains(
        &run.stdout,
        &format!(
            "FAIL  eso        ExternalSecret ameide/graph-db-credentials not Ready: SecretSyncedError: could not \
             get secret data from provider; ESO's last warning (UpdateFailed): error processing spec.data[0] \
             (key: graph-db-password), err: {}\n",
            one_line.join(" ")
        ),
    );
    assert_contains(
        &run.stdout,
        "fix: Vault answers `permission denied` to every ESO login it refuses (a failed TokenReview included)",
    );
    assert_contains(
        &run.stdout,
        "`kubectl get clusterrolebindings --output wide | grep system:auth-delegator` must list vault/vault",
    );
    assert!(!run.stdout.contains("check kubectl access"), "{}", run.stdout);

    // Then the store is validated again and fails: its own condition and
    // ESO's event about it; the ExternalSecrets point at it.
    let refused = "unable to log in to auth method: Code: 403. Errors:\n\n* permission denied";
    sb.cluster().knobs(
        json!({"store_health": {"vault": {"ready": false, "backoff": true, "message": refused}}}),
    );
    shell(
        &sb,
        "kubectl annotate clustersecretstore ameide-vault force-sync=2 --overwrite && \
         kubectl annotate externalsecret platform-db-credentials --namespace ameide force-sync=2 --overwrite",
    )
    .ok();
    wait_condition(&sb, "ClusterSecretStore", None, "ameide-vault", "False");
    wait_condition(&sb, "ExternalSecret", Some("ameide"), "platform-db-credentials", "False");
    let run = sb.xtask_env(&["secrets", "doctor"], &env).code(1);
    assert_contains(
        &run.stdout,
        "FAIL  eso        ClusterSecretStore/ameide-vault not Ready: ValidationFailed: unable to validate store; \
         ESO's last warning (ValidationFailed): unable to log in to auth method: Code: 403. Errors: * permission \
         denied\n",
    );
    assert_contains(
        &run.stdout,
        "FAIL  eso        ExternalSecret ameide/platform-db-credentials not Ready: SecretSyncedError: could not \
         get secret data from provider; ESO's last warning (UpdateFailed): error processing spec.data[0] (key: \
         platform-db-password), err: ClusterSecretStore \"ameide-vault\" is not ready\n",
    );
    assert_contains(
        &run.stdout,
        "fix: the store's line above says why ClusterSecretStore/ameide-vault is not Ready; once it is, kubectl \
         annotate externalsecret platform-db-credentials --namespace ameide force-sync=$(date +%s) --overwrite",
    );

    // Vault is fine again, but ESO backs off the store: doctor's fix for a
    // store that is not Ready has ESO validate it at once.
    sb.cluster().knobs(
        json!({"store_health": {"vault": {"ready": false, "backoff": true, "message": "sealed"}}}),
    );
    shell(&sb, "kubectl annotate clustersecretstore ameide-vault force-sync=3 --overwrite").ok();
    let until = Instant::now() + Duration::from_secs(10);
    while !sb
        .xtask_env(&["secrets", "doctor"], &env)
        .stdout
        .contains("ESO's last warning (ValidationFailed): sealed")
    {
        assert!(Instant::now() < until, "ESO never validated the store again");
        std::thread::sleep(Duration::from_millis(100));
    }
    sb.cluster().knobs(json!({"store_health": {"vault": {"ready": true, "backoff": true}}}));
    std::thread::sleep(Duration::from_millis(600));
    let run = sb.xtask_env(&["secrets", "doctor"], &env).code(1);
    let fix = run
        .stdout
        .lines()
        .skip_while(|l| !l.contains("ClusterSecretStore/ameide-vault not Ready"))
        .nth(1)
        .unwrap()
        .to_string();
    let annotate = &fix[fix.find('`').unwrap() + 1..fix.rfind('`').unwrap()];
    assert_eq!(
        annotate,
        "kubectl annotate clustersecretstore ameide-vault force-sync=$(date +%s) --overwrite"
    );
    shell(&sb, annotate).ok();
    wait_condition(&sb, "ClusterSecretStore", None, "ameide-vault", "True");
    // (The ExternalSecrets follow as ESO retries them.)
    let run = sb.xtask_env(&["secrets", "doctor"], &env);
    assert_contains(&run.stdout, "ok    eso        ClusterSecretStore/ameide-vault Ready");
}

#[test]
fn a_canary_never_reaches_the_journal_output_or_any_child() {
    if !tools() {
        return;
    }
    let canary = "CANARY-migrate-5d6e7f";
    let bao = OpenBao::start();
    let sb = on_azure();
    sb.write(".local/secrets/overrides.json", &format!("{{\"graph-db-password\": \"{canary}\"}}"));
    // The first run rolls back (Vault's store is not Ready), the second completes.
    sb.scenario(local(unhealthy("vault")));
    let mut outputs = vec![to_vault(&sb, &bao).code(1).all()];
    sb.scenario(local(healthy()));
    outputs.push(to_vault(&sb, &bao).ok().all());
    // The canary did go through the pipeline: Vault holds it, read back
    // independently.
    let held: std::collections::HashMap<String, String> =
        block_on(vaultrs::kv2::read(&bao.client(), "secret", "graph-db-password"))
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
    sb.scenario(cluster("k3d-ameide", eso(0, healthy()), json!([{"sleep": 60}, {"exit": 0}])));
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

/// `xtask secrets <args>` stopped by SIGKILL at `point` (`<step>:<when>`,
/// see interrupt.rs).
fn killed_at(sb: &Sandbox, bao: &OpenBao, args: &[&str], point: &str) {
    let mut all = vec!["secrets"];
    all.extend_from_slice(args);
    let out = sb
        .command(&all)
        .env("VAULT_ADDR", &bao.addr)
        .env("VAULT_TOKEN", &bao.token)
        .env("XTASK_TEST_STOP_AT", point)
        .output()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(9),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The journal with its newest entry's copy of the flag file cut to its
/// first two lines, the checksum beside it left as it was.
fn tamper_journal(sb: &Sandbox) {
    let mut j = journal(sb);
    let before = j["migrations"][0]["before_content"].as_str().unwrap();
    let cut: String = before.lines().take(2).map(|l| format!("{l}\n")).collect();
    assert!(before.lines().count() > 20, "{before}");
    j["migrations"][0]["before_content"] = json!(cut);
    sb.write(JOURNAL, &serde_json::to_string_pretty(&j).unwrap());
}

/// `rollback` used to write a tampered copy of the flag file from the
/// journal (the file lost its lines) and report "restored byte for byte".
/// It checks the copy against its checksum first, refuses, and names the
/// way out, which works.
#[test]
fn rollback_never_writes_a_tampered_journal_into_the_flag_file() {
    let Some((bao, sb)) = start() else {
        return;
    };
    let before = sb.read(FLAG);
    sb.scenario(local(healthy()));
    to_vault(&sb, &bao).ok();
    let flipped = sb.read(FLAG);
    tamper_journal(&sb);
    let tampered = journal_bytes(&sb);
    for args in [&["--dry-run"][..], &["--yes"]] {
        let run = rollback(&sb, &bao, args).code(1);
        assert_contains(
            &run.stderr,
            &format!(
                "the journal's copy of {FLAG} from before {} does not match the checksum stored beside it (the \
                 journal was edited or damaged): `rollback` restores that copy byte for byte, so it refuses, and \
                 nothing changed. `cargo xtask secrets rollback --to azure --yes` sets only the value instead",
                journal(&sb)["migrations"][0]["id"].as_str().unwrap()
            ),
        );
        assert_eq!(sb.read(FLAG), flipped, "not written");
        assert_eq!(journal_bytes(&sb), tampered, "nothing journaled");
    }
    // The way out it names.
    let run = rollback(&sb, &bao, &["--yes"]).code(1);
    let out = run_named(&sb, &bao, &run.stderr).ok();
    assert_contains(&out.stdout, "rolled back local to azure");
    assert_contains(
        &out.stdout,
        "secrets.provider = azure (set; the journal's copy of the file from before the migration does not \
         match its checksum, so it is not used",
    );
    assert_eq!(sb.read(FLAG), before, "the committed flag file, byte for byte");
    let j = journal(&sb);
    assert_eq!(j["migrations"][0]["state"], "completed");
    assert_eq!(j["migrations"][1]["state"], "rolled-back");
}

/// The automatic rollback used to write a tampered copy first and check
/// it afterwards, then name `rollback --resume --yes`, which refused even
/// after `git checkout` of the flag file. It checks first, writes nothing,
/// and names a way out that works.
#[test]
fn the_automatic_rollback_never_writes_a_tampered_journal_into_the_flag_file() {
    let Some((bao, sb)) = start() else {
        return;
    };
    let before = sb.read(FLAG);
    sb.scenario(local(healthy()));
    // Killed before its sync, then the journal is edited.
    killed_at(&sb, &bao, &["migrate", "--to", "vault", "--yes"], "sync:before");
    let flipped = sb.read(FLAG);
    tamper_journal(&sb);
    sb.scenario(cluster("k3d-ameide", eso(0, healthy()), json!([sync_fails(), {"exit": 0}])));
    let run = migrate(&sb, &bao, &["--resume", "--yes"]).code(1);
    assert_contains(
        &run.stderr,
        &format!(
            "The automatic rollback failed too, at rollback-restore: the journal's copy of {FLAG} from before the \
             migration does not match its checksum (checksum "
        ),
    );
    assert_contains(
        &run.stderr,
        &format!(
            "): the journal was edited or damaged, so the copy is not written, and {FLAG} stays as the flip left \
             it\nThe journal marks the migration rollback-failed; {FLAG} is NOT restored; `cargo xtask secrets \
             status` shows where things stand. Fix the cause, then finish with `cargo xtask secrets rollback --to \
             azure --yes`."
        ),
    );
    assert_eq!(sb.read(FLAG), flipped, "nothing written");
    let m = &journal(&sb)["migrations"][0];
    assert_eq!(m["state"], "rollback-failed");
    assert_eq!(steps(m).last().unwrap(), "rollback-restore failed");
    let status = xt(&sb, &bao, &["secrets", "status"]).ok();
    assert_contains(
        &status.stdout,
        "unfinished: finish it with `cargo xtask secrets rollback --to azure --yes`",
    );
    run_named(&sb, &bao, &run.stderr).ok();
    assert_eq!(sb.read(FLAG), before, "the committed flag file, byte for byte");
    let j = journal(&sb);
    assert_eq!(j["migrations"][0]["state"], "completed");
    assert_eq!(j["migrations"][1]["state"], "rolled-back");
}

/// An edit of the flag file made while the sync runs is never reverted by
/// the automatic rollback: it refuses, and its way out works.
#[test]
fn the_automatic_rollback_never_overwrites_an_edit_made_during_the_sync() {
    let Some((bao, sb)) = start() else {
        return;
    };
    let before = sb.read(FLAG);
    let mut slow_failure = sync_fails();
    slow_failure["sleep"] = json!(3);
    sb.scenario(cluster("k3d-ameide", eso(0, healthy()), json!([slow_failure, {"exit": 0}])));
    let child = sb
        .command(&["secrets", "migrate", "--to", "vault", "--yes"])
        .env("VAULT_ADDR", &bao.addr)
        .env("VAULT_TOKEN", &bao.token)
        .env("EXTERNALSECRET_WAIT_SLEEP", "0.1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sb.fake_dir.join("helmfile.pid").exists() {
        assert!(Instant::now() < deadline, "the migration never reached sync");
        std::thread::sleep(Duration::from_millis(20));
    }
    let edited = format!("{}# edited during the sync\n", sb.read(FLAG));
    sb.write(FLAG, &edited);
    let run: Run = child.wait_with_output().unwrap().into();
    let run = run.code(1);
    assert_contains(
        &run.stderr,
        &format!(
            "The automatic rollback failed too, at rollback-restore: {FLAG} changed after the flip (checksum "
        ),
    );
    assert_contains(
        &run.stderr,
        &format!(
            "): it was edited during the migration, so the rollback does not overwrite it. Keep what you need of \
             the edit (`git diff -- {FLAG}` shows it), then put back the file the migration started from: `git \
             checkout -- {FLAG}`\n"
        ),
    );
    assert_eq!(sb.read(FLAG), edited, "the edit is kept");
    let m = &journal(&sb)["migrations"][0];
    assert_eq!(m["state"], "rollback-failed");
    assert_eq!(steps(m).last().unwrap(), "rollback-restore failed");
    // The way out: put the file back, then the command named last.
    shell(&sb, &format!("git checkout -- {FLAG}")).ok();
    run_named(&sb, &bao, &run.stderr).ok();
    assert_eq!(sb.read(FLAG), before);
    assert_eq!(journal(&sb)["migrations"][0]["state"], "rolled-back");
}

/// An edit of the flag file made after the migration started (here while
/// the seed writes) is never overwritten by the flip: it refuses before
/// the cluster changed, and the same command works once the edit is
/// committed.
#[test]
fn the_flip_never_overwrites_an_edit_made_since_the_migration_started() {
    let Some((bao, sb)) = start() else {
        return;
    };
    sb.scenario(local(healthy()));
    let flag = sb.path(FLAG);
    let edits = std::sync::atomic::AtomicUsize::new(0);
    let proxy = crate::support::Proxy::start(
        bao.port,
        std::sync::Arc::new(move |req| {
            if crate::support::is_data_write(req)
                && edits.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0
            {
                let text = std::fs::read_to_string(&flag).unwrap();
                std::fs::write(&flag, format!("{text}# edited during the seed\n")).unwrap();
            }
            crate::support::Action::Forward
        }),
    );
    let env = [
        ("VAULT_ADDR", proxy.addr()),
        ("VAULT_TOKEN", bao.token.clone()),
        ("EXTERNALSECRET_WAIT_SLEEP", "0.1".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = sb.xtask_env(&["secrets", "migrate", "--to", "vault", "--yes"], &env).code(1);
    assert_contains(
        &run.stderr,
        &format!("migrate of local to vault stopped at flip: {FLAG} changed since the migrate started (checksum "),
    );
    assert_contains(
        &run.stderr,
        &format!(
            "): it was edited meanwhile, so the flip does not touch it. Commit the edit or drop it (`git diff -- \
             {FLAG}` shows it), then run the same command again\nNothing in the cluster changed"
        ),
    );
    let edited = sb.read(FLAG);
    assert!(
        edited.ends_with("# edited during the seed\n") && edited.contains("  provider: azure\n"),
        "{edited}"
    );
    assert!(argvs(&sb, "helmfile").is_empty(), "nothing synced");
    let m = &journal(&sb)["migrations"][0];
    assert_eq!(m["state"], "failed");
    assert_eq!(steps(m), ["preflight ok", "seed ok", "coverage ok", "flip failed"]);
    // Committed, the edit is where the next migration starts from.
    commit(&sb, "the edit");
    let run = sb.xtask_env(&["secrets", "migrate", "--to", "vault", "--yes"], &env).ok();
    assert_contains(&run.stdout, "migrated local to vault");
    assert_eq!(sb.read(FLAG), edited.replace("  provider: azure\n", "  provider: vault\n"));
}

/// The advice around an uncommitted flag file works when followed. It
/// used to say "commit or stash it first", and a stash led to "already
/// uses azure: nothing to migrate" while the cluster was still on vault.
#[test]
fn every_way_out_of_an_uncommitted_flag_file_works() {
    let Some((bao, sb)) = start() else {
        return;
    };
    let before = sb.read(FLAG);
    sb.scenario(local(healthy()));
    to_vault(&sb, &bao).ok();
    let store_provider = |sb: &Sandbox| {
        let o = sb.cluster().object("ClusterSecretStore", None, "ameide-vault").unwrap();
        if o["spec"]["provider"]["vault"].is_object() {
            "vault"
        } else {
            "azure"
        }
    };
    // To azure: through the fake `az`, to a per-developer Key Vault.
    let to_azure = || {
        sb.xtask_env(
            &["secrets", "migrate", "--to", "azure", "--yes"],
            &[
                ("VAULT_ADDR", &bao.addr),
                ("VAULT_TOKEN", &bao.token),
                ("AZURE_KEYVAULT_NAME", "kv-dev-alice"),
                ("EXTERNALSECRET_WAIT_SLEEP", "0.1"),
            ],
        )
    };
    // The journal made the uncommitted flip: a migration back starts from it.
    to_azure().ok();
    assert_eq!(sb.read(FLAG), before);
    assert_eq!(store_provider(&sb), "azure");

    // An edit no migration made: commit it, as the message says.
    let tweaked = format!("{before}# my local tweak\n");
    sb.write(FLAG, &tweaked);
    let run = to_vault(&sb, &bao).code(1);
    assert_contains(
        &run.stderr,
        &format!(
            "{FLAG} has an uncommitted change that no migration in the journal made: commit it first (`git commit \
             --message \"secrets flag\" -- {FLAG}`), so the migration's edit is the only one, then run the same \
             command again"
        ),
    );
    assert!(!run.stderr.contains("stash"), "{}", run.stderr);
    let start = run.stderr.find("(`git commit").unwrap() + 2;
    let commit = &run.stderr[start..start + run.stderr[start..].find('`').unwrap()];
    // (as a developer's git would, with who they are)
    std::fs::write(sb.home.join(".gitconfig"), "[user]\n\tname = t\n\temail = t@t.invalid\n")
        .unwrap();
    shell(&sb, commit).ok();
    to_vault(&sb, &bao).ok();
    assert_eq!(store_provider(&sb), "vault");

    // Without a journal that shows the cluster synced to the flag, a flag
    // that already says the target is not "nothing to migrate".
    shell(&sb, &format!("git checkout -- {FLAG} && rm {JOURNAL}")).ok();
    assert!(sb.read(FLAG).contains("  provider: azure\n"));
    let run = to_azure().ok();
    assert_contains(
        &run.stdout,
        "the flag file already says azure, but the journal does not show the cluster synced to it: `cargo xtask \
         secrets rollback --to azure --yes` syncs layer 15 and waits for the ExternalSecrets",
    );
    assert_eq!(store_provider(&sb), "vault", "as the run said, nothing changed");
    run_named(&sb, &bao, &run.stdout).ok();
    assert_eq!(store_provider(&sb), "azure");
    let run = to_azure().ok();
    assert_contains(&run.stdout, "local already uses azure: nothing to migrate");
}
