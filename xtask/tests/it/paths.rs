//! Path flags are read from the working directory, as with every CLI, and
//! output shows paths relative to the repository root.

use crate::support::{assert_contains, Run, Sandbox};

/// Runs the binary with `cwd` (relative to the sandbox root) as its working directory.
fn xtask_in(sb: &Sandbox, cwd: &str, args: &[&str]) -> Run {
    sb.command(args).current_dir(sb.path(cwd)).output().unwrap().into()
}

/// `secrets seed --provider file` with `extra` flags, run from `cwd`.
fn seed_file_in(sb: &Sandbox, cwd: &str, extra: &[&str]) -> Run {
    let mut args = vec!["secrets", "seed", "--provider", "file"];
    args.extend_from_slice(extra);
    xtask_in(sb, cwd, &args)
}

#[test]
fn fixtures_from_a_subdirectory_are_read_from_there() {
    let sb = Sandbox::new();
    let run = seed_file_in(
        &sb,
        "infra",
        &["--dry-run", "--fixtures", "../scripts/azure/default-local-keyvault-secrets.json"],
    )
    .ok();
    assert!(
        run.stdout.starts_with(
            "seed: 47 secrets from scripts/azure/default-local-keyvault-secrets.json ->"
        ),
        "shown relative to the root: {}",
        run.stdout
    );

    // x.json exists at the root only: from infra/, `--fixtures x.json` is infra/x.json.
    sb.write("x.json", "{\"only-at-the-root\": \"v\"}");
    let run = seed_file_in(&sb, "infra", &["--dry-run", "--fixtures", "x.json"]).code(1);
    assert!(
        run.stderr.contains("cannot read fixtures file")
            && run.stderr.contains("infra/x.json")
            && !run.all().contains("only-at-the-root"),
        "{}",
        run.all()
    );
    // From the root the same flag reads the root's file.
    let run = sb.seed_file(&["--dry-run", "--fixtures", "x.json"]).ok();
    assert_contains(&run.stdout, "seed: 1 secret from x.json");
}

#[test]
fn overrides_infra_and_out_are_read_from_the_working_directory() {
    let sb = Sandbox::new();
    sb.write(".local/mine.json", "{\"redis-password\": \"my-own\"}");
    let run = seed_file_in(
        &sb,
        "scripts",
        &[
            "--overrides",
            "../.local/mine.json",
            "--render",
            "eso-fake",
            "--out",
            "../.local/eso.yaml",
        ],
    )
    .ok();
    assert!(run.stdout.contains("(1 overridden)"), "{}", run.stdout);
    assert_contains(&run.stdout, "rendered eso-fake manifests to .local/eso.yaml (mode 0600)");
    assert!(sb.path(".local/eso.yaml").is_file());
    assert!(!sb.path("scripts/.local").exists(), "nothing lands below the subdirectory");

    // --infra from infra/: the same tree as the default, shown from the root.
    let run =
        xtask_in(&sb, "infra", &["secrets", "check", "--infra", "kubernetes", "--output", "json"])
            .ok();
    let from_sub: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let from_root: serde_json::Value =
        serde_json::from_str(&sb.xtask(&["secrets", "check", "--output", "json"]).ok().stdout)
            .unwrap();
    assert_eq!(from_sub["required_keys"], from_root["required_keys"]);
    assert_eq!(from_sub["fixtures"], "scripts/azure/default-local-keyvault-secrets.json");
    let run = xtask_in(&sb, "infra", &["secrets", "check", "--infra", "nowhere"]).code(2);
    assert_contains(&run.stderr, "no infra tree at infra/nowhere");
}
