//! `secrets check`: static and rendered coverage, and --live drift.

use std::collections::HashMap;

use crate::support::{assert_contains, block_on, with_bao, Sandbox};

fn tree(sb: &Sandbox, name: &str) -> String {
    sb.path(&format!("fixtures/check/{name}")).display().to_string()
}

#[test]
fn shipped_fixtures_cover_the_shipped_infra_statically() {
    let sb = Sandbox::new();
    let run = sb.xtask(&["secrets", "check"]).ok();
    assert_contains(&run.stdout, "0 missing, 0 wrong property");
    assert!(run.stdout.contains("PASS"), "{}", run.stdout);
}

#[test]
fn shipped_fixtures_cover_every_rendered_environment() {
    if !crate::support::require_tools(&["helm", "helmfile"]) {
        return;
    }
    let sb = Sandbox::new();
    for env in ["local", "staging", "production"] {
        let run =
            sb.xtask(&["secrets", "check", "--render", "--env", env, "--output", "json"]).ok();
        let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(report["mode"], "rendered");
        assert_eq!(report["failed"], false, "{env}: {}", run.stdout);
        assert!(
            report["external_secrets"].as_u64().unwrap() >= 20,
            "{env}: {}",
            report["external_secrets"]
        );
    }
}

#[test]
fn names_each_missing_key_with_every_reference() {
    let sb = Sandbox::new();
    let run = sb.xtask(&["secrets", "check", "--infra", &tree(&sb, "coverage")]).code(1);
    let out = &run.stdout;
    assert!(
        out.contains("MISSING (1)\n  graph-db-replica-password: not in the fixtures\n"),
        "{out}"
    );
    assert!(out.contains("fixtures/check/coverage/manifests/externalsecrets.yaml:15  ameide/db-migrations-credentials"), "{out}");
    assert!(out.contains("fixtures/check/coverage/values/platform/azure-keyvault-secrets.yaml:13  ameide/graph-db-credentials"), "{out}");
    assert!(out.contains("redis-password: reads property \"password\""), "{out}");
    assert!(out.contains("^tempo-admin-: dataFrom.find matches no fixture"), "{out}");
    assert!(out.contains("team-a/team-tokens  uses SecretStore/team-a-store"), "{out}");
    assert!(
        !out.contains("team-a-token-not-in-fixtures"),
        "out of scope keys are not required: {out}"
    );
    assert_contains(&run.stderr, "coverage check failed: 1 missing, 1 wrong property");

    let run = sb
        .xtask(&["secrets", "check", "--infra", &tree(&sb, "coverage"), "--output", "junit"])
        .code(1);
    assert!(run.stdout.contains("<testcase classname=\"secrets.local.static\" name=\"graph-db-replica-password\"><failure"), "{}", run.stdout);
    let run = sb
        .xtask(&["secrets", "check", "--infra", &tree(&sb, "coverage"), "--output", "json"])
        .code(1);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let missing =
        report["findings"].as_array().unwrap().iter().find(|f| f["status"] == "missing").unwrap();
    assert_eq!(missing["sites"].as_array().unwrap().len(), 2);
}

#[test]
fn installed_false_bundles_do_not_count_when_rendered() {
    if !crate::support::require_tools(&["helm", "helmfile"]) {
        return;
    }
    let sb = Sandbox::new();
    let infra = tree(&sb, "installed-toggle");
    let run = sb.xtask(&["secrets", "check", "--infra", &infra, "--render"]).ok();
    assert!(!run.stdout.contains("only-in-a-disabled-bundle"), "{}", run.stdout);
    assert!(run.stdout.contains("1 required key;"), "{}", run.stdout);
    // The static scan cannot evaluate toggles, so it counts the key.
    let run = sb.xtask(&["secrets", "check", "--infra", &infra]).code(1);
    assert_contains(&run.stdout, "only-in-a-disabled-bundle: not in the fixtures");
    // Enabling the bundle makes the render see it, with release and environment.
    sb.write(
        "fixtures/check/installed-toggle/environments/local/values.yaml",
        "bundles:\n  enabled:\n    installed: true\n  disabled:\n    installed: true\n",
    );
    let run = sb.xtask(&["secrets", "check", "--infra", &infra, "--render"]).code(1);
    assert_contains(&run.stdout, "[release disabled-bundle, env local]");
}

#[test]
fn bad_input_is_an_error_never_a_pass() {
    let sb = Sandbox::new();
    let run = sb.xtask(&["secrets", "check", "--infra", &tree(&sb, "malformed")]).code(1);
    assert_contains(&run.stderr, "fixtures/check/malformed/values/broken.yaml:6:");
    assert!(run.stderr.contains("malformed YAML"), "{}", run.stderr);
    let run = sb.xtask(&["secrets", "check", "--infra", &tree(&sb, "bad-api")]).code(1);
    assert_contains(&run.stderr, "unknown apiVersion \"external-secrets.io/v2alpha1\"");
    if crate::support::require_tools(&["helm", "helmfile"]) {
        let run = sb
            .xtask(&["secrets", "check", "--infra", &tree(&sb, "broken-chart"), "--render"])
            .code(1);
        assert!(
            run.stderr.contains(
                "rendering fixtures/check/broken-chart/helmfiles/10-broken.yaml for local"
            ),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("broken/templates/es.yaml"),
            "the chart is named: {}",
            run.stderr
        );
        assert_eq!(run.stderr.matches("nil pointer").count(), 1, "said once: {}", run.stderr);
    }
}

#[test]
fn live_check_finds_drift_missing_entries_and_properties() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    let env = bao.env();
    let run = sb.xtask_env(&["secrets", "check", "--live", "--provider", "vault"], &env).code(1);
    assert!(
        run.stdout.contains("graph-db-url: not in the store (vault"),
        "before seeding: {}",
        run.stdout
    );

    sb.xtask_env(&["secrets", "seed", "--provider", "vault"], &env).ok();
    sb.xtask_env(
        &["secrets", "check", "--live", "--provider", "vault", "--fail-on", "missing,drift"],
        &env,
    )
    .ok();

    let client = bao.client();
    let mut edited = HashMap::new();
    edited.insert("value", "changed-by-hand");
    block_on(vaultrs::kv2::set(&client, "secret", "graph-db-url", &edited)).unwrap();
    let mut wrong = HashMap::new();
    wrong.insert("password", "no-value-property");
    block_on(vaultrs::kv2::set(&client, "secret", "redis-password", &wrong)).unwrap();

    let run = sb
        .xtask_env(
            &["secrets", "check", "--live", "--provider", "vault", "--fail-on", "drift"],
            &env,
        )
        .code(1);
    assert_contains(&run.stdout, "DRIFT (store differs from fixtures) (1)\n  graph-db-url: store ");
    assert!(
        run.stdout.contains(
            "redis-password: the store's entry has no string property \"value\" (has: password)"
        ),
        "{}",
        run.stdout
    );
    assert!(!run.all().contains("changed-by-hand") && !run.all().contains("no-value-property"));
    // Drift alone does not fail the default gate; the missing property does.
    let run = sb.xtask_env(&["secrets", "check", "--live", "--provider", "vault"], &env).code(1);
    assert_contains(&run.stderr, "1 missing property (store)");
}

/// The static scan reads ExternalSecrets written literally in chart
/// templates (as YAML, or line by line where the template is not YAML);
/// keys the template language builds are left for --render.
#[test]
fn the_static_scan_finds_literal_keys_in_chart_templates() {
    let sb = Sandbox::new();
    let run = sb
        .xtask(&["secrets", "check", "--infra", &tree(&sb, "chart-templates"), "--verbose"])
        .code(1);
    let out = &run.stdout;
    let at = "fixtures/check/chart-templates/charts/app/templates";
    for (key, site) in [
        ("app-template-only-key", format!("{at}/externalsecret.yaml:16")),
        ("app-odd-template-key", format!("{at}/odd.yaml:10")),
        ("app-helper-key", format!("{at}/_helpers.tpl:16")),
    ] {
        assert!(
            out.contains(&format!("  {key}: not in the fixtures\n      {site}  ")),
            "{key}: {out}"
        );
    }
    assert!(out.contains("OK (1)\n  redis-password\n"), "{out}");
    assert!(
        out.contains("3 ExternalSecrets on ClusterSecretStore/ameide-vault, 4 required keys"),
        "{out}"
    );
    assert!(!out.contains("templated__") && !out.contains("built-by-the-template"), "{out}");
    // Unused fixtures: 20 names without --verbose.
    let run = sb.xtask(&["secrets", "check", "--infra", &tree(&sb, "chart-templates")]).code(1);
    assert!(
        run.stdout.contains("UNUSED FIXTURES (info) (46)")
            && run.stdout.contains("  (and 26 more; --verbose"),
        "{}",
        run.stdout
    );
}

#[test]
fn an_infra_tree_without_external_secrets_warns() {
    let sb = Sandbox::new();
    sb.write("empty-infra/values/readme.yaml", "nothing: here\n");
    let run = sb.xtask(&["secrets", "check", "--infra", "empty-infra"]).ok();
    assert_contains(&run.stderr, "warning: no ExternalSecret found in empty-infra (1 file read)");
    let run = sb.xtask(&["secrets", "check"]).ok();
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
}

/// The command in backticks on the advice line that names `key`, as args
/// after `cargo xtask`.
fn advised(stderr: &str, key: &str) -> Vec<String> {
    let line = stderr
        .lines()
        .find(|l| {
            l.starts_with("  ")
                && l.split(": ")
                    .next()
                    .is_some_and(|names| names.trim().split(", ").any(|n| n == key))
        })
        .unwrap_or_else(|| panic!("no advice for {key}:\n{stderr}"));
    let cmd = line
        .split('`')
        .skip(1)
        .step_by(2)
        .find_map(|c| c.strip_prefix("cargo xtask "))
        .unwrap_or_else(|| panic!("no command in: {line}"));
    cmd.split_whitespace().map(String::from).collect()
}

/// Each kind of failure gets the advice that fixes it (it used to be "add
/// the keys, then seed" for all: `seed` answers a drift or a missing
/// property with "conflict", and unused fixtures need removing), and the
/// check passes once it is followed.
#[test]
fn each_failure_kind_gets_advice_that_works_when_followed() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    let env = bao.env();
    let run_env = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sb.xtask_env(&args, &env)
    };
    let fixtures_file = "scripts/azure/default-local-keyvault-secrets.json";
    let edit_fixtures = |f: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let mut fixtures = crate::support::fixtures(&sb);
        f(&mut fixtures);
        sb.write(fixtures_file, &serde_json::to_string_pretty(&fixtures).unwrap());
    };

    // Not in the fixtures, and a reference to the wrong property.
    let infra = tree(&sb, "coverage");
    let run = sb.xtask(&["secrets", "check", "--infra", &infra]).code(1);
    assert_contains(
        &run.stderr,
        "coverage check failed: 1 missing, 1 wrong property. To fix it:\n  graph-db-replica-password: not in the \
         fixtures: add them to scripts/azure/default-local-keyvault-secrets.json (or fix the references that name \
         them), then `cargo xtask secrets seed`\n  redis-password: fix the references shown above: the store keeps \
         each secret under the property `value` (`remoteRef.property: value`)\n",
    );
    edit_fixtures(&|f| {
        f.insert("graph-db-replica-password".into(), "replica-local".into());
    });
    let values = "fixtures/check/coverage/values/platform/azure-keyvault-secrets.yaml";
    sb.write(values, &sb.read(values).replace("property: password", "property: value"));
    sb.xtask(&["secrets", "check", "--infra", &infra]).ok();

    // Not in the store: the seed it names writes them.
    let live = |extra: &[&str]| {
        let mut args = vec!["secrets", "check", "--live", "--provider", "vault"];
        args.extend_from_slice(extra);
        sb.xtask_env(&args, &env)
    };
    let run = live(&[]).code(1);
    let seed = advised(&run.stderr, "graph-db-url");
    assert_eq!(seed, ["secrets", "seed", "--provider", "vault"]);
    assert_contains(
        &run.stderr,
        "not in the store: `cargo xtask secrets seed --provider vault` writes them",
    );
    run_env(&seed).ok();
    live(&["--fail-on", "missing,drift"]).ok();

    // Drift: keep the store's value in the overrides, or write the fixtures'.
    let client = bao.client();
    let set = |key: &str, property: &str, value: &str| {
        let mut data = HashMap::new();
        data.insert(property.to_string(), value.to_string());
        block_on(vaultrs::kv2::set(&client, "secret", key, &data)).unwrap();
    };
    set("graph-db-url", "value", "changed-by-hand");
    let run = live(&["--fail-on", "drift"]).code(1);
    assert_contains(
        &run.stderr,
        "  graph-db-url: the store's values differ from the fixtures: to keep yours, put them in \
         .local/secrets/overrides.json; to use the fixtures', `cargo xtask secrets seed --provider vault --force` \
         writes them over every entry changed outside the seed",
    );
    let force = advised(&run.stderr, "graph-db-url");
    sb.write(".local/secrets/overrides.json", "{\"graph-db-url\": \"changed-by-hand\"}");
    live(&["--fail-on", "drift"]).ok();
    std::fs::remove_file(sb.path(".local/secrets/overrides.json")).unwrap();
    live(&["--fail-on", "drift"]).code(1);
    run_env(&force).ok();
    live(&["--fail-on", "missing,drift"]).ok();

    // A missing property: only --force rewrites an entry the seed did not write.
    set("redis-password", "password", "no-value-property");
    let run = live(&[]).code(1);
    assert_contains(
        &run.stderr,
        "  redis-password: the store's entries lack a string `value` and were not written by the seed, so `seed` \
         keeps them: `cargo xtask secrets seed --provider vault --force` writes the fixtures over them (and over \
         every other entry changed outside the seed)",
    );
    let seed_plain =
        run_env(&["secrets".into(), "seed".into(), "--provider".into(), "vault".into()]);
    assert_contains(&seed_plain.all(), "conflict");
    run_env(&advised(&run.stderr, "redis-password")).ok();
    live(&["--fail-on", "missing,drift"]).ok();

    // Unused fixtures (the one added above among them): remove them.
    let run = sb.xtask(&["secrets", "check", "--fail-on", "unused"]).code(1);
    assert_contains(
        &run.stderr,
        "  graph-db-replica-password, threads-openai-api-key: nothing reads them: remove them from \
         scripts/azure/default-local-keyvault-secrets.json (or .local/secrets/overrides.json), or reference them",
    );
    edit_fixtures(&|f| {
        f.remove("graph-db-replica-password").unwrap();
        f.remove("threads-openai-api-key").unwrap();
    });
    sb.xtask(&["secrets", "check", "--fail-on", "unused"]).ok();
}
