//! The seed's client starts a bounded number of threads, however many
//! requests it sends (it once started one per request, in its resolver).

use std::process::Command;

use crate::support::{OpenBao, Sandbox};

#[test]
fn a_seed_starts_a_bounded_number_of_threads() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let bao = OpenBao::start();
    let sb = Sandbox::new();
    // No kubeconfig: no kubectl child, whose Go runtime would add threads
    // of its own to the count (this counts the seed's).
    std::fs::remove_file(sb.home.join(".kube/config")).unwrap();
    let n = 300;
    let fixtures: serde_json::Map<String, serde_json::Value> =
        (0..n).map(|i| (format!("threads-{i:04}"), format!("value-{i}").into())).collect();
    sb.write("threads-fixtures.json", &serde_json::to_string(&fixtures).unwrap());
    let fixtures_path = sb.path("threads-fixtures.json");
    let inner = sb.command(&[
        "secrets",
        "seed",
        "--provider",
        "vault",
        "--concurrency",
        "16",
        "--output",
        "json",
        "--fixtures",
        fixtures_path.to_str().unwrap(),
    ]);
    // The seed runs as PID 2 of a PID namespace of its own, after the sh
    // (PID 1) and before the cat (the namespace's last PID, which it
    // prints): every thread or process it starts takes a PID in between.
    // `cat`, not the shell's `read`: a sysctl file answers only its first
    // read call, and `read` takes one byte per call.
    let script = r#""$@" >"$OUT" || exit $?; cat /proc/sys/kernel/ns_last_pid"#;
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let mut cmd = Command::new("unshare");
    if !root {
        // Unprivileged: a user namespace of our own may make the PID one.
        cmd.args(["--user", "--map-root-user"]);
    }
    cmd.args(["--pid", "--fork", "sh", "-c", script, "sh"])
        .arg(inner.get_program())
        .args(inner.get_args())
        .current_dir(&sb.root);
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.env("OUT", sb.path("seed.json"))
        .env("VAULT_ADDR", &bao.addr)
        .env("VAULT_TOKEN", &bao.token);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the seed failed, or this machine cannot make a PID namespace (`unshare --pid`, as root or in a user namespace): {stderr}"
    );
    let report: serde_json::Value = serde_json::from_str(&sb.read("seed.json")).unwrap();
    assert_eq!(report["written"].as_array().map(Vec::len), Some(n), "{report}");
    let last: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let started = last - 3; // not sh, the seed's main thread, nor cat
    assert!(
        (16..=64).contains(&started),
        "a {n}-secret seed started {started} threads (16 workers expected, at most 64)"
    );
}
