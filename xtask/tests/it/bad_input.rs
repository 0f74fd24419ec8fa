//! The bad-input corpus in fixtures/bad: each input fails with its own
//! specific error, and nothing is written.

use std::collections::BTreeMap;

use crate::support::{assert_contains, Sandbox};

#[test]
fn every_bad_fixture_fails_with_its_error_and_writes_nothing() {
    let sb = Sandbox::new();
    let dir = sb.path("fixtures/bad/fixtures");
    let expected: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "expected.json")
        .collect();
    assert_eq!(files.len(), expected.len(), "every corpus file has an expected error");
    let mut wrong = Vec::new();
    for (file, want) in &expected {
        let path = dir.join(file);
        let run = sb.seed_file(&["--fixtures", path.to_str().unwrap()]);
        if run.code != 1 || !run.stderr.contains(want.as_str()) {
            wrong.push(format!(
                "{file}: exit {} wanted {want:?}, got: {}",
                run.code,
                run.stderr.trim()
            ));
        }
        assert!(!sb.path(".local/secrets/store.json").exists(), "{file}: nothing is written");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Over the size limit: generated, not committed.
    let huge = sb.path("huge.json");
    let f = std::fs::File::create(&huge).unwrap();
    f.set_len(17 * 1024 * 1024).unwrap();
    let run = sb.seed_file(&["--fixtures", huge.to_str().unwrap()]).code(1);
    assert_contains(&run.stderr, "larger than the 16 MiB limit");
}

#[test]
fn yaml_bombs_are_refused_and_anchors_are_read() {
    let sb = Sandbox::new();
    let run = sb
        .xtask(&[
            "secrets",
            "check",
            "--infra",
            sb.path("fixtures/bad/manifests-bomb").to_str().unwrap(),
        ])
        .code(1);
    assert!(run.stderr.contains("YAML bomb"), "{}", run.stderr);
    let run = sb
        .xtask(&[
            "secrets",
            "check",
            "--infra",
            sb.path("fixtures/bad/manifests-anchors").to_str().unwrap(),
            "--verbose",
        ])
        .ok();
    // Both entries resolve their merged store and reference; the static scan
    // also counts the anchor's own definition (`ref:`), conservatively.
    assert_contains(
        &run.stdout,
        "3 ExternalSecrets on ClusterSecretStore/ameide-vault, 1 required key;",
    );
    assert_contains(&run.stdout, "OK (1)\n  graph-db-url");
    let json = sb
        .xtask(&[
            "secrets",
            "check",
            "--infra",
            sb.path("fixtures/bad/manifests-anchors").to_str().unwrap(),
            "--output",
            "json",
        ])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert!(
        v["out_of_scope"].as_array().unwrap().is_empty(),
        "merged secretStoreRef is read: {}",
        json.stdout
    );
}

#[test]
fn a_flag_file_without_exactly_one_provider_is_refused() {
    let sb = Sandbox::new();
    let flag = "infra/kubernetes/environments/local/platform/15-secrets.values.yaml";
    for (file, want) in [
        ("provider-missing.yaml", "`secrets.provider` is missing"),
        ("provider-duplicated.yaml", "`secrets.provider` appears 2 times (lines 2, 4)"),
    ] {
        let original = sb.read(flag);
        sb.write(flag, &sb.read(&format!("fixtures/bad/flags/{file}")));
        let run = sb.xtask(&["secrets", "migrate", "--to", "vault", "--dry-run"]).code(1);
        assert!(run.stderr.contains(want), "{file}: {}", run.stderr);
        let run = sb.xtask(&["secrets", "status"]).ok();
        assert!(run.stdout.contains("local        error:"), "{file}: {}", run.stdout);
        assert_eq!(sb.read(flag), sb.read(&format!("fixtures/bad/flags/{file}")), "untouched");
        sb.write(flag, &original);
    }
}

/// Every way of writing a shared environment's Azure Key Vault is refused
/// before `az` runs: the name, the host, the URL, spaces, any letter case.
#[test]
fn shared_azure_vaults_are_refused_however_they_are_spelled() {
    let sb = Sandbox::new();
    let expected: BTreeMap<String, String> =
        serde_json::from_str(&sb.read("fixtures/bad/shared-vault-names.json")).unwrap();
    let mut wrong = Vec::new();
    for (spelling, want) in &expected {
        let run = sb.xtask_env(
            &["secrets", "seed", "--provider", "azure", "--dry-run"],
            &[("AZURE_KEYVAULT_NAME", spelling)],
        );
        if run.code != 1 || !run.stderr.contains(want.as_str()) {
            wrong.push(format!(
                "{spelling:?}: exit {} wanted {want:?}, got: {}",
                run.code,
                run.all().trim()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(sb.calls().is_empty(), "az never ran: {:?}", sb.calls());
    // Your own vault, spelled as a URL, is used by its name.
    let run = sb
        .xtask_env(
            &["secrets", "seed", "--provider", "azure", "--dry-run"],
            &[("AZURE_KEYVAULT_NAME", " https://KV-Dev-Bob.vault.azure.net/ ")],
        )
        .ok();
    assert_contains(&run.stdout, "-> azure key vault kv-dev-bob");
}
