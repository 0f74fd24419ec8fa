//! What a person reads after a partial run of many secrets: the cause
//! first, counts, at most 20 names per list, and small output.

use crate::support::{killing_at_write, OpenBao, Run, Sandbox};

const SECRETS: usize = 3000;
const KILL_AFTER: usize = 200;

/// Seeds `SECRETS` generated fixtures through a proxy that kills the
/// server (SIGKILL) at the 200th data write.
fn seed_killed_midway(extra: &[&str]) -> Run {
    let mut bao = OpenBao::start();
    let sb = Sandbox::new();
    sb.write(".local/secrets.toml", "[vault]\nretries = 1\ntimeout_secs = 2\n");
    let fixtures: serde_json::Map<String, serde_json::Value> =
        (0..SECRETS).map(|i| (format!("generated-{i:05}"), format!("value-{i}").into())).collect();
    sb.write(".local/many.json", &serde_json::to_string(&fixtures).unwrap());
    let proxy = killing_at_write(&bao, KILL_AFTER);
    let mut args = vec!["secrets", "seed", "--provider", "vault", "--fixtures", ".local/many.json"];
    args.extend_from_slice(extra);
    let run = sb.xtask_env(&args, &[("VAULT_ADDR", &proxy.addr()), ("VAULT_TOKEN", &bao.token)]);
    bao.kill();
    run
}

fn check_common(run: &Run) {
    assert_eq!(run.code, 3, "{}", run.all());
    let first = run.stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("error: partial seed: cannot reach Vault at"),
        "the cause comes first: {}",
        run.stderr
    );
    assert!(!run.all().contains("the run stopped\n"), "{}", run.stderr);
    // Every list is capped: no line names more than 20 generated secrets.
    for line in run.all().lines() {
        assert!(line.matches("generated-").count() <= 20, "a line with more than 20 names: {line}");
    }
    assert!(run.stderr.contains("and ") && run.stderr.contains(" more"), "{}", run.stderr);
}

#[test]
fn a_server_killed_mid_seed_of_many_secrets_gives_short_output_cause_first() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let run = seed_killed_midway(&[]);
    check_common(&run);
    let bytes = run.stdout.len() + run.stderr.len();
    eprintln!("output after a killed {SECRETS}-secret seed: {bytes} bytes\n{}", run.all());
    assert!(bytes < 6_000, "{bytes} bytes:\n{}", run.all());
    assert!(run.stdout.contains("(and 2980 more create; --verbose lists them)"), "{}", run.stdout);

    // -q: the summary and the errors only.
    let run = seed_killed_midway(&["-q"]);
    check_common(&run);
    let bytes = run.stdout.len() + run.stderr.len();
    eprintln!("the same with -q: {bytes} bytes\n{}", run.all());
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
    assert!(run.stdout.starts_with("done in "), "{}", run.stdout);
    assert!(bytes < 2_500, "{bytes} bytes:\n{}", run.all());
}

/// A token whose policy may read but not write: Vault answers each write
/// with `1 error occurred:\n\t* permission denied\n\n`; the output says it
/// on one line.
#[test]
fn a_server_error_is_one_line() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let bao = OpenBao::start();
    let dir = crate::support::TempDir::new("policy");
    let policy = dir.0.join("readonly.hcl");
    std::fs::write(&policy, "path \"secret/*\" { capabilities = [\"read\", \"list\"] }\n").unwrap();
    let out = bao.bao(&["policy", "write", "readonly", policy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = bao.bao(&["token", "create", "-policy=readonly", "-field=token"]);
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let sb = Sandbox::new();
    for extra in [&[][..], &["--output", "json"]] {
        let mut args = vec!["secrets", "seed"];
        args.extend_from_slice(extra);
        let run = sb.xtask_env(&args, &[("VAULT_ADDR", &bao.addr), ("VAULT_TOKEN", &token)]);
        assert_eq!(run.code, 1, "{}", run.all());
        assert!(
            run.stderr.starts_with("error: permission denied for POST secret/data/")
                && run.stderr.contains("(permission denied). The token"),
            "{}",
            run.stderr
        );
        assert!(
            !run.all().contains("error occurred")
                && !run.all().contains("\\t*")
                && !run.all().contains("\t*"),
            "{}",
            run.all()
        );
    }
}
