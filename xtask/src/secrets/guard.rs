//! Guardrails: fixtures are weak by design, so they reach only stores on this machine or a local
//! cluster, and files holding values stay out of git.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Result};

use crate::output::shown_addr;
use crate::process::Tool;

/// Refuses unless git ignores `path` where it really is (files holding values are never committable).
pub(crate) fn require_git_ignored(root: &Path, path: &Path, what: &str) -> Result<()> {
    check_ignored(root, path, what, false)
}

/// [`require_git_ignored`] for a file that may live outside the repository (`--render --out`).
pub(crate) fn require_git_ignored_if_inside(root: &Path, path: &Path, what: &str) -> Result<()> {
    check_ignored(root, path, what, true)
}

fn check_ignored(root: &Path, path: &Path, what: &str, outside_ok: bool) -> Result<()> {
    let real_root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let (literal, shown) = (path.strip_prefix(root).ok(), path.display());
    for real in real_locations(path) {
        let inside = real.strip_prefix(&real_root).ok();
        let via = match inside == literal {
            true => String::new(),
            false => format!(" (through a symlink, it is {})", real.display()),
        };
        let Some(rel) = inside else {
            if outside_ok {
                continue;
            }
            bail!(
                "{what} {shown}{via} is outside the repository, so git cannot say it is ignored. Keep it under \
                 .local/ in the repository (ignored by its .gitignore), e.g. .local/secrets/."
            );
        };
        let git = Tool::new("git")
            .arg("-C")
            .arg(&real_root)
            .args(["check-ignore", "-q", "--no-index", "--"])
            .arg(rel)
            .deadline(Duration::from_secs(20))
            .install_hint("install git");
        let out = (git.output())
            .map_err(|e| anyhow::anyhow!("cannot check that git ignores {what} {shown}: {e:#}"))?;
        match out.status.code() {
            Some(0) => {}
            Some(1) => bail!(
                "{what} {shown}{via} is not ignored by git, so its secret values could be committed. Keep it under \
                 .local/ (ignored by the repository's .gitignore){}, or add {} to .gitignore.",
                if via.is_empty() { "" } else { ", not behind a symlink that leads elsewhere" },
                rel.display()
            ),
            _ => bail!(
                "cannot tell whether git ignores {what} {shown}: {:#}. Run inside the repository's git checkout.",
                git.failure(&out)
            ),
        }
    }
    Ok(())
}

/// Where `path` really is: its resolved folder plus its name (an atomic write replaces a symlink
/// there), and where the name leads (a read follows it).
fn real_locations(path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
        let dir = crate::project::canonical_prefix(dir).unwrap_or_else(|| dir.to_path_buf());
        out.push(dir.join(name));
    }
    if let Ok(real) = std::fs::canonicalize(path) {
        if !out.contains(&real) {
            out.push(real);
        }
    }
    out
}

/// Seeding writes fixtures, which only belong in local environments.
pub(crate) fn require_local_env(env: &str) -> Result<()> {
    ensure!(
        env == "local",
        "refusing to seed fixtures for environment {env:?}: fixtures are weak by design and only seed local \
         clusters. Shared environments keep their own secrets in Azure Key Vault."
    );
    Ok(())
}

pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub(crate) fn url_host(addr: &str) -> Option<String> {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.split(':').next()?,
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// Refuses a Vault address that is not local unless `allow` names its host.
pub(crate) fn check_vault_addr(addr: &str, allow: Option<&str>) -> Result<()> {
    let shown = shown_addr(addr);
    let Some(host) = url_host(addr) else {
        bail!(
            "cannot read a host from the Vault address {shown:?}; use e.g. http://127.0.0.1:8200"
        );
    };
    if is_loopback_host(&host) || allow.is_some_and(|a| a.eq_ignore_ascii_case(&host)) {
        return Ok(());
    }
    bail!(
        "refusing Vault at {shown}: {host} is not local, and fixtures are weak by design. Use a loopback address \
         or a port-forward (unset VAULT_ADDR with a local kube context). If this really is your own dev Vault, \
         pass --allow-non-local {host}."
    )
}

/// The host of a loopback Vault address `--allow-non-local` does not name: maybe a port-forward.
pub(crate) fn unvouched_loopback(addr: &str, allow: Option<&str>) -> Option<String> {
    let host = url_host(addr)?;
    (is_loopback_host(&host) && !allow.is_some_and(|a| a.eq_ignore_ascii_case(&host)))
        .then_some(host)
}

/// What the guardrail knows of the current kube context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KubeContext {
    /// No kubeconfig, or no current context: no cluster to port-forward into.
    None,
    Named(String),
    /// A kubeconfig whose context cannot be known: why, and the fix.
    Unknown {
        why: String,
        fix: String,
    },
}

/// A loopback Vault under a kube context that is not local, or not known, is taken only as a dev
/// server (storage in memory): anything else may be a port-forward into that cluster.
pub(crate) fn require_dev_server_under(
    addr: &str,
    host: &str,
    context: &KubeContext,
    local_contexts: &[String],
    storage_type: Option<&str>,
) -> Result<()> {
    let shown = shown_addr(addr);
    let storage = match storage_type {
        Some(s) => format!("keeps its data in {s:?} storage"),
        None => "does not report its storage type".to_string(),
    };
    match context {
        KubeContext::None => Ok(()),
        KubeContext::Named(c) if is_local_context(c, local_contexts) => Ok(()),
        _ if storage_type == Some("inmem") => Ok(()),
        KubeContext::Named(context) => bail!(
            "refusing Vault at {shown} under kube context {context:?}: the context does not look like a local \
             cluster, and this loopback Vault {storage}, so it may be a port-forward into that cluster (only a dev server, storage \
             \"inmem\", is taken as this machine's). Fixtures are weak by design. Switch to your local cluster \
             (`kubectl config use-context <local context>`), or, if this Vault really is your own, pass \
             --allow-non-local {host}."
        ),
        KubeContext::Unknown { why, fix } => bail!(
            "refusing Vault at {shown}: the current kube context cannot be known ({why}), and this loopback Vault \
             {storage}, so it may be a port-forward into a cluster that is not local (only a dev server, storage \"inmem\", \
             is taken as this machine's then). Fixtures are weak by design. {fix}; or, if this Vault really is your \
             own, pass --allow-non-local {host}."
        ),
    }
}

/// An Azure Key Vault's name however written (name, host or URL, any case); `None` if invalid.
pub(crate) fn azure_vault_name(input: &str) -> Option<String> {
    let mut s = input.trim().to_ascii_lowercase();
    for scheme in ["https://", "http://"] {
        s = s.strip_prefix(scheme).unwrap_or(&s).to_string();
    }
    let s = s.trim_end_matches('/');
    let s = s.strip_suffix(".vault.azure.net").unwrap_or(s);
    let valid = (3..=24).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && s.starts_with(|c: char| c.is_ascii_alphabetic());
    valid.then(|| s.to_string())
}

pub(crate) fn is_local_context(context: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| glob_match(p, context))
}

/// `*` matches any run of characters; everything else matches itself.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<String> = pattern.split('*').map(regex_lite::escape).collect();
    let re = format!("(?s)^{}$", parts.join(".*"));
    regex_lite::Regex::new(&re).is_ok_and(|re| re.is_match(text))
}

/// Refuses to port-forward through a kube context that is not local; `--allow-non-local` names a host.
pub(crate) fn check_port_forward_context(context: &str, patterns: &[String]) -> Result<()> {
    check_context_saying(
        context,
        patterns,
        ", and the seed would port-forward into its Vault",
        " --allow-non-local names a Vault host, not a context: for a Vault of that cluster that really is yours, \
         port-forward it yourself, set VAULT_ADDR=http://127.0.0.1:<port> and pass --allow-non-local 127.0.0.1.",
    )
}

pub(crate) fn check_context(context: &str, patterns: &[String]) -> Result<()> {
    check_context_saying(context, patterns, "", "")
}

fn check_context_saying(context: &str, patterns: &[String], why: &str, after: &str) -> Result<()> {
    let local = is_local_context(context, patterns);
    let patterns = patterns.join(", ");
    ensure!(
        local,
        "refusing kube context {context:?}: it does not look like a local cluster (local patterns: {patterns}){why}. \
         Switch with `kubectl config use-context <local context>`, or add your context's pattern to \
         guardrail.local_contexts in .local/secrets.toml.{after}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refusals: it/guardrail.rs, seed_vault.rs, fail_closed.rs and bad_input.rs.
    #[test]
    fn hosts_from_urls_and_which_are_loopback() {
        for (url, host, loopback) in [
            ("http://127.0.0.1:8200", "127.0.0.1", true),
            ("http://127.8.9.1", "127.8.9.1", true),
            ("http://LOCALHOST:1", "LOCALHOST", true),
            ("http://[::1]:8200", "::1", true),
            ("https://vault.shared.example:8200/v1", "vault.shared.example", false),
            ("http://user@10.0.0.1:1", "10.0.0.1", false),
            ("0.0.0.0", "0.0.0.0", false),
        ] {
            assert_eq!(url_host(url).as_deref(), Some(host), "{url}");
            assert_eq!(is_loopback_host(host), loopback, "{host}");
        }
        assert_eq!(url_host("http://"), None);
        assert!(is_loopback_host("[::1]"));
        let unvouched = |addr, allow| unvouched_loopback(addr, allow);
        assert_eq!(unvouched("http://localhost:8200", Some("127.0.0.1")), Some("localhost".into()));
        assert_eq!(unvouched("http://[::1]:8200", Some("::1")), None);
        assert_eq!(unvouched("https://vault.example:8200", None), None);
    }

    #[test]
    fn context_patterns() {
        let p = ["k3d-*", "kind-*", "docker-desktop", "colima*"].map(String::from);
        for (context, local) in [
            ("k3d-ameide", true),
            ("kind-kind", true),
            ("docker-desktop", true),
            ("colima", true),
            ("aks-ameide-staging", false),
            ("docker-desktop-2", false),
            ("k3d.x", false),
        ] {
            assert_eq!(is_local_context(context, &p), local, "{context}");
        }
        assert!(glob_match("a*b*c", "aXXbYYc") && !glob_match("a*b*c", "acb"));
        // Regex characters are literal.
        assert!(glob_match("a.*", "a.b") && !glob_match("a.*", "ab"));
    }
}
