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
    sb.write(
        ".local/secrets/overrides.json",
        &format!("{{\"redis-password\": \"{canary}\"}}"),
    );
    // The first two calls are throttled.
    sb.scenario(serde_json::json!({"az": {"throttle": [true, true, false]}}));
    let env = [("AZURE_KEYVAULT_NAME", "kv-dev-alice")];
    let run = sb
        .xtask_env(&["secrets", "seed", "--provider", "azure"], &env)
        .ok();
    assert!(
        run.stdout.contains("-> azure key vault kv-dev-alice"),
        "{}",
        run.stdout
    );
    let kv = keyvault(&sb);
    let fixtures: serde_json::Value =
        serde_json::from_str(&sb.read("scripts/azure/default-local-keyvault-secrets.json"))
            .unwrap();
    for (name, value) in fixtures.as_object().unwrap() {
        let want = if name == "redis-password" {
            canary
        } else {
            value.as_str().unwrap()
        };
        assert_eq!(kv["kv-dev-alice"][name]["value"], want, "{name}");
        assert_eq!(
            kv["kv-dev-alice"][name]["tags"]["managed-by"],
            "cargo-xtask-secrets"
        );
    }
    let calls = sb.calls();
    let sets: Vec<_> = calls
        .iter()
        .filter(|c| c.argv.get(2).map(String::as_str) == Some("set"))
        .collect();
    assert_eq!(sets.len(), 47);
    for c in &calls {
        let argv = c.argv.join(" ");
        assert!(
            !argv.contains(canary) && !argv.contains("local-graph-db-pass"),
            "a value in argv: {argv}"
        );
        assert!(
            !c.stdin.contains(canary),
            "a value on az's stdin: {}",
            c.stdin
        );
    }
    assert!(!run.all().contains(canary));

    let before = sb.calls().len();
    sb.xtask_env(&["secrets", "seed", "--provider", "azure"], &env)
        .ok();
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
    assert!(
        run.stderr.contains("the staging environment uses it"),
        "{}",
        run.stderr
    );
    assert!(sb.calls().is_empty(), "az was never called");
    let run = sb
        .xtask(&["secrets", "seed", "--provider", "azure"])
        .code(1);
    assert!(run.stderr.contains("AZURE_KEYVAULT_NAME"), "{}", run.stderr);
}
