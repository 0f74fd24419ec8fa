//! `cargo xtask secrets doctor`: every check of the local secret flow, each
//! finding with the command that fixes it. Changes nothing.

use anyhow::{bail, Result};

use crate::secrets::config::FlagValues;
use crate::secrets::provider::{file, vault, SecretProvider};
use crate::secrets::{check, fixtures, flagfile, guard, kube};
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
                format!("{} {} missing", tool.name, tool.version),
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
            Ok(p) => {
                out.push(ok(
                    "vault",
                    format!("{} reachable, unsealed, token valid", p.target()),
                ));
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
        match kube::kubectl(&["get", "clustersecretstore", "ameide-vault", "--output", "json"]) {
            Ok(json) => {
                let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
                let ready = v["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Ready")).cloned();
                match ready {
                    Some(c) if c["status"] == "True" => out.push(ok("eso", "ClusterSecretStore/ameide-vault Ready")),
                    Some(c) => out.push(fail(
                        "eso",
                        format!("ClusterSecretStore/ameide-vault not Ready: {}: {}", c["reason"].as_str().unwrap_or(""), c["message"].as_str().unwrap_or("")),
                        "kubectl describe clustersecretstore ameide-vault; docs/secrets.md#troubleshooting",
                    )),
                    None => out.push(warn("eso", "ClusterSecretStore/ameide-vault has no Ready condition yet", "wait, then run doctor again")),
                }
            }
            Err(e) => out.push(fail(
                "eso",
                format!("ClusterSecretStore/ameide-vault: {e:#}"),
                "helmfile --file infra/kubernetes/helmfiles/15-secrets-certificates.yaml --environment local sync",
            )),
        }
    }

    match fixtures::load_configured(&cfg).map(|(_, set)| set) {
        Err(e) => out.push(fail(
            "fixtures",
            format!("{e:#}"),
            "fix the file at the position shown",
        )),
        Ok(set) => match check::collect(&root, &root.join(project::INFRA), &env, false) {
            Err(e) => out.push(fail("coverage", format!("{e:#}"), "fix the file it names")),
            Ok(scan) => {
                let report = check::compare(&scan, &env, &set, None);
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
