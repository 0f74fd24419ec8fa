//! `cargo xtask secrets doctor`: every check of the local secret flow, each
//! finding with the command that fixes it. Changes nothing.

use anyhow::{bail, Result};

use crate::secrets::config::{Config, FlagValues};
use crate::secrets::eso_access::{self, EsoNames};
use crate::secrets::provider::{file, vault, SecretProvider};
use crate::secrets::scan::{self, STORE_NAME};
use crate::secrets::{check, eso_read, fixtures, flagfile, guard, helmfile, kube, vault_checks};
use crate::{flags, project, project_root, tools};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Finding {
    level: Level,
    area: &'static str,
    text: String,
    fix: String,
}

fn ok(area: &'static str, text: impl Into<String>) -> Finding {
    Finding {
        level: Level::Ok,
        area,
        text: text.into(),
        fix: String::new(),
    }
}
fn warn(area: &'static str, text: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        level: Level::Warn,
        area,
        text: text.into(),
        fix: fix.into(),
    }
}
fn fail(area: &'static str, text: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        level: Level::Fail,
        area,
        text: text.into(),
        fix: fix.into(),
    }
}

pub fn run(flags: &flags::Doctor) -> Result<()> {
    let env = flags.env.clone().unwrap_or_else(|| "local".into());
    let root = project_root();
    let mut out: Vec<Finding> = Vec::new();

    for tool in tools::TOOLS {
        match tools::locate(&root, tool) {
            Some(found) => out.push(ok(
                "tools",
                format!(
                    "{} {} at {}",
                    tool.name,
                    tool.version,
                    project::shown(found.path())
                ),
            )),
            None => out.push(fail(
                "tools",
                format!(
                    "{} {} {}",
                    tool.name,
                    tool.version,
                    tools::not_usable(&root, tool)
                ),
                "cargo xtask tools",
            )),
        }
    }
    for (name, why) in [
        ("kubectl", "to reach a cluster"),
        ("az", "only for --provider azure"),
    ] {
        if tools::which(name).is_none() {
            out.push(warn(
                "tools",
                format!("{name} not on PATH ({why})"),
                format!("install {name} if you need it"),
            ));
        }
    }

    let cfg = match crate::secrets::config::load(&FlagValues::default()) {
        Ok(cfg) => cfg,
        Err(e) => {
            out.push(fail("config", format!("{e:#}"), "fix the file it names"));
            return report(out);
        }
    };
    // Read once, used by the Vault checks and the coverage check: loading
    // the fixtures asks git about the overrides file, the scan reads infra/.
    let fixture_set = fixtures::load_configured(&cfg).map(|(_, set)| set);
    let infra_scan = check::collect(&root, &root.join(project::INFRA), &env, false);
    let flag_rel = project::flag_file(&env).display().to_string();
    match std::fs::read_to_string(root.join(&flag_rel))
        .map_err(anyhow::Error::from)
        .and_then(|t| flagfile::provider(&t, &flag_rel))
    {
        Ok(p) => out.push(ok(
            "flag",
            format!("{flag_rel}: secrets.provider = {}", p.as_str()),
        )),
        Err(e) => out.push(fail(
            "flag",
            format!("{e:#}"),
            "restore it: git checkout -- ".to_string() + &flag_rel,
        )),
    }

    let context = kube::current_context();
    let local = match &context {
        None => {
            out.push(warn(
                "cluster",
                "no kube context",
                "kubectl config use-context <your local cluster> (k3d-..., kind-...)",
            ));
            false
        }
        Some(c) if guard::is_local_context(c, &cfg.local_contexts) => {
            out.push(ok("cluster", format!("context {c} is local")));
            true
        }
        Some(c) => {
            out.push(fail(
                "cluster",
                format!("context {c} does not look local: seed and migrate refuse it"),
                "kubectl config use-context <local context>, or add it to guardrail.local_contexts in .local/secrets.toml",
            ));
            false
        }
    };

    if cfg.vault_addr.is_some() || local {
        let vault_cfg = &cfg;
        match vault::VaultProvider::connect(vault_cfg, None) {
            Ok(mut p) => {
                out.push(ok(
                    "vault",
                    format!("{} reachable, unsealed, token valid", p.target()),
                ));
                vault_findings(&mut out, &mut p, vault_cfg, &env, &fixture_set, &infra_scan);
                if let Ok(true) = p.detailed_listing_denied() {
                    out.push(warn(
                        "vault",
                        format!(
                            "the token may not list {}/detailed-metadata/: every re-seed reads each entry",
                            vault_cfg.vault_mount.value
                        ),
                        "grant `list` on that path for one-request re-seeds (docs/secrets.md, how the seed reads Vault)",
                    ));
                }
            }
            Err(e) => out.push(fail(
                "vault",
                format!("{e:#}"),
                "see the message; docs/secrets.md#troubleshooting",
            )),
        }
    } else {
        out.push(warn(
            "vault",
            "not checked: no VAULT_ADDR and no local cluster",
            "VAULT_ADDR=http://127.0.0.1:8200 VAULT_TOKEN=... (bao server -dev), or a local cluster",
        ));
    }

    if local {
        match kube::crd_present("externalsecrets.external-secrets.io") {
            Ok(true) => out.push(ok("eso", "ExternalSecret CRDs installed")),
            Ok(false) => out.push(fail(
                "eso",
                "External Secrets Operator is not installed",
                "install ESO on the cluster",
            )),
            Err(e) => out.push(fail("eso", format!("{e:#}"), "check kubectl access")),
        }
        out.push(store_finding(
            kube::kubectl(&["get", "clustersecretstore", STORE_NAME, "--output", "json"]),
            &env,
        ));
        external_secret_findings(&mut out);
    }

    match &fixture_set {
        Err(e) => out.push(fail(
            "fixtures",
            format!("{e:#}"),
            "fix the file at the position shown",
        )),
        Ok(set) => match &infra_scan {
            Err(e) => out.push(fail("coverage", format!("{e:#}"), "fix the file it names")),
            Ok(scan) => {
                let report = check::compare(scan, &env, set, None);
                let missing = report.failures(&check::parse_fail_on(None)?).len();
                if missing == 0 {
                    out.push(ok(
                        "coverage",
                        format!(
                            "{} fixtures cover {} required keys (static)",
                            set.len(),
                            report.required_keys
                        ),
                    ));
                } else {
                    out.push(fail(
                        "coverage",
                        format!("{missing} keys missing or unusable"),
                        "cargo xtask secrets check",
                    ));
                }
            }
        },
    }

    let store = cfg.abs(&cfg.file_store.value);
    if store.exists() {
        let mode = std::fs::metadata(&store)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap_or(0);
        if mode & 0o077 != 0 {
            out.push(fail(
                "file store",
                format!("{} has mode {mode:o}", project::shown(&store)),
                format!("chmod 600 {}", project::shown(&store)),
            ));
        } else {
            match guard::require_git_ignored(&root, &store, "the file store")
                .and_then(|()| file::load(&store))
            {
                Ok(s) => out.push(ok(
                    "file store",
                    format!(
                        "{}: {} secrets, 0600, git-ignored",
                        project::shown(&store),
                        s.secrets.len()
                    ),
                )),
                Err(e) => out.push(fail("file store", format!("{e:#}"), "see the message")),
            }
        }
    }
    report(out)
}

/// Past "reachable": the fixtures still there, the token's capabilities on
/// what the seed writes, ESO's access, and reading as ESO.
/// `fixture_set` and `infra_scan` are what `run` read for the coverage check.
fn vault_findings(
    out: &mut Vec<Finding>,
    p: &mut vault::VaultProvider,
    cfg: &Config,
    env: &str,
    fixture_set: &Result<fixtures::SecretSet>,
    infra_scan: &Result<scan::Scan>,
) {
    let mount = cfg.vault_mount.value.clone();
    let kv_v2 = p.kv_version() == vault::KvVersion::V2;
    let fixtures = fixture_set.as_ref().map(|set| set.names());
    let names = EsoNames::load(&cfg.root, env);
    if let Ok(fixture_names) = &fixtures {
        match p.list() {
            Ok(listed) => {
                let held = vault_checks::Held::count(fixture_names, &listed);
                if held.complete() {
                    out.push(ok("vault", format!("{mount}/ {}", held.describe())));
                } else {
                    out.push(fail(
                        "vault",
                        format!("{mount}/ {}", held.describe()),
                        vault_checks::RESEED,
                    ));
                }
            }
            Err(e) => out.push(fail(
                "vault",
                format!("listing {mount}/: {e:#}"),
                "grant `list` on the mount's metadata (docs/secrets.md, how the seed reads Vault)",
            )),
        }
    }
    let http = p.vault_http().expect("a vault store");
    let sample = fixtures
        .as_ref()
        .ok()
        .and_then(|f| f.first().cloned())
        .unwrap_or_else(|| "any".into());
    match vault_checks::lacking(http, &mount, kv_v2, &sample, names.as_ref().ok()) {
        Ok((kv, eso)) => {
            if kv.is_empty() {
                out.push(ok(
                    "vault",
                    format!("the token may write what the seed writes to {mount}/"),
                ));
            } else {
                out.push(fail(
                    "vault",
                    format!(
                        "the token lacks {}: the seed's writes would be refused (403)",
                        vault_checks::describe_lacks(&kv)
                    ),
                    "use a token with the policy in docs/secrets.md (how the seed reads Vault); on a dev server, the \
                     root token",
                ));
            }
            if !eso.is_empty() {
                out.push(warn(
                    "vault",
                    format!(
                        "the token lacks {}: the seed cannot set up ESO's access with it",
                        vault_checks::describe_lacks(&eso)
                    ),
                    "run the seed once with a root token (the port-forward uses the dev chart's)",
                ));
            }
        }
        Err(e) => out.push(warn(
            "vault",
            format!("capabilities not checked: {e:#}"),
            "see the message",
        )),
    }
    let names = match names {
        Ok(n) => n,
        Err(e) => {
            out.push(fail(
                "eso access",
                format!("{e:#}"),
                "restore the file it names from git",
            ));
            return;
        }
    };
    let plan = match eso_access::plan(http, &names) {
        Ok(plan) => plan,
        Err(e) => {
            out.push(fail("eso access", format!("{e:#}"), "see the message"));
            return;
        }
    };
    let missing: Vec<String> = plan
        .items
        .iter()
        .filter(|i| i.state == eso_access::State::Ensure)
        .map(|i| i.label())
        .collect();
    for item in &plan.items {
        if let eso_access::State::Skipped(why) = &item.state {
            out.push(warn(
                "eso access",
                format!("{}: not checked: {why}", item.label()),
                "see the message",
            ));
        }
    }
    if !missing.is_empty() {
        out.push(fail(
            "eso access",
            format!(
                "ESO cannot log in to Vault as ClusterSecretStore/{} does: missing or different: {}",
                names.store,
                missing.join(", ")
            ),
            vault_checks::RESEED,
        ));
        return;
    }
    if plan.complete() {
        out.push(ok(
            "eso access",
            format!(
                "auth {}/, policy {}, role {} (service account {}) in place",
                names.auth_mount,
                names.policy,
                names.role,
                names.subject()
            ),
        ));
    }
    // Reading as ESO needs only the policy and the role.
    if plan
        .items
        .iter()
        .any(|i| matches!(i.kind, "policy" | "role") && i.state != eso_access::State::InPlace)
    {
        return;
    }
    let keys = match infra_scan {
        Ok(scan) => check::eso_keys(scan),
        Err(_) => return, // the coverage finding below names the file
    };
    match eso_read::read_as_eso(http, &names, &keys) {
        Ok(a) if a.ok() => out.push(ok("eso access", a.summary())),
        Ok(a) => {
            let mut text = a.summary();
            for (key, why) in a.unreadable.iter().take(10) {
                text.push_str(&format!("\n{:<16}{key}: {why}", ""));
            }
            out.push(fail(
                "eso access",
                text,
                "cargo xtask secrets check --live --as-eso; cargo xtask secrets seed",
            ));
        }
        Err(e) => out.push(warn(
            "eso access",
            format!("not read as ESO: {e:#}"),
            "see the message",
        )),
    }
}

/// The store's Ready condition, from `kubectl get clustersecretstore
/// <STORE_NAME> --output json` (`got`); a failed get is fixed by syncing
/// layer 15 of `env`.
fn store_finding(got: Result<String>, env: &str) -> Finding {
    let json = match got {
        Ok(json) => json,
        Err(e) => {
            return fail(
                "eso",
                format!("ClusterSecretStore/{STORE_NAME}: {e:#}"),
                helmfile::sync_display(env),
            )
        }
    };
    // The store's status has an ExternalSecret's shape: read it as one.
    let ready = kube::parse_external_secrets(&format!("{{\"items\": [{json}]}}"))
        .ok()
        .and_then(|list| list.into_iter().next())
        .filter(|s| s.ready.is_some());
    match ready {
        Some(s) if s.ready == Some(true) => {
            ok("eso", format!("ClusterSecretStore/{STORE_NAME} Ready"))
        }
        Some(s) => fail(
            "eso",
            format!(
                "ClusterSecretStore/{STORE_NAME} not Ready: {}: {}",
                s.reason, s.message
            ),
            format!(
                "kubectl describe clustersecretstore {STORE_NAME}; docs/secrets.md#troubleshooting"
            ),
        ),
        None => warn(
            "eso",
            format!("ClusterSecretStore/{STORE_NAME} has no Ready condition yet"),
            "wait, then run doctor again",
        ),
    }
}

/// ExternalSecrets on the store that ESO does not report Ready, with its reason.
fn external_secret_findings(out: &mut Vec<Finding>) {
    let list = match kube::external_secrets() {
        Ok(list) => list,
        Err(e) => {
            out.push(fail("eso", format!("{e:#}"), "check kubectl access"));
            return;
        }
    };
    let ours: Vec<_> = list
        .iter()
        .filter(|e| scan::is_our_store(&e.store))
        .collect();
    let bad: Vec<_> = ours.iter().filter(|e| e.ready != Some(true)).collect();
    if ours.is_empty() {
        out.push(warn(
            "eso",
            format!("no ExternalSecret on ClusterSecretStore/{STORE_NAME} in the cluster yet"),
            "sync layer 15 and the services (helmfile ... sync)",
        ));
        return;
    }
    if bad.is_empty() {
        out.push(ok(
            "eso",
            format!("{} ExternalSecrets on {STORE_NAME} Ready", ours.len()),
        ));
        return;
    }
    for e in bad.iter().take(20) {
        let state = match e.ready {
            None => "no Ready condition yet".to_string(),
            _ => format!("{}: {}", e.reason, e.message),
        };
        out.push(fail(
            "eso",
            format!("ExternalSecret {} not Ready: {state}", e.id()),
            external_secret_fix(&e.namespace, &e.name, &e.message),
        ));
    }
    if bad.len() > 20 {
        out.push(fail(
            "eso",
            format!("and {} more ExternalSecrets not Ready", bad.len() - 20),
            "cargo xtask secrets status lists them all",
        ));
    }
}

/// The fix for an ExternalSecret's failure, from ESO's message.
fn external_secret_fix(namespace: &str, name: &str, message: &str) -> String {
    let m = message.to_ascii_lowercase();
    let resync = format!("kubectl annotate externalsecret {name} --namespace {namespace} force-sync=$(date +%s) --overwrite");
    if m.contains("permission denied") || m.contains("403") {
        format!(
            "{} (ESO's policy and role), then {resync}",
            vault_checks::RESEED
        )
    } else if m.contains("does not exist") || m.contains("not found") || m.contains("404") {
        format!(
            "cargo xtask secrets check --live names the key; {}, then {resync}",
            vault_checks::RESEED
        )
    } else {
        format!("kubectl describe externalsecret {name} --namespace {namespace}; docs/secrets.md#troubleshooting")
    }
}

fn report(findings: Vec<Finding>) -> Result<()> {
    let mut failed = 0;
    for f in &findings {
        let tag = match f.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => {
                failed += 1;
                "FAIL"
            }
        };
        println!("{tag}  {:<10} {}", f.area, f.text);
        if !f.fix.is_empty() {
            println!("      {:<10} fix: {}", "", f.fix);
        }
    }
    if failed > 0 {
        bail!("{failed} checks failed; each FAIL above says how to fix it");
    }
    println!("all checks passed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(json: &str) -> Finding {
        store_finding(Ok(json.to_string()), "local")
    }

    #[test]
    fn the_store_finding_reads_the_ready_condition() {
        let ready = store(r#"{"status": {"conditions": [{"type": "Ready", "status": "True"}]}}"#);
        assert!(ready.level == Level::Ok && ready.fix.is_empty());
        assert_eq!(ready.text, "ClusterSecretStore/ameide-vault Ready");

        let not = store(
            r#"{"status": {"conditions": [{"type": "Other", "status": "True"},
                {"type": "Ready", "status": "False", "reason": "InvalidProviderConfig", "message": "no role"}]}}"#,
        );
        assert!(not.level == Level::Fail);
        assert_eq!(
            (not.text.as_str(), not.fix.as_str()),
            (
                "ClusterSecretStore/ameide-vault not Ready: InvalidProviderConfig: no role",
                "kubectl describe clustersecretstore ameide-vault; docs/secrets.md#troubleshooting"
            )
        );

        for pending in [
            r#"{"status": {}}"#,
            r#"{"status": {"conditions": [{"type": "Other", "status": "True"}]}}"#,
            "not json",
            "",
        ] {
            let f = store(pending);
            assert!(f.level == Level::Warn, "{pending:?}: {}", f.text);
            assert_eq!(
                (f.text.as_str(), f.fix.as_str()),
                (
                    "ClusterSecretStore/ameide-vault has no Ready condition yet",
                    "wait, then run doctor again"
                )
            );
        }
    }

    #[test]
    fn a_store_kubectl_cannot_get_is_fixed_by_syncing_layer_15() {
        let f = store_finding(Err(anyhow::anyhow!("NotFound")), "local");
        assert!(f.level == Level::Fail);
        assert_eq!(f.text, "ClusterSecretStore/ameide-vault: NotFound");
        assert_eq!(
            f.fix,
            "helmfile --file infra/kubernetes/helmfiles/15-secrets-certificates.yaml --environment local sync"
        );
        let dev = store_finding(Err(anyhow::anyhow!("NotFound")), "dev");
        assert!(dev.fix.contains("--environment dev sync"), "{}", dev.fix);
    }
}
