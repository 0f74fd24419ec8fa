//! What must never happen, each shown by a test that fails when it does:
//! a value in the output of a drift, a conflict or a failed write (text and
//! JSON, standard output and error, the files under `.local/secrets/`, any
//! argv or stdin the fakes recorded), on Vault and on Azure Key Vault; ESO's
//! policy on a KV v1 mount letting it write; `seed --dry-run` writing to
//! Vault.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::support::{
    assert_contains, block_on, fixtures, recording, sha256_hex, shown_checksum, with_bao, Action,
    OpenBao, Proxy, Run, Sandbox,
};

/// In the fixtures file, in the store after a hand edit, in the overrides,
/// and a fixture that changes to one.
const IN_FIXTURE: &str = "CANARY-fixture-3e1d0c7b";
const IN_STORE: &str = "CANARY-hand-edit-9a2f4e61";
const IN_OVERRIDE: &str = "CANARY-override-58c0b7d2";
const IN_UPDATE: &str = "CANARY-update-d41b6a03";
const CANARIES: [&str; 4] = [IN_FIXTURE, IN_STORE, IN_OVERRIDE, IN_UPDATE];

/// The sandbox's fixtures with a canary in `graph-db-password`, and a
/// canary override for `redis-password`.
fn plant(sb: &Sandbox) {
    let mut fx = fixtures(sb);
    fx.insert("graph-db-password".into(), IN_FIXTURE.into());
    sb.write(
        "scripts/azure/default-local-keyvault-secrets.json",
        &serde_json::to_string_pretty(&fx).unwrap(),
    );
    sb.write(".local/secrets/overrides.json", &json!({"redis-password": IN_OVERRIDE}).to_string());
    // Failed writes fail fast.
    sb.write(".local/secrets.toml", "[vault]\nretries = 1\n");
}

/// The fixture of `keycloak-admin-password` changes to a canary: the seed
/// then updates it.
fn change_a_fixture(sb: &Sandbox) {
    let mut fx = fixtures(sb);
    fx.insert("keycloak-admin-password".into(), IN_UPDATE.into());
    sb.write(
        "scripts/azure/default-local-keyvault-secrets.json",
        &serde_json::to_string_pretty(&fx).unwrap(),
    );
}

/// No canary, nor its full sha256, in any output, in the files under
/// `.local/secrets/` that are not the user's values, or in what the fakes
/// recorded.
fn assert_no_canary(sb: &Sandbox, outputs: &[String]) {
    let mut texts: Vec<(String, String)> =
        outputs.iter().enumerate().map(|(i, o)| (format!("output {i}"), o.clone())).collect();
    let mut files = Vec::new();
    walk(&sb.path(".local/secrets"), &mut files);
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if name == "overrides.json" || name == "store.json" {
            continue;
        }
        texts.push((f.display().to_string(), std::fs::read_to_string(&f).unwrap_or_default()));
    }
    for c in sb.calls() {
        texts.push((format!("{} argv", c.tool), c.argv.join(" ")));
        texts.push((format!("{} stdin", c.tool), c.stdin));
    }
    for (what, text) in &texts {
        for canary in CANARIES {
            assert!(!text.contains(canary), "{canary} in {what}:\n{text}");
            assert!(
                !text.contains(&sha256_hex(canary)),
                "the sha256 of {canary} in {what}:\n{text}"
            );
        }
    }
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// A proxy in front of `bao` that answers `status` to every data write of
/// `names`, as a Vault that refuses it would.
fn failing_writes(bao: &OpenBao, names: &[&str], status: u16) -> Proxy {
    let paths: Vec<String> = names.iter().map(|n| format!("/v1/secret/data/{n}")).collect();
    Proxy::start(
        bao.port,
        Arc::new(move |req| {
            if req.method == "POST" && paths.contains(&req.path) {
                Action::Reply {
                    status,
                    headers: vec![("Content-Type".into(), "application/json".into())],
                    body: r#"{"errors":["1 error occurred:\n\t* storage refused the write"]}"#
                        .into(),
                }
            } else {
                Action::Forward
            }
        }),
    )
}

fn run_all(sb: &Sandbox, env: &[(&str, &str)], runs: &[&[&str]], outputs: &mut Vec<String>) {
    for args in runs {
        let run = sb.xtask_env(args, env);
        assert!(run.code <= 3, "{args:?}: {}", run.all());
        outputs.push(run.all());
    }
}

#[test]
fn a_canary_never_shows_in_a_drift_a_conflict_or_a_failed_write_on_vault() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    plant(&sb);
    let seeded = sb.xtask_env(&["secrets", "seed", "--provider", "vault"], &bao.env()).ok();
    let mut outputs = vec![seeded.all()];
    // Someone puts another canary where the fixture's was.
    bao.hand_edit("graph-db-password", IN_STORE);
    change_a_fixture(&sb);

    let env = bao.env();
    run_all(
        &sb,
        &env,
        &[
            &["secrets", "check", "--live", "--provider", "vault"],
            &["secrets", "check", "--live", "--provider", "vault", "--verbose"],
            &["secrets", "check", "--live", "--provider", "vault", "--output", "json"],
            &["secrets", "check", "--live", "--provider", "vault", "--output", "junit"],
            &["secrets", "check", "--live", "--provider", "vault", "--fail-on", "drift"],
            &["secrets", "seed", "--provider", "vault", "--dry-run", "--verbose"],
            &["secrets", "seed", "--provider", "vault", "--output", "json", "--dry-run"],
        ],
        &mut outputs,
    );
    let drift = &outputs[1];
    assert_contains(drift, "DRIFT");
    assert_contains(drift, "graph-db-password");
    // The store's checksum, keyed with this machine's key; never the plain sha256's digits.
    assert_contains(drift, &shown_checksum(&sb, IN_STORE));
    assert!(outputs.iter().all(|o| !o.contains(&sha256_hex(IN_STORE)[..8])), "{drift}");
    assert_contains(&outputs[6], "conflict   graph-db-password");

    // The writes fail: the update, and the conflict forced.
    let refusing = failing_writes(&bao, &["keycloak-admin-password", "graph-db-password"], 500);
    let env = [("VAULT_ADDR", refusing.addr()), ("VAULT_TOKEN", bao.token.clone())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for args in [
        &["secrets", "seed", "--provider", "vault", "--force", "--verbose"][..],
        &["secrets", "seed", "--provider", "vault", "--force", "--output", "json"][..],
    ] {
        let run = sb.xtask_env(args, &env);
        assert_ne!(run.code, 0, "{}", run.all());
        assert_contains(&run.all(), "storage refused the write");
        outputs.push(run.all());
    }
    // A refusal (403) stops the run.
    let forbidding = failing_writes(&bao, &["keycloak-admin-password"], 403);
    let run = sb.xtask_env(
        &["secrets", "seed", "--provider", "vault", "--force"],
        &[("VAULT_ADDR", &forbidding.addr()), ("VAULT_TOKEN", &bao.token)],
    );
    assert_ne!(run.code, 0, "{}", run.all());
    outputs.push(run.all());
    assert_no_canary(&sb, &outputs);
}

#[test]
fn a_failed_write_names_the_entry_and_the_cause_but_not_the_value() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    plant(&sb);
    // A server error (retried, then given up) and a refusal Vault answers
    // at once (400): the two ways a write's failure is told.
    let refusing = Proxy::start(
        bao.port,
        Arc::new(|req| {
            let status = match req.path.as_str() {
                "/v1/secret/data/graph-db-password" => 500,
                "/v1/secret/data/redis-password" => 400,
                _ => return Action::Forward,
            };
            if req.method != "POST" {
                return Action::Forward;
            }
            Action::Reply {
                status,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: r#"{"errors":["1 error occurred:\n\t* storage refused the write"]}"#.into(),
            }
        }),
    );
    let env = [("VAULT_ADDR", refusing.addr()), ("VAULT_TOKEN", bao.token.clone())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = sb.xtask_env(&["secrets", "seed", "--provider", "vault"], &env);
    assert_eq!(run.code, 3, "the rest landed: {}", run.all());
    for (name, code) in [("graph-db-password", "HTTP 500"), ("redis-password", "HTTP 400")] {
        let line = run
            .stderr
            .lines()
            .find(|l| l.contains(name) && l.contains(code))
            .unwrap_or_else(|| panic!("no {code} line for {name}:\n{}", run.stderr));
        assert_contains(line, "storage refused the write");
    }
    let json = sb.xtask_env(&["secrets", "seed", "--provider", "vault", "--output", "json"], &env);
    let report: Value =
        serde_json::from_str(&json.stdout).unwrap_or_else(|e| panic!("{e}: {}", json.all()));
    let reasons = report["not_written"].to_string();
    assert_contains(&reasons, "graph-db-password");
    assert_contains(&reasons, "redis-password");
    for out in [run.all(), json.all()] {
        for canary in [IN_FIXTURE, IN_OVERRIDE] {
            assert!(!out.contains(canary), "{canary}:\n{out}");
            assert!(!out.contains(&sha256_hex(canary)), "{canary}'s sha256:\n{out}");
        }
    }
}

#[test]
fn a_canary_never_shows_in_a_drift_a_conflict_or_a_failed_write_on_azure() {
    let sb = Sandbox::new();
    plant(&sb);
    let env = [("AZURE_KEYVAULT_NAME", "kv-dev-erin")];
    let seeded = sb.xtask_env(&["secrets", "seed", "--provider", "azure"], &env).ok();
    let mut outputs = vec![seeded.all()];
    // Someone puts another canary where the fixture's was.
    let state = sb.fake_dir.join("keyvault.json");
    let mut kv: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    kv["kv-dev-erin"]["graph-db-password"]["value"] = json!({"value": IN_STORE}).to_string().into();
    std::fs::write(&state, kv.to_string()).unwrap();
    change_a_fixture(&sb);
    run_all(
        &sb,
        &env,
        &[
            &["secrets", "check", "--live", "--provider", "azure", "--verbose"],
            &["secrets", "check", "--live", "--provider", "azure", "--output", "json"],
            &["secrets", "seed", "--provider", "azure", "--verbose"],
            &["secrets", "seed", "--provider", "azure", "--output", "json"],
        ],
        &mut outputs,
    );
    assert_contains(&outputs[1], "DRIFT");
    assert_contains(&outputs[3], "conflict   graph-db-password");
    // Key Vault refuses the writes.
    sb.scenario(json!({"az": {"fail": {"set": "(Forbidden) The user does not have secrets set permission on key vault 'kv-dev-erin'."}}}));
    for args in [
        &["secrets", "seed", "--provider", "azure", "--force"][..],
        &["secrets", "seed", "--provider", "azure", "--force", "--output", "json"][..],
    ] {
        let run = sb.xtask_env(args, &env);
        assert_ne!(run.code, 0, "{}", run.all());
        assert_contains(&run.all(), "does not have secrets set permission");
        outputs.push(run.all());
    }
    assert_no_canary(&sb, &outputs);
}

#[test]
fn esos_policy_on_a_kv1_mount_cannot_write() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    let out = bao.bao(&["secrets", "enable", "-path=kv1", "-version=1", "kv"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Layer 15 points the store at the KV v1 mount.
    let layer = "infra/kubernetes/environments/local/platform/15-secrets.values.yaml";
    let values = sb.read(layer);
    assert!(values.contains("    path: secret\n    version: v2\n"), "{values}");
    sb.write(
        layer,
        &values.replace("    path: secret\n    version: v2\n", "    path: kv1\n    version: v1\n"),
    );
    sb.xtask_env(&["secrets", "seed", "--provider", "vault", "--mount", "kv1"], &bao.env()).ok();
    let out = bao.bao(&["token", "create", "-policy=external-secrets", "-field=token"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let eso = crate::support::vault_client(&bao.addr, String::from_utf8_lossy(&out.stdout).trim());
    // ESO reads...
    let read: HashMap<String, String> =
        block_on(vaultrs::kv1::get(&eso, "kv1", "graph-db-url")).expect("ESO reads a key");
    assert!(read["value"].starts_with("postgres://"));
    // ...and may write nothing: not a key it reads, not a new one, not the
    // seed's record.
    for name in ["graph-db-url", "a-new-key", "_cargo-xtask-secrets"] {
        let mut data = HashMap::new();
        data.insert("value", "written-by-eso");
        let wrote = block_on(vaultrs::kv1::set(&eso, "kv1", name, &data));
        assert!(
            format!("{wrote:?}").contains("403"),
            "ESO's policy let it write kv1/{name}: {wrote:?}"
        );
    }
    let kept: HashMap<String, String> =
        block_on(vaultrs::kv1::get(&bao.client(), "kv1", "graph-db-url")).unwrap();
    assert_eq!(kept["value"], read["value"]);
}

/// Every entry of the KV v2 mount: its versions and metadata as Vault
/// keeps them (vaultrs, not our code).
fn mount_state(bao: &OpenBao) -> BTreeMap<String, String> {
    let client = bao.client();
    let names = block_on(vaultrs::kv2::list(&client, "secret", "")).unwrap_or_default();
    names
        .into_iter()
        .map(|n| {
            let meta = block_on(vaultrs::kv2::read_metadata(&client, "secret", &n)).unwrap();
            let state = format!(
                "v{} updated {} custom {:?}",
                meta.current_version,
                meta.updated_time,
                meta.custom_metadata.map(|m| m.into_iter().collect::<BTreeMap<_, _>>())
            );
            (n, state)
        })
        .collect()
}

fn acl_policies(bao: &OpenBao) -> String {
    String::from_utf8_lossy(&bao.bao(&["policy", "list"]).stdout).into_owned()
}

fn writes(seen: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    std::mem::take(&mut *seen.lock().unwrap())
        .into_iter()
        .filter(|c| !c.starts_with("GET ") && !c.starts_with("LIST "))
        .collect()
}

#[test]
fn seed_dry_run_writes_nothing_to_vault() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    let (proxy, seen) = recording(&bao);
    let dry = |sb: &Sandbox, extra: &[&str]| -> Run {
        let mut args = vec!["secrets", "seed", "--provider", "vault", "--dry-run"];
        args.extend_from_slice(extra);
        sb.xtask_env(&args, &[("VAULT_ADDR", &proxy.addr()), ("VAULT_TOKEN", &bao.token)])
    };
    // An empty Vault stays empty: no entry, no record, no policy for ESO.
    let policies = acl_policies(&bao);
    dry(&sb, &[]).ok();
    assert_eq!(writes(&seen), Vec::<String>::new());
    assert!(mount_state(&bao).is_empty(), "{:?}", mount_state(&bao));
    assert_eq!(acl_policies(&bao), policies);

    // A seeded one with something for every action: a changed fixture, a
    // hand edit, a deleted entry, a record to renew.
    sb.xtask_env(&["secrets", "seed", "--provider", "vault"], &bao.env()).ok();
    change_a_fixture(&sb);
    let client = bao.client();
    bao.hand_edit("redis-password", "edited-by-hand");
    block_on(vaultrs::kv2::delete_metadata(&client, "secret", "graph-db-password")).unwrap();
    let out = bao.bao(&[
        "kv",
        "metadata",
        "put",
        "-mount=secret",
        "-custom-metadata=owner=me",
        "graph-db-url",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = mount_state(&bao);
    let policies = acl_policies(&bao);
    writes(&seen);
    for extra in [&[][..], &["--force"][..], &["--output", "json"][..]] {
        let run = dry(&sb, extra);
        assert!(run.code <= 1, "{}", run.all());
        assert_contains(&run.all(), "graph-db-password");
        assert_eq!(writes(&seen), Vec::<String>::new(), "{extra:?}");
        assert_eq!(mount_state(&bao), before, "{extra:?}");
        assert_eq!(acl_policies(&bao), policies);
    }
    assert!(!before.contains_key("graph-db-password"));
}
