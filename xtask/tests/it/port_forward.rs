//! The seed with no VAULT_ADDR and a local kube context: through a
//! `kubectl port-forward` stand-in that behaves like kubectl (prints a line
//! per connection, dies of SIGPIPE once its stdout is closed, fails like a
//! pod that went away) to a real OpenBao.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{
    alive, assert_contains, block_on, fixtures, json, with_bao, OpenBao, Run, Sandbox,
};

/// `seed --output json` with no VAULT_ADDR: only the kube context says where
/// Vault is. The token is in the environment (as a developer's would be),
/// so the test can also see that kubectl is not handed it.
fn seed_via_kube(sb: &Sandbox, bao: &OpenBao) -> Run {
    sb.xtask_env(
        &["secrets", "seed", "--provider", "vault", "--output", "json"],
        &[("VAULT_TOKEN", &bao.token)],
    )
}

fn scenario(bao: &OpenBao, port_forward: serde_json::Value) -> serde_json::Value {
    json!({"kubectl": {"context": "k3d-ameide", "vault_addr": bao.addr, "port_forward": port_forward}})
}

/// Every fixture reads back through an independent client, at version 1.
fn assert_every_fixture_written(sb: &Sandbox, bao: &OpenBao) {
    let client = bao.client();
    for (name, value) in &fixtures(sb) {
        let data: HashMap<String, String> = block_on(vaultrs::kv2::read(&client, "secret", name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            data.get("value").map(String::as_str),
            value.as_str(),
            "{name}"
        );
    }
}

/// No kubectl the seed started outlives it.
fn assert_no_forward_left(sb: &Sandbox) {
    let pids = sb.port_forward_pids();
    assert!(!pids.is_empty(), "kubectl port-forward was started");
    // Killed and reaped before the seed exits; allow the kernel a moment.
    let until = Instant::now() + Duration::from_secs(2);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in pids {
        assert!(!alive(pid), "kubectl port-forward {pid} outlived the seed");
    }
}

#[test]
fn a_seed_through_a_kubectl_faithful_port_forward_writes_every_fixture() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    sb.scenario(scenario(&bao, json!({})));
    let run = seed_via_kube(&sb, &bao).ok();
    let report = json(&run);
    assert_eq!(
        report["counts"]["create"],
        fixtures(&sb).len(),
        "{}",
        run.all()
    );
    assert_every_fixture_written(&sb, &bao);
    assert_eq!(sb.port_forward_pids().len(), 1, "no restart was needed");
    assert_no_forward_left(&sb);
    // kubectl has no use for the Vault token: it does not get it.
    for call in sb.calls() {
        assert!(
            call.env.is_empty(),
            "{} {:?} got {:?}",
            call.tool,
            call.argv,
            call.env
        );
    }
}

#[test]
fn a_forward_that_dies_is_restarted_once_and_the_seed_completes() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    // The first kubectl loses its pod on its third connection; the second lives.
    sb.scenario(scenario(&bao, json!({"die_after": [2, null]})));
    let run = seed_via_kube(&sb, &bao).ok();
    assert_contains(&run.stderr, "restarting it once, on the same port");
    assert_contains(&run.stderr, "lost connection to pod");
    assert_every_fixture_written(&sb, &bao);
    let argv: Vec<Vec<String>> = sb
        .calls()
        .into_iter()
        .filter(|c| c.argv.first().is_some_and(|a| a == "port-forward"))
        .map(|c| c.argv)
        .collect();
    assert_eq!(argv.len(), 2, "one restart: {argv:?}");
    assert_eq!(argv[0].last().unwrap(), ":8200");
    let port = run.stdout.split("127.0.0.1:").nth(1).map(|r| {
        r.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
    });
    assert_eq!(
        argv[1].last().unwrap(),
        &format!("{}:8200", port.unwrap()),
        "restarted on the same local port: {}",
        run.stdout
    );
    assert_no_forward_left(&sb);
}

#[test]
fn a_forward_that_keeps_dying_fails_with_kubectls_own_words() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    // The first forward dies at the seed's second connection; the restarted
    // one at its first, so the run fails however few connections a loaded
    // machine lets the seed open after the restart.
    sb.scenario(scenario(&bao, json!({"die_after": [1, 0]})));
    let start = Instant::now();
    let run = seed_via_kube(&sb, &bao);
    assert_ne!(run.code, 0, "{}", run.all());
    let all = &run.stderr;
    assert!(
        all.contains("failed twice (it was restarted once)"),
        "{all}"
    );
    assert!(all.contains("error: lost connection to pod"), "{all}");
    assert!(all.contains("an error occurred forwarding"), "{all}");
    assert!(all.contains("kubectl --namespace vault get pods"), "{all}");
    assert_eq!(sb.port_forward_pids().len(), 2, "restarted once, not more");
    // The HTTP client stops at once instead of retrying a dead forward.
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert_no_forward_left(&sb);
}

#[test]
fn a_port_forward_that_never_starts_hits_its_deadline() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    sb.write(
        ".local/secrets.toml",
        // Long enough for the Python stand-in to start on a loaded machine.
        "[vault.port_forward]\nstart_timeout_secs = 4\n",
    );
    sb.scenario(scenario(&bao, json!({"hang": true})));
    let start = Instant::now();
    let run = seed_via_kube(&sb, &bao).code(1);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert!(
        run.stderr.contains(
            "`kubectl port-forward --namespace vault --address 127.0.0.1 svc/vault :8200` did not start \
             forwarding within 4 s and was stopped"
        ),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("start_timeout_secs"), "{}", run.stderr);
    assert_no_forward_left(&sb);
}

#[test]
fn a_missing_service_fails_with_kubectls_words_and_the_fix() {
    let sb = Sandbox::new();
    sb.scenario(json!({"kubectl": {"context": "k3d-ameide"}}));
    let run = sb
        .xtask_env(
            &["secrets", "seed", "--provider", "vault"],
            &[("VAULT_TOKEN", "unused")],
        )
        .code(1);
    assert_contains(
        &run.stderr,
        "Error from server (NotFound): services \"vault\" not found",
    );
    assert_contains(&run.stderr, "exited (exit 1) before forwarding");
    assert_contains(&run.stderr, "Is Vault deployed (layer 15)");
}

#[test]
fn migrate_to_vault_goes_through_the_port_forward_too() {
    if !crate::support::require_tools(&["bao", "kubectl", "helm", "helmfile"]) {
        return;
    }
    let bao = OpenBao::start();
    let sb = Sandbox::new();
    // The local environment starts on Azure Key Vault (committed).
    let flag = "infra/kubernetes/environments/local/platform/15-secrets.values.yaml";
    sb.write(
        flag,
        &sb.read(flag)
            .replace("  provider: vault\n", "  provider: azure\n"),
    );
    let git = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t.invalid"])
        .args(["commit", "-qam", "local on azure"])
        .current_dir(&sb.root)
        .output()
        .unwrap();
    assert!(git.status.success());
    let mut sc = scenario(&bao, json!({"die_after": [4, null]}));
    sc["kubectl"]["crds"] = json!(["externalsecrets.external-secrets.io"]);
    sb.scenario(sc);
    let run = sb
        .xtask_env(
            &["secrets", "migrate", "--to", "vault", "--yes"],
            &[
                ("VAULT_TOKEN", &bao.token),
                ("EXTERNALSECRET_WAIT_SLEEP", "0"),
            ],
        )
        .ok();
    assert!(
        run.stdout.contains("migrated local to vault"),
        "{}",
        run.all()
    );
    assert!(sb.read(flag).contains("  provider: vault\n"));
    assert_every_fixture_written(&sb, &bao);
    assert_eq!(
        sb.port_forward_pids().len(),
        2,
        "one restart: {}",
        run.stderr
    );
    assert_no_forward_left(&sb);
}

#[test]
fn a_seed_killed_outright_takes_its_forward_with_it() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let bao = OpenBao::start();
    // A slow Vault: the seed is still running when it is killed.
    let slow = crate::support::Proxy::start(
        bao.port,
        std::sync::Arc::new(|_: &crate::support::Request| {
            std::thread::sleep(Duration::from_millis(300));
            crate::support::Action::Forward
        }),
    );
    let sb = Sandbox::new();
    sb.scenario(json!({"kubectl": {"context": "k3d-ameide", "vault_addr": slow.addr()}}));
    let mut seed = sb
        .command(&["secrets", "seed", "--provider", "vault"])
        .env("VAULT_TOKEN", &bao.token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let kubectl = loop {
        if let Some(pid) = sb
            .port_forward_pids()
            .first()
            .copied()
            .filter(|p| alive(*p))
        {
            break pid;
        }
        assert!(Instant::now() < until, "no port-forward started");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        seed.try_wait().unwrap().is_none(),
        "the seed is still running"
    );
    seed.kill().unwrap(); // SIGKILL: no drop, no cleanup of ours runs
    seed.wait().unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while alive(kubectl) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = alive(kubectl);
    if left {
        // Do not leave it behind for the next test run.
        let _ = std::process::Command::new("kill")
            .arg(kubectl.to_string())
            .status();
    }
    assert!(
        !left,
        "kubectl port-forward {kubectl} outlived a killed seed"
    );
}
