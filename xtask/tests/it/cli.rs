//! Command-line behaviour: help, usage errors, exit codes.

use crate::support::{assert_contains, Sandbox};

#[test]
fn help_lists_every_secrets_command() {
    let sb = Sandbox::new();
    let run = sb.xtask(&["secrets", "--help"]).ok();
    for cmd in ["seed", "check", "migrate", "rollback", "status"] {
        assert!(
            run.stdout.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{cmd} missing:\n{}",
            run.stdout
        );
    }
    let run = sb.xtask(&["secrets", "seed", "--help"]).ok();
    assert!(
        run.stdout.contains("cargo xtask secrets seed --provider file"),
        "help has an example:\n{}",
        run.stdout
    );
}

#[test]
fn usage_errors_exit_2() {
    let sb = Sandbox::new();
    for args in [
        &["secrets", "frobnicate"][..],
        &["secrets", "seed", "--no-such-flag"],
        &["secrets", "seed", "--provider", "consul"],
        &["secrets", "seed", "--output", "yaml"],
        &["secrets", "seed", "--concurrency", "0"],
        &["secrets", "check", "--fail-on", "typos"],
        &["secrets", "seed", "--render", "helm", "--out", "-"],
        &["secrets", "seed", "-q", "-v"],
        &["secrets", "check", "--quiet", "--verbose"],
        &["secrets", "seed", "--provider", "file", "--mount", "kv"],
        &["secrets", "check", "--live", "--provider", "file", "--mount", "kv"],
        &["secrets", "check", "--env", "prod"],
    ] {
        let run = sb.xtask(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.all());
        assert!(run.stderr.starts_with("error: "), "{args:?}: {}", run.stderr);
    }
}

#[test]
fn an_unknown_provider_from_the_environment_exits_2_like_the_flag() {
    let sb = Sandbox::new();
    let run = sb.xtask_env(&["secrets", "seed"], &[("SECRETS_PROVIDER", "consul")]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert_contains(&run.stderr, "unknown provider \"consul\" (from env SECRETS_PROVIDER)");
}

#[test]
fn usage_errors_say_why() {
    let sb = Sandbox::new();
    let run = sb.xtask(&["secrets", "check", "--env", "prod"]).code(2);
    assert!(
        run.stderr.contains(
            "unknown environment \"prod\": known environments are local, production, staging"
        ),
        "{}",
        run.stderr
    );
    let run = sb.seed_file(&["--mount", "kv"]).code(2);
    assert_contains(&run.stderr, "--mount is a Vault KV mount");
    let run = sb.xtask(&["secrets", "seed", "-q", "-v"]).code(2);
    assert_contains(&run.stderr, "--quiet and --verbose");
}

#[test]
fn help_ends_with_a_newline() {
    let sb = Sandbox::new();
    for args in [
        &["--help"][..],
        &["secrets", "--help"],
        &["secrets", "seed", "--help"],
        &["secrets", "status", "-h"],
    ] {
        let run = sb.xtask(args).ok();
        assert!(
            run.stdout.ends_with('\n') && !run.stdout.ends_with("\n\n"),
            "{args:?}: {:?}",
            &run.stdout[run.stdout.len().saturating_sub(40)..]
        );
    }
}

/// `status | head -1`: the reader goes away; the command ends quietly.
#[test]
fn a_closed_pipe_ends_every_command_quietly() {
    let sb = Sandbox::new();
    for args in [
        &["secrets", "status"][..],
        &["secrets", "check", "--verbose"],
        &["secrets", "seed", "--provider", "file", "--dry-run", "--verbose"],
        &["secrets", "seed", "--help"],
    ] {
        let mut child = sb
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Close the read end before the command prints anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

#[test]
fn counts_of_one_are_singular() {
    let sb = Sandbox::new();
    sb.write(".local/one.json", "{\"only-key\": \"v\"}");
    let run = sb.seed_file(&["--fixtures", ".local/one.json"]).ok();
    assert!(run.stdout.starts_with("seed: 1 secret from .local/one.json"), "{}", run.stdout);
}

#[test]
fn a_pinned_tool_with_the_wrong_checksum_is_named_so() {
    let sb = Sandbox::new();
    sb.write(".tools/bin/helm", "#!/bin/sh\necho not helm\n");
    let run = sb.xtask_env(&["tools", "--check"], &[("PATH", "/usr/bin:/bin")]);
    assert_eq!(run.code, 1, "{}", run.all());
    let helm = run.stdout.lines().find(|l| l.starts_with("helm ")).unwrap_or_default();
    assert!(
        helm.contains(".tools/bin/helm has the wrong sha256") && !helm.contains("missing"),
        "{}",
        run.stdout
    );
    assert_contains(&run.stderr, "helm (.tools/bin/helm has the wrong sha256");
}

#[test]
fn an_overrides_directory_is_called_the_overrides_file() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path(".local/secrets/overrides.json")).unwrap();
    let run = sb.seed_file(&["--dry-run"]).code(1);
    assert_contains(&run.stderr, "the overrides file");
    assert_contains(&run.stderr, "is a directory");
    assert!(!run.stderr.contains("fixtures file"), "{}", run.stderr);
}

#[test]
fn an_override_differing_from_a_fixture_only_in_case_is_refused() {
    let sb = Sandbox::new();
    sb.write(".local/secrets/overrides.json", "{\"Redis-Password\": \"mine\"}");
    let run = sb.seed_file(&["--dry-run"]).code(1);
    assert_contains(&run.stderr, ".local/secrets/overrides.json: secret name \"Redis-Password\" differs from the fixture \"redis-password\" only in letter case");
}
