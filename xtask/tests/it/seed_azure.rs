//! `secrets seed --provider azure` through a fake `az` that keeps a Key Vault
//! in a JSON file and refuses values in argv.

use crate::support::Sandbox;

fn keyvault(sb: &Sandbox) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(sb.fake_dir.join("keyvault.json")).unwrap())
        .unwrap()
}

#[test]
fn seeds_azure_through_private_files_and_retries_throttling() {
    let sb = Sandbox::new();
    let canary = "CANARY-az-1b2c3d";
    sb.write(".local/secrets/overrides.json", &format!("{{\"redis-password\": \"{canary}\"}}"));
    // The first two calls are throttled.
    sb.scenario(serde_json::json!({"az": {"throttle": [true, true, false]}}));
    let env = [("AZURE_KEYVAULT_NAME", "kv-dev-alice")];
    let run = sb.xtask_env(&["secrets", "seed", "--provider", "azure"], &env).ok();
    assert!(run.stdout.contains("-> azure key vault kv-dev-alice"), "{}", run.stdout);
    let kv = keyvault(&sb);
    let fixtures = serde_json::Value::Object(crate::support::fixtures(&sb));
    for (name, value) in fixtures.as_object().unwrap() {
        let want = if name == "redis-password" { canary } else { value.as_str().unwrap() };
        // Stored as {"value": ...}: ESO's Azure provider resolves
        // `remoteRef.property: value` as a JSON path into the secret.
        let doc: serde_json::Value =
            serde_json::from_str(kv["kv-dev-alice"][name]["value"].as_str().unwrap()).unwrap();
        assert_eq!(doc, serde_json::json!({ "value": want }), "{name}");
        assert_eq!(kv["kv-dev-alice"][name]["contentType"], "application/json");
        assert_eq!(kv["kv-dev-alice"][name]["tags"]["managed-by"], "cargo-xtask-secrets");
    }
    let calls = sb.calls();
    let sets: Vec<_> =
        calls.iter().filter(|c| c.argv.get(2).map(String::as_str) == Some("set")).collect();
    // Each fixture, and once the seed's key (of the digests in the tags).
    assert_eq!(sets.len(), 48);
    assert_eq!(
        sets.iter().filter(|c| c.argv.contains(&"cargo-xtask-secrets-key".to_string())).count(),
        1
    );
    for c in &calls {
        let argv = c.argv.join(" ");
        assert!(
            !argv.contains(canary) && !argv.contains("local-graph-db-pass"),
            "a value in argv: {argv}"
        );
        assert!(!c.stdin.contains(canary), "a value on az's stdin: {}", c.stdin);
    }
    assert!(!run.all().contains(canary));

    let before = sb.calls().len();
    sb.xtask_env(&["secrets", "seed", "--provider", "azure"], &env).ok();
    let new_sets = sb.calls()[before..]
        .iter()
        .filter(|c| c.argv.get(2).map(String::as_str) == Some("set"))
        .count();
    assert_eq!(new_sets, 0, "a no-op re-seed sets nothing");
}

#[test]
fn refuses_a_vault_that_a_shared_environment_uses() {
    let sb = Sandbox::new();
    let run = sb.xtask_env(
        &["secrets", "seed", "--provider", "azure"],
        &[("AZURE_KEYVAULT_NAME", "ameide-staging")],
    );
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("the staging environment uses it"), "{}", run.stderr);
    assert!(sb.calls().is_empty(), "az was never called");
    let run = sb.xtask(&["secrets", "seed", "--provider", "azure"]).code(1);
    assert!(run.stderr.contains("AZURE_KEYVAULT_NAME"), "{}", run.stderr);
}

#[test]
fn bare_values_from_the_legacy_script_are_rewritten_or_kept() {
    let sb = Sandbox::new();
    let fixtures = serde_json::Value::Object(crate::support::fixtures(&sb));
    // What sync-local-keyvault-secrets.sh left behind: bare values, no tags.
    let mut vault = serde_json::Map::new();
    for (name, value) in fixtures.as_object().unwrap() {
        vault.insert(name.clone(), serde_json::json!({"value": value, "version": 1}));
    }
    vault
        .insert("redis-password".into(), serde_json::json!({"value": "set-by-hand", "version": 2}));
    std::fs::write(
        sb.fake_dir.join("keyvault.json"),
        serde_json::json!({ "kv-dev-bob": vault }).to_string(),
    )
    .unwrap();
    let env = [("AZURE_KEYVAULT_NAME", "kv-dev-bob")];

    // check --live names what ESO would trip over.
    let check = sb.xtask_env(&["secrets", "check", "--live", "--provider", "azure"], &env).code(1);
    assert!(
        check.stdout.contains(
            "the store holds a bare value, not {\"value\": ...}, so the property lookup fails: re-seed to rewrite it"
        ),
        "{}",
        check.all()
    );

    let run = sb.xtask_env(&["secrets", "seed", "--provider", "azure"], &env).code(1);
    assert!(run.stdout.contains("update     graph-db-password"), "{}", run.stdout);
    assert!(run.stdout.contains("conflict   redis-password"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("holds a bare value where {\"value\": ...} belongs, and not the fixture's"),
        "the plan names the conflict and why: {}",
        run.stdout
    );
    let kv = keyvault(&sb);
    let doc: serde_json::Value =
        serde_json::from_str(kv["kv-dev-bob"]["graph-db-password"]["value"].as_str().unwrap())
            .unwrap();
    assert_eq!(doc["value"], fixtures["graph-db-password"]);
    assert_eq!(
        kv["kv-dev-bob"]["redis-password"]["value"], "set-by-hand",
        "a value that is not the fixture's is kept"
    );

    sb.xtask_env(&["secrets", "seed", "--provider", "azure", "--force"], &env).ok();
    let kv = keyvault(&sb);
    let doc: serde_json::Value =
        serde_json::from_str(kv["kv-dev-bob"]["redis-password"]["value"].as_str().unwrap())
            .unwrap();
    assert_eq!(doc["value"], fixtures["redis-password"]);
    let again =
        sb.xtask_env(&["secrets", "seed", "--provider", "azure", "--output", "json"], &env).ok();
    let report: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(report["counts"]["unchanged"], fixtures.as_object().unwrap().len());
    sb.xtask_env(&["secrets", "check", "--live", "--provider", "azure"], &env).ok();
}
