//! kubectl: the current context, port-forwards, ExternalSecret status.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The current kube context, or `None` when kubectl is missing or has none.
pub fn current_context() -> Option<String> {
    let out = Command::new("kubectl")
        .args(["config", "current-context"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let ctx = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!ctx.is_empty()).then_some(ctx)
}

/// A running `kubectl port-forward`, stopped on drop (on every exit path
/// that unwinds; on Ctrl-C the terminal signals kubectl too).
pub struct PortForward {
    child: Child,
    pub local_port: u16,
}

impl PortForward {
    /// Forwards a free loopback port to `svc/<service>:<port>` in `namespace`.
    pub fn start(namespace: &str, service: &str, port: u16) -> Result<PortForward> {
        let target = format!("svc/{service}");
        let mut child = Command::new("kubectl")
            .args([
                "port-forward",
                "--namespace",
                namespace,
                "--address",
                "127.0.0.1",
                &target,
            ])
            .arg(format!(":{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting `kubectl port-forward`: is kubectl installed and on PATH?")?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = forwarded_port(&line) {
                    let _ = tx.send(port);
                    break;
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(local_port) => Ok(PortForward { child, local_port }),
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output().ok();
                let stderr = out
                    .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
                    .unwrap_or_default();
                bail!(
                    "`kubectl port-forward --namespace {namespace} {target} :{port}` did not start: {}. Is Vault \
                     deployed (layer 15) and its pod running? `kubectl -n {namespace} get pods`",
                    if stderr.is_empty() { "no output" } else { &stderr }
                )
            }
        }
    }

    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.local_port)
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs kubectl, returning stdout or an error with kubectl's own message.
pub fn kubectl(args: &[&str]) -> Result<String> {
    let out = Command::new("kubectl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running kubectl: is it installed and on PATH?")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("`kubectl {}` failed: {}", args.join(" "), stderr.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Is the CRD installed?
pub fn crd_present(name: &str) -> Result<bool> {
    let out = Command::new("kubectl")
        .args(["get", "crd", name])
        .stdin(Stdio::null())
        .output()
        .context("running kubectl: is it installed and on PATH?")?;
    if out.status.success() {
        return Ok(true);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("not found") {
        return Ok(false);
    }
    bail!("`kubectl get crd {name}` failed: {}", stderr.trim())
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

/// Parses `Forwarding from 127.0.0.1:41234 -> 8200`.
fn forwarded_port(line: &str) -> Option<u16> {
    let rest = line.strip_prefix("Forwarding from ")?;
    let local = rest.split(" -> ").next()?;
    local.rsplit(':').next()?.parse().ok()
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
    fn parses_forwarding_lines() {
        assert_eq!(
            forwarded_port("Forwarding from 127.0.0.1:41234 -> 8200"),
            Some(41234)
        );
        assert_eq!(
            forwarded_port("Forwarding from [::1]:41234 -> 8200"),
            Some(41234)
        );
        assert_eq!(forwarded_port("Handling connection for 41234"), None);
    }
}
