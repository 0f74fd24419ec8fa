//! Faults against real OpenBao: throttling, a dying server, sealing and
//! token revocation mid-run, a slow server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{
    assert_contains, block_on, is_data_write, json as report, killing_at_write, vault_seed,
    with_bao, Action, OpenBao, Proxy, Sandbox,
};

/// Each secret's current version (not the seed's record entry's).
fn versions(bao: &OpenBao) -> HashMap<String, u64> {
    let client = bao.client();
    let names = block_on(vaultrs::kv2::list(&client, "secret", "")).unwrap_or_default();
    names
        .into_iter()
        .filter(|n| n != "_cargo-xtask-secrets")
        .map(|n| {
            let v = block_on(vaultrs::kv2::read_metadata(&client, "secret", &n))
                .unwrap()
                .current_version;
            (n, v)
        })
        .collect()
}

fn fast_failing(sb: &Sandbox) {
    sb.write(".local/secrets.toml", "[vault]\nretries = 1\ntimeout_secs = 2\n");
}

#[test]
fn throttling_is_retried_honouring_retry_after_and_bounded() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    let seen = Arc::new(Mutex::new(Vec::<(String, Instant)>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let (s, c) = (seen.clone(), count.clone());
    // Every third data write is answered 429 with Retry-After once, every fifth 503.
    let throttled = Arc::new(Mutex::new(std::collections::HashSet::<String>::new()));
    let t = throttled.clone();
    let proxy = Proxy::start(
        bao.port,
        Arc::new(move |req| {
            if !is_data_write(req) {
                return Action::Forward;
            }
            s.lock().unwrap().push((req.path.clone(), Instant::now()));
            let n = c.fetch_add(1, Ordering::SeqCst);
            if t.lock().unwrap().insert(req.path.clone()) {
                if n % 3 == 0 {
                    return Action::Reply {
                        status: 429,
                        headers: vec![("Retry-After".into(), "0.3".into())],
                        body: "{\"errors\":[\"rate limited\"]}".into(),
                    };
                }
                if n % 5 == 0 {
                    return Action::Reply {
                        status: 503,
                        headers: vec![],
                        body: "{\"errors\":[\"busy\"]}".into(),
                    };
                }
            }
            Action::Forward
        }),
    );
    let run = vault_seed(&sb, &proxy.addr(), &bao.token, &[]).ok();
    let r = report(&run);
    assert_eq!(r["counts"]["create"], 47);
    assert_eq!(r["written"].as_array().unwrap().len(), 47);
    let retries = r["retries"].as_u64().unwrap();
    assert!(retries > 0 && retries <= 47, "one retry per throttled write at most, got {retries}");
    // A retry after a 429 waited at least its Retry-After.
    let seen = seen.lock().unwrap();
    let mut by_path: HashMap<&str, Vec<Instant>> = HashMap::new();
    for (p, t) in seen.iter() {
        by_path.entry(p.as_str()).or_default().push(*t);
    }
    let first = &seen[0].0;
    let times = &by_path[first.as_str()];
    assert_eq!(times.len(), 2, "the first write was throttled once, then retried");
    assert!(times[1] - times[0] >= Duration::from_millis(280), "waited {:?}", times[1] - times[0]);
    for v in versions(&bao).values() {
        assert_eq!(*v, 1, "no duplicate versions from retries");
    }
}

#[test]
fn a_server_outage_mid_seed_exits_3_with_exact_lists_and_a_rerun_finishes() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    fast_failing(&sb);
    sb.write(".local/secrets.toml", "concurrency = 1\n[vault]\nretries = 1\ntimeout_secs = 2\n");
    let writes = Arc::new(AtomicUsize::new(0));
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (w, d) = (writes.clone(), down.clone());
    let proxy = Proxy::start(
        bao.port,
        Arc::new(move |req| {
            if is_data_write(req) && w.fetch_add(1, Ordering::SeqCst) == 20 {
                d.store(true, Ordering::SeqCst);
            }
            if d.load(Ordering::SeqCst) {
                // The server is gone: no answer at all.
                return Action::Reply { status: 0, headers: vec![], body: String::new() };
            }
            Action::Forward
        }),
    );
    let run = vault_seed(&sb, &proxy.addr(), &bao.token, &[]).code(3);
    let r = report(&run);
    let written: Vec<String> =
        r["written"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let not_written: Vec<String> = r["not_written"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(written.len(), 20, "{}", run.stderr);
    assert_eq!(written.len() + not_written.len(), 47);
    assert_contains(&run.stderr, "  20 written, 27 not written.");
    // What the tool says it wrote is exactly what the server has.
    let mut stored: Vec<String> = versions(&bao).into_keys().collect();
    stored.sort();
    assert_eq!(stored, written);

    down.store(false, Ordering::SeqCst);
    writes.store(1000, Ordering::SeqCst);
    let again = report(&vault_seed(&sb, &proxy.addr(), &bao.token, &[]).ok());
    assert_eq!(again["counts"]["create"], 27);
    assert_eq!(again["counts"]["unchanged"], 20);
    let v = versions(&bao);
    assert_eq!(v.len(), 47);
    assert!(v.values().all(|v| *v == 1), "no duplicate versions: {v:?}");
}

#[test]
fn a_killed_server_is_reported_as_unreachable() {
    let Some((mut bao, sb)) = with_bao() else {
        return;
    };
    sb.write(".local/secrets.toml", "concurrency = 1\n[vault]\nretries = 1\ntimeout_secs = 2\n");
    let proxy = killing_at_write(&bao, 10);
    let run = vault_seed(&sb, &proxy.addr(), &bao.token, &[]);
    bao.kill();
    assert_eq!(run.code, 3, "{}", run.all());
    assert_contains(&run.stderr, "10 written");
    assert_contains(&run.stderr, "cannot reach Vault");
    let r = report(&run);
    assert_eq!(r["written"].as_array().unwrap().len(), 10, "the ten writes before the kill");
    assert_eq!(r["not_written"].as_array().unwrap().len(), 37);
    assert!(
        run.stderr.contains("error: partial seed: cannot reach Vault"),
        "the cause comes first: {}",
        run.stderr
    );
}

#[test]
fn a_value_written_without_its_checksum_is_reported_and_restamped() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    sb.write(".local/secrets.toml", "concurrency = 1\n[vault]\nretries = 0\n");
    let fail_meta = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let f = fail_meta.clone();
    let proxy = Proxy::start(
        bao.port,
        Arc::new(move |req| {
            if f.load(Ordering::SeqCst)
                && req.method == "PATCH"
                && req.path == "/v1/secret/metadata/graph-db-url"
            {
                return Action::Reply {
                    status: 500,
                    headers: vec![],
                    body: "{\"errors\":[\"storage hiccup\"]}".into(),
                };
            }
            Action::Forward
        }),
    );
    let run = vault_seed(&sb, &proxy.addr(), &bao.token, &[]).code(3);
    let r = report(&run);
    assert_eq!(r["written"].as_array().unwrap().len(), 47, "the value landed");
    assert_eq!(r["unstamped"][0]["name"], "graph-db-url");
    assert_contains(
        &run.stderr,
        "written without their checksum, for that reason (1): graph-db-url",
    );
    fail_meta.store(false, Ordering::SeqCst);
    let again = report(&vault_seed(&sb, &proxy.addr(), &bao.token, &[]).ok());
    assert_eq!(again["counts"]["restamp"], 1);
    assert_eq!(again["counts"]["unchanged"], 46);
    assert_eq!(versions(&bao)["graph-db-url"], 1, "restamping writes no new version");
}

#[test]
fn sealing_or_revoking_the_token_mid_run_stops_cleanly() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    for fault in ["seal", "revoke"] {
        let bao = OpenBao::start();
        let sb = Sandbox::new();
        // One write at a time: the fault lands before the next write
        // leaves, so "stopped early" does not race the other workers.
        sb.write(
            ".local/secrets.toml",
            "concurrency = 1\n[vault]\nretries = 1\ntimeout_secs = 2\n",
        );
        let out = bao.bao(&["token", "create", "-policy=root", "-field=token"]);
        let child = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let (addr, root_token, child_token) = (bao.addr.clone(), bao.token.clone(), child.clone());
        let writes = Arc::new(AtomicUsize::new(0));
        let w = writes.clone();
        let fault_name = fault.to_string();
        let proxy = Proxy::start(
            bao.port,
            Arc::new(move |req| {
                if is_data_write(req) && w.fetch_add(1, Ordering::SeqCst) == 5 {
                    let args: Vec<&str> = if fault_name == "seal" {
                        vec!["operator", "seal"]
                    } else {
                        vec!["token", "revoke", &child_token]
                    };
                    let ok = std::process::Command::new("bao")
                        .args(&args)
                        .env("PATH", crate::support::tools_path())
                        .env("VAULT_ADDR", &addr)
                        .env("VAULT_TOKEN", &root_token)
                        .status()
                        .unwrap();
                    assert!(ok.success());
                }
                Action::Forward
            }),
        );
        let run = vault_seed(&sb, &proxy.addr(), &child, &[]);
        assert_eq!(run.code, 3, "{fault}: {}", run.all());
        let expected = "error: partial seed: ";
        let expected_cause = if fault == "seal" { "is sealed" } else { "permission denied" };
        assert!(run.stderr.contains(expected_cause), "{fault}: {}", run.stderr);
        assert!(run.stderr.contains(expected), "{fault}: {}", run.stderr);
        assert_contains(&run.stderr, "Re-run the same command to finish");
        let attempted = writes.load(Ordering::SeqCst);
        assert!(
            attempted < 47,
            "{fault}: the run stopped instead of trying every write ({attempted})"
        );
        assert!(!run.all().contains(&child), "the token is never printed");
    }
}

#[test]
fn a_slow_server_times_out_naming_the_call() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    sb.write(".local/secrets.toml", "[vault]\nretries = 0\ntimeout_secs = 0.5\n");
    let proxy = Proxy::start(
        bao.port,
        Arc::new(|req| {
            if req.path.starts_with("/v1/secret/metadata/") {
                std::thread::sleep(Duration::from_millis(1500));
            }
            Action::Forward
        }),
    );
    let run = vault_seed(&sb, &proxy.addr(), &bao.token, &[]).code(1);
    assert_contains(&run.stderr, "LIST secret/metadata/ timed out after 0.5s");
}
