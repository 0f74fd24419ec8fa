//! The seed with no VAULT_ADDR and a local kube context: through the real
//! `kubectl port-forward` (pinned, from `.tools/bin`) and the cluster
//! stand-in's kubelet (`die_after`: the pod goes away; `refuse`: nothing
//! listens in the pod) to a real OpenBao; and what the seed says when no
//! pod behind `svc/vault` runs.

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
        assert_eq!(data.get("value").map(String::as_str), value.as_str(), "{name}");
    }
}

/// The seed with no VAULT_ADDR, started in the background; killed if the
/// test fails before [`Background::finish`] reads its output.
struct Background(Option<std::process::Child>);

impl Background {
    fn seed_via_kube(sb: &Sandbox, bao: &OpenBao) -> Background {
        let child = sb
            .command(&["secrets", "seed", "--provider", "vault", "--output", "json"])
            .env("VAULT_TOKEN", &bao.token)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        Background(Some(child))
    }

    fn finish(mut self) -> Run {
        self.0.take().unwrap().wait_with_output().unwrap().into()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `what` every 20 ms for up to 20 s.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The local port in the seed's `-> vault http://127.0.0.1:N` line.
fn local_port(run: &Run) -> String {
    run.stdout
        .split("127.0.0.1:")
        .nth(1)
        .map(|r| r.chars().take_while(char::is_ascii_digit).collect())
        .unwrap_or_else(|| panic!("no local port in {}", run.all()))
}

/// The argv of every `kubectl port-forward`, in order.
fn port_forward_argv(sb: &Sandbox) -> Vec<Vec<String>> {
    sb.calls()
        .into_iter()
        .filter(|c| c.argv.first().is_some_and(|a| a == "port-forward"))
        .map(|c| c.argv)
        .collect()
}

/// How many of the pod wait's progress lines (`waiting for Vault's pod:
/// STATE; N s left (vault.port_forward.pod_wait_secs)`) say `state`.
fn waiting_lines(stderr: &str, state: &str) -> usize {
    stderr
        .lines()
        .filter(|l| {
            l.strip_prefix("waiting for Vault's pod: ")
                .and_then(|rest| rest.strip_prefix(state))
                .and_then(|rest| rest.strip_prefix("; "))
                .and_then(|rest| rest.strip_suffix(" s left (vault.port_forward.pod_wait_secs)"))
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .count()
}

/// The seed's port-forward command line, as messages show it.
const PF: &str =
    "kubectl port-forward --namespace vault --address 127.0.0.1 --pod-running-timeout 15s svc/vault";

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
    assert_eq!(report["counts"]["create"], fixtures(&sb).len(), "{}", run.all());
    assert_every_fixture_written(&sb, &bao);
    assert_eq!(sb.port_forward_pids().len(), 1, "no restart was needed");
    // The pod runs: nothing to wait for, nothing to say.
    assert!(!run.stderr.contains("waiting for"), "{}", run.stderr);
    assert_no_forward_left(&sb);
    // kubectl has no use for the Vault token: it does not get it.
    for call in sb.calls() {
        assert!(call.env.is_empty(), "{} {:?} got {:?}", call.tool, call.argv, call.env);
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
    assert_contains(&run.stderr, "error: lost connection to pod");
    assert_every_fixture_written(&sb, &bao);
    let argv = port_forward_argv(&sb);
    assert_eq!(argv.len(), 2, "one restart: {argv:?}");
    assert_eq!(argv[0].last().unwrap(), ":8200");
    assert_eq!(
        argv[1].last().unwrap(),
        &format!("{}:8200", local_port(&run)),
        "restarted on the same local port: {}",
        run.stdout
    );
    assert_no_forward_left(&sb);
}

#[test]
fn a_forward_that_dies_at_its_first_connection_is_restarted_too() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    // The pod goes away at the seed's very first request (sys/seal-status);
    // the restarted forward lives.
    sb.scenario(scenario(&bao, json!({"die_after": [0, null]})));
    let run = seed_via_kube(&sb, &bao).ok();
    assert_contains(&run.stderr, &format!("note: `{PF} :8200` exited (exit 1); kubectl said:"));
    assert_contains(&run.stderr, "error: lost connection to pod");
    assert_contains(
        &run.stderr,
        &format!("restarting it once, on the same port {}", local_port(&run)),
    );
    assert_eq!(json(&run)["counts"]["create"], fixtures(&sb).len(), "{}", run.all());
    assert_every_fixture_written(&sb, &bao);
    let argv = port_forward_argv(&sb);
    assert_eq!(argv.len(), 2, "one restart: {argv:?}");
    assert_eq!(argv[1].last().unwrap(), &format!("{}:8200", local_port(&run)));
    assert_no_forward_left(&sb);
}

#[test]
fn a_pod_that_refuses_the_first_connection_is_forwarded_to_again() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    // Vault's container runs but does not listen yet: the kubelet refuses
    // the first connection, and kubectl exits. By the restart, it listens.
    sb.scenario(scenario(&bao, json!({"refuse": true})));
    let seed = Background::seed_via_kube(&sb, &bao);
    let cluster = sb.cluster();
    wait_until("the first forward to end", || {
        cluster
            .forwards()
            .iter()
            .any(|s| s["ended"] == true && s["connections"].as_u64() >= Some(1))
    });
    cluster
        .knobs(json!({"portforward": {"websocket": true, "refuse": false, "die_after": [null]}}));
    let run = seed.finish().ok();
    assert_contains(&run.stderr, &format!("note: `{PF} :8200` exited (exit 1); kubectl said:"));
    // kubectl 1.37's own words for a connection the pod refused.
    assert_contains(
        &run.stderr,
        "\"An error occurred forwarding\" err=\"error forwarding port 8200 to pod ",
    );
    assert_contains(&run.stderr, "connect: connection refused");
    assert_contains(&run.stderr, "error: lost connection to pod");
    assert_contains(&run.stderr, "restarting it once, on the same port");
    assert_every_fixture_written(&sb, &bao);
    assert_eq!(sb.port_forward_pids().len(), 2, "one restart");
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
    assert_contains(
        all,
        "the port-forward to svc/vault in namespace vault failed twice (it was restarted once).",
    );
    assert_contains(all, &format!("First: `{PF} :8200` exited (exit 1); kubectl said:"));
    assert_contains(
        all,
        &format!("Then: `{PF} {}:8200` exited (exit 1); kubectl said:", local_port(&run)),
    );
    // A pod that goes away: kubectl says that it lost it.
    assert_contains(all, "error: lost connection to pod");
    assert_contains(all, "Is Vault's pod running? `kubectl --namespace vault get pods`");
    assert_eq!(sb.port_forward_pids().len(), 2, "restarted once, not more");
    // The HTTP client stops at once instead of retrying a dead forward.
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    assert_no_forward_left(&sb);
}

#[test]
fn a_pod_that_refuses_every_connection_fails_with_kubectls_own_words() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    sb.scenario(scenario(&bao, json!({"refuse": true})));
    let start = Instant::now();
    let run = seed_via_kube(&sb, &bao).code(1);
    let all = &run.stderr;
    assert_contains(all, "failed twice (it was restarted once)");
    // kubectl 1.37's words for a connection the pod refused, in the note
    // on the first failure and in both accounts of the error.
    assert!(
        all.matches("\"An error occurred forwarding\" err=\"error forwarding port 8200 to pod ")
            .count()
            >= 3,
        "{all}"
    );
    assert_contains(all, "Vault's pod runs but nothing in it listens on port 8200");
    assert_contains(all, "connect: connection refused");
    assert_contains(all, "error: lost connection to pod");
    assert_eq!(sb.port_forward_pids().len(), 2, "restarted once, not more");
    assert!(start.elapsed() < Duration::from_secs(15), "took {:?}", start.elapsed());
    assert_no_forward_left(&sb);
}

#[test]
fn a_missing_service_is_named_with_its_fix_and_no_forward_starts() {
    let sb = Sandbox::new();
    if !crate::support::require_tools(&["kubectl"]) {
        return;
    }
    sb.scenario(json!({"kubectl": {"context": "k3d-ameide"}}));
    let run = sb
        .xtask_env(&["secrets", "seed", "--provider", "vault"], &[("VAULT_TOKEN", "unused")])
        .code(1);
    assert_contains(
        &run.stderr,
        "svc/vault not found in namespace vault (kubectl: Error from server (NotFound): services \"vault\" not found)",
    );
    assert_contains(
        &run.stderr,
        "helmfile --file infra/kubernetes/helmfiles/15-secrets-certificates.yaml --environment local sync",
    );
    assert_contains(&run.stderr, "[vault.port_forward]");
    assert!(sb.port_forward_pids().is_empty(), "no kubectl port-forward was started");
}

#[test]
fn a_service_with_no_pod_is_waited_for_then_named_with_its_selector() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    // kubectl itself would wait 60 s without a word (--pod-running-timeout).
    sb.write(".local/secrets.toml", "[vault.port_forward]\npod_wait_secs = 3\n");
    sb.scenario(scenario(&bao, json!({"no_pod": true})));
    let start = Instant::now();
    let run = seed_via_kube(&sb, &bao).code(1);
    assert!(start.elapsed() < Duration::from_secs(15), "{:?}", start.elapsed());
    assert!(
        waiting_lines(
            &run.stderr,
            "svc/vault selects no pod (selector app.kubernetes.io/name=vault)"
        ) >= 1,
        "{}",
        run.stderr
    );
    assert_contains(
        &run.stderr,
        "svc/vault selects no pod (selector app.kubernetes.io/name=vault), after waiting 3 s for a pod behind \
         svc/vault in namespace vault to run, so no port-forward was started.",
    );
    assert_contains(&run.stderr, "kubectl --namespace vault get statefulsets,pods");
    assert!(sb.port_forward_pids().is_empty(), "no kubectl port-forward was started");
}

#[test]
fn a_pending_pod_that_turns_running_is_waited_for_and_the_seed_completes() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    sb.scenario(scenario(&bao, json!({"pod_phase": "Pending"})));
    let seed = Background::seed_via_kube(&sb, &bao);
    let cluster = sb.cluster();
    // The seed has looked at the pod (and found it Pending) at least twice.
    wait_until("the seed to look at the pods twice", || {
        cluster
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET /api/v1/namespaces/vault/pods?"))
            .count()
            >= 2
    });
    cluster.put(&[crate::cluster::pod("vault", "vault", 8200, "Running")]);
    let run = seed.finish().ok();
    assert!(
        waiting_lines(&run.stderr, "pod vault-0 is Pending (ContainerCreating)") >= 1,
        "{}",
        run.stderr
    );
    assert_contains(&run.stderr, "pod vault-0 is Running (after ");
    assert_contains(&run.stderr, "); starting the port-forward");
    assert_every_fixture_written(&sb, &bao);
    assert_eq!(sb.port_forward_pids().len(), 1, "kubectl started once, when the pod ran");
    assert_no_forward_left(&sb);
}

#[test]
fn a_pending_pod_that_never_runs_is_named_with_its_reason() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    sb.write(".local/secrets.toml", "[vault.port_forward]\npod_wait_secs = 8\n");
    sb.scenario(scenario(&bao, json!({"pod_phase": "Pending"})));
    let start = Instant::now();
    let run = seed_via_kube(&sb, &bao).code(1);
    assert!(start.elapsed() < Duration::from_secs(20), "{:?}", start.elapsed());
    // A line at once and one about every 5 s: the pod, its phase and reason, the time left.
    assert_eq!(
        waiting_lines(&run.stderr, "pod vault-0 is Pending (ContainerCreating)"),
        2,
        "{}",
        run.stderr
    );
    assert_contains(
        &run.stderr,
        "pod vault-0 is Pending (ContainerCreating), after waiting 8 s for a pod behind svc/vault in namespace \
         vault to run, so no port-forward was started. `kubectl --namespace vault describe pod vault-0` says why \
         (its Events); if it is only slow (an image still pulling), raise vault.port_forward.pod_wait_secs (8 s) \
         in .local/secrets.toml; then run the command again",
    );
    assert!(sb.port_forward_pids().is_empty(), "no kubectl port-forward was started");
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
    sb.write(flag, &sb.read(flag).replace("  provider: vault\n", "  provider: azure\n"));
    let git = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t.invalid"])
        .args(["commit", "-qam", "local on azure"])
        .current_dir(&sb.root)
        .output()
        .unwrap();
    assert!(git.status.success());
    let mut sc = scenario(&bao, json!({"die_after": [4, null]}));
    sc["kubectl"]["crds"] = json!(["externalsecrets.external-secrets.io"]);
    // The namespaces layer 15's ExternalSecrets live in (migrate's preflight).
    sc["kubectl"]["objects"] =
        json!(crate::migrate::LAYER15_NAMESPACES.map(crate::cluster::namespace));
    sb.scenario(sc);
    let run = sb
        .xtask_env(
            &["secrets", "migrate", "--to", "vault", "--yes"],
            &[("VAULT_TOKEN", &bao.token), ("EXTERNALSECRET_WAIT_SLEEP", "0")],
        )
        .ok();
    assert!(run.stdout.contains("migrated local to vault"), "{}", run.all());
    assert!(sb.read(flag).contains("  provider: vault\n"));
    assert_every_fixture_written(&sb, &bao);
    assert_eq!(sb.port_forward_pids().len(), 2, "one restart: {}", run.stderr);
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
        if let Some(pid) = sb.port_forward_pids().first().copied().filter(|p| alive(*p)) {
            break pid;
        }
        assert!(Instant::now() < until, "no port-forward started");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(seed.try_wait().unwrap().is_none(), "the seed is still running");
    seed.kill().unwrap(); // SIGKILL: no drop, no cleanup of ours runs
    seed.wait().unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while alive(kubectl) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = alive(kubectl);
    if left {
        // Do not leave it behind for the next test run.
        let _ = std::process::Command::new("kill").arg(kubectl.to_string()).status();
    }
    assert!(!left, "kubectl port-forward {kubectl} outlived a killed seed");
}
