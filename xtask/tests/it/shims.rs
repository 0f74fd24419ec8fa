//! The legacy scripts are thin shims over `cargo xtask secrets seed`.

use crate::support::{OpenBao, Sandbox};

fn shim(sb: &Sandbox, script: &str, args: &[&str], envs: &[(&str, &str)]) -> crate::support::Run {
    shim_in(sb, ".", script, args, envs)
}

/// Runs a shim with `cwd` (relative to the sandbox root) as the working
/// directory, in the environment the sandbox gives `xtask`, with
/// `XTASK_BIN` pointing the shim at the built binary.
fn shim_in(
    sb: &Sandbox,
    cwd: &str,
    script: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> crate::support::Run {
    let mut cmd = sb.command_of(&sb.path(script), args);
    cmd.current_dir(sb.path(cwd)).env("XTASK_BIN", env!("CARGO_BIN_EXE_xtask"));
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap().into()
}

#[test]
fn the_azure_script_delegates_with_its_old_flags() {
    let sb = Sandbox::new();
    let run = shim(
        &sb,
        "scripts/azure/sync-local-keyvault-secrets.sh",
        &["--vault-name", "kv-dev-bob", "--dry-run"],
        &[],
    )
    .ok();
    assert_eq!(
        run.stderr.lines().filter(|l| l.contains("deprecated")).count(),
        1,
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("-> azure key vault kv-dev-bob"), "{}", run.stdout);
    assert!(run.stdout.contains("dry run: nothing written"));
    let run = shim(&sb, "scripts/azure/sync-local-keyvault-secrets.sh", &["--bogus"], &[]).code(2);
    assert!(run.stderr.contains("unknown option: --bogus"));
    // A refusal keeps its exit code through the shim.
    shim(
        &sb,
        "scripts/azure/sync-local-keyvault-secrets.sh",
        &["--vault-name", "ameide-production"],
        &[],
    )
    .code(1);
}

#[test]
fn the_vault_script_delegates_with_its_old_flags() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let bao = OpenBao::start();
    let sb = Sandbox::new();
    let run = shim(
        &sb,
        "scripts/vault/ensure-local-secrets.py",
        &["--vault-addr", &bao.addr],
        &[("VAULT_TOKEN", &bao.token)],
    )
    .ok();
    assert!(run.stderr.contains("ensure-local-secrets.py is deprecated"), "{}", run.stderr);
    assert!(run.stdout.contains("47 written"), "{}", run.stdout);
    shim(&sb, "scripts/vault/ensure-local-secrets.py", &["--nope"], &[]).code(2);
}

/// Both shims read a relative --secrets-file from where the caller stands,
/// although they run the tool from the repository root.
#[test]
fn the_shims_pass_paths_from_the_callers_directory() {
    let sb = Sandbox::new();
    sb.write("x.json", "{\"only-at-the-root\": \"v\"}");
    sb.write("infra/x.json", "{\"one-in-infra\": \"v\", \"two-in-infra\": \"w\"}");
    let run = shim_in(
        &sb,
        "infra",
        "scripts/azure/sync-local-keyvault-secrets.sh",
        &["--vault-name", "kv-dev-bob", "--dry-run", "--secrets-file", "x.json"],
        &[],
    )
    .ok();
    assert!(run.stdout.contains("seed: 2 secrets from infra/x.json"), "{}", run.all());
    let run = shim_in(
        &sb,
        "infra",
        "scripts/azure/sync-local-keyvault-secrets.sh",
        &[
            "--vault-name",
            "kv-dev-bob",
            "--dry-run",
            "--secrets-file=../scripts/azure/default-local-keyvault-secrets.json",
        ],
        &[],
    )
    .ok();
    assert!(
        run.stdout
            .contains("seed: 47 secrets from scripts/azure/default-local-keyvault-secrets.json"),
        "{}",
        run.all()
    );
    // The python shim, against a Vault address nobody listens on: the
    // fixtures are read (from infra/) before Vault is reached.
    let run = shim_in(
        &sb,
        "infra",
        "scripts/vault/ensure-local-secrets.py",
        &["--vault-addr", "http://127.0.0.1:9", "--dry-run", "--secrets-file", "missing.json"],
        &[("VAULT_TOKEN", "t")],
    )
    .code(1);
    assert!(run.stderr.contains("infra/missing.json"), "{}", run.all());
}
