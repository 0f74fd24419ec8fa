//! The infra tree renders offline with the real helm and helmfile.

use crate::support::{tools_path, Sandbox};

fn run(cmd: &str, args: &[&str], sb: &Sandbox) -> (bool, String, String) {
    let out = std::process::Command::new(cmd)
        .args(args)
        .current_dir(&sb.root)
        .env("PATH", tools_path())
        .env("HELM_CACHE_HOME", sb.home.join("cache"))
        .env("HELM_CONFIG_HOME", sb.home.join("config"))
        .env("HELM_DATA_HOME", sb.home.join("data"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `helmfile -f <layer 15> -e <env>` with `args`.
fn helmfile_layer15(sb: &Sandbox, env: &str, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["-f", "infra/kubernetes/helmfiles/15-secrets-certificates.yaml", "-e", env];
    all.extend_from_slice(args);
    run("helmfile", &all, sb)
}

/// The ClusterSecretStore document of a rendering.
fn store_doc(rendered: &str) -> String {
    rendered
        .split("\n---")
        .find(|d| d.contains("kind: ClusterSecretStore"))
        .unwrap_or_else(|| panic!("no ClusterSecretStore in:\n{rendered}"))
        .to_string()
}

#[test]
fn layer15_renders_the_store_for_every_environment_and_flag_value() {
    if !crate::support::require_tools(&["helm", "helmfile"]) {
        return;
    }
    let sb = Sandbox::new();
    for env in ["local", "staging", "production"] {
        let flag_file =
            format!("infra/kubernetes/environments/{env}/platform/15-secrets.values.yaml");
        let original = sb.read(&flag_file);
        for provider in ["vault", "azure"] {
            let edited = original
                .lines()
                .map(|l| {
                    if l.trim_start().starts_with("provider:") {
                        format!("  provider: {provider}")
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            sb.write(&flag_file, &edited);
            let (ok, out, err) = helmfile_layer15(&sb, env, &["template", "--skip-deps"]);
            assert!(ok, "{env}/{provider}: {err}");
            let store = store_doc(&out);
            assert!(store.contains("name: ameide-vault"), "{env}/{provider}: {store}");
            assert!(store.contains(&format!("ameide.io/secrets-provider: {provider}")), "{store}");
            match provider {
                "vault" => {
                    assert!(
                        store.contains("    vault:\n")
                            && store.contains("version: \"v2\"")
                            && store.contains("kubernetes:"),
                        "{store}"
                    );
                    assert!(!store.contains("azurekv"), "{store}");
                }
                _ => {
                    assert!(store.contains("    azurekv:\n"), "{store}");
                    assert!(store.contains("vault.azure.net"), "{store}");
                }
            }
        }
        sb.write(&flag_file, &original);
    }
}

#[test]
fn presync_hook_seeds_the_selected_provider_in_local_only() {
    if !crate::support::require_tools(&["helm", "helmfile"]) {
        return;
    }
    let sb = Sandbox::new();
    let (ok, out, err) = helmfile_layer15(&sb, "local", &["build"]);
    assert!(ok, "{err}");
    assert!(out.contains("presync"), "{out}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert!(
        lines.windows(4).any(|w| w == ["- seed", "- --provider", "- vault", "- --env"]),
        "{out}"
    );
    // With the flag on azure, the same hook seeds azure: one command, branched by the flag.
    let flag = "infra/kubernetes/environments/local/platform/15-secrets.values.yaml";
    sb.write(flag, &sb.read(flag).replace("  provider: vault\n", "  provider: azure\n"));
    let (ok, out, err) = helmfile_layer15(&sb, "local", &["build"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert!(
        lines.windows(4).any(|w| w == ["- seed", "- --provider", "- azure", "- --env"]),
        "{out}"
    );
    let (ok, out, err) = helmfile_layer15(&sb, "staging", &["build"]);
    assert!(ok, "{err}");
    assert!(!out.contains("presync"), "fixtures never seed a shared environment:\n{out}");
}

#[test]
fn every_chart_lints() {
    if !crate::support::require_tools(&["helm"]) {
        return;
    }
    let sb = Sandbox::new();
    let charts = sb.path("infra/kubernetes/charts/platform");
    let mut n = 0;
    for chart in std::fs::read_dir(&charts).unwrap().flatten() {
        let (ok, out, err) =
            run("helm", &["lint", "--strict", chart.path().to_str().unwrap()], &sb);
        assert!(ok, "{}: {out}{err}", chart.path().display());
        n += 1;
    }
    assert!(n >= 9, "found {n} charts");
}
/// The documents of `kind` in a rendering.
fn docs_of<'a>(rendered: &'a str, kind: &str) -> Vec<&'a str> {
    rendered.split("\n---").filter(|d| d.contains(&format!("\nkind: {kind}\n"))).collect()
}

#[test]
fn vault_runs_as_its_own_service_account_bound_to_auth_delegator() {
    if !crate::support::require_tools(&["helm", "helmfile"]) {
        return;
    }
    let sb = Sandbox::new();
    let (ok, out, err) = helmfile_layer15(&sb, "local", &["template", "--skip-deps"]);
    assert!(ok, "{err}");
    let accounts = docs_of(&out, "ServiceAccount");
    assert_eq!(accounts.len(), 1, "{out}");
    assert!(
        accounts[0].contains("  name: vault\n")
            && accounts[0].contains("automountServiceAccountToken: true"),
        "{}",
        accounts[0]
    );
    let sts = docs_of(&out, "StatefulSet");
    assert!(
        sts[0].contains("      serviceAccountName: vault\n"),
        "Vault's pod runs as that account, so its token and CA review ESO's: {}",
        sts[0]
    );
    let bindings = docs_of(&out, "ClusterRoleBinding");
    assert_eq!(bindings.len(), 1, "{out}");
    let b = bindings[0];
    assert!(
        b.contains("roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: system:auth-delegator\n"),
        "{b}"
    );
    assert!(
        b.contains("subjects:\n  - kind: ServiceAccount\n    name: vault\n    namespace: vault"),
        "{b}"
    );
    // The store's login names the auth mount the seed sets up, from the same values.
    let store = store_doc(&out);
    assert!(
        store.contains("          mountPath: \"kubernetes\"\n")
            && store.contains("          role: \"external-secrets\"\n"),
        "{store}"
    );
}
