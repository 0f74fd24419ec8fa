//! `secrets seed` on a KV v1 mount (no versions, no metadata) against real
//! OpenBao: the seed's record entry tells its own writes from hand edits,
//! survives a run stopped mid-way and concurrent seeds, and stays out of
//! `check`; no output carries a full digest of a value.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::support::{
    block_on, fixtures, json, sha256_hex, shown_checksum, Action, OpenBao, Proxy, Run, Sandbox,
};

const MOUNT: &str = "kv1";
const RECORD: &str = "_cargo-xtask-secrets";

fn kv1_server() -> OpenBao {
    let bao = OpenBao::start();
    let out = bao.bao(&["secrets", "enable", &format!("-path={MOUNT}"), "-version=1", "kv"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    bao
}

fn seed_at(sb: &Sandbox, addr: &str, token: &str, extra: &[&str]) -> Run {
    let mut args = vec!["secrets", "seed", "--provider", "vault", "--mount", MOUNT];
    args.extend_from_slice(extra);
    sb.xtask_env(&args, &[("VAULT_ADDR", addr), ("VAULT_TOKEN", token)])
}

fn seed(sb: &Sandbox, bao: &OpenBao, extra: &[&str]) -> Run {
    seed_at(sb, &bao.addr, &bao.token, extra)
}

/// The `value` of a KV v1 entry, read through vaultrs (not our code).
fn value(bao: &OpenBao, name: &str) -> String {
    let data: HashMap<String, String> = block_on(vaultrs::kv1::get(&bao.client(), MOUNT, name))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    data["value"].clone()
}

fn write_fixtures(
    sb: &Sandbox,
    rel: &str,
    fx: &serde_json::Map<String, serde_json::Value>,
) -> String {
    sb.write(rel, &serde_json::to_string_pretty(fx).unwrap());
    sb.path(rel).display().to_string()
}

/// No run output holds a value or the full sha256 of one. A value that is
/// part of a secret's name ("admin") cannot be told apart from the name.
fn assert_no_value_or_digest(out: &str, values: &[&str], names: &[&str]) {
    for v in values {
        let in_a_name = names.iter().any(|n| n.contains(v));
        assert!(in_a_name || !out.contains(v), "a value leaks: {v}\n{out}");
        assert!(!out.contains(&sha256_hex(v)), "the sha256 of a value leaks ({v}):\n{out}");
    }
}

#[test]
fn kv1_hand_edits_are_conflicts_until_forced_and_stale_values_update() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let bao = kv1_server();
    let sb = Sandbox::new();
    let mut fx = fixtures(&sb);
    seed(&sb, &bao, &[]).ok();
    let again = json(&seed(&sb, &bao, &["--output", "json"]).ok());
    assert_eq!(again["writes"], 0, "a no-op re-seed writes nothing");
    assert_eq!(again["counts"]["unchanged"], fx.len());

    // The record entry: keyed digests of what the seed wrote, no value,
    // no plain sha256 of one.
    let record: serde_json::Value =
        block_on(vaultrs::kv1::get(&bao.client(), MOUNT, RECORD)).unwrap();
    assert_eq!(record["managed-by"], "cargo-xtask-secrets");
    assert_eq!(record["digests"].as_str().unwrap().lines().count(), fx.len());
    let owned: Vec<String> = fx.values().filter_map(|v| v.as_str()).map(String::from).collect();
    let values: Vec<&str> = owned.iter().map(String::as_str).collect();
    let names_owned: Vec<String> = fx.keys().cloned().collect();
    let names: Vec<&str> = names_owned.iter().map(String::as_str).collect();
    assert_no_value_or_digest(&record.to_string(), &values, &names);

    // A hand edit, as a person makes it, and a fixture the repo changes.
    let out = bao.bao(&["kv", "put", &format!("{MOUNT}/redis-password"), "value=mine-by-hand"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fx.insert("graph-db-password".into(), "rotated-fixture-value".into());
    write_fixtures(&sb, "scripts/azure/default-local-keyvault-secrets.json", &fx);

    let run = seed(&sb, &bao, &["--output", "json"]).code(1);
    let report = json(&run);
    let action = |name: &str| {
        report["plan"].as_array().unwrap().iter().find(|i| i["name"] == name).unwrap().clone()
    };
    assert_eq!(action("redis-password")["action"]["kind"], "conflict", "{}", run.stdout);
    assert_eq!(action("graph-db-password")["action"]["kind"], "update", "{}", run.stdout);
    assert_eq!(
        action("redis-password")["current_checksum"],
        shown_checksum(&sb, "mine-by-hand").as_str(),
        "JSON shows the 8-hex keyed checksum"
    );
    assert_eq!(report["written"], serde_json::json!(["graph-db-password"]));
    assert_eq!(value(&bao, "redis-password"), "mine-by-hand", "the hand edit is kept");
    assert_eq!(value(&bao, "graph-db-password"), "rotated-fixture-value");
    let mut secret_values = values.clone();
    secret_values.extend(["mine-by-hand", "rotated-fixture-value"]);
    assert_no_value_or_digest(&run.all(), &secret_values, &names);
    // In text too, and it says what to do.
    let text = seed(&sb, &bao, &[]).code(1);
    assert!(text.all().contains("redis-password"), "{}", text.all());
    assert!(text.all().contains("--force"), "{}", text.all());
    assert_no_value_or_digest(&text.all(), &secret_values, &names);

    // --force overwrites; then a re-seed has nothing to do.
    seed(&sb, &bao, &["--force"]).ok();
    assert_eq!(value(&bao, "redis-password"), fx["redis-password"].as_str().unwrap());
    let after = json(&seed(&sb, &bao, &["--output", "json"]).ok());
    assert_eq!(after["writes"], 0, "{after}");

    // `check --live` reads the same mount: the record entry is neither
    // drift nor an entry a `dataFrom.find` could match.
    sb.write(
        "infra-kv1/manifests/externalsecret.yaml",
        "apiVersion: external-secrets.io/v1\nkind: ExternalSecret\nmetadata:\n  name: probe\n  namespace: ameide\n\
         spec:\n  secretStoreRef:\n    kind: ClusterSecretStore\n    name: ameide-vault\n  data:\n    - secretKey: R\n\
         \x20     remoteRef:\n        key: redis-password\n        property: value\n  dataFrom:\n    - find:\n\
         \x20       name:\n          regexp: \"^_cargo-xtask\"\n",
    );
    let env = bao.env();
    let check = |infra: &[&str]| {
        let mut args = vec![
            "secrets",
            "check",
            "--live",
            "--provider",
            "vault",
            "--mount",
            MOUNT,
            "--output",
            "json",
        ];
        args.extend_from_slice(infra);
        sb.xtask_env(&args, &env)
    };
    let shipped = check(&["--fail-on", "missing,drift"]).ok();
    assert!(!shipped.all().contains(RECORD), "{}", shipped.all());
    let report = json(&shipped);
    assert!(
        report["findings"].as_array().unwrap().iter().all(|f| f["status"] != "drift"),
        "{}",
        shipped.stdout
    );
    let probe = check(&["--infra", sb.path("infra-kv1").to_str().unwrap()]);
    assert!(
        probe.stdout.contains("dataFrom.find matches nothing in the store"),
        "the record entry is not listed as a store entry:\n{}",
        probe.all()
    );
}

#[test]
fn a_kv1_seed_stopped_mid_way_leaves_every_value_it_wrote_recognised() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let bao = kv1_server();
    let sb = Sandbox::new();
    sb.write(".local/secrets.toml", "[vault]\nretries = 1\ntimeout_secs = 2\n");
    let version = |v: &str| -> serde_json::Map<String, serde_json::Value> {
        (0..40).map(|i| (format!("stop-{i:02}"), format!("value-{i}-{v}").into())).collect()
    };
    let first = write_fixtures(&sb, "kv1-a.json", &version("a"));
    seed(&sb, &bao, &["--fixtures", &first]).ok();

    // The second version's run loses its server after ten value writes:
    // nothing after that (and so no record update) reaches it.
    let second = write_fixtures(&sb, "kv1-b.json", &version("b"));
    let (writes, dead) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let (w, d) = (writes.clone(), dead.clone());
    let data_prefix = format!("/v1/{MOUNT}/stop-");
    let proxy = Proxy::start(
        bao.port,
        Arc::new(move |req| {
            if d.load(Ordering::SeqCst) {
                return Action::Reply { status: 0, headers: vec![], body: String::new() };
            }
            if req.method == "POST"
                && req.path.starts_with(&data_prefix)
                && w.fetch_add(1, Ordering::SeqCst) + 1 >= 10
            {
                d.store(true, Ordering::SeqCst);
            }
            Action::Forward
        }),
    );
    let stopped =
        seed_at(&sb, &proxy.addr(), &bao.token, &["--fixtures", &second, "--concurrency", "1"]);
    assert_eq!(stopped.code, 3, "a partial run:\n{}", stopped.all());
    let landed: Vec<String> = (0..40)
        .map(|i| format!("stop-{i:02}"))
        .filter(|n| value(&bao, n).ends_with("-b"))
        .collect();
    assert!(!landed.is_empty() && landed.len() < 40, "{landed:?}");

    // A third version: every entry is the seed's own, whichever version it
    // holds, so each one is updated and none is a conflict.
    let third = write_fixtures(&sb, "kv1-c.json", &version("c"));
    let run = seed(&sb, &bao, &["--fixtures", &third, "--output", "json"]);
    let report = json(&run);
    assert_eq!(report["counts"]["conflict"], 0, "{}", run.all());
    assert_eq!(report["counts"]["update"], 40, "{}", run.all());
    assert_eq!(run.code, 0, "{}", run.all());
    for i in 0..40 {
        assert_eq!(value(&bao, &format!("stop-{i:02}")), format!("value-{i}-c"));
    }
    let again = json(&seed(&sb, &bao, &["--fixtures", &third, "--output", "json"]).ok());
    assert_eq!(again["writes"], 0, "{again}");
}

#[test]
fn concurrent_kv1_seeds_keep_each_others_records() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let bao = kv1_server();
    let sb = Sandbox::new();
    let set = |prefix: &str, v: &str| -> serde_json::Map<String, serde_json::Value> {
        (0..600).map(|i| (format!("{prefix}-{i:03}"), format!("{prefix}-{i}-{v}").into())).collect()
    };
    let files: Vec<String> = ["left", "right"]
        .iter()
        .map(|p| write_fixtures(&sb, &format!("kv1-{p}-1.json"), &set(p, "1")))
        .collect();
    std::thread::scope(|s| {
        let runs: Vec<_> =
            files.iter().map(|f| s.spawn(|| seed(&sb, &bao, &["--fixtures", f]))).collect();
        for r in runs {
            r.join().unwrap().ok();
        }
    });
    // Both halves change: each is still the seed's own, so no conflict.
    // (1,200 names: more than the 1,000 JSON strings OpenBao accepts in one
    // request, so the record must not spend one per name.)
    for p in ["left", "right"] {
        let file = write_fixtures(&sb, &format!("kv1-{p}-2.json"), &set(p, "2"));
        let report = json(&seed(&sb, &bao, &["--fixtures", &file, "--output", "json"]).ok());
        assert_eq!(report["counts"]["update"], 600, "{p}: {report}");
    }
}
