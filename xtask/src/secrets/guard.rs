//! Guardrails: fixtures are weak by design and must only reach stores on the
//! developer's machine or local cluster, and files holding values must stay
//! out of git.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};

use crate::process::Tool;
use crate::secrets::config::shown_addr;
use crate::secrets::kube;

/// Refuses unless git ignores `path`: files holding secret values must never
/// be committable. Git is asked about where the file really is (every
/// symlink on the way resolved, and the file's own when it is one), so a
/// path under `.local/` that leads elsewhere is refused too. A path outside
/// the repository is refused: git cannot say it is ignored there.
pub fn require_git_ignored(root: &Path, path: &Path, what: &str) -> Result<()> {
    check_ignored(root, path, what, false)
}

/// [`require_git_ignored`] for a file that may also live outside the
/// repository (`--render --out`): outside it, git has no say.
pub fn require_git_ignored_if_inside(root: &Path, path: &Path, what: &str) -> Result<()> {
    check_ignored(root, path, what, true)
}

fn check_ignored(root: &Path, path: &Path, what: &str, outside_ok: bool) -> Result<()> {
    let real_root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let literal = path.strip_prefix(root).ok();
    for real in real_locations(path) {
        let inside = real.strip_prefix(&real_root).ok();
        let via = if inside == literal {
            String::new()
        } else {
            format!(" (through a symlink, it is {})", real.display())
        };
        let Some(rel) = inside else {
            if outside_ok {
                continue;
            }
            bail!(
                "{what} {}{via} is outside the repository, so git cannot say it is ignored. Keep it under .local/ \
                 in the repository (ignored by its .gitignore), e.g. .local/secrets/.",
                path.display()
            );
        };
        let git = Tool::new("git")
            .arg("-C")
            .arg(&real_root)
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
            Some(0) => {}
            Some(1) => bail!(
                "{what} {}{via} is not ignored by git, so its secret values could be committed. Keep it under \
                 .local/ (ignored by the repository's .gitignore){}, or add {} to .gitignore.",
                path.display(),
                if via.is_empty() { "" } else { ", not behind a symlink that leads elsewhere" },
                rel.display()
            ),
            _ => bail!(
                "cannot tell whether git ignores {what} {}: {:#}. Run inside the repository's git checkout.",
                path.display(),
                git.failure(&out)
            ),
        }
    }
    Ok(())
}

/// Where a file at `path` really is: its folder with every symlink
/// resolved, plus its name (an atomic write replaces a symlink there); and
/// where it leads when the name itself is a symlink (a read follows it).
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
        bail!(
            "cannot read a host from the Vault address {:?}; use e.g. http://127.0.0.1:8200",
            shown_addr(addr)
        );
    };
    let addr = shown_addr(addr);
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

/// What the guardrail knows of the current kube context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeContext {
    /// There is no kubeconfig, or it names no current context: no cluster
    /// to port-forward into.
    None,
    Named(String),
    /// A kubeconfig exists but which context it names cannot be known:
    /// why, and what to do about it.
    Unknown {
        why: String,
        fix: String,
    },
}

/// The current kube context as far as it can be known. kubectl missing
/// while a kubeconfig exists, or kubectl failing to read it, is
/// [`KubeContext::Unknown`]: the guardrail then fails closed.
pub fn kube_context() -> KubeContext {
    match kube::context() {
        Ok(Some(context)) => KubeContext::Named(context),
        Ok(None) if crate::tools::which("kubectl").is_none() && kubeconfig_exists() => {
            KubeContext::Unknown {
                why: "kubectl is not on PATH to read your kubeconfig".into(),
                fix: format!("To have the context checked, {}", kube::INSTALL_HINT),
            }
        }
        Ok(None) => KubeContext::None,
        Err(e) => KubeContext::Unknown {
            why: format!("kubectl cannot read your kubeconfig: {e:#}"),
            fix: "Fix the kubeconfig until `kubectl config current-context` answers".into(),
        },
    }
}

/// Whether kubectl would find a kubeconfig: a path in `KUBECONFIG` that
/// exists, else `~/.kube/config` (as `kube.rs` decides whether to ask
/// kubectl at all). Without `HOME`, assume one.
fn kubeconfig_exists() -> bool {
    match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        Some(list) => std::env::split_paths(&list).any(|p| p.exists()),
        None => std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .is_none_or(|home| Path::new(&home).join(".kube/config").exists()),
    }
}

/// A loopback Vault under a kube context that does not look local, or
/// that cannot be known, is taken only when it is plainly a laptop server:
/// a dev server, whose storage is in memory. Anything else may be `kubectl
/// port-forward` into a cluster that is not local.
pub fn require_dev_server_under(
    addr: &str,
    host: &str,
    context: &KubeContext,
    local_contexts: &[String],
    storage_type: Option<&str>,
) -> Result<()> {
    match context {
        KubeContext::None => Ok(()),
        KubeContext::Named(c) if is_local_context(c, local_contexts) => Ok(()),
        KubeContext::Named(c) => require_dev_server(addr, host, c, storage_type),
        KubeContext::Unknown { .. } if storage_type == Some("inmem") => Ok(()),
        KubeContext::Unknown { why, fix } => bail!(
            "refusing Vault at {}: the current kube context cannot be known ({why}), and this loopback Vault {}, \
             so it may be a port-forward into a cluster that is not local (only a dev server, storage \"inmem\", \
             is taken as this machine's then). Fixtures are weak by design. {fix}; or, if this Vault really is your \
             own, pass --allow-non-local {host}.",
            shown_addr(addr),
            storage_words(storage_type)
        ),
    }
}

fn storage_words(storage_type: Option<&str>) -> String {
    match storage_type {
        Some(s) => format!("keeps its data in {s:?} storage"),
        None => "does not report its storage type".to_string(),
    }
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
    let storage = storage_words(storage_type);
    let addr = shown_addr(addr);
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
    fn a_password_in_an_address_is_never_shown() {
        assert_eq!(
            shown_addr("http://alice:pw@127.0.0.1:8200/v1"),
            "http://***@127.0.0.1:8200/v1"
        );
        assert_eq!(shown_addr("alice:pw@host:1"), "***@host:1");
        for plain in [
            "http://127.0.0.1:8200",
            "http://host/p@th",
            "https://[::1]:8200",
        ] {
            assert_eq!(shown_addr(plain), plain);
        }
        let err = check_vault_addr("https://u:pw-x@vault.example:8200", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("https://***@vault.example:8200") && !err.contains("pw-x"),
            "{err}"
        );
        let err = require_dev_server("http://u:pw-x@127.0.0.1:1", "127.0.0.1", "aks", None)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("pw-x"), "{err}");
    }

    #[test]
    fn an_unknown_context_takes_only_a_dev_server() {
        let local = vec!["k3d-*".to_string()];
        let unknown = KubeContext::Unknown {
            why: "kubectl is not on PATH to read your kubeconfig".into(),
            fix: "To have the context checked, install kubectl".into(),
        };
        let under = |context: &KubeContext, storage| {
            require_dev_server_under(
                "http://127.0.0.1:8200",
                "127.0.0.1",
                context,
                &local,
                storage,
            )
        };
        assert!(under(&unknown, Some("inmem")).is_ok());
        let err = under(&unknown, Some("raft")).unwrap_err().to_string();
        for part in [
            "the current kube context cannot be known (kubectl is not on PATH",
            "\"raft\" storage",
            "To have the context checked, install kubectl; or",
            "--allow-non-local 127.0.0.1",
        ] {
            assert!(err.contains(part), "{part:?}: {err}");
        }
        assert!(under(&unknown, None).is_err(), "no storage type: refused");
        assert!(under(&KubeContext::None, Some("raft")).is_ok());
        assert!(under(&KubeContext::Named("k3d-x".into()), Some("raft")).is_ok());
        assert!(under(&KubeContext::Named("aks".into()), Some("raft")).is_err());
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
