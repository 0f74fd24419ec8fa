//! kubectl: the current context, the kubeconfig, ESO's objects and their
//! status. Every call goes through `process::Tool`, with a deadline. The
//! port-forward lives in `port_forward.rs`.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::Tool;

/// The deadline of one kubectl call (`get`, `annotate`, `config`).
pub const KUBECTL_DEADLINE: Duration = Duration::from_secs(30);

pub const INSTALL_HINT: &str =
    "install kubectl (https://kubernetes.io/docs/tasks/tools/) and put it on PATH";

/// kubectl, with its deadline and the hints for our messages.
fn kubectl_tool() -> Tool {
    Tool::new("kubectl")
        .deadline(KUBECTL_DEADLINE)
        .install_hint(INSTALL_HINT)
        .timeout_hint(
            "Is the cluster up and reachable? `kubectl cluster-info` shows where kubectl looks.",
        )
}

/// The current kube context, or `None` when kubectl is missing, has none,
/// or fails (see [`context`] for the reason). Asked once per process.
pub fn current_context() -> Option<String> {
    context().ok().flatten()
}

/// The answer of the first [`context`] call: a run never changes the
/// kubeconfig, and doctor, seed and migrate ask several times.
static CONTEXT: OnceLock<Result<Option<String>, String>> = OnceLock::new();

/// The current kube context: `Ok(None)` when kubectl is not installed or
/// no context is set; an error with kubectl's words when it fails
/// otherwise (a broken kubeconfig) or outlives its deadline. kubectl is
/// asked once per process; later calls repeat its answer, error included
/// (a kubectl that timed out once is not waited for again).
pub fn context() -> Result<Option<String>> {
    once(&CONTEXT, ask_context)
}

/// `cell`'s answer, from `ask` the first time. An error is kept as its
/// message (with its causes), as anyhow errors cannot be cloned.
fn once<T: Clone>(
    cell: &OnceLock<Result<T, String>>,
    ask: impl FnOnce() -> Result<T>,
) -> Result<T> {
    cell.get_or_init(|| ask().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn ask_context() -> Result<Option<String>> {
    if crate::tools::which("kubectl").is_none() || !kubeconfig_exists() {
        return Ok(None);
    }
    let tool = kubectl_tool().args(["config", "current-context"]);
    let out = tool.output()?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("current-context is not set") {
            return Ok(None);
        }
        return Err(tool.failure(&out));
    }
    let ctx = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok((!ctx.is_empty()).then_some(ctx))
}

/// Whether kubectl could find a kubeconfig: a path in `KUBECONFIG` that
/// exists (a `:`-separated list; empty counts as unset; a pipe such as
/// `<(sops -d ...)` counts), else `~/.kube/config`.
/// Without one kubectl has no current context, and the answer costs no
/// kubectl child (a Go binary's start: about 50 ms of CPU per seed). Where
/// we cannot tell (no `HOME`), kubectl decides.
fn kubeconfig_exists() -> bool {
    match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        Some(list) => std::env::split_paths(&list).any(|p| p.exists()),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => std::path::Path::new(&home).join(".kube/config").exists(),
            None => true,
        },
    }
}

/// Runs kubectl, returning stdout or an error with kubectl's own message.
pub fn kubectl(args: &[&str]) -> Result<String> {
    kubectl_tool().args(args).run()
}

/// `kubectl config view --minify --raw --output json`: the current context
/// with its cluster's CA inline. It carries the context's credentials too:
/// keep it in memory; a failure quotes kubectl's stderr only.
pub fn raw_minified_config() -> Result<String> {
    kubectl_tool()
        .args(["config", "view", "--minify", "--raw", "--output", "json"])
        .run()
}

/// Is the CRD installed? `kubectl get crd NAME` answers `Error from server
/// (NotFound): customresourcedefinitions.apiextensions.k8s.io "NAME" not
/// found` when it is not.
pub fn crd_present(name: &str) -> Result<bool> {
    let tool = kubectl_tool().args(["get", "crd", name]);
    let out = tool.output()?;
    if out.status.success() {
        return Ok(true);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("(NotFound)") || stderr.contains(&format!("\"{name}\" not found")) {
        return Ok(false);
    }
    Err(tool.failure(&out))
}

/// One ExternalSecret's readiness, as ESO reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EsStatus {
    pub namespace: String,
    pub name: String,
    /// `Kind/name` of its store.
    pub store: String,
    /// The Ready condition: `Some(true)`, `Some(false)`, or `None` when absent.
    pub ready: Option<bool>,
    pub reason: String,
    pub message: String,
    /// When ESO last synced it (RFC 3339, the cluster's clock), if it says.
    pub refresh_time: Option<String>,
    /// The object version ESO last synced (changes with its annotations).
    pub synced_resource_version: Option<String>,
}

impl EsStatus {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Every ExternalSecret in the cluster (`kubectl get externalsecrets -A -o json`).
pub fn external_secrets() -> Result<Vec<EsStatus>> {
    let text = kubectl(&[
        "get",
        "externalsecrets",
        "--all-namespaces",
        "--output",
        "json",
    ])?;
    parse_external_secrets(&text)
}

pub fn parse_external_secrets(text: &str) -> Result<Vec<EsStatus>> {
    let list: serde_json::Value =
        serde_json::from_str(text).context("kubectl printed no JSON list")?;
    let mut out = Vec::new();
    for item in list["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let store_ref = &item["spec"]["secretStoreRef"];
        let ready = item["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .cloned();
        out.push(EsStatus {
            namespace: s(&item["metadata"]["namespace"]),
            name: s(&item["metadata"]["name"]),
            store: format!(
                "{}/{}",
                store_ref["kind"].as_str().unwrap_or("SecretStore"),
                store_ref["name"].as_str().unwrap_or_default()
            ),
            ready: ready.as_ref().map(|c| c["status"] == "True"),
            reason: ready.as_ref().map(|c| s(&c["reason"])).unwrap_or_default(),
            message: ready.as_ref().map(|c| s(&c["message"])).unwrap_or_default(),
            refresh_time: item["status"]["refreshTime"].as_str().map(String::from),
            synced_resource_version: item["status"]["syncedResourceVersion"]
                .as_str()
                .map(String::from),
        });
    }
    Ok(out)
}

/// Asks ESO to re-read an ExternalSecret now.
pub fn force_sync(namespace: &str, name: &str, stamp: &str) -> Result<()> {
    kubectl(&[
        "annotate",
        "externalsecret",
        name,
        "--namespace",
        namespace,
        &format!("force-sync={stamp}"),
        "--overwrite",
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_eso_conditions() {
        let text = r#"{"items": [
          {"metadata": {"namespace": "ameide", "name": "a"},
           "spec": {"secretStoreRef": {"kind": "ClusterSecretStore", "name": "ameide-vault"}},
           "status": {"refreshTime": "2026-11-28T03:00:00Z", "conditions": [{"type": "Ready", "status": "True", "reason": "SecretSynced", "message": "ok"}]}},
          {"metadata": {"namespace": "ameide", "name": "b"},
           "spec": {"secretStoreRef": {"kind": "ClusterSecretStore", "name": "ameide-vault"}},
           "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "SecretSyncedError", "message": "could not get secret data from provider"}]}},
          {"metadata": {"namespace": "x", "name": "c"}, "spec": {}}
        ]}"#;
        let es = parse_external_secrets(text).unwrap();
        assert_eq!(es[0].ready, Some(true));
        assert_eq!(es[0].refresh_time.as_deref(), Some("2026-11-28T03:00:00Z"));
        assert_eq!(
            (es[1].ready, es[1].reason.as_str()),
            (Some(false), "SecretSyncedError")
        );
        assert_eq!((es[2].ready, es[2].store.as_str()), (None, "SecretStore/"));
        assert_eq!(es[1].id(), "ameide/b");
    }

    #[test]
    fn the_context_is_asked_once_and_its_answer_repeated() {
        let asked = std::cell::Cell::new(0);
        let cell = OnceLock::new();
        for _ in 0..3 {
            let ctx = once(&cell, || {
                asked.set(asked.get() + 1);
                Ok(Some("k3d-ameide".to_string()))
            });
            assert_eq!(ctx.unwrap().as_deref(), Some("k3d-ameide"));
        }
        assert_eq!(asked.get(), 1);
        // A failure too, in kubectl's words and with its causes.
        let cell: OnceLock<Result<Option<String>, String>> = OnceLock::new();
        for _ in 0..2 {
            let err = once(&cell, || {
                asked.set(asked.get() + 1);
                Err(anyhow::anyhow!("error: broken kubeconfig").context("kubectl config"))
            })
            .unwrap_err();
            assert_eq!(
                format!("{err:#}"),
                "kubectl config: error: broken kubeconfig"
            );
        }
        assert_eq!(asked.get(), 2);
    }
}
