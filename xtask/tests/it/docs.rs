//! The quickstarts in README.md and docs/secrets.md, run as a new user would
//! on a clean copy of the repo. Fails when the docs drift from the tool.

use serde_json::json;

use crate::support::{repo_root, OpenBao, Sandbox};

/// Command lines from the ```sh blocks of a markdown file.
fn commands(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in markdown.lines() {
        let t = line.trim_start();
        if t.starts_with("```") {
            in_sh = !in_sh && t.trim_start_matches('`').trim() == "sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let cmd = match t.find(" #") {
            Some(i) => &t[..i],
            None => t,
        };
        let cmd = cmd.trim();
        if !cmd.is_empty() && !cmd.starts_with('#') {
            out.push(cmd.to_string());
        }
    }
    out
}

#[test]
fn every_quickstart_command_works_on_a_clean_copy() {
    if !crate::support::require_tools(&["bao", "kubectl", "helm", "helmfile"]) {
        return;
    }
    let bao = OpenBao::start();
    let sb = Sandbox::new();
    sb.scenario(json!({"kubectl": {"context": "k3d-ameide", "vault_addr": bao.addr, "crds": ["externalsecrets.external-secrets.io"],
        "clustersecretstore": {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Valid", "message": "ok"}]}},
        // OpenBao runs outside the cluster: ESO's own token reviews itself at its login.
        "objects": [{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                     "metadata": {"name": "external-secrets-auth-delegator"},
                     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
                     "subjects": [{"kind": "ServiceAccount", "name": "external-secrets", "namespace": "external-secrets"}]}]}}));
    let mut ran = 0;
    for doc in ["README.md", "docs/secrets.md"] {
        let text = std::fs::read_to_string(repo_root().join(doc)).unwrap();
        for line in commands(&text) {
            if line.starts_with("bao server") || line.contains("cargo xtask test") {
                continue; // the server is ours; the test command is what runs this
            }
            let mut words: Vec<&str> = line.split_whitespace().collect();
            let mut envs: Vec<(String, String)> = vec![("VAULT_TOKEN".into(), bao.token.clone())];
            while let Some((k, v)) = words
                .first()
                .and_then(|w| w.split_once('='))
                .filter(|(k, _)| k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
            {
                let v = match k {
                    "VAULT_ADDR" => bao.addr.clone(),
                    "VAULT_TOKEN" => bao.token.clone(),
                    _ => v.to_string(),
                };
                envs.push((k.to_string(), v));
                words.remove(0);
            }
            assert_eq!(
                &words[..2],
                ["cargo", "xtask"],
                "{doc}: a quickstart line that is not `cargo xtask`: {line}"
            );
            let envs: Vec<(&str, &str)> =
                envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let run = sb.xtask_env(&words[2..], &envs);
            assert_eq!(run.code, 0, "{doc}: `{line}` failed:\n{}", run.all());
            ran += 1;
        }
    }
    assert!(
        ran >= 7,
        "the quickstarts hold {ran} commands; expected the README's and docs/secrets.md's"
    );
}

#[test]
fn finds_commands_in_sh_blocks_only() {
    let md = "text\n```sh\ncargo xtask a   # comment\n\n# only a comment\n```\n```toml\nx = 1\n```\n```sh\nVAULT_ADDR=x cargo xtask b\n```\n";
    assert_eq!(commands(md), ["cargo xtask a", "VAULT_ADDR=x cargo xtask b"]);
}
