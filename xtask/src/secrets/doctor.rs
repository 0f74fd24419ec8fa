//! `cargo xtask secrets doctor`: every check of the local secret flow, each
//! finding with the command that fixes it. Changes nothing.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{ensure, Result};

use crate::flags::FailOn;
use crate::project::{self, Process};
use crate::secrets::config::{Config, FlagValues};
use crate::secrets::eso_access::{self, EsoNames};
use crate::secrets::migrate::journal;
use crate::secrets::provider::{file, vault, SecretProvider};
use crate::secrets::scan::{self, STORE_NAME};
use crate::secrets::{coverage, eso_read, fixtures, flagfile, guard, helmfile, kube, vault_checks};
use crate::{flags, tools};

/// One check's result; `tag` is how the report marks it: "ok  ", "warn" or "FAIL".
struct Finding {
    tag: &'static str,
    area: &'static str,
    text: String,
    fix: String,
}

fn ok(area: &'static str, text: impl Into<String>) -> Finding {
    Finding { tag: "ok  ", area, text: text.into(), fix: String::new() }
}
fn warn(area: &'static str, text: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding { tag: "warn", area, text: text.into(), fix: fix.into() }
}
fn fail(area: &'static str, text: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding { tag: "FAIL", area, text: text.into(), fix: fix.into() }
}

const SEE: &str = "see the message";
const CLUSTER_INFO: &str = "check kubectl access: `kubectl cluster-info`";
const FIX_FILE: &str = "fix the file it names";

pub(crate) fn run(flags: &flags::Doctor, process: &Process) -> Result<()> {
    let env = flags.env.as_deref().unwrap_or("local");
    let root = &process.root;
    let mut out: Vec<Finding> = Vec::new();

    for tool in tools::TOOLS {
        let (name, version) = (tool.name, tool.version);
        out.push(match tools::locate(root, tool) {
            Some(found) => {
                let at = project::shown_from(root, found.path());
                ok("tools", format!("{name} {version} at {at}"))
            }
            None => {
                let text = format!("{name} {version} {}", tools::not_usable(root, tool));
                fail("tools", text, "cargo xtask tools")
            }
        });
    }
    for (name, why) in [("kubectl", "to reach a cluster"), ("az", "only for --provider azure")] {
        if tools::which(name).is_none() {
            let fix = format!("install {name} if you need it");
            out.push(warn("tools", format!("{name} not on PATH ({why})"), fix));
        }
    }

    let cfg = match crate::secrets::config::load(&FlagValues::default()) {
        Ok(cfg) => cfg,
        Err(e) => {
            out.push(fail("config", format!("{e:#}"), FIX_FILE));
            return report(out);
        }
    };
    // Read once for the Vault checks and the coverage check.
    let fixture_set = fixtures::load_configured(&cfg).map(|(_, set)| set);
    let infra_scan = scan::collect(&cfg, &root.join(project::INFRA), env, false);
    let flag_rel = project::flag_file(env).display().to_string();
    let flag = std::fs::read_to_string(root.join(&flag_rel))
        .map_err(anyhow::Error::from)
        .and_then(|t| flagfile::provider(&t, &flag_rel));
    out.push(match flag {
        Ok(p) => ok("flag", format!("{flag_rel}: secrets.provider = {p}")),
        Err(e) => fail("flag", format!("{e:#}"), flag_fix(root, &flag_rel)),
    });
    out.push(journal_finding(root, env, &flag_rel));

    let context = kube::current_context(&cfg.kubeconfig);
    let local = context.as_ref().is_some_and(|c| guard::is_local_context(c, &cfg.local_contexts));
    out.push(match &context {
        None => warn(
            "cluster",
            "no kube context",
            "kubectl config use-context <your local cluster> (k3d-..., kind-...)",
        ),
        Some(c) if local => ok("cluster", format!("context {c} is local")),
        Some(c) => fail(
            "cluster",
            format!("context {c} does not look local: seed and migrate refuse it"),
            "kubectl config use-context <local context>, or add it to guardrail.local_contexts in .local/secrets.toml",
        ),
    });

    if cfg.vault_addr.is_none() && !local {
        out.push(warn(
            "vault",
            "not checked: no VAULT_ADDR and no local cluster",
            "VAULT_ADDR=http://127.0.0.1:8200 VAULT_TOKEN=... (bao server -dev), or a local cluster",
        ));
    } else {
        match vault::VaultProvider::connect(&cfg, None) {
            Ok(mut p) => {
                out.push(ok("vault", format!("{} reachable, unsealed, token valid", p.target())));
                vault_findings(&mut out, &mut p, &cfg, env, &fixture_set, &infra_scan);
                if let Ok(true) = p.detailed_listing_denied() {
                    let mount = &cfg.vault_mount.value;
                    out.push(warn(
                        "vault",
                        format!("the token may not list {mount}/detailed-metadata/: every re-seed reads each entry"),
                        "grant `list` on that path for one-request re-seeds (docs/secrets.md, how the seed reads Vault)",
                    ));
                }
            }
            Err(e) => {
                let fix = "see the message; docs/secrets.md#troubleshooting";
                out.push(fail("vault", format!("{e:#}"), fix))
            }
        }
    }

    if local {
        let served = format!("External Secrets Operator serves {}", kube::ESO_V1);
        let (finding, installed) = match kube::eso_api() {
            Ok(api) => match api.problem() {
                None => (ok("eso", served), true),
                Some((what, fix)) => (fail("eso", what, fix), api != kube::EsoApi::Missing),
            },
            Err(e) => (fail("eso", format!("{e:#}"), CLUSTER_INFO), false),
        };
        out.push(finding);
        // Without ESO, every question about its objects has the answer above.
        if installed {
            let denied = eso_access::denied_checks(root, env, &cfg);
            let store =
                kube::kubectl(&["get", "clustersecretstore", STORE_NAME, "--output", "json"]);
            out.push(store_finding(store, kube::store_event(), env, &denied));
            external_secret_findings(&mut out, &denied, env);
        }
    }

    out.push(match (&fixture_set, &infra_scan) {
        (Err(e), _) => fail("fixtures", format!("{e:#}"), "fix the file at the position shown"),
        (_, Err(e)) => fail("coverage", format!("{e:#}"), FIX_FILE),
        (Ok(set), Ok(scan)) => {
            let report = coverage::compare(scan, env, set, None);
            let missing = report.failures(&FailOn::default()).len();
            let (keys, n) = (report.required_keys, set.len());
            let fix = "cargo xtask secrets check";
            if missing == 0 {
                ok("coverage", format!("{n} fixtures cover {keys} required keys (static)"))
            } else {
                fail("coverage", format!("{missing} keys missing or unusable"), fix)
            }
        }
    });

    let store = cfg.abs(&cfg.file_store.value);
    if store.exists() {
        let shown = cfg.shown(&store);
        let mode = std::fs::metadata(&store).map_or(0, |m| m.permissions().mode() & 0o777);
        let loaded = || {
            guard::require_git_ignored(root, &store, "the file store")
                .and_then(|()| file::load(&store))
        };
        out.push(if mode & 0o077 != 0 {
            fail("file store", format!("{shown} has mode {mode:o}"), format!("chmod 600 {shown}"))
        } else {
            match loaded().map(|s| s.secrets.len()) {
                Ok(n) => ok("file store", format!("{shown}: {n} secrets, 0600, git-ignored")),
                Err(e) => fail("file store", format!("{e:#}"), SEE),
            }
        });
    }
    report(out)
}

/// Past "reachable": the fixtures, the token's capabilities, ESO's access and reading as ESO.
fn vault_findings(
    out: &mut Vec<Finding>,
    p: &mut vault::VaultProvider,
    cfg: &Config,
    env: &str,
    fixture_set: &Result<fixtures::SecretSet>,
    infra_scan: &Result<scan::Scan>,
) {
    let mount = &cfg.vault_mount.value;
    let kv_v2 = p.kv_version() == vault::KvVersion::V2;
    let fixtures = fixture_set.as_ref().map(|set| set.names());
    let names = EsoNames::load(&cfg.root, env);
    if let Ok(fixture_names) = &fixtures {
        out.push(match p.list() {
            Ok(listed) => {
                let held = vault_checks::Held::count(fixture_names, &listed);
                let text = format!("{mount}/ {}", held.describe());
                if held.complete() {
                    ok("vault", text)
                } else {
                    fail("vault", text, vault_checks::RESEED)
                }
            }
            Err(e) => fail(
                "vault",
                format!("listing {mount}/: {e:#}"),
                "grant `list` on the mount's metadata (docs/secrets.md, how the seed reads Vault)",
            ),
        });
    }
    let http = p.vault_http().expect("a vault store");
    let sample = fixtures.as_ref().ok().and_then(|f| f.first().cloned());
    let sample = sample.unwrap_or_else(|| "any".into());
    match vault_checks::lacking(http, mount, kv_v2, &sample, names.as_ref().ok()) {
        Ok((kv, eso)) => {
            out.push(if kv.is_empty() {
                ok("vault", format!("the token may write what the seed writes to {mount}/"))
            } else {
                let lacks = vault_checks::describe_lacks(&kv);
                fail(
                    "vault",
                    format!("the token lacks {lacks}: the seed's writes would be refused (403)"),
                    "use a token with the policy in docs/secrets.md (how the seed reads Vault); on a dev server, the \
                     root token",
                )
            });
            if !eso.is_empty() {
                let lacks = vault_checks::describe_lacks(&eso);
                out.push(warn(
                    "vault",
                    format!("the token lacks {lacks}: the seed cannot set up ESO's access with it"),
                    "run the seed once with a root token (the port-forward uses the dev chart's)",
                ));
            }
        }
        Err(e) => out.push(warn("vault", format!("capabilities not checked: {e:#}"), SEE)),
    }
    let restore = "restore the file it names from git";
    let names = match names {
        Ok(n) => n,
        Err(e) => return out.push(fail("eso access", format!("{e:#}"), restore)),
    };
    let plan = match eso_access::plan(http, &names, &cfg.kubeconfig) {
        Ok(plan) => plan,
        Err(e) => return out.push(fail("eso access", format!("{e:#}"), SEE)),
    };
    let mut missing = Vec::new();
    for item in &plan.items {
        match &item.state {
            eso_access::State::Ensure => missing.push(item.label()),
            eso_access::State::Skipped(why) => {
                out.push(warn("eso access", format!("{}: not checked: {why}", item.label()), SEE))
            }
            _ => {}
        }
    }
    if !missing.is_empty() {
        let (store, missing) = (&names.store, missing.join(", "));
        let text = format!(
            "ESO cannot log in to Vault as ClusterSecretStore/{store} does: missing or different: {missing}"
        );
        return out.push(fail("eso access", text, vault_checks::RESEED));
    }
    if plan.complete() {
        let (auth, policy, role) = (&names.auth_mount, &names.policy, &names.role);
        let subject = names.subject();
        let text = format!(
            "auth {auth}/, policy {policy}, role {role} (service account {subject}) in place"
        );
        out.push(ok("eso access", text));
    }
    // Reading as ESO needs only the policy and the role.
    let needed = |i: &eso_access::Item| matches!(i.kind, "policy" | "role");
    if plan.items.iter().any(|i| needed(i) && i.state != eso_access::State::InPlace) {
        return;
    }
    let Ok(scan) = infra_scan else { return };
    let keys = coverage::eso_keys(scan);
    out.push(match eso_read::read_as_eso(http, &names, &keys, &cfg.root, env, &cfg.kubeconfig) {
        Ok(a) if a.ok() => ok("eso access", a.summary()),
        Ok(a) => {
            let mut text = a.summary();
            for (key, why) in a.unreadable.iter().take(10) {
                text.push_str(&format!("\n{:<16}{key}: {why}", ""));
            }
            fail("eso access", text, a.fix())
        }
        Err(e) => warn("eso access", format!("not read as ESO: {e:#}"), SEE),
    });
}

/// The store's Ready condition from `kubectl get` (`got`), with ESO's last Warning Event.
fn store_finding(
    got: Result<String>,
    event: Option<kube::Event>,
    env: &str,
    denied: &str,
) -> Finding {
    let json = match got {
        Ok(json) => json,
        Err(e) => {
            let text = format!("ClusterSecretStore/{STORE_NAME}: {e:#}");
            return fail("eso", text, helmfile::sync_display(env));
        }
    };
    let ready = kube::Ready::of(&serde_json::from_str(&json).unwrap_or_default());
    match ready.ready {
        Some(true) => ok("eso", format!("ClusterSecretStore/{STORE_NAME} Ready")),
        Some(false) => {
            let denied_here = kube::permission_denied(&ready.message)
                || event.as_ref().is_some_and(|e| kube::permission_denied(&e.message));
            let fix = if denied_here {
                denied.to_string()
            } else {
                format!(
                    "kubectl describe clustersecretstore {STORE_NAME}; docs/secrets.md#troubleshooting; once \
                     fixed, `kubectl annotate clustersecretstore {STORE_NAME} force-sync=$(date +%s) \
                     --overwrite` has ESO validate it at once"
                )
            };
            let (describe, said) = (ready.describe(), kube::said(event.as_ref()));
            fail("eso", format!("ClusterSecretStore/{STORE_NAME} not Ready: {describe}{said}"), fix)
        }
        None => warn(
            "eso",
            format!("ClusterSecretStore/{STORE_NAME} has no Ready condition yet"),
            "wait, then run doctor again",
        ),
    }
}

/// ExternalSecrets on the store that are not Ready, each with ESO's last Warning Event.
fn external_secret_findings(out: &mut Vec<Finding>, denied: &str, env: &str) {
    let list = match kube::external_secrets() {
        Ok(list) => list,
        Err(e) => return out.push(fail("eso", format!("{e:#}"), CLUSTER_INFO)),
    };
    let ours: Vec<_> = list.iter().filter(|e| scan::is_our_store(&e.store)).collect();
    let bad: Vec<_> = ours.iter().filter(|e| e.ready != Some(true)).collect();
    if ours.is_empty() {
        let text =
            format!("no ExternalSecret on ClusterSecretStore/{STORE_NAME} in the cluster yet");
        return out.push(warn("eso", text, "sync layer 15 and the services (helmfile ... sync)"));
    }
    if bad.is_empty() {
        let n = ours.len();
        return out.push(ok("eso", format!("{n} ExternalSecrets on {STORE_NAME} Ready")));
    }
    let mut events: BTreeMap<String, BTreeMap<String, kube::Event>> = BTreeMap::new();
    for e in bad.iter().take(20) {
        let newest = events.entry(e.namespace.clone()).or_insert_with(|| {
            let found = kube::warning_events(Some(&e.namespace), "ExternalSecret", None);
            found.map(kube::newest_by_object).unwrap_or_default()
        });
        let event = newest.get(&e.name).filter(|_| e.ready == Some(false));
        let state = match e.ready {
            None => "no Ready condition yet".into(),
            _ => format!("{}: {}", e.reason, e.message),
        };
        let cause = event.map_or(e.message.as_str(), |ev| ev.message.as_str());
        let text = format!("ExternalSecret {} not Ready: {state}{}", e.id(), kube::said(event));
        out.push(fail("eso", text, external_secret_fix(&e.namespace, &e.name, cause, denied, env)));
    }
    if bad.len() > 20 {
        let text = format!("and {} more ExternalSecrets not Ready", bad.len() - 20);
        out.push(fail("eso", text, "cargo xtask secrets status lists them all"));
    }
}

/// The fix for an ExternalSecret's failure, from ESO's words.
fn external_secret_fix(
    namespace: &str,
    name: &str,
    message: &str,
    denied: &str,
    env: &str,
) -> String {
    let m = message.to_ascii_lowercase();
    let resync =
        format!("kubectl annotate externalsecret {name} --namespace {namespace} force-sync=$(date +%s) --overwrite");
    if kube::permission_denied(&m) {
        format!("{denied} Then {resync}")
    } else if m.contains(&format!("could not get clustersecretstore \"{STORE_NAME}\"")) {
        let sync = helmfile::sync_display(env);
        format!("ClusterSecretStore/{STORE_NAME} is missing: {sync}; then {resync}")
    } else if m.contains(&format!("\"{STORE_NAME}\" is not ready")) {
        format!(
            "the store's line above says why ClusterSecretStore/{STORE_NAME} is not Ready; once it is, {resync}"
        )
    } else if m.contains("does not exist") || m.contains("not found") || m.contains("404") {
        let reseed = vault_checks::RESEED;
        format!("cargo xtask secrets check --live names the key; {reseed}, then {resync}")
    } else {
        format!("kubectl describe externalsecret {name} --namespace {namespace}; docs/secrets.md#troubleshooting")
    }
}

/// How to repair a flag file that cannot be read: the committed one, if it differs.
fn flag_fix(root: &Path, flag_rel: &str) -> String {
    let status = crate::process::Tool::new("git")
        .arg("-C")
        .arg(root)
        .args(["status", "--porcelain", "--", flag_rel])
        .run()
        .unwrap_or_default();
    if !status.trim().is_empty() && !status.starts_with("??") {
        format!(
            "`git checkout HEAD -- {flag_rel}` puts back the committed file (`git diff HEAD -- {flag_rel}` shows \
             what that drops)"
        )
    } else {
        format!("edit {flag_rel} as the message says: the committed file has the same problem")
    }
}

/// The migration journal: readable, and whether its last entry is finished.
fn journal_finding(root: &Path, env: &str, flag_rel: &str) -> Finding {
    let journal = match journal::Journal::load(root, env) {
        Ok(j) => j,
        Err(e) => {
            let shown = project::shown_from(root, &journal::path(root, env));
            let text = format!("{shown} cannot be read as a journal: {}", e.root_cause());
            return fail("journal", text, journal::unreadable_fix(root, env));
        }
    };
    let Some(m) = journal.current() else {
        return ok("journal", format!("no migration of {env} journaled"));
    };
    let text = format!("last {} of {env}: {} -> {}, {}", m.kind, m.from, m.to, m.state);
    let flag_now = std::fs::read_to_string(root.join(flag_rel)).ok();
    match m.next_step_text(flag_now.and_then(|t| flagfile::provider(&t, flag_rel).ok())) {
        Some(next) => {
            warn("journal", format!("{text} (unfinished)"), format!("finish it with {next}"))
        }
        None => ok("journal", text),
    }
}

fn report(findings: Vec<Finding>) -> Result<()> {
    for f in &findings {
        println!("{}  {:<10} {}", f.tag, f.area, f.text);
        if !f.fix.is_empty() {
            println!("      {:<10} fix: {}", "", f.fix);
        }
    }
    let failed = findings.iter().filter(|f| f.tag == "FAIL").count();
    ensure!(failed == 0, "{failed} checks failed; each FAIL above says how to fix it");
    println!("all checks passed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DENIED: &str = "DENIED-CHECKS";

    /// Ready and not Ready are checked against a cluster (migrate::doctor_reports_each_finding_with_its_fix).
    #[test]
    fn a_store_without_a_ready_condition_or_out_of_reach_gets_its_fix() {
        for pending in [
            r#"{"status": {}}"#,
            r#"{"status": {"conditions": [{"type": "Other", "status": "True"}]}}"#,
            "not json",
        ] {
            let f = store_finding(Ok(pending.into()), None, "local", DENIED);
            assert!(f.tag == "warn", "{pending:?}: {}", f.text);
            assert_eq!(f.text, "ClusterSecretStore/ameide-vault has no Ready condition yet");
            assert_eq!(f.fix, "wait, then run doctor again");
        }
        let f = store_finding(Err(anyhow::anyhow!("NotFound")), None, "dev", DENIED);
        assert!(f.tag == "FAIL");
        assert_eq!(f.text, "ClusterSecretStore/ameide-vault: NotFound");
        assert_eq!(
            f.fix,
            "helmfile --file infra/kubernetes/helmfiles/15-secrets-certificates.yaml --environment dev sync"
        );
    }

    #[test]
    fn each_external_secret_failure_gets_the_fix_for_esos_words() {
        let fix = |m: &str| external_secret_fix("ameide", "a", m, DENIED, "local");
        assert_eq!(
            fix("error processing spec.data[0] (key: k), err: could not get ClusterSecretStore \"ameide-vault\", \
                 ClusterSecretStore.external-secrets.io \"ameide-vault\" not found"),
            "ClusterSecretStore/ameide-vault is missing: helmfile --file \
             infra/kubernetes/helmfiles/15-secrets-certificates.yaml --environment local sync; then kubectl annotate \
             externalsecret a --namespace ameide force-sync=$(date +%s) --overwrite"
        );
        assert!(fix("something else")
            .starts_with("kubectl describe externalsecret a --namespace ameide"));
    }

    #[test]
    fn the_denied_checks_name_the_role_its_binding_and_the_reviewer() {
        let root = crate::project_root();
        let process = crate::project::Process::with(&root, &root, &[]);
        let cfg = Config::load(&process, &FlagValues::default()).unwrap();
        let text = eso_access::denied_checks(&root, "local", &cfg);
        for part in [
            "role auth/kubernetes/role/external-secrets binds the service account the store logs in as, \
             external-secrets/external-secrets",
            "bound_service_account_names and bound_service_account_namespaces",
            "kubectl --namespace vault delete pod vault-0",
        ] {
            assert!(text.contains(part), "{part}:\n{text}");
        }
    }
}
