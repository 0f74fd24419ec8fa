//! `cargo xtask secrets status`: where things stand, without changing anything.

use anyhow::Result;
use serde_json::json;

use crate::flags::{self, Format};
use crate::fsutil::{sha256_hex, short};
use crate::project::{self, Process};
use crate::secrets::config::{Config, FlagValues};
use crate::secrets::migrate::journal::{self, Journal};
use crate::secrets::provider::vault;
use crate::secrets::provider::vault_http::{Method, Reply, VaultError, VaultHttp};
use crate::secrets::scan::{self, STORE_NAME};
use crate::secrets::{eso_access, fixtures, flagfile, guard, kube, vault_checks};

pub(crate) fn run(flags: &flags::Status, process: &Process) -> Result<()> {
    let env = flags.env.as_deref().unwrap_or("local");
    let root = &process.root;
    let cfg = Config::load(process, &FlagValues::default())?;

    let flags_by_env: Vec<(String, String)> = project::environments(root)
        .into_iter()
        .map(|e| {
            let rel = project::flag_file(&e).display().to_string();
            let value = std::fs::read_to_string(root.join(&rel))
                .map_err(anyhow::Error::from)
                .and_then(|t| flagfile::provider(&t, &rel).map(|p| p.as_str().to_string()))
                .unwrap_or_else(|e| format!("error: {e:#}"));
            (e, value)
        })
        .collect();
    let flag_rel = project::flag_file(env).display().to_string();
    let flag_text = std::fs::read_to_string(root.join(&flag_rel)).unwrap_or_default();
    let flag_now = flags_by_env.iter().find(|(e, _)| e == env).map_or("?", |(_, v)| v.as_str());
    let provider_now = flag_now.parse().ok();
    // A journal that cannot be read is reported, not a reason to show nothing.
    let (journal, journal_error) = match Journal::load(root, env) {
        Ok(j) => (j, None),
        Err(e) => (Journal::default(), Some(format!("{e:#}"))),
    };
    let (last, journal_path) = (journal.current(), journal::path(root, env));
    let fits = last.map(|m| journal::flag_fits(&journal, m, &flag_text));
    let context = kube::current_context(&cfg.kubeconfig);
    let context_local = context.as_ref().map(|c| guard::is_local_context(c, &cfg.local_contexts));
    let vault = vault_health(&cfg);
    let eso = (context_local == Some(true))
        .then(|| kube::external_secrets().map_err(|e| format!("{e:#}")));

    if matches!(flags.output, Some(Format::Json)) {
        let eso_json = match &eso {
            None => json!(null),
            Some(Ok(list)) => json!(ours(list)),
            Some(Err(e)) => json!({ "error": e }),
        };
        let cfg_rows = cfg.describe().into_iter();
        let cfg_rows: Vec<_> =
            cfg_rows.map(|(k, v, s)| json!({"key": k, "value": v, "source": s})).collect();
        let providers: Vec<_> =
            flags_by_env.iter().map(|(e, v)| json!({"env": e, "provider": v})).collect();
        let value = json!({
            "env": env,
            "providers": providers,
            "last_migration": last,
            "journal_error": journal_error,
            "flag_as_journaled": fits,
            "next_command": last.and_then(|m| m.next_command(provider_now)),
            "kube_context": context,
            "kube_context_local": context_local,
            "vault": vault,
            "external_secrets": eso_json,
            "config": cfg_rows,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("provider flag (secrets.provider) per environment:");
    for (e, v) in &flags_by_env {
        println!("  {e:<12} {v}{}", if e == env { "   <-" } else { "" });
    }
    println!("\nlast migration of {env}:");
    match (last, &journal_error) {
        (_, Some(e)) => println!("  the journal cannot be read: {e}"),
        (None, None) => println!("  none in {}", project::shown_from(root, &journal_path)),
        (Some(m), None) => {
            println!("  {} {} -> {}: {}, started {}", m.kind, m.from, m.to, m.state, m.started);
            match m.next_step_text(provider_now) {
                Some(next) if fits == Some(true) && m.rolling_back(provider_now) => println!(
                    "  unfinished: its automatic rollback began ({flag_rel} says {flag_now} again); finish it with {next}"
                ),
                Some(next) if fits == Some(true) => println!("  unfinished: finish it with {next}"),
                Some(next) => println!(
                    "  unfinished, and {flag_rel} changed since the journal's last step (checksum {}, the journal \
                     expects {}): put it back (`git diff -- {flag_rel}` shows what changed), then finish it with {next}",
                    short(&sha256_hex(flag_text.as_bytes())),
                    short(m.flag_sha_now())
                ),
                None => {}
            }
            for s in &m.steps {
                let (sep, detail) =
                    if s.detail.is_empty() { ("", "") } else { (": ", first_line(&s.detail)) };
                println!("    {:<18} {:?}{sep}{detail}", s.name.as_str(), s.outcome);
            }
        }
    }
    let context = match (&context, context_local) {
        (Some(c), Some(true)) => format!("{c} (local)"),
        (Some(c), _) => format!("{c} (not local: migrate and port-forward refuse it)"),
        (None, _) => "none".into(),
    };
    println!("\nkube context: {context}");
    println!("vault: {}", vault["summary"].as_str().unwrap_or_default());
    match &eso {
        None => println!("external secrets: no local cluster reachable"),
        Some(Err(e)) => println!("external secrets: {}", first_line(e)),
        Some(Ok(list)) => {
            let ours = ours(list);
            let ready = ours.iter().filter(|e| e.ready == Some(true)).count();
            println!("external secrets on {STORE_NAME}: {ready}/{} Ready", ours.len());
            for e in ours.iter().filter(|e| e.ready != Some(true)) {
                println!("  {}: {}: {}", e.id(), e.reason, e.message);
            }
        }
    }
    println!("\neffective configuration (highest precedence wins: flag, env, .local/secrets.toml, secrets.toml, built-in):");
    for (k, v, s) in cfg.describe() {
        // The source column stays put as long as key and value fit.
        let width = 71usize.saturating_sub(k.len().max(18) + 1);
        println!("  {k:<18} {v:<width$} {s}");
    }
    Ok(())
}

fn ours(list: &[kube::EsStatus]) -> Vec<&kube::EsStatus> {
    list.iter().filter(|e| scan::is_our_store(&e.store)).collect()
}

/// How many fixtures the configured Vault holds at KV version `kv`; `None` when unknown.
fn fixtures_held(cfg: &Config, http: &VaultHttp, kv: &str) -> Option<vault_checks::Held> {
    let (_, desired) = fixtures::load_configured(cfg).ok()?;
    // The seed's own rules for this address and token; connects to nothing.
    vault::resolve_endpoint(cfg, None).ok()?;
    let mount = &cfg.vault_mount.value;
    let path = match kv {
        "2" => format!("{mount}/metadata/"),
        "1" => format!("{mount}/"),
        _ => return None,
    };
    let listed = listed_names(&http.try_call(Method::List, &path, None).ok()?)?;
    // On KV v1 the seed's record entry is listed too; no fixture has its name.
    Some(vault_checks::Held::count(&desired.names(), &listed))
}

/// The entry names a LIST answered with (no sub-folders); a 404 is an empty mount.
fn listed_names(reply: &Reply) -> Option<Vec<String>> {
    match reply.status {
        404 => Some(Vec::new()),
        200 => {
            let keys = eso_access::strings(&reply.body["data"]["keys"]);
            Some(keys.into_iter().filter(|k| !k.ends_with('/')).collect())
        }
        _ => None,
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// Vault health when an address is configured; never a port-forward.
fn vault_health(cfg: &Config) -> serde_json::Value {
    let Some(addr) = &cfg.vault_addr else {
        return json!({"summary": "VAULT_ADDR unset (seed port-forwards through a local kube context; `cargo xtask secrets doctor` checks that Vault, and whether it still holds the fixtures)"});
    };
    let (at, source) = (&addr.value, &addr.source);
    if let Err(e) = guard::check_vault_addr(at, None) {
        return json!({"addr": at, "summary": format!("not checked: {e}")});
    }
    let token = cfg.vault_token.as_ref().map(|t| t.value.clone());
    let token = token.unwrap_or_else(|| crate::output::Secret::new(String::new()));
    let result = (|| -> Result<serde_json::Value> {
        let http = vault::configured_http(cfg, at, token, std::time::Duration::from_secs(5), 0, 1)?;
        let health = http.health()?;
        let mount = &cfg.vault_mount.value;
        let kv =
            if health.sealed { "unknown (sealed)".to_string() } else { kv_version(&http, mount) };
        let held = (!health.sealed).then(|| fixtures_held(cfg, &http, &kv)).flatten();
        let seal = if health.sealed { "SEALED" } else { "unsealed" };
        let standby = if health.standby { ", standby" } else { "" };
        let version = health.version.as_deref().unwrap_or("?");
        let kv_is = if kv.starts_with(char::is_numeric) { "KV v" } else { "KV version " };
        let fixtures = match &held {
            Some(h) if h.complete() => format!("; {mount}/ {}", h.describe()),
            Some(h) => format!("; {mount}/ {}. Fix: {}", h.describe(), vault_checks::RESEED),
            None => String::new(),
        };
        Ok(json!({
            "fixtures": held.as_ref().map(|h| json!({
                "present": h.present, "total": h.total, "missing": h.missing,
                "fix": (!h.complete()).then_some(vault_checks::RESEED),
            })),
            "addr": at,
            "initialized": health.initialized,
            "sealed": health.sealed,
            "standby": health.standby,
            "version": health.version,
            "mount": mount,
            "kv_version": kv,
            "summary": format!("{at} ({source}): {seal}{standby}, version {version}; mount {mount}/: {kv_is}{kv}{fixtures}"),
        }))
    })();
    result.unwrap_or_else(|e| json!({"addr": at, "summary": format!("{at} unreachable: {e:#}")}))
}

/// The KV version of `mount` ("1", "2"), or why it is not known.
fn kv_version(http: &VaultHttp, mount: &str) -> String {
    match vault::mount_info(http, mount) {
        Err(VaultError::Forbidden { .. }) => "unknown (the token may not read the mount)".into(),
        Err(e) => format!("unknown ({})", first_line(&e.to_string())),
        Ok(None) => "none: nothing is mounted there".into(),
        Ok(Some(i)) if i["type"] != "kv" && i["type"] != "generic" => {
            format!("none: a {} engine is mounted there", i["type"].as_str().unwrap_or("?"))
        }
        Ok(Some(i)) => i["options"]["version"].as_str().unwrap_or("1").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_gives_the_entries_not_the_folders() {
        let names = |status, body| listed_names(&Reply { status, body });
        let keys = json!({"data": {"keys": ["b", "team/", "a", "_cargo-xtask-secrets"]}});
        assert_eq!(names(200, keys).unwrap(), ["b", "a", "_cargo-xtask-secrets"]);
        assert_eq!(names(404, json!({"errors": []})), Some(vec![]));
        assert_eq!(names(403, json!({"errors": ["permission denied"]})), None);
    }
}
