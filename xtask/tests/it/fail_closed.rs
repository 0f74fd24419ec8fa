//! Never lie, fail closed (issue 20): a command that changes state finishes
//! whatever happens to its output or terminal, and exits with its own code;
//! a file holding values goes only where git ignores it, whatever symlinks
//! lie on the way; mistakes in flags and config files get their documented
//! exit codes; no error quotes a value or the password in `VAULT_ADDR`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use crate::support::{
    assert_contains, fixtures, is_data_write, repo_root, with_bao, Action, OpenBao, Proxy, Run,
    Sandbox, TempDir,
};

/// `xtask` with `args` and `envs`, stdout and stderr piped, started.
fn spawn(sb: &Sandbox, args: &[&str], envs: &[(&str, &str)]) -> Child {
    let mut cmd = sb.command(args);
    cmd.envs(envs.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.spawn().unwrap()
}

/// Reads the child's first line of stdout, then closes the read end, as
/// `| head -1` does.
fn close_stdout_after_first_line(child: &mut Child) -> String {
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    first
}

/// The names of `expected` missing from the KV v2 mount `secret/` (read
/// with the bao CLI).
fn missing_in(bao: &OpenBao, expected: &[String]) -> Vec<String> {
    let out = bao.bao(&["kv", "list", "-format=json", "secret/"]);
    let names: Vec<String> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let names: std::collections::HashSet<String> = names.into_iter().collect();
    expected.iter().filter(|n| !names.contains(*n)).cloned().collect()
}

/// `n` synthetic fixtures whose `--verbose` plan is far longer than a pipe
/// holds (64 KiB), so the seed is still printing it when the reader goes.
fn many_fixtures(sb: &Sandbox, n: usize) -> Vec<String> {
    let names: Vec<String> =
        (0..n).map(|i| format!("synthetic-fail-closed-secret-{i:05}")).collect();
    let body: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .map(|n| (n.clone(), serde_json::Value::String(format!("value-of-{n}"))))
        .collect();
    sb.write(".local/many.json", &serde_json::Value::Object(body).to_string());
    names
}

#[test]
fn a_seed_whose_stdout_closes_after_the_first_line_writes_everything_and_exits_0() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    let names = many_fixtures(&sb, 3000);
    let args =
        ["secrets", "seed", "--provider", "vault", "--verbose", "--fixtures", ".local/many.json"];
    let mut child = spawn(&sb, &args, &bao.env());
    let first = close_stdout_after_first_line(&mut child);
    assert!(first.starts_with("seed: 3000 secrets"), "{first}");
    let run: Run = child.wait_with_output().unwrap().into();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    let missing = missing_in(&bao, &names);
    assert!(missing.is_empty(), "{} of 3000 not written", missing.len());

    // The same with nothing read at all (`| head -0`): the shipped fixtures.
    let (bao, sb) = (OpenBao::start(), Sandbox::new());
    let mut child = spawn(&sb, &["secrets", "seed", "--provider", "vault"], &bao.env());
    drop(child.stdout.take());
    let run: Run = child.wait_with_output().unwrap().into();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let expected: Vec<String> = fixtures(&sb).keys().cloned().collect();
    assert_eq!(missing_in(&bao, &expected), Vec::<String>::new());
    // ESO's access came after the secrets, as in any seed.
    assert!(bao.bao(&["read", "auth/kubernetes/role/external-secrets"]).status.success());
}

#[test]
fn a_seed_sent_sighup_mid_way_finishes() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    // Each data write waits 40 ms; the first tells the test it began.
    let (began, writing) = mpsc::channel();
    let began = Mutex::new(Some(began));
    let proxy = Proxy::start(
        bao.port,
        Arc::new(move |req| {
            if is_data_write(req) {
                if let Some(tx) = began.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                std::thread::sleep(Duration::from_millis(40));
            }
            Action::Forward
        }),
    );
    let addr = proxy.addr();
    let args = ["secrets", "seed", "--provider", "vault", "--concurrency", "2"];
    let child = spawn(&sb, &args, &[("VAULT_ADDR", &addr), ("VAULT_TOKEN", &bao.token)]);
    writing.recv_timeout(Duration::from_secs(30)).expect("the seed began writing");
    let hup = Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    assert!(hup.success());
    let run: Run = child.wait_with_output().unwrap().into();
    assert_eq!(run.code, 0, "SIGHUP must not stop a seed: {}", run.all());
    assert_contains(&run.stdout, "done in");
    let expected: Vec<String> = fixtures(&sb).keys().cloned().collect();
    assert_eq!(missing_in(&bao, &expected), Vec::<String>::new());
}

/// A sandbox whose local environment starts on Azure Key Vault (committed),
/// as `migrate.rs` sets one up.
fn on_azure() -> Sandbox {
    let sb = Sandbox::new();
    let text = sb.read(crate::migrate::FLAG).replace("  provider: vault\n", "  provider: azure\n");
    sb.write(crate::migrate::FLAG, &text);
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t.invalid"])
        .args(["commit", "-qam", "local on azure"])
        .current_dir(&sb.root)
        .output()
        .unwrap();
    assert!(out.status.success());
    sb
}

#[test]
fn migrate_and_rollback_with_stdout_closed_run_to_the_end() {
    if !crate::migrate::tools() {
        return;
    }
    let (bao, sb) = (OpenBao::start(), on_azure());
    sb.scenario(crate::migrate::local(crate::migrate::healthy()));
    let envs = [
        ("VAULT_ADDR", bao.addr.as_str()),
        ("VAULT_TOKEN", bao.token.as_str()),
        ("EXTERNALSECRET_WAIT_SLEEP", "0.1"),
        ("EXTERNALSECRET_WAIT_ATTEMPTS", "15"),
    ];
    let mut child = spawn(&sb, &["secrets", "migrate", "--to", "vault", "--yes"], &envs);
    let first = close_stdout_after_first_line(&mut child);
    let run: Run = child.wait_with_output().unwrap().into();
    assert_eq!(run.code, 0, "after {first:?}: {}", run.stderr);
    let j = crate::migrate::journal(&sb);
    assert_eq!(j["migrations"][0]["state"], "completed", "{j:#}");
    assert_eq!(crate::migrate::steps(&j["migrations"][0]), crate::migrate::MIGRATED);
    assert_contains(&sb.read(crate::migrate::FLAG), "  provider: vault\n");

    let mut child = spawn(&sb, &["secrets", "rollback", "--yes"], &envs);
    close_stdout_after_first_line(&mut child);
    let run: Run = child.wait_with_output().unwrap().into();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let j = crate::migrate::journal(&sb);
    assert_eq!(j["migrations"][0]["kind"], "rollback");
    assert_eq!(j["migrations"][0]["state"], "completed", "{j:#}");
    assert_contains(&sb.read(crate::migrate::FLAG), "  provider: azure\n");
}

/// A symlink at `link` to `target`.
fn symlink(target: &std::path::Path, link: &std::path::Path) {
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, link).unwrap();
}

#[test]
fn rendered_values_go_only_where_git_ignores_them_whatever_the_symlinks() {
    let sb = Sandbox::new();
    let render = |out: &str| sb.seed_file(&["--render", "secrets", "--out", out]);
    // `.local/` is ignored, but this folder in it leads to infra/, which is not.
    symlink(&sb.path("infra"), &sb.path(".local/infra-link"));
    let run = render(".local/infra-link/secrets.yaml").code(1);
    assert_contains(&run.stderr, "the rendered manifests");
    assert_contains(&run.stderr, "(through a symlink, it is ");
    assert_contains(&run.stderr, "is not ignored by git");
    assert_contains(&run.stderr, "add infra/secrets.yaml to .gitignore");
    assert!(!sb.path("infra/secrets.yaml").exists(), "nothing written");

    // A folder outside the repository that leads into it.
    let outside = TempDir::new("fail-closed-out");
    symlink(&sb.root, &outside.0.join("repo-link"));
    let into_repo = outside.0.join("repo-link/secrets.yaml");
    let run = render(into_repo.to_str().unwrap()).code(1);
    assert_contains(&run.stderr, "is not ignored by git");
    assert!(!sb.path("secrets.yaml").exists(), "nothing written");

    // Outside the repository, or under .local/ itself: written.
    let plain = outside.0.join("secrets.yaml");
    render(plain.to_str().unwrap()).ok();
    assert!(plain.exists());
    render(".local/secrets.yaml").ok();
    assert!(sb.path(".local/secrets.yaml").exists());
}

#[test]
fn default_fixtures_behind_a_symlinked_folder_outside_the_repo_are_refused() {
    let sb = Sandbox::new();
    let outside = TempDir::new("fail-closed-fixtures");
    std::fs::rename(sb.path("scripts/azure"), outside.0.join("azure")).unwrap();
    symlink(&outside.0.join("azure"), &sb.path("scripts/azure"));
    let run = sb.seed_file(&[]).code(1);
    assert_contains(&run.stderr, "scripts/azure/default-local-keyvault-secrets.json leads to ");
    assert_contains(&run.stderr, "outside the repository, through a symlink");
    assert_contains(&run.stderr, "--fixtures");
    assert!(!sb.path(".local/secrets/store.json").exists());
    // The advice works: named explicitly, the same path is read.
    sb.seed_file(&["--fixtures", "scripts/azure/default-local-keyvault-secrets.json"]).ok();
}

#[test]
fn a_values_file_outside_the_repo_is_refused_for_what_it_is() {
    let sb = Sandbox::new();
    let outside = TempDir::new("fail-closed-overrides");
    let overrides = outside.0.join("overrides.json");
    std::fs::write(&overrides, r#"{"graph-db-password": "mine"}"#).unwrap();
    let run = sb.seed_file(&["--dry-run", "--overrides", overrides.to_str().unwrap()]).code(1);
    assert_contains(&run.stderr, "the overrides file ");
    assert_contains(
        &run.stderr,
        "is outside the repository, so git cannot say it is ignored. Keep it under .local/",
    );
    assert!(!run.stderr.contains("git checkout"), "{}", run.stderr);

    let store = outside.0.join("store.json");
    sb.write(
        ".local/secrets.toml",
        &format!("[file]\nstore = {:?}\n", store.display().to_string()),
    );
    let run = sb.seed_file(&[]).code(1);
    assert_contains(&run.stderr, "the file store ");
    assert_contains(&run.stderr, "is outside the repository");
    assert!(!store.exists());
}

#[test]
fn a_fixtures_file_holding_one_value_is_named_by_its_type_only() {
    let sb = Sandbox::new();
    for (content, kind) in [
        ("\"s3cr3t-top-level\"", "a single JSON string"),
        ("8675309123", "a single JSON number"),
        ("86753.09123", "a single JSON number"),
        ("true", "a single JSON boolean"),
    ] {
        sb.write(".local/one.json", content);
        let run = sb.seed_file(&["--dry-run", "--fixtures", ".local/one.json"]).code(1);
        assert_contains(&run.stderr, &format!("the file holds {kind}; expected a JSON object"));
        for part in ["s3cr3t", "8675309", "86753"] {
            assert!(!run.all().contains(part), "{content}: {}", run.all());
        }
    }
}

#[test]
fn a_password_in_vault_addr_is_never_shown() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    let addr = format!("http://alice:pw-s3cr3t@127.0.0.1:{}", bao.port);
    let env = [("VAULT_ADDR", addr.as_str()), ("VAULT_TOKEN", &bao.token)];
    let seed = sb.xtask_env(&["secrets", "seed", "--provider", "vault"], &env).ok();
    assert_contains(&seed.stdout, &format!("-> vault http://***@127.0.0.1:{}", bao.port));
    let status = sb.xtask_env(&["secrets", "status"], &env).ok();
    let status_json = sb.xtask_env(&["secrets", "status", "--output", "json"], &env).ok();
    let live = sb.xtask_env(&["secrets", "check", "--live", "--provider", "vault"], &env);
    let unreachable = sb.xtask_env(
        &["secrets", "seed", "--provider", "vault"],
        &[("VAULT_ADDR", "http://alice:pw-s3cr3t@127.0.0.1:9"), ("VAULT_TOKEN", "t")],
    );
    assert_contains(&unreachable.stderr, "cannot reach Vault at http://***@127.0.0.1:9");
    let remote = sb.xtask_env(
        &["secrets", "seed", "--provider", "vault"],
        &[
            ("VAULT_ADDR", "https://alice:pw-s3cr3t@vault.example.invalid:8200"),
            ("VAULT_TOKEN", "t"),
        ],
    );
    assert_contains(&remote.stderr, "refusing Vault at https://***@vault.example.invalid:8200");
    for run in [&seed, &status, &status_json, &live, &unreachable, &remote] {
        assert!(!run.all().contains("pw-s3cr3t"), "{}", run.all());
    }
    assert_contains(&status.stdout, "http://***@127.0.0.1:");
}

#[test]
fn an_error_in_the_local_config_file_exits_1_whatever_the_key() {
    let sb = Sandbox::new();
    for (text, says) in [
        ("concurrency = 0\n", "concurrency must be 1 to 256"),
        ("[vault]\nmount = \"..\"\n", "invalid Vault mount"),
        ("provider = \"consul\"\n", "unknown provider"),
        ("[vault]\ntimeout_secs = -1\n", "vault.timeout_secs must be"),
        ("[helmfile]\nsync_timeout_secs = 0\n", "helmfile.sync_timeout_secs must be"),
        ("adress = \"x\"\n", "adress"),
        ("[vault]\ntoken = s.unquoted-t0ken\n", ".local/secrets.toml:2:9: "),
    ] {
        sb.write(".local/secrets.toml", text);
        let run = sb.xtask(&["secrets", "status"]).code(1);
        assert_contains(&run.stderr, ".local/secrets.toml");
        assert_contains(&run.stderr, says);
        assert!(!run.stderr.contains("t0ken"), "a token is never quoted: {}", run.stderr);
    }
    std::fs::remove_file(sb.path(".local/secrets.toml")).unwrap();
    // On the command line the same mistake is a usage error.
    let run = sb.seed_file(&["--dry-run", "--concurrency", "0"]).code(2);
    assert_contains(&run.stderr, "(from flag --concurrency)");
}

#[test]
fn an_unknown_or_path_like_env_is_a_usage_error_on_every_command() {
    let sb = Sandbox::new();
    let commands: [&[&str]; 6] = [
        &["secrets", "seed", "--provider", "file", "--dry-run"],
        &["secrets", "check"],
        &["secrets", "migrate", "--to", "vault", "--dry-run"],
        &["secrets", "rollback", "--dry-run"],
        &["secrets", "status"],
        &["secrets", "doctor"],
    ];
    for args in commands {
        for env in ["nope", "../local", "/etc", "local/../staging"] {
            let mut all = args.to_vec();
            all.extend(["--env", env]);
            let run = sb.xtask(&all);
            assert_eq!(run.code, 2, "{all:?}: {}", run.all());
            assert_contains(&run.stderr, "known environments are local, production, staging");
        }
    }
}

#[test]
fn the_cargo_alias_shows_the_build_and_the_docs_say_what_ci_adds() {
    let config = std::fs::read_to_string(repo_root().join(".cargo/config.toml")).unwrap();
    let alias = config.lines().find(|l| l.trim_start().starts_with("xtask")).unwrap();
    assert!(
        !alias.contains("--quiet") && !alias.contains("-q "),
        "the first build takes minutes: cargo must show it ({alias})"
    );
    // `cargo xtask test` skips fuzzing locally without its tools; the README
    // says so in the words it prints.
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let test_cmd = std::fs::read_to_string(repo_root().join("xtask/src/test_cmd.rs")).unwrap();
    assert!(test_cmd.contains("SKIPPED fuzzing"));
    assert_contains(&readme, "SKIPPED fuzzing");
    assert!(!readme.contains("exactly what CI runs"), "it is not exactly");
}
