//! The guardrail against real OpenBao: a loopback `VAULT_ADDR` under a kube
//! context that does not look local may be `kubectl port-forward` into that
//! cluster, so it is taken only when it is a dev server (in-memory storage)
//! or named with `--allow-non-local <host>`.

use std::path::PathBuf;
use std::process::Child;

use crate::support::{
    bao_at, enable_kv2, find_on, free_port, init_and_unseal, spawn_raft_node, tools_path, OpenBao,
    Run, Sandbox, TempDir,
};

/// A persistent OpenBao (one Raft node, initialised and unsealed) on
/// loopback, as a port-forward to a real cluster's Vault would look.
struct PersistentBao {
    child: Child,
    addr: String,
    token: String,
    _dir: TempDir,
}

impl PersistentBao {
    fn start() -> PersistentBao {
        let bao = bao_path();
        let dir = TempDir::new("bao-raft");
        let (port, cluster) = (free_port(), free_port());
        let child = spawn_raft_node(&bao, &dir.0, "solo", port, cluster);
        let addr = format!("http://127.0.0.1:{port}");
        // Owned before the setup, so a failed setup still stops the server.
        let mut server = PersistentBao { child, addr, token: String::new(), _dir: dir };
        let (_, token) = init_and_unseal(&bao, &server._dir.0, &server.addr);
        enable_kv2(&bao, &server._dir.0, &server.addr, &token);
        server.token = token;
        server
    }

    /// The names in `secret/`, read with the bao CLI.
    fn names(&self) -> Vec<String> {
        let out = bao_at(
            &bao_path(),
            &self._dir.0,
            &self.addr,
            Some(&self.token),
            &["kv", "list", "-format=json", "secret/"],
        );
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }
}

impl Drop for PersistentBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bao_path() -> PathBuf {
    find_on(&tools_path(), "bao").expect("bao is installed")
}

fn seed(sb: &Sandbox, addr: &str, token: &str, extra: &[&str]) -> Run {
    let mut args = vec!["secrets", "seed", "--provider", "vault"];
    args.extend_from_slice(extra);
    sb.xtask_env(&args, &[("VAULT_ADDR", addr), ("VAULT_TOKEN", token)])
}

#[test]
fn a_persistent_loopback_vault_under_a_non_local_context_is_refused_unless_named() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let bao = PersistentBao::start();
    let sb = Sandbox::new();
    sb.scenario(serde_json::json!({"kubectl": {"context": "aks-ameide-prod"}}));

    let run = seed(&sb, &bao.addr, &bao.token, &[]);
    assert_eq!(run.code, 1, "{}", run.all());
    for part in [
        "refusing Vault at http://127.0.0.1:",
        "kube context \"aks-ameide-prod\"",
        "\"raft\" storage",
        "port-forward",
        "--allow-non-local 127.0.0.1",
    ] {
        assert!(run.stderr.contains(part), "missing {part:?}:\n{}", run.stderr);
    }
    assert!(bao.names().is_empty(), "nothing was written: {:?}", bao.names());

    // A kube context name is not what the flag takes, nor another host.
    for wrong in ["aks-ameide-prod", "localhost"] {
        let run = seed(&sb, &bao.addr, &bao.token, &["--allow-non-local", wrong]);
        assert_eq!(run.code, 1, "--allow-non-local {wrong}: {}", run.all());
        assert!(bao.names().is_empty());
    }
    // `check --live` reads through the same guardrail.
    let check = sb.xtask_env(
        &["secrets", "check", "--live", "--provider", "vault"],
        &[("VAULT_ADDR", &bao.addr), ("VAULT_TOKEN", &bao.token)],
    );
    assert!(check.stderr.contains("--allow-non-local 127.0.0.1"), "{}", check.all());

    // Named exactly: accepted.
    let run = seed(&sb, &bao.addr, &bao.token, &["--allow-non-local", "127.0.0.1"]).ok();
    assert!(run.stdout.contains("-> vault http://127.0.0.1:"), "{}", run.stdout);
    assert!(!bao.names().is_empty());

    // Under a local context the same server needs no flag.
    sb.scenario(serde_json::json!({"kubectl": {"context": "k3d-ameide"}}));
    seed(&sb, &bao.addr, &bao.token, &[]).ok();
}

#[test]
fn a_dev_server_under_a_non_local_context_is_accepted() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let bao = OpenBao::start();
    let sb = Sandbox::new();
    sb.scenario(serde_json::json!({"kubectl": {"context": "aks-ameide-prod"}}));
    let run = seed(&sb, &bao.addr, &bao.token, &[]).ok();
    assert!(run.stdout.contains("-> vault http://127.0.0.1:"), "{}", run.stdout);
}

#[test]
fn the_port_forward_refuses_a_non_local_context_and_takes_no_context_as_allowed() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let bao = OpenBao::start();
    let sb = Sandbox::new();
    sb.scenario(
        serde_json::json!({"kubectl": {"context": "aks-ameide-prod", "vault_addr": bao.addr}}),
    );
    for extra in [&[][..], &["--allow-non-local", "aks-ameide-prod"][..]] {
        let mut args = vec!["secrets", "seed", "--provider", "vault"];
        args.extend_from_slice(extra);
        let run = sb.xtask_env(&args, &[("VAULT_TOKEN", &bao.token)]);
        assert_eq!(run.code, 1, "{extra:?}: {}", run.all());
        assert!(
            run.stderr.contains("refusing kube context \"aks-ameide-prod\"")
                && run.stderr.contains("--allow-non-local 127.0.0.1"),
            "{extra:?}: {}",
            run.stderr
        );
        assert!(
            !sb.calls().iter().any(|c| c.argv.first().map(String::as_str) == Some("port-forward")),
            "no port-forward was started"
        );
    }
}

/// A kubeconfig kubectl can read, naming a context that does not look local
/// (no cluster behind it: nothing here asks one).
const PROD_KUBECONFIG: &str = "apiVersion: v1\nkind: Config\ncurrent-context: aks-ameide-prod\n\
contexts:\n- name: aks-ameide-prod\n  context: {cluster: prod, user: prod}\n\
clusters:\n- name: prod\n  cluster: {server: 'https://prod.example.invalid:443'}\n\
users:\n- name: prod\n  user: {}\n";

/// `seed --provider vault` with `extra` flags and `PATH` as given.
fn seed_on_path(sb: &Sandbox, addr: &str, token: &str, extra: &[&str], path: &str) -> Run {
    let mut args = vec!["secrets", "seed", "--provider", "vault"];
    args.extend_from_slice(extra);
    sb.xtask_env(&args, &[("VAULT_ADDR", addr), ("VAULT_TOKEN", token), ("PATH", path)])
}

#[test]
fn an_unknown_kube_context_takes_only_a_dev_server_or_a_named_host() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let bao = PersistentBao::start();
    let dev = OpenBao::start();
    let sb = Sandbox::new();
    let kubeconfig = sb.home.join(".kube/config");

    // kubectl is nowhere on PATH (no wrapper, no .tools/bin, no system
    // one), and the kubeconfig names a production context.
    std::fs::write(&kubeconfig, PROD_KUBECONFIG).unwrap();
    let bin = TempDir::new("no-kubectl");
    let git = find_on(&std::env::var("PATH").unwrap(), "git").expect("git is installed");
    std::os::unix::fs::symlink(git, bin.0.join("git")).unwrap();
    let no_kubectl = bin.0.display().to_string();
    let run = seed_on_path(&sb, &bao.addr, &bao.token, &[], &no_kubectl);
    assert_eq!(run.code, 1, "{}", run.all());
    for part in [
        "refusing Vault at http://127.0.0.1:",
        "the current kube context cannot be known (kubectl is not on PATH to read your kubeconfig)",
        "\"raft\" storage",
        "To have the context checked, install kubectl",
        "--allow-non-local 127.0.0.1",
    ] {
        assert!(run.stderr.contains(part), "missing {part:?}:\n{}", run.stderr);
    }
    assert!(bao.names().is_empty(), "nothing was written: {:?}", bao.names());
    seed_on_path(&sb, &dev.addr, &dev.token, &[], &no_kubectl).ok();

    // kubectl is there but cannot parse the kubeconfig.
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\ncurrent-context: aks-ameide-prod\nclusters: [unclosed\n",
    )
    .unwrap();
    let run = seed(&sb, &bao.addr, &bao.token, &[]);
    assert_eq!(run.code, 1, "{}", run.all());
    for part in [
        "the current kube context cannot be known (kubectl cannot read your kubeconfig: ",
        "did not find expected",
        "Fix the kubeconfig until `kubectl config current-context` answers",
        "--allow-non-local 127.0.0.1",
    ] {
        assert!(run.stderr.contains(part), "missing {part:?}:\n{}", run.stderr);
    }
    assert!(bao.names().is_empty(), "nothing was written: {:?}", bao.names());
    seed(&sb, &dev.addr, &dev.token, &[]).ok();

    // Named exactly: accepted, in either case.
    seed(&sb, &bao.addr, &bao.token, &["--allow-non-local", "127.0.0.1"]).ok();
    assert!(!bao.names().is_empty());
    std::fs::write(&kubeconfig, PROD_KUBECONFIG).unwrap();
    seed_on_path(&sb, &bao.addr, &bao.token, &["--allow-non-local", "127.0.0.1"], &no_kubectl).ok();
}
