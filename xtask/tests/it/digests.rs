//! What the seed records beside each value is a keyed digest, never a plain
//! one: in KV v2's `custom_metadata`, in Azure Key Vault's tags, and in no
//! `az` argv. Whoever may list metadata or tags but not read values (Vault
//! splits `metadata/` from `data/`, Key Vault `list` from `get`) must not be
//! able to test guesses against them. Stores seeded by the release before
//! (a plain `fixture-sha256`) are taken over without conflicts.
//!
//! The digests are checked here with RustCrypto's HMAC from the test side:
//! HMAC-SHA256 keyed with the hex text of the store's key, over
//! `name NUL value`, first 16 bytes in hex.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};

use crate::support::{
    block_on, fixtures, json as report, recording, sha256_hex, vault_seed, with_bao, OpenBao,
    Sandbox,
};

const MANAGED_BY: &str = "cargo-xtask-secrets";
const RECORD: &str = "_cargo-xtask-secrets";
const AZ_KEY: &str = "cargo-xtask-secrets-key";

fn keyed(key: &str, name: &str, value: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(name.as_bytes());
    mac.update(&[0]);
    mac.update(value.as_bytes());
    mac.finalize().into_bytes()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The longest run of hex digits in `text`.
fn longest_hex_run(text: &str) -> usize {
    text.split(|c: char| !c.is_ascii_hexdigit()).map(str::len).max().unwrap_or(0)
}

/// The KV v2 mount's key, read as anyone who may read values would.
fn vault_key(bao: &OpenBao) -> String {
    let entry: HashMap<String, String> =
        block_on(vaultrs::kv2::read(&bao.client(), "secret", RECORD)).expect("the record entry");
    assert_eq!(entry["managed-by"], MANAGED_BY);
    entry["key"].clone()
}

fn custom_metadata(bao: &OpenBao, name: &str) -> (u64, HashMap<String, String>) {
    let meta = block_on(vaultrs::kv2::read_metadata(&bao.client(), "secret", name)).unwrap();
    (meta.current_version, meta.custom_metadata.unwrap_or_default())
}

fn bao_ok(bao: &OpenBao, args: &[&str]) -> String {
    let out = bao.bao(args);
    assert!(out.status.success(), "bao {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn action<'a>(report: &'a Value, name: &str) -> &'a str {
    report["plan"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .and_then(|i| i["action"]["kind"].as_str())
        .unwrap_or_else(|| panic!("{name} not in the plan: {report}"))
}

#[test]
fn kv2_metadata_holds_a_keyed_digest_that_a_metadata_reader_cannot_test() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    let fx = fixtures(&sb);
    vault_seed(&sb, &bao.addr, &bao.token, &[]).ok();
    let key = vault_key(&bao);
    assert_eq!(key.len(), 64, "a 256-bit random key");
    for (name, value) in &fx {
        let value = value.as_str().unwrap();
        let (version, custom) = custom_metadata(&bao, name);
        assert_eq!(version, 1);
        assert_eq!(custom["managed-by"], MANAGED_BY, "{name}");
        assert_eq!(custom["fixture-hmac"], keyed(&key, name, value), "{name}");
        assert_eq!(custom["fixture-version"], "1");
        let all: String = custom.values().cloned().collect::<Vec<_>>().join(" ");
        assert!(longest_hex_run(&all) < 64, "{name}: {custom:?}");
        assert!(
            !all.contains(&sha256_hex(value)[..16]),
            "{name}: an unkeyed digest of the value: {custom:?}"
        );
    }
    // The key sits where values do: a policy that reads metadata only (as
    // a browsing UI's would) sees the digests, not the key.
    sb.write(
        "meta-only.hcl",
        "path \"secret/metadata/*\" { capabilities = [\"read\", \"list\"] }\n",
    );
    let policy = sb.path("meta-only.hcl");
    bao_ok(&bao, &["policy", "write", "meta-only", policy.to_str().unwrap()]);
    let token = bao_ok(&bao, &["token", "create", "-policy=meta-only", "-field=token"]);
    let reader = crate::support::vault_client(&bao.addr, token.trim());
    let meta = block_on(vaultrs::kv2::read_metadata(&reader, "secret", "redis-password"));
    assert!(meta.is_ok(), "{meta:?}");
    let denied: Result<HashMap<String, String>, _> =
        block_on(vaultrs::kv2::read(&reader, "secret", RECORD));
    assert!(format!("{denied:?}").contains("403"), "a metadata reader reads the key: {denied:?}");
    // `check --live` neither reports the record entry nor counts it.
    let check = sb
        .xtask_env(&["secrets", "check", "--live", "--provider", "vault", "--verbose"], &bao.env());
    assert!(!check.all().contains(RECORD), "{}", check.all());
}

#[test]
fn azure_tags_and_az_argv_carry_no_unkeyed_digest() {
    let sb = Sandbox::new();
    let fx = fixtures(&sb);
    let env = [("AZURE_KEYVAULT_NAME", "kv-dev-carol")];
    sb.xtask_env(&["secrets", "seed", "--provider", "azure"], &env).ok();
    let kv = keyvault(&sb);
    let vault = &kv["kv-dev-carol"];
    let key_doc: Value = serde_json::from_str(vault[AZ_KEY]["value"].as_str().unwrap()).unwrap();
    assert_eq!(key_doc["managed-by"], MANAGED_BY);
    let key = key_doc["key"].as_str().unwrap();
    for (name, value) in &fx {
        let value = value.as_str().unwrap();
        let tags = &vault[name]["tags"];
        assert_eq!(tags["managed-by"], MANAGED_BY, "{name}");
        assert_eq!(tags["fixture-hmac"], keyed(key, name, value), "{name}");
        assert!(tags.get("fixture-sha256").is_none(), "{name}: {tags}");
        assert!(!tags.to_string().contains(&sha256_hex(value)[..16]), "{name}: {tags}");
    }
    // No digest of any kind in argv: the keyed one goes through a file too.
    let calls = sb.calls();
    assert!(calls.iter().any(|c| c.argv.iter().any(|a| a.starts_with("fixture-hmac=@"))));
    for c in &calls {
        let argv = c.argv.join(" ");
        assert!(longest_hex_run(&argv) < 16, "a digest in az's argv: {argv}");
        for (name, value) in &fx {
            let value = value.as_str().unwrap();
            assert!(!argv.contains(&keyed(key, name, value)), "{argv}");
            assert!(!argv.contains(&sha256_hex(value)[..8]), "{argv}");
        }
    }
    // Listings leave the key out.
    let check =
        sb.xtask_env(&["secrets", "check", "--live", "--provider", "azure", "--verbose"], &env);
    assert!(!check.all().contains(AZ_KEY), "{}", check.all());
}

fn keyvault(sb: &Sandbox) -> Value {
    serde_json::from_str(&std::fs::read_to_string(sb.fake_dir.join("keyvault.json")).unwrap())
        .unwrap()
}

/// What the release before left in KV v2: each fixture at version 1 with
/// `managed-by`, `fixture-sha256` and `fixture-version` in its metadata, no
/// record entry.
fn seed_like_the_release_before(bao: &OpenBao, fx: &serde_json::Map<String, Value>) {
    let client = bao.client();
    for (name, value) in fx {
        let value = value.as_str().unwrap();
        let mut data = HashMap::new();
        data.insert("value", value);
        block_on(vaultrs::kv2::set(&client, "secret", name, &data)).unwrap();
        let custom: HashMap<String, String> = [
            ("managed-by", MANAGED_BY.to_string()),
            ("fixture-sha256", sha256_hex(value)),
            ("fixture-version", "1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut request = vaultrs::api::kv2::requests::SetSecretMetadataRequest::builder();
        request.custom_metadata(custom);
        block_on(vaultrs::kv2::set_metadata(&client, "secret", name, Some(&mut request))).unwrap();
    }
}

#[test]
fn a_kv2_store_from_the_release_before_is_restamped_keyed_without_conflicts() {
    let Some((bao, sb)) = with_bao() else {
        return;
    };
    let mut fx = fixtures(&sb);
    // The release before seeded an older fixture for graph-db-password.
    let mut before = fx.clone();
    before.insert("graph-db-password".into(), "fixture-of-the-release-before".into());
    seed_like_the_release_before(&bao, &before);
    let client = bao.client();
    // Then someone edited redis-password by hand.
    bao.hand_edit("redis-password", "edited-by-hand");

    // A dry run plans the takeover and writes nothing, not even the key.
    let dry = report(&vault_seed(&sb, &bao.addr, &bao.token, &["--dry-run"]).ok());
    assert_eq!(action(&dry, "redis-password"), "conflict");
    let entry: Result<HashMap<String, String>, _> =
        block_on(vaultrs::kv2::read(&client, "secret", RECORD));
    assert!(entry.is_err(), "a dry run made the record entry");

    let (proxy, seen) = recording(&bao);
    let run = vault_seed(&sb, &proxy.addr(), &bao.token, &[]).code(1);
    let took = report(&run);
    let n = fx.len();
    assert_eq!(took["counts"]["restamp"], n - 2, "{}", run.all());
    assert_eq!(action(&took, "graph-db-password"), "update");
    assert_eq!(action(&took, "redis-password"), "conflict");
    assert_eq!(took["counts"]["conflict"], 1, "only the hand edit");
    let calls = std::mem::take(&mut *seen.lock().unwrap());
    let value_writes: Vec<&String> =
        calls.iter().filter(|c| c.starts_with("POST /v1/secret/data/")).collect();
    assert_eq!(
        value_writes,
        [
            &format!("POST /v1/secret/data/{RECORD}"),
            &"POST /v1/secret/data/graph-db-password".to_string()
        ],
        "a restamp writes no value"
    );

    let key = vault_key(&bao);
    fx.remove("redis-password");
    for (name, value) in &fx {
        let (version, custom) = custom_metadata(&bao, name);
        let want_version = if name == "graph-db-password" { 2 } else { 1 };
        assert_eq!(version, want_version, "{name}");
        assert_eq!(custom["fixture-hmac"], keyed(&key, name, value.as_str().unwrap()), "{name}");
        assert_eq!(custom["fixture-version"], want_version.to_string(), "{name}");
        assert!(!custom.contains_key("fixture-sha256"), "{name}: {custom:?}");
    }
    let kept: HashMap<String, String> =
        block_on(vaultrs::kv2::read(&client, "secret", "redis-password")).unwrap();
    assert_eq!(kept["value"], "edited-by-hand");

    // The next run writes nothing, and the keyed stamps spare every read
    // but the conflict's.
    let again = report(&vault_seed(&sb, &proxy.addr(), &bao.token, &[]).code(1));
    assert_eq!(again["writes"], 0);
    assert_eq!(again["counts"]["unchanged"], n - 1);
    let calls = std::mem::take(&mut *seen.lock().unwrap());
    let reads: Vec<&String> = calls
        .iter()
        .filter(|c| c.starts_with("GET /v1/secret/data/") && !c.ends_with(RECORD))
        .collect();
    assert_eq!(reads, ["GET /v1/secret/data/redis-password"], "{calls:#?}");

    // A hand edit of a keyed entry is a conflict too.
    bao.hand_edit("graph-db-url", "edited-by-hand");
    let edited = report(&vault_seed(&sb, &bao.addr, &bao.token, &[]).code(1));
    assert_eq!(action(&edited, "graph-db-url"), "conflict");
    assert_eq!(edited["writes"], 0);
}

#[test]
fn an_azure_vault_from_the_release_before_is_restamped_keyed_without_conflicts() {
    let sb = Sandbox::new();
    let fx = fixtures(&sb);
    // The release before: {"value": ...} documents tagged with a plain
    // sha256; one since edited by hand.
    let mut vault = serde_json::Map::new();
    for (name, value) in &fx {
        let value = value.as_str().unwrap();
        let stored = if name == "redis-password" { "edited-by-hand" } else { value };
        vault.insert(
            name.clone(),
            json!({"value": json!({"value": stored}).to_string(), "version": 1,
                   "contentType": "application/json",
                   "tags": {"managed-by": MANAGED_BY, "fixture-sha256": sha256_hex(value)}}),
        );
    }
    std::fs::write(sb.fake_dir.join("keyvault.json"), json!({ "kv-dev-dave": vault }).to_string())
        .unwrap();
    let env = [("AZURE_KEYVAULT_NAME", "kv-dev-dave")];
    let run =
        sb.xtask_env(&["secrets", "seed", "--provider", "azure", "--output", "json"], &env).code(1);
    let took = report(&run);
    assert_eq!(took["counts"]["restamp"], fx.len() - 1, "{}", run.all());
    assert_eq!(action(&took, "redis-password"), "conflict");
    let sets: Vec<String> = sb
        .calls()
        .iter()
        .filter(|c| c.argv.get(2).map(String::as_str) == Some("set"))
        .map(|c| c.argv.join(" "))
        .collect();
    assert_eq!(sets.len(), 1, "only the key is set, no value: {sets:#?}");
    assert!(sets[0].contains(AZ_KEY), "{sets:#?}");

    let kv = keyvault(&sb);
    let vault = &kv["kv-dev-dave"];
    let key_doc: Value = serde_json::from_str(vault[AZ_KEY]["value"].as_str().unwrap()).unwrap();
    let key = key_doc["key"].as_str().unwrap();
    for (name, value) in fx.iter().filter(|(n, _)| *n != "redis-password") {
        let entry = &vault[name];
        assert_eq!(entry["version"], 1, "{name}: no value written");
        assert_eq!(entry["tags"]["fixture-hmac"], keyed(key, name, value.as_str().unwrap()));
        assert!(entry["tags"].get("fixture-sha256").is_none(), "{name}");
    }
    assert_eq!(
        vault["redis-password"]["tags"]["fixture-sha256"],
        sha256_hex(fx["redis-password"].as_str().unwrap()),
        "a conflict is kept as it is"
    );
    for c in sb.calls() {
        let argv = c.argv.join(" ");
        assert!(longest_hex_run(&argv) < 16, "a digest in az's argv: {argv}");
    }

    // The next run writes nothing; the hand edit is still a conflict.
    let before = sb.calls().len();
    let again = report(
        &sb.xtask_env(&["secrets", "seed", "--provider", "azure", "--output", "json"], &env)
            .code(1),
    );
    assert_eq!(again["counts"]["unchanged"], fx.len() - 1);
    assert_eq!(action(&again, "redis-password"), "conflict");
    let writes = sb.calls()[before..]
        .iter()
        .filter(|c| matches!(c.argv.get(2).map(String::as_str), Some("set" | "set-attributes")))
        .count();
    assert_eq!(writes, 0, "a no-op re-seed writes nothing");
}
