//! The guardrail against real OpenBao: a loopback `VAULT_ADDR` under a kube
//! context that does not look local may be `kubectl port-forward` into that
//! cluster, so it is taken only when it is a dev server (in-memory storage)
//! or named with `--allow-non-local <host>`.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::support::{
    find_on, free_port, http_status, spawn_raft_node, tools_path, OpenBao, Run, Sandbox, TempDir,
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
        let mut server = PersistentBao {
            child,
            addr,
            token: String::new(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_status(port, "/v1/sys/seal-status") != Some(200) {
            assert!(Instant::now() < deadline, "the Raft OpenBao did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        let init = server.bao(&[
            "operator",
            "init",
            "-key-shares=1",
            "-key-threshold=1",
            "-format=json",
        ]);
        let init: serde_json::Value = serde_json::from_slice(&init.stdout).unwrap();
        server.token = init["root_token"].as_str().unwrap().to_string();
        let key = init["unseal_keys_b64"][0].as_str().unwrap().to_string();
        assert!(server.bao(&["operator", "unseal", &key]).status.success());
        while http_status(port, "/v1/sys/health") != Some(200) {
            assert!(Instant::now() < deadline, "the Raft OpenBao did not unseal");
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = server.bao(&["secrets", "enable", "-path=secret", "kv-v2"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        server
    }

    fn bao(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(bao_path());
        cmd.args(args)
            .env("VAULT_ADDR", &self.addr)
            .env("HOME", &self._dir.0);
        if !self.token.is_empty() {
            cmd.env("VAULT_TOKEN", &self.token);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "bao {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The names in `secret/`, read with the bao CLI.
    fn names(&self) -> Vec<String> {
        let out = Command::new(bao_path())
            .args(["kv", "list", "-format=json", "secret/"])
            .env("VAULT_ADDR", &self.addr)
            .env("VAULT_TOKEN", &self.token)
            .env("HOME", &self._dir.0)
            .output()
            .unwrap();
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
    if !crate::support::require_tools(&["bao"]) {
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
        assert!(
            run.stderr.contains(part),
            "missing {part:?}:\n{}",
            run.stderr
        );
    }
    assert!(
        bao.names().is_empty(),
        "nothing was written: {:?}",
        bao.names()
    );

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
    assert!(
        check.stderr.contains("--allow-non-local 127.0.0.1"),
        "{}",
        check.all()
    );

    // Named exactly: accepted.
    let run = seed(
        &sb,
        &bao.addr,
        &bao.token,
        &["--allow-non-local", "127.0.0.1"],
    )
    .ok();
    assert!(
        run.stdout.contains("-> vault http://127.0.0.1:"),
        "{}",
        run.stdout
    );
    assert!(!bao.names().is_empty());

    // Under a local context the same server needs no flag.
    sb.scenario(serde_json::json!({"kubectl": {"context": "k3d-ameide"}}));
    seed(&sb, &bao.addr, &bao.token, &[]).ok();
}

#[test]
fn a_dev_server_under_a_non_local_context_is_accepted() {
    if !crate::support::require_tools(&["bao"]) {
        return;
    }
    let bao = OpenBao::start();
    let sb = Sandbox::new();
    sb.scenario(serde_json::json!({"kubectl": {"context": "aks-ameide-prod"}}));
    let run = seed(&sb, &bao.addr, &bao.token, &[]).ok();
    assert!(
        run.stdout.contains("-> vault http://127.0.0.1:"),
        "{}",
        run.stdout
    );
}

#[test]
fn the_port_forward_refuses_a_non_local_context_and_takes_no_context_as_allowed() {
    if !crate::support::require_tools(&["bao"]) {
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
            run.stderr
                .contains("refusing kube context \"aks-ameide-prod\"")
                && run.stderr.contains("--allow-non-local 127.0.0.1"),
            "{extra:?}: {}",
            run.stderr
        );
        assert!(
            !sb.calls()
                .iter()
                .any(|c| c.argv.first().map(String::as_str) == Some("port-forward")),
            "no port-forward was started"
        );
    }
}
