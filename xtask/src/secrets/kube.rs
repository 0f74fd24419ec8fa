//! kubectl: the current context, the kubeconfig, ESO's objects and their
//! status. Every call goes through `process::Tool`, with a deadline. The
//! port-forward lives in `port_forward.rs`.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::Tool;

/// The deadline of one kubectl call (`get`, `annotate`, `config`).
const KUBECTL_DEADLINE: Duration = Duration::from_secs(30);

pub const INSTALL_HINT: &str =
    "install kubectl (https://kubernetes.io/docs/tasks/tools/) and put it on PATH";

/// kubectl for one call (not the long-running port-forward), with its
/// deadline and the hints for our messages.
pub fn kubectl_tool() -> Tool {
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

/// `kubectl config view --minify --raw --flatten --output json`: the current
/// context with its cluster's CA inline (`--flatten` reads a CA file the way
/// kubectl does, relative to the kubeconfig's folder). It carries the context's credentials too:
/// keep it in memory; a failure quotes kubectl's stderr only.
pub fn raw_minified_config() -> Result<String> {
    kubectl_tool()
        .args([
            "config",
            "view",
            "--minify",
            "--raw",
            "--flatten",
            "--output",
            "json",
        ])
        .run()
}

/// kubectl failed because the cluster does not know the resource type:
/// `error: the server doesn't have a resource type "externalsecrets"`, or
/// (a group the discovery cache still lists) `the server could not find the
/// requested resource`.
fn unknown_resource_type(stderr: &str) -> bool {
    stderr.contains("the server doesn't have a resource type")
        || stderr.contains("the server could not find the requested resource")
}

/// ESO's API group, as `kubectl api-versions` lists it.
pub const ESO_GROUP: &str = "external-secrets.io";

/// The version of ESO's API that layer 15's manifests use (ESO 0.16+).
pub const ESO_V1: &str = "external-secrets.io/v1";

/// Installs External Secrets Operator with its official Helm chart (CRDs
/// included), as its getting-started guide does.
pub const ESO_INSTALL: &str =
    "helm repo add external-secrets https://charts.external-secrets.io && \
     helm install external-secrets external-secrets/external-secrets --namespace external-secrets \
     --create-namespace --wait";

/// Upgrades an ESO that the official Helm chart installed (the release and
/// namespace `helm list --all-namespaces` shows) to the chart's latest.
pub const ESO_UPGRADE: &str = "helm repo add external-secrets https://charts.external-secrets.io; \
     helm repo update external-secrets && helm upgrade external-secrets external-secrets/external-secrets \
     --namespace external-secrets --wait";

/// What the cluster serves of ESO's API group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EsoApi {
    /// No `external-secrets.io` version at all: ESO is not installed.
    Missing,
    /// Versions, but not `v1`: an ESO older than 0.16.
    Old(Vec<String>),
    /// `external-secrets.io/v1` is served.
    V1,
}

impl EsoApi {
    /// From `kubectl api-versions`' output, one `group/version` a line.
    pub fn parse(api_versions: &str) -> EsoApi {
        let ours: Vec<String> = api_versions
            .lines()
            .map(str::trim)
            .filter(|l| l.split_once('/').is_some_and(|(g, _)| g == ESO_GROUP))
            .map(String::from)
            .collect();
        if ours.iter().any(|v| v == ESO_V1) {
            EsoApi::V1
        } else if ours.is_empty() {
            EsoApi::Missing
        } else {
            EsoApi::Old(ours)
        }
    }

    /// What is wrong and the command that fixes it; `None` when v1 is served.
    pub fn problem(&self) -> Option<(String, String)> {
        match self {
            EsoApi::V1 => None,
            EsoApi::Missing => Some((
                format!("External Secrets Operator is not installed: the cluster serves no {ESO_GROUP} API"),
                format!("install it: {ESO_INSTALL}"),
            )),
            EsoApi::Old(versions) => Some((
                format!(
                    "External Secrets Operator is older than 0.16: the cluster serves {} but not {ESO_V1}, \
                     which layer 15's ClusterSecretStore and ExternalSecrets use",
                    versions.join(", ")
                ),
                format!("upgrade it to 0.16 or later: {ESO_UPGRADE}"),
            )),
        }
    }
}

/// `kubectl api-versions` (it asks the server afresh, not its discovery
/// cache), read for ESO's group.
pub fn eso_api() -> Result<EsoApi> {
    Ok(EsoApi::parse(&kubectl(&["api-versions"])?))
}

/// An object's Ready condition, as ESO writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Ready {
    /// `Some(true)`, `Some(false)`, or `None` when there is no Ready condition.
    pub ready: Option<bool>,
    pub reason: String,
    pub message: String,
}

impl Ready {
    /// The Ready condition in `object["status"]["conditions"]`.
    pub fn of(object: &serde_json::Value) -> Ready {
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        match object["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        {
            Some(c) => Ready {
                ready: Some(c["status"] == "True"),
                reason: s(&c["reason"]),
                message: s(&c["message"]),
            },
            None => Ready::default(),
        }
    }

    /// `reason: message`, or that there is no condition yet.
    pub fn describe(&self) -> String {
        match self.ready {
            None => "no Ready condition yet".to_string(),
            Some(_) => format!("{}: {}", self.reason, self.message),
        }
    }
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
    /// `spec.refreshInterval` as written (`1h`, `0`), if set.
    pub refresh_interval: Option<String>,
    /// `spec.refreshPolicy` (`Periodic`, `OnChange`, `CreatedOnce`), if set.
    pub refresh_policy: Option<String>,
    /// The Secret it writes: `spec.target.name`, else its own name.
    pub target: String,
}

impl EsStatus {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Why ESO will not re-read it when its force-sync annotation changes,
    /// as ESO 0.16+ decides (`shouldRefresh`): once synced, an
    /// ExternalSecret with `refreshPolicy: CreatedOnce`, or a periodic one
    /// with `refreshInterval: 0`, is never read again while its Secret is
    /// intact. `None` when the annotation makes ESO read it.
    pub fn ignores_force_sync(&self) -> Option<String> {
        let synced = self
            .synced_resource_version
            .as_deref()
            .is_some_and(|v| !v.is_empty());
        match self.refresh_policy.as_deref() {
            Some("CreatedOnce") => {
                (synced && self.refresh_time.is_some()).then(|| "refreshPolicy: CreatedOnce".into())
            }
            Some("OnChange") => None,
            _ => match self.refresh_interval.as_deref() {
                Some(every) if synced && not_positive(every) => {
                    Some(format!("refreshInterval: {every}"))
                }
                _ => None,
            },
        }
    }
}

/// Whether a Go duration (`0`, `0s`, `0h0m0s`, `-1m`) is zero or less.
/// An empty one is ESO's default (1h).
fn not_positive(duration: &str) -> bool {
    let d = duration.trim();
    d.starts_with('-')
        || (d.chars().any(|c| c.is_ascii_digit())
            && d.chars().filter(|c| c.is_ascii_digit()).all(|c| c == '0'))
}

/// A failed kubectl call about ESO's objects: a cluster without ESO is
/// said in those words, with kubectl's and the install command.
fn eso_failure(tool: &Tool, out: &std::process::Output) -> anyhow::Error {
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !unknown_resource_type(&stderr) {
        return tool.failure(out);
    }
    let (what, fix) = EsoApi::Missing.problem().expect("a problem");
    anyhow::anyhow!(
        "{what} (`{}`: {}); {fix}",
        tool.display(),
        crate::process::tail(&stderr, 1)
    )
}

/// `kubectl <args>` whose object type is ESO's: a cluster without ESO is
/// said in those words, with the install command.
fn kubectl_eso(args: &[&str]) -> Result<String> {
    let tool = kubectl_tool().args(args);
    let out = tool.output()?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(eso_failure(&tool, &out))
}

/// Every ExternalSecret in the cluster (`kubectl get externalsecrets -A -o json`).
pub fn external_secrets() -> Result<Vec<EsStatus>> {
    let text = kubectl_eso(&[
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
        let opt = |v: &serde_json::Value| v.as_str().map(String::from);
        let spec = &item["spec"];
        let store_ref = &spec["secretStoreRef"];
        let ready = Ready::of(item);
        let name = s(&item["metadata"]["name"]);
        out.push(EsStatus {
            namespace: s(&item["metadata"]["namespace"]),
            store: format!(
                "{}/{}",
                store_ref["kind"].as_str().unwrap_or("SecretStore"),
                store_ref["name"].as_str().unwrap_or_default()
            ),
            ready: ready.ready,
            reason: ready.reason,
            message: ready.message,
            refresh_time: opt(&item["status"]["refreshTime"]),
            synced_resource_version: opt(&item["status"]["syncedResourceVersion"]),
            refresh_interval: match &spec["refreshInterval"] {
                serde_json::Value::Number(n) => Some(n.to_string()),
                v => opt(v),
            },
            refresh_policy: opt(&spec["refreshPolicy"]),
            target: spec["target"]["name"]
                .as_str()
                .filter(|t| !t.is_empty())
                .unwrap_or(&name)
                .to_string(),
            name,
        });
    }
    Ok(out)
}

/// `ClusterSecretStore/<name>`'s Ready condition; `None` when there is no
/// such store (kubectl: `Error from server (NotFound)`).
pub fn cluster_secret_store(name: &str) -> Result<Option<Ready>> {
    let tool = kubectl_tool().args(["get", "clustersecretstore", name, "--output", "json"]);
    let out = tool.output()?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("(NotFound)") {
            return Ok(None);
        }
        return Err(eso_failure(&tool, &out));
    }
    let object: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("`{}` printed no JSON", tool.display()))?;
    Ok(Some(Ready::of(&object)))
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

/// Asks ESO to validate a ClusterSecretStore now: any change to the object
/// queues it at once, ahead of the backoff of a store that failed.
pub fn force_sync_store(name: &str, stamp: &str) -> Result<()> {
    kubectl(&[
        "annotate",
        "clustersecretstore",
        name,
        &format!("force-sync={stamp}"),
        "--overwrite",
    ])?;
    Ok(())
}

/// Every namespace in the cluster (`kubectl get namespaces -o json`).
pub fn namespaces() -> Result<std::collections::BTreeSet<String>> {
    let text = kubectl(&["get", "namespaces", "--output", "json"])?;
    let list: serde_json::Value =
        serde_json::from_str(&text).context("kubectl get namespaces printed no JSON list")?;
    Ok(list["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str().map(String::from))
        .collect())
}

/// A Kubernetes Event about one object: where ESO says why it failed (its
/// Ready condition is generic: `could not get secret data from provider`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The Event's own name (`metadata.name`).
    pub id: String,
    /// How many times it happened (identical events are counted in one).
    pub count: u64,
    /// `involvedObject.name`.
    pub object: String,
    pub reason: String,
    pub message: String,
    /// When it last happened (RFC 3339, the cluster's clock).
    pub last: String,
    /// `metadata.resourceVersion`, which orders events of the same second.
    pub version: u64,
}

impl Event {
    /// `ESO's last warning (Reason): message`, on one line (Vault's errors
    /// span several).
    pub fn said(&self) -> String {
        let message: Vec<&str> = self.message.split_whitespace().collect();
        format!(
            "ESO's last warning ({}): {}",
            self.reason,
            message.join(" ")
        )
    }
}

/// Warning Events about objects of `kind` (`ExternalSecret`,
/// `ClusterSecretStore`) in `namespace` (`None`: every namespace; a
/// cluster-scoped object's events live in `default`), about `name` only
/// when given: `kubectl get events --field-selector
/// involvedObject.kind=KIND[,involvedObject.name=NAME],type=Warning -o json`.
pub fn warning_events(
    namespace: Option<&str>,
    kind: &str,
    name: Option<&str>,
) -> Result<Vec<Event>> {
    events(namespace, kind, name, Some("Warning"))
}

/// Events about objects of `kind` (as [`warning_events`]), of `type_` only
/// when given.
pub fn events(
    namespace: Option<&str>,
    kind: &str,
    name: Option<&str>,
    type_: Option<&str>,
) -> Result<Vec<Event>> {
    let mut selector = format!("involvedObject.kind={kind}");
    if let Some(name) = name {
        selector.push_str(&format!(",involvedObject.name={name}"));
    }
    if let Some(t) = type_ {
        selector.push_str(&format!(",type={t}"));
    }
    let mut args = vec!["get", "events"];
    match namespace {
        Some(ns) => args.extend(["--namespace", ns]),
        None => args.push("--all-namespaces"),
    }
    args.extend(["--field-selector", &selector, "--output", "json"]);
    parse_events(&kubectl(&args)?)
}

pub fn parse_events(text: &str) -> Result<Vec<Event>> {
    let list: serde_json::Value =
        serde_json::from_str(text).context("kubectl get events printed no JSON list")?;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    Ok(list["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| Event {
            id: s(&e["metadata"]["name"]),
            count: e["count"]
                .as_u64()
                .or_else(|| e["series"]["count"].as_u64())
                .unwrap_or(1),
            object: s(&e["involvedObject"]["name"]),
            reason: s(&e["reason"]),
            message: s(&e["message"]),
            // core/v1 Events carry lastTimestamp; events.k8s.io ones
            // eventTime (and a series); the creation time as a last resort.
            last: [
                &e["series"]["lastObservedTime"],
                &e["lastTimestamp"],
                &e["eventTime"],
                &e["metadata"]["creationTimestamp"],
            ]
            .into_iter()
            .find_map(|v| v.as_str().filter(|t| !t.is_empty()))
            .unwrap_or_default()
            .to_string(),
            version: e["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        })
        .collect())
}

/// When an event last happened, comparable: `2026-11-29T10:00:00.5Z` as
/// (seconds part, nanoseconds; lastTimestamp has no fraction, eventTime
/// has microseconds), then its resourceVersion for events of one second.
fn instant(e: &Event) -> (String, u32, u64) {
    let t = e.last.trim_end_matches('Z');
    let (secs, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits: String = frac
        .chars()
        .take_while(char::is_ascii_digit)
        .take(9)
        .collect();
    let nanos = format!("{digits:0<9}").parse().unwrap_or(0);
    (secs.to_string(), nanos, e.version)
}

/// The newest event about each object, by name.
pub fn newest_by_object(events: Vec<Event>) -> std::collections::BTreeMap<String, Event> {
    let mut newest: std::collections::BTreeMap<String, Event> = Default::default();
    for e in events {
        match newest.get(&e.object) {
            Some(have) if instant(have) >= instant(&e) => {}
            _ => {
                newest.insert(e.object.clone(), e);
            }
        }
    }
    newest
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
    fn reads_what_decides_whether_eso_rereads_it() {
        let text = r#"{"items": [
          {"metadata": {"namespace": "ameide", "name": "zero"},
           "spec": {"refreshInterval": "0", "target": {"name": "zero-secret"}},
           "status": {"refreshTime": "2026-11-28T03:00:00Z", "syncedResourceVersion": "1-abc"}},
          {"metadata": {"namespace": "ameide", "name": "once"},
           "spec": {"refreshInterval": "1h", "refreshPolicy": "CreatedOnce"},
           "status": {"refreshTime": "2026-11-28T03:00:00Z", "syncedResourceVersion": "1-abc"}},
          {"metadata": {"namespace": "ameide", "name": "never-synced"}, "spec": {"refreshInterval": "0s"}},
          {"metadata": {"namespace": "ameide", "name": "hourly"},
           "spec": {"refreshInterval": "1h"},
           "status": {"refreshTime": "2026-11-28T03:00:00Z", "syncedResourceVersion": "1-abc"}},
          {"metadata": {"namespace": "ameide", "name": "on-change"},
           "spec": {"refreshInterval": "0", "refreshPolicy": "OnChange"},
           "status": {"refreshTime": "2026-11-28T03:00:00Z", "syncedResourceVersion": "1-abc"}},
          {"metadata": {"namespace": "ameide", "name": "periodic-zero"},
           "spec": {"refreshInterval": "0h0m0s", "refreshPolicy": "Periodic"},
           "status": {"syncedResourceVersion": "1-abc"}}
        ]}"#;
        let es = parse_external_secrets(text).unwrap();
        let ignored: Vec<(String, Option<String>)> = es
            .iter()
            .map(|e| (e.name.clone(), e.ignores_force_sync()))
            .collect();
        assert_eq!(
            ignored,
            [
                ("zero".into(), Some("refreshInterval: 0".into())),
                ("once".into(), Some("refreshPolicy: CreatedOnce".into())),
                ("never-synced".into(), None),
                ("hourly".into(), None),
                ("on-change".into(), None),
                (
                    "periodic-zero".into(),
                    Some("refreshInterval: 0h0m0s".into())
                ),
            ]
        );
        assert_eq!(es[0].target, "zero-secret");
        assert_eq!(es[1].target, "once");
        for (d, zero) in [
            ("0", true),
            ("0s", true),
            ("-1m", true),
            ("", false),
            ("1h", false),
            ("10m0s", false),
        ] {
            assert_eq!(not_positive(d), zero, "{d:?}");
        }
    }

    #[test]
    fn the_api_versions_say_whether_eso_serves_v1() {
        let served = "apps/v1\nexternal-secrets.io/v1\nexternal-secrets.io/v1beta1\nv1\n";
        assert_eq!(EsoApi::parse(served), EsoApi::V1);
        assert_eq!(EsoApi::parse("apps/v1\nv1\n"), EsoApi::Missing);
        let old = EsoApi::parse("external-secrets.io/v1alpha1\nexternal-secrets.io/v1beta1\n");
        assert_eq!(
            old,
            EsoApi::Old(vec![
                "external-secrets.io/v1alpha1".into(),
                "external-secrets.io/v1beta1".into()
            ])
        );
        let (what, fix) = old.problem().unwrap();
        assert!(
            what.contains("older than 0.16") && what.contains("external-secrets.io/v1beta1"),
            "{what}"
        );
        assert!(fix.contains("helm upgrade external-secrets"), "{fix}");
        let (what, fix) = EsoApi::Missing.problem().unwrap();
        assert!(
            what.starts_with("External Secrets Operator is not installed"),
            "{what}"
        );
        assert!(
            fix.contains("helm install external-secrets external-secrets/external-secrets"),
            "{fix}"
        );
        assert_eq!(EsoApi::V1.problem(), None);
        // Not a group that merely starts with ESO's name.
        assert_eq!(
            EsoApi::parse("external-secrets.io.example/v1\n"),
            EsoApi::Missing
        );
    }

    #[test]
    fn the_newest_event_per_object_wins() {
        let text = r#"{"items": [
          {"metadata": {"resourceVersion": "10"}, "involvedObject": {"name": "a"}, "reason": "UpdateFailed",
           "message": "old", "lastTimestamp": "2026-12-01T00:00:05Z"},
          {"metadata": {"resourceVersion": "12"}, "involvedObject": {"name": "a"}, "reason": "UpdateFailed",
           "message": "same second, later", "lastTimestamp": "2026-12-01T00:00:09Z"},
          {"metadata": {"resourceVersion": "11"}, "involvedObject": {"name": "a"}, "reason": "UpdateFailed",
           "message": "same second, earlier", "lastTimestamp": "2026-12-01T00:00:09Z"},
          {"metadata": {"resourceVersion": "3"}, "involvedObject": {"name": "b"}, "reason": "UpdateFailed",
           "message": "series", "eventTime": "2026-12-01T00:00:09.500000Z", "lastTimestamp": null},
          {"metadata": {"resourceVersion": "4"}, "involvedObject": {"name": "b"}, "reason": "UpdateFailed",
           "message": "whole second", "lastTimestamp": "2026-12-01T00:00:09Z"}
        ]}"#;
        let newest = newest_by_object(parse_events(text).unwrap());
        assert_eq!(newest["a"].message, "same second, later");
        assert_eq!(newest["b"].message, "series");
    }

    #[test]
    fn an_unknown_resource_type_means_eso_is_missing() {
        assert!(unknown_resource_type(
            "error: the server doesn't have a resource type \"externalsecrets\"\n"
        ));
        assert!(unknown_resource_type(
            "Error from server (NotFound): the server could not find the requested resource\n"
        ));
        assert!(!unknown_resource_type(
            "Error from server (NotFound): clustersecretstores.external-secrets.io \"ameide-vault\" not found"
        ));
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
