//! `secrets seed --provider vault` against real OpenBao.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::support::{
    assert_contains, block_on, fixtures, json, sha256_hex as sha256, with_bao, Action, OpenBao,
    Proxy, Sandbox,
};

fn seed(sb: &Sandbox, bao: &OpenBao, extra: &[&str]) -> crate::support::Run {
    let mut args = vec!["secrets", "seed", "--provider", "vault"];
    args.extend_from_slice(extra);
    sb.xtask_env(&args, &bao.env())
}

#[test]
fn seeds_kv2_once_then_writes_nothing() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    let fx = fixtures(&sb);
    let run = seed(&sb, &bao, &["--output", "json"]).ok();
    let report = json(&run);
    assert_eq!(report["counts"]["create"], fx.len());
    assert_eq!(report["written"].as_array().unwrap().len(), fx.len());

    let client = bao.client();
    for (name, value) in &fx {
        let data: HashMap<String, String> =
            block_on(vaultrs::kv2::read(&client, "secret", name)).unwrap();
        assert_eq!(data.get("value").map(String::as_str), value.as_str(), "{name}");
        assert_eq!(data.len(), 1, "only the `value` property: {name}");
        let meta = block_on(vaultrs::kv2::read_metadata(&client, "secret", name)).unwrap();
        assert_eq!(meta.current_version, 1);
        let custom = meta.custom_metadata.unwrap();
        assert_eq!(custom["managed-by"], "cargo-xtask-secrets");
        // A keyed digest (see digests.rs), never the value's plain sha256.
        let digest = &custom["fixture-hmac"];
        assert!(
            digest.len() == 32 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}: {digest}"
        );
        assert!(!sha256(value.as_str().unwrap()).contains(digest.as_str()));
        assert!(!custom.contains_key("fixture-sha256"), "{name}: {custom:?}");
    }

    let again = json(&seed(&sb, &bao, &["--output", "json"]).ok());
    assert_eq!(again["counts"]["unchanged"], fx.len());
    assert_eq!(again["writes"], 0, "a no-op re-seed sends no write");
    for name in fx.keys() {
        let meta = block_on(vaultrs::kv2::read_metadata(&client, "secret", name)).unwrap();
        assert_eq!(meta.current_version, 1, "no new version for {name}");
    }
    let text = seed(&sb, &bao, &[]).ok();
    assert_contains(&text.stdout, &format!("({} unchanged; --verbose lists them)", fx.len()));
}

#[test]
fn kv1_mount_is_written_without_data_prefix() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let bao = OpenBao::start();
    let out = bao.bao(&["secrets", "enable", "-path=legacy", "-version=1", "kv"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sb = Sandbox::new();
    let run = seed(&sb, &bao, &["--mount", "legacy"]).ok();
    assert!(run.stdout.contains("mount legacy, kv v1"), "{}", run.stdout);
    let client = bao.client();
    let data: HashMap<String, String> =
        block_on(vaultrs::kv1::get(&client, "legacy", "graph-db-url")).unwrap();
    assert!(data["value"].starts_with("postgres://graph:"));
    // Nothing landed in the KV v2 mount, and nothing under a data/ prefix.
    assert!(block_on(vaultrs::kv2::list(&client, "secret", "")).is_err());
    assert!(block_on(vaultrs::kv1::list(&client, "legacy", "data")).is_err());
    let again = json(&seed(&sb, &bao, &["--mount", "legacy", "--output", "json"]).ok());
    assert_eq!(again["writes"], 0);
}

#[test]
fn stale_values_update_and_hand_edits_conflict_until_forced() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    seed(&sb, &bao, &[]).ok();
    let client = bao.client();
    // A developer edits one entry by hand.
    bao.hand_edit("redis-password", "edited-by-hand");
    // The fixtures change another.
    let mut fx = fixtures(&sb);
    fx.insert("graph-db-password".into(), "rotated-fixture".into());
    sb.write(
        "scripts/azure/default-local-keyvault-secrets.json",
        &serde_json::to_string_pretty(&fx).unwrap(),
    );

    let run = seed(&sb, &bao, &[]).code(1);
    assert_contains(&run.stdout, "update     graph-db-password");
    assert_contains(&run.stdout, "conflict   redis-password");
    assert_contains(&run.stderr, "1 conflict not written (listed in the plan above)");
    let kept: HashMap<String, String> =
        block_on(vaultrs::kv2::read(&client, "secret", "redis-password")).unwrap();
    assert_eq!(kept["value"], "edited-by-hand", "a hand edit is never clobbered without --force");
    let meta =
        block_on(vaultrs::kv2::read_metadata(&client, "secret", "graph-db-password")).unwrap();
    assert_eq!(meta.current_version, 2);

    seed(&sb, &bao, &["--force"]).ok();
    let forced: HashMap<String, String> =
        block_on(vaultrs::kv2::read(&client, "secret", "redis-password")).unwrap();
    assert_eq!(forced["value"], fx["redis-password"].as_str().unwrap());
}

#[test]
fn concurrent_edit_between_read_and_write_is_a_conflict() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    seed(&sb, &bao, &[]).ok();
    let mut fx = fixtures(&sb);
    fx.insert("graph-db-url".into(), "postgres://graph:new@db:5432/graph".into());
    sb.write(
        "scripts/azure/default-local-keyvault-secrets.json",
        &serde_json::to_string_pretty(&fx).unwrap(),
    );

    // When the seed's write arrives, someone else writes first.
    let (addr, token) = (bao.addr.clone(), bao.token.clone());
    let fired = Arc::new(AtomicBool::new(false));
    let f = fired.clone();
    let proxy = Proxy::start(
        bao.port,
        Arc::new(move |req| {
            if req.method == "POST"
                && req.path == "/v1/secret/data/graph-db-url"
                && !f.swap(true, Ordering::SeqCst)
            {
                let client = crate::support::vault_client(&addr, &token);
                let mut v = HashMap::new();
                v.insert("value", "racing-writer");
                block_on(vaultrs::kv2::set(&client, "secret", "graph-db-url", &v)).unwrap();
            }
            Action::Forward
        }),
    );
    let run = sb.xtask_env(
        &["secrets", "seed", "--provider", "vault"],
        &[("VAULT_ADDR", &proxy.addr()), ("VAULT_TOKEN", &bao.token)],
    );
    assert!(fired.load(Ordering::SeqCst));
    assert_eq!(run.code, 1, "{}", run.all());
    assert_contains(&run.stderr, "graph-db-url: changed by someone else");
    let client = bao.client();
    let kept: HashMap<String, String> =
        block_on(vaultrs::kv2::read(&client, "secret", "graph-db-url")).unwrap();
    assert_eq!(kept["value"], "racing-writer", "check-and-set kept the concurrent write");
}

#[test]
fn errors_name_the_problem_and_the_fix() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    let run = seed(&sb, &bao, &["--mount", "nope"]).code(1);
    assert_contains(&run.stderr, "no secrets engine is mounted at nope/");
    assert_contains(&run.stderr, "bao secrets enable -path=nope -version=2 kv");

    let run = sb.xtask_env(
        &["secrets", "seed", "--provider", "vault"],
        &[("VAULT_ADDR", &bao.addr), ("VAULT_TOKEN", "not-a-token")],
    );
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("invalid or expired"), "{}", run.stderr);
    assert!(!run.all().contains("not-a-token"), "the token is never printed");

    bao.bao(&["secrets", "enable", "-path=pki", "pki"]);
    let run = seed(&sb, &bao, &["--mount", "pki"]).code(1);
    assert_contains(&run.stderr, "is a \"pki\" engine, not kv");

    let out = bao.bao(&["operator", "seal"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = seed(&sb, &bao, &[]).code(1);
    assert!(
        run.stderr.contains("is sealed") && run.stderr.contains("operator unseal"),
        "{}",
        run.stderr
    );
}

#[test]
fn guardrail_refuses_a_vault_that_is_not_local() {
    let sb = Sandbox::new();
    let run = sb.xtask_env(
        &["secrets", "seed", "--provider", "vault"],
        &[("VAULT_ADDR", "https://vault.shared.example:8200"), ("VAULT_TOKEN", "t")],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert_contains(&run.stderr, "--allow-non-local vault.shared.example");
    let run = sb.xtask(&["secrets", "seed", "--env", "staging"]);
    assert_eq!(run.code, 1);
    assert_contains(&run.stderr, "only seed local clusters");
}

#[test]
fn port_forwards_through_a_local_kube_context_and_cleans_up() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    sb.scenario(serde_json::json!({"kubectl": {"context": "k3d-ameide", "vault_addr": bao.addr}}));
    let run = sb
        .xtask_env(&["secrets", "seed", "--provider", "vault"], &[("VAULT_TOKEN", &bao.token)])
        .ok();
    assert_contains(&run.stdout, "-> vault http://127.0.0.1:");
    let calls = sb.calls();
    let pf = calls
        .iter()
        .find(|c| c.argv.first().map(String::as_str) == Some("port-forward"))
        .expect("port-forward");
    // Loopback only, to the service, on a port kubectl picks.
    let argv = pf.argv.join(" ");
    assert!(argv.starts_with("port-forward --namespace vault --address 127.0.0.1 "), "{argv}");
    assert!(argv.ends_with(" svc/vault :8200"), "{argv}");
    let pids = sb.port_forward_pids();
    assert_eq!(pids.len(), 1, "one forward, no restart");
    assert!(!crate::support::alive(pids[0]), "the port-forward was stopped");
    assert_eq!(sb.cluster().forwards().len(), 1, "the kubelet served one session");

    sb.scenario(
        serde_json::json!({"kubectl": {"context": "aks-ameide-prod", "vault_addr": bao.addr}}),
    );
    let run =
        sb.xtask_env(&["secrets", "seed", "--provider", "vault"], &[("VAULT_TOKEN", &bao.token)]);
    assert_eq!(run.code, 1);
    assert_contains(&run.stderr, "refusing kube context \"aks-ameide-prod\"");
}

#[test]
fn a_canary_value_never_reaches_output_or_argv() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let canary = "CANARY-7f3e9d1c-never-print-me";
    let bao = OpenBao::start();
    let sb = Sandbox::new();
    sb.write(".local/secrets/overrides.json", &format!("{{\"graph-db-password\": \"{canary}\"}}"));
    let mut outputs = Vec::new();
    for args in [
        vec!["secrets", "seed", "--provider", "vault", "--dry-run"],
        vec!["secrets", "seed", "--provider", "vault"],
        vec!["secrets", "seed", "--provider", "vault", "--output", "json", "--verbose"],
        vec!["secrets", "check", "--live", "--provider", "vault", "--verbose"],
        vec!["secrets", "check", "--live", "--provider", "vault", "--output", "json"],
        vec!["secrets", "check", "--live", "--provider", "vault", "--output", "junit"],
    ] {
        let run = sb.xtask_env(&args, &bao.env());
        outputs.push(run.all());
    }
    assert_contains(&outputs[1], "graph-db-password (override)");
    for out in &outputs {
        assert!(!out.contains(canary), "canary leaked:\n{out}");
    }
    let client = bao.client();
    let data: HashMap<String, String> =
        block_on(vaultrs::kv2::read(&client, "secret", "graph-db-password")).unwrap();
    assert_eq!(data["value"], canary, "the override was seeded");
}

#[test]
fn two_seeds_at_once_lose_no_update_and_corrupt_nothing() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    let spawn = |provider: &str| {
        sb.command(&["secrets", "seed", "--provider", provider, "--quiet"])
            .env("VAULT_ADDR", &bao.addr)
            .env("VAULT_TOKEN", &bao.token)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    for provider in ["vault", "file"] {
        let (a, b) = (spawn(provider), spawn(provider));
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        let codes = [a.status.code().unwrap(), b.status.code().unwrap()];
        // Each may win some keys' check-and-set races and lose others: both
        // may then exit 1, but never anything worse.
        assert!(codes.iter().all(|c| *c == 0 || *c == 1), "{provider}: {codes:?}");
        for out in [&a, &b] {
            let err = String::from_utf8_lossy(&out.stderr);
            if out.status.code() != Some(0) {
                // The loser says why: a lost check-and-set race, or the held lock with its holder.
                assert!(
                    err.contains("changed by someone else between the seed's read and its write")
                        || err.contains("another seed of the file store is running (pid "),
                    "{provider}: {err}"
                );
            }
        }
        // Whatever the interleaving, a third run finds everything in place.
        let again = json(&sb.xtask_env(
            &["secrets", "seed", "--provider", provider, "--output", "json"],
            &bao.env(),
        ));
        assert_eq!(again["counts"]["create"], 0, "{provider}: nothing lost");
        assert_eq!(again["counts"]["update"], 0, "{provider}");
    }
    let client = bao.client();
    for (name, value) in fixtures(&sb) {
        let data: HashMap<String, String> =
            block_on(vaultrs::kv2::read(&client, "secret", &name)).unwrap();
        assert_eq!(data["value"], value.as_str().unwrap());
        let meta = block_on(vaultrs::kv2::read_metadata(&client, "secret", &name)).unwrap();
        assert_eq!(meta.current_version, 1, "{name}: one version, no clobbering");
    }
    let store: serde_json::Value = serde_json::from_str(&sb.read(".local/secrets/store.json"))
        .expect("the file store is valid JSON");
    assert_eq!(store["secrets"].as_object().unwrap().len(), 47);
}

#[test]
fn an_https_vault_with_its_own_ca_needs_vault_cacert() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let bao = OpenBao::start_tls();
    let ca = bao.ca_cert.clone().unwrap();
    let sb = Sandbox::new();
    let env = bao.env();
    let run = sb.xtask_env(&["secrets", "seed", "--provider", "vault"], &env).code(1);
    assert!(
        run.stderr.contains("certificate")
            && run.stderr.contains("export VAULT_CACERT=<its CA file>"),
        "{}",
        run.stderr
    );
    let ca = ca.to_str().unwrap();
    let with_ca = [env[0], env[1], ("VAULT_CACERT", ca)];
    let seeded = json(
        &sb.xtask_env(&["secrets", "seed", "--provider", "vault", "--output", "json"], &with_ca)
            .ok(),
    );
    assert_eq!(seeded["counts"]["create"], fixtures(&sb).len());
    let status = sb.xtask_env(&["secrets", "status"], &with_ca).ok();
    assert!(status.stdout.contains("unsealed"), "{}", status.stdout);
    assert!(
        status.stdout.contains("vault.ca_cert") && status.stdout.contains("env VAULT_CACERT"),
        "{}",
        status.stdout
    );
    // A file with no certificate in it is named, with the fix.
    sb.write("not-a-ca.pem", "hello\n");
    let bad = sb.path("not-a-ca.pem");
    let run = sb
        .xtask_env(
            &["secrets", "seed", "--provider", "vault"],
            &[env[0], env[1], ("VAULT_CACERT", bad.to_str().unwrap())],
        )
        .code(1);
    assert_contains(&run.stderr, "holds no PEM certificate");
}
