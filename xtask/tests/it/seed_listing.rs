//! How the Vault seed reads the store: one paged `LIST detailed-metadata`
//! instead of a GET per entry, and what sends it back to reading entries.
//! Real OpenBao behind a loopback proxy that records every request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::support::{
    block_on, json as report, recording, vault_seed, with_bao, OpenBao, Proxy, Sandbox,
};

/// OpenBao, a sandbox and a recording proxy, after a first seed through
/// it: the number of fixtures, with the proxy's log emptied.
struct Seeded {
    bao: OpenBao,
    sb: Sandbox,
    proxy: Proxy,
    seen: Arc<Mutex<Vec<String>>>,
    n: usize,
    cold_calls: Vec<String>,
}

fn seeded() -> Seeded {
    let bao = OpenBao::start();
    let sb = Sandbox::new();
    let (proxy, seen) = recording(&bao);
    let cold = report(&vault_seed(&sb, &proxy.addr(), &bao.token, &[]).ok());
    let n = cold["counts"]["create"].as_u64().unwrap() as usize;
    assert!(n > 40, "{cold}");
    let cold_calls = taken(&seen);
    Seeded { bao, sb, proxy, seen, n, cold_calls }
}

fn taken(seen: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    std::mem::take(&mut *seen.lock().unwrap())
}

const RECORD: &str = "_cargo-xtask-secrets";

/// Entry reads (GET of a data path) among the recorded requests; not the
/// mount's record entry, which every run reads once for its key.
fn entry_reads(calls: &[String]) -> Vec<String> {
    let mut reads: Vec<String> = calls
        .iter()
        .filter_map(|c| c.strip_prefix("GET /v1/secret/data/"))
        .filter(|name| *name != RECORD)
        .map(String::from)
        .collect();
    reads.sort();
    reads
}

fn listings(calls: &[String]) -> usize {
    calls.iter().filter(|c| c.contains("/v1/secret/detailed-metadata/")).count()
}

/// Writes to the KV mount: POST of a value, PATCH of a record (ESO's
/// access, set up once beside them, is counted in eso_access.rs).
fn writes(calls: &[String]) -> usize {
    calls
        .iter()
        .filter(|c| c.starts_with("POST /v1/secret/") || c.starts_with("PATCH /v1/secret/"))
        .count()
}

#[test]
fn a_no_op_re_seed_reads_one_listing_and_no_entry() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let Seeded { bao, sb, proxy, seen, n, cold_calls: calls } = seeded();
    assert_eq!(entry_reads(&calls), Vec::<String>::new(), "nothing to read in an empty mount");
    assert_eq!(
        writes(&calls),
        2 * n + 1,
        "a value and its record per secret, and the mount's record entry (the key) once"
    );
    assert_eq!(
        calls.iter().filter(|c| *c == &format!("GET /v1/secret/data/{RECORD}")).count(),
        1,
        "the key is read once: {calls:#?}"
    );

    let again = report(&vault_seed(&sb, &proxy.addr(), &bao.token, &[]).ok());
    assert_eq!(again["counts"]["unchanged"], n);
    let calls = taken(&seen);
    assert_eq!(entry_reads(&calls), Vec::<String>::new(), "{calls:#?}");
    assert_eq!(listings(&calls), 1, "{calls:#?}");
    assert_eq!(writes(&calls), 0);
    assert_eq!(again["writes"], 0);

    // The record names a version, so anything done to an entry since the
    // seed sends exactly that entry back to being read.
    let client = bao.client();
    bao.hand_edit("redis-password", "edited-by-hand");
    let ok = |out: std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    ok(bao.bao(&["kv", "delete", "-mount=secret", "graph-db-password"]));
    ok(bao.bao(&["kv", "destroy", "-mount=secret", "-versions=1", "keycloak-admin-password"]));
    ok(bao.bao(&[
        "kv",
        "metadata",
        "put",
        "-mount=secret",
        "-custom-metadata=owner=me",
        "graph-db-url",
    ]));
    let run = vault_seed(&sb, &proxy.addr(), &bao.token, &[]).code(1);
    let after = report(&run);
    let calls = taken(&seen);
    assert_eq!(
        entry_reads(&calls),
        vec!["graph-db-password", "graph-db-url", "keycloak-admin-password", "redis-password"],
        "{calls:#?}"
    );
    let action = |name: &str| {
        after["plan"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .map(|i| i["action"]["kind"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(action("redis-password"), "conflict", "{}", run.all());
    assert_eq!(action("graph-db-password"), "create");
    assert_eq!(action("keycloak-admin-password"), "create");
    assert_eq!(action("graph-db-url"), "restamp");
    assert_eq!(action("threads-db-password"), "unchanged");
    let kept: HashMap<String, String> =
        block_on(vaultrs::kv2::read(&client, "secret", "redis-password")).unwrap();
    assert_eq!(kept["value"], "edited-by-hand");
    let meta = block_on(vaultrs::kv2::read_metadata(&client, "secret", "graph-db-url")).unwrap();
    let custom = meta.custom_metadata.unwrap();
    assert_eq!(custom["owner"], "me", "a key someone added survives the restamp");
    assert_eq!(custom["fixture-version"], "1");
    let back: HashMap<String, String> =
        block_on(vaultrs::kv2::read(&client, "secret", "graph-db-password")).unwrap();
    assert_eq!(back["value"], sb_fixture(&sb, "graph-db-password"));
}

fn sb_fixture(sb: &Sandbox, name: &str) -> String {
    crate::support::fixtures(sb)[name].as_str().unwrap().to_string()
}

#[test]
fn listing_pages_past_a_thousand_keys() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    // 1,500 fixtures plus 300 keys the fixtures don't name, interleaved.
    let mut fx = serde_json::Map::new();
    for i in 0..1500 {
        fx.insert(format!("paged-{i:05}"), format!("value-{i}").into());
    }
    sb.write("fixtures-1500.json", &serde_json::to_string(&fx).unwrap());
    let client = bao.client();
    for i in (0..1800).step_by(6) {
        let mut v = HashMap::new();
        v.insert("value", "not-ours");
        block_on(vaultrs::kv2::set(&client, "secret", &format!("paged-{i:05}x"), &v)).unwrap();
    }
    let (proxy, seen) = recording(&bao);
    let fixtures = ["--fixtures", "fixtures-1500.json", "--concurrency", "32"];
    vault_seed(&sb, &proxy.addr(), &bao.token, &fixtures).ok();
    taken(&seen);
    let again = report(&vault_seed(&sb, &proxy.addr(), &bao.token, &fixtures).ok());
    assert_eq!(again["counts"]["unchanged"], 1500, "{again}");
    let calls = taken(&seen);
    assert_eq!(listings(&calls), 2, "1,800 keys in pages of 1,000: {calls:#?}");
    assert!(
        calls.iter().any(|c| c.contains("after=paged-")),
        "the second page starts after the first: {calls:#?}"
    );
    assert_eq!(entry_reads(&calls).len(), 0);
    assert_eq!(writes(&calls), 0);
}

#[test]
fn a_token_without_the_detailed_listing_reads_entry_by_entry() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let bao = OpenBao::start();
    // Narrower than the policy docs/secrets.md shows: data and metadata of
    // the mount, no `sys/mounts`, no `detailed-metadata`, no `patch`.
    let policy = r#"
path "secret/data/*" { capabilities = ["create", "read", "update"] }
path "secret/metadata/*" { capabilities = ["create", "read", "update", "list"] }
path "secret/metadata/" { capabilities = ["list"] }
"#;
    let sb = Sandbox::new();
    sb.write("seeder.hcl", policy);
    let file = sb.path("seeder.hcl");
    let out = bao.bao(&["policy", "write", "seeder", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = bao.bao(&["token", "create", "-policy=seeder", "-field=token"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let (proxy, seen) = recording(&bao);
    let cold = report(&vault_seed(&sb, &proxy.addr(), &token, &[]).ok());
    let n = cold["counts"]["create"].as_u64().unwrap() as usize;
    taken(&seen);
    let again = report(&vault_seed(&sb, &proxy.addr(), &token, &[]).ok());
    assert_eq!(again["counts"]["unchanged"], n, "{again}");
    assert_eq!(again["writes"], 0);
    let calls = taken(&seen);
    assert_eq!(listings(&calls), 1, "tried once: {calls:#?}");
    assert_eq!(entry_reads(&calls).len(), n, "then one read per entry");
    // Without the `patch` capability the record is written whole instead.
    let meta =
        block_on(vaultrs::kv2::read_metadata(&bao.client(), "secret", "redis-password")).unwrap();
    assert_eq!(meta.custom_metadata.unwrap()["fixture-version"], "1");

    // doctor names the missing grant and the fix; with a full token it is quiet.
    let doctor = |token: &str| {
        sb.xtask_env(
            &["secrets", "doctor"],
            &[("VAULT_ADDR", bao.addr.as_str()), ("VAULT_TOKEN", token)],
        )
        .stdout
    };
    let narrow = doctor(&token);
    assert!(
        narrow.contains(
            "the token may not list secret/detailed-metadata/: every re-seed reads each entry"
        ),
        "{narrow}"
    );
    assert!(narrow.contains("grant `list` on that path"), "{narrow}");
    let full = doctor(&bao.token);
    assert!(full.contains("token valid"), "{full}");
    assert!(!full.contains("detailed-metadata"), "{full}");
}

#[test]
fn records_from_before_versions_are_renewed_once() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let Seeded { bao, sb, proxy, seen, n, .. } = seeded();
    // Rewrite three records as an earlier release left them: no version.
    let fx = crate::support::fixtures(&sb);
    let old = ["graph-db-url", "redis-password", "threads-db-password"];
    for name in old {
        let sha = crate::support::sha256_hex(fx[name].as_str().unwrap());
        let out = bao.bao(&[
            "kv",
            "metadata",
            "put",
            "-mount=secret",
            "-custom-metadata=managed-by=cargo-xtask-secrets",
            &format!("-custom-metadata=fixture-sha256={sha}"),
            name,
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    taken(&seen);
    let renew = report(&vault_seed(&sb, &proxy.addr(), &bao.token, &[]).ok());
    assert_eq!(renew["counts"]["restamp"], 3, "{renew}");
    assert_eq!(renew["counts"]["unchanged"], n - 3);
    let calls = taken(&seen);
    assert_eq!(entry_reads(&calls), old.to_vec());
    assert!(
        !calls.iter().any(|c| c.contains("/v1/secret/data/") && !c.starts_with("GET ")),
        "a renewal writes no value: {calls:#?}"
    );
    assert_eq!(
        calls.iter().filter(|c| c.starts_with("PATCH /v1/secret/metadata/")).count(),
        3,
        "{calls:#?}"
    );
    let client = bao.client();
    for name in old {
        let meta = block_on(vaultrs::kv2::read_metadata(&client, "secret", name)).unwrap();
        assert_eq!(meta.current_version, 1, "{name}");
        assert_eq!(meta.custom_metadata.unwrap()["fixture-version"], "1");
    }
    let quiet = report(&vault_seed(&sb, &proxy.addr(), &bao.token, &[]).ok());
    assert_eq!(quiet["writes"], 0);
    assert_eq!(entry_reads(&taken(&seen)).len(), 0);
}
