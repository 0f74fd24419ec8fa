//! Command-line behaviour: help, usage errors, exit codes.

use crate::support::Sandbox;

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
        run.stdout
            .contains("cargo xtask secrets seed --provider file"),
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
    ] {
        let run = sb.xtask(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.all());
        assert!(
            run.stderr.starts_with("error: "),
            "{args:?}: {}",
            run.stderr
        );
    }
}
