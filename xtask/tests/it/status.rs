//! `secrets status` against real OpenBao: the KV version of the mount.

use crate::support::{json, OpenBao, Sandbox};

#[test]
fn status_shows_the_kv_version_of_the_mount() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let bao = OpenBao::start();
    let out = bao.bao(&["secrets", "enable", "-path=kv1", "-version=1", "kv"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sb = Sandbox::new();
    let env = bao.env();
    let run = sb.xtask_env(&["secrets", "status"], &env).ok();
    assert!(run.stdout.contains("; mount secret/: KV v2;"), "{}", run.stdout);

    sb.write(".local/secrets.toml", "[vault]\nmount = \"kv1\"\n");
    let run = sb.xtask_env(&["secrets", "status"], &env).ok();
    assert!(run.stdout.contains("; mount kv1/: KV v1;"), "{}", run.stdout);
    let run = sb.xtask_env(&["secrets", "status", "--output", "json"], &env).ok();
    let v = json(&run);
    assert_eq!(v["vault"]["kv_version"], "1", "{}", run.stdout);
    assert_eq!(v["vault"]["mount"], "kv1");

    sb.write(".local/secrets.toml", "[vault]\nmount = \"nothing-here\"\n");
    let run = sb.xtask_env(&["secrets", "status"], &env).ok();
    assert!(
        run.stdout.contains("mount nothing-here/: KV version none: nothing is mounted there"),
        "{}",
        run.stdout
    );
}

/// A journal that cannot be read: `status` still shows the flags and the
/// store, says the journal cannot be read and how to get past it; `doctor`
/// fails on it; the way out they name works.
#[test]
fn a_corrupt_journal_is_reported_and_its_way_out_works() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let bao = OpenBao::start();
    let sb = Sandbox::new();
    let env = bao.env();
    let journal = ".local/secrets/journal/local.json";
    sb.write(journal, "{\"migrations\": [{\"id\": ");
    let run = sb.xtask_env(&["secrets", "status"], &env).ok();
    let out = &run.stdout;
    assert!(out.contains("  local        vault   <-"), "{out}");
    assert!(out.contains("; mount secret/: KV v2"), "{out}");
    let abs = sb.path(journal).display().to_string();
    assert!(
        out.contains(&format!(
            "  the journal cannot be read: {abs} cannot be read as a journal; move it aside (`mv {abs} \
             {abs}.unreadable`): the tool then starts a new journal, and `cargo xtask secrets status` shows the \
             flag files and the cluster: "
        )),
        "{out}"
    );
    let v = json(&sb.xtask_env(&["secrets", "status", "--output", "json"], &env).ok());
    assert!(v["journal_error"].is_string(), "{v}");
    assert!(v["providers"].as_array().unwrap().len() >= 3, "{v}");

    let run = sb.xtask_env(&["secrets", "doctor"], &env).code(1);
    assert!(
        run.stdout.contains(&format!(
            "FAIL  journal    {journal} cannot be read as a journal: EOF while parsing"
        )),
        "{}",
        run.stdout
    );
    let fix = run.stdout.lines().skip_while(|l| !l.starts_with("FAIL  journal")).nth(1).unwrap();
    let start = fix.find("(`").unwrap() + 2;
    let mv = &fix[start..start + fix[start..].find('`').unwrap()];
    let out = crate::migrate::shell(&sb, mv).ok();
    assert!(out.stderr.is_empty(), "{}", out.stderr);

    let run = sb.xtask_env(&["secrets", "status"], &env).ok();
    assert!(run.stdout.contains(&format!("  none in {journal}")), "{}", run.stdout);
    let run = sb.xtask_env(&["secrets", "doctor"], &env);
    assert!(
        run.stdout.contains("ok    journal    no migration of local journaled"),
        "{}",
        run.stdout
    );
}

/// doctor's fix for a flag file it cannot read works when followed: `git
/// checkout` only when git has another version to put back. (An unknown
/// `--env` is refused before anything: exit 2.)
#[test]
fn doctors_fix_for_a_broken_flag_file_works() {
    let sb = Sandbox::new();
    let flag = "infra/kubernetes/environments/local/platform/15-secrets.values.yaml";
    let good = sb.read(flag);
    sb.write(flag, &good.replace("  provider: vault\n", "  provider: vault\n  provider: azure\n"));
    let run = sb.xtask(&["secrets", "doctor"]).code(1);
    assert!(
        run.stdout.contains("FAIL  flag       ") && run.stdout.contains("appears 2 times"),
        "{}",
        run.stdout
    );
    let fix = run.stdout.lines().skip_while(|l| !l.starts_with("FAIL  flag")).nth(1).unwrap();
    assert!(
        fix.ends_with(&format!(
            "fix: `git checkout HEAD -- {flag}` puts back the committed file (`git diff HEAD -- {flag}` shows what \
             that drops)"
        )),
        "{fix}"
    );
    let start = fix.find('`').unwrap() + 1;
    let checkout = &fix[start..start + fix[start..].find('`').unwrap()];
    crate::migrate::shell(&sb, checkout).ok();
    assert_eq!(sb.read(flag), good);
    let run = sb.xtask(&["secrets", "doctor"]);
    assert!(
        run.stdout.contains(&format!("ok    flag       {flag}: secrets.provider = vault")),
        "{}",
        run.stdout
    );

    // Committed broken: git has nothing better, so no `git checkout`.
    sb.write(flag, &good.replace("  provider: vault\n", "  provider: vault\n  provider: azure\n"));
    crate::migrate::commit(&sb, "broken");
    let run = sb.xtask(&["secrets", "doctor"]).code(1);
    assert!(!run.stdout.contains("git checkout"), "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!(
            "fix: edit {flag} as the message says: the committed file has the same problem"
        )),
        "{}",
        run.stdout
    );

    let run = sb.xtask(&["secrets", "doctor", "--env", "nope"]).code(2);
    assert!(!run.all().contains("git checkout"), "{}", run.all());
}
