//! `secrets status` against real OpenBao: the KV version of the mount.

use crate::support::{json, OpenBao, Sandbox};

#[test]
fn status_shows_the_kv_version_of_the_mount() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let bao = OpenBao::start();
    let out = bao.bao(&["secrets", "enable", "-path=kv1", "-version=1", "kv"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sb = Sandbox::new();
    let env = bao.env();
    let run = sb.xtask_env(&["secrets", "status"], &env).ok();
    assert!(
        run.stdout.contains("; mount secret/: KV v2;"),
        "{}",
        run.stdout
    );

    sb.write(".local/secrets.toml", "[vault]\nmount = \"kv1\"\n");
    let run = sb.xtask_env(&["secrets", "status"], &env).ok();
    assert!(
        run.stdout.contains("; mount kv1/: KV v1;"),
        "{}",
        run.stdout
    );
    let run = sb
        .xtask_env(&["secrets", "status", "--output", "json"], &env)
        .ok();
    let v = json(&run);
    assert_eq!(v["vault"]["kv_version"], "1", "{}", run.stdout);
    assert_eq!(v["vault"]["mount"], "kv1");

    sb.write(".local/secrets.toml", "[vault]\nmount = \"nothing-here\"\n");
    let run = sb.xtask_env(&["secrets", "status"], &env).ok();
    assert!(
        run.stdout
            .contains("mount nothing-here/: KV version none: nothing is mounted there"),
        "{}",
        run.stdout
    );
}
