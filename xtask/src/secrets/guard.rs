//! Guardrails: fixtures are weak by design and must only reach stores on the
//! developer's machine or local cluster, and files holding values must stay
//! out of git.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::process::Tool;

/// Refuses unless git ignores `path`: files holding secret values must never
/// be committable.
pub fn require_git_ignored(root: &Path, path: &Path, what: &str) -> Result<()> {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let git = Tool::new("git")
        .arg("-C")
        .arg(root)
        .args(["check-ignore", "-q", "--no-index", "--"])
        .arg(rel)
        .deadline(Duration::from_secs(20))
        .install_hint("install git");
    let out = git.output().map_err(|e| {
        anyhow::anyhow!(
            "cannot check that git ignores {what} {}: {e:#}",
            path.display()
        )
    })?;
    match out.status.code() {
        Some(0) => Ok(()),
        Some(1) => bail!(
            "{what} {} is not ignored by git, so its secret values could be committed. Keep it under .local/ \
             (ignored by the repository's .gitignore) or add it to .gitignore.",
            path.display()
        ),
        _ => bail!(
            "cannot tell whether git ignores {what} {}: {:#}. Run inside the repository's git checkout.",
            path.display(),
            git.failure(&out)
        ),
    }
}

/// Seeding writes fixtures, which only belong in local environments.
pub fn require_local_env(env: &str) -> Result<()> {
    if env != "local" {
        bail!(
            "refusing to seed fixtures for environment {env:?}: fixtures are weak by design and only seed local \
             clusters. Shared environments keep their own secrets in Azure Key Vault."
        );
    }
    Ok(())
}

/// Is `host` this machine (loopback)?
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// The host of an http(s) URL.
pub fn url_host(addr: &str) -> Option<String> {
    let rest = addr.split_once("://").map(|(_, r)| r).unwrap_or(addr);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority
        .rsplit_once('@')
        .map(|(_, a)| a)
        .unwrap_or(authority);
    let host = if let Some(stripped) = authority.strip_prefix('[') {
        stripped.split(']').next()?.to_string()
    } else {
        authority.split(':').next()?.to_string()
    };
    (!host.is_empty()).then_some(host)
}

/// Refuses a Vault address that is not local unless `allow` names its host.
pub fn check_vault_addr(addr: &str, allow: Option<&str>) -> Result<()> {
    let Some(host) = url_host(addr) else {
        bail!("cannot read a host from the Vault address {addr:?}; use e.g. http://127.0.0.1:8200");
    };
    if is_loopback_host(&host) {
        return Ok(());
    }
    if allow.is_some_and(|a| a.eq_ignore_ascii_case(&host)) {
        return Ok(());
    }
    bail!(
        "refusing Vault at {addr}: {host} is not local, and fixtures are weak by design. Use a loopback address \
         or a port-forward (unset VAULT_ADDR with a local kube context). If this really is your own dev Vault, \
         pass --allow-non-local {host}."
    )
}

/// The host of a loopback Vault address that `--allow-non-local` does not
/// name: such a Vault may be a port-forward, so the kube context matters.
pub fn unvouched_loopback(addr: &str, allow: Option<&str>) -> Option<String> {
    let host = url_host(addr)?;
    (is_loopback_host(&host) && !allow.is_some_and(|a| a.eq_ignore_ascii_case(&host)))
        .then_some(host)
}

/// A loopback Vault under a kube context that does not look local is taken
/// only when it is plainly a laptop server: a dev server, whose storage is
/// in memory. Anything else may be `kubectl port-forward` into that cluster.
pub fn require_dev_server(
    addr: &str,
    host: &str,
    context: &str,
    storage_type: Option<&str>,
) -> Result<()> {
    if storage_type == Some("inmem") {
        return Ok(());
    }
    let storage = match storage_type {
        Some(s) => format!("keeps its data in {s:?} storage"),
        None => "does not report its storage type".to_string(),
    };
    bail!(
        "refusing Vault at {addr} under kube context {context:?}: the context does not look like a local cluster, \
         and this loopback Vault {storage}, so it may be a port-forward into that cluster (only a dev server, \
         storage \"inmem\", is taken as this machine's). Fixtures are weak by design. Switch to your local cluster \
         (`kubectl config use-context <local context>`), or, if this Vault really is your own, pass \
         --allow-non-local {host}."
    )
}

/// An Azure Key Vault's name from any way people write it: the name, the
/// `<name>.vault.azure.net` host, or the `https://<name>.vault.azure.net/`
/// URL, with spaces around and in any letter case (Azure ignores case).
/// `None` when what is left is not a vault name (3-24 of a-z, 0-9, `-`).
pub fn azure_vault_name(input: &str) -> Option<String> {
    let mut s = input.trim().to_ascii_lowercase();
    for scheme in ["https://", "http://"] {
        if let Some(rest) = s.strip_prefix(scheme) {
            s = rest.to_string();
        }
    }
    let s = s.trim_end_matches('/');
    let s = s.strip_suffix(".vault.azure.net").unwrap_or(s);
    let valid = (3..=24).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && s.starts_with(|c: char| c.is_ascii_alphabetic());
    valid.then(|| s.to_string())
}

/// Does the kube context name look like a local cluster?
pub fn is_local_context(context: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| glob_match(p, context))
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// Refuses to port-forward to Vault through a kube context that does not
/// look local. `--allow-non-local` names a Vault host, never a context.
pub fn check_port_forward_context(context: &str, patterns: &[String]) -> Result<()> {
    if is_local_context(context, patterns) {
        return Ok(());
    }
    bail!(
        "refusing kube context {context:?}: it does not look like a local cluster (local patterns: {}), and the seed \
         would port-forward into its Vault. Switch with `kubectl config use-context <local context>`, or add your \
         context's pattern to guardrail.local_contexts in .local/secrets.toml. --allow-non-local names a Vault \
         host, not a context: for a Vault of that cluster that really is yours, port-forward it yourself, set \
         VAULT_ADDR=http://127.0.0.1:<port> and pass --allow-non-local 127.0.0.1.",
        patterns.join(", ")
    )
}

/// Refuses a kube context that does not look local.
pub fn check_context(context: &str, patterns: &[String]) -> Result<()> {
    if is_local_context(context, patterns) {
        return Ok(());
    }
    bail!(
        "refusing kube context {context:?}: it does not look like a local cluster (local patterns: {}). Switch with \
         `kubectl config use-context <local context>`, or add your context's pattern to guardrail.local_contexts in \
         .local/secrets.toml.",
        patterns.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "127.0.0.1",
            "127.8.9.1",
            "::1",
            "[::1]",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["10.0.0.1", "vault.example.com", "192.168.1.2", "0.0.0.0"] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn hosts_from_urls() {
        assert_eq!(
            url_host("http://127.0.0.1:8200").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            url_host("https://vault.shared.example:8200/v1").as_deref(),
            Some("vault.shared.example")
        );
        assert_eq!(url_host("http://[::1]:8200").as_deref(), Some("::1"));
        assert_eq!(url_host("http://user@host:1").as_deref(), Some("host"));
        assert_eq!(url_host("http://"), None);
    }

    #[test]
    fn non_local_vault_needs_its_host_named() {
        assert!(check_vault_addr("http://127.0.0.1:8200", None).is_ok());
        let err = check_vault_addr("https://vault.shared.example:8200", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--allow-non-local vault.shared.example"),
            "{err}"
        );
        assert!(check_vault_addr(
            "https://vault.shared.example:8200",
            Some("vault.shared.example")
        )
        .is_ok());
        assert!(
            check_vault_addr("https://vault.shared.example:8200", Some("other.example")).is_err()
        );
    }

    #[test]
    fn a_loopback_vault_under_a_non_local_context_must_be_a_dev_server() {
        assert_eq!(
            unvouched_loopback("http://127.0.0.1:8200", None).as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            unvouched_loopback("http://localhost:8200", Some("127.0.0.1")).as_deref(),
            Some("localhost"),
            "the flag names the exact host"
        );
        assert_eq!(
            unvouched_loopback("http://127.0.0.1:8200", Some("127.0.0.1")),
            None
        );
        assert_eq!(unvouched_loopback("http://[::1]:8200", Some("::1")), None);
        assert_eq!(unvouched_loopback("https://vault.example:8200", None), None);

        let addr = "http://127.0.0.1:8200";
        assert!(require_dev_server(addr, "127.0.0.1", "aks-prod", Some("inmem")).is_ok());
        for storage in [Some("raft"), Some("file"), None] {
            let err = require_dev_server(addr, "127.0.0.1", "aks-prod", storage)
                .unwrap_err()
                .to_string();
            assert!(err.contains("\"aks-prod\""), "{err}");
            assert!(err.contains("--allow-non-local 127.0.0.1"), "{err}");
            assert!(err.contains("port-forward"), "{err}");
        }
    }

    #[test]
    fn a_port_forward_needs_a_local_context_and_the_refusal_names_the_flag() {
        let p = vec!["k3d-*".to_string()];
        assert!(check_port_forward_context("k3d-dev", &p).is_ok());
        let err = check_port_forward_context("aks-prod", &p)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"aks-prod\"") && err.contains("--allow-non-local"),
            "{err}"
        );
        assert!(err.contains("guardrail.local_contexts"), "{err}");
    }

    #[test]
    fn context_patterns() {
        let p: Vec<String> = ["k3d-*", "kind-*", "docker-desktop", "colima*"]
            .map(String::from)
            .to_vec();
        assert!(is_local_context("k3d-ameide", &p));
        assert!(is_local_context("kind-kind", &p));
        assert!(is_local_context("docker-desktop", &p));
        assert!(is_local_context("colima", &p));
        assert!(!is_local_context("aks-ameide-staging", &p));
        assert!(!is_local_context("docker-desktop-2", &p));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(check_context("aks-prod", &p)
            .unwrap_err()
            .to_string()
            .contains("use-context"));
    }

    #[test]
    fn azure_vault_names_are_normalised() {
        for spelling in [
            "ameide-production",
            "  ameide-production ",
            "AMEIDE-Production",
            "ameide-production.vault.azure.net",
            "https://ameide-production.vault.azure.net/",
            "HTTPS://Ameide-Production.Vault.Azure.Net",
        ] {
            assert_eq!(
                azure_vault_name(spelling).as_deref(),
                Some("ameide-production"),
                "{spelling:?}"
            );
        }
        assert_eq!(azure_vault_name("https://x.example.com/"), None);
        assert_eq!(azure_vault_name("a"), None);
    }

    #[test]
    fn only_local_env_is_seeded() {
        assert!(require_local_env("local").is_ok());
        assert!(require_local_env("staging").is_err());
    }
}
